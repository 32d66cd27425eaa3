import type net from 'node:net';
import { assert } from '../../core/assert.js';
import type { Clock, TimerHandle } from '../../core/clock.js';
import type { Random } from '../../core/random.js';
import type { Stream, ToxicJson } from './toxic.js';

// One connection through a fault proxy: the client's socket, the upstream socket, and a pipe per direction
// that passes each chunk through the toxics of that direction in the order they were added. A chunk's bytes
// leave in order; toxics that wait (latency, bandwidth, slicer) hold the chunks behind them (TCP has no
// reordering to model). Each direction holds at most `queueBytesMax` before it stops reading its source.

/** Per connection and toxic: whether the toxic affects this connection, and what it counts. */
interface ToxicState {
  affected: boolean;
  timer: TimerHandle | null;
  /** bandwidth: when the pipe may send again (ms, clock time). */
  nextSendMs: number;
  /** limit_data: bytes passed so far. */
  passedBytes: number;
  /** reset_peer: armed by the first chunk. */
  resetArmed: boolean;
}

export interface LinkHost {
  readonly clock: Clock;
  readonly random: Random;
  /** The toxics of one direction, in the order they act. */
  toxics(stream: Stream): readonly ToxicJson[];
  /** Counts what the toxics did (the proxy's JSON and `vrg chaos`'s report). */
  count(event: 'corrupted' | 'reset' | 'limited' | 'timedOut' | 'dropped', n?: number): void;
}

const queueBytesMax = 1024 * 1024;

export class Link {
  private readonly states = new Map<string, ToxicState>();
  private readonly pipes: Pipe[];
  closed = false;

  constructor(private readonly host: LinkHost, readonly client: net.Socket, readonly upstream: net.Socket,
    private readonly onClose: () => void) {
    this.pipes = [new Pipe(this, host, 'upstream', client, upstream), new Pipe(this, host, 'downstream', upstream, client)];
    this.pipes.forEach((from) => {
      from.src.on('error', () => this.close());
      // Closed after its FIN: what it sent is still delivered; closed without one (a reset): the link goes.
      from.src.on('close', () => (from.ended ? this.pipeDone() : this.close()));
    });
    for (const t of [...host.toxics('upstream'), ...host.toxics('downstream')]) this.toxicAdded(t);
  }

  /** Both directions delivered their FIN, or one did and its source socket is gone: nothing more can pass. */
  pipeDone(): void {
    if (this.pipes.every((p) => p.finished) || this.pipes.some((p) => p.finished && p.src.destroyed)) this.close();
  }

  state(t: ToxicJson): ToxicState {
    let s = this.states.get(t.name);
    if (!s) {
      s = { affected: this.host.random.float() < t.toxicity, timer: null, nextSendMs: 0, passedBytes: 0, resetArmed: false };
      this.states.set(t.name, s);
    }
    return s;
  }

  /** A toxic that starts acting: the timeout toxic's clock starts now, as in Toxiproxy. */
  toxicAdded(t: ToxicJson): void {
    const s = this.state(t);
    if (!s.affected) return;
    if (t.type === 'timeout' && t.attributes.timeout! > 0) {
      s.timer = this.host.clock.setTimer(t.attributes.timeout!, () => {
        this.host.count('timedOut');
        this.close();
      });
    }
    if (t.type === 'down') this.close();
  }

  toxicRemoved(name: string): void {
    this.states.get(name)?.timer?.cancel();
    this.states.delete(name);
    for (const p of this.pipes) p.kick(); // a removed timeout toxic lets data through again
  }

  /** Both sockets destroyed; `reset` sends a TCP RST to both peers instead of a FIN. */
  close(reset = false): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.states.values()) s.timer?.cancel();
    for (const s of [this.client, this.upstream]) {
      if (reset && !s.destroyed && !s.connecting) s.resetAndDestroy();
      else s.destroy();
    }
    this.onClose();
  }
}

class Pipe {
  private readonly queue: Array<{ data: Buffer; atMs: number }> = [];
  private queuedBytes = 0;
  private running = false;
  /** The source sent its FIN. */
  ended = false;
  private ending = false;
  /** ... and everything before it was passed on, and the FIN forwarded. */
  finished = false;

  constructor(private readonly link: Link, private readonly host: LinkHost, private readonly stream: Stream,
    readonly src: net.Socket, private readonly dst: net.Socket) {
    src.on('data', (data: Buffer) => {
      this.queue.push({ data, atMs: host.clock.nowMs() });
      this.queuedBytes += data.length;
      if (this.queuedBytes > queueBytesMax) src.pause();
      this.kick();
    });
    src.on('end', () => {
      this.ended = true;
      this.kick();
    });
  }

  kick(): void {
    if (this.running || this.link.closed) return;
    this.running = true;
    void this.run().finally(() => {
      this.running = false;
      if ((this.queue.length > 0 || (this.ended && !this.ending)) && !this.link.closed) this.kick();
    });
  }

  private async run(): Promise<void> {
    while (this.queue.length > 0 && !this.link.closed) {
      const chunk = this.queue.shift()!;
      this.queuedBytes -= chunk.data.length;
      if (this.queuedBytes <= queueBytesMax / 2 && this.src.isPaused()) this.src.resume();
      const toxics = this.host.toxics(this.stream).filter((t) => this.link.state(t).affected);
      await this.pass(toxics, 0, chunk.data, chunk.atMs);
    }
    if (this.ended && this.queue.length === 0 && !this.link.closed && !this.ending) {
      this.ending = true;
      const slowClose = this.host.toxics(this.stream).find((t) => t.type === 'slow_close' && this.link.state(t).affected);
      if (slowClose) await this.wait(slowClose.attributes.delay!);
      const done = (): void => {
        this.finished = true;
        this.link.pipeDone();
      };
      if (this.dst.destroyed) done();
      else this.dst.end(done);
    }
  }

  private wait(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => this.host.clock.setTimer(ms, resolve));
  }

  /** `data` through toxics[i..], each calling on to the next for every piece it lets through. */
  private async pass(toxics: readonly ToxicJson[], i: number, data: Buffer, atMs: number): Promise<void> {
    if (this.link.closed || data.length === 0) return;
    const t = toxics[i];
    if (t === undefined) return this.write(data);
    const a = t.attributes;
    const s = this.link.state(t);
    const next = (piece: Buffer): Promise<void> => this.pass(toxics, i + 1, piece, atMs);
    switch (t.type) {
      case 'latency': {
        const jitter = a.jitter! > 0 ? Math.floor(this.host.random.float() * 2 * a.jitter!) - a.jitter! : 0;
        await this.wait(atMs + a.latency! + jitter - this.host.clock.nowMs());
        return next(data);
      }
      case 'bandwidth': {
        if (a.rate === 0) return next(data);
        const pieceBytes = Math.max(1, a.rate! * 100); // 100 ms of the rate per piece, as Toxiproxy does
        for (let at = 0; at < data.length && !this.link.closed; at += pieceBytes) {
          const piece = data.subarray(at, at + pieceBytes);
          s.nextSendMs = Math.max(s.nextSendMs, this.host.clock.nowMs()) + piece.length / a.rate!;
          await this.wait(s.nextSendMs - this.host.clock.nowMs());
          await next(piece);
        }
        return;
      }
      case 'slicer': return this.slice(data, a, next);
      case 'limit_data': {
        const room = a.bytes! - s.passedBytes;
        const piece = data.subarray(0, Math.max(0, room));
        s.passedBytes += piece.length;
        await next(piece);
        if (s.passedBytes >= a.bytes!) {
          await this.flushed();
          this.host.count('limited');
          this.link.close();
        }
        return;
      }
      case 'timeout':
        this.host.count('dropped', data.length);
        return;
      case 'reset_peer': {
        if (s.resetArmed) return;
        s.resetArmed = true;
        await this.wait(a.timeout!);
        this.host.count('reset');
        this.link.close(true);
        return;
      }
      case 'corrupt': return next(this.corrupt(data, a));
      case 'slow_close':
      case 'down':
        return next(data);
    }
  }

  private async slice(data: Buffer, a: Record<string, number>, next: (piece: Buffer) => Promise<void>): Promise<void> {
    const avg = Math.max(1, a.average_size!);
    let at = 0;
    while (at < data.length && !this.link.closed) {
      const variation = a.size_variation! > 0 ? Math.floor(this.host.random.float() * 2 * a.size_variation!) - a.size_variation! : 0;
      const size = Math.max(1, avg + variation);
      await next(data.subarray(at, at + size));
      at += size;
      if (at < data.length) await this.wait(a.delay! / 1000);
    }
  }

  /** A copy of `data` with `bits` random bits flipped, in `probability` of the chunks. */
  private corrupt(data: Buffer, a: Record<string, number>): Buffer {
    if (this.host.random.float() >= a.probability!) return data;
    const out = Buffer.from(data);
    for (let k = 0; k < a.bits!; k++) {
      const bit = Math.floor(this.host.random.float() * out.length * 8);
      out[bit >> 3]! ^= 1 << (bit & 7);
    }
    assert(!out.equals(data) || a.bits! % 2 === 0, 'a corrupt chunk differs from its input');
    this.host.count('corrupted');
    return out;
  }

  private async write(data: Buffer): Promise<void> {
    if (this.dst.destroyed) return;
    if (!this.dst.write(data)) await new Promise<void>((resolve) => {
      const done = (): void => {
        this.dst.off('drain', done);
        this.dst.off('close', done);
        resolve();
      };
      this.dst.on('drain', done);
      this.dst.on('close', done);
    });
  }

  /** Resolves once what was written to `dst` has left the process (before a close cuts it off). */
  private flushed(): Promise<void> {
    if (this.dst.destroyed || this.dst.writableLength === 0) return Promise.resolve();
    return new Promise((resolve) => this.dst.write(Buffer.alloc(0), () => resolve()));
  }
}
