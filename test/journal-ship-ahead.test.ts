import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { ErrorCode } from '../src/core/errors.js';
import { limits } from '../src/core/limits.js';
import { Journal, RecordKind } from '../src/journal/journal.js';
import { RecordCodec } from '../src/pipeline/codec.js';

// Shipping overlaps the journal's fdatasync (issue 13 item 1): a record is readable (for the shipper) once it
// is written to its segment file, at most limits.shipAheadRecordsMax beyond the durable seq; the cache takes
// records at write time and stays bounded; trim never passes the durable seq.
//
// The fdatasync is held on a gate (FileHandle.prototype.datasync patched for the test), so "written but not
// durable" is a state the test holds, not a race it hopes to hit.

const write = (offset: number, payload: Buffer) => ({ volumeIndex: 0, offset, length: payload.length, kind: RecordKind.WRITE, codec: RecordCodec.RAW, payload });
const trimRec = (offset: number) => ({ volumeIndex: 0, offset, length: 4096, kind: RecordKind.TRIM, codec: RecordCodec.RAW, payload: Buffer.alloc(0) });

/** Holds every fdatasync until release(); restore() puts the real one back. */
async function holdDatasync(dir: string) {
  const probe = await open(join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
  await probe.close();
  const real = proto.datasync;
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  proto.datasync = async function (this: unknown) {
    await gate;
    return real.call(this);
  };
  return { release, restore: () => (proto.datasync = real) };
}

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-jahead-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

t.test('a record is readable up to writtenSeq before it is durable; the default read stays durable-only', async (t) => {
  const dir = await tempDir(t);
  const j = await Journal.open({ dir: join(dir, 'j'), capacityBytes: 64 << 20, cacheBytes: 1 << 20 });
  const hold = await holdDatasync(dir);
  t.teardown(hold.restore);
  const durable = j.append([write(0, Buffer.alloc(4096, 1)), write(4096, Buffer.alloc(4096, 2))]);
  await j.whenWritten(2);
  t.equal(j.writtenSeq, 2, 'written');
  t.equal(j.lastSeq, 0, 'not durable: the fdatasync is held');
  t.equal(j.shippableSeq, 2, 'shippable once written');
  t.same(await j.read(1, 1 << 20), [], 'the default read returns durable records only');
  const recs = await j.read(1, 1 << 20, { upToSeq: j.shippableSeq });
  t.same(recs.map((r) => r.seq), [1, 2], 'written records are readable');
  t.ok(recs[1]!.payload.every((b) => b === 2), 'with their payload');
  await t.rejects(j.read(1, 1 << 20, { upToSeq: 3 }), { code: ErrorCode.INVALID_ARGUMENT }, 'never beyond writtenSeq');
  await t.rejects(j.trim(1), { name: 'AssertionError' }, 'trim never passes the durable seq');
  hold.release();
  await durable;
  t.equal(j.lastSeq, 2);
  await j.trim(2);
  t.equal(j.firstSeq, 3, 'trimmed once durable');
  await j.close();
});

t.test('shipping runs at most shipAheadRecordsMax records beyond the durable seq', async (t) => {
  const dir = await tempDir(t);
  const j = await Journal.open({ dir: join(dir, 'j'), capacityBytes: 64 << 20 });
  const hold = await holdDatasync(dir);
  t.teardown(hold.restore);
  const n = limits.shipAheadRecordsMax + 1000; // header-only records: all fit in one group commit
  const durable = j.append(Array.from({ length: n }, (_, i) => trimRec(i * 4096)));
  await j.whenWritten(n);
  t.equal(j.lastSeq, 0, 'nothing durable yet');
  t.equal(j.writtenSeq, n, 'all written');
  t.equal(j.shippableSeq, limits.shipAheadRecordsMax, 'shippable stops at lastSeq + shipAheadRecordsMax');
  const recs = await j.read(1, 1 << 20, { upToSeq: j.shippableSeq });
  t.equal(recs[recs.length - 1]!.seq <= limits.shipAheadRecordsMax, true, 'a read up to shippableSeq stays within the bound');
  hold.release();
  await durable;
  t.equal(j.shippableSeq, n, 'durable: the bound moved on');
  await j.close();
});

t.test('the cache takes records at write time, stays bounded, and gives every ring block back', async (t) => {
  const dir = await tempDir(t);
  const cacheBytes = 256 * 1024;
  const j = await Journal.open({ dir: join(dir, 'j'), capacityBytes: 64 << 20, cacheBytes });
  const hold = await holdDatasync(dir);
  t.teardown(hold.restore);
  const appends: Promise<unknown>[] = [];
  for (let i = 0; i < 32; i++) appends.push(j.append([write(i * 65536, Buffer.alloc(65536, i))]));
  await j.whenWritten(32);
  await new Promise((r) => setImmediate(r)); // evicted blocks are freed on the next turn
  const s = j.cacheStats();
  t.equal(j.lastSeq, 0, 'none durable');
  t.ok(s.cachedBytes > 0 && s.cachedBytes <= cacheBytes, `written records are cached (${s.cachedBytes} <= ${cacheBytes})`);
  t.ok(s.ring!.usedBytesPeak <= s.ring!.capacityBytes, 'the ring never grew');
  const recs = await j.read(1, 32 * 65536, { upToSeq: j.writtenSeq });
  t.equal(recs.length, 32, 'every written record readable');
  for (const r of recs) t.ok(r.payload.every((b) => b === r.seq - 1), `record ${r.seq} intact (evicted ones read back from the file)`);
  t.ok(j.stats.recordsReadFromDisk > 0 && j.stats.recordsReadFromCache > 0, 'old ones from the file, recent ones from the cache');
  hold.release();
  await Promise.all(appends);
  await j.trim(32);
  await new Promise((r) => setImmediate(r));
  t.equal(j.cacheStats().ring!.usedBytes, 0, 'trimmed: every block is back');
  await j.close();
});

t.test('a payload appended while the cache is full is not freed before it is written', async (t) => {
  const dir = await tempDir(t);
  const j = await Journal.open({ dir: join(dir, 'j'), capacityBytes: 64 << 20, cacheBytes: 128 * 1024, groupCommitBytes: 64 * 1024 + 48 });
  const hold = await holdDatasync(dir);
  t.teardown(hold.restore);
  // One group in flight (held in its fdatasync), the rest queued behind the unsynced window: their payloads
  // are held in the ring, not cached, while cached records are evicted.
  const appends: Promise<unknown>[] = [];
  for (let i = 0; i < 6; i++) appends.push(j.append([write(i * 65536, Buffer.alloc(65536, 0x10 + i))]));
  await j.whenWritten(1);
  for (let k = 0; k < 3; k++) await new Promise((r) => setImmediate(r));
  hold.release();
  await Promise.all(appends);
  await j.close();
  const disk = await Journal.open({ dir: join(dir, 'j'), capacityBytes: 64 << 20, cacheBytes: 0 });
  const recs = await disk.read(1, 6 * 65536);
  t.equal(recs.length, 6);
  for (const r of recs) t.ok(r.payload.every((b) => b === 0x10 + r.seq - 1), `record ${r.seq} written as appended`);
  await disk.close();
});

