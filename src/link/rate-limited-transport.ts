import { Duplex } from 'node:stream';
import { systemClock, type Clock } from '../core/clock.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { Transport } from './transport.js';

// A bandwidth cap on the link (SPEC §2.5 "bandwidth limit option"): what the connecting side sends is
// paced to `bytesPerSec`. Each chunk is held until the bytes before it have had their time on the wire,
// so the backpressure reaches the shipper's window as it would on a slow WAN link.

export const rateBytesPerSecMin = 64 * 1024;

export function rateLimitedTransport(inner: Transport, bytesPerSec: number, clock: Clock = systemClock): Transport {
  if (!Number.isFinite(bytesPerSec) || bytesPerSec < rateBytesPerSecMin) {
    throw vrgError(ErrorCode.CONFIG_INVALID, `link rate must be at least ${rateBytesPerSecMin} bytes/s`, { bytesPerSec });
  }
  return {
    connect: async (host, port) => paced(await inner.connect(host, port), bytesPerSec, clock),
    listen: (host, port, onConnection) => inner.listen(host, port, onConnection),
  };
}

function paced(sock: Duplex, bytesPerSec: number, clock: Clock): Duplex {
  let freeAtMs = clock.nowMs();
  const d = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      const now = clock.nowMs();
      freeAtMs = Math.max(now, freeAtMs) + (chunk.byteLength * 1000) / bytesPerSec;
      clock.setTimer(Math.max(0, freeAtMs - now), () => {
        if (sock.destroyed) return cb(vrgError(ErrorCode.CONNECTION_CLOSED, 'link socket closed'));
        // Done only once the socket has written the chunk: the writer may reuse a pooled frame's memory then.
        sock.write(chunk, (err) => cb(err ?? null));
      });
    },
    read() {
      sock.resume();
    },
    final(cb) {
      sock.end();
      cb();
    },
    destroy(err, cb) {
      sock.destroy();
      cb(err);
    },
  });
  sock.on('data', (b: Buffer) => {
    if (!d.push(b)) sock.pause();
  });
  sock.once('end', () => d.push(null));
  sock.once('error', (err) => d.destroy(err));
  sock.once('close', () => d.destroy());
  return d;
}
