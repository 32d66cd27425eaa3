import { assert } from '../../core/assert.js';
import { elapsedMs, type Clock } from '../../core/clock.js';
import { LatencyHistogram } from '../../core/latency-histogram.js';
import { ErrorCode, vrgError } from '../../core/errors.js';
import { limits } from '../../core/limits.js';
import type { Logger } from '../../core/log.js';
import { carriesData, type Journal, type JournalRecord } from '../../journal/journal.js';
import type { LinkConnection } from '../../link/connection.js';
import { batchPlainBytesMax, shipBoundBytes, type Codec } from '../../pipeline/codec.js';
import type { BufferRing } from '../../core/buffer-ring.js';
import { initialCompression, observe, type CompressionSetting, type CompressionState, type LinkObservation } from '../compression-policy.js';

// Ships one VM's journal to the DR gateway over the current link connection: consecutive records
// (once written to the journal file, while its fdatasync runs, at most limits.shipAheadRecordsMax beyond
// the durable seq: Journal.shippableSeq) in ~1 MiB write-batch frames, sealed in the codec pool, with a bounded window of unacknowledged
// frames. The DR side acknowledges the highest seq it has made durable; `onAcked` lets the gateway trim
// the journal once the source volumes are durable up to there too (a checkpoint).
// After a reconnect the DR side's Resume says where to continue, so nothing is skipped or sent twice.

interface InFlight {
  lastSeq: number;
  bytes: number;
  producedAtMs: number;
  /** When the batch was taken from the journal (clock.monotonicNs), for `latency`. */
  takenNs: bigint;
}

export interface ShipperStats {
  framesSent: number;
  /** Stored bytes of the records sent (after ship-time compression). */
  bytesSent: number;
  /** Plain bytes of the data records sent (bytesSent / plainBytesSent is the compression achieved). */
  plainBytesSent: number;
  /** Of plainBytesSent, the bytes of batches sent with compression on (the share compressed). */
  plainBytesCompressOn: number;
  recordsSent: number;
}

/** What the shipper is doing now (for a stall report: `ProductionGateway.diagnostics`). */
export interface ShipperDiagnostics {
  connected: boolean;
  paused: boolean;
  pumping: boolean;
  shippedSeq: number;
  ackedSeq: number;
  framesInFlight: number;
  bytesInFlight: number;
  fault: string | null;
}

export class Shipper {
  readonly stats: ShipperStats = { framesSent: 0, bytesSent: 0, plainBytesSent: 0, plainBytesCompressOn: 0, recordsSent: 0 };
  /** Compress the next batch (when the VM allows it): auto follows what bounds the link (compression-policy.ts). */
  compression: CompressionState;
  /** A batch from leaving the journal (sealed, sent, DR log durable) to its ack: the link's share of a Sync write. */
  readonly latency = {
    /** Compressed and sealed in the codec pool (its queue included). */
    'batch taken -> sealed': new LatencyHistogram(),
    /** The socket has taken the whole frame (behind earlier frames in the link). */
    'batch taken -> on the socket': new LatencyHistogram(),
    'batch taken -> DR ack': new LatencyHistogram(),
  };
  /** Highest seq the DR side reported durable. */
  ackedSeq = 0;
  /** Journal time of the newest acknowledged record (for lag / RPO). */
  ackedProducedAtMs = 0;
  private shippedSeq = 0;
  private conn: LinkConnection | null = null;
  private inFlight: InFlight[] = [];
  private inFlightBytes = 0;
  private pumping = false;
  /** pump() was called while pumping: look again before stopping (a new connection, new records, an ack). */
  private pumpAgain = false;
  private ackWaiters: Array<() => void> = [];
  /** Set when the DR side's position cannot be served from this journal (resync needed, issue 4). */
  fault: string | null = null;
  /** Paused (pausedManual): nothing is sent; the connection and the window stay. */
  private paused = false;
  /**
   * Set after a host crash (ProtectedVm): the end of the seqs skipped past the replayed journal. DR may hold
   * seqs up to there from before the crash, never beyond what this process shipped since.
   */
  skippedToSeq: number | null = null;
  /** Highest seq sent on any connection of this process. */
  private sentMaxSeq = 0;
  /** The VM's generation on this side (vm-role.ts), carried in every batch. */
  generation = 1;
  /** Cluster mode: this owner's fencing token for the VM (src/cluster), carried in every batch; 0: a single pair. */
  fencingToken = 0;

  constructor(
    private readonly vmUuid: string,
    private readonly volumeUuids: readonly string[],
    private readonly journal: Journal,
    private readonly codec: Codec,
    private readonly opts: {
      encrypt: () => boolean;
      /** The VM allows compression (compressOption 1). */
      compress: () => boolean;
      onAcked: (seq: number) => void;
      logger: Logger;
      compression?: CompressionSetting;
      /**
       * Where batches are assembled and frames sealed (shared with the codec workers), each block freed once
       * the codec or the socket is done with it. A batch that finds no room uses buffers of its own.
       */
      ring?: BufferRing;
      /** Times each batch from leaving the journal to DR's ack (`latency`); without it nothing is timed. */
      clock?: Clock;
    },
  ) {
    this.compression = initialCompression(opts.compression ?? 'auto');
  }

  get connected(): boolean {
    return this.conn !== null;
  }

  diagnostics(): ShipperDiagnostics {
    return {
      connected: this.conn !== null, paused: this.paused, pumping: this.pumping, shippedSeq: this.shippedSeq,
      ackedSeq: this.ackedSeq, framesInFlight: this.inFlight.length, bytesInFlight: this.inFlightBytes, fault: this.fault,
    };
  }

  /** Starts shipping on a fresh connection from the DR side's last applied seq. */
  attach(conn: LinkConnection, drAppliedSeq: number): void {
    this.detach();
    const skipped = this.skippedToSeq;
    if (drAppliedSeq > this.journal.writtenSeq) {
      this.fault = `DR has applied seq ${drAppliedSeq} beyond this journal's last seq ${this.journal.writtenSeq}`;
    } else if (skipped !== null && drAppliedSeq > Math.max(skipped, this.sentMaxSeq)) {
      this.fault = `DR has applied seq ${drAppliedSeq} beyond what production could have shipped before its host crash ` +
        `(seqs skipped to ${skipped}) or since (${this.sentMaxSeq})`;
    } else if (drAppliedSeq < this.journal.firstSeq - 1) {
      this.fault = `DR is at seq ${drAppliedSeq} but the journal starts at ${this.journal.firstSeq}: a resync is needed`;
    } else {
      this.fault = null;
    }
    if (this.fault !== null) {
      this.opts.logger.error({ vmUuid: this.vmUuid, drAppliedSeq }, this.fault);
      return;
    }
    this.conn = conn;
    this.shippedSeq = drAppliedSeq;
    this.acknowledge(drAppliedSeq);
    this.pump();
  }

  detach(): void {
    this.conn = null;
    this.inFlight = [];
    this.inFlightBytes = 0;
  }

  onAck(durableSeq: number): void {
    // Shipping runs ahead of local durability: DR may acknowledge a seq still in its local fdatasync.
    if (durableSeq > this.journal.writtenSeq) {
      this.conn?.close(vrgError(ErrorCode.FRAME_UNEXPECTED, `ack of seq ${durableSeq} beyond journal end ${this.journal.writtenSeq}`));
      return;
    }
    // The DR side may finish making durable what an earlier connection delivered: skip ahead.
    if (durableSeq > this.shippedSeq) this.shippedSeq = durableSeq;
    while (this.inFlight.length > 0 && this.inFlight[0]!.lastSeq <= durableSeq) {
      const done = this.inFlight.shift()!;
      if (this.opts.clock) this.latency['batch taken -> DR ack'].record(elapsedMs(this.opts.clock, done.takenNs));
      this.inFlightBytes -= done.bytes;
      this.ackedProducedAtMs = Math.max(this.ackedProducedAtMs, done.producedAtMs);
    }
    this.acknowledge(durableSeq);
    this.pump();
  }

  setPaused(paused: boolean): void {
    this.paused = paused;
    if (!paused) this.pump();
  }

  /** New records are written (or durable: the ship-ahead bound moved) in the journal. */
  notify(): void {
    this.pump();
  }

  /** Resolves once the DR side has acknowledged every record up to `seq`. */
  async waitAcked(seq: number): Promise<void> {
    while (this.ackedSeq < seq) await new Promise<void>((resolve) => this.ackWaiters.push(resolve));
  }

  private acknowledge(seq: number): void {
    if (seq <= this.ackedSeq) return;
    this.ackedSeq = seq;
    this.opts.onAcked(seq);
    for (const w of this.ackWaiters.splice(0)) w();
  }

  private windowOpen(): boolean {
    return this.inFlight.length < limits.framesInFlightMax && this.inFlightBytes < limits.bytesInFlightMax;
  }

  /**
   * Runs the pump unless it runs already; then it looks again before it stops. `pumping` is cleared in the
   * same turn as the last look, never a few microtasks later: a request in between would be lost, and with
   * it the last records (the link up, nothing in flight, nothing shipped: a stall).
   */
  private pump(): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    void this.pumpRounds();
  }

  private async pumpRounds(): Promise<void> {
    try {
      do {
        this.pumpAgain = false;
        await this.pumpLoop();
      } while (this.pumpAgain);
    } catch (err) {
      this.conn?.close(err as Error);
    } finally {
      this.pumping = false;
    }
  }

  private async pumpLoop(): Promise<void> {
    while (this.conn !== null && !this.paused && this.windowOpen() && this.shippedSeq < this.journal.shippableSeq) {
      const conn = this.conn;
      const from = this.shippedSeq + 1;
      // Pinned: a backlog read back from disk lands in the journal's read ring, given back once sendBatch has
      // copied the payloads into the frame (or the batch buffer for the workers), before anything waits.
      const { records, release } = await this.journal.readPinned(from, limits.batchBytesTarget, { upToSeq: this.journal.shippableSeq });
      try {
        if (conn !== this.conn) return;
        if (from !== this.shippedSeq + 1) continue; // an ack skipped us ahead meanwhile
        assert(records.length > 0 && records[0]!.seq === from, 'journal read is consecutive');
        const batch = capPlainBytes(records);
        // A batch short of its target waits while others are in flight: it fills meanwhile, so a trickle of
        // small writes does not become a frame (and a DR fsync) per write. The next ack sends it.
        if (this.inFlight.length >= partialFramesInFlightMax && !isFull(batch)) return;
        this.sendBatch(conn, batch);
      } finally {
        release();
      }
    }
  }

  private sendBatch(conn: LinkConnection, records: JournalRecord[]): void {
    const payloadBytes = records.reduce((n, r) => n + r.payload.byteLength, 0);
    const ring = this.opts.ring;
    const into = ring?.tryAlloc(shipBoundBytes(payloadBytes, records.length, this.volumeUuids.length)) ?? undefined;
    const free = (b: Buffer | undefined): void => ring?.release(b);
    // A codec on this thread reads the records where the journal holds them; a worker gets them in one buffer.
    const assembled = this.codec.takesParts ? undefined : assemble(records, payloadBytes, ring);
    const last = records[records.length - 1]!;
    const batch = {
      vmUuid: this.vmUuid,
      firstSeq: records[0]!.seq,
      volumeUuids: [...this.volumeUuids],
      records: records.map((r) => ({
        volumeIndex: r.volumeIndex, offset: r.offset, length: r.length, kind: r.kind, codec: r.codec,
        storedLength: r.payload.byteLength,
      })),
      producedAtMs: last.timestampMs,
      generation: this.generation,
      fencingToken: this.fencingToken,
    };
    const seq = conn.allocSendSeq();
    this.shippedSeq = last.seq;
    this.sentMaxSeq = Math.max(this.sentMaxSeq, last.seq);
    const takenNs = this.opts.clock?.monotonicNs() ?? 0n;
    const stage = (name: 'batch taken -> sealed' | 'batch taken -> on the socket'): void => {
      if (this.opts.clock) this.latency[name].record(elapsedMs(this.opts.clock, takenNs));
    };
    this.inFlight.push({ lastSeq: last.seq, bytes: payloadBytes, producedAtMs: last.timestampMs, takenNs });
    this.inFlightBytes += payloadBytes;
    this.stats.framesSent++;
    this.stats.recordsSent += records.length;
    const compress = this.opts.compress() && this.compression.compressing;
    for (const r of records) {
      if (!carriesData(r.kind)) continue;
      this.stats.plainBytesSent += r.length;
      if (compress) this.stats.plainBytesCompressOn += r.length;
    }
    this.codec.shipBatch({ keys: conn.sendKeys, seq, batch, payload: assembled ?? records.map((r) => r.payload), encrypt: this.opts.encrypt(), compress, into }).then(
      (out) => {
        free(assembled);
        stage('batch taken -> sealed');
        this.stats.bytesSent += out.storedBytes;
        if (this.opts.compress()) this.compression = observe(this.compression, this.observeLink(conn));
        conn.sendSealed(seq, out.frame, () => {
          stage('batch taken -> on the socket');
          free(into);
        });
      },
      (err) => {
        free(assembled);
        free(into);
        conn.close(err as Error);
      },
    );
  }

  /**
   * What bounds shipping as a sealed frame reaches the link: the link, when a batch's worth is still queued in
   * it or the window is full; nothing waits on it when its queue is empty (the frame found it idle).
   */
  private observeLink(conn: LinkConnection): LinkObservation {
    const queued = conn.writableBytes;
    if (queued >= linkQueuedBytesHigh || !this.windowOpen()) return 'linkBound';
    return queued === 0 ? 'linkIdle' : 'neither';
  }
}

/** Bytes queued in the link (not yet taken by the socket) from which the link counts as the bottleneck. */
const linkQueuedBytesHigh = limits.batchBytesTarget;

/** Frames in flight beyond which a batch is sent only once full. */
const partialFramesInFlightMax = 2;

/** A batch's payloads back to back, in a block of the ring when it has room. */
function assemble(records: JournalRecord[], payloadBytes: number, ring: BufferRing | undefined): Buffer {
  const payload = (payloadBytes > 0 ? ring?.tryAlloc(payloadBytes) : null) ?? Buffer.allocUnsafeSlow(payloadBytes);
  let at = 0;
  for (const r of records) {
    payload.set(r.payload, at);
    at += r.payload.byteLength;
  }
  return payload;
}

function isFull(records: JournalRecord[]): boolean {
  const bytes = records.reduce((n, r) => n + r.payload.byteLength, 0);
  return bytes >= limits.batchBytesTarget / 2 || records.length >= limits.batchRecordsMax;
}

/**
 * The DR side refuses a batch whose records expand past batchPlainBytesMax, and LZ4 can shrink zeros
 * ~255x: cap a batch by its plain size and record count, not only by stored bytes.
 */
function capPlainBytes(records: JournalRecord[]): JournalRecord[] {
  let plain = 0;
  for (let i = 0; i < records.length; i++) {
    plain += carriesData(records[i]!.kind) ? records[i]!.length : 0;
    if (i > 0 && (plain > batchPlainBytesMax / 2 || i >= limits.batchRecordsMax)) return records.slice(0, i);
  }
  return records;
}
