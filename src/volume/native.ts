// Loader for the project's N-API addon (native/src/vrg_native.cc): the Linux calls Node's fs does not expose.
// `npm install` builds native/build/Release/vrg_native.node (package.json "install" script); when the build
// failed, the platform is not Linux, or VRG_NATIVE=0 is set, `native` is null and callers use plain JS instead.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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
  /** fstat S_ISBLK, synchronous. */
  isBlockDevice(fd: number): boolean;
}

/** A rejection from the addon: `code` is the errno name, `errno` negative as in Node's fs errors. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

export interface NativeStatus {
  loaded: boolean;
  /** Where the addon is (or would be) loaded from. */
  path: string;
  /** Why it is not loaded. */
  error?: string;
}

const addonName = 'vrg_native';
const addonVersion = 1;
const functionNames = ['punchHole', 'zeroRange', 'seekData', 'seekHole', 'blockDeviceSize', 'discard', 'isBlockDevice'];

/** True for the errors that mean "this file or device cannot do that": the caller falls back to plain I/O. */
export function isUnsupported(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'ENOTTY' || code === 'EINVAL';
}

/** The project root: the first directory above this module holding native/binding.gyp (src/ or dist/src/). */
function findAddonPath(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'native', 'binding.gyp'))) return join(dir, 'native', 'build', 'Release', `${addonName}.node`);
    const up = dirname(dir);
    if (up === dir) return null;
    dir = up;
  }
}

/** Loads the addon afresh (the module-level `native` is this, evaluated once with process.env). */
export function loadNative(env: NodeJS.ProcessEnv = process.env): { native: NativeOps | null; status: NativeStatus } {
  const path = findAddonPath();
  if (path === null) return { native: null, status: { loaded: false, path: '', error: 'native/binding.gyp not found above ' + import.meta.url } };
  if (env.VRG_NATIVE === '0') return { native: null, status: { loaded: false, path, error: 'disabled by VRG_NATIVE=0' } };
  if (process.platform !== 'linux') return { native: null, status: { loaded: false, path, error: `not supported on ${process.platform}` } };
  if (!existsSync(path)) {
    return { native: null, status: { loaded: false, path, error: 'not built (npm install builds it with node-gyp and a C++ toolchain)' } };
  }
  try {
    const mod = createRequire(import.meta.url)(path) as Record<string, unknown>;
    if (mod.addon !== addonName || mod.version !== addonVersion) {
      throw new Error(`unexpected addon ${String(mod.addon)} v${String(mod.version)}, want ${addonName} v${addonVersion}`);
    }
    const missing = functionNames.filter((n) => typeof mod[n] !== 'function');
    if (missing.length > 0) throw new Error(`addon lacks ${missing.join(', ')}`);
    return { native: mod as unknown as NativeOps, status: { loaded: true, path } };
  } catch (err) {
    return { native: null, status: { loaded: false, path, error: (err as Error).message } };
  }
}

const loaded = loadNative();

/** The addon, or null when the plain-JS fallback is in use. */
export const native: NativeOps | null = loaded.native;

export function nativeStatus(): NativeStatus {
  return { ...loaded.status };
}
