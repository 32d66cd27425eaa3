import { crc32, crc32c } from '../core/checksum.js';
import { limits } from '../core/limits.js';

// RESYNC: the current content of a region read from the source volume by a CBT resync or a consistency
// check repair (not a VM write: never replayed onto the source). STAGE_BEGIN / STAGE_COMMIT bracket records
// the DR side stages and commits atomically (a CBT resync pass, a SnapshotsOnly snapshot).
export const RecordKind = { WRITE: 1, TRIM: 2, ZERO: 3, BARRIER: 4, RESYNC: 5, STAGE_BEGIN: 6, STAGE_COMMIT: 7 } as const;
export const RECORD_KIND_MAX = RecordKind.STAGE_COMMIT;

/** The kinds whose records carry the written bytes as payload. */
export function carriesData(kind: number): boolean {
  return kind === RecordKind.WRITE || kind === RecordKind.RESYNC;
}

export interface JournalRecordInput {
  volumeIndex: number;
  offset: number;
  length: number;
  kind: number;
  codec: number;
  payload: Buffer;
}

export interface JournalRecord extends JournalRecordInput {
  seq: number;
  timestampMs: number;
}

// On-disk record (all integers little-endian). A segment file is a plain sequence of records, no file header;
// its name (seg-<first seq, 16 digits>.vrgj) carries the seq of its first record.
//
//  0  u32 magic          the record format: 0x4B475256 ("VRGK", version 2: CRC32C, written now) or
//                        0x4A475256 ("VRGJ", version 1: zlib CRC-32, still read, so an old journal replays)
//  4  u32 crc            CRC32C (v2) / CRC-32 (v1) chained over bytes [8, 48) of this header, then over the
//                        payload; computed before the write, checked again on replay and on every read-back
//  8  u64 seq            consecutive across the journal, first record is 1
// 16  u64 timestampMs    wall-clock time of the append
// 24  u64 offset         byte offset in the volume
// 32  u64 length         bytes of the volume covered (WRITE: uncompressed length)
// 40  u32 payloadLength  stored payload bytes that follow (≤ PAYLOAD_BYTES_MAX)
// 44  u16 volumeIndex
// 46  u8  kind           RecordKind
// 47  u8  codec          RecordCodec of the payload (RAW 0, LZ4 1)
// 48  payload            payloadLength bytes
/** Version 2 records (CRC32C, hardware-accelerated): what the journal writes. */
export const RECORD_MAGIC = 0x4b475256;
/** Version 1 records (zlib CRC-32): journals written before version 2, read and replayed. */
export const RECORD_MAGIC_V1 = 0x4a475256;
export const HEADER_BYTES = 48;
/** Largest payload accepted on replay: the append limit plus headroom for an incompressible codec frame. */
export const PAYLOAD_BYTES_MAX = limits.recordBytesMax + 64 * 1024;

const TWO_32 = 0x1_0000_0000;

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32LE(value % TWO_32, at);
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4);
}

function readU64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32LE(at + 4);
  // Above 2^53 the value is not exact; sanity checks reject it as not a safe integer.
  return hi * TWO_32 + buf.readUInt32LE(at);
}

/** Fills the header at `at` (HEADER_BYTES) for `rec` and stores its CRC (header fields + payload). */
export function encodeHeader(buf: Buffer, at: number, seq: number, timestampMs: number, rec: JournalRecordInput): void {
  buf.writeUInt32LE(RECORD_MAGIC, at);
  writeU64(buf, seq, at + 8);
  writeU64(buf, timestampMs, at + 16);
  writeU64(buf, rec.offset, at + 24);
  writeU64(buf, rec.length, at + 32);
  buf.writeUInt32LE(rec.payload.length, at + 40);
  buf.writeUInt16LE(rec.volumeIndex, at + 44);
  buf[at + 46] = rec.kind;
  buf[at + 47] = rec.codec;
  const crc = crc32c(rec.payload, crc32c(buf.subarray(at + 8, at + HEADER_BYTES)));
  buf.writeUInt32LE(crc, at + 4);
}

export interface RecordHeader {
  /** 2: CRC32C; 1: zlib CRC-32 (older journals). */
  version: 1 | 2;
  crc: number;
  seq: number;
  timestampMs: number;
  offset: number;
  length: number;
  payloadLength: number;
  volumeIndex: number;
  kind: number;
  codec: number;
}

/** Decodes a header; returns a reason string when it is not a plausible record header. */
export function decodeHeader(buf: Buffer, at: number): RecordHeader | string {
  const magic = buf.readUInt32LE(at);
  if (magic !== RECORD_MAGIC && magic !== RECORD_MAGIC_V1) return 'bad magic';
  const h: RecordHeader = {
    version: magic === RECORD_MAGIC ? 2 : 1,
    crc: buf.readUInt32LE(at + 4),
    seq: readU64(buf, at + 8),
    timestampMs: readU64(buf, at + 16),
    offset: readU64(buf, at + 24),
    length: readU64(buf, at + 32),
    payloadLength: buf.readUInt32LE(at + 40),
    volumeIndex: buf.readUInt16LE(at + 44),
    kind: buf[at + 46]!,
    codec: buf[at + 47]!,
  };
  if (h.seq < 1 || !Number.isSafeInteger(h.seq)) return 'bad seq';
  if (!Number.isSafeInteger(h.timestampMs) || !Number.isSafeInteger(h.offset + h.length)) return 'bad field';
  if (h.kind < RecordKind.WRITE || h.kind > RECORD_KIND_MAX) return 'bad kind';
  if (h.payloadLength > PAYLOAD_BYTES_MAX) return 'bad payload length';
  return h;
}

/** True when the CRC stored in the header matches the header fields and the payload. */
export function crcMatches(buf: Buffer, at: number, h: RecordHeader): boolean {
  const crc = h.version === 2 ? crc32c : crc32;
  const headerCrc = crc(buf.subarray(at + 8, at + HEADER_BYTES));
  const payloadStart = at + HEADER_BYTES;
  return crc(buf.subarray(payloadStart, payloadStart + h.payloadLength), headerCrc) === h.crc;
}

export function toRecord(h: RecordHeader, payload: Buffer): JournalRecord {
  return {
    seq: h.seq,
    timestampMs: h.timestampMs,
    volumeIndex: h.volumeIndex,
    offset: h.offset,
    length: h.length,
    kind: h.kind,
    codec: h.codec,
    payload,
  };
}
