import { assert } from './assert.js';
import type { FileHandleLike } from './files.js';

/** Positional writev of all of `bufs`, continuing after short writes. */
export async function writeFully(fh: FileHandleLike, bufs: Uint8Array[], position: number): Promise<number> {
  let total = 0;
  for (const b of bufs) total += b.byteLength;
  let done = 0;
  let rest = bufs;
  while (done < total) {
    const { bytesWritten } = await fh.writev(rest, position + done);
    assert(bytesWritten > 0, 'writev made progress');
    done += bytesWritten;
    if (done < total) rest = skipBytes(rest, bytesWritten);
  }
  return total;
}

function skipBytes(bufs: Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  let left = n;
  while (i < bufs.length && left >= bufs[i]!.byteLength) left -= bufs[i++]!.byteLength;
  const out = bufs.slice(i);
  if (left > 0 && out.length > 0) out[0] = out[0]!.subarray(left);
  return out;
}

