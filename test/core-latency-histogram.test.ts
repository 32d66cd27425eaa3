import t from 'tap';
import { LatencyHistogram } from '../src/core/latency-histogram.js';

t.test('quantiles are within one bucket (≤ 25 % above) of the exact ones', async (t) => {
  const h = new LatencyHistogram();
  const samples: number[] = [];
  let x = 12345;
  for (let i = 0; i < 10_000; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const ms = 0.01 + (x / 2 ** 31) ** 3 * 500; // 10 µs .. 500 ms, skewed low
    samples.push(ms);
    h.record(ms);
  }
  samples.sort((a, b) => a - b);
  for (const q of [0.5, 0.9, 0.99]) {
    const exact = samples[Math.ceil(q * samples.length) - 1]!;
    const got = h.quantileMs(q);
    t.ok(got >= exact && got <= exact * 1.25, `q${q}: ${got.toFixed(4)} ms for exact ${exact.toFixed(4)} ms`);
  }
  const s = h.summary();
  t.equal(s.count, 10_000);
  t.equal(s.maxMs, samples.at(-1));
  t.ok(Math.abs(s.meanMs - samples.reduce((a, b) => a + b, 0) / samples.length) < 1e-9, 'mean is exact');
});

t.test('empty, bad and huge samples', async (t) => {
  const h = new LatencyHistogram();
  t.same(h.summary(), { count: 0, meanMs: 0, p50Ms: 0, p99Ms: 0, maxMs: 0 });
  h.record(Number.NaN);
  h.record(-1);
  t.equal(h.summary().count, 0, 'NaN and negative samples are ignored');
  h.record(10 * 60_000);
  t.equal(h.quantileMs(0.5), 10 * 60_000, 'beyond the last bucket: the max');
  h.reset();
  t.equal(h.summary().count, 0, 'reset empties it');
});
