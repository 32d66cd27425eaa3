import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { until } from './wait.js';

// A real etcd for the cluster tests: one member on loopback (client and peer URLs on 127.0.0.1, free ports),
// its data in the test's directory, stopped at teardown. A port taken between freePort() and etcd's bind
// makes etcd exit: then it is started again on other ports.

export interface EtcdServer {
  /** The client URL, e.g. http://127.0.0.1:23790. */
  readonly endpoint: string;
  /** etcd's own log, for a failing test's message. */
  log(): string;
}

export async function startEtcd(t: { teardown(fn: () => unknown): void }, dir: string): Promise<EtcdServer> {
  for (let attempt = 1; ; attempt++) {
    const started = await tryStart(t, join(dir, `etcd-${attempt}`));
    if (started !== null) return started;
    if (attempt === 3) throw new Error('etcd did not start on three pairs of free ports');
  }
}

async function tryStart(t: { teardown(fn: () => unknown): void }, dataDir: string): Promise<EtcdServer | null> {
  await mkdir(dataDir, { recursive: true });
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const proc = spawn('etcd', [
    '--name', 'vrg-test', '--data-dir', dataDir,
    '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
    '--initial-cluster', `vrg-test=${peer}`, '--initial-cluster-state', 'new',
    '--logger', 'zap', '--log-level', 'warn',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  let exited = false;
  for (const s of [proc.stdout, proc.stderr]) s.on('data', (b: Buffer) => { log = (log + b.toString()).slice(-20_000); });
  proc.once('exit', () => { exited = true; });
  t.teardown(() => stop(proc));
  await until(async () => exited || await healthy(endpoint), 20_000, 'etcd to answer /health', () => log);
  if (exited) return null;
  return { endpoint, log: () => log };
}

async function healthy(endpoint: string): Promise<boolean> {
  try {
    const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok && ((await res.json()) as { health?: string }).health === 'true';
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL if it has not exited within 5 s. */
async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}
