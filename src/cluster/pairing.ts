import { createHash } from 'node:crypto';

// Which DR member serves a production member: each production member links to exactly one DR member of the
// peer site. Rendezvous (highest-random-weight) hashing with bounded load: production members in id order each
// take the highest-weight DR member that has fewer than ceil(P / D) of them. Both sites compute it from the same
// two member lists and agree without talking; the bound keeps the DR members evenly used.

function weight(prodId: string, drId: string): bigint {
  return createHash('sha256').update(`${prodId}\u0000${drId}`).digest().readBigUInt64BE(0);
}

/** Every production member's DR member (absent when the DR site has no member). */
export function pairMembers(prodIds: readonly string[], drIds: readonly string[]): Map<string, string> {
  const pairs = new Map<string, string>();
  if (drIds.length === 0) return pairs;
  const prods = [...new Set(prodIds)].sort();
  const bound = Math.ceil(prods.length / drIds.length);
  const load = new Map<string, number>(drIds.map((d) => [d, 0]));
  for (const p of prods) {
    const ranked = [...drIds].sort((a, b) => {
      const wa = weight(p, a);
      const wb = weight(p, b);
      return wa !== wb ? (wa > wb ? -1 : 1) : a < b ? -1 : a > b ? 1 : 0;
    });
    const d = ranked.find((x) => load.get(x)! < bound)!;
    load.set(d, load.get(d)! + 1);
    pairs.set(p, d);
  }
  return pairs;
}
