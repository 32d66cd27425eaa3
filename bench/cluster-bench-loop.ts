import { EtcdRegistry, type ClusterEvent, type ClusterWatch } from '../src/cluster/etcd-registry.js';
import { runPlacementRound } from '../src/cluster/placement-round.js';

// The in-process stand-ins of the scale bench (bench/cluster-scale-bench.ts): a gateway's cluster loop, and an
// observer that follows a site's owners from one watch, so the bench can time placement without polling etcd.

export interface LoopOptions {
  /** A round runs this long after the first change that asks for one: changes arriving meanwhile share it. */
  readonly debounceMs: number;
  /** A round also runs this often: the watch carries members and owners, not new VM keys. */
  readonly resyncMs: number;
  /** How often the member publishes its load (vmCount, write rate), as a gateway would. */
  readonly reportEveryMs: number;
  /** Delay of the first report, so the members' reports do not all fall at once. */
  readonly reportOffsetMs: number;
  readonly maxMoves: number;
}

/** What a gateway's cluster wiring does with its registry: watch the site, run placement rounds, report load. */
export class GatewayLoop {
  rounds = 0;
  roundErrors = 0;
  private readonly owned = new Set<string>();
  private readonly drainingOf = new Map<string, boolean>();
  private watch: ClusterWatch | null = null;
  private timers: NodeJS.Timeout[] = [];
  private pending: NodeJS.Timeout | null = null;
  private running = false;
  private again = false;
  private stopped = false;

  constructor(readonly registry: EtcdRegistry, private readonly options: LoopOptions) {}

  async start(): Promise<void> {
    await this.registry.join();
    this.watch = await this.registry.watch((e) => this.onEvent(e));
    // Members that joined before the watch: else their first load report would look like a join.
    for (const m of await this.registry.members()) if (!this.drainingOf.has(m.id)) this.drainingOf.set(m.id, m.draining);
    this.timers.push(setInterval(() => this.nudge(), this.options.resyncMs));
    this.timers.push(setTimeout(() => {
      void this.report();
      this.timers.push(setInterval(() => void this.report(), this.options.reportEveryMs));
    }, this.options.reportOffsetMs));
    this.nudge();
  }

  /** Ask for a round: what the gateway's API does after it stores a VM. */
  nudge(): void {
    if (this.stopped || this.pending !== null) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      void this.round();
    }, this.options.debounceMs);
  }

  /** A crash: the loop stops and the lease is left to expire (no revoke). */
  async crash(): Promise<void> {
    this.halt();
    // The watch is cancelled first only so that the closed client's watch manager does not retry.
    await this.watch?.close().catch(() => undefined);
    this.registry.abandon();
  }

  async stop(): Promise<void> {
    this.halt();
    await this.watch?.close().catch(() => undefined);
    await this.registry.close();
  }

  private halt(): void {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    if (this.pending !== null) clearTimeout(this.pending);
  }

  private onEvent(e: ClusterEvent): void {
    if (e.kind === 'owner') {
      if (e.type === 'put' && e.owner?.memberId === this.registry.memberId) this.owned.add(e.vmUuid);
      else this.owned.delete(e.vmUuid);
      // Our own claims change nothing the rule would do differently.
      if (e.owner?.memberId !== this.registry.memberId) this.nudge();
    } else if (this.membershipChanged(e)) this.nudge();
  }

  /** A member joined, left, or changed its draining flag; a load report alone moves no VM. */
  private membershipChanged(e: Extract<ClusterEvent, { kind: 'member' }>): boolean {
    const before = this.drainingOf.get(e.memberId);
    if (e.member === null) {
      this.drainingOf.delete(e.memberId);
      return true;
    }
    this.drainingOf.set(e.memberId, e.member.draining);
    return before !== e.member.draining;
  }

  private async round(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      this.rounds++;
      // Claims refused while a dead owner's keys live need no retry here: their expiry is an event.
      await runPlacementRound(this.registry, { maxMoves: this.options.maxMoves });
    } catch {
      this.roundErrors++;
    } finally {
      this.running = false;
      if (this.again && !this.stopped) {
        this.again = false;
        this.nudge();
      }
    }
  }

  private async report(): Promise<void> {
    if (this.stopped) return;
    // A synthetic write rate: etcd's load does not depend on its value.
    const vmCount = this.owned.size;
    await this.registry.report({ vmCount, writeRateBytesPerSec: vmCount * 65_536 }).catch(() => { this.roundErrors++; });
  }
}

/** A site's owners and members as one watch reports them, with the time of each change. */
export class SiteObserver {
  readonly ownerOf = new Map<string, string>();
  readonly members = new Set<string>();
  /** performance.now() of each member key's deletion (a lease's end). */
  readonly memberGoneAt = new Map<string, number>();
  lastOwnerChangeAt = 0;
  private watch: ClusterWatch | null = null;

  constructor(readonly registry: EtcdRegistry) {}

  /** Started before any member joins, so the watch alone tells the whole story. */
  async start(): Promise<void> {
    this.watch = await this.registry.watch((e) => this.onEvent(e));
  }

  async stop(): Promise<void> {
    await this.watch?.close().catch(() => undefined);
    await this.registry.close();
  }

  /** VMs per live member (members with none included). */
  counts(): Record<string, number> {
    const counts: Record<string, number> = Object.fromEntries([...this.members].sort().map((m) => [m, 0]));
    for (const m of this.ownerOf.values()) if (m in counts) counts[m]!++;
    return counts;
  }

  /** How many of `vms` a live member owns. */
  ownedCount(vms: Iterable<string>): number {
    let n = 0;
    for (const vm of vms) if (this.members.has(this.ownerOf.get(vm) ?? '')) n++;
    return n;
  }

  private onEvent(e: ClusterEvent): void {
    if (e.kind === 'owner') {
      this.lastOwnerChangeAt = performance.now();
      if (e.owner !== null) this.ownerOf.set(e.vmUuid, e.owner.memberId);
      else this.ownerOf.delete(e.vmUuid);
    } else if (e.member !== null) this.members.add(e.memberId);
    else {
      this.members.delete(e.memberId);
      this.memberGoneAt.set(e.memberId, performance.now());
    }
  }
}

/** Resolves with performance.now() once `done()` holds (checked every 5 ms, locally); throws after `ms`. */
export async function when(done: () => boolean, ms: number, what: string): Promise<number> {
  const end = performance.now() + ms;
  while (!done()) {
    if (performance.now() > end) throw new Error(`cluster-scale-bench: ${what}: not done after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return performance.now();
}
