import { spawn, type ChildProcess } from 'node:child_process';
import { access, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort, probe } from '../core/free-port.js';

// An outside NBD agent (nbdkit, qemu-nbd) on 127.0.0.1, for `vrg chaos` and the tests. A port from freePort()
// can be taken by another process before the agent binds it, and a probe would then see that listener: an
// agent counts as up only once it wrote its pid file (both write it after binding) and still runs; one that
// could not bind a port picked here is started again on another.

export interface AgentProcess {
  child: ChildProcess;
  port: number;
  url: string;
  exited(): boolean;
  stderr(): string;
  /** Sends `signal` (default SIGKILL) unless it exited, and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const readyTimeoutMs = 10_000;
const attemptsMax = 5;

/** args(port, pidFile) builds the command line; the agent must write pidFile once it listens. Pid files go in `dir`. */
export async function startAgentProcess(cmd: string, args: (port: number, pidFile: string) => string[], dir: string,
    port?: number): Promise<AgentProcess> {
  for (let attempt = 1; ; attempt++) {
    const p = port ?? await freePort();
    const pidFile = join(dir, `${cmd}-${attempt}.pid`);
    await rm(pidFile, { force: true });
    const agent = spawnAgent(cmd, args(p, pidFile), p);
    const why = await ready(agent, pidFile);
    if (why === null) return agent;
    if (port !== undefined || attempt >= attemptsMax || !why.includes('in use')) throw new Error(`${cmd} on ${p}: ${why}`);
  }
}

function spawnAgent(cmd: string, argv: string[], port: number): AgentProcess {
  const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', () => { exited = true; resolve(); });
    child.once('error', (err) => { exited = true; stderr += err.message; resolve(); }); // e.g. ENOENT
  });
  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    if (!exited) child.kill(signal);
    await exit;
  };
  return { child, port, url: `nbd://127.0.0.1:${port}/`, kill, exited: () => exited, stderr: () => stderr };
}

/** null once the agent listens; otherwise why not. */
async function ready(agent: AgentProcess, pidFile: string): Promise<string | null> {
  const start = Date.now();
  for (;;) {
    if (agent.exited()) return `exited: ${agent.stderr() || 'no message'}`;
    const written = await access(pidFile).then(() => true, () => false);
    if (written && await probe(agent.port)) return agent.exited() ? `exited: ${agent.stderr()}` : null;
    if (Date.now() - start > readyTimeoutMs) {
      await agent.kill();
      return `did not listen within ${readyTimeoutMs / 1000} s: ${agent.stderr()}`;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
