import { dirname } from 'node:path';
import { assert } from '../../core/assert.js';
import { crc32 } from '../../core/checksum.js';
import { ErrorCode, vrgError } from '../../core/errors.js';
import { limits, MiB } from '../../core/limits.js';
import type { Logger } from '../../core/log.js';
import { writeFully } from '../../core/write-fully.js';
import { WindowReader, fsyncDir } from '../../journal/segment.js';
import { nodeFiles, type FileHandleLike, type Files } from '../../core/files.js';

// The DR side's stage for one VM: a CBT resync pass (or a SnapshotsOnly snapshot) is written here, not to
// the targets, so the replica stays crash-consistent. The durable COMMIT marker is the atomic commit
// point: before it a crash leaves the old image (the staged records are kept: DR acknowledged them and
// production trimmed them); after it recovery re-applies the whole stage (idempotent) and clears it.

export interface StagedOp {
  /** Index into the VM's target volume list. */
  volumeIndex: number;
  offset: number;
  length: number;
  kind: 'write' | 'zero';
  /** Present iff kind === 'write', data.byteLength === length. */
  data: Buffer | null;
}

export interface StageStoreOptions {
  /** One file per VM, e.g. <dataDir>/dr/<vmUuid>/stage.log (its directory is created if missing). */
  path: string;
  /** Records with seq > durableSeq were never acknowledged: dropped on open (production resends them). */
  durableSeq: number;
  logger: Logger;
  /** Bound on the stage file's bytes; an append beyond it throws JOURNAL_FULL. */
  stageBytesMax?: number;
  /** Op data handed to one apply call (≤ 16 MiB; lower only in tests). */
  applyChunkBytesMax?: number;
  /** Where the stage file lives (default node:fs). */
  files?: Files;
}

export type ApplyStaged = (ops: StagedOp[]) => Promise<void>;
/** Runs after the whole stage is applied, before it is cleared (e.g. to persist the applied seq). */
export type BeforeClear = () => Promise<void>;

// Stage file (all integers little-endian): a plain sequence of records, no file header. A valid file is
// empty, or BEGIN, OPS*, and optionally one COMMIT last; seqs strictly increase. Clearing truncates to 0.
//
// record header (24 bytes):
//  0  u32 magic          0x53475256 ("VRGS" read as bytes 56 52 47 53)
//  4  u32 crc            CRC-32 chained over bytes [8, 24) of this header, then over the payload
//  8  u64 seq            the journal seq of the record (BEGIN / COMMIT: of the stage marker)
// 16  u8  type           BEGIN 1, OPS 2, COMMIT 3
// 17  u8  reserved       0
// 18  u16 opCount        OPS: ops in the payload (≤ OPS_PER_RECORD_MAX); BEGIN / COMMIT: 0
// 20  u32 payloadLength  bytes that follow (BEGIN / COMMIT: 0)
// 24  payload
//
// OPS payload: opCount descriptors of 24 bytes, then the data of the write ops concatenated in op order.
//  0  u64 offset   8 u64 length   16 u16 volumeIndex   18 u8 kind (write 1, zero 2)   19 u8 0   20 u32 0
export const STAGE_MAGIC = 0x53475256;
export const STAGE_HEADER_BYTES = 24;
export const STAGE_OP_BYTES = 24;
const RecordType = { BEGIN: 1, OPS: 2, COMMIT: 3 } as const;
const OpKind = { write: 1, zero: 2 } as const;

export const OPS_PER_RECORD_MAX = limits.batchRecordsMax;
/** Op data in one record; also the bound on one apply call, so a record always fits a chunk. */
export const RECORD_DATA_BYTES_MAX = 16 * MiB;
const PAYLOAD_BYTES_MAX = OPS_PER_RECORD_MAX * STAGE_OP_BYTES + RECORD_DATA_BYTES_MAX;
const APPLY_CHUNK_OPS_MAX = 4 * OPS_PER_RECORD_MAX;
/** Appended but not yet synced: the caller syncs per batch, far below this. */
const PENDING_BYTES_MAX = limits.intakePendingBytesMax;
const STAGE_BYTES_MAX_DEFAULT = 1024 * 1024 * MiB; // 1 TiB
const MAGIC_BYTES = Buffer.from([0x56, 0x52, 0x47, 0x53]);
const SEARCH_CHUNK_BYTES = 8 * MiB;
const TWO_32 = 0x1_0000_0000;

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32LE(value % TWO_32, at);
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4);
}

function readU64(buf: Buffer, at: number): number {
  // Above 2^53 the value is not exact; checks reject it as not a safe integer.
  return buf.readUInt32LE(at + 4) * TWO_32 + buf.readUInt32LE(at);
}

function dataBytesOf(ops: readonly StagedOp[]): number {
  let n = 0;
  for (const op of ops) if (op.kind === 'write') n += op.length;
  return n;
}

/** One record (header + payload) in one buffer; `ops` already validated. */
function encodeRecord(seq: number, type: number, ops: readonly StagedOp[]): Buffer {
  const payloadLength = ops.length * STAGE_OP_BYTES + dataBytesOf(ops);
  const buf = Buffer.alloc(STAGE_HEADER_BYTES + payloadLength);
  buf.writeUInt32LE(STAGE_MAGIC, 0);
  writeU64(buf, seq, 8);
  buf[16] = type;
  buf.writeUInt16LE(ops.length, 18);
  buf.writeUInt32LE(payloadLength, 20);
  let desc = STAGE_HEADER_BYTES;
  let data = desc + ops.length * STAGE_OP_BYTES;
  for (const op of ops) {
    writeU64(buf, op.offset, desc);
    writeU64(buf, op.length, desc + 8);
    buf.writeUInt16LE(op.volumeIndex, desc + 16);
    buf[desc + 18] = OpKind[op.kind];
    desc += STAGE_OP_BYTES;
    if (op.data) data += op.data.copy(buf, data);
  }
  buf.writeUInt32LE(crc32(buf.subarray(8)), 4);
  return buf;
}

interface RecordHeader {
  crc: number;
  seq: number;
  type: number;
  opCount: number;
  payloadLength: number;
}

/** A plausible header, or why not. */
function decodeHeader(buf: Buffer, at: number): RecordHeader | string {
  if (buf.readUInt32LE(at) !== STAGE_MAGIC) return 'bad magic';
  const h = {
    crc: buf.readUInt32LE(at + 4),
    seq: readU64(buf, at + 8),
    type: buf[at + 16]!,
    opCount: buf.readUInt16LE(at + 18),
    payloadLength: buf.readUInt32LE(at + 20),
  };
  if (h.seq < 1 || !Number.isSafeInteger(h.seq)) return 'bad seq';
  if (h.type < RecordType.BEGIN || h.type > RecordType.COMMIT || buf[at + 17] !== 0) return 'bad type';
  if (h.opCount > OPS_PER_RECORD_MAX || h.payloadLength > PAYLOAD_BYTES_MAX) return 'bad length';
  if (h.type !== RecordType.OPS && (h.opCount !== 0 || h.payloadLength !== 0)) return 'bad marker';
  if (h.payloadLength < h.opCount * STAGE_OP_BYTES) return 'bad length';
  return h;
}

/** The ops of an OPS payload (data are views into `payload`), or why it is malformed. */
function decodeOps(payload: Buffer, opCount: number): StagedOp[] | string {
  const ops: StagedOp[] = [];
  let data = opCount * STAGE_OP_BYTES;
  for (let i = 0; i < opCount; i++) {
    const at = i * STAGE_OP_BYTES;
    const offset = readU64(payload, at);
    const length = readU64(payload, at + 8);
    const volumeIndex = payload.readUInt16LE(at + 16);
    const kind = payload[at + 18] === OpKind.write ? 'write' : payload[at + 18] === OpKind.zero ? 'zero' : null;
    if (kind === null || !opFieldsOk(volumeIndex, offset, length)) return `bad op ${i}`;
    if (kind === 'write' && data + length > payload.length) return `op ${i} data past the payload`;
    ops.push({ volumeIndex, offset, length, kind, data: kind === 'write' ? payload.subarray(data, data + length) : null });
    if (kind === 'write') data += length;
  }
  return data === payload.length ? ops : 'payload length does not match its ops';
}

function opFieldsOk(volumeIndex: number, offset: number, length: number): boolean {
  return (
    Number.isInteger(volumeIndex) && volumeIndex >= 0 && volumeIndex < limits.volumesPerVmMax &&
    Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(length) && length >= 1 &&
    Number.isSafeInteger(offset + length)
  );
}

interface StageRecord {
  header: RecordHeader;
  /** Header + payload. */
  bytes: number;
  ops: StagedOp[];
  dataBytes: number;
}

/** The intact record at `pos` (complete, CRC good, well formed), or why not. */
async function readRecordAt(r: WindowReader, pos: number): Promise<StageRecord | string> {
  const head = await r.need(pos, STAGE_HEADER_BYTES);
  if (!head) return 'short header';
  const h = decodeHeader(head.buf, head.at);
  if (typeof h === 'string') return h;
  const bytes = STAGE_HEADER_BYTES + h.payloadLength;
  const whole = await r.need(pos, bytes);
  if (!whole) return 'short payload';
  if (crc32(whole.buf.subarray(whole.at + 8, whole.at + bytes)) !== h.crc) return 'bad crc';
  const payload = whole.buf.subarray(whole.at + STAGE_HEADER_BYTES, whole.at + bytes);
  const ops = h.type === RecordType.OPS ? decodeOps(payload, h.opCount) : [];
  if (typeof ops === 'string') return ops;
  return { header: h, bytes, ops, dataBytes: dataBytesOf(ops) };
}

function corrupt(path: string, message: string, details: Record<string, unknown> = {}): Error {
  return vrgError(ErrorCode.STAGE_CORRUPT, `stage ${path}: ${message}`, { path, ...details });
}

/** What the file holds, as far as the in-memory state needs it. */
interface StageIndex {
  beganSeq: number | null;
  committedSeq: number | null;
  /** Highest seq in the file (0 when empty). */
  lastSeq: number;
  ops: number;
  /** File bytes. */
  bytes: number;
}

const emptyIndex = (): StageIndex => ({ beganSeq: null, committedSeq: null, lastSeq: 0, ops: 0, bytes: 0 });

interface Scan {
  idx: StageIndex;
  fileSize: number;
  /** Why the scan stopped before the end of the file (null when the whole file is intact). */
  badReason: string | null;
  /** The index just before the first record with seq > durableSeq. */
  beforeUnacked: StageIndex | null;
}

/** CRC-valid records in an order no writer produces are corruption, not a torn write. */
function checkOrder(path: string, idx: StageIndex, h: RecordHeader, pos: number): void {
  const bad = (why: string): Error => corrupt(path, `${why} at byte ${pos}`, { seq: h.seq, pos });
  if (idx.bytes > 0 && h.seq <= idx.lastSeq) throw bad(`seq ${h.seq} after ${idx.lastSeq}`);
  if (idx.committedSeq !== null) throw bad('record after the commit marker');
  if (h.type === RecordType.BEGIN && idx.beganSeq !== null) throw bad('second begin marker');
  if (h.type !== RecordType.BEGIN && idx.beganSeq === null) throw bad('record before the begin marker');
}

async function scanStage(path: string, fh: FileHandleLike, durableSeq: number): Promise<Scan> {
  const { size: fileSize } = await fh.stat();
  const r = new WindowReader(fh, fileSize);
  const s: Scan = { idx: emptyIndex(), fileSize, badReason: null, beforeUnacked: null };
  while (s.idx.bytes < fileSize) {
    const rec = await readRecordAt(r, s.idx.bytes);
    if (typeof rec === 'string') {
      s.badReason = rec;
      break;
    }
    const h = rec.header;
    checkOrder(path, s.idx, h, s.idx.bytes);
    if (h.seq > durableSeq && s.beforeUnacked === null) s.beforeUnacked = { ...s.idx };
    if (h.type === RecordType.BEGIN) s.idx.beganSeq = h.seq;
    if (h.type === RecordType.COMMIT) s.idx.committedSeq = h.seq;
    s.idx.ops += rec.ops.length;
    s.idx.lastSeq = h.seq;
    s.idx.bytes += rec.bytes;
  }
  return s;
}

/**
 * After a bad record: is there an intact record with seq > minSeq starting at or beyond `from`? It was
 * written by a later sync, so the bad record had been made durable: corruption, not a torn tail.
 */
async function findIntactRecordFrom(fh: FileHandleLike, fileSize: number, from: number, minSeq: number): Promise<number | null> {
  const r = new WindowReader(fh, fileSize);
  for (let start = from; start < fileSize; start += SEARCH_CHUNK_BYTES) {
    // Overlap by the magic's length - 1 so a magic across two chunks is still seen.
    const len = Math.min(SEARCH_CHUNK_BYTES + MAGIC_BYTES.length - 1, fileSize - start);
    const chunk = Buffer.allocUnsafe(len);
    const { bytesRead } = await fh.read(chunk, 0, len, start);
    const view = chunk.subarray(0, bytesRead);
    for (let i = view.indexOf(MAGIC_BYTES); i >= 0 && i < SEARCH_CHUNK_BYTES; i = view.indexOf(MAGIC_BYTES, i + 1)) {
      const rec = await readRecordAt(r, start + i);
      if (typeof rec !== 'string' && rec.header.seq > minSeq) return start + i;
    }
  }
  return null;
}

async function openFile(files: Files, path: string): Promise<FileHandleLike> {
  try {
    await files.mkdir(dirname(path));
    const created = await files.open(path, 'a+');
    await created.close();
    await fsyncDir(files, dirname(path));
    // 'r+', not 'a+': positional writes must not be forced to the end of the file.
    return await files.open(path, 'r+');
  } catch (err) {
    throw vrgError(ErrorCode.JOURNAL_IO, `cannot open stage ${path}: ${(err as Error).message}`, { path }, err);
  }
}

/** The index the file is cut back to: a torn tail goes, so do records never acknowledged (unless committed). */
async function repairedIndex(path: string, fh: FileHandleLike, durableSeq: number, logger: Logger): Promise<StageIndex> {
  const s = await scanStage(path, fh, durableSeq);
  if (s.badReason !== null) {
    const later = await findIntactRecordFrom(fh, s.fileSize, s.idx.bytes + 1, s.idx.lastSeq);
    if (later !== null) throw corrupt(path, `bad record at byte ${s.idx.bytes} (${s.badReason}) followed by an intact record at ${later}`);
    logger.warn({ path, at: s.idx.bytes, fileSize: s.fileSize, reason: s.badReason }, 'stage: cut a torn tail');
  }
  let idx = s.idx;
  if (idx.committedSeq !== null && idx.committedSeq > durableSeq) {
    // The commit marker is durable, so the apply may have begun: dropping it would leave a half-applied image.
    logger.warn({ path, committedSeq: idx.committedSeq, durableSeq }, 'stage: commit marker beyond durableSeq kept');
  } else if (s.beforeUnacked !== null) {
    logger.info({ path, from: s.beforeUnacked.bytes, durableSeq }, 'stage: dropped records never acknowledged');
    idx = s.beforeUnacked;
  }
  if (idx.bytes < s.fileSize) {
    await fh.truncate(idx.bytes);
    await fh.datasync();
  }
  return idx;
}

function checkSeq(seq: number): void {
  if (!Number.isSafeInteger(seq) || seq < 1) throw vrgError(ErrorCode.INVALID_ARGUMENT, `bad stage seq ${seq}`, { seq });
}

/** Throws on malformed ops; returns the bytes of their record. */
function checkOps(ops: readonly StagedOp[]): number {
  const bad = (i: number, why: string): Error => vrgError(ErrorCode.INVALID_ARGUMENT, `staged op ${i}: ${why}`, { op: i });
  if (!Array.isArray(ops)) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'staged ops must be an array');
  if (ops.length > OPS_PER_RECORD_MAX) {
    throw vrgError(ErrorCode.RECORD_TOO_LARGE, `${ops.length} ops in one staged record (max ${OPS_PER_RECORD_MAX})`);
  }
  ops.forEach((op, i) => {
    if (!opFieldsOk(op.volumeIndex, op.offset, op.length)) throw bad(i, 'bad volume index, offset or length');
    if (op.kind === 'write') {
      if (!Buffer.isBuffer(op.data) || op.data.byteLength !== op.length) throw bad(i, 'write data length does not match its length');
    } else if (op.kind !== 'zero' || op.data !== null) {
      throw bad(i, 'bad kind, or data on a zero op');
    }
  });
  const dataBytes = dataBytesOf(ops);
  if (dataBytes > RECORD_DATA_BYTES_MAX) {
    throw vrgError(ErrorCode.RECORD_TOO_LARGE, `${dataBytes} data bytes in one staged record (max ${RECORD_DATA_BYTES_MAX})`);
  }
  return STAGE_HEADER_BYTES + ops.length * STAGE_OP_BYTES + dataBytes;
}

export class StageStore {
  private idx: StageIndex;
  /** Highest seq seen (appended, or acknowledged before open): anything at or below is a duplicate. */
  private seenSeq: number;
  /** Durable file bytes; pending records go after them. */
  private fileBytes: number;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private duplicates = 0;
  private closed = false;
  /** sync / commit / recover / close run one at a time, in call order. */
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly fh: FileHandleLike,
    private readonly opts: Required<StageStoreOptions>,
    idx: StageIndex,
  ) {
    this.idx = idx;
    this.fileBytes = idx.bytes;
    this.seenSeq = Math.max(idx.lastSeq, opts.durableSeq);
  }

  static async open(opts: StageStoreOptions): Promise<StageStore> {
    const full: Required<StageStoreOptions> = {
      ...opts,
      stageBytesMax: opts.stageBytesMax ?? STAGE_BYTES_MAX_DEFAULT,
      applyChunkBytesMax: opts.applyChunkBytesMax ?? RECORD_DATA_BYTES_MAX,
      files: opts.files ?? nodeFiles,
    };
    if (!Number.isSafeInteger(full.durableSeq) || full.durableSeq < 0) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, `bad durableSeq ${full.durableSeq}`);
    }
    if (!(full.stageBytesMax > 0) || !(full.applyChunkBytesMax > 0) || full.applyChunkBytesMax > RECORD_DATA_BYTES_MAX) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, 'bad stageBytesMax or applyChunkBytesMax');
    }
    const fh = await openFile(full.files, full.path);
    try {
      const idx = await repairedIndex(full.path, fh, full.durableSeq, full.logger);
      return new StageStore(fh, full, idx);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** A stage has begun (and is not yet cleared). */
  get active(): boolean {
    return this.idx.beganSeq !== null;
  }

  get beganSeq(): number | null {
    return this.idx.beganSeq;
  }

  /** Seq of the commit marker, when committed but not yet cleared. */
  get committedSeq(): number | null {
    return this.idx.committedSeq;
  }

  /** Bytes of the stage file, including records appended but not yet synced. */
  get stagedBytes(): number {
    return this.idx.bytes;
  }

  get stagedOps(): number {
    return this.idx.ops;
  }

  /** Highest seq seen: a begin / append / commit at or below it is a duplicate. */
  get lastSeq(): number {
    return this.seenSeq;
  }

  /** Begin / append / commit calls skipped as duplicates since open. */
  get duplicatesSkipped(): number {
    return this.duplicates;
  }

  /** Opens a stage at `seq` (a no-op if one is open). Buffered like append. */
  begin(seq: number): void {
    this.checkOpen();
    checkSeq(seq);
    if (this.idx.beganSeq !== null && this.idx.committedSeq === null) return;
    if (seq <= this.seenSeq) {
      this.duplicates++;
      return;
    }
    if (this.idx.committedSeq !== null) {
      throw vrgError(ErrorCode.ILLEGAL_TRANSITION, `stage begin at ${seq} while the stage committed at ${this.idx.committedSeq} is not applied`);
    }
    this.push(seq, RecordType.BEGIN, [], STAGE_HEADER_BYTES);
    this.idx.beganSeq = seq;
  }

  /** Appends one record of ops at `seq`, buffered until sync(); a seq at or below lastSeq is skipped as a duplicate. */
  append(seq: number, ops: StagedOp[]): void {
    this.checkOpen();
    checkSeq(seq);
    if (seq <= this.seenSeq) {
      this.duplicates++;
      return;
    }
    if (this.idx.beganSeq === null || this.idx.committedSeq !== null) {
      const why = this.idx.beganSeq === null ? 'no stage begun' : `the stage is committed at ${this.idx.committedSeq}`;
      throw vrgError(ErrorCode.ILLEGAL_TRANSITION, `stage append at ${seq}: ${why}`, { seq });
    }
    const recordBytes = checkOps(ops);
    if (this.idx.bytes + recordBytes > this.opts.stageBytesMax) {
      throw vrgError(ErrorCode.JOURNAL_FULL, `stage full: ${this.idx.bytes} + ${recordBytes} bytes > ${this.opts.stageBytesMax}`, { seq });
    }
    if (this.pendingBytes + recordBytes > PENDING_BYTES_MAX) {
      throw vrgError(ErrorCode.JOURNAL_FULL, `stage: ${this.pendingBytes} bytes appended but not synced (sync first)`, { seq });
    }
    this.push(seq, RecordType.OPS, ops, recordBytes);
    this.idx.ops += ops.length;
  }

  /** Makes everything begun / appended so far durable (one write + fdatasync). */
  sync(): Promise<void> {
    this.checkOpen();
    return this.serial(() => this.flush());
  }

  /**
   * Writes the commit marker at `seq` and makes it durable (the atomic commit point), applies every staged
   * op in order in bounded chunks read back from the file, runs `beforeClear`, then clears the stage.
   * `apply` must make the targets durable before resolving. After a failure the stage stays committed:
   * commit(sameSeq) or recover() retries the whole apply. A commit at or below lastSeq with no stage
   * begun is a duplicate (skipped).
   */
  commit(seq: number, apply: ApplyStaged, beforeClear?: BeforeClear): Promise<void> {
    this.checkOpen();
    checkSeq(seq);
    const committed = this.idx.committedSeq;
    if (committed !== null && seq !== committed) {
      throw vrgError(ErrorCode.ILLEGAL_TRANSITION, `stage commit at ${seq}: already committed at ${committed}`, { seq });
    }
    if (committed === null) {
      if (this.idx.beganSeq === null && seq <= this.seenSeq) {
        this.duplicates++;
        return Promise.resolve();
      }
      if (this.idx.beganSeq === null) throw vrgError(ErrorCode.ILLEGAL_TRANSITION, `stage commit at ${seq}: no stage begun`, { seq });
      if (seq <= this.seenSeq) {
        throw vrgError(ErrorCode.INVALID_ARGUMENT, `stage commit at ${seq}: not after the last staged seq ${this.seenSeq}`, { seq });
      }
      this.push(seq, RecordType.COMMIT, [], STAGE_HEADER_BYTES);
      this.idx.committedSeq = seq;
    }
    return this.serial(() => this.applyCommitted(apply, beforeClear)).then(() => undefined);
  }

  /** Applies and clears a stage whose commit marker is durable (a crash between commit and clear); true if it did. */
  recover(apply: ApplyStaged, beforeClear?: BeforeClear): Promise<boolean> {
    this.checkOpen();
    return this.serial(() => this.applyCommitted(apply, beforeClear));
  }

  /** Waits for running operations, then closes. Records appended but not synced are dropped (never acknowledged). */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return this.serial(() => this.fh.close());
  }

  private checkOpen(): void {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `stage ${this.opts.path} is closed`);
  }

  private push(seq: number, type: number, ops: readonly StagedOp[], recordBytes: number): void {
    const buf = encodeRecord(seq, type, ops);
    assert(buf.length === recordBytes, 'staged record size as computed');
    this.pending.push(buf);
    this.pendingBytes += buf.length;
    this.idx.bytes += buf.length;
    this.idx.lastSeq = seq;
    this.seenSeq = seq;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Writes the pending records after the durable ones; on failure nothing is dropped (a retry rewrites them). */
  private async flush(): Promise<void> {
    const n = this.pending.length;
    if (n === 0) return;
    const bufs = this.pending.slice(0, n);
    const bytes = await writeFully(this.fh, bufs, this.fileBytes);
    await this.fh.datasync();
    this.pending.splice(0, n);
    this.pendingBytes -= bytes;
    this.fileBytes += bytes;
  }

  private async applyCommitted(apply: ApplyStaged, beforeClear: BeforeClear | undefined): Promise<boolean> {
    if (this.idx.committedSeq === null) return false;
    await this.flush();
    assert(this.pending.length === 0 && this.fileBytes === this.idx.bytes, 'nothing appended after the commit marker');
    await this.applyStage(apply);
    if (beforeClear) await beforeClear();
    await this.fh.truncate(0);
    await this.fh.datasync();
    this.fileBytes = 0;
    this.idx = emptyIndex();
    return true;
  }

  /** Reads the stage back in order and hands its ops to `apply` in chunks of bounded data. */
  private async applyStage(apply: ApplyStaged): Promise<void> {
    const r = new WindowReader(this.fh, this.fileBytes);
    let chunk: StagedOp[] = [];
    let chunkBytes = 0;
    for (let pos = 0; ; ) {
      const rec = pos < this.fileBytes ? await readRecordAt(r, pos) : 'no commit marker before the end';
      if (typeof rec === 'string') throw corrupt(this.opts.path, `reading the committed stage at byte ${pos}: ${rec}`, { pos });
      pos += rec.bytes;
      if (rec.header.type === RecordType.COMMIT) {
        if (rec.header.seq !== this.idx.committedSeq) throw corrupt(this.opts.path, `commit marker seq ${rec.header.seq}`);
        break;
      }
      const full = chunkBytes + rec.dataBytes > this.opts.applyChunkBytesMax || chunk.length + rec.ops.length > APPLY_CHUNK_OPS_MAX;
      if (chunk.length > 0 && full) {
        await apply(chunk);
        chunk = [];
        chunkBytes = 0;
      }
      for (const op of rec.ops) chunk.push(op);
      chunkBytes += rec.dataBytes;
    }
    if (chunk.length > 0) await apply(chunk);
  }
}
