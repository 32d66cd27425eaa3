import { randomBytes } from 'node:crypto';
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { systemClock, withTimeout } from '../core/clock.js';
import { seededRandom } from '../core/random.js';
import { FaultProxyServer } from '../chaos/fault-proxy/fault-proxy-server.js';
import type { FaultProxy, ProxyCounters } from '../chaos/fault-proxy/proxy.js';
import { describeFault, diskFaultKinds, planSchedule, type FaultKind, type ScheduledFault } from '../chaos/schedule.js';
import { TargetAgent } from '../chaos/target-agent.js';
import { readImage, StampedLoad, type Endpoint } from '../chaos/stamped-load.js';
import { blockBytes, historyImage, prefilledHistory, prefixConflict, prefixOf } from '../chaos/stamps.js';
import { spawnGateway, type GatewayChild } from './gateway-child.js';
import type { IpcMessage, VmOperation } from './gateway-process.js';

// `vrg chaos`: a real gateway pair (two processes) under a stamped write load and a seeded schedule of faults
// (src/chaos/schedule.ts), with checkers during and after it:
//   - during: DR's replica, read whole through its export at seeded instants, is always a prefix image of
//     the write history (no torn batch, no reordering, no corrupt frame applied); in Sync it holds at least
//     every write acknowledged when the read began (while production is in queue: during a staged resync
//     or repair pass DR shows the image from before the pass until its commit);
//   - after the faults end and the pair drains: production holds every acknowledged write (none lost to a
//     kill), and DR equals production byte for byte; both gateways stop cleanly.
// The link runs through an in-process fault proxy; a violation ends the run with exit 1, the seed and the
// command that replays the schedule.

export interface ChaosOptions {
  seed: number;
  durationMs: number;
  faults: readonly FaultKind[];
  mode: 'async' | 'sync';
  dir: string;
  volumeSizeBytes?: number;
  /** How long the pair may take to drain once the faults are over (default 180 s); longer is a violation. */
  drainTimeoutMs?: number;
}

export interface ChaosReport {
  seed: number;
  mode: 'async' | 'sync';
  durationMs: number;
  replay: string;
  faults: Array<ScheduledFault & { startedAtMs: number; recoveredAtMs: number }>;
  /** prefilled: stamps on the disk before protection (counted in acknowledged). */
  writes: { acknowledged: number; resent: number; prefilled: number };
  /** skipped: DR down under the read; syncExempt: Sync's check not applied (a staged pass was running). */
  drReads: { checked: number; skipped: number; syncExempt: number };
  proxy: ProxyCounters;
  violations: string[];
  passed: boolean;
}

type Ready = Extract<IpcMessage, { type: 'ready' }>;
const vmUuid = '6c0a8f0e-3b1d-4e7a-9c52-4d1e0c4a05e1';
const volUuid = `${vmUuid.slice(0, 24)}000000000000`;
const readyTimeoutMs = 60_000;
const drainTimeoutMsDefault = 180_000;

export function replayCommand(o: ChaosOptions): string {
  return `vrg chaos --seed ${o.seed} --duration ${o.durationMs / 1000}s --faults ${o.faults.join(',')} --mode ${o.mode}`;
}

/** One side of the pair: its process, config file, and whether it is up (not killed) and running (not frozen). */
class Side {
  child: GatewayChild | null = null;
  frozen = false;
  private expectExit = false;
  constructor(readonly role: 'production' | 'dr', private readonly dir: string, private readonly onDeath: (why: string) => void) {}

  async start(): Promise<Ready> {
    const child = spawnGateway(this.role, join(this.dir, `${this.role}.json`), join(this.dir, `${this.role}.log`));
    this.child = child;
    this.expectExit = false;
    void child.exited.then((code) => {
      if (!this.expectExit && this.child === child) this.onDeath(`${this.role} gateway exited on its own (${code ?? 'signal'})`);
    });
    return withTimeout(systemClock, readyTimeoutMs, child.request<Ready>(null, 'ready'), `${this.role} gateway ready`);
  }

  async kill(): Promise<void> {
    this.expectExit = true;
    if (this.frozen) this.thaw();
    await this.child?.kill();
    this.child = null;
  }

  freeze(): void {
    this.child?.proc.kill('SIGSTOP');
    this.frozen = true;
  }

  thaw(): void {
    this.child?.proc.kill('SIGCONT');
    this.frozen = false;
  }

  async stop(): Promise<number | null> {
    this.expectExit = true;
    if (this.frozen) this.thaw();
    const code = await this.child?.stop();
    this.child = null;
    return code ?? null;
  }

  get up(): boolean {
    return this.child !== null && !this.frozen;
  }
}

/**
 * When Sync's promise (every acknowledged write is on DR) applies to a DR read: the VM is in Sync, and has been
 * since two writes ago at least (QD1: the write after the switch back may have been sent, and acknowledged, in
 * Async). A pause or a staged pass shows as production's state not being queue (checked by the sampler).
 */
class SyncPromise {
  private inSync: boolean;
  private sinceAcked = 0;
  constructor(mode: 'async' | 'sync') {
    this.inSync = mode === 'sync';
  }

  suspend(): void {
    this.inSync = false;
  }

  restore(acked: number): void {
    this.inSync = true;
    this.sinceAcked = acked;
  }

  holdsFor(acked: number): boolean {
    return this.inSync && acked >= this.sinceAcked + 2;
  }
}

function gatewayConfig(role: 'production' | 'dr', dir: string, secret: string, o: ChaosOptions, sizeBytes: number, targetUrl: string | null) {
  const disk = join(dir, role === 'production' ? 'source' : 'target', 'disk0.img');
  return {
    role, gatewayId: `chaos-${role}`, dataDir: join(dir, role), codecThreads: 1,
    link: { host: '127.0.0.1', port: 0, secret },
    nbd: { host: '127.0.0.1', port: 0 },
    journalCapacityBytes: 256 * 1024 * 1024,
    // Sync must not degrade to Async during a fault (every fault here is shorter): each ack means DR has it.
    protection: { syncDegradeAfterMs: 600_000 },
    vms: [{
      vmUuid, vmName: 'chaos-vm', mode: o.mode, compressOption: 1, encryptOption: 1,
      volumes: [role === 'dr' && targetUrl !== null ? { volUuid, url: targetUrl, sizeBytes } : { volUuid, path: disk, sizeBytes }],
    }],
  };
}

export async function runChaos(o: ChaosOptions, out: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<ChaosReport> {
  const dir = resolve(o.dir);
  const sizeBytes = o.volumeSizeBytes ?? 8 * 1024 * 1024;
  const schedule = planSchedule(o);
  for (const sub of ['production', 'dr', 'source', 'target']) await rm(join(dir, sub), { recursive: true, force: true });
  // The VM's disk holds data before it is protected: the initial sync is a staged pass with content.
  const prefilled = prefilledHistory(o.seed, sizeBytes / blockBytes, sizeBytes / blockBytes / 2);
  for (const sub of ['source', 'target']) {
    await mkdir(join(dir, sub), { recursive: true });
    const fh = await open(join(dir, sub, 'disk0.img'), 'w');
    await fh.truncate(sizeBytes);
    if (sub === 'source') await fh.write(historyImage(prefilled, sizeBytes), 0, sizeBytes, 0);
    await fh.close();
  }
  const violations: string[] = [];
  const violate = (v: string): void => {
    violations.push(v);
    out(`VIOLATION: ${v}`);
  };
  const secret = randomBytes(32).toString('hex');
  // Disk faults need DR's target behind a write agent that can fail and slow down on cue.
  const agent = schedule.some((f) => diskFaultKinds.includes(f.kind)) ? await TargetAgent.start(join(dir, 'target', 'disk0.img'), dir) : null;
  const cfg = { prod: gatewayConfig('production', dir, secret, o, sizeBytes, null), dr: gatewayConfig('dr', dir, secret, o, sizeBytes, agent?.url ?? null) };
  const writeConfigs = () => Promise.all([writeFile(join(dir, 'production.json'), JSON.stringify(cfg.prod, null, 2)),
    writeFile(join(dir, 'dr.json'), JSON.stringify(cfg.dr, null, 2))]);
  await writeConfigs();
  const prod = new Side('production', dir, violate);
  const dr = new Side('dr', dir, violate);
  const proxyServer = new FaultProxyServer({ seed: o.seed });
  const report: ChaosReport = {
    seed: o.seed, mode: o.mode, durationMs: o.durationMs, replay: replayCommand(o), faults: [],
    writes: { acknowledged: 0, resent: 0, prefilled: 0 }, drReads: { checked: 0, skipped: 0, syncExempt: 0 },
    proxy: { connections: 0, corrupted: 0, reset: 0, limited: 0, timedOut: 0, dropped: 0 }, violations, passed: false,
  };
  let load: StampedLoad | null = null;
  try {
    // Fixed ports after the first start, so that a restarted gateway is where its peer and the load look.
    const drReady = await dr.start();
    Object.assign(cfg.dr, { link: { ...cfg.dr.link, port: drReady.linkPort! }, nbd: { host: '127.0.0.1', port: drReady.nbdPort! } });
    const proxy = await proxyServer.create({ name: 'link', listen: '127.0.0.1:0', upstream: `127.0.0.1:${drReady.linkPort}` });
    const proxyPort = Number(proxy.listen.slice(proxy.listen.lastIndexOf(':') + 1));
    cfg.prod.link.port = proxyPort;
    await writeConfigs();
    const prodReady = await prod.start();
    cfg.prod.nbd.port = prodReady.nbdPort!;
    await writeConfigs();
    const prodAt: Endpoint = { host: '127.0.0.1', port: prodReady.nbdPort! };
    const drAt: Endpoint = { host: '127.0.0.1', port: drReady.nbdPort! };
    out(`chaos: seed ${o.seed}, ${o.mode}, ${(o.durationMs / 1000).toFixed(0)} s, ${schedule.length} faults; production nbd://127.0.0.1:${prodAt.port}/${volUuid}, dr link through the fault proxy ${proxy.listen}`);
    out(`chaos: replay with: ${report.replay}`);
    load = new StampedLoad(() => (prod.child ? prodAt : null), volUuid, sizeBytes / blockBytes, o.seed, 120_000, prefilled);
    const started = Date.now();
    load.start();
    const sync = new SyncPromise(o.mode);
    const sampler = sampleDr({ seed: o.seed, prod, dr, drAt, load, sizeBytes, sync, report, violate });
    for (const f of schedule) {
      await sleepUntil(started + f.atMs);
      const startedAtMs = Date.now() - started;
      out(`+${(startedAtMs / 1000).toFixed(1)}s #${f.n} ${describeFault(f)} (writes acknowledged: ${load.acked})`);
      await applyFault(f, { prod, dr, proxy, agent, mode: o.mode, sync, acked: () => load!.acked });
      const recoveredAtMs = Date.now() - started;
      report.faults.push({ ...f, startedAtMs, recoveredAtMs });
      out(`+${(recoveredAtMs / 1000).toFixed(1)}s #${f.n} recovered`);
    }
    await sleepUntil(started + o.durationMs);
    await sampler.stop();
    await load.stop();
    out(`chaos: faults over, ${load.acked} writes acknowledged (${load.resent} sent again); draining`);
    await converge({ prod, dr, prodAt, drAt, load, sizeBytes, violate, drainTimeoutMs: o.drainTimeoutMs ?? drainTimeoutMsDefault });
  } catch (err) {
    violate(`the run could not go on: ${(err as Error).message}`);
  } finally {
    if (load) report.writes = { acknowledged: load.acked, resent: load.resent, prefilled: prefilled.length };
    report.proxy = proxyServer.all().link ? proxyServer.proxy('link').counters : report.proxy;
    for (const side of [prod, dr]) {
      const code = await side.stop().catch(() => null);
      if (code !== 0 && code !== null) violate(`${side.role} gateway exited with code ${code} at the end (see ${join(dir, `${side.role}.log`)})`);
    }
    await proxyServer.close();
    await agent?.stop();
  }
  report.passed = violations.length === 0;
  await writeFile(join(dir, 'chaos-report.json'), JSON.stringify(report, null, 2));
  out(report.passed
    ? `chaos: PASSED seed ${o.seed}: ${report.faults.length} faults, ${report.writes.acknowledged} writes, ${report.drReads.checked} DR images checked; report ${join(dir, 'chaos-report.json')}`
    : `chaos: FAILED seed ${o.seed}: ${violations.length} violation(s); replay: ${report.replay}; report ${join(dir, 'chaos-report.json')}`);
  return report;
}

function sleepUntil(atMs: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.max(0, atMs - Date.now())));
}

interface FaultTargets { prod: Side; dr: Side; proxy: FaultProxy; agent: TargetAgent | null; mode: 'async' | 'sync'; sync: SyncPromise; acked(): number }

async function applyFault(f: ScheduledFault, x: FaultTargets): Promise<void> {
  const wait = (): Promise<void> => new Promise((r) => setTimeout(r, f.forMs));
  const toxic = async (type: string, streams: Array<'upstream' | 'downstream'>, extra?: () => void): Promise<void> => {
    for (const stream of streams) x.proxy.addToxic({ name: `chaos-${f.n}-${stream}`, type, stream, attributes: f.params });
    extra?.();
    await wait();
    for (const stream of streams) await x.proxy.removeToxic(`chaos-${f.n}-${stream}`);
  };
  switch (f.kind) {
    case 'kill-production':
    case 'kill-dr': {
      const side = f.kind === 'kill-dr' ? x.dr : x.prod;
      await side.kill();
      await wait();
      await side.start();
      return;
    }
    case 'freeze-production':
    case 'freeze-dr': {
      const side = f.kind === 'freeze-dr' ? x.dr : x.prod;
      side.freeze();
      await wait();
      side.thaw();
      return;
    }
    case 'link-cut':
      x.proxy.cut(true);
      return;
    case 'partition':
      await x.proxy.setEnabled(false);
      await wait();
      await x.proxy.setEnabled(true);
      return;
    case 'latency': return toxic('latency', ['upstream', 'downstream']);
    case 'bandwidth': return toxic('bandwidth', ['upstream']);
    case 'corrupt': return toxic('corrupt', ['upstream']);
    case 'truncate': return toxic('limit_data', ['upstream']);
    case 'slicer': return toxic('slicer', ['upstream']);
    case 'slow-close': return toxic('slow_close', ['upstream', 'downstream'], () => x.proxy.cut(false));
    case 'dr-disk-errors':
      await x.agent!.failWrites(true);
      await wait();
      return x.agent!.failWrites(false);
    case 'dr-disk-slow':
      await x.agent!.limitRate(f.params.rate!);
      await wait();
      return x.agent!.limitRate(null);
    case 'pause':
    case 'check':
    case 'mode-flip': return operation(f, x, wait);
  }
}

/** An operator's action on the VM, through production's control calls (those the management APIs make). */
async function operation(f: ScheduledFault, x: FaultTargets, wait: () => Promise<void>): Promise<void> {
  const operate = async (op: VmOperation, mode?: 'async' | 'sync'): Promise<void> => {
    // One fault at a time: production is up (a kill restarts it before the next fault begins).
    await withTimeout(systemClock, 10_000, x.prod.child!.request({ type: 'operate', vmUuid, op, mode }, 'operated'), `production ${op}`);
  };
  if (f.kind === 'check') return operate('check');
  x.sync.suspend(); // paused, or in the other mode: Sync writes are acknowledged without DR meanwhile
  if (f.kind === 'pause') {
    await operate('pause');
    await wait();
    await operate('resume');
    if (x.mode === 'sync') x.sync.restore(x.acked());
    return;
  }
  const other = x.mode === 'sync' ? 'async' : 'sync';
  await operate('mode', other);
  await wait();
  await operate('mode', x.mode);
  if (x.mode === 'sync') x.sync.restore(x.acked());
}

/** DR's replica read whole at seeded instants: always a prefix of the history; in Sync, no shorter than what was acknowledged. */
function sampleDr(x: { seed: number; prod: Side; dr: Side; drAt: Endpoint; load: StampedLoad; sizeBytes: number; sync: SyncPromise;
    report: ChaosReport; violate: (v: string) => void }): { stop(): Promise<void> } {
  const rnd = seededRandom(x.seed ^ 0x2545f491);
  let stopping = false;
  const run = (async () => {
    while (!stopping) {
      await new Promise((r) => setTimeout(r, 500 + Math.floor(rnd.float() * 2_000)));
      if (stopping) return;
      if (!x.dr.up) {
        x.report.drReads.skipped++;
        continue;
      }
      const before = await pairState(x.prod, x.dr);
      const ackedBefore = x.load.acked;
      const syncBefore = x.sync.holdsFor(ackedBefore);
      const image = await readImage(x.drAt, volUuid, x.sizeBytes, 20_000).catch(() => null);
      if (image === null) { // DR killed or frozen under the read
        x.report.drReads.skipped++;
        continue;
      }
      x.report.drReads.checked++;
      const history = x.load.history.slice();
      const range = prefixOf(image, history);
      if (range === null) x.violate(`DR image is no prefix of the write history: ${prefixConflict(image, history)}; ${before.text}`);
      else if (syncBefore && range.hi < ackedBefore) {
        const after = await pairState(x.prod, x.dr);
        // A staged pass (resync, repair) runs: DR holds its writes durably but shows the image from before
        // the pass until the commit, by design (a torn pass is never visible). Sync's promise is for queue,
        // and for a VM that stayed in Sync during the read. A failing DR target holds what it got, DR's log
        // the rest (durably: that is the promise; the replica shows the targets). Production is back in queue
        // once it has journaled a pass's commit, and DR shows the pass only once that commit has reached it:
        // a production killed in between comes back in queue with the commit still to ship.
        const exempt = before.prodState !== 'queue' || after.prodState !== 'queue' || before.targetError !== null || after.targetError !== null ||
          before.drStaging || after.drStaging;
        if (exempt || !x.sync.holdsFor(ackedBefore)) {
          x.report.drReads.syncExempt++;
          continue;
        }
        x.violate(`Sync: DR image holds at most the first ${range.hi} writes, but ${ackedBefore} were acknowledged before the read; before it ${before.text}; after it ${after.text}`);
      }
    }
  })();
  return { stop: async () => { stopping = true; await run; } };
}

/** Both sides' replication positions now, for a violation's message (what a reader needs to tell a cause). */
async function pairState(prod: Side, dr: Side): Promise<{ prodState: string | null; targetError: string | null; drStaging: boolean; text: string }> {
  type S = Extract<IpcMessage, { type: 'status' }>;
  type D = Extract<IpcMessage, { type: 'diagnostics' }>;
  const ask = <T extends IpcMessage>(side: Side, req: { type: 'status' | 'diagnostics' }): Promise<T | null> => (side.up && side.child
    ? withTimeout(systemClock, 2_000, side.child.request<T>(req, req.type), req.type).catch(() => null)
    : Promise.resolve(null));
  const [p, d] = await Promise.all([ask<S>(prod, { type: 'status' }), ask<D>(dr, { type: 'diagnostics' })]);
  const pv = (p?.status as { vms?: Array<{ lastSeq: number; ackedSeq: number; replication: { state: string } }> } | undefined)?.vms?.[0];
  const dv = (d?.diagnostics as { vms?: Array<{ durableSeq: number; appliedSeq: number; stageActive: boolean; targetError: string | null }> } | undefined)?.vms?.[0];
  const prodText = pv ? `production ${pv.replication.state}, journal ${pv.lastSeq}, DR acked ${pv.ackedSeq}` : 'production not answering';
  const drText = dv ? `DR durable ${dv.durableSeq}, applied ${dv.appliedSeq}${dv.stageActive ? ', a pass staged' : ''}${dv.targetError ? `, target error ${dv.targetError}` : ''}` : 'DR not answering';
  return { prodState: pv?.replication.state ?? null, targetError: dv?.targetError ?? null, drStaging: dv?.stageActive ?? false, text: `${prodText}; ${drText}` };
}

/** No fault left: the pair drains; production holds every acknowledged write and DR equals it. */
async function converge(x: { prod: Side; dr: Side; prodAt: Endpoint; drAt: Endpoint; load: StampedLoad; sizeBytes: number;
    violate: (v: string) => void; drainTimeoutMs: number }): Promise<void> {
  if (!x.dr.child) await x.dr.start();
  if (!x.prod.child) await x.prod.start();
  await withTimeout(systemClock, x.drainTimeoutMs, x.prod.child!.request({ type: 'drain' }, 'drained'), 'the pair to drain after the faults');
  const expected = historyImage(x.load.history, x.sizeBytes);
  const prodImage = await readImage(x.prodAt, volUuid, x.sizeBytes, 30_000);
  const drImage = await readImage(x.drAt, volUuid, x.sizeBytes, 30_000);
  const lost = blocksDiffering(prodImage, expected);
  if (lost.length > 0) x.violate(`production lost acknowledged writes: ${lost.length} blocks differ from the history (first: block ${lost[0]})`);
  const behind = blocksDiffering(drImage, prodImage);
  if (behind.length > 0) x.violate(`after draining, DR differs from production in ${behind.length} blocks (first: block ${behind[0]})`);
}

function blocksDiffering(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let at = 0; at < a.length; at += blockBytes) {
    if (!a.subarray(at, at + blockBytes).equals(b.subarray(at, at + blockBytes))) out.push(at / blockBytes);
  }
  return out;
}

