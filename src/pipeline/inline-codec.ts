import { ErrorCode, vrgError } from '../core/errors.js';
import { StatsAccumulator, type Codec, type CodecStats, type CompressInput, type CompressResult, type OpenResult,
  type OpenTask, type SealTask, type ShipResult, type ShipTask } from './codec-types.js';
import * as ops from './codec-ops.js';

/** The codec on the calling thread (simulator, unit tests, single-core setups). */
export class InlineCodec implements Codec {
  readonly takesParts = true;
  private readonly acc = new StatsAccumulator();
  private closed = false;

  async compressRecords(input: CompressInput, compress: boolean): Promise<CompressResult> {
    this.checkOpen();
    const r = ops.compressRecords(input.data, input.lengths, compress);
    this.acc.add(r.samples);
    return r.value;
  }

  async sealBatch(t: SealTask): Promise<Buffer> {
    this.checkOpen();
    const r = ops.sealBatch(t.keys, t.seq, t.header, t.payload, t.encrypt);
    this.acc.add(r.samples);
    return r.value;
  }

  async shipBatch(t: ShipTask): Promise<ShipResult> {
    this.checkOpen();
    const r = ops.shipBatch(t.keys, t.seq, t.batch, t.payload, t.encrypt, t.compress, t.into);
    this.acc.add(r.samples);
    return r.value;
  }

  async openBatch(t: OpenTask): Promise<OpenResult> {
    this.checkOpen();
    const r = ops.openBatch(t.keys, t.expectedSeq, t.frame, t.into);
    this.acc.add(r.samples);
    return r.value;
  }

  stats(): CodecStats {
    return this.acc.snapshot();
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private checkOpen(): void {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, 'codec is closed');
  }
}
