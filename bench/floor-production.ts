import { closeSync, openSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import {
  ACK_BYTES, BATCH_BYTES, BATCH_RECORDS_MAX, RECORD_BYTES_MAX, contiguousRuns, packCompressed, rawTable, readU64, sealFrame,
  stageBytesFor, writeU64, type FloorKeys, type RecordRef,
} from './floor-codec.js';
import type { SealDone, SealJob } from './floor-codec-worker.js';
import { fdatasyncAsync, pwritevAll } from './floor-io.js';
import { serveNbd, simpleReplies, slotData, SlotPool, type Slot } from './floor-nbd-intake.js';
import { FifoWorker } from './floor-worker-client.js';

// floor-production: NBD writes -> journal (sequential pwritev, one fdatasync per group of writes that arrived
// together) + source image (pwritev) -> reply; committed writes are batched ~1 MiB per frame, LZ4 + AES-GCM
// sealed (inline, in one worker thread, or not at all for the no-codec variant) and sent over one TCP
// connection to floor-dr, at most windowFrames unacknowledged.

export type FloorMode = 'inline' | 'worker' | 'none';

export interface ProductionConfig {
  role: 'production';
  mode: FloorMode;
  sourcePath: string;
  journalPath: string;
  volumeBytes: number;
  drPort: number;
  keyHex: string;
  saltHex: string;
}

export interface ProductionStats {
  writes: number;
  writeBytes: number;
  /** Journal group commits (= journal fdatasyncs) and the largest group. */
  groups: number;
  groupWritesMax: number;
  frames: number;
  rawBytes: number;
  /** Bytes of table + data before encryption (LZ4 output; raw bytes for the no-codec variant). */
  storedBytes: number;
}

const slotBytes = RECORD_BYTES_MAX;
const slotCount = 256; // 16 MiB: room for the NBD queue and the batches being built
const batchBytes = BATCH_BYTES;
const batchRecordsMax = BATCH_RECORDS_MAX;
const windowFrames = 16;
const journalHeadMagic = 0x464c5231; // 'FLR1'

type Item = { slot: Slot } | { session: Socket; cookie: Buffer };

/** Group commit: whatever arrived while the previous group was being committed is the next group. */
class GroupCommit {
  groups = 0;
  groupWritesMax = 0;
  private pending: Item[] = [];
  private busy = false;
  private scheduled = false;
  private journalAt = 0;
  private recordSeq = 0;

  constructor(private readonly journalFd: number, private readonly imageFd: number, private readonly done: (items: Item[]) => void) {}

  get idle(): boolean {
    return !this.busy && !this.scheduled && this.pending.length === 0;
  }

  add(item: Item): void {
    this.pending.push(item);
    if (this.busy || this.scheduled) return;
    // After this poll phase: every write already read from the socket joins the group.
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.run();
    });
  }

  private async run(): Promise<void> {
    while (this.pending.length > 0) {
      const items = this.pending;
      this.pending = [];
      this.busy = true;
      await this.commit(items.filter((i): i is { slot: Slot } => 'slot' in i).map((i) => i.slot));
      this.busy = false;
      this.done(items);
    }
  }

  private async commit(slots: Slot[]): Promise<void> {
    if (slots.length === 0) return; // a lone FLUSH: every earlier write is committed already
    this.groups++;
    this.groupWritesMax = Math.max(this.groupWritesMax, slots.length);
    const iov: Buffer[] = [];
    for (const s of slots) iov.push(this.journalHead(s), slotData(s));
    const at = this.journalAt;
    this.journalAt += slots.reduce((n, s) => n + s.head.length + s.length, 0);
    const journal = pwritevAll(this.journalFd, iov, at).then(() => fdatasyncAsync(this.journalFd));
    await Promise.all([journal, this.writeImage(slots)]);
  }

  private journalHead(s: Slot): Buffer {
    s.head.writeUInt32BE(journalHeadMagic, 0);
    s.head.writeUInt32BE(s.length, 4);
    writeU64(s.head, s.offset, 8);
    writeU64(s.head, this.recordSeq++, 16);
    return s.head;
  }

  /** Runs in order, one after another: overlapping writes in a group land in arrival order. */
  private async writeImage(slots: Slot[]): Promise<void> {
    for (const run of contiguousRuns(slots.map((s): RecordRef => ({ offset: s.offset, bytes: slotData(s) })))) {
      await pwritevAll(this.imageFd, run.buffers, run.offset);
    }
  }
}

interface ProductionCodec {
  /** Wire buffers of frame `seq`; `holdsSlots`: the wire is the slots themselves (free them once written). */
  seal(slots: Slot[], seq: number): Promise<{ wire: Buffer[]; rawBytes: number; storedBytes: number }>;
  readonly holdsSlots: boolean;
  /** Thread id of the codec worker (null: no worker). */
  readonly tid: Promise<number | null>;
  close(): Promise<void>;
}

function inlineCodec(keys: FloorKeys): ProductionCodec {
  const stage = Buffer.allocUnsafeSlow(stageBytesFor(batchRecordsMax, slotBytes));
  const iv = Buffer.alloc(12);
  return {
    holdsSlots: false,
    tid: Promise.resolve(null),
    seal: async (slots, seq) => {
      const { usedBytes, rawBytes } = packCompressed(slots.map((s) => ({ offset: s.offset, bytes: slotData(s) })), stage);
      return { wire: sealFrame(stage, usedBytes, slots.length, seq, keys, iv), rawBytes, storedBytes: usedBytes };
    },
    close: async () => undefined,
  };
}

function workerCodec(keys: FloorKeys, pool: SlotPool): ProductionCodec {
  const worker = new FifoWorker<SealJob, SealDone>({
    side: 'production', keyHex: keys.key.toString('hex'), saltHex: keys.salt.toString('hex'),
    input: pool.memory.buffer as SharedArrayBuffer, inputUnitBytes: slotBytes, batchRecordsMax,
  });
  return {
    holdsSlots: false,
    tid: worker.tid,
    seal: async (slots, seq) => {
      const d = await worker.run({ seq, items: slots.flatMap((s) => [s.index, s.offset, s.length]) });
      const wire = [Buffer.from(d.prefix.buffer, d.prefix.byteOffset, d.prefix.length), Buffer.from(d.ciphertext),
        Buffer.from(d.tag.buffer, d.tag.byteOffset, d.tag.length)];
      return { wire, rawBytes: d.rawBytes, storedBytes: d.storedBytes };
    },
    close: () => worker.close(),
  };
}

function noCodec(): ProductionCodec {
  return {
    holdsSlots: true,
    tid: Promise.resolve(null),
    seal: async (slots, seq) => {
      const records = slots.map((s): RecordRef => ({ offset: s.offset, bytes: slotData(s) }));
      const bytes = records.reduce((n, r) => n + r.bytes.length, 0);
      return { wire: [rawTable(records, seq), ...records.map((r) => r.bytes)], rawBytes: bytes, storedBytes: bytes };
    },
    close: async () => undefined,
  };
}

/** Committed writes -> frames -> DR, at most windowFrames unacknowledged; slots go back once sealed (or sent). */
class Shipper {
  frames = 0;
  rawBytes = 0;
  storedBytes = 0;
  private queue: Slot[] = [];
  private queuedBytes = 0;
  private nextSeq = 0;
  private acked = -1;

  constructor(private readonly link: Socket, private readonly codec: ProductionCodec, private readonly pool: SlotPool,
      private readonly changed: () => void) {}

  get idle(): boolean {
    return this.queue.length === 0 && this.acked === this.nextSeq - 1;
  }

  push(slots: Slot[]): void {
    for (const s of slots) this.queue.push(s);
    this.queuedBytes += slots.reduce((n, s) => n + s.length, 0);
    this.pump();
  }

  onAck(seq: number): void {
    this.acked = seq;
    this.pump();
    this.changed();
  }

  private pump(): void {
    for (;;) {
      const inFlight = this.nextSeq - this.acked - 1;
      if (this.queue.length === 0 || inFlight >= windowFrames) return;
      // While the link is busy wait for a full batch; when it is idle send what there is (no added latency).
      if (this.queuedBytes < batchBytes && this.queue.length < batchRecordsMax && inFlight > 0) return;
      const batch = this.takeBatch();
      const seq = this.nextSeq++;
      this.codec.seal(batch, seq).then((r) => this.send(batch, r.wire, r.rawBytes, r.storedBytes), fatal);
    }
  }

  private takeBatch(): Slot[] {
    let bytes = 0;
    let n = 0;
    while (n < this.queue.length && n < batchRecordsMax && bytes < batchBytes) bytes += this.queue[n++]!.length;
    this.queuedBytes -= bytes;
    return this.queue.splice(0, n);
  }

  private send(batch: Slot[], wire: Buffer[], rawBytes: number, storedBytes: number): void {
    this.frames++;
    this.rawBytes += rawBytes;
    this.storedBytes += storedBytes;
    if (!this.codec.holdsSlots) this.pool.give(batch);
    this.link.cork();
    wire.forEach((b, i) => this.link.write(b, i === wire.length - 1 && this.codec.holdsSlots ? () => this.pool.give(batch) : undefined));
    this.link.uncork();
  }
}

function fatal(err: unknown): never {
  throw err instanceof Error ? err : new Error(String(err));
}

export interface ProductionHandle {
  nbdPort: number;
  codecTid: number | null;
  /** Resolves once every write received so far is journaled, replied to, and acknowledged by DR. */
  drained(): Promise<ProductionStats>;
  stop(): Promise<void>;
}

function connectLink(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
    s.setNoDelay(true);
  });
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
}

/** Acks are 8-byte cumulative seqs; a chunk may hold several or part of one. */
function onAcks(link: Socket, ack: (seq: number) => void): void {
  let rest = Buffer.alloc(0);
  link.on('data', (chunk: Buffer) => {
    let b = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk;
    let last = -1;
    for (; b.length >= ACK_BYTES; b = b.subarray(ACK_BYTES)) last = readU64(b, 0);
    rest = Buffer.from(b);
    if (last >= 0) ack(last);
  });
}

export async function startProduction(cfg: ProductionConfig): Promise<ProductionHandle> {
  const keys: FloorKeys = { key: Buffer.from(cfg.keyHex, 'hex'), salt: Buffer.from(cfg.saltHex, 'hex') };
  const pool = new SlotPool(slotCount, slotBytes, cfg.mode === 'worker');
  const imageFd = openSync(cfg.sourcePath, 'r+');
  const journalFd = openSync(cfg.journalPath, 'r+'); // the bench made it: empty, or written once (floorPrefill)
  const link = await connectLink(cfg.drPort);
  const codec = cfg.mode === 'inline' ? inlineCodec(keys) : cfg.mode === 'worker' ? workerCodec(keys, pool) : noCodec();
  let writes = 0;
  let writeBytes = 0;
  const waiters: Array<() => void> = [];
  const check = (): void => {
    if (journal.idle && shipper.idle) for (const w of waiters.splice(0)) w();
  };
  const shipper = new Shipper(link, codec, pool, check);
  const journal = new GroupCommit(journalFd, imageFd, (items) => {
    replyAll(items);
    shipper.push(items.filter((i): i is { slot: Slot } => 'slot' in i).map((i) => i.slot));
    check();
  });
  onAcks(link, (seq) => shipper.onAck(seq));
  const server = createServer((socket) => serveNbd(socket, cfg.volumeBytes, pool, {
    write: (slot) => {
      writes++;
      writeBytes += slot.length;
      journal.add({ slot });
    },
    flush: (session, cookie) => journal.add({ session, cookie }),
  }));
  const nbdPort = await listen(server);
  const stats = (): ProductionStats => ({
    writes, writeBytes, groups: journal.groups, groupWritesMax: journal.groupWritesMax,
    frames: shipper.frames, rawBytes: shipper.rawBytes, storedBytes: shipper.storedBytes,
  });
  return {
    nbdPort,
    codecTid: await codec.tid,
    drained: () => new Promise((resolve) => {
      waiters.push(() => resolve(stats()));
      check();
    }),
    stop: async () => {
      server.close();
      link.destroy();
      await codec.close();
      closeSync(imageFd);
      closeSync(journalFd);
    },
  };
}

/** One reply buffer per client connection, in commit order. */
function replyAll(items: Item[]): void {
  let session: Socket | null = null;
  let cookies: Buffer[] = [];
  const flush = (): void => {
    if (session && cookies.length > 0 && !session.destroyed) session.write(simpleReplies(cookies));
    cookies = [];
  };
  for (const item of items) {
    const s = 'slot' in item ? item.slot.session : item.session;
    if (s !== session) flush();
    session = s;
    cookies.push('slot' in item ? item.slot.cookie : item.cookie);
  }
  flush();
}
