import { writevSync } from 'node:fs';
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

/**
 * Page-cache writes up to this many bytes are made on the calling thread. A write through libuv's pool costs two
 * thread wake-ups, more CPU than the copy itself on this kind of machine (measured: a 64 KiB pwrite 12 µs of CPU
 * inline, 28 µs through the pool; 4 KiB 3 against 12). 4 MiB takes the journal groups, source writes and DR's
 * apply chunks (drApplyChunkBytes) and blocks the event loop under a millisecond over cached pages; larger ones
 * stay on the pool, where they do not delay a Sync frame's receipt.
 * Reads and fdatasync stay on the pool: they may wait for the disk.
 */
const inlineWriteBytesMax = 4 * 1024 * 1024;

/**
 * Writes all of `bufs` at `position` of a file node opened (it has an fd): on the calling thread up to
 * inlineWriteBytesMax, through libuv's pool beyond. Resolves to the bytes written; rejects with node's fs errors.
 */
export async function writeAt(fh: FileHandleLike & { fd: number }, bufs: Uint8Array[], position: number): Promise<number> {
  let total = 0;
  for (const b of bufs) total += b.byteLength;
  return total <= inlineWriteBytesMax ? writeFullySync(fh.fd, bufs, position) : writeFully(fh, bufs, position);
}

/**
 * Bytes per pwritev of a page-cache write. The kernel sizes a new page-cache folio by the write that creates it,
 * and ext4 walks every block of a folio on each later write into it (ext4_block_write_begin; mpage writeback
 * likewise): 4 KiB random overwrites of a file written 1-4 MiB at a time spent a quarter of each gateway's CPU
 * there (rand4k, whole-volume warm-up). 64 KiB keeps folios small for 1-3 % more CPU on sequential overwrites.
 */
const syscallWriteBytesMax = 64 * 1024;

/** writeFully on the calling thread, for a file descriptor, at most syscallWriteBytesMax per call. */
function writeFullySync(fd: number, bufs: Uint8Array[], position: number): number {
  let total = 0;
  for (const b of bufs) total += b.byteLength;
  let done = 0;
  let rest = bufs;
  while (done < total) {
    const part = takeBytes(rest, syscallWriteBytesMax);
    const bytesWritten = writevSync(fd, part, position + done);
    assert(bytesWritten > 0, 'writev made progress');
    done += bytesWritten;
    if (done < total) rest = skipBytes(rest, bytesWritten);
  }
  return total;
}

/** The first `n` bytes of `bufs` (all of them when shorter), as views. */
function takeBytes(bufs: Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let left = n;
  for (let i = 0; i < bufs.length && left > 0; i++) {
    const b = bufs[i]!;
    out.push(b.byteLength <= left ? b : b.subarray(0, left));
    left -= Math.min(left, b.byteLength);
  }
  return out;
}

function skipBytes(bufs: Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  let left = n;
  while (i < bufs.length && left >= bufs[i]!.byteLength) left -= bufs[i++]!.byteLength;
  const out = bufs.slice(i);
  if (left > 0 && out.length > 0) out[0] = out[0]!.subarray(left);
  return out;
}

