import { assert } from '../core/assert.js';
import { ErrorCode, isVrgError, vrgError } from '../core/errors.js';
import { limits } from '../core/limits.js';
import type { Logger } from '../core/log.js';
import { RecordKind, type Journal, type JournalRecordInput } from '../journal/journal.js';
import type { Codec } from '../pipeline/codec.js';
import { applyInOrder, type VolumeOp } from '../volume/ordered-writes.js';
import { checkVolumeRange, type Volume } from '../volume/volume.js';

// The production intake of one VM: a write is applied to the source volume and made durable in the
// journal (compressed by the codec pool first), then acknowledged: SPEC §2.1's Async rule.
// Writes are grouped (group commit): while one group is compressed and fsynced the next one fills.

export interface IntakeOp {
  volumeIndex: number;
  offset: number;
  kind: number;
  length: number;
  /** Present for WRITE only. */
  data: Uint8Array | null;
}

interface Pending extends IntakeOp {
  done: (err: Error | null) => void;
}

export interface IntakeStats {
  writes: number;
  bytesIn: number;
  bytesStored: number;
  groups: number;
}

/**
 * Groups past compression (in journal commit or the source write) at once. One group compresses at a
 * time: a new group starts when the previous one leaves compression, so writes arriving meanwhile
 * gather into it (fewer, larger pool tasks) while compression still overlaps the previous fsync.
 */
const groupsInFlightMax = 4;

export class Intake {
  readonly stats: IntakeStats = { writes: 0, bytesIn: 0, bytesStored: 0, groups: 0 };
  private pending: Pending[] = [];
  private pendingBytes = 0;
  private groupsInFlight = 0;
  private compressing = false;
  private spaceWaiters: Array<() => void> = [];
  private idleWaiters: Array<() => void> = [];
  /** Resolves once the previous group has *called* journal.append, so journal order is submission order. */
  private appendTurn: Promise<void> = Promise.resolve();
  /** Source volume writes of consecutive groups must not reorder either. */
  private sourceTurn: Promise<void> = Promise.resolve();
  private closed = false;
  /** Highest journal seq whose source-volume write has completed (in seq order; not yet fsynced). */
  sourceAppliedSeq = 0;

  constructor(
    private readonly journal: Journal,
    private readonly codec: Codec,
    private readonly volumes: readonly Volume[],
    private readonly opts: {
      compress: () => boolean;
      /** Called when the journal is full; resolves when it may have room again. */
      waitForRoom: () => Promise<void>;
      onCommitted: () => void;
      logger: Logger;
    },
  ) {}

  /** Resolves when the op is on the source volume and durable in the journal. */
  async submit(op: IntakeOp): Promise<void> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, 'intake is closed');
    const volume = this.volumes[op.volumeIndex];
    assert(volume !== undefined, 'volume index resolved by the gateway');
    checkVolumeRange(volume, op.offset, op.length);
    const parts = splitOp(op);
    await Promise.all(parts.map((p) => this.enqueue(p)));
  }

  private async enqueue(op: IntakeOp): Promise<void> {
    const bytes = op.data?.byteLength ?? 0;
    while (this.pendingBytes + bytes > limits.intakePendingBytesMax && this.pendingBytes > 0) {
      await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
    }
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ ...op, done: (err) => (err ? reject(err) : resolve()) });
      this.pendingBytes += bytes;
      this.kick();
    });
  }

  /** Resolves when every op submitted before the call has settled. */
  async idle(): Promise<void> {
    if (this.pending.length === 0 && this.groupsInFlight === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.idle();
  }

  private kick(): void {
    if (this.pending.length > 0 && !this.compressing && this.groupsInFlight < groupsInFlightMax) {
      const group = this.takeGroup();
      this.groupsInFlight++;
      this.compressing = true;
      this.stats.groups++;
      void this.commitGroup(group, () => {
        this.compressing = false;
        this.kick();
      }).finally(() => {
        this.groupsInFlight--;
        this.kick();
        if (this.pending.length === 0 && this.groupsInFlight === 0) {
          for (const w of this.idleWaiters.splice(0)) w();
        }
      });
    }
  }

  private takeGroup(): Pending[] {
    let bytes = 0;
    let n = 0;
    while (n < this.pending.length && n < limits.batchRecordsMax) {
      const b = this.pending[n]!.data?.byteLength ?? 0;
      if (n > 0 && bytes + b > limits.batchBytesTarget) break;
      bytes += b;
      n++;
    }
    const group = this.pending.splice(0, n);
    this.pendingBytes -= bytes;
    for (const w of this.spaceWaiters.splice(0)) w();
    return group;
  }

  /**
   * The journal is written ahead of the source volume (a WAL): a group reaches the source only once
   * it is durable in the journal, so after a crash replaying the journal's tail onto the source
   * (ProductionGateway.open) leaves no write on the source that the journal (and so DR) lacks.
   */
  private async commitGroup(group: Pending[], compressed: () => void): Promise<void> {
    const sourceTurn = this.sourceTurn;
    const records = this.compress(group);
    void records.finally(compressed).catch(() => undefined);
    const appended = records.then((r) => this.appendInOrder(r).then((seqs) => ({ records: r, seqs })));
    const durable = appended.then((a) => a.records);
    const sourceDone = appended.then(async ({ seqs }) => {
      await sourceTurn;
      await applyInOrder(group.map((op) => toVolumeOp(this.volumes[op.volumeIndex]!, op)));
      this.sourceAppliedSeq = Math.max(this.sourceAppliedSeq, seqs.lastSeq);
    });
    this.sourceTurn = sourceDone.catch(() => undefined);
    try {
      const records = await durable;
      this.opts.onCommitted(); // shipping need not wait for the source volume
      await sourceDone;
      for (const op of group) this.stats.bytesIn += op.data?.byteLength ?? 0;
      this.stats.writes += group.length;
      for (const r of records) this.stats.bytesStored += r.payload.byteLength;
      for (const op of group) op.done(null);
    } catch (err) {
      this.opts.logger.error({ err }, 'intake group failed');
      for (const op of group) op.done(err as Error);
    }
  }

  private async compress(group: Pending[]): Promise<JournalRecordInput[]> {
    const writes = group.filter((op) => op.data !== null);
    const total = writes.reduce((n, op) => n + op.data!.byteLength, 0);
    // Owns its ArrayBuffer, so the pool can take it without a copy.
    const data = Buffer.allocUnsafeSlow(total);
    let at = 0;
    for (const op of writes) {
      data.set(op.data!, at);
      at += op.data!.byteLength;
    }
    const out = await this.codec.compressRecords({ data, lengths: writes.map((op) => op.data!.byteLength) }, this.opts.compress());
    let w = 0;
    let storedAt = 0;
    return group.map((op) => {
      if (op.data === null) {
        return { volumeIndex: op.volumeIndex, offset: op.offset, length: op.length, kind: op.kind, codec: 0, payload: Buffer.alloc(0) };
      }
      const len = out.storedLengths[w]!;
      const rec = { volumeIndex: op.volumeIndex, offset: op.offset, length: op.length, kind: op.kind,
        codec: out.codecs[w]!, payload: out.stored.subarray(storedAt, storedAt + len) };
      w++;
      storedAt += len;
      return rec;
    });
  }

  /**
   * journal.append is called in group order. It refuses a full journal synchronously (before any
   * seq is taken), so the group can wait for room while holding its turn: no later group overtakes it.
   */
  private appendInOrder(records: JournalRecordInput[]): Promise<{ firstSeq: number; lastSeq: number }> {
    const called = this.appendTurn.then(async () => {
      for (;;) {
        try {
          // Wrapped so that awaiting `called` does not wait for the fsync.
          return { durable: this.journal.append(records) };
        } catch (err) {
          if (!isVrgError(err, ErrorCode.JOURNAL_FULL)) throw err;
        }
        await this.opts.waitForRoom();
      }
    });
    this.appendTurn = called.then(() => undefined, () => undefined);
    return called.then((c) => c.durable);
  }
}

export function toVolumeOp(volume: Volume, op: IntakeOp): VolumeOp {
  const kind = op.kind === RecordKind.WRITE ? 'write' : op.kind === RecordKind.ZERO ? 'zero' : 'trim';
  return { volume, offset: op.offset, data: op.data, length: op.length, kind };
}

/** Splits a write into records no larger than the journal's record limit. */
function splitOp(op: IntakeOp): IntakeOp[] {
  if (op.data === null || op.data.byteLength <= limits.recordBytesMax) return [op];
  const parts: IntakeOp[] = [];
  for (let at = 0; at < op.data.byteLength; at += limits.recordBytesMax) {
    const data = op.data.subarray(at, Math.min(op.data.byteLength, at + limits.recordBytesMax));
    parts.push({ ...op, offset: op.offset + at, length: data.byteLength, data });
  }
  return parts;
}
