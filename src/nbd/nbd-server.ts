import { createServer, type Server, type Socket } from 'node:net';
import { assert } from '../core/assert.js';
import { systemClock, type Clock } from '../core/clock.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { BufferRing, type BufferRingStats } from '../core/buffer-ring.js';
import { limits, MiB } from '../core/limits.js';
import { silentLogger, type Logger } from '../core/log.js';
import { NbdConnection } from './nbd-connection.js';
import type { NbdExportSource } from './nbd-export.js';

export type { NbdExport, NbdExportSource } from './nbd-export.js';
export { nbdErrnoFor } from './nbd-export.js';

// A generic NBD server (fixed newstyle, simple and structured replies) over node:net. What it serves comes
// from `exports()`, looked up at each handshake, so volumes can come and go while it runs.

export interface NbdServerOptions {
  exports: NbdExportSource;
  logger?: Logger;
  clock?: Clock;
  /** Largest READ/WRITE payload, advertised as the maximum block size. Default 32 MiB. */
  maxPayloadBytes?: number;
  /** Advertised minimum block size (1 or 512). Default 1. */
  minBlockBytes?: number;
  /** Advertised preferred block size. Default 4096. */
  preferredBlockBytes?: number;
  /** Requests of one client being served at once; beyond it the socket is not read. Default 64. */
  requestsInFlightMax?: number;
  /** READ/WRITE payload bytes of one client being served at once. Default 64 MiB. */
  bytesInFlightMax?: number;
  /** Clients connected at once; more are refused. Default 256. */
  clientsMax?: number;
  /** From connect to the end of option haggling. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** A partly received request (or an unread reply backlog) without progress for this long drops the client. Default 30 s. */
  stallTimeoutMs?: number;
  /** Drop clients with nothing in flight and no traffic for this long; 0 = never (default). */
  idleTimeoutMs?: number;
  /** close() waits this long for in-flight requests before destroying sockets. Default 10 s. */
  closeTimeoutMs?: number;
}

export class NbdServer {
  /** The payload ring's use (for diagnostics and the bench). */
  payloadRingStats(): BufferRingStats {
    return this.payloadRing.stats();
  }

  private server: Server | null = null;
  private readonly connections = new Set<NbdConnection>();
  private shuttingDown = false;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly maxPayloadBytes: number;
  /** WRITE payloads that span received chunks, for every client (beyond it, buffers of their own). */
  private readonly payloadRing = new BufferRing({ capacityBytes: limits.nbdPayloadRingBytes });

  constructor(private readonly opts: NbdServerOptions) {
    this.logger = opts.logger ?? silentLogger;
    this.clock = opts.clock ?? systemClock;
    this.maxPayloadBytes = opts.maxPayloadBytes ?? 32 * MiB;
    const min = opts.minBlockBytes ?? 1;
    assert(this.maxPayloadBytes >= 4096 && this.maxPayloadBytes <= 0xffff_ffff, 'maxPayloadBytes within 4 KiB..4 GiB');
    assert(min === 1 || min === 512 || min === 4096, 'minBlockBytes is 1, 512 or 4096');
  }

  /** Connected clients (handshaking or attached). */
  get clients(): number {
    return this.connections.size;
  }

  /** Starts listening; resolves with the bound port (pass 0 for an ephemeral one). */
  async listen(host: string, port: number): Promise<number> {
    assert(this.server === null, 'NbdServer.listen called once');
    const server = createServer({ noDelay: true }, (sock) => this.accept(sock));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(vrgError(ErrorCode.INVALID_ARGUMENT,
        `nbd server cannot listen on ${host}:${port}: ${err.message}`, { host, port }, err)));
      server.listen(port, host, () => {
        server.removeAllListeners('error');
        resolve();
      });
    });
    server.on('error', (err) => this.logger.error({ err }, 'nbd server error'));
    const addr = server.address();
    assert(addr !== null && typeof addr === 'object', 'listening on TCP');
    this.logger.info({ host, port: addr.port }, 'nbd server listening');
    return addr.port;
  }

  /**
   * Stops accepting, lets every client's in-flight requests finish (up to closeTimeoutMs), then closes
   * every socket.
   */
  async close(): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    const server = this.server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    await this.closeConnections([...this.connections], 'server shutting down');
    await closed;
  }

  /** Disconnects the clients attached to one export (e.g. a volume no longer served), as close() does. */
  async disconnectExport(name: string): Promise<void> {
    await this.closeConnections([...this.connections].filter((c) => c.exportName === name), `export ${name} withdrawn`);
  }

  private async closeConnections(conns: NbdConnection[], reason: string): Promise<void> {
    for (const c of conns) c.stop(reason);
    const timeoutMs = this.opts.closeTimeoutMs ?? 10_000;
    let timer: { cancel(): void } | null = null;
    const deadline = new Promise<void>((resolve) => {
      timer = this.clock.setTimer(timeoutMs, resolve);
    });
    await Promise.race([Promise.all(conns.map((c) => c.closed)), deadline]);
    (timer as { cancel(): void } | null)?.cancel();
    for (const c of conns) c.destroy(reason);
    await Promise.all(conns.map((c) => c.closed));
  }

  private accept(sock: Socket): void {
    if (this.shuttingDown || this.connections.size >= (this.opts.clientsMax ?? 256)) {
      this.logger.warn({ remote: sock.remoteAddress, clients: this.connections.size }, 'nbd client refused');
      sock.destroy();
      return;
    }
    const conn = new NbdConnection(sock, {
      exports: this.opts.exports,
      blockSizes: [this.opts.minBlockBytes ?? 1, this.opts.preferredBlockBytes ?? 4096, this.maxPayloadBytes],
      clock: this.clock,
      logger: this.logger,
      payloadBytesMax: this.maxPayloadBytes,
      requestsInFlightMax: this.opts.requestsInFlightMax ?? 64,
      bytesInFlightMax: this.opts.bytesInFlightMax ?? 64 * MiB,
      handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 10_000,
      stallTimeoutMs: this.opts.stallTimeoutMs ?? 30_000,
      idleTimeoutMs: this.opts.idleTimeoutMs ?? 0,
      shuttingDown: () => this.shuttingDown,
      payloadMemory: this.payloadRing,
    });
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
  }
}

