import { join } from 'node:path';
import { withTimeout } from '../../core/clock.js';
import type { Files } from '../../core/files.js';
import { createLogger, silentLogger } from '../../core/log.js';
import { seededRandom } from '../../core/random.js';
import { InlineCodec } from '../../pipeline/inline-codec.js';
import { parseConfig, type GatewayConfig } from '../../replication/config.js';
import { ProductionGateway } from '../../replication/source/production-gateway.js';
import { DrGateway } from '../../replication/target/dr-gateway.js';
import { blockBytes, historyImage, prefilledHistory, prefixConflict, prefixOf, stampedBlock } from '../stamps.js';
import { SimClock } from './sim-clock.js';
import { SimDisk } from './sim-disk.js';
import { SimFiles } from './sim-files.js';
import { HostTransport, SimNetwork, type FaultCounters } from './sim-network.js';

// One seed of the simulator: both gateways in this process over SimNetwork (cuts mid-frame, splits, delays,
// partitions, bit flips), their local files on SimFiles and their volumes on SimDisks, and a stamped write
// load (the VM's disk holds stamped data before protection, so the initial sync is a staged pass with
// content). Faults: DR target EIO and ENOSPC spells and slow writes, a DR restart, in half the seeds a
// production power cut at a seeded instant (every journal, bitmap and state write not yet fdatasync'ed is
// lost, maybe torn; the source volume loses what was not flushed; the host boots with a new boot id), and
// operations (pause and resume, consistency checks, mode flips). The checkers of `vrg chaos`:
//   - DR's replica, read whole at seeded instants, is a prefix image of the write history; while Sync's
//     promise applies (below) it holds every write acknowledged before the read;
//   - once the faults stop and the pair drains, production holds every acknowledged write and DR equals it.
// Everything runs on virtual time (SimClock): every timer, I/O latency and fault instant, with all I/O in
// memory and every random choice from the seed, so a seed replays the same run, event for event.

export interface SimOptions {
  seed: number;
  mode: 'async' | 'sync';
  /** Names the gateways' (simulated) data directories; nothing is written there. */
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
  powerCuts: number;
  /** Pauses, consistency checks and mode flips. */
  operations: number;
  network: FaultCounters;
  diskFaults: number;
  /** Wall-clock time the seed took. */
  elapsedMs: number;
  /** Virtual time the run covered, and the timers it fired: the same on every replay of the seed. */
  virtualMs: number;
  timersFired: number;
}

const vmUuid = '5e1d0c9a-7b3f-4a2e-8c61-0f9d2b7a4c35';
const volUuid = 'sim-vol-0';
const stepTimeoutMs = 30_000;
/** A run's whole virtual time: far more than its steps' bounds together. */
const runVirtualMsMax = 600_000;
/**
 * Virtual latencies: a page-cache write, an fdatasync (this machine's disk: about 0.8 ms for 1 MiB), a volume
 * write, a link chunk one way, and the VM's own time between two writes (its NBD round trip and think time).
 */
const latency = { fileIoMs: 0.01, fileSyncMs: 0.5, diskIoMs: 0.02, linkMs: 0.1, writeGapMs: 0.1 };
const bootIdPath = '/sim-host/boot_id';

function configs(dir: string, seed: number, mode: 'async' | 'sync', sizeBytes: number): { prod: GatewayConfig; dr: GatewayConfig } {
  const secret = seededRandom(seed ^ 0x2545f491).bytes(32).toString('hex');
  const side = (role: 'production' | 'dr') => parseConfig({
    role, gatewayId: `sim-${role}`, dataDir: join(dir, role),
    link: { host: 'sim', port: 0, secret },
    journalCapacityBytes: 64 * 1024 * 1024,
    protection: { syncDegradeAfterMs: 600_000 },
    intake: { bootIdPath },
    vms: [{ vmUuid, vmName: 'sim-vm', mode, compressOption: 1, encryptOption: 1,
      volumes: [{ volUuid, url: `sim://${role}/${volUuid}`, sizeBytes }] }],
  });
  return { prod: side('production'), dr: side('dr') };
}

/** One host's boot id, in its own file system: a new one at every boot after a power cut. */
async function writeBootId(files: Files, boot: number): Promise<void> {
  await files.mkdir('/sim-host');
  const fh = await files.open(bootIdPath, 'w');
  const text = Buffer.from(`sim-boot-${boot}\n`);
  await fh.write(text, 0, text.length, 0);
  await fh.sync();
  await fh.close();
}

export async function runSimSeed(o: SimOptions): Promise<SimResult> {
  const run = new SimSeed(o);
  const work = (async () => {
    try {
      await run.start();
      await run.exercise();
    } catch (err) {
      run.stalled(err as Error);
    } finally {
      await run.close();
    }
  })();
  await run.clock.run(work, runVirtualMsMax).catch((err: Error) => run.stalled(err));
  return run.result;
}

class SimSeed {
  readonly result: SimResult;
  readonly clock = new SimClock();
  private readonly rnd;
  private readonly sizeBytes: number;
  private readonly net: SimNetwork;
  private readonly cfg: { prod: GatewayConfig; dr: GatewayConfig };
  private readonly codec = new InlineCodec();
  private readonly logger = process.env.VRG_SIM_LOG ? createLogger('sim', 'debug') : silentLogger;
  private readonly prodFiles = new SimFiles({ clock: this.clock, ioMs: latency.fileIoMs, syncMs: latency.fileSyncMs });
  private readonly drFiles = new SimFiles({ clock: this.clock, ioMs: latency.fileIoMs, syncMs: latency.fileSyncMs });
  private readonly source: SimDisk;
  private readonly target: SimDisk;
  private readonly history: number[];
  private readonly prefilled: number;
  private readonly started = Date.now();
  private prod!: ProductionGateway;
  private prodHost!: HostTransport;
  private dr!: DrGateway;
  private acked: number;
  private boot = 1;
  /** Bumped at each production power cut: a write that failed across one is sent again. */
  private powerEpoch = 0;
  /** Sync's promise applies while the VM is in Sync and has been since two writes ago (see syncHolds). */
  private inSync: boolean;
  private syncSinceAcked = 0;

  constructor(private readonly o: SimOptions) {
    this.rnd = seededRandom(o.seed);
    this.sizeBytes = o.volumeSizeBytes ?? 2 * 1024 * 1024;
    this.net = new SimNetwork({
      seed: o.seed, cutProbability: this.between(5, 60) / 1000, splitProbability: 0.2, delayProbability: 0.05, maxDelayMs: 5,
      partitionProbability: this.between(0, 10) / 1000, partitionMinMs: 10, partitionMaxMs: 120, corruptProbability: this.between(0, 20) / 1000,
      clock: this.clock, latencyMs: latency.linkMs,
    });
    this.net.plan.enabled = false; // the initial sync runs clean
    this.cfg = configs(join(o.dir, `seed-${o.seed}`), o.seed, o.mode, this.sizeBytes);
    this.history = prefilledHistory(o.seed, this.sizeBytes / blockBytes, this.sizeBytes / blockBytes / 2);
    this.prefilled = this.history.length;
    this.acked = this.prefilled;
    const disk = { clock: this.clock, ioMs: latency.diskIoMs };
    this.source = new SimDisk(`sim://production/${volUuid}`, this.sizeBytes, disk);
    this.target = new SimDisk(`sim://dr/${volUuid}`, this.sizeBytes, disk);
    this.inSync = o.mode === 'sync';
    this.result = { seed: o.seed, mode: o.mode, violations: [], writes: 0, drReads: 0, drRestarts: 0, powerCuts: 0, operations: 0,
      network: this.net.plan.counters, diskFaults: 0, elapsedMs: 0, virtualMs: 0, timersFired: 0 };
  }

  private between(lo: number, hi: number): number {
    return lo + Math.floor(this.rnd.float() * (hi - lo + 1));
  }

  private step<T>(p: Promise<T>, what: string): Promise<T> {
    return withTimeout(this.clock, stepTimeoutMs, p, `${what} (seed ${this.o.seed})`);
  }

  async start(): Promise<void> {
    await this.source.write(0, historyImage(this.history, this.sizeBytes));
    await this.source.flush();
    await writeBootId(this.prodFiles.view(), this.boot);
    this.dr = await this.openDr();
    this.cfg.dr.link.port = this.dr.linkPort;
    this.cfg.prod.link.port = this.dr.linkPort;
    this.prod = await this.openProduction();
    await this.step(this.prod.drain(), 'the initial sync');
  }

  private openDr(): Promise<DrGateway> {
    return DrGateway.open(this.cfg.dr, {
      clock: this.clock, random: seededRandom(this.o.seed ^ 0x9e3779b9), transport: this.net, codec: this.codec, logger: this.logger,
      files: this.drFiles.view(), openVolume: async () => this.target,
    });
  }

  private openProduction(): Promise<ProductionGateway> {
    this.prodHost = new HostTransport(this.net);
    return ProductionGateway.open(this.cfg.prod, {
      clock: this.clock, random: seededRandom(this.o.seed ^ 0x3c6ef372 ^ this.boot), transport: this.prodHost, codec: this.codec,
      logger: this.logger, files: this.prodFiles.view(), openVolume: async () => this.source.open(),
    });
  }

  /** The faulted load, then the drain and the final checks. */
  async exercise(): Promise<void> {
    this.net.plan.enabled = true;
    let stop = false;
    const load = this.load(() => stop);
    await this.faults();
    stop = true;
    await load;
    this.result.writes = this.acked - this.prefilled;
    this.net.plan.stop();
    this.target.failing = null;
    this.target.slowMs = 0;
    await this.step(this.prod.drain(), 'the drain after the faults');
    await this.step(applied(this.dr, this.clock), 'DR applying what it acknowledged');
    const expected = historyImage(this.history.slice(0, this.acked), this.sizeBytes);
    const production = this.source.snapshot();
    if (!production.equals(expected)) this.violate(`production lost acknowledged writes: ${blocksDiffering(production, expected)}`);
    if (!this.target.snapshot().equals(production)) this.violate(`after draining, DR differs from production: ${blocksDiffering(this.target.snapshot(), production)}`);
  }

  private violate(v: string): void {
    this.result.violations.push(v);
  }

  /** One write at a time; a write whose fate a power cut made unknown is sent again, same block and stamp. */
  private async load(stopped: () => boolean): Promise<void> {
    const lrnd = seededRandom(this.o.seed ^ 0x51ed270b);
    while (!stopped()) {
      const block = Math.floor(lrnd.float() * (this.sizeBytes / blockBytes));
      this.history.push(block);
      const stamp = this.history.length;
      for (;;) {
        const epoch = this.powerEpoch;
        try {
          await this.step(this.prod.write(volUuid, block * blockBytes, stampedBlock(stamp, block)), `write ${stamp}`);
          break;
        } catch (err) {
          if (epoch === this.powerEpoch && !this.restarting) throw err;
          await this.clock.sleep(5);
        }
      }
      this.acked = stamp;
      await this.clock.sleep(latency.writeGapMs);
    }
  }

  private restarting = false;

  private async faults(): Promise<void> {
    const loadMs = this.o.loadMs ?? 400;
    const end = this.clock.elapsedMs + loadMs;
    // Half the seeds lose production's power once, at a seeded instant of the load.
    let powerCutAt = this.rnd.float() < 0.5 ? this.clock.elapsedMs + this.between(loadMs / 10, loadMs * 0.9) : null;
    let drRestarted = false;
    while (this.clock.elapsedMs < end) {
      await this.clock.sleep(this.between(10, 60));
      if (powerCutAt !== null && this.clock.elapsedMs >= powerCutAt) {
        powerCutAt = null;
        await this.powerCut();
        continue;
      }
      const roll = this.rnd.float();
      if (roll < 0.12) await this.diskErrors();
      else if (roll < 0.2) await this.slowDisk();
      else if (roll < 0.26 && !drRestarted) {
        drRestarted = true;
        await this.restartDr();
      } else if (roll < 0.36) await this.pause();
      else if (roll < 0.4) {
        this.result.operations++;
        this.prod.requestCheck(vmUuid);
      } else if (roll < 0.44) await this.modeFlip();
      else await this.replicaRead();
    }
  }

  private async diskErrors(): Promise<void> {
    this.target.failing = this.rnd.float() < 0.5 ? 'EIO' : 'ENOSPC';
    this.result.diskFaults++;
    await this.clock.sleep(this.between(10, 150));
    this.target.failing = null;
  }

  private async slowDisk(): Promise<void> {
    this.target.slowMs = this.between(1, 20);
    await this.clock.sleep(this.between(20, 100));
    this.target.slowMs = 0;
  }

  private async restartDr(): Promise<void> {
    this.result.drRestarts++;
    await this.step(this.dr.close(), 'DR close');
    this.dr = await this.step(this.openDr(), 'DR reopen');
  }

  /**
   * The production host loses power: its files keep what was synced (a seeded tear keeps a prefix of the rest),
   * its source volume what was flushed; the old instance is cut off from disk and network, and a new one boots.
   */
  private async powerCut(): Promise<void> {
    this.result.powerCuts++;
    this.restarting = true;
    this.powerEpoch++;
    const old = this.prod;
    this.prodHost.kill();
    this.prodFiles.powerCut((n) => (this.rnd.float() < 0.5 ? null
      : { keep: this.between(0, n), tornBytes: this.rnd.float() < 0.5 ? 512 * this.between(0, 16) : null }));
    this.source.powerCut();
    await withTimeout(this.clock, 10_000, old.close(), 'the powered-off instance to stop').catch(() => undefined);
    this.boot++;
    await writeBootId(this.prodFiles.view(), this.boot);
    this.prod = await this.step(this.openProduction(), 'production boot after a power cut');
    this.restarting = false;
  }

  /** An operator pauses replication (writes go on into the journal, Sync ones acknowledged locally), then resumes. */
  private async pause(): Promise<void> {
    this.result.operations++;
    this.inSync = false;
    this.prod.pause(vmUuid);
    await this.clock.sleep(this.between(10, 80));
    this.prod.resume(vmUuid);
    this.restoreSync();
  }

  private async modeFlip(): Promise<void> {
    this.result.operations++;
    this.inSync = false;
    this.prod.setMode(vmUuid, this.o.mode === 'sync' ? 'async' : 'sync');
    await this.clock.sleep(this.between(10, 80));
    this.prod.setMode(vmUuid, this.o.mode);
    this.restoreSync();
  }

  private restoreSync(): void {
    this.inSync = this.o.mode === 'sync';
    this.syncSinceAcked = this.acked;
  }

  /**
   * Sync's promise: in Sync since two writes ago at least (QD1: the write in flight at the switch back may be
   * acknowledged in Async), production in queue (no staged pass), DR's targets taking writes (a failing target
   * shows what it holds, not what DR logged).
   */
  private syncHolds(ackedNow: number): boolean {
    return this.inSync && !this.restarting && ackedNow >= this.syncSinceAcked + 2 &&
      this.prod.vmStatus(vmUuid)?.state === 'queue' && this.dr.diagnostics().vms[0]?.targetError === null;
  }

  /** A prefix of the history; while Sync's promise holds, no shorter than what was acknowledged. */
  private async replicaRead(): Promise<void> {
    const ackedBefore = this.acked;
    const holdsBefore = this.syncHolds(ackedBefore);
    const image = await this.step(this.dr.readReplica(volUuid, 0, this.sizeBytes), 'a replica read');
    const holdsAfter = this.syncHolds(ackedBefore);
    this.result.drReads++;
    const h = this.history.slice(); // with the write in flight: DR may have it before its ack
    const range = prefixOf(image, h);
    if (range === null) this.violate(`DR image is no prefix of the write history: ${prefixConflict(image, h)}`);
    else if (holdsBefore && holdsAfter && range.hi < ackedBefore) {
      const dv = this.dr.diagnostics().vms[0];
      this.violate(`Sync: DR image holds at most the first ${range.hi} writes, but ${ackedBefore} were acknowledged before the read ` +
        `(DR durable ${dv?.durableSeq}, applied ${dv?.appliedSeq}; ${this.result.powerCuts} power cuts before)`);
    }
  }

  /** A step that did not finish: the run stops there, with both sides' positions. */
  stalled(err: Error): void {
    const pv = this.prod?.diagnostics().vms[0] as { state?: string; shipper?: { shippedSeq: number; ackedSeq: number; fault: string | null } } | undefined;
    const dv = this.dr?.diagnostics().vms[0];
    this.violate(`the run could not go on: ${err.message.split('\n')[0]}; production ${pv?.state}, link ` +
      `${this.prod?.diagnostics().link.connected ? 'up' : 'down'}, shipped ${pv?.shipper?.shippedSeq}, acked ${pv?.shipper?.ackedSeq}` +
      `${pv?.shipper?.fault ? `, fault ${pv.shipper.fault}` : ''}; DR durable ${dv?.durableSeq}, applied ${dv?.appliedSeq}`);
  }

  async close(): Promise<void> {
    this.net.plan.stop();
    await this.prod?.close().catch(() => undefined);
    await this.dr?.close().catch(() => undefined);
    await this.codec.close();
    this.result.elapsedMs = Date.now() - this.started;
    this.result.virtualMs = this.clock.elapsedMs;
    this.result.timersFired = this.clock.fired;
  }
}

/** DR's targets hold everything DR acknowledged, with no target error left (its retries succeeded). */
async function applied(dr: DrGateway, clock: SimClock): Promise<void> {
  for (;;) {
    const vm = dr.diagnostics().vms[0];
    if (vm && vm.targetError === null && vm.appliedSeq >= vm.durableSeq) return;
    await clock.sleep(10);
  }
}

function blocksDiffering(a: Buffer, b: Buffer): string {
  const out: number[] = [];
  for (let at = 0; at < a.length; at += blockBytes) if (!a.subarray(at, at + blockBytes).equals(b.subarray(at, at + blockBytes))) out.push(at / blockBytes);
  return `${out.length} blocks differ (first: block ${out[0]})`;
}
