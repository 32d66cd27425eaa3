import { createRequire } from 'node:module';
import { assert } from '../core/assert.js';

// npm `lz4` 0.6.5: its block functions are the native NAN binding (build/Release/lz4.node, LZ4 1.9.x, worker-safe).
// encodeBlock(input, output) → compressed size, 0 when it does not fit in `output`.
// decodeBlock(input, output) → bytes written, negative on corrupt input (LZ4_decompress_safe, bounded by output).
// Only whole Buffers are passed (never start/end indexes).

interface Lz4Module {
  encodeBlock(input: Buffer, output: Buffer): number;
  decodeBlock(input: Buffer, output: Buffer): number;
  encodeBound(size: number): number;
}

const require = createRequire(import.meta.url);
const lz4 = require('lz4') as Lz4Module;

/** Absolute path of the native binding the block functions come from. */
export const lz4BindingPath: string = require.resolve('lz4/build/Release/lz4.node');

const binding = require(lz4BindingPath) as { compress: unknown; uncompress: unknown };
assert(lz4.encodeBlock === binding.compress && lz4.decodeBlock === binding.uncompress,
  'lz4 block functions must be the native binding');

export function lz4EncodeBound(size: number): number {
  return lz4.encodeBound(size);
}

/** Compresses `input` into `output`; 0 when the result does not fit. Never call with empty buffers. */
export function lz4Encode(input: Buffer, output: Buffer): number {
  return lz4.encodeBlock(input, output);
}

/** Decodes `input` into `output` (bounded by output.length); negative on corrupt input. */
export function lz4Decode(input: Buffer, output: Buffer): number {
  return lz4.decodeBlock(input, output);
}

/** True when the block functions are native code (not the pure-JS fallback). */
export function lz4IsNative(): boolean {
  return Function.prototype.toString.call(lz4.encodeBlock).includes('[native code]');
}
