import t from 'tap';
import { RecordCache } from '../src/journal/record-cache.js';
import { HEADER_BYTES, type JournalRecord } from '../src/journal/record-codec.js';
import { RecordKind } from '../src/journal/journal.js';
import { RecordCodec } from '../src/pipeline/codec.js';

// An evicted block goes back to the cache's ring only once no pin taken before its eviction is held: a pinned
// reader (DR's applier writing records out) keeps its payloads intact, and a pin taken later holds up nothing older.

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
const PAYLOAD = 4096;

function add(cache: RecordCache, seq: number): void {
  const payload = cache.hold(Buffer.alloc(PAYLOAD, seq));
  const rec: JournalRecord = { seq, timestampMs: 0, volumeIndex: 0, offset: seq * PAYLOAD, length: PAYLOAD, kind: RecordKind.WRITE, codec: RecordCodec.RAW, payload };
  cache.add(rec);
}

t.test('a pin keeps evicted payloads out of the ring until unpinned; a later pin holds only what is evicted after it', async (t) => {
  const cache = new RecordCache(4 * (PAYLOAD + HEADER_BYTES)); // four records; the ring holds eight blocks
  for (let s = 1; s <= 4; s++) add(cache, s);
  const a = cache.pin();
  const pinned = [1, 2, 3, 4].map((s) => cache.get(s)!);
  for (let s = 5; s <= 8; s++) add(cache, s); // evicts 1..4 while a holds them
  await turn();
  t.equal(cache.ringStats()!.usedBytes, 8 * PAYLOAD, 'nothing freed while the pin is held');
  add(cache, 9); // evicts 5; the ring is full of cached and pinned blocks
  t.equal(cache.heldOutsideRing, 1, 'the ring did not hand out a pinned block');
  for (const r of pinned) t.ok(r.payload.every((b) => b === r.seq), `pinned record ${r.seq} intact`);

  const b = cache.pin();
  cache.unpin(a);
  await turn();
  t.equal(cache.ringStats()!.usedBytes, 3 * PAYLOAD, 'a released: 1..5 freed though b is held (evicted before b); cached 6, 7, 8 remain');
  add(cache, 10); // evicts 6, after b
  await turn();
  t.equal(cache.ringStats()!.usedBytes, 4 * PAYLOAD, '6 (evicted after b) kept for b, beside the cached 7, 8 and 10');
  cache.unpin(b);
  await turn();
  t.equal(cache.ringStats()!.usedBytes, 3 * PAYLOAD, 'b released: only the cached 7, 8 and 10 are in the ring (9 is outside)');
  t.throws(() => cache.unpin(b), 'a pin is released once');
});
