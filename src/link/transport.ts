import { createConnection, createServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { systemClock, type Clock } from '../core/clock.js';
import { ErrorCode, vrgError } from '../core/errors.js';

// The network, injected: the link code only sees Duplex streams, so a simulator can substitute
// in-memory pipes for TCP.

export interface Listener {
  port: number;
  /** Stops listening and destroys the sockets this listener accepted that are still open. */
  close(): Promise<void>;
}

export interface Transport {
  /** Rejects on failure (VRG_CONNECTION_CLOSED with the system error as cause, or VRG_TIMEOUT). */
  connect(host: string, port: number): Promise<Duplex>;
  listen(host: string, port: number, onConnection: (s: Duplex) => void): Promise<Listener>;
}

export function createTcpTransport(opts: { connectTimeoutMs?: number; clock?: Clock } = {}): Transport {
  const connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
  const clock = opts.clock ?? systemClock;
  return {
    connect(host, port) {
      return new Promise<Duplex>((resolve, reject) => {
        const sock = createConnection({ host, port });
        const timer = clock.setTimer(connectTimeoutMs, () => {
          sock.destroy();
          reject(vrgError(ErrorCode.TIMEOUT, `connect to ${host}:${port} timed out after ${connectTimeoutMs} ms`, { host, port }));
        });
        sock.once('error', (err) => {
          timer.cancel();
          sock.destroy();
          reject(vrgError(ErrorCode.CONNECTION_CLOSED, `connect to ${host}:${port} failed: ${err.message}`, { host, port }, err));
        });
        sock.once('connect', () => {
          timer.cancel();
          sock.setNoDelay(true);
          resolve(sock);
        });
      });
    },
    listen(host, port, onConnection) {
      return new Promise<Listener>((resolve, reject) => {
        const open = new Set<Socket>();
        const server = createServer((sock) => {
          sock.setNoDelay(true);
          open.add(sock);
          sock.once('close', () => open.delete(sock));
          onConnection(sock);
        });
        server.once('error', reject);
        server.listen({ host, port }, () => {
          server.off('error', reject);
          server.on('error', () => undefined); // accept errors after listening are per-socket
          const address = server.address();
          const bound = typeof address === 'object' && address !== null ? address.port : port;
          resolve({
            port: bound,
            close: () =>
              new Promise<void>((done) => {
                server.close(() => done());
                for (const s of open) s.destroy();
              }),
          });
        });
      });
    },
  };
}

export const tcpTransport: Transport = createTcpTransport();
