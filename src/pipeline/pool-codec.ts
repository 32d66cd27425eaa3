import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { assert } from '../core/assert.js';
import { ErrorCode, vrgError, type ErrorCode as ErrorCodeT } from '../core/errors.js';
import type { DirectionKeys } from '../protocol/frame.js';
import type { WriteBatch } from '../protocol/messages.js';
import { StatsAccumulator, type Codec, type CodecStats, type CompressInput, type CompressResult, type OpenResult,
  type OpenTask, type SealTask, type ShipResult, type ShipTask } from './codec-types.js';
import { asBuffer, ownsArrayBuffer } from './codec-ops.js';
import type { CodecReply, CodecTask, WireError, WireKeys } from './codec-worker.js';

export interface PoolCodecOptions {
  threads: number;
  /** Tasks piscina may hold beyond the running ones (default 2 × threads). Callers past that wait their turn. */
  maxQueue?: number;
  /**
   * Move input buffers that own their whole ArrayBuffer to the worker without copying. The caller's Buffer is then
   * detached (length 0) after the call. Default false: inputs are copied once into a transferable buffer.
   */
  transferInputs?: boolean;
}

/** The worker file next to this module: codec-worker.ts under tap (running .ts), codec-worker.js when compiled. */
export function codecWorkerFilename(): string {
  const own = fileURLToPath(import.meta.url);
  const preferTs = own.endsWith('.ts');
  const candidates = preferTs ? ['codec-worker.ts', 'codec-worker.js'] : ['codec-worker.js', 'codec-worker.ts'];
  for (const name of candidates) {
    const path = fileURLToPath(new URL(`./${name}`, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new Error(`codec worker not found next to ${own}`);
}

/** The codec on a piscina pool: one task per batch, buffers moved both ways, bounded queue with caller backpressure. */
export class PoolCodec implements Codec {
  readonly takesParts = false;
  private readonly pool: Piscina;
  private readonly capacity: number;
  private readonly transferInputs: boolean;
  private readonly acc = new StatsAccumulator();
  private readonly waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private inFlight = 0;
  private closed = false;

  constructor(opts: PoolCodecOptions) {
    assert(Number.isInteger(opts.threads) && opts.threads >= 1, 'PoolCodec needs threads >= 1');
    const maxQueue = opts.maxQueue ?? 2 * opts.threads;
    assert(Number.isInteger(maxQueue) && maxQueue >= 0, 'PoolCodec maxQueue must be a non-negative integer');
    this.transferInputs = opts.transferInputs ?? false;
    this.capacity = opts.threads + maxQueue;
    this.pool = new Piscina({
      filename: codecWorkerFilename(),
      minThreads: opts.threads,
      maxThreads: opts.threads,
      maxQueue,
      idleTimeout: 2 ** 31 - 1,
    });
  }

  async compressRecords(input: CompressInput, compress: boolean): Promise<CompressResult> {
    const data = this.outgoing(input.data);
    const v = (await this.run({ op: 'compress', data, lengths: [...input.lengths], compress }, [data])) as CompressResult;
    return { stored: asBuffer(v.stored), storedLengths: v.storedLengths, codecs: v.codecs };
  }

  async sealBatch(t: SealTask): Promise<Buffer> {
    const payload = this.outgoing(t.payload);
    const task: CodecTask = {
      op: 'seal', keys: wireKeys(t.keys), seq: t.seq, header: new Uint8Array(t.header), payload, encrypt: t.encrypt,
    };
    return asBuffer((await this.run(task, [payload])) as Uint8Array);
  }

  async shipBatch(t: ShipTask): Promise<ShipResult> {
    if (!Buffer.isBuffer(t.payload)) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'the worker codec takes a batch payload as one buffer');
    const payload = this.outgoing(t.payload);
    const task: CodecTask = {
      op: 'ship', keys: wireKeys(t.keys), seq: t.seq, batch: t.batch, payload, encrypt: t.encrypt, compress: t.compress,
      ...(t.into && isShared(t.into) ? { into: t.into } : {}),
    };
    const v = (await this.run(task, [payload])) as { frame: Uint8Array; storedBytes: number };
    return { frame: asBuffer(v.frame), storedBytes: v.storedBytes };
  }

  async openBatch(t: OpenTask): Promise<OpenResult> {
    const frame = this.outgoing(t.frame);
    const task: CodecTask = {
      op: 'open', keys: wireKeys(t.keys), expectedSeq: t.expectedSeq, frame, ...(t.into && isShared(t.into) ? { into: t.into } : {}),
    };
    const v = (await this.run(task, [frame])) as { batch: WriteBatch; data: Uint8Array };
    return { batch: v.batch, data: asBuffer(v.data) };
  }

  /** Per-stage totals, summed over all workers. */
  stats(): CodecStats {
    return this.acc.snapshot();
  }

  /** Tasks running or queued in piscina, and callers waiting for room. */
  get pending(): { inFlight: number; waiting: number } {
    return { inFlight: this.inFlight, waiting: this.waiters.length };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(vrgError(ErrorCode.CLOSED, 'codec is closed'));
    await this.pool.close();
  }

  /**
   * A buffer for the worker: a view of shared memory as it is (nothing copied or moved), the input itself
   * (transferInputs), or one copy owning its ArrayBuffer.
   */
  private outgoing(b: Buffer): Buffer {
    if (isShared(b)) return b;
    if (this.transferInputs && ownsArrayBuffer(b)) return b;
    const copy = Buffer.allocUnsafeSlow(b.length);
    copy.set(b);
    return copy;
  }

  private async run(task: CodecTask, moved: Buffer[]): Promise<unknown> {
    await this.slot();
    try {
      const transfer = moved.filter((b) => !isShared(b));
      for (const b of transfer) assert(ownsArrayBuffer(b), 'only buffers owning their ArrayBuffer are moved');
      const reply = (await this.submit(task, transfer.map((b) => b.buffer as ArrayBuffer))) as CodecReply;
      if (!reply.ok) throw rebuildError(reply.error);
      this.acc.add(reply.samples);
      return reply.value;
    } finally {
      this.release();
    }
  }

  /** piscina.run; should its queue still be full, wait for 'drain' and retry (never an unhandled rejection). */
  private async submit(task: CodecTask, transferList: ArrayBuffer[]): Promise<unknown> {
    for (;;) {
      try {
        return await this.pool.run(task, { transferList });
      } catch (err) {
        if (!(err instanceof Error) || err.message !== 'Task queue is at limit' || this.closed) throw err;
        await new Promise<void>((resolve) => this.pool.once('drain', () => resolve()));
      }
    }
  }

  private slot(): Promise<void> {
    if (this.closed) return Promise.reject(vrgError(ErrorCode.CLOSED, 'codec is closed'));
    if (this.inFlight < this.capacity) {
      this.inFlight++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private release(): void {
    const next = this.waiters.shift();
    if (next) next.resolve(); // the slot passes straight to the next caller
    else this.inFlight--;
  }
}

function isShared(b: Uint8Array): boolean {
  return b.buffer instanceof SharedArrayBuffer;
}

function wireKeys(k: DirectionKeys): WireKeys {
  return { key: new Uint8Array(k.key), salt: new Uint8Array(k.salt) };
}

function rebuildError(e: WireError): Error {
  if (e.code !== null) return vrgError(e.code as ErrorCodeT, e.message, e.details);
  const err = new Error(e.message);
  err.name = e.name;
  return err;
}
