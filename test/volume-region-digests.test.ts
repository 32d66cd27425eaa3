// Per-region digests for the consistency check (src/volume/region-digests.ts), on real FileVolume files.
import { join } from 'node:path';
import t from 'tap';
import { ErrorCode, isVrgError } from '../src/core/errors.js';
import { FileVolume } from '../src/volume/file-volume.js';
import {
  compareRegions, compareSummaries, decodeRegionDigests, digestVolume, encodeRegionDigests, groupByteRange,
  regionsMax, summarize, zeroRegionDigest, type RegionDigests,
} from '../src/volume/region-digests.js';
import type { DataRange, Volume } from '../src/volume/volume.js';
import { code } from './lib/error-code.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Deterministic non-trivial bytes (xorshift), never all zeros. */
function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    if (i + 4 <= length) b.writeUInt32LE(x, i);
    else for (let k = i; k < length; k++) b[k] = (x >>> ((k - i) * 8)) & 0xff;
  }
  return b;
}

async function fileVolume(dir: string, name: string, content: Buffer | number): Promise<FileVolume> {
  const size = typeof content === 'number' ? content : content.length;
  const v = await FileVolume.open(join(dir, name), { sizeBytes: size, create: true });
  if (typeof content !== 'number') {
    for (let o = 0; o < size; o += 8 * MiB) await v.write(o, content.subarray(o, Math.min(size, o + 8 * MiB)));
  }
  return v;
}

/** Counts reads (and reads in flight); `noHoles` hides dataRanges. */
function counting(inner: Volume, opts: { noHoles?: boolean; onRead?: (n: number) => void } = {}) {
  const stats = { reads: 0, bytes: 0, inflight: 0, maxInflight: 0 };
  const v: Volume = {
    url: inner.url,
    sizeBytes: inner.sizeBytes,
    read: async (offset, length) => {
      stats.reads++;
      stats.bytes += length;
      stats.inflight++;
      stats.maxInflight = Math.max(stats.maxInflight, stats.inflight);
      opts.onRead?.(stats.reads);
      try {
        return await inner.read(offset, length);
      } finally {
        stats.inflight--;
      }
    },
    write: (o, d) => inner.write(o, d),
    writeZeroes: (o, l, z) => inner.writeZeroes(o, l, z),
    trim: (o, l) => inner.trim(o, l),
    flush: () => inner.flush(),
    close: () => inner.close(),
  };
  if (!opts.noHoles && inner.dataRanges) v.dataRanges = (o, l) => inner.dataRanges!(o, l);
  return { v, stats };
}

function rate(bytes: number, ms: number): string {
  return `${(bytes / 1e6 / (ms / 1e3)).toFixed(0)} MB/s`;
}

t.test('identical volumes: no differing ranges, equal summaries', async (t) => {
  const dir = t.testdir();
  const size = 48 * MiB + 12_345;
  const content = pattern(size, 1);
  const a = await fileVolume(dir, 'a.img', content);
  const b = await fileVolume(dir, 'b.img', content);
  let last: [number, number] = [0, 0];
  const t0 = performance.now();
  const da = await digestVolume(a, { onProgress: (d, total) => { last = [d, total]; } });
  const ms = performance.now() - t0;
  const db = await digestVolume(b);
  t.equal(da.digests.length, 49 * 32, '49 regions of 1 MiB, the last one short');
  t.same(last, [size, size], 'progress ends at total');
  t.same(compareRegions(da, db), [], 'no differing ranges');
  t.same(compareSummaries(summarize(da), summarize(db)), [], 'no differing groups');
  t.same(summarize(da).digests, summarize(db).digests, 'equal summaries');
  t.comment(`digestVolume, 1 MiB regions, file in page cache: ${rate(size, ms)}`);
  await a.close();
  await b.close();
});

t.test('single-byte differences at region boundaries are found exactly', async (t) => {
  const dir = t.testdir();
  const rb = 64 * KiB;
  const size = 20 * rb + 1000; // not a multiple of regionBytes
  const content = pattern(size, 2);
  const src = await fileVolume(dir, 'src.img', content);
  const dst = await fileVolume(dir, 'dst.img', content);
  const ds = await digestVolume(src, { regionBytes: rb, readBytesMax: 4 * rb });
  const cases: [string, number, DataRange][] = [
    ['first byte of the volume', 0, [0, rb]],
    ['last byte of region 0', rb - 1, [0, rb]],
    ['first byte of region 1', rb, [rb, 2 * rb]],
    ['last byte of region 7', 8 * rb - 1, [7 * rb, 8 * rb]],
    ['first byte of the short last region', 20 * rb, [20 * rb, size]],
    ['last byte of the volume', size - 1, [20 * rb, size]],
  ];
  for (const [what, at, range] of cases) {
    const orig = content.subarray(at, at + 1);
    await dst.write(at, Buffer.from([orig[0]! ^ 0x5a]));
    const dd = await digestVolume(dst, { regionBytes: rb, readBytesMax: 4 * rb });
    t.same(compareRegions(ds, dd), [range], what);
    const groups = compareSummaries(summarize(ds, 4), summarize(dd, 4));
    t.same(groups, [Math.floor(range[0] / rb / 4)], `${what}: one group`);
    t.same(compareRegions(ds, dd, groups, 4), [range], `${what}: via the group`);
    await dst.write(at, orig);
  }
  // Adjacent differing regions merge; separate ones stay separate.
  for (const at of [rb - 1, rb, 5 * rb + 3, size - 1]) await dst.write(at, Buffer.from([content[at]! ^ 1]));
  const dd = await digestVolume(dst, { regionBytes: rb });
  t.same(compareRegions(ds, dd), [[0, 2 * rb], [5 * rb, 6 * rb], [20 * rb, size]], 'merged and clipped to end');
  await src.close();
  await dst.close();
});

t.test('sparse volume: same digests as the same content written in full, far fewer bytes read', async (t) => {
  const dir = t.testdir();
  const size = 64 * MiB;
  const pieces: [number, Buffer][] = [
    [0, pattern(4 * KiB, 3)],
    [5 * MiB + 100, pattern(10_000, 4)],
    [33 * MiB - 10, pattern(20, 5)], // spans a region boundary
    [size - 4 * KiB, pattern(4 * KiB, 6)],
  ];
  const sparse = await fileVolume(dir, 'sparse.img', size);
  const full = await fileVolume(dir, 'full.img', Buffer.alloc(size));
  for (const [o, d] of pieces) {
    await sparse.write(o, d);
    await full.write(o, d);
  }
  await sparse.flush();
  const holes = await sparse.dataRanges(0, size);
  const fsReportsHoles = holes.reduce((n, [a, b]) => n + b - a, 0) < size;
  t.comment(`sparse file data ranges: ${JSON.stringify(holes)}`);

  const cs = counting(sparse);
  const t0 = performance.now();
  const ds = await digestVolume(cs.v);
  const msSparse = performance.now() - t0;
  const cf = counting(full, { noHoles: true });
  const t1 = performance.now();
  const df = await digestVolume(cf.v);
  const msFull = performance.now() - t1;
  t.same(ds.digests, df.digests, 'hole-skipping digests equal full-read digests');
  t.same(compareRegions(ds, df), []);
  t.equal(cf.stats.bytes, size, 'full volume read once');
  t.ok(cs.stats.maxInflight <= 2 && cf.stats.maxInflight <= 2, 'at most two reads in flight');
  const emptyRegion = ds.digests.subarray(10 * 32, 11 * 32);
  t.same(emptyRegion, zeroRegionDigest(MiB), 'a hole region has the zero digest');
  if (fsReportsHoles) {
    t.ok(cs.stats.bytes <= 5 * MiB, `sparse read ${cs.stats.bytes} bytes (5 regions touch data)`);
  } else {
    t.comment('file system (or missing addon) reports no holes: read counts not compared');
  }
  t.comment(`sparse 64 MiB: ${cs.stats.bytes} bytes read, ${msSparse.toFixed(1)} ms (${rate(size, msSparse)} of volume); ` +
    `full: ${rate(size, msFull)}`);
  await sparse.close();
  await full.close();
});

t.test('start/end sub-ranges', async (t) => {
  const dir = t.testdir();
  const rb = 64 * KiB;
  const size = 32 * rb;
  const content = pattern(size, 7);
  const src = await fileVolume(dir, 'src.img', content);
  const dst = await fileVolume(dir, 'dst.img', content);
  await dst.write(10 * rb + 5, Buffer.from([content[10 * rb + 5]! ^ 0xff]));
  await dst.write(30 * rb, Buffer.from([content[30 * rb]! ^ 0xff])); // outside the sub-range

  const whole = await digestVolume(src, { regionBytes: rb });
  const aligned = await digestVolume(src, { regionBytes: rb, start: 2 * rb, end: 7 * rb });
  t.same(aligned.digests, whole.digests.subarray(2 * 32, 7 * 32), 'aligned sub-range = slice of the whole');

  const start = 3 * rb + 17;
  const end = 12 * rb + 5;
  const a = await digestVolume(src, { regionBytes: rb, start, end });
  const b = await digestVolume(dst, { regionBytes: rb, start, end });
  t.equal(a.digests.length, 9 * 32, 'ceil((end - start) / regionBytes) regions');
  t.same(compareRegions(a, b), [[start + 6 * rb, start + 7 * rb]], 'region counted from start');
  await dst.write(end - 1, Buffer.from([content[end - 1]! ^ 0xff]));
  await dst.write(end, Buffer.from([content[end]! ^ 0xff])); // just past the sub-range
  const b2 = await digestVolume(dst, { regionBytes: rb, start, end });
  t.same(compareRegions(a, b2), [[start + 6 * rb, start + 7 * rb], [start + 8 * rb, end]], 'short last region, clipped to end');
  const empty = await digestVolume(src, { regionBytes: rb, start: 5, end: 5 });
  t.equal(empty.digests.length, 0, 'empty range');

  t.equal(code(() => compareRegions(a, whole)), ErrorCode.INVALID_ARGUMENT, 'different start/end');
  const other = await digestVolume(src, { regionBytes: 2 * rb });
  t.equal(code(() => compareRegions(whole, other)), ErrorCode.INVALID_ARGUMENT, 'different regionBytes');
  t.equal(code(() => compareSummaries(summarize(whole, 4), summarize(whole, 8))), ErrorCode.INVALID_ARGUMENT, 'different fanouts');
  for (const opts of [{ end: size + 1 }, { start: 10, end: 5 }, { start: -1 }, { regionBytes: 32 * KiB },
    { regionBytes: 96 * KiB }, { regionBytes: rb, readBytesMax: rb - 1 }, { start: 0.5 }]) {
    await t.rejects(digestVolume(src, opts), { code: ErrorCode.INVALID_ARGUMENT }, JSON.stringify(opts));
  }
  await src.close();
  await dst.close();
});

t.test('encode/decode round trip; truncated and absurd input rejected', async (t) => {
  const d: RegionDigests = { regionBytes: MiB, start: 3 * MiB, end: 10 * MiB + 7, digests: pattern(8 * 32, 8) };
  const enc = encodeRegionDigests(d);
  t.equal(enc.length, 32 + 8 * 32, '32-byte header + digests');
  t.same(decodeRegionDigests(enc), d, 'round trip');
  const big: RegionDigests = { regionBytes: 64 * KiB, start: 2 ** 52, end: 2 ** 52 + 64 * KiB, digests: pattern(32, 9) };
  t.same(decodeRegionDigests(encodeRegionDigests(big)), big, 'large offsets round trip');
  const empty: RegionDigests = { regionBytes: MiB, start: 0, end: 0, digests: Buffer.alloc(0) };
  t.same(decodeRegionDigests(encodeRegionDigests(empty)), empty, 'empty round trip');

  for (const len of [0, 4, 31, 32, 33, enc.length - 1]) {
    t.equal(code(() => decodeRegionDigests(enc.subarray(0, len))), ErrorCode.INVALID_ARGUMENT, `truncated to ${len}`);
  }
  t.equal(code(() => decodeRegionDigests(Buffer.concat([enc, Buffer.alloc(1)]))), ErrorCode.INVALID_ARGUMENT, 'trailing byte');
  const mutate = (what: string, f: (b: Buffer) => void) => {
    const b = Buffer.from(enc);
    f(b);
    t.equal(code(() => decodeRegionDigests(b)), ErrorCode.INVALID_ARGUMENT, what);
  };
  mutate('bad magic', (b) => b.write('XRGD', 0, 'latin1'));
  mutate('bad version', (b) => b.writeUInt8(2, 4));
  mutate('bad algorithm', (b) => b.writeUInt8(9, 5));
  mutate('regionBytes not a power of two', (b) => b.writeUInt32BE(MiB + 1, 8));
  mutate('regionBytes too small', (b) => b.writeUInt32BE(4 * KiB, 8));
  mutate('end before start', (b) => b.writeBigUInt64BE(0n, 20));
  mutate('offset beyond 2^53', (b) => b.writeBigUInt64BE(2n ** 60n, 20));
  mutate('count disagrees with the range', (b) => b.writeUInt32BE(9, 28));
  mutate('absurd count', (b) => b.writeUInt32BE(0xffffffff, 28));
  mutate('absurd range', (b) => { b.writeUInt32BE(64 * KiB, 8); b.writeBigUInt64BE(2n ** 50n, 20); });
  t.equal(code(() => decodeRegionDigests(enc, { maxRegions: 4 })), ErrorCode.INVALID_ARGUMENT, 'over the caller\'s maxRegions');
  t.ok(regionsMax >= 1 << 20, `regionsMax ${regionsMax}`);
  t.equal(code(() => encodeRegionDigests({ ...d, digests: d.digests.subarray(32) })), ErrorCode.INVALID_ARGUMENT, 'encode checks length');
});

t.test('summaries narrow differences down to the right groups', async (t) => {
  const dir = t.testdir();
  const rb = 64 * KiB;
  const size = 160 * rb + 999; // 161 regions
  const content = pattern(size, 10);
  const src = await fileVolume(dir, 'src.img', content);
  const dst = await fileVolume(dir, 'dst.img', content);
  for (const region of [3, 100, 160]) await dst.write(region * rb, Buffer.from([content[region * rb]! ^ 0x80]));
  const ds = await digestVolume(src, { regionBytes: rb });
  const dd = await digestVolume(dst, { regionBytes: rb });
  const fanout = 16;
  const ss = summarize(ds, fanout);
  const sd = summarize(dd, fanout);
  t.equal(ss.digests.length, 11 * 32, '11 groups, the last one short');
  const groups = compareSummaries(ss, sd);
  t.same(groups, [0, 6, 10], 'groups of regions 3, 100, 160');
  t.same(groups.map((g) => groupByteRange(ds, fanout, g)), [[0, 16 * rb], [96 * rb, 112 * rb], [160 * rb, size]]);
  const expected = [[3 * rb, 4 * rb], [100 * rb, 101 * rb], [160 * rb, size]];
  t.same(compareRegions(ds, dd, groups, fanout), expected, 'regions within the differing groups');
  t.same(compareRegions(ds, dd), expected, 'same as comparing everything');
  t.same(compareRegions(ds, dd, [1, 2], fanout), [], 'clean groups: nothing');
  t.equal(code(() => compareRegions(ds, dd, [11], fanout)), ErrorCode.INVALID_ARGUMENT, 'group out of range');
  // The group's byte range, digested alone, gives the same region digests (how the link asks for one group).
  const [gs, ge] = groupByteRange(ds, fanout, 6);
  const part = await digestVolume(dst, { regionBytes: rb, start: gs, end: ge });
  t.same(part.digests, dd.digests.subarray(96 * 32, 112 * 32), 'group sub-range digests match');
  t.comment(`traffic for a clean check of this volume: ${ss.digests.length} summary bytes vs ${ds.digests.length} region-digest bytes`);
  await src.close();
  await dst.close();
});

t.test('abort via AbortSignal stops early (rejects with signal.reason, a DOMException AbortError)', async (t) => {
  const dir = t.testdir();
  const v = await fileVolume(dir, 'v.img', pattern(32 * MiB, 11));
  const ac = new AbortController();
  const c = counting(v, { onRead: (n) => { if (n === 2) ac.abort(); } });
  const err = await digestVolume(c.v, { readBytesMax: MiB, signal: ac.signal }).then(() => null, (e: unknown) => e);
  t.ok(err instanceof DOMException && err.name === 'AbortError', `rejected with ${String(err)}`);
  t.notOk(isVrgError(err), 'not a VrgError');
  t.ok(c.stats.reads <= 3, `stopped after ${c.stats.reads} of 32 reads`);
  t.equal(c.stats.inflight, 0, 'no read left in flight');

  const pre = new AbortController();
  pre.abort(new Error('custom reason'));
  const c2 = counting(v);
  await t.rejects(digestVolume(c2.v, { signal: pre.signal }), { message: 'custom reason' }, 'already aborted: its reason');
  t.equal(c2.stats.reads, 0, 'nothing read');
  await v.close();
});

t.test('throughput: hashing alone (in-memory volume)', async (t) => {
  const size = 256 * MiB;
  const mem = pattern(16 * MiB, 12);
  const v: Volume = {
    url: 'mem:', sizeBytes: size,
    read: async (o, l) => Buffer.from(mem.subarray(o % (16 * MiB), (o % (16 * MiB)) + l)),
    write: async () => {}, writeZeroes: async () => {}, trim: async () => {}, flush: async () => {}, close: async () => {},
  };
  for (const regionBytes of [64 * KiB, MiB]) {
    const t0 = performance.now();
    const d = await digestVolume(v, { regionBytes });
    const ms = performance.now() - t0;
    t.equal(d.digests.length, (size / regionBytes) * 32);
    t.comment(`sha256 digestVolume, ${regionBytes / KiB} KiB regions, no I/O: ${rate(size, ms)}`);
  }
});
