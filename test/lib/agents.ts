import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { freePort, probe } from './ports.js';

// Outside NBD agents (nbdkit, qemu-nbd) a test starts on 127.0.0.1. A port from freePort() can be taken by a
// parallel test file before the agent binds it, and a probe would then see the other file's listener: an agent
// counts as up only once it wrote its pid file (both write it after binding) and still runs; one that could not
// bind a port we picked is started again on another.

export interface Agent { child: ChildProcess; port: number; url: string; kill(): Promise<void> }

/** args(port, pidFile) builds the command line; the agent must write pidFile once it listens. */
export async function startAgent(t: Test, cmd: string, args: (port: number, pidFile: string) => string[], port?: number): Promise<Agent> {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-agent-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  for (let attempt = 1; ; attempt++) {
    const p = port ?? await freePort();
    const pidFile = join(dir, `${attempt}.pid`);
    const agent = spawnAgent(t, cmd, args(p, pidFile), p);
    const why = await ready(agent, pidFile);
    if (why === null) return agent;
    if (port !== undefined || attempt >= 5 || !why.includes('in use')) throw new Error(`${cmd} on ${p}: ${why}`);
  }
}

interface Running extends Agent { exited(): boolean; stderr(): string }

function spawnAgent(t: Test, cmd: string, argv: string[], port: number): Running {
  const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', () => { exited = true; resolve(); });
    child.once('error', (err) => { exited = true; stderr += err.message; resolve(); }); // e.g. ENOENT
  });
  const kill = async (): Promise<void> => {
    if (!exited) child.kill('SIGKILL');
    await exit;
  };
  t.teardown(kill);
  return { child, port, url: `nbd://127.0.0.1:${port}/`, kill, exited: () => exited, stderr: () => stderr };
}

/** null once the agent listens; otherwise why not. */
async function ready(agent: Running, pidFile: string): Promise<string | null> {
  const start = Date.now();
  for (;;) {
    if (agent.exited()) return `exited: ${agent.stderr() || 'no message'}`;
    const written = await access(pidFile).then(() => true, () => false);
    if (written && await probe(agent.port)) return agent.exited() ? `exited: ${agent.stderr()}` : null;
    if (Date.now() - start > 10_000) {
      await agent.kill();
      return `did not listen within 10 s: ${agent.stderr()}`;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
