import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { assert } from '../core/assert.js';
import type { BlockMemory } from '../core/buffer-ring.js';
import { elapsedMs, type Clock, type TimerHandle } from '../core/clock.js';
import { ErrorCode, isVrgError, vrgError, type VrgError } from '../core/errors.js';
import { limits } from '../core/limits.js';
import { silentLogger, type Logger } from '../core/log.js';
import type { Random } from '../core/random.js';
import { encodeFrame, FrameFlags, FrameType, openFrame, type DirectionKeys, type FrameDecoder, type RawFrame } from '../protocol/frame.js';
import {
  decodeAck, decodeCheckDigests, decodeCheckRequest, decodeFailoverReady, decodeRekey, decodeRekeyAck, decodeFailoverRequest, decodeVmState, decodeHeartbeat, decodeLinkError, decodeResume, encodeHeartbeat, encodeLinkError, type Resume,
} from '../protocol/messages.js';

// One authenticated link connection (after the handshake in handshake.ts). Every frame after the
// handshake is sealed, with a per-direction sequence starting at 0 (the Auth frame). Control frames
// (ACK, HEARTBEAT, HEARTBEAT_REPLY, LINK_ERROR, RESUME) are opened here; WRITE_BATCH frames are only
// sequence-checked and handed on raw, to be opened in the worker pool.
// Events: 'control' (type, message), 'writeBatch' (seq, RawFrame), 'drain', 'close' (VrgError | null), once.
// Listeners must be attached synchronously when the connection is handed over: delivery starts on the next
// macrotask (setImmediate) after construction.

export interface LinkOptions {
  gatewayId: string;
  role: 'production' | 'dr';
  secret: Buffer;
  clock: Clock;
  random: Random;
  logger?: Logger;
  handshakeTimeoutMs?: number;
  heartbeatIntervalMs?: number;
  heartbeatTimeoutMs?: number;
  frameBytesMax?: number;
}

export interface ConnectionInit {
  sock: Duplex;
  opts: LinkOptions;
  peer: { gatewayId: string; role: string };
  sessionId: Buffer;
  resume: Resume | null;
  sendKeys: DirectionKeys;
  recvKeys: DirectionKeys;
  /** Next sealed seq in each direction once the handshake frames are counted. */
  sendSeq: number;
  recvSeq: number;
  decoder: FrameDecoder;
  /** Frames that arrived after the handshake's last frame, in order. */
  pending: RawFrame[];
  /** Server side: the pairing's configured secret and the secret the peer proved (link-secrets.ts). */
  auth?: { initial: Buffer; secret: Buffer };
}

/** Frames sealed out of order (worker pool) wait for their predecessors; beyond this the link is broken. */
const SEND_REORDER_MAX = 256;
/** After close, how long a socket may take to flush the LinkError before it is destroyed. */
const CLOSE_GRACE_MS = 1_000;
const RTT_EWMA_WEIGHT = 0.2;

const CONTROL_DECODERS: Record<number, (b: Uint8Array) => unknown> = {
  [FrameType.ACK]: decodeAck,
  [FrameType.HEARTBEAT]: decodeHeartbeat,
  [FrameType.HEARTBEAT_REPLY]: decodeHeartbeat,
  [FrameType.LINK_ERROR]: decodeLinkError,
  [FrameType.RESUME]: decodeResume,
  [FrameType.VM_STATE]: decodeVmState,
  [FrameType.CHECK_REQUEST]: decodeCheckRequest,
  [FrameType.CHECK_DIGESTS]: decodeCheckDigests,
  [FrameType.FAILOVER_REQUEST]: decodeFailoverRequest,
  [FrameType.FAILOVER_READY]: decodeFailoverReady,
  [FrameType.REKEY]: decodeRekey,
  [FrameType.REKEY_ACK]: decodeRekeyAck,
};

// Protocol 2: roles are per VM, so every frame type may travel either way (a gateway can be the source of
// some VMs and the target of others on one connection); each receiver checks the VM's role on its side.

export class LinkConnection extends EventEmitter {
  readonly peer: { gatewayId: string; role: string };
  readonly sessionId: Buffer;
  readonly resume: Resume | null;
  /** Server side: which pairing, and the secret this connection proved (a rotation's next one, or the current one). */
  readonly auth: { initial: Buffer; secret: Buffer } | null;
  readonly sendKeys: DirectionKeys;
  readonly recvKeys: DirectionKeys;
  /** Smoothed heartbeat round trip, null until the first reply. */
  rttMs: number | null = null;

  private readonly sock: Duplex;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly role: 'production' | 'dr';
  private readonly decoder: FrameDecoder;
  private readonly heartbeatIntervalMs: number;
  private readonly heartbeatTimeoutMs: number;
  private nextAllocSeq: number;
  private nextWriteSeq: number;
  private recvSeq: number;
  private readonly early = new Map<number, { bytes: Buffer; onWritten?: () => void }>();
  private closed = false;
  private lastRecvNs: bigint;
  private heartbeatId = 0;
  private heartbeatTimer: TimerHandle | null = null;
  private watchdogTimer: TimerHandle | null = null;
  private readonly onData = (chunk: Buffer): void => this.receive(chunk);
  private frameMemory: BlockMemory | null = null;

  constructor(init: ConnectionInit) {
    super();
    this.sock = init.sock;
    this.clock = init.opts.clock;
    this.logger = init.opts.logger ?? silentLogger;
    this.role = init.opts.role;
    this.peer = init.peer;
    this.sessionId = init.sessionId;
    this.resume = init.resume;
    this.auth = init.auth ?? null;
    this.sendKeys = init.sendKeys;
    this.recvKeys = init.recvKeys;
    this.decoder = init.decoder;
    this.nextAllocSeq = init.sendSeq;
    this.nextWriteSeq = init.sendSeq;
    this.recvSeq = init.recvSeq;
    this.heartbeatIntervalMs = init.opts.heartbeatIntervalMs ?? limits.heartbeatIntervalMs;
    this.heartbeatTimeoutMs = init.opts.heartbeatTimeoutMs ?? limits.heartbeatTimeoutMs;
    this.lastRecvNs = this.clock.monotonicNs();
    this.sock.on('error', (err: Error) =>
      this.close(vrgError(ErrorCode.CONNECTION_CLOSED, `link socket error: ${err.message}`, undefined, err)));
    this.sock.on('close', () => this.close(vrgError(ErrorCode.CONNECTION_CLOSED, 'link socket closed')));
    this.sock.on('end', () => this.onEnd());
    this.sock.on('drain', () => this.emit('drain'));
    const pending = init.pending;
    setImmediate(() => this.start(pending));
  }

  get writableNeedDrain(): boolean {
    return this.sock.writableNeedDrain;
  }

  /** Bytes written to the link and not yet taken by the socket (the link's queue). */
  get writableBytes(): number {
    return this.sock.writableLength;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Seals a control frame in this thread with the next send seq. Ignored once closed. */
  sendControl(type: number, header: Uint8Array): void {
    if (this.closed) return;
    const seq = this.nextAllocSeq++;
    this.sendSealed(seq, encodeFrame({ type, seq, header }, { keys: this.sendKeys, encrypt: false }));
  }

  /** Reserves the next send seq for a frame sealed elsewhere; hand it back through sendSealed. */
  allocSendSeq(): number {
    return this.nextAllocSeq++;
  }

  /**
   * Writes frames strictly in seq order; early ones wait (bounded). Ignored once closed. `onWritten` runs once
   * the socket no longer needs `frameBytes` (written, or dropped with the connection): a pooled frame's memory
   * may be reused from then on.
   */
  sendSealed(seq: number, frameBytes: Buffer, onWritten?: () => void): void {
    if (this.closed) {
      onWritten?.();
      return;
    }
    assert(seq >= this.nextWriteSeq && seq < this.nextAllocSeq && !this.early.has(seq), `send seq ${seq} was allocated once`);
    if (seq !== this.nextWriteSeq) {
      this.early.set(seq, { bytes: frameBytes, onWritten });
      if (this.early.size > SEND_REORDER_MAX) {
        this.close(vrgError(ErrorCode.FRAME_SEQUENCE, `send seq ${this.nextWriteSeq} still missing with ${this.early.size} frames queued behind it`));
      }
      return;
    }
    this.write(frameBytes, onWritten);
    for (let next = this.early.get(this.nextWriteSeq); next !== undefined; next = this.early.get(this.nextWriteSeq)) {
      this.early.delete(this.nextWriteSeq);
      this.write(next.bytes, next.onWritten);
    }
  }

  private write(bytes: Buffer, onWritten?: () => void): void {
    // The callback runs on success and on error (a destroyed socket fails its queued writes).
    if (onWritten) this.sock.write(bytes, () => onWritten());
    else this.sock.write(bytes);
    this.nextWriteSeq++;
  }

  /**
   * Large frames are received into `memory` from now on; the 'writeBatch' listener frees each batch frame's
   * bytes once it is done with them (control frames are freed here).
   */
  useFrameMemory(memory: BlockMemory): void {
    this.frameMemory = memory;
    this.decoder.memory = memory;
  }

  private freeFrame(f: RawFrame): void {
    this.frameMemory?.release(f.bytes);
  }

  /** Sends a LinkError first when `err` is given (and the send stream has no gap), then closes. Idempotent. */
  close(err?: Error): void {
    this.shutdown(err, true);
  }

  private shutdown(err: Error | undefined, notifyPeer: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.heartbeatTimer?.cancel();
    this.watchdogTimer?.cancel();
    for (const e of this.early.values()) e.onWritten?.();
    this.early.clear();
    this.sock.off('data', this.onData);
    this.decoder.dispose();
    const sock = this.sock;
    if (err && notifyPeer && this.nextWriteSeq === this.nextAllocSeq && sock.writable && !sock.destroyed) {
      const code = isVrgError(err) ? err.code : 'VRG_INTERNAL';
      const seq = this.nextAllocSeq++;
      const frame = encodeFrame(
        { type: FrameType.LINK_ERROR, seq, header: encodeLinkError({ code, message: err.message.slice(0, 1024) }) },
        { keys: this.sendKeys, encrypt: false });
      this.nextWriteSeq++;
      sock.end(frame);
      sock.resume(); // discard whatever still arrives so the peer's FIN is seen
      this.clock.setTimer(CLOSE_GRACE_MS, () => sock.destroy());
    } else {
      sock.destroy();
    }
    this.logger.debug({ peer: this.peer.gatewayId, code: (err as VrgError | undefined)?.code, err: err?.message }, 'link connection closed');
    this.emit('close', err ?? null);
  }

  private start(pending: RawFrame[]): void {
    if (this.closed) return;
    for (const f of pending) {
      if (this.closed) return;
      this.handleFrame(f);
    }
    if (this.closed) return;
    this.sock.on('data', this.onData);
    this.sock.resume();
    this.scheduleHeartbeat();
    this.armWatchdog(this.heartbeatTimeoutMs);
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    this.lastRecvNs = this.clock.monotonicNs();
    let frames: RawFrame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.close(err as Error);
      return;
    }
    for (const f of frames) {
      if (this.closed) this.freeFrame(f);
      else this.handleFrame(f);
    }
  }

  private onEnd(): void {
    if (this.decoder.bufferedBytes > 0) {
      this.close(vrgError(ErrorCode.FRAME_MALFORMED, `link ended inside a frame (${this.decoder.bufferedBytes} bytes buffered)`));
    } else {
      this.shutdown(vrgError(ErrorCode.CONNECTION_CLOSED, 'peer closed the link'), false);
    }
  }

  private handleFrame(f: RawFrame): void {
    if (f.type === FrameType.WRITE_BATCH) {
      this.acceptWriteBatch(f);
      return;
    }
    try {
      this.handleControlFrame(f);
    } finally {
      this.freeFrame(f); // the decoded message holds no view of the frame's bytes
    }
  }

  private handleControlFrame(f: RawFrame): void {
    let header: Buffer;
    try {
      header = openFrame(f, this.recvKeys, this.recvSeq).header;
    } catch (err) {
      this.close(err as Error);
      return;
    }
    this.recvSeq++;
    const decode = CONTROL_DECODERS[f.type];
    if (decode === undefined) {
      this.close(vrgError(ErrorCode.FRAME_UNEXPECTED, `unexpected frame type ${f.type} on the ${this.role} side`, { type: f.type }));
      return;
    }
    let msg: unknown;
    try {
      msg = decode(header);
    } catch (err) {
      this.close(err as Error);
      return;
    }
    this.handleControl(f.type, msg);
  }

  /** Data frames are opened in the worker pool: only the seal's presence and the sequence are checked here. */
  private acceptWriteBatch(f: RawFrame): void {
    if ((f.flags & FrameFlags.SEALED) === 0 || f.tag === null) {
      this.freeFrame(f);
      this.close(vrgError(ErrorCode.FRAME_AUTH_FAILED, `write batch seq ${f.seq} is not sealed`));
      return;
    }
    if (f.seq !== this.recvSeq) {
      this.freeFrame(f);
      this.close(vrgError(ErrorCode.FRAME_SEQUENCE, `frame seq ${f.seq}, expected ${this.recvSeq}`, { seq: f.seq, expectedSeq: this.recvSeq }));
      return;
    }
    if (this.listenerCount('writeBatch') === 0) {
      this.freeFrame(f);
      this.close(vrgError(ErrorCode.FRAME_UNEXPECTED, `write batch seq ${f.seq} on a ${this.role} connection that targets no VM`));
      return;
    }
    const seq = this.recvSeq++;
    this.emit('writeBatch', seq, f);
  }

  private handleControl(type: number, msg: unknown): void {
    if (type === FrameType.HEARTBEAT) {
      this.sendControl(FrameType.HEARTBEAT_REPLY, encodeHeartbeat(msg as { id: number; sentAtUs: number }));
    } else if (type === FrameType.HEARTBEAT_REPLY) {
      this.measureRtt(msg as { id: number; sentAtUs: number });
    }
    this.emit('control', type, msg);
    if (type === FrameType.LINK_ERROR) {
      const m = msg as { code: string; message: string };
      this.shutdown(vrgError(ErrorCode.PEER_ERROR, `peer closed the link: ${m.code}: ${m.message}`,
        { peerCode: m.code, peerMessage: m.message }), false);
    }
  }

  private measureRtt(reply: { id: number; sentAtUs: number }): void {
    const nowUs = Number(this.clock.monotonicNs() / 1000n);
    const sample = (nowUs - reply.sentAtUs) / 1000;
    if (reply.id === 0 || reply.id > this.heartbeatId || sample < 0) return; // not one of ours
    this.rttMs = this.rttMs === null ? sample : this.rttMs + RTT_EWMA_WEIGHT * (sample - this.rttMs);
  }

  private scheduleHeartbeat(): void {
    this.heartbeatTimer = this.clock.setTimer(this.heartbeatIntervalMs, () => {
      if (this.closed) return;
      const sentAtUs = Number(this.clock.monotonicNs() / 1000n);
      this.sendControl(FrameType.HEARTBEAT, encodeHeartbeat({ id: ++this.heartbeatId, sentAtUs }));
      this.scheduleHeartbeat();
    });
  }

  /** Lazily re-armed: fires at most once per timeout, however many frames arrive. */
  private armWatchdog(ms: number): void {
    this.watchdogTimer = this.clock.setTimer(ms, () => {
      if (this.closed) return;
      const silentMs = elapsedMs(this.clock, this.lastRecvNs);
      if (silentMs >= this.heartbeatTimeoutMs) {
        this.close(vrgError(ErrorCode.TIMEOUT, `nothing received from the peer for ${Math.round(silentMs)} ms`));
      } else {
        this.armWatchdog(Math.max(1, Math.ceil(this.heartbeatTimeoutMs - silentMs)));
      }
    });
  }
}
