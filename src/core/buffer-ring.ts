import { assert } from './assert.js';

// A bounded ring of reusable bytes for the data path's short-lived buffers (a batch on its way to the codec,
// a sealed frame until the socket has taken it, a received frame until it is opened, its plain data until it
// is applied). Allocating these afresh costs more than the copy into them: every new ArrayBuffer counts
// towards V8's external-memory limit, and each 64 MiB of it forces a full mark-compact of the heap.
//
// Layout: one (Shared)ArrayBuffer of `capacityBytes`. Blocks are handed out in order from `head`, wrapping to 0
// when the tail end is too short; they may be freed in any order, and the space of the oldest ones comes back
// as soon as they are freed. Lifetimes on the data path are nearly FIFO, so little is held up.
//
//   [ free | oldest live ... newest live | free ]        not wrapped (head >= tail)
//   [ newer live | free | oldest live ... | unused end ] wrapped (head < tail)
//
// Shared (SharedArrayBuffer) rings are visible to the codec workers as they are: nothing is copied or moved.
// Blocks start on BLOCK_ALIGN_BYTES: V8 copies to or from shared memory word by word only when source and
// destination have the same alignment, and byte by byte (8x slower: 1.4 against 11 GB/s here) otherwise.

/** Every block starts on this boundary (its size is rounded up to it). */
export const BLOCK_ALIGN_BYTES = 64;

interface Block {
  start: number;
  end: number;
  freed: boolean;
}

/**
 * Pooled memory as its users see it (a BufferRing): blocks taken when there is room, and given back with
 * release(), which ignores a buffer the pool did not hand out (the caller's fallback).
 */
export interface BlockMemory {
  tryAlloc(bytes: number): Buffer | null;
  release(buf: Uint8Array | null | undefined): void;
}

export interface BufferRingStats {
  capacityBytes: number;
  usedBytes: number;
  usedBytesPeak: number;
  blocks: number;
  allocs: number;
  /** Allocations refused for want of room (the caller used a buffer of its own). */
  refusals: number;
}

export class BufferRing implements BlockMemory {
  readonly capacityBytes: number;
  private readonly memory: ArrayBuffer | SharedArrayBuffer;
  private readonly bytes: Buffer;
  /** Live blocks in allocation order (a deque: `first` is the oldest). */
  private blocks: Block[] = [];
  private first = 0;
  private readonly byStart = new Map<number, Block>();
  private head = 0;
  private used = 0;
  private usedPeak = 0;
  private allocs = 0;
  private refusals = 0;

  constructor(opts: { capacityBytes: number; shared?: boolean }) {
    assert(Number.isSafeInteger(opts.capacityBytes) && opts.capacityBytes > 0, 'ring capacity is a positive integer');
    this.capacityBytes = alignUp(opts.capacityBytes);
    // The memory is the rounded-up capacity: a block placed at the end must not be cut short by it.
    this.memory = opts.shared ? new SharedArrayBuffer(this.capacityBytes) : new ArrayBuffer(this.capacityBytes);
    this.bytes = Buffer.from(this.memory as ArrayBuffer);
  }

  /** True when `buf` is a view into this ring's memory. */
  owns(buf: Uint8Array): boolean {
    return buf.buffer === this.memory;
  }

  /** `bytes` of the ring (contents undefined; the block takes `bytes` rounded up to BLOCK_ALIGN_BYTES), or null when there is no room now. */
  tryAlloc(bytes: number): Buffer | null {
    assert(Number.isSafeInteger(bytes) && bytes > 0, `ring allocation of ${bytes} bytes`);
    const span = alignUp(bytes);
    const start = this.place(span);
    if (start === null) {
      this.refusals++;
      return null;
    }
    const block: Block = { start, end: start + span, freed: false };
    this.blocks.push(block);
    this.byStart.set(start, block);
    this.head = block.end;
    this.used += span;
    this.usedPeak = Math.max(this.usedPeak, this.used);
    this.allocs++;
    const buf = this.bytes.subarray(start, start + bytes);
    assert(buf.length === bytes, `ring block of ${bytes} bytes at ${start} is cut short to ${buf.length}`);
    return buf;
  }

  /** Frees `buf` when it is a block of this ring; anything else (a fallback buffer, null) is left alone. */
  release(buf: Uint8Array | null | undefined): void {
    if (buf && this.owns(buf)) this.free(buf);
  }

  /** Returns a block from tryAlloc. Freeing anything else (or twice) is a bug. */
  free(buf: Uint8Array): void {
    assert(this.owns(buf), 'freed buffer belongs to this ring');
    const block = this.byStart.get(buf.byteOffset);
    assert(block !== undefined && !block.freed, `ring block at ${buf.byteOffset} is live`);
    block.freed = true;
    this.byStart.delete(block.start);
    this.used -= block.end - block.start;
    while (this.first < this.blocks.length && this.blocks[this.first]!.freed) this.first++;
    if (this.first === this.blocks.length) {
      this.blocks = [];
      this.first = 0;
      this.head = 0; // empty: start again at the beginning, the longest free run
    } else if (this.first >= 1024 && this.first * 2 >= this.blocks.length) {
      this.blocks = this.blocks.slice(this.first);
      this.first = 0;
    }
  }

  stats(): BufferRingStats {
    return {
      capacityBytes: this.capacityBytes, usedBytes: this.used, usedBytesPeak: this.usedPeak,
      blocks: this.blocks.length - this.first, allocs: this.allocs, refusals: this.refusals,
    };
  }

  /** Where `bytes` would start now, or null. */
  private place(bytes: number): number | null {
    if (this.first === this.blocks.length) return bytes <= this.capacityBytes ? 0 : null;
    const tail = this.blocks[this.first]!.start;
    if (this.head > tail || (this.head === tail && this.used === 0)) {
      if (this.capacityBytes - this.head >= bytes) return this.head;
      return tail >= bytes ? 0 : null; // wrap: the short end stays unused until the ring empties past it
    }
    return tail - this.head >= bytes ? this.head : null;
  }
}

function alignUp(bytes: number): number {
  return Math.ceil(bytes / BLOCK_ALIGN_BYTES) * BLOCK_ALIGN_BYTES;
}
