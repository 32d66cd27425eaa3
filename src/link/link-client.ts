import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import type { TimerHandle } from '../core/clock.js';
import { limits } from '../core/limits.js';
import { silentLogger, type Logger } from '../core/log.js';
import type { LinkConnection, LinkOptions } from './connection.js';
import { clientHandshake } from './handshake.js';
import type { Transport } from './transport.js';

// Production side: keeps one link connection to the DR gateway up. Connects, handshakes, and on any
// failure or disconnection retries after an exponential backoff with jitter (reset by a successful handshake).
// Events: 'connected' (LinkConnection), 'disconnected' (Error | null), 'connectFailed' (Error).

export interface LinkClientOptions extends LinkOptions {
  transport: Transport;
  host: string;
  port: number;
  backoffMinMs?: number;
  backoffMaxMs?: number;
}

export class LinkClient extends EventEmitter {
  private running = false;
  private conn: LinkConnection | null = null;
  private sock: Duplex | null = null;
  private attempt = 0;
  private sleeper: { timer: TimerHandle; wake: () => void } | null = null;
  private loop: Promise<void> | null = null;
  private readonly logger: Logger;
  private secret: Buffer;

  constructor(private readonly opts: LinkClientOptions) {
    super();
    this.logger = opts.logger ?? silentLogger;
    this.secret = opts.secret;
  }

  /** The secret of the next handshakes (a rotation: the current connection keeps its session keys). */
  setSecret(secret: Buffer): void {
    this.secret = secret;
  }

  /** The current connection, null while (re)connecting. */
  get connection(): LinkConnection | null {
    return this.conn;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  /** Stops reconnecting and closes the current connection (emitting 'disconnected' (null) if one was up). */
  stop(): void {
    this.running = false;
    this.sleeper?.timer.cancel();
    this.sleeper?.wake();
    this.sock?.destroy();
    this.conn?.close();
  }

  /** Resolves once the loop has ended after stop(). */
  async stopped(): Promise<void> {
    await this.loop;
  }

  private async run(): Promise<void> {
    while (this.running) {
      try {
        const conn = await this.connectOnce();
        if (conn) {
          this.attempt = 0;
          const closed = new Promise<Error | null>((resolve) => conn.once('close', resolve));
          this.conn = conn;
          this.emit('connected', conn);
          const err = await closed;
          this.conn = null;
          this.emit('disconnected', err);
        }
      } catch (err) {
        if (!this.running) break;
        this.logger.warn({ err: (err as Error).message, code: (err as { code?: string }).code }, 'link connect failed');
        this.emit('connectFailed', err);
      }
      if (this.running) await this.sleep(this.backoffMs());
    }
  }

  private async connectOnce(): Promise<LinkConnection | null> {
    const sock = await this.opts.transport.connect(this.opts.host, this.opts.port);
    if (!this.running) {
      sock.destroy();
      return null;
    }
    this.sock = sock;
    try {
      const conn = await clientHandshake(sock, { ...this.opts, secret: this.secret });
      if (!this.running) {
        conn.close();
        return null;
      }
      return conn;
    } finally {
      this.sock = null;
    }
  }

  private backoffMs(): number {
    const min = this.opts.backoffMinMs ?? limits.reconnectBackoffMinMs;
    const max = this.opts.backoffMaxMs ?? limits.reconnectBackoffMaxMs;
    const base = Math.min(max, min * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return Math.max(min, Math.round(base * (0.5 + 0.5 * this.opts.random.float())));
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        this.sleeper = null;
        resolve();
      };
      this.sleeper = { timer: this.opts.clock.setTimer(ms, wake), wake };
    });
  }
}
