import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from '../src/core/free-port.js';

// A real etcd for the cluster tests and the scale bench: one member on loopback (client and peer URLs on
// 127.0.0.1, free ports), its data under `dir`. A port taken between freePort() and etcd's bind makes etcd
// exit: then it is started again on other ports.

export interface EtcdProcess {
  /** The client URL, e.g. http://127.0.0.1:23790 (also serves /health and /metrics). */
  readonly endpoint: string;
  /** etcd's own log, for a failure's message. */
  log(): string;
  /** SIGTERM, then SIGKILL if it has not exited within 5 s. */
  stop(): Promise<void>;
}

const healthWaitMs = 20_000;

export async function startEtcdProcess(dir: string, name = 'vrg-etcd'): Promise<EtcdProcess> {
  for (let attempt = 1; ; attempt++) {
    const started = await tryStart(join(dir, `etcd-${attempt}`), name);
    if (started !== null) return started;
    if (attempt === 3) throw new Error('etcd did not start on three pairs of free ports');
  }
}

async function tryStart(dataDir: string, name: string): Promise<EtcdProcess | null> {
  await mkdir(dataDir, { recursive: true });
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const proc = spawn('etcd', [
    '--name', name, '--data-dir', dataDir,
    '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
    '--initial-cluster', `${name}=${peer}`, '--initial-cluster-state', 'new',
    '--logger', 'zap', '--log-level', 'warn',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  for (const s of [proc.stdout, proc.stderr]) s.on('data', (b: Buffer) => { log = (log + b.toString()).slice(-20_000); });
  const server: EtcdProcess = { endpoint, log: () => log, stop: () => stop(proc) };
  try {
    return await waitHealthy(proc, endpoint) ? server : null;
  } catch (err) {
    await server.stop();
    throw new Error(`${(err as Error).message}; etcd's log:\n${log}`);
  }
}

/** True once /health says so, false if etcd exited first (a port was taken); throws after healthWaitMs. */
async function waitHealthy(proc: ChildProcess, endpoint: string): Promise<boolean> {
  const end = Date.now() + healthWaitMs;
  for (;;) {
    if (exited(proc)) return false;
    if (await healthy(endpoint)) return true;
    if (Date.now() > end) throw new Error(`etcd at ${endpoint} did not answer /health within ${healthWaitMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function healthy(endpoint: string): Promise<boolean> {
  try {
    const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok && ((await res.json()) as { health?: string }).health === 'true';
  } catch {
    return false;
  }
}

function exited(proc: ChildProcess): boolean {
  return proc.exitCode !== null || proc.signalCode !== null;
}

async function stop(proc: ChildProcess): Promise<void> {
  if (exited(proc)) return;
  const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await gone;
  clearTimeout(timer);
}
