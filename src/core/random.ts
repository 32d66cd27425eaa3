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

/** Deterministic generator (sfc32) for tests, simulators and the demo load. Not for keys. */
export function seededRandom(seed: number): Random & { uint32(): number } {
  let a = 0x9e3779b9;
  let b = 0x243f6a88;
  let c = 0xb7e15162;
  let d = seed >>> 0;
  const uint32 = (): number => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  for (let i = 0; i < 15; i++) uint32(); // mix the seed in
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
