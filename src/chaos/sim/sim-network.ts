import { Duplex } from 'node:stream';
import { systemClock, type Clock } from '../../core/clock.js';
import { ErrorCode, vrgError } from '../../core/errors.js';
import { seededRandom } from '../../core/random.js';
import type { Listener, Transport } from '../../link/transport.js';

// An in-process network for the link: no sockets. listen() registers a server under host:port in a
// map (port 0 allocates one), connect() builds a pair of Duplex ends wired to each other and hands one
// to the listener. Each direction delivers bytes strictly in order (TCP semantics): a FaultPlan driven
// by a seeded PRNG may, per chunk written, split it into pieces, delay it, cut the connection (both ends
// destroyed, bytes in flight lost, possibly after a prefix of the chunk arrived) or start a partition
// (every live connection cut, new ones refused for a while), or flip a bit in a piece (a corruption TCP's
// checksum missed: the link's AES-GCM tag must refuse the frame). It never reorders, drops or duplicates
// bytes inside a connection: TCP hides those from the application, which sees them as delays and cuts.
//
// The decisions come from one seeded stream. On the wall clock, which chunk draws which number depends on
// timers and the event loop, so a seed replays the same kind of run; on the simulator's virtual time
// (`clock`: a SimClock) it replays the same run.

export interface FaultPlanOptions {
  seed: number;
  /** Large writes are considered in segments of at most this many bytes (default 64 KiB). */
  segmentBytes?: number;
  /** Per segment: probability the connection is cut (both ends destroyed) somewhere in it. */
  cutProbability?: number;
  /** Per segment: probability it is delivered in several pieces. */
  splitProbability?: number;
  /** Per piece: probability its delivery is delayed by 1..maxDelayMs. */
  delayProbability?: number;
  maxDelayMs?: number;
  /** Per write: probability a partition starts (all connections cut, connects refused). */
  partitionProbability?: number;
  /** Partition length, uniform in [min, max] ms. */
  partitionMinMs?: number;
  partitionMaxMs?: number;
  /** Per piece: probability one of its bits is flipped. */
  corruptProbability?: number;
  /** Delays, partitions and latency run on this clock (default: the wall clock). */
  clock?: Clock;
  /** Each chunk's time on the wire, one way (default 0). */
  latencyMs?: number;
}

export interface FaultCounters {
  chunks: number;
  splits: number;
  delays: number;
  cuts: number;
  partitions: number;
  refused: number;
  connections: number;
  corrupted: number;
}

export class FaultPlan {
  enabled = true;
  readonly counters: FaultCounters = { chunks: 0, splits: 0, delays: 0, cuts: 0, partitions: 0, refused: 0, connections: 0, corrupted: 0 };
  private readonly rnd: ReturnType<typeof seededRandom>;
  private partitionedUntil = 0;
  private readonly o: Required<Omit<FaultPlanOptions, 'clock'>>;
  readonly clock: Clock;

  constructor({ clock, ...opts }: FaultPlanOptions) {
    this.o = {
      segmentBytes: 64 * 1024, cutProbability: 0.01, splitProbability: 0.2, delayProbability: 0.05, maxDelayMs: 5,
      partitionProbability: 0.001, partitionMinMs: 50, partitionMaxMs: 400, corruptProbability: 0, latencyMs: 0, ...opts,
    };
    this.rnd = seededRandom(opts.seed);
    this.clock = clock ?? systemClock;
  }

  get latencyMs(): number {
    return this.o.latencyMs;
  }

  private chance(p: number): boolean {
    return this.enabled && this.rnd.float() < p;
  }

  private int(lo: number, hi: number): number {
    return lo + (this.rnd.uint32() % (hi - lo + 1));
  }

  /** Stops injecting faults and ends any partition. */
  stop(): void {
    this.enabled = false;
    this.partitionedUntil = 0;
  }

  get partitioned(): boolean {
    return this.enabled && this.clock.nowMs() < this.partitionedUntil;
  }

  /**
   * The fate of one written chunk. Like TCP, a large write travels as segments (up to `segmentBytes`);
   * each segment may be split into smaller pieces and delayed, and the connection may be cut after any
   * piece (so a cut often lands mid-frame). All pieces are delivered in order.
   */
  plan(len: number): { pieces: Array<{ bytes: number; delayMs: number }>; cutAfter: number | null; partitionMs: number } {
    this.counters.chunks++;
    const pieces: Array<{ bytes: number; delayMs: number }> = [];
    let cutAfter: number | null = null;
    for (let at = 0; at < len && cutAfter === null;) {
      const seg = Math.min(this.o.segmentBytes, len - at);
      let bounds = [0, seg];
      if (seg > 1 && this.chance(this.o.splitProbability)) {
        this.counters.splits++;
        const n = this.int(1, Math.min(4, seg - 1));
        const cuts = new Set<number>();
        while (cuts.size < n) cuts.add(this.int(1, seg - 1));
        bounds = [0, ...[...cuts].sort((a, b) => a - b), seg];
      }
      for (let i = 1; i < bounds.length; i++) {
        const delayMs = this.chance(this.o.delayProbability) ? this.int(1, this.o.maxDelayMs) : 0;
        if (delayMs) this.counters.delays++;
        pieces.push({ bytes: bounds[i]! - bounds[i - 1]!, delayMs });
      }
      if (this.chance(this.o.cutProbability)) cutAfter = this.int(pieces.length - bounds.length + 1, pieces.length - 1);
      at += seg;
    }
    const partitionMs = this.chance(this.o.partitionProbability) ? this.int(this.o.partitionMinMs, this.o.partitionMaxMs) : 0;
    return { pieces, cutAfter, partitionMs };
  }

  /** `piece` (a copy the caller owns), maybe with one bit flipped. */
  maybeCorrupt(piece: Buffer): Buffer {
    if (piece.length === 0 || !this.chance(this.o.corruptProbability)) return piece;
    this.counters.corrupted++;
    const bit = this.rnd.uint32() % (piece.length * 8);
    piece[bit >> 3]! ^= 1 << (bit & 7);
    return piece;
  }

  startPartition(ms: number): void {
    this.counters.partitions++;
    this.partitionedUntil = this.clock.nowMs() + ms;
  }

  /** Destroy with an ECONNRESET error (sometimes) or quietly. */
  resetError(): Error | undefined {
    if (this.rnd.float() < 0.5) return undefined;
    return Object.assign(new Error('read ECONNRESET (simulated)'), { code: 'ECONNRESET' });
  }
}

/** One end of a simulated connection. Writes to it are delivered to its peer's readable side. */
class SimEnd extends Duplex {
  peer!: SimEnd;
  /** Deliveries in this direction, in order. */
  private chain: Promise<void> = Promise.resolve();
  /** The FIN (push(null)) was delivered to the peer. */
  private finSent = false;

  constructor(private readonly net: SimNetwork) {
    super({ allowHalfOpen: false });
  }

  override _read(): void {
    // Pushes come from the peer's writes; flow control is the writer waiting for delivery.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const fate = this.net.plan.plan(chunk.length);
    const plan = this.net.plan;
    const sleep = (ms: number) => new Promise<void>((r) => plan.clock.setTimer(ms, r));
    this.chain = this.chain.then(async () => {
      if (plan.latencyMs > 0) await sleep(plan.latencyMs);
      let at = 0;
      for (let i = 0; i < fate.pieces.length; i++) {
        const piece = fate.pieces[i]!;
        if (piece.delayMs) await sleep(piece.delayMs);
        if (this.destroyed || this.finSent || this.peer.destroyed) return;
        // A copy, as a socket's kernel buffer is: the writer may reuse its memory once its callback ran.
        this.peer.push(this.net.plan.maybeCorrupt(Buffer.from(chunk.subarray(at, at + piece.bytes))));
        at += piece.bytes;
        if (fate.cutAfter === i) {
          this.net.cut(this);
          return;
        }
      }
      if (fate.partitionMs) this.net.partition(fate.partitionMs);
    });
    // The writer's callback waits for delivery, so the writable buffer (and 'drain') behave like a socket's.
    this.chain.then(() => cb(), (err: Error) => cb(err));
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.chain = this.chain.then(() => this.sendFin()); // FIN after everything written before it
    this.chain.then(() => cb(), (err: Error) => cb(err));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.net.live.delete(this);
    // Like closing a socket: the peer sees a FIN (after any piece being delivered; the rest is dropped).
    this.chain.then(() => this.sendFin(), () => undefined);
    cb(err);
  }

  private sendFin(): void {
    if (this.finSent) return;
    this.finSent = true;
    if (!this.peer.destroyed) this.peer.push(null);
  }

  /** A socket would have these; harmless no-ops here. */
  setNoDelay(): this {
    return this;
  }
}

/**
 * One gateway instance's access to the network: kill() (the host lost power) destroys its connections and
 * listeners at once and refuses it anything after, while the network and its other hosts go on.
 */
export class HostTransport implements Transport {
  private dead = false;
  private readonly ends = new Set<Duplex>();
  private readonly listeners = new Set<Listener>();

  constructor(private readonly net: SimNetwork) {}

  async connect(host: string, port: number): Promise<Duplex> {
    this.check(`connect to ${host}:${port}`);
    const end = await this.net.connect(host, port);
    return this.track(end);
  }

  async listen(host: string, port: number, onConnection: (s: Duplex) => void): Promise<Listener> {
    this.check(`listen on ${host}:${port}`);
    const l = await this.net.listen(host, port, (s) => onConnection(this.track(s)));
    this.listeners.add(l);
    return l;
  }

  kill(): void {
    this.dead = true;
    for (const e of this.ends) e.destroy();
    for (const l of this.listeners) void l.close();
  }

  private track(end: Duplex): Duplex {
    if (this.dead) {
      end.destroy();
      return end;
    }
    this.ends.add(end);
    end.once('close', () => this.ends.delete(end));
    return end;
  }

  private check(what: string): void {
    if (this.dead) throw vrgError(ErrorCode.CONNECTION_CLOSED, `${what} failed: the host is down (simulated)`);
  }
}

export class SimNetwork implements Transport {
  readonly plan: FaultPlan;
  readonly live = new Set<SimEnd>();
  private readonly servers = new Map<string, (s: SimEnd) => void>();
  private nextPort = 40_000;

  constructor(plan: FaultPlan | FaultPlanOptions) {
    this.plan = plan instanceof FaultPlan ? plan : new FaultPlan(plan);
  }

  /** Hard reset of one connection: both ends destroyed at once, in-flight bytes lost. */
  cut(end: SimEnd): void {
    this.plan.counters.cuts++;
    const err = this.plan.resetError();
    end.destroy(err);
    end.peer.destroy(this.plan.resetError());
  }

  partition(ms: number): void {
    this.plan.startPartition(ms);
    for (const end of [...this.live]) {
      if (end.destroyed) continue;
      this.plan.counters.cuts++;
      end.destroy();
      end.peer.destroy();
    }
  }

  async connect(host: string, port: number) {
    await new Promise((r) => setImmediate(r));
    const accept = this.servers.get(`${host}:${port}`);
    if (!accept || this.plan.partitioned) {
      this.plan.counters.refused++;
      throw vrgError(ErrorCode.CONNECTION_CLOSED, `connect to ${host}:${port} failed: connect ECONNREFUSED (simulated)`, { host, port });
    }
    const a = new SimEnd(this);
    const b = new SimEnd(this);
    // Until the server accepts it, the server end has no listeners of its own (as a socket in the
    // kernel's accept queue has none in JS): a reset before then must not be an unhandled 'error'.
    const beforeAccept = (): void => undefined;
    b.on('error', beforeAccept);
    a.peer = b;
    b.peer = a;
    this.live.add(a);
    this.live.add(b);
    this.plan.counters.connections++;
    setImmediate(() => {
      b.off('error', beforeAccept);
      accept(b);
    });
    return a;
  }

  async listen(host: string, port: number, onConnection: (s: Duplex) => void): Promise<Listener> {
    const bound = port === 0 ? this.nextPort++ : port;
    const key = `${host}:${bound}`;
    if (this.servers.has(key)) throw vrgError(ErrorCode.CONNECTION_CLOSED, `listen ${key}: EADDRINUSE (simulated)`);
    const accepted = new Set<SimEnd>();
    this.servers.set(key, (s) => {
      if (s.destroyed) return;
      accepted.add(s);
      s.once('close', () => accepted.delete(s));
      onConnection(s);
    });
    return {
      port: bound,
      close: async () => {
        this.servers.delete(key);
        for (const s of accepted) s.destroy();
      },
    };
  }
}
