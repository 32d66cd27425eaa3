import { dirname } from 'node:path';
import { assert } from '../core/assert.js';
import { crc32 } from '../core/checksum.js';
import { systemClock, type Clock } from '../core/clock.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { GiB, KiB, MiB } from '../core/limits.js';
import { writeFully } from '../core/write-fully.js';
import { nodeFiles, type FileHandleLike, type Files } from '../core/files.js';
import { fsyncDir } from './segment.js';

// Persistent changed-block-tracking (CBT) bitmap of one volume: one bit per `granularityBytes` region.
//
// DRIVER CONTRACT (CBT state): a write's bits must be durable before the write is acknowledged to the VM.
// mark() is synchronous and only touches memory; call `await markAndPersist(offset, length)` (or mark() then
// `await persist()`) before acknowledging. Concurrent persist() calls share one fdatasync (group commit).
// Resync: `token = snapshotForResync(range)` BEFORE reading the source, read + ship the range, and once the
// DR side holds it durably `clearIfUnchanged(token)`; a write that marked the range after the snapshot keeps
// its regions dirty. Clears reach the disk lazily (a stale dirty bit only costs a re-ship).
// Opening: VRG_CBT_MISMATCH when the file was made for another volume size / granularity / format version;
// VRG_CBT_CORRUPT when neither copy is intact. On CORRUPT the driver must fall back to a full resync
// (delete the file, reopen, markAll()), since which blocks changed is unknown.

// File layout: two copies ("slots") of COPY bytes each, slot s at s * COPY. A persist writes the slot that
// does not hold the newest durable copy, then fdatasyncs once; on open the valid copy with the highest
// generation wins, so a torn write of one slot leaves the other intact. Only bitmap pages changed since the
// target slot was last written are rewritten (plus their table pages and the header).
//
// copy:  [0, 4096)            header page
//        [4096, 4096 + T)     page-CRC table: u32le crc32 of each bitmap page, T = pageCount*4 rounded up to 4 KiB
//        [4096 + T, COPY)     bitmap: pageCount pages of 4 KiB, bit r = byte r>>3, bit (r & 7), LSB first
// header: 0 u32le magic 'VRGB'     4 u32le crc32 of bytes 8..48
//         8 u32le version (1)     12 u32le granularityBytes     16 u64le volumeBytes     24 u64le generation
//        32 u32le pageCount       36 u32le crc32 of the table's pageCount*4 bytes       40 u64le savedAtMs
// A copy is valid when its header CRC, its table CRC and every page CRC match. Bits past the last region are 0.

const MAGIC = 0x42475256; // 'VRGB' little-endian
const VERSION = 1;
const PAGE = 4 * KiB;
const HEADER_USED = 48;
const TiB = 1024 * GiB;

export const DEFAULT_GRANULARITY_BYTES = 64 * KiB;
export const GRANULARITY_BYTES_MIN = 4 * KiB;
export const GRANULARITY_BYTES_MAX = 1 * GiB;
export const VOLUME_BYTES_MAX = 64 * TiB;
/** 64 TiB at 64 KiB granularity; finer granularity on bigger volumes is refused. */
export const BITMAP_BYTES_MAX = 128 * MiB;
/** Resync tokens alive at once, and regions one token may cover (its touched-bits cost regions/8 bytes). */
export const RESYNC_TOKENS_MAX = 64;
export const RESYNC_TOKEN_REGIONS_MAX = 1 << 24;

export interface DirtyBitmapOptions {
  path: string;
  volumeBytes: number;
  granularityBytes?: number;
  clock?: Clock;
  /** Where the bitmap file lives (default node:fs). */
  files?: Files;
}

export interface DirtyRange {
  start: number;
  end: number;
}

export interface DirtyBitmapCounters {
  /** Snapshots written (one per group commit). */
  persists: number;
  fdatasyncs: number;
  bitmapPagesWritten: number;
  bytesWritten: number;
}

interface Geometry {
  volumeBytes: number;
  granularityBytes: number;
  regionCount: number;
  pageCount: number;
  tableBytes: number;
  copyBytes: number;
}

/** A resync window opened by snapshotForResync(); opaque to callers apart from its byte range. */
export class ResyncToken {
  /** Regions of the window marked since the snapshot (bit i = region firstRegion + i). */
  readonly touched: Uint8Array;
  active = true;

  constructor(
    readonly owner: DirtyBitmap,
    readonly start: number,
    readonly end: number,
    readonly firstRegion: number,
    readonly regionCount: number,
  ) {
    this.touched = new Uint8Array(Math.ceil(regionCount / 8));
  }
}

interface Snapshot {
  generation: number;
  slot: number;
  pages: number[];
  data: Buffer;
  tablePages: number[];
  header: Buffer;
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class DirtyBitmap {
  readonly path: string;
  readonly volumeBytes: number;
  readonly granularityBytes: number;
  readonly regionCount: number;
  private readonly geo: Geometry;
  private readonly clock: Clock;
  private readonly bits: Uint8Array;
  private readonly words: Uint32Array;
  /** Per bitmap page: the generation that first includes its latest change. */
  private readonly pageGen: Float64Array;
  /** Per slot: its page-CRC table as on disk (or as being written). */
  private readonly tables: [Buffer, Buffer];
  /** Per slot: generation fully on disk there, -1 when unknown (then the next write to it is a full copy). */
  private readonly slotGen: [number, number];
  private durableSlot: number;
  private nextGen: number;
  private changedSinceSnapshot = false;
  private writing = false;
  private inFlight: Promise<void> | null = null;
  private waiters: Deferred | null = null;
  private readonly tokens = new Set<ResyncToken>();
  private closed = false;
  private regionsDirty = 0;
  private readonly stats: DirtyBitmapCounters = { persists: 0, fdatasyncs: 0, bitmapPagesWritten: 0, bytesWritten: 0 };

  private constructor(private readonly fh: FileHandleLike, path: string, geo: Geometry, clock: Clock, loaded: Loaded) {
    this.path = path;
    this.geo = geo;
    this.clock = clock;
    this.volumeBytes = geo.volumeBytes;
    this.granularityBytes = geo.granularityBytes;
    this.regionCount = geo.regionCount;
    this.bits = loaded.bits;
    this.words = new Uint32Array(this.bits.buffer, this.bits.byteOffset, this.bits.length / 4);
    this.pageGen = new Float64Array(geo.pageCount);
    this.tables = [Buffer.alloc(geo.tableBytes), Buffer.alloc(geo.tableBytes)];
    loaded.table.copy(this.tables[loaded.slot]!);
    this.slotGen = [-1, -1];
    this.slotGen[loaded.slot] = loaded.generation;
    this.durableSlot = loaded.slot;
    this.nextGen = loaded.generation + 1;
    this.regionsDirty = countBits(this.bits, geo.regionCount);
  }

  /** Opens (or atomically creates, empty) the bitmap file of one volume. */
  static async open(opts: DirtyBitmapOptions): Promise<DirtyBitmap> {
    const geo = geometry(opts.volumeBytes, opts.granularityBytes ?? DEFAULT_GRANULARITY_BYTES);
    const clock = opts.clock ?? systemClock;
    const files = opts.files ?? nodeFiles;
    let fh = await openIfExists(files, opts.path);
    if (fh === null) {
      await createFresh(files, opts.path, geo, clock);
      fh = await openIfExists(files, opts.path);
      assert(fh !== null, 'bitmap file exists after creation');
    }
    try {
      const loaded = await load(fh, geo, opts.path);
      return new DirtyBitmap(fh, opts.path, geo, clock, loaded);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  get dirtyRegions(): number {
    return this.regionsDirty;
  }

  /** Bytes of the volume covered by dirty regions (the last region clipped to the volume end). */
  get dirtyBytes(): number {
    const last = this.regionCount - 1;
    const tail = this.bitAt(last) ? this.regionCount * this.granularityBytes - this.volumeBytes : 0;
    return this.regionsDirty * this.granularityBytes - tail;
  }

  /** Generation of the newest durable copy. */
  get generation(): number {
    return this.slotGen[this.durableSlot]!;
  }

  get counters(): Readonly<DirtyBitmapCounters> {
    return { ...this.stats };
  }

  /** Sets the bits of every region [offset, offset + length) touches. Memory only: persist before acking. */
  mark(offset: number, length: number): void {
    this.checkOpen();
    this.checkRange(offset, length);
    if (length === 0) return;
    const g = this.granularityBytes;
    this.markRegions(Math.floor(offset / g), Math.floor((offset + length - 1) / g) + 1);
  }

  /** Full resync (initial sync, or after VRG_CBT_CORRUPT). */
  markAll(): void {
    this.checkOpen();
    this.markRegions(0, this.regionCount);
  }

  /** mark() then persist(): resolves once the marks are durable, i.e. when the write may be acknowledged. */
  markAndPersist(offset: number, length: number): Promise<void> {
    this.mark(offset, length);
    return this.persist();
  }

  /** Makes every mark (and clear) made before the call durable. Concurrent calls share one write + fdatasync. */
  persist(): Promise<void> {
    if (this.closed) return Promise.reject(vrgError(ErrorCode.CLOSED, `CBT bitmap ${this.path} is closed`));
    if (!this.changedSinceSnapshot) return this.inFlight ?? Promise.resolve();
    let w = this.waiters;
    if (w === null) {
      w = this.waiters = deferred();
      this.kick();
    }
    return w.promise;
  }

  isDirty(offset: number): boolean {
    this.checkRange(offset, 1);
    return this.bitAt(Math.floor(offset / this.granularityBytes));
  }

  /**
   * Dirty regions as merged [start, end) byte ranges in ascending order, the last clipped to volumeBytes;
   * a run longer than maxBytes (rounded down to whole regions, at least one) is split. Lazy: reflects the
   * live bitmap as it iterates.
   */
  *dirtyRanges(maxBytes = Number.POSITIVE_INFINITY): Generator<DirtyRange> {
    if (!(maxBytes > 0)) throw vrgError(ErrorCode.INVALID_ARGUMENT, `dirtyRanges maxBytes must be > 0`, { maxBytes });
    const g = this.granularityBytes;
    const step = Number.isFinite(maxBytes) ? Math.max(1, Math.floor(maxBytes / g)) : this.regionCount;
    let r = 0;
    for (;;) {
      r = this.nextBit(r, true);
      if (r >= this.regionCount) return;
      const e = Math.min(this.nextBit(r, false), this.regionCount);
      for (let s = r; s < e; s += step) yield { start: s * g, end: Math.min(Math.min(s + step, e) * g, this.volumeBytes) };
      r = e;
    }
  }

  /**
   * Clears the regions of [offset, offset + length) unconditionally. Region-aligned only (the end may be
   * volumeBytes). Racing writes can be lost: the resync uses snapshotForResync/clearIfUnchanged instead.
   */
  clear(offset: number, length: number): number {
    this.checkOpen();
    const [a, b] = this.alignedRegions(offset, length);
    return this.clearRegions(a, b);
  }

  /**
   * Opens a resync window over the region-aligned range [start, end). Take it BEFORE reading the source:
   * every mark() touching the window from now on is remembered, and clearIfUnchanged() leaves those regions dirty.
   */
  snapshotForResync(start: number, end: number): ResyncToken {
    this.checkOpen();
    const [a, b] = this.alignedRegions(start, end - start);
    if (this.tokens.size >= RESYNC_TOKENS_MAX) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, `too many resync windows open (max ${RESYNC_TOKENS_MAX})`);
    }
    if (b - a > RESYNC_TOKEN_REGIONS_MAX) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, `resync window over ${RESYNC_TOKEN_REGIONS_MAX} regions`, { start, end });
    }
    const token = new ResyncToken(this, start, end, a, b - a);
    this.tokens.add(token);
    return token;
  }

  /**
   * Call once the window's data is durable on DR: clears its regions not marked since the snapshot and closes
   * the window. Returns the number of regions cleared. Durable at the next persist().
   */
  clearIfUnchanged(token: ResyncToken): number {
    this.checkOpen();
    this.takeToken(token);
    let cleared = 0;
    let i = 0;
    while (i < token.regionCount) {
      const s = nextBitIn(token.touched, i, false, token.regionCount);
      if (s >= token.regionCount) break;
      const e = Math.min(nextBitIn(token.touched, s, true, token.regionCount), token.regionCount);
      cleared += this.clearRegions(token.firstRegion + s, token.firstRegion + e);
      i = e;
    }
    return cleared;
  }

  /** Closes a resync window without clearing anything (the resync of that range failed). */
  abandonResync(token: ResyncToken): void {
    this.takeToken(token);
  }

  /** Persists outstanding changes, then closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.persist();
    } finally {
      this.closed = true;
      this.tokens.clear();
      await this.fh.close();
    }
  }

  // ---- bits ----

  private markRegions(a: number, b: number): void {
    for (const t of this.tokens) {
      const lo = Math.max(a, t.firstRegion);
      const hi = Math.min(b, t.firstRegion + t.regionCount);
      if (lo < hi) setBits(t.touched, lo - t.firstRegion, hi - t.firstRegion);
    }
    const n = setBits(this.bits, a, b);
    if (n > 0) {
      this.regionsDirty += n;
      this.touchPages(a, b);
    }
  }

  private clearRegions(a: number, b: number): number {
    const n = clearBits(this.bits, a, b);
    if (n > 0) {
      this.regionsDirty -= n;
      this.touchPages(a, b);
    }
    return n;
  }

  private touchPages(a: number, b: number): void {
    const first = Math.floor(a / 8 / PAGE);
    const last = Math.floor((b - 1) / 8 / PAGE);
    for (let p = first; p <= last; p++) this.pageGen[p] = this.nextGen;
    this.changedSinceSnapshot = true;
  }

  private bitAt(r: number): boolean {
    return ((this.bits[r >>> 3] ?? 0) & (1 << (r & 7))) !== 0;
  }

  private nextBit(from: number, want: boolean): number {
    let r = from;
    const skip = want ? 0 : 0xffffffff;
    while (r < this.regionCount) {
      if ((r & 31) === 0 && this.words[r >>> 5] === skip) {
        r += 32;
        continue;
      }
      if (this.bitAt(r) === want) return r;
      r++;
    }
    return this.regionCount;
  }

  // ---- persistence ----

  private kick(): void {
    const waiters = this.waiters;
    if (this.writing || waiters === null) return;
    this.waiters = null;
    this.writing = true;
    this.inFlight = waiters.promise;
    const snap = this.takeSnapshot();
    this.writeSnapshot(snap)
      .then(waiters.resolve, (err: unknown) => {
        this.changedSinceSnapshot = true; // its changes still need a successful write
        waiters.reject(err);
      })
      .finally(() => {
        this.writing = false;
        this.inFlight = null;
        if (!this.closed) this.kick();
      })
      .catch(() => undefined);
  }

  /** Synchronous: copies the pages the target slot lacks, so later marks go to the next generation. */
  private takeSnapshot(): Snapshot {
    const generation = this.nextGen++;
    this.changedSinceSnapshot = false;
    const slot = 1 - this.durableSlot;
    const since = this.slotGen[slot]!;
    const pages: number[] = [];
    for (let p = 0; p < this.geo.pageCount; p++) if (since < 0 || this.pageGen[p]! > since) pages.push(p);
    const data = Buffer.allocUnsafe(pages.length * PAGE);
    const table = this.tables[slot]!;
    const tablePages = new Set<number>();
    pages.forEach((p, i) => {
      const page = this.bits.subarray(p * PAGE, (p + 1) * PAGE);
      data.set(page, i * PAGE);
      table.writeUInt32LE(crc32(page), p * 4);
      tablePages.add(Math.floor((p * 4) / PAGE));
    });
    const header = encodeHeader(this.geo, generation, crc32(table.subarray(0, this.geo.pageCount * 4)), this.clock.nowMs());
    return { generation, slot, pages, data, tablePages: [...tablePages].sort((x, y) => x - y), header };
  }

  private async writeSnapshot(s: Snapshot): Promise<void> {
    const base = s.slot * this.geo.copyBytes;
    const bitsAt = base + PAGE + this.geo.tableBytes;
    this.slotGen[s.slot] = -1; // being overwritten: until durable, it holds nothing we can diff against
    try {
      let written = 0;
      for (let i = 0; i < s.pages.length; ) {
        let j = i + 1;
        while (j < s.pages.length && s.pages[j] === s.pages[j - 1]! + 1) j++;
        written += await writeFully(this.fh, [s.data.subarray(i * PAGE, j * PAGE)], bitsAt + s.pages[i]! * PAGE);
        i = j;
      }
      const table = this.tables[s.slot]!;
      for (const tp of s.tablePages) {
        written += await writeFully(this.fh, [table.subarray(tp * PAGE, (tp + 1) * PAGE)], base + PAGE + tp * PAGE);
      }
      written += await writeFully(this.fh, [s.header], base);
      await this.fh.datasync();
      this.stats.fdatasyncs++;
      this.stats.persists++;
      this.stats.bitmapPagesWritten += s.pages.length;
      this.stats.bytesWritten += written;
    } catch (err) {
      throw vrgError(ErrorCode.JOURNAL_IO, `cannot persist CBT bitmap ${this.path}: ${(err as Error).message}`, { path: this.path }, err);
    }
    this.slotGen[s.slot] = s.generation;
    this.durableSlot = s.slot;
  }

  // ---- checks ----

  private checkOpen(): void {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `CBT bitmap ${this.path} is closed`);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, `bad range ${offset}+${length}`, { offset, length });
    }
    if (offset + length > this.volumeBytes) {
      throw vrgError(ErrorCode.VOLUME_OUT_OF_RANGE, `range ${offset}+${length} beyond volume end ${this.volumeBytes}`, {
        offset, length, volumeBytes: this.volumeBytes,
      });
    }
  }

  /** Regions [a, b) of a region-aligned byte range (its end may be the volume end). */
  private alignedRegions(offset: number, length: number): [number, number] {
    this.checkRange(offset, length);
    const g = this.granularityBytes;
    const end = offset + length;
    if (offset % g !== 0 || (end % g !== 0 && end !== this.volumeBytes)) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, `range ${offset}..${end} is not aligned to ${g}-byte regions`, { offset, end });
    }
    return [offset / g, Math.ceil(end / g)];
  }

  private takeToken(token: ResyncToken): void {
    if (token.owner !== this || !token.active || !this.tokens.has(token)) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, 'resync token is not an open window of this bitmap');
    }
    token.active = false;
    this.tokens.delete(token);
  }
}

// ---- geometry, codec, load ----

function geometry(volumeBytes: number, granularityBytes: number): Geometry {
  const g = granularityBytes;
  if (!Number.isSafeInteger(g) || g < GRANULARITY_BYTES_MIN || g > GRANULARITY_BYTES_MAX || (g & (g - 1)) !== 0) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, `CBT granularity ${g} must be a power of two in [4 KiB, 1 GiB]`, { granularityBytes: g });
  }
  if (!Number.isSafeInteger(volumeBytes) || volumeBytes <= 0 || volumeBytes > VOLUME_BYTES_MAX) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, `CBT volume size ${volumeBytes} must be in (0, 64 TiB]`, { volumeBytes });
  }
  const regionCount = Math.ceil(volumeBytes / g);
  const bitmapBytes = Math.max(PAGE, roundUp(Math.ceil(regionCount / 8), PAGE));
  if (bitmapBytes > BITMAP_BYTES_MAX) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, `CBT bitmap of ${bitmapBytes} bytes exceeds ${BITMAP_BYTES_MAX}; raise the granularity`, {
      volumeBytes, granularityBytes: g,
    });
  }
  const pageCount = bitmapBytes / PAGE;
  const tableBytes = roundUp(pageCount * 4, PAGE);
  return { volumeBytes, granularityBytes: g, regionCount, pageCount, tableBytes, copyBytes: PAGE + tableBytes + bitmapBytes };
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function encodeHeader(geo: Geometry, generation: number, tableCrc: number, nowMs: number): Buffer {
  const h = Buffer.alloc(PAGE);
  h.writeUInt32LE(MAGIC, 0);
  h.writeUInt32LE(VERSION, 8);
  h.writeUInt32LE(geo.granularityBytes, 12);
  h.writeBigUInt64LE(BigInt(geo.volumeBytes), 16);
  h.writeBigUInt64LE(BigInt(generation), 24);
  h.writeUInt32LE(geo.pageCount, 32);
  h.writeUInt32LE(tableCrc, 36);
  h.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(nowMs))), 40);
  h.writeUInt32LE(crc32(h.subarray(8, HEADER_USED)), 4);
  return h;
}

interface Header {
  version: number;
  granularityBytes: number;
  volumeBytes: number;
  generation: number;
  pageCount: number;
  tableCrc: number;
}

function decodeHeader(h: Buffer): Header | null {
  if (h.length < HEADER_USED || h.readUInt32LE(0) !== MAGIC || h.readUInt32LE(4) !== crc32(h.subarray(8, HEADER_USED))) return null;
  return {
    version: h.readUInt32LE(8),
    granularityBytes: h.readUInt32LE(12),
    volumeBytes: Number(h.readBigUInt64LE(16)),
    generation: Number(h.readBigUInt64LE(24)),
    pageCount: h.readUInt32LE(32),
    tableCrc: h.readUInt32LE(36),
  };
}

interface Loaded {
  slot: number;
  generation: number;
  bits: Uint8Array;
  table: Buffer;
}

/** The newest intact copy; VRG_CBT_MISMATCH if a CRC-valid header describes another volume, else VRG_CBT_CORRUPT. */
async function load(fh: FileHandleLike, geo: Geometry, path: string): Promise<Loaded> {
  const size = (await fh.stat()).size;
  const candidates: { slot: number; header: Header }[] = [];
  for (let slot = 0; slot < 2; slot++) {
    const h = await readAt(fh, slot * geo.copyBytes, HEADER_USED, size);
    const header = h && decodeHeader(h);
    if (!header) continue;
    if (header.version !== VERSION || header.granularityBytes !== geo.granularityBytes || header.volumeBytes !== geo.volumeBytes) {
      throw vrgError(ErrorCode.CBT_MISMATCH, `CBT bitmap ${path} was made for another volume or format`, {
        path, slot, file: header, expected: { version: VERSION, granularityBytes: geo.granularityBytes, volumeBytes: geo.volumeBytes },
      });
    }
    if (header.pageCount === geo.pageCount) candidates.push({ slot, header });
  }
  candidates.sort((x, y) => y.header.generation - x.header.generation);
  for (const { slot, header } of candidates) {
    const body = await readAt(fh, slot * geo.copyBytes + PAGE, geo.copyBytes - PAGE, size);
    if (!body) continue;
    const table = body.subarray(0, geo.tableBytes);
    if (crc32(table.subarray(0, geo.pageCount * 4)) !== header.tableCrc) continue;
    const bits = new Uint8Array(geo.pageCount * PAGE);
    bits.set(body.subarray(geo.tableBytes));
    if (!pagesMatch(bits, table, geo.pageCount)) continue;
    clearBits(bits, geo.regionCount, bits.length * 8); // padding is zero by invariant; enforce it
    return { slot, generation: header.generation, bits, table: Buffer.from(table) };
  }
  throw vrgError(ErrorCode.CBT_CORRUPT, `CBT bitmap ${path}: no intact copy; a full resync is needed`, { path, size });
}

function pagesMatch(bits: Uint8Array, table: Buffer, pageCount: number): boolean {
  for (let p = 0; p < pageCount; p++) {
    if (crc32(bits.subarray(p * PAGE, (p + 1) * PAGE)) !== table.readUInt32LE(p * 4)) return false;
  }
  return true;
}

async function readAt(fh: FileHandleLike, pos: number, len: number, size: number): Promise<Buffer | null> {
  if (pos + len > size) return null;
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) return null;
    got += bytesRead;
  }
  return buf;
}

async function openIfExists(files: Files, path: string): Promise<FileHandleLike | null> {
  try {
    return await files.open(path, 'r+');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw vrgError(ErrorCode.JOURNAL_IO, `cannot open CBT bitmap ${path}: ${(err as Error).message}`, { path }, err);
  }
}

/** A new empty bitmap (generation 1 in slot 0, slot 1 blank), made under a temp name and renamed into place. */
async function createFresh(files: Files, path: string, geo: Geometry, clock: Clock): Promise<void> {
  const tmp = `${path}.tmp`;
  const bits = Buffer.alloc(geo.pageCount * PAGE);
  const table = Buffer.alloc(geo.tableBytes);
  const zeroCrc = crc32(bits.subarray(0, PAGE));
  for (let p = 0; p < geo.pageCount; p++) table.writeUInt32LE(zeroCrc, p * 4);
  const header = encodeHeader(geo, 1, crc32(table.subarray(0, geo.pageCount * 4)), clock.nowMs());
  try {
    const fh = await files.open(tmp, 'w');
    try {
      await writeFully(fh, [header, table, bits], 0);
      await fh.truncate(geo.copyBytes * 2);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await files.rename(tmp, path);
    await fsyncDir(files, dirname(path));
  } catch (err) {
    throw vrgError(ErrorCode.JOURNAL_IO, `cannot create CBT bitmap ${path}: ${(err as Error).message}`, { path }, err);
  }
}

// ---- bit helpers ----

const POPCOUNT = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT[i] = (POPCOUNT[i >> 1] ?? 0) + (i & 1);

/** Sets bits [a, b); returns how many were clear. */
function setBits(bits: Uint8Array, a: number, b: number): number {
  return fillBits(bits, a, b, true);
}

/** Clears bits [a, b); returns how many were set. */
function clearBits(bits: Uint8Array, a: number, b: number): number {
  return fillBits(bits, a, b, false);
}

/** Sets or clears bits [a, b), whole bytes at a time in the middle; returns how many bits changed. */
function fillBits(bits: Uint8Array, a: number, b: number, set: boolean): number {
  let n = 0;
  let i = a;
  for (; i < b && (i & 7) !== 0; i++) n += flipBit(bits, i, set);
  for (; i + 8 <= b; i += 8) {
    const at = i >>> 3;
    const ones = POPCOUNT[bits[at]!]!;
    n += set ? 8 - ones : ones;
    bits[at] = set ? 0xff : 0;
  }
  for (; i < b; i++) n += flipBit(bits, i, set);
  return n;
}

/** Puts bit i into the wanted state; 1 when that changed it. */
function flipBit(bits: Uint8Array, i: number, set: boolean): number {
  const m = 1 << (i & 7);
  const v = bits[i >>> 3]!;
  if (((v & m) !== 0) === set) return 0;
  bits[i >>> 3] = set ? v | m : v & ~m;
  return 1;
}

function countBits(bits: Uint8Array, count: number): number {
  let n = 0;
  for (let at = 0; at < Math.ceil(count / 8); at++) n += POPCOUNT[bits[at]!]!;
  return n;
}

/** First index in [from, limit) whose bit equals `want`, or limit. */
function nextBitIn(bits: Uint8Array, from: number, want: boolean, limit: number): number {
  for (let i = from; i < limit; i++) if ((((bits[i >>> 3] ?? 0) >> (i & 7)) & 1) === (want ? 1 : 0)) return i;
  return limit;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
