// The native addon (native/src/vrg_native.cc) and FileVolume's use of it, with the addon and with the plain-JS
// fallback. The fallback runs twice: in this process with `native: null` injected, and in a child process with
// VRG_NATIVE=0 (which is how operators turn the addon off), running this same file.
import { execFileSync } from 'node:child_process';
import { existsSync, openSync, closeSync, ftruncateSync, writeSync, statSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { ErrorCode } from '../src/core/errors.js';
import { FileVolume } from '../src/volume/file-volume.js';
import { loadNative, native, nativeStatus, type NativeOps } from '../src/volume/native.js';
import { needs } from './lib/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const childRun = process.env.VRG_NATIVE === '0';
const addonPath = join(fileURLToPath(new URL('..', import.meta.url)), 'native', 'build', 'Release', 'vrg_native.node');

function isZero(buf: Buffer): boolean {
  return buf.every((b) => b === 0);
}

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = ((i * 31 + seed) % 251) + 1; // never 0
  return b;
}

async function blocks(path: string): Promise<number> {
  return (await stat(path)).blocks;
}

/** The same visible behaviour with the addon (`ops`) or without it (null). */
function volumeSuite(t: Test, ops: NativeOps | null | undefined, label: string): void {
  const withAddon = ops === undefined ? native !== null : ops !== null;
  const open = (path: string, o: { sizeBytes?: number; create?: boolean } = {}) =>
    FileVolume.open(path, ops === undefined ? o : { ...o, native: ops });

  t.test(`${label}: trim reads zeros and keeps the size (frees blocks with the addon)`, async (t) => {
    const path = join(t.testdir(), 'v.img');
    const v = await open(path, { sizeBytes: 16 * MiB, create: true });
    await v.write(1 * MiB, pattern(4 * MiB, 1));
    await v.flush();
    const before = await blocks(path);
    t.ok(before >= (4 * MiB) / 512, `4 MiB allocated (${before} blocks)`);
    await v.trim(1 * MiB + 4 * KiB, 2 * MiB);
    await v.flush();
    t.ok(isZero(await v.read(1 * MiB + 4 * KiB, 2 * MiB)), 'trimmed range reads zeros');
    t.same(await v.read(1 * MiB, 4 * KiB), pattern(4 * MiB, 1).subarray(0, 4 * KiB), 'bytes before the range kept');
    t.same(await v.read(3 * MiB + 4 * KiB, MiB - 4 * KiB), pattern(4 * MiB, 1).subarray(2 * MiB + 4 * KiB, 3 * MiB), 'bytes after kept');
    t.equal((await stat(path)).size, 16 * MiB, 'size kept');
    const after = await blocks(path);
    if (withAddon) t.ok(before - after >= (2 * MiB) / 512, `punched: ${before} -> ${after} blocks`);
    else t.ok(after >= before, `fallback wrote zeros: ${before} -> ${after} blocks`);
    await v.close();
  });

  t.test(`${label}: writeZeroes with and without holes`, async (t) => {
    const path = join(t.testdir(), 'v.img');
    const v = await open(path, { sizeBytes: 8 * MiB, create: true });
    await v.write(0, pattern(8 * MiB, 2));
    await v.flush();
    const full = await blocks(path);
    await v.writeZeroes(1 * MiB + 100, 1 * MiB + 7, { noHole: true }); // unaligned edges
    await v.flush();
    t.ok(isZero(await v.read(1 * MiB + 100, 1 * MiB + 7)), 'noHole range reads zeros');
    t.same(await v.read(1 * MiB, 100), pattern(8 * MiB, 2).subarray(1 * MiB, 1 * MiB + 100), 'unaligned head kept');
    t.same(await v.read(2 * MiB + 107, 1000), pattern(8 * MiB, 2).subarray(2 * MiB + 107, 2 * MiB + 1107), 'unaligned tail kept');
    t.ok(await blocks(path) >= full, 'noHole keeps the range allocated');
    const beforePunch = await blocks(path);
    await v.writeZeroes(4 * MiB, 2 * MiB);
    await v.flush();
    t.ok(isZero(await v.read(4 * MiB, 2 * MiB)), 'hole-allowed range reads zeros');
    // ext4 may keep a little speculative preallocation around a file it just wrote: require most of
    // the 2 MiB (4096 sectors) to be freed, measured right around the call.
    const afterPunch = await blocks(path);
    if (withAddon) t.ok(beforePunch - afterPunch >= 3072, `hole-allowed zeroing deallocated with the addon: ${beforePunch} -> ${afterPunch} sectors`);
    await v.writeZeroes(0, 0);
    t.equal((await stat(path)).size, 8 * MiB, 'size kept');
    await t.rejects(v.writeZeroes(7 * MiB, 2 * MiB), { code: ErrorCode.VOLUME_OUT_OF_RANGE });
    await v.close();
  });

  t.test(`${label}: dataRanges on a sparse file`, async (t) => {
    const path = join(t.testdir(), 'v.img');
    const v = await open(path, { sizeBytes: 16 * MiB, create: true });
    await v.write(1 * MiB, pattern(64 * KiB, 3));
    await v.write(8 * MiB, pattern(128 * KiB, 4));
    await v.flush();
    const all = await v.dataRanges!(0, 16 * MiB);
    if (withAddon) {
      t.same(all, [[1 * MiB, 1 * MiB + 64 * KiB], [8 * MiB, 8 * MiB + 128 * KiB]], 'the two written extents');
      t.same(await v.dataRanges!(1 * MiB + 4 * KiB, 8 * MiB), [[1 * MiB + 4 * KiB, 1 * MiB + 64 * KiB], [8 * MiB, 8 * MiB + 128 * KiB]],
        'window starting inside data');
      t.same(await v.dataRanges!(0, 1 * MiB + 4 * KiB), [[1 * MiB, 1 * MiB + 4 * KiB]], 'clipped at the window end');
      t.same(await v.dataRanges!(2 * MiB, 4 * MiB), [], 'a window of holes has no data');
    } else {
      t.same(all, [[0, 16 * MiB]], 'fallback: the whole range is data');
    }
    t.same(await v.dataRanges!(5, 0), [], 'empty window');
    // Whatever the ranges, everything outside them reads zeros, and the data is inside them.
    const content = await v.read(0, 16 * MiB);
    let pos = 0;
    for (const [s, e] of all) {
      t.ok(isZero(content.subarray(pos, s)), `zeros in [${pos}, ${s})`);
      pos = e;
    }
    t.ok(isZero(content.subarray(pos)), `zeros after ${pos}`);
    await t.rejects(v.dataRanges!(16 * MiB - 1, 2), { code: ErrorCode.VOLUME_OUT_OF_RANGE });
    await v.close();
    await t.rejects(v.dataRanges!(0, 1), { code: ErrorCode.CLOSED });
  });

  t.test(`${label}: a loop block device`, needs('losetup'), (t) => blockDeviceCase(t, open, withAddon));
}

/** Sets up a loop device over an 8 MiB file (root only); skipped with the reason when the sandbox refuses. */
async function blockDeviceCase(t: Test, open: (p: string, o?: { sizeBytes?: number; create?: boolean }) => Promise<FileVolume>,
    withAddon: boolean): Promise<void> {
  const backing = join(t.testdir(), 'backing.img');
  const fd = openSync(backing, 'w');
  ftruncateSync(fd, 8 * MiB);
  closeSync(fd);
  let dev: string;
  try {
    dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (err) {
    t.plan(0, `cannot set up a loop device here (needs root and losetup): ${(err as Error).message.split('\n')[0]}`);
    return;
  }
  t.teardown(() => { execFileSync('losetup', ['-d', dev]); });
  const v = await open(dev, { sizeBytes: 4 * MiB, create: true });
  t.ok(v.isBlockDevice, `${dev} opened as a block device`);
  t.equal(v.sizeBytes, 8 * MiB, `size from ${withAddon ? 'BLKGETSIZE64' : 'sysfs'}`);
  await v.write(1 * MiB, pattern(1 * MiB, 5));
  t.same(await v.read(1 * MiB, 1 * MiB), pattern(1 * MiB, 5), 'reads back what was written');
  await v.writeZeroes(1 * MiB, 256 * KiB);
  t.ok(isZero(await v.read(1 * MiB, 256 * KiB)), 'writeZeroes reads zeros');
  await v.writeZeroes(1 * MiB + 256 * KiB, 256 * KiB, { noHole: true });
  t.ok(isZero(await v.read(1 * MiB + 256 * KiB, 256 * KiB)), 'writeZeroes noHole reads zeros');
  await v.trim(1 * MiB + 512 * KiB, 512 * KiB); // a discard: content afterwards is the device's business
  t.same(await v.dataRanges!(0, 8 * MiB), [[0, 8 * MiB]], 'a block device is all data');
  await v.flush();
  await v.close();
  t.equal(statSync(backing).size, 8 * MiB, 'device never truncated or grown');
  await t.rejects(open(dev, { sizeBytes: 16 * MiB, create: true }), { code: ErrorCode.VOLUME_IO }, 'a device smaller than sizeBytes is refused');
}

if (childRun) {
  t.test('VRG_NATIVE=0 disables the addon', async (t) => {
    t.equal(native, null, 'native is null');
    t.match(nativeStatus(), { loaded: false, error: /VRG_NATIVE=0/ });
  });
  volumeSuite(t, undefined, 'VRG_NATIVE=0');
} else {
  t.test('the built addon is what is loaded', async (t) => {
    const status = nativeStatus();
    t.equal(status.path, addonPath, 'loaded from native/build/Release');
    if (!existsSync(addonPath)) {
      t.comment(`addon not built: ${status.error ?? ''}`);
      return;
    }
    t.ok(status.loaded, `loaded (${status.error ?? 'ok'})`);
    t.not(native, null);
    const report = process.report.getReport() as unknown as { sharedObjects: string[] };
    t.ok(report.sharedObjects.includes(addonPath), 'the .node file is mapped into this process');
    t.match(loadNative({ VRG_NATIVE: '0' }), { native: null, status: { loaded: false, error: /VRG_NATIVE=0/ } });
  });

  t.test('dataRanges while the file changes under it: data punched between SEEK_DATA and SEEK_HOLE', { skip: native === null ? 'addon not loaded' : false }, async (t) => {
    // The race a consistency check meets on a busy source: SEEK_DATA finds data at X, a TRIM punches X before
    // SEEK_HOLE runs, and SEEK_HOLE(X) answers X. Made certain here by punching inside the seekHole call.
    const path = join(t.testdir(), 'busy.img');
    const real = native!;
    let punchOnce: { offset: number; length: number } | null = { offset: 1 * MiB, length: 64 * KiB };
    const racing: NativeOps = {
      ...real,
      seekHole: async (fd, offset) => {
        if (punchOnce !== null && offset === punchOnce.offset) {
          await real.punchHole(fd, punchOnce.offset, punchOnce.length);
          punchOnce = null;
        }
        return real.seekHole(fd, offset);
      },
    };
    const v = await FileVolume.open(path, { sizeBytes: 8 * MiB, create: true, native: racing });
    t.teardown(() => v.close());
    await v.write(1 * MiB, pattern(64 * KiB, 3));
    await v.write(4 * MiB, pattern(64 * KiB, 4));
    await v.flush();
    const ranges = await v.dataRanges!(0, 8 * MiB);
    t.equal(punchOnce, null, 'the punch landed between the two seeks');
    t.same(ranges, [[4 * MiB, 4 * MiB + 64 * KiB]], 'the punched extent is skipped, the next one found');
  });

  t.test('addon calls', { skip: native === null ? 'addon not loaded' : false }, async (t) => {
    const n = native!;
    const path = join(t.testdir(), 'sparse.img');
    const fd = openSync(path, 'w+');
    t.teardown(() => closeSync(fd));
    ftruncateSync(fd, 32 * MiB);
    t.equal(await n.seekData(fd, 0), -1, 'an all-hole file has no data (ENXIO -> -1)');
    t.equal(await n.seekHole(fd, 0), 0, 'hole at 0');
    writeSync(fd, pattern(64 * KiB, 6), 0, 64 * KiB, 4 * MiB);
    writeSync(fd, pattern(8 * KiB, 7), 0, 8 * KiB, 20 * MiB);
    t.equal(await n.seekData(fd, 0), 4 * MiB, 'first data');
    t.equal(await n.seekHole(fd, 4 * MiB), 4 * MiB + 64 * KiB, 'its end');
    t.equal(await n.seekData(fd, 4 * MiB + 64 * KiB), 20 * MiB, 'second data');
    t.equal(await n.seekHole(fd, 20 * MiB), 20 * MiB + 8 * KiB, 'its end');
    t.equal(await n.seekData(fd, 20 * MiB + 8 * KiB), -1, 'no data after');
    t.equal(await n.seekHole(fd, 32 * MiB), -1, 'past the end (ENXIO -> -1)');
    t.equal(n.isBlockDevice(fd), false, 'a regular file is not a block device');
    t.equal(await n.zeroRange(fd, 4 * MiB, 4 * KiB, false), 'zero-range', 'ext4/xfs do ZERO_RANGE');
    await n.punchHole(fd, 20 * MiB, 8 * KiB);
    t.equal(await n.seekData(fd, 4 * MiB + 64 * KiB), -1, 'punched extent is a hole');
    t.equal(statSync(path).size, 32 * MiB, 'size kept');
    await t.rejects(n.blockDeviceSize(fd), { code: 'ENOTTY', errno: -25, syscall: 'ioctl(BLKGETSIZE64)' }, 'errno name as code');
    await t.rejects(n.discard(fd, 0, 4096), { code: 'ENOTTY' });
    await t.rejects(n.punchHole(1_000_000, 0, 1), { code: 'EBADF' });
    t.throws(() => n.isBlockDevice(1_000_000), { code: 'EBADF', syscall: 'fstat' });
    t.throws(() => n.punchHole(fd, -1, 1), RangeError);
    t.throws(() => n.seekData(fd, 2 ** 53), RangeError);
    t.throws(() => (n.punchHole as unknown as (fd: string) => void)('x'), TypeError);
  });

  if (native !== null) volumeSuite(t, native, 'addon');
  volumeSuite(t, null, 'fallback (in process)');
  t.test('fallback with VRG_NATIVE=0 (child process)', async (t) => {
    t.spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)],
      { env: { ...process.env, VRG_NATIVE: '0' } }, 'VRG_NATIVE=0 run of this file');
  });
}
