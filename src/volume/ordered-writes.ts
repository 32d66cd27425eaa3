import type { Volume } from './volume.js';

export interface VolumeOp {
  volume: Volume;
  offset: number;
  /** Bytes to write; null with `zero` or `trim` set. */
  data: Uint8Array | null;
  length: number;
  kind: 'write' | 'zero' | 'trim';
}

/** Ops handed to the kernel at once (libuv has 4 threads; more only costs memory and overlap checks). */
const runOpsMax = 64;

/**
 * Applies ops so the result equals applying them one by one in order, while letting runs of
 * non-overlapping ops go to the kernel concurrently (the thread pool may reorder them).
 * An op that overlaps an earlier op of the current run starts a new run.
 */
export async function applyInOrder(ops: readonly VolumeOp[]): Promise<void> {
  let run: Promise<void>[] = [];
  let spans = new Map<Volume, Array<[number, number]>>();
  for (const op of ops) {
    const mine = spans.get(op.volume) ?? [];
    const end = op.offset + op.length;
    if (run.length >= runOpsMax || mine.some(([s, e]) => op.offset < e && s < end)) {
      await Promise.all(run);
      run = [];
      spans = new Map();
    }
    const list = spans.get(op.volume) ?? [];
    list.push([op.offset, end]);
    spans.set(op.volume, list);
    run.push(applyOne(op));
  }
  await Promise.all(run);
}

function applyOne(op: VolumeOp): Promise<void> {
  switch (op.kind) {
    case 'write':
      return op.volume.write(op.offset, op.data!);
    case 'zero':
      return op.volume.writeZeroes(op.offset, op.length);
    case 'trim':
      return op.volume.trim(op.offset, op.length);
  }
}
