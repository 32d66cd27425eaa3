import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { ErrorCode, vrgError } from '../core/errors.js';
import { silentLogger, type Logger } from '../core/log.js';
import type { Resume } from '../protocol/messages.js';
import type { LinkConnection, LinkOptions } from './connection.js';
import { serverHandshake, type PeerSecretLookup, type SecretCandidates } from './handshake.js';
import type { Listener, Transport } from './transport.js';

// DR side: accepts production gateways. Each socket is handshaken; an authenticated connection replaces
// (closes) an older one from the same peer gateway id. Failed handshakes are logged and dropped.
// Events: 'connection' (LinkConnection), 'handshakeFailed' (Error).

export interface LinkServerOptions extends LinkOptions {
  transport: Transport;
  resume: () => Resume;
  /** The secrets a pairing accepts now (a rotation in progress: two); default its configured one. */
  candidates?: SecretCandidates;
}

/** Sockets in the handshake at once; more are dropped on arrival. */
const HANDSHAKES_PENDING_MAX = 64;

export class LinkServer extends EventEmitter {
  private listener: Listener | null = null;
  private readonly byPeer = new Map<string, LinkConnection>();
  private readonly handshaking = new Set<Duplex>();
  private closing = false;
  private readonly logger: Logger;
  private peerSecret: PeerSecretLookup | null = null;

  constructor(private readonly opts: LinkServerOptions) {
    super();
    this.logger = opts.logger ?? silentLogger;
  }

  /** Starts listening; resolves with the bound port (useful with port 0). */
  async listen(host: string, port: number): Promise<number> {
    if (this.listener) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'link server is already listening');
    this.closing = false;
    this.listener = await this.opts.transport.listen(host, port, (sock) => this.accept(sock));
    return this.listener.port;
  }

  get port(): number | null {
    return this.listener?.port ?? null;
  }

  /** Current authenticated connections by peer gateway id. */
  get connections(): ReadonlyMap<string, LinkConnection> {
    return this.byPeer;
  }

  /** Per-peer pairing secrets for later handshakes (null: every peer uses `secret`). */
  setPeerSecrets(lookup: PeerSecretLookup | null): void {
    this.peerSecret = lookup;
  }

  /** Stops listening, drops handshakes in progress and closes every connection. */
  async close(): Promise<void> {
    this.closing = true;
    const listener = this.listener;
    this.listener = null;
    for (const sock of this.handshaking) sock.destroy();
    for (const conn of [...this.byPeer.values()]) conn.close();
    this.byPeer.clear();
    await listener?.close();
  }

  private accept(sock: Duplex): void {
    if (this.closing || this.handshaking.size >= HANDSHAKES_PENDING_MAX) {
      this.logger.warn({ pending: this.handshaking.size }, 'link server dropping a connection');
      sock.destroy();
      return;
    }
    this.handshaking.add(sock);
    const lookup = this.peerSecret;
    serverHandshake(sock, lookup === null ? this.opts : { ...this.opts, peerSecret: lookup }).then(
      (conn) => {
        this.handshaking.delete(sock);
        if (this.closing) conn.close();
        else this.adopt(conn);
      },
      (err: Error) => {
        this.handshaking.delete(sock);
        this.logger.warn({ err: err.message, code: (err as { code?: string }).code }, 'link handshake failed');
        this.emit('handshakeFailed', err);
      },
    );
  }

  private adopt(conn: LinkConnection): void {
    const id = conn.peer.gatewayId;
    const older = this.byPeer.get(id);
    this.byPeer.set(id, conn);
    conn.once('close', () => {
      if (this.byPeer.get(id) === conn) this.byPeer.delete(id);
    });
    older?.close(vrgError(ErrorCode.CONNECTION_CLOSED, `replaced by a newer connection from ${id}`));
    this.logger.info({ peer: id, sessionId: conn.sessionId.toString('hex') }, 'link connection up');
    this.emit('connection', conn);
  }
}
