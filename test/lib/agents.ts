import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { startAgentProcess, type AgentProcess } from '../../src/chaos/agent-process.js';

// Outside NBD agents (nbdkit, qemu-nbd) a test starts on 127.0.0.1 (src/chaos/agent-process.ts: up once its pid
// file is written, started again on another port if a parallel test file took the one picked), killed at teardown.

export type Agent = AgentProcess;

/** args(port, pidFile) builds the command line; the agent must write pidFile once it listens. */
export async function startAgent(t: Test, cmd: string, args: (port: number, pidFile: string) => string[], port?: number): Promise<Agent> {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-agent-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const agent = await startAgentProcess(cmd, args, dir, port);
  t.teardown(() => agent.kill());
  return agent;
}
