import { fdatasync, writev } from 'node:fs';
import type { Socket } from 'node:net';

// File and socket plumbing of the floor program: positional gathered writes and fdatasync as promises (libuv
// thread pool, which /proc counts in the process's CPU), and a socket reader that pauses when it runs out of
// preallocated buffers.

/** pwritev of `buffers` at `position`; libuv loops over short writes and IOV_MAX, so anything less is an error. */
export function pwritevAll(fd: number, buffers: Buffer[], position: number): Promise<void> {
  const want = buffers.reduce((n, b) => n + b.length, 0);
  return new Promise((resolve, reject) => {
    writev(fd, buffers, position, (err, written) => {
      if (err) reject(err);
      else if (written !== want) reject(new Error(`short pwritev: ${written} of ${want} bytes`));
      else resolve();
    });
  });
}

export function fdatasyncAsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

/** A parser over socket chunks that may stall (out of buffers): feed() returns how far it got. */
export interface StallableReader {
  feed(chunk: Buffer, at: number): number;
  /** True when the reader stopped because it needs a buffer that is not free yet. */
  readonly stalled: boolean;
}

/**
 * Feeds `socket`'s chunks to `reader`; when the reader stalls, keeps the unread rest and pauses the socket.
 * Call wake() whenever buffers are freed. Chunks are Node's own (fresh per read), so keeping a view is safe.
 * push() feeds bytes read before the reader took over (the handshake's leftovers).
 */
export function readInto(socket: Socket, reader: StallableReader): { wake(): void; push(chunk: Buffer): void } {
  let rest: Buffer | null = null;
  const run = (chunk: Buffer): void => {
    const used = reader.feed(chunk, 0);
    if (used < chunk.length || reader.stalled) {
      if (!rest) socket.pause();
      rest = chunk.subarray(used);
    } else if (rest) {
      rest = null;
      socket.resume();
    }
  };
  const push = (chunk: Buffer): void => {
    // Only leftovers can arrive while stalled (the socket is paused): queue them behind the rest.
    if (rest) rest = Buffer.concat([rest, chunk]);
    else run(chunk);
  };
  socket.on('data', push);
  return {
    wake(): void {
      if (rest) run(rest);
    },
    push,
  };
}
