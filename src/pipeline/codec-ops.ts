import { systemClock } from '../core/clock.js';
import { ErrorCode, isVrgError, vrgError } from '../core/errors.js';
import { limits } from '../core/limits.js';
import { encodeFrame, FRAME_OVERHEAD_BYTES, frameHeaderBytesMax, FrameType, openFrame, parseFrame, type DirectionKeys } from '../protocol/frame.js';
import { decodeWriteBatch, encodeWriteBatch, peekWriteBatchRecords, type WriteBatch } from '../protocol/messages.js';
import { RecordCodec, type CompressResult, type ShipResult, type StageSample } from './codec-types.js';
import { lz4Decode, lz4Encode, lz4EncodeBound } from './lz4-native.js';

// Pure, synchronous codec operations shared by InlineCodec (calling thread) and codec-worker.ts (piscina).
// Every output buffer they return owns its whole ArrayBuffer (Buffer.allocUnsafeSlow), so it can be transferred,
// unless the caller gave a block to build it in (`into`, a pooled buffer): then it is a view of that block.

/** Record kinds of WriteRecord.kind (same numbers as the journal's RecordKind). */
// The journal's RecordKind (workers load this file alone, so the values are repeated here).
const Kind = { WRITE: 1, TRIM: 2, ZERO: 3, BARRIER: 4, RESYNC: 5, STAGE_BEGIN: 6, STAGE_COMMIT: 7 } as const;
const carriesData = (kind: number): boolean => kind === Kind.WRITE || kind === Kind.RESYNC;

/**
 * Largest total declared plain length (sum of WRITE lengths) one batch may decode to: what a RAW frame could carry.
 * Checked before allocating; a shipper must keep each batch's plain bytes at or under it.
 */
export const batchPlainBytesMax = limits.frameBytesMax;

export interface Timed<T> {
  value: T;
  samples: StageSample[];
}

const now = (): bigint => systemClock.monotonicNs();
const since = (t0: bigint): number => Number(now() - t0);

/** A Buffer that owns its whole ArrayBuffer (transferable without copying anything else). */
export function ownsArrayBuffer(b: Uint8Array): boolean {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && !(b.buffer instanceof SharedArrayBuffer);
}

/** A Buffer view over the same memory (worker messages deliver Buffers as plain Uint8Arrays). */
export function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** `b` itself when it owns its ArrayBuffer, else a copy that does. */
export function toOwned(b: Uint8Array): Buffer {
  if (ownsArrayBuffer(b)) return Buffer.from(b.buffer as ArrayBuffer, 0, b.byteLength);
  const out = Buffer.allocUnsafeSlow(b.byteLength);
  out.set(b);
  return out;
}

/** A per-thread buffer for temporaries, grown (at least doubling) when a call needs more; each worker has its own. */
function scratchBuffer(): (size: number) => Buffer {
  let buf = Buffer.allocUnsafeSlow(0);
  return (size) => {
    if (buf.length < size) buf = Buffer.allocUnsafeSlow(Math.max(size, 2 * buf.length));
    return buf;
  };
}

/** Compression output, on its way to sealBatch. */
const scratchOf = scratchBuffer();
/**
 * A batch's decrypted payload, on its way to decompressRecords: a second buffer, as shipBatch's output may
 * still sit in the first when a process opens as well as ships (the simulator does).
 */
const openScratchOf = scratchBuffer();

/**
 * Compresses records laid back to back in `data`. Output layout: stored bytes of record 0, record 1, ... back to back;
 * a record is LZ4 (one LZ4 block) when that is strictly smaller than its length, RAW (its bytes verbatim) otherwise.
 */
export function compressRecords(data: Buffer, lengths: readonly number[], compress: boolean): Timed<CompressResult> {
  const t0 = now();
  let total = 0;
  for (const len of lengths) {
    if (!Number.isSafeInteger(len) || len < 0) throw vrgError(ErrorCode.INVALID_ARGUMENT, `bad record length ${len}`);
    total += len;
  }
  if (total !== data.length) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, 'record lengths do not add up to the data length', { total, dataLength: data.length });
  }
  const work = scratchOf(total);
  const storedLengths: number[] = new Array<number>(lengths.length);
  const codecs: number[] = new Array<number>(lengths.length);
  let inPos = 0;
  let outPos = 0;
  for (let i = 0; i < lengths.length; i++) {
    const len = lengths[i]!;
    const src = data.subarray(inPos, inPos + len);
    // Capacity len - 1: LZ4 returns 0 unless the block is strictly smaller than the record.
    const n = compress && len > 1 ? lz4Encode(src, work.subarray(outPos, outPos + len - 1)) : 0;
    if (n > 0 && n < len) {
      codecs[i] = RecordCodec.LZ4;
      storedLengths[i] = n;
    } else {
      work.set(src, outPos);
      codecs[i] = RecordCodec.RAW;
      storedLengths[i] = len;
    }
    outPos += storedLengths[i]!;
    inPos += len;
  }
  const stored = Buffer.allocUnsafeSlow(outPos);
  work.copy(stored, 0, 0, outPos);
  return {
    value: { stored, storedLengths, codecs },
    samples: [{ stage: 'compress', bytesIn: total, bytesOut: outPos, ns: since(t0) }],
  };
}

/**
 * Compresses a batch at ship time and seals it: the journal keeps writes as they arrived (RAW), so the
 * intake's ack path does no compression; here each RAW data record becomes LZ4 when that is strictly smaller.
 * `payload` holds the records' stored bytes back to back, as `batch.records[i].storedLength` says, or is one
 * buffer per record (the inline codec reads the journal's cached payloads where they are).
 */
export function shipBatch(keys: DirectionKeys, seq: number, batch: WriteBatch, payload: Buffer | readonly Buffer[], encrypt: boolean,
    compress: boolean, into?: Buffer): Timed<ShipResult> {
  const parts = Buffer.isBuffer(payload) ? null : payload;
  const total = parts ? partsBytes(batch, parts) : payload.length;
  validateBatch(batch, total);
  const samples: StageSample[] = [];
  let records = batch.records;
  let stored: Buffer;
  if (compress) {
    const t0 = now();
    const work = scratchOf(total);
    let inPos = 0;
    let outPos = 0;
    records = batch.records.map((r, i) => {
      const src = parts ? parts[i]! : (payload as Buffer).subarray(inPos, inPos + r.storedLength);
      inPos += r.storedLength;
      // Capacity len - 1: LZ4 returns 0 unless the block is strictly smaller than the record.
      const n = r.codec === RecordCodec.RAW && carriesData(r.kind) && src.length > 1
        ? lz4Encode(src, work.subarray(outPos, outPos + src.length - 1)) : 0;
      if (n > 0 && n < src.length) {
        outPos += n;
        return { ...r, codec: RecordCodec.LZ4, storedLength: n };
      }
      work.set(src, outPos);
      outPos += src.length;
      return r;
    });
    stored = work.subarray(0, outPos);
    samples.push({ stage: 'compress', bytesIn: total, bytesOut: outPos, ns: since(t0) });
  } else if (parts) {
    stored = scratchOf(total).subarray(0, total);
    let at = 0;
    for (const b of parts) {
      stored.set(b, at);
      at += b.byteLength;
    }
  } else {
    stored = payload as Buffer;
  }
  const sealed = sealBatch(keys, seq, encodeWriteBatch({ ...batch, records }), stored, encrypt, into);
  return { value: { frame: sealed.value, storedBytes: stored.length }, samples: [...samples, ...sealed.samples] };
}

/** The bytes of a payload given per record, each part as long as its record's storedLength. */
function partsBytes(batch: WriteBatch, parts: readonly Buffer[]): number {
  const records = batch.records ?? [];
  if (parts.length !== records.length) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, 'one payload part per record', { parts: parts.length, records: records.length });
  }
  let total = 0;
  for (let i = 0; i < parts.length; i++) {
    if (parts[i]!.byteLength !== records[i]!.storedLength) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, 'a payload part differs from its record\'s storedLength', { record: i });
    }
    total += parts[i]!.byteLength;
  }
  return total;
}

/**
 * A complete sealed WRITE_BATCH frame: header = encoded WriteBatch, payload = the records' stored bytes. Built at
 * the start of `into` when given (a pooled block: shipBoundBytes(payload) fits), else in a buffer of its own.
 */
export function sealBatch(keys: DirectionKeys, seq: number, header: Uint8Array, payload: Buffer, encrypt: boolean, into?: Buffer): Timed<Buffer> {
  const t0 = now();
  const encoded = encodeFrame({ type: FrameType.WRITE_BATCH, seq, header, payload }, { keys, encrypt }, into);
  const frame = into ? encoded : toOwned(encoded);
  return {
    value: frame,
    samples: [{ stage: 'seal', bytesIn: header.byteLength + payload.length, bytesOut: frame.length, ns: since(t0) }],
  };
}

function decodeHeader(header: Buffer): WriteBatch {
  try {
    return decodeWriteBatch(header);
  } catch (err) {
    if (isVrgError(err)) throw err;
    throw vrgError(ErrorCode.FRAME_MALFORMED, 'undecodable WriteBatch header', undefined, err);
  }
}

/**
 * The decoded batch as a plain object with every field present (protobufjs keeps proto3 defaults on the prototype,
 * which structured clone between threads would drop).
 */
function plainBatch(b: WriteBatch): WriteBatch {
  return {
    vmUuid: b.vmUuid,
    firstSeq: b.firstSeq,
    volumeUuids: [...(b.volumeUuids ?? [])],
    records: (b.records ?? []).map((r) => ({
      volumeIndex: r.volumeIndex, offset: r.offset, length: r.length, kind: r.kind, codec: r.codec,
      storedLength: r.storedLength,
    })),
    producedAtMs: b.producedAtMs,
    generation: b.generation ?? 0,
    fencingToken: b.fencingToken ?? 0,
  };
}

/**
 * Checks every record against the payload before anything is allocated or decompressed.
 * Returns the total declared plain length of the WRITE records.
 */
export function validateBatch(batch: WriteBatch, payloadLength: number): number {
  const bad = (why: string, details?: Record<string, unknown>): never => {
    throw vrgError(ErrorCode.FRAME_MALFORMED, `WriteBatch: ${why}`, details);
  };
  const records = batch.records ?? [];
  const volumes = batch.volumeUuids?.length ?? 0;
  if (records.length > limits.batchRecordsMax) bad('too many records', { records: records.length });
  let storedTotal = 0;
  let plainTotal = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!;
    const { kind, codec, length, storedLength: stored, volumeIndex, offset } = r;
    const where = { record: i, kind, codec, length, storedLength: stored };
    if (!isU32(kind) || kind < Kind.WRITE || kind > Kind.STAGE_COMMIT) bad('bad record kind', where);
    if (codec !== RecordCodec.RAW && codec !== RecordCodec.LZ4) bad('bad record codec', where);
    if (!isU32(length) || !isU32(stored) || !isU32(volumeIndex)) bad('bad record field', where);
    if (!Number.isSafeInteger(offset) || offset < 0) bad('bad record offset', where);
    if (volumeIndex >= volumes) bad('volume index out of range', { ...where, volumeIndex, volumes });
    if (carriesData(kind)) {
      if (length === 0 || length > limits.recordBytesMax) bad('bad WRITE length', where);
      if (codec === RecordCodec.RAW && stored !== length) bad('RAW stored length differs from length', where);
      if (codec === RecordCodec.LZ4 && (stored === 0 || stored > lz4EncodeBound(length))) bad('bad LZ4 stored length', where);
      plainTotal += length;
    } else if (stored !== 0 || codec !== RecordCodec.RAW) {
      bad('TRIM/ZERO/BARRIER record carries a payload', where);
    }
    storedTotal += stored;
  }
  if (storedTotal !== payloadLength) bad('stored lengths do not add up to the payload', { storedTotal, payloadLength });
  if (plainTotal > batchPlainBytesMax) {
    throw vrgError(ErrorCode.FRAME_TOO_LARGE, 'WriteBatch declares too many plain bytes', { plainTotal, max: batchPlainBytesMax });
  }
  return plainTotal;
}

function isU32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
}

/**
 * The plain bytes a WRITE_BATCH frame's header declares, read before the frame is authenticated: only to size
 * the block its data is decompressed into (openBatch checks everything again). 0 when undecodable or over
 * batchPlainBytesMax (the worker then refuses the frame, or builds its data in a buffer of its own).
 */
export function declaredPlainBytes(header: Uint8Array): number {
  let records: Array<{ kind: number; length: number }>;
  try {
    records = peekWriteBatchRecords(header);
  } catch {
    return 0;
  }
  let plain = 0;
  for (const r of records) if (carriesData(r.kind) && Number.isSafeInteger(r.length) && r.length > 0) plain += r.length;
  return plain <= batchPlainBytesMax ? plain : 0;
}

/**
 * Bytes a sealed frame of a batch may need: its stored payload (compression never grows it), prefix and tag, and
 * the encoded WriteBatch header at its largest: per record at most 6 varint fields (≤ 10 bytes each with their
 * tags, the offset's 11) and a 3-byte length prefix; the VM and volume UUIDs (≤ 40 bytes each with tag and length).
 */
export function shipBoundBytes(payloadBytes: number, records: number = limits.batchRecordsMax, volumes: number = limits.volumesPerVmMax): number {
  const headerBytes = Math.min(frameHeaderBytesMax, 64 + 70 * records + 40 * (volumes + 1));
  return payloadBytes + FRAME_OVERHEAD_BYTES + headerBytes;
}

/**
 * Decompresses the (validated) WRITE records of `payload` into one buffer of `plainTotal` bytes: the start of
 * `into` when it is large enough, else a buffer of its own.
 */
function decompressRecords(batch: WriteBatch, payload: Buffer, plainTotal: number, into?: Buffer): Buffer {
  const out = into && into.length >= plainTotal ? into.subarray(0, plainTotal) : Buffer.allocUnsafeSlow(plainTotal);
  let inPos = 0;
  let outPos = 0;
  for (const [i, r] of (batch.records ?? []).entries()) {
    const stored = payload.subarray(inPos, inPos + r.storedLength);
    inPos += r.storedLength;
    if (!carriesData(r.kind)) continue;
    const dst = out.subarray(outPos, outPos + r.length);
    outPos += r.length;
    if (r.codec === RecordCodec.RAW) {
      dst.set(stored);
      continue;
    }
    const n = lz4Decode(stored, dst);
    if (n < 0 || n !== r.length) {
      throw vrgError(ErrorCode.DECOMPRESS_FAILED, 'LZ4 record does not decode to its declared length', {
        record: i, declared: r.length, decoded: n,
      });
    }
  }
  return out;
}

/**
 * DR side: parse, authenticate and decrypt (openFrame, before anything else touches the payload), decode and
 * validate the WriteBatch header, then decompress each WRITE record into a buffer bounded by its declared length.
 */
export function openBatch(keys: DirectionKeys, expectedSeq: number, frameBytes: Buffer, into?: Buffer): Timed<{ batch: WriteBatch; data: Buffer }> {
  const t0 = now();
  const raw = parseFrame(frameBytes); // exactly one complete frame, views into frameBytes
  // The plaintext is a temporary: decompressRecords copies every record out of it before this returns.
  const { header, payload } = openFrame(raw, keys, expectedSeq, openScratchOf(raw.payload.length));
  if (raw.type !== FrameType.WRITE_BATCH) {
    throw vrgError(ErrorCode.FRAME_UNEXPECTED, 'not a WRITE_BATCH frame', { type: raw.type });
  }
  const batch = plainBatch(decodeHeader(header));
  const plainTotal = validateBatch(batch, payload.length);
  const t1 = now();
  const data = decompressRecords(batch, payload, plainTotal, into);
  const samples: StageSample[] = [
    { stage: 'open', bytesIn: frameBytes.length, bytesOut: payload.length, ns: Number(t1 - t0) },
    { stage: 'decompress', bytesIn: payload.length, bytesOut: data.length, ns: since(t1) },
  ];
  return { value: { batch, data }, samples };
}
