import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { BufferRing, type BufferRingStats } from '../../core/buffer-ring.js';
import { nodeFiles, type Files } from '../../core/files.js';
import { ErrorCode, isVrgError, vrgError } from '../../core/errors.js';
import { sleep } from '../../core/clock.js';
import type { LatencySummary } from '../../core/latency-histogram.js';
import { limits } from '../../core/limits.js';
import type { LinkConnection } from '../../link/connection.js';
import { LinkServer } from '../../link/link-server.js';
import { LinkSecretStore } from '../../link/link-secrets.js';
import type { PeerSecretLookup } from '../../link/handshake.js';
import { FrameType, type RawFrame } from '../../protocol/frame.js';
import { declaredPlainBytes } from '../../pipeline/codec.js';
import { encodeAck, encodeCheckDigests, encodeResume, type CheckRequest, type Rekey, type Resume, type VmState, type WriteBatch } from '../../protocol/messages.js';
import { digestVolume } from '../../volume/region-digests.js';
import { openVolume } from '../../volume/open-volume.js';
import type { Volume } from '../../volume/volume.js';
import type { GatewayConfig, VmConfig } from '../config.js';
import type { AlarmEvent, VmReplicationStatus } from '../control.js';
import { stateNumber, type Mode, type StateName } from '../protection-state.js';
import { answerRekey, promoteIfNext } from '../link-rekey.js';
import { DrVm } from './dr-vm.js';
import type { JournalCounters } from '../../journal/journal.js';
import { TestClone, testExportName } from './test-clone.js';
import { loadVmRole, saveVmRole, type VmRoleState } from '../vm-role.js';
import type { GatewayDeps } from '../gateway-deps.js';

// The DR gateway: authenticates and opens write batches in the codec pool and hands each VM's records, in
// production order, to its DrVm (dr-vm.ts), which logs them durably (one group-committed fdatasync), after
// which they are acknowledged, and applies them to the target volumes in the background.

interface Opened {
  batch: WriteBatch;
  data: Buffer;
  /** The ring block `data` was opened into (freed once logged), or null. */
  into: Buffer | null;
  receivedNs: bigint;
}

export interface DrVmStatus {
  vmUuid: string;
  /** Applied to the target volumes (in their page cache). */
  appliedSeq: number;
  /** Durable in the DR log: what production was acknowledged. */
  durableSeq: number;
  /** Durable on the targets, the log trimmed to it (the last checkpoint). */
  checkpointSeq: number;
  loggedSeq: number;
  logUsedBytes: number;
  logCapacityBytes: number;
  bytesApplied: number;
  recordsApplied: number;
  duplicatesSkipped: number;
  stagedBytes: number;
  state: string | null;
  /** A batch's frame arriving → its records durable in the DR log (then acknowledged). */
  durableLatency: LatencySummary;
}

export interface DrStatus {
  role: 'dr';
  connected: boolean;
  linkPort: number;
  /** Cluster mode: batches refused for a stale fencing token. */
  fenceRefusals: number;
  vms: DrVmStatus[];
}

/** The DR side's pipeline as it is now, for a stall report. */
export interface DrDiagnostics {
  role: 'dr';
  link: { connected: boolean; closed: boolean | null };
  /** The ring of batches and frames: how full, and how often a batch or frame found no room. */
  linkRing: BufferRingStats;
  /** Write batches received and not yet logged (opening in the pool, or waiting for the receive loop). */
  batchesQueued: number;
  receiving: boolean;
  vms: Array<{
    vmUuid: string; appliedSeq: number; durableSeq: number; checkpointSeq: number; loggedSeq: number; logUsedBytes: number;
    logFilesBytes: number; logCounters: JournalCounters;
    stageActive: boolean; stagedBytes: number; targetError: string | null;
  }>;
}

/**
 * Cluster mode (src/cluster): whose batches a VM takes. Each batch carries its owner's fencing token; the guard
 * refuses (FENCING_TOKEN_STALE) a token older than the newest seen for the VM, so an owner that lost its VM
 * (paused, partitioned) never writes after its successor started.
 */
export interface FenceGuard {
  /** Returns (or resolves) if a batch of `token` may be logged; throws (or rejects) FENCING_TOKEN_STALE if not. */
  admit(vmUuid: string, token: number): void | Promise<void>;
  /** The token the VM is open for here (0: none), told in the Resume so an owner attaches only to its own stream. */
  tokenOf(vmUuid: string): number;
}

export interface DrGatewayOptions {
  /** false: no listener (a production site's target side, on the connection its production gateway dials). */
  listen?: boolean;
  /** Cluster mode: checks each batch's fencing token before it is logged (absent: a single pair, no tokens). */
  fence?: FenceGuard;
  /** Where the role files are (default config.dataDir). */
  roleDataDir?: string;
}

/** Events: 'alarm' (AlarmEvent: targetError raised/cleared), 'peerResume' (conn, Resume: the peer's targets). */
export class DrGateway extends EventEmitter {
  private conn: LinkConnection | null = null;
  private queue: Array<Promise<Opened>> = [];
  /** Received frames and their opened data (shared with the codec workers). */
  private readonly linkRing = new BufferRing({ capacityBytes: limits.linkRingBytesDr, shared: true });
  private receiving = false;
  private idleWaiters: Array<() => void> = [];
  /** VMs with an acknowledgement to send (coalesced: one ACK per VM per turn). */
  private readonly acksDue = new Set<DrVm>();

  private readonly vms = new Map<string, DrVm>();
  /** VMs this gateway promoted (now their source, served by the site: dr-site.ts), by vmUuid. */
  private readonly promoted = new Map<string, { vmc: VmConfig; role: VmRoleState }>();
  /** Running test failovers by vmUuid (test-clone.ts); null while one starts or ends. Dropping a starting one cancels it. */
  private readonly testClones = new Map<string, TestClone | null>();
  private readonly server: LinkServer;
  private port = 0;

  /** Where the VMs' role files are (vm-role.ts): the site's data directory. */
  private readonly roleDir: string;
  private readonly files: Files;
  private readonly listening: boolean;
  /** Rotated link secrets (link-secrets.ts); null until open() read them. */
  private secrets: LinkSecretStore | null = null;
  private secretOps: Promise<void> = Promise.resolve();
  private readonly fence: FenceGuard | null;
  /** Batches the fence refused (each closed the link). */
  private fenceRefusals = 0;

  private constructor(readonly config: GatewayConfig, private readonly deps: GatewayDeps, opts: DrGatewayOptions) {
    super();
    this.roleDir = opts.roleDataDir ?? config.dataDir;
    this.files = deps.files ?? nodeFiles;
    this.listening = opts.listen !== false;
    this.fence = opts.fence ?? null;
    const resume = (): Resume => this.resumeEntries();
    this.server = new LinkServer({
      transport: deps.transport, gatewayId: config.gatewayId, role: 'dr', secret: config.link.secret,
      clock: deps.clock, random: deps.random, logger: deps.logger, resume,
      candidates: (initial) => this.secrets?.candidates(initial) ?? [initial],
    });
    this.server.on('connection', (conn: LinkConnection) => this.attach(conn));
  }

  /** Where each VM's stream resumes, with its generation and role here (the handshake's Resume, or a reverse one). */
  resumeEntries(): Resume {
    return {
      // The log's durable position: production trims its journal to what we acknowledge.
      // generation and role: production learns of a promotion here and stops shipping the VM.
      vms: [
        ...[...this.vms.values()].map((vm) => ({
          vmUuid: vm.config.vmUuid, appliedSeq: vm.durableSeq, generation: vm.generation + (vm.promoting ? 1 : 0),
          role: vm.promoting ? 'source' : 'target',
          ...(this.fence ? { fencingToken: this.fence.tokenOf(vm.config.vmUuid) } : {}),
        })),
        ...[...this.promoted.values()].map(({ role }) => ({
          vmUuid: role.vmUuid, appliedSeq: role.fromSeq ?? 0, generation: role.generation, role: 'source',
        })),
      ],
    };
  }

  /**
   * A connection this gateway did not accept: a production site's own link to its peer, carrying the VMs this
   * site is the target of (failback). The receive side attaches as for an accepted one.
   */
  attachConnection(conn: LinkConnection): void {
    if (this.conn !== conn) this.attach(conn);
  }

  /** Opens every VM (each applies what its log holds past its checkpoint), then listens for production. */
  static async open(config: GatewayConfig, deps: GatewayDeps, opts: DrGatewayOptions = {}): Promise<DrGateway> {
    const gw = new DrGateway(config, deps, opts);
    await gw.files.mkdir(config.dataDir);
    gw.secrets = await LinkSecretStore.open(config.dataDir, gw.files);
    for (const vmc of config.vms) {
      const role = await loadVmRole(gw.roleDir, vmc.vmUuid, 'target', gw.files);
      if (role.role === 'source') {
        gw.promoted.set(vmc.vmUuid, { vmc, role });
        // A crash right after the promotion's commit point left the old log behind.
        await gw.files.rm(join(config.dataDir, 'dr', vmc.vmUuid));
        continue;
      }
      const vm = await gw.openVm(vmc, config.vms.length);
      vm.generation = role.generation;
      gw.vms.set(vmc.vmUuid, vm);
    }
    if (opts.listen !== false) gw.port = await gw.server.listen(config.link.host, config.link.port);
    for (const vm of gw.vms.values()) deps.logger.info({ vmUuid: vm.config.vmUuid, durableSeq: vm.durableSeq }, 'dr vm opened');
    return gw;
  }

  get linkPort(): number {
    return this.port;
  }

  // ---- management (control.ts) ----

  /** Binds a VM's target volumes; production's next handshake learns where its stream resumes. */
  async addVm(vmc: VmConfig, generation?: number, startAtSeq?: number): Promise<void> {
    if (this.vms.has(vmc.vmUuid) || this.promoted.has(vmc.vmUuid)) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `VM ${vmc.vmUuid} is already protected`, { vmUuid: vmc.vmUuid });
    }
    const role = await loadVmRole(this.roleDir, vmc.vmUuid, 'target', this.files);
    if (generation !== undefined) role.generation = generation;
    if (role.role === 'source') {
      // Promoted here before (the management API re-adds its VMs at start): the site serves it (dr-site.ts).
      // A peer that connected before the VM was known here learns the promotion at its next handshake.
      this.promoted.set(vmc.vmUuid, { vmc, role });
      if (this.listening) this.conn?.close();
      return;
    }
    const used = new Set([...this.vms.values()].flatMap((vm) => [...vm.volumes.keys()]));
    for (const v of vmc.volumes) {
      if (used.has(v.volUuid)) throw vrgError(ErrorCode.CONFIG_INVALID, `volUuid ${v.volUuid} is used twice`, { volUuid: v.volUuid });
    }
    const vm = await this.openVm(vmc, this.vms.size + 1, startAtSeq);
    vm.generation = role.generation;
    this.vms.set(vmc.vmUuid, vm);
    // A peer dialing in learns the new VM's position at its next handshake; a shared connection (no listener:
    // production-site.ts) gets a Resume frame from the site instead. Cluster mode (a fence): a Resume frame
    // on the live link, whose other VMs keep shipping.
    if (this.fence) this.conn?.sendControl(FrameType.RESUME, encodeResume(this.resumeEntries()));
    else if (this.listening) this.conn?.close();
  }

  /**
   * Stops protecting a VM and removes its DR state. `settleMs` > 0 (a cluster hand-over): its log is first applied
   * to the targets and checkpointed, or VRG_TIMEOUT with the VM closed and its state kept (a later open replays
   * it), so the next holder of the targets finds every acknowledged write on them.
   */
  async removeVm(vmUuid: string, settleMs = 0): Promise<void> {
    const vm = this.vms.get(vmUuid);
    if (!vm) throw vrgError(ErrorCode.VM_NOT_FOUND, `no protected VM ${vmUuid}`, { vmUuid });
    this.vms.delete(vmUuid);
    this.conn?.close();
    await this.dropTestClone(vm); // the VM's protection goes: so does a test failover of it
    await this.idle();
    await vm.close(settleMs);
    if (settleMs > 0 && vm.checkpointSeq < vm.durableSeq) {
      throw vrgError(ErrorCode.TIMEOUT, `VM ${vmUuid}: its DR log was not applied to the targets within ${settleMs} ms`,
        { vmUuid, checkpointSeq: vm.checkpointSeq, durableSeq: vm.durableSeq });
    }
    await this.files.rm(vm.dir);
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

  /** What production last reported of the VM (state, mode), with this side's figures. */
  vmStatus(vmUuid: string): VmReplicationStatus | null {
    const vm = this.vms.get(vmUuid);
    if (!vm) return null;
    const r = vm.reported;
    const state = (r?.state ?? 'queue') as StateName;
    return {
      vmUuid, state, status: stateNumber(state), mode: (r?.mode ?? 'async') as Mode,
      pausedManual: r?.pausedManual ?? false, syncDegraded: r?.syncDegraded ?? false,
      transitions: { 'queue->cbt': 0, 'queue->check': 0, 'cbt->queue': 0, 'cbt->check': 0, 'check->queue': 0, 'check->cbt': 0 } as VmReplicationStatus['transitions'],
      // Behind on this side: acknowledged (in the log) and not yet on the targets.
      writesBehind: vm.durableSeq - vm.appliedSeq, bytesBehind: vm.stage.stagedBytes,
      secondsBehind: 0, ackedSeq: vm.durableSeq, resync: null, check: null,
    };
  }

  /**
   * Reads a DR replica as of a chunk boundary: production's image at some point of its acknowledged write history
   * (for test failover and verification), no older than what was acknowledged when the read was asked (it waits
   * for the targets, within limits.replicaCatchUpMs). While a resync is staged it is the image from before it.
   */
  async readReplica(volUuid: string, offset: number, length: number): Promise<Buffer> {
    for (const vm of this.vms.values()) {
      const volume = vm.volumes.get(volUuid);
      if (!volume) continue;
      await vm.whenApplied(vm.durableSeq, limits.replicaCatchUpMs);
      return vm.gate.read(() => volume.read(offset, length));
    }
    throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `no replica volume ${volUuid}`, { volUuid });
  }

  /** Resolves once every VM's targets hold what it acknowledged when asked (within timeoutMs; at once while a target fails). */
  async caughtUp(timeoutMs: number = limits.replicaCatchUpMs): Promise<void> {
    await Promise.all([...this.vms.values()].map((vm) => vm.whenApplied(vm.durableSeq, timeoutMs)));
  }

  /** The peer connection now (a planned failover asks the VM's source over it), or null. */
  peerConnection(): LinkConnection | null {
    return this.conn;
  }

  /**
   * The VM promoted here is the target again (the peer promoted it at a newer generation: planned failover
   * home, or a failback): forgotten as promoted, its role file written, then opened as a target.
   */
  async demote(vmUuid: string, generation: number, reason: string, startAtSeq?: number): Promise<void> {
    const p = this.promoted.get(vmUuid);
    if (!p) throw vrgError(ErrorCode.VM_NOT_FOUND, `VM ${vmUuid} was not promoted here`, { vmUuid });
    await saveVmRole(this.roleDir, { vmUuid, role: 'target', generation, changedAtMs: this.deps.clock.nowMs(), reason }, this.files);
    this.promoted.delete(vmUuid);
    await this.addVm(p.vmc, generation, startAtSeq);
    this.deps.logger.warn({ vmUuid, generation, reason }, 'VM demoted: this gateway is its target again');
  }

  /** A VM promoted here is served by another gateway of this process from now on (production-site.ts). */
  forgetPromoted(vmUuid: string): void {
    this.promoted.delete(vmUuid);
  }

  /** VMs this gateway promoted: their config (the target volumes, now the source) and role. */
  promotedVms(): Array<{ vmc: VmConfig; role: VmRoleState }> {
    return [...this.promoted.values()];
  }

  /** The role and generation of a VM on this side (a target, or one promoted here), or null. */
  vmRole(vmUuid: string): { role: 'source' | 'target'; generation: number; promoting: boolean } | null {
    const vm = this.vms.get(vmUuid);
    if (vm) return { role: 'target', generation: vm.generation, promoting: vm.promoting };
    const p = this.promoted.get(vmUuid);
    return p ? { role: 'source', generation: p.role.generation, promoting: false } : null;
  }

  /**
   * Unplanned failover, the target's part: the VM takes no more batches (the link is dropped so production
   * learns it at its next handshake), everything durable in its log is applied and checkpointed, so the image is
   * the last committed crash-consistent one (a staged pass not committed is dropped whole: the targets never had
   * any of it), then the role file is written with the next generation: the commit point. The DR log goes.
   * The caller (dr-site.ts) then serves the volumes as the VM's source.
   */
  async promote(vmUuid: string, reason: string): Promise<{ vmc: VmConfig; role: VmRoleState }> {
    const vm = this.vms.get(vmUuid);
    if (!vm) {
      const p = this.promoted.get(vmUuid);
      if (p) throw vrgError(ErrorCode.VM_ROLE_CONFLICT, `VM ${vmUuid} is already a source on this gateway (generation ${p.role.generation})`, { vmUuid });
      throw vrgError(ErrorCode.VM_NOT_FOUND, `no protected VM ${vmUuid}`, { vmUuid });
    }
    if (vm.promoting) throw vrgError(ErrorCode.FAILOVER_IN_PROGRESS, `VM ${vmUuid} is being promoted already`, { vmUuid });
    // The test VM would lose its disks under it: the operator ends the test first (endTestFailover).
    if (this.testClones.has(vmUuid)) {
      throw vrgError(ErrorCode.TEST_FAILOVER_ACTIVE, `VM ${vmUuid} has a test failover running: end it before a failover`, { vmUuid });
    }
    vm.promoting = true;
    this.conn?.close(vrgError(ErrorCode.VM_ROLE_CONFLICT, `VM ${vmUuid} is being promoted on the DR gateway`));
    try {
      await this.idle();
      await vm.settle(limits.drCloseSettleMs);
      if (vm.checkpointSeq < vm.durableSeq) {
        throw vrgError(ErrorCode.FAILOVER_REFUSED, `VM ${vmUuid}: the targets hold seq ${vm.checkpointSeq} of ${vm.durableSeq} ` +
          `acknowledged${vm.targetError === null ? '' : ` (${vm.targetError})`}; promote once they are writable`, { vmUuid });
      }
    } catch (err) {
      vm.promoting = false;
      this.conn?.close(); // production re-attaches the VM at its next handshake
      throw err;
    }
    this.vms.delete(vmUuid);
    await vm.close(limits.drCloseSettleMs);
    const role: VmRoleState = {
      vmUuid, role: 'source', generation: vm.generation + 1, changedAtMs: this.deps.clock.nowMs(), reason, fromSeq: vm.checkpointSeq,
    };
    await saveVmRole(this.roleDir, role, this.files);
    await this.files.rm(vm.dir);
    this.promoted.set(vmUuid, { vmc: vm.config, role });
    this.deps.logger.warn({ vmUuid, generation: role.generation, fromSeq: role.fromSeq, reason }, 'VM promoted: this gateway is now its source');
    return { vmc: vm.config, role };
  }

  /** The replica volumes, for exporting them read-only. */
  replicaVolumes(): Array<{ vmUuid: string; volUuid: string; sizeBytes: number }> {
    return [...this.vms.values()].flatMap((vm) => [...vm.volumes.entries()].map(([volUuid, v]) => ({
      vmUuid: vm.config.vmUuid, volUuid, sizeBytes: v.sizeBytes,
    })));
  }

  /**
   * Test failover: a writable point-in-time clone of the VM's targets (test-clone.ts), exported as
   * `<volUuid>-test`, while replication into the targets goes on untouched. Its base is the targets' image
   * between two applied chunks, once they hold what was acknowledged when asked (within limits.replicaCatchUpMs),
   * so it is an image production had. The clone lives until endTestFailover, removeVm or close; a restart discards
   * it. Errors (nothing changed): VM_NOT_FOUND, VM_ROLE_CONFLICT (promoted here), FAILOVER_IN_PROGRESS (being
   * promoted), TEST_FAILOVER_ACTIVE, FAILOVER_REFUSED (a target fails: its image may be no consistent one).
   */
  async startTestFailover(vmUuid: string, opts: { bytesMax?: number } = {}): Promise<{ exports: string[] }> {
    const vm = this.targetVm(vmUuid);
    if (vm.promoting) throw vrgError(ErrorCode.FAILOVER_IN_PROGRESS, `VM ${vmUuid} is being promoted`, { vmUuid });
    if (this.testClones.has(vmUuid)) throw vrgError(ErrorCode.TEST_FAILOVER_ACTIVE, `a test failover of VM ${vmUuid} is running`, { vmUuid });
    const names = vm.config.volumes.map((v) => testExportName(v.volUuid));
    const taken = new Set([...this.replicaVolumes().map((r) => r.volUuid), ...this.promotedVms().flatMap((p) => p.vmc.volumes.map((v) => v.volUuid))]);
    const clash = names.find((n) => taken.has(n));
    if (clash !== undefined) throw vrgError(ErrorCode.CONFIG_INVALID, `a volume is named ${clash}: the test export cannot have that name`, { vmUuid });
    this.testClones.set(vmUuid, null);
    let clone: TestClone | null = null;
    try {
      await vm.whenApplied(vm.durableSeq, limits.replicaCatchUpMs);
      if (vm.targetError !== null) {
        throw vrgError(ErrorCode.FAILOVER_REFUSED, `VM ${vmUuid}: a target fails (${vm.targetError}); test once it is writable`, { vmUuid });
      }
      const c = clone = await TestClone.create({
        vmDir: vm.dir, vmUuid, gate: vm.gate, logger: this.deps.logger.child({ vmUuid }),
        volumes: vm.config.volumes.map((v) => ({ volUuid: v.volUuid, target: vm.volumes.get(v.volUuid)! })),
        ...(opts.bytesMax === undefined ? {} : { bytesMax: opts.bytesMax }),
      });
      // Armed with the gate's write side held: between two chunks, so the base is a whole one.
      await vm.gate.write(async () => {
        if (this.vms.get(vmUuid) !== vm || this.testClones.get(vmUuid) !== null) {
          throw vrgError(ErrorCode.VM_NOT_FOUND, `VM ${vmUuid} was removed while its test failover started`, { vmUuid });
        }
        vm.beforeTargetWrite = (i, offset, length) => c.beforeTargetWrite(i, offset, length);
      });
    } catch (err) {
      if (this.testClones.get(vmUuid) === null) this.testClones.delete(vmUuid);
      await clone?.discard();
      throw err;
    }
    this.testClones.set(vmUuid, clone);
    this.deps.logger.info({ vmUuid, appliedSeq: vm.appliedSeq, exports: names }, 'test failover started');
    return { exports: names };
  }

  /**
   * Ends a test failover: its exports go (clients still attached get errors), the clone files are removed.
   * Errors (nothing changed): VM_NOT_FOUND, VM_ROLE_CONFLICT, TEST_FAILOVER_NOT_ACTIVE, FAILOVER_IN_PROGRESS
   * (it is starting or ending).
   */
  async endTestFailover(vmUuid: string): Promise<void> {
    const vm = this.targetVm(vmUuid);
    const clone = this.testClones.get(vmUuid);
    if (clone === undefined) throw vrgError(ErrorCode.TEST_FAILOVER_NOT_ACTIVE, `no test failover of VM ${vmUuid} is running`, { vmUuid });
    if (clone === null) throw vrgError(ErrorCode.FAILOVER_IN_PROGRESS, `the test failover of VM ${vmUuid} is starting or ending`, { vmUuid });
    await this.dropTestClone(vm);
    this.deps.logger.info({ vmUuid }, 'test failover ended: clone discarded');
  }

  /** The running test failovers' volumes, for exporting them writable (nbd-exports.ts). */
  testCloneVolumes(): Array<{ vmUuid: string; volUuid: string; volumeIndex: number; sizeBytes: number; clone: TestClone }> {
    return [...this.testClones.entries()].flatMap(([vmUuid, clone]) => clone === null ? [] : clone.volumes().map((v, volumeIndex) => ({
      vmUuid, volUuid: v.volUuid, volumeIndex, sizeBytes: v.sizeBytes, clone,
    })));
  }

  /** A running test failover: its exports, what its clone holds, and why it is unusable (null: it is not). */
  testFailoverStatus(vmUuid: string): { exports: string[]; ownedBytes: number; bytesMax: number; broken: string | null } | null {
    const clone = this.testClones.get(vmUuid);
    if (!clone) return null;
    return {
      exports: clone.volumes().map((v) => testExportName(v.volUuid)), ownedBytes: clone.ownedBytes, bytesMax: clone.bytesMax,
      broken: clone.broken?.message ?? null,
    };
  }

  /** A VM that is a target here, or the error saying what it is. */
  private targetVm(vmUuid: string): DrVm {
    const vm = this.vms.get(vmUuid);
    if (vm) return vm;
    if (this.promoted.has(vmUuid)) throw vrgError(ErrorCode.VM_ROLE_CONFLICT, `VM ${vmUuid} is a source on this gateway (promoted)`, { vmUuid });
    throw vrgError(ErrorCode.VM_NOT_FOUND, `no protected VM ${vmUuid}`, { vmUuid });
  }

  /** Disarms and discards a VM's test clone, if any (a start under way is cancelled). */
  private async dropTestClone(vm: DrVm): Promise<void> {
    const vmUuid = vm.config.vmUuid;
    if (!this.testClones.has(vmUuid)) return;
    const clone = this.testClones.get(vmUuid) ?? null;
    if (clone === null) {
      this.testClones.delete(vmUuid);
      return;
    }
    this.testClones.set(vmUuid, null);
    vm.beforeTargetWrite = null;
    try {
      await clone.discard();
    } finally {
      this.testClones.delete(vmUuid);
    }
  }

  status(): DrStatus {
    return {
      role: 'dr',
      connected: this.conn !== null,
      linkPort: this.linkPort,
      fenceRefusals: this.fenceRefusals,
      vms: [...this.vms.values()].map((vm) => ({
        vmUuid: vm.config.vmUuid, appliedSeq: vm.appliedSeq, durableSeq: vm.durableSeq, checkpointSeq: vm.checkpointSeq,
        ...vm.status(), bytesApplied: vm.bytesApplied, recordsApplied: vm.recordsApplied, duplicatesSkipped: vm.duplicatesSkipped,
        stagedBytes: vm.stage.stagedBytes, state: vm.reported?.state ?? null, durableLatency: vm.durableLatency.summary(),
      })),
    };
  }

  /** The latency histograms in status start afresh (e.g. at the start of a bench job). */
  resetLatency(): void {
    for (const vm of this.vms.values()) vm.durableLatency.reset();
  }

  diagnostics(): DrDiagnostics {
    return {
      role: 'dr',
      link: { connected: this.conn !== null, closed: this.conn?.isClosed ?? null },
      batchesQueued: this.queue.length, receiving: this.receiving,
      linkRing: this.linkRing.stats(),
      vms: [...this.vms.values()].map((vm) => ({
        vmUuid: vm.config.vmUuid, appliedSeq: vm.appliedSeq, durableSeq: vm.durableSeq, checkpointSeq: vm.checkpointSeq,
        loggedSeq: vm.loggedSeq, logUsedBytes: vm.log.usedBytes, logFilesBytes: vm.log.filesBytes, logCounters: vm.log.stats,
        stageActive: vm.stage.active, stagedBytes: vm.stage.stagedBytes, targetError: vm.targetError,
      })),
    };
  }

  /** Stops taking batches, then lets each VM apply and checkpoint what its log holds (bounded) and closes it. */
  async close(): Promise<void> {
    await this.server.close();
    this.conn?.close();
    this.conn = null;
    await this.idle();
    for (const vm of this.vms.values()) await this.dropTestClone(vm);
    for (const vm of this.vms.values()) await vm.close(limits.drCloseSettleMs);
  }

  private idle(): Promise<void> {
    if (!this.receiving) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Link secret changes one after the other: a rotation asked on a new connection waits for its promotion. */
  private secretOp(op: () => Promise<void>): void {
    this.secretOps = this.secretOps.then(op).catch((err: Error) =>
      this.deps.logger.error({ err: err.message }, 'link secret rotation: storing the secret failed'));
  }

  private attach(conn: LinkConnection): void {
    this.conn = conn;
    this.dropQueue();
    const secrets = this.secrets;
    if (secrets) this.secretOp(() => promoteIfNext(conn, secrets, this.deps.logger));
    conn.useFrameMemory(this.linkRing);
    conn.on('writeBatch', (seq: number, raw: RawFrame) => {
      if (this.queue.length >= limits.framesInFlightMax * 2) {
        this.linkRing.release(raw.bytes);
        conn.close(vrgError(ErrorCode.FRAME_UNEXPECTED, 'peer exceeded the in-flight window'));
        return;
      }
      const opened = this.open(conn, seq, raw);
      opened.catch(() => undefined); // observed in order by receiveLoop
      this.queue.push(opened);
      this.kickReceive(conn);
    });
    conn.on('control', (type: number, msg: unknown) => {
      if (type === FrameType.VM_STATE) this.onVmState(msg as VmState);
      // A peer's reverse Resume: the VMs it is the target of, for this site's source side (dr-site.ts).
      else if (type === FrameType.RESUME) this.emit('peerResume', conn, msg as Resume);
      else if (type === FrameType.CHECK_REQUEST) void this.onCheckRequest(conn, msg as CheckRequest);
      else if (type === FrameType.REKEY && secrets) this.secretOp(() => answerRekey(conn, msg as Rekey, secrets, this.deps.logger, this.deps.random));
    });
    conn.on('close', () => {
      if (this.conn === conn) {
        this.conn = null;
        this.dropQueue();
      }
    });
  }

  /**
   * Opens a frame in the codec pool, its data into a ring block sized by what the (not yet authenticated) header
   * declares; the frame's own block is free once opened. A failed open frees the data block too.
   */
  private async open(conn: LinkConnection, seq: number, raw: RawFrame): Promise<Opened> {
    const receivedNs = this.deps.clock.monotonicNs();
    const plainBytes = declaredPlainBytes(raw.header);
    const into = plainBytes > 0 ? this.linkRing.tryAlloc(plainBytes) : null;
    try {
      const o = await this.deps.codec.openBatch({ keys: conn.recvKeys, expectedSeq: seq, frame: raw.bytes, ...(into ? { into } : {}) });
      return { ...o, into, receivedNs };
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

  /**
   * Digests a target range for production's consistency check, once the targets hold what was acknowledged
   * (within limits.replicaCatchUpMs; not under the gate: the check tolerates lag).
   */
  private async onCheckRequest(conn: LinkConnection, req: CheckRequest): Promise<void> {
    const reply = (digests: Buffer, error: string): void =>
      conn.sendControl(FrameType.CHECK_DIGESTS, encodeCheckDigests({ vmUuid: req.vmUuid, checkId: req.checkId, digests, error }));
    try {
      const vm = this.vms.get(req.vmUuid);
      const volume = vm?.volumes.get(req.volUuid);
      if (!vm || !volume) throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `no target volume ${req.volUuid} for VM ${req.vmUuid}`);
      await vm.whenApplied(vm.durableSeq, limits.replicaCatchUpMs);
      const d = await digestVolume(volume, { start: req.start, end: req.end, regionBytes: req.regionBytes });
      reply(d.digests, '');
    } catch (err) {
      reply(Buffer.alloc(0), `${(err as { code?: string }).code ?? 'ERROR'}: ${(err as Error).message}`);
    }
  }

  private kickReceive(conn: LinkConnection): void {
    if (this.receiving) return;
    this.receiving = true;
    void this.receiveLoop(conn).finally(() => {
      this.receiving = false;
      if (this.queue.length > 0 && this.conn) this.kickReceive(this.conn);
      else for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  /** Hands opened batches to their VMs in order; a batch that fails to open or validate closes the link. */
  private async receiveLoop(conn: LinkConnection): Promise<void> {
    while (this.conn === conn && this.queue.length > 0) {
      let opened: Opened;
      try {
        opened = await this.queue[0]!;
      } catch (err) {
        // Nothing of a frame that fails authentication or decoding is logged, nor anything after it.
        conn.close(err as Error);
        return;
      }
      if (this.conn !== conn) return;
      this.queue.shift();
      try {
        const vm = this.vms.get(opened.batch.vmUuid);
        if (!vm) throw vrgError(ErrorCode.VM_NOT_FOUND, `batch for unknown VM ${opened.batch.vmUuid}`);
        if (this.fence) await this.admit(opened.batch);
        await vm.accept(opened.batch, opened.data, opened.receivedNs);
      } catch (err) {
        if (isVrgError(err, ErrorCode.FENCING_TOKEN_STALE)) this.fenceRefusals++;
        this.deps.logger.error({ err }, 'batch refused');
        conn.close(err as Error);
        return;
      } finally {
        this.linkRing.release(opened.into);
      }
    }
  }

  /** Synchronous when the guard knows the token: no turn is lost on the common path. */
  private async admit(batch: WriteBatch): Promise<void> {
    const admitted = this.fence!.admit(batch.vmUuid, batch.fencingToken ?? 0);
    if (admitted) await admitted;
  }

  /** One ACK per VM per turn, however many log commits completed in it. */
  private ackSoon(vm: DrVm): void {
    if (this.acksDue.size === 0) queueMicrotask(() => this.sendAcks());
    this.acksDue.add(vm);
  }

  private sendAcks(): void {
    for (const vm of this.acksDue) {
      if (this.vms.get(vm.config.vmUuid) !== vm) continue;
      this.conn?.sendControl(FrameType.ACK, encodeAck({ vmUuid: vm.config.vmUuid, durableSeq: vm.durableSeq }));
    }
    this.acksDue.clear();
  }

  private onLogFailed(vm: DrVm, err: Error): void {
    this.deps.logger.error({ err, vmUuid: vm.config.vmUuid }, 'DR log write failed; dropping the link');
    this.conn?.close(err);
  }

  private onTargetError(vm: DrVm, err: Error | null): void {
    if ((err === null) === (vm.targetError === null)) return;
    vm.targetError = err === null ? null : err.message;
    const detail = err === null ? 'target volumes writable again' : err.message;
    const ev: AlarmEvent = { kind: 'targetError', raised: err !== null, vmUuid: vm.config.vmUuid, detail, atMs: this.deps.clock.nowMs() };
    this.emit('alarm', ev);
  }

  /** A VM's log is its share of journalCapacityBytes. */
  /**
   * A target volume. A write agent (nbd://) that is not reachable yet is retried for limits.targetOpenWaitMs: it
   * may be starting or restarting with this gateway (a host reboot); anything else fails at once.
   */
  private async openTarget(url: string, sizeBytes: number): Promise<Volume> {
    const deadline = this.deps.clock.nowMs() + limits.targetOpenWaitMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await (this.deps.openVolume ?? openVolume)(url, { sizeBytes, create: true });
      } catch (err) {
        const unreachable = isVrgError(err, ErrorCode.CONNECTION_CLOSED) || isVrgError(err, ErrorCode.TIMEOUT);
        if (!unreachable || this.deps.clock.nowMs() >= deadline) throw err;
        if (attempt === 1) this.deps.logger.warn({ url, err: (err as Error).message }, 'target write agent not reachable yet; retrying');
        await sleep(this.deps.clock, limits.targetOpenRetryMs);
      }
    }
  }

  private async openVm(vmc: VmConfig, vmCount: number, startAtSeq?: number): Promise<DrVm> {
    const volumes = new Map<string, Volume>();
    for (const v of vmc.volumes) volumes.set(v.volUuid, await this.openTarget(v.url, v.sizeBytes));
    const logBytes = Math.floor(this.config.journalCapacityBytes / Math.max(1, vmCount));
    const vm = await DrVm.open(this.config.dataDir, vmc, volumes, logBytes, {
      clock: this.deps.clock, logger: this.deps.logger.child({ vmUuid: vmc.vmUuid }), files: this.files,
      onDurable: (vm) => this.ackSoon(vm),
      onLogFailed: (vm, err) => this.onLogFailed(vm, err),
      onTargetError: (vm, err) => this.onTargetError(vm, err),
    }, startAtSeq);
    // A test clone does not survive a restart (which granules it owned was in memory): a leftover one goes.
    await TestClone.discardLeftover(vm.dir, this.files);
    return vm;
  }
}
