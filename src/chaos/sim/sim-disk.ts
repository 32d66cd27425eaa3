import { ErrorCode, vrgError } from '../../core/errors.js';
import { checkVolumeRange, type Volume } from '../../volume/volume.js';

// A simulated block store for the simulator: the volume in memory, with faults a seed switches on and off.
// - failing: every write and flush fails with VRG_VOLUME_IO, errno EIO or ENOSPC (a dying disk, a full thin
//   pool), until switched off;
// - slowMs: each write waits that long first (a disk far behind its writer).
// Content survives close(): a gateway that reopens its targets after a restart finds what it wrote.

export class SimDisk implements Volume {
  private readonly image: Buffer;
  failing: 'EIO' | 'ENOSPC' | null = null;
  slowMs = 0;
  readonly counters = { writes: 0, failed: 0, flushes: 0 };

  constructor(readonly url: string, readonly sizeBytes: number) {
    this.image = Buffer.alloc(sizeBytes);
  }

  private async gate(what: string, offset: number, length: number): Promise<void> {
    checkVolumeRange(this, offset, length);
    if (this.slowMs > 0) await new Promise((r) => setTimeout(r, this.slowMs));
    if (this.failing !== null) {
      this.counters.failed++;
      throw vrgError(ErrorCode.VOLUME_IO, `${what} ${this.url} at ${offset}: ${this.failing} (simulated)`, { errno: this.failing });
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkVolumeRange(this, offset, length);
    return Buffer.from(this.image.subarray(offset, offset + length));
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.gate('write', offset, data.byteLength);
    this.counters.writes++;
    this.image.set(data, offset);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.gate('write zeroes', offset, length);
    this.image.fill(0, offset, offset + length);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async flush(): Promise<void> {
    await this.gate('flush', 0, 0);
    this.counters.flushes++;
  }

  async close(): Promise<void> {
    // The content stays: a reopen finds it.
  }

  /** The whole image now (a checker's read, outside any fault). */
  snapshot(): Buffer {
    return Buffer.from(this.image);
  }
}
