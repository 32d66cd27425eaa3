// Public face of src/pipeline: the Codec contract (docs/contracts.md) and its two implementations.
export { RecordCodec, STAGES, StatsAccumulator } from './codec-types.js';
export type { Codec, CodecStats, CompressInput, CompressResult, OpenResult, OpenTask, SealTask, Stage, StageSample,
  StageStats } from './codec-types.js';
export { InlineCodec } from './inline-codec.js';
export { PoolCodec, codecWorkerFilename, type PoolCodecOptions } from './pool-codec.js';
export { batchPlainBytesMax, declaredPlainBytes, shipBoundBytes } from './codec-ops.js';

import type { Codec, CodecStats } from './codec-types.js';
import { InlineCodec } from './inline-codec.js';
import { PoolCodec } from './pool-codec.js';

/**
 * The gateway's codec for config.codecThreads: that many piscina workers, or 0 for the event loop's own thread
 * (no hand-off between threads: on a small host with a busy link the cheaper choice, at the cost of the loop
 * being busy for each batch's compression and encryption).
 */
export function gatewayCodec(threads: number): Codec & { stats(): CodecStats } {
  // Every input the engine hands the pool is a fresh buffer it never touches again: move, do not copy.
  return threads === 0 ? new InlineCodec() : new PoolCodec({ threads, transferInputs: true });
}
