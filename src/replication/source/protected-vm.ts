import { join } from 'node:path';
import type { BufferRing } from '../../core/buffer-ring.js';
import type { Files } from '../../core/files.js';
import { writeJsonAtomic } from '../../core/atomic-file.js';
import { sleep, type Clock } from '../../core/clock.js';
import { ErrorCode, isVrgError, vrgError } from '../../core/errors.js';
import type { LatencySummary } from '../../core/latency-histogram.js';
import { limits, MiB } from '../../core/limits.js';
import type { Logger } from '../../core/log.js';
import { DirtyBitmap } from '../../journal/dirty-bitmap.js';
import { Journal, RecordKind } from '../../journal/journal.js';
import type { Codec } from '../../pipeline/codec.js';
import { decodeRecordPayload } from '../../pipeline/record-payload.js';
import type { CheckRequest } from '../../protocol/messages.js';
import { applyInOrder } from '../../volume/ordered-writes.js';
import { compareRegions, digestVolume, type RegionDigests } from '../../volume/region-digests.js';
import type { Volume } from '../../volume/volume.js';
import { ApplyState } from '../apply-state.js';
import type { VmConfig } from '../config.js';
import type { TransitionEvent, VmProtection, VmReplicationStatus } from '../control.js';
import { Intake, resyncReadBytesMax, toVolumeOp, type IntakeDiagnostics } from './intake.js';
import {
  initialState, stateNumber, transition, waitsForDr, type Effect, type Event, type Mode, type Region, type State,
} from '../protection-state.js';
import { bugPlanted } from '../../core/planted-bugs.js';
import { Shipper, type ShipperDiagnostics } from './shipper.js';
import type { CompressionSetting } from '../compression-policy.js';
import { appendBarriersTo, clearDrAhead, loadDrAhead, saveDrAhead, type DrAhead } from './dr-ahead.js';

// One protected VM on the production gateway: its source volumes, journal, CBT bitmaps, intake and
// shipper, and the driver of its protection state machine (protection-state.ts): it feeds events in and
// performs the effects (tracking mode, resync passes, consistency checks, pause, ack policy).
//
// CBT resync (and a SnapshotsOnly snapshot) runs as a *staged pass*: STAGE_BEGIN, then the dirty blocks'
// current content (RESYNC records read from the source in write order) interleaved with the VM's writes,
// journaled again from the pass's start, then STAGE_COMMIT once a pass ends with no write tracked only by
// the bitmap. The DR side stages all of it and applies it at the commit: its image jumps from one
// production image to a later one, never through a mix. Bits are cleared once DR holds their data durably.

export interface ProtectedVmHooks {
  clock: Clock;
  codec: Codec;
  logger: Logger;
  /** Asks the DR side for the target digests of a range (rejects when the link is down or times out). */
  requestDigests: (req: Omit<CheckRequest, 'checkId'>) => Promise<Buffer>;
  onTransition: (ev: TransitionEvent) => void;
  onAlarm: (kind: 'journalOverflow' | 'checkDiffers' | 'syncDegraded', raised: boolean, vmUuid: string, detail: string) => void;
  /** The VM's state changed in a way the DR side reports (vmdrstatus). */
  onStateChanged: (vm: ProtectedVm) => void;
  onAcked: () => void;
  waitForRoom: () => Promise<void>;
  checkpointSoon: () => void;
  linkDownCbtAfterMs: number;
  syncDegradeAfterMs: number;
  cbtGranularityBytes: number;
  /** Write-back intake: acknowledge once the journal write is in the page cache (config intake.writeBack). */
  writeBack?: () => boolean;
  /** Local files (journal, bitmaps, state files). */
  files: Files;
  /** How compressOption 1 is applied (config link.compression). */
  compression?: CompressionSetting;
  /** The gateway's ring for batches and sealed frames (shared by its VMs). */
  linkRing?: BufferRing;
  /** Cluster mode: throws while the gateway may not write this VM's source (Intake's sourceGuard). */
  sourceGuard?: () => void;
}

/** A run that stopped on an error is retried after this, doubling up to runRetryMaxMs. */
const runRetryMinMs = 1_000;
const runRetryMaxMs = 30_000;
/** Resync reads appended but not yet acknowledged by DR (each holds a bitmap token). */
const resyncWindowMax = 32;
/** A resync pass appends only while the journal has at least this fraction free: VM writes come first. */
const resyncJournalFreeFraction = 0.25;
const digestRegionsPerRequestMax = 1024;
/** Present while a staged pass is open on DR (between STAGE_BEGIN and its acknowledged STAGE_COMMIT). */
const stageOpenFile = 'stage-open.json';

/** One VM's pipeline as it is now, stage by stage (for a stall report: `ProductionGateway.diagnostics`). */
export interface ProtectedVmDiagnostics {
  vmUuid: string;
  state: string;
  mode: Mode;
  linkUp: boolean;
  pausedManual: boolean;
  repairing: boolean;
  running: { resync: boolean; check: boolean; repair: boolean; snapshotWanted: boolean; checkpointing: boolean };
  /** How the last resync, check or repair run that did not finish its work ended (error code and message). */
  lastRunStopped: { run: string; why: string; atMs: number } | null;
  lastTransition: State['lastTransition'];
  transitions: State['transitions'];
  journal: { firstSeq: number; lastSeq: number; writtenSeq: number; appendedSeq: number; usedBytes: number; capacityBytes: number; filesBytes: number; cache: ReturnType<Journal['cacheStats']>; counters: Journal['stats'] };
  checkpointSeq: number;
  intake: IntakeDiagnostics;
  shipper: ShipperDiagnostics;
}

interface Progress {
  bytesDone: number;
  bytesTotal: number;
  startedAtMs: number;
}

export class ProtectedVm {
  state: State;
  checkpointSeq = 0;
  lastCheckpointMs = 0;
  checkpointing: Promise<void> | null = null;
  closed = false;
  private resyncRun: Promise<void> | null = null;
  private checkRun: Promise<void> | null = null;
  private repairRun: Promise<void> | null = null;
  private drWaiters: Array<() => void> = [];
  private waitForDr = false;
  private progress: Progress | null = null;
  private lastCheck: VmReplicationStatus['check'] = null;
  private lastRunStopped: ProtectedVmDiagnostics['lastRunStopped'] = null;
  /** After a run stopped on an error, reconcile() restarts it no earlier than this (backoff, reset by a success). */
  private retryAtMs = 0;
  private retryBackoffMs = runRetryMinMs;
  /** Opened without earlier data (a new VM: initial sync). */
  fresh = false;
  /** After a host crash, until DR's position is reconciled (dr-ahead.ts). */
  private drAhead: DrAhead | null = null;
  /** DR was found ahead: the check runs; the VM back in queue resolves it. */
  private drAheadChecking = false;
  private snapshotWanted = false;
  private stateWaiters: Array<() => void> = [];
  /** Stored bytes per journal seq range not yet acknowledged: [lastSeq, cumulative stored bytes]. */
  private readonly appendedBytes: Array<[number, number]> = [];
  private cumulativeBytes = 0;
  private ackedCumulativeBytes = 0;
  readonly intake: Intake;
  readonly shipper: Shipper;

  private constructor(
    readonly config: VmProtection,
    readonly volumes: Volume[],
    readonly journal: Journal,
    readonly bitmaps: DirtyBitmap[],
    readonly sourceState: ApplyState,
    readonly dir: string,
    private readonly hooks: ProtectedVmHooks,
  ) {
    const logger = hooks.logger;
    this.state = initialState({ linkDownCbtAfterMs: hooks.linkDownCbtAfterMs, syncDegradeAfterMs: hooks.syncDegradeAfterMs },
      config.mode ?? 'async', hooks.clock.nowMs());
    // The ack policy of the state it starts in: setAckPolicy only reports changes (a VM configured Sync waits
    // for DR from its first write, not only after a mode change at run time).
    this.waitForDr = waitsForDr(this.state);
    this.shipper = new Shipper(config.vmUuid, config.volumes.map((v) => v.volUuid), journal, hooks.codec, {
      encrypt: () => config.encryptOption === 1,
      compress: () => config.compressOption === 1,
      onAcked: () => this.onAcked(),
      logger,
      compression: hooks.compression ?? 'auto',
      ...(hooks.linkRing ? { ring: hooks.linkRing } : {}),
      clock: hooks.clock,
    });
    this.intake = new Intake(journal, volumes, {
      ...(hooks.sourceGuard ? { sourceGuard: hooks.sourceGuard } : {}),
      writeBack: () => hooks.writeBack?.() === true,
      waitForRoom: hooks.waitForRoom,
      onCommitted: () => this.shipper.notify(),
      onAppended: (lastSeq, storedBytes) => this.noteAppended(lastSeq, storedBytes),
      logger,
      clock: hooks.clock,
      cbt: {
        bitmaps, sourceState,
        onOverflow: () => this.onOverflow(),
        waitForDr: (seq) => this.waitDr(seq),
      },
    });
    // open() replayed the journal onto the source first: the source holds every journaled write.
    this.intake.sourceAppliedSeq = journal.lastSeq;
  }

  static async open(config: VmProtection, dataDir: string, openVolume: (v: VmConfig['volumes'][number]) => Promise<Volume>,
    capacityBytes: number, hooks: ProtectedVmHooks): Promise<ProtectedVm> {
    const volumes: Volume[] = [];
    for (const v of config.volumes) volumes.push(await openVolume(v));
    const logger = hooks.logger;
    const files = hooks.files;
    const journal = await Journal.open({ dir: join(dataDir, 'journal', config.vmUuid), capacityBytes, clock: hooks.clock, logger, files });
    const dir = join(dataDir, 'cbt', config.vmUuid);
    const fresh = !(await exists(files, dir));
    await files.mkdir(dir);
    const sourceState = await ApplyState.open(join(dir, 'source.state'), files);
    const bitmaps: DirtyBitmap[] = [];
    const lost: string[] = [];
    for (const [i, v] of config.volumes.entries()) {
      const opened = await openBitmap(join(dir, `${v.volUuid}.cbt`), volumes[i]!.sizeBytes, hooks);
      if (opened.lost) lost.push(v.volUuid);
      bitmaps.push(opened.bitmap);
    }
    await replayOntoSource(journal, volumes, sourceState.appliedSeq, logger);
    const vm = new ProtectedVm(config, volumes, journal, bitmaps, sourceState, dir, hooks);
    vm.fresh = fresh;
    vm.drAhead = await loadDrAhead(dir, files);
    // A crash while the barriers were appended: finish them before any new record takes one of those seqs.
    if (vm.drAhead && journal.appendedSeq < vm.drAhead.skipToSeq) await vm.skipTo(vm.drAhead.aboveSeq, vm.drAhead.skipToSeq);
    if (fresh) for (const b of bitmaps) b.markAll();
    await Promise.all(bitmaps.map((b) => b.persist()));
    if (config.pausedManual) vm.feed({ type: 'pause' });
    const stageOpen = await exists(files, join(dir, stageOpenFile));
    const reason = fresh ? 'initial-sync' : lost.length > 0 ? 'cbt-bitmap-lost'
      : bitmaps.some((b) => b.dirtyRegions > 0) ? 'cbt-dirty-at-start' : stageOpen ? 'stage-open-at-start' : null;
    // SnapshotsOnly ships dirty blocks only with a snapshot: the first one carries the initial copy.
    if (vm.state.mode === 'snapshots') {
      vm.intake.tracking = 'bitmap';
      vm.snapshotWanted = stageOpen; // finish the snapshot DR is staging
    } else if (reason !== null) vm.feed({ type: 'resyncNeeded', reason });
    return vm;
  }

  /**
   * Bytes per resync read: up to 8 MiB, but at most a quarter of the journal and most of what is free in it
   * (the journal frees space only as whole segments are trimmed), in whole CBT regions.
   */
  private get resyncReadBytes(): number {
    const g = this.hooks.cbtGranularityBytes;
    const budget = Math.min(resyncReadBytesMax, this.journal.capacityBytes / 4, this.journal.availableBytes * 0.8);
    return Math.max(g, Math.floor(budget / g) * g);
  }

  get vmUuid(): string {
    return this.config.vmUuid;
  }

  get mode(): Mode {
    return this.state.mode;
  }

  /** Feeds one event to the state machine and performs its effects. */
  feed(event: Event): void {
    if (this.closed) return;
    const before = this.state;
    const r = transition(this.state, event, this.hooks.clock.nowMs());
    this.state = r.state;
    for (const e of r.effects) this.perform(e);
    if (before !== this.state) {
      if (this.drAheadChecking && before.name !== 'queue' && this.state.name === 'queue') this.drAheadResolved('checked');
      this.hooks.onStateChanged(this);
      for (const w of this.stateWaiters.splice(0)) w();
    }
    if (event.type === 'tick') this.reconcile();
  }

  /**
   * The state's work effects mean "make sure this is running", but a run can end without finishing it: a
   * check whose read failed, a repair the link cut. Nothing else restarts it while the link stays up (the VM
   * would sit in check or cbt for good), so each tick restarts what the state wants and nothing runs, after a
   * backoff when the last run stopped on an error.
   */
  private reconcile(): void {
    const s = this.state;
    if (this.closed || !this.canShip() || s.mode === 'snapshots' || this.hooks.clock.nowMs() < this.retryAtMs) return;
    if (s.name === 'cbt' && this.resyncRun === null && this.repairRun === null) this.startResync();
    else if (s.name === 'check' && s.repairing && this.repairRun === null) this.startRepair(s.repairRegions);
    else if (s.name === 'check' && !s.repairing && this.checkRun === null) this.startCheck(s.checkReason ?? 'retry');
  }

  private perform(e: Effect): void {
    const log = this.hooks.logger;
    switch (e.type) {
      case 'log':
        log.info({ vmUuid: this.vmUuid, from: e.from, to: e.to, reason: e.reason }, 'protection state');
        this.hooks.onTransition({ vmUuid: this.vmUuid, from: e.from, to: e.to, reason: e.reason, atMs: this.hooks.clock.nowMs() });
        if (e.from === 'cbt') this.hooks.onAlarm('journalOverflow', false, this.vmUuid, `left CBT: ${e.reason}`);
        if (e.to === 'cbt') this.hooks.onAlarm('journalOverflow', true, this.vmUuid, `entered CBT: ${e.reason}`);
        return;
      case 'startCbtTracking': this.intake.tracking = 'bitmap'; return;
      case 'stopCbtTracking': this.intake.tracking = this.state.mode === 'snapshots' ? 'bitmap' : 'journal'; return;
      case 'startResync': this.startResync(); return;
      case 'startConsistencyCheck': this.startCheck(e.reason); return;
      case 'shipRegions': this.startRepair(e.regions); return;
      case 'resumeQueue': case 'startShipping': this.shipper.setPaused(false); return;
      case 'stopShipping': this.shipper.setPaused(true); return;
      case 'stopLiveShipping': this.intake.tracking = 'bitmap'; return;
      case 'modeChanged':
        log.info({ vmUuid: this.vmUuid, from: e.from, to: e.to }, 'mode changed');
        // Leaving SnapshotsOnly: live writes are journaled again (the check that follows repairs the rest).
        if (e.from === 'snapshots' && this.state.name !== 'cbt') this.intake.tracking = 'journal';
        return;
      case 'setAckPolicy': this.setWaitForDr(e.waitForDr); return;
      case 'alarm': this.hooks.onAlarm('syncDegraded', e.raised, this.vmUuid, e.raised ? 'sync mode degraded to async with CBT' : 'sync mode restored'); return;
    }
  }

  // ---- DR ahead after a host crash (dr-ahead.ts) ---------------------------------------------------------

  /**
   * The host crashed: the journal's unsynced tail may be lost while DR holds it (shipping runs ahead of the
   * fdatasync). Skips every seq DR may hold (filler barriers) and remembers where the journal ended. Called
   * before the VM takes any write.
   */
  async skipShipAheadSeqs(): Promise<void> {
    const k = this.journal.lastSeq;
    await this.skipTo(Math.min(this.drAhead?.aboveSeq ?? k, k), k + limits.shipAheadRecordsMax);
  }

  /** Remembered first, then the barriers appended: a crash between finishes them at the next open. */
  private async skipTo(aboveSeq: number, skipToSeq: number): Promise<void> {
    this.drAhead = { aboveSeq, skipToSeq };
    await saveDrAhead(this.dir, this.drAhead, this.hooks.files);
    const reached = await appendBarriersTo(this.journal, skipToSeq);
    this.intake.sourceAppliedSeq = Math.max(this.intake.sourceAppliedSeq, this.journal.lastSeq);
    if (reached < skipToSeq) {
      // DR beyond `reached` is then refused (Shipper.attach): new records would reuse seqs it may hold.
      this.hooks.logger.error({ vmUuid: this.vmUuid, reached, skipToSeq }, 'journal full: could not skip every seq DR may hold');
      this.drAhead = { aboveSeq, skipToSeq: reached };
      await saveDrAhead(this.dir, this.drAhead, this.hooks.files);
    }
    this.shipper.skippedToSeq = this.drAhead.skipToSeq;
    this.hooks.logger.warn({ vmUuid: this.vmUuid, ...this.drAhead }, 'host crash: skipped the seqs DR may hold beyond the journal');
  }

  /** The shipper attached at DR's position (no fault): DR holding seqs beyond the crashed journal means a check. */
  attached(drAppliedSeq: number): void {
    const d = this.drAhead;
    if (d === null) return;
    if (drAppliedSeq <= d.aboveSeq) return this.drAheadResolved('not-ahead');
    // SnapshotsOnly journals only staged passes of blocks read from the source, their bits still dirty until
    // DR acknowledged them: the next snapshot reships them, and a check would never run in this mode.
    if (this.state.mode === 'snapshots') return this.drAheadResolved('snapshots-mode');
    this.hooks.logger.warn({ vmUuid: this.vmUuid, drAppliedSeq, ...d }, 'DR holds records the journal lost in the host crash: checking the VM');
    this.drAheadChecking = true;
    this.feed({ type: 'checkRequested', reason: 'dr-ahead' });
  }

  private drAheadResolved(how: string): void {
    this.drAheadChecking = false;
    this.drAhead = null;
    this.hooks.logger.info({ vmUuid: this.vmUuid, how }, 'DR position after the host crash reconciled');
    void clearDrAhead(this.dir, this.hooks.files).catch((err) => this.hooks.logger.error({ err }, 'could not clear dr-ahead.json'));
  }

  /** Latency per stage of a write (intake and shipper histograms), for status. */
  latencySummary(): Record<string, LatencySummary> {
    const all = { ...this.intake.latency, ...this.shipper.latency };
    return Object.fromEntries(Object.entries(all).map(([k, h]) => [k, h.summary()]));
  }

  resetLatency(): void {
    for (const h of [...Object.values(this.intake.latency), ...Object.values(this.shipper.latency)]) h.reset();
  }

  /** Reconciliation of DR's position after a host crash still to do (for tests and diagnostics). */
  get drAheadPending(): DrAhead | null {
    return this.drAhead;
  }

  // ---- intake hooks -------------------------------------------------------------------------------------

  private onOverflow(): void {
    if (this.state.name !== 'cbt' && this.state.mode !== 'snapshots') this.feed({ type: 'journalOverflow' });
    else this.intake.tracking = 'bitmap';
  }

  private setWaitForDr(wait: boolean): void {
    this.waitForDr = wait;
    if (!wait) for (const w of this.drWaiters.splice(0)) w();
  }

  /** Sync mode: a write's ack waits until DR has it durably, or until acks stop waiting (degraded, paused). */
  private waitDr(seq: number): Promise<void> | null {
    if (!this.waitForDr || bugPlanted('sync-ack-early')) return null;
    if (this.shipper.ackedSeq >= seq) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        // Closing is no reason to acknowledge: the write is only local, the client must learn it failed.
        if (this.closed) reject(vrgError(ErrorCode.CLOSED, `the VM closed before DR acknowledged seq ${seq} (Sync)`));
        else if (!this.waitForDr || this.shipper.ackedSeq >= seq) resolve();
        else this.drWaiters.push(check);
      };
      check();
    });
  }

  private onAcked(): void {
    const acked = this.shipper.ackedSeq;
    while (this.appendedBytes.length > 0 && this.appendedBytes[0]![0] <= acked) {
      this.ackedCumulativeBytes = this.appendedBytes.shift()![1];
    }
    for (const w of this.drWaiters.splice(0)) w();
    this.hooks.onAcked();
  }

  private noteAppended(lastSeq: number, storedBytes: number): void {
    this.cumulativeBytes += storedBytes;
    this.appendedBytes.push([lastSeq, this.cumulativeBytes]);
  }

  /**
   * A run ended without finishing its work: logged and kept for diagnostics. On an error other than the link
   * going down (CONNECTION_CLOSED: the linkUp restarts it) reconcile() retries it after a backoff.
   */
  private runStopped(run: string, err: unknown): void {
    const e = err as { code?: string; message?: string };
    const why = `${e.code ?? 'ERROR'}: ${e.message ?? String(err)}`;
    const now = this.hooks.clock.nowMs();
    this.lastRunStopped = { run, why, atMs: now };
    const linkDown = isVrgError(err, ErrorCode.CONNECTION_CLOSED);
    if (!linkDown) {
      this.retryAtMs = now + this.retryBackoffMs;
      this.retryBackoffMs = Math.min(runRetryMaxMs, this.retryBackoffMs * 2);
    }
    this.hooks.logger.warn({ vmUuid: this.vmUuid, run, err: { code: e.code, message: e.message }, retryAtMs: linkDown ? null : this.retryAtMs }, `${run} stopped`);
  }

  /** A run finished its work: the next error is retried soon again. */
  private runFinished(): void {
    this.retryBackoffMs = runRetryMinMs;
    this.retryAtMs = 0;
  }

  // ---- CBT resync ---------------------------------------------------------------------------------------

  private startResync(): void {
    if (this.resyncRun !== null || this.repairRun !== null) return; // a repair pass restarts it when done
    this.resyncRun = this.resyncPasses('resync')
      .then((done) => {
        if (!done) return this.runStopped('resync', vrgError(ErrorCode.CONNECTION_CLOSED, 'link down, paused or closed'));
        this.runFinished();
        if (this.state.name === 'cbt') this.feed({ type: 'resyncDrained' });
      })
      .catch((err) => this.runStopped('resync', err))
      .finally(() => {
        this.resyncRun = null;
        this.progress = null;
        this.kickSnapshot();
      });
  }

  /**
   * Staged passes until one ends with every write since its start journaled. Resolves true when the
   * commit is durable on DR, false when it stopped (closed, paused, link down: the next linkUp restarts it).
   */
  private async resyncPasses(why: string): Promise<boolean> {
    let begun = false;
    for (let pass = 1; !this.closed; pass++) {
      if (!this.canShip()) return false;
      // A pass that ends without a commit can cost no I/O at all: give the event loop (acks, the
      // journal's trim, the writes it waits for) a turn before the next one, or the loop starves them.
      if (pass > 1) await sleep(this.hooks.clock, Math.min(200, 5 * pass));
      await this.waitForJournalRoom();
      // Remembered across a crash: a pass whose bits were all cleared still owes DR its commit.
      if (!begun) await writeJsonAtomic(join(this.dir, stageOpenFile), { why, atMs: this.hooks.clock.nowMs() }, this.hooks.files);
      // Journaling resumes and STAGE_BEGIN is queued in the same tick: no write may land between them
      // (it would reach DR unstaged, ahead of the bitmap-only writes the pass has yet to ship).
      this.intake.tracking = 'journal';
      if (!begun) {
        const begin = this.intake.marker(RecordKind.STAGE_BEGIN);
        if (await begin === null) return false;
        begun = true;
      }
      this.progress ??= { bytesDone: 0, bytesTotal: 0, startedAtMs: this.hooks.clock.nowMs() };
      this.progress.bytesTotal += this.bitmaps.reduce((n, b) => n + b.dirtyBytes, 0);
      this.hooks.logger.info({ vmUuid: this.vmUuid, why, pass, dirtyBytes: this.progress.bytesTotal - this.progress.bytesDone }, 'resync pass');
      if (!await this.resyncPass()) return false;
      const commit = await this.intake.marker(RecordKind.STAGE_COMMIT,
        () => this.intake.tracking === 'bitmap' || this.bitmaps.some((b) => b.dirtyRegions > 0));
      if (commit === null) continue; // a write went to the bitmap meanwhile: another pass
      await this.shipper.waitAcked(commit);
      await this.hooks.files.rm(join(this.dir, stageOpenFile));
      if (this.state.mode === 'snapshots') this.intake.tracking = 'bitmap';
      return true;
    }
    return false;
  }

  /** One pass over the dirty blocks; false if it stopped early. */
  private async resyncPass(): Promise<boolean> {
    const window: Array<{ token: ReturnType<DirtyBitmap['snapshotForResync']>; bitmap: DirtyBitmap; seq: number }> = [];
    const settle = async (upTo: number): Promise<void> => {
      while (window.length > upTo) {
        const w = window.shift()!;
        await this.shipper.waitAcked(w.seq);
        w.bitmap.clearIfUnchanged(w.token);
      }
    };
    for (const [volumeIndex, bitmap] of this.bitmaps.entries()) {
      for (const range of [...bitmap.dirtyRanges(this.resyncReadBytes)]) {
        if (this.closed || !this.canShip()) {
          for (const w of window.splice(0)) w.bitmap.abandonResync(w.token);
          return false;
        }
        await settle(resyncWindowMax - 1);
        await this.waitForJournalRoom();
        const token = bitmap.snapshotForResync(range.start, range.end);
        let seq: number;
        try {
          seq = await this.intake.resync({ volumeIndex, offset: range.start, length: range.end - range.start });
        } catch (err) {
          bitmap.abandonResync(token);
          if (!isVrgError(err, ErrorCode.JOURNAL_FULL)) throw err;
          await sleep(this.hooks.clock, 20); // left dirty (the next pass takes it); let the journal drain
          continue;
        }
        window.push({ token, bitmap, seq });
        if (this.progress) this.progress.bytesDone += range.end - range.start;
      }
    }
    await settle(0);
    await Promise.all(this.bitmaps.map((b) => b.persist()));
    return true;
  }

  private async waitForJournalRoom(): Promise<void> {
    while (!this.closed && this.journal.availableBytes < this.journal.capacityBytes * resyncJournalFreeFraction) {
      this.hooks.checkpointSoon();
      await Promise.race([this.hooks.waitForRoom(), sleep(this.hooks.clock, 200)]);
    }
  }

  private canShip(): boolean {
    return this.state.linkUp && !this.state.pausedManual;
  }

  // ---- consistency check and repair ---------------------------------------------------------------------

  private startCheck(reason: string): void {
    if (this.checkRun !== null) return;
    this.checkRun = this.runCheck(reason)
      .then((differing) => {
        this.runFinished();
        if (this.state.name !== 'check' || this.state.repairing) return;
        if (differing.length === 0) this.feed({ type: 'checkClean' });
        else {
          this.hooks.onAlarm('checkDiffers', true, this.vmUuid, `consistency check found ${differing.length} differing ranges`);
          this.feed({ type: 'checkDiffers', regions: differing });
        }
      })
      .catch((err) => this.runStopped('check', err))
      .finally(() => {
        this.checkRun = null;
      });
  }

  /** Compares source and target digests volume by volume, range by range; returns the differing regions. */
  private async runCheck(reason: string): Promise<Region[]> {
    this.hooks.logger.info({ vmUuid: this.vmUuid, reason }, 'consistency check');
    // DR applies what was shipped before comparing: fewer regions differ only because they are in flight.
    await this.shipper.waitAcked(this.journal.lastSeq);
    const differing: Region[] = [];
    let regionsChecked = 0;
    for (const [volumeIndex, volume] of this.volumes.entries()) {
      const regionBytes = checkRegionBytes(volume.sizeBytes);
      const step = regionBytes * digestRegionsPerRequestMax;
      for (let start = 0; start < volume.sizeBytes; start += step) {
        if (!this.canShip()) throw vrgError(ErrorCode.CONNECTION_CLOSED, 'link down or paused during the check');
        const end = Math.min(volume.sizeBytes, start + step);
        const local = await digestVolume(volume, { start, end, regionBytes });
        const remote: RegionDigests = {
          regionBytes, start, end,
          digests: await this.hooks.requestDigests({ vmUuid: this.vmUuid, volumeIndex, volUuid: this.config.volumes[volumeIndex]!.volUuid, start, end, regionBytes }),
        };
        regionsChecked += Math.ceil((end - start) / regionBytes);
        for (const [a, b] of compareRegions(local, remote)) differing.push({ volumeIndex, offset: a, length: b - a });
      }
    }
    this.lastCheck = { regionsChecked, regionsDiffering: differing.length, regionsRepaired: 0, atMs: this.hooks.clock.nowMs() };
    return differing;
  }

  private startRepair(regions: readonly Region[]): void {
    if (this.repairRun !== null) return;
    this.repairRun = this.repair(regions)
      .then((done) => {
        if (!done) return this.runStopped('repair', vrgError(ErrorCode.CONNECTION_CLOSED, 'link down, paused or closed'));
        this.runFinished();
        if (this.state.name !== 'check' || !this.state.repairing) return;
        this.hooks.onAlarm('checkDiffers', false, this.vmUuid, 'differing regions repaired');
        this.feed({ type: 'repairDone' });
      })
      .catch((err) => this.runStopped('repair', err))
      .finally(() => {
        this.repairRun = null;
        if (this.state.name === 'cbt' && this.canShip()) this.startResync();
      });
  }

  /**
   * Reships differing regions as a staged pass (marked dirty, then resynced and committed atomically):
   * a region read live would show DR a later image than the rest of its blocks until the stream caught
   * up, and a failover meanwhile would find an image production never had.
   */
  private async repair(regions: readonly Region[]): Promise<boolean> {
    for (const r of regions) this.bitmaps[r.volumeIndex]!.mark(r.offset, r.length);
    await Promise.all(this.bitmaps.map((b) => b.persist()));
    if (!await this.resyncPasses('repair')) return false;
    if (this.lastCheck) this.lastCheck = { ...this.lastCheck, regionsRepaired: regions.length };
    return true;
  }

  // ---- SnapshotsOnly ------------------------------------------------------------------------------------

  /** Ships a snapshot (the delta since the previous one, staged and committed atomically on DR). */
  takeSnapshot(): void {
    if (this.state.mode !== 'snapshots') throw vrgError(ErrorCode.INVALID_ARGUMENT, `VM ${this.vmUuid} is not in SnapshotsOnly mode`);
    this.snapshotWanted = true;
    this.kickSnapshot();
  }

  private kickSnapshot(): void {
    if (!this.snapshotWanted || this.resyncRun !== null || this.state.mode !== 'snapshots' || !this.canShip()) return;
    this.snapshotWanted = false;
    this.resyncRun = this.resyncPasses('snapshot')
      .then((done) => {
        if (!done) this.snapshotWanted = true;
        else this.hooks.logger.info({ vmUuid: this.vmUuid }, 'snapshot committed on DR');
      })
      .catch((err) => this.runStopped('snapshot', err))
      .finally(() => {
        this.resyncRun = null;
        this.progress = null;
        this.kickSnapshot();
      });
  }

  /** Link came up (or resumed): restart what waits for it. */
  kick(): void {
    this.kickSnapshot();
  }

  // ---- status -------------------------------------------------------------------------------------------

  /** Resolves once the VM is in queue with no resync, check or snapshot running (or closed). */
  /** A resync, check or repair runs now. */
  get busy(): boolean {
    return (this.resyncRun ?? this.checkRun ?? this.repairRun) !== null || this.snapshotWanted;
  }

  async settled(): Promise<void> {
    for (;;) {
      const busy = this.resyncRun ?? this.checkRun ?? this.repairRun;
      const quiet = this.state.name === 'queue' && busy === null && !this.snapshotWanted;
      if (quiet || this.closed) return;
      await Promise.race([new Promise<void>((r) => this.stateWaiters.push(r)), busy ?? sleep(this.hooks.clock, 100)]);
    }
  }

  status(): VmReplicationStatus {
    const now = this.hooks.clock.nowMs();
    const s = this.state;
    const acked = this.shipper.ackedSeq;
    const journalBehind = this.cumulativeBytes - this.ackedCumulativeBytes;
    const behind = Math.max(0, this.journal.lastSeq - acked);
    const p = this.progress;
    const elapsedSec = p ? Math.max(0.001, (now - p.startedAtMs) / 1000) : 0;
    const rate = p ? p.bytesDone / elapsedSec : 0;
    return {
      vmUuid: this.vmUuid, state: s.name, status: stateNumber(s.name), mode: s.mode,
      pausedManual: s.pausedManual, syncDegraded: s.syncDegraded, transitions: { ...s.transitions },
      writesBehind: behind,
      bytesBehind: journalBehind + this.bitmaps.reduce((n, b) => n + b.dirtyBytes, 0),
      secondsBehind: behind === 0 ? 0 : Math.max(0, now - this.shipper.ackedProducedAtMs) / 1000,
      ackedSeq: acked,
      resync: p ? { bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, rateBytesPerSec: rate,
        etaSec: rate > 0 ? Math.max(0, p.bytesTotal - p.bytesDone) / rate : null } : null,
      check: this.lastCheck,
    };
  }

  diagnostics(): ProtectedVmDiagnostics {
    const j = this.journal;
    return {
      vmUuid: this.vmUuid, state: this.state.name, mode: this.state.mode, linkUp: this.state.linkUp, pausedManual: this.state.pausedManual,
      repairing: this.state.repairing,
      running: {
        resync: this.resyncRun !== null, check: this.checkRun !== null, repair: this.repairRun !== null,
        snapshotWanted: this.snapshotWanted, checkpointing: this.checkpointing !== null,
      },
      journal: {
        firstSeq: j.firstSeq, lastSeq: j.lastSeq, writtenSeq: j.writtenSeq, appendedSeq: j.appendedSeq,
        usedBytes: j.usedBytes, capacityBytes: j.capacityBytes, filesBytes: j.filesBytes, cache: j.cacheStats(), counters: j.stats,
      },
      lastRunStopped: this.lastRunStopped,
      lastTransition: this.state.lastTransition,
      transitions: { ...this.state.transitions },
      checkpointSeq: this.checkpointSeq,
      intake: this.intake.diagnostics(),
      shipper: this.shipper.diagnostics(),
    };
  }

  async close(removeData: boolean): Promise<void> {
    this.closed = true;
    for (const w of this.drWaiters.splice(0)) w();
    for (const w of this.stateWaiters.splice(0)) w();
    await this.intake.close();
    await this.checkpointing;
    await this.journal.close();
    for (const b of this.bitmaps) await b.close();
    await this.sourceState.close();
    for (const v of this.volumes) {
      await v.flush();
      await v.close();
    }
    if (removeData) {
      await this.hooks.files.rm(this.dir);
      await this.hooks.files.rm(join(this.dir, '..', '..', 'journal', this.vmUuid));
    }
  }
}

/** Digest regions: 1 MiB, larger on big volumes so one request covers at least 1 GiB. */
function checkRegionBytes(sizeBytes: number): number {
  let r = 1 * MiB;
  while (r < 64 * MiB && sizeBytes / r > digestRegionsPerRequestMax * 64) r *= 2;
  return r;
}

async function openBitmap(path: string, volumeBytes: number, hooks: ProtectedVmHooks): Promise<{ bitmap: DirtyBitmap; lost: boolean }> {
  const opts = { path, volumeBytes, granularityBytes: hooks.cbtGranularityBytes, clock: hooks.clock, files: hooks.files };
  try {
    return { bitmap: await DirtyBitmap.open(opts), lost: false };
  } catch (err) {
    if (!isVrgError(err, ErrorCode.CBT_CORRUPT) && !isVrgError(err, ErrorCode.CBT_MISMATCH)) throw err;
    // Which blocks changed is unknown: start afresh with every block dirty (a full resync).
    hooks.logger.error({ err, path }, 'CBT bitmap unusable: full resync');
    await hooks.files.rm(path);
    const bitmap = await DirtyBitmap.open(opts);
    bitmap.markAll();
    return { bitmap, lost: true };
  }
}

/**
 * The journal is written ahead of the source volume, so after a crash the source may lack the tail of
 * what the journal holds (and DR will get). Re-applying the VM writes still in the journal after the
 * source's durable point, in order, is idempotent and brings the source up to the journal's last write.
 * RESYNC records and markers were read from the source, not written to it: never replayed.
 */
async function replayOntoSource(journal: Journal, volumes: Volume[], sourceDurableSeq: number, logger: Logger): Promise<void> {
  let seq = Math.max(journal.firstSeq, sourceDurableSeq + 1);
  let records = 0;
  while (seq <= journal.lastSeq) {
    const batch = await journal.read(seq, 16 * 1024 * 1024);
    const writes = batch.filter((r) => r.kind === RecordKind.WRITE || r.kind === RecordKind.TRIM || r.kind === RecordKind.ZERO);
    await applyInOrder(writes.map((r) => toVolumeOp(volumes[r.volumeIndex]!, {
      volumeIndex: r.volumeIndex, offset: r.offset, kind: r.kind, length: r.length,
      data: r.kind === RecordKind.WRITE ? decodeRecordPayload(r.codec, r.payload, r.length) : null,
    })));
    seq = batch[batch.length - 1]!.seq + 1;
    records += writes.length;
  }
  await Promise.all(volumes.map((v) => v.flush()));
  if (records > 0) logger.info({ records, firstSeq: journal.firstSeq, lastSeq: journal.lastSeq }, 'journal replayed onto the source volumes');
}

async function exists(files: Files, path: string): Promise<boolean> {
  try {
    await files.stat(path);
    return true;
  } catch {
    return false;
  }
}
