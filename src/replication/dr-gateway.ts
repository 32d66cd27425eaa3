import { EventEmitter } from 'node:events';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BufferRing, type BufferRingStats } from '../core/buffer-ring.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { RwLock } from '../core/rw-lock.js';
import { limits } from '../core/limits.js';
import type { LinkConnection } from '../link/connection.js';
import { LinkServer } from '../link/link-server.js';
import type { PeerSecretLookup } from '../link/handshake.js';
import { carriesData, RecordKind } from '../journal/journal.js';
import { FrameType, type RawFrame } from '../protocol/frame.js';
import { declaredPlainBytes } from '../pipeline/codec.js';
import {
  encodeAck, encodeCheckDigests, type CheckRequest, type Resume, type VmState, type WriteBatch,
} from '../protocol/messages.js';
import { digestVolume } from '../volume/region-digests.js';
import { openVolume } from '../volume/open-volume.js';
import { applyInOrder, type VolumeOp } from '../volume/ordered-writes.js';
import type { Volume } from '../volume/volume.js';
import { ApplyState } from './apply-state.js';
import type { GatewayConfig, VmConfig } from './config.js';
import type { AlarmEvent, VmReplicationStatus } from './control.js';
import { stateNumber, type Mode, type StateName } from './protection-state.js';
import { StageStore, type StagedOp } from './stage-store.js';
import type { GatewayDeps } from './production-gateway.js';

// The DR gateway: authenticates and opens write batches in the codec pool, applies each VM's records
// to its target volumes strictly in production order, makes them durable (fdatasync of the targets,
// then the apply state), and only then acknowledges them. Group commit: while one durability point is
// being written, later batches keep applying; the ack names the seq captured before the flush began.

class DrVm {
  /** What production last reported of the VM's protection state (vmdrstatus on this side). */
  reported: VmState | null = null;
  targetError: string | null = null;
  appliedSeq: number;
  durableSeq: number;
  bytesApplied = 0;
  recordsApplied = 0;
  duplicatesSkipped = 0;
  lastProducedAtMs = 0;
  /** Batches apply under the write side; replica reads take the read side, so none sees half a batch. */
  readonly gate = new RwLock();

  constructor(
    readonly config: VmConfig,
    readonly volumes: Map<string, Volume>,
    readonly state: ApplyState,
    readonly stage: StageStore,
    readonly dir: string,
  ) {
    this.appliedSeq = state.appliedSeq;
    this.durableSeq = state.appliedSeq;
  }
}

interface Opened {
  batch: WriteBatch;
  data: Buffer;
  /** The ring block `data` was opened into (freed once applied), or null. */
  into: Buffer | null;
}

export interface DrVmStatus {
  vmUuid: string;
  appliedSeq: number;
  durableSeq: number;
  bytesApplied: number;
  recordsApplied: number;
  duplicatesSkipped: number;
  stagedBytes: number;
  state: string | null;
}

export interface DrStatus {
  role: 'dr';
  connected: boolean;
  linkPort: number;
  vms: DrVmStatus[];
}

/** The DR side's apply pipeline as it is now, for a stall report. */
export interface DrDiagnostics {
  role: 'dr';
  link: { connected: boolean; closed: boolean | null };
  /** The ring of batches and frames: how full, and how often a batch or frame found no room. */
  linkRing: BufferRingStats;
  /** Write batches received and not yet applied (opening in the pool, or waiting for the apply loop). */
  batchesQueued: number;
  applying: boolean;
  flushing: boolean;
  vms: Array<{ vmUuid: string; appliedSeq: number; durableSeq: number; stageActive: boolean; stagedBytes: number; targetError: string | null }>;
}

/** Events: 'alarm' (AlarmEvent: targetError raised/cleared). */
export class DrGateway extends EventEmitter {
  private conn: LinkConnection | null = null;
  private queue: Array<Promise<Opened>> = [];
  /** Received frames and their opened data (shared with the codec workers). */
  private readonly linkRing = new BufferRing({ capacityBytes: limits.linkRingBytesDr, shared: true });
  private applying = false;
  private flushing = false;
  private idleWaiters: Array<() => void> = [];

  private constructor(
    readonly config: GatewayConfig,
    private readonly deps: GatewayDeps,
    private readonly vms: Map<string, DrVm>,
    private readonly server: LinkServer,
    readonly linkPort: number,
  ) {
    super();
    server.on('connection', (conn: LinkConnection) => this.attach(conn));
  }

  static async open(config: GatewayConfig, deps: GatewayDeps): Promise<DrGateway> {
    const vms = new Map<string, DrVm>();
    for (const vmc of config.vms) vms.set(vmc.vmUuid, await openDrVm(config, deps, vmc));
    const resume = (): Resume => ({
      // The durable position, not the applied one: production trims its journal to what we report.
      // Records between the two are resent and skipped here, so each still applies exactly once.
      vms: [...vms.values()].map((vm) => ({ vmUuid: vm.config.vmUuid, appliedSeq: vm.durableSeq })),
    });
    const server = new LinkServer({
      transport: deps.transport, gatewayId: config.gatewayId, role: 'dr', secret: config.link.secret,
      clock: deps.clock, random: deps.random, logger: deps.logger, resume,
    });
    const port = await server.listen(config.link.host, config.link.port);
    for (const vm of vms.values()) deps.logger.info({ vmUuid: vm.config.vmUuid, durableSeq: vm.durableSeq }, 'dr vm opened');
    return new DrGateway(config, deps, vms, server, port);
  }

  // ---- management (control.ts) ----

  /** Binds a VM's target volumes; production's next handshake learns where its stream resumes. */
  async addVm(vmc: VmConfig): Promise<void> {
    if (this.vms.has(vmc.vmUuid)) throw vrgError(ErrorCode.CONFIG_INVALID, `VM ${vmc.vmUuid} is already protected`, { vmUuid: vmc.vmUuid });
    const used = new Set([...this.vms.values()].flatMap((vm) => [...vm.volumes.keys()]));
    for (const v of vmc.volumes) {
      if (used.has(v.volUuid)) throw vrgError(ErrorCode.CONFIG_INVALID, `volUuid ${v.volUuid} is used twice`, { volUuid: v.volUuid });
    }
    this.vms.set(vmc.vmUuid, await openDrVm(this.config, this.deps, vmc));
    this.conn?.close();
  }

  async removeVm(vmUuid: string): Promise<void> {
    const vm = this.vms.get(vmUuid);
    if (!vm) throw vrgError(ErrorCode.VM_NOT_FOUND, `no protected VM ${vmUuid}`, { vmUuid });
    this.vms.delete(vmUuid);
    this.conn?.close();
    await this.idle();
    await vm.gate.write(async () => {
      for (const v of vm.volumes.values()) await v.close();
      await vm.state.close();
      await vm.stage.close();
    });
    await rm(vm.dir, { recursive: true, force: true });
  }

  vmConfigs(): VmConfig[] {
    return [...this.vms.values()].map((vm) => vm.config);
  }

  /** Per-peer link secrets (cluster pairs) for the next handshakes; null: every peer uses link.secret. */
  setPeerSecrets(lookup: PeerSecretLookup | null): void {
    this.server.setPeerSecrets(lookup);
  }

  /** The production gateway linked now and the link's heartbeat round trip (ms), or null. */
  linkPeer(): { gatewayId: string; rttMs: number | null } | null {
    return this.conn === null ? null : { gatewayId: this.conn.peer.gatewayId, rttMs: this.conn.rttMs };
  }

  /** What production last reported of the VM (state, mode), with this side's applied figures. */
  vmStatus(vmUuid: string): VmReplicationStatus | null {
    const vm = this.vms.get(vmUuid);
    if (!vm) return null;
    const r = vm.reported;
    const state = (r?.state ?? 'queue') as StateName;
    return {
      vmUuid, state, status: stateNumber(state), mode: (r?.mode ?? 'async') as Mode,
      pausedManual: r?.pausedManual ?? false, syncDegraded: r?.syncDegraded ?? false,
      transitions: { 'queue->cbt': 0, 'queue->check': 0, 'cbt->queue': 0, 'cbt->check': 0, 'check->queue': 0, 'check->cbt': 0 } as VmReplicationStatus['transitions'],
      writesBehind: vm.appliedSeq - vm.durableSeq, bytesBehind: vm.stage.stagedBytes,
      secondsBehind: 0, ackedSeq: vm.durableSeq, resync: null, check: null,
    };
  }

  /**
   * Reads a DR replica as of a batch boundary: production's image at some point of its acknowledged
   * write history (for test failover and verification). While a resync is staged it is the image
   * from before the resync.
   */
  readReplica(volUuid: string, offset: number, length: number): Promise<Buffer> {
    for (const vm of this.vms.values()) {
      const volume = vm.volumes.get(volUuid);
      if (volume) return vm.gate.read(() => volume.read(offset, length));
    }
    return Promise.reject(vrgError(ErrorCode.VOLUME_NOT_FOUND, `no replica volume ${volUuid}`, { volUuid }));
  }

  /** The replica volumes, for exporting them read-only. */
  replicaVolumes(): Array<{ vmUuid: string; volUuid: string; sizeBytes: number }> {
    return [...this.vms.values()].flatMap((vm) => [...vm.volumes.entries()].map(([volUuid, v]) => ({
      vmUuid: vm.config.vmUuid, volUuid, sizeBytes: v.sizeBytes,
    })));
  }

  status(): DrStatus {
    return {
      role: 'dr',
      connected: this.conn !== null,
      linkPort: this.linkPort,
      vms: [...this.vms.values()].map((vm) => ({
        vmUuid: vm.config.vmUuid, appliedSeq: vm.appliedSeq, durableSeq: vm.durableSeq,
        bytesApplied: vm.bytesApplied, recordsApplied: vm.recordsApplied, duplicatesSkipped: vm.duplicatesSkipped,
        stagedBytes: vm.stage.stagedBytes, state: vm.reported?.state ?? null,
      })),
    };
  }

  diagnostics(): DrDiagnostics {
    return {
      role: 'dr',
      link: { connected: this.conn !== null, closed: this.conn?.isClosed ?? null },
      batchesQueued: this.queue.length, applying: this.applying, flushing: this.flushing,
      linkRing: this.linkRing.stats(),
      vms: [...this.vms.values()].map((vm) => ({
        vmUuid: vm.config.vmUuid, appliedSeq: vm.appliedSeq, durableSeq: vm.durableSeq,
        stageActive: vm.stage.active, stagedBytes: vm.stage.stagedBytes, targetError: vm.targetError,
      })),
    };
  }

  async close(): Promise<void> {
    await this.server.close();
    this.conn?.close();
    this.conn = null;
    await this.idle();
    await this.flushDurable();
    for (const vm of this.vms.values()) {
      for (const v of vm.volumes.values()) await v.close();
      await vm.state.close();
      await vm.stage.close();
    }
  }

  private idle(): Promise<void> {
    if (!this.applying && !this.flushing) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private attach(conn: LinkConnection): void {
    this.conn = conn;
    this.dropQueue();
    conn.useFrameMemory(this.linkRing);
    conn.on('writeBatch', (seq: number, raw: RawFrame) => {
      if (this.queue.length >= limits.framesInFlightMax * 2) {
        this.linkRing.release(raw.bytes);
        conn.close(vrgError(ErrorCode.FRAME_UNEXPECTED, 'peer exceeded the in-flight window'));
        return;
      }
      const opened = this.open(conn, seq, raw);
      opened.catch(() => undefined); // observed in order by applyLoop
      this.queue.push(opened);
      this.kickApply(conn);
    });
    conn.on('control', (type: number, msg: unknown) => {
      if (type === FrameType.VM_STATE) this.onVmState(msg as VmState);
      else if (type === FrameType.CHECK_REQUEST) void this.onCheckRequest(conn, msg as CheckRequest);
    });
    conn.on('close', () => {
      if (this.conn === conn) {
        this.conn = null;
        this.dropQueue();
      }
    });
    this.kickFlush();
  }

  /**
   * Opens a frame in the codec pool, its data into a ring block sized by what the (not yet authenticated) header
   * declares; the frame's own block is free once opened. A failed open frees the data block too.
   */
  private async open(conn: LinkConnection, seq: number, raw: RawFrame): Promise<Opened> {
    const plainBytes = declaredPlainBytes(raw.header);
    const into = plainBytes > 0 ? this.linkRing.tryAlloc(plainBytes) : null;
    try {
      const o = await this.deps.codec.openBatch({ keys: conn.recvKeys, expectedSeq: seq, frame: raw.bytes, ...(into ? { into } : {}) });
      return { ...o, into };
    } catch (err) {
      this.linkRing.release(into);
      throw err;
    } finally {
      this.linkRing.release(raw.bytes);
    }
  }

  /** Forgets the queued batches (the connection is gone); each one's block is freed once its open settles. */
  private dropQueue(): void {
    for (const q of this.queue) q.then((o) => this.linkRing.release(o.into), () => undefined);
    this.queue = [];
  }

  private onVmState(msg: VmState): void {
    const vm = this.vms.get(msg.vmUuid);
    if (vm) vm.reported = msg;
  }

  /** Digests a target range for production's consistency check (not under the gate: the check tolerates lag). */
  private async onCheckRequest(conn: LinkConnection, req: CheckRequest): Promise<void> {
    const reply = (digests: Buffer, error: string): void =>
      conn.sendControl(FrameType.CHECK_DIGESTS, encodeCheckDigests({ vmUuid: req.vmUuid, checkId: req.checkId, digests, error }));
    try {
      const volume = this.vms.get(req.vmUuid)?.volumes.get(req.volUuid);
      if (!volume) throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `no target volume ${req.volUuid} for VM ${req.vmUuid}`);
      const d = await digestVolume(volume, { start: req.start, end: req.end, regionBytes: req.regionBytes });
      reply(d.digests, '');
    } catch (err) {
      reply(Buffer.alloc(0), `${(err as { code?: string }).code ?? 'ERROR'}: ${(err as Error).message}`);
    }
  }

  private kickApply(conn: LinkConnection): void {
    if (this.applying) return;
    this.applying = true;
    void this.applyLoop(conn).finally(() => {
      this.applying = false;
      if (this.queue.length > 0 && this.conn) this.kickApply(this.conn);
      else this.settleIdle();
    });
  }

  private async applyLoop(conn: LinkConnection): Promise<void> {
    while (this.conn === conn && this.queue.length > 0) {
      let opened: Opened;
      try {
        opened = await this.queue[0]!;
      } catch (err) {
        // Nothing of a frame that fails authentication or decoding is applied, nor anything after it.
        conn.close(err as Error);
        return;
      }
      if (this.conn !== conn) return;
      this.queue.shift();
      try {
        await this.applyBatch(opened.batch, opened.data);
        this.linkRing.release(opened.into);
      } catch (err) {
        this.linkRing.release(opened.into);
        this.deps.logger.error({ err }, 'apply failed');
        this.targetFailed(opened.batch.vmUuid, err as Error);
        this.rewindToDurable();
        conn.close(err as Error);
        return;
      }
      this.kickFlush();
    }
  }

  private targetFailed(vmUuid: string, err: Error): void {
    const vm = this.vms.get(vmUuid);
    if (!vm || vm.targetError !== null) return;
    vm.targetError = err.message;
    const ev: AlarmEvent = { kind: 'targetError', raised: true, vmUuid, detail: err.message, atMs: this.deps.clock.nowMs() };
    this.emit('alarm', ev);
  }

  private targetRecovered(vm: DrVm): void {
    if (vm.targetError === null) return;
    vm.targetError = null;
    const ev: AlarmEvent = { kind: 'targetError', raised: false, vmUuid: vm.config.vmUuid, detail: 'target volumes writable again', atMs: this.deps.clock.nowMs() };
    this.emit('alarm', ev);
  }

  /** Validates the whole batch first, so a bad batch changes nothing; then applies (or stages) it in order. */
  private async applyBatch(batch: WriteBatch, data: Buffer): Promise<void> {
    const vm = this.vms.get(batch.vmUuid);
    if (!vm) throw vrgError(ErrorCode.VM_NOT_FOUND, `batch for unknown VM ${batch.vmUuid}`);
    if (batch.firstSeq > vm.appliedSeq + 1) {
      throw vrgError(ErrorCode.APPLY_GAP, `VM ${batch.vmUuid}: batch starts at ${batch.firstSeq}, applied ${vm.appliedSeq}`);
    }
    const steps = planBatch(vm, batch, data);
    await vm.gate.write(() => this.runSteps(vm, steps.steps));
    const lastSeq = batch.firstSeq + batch.records.length - 1;
    if (lastSeq > vm.appliedSeq) {
      vm.appliedSeq = lastSeq;
      vm.lastProducedAtMs = batch.producedAtMs;
    }
    vm.duplicatesSkipped += steps.skipped;
    vm.recordsApplied += batch.records.length - steps.skipped;
    vm.bytesApplied += data.byteLength;
    this.targetRecovered(vm);
    const msg = steps.skipped === batch.records.length ? 'skipped' : 'applied';
    this.deps.logger.debug({ vmUuid: vm.config.vmUuid, firstSeq: batch.firstSeq, lastSeq, skipped: steps.skipped }, msg);
  }

  /**
   * Direct ops go to the targets; between STAGE_BEGIN and STAGE_COMMIT they go to the stage, and the
   * commit applies the whole stage (its marker durable first, so a crash mid-apply redoes it at open).
   */
  private async runSteps(vm: DrVm, steps: Step[]): Promise<void> {
    let direct: VolumeOp[] = [];
    for (const step of steps) {
      if (step.type === 'op' && !vm.stage.active) {
        direct.push(toVolumeOp(vm, step.op));
        continue;
      }
      await applyInOrder(direct);
      direct = [];
      if (step.type === 'op') vm.stage.append(step.seq, [step.op]);
      else if (step.type === 'begin') vm.stage.begin(step.seq);
      else if (vm.stage.active) await this.commitStage(vm, step.seq);
    }
    await applyInOrder(direct);
  }

  private async commitStage(vm: DrVm, seq: number): Promise<void> {
    this.deps.logger.info({ vmUuid: vm.config.vmUuid, seq, stagedBytes: vm.stage.stagedBytes }, 'committing staged resync');
    await vm.stage.commit(seq, (ops) => applyStaged(vm, ops), async () => {
      // Durable before the stage is cleared: a resend from an older point would re-apply staged records directly.
      // flushDurable then acknowledges it as usual (appliedSeq moves past it after this batch).
      await vm.state.save(seq, this.deps.clock.nowMs());
    });
  }

  /**
   * After a target volume failed (a write agent dropped, a flush refused), what was applied since the
   * last durability point may be lost on the target: forget it, so the resend from the durable position
   * (production resumes from there on the next connection) applies it again instead of skipping it.
   */
  private rewindToDurable(): void {
    for (const vm of this.vms.values()) vm.appliedSeq = vm.durableSeq;
  }

  /**
   * Starts the flush loop unless it runs. `flushing` is cleared in the same turn as the loop's last look for
   * applied records (not a few microtasks later, when a batch applied meanwhile would find the flag still set
   * and never be acknowledged).
   */
  private kickFlush(): void {
    if (this.flushing) return;
    this.flushing = true;
    void this.flushLoop();
  }

  private async flushLoop(): Promise<void> {
    try {
      for (let due = this.flushDue(); due.length > 0; due = this.flushDue()) await this.flushOnce(due);
    } catch (err) {
      this.deps.logger.error({ err }, 'durability flush failed');
      this.rewindToDurable();
      this.conn?.close(err as Error);
    } finally {
      this.flushing = false;
      this.settleIdle();
    }
  }

  /** Makes everything applied (or staged) so far durable, then acknowledges it; repeats while more was applied (close). */
  private async flushDurable(): Promise<void> {
    for (let due = this.flushDue(); due.length > 0; due = this.flushDue()) await this.flushOnce(due);
  }

  private flushDue(): DrVm[] {
    return [...this.vms.values()].filter((vm) => vm.appliedSeq > vm.durableSeq);
  }

  /** One durability point: targets fdatasync'ed, then the stage, then the apply state; then the ack. */
  private async flushOnce(due: DrVm[]): Promise<void> {
    const marks = due.map((vm) => vm.appliedSeq);
    await Promise.all(due.flatMap((vm) => [...vm.volumes.values()].map((v) => v.flush())));
    await Promise.all(due.map((vm) => vm.stage.sync()));
    await Promise.all(due.map((vm, i) => vm.state.save(marks[i]!, this.deps.clock.nowMs())));
    due.forEach((vm, i) => {
      vm.durableSeq = Math.max(vm.durableSeq, marks[i]!);
      this.conn?.sendControl(FrameType.ACK, encodeAck({ vmUuid: vm.config.vmUuid, durableSeq: vm.durableSeq }));
    });
  }

  private settleIdle(): void {
    if (this.applying || this.flushing) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}

type Step = { type: 'op'; seq: number; op: StagedOp } | { type: 'begin'; seq: number } | { type: 'commit'; seq: number };

/** Checks every record of a batch against the VM's targets and cuts it into steps; throws before any change. */
function planBatch(vm: DrVm, batch: WriteBatch, data: Buffer): { steps: Step[]; skipped: number } {
  const indexOf = batch.volumeUuids.map((u) => {
    const i = vm.config.volumes.findIndex((v) => v.volUuid === u);
    if (i < 0) throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `VM ${batch.vmUuid} has no target volume ${u}`);
    return i;
  });
  const steps: Step[] = [];
  let at = 0;
  let skipped = 0;
  batch.records.forEach((r, i) => {
    const seq = batch.firstSeq + i;
    const index = indexOf[r.volumeIndex];
    const volume = index === undefined ? undefined : vm.volumes.get(vm.config.volumes[index]!.volUuid);
    if (!volume || r.offset + r.length > volume.sizeBytes) {
      throw vrgError(ErrorCode.VOLUME_OUT_OF_RANGE, `record ${seq} outside its target volume`);
    }
    const payload = carriesData(r.kind) ? data.subarray(at, at + r.length) : null;
    if (payload) at += r.length;
    // Records already applied (a resend after reconnect) are skipped: each applies exactly once.
    if (seq <= vm.appliedSeq) {
      skipped++;
      return;
    }
    if (r.kind === RecordKind.BARRIER) return;
    if (r.kind === RecordKind.STAGE_BEGIN) return void steps.push({ type: 'begin', seq });
    if (r.kind === RecordKind.STAGE_COMMIT) return void steps.push({ type: 'commit', seq });
    // A TRIM applies as zeroing: production's trim reads back zeros, and a discard on a DR block
    // device or write agent need not, which would leave the replica different.
    const kind = payload ? 'write' : 'zero';
    steps.push({ type: 'op', seq, op: { volumeIndex: index!, offset: r.offset, length: r.length, kind, data: payload } });
  });
  if (at !== data.byteLength) throw vrgError(ErrorCode.FRAME_MALFORMED, 'batch data length does not match its records');
  return { steps, skipped };
}

function toVolumeOp(vm: DrVm, op: StagedOp): VolumeOp {
  const volume = vm.volumes.get(vm.config.volumes[op.volumeIndex]!.volUuid)!;
  return { volume, offset: op.offset, length: op.length, data: op.data, kind: op.kind };
}

/** Applies a chunk of the stage and makes it durable on the targets. */
async function applyStaged(vm: DrVm, ops: StagedOp[]): Promise<void> {
  await applyInOrder(ops.map((op) => toVolumeOp(vm, op)));
  await Promise.all([...vm.volumes.values()].map((v) => v.flush()));
}

async function openDrVm(config: GatewayConfig, deps: GatewayDeps, vmc: VmConfig): Promise<DrVm> {
  const volumes = new Map<string, Volume>();
  for (const v of vmc.volumes) {
    volumes.set(v.volUuid, await (deps.openVolume ?? openVolume)(v.url, { sizeBytes: v.sizeBytes, create: true }));
  }
  const dir = join(config.dataDir, 'dr', vmc.vmUuid);
  await mkdir(dir, { recursive: true });
  const state = await ApplyState.open(join(dir, 'applied.state'));
  const logger = deps.logger.child({ vmUuid: vmc.vmUuid });
  const stage = await StageStore.open({ path: join(dir, 'stage.log'), durableSeq: state.appliedSeq, logger });
  const vm = new DrVm(vmc, volumes, state, stage, dir);
  // A commit made durable before a crash is applied before anything reads the replica.
  const committed = stage.committedSeq;
  if (await stage.recover((ops) => applyStaged(vm, ops), async () => {
    await state.save(Math.max(state.appliedSeq, committed ?? 0), deps.clock.nowMs());
  })) {
    vm.appliedSeq = vm.durableSeq = state.appliedSeq;
    logger.info({ committedSeq: committed }, 'staged resync committed before a crash: applied at open');
  }
  return vm;
}
