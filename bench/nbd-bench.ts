import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, closeSync } from 'node:fs';
import { cp, mkdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { basename, delimiter, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compareVolumes } from '../src/cli/demo.js';
import { spawnGateway, type GatewayChild } from '../src/cli/gateway-child.js';
import type { IpcMessage, ProcessFigures } from '../src/cli/gateway-process.js';
import { GiB, MiB } from '../src/core/limits.js';
import { silentLogger } from '../src/core/log.js';
import { Journal, RecordKind } from '../src/journal/journal.js';
import { NbdServer } from '../src/nbd/nbd-server.js';
import { volumeExport } from '../src/nbd/volume-export.js';
import { Intake } from '../src/replication/source/intake.js';
import type { LatencySummary } from '../src/core/latency-histogram.js';
import type { DrDiagnostics, DrStatus } from '../src/replication/target/dr-gateway.js';
import type { ProductionDiagnostics, ProductionStatus } from '../src/replication/source/production-gateway.js';
import { FileVolume } from '../src/volume/file-volume.js';
import { startCpuWindow, type CpuWindow } from './cpu-meter.js';
import { startPerf } from './perf-profile.js';

// The NBD section of `npm run bench`: the same two fio jobs (fio's nbd engine, libnbd, QD 16, buffers 50%
// compressible, refilled per I/O) against three targets on loopback:
//   vrg            VRG Async intake: a production and a DR gateway as two `vrg start` processes; fio writes
//                  to the production gateway's NBD export; after each job the gateway drains to DR.
//   qemu-nbd       the ceiling: qemu-nbd serving a plain raw file (no replication), its default cache=writeback
//                  (acknowledged from the page cache), and again with cache=writethrough (each write durable
//                  before its reply, as VRG acknowledges a write once its journal group commit is fdatasync'ed).
//   qemu-mirror    the peer: qemu-storage-daemon exports the source over NBD while a blockdev-mirror job
//                  copies it to a second qemu-nbd (the "DR" target); copy-mode=background (asynchronous)
//                  and copy-mode=write-blocking (synchronous).
// Every DR copy is compared byte for byte with its source once all processes are stopped.
// MB = 10^6 bytes; latencies are fio's completion latency (clat) percentiles.

export type NbdJobName = 'seq64k' | 'rand4k';
export type NbdTargetName = 'vrg' | 'vrgWriteBack' | 'vrgSync' | 'vrgIntakeOnly' | 'qemuNbd' | 'qemuNbdWritethrough' | 'qemuMirrorBackground' | 'qemuMirrorWriteBlocking';

export interface FioFigures {
  bytes: number;
  seconds: number;
  MBps: number;
  iops: number;
  p50Ms: number;
  p99Ms: number;
  /** Replicating targets: from the end of the fio job until the DR copy had every write (replication lag). */
  syncMs: number | null;
  /**
   * CPU from the start of the fio job until the DR copy had every write (the job alone for targets without a
   * DR copy): the target's processes per GB fio wrote, fio's own (its I/O child, from its report), the
   * machine's busy share, and per VRG gateway its GC time and event-loop utilization.
   */
  cpu?: { window: CpuWindow; targetCpuSecondsPerGB: number; fioCpuSeconds: number };
  /** VRG rows: where a write's latency went over the job's window (each gateway's latency histograms, ms). */
  stages?: Record<string, LatencySummary>;
}

export interface NbdTargetResult {
  description: string;
  skipped: string | null;
  error: string | null;
  jobs: Partial<Record<NbdJobName, FioFigures>>;
  /** True when the DR copy equals the source byte for byte; null when the target has no DR copy (or failed early). */
  verified: boolean | null;
  verifyDetail: string | null;
  /** VRG only: peak RSS and CPU seconds of the two gateway processes over the whole target run. */
  processes?: {
    productionRssPeakMiB: number; drRssPeakMiB: number; productionCpuSeconds: number; drCpuSeconds: number;
    /** At the end of the run: RSS, the main thread's V8 heap, external and ArrayBuffer memory (MiB). */
    productionMemoryMiB?: Record<string, number>; drMemoryMiB?: Record<string, number>;
  };
  /** VRG only: the pooled buffers at the end of the run (peak use, and how often they had no room). */
  rings?: Record<string, unknown>;
}

export interface NbdBenchResult {
  volumeBytes: number;
  fio: { version: string | null; common: string[]; jobs: Record<NbdJobName, string[]>; warmUp: string[][] };
  targets: Record<NbdTargetName, NbdTargetResult>;
  /** VRG MB/s divided by the peer's MB/s, per job (IOPS ratios are the same number). */
  ratios: Record<NbdJobName, {
    vsQemuNbd: number | null; vsQemuNbdWritethrough: number | null;
    vsQemuMirrorBackground: number | null; vsQemuMirrorWriteBlocking: number | null;
    /** VRG Async with the write-back intake (acknowledged before the journal fdatasync) vs QEMU's background mirror. */
    writeBackVsQemuMirrorBackground: number | null;
    /** VRG Sync vs QEMU's synchronous (write-blocking) mirror: MB/s and p99 latency. */
    syncVsWriteBlocking: number | null; syncP99VsWriteBlockingP99: number | null;
  }>;
  seconds: number;
}

export interface NbdBenchOptions {
  workDir: string;
  /** Volume size (default 1 GiB). */
  sizeBytes?: number;
  /** Upper bound on the random-write job's run time (default 10 s). */
  seconds?: number;
  /** Run only these targets (default all); the others are reported as skipped. */
  only?: NbdTargetName[];
}

/** VRG_BENCH_JOBS=seq64k (or rand4k) runs one job only: a profile of one access pattern. */
const jobNames: NbdJobName[] = (['seq64k', 'rand4k'] as NbdJobName[])
  .filter((j) => !process.env.VRG_BENCH_JOBS || process.env.VRG_BENCH_JOBS.split(',').includes(j));

// ---------------------------------------------------------------------------------------------------------
// Processes: every one started here is tracked and killed at the end (and on exit, should the bench crash).

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export function startDaemon(cmd: string, args: string[], logPath: string): ChildProcess {
  const log = openSync(logPath, 'a');
  const p = spawn(cmd, args, { stdio: ['ignore', log, log] });
  closeSync(log);
  live.add(p);
  p.on('exit', () => live.delete(p));
  p.on('error', () => live.delete(p));
  return p;
}

export async function stopDaemon(p: ChildProcess, graceMs = 5000): Promise<number | null> {
  if (p.exitCode !== null || p.signalCode !== null) return p.exitCode;
  const exited = new Promise<number | null>((res) => p.once('exit', (code) => res(code)));
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), graceMs);
  try {
    return await exited;
  } finally {
    clearTimeout(timer);
  }
}

export async function stopGateway(g: GatewayChild, graceMs = 10_000): Promise<number | null> {
  const timer = setTimeout(() => g.proc.kill('SIGKILL'), graceMs);
  try {
    return await g.stop();
  } finally {
    clearTimeout(timer);
  }
}

/** Gateways run in their own process group: tracked like the daemons so a crash here still kills them. */
export function track(g: GatewayChild): GatewayChild {
  live.add(g.proc);
  g.proc.on('exit', () => live.delete(g.proc));
  return g;
}

export function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const p = join(dir, cmd);
    if (dir && existsSync(p)) return p;
  }
  return null;
}

export function capture(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(p);
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (e) => {
      clearTimeout(timer);
      live.delete(p);
      rej(e);
    });
    p.on('close', (code) => {
      clearTimeout(timer);
      live.delete(p);
      res({ code, out });
    });
  });
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves once something accepts TCP connections on 127.0.0.1:port (or rejects when `p` dies first). */
async function waitListening(port: number, p: ChildProcess, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (p.exitCode !== null || p.signalCode !== null) throw new Error(`${what} exited (${p.exitCode ?? p.signalCode}) before listening`);
    const ok = await new Promise<boolean>((res) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        res(true);
      });
      s.once('error', () => res(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} not listening on ${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

export async function sparseFile(path: string, bytes: number): Promise<void> {
  await rm(path, { force: true });
  await writeFile(path, '');
  await truncate(path, bytes);
}

// ---------------------------------------------------------------------------------------------------------
// fio

interface JobPlan {
  common: string[];
  jobs: Record<NbdJobName, string[]>;
  /** Run against every target before its measured jobs, unmeasured, one after the other (see warmUp). */
  warmUp: string[][];
}

/**
 * The warm-up writes the whole volume first (VRG_BENCH_PREFILL=0: only 128 MiB, onto a sparse volume). On this VM a page-cache page the guest has not
 * touched lately costs about 3 CPU-s per GiB to write the first time (the balloon's free page reporting hands
 * free memory back to the host, and the next touch faults there), against 0.15-0.25 for an overwrite; a sparse
 * volume written once charges that to every target, and most to the slowest, whose run outlasts the memory
 * freed just before it.
 */
const prefill = process.env.VRG_BENCH_PREFILL !== '0';

function planJobs(volumeBytes: number, seconds: number): JobPlan {
  // VRG_BENCH_SEQ_BYTES: a longer sequential job, to see what start-up (JIT warm-up) costs per GB.
  const seqBytes = Math.min(Number(process.env.VRG_BENCH_SEQ_BYTES ?? 512 * MiB), volumeBytes / 2);
  const randBytes = Math.min(256 * MiB, volumeBytes / 4);
  return {
    common: ['--ioengine=nbd', '--iodepth=16', '--buffer_compress_percentage=50', '--refill_buffers', '--eta=never'],
    jobs: {
      // 512 MiB written once from offset 0 (stopping early after 3 x `seconds`, a bound for slow targets).
      seq64k: ['--name=seq64k', '--rw=write', '--bs=64k', `--size=${seqBytes}`, `--runtime=${3 * seconds}`],
      // 256 MiB of 4 KiB writes spread over the whole volume, stopping early after `seconds`.
      rand4k: ['--name=rand4k', '--rw=randwrite', '--bs=4k', `--size=${volumeBytes}`, `--io_size=${randBytes}`,
        `--runtime=${seconds}`],
    },
    warmUp: [
      // The whole volume, so the measured jobs write over allocated, cached blocks as on a VM disk in use.
      ...(prefill ? [['--name=warmup-fill', '--rw=write', '--bs=256k', '--offset=0', `--size=${volumeBytes}`, `--runtime=${6 * seconds}`]] : []),
      // 128 MiB (VRG_BENCH_WARMUP_BYTES) of 64 KiB writes in the volume's last quarter, clear of the sequential
      // job's blocks, over a connection of its own after the drain: the shapes the jobs bring (a new NBD
      // connection, records of another size, busy after idle) deoptimized about 60 hot functions per gateway
      // at the first job's start, and recompiling them cost 0.27 CPU-s of production's 1.7 in that window.
      ['--name=warmup', '--rw=write', '--bs=64k', `--offset=${(volumeBytes / 4) * 3}`,
        `--size=${Math.min(Number(process.env.VRG_BENCH_WARMUP_BYTES ?? 128 * MiB), volumeBytes / 4)}`,
        `--runtime=${3 * seconds}`],
    ],
  };
}

interface FioJob { error: number; write: FioWrite; usr_cpu?: number; sys_cpu?: number; job_runtime?: number }

interface FioWrite {
  io_bytes: number;
  bw_bytes: number;
  iops: number;
  runtime: number;
  clat_ns: { percentile?: Record<string, number> };
}

async function runFio(plan: JobPlan, job: NbdJobName | number, uri: string, outPath: string, timeoutMs: number): Promise<FioFigures> {
  const jobArgs = typeof job === 'number' ? plan.warmUp[job]! : plan.jobs[job];
  const args = [...plan.common, ...jobArgs, `--uri=${uri}`, '--output-format=json', `--output=${outPath}`];
  const r = await capture('fio', args, timeoutMs);
  if (r.code !== 0) throw new Error(`fio ${job} on ${uri} exited ${r.code}: ${r.out.trim().slice(-500)}`);
  const text = await readFile(outPath, 'utf8');
  const json = JSON.parse(text.slice(text.indexOf('{'))) as { jobs: FioJob[] };
  const j = json.jobs[0];
  if (!j || j.error !== 0) throw new Error(`fio ${job} on ${uri}: job error ${j?.error}`);
  const w = j.write;
  const pctMs = (p: string): number => (w.clat_ns.percentile?.[p] ?? 0) / 1e6;
  lastFioCpuSeconds = (((j.usr_cpu ?? 0) + (j.sys_cpu ?? 0)) / 100) * ((j.job_runtime ?? w.runtime) / 1000);
  return {
    bytes: w.io_bytes, seconds: w.runtime / 1000, MBps: w.bw_bytes / 1e6, iops: w.iops,
    p50Ms: pctMs('50.000000'), p99Ms: pctMs('99.000000'), syncMs: null,
  };
}

/** CPU-seconds of the last fio job's own process (usr + sys % of its run time). */
let lastFioCpuSeconds = 0;

/**
 * Every target takes the warm-up job (and its DR copy catches up) before its measured ones, as a steady-state
 * measurement does (fio's ramp_time): a gateway just started would otherwise spend part of the first window
 * compiling its hot paths (V8's optimizing compiler ran about 0.6 CPU-s per gateway in a 512 MiB job). The
 * native targets (QEMU) take it too, so every row starts the same way.
 */
async function warmUp(ctx: Ctx, uri: string, outPath: string, sync?: () => Promise<void>): Promise<void> {
  if (process.env.VRG_BENCH_WARMUP === '0' && !prefill) return; // to see what it changes
  for (let i = 0; i < ctx.plan.warmUp.length; i++) {
    await runFio(ctx.plan, i, uri, i === 0 ? outPath : outPath.replace(/\.json$/, `-${i + 1}.json`), ctx.fioTimeoutMs);
    if (sync) await sync();
  }
}

/**
 * Runs one fio job against a target, then `sync` (until the DR copy has every write), inside a CPU window over
 * the target's processes `pids` (and the VRG `gateways`' GC and event-loop figures).
 */
async function measuredFio(ctx: Ctx, job: NbdJobName, uri: string, outPath: string, pids: number[],
    opts: { gateways?: GatewayChild[]; sync?: () => Promise<void> } = {}): Promise<FioFigures> {
  const window = await startCpuWindow(pids, opts.gateways ?? []);
  const perf = startPerf(basename(outPath, '.json'));
  const f = await runFio(ctx.plan, job, uri, outPath, ctx.fioTimeoutMs);
  if (opts.sync) {
    const t0 = Date.now();
    await opts.sync();
    f.syncMs = Date.now() - t0;
  }
  const w = await window.end();
  if (perf) process.stdout.write(`nbd: perf profile ${await perf.stop() ?? '(perf report failed)'}\n`);
  f.cpu = { window: w, targetCpuSecondsPerGB: w.targetCpuSeconds / (f.bytes / 1e9), fioCpuSeconds: lastFioCpuSeconds };
  return f;
}

// ---------------------------------------------------------------------------------------------------------
// QMP: newline-delimited JSON over a unix socket.

interface QmpEvent { event: string; data?: Record<string, unknown> }

export class Qmp {
  private buf = '';
  private pending: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  readonly events: QmpEvent[] = [];
  private greeted!: Promise<void>;

  private constructor(private readonly sock: Socket) {}

  static async connect(path: string, timeoutMs = 10_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const sock = await new Promise<Socket | null>((res) => {
        const s = connect(path);
        s.once('connect', () => res(s));
        s.once('error', () => res(null));
      });
      if (sock) {
        const q = new Qmp(sock);
        q.listen();
        await q.greeted;
        await q.execute('qmp_capabilities');
        return q;
      }
      if (Date.now() > deadline) throw new Error(`QMP socket ${path} not ready after ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  private listen(): void {
    let greet!: () => void;
    this.greeted = new Promise((r) => (greet = r));
    this.sock.setEncoding('utf8');
    this.sock.on('data', (chunk: string) => {
      this.buf += chunk;
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const m = JSON.parse(line) as { QMP?: unknown; event?: string; return?: unknown; error?: { class: string; desc: string } };
        if (m.QMP) greet();
        else if (m.event) this.events.push(m as QmpEvent);
        else {
          const w = this.pending.shift();
          if (m.error) w?.reject(new Error(`QMP ${m.error.class}: ${m.error.desc}`));
          else w?.resolve(m.return);
        }
      }
    });
    const fail = (): void => {
      for (const w of this.pending.splice(0)) w.reject(new Error('QMP connection closed'));
    };
    this.sock.on('close', fail);
    this.sock.on('error', fail);
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  async waitEvent(name: string, pred: (e: QmpEvent) => boolean, timeoutMs: number): Promise<QmpEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const e = this.events.find((x) => x.event === name && pred(x));
      if (e) return e;
      if (Date.now() > deadline) throw new Error(`no QMP ${name} event after ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

interface BlockJobInfo { device: string; len: number; offset: number; ready: boolean; status: string; busy: boolean }

/** Waits until the mirror job is ready and has copied every dirty byte it knows of. */
export async function mirrorSynced(qmp: Qmp, jobId: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const jobs = await qmp.execute<BlockJobInfo[]>('query-block-jobs');
    const j = jobs.find((x) => x.device === jobId);
    if (!j) throw new Error(`mirror job ${jobId} is gone`);
    if (j.ready && j.offset === j.len) return;
    if (Date.now() > deadline) throw new Error(`mirror ${jobId} not in sync after ${timeoutMs} ms (${j.offset}/${j.len})`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Targets

interface Ctx {
  dir: string;
  volumeBytes: number;
  plan: JobPlan;
  fioTimeoutMs: number;
}

function emptyResult(description: string): NbdTargetResult {
  return { description, skipped: null, error: null, jobs: {}, verified: null, verifyDetail: null };
}

// qemu-nbd's defaults spelled out (raw, page cache, thread-pool AIO) plus -t: stay up across connections.
const qemuNbdFlags = ['-f', 'raw', '-t', '--cache=writeback', '--aio=threads'];

async function targetQemuNbd(ctx: Ctx, r: NbdTargetResult, cache: 'writeback' | 'writethrough'): Promise<void> {
  const file = join(ctx.dir, `ceiling-${cache}.img`);
  await sparseFile(file, ctx.volumeBytes);
  const port = await freePort();
  const flags = qemuNbdFlags.map((f) => (f.startsWith('--cache=') ? `--cache=${cache}` : f));
  const p = startDaemon('qemu-nbd', [...flags, '-x', 'disk', '-b', '127.0.0.1', '-p', String(port), file],
    join(ctx.dir, `qemu-nbd-${cache}.log`));
  try {
    await waitListening(port, p, 'qemu-nbd');
    await warmUp(ctx, `nbd://127.0.0.1:${port}/disk`, join(ctx.dir, `qemu-nbd-${cache}-warmup.json`));
    for (const job of jobNames) {
      r.jobs[job] = await measuredFio(ctx, job, `nbd://127.0.0.1:${port}/disk`, join(ctx.dir, `qemu-nbd-${cache}-${job}.json`), [p.pid!]);
    }
  } finally {
    await stopDaemon(p);
    await rm(file, { force: true });
  }
}

/**
 * The production side's own work without replication: VRG's NBD server into an Intake (journal + source
 * volume, write-back), in this process. Every byte is written twice (journal and source): the ceiling of
 * any VRG Async figure on this host, before compression, encryption, the link and the DR side.
 */
async function targetIntakeOnly(ctx: Ctx, r: NbdTargetResult): Promise<void> {
  const dir = join(ctx.dir, 'intake-only');
  await rm(dir, { recursive: true, force: true });
  const journal = await Journal.open({ dir: join(dir, 'journal'), capacityBytes: 2 * GiB });
  const volume = await FileVolume.open(join(dir, 'source.img'), { sizeBytes: ctx.volumeBytes, create: true });
  const intake = new Intake(journal, [volume], { writeBack: () => true, waitForRoom: async () => undefined, onCommitted: () => undefined, logger: silentLogger });
  const submit = (kind: number, offset: number, length: number, data: Uint8Array | null): Promise<void> =>
    intake.submit({ volumeIndex: 0, offset, kind, length, data });
  const exp = {
    ...volumeExport(volume, { name: 'disk' }),
    write: (offset: number, data: Uint8Array) => submit(RecordKind.WRITE, offset, data.byteLength, data),
    writeZeroes: (offset: number, length: number) => submit(RecordKind.ZERO, offset, length, null),
    trim: (offset: number, length: number) => submit(RecordKind.TRIM, offset, length, null),
    flush: () => intake.flushJournal(),
  };
  const server = new NbdServer({ exports: () => [exp] });
  try {
    const port = await server.listen('127.0.0.1', 0);
    await warmUp(ctx, `nbd://127.0.0.1:${port}/disk`, join(ctx.dir, 'intake-only-warmup.json'));
    for (const job of jobNames) {
      r.jobs[job] = await measuredFio(ctx, job, `nbd://127.0.0.1:${port}/disk`, join(ctx.dir, `intake-only-${job}.json`), [process.pid]);
    }
  } finally {
    await server.close();
    await intake.close();
    await journal.close();
    await volume.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function targetQemuMirror(ctx: Ctx, r: NbdTargetResult, copyMode: 'background' | 'write-blocking'): Promise<void> {
  const tag = `mirror-${copyMode}`;
  const [src, dst] = [join(ctx.dir, `${tag}-source.img`), join(ctx.dir, `${tag}-dr.img`)];
  await sparseFile(src, ctx.volumeBytes);
  await sparseFile(dst, ctx.volumeBytes);
  const [drPort, port] = [await freePort(), await freePort()];
  const qmpPath = join(ctx.dir, `${tag}-qmp.sock`);
  await rm(qmpPath, { force: true });
  const procs: ChildProcess[] = [];
  let qmp: Qmp | null = null;
  try {
    const dr = startDaemon('qemu-nbd', [...qemuNbdFlags, '-x', 'dr', '-b', '127.0.0.1', '-p', String(drPort), dst],
      join(ctx.dir, `${tag}-dr.log`));
    procs.push(dr);
    await waitListening(drPort, dr, 'qemu-nbd (DR)');
    const qsd = startDaemon('qemu-storage-daemon', [
      '--blockdev', `driver=file,node-name=src-file,filename=${src},cache.direct=off,aio=threads`,
      '--blockdev', 'driver=raw,node-name=src,file=src-file',
      '--blockdev', `driver=nbd,node-name=dr,server.type=inet,server.host=127.0.0.1,server.port=${drPort},export=dr`,
      '--nbd-server', `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`,
      '--export', 'type=nbd,id=exp0,node-name=src,name=disk,writable=on',
      '--chardev', `socket,path=${qmpPath},server=on,wait=off,id=qmp0`, '--monitor', 'chardev=qmp0',
    ], join(ctx.dir, `${tag}-qsd.log`));
    procs.unshift(qsd);
    await waitListening(port, qsd, 'qemu-storage-daemon');
    qmp = await Qmp.connect(qmpPath);
    // The mirror inserts its filter above `src`, moving every parent (the NBD export too) onto it, so
    // writes through the export are mirrored; the DR compare at the end proves it.
    await qmp.execute('blockdev-mirror', { 'job-id': 'm0', device: 'src', target: 'dr', sync: 'full', 'copy-mode': copyMode });
    await qmp.waitEvent('BLOCK_JOB_READY', (e) => e.data?.device === 'm0', 60_000);
    const warmQmp = qmp;
    await warmUp(ctx, `nbd://127.0.0.1:${port}/disk`, join(ctx.dir, `${tag}-warmup.json`), () => mirrorSynced(warmQmp, 'm0', 120_000));
    for (const job of jobNames) {
      const q = qmp;
      r.jobs[job] = await measuredFio(ctx, job, `nbd://127.0.0.1:${port}/disk`, join(ctx.dir, `${tag}-${job}.json`),
        [qsd.pid!, dr.pid!], { sync: () => mirrorSynced(q, 'm0', 120_000) });
    }
    // Cancelling a ready mirror lets it converge and leaves the target a consistent copy (no pivot).
    await qmp.execute('block-job-cancel', { device: 'm0' });
    const done = await qmp.waitEvent('BLOCK_JOB_COMPLETED', (e) => e.data?.device === 'm0', 60_000);
    if (done.data?.error) throw new Error(`mirror job failed: ${String(done.data.error)}`);
    await qmp.execute('quit').catch(() => undefined);
    qmp.close();
    qmp = null;
    for (const p of procs) await stopDaemon(p);
    const mismatch = await compareVolumes([[src, dst]]);
    r.verified = mismatch === null;
    r.verifyDetail = mismatch ?? `${ctx.volumeBytes} bytes identical`;
  } finally {
    qmp?.close();
    for (const p of procs) await stopDaemon(p);
    await rm(src, { force: true });
    await rm(dst, { force: true });
  }
}

type StatusReply = Extract<IpcMessage, { type: 'status' }>;
type Ready = Extract<IpcMessage, { type: 'ready' }>;

// The VRG rows force LZ4 on every frame (link.compression "always"), as the CPU target is stated; the
// adaptive default ("auto") would send raw frames on an idle loopback link.
/**
 * VRG_BENCH_CODEC_THREADS: the gateways' codecThreads. Default 0, the codec on each gateway's event loop: on
 * this 2-core host it beat one worker thread on every count (seq64k 8.1 against 9.6-10.0 CPU-s/GB, more MB/s,
 * Sync p99 16.7 against 18.2 ms, and about 65 MiB less RSS per gateway: the worker's own V8 isolate).
 */
export const benchCodecThreads = Number(process.env.VRG_BENCH_CODEC_THREADS ?? 0);
const codecLabel = benchCodecThreads === 0 ? 'codec on the event loop' : `${benchCodecThreads} codec thread(s)`;

/** VRG_BENCH_SYNC_COMPRESSION: the Sync row's link.compression (always, auto, never). */
const syncCompression = process.env.VRG_BENCH_SYNC_COMPRESSION ?? 'always';

export function vrgConfig(role: 'production' | 'dr', dir: string, linkPort: number, secret: string, volumeBytes: number, mode: 'async' | 'sync',
    writeBack = false) {
  const vmUuid = '7d2f3a90-5b1e-4c8d-9e0f-1a2b3c4d5e6f';
  return {
    role, gatewayId: `bench-${role}`, dataDir: join(dir, role), codecThreads: benchCodecThreads,
    link: { host: '127.0.0.1', port: linkPort, secret, compression: mode === 'sync' ? syncCompression : 'always' },
    // Port 0: the gateway picks a free port and reports it in its `ready` message.
    nbd: { host: '127.0.0.1', port: 0 },
    journalCapacityBytes: 1024 * MiB,
    intake: { writeBack },
    vms: [{
      vmUuid, vmName: 'bench-vm', compressOption: 1, encryptOption: 1, mode,
      volumes: [{ volUuid: `${vmUuid.slice(0, 24)}000000000000`, url: join(dir, role === 'production' ? 'source.img' : 'dr.img'), sizeBytes: volumeBytes }],
    }],
  };
}

async function targetVrg(ctx: Ctx, r: NbdTargetResult, mode: 'async' | 'sync', writeBack = false): Promise<void> {
  const dir = join(ctx.dir, 'vrg');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const secret = randomBytes(32).toString('hex');
  const drCfg = vrgConfig('dr', dir, 0, secret, ctx.volumeBytes, mode);
  await writeFile(join(dir, 'dr.json'), JSON.stringify(drCfg, null, 2));
  const gateways: GatewayChild[] = [];
  try {
    const dr = track(spawnGateway('dr', join(dir, 'dr.json'), join(dir, 'dr.log')));
    gateways.push(dr);
    const drReady = await withTimeout(dr.request<Ready>(null, 'ready'), 30_000, 'DR gateway start');
    const prodCfg = vrgConfig('production', dir, drReady.linkPort!, secret, ctx.volumeBytes, mode, writeBack);
    await writeFile(join(dir, 'production.json'), JSON.stringify(prodCfg, null, 2));
    const prod = track(spawnGateway('production', join(dir, 'production.json'), join(dir, 'production.log')));
    gateways.unshift(prod);
    const ready = await withTimeout(prod.request<Ready>(null, 'ready'), 30_000, 'production gateway start');
    if (!ready.nbdPort) throw new Error('the production gateway reported no NBD port (NBD intake not wired?)');
    const vol = prodCfg.vms[0]!.volumes[0]!;
    // The initial sync of the (sparse) source and the check after it, before measuring.
    await withTimeout(prod.request({ type: 'drain' }, 'drained'), 300_000, 'initial sync');
    const drain = async (): Promise<void> => { await withTimeout(prod.request({ type: 'drain' }, 'drained'), 300_000, 'drain'); };
    await warmUp(ctx, `nbd://127.0.0.1:${ready.nbdPort}/${vol.volUuid}`, join(ctx.dir, `vrg-${mode}-warmup.json`), drain);
    for (const job of jobNames) {
      await Promise.all([prod, dr].map((g) => g.request({ type: 'status', resetLatency: true }, 'status')));
      r.jobs[job] = await measuredFio(ctx, job, `nbd://127.0.0.1:${ready.nbdPort}/${vol.volUuid}`, join(ctx.dir, `vrg-${mode}${writeBack ? '-writeback' : ''}-${job}.json`),
        [prod.proc.pid!, dr.proc.pid!], { gateways: [prod, dr], sync: drain });
      r.jobs[job]!.stages = await latencyStages(prod, dr);
    }
    const [ps, ds] = [await prod.request<StatusReply>({ type: 'status' }, 'status'), await dr.request<StatusReply>({ type: 'status' }, 'status')];
    const cpu = (p: ProcessFigures): number => (p.cpuUserUs + p.cpuSystemUs) / 1e6;
    r.rings = await ringFigures(prod, dr);
    r.processes = {
      productionRssPeakMiB: ps.process.rssPeakBytes / MiB, drRssPeakMiB: ds.process.rssPeakBytes / MiB,
      productionMemoryMiB: memoryMiB(ps.process.memory), drMemoryMiB: memoryMiB(ds.process.memory),
      productionCpuSeconds: cpu(ps.process), drCpuSeconds: cpu(ds.process),
    };
    const codes = [await stopGateway(prod), await stopGateway(dr)];
    if (codes.some((c) => c !== 0)) throw new Error(`gateways exited with codes ${codes.join(' and ')}`);
    const mismatch = await compareVolumes([[vol.url, drCfg.vms[0]!.volumes[0]!.url]]);
    r.verified = mismatch === null;
    r.verifyDetail = mismatch ?? `${ctx.volumeBytes} bytes identical`;
  } finally {
    for (const g of gateways) await stopGateway(g);
    // VRG_BENCH_KEEP=<dir>: the gateways' logs and data stay there (e.g. for --trace-gc output).
    if (process.env.VRG_BENCH_KEEP) await cp(dir, join(process.env.VRG_BENCH_KEEP, `vrg-${mode}${writeBack ? '-writeback' : ''}`), { recursive: true });
    await rm(dir, { recursive: true, force: true });
  }
}

function memoryMiB(m: NodeJS.MemoryUsage | undefined): Record<string, number> | undefined {
  return m && Object.fromEntries(Object.entries(m).map(([k, v]) => [k, Math.round((v / MiB) * 10) / 10]));
}

/** The gateways' latency histograms for the job just measured (reset at its start). */
async function latencyStages(prod: GatewayChild, dr: GatewayChild): Promise<Record<string, LatencySummary>> {
  const d = (await dr.request<StatusReply>({ type: 'status' }, 'status')).status as DrStatus;
  const p = (await prod.request<StatusReply>({ type: 'status' }, 'status')).status as ProductionStatus;
  const stages: Record<string, LatencySummary> = {};
  for (const [name, h] of Object.entries(p.vms[0]?.latency ?? {})) stages[`production ${name}`] = h;
  if (d.vms[0]) stages['dr frame received -> durable in DR log'] = d.vms[0].durableLatency;
  return stages;
}

type DiagnosticsReply = Extract<IpcMessage, { type: 'diagnostics' }>;

/** Peak use and refusals of the gateways' rings: the link rings and each journal's cache ring. */
async function ringFigures(prod: GatewayChild, dr: GatewayChild): Promise<Record<string, unknown>> {
  const p = (await prod.request<DiagnosticsReply>({ type: 'diagnostics' }, 'diagnostics')).diagnostics as ProductionDiagnostics;
  const d = (await dr.request<DiagnosticsReply>({ type: 'diagnostics' }, 'diagnostics')).diagnostics as DrDiagnostics;
  return {
    productionLink: p.linkRing, drLink: d.linkRing,
    journalCaches: p.vms.map((vm) => ({ vmUuid: vm.vmUuid, ...vm.journal.cache })),
    // Segment reuse: a reused file's pages are overwritten in the page cache, a new one's are first writes.
    journals: p.vms.map((vm) => ({ vmUuid: vm.vmUuid, filesBytes: vm.journal.filesBytes, ...vm.journal.counters })),
    drLogs: d.vms.map((vm) => ({ vmUuid: vm.vmUuid, filesBytes: vm.logFilesBytes, ...vm.logCounters })),
  };
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} timed out after ${ms} ms`)), ms))),
  ]);
}

// ---------------------------------------------------------------------------------------------------------

export async function benchNbd(opts: NbdBenchOptions): Promise<NbdBenchResult> {
  const started = Date.now();
  const volumeBytes = opts.sizeBytes ?? Number(process.env.VRG_BENCH_VOLUME_BYTES ?? GiB);
  const plan = planJobs(volumeBytes, opts.seconds ?? 10);
  const dir = resolve(opts.workDir);
  await mkdir(dir, { recursive: true });
  const ctx: Ctx = { dir, volumeBytes, plan, fioTimeoutMs: 120_000 };
  const targets: Record<NbdTargetName, NbdTargetResult> = {
    vrg: emptyResult(`VRG Async intake (lz4 on every frame + aes, ${codecLabel}), production -> DR gateway, drained after each job`),
    vrgWriteBack: emptyResult('VRG Async, write-back intake (intake.writeBack: acknowledged once in the journal file and the source, before the fdatasync; FLUSH/FUA durable)'),
    vrgIntakeOnly: emptyResult('VRG NBD intake alone, no replication: journal + source volume, write-back (each byte written twice; the ceiling of any VRG Async figure here)'),
    vrgSync: emptyResult('VRG Sync intake: each write acknowledged once durable (fdatasync) on the DR volume'),
    qemuNbd: emptyResult(`qemu-nbd ${qemuNbdFlags.join(' ')} on a raw file, no replication (ceiling)`),
    qemuNbdWritethrough: emptyResult('the same with --cache=writethrough: each write durable before its reply (durable ceiling)'),
    qemuMirrorBackground: emptyResult('qemu-storage-daemon NBD export + blockdev-mirror copy-mode=background -> qemu-nbd DR'),
    qemuMirrorWriteBlocking: emptyResult('qemu-storage-daemon NBD export + blockdev-mirror copy-mode=write-blocking -> qemu-nbd DR'),
  };
  const needs: Record<NbdTargetName, string[]> = {
    vrg: ['fio'], vrgWriteBack: ['fio'], vrgSync: ['fio'], vrgIntakeOnly: ['fio'], qemuNbd: ['fio', 'qemu-nbd'], qemuNbdWritethrough: ['fio', 'qemu-nbd'],
    qemuMirrorBackground: ['fio', 'qemu-nbd', 'qemu-storage-daemon'], qemuMirrorWriteBlocking: ['fio', 'qemu-nbd', 'qemu-storage-daemon'],
  };
  const fioVersion = which('fio') ? (await capture('fio', ['--version'], 10_000).catch(() => ({ out: '' }))).out.trim() || null : null;
  const nbdEngine = fioVersion ? (await capture('fio', ['--enghelp=nbd'], 10_000).catch(() => ({ code: 1, out: '' }))).code === 0 : false;
  const runners: Record<NbdTargetName, (r: NbdTargetResult) => Promise<void>> = {
    vrg: (r) => targetVrg(ctx, r, 'async'),
    vrgWriteBack: (r) => targetVrg(ctx, r, 'async', true),
    vrgIntakeOnly: (r) => targetIntakeOnly(ctx, r),
    vrgSync: (r) => targetVrg(ctx, r, 'sync'),
    qemuNbd: (r) => targetQemuNbd(ctx, r, 'writeback'),
    qemuNbdWritethrough: (r) => targetQemuNbd(ctx, r, 'writethrough'),
    qemuMirrorBackground: (r) => targetQemuMirror(ctx, r, 'background'),
    qemuMirrorWriteBlocking: (r) => targetQemuMirror(ctx, r, 'write-blocking'),
  };
  for (const name of Object.keys(runners) as NbdTargetName[]) {
    const r = targets[name];
    const missing = needs[name].filter((c) => !which(c));
    if (opts.only && !opts.only.includes(name)) r.skipped = 'not selected';
    else if (missing.length > 0) r.skipped = `not installed: ${missing.join(', ')}`;
    else if (!nbdEngine) r.skipped = 'fio has no nbd engine (built without libnbd)';
    if (r.skipped) continue;
    process.stdout.write(`nbd: ${name}...\n`);
    try {
      await runners[name](r);
    } catch (err) {
      r.error = (err as Error).message;
      process.stdout.write(`nbd: ${name} failed: ${r.error}\n`);
    }
  }
  const ratio = (a?: FioFigures, b?: FioFigures): number | null => (a && b && b.MBps > 0 ? a.MBps / b.MBps : null);
  const ratios = Object.fromEntries(jobNames.map((j) => [j, {
    vsQemuNbd: ratio(targets.vrg.jobs[j], targets.qemuNbd.jobs[j]),
    vsQemuNbdWritethrough: ratio(targets.vrg.jobs[j], targets.qemuNbdWritethrough.jobs[j]),
    vsQemuMirrorBackground: ratio(targets.vrg.jobs[j], targets.qemuMirrorBackground.jobs[j]),
    vsQemuMirrorWriteBlocking: ratio(targets.vrg.jobs[j], targets.qemuMirrorWriteBlocking.jobs[j]),
    writeBackVsQemuMirrorBackground: ratio(targets.vrgWriteBack.jobs[j], targets.qemuMirrorBackground.jobs[j]),
    syncVsWriteBlocking: ratio(targets.vrgSync.jobs[j], targets.qemuMirrorWriteBlocking.jobs[j]),
    syncP99VsWriteBlockingP99: targets.vrgSync.jobs[j] && targets.qemuMirrorWriteBlocking.jobs[j]
      ? targets.vrgSync.jobs[j]!.p99Ms / targets.qemuMirrorWriteBlocking.jobs[j]!.p99Ms : null,
  }])) as NbdBenchResult['ratios'];
  return { volumeBytes, fio: { version: fioVersion, ...plan }, targets, ratios, seconds: (Date.now() - started) / 1000 };
}

export function formatNbdBench(r: NbdBenchResult): string {
  const lines = [`NBD intake, fio ${r.fio.version ?? '?'} nbd engine, QD 16, 50% compressible buffers, ${r.volumeBytes / MiB} MiB volume:`];
  lines.push('  target                    job       MB/s     IOPS  p50 ms  p99 ms  sync ms  CPU-s/GB  fio CPU-s  busy %  DR verified');
  const labels: Record<NbdTargetName, string> = {
    vrg: 'VRG async', vrgWriteBack: 'VRG async write-back', vrgSync: 'VRG sync', vrgIntakeOnly: 'VRG intake, no repl.', qemuNbd: 'qemu-nbd (no repl.)', qemuNbdWritethrough: 'qemu-nbd writethrough',
    qemuMirrorBackground: 'QEMU mirror background', qemuMirrorWriteBlocking: 'QEMU mirror write-block',
  };
  for (const [name, t] of Object.entries(r.targets) as Array<[NbdTargetName, NbdTargetResult]>) {
    if (t.skipped || (t.error && Object.keys(t.jobs).length === 0)) {
      lines.push(`  ${labels[name].padEnd(25)} ${t.skipped ? `skipped: ${t.skipped}` : `failed: ${t.error}`}`);
      continue;
    }
    const verified = t.verified === null ? (name.startsWith('qemuNbd') || name === 'vrgIntakeOnly' ? 'n/a' : '-') : String(t.verified);
    for (const job of jobNames) {
      const f = t.jobs[job];
      if (!f) continue;
      lines.push(`  ${labels[name].padEnd(25)} ${job.padEnd(7)} ${f.MBps.toFixed(1).padStart(7)} ${f.iops.toFixed(0).padStart(8)} ` +
        `${f.p50Ms.toFixed(2).padStart(7)} ${f.p99Ms.toFixed(2).padStart(7)} ${(f.syncMs === null ? '-' : String(f.syncMs)).padStart(8)} ` +
        `${(f.cpu ? f.cpu.targetCpuSecondsPerGB.toFixed(1) : '-').padStart(9)} ${(f.cpu ? f.cpu.fioCpuSeconds.toFixed(1) : '-').padStart(10)} ` +
        `${(f.cpu ? f.cpu.window.machineBusyPct.toFixed(0) : '-').padStart(7)}  ${verified}`);
      for (const g of f.cpu?.window.gateways ?? []) {
        lines.push(`      ${g.role.padEnd(10)} ${g.cpuSeconds.toFixed(1)} CPU-s, GC ${g.gcMs.toFixed(0)} ms (${(100 * g.gcShareOfCpu).toFixed(1)} % of its CPU, ` +
          `${g.gcCount} collections), event loop ${(100 * g.eventLoopUtilization).toFixed(0)} % busy; ` +
          `user ${g.split.userSeconds.toFixed(1)} sys ${g.split.sysSeconds.toFixed(1)} | main thread ${g.split.mainSeconds.toFixed(1)}, ` +
          `other threads ${(g.split.workerSeconds + g.split.otherSeconds).toFixed(1)}`);
      }
      for (const [stage, h] of Object.entries(f.stages ?? {})) {
        if (h.count > 0) lines.push(`      ${stage}: p50 ${h.p50Ms.toFixed(2)} ms, p99 ${h.p99Ms.toFixed(2)} ms, mean ${h.meanMs.toFixed(2)} ms (${h.count})`);
      }
    }
    if (t.rings) lines.push(`    rings: ${JSON.stringify(t.rings)}`);
    if (t.processes) lines.push(`    peak RSS: production ${t.processes.productionRssPeakMiB.toFixed(0)} MiB, DR ${t.processes.drRssPeakMiB.toFixed(0)} MiB`);
    if (t.error) lines.push(`    error: ${t.error}`);
  }
  const x = (v: number | null): string => (v === null ? '-' : `${v.toFixed(2)}x`);
  for (const job of jobNames) {
    const q = r.ratios[job];
    lines.push(`  VRG ${job} MB/s: ${x(q.vsQemuNbd)} of qemu-nbd, ${x(q.vsQemuNbdWritethrough)} of qemu-nbd writethrough, ` +
      `${x(q.vsQemuMirrorBackground)} of QEMU background mirror, ${x(q.vsQemuMirrorWriteBlocking)} of write-blocking mirror`);
    lines.push(`  VRG async write-back ${job}: ${x(q.writeBackVsQemuMirrorBackground)} of QEMU background mirror MB/s`);
    lines.push(`  VRG Sync ${job}: ${x(q.syncVsWriteBlocking)} of QEMU write-blocking mirror MB/s, p99 ${x(q.syncP99VsWriteBlockingP99)} of its p99`);
  }
  lines.push(`  (sync ms: after the fio job ended, until DR had every write. CPU-s/GB: the target's processes, all threads, from the`);
  lines.push(`  job's start until DR had every write, per GB fio wrote; fio's own CPU apart. ${r.seconds.toFixed(0)} s for the section)`);
  return lines.join('\n');
}

// `node dist/bench/nbd-bench.js [workDir] [target,target...]`: only this section (and only these targets).
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(import.meta.dirname ?? '.', '..', '..');
  const workDir = process.argv[2] ?? join(root, 'bench', 'work', 'nbd');
  const only = process.argv[3]?.split(',') as NbdTargetName[] | undefined;
  benchNbd({ workDir, only })
    .then(async (r) => {
      // The result as a file too, for charts: node dist/bench/charts.js <that file>.
      await mkdir(join(root, 'bench', 'results'), { recursive: true });
      const file = join(root, 'bench', 'results', `nbd-${new Date().toISOString().replaceAll(':', '-')}.json`);
      await writeFile(file, JSON.stringify(r, null, 2));
      process.stdout.write(`${formatNbdBench(r)}\n${JSON.stringify(r, null, 2)}\nresult: ${file}\n`);
      await rm(workDir, { recursive: true, force: true });
    })
    .catch((err) => {
      process.stderr.write(`nbd-bench: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    });
}
