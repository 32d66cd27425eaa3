import { crc32c as nodeRsCrc32c } from '@node-rs/crc32';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { loadAddon } from './native-addon.js';

// CRC-32 (zlib's) over state files and version 1 journal records; CRC32C (Castagnoli) over journal records from
// version 2 on, the data path's checksum. Both chain: crc(b, crc(a)) === crc(a ++ b).
//
// CRC32C comes from the project's addon where it is built (x86-64 with SSE4.2: three interleaved streams of the
// crc32 instruction, 22.7 GB/s on 1 MiB here), else from @node-rs/crc32 (5.0 GB/s here), with the same values.
// Every journal byte is checksummed when it is appended and again when it is read back or replayed.

type Crc32cFn = (data: Uint8Array, seed: number) => number;

/** Picks the CRC32C implementation afresh (the module-level one is this, evaluated once with process.env). */
export function loadCrc32c(env: NodeJS.ProcessEnv = process.env): { fn: Crc32cFn; source: 'addon' | '@node-rs/crc32' } {
  const { addon } = loadAddon(['crc32c'], env);
  if (addon) return { fn: addon.crc32c as Crc32cFn, source: 'addon' };
  return { fn: (data, seed) => nodeRsCrc32c(data as Buffer, seed), source: '@node-rs/crc32' };
}

const loaded = loadCrc32c();
const crc32cFn = loaded.fn;

/** Where CRC32C is computed in this process. */
export const crc32cSource = loaded.source;

export function crc32(data: Uint8Array, seed = 0): number {
  return zlibCrc32(data, seed) >>> 0;
}

export function crc32c(data: Uint8Array, seed = 0): number {
  return crc32cFn(data, seed) >>> 0;
}
