import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { assert } from '../../core/assert.js';
import { ErrorCode, vrgError, type VrgError } from '../../core/errors.js';
import { nodeFiles, type Files } from '../../core/files.js';
import { limits, MiB } from '../../core/limits.js';
import type { Logger } from '../../core/log.js';
import type { RwLock } from '../../core/rw-lock.js';
import { FileVolume } from '../../volume/file-volume.js';
import { checkVolumeRange, type Volume } from '../../volume/volume.js';

// Test failover (issue 14): a writable point-in-time clone of one DR VM's target volumes, served over NBD so the
// VM can boot at DR while replication into the real targets goes on untouched. Discarded at the end.
//
// Layout: <dataDir>/dr/<vmUuid>/test-clone/<volUuid>.img, one sparse file per target volume, of the volume's
// size. Which granules (limits.testCloneGranuleBytes) the clone owns is a bitmap in memory only, so the clone
// does not survive a restart: the DR gateway removes a leftover directory when it opens the VM.
//
// The clone's image of a granule is its file's where it owns the granule, else the live target's. That is the
// base (the targets' image when the clone began, between two applied chunks) plus the clone's own writes, because
// - the applier calls beforeTargetWrite, holding the VM gate's write side, before every target write: each
//   granule of the range the clone does not own yet is copied into the file first (copy-before-write), so a
//   granule it does not own still holds the base on the target;
// - a clone write to part of a granule it does not own copies the base granule in first (read-modify-write);
// - clone reads and writes hold the gate's read side: none runs between a copy and the target write after it.
// A copy-before-write never fails the applier: replication comes first. One the clone has no room for (or that
// fails) leaves the clone unusable (every request then fails; end the test failover).

/** Copy-before-write and base reads go in pieces of at most this much (memory held at once). */
const copyPieceBytes = 1 * MiB;
const zeros = Buffer.alloc(copyPieceBytes);

export interface TestCloneOptions {
  /** The VM's DR directory (<dataDir>/dr/<vmUuid>). */
  vmDir: string;
  vmUuid: string;
  /** The target volumes in the VM's config order (a record's volumeIndex). */
  volumes: Array<{ volUuid: string; target: Volume }>;
  /** The VM's gate (dr-vm.ts): its write side is held while chunks are applied. */
  gate: RwLock;
  logger: Logger;
  /** At most limits.testCloneBytesMax (the default). */
  bytesMax?: number;
  /** A multiple of 4 KiB; default limits.testCloneGranuleBytes. */
  granuleBytes?: number;
}

interface CloneVolume {
  volUuid: string;
  target: Volume;
  file: FileVolume;
  /** One bit per granule: set once the clone file holds it. */
  owned: Uint8Array;
  /** Clone writes to this volume, one at a time (two read-modify-writes of one granule must not interleave). */
  writing: Promise<void>;
}

/** The export name of a test clone's volume. */
export function testExportName(volUuid: string): string {
  return `${volUuid}-test`;
}

export class TestClone {
  readonly bytesMax: number;
  readonly granuleBytes: number;
  /** Bytes of the granules the clone owns. */
  ownedBytes = 0;
  /** Why the clone is unusable (a copy-before-write found no room or failed), or null. */
  broken: VrgError | null = null;
  private reservedBytes = 0;
  private closed = false;
  private readonly flushing = new Set<Promise<void>>();

  private constructor(private readonly opts: TestCloneOptions, private readonly vols: CloneVolume[], readonly dir: string) {
    this.bytesMax = Math.min(opts.bytesMax ?? limits.testCloneBytesMax, limits.testCloneBytesMax);
    this.granuleBytes = opts.granuleBytes ?? limits.testCloneGranuleBytes;
    assert(this.granuleBytes > 0 && this.granuleBytes % 4096 === 0, 'test clone granule is a multiple of 4 KiB');
  }

  static dirOf(vmDir: string): string {
    return join(vmDir, 'test-clone');
  }

  /** A clone left by a crash or a kill cannot be used (its map was in memory): its files go. */
  static async discardLeftover(vmDir: string, files: Files = nodeFiles): Promise<void> {
    await files.rm(TestClone.dirOf(vmDir));
  }

  /** Makes empty clone files; the clone owns nothing until the caller arms beforeTargetWrite on the applier. */
  static async create(opts: TestCloneOptions): Promise<TestClone> {
    const dir = TestClone.dirOf(opts.vmDir);
    await rm(dir, { recursive: true, force: true });
    const granule = opts.granuleBytes ?? limits.testCloneGranuleBytes;
    const vols: CloneVolume[] = [];
    try {
      for (const { volUuid, target } of opts.volumes) {
        const file = await FileVolume.open(join(dir, `${encodeURIComponent(volUuid)}.img`), { sizeBytes: target.sizeBytes, create: true });
        const granules = Math.ceil(target.sizeBytes / granule);
        vols.push({ volUuid, target, file, owned: new Uint8Array(Math.ceil(granules / 8)), writing: Promise.resolve() });
      }
    } catch (err) {
      for (const v of vols) await v.file.close().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    return new TestClone(opts, vols, dir);
  }

  /** The cloned volumes, by volumeIndex. */
  volumes(): Array<{ volUuid: string; sizeBytes: number }> {
    return this.vols.map((v) => ({ volUuid: v.volUuid, sizeBytes: v.target.sizeBytes }));
  }

  // ---- the NBD client's side ---------------------------------------------------------------------------------------

  read(volumeIndex: number, offset: number, length: number): Promise<Buffer> {
    const v = this.volume(volumeIndex, offset, length);
    return this.opts.gate.read(async () => {
      this.usable();
      const end = offset + length;
      const parts: Buffer[] = [];
      for (const [a, b, owned] of this.runs(v, offset, end)) {
        const from = Math.max(offset, a * this.granuleBytes);
        const to = Math.min(end, b * this.granuleBytes);
        parts.push(await (owned ? v.file : v.target).read(from, to - from));
      }
      return parts.length === 1 ? parts[0]! : Buffer.concat(parts, length);
    });
  }

  write(volumeIndex: number, offset: number, data: Buffer): Promise<void> {
    return this.change(volumeIndex, offset, data.byteLength, data);
  }

  /** Zeros (NBD WRITE_ZEROES and TRIM): the clone cannot give a granule back, the target no longer holds its base. */
  writeZeroes(volumeIndex: number, offset: number, length: number): Promise<void> {
    return this.change(volumeIndex, offset, length, null);
  }

  /** fdatasync of every clone file (not under the gate: the applier does not wait for it). */
  async flush(): Promise<void> {
    this.usable();
    const p = Promise.all(this.vols.map((v) => v.file.flush())).then(() => undefined);
    this.flushing.add(p);
    try {
      await p;
    } finally {
      this.flushing.delete(p);
    }
  }

  private change(volumeIndex: number, offset: number, length: number, data: Buffer | null): Promise<void> {
    const v = this.volume(volumeIndex, offset, length);
    // The gate first, then the volume's turn: every write queued for a turn already holds the read side, so a
    // waiting applier cannot stand between them.
    return this.opts.gate.read(() => this.inTurn(v, async () => {
      this.usable();
      if (length === 0) return;
      const g = this.granuleBytes;
      const end = offset + length;
      const first = Math.floor(offset / g);
      const last = Math.ceil(end / g) - 1;
      let newBytes = 0;
      for (let i = first; i <= last; i++) if (!this.owns(v, i)) newBytes += this.granuleSize(v, i);
      // Checked before anything changes: a write with no room fails whole.
      this.reserve(newBytes, `a write of ${length} bytes to ${v.volUuid}`);
      try {
        // Granules the write covers only in part take the base content first.
        if (offset > first * g && !this.owns(v, first)) await this.copyBase(v, first, first + 1);
        if (end < Math.min((last + 1) * g, v.target.sizeBytes) && !this.owns(v, last)) await this.copyBase(v, last, last + 1);
        if (data) await v.file.write(offset, data);
        else await v.file.writeZeroes(offset, length);
        // Owned only now: until the file holds the data, a reader still sees the base on the target.
        for (let i = first; i <= last; i++) this.own(v, i);
      } finally {
        this.reservedBytes -= newBytes;
      }
    }));
  }

  // ---- the applier's side ------------------------------------------------------------------------------------------

  /**
   * Copy-before-write: the applier calls this holding the gate's write side, before it writes [offset, offset+length)
   * of a target. It never throws: a copy that fails, or finds no room, makes the clone unusable instead.
   */
  async beforeTargetWrite(volumeIndex: number, offset: number, length: number): Promise<void> {
    const v = this.vols[volumeIndex];
    if (this.closed || this.broken !== null || v === undefined || length <= 0) return;
    try {
      for (const [a, b, owned] of this.runs(v, offset, Math.min(offset + length, v.target.sizeBytes))) {
        if (owned) continue;
        let bytes = 0;
        for (let i = a; i < b; i++) bytes += this.granuleSize(v, i);
        this.reserve(bytes, `keeping the base of ${bytes} bytes of ${v.volUuid} production overwrote`);
        try {
          await this.copyBase(v, a, b);
        } finally {
          this.reservedBytes -= bytes;
        }
      }
    } catch (err) {
      this.broken = vrgError(ErrorCode.VOLUME_IO, `the test clone of VM ${this.opts.vmUuid} is unusable: ${(err as Error).message}; end the test failover`,
        { vmUuid: this.opts.vmUuid }, err);
      this.opts.logger.error({ err, vmUuid: this.opts.vmUuid, ownedBytes: this.ownedBytes }, 'test clone: copy-before-write failed; the clone is unusable');
    }
  }

  /** Stops serving (waiting for requests in flight), closes and removes the clone files. */
  async discard(): Promise<void> {
    if (this.closed) return;
    await this.opts.gate.write(async () => {
      this.closed = true;
    });
    await Promise.allSettled([...this.flushing]);
    for (const v of this.vols) await v.file.close().catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true });
  }

  // ---- granules ----------------------------------------------------------------------------------------------------

  private volume(volumeIndex: number, offset: number, length: number): CloneVolume {
    const v = this.vols[volumeIndex];
    if (v === undefined) throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `the test clone of VM ${this.opts.vmUuid} has no volume ${volumeIndex}`);
    checkVolumeRange(v.target, offset, length);
    return v;
  }

  private usable(): void {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `the test failover of VM ${this.opts.vmUuid} has ended`, { vmUuid: this.opts.vmUuid });
    if (this.broken !== null) throw this.broken;
  }

  private reserve(bytes: number, what: string): void {
    if (this.ownedBytes + this.reservedBytes + bytes > this.bytesMax) {
      throw vrgError(ErrorCode.TEST_CLONE_FULL,
        `the test clone of VM ${this.opts.vmUuid} holds ${this.ownedBytes} of at most ${this.bytesMax} bytes: no room for ${what}`,
        { vmUuid: this.opts.vmUuid, code: 'ENOSPC' });
    }
    this.reservedBytes += bytes;
  }

  private inTurn(v: CloneVolume, fn: () => Promise<void>): Promise<void> {
    const run = v.writing.then(fn);
    v.writing = run.catch(() => undefined);
    return run;
  }

  private owns(v: CloneVolume, i: number): boolean {
    return (v.owned[i >>> 3]! & (1 << (i & 7))) !== 0;
  }

  private own(v: CloneVolume, i: number): void {
    if (this.owns(v, i)) return;
    v.owned[i >>> 3]! |= 1 << (i & 7);
    this.ownedBytes += this.granuleSize(v, i);
  }

  /** The last granule of a volume whose size is no multiple of the granule is shorter. */
  private granuleSize(v: CloneVolume, i: number): number {
    return Math.min(this.granuleBytes, v.target.sizeBytes - i * this.granuleBytes);
  }

  /** The granules of [offset, end) as runs [first, end) of one ownership. */
  private runs(v: CloneVolume, offset: number, end: number): Array<[number, number, boolean]> {
    const out: Array<[number, number, boolean]> = [];
    if (end <= offset) return out;
    const last = Math.ceil(end / this.granuleBytes);
    for (let i = Math.floor(offset / this.granuleBytes); i < last; i++) {
      const owned = this.owns(v, i);
      const run = out[out.length - 1];
      if (run && run[2] === owned) run[1] = i + 1;
      else out.push([i, i + 1, owned]);
    }
    return out;
  }

  /** Copies the target's granules [first, end) into the clone file (zeros as zeros: a hole) and owns them. */
  private async copyBase(v: CloneVolume, first: number, end: number): Promise<void> {
    const from = first * this.granuleBytes;
    const to = Math.min(end * this.granuleBytes, v.target.sizeBytes);
    for (let at = from; at < to; at += copyPieceBytes) {
      const n = Math.min(copyPieceBytes, to - at);
      const base = await v.target.read(at, n);
      if (base.equals(zeros.subarray(0, n))) await v.file.writeZeroes(at, n);
      else await v.file.write(at, base);
    }
    for (let i = first; i < end; i++) this.own(v, i);
  }
}
