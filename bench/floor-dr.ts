import { closeSync, openSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import {
  ACK_BYTES, BATCH_RAW_BYTES_MAX, BATCH_RECORDS_MAX, ENTRY_BYTES, FRAME_BYTES_MAX, PREFIX_BYTES, TAG_BYTES, contiguousRuns,
  openFrame, rawRecords, unpackCompressed, writeU64, type FloorKeys, type RecordRef,
} from './floor-codec.js';
import type { OpenDone, OpenJob } from './floor-codec-worker.js';
import { fdatasyncAsync, pwritevAll, readInto, type StallableReader } from './floor-io.js';
import type { FloorMode } from './floor-production.js';
import { FifoWorker } from './floor-worker-client.js';

// floor-dr: frames from floor-production are copied into one of `credits` preallocated frame buffers,
// authenticated + decrypted + LZ4-decoded (inline or in one worker thread) into that credit's decode buffer,
// then written to the DR image in order; one fdatasync per group of frames decoded while the previous group
// was being written, then one cumulative ack. A credit (frame buffer + decode buffer) returns after its ack.

export interface DrConfig {
  role: 'dr';
  mode: FloorMode;
  imagePath: string;
  keyHex: string;
  saltHex: string;
}

export interface DrStats {
  frames: number;
  /** fdatasyncs of the DR image (one per group of frames) and the largest group. */
  groups: number;
  groupFramesMax: number;
  writeBytes: number;
}

const credits = 24; // more than the production's window: DR never stalls the link for buffers
const frameBytesMax = FRAME_BYTES_MAX;
const decodeBytesMax = BATCH_RAW_BYTES_MAX;

interface Decoded { seq: number; credit: number; records: RecordRef[] }

type DrCodec = (credit: number, frameBytes: number, seq: number) => Promise<RecordRef[]>;

class Pools {
  readonly frames: Buffer;
  readonly decodes: Buffer;
  private readonly free: number[] = [];

  constructor(shared: boolean) {
    const alloc = (n: number): Buffer => (shared ? Buffer.from(new SharedArrayBuffer(n)) : Buffer.allocUnsafeSlow(n));
    this.frames = alloc(credits * frameBytesMax);
    this.decodes = alloc(credits * decodeBytesMax);
    for (let i = credits - 1; i >= 0; i--) this.free.push(i);
  }

  frame(credit: number): Buffer {
    return this.frames.subarray(credit * frameBytesMax, (credit + 1) * frameBytesMax);
  }

  decode(credit: number): Buffer {
    return this.decodes.subarray(credit * decodeBytesMax, (credit + 1) * decodeBytesMax);
  }

  take(): number | undefined {
    return this.free.pop();
  }

  give(credit: number): void {
    this.free.push(credit);
  }
}

function makeCodec(mode: FloorMode, keys: FloorKeys, pools: Pools): { open: DrCodec; tid: Promise<number | null>; close(): Promise<void> } {
  if (mode === 'worker') {
    const worker = new FifoWorker<OpenJob, OpenDone>({
      side: 'dr', keyHex: keys.key.toString('hex'), saltHex: keys.salt.toString('hex'),
      input: pools.frames.buffer as SharedArrayBuffer, inputUnitBytes: frameBytesMax,
      output: pools.decodes.buffer as SharedArrayBuffer, outputUnitBytes: decodeBytesMax, batchRecordsMax: BATCH_RECORDS_MAX,
    });
    const open: DrCodec = async (credit, frameBytes, seq) => {
      const d = await worker.run({ seq, credit, frameBytes });
      const out = pools.decode(credit);
      const records: RecordRef[] = [];
      for (let i = 0; i < d.items.length; i += 3) records.push({ offset: d.items[i]!, bytes: out.subarray(d.items[i + 1]!, d.items[i + 1]! + d.items[i + 2]!) });
      return records;
    };
    return { open, tid: worker.tid, close: () => worker.close() };
  }
  const iv = Buffer.alloc(12);
  const open: DrCodec = async (credit, frameBytes, seq) => {
    const frame = pools.frame(credit).subarray(0, frameBytes);
    const prefix = frame.subarray(0, PREFIX_BYTES);
    const count = prefix.readUInt32BE(4);
    if (mode === 'none') return rawRecords(checkSeq(frame, seq).subarray(PREFIX_BYTES), count);
    const plain = openFrame(prefix, frame.subarray(PREFIX_BYTES, frameBytes - TAG_BYTES), frame.subarray(frameBytes - TAG_BYTES), seq, keys, iv);
    return unpackCompressed(plain, count, pools.decode(credit));
  };
  return { open, tid: Promise.resolve(null), close: async () => undefined };
}

function checkSeq(frame: Buffer, seq: number): Buffer {
  const got = frame.readUInt32BE(8) * 0x1_0000_0000 + frame.readUInt32BE(12);
  if (got !== seq) throw new Error(`frame seq ${got}, expected ${seq}`);
  return frame;
}

/** Copies each frame into a free credit's frame buffer; stalls (socket paused) when no credit is free. */
class FrameReader implements StallableReader {
  stalled = false;
  private credit: number | null = null;
  private at = 0;
  private need = 4;

  constructor(private readonly pools: Pools, private readonly onFrame: (credit: number, frameBytes: number) => void) {}

  feed(chunk: Buffer, from: number): number {
    this.stalled = false;
    while (from < chunk.length) {
      if (this.credit === null) {
        const c = this.pools.take();
        if (c === undefined) {
          this.stalled = true;
          return from;
        }
        this.credit = c;
        this.at = 0;
        this.need = 4;
      }
      const frame = this.pools.frame(this.credit);
      const n = chunk.copy(frame, this.at, from, Math.min(chunk.length, from + this.need - this.at));
      this.at += n;
      from += n;
      if (this.need === 4 && this.at === 4) this.need = this.frameBytes(frame.readUInt32BE(0));
      if (this.at === this.need) {
        this.onFrame(this.credit, this.need);
        this.credit = null;
      }
    }
    return from;
  }

  private frameBytes(bodyBytes: number): number {
    if (bodyBytes < PREFIX_BYTES - 4 + ENTRY_BYTES || 4 + bodyBytes > frameBytesMax) throw new Error(`frame body of ${bodyBytes} bytes`);
    return 4 + bodyBytes;
  }
}

/** Writes decoded frames in sequence order; one fdatasync and one ack per group. */
class Applier {
  frames = 0;
  groups = 0;
  groupFramesMax = 0;
  writeBytes = 0;
  private ready: Decoded[] = [];
  private busy = false;

  constructor(private readonly fd: number, private readonly link: Socket, private readonly freed: (credits: number[]) => void) {}

  add(d: Decoded): void {
    this.ready.push(d);
    if (!this.busy) void this.run();
  }

  private async run(): Promise<void> {
    this.busy = true;
    while (this.ready.length > 0) {
      const group = this.ready;
      this.ready = [];
      for (const f of group) await this.write(f.records);
      await fdatasyncAsync(this.fd);
      this.frames += group.length;
      this.groups++;
      this.groupFramesMax = Math.max(this.groupFramesMax, group.length);
      const ack = Buffer.allocUnsafe(ACK_BYTES);
      writeU64(ack, group[group.length - 1]!.seq, 0);
      this.link.write(ack);
      this.freed(group.map((f) => f.credit));
    }
    this.busy = false;
  }

  private async write(records: RecordRef[]): Promise<void> {
    for (const run of contiguousRuns(records)) {
      await pwritevAll(this.fd, run.buffers, run.offset);
      this.writeBytes += run.buffers.reduce((n, b) => n + b.length, 0);
    }
  }
}

export interface DrHandle {
  port: number;
  codecTid: number | null;
  stats(): DrStats;
  stop(): Promise<void>;
}

export async function startDr(cfg: DrConfig): Promise<DrHandle> {
  const keys: FloorKeys = { key: Buffer.from(cfg.keyHex, 'hex'), salt: Buffer.from(cfg.saltHex, 'hex') };
  const pools = new Pools(cfg.mode === 'worker');
  const codec = makeCodec(cfg.mode, keys, pools);
  const fd = openSync(cfg.imagePath, 'r+');
  let applier: Applier | null = null;
  const server = createServer((link) => {
    if (applier) return void link.destroy(); // one link per run
    link.setNoDelay(true);
    let nextSeq = 0;
    let wake = (): void => undefined;
    const a = new Applier(fd, link, (cs) => {
      for (const c of cs) pools.give(c);
      wake();
    });
    applier = a;
    const reader = new FrameReader(pools, (credit, frameBytes) => {
      const seq = nextSeq++;
      codec.open(credit, frameBytes, seq).then((records) => a.add({ seq, credit, records }), (err: unknown) => {
        throw err;
      });
    });
    wake = readInto(link, reader).wake;
  });
  const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
  return {
    port,
    codecTid: await codec.tid,
    stats: () => ({ frames: applier?.frames ?? 0, groups: applier?.groups ?? 0, groupFramesMax: applier?.groupFramesMax ?? 0, writeBytes: applier?.writeBytes ?? 0 }),
    stop: async () => {
      server.close();
      await codec.close();
      closeSync(fd);
    },
  };
}
