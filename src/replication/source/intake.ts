import { assert } from '../../core/assert.js';
import { elapsedMs, type Clock } from '../../core/clock.js';
import { ErrorCode, isVrgError, vrgError } from '../../core/errors.js';
import { LatencyHistogram } from '../../core/latency-histogram.js';
import { limits } from '../../core/limits.js';
import type { Logger } from '../../core/log.js';
import { bugPlanted } from '../../core/planted-bugs.js';
import type { DirtyBitmap } from '../../journal/dirty-bitmap.js';
import { RecordKind, type Journal, type JournalRecordInput } from '../../journal/journal.js';
import type { ApplyState } from '../apply-state.js';
import { RecordCodec } from '../../pipeline/codec.js';
import { applyInOrder, type VolumeOp } from '../../volume/ordered-writes.js';
import { checkVolumeRange, type Volume } from '../../volume/volume.js';

// The production intake of one VM: a write is made durable in the journal (as it arrived: compression
// happens at ship time) and applied to the source volume, then acknowledged: SPEC §2.1's Async rule. The
// optional write-back mode acknowledges once the journal write is in the page cache (FLUSH makes it durable).
// Writes are grouped (group commit): while one group is fsynced the next one fills.

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
  /** Submitted while tracking was 'bitmap': it must not be journaled ahead of a STAGE_BEGIN queued after it. */
  tracked?: boolean;
  /** A resync read or a stage marker: its own group, never blocking on a full journal. */
  special?: { resync: ResyncRead | null; settle: (seq: number | null, err: Error | null) => void; abandonIf?: () => boolean };
}

export interface IntakeStats {
  writes: number;
  bytesIn: number;
  /** Of bytesIn, the bytes that went into the journal (the rest were tracked by the CBT bitmap). */
  bytesJournaled: number;
  groups: number;
}

/**
 * Groups in flight at once (journal commit, the source write, and in Sync the wait for DR). One group forms at
 * a time. A full group (batchBytesTarget or batchRecordsMax) starts as soon as the previous one has its records;
 * a partial one waits until no group is in its local stages (journal, source), so writes arriving meanwhile
 * gather into it: every group costs a journal writev, an fdatasync, a source write and a ship, and at QD 16 of
 * 64 KiB eager groups held about 3 writes each. A group waiting only for DR does not hold a partial one back.
 */
const groupsInFlightMax = 4;

/** One resync read: a few records (holes cost nothing), so each journal append carries more. */
export const resyncReadBytesMax = 8 * 1024 * 1024;

export interface IntakeCbt {
  bitmaps: readonly DirtyBitmap[];
  /**
   * The source volumes are durable up to this journal seq (replay at start begins after it). Before the first
   * bitmap-tracked write reaches the source, journaled writes still only in its page cache are fsynced and
   * this is saved: a replay must never write an older journaled block over a newer bitmap-tracked one.
   */
  sourceState: ApplyState;
  /** A write found the journal full (journal tracking): the driver moves the VM to CBT. */
  onOverflow: () => void;
  /**
   * Sync mode: resolves once DR has `seq` durably, or once acks no longer wait for DR; null when acks do not
   * wait for DR now (then the intake does not wait for the local fdatasync either in write-back).
   */
  waitForDr: (seq: number) => Promise<void> | null;
}

/** A group's journal append: its last seq at once, and when it is durable. */
interface Appended {
  lastSeq: number;
  durable: Promise<{ firstSeq: number; lastSeq: number }>;
}

/** Reads the current content of a source range into the journal, in write order (CBT resync, check repair). */
export interface ResyncRead {
  volumeIndex: number;
  offset: number;
  length: number;
}

/** What the intake holds now (for a stall report). */
export interface IntakeDiagnostics {
  pendingOps: number;
  pendingBytes: number;
  groupsInFlight: number;
  forming: boolean;
  tracking: 'journal' | 'bitmap';
  sourceAppliedSeq: number;
}

export class Intake {
  readonly stats: IntakeStats = { writes: 0, bytesIn: 0, bytesJournaled: 0, groups: 0 };
  private pending: Pending[] = [];
  private pendingBytes = 0;
  private groupsInFlight = 0;
  /** Of groupsInFlight, those not yet through their local stages (journal durable, source written). */
  private groupsLocal = 0;
  private forming = false;
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
    private readonly volumes: readonly Volume[],
    private readonly opts: {
      /**
       * Write-back: a write is acknowledged once written to the journal file (page cache) and the source,
       * before the journal's fdatasync; FLUSH (flushJournal) waits for it. Default: after the fdatasync.
       */
      writeBack?: () => boolean;
      /** Called when the journal is full; resolves when it may have room again (used without CBT bitmaps). */
      waitForRoom: () => Promise<void>;
      onCommitted: () => void;
      /** Stored bytes of appended records, for the lag figures. */
      onAppended?: (lastSeq: number, storedBytes: number) => void;
      logger: Logger;
      /** CBT: one dirty bitmap per volume. With them a full journal never blocks a write: it falls back to CBT. */
      cbt?: IntakeCbt;
      /** Times the stages of each journaled group (`latency`); without it nothing is timed. */
      clock?: Clock;
      /**
       * Cluster mode: throws while this gateway may not write the VM's source (its lease not surely alive), checked
       * again right before a group's source write, since a pause may fall between the submit and that write.
       */
      sourceGuard?: () => void;
    },
  ) {}

  /**
   * Where a journaled write's time goes, per group from the moment it is formed: written to the journal file,
   * durable there, durable on DR (Sync only), acknowledged. Reset by the gateway's resetLatency().
   */
  readonly latency = {
    'group -> journal written': new LatencyHistogram(),
    'group -> journal durable': new LatencyHistogram(),
    'group -> DR durable (sync)': new LatencyHistogram(),
    'group -> acknowledged': new LatencyHistogram(),
  };

  /**
   * 'journal': writes are journaled (queue / check states, a resync pass); 'bitmap': they only mark the CBT
   * bitmap (cbt state, SnapshotsOnly between snapshots). Switched by the protection driver between groups.
   */
  tracking: 'journal' | 'bitmap' = 'journal';
  /** Bytes and writes acknowledged through the bitmap path since the last sourceFlushed() (FLUSH must fsync them). */
  private trackedUnsynced = false;

  /**
   * Resolves when the op is on the source volume and durable in the journal (write-back: written to it; see
   * flushJournal). The intake uses `op.data` until the returned promise settles (the journal's cache keeps a
   * copy of its own): the caller may reuse its buffer after that, never before.
   */
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
      this.pending.push({ ...op, done: (err) => (err ? reject(err) : resolve()), tracked: this.tracking === 'bitmap' });
      this.pendingBytes += bytes;
      this.kick();
    });
  }

  diagnostics(): IntakeDiagnostics {
    return {
      pendingOps: this.pending.length, pendingBytes: this.pendingBytes, groupsInFlight: this.groupsInFlight,
      forming: this.forming, tracking: this.tracking, sourceAppliedSeq: this.sourceAppliedSeq,
    };
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

  /**
   * Appends the current content of a source range (RESYNC records of at most one record's bytes, and one
   * ZERO record per run the source reports as a hole) in write order: it reads after every earlier write
   * reached the source and before any later one does. Resolves to the last seq; rejects with
   * VRG_JOURNAL_FULL (nothing appended) rather than waiting for room.
   */
  resync(read: ResyncRead): Promise<number> {
    const volume = this.volumes[read.volumeIndex];
    assert(volume !== undefined, 'resync volume index');
    checkVolumeRange(volume, read.offset, read.length);
    assert(read.length > 0 && read.length <= resyncReadBytesMax, 'resync read within its bound');
    return this.special({ volumeIndex: read.volumeIndex, offset: read.offset, kind: RecordKind.RESYNC, length: read.length, data: null }, read)
      .then((seq) => seq!);
  }

  /**
   * Appends a STAGE_BEGIN or STAGE_COMMIT marker in write order. A commit is skipped (resolves null) when
   * `abandonIf` is true at its turn: a write tracked only by the bitmap since the pass began is not in it.
   */
  marker(kind: number, abandonIf: () => boolean = () => false): Promise<number | null> {
    assert(kind === RecordKind.STAGE_BEGIN || kind === RecordKind.STAGE_COMMIT, 'marker kind');
    return this.special({ volumeIndex: 0, offset: 0, kind, length: 0, data: null }, null, abandonIf);
  }

  /** NBD FLUSH in write-back mode: every write appended so far (every acknowledged one) becomes durable. */
  async flushJournal(): Promise<void> {
    const seq = this.journal.appendedSeq;
    if (seq > this.journal.lastSeq) await this.journal.whenDurable(seq);
  }

  /** NBD FLUSH: writes acknowledged through the bitmap path are only in the source's page cache. */
  async flushTracked(): Promise<void> {
    if (!this.trackedUnsynced) return;
    this.trackedUnsynced = false;
    await Promise.all(this.volumes.map((v) => v.flush()));
  }

  private special(op: IntakeOp, resync: ResyncRead | null, abandonIf?: () => boolean): Promise<number | null> {
    if (this.closed) return Promise.reject(vrgError(ErrorCode.CLOSED, 'intake is closed'));
    return new Promise<number | null>((resolve, reject) => {
      const settle = (seq: number | null, err: Error | null): void => (err ? reject(err) : resolve(seq));
      this.pending.push({ ...op, done: () => undefined, special: { resync, settle, abandonIf } });
      this.kick();
    });
  }

  private kick(): void {
    if (this.pending.length > 0 && !this.forming && this.groupsInFlight < groupsInFlightMax && (this.groupsLocal === 0 || this.groupFull())) {
      const group = this.takeGroup();
      this.groupsInFlight++;
      this.groupsLocal++;
      this.forming = true;
      this.stats.groups++;
      const formed = (): void => {
        this.forming = false;
        this.kick();
      };
      let localOver = false;
      const local = (): void => {
        if (localOver) return;
        localOver = true;
        this.groupsLocal--;
        this.kick();
      };
      const run = group[0]!.special ? this.commitSpecial(group[0]!, formed) : this.commitGroup(group, formed, local);
      void run.finally(() => {
        local();
        this.groupsInFlight--;
        this.kick();
        if (this.pending.length === 0 && this.groupsInFlight === 0) {
          for (const w of this.idleWaiters.splice(0)) w();
        }
      });
    }
  }

  /** The next group would be full (or is a resync read or marker): it need not wait to gather more. */
  private groupFull(): boolean {
    return this.pending[0]!.special !== undefined || this.pendingBytes >= limits.batchBytesTarget || this.pending.length >= limits.batchRecordsMax;
  }

  /** Consecutive writes up to the batch target; a resync read or marker is a group of its own. */
  private takeGroup(): Pending[] {
    if (this.pending[0]!.special) return this.pending.splice(0, 1);
    let bytes = 0;
    let n = 0;
    while (n < this.pending.length && n < limits.batchRecordsMax && !this.pending[n]!.special) {
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
   * The journal is written ahead of the source volume (a WAL): a group reaches the source only once it is
   * durable in the journal (write-back: once written to the journal file, in the page cache), so after a
   * crash replaying the journal's tail onto the source (ProductionGateway.open) leaves no write on the source
   * that the journal (and so DR) lacks. A process crash loses nothing from the page cache; after a host
   * crash a write-back gateway runs a consistency check (the source may hold writes its journal lost).
   * With CBT, a group in bitmap tracking (or one that finds the journal full) marks the bitmap durably
   * instead, then writes the source: the write is never blocked by the journal.
   */
  private async commitGroup(group: Pending[], formed: () => void, local: () => void): Promise<void> {
    const clock = this.opts.clock;
    const t0 = clock?.monotonicNs() ?? 0n;
    const stage = (h: LatencyHistogram) => (): void => { if (clock) h.record(elapsedMs(clock, t0)); };
    const sourceTurn = this.sourceTurn;
    const tracked = (this.tracking === 'bitmap' || group.some((op) => op.tracked)) && this.opts.cbt !== undefined;
    const records = Promise.resolve(tracked ? null : this.records(group));
    void records.finally(formed).catch(() => undefined);
    // The append turn is taken now, not once the records are formed: a resync read or marker queued meanwhile
    // must append after this group (it reads the source after this group's write).
    const turn = tracked ? null : this.takeAppendTurn();
    records.catch(() => turn?.release());
    const appended = records.then((r) => (r === null ? null : this.appendInOrder(turn!, r)));
    const logged = appended.then(async (a) => {
      if (a === null) return null;
      this.shipWhenWritten(a, group);
      if (clock) {
        void this.journal.whenWritten(a.lastSeq).then(stage(this.latency['group -> journal written']), () => undefined);
        void a.durable.then(stage(this.latency['group -> journal durable']), () => undefined);
      }
      if (this.opts.writeBack?.() || bugPlanted('ack-before-fsync')) await this.journal.whenWritten(a.lastSeq);
      else await a.durable;
      return a;
    });
    const sourceDone = logged.then(async (a) => {
      await sourceTurn;
      if (a === null) await this.trackInBitmap(group);
      this.opts.sourceGuard?.();
      await applyInOrder(group.map((op) => toVolumeOp(this.volumes[op.volumeIndex]!, op)));
      if (a !== null) this.sourceAppliedSeq = Math.max(this.sourceAppliedSeq, a.lastSeq);
    });
    this.sourceTurn = sourceDone.catch(() => undefined);
    try {
      const a = await logged;
      await sourceDone;
      local();
      if (a === null) this.trackedUnsynced = true;
      else {
        // Sync: DR durable *and* local durable (shipping overlaps the fdatasync, which write-back skips).
        const dr = this.opts.cbt?.waitForDr(a.lastSeq);
        if (dr) await Promise.all([dr.then(stage(this.latency['group -> DR durable (sync)'])), bugPlanted('ack-before-fsync') ? null : a.durable]);
      }
      this.countGroup(group, a !== null);
      if (a !== null) stage(this.latency['group -> acknowledged'])();
      for (const op of group) op.done(null);
    } catch (err) {
      this.opts.logger.error({ err }, 'intake group failed');
      for (const op of group) op.done(err as Error);
    }
  }

  /**
   * Shipping starts once the group is written to the journal file, while its fdatasync runs, and need not
   * wait for the source volume. DR may then hold records a host crash takes from the journal (none of them
   * acknowledged in any mode): the restart skips past them (ProtectedVm.skipShipAheadSeqs). Durability
   * moves the ship-ahead bound (Journal.shippableSeq), so it kicks the shipper again.
   */
  private shipWhenWritten(a: Appended, group: Pending[]): void {
    void this.journal.whenWritten(a.lastSeq).then(() => this.shippable(a.lastSeq, group), () => undefined);
    void a.durable.then(() => this.opts.onCommitted(), () => undefined);
  }

  private shippable(lastSeq: number, group: Pending[]): void {
    this.opts.onAppended?.(lastSeq, group.reduce((n, op) => n + (op.data?.byteLength ?? 0), 0));
    this.opts.onCommitted();
  }

  private countGroup(group: Pending[], journaled: boolean): void {
    const bytes = group.reduce((n, op) => n + (op.data?.byteLength ?? 0), 0);
    this.stats.bytesIn += bytes;
    if (journaled) this.stats.bytesJournaled += bytes;
    this.stats.writes += group.length;
  }

  /** Bitmap path: fence the journal's replay (once per switch), then mark the group's blocks durably. */
  private async trackInBitmap(group: Pending[]): Promise<void> {
    const cbt = this.opts.cbt!;
    if (this.sourceAppliedSeq > cbt.sourceState.appliedSeq) {
      await Promise.all(this.volumes.map((v) => v.flush()));
      await cbt.sourceState.save(this.sourceAppliedSeq, Date.now());
    }
    const touched = new Set<DirtyBitmap>();
    for (const op of group) {
      const bitmap = cbt.bitmaps[op.volumeIndex]!;
      bitmap.mark(op.offset, op.length);
      touched.add(bitmap);
    }
    await Promise.all([...touched].map((b) => b.persist()));
  }

  /** A resync read or a marker, in write order (see resync()). */
  private async commitSpecial(op: Pending, formed: () => void): Promise<void> {
    const sp = op.special!;
    const sourceTurn = this.sourceTurn;
    const appendTurn = this.appendTurn;
    const records = sourceTurn.then(() => this.specialRecords(op));
    this.sourceTurn = records.then(() => undefined, () => undefined);
    const called = Promise.all([records, appendTurn]).then(([r]) => (r === null ? null : { durable: this.journal.append(r) }));
    this.appendTurn = called.then(() => undefined, () => undefined);
    void called.finally(formed).catch(() => undefined);
    try {
      const c = await called;
      if (c === null) return sp.settle(null, null);
      const { lastSeq } = await c.durable;
      // Nothing of it goes to the source, and every earlier write is already there (it read after them).
      this.sourceAppliedSeq = Math.max(this.sourceAppliedSeq, lastSeq);
      this.opts.onAppended?.(lastSeq, (await records)!.reduce((n, r) => n + r.payload.byteLength, 0));
      this.opts.onCommitted();
      sp.settle(lastSeq, null);
    } catch (err) {
      sp.settle(null, err as Error);
    }
  }

  private async specialRecords(op: Pending): Promise<JournalRecordInput[] | null> {
    const sp = op.special!;
    const empty = Buffer.alloc(0);
    if (sp.resync === null) {
      if (sp.abandonIf?.()) return null;
      return [{ volumeIndex: 0, offset: 0, length: 0, kind: op.kind, codec: 0, payload: empty }];
    }
    const { volumeIndex, offset, length } = sp.resync;
    const volume = this.volumes[volumeIndex]!;
    const data = volume.dataRanges ? await volume.dataRanges(offset, length) : [[offset, offset + length] as [number, number]];
    const chunk = limits.recordBytesMax;
    const plan: Array<{ at: number; len: number; hole: boolean }> = [];
    for (let at = offset; at < offset + length; at += chunk) {
      const len = Math.min(chunk, offset + length - at);
      const hole = !data.some(([a, b]) => a < at + len && at < b);
      const last = plan[plan.length - 1];
      if (hole && last?.hole) last.len += len; // one ZERO record per hole run
      else plan.push({ at, len, hole });
    }
    const out: JournalRecordInput[] = [];
    for (const p of plan) {
      const payload = p.hole ? empty : await volume.read(p.at, p.len);
      out.push({ volumeIndex, offset: p.at, length: p.len, kind: p.hole ? RecordKind.ZERO : RecordKind.RESYNC, codec: RecordCodec.RAW, payload });
    }
    return out;
  }

  /**
   * The group's journal records, RAW: compression happens at ship time (codec.shipBatch, in the pool), so the
   * ack path does no compression work. The write's own buffer is journaled (and cached) without a copy.
   */
  private records(group: Pending[]): JournalRecordInput[] {
    const empty = Buffer.alloc(0);
    return group.map((op) => ({
      volumeIndex: op.volumeIndex, offset: op.offset, length: op.length, kind: op.kind, codec: RecordCodec.RAW,
      payload: op.data === null ? empty : Buffer.from(op.data.buffer, op.data.byteOffset, op.data.byteLength),
    }));
  }

  /**
   * journal.append is called in group order. It refuses a full journal synchronously (before any
   * seq is taken), so the group can wait for room while holding its turn: no later group overtakes it.
   * With CBT it does not wait: it resolves null and the group goes the bitmap path (and the VM to CBT).
   */
  private takeAppendTurn(): { previous: Promise<void>; release: () => void } {
    const previous = this.appendTurn;
    let release!: () => void;
    this.appendTurn = new Promise<void>((resolve) => (release = resolve));
    return { previous, release };
  }

  private appendInOrder(turn: { previous: Promise<void>; release: () => void }, records: JournalRecordInput[]): Promise<Appended | null> {
    const called = turn.previous.then(async (): Promise<Appended | null> => {
      for (;;) {
        if (this.tracking === 'bitmap' && this.opts.cbt) return null;
        try {
          // Wrapped so that awaiting `called` does not wait for the fsync.
          const durable = this.journal.append(records);
          durable.catch(() => undefined); // awaited by the group; a failure also fails the journal
          return { durable, lastSeq: this.journal.appendedSeq };
        } catch (err) {
          if (!isVrgError(err, ErrorCode.JOURNAL_FULL)) throw err;
        }
        if (this.opts.cbt) {
          this.opts.cbt.onOverflow();
          return null;
        }
        await this.opts.waitForRoom();
      }
    });
    called.then(turn.release, turn.release);
    return called;
  }

}

export function toVolumeOp(volume: Volume, op: IntakeOp): VolumeOp {
  const kind = op.kind === RecordKind.WRITE || op.kind === RecordKind.RESYNC ? 'write' : op.kind === RecordKind.ZERO ? 'zero' : 'trim';
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
