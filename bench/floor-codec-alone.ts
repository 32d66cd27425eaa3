import { randomBytes } from 'node:crypto';
import {
  BATCH_BYTES, BATCH_RAW_BYTES_MAX, RECORD_BYTES_MAX, fillHalfCompressible, openFrame, packCompressed,
  sealFrame, stageBytesFor, unpackCompressed, type FloorKeys, type RecordRef,
} from './floor-codec.js';

// The pure codec floor: one process, its main thread only, the floor frame codec over `bytes` of
// 50%-compressible 64 KiB records held in memory (far bigger than any CPU cache): LZ4 + seal every 1 MiB
// batch, keep the sealed frames, then open + LZ4-decode them all. Each step's CPU (process.cpuUsage: every
// thread of the process) is summed separately; generating and checking the data are outside the sums.

export interface CodecAloneConfig { role: 'codec'; bytes: number }

export interface CodecAloneResult {
  bytes: number;
  /** plain bytes / (table + data) bytes. */
  ratio: number;
  cpuSeconds: { lz4Compress: number; seal: number; open: number; lz4Decompress: number };
  wallSeconds: { compressSeal: number; openDecompress: number };
  /** Every decoded record equals its original. */
  verified: boolean;
}

/** 16 records of 64 KiB: the batch floor-production builds from fio's 64 KiB writes. */
const recordsPerBatch = BATCH_BYTES / RECORD_BYTES_MAX;

/** CPU-seconds spent in `fn` (user + system, whole process). */
function cpuOf(fn: () => void): number {
  const before = process.cpuUsage();
  fn();
  const d = process.cpuUsage(before);
  return (d.user + d.system) / 1e6;
}

function batchRecords(data: Buffer, batch: number): RecordRef[] {
  const records: RecordRef[] = [];
  for (let i = 0; i < recordsPerBatch; i++) {
    const offset = (batch * recordsPerBatch + i) * RECORD_BYTES_MAX;
    records.push({ offset, bytes: data.subarray(offset, offset + RECORD_BYTES_MAX) });
  }
  return records;
}

export function runCodecAlone(cfg: CodecAloneConfig): CodecAloneResult {
  const keys: FloorKeys = { key: randomBytes(16), salt: randomBytes(4) };
  const batches = Math.floor(cfg.bytes / (recordsPerBatch * RECORD_BYTES_MAX));
  const data = Buffer.allocUnsafeSlow(batches * recordsPerBatch * RECORD_BYTES_MAX);
  fillHalfCompressible(data);
  const stage = Buffer.allocUnsafeSlow(stageBytesFor(recordsPerBatch, RECORD_BYTES_MAX));
  const iv = Buffer.alloc(12);
  const cpu = { lz4Compress: 0, seal: 0, open: 0, lz4Decompress: 0 };
  const frames: Buffer[][] = [];
  let stored = 0;
  let t0 = performance.now();
  for (let b = 0; b < batches; b++) {
    const records = batchRecords(data, b);
    let used = 0;
    cpu.lz4Compress += cpuOf(() => (used = packCompressed(records, stage).usedBytes));
    cpu.seal += cpuOf(() => frames.push(sealFrame(stage, used, records.length, b, keys, iv)));
    stored += used;
  }
  const compressSeal = (performance.now() - t0) / 1000;
  const out = Buffer.allocUnsafeSlow(BATCH_RAW_BYTES_MAX);
  let verified = true;
  let openDecompress = 0;
  for (let b = 0; b < batches; b++) {
    const [prefix, body, tag] = frames[b] as [Buffer, Buffer, Buffer];
    let plain: Buffer = Buffer.alloc(0);
    let records: RecordRef[] = [];
    t0 = performance.now();
    cpu.open += cpuOf(() => (plain = openFrame(prefix, body, tag, b, keys, iv)));
    cpu.lz4Decompress += cpuOf(() => (records = unpackCompressed(plain, prefix.readUInt32BE(4), out)));
    openDecompress += performance.now() - t0;
    verified &&= records.every((r) => r.bytes.equals(data.subarray(r.offset, r.offset + r.bytes.length)));
  }
  return { bytes: data.length, ratio: data.length / stored, cpuSeconds: cpu, wallSeconds: { compressSeal, openDecompress: openDecompress / 1000 }, verified };
}
