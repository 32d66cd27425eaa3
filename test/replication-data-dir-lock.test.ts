import { spawn } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { spawnGateway } from '../src/cli/gateway-child.js';
import { sleep, systemClock } from '../src/core/clock.js';
import { DataDirLock, lockFileName, procProbe, type LockHolder } from '../src/core/data-dir-lock.js';
import { silentLogger } from '../src/core/log.js';
import { systemRandom } from '../src/core/random.js';
import { tcpTransport } from '../src/link/transport.js';
import { InlineCodec } from '../src/pipeline/codec.js';
import { DrSite } from '../src/replication/dr-site.js';
import { ProductionSite } from '../src/replication/production-site.js';
import { pairConfigs, pairConfigJson } from './lib/pair.js';
import { ErrorCode, isVrgError, type VrgError } from '../src/core/errors.js';

// One gateway per data directory (issue 17 item 4): a second `vrg start` on the same directory fails fast
// with DATA_DIR_LOCKED and changes nothing; a SIGKILLed holder does not block its restart.

/** Every path under `dir` with its size and mtime: what "nothing touched" compares. */
async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await readdir(dir, { recursive: true })).sort()) {
    const s = await stat(join(dir, name));
    out.push(`${name} ${s.isDirectory() ? 'dir' : s.size} ${s.mtimeMs}`);
  }
  return out;
}

/** The VrgError `p` rejects with, after asserting its code. */
async function rejectsWithCode(t: Test, p: Promise<unknown>, code: string, what = `rejects with ${code}`): Promise<VrgError> {
  const err = await p.then(() => null, (e: unknown) => e);
  t.ok(isVrgError(err) && err.code === code, what, { found: err });
  return err as VrgError;
}

const deps = () => ({ clock: systemClock, random: systemRandom, transport: tcpTransport, codec: new InlineCodec(), logger: silentLogger });

t.test('a second vrg start on the same data directory exits with DATA_DIR_LOCKED and touches nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-lock-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: 1024 * 1024 });
  const config = join(dir, 'production.json');
  await writeFile(config, JSON.stringify(json.prod));
  const first = spawnGateway('production', config, join(dir, 'first.log'));
  t.teardown(() => first.kill());
  await first.request(null, 'ready');
  const dataDir = json.prod.dataDir;
  // Stopped, the holder is alive but writes nothing (no checkpoint) while the second one tries.
  first.proc.kill('SIGSTOP');
  const before = await listing(dataDir);
  const second = spawnGateway('production', config, join(dir, 'second.log'));
  const code = await second.exited;
  const after = await listing(dataDir);
  first.proc.kill('SIGCONT');
  t.not(code, 0, 'the second gateway exits non-zero');
  const log = await readFile(join(dir, 'second.log'), 'utf8');
  t.match(log, ErrorCode.DATA_DIR_LOCKED, 'its output names the error code');
  t.match(log, `pid ${first.proc.pid}`, 'and the holder');
  t.ok(before.some((l) => l.startsWith(`${lockFileName} `)), 'the holder\'s lock file is there');
  t.same(after, before, 'no file in the data directory created or changed');

  // SIGKILLed: its lock file stays, and a restart (at once, the holder perhaps not reaped yet) takes it over.
  first.proc.kill('SIGKILL');
  const third = spawnGateway('production', config, join(dir, 'third.log'));
  t.teardown(() => third.kill());
  await first.exited;
  const ready = await third.request(null, 'ready');
  t.equal(ready.type, 'ready', 'the restart after SIGKILL starts');
  const holder = JSON.parse(await readFile(join(dataDir, lockFileName), 'utf8')) as LockHolder;
  t.equal(holder.pid, third.proc.pid, 'the lock names the restarted gateway');
  t.equal(await third.stop(), 0);
  await t.rejects(stat(join(dataDir, lockFileName)), { code: 'ENOENT' }, 'a clean stop releases the lock');
});

t.test('two in-process opens of one data directory: the second is refused; close then reopen works', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-lock-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const configs = pairConfigs({ dir, volumes: 1, volumeSizeBytes: 1024 * 1024 });
  const dr = await DrSite.open(configs.dr, deps());
  const err = await rejectsWithCode(t, DrSite.open(configs.dr, deps()), ErrorCode.DATA_DIR_LOCKED);
  t.equal(err.details?.pid, process.pid, 'the holder named is this process');
  t.equal(err.details?.dataDir, configs.dr.dataDir);
  // A production site holds its top-level directory once, its target side under it included.
  configs.prod.link.port = dr.dr.linkPort;
  const prod = await ProductionSite.open(configs.prod, deps());
  await rejectsWithCode(t, ProductionSite.open(configs.prod, deps()), ErrorCode.DATA_DIR_LOCKED);
  await prod.close();
  await dr.close();
  const again = await DrSite.open(configs.dr, deps());
  const prodAgain = await ProductionSite.open(configs.prod, deps());
  await prodAgain.close();
  await again.close();
});

/**
 * A real zombie: a short `sleep` whose parent (sh exec'ed into `sleep 30`) never reaps it. It outlives the exec
 * (0.3 s), so sh cannot have reaped it before it became `sleep 30` (a `sleep 0` sometimes was, under load).
 */
async function zombie(t: Test): Promise<number> {
  const sh = spawn('sh', ['-c', 'sleep 0.3 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => sh.kill('SIGKILL'));
  const pid = await new Promise<number>((resolve) => sh.stdout.once('data', (b: Buffer) => resolve(Number(b.toString().trim()))));
  for (;;) {
    const s = await readFile(`/proc/${pid}/stat`, 'utf8');
    if (s.slice(s.lastIndexOf(')') + 2).startsWith('Z')) return pid;
    await sleep(systemClock, 10);
  }
}

t.test('a lock whose holder is gone is taken over; a live holder\'s is not', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-lock-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, lockFileName);
  const plant = (h: Partial<LockHolder>) => writeFile(path, JSON.stringify({
    pid: process.pid, bootId: procProbe.bootId(), startTicks: procProbe.startTicks(process.pid), dataDir: dir, sinceMs: 0, ...h,
  }));
  const takes = async (what: string) => {
    const lock = await DataDirLock.acquire(dir);
    t.equal((JSON.parse(await readFile(path, 'utf8')) as LockHolder).pid, process.pid, what);
    await lock.release();
  };
  await plant({});
  await rejectsWithCode(t, DataDirLock.acquire(dir), ErrorCode.DATA_DIR_LOCKED, 'a live holder (this process) keeps it');
  const z = await zombie(t);
  await plant({ pid: z, startTicks: null });
  await takes('a zombie holder (SIGKILLed, not reaped) is dead');
  await plant({ startTicks: '1' });
  await takes('a live pid of another start time is a recycled pid, not the holder');
  await plant({ bootId: 'another-boot' });
  await takes('a holder of an earlier boot is gone');
  await plant({ pid: 2 ** 22 + 1 });
  await takes('a pid with no process');
  await writeFile(path, '');
  await takes('an empty lock file (a crash between create and write)');
});
