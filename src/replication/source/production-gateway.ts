import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { BufferRing, type BufferRingStats } from '../../core/buffer-ring.js';
import { nodeFiles, type Files } from '../../core/files.js';
import { sleep, withTimeout, type TimerHandle } from '../../core/clock.js';
import type { LatencySummary } from '../../core/latency-histogram.js';
import { limits } from '../../core/limits.js';
import { assert } from '../../core/assert.js';
import { ErrorCode, vrgError } from '../../core/errors.js';
import { RecordKind } from '../../journal/journal.js';
import type { LinkConnection } from '../../link/connection.js';
import { LinkClient } from '../../link/link-client.js';
import { LinkSecretStore } from '../../link/link-secrets.js';
import { rateLimitedTransport } from '../../link/rate-limited-transport.js';
import { FrameType } from '../../protocol/frame.js';
import { encodeCheckRequest, encodeVmState, type Ack, type CheckDigests, type CheckRequest, type RekeyAck, type Resume } from '../../protocol/messages.js';
import { openVolume } from '../../volume/open-volume.js';
import type { Volume } from '../../volume/volume.js';
import type { GatewayConfig } from '../config.js';
import type { AlarmEvent, AlarmKind, Mode, PeerConfig, VmProtection, VmReplicationStatus } from '../control.js';
import type { GatewayDeps } from '../gateway-deps.js';
import { RekeyInitiator, type RekeyResult } from '../link-rekey.js';
export type { GatewayDeps } from '../gateway-deps.js';
import { ProtectedVm, type ProtectedVmDiagnostics, type ProtectedVmHooks } from './protected-vm.js';
import { lagAlarmChanges, type LagAlarmKind } from './lag-alarms.js';
import { openRunMarker, type RunMarker } from './run-marker.js';
import { loadVmRole, saveVmRole, wireGeneration, type VmRoleState } from '../vm-role.js';
import { encodeFailoverReady, type FailoverRequest, type ResumeVm } from '../../protocol/messages.js';


export interface ProductionVmStatus {
  vmUuid: string;
  lastSeq: number;
  ackedSeq: number;
  backlogRecords: number;
  journalUsedBytes: number;
  journalCapacityBytes: number;
  lagMs: number;
  writes: number;
  bytesIn: number;
  bytesJournaled: number;
  /** Plain bytes of the data records shipped, and their stored bytes on the wire (compressed at ship time). */
  plainBytesSent: number;
  bytesSent: number;
  /** Ship-time compression: the setting, what the next batch does, the share of plain bytes sent compressed, flips. */
  compression: { setting: string; compressing: boolean; compressedShare: number; switches: number };
  fault: string | null;
  replication: VmReplicationStatus;
  /** Where a write's time went, per stage (ms; since the last resetLatency). */
  latency: Record<string, LatencySummary>;
  /** The lag alarms raised now (RPO, journal fill). */
  lagAlarms: LagAlarmKind[];
}

/** Event 'demote': the peer holds the VM at a newer generation; the site makes this side its target. */
export interface DemoteRequest {
  vmUuid: string;
  generation: number;
  conn: LinkConnection;
}

export interface ProductionStatus {
  role: 'production';
  connected: boolean;
  rttMs: number | null;
  vms: ProductionVmStatus[];
}

/** The production side's pipeline as it is now, for a stall report (what a hung drain was waiting for). */
export interface ProductionDiagnostics {
  role: 'production';
  link: { connected: boolean; closed: boolean | null; everConnected: boolean; lastError: string | null; rttMs: number | null };
  roomWaiters: number;
  digestWaiters: number;
  /** The ring of batches and frames: how full, and how often a batch or frame found no room. */
  linkRing: BufferRingStats;

  vms: ProtectedVmDiagnostics[];
}

export interface ProductionGatewayOptions {
  /** Async mode: link down longer than this moves a VM to CBT. */
  linkDownCbtAfterMs?: number;
  /** Sync mode: link down longer than this degrades to Async-with-CBT. */
  syncDegradeAfterMs?: number;
  cbtGranularityBytes?: number;
  /** SnapshotsOnly: take a snapshot this often (0: only on demand). */
  snapshotIntervalMs?: number;
  /**
   * Cluster mode: called before each write is taken; throws (CLUSTER_FENCED) while this gateway may not act for
   * the VM (its etcd lease is not surely alive), so a fenced owner never writes a source volume.
   */
  writeGuard?: ((vmUuid: string) => void) | null;
}

/** Cluster mode: how a VM whose ownership this gateway took starts (src/cluster). */
export interface AdoptOptions {
  /** The ownership's fencing token, carried in every batch. */
  fencingToken: number;
  /**
   * 'new': never replicated (a full initial sync); 'check': a previous owner died, so a consistency check
   * (source = truth, a staged repair) rebuilds DR; 'clean': a planned hand-over left DR equal to the source.
   */
  start: 'new' | 'check' | 'clean';
}

const digestRequestTimeoutMs = 120_000;
const defaultBootIdPath = '/proc/sys/kernel/random/boot_id';
const stateTickMs = 500;

/**
 * The production gateway: intake API → source volume + journal → codec pool → link to the DR gateway.
 * `write` settles by the VM's mode (SPEC §2.1): Async once on the source and durable in the journal (or,
 * in CBT, durably marked in the bitmap; with intake.writeBack, once written to the journal file); Sync once
 * DR has it durably; SnapshotsOnly once on the source.
 * Events: 'transition' (TransitionEvent), 'alarm' (AlarmEvent).
 */
export class ProductionGateway extends EventEmitter {
  private conn: LinkConnection | null = null;
  /** The last Resume the peer sent on `conn` (the handshake's, or a later one). */
  private latestResume: { conn: LinkConnection; resume: Resume } | null = null;
  private link: LinkClient | null = null;
  private peerCfg: PeerConfig | null = null;
  private everConnected = false;
  private lastLinkError: string | null = null;
  /** The last link error's code; the peer's own code when the peer closed the link (e.g. a stale fencing token). */
  private lastLinkErrorCode: string | null = null;
  private readonly vms = new Map<string, ProtectedVm>();
  /** Cluster mode: VM instances whose DR stream was reported lost ('streamLost'). */
  private readonly streamLost = new WeakSet<ProtectedVm>();
  /** Each VM's role state here (vm-role.ts): its generation, and whether it took writes while disconnected. */
  private readonly roles = new Map<string, VmRoleState>();
  /** VMs that took writes while disconnected (vmUuid → since), and the one write noting it durably. */
  private readonly diverged = new Map<string, number>();
  private readonly divergeNoting = new Map<string, Promise<void>>();
  /** VMs found in split brain (both sides took writes as source), until an operator resolves it. */
  private readonly splitBrain = new Set<string>();
  private readonly peerSourceSeqs = new Map<string, number>();
  private readonly roleWrites = new Map<string, Promise<void>>();
  /** VMs being moved (planned failover): their writes are refused (NBD EPERM) until demoted or timed out. */
  private readonly frozen = new Map<string, TimerHandle>();
  /** Batches and sealed frames of every VM (shared with the codec workers). */
  private readonly linkRing = new BufferRing({ capacityBytes: limits.linkRingBytesProduction, shared: true });
  private readonly byVolume = new Map<string, { vm: ProtectedVm; index: number }>();
  private readonly roomWaiters: Array<() => void> = [];
  private readonly digestWaiters = new Map<number, { resolve: (b: Buffer) => void; reject: (e: Error) => void; timer: TimerHandle }>();
  private nextCheckId = 1;
  private checkpointTimer: TimerHandle | null = null;
  private tickTimer: TimerHandle | null = null;
  /** The lag alarms raised now, per VM (lag-alarms.ts). */
  private readonly lagAlarms = new Map<string, Set<LagAlarmKind>>();
  private snapshotTimer: TimerHandle | null = null;
  private linkAlarmRaised = false;
  private closed = false;
  private runMarker: RunMarker | null = null;
  private readonly files: Files;
  /** Rotated link secrets (link-secrets.ts) and the rotation driver (link-rekey.ts). */
  private secrets: LinkSecretStore | null = null;
  private readonly rekeys: RekeyInitiator;
  private rekeyTimer: TimerHandle | null = null;

  private constructor(
    readonly config: GatewayConfig,
    private readonly deps: GatewayDeps,
    private readonly opts: Required<ProductionGatewayOptions>,
  ) {
    super();
    this.files = deps.files ?? nodeFiles;
    this.rekeys = new RekeyInitiator({ clock: deps.clock, random: deps.random, logger: deps.logger });
  }

  static async open(config: GatewayConfig, deps: GatewayDeps, options: ProductionGatewayOptions = {}): Promise<ProductionGateway> {
    const gw = new ProductionGateway(config, deps, {
      linkDownCbtAfterMs: options.linkDownCbtAfterMs ?? config.protection.linkDownCbtAfterMs,
      syncDegradeAfterMs: options.syncDegradeAfterMs ?? config.protection.syncDegradeAfterMs,
      cbtGranularityBytes: options.cbtGranularityBytes ?? config.protection.cbtGranularityBytes,
      snapshotIntervalMs: options.snapshotIntervalMs ?? config.protection.snapshotIntervalMs,
      writeGuard: options.writeGuard ?? null,
    });
    await gw.files.mkdir(config.dataDir);
    gw.secrets = await LinkSecretStore.open(config.dataDir, gw.files);
    gw.runMarker = await openRunMarker(config.dataDir, config.intake?.bootIdPath ?? defaultBootIdPath, gw.writeBack, gw.files);
    for (const vmc of config.vms) await gw.openVm(vmc);
    if (config.link.port > 0) gw.setPeer({ host: config.link.host, port: config.link.port });
    gw.scheduleCheckpoints();
    gw.scheduleTicks();
    gw.scheduleSnapshots();
    gw.scheduleRekeys();
    return gw;
  }

  // ---- management (control.ts) ----

  /** Starts protecting a VM: a new one is fully synced (holes skipped), then checked, then queued. */
  async addVm(p: VmProtection, generation?: number): Promise<void> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, 'gateway is closed');
    await this.openVm(p, generation);
    // The DR side tells its resume point per VM at the handshake: a fresh one covers the new VM.
    this.link?.connection?.close();
  }

  /**
   * A VM promoted here (dr-site.ts) with no peer to ship to: it enters CBT, so every write from now on is
   * tracked in its bitmap (what a failback ships) rather than journaled for a peer that may never come.
   */
  trackInBitmap(vmUuid: string, reason: string): void {
    this.vm(vmUuid).feed({ type: 'resyncNeeded', reason });
  }

  async removeVm(vmUuid: string): Promise<void> {
    const vm = this.vm(vmUuid);
    this.frozen.get(vmUuid)?.cancel();
    this.frozen.delete(vmUuid);
    if (this.splitBrain.delete(vmUuid)) this.alarm('splitBrain', false, vmUuid, 'the VM is no longer a source here');
    this.vms.delete(vmUuid);
    for (const v of vm.config.volumes) this.byVolume.delete(v.volUuid);
    await vm.close(true);
    this.deps.logger.info({ vmUuid }, 'VM protection removed');
  }

  /**
   * Cluster mode: starts serving a VM this gateway now owns, as a new seq stream (its DR side starts one too):
   * whatever an earlier ownership left here goes first (its writes are on the source: the journal is its WAL).
   */
  async adoptVm(p: VmProtection, o: AdoptOptions): Promise<void> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, 'gateway is closed');
    if (this.vms.has(p.vmUuid)) throw vrgError(ErrorCode.CONFIG_INVALID, `VM ${p.vmUuid} is already protected`, { vmUuid: p.vmUuid });
    const cbtDir = join(this.config.dataDir, 'cbt', p.vmUuid);
    await this.files.rm(cbtDir);
    await this.files.rm(join(this.config.dataDir, 'journal', p.vmUuid));
    // An existing state directory: not a new VM, so nothing is marked for a full copy.
    if (o.start !== 'new') await this.files.mkdir(cbtDir);
    // Attached from the DR side's latest Resume if it has the VM already, else from the Resume frame it
    // sends once it opens it (the link stays up: other VMs keep shipping).
    const vm = await this.openVm(p, undefined, o.fencingToken);
    if (o.start === 'check') vm.feed({ type: 'checkRequested', reason: 'cluster-takeover' });
  }

  /**
   * Cluster mode, a planned move: the VM takes no more writes, everything written is acknowledged by DR, then
   * it is removed here. Resolves with whether DR equals the source (in queue, nothing unacknowledged within
   * timeoutMs): only then may the next owner skip the check.
   */
  async handOverVm(vmUuid: string, timeoutMs: number): Promise<{ clean: boolean; lastSeq: number }> {
    const vm = this.vm(vmUuid);
    if (this.frozen.has(vmUuid)) throw vrgError(ErrorCode.FAILOVER_IN_PROGRESS, `VM ${vmUuid} is moving already`, { vmUuid });
    this.frozen.set(vmUuid, this.deps.clock.setTimer(timeoutMs, () => undefined));
    const clean = await this.drainForHandOver(vm, timeoutMs);
    if (!clean) this.deps.logger.warn({ vmUuid }, 'hand-over: DR did not acknowledge everything; the next owner checks the VM');
    const lastSeq = vm.journal.lastSeq;
    await this.removeVm(vmUuid); // with its journal and bitmaps
    return { clean, lastSeq };
  }

  /**
   * Waits (bounded) until the frozen VM is in queue with nothing running and DR acknowledged its last record,
   * through link reconnects; false at once when its stream cannot be shipped (a shipper fault), or at the bound.
   */
  private async drainForHandOver(vm: ProtectedVm, timeoutMs: number): Promise<boolean> {
    const deadlineMs = this.deps.clock.nowMs() + timeoutMs;
    for (;;) {
      await vm.intake.idle();
      const last = vm.journal.lastSeq;
      if (vm.state.name === 'queue' && !vm.busy && vm.shipper.ackedSeq >= last) return true;
      if (vm.shipper.fault !== null || this.deps.clock.nowMs() >= deadlineMs || this.closed) return false;
      await Promise.race([vm.shipper.waitAcked(last), sleep(this.deps.clock, 100)]);
    }
  }

  /** Pairs with a DR gateway (null: unpairs; the link stops). */
  setPeer(peer: PeerConfig | null): void {
    if (this.link) {
      this.link.stop();
      this.link = null;
      this.onDisconnected(null);
    }
    this.peerCfg = peer;
    this.everConnected = false;
    this.lastLinkError = null;
    if (peer === null || this.closed) return;
    const rate = this.config.link.rateBytesPerSec;
    const transport = rate > 0 ? rateLimitedTransport(this.deps.transport, rate, this.deps.clock) : this.deps.transport;
    const link = new LinkClient({
      transport, host: peer.host, port: peer.port,
      gatewayId: this.config.gatewayId, role: 'production', secret: this.linkSecrets().current,
      clock: this.deps.clock, random: this.deps.random, logger: this.deps.logger,
    });
    link.on('connected', (conn: LinkConnection) => this.onConnected(conn));
    link.on('disconnected', (err: Error | null) => this.onDisconnected(err));
    link.on('connectFailed', (err: Error) => {
      this.lastLinkError = `${(err as { code?: string }).code ?? 'ERROR'}: ${err.message}`;
    });
    this.link = link;
    link.start();
  }

  /** The pairing's secrets now: the configured one (or the cluster pair's) until a rotation replaced it. */
  private linkSecrets(): { initial: Buffer; current: Buffer; generation: number } {
    const initial = this.peerCfg?.secret ?? this.config.link.secret;
    const s = this.secrets?.get(initial) ?? { current: initial, generation: 0 };
    return { initial, current: s.current, generation: s.generation };
  }

  /**
   * Rotates the link secret with the DR gateway (link-rekey.ts); resolves with the new generation once both
   * sides hold it durably. The link then reconnects with it and DR refuses the old one.
   */
  async rekey(): Promise<RekeyResult> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, 'gateway is closed');
    assert(this.secrets !== null, 'the link secret store is open');
    return this.rekeys.run(this.conn, this.link, this.secrets, this.linkSecrets().initial);
  }

  /** The link secret's rotation count (0: the configured secret). */
  get linkSecretGeneration(): number {
    return this.linkSecrets().generation;
  }

  private scheduleRekeys(): void {
    const everyMs = (this.config.link.rekeyIntervalSeconds ?? 0) * 1000;
    if (everyMs <= 0) return;
    const tick = (): void => {
      if (this.closed) return;
      if (this.conn !== null && !this.rekeys.running) {
        this.rekey().catch((err: Error) => this.deps.logger.warn({ err: err.message }, 'scheduled link secret rotation failed'));
      }
      this.rekeyTimer = this.deps.clock.setTimer(everyMs, tick);
    };
    this.rekeyTimer = this.deps.clock.setTimer(everyMs, tick);
  }

  peerStatus(): { host: string; port: number; connected: boolean; everConnected: boolean; lastError: string | null; lastErrorCode: string | null; rttMs: number | null } | null {
    if (this.peerCfg === null) return null;
    return {
      host: this.peerCfg.host, port: this.peerCfg.port, connected: this.conn !== null,
      everConnected: this.everConnected, lastError: this.lastLinkError, lastErrorCode: this.lastLinkErrorCode, rttMs: this.conn?.rttMs ?? null,
    };
  }

  vmStatus(vmUuid: string): VmReplicationStatus | null {
    return this.vms.get(vmUuid)?.status() ?? null;
  }

  /** The VM's role here (always source), its generation, and whether it is in split brain. */
  vmRole(vmUuid: string): { role: 'source'; generation: number; splitBrain: boolean } | null {
    const vm = this.vms.get(vmUuid);
    if (!vm) return null;
    return { role: 'source', generation: vm.shipper.generation, splitBrain: this.splitBrain.has(vmUuid) };
  }

  vmConfigs(): VmProtection[] {
    return [...this.vms.values()].map((vm) => ({ ...vm.config, mode: vm.state.mode, pausedManual: vm.state.pausedManual }));
  }

  setMode(vmUuid: string, mode: Mode): void {
    this.vm(vmUuid).feed({ type: 'setMode', mode });
  }

  pause(vmUuid: string): void {
    this.vm(vmUuid).feed({ type: 'pause' });
  }

  resume(vmUuid: string): void {
    this.vm(vmUuid).feed({ type: 'resume' });
  }

  requestCheck(vmUuid: string): void {
    this.vm(vmUuid).feed({ type: 'checkRequested', reason: 'on-demand' });
  }

  takeSnapshot(vmUuid: string): void {
    this.vm(vmUuid).takeSnapshot();
  }

  /** The protected volumes, for the NBD front. */
  protectedVolumes(): Array<{ vmUuid: string; volUuid: string; volume: Volume }> {
    return [...this.vms.values()].flatMap((vm) => vm.config.volumes.map((v, i) => ({ vmUuid: vm.vmUuid, volUuid: v.volUuid, volume: vm.volumes[i]! })));
  }

  // ---- intake API (the NBD front calls these) ----

  async write(volUuid: string, offset: number, data: Uint8Array): Promise<void> {
    const { vm, index } = this.volume(volUuid);
    this.opts.writeGuard?.(vm.vmUuid);
    if (this.frozen.has(vm.vmUuid)) throw this.frozenError(vm.vmUuid);
    if (!vm.shipper.connected && !this.diverged.has(vm.vmUuid)) await this.noteDiverged(vm);
    return vm.intake.submit({ volumeIndex: index, offset, kind: RecordKind.WRITE, length: data.byteLength, data });
  }

  async writeZeroes(volUuid: string, offset: number, length: number): Promise<void> {
    const { vm, index } = this.volume(volUuid);
    this.opts.writeGuard?.(vm.vmUuid);
    if (this.frozen.has(vm.vmUuid)) throw this.frozenError(vm.vmUuid);
    if (!vm.shipper.connected && !this.diverged.has(vm.vmUuid)) await this.noteDiverged(vm);
    return vm.intake.submit({ volumeIndex: index, offset, kind: RecordKind.ZERO, length, data: null });
  }

  async trim(volUuid: string, offset: number, length: number): Promise<void> {
    const { vm, index } = this.volume(volUuid);
    this.opts.writeGuard?.(vm.vmUuid);
    if (this.frozen.has(vm.vmUuid)) throw this.frozenError(vm.vmUuid);
    if (!vm.shipper.connected && !this.diverged.has(vm.vmUuid)) await this.noteDiverged(vm);
    return vm.intake.submit({ volumeIndex: index, offset, kind: RecordKind.TRIM, length, data: null });
  }

  private frozenError(vmUuid: string): Error {
    return vrgError(ErrorCode.VM_ROLE_CONFLICT, `VM ${vmUuid} is moving to its DR gateway (planned failover): writes are refused`, { vmUuid });
  }

  /**
   * Planned failover, the source's part: the VM takes no more writes, everything written is acknowledged by
   * the target, then the target is told the last seq; it promotes the VM and this side, seeing the newer
   * generation at the next handshake, becomes the target with nothing to resync (the images are equal).
   */
  private async onFailoverRequest(conn: LinkConnection, req: FailoverRequest): Promise<void> {
    const reply = (lastSeq: number, error: string): void =>
      conn.sendControl(FrameType.FAILOVER_READY, encodeFailoverReady({ vmUuid: req.vmUuid, requestId: req.requestId, lastSeq, error }));
    const vm = this.vms.get(req.vmUuid);
    if (!vm || !vm.shipper.connected || vm.state.name !== 'queue') {
      return reply(0, `${ErrorCode.FAILOVER_REFUSED}: VM ${req.vmUuid} is ${vm ? `in ${vm.state.name}${vm.shipper.connected ? '' : ', not attached'}` : 'not a source here'}`);
    }
    const unfreeze = (): void => {
      this.frozen.get(vm.vmUuid)?.cancel();
      this.frozen.delete(vm.vmUuid);
    };
    this.frozen.set(vm.vmUuid, this.deps.clock.setTimer(limits.plannedFailoverDrainMs + limits.plannedFailoverPromoteMs, () => {
      this.deps.logger.warn({ vmUuid: vm.vmUuid }, 'planned failover: the target did not promote the VM; taking its writes again');
      unfreeze();
    }));
    try {
      await withTimeout(this.deps.clock, limits.plannedFailoverDrainMs, (async () => {
        await vm.intake.idle();
        await vm.shipper.waitAcked(vm.journal.lastSeq);
      })(), `the VM's writes were not all acknowledged within ${limits.plannedFailoverDrainMs} ms`);
      this.deps.logger.info({ vmUuid: vm.vmUuid, lastSeq: vm.journal.lastSeq }, 'planned failover: writes stopped and acknowledged');
      reply(vm.journal.lastSeq, '');
    } catch (err) {
      unfreeze();
      reply(0, `${ErrorCode.FAILOVER_REFUSED}: ${(err as Error).message}`);
    }
  }

  /** This side's VMs for a Resume frame (production-site.ts): each a source at its generation. */
  resumeEntries(): ResumeVm[] {
    // appliedSeq: this side's last seq (where a peer that gives up its own writes in a split brain resumes).
    return [...this.vms.values()].map((vm) => ({
      vmUuid: vm.vmUuid, appliedSeq: vm.journal.lastSeq, generation: vm.shipper.generation, role: 'source', splitBrain: this.splitBrain.has(vm.vmUuid),
    }));
  }

  /** The first write while disconnected is noted durably before it is taken (split-brain detection). */
  private noteDiverged(vm: ProtectedVm): Promise<void> {
    let p = this.divergeNoting.get(vm.vmUuid);
    if (!p) {
      const at = this.deps.clock.nowMs();
      p = this.saveRole(vm.vmUuid, { divergedAtMs: at })
        .then(() => void this.diverged.set(vm.vmUuid, at))
        .finally(() => this.divergeNoting.delete(vm.vmUuid));
      this.divergeNoting.set(vm.vmUuid, p);
    }
    return p;
  }

  /**
   * Forgets that the VM took writes while disconnected (the peer is attached again at the same generation). A
   * noting still being written is cleared once written: otherwise it would land after this clear, and the
   * next failover would be taken for a split brain.
   */
  private clearDiverged(vmUuid: string): void {
    const noting = this.divergeNoting.get(vmUuid);
    if (!this.diverged.has(vmUuid) && noting === undefined) return;
    this.diverged.delete(vmUuid);
    void (noting ?? Promise.resolve()).catch(() => undefined).then(() => {
      this.diverged.delete(vmUuid);
      return this.saveRole(vmUuid, { divergedAtMs: undefined });
    }).catch((err) => this.deps.logger.error({ err }, 'could not clear divergedAtMs'));
  }

  /** One role-file write at a time per VM (each replaces the file through the same temp file). */
  private saveRole(vmUuid: string, change: Partial<VmRoleState>): Promise<void> {
    const role = { ...this.roles.get(vmUuid)!, ...change };
    if (change.divergedAtMs === undefined && 'divergedAtMs' in change) delete role.divergedAtMs;
    this.roles.set(vmUuid, role);
    const next = (this.roleWrites.get(vmUuid) ?? Promise.resolve()).catch(() => undefined).then(() => saveVmRole(this.config.dataDir, role, this.files));
    this.roleWrites.set(vmUuid, next);
    return next;
  }

  /**
   * Split brain, resolved on the side whose writes lose: they are discarded (overwritten from the peer by the
   * failback's resync and check); the link reconnects and this side becomes the VM's target.
   */
  async discardDivergence(vmUuid: string): Promise<void> {
    this.vm(vmUuid);
    if (!this.splitBrain.has(vmUuid)) throw vrgError(ErrorCode.VM_ROLE_CONFLICT, `VM ${vmUuid} is not in split brain here`, { vmUuid });
    await this.saveRole(vmUuid, { divergedAtMs: undefined });
    this.diverged.delete(vmUuid);
    this.splitBrain.delete(vmUuid);
    this.alarm('splitBrain', false, vmUuid, 'resolved: this side\'s writes since the split are discarded');
    this.conn?.close();
  }

  private adoptGeneration(vm: ProtectedVm, generation: number, conn: LinkConnection, at: ResumeVm): void {
    vm.shipper.generation = generation;
    this.splitBrain.delete(vm.vmUuid);
    this.diverged.delete(vm.vmUuid);
    this.alarm('splitBrain', false, vm.vmUuid, `resolved: ${conn.peer.gatewayId} gave up its writes; this side survives`);
    void this.saveRole(vm.vmUuid, { generation, divergedAtMs: undefined }).catch((err) => this.deps.logger.error({ err }, 'could not save the role'));
    this.attachVm(vm, conn, { ...at, generation });
    vm.feed({ type: 'checkRequested', reason: 'split-brain-survivor' });
  }

  /** The last seq a peer that is still a source of an older generation reported (split-brain resolution). */
  peerSourceSeq(vmUuid: string): number | undefined {
    return this.peerSourceSeqs.get(vmUuid);
  }

  private raiseSplitBrain(vmUuid: string, peer: string): void {
    if (this.splitBrain.has(vmUuid)) return;
    this.splitBrain.add(vmUuid);
    this.alarm('splitBrain', true, vmUuid, `split brain with ${peer}: both sides took writes as source; pick the survivor`);
  }

  /**
   * NBD FLUSH (of one volume's VM, or of all): everything acknowledged before the call is durable. A journaled
   * write already is, unless the intake is write-back: then the journal is fdatasync'ed up to the last append
   * (the journal is the source volumes' write-ahead log, replayed at start, trimmed only after they are
   * fsynced). A write tracked by the CBT bitmap is only in the source's page cache: fsync it.
   */
  async flush(volUuid?: string): Promise<void> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, 'gateway is closed');
    const vms = volUuid === undefined ? [...this.vms.values()] : [this.volume(volUuid).vm];
    await Promise.all(vms.map((vm) => Promise.all([vm.intake.flushTracked(), vm.intake.flushJournal()])));
  }

  /** Write-back intake (config `intake.writeBack`): writes are acknowledged before the journal's fdatasync. */
  get writeBack(): boolean {
    return this.config.intake?.writeBack === true;
  }

  /** Resolves once the DR side has durably applied everything written before the call (and no resync or check runs). */
  async drain(): Promise<void> {
    await Promise.all([...this.vms.values()].map(async (vm) => {
      await vm.intake.idle();
      await vm.settled();
      await vm.shipper.waitAcked(vm.journal.lastSeq);
      await vm.settled();
    }));
  }

  /** The latency histograms in status start afresh (e.g. at the start of a bench job). */
  resetLatency(): void {
    for (const vm of this.vms.values()) vm.resetLatency();
  }

  status(): ProductionStatus {
    const now = this.deps.clock.nowMs();
    return {
      role: 'production',
      connected: this.conn !== null,
      rttMs: this.conn?.rttMs ?? null,
      vms: [...this.vms.values()].map((vm) => {
        const behind = Math.max(0, vm.journal.lastSeq - vm.shipper.ackedSeq);
        const replication = vm.status();
        // The lag alarms as of these figures, not of the last tick: a reader never sees 0 s behind with the RPO alarm up.
        this.checkLagAlarms(vm, replication.secondsBehind);
        return {
          vmUuid: vm.vmUuid,
          lastSeq: vm.journal.lastSeq,
          ackedSeq: vm.shipper.ackedSeq,
          backlogRecords: behind,
          journalUsedBytes: vm.journal.usedBytes,
          journalCapacityBytes: vm.journal.capacityBytes,
          lagMs: behind === 0 ? 0 : Math.max(0, now - vm.shipper.ackedProducedAtMs),
          writes: vm.intake.stats.writes,
          bytesIn: vm.intake.stats.bytesIn,
          bytesJournaled: vm.intake.stats.bytesJournaled,
          plainBytesSent: vm.shipper.stats.plainBytesSent,
          bytesSent: vm.shipper.stats.bytesSent,
          compression: {
            setting: vm.shipper.compression.setting,
            compressing: vm.config.compressOption === 1 && vm.shipper.compression.compressing,
            compressedShare: vm.shipper.stats.plainBytesSent === 0 ? 0 : vm.shipper.stats.plainBytesCompressOn / vm.shipper.stats.plainBytesSent,
            switches: vm.shipper.compression.switches,
          },
          fault: vm.shipper.fault,
          replication,
          latency: vm.latencySummary(),
          lagAlarms: [...(this.lagAlarms.get(vm.vmUuid) ?? [])],
        };
      }),
    };
  }

  diagnostics(): ProductionDiagnostics {
    return {
      role: 'production',
      link: {
        connected: this.conn !== null, closed: this.conn?.isClosed ?? null, everConnected: this.everConnected,
        lastError: this.lastLinkError, rttMs: this.conn?.rttMs ?? null,
      },
      roomWaiters: this.roomWaiters.length,
      digestWaiters: this.digestWaiters.size,
      linkRing: this.linkRing.stats(),
      vms: [...this.vms.values()].map((vm) => vm.diagnostics()),
    };
  }

  /** Idempotent: a second call waits for the first. */
  close(): Promise<void> {
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  private closing: Promise<void> | null = null;

  private async closeOnce(): Promise<void> {
    this.closed = true;
    this.checkpointTimer?.cancel();
    this.tickTimer?.cancel();
    this.snapshotTimer?.cancel();
    this.rekeyTimer?.cancel();
    this.link?.stop();
    this.onDisconnected(null);
    for (const vm of this.vms.values()) await vm.close(false);
    for (const w of this.roomWaiters.splice(0)) w();
    // Best effort: a marker that stays unclean only costs a consistency check after the next host restart.
    await this.runMarker?.markClean().catch((err) => this.deps.logger.warn({ err }, 'could not mark the run clean'));
  }

  private async openVm(p: VmProtection, generation?: number, fencingToken = 0): Promise<ProtectedVm> {
    if (this.vms.has(p.vmUuid)) throw vrgError(ErrorCode.CONFIG_INVALID, `VM ${p.vmUuid} is already protected`, { vmUuid: p.vmUuid });
    const seen = new Set<string>();
    for (const v of p.volumes) {
      if (this.byVolume.has(v.volUuid) || seen.has(v.volUuid)) throw vrgError(ErrorCode.CONFIG_INVALID, `volUuid ${v.volUuid} is used twice`, { volUuid: v.volUuid });
      seen.add(v.volUuid);
    }
    const perVmCapacity = Math.floor(this.config.journalCapacityBytes / Math.max(1, this.config.vms.length, this.vms.size + 1));
    const open = this.deps.openVolume ?? openVolume;
    const vm = await ProtectedVm.open(p, this.config.dataDir, (v) => open(v.url, { sizeBytes: v.sizeBytes, create: true }), perVmCapacity, this.vmHooks(p.vmUuid));
    const role = await loadVmRole(this.config.dataDir, p.vmUuid, 'source', this.files);
    if (generation !== undefined) role.generation = generation;
    vm.shipper.generation = role.generation;
    vm.shipper.fencingToken = fencingToken;
    this.roles.set(p.vmUuid, role);
    if (role.divergedAtMs !== undefined) this.diverged.set(p.vmUuid, role.divergedAtMs);
    this.vms.set(p.vmUuid, vm);
    p.volumes.forEach((v, index) => this.byVolume.set(v.volUuid, { vm, index }));
    // Before any write takes a seq: DR may hold seqs the crash took from the journal.
    if (this.runMarker?.hostCrashed && !vm.fresh) await vm.skipShipAheadSeqs();
    // Also for VMs the management API re-adds at start: each one with earlier data is checked.
    if (this.runMarker?.writeBackHostCrashed && !vm.fresh) {
      this.deps.logger.warn({ vmUuid: vm.vmUuid }, 'write-back gateway: the host restarted after an unclean stop; checking the VM');
      vm.feed({ type: 'recovered' });
    }
    // The peer's latest Resume on this connection (on a shared one, the site forwards it after the handshake:
    // a VM the management API re-adds after that must still find its entry), else the handshake's.
    const latest = this.latestResume?.conn === this.conn ? this.latestResume?.resume : undefined;
    const entry = (r: Resume | null | undefined): ResumeVm | undefined => r?.vms.find((x) => x.vmUuid === p.vmUuid);
    const at = entry(latest) ?? entry(this.conn?.resume);
    if (this.conn && at) this.attachVm(vm, this.conn, at);
    return vm;
  }

  private vmHooks(vmUuid: string): ProtectedVmHooks {
    return {
      clock: this.deps.clock, codec: this.deps.codec, logger: this.deps.logger.child({ vmUuid }), files: this.files,
      requestDigests: (req) => this.requestDigests(req),
      onTransition: (ev) => this.emit('transition', ev),
      onAlarm: (kind, raised, id, detail) => this.alarm(kind, raised, id, detail),
      onStateChanged: (vm) => this.sendVmState(vm),
      onAcked: () => this.checkpointSoon(),
      waitForRoom: () => this.waitForRoom(),
      checkpointSoon: () => this.checkpointSoon(),
      linkDownCbtAfterMs: this.opts.linkDownCbtAfterMs,
      syncDegradeAfterMs: this.opts.syncDegradeAfterMs,
      cbtGranularityBytes: this.opts.cbtGranularityBytes,
      writeBack: () => this.writeBack,
      compression: this.config.link.compression,
      linkRing: this.linkRing,
      ...(this.opts.writeGuard ? { sourceGuard: () => this.opts.writeGuard!(vmUuid) } : {}),
    };
  }

  private alarm(kind: AlarmKind, raised: boolean, vmUuid: string | null, detail: string): void {
    const ev: AlarmEvent = { kind, raised, vmUuid, detail, atMs: this.deps.clock.nowMs() };
    this.emit('alarm', ev);
  }

  private vm(vmUuid: string): ProtectedVm {
    const vm = this.vms.get(vmUuid);
    if (!vm) throw vrgError(ErrorCode.VM_NOT_FOUND, `no protected VM ${vmUuid}`, { vmUuid });
    return vm;
  }

  private volume(volUuid: string): { vm: ProtectedVm; index: number } {
    const found = this.byVolume.get(volUuid);
    if (!found) throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `no protected volume ${volUuid}`, { volUuid });
    return found;
  }

  /** A full journal without CBT (never with it: writes fall back to the bitmap) waits for a checkpoint. */
  private waitForRoom(): Promise<void> {
    const p = new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    this.checkpointSoon();
    return p;
  }

  private scheduleCheckpoints(): void {
    if (this.closed) return;
    this.checkpointTimer = this.deps.clock.setTimer(limits.checkpointIntervalMs, () => {
      this.checkpointSoon();
      this.scheduleCheckpoints();
    });
  }

  /** The state machines' clock: link-down limits are checked on ticks. */
  private scheduleTicks(): void {
    if (this.closed) return;
    this.tickTimer = this.deps.clock.setTimer(stateTickMs, () => {
      for (const vm of this.vms.values()) {
        vm.feed({ type: 'tick' });
        this.checkLagAlarms(vm);
      }
      this.scheduleTicks();
    });
  }

  /** RPO and journal thresholds (config protection.rpoAlarmSeconds / journalAlarmPercent): raise and clear. */
  private checkLagAlarms(vm: ProtectedVm, secondsBehind = vm.status().secondsBehind): void {
    let raised = this.lagAlarms.get(vm.vmUuid);
    if (raised === undefined) this.lagAlarms.set(vm.vmUuid, raised = new Set());
    const figures = { secondsBehind, journalUsedBytes: vm.journal.usedBytes, journalCapacityBytes: vm.journal.capacityBytes };
    for (const c of lagAlarmChanges(raised, figures, this.config.protection)) {
      if (c.raised) raised.add(c.kind);
      else raised.delete(c.kind);
      this.alarm(c.kind, c.raised, vm.vmUuid, c.detail);
    }
  }

  private scheduleSnapshots(): void {
    if (this.closed || this.opts.snapshotIntervalMs <= 0) return;
    this.snapshotTimer = this.deps.clock.setTimer(this.opts.snapshotIntervalMs, () => {
      for (const vm of this.vms.values()) if (vm.mode === 'snapshots') vm.takeSnapshot();
      this.scheduleSnapshots();
    });
  }

  /** Checkpoints each VM that is due: interval elapsed, journal filling up, or writers waiting for room. */
  checkpointSoon(): void {
    const now = this.deps.clock.nowMs();
    for (const vm of this.vms.values()) {
      const due = this.roomWaiters.length > 0 ||
        vm.journal.usedBytes >= vm.journal.capacityBytes * limits.checkpointJournalFraction ||
        now - vm.lastCheckpointMs >= limits.checkpointIntervalMs;
      if (due) this.checkpoint(vm);
    }
  }

  /**
   * Trims the journal to what DR acknowledged *and* the source volumes hold durably: the source writes
   * are not fsynced per write (the journal is their WAL), so they are fsynced here, before the journal
   * forgets the records that could have replayed them. Never past the journal's own durable seq: DR may
   * acknowledge records still in their local fdatasync (shipping overlaps it), and a write-back source
   * may hold them too.
   */
  private checkpoint(vm: ProtectedVm): void {
    const target = Math.min(vm.shipper.ackedSeq, vm.intake.sourceAppliedSeq, vm.journal.lastSeq);
    if (vm.checkpointing || vm.closed || target <= vm.checkpointSeq) return;
    vm.checkpointing = (async () => {
      await Promise.all(vm.volumes.map((v) => v.flush()));
      await vm.journal.trim(target);
      vm.checkpointSeq = target;
      vm.lastCheckpointMs = this.deps.clock.nowMs();
    })()
      .catch((err) => this.deps.logger.error({ err }, 'checkpoint failed'))
      .finally(() => {
        vm.checkpointing = null;
        for (const w of this.roomWaiters.splice(0)) w();
      });
  }

  private requestDigests(req: Omit<CheckRequest, 'checkId'>): Promise<Buffer> {
    const conn = this.conn;
    if (!conn) return Promise.reject(vrgError(ErrorCode.CONNECTION_CLOSED, 'link is down'));
    const checkId = this.nextCheckId++;
    return new Promise<Buffer>((resolve, reject) => {
      const timer = this.deps.clock.setTimer(digestRequestTimeoutMs, () => {
        this.digestWaiters.delete(checkId);
        reject(vrgError(ErrorCode.TIMEOUT, `no digests from DR within ${digestRequestTimeoutMs} ms`));
      });
      this.digestWaiters.set(checkId, { resolve, reject, timer });
      conn.sendControl(FrameType.CHECK_REQUEST, encodeCheckRequest({ ...req, checkId }));
    });
  }

  private onDigests(msg: CheckDigests): void {
    const w = this.digestWaiters.get(msg.checkId);
    if (!w) return;
    this.digestWaiters.delete(msg.checkId);
    w.timer.cancel();
    if (msg.error) w.reject(vrgError(ErrorCode.PEER_ERROR, `DR could not digest: ${msg.error}`));
    else w.resolve(Buffer.from(msg.digests));
  }

  private sendVmState(vm: ProtectedVm): void {
    const s = vm.state;
    this.conn?.sendControl(FrameType.VM_STATE, encodeVmState({
      vmUuid: vm.vmUuid, state: s.name, mode: s.mode, pausedManual: s.pausedManual, syncDegraded: s.syncDegraded, atMs: this.deps.clock.nowMs(),
    }));
  }

  private onConnected(conn: LinkConnection): void {
    this.setConnection(conn);
    this.attachFromResume(conn, conn.resume ?? { vms: [] }, true);
    // The site's target side (VMs this gateway is the target of) shares the connection (production-site.ts).
    this.emit('connected', conn);
  }

  /**
   * A connection this gateway did not dial: the peer's, shared with this site's target side (dr-site.ts), and
   * the peer's Resume for the VMs it is the target of. Called again on the same connection when the peer's
   * targets change (a VM demoted there): VMs not attached yet attach then.
   */
  useConnection(conn: LinkConnection, resume: Resume): void {
    if (this.closed) return;
    if (this.conn !== conn) {
      this.onDisconnected(null);
      this.setConnection(conn, false);
      conn.once('close', (err: Error | null) => {
        if (this.conn === conn) this.onDisconnected(err);
      });
    }
    this.attachFromResume(conn, resume, false);
  }

  private setConnection(conn: LinkConnection, ownConnection = true): void {
    this.conn = conn;
    this.everConnected = true;
    this.lastLinkError = null;
    if (this.linkAlarmRaised) {
      this.linkAlarmRaised = false;
      this.alarm('linkDown', false, null, `link to ${conn.peer.gatewayId} is up`);
    }
    conn.on('control', (type: number, msg: unknown) => {
      if (type === FrameType.CHECK_DIGESTS) return this.onDigests(msg as CheckDigests);
      if (type === FrameType.REKEY_ACK) return this.rekeys.onAck(msg as RekeyAck);
      if (type === FrameType.FAILOVER_REQUEST) return void this.onFailoverRequest(conn, msg as FailoverRequest);
      // A Resume after the handshake: the peer's VMs changed role (dr-site.ts, production-site.ts). On a shared
      // connection the site forwards it (useConnection).
      if (type === FrameType.RESUME && ownConnection) return this.attachFromResume(conn, msg as Resume, false);
      if (type !== FrameType.ACK) return;
      const ack = msg as Ack;
      const vm = this.vms.get(ack.vmUuid);
      if (!vm) return; // a VM removed meanwhile
      vm.shipper.onAck(ack.durableSeq);
    });
  }

  /** Attaches each VM not attached yet at the peer's position; `missingIsFault`: a VM the peer lacks is a fault. */
  private attachFromResume(conn: LinkConnection, resume: Resume, missingIsFault: boolean): void {
    this.latestResume = { conn, resume };
    for (const vm of this.vms.values()) {
      if (vm.shipper.connected) continue;
      const at = resume.vms.find((r) => r.vmUuid === vm.vmUuid);
      if (!at) {
        if (!missingIsFault) continue;
        vm.shipper.fault = `DR gateway ${conn.peer.gatewayId} does not protect VM ${vm.vmUuid}`;
        this.deps.logger.error({ vmUuid: vm.vmUuid }, vm.shipper.fault);
        continue;
      }
      this.attachVm(vm, conn, at);
    }
  }

  private attachVm(vm: ProtectedVm, conn: LinkConnection, at: ResumeVm): void {
    const appliedSeq = at.appliedSeq;
    const peerGeneration = wireGeneration(at.generation);
    const own = vm.shipper.generation;
    // The peer still a source of an older generation: it becomes the target once it sees this side's Resume,
    // unless it took writes meanwhile too (split brain: it says so, and both sides wait for an operator).
    if (at.role === 'source' && peerGeneration < own) {
      this.peerSourceSeqs.set(vm.vmUuid, at.appliedSeq);
      if (at.splitBrain === true) {
        vm.shipper.fault = `split brain with ${conn.peer.gatewayId}: it took writes for VM ${vm.vmUuid} as source too; pick the survivor`;
        this.raiseSplitBrain(vm.vmUuid, conn.peer.gatewayId);
      }
      return;
    }
    // The peer gave up its writes in a split brain (DrSite.discardDivergence): it is the target at a newer
    // generation; this side, the survivor, takes that generation and a check overwrites what differs there.
    if (at.role !== 'source' && peerGeneration > own && this.splitBrain.has(vm.vmUuid)) {
      this.adoptGeneration(vm, peerGeneration, conn, at);
      return;
    }
    if (at.role === 'source' || peerGeneration > own) {
      // Failed over: the peer is the newer side. Shipping would overwrite the promoted image.
      vm.shipper.fault = `VM ${vm.vmUuid} was promoted on ${conn.peer.gatewayId} (generation ${peerGeneration}, this side ${own}): ` +
        'this side is stale and no longer ships it';
      const diverged = this.diverged.has(vm.vmUuid);
      if (diverged) vm.shipper.fault += '; split brain: this side took writes while disconnected, so it is not made the target until an operator picks the survivor';
      this.deps.logger.error({ vmUuid: vm.vmUuid, peerGeneration, generation: own, splitBrain: diverged }, vm.shipper.fault);
      if (diverged) this.raiseSplitBrain(vm.vmUuid, conn.peer.gatewayId);
      // Failback: the site makes this side the VM's target (no listener: the fault stays).
      else this.emit('demote', { vmUuid: vm.vmUuid, generation: peerGeneration, conn });
      return;
    }
    if (peerGeneration !== own) {
      vm.shipper.fault = `VM ${vm.vmUuid}: generation ${own} here, ${peerGeneration} on ${conn.peer.gatewayId}`;
      this.deps.logger.error({ vmUuid: vm.vmUuid, peerGeneration, generation: own }, vm.shipper.fault);
      return;
    }
    // Cluster mode: DR holds another ownership's stream of the VM (it reopens the VM for this one's token and
    // says so in a Resume frame): wait for it.
    if (vm.shipper.fencingToken > 0 && (at.fencingToken ?? 0) !== vm.shipper.fencingToken) {
      this.deps.logger.debug({ vmUuid: vm.vmUuid, drToken: at.fencingToken ?? 0, token: vm.shipper.fencingToken }, 'DR holds another ownership\'s stream');
      return;
    }
    // Cluster mode: DR's position is not in this journal's stream (its state for the VM went): the cluster
    // member starts the VM afresh under a new token, with a check.
    // Once per VM instance: each reconnect would say it again, and the restart replaces the instance.
    if (vm.shipper.fencingToken > 0 && (appliedSeq > vm.journal.writtenSeq || appliedSeq < vm.journal.firstSeq - 1) && !this.streamLost.has(vm)) {
      this.streamLost.add(vm);
      this.emit('streamLost', vm.vmUuid, appliedSeq);
    }
    vm.shipper.attach(conn, appliedSeq);
    if (vm.shipper.fault === null) vm.attached(appliedSeq);
    if (vm.shipper.fault === null && this.splitBrain.delete(vm.vmUuid)) {
      this.alarm('splitBrain', false, vm.vmUuid, `resolved: ${conn.peer.gatewayId} is the target again`);
    }
    // Attached at the same generation: what was written while disconnected ships as usual.
    if (vm.shipper.fault === null) this.clearDiverged(vm.vmUuid);
    this.sendVmState(vm);
    if (vm.shipper.fault === null) {
      vm.feed({ type: 'linkUp' });
      vm.kick();
    }
  }

  private onDisconnected(err: Error | null): void {
    if (err) this.deps.logger.warn({ err: { code: (err as { code?: string }).code, message: err.message } }, 'link down');
    const wasUp = this.conn !== null;
    this.conn = null;
    if (err) {
      this.lastLinkError = `${(err as { code?: string }).code ?? 'ERROR'}: ${err.message}`;
      const e = err as { code?: string; details?: { peerCode?: unknown } };
      this.lastLinkErrorCode = typeof e.details?.peerCode === 'string' ? e.details.peerCode : e.code ?? null;
    }
    for (const [id, w] of this.digestWaiters) {
      w.timer.cancel();
      w.reject(vrgError(ErrorCode.CONNECTION_CLOSED, 'link went down during a consistency check'));
      this.digestWaiters.delete(id);
    }
    for (const vm of this.vms.values()) {
      vm.shipper.detach();
      vm.feed({ type: 'linkDown' });
    }
    if (wasUp && err && !this.closed && !this.linkAlarmRaised) {
      this.linkAlarmRaised = true;
      this.alarm('linkDown', true, null, `link down: ${err.message}`);
    }
  }
}
