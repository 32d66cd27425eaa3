import t from 'tap';
import { readdirSync, statSync, openSync, writeSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { Journal, RecordKind, type JournalRecordInput } from '../src/journal/journal.js';
import { seededRandom } from '../src/core/random.js';
import { limits } from '../src/core/limits.js';

const HEADER = 48;

function makeRecords(rnd: ReturnType<typeof seededRandom>, n: number, maxPayload: number): JournalRecordInput[] {
  const out: JournalRecordInput[] = [];
  for (let i = 0; i < n; i++) {
    const size = 1 + (rnd.uint32() % maxPayload);
    out.push({ volumeIndex: rnd.uint32() % 40, offset: (rnd.uint32() % 100000) * 512, length: size, kind: RecordKind.WRITE, codec: 0, payload: rnd.bytes(size) });
  }
  return out;
}

function segFiles(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.startsWith('seg-') && n.endsWith('.vrgj')).sort();
}

function dirBytes(dir: string): number {
  return segFiles(dir).reduce((s, n) => s + statSync(join(dir, n)).size, 0);
}

/** Every journal file: segments and spares (trimmed segments kept for reuse). */
function filesBytes(dir: string): number {
  return readdirSync(dir).filter((n) => n.endsWith('.vrgj')).reduce((s, n) => s + statSync(join(dir, n)).size, 0);
}

t.test('empty directory starts at seq 1 with one segment', async (t) => {
  const dir = t.testdir();
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 4096 });
  t.equal(j.firstSeq, 1);
  t.equal(j.lastSeq, 0);
  t.same(segFiles(dir), ['seg-0000000000000001.vrgj']);
  t.same(await j.read(1, 1000), []);
  const r = await j.append([{ volumeIndex: 0, offset: 0, length: 3, kind: RecordKind.WRITE, codec: 0, payload: Buffer.from('abc') }]);
  t.same(r, { firstSeq: 1, lastSeq: 1 });
  t.equal(j.usedBytes, HEADER + 3);
  await j.close();
});

for (const cacheBytes of [undefined, 0]) {
  t.test(`round trip across segment rolls (cacheBytes ${cacheBytes ?? 'default'})`, async (t) => {
    const dir = t.testdir();
    const rnd = seededRandom(7);
    const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 4096, cacheBytes });
    const all: JournalRecordInput[] = [];
    let expectSeq = 1;
    for (let a = 0; a < 60; a++) {
      const recs = makeRecords(rnd, 1 + (rnd.uint32() % 3), 900);
      const r = await j.append(recs);
      t.same(r, { firstSeq: expectSeq, lastSeq: expectSeq + recs.length - 1 }, 'consecutive seqs');
      expectSeq += recs.length;
      all.push(...recs);
    }
    t.equal(j.lastSeq, all.length);
    t.ok(segFiles(dir).length > 5, 'rolled into several segments');
    t.equal(j.usedBytes, dirBytes(dir), 'usedBytes = bytes of segment files');
    const got = await j.read(1, Infinity);
    t.equal(got.length, all.length);
    got.forEach((g, i) => {
      const w = all[i]!;
      if (g.seq !== i + 1 || !g.payload.equals(w.payload) || g.offset !== w.offset || g.volumeIndex !== w.volumeIndex || g.length !== w.length) {
        t.fail(`record ${i + 1} differs`);
      }
    });
    // maxBytes: at least one record, never more payload than asked beyond the first
    const one = await j.read(10, 0);
    t.equal(one.length, 1);
    t.equal(one[0]!.seq, 10);
    const some = await j.read(5, 2000);
    const sum = some.reduce((s, r) => s + r.payload.length, 0);
    t.ok(some.length >= 1 && (sum <= 2000 || some.length === 1));
    const next = all[4 + some.length];
    if (next) t.ok(sum + next.payload.length > 2000, 'stopped only when the next record would exceed maxBytes');
    some.forEach((r, i) => t.equal(r.seq, 5 + i));
    t.same(await j.read(all.length + 1, 1000), []);
    const s = j.stats;
    if (cacheBytes === 0) t.ok(s.recordsReadFromDisk > 0 && s.recordsReadFromCache === 0, 'served from disk');
    else t.ok(s.recordsReadFromCache > 0 && s.recordsReadFromDisk === 0, 'served from cache');
    await j.close();
  });
}

t.test('concurrent appends coalesce into fewer fdatasyncs', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(3);
  const j = await Journal.open({ dir, capacityBytes: 64 << 20, segmentBytes: 1 << 20 });
  const batches = Array.from({ length: 100 }, () => makeRecords(rnd, 1 + (rnd.uint32() % 4), 4000));
  const before = j.stats.commits;
  const results = await Promise.all(batches.map((b) => j.append(b)));
  const commits = j.stats.commits - before;
  t.ok(commits < batches.length, `${commits} fdatasyncs for ${batches.length} appends`);
  let seq = 1;
  results.forEach((r, i) => {
    t.same(r, { firstSeq: seq, lastSeq: seq + batches[i]!.length - 1 }, 'seqs in call order, consecutive per append');
    seq = r.lastSeq + 1;
  });
  const got = await j.read(1, Infinity);
  t.ok(got.map((g) => g.payload).every((p, i) => p.equals(batches.flat()[i]!.payload)));
  t.equal(j.stats.recordsAppended, seq - 1);
  await j.close();
});

t.test('reopen after close returns the same records and continues seqs', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(11);
  let j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 2048 });
  const all: JournalRecordInput[] = [];
  for (let a = 0; a < 20; a++) {
    const recs = makeRecords(rnd, 2, 500);
    await j.append(recs);
    all.push(...recs);
  }
  const used = j.usedBytes;
  await j.close();
  t.throws(() => j.append(makeRecords(rnd, 1, 10)), { code: 'VRG_CLOSED' }, 'refused synchronously');
  await t.rejects(j.read(1, 10), { code: 'VRG_CLOSED' });
  j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 2048 });
  t.equal(j.firstSeq, 1);
  t.equal(j.lastSeq, all.length);
  t.equal(j.usedBytes, used);
  const got = await j.read(1, Infinity);
  t.ok(got.length === all.length && got.every((g, i) => g.seq === i + 1 && g.payload.equals(all[i]!.payload)));
  t.ok(j.stats.recordsReadFromDisk === all.length, 'read back from the segment files');
  const r = await j.append(makeRecords(rnd, 3, 100));
  t.same(r, { firstSeq: all.length + 1, lastSeq: all.length + 3 });
  await j.close();
  await j.close(); // idempotent
});

t.test('trim deletes only fully acknowledged non-active segments', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(5);
  const cap = 1 << 20;
  let j = await Journal.open({ dir, capacityBytes: cap, segmentBytes: 2048 });
  for (let a = 0; a < 40; a++) await j.append(makeRecords(rnd, 1, 700));
  const files = segFiles(dir);
  t.ok(files.length >= 6);
  const firstSeqs = files.map((f) => Number(f.slice(4, 20)));
  // acknowledge up to the middle of the third segment
  const durable = firstSeqs[2]! + 1;
  t.ok(durable < firstSeqs[3]! - 1);
  await j.trim(durable);
  t.same(segFiles(dir), files.slice(2), 'segments 1 and 2 deleted, the third kept');
  t.equal(readdirSync(dir).filter((n) => n.startsWith('spare-')).length, 2, 'the two kept as spares');
  t.equal(j.filesBytes, filesBytes(dir), 'filesBytes = bytes of every journal file');
  t.equal(j.firstSeq, durable + 1);
  t.equal(j.usedBytes, dirBytes(dir));
  t.equal(j.availableBytes, cap - j.usedBytes);
  await t.rejects(j.read(durable, 100), { code: 'VRG_INVALID_ARGUMENT' });
  await t.rejects(j.read(1, 100), { code: 'VRG_INVALID_ARGUMENT' });
  t.equal((await j.read(durable + 1, 0))[0]!.seq, durable + 1);
  await j.trim(durable - 3); // stale acknowledgement: no-op
  t.equal(j.firstSeq, durable + 1);
  await t.rejects(j.trim(j.lastSeq + 1), /assertion failed/);
  // everything acknowledged: only the active segment survives
  const last = j.lastSeq;
  await j.trim(last);
  t.equal(segFiles(dir).length, 1);
  t.equal(j.firstSeq, last + 1);
  t.same(await j.read(last + 1, 100), []);
  await t.rejects(j.read(last, 100), { code: 'VRG_INVALID_ARGUMENT' });
  t.equal(j.usedBytes, dirBytes(dir));
  await j.close();
  j = await Journal.open({ dir, capacityBytes: cap, segmentBytes: 2048 });
  t.equal(j.lastSeq, last);
  t.equal((await j.append(makeRecords(rnd, 1, 10))).firstSeq, last + 1);
  await j.close();
});

t.test('capacity: a full journal rejects appends and appends nothing', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(9);
  const j = await Journal.open({ dir, capacityBytes: 8192, segmentBytes: 2048 });
  let n = 0;
  for (;;) {
    const recs = makeRecords(rnd, 1, 1000);
    if (j.usedBytes + HEADER + recs[0]!.payload.length > 8192) {
      const used = j.usedBytes;
      const last = j.lastSeq;
      t.throws(() => j.append(recs), { code: 'VRG_JOURNAL_FULL' }, 'refused synchronously');
      t.equal(j.usedBytes, used);
      t.equal(j.lastSeq, last);
      t.equal(dirBytes(dir), used, 'nothing written');
      break;
    }
    await j.append(recs);
    n++;
  }
  t.ok(n > 3);
  // a batch that only partly fits is rejected whole
  const big = makeRecords(rnd, 10, 1000);
  t.throws(() => j.append(big), { code: 'VRG_JOURNAL_FULL' }, 'refused synchronously');
  await j.trim(j.lastSeq);
  t.ok(j.availableBytes > 4096, 'trim freed space');
  const r = await j.append(makeRecords(rnd, 1, 1000));
  t.equal(r.firstSeq, n + 1, 'seqs not consumed by rejected appends');
  await j.close();
});

t.test('record too large and bad arguments', async (t) => {
  const dir = t.testdir();
  const j = await Journal.open({ dir, capacityBytes: 64 << 20 });
  const rec = (payload: Buffer): JournalRecordInput => ({ volumeIndex: 0, offset: 0, length: payload.length, kind: RecordKind.WRITE, codec: 0, payload });
  t.throws(() => j.append([rec(Buffer.alloc(limits.recordBytesMax + 1))]), { code: 'VRG_RECORD_TOO_LARGE' }, 'refused synchronously');
  t.throws(() => j.append([rec(Buffer.alloc(10)), rec(Buffer.alloc(limits.recordBytesMax + 1))]), { code: 'VRG_RECORD_TOO_LARGE' }, 'refused synchronously');
  t.throws(() => j.append([]), { code: 'VRG_INVALID_ARGUMENT' }, 'refused synchronously');
  t.throws(() => j.append([{ ...rec(Buffer.alloc(1)), kind: 99 }]), { code: 'VRG_INVALID_ARGUMENT' }, 'refused synchronously');
  t.throws(() => j.append([{ ...rec(Buffer.alloc(1)), offset: -1 }]), { code: 'VRG_INVALID_ARGUMENT' }, 'refused synchronously');
  t.equal(j.lastSeq, 0);
  t.equal(j.usedBytes, 0);
  t.same(await j.append([rec(Buffer.alloc(limits.recordBytesMax))]), { firstSeq: 1, lastSeq: 1 });
  await t.rejects(j.read(0, 10), { code: 'VRG_INVALID_ARGUMENT' });
  await j.close();
  await t.rejects(Journal.open({ dir, capacityBytes: 1000, segmentBytes: 600 }), { code: 'VRG_CONFIG_INVALID' });
});

t.test('read-back from disk verifies the CRC', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(13);
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 4096, cacheBytes: 0 });
  for (let a = 0; a < 5; a++) await j.append(makeRecords(rnd, 1, 300));
  t.equal((await j.read(1, Infinity)).length, 5);
  // flip one payload byte of record 3 behind the journal's back
  const path = join(dir, segFiles(dir)[0]!);
  const fd = openSync(path, 'r+');
  const all = await j.read(1, Infinity);
  const pos = all.slice(0, 2).reduce((s, r) => s + HEADER + r.payload.length, 0) + HEADER + 1;
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, pos);
  b[0] = b[0]! ^ 0x40;
  writeSync(fd, b, 0, 1, pos);
  closeSync(fd);
  await t.rejects(j.read(3, 0), { code: 'VRG_JOURNAL_CORRUPT' });
  await t.rejects(j.read(1, Infinity), { code: 'VRG_JOURNAL_CORRUPT' });
  t.equal((await j.read(1, 0)).length, 1, 'intact records still readable');
  t.equal((await j.read(4, Infinity)).length, 2);
  await j.close();
});

t.test('cache eviction falls back to disk', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(17);
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 4096, cacheBytes: 3000 });
  const all: JournalRecordInput[] = [];
  for (let a = 0; a < 30; a++) {
    const recs = makeRecords(rnd, 1, 500);
    await j.append(recs);
    all.push(...recs);
  }
  const got = await j.read(1, Infinity);
  t.ok(got.length === 30 && got.every((g, i) => g.seq === i + 1 && g.payload.equals(all[i]!.payload)));
  const s = j.stats;
  t.ok(s.recordsReadFromDisk > 0 && s.recordsReadFromCache > 0, `disk ${s.recordsReadFromDisk}, cache ${s.recordsReadFromCache}`);
  await j.close();
});

t.test('interleaved appends, reads and trims', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(21);
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 3000, cacheBytes: 5000 });
  const all = new Map<number, Buffer>();
  const pending: Promise<unknown>[] = [];
  let shipped = 0;
  for (let step = 0; step < 400; step++) {
    const recs = makeRecords(rnd, 1 + (rnd.uint32() % 3), 400);
    pending.push(j.append(recs).then((r) => recs.forEach((x, i) => all.set(r.firstSeq + i, x.payload))));
    if (step % 7 === 0) await Promise.all(pending.splice(0));
    if (step % 5 === 0 && shipped < j.lastSeq) {
      const got = await j.read(shipped + 1, 1500);
      for (const g of got) if (!g.payload.equals(all.get(g.seq)!)) t.fail(`seq ${g.seq} differs`);
      shipped = got[got.length - 1]!.seq;
      if (rnd.float() < 0.5) await j.trim(shipped);
    }
  }
  await Promise.all(pending);
  const rest = await j.read(shipped + 1, Infinity);
  t.equal(rest.length, j.lastSeq - shipped, 'the unshipped tail is all there');
  for (const g of rest) if (!g.payload.equals(all.get(g.seq)!)) t.fail(`seq ${g.seq} differs`);
  t.ok(j.stats.segmentsDeleted > 5, 'old segments were deleted along the way');
  t.ok(j.stats.segmentsReused > 0, 'and new segments reused their files');
  await j.trim(j.lastSeq);
  t.equal(segFiles(dir).length, 1, 'only the active segment is left');
  t.ok(j.usedBytes <= dirBytes(dir), 'a reused file may be longer than its records (stale ones of lower seqs)');
  t.equal(j.filesBytes, filesBytes(dir), 'filesBytes = bytes of every journal file');
  t.ok(j.filesBytes <= 1 << 20, 'the journal files stay within capacityBytes');
  const lastSeq = j.lastSeq;
  await j.close();
  t.equal(dirBytes(dir), j.usedBytes, 'at close the active file is cut to its records');
  const k = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 3000 });
  t.equal(k.lastSeq, lastSeq, 'reopened at the same seq');
  t.equal(k.stats.tailsCut, 0, 'nothing to cut after a clean close');
  await k.close();
});

t.test('a reused segment with stale records past a crash replays up to its own records', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(22);
  const opts = { dir, capacityBytes: 1 << 20, segmentBytes: 4096, cacheBytes: 0 };
  let j = await Journal.open(opts);
  const payloads = new Map<number, Buffer>();
  const append = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const recs = makeRecords(rnd, 1, 1000);
      const r = await j.append(recs);
      payloads.set(r.firstSeq, recs[0]!.payload);
    }
  };
  await append(30);
  await j.trim(j.lastSeq); // the full segments become spares
  const spares = readdirSync(dir).filter((n) => n.startsWith('spare-'));
  t.ok(spares.length >= 2, `the full segments became spares (${spares.length})`);
  await append(2); // the active segment fills (4 records of ~1 KiB) and rolls into a reused file
  await append(2);
  t.ok(j.stats.segmentsReused >= 1, 'a spare was reused');
  const active = segFiles(dir).at(-1)!;
  const before = statSync(join(dir, active)).size;
  // A crash: the process dies without close(), so the reused file keeps its stale tail.
  const lastSeq = j.lastSeq;
  const activeRecordsBytes = j.usedBytes - (dirBytes(dir) - before);
  t.ok(before > activeRecordsBytes, `the reused file (${before} bytes) is longer than its records (${activeRecordsBytes})`);
  j = await Journal.open(opts);
  t.equal(j.lastSeq, lastSeq, 'every durable record is found, none of the stale ones');
  t.equal(j.stats.tailsCut, 1, 'the stale tail is cut as a torn one would be');
  t.equal(statSync(join(dir, active)).size, activeRecordsBytes, 'down to its records');
  for (const r of await j.read(j.firstSeq, Infinity)) t.ok(r.payload.equals(payloads.get(r.seq)!), `seq ${r.seq} reads back`);
  t.equal((await j.append(makeRecords(rnd, 1, 10))).firstSeq, lastSeq + 1, 'appends continue after them');
  await j.close();
});

t.test('a failed write makes the journal fail-stop', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(23);
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 4096 });
  await j.append(makeRecords(rnd, 2, 100));
  // white-box: swap the active segment's handle for one whose writes fail
  const seg = (j as unknown as { segments: { fh: Promise<unknown> }[] }).segments.at(-1)!;
  const real = await seg.fh;
  seg.fh = Promise.resolve({ writev: () => Promise.reject(Object.assign(new Error('EIO'), { code: 'EIO' })), close: () => (real as { close(): Promise<void> }).close() });
  const a = j.append(makeRecords(rnd, 1, 100));
  const b = j.append(makeRecords(rnd, 1, 100));
  await t.rejects(a, { code: 'VRG_JOURNAL_IO' });
  await t.rejects(b, { code: 'VRG_JOURNAL_IO' });
  t.throws(() => j.append(makeRecords(rnd, 1, 100)), { code: 'VRG_JOURNAL_IO' }, 'refused synchronously');
  t.equal(j.lastSeq, 2);
  t.equal((await j.read(1, Infinity)).length, 2, 'durable records stay readable');
  await j.close();
});
