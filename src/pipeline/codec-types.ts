import type { DirectionKeys } from '../protocol/frame.js';
import type { WriteBatch } from '../protocol/messages.js';

// Codec types and per-stage statistics. The codec turns journal records into sealed WRITE_BATCH frames and back (see docs/contracts.md).
// InlineCodec runs on the calling thread; PoolCodec runs the same pure functions (codec-ops.ts) on piscina workers.

export const RecordCodec = { RAW: 0, LZ4: 1 } as const;

export interface CompressInput {
  /** Records back to back; record i covers `lengths[i]` bytes. */
  data: Buffer;
  lengths: number[];
}

export interface CompressResult {
  /** Each record's stored bytes back to back (LZ4 block or the raw bytes). Owns its ArrayBuffer. */
  stored: Buffer;
  storedLengths: number[];
  /** RecordCodec per record. */
  codecs: number[];
}

export interface SealTask {
  keys: DirectionKeys;
  seq: number;
  header: Uint8Array;
  payload: Buffer;
  encrypt: boolean;
}

/** A batch of journal records to compress (RAW data records, when `compress`) and seal in one task. */
export interface ShipTask {
  keys: DirectionKeys;
  seq: number;
  /**
   * Records as journaled: storedLength bytes each in `payload`, back to back; or, to a codec that `takesParts`,
   * one buffer per record (read in the call: they may be the journal cache's, reused once trimmed).
   */
  batch: WriteBatch;
  payload: Buffer | readonly Buffer[];
  encrypt: boolean;
  compress: boolean;
  /**
   * A pooled block to build the frame in (shipBoundBytes(payload.length) long; with PoolCodec a view of a
   * SharedArrayBuffer ring, as `payload` may be). The result's frame is then a view of it.
   */
  into?: Buffer;
}

export interface ShipResult {
  frame: Buffer;
  /** The records' stored bytes in the frame (after compression). */
  storedBytes: number;
}

export interface OpenTask {
  keys: DirectionKeys;
  expectedSeq: number;
  frame: Buffer;
  /** A pooled block for the plain data (used when the batch's plain bytes fit in it). */
  into?: Buffer;
}

export interface OpenResult {
  batch: WriteBatch;
  /** Plain bytes of the WRITE records, concatenated in order: a view of `into`, or a buffer owning its ArrayBuffer. */
  data: Buffer;
}

export interface Codec {
  compressRecords(input: CompressInput, compress: boolean): Promise<CompressResult>;
  sealBatch(t: SealTask): Promise<Buffer>;
  shipBatch(t: ShipTask): Promise<ShipResult>;
  /** shipBatch takes a batch's payload as one buffer per record, read before it returns (no copy to assemble it). */
  readonly takesParts: boolean;
  openBatch(t: OpenTask): Promise<OpenResult>;
  close(): Promise<void>;
}

// ---- per-stage statistics ----

export const STAGES = ['compress', 'seal', 'open', 'decompress'] as const;
export type Stage = (typeof STAGES)[number];

/** One measurement taken inside an operation (on whichever thread ran it). */
export interface StageSample {
  stage: Stage;
  bytesIn: number;
  bytesOut: number;
  ns: number;
}

export interface StageStats {
  calls: number;
  bytesIn: number;
  bytesOut: number;
  /** Thread time spent in the stage, summed over all threads. */
  busyNs: number;
}

export type CodecStats = Record<Stage, StageStats>;

export class StatsAccumulator {
  private readonly stages: CodecStats = emptyStats();

  add(samples: readonly StageSample[]): void {
    for (const s of samples) {
      const st = this.stages[s.stage];
      st.calls += 1;
      st.bytesIn += s.bytesIn;
      st.bytesOut += s.bytesOut;
      st.busyNs += s.ns;
    }
  }

  snapshot(): CodecStats {
    const out = emptyStats();
    for (const stage of STAGES) Object.assign(out[stage], this.stages[stage]);
    return out;
  }
}

function emptyStats(): CodecStats {
  const mk = (): StageStats => ({ calls: 0, bytesIn: 0, bytesOut: 0, busyNs: 0 });
  return { compress: mk(), seal: mk(), open: mk(), decompress: mk() };
}
