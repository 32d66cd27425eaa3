import { join } from 'node:path';
import { limits } from '../core/limits.js';
import { requestMove } from './planned-failover.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { LinkConnection } from '../link/connection.js';
import type { NbdExport } from '../nbd/nbd-server.js';
import { FrameType } from '../protocol/frame.js';
import { encodeResume } from '../protocol/messages.js';
import type { GatewayConfig, VmConfig } from './config.js';
import type { VmProtection } from './control.js';
import type { GatewayDeps } from './gateway-deps.js';
import { nodeFiles } from '../core/files.js';
import { openLocked, type DataDirLock } from '../core/data-dir-lock.js';
import { productionExports, replicaExports } from './nbd-exports.js';
import { ProductionGateway, type DemoteRequest, type ProductionGatewayOptions, type ProductionStatus } from './source/production-gateway.js';
import { DrGateway, type DrStatus } from './target/dr-gateway.js';
import { loadVmRole, saveVmRole } from './vm-role.js';

// A production gateway and the VMs it became the target of (failback). Its source VMs live in the production
// gateway (source/), which dials the peer; a VM whose peer was promoted (a newer generation in the handshake)
// and that took no writes here while disconnected is demoted: its journal and bitmaps go (their writes the peer
// never acknowledged are overwritten by the peer's resync and check), the role file says target, and the
// volumes become the VM's replica in a DR gateway of this process (target/) that has no listener: it receives
// on the same connection. After each connect this side tells the peer, in a Resume frame of its own, where
// each of its targets resumes; the peer's source side attaches them (dr-site.ts).
//
// Target state lives under <dataDir>/target; the role files under <dataDir>/roles.

export type { DemoteRequest } from './source/production-gateway.js';

export interface ProductionSiteStatus extends ProductionStatus {
  /** The VMs this gateway is the target of (after a failback), or null when none. */
  targets: DrStatus | null;
}

export class ProductionSite {
  private readonly demoting = new Map<string, Promise<void>>();
  private readonly moving = new Set<string>();
  /** VMs being demoted, by the generation they take. */
  private readonly demotingTo = new Map<string, number>();
  private conn: LinkConnection | null = null;

  private constructor(readonly config: GatewayConfig, readonly source: ProductionGateway, readonly target: DrGateway,
    private readonly deps: GatewayDeps, private readonly lock: DataDirLock) {
    source.on('connected', (conn: LinkConnection) => this.onConnected(conn));
    source.on('demote', (req: DemoteRequest) => void this.demote(req));
    // One alarm stream per gateway: the target VMs' alarms (targetError) go out with the production gateway's.
    target.on('alarm', (ev: unknown) => source.emit('alarm', ev));
  }

  /** DATA_DIR_LOCKED (nothing touched) when another live gateway holds config.dataDir. */
  static open(config: GatewayConfig, deps: GatewayDeps, options: ProductionGatewayOptions = {}): Promise<ProductionSite> {
    // Once for the whole site: its target side's <dataDir>/target is inside the locked directory.
    return openLocked(config.dataDir, deps.files, (lock) => ProductionSite.openHolding(config, deps, options, lock));
  }

  private static async openHolding(config: GatewayConfig, deps: GatewayDeps, options: ProductionGatewayOptions, lock: DataDirLock): Promise<ProductionSite> {
    const files = deps.files ?? nodeFiles;
    const roles = await Promise.all(config.vms.map((v) => loadVmRole(config.dataDir, v.vmUuid, 'source', files)));
    const targetCfg: GatewayConfig = { ...config, role: 'dr', dataDir: join(config.dataDir, 'target'), vms: [], nbd: null, api: null };
    const target = await DrGateway.open(targetCfg, deps, { listen: false, roleDataDir: config.dataDir });
    for (const [i, vmc] of config.vms.entries()) if (roles[i]!.role === 'target') await target.addVm(vmc, roles[i]!.generation);
    const sourceVms = config.vms.filter((_, i) => roles[i]!.role === 'source');
    const source = await ProductionGateway.open({ ...config, vms: sourceVms }, deps, options).catch(async (err: unknown) => {
      await target.close();
      throw err;
    });
    return new ProductionSite(config, source, target, deps, lock);
  }

  /** Adds a VM (management API): as a source, or as a target when its role file says it was failed back. */
  async addVm(p: VmProtection): Promise<void> {
    const role = await loadVmRole(this.config.dataDir, p.vmUuid, 'source', this.deps.files);
    if (role.role === 'target') await this.target.addVm(p, role.generation);
    else await this.source.addVm(p);
  }

  /** A VM's role and generation here, with its DR status (1 queue, 2 CBT, 3 check). */
  vmRole(vmUuid: string): { role: 'source' | 'target'; generation: number; splitBrain: boolean; status: number } | null {
    const s = this.source.vmRole(vmUuid);
    if (s) return { role: 'source', generation: s.generation, splitBrain: s.splitBrain, status: this.source.vmStatus(vmUuid)?.status ?? 1 };
    const t = this.target.vmRole(vmUuid);
    // Between leaving the source side and opening as a target the VM is the target already (its role file says so).
    const moving = this.demotingTo.get(vmUuid);
    if (!t && moving !== undefined) return { role: 'target', generation: moving, splitBrain: false, status: 1 };
    return t ? { role: 'target', generation: t.generation, splitBrain: false, status: this.target.vmStatus(vmUuid)?.status ?? 1 } : null;
  }

  /**
   * Planned failover home: this side is the VM's target (after a failback); its source (the peer) stops and
   * drains the VM, this side promotes it at the next generation and serves it as a source again; the peer,
   * seeing that generation, becomes the target with nothing to resync. Errors (nothing changed): VM_NOT_FOUND,
   * VM_ROLE_CONFLICT (a source here), FAILOVER_IN_PROGRESS, FAILOVER_REFUSED (the peer is not connected or
   * could not drain), VRG_TIMEOUT. Unplanned failover runs on a DR gateway only.
   */
  async failover(vmUuid: string, kind: 'planned' | 'unplanned'): Promise<{ vmUuid: string; kind: string; generation: number; fromSeq: number; exports: string[] }> {
    const r = this.vmRole(vmUuid);
    if (r === null) throw vrgError(ErrorCode.VM_NOT_FOUND, `no protected VM ${vmUuid}`, { vmUuid });
    if (r.role === 'source') throw vrgError(ErrorCode.VM_ROLE_CONFLICT, `this gateway is the source of VM ${vmUuid}: a failover runs on its target`, { vmUuid });
    if (kind !== 'planned') throw vrgError(ErrorCode.INVALID_ARGUMENT, 'a production gateway takes the VMs it is the target of home with a planned failover only');
    if (this.moving.has(vmUuid)) throw vrgError(ErrorCode.FAILOVER_IN_PROGRESS, `a failover of VM ${vmUuid} is running`, { vmUuid });
    const conn = this.conn;
    if (conn === null || conn.isClosed) throw vrgError(ErrorCode.FAILOVER_REFUSED, `the source of VM ${vmUuid} is not connected: a planned failover needs it`, { vmUuid });
    this.moving.add(vmUuid);
    try {
      const lastSeq = await requestMove(conn, vmUuid, this.deps.clock, limits.plannedFailoverDrainMs + limits.plannedFailoverPromoteMs / 2);
      const held = this.target.status().vms.find((v) => v.vmUuid === vmUuid)?.durableSeq ?? 0;
      if (held < lastSeq) throw vrgError(ErrorCode.FAILOVER_REFUSED, `VM ${vmUuid}: the source drained to seq ${lastSeq}, this side holds ${held}`, { vmUuid });
      const { vmc, role } = await this.target.promote(vmUuid, 'planned failover');
      // Not a new VM: its state directory exists, so nothing is marked for a full copy.
      await (this.deps.files ?? nodeFiles).mkdir(join(this.config.dataDir, 'cbt', vmUuid));
      await this.source.addVm({ ...vmc, mode: 'async' }, role.generation);
      this.target.forgetPromoted(vmUuid);
      return { vmUuid, kind, generation: role.generation, fromSeq: role.fromSeq ?? 0, exports: vmc.volumes.map((v) => v.volUuid) };
    } finally {
      this.moving.delete(vmUuid);
    }
  }

  private onConnected(conn: LinkConnection): void {
    this.conn = conn;
    this.target.attachConnection(conn);
    this.sendResume(conn);
  }

  /** This side's VMs for the peer: where each target resumes, and each source's generation. */
  private sendResume(conn: LinkConnection): void {
    const vms = [...this.target.resumeEntries().vms, ...this.source.resumeEntries()];
    conn.sendControl(FrameType.RESUME, encodeResume({ vms }));
  }

  /** Failback: this side becomes the VM's target at the peer's generation (once per VM at a time). */
  private demote(req: DemoteRequest): Promise<void> {
    const running = this.demoting.get(req.vmUuid);
    if (running) return running;
    this.demotingTo.set(req.vmUuid, req.generation);
    const p = this.demoteNow(req)
      .catch((err: Error) => this.deps.logger.error({ err, vmUuid: req.vmUuid }, 'could not make this gateway the VM\'s target'))
      .finally(() => {
        this.demoting.delete(req.vmUuid);
        this.demotingTo.delete(req.vmUuid);
      });
    this.demoting.set(req.vmUuid, p);
    return p;
  }

  private async demoteNow(req: DemoteRequest): Promise<void> {
    const vmc: VmConfig | undefined = this.source.vmConfigs().find((v) => v.vmUuid === req.vmUuid);
    if (!vmc) throw vrgError(ErrorCode.VM_NOT_FOUND, `no source VM ${req.vmUuid} to demote`);
    this.deps.logger.warn({ vmUuid: req.vmUuid, generation: req.generation, peer: req.conn.peer.gatewayId },
      'the VM was promoted on the peer: this gateway becomes its target (failback)');
    await this.source.removeVm(req.vmUuid);
    // The commit point: from here on a restart opens the volumes as the VM's replica.
    await saveVmRole(this.config.dataDir, {
      vmUuid: req.vmUuid, role: 'target', generation: req.generation, changedAtMs: this.deps.clock.nowMs(),
      reason: `failback: promoted on ${req.conn.peer.gatewayId}`,
    }, this.deps.files);
    await this.target.addVm({ vmUuid: vmc.vmUuid, vmName: vmc.vmName, compressOption: vmc.compressOption,
      encryptOption: vmc.encryptOption, volumes: vmc.volumes }, req.generation);
    const conn = this.conn;
    if (conn && !conn.isClosed) {
      this.target.attachConnection(conn);
      this.sendResume(conn);
    }
  }

  /** NBD: the source VMs' writable intake, read-only replicas of the VMs this gateway is the target of. */
  exports(): NbdExport[] {
    return [...productionExports(this.source), ...replicaExports(this.target)];
  }

  status(): ProductionSiteStatus {
    const t = this.target.status();
    return { ...this.source.status(), targets: t.vms.length === 0 ? null : t };
  }

  async close(): Promise<void> {
    try {
      await this.source.close();
      await this.target.close();
    } finally {
      await this.lock.release();
    }
  }
}
