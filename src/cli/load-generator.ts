import { open } from 'node:fs/promises';
import { ErrorCode, vrgError } from '../core/errors.js';
import { seededRandom } from '../core/random.js';

// The demo's and benchmark's built-in write load. Seeded, and its content compresses like a VM disk
// (LZ4 about 2:1): a corpus of text-like runs, structured records, zero-padded blocks and random
// (already-compressed) blocks. Every write is stamped with its sequence and offset so that no two
// writes carry the same bytes. With `sourcePath` the content is a real disk image read in order.

export interface LoadOptions {
  totalBytes: number;
  volumes: Array<{ volUuid: string; sizeBytes: number }>;
  writeBytes: number;
  queueDepth: number;
  seed: number;
  sourcePath?: string | undefined;
  /** Lay writes end to end from offset 0 (wrapping) instead of at random offsets. */
  sequential?: boolean | undefined;
}

export interface LoadWrite {
  /** Position of the write in the load, from 0. */
  index: number;
  volUuid: string;
  offset: number;
  data: Buffer;
}

const corpusBytes = 32 * 1024 * 1024;
const blockBytes = 4096;

const words = ('the of and to in is for on that by with kernel page block inode journal extent ' +
  'replication volume snapshot config user system error warning info debug service start stop ' +
  'network address port /usr/lib/x86_64-linux-gnu/ libc.so.6 0x7f3a2c00 true false null return')
  .split(' ');

function buildCorpus(seed: number): Buffer {
  const rnd = seededRandom(seed);
  const out = Buffer.alloc(corpusBytes); // zeroed: short words leave bytes unwritten, and the corpus must be reproducible
  for (let at = 0; at < corpusBytes; at += blockBytes) {
    const block = out.subarray(at, at + blockBytes);
    const kind = rnd.uint32() % 100;
    if (kind < 24) {
      block.set(rnd.bytes(blockBytes)); // compressed media, encrypted files
    } else if (kind < 36) {
      block.fill(0);
      block.set(rnd.bytes(256 + (rnd.uint32() % 1024))); // metadata block, mostly zero
    } else if (kind < 68) {
      let p = 0;
      while (p < blockBytes) p += block.write(`${words[rnd.uint32() % words.length]} `, p);
    } else {
      for (let p = 0; p + 32 <= blockBytes; p += 32) { // fixed-width records
        block.writeUInt32LE(p * 7919 + (rnd.uint32() & 0xff), p);
        block.writeUInt32LE(rnd.uint32() & 0xffff, p + 4);
        block.fill(0x20, p + 8, p + 24);
        block.write(words[rnd.uint32() % words.length]!.slice(0, 8), p + 24);
      }
    }
  }
  return out;
}

/** Yields the writes of the load in order; the caller keeps `queueDepth` of them in flight. */
export async function* generateLoad(opts: LoadOptions): AsyncGenerator<LoadWrite> {
  if (opts.volumes.length === 0) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'load needs at least one volume');
  const rnd = seededRandom(opts.seed ^ 0x5eed);
  const corpus = opts.sourcePath ? null : buildCorpus(opts.seed);
  const source = opts.sourcePath ? await open(opts.sourcePath, 'r') : null;
  const sourceSize = source ? (await source.stat()).size : 0;
  if (source && sourceSize < opts.writeBytes) {
    await source.close();
    throw vrgError(ErrorCode.INVALID_ARGUMENT, `source ${opts.sourcePath} is smaller than one write`);
  }
  let sourceAt = 0;
  const nextOffset = opts.volumes.map(() => 0);
  try {
    for (let written = 0, n = 0; written < opts.totalBytes; n++) {
      const vol = opts.volumes[n % opts.volumes.length]!;
      const len = Math.min(opts.writeBytes, opts.totalBytes - written, vol.sizeBytes);
      const slots = Math.floor((vol.sizeBytes - len) / blockBytes) + 1;
      let offset = (rnd.uint32() % slots) * blockBytes;
      if (opts.sequential) {
        const v = n % opts.volumes.length;
        if (nextOffset[v]! + len > vol.sizeBytes) nextOffset[v] = 0;
        offset = nextOffset[v]!;
        nextOffset[v] = offset + len;
      }
      // A fresh buffer per write: the intake journals (and caches) the caller's buffer without a copy.
      const data = Buffer.allocUnsafeSlow(len);
      if (source) {
        if (sourceAt + len > sourceSize) sourceAt = 0;
        await source.read(data, 0, len, sourceAt);
        sourceAt += len;
      } else {
        const from = (rnd.uint32() % Math.floor((corpusBytes - len) / blockBytes)) * blockBytes;
        corpus!.copy(data, 0, from, from + len);
        if (len >= 16) {
          data.writeUInt32LE(n, 0);
          data.writeUInt32LE(offset % 0x1_0000_0000, 4);
        }
      }
      written += len;
      yield { index: n, volUuid: vol.volUuid, offset, data };
    }
  } finally {
    await source?.close();
  }
}

/** Runs the load against `write` with `queueDepth` writes in flight; reports each completion. */
export async function runLoad(
  opts: LoadOptions,
  write: (w: LoadWrite) => Promise<void>,
  onDone: (w: LoadWrite, latencyNs: bigint) => void,
): Promise<void> {
  const inFlight = new Set<Promise<void>>();
  let failure: unknown = null;
  for await (const w of generateLoad(opts)) {
    if (failure) break;
    const started = process.hrtime.bigint();
    const p: Promise<void> = write(w).then(
      () => {
        onDone(w, process.hrtime.bigint() - started);
      },
      (err) => { failure = err; },
    ).finally(() => inFlight.delete(p));
    inFlight.add(p);
    if (inFlight.size >= opts.queueDepth) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  if (failure) throw failure;
}
