import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compareVolumes } from '../src/cli/demo.js';
import { GatewayChild, gatewayNodeArgs } from '../src/cli/gateway-child.js';
import type { IpcMessage } from '../src/cli/gateway-process.js';
import { GiB, MiB } from '../src/core/limits.js';
import { startCpuWindow, type CpuWindow } from './cpu-meter.js';
import {
  benchCodecThreads, capture, mirrorSynced, Qmp, sparseFile, startDaemon, stopDaemon, stopGateway, track, vrgConfig, which, withTimeout,
} from './nbd-bench.js';

// The WAN-shaped row (issue 12, deliverable 5): production and DR in two network namespaces joined by a veth
// pair, each end shaped by `tc qdisc ... tbf` (1 Gbit/s by default), so replication traffic crosses a link
// slower than the disks. One burst: fio (nbd engine, QD 16, buffers 50% compressible) writes 2 GiB once,
// sequentially, onto a 4 GiB volume (not time-based), against
//   vrg         two `vrg start` gateways, production (NBD intake) in one namespace, DR in the other; the link
//               crosses the veth; link.compression "auto" (LZ4 while the link is the bottleneck)
//   qemuMirror  qemu-storage-daemon (NBD export + blockdev-mirror copy-mode=background) in the production
//               namespace; its mirror target, a qemu-nbd, in the DR namespace
// Reported per target: fio's intake MB/s; the drain rate (bytes written / time from the first write until DR
// holds the last); how far DR is behind when fio ends (bytes; for VRG also the age of the oldest write DR
// lacks) and how long it then takes to converge; the bytes on the veth (L2 frames, both directions); CPU.
// DR is compared with the source byte for byte afterwards. MB = 10^6 bytes. Nothing here is asserted.

export type WanTargetName = 'vrg' | 'qemuMirror';

export interface WanLinkBytes {
  /** Bytes of the frames production sent to DR over the veth (its tx counter), and back (rx). */
  prodToDrBytes: number;
  drToProdBytes: number;
}

export interface WanFigures {
  writtenBytes: number;
  /** fio's write bandwidth (what the VM would see). */
  intakeMBps: number;
  burstMs: number;
  /** From the first write until DR held the last one. */
  drainMs: number;
  drainMBps: number;
  /** When fio ended: bytes DR did not hold yet (VRG: bytesBehind; QEMU: the mirror job's len - offset). */
  lagAtBurstEndBytes: number;
  /** VRG only: the age of the oldest write DR did not hold when fio ended (its RPO then). */
  lagAtBurstEndMs: number | null;
  /** From the end of fio until DR held the last write. */
  convergeMs: number;
  link: WanLinkBytes;
  /** Production -> DR link bytes per byte written. */
  linkShareOfWritten: number;
  /** From the first write until converged: the target's processes and the machine; fio's own CPU apart. */
  cpu: { window: CpuWindow; targetCpuSecondsPerGB: number; fioCpuSeconds: number };
}

export interface WanVrgFigures {
  /** Over the burst: plain (journal) bytes shipped, bytes framed onto the link, and the share sent compressed. */
  plainBytesSent: number;
  bytesSent: number;
  compressedShare: number;
  compressionSwitches: number;
  compressionSetting: string;
  /** The VM's replication state after converging, and the initial sync of the sparse volume before the burst. */
  stateAfter: string;
  initialSyncMs: number;
}

export interface WanTargetResult {
  description: string;
  skipped: string | null;
  error: string | null;
  figures: WanFigures | null;
  vrg?: WanVrgFigures;
  verified: boolean | null;
  verifyDetail: string | null;
}

export interface WanBenchResult {
  /** Set when the whole row could not run (not root, tools missing, namespaces refused). */
  skipped: string | null;
  link: { rateMbit: number; tbf: string[]; prodAddr: string; drAddr: string } | null;
  volumeBytes: number;
  burstBytes: number;
  vrgCompression: string;
  fio: { version: string | null; args: string[] };
  targets: Record<WanTargetName, WanTargetResult>;
  /** VRG's drain rate over QEMU's (target: >= 1.6), and its lag bytes at burst end over QEMU's (target: <= 1). */
  ratios: { drainVrgVsQemu: number | null; lagAtBurstEndVrgVsQemu: number | null };
  seconds: number;
}

export interface WanBenchOptions {
  workDir: string;
  /** tbf rate on each veth end, Mbit/s (default 1000). */
  rateMbit?: number;
  /** Default 4 GiB volume, 2 GiB burst. */
  volumeBytes?: number;
  burstBytes?: number;
  only?: WanTargetName[];
  /** VRG's link.compression (default auto: LZ4 only while the link is the bottleneck). */
  vrgCompression?: 'auto' | 'always' | 'never';
}

const blockSize = '1M'; // the link is the subject here, not per-I/O cost: large sequential writes
const drPort = 10810; // fresh namespaces: fixed ports are free
const nbdPort = 10809;
const longMs = 900_000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------------
// The two namespaces and their veth pair. Deleted at the end, on failure, and on exit should the bench crash.

interface WanNet { prodNs: string; drNs: string; prodDev: string; drDev: string; prodAddr: string; drAddr: string; tbf: string[] }

const nets = new Set<WanNet>();
process.on('exit', () => {
  for (const n of nets) deleteNetSync(n);
});

function deleteNetSync(n: WanNet): void {
  for (const ns of [n.prodNs, n.drNs]) {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {
      // already gone (or never created)
    }
  }
  nets.delete(n);
}

async function run(cmd: string, args: string[]): Promise<string> {
  const r = await capture(cmd, args, 30_000);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.code}: ${r.out.trim().split('\n')[0]}`);
  return r.out;
}

/** tbf: a token bucket of 10 ms at the rate (at least 64 KiB, one GSO packet), queueing at most 20 ms more. */
function tbfArgs(rateMbit: number): string[] {
  const burstBytes = Math.max(64 * 1024, Math.round((rateMbit * 1e6) / 8 / 100));
  return ['tbf', 'rate', `${rateMbit}mbit`, 'burst', String(burstBytes), 'latency', '20ms'];
}

async function createNet(rateMbit: number): Promise<WanNet> {
  const id = process.pid;
  // veth names are limited to 15 characters; the /30 lives only inside the two namespaces.
  const net: WanNet = {
    prodNs: `vrgwan-p-${id}`, drNs: `vrgwan-d-${id}`, prodDev: `vwp${id}`, drDev: `vwd${id}`,
    prodAddr: `10.201.${id % 256}.1`, drAddr: `10.201.${id % 256}.2`, tbf: tbfArgs(rateMbit),
  };
  nets.add(net);
  try {
    await run('ip', ['netns', 'add', net.prodNs]);
    await run('ip', ['netns', 'add', net.drNs]);
    await run('ip', ['link', 'add', net.prodDev, 'netns', net.prodNs, 'type', 'veth', 'peer', 'name', net.drDev, 'netns', net.drNs]);
    for (const [ns, dev, addr] of [[net.prodNs, net.prodDev, net.prodAddr], [net.drNs, net.drDev, net.drAddr]] as const) {
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      await run('ip', ['-n', ns, 'addr', 'add', `${addr}/30`, 'dev', dev]);
      await run('ip', ['-n', ns, 'link', 'set', dev, 'up']);
      await run('tc', ['-n', ns, 'qdisc', 'add', 'dev', dev, 'root', ...net.tbf]);
    }
  } catch (err) {
    deleteNetSync(net);
    throw err;
  }
  return net;
}

async function linkCounters(net: WanNet): Promise<WanLinkBytes> {
  const out = await run('ip', ['-n', net.prodNs, '-s', '-j', 'link', 'show', 'dev', net.prodDev]);
  const s = (JSON.parse(out) as Array<{ stats64: { rx: { bytes: number }; tx: { bytes: number } } }>)[0]!.stats64;
  return { prodToDrBytes: s.tx.bytes, drToProdBytes: s.rx.bytes };
}

/** Resolves once something listens on TCP `port` inside `ns` (or rejects when `p` died first). */
async function waitListeningIn(ns: string, port: number, p: { exitCode: number | null; signalCode: string | null }, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (p.exitCode !== null || p.signalCode !== null) throw new Error(`${what} exited (${p.exitCode ?? p.signalCode}) before listening`);
    const r = await capture('ip', ['netns', 'exec', ns, 'ss', '-Hltn', `sport = :${port}`], 10_000);
    if (r.code === 0 && r.out.trim()) return;
    if (Date.now() > deadline) throw new Error(`${what} not listening on ${port} in ${ns} after 15 s`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The burst and what is measured around it

interface Ctx { dir: string; net: WanNet; volumeBytes: number; fioArgs: string[]; vrgCompression: string }

function fioArgs(burstBytes: number): string[] {
  return ['--name=wan-burst', '--ioengine=nbd', '--iodepth=16', '--buffer_compress_percentage=50', '--refill_buffers',
    '--rw=write', `--bs=${blockSize}`, `--size=${burstBytes}`, '--eta=never'];
}

interface FioRun { bytes: number; MBps: number; runtimeMs: number; cpuSeconds: number }

async function runFio(ctx: Ctx, uri: string, outPath: string): Promise<FioRun> {
  const args = ['netns', 'exec', ctx.net.prodNs, 'fio', ...ctx.fioArgs, `--uri=${uri}`, '--output-format=json', `--output=${outPath}`];
  const r = await capture('ip', args, longMs);
  if (r.code !== 0) throw new Error(`fio on ${uri} exited ${r.code}: ${r.out.trim().slice(-500)}`);
  const text = await readFile(outPath, 'utf8');
  const j = (JSON.parse(text.slice(text.indexOf('{'))) as { jobs: Array<{ error: number; usr_cpu: number; sys_cpu: number; job_runtime: number;
    write: { io_bytes: number; bw_bytes: number; runtime: number } }> }).jobs[0];
  if (!j || j.error !== 0) throw new Error(`fio on ${uri}: job error ${j?.error}`);
  return {
    bytes: j.write.io_bytes, MBps: j.write.bw_bytes / 1e6, runtimeMs: j.write.runtime,
    cpuSeconds: ((j.usr_cpu + j.sys_cpu) / 100) * (j.job_runtime / 1000),
  };
}

interface Probe {
  pids: number[];
  gateways: GatewayChild[];
  /** How far behind DR is right now. */
  lag(): Promise<{ bytes: number; ms: number | null }>;
  /** Resolves once DR holds every write made so far. */
  converge(): Promise<void>;
}

async function measureBurst(ctx: Ctx, tag: string, uri: string, probe: Probe): Promise<WanFigures> {
  const before = await linkCounters(ctx.net);
  const window = await startCpuWindow(probe.pids, probe.gateways);
  const spawnedAtMs = Date.now();
  const fio = await runFio(ctx, uri, join(ctx.dir, `${tag}-fio.json`));
  const burstEndAtMs = Date.now();
  const lag = await probe.lag();
  await probe.converge();
  const convergedAtMs = Date.now();
  const cpu = await window.end();
  const after = await linkCounters(ctx.net);
  // fio 3.33's JSON has no job start time: its write runtime counted back from its exit (not its start-up).
  const firstWriteAtMs = Math.max(spawnedAtMs, burstEndAtMs - fio.runtimeMs);
  const drainMs = convergedAtMs - firstWriteAtMs;
  const link = { prodToDrBytes: after.prodToDrBytes - before.prodToDrBytes, drToProdBytes: after.drToProdBytes - before.drToProdBytes };
  return {
    writtenBytes: fio.bytes, intakeMBps: fio.MBps, burstMs: fio.runtimeMs, drainMs, drainMBps: fio.bytes / 1e6 / (drainMs / 1000),
    lagAtBurstEndBytes: lag.bytes, lagAtBurstEndMs: lag.ms, convergeMs: convergedAtMs - burstEndAtMs,
    link, linkShareOfWritten: link.prodToDrBytes / fio.bytes,
    cpu: { window: cpu, targetCpuSecondsPerGB: cpu.targetCpuSeconds / (fio.bytes / 1e9), fioCpuSeconds: fio.cpuSeconds },
  };
}

// ---------------------------------------------------------------------------------------------------------
// VRG

type StatusReply = Extract<IpcMessage, { type: 'status' }>;
type Ready = Extract<IpcMessage, { type: 'ready' }>;

/** The parts of the production gateway's status used here (src/replication/production-gateway.ts). */
interface VmStatus {
  plainBytesSent: number;
  bytesSent: number;
  compression: { compressedShare: number; switches: number };
  replication: { state: string; bytesBehind: number; secondsBehind: number };
}

async function vmStatus(g: GatewayChild): Promise<VmStatus> {
  const s = (await g.request<StatusReply>({ type: 'status' }, 'status')).status as { vms: VmStatus[] };
  return s.vms[0]!;
}

/**
 * `vrg start` inside a namespace: `ip netns exec` execs, so the child is node itself (its pid is the gateway's)
 * and keeps the IPC fd and NODE_CHANNEL_FD that spawn set up, so GatewayChild drives it as if forked.
 */
function gatewayIn(ns: string, role: string, configPath: string, logPath: string): GatewayChild {
  const main = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  if (!existsSync(main)) throw new Error(`${main} is missing: build first (npx tsc -p tsconfig.json)`);
  const execArgv = [...gatewayNodeArgs, ...(process.env.VRG_GATEWAY_NODE_ARGS ?? '').split(' ').filter(Boolean)];
  const log = openSync(logPath, 'a');
  const proc = spawn('ip', ['netns', 'exec', ns, process.execPath, ...execArgv, main, 'start', '--config', configPath],
    { stdio: ['ignore', 'ignore', log, 'ipc'], detached: true });
  closeSync(log);
  return track(new GatewayChild(role, proc));
}

/** nbd-bench's VRG config, with the link on the DR veth address, the row's compression and a 3 GiB journal. */
function wanConfig(role: 'production' | 'dr', dir: string, ctx: Ctx, linkPort: number, secret: string) {
  const base = vrgConfig(role, dir, linkPort, secret, ctx.volumeBytes, 'async');
  return { ...base, link: { ...base.link, host: ctx.net.drAddr, compression: ctx.vrgCompression }, journalCapacityBytes: 3 * GiB };
}

async function targetVrg(ctx: Ctx, r: WanTargetResult): Promise<void> {
  const dir = join(ctx.dir, 'vrg');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const secret = randomBytes(32).toString('hex');
  const drCfg = wanConfig('dr', dir, ctx, 0, secret);
  await writeFile(join(dir, 'dr.json'), JSON.stringify(drCfg, null, 2));
  const gateways: GatewayChild[] = [];
  try {
    const dr = gatewayIn(ctx.net.drNs, 'dr', join(dir, 'dr.json'), join(dir, 'dr.log'));
    gateways.push(dr);
    const drReady = await withTimeout(dr.request<Ready>(null, 'ready'), 30_000, 'DR gateway start');
    const prodCfg = wanConfig('production', dir, ctx, drReady.linkPort!, secret);
    await writeFile(join(dir, 'production.json'), JSON.stringify(prodCfg, null, 2));
    const prod = gatewayIn(ctx.net.prodNs, 'production', join(dir, 'production.json'), join(dir, 'production.log'));
    gateways.unshift(prod);
    const ready = await withTimeout(prod.request<Ready>(null, 'ready'), 30_000, 'production gateway start');
    if (!ready.nbdPort) throw new Error('the production gateway reported no NBD port');
    const vol = prodCfg.vms[0]!.volumes[0]!;
    const drain = (): Promise<unknown> => withTimeout(prod.request({ type: 'drain' }, 'drained'), longMs, 'drain');
    const t0 = Date.now();
    await drain(); // the initial sync of the sparse source, before measuring
    const initialSyncMs = Date.now() - t0;
    const s0 = await vmStatus(prod);
    r.figures = await measureBurst(ctx, 'vrg', `nbd://127.0.0.1:${ready.nbdPort}/${vol.volUuid}`, {
      pids: [prod.proc.pid!, dr.proc.pid!], gateways: [prod, dr],
      lag: async () => {
        const s = (await vmStatus(prod)).replication;
        return { bytes: s.bytesBehind, ms: s.secondsBehind * 1000 };
      },
      converge: async () => { await drain(); },
    });
    r.vrg = vrgDelta(s0, await vmStatus(prod), initialSyncMs, ctx.vrgCompression);
    const codes = [await stopGateway(prod), await stopGateway(dr)];
    if (codes.some((c) => c !== 0)) throw new Error(`gateways exited with codes ${codes.join(' and ')}`);
    await verify(r, vol.url, drCfg.vms[0]!.volumes[0]!.url, ctx.volumeBytes);
  } finally {
    for (const g of gateways) await stopGateway(g);
    await rm(dir, { recursive: true, force: true });
  }
}

/** The shipper's counters are cumulative since start (the initial sync too): the burst's share is the difference. */
function vrgDelta(a: VmStatus, b: VmStatus, initialSyncMs: number, compressionSetting: string): WanVrgFigures {
  const plain = b.plainBytesSent - a.plainBytesSent;
  const compressedOn = b.compression.compressedShare * b.plainBytesSent - a.compression.compressedShare * a.plainBytesSent;
  return {
    plainBytesSent: plain, bytesSent: b.bytesSent - a.bytesSent, compressedShare: plain > 0 ? compressedOn / plain : 0,
    compressionSwitches: b.compression.switches - a.compression.switches, compressionSetting, stateAfter: b.replication.state, initialSyncMs,
  };
}

async function verify(r: WanTargetResult, source: string, dr: string, volumeBytes: number): Promise<void> {
  const mismatch = await compareVolumes([[source, dr]]);
  r.verified = mismatch === null;
  r.verifyDetail = mismatch ?? `${volumeBytes} bytes identical`;
}

// ---------------------------------------------------------------------------------------------------------
// QEMU: blockdev-mirror (background) from qemu-storage-daemon to a qemu-nbd across the link

// nbd-bench's qemu-nbd flags: raw, page cache (write-back), thread-pool AIO, stay up across connections.
const qemuNbdFlags = ['-f', 'raw', '-t', '--cache=writeback', '--aio=threads'];

interface BlockJob { device: string; len: number; offset: number }

async function startQemu(ctx: Ctx, src: string, dst: string, qmpPath: string): Promise<ReturnType<typeof startDaemon>[]> {
  const { net } = ctx;
  const dr = startDaemon('ip', ['netns', 'exec', net.drNs, 'qemu-nbd', ...qemuNbdFlags, '-x', 'dr', '-b', net.drAddr, '-p', String(drPort), dst],
    join(ctx.dir, 'qemu-dr.log'));
  await waitListeningIn(net.drNs, drPort, dr, 'qemu-nbd (DR)');
  const qsd = startDaemon('ip', ['netns', 'exec', net.prodNs, 'qemu-storage-daemon',
    '--blockdev', `driver=file,node-name=src-file,filename=${src},cache.direct=off,aio=threads`,
    '--blockdev', 'driver=raw,node-name=src,file=src-file',
    '--blockdev', `driver=nbd,node-name=dr,server.type=inet,server.host=${net.drAddr},server.port=${drPort},export=dr`,
    '--nbd-server', `addr.type=inet,addr.host=127.0.0.1,addr.port=${nbdPort}`,
    '--export', 'type=nbd,id=exp0,node-name=src,name=disk,writable=on',
    // A path socket: the filesystem is shared across network namespaces, so QMP is reachable from here.
    '--chardev', `socket,path=${qmpPath},server=on,wait=off,id=qmp0`, '--monitor', 'chardev=qmp0',
  ], join(ctx.dir, 'qemu-qsd.log'));
  await waitListeningIn(net.prodNs, nbdPort, qsd, 'qemu-storage-daemon');
  return [qsd, dr];
}

async function targetQemuMirror(ctx: Ctx, r: WanTargetResult): Promise<void> {
  const [src, dst, qmpPath] = [join(ctx.dir, 'qemu-source.img'), join(ctx.dir, 'qemu-dr.img'), join(ctx.dir, 'qemu-qmp.sock')];
  await sparseFile(src, ctx.volumeBytes);
  await sparseFile(dst, ctx.volumeBytes);
  await rm(qmpPath, { force: true });
  let procs: ReturnType<typeof startDaemon>[] = [];
  let qmp: Qmp | null = null;
  try {
    procs = await startQemu(ctx, src, dst, qmpPath);
    qmp = await Qmp.connect(qmpPath);
    const q = qmp;
    await q.execute('blockdev-mirror', { 'job-id': 'm0', device: 'src', target: 'dr', sync: 'full', 'copy-mode': 'background' });
    await q.waitEvent('BLOCK_JOB_READY', (e) => e.data?.device === 'm0', longMs);
    r.figures = await measureBurst(ctx, 'qemu', `nbd://127.0.0.1:${nbdPort}/disk`, {
      pids: procs.map((p) => p.pid!), gateways: [],
      lag: async () => {
        const j = (await q.execute<BlockJob[]>('query-block-jobs')).find((x) => x.device === 'm0');
        if (!j) throw new Error('mirror job m0 is gone');
        return { bytes: j.len - j.offset, ms: null };
      },
      converge: () => mirrorSynced(q, 'm0', longMs),
    });
    // Cancelling a ready mirror lets it converge and leaves the target a consistent copy (no pivot).
    await q.execute('block-job-cancel', { device: 'm0' });
    const done = await q.waitEvent('BLOCK_JOB_COMPLETED', (e) => e.data?.device === 'm0', 60_000);
    if (done.data?.error) throw new Error(`mirror job failed: ${String(done.data.error)}`);
    await q.execute('quit').catch(() => undefined);
    for (const p of procs) await stopDaemon(p);
    await verify(r, src, dst, ctx.volumeBytes);
  } finally {
    qmp?.close();
    for (const p of procs) await stopDaemon(p);
    await rm(src, { force: true });
    await rm(dst, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------

/** Why the row cannot run here, or null. */
async function rowBlocker(): Promise<string | null> {
  if (process.platform !== 'linux') return 'needs Linux network namespaces';
  if (process.getuid?.() !== 0) return 'needs root (ip netns, tc)';
  const missing = ['ip', 'tc', 'fio'].filter((c) => !which(c));
  if (missing.length > 0) return `not installed: ${missing.join(', ')}`;
  const engine = await capture('fio', ['--enghelp=nbd'], 10_000).catch(() => ({ code: 1, out: '' }));
  return engine.code === 0 ? null : 'fio has no nbd engine (built without libnbd)';
}

function emptyTarget(description: string): WanTargetResult {
  return { description, skipped: null, error: null, figures: null, verified: null, verifyDetail: null };
}

async function runTargets(ctx: Ctx, targets: Record<WanTargetName, WanTargetResult>, only?: WanTargetName[]): Promise<void> {
  const needs: Record<WanTargetName, string[]> = { vrg: [], qemuMirror: ['qemu-nbd', 'qemu-storage-daemon', 'ss'] };
  const runners: Record<WanTargetName, (r: WanTargetResult) => Promise<void>> = {
    vrg: (r) => targetVrg(ctx, r), qemuMirror: (r) => targetQemuMirror(ctx, r),
  };
  for (const name of Object.keys(runners) as WanTargetName[]) {
    const r = targets[name];
    const missing = needs[name].filter((c) => !which(c));
    if (only && !only.includes(name)) r.skipped = 'not selected';
    else if (missing.length > 0) r.skipped = `not installed: ${missing.join(', ')}`;
    if (r.skipped) continue;
    process.stdout.write(`wan: ${name}...\n`);
    try {
      await runners[name](r);
    } catch (err) {
      r.error = (err as Error).message;
      process.stdout.write(`wan: ${name} failed: ${r.error}\n`);
    }
  }
}

export async function benchWan(opts: WanBenchOptions): Promise<WanBenchResult> {
  const started = Date.now();
  const [rateMbit, volumeBytes, burstBytes] = [opts.rateMbit ?? 1000, opts.volumeBytes ?? 4 * GiB, opts.burstBytes ?? 2 * GiB];
  const vrgCompression = opts.vrgCompression ?? 'auto';
  const targets: Record<WanTargetName, WanTargetResult> = {
    vrg: emptyTarget(`VRG Async: production gateway (NBD intake) and DR gateway in two namespaces, link over the shaped veth, link.compression ${vrgCompression}, lz4 + aes, codecThreads ${benchCodecThreads}`),
    qemuMirror: emptyTarget('qemu-storage-daemon NBD export + blockdev-mirror copy-mode=background -> qemu-nbd in the DR namespace, over the shaped veth'),
  };
  const result: WanBenchResult = {
    skipped: null, link: null, volumeBytes, burstBytes, vrgCompression, fio: { version: null, args: fioArgs(burstBytes) }, targets,
    ratios: { drainVrgVsQemu: null, lagAtBurstEndVrgVsQemu: null }, seconds: 0,
  };
  const onSignal = (): void => process.exit(130); // the exit handlers kill the processes and delete the namespaces
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  let net: WanNet | null = null;
  try {
    result.skipped = await rowBlocker();
    if (!result.skipped) {
      result.fio.version = (await capture('fio', ['--version'], 10_000)).out.trim() || null;
      net = await createNet(rateMbit).catch((err: Error) => {
        result.skipped = `could not set up the namespaces: ${err.message}`;
        return null;
      });
    }
    if (net) {
      result.link = { rateMbit, tbf: net.tbf, prodAddr: net.prodAddr, drAddr: net.drAddr };
      const dir = resolve(opts.workDir);
      await mkdir(dir, { recursive: true });
      await runTargets({ dir, net, volumeBytes, fioArgs: result.fio.args, vrgCompression }, targets, opts.only);
    }
  } finally {
    if (net) deleteNetSync(net);
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
  if (result.skipped) for (const t of Object.values(targets)) t.skipped ??= result.skipped;
  const [v, q] = [targets.vrg.figures, targets.qemuMirror.figures];
  result.ratios = {
    drainVrgVsQemu: v && q && q.drainMBps > 0 ? v.drainMBps / q.drainMBps : null,
    lagAtBurstEndVrgVsQemu: v && q && q.lagAtBurstEndBytes > 0 ? v.lagAtBurstEndBytes / q.lagAtBurstEndBytes : null,
  };
  result.seconds = (Date.now() - started) / 1000;
  return result;
}

// ---------------------------------------------------------------------------------------------------------

const mb = (bytes: number): string => (bytes / 1e6).toFixed(0);

function targetLines(label: string, t: WanTargetResult): string[] {
  if (t.skipped || !t.figures) return [`  ${label.padEnd(22)} ${t.skipped ? `skipped: ${t.skipped}` : `failed: ${t.error ?? 'no figures'}`}`];
  const f = t.figures;
  const lines = [`  ${label.padEnd(22)} ${f.intakeMBps.toFixed(1).padStart(7)} ${f.drainMBps.toFixed(1).padStart(7)} ` +
    `${(f.burstMs / 1000).toFixed(1).padStart(7)} ${(f.drainMs / 1000).toFixed(1).padStart(7)} ${mb(f.lagAtBurstEndBytes).padStart(7)} ` +
    `${(f.lagAtBurstEndMs === null ? '-' : (f.lagAtBurstEndMs / 1000).toFixed(1)).padStart(6)} ${(f.convergeMs / 1000).toFixed(1).padStart(8)} ` +
    `${`${mb(f.link.prodToDrBytes)}/${mb(f.link.drToProdBytes)}`.padStart(11)} ${f.linkShareOfWritten.toFixed(2).padStart(7)} ` +
    `${f.cpu.targetCpuSecondsPerGB.toFixed(1).padStart(8)} ${f.cpu.fioCpuSeconds.toFixed(1).padStart(6)} ${f.cpu.window.machineBusyPct.toFixed(0).padStart(5)}  ` +
    `${t.verified === null ? '-' : String(t.verified)}`];
  if (t.vrg) {
    lines.push(`      shipped ${mb(t.vrg.plainBytesSent)} MB of journal as ${mb(t.vrg.bytesSent)} MB of frames, ${(100 * t.vrg.compressedShare).toFixed(0)} % ` +
      `of it LZ4 (${t.vrg.compressionSetting}, ${t.vrg.compressionSwitches} switches); state after: ${t.vrg.stateAfter}; initial sync ${(t.vrg.initialSyncMs / 1000).toFixed(1)} s`);
  }
  for (const g of f.cpu.window.gateways) {
    lines.push(`      ${g.role.padEnd(10)} ${g.cpuSeconds.toFixed(1)} CPU-s, GC ${g.gcMs.toFixed(0)} ms, event loop ${(100 * g.eventLoopUtilization).toFixed(0)} % busy`);
  }
  if (t.error) lines.push(`    error: ${t.error}`);
  if (t.verified === false) lines.push(`    DR differs: ${t.verifyDetail}`);
  return lines;
}

export function formatWanBench(r: WanBenchResult): string {
  const link = r.link ? `tc ${r.link.tbf.join(' ')} on both veth ends (${r.link.prodAddr} <-> ${r.link.drAddr})` : 'no link';
  const lines = [`WAN row: production and DR in two network namespaces, ${link};`,
    `  fio ${r.fio.version ?? '?'} nbd engine, QD 16, bs ${blockSize}, 50% compressible: ${r.burstBytes / MiB} MiB written once onto a ${r.volumeBytes / MiB} MiB volume`];
  if (r.skipped) return [...lines, `  skipped: ${r.skipped}`].join('\n');
  lines.push('  target                  intake   drain   burst   drain  lag at  lag at  converge  link MB      link/   CPU-s/  fio    busy  DR');
  lines.push('                            MB/s    MB/s       s       s  end MB   end s         s  p->d/d->p  written      GB  CPU-s     %  verified');
  lines.push(...targetLines(`VRG async (lz4 ${r.vrgCompression})`, r.targets.vrg), ...targetLines('QEMU mirror background', r.targets.qemuMirror));
  const x = (v: number | null): string => (v === null ? '-' : `${v >= 0.1 ? v.toFixed(2) : v.toPrecision(2)}x`);
  lines.push(`  VRG drain rate ${x(r.ratios.drainVrgVsQemu)} QEMU mirror's (target >= 1.6x); lag at burst end ${x(r.ratios.lagAtBurstEndVrgVsQemu)} QEMU's (target <= 1x)`);
  lines.push('  (drain: bytes written / time from the first write until DR held the last; lag at end: what DR lacked when fio ended');
  lines.push('  (bytes; s: age of the oldest write DR lacked, VRG only); converge: from fio\'s end until DR held the last write; link MB:');
  lines.push(`  veth L2 bytes over the burst and convergence; CPU-s/GB: the target's processes per GB written. ${r.seconds.toFixed(0)} s for the row)`);
  return lines.join('\n');
}

// `node dist/bench/wan-bench.js [workDir] [all or target,target...] [auto|always|never]` (VRG's link.compression, default auto)
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(import.meta.dirname ?? '.', '..', '..');
  const workDir = process.argv[2] ?? join(root, 'bench', 'work', 'wan');
  const only = process.argv[3] && process.argv[3] !== 'all' ? process.argv[3].split(',') as WanTargetName[] : undefined;
  const vrgCompression = process.argv[4] as WanBenchOptions['vrgCompression'];
  benchWan({ workDir, only, vrgCompression })
    .then(async (r) => {
      process.stdout.write(`${formatWanBench(r)}\n${JSON.stringify(r, null, 2)}\n`);
      await rm(workDir, { recursive: true, force: true });
    })
    .catch((err) => {
      process.stderr.write(`wan-bench: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    });
}
