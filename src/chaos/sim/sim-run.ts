import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { systemClock, withTimeout } from '../../core/clock.js';
import { createLogger, silentLogger } from '../../core/log.js';
import { seededRandom } from '../../core/random.js';
import { InlineCodec } from '../../pipeline/inline-codec.js';
import { parseConfig } from '../../replication/config.js';
import { ProductionGateway } from '../../replication/source/production-gateway.js';
import { DrGateway } from '../../replication/target/dr-gateway.js';
import { blockBytes, historyImage, prefilledHistory, prefixConflict, prefixOf, stampedBlock } from '../stamps.js';
import { SimDisk } from './sim-disk.js';
import { SimNetwork, type FaultCounters } from './sim-network.js';

// One seed of the simulator: both gateways in this process over SimNetwork (cuts mid-frame, splits, delays,
// partitions, bit flips), the volumes on SimDisks (DR target EIO and ENOSPC spells, slow writes), a DR
// restart, operations (pause and resume, consistency checks, mode flips), and a stamped write load, with the
// checkers of `vrg chaos`:
//   - DR's replica, read whole at seeded instants, is a prefix image of the write history; in Sync (production
//     in queue, the VM not flipped to Async) it holds every write acknowledged before the read;
//   - once the faults stop and the pair drains, production holds every acknowledged write and DR equals it.
// Every fault decision comes from the seed; the timers are the wall clock's, so a seed replays the same fault
// plan, not the same interleaving to the microsecond (the engine's journal runs on real files).

export interface SimOptions {
  seed: number;
  mode: 'async' | 'sync';
  /** Working directory: the gateways' data directories for this seed go under it and are removed after. */
  dir: string;
  /** How long the faulted load runs (default 400 ms). */
  loadMs?: number;
  volumeSizeBytes?: number;
}

export interface SimResult {
  seed: number;
  mode: 'async' | 'sync';
  violations: string[];
  writes: number;
  drReads: number;
  drRestarts: number;
  /** Pauses, consistency checks and mode flips. */
  operations: number;
  network: FaultCounters;
  diskFaults: number;
  elapsedMs: number;
}

const vmUuid = '5e1d0c9a-7b3f-4a2e-8c61-0f9d2b7a4c35';
const volUuid = 'sim-vol-0';
const stepTimeoutMs = 30_000;

function configs(dir: string, mode: 'async' | 'sync', sizeBytes: number) {
  const secret = randomBytes(32).toString('hex');
  const side = (role: 'production' | 'dr') => parseConfig({
    role, gatewayId: `sim-${role}`, dataDir: join(dir, role),
    link: { host: 'sim', port: 0, secret },
    journalCapacityBytes: 64 * 1024 * 1024,
    protection: { syncDegradeAfterMs: 600_000 },
    vms: [{ vmUuid, vmName: 'sim-vm', mode, compressOption: 1, encryptOption: 1,
      volumes: [{ volUuid, url: `sim://${role}/${volUuid}`, sizeBytes }] }],
  });
  return { prod: side('production'), dr: side('dr') };
}

export async function runSimSeed(o: SimOptions): Promise<SimResult> {
  const started = Date.now();
  const rnd = seededRandom(o.seed);
  const between = (lo: number, hi: number): number => lo + Math.floor(rnd.float() * (hi - lo + 1));
  const sizeBytes = o.volumeSizeBytes ?? 2 * 1024 * 1024;
  const dir = join(o.dir, `seed-${o.seed}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const net = new SimNetwork({
    seed: o.seed, cutProbability: between(5, 60) / 1000, splitProbability: 0.2, delayProbability: 0.05, maxDelayMs: 5,
    partitionProbability: between(0, 10) / 1000, partitionMinMs: 10, partitionMaxMs: 120, corruptProbability: between(0, 20) / 1000,
  });
  net.plan.enabled = false; // the initial sync runs clean
  const disks = new Map<string, SimDisk>();
  const openVolume = async (url: string, opts: { sizeBytes?: number } = {}): Promise<SimDisk> => {
    let d = disks.get(url);
    if (!d) disks.set(url, d = new SimDisk(url, opts.sizeBytes ?? sizeBytes));
    return d;
  };
  // The VM's disk holds data before it is protected: the initial sync is a staged pass with content.
  const history = prefilledHistory(o.seed, sizeBytes / blockBytes, sizeBytes / blockBytes / 2);
  const source = new SimDisk(`sim://production/${volUuid}`, sizeBytes);
  await source.write(0, historyImage(history, sizeBytes));
  disks.set(source.url, source);
  const cfg = configs(dir, o.mode, sizeBytes);
  const codec = new InlineCodec();
  const deps = { clock: systemClock, random: seededRandom(o.seed ^ 0x9e3779b9), transport: net, codec, logger: process.env.VRG_SIM_LOG ? createLogger('sim', 'debug') : silentLogger, openVolume };
  const violations: string[] = [];
  const result: SimResult = { seed: o.seed, mode: o.mode, violations, writes: 0, drReads: 0, drRestarts: 0, operations: 0,
    network: net.plan.counters, diskFaults: 0, elapsedMs: 0 };
  let dr = await DrGateway.open(cfg.dr, deps);
  cfg.dr.link.port = dr.linkPort;
  cfg.prod.link.port = dr.linkPort;
  const prod = await ProductionGateway.open(cfg.prod, deps);
  const step = <T>(p: Promise<T>, what: string): Promise<T> => withTimeout(systemClock, stepTimeoutMs, p, `${what} (seed ${o.seed})`);
  try {
    await step(prod.drain(), 'the initial sync');
    net.plan.enabled = true;
    const prefilled = history.length;
    let acked = prefilled;
    let stop = false;
    const load = (async () => {
      const lrnd = seededRandom(o.seed ^ 0x51ed270b);
      while (!stop) {
        const block = Math.floor(lrnd.float() * (sizeBytes / blockBytes));
        history.push(block);
        await step(prod.write(volUuid, block * blockBytes, stampedBlock(history.length, block)), `write ${history.length}`);
        acked = history.length;
      }
    })();
    const target = (): SimDisk => disks.get(`sim://dr/${volUuid}`)!;
    const faults = (async () => {
      const end = Date.now() + (o.loadMs ?? 400);
      let restarted = false;
      // Sync's promise applies while the VM is in Sync and has been since two writes ago (QD1: the write in
      // flight at the switch back may be acknowledged in Async), with production in queue (no pause or pass).
      let inSync = o.mode === 'sync';
      let syncSinceAcked = 0;
      const restoreSync = (): void => {
        inSync = o.mode === 'sync';
        syncSinceAcked = acked;
      };
      const syncHolds = (ackedNow: number): boolean => inSync && ackedNow >= syncSinceAcked + 2 &&
        prod.vmStatus(vmUuid)?.state === 'queue' && dr.diagnostics().vms[0]?.targetError === null;
      while (Date.now() < end) {
        await sleep(between(10, 60));
        const roll = rnd.float();
        if (roll < 0.12) {
          target().failing = rnd.float() < 0.5 ? 'EIO' : 'ENOSPC';
          result.diskFaults++;
          await sleep(between(10, 150));
          target().failing = null;
        } else if (roll < 0.2) {
          target().slowMs = between(1, 20);
          await sleep(between(20, 100));
          target().slowMs = 0;
        } else if (roll < 0.28 && !restarted) {
          restarted = true;
          result.drRestarts++;
          await step(dr.close(), 'DR close');
          dr = await step(DrGateway.open(cfg.dr, deps), 'DR reopen');
        } else if (roll < 0.34) {
          // An operator pauses replication (writes go on into the journal), then resumes.
          // Sync writes are acknowledged without DR meanwhile (replication is paused, by the operator's choice).
          result.operations++;
          inSync = false;
          prod.pause(vmUuid);
          await sleep(between(10, 80));
          prod.resume(vmUuid);
          restoreSync();
        } else if (roll < 0.38) {
          result.operations++;
          prod.requestCheck(vmUuid);
        } else if (roll < 0.42) {
          result.operations++;
          inSync = false;
          prod.setMode(vmUuid, o.mode === 'sync' ? 'async' : 'sync');
          await sleep(between(10, 80));
          prod.setMode(vmUuid, o.mode);
          restoreSync();
        } else {
          // A replica read: a prefix of the history; while Sync's promise holds, no shorter than what was
          // acknowledged (a failing DR target shows what it holds, not what DR logged).
          const ackedBefore = acked;
          const holdsBefore = syncHolds(ackedBefore);
          const image = await step(dr.readReplica(volUuid, 0, sizeBytes), 'a replica read');
          const holdsAfter = syncHolds(ackedBefore);
          result.drReads++;
          const h = history.slice(); // with the write in flight: DR may have it before its ack
          const range = prefixOf(image, h);
          if (range === null) violations.push(`DR image is no prefix of the write history: ${prefixConflict(image, h)}`);
          else if (holdsBefore && holdsAfter && range.hi < ackedBefore) {
            violations.push(`Sync: DR image holds at most the first ${range.hi} writes, but ${ackedBefore} were acknowledged before the read`);
          }
        }
      }
    })();
    await faults;
    stop = true;
    await load;
    result.writes = acked - prefilled;
    net.plan.stop();
    target().failing = null;
    target().slowMs = 0;
    await step(prod.drain(), 'the drain after the faults');
    await step(applied(dr), 'DR applying what it acknowledged');
    const expected = historyImage(history.slice(0, acked), sizeBytes);
    const production = source.snapshot();
    if (!production.equals(expected)) violations.push('production lost acknowledged writes: its volume differs from the history');
    if (!target().snapshot().equals(production)) violations.push('after draining, DR differs from production');
  } catch (err) {
    const pv = prod.diagnostics().vms[0] as { state?: string; shipper?: { connected: boolean; shippedSeq: number; ackedSeq: number; fault: string | null } } | undefined;
    const dv = dr.diagnostics().vms[0];
    violations.push(`the run could not go on: ${(err as Error).message.split('\n')[0]}; production ${pv?.state}, link ` +
      `${prod.diagnostics().link.connected ? 'up' : 'down'}, shipped ${pv?.shipper?.shippedSeq}, acked ${pv?.shipper?.ackedSeq}` +
      `${pv?.shipper?.fault ? `, fault ${pv.shipper.fault}` : ''}; DR durable ${dv?.durableSeq}, applied ${dv?.appliedSeq}`);
  } finally {
    net.plan.stop();
    await prod.close().catch(() => undefined);
    await dr.close().catch(() => undefined);
    await codec.close();
    await rm(dir, { recursive: true, force: true });
  }
  result.elapsedMs = Date.now() - started;
  return result;
}

/** Seeds `parallel` at a time (each seed is mostly waiting on its link's timers); results in seed order. */
async function runEach(o: { from: number; count: number; dir: string; mode?: 'async' | 'sync'; parallel?: number }, results: SimResult[],
    out: (l: string) => void): Promise<void> {
  let next = o.from;
  const end = o.from + o.count;
  const worker = async (): Promise<void> => {
    while (next < end) {
      const seed = next++;
      const mode = o.mode ?? (seed % 2 === 0 ? 'sync' : 'async');
      const r = await runSimSeed({ seed, mode, dir: o.dir });
      results.push(r);
      if (r.violations.length > 0) out(`sim: seed ${seed} (${mode}) FAILED: ${r.violations[0]} — replay: vrg sim --from ${seed} --seeds 1 --mode ${mode}`);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.parallel ?? 4, o.count)) }, worker));
  results.sort((a, b) => a.seed - b.seed);
}

/** DR's targets hold everything DR acknowledged, with no target error left (its retries succeeded). */
async function applied(dr: DrGateway): Promise<void> {
  for (;;) {
    const vm = dr.diagnostics().vms[0];
    if (vm && vm.targetError === null && vm.appliedSeq >= vm.durableSeq) return;
    await sleep(10);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `vrg sim`: seeds from..from+count-1, alternating Async and Sync; the failures with their replay commands. */
export async function runSimSeeds(o: { from: number; count: number; dir: string; mode?: 'async' | 'sync'; parallel?: number; out?: (l: string) => void }):
    Promise<SimResult[]> {
  const out = o.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const results: SimResult[] = [];
  // The engine's timers never hold the event loop (the link's reconnects, the step bounds): in-process, with no
  // socket open, nothing else would, and the process would end mid-run with exit code 0.
  const keepAlive = setInterval(() => {}, 60_000);
  try {
    await runEach(o, results, out);
  } finally {
    clearInterval(keepAlive);
  }
  const failed = results.filter((r) => r.violations.length > 0);

  const sum = (f: (r: SimResult) => number): number => results.reduce((n, r) => n + f(r), 0);
  out(`sim: ${results.length} seeds, ${failed.length} failed; ${sum((r) => r.writes)} writes, ${sum((r) => r.drReads)} DR images checked, ` +
    `${sum((r) => r.network.cuts)} link cuts, ${sum((r) => r.network.corrupted)} bit flips, ${sum((r) => r.diskFaults)} disk fault spells, ` +
    `${sum((r) => r.drRestarts)} DR restarts, ${sum((r) => r.operations)} operations (pause, check, mode flip); ${(sum((r) => r.elapsedMs) / 1000).toFixed(1)} s` +
    (failed.length > 0 ? `; failing seeds: ${failed.map((r) => r.seed).join(' ')}` : ''));
  return results;
}
