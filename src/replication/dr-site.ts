import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { NbdExport } from '../nbd/nbd-server.js';
import type { GatewayConfig, VmConfig } from './config.js';
import type { GatewayDeps } from './gateway-deps.js';
import { productionExports, replicaExports } from './nbd-exports.js';
import { ProductionGateway, type ProductionStatus } from './source/production-gateway.js';
import { DrGateway, type DrStatus } from './target/dr-gateway.js';
import type { VmRoleState } from './vm-role.js';

// A DR gateway and the VMs it was failed over to. A target VM lives in the DR gateway (target/); once
// promoted it becomes a source VM of this site: its (former) target volumes are the VM's disks, served over
// NBD for writing by a production gateway of this process (source/) that has no peer yet: its writes are
// tracked in the VM's CBT bitmap from the promotion on, so a later failback ships only what changed.
//
// The promoted VMs' source state lives under <dataDir>/source (journal, CBT bitmaps), apart from the DR state.

export type FailoverKind = 'unplanned';

export interface FailoverResult {
  vmUuid: string;
  kind: FailoverKind;
  generation: number;
  /** The last seq of the old source's history the promoted image holds. */
  fromSeq: number;
  /** The volumes now writable over NBD (export names). */
  exports: string[];
}

export interface DrSiteStatus extends DrStatus {
  /** The VMs promoted here, as their source (null: none). */
  promoted: ProductionStatus | null;
}

export class DrSite {
  private source: ProductionGateway | null = null;
  private readonly failing = new Set<string>();

  private constructor(readonly config: GatewayConfig, readonly dr: DrGateway, private readonly deps: GatewayDeps) {}

  static async open(config: GatewayConfig, deps: GatewayDeps): Promise<DrSite> {
    const site = new DrSite(config, await DrGateway.open(config, deps), deps);
    for (const p of site.dr.promotedVms()) await site.serveAsSource(p.vmc, p.role, false);
    return site;
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
    if (kind !== 'unplanned') throw vrgError(ErrorCode.INVALID_ARGUMENT, `failover type ${String(kind)} is not supported`);
    if (this.failing.has(vmUuid)) throw vrgError(ErrorCode.FAILOVER_IN_PROGRESS, `a failover of VM ${vmUuid} is running`, { vmUuid });
    this.failing.add(vmUuid);
    try {
      const { vmc, role } = await this.dr.promote(vmUuid, `${kind} failover`);
      await this.serveAsSource(vmc, role, true);
      return { vmUuid, kind, generation: role.generation, fromSeq: role.fromSeq ?? 0, exports: vmc.volumes.map((v) => v.volUuid) };
    } finally {
      this.failing.delete(vmUuid);
    }
  }

  /**
   * Opens a promoted VM as a source without a peer. Its state directory is made first, so the VM is not taken
   * for a new one (which would mark every block dirty: a full copy at failback). The VM enters CBT at once: every
   * write from the promotion on is tracked in the bitmap, none waits in a journal for a peer.
   */
  private async serveAsSource(vmc: VmConfig, role: VmRoleState, justPromoted: boolean): Promise<void> {
    const dataDir = join(this.config.dataDir, 'source');
    await mkdir(join(dataDir, 'cbt', vmc.vmUuid), { recursive: true });
    if (this.source === null) {
      const cfg: GatewayConfig = {
        ...this.config, role: 'production', dataDir, vms: [], nbd: null, api: null,
        link: { ...this.config.link, port: 0 },
      };
      this.source = await ProductionGateway.open(cfg, this.deps);
    }
    await this.source.addVm({ ...vmc, mode: 'async' }, role.generation);
    this.source.trackInBitmap(vmc.vmUuid, justPromoted ? 'promoted' : 'promoted-at-start');
  }

  /** Binds a VM (management API): a target, or one promoted here before, served as its source. */
  async addVm(vmc: VmConfig): Promise<void> {
    await this.dr.addVm(vmc);
    const p = this.dr.promotedVms().find((x) => x.vmc.vmUuid === vmc.vmUuid);
    if (p) await this.serveAsSource(p.vmc, p.role, false);
  }

  /** A VM's role and generation here, with its protection status (as a target, or as the promoted source). */
  vmRole(vmUuid: string): { role: 'source' | 'target'; generation: number; promoting: boolean; status: number } | null {
    const r = this.dr.vmRole(vmUuid);
    if (r === null) return null;
    const st = r.role === 'target' ? this.dr.vmStatus(vmUuid) : this.source?.vmStatus(vmUuid) ?? null;
    return { ...r, status: st?.status ?? 1 };
  }

  /** NBD: read-only replicas of the target VMs, writable disks of the promoted ones. */
  exports(): NbdExport[] {
    return [...replicaExports(this.dr), ...(this.source ? productionExports(this.source) : [])];
  }

  status(): DrSiteStatus {
    return { ...this.dr.status(), promoted: this.source?.status() ?? null };
  }

  async close(): Promise<void> {
    await this.source?.close();
    await this.dr.close();
  }
}
