import { chmod, rm } from 'node:fs/promises';
import { BlockList, createServer, isIP, type Server, type Socket } from 'node:net';
import { assert } from '../core/assert.js';
import { systemClock, type Clock } from '../core/clock.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { BufferRing, type BufferRingStats } from '../core/buffer-ring.js';
import { limits, MiB } from '../core/limits.js';
import { silentLogger, type Logger } from '../core/log.js';
import { NbdConnection } from './nbd-connection.js';
import type { NbdExportSource } from './nbd-export.js';
import type { NbdTls } from './nbd-tls.js';

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
  /** STARTTLS (nbd-tls.ts): off when absent. */
  tls?: NbdTls;
  /**
   * TCP clients allowed to connect: addresses or CIDR subnets (`10.0.0.0/8`, `::1`); others are closed before
   * the greeting. Absent: any. Unix-socket clients are governed by the socket file's permissions instead.
   */
  allowClients?: string[];
}

/** A BlockList of the allowed addresses and subnets; throws INVALID_ARGUMENT naming a bad entry. */
export function clientAllowList(entries: string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [addr = '', bits, extra] = entry.split('/');
    const family = isIP(addr);
    const prefix = bits === undefined ? (family === 6 ? 128 : 32) : Number(bits);
    if (family === 0 || extra !== undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > (family === 6 ? 128 : 32)) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, `nbd allow-list entry '${entry}' is not an address or CIDR subnet`, { entry });
    }
    list.addSubnet(addr, prefix, family === 6 ? 'ipv6' : 'ipv4');
  }
  return list;
}

function allowed(list: BlockList, address: string | undefined): boolean {
  if (address === undefined) return false;
  // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
  const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  if (v4 !== undefined) return list.check(v4, 'ipv4');
  return list.check(address, isIP(address) === 6 ? 'ipv6' : 'ipv4');
}

export class NbdServer {
  /** The payload ring's use (for diagnostics and the bench). */
  payloadRingStats(): BufferRingStats {
    return this.payloadRing.stats();
  }

  private readonly servers: Server[] = [];
  private readonly unixPaths: string[] = [];
  private readonly allowList: BlockList | null;
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
    this.allowList = opts.allowClients ? clientAllowList(opts.allowClients) : null;
  }

  /** Connected clients (handshaking or attached). */
  get clients(): number {
    return this.connections.size;
  }

  /** Starts listening on TCP; resolves with the bound port (pass 0 for an ephemeral one). */
  async listen(host: string, port: number): Promise<number> {
    const server = await this.open(`${host}:${port}`, (s, done) => s.listen(port, host, done), { host, port });
    const addr = server.address();
    assert(addr !== null && typeof addr === 'object', 'listening on TCP');
    this.logger.info({ host, port: addr.port, tls: this.opts.tls?.mode ?? 'off' }, 'nbd server listening');
    return addr.port;
  }

  /** Also listens on a unix socket, mode 0600 (the owner only); a stale socket file there is replaced. */
  async listenUnix(path: string): Promise<void> {
    await rm(path, { force: true });
    await this.open(path, (s, done) => s.listen({ path, readableAll: false, writableAll: false }, done), { path });
    this.unixPaths.push(path);
    await chmod(path, 0o600);
    this.logger.info({ path, tls: this.opts.tls?.mode ?? 'off' }, 'nbd server listening on a unix socket');
  }

  private async open(where: string, start: (s: Server, done: () => void) => void, details: Record<string, unknown>): Promise<Server> {
    assert(!this.shuttingDown, 'NbdServer listens before close');
    const server = createServer({ noDelay: true }, (sock) => this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(vrgError(ErrorCode.INVALID_ARGUMENT,
        `nbd server cannot listen on ${where}: ${err.message}`, details, err)));
      start(server, () => {
        server.removeAllListeners('error');
        resolve();
      });
    });
    server.on('error', (err) => this.logger.error({ err }, 'nbd server error'));
    this.servers.push(server);
    return server;
  }

  /**
   * Stops accepting, lets every client's in-flight requests finish (up to closeTimeoutMs), then closes
   * every socket.
   */
  async close(): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    const closed = this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    await this.closeConnections([...this.connections], 'server shutting down');
    await Promise.all(closed);
    await Promise.all(this.unixPaths.map((path) => rm(path, { force: true })));
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
    // TCP only: a unix-socket client has no remote address, and the socket file's mode admits it.
    if (this.allowList && sock.remoteAddress !== undefined && !allowed(this.allowList, sock.remoteAddress)) {
      this.logger.warn({ remote: sock.remoteAddress }, 'nbd client not in the allow-list: closed');
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
      tls: this.opts.tls,
    });
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
  }
}

