import t from 'tap';
import { copyFileSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DirtyBitmap, type DirtyRange } from '../src/journal/dirty-bitmap.js';
import { isVrgError } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';

const KiB = 1024;
const G = 64 * KiB;
// 16 regions + a partial 17th; one bitmap page, so each copy is header + table + bitmap = 3 pages.
const VOL = 16 * G + 1000;
const COPY = 3 * 4096;

function ranges(b: DirtyBitmap, maxBytes?: number): DirtyRange[] {
  return [...b.dirtyRanges(maxBytes)];
}

function regionsOf(b: DirtyBitmap): number[] {
  const out: number[] = [];
  for (const r of b.dirtyRanges()) for (let x = r.start; x < r.end; x += b.granularityBytes) out.push(x / b.granularityBytes);
  return out;
}

async function rejectsCode(p: Promise<unknown>, code: string): Promise<boolean> {
  try {
    await p;
    return false;
  } catch (err) {
    return isVrgError(err) && err.code === code;
  }
}

function flipByte(path: string, at: number): void {
  const buf = readFileSync(path);
  buf[at] = (buf[at] ?? 0) ^ 0x5a;
  writeFileSync(path, buf);
}

t.test('mark / persist / reopen round trip', async (t) => {
  const path = join(t.testdir(), 'vol.cbt');
  const b = await DirtyBitmap.open({ path, volumeBytes: VOL });
  t.equal(b.dirtyRegions, 0);
  t.equal(statSync(path).size, 2 * COPY);
  b.mark(3 * G, 10);
  b.mark(10 * G + 5, 2 * G);
  await b.persist();
  t.equal(b.counters.fdatasyncs, 1);
  await b.close();
  const r = await DirtyBitmap.open({ path, volumeBytes: VOL });
  t.same(regionsOf(r), [3, 10, 11, 12]);
  t.ok(r.isDirty(3 * G + G - 1));
  t.notOk(r.isDirty(4 * G));
  t.equal(r.dirtyBytes, 4 * G);
  await r.close();
  await t.rejects(r.persist(), { code: 'VRG_CLOSED' });
});

t.test('granularity boundaries: every touched region, nothing more', async (t) => {
  const b = await DirtyBitmap.open({ path: join(t.testdir(), 'v.cbt'), volumeBytes: VOL });
  b.mark(G - 1, 2); // straddles 0|1
  t.same(regionsOf(b), [0, 1]);
  b.mark(3 * G, G); // exactly region 3
  t.same(regionsOf(b), [0, 1, 3]);
  b.mark(5 * G + 1, 1);
  b.mark(7 * G - 1, 1); // last byte of region 6
  b.mark(8 * G, 0); // empty: nothing
  t.same(regionsOf(b), [0, 1, 3, 5, 6]);
  b.mark(VOL - 1, 1); // the partial last region
  t.same(regionsOf(b), [0, 1, 3, 5, 6, 16]);
  t.equal(b.dirtyBytes, 5 * G + 1000);
  t.throws(() => b.mark(VOL - 1, 2), { code: 'VRG_VOLUME_OUT_OF_RANGE' });
  t.throws(() => b.mark(-1, 2), { code: 'VRG_INVALID_ARGUMENT' });
  b.markAll();
  t.equal(b.dirtyRegions, 17);
  t.equal(b.dirtyBytes, VOL);
  await b.close();
});

t.test('open validates geometry and bounds the bitmap', async (t) => {
  const dir = t.testdir();
  const bad = async (volumeBytes: number, granularityBytes?: number) =>
    rejectsCode(DirtyBitmap.open({ path: join(dir, `x${volumeBytes}-${granularityBytes}`), volumeBytes, granularityBytes }), 'VRG_INVALID_ARGUMENT');
  t.ok(await bad(VOL, 2048), 'below 4 KiB');
  t.ok(await bad(VOL, 3 * 4096), 'not a power of two');
  t.ok(await bad(0));
  t.ok(await bad(65 * 1024 ** 4), 'over 64 TiB');
  t.ok(await bad(64 * 1024 ** 4, 4096), 'bitmap too big at 4 KiB granularity');
});

t.test('dirtyRanges merges, clips at the volume end, splits at maxBytes', async (t) => {
  const b = await DirtyBitmap.open({ path: join(t.testdir(), 'v.cbt'), volumeBytes: VOL });
  for (const r of [0, 1, 2, 4, 14, 15, 16]) b.mark(r * G, 1);
  t.same(ranges(b), [{ start: 0, end: 3 * G }, { start: 4 * G, end: 5 * G }, { start: 14 * G, end: VOL }]);
  t.same(ranges(b, 2 * G + 5), [
    { start: 0, end: 2 * G }, { start: 2 * G, end: 3 * G }, { start: 4 * G, end: 5 * G },
    { start: 14 * G, end: 16 * G }, { start: 16 * G, end: VOL },
  ]);
  t.same(ranges(b, 1).length, 7, 'maxBytes below a region still yields whole regions');
  t.equal(b.clear(0, 2 * G), 2);
  t.equal(b.clear(16 * G, VOL - 16 * G), 1, 'clear may end at the volume end');
  t.throws(() => b.clear(1, G), { code: 'VRG_INVALID_ARGUMENT' });
  t.same(ranges(b), [{ start: 2 * G, end: 3 * G }, { start: 4 * G, end: 5 * G }, { start: 14 * G, end: 16 * G }]);
  await b.close();
});

t.test('resync race: a write after the snapshot keeps its region dirty', async (t) => {
  const path = join(t.testdir(), 'v.cbt');
  const b = await DirtyBitmap.open({ path, volumeBytes: VOL });
  b.mark(0, 4 * G); // regions 0..3 dirty
  await b.persist();
  const token = b.snapshotForResync(0, 8 * G);
  // The resync reads regions 0..3 now; meanwhile the VM writes region 2 (already dirty) and 6 (clean).
  b.mark(2 * G + 100, 10);
  b.mark(6 * G, 1);
  // ...the data read is shipped and durable on DR:
  t.equal(b.clearIfUnchanged(token), 3, 'regions 0, 1, 3 cleared');
  t.same(regionsOf(b), [2, 6], 'the racing writes survive');
  t.throws(() => b.clearIfUnchanged(token), { code: 'VRG_INVALID_ARGUMENT' }, 'a token is used once');
  // A naive clear would have lost region 2:
  const naive = b.snapshotForResync(0, 4 * G);
  b.abandonResync(naive);
  t.throws(() => b.snapshotForResync(G + 1, 2 * G), { code: 'VRG_INVALID_ARGUMENT' });
  await b.persist();
  await b.close();
  const r = await DirtyBitmap.open({ path, volumeBytes: VOL });
  t.same(regionsOf(r), [2, 6]);
  await r.close();
});

t.test('torn newest copy falls back to the previous complete copy', async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'v.cbt');
  const b = await DirtyBitmap.open({ path, volumeBytes: VOL }); // gen 1 in slot 0
  b.mark(1 * G, 1);
  await b.persist(); // gen 2 -> slot 1
  b.mark(5 * G, 1);
  await b.persist(); // gen 3 -> slot 0
  b.mark(9 * G, 1);
  await b.persist(); // gen 4 -> slot 1
  t.equal(b.generation, 4);
  await b.close();

  const flipped = join(dir, 'flipped.cbt');
  copyFileSync(path, flipped);
  flipByte(flipped, COPY + 2 * 4096 + 1); // a bitmap byte of slot 1 (gen 4)
  const f = await DirtyBitmap.open({ path: flipped, volumeBytes: VOL });
  t.equal(f.generation, 3);
  t.same(regionsOf(f), [1, 5], 'marks persisted before the previous persist are all there');
  f.mark(12 * G, 1);
  await f.persist(); // rewrites the torn slot fully
  await f.close();
  const f2 = await DirtyBitmap.open({ path: flipped, volumeBytes: VOL });
  t.same(regionsOf(f2), [1, 5, 12]);
  await f2.close();

  const cut = join(dir, 'cut.cbt');
  copyFileSync(path, cut);
  truncateSync(cut, COPY + 5000); // slot 1 torn mid-table
  const c = await DirtyBitmap.open({ path: cut, volumeBytes: VOL });
  t.equal(c.generation, 3);
  t.same(regionsOf(c), [1, 5]);
  await c.close();

  const hdr = join(dir, 'hdr.cbt');
  copyFileSync(path, hdr);
  flipByte(hdr, COPY + 30); // slot 1's generation field
  const h = await DirtyBitmap.open({ path: hdr, volumeBytes: VOL });
  t.equal(h.generation, 3);
  await h.close();
});

t.test('both copies corrupt -> VRG_CBT_CORRUPT; header mismatch -> VRG_CBT_MISMATCH', async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'v.cbt');
  const b = await DirtyBitmap.open({ path, volumeBytes: VOL });
  b.mark(0, 1);
  await b.close();

  t.ok(await rejectsCode(DirtyBitmap.open({ path, volumeBytes: VOL + G }), 'VRG_CBT_MISMATCH'), 'volume size');
  t.ok(await rejectsCode(DirtyBitmap.open({ path, volumeBytes: VOL, granularityBytes: 128 * KiB }), 'VRG_CBT_MISMATCH'), 'granularity');

  const bad = join(dir, 'bad.cbt');
  copyFileSync(path, bad);
  flipByte(bad, 2 * 4096 + 7); // slot 0 bitmap
  flipByte(bad, COPY + 2 * 4096 + 7); // slot 1 bitmap
  t.ok(await rejectsCode(DirtyBitmap.open({ path: bad, volumeBytes: VOL }), 'VRG_CBT_CORRUPT'));
  writeFileSync(bad, Buffer.alloc(10));
  t.ok(await rejectsCode(DirtyBitmap.open({ path: bad, volumeBytes: VOL }), 'VRG_CBT_CORRUPT'), 'garbage file');
});

t.test('concurrent persist() calls coalesce into group commits', async (t) => {
  const path = join(t.testdir(), 'v.cbt');
  const b = await DirtyBitmap.open({ path, volumeBytes: VOL });
  b.mark(0, 1);
  const first = b.persist();
  const rest: Promise<void>[] = [];
  for (let i = 1; i < 10; i++) rest.push(b.markAndPersist(i * G, 1));
  await Promise.all([first, ...rest]);
  t.equal(b.counters.fdatasyncs, 2, 'one in flight + one for everything that queued behind it');
  await b.persist();
  t.equal(b.counters.fdatasyncs, 2, 'nothing changed: no write');
  b.mark(0, 1);
  await b.persist();
  t.equal(b.counters.fdatasyncs, 2, 're-marking a dirty region needs no write');
  t.equal(b.counters.bitmapPagesWritten, 2, 'one page per commit after the first full write of each slot');
  await b.close();
  const r = await DirtyBitmap.open({ path, volumeBytes: VOL });
  t.equal(r.dirtyRegions, 10);
  await r.close();
});

t.test('seeded random model: reopened bitmap holds every persisted mark', async (t) => {
  const seed = Number(process.env.VRG_SEED ?? Date.now() % 0x7fffffff);
  t.comment(`seed ${seed} (rerun with VRG_SEED=${seed})`);
  const rnd = seededRandom(seed);
  const dir = t.testdir();
  const path = join(dir, 'v.cbt');
  const g = 4 * KiB;
  const regions = 3 * 32768 + 4; // 4 bitmap pages
  const volumeBytes = regions * g - 123;
  const pick = (n: number): number => rnd.uint32() % n;
  let b = await DirtyBitmap.open({ path, volumeBytes, granularityBytes: g });
  const mem = new Set<number>(); // the model of the in-memory bitmap
  let mustHave = new Set<number>(); // regions whose marks a completed persist made durable (minus later clears)
  const ever = new Set<number>(); // anything that may legally be on disk
  let crashes = 0;
  let checks = 0;

  const check = async (file: string, must: Set<number>): Promise<void> => {
    const r = await DirtyBitmap.open({ path: file, volumeBytes, granularityBytes: g });
    const got = new Set(regionsOf(r));
    await r.close();
    const lost = [...must].filter((x) => !got.has(x));
    const phantom = [...got].filter((x) => !ever.has(x));
    checks++;
    if (lost.length || phantom.length) t.fail(`seed ${seed}: lost ${lost.slice(0, 5)} phantom ${phantom.slice(0, 5)}`);
  };

  for (let step = 0; step < 1500; step++) {
    const op = pick(100);
    if (op < 45) {
      const page = pick(4);
      const first = Math.min(regions - 1, page * 32768 + pick(40000));
      const len = 1 + pick(g * (pick(4) === 0 ? 64 : 3));
      const offset = Math.min(first * g + pick(g), volumeBytes - 1);
      const length = Math.min(len, volumeBytes - offset);
      b.mark(offset, length);
      for (let r = Math.floor(offset / g); r <= Math.floor((offset + length - 1) / g); r++) {
        mem.add(r);
        ever.add(r);
      }
    } else if (op < 65) {
      const snapshot = new Set(mem);
      const p = b.persist();
      if (pick(3) === 0) {
        // A crash while the write is in flight: the copy may hold a torn slot; only older persists count.
        const copy = join(dir, `crash-${step}.cbt`);
        copyFileSync(path, copy);
        await p;
        await check(copy, mustHave);
        crashes++;
      } else await p;
      for (const r of snapshot) mustHave.add(r);
    } else if (op < 75) {
      const start = pick(regions);
      const end = Math.min(regions, start + 1 + pick(5000));
      const n = b.clear(start * g, Math.min(end * g, volumeBytes) - start * g);
      let expect = 0;
      for (let r = start; r < end; r++) if (mem.delete(r)) (expect++, mustHave.delete(r));
      if (n !== expect) t.fail(`clear count ${n} != ${expect}`);
    } else if (op < 85) {
      const start = pick(regions - 1);
      const end = Math.min(regions, start + 1 + pick(3000));
      const token = b.snapshotForResync(start * g, Math.min(end * g, volumeBytes));
      const touched = new Set<number>();
      for (let k = pick(4); k > 0; k--) {
        const r = start + pick(end - start);
        b.mark(r * g, 1);
        mem.add(r);
        ever.add(r);
        touched.add(r);
      }
      b.clearIfUnchanged(token);
      for (let r = start; r < end; r++) if (!touched.has(r) && mem.delete(r)) mustHave.delete(r);
    } else if (op < 95) {
      const copy = join(dir, `snap-${step}.cbt`);
      copyFileSync(path, copy);
      await check(copy, mustHave);
    } else {
      await b.close();
      await check(path, mustHave);
      b = await DirtyBitmap.open({ path, volumeBytes, granularityBytes: g });
      // close() persisted everything: the reopened bitmap is exactly the model.
      const got = regionsOf(b);
      if (got.length !== mem.size || got.some((r) => !mem.has(r))) t.fail(`seed ${seed}: reopen != model at step ${step}`);
      mustHave = new Set(mem);
    }
    if (b.dirtyRegions !== mem.size) {
      t.fail(`seed ${seed}: dirtyRegions ${b.dirtyRegions} != model ${mem.size} at step ${step}`);
      break;
    }
  }
  await b.close();
  await check(path, mem);
  t.pass(`random model: ${checks} reopen checks, ${crashes} during an in-flight persist`);
});
