import type { Duplex } from 'node:stream';
import { assert } from '../core/assert.js';
import { systemClock, type Clock, type TimerHandle } from '../core/clock.js';
import { ErrorCode, isVrgError, vrgError, type VrgError } from '../core/errors.js';
import { MiB } from '../core/limits.js';
import { createTcpTransport, type Transport } from '../link/transport.js';
import {
  ByteQueue, GREETING_BYTES, NBD_REP_FLAG_ERROR, NBD_REP_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NbdClientFlag, NbdCmd, NbdCmdFlag,
  NbdErrno, NbdHandshakeFlag, NbdInfo, NbdOpt, NbdRep, NbdTransmissionFlag, OPTION_REPLY_HEADER_BYTES, REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES, decodeGreeting, decodeInfo, decodeOptionReplyHeader, decodeSimpleReplyHeader,
  encodeInfoRequest, encodeOptionRequest, encodeRequestHeader, type NbdInfoItem,
} from '../protocol/nbd.js';

// An NBD client for the transmission phase: simple replies only (structured replies are never
// negotiated), requests pipelined with unique cookies, replies matched by cookie.
//
// Failure policy: a server error reply fails that request (VRG_VOLUME_IO, errno name in details).
// Anything else that leaves the stream in an unknown state — the socket closing, a malformed reply,
// a request timing out (NBD cannot cancel a request) — closes the connection and fails every pending
// request (VRG_CONNECTION_CLOSED; the timed-out one with VRG_TIMEOUT). Nothing is retried here: a
// write whose fate is unknown must be re-applied by the caller from its own durable position.


export interface NbdClientOptions {
  host: string;
  port: number;
  exportName: string;
  /** Bounds the TCP connect and, separately, the whole handshake. Default 10 s. */
  connectTimeoutMs?: number;
  /** Every request must be answered within this. Default 30 s. */
  requestTimeoutMs?: number;
  /** Requests on the wire without a reply; further requests wait (backpressure). Default 64. */
  maxInFlight?: number;
  /** Payload bytes (write data + expected read data) on the wire without a reply. Default 64 MiB. */
  maxInFlightBytes?: number;
  transport?: Transport;
  clock?: Clock;
}

/** Payload of one READ/WRITE when the server states no maximum (the protocol's conventional 32 MiB). */
const defaultMaxPayload = 32 * MiB;
const zeroFillChunk = 1 * MiB;
let zeroBuffer: Buffer | null = null;

const cmdNames: Record<number, string> = Object.fromEntries(Object.entries(NbdCmd).map(([k, v]) => [v, k]));
const errnoNames: Record<number, string> = Object.fromEntries(Object.entries(NbdErrno).map(([k, v]) => [v, k]));

interface Pending {
  cookie: number;
  type: number;
  offset: number;
  length: number;
  /** Bytes this request holds against maxInFlightBytes. */
  weight: number;
  timer: TimerHandle;
  resolve(data: Buffer | null): void;
  reject(err: Error): void;
}

export class NbdClient {
  private readonly pending = new Map<number, Pending>();
  private readonly slotWaiters: Array<() => boolean> = [];
  /** Every request not yet settled, so disconnect() can wait for them. */
  private readonly outstanding = new Set<Promise<unknown>>();
  private inFlightCount = 0;
  private inFlightBytes = 0;
  private nextCookie = 1;
  private sent = 0;
  private peak = 0;
  private closedError: VrgError | null = null;
  private closeListeners: Array<(err: VrgError) => void> = [];
  /** Mutating requests not yet answered, so flush() can wait for them. */
  private readonly unsettledWrites = new Set<Promise<unknown>>();
  // Reply parser state.
  private readonly rx = new ByteQueue();
  private awaitingData: Pending | null = null;

  private constructor(
    private readonly sock: Duplex,
    readonly info: NbdExportInfo,
    private readonly opts: Required<Omit<NbdClientOptions, 'transport'>>,
    leftover: Buffer,
  ) {
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err: Error) => this.fail(vrgError(ErrorCode.CONNECTION_CLOSED,
      `nbd connection to ${this.where} failed: ${err.message}`, this.details(), err)));
    sock.on('close', () => this.fail(vrgError(ErrorCode.CONNECTION_CLOSED,
      `nbd connection to ${this.where} closed`, this.details())));
    if (leftover.length > 0) this.onData(leftover);
    sock.resume();
  }

  /** Connects and negotiates the export (OPT_GO with INFO requests, OPT_EXPORT_NAME for old servers). */
  static async connect(options: NbdClientOptions): Promise<NbdClient> {
    const opts = {
      host: options.host, port: options.port, exportName: options.exportName,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      maxInFlight: options.maxInFlight ?? 64,
      maxInFlightBytes: options.maxInFlightBytes ?? 64 * MiB,
      clock: options.clock ?? systemClock,
    };
    assert(opts.maxInFlight >= 1 && opts.maxInFlightBytes >= 1, 'nbd in-flight bounds are positive');
    const transport = options.transport ?? createTcpTransport({ connectTimeoutMs: opts.connectTimeoutMs, clock: opts.clock });
    const sock = await transport.connect(opts.host, opts.port);
    try {
      const { info, leftover } = await nbdHandshake(sock, opts);
      return new NbdClient(sock, info, opts, leftover);
    } catch (err) {
      sock.destroy();
      throw err;
    }
  }

  get where(): string {
    return `${this.opts.host}:${this.opts.port}/${this.opts.exportName}`;
  }

  /** Null while usable; the error that ended the connection otherwise. */
  get closeReason(): VrgError | null {
    return this.closedError;
  }

  /** Called once when the connection ends for any reason (including disconnect()). */
  onClose(fn: (err: VrgError) => void): void {
    if (this.closedError) fn(this.closedError);
    else this.closeListeners.push(fn);
  }

  /** Requests put on the wire, and the most that were ever awaiting a reply at once. */
  get stats(): { requestsSent: number; inFlight: number; peakInFlight: number } {
    return { requestsSent: this.sent, inFlight: this.pending.size, peakInFlight: this.peak };
  }

  get maxPayloadBytes(): number {
    return Math.min(this.info.maxBlockSize, defaultMaxPayload);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    await Promise.all(this.chunks(offset, length).map(async ([at, len]) => {
      const data = await this.request(NbdCmd.READ, 0, at, len, null);
      assert(data !== null && data.length === len, 'read reply carries the requested bytes');
      data.copy(out, at - offset);
    }));
    return out;
  }

  /** With `fua`, resolves once the data is durable (FUA, or a FLUSH when the server lacks FUA). */
  async write(offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkWritable();
    const fua = opts.fua === true && this.info.canFua ? NbdCmdFlag.FUA : 0;
    await this.mutate(Promise.all(this.chunks(offset, data.byteLength).map(([at, len]) =>
      this.request(NbdCmd.WRITE, fua, at, len, data.subarray(at - offset, at - offset + len)))));
    if (opts.fua === true && !this.info.canFua) await this.flush();
  }

  /** Everything written before the call (including writes still in flight) is durable when it resolves. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.unsettledWrites]);
    if (!this.info.canFlush) {
      // A server without SEND_FLUSH has no write cache to flush; it still has to be connected.
      if (this.closedError) throw this.closedError;
      return;
    }
    await this.request(NbdCmd.FLUSH, 0, 0, 0, null);
  }

  /**
   * NBD_CMD_TRIM: a hint, after which the range may read back as anything. A no-op when the server
   * lacks SEND_TRIM. Callers that need zeroes (a DR replica) use writeZeroes instead.
   */
  async trim(offset: number, length: number): Promise<void> {
    this.checkWritable();
    if (!this.info.canTrim || length === 0) return;
    await this.mutate(Promise.all(this.chunks(offset, length).map(([at, len]) =>
      this.request(NbdCmd.TRIM, 0, at, len, null))));
  }

  /**
   * The range reads back as zeroes. Without `noHole` the server may deallocate it. Falls back to
   * writing zero-filled buffers when the server lacks SEND_WRITE_ZEROES.
   */
  async writeZeroes(offset: number, length: number, opts: { noHole?: boolean; fua?: boolean } = {}): Promise<void> {
    this.checkWritable();
    if (length === 0) return;
    if (!this.info.canWriteZeroes) {
      zeroBuffer ??= Buffer.alloc(zeroFillChunk);
      const step = Math.min(zeroFillChunk, this.maxPayloadBytes);
      const writes: Promise<void>[] = [];
      for (let done = 0; done < length; done += step) {
        writes.push(this.write(offset + done, zeroBuffer.subarray(0, Math.min(step, length - done))));
      }
      await Promise.all(writes);
      if (opts.fua === true) await this.flush();
      return;
    }
    const flags = (opts.noHole === true ? NbdCmdFlag.NO_HOLE : 0) | (opts.fua === true && this.info.canFua ? NbdCmdFlag.FUA : 0);
    await this.mutate(Promise.all(this.chunks(offset, length).map(([at, len]) =>
      this.request(NbdCmd.WRITE_ZEROES, flags, at, len, null))));
    if (opts.fua === true && !this.info.canFua) await this.flush();
  }

  /** Waits for in-flight requests, sends NBD_CMD_DISC and closes the socket. Idempotent. */
  async disconnect(): Promise<void> {
    if (this.closedError) return;
    while (this.outstanding.size > 0 && !this.closedError) await Promise.allSettled([...this.outstanding]);
    if (this.closedError) return;
    const header = encodeRequestHeader({ flags: 0, type: NbdCmd.DISC, cookie: this.cookieBuf(0), offset: 0, length: 0 });
    const sockClosed = new Promise<void>((resolve) => this.sock.once('close', () => resolve()));
    this.fail(vrgError(ErrorCode.CLOSED, `nbd connection to ${this.where} was disconnected`, this.details()));
    this.sock.end(header);
    const timer = this.opts.clock.setTimer(this.opts.connectTimeoutMs, () => this.sock.destroy());
    await sockClosed;
    timer.cancel();
  }

  /** Drops the connection at once, failing pending requests with `err` (default VRG_CLOSED). */
  destroy(err?: VrgError): void {
    this.fail(err ?? vrgError(ErrorCode.CLOSED, `nbd connection to ${this.where} was destroyed`, this.details()));
    this.sock.destroy();
  }

  // ---- requests ----

  private checkWritable(): void {
    if (this.info.readOnly) {
      throw vrgError(ErrorCode.VOLUME_IO, `nbd export ${this.where} is read-only`, this.details());
    }
  }

  /** Splits [offset, offset+length) at the server's maximum payload. */
  private chunks(offset: number, length: number): Array<[number, number]> {
    const max = this.maxPayloadBytes;
    const out: Array<[number, number]> = [];
    for (let done = 0; done < length; done += max) out.push([offset + done, Math.min(max, length - done)]);
    if (length === 0) out.push([offset, 0]);
    return out;
  }

  private mutate<T>(p: Promise<T>): Promise<T> {
    this.unsettledWrites.add(p);
    const drop = (): void => void this.unsettledWrites.delete(p);
    p.then(drop, drop);
    return p;
  }

  private cookieBuf(cookie: number): Buffer {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(cookie));
    return b;
  }

  private async request(type: number, flags: number, offset: number, length: number, payload: Uint8Array | null): Promise<Buffer | null> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || length > 0xffff_ffff) {
      throw vrgError(ErrorCode.VOLUME_OUT_OF_RANGE, `nbd request ${offset}+${length} is not a valid range`, { offset, length });
    }
    const weight = type === NbdCmd.READ || type === NbdCmd.WRITE ? length : 0;
    await this.acquireSlot(weight);
    if (this.closedError) {
      this.release(weight);
      throw this.closedError;
    }
    const cookie = this.nextCookie++;
    const reply = new Promise<Buffer | null>((resolve, reject) => {
      const timer = this.opts.clock.setTimer(this.opts.requestTimeoutMs, () => this.timedOut(cookie));
      this.pending.set(cookie, { cookie, type, offset, length, weight, timer, resolve, reject });
      this.sent++;
      this.peak = Math.max(this.peak, this.pending.size);
      const header = encodeRequestHeader({ flags, type, cookie: this.cookieBuf(cookie), offset, length });
      assert(header.length === REQUEST_HEADER_BYTES, 'request header size');
      if (payload === null) this.sock.write(header);
      else this.sock.write(Buffer.concat([header, payload]));
    });
    this.outstanding.add(reply);
    const drop = (): void => void this.outstanding.delete(reply);
    reply.then(drop, drop);
    return reply;
  }

  private hasSlot(weight: number): boolean {
    if (this.inFlightCount === 0) return true; // one oversized request may always go alone
    return this.inFlightCount < this.opts.maxInFlight && this.inFlightBytes + weight <= this.opts.maxInFlightBytes;
  }

  /** Reserves an in-flight slot (count and bytes) synchronously when granted; FIFO among waiters. */
  private acquireSlot(weight: number): Promise<void> {
    if (this.closedError || (this.slotWaiters.length === 0 && this.hasSlot(weight))) {
      this.inFlightCount++;
      this.inFlightBytes += weight;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.slotWaiters.push(() => {
        if (!this.closedError && !this.hasSlot(weight)) return false;
        this.inFlightCount++;
        this.inFlightBytes += weight;
        resolve();
        return true;
      });
    });
  }

  private release(weight: number): void {
    this.inFlightCount--;
    this.inFlightBytes -= weight;
    this.admit();
  }

  /** Admits waiting requests in FIFO order while they fit. */
  private admit(): void {
    while (this.slotWaiters.length > 0) {
      const next = this.slotWaiters[0];
      if (next === undefined || !next()) return;
      this.slotWaiters.shift();
    }
  }

  private settle(p: Pending): void {
    p.timer.cancel();
    this.pending.delete(p.cookie);
    this.release(p.weight);
  }

  private timedOut(cookie: number): void {
    const p = this.pending.get(cookie);
    if (!p) return;
    this.settle(p);
    p.reject(vrgError(ErrorCode.TIMEOUT, `nbd ${cmdNames[p.type] ?? p.type} ${p.offset}+${p.length} on ${this.where} ` +
      `got no reply within ${this.opts.requestTimeoutMs} ms`, this.details({ command: cmdNames[p.type], offset: p.offset, length: p.length })));
    this.destroy(vrgError(ErrorCode.CONNECTION_CLOSED,
      `nbd connection to ${this.where} abandoned after a request timed out`, this.details()));
  }

  // ---- replies ----

  private onData(chunk: Buffer): void {
    if (this.closedError) return;
    this.rx.push(chunk);
    try {
      this.parseReplies();
    } catch (err) {
      this.destroy(isVrgError(err) ? err : vrgError(ErrorCode.CONNECTION_CLOSED,
        `nbd reply from ${this.where} is malformed: ${(err as Error).message}`, this.details(), err));
    }
    this.admit();
  }

  private parseReplies(): void {
    for (;;) {
      if (this.awaitingData) {
        const p = this.awaitingData;
        if (this.rx.length < p.length) return;
        this.awaitingData = null;
        const data = Buffer.from(this.rx.take(p.length)); // own copy: do not pin the socket's chunk
        p.resolve(data);
        continue;
      }
      if (this.rx.length < SIMPLE_REPLY_HEADER_BYTES) return;
      const head = this.rx.take(SIMPLE_REPLY_HEADER_BYTES);
      if (head.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) {
        throw vrgError(ErrorCode.NBD_PROTOCOL, `nbd server ${this.where} sent a reply with magic 0x${head.readUInt32BE(0).toString(16)}` +
          ' (only simple replies were negotiated)', this.details());
      }
      const reply = decodeSimpleReplyHeader(head);
      const cookie = Number(reply.cookie.readBigUInt64BE(0));
      const p = this.pending.get(cookie);
      if (!p) throw vrgError(ErrorCode.NBD_PROTOCOL, `nbd server ${this.where} replied to unknown cookie ${cookie}`, this.details());
      this.settle(p);
      if (reply.error !== 0) {
        const errno = errnoNames[reply.error] ?? `errno ${reply.error}`;
        p.reject(vrgError(ErrorCode.VOLUME_IO, `nbd ${cmdNames[p.type] ?? p.type} ${p.offset}+${p.length} on ${this.where} failed: ${errno}`,
          this.details({ errno, errnoValue: reply.error, command: cmdNames[p.type], offset: p.offset, length: p.length })));
      } else if (p.type === NbdCmd.READ && p.length > 0) {
        this.awaitingData = p;
      } else {
        p.resolve(p.type === NbdCmd.READ ? Buffer.alloc(0) : null);
      }
    }
  }

  private fail(err: VrgError): void {
    if (this.closedError) return;
    this.closedError = err;
    const reason = err.code === ErrorCode.CLOSED ? err
      : vrgError(ErrorCode.CONNECTION_CLOSED, err.message, this.details(), err);
    if (this.awaitingData) {
      this.awaitingData.reject(reason);
      this.awaitingData = null;
    }
    for (const p of [...this.pending.values()]) {
      this.settle(p);
      p.reject(reason);
    }
    this.admit(); // waiters see closedError, get a slot and fail in request(), releasing it
    for (const fn of this.closeListeners.splice(0)) fn(err);
  }

  private details(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { host: this.opts.host, port: this.opts.port, exportName: this.opts.exportName, ...extra };
  }
}

// ---- handshake (fixed newstyle) ----

/** What the server told us about the export. Sizes in bytes. */
export interface NbdExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
  minBlockSize: number;
  preferredBlockSize: number;
  maxBlockSize: number;
  readOnly: boolean;
  canFlush: boolean;
  canFua: boolean;
  canTrim: boolean;
  canWriteZeroes: boolean;
  canMultiConn: boolean;
}

/** Option replies longer than this are refused (error strings, descriptions). */
const optionReplyBytesMax = 64 * 1024;

/** Reads exact byte counts from a stream during the handshake; leaves the rest for the reply parser. */
class HandshakeReader {
  private readonly queue = new ByteQueue();
  private waiter: { n: number; resolve(b: Buffer): void; reject(e: Error): void } | null = null;
  private error: Error | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.queue.push(chunk);
    this.wake();
  };
  private readonly onEnd = (): void => this.abort(vrgError(ErrorCode.HANDSHAKE_FAILED, `${this.what} closed the connection during the handshake`));
  private readonly onError = (err: Error): void =>
    this.abort(vrgError(ErrorCode.HANDSHAKE_FAILED, `${this.what}: ${err.message}`, undefined, err));

  constructor(private readonly sock: Duplex, private readonly what: string) {
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.on('error', this.onError);
  }

  read(n: number): Promise<Buffer> {
    if (this.error) return Promise.reject(this.error);
    assert(this.waiter === null, 'one handshake read at a time');
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  abort(err: Error): void {
    if (this.error) return;
    this.error = err;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(err);
  }

  /** Stops listening and returns the bytes that arrived after the handshake. */
  detach(): Buffer {
    this.sock.pause();
    this.sock.off('data', this.onData);
    this.sock.off('end', this.onEnd);
    this.sock.off('close', this.onEnd);
    this.sock.off('error', this.onError);
    return Buffer.concat(this.queue.drain());
  }

  private wake(): void {
    const w = this.waiter;
    if (!w || this.queue.length < w.n) return;
    this.waiter = null;
    w.resolve(this.queue.take(w.n));
  }
}

/** Runs the handshake on a connected socket; bounded by connectTimeoutMs as a whole. */
async function nbdHandshake(sock: Duplex, opts: { host: string; port: number; exportName: string; connectTimeoutMs: number; clock: Clock }):
    Promise<{ info: NbdExportInfo; leftover: Buffer }> {
  const where = `nbd server ${opts.host}:${opts.port}`;
  const reader = new HandshakeReader(sock, where);
  const timer = opts.clock.setTimer(opts.connectTimeoutMs, () => reader.abort(vrgError(ErrorCode.TIMEOUT,
    `${where}: handshake did not finish within ${opts.connectTimeoutMs} ms`, { host: opts.host, port: opts.port })));
  try {
    const info = await negotiate(sock, reader, where, opts.exportName);
    return { info, leftover: reader.detach() };
  } catch (err) {
    reader.detach();
    throw err;
  } finally {
    timer.cancel();
  }
}

async function negotiate(sock: Duplex, reader: HandshakeReader, where: string, exportName: string): Promise<NbdExportInfo> {
  let serverFlags: number;
  try {
    serverFlags = decodeGreeting(await reader.read(GREETING_BYTES)).handshakeFlags;
  } catch (err) {
    if (isVrgError(err, ErrorCode.NBD_PROTOCOL)) throw vrgError(ErrorCode.HANDSHAKE_FAILED, `${where} is not a newstyle NBD server`, undefined, err);
    throw err;
  }
  const fixed = (serverFlags & NbdHandshakeFlag.FIXED_NEWSTYLE) !== 0;
  const noZeroes = (serverFlags & NbdHandshakeFlag.NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE((fixed ? NbdClientFlag.FIXED_NEWSTYLE : 0) | (noZeroes ? NbdClientFlag.NO_ZEROES : 0));
  sock.write(clientFlags);
  if (fixed) {
    const info = await optGo(sock, reader, where, exportName);
    if (info) return info;
  }
  // Old servers: NBD_OPT_EXPORT_NAME has no error reply; an unknown export just closes the connection.
  sock.write(encodeOptionRequest(NbdOpt.EXPORT_NAME, Buffer.from(exportName, 'utf8')));
  let reply: Buffer;
  try {
    reply = await reader.read(noZeroes ? 10 : 134);
  } catch (err) {
    if (isVrgError(err, ErrorCode.HANDSHAKE_FAILED)) {
      throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `${where} refused export '${exportName}' (closed the connection)`, { exportName }, err);
    }
    throw err;
  }
  return exportInfo(where, Number(reply.readBigUInt64BE(0)), reply.readUInt16BE(8), null);
}

/** NBD_OPT_GO asking for block size constraints; null when the server does not know OPT_GO. */
async function optGo(sock: Duplex, reader: HandshakeReader, where: string, exportName: string): Promise<NbdExportInfo | null> {
  sock.write(encodeOptionRequest(NbdOpt.GO, encodeInfoRequest(exportName, [NbdInfo.BLOCK_SIZE])));
  let export_: { size: number; flags: number } | null = null;
  let blocks: [number, number, number] | null = null;
  for (;;) {
    const header = decodeOptionReplyHeader(await reader.read(OPTION_REPLY_HEADER_BYTES));
    if (header.magic !== NBD_REP_MAGIC || header.option !== NbdOpt.GO) {
      throw vrgError(ErrorCode.HANDSHAKE_FAILED, `${where} sent a malformed option reply`);
    }
    if (header.length > optionReplyBytesMax) throw vrgError(ErrorCode.HANDSHAKE_FAILED, `${where} sent an oversized option reply`);
    const body = header.length > 0 ? await reader.read(header.length) : Buffer.alloc(0);
    if (header.type === NbdRep.ACK) break;
    if (header.type === NbdRep.INFO) {
      let item: NbdInfoItem;
      try {
        item = decodeInfo(body);
      } catch (err) {
        throw vrgError(ErrorCode.HANDSHAKE_FAILED, `${where} sent a malformed NBD_REP_INFO`, undefined, err);
      }
      if ('size' in item) export_ = { size: item.size, flags: item.flags };
      if ('max' in item) blocks = [item.min, item.preferred, item.max];
      continue;
    }
    if (header.type === NbdRep.ERR_UNSUP) return null;
    if (header.type === NbdRep.ERR_UNKNOWN) {
      throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `${where} has no export '${exportName}'`, { exportName, message: body.toString('utf8') });
    }
    if ((header.type & NBD_REP_FLAG_ERROR) !== 0) {
      throw vrgError(ErrorCode.HANDSHAKE_FAILED, `${where} refused export '${exportName}': error 0x${header.type.toString(16)} ${body.toString('utf8')}`,
        { exportName, replyType: header.type });
    }
    // Other replies (future info types) are ignored, as the protocol asks.
  }
  if (!export_) throw vrgError(ErrorCode.HANDSHAKE_FAILED, `${where} acknowledged OPT_GO without NBD_INFO_EXPORT`);
  return exportInfo(where, export_.size, export_.flags, blocks);
}

function exportInfo(where: string, sizeBytes: number, flags: number, blocks: [number, number, number] | null): NbdExportInfo {
  if (!Number.isSafeInteger(sizeBytes)) throw vrgError(ErrorCode.HANDSHAKE_FAILED, `${where} export size ${sizeBytes} is too large`);
  const has = (f: number): boolean => (flags & NbdTransmissionFlag.HAS_FLAGS) !== 0 && (flags & f) !== 0;
  const [min, preferred, max] = blocks ?? [1, 4096, Math.max(1, Math.min(32 * MiB, sizeBytes))];
  if (min < 1 || max < min || (min & (min - 1)) !== 0) {
    throw vrgError(ErrorCode.HANDSHAKE_FAILED, `${where} sent invalid block size constraints ${min}/${preferred}/${max}`);
  }
  return {
    sizeBytes, transmissionFlags: flags, minBlockSize: min, preferredBlockSize: preferred, maxBlockSize: max,
    readOnly: has(NbdTransmissionFlag.READ_ONLY), canFlush: has(NbdTransmissionFlag.SEND_FLUSH),
    canFua: has(NbdTransmissionFlag.SEND_FUA), canTrim: has(NbdTransmissionFlag.SEND_TRIM),
    canWriteZeroes: has(NbdTransmissionFlag.SEND_WRITE_ZEROES), canMultiConn: has(NbdTransmissionFlag.CAN_MULTI_CONN),
  };
}
