import { crc32c as nativeCrc32c } from '@node-rs/crc32';
import { crc32 as zlibCrc32 } from 'node:zlib';

// CRC-32 (zlib's) over state files and version 1 journal records; CRC32C (Castagnoli, SSE4.2 / ARMv8 crc
// instructions through @node-rs/crc32) over journal records from version 2 on, the data path's checksum.
// Both chain: crc(b, crc(a)) === crc(a ++ b).
export function crc32(data: Uint8Array, seed = 0): number {
  return zlibCrc32(data, seed) >>> 0;
}

export function crc32c(data: Uint8Array, seed = 0): number {
  return nativeCrc32c(data as Buffer, seed) >>> 0;
}
