import type { Logger } from '../../core/log.js';
import { DrGateway } from '../../replication/target/dr-gateway.js';
import { ProductionGateway } from '../../replication/source/production-gateway.js';
import type { DrSite, FailoverKind, FailoverResult, TestFailoverResult } from '../../replication/dr-site.js';
import type { ProductionSite } from '../../replication/production-site.js';
import { ApiErrorNumber } from '../auth/error-codes.js';
import type { AlarmNotifier } from '../alarms/alarm-notifier.js';
import type { ApiStore, StoredVm } from '../store/api-store.js';
import { restError } from './rest-errors.js';
import { drVm, productionVm, protectionOf } from './vm-strategy.js';
import { gatewayFigures, vmFigures, type VmFigures } from '../replication-figures.js';

// What the REST endpoints do to the engine, apart from HTTP: every change is checked first, then made in
// the engine, then stored (so a refused request changes nothing, and a stored change is one the engine took).

export type Gateway = ProductionGateway | DrGateway;

/** GET /vrgmap status (004 §3.7.3). */
export const PairStatus = { NORMAL: 1, PAIRING: 2, PAIRING_FAILED: 3, NOT_PAIRED: 4, LINK_DOWN: 5 } as const;

/** GET /vmstrategy volStatus (004 §3.8.3): 1 normal, 2 bad path (the target could not be opened or failed). */
export const VolStatus = { NORMAL: 1, BAD_PATH: 2 } as const;

const kiB = 1024;

export class ApiService {
  /** VMs the store has but the engine could not open at replay: vmUuid → why. */
  readonly replayFailures = new Map<string, string>();
  private drEverConnected = false;

  constructor(
    readonly gw: Gateway,
    readonly store: ApiStore,
    readonly alarms: AlarmNotifier,
    private readonly logger: Logger,
    /** DR: the site that can promote the gateway's VMs (null on production). */
    readonly site: DrSite | null = null,
    /** Production: the site that also holds the VMs this gateway became the target of (failback). */
    readonly prodSite: ProductionSite | null = null,
  ) {}

  /** The VM's role and generation on this gateway with its DR status (1 queue, 2 CBT, 3 check), or null. */
  vmRole(vmUuid: string): { role: 'source' | 'target'; generation: number; splitBrain: boolean; status: number } | null {
    const r = this.site?.vmRole(vmUuid) ?? this.prodSite?.vmRole(vmUuid);
    if (r !== undefined) return r === null ? null : { role: r.role, generation: r.generation, splitBrain: r.splitBrain, status: r.status };
    const gw = this.gw as ProductionGateway;
    const s = gw.vmRole(vmUuid);
    return s === null ? null : { role: s.role, generation: s.generation, splitBrain: s.splitBrain, status: gw.vmStatus(vmUuid)?.status ?? 1 };
  }

  /** GET /vmreplication: every VM this gateway holds, source or target side, with its lag and totals. */
  vmReplication(): VmFigures[] {
    return vmFigures(gatewayFigures(this.site, this.prodSite, this.gw));
  }

  /**
   * POST /vmfailover: on the VM's target gateway (DR: planned or unplanned; a production gateway that is the
   * target after a failback: planned, to move the VM home). The role and generation change, or a clear error
   * and nothing changed.
   */
  async failover(vmUuid: string, type: FailoverKind): Promise<FailoverResult> {
    if (this.prodSite !== null && this.prodSite.vmRole(vmUuid)?.role === 'target') {
      if (type !== 'planned') throw restError(ApiErrorNumber.INVALID_PARAMETER, 'a production gateway takes a VM home with type "planned" only');
      return await this.prodSite.failover(vmUuid, type) as FailoverResult;
    }
    return this.drSite(vmUuid).failover(vmUuid, type);
  }

  /**
   * POST /linkrekey: rotates the link secret with the peer (production side: the link's client asks). DR answers
   * with ROLE_CONFLICT: the rotation runs from the production gateway.
   */
  async rekeyLink(): Promise<{ generation: number; reconnected: boolean }> {
    const source = this.prodSite?.source ?? null;
    if (source === null) throw restError(ApiErrorNumber.ROLE_CONFLICT, 'the link secret is rotated from the production gateway (the link\'s client)');
    return source.rekey();
  }

  /** POST /vmsplitbrain: this side's writes since the split lose; it becomes the target of the peer (the survivor). */
  async discardDivergence(vmUuid: string): Promise<void> {
    const r = this.vmRole(vmUuid);
    if (r === null) throw restError(ApiErrorNumber.NO_SUCH_VM, `no VM ${vmUuid}`);
    if (!r.splitBrain) throw restError(ApiErrorNumber.ROLE_CONFLICT, `VM ${vmUuid} is not in split brain on this gateway`);
    if (this.site) await this.site.discardDivergence(vmUuid);
    else await (this.prodSite?.source ?? (this.gw as ProductionGateway)).discardDivergence(vmUuid);
  }

  /** POST /vmfailover type "test": DR only; a clone of the VM's image is exported writable, replication goes on. */
  async testFailover(vmUuid: string): Promise<TestFailoverResult> {
    return this.drSite(vmUuid).testFailover(vmUuid);
  }

  /** DELETE /vmfailover/<vm>: ends the VM's test failover (its clone and exports are discarded). */
  async endTestFailover(vmUuid: string): Promise<void> {
    await this.drSite(vmUuid).endTestFailover(vmUuid);
  }

  /** The DR site, for a failover request; on production a clear number (the VM unknown, or this is its source). */
  private drSite(vmUuid: string): DrSite {
    if (this.site !== null) return this.site;
    const known = this.gw.vmConfigs().some((v) => v.vmUuid === vmUuid);
    if (!known) throw restError(ApiErrorNumber.NO_SUCH_VM, `no VM ${vmUuid}`);
    throw restError(ApiErrorNumber.ROLE_CONFLICT, 'this gateway is the VM\'s source: a failover runs on its DR gateway');
  }

  get role(): 'production' | 'dr' {
    return this.gw instanceof ProductionGateway ? 'production' : 'dr';
  }

  /** Gateway start: the stored peer and VMs into the engine. A VM that fails to open is kept and reported. */
  async replay(): Promise<void> {
    const s = this.store.state;
    const known = new Set(this.gw.vmConfigs().map((v) => v.vmUuid));
    for (const vm of s.vms) {
      if (known.has(vm.vmUuid)) continue; // also in the config file: already open
      try {
        await this.engineAddVm(vm);
      } catch (err) {
        this.replayFailures.set(vm.vmUuid, (err as Error).message);
        this.logger.error({ vmUuid: vm.vmUuid, err: (err as Error).message }, 'stored VM could not be opened');
      }
    }
    if (s.peer !== null && this.gw instanceof ProductionGateway) this.gw.setPeer(s.peer);
  }

  async setPeer(host: string, port: number): Promise<void> {
    await this.store.update((s) => {
      s.peer = { host, port };
    });
    if (this.gw instanceof ProductionGateway) this.gw.setPeer({ host, port });
    this.drEverConnected = false;
  }

  async deletePeer(): Promise<void> {
    await this.store.update((s) => {
      s.peer = null;
    });
    if (this.gw instanceof ProductionGateway) this.gw.setPeer(null);
  }

  /**
   * GET /vrgmap. Production: from the link client (3 when the last attempt failed authentication).
   * DR: the DR gateway listens and cannot dial; 1 while production's link is up, else 5 once it has been
   * seen up (by an earlier GET), else 2.
   */
  peerStatus(): { dstIp: string; dstPort: number; status: number } {
    const peer = this.store.state.peer;
    if (peer === null) return { dstIp: '', dstPort: 0, status: PairStatus.NOT_PAIRED };
    let status: number;
    if (this.gw instanceof ProductionGateway) {
      const p = this.gw.peerStatus();
      if (p === null) status = PairStatus.NOT_PAIRED;
      else if (p.connected) status = PairStatus.NORMAL;
      else if (p.lastError !== null && /HANDSHAKE_FAILED|AUTH_FAILED|PROTOCOL_VERSION/.test(p.lastError)) status = PairStatus.PAIRING_FAILED;
      else status = p.everConnected ? PairStatus.LINK_DOWN : PairStatus.PAIRING;
    } else if (this.gw.status().connected) {
      this.drEverConnected = true;
      status = PairStatus.NORMAL;
    } else status = this.drEverConnected ? PairStatus.LINK_DOWN : PairStatus.PAIRING;
    return { dstIp: peer.host, dstPort: peer.port, status };
  }

  /** GET /vrgstatus: KB of the production journal ("cache"); the DR side has none (-1). */
  vrgStatus(): { status: number; availableCapacity: number; totalCapacity: number } {
    const abnormal = this.alarms.activeAlarms().length > 0 || this.replayFailures.size > 0 ||
      (this.gw instanceof ProductionGateway && this.gw.status().vms.some((v) => v.fault !== null));
    const status = abnormal ? 2 : 1;
    if (!(this.gw instanceof ProductionGateway)) return { status, availableCapacity: -1, totalCapacity: -1 };
    const total = this.gw.config.journalCapacityBytes;
    const used = this.gw.status().vms.reduce((n, v) => n + v.journalUsedBytes, 0);
    return { status, availableCapacity: Math.floor(Math.max(0, total - used) / kiB), totalCapacity: Math.floor(total / kiB) };
  }

  private engineAddVm(vm: StoredVm): Promise<void> {
    return (this.site ?? this.prodSite ?? this.gw).addVm(protectionOf(vm));
  }

  /** POST /vmstrategy: the body shape of this gateway's role. */
  async addVm(body: Record<string, unknown>): Promise<void> {
    const vm = this.role === 'production' ? productionVm(body, this.gw.config.dataDir) : drVm(body);
    this.checkNew(vm);
    await this.engineAddVm(vm);
    try {
      await this.store.update((s) => {
        s.vms.push(vm);
      });
    } catch (err) {
      await this.gw.removeVm(vm.vmUuid).catch(() => undefined); // not stored: undo, so nothing changed
      throw err;
    }
  }

  /** Duplicates across VMs (the engine would refuse them too, with less precise numbers). */
  private checkNew(vm: StoredVm): void {
    const known = new Set([...this.gw.vmConfigs().map((v) => v.vmUuid), ...this.store.state.vms.map((v) => v.vmUuid)]);
    if (known.has(vm.vmUuid)) throw restError(ApiErrorNumber.INVALID_PARAMETER, `VM ${vm.vmUuid} is already configured`);
    const used = new Set([...this.gw.vmConfigs().flatMap((v) => v.volumes.map((x) => x.volUuid)),
      ...this.store.state.vms.flatMap((v) => v.volList.map((x) => x.volUuid))]);
    for (const v of vm.volList) {
      if (used.has(v.volUuid)) throw restError(ApiErrorNumber.DUP_VOL_UUID, `volUuid ${v.volUuid} belongs to another VM`);
    }
  }

  /** POST /vmstrategy/<vmUuid>/: the VM's status before removal. delFlag 2 (forced) forgets it even if closing fails. */
  async removeVm(vmUuid: string, forced: boolean): Promise<number> {
    const stored = this.store.vm(vmUuid);
    const inEngine = this.gw.vmConfigs().some((v) => v.vmUuid === vmUuid);
    if (stored === undefined && !inEngine) throw restError(ApiErrorNumber.NO_SUCH_VM, `no VM ${vmUuid}`);
    const drStatus = this.gw.vmStatus(vmUuid)?.status ?? 1;
    if (inEngine) {
      try {
        await this.gw.removeVm(vmUuid);
      } catch (err) {
        if (!forced) throw err;
        this.logger.error({ vmUuid, err: (err as Error).message }, 'forced removal: engine could not close the VM');
      }
    }
    await this.store.update((s) => {
      s.vms = s.vms.filter((v) => v.vmUuid !== vmUuid);
    });
    this.replayFailures.delete(vmUuid);
    return drStatus;
  }

  /** A VM is faulty when its target failed, it could not be opened, or its stream to DR stopped on a fault. */
  isFaulty(vmUuid: string): boolean {
    if (this.replayFailures.has(vmUuid)) return true;
    if (this.alarms.activeAlarms().some((a) => a.vmUuid === vmUuid && a.kind === 'targetError')) return true;
    return this.gw instanceof ProductionGateway && this.gw.status().vms.some((v) => v.vmUuid === vmUuid && v.fault !== null);
  }
}
