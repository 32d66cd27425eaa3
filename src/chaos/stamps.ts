// Stamped writes: each write fills one 4 KiB block with its history index, so a replica image tells
// which prefix of the write history it holds (or that it holds none: a mix that production never had).

import { seededRandom } from '../core/random.js';

export const blockBytes = 4096;

export function stampedBlock(stamp: number, block: number): Buffer {
  const b = Buffer.alloc(blockBytes);
  for (let at = 0; at < blockBytes; at += 16) {
    b.writeUInt32LE(stamp, at);
    b.writeUInt32LE(block, at + 4);
    b.writeUInt32LE(stamp ^ 0x5a5a5a5a, at + 8);
    b.writeUInt32LE(0xc0ffee, at + 12);
  }
  return b;
}

/** The stamp a block holds: 0 for never written (zeros), -1 for content no write produced. */
export function stampOf(image: Buffer, block: number): number {
  const at = block * blockBytes;
  const slice = image.subarray(at, at + blockBytes);
  if (slice.every((x) => x === 0)) return 0;
  const stamp = slice.readUInt32LE(0);
  return slice.equals(stampedBlock(stamp, block)) ? stamp : -1;
}

/**
 * History: blocks[i - 1] is the block written by stamp i (stamps 1..n in order). Returns the range of
 * prefix lengths k the image equals (production after its first k writes), or null if there is none.
 */
export function prefixOf(image: Buffer, blocks: readonly number[]): { lo: number; hi: number } | null {
  const writesTo = new Map<number, number[]>();
  blocks.forEach((b, i) => {
    const list = writesTo.get(b) ?? [];
    list.push(i + 1);
    writesTo.set(b, list);
  });
  let lo = 0;
  let hi = blocks.length;
  const blockCount = image.length / blockBytes;
  for (let b = 0; b < blockCount; b++) {
    const s = stampOf(image, b);
    if (s < 0) return null;
    const list = writesTo.get(b) ?? [];
    if (s > 0 && blocks[s - 1] !== b) return null;
    // The image holds stamp s at block b for prefixes k with s <= k < (the next write to b after s).
    const next = list.find((x) => x > s);
    lo = Math.max(lo, s);
    if (next !== undefined) hi = Math.min(hi, next - 1);
    if (lo > hi) return null;
  }
  return { lo, hi };
}

/** Why an image is no prefix: the block that needs the longest prefix and the one that forbids it. */
export function prefixConflict(image: Buffer, blocks: readonly number[]): string {
  let lo = { k: 0, block: -1 };
  let hi = { k: blocks.length, block: -1 };
  const blockCount = image.length / blockBytes;
  for (let b = 0; b < blockCount; b++) {
    const s = stampOf(image, b);
    if (s < 0 || (s > 0 && blocks[s - 1] !== b)) return `block ${b} holds content no write produced (stamp ${s})`;
    let next: number | undefined;
    for (let i = s; i < blocks.length; i++) if (blocks[i] === b) { next = i + 1; break; }
    if (s > lo.k) lo = { k: s, block: b };
    if (next !== undefined && next - 1 < hi.k) hi = { k: next - 1, block: b };
  }
  return `block ${lo.block} holds write ${lo.k}, but block ${hi.block} lacks write ${hi.k + 1} (history ${blocks.length})`;
}

/** The image production holds after the writes of `history` (stamps 1..n in order), `sizeBytes` long. */
/**
 * The data a VM already holds when it is protected: stamps 1..count on blocks the seed picks, written straight
 * to the source before the pair starts, so the initial sync (a staged pass) carries real data to DR.
 */
export function prefilledHistory(seed: number, blockCount: number, count: number): number[] {
  const rnd = seededRandom(seed ^ 0x7f4a7c15);
  return Array.from({ length: count }, () => Math.floor(rnd.float() * blockCount));
}

export function historyImage(history: readonly number[], sizeBytes: number): Buffer {
  const image = Buffer.alloc(sizeBytes);
  history.forEach((block, i) => stampedBlock(i + 1, block).copy(image, block * blockBytes));
  return image;
}
