// The balancing rule of a site's gateways, as a pure function: every member computes it from the same view of
// etcd (members, owners) and gets the same answer, so no member has to decide for the others.
//
// Rule: a VM with no live owner goes to the non-draining member with the fewest VMs, ties broken by the lowest
// write rate, then the lowest id. A draining member gets nothing and its VMs move. A member's VMs are moved to
// even the load only while the VM-count spread among the non-draining members exceeds 1, at most `maxMoves` per
// call (draining and rebalancing moves share that bound: each one costs the new owner a rebuild). Placing an
// unowned VM is never bounded: it has no gateway until placed.

export interface PlacementMember {
  readonly id: string;
  /** Measured write rate of the VMs it serves, bytes/s (the second key of the rule). */
  readonly writeRateBytesPerSec: number;
  readonly draining: boolean;
}

export interface PlacementVm {
  readonly id: string;
  /** The member holding its owner key, or null. An owner that is not a live member counts as none. */
  readonly owner: string | null;
  readonly writeRateBytesPerSec: number;
}

export type MoveReason = 'unowned' | 'draining' | 'rebalance';

export interface PlacementMove {
  readonly vmId: string;
  /** The current owner (live or not), or null. */
  readonly from: string | null;
  readonly to: string;
  readonly reason: MoveReason;
}

export interface PlacementOptions {
  /** Moves of VMs that have a live owner (draining, rebalance) in this call; default unbounded. */
  readonly maxMoves?: number;
}

interface Load {
  readonly id: string;
  count: number;
  rate: number;
  readonly vms: PlacementVm[];
}

/** The moves that bring `vms` to the rule's placement over `members` (the VM counts come from `vms`). */
export function placeVms(members: readonly PlacementMember[], vms: readonly PlacementVm[], options: PlacementOptions = {}): PlacementMove[] {
  const byId = new Map(members.map((m) => [m.id, m]));
  const loads = new Map<string, Load>();
  for (const m of members) if (!m.draining) loads.set(m.id, { id: m.id, count: 0, rate: m.writeRateBytesPerSec, vms: [] });
  if (loads.size === 0) return [];
  const homeless: PlacementVm[] = [];
  const drained: PlacementVm[] = [];
  for (const vm of sortVms(vms)) {
    const load = vm.owner === null ? undefined : loads.get(vm.owner);
    if (load !== undefined) {
      load.count++;
      load.vms.push(vm);
    } else if (vm.owner !== null && byId.get(vm.owner)?.draining === true) drained.push(vm);
    else homeless.push(vm);
  }
  const moves: PlacementMove[] = homeless.map((vm) => assign(vm, lightest(loads), 'unowned'));
  let budget = options.maxMoves ?? Infinity;
  for (const vm of drained) {
    if (budget-- <= 0) return moves;
    moves.push(assign(vm, lightest(loads), 'draining'));
  }
  for (; budget > 0; budget--) {
    const move = rebalanceOne(loads);
    if (move === null) break;
    moves.push(move);
  }
  return moves;
}

/** Busiest VMs first, so that the rate tie-break spreads them; then by id, for one order on every member. */
function sortVms(vms: readonly PlacementVm[]): PlacementVm[] {
  return [...vms].sort((a, b) => b.writeRateBytesPerSec - a.writeRateBytesPerSec || compareIds(a.id, b.id));
}

function assign(vm: PlacementVm, to: Load, reason: MoveReason): PlacementMove {
  to.count++;
  to.rate += vm.writeRateBytesPerSec;
  to.vms.push(vm);
  return { vmId: vm.id, from: vm.owner, to: to.id, reason };
}

/** Fewest VMs, then lowest rate, then lowest id. */
function lightest(loads: ReadonlyMap<string, Load>): Load {
  let best: Load | undefined;
  for (const l of loads.values()) if (best === undefined || lighter(l, best)) best = l;
  return best!;
}

function lighter(a: Load, b: Load): boolean {
  return a.count !== b.count ? a.count < b.count : a.rate !== b.rate ? a.rate < b.rate : compareIds(a.id, b.id) < 0;
}

/** One VM from the fullest member to the lightest, or null when the spread is at most 1. */
function rebalanceOne(loads: ReadonlyMap<string, Load>): PlacementMove | null {
  const to = lightest(loads);
  let from = to;
  for (const l of loads.values()) if (lighter(from, l)) from = l;
  if (from.count - to.count <= 1) return null;
  // The quietest VM: the cheapest to hand over, and the fewest bytes in flight during the move.
  // Only a VM it owned before this call (one placed in this call has a move already).
  const vm = from.vms.filter((v) => v.owner === from.id)
    .sort((a, b) => a.writeRateBytesPerSec - b.writeRateBytesPerSec || compareIds(a.id, b.id))[0];
  if (vm === undefined) return null;
  from.vms.splice(from.vms.indexOf(vm), 1);
  from.count--;
  from.rate -= vm.writeRateBytesPerSec;
  return assign(vm, to, 'rebalance');
}

function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
