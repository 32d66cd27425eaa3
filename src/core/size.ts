import { vrgError, ErrorCode } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40,
};

/** Parses "512MiB", "20MB", "4096" into bytes; a rate like "20MB/s" is accepted when `rate` is set. */
export function parseSize(text: string, what = 'size', opts: { rate?: boolean } = {}): number {
  let t = text.trim();
  if (opts.rate && t.toLowerCase().endsWith('/s')) t = t.slice(0, -2);
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(t);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, `${what}: cannot parse "${text}" (expected e.g. 512MiB, 20MB, 4096)`);
  }
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw vrgError(ErrorCode.INVALID_ARGUMENT, `${what}: "${text}" is too large`);
  return bytes;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
