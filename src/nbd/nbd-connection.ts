import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { BlockMemory } from '../core/buffer-ring.js';
import type { Clock, TimerHandle } from '../core/clock.js';
import { elapsedMs } from '../core/clock.js';
import type { Logger } from '../core/log.js';
import {
  NbdCmd, NbdCmdFlag, NbdErrno, NbdHandshakeFlag, NbdHandshakeParser, NbdReplyFlag, NbdReplyType, NbdRequestParser,
  encodeErrorChunk, encodeGreeting, encodeOffsetDataChunkHead, encodeSimpleReplyHeader, encodeStructuredReplyHeader,
  type NbdRequest, type NbdRequestEvent,
} from '../protocol/nbd.js';
import { nbdErrnoFor, type NbdExport } from './nbd-export.js';
import { NbdNegotiation, type NegotiationOptions } from './nbd-negotiation.js';
import type { NbdTls } from './nbd-tls.js';

// One client of the NBD server: the handshake, then the transmission phase with many requests in flight.
//
// Backpressure: the next request is parsed only while fewer than requestsInFlightMax (and fewer than
// bytesInFlightMax payload bytes) are outstanding and the socket's send buffer is drained; otherwise the
// socket is paused, so a fast client cannot queue unbounded work. Replies go out in completion order, each
// header+data corked into one write, so replies never interleave.
//
// Faults: a bad request magic or a handshake violation drops the client. A partial request (header or
// WRITE payload) that makes no progress for stallTimeoutMs drops the client, and nothing of it is written.

export interface NbdConnectionOptions extends Omit<NegotiationOptions, 'shuttingDown' | 'tls'> {
  clock: Clock;
  logger: Logger;
  payloadBytesMax: number;
  requestsInFlightMax: number;
  bytesInFlightMax: number;
  handshakeTimeoutMs: number;
  stallTimeoutMs: number;
  /** 0 = never drop an idle but healthy client (qemu does not reconnect by default). */
  idleTimeoutMs: number;
  shuttingDown: () => boolean;
  /** Where WRITE payloads spanning received chunks are assembled; each is freed once its request is answered. */
  payloadMemory?: BlockMemory;
  /** The listener's TLS (absent: off). */
  tls?: NbdTls;
}

const cmdNames: Record<number, string> = Object.fromEntries(Object.entries(NbdCmd).map(([k, v]) => [v, k]));
const knownFlags = NbdCmdFlag.FUA | NbdCmdFlag.NO_HOLE | NbdCmdFlag.DF;

interface Outcome { errno: number; data: Buffer | null; message: string }

export class NbdConnection {
  readonly closed: Promise<void>;
  exportName: string | null = null;
  private phase: 'handshake' | 'transmission' = 'handshake';
  private readonly handshake = new NbdHandshakeParser();
  private readonly negotiation: NbdNegotiation;
  private parser: NbdRequestParser | null = null;
  private exp: NbdExport | null = null;
  private inFlight = 0;
  private bytesInFlight = 0;
  private replyCorked = false;
  /** No more requests are read (DISC, shutdown, or the peer went away); close once in-flight ones finish. */
  private stopping = false;
  private readonly startNs: bigint;
  private lastProgressNs: bigint;
  private watchdog: TimerHandle | null = null;
  private readonly log: Logger;

  /** The client's socket: the plain one, then its TLS wrapper once STARTTLS ran. */
  private sock: Socket;
  private onClosed!: () => void;

  constructor(sock: Socket, private readonly opts: NbdConnectionOptions) {
    this.sock = sock;
    const remote = sock.remoteAddress === undefined ? 'unix' : `${sock.remoteAddress}:${sock.remotePort}`;
    this.log = opts.logger.child({ nbdClient: remote });
    this.negotiation = new NbdNegotiation({ ...opts, tls: opts.tls?.mode ?? 'off' });
    this.startNs = this.lastProgressNs = opts.clock.monotonicNs();
    this.closed = new Promise((resolve) => {
      this.onClosed = () => {
        this.stopping = true;
        this.watchdog?.cancel();
        resolve();
      };
    });
    sock.once('close', this.onClosed);
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 30_000);
    this.listen(sock);
    sock.on('error', (err) => this.log.debug({ err }, 'nbd client socket error'));
    sock.write(encodeGreeting(NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES));
    this.armWatchdog();
  }

  private listen(sock: Socket): void {
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('drain', () => this.progress());
    sock.on('end', () => this.stop('client closed its side'));
  }

  /** Stops reading requests; in-flight ones finish and are answered, then the socket closes. */
  stop(reason: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.log.debug({ reason }, 'nbd client stopping');
    this.sock.pause();
    this.finishIfIdle();
  }

  destroy(reason: string): void {
    if (!this.sock.destroyed) this.log.info({ reason, export: this.exportName }, 'nbd client dropped');
    this.stopping = true;
    this.sock.destroy();
  }

  private onData(chunk: Buffer): void {
    this.lastProgressNs = this.opts.clock.monotonicNs();
    if (this.stopping) return;
    try {
      if (this.phase === 'handshake') {
        this.handshake.push(chunk);
        this.negotiate();
      } else {
        this.parser!.push(chunk);
        this.pump();
      }
    } catch (err) {
      this.log.warn({ err }, 'nbd protocol violation');
      this.destroy((err as Error).message);
    }
  }

  private negotiate(): void {
    // Option replies are small, but a client that sends options without reading the replies must not
    // make them pile up: stop reading until the socket drains.
    while (this.phase === 'handshake' && !this.stopping) {
      if (this.sock.writableNeedDrain) {
        this.sock.pause();
        return;
      }
      const ev = this.handshake.next();
      if (!ev) break;
      const step = this.negotiation.onEvent(ev);
      for (const b of step.send) this.sock.write(b);
      if (step.next === 'starttls') {
        this.startTls();
        return; // haggling goes on once the TLS handshake is done
      } else if (step.next === 'close') {
        this.log.info({ reason: step.reason }, 'nbd handshake ended');
        this.stopping = true;
        this.sock.end();
      } else if (step.next === 'transmission') {
        this.phase = 'transmission';
        this.exp = step.export;
        this.exportName = step.export.name;
        this.parser = new NbdRequestParser(this.opts.payloadBytesMax, this.opts.payloadMemory ?? null);
        for (const rest of this.handshake.drain()) this.parser.push(rest);
        this.log.info({ export: step.export.name, structured: this.negotiation.structured }, 'nbd client attached');
        this.pump();
      }
    }
  }

  /**
   * After STARTTLS's acknowledgement (already handed to the plain socket, which keeps write order): the
   * client must wait for it, so any byte already received is a violation. The plain socket stops feeding the
   * parser in this same turn, before its next read, and the TLS wrapper takes its place.
   */
  private startTls(): void {
    const plain = this.sock;
    const early = this.handshake.drain().reduce((n, b) => n + b.length, 0) + plain.readableLength;
    if (early > 0) {
      this.destroy(`client sent ${early} bytes before the TLS handshake`);
      return;
    }
    for (const ev of ['data', 'drain', 'end', 'error']) plain.removeAllListeners(ev);
    plain.on('error', (err) => this.log.debug({ err }, 'nbd client socket error'));
    const secure: TLSSocket = this.opts.tls!.upgrade(plain);
    this.sock = secure;
    secure.once('close', this.onClosed);
    this.listen(secure);
    secure.on('error', (err) => {
      // A wrong PSK or certificate, or a client that gave up: nothing was served on this connection.
      this.log.warn({ err }, 'nbd TLS failed');
      this.destroy(`TLS: ${err.message}`);
    });
    secure.once('secure', () => {
      this.negotiation.tlsStarted();
      this.log.info({ protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'nbd client started TLS');
      this.progress();
    });
  }

  private get blocked(): boolean {
    return this.inFlight >= this.opts.requestsInFlightMax || this.bytesInFlight >= this.opts.bytesInFlightMax ||
      this.sock.writableNeedDrain;
  }

  /** Dispatches parsed requests while there is room; pauses the socket when there is none. */
  private pump(): void {
    const parser = this.parser!;
    while (!this.stopping && !this.blocked) {
      const ev = parser.next();
      if (!ev) break;
      this.dispatch(ev);
    }
    if (this.stopping) return;
    if (this.blocked) this.sock.pause();
    else this.sock.resume();
  }

  private dispatch(ev: NbdRequestEvent): void {
    const req = ev.request;
    if (req.type === NbdCmd.DISC) {
      this.stop('client sent DISC');
      return;
    }
    const weight = req.type === NbdCmd.READ || req.type === NbdCmd.WRITE ? req.length : 0;
    this.inFlight++;
    this.bytesInFlight += weight;
    void this.execute(ev).then((outcome) => {
      // Answered: nothing holds the payload any more (the journal keeps a copy of its own).
      this.opts.payloadMemory?.release(ev.payload);
      this.inFlight--;
      this.bytesInFlight -= weight;
      this.reply(req, outcome);
      this.progress();
    });
  }

  private progress(): void {
    this.lastProgressNs = this.opts.clock.monotonicNs();
    if (this.stopping) {
      this.finishIfIdle();
      return;
    }
    try {
      if (this.phase === 'handshake') {
        this.sock.resume();
        this.negotiate();
      } else {
        this.pump();
      }
    } catch (err) {
      this.log.warn({ err }, 'nbd protocol violation');
      this.destroy((err as Error).message);
    }
  }

  private finishIfIdle(): void {
    if (this.inFlight === 0 && !this.sock.destroyed) this.sock.end();
  }

  /** Validates and runs one request; never throws. */
  private async execute(ev: NbdRequestEvent): Promise<Outcome> {
    const req = ev.request;
    const invalid = this.validate(ev);
    if (invalid) return { errno: NbdErrno.EINVAL, data: null, message: invalid };
    const exp = this.exp!;
    if (exp.readOnly && (req.type === NbdCmd.WRITE || req.type === NbdCmd.TRIM || req.type === NbdCmd.WRITE_ZEROES)) {
      return { errno: NbdErrno.EPERM, data: null, message: `export ${exp.name} is read-only` };
    }
    const fua = (req.flags & NbdCmdFlag.FUA) !== 0;
    try {
      let data: Buffer | null = null;
      if (req.length > 0 || req.type === NbdCmd.FLUSH) {
        switch (req.type) {
          case NbdCmd.READ:
            data = await exp.read(req.offset, req.length);
            if (data.length !== req.length) throw new Error(`backend read returned ${data.length} of ${req.length} bytes`);
            break;
          case NbdCmd.WRITE: await exp.write(req.offset, ev.payload!, fua); break;
          case NbdCmd.TRIM: await exp.trim(req.offset, req.length, fua); break;
          case NbdCmd.WRITE_ZEROES:
            await exp.writeZeroes(req.offset, req.length, { fua, noHole: (req.flags & NbdCmdFlag.NO_HOLE) !== 0 });
            break;
          case NbdCmd.FLUSH: await exp.flush(); break;
          case NbdCmd.CACHE: break; // a hint; nothing to prefetch into
        }
      }
      return { errno: 0, data: req.type === NbdCmd.READ ? data ?? Buffer.alloc(0) : null, message: '' };
    } catch (err) {
      const errno = nbdErrnoFor(err);
      this.log.warn({ err, export: exp.name, cmd: cmdNames[req.type], offset: req.offset, length: req.length, errno },
        'nbd request failed');
      return { errno, data: null, message: (err as Error).message ?? String(err) };
    }
  }

  /** Why the request is invalid (answered EINVAL), or null. */
  private validate(ev: NbdRequestEvent): string | null {
    const req = ev.request;
    const name = cmdNames[req.type];
    const known = [NbdCmd.READ, NbdCmd.WRITE, NbdCmd.FLUSH, NbdCmd.TRIM, NbdCmd.WRITE_ZEROES, NbdCmd.CACHE] as number[];
    if (!known.includes(req.type)) return `unsupported command ${name ?? req.type}`;
    if ((req.flags & ~knownFlags) !== 0) return `unsupported flags 0x${req.flags.toString(16)}`;
    if ((req.flags & NbdCmdFlag.NO_HOLE) !== 0 && req.type !== NbdCmd.WRITE_ZEROES) return 'NO_HOLE outside WRITE_ZEROES';
    if ((req.flags & NbdCmdFlag.DF) !== 0 && (req.type !== NbdCmd.READ || !this.negotiation.structured)) {
      return 'DF outside a structured READ';
    }
    if (ev.payloadDiscarded || (req.type === NbdCmd.READ && req.length > this.opts.payloadBytesMax)) {
      return `${name} of ${req.length} bytes exceeds the maximum block size ${this.opts.payloadBytesMax}`;
    }
    if (req.type === NbdCmd.FLUSH) return req.offset === 0 && req.length === 0 ? null : 'FLUSH with a range';
    if (req.offset + req.length > this.exp!.sizeBytes) {
      return `${name} ${req.offset}+${req.length} is past the end (${this.exp!.sizeBytes} bytes)`;
    }
    return null;
  }

  private reply(req: NbdRequest, o: Outcome): void {
    if (this.sock.destroyed || !this.sock.writable) return;
    const sock = this.sock;
    // Replies completed together (a group commit acknowledges several writes at once) leave in one send:
    // corked until the current microtasks have run.
    if (!this.replyCorked) {
      this.replyCorked = true;
      sock.cork();
      process.nextTick(() => {
        this.replyCorked = false;
        sock.uncork();
      });
    }
    if (req.type === NbdCmd.READ && this.negotiation.structured) {
      if (o.errno !== 0) {
        sock.write(encodeErrorChunk(req.cookie, o.errno, o.message, NbdReplyFlag.DONE));
      } else if (o.data!.length === 0) {
        sock.write(encodeStructuredReplyHeader({ flags: NbdReplyFlag.DONE, type: NbdReplyType.NONE, cookie: req.cookie, length: 0 }));
      } else {
        sock.cork();
        sock.write(encodeOffsetDataChunkHead(req.cookie, req.offset, o.data!.length, NbdReplyFlag.DONE));
        sock.write(o.data!);
        sock.uncork();
      }
      return;
    }
    if (o.errno === 0 && o.data && o.data.length > 0) {
      sock.cork();
      sock.write(encodeSimpleReplyHeader(0, req.cookie));
      sock.write(o.data);
      sock.uncork();
    } else {
      sock.write(encodeSimpleReplyHeader(o.errno, req.cookie));
    }
  }

  /** One periodic check for every timeout, instead of a timer per chunk. */
  private armWatchdog(): void {
    const t = this.opts;
    const periods = [t.handshakeTimeoutMs, t.stallTimeoutMs, t.idleTimeoutMs].filter((ms) => ms > 0);
    const period = Math.max(10, Math.min(...periods) / 4);
    const tick = (): void => {
      const why = this.timedOut();
      if (why) {
        this.destroy(why);
        return;
      }
      if (!this.sock.destroyed) this.watchdog = t.clock.setTimer(period, tick);
    };
    this.watchdog = t.clock.setTimer(period, tick);
  }

  private timedOut(): string | null {
    const t = this.opts;
    if (this.phase === 'handshake') {
      return elapsedMs(t.clock, this.startNs) > t.handshakeTimeoutMs ? `no handshake within ${t.handshakeTimeoutMs} ms` : null;
    }
    if (this.inFlight > 0) return null; // waiting on the backend is not the client's stall
    const quietMs = elapsedMs(t.clock, this.lastProgressNs);
    if (this.stopping && quietMs > t.stallTimeoutMs) return `peer did not close within ${t.stallTimeoutMs} ms of the end`;
    const waiting = this.parser!.midRequest || this.sock.writableNeedDrain;
    if (waiting && quietMs > t.stallTimeoutMs) return `request or reply stalled for ${t.stallTimeoutMs} ms`;
    if (t.idleTimeoutMs > 0 && quietMs > t.idleTimeoutMs) return `idle for ${t.idleTimeoutMs} ms`;
    return null;
  }
}
