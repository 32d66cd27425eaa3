import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { access, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from '../core/free-port.js';

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
  private constructor(private readonly child: ChildProcess, readonly url: string, private readonly trigger: string,
    private readonly rateFile: string, private exited: Promise<void>) {}

  /** Starts nbdkit on a free loopback port, serving `file`; its control files go in `dir`. */
  static async start(file: string, dir: string): Promise<TargetAgent> {
    const trigger = join(dir, 'target-eio');
    const rateFile = join(dir, 'target-rate');
    await rm(trigger, { force: true });
    await writeFile(rateFile, unlimitedRate);
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const pidFile = join(dir, 'target-agent.pid');
      await rm(pidFile, { force: true });
      const child = spawn('nbdkit', ['-f', '--exit-with-parent', '-P', pidFile, '-p', String(port), '-i', '127.0.0.1',
        '--filter=error', '--filter=rate', 'file', `file=${file}`,
        'error-pwrite=EIO', 'error-pwrite-rate=100%', `error-pwrite-file=${trigger}`,
        'error-zero=EIO', 'error-zero-rate=100%', `error-zero-file=${trigger}`,
        'error-trim=EIO', 'error-trim-rate=100%', `error-trim-file=${trigger}`,
        `rate-file=${rateFile}`], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      if (await listening(pidFile, exited)) return new TargetAgent(child, `nbd://127.0.0.1:${port}/`, trigger, rateFile, exited);
      // Another process took the port between the probe and nbdkit's bind: try another one.
      if (attempt >= 5 || !stderr.includes('in use')) throw new Error(`nbdkit did not start: ${stderr.trim()}`);
    }
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

  async stop(): Promise<void> {
    this.child.kill('SIGTERM');
    await this.exited;
  }
}

/** nbdkit writes its pid file once it listens; false if it exited first. */
async function listening(pidFile: string, exited: Promise<void>): Promise<boolean> {
  let gone = false;
  void exited.then(() => { gone = true; });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && !gone) {
    if (await access(pidFile).then(() => true, () => false)) return !gone;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}
