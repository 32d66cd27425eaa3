import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EtcdRegistry } from '../src/cluster/etcd-registry.js';
import { GatewayLoop, SiteObserver, when } from './cluster-bench-loop.js';
import { startEtcdProcess } from './etcd-server.js';

// Scale figures of cluster mode (issue 18, item 5): a real etcd (one member on loopback) and, in this process,
// 4 production and 4 DR gateways' cluster loops (bench/cluster-bench-loop.ts: an EtcdRegistry each, watching
// the site and running placement rounds on changes, reporting load every few seconds). Measured:
//   placement   1,000 VMs written per site (both sites at once) until each has a live owner, and the spread
//   steady      etcd requests per second over a quiet window, from etcd's own /metrics counters (gRPC messages
//               received per method, raft proposals, watch events), read before and after the window
//   takeover    one production gateway crashes (keep-alives stop, no revoke): the time until its VMs are all
//               owned by survivors, split into the wait for its lease to end and the claiming after it
// The 8 gateways share this process's one thread, so the times include their CPU contention. Nothing here
// is asserted: it measures.

export interface ClusterScaleBenchOptions {
  /** etcd's data; a temp dir (removed afterwards) if absent. */
  readonly workDir?: string;
  readonly vmsPerSite?: number;
  readonly membersPerSite?: number;
  readonly leaseTtlSec?: number;
  readonly debounceMs?: number;
  readonly resyncMs?: number;
  readonly reportEveryMs?: number;
  readonly steadyWindowMs?: number;
  readonly maxMoves?: number;
  /** VM writes in flight at once (the writing gateway's API under a bulk import). */
  readonly putConcurrency?: number;
  /** Bound of each wait; a phase that does not finish ends the run with an error. */
  readonly phaseTimeoutMs?: number;
}

const defaults: Required<Omit<ClusterScaleBenchOptions, 'workDir'>> = {
  vmsPerSite: 1000, membersPerSite: 4, leaseTtlSec: 5, debounceMs: 100, resyncMs: 10_000, reportEveryMs: 5000,
  steadyWindowMs: 20_000, maxMoves: 16, putConcurrency: 16, phaseTimeoutMs: 120_000,
};
type Settings = typeof defaults;

export interface PlacementFigures {
  vms: number;
  /** From the first VM write until the last one was stored. */
  putsMs: number;
  /** From the first VM write until every VM had a live owner. */
  allOwnedMs: number;
  /** ... until the VM-count spread among the members was at most 1. */
  balancedMs: number;
  counts: Record<string, number>;
  spread: number;
}

export interface SteadyFigures {
  windowMs: number;
  members: number;
  /** gRPC messages etcd received per second, by kind: reads (Range), writes (Put, Txn, DeleteRange, lease grant/revoke). */
  readsPerSec: number;
  writesPerSec: number;
  keepAlivesPerSec: number;
  totalPerSec: number;
  /** Every method with a non-zero rate. */
  byMethodPerSec: Record<string, number>;
  /** Raft proposals committed per second (every write, and lease grants/revokes). */
  proposalsPerSec: number;
  /** Watch events etcd sent per second (one per change per watcher). */
  watchEventsPerSec: number;
  /** Placement rounds the members ran in the window (resyncs, no change). */
  rounds: number;
}

export interface TakeoverFigures {
  member: string;
  vms: number;
  leaseTtlMs: number;
  /** From the crash until etcd ended its lease (its keys went): at most the TTL since its last renewal. */
  killToLeaseEndMs: number;
  /** From the lease's end until survivors owned all its VMs. */
  leaseEndToOwnedMs: number;
  totalMs: number;
  countsAfter: Record<string, number>;
  spreadAfter: number;
}

export interface ClusterScaleBenchResult {
  at: string;
  etcdVersion: string;
  settings: Settings;
  placement: { prod: PlacementFigures; dr: PlacementFigures };
  steady: SteadyFigures;
  takeover: TakeoverFigures;
  /** Placement rounds that failed (etcd errors), over the whole run. */
  roundErrors: number;
  seconds: number;
}

interface Site {
  readonly name: 'prod' | 'dr';
  readonly observer: SiteObserver;
  readonly loops: GatewayLoop[];
}

export async function benchClusterScale(options: ClusterScaleBenchOptions = {}): Promise<ClusterScaleBenchResult> {
  const s: Settings = { ...defaults, ...withoutUndefined(options) };
  const started = performance.now();
  const dir = options.workDir ?? await mkdtemp(join(tmpdir(), 'vrg-cluster-bench-'));
  const etcd = await startEtcdProcess(dir, 'vrg-bench');
  const sites: Site[] = [];
  try {
    sites.push(...await startSites(etcd.endpoint, s));
    const [prod, dr] = await Promise.all(sites.map((site, i) => placeSite(site, i, s)));
    const steady = await measureSteady(etcd.endpoint, sites, s);
    const takeover = await crashOne(sites[0]!, s);
    const roundErrors = sites.flatMap((site) => site.loops).reduce((n, l) => n + l.roundErrors, 0);
    return {
      at: new Date().toISOString(), etcdVersion: (await scrape(etcd.endpoint)).version, settings: s,
      placement: { prod: prod!, dr: dr! }, steady, takeover, roundErrors, seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await Promise.all(sites.flatMap((site) => [...site.loops.map((l) => l.stop()), site.observer.stop()]));
    await etcd.stop();
    if (options.workDir === undefined) await rm(dir, { recursive: true, force: true });
  }
}

function withoutUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function registry(endpoint: string, site: string, id: string, s: Settings): EtcdRegistry {
  return new EtcdRegistry({
    endpoints: [endpoint], site, leaseTtlSec: s.leaseTtlSec,
    member: { id, role: site === 'prod' ? 'production' : 'dr', apiUrl: `https://127.0.0.1:9443/${id}`, linkHost: '127.0.0.1', linkPort: 7000 },
  });
}

/** Observers first (their watches then see every change), then the members, their reports spread over the period. */
async function startSites(endpoint: string, s: Settings): Promise<Site[]> {
  const sites: Site[] = (['prod', 'dr'] as const).map((name) => ({
    name, observer: new SiteObserver(registry(endpoint, name, `${name}-observer`, s)), loops: [],
  }));
  await Promise.all(sites.map((site) => site.observer.start()));
  const all = s.membersPerSite * sites.length;
  sites.forEach((site, si) => {
    for (let i = 0; i < s.membersPerSite; i++) {
      const reportOffsetMs = ((si * s.membersPerSite + i) * s.reportEveryMs) / all;
      site.loops.push(new GatewayLoop(registry(endpoint, site.name, `${site.name}-gw-${i + 1}`, s), { ...s, reportOffsetMs }));
    }
  });
  await Promise.all(sites.flatMap((site) => site.loops.map((l) => l.start())));
  for (const site of sites) await when(() => site.observer.members.size === s.membersPerSite, s.phaseTimeoutMs, `${site.name} members to join`);
  return sites;
}

function vmUuid(site: number, i: number): string {
  return `${site}f1e2d3c-4b5a-4978-8a6b-${String(i).padStart(12, '0')}`;
}

/** One gateway's API stores every VM (a bulk import) and nudges its own loop; the watch carries the rest. */
async function placeSite(site: Site, index: number, s: Settings): Promise<PlacementFigures> {
  const vms = Array.from({ length: s.vmsPerSite }, (_, i) => vmUuid(index, i));
  const writer = site.loops[0]!;
  const t0 = performance.now();
  await inParallel(vms, s.putConcurrency, async (vm) => {
    await writer.registry.putVm(vm, { name: `${site.name}-vm-${vm.slice(-4)}`, rpoSec: 15 });
    writer.nudge();
  });
  const putsAt = performance.now();
  const ownedAt = await when(() => site.observer.ownedCount(vms) === vms.length, s.phaseTimeoutMs, `${site.name}: every VM owned`);
  const balancedAt = await when(() => spread(site.observer.counts()) <= 1, s.phaseTimeoutMs, `${site.name}: spread <= 1`);
  const counts = site.observer.counts();
  return { vms: vms.length, putsMs: putsAt - t0, allOwnedMs: ownedAt - t0, balancedMs: balancedAt - t0, counts, spread: spread(counts) };
}

async function inParallel<T>(items: readonly T[], width: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await work(items[next++]!);
  }));
}

function spread(counts: Record<string, number>): number {
  const values = Object.values(counts);
  return values.length === 0 ? 0 : Math.max(...values) - Math.min(...values);
}

/** Once no owner has changed for a second, etcd's counters over the window, per second. */
async function measureSteady(endpoint: string, sites: Site[], s: Settings): Promise<SteadyFigures> {
  const quietSince = () => Math.min(...sites.map((site) => performance.now() - site.observer.lastOwnerChangeAt));
  await when(() => quietSince() > 1000, s.phaseTimeoutMs, 'placement to go quiet');
  const loops = sites.flatMap((site) => site.loops);
  const rounds = () => loops.reduce((n, l) => n + l.rounds, 0);
  const [before, rounds0, t0] = [await scrape(endpoint), rounds(), performance.now()];
  await new Promise((r) => setTimeout(r, s.steadyWindowMs));
  const after = await scrape(endpoint);
  const windowMs = performance.now() - t0;
  return { ...rates(before, after, windowMs), windowMs, members: loops.length, rounds: rounds() - rounds0 };
}

/** Crash the second production gateway (the first wrote the VMs): until its VMs have live owners again. */
async function crashOne(site: Site, s: Settings): Promise<TakeoverFigures> {
  const victim = site.loops[1]!;
  const id = victim.registry.memberId;
  const theirs = [...site.observer.ownerOf].filter(([, m]) => m === id).map(([vm]) => vm);
  const t0 = performance.now();
  await victim.crash();
  const leaseEndAt = await when(() => site.observer.memberGoneAt.has(id), s.phaseTimeoutMs, `${id}'s lease to end`);
  const ownedAt = await when(() => site.observer.ownedCount(theirs) === theirs.length, s.phaseTimeoutMs, `${id}'s VMs to be taken over`);
  const countsAfter = site.observer.counts();
  return {
    member: id, vms: theirs.length, leaseTtlMs: s.leaseTtlSec * 1000, killToLeaseEndMs: leaseEndAt - t0,
    leaseEndToOwnedMs: ownedAt - leaseEndAt, totalMs: ownedAt - t0, countsAfter, spreadAfter: spread(countsAfter),
  };
}

interface Scrape {
  version: string;
  /** `grpc_server_msg_received_total` by method. */
  received: Map<string, number>;
  proposals: number;
  watchEvents: number;
}

/** etcd's Prometheus counters that count requests. */
async function scrape(endpoint: string): Promise<Scrape> {
  const text = await (await fetch(`${endpoint}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  const out: Scrape = { version: '?', received: new Map(), proposals: 0, watchEvents: 0 };
  for (const line of text.split('\n')) {
    const received = /^grpc_server_msg_received_total\{grpc_method="(\w+)".*\} (\S+)$/.exec(line);
    if (received) out.received.set(received[1]!, Number(received[2]));
    else if (line.startsWith('etcd_server_proposals_committed_total ')) out.proposals = Number(line.split(' ')[1]);
    else if (line.startsWith('etcd_debugging_mvcc_events_total ')) out.watchEvents = Number(line.split(' ')[1]);
    const version = /^etcd_server_version\{server_version="([^"]+)"\}/.exec(line);
    if (version) out.version = version[1]!;
  }
  return out;
}

const readMethods = new Set(['Range']);
const writeMethods = new Set(['Put', 'Txn', 'DeleteRange', 'LeaseGrant', 'LeaseRevoke']);

function rates(before: Scrape, after: Scrape, windowMs: number): Omit<SteadyFigures, 'windowMs' | 'members' | 'rounds'> {
  const perSec = (n: number) => n / (windowMs / 1000);
  const byMethodPerSec: Record<string, number> = {};
  for (const [method, n] of after.received) {
    const delta = n - (before.received.get(method) ?? 0);
    if (delta > 0) byMethodPerSec[method] = perSec(delta);
  }
  const sum = (pick: (m: string) => boolean) => Object.entries(byMethodPerSec).reduce((t, [m, r]) => t + (pick(m) ? r : 0), 0);
  return {
    readsPerSec: sum((m) => readMethods.has(m)), writesPerSec: sum((m) => writeMethods.has(m)),
    keepAlivesPerSec: byMethodPerSec.LeaseKeepAlive ?? 0, totalPerSec: sum(() => true), byMethodPerSec,
    proposalsPerSec: perSec(after.proposals - before.proposals), watchEventsPerSec: perSec(after.watchEvents - before.watchEvents),
  };
}

export function formatClusterScaleBench(r: ClusterScaleBenchResult): string {
  const s = r.settings;
  const sec = (ms: number) => (ms / 1000).toFixed(2).padStart(7);
  const lines = [
    `cluster scale (etcd ${r.etcdVersion}, one member on loopback; ${s.membersPerSite} + ${s.membersPerSite} gateways in one process, ` +
      `lease TTL ${s.leaseTtlSec} s, rounds ${s.debounceMs} ms after a change, maxMoves ${s.maxMoves}):`,
    '  placement   VMs   stored s  all owned s  balanced s  VMs per member',
  ];
  for (const [name, p] of Object.entries(r.placement)) {
    lines.push(`  ${name.padEnd(8)} ${String(p.vms).padStart(6)} ${sec(p.putsMs)}    ${sec(p.allOwnedMs)}   ${sec(p.balancedMs)}   ` +
      `${Object.values(p.counts).join('/')} (spread ${p.spread})`);
  }
  const t = r.takeover;
  lines.push(`  takeover: ${t.member} crashed owning ${t.vms} VMs; all owned by survivors ${sec(t.totalMs).trim()} s after the crash = ` +
    `${sec(t.killToLeaseEndMs).trim()} s until etcd ended its lease (TTL ${t.leaseTtlMs / 1000} s) + ${sec(t.leaseEndToOwnedMs).trim()} s claiming; ` +
    `then ${Object.values(t.countsAfter).join('/')} (spread ${t.spreadAfter})`);
  const st = r.steady;
  const f = (n: number) => n.toFixed(1);
  lines.push(`  steady state (${f(st.windowMs / 1000)} s, ${st.members} members reporting every ${s.reportEveryMs / 1000} s, a resync round ` +
    `every ${s.resyncMs / 1000} s each): etcd received ${f(st.totalPerSec)} req/s = reads ${f(st.readsPerSec)} + writes ${f(st.writesPerSec)} + ` +
    `keep-alives ${f(st.keepAlivesPerSec)}; ${f(st.proposalsPerSec)} raft proposals/s, ${f(st.watchEventsPerSec)} watch events/s, ${st.rounds} rounds`);
  lines.push(`    by method: ${Object.entries(st.byMethodPerSec).map(([m, v]) => `${m} ${f(v)}`).join(', ')}`);
  lines.push(`  (${r.roundErrors} failed rounds; ${r.seconds.toFixed(0)} s for the run)`);
  return lines.join('\n');
}

// `node dist/bench/cluster-scale-bench.js`: this section alone; writes bench/results/cluster-scale-<time>.json.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(import.meta.dirname ?? '.', '..', '..');
  benchClusterScale()
    .then(async (r) => {
      await mkdir(join(root, 'bench', 'results'), { recursive: true });
      const file = join(root, 'bench', 'results', `cluster-scale-${r.at.replaceAll(':', '-')}.json`);
      await writeFile(file, JSON.stringify(r, null, 2));
      process.stdout.write(`${formatClusterScaleBench(r)}\nresult: ${file}\n`);
    })
    .catch((err) => {
      process.stderr.write(`cluster-scale-bench: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    });
}
