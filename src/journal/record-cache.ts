import { assert } from '../core/assert.js';
import { HEADER_BYTES, type JournalRecord } from './record-codec.js';

/**
 * The most recent durable records, consecutive by seq, bounded in bytes (payload + header each); the oldest are
 * evicted first. Payloads are the appenders' buffers (no copy).
 */
export class RecordCache {
  private items: (JournalRecord | undefined)[] = [];
  private head = 0;
  bytes = 0;

  constructor(readonly bytesMax: number) {}

  /** Seq of the oldest cached record (or Infinity when empty). */
  get firstSeq(): number {
    return this.items[this.head]?.seq ?? Infinity;
  }

  get lastSeq(): number {
    return this.items.length > this.head ? this.items[this.items.length - 1]!.seq : 0;
  }

  add(rec: JournalRecord): void {
    const size = rec.payload.length + HEADER_BYTES;
    if (size > this.bytesMax) {
      this.clear();
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
    this.items = [];
    this.head = 0;
    this.bytes = 0;
  }

  private evictOldest(): void {
    const rec = this.items[this.head];
    if (!rec) return;
    this.items[this.head++] = undefined;
    this.bytes -= rec.payload.length + HEADER_BYTES;
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
}
