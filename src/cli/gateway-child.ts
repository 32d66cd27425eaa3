import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { IpcMessage, IpcRequest } from './gateway-process.js';

// A gateway running as a child process (`vrg start`), driven over its IPC channel: the demo runs one
// production and one DR gateway this way, and the crash tests SIGKILL them.

/** The compiled CLI entry: beside this file when compiled, under dist/ when running from source. */
function mainScript(): string {
  const sibling = fileURLToPath(new URL('./main.js', import.meta.url));
  if (existsSync(sibling)) return sibling;
  return fileURLToPath(new URL('../../dist/src/cli/main.js', import.meta.url));
}

export class GatewayChild {
  private waiters: Array<{ type: string; resolve: (m: IpcMessage) => void; reject: (e: Error) => void }> = [];
  readonly exited: Promise<number | null>;
  private readonly listeners: Array<(m: IpcMessage) => void> = [];

  constructor(readonly role: string, readonly proc: ChildProcess, private readonly logPath: string | null = null) {
    proc.on('message', (m: IpcMessage) => {
      for (const l of this.listeners) l(m);
      const i = this.waiters.findIndex((w) => w.type === m.type || m.type === 'error');
      if (i < 0) return;
      const [w] = this.waiters.splice(i, 1);
      if (m.type === 'error') w!.reject(vrgError((m.code as ErrorCode) ?? ErrorCode.INVALID_ARGUMENT, `${role}: ${m.message}`));
      else w!.resolve(m);
    });
    this.exited = new Promise((res) => proc.on('exit', (code, signal) => {
      const why = code !== null && code !== 0 ? this.lastWords() : '';
      for (const w of this.waiters.splice(0)) w.reject(new Error(`${role} gateway exited (${code ?? signal})${why}`));
      res(code);
    }));
  }

  /** The last line the process wrote that is not a JSON log record (its `vrg: ...` error), for an exit's message. */
  private lastWords(): string {
    if (this.logPath === null) return '';
    try {
      const text = readFileSync(this.logPath, 'utf8').slice(-16_384);
      const line = text.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{')).at(-1);
      return line ? `: ${line.slice(0, 500)}` : ` (see ${this.logPath})`;
    } catch {
      return '';
    }
  }

  /** Every message the gateway sends (for events such as 'transition'). */
  onMessage(listener: (m: IpcMessage) => void): void {
    this.listeners.push(listener);
  }

  /** Sends `req` (if any) and resolves with the next message of type `reply`. */
  request<T extends IpcMessage>(req: IpcRequest | null, reply: T['type']): Promise<T> {
    return new Promise((resolve, reject) => {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        reject(new Error(`${this.role} gateway is not running`));
        return;
      }
      const waiter = { type: reply, resolve: resolve as (m: IpcMessage) => void, reject };
      this.waiters.push(waiter);
      // A gateway that died before its exit was seen (a chaos kill) closes the channel under the send: that
      // rejects this request; without the callback it would be an 'error' event nobody listens to (EPIPE).
      if (req) {
        this.proc.send(req, (err) => {
          if (!err) return;
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new Error(`${this.role} gateway: request ${req.type} not sent: ${err.message}`));
        });
      }
    });
  }

  kill(): Promise<number | null> {
    this.proc.kill('SIGKILL');
    return this.exited;
  }

  async stop(): Promise<number | null> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM');
    return this.exited;
  }
}

/**
 * V8 heap settings of a gateway process. A gateway's live heap is small (~15 MB) but every write keeps a few
 * objects alive for milliseconds, long enough to be promoted; with V8's default initial old-space limit
 * (a few MB above the live heap) that forces a full mark-compact every ~2 MB promoted, 4-6 a second at
 * 40 MB/s: measured, a third of the production gateway's CPU. A 64 MB initial old space lets them die in
 * bulk (the limit still adapts after that). The `vrg` bin's shebang passes the same flag.
 */
export const gatewayNodeArgs = ['--initial-old-space-size=64'];

export function spawnGateway(role: string, configPath: string, logPath: string, env?: NodeJS.ProcessEnv): GatewayChild {
  const log = openSync(logPath, 'a');
  // VRG_GATEWAY_NODE_ARGS passes flags NODE_OPTIONS refuses (e.g. --cpu-prof) to the gateway processes.
  const execArgv = [...gatewayNodeArgs, ...(process.env.VRG_GATEWAY_NODE_ARGS ?? '').split(' ').filter(Boolean)];
  const proc = fork(mainScript(), ['start', '--config', configPath], {
    stdio: ['ignore', log, log, 'ipc'], env: env ?? process.env, execArgv,
    // Its own process group: a Ctrl-C meant for `vrg demo` must not stop the gateways before the
    // demo drains them. A gateway whose parent dies sees its IPC channel close and stops itself.
    detached: true,
  });
  closeSync(log);
  return new GatewayChild(role, proc, logPath);
}
