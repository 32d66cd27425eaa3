import { assert } from '../core/assert.js';
import { BufferRing } from '../core/buffer-ring.js';
import { HEADER_BYTES, type JournalRecord } from './record-codec.js';

/**
 * The most recent written records (durable or still in their fdatasync), consecutive by seq, bounded in bytes (payload + header each); the oldest are
 * evicted first.
 *
 * Payloads live in the cache's own ring (`hold` copies an appended payload in before it is written): one
 * ArrayBuffer for the life of the journal instead of one per write kept for seconds. Payloads kept that long
 * are promoted to V8's old space, whose growth forces full collections of the whole heap; the ring does not
 * grow. A payload that finds no room is copied into a buffer of its own.
 *
 * An evicted payload's block is freed once the current macrotask has ended and no pin taken before its
 * eviction is still held. Why that is enough: a journal read takes cached records only in its last synchronous
 * stretch (after its last disk wait), and read() callers use (copy) the records before they next wait on I/O;
 * readPinned() callers, who keep them across waits, hold a pin from before their read until they release it.
 */
export class RecordCache {
  private items: (JournalRecord | undefined)[] = [];
  private head = 0;
  bytes = 0;
  private readonly ring: BufferRing | null;
  /** Evicted blocks in eviction order, and the stamp of each one's eviction (parallel: no object per eviction). */
  private retired: Buffer[] = [];
  private retiredStamps: number[] = [];
  private retireScheduled = false;
  /** Advances at every pin and every eviction: a pin can hold a block only if it is older than the eviction. */
  private stamp = 0;
  private readonly pins = new Set<number>();
  /** Payloads copied into buffers of their own for want of ring room. */
  heldOutsideRing = 0;

  constructor(readonly bytesMax: number) {
    // Slack beyond bytesMax for payloads appended and not yet written (not in the cache yet).
    this.ring = bytesMax > 0 ? new BufferRing({ capacityBytes: bytesMax + ringSlackBytes(bytesMax) }) : null;
  }

  /** Seq of the oldest cached record (or Infinity when empty). */
  get firstSeq(): number {
    return this.items[this.head]?.seq ?? Infinity;
  }

  get lastSeq(): number {
    return this.items.length > this.head ? this.items[this.items.length - 1]!.seq : 0;
  }

  /** The cache's copy of a payload about to be appended (the caller may reuse its own buffer afterwards). */
  hold(payload: Buffer): Buffer {
    if (payload.length === 0 || this.ring === null) return payload;
    const block = this.ring.tryAlloc(payload.length);
    const copy = block ?? Buffer.allocUnsafeSlow(payload.length);
    if (!block) this.heldOutsideRing++;
    payload.copy(copy);
    return copy;
  }

  /** Gives back a held payload that never made it into the cache (its append failed). */
  drop(payload: Buffer): void {
    this.retire(payload);
  }

  add(rec: JournalRecord): void {
    const size = rec.payload.length + HEADER_BYTES;
    if (size > this.bytesMax) {
      this.clear();
      this.retire(rec.payload);
      return;
    }
    if (this.items.length > this.head) assert(rec.seq === this.lastSeq + 1, 'cache seqs consecutive');
    this.items.push(rec);
    this.bytes += size;
    while (this.bytes > this.bytesMax) this.evictOldest();
  }

  get(seq: number): JournalRecord | undefined {
    const first = this.items[this.head];
    if (!first || seq < first.seq) return undefined;
    return this.items[this.head + (seq - first.seq)];
  }

  /** Drops records with seq < `seq`. */
  evictBefore(seq: number): void {
    while (this.firstSeq < seq) this.evictOldest();
  }

  clear(): void {
    for (let i = this.head; i < this.items.length; i++) this.retire(this.items[i]!.payload);
    this.items = [];
    this.head = 0;
    this.bytes = 0;
  }

  ringStats(): ReturnType<BufferRing['stats']> | null {
    return this.ring?.stats() ?? null;
  }

  private evictOldest(): void {
    const rec = this.items[this.head];
    if (!rec) return;
    this.items[this.head++] = undefined;
    this.bytes -= rec.payload.length + HEADER_BYTES;
    this.retire(rec.payload);
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }

  /** Records returned from now on stay valid until unpin(token), evicted or not. */
  pin(): number {
    const token = ++this.stamp;
    this.pins.add(token);
    return token;
  }

  unpin(token: number): void {
    assert(this.pins.delete(token), `pin ${token} is held`);
    if (this.retired.length > 0) this.scheduleFree();
  }

  private retire(payload: Buffer): void {
    if (!this.ring?.owns(payload)) return;
    this.retired.push(payload);
    this.retiredStamps.push(++this.stamp);
    this.scheduleFree();
  }

  private scheduleFree(): void {
    if (this.retireScheduled) return;
    this.retireScheduled = true;
    setImmediate(() => {
      this.retireScheduled = false;
      let oldestPin = Infinity;
      for (const p of this.pins) oldestPin = Math.min(oldestPin, p);
      // Evicted before every pin still held was taken: nobody can hold these (the rest wait for an unpin).
      let n = 0;
      while (n < this.retired.length && this.retiredStamps[n]! < oldestPin) this.ring!.free(this.retired[n++]!);
      this.retired.splice(0, n);
      this.retiredStamps.splice(0, n);
    });
  }
}

function ringSlackBytes(bytesMax: number): number {
  return Math.min(bytesMax, 8 * 1024 * 1024);
}
