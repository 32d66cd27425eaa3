import { ErrorCode, isVrgError } from '../core/errors.js';
import type { Custody, EtcdRegistry } from './etcd-registry.js';
import { placeVms, type MoveReason } from './placement.js';

// One member's turn at the placement rule: it reads the site (members, owners, VMs), computes the rule's moves
// (the same on every member, src/cluster/placement.ts), and does only its own part: it releases the VMs moved
// away from it and claims the unowned VMs moved to it. A VM moved from another live member is claimed in a
// later round, once that member has released it. Run by every member on membership and ownership changes, the
// rounds converge on the rule's placement.

export interface RoundOptions {
  /** The rule's bound on moves of owned VMs per round. */
  readonly maxMoves?: number;
  /** Measured write rate per VM, bytes/s (absent: 0). */
  readonly vmRates?: ReadonlyMap<string, number>;
  /**
   * Before a VM moved away is released: the member stops serving it (a gateway hands it over) and says how it
   * leaves it, stored with the release. A throw keeps the VM (and its owner key) for a later round.
   */
  readonly handOver?: (vmUuid: string, reason: MoveReason) => Promise<Custody | undefined>;
}

export interface RoundResult {
  readonly claimed: ReadonlyArray<{ vmUuid: string; token: number }>;
  readonly released: readonly string[];
  /** Claims another member won first (the next round sees the new owner). */
  readonly lost: readonly string[];
}

export async function runPlacementRound(registry: EtcdRegistry, options: RoundOptions = {}): Promise<RoundResult> {
  const [members, owners, vms] = await Promise.all([registry.members(), registry.owners(), registry.listVms()]);
  const ownerOf = new Map(owners.map((o) => [o.vmUuid, o.memberId]));
  const live = new Set(members.map((m) => m.id));
  const moves = placeVms(
    members.map((m) => ({ id: m.id, writeRateBytesPerSec: m.writeRateBytesPerSec, draining: m.draining })),
    vms.map((v) => ({ id: v.vmUuid, owner: ownerOf.get(v.vmUuid) ?? null, writeRateBytesPerSec: options.vmRates?.get(v.vmUuid) ?? 0 })),
    { maxMoves: options.maxMoves },
  );
  const result = { claimed: [] as Array<{ vmUuid: string; token: number }>, released: [] as string[], lost: [] as string[] };
  for (const move of moves) {
    if (move.from === registry.memberId) {
      const custody = await options.handOver?.(move.vmId, move.reason);
      await registry.release(move.vmId, custody);
      result.released.push(move.vmId);
    } else if (move.to === registry.memberId && (move.from === null || !live.has(move.from))) {
      await claimInto(registry, move.vmId, result);
    }
  }
  return result;
}

async function claimInto(registry: EtcdRegistry, vmUuid: string, result: { claimed: Array<{ vmUuid: string; token: number }>; lost: string[] }): Promise<void> {
  try {
    result.claimed.push({ vmUuid, token: await registry.claim(vmUuid) });
  } catch (err) {
    // Another member was first, or the dead owner's key has not expired yet: the next round sees which.
    if (!isVrgError(err, ErrorCode.CLUSTER_NOT_OWNER)) throw err;
    result.lost.push(vmUuid);
  }
}
