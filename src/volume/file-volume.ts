import { mkdir, open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { writeAt } from '../core/write-fully.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { limits, MiB } from '../core/limits.js';
import { DropBehind, type DropBehindStats } from './drop-behind.js';
import { isUnsupported, native as loadedNative, type NativeOps } from './native.js';
import { checkVolumeRange, type DataRange, type Volume, type WriteZeroesOptions } from './volume.js';

const zeroChunkBytes = 1 * MiB;
let zeroChunk: Buffer | null = null;

export interface FileVolumeOptions {
  /** Regular files: the size to create or grow to. Block devices: the least size the device must have. */
  sizeBytes?: number;
  /** Create a missing regular file (never a path under /dev, never a block device). */
  create?: boolean;
  /** The addon to use; defaults to the loaded one (null when absent or VRG_NATIVE=0). Tests pass null. */
  native?: NativeOps | null;
  /**
   * Drop-behind window (src/volume/drop-behind.ts): written pages leave the page cache once written back;
   * default limits.volumeDropBehindBytes, 0 keeps them. Needs the addon (posix_fadvise).
   */
  dropBehindBytes?: number;
}

/**
 * A volume backed by a regular file or a block device, positional I/O only.
 *
 * With the native addon (src/volume/native.ts): writeZeroes punches holes or uses fallocate ZERO_RANGE,
 * trim punches holes (files) or issues BLKDISCARD (block devices), dataRanges uses SEEK_DATA/SEEK_HOLE.
 * Without it everything still works, by writing zeros and reporting the whole range as data.
 *
 * Trim on a block device is a discard: like NBD TRIM, the range need not read back as zeros afterwards (and a
 * device that cannot discard ignores it). Callers that need zeros (a DR replica that must equal its source)
 * use writeZeroes. On a regular file trim reads back as zeros.
 */
export class FileVolume implements Volume {
  private closed = false;
  private readonly inflight = new Set<Promise<unknown>>();
  private dropBehind: DropBehind | null = null;

  private constructor(
    readonly url: string,
    readonly sizeBytes: number,
    /** True when `url` is a block device (never created, truncated or grown). */
    readonly isBlockDevice: boolean,
    private readonly fh: FileHandle,
    private readonly native: NativeOps | null,
  ) {}

  /** Opens `path`; with `create`, creates a regular file (sparse) at `sizeBytes` or grows it to that size. */
  static async open(path: string, opts: FileVolumeOptions = {}): Promise<FileVolume> {
    const nat = opts.native === undefined ? loadedNative : opts.native;
    const existing = await stat(path).catch(() => null);
    if (existing?.isBlockDevice() || (existing === null && path.startsWith('/dev/'))) {
      return FileVolume.openBlockDevice(path, opts.sizeBytes, nat, opts.dropBehindBytes);
    }
    let fh: FileHandle;
    try {
      if (opts.create) await mkdir(dirname(path), { recursive: true });
      fh = await open(path, opts.create ? 'a+' : 'r+');
      if (opts.create) {
        await fh.close();
        fh = await open(path, 'r+');
      }
    } catch (err) {
      throw vrgError(ErrorCode.VOLUME_IO, `cannot open volume ${path}: ${(err as Error).message}`, { path }, err);
    }
    const st = await fh.stat();
    if (st.isBlockDevice()) { // replaced by a device between stat and open
      await fh.close();
      return FileVolume.openBlockDevice(path, opts.sizeBytes, nat, opts.dropBehindBytes);
    }
    let size = st.size;
    if (opts.sizeBytes !== undefined && size < opts.sizeBytes) {
      if (!opts.create) {
        await fh.close();
        throw vrgError(ErrorCode.VOLUME_IO, `volume ${path} is ${size} bytes, expected ${opts.sizeBytes}`, { path });
      }
      await fh.truncate(opts.sizeBytes);
      size = opts.sizeBytes;
    }
    return new FileVolume(path, size, false, fh, nat).withDropBehind(opts.dropBehindBytes);
  }

  private withDropBehind(windowBytes = limits.volumeDropBehindBytes): this {
    const nat = this.native;
    if (nat && windowBytes > 0) this.dropBehind = new DropBehind((o, l) => nat.dropCache(this.fh.fd, o, l), { windowBytes });
    return this;
  }

  /** Drop-behind's counters; null when it is off. */
  get dropBehindStats(): DropBehindStats | null {
    return this.dropBehind ? { ...this.dropBehind.stats } : null;
  }

  private static async openBlockDevice(path: string, sizeBytes: number | undefined, nat: NativeOps | null, dropBehindBytes?: number): Promise<FileVolume> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r+');
    } catch (err) {
      throw vrgError(ErrorCode.VOLUME_IO, `cannot open block device ${path}: ${(err as Error).message}`, { path }, err);
    }
    try {
      const st = await fh.stat({ bigint: true });
      if (!st.isBlockDevice()) throw new Error('not a block device');
      const size = nat ? await nat.blockDeviceSize(fh.fd) : await sysfsBlockDeviceSize(st.rdev);
      if (sizeBytes !== undefined && size < sizeBytes) throw new Error(`device is ${size} bytes, expected ${sizeBytes}`);
      return new FileVolume(path, size, true, fh, nat).withDropBehind(dropBehindBytes);
    } catch (err) {
      await fh.close();
      throw vrgError(ErrorCode.VOLUME_IO, `cannot use block device ${path}: ${(err as Error).message}`, { path }, err);
    }
  }

  private check(offset: number, length: number): void {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `volume ${this.url} is closed`);
    checkVolumeRange(this, offset, length);
  }

  /** Runs an addon call on this fd; close() waits for it, so the fd number is never reused under it. */
  private async nativeCall<T>(call: (fd: number) => Promise<T>): Promise<T> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `volume ${this.url} is closed`);
    const p = call(this.fh.fd);
    this.inflight.add(p);
    try {
      return await p;
    } finally {
      this.inflight.delete(p);
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        buf.fill(0, done);
        break;
      }
      done += bytesRead;
    }
    return buf;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.check(offset, data.byteLength);
    await writeAt(this.fh, [data], offset);
    this.dropBehind?.wrote(offset, data.byteLength);
  }

  async writev(offset: number, datas: readonly Uint8Array[]): Promise<void> {
    const length = datas.reduce((n, d) => n + d.byteLength, 0);
    this.check(offset, length);
    await writeAt(this.fh, [...datas], offset);
    this.dropBehind?.wrote(offset, length);
  }

  /**
   * The range reads back as zeros. By default it may be deallocated (a hole; punched on files, unmapped on
   * devices that can); with `noHole` it stays allocated (fallocate ZERO_RANGE). Falls back to writing zeros
   * when the addon is absent or the file system / device cannot do either.
   */
  async writeZeroes(offset: number, length: number, opts: WriteZeroesOptions = {}): Promise<void> {
    this.check(offset, length);
    if (length === 0) return;
    const nat = this.native;
    if (nat) {
      try {
        if (opts.noHole) await this.nativeCall((fd) => nat.zeroRange(fd, offset, length, false));
        else await this.nativeCall((fd) => nat.punchHole(fd, offset, length))
          .catch((err: unknown) => {
            if (!isUnsupported(err)) throw err;
            return this.nativeCall((fd) => nat.zeroRange(fd, offset, length, false));
          });
        return;
      } catch (err) {
        if (!isUnsupported(err)) throw this.ioError('zero', offset, length, err);
      }
    }
    await this.writeZeroBytes(offset, length);
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    zeroChunk ??= Buffer.alloc(zeroChunkBytes);
    for (let done = 0; done < length; done += zeroChunkBytes) {
      await this.write(offset + done, zeroChunk.subarray(0, Math.min(zeroChunkBytes, length - done)));
    }
  }

  /**
   * Regular file: the range is deallocated where possible and reads back as zeros (written zeros without the
   * addon). Block device: BLKDISCARD with the addon, nothing without it or when the device cannot discard;
   * the range need not read back as zeros (NBD TRIM does not promise that either).
   */
  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    if (length === 0) return;
    if (!this.isBlockDevice) return this.writeZeroes(offset, length);
    const nat = this.native;
    if (!nat) return;
    try {
      await this.nativeCall((fd) => nat.discard(fd, offset, length));
    } catch (err) {
      if (!isUnsupported(err)) throw this.ioError('discard', offset, length, err);
    }
  }

  /**
   * The parts of [offset, offset+length) that may hold data, ascending, as [start, end) pairs clipped to the
   * range; the rest is holes and reads as zeros. Granularity is the file system's block, so ranges may cover
   * some zeros. Without the addon, for block devices, or when the file system cannot tell: the whole range.
   */
  async dataRanges(offset: number, length: number): Promise<DataRange[]> {
    this.check(offset, length);
    if (length === 0) return [];
    const end = offset + length;
    const nat = this.native;
    if (!nat || this.isBlockDevice) return [[offset, end]];
    const ranges: DataRange[] = [];
    try {
      let pos = offset;
      let vanished = 0;
      while (pos < end) {
        const start = await this.nativeCall((fd) => nat.seekData(fd, pos));
        if (start < 0 || start >= end) break;
        const hole = await this.nativeCall((fd) => nat.seekHole(fd, start));
        const stop = hole < 0 ? end : Math.min(hole, end);
        if (stop <= start) {
          // The file changed between the two seeks (a write or a punch landed at `start`): the data found there
          // is gone. Look again from there; past a few such races, call the rest data (reading it is always
          // correct, a hole only reads as zeros), so a busy volume cannot keep this loop going.
          if (++vanished <= seekRacesMax) {
            pos = start;
            continue;
          }
          ranges.push([start, end]);
          break;
        }
        ranges.push([start, stop]);
        pos = stop;
      }
    } catch (err) {
      if (isUnsupported(err)) return [[offset, end]];
      throw this.ioError('seek', offset, length, err);
    }
    return ranges;
  }

  private ioError(op: string, offset: number, length: number, err: unknown): Error {
    return vrgError(ErrorCode.VOLUME_IO, `${op} ${offset}+${length} on volume ${this.url} failed: ${(err as Error).message}`,
      { offset, length, code: (err as { code?: unknown }).code }, err);
  }

  async flush(): Promise<void> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `volume ${this.url} is closed`);
    const written = this.dropBehind?.takeAll() ?? [];
    await this.fh.datasync();
    this.dropBehind?.synced(written);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.inflight]);
    await this.dropBehind?.idle();
    await this.fh.close();
  }
}

/** dataRanges: how many times the file may change under one scan before the rest is reported as data. */
const seekRacesMax = 8;

/** Size of a block device from sysfs (/sys/dev/block/MAJOR:MINOR/size counts 512-byte sectors). */
async function sysfsBlockDeviceSize(rdev: bigint): Promise<number> {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  const text = await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
  const size = Number(text.trim()) * 512;
  if (!Number.isSafeInteger(size) || size <= 0) throw new Error(`unreadable size '${text.trim()}' in sysfs`);
  return size;
}
