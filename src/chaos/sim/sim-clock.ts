import { assert } from '../../core/assert.js';
import type { Clock, TimerHandle } from '../../core/clock.js';
import { ErrorCode, vrgError } from '../../core/errors.js';

// Virtual time for the simulator. Every timer of a seed's run (the engine's, through Clock; the simulated
// network's delays, disks' and files' latencies; the seed's own fault schedule) goes into one queue, ordered by
// due time and then by the order it was set. run() drives the seed: it lets the process settle (microtasks and
// the few real setImmediate turns that Node streams and the link use), then fires the earliest timer, moving
// time to it; again until the seed's work settles. Nothing waits for the wall clock, so 400 ms of faulted load
// take what the CPU needs, and since every I/O of the run is in memory, the same seed runs the same events in
// the same order: a failure replays exactly.

interface Timer {
  atMs: number;
  n: number;
  fn: () => void;
  cancelled: boolean;
}

/** Real event-loop turns between timer firings: enough for a stream's nextTick and the link's setImmediate. */
const settleTurns = 2;

/** Real turns with no timer set before the run counts as stuck. */
const idleTurnsMax = 100;

function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export class SimClock implements Clock {
  private virtualMs = 0;
  private timersSet = 0;
  /** A binary min-heap on (atMs, n). */
  private readonly heap: Timer[] = [];
  /** Timers fired so far (for the run's summary; equal across replays of a seed). */
  fired = 0;

  /** `epochMs`: the wall-clock time the run starts at (fixed, so timestamps in files replay too). */
  constructor(private readonly epochMs = Date.UTC(2026, 0, 1)) {}

  get elapsedMs(): number {
    return this.virtualMs;
  }

  nowMs(): number {
    return this.epochMs + Math.floor(this.virtualMs);
  }

  monotonicNs(): bigint {
    return BigInt(Math.round(this.virtualMs * 1e6));
  }

  setTimer(ms: number, fn: () => void): TimerHandle {
    const t: Timer = { atMs: this.virtualMs + (Number.isFinite(ms) && ms > 0 ? ms : 0), n: this.timersSet++, fn, cancelled: false };
    this.push(t);
    return { cancel: () => { t.cancelled = true; } };
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimer(ms, resolve));
  }

  /**
   * Drives the run until `work` settles and returns its outcome. A run with no timer left while `work` is
   * pending is stuck for good (nothing can ever wake it): that rejects, as does passing `virtualMsMax`.
   */
  async run<T>(work: Promise<T>, virtualMsMax: number): Promise<T> {
    let settled = false;
    work.then(() => { settled = true; }, () => { settled = true; });
    while (!settled) {
      for (let i = 0; i < settleTurns && !settled; i++) await turn();
      if (settled) break;
      let t = this.pop();
      // A longer chain of real turns (a stream's end, a socket-like close) may still set one.
      for (let i = 0; t === undefined && i < idleTurnsMax && !settled; i++) {
        await turn();
        t = this.pop();
      }
      if (settled) {
        if (t) this.push(t);
        break;
      }
      if (t === undefined) throw vrgError(ErrorCode.TIMEOUT, `the run is stuck at ${this.virtualMs.toFixed(3)} ms of virtual time: no timer left`);
      assert(t.atMs >= this.virtualMs, 'virtual time never goes back');
      this.virtualMs = t.atMs;
      if (this.virtualMs > virtualMsMax) throw vrgError(ErrorCode.TIMEOUT, `the run passed ${virtualMsMax} ms of virtual time`);
      this.fired++;
      t.fn();
    }
    return work;
  }

  private pop(): Timer | undefined {
    while (this.heap.length > 0) {
      const top = this.heap[0]!;
      const last = this.heap.pop()!;
      if (this.heap.length > 0) {
        this.heap[0] = last;
        this.siftDown(0);
      }
      if (!top.cancelled) return top;
    }
    return undefined;
  }

  private push(t: Timer): void {
    const h = this.heap;
    h.push(t);
    for (let i = h.length - 1; i > 0;) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private siftDown(i: number): void {
    const h = this.heap;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && before(h[l]!, h[m]!)) m = l;
      if (r < h.length && before(h[r]!, h[m]!)) m = r;
      if (m === i) return;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
  }
}

function before(a: Timer, b: Timer): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.n < b.n);
}
