// Drop-behind (src/volume/drop-behind.ts): what a volume wrote leaves the page cache once written back, with
// bounded bookkeeping; and the real thing on a file: fincore (util-linux) reads the file's resident bytes.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import t from 'tap';
import { DropBehind } from '../src/volume/drop-behind.js';
import { FileVolume } from '../src/volume/file-volume.js';
import { native } from '../src/volume/native.js';
import { needs } from './lib/tools.js';

const MiB = 1024 * 1024;

function recorder(): { calls: Array<[number, number]>; drop: (o: number, l: number) => Promise<void> } {
  const calls: Array<[number, number]> = [];
  return { calls, drop: async (o, l) => void calls.push([o, l]) };
}

t.test('each closed window is dropped twice: as it closes, then lagWindows windows later', async (t) => {
  const r = recorder();
  const db = new DropBehind(r.drop, { windowBytes: 4 * MiB, lagWindows: 2 });
  for (let off = 0; off < 16 * MiB; off += MiB) {
    db.wrote(off, MiB);
    await db.idle();
  }
  await db.idle();
  // windows [0,4) [4,8) [8,12) [12,16) MiB: each dropped once at close; the first two again 2 windows later
  t.same(r.calls.map(([o, l]) => [o / MiB, l / MiB]), [[0, 4], [4, 4], [8, 4], [0, 4], [12, 4], [4, 4]]);
  t.equal(db.stats.windows, 4);
});

t.test('an fdatasync frees everything written before it, nothing written after', async (t) => {
  const r = recorder();
  const db = new DropBehind(r.drop, { windowBytes: 64 * MiB });
  db.wrote(0, MiB);
  db.wrote(10 * MiB, MiB);
  const before = db.takeAll();
  db.wrote(20 * MiB, MiB); // during the fdatasync: not covered by it
  db.synced(before);
  await db.idle();
  t.same(r.calls, [[0, MiB], [10 * MiB, MiB]]);
  t.same(db.takeAll(), [{ start: 20 * MiB, end: 21 * MiB }]);
});

t.test('random writes keep at most extentsMax extents a window (then their hull)', async (t) => {
  const r = recorder();
  const db = new DropBehind(r.drop, { windowBytes: 1024 * MiB, extentsMax: 8 });
  let lo = Infinity;
  let hi = 0;
  for (let i = 0; i < 1000; i++) {
    const off = ((i * 7919) % 4096) * 8192; // scattered 4 KiB writes, never adjacent
    db.wrote(off, 4096);
    lo = Math.min(lo, off);
    hi = Math.max(hi, off + 4096);
    t.ok(db.openExtents <= 8, 'bounded');
  }
  const all = db.takeAll();
  t.ok(all.length <= 8);
  t.equal(Math.min(...all.map((e) => e.start)), lo, 'the hull still covers every write');
  t.equal(Math.max(...all.map((e) => e.end)), hi);
});

t.test('ranges wait in a bounded queue while a call runs, none is lost; failures never throw', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((res) => (release = res));
  const calls: Array<[number, number]> = [];
  const db = new DropBehind(async (o, l) => {
    calls.push([o, l]);
    await gate;
    throw new Error('EIO');
  }, { windowBytes: 4096, lagWindows: 1000, extentsMax: 4 });
  for (let i = 0; i < 100; i++) db.wrote(i * 8192, 4096); // 100 windows, never adjacent
  t.ok(db.queuedExtents <= 4, `queue bounded: ${db.queuedExtents}`);
  release();
  await db.idle();
  t.equal(db.stats.windows, 100);
  t.equal(db.stats.errors, calls.length, 'every failed call counted');
  const covered = (off: number) => calls.some(([o, l]) => off >= o && off + 4096 <= o + l);
  t.ok(Array.from({ length: 100 }, (_, i) => i * 8192).every(covered), 'every window was in some call');
});

async function residentBytes(path: string): Promise<number> {
  const out = execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' });
  return Number(out.trim());
}

async function writeVolume(path: string, dropBehindBytes: number): Promise<{ resident: number; digest: string; read: string }> {
  const vol = await FileVolume.open(path, { create: true, sizeBytes: 96 * MiB, dropBehindBytes });
  const hash = createHash('sha256');
  for (let off = 0; off < 64 * MiB; off += MiB) {
    const chunk = Buffer.alloc(MiB, (off / MiB) % 251 + 1);
    hash.update(chunk);
    await vol.write(off, chunk);
  }
  await vol.flush();
  await vol.close();
  const resident = await residentBytes(path);
  const back = await FileVolume.open(path);
  const read = createHash('sha256').update(await back.read(0, 64 * MiB)).digest('hex');
  await back.close();
  return { resident, digest: hash.digest('hex'), read };
}

const fincore = needs('fincore');
t.test('a FileVolume leaves what it wrote out of the page cache after its flush; 0 keeps it', {
  skip: fincore.skip ?? (native ? undefined : 'needs the native addon (npm run build:native)'),
}, async (t) => {
  const dropped = await writeVolume(join(t.testdir(), 'a.img'), 8 * MiB);
  const kept = await writeVolume(join(t.testdir(), 'b.img'), 0);
  t.equal(dropped.read, dropped.digest, 'content intact');
  t.equal(kept.read, kept.digest);
  t.ok(dropped.resident <= 4 * MiB, `drop-behind: ${dropped.resident} B resident of 64 MiB written`);
  t.ok(kept.resident >= 60 * MiB, `kept: ${kept.resident} B resident`);
});
