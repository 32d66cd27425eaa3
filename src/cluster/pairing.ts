import { createHash } from 'node:crypto';

// Which DR member serves a production member: each production member links to exactly one DR member of the
// peer site. Pairs are sticky: a production member keeps the DR member it publishes (its record's drPeer)
// while that one lives and serves no more than ceil(P / D) of them, since a new pair costs each of its VMs a
// new stream and a check. The others, in id order, take the highest-weight DR member (rendezvous hashing)
// below that bound. Both sites compute it from the same member records and agree without talking.

export interface PairingProd {
  readonly id: string;
  /** The DR member it links to now, as it published it (absent: none yet). */
  readonly drPeer?: string;
}

function weight(prodId: string, drId: string): bigint {
  return createHash('sha256').update(`${prodId}\u0000${drId}`).digest().readBigUInt64BE(0);
}

function ranked(prodId: string, drIds: readonly string[]): string[] {
  return [...drIds].sort((a, b) => {
    const wa = weight(prodId, a);
    const wb = weight(prodId, b);
    return wa !== wb ? (wa > wb ? -1 : 1) : a < b ? -1 : a > b ? 1 : 0;
  });
}

/** Every production member's DR member (none when the DR site has no member). */
export function pairMembers(prods: readonly PairingProd[], drIds: readonly string[]): Map<string, string> {
  const pairs = new Map<string, string>();
  if (drIds.length === 0) return pairs;
  const sorted = [...new Map(prods.map((p) => [p.id, p])).values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const bound = Math.ceil(sorted.length / drIds.length);
  const load = new Map<string, number>(drIds.map((d) => [d, 0]));
  const take = (p: string, d: string): void => {
    load.set(d, load.get(d)! + 1);
    pairs.set(p, d);
  };
  for (const p of sorted) if (p.drPeer !== undefined && load.has(p.drPeer) && load.get(p.drPeer)! < bound) take(p.id, p.drPeer);
  for (const p of sorted) if (!pairs.has(p.id)) take(p.id, ranked(p.id, drIds).find((d) => load.get(d)! < bound)!);
  return pairs;
}
