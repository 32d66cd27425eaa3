// Public face of src/pipeline: the Codec contract (docs/contracts.md) and its two implementations.
export { RecordCodec, STAGES, StatsAccumulator } from './codec-types.js';
export type { Codec, CodecStats, CompressInput, CompressResult, OpenResult, OpenTask, SealTask, Stage, StageSample,
  StageStats } from './codec-types.js';
export { InlineCodec } from './inline-codec.js';
export { PoolCodec, codecWorkerFilename, type PoolCodecOptions } from './pool-codec.js';
export { batchPlainBytesMax, declaredPlainBytes, shipBoundBytes } from './codec-ops.js';
