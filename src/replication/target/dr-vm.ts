import { join } from 'node:path';
import { assert } from '../../core/assert.js';
import { elapsedMs, type Clock, type TimerHandle } from '../../core/clock.js';
import type { Files } from '../../core/files.js';
import { ErrorCode, vrgError } from '../../core/errors.js';
import { LatencyHistogram } from '../../core/latency-histogram.js';
import { limits } from '../../core/limits.js';
import type { Logger } from '../../core/log.js';
import { bugPlanted } from '../../core/planted-bugs.js';
import { RwLock } from '../../core/rw-lock.js';
import { carriesData, Journal, RecordKind, type JournalRecord, type JournalRecordInput } from '../../journal/journal.js';
import { HEADER_BYTES } from '../../journal/record-codec.js';
import type { VmState, WriteBatch } from '../../protocol/messages.js';
import { applyInOrder, type VolumeOp } from '../../volume/ordered-writes.js';
import type { Volume } from '../../volume/volume.js';
import { ApplyState } from '../apply-state.js';
import type { VmConfig } from '../config.js';
import { wireGeneration } from '../vm-role.js';
import { StageStore, type StagedOp } from './stage-store.js';

// One protected VM on the DR side: its target volumes, a log of what production sent, and the applier that
// brings the targets up to the log in the background. Seqs are production's journal seqs, and always
//   checkpointSeq ≤ appliedSeq ≤ durableSeq ≤ loggedSeq.
//
// Invariants:
// - A record is acknowledged only once it is durable in the log: one fdatasync, group-committed (the log goes
//   on writing while the previous fdatasync runs, so many batches share one).
// - The targets receive only durable log records, strictly in seq order. After a crash the targets hold the
//   checkpoint's image plus some of the records after it, every one of them in the log; open() applies the log
//   from the checkpoint again before anything reads the replica, so each image a reader sees is a prefix of
//   production's write history.
// - The log is trimmed only to a checkpoint: targets fdatasync'ed, then the stage, then the position saved.
// - Replica reads and check digests take the gate's read side; each applied chunk of records holds its write
//   side, so no reader sees part of a chunk, and a staged pass is seen only whole (stage-store.ts).
// - While a test failover runs, every target write is preceded, in the same gate hold, by its copy-before-write
//   into the test clone (beforeTargetWrite, test-clone.ts), which keeps the clone's base frozen.
// - Applying a record twice is harmless (absolute offsets, in order; the stage skips seqs it holds), which is
//   what lets a failed target write rewind to the checkpoint and apply again from there.

export interface DrVmHooks {
  clock: Clock;
  logger: Logger;
  /** The log, stage and checkpoint files. */
  files: Files;
  /** More records are durable in the log: acknowledge up to `vm.durableSeq`. */
  onDurable(vm: DrVm): void;
  /** The log could not be written (fail-stop: the gateway drops the link; a restart reopens the log). */
  onLogFailed(vm: DrVm, err: Error): void;
  /** A target write or flush failed (err), or works again (null). */
  onTargetError(vm: DrVm, err: Error | null): void;
}

interface LogPlan {
  records: JournalRecordInput[];
  bytes: number;
  skipped: number;
}

const EMPTY = Buffer.alloc(0);

export class DrVm {
  /** What production last reported of the VM's protection state (vmdrstatus on this side). */
  reported: VmState | null = null;
  targetError: string | null = null;
  durableSeq: number;
  appliedSeq: number;
  checkpointSeq: number;
  bytesApplied = 0;
  recordsApplied = 0;
  duplicatesSkipped = 0;
  lastProducedAtMs = 0;
  readonly gate = new RwLock();
  /** The VM's generation (vm-role.ts): a batch of another generation is refused. */
  generation = 1;
  /** Set while the VM is being promoted: batches are refused, the applier settles. */
  promoting = false;
  /**
   * A running test failover's copy-before-write (test-clone.ts), or null: awaited before every write to the
   * targets, with the gate's write side held (so it must not take the gate), from chunks and staged passes alike.
   */
  beforeTargetWrite: ((volumeIndex: number, offset: number, length: number) => Promise<void>) | null = null;
  /** From a batch's frame arriving to its records durable in the log (DR's share of a Sync write's latency). */
  readonly durableLatency = new LatencyHistogram();
  private working: Promise<void> | null = null;
  private retryTimer: TimerHandle | null = null;
  private checkpointTimer: TimerHandle | null = null;
  private checkpointWanted = false;
  private appliedSinceCheckpointBytes = 0;
  private roomWaiters: Array<() => void> = [];
  private appliedWaiters: Array<() => void> = [];
  private closed = false;

  private constructor(
    readonly config: VmConfig,
    readonly volumes: Map<string, Volume>,
    readonly state: ApplyState,
    readonly stage: StageStore,
    readonly log: Journal,
    readonly dir: string,
    private readonly hooks: DrVmHooks,
  ) {
    this.checkpointSeq = this.appliedSeq = state.appliedSeq;
    this.durableSeq = log.lastSeq;
  }

  /** Opens the targets, the checkpoint, the stage and the log, then applies what the log holds past the checkpoint. */
  /** `startAtSeq`: a new replica continues the source's history after this seq (split-brain resolution). */
  static async open(dataDir: string, vmc: VmConfig, volumes: Map<string, Volume>, logBytes: number, hooks: DrVmHooks,
    startAtSeq?: number): Promise<DrVm> {
    const dir = join(dataDir, 'dr', vmc.vmUuid);
    await hooks.files.mkdir(dir);
    const state = await ApplyState.open(join(dir, 'applied.state'), hooks.files);
    if (startAtSeq !== undefined && startAtSeq > 0 && state.appliedSeq === 0) await state.save(startAtSeq, hooks.clock.nowMs());
    const stage = await StageStore.open({ path: join(dir, 'stage.log'), durableSeq: state.appliedSeq, logger: hooks.logger, files: hooks.files });
    const log = await Journal.open({ dir: join(dir, 'log'), capacityBytes: logBytes, clock: hooks.clock, logger: hooks.logger, files: hooks.files });
    const vm = new DrVm(vmc, volumes, state, stage, log, dir, hooks);
    // A stage committed durably before a crash is applied before anything reads the replica.
    const committed = stage.committedSeq;
    if (await stage.recover((ops) => vm.applyStaged(ops), () => state.save(Math.max(state.appliedSeq, committed ?? 0), hooks.clock.nowMs()))) {
      hooks.logger.info({ committedSeq: committed }, 'staged resync committed before a crash: applied at open');
    }
    await vm.alignLog();
    vm.checkpointSeq = vm.appliedSeq = state.appliedSeq;
    vm.durableSeq = log.lastSeq;
    if (vm.durableSeq > vm.appliedSeq) {
      hooks.logger.info({ fromSeq: vm.appliedSeq + 1, toSeq: vm.durableSeq }, 'dr log: applying what the log holds past the checkpoint');
    }
    await vm.settle(Infinity);
    return vm;
  }

  /** A log that ends before the checkpoint (new for an existing replica) continues right after it. */
  private async alignLog(): Promise<void> {
    const cp = this.state.appliedSeq;
    if (this.log.lastSeq < cp) {
      if (this.log.lastSeq >= this.log.firstSeq) await this.log.trim(this.log.lastSeq);
      await this.log.restartAt(cp + 1);
    } else if (this.log.firstSeq > cp + 1) {
      throw vrgError(ErrorCode.JOURNAL_CORRUPT, `DR log starts at seq ${this.log.firstSeq}, after the checkpoint ${cp}`, { dir: this.dir });
    }
  }

  /** Highest seq appended to the log (durable or not yet). */
  get loggedSeq(): number {
    return this.log.appendedSeq;
  }

  /**
   * Validates a batch whole (a bad one changes nothing), waits for room, then appends its new records to the log
   * (their payloads copied in: the caller may free `data` once this resolves). Durability is reported by onDurable.
   */
  async accept(batch: WriteBatch, data: Buffer, receivedNs: bigint): Promise<void> {
    const plan = this.planLog(batch, data);
    this.duplicatesSkipped += plan.skipped;
    const lastSeq = batch.firstSeq + batch.records.length - 1;
    const msg = plan.records.length === 0 ? 'skipped' : 'logged';
    this.hooks.logger.debug({ vmUuid: this.config.vmUuid, firstSeq: batch.firstSeq, lastSeq, skipped: plan.skipped }, msg);
    if (plan.records.length === 0) return;
    await this.waitForRoom(plan.bytes);
    assert(this.loggedSeq === lastSeq - plan.records.length, `log continues at ${this.loggedSeq + 1}`);
    const durable = this.log.append(plan.records);
    this.lastProducedAtMs = Math.max(this.lastProducedAtMs, batch.producedAtMs);
    durable.then(() => {
      this.durableLatency.record(elapsedMs(this.hooks.clock, receivedNs));
      this.durableSeq = Math.max(this.durableSeq, lastSeq);
      this.hooks.onDurable(this);
      this.kick();
    }, (err: Error) => this.hooks.onLogFailed(this, err));
  }

  private planLog(batch: WriteBatch, data: Buffer): LogPlan {
    if (this.promoting) throw vrgError(ErrorCode.VM_ROLE_CONFLICT, `VM ${batch.vmUuid} is being promoted on this gateway: no more batches`);
    if (wireGeneration(batch.generation) !== this.generation) {
      throw vrgError(ErrorCode.GENERATION_MISMATCH,
        `VM ${batch.vmUuid}: batch of generation ${wireGeneration(batch.generation)}, this side is at ${this.generation}`);
    }
    const indexOf = batch.volumeUuids.map((u) => {
      const i = this.config.volumes.findIndex((v) => v.volUuid === u);
      if (i < 0) throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `VM ${batch.vmUuid} has no target volume ${u}`);
      return i;
    });
    if (batch.firstSeq > this.loggedSeq + 1) {
      throw vrgError(ErrorCode.APPLY_GAP, `VM ${batch.vmUuid}: batch starts at ${batch.firstSeq}, logged ${this.loggedSeq}`);
    }
    const plan: LogPlan = { records: [], bytes: 0, skipped: 0 };
    let at = 0;
    batch.records.forEach((r, i) => {
      const index = indexOf[r.volumeIndex];
      const volume = index === undefined ? undefined : this.volumes.get(this.config.volumes[index]!.volUuid);
      if (!volume || r.offset + r.length > volume.sizeBytes) {
        throw vrgError(ErrorCode.VOLUME_OUT_OF_RANGE, `record ${batch.firstSeq + i} outside its target volume`);
      }
      const payload = carriesData(r.kind) ? data.subarray(at, at + r.length) : EMPTY;
      at += payload.length;
      // Records already logged (a resend after reconnect) are skipped: each applies exactly once.
      if (batch.firstSeq + i <= this.loggedSeq) return void plan.skipped++;
      plan.records.push({ kind: r.kind, volumeIndex: index!, offset: r.offset, length: r.length, codec: 0, payload });
      plan.bytes += HEADER_BYTES + payload.length;
    });
    if (at !== data.byteLength) throw vrgError(ErrorCode.FRAME_MALFORMED, 'batch data length does not match its records');
    return plan;
  }

  /** Backpressure: a full log holds the batch (and so the link's window) until a checkpoint trims it. */
  private async waitForRoom(bytes: number): Promise<void> {
    const deadline = this.hooks.clock.nowMs() + limits.drLogRoomWaitMs;
    while (this.log.availableBytes < bytes) {
      if (this.closed) throw vrgError(ErrorCode.CLOSED, 'DR VM is closing', { vmUuid: this.config.vmUuid });
      if (this.hooks.clock.nowMs() >= deadline) {
        throw vrgError(ErrorCode.JOURNAL_FULL, `DR log full for ${limits.drLogRoomWaitMs} ms (targets not keeping up)`, { vmUuid: this.config.vmUuid });
      }
      this.checkpointWanted = true;
      this.kick();
      await new Promise<void>((resolve) => {
        const timer = this.hooks.clock.setTimer(limits.drApplyRetryMs, resolve);
        this.roomWaiters.push(() => {
          timer.cancel();
          resolve();
        });
      });
    }
  }

  // ---- the applier: one loop applies chunks and takes checkpoints, never both at once -----------------------------

  private kick(): void {
    if (this.working || this.retryTimer || this.closed) return;
    if (this.appliedSeq >= this.durableSeq && !this.checkpointDue()) return;
    this.working = this.work().finally(() => {
      this.working = null;
      this.wakeApplied();
      this.kick();
    });
  }

  private async work(): Promise<void> {
    while (!this.retryTimer) {
      try {
        if (this.checkpointDue()) await this.checkpoint();
        else if (this.appliedSeq < this.durableSeq) await this.applyChunk();
        else return;
      } catch (err) {
        this.applyFailed(err as Error);
        return;
      }
    }
  }

  private async applyChunk(): Promise<void> {
    const { records, release } = await this.log.readPinned(this.appliedSeq + 1, limits.drApplyChunkBytes);
    try {
      assert(records.length > 0 && records[0]!.seq === this.appliedSeq + 1, `log read from ${this.appliedSeq + 1}`);
      await this.gate.write(() => this.applyRecords(records));
      // The stage bounds what it holds unsynced; a pass is synced per chunk (resyncs only, not the steady state).
      if (this.stage.active) await this.stage.sync();
      let bytes = 0;
      for (const r of records) bytes += r.payload.length;
      this.appliedSeq = records[records.length - 1]!.seq;
      this.recordsApplied += records.length;
      this.bytesApplied += bytes;
      this.appliedSinceCheckpointBytes += bytes;
    } finally {
      release();
    }
    if (this.targetError !== null) this.hooks.onTargetError(this, null);
    this.wakeApplied();
    if (!this.checkpointTimer && !this.checkpointDue()) {
      this.checkpointTimer = this.hooks.clock.setTimer(limits.drCheckpointIntervalMs, () => {
        this.checkpointTimer = null;
        this.checkpointWanted = true;
        this.kick();
      });
    }
  }

  /** Direct ops go to the targets; between STAGE_BEGIN and STAGE_COMMIT they go to the stage, applied whole at the commit. */
  private async applyRecords(records: JournalRecord[]): Promise<void> {
    let direct: StagedOp[] = [];
    for (const r of records) {
      if (r.kind === RecordKind.BARRIER) continue;
      const marker = r.kind === RecordKind.STAGE_BEGIN || r.kind === RecordKind.STAGE_COMMIT;
      if (!marker && !this.stage.active) {
        direct.push(this.stagedOp(r));
        continue;
      }
      await this.applyDirect(direct);
      direct = [];
      if (r.kind === RecordKind.STAGE_BEGIN) this.stage.begin(r.seq);
      else if (r.kind === RecordKind.STAGE_COMMIT) await this.commitStage(r.seq);
      else this.stage.append(r.seq, [this.stagedOp(r)]);
    }
    await this.applyDirect(direct);
  }

  private applyDirect(ops: StagedOp[]): Promise<void> {
    return this.applyOps(bugPlanted('apply-out-of-order') ? ops.reverse() : ops);
  }

  private async commitStage(seq: number): Promise<void> {
    if (!this.stage.active) return;
    this.hooks.logger.info({ vmUuid: this.config.vmUuid, seq, stagedBytes: this.stage.stagedBytes }, 'committing staged resync');
    // The commit is a checkpoint of its own: everything before it is on the targets and fdatasync'ed (applyStaged).
    const apply = bugPlanted('skip-staged-commit') ? async () => undefined : (ops: StagedOp[]) => this.applyStaged(ops);
    await this.stage.commit(seq, apply, () => this.state.save(seq, this.hooks.clock.nowMs()));
    this.checkpointSeq = Math.max(this.checkpointSeq, seq);
  }

  /** Applies a chunk of the stage and makes it durable on the targets. */
  private async applyStaged(ops: StagedOp[]): Promise<void> {
    await this.applyOps(ops);
    await this.flushTargets();
  }

  /** Every target write goes here; a test clone first keeps what the ops overwrite (beforeTargetWrite). */
  private async applyOps(ops: readonly StagedOp[]): Promise<void> {
    const hook = this.beforeTargetWrite;
    if (hook) for (const op of ops) await hook(op.volumeIndex, op.offset, op.length);
    await applyInOrder(ops.map((op) => this.toVolumeOp(op)));
  }

  private flushTargets(): Promise<unknown> {
    return Promise.all([...this.volumes.values()].map((v) => v.flush()));
  }

  private stagedOp(r: JournalRecord): StagedOp {
    // A TRIM applies as zeroing: production's trim reads back zeros, and a discard on a DR block device or
    // write agent need not, which would leave the replica different.
    const write = carriesData(r.kind);
    return { volumeIndex: r.volumeIndex, offset: r.offset, length: r.length, kind: write ? 'write' : 'zero', data: write ? r.payload : null };
  }

  private toVolumeOp(op: StagedOp): VolumeOp {
    const volume = this.volumes.get(this.config.volumes[op.volumeIndex]!.volUuid)!;
    return { volume, offset: op.offset, length: op.length, data: op.data, kind: op.kind };
  }

  private checkpointDue(): boolean {
    if (this.appliedSeq <= this.checkpointSeq) return false;
    return this.checkpointWanted || this.roomWaiters.length > 0 || this.appliedSinceCheckpointBytes >= limits.drCheckpointBytes
      || this.log.usedBytes >= this.log.capacityBytes * limits.drCheckpointLogFraction;
  }

  /** Targets fdatasync'ed, then the stage, then the position saved; only then is the log trimmed to it. */
  private async checkpoint(): Promise<void> {
    const mark = this.appliedSeq;
    this.checkpointWanted = false;
    this.appliedSinceCheckpointBytes = 0;
    this.checkpointTimer?.cancel();
    this.checkpointTimer = null;
    await this.flushTargets();
    await this.stage.sync();
    await this.state.save(mark, this.hooks.clock.nowMs());
    this.checkpointSeq = Math.max(this.checkpointSeq, mark);
    await this.log.trim(this.checkpointSeq);
    for (const w of this.roomWaiters.splice(0)) w();
  }

  /**
   * A target write or flush failed: what reached the targets since the checkpoint may be lost there (a write
   * agent dropped, a flush refused), so apply again from the checkpoint, after a pause.
   */
  private applyFailed(err: Error): void {
    this.hooks.logger.error({ err, vmUuid: this.config.vmUuid, checkpointSeq: this.checkpointSeq }, 'dr apply failed; retrying from the checkpoint');
    this.hooks.onTargetError(this, err);
    this.appliedSeq = this.checkpointSeq;
    this.appliedSinceCheckpointBytes = 0;
    this.retryTimer = this.hooks.clock.setTimer(limits.drApplyRetryMs, () => {
      this.retryTimer = null;
      this.kick();
    });
    this.wakeApplied();
  }

  private wakeApplied(): void {
    for (const w of this.appliedWaiters.splice(0)) w();
  }

  /**
   * Resolves once the targets hold every record up to `seq` (replica reads and check digests see what was
   * acknowledged), or after `timeoutMs`, or at once while the targets fail (the caller reads what is there).
   */
  async whenApplied(seq: number, timeoutMs: number): Promise<void> {
    const deadline = this.hooks.clock.nowMs() + timeoutMs;
    while (this.appliedSeq < seq && this.targetError === null && this.hooks.clock.nowMs() < deadline) {
      this.kick();
      await new Promise<void>((resolve) => {
        const timer = this.hooks.clock.setTimer(Math.min(100, Math.max(1, deadline - this.hooks.clock.nowMs())), resolve);
        this.appliedWaiters.push(() => {
          timer.cancel();
          resolve();
        });
      });
    }
  }

  /** Applies and checkpoints everything durable in the log (bounded: a failing target leaves it to the next open). */
  async settle(timeoutMs: number): Promise<void> {
    const deadline = this.hooks.clock.nowMs() + timeoutMs;
    while (this.hooks.clock.nowMs() < deadline) {
      if (this.checkpointSeq >= this.durableSeq && !this.working) return;
      if (this.retryTimer) return;
      this.checkpointWanted = true;
      this.kick();
      if (this.working) await this.working;
    }
  }

  status(): { logUsedBytes: number; logCapacityBytes: number; loggedSeq: number } {
    return { logUsedBytes: this.log.usedBytes, logCapacityBytes: this.log.capacityBytes, loggedSeq: this.loggedSeq };
  }

  /** Stops the applier and closes everything; a clean stop first applies and checkpoints what it can. */
  async close(settleMs: number): Promise<void> {
    await this.settle(settleMs);
    this.closed = true;
    this.retryTimer?.cancel();
    this.retryTimer = null;
    this.checkpointTimer?.cancel();
    this.checkpointTimer = null;
    for (const w of this.roomWaiters.splice(0)) w();
    while (this.working) await this.working;
    await this.gate.write(async () => {
      await this.log.close();
      for (const v of this.volumes.values()) await v.close();
      await this.state.close();
      await this.stage.close();
    });
  }
}
