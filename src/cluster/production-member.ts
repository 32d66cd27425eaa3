import type { Clock, TimerHandle } from '../core/clock.js';
import { ErrorCode, isVrgError, vrgError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { parseVmSettings } from '../replication/config.js';
import type { ProductionGateway } from '../replication/source/production-gateway.js';
import type { Custody, EtcdRegistry, VmReport } from './etcd-registry.js';
import { pairMembers } from './pairing.js';
import { runPlacementRound } from './placement-round.js';
import { RoundRunner } from './round-runner.js';

// A production gateway in cluster mode: a member of its site in etcd. Its one engine (a ProductionGateway)
// serves the VMs this member owns and links to the DR member the pairing rule gives it (pairing.ts). Each
// round (on any change in etcd, and every roundIntervalMs) it:
//   - follows its lease: fenced, it stops serving every VM (the write guard refuses writes at once) and rejoins;
//   - follows the operator's drain request;
//   - links to its DR member (a new one has none of the VMs' streams: each VM restarts with a check);
//   - takes its turn at the placement rule: VMs moved away are handed over (writes stop, DR acknowledges all),
//     unowned VMs moved here are claimed;
//   - serves exactly the VMs etcd says it owns, each a new seq stream under its ownership's fencing token,
//     started by how the last owner left it (custody): never owned, a full sync; handed over cleanly, nothing
//     resynced; otherwise (its owner died) a consistency check from the source volumes.

export interface ProductionMemberOptions {
  readonly engine: ProductionGateway;
  /** This member's registry (its own site). */
  readonly registry: EtcdRegistry;
  /** A reader of the DR site (never joins). */
  readonly peers: EtcdRegistry;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly roundIntervalMs?: number;
  /** Bound of a planned hand-over (writes stopped until DR acknowledged all). */
  readonly handOverTimeoutMs?: number;
  /** Moves of owned VMs per round (draining, rebalance). */
  readonly maxMovesPerRound?: number;
}

interface Served {
  readonly token: number;
}

export class ProductionMember {
  private readonly engine: ProductionGateway;
  private readonly registry: EtcdRegistry;
  private readonly served = new Map<string, Served>();
  /** VMs whose DR stream went. */
  private readonly restarts = new Set<string>();
  private readonly runner: RoundRunner;
  private drPeer: { id: string; host: string; port: number } | null = null;
  /** The DR member the pairing rule gives this member (published: pairs are sticky), linked or not yet. */
  private pairedWith: string | null = null;
  private reportTimer: TimerHandle | null = null;
  private lastBytesIn = new Map<string, { bytes: number; atMs: number; rate: number }>();

  constructor(private readonly o: ProductionMemberOptions) {
    this.engine = o.engine;
    this.registry = o.registry;
    this.runner = new RoundRunner({ clock: o.clock, logger: o.logger, intervalMs: o.roundIntervalMs ?? 1000, round: () => this.round() });
    o.registry.on('lost', (err) => {
      o.logger.error({ err: err.message }, 'cluster lease lost: this gateway stops serving its VMs');
      this.runner.kick();
    });
    o.engine.on('streamLost', (vmUuid: string) => {
      this.restarts.add(vmUuid);
      this.runner.kick();
    });
  }

  /** The engine's write guard: a member not surely alive in etcd takes no write (its successor may own the VM). */
  guard(vmUuid: string): void {
    if (!this.registry.live || !this.served.has(vmUuid)) {
      throw vrgError(ErrorCode.CLUSTER_FENCED, `this gateway may not write VM ${vmUuid} now: it is not surely its owner`, { vmUuid });
    }
  }

  async start(): Promise<void> {
    await this.registry.join();
    await this.runner.start([this.registry, this.o.peers]);
    this.scheduleReport();
  }

  /** Leaves the site: its lease goes, so its VMs move at once (each checked by its next owner). */
  async close(): Promise<void> {
    this.reportTimer?.cancel();
    await this.runner.stop();
    for (const vmUuid of [...this.served.keys()]) await this.drop(vmUuid, false);
    await this.registry.close();
    await this.o.peers.close();
  }

  /** The fencing tokens of the VMs served now. */
  tokens(): Map<string, number> {
    return new Map([...this.served].map(([vm, s]) => [vm, s.token]));
  }

  private async round(): Promise<void> {
    if (!this.registry.live) return this.rejoin();
    const drain = await this.registry.drainRequested(this.registry.memberId);
    if (drain !== this.registry.isDraining) await this.registry.setDraining(drain);
    await this.follow();
    await runPlacementRound(this.registry, {
      maxMoves: this.o.maxMovesPerRound ?? 8,
      vmRates: new Map([...this.lastBytesIn].map(([vm, r]) => [vm, r.rate])),
      handOver: (vmUuid) => this.handOver(vmUuid),
    });
    await this.serveOwned();
    await this.recheck();
  }

  private async rejoin(): Promise<void> {
    for (const vmUuid of [...this.served.keys()]) await this.drop(vmUuid);
    await this.registry.join();
    this.runner.kick();
  }

  /** A VM some fenced member may have written behind this owner's back: checked again once in queue. */
  private async recheck(): Promise<void> {
    const states = new Map(this.engine.status().vms.map((v) => [v.vmUuid, v.replication.state]));
    for (const vmUuid of await this.registry.rechecks()) {
      if (!this.served.has(vmUuid) || states.get(vmUuid) !== 'queue') continue;
      this.engine.requestCheck(vmUuid);
      await this.registry.clearRecheck(vmUuid);
      this.o.logger.warn({ vmUuid }, 'cluster: a fenced member may have written the VM\'s source late; checking it again');
    }
  }

  /** Links the engine to this member's DR member; a different one than before holds none of the streams. */
  private async follow(): Promise<void> {
    const [prods, drs] = await Promise.all([this.registry.members(), this.o.peers.members()]);
    const me = this.registry.memberId;
    // This member's own choice counts as published at once (its record catches up in the report below).
    const self = { id: me, ...(this.pairedWith ? { drPeer: this.pairedWith } : {}) };
    const drId = pairMembers(prods.map((m) => (m.id === me ? self : m)), drs.map((m) => m.id)).get(me) ?? null;
    const repaired = drId !== this.pairedWith;
    this.pairedWith = drId;
    const dr = drs.find((m) => m.id === drId);
    const port = dr?.links?.[me];
    const next = dr && port !== undefined ? { id: dr.id, host: dr.linkHost, port } : null;
    const same = (a: typeof next, b: typeof next): boolean => a?.id === b?.id && a?.host === b?.host && a?.port === b?.port;
    if (same(next, this.drPeer)) {
      if (repaired) await this.report();
      return;
    }
    const movedDr = this.drPeer !== null && next !== null && next.id !== this.drPeer.id;
    this.o.logger.info({ from: this.drPeer, to: next }, 'cluster: DR member for this gateway');
    this.drPeer = next;
    this.engine.setPeer(next === null ? null : { host: next.host, port: next.port });
    if (movedDr) for (const vmUuid of this.served.keys()) this.restarts.add(vmUuid);
    await this.report();
  }

  /** Serves exactly the VMs this member owns under its lease; restarts the ones whose DR stream went. */
  private async serveOwned(): Promise<void> {
    const me = this.registry.memberId;
    const owners = await this.registry.owners();
    const mine = new Map(owners.filter((o) => o.memberId === me).map((o) => [o.vmUuid, o.token]));
    for (const vmUuid of [...this.served.keys()]) {
      if (mine.get(vmUuid) !== this.served.get(vmUuid)!.token) await this.drop(vmUuid);
    }
    for (const [vmUuid, token] of mine) {
      if (this.restarts.delete(vmUuid) && this.served.has(vmUuid)) await this.restart(vmUuid);
      else if (!this.served.has(vmUuid)) await this.adopt(vmUuid, token);
    }
  }

  private async adopt(vmUuid: string, token: number): Promise<void> {
    const settings = parseVmSettings(await this.registry.getVm(vmUuid), `VM ${vmUuid}`);
    const custody = await this.registry.getCustody(vmUuid);
    const start = custody === null ? 'new' : custody.state === 'clean' && custody.token < token ? 'clean' : 'check';
    // Recorded before the first write: if this member dies from here on, its successor checks the VM.
    await this.registry.putCustody(vmUuid, this.custody('owned', token));
    this.served.set(vmUuid, { token }); // before the VM is exported: the guard lets its first write in
    await this.engine.adoptVm(settings, { fencingToken: token, start }).catch((err: unknown) => {
      this.served.delete(vmUuid);
      throw err;
    });
    this.o.logger.info({ vmUuid, fencingToken: token, start, from: custody?.memberId ?? null }, 'cluster: serving VM');
  }

  /**
   * A new stream for a VM whose DR side holds none of this one's (its DR member changed or lost its state, or
   * holds another stream): under a renewed token, so DR reopens it as a new stream too (never reusing seqs of
   * the old one), and the source, the truth, is checked against DR.
   */
  private async restart(vmUuid: string): Promise<void> {
    const settings = this.engine.vmConfigs().find((v) => v.vmUuid === vmUuid)!;
    this.served.delete(vmUuid);
    await this.engine.removeVm(vmUuid);
    const token = await this.registry.renew(vmUuid);
    this.served.set(vmUuid, { token });
    await this.engine.adoptVm(settings, { fencingToken: token, start: 'check' }).catch((err: unknown) => {
      this.served.delete(vmUuid);
      throw err;
    });
    this.o.logger.warn({ vmUuid, fencingToken: token }, 'cluster: the DR side holds none of the VM\'s stream; restarted under a new token with a check');
  }

  /**
   * Stops serving a VM without a hand-over (its ownership is lost: fenced, or taken over): writes stop at once.
   * A source write of a group that passed the write guard before a pause can still land after it, behind the
   * successor's check: once the VM is closed here (no write in flight), its owner is asked to check it again.
   * `recheck` false: this member is leaving, its lease still alive (its successor checks the VM anyway).
   */
  private async drop(vmUuid: string, recheck = true): Promise<void> {
    this.served.delete(vmUuid);
    await this.engine.removeVm(vmUuid).catch((err: Error) => {
      if (!isVrgError(err, ErrorCode.VM_NOT_FOUND)) throw err;
    });
    if (recheck) await this.registry.requestRecheck(vmUuid);
    this.o.logger.warn({ vmUuid }, 'cluster: no longer the VM\'s owner; stopped serving it');
  }

  /** Planned move away: clean only if DR acknowledged everything (then the next owner resyncs nothing). */
  private async handOver(vmUuid: string): Promise<Custody> {
    const s = this.served.get(vmUuid);
    if (s === undefined) return this.custody('owned', 0);
    const r = await this.engine.handOverVm(vmUuid, this.o.handOverTimeoutMs ?? 60_000);
    this.served.delete(vmUuid);
    this.o.logger.info({ vmUuid, clean: r.clean, lastSeq: r.lastSeq }, 'cluster: VM handed over');
    return this.custody(r.clean ? 'clean' : 'owned', s.token);
  }

  private custody(state: Custody['state'], token: number): Custody {
    return { state, memberId: this.registry.memberId, token, atMs: this.o.clock.nowMs() };
  }

  private scheduleReport(): void {
    this.reportTimer = this.o.clock.setTimer(1000, () => {
      void this.report().catch((err: Error) => this.o.logger.warn({ err: err.message }, 'cluster: report failed'))
        .finally(() => { if (this.runner.running) this.scheduleReport(); });
    });
  }

  private async report(): Promise<void> {
    if (!this.registry.live) return;
    const st = this.engine.status();
    const now = this.o.clock.nowMs();
    const vms: Record<string, VmReport> = {};
    let rate = 0;
    for (const v of st.vms) {
      const prev = this.lastBytesIn.get(v.vmUuid);
      const vmRate = prev && now > prev.atMs ? Math.max(0, (v.bytesIn - prev.bytes) * 1000 / (now - prev.atMs)) : 0;
      this.lastBytesIn.set(v.vmUuid, { bytes: v.bytesIn, atMs: now, rate: vmRate });
      rate += vmRate;
      const r = v.replication;
      vms[v.vmUuid] = { state: r.state, mode: r.mode, lagBytes: r.bytesBehind, lagSeconds: r.secondsBehind, token: this.served.get(v.vmUuid)?.token ?? 0 };
    }
    for (const vm of this.lastBytesIn.keys()) if (!(vm in vms)) this.lastBytesIn.delete(vm);
    await this.registry.report({ vmCount: st.vms.length, writeRateBytesPerSec: Math.round(rate), vms,
      ...(this.pairedWith ? { drPeer: this.pairedWith } : {}) });
  }
}
