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
/** Consecutive writes that continue each other are merged into one call up to this many bytes. */
const mergedWriteBytesMax = 8 * 1024 * 1024;

/**
 * Applies ops so the result equals applying them one by one in order, while letting runs of
 * non-overlapping ops go to the kernel concurrently (the thread pool may reorder them).
 * An op that overlaps an earlier op of the current run starts a new run.
 */
export async function applyInOrder(ops: readonly VolumeOp[]): Promise<void> {
  let run: Promise<void>[] = [];
  let spans = new Map<Volume, Array<[number, number]>>();
  for (const op of mergeContiguous(ops)) {
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

/** A write op, or consecutive writes to one volume that continue each other (applied as one pwritev). */
interface MergedOp {
  volume: Volume;
  offset: number;
  data: Uint8Array | null;
  length: number;
  kind: VolumeOp['kind'];
  /** The merged writes' data in order; null for a single op. */
  parts: Uint8Array[] | null;
}

/**
 * Merges runs of writes where each starts where the previous one ended on the same volume: a sequential
 * stream of 64 KiB writes becomes one system call per batch instead of one per write. The merged op is
 * applied exactly as its parts in order (they do not overlap one another).
 */
function mergeContiguous(ops: readonly VolumeOp[]): MergedOp[] {
  const out: MergedOp[] = [];
  for (const op of ops) {
    const last = out[out.length - 1];
    if (last && op.kind === 'write' && last.kind === 'write' && last.volume === op.volume && last.volume.writev !== undefined &&
        last.offset + last.length === op.offset && last.length + op.length <= mergedWriteBytesMax) {
      (last.parts ??= [last.data!]).push(op.data!); // a field every MergedOp has: no new shape mid-run
      last.length += op.length;
      continue;
    }
    out.push({ volume: op.volume, offset: op.offset, data: op.data, length: op.length, kind: op.kind, parts: null });
  }
  return out;
}

function applyOne(op: MergedOp): Promise<void> {
  switch (op.kind) {
    case 'write':
      return op.parts ? op.volume.writev!(op.offset, op.parts) : op.volume.write(op.offset, op.data!);
    case 'zero':
      return op.volume.writeZeroes(op.offset, op.length);
    case 'trim':
      return op.volume.trim(op.offset, op.length);
  }
}
