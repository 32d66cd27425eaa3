import { spawnSync } from 'node:child_process';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgentProcess, type AgentProcess } from './agent-process.js';

// DR's target volume in `vrg chaos` when disk faults are scheduled: a real write agent, nbdkit's file plugin
// over the target image, with its `error` filter (every write, zero and trim fails with EIO while a trigger
// file exists; this nbdkit's filter has no flush errors) and its `rate` filter (bandwidth set through a file,
// so writes can be made slow and fast again while it runs). DR writes to it over NBD as to any agent.

export function nbdkitAvailable(): boolean {
  return spawnSync('nbdkit', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Effectively unlimited: the rate file cannot be removed once read, only rewritten. */
const unlimitedRate = '100G';

export class TargetAgent {
  private constructor(private readonly agent: AgentProcess, private readonly trigger: string, private readonly rateFile: string) {}

  get url(): string {
    return this.agent.url;
  }

  /** Starts nbdkit on a free loopback port, serving `file`; its control files go in `dir`. */
  static async start(file: string, dir: string): Promise<TargetAgent> {
    const trigger = join(dir, 'target-eio');
    const rateFile = join(dir, 'target-rate');
    await rm(trigger, { force: true });
    await writeFile(rateFile, unlimitedRate);
    const agent = await startAgentProcess('nbdkit', (port, pidFile) => ['-f', '--exit-with-parent', '-P', pidFile, '-p', String(port),
      '-i', '127.0.0.1', '--filter=error', '--filter=rate', 'file', `file=${file}`,
      'error-pwrite=EIO', 'error-pwrite-rate=100%', `error-pwrite-file=${trigger}`,
      'error-zero=EIO', 'error-zero-rate=100%', `error-zero-file=${trigger}`,
      'error-trim=EIO', 'error-trim-rate=100%', `error-trim-file=${trigger}`,
      `rate-file=${rateFile}`], dir);
    return new TargetAgent(agent, trigger, rateFile);
  }

  /** Writes fail with EIO while on. */
  async failWrites(on: boolean): Promise<void> {
    if (on) await writeFile(this.trigger, '');
    else await rm(this.trigger, { force: true });
  }

  /** Writes limited to `kbitPerSec`, or unlimited again (null). */
  async limitRate(kbitPerSec: number | null): Promise<void> {
    const tmp = `${this.rateFile}.tmp`;
    await writeFile(tmp, kbitPerSec === null ? unlimitedRate : `${kbitPerSec}K`);
    await rename(tmp, this.rateFile); // atomically, as the filter wants
  }

  stop(): Promise<void> {
    return this.agent.kill('SIGTERM');
  }
}
