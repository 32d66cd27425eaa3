import { execFile } from 'node:child_process';
import { open } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { systemClock } from '../src/core/clock.js';
import { MiB } from '../src/core/limits.js';
import { systemRandom } from '../src/core/random.js';
import { openFrame, parseFrame, type DirectionKeys, type RawFrame } from '../src/protocol/frame.js';
import { encodeWriteBatch } from '../src/protocol/messages.js';
import { compressRecords, sealBatch } from '../src/pipeline/codec-ops.js';
import { lz4Decode } from '../src/pipeline/lz4-native.js';

// Single-thread codec stage throughput on a disk image, next to the reference tools on the same machine:
// `lz4 -b1 -B<chunk>` (LZ4 1.9.x benchmark mode) and `openssl speed -evp aes-128-gcm`.
// MB = 10^6 bytes throughout (as lz4 and openssl report).

const run = promisify(execFile);

export interface CodecBenchResult {
  imagePath: string;
  /** Bytes of the image used (the first imageBytesMax of larger files). */
  imageBytes: number;
  chunkBytes: number;
  ours: {
    lz4CompressMBps: number;
    lz4DecompressMBps: number;
    /** AES-128-GCM via encodeFrame/openFrame, cycling through the image (data not in CPU cache). */
    sealMBps: number;
    openMBps: number;
    /** The same on one 1 MiB buffer sealed over and over (cache-hot, like `openssl speed`). */
    sealHotMBps: number;
    openHotMBps: number;
    compressSealMBps: number;
    /** plain bytes / stored bytes, each chunk compressed independently (RAW when LZ4 does not shrink it). */
    ratio: number;
  };
  reference: {
    lz4CompressMBps: number | null;
    lz4DecompressMBps: number | null;
    lz4Ratio: number | null;
    opensslAesGcmMBps: number | null;
    lz4Command: string;
    opensslCommand: string;
    errors: string[];
  };
  /** ours / theirs (null when the reference tool could not be run or parsed). */
  ratios: {
    lz4Compress: number | null; lz4Decompress: number | null;
    seal: number | null; open: number | null; sealHot: number | null; openHot: number | null;
  };
}

const imageBytesMax = 512 * MiB;

async function readChunks(path: string, chunkBytes: number): Promise<Buffer[]> {
  const fh = await open(path, 'r');
  try {
    const size = Math.min((await fh.stat()).size, imageBytesMax);
    const chunks: Buffer[] = [];
    for (let pos = 0; pos + chunkBytes <= size; pos += chunkBytes) {
      const b = Buffer.allocUnsafeSlow(chunkBytes);
      const { bytesRead } = await fh.read(b, 0, chunkBytes, pos);
      if (bytesRead < chunkBytes) break;
      chunks.push(b);
    }
    if (chunks.length === 0) throw new Error(`${path}: smaller than one ${chunkBytes}-byte chunk`);
    return chunks;
  } finally {
    await fh.close();
  }
}

/** Runs `fn(i)` over i = 0, 1, 2... for at least `seconds` (and at least `minCalls` calls); returns MB/s of `bytesOf`. */
function throughput(seconds: number, minCalls: number, fn: (i: number) => number): number {
  const t0 = systemClock.monotonicNs();
  const budget = BigInt(Math.round(seconds * 1e9));
  let bytes = 0;
  let i = 0;
  while (i < minCalls || systemClock.monotonicNs() - t0 < budget) bytes += fn(i++);
  const ns = Number(systemClock.monotonicNs() - t0);
  return bytes / 1e6 / (ns / 1e9);
}

function headerFor(length: number, codec: number, storedLength: number): Uint8Array {
  return encodeWriteBatch({
    vmUuid: 'bench', firstSeq: 1, volumeUuids: ['bench-vol'], producedAtMs: 0,
    records: [{ volumeIndex: 0, offset: 0, length, kind: 1, codec, storedLength }],
  });
}

function measureOurs(chunks: Buffer[], seconds: number, keys: DirectionKeys): CodecBenchResult['ours'] {
  const n = chunks.length;
  const chunk = (i: number): Buffer => chunks[i % n]!;
  const compressed = chunks.map((c) => compressRecords(c, [c.length], true).value);
  const plain = chunks.reduce((s, c) => s + c.length, 0);
  const stored = compressed.reduce((s, c) => s + c.stored.length, 0);
  const lz4CompressMBps = throughput(seconds, n, (i) => {
    compressRecords(chunk(i), [chunk(i).length], true);
    return chunk(i).length;
  });
  const out = Buffer.allocUnsafeSlow(chunks[0]!.length);
  const lz4Only = compressed.map((c, i) => ({ c, plain: chunks[i]! })).filter((x) => x.c.codecs[0] === 1);
  const lz4DecompressMBps = lz4Only.length === 0 ? NaN : throughput(seconds, lz4Only.length, (i) => {
    const x = lz4Only[i % lz4Only.length]!;
    const got = lz4Decode(x.c.stored, out.subarray(0, x.plain.length));
    if (got !== x.plain.length) throw new Error('bench: LZ4 round trip failed');
    return got;
  });
  const aes = measureAes(chunks, seconds, keys);
  const compressSealMBps = throughput(seconds, n, (i) => {
    const c = compressRecords(chunk(i), [chunk(i).length], true).value;
    sealBatch(keys, i, headerFor(chunk(i).length, c.codecs[0]!, c.stored.length), c.stored, true);
    return chunk(i).length;
  });
  return { lz4CompressMBps, lz4DecompressMBps, ...aes, compressSealMBps, ratio: plain / stored };
}

/** Frames kept for the open measurement (bounds the bench's memory). */
const openFramesMax = 64;

function measureAes(chunks: Buffer[], seconds: number, keys: DirectionKeys):
    { sealMBps: number; openMBps: number; sealHotMBps: number; openHotMBps: number } {
  const n = chunks.length;
  const header = headerFor(chunks[0]!.length, 0, chunks[0]!.length);
  const seal = (i: number, c: Buffer): Buffer => sealBatch(keys, i, header, c, true).value;
  const sealMBps = throughput(seconds, n, (i) => seal(i, chunks[i % n]!).length);
  const frames: RawFrame[] = chunks.slice(0, openFramesMax).map((c, i) => parseFrame(seal(i, c)));
  const open = (i: number): number => {
    const f = frames[i % frames.length]!;
    return openFrame(f, keys, f.seq).payload.length;
  };
  const openMBps = throughput(seconds, frames.length, open);
  const hot = chunks[0]!;
  const sealHotMBps = throughput(seconds / 2, 1, (i) => seal(i, hot).length);
  const hotFrame = parseFrame(seal(0, hot));
  const openHotMBps = throughput(seconds / 2, 1, () => openFrame(hotFrame, keys, 0).payload.length);
  return { sealMBps, openMBps, sealHotMBps, openHotMBps };
}

/** lz4 1.9.4 -b prints progress lines separated by \r; the last `(ratio), C MB/s ,D MB/s` is the result. */
export function parseLz4Bench(output: string): { ratio: number; compressMBps: number; decompressMBps: number } | null {
  const re = /\(\s*([\d.]+)\s*\)\s*,\s*([\d.]+)\s*MB\/s\s*,\s*([\d.]+)\s*MB\/s/g;
  let last: RegExpExecArray | null = null;
  for (let m = re.exec(output); m !== null; m = re.exec(output)) last = m;
  if (!last) return null;
  return { ratio: Number(last[1]), compressMBps: Number(last[2]), decompressMBps: Number(last[3]) };
}

/** `openssl speed -evp aes-128-gcm -bytes N`: the row starting with the cipher name, figures in 1000s of bytes/s. */
export function parseOpensslSpeed(output: string): number | null {
  for (const line of output.split(/\r?\n/)) {
    if (!/^\s*aes-128-gcm\s/i.test(line)) continue;
    const figures = [...line.matchAll(/([\d.]+)k\b/g)].map((m) => Number(m[1]));
    const last = figures.at(-1);
    if (last !== undefined && Number.isFinite(last)) return (last * 1000) / 1e6;
  }
  return null;
}

async function measureReference(path: string, chunkBytes: number, seconds: number): Promise<CodecBenchResult['reference']> {
  const errors: string[] = [];
  const lz4Args = ['-b1', `-B${chunkBytes}`, `-i${Math.max(1, Math.round(seconds))}`, path];
  const sslArgs = ['speed', '-evp', 'aes-128-gcm', '-bytes', String(chunkBytes), '-seconds', String(Math.max(1, Math.round(seconds)))];
  let lz4: ReturnType<typeof parseLz4Bench> = null;
  let aes: number | null = null;
  try {
    const r = await run('lz4', lz4Args, { maxBuffer: 16 * MiB });
    lz4 = parseLz4Bench(`${r.stdout}\n${r.stderr}`);
    if (!lz4) errors.push(`lz4: could not parse output: ${(r.stdout + r.stderr).slice(-300)}`);
  } catch (err) {
    errors.push(`lz4: ${(err as Error).message}`);
  }
  try {
    const r = await run('openssl', sslArgs, { maxBuffer: 16 * MiB });
    aes = parseOpensslSpeed(r.stdout);
    if (aes === null) errors.push(`openssl: could not parse output: ${r.stdout.slice(-300)}`);
  } catch (err) {
    errors.push(`openssl: ${(err as Error).message}`);
  }
  return {
    lz4CompressMBps: lz4?.compressMBps ?? null,
    lz4DecompressMBps: lz4?.decompressMBps ?? null,
    lz4Ratio: lz4?.ratio ?? null,
    opensslAesGcmMBps: aes,
    lz4Command: ['lz4', ...lz4Args].join(' '),
    opensslCommand: ['openssl', ...sslArgs].join(' '),
    errors,
  };
}

const ratio = (ours: number, theirs: number | null): number | null =>
  theirs === null || theirs <= 0 || !Number.isFinite(ours) ? null : ours / theirs;

/** Single-thread codec stages vs lz4 -b1 and openssl speed, on the same image and chunk size. */
function bestOf<T extends Record<string, number>>(a: T, b: T): T {
  const out = { ...a };
  for (const k of Object.keys(a) as Array<keyof T>) {
    const x = a[k] as number;
    const y = b[k] as number;
    (out[k] as number) = Number.isFinite(y) && !(y <= x) ? y : x;
  }
  return out;
}

function bestReference(a: CodecBenchResult['reference'], b: CodecBenchResult['reference']): CodecBenchResult['reference'] {
  const max = (x: number | null, y: number | null): number | null => (x === null ? y : y === null ? x : Math.max(x, y));
  return {
    ...a,
    lz4CompressMBps: max(a.lz4CompressMBps, b.lz4CompressMBps),
    lz4DecompressMBps: max(a.lz4DecompressMBps, b.lz4DecompressMBps),
    opensslAesGcmMBps: max(a.opensslAesGcmMBps, b.opensslAesGcmMBps),
    errors: [...a.errors, ...b.errors],
  };
}

export async function benchCodec(opts: { imagePath: string; chunkBytes?: number; seconds?: number; rounds?: number }): Promise<CodecBenchResult> {
  const chunkBytes = opts.chunkBytes ?? MiB;
  const seconds = opts.seconds ?? 1;
  const chunks = await readChunks(opts.imagePath, chunkBytes);
  const keys: DirectionKeys = { key: systemRandom.bytes(16), salt: systemRandom.bytes(4) };
  // Rounds alternate ours and the references, and each figure is the best of its rounds: on a small
  // shared machine a single pass mostly measures whatever else ran at that moment.
  const rounds = opts.rounds ?? 3;
  let ours = measureOurs(chunks, seconds, keys);
  let reference = await measureReference(opts.imagePath, chunkBytes, seconds);
  for (let r = 1; r < rounds; r++) {
    ours = bestOf(ours, measureOurs(chunks, seconds, keys));
    reference = bestReference(reference, await measureReference(opts.imagePath, chunkBytes, seconds));
  }
  return {
    imagePath: opts.imagePath,
    imageBytes: chunks.length * chunkBytes,
    chunkBytes,
    ours,
    reference,
    ratios: {
      lz4Compress: ratio(ours.lz4CompressMBps, reference.lz4CompressMBps),
      lz4Decompress: ratio(ours.lz4DecompressMBps, reference.lz4DecompressMBps),
      seal: ratio(ours.sealMBps, reference.opensslAesGcmMBps),
      open: ratio(ours.openMBps, reference.opensslAesGcmMBps),
      sealHot: ratio(ours.sealHotMBps, reference.opensslAesGcmMBps),
      openHot: ratio(ours.openHotMBps, reference.opensslAesGcmMBps),
    },
  };
}

export function formatCodecBench(r: CodecBenchResult): string {
  const f = (v: number | null): string => (v === null || !Number.isFinite(v) ? '-' : v.toFixed(1));
  const x = (v: number | null): string => (v === null ? '-' : `${v.toFixed(2)}x`);
  const rows: Array<[string, number | null, number | null, number | null]> = [
    ['LZ4 compress (MB/s)', r.ours.lz4CompressMBps, r.reference.lz4CompressMBps, r.ratios.lz4Compress],
    ['LZ4 decompress (MB/s)', r.ours.lz4DecompressMBps, r.reference.lz4DecompressMBps, r.ratios.lz4Decompress],
    ['AES-128-GCM seal (MB/s)', r.ours.sealMBps, r.reference.opensslAesGcmMBps, r.ratios.seal],
    ['AES-128-GCM open (MB/s)', r.ours.openMBps, r.reference.opensslAesGcmMBps, r.ratios.open],
    ['AES-128-GCM seal hot (MB/s)', r.ours.sealHotMBps, r.reference.opensslAesGcmMBps, r.ratios.sealHot],
    ['AES-128-GCM open hot (MB/s)', r.ours.openHotMBps, r.reference.opensslAesGcmMBps, r.ratios.openHot],
    ['compress+seal (MB/s)', r.ours.compressSealMBps, null, null],
    ['compression ratio', r.ours.ratio, r.reference.lz4Ratio, null],
  ];
  const lines = [
    `codec bench: ${r.imagePath} (${(r.imageBytes / MiB).toFixed(0)} MiB, ${r.chunkBytes}-byte chunks, one thread, best of rounds)`,
    `${'stage'.padEnd(30)}${'vrg'.padStart(10)}${'reference'.padStart(12)}${'vrg/ref'.padStart(10)}`,
    ...rows.map(([name, a, b, c]) => `${name.padEnd(30)}${f(a).padStart(10)}${f(b).padStart(12)}${x(c).padStart(10)}`),
    `reference: ${r.reference.lz4Command}; ${r.reference.opensslCommand}`,
    ...r.reference.errors.map((e) => `warning: ${e}`),
  ];
  return lines.join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const imagePath = process.argv[2];
  if (!imagePath) {
    process.stderr.write('usage: node dist/bench/codec-bench.js <image> [seconds]\n');
    process.exit(2);
  }
  const seconds = process.argv[3] ? Number(process.argv[3]) : undefined;
  benchCodec({ imagePath, ...(seconds ? { seconds } : {}) }).then(
    (r) => process.stdout.write(`${formatCodecBench(r)}\n`),
    (err: unknown) => {
      process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
