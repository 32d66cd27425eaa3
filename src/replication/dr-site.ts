import { join } from 'node:path';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { LinkConnection } from '../link/connection.js';
import type { NbdExport } from '../nbd/nbd-server.js';
import type { Resume } from '../protocol/messages.js';
import { limits } from '../core/limits.js';
import { requestMove } from './planned-failover.js';

import type { GatewayConfig, VmConfig } from './config.js';
import type { GatewayDeps } from './gateway-deps.js';
import { nodeFiles } from '../core/files.js';
import { openLocked, type DataDirLock } from '../core/data-dir-lock.js';
import { productionExports, replicaExports, testCloneExports } from './nbd-exports.js';
import { ProductionGateway, type DemoteRequest, type ProductionStatus } from './source/production-gateway.js';
import { DrGateway, type DrStatus } from './target/dr-gateway.js';
import type { VmRoleState } from './vm-role.js';

// A DR gateway and the VMs it was failed over to. A target VM lives in the DR gateway (target/); once
// promoted it becomes a source VM of this site: its (former) target volumes are the VM's disks, served over
// NBD for writing by a production gateway of this process (source/) that has no peer yet: its writes are
// tracked in the VM's CBT bitmap from the promotion on, so a later failback ships only what changed.
//
// The promoted VMs' source state lives under <dataDir>/source (journal, CBT bitmaps), apart from the DR state.

/** unplanned: the source site is gone. planned: a move with the source's help, nothing resynced. */
export type FailoverKind = 'unplanned' | 'planned';

export interface FailoverResult {
  vmUuid: string;
  kind: FailoverKind;
  generation: number;
  /** The last seq of the old source's history the promoted image holds. */
  fromSeq: number;
  /** The volumes now writable over NBD (export names). */
  exports: string[];
}

/** A test failover started (DrGateway.startTestFailover): the clone's writable NBD exports, `<volUuid>-test`. */
export interface TestFailoverResult {
  vmUuid: string;
  kind: 'test';
  exports: string[];
}

export interface DrSiteStatus extends DrStatus {
  /** The VMs promoted here, as their source (null: none). */
  promoted: ProductionStatus | null;
}

export class DrSite {
  private source: ProductionGateway | null = null;
  private readonly failing = new Set<string>();
  private readonly demoting = new Map<string, Promise<void>>();

  private constructor(readonly config: GatewayConfig, readonly dr: DrGateway, private readonly deps: GatewayDeps,
    private readonly lock: DataDirLock) {
    // The peer's reverse Resume (production-site.ts): the VMs it is now the target of, for the promoted VMs here.
    dr.on('peerResume', (conn: LinkConnection, resume: Resume) => this.source?.useConnection(conn, resume));
  }

  /** DATA_DIR_LOCKED (nothing touched) when another live gateway holds config.dataDir. */
  static open(config: GatewayConfig, deps: GatewayDeps): Promise<DrSite> {
    // Once for the whole site: the promoted VMs' <dataDir>/source is inside the locked directory.
    return openLocked(config.dataDir, deps.files, async (lock) => {
      const site = new DrSite(config, await DrGateway.open(config, deps), deps, lock);
      try {
        for (const p of site.dr.promotedVms()) await site.serveAsSource(p.vmc, p.role, false);
      } catch (err) {
        await site.closeGateways();
        throw err;
      }
      return site;
    });
  }

  /** The production gateway of the promoted VMs (null until a VM is promoted). */
  get promotedGateway(): ProductionGateway | null {
    return this.source;
  }

  /**
   * Unplanned failover: the source site is gone. The VM is promoted at its last committed crash-consistent
   * image and its volumes are served for writing. Errors (nothing changed): VM_NOT_FOUND, VM_ROLE_CONFLICT
   * (already a source here), FAILOVER_IN_PROGRESS, FAILOVER_REFUSED (the targets cannot take the image).
   */
  async failover(vmUuid: string, kind: FailoverKind): Promise<FailoverResult> {
    if (kind !== 'unplanned' && kind !== 'planned') throw vrgError(ErrorCode.INVALID_ARGUMENT, `failover type ${String(kind)} is not supported`);
    if (this.failing.has(vmUuid)) throw vrgError(ErrorCode.FAILOVER_IN_PROGRESS, `a failover of VM ${vmUuid} is running`, { vmUuid });
    this.failing.add(vmUuid);
    try {
      if (kind === 'planned') await this.moveHere(vmUuid);
      const { vmc, role } = await this.dr.promote(vmUuid, `${kind} failover`);
      await this.serveAsSource(vmc, role, kind === 'unplanned');
      return { vmUuid, kind, generation: role.generation, fromSeq: role.fromSeq ?? 0, exports: vmc.volumes.map((v) => v.volUuid) };
    } finally {
      this.failing.delete(vmUuid);
    }
  }

  /**
   * Planned failover: the source stops the VM's writes and drains them here (planned-failover.ts); the promotion
   * that follows then holds every write the VM took, and the old source, seeing the newer generation, becomes the
   * target with nothing to resync. Refused (nothing changed) when the source is not connected: use unplanned.
   */
  private async moveHere(vmUuid: string): Promise<void> {
    const r = this.dr.vmRole(vmUuid);
    if (r === null) throw vrgError(ErrorCode.VM_NOT_FOUND, `no protected VM ${vmUuid}`, { vmUuid });
    if (r.role !== 'target') throw vrgError(ErrorCode.VM_ROLE_CONFLICT, `VM ${vmUuid} is already a source on this gateway`, { vmUuid });
    const conn = this.dr.peerConnection();
    if (conn === null) throw vrgError(ErrorCode.FAILOVER_REFUSED, `the source of VM ${vmUuid} is not connected: a planned failover needs it`, { vmUuid });
    const lastSeq = await requestMove(conn, vmUuid, this.deps.clock, limits.plannedFailoverDrainMs + limits.plannedFailoverPromoteMs / 2);
    const held = this.dr.status().vms.find((v) => v.vmUuid === vmUuid)?.durableSeq ?? 0;
    if (held < lastSeq) throw vrgError(ErrorCode.FAILOVER_REFUSED, `VM ${vmUuid}: the source drained to seq ${lastSeq}, this side holds ${held}`, { vmUuid });
  }

  /**
   * Split brain, resolved on this (promoted) side: its writes since the promotion lose. The VM is the target
   * again, at a generation above both sides', continuing after the peer's last reported seq; the peer adopts the
   * generation and a consistency check overwrites here whatever differs (the union of both sides' changes).
   */
  async discardDivergence(vmUuid: string): Promise<void> {
    const gw = this.source;
    const r = gw?.vmRole(vmUuid) ?? null;
    if (gw === null || r === null) throw vrgError(ErrorCode.VM_NOT_FOUND, `VM ${vmUuid} is not a source on this gateway`, { vmUuid });
    if (!r.splitBrain) throw vrgError(ErrorCode.VM_ROLE_CONFLICT, `VM ${vmUuid} is not in split brain here`, { vmUuid });
    const startAt = gw.peerSourceSeq(vmUuid) ?? 0;
    await gw.removeVm(vmUuid);
    await this.dr.demote(vmUuid, r.generation + 1, 'split brain: this side gave up its writes', startAt);
  }

  /** The VM was promoted on the peer at a newer generation (moved home, or failed back): this side is its target again. */
  private demote(req: DemoteRequest): Promise<void> {
    const running = this.demoting.get(req.vmUuid);
    if (running) return running;
    const p = (async () => {
      await this.source!.removeVm(req.vmUuid);
      await this.dr.demote(req.vmUuid, req.generation, `promoted on ${req.conn.peer.gatewayId}`);
    })()
      .catch((err: Error) => this.deps.logger.error({ err, vmUuid: req.vmUuid }, 'could not make this gateway the VM\'s target again'))
      .finally(() => this.demoting.delete(req.vmUuid));
    this.demoting.set(req.vmUuid, p);
    return p;
  }

  /**
   * Opens a promoted VM as a source without a peer. Its state directory is made first, so the VM is not taken
   * for a new one (which would mark every block dirty: a full copy at failback). The VM enters CBT at once: every
   * write from the promotion on is tracked in the bitmap, none waits in a journal for a peer.
   */
  private async serveAsSource(vmc: VmConfig, role: VmRoleState, justPromoted: boolean): Promise<void> {
    const dataDir = join(this.config.dataDir, 'source');
    await (this.deps.files ?? nodeFiles).mkdir(join(dataDir, 'cbt', vmc.vmUuid));
    if (this.source === null) {
      const cfg: GatewayConfig = {
        ...this.config, role: 'production', dataDir, vms: [], nbd: null, api: null,
        link: { ...this.config.link, port: 0 },
      };
      this.source = await ProductionGateway.open(cfg, this.deps);
      this.source.on('demote', (req: DemoteRequest) => void this.demote(req));
      // One alarm stream per gateway: the promoted VMs' alarms (split brain, CBT) go out with the DR gateway's.
      this.source.on('alarm', (ev: unknown) => this.dr.emit('alarm', ev));
    }
    await this.source.addVm({ ...vmc, mode: 'async' }, role.generation);
    // A planned failover left the images equal: nothing to track for a resync.
    if (!role.reason.startsWith('planned')) this.source.trackInBitmap(vmc.vmUuid, justPromoted ? 'promoted' : 'promoted-at-start');
  }

  /** Binds a VM (management API): a target, or one promoted here before, served as its source. */
  async addVm(vmc: VmConfig): Promise<void> {
    await this.dr.addVm(vmc);
    const p = this.dr.promotedVms().find((x) => x.vmc.vmUuid === vmc.vmUuid);
    if (p) await this.serveAsSource(p.vmc, p.role, false);
  }

  /** A VM's role and generation here, with its protection status (as a target, or as the promoted source). */
  vmRole(vmUuid: string): { role: 'source' | 'target'; generation: number; promoting: boolean; splitBrain: boolean; status: number } | null {
    const r = this.dr.vmRole(vmUuid);
    if (r === null) return null;
    const st = r.role === 'target' ? this.dr.vmStatus(vmUuid) : this.source?.vmStatus(vmUuid) ?? null;
    const splitBrain = r.role === 'source' && this.source?.vmRole(vmUuid)?.splitBrain === true;
    return { ...r, splitBrain, status: st?.status ?? 1 };
  }

  /**
   * Test failover: a writable clone of the VM's current consistent image, exported as `<volUuid>-test`, while it
   * stays a target (replication goes on). Errors as DrGateway.startTestFailover's, nothing changed.
   */
  async testFailover(vmUuid: string): Promise<TestFailoverResult> {
    const { exports } = await this.dr.startTestFailover(vmUuid);
    return { vmUuid, kind: 'test', exports };
  }

  /** Ends a test failover: the clone and its exports are discarded (TEST_FAILOVER_NOT_ACTIVE when none runs). */
  async endTestFailover(vmUuid: string): Promise<void> {
    await this.dr.endTestFailover(vmUuid);
  }

  /** NBD: read-only replicas of the target VMs, their test failovers' clones, writable disks of the promoted ones. */
  exports(): NbdExport[] {
    return [...replicaExports(this.dr), ...testCloneExports(this.dr), ...(this.source ? productionExports(this.source) : [])];
  }

  status(): DrSiteStatus {
    return { ...this.dr.status(), promoted: this.source?.status() ?? null };
  }

  async close(): Promise<void> {
    try {
      await this.closeGateways();
    } finally {
      await this.lock.release();
    }
  }

  private async closeGateways(): Promise<void> {
    await this.source?.close();
    await this.dr.close();
  }
}
