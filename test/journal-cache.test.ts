import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Journal, RecordKind } from '../src/journal/journal.js';
import { RecordCodec } from '../src/pipeline/codec.js';

// The journal's record cache keeps its own copy of each payload, in its own bounded ring: the appender may
// reuse its buffer (a pooled NBD payload) once append() returns, and evicted payloads give their room back.

const write = (offset: number, payload: Buffer) => ({ volumeIndex: 0, offset, length: payload.length, kind: RecordKind.WRITE, codec: RecordCodec.RAW, payload });

t.test('a payload reused by its appender right after append() is cached and written as it was', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-jcache-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const j = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes: 1 << 20 });
  const buf = Buffer.alloc(4096, 0xaa);
  const done = j.append([write(0, buf)]);
  buf.fill(0x55); // the NBD connection reuses its block as soon as the request is handed on
  await done;
  const [rec] = await j.read(1, 1 << 20);
  t.ok(rec!.payload.every((b) => b === 0xaa), 'the cached copy is what was appended');
  t.equal(j.counters.recordsReadFromCache, 1, 'served from the cache');
  await j.close();
  const again = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes: 0 });
  const [disk] = await again.read(1, 1 << 20);
  t.ok(disk!.payload.every((b) => b === 0xaa), 'the journal file holds it too');
  await again.close();
});

t.test('the cache ring stays bounded: evicted payloads give their room back, the rest are read from disk', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-jcache-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const cacheBytes = 256 * 1024;
  const j = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes });
  for (let i = 0; i < 64; i++) await j.append([write(i * 65536, Buffer.alloc(65536, i))]);
  await new Promise((r) => setImmediate(r)); // evicted blocks are freed on the next turn
  const s = j.cacheStats();
  t.ok(s.cachedBytes <= cacheBytes, `cached ${s.cachedBytes} <= ${cacheBytes}`);
  t.ok(s.ring!.usedBytes <= s.ring!.capacityBytes && s.ring!.usedBytesPeak <= s.ring!.capacityBytes, 'the ring never grew');
  t.equal(s.heldOutsideRing, 0, 'every payload found room');
  const all = await j.read(1, 64 * 65536);
  t.equal(all.length, 64);
  for (const r of all) t.ok(r.payload.every((b) => b === r.seq - 1), `record ${r.seq} intact`);
  t.ok(j.counters.recordsReadFromDisk > 0 && j.counters.recordsReadFromCache > 0, 'old ones from disk, recent ones from the cache');
  await j.trim(64);
  await new Promise((r) => setImmediate(r));
  t.equal(j.cacheStats().ring!.usedBytes, 0, 'trimmed: every block is back');
  await j.close();
});

t.test('pinned reads from disk land in the read ring, bounded, and give it back on release', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-jcache-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const readRingBytes = 640 * 1024; // two reads of 4 records (payloads and headers), not three
  const j = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes: 0, readRingBytes });
  for (let i = 0; i < 32; i++) await j.append([write(i * 65536, Buffer.alloc(65536, i + 1))]);
  t.equal(j.cacheStats().readRing, null, 'no ring until a pinned read needs the disk');
  const a = await j.readPinned(1, 256 * 1024);
  const b = await j.readPinned(5, 256 * 1024);
  const ring = j.cacheStats().readRing!;
  t.ok(ring.usedBytes >= 512 * 1024 && ring.usedBytes <= ring.capacityBytes, `two batches held: ${ring.usedBytes} bytes`);
  const c = await j.readPinned(9, 256 * 1024); // no room left: a buffer of its own, the ring does not grow
  t.equal(j.stats.readsOutsideRing, 1, 'the third read found the ring full');
  t.ok(j.cacheStats().readRing!.usedBytesPeak <= readRingBytes, 'the ring never grew past its size');
  for (const { records } of [a, b, c]) {
    t.equal(records.length, 4);
    for (const r of records) t.ok(r.payload.every((x) => x === r.seq), `record ${r.seq} intact while pinned`);
  }
  a.release();
  a.release(); // twice is harmless
  b.release();
  c.release();
  t.equal(j.cacheStats().readRing!.usedBytes, 0, 'released: every block is back');
  const d = await j.readPinned(13, 256 * 1024);
  t.ok(d.records.every((r) => r.payload.every((x) => x === r.seq)), 'the reused ring reads the next records right');
  d.release();
  await j.read(1, 1 << 20);
  t.equal(j.cacheStats().readRing!.usedBytes, 0, 'a plain read() (its caller may keep the records) never uses the ring');
  await j.close();
});
