import { join } from 'node:path';
import { assert } from '../core/assert.js';
import { writeFully } from '../core/write-fully.js';
import { nodeFiles, type FileHandleLike, type Files } from '../core/files.js';
import { systemClock, type Clock } from '../core/clock.js';
import { ErrorCode, isVrgError, vrgError, type VrgError } from '../core/errors.js';
import { limits, GiB } from '../core/limits.js';
import { silentLogger, type Logger } from '../core/log.js';
import {
  HEADER_BYTES, PAYLOAD_BYTES_MAX, RECORD_KIND_MAX, RecordKind, crcMatches, decodeHeader, encodeHeader, toRecord,
  type JournalRecord, type JournalRecordInput,
} from './record-codec.js';
import { RecordCache } from './record-cache.js';
import { BufferRing, type BufferRingStats } from '../core/buffer-ring.js';
import {
  findIntactRecordFrom, fsyncDir, isSpareName, newSegment, parseSegmentName, recordBytesAt, scanSegment, segmentEnd, spareName,
  type ScanResult, type Segment,
} from './segment.js';

export { RecordKind, RECORD_KIND_MAX, carriesData, type JournalRecord, type JournalRecordInput } from './record-codec.js';

export interface JournalOptions {
  dir: string;
  capacityBytes: number;
  /** Roll to a new segment once the active one reaches this size (default: min(limit, capacity / 4)). */
  segmentBytes?: number;
  clock?: Clock;
  logger?: Logger;
  /** Most bytes written by one group commit (default and maximum limits.groupCommitBytesMax). */
  groupCommitBytes?: number;
  /** In-memory cache of recent records for read() (default limits.journalCacheBytesDefault, at most journalCacheBytesMax; 0 disables). */
  cacheBytes?: number;
  /** Ring that readPinned() reads records back from disk into (default limits.journalReadRingBytes; 0: a buffer per read). */
  readRingBytes?: number;
  /** Where the segment files live (default node:fs). */
  files?: Files;
}

export interface JournalCounters {
  recordsAppended: number;
  payloadBytesAppended: number;
  /** Record bytes written to segment files (headers + payloads). */
  bytesWritten: number;
  /** Group commits, i.e. fdatasync calls. */
  commits: number;
  segmentsCreated: number;
  segmentsDeleted: number;
  /** New segments that reused a spare file (the rest were new files). */
  segmentsReused: number;
  recordsReadFromCache: number;
  recordsReadFromDisk: number;
  /** Pinned disk reads that found no room in the read ring and had a buffer of their own. */
  readsOutsideRing: number;
  tailsCut: number;
}

interface PendingAppend {
  records: JournalRecordInput[];
  headers: Buffer;
  firstSeq: number;
  lastSeq: number;
  timestampMs: number;
  resolve: (r: { firstSeq: number; lastSeq: number }) => void;
  reject: (err: unknown) => void;
}

interface Group {
  iov: Buffer[];
  sizes: number[];
  owners: PendingAppend[];
  bytes: number;
  endSeq: number;
}

/**
 * Trimmed segments kept as spares (at most; and only while the journal's files stay within capacityBytes). A new
 * segment reuses one: overwriting a file whose pages are cached and whose blocks are allocated is a plain copy,
 * and its fdatasync writes only data, where a new file takes fresh page-cache pages (0.6 against 6 GB/s for a
 * first write here), block allocation, and a metadata commit with each fdatasync. A reused file holds stale
 * records past what is written: all of lower seqs, so a scan (which wants consecutive seqs) stops at them, and
 * the file is cut to its records when the segment fills and at close, so only a crash leaves a stale tail (cut
 * at replay like a torn one). Enough for what one checkpoint trims at once (5 s at 150 MB/s is 11 segments):
 * with 2, most segments of a steady stream were new files (seq64k, whole-volume warm-up: 5 of 24 reused, 7.4-8.0
 * CPU-s/GB, p99 21 ms; with 16: 15 of 24, 6.7-6.9 CPU-s/GB, p99 11 ms).
 */
const SPARES_MAX = 16;

/** A group commit never writes more than this, so a torn write never spans more (see replay). */
const TORN_WINDOW_BYTES = Math.max(limits.groupCommitBytesMax, HEADER_BYTES + PAYLOAD_BYTES_MAX);
const SEGMENT_BYTES_MAX = 1 * GiB;

/** Per-VM durable write journal: append-only segment files, group commit, replay with torn-tail repair. */
export class Journal {
  readonly capacityBytes: number;
  readonly segmentBytes: number;
  readonly groupCommitBytes: number;
  readonly dir: string;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly cache: RecordCache;
  private readonly counters: JournalCounters = {
    recordsAppended: 0, payloadBytesAppended: 0, bytesWritten: 0, commits: 0, segmentsCreated: 0,
    segmentsDeleted: 0, segmentsReused: 0, recordsReadFromCache: 0, recordsReadFromDisk: 0, readsOutsideRing: 0, tailsCut: 0,
  };
  private segments: Segment[] = [];
  private first = 1; // lowest seq still needed
  private last = 0; // highest durable seq
  private nextSeq = 1; // next seq to assign
  private writeSeq = 1; // next seq to write
  private segBytes = 0;
  private reservedBytes = 0;
  private queue: (PendingAppend | undefined)[] = [];
  private qHead = 0;
  private loop: Promise<void> | null = null;
  private syncLoop: Promise<void> | null = null;
  /** Groups written to the active segment and not yet fdatasync'ed, in seq order. */
  private unsynced: Group[] = [];
  private unsyncedBytes = 0;
  private trimChain: Promise<void> = Promise.resolve();
  private readonly reads = new Set<Promise<unknown>>();
  private readonly readRingBytes: number;
  private readRing: BufferRing | null = null;
  private state: 'open' | 'closing' | 'closed' = 'open';
  private closing: Promise<void> | null = null;
  private failure: VrgError | null = null;
  /** whenWritten / whenDurable callers, resolved as the commit loop passes their seq. */
  private seqWaiters: Array<{ seq: number; durable: boolean; resolve: () => void; reject: (e: Error) => void }> = [];

  private readonly files: Files;
  /** Paths of spare segment files, with their lengths. */
  private spares: Array<{ path: string; bytes: number }> = [];

  private constructor(opts: JournalOptions) {
    this.dir = opts.dir;
    this.files = opts.files ?? nodeFiles;
    this.capacityBytes = opts.capacityBytes;
    this.segmentBytes = opts.segmentBytes ?? Math.min(limits.journalSegmentBytes, Math.max(1, Math.floor(opts.capacityBytes / 4)));
    this.groupCommitBytes = opts.groupCommitBytes ?? limits.groupCommitBytesMax;
    this.clock = opts.clock ?? systemClock;
    this.logger = opts.logger ?? silentLogger;
    this.readRingBytes = opts.readRingBytes ?? limits.journalReadRingBytes;
    this.cache = new RecordCache(opts.cacheBytes ?? limits.journalCacheBytesDefault);
    const bad = (what: string): VrgError => vrgError(ErrorCode.CONFIG_INVALID, `journal: ${what}`, { dir: opts.dir });
    if (typeof opts.dir !== 'string' || opts.dir === '') throw bad('dir is required');
    if (!Number.isSafeInteger(this.capacityBytes) || this.capacityBytes <= 0) throw bad('capacityBytes must be a positive integer');
    if (!Number.isSafeInteger(this.segmentBytes) || this.segmentBytes < 1 || this.segmentBytes > SEGMENT_BYTES_MAX) {
      throw bad(`segmentBytes must be 1..${SEGMENT_BYTES_MAX}`);
    }
    if (this.capacityBytes < 2 * this.segmentBytes) throw bad('capacityBytes must be at least 2 × segmentBytes');
    if (!Number.isSafeInteger(this.groupCommitBytes) || this.groupCommitBytes < 1 || this.groupCommitBytes > limits.groupCommitBytesMax) {
      throw bad(`groupCommitBytes must be 1..${limits.groupCommitBytesMax}`);
    }
    const cacheMax = this.cache.bytesMax;
    if (!Number.isSafeInteger(cacheMax) || cacheMax < 0 || cacheMax > limits.journalCacheBytesMax) {
      throw bad(`cacheBytes must be 0..${limits.journalCacheBytesMax}`);
    }
  }

  static async open(opts: JournalOptions): Promise<Journal> {
    const j = new Journal(opts);
    await j.files.mkdir(j.dir);
    try {
      await j.replay();
    } catch (err) {
      await j.closeHandles();
      throw err;
    }
    return j;
  }

  get firstSeq(): number { return this.first; }
  /** Highest durable seq (written and fdatasync'ed): what read() returns by default. */
  get lastSeq(): number { return this.last; }
  /** Highest seq written to its segment file: in the page cache, so it survives a process crash. */
  get writtenSeq(): number { return this.writeSeq - 1; }
  /**
   * Highest seq that may be shipped now: written, and at most limits.shipAheadRecordsMax beyond the durable
   * seq. A host crash loses at most the written-not-durable tail, so DR never holds more than that many seqs
   * beyond what replay finds (the restart skips as many: see ProtectedVm.skipShipAheadSeqs).
   */
  get shippableSeq(): number { return Math.min(this.writtenSeq, this.last + limits.shipAheadRecordsMax); }
  /** The record cache's ring (null without a cache) and the payloads it could not hold. */
  cacheStats(): { ring: ReturnType<RecordCache['ringStats']>; heldOutsideRing: number; cachedBytes: number; readRing: BufferRingStats | null } {
    return { ring: this.cache.ringStats(), heldOutsideRing: this.cache.heldOutsideRing, cachedBytes: this.cache.bytes, readRing: this.readRing?.stats() ?? null };
  }

  /** Highest seq append() has assigned (written or not yet). */
  get appendedSeq(): number { return this.nextSeq - 1; }

  /** Resolves once `seq` is written to its segment file (a write-back intake acknowledges then). */
  whenWritten(seq: number): Promise<void> {
    return this.whenSeq(seq, false);
  }

  /** Resolves once `seq` is durable (an NBD FLUSH in write-back mode waits for this). */
  whenDurable(seq: number): Promise<void> {
    return this.whenSeq(seq, true);
  }

  private whenSeq(seq: number, durable: boolean): Promise<void> {
    assert(seq <= this.appendedSeq, `seq ${seq} was appended (appended up to ${this.appendedSeq})`);
    if (seq <= (durable ? this.last : this.writtenSeq)) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.seqWaiters.push({ seq, durable, resolve, reject }));
  }

  private wakeSeqWaiters(): void {
    if (this.seqWaiters.length === 0) return;
    const keep: typeof this.seqWaiters = [];
    for (const w of this.seqWaiters) {
      if (w.seq <= (w.durable ? this.last : this.writtenSeq)) w.resolve();
      else keep.push(w);
    }
    this.seqWaiters = keep;
  }
  get usedBytes(): number { return this.segBytes + this.reservedBytes; }
  get availableBytes(): number { return Math.max(0, this.capacityBytes - this.usedBytes); }
  get segmentCount(): number { return this.segments.length; }
  get stats(): JournalCounters { return { ...this.counters }; }

  // ---- append / group commit -------------------------------------------------------------------------------------

  /**
   * Appends records with consecutive seqs; resolves once they are durable (write + fdatasync). With a cache the
   * payloads are copied into it here, and the caller may reuse its buffers once append() returns; without one
   * they are written as they are and must stay untouched until the records are written.
   * Refusals (closed, failed, invalid, full) throw synchronously, before any seq is taken, so a caller
   * holding an ordering turn can wait for room and retry without a later append overtaking it.
   */
  append(records: JournalRecordInput[]): Promise<{ firstSeq: number; lastSeq: number }> {
    if (this.state !== 'open') throw vrgError(ErrorCode.CLOSED, 'journal is closed', { dir: this.dir });
    if (this.failure) throw this.failure;
    const bytes = validateRecords(records);
    if (this.usedBytes + bytes > this.capacityBytes) {
      throw vrgError(ErrorCode.JOURNAL_FULL, 'journal is full', {
        dir: this.dir, bytes, usedBytes: this.usedBytes, capacityBytes: this.capacityBytes,
      });
    }
    const timestampMs = this.clock.nowMs();
    const firstSeq = this.nextSeq;
    // The records the journal keeps are one object shape in one kind of array (pushed into a literal: map()
    // keeps its input's elements kind), whoever built the input (intake, resync, markers): input arrays of
    // several kinds made the write loop's reads polymorphic mid-run, which deoptimized the journal's hot
    // functions and had V8 compile them again (about a tenth of a gateway's CPU in the bench's window).
    const cached = this.cache.bytesMax > 0;
    const kept: JournalRecordInput[] = [];
    for (const r of records) {
      kept.push({
        volumeIndex: r.volumeIndex, offset: r.offset, length: r.length, kind: r.kind, codec: r.codec,
        payload: cached && r.payload.length > 0 ? this.cache.hold(r.payload) : r.payload,
      });
    }
    records = kept;
    const headers = Buffer.allocUnsafe(HEADER_BYTES * records.length);
    for (let i = 0; i < records.length; i++) encodeHeader(headers, i * HEADER_BYTES, firstSeq + i, timestampMs, records[i]!);
    this.nextSeq += records.length;
    this.reservedBytes += bytes;
    return new Promise((resolve, reject) => {
      this.queue.push({ records, headers, firstSeq, lastSeq: this.nextSeq - 1, timestampMs, resolve, reject });
      this.kick();
    });
  }

  /**
   * Two loops: the writer writes groups to the active segment; the syncer fdatasyncs what was written and
   * completes it. The writer does not wait for the syncer (so a write-back intake acknowledges at page-cache
   * speed) but keeps at most groupCommitBytes written and not yet durable: a torn write after a power loss
   * then stays within TORN_WINDOW_BYTES of the durable end, which is what replay's torn-tail rule assumes.
   */
  private kick(): void {
    if (this.failure) return;
    if (!this.loop && this.writeSeq < this.nextSeq) {
      this.loop = this.writeLoop().finally(() => {
        this.loop = null;
        this.kick(); // appends made while the last group's callers were resumed
      });
    }
    if (!this.syncLoop && this.unsynced.length > 0) {
      this.syncLoop = this.syncUnsynced().finally(() => {
        this.syncLoop = null;
        this.kick();
      });
    }
  }

  private async writeLoop(): Promise<void> {
    try {
      while (this.writeSeq < this.nextSeq && !this.failure) {
        let seg = this.active;
        if (seg.size >= this.segmentBytes && seg.offsets.length > 0) {
          await this.drainSync(); // every unsynced byte lives in the active segment
          if (this.failure) return;
          await this.cutStaleTail(seg);
          seg = await this.createSegment(this.writeSeq);
        }
        const room = Math.max(this.segmentBytes - seg.size, 1);
        const g = this.takeGroup(Math.min(this.groupCommitBytes - this.unsyncedBytes, room), this.unsyncedBytes > 0);
        if (g === null) {
          await this.drainSync(); // the unsynced window is full
          continue;
        }
        const fh = await seg.fh!;
        await writeFully(fh, g.iov, seg.size);
        let at = seg.size;
        for (const size of g.sizes) {
          seg.offsets.push(at);
          at += size;
        }
        seg.size = at;
        this.segBytes += g.bytes;
        this.reservedBytes -= g.bytes;
        this.cacheWritten(g);
        this.writeSeq = g.endSeq;
        this.unsynced.push(g);
        this.unsyncedBytes += g.bytes;
        this.wakeSeqWaiters();
        this.kick();
      }
    } catch (err) {
      this.fail(err);
    }
  }

  /** fdatasync of what was written before the call, then those groups are durable; again while more was written. */
  private async syncUnsynced(): Promise<void> {
    try {
      while (this.unsynced.length > 0 && !this.failure) {
        const groups = this.unsynced.splice(0);
        const fh = await this.active.fh!;
        await fh.datasync();
        this.counters.commits++;
        for (const g of groups) {
          this.unsyncedBytes -= g.bytes;
          this.counters.bytesWritten += g.bytes;
          this.completeGroup(g);
        }
      }
    } catch (err) {
      this.fail(err);
    }
  }

  private async drainSync(): Promise<void> {
    while (!this.failure && (this.syncLoop || this.unsynced.length > 0)) {
      if (!this.syncLoop) this.kick();
      await this.syncLoop;
    }
  }

  /**
   * Records from writeSeq on, in queue order, up to `limit` bytes: at least one record, unless `strict` and the
   * first does not fit (null).
   */
  private takeGroup(limit: number, strict: boolean): Group | null {
    const g: Group = { iov: [], sizes: [], owners: [], bytes: 0, endSeq: this.writeSeq };
    for (let qi = this.qHead; qi < this.queue.length; qi++) {
      const p = this.queue[qi]!;
      for (let i = g.endSeq - p.firstSeq; i < p.records.length; i++) {
        const payload = p.records[i]!.payload;
        const size = HEADER_BYTES + payload.length;
        if (g.bytes === 0 && strict && size > limit) return null;
        if (g.bytes > 0 && g.bytes + size > limit) return g;
        g.iov.push(p.headers.subarray(i * HEADER_BYTES, (i + 1) * HEADER_BYTES));
        if (payload.length > 0) g.iov.push(payload);
        g.sizes.push(size);
        g.owners.push(p);
        g.bytes += size;
        g.endSeq++;
      }
    }
    return g;
  }

  /**
   * The group is written (not yet durable): its records go into the cache now, so the shipper can read them
   * while the fdatasync runs. Every payload the cache holds has been written, so its eviction never frees
   * one the writer still needs.
   */
  private cacheWritten(g: Group): void {
    const firstSeq = this.writeSeq;
    for (let k = 0; k < g.owners.length; k++) {
      const p = g.owners[k]!;
      const seq = firstSeq + k;
      const rec = p.records[seq - p.firstSeq]!;
      if (this.cache.bytesMax > 0 && seq >= this.first) {
        this.cache.add({
          seq, timestampMs: p.timestampMs, volumeIndex: rec.volumeIndex, offset: rec.offset, length: rec.length,
          kind: rec.kind, codec: rec.codec, payload: rec.payload,
        });
      } else {
        this.cache.drop(rec.payload);
      }
    }
  }

  /** The group is durable: publish lastSeq, resolve the appends it completes. */
  private completeGroup(g: Group): void {
    const firstSeq = this.last + 1;
    this.last = g.endSeq - 1;
    for (let k = 0; k < g.owners.length; k++) {
      const p = g.owners[k]!;
      this.counters.recordsAppended++;
      this.counters.payloadBytesAppended += p.records[firstSeq + k - p.firstSeq]!.payload.length;
    }
    while (this.qHead < this.queue.length && this.queue[this.qHead]!.lastSeq <= this.last) {
      const p = this.queue[this.qHead]!;
      this.queue[this.qHead++] = undefined;
      p.resolve({ firstSeq: p.firstSeq, lastSeq: p.lastSeq });
    }
    if (this.qHead === this.queue.length || this.qHead >= 1024) {
      this.queue = this.queue.slice(this.qHead);
      this.qHead = 0;
    }
    this.wakeSeqWaiters();
  }

  /** A failed write or fdatasync leaves the file in an unknown state: stop accepting anything (fail-stop). */
  private fail(err: unknown): void {
    this.failure = vrgError(ErrorCode.JOURNAL_IO, 'journal write failed; the journal must be reopened', { dir: this.dir }, err);
    this.logger.error({ err, dir: this.dir }, 'journal: write failed, refusing further appends');
    for (let qi = this.qHead; qi < this.queue.length; qi++) this.queue[qi]!.reject(this.failure);
    this.queue = [];
    this.qHead = 0;
    for (const w of this.seqWaiters.splice(0)) w.reject(this.failure);
  }

  private get active(): Segment {
    const seg = this.segments[this.segments.length - 1];
    assert(seg, 'journal has an active segment');
    return seg;
  }

  /** Creates segment `firstSeq` durably (file and directory fsynced) and makes it the active one. */
  private async createSegment(firstSeq: number): Promise<Segment> {
    const seg = newSegment(this.dir, firstSeq);
    const spare = this.spares.pop();
    if (spare) await this.files.rename(spare.path, seg.path);
    const fh = await this.files.open(seg.path, spare ? 'r+' : 'wx+');
    try {
      if (!spare) await fh.sync();
      await fsyncDir(this.files, this.dir);
    } catch (err) {
      await fh.close();
      throw err;
    }
    seg.fileBytes = spare?.bytes ?? 0;
    if (spare) this.counters.segmentsReused++;
    seg.fh = Promise.resolve(fh);
    this.segments.push(seg);
    this.counters.segmentsCreated++;
    return seg;
  }

  // ---- read --------------------------------------------------------------------------------------------------------

  /**
   * Consecutive records from `fromSeq` up to `upToSeq` (default lastSeq: durable ones only; at most writtenSeq,
   * e.g. shippableSeq): at least one when any exists, then as many as fit in `maxBytes` of payload. Empty when
   * fromSeq > upToSeq. A seq below firstSeq (trimmed) is VRG_INVALID_ARGUMENT.
   */
  async read(fromSeq: number, maxBytes: number, opts: { upToSeq?: number } = {}): Promise<JournalRecord[]> {
    return this.readTracked(fromSeq, maxBytes, opts.upToSeq, null);
  }

  /**
   * read(), with payloads that stay valid until `release()`: for a caller that writes them out across I/O waits
   * (DR's applier) or sends them on before it next waits (the shipper). Cache blocks evicted meanwhile are freed
   * only after the release. What comes from disk is read into the journal's read ring (when it has room), and
   * the release gives that back: the shipper reading a backlog off the disk allocates nothing per batch.
   */
  async readPinned(fromSeq: number, maxBytes: number, opts: { upToSeq?: number } = {}): Promise<{ records: JournalRecord[]; release: () => void }> {
    const pin = this.cache.pin();
    let held = true;
    const blocks: Buffer[] = [];
    const release = (): void => {
      if (!held) return;
      held = false;
      for (const b of blocks) this.readRing!.free(b); // blocks only ever holds the ring's own
      blocks.length = 0;
      this.cache.unpin(pin);
    };
    try {
      return { records: await this.readTracked(fromSeq, maxBytes, opts.upToSeq, blocks), release };
    } catch (err) {
      release();
      throw err;
    }
  }

  /** `blocks`: where read-ring blocks of disk reads are listed for the caller to free (null: no ring, GC-owned). */
  private async readTracked(fromSeq: number, maxBytes: number, upToSeq: number | undefined, blocks: Buffer[] | null): Promise<JournalRecord[]> {
    if (this.state !== 'open') throw vrgError(ErrorCode.CLOSED, 'journal is closed', { dir: this.dir });
    const upTo = upToSeq ?? this.last;
    if (!Number.isSafeInteger(fromSeq) || fromSeq < 1 || !(maxBytes >= 0) || !Number.isSafeInteger(upTo) || upTo > this.writtenSeq) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, 'journal read: bad fromSeq, maxBytes or upToSeq', {
        fromSeq, maxBytes, upToSeq: upTo, writtenSeq: this.writtenSeq,
      });
    }
    if (fromSeq < this.first) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, 'journal read: seq was trimmed', { fromSeq, firstSeq: this.first });
    }
    const p = this.readRange(fromSeq, maxBytes, upTo, blocks);
    this.reads.add(p);
    try {
      return await p;
    } finally {
      this.reads.delete(p);
    }
  }

  private async readRange(fromSeq: number, maxBytes: number, upTo: number, blocks: Buffer[] | null): Promise<JournalRecord[]> {
    const out: JournalRecord[] = [];
    let payloadBytes = 0;
    let seq = fromSeq;
    let fromCache = false;
    while (seq <= upTo && seq >= this.first) {
      const cached = this.cache.get(seq);
      if (!cached && fromCache) break; // cached records only after the last disk wait (RecordCache's free rule)
      if (cached) {
        fromCache = true;
        if (out.length > 0 && payloadBytes + cached.payload.length > maxBytes) break;
        out.push(cached);
        payloadBytes += cached.payload.length;
        this.counters.recordsReadFromCache++;
        seq++;
        continue;
      }
      const recs = await this.readFromDisk(seq, maxBytes - payloadBytes, out.length === 0, upTo, blocks);
      if (recs.length === 0) break;
      for (const r of recs) {
        out.push(r);
        payloadBytes += r.payload.length;
      }
      seq += recs.length;
    }
    return out;
  }

  private findSegment(seq: number): Segment {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segments[mid]!.firstSeq <= seq) lo = mid;
      else hi = mid - 1;
    }
    const seg = this.segments[lo];
    assert(seg && seg.firstSeq <= seq && seq < segmentEnd(seg), `seq ${seq} is in a live segment`);
    return seg;
  }

  /** Records of one segment from `seq`, read back with one pread and CRC-checked. Stops where the cache begins. */
  private async readFromDisk(seq: number, budget: number, atLeastOne: boolean, upTo: number, blocks: Buffer[] | null): Promise<JournalRecord[]> {
    const seg = this.findSegment(seq);
    const end = Math.min(segmentEnd(seg), upTo + 1, this.cache.firstSeq);
    const i0 = seq - seg.firstSeq;
    let i = i0;
    let bytes = 0;
    let payload = 0;
    while (seg.firstSeq + i < end) {
      const size = recordBytesAt(seg, i);
      if ((i > i0 || !atLeastOne) && payload + size - HEADER_BYTES > budget) break;
      bytes += size;
      payload += size - HEADER_BYTES;
      i++;
    }
    if (i === i0) return [];
    const start = seg.offsets.get(i0);
    const buf = await this.preadSegment(seg, start, bytes, blocks);
    const out: JournalRecord[] = [];
    let at = 0;
    for (let k = i0; k < i; k++) {
      const size = recordBytesAt(seg, k);
      const h = decodeHeader(buf, at);
      const ok = typeof h !== 'string' && h.seq === seg.firstSeq + k && HEADER_BYTES + h.payloadLength === size && crcMatches(buf, at, h);
      if (!ok) {
        throw vrgError(ErrorCode.JOURNAL_CORRUPT, 'journal record failed verification on read-back', {
          path: seg.path, seq: seg.firstSeq + k, fileOffset: start + at, reason: typeof h === 'string' ? h : 'bad seq, length or crc',
        });
      }
      out.push(toRecord(h, buf.subarray(at + HEADER_BYTES, at + size)));
      at += size;
    }
    this.counters.recordsReadFromDisk += out.length;
    return out;
  }

  private async preadSegment(seg: Segment, position: number, length: number, blocks: Buffer[] | null): Promise<Buffer> {
    seg.readers++;
    try {
      seg.fh ??= this.files.open(seg.path, 'r');
      const fh = await seg.fh;
      const buf = this.readBuffer(length, blocks);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, position + got);
        if (bytesRead === 0) {
          throw vrgError(ErrorCode.JOURNAL_CORRUPT, 'journal segment shorter than its index', { path: seg.path, position, length });
        }
        got += bytesRead;
      }
      return buf;
    } finally {
      seg.readers--;
      if (seg.dropped && seg.readers === 0) await closeSegment(seg);
    }
  }

  /** A read-ring block listed in `blocks` (freed by the caller's release), or a buffer of its own. */
  private readBuffer(length: number, blocks: Buffer[] | null): Buffer {
    if (blocks === null || this.readRingBytes === 0) return Buffer.allocUnsafe(length);
    // Made on the first pinned disk read: a journal whose reads all hit the cache never touches it.
    this.readRing ??= new BufferRing({ capacityBytes: this.readRingBytes });
    const block = this.readRing.tryAlloc(length);
    if (block === null) {
      this.counters.readsOutsideRing++;
      return Buffer.allocUnsafe(length);
    }
    blocks.push(block);
    return block;
  }

  // ---- trim --------------------------------------------------------------------------------------------------------

  /** Everything ≤ durableSeq is acknowledged by the DR side: forget it and delete segments that hold nothing else. */
  async trim(durableSeq: number): Promise<void> {
    if (this.state !== 'open') throw vrgError(ErrorCode.CLOSED, 'journal is closed', { dir: this.dir });
    assert(Number.isSafeInteger(durableSeq) && durableSeq >= 0, `trim seq ${durableSeq} is a non-negative integer`);
    assert(durableSeq <= this.last, `trim seq ${durableSeq} ≤ lastSeq ${this.last}`);
    if (durableSeq < this.first) return;
    this.first = durableSeq + 1;
    this.cache.evictBefore(this.first);
    const doomed: Segment[] = [];
    while (this.segments.length > 1 && segmentEnd(this.segments[0]!) - 1 <= durableSeq) {
      const seg = this.segments.shift()!;
      seg.dropped = true;
      this.segBytes -= seg.size;
      doomed.push(seg);
    }
    if (doomed.length === 0) return;
    const p = this.trimChain.then(() => this.deleteSegments(doomed));
    this.trimChain = p.catch(() => undefined);
    return p;
  }

  /**
   * Continues the numbering at `seq` (> lastSeq + 1 leaves a gap): only while the journal holds nothing, i.e.
   * every record trimmed and none pending. The old segments go first, then the new one is created, so a crash
   * between leaves an empty directory (a journal at seq 1 that the caller restarts again), never a gap on disk.
   */
  async restartAt(seq: number): Promise<void> {
    if (this.state !== 'open') throw vrgError(ErrorCode.CLOSED, 'journal is closed', { dir: this.dir });
    assert(Number.isSafeInteger(seq) && seq >= this.nextSeq, `restart seq ${seq} ≥ next seq ${this.nextSeq}`);
    assert(this.first === this.last + 1 && this.nextSeq === this.last + 1 && !this.loop && this.unsynced.length === 0,
      `journal restarts only when empty (first ${this.first}, last ${this.last}, next ${this.nextSeq})`);
    if (seq === this.nextSeq) return;
    await this.trimChain;
    const doomed = this.segments.splice(0);
    for (const seg of doomed) seg.dropped = true;
    await this.deleteSegments(doomed);
    this.segBytes = 0;
    await this.createSegment(seq);
    this.first = seq;
    this.last = seq - 1;
    this.nextSeq = this.writeSeq = seq;
    this.cache.evictBefore(seq);
  }

  private async deleteSegments(doomed: Segment[]): Promise<void> {
    for (const seg of doomed) {
      if (seg.fh) await seg.fh.catch(() => undefined); // an open in flight completes before the unlink
      // A segment still being read is never reused (its reader would see the new records); nor past the budget.
      const bytes = Math.max(seg.size, seg.fileBytes);
      if (seg.readers === 0 && this.spares.length < SPARES_MAX && this.filesBytes + this.reservedBytes + bytes <= this.capacityBytes) {
        const path = join(this.dir, spareName(seg.firstSeq));
        await this.files.rename(seg.path, path);
        this.spares.push({ path, bytes });
      } else {
        await this.files.unlink(seg.path);
      }
      if (seg.readers === 0) await closeSegment(seg);
      this.counters.segmentsDeleted++;
    }
    await fsyncDir(this.files, this.dir);
  }

  /** The length of the journal's files: its segments (a reused one may be longer than its records) and spares. */
  get filesBytes(): number {
    let n = 0;
    for (const seg of this.segments) n += Math.max(seg.size, seg.fileBytes);
    for (const sp of this.spares) n += sp.bytes;
    return n;
  }

  /**
   * A reused file cut to the segment's records once they are durable (the segment filled, or the journal
   * closes): a scan then finds every segment intact to its end, as with new files.
   */
  private async cutStaleTail(seg: Segment): Promise<void> {
    if (seg.fileBytes <= seg.size || !seg.fh) return;
    const fh = await seg.fh;
    await fh.truncate(seg.size);
    await fh.sync();
    seg.fileBytes = seg.size;
  }

  // ---- close -------------------------------------------------------------------------------------------------------

  /** Waits for accepted appends to commit, trims and reads to finish, then closes the files. */
  async close(): Promise<void> {
    if (!this.closing) {
      this.state = 'closing';
      this.closing = (async () => {
        while (this.loop || this.syncLoop) await (this.loop ?? this.syncLoop);
        await this.trimChain;
        await Promise.allSettled([...this.reads]);
        if (!this.failure) await this.cutStaleTail(this.active).catch((err: unknown) => this.logger.warn({ err }, 'journal: cutting a reused segment at close failed'));
        await this.closeHandles();
        this.state = 'closed';
      })();
    }
    return this.closing;
  }

  private async closeHandles(): Promise<void> {
    for (const seg of this.segments) await closeSegment(seg);
  }

  // ---- replay ------------------------------------------------------------------------------------------------------

  /** Verifies every segment, cuts a torn tail of the last one, rebuilds the index and the seq counters. */
  private async replay(): Promise<void> {
    const names = await this.files.readdir(this.dir);
    await this.findSpares(names);
    const seqs = names.map(parseSegmentName).filter((s): s is number => s !== null).sort((a, b) => a - b);
    if (seqs.length === 0) await this.createSegment(1);
    for (let i = 0; i < seqs.length; i++) {
      const seg = newSegment(this.dir, seqs[i]!);
      const prev = this.segments[this.segments.length - 1];
      if (prev && segmentEnd(prev) !== seg.firstSeq) {
        throw vrgError(ErrorCode.JOURNAL_CORRUPT, 'journal segments are not consecutive', {
          path: seg.path, expectedFirstSeq: segmentEnd(prev), firstSeq: seg.firstSeq,
        });
      }
      await this.replaySegment(seg, i === seqs.length - 1);
    }
    this.last = segmentEnd(this.active) - 1;
    this.first = this.segments[0]!.firstSeq;
    this.nextSeq = this.writeSeq = this.last + 1;
  }

  /** Spares left by an earlier run are kept (up to SPARES_MAX; the rest deleted). */
  private async findSpares(names: string[]): Promise<void> {
    for (const name of names.filter(isSpareName).sort()) {
      const path = join(this.dir, name);
      if (this.spares.length < SPARES_MAX) this.spares.push({ path, bytes: (await this.files.stat(path)).size });
      else await this.files.unlink(path);
    }
  }

  private async replaySegment(seg: Segment, isLast: boolean): Promise<void> {
    const fh = await this.files.open(seg.path, isLast ? 'r+' : 'r');
    try {
      const scan = await scanSegment(fh, seg);
      if (scan.badReason !== null) {
        if (!isLast) {
          throw vrgError(ErrorCode.JOURNAL_CORRUPT, 'journal segment is corrupt before its end', {
            path: seg.path, fileOffset: scan.goodBytes, reason: scan.badReason, fileSize: scan.fileSize,
          });
        }
        await this.cutTail(fh, seg, scan);
      }
      seg.size = scan.goodBytes;
      seg.fileBytes = seg.size;
    } catch (err) {
      await fh.close();
      throw isVrgError(err) ? err : vrgError(ErrorCode.JOURNAL_IO, 'journal replay failed', { path: seg.path }, err);
    }
    this.segBytes += seg.size;
    this.segments.push(seg);
    if (isLast) seg.fh = Promise.resolve(fh);
    else await fh.close();
  }

  /** A bad record in the last segment is a torn write unless intact data follows beyond one group commit. */
  private async cutTail(fh: FileHandleLike, seg: Segment, scan: ScanResult): Promise<void> {
    const intactAt = await findIntactRecordFrom(fh, scan.fileSize, scan.goodBytes + TORN_WINDOW_BYTES, segmentEnd(seg));
    if (intactAt !== null) {
      throw vrgError(ErrorCode.JOURNAL_CORRUPT, 'journal record is corrupt but later records are intact', {
        path: seg.path, fileOffset: scan.goodBytes, reason: scan.badReason, intactRecordAt: intactAt,
      });
    }
    await fh.truncate(scan.goodBytes);
    await fh.sync();
    this.counters.tailsCut++;
    this.logger.warn({
      path: seg.path, reason: scan.badReason, keptBytes: scan.goodBytes, cutBytes: scan.fileSize - scan.goodBytes,
      lastSeq: segmentEnd(seg) - 1,
    }, 'journal: cut a torn tail');
  }
}

async function closeSegment(seg: Segment): Promise<void> {
  const p = seg.fh;
  seg.fh = null;
  if (!p) return;
  const fh = await p.catch(() => null);
  await fh?.close();
}

/** Checks the records of one append; returns their size on disk. */
function validateRecords(records: JournalRecordInput[]): number {
  if (!Array.isArray(records) || records.length === 0) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, 'journal append: no records');
  }
  let bytes = 0;
  for (const r of records) {
    const okFields = Number.isInteger(r.volumeIndex) && r.volumeIndex >= 0 && r.volumeIndex <= 0xffff
      && Number.isSafeInteger(r.offset) && r.offset >= 0 && Number.isSafeInteger(r.length) && r.length >= 0
      && Number.isSafeInteger(r.offset + r.length)
      && Number.isInteger(r.kind) && r.kind >= RecordKind.WRITE && r.kind <= RECORD_KIND_MAX
      && Number.isInteger(r.codec) && r.codec >= 0 && r.codec <= 0xff && r.payload instanceof Uint8Array;
    if (!okFields) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, 'journal append: bad record fields', {
        volumeIndex: r.volumeIndex, offset: r.offset, length: r.length, kind: r.kind, codec: r.codec,
      });
    }
    if (r.payload.length > limits.recordBytesMax) {
      throw vrgError(ErrorCode.RECORD_TOO_LARGE, 'journal append: record payload too large', {
        payloadBytes: r.payload.length, max: limits.recordBytesMax,
      });
    }
    bytes += HEADER_BYTES + r.payload.length;
  }
  return bytes;
}
