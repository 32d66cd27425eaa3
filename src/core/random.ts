import { randomBytes } from 'node:crypto';

// Randomness is injected so a simulator can replay a run from one seed.
export interface Random {
  /** `n` random bytes (cryptographically strong for the system source). */
  bytes(n: number): Buffer;
  /** A float in [0, 1). */
  float(): number;
}

export const systemRandom: Random = {
  bytes: (n) => randomBytes(n),
  float: () => randomBytes(4).readUInt32BE(0) / 0x1_0000_0000,
};

/** Deterministic generator (xorshift128+) for tests, simulators and the demo load. Not for keys. */
export function seededRandom(seed: number): Random & { uint32(): number } {
  let s0 = BigInt.asUintN(64, BigInt(seed) * 0x9e3779b97f4a7c15n + 1n);
  let s1 = BigInt.asUintN(64, (s0 ^ 0xbf58476d1ce4e5b9n) * 0x94d049bb133111ebn + 7n);
  const next64 = (): bigint => {
    let x = s0;
    const y = s1;
    s0 = y;
    x = BigInt.asUintN(64, x ^ (x << 23n));
    s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n);
    return BigInt.asUintN(64, s1 + y);
  };
  const uint32 = (): number => Number(next64() >> 32n);
  return {
    uint32,
    float: () => uint32() / 0x1_0000_0000,
    bytes(n) {
      const out = Buffer.allocUnsafe(n);
      let i = 0;
      for (; i + 4 <= n; i += 4) out.writeUInt32LE(uint32(), i);
      for (; i < n; i++) out[i] = uint32() & 0xff;
      return out;
    },
  };
}
