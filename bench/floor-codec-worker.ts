import { readlinkSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import {
  openFrame, packCompressed, PREFIX_BYTES, sealFrame, stageBytesFor, TAG_BYTES, unpackCompressed,
  type FloorKeys, type RecordRef,
} from './floor-codec.js';

// The one codec worker thread of a floor process (mode 'worker'). The buffers it reads and writes are the
// process's shared pools (SharedArrayBuffer), so only indexes cross the thread boundary; the ciphertext
// (node:crypto's own fresh buffer) is transferred back, not copied.

export interface CodecWorkerData {
  side: 'production' | 'dr';
  keyHex: string;
  saltHex: string;
  /** production: the slot pool; dr: the frame buffers (credit i at i * unitBytes). */
  input: SharedArrayBuffer;
  inputUnitBytes: number;
  /** dr: the decode buffers (credit i at i * outputUnitBytes). */
  output?: SharedArrayBuffer;
  outputUnitBytes?: number;
  batchRecordsMax: number;
}

/** production -> worker: slot, offset, length triples. */
export interface SealJob { seq: number; items: number[] }
export interface SealDone { seq: number; prefix: Uint8Array; ciphertext: ArrayBuffer; tag: Uint8Array; rawBytes: number; storedBytes: number }
/** dr -> worker: the frame in credit's frame buffer. */
export interface OpenJob { seq: number; credit: number; frameBytes: number }
/** offset, at (in credit's decode buffer), length triples. */
export interface OpenDone { seq: number; credit: number; items: number[] }

const data = workerData as CodecWorkerData;
const keys: FloorKeys = { key: Buffer.from(data.keyHex, 'hex'), salt: Buffer.from(data.saltHex, 'hex') };
const iv = Buffer.alloc(12);
const input = Buffer.from(data.input);
const output = data.output ? Buffer.from(data.output) : Buffer.alloc(0);
const stage = Buffer.allocUnsafeSlow(data.side === 'production' ? stageBytesFor(data.batchRecordsMax, data.inputUnitBytes) : 0);
const unit = (b: Buffer, i: number, bytes: number): Buffer => b.subarray(i * bytes, (i + 1) * bytes);

function seal(job: SealJob): void {
  const records: RecordRef[] = [];
  for (let i = 0; i < job.items.length; i += 3) {
    const slot = unit(input, job.items[i]!, data.inputUnitBytes);
    records.push({ offset: job.items[i + 1]!, bytes: slot.subarray(0, job.items[i + 2]!) });
  }
  const { usedBytes, rawBytes } = packCompressed(records, stage);
  const [prefix, ciphertext, tag] = sealFrame(stage, usedBytes, records.length, job.seq, keys, iv) as [Buffer, Buffer, Buffer];
  const owned = ciphertext.byteOffset === 0 && ciphertext.buffer.byteLength === ciphertext.length;
  const ab = owned ? (ciphertext.buffer as ArrayBuffer) : new Uint8Array(ciphertext).buffer;
  const done: SealDone = { seq: job.seq, prefix, ciphertext: ab, tag, rawBytes, storedBytes: usedBytes };
  parentPort!.postMessage(done, [ab]);
}

function open(job: OpenJob): void {
  const frame = unit(input, job.credit, data.inputUnitBytes).subarray(0, job.frameBytes);
  const prefix = frame.subarray(0, PREFIX_BYTES);
  const plain = openFrame(prefix, frame.subarray(PREFIX_BYTES, frame.length - TAG_BYTES), frame.subarray(frame.length - TAG_BYTES),
    job.seq, keys, iv);
  const out = unit(output, job.credit, data.outputUnitBytes!);
  const records = unpackCompressed(plain, prefix.readUInt32BE(4), out);
  const items: number[] = [];
  for (const r of records) items.push(r.offset, r.bytes.byteOffset - out.byteOffset, r.bytes.length);
  const done: OpenDone = { seq: job.seq, credit: job.credit, items };
  parentPort!.postMessage(done);
}

// readlink runs on this thread: /proc/thread-self is <pid>/task/<this thread's tid>.
parentPort!.postMessage({ tid: Number(readlinkSync('/proc/thread-self').split('/').pop()) });
parentPort!.on('message', (job: SealJob | OpenJob) => ('credit' in job ? open(job) : seal(job)));
