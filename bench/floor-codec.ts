import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { nativeGcm } from '../src/protocol/gcm.js';
import { lz4Decode, lz4Encode, lz4EncodeBound } from '../src/pipeline/lz4-native.js';

// The floor program's codec and frame, shared by the inline path, the codec worker and the codec-alone run.
// Deliberately not the product's frame.ts: the floor is the least work that still compresses, encrypts and
// authenticates every byte, so it has no protobuf header and one AES-128-GCM pass per frame.
//
// Floor frame:
//  0  u32be bodyBytes  bytes after this field (12 + table + data + tag)
//  4  u32be count      records in the frame
//  8  u64be seq        0, 1, 2... per link; IV = 4-byte salt || u64be seq (never reused under one key)
// 16  table            count x { u64be offset, u32be rawBytes, u32be storedBytes }; stored == raw: kept raw
//     data             each record's stored bytes, in table order
//     tag              16 bytes, codec on only (AAD = bytes [0, 16); table and data are the ciphertext)
// Ack (DR -> production): u64be seq, cumulative: every frame up to seq is written and fdatasync'ed.

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const PREFIX_BYTES = 16;
export const ENTRY_BYTES = 16;
export const TAG_BYTES = 16;
export const ACK_BYTES = 8;

/** Largest NBD write (= slot size, advertised as the maximum block size). */
export const RECORD_BYTES_MAX = 64 * KiB;
/** A frame closes once it holds this many raw bytes, or BATCH_RECORDS_MAX records. */
export const BATCH_BYTES = 1 * MiB;
export const BATCH_RECORDS_MAX = 64;
/** Raw bytes of the largest batch: just under BATCH_BYTES plus one record. */
export const BATCH_RAW_BYTES_MAX = BATCH_BYTES + RECORD_BYTES_MAX;
/** Largest frame on the wire: records are stored raw when LZ4 does not shrink them, so data <= raw. */
export const FRAME_BYTES_MAX = PREFIX_BYTES + BATCH_RECORDS_MAX * ENTRY_BYTES + BATCH_RAW_BYTES_MAX + TAG_BYTES;

export interface FloorKeys { key: Buffer /* 16 */; salt: Buffer /* 4 */ }

/** One write: its volume offset and its bytes (a view into a slot, a frame or a decode buffer). */
export interface RecordRef { offset: number; bytes: Buffer }

export function writeU64(b: Buffer, value: number, at: number): void {
  b.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  b.writeUInt32BE(value % 0x1_0000_0000, at + 4);
}

export function readU64(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 0x1_0000_0000 + b.readUInt32BE(at + 4);
}

export function writePrefix(b: Buffer, bodyBytes: number, count: number, seq: number): void {
  b.writeUInt32BE(bodyBytes, 0);
  b.writeUInt32BE(count, 4);
  writeU64(b, seq, 8);
}

/** Stage bytes a batch of `count` records of up to `recordBytesMax` can need (LZ4's worst case per record). */
export function stageBytesFor(count: number, recordBytesMax: number): number {
  return count * (ENTRY_BYTES + lz4EncodeBound(recordBytesMax));
}

/** LZ4-compresses each record into `stage` as table + data (raw where LZ4 does not shrink it). */
export function packCompressed(records: readonly RecordRef[], stage: Buffer): { usedBytes: number; rawBytes: number } {
  let at = records.length * ENTRY_BYTES;
  let rawBytes = 0;
  records.forEach((r, i) => {
    const raw = r.bytes.length;
    const end = at + lz4EncodeBound(raw);
    if (end > stage.length) throw new Error(`stage of ${stage.length} bytes too small for the batch`);
    let stored = lz4Encode(r.bytes, stage.subarray(at, end));
    if (stored <= 0 || stored >= raw) stored = r.bytes.copy(stage, at); // incompressible: keep it raw
    writeEntry(stage, i, r.offset, raw, stored);
    at += stored;
    rawBytes += raw;
  });
  return { usedBytes: at, rawBytes };
}

function writeEntry(b: Buffer, i: number, offset: number, raw: number, stored: number): void {
  const at = i * ENTRY_BYTES;
  writeU64(b, offset, at);
  b.writeUInt32BE(raw, at + 8);
  b.writeUInt32BE(stored, at + 12);
}

/** Prefix + table of a no-codec frame; its data follows on the wire as the records' own buffers (never copied). */
export function rawTable(records: readonly RecordRef[], seq: number): Buffer {
  const head = Buffer.allocUnsafe(PREFIX_BYTES + records.length * ENTRY_BYTES);
  let dataBytes = 0;
  records.forEach((r, i) => {
    writeEntry(head.subarray(PREFIX_BYTES), i, r.offset, r.bytes.length, r.bytes.length);
    dataBytes += r.bytes.length;
  });
  writePrefix(head, head.length - 4 + dataBytes, records.length, seq);
  return head;
}

function ivFor(iv: Buffer, salt: Buffer, seq: number): Buffer {
  salt.copy(iv, 0, 0, 4);
  writeU64(iv, seq, 4);
  return iv;
}

/**
 * Seals stage[0, usedBytes) as frame `seq`: the wire buffers prefix, ciphertext, tag. The ciphertext is the one
 * fresh buffer per frame (sent as is, never copied); the addon's GCM writes it without zero-filling it first,
 * as VRG's frames are sealed (node:crypto's update() when the addon is not built).
 */
export function sealFrame(stage: Buffer, usedBytes: number, count: number, seq: number, keys: FloorKeys, iv: Buffer): Buffer[] {
  const prefix = Buffer.allocUnsafe(PREFIX_BYTES);
  writePrefix(prefix, PREFIX_BYTES - 4 + usedBytes + TAG_BYTES, count, seq);
  if (nativeGcm) {
    const ciphertext = Buffer.allocUnsafeSlow(usedBytes);
    const tag = Buffer.allocUnsafe(TAG_BYTES);
    nativeGcm.gcmSeal(keys.key, ivFor(iv, keys.salt, seq), prefix, stage.subarray(0, usedBytes), ciphertext, tag);
    return [prefix, ciphertext, tag];
  }
  const cipher = createCipheriv('aes-128-gcm', keys.key, ivFor(iv, keys.salt, seq), { authTagLength: TAG_BYTES });
  cipher.setAAD(prefix);
  const ciphertext = cipher.update(stage.subarray(0, usedBytes));
  cipher.final();
  return [prefix, ciphertext, cipher.getAuthTag()];
}

/** Authenticates and decrypts a frame given as its prefix, body and tag (the addon: in place); throws on a bad tag or seq. */
export function openFrame(prefix: Buffer, body: Buffer, tag: Buffer, seq: number, keys: FloorKeys, iv: Buffer): Buffer {
  const got = readU64(prefix, 8);
  if (got !== seq) throw new Error(`frame seq ${got}, expected ${seq}`);
  if (nativeGcm) {
    if (!nativeGcm.gcmOpen(keys.key, ivFor(iv, keys.salt, seq), prefix, body, body, tag)) throw new Error(`frame ${seq} failed authentication`);
    return body;
  }
  const decipher = createDecipheriv('aes-128-gcm', keys.key, ivFor(iv, keys.salt, seq), { authTagLength: TAG_BYTES });
  decipher.setAAD(prefix);
  decipher.setAuthTag(tag);
  const plain = decipher.update(body);
  decipher.final(); // throws when the tag does not match: nothing of `plain` is used before this
  return plain;
}

/** Decodes table + data (`count` records) into `out`, back to back; the records are views of `out`. */
export function unpackCompressed(body: Buffer, count: number, out: Buffer): RecordRef[] {
  const records: RecordRef[] = [];
  let from = count * ENTRY_BYTES;
  let to = 0;
  for (let i = 0; i < count; i++) {
    const offset = readU64(body, i * ENTRY_BYTES);
    const raw = body.readUInt32BE(i * ENTRY_BYTES + 8);
    const stored = body.readUInt32BE(i * ENTRY_BYTES + 12);
    const dst = out.subarray(to, to + raw);
    if (stored === raw) body.copy(dst, 0, from, from + raw);
    else if (lz4Decode(body.subarray(from, from + stored), dst) !== raw) throw new Error(`record ${i}: LZ4 decode failed`);
    records.push({ offset, bytes: dst });
    from += stored;
    to += raw;
  }
  return records;
}

/** Records of a no-codec frame body: views of the body itself (nothing to decode). */
export function rawRecords(body: Buffer, count: number): RecordRef[] {
  const records: RecordRef[] = [];
  let from = count * ENTRY_BYTES;
  for (let i = 0; i < count; i++) {
    const raw = body.readUInt32BE(i * ENTRY_BYTES + 8);
    records.push({ offset: readU64(body, i * ENTRY_BYTES), bytes: body.subarray(from, from + raw) });
    from += raw;
  }
  return records;
}

/**
 * Fills `b` like fio 3.33 with buffer_compress_percentage=50 (buffer_compress_chunk 512, checked on this
 * machine's fio output): every 512-byte segment is 256 random bytes then 256 zero bytes.
 */
export function fillHalfCompressible(b: Buffer): void {
  randomFillSync(b);
  for (let at = 256; at < b.length; at += 512) b.fill(0, at, Math.min(at + 256, b.length));
}

/** Share of the 512-byte segments of `b` whose second half is all zeros (1.0 for fio's 50% buffers). */
export function zeroHalfShare(b: Buffer): number {
  let hits = 0;
  let segments = 0;
  for (let at = 0; at + 512 <= b.length; at += 512) {
    segments++;
    if (b.subarray(at + 256, at + 512).every((x) => x === 0)) hits++;
  }
  return segments > 0 ? hits / segments : 0;
}

/** Coalesces records whose offsets follow each other into runs (one pwritev each). */
export function contiguousRuns(records: readonly RecordRef[]): Array<{ offset: number; buffers: Buffer[] }> {
  const runs: Array<{ offset: number; buffers: Buffer[]; end: number }> = [];
  for (const r of records) {
    const last = runs[runs.length - 1];
    if (last && last.end === r.offset) last.buffers.push(r.bytes);
    else runs.push({ offset: r.offset, buffers: [r.bytes], end: r.offset });
    runs[runs.length - 1]!.end += r.bytes.length;
  }
  return runs;
}
