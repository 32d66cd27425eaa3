import { loadAddon, type NativeStatus } from '../core/native-addon.js';

// AES-128-GCM from the project's addon (core/native-addon.ts), on the calling thread and into the caller's
// buffers: node:crypto's update() allocates and zero-fills an output buffer per call, which the frame codec then
// copies (measured here: 2.6 GB/s sealing 1 MiB in 64 KiB updates, against 7.4 GB/s in place). null when the
// addon is not built (or built without OpenSSL headers): frame.ts then uses node:crypto, with identical bytes.

export interface NativeGcm {
  /** Encrypts src into dst (as long; may be src itself) and writes the 16-byte tag. key 16, iv 12 bytes. */
  gcmSeal(key: Uint8Array, iv: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array, tag: Uint8Array): void;
  /** Decrypts src into dst; true iff the tag verifies (dst holds nothing usable otherwise). */
  gcmOpen(key: Uint8Array, iv: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array, tag: Uint8Array): boolean;
}

/** Loads the GCM functions afresh (the module-level `nativeGcm` is this, evaluated once with process.env). */
export function loadNativeGcm(env: NodeJS.ProcessEnv = process.env): { gcm: NativeGcm | null; status: NativeStatus } {
  const { addon, status } = loadAddon(['gcmSeal', 'gcmOpen'], env);
  return { gcm: addon as unknown as NativeGcm | null, status };
}

const loaded = loadNativeGcm();

/** The addon's GCM, or null when node:crypto does the work. */
export const nativeGcm: NativeGcm | null = loaded.gcm;

export function nativeGcmStatus(): NativeStatus {
  return { ...loaded.status };
}
