import { assert } from '../core/assert.js';

// Drop-behind for a volume written through the page cache. The gateway never reads back what it writes to a
// volume on the write path (the journal and the record cache hold what shipping needs), so the pages a VM's
// writes leave in the page cache only grow the gateway's memory and evict what others read. Every
// `windowBytes` written, the window's extents get posix_fadvise(DONTNEED) twice: once as the window closes,
// which starts their writeback, and again `lagWindows` windows later, when that writeback is done and the
// pages are clean, which frees them. A volume's fdatasync makes everything before it clean, so flush() frees
// all that was written before it at once.
//
// Freed pages are reused by the next writes while still hot. On this machine's VMs a page the kernel takes
// from its long-free memory faults on the host first: 2 GiB written once into a new file cost 2.8-3.4 CPU-s
// in the kernel buffered, 0.65-0.73 with 32 MiB windows (overwrites of cached pages: 0.32 either way).
//
// Advisory only: nothing on disk changes, a failed call costs memory, never data. Bounded: at most `extentsMax`
// extents a window and in the queue of ranges to drop (past it, they become their hull: one call covers more),
// `lagWindows` closed windows kept, and one call running at a time.

export interface DropBehindStats {
  /** Windows closed by writes, and ranges handed to the drop call. */
  windows: number;
  drops: number;
  /** Drop calls that failed. */
  errors: number;
}

export interface DropBehindOptions {
  windowBytes: number;
  lagWindows?: number;
  extentsMax?: number;
}

/** A byte range [start, end) of the volume. */
interface Extent { start: number; end: number }

export class DropBehind {
  readonly stats: DropBehindStats = { windows: 0, drops: 0, errors: 0 };
  private readonly windowBytes: number;
  private readonly lagWindows: number;
  private readonly extentsMax: number;
  private current: Extent[] = [];
  private currentBytes = 0;
  /** Closed windows whose writeback was started, oldest first. */
  private behind: Extent[][] = [];
  /** Everything written since the last takeAll (what the next fdatasync makes clean). */
  private sinceSync: Extent[] = [];
  /** Ranges waiting for the drop call, and the loop making the calls (null when idle). */
  private queue: Extent[] = [];
  private running: Promise<void> | null = null;

  constructor(private readonly drop: (offset: number, length: number) => Promise<void>, opts: DropBehindOptions) {
    this.windowBytes = opts.windowBytes;
    this.lagWindows = opts.lagWindows ?? 2;
    this.extentsMax = opts.extentsMax ?? 32;
    assert(Number.isSafeInteger(this.windowBytes) && this.windowBytes > 0, 'drop-behind window > 0 bytes');
    assert(this.lagWindows >= 1 && this.extentsMax >= 1, 'drop-behind bounds ≥ 1');
  }

  /** After a write of `length` bytes at `offset` has returned. */
  wrote(offset: number, length: number): void {
    if (length <= 0) return;
    addExtent(this.current, offset, offset + length, this.extentsMax);
    addExtent(this.sinceSync, offset, offset + length, this.extentsMax);
    this.currentBytes += length;
    if (this.currentBytes < this.windowBytes) return;
    const closed = this.current;
    this.current = [];
    this.currentBytes = 0;
    this.stats.windows++;
    this.enqueue(closed);
    this.behind.push(closed);
    if (this.behind.length > this.lagWindows) this.enqueue(this.behind.shift()!);
  }

  /** Before an fdatasync: what it will make durable (every extent written so far), forgotten here. */
  takeAll(): Extent[] {
    const all = this.sinceSync;
    this.sinceSync = [];
    this.behind = [];
    this.current = [];
    this.currentBytes = 0;
    return all;
  }

  /** After that fdatasync returned: those pages are clean, free them. */
  synced(extents: Extent[]): void {
    if (extents.length > 0) this.enqueue(extents);
  }

  /** Resolves once no call is queued (close() waits for it: the calls use the volume's file descriptor). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Extents in the current window (tests). */
  get openExtents(): number {
    return this.current.length;
  }

  /** Extents waiting in the queue (tests). */
  get queuedExtents(): number {
    return this.queue.length;
  }

  private enqueue(extents: readonly Extent[]): void {
    for (const e of extents) addExtent(this.queue, e.start, e.end, this.extentsMax);
    this.running ??= this.drain().finally(() => (this.running = null));
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      for (const e of batch) {
        this.stats.drops++;
        await this.drop(e.start, e.end - e.start).catch(() => void this.stats.errors++);
      }
    }
  }
}

/** Adds [start, end) to `extents` (kept merged where they touch); past `max` extents they become their hull. */
function addExtent(extents: Extent[], start: number, end: number, max: number): void {
  const last = extents[extents.length - 1];
  if (last && start <= last.end && end >= last.start) { // the common case: sequential, or a rewrite of the last
    last.start = Math.min(last.start, start);
    last.end = Math.max(last.end, end);
    return;
  }
  extents.push({ start, end });
  if (extents.length <= max) return;
  let lo = start;
  let hi = end;
  for (const e of extents) {
    lo = Math.min(lo, e.start);
    hi = Math.max(hi, e.end);
  }
  extents.length = 0;
  extents.push({ start: lo, end: hi });
}
