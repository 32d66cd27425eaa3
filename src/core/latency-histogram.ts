// A bounded latency histogram for status and the bench's per-stage breakdown: 4 buckets per power of two
// from 1 µs to ~70 s (a quantile is at most 25 % above the exact one), fixed memory, O(1) per sample, no allocation.

const SUB_BUCKETS = 4;
const OCTAVES = 26; // 2^26 µs ≈ 67 s; slower samples fall in the last bucket
const BUCKETS = OCTAVES * SUB_BUCKETS;

export interface LatencySummary {
  count: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private n = 0;
  private sumMs = 0;
  private maxMs = 0;

  record(ms: number): void {
    if (!(ms >= 0)) return;
    this.counts[bucketOf(ms)]!++;
    this.n++;
    this.sumMs += ms;
    if (ms > this.maxMs) this.maxMs = ms;
  }

  /** The upper edge of the bucket holding quantile q (0..1), in ms; 0 when empty. */
  quantileMs(q: number): number {
    if (this.n === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.n));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.counts[b]!;
      if (seen >= rank) return b === BUCKETS - 1 ? this.maxMs : Math.min(upperEdgeMs(b), this.maxMs);
    }
    return this.maxMs;
  }

  summary(): LatencySummary {
    return {
      count: this.n, meanMs: this.n === 0 ? 0 : this.sumMs / this.n,
      p50Ms: this.quantileMs(0.5), p99Ms: this.quantileMs(0.99), maxMs: this.maxMs,
    };
  }

  reset(): void {
    this.counts.fill(0);
    this.n = 0;
    this.sumMs = 0;
    this.maxMs = 0;
  }
}

function bucketOf(ms: number): number {
  const us = Math.max(1, ms * 1000);
  const octave = Math.floor(Math.log2(us));
  if (octave >= OCTAVES) return BUCKETS - 1;
  const sub = Math.min(SUB_BUCKETS - 1, Math.floor((us / 2 ** octave - 1) * SUB_BUCKETS));
  return octave * SUB_BUCKETS + sub;
}

function upperEdgeMs(b: number): number {
  const octave = Math.floor(b / SUB_BUCKETS);
  const sub = b % SUB_BUCKETS;
  return (2 ** octave * (1 + (sub + 1) / SUB_BUCKETS)) / 1000;
}
