// Test-only switches that plant real bugs, so that a test can show the checkers of `vrg chaos` catch them
// (a checker that never fails proves nothing). Read once from VRG_PLANTED_BUG (comma-separated); a gateway
// started with one logs it at error level. Never set outside such a test.

export const plantableBugs = [
  'ack-before-fsync', // production acknowledges a write once it is written to the journal file, before its fdatasync
  'accept-bad-tag', // the link accepts a frame whose AES-GCM tag does not match (corrupt bytes get applied)
  'sync-ack-early', // Sync acknowledges a write once journaled, without waiting for DR
  'apply-out-of-order', // DR applies each chunk of direct writes to its targets last first
  'skip-staged-commit', // DR commits a staged pass (resync, repair) without applying what it staged
  'fence-admits-stale', // a cluster DR engine takes batches of an older fencing token (a stale owner) for its VM
] as const;
export type PlantedBug = (typeof plantableBugs)[number];

let planted: ReadonlySet<string> = new Set((process.env.VRG_PLANTED_BUG ?? '').split(',').map((s) => s.trim()).filter(Boolean));

export function bugPlanted(bug: PlantedBug): boolean {
  return planted.has(bug);
}

/** In-process (the simulator's test): the bugs planted from now on, replacing VRG_PLANTED_BUG's. */
export function plantBugsForTest(bugs: readonly PlantedBug[]): void {
  planted = new Set(bugs);
}

/** The planted bugs of this process, for its start-up log. */
export function plantedBugs(): string[] {
  return [...planted];
}
