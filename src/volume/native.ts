// The volume layer's view of the project's addon (core/native-addon.ts): the Linux calls Node's fs does not
// expose. `native` is null when the addon is not there, and callers use plain JS instead.

import { loadAddon, type NativeStatus } from '../core/native-addon.js';

export type { NativeStatus };

/** What the addon exports. Offsets/lengths are non-negative safe integers; the promises run on the thread pool. */
export interface NativeOps {
  /** fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros and is deallocated; the size is kept. */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /**
   * fallocate(ZERO_RANGE | KEEP_SIZE): the range reads as zeros and stays allocated. When the file system says
   * EOPNOTSUPP and `mayPunch` (default true) it punches a hole instead; rejects with code 'EOPNOTSUPP' when
   * neither works, so the caller writes zeros.
   */
  zeroRange(fd: number, offset: number, length: number, mayPunch?: boolean): Promise<'zero-range' | 'punch-hole'>;
  /** lseek(SEEK_DATA): the first data offset ≥ offset, or -1 when only a hole follows (ENXIO). */
  seekData(fd: number, offset: number): Promise<number>;
  /** lseek(SEEK_HOLE): the first hole offset ≥ offset (end of file counts as a hole), or -1 past the end. */
  seekHole(fd: number, offset: number): Promise<number>;
  /** ioctl(BLKGETSIZE64). */
  blockDeviceSize(fd: number): Promise<number>;
  /** ioctl(BLKDISCARD): the device may deallocate the range; it need not read back as zeros. */
  discard(fd: number, offset: number, length: number): Promise<void>;
  /**
   * posix_fadvise(DONTNEED): starts writeback of the range's dirty pages and drops its clean ones from the page
   * cache. Advisory: the file's content is unchanged.
   */
  dropCache(fd: number, offset: number, length: number): Promise<void>;
  /** fstat S_ISBLK, synchronous. */
  isBlockDevice(fd: number): boolean;
}

/** A rejection from the addon: `code` is the errno name, `errno` negative as in Node's fs errors. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

const functionNames = ['punchHole', 'zeroRange', 'seekData', 'seekHole', 'blockDeviceSize', 'discard', 'isBlockDevice', 'dropCache'];

/** True for the errors that mean "this file or device cannot do that": the caller falls back to plain I/O. */
export function isUnsupported(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'ENOTTY' || code === 'EINVAL';
}

/** Loads the addon afresh (the module-level `native` is this, evaluated once with process.env). */
export function loadNative(env: NodeJS.ProcessEnv = process.env): { native: NativeOps | null; status: NativeStatus } {
  const { addon, status } = loadAddon(functionNames, env);
  return { native: addon as unknown as NativeOps | null, status };
}

const loaded = loadNative();

/** The addon, or null when the plain-JS fallback is in use. */
export const native: NativeOps | null = loaded.native;

export function nativeStatus(): NativeStatus {
  return { ...loaded.status };
}
