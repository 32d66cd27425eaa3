import fc from 'fast-check';
import { isVrgError, type ErrorCode } from '../../src/core/errors.js';

// Shared pieces of the property-based (fuzz) tests: a fixed seed per file (FUZZ_SEED overrides it; a
// failure prints fast-check's own seed and path to replay), byte mutations of valid encodings, and the
// check that a decoder fails only with its documented typed error.

/** fast-check parameters: the fixed seed, `numRuns` scaled by FUZZ_RUNS_SCALE (default 1). */
export function fuzzParams<T>(numRuns: number, extra: fc.Parameters<T> = {}): fc.Parameters<T> {
  const seed = process.env.FUZZ_SEED === undefined ? 0x5eed_f022 : Number(process.env.FUZZ_SEED);
  const scale = Number(process.env.FUZZ_RUNS_SCALE ?? 1);
  return { seed, numRuns: Math.max(1, Math.round(numRuns * scale)), endOnFailure: true, ...extra };
}

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; n: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'duplicate'; at: number; n: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0, 0xff, 0x7f, 0x80, 1) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 32 }) }),
);

function applyMutation(b: Buffer, m: Mutation): Buffer {
  const at = b.length === 0 ? 0 : m.at % (m.kind === 'insert' ? b.length + 1 : b.length);
  switch (m.kind) {
    case 'flip': {
      if (b.length === 0) return b;
      const out = Buffer.from(b);
      out[at] = out[at]! ^ (1 << m.bit);
      return out;
    }
    case 'set': {
      if (b.length === 0) return b;
      const out = Buffer.from(b);
      out[at] = m.value;
      return out;
    }
    case 'insert': return Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
    case 'delete': return Buffer.concat([b.subarray(0, at), b.subarray(at + m.n)]);
    case 'truncate': return Buffer.from(b.subarray(0, at));
    case 'duplicate': return Buffer.concat([b.subarray(0, at + m.n), b.subarray(at)]);
  }
}

/** `valid`'s encodings with 1..4 byte mutations (flip, set, insert, delete, truncate, duplicate). */
export function mutated(valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Buffer> {
  return fc.tuple(valid, fc.array(mutation, { minLength: 1, maxLength: 4 }))
    .map(([v, ms]) => ms.reduce<Buffer>((b, m) => applyMutation(b, m), Buffer.from(v)));
}

/** Valid encodings, mutated ones and fully random bytes, in about equal shares. */
export function fuzzBytes(valid: fc.Arbitrary<Uint8Array>, maxRandom = 256): fc.Arbitrary<Buffer> {
  return fc.oneof(
    valid.map((v) => Buffer.from(v)),
    mutated(valid),
    // size 'max': by default fast-check keeps arrays to a few elements.
    fc.uint8Array({ maxLength: maxRandom, size: 'max' }).map((v) => Buffer.from(v)),
  );
}

/** Cut points (sorted, within [0, length]) to split a stream into chunks. */
export const cuts: fc.Arbitrary<number[]> = fc.array(fc.nat(), { maxLength: 6 });

export function split(b: Buffer, at: readonly number[]): Buffer[] {
  const points = [...new Set(at.map((p) => (b.length === 0 ? 0 : p % (b.length + 1))))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(b.subarray(from, p));
    from = p;
  }
  out.push(b.subarray(from));
  return out;
}

/**
 * Runs `fn`: its value, or the code of the VrgError it threw. Any other throw (a TypeError, a RangeError,
 * a VrgError of another code) is rethrown, failing the property with fast-check's report.
 */
export function typed<T>(fn: () => T, codes: readonly ErrorCode[]): { ok: true; value: T } | { ok: false; code: ErrorCode } {
  try {
    return { ok: true, value: fn() };
  } catch (err) {
    if (isVrgError(err) && codes.includes(err.code)) return { ok: false, code: err.code };
    throw err;
  }
}

/** Buffers and typed arrays as hex, recursively: for deep comparison of decoded messages. */
export function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return `hex:${Buffer.from(v).toString('hex')}`;
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}
