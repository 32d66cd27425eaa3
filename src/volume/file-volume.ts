import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { assert } from '../core/assert.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { MiB } from '../core/limits.js';
import type { Volume } from './volume.js';

const zeroChunkBytes = 1 * MiB;
let zeroChunk: Buffer | null = null;

/** A volume backed by a regular file, positional I/O only. */
export class FileVolume implements Volume {
  private closed = false;

  private constructor(
    readonly url: string,
    readonly sizeBytes: number,
    private readonly fh: FileHandle,
  ) {}

  /** Opens `path`; with `create`, creates it (sparse) at `sizeBytes` or grows it to that size. */
  static async open(path: string, opts: { sizeBytes?: number; create?: boolean } = {}): Promise<FileVolume> {
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
    let size = (await fh.stat()).size;
    if (opts.sizeBytes !== undefined && size < opts.sizeBytes) {
      if (!opts.create) {
        await fh.close();
        throw vrgError(ErrorCode.VOLUME_IO, `volume ${path} is ${size} bytes, expected ${opts.sizeBytes}`, { path });
      }
      await fh.truncate(opts.sizeBytes);
      size = opts.sizeBytes;
    }
    return new FileVolume(path, size, fh);
  }

  private check(offset: number, length: number): void {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `volume ${this.url} is closed`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
        offset + length > this.sizeBytes) {
      throw vrgError(ErrorCode.VOLUME_OUT_OF_RANGE,
        `range ${offset}+${length} outside volume ${this.url} of ${this.sizeBytes} bytes`, { offset, length });
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
    let done = 0;
    while (done < data.byteLength) {
      const { bytesWritten } = await this.fh.write(data, done, data.byteLength - done, offset + done);
      assert(bytesWritten > 0, 'pwrite made progress');
      done += bytesWritten;
    }
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    zeroChunk ??= Buffer.alloc(zeroChunkBytes);
    for (let done = 0; done < length; done += zeroChunkBytes) {
      await this.write(offset + done, zeroChunk.subarray(0, Math.min(zeroChunkBytes, length - done)));
    }
  }

  /** Without the native addon a trim reads back as zeroes, which is what a discard guarantees here. */
  async trim(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async flush(): Promise<void> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `volume ${this.url} is closed`);
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}
