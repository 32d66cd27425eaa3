import type { Socket } from 'node:net';
import {
  NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NbdClientFlag, NbdCmd, NbdErrno, NbdHandshakeFlag, NbdHandshakeParser, NbdOpt,
  NbdRep, NbdTransmissionFlag, REQUEST_HEADER_BYTES, SIMPLE_REPLY_HEADER_BYTES, decodeInfoRequest, encodeExportNameReply,
  encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeOptionReply, type NbdHandshakeEvent,
} from '../src/protocol/nbd.js';
import { readU64 } from './floor-codec.js';
import { readInto, type StallableReader } from './floor-io.js';

// The floor production's NBD side: the fixed newstyle handshake (EXPORT_NAME, GO, INFO, ABORT; everything
// else NBD_REP_ERR_UNSUP, so libnbd falls back to simple replies and compact headers), then WRITE payloads
// copied straight from Node's read chunks into preallocated slots. One export of any name.

/** One preallocated write buffer with its journal header and the request it holds. */
export interface Slot {
  index: number;
  /** slotBytes long; the write is data(). */
  buf: Buffer;
  /** Journal record header, rewritten per write. */
  head: Buffer;
  cookie: Buffer;
  offset: number;
  length: number;
  /** The client connection that gets the reply. */
  session: Socket | null;
}

export const slotData = (s: Slot): Buffer => s.buf.subarray(0, s.length);

export class SlotPool {
  readonly memory: Buffer;
  private readonly free: Slot[] = [];
  private readonly wakers = new Set<() => void>();

  constructor(count: number, readonly slotBytes: number, shared: boolean) {
    const bytes = count * slotBytes;
    this.memory = shared ? Buffer.from(new SharedArrayBuffer(bytes)) : Buffer.allocUnsafeSlow(bytes);
    for (let i = 0; i < count; i++) {
      const buf = this.memory.subarray(i * slotBytes, (i + 1) * slotBytes);
      this.free.push({ index: i, buf, head: Buffer.alloc(32), cookie: Buffer.alloc(8), offset: 0, length: 0, session: null });
    }
  }

  get freeCount(): number {
    return this.free.length;
  }

  take(): Slot | undefined {
    return this.free.pop();
  }

  give(slots: readonly Slot[]): void {
    for (const s of slots) {
      s.session = null;
      this.free.push(s);
    }
    for (const wake of this.wakers) wake();
  }

  /** Readers stalled for a slot retry when slots come back. */
  onFree(wake: () => void): () => void {
    this.wakers.add(wake);
    return () => this.wakers.delete(wake);
  }
}

export interface IntakeSink {
  write(slot: Slot): void;
  /** FLUSH: answered once every write before it is committed. */
  flush(session: Socket, cookie: Buffer): void;
}

const transmissionFlags = NbdTransmissionFlag.HAS_FLAGS | NbdTransmissionFlag.SEND_FLUSH | NbdTransmissionFlag.SEND_FUA;

/** Serves one client connection: handshake, then transmission into `pool` / `sink`. */
export function serveNbd(socket: Socket, sizeBytes: number, pool: SlotPool, sink: IntakeSink): void {
  socket.setNoDelay(true);
  socket.write(encodeGreeting(NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES));
  const parser = new NbdHandshakeParser();
  let noZeroes = false;
  const onData = (chunk: Buffer): void => {
    parser.push(chunk);
    for (let ev = parser.next(); ev; ev = parser.next()) {
      if (ev.kind === 'client-flags') noZeroes = (ev.flags & NbdClientFlag.NO_ZEROES) !== 0;
      const step = answerOption(ev, sizeBytes, noZeroes, pool.slotBytes);
      for (const b of step.send) socket.write(b);
      if (step.next === 'close') return void socket.end();
      if (step.next === 'transmission') {
        socket.off('data', onData);
        return startTransmission(socket, pool, sink, parser.drain());
      }
    }
  };
  socket.on('data', onData);
}

type Step = { next: 'continue' | 'close' | 'transmission'; send: Buffer[] };

function answerOption(ev: NbdHandshakeEvent, sizeBytes: number, noZeroes: boolean, slotBytes: number): Step {
  if (ev.kind === 'client-flags') return { next: 'continue', send: [] };
  if (ev.kind === 'option-too-big') return { next: 'continue', send: [encodeOptionReply(ev.option, NbdRep.ERR_TOO_BIG)] };
  switch (ev.option) {
    case NbdOpt.EXPORT_NAME:
      return { next: 'transmission', send: [encodeExportNameReply(sizeBytes, transmissionFlags, noZeroes)] };
    case NbdOpt.ABORT:
      return { next: 'close', send: [encodeOptionReply(ev.option, NbdRep.ACK)] };
    case NbdOpt.INFO:
    case NbdOpt.GO: {
      decodeInfoRequest(ev.data); // validates the lengths; any export name is the one export
      const info = (b: Buffer): Buffer => encodeOptionReply(ev.option, NbdRep.INFO, b);
      // Maximum block size = slot size: a write must fit one preallocated slot.
      const send = [info(encodeInfoExport(sizeBytes, transmissionFlags)), info(encodeInfoBlockSize(1, 4096, slotBytes)),
        encodeOptionReply(ev.option, NbdRep.ACK)];
      return { next: ev.option === NbdOpt.GO ? 'transmission' : 'continue', send };
    }
    default:
      return { next: 'continue', send: [encodeOptionReply(ev.option, NbdRep.ERR_UNSUP)] };
  }
}

function startTransmission(socket: Socket, pool: SlotPool, sink: IntakeSink, leftover: Buffer[]): void {
  const reader = new RequestReader(socket, pool, sink);
  const feed = readInto(socket, reader);
  const unsubscribe = pool.onFree(() => feed.wake());
  socket.once('close', unsubscribe);
  for (const b of leftover) feed.push(b);
}

/** Simple replies for `cookies` (one buffer, one write). */
export function simpleReplies(cookies: readonly Buffer[], errno = 0): Buffer {
  const out = Buffer.allocUnsafe(cookies.length * SIMPLE_REPLY_HEADER_BYTES);
  cookies.forEach((c, i) => {
    out.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, i * SIMPLE_REPLY_HEADER_BYTES);
    out.writeUInt32BE(errno, i * SIMPLE_REPLY_HEADER_BYTES + 4);
    c.copy(out, i * SIMPLE_REPLY_HEADER_BYTES + 8);
  });
  return out;
}

/** Request headers into a fixed buffer, WRITE payloads into slots; stalls (socket paused) with no free slot. */
class RequestReader implements StallableReader {
  stalled = false;
  private readonly head = Buffer.alloc(REQUEST_HEADER_BYTES);
  private headAt = 0;
  private slot: Slot | null = null;
  private slotAt = 0;

  constructor(private readonly socket: Socket, private readonly pool: SlotPool, private readonly sink: IntakeSink) {}

  feed(chunk: Buffer, at: number): number {
    this.stalled = false;
    for (;;) {
      if (this.slot) {
        if (at === chunk.length) return at;
        at = this.fill(chunk, at);
      } else if (this.headAt === REQUEST_HEADER_BYTES) {
        if (!this.dispatch()) {
          this.stalled = true;
          return at;
        }
      } else {
        if (at === chunk.length) return at;
        const n = chunk.copy(this.head, this.headAt, at, Math.min(chunk.length, at + REQUEST_HEADER_BYTES - this.headAt));
        this.headAt += n;
        at += n;
      }
    }
  }

  private fill(chunk: Buffer, at: number): number {
    const slot = this.slot!;
    const n = chunk.copy(slot.buf, this.slotAt, at, Math.min(chunk.length, at + slot.length - this.slotAt));
    this.slotAt += n;
    if (this.slotAt === slot.length) {
      this.slot = null;
      this.sink.write(slot);
    }
    return at + n;
  }

  /** Acts on a complete header; false when a WRITE finds no free slot (retried on wake). */
  private dispatch(): boolean {
    const h = this.head;
    if (h.readUInt32BE(0) !== NBD_REQUEST_MAGIC) throw new Error(`NBD request with bad magic 0x${h.readUInt32BE(0).toString(16)}`);
    const type = h.readUInt16BE(6);
    if (type === NbdCmd.WRITE) return this.startWrite();
    this.headAt = 0;
    const cookie = Buffer.from(h.subarray(8, 16));
    if (type === NbdCmd.FLUSH) this.sink.flush(this.socket, cookie);
    else if (type === NbdCmd.DISC) this.socket.end();
    else this.socket.write(simpleReplies([cookie], NbdErrno.EINVAL)); // reads and the rest: not part of the floor
    return true;
  }

  private startWrite(): boolean {
    const length = this.head.readUInt32BE(24);
    if (length === 0 || length > this.pool.slotBytes) throw new Error(`NBD write of ${length} bytes (slots hold ${this.pool.slotBytes})`);
    const slot = this.pool.take();
    if (!slot) return false;
    this.headAt = 0;
    slot.offset = readU64(this.head, 16);
    slot.length = length;
    slot.session = this.socket;
    this.head.copy(slot.cookie, 0, 8, 16);
    this.slot = slot;
    this.slotAt = 0;
    return true;
  }
}
