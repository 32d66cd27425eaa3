import { crc32 as zlibCrc32 } from 'node:zlib';

// CRC-32 (zlib's, SIMD-accelerated) over journal records and state files. Chained: crc32(b, crc32(a)).
export function crc32(data: Uint8Array, seed = 0): number {
  return zlibCrc32(data, seed) >>> 0;
}
