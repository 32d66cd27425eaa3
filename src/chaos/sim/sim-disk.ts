import type { Clock } from '../../core/clock.js';
import { ErrorCode, vrgError } from '../../core/errors.js';
import { checkVolumeRange, type Volume } from '../../volume/volume.js';

// A simulated block store for the simulator: the volume in memory, with faults a seed switches on and off.
// - failing: every write and flush fails with VRG_VOLUME_IO, errno EIO or ENOSPC (a dying disk, a full thin
//   pool), until switched off;
// - slowMs: each write waits that long first (a disk far behind its writer).
// On the simulator's virtual time (SimClock), every call takes `ioMs` of it, and slowMs is virtual too.
// Content survives close(): a gateway that reopens its targets after a restart finds what it wrote.
// - powerCut(): writes since the last flush are lost (a volatile write cache without power), and every handle
//   opened before (open()) fails from then on, so the gateway instance that lost power can do nothing more.

export class SimDisk implements Volume {
  private readonly image: Buffer;
  /** The image as of the last flush (what a power cut leaves). */
  private readonly durable: Buffer;
  private epoch = 0;
  failing: 'EIO' | 'ENOSPC' | null = null;
  slowMs = 0;
  readonly counters = { writes: 0, failed: 0, flushes: 0 };

  constructor(readonly url: string, readonly sizeBytes: number, private readonly timing: { clock: Clock; ioMs: number } | null = null) {
    this.image = Buffer.alloc(sizeBytes);
    this.durable = Buffer.alloc(sizeBytes);
  }

  /** A handle for one gateway instance: the disk's calls, until the next power cut. */
  open(): Volume {
    const epoch = this.epoch;
    return {
      url: this.url, sizeBytes: this.sizeBytes,
      read: async (o, l) => {
        this.live(epoch);
        return this.read(o, l);
      },
      write: (o, d) => this.write(o, d, epoch),
      writeZeroes: (o, l) => this.zeroAs(o, l, epoch),
      trim: (o, l) => this.zeroAs(o, l, epoch),
      flush: () => this.flushAs(epoch),
      close: async () => undefined,
    };
  }

  /** Checked right before a change, in the same synchronous step: nothing lands after the power went. */
  private live(epoch: number | undefined): void {
    if (epoch !== undefined && epoch !== this.epoch) {
      throw vrgError(ErrorCode.VOLUME_IO, `${this.url}: EIO, the power went (simulated)`, { errno: 'EIO' });
    }
  }

  /** Loses every write since the last flush; the handles opened so far die. */
  powerCut(): void {
    this.epoch++;
    this.durable.copy(this.image);
  }

  private async gate(what: string, offset: number, length: number): Promise<void> {
    checkVolumeRange(this, offset, length);
    const waitMs = this.slowMs + (this.timing?.ioMs ?? 0);
    if (waitMs > 0) await new Promise((r) => (this.timing ? this.timing.clock.setTimer(waitMs, () => r(null)) : setTimeout(r, waitMs)));
    if (this.failing !== null) {
      this.counters.failed++;
      throw vrgError(ErrorCode.VOLUME_IO, `${what} ${this.url} at ${offset}: ${this.failing} (simulated)`, { errno: this.failing });
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkVolumeRange(this, offset, length);
    return Buffer.from(this.image.subarray(offset, offset + length));
  }

  async write(offset: number, data: Uint8Array, epoch?: number): Promise<void> {
    await this.gate('write', offset, data.byteLength);
    this.live(epoch);
    this.counters.writes++;
    this.image.set(data, offset);
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.zeroAs(offset, length, undefined);
  }

  private async zeroAs(offset: number, length: number, epoch: number | undefined): Promise<void> {
    await this.gate('write zeroes', offset, length);
    this.live(epoch);
    this.image.fill(0, offset, offset + length);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  flush(): Promise<void> {
    return this.flushAs(undefined);
  }

  private async flushAs(epoch: number | undefined): Promise<void> {
    await this.gate('flush', 0, 0);
    this.live(epoch);
    this.counters.flushes++;
    this.image.copy(this.durable);
  }

  async close(): Promise<void> {
    // The content stays: a reopen finds it.
  }

  /** The whole image now (a checker's read, outside any fault). */
  snapshot(): Buffer {
    return Buffer.from(this.image);
  }
}
