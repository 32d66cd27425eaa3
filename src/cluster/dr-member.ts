import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Clock, TimerHandle } from '../core/clock.js';
import { ErrorCode, isVrgError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { parseVmSettings } from '../replication/config.js';
import type { DrGateway, FenceGuard } from '../replication/target/dr-gateway.js';
import { FenceBook, type Ownership } from './fence-book.js';
import type { EtcdRegistry, VmReport } from './etcd-registry.js';
import { pairMembers } from './pairing.js';
import { RoundRunner } from './round-runner.js';

// A DR gateway in cluster mode: a member of the DR site in etcd. It runs one engine (a DrGateway with its own
// link listener and state directory) per production member the pairing rule (pairing.ts) gives it, and
// publishes each engine's port in its member record, where that production member finds it. A VM is served by
// the engine of its production owner, and only after this member holds the VM's DR owner key: the targets are
// shared storage on the DR site, and the key makes sure one engine at a time writes them.
//
// Fencing: a VM opens for one production ownership (owner, fencing token) at a time. The token is first raised
// in etcd (/fence/<vm>, compare-and-swap: it only rises, whichever DR member writes it); a token older than
// the fence is refused there. The engine's guard then admits only batches of that token: an older one is a
// stale owner (FENCING_TOKEN_STALE), a newer one waits until this member reopens the VM for it. When the owner
// changes, the VM's log is applied to the targets first, then the key is released, then it opens anew (a
// fresh DR stream: the new owner starts a new seq stream too). Each token a VM opens with is appended to
// <dataDir>/fencing.jsonl.

export interface DrMemberOptions {
  /** A listening engine for one production member, its state under <dataDir>/pairs/<prodId>. */
  readonly openEngine: (prodId: string, fence: FenceGuard) => Promise<DrGateway>;
  readonly registry: EtcdRegistry;
  /** A reader of the production site (never joins). */
  readonly peers: EtcdRegistry;
  readonly dataDir: string;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly roundIntervalMs?: number;
  /** Bound of applying a VM's DR log before it moves to another engine. */
  readonly settleTimeoutMs?: number;
}

export class DrMember {
  private readonly engines = new Map<string, DrGateway>();
  private readonly held = new FenceBook();
  private readonly runner: RoundRunner;
  private reportTimer: TimerHandle | null = null;

  constructor(private readonly o: DrMemberOptions) {
    this.runner = new RoundRunner({ clock: o.clock, logger: o.logger, intervalMs: o.roundIntervalMs ?? 1000, round: () => this.round() });
    o.registry.on('lost', (err) => {
      o.logger.error({ err: err.message }, 'cluster lease lost: this DR gateway stops writing its targets');
      this.runner.kick();
    });
  }

  async start(): Promise<void> {
    await this.o.registry.join();
    await this.runner.start([this.o.registry, this.o.peers]);
    this.scheduleReport();
  }

  async close(): Promise<void> {
    this.reportTimer?.cancel();
    await this.runner.stop();
    for (const [vmUuid] of this.held.entries()) await this.remove(vmUuid, this.o.settleTimeoutMs ?? 60_000).catch(() => undefined);
    for (const e of this.engines.values()) await e.close();
    await this.o.registry.close();
    await this.o.peers.close();
  }

  /** Engines by production member, for status. */
  engineList(): Array<{ prodId: string; engine: DrGateway }> {
    return [...this.engines].map(([prodId, engine]) => ({ prodId, engine }));
  }

  private async round(): Promise<void> {
    const reg = this.o.registry;
    if (!reg.live) {
      // Fenced: another DR member may take the targets once the lease is gone, so stop writing them now.
      for (const [vmUuid] of this.held.entries()) await this.remove(vmUuid, 0).catch(() => undefined);
      await reg.join();
      this.runner.kick();
      return;
    }
    const [prods, drs, owners] = await Promise.all([this.o.peers.members(), reg.members(), this.o.peers.owners()]);
    const pairs = pairMembers(prods, drs.map((m) => m.id));
    const mine = new Set(prods.filter((m) => pairs.get(m.id) === reg.memberId).map((m) => m.id));
    for (const prodId of mine) if (!this.engines.has(prodId)) this.engines.set(prodId, await this.o.openEngine(prodId, this.held.guard(prodId)));
    await this.publish();
    const wanted = new Map<string, Ownership>(owners.filter((x) => mine.has(x.memberId)).map((x) => [x.vmUuid, { prodId: x.memberId, token: x.token }]));
    for (const [vmUuid, h] of this.held.entries()) {
      const w = wanted.get(vmUuid);
      if (w === undefined || w.prodId !== h.prodId || w.token !== h.token) await this.remove(vmUuid, this.o.settleTimeoutMs ?? 60_000);
    }
    for (const [vmUuid, w] of wanted) if (this.held.get(vmUuid) === undefined) await this.open(vmUuid, w);
  }

  /** Opens a VM's targets in its owner's engine, once this member holds its DR key and the fence allows. */
  private async open(vmUuid: string, w: Ownership): Promise<void> {
    const reg = this.o.registry;
    try {
      await reg.claim(vmUuid);
    } catch (err) {
      // Another DR member still holds the targets (applying its log, or dead until its lease ends).
      if (isVrgError(err, ErrorCode.CLUSTER_NOT_OWNER) || isVrgError(err, ErrorCode.VM_NOT_FOUND)) return;
      throw err;
    }
    const fence = await reg.raiseFence(vmUuid, w.token);
    if (fence > w.token) {
      this.o.logger.warn({ vmUuid, fencingToken: w.token, fence }, 'cluster: a newer owner of the VM was seen; not opening it for this one');
      await reg.release(vmUuid);
      return;
    }
    const settings = parseVmSettings(await reg.getVm(vmUuid), `VM ${vmUuid}`);
    this.held.set(vmUuid, w);
    try {
      await this.engines.get(w.prodId)!.addVm(settings);
    } catch (err) {
      this.held.delete(vmUuid);
      await reg.release(vmUuid).catch(() => undefined);
      throw err;
    }
    await appendFile(join(this.o.dataDir, 'fencing.jsonl'), `${JSON.stringify({ vmUuid, token: w.token, prodId: w.prodId, atMs: this.o.clock.nowMs(), member: reg.memberId })}\n`);
    this.o.logger.info({ vmUuid, fencingToken: w.token, prodId: w.prodId }, 'cluster: DR serving VM');
  }

  /** Applies the VM's log to its targets (bounded), closes it, and gives its DR key back. */
  private async remove(vmUuid: string, settleMs: number): Promise<void> {
    const h = this.held.get(vmUuid)!;
    this.held.delete(vmUuid);
    try {
      await this.engines.get(h.prodId)!.removeVm(vmUuid, settleMs);
    } catch (err) {
      if (!isVrgError(err, ErrorCode.VM_NOT_FOUND)) throw err;
    }
    if (this.o.registry.live) await this.o.registry.release(vmUuid).catch(() => undefined);
    this.o.logger.info({ vmUuid, fencingToken: h.token, prodId: h.prodId }, 'cluster: DR no longer serves VM');
  }

  private async publish(): Promise<void> {
    const links = Object.fromEntries([...this.engines].map(([prodId, e]) => [prodId, e.linkPort]));
    const vms: Record<string, VmReport> = {};
    for (const e of this.engines.values()) {
      for (const v of e.status().vms) {
        vms[v.vmUuid] = { state: v.state ?? 'unknown', mode: '', lagBytes: v.logUsedBytes, lagSeconds: 0, token: this.held.get(v.vmUuid)?.token ?? 0 };
      }
    }
    await this.o.registry.report({ vmCount: this.held.size, writeRateBytesPerSec: 0, links, vms });
  }

  private scheduleReport(): void {
    this.reportTimer = this.o.clock.setTimer(1000, () => {
      void (this.o.registry.live ? this.publish() : Promise.resolve())
        .catch((err: Error) => this.o.logger.warn({ err: err.message }, 'cluster: report failed'))
        .finally(() => { if (this.runner.running) this.scheduleReport(); });
    });
  }
}
