import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { mkdir, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { capture } from './nbd-bench.js';
import { startCpuWindow } from './cpu-meter.js';
import { startThreadSplit, type ThreadSplit } from './thread-cpu.js';
import type { CodecAloneResult } from './floor-codec-alone.js';
import { MiB, zeroHalfShare } from './floor-codec.js';
import type { DrStats } from './floor-dr.js';
import type { FromChild, NodeConfig, ToChild } from './floor-node.js';
import type { FloorMode, ProductionStats } from './floor-production.js';

// The floor benchmark: the least work the replication target allows, measured in the same run as the product
// would be. Two plain-Node processes, floor-production (NBD server, journal with group commit, source image,
// LZ4 + AES-128-GCM per ~1 MiB batch, one TCP link) and floor-dr (authenticate, decrypt, LZ4-decode, write,
// fdatasync per group, ack), driven by fio's nbd engine: 64 KiB sequential writes, QD 16, 50% compressible
// buffers. Variants: codec inline on the main thread, codec in one worker thread, and no codec (same I/O).
// Plus the codec alone in one process. CPU = utime + stime of every thread (/proc), from the fio job's start
// until DR holds every write; GB = 10^9 bytes fio wrote. Nothing is asserted: it measures and reports.

export interface FloorBenchOptions {
  workDir: string;
  volumeBytes?: number;
  fioBytes?: number;
  codecBytes?: number;
  modes?: FloorMode[];
  fioTimeoutMs?: number;
}

export interface FioFigures { bytes: number; seconds: number; MBps: number; iops: number; cpuSeconds: number; usrPct: number; sysPct: number }

export interface FloorRun {
  mode: FloorMode;
  fio?: FioFigures;
  /** fio job start until DR acknowledged every write. */
  windowSeconds?: number;
  /** fio's exit until DR acknowledged every write. */
  drainMs?: number;
  /** fio bytes / windowSeconds: replicated MB/s. */
  replicatedMBps?: number;
  productionCpuSeconds?: number;
  drCpuSeconds?: number;
  /** The same CPU by user/system and by thread (main, codec worker, the rest). */
  productionSplit?: ThreadSplit;
  drSplit?: ThreadSplit;
  machineBusyPct?: number;
  production?: ProductionStats;
  dr?: DrStats;
  /** DR image == source image over the whole volume. */
  verified?: { equal: boolean; comparedBytes: number; firstMismatchAt: number | null };
  /** Share of 512-byte segments of the source image's first 4 MiB ending in 256 zero bytes (fio's layout: 1.0). */
  fioZeroHalfShare?: number;
  error?: string;
}

export interface FloorBenchResult {
  fioVersion: string | null;
  workDir: string;
  volumeBytes: number;
  fioBytes: number;
  /** Images and journal written once before the run (floorPrefill), or sparse and empty. */
  prefilled: boolean;
  codec: CodecAloneResult | { error: string };
  runs: FloorRun[];
  seconds: number;
}

// ---------------------------------------------------------------------------------------------------------
// Child processes: every one is tracked and killed at the end (and on exit, should the bench crash).

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

const nodeEntry = new URL('./floor-node.js', import.meta.url);

class FloorChild {
  private readonly waiting: Array<{ type: FromChild['type']; resolve(m: FromChild): void; reject(e: Error): void }> = [];
  private constructor(readonly role: string, readonly proc: ChildProcess) {
    proc.on('message', (m: FromChild) => this.onMessage(m));
    proc.on('exit', (code, signal) => this.failAll(new Error(`${role} exited (${code ?? signal})`)));
  }

  static fork(role: string, logPath: string): FloorChild {
    const log = openSync(logPath, 'a');
    // FLOOR_NODE_ARGS: extra node flags for the children (e.g. --perf-basic-prof to profile them with perf).
    const execArgv = (process.env.FLOOR_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const proc = fork(nodeEntry, [role], { stdio: ['ignore', log, log, 'ipc'], execArgv });
    closeSync(log);
    live.add(proc);
    proc.on('exit', () => live.delete(proc));
    return new FloorChild(role, proc);
  }

  get pid(): number {
    return this.proc.pid!;
  }

  request<T extends FromChild['type']>(msg: ToChild, type: T, timeoutMs: number): Promise<Extract<FromChild, { type: T }>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.role}: no '${type}' after ${timeoutMs} ms`)), timeoutMs);
      const done = { type, resolve: (m: FromChild) => (clearTimeout(timer), resolve(m as Extract<FromChild, { type: T }>)),
        reject: (e: Error) => (clearTimeout(timer), reject(e)) };
      this.waiting.push(done);
      this.proc.send(msg);
    });
  }

  /** Asks the child to stop; SIGKILL after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    try {
      if (this.proc.connected) this.proc.send({ type: 'stop' } satisfies ToChild);
      else this.proc.kill('SIGKILL');
      await exited;
    } finally {
      clearTimeout(timer);
    }
  }

  private onMessage(m: FromChild): void {
    if (m.type === 'error') return this.failAll(new Error(`${this.role}: ${m.message}`));
    const i = this.waiting.findIndex((w) => w.type === m.type);
    if (i >= 0) this.waiting.splice(i, 1)[0]!.resolve(m);
  }

  private failAll(err: Error): void {
    for (const w of this.waiting.splice(0)) w.reject(err);
  }
}

// ---------------------------------------------------------------------------------------------------------
// fio


/** The brief's job exactly: 64 KiB sequential writes, QD 16, 50% compressible, fresh buffers per write. */
function fioArgs(port: number, fioBytes: number, outPath: string): string[] {
  return ['--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/disk`, '--iodepth=16', '--buffer_compress_percentage=50',
    '--refill_buffers', '--eta=never', '--name=seq64k', '--rw=write', '--bs=64k', `--size=${fioBytes}`,
    '--output-format=json', `--output=${outPath}`];
}

interface FioJob { error: number; usr_cpu?: number; sys_cpu?: number; job_runtime?: number; write: { io_bytes: number; bw_bytes: number; iops: number; runtime: number } }

async function runFio(port: number, fioBytes: number, outPath: string, timeoutMs: number): Promise<FioFigures> {
  const r = await capture('fio', fioArgs(port, fioBytes, outPath), timeoutMs);
  if (r.code !== 0) throw new Error(`fio exited ${r.code}: ${r.out.trim().slice(-500)}`);
  const text = await readFile(outPath, 'utf8');
  const j = (JSON.parse(text.slice(text.indexOf('{'))) as { jobs: FioJob[] }).jobs[0];
  if (!j || j.error !== 0) throw new Error(`fio job error ${j?.error}`);
  const w = j.write;
  const usrPct = j.usr_cpu ?? 0;
  const sysPct = j.sys_cpu ?? 0;
  const cpuSeconds = ((usrPct + sysPct) / 100) * ((j.job_runtime ?? w.runtime) / 1000);
  return { bytes: w.io_bytes, seconds: w.runtime / 1000, MBps: w.bw_bytes / 1e6, iops: w.iops, cpuSeconds, usrPct, sysPct };
}

// ---------------------------------------------------------------------------------------------------------
// Files

async function sparseFile(path: string, bytes: number): Promise<void> {
  await rm(path, { force: true });
  await writeFile(path, '');
  await truncate(path, bytes);
}

/**
 * A file of `bytes` written once (one byte pattern) and fsynced: the floor's steady state, as nbd-bench's
 * whole-volume warm-up is VRG's and VRG's journal reuses its segment files. On this VM the first write of a
 * page-cache page costs about ten times an overwrite (see nbd-bench's prefill), which a sparse file charges to
 * every block the measured job writes.
 */
async function prefilledFile(path: string, bytes: number): Promise<void> {
  await rm(path, { force: true });
  const fh = await open(path, 'wx');
  try {
    const chunk = Buffer.alloc(4 * MiB, 0x5a);
    for (let at = 0; at < bytes; at += chunk.length) await fh.write(chunk, 0, Math.min(chunk.length, bytes - at), at);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** VRG_BENCH_PREFILL=0: sparse images and an empty journal, as before the warm-up (see prefilledFile). */
export const floorPrefill = process.env.VRG_BENCH_PREFILL !== '0';

/** Room for the journal: fio's bytes, a record head per 64 KiB write and the group heads, rounded up. */
function journalFileBytes(fioBytes: number): number {
  return Math.ceil((fioBytes * 1.125) / MiB) * MiB;
}

/** Byte-for-byte comparison of two files over `bytes`, 8 MiB at a time. */
async function compareFiles(a: string, b: string, bytes: number): Promise<NonNullable<FloorRun['verified']>> {
  const [fa, fb] = [await open(a, 'r'), await open(b, 'r')];
  const [ba, bb] = [Buffer.alloc(8 * MiB), Buffer.alloc(8 * MiB)];
  try {
    if ((await fa.stat()).size !== (await fb.stat()).size) return { equal: false, comparedBytes: 0, firstMismatchAt: 0 };
    for (let at = 0; at < bytes; at += ba.length) {
      const n = Math.min(ba.length, bytes - at);
      const [ra, rb] = [await fa.read(ba, 0, n, at), await fb.read(bb, 0, n, at)];
      if (ra.bytesRead !== n || rb.bytesRead !== n) return { equal: false, comparedBytes: at, firstMismatchAt: at };
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) {
        let i = 0;
        while (ba[i] === bb[i]) i++;
        return { equal: false, comparedBytes: at + n, firstMismatchAt: at + i };
      }
    }
    return { equal: true, comparedBytes: bytes, firstMismatchAt: null };
  } finally {
    await fa.close();
    await fb.close();
  }
}

async function sampleZeroHalfShare(path: string): Promise<number> {
  const f = await open(path, 'r');
  try {
    const b = Buffer.alloc(4 * MiB);
    const { bytesRead } = await f.read(b, 0, b.length, 0);
    return zeroHalfShare(b.subarray(0, bytesRead));
  } finally {
    await f.close();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Runs

interface Ctx { workDir: string; volumeBytes: number; fioBytes: number; fioTimeoutMs: number }

interface Pair { prod: FloorChild; dr: FloorChild; nbdPort: number; prodTid: number | null; drTid: number | null }

async function startPair(ctx: Ctx, mode: FloorMode, dir: string): Promise<Pair> {
  const keys = { keyHex: randomBytes(16).toString('hex'), saltHex: randomBytes(4).toString('hex') };
  const dr = FloorChild.fork('dr', join(dir, 'dr.log'));
  const drConfig: NodeConfig = { role: 'dr', mode, imagePath: join(dir, 'dr.img'), ...keys };
  const drReady = await dr.request({ type: 'start', config: drConfig }, 'ready', 30_000);
  const prod = FloorChild.fork('production', join(dir, 'production.log'));
  const prodConfig: NodeConfig = {
    role: 'production', mode, sourcePath: join(dir, 'source.img'), journalPath: join(dir, 'journal.bin'),
    volumeBytes: ctx.volumeBytes, drPort: drReady.port, ...keys,
  };
  const prodReady = await prod.request({ type: 'start', config: prodConfig }, 'ready', 30_000);
  return { prod, dr, nbdPort: prodReady.port, prodTid: prodReady.codecTid, drTid: drReady.codecTid };
}

/** fio inside CPU windows over both floor processes, closed once DR has acknowledged every write. */
async function measure(ctx: Ctx, dir: string, pair: Pair, run: FloorRun): Promise<void> {
  const { prod, dr, nbdPort } = pair;
  const wProd = await startCpuWindow([prod.pid]);
  const wDr = await startCpuWindow([dr.pid]);
  const sProd = startThreadSplit(prod.pid, pair.prodTid);
  const sDr = startThreadSplit(dr.pid, pair.drTid);
  const t0 = performance.now();
  run.fio = await runFio(nbdPort, ctx.fioBytes, join(dir, 'fio.json'), ctx.fioTimeoutMs);
  const tFio = performance.now();
  run.production = (await prod.request({ type: 'drain' }, 'drained', 300_000)).stats as ProductionStats;
  const tEnd = performance.now();
  const [p, d] = [await wProd.end(), await wDr.end()];
  run.productionSplit = sProd.end();
  run.drSplit = sDr.end();
  run.dr = (await dr.request({ type: 'stats' }, 'stats', 30_000)).stats as DrStats;
  run.windowSeconds = (tEnd - t0) / 1000;
  run.drainMs = tEnd - tFio;
  run.replicatedMBps = run.fio.bytes / 1e6 / run.windowSeconds;
  run.productionCpuSeconds = p.targetCpuSeconds;
  run.drCpuSeconds = d.targetCpuSeconds;
  run.machineBusyPct = p.machineBusyPct;
}

async function runVariant(ctx: Ctx, mode: FloorMode): Promise<FloorRun> {
  const dir = join(ctx.workDir, `floor-${mode}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const [source, drImage, journal] = [join(dir, 'source.img'), join(dir, 'dr.img'), join(dir, 'journal.bin')];
  if (floorPrefill) {
    // Identical content on both sides, so the comparison after the run still covers the whole volume.
    for (const f of [source, drImage]) await prefilledFile(f, ctx.volumeBytes);
    await prefilledFile(journal, journalFileBytes(ctx.fioBytes));
  } else {
    for (const f of [source, drImage]) await sparseFile(f, ctx.volumeBytes);
    await sparseFile(journal, 0);
  }
  const run: FloorRun = { mode };
  let pair: Pair | null = null;
  try {
    pair = await startPair(ctx, mode, dir);
    await measure(ctx, dir, pair, run);
  } catch (err) {
    run.error = (err as Error).message;
  } finally {
    await Promise.all([pair?.prod.stop(), pair?.dr.stop()]);
  }
  if (!run.error) {
    run.verified = await compareFiles(source, drImage, ctx.volumeBytes);
    run.fioZeroHalfShare = await sampleZeroHalfShare(source);
  }
  // Keep the logs and fio's report; drop the 1.5 GB of images and journal.
  await Promise.all(['source.img', 'dr.img', 'journal.bin'].map((f) => rm(join(dir, f), { force: true })));
  return run;
}

async function runCodec(ctx: Ctx, bytes: number): Promise<CodecAloneResult | { error: string }> {
  const dir = join(ctx.workDir, 'floor-codec');
  await mkdir(dir, { recursive: true });
  const c = FloorChild.fork('codec', join(dir, 'codec.log'));
  try {
    return (await c.request({ type: 'start', config: { role: 'codec', bytes } }, 'codec', 600_000)).result as CodecAloneResult;
  } catch (err) {
    return { error: (err as Error).message };
  } finally {
    await c.stop();
  }
}

export async function benchFloor(opts: FloorBenchOptions): Promise<FloorBenchResult> {
  const started = Date.now();
  const ctx: Ctx = {
    workDir: resolve(opts.workDir), volumeBytes: opts.volumeBytes ?? 1024 * MiB, fioBytes: opts.fioBytes ?? 512 * MiB,
    fioTimeoutMs: opts.fioTimeoutMs ?? 600_000,
  };
  await mkdir(ctx.workDir, { recursive: true });
  const fioVersion = (await capture('fio', ['--version'], 10_000).catch(() => ({ out: '' }))).out.trim() || null;
  const codec = await runCodec(ctx, opts.codecBytes ?? 512 * MiB);
  const runs: FloorRun[] = [];
  for (const mode of opts.modes ?? ['inline', 'worker', 'none']) runs.push(await runVariant(ctx, mode));
  return {
    fioVersion, workDir: ctx.workDir, volumeBytes: ctx.volumeBytes, fioBytes: ctx.fioBytes, prefilled: floorPrefill, codec, runs,
    seconds: (Date.now() - started) / 1000,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Report

const perGB = (cpuSeconds: number, bytes: number): number => cpuSeconds / (bytes / 1e9);
const fix = (v: number | undefined, digits: number, width: number): string => (v === undefined ? '-' : v.toFixed(digits)).padStart(width);

const variantLabel: Record<FloorMode, string> = { inline: 'codec inline', worker: 'codec in 1 worker', none: 'no codec' };

/** Table columns: header, unit, width. */
const columns: Array<[string, string, number]> = [
  ['fio', 'MB/s', 6], ['repl', 'MB/s', 6], ['drain', 'ms', 7], ['prod', 'CPU-s/GB', 9], ['dr', 'CPU-s/GB', 9],
  ['both', 'CPU-s/GB', 9], ['fio', 'CPU-s/GB', 9], ['busy', '%', 6], ['ratio', '', 6], ['journal', 'groups', 8],
  ['frames', '', 7], ['DR', 'fsyncs', 7],
];

function row(label: string, cells: string[], tail: string): string {
  return `  ${label.padEnd(18)}${cells.map((c, i) => c.padStart(columns[i]![2])).join('')}  ${tail}`;
}

function headerLines(): string[] {
  return [row('variant', columns.map((c) => c[0]), 'DR == source'), row('', columns.map((c) => c[1]), '')];
}

function runLine(r: FloorRun): string {
  if (r.error || !r.fio) return `  ${variantLabel[r.mode].padEnd(18)} failed: ${r.error ?? 'no figures'}`;
  const b = r.fio.bytes;
  const prod = perGB(r.productionCpuSeconds ?? 0, b);
  const dr = perGB(r.drCpuSeconds ?? 0, b);
  const ratio = r.production && r.production.storedBytes > 0 ? r.production.rawBytes / r.production.storedBytes : undefined;
  const v = r.verified ? (r.verified.equal ? `yes (${(r.verified.comparedBytes / MiB).toFixed(0)} MiB)` : `NO at ${r.verified.firstMismatchAt}`) : '-';
  const cells = [fix(r.fio.MBps, 0, 0), fix(r.replicatedMBps, 0, 0), fix(r.drainMs, 0, 0), fix(prod, 2, 0), fix(dr, 2, 0),
    fix(prod + dr, 2, 0), fix(perGB(r.fio.cpuSeconds, b), 2, 0), fix(r.machineBusyPct, 0, 0), fix(ratio, 2, 0),
    String(r.production?.groups ?? '-'), String(r.production?.frames ?? '-'), String(r.dr?.groups ?? '-')];
  return row(variantLabel[r.mode], cells, v);
}

function splitLine(r: FloorRun): string[] {
  if (!r.fio || !r.productionSplit || !r.drSplit) return [];
  const b = r.fio.bytes;
  const part = (name: string, t: ThreadSplit): string =>
    `${name} user ${perGB(t.userSeconds, b).toFixed(2)} sys ${perGB(t.sysSeconds, b).toFixed(2)} | main ${perGB(t.mainSeconds, b).toFixed(2)}` +
    `${t.workerSeconds > 0 ? ` worker ${perGB(t.workerSeconds, b).toFixed(2)}` : ''} rest ${perGB(t.otherSeconds, b).toFixed(2)}`;
  return [`  ${variantLabel[r.mode].padEnd(18)}${part('prod', r.productionSplit)};  ${part('dr', r.drSplit)}`];
}

function codecLines(c: FloorBenchResult['codec']): string[] {
  if ('error' in c) return [`  codec alone failed: ${c.error}`];
  const gb = c.bytes / 1e9;
  const s = c.cpuSeconds;
  const mbps = (cpu: number): string => `${(c.bytes / 1e6 / cpu).toFixed(0)} MB/s`;
  return [
    `Codec alone (one process, main thread, ${(c.bytes / MiB).toFixed(0)} MiB of 64 KiB records in memory, 1 MiB frames; ratio ${c.ratio.toFixed(2)}; round trip verified: ${c.verified ? 'yes' : 'NO'}):`,
    `  LZ4 compress     ${fix(s.lz4Compress / gb, 3, 6)} CPU-s/GB  (${mbps(s.lz4Compress)} per CPU-s)`,
    `  AES-GCM seal     ${fix(s.seal / gb, 3, 6)} CPU-s/GB  (${mbps(s.seal)})`,
    `  AES-GCM open     ${fix(s.open / gb, 3, 6)} CPU-s/GB  (${mbps(s.open)})`,
    `  LZ4 decompress   ${fix(s.lz4Decompress / gb, 3, 6)} CPU-s/GB  (${mbps(s.lz4Decompress)})`,
    `  production side  ${fix((s.lz4Compress + s.seal) / gb, 3, 6)} CPU-s/GB (compress + seal), DR side ${((s.open + s.lz4Decompress) / gb).toFixed(3)} CPU-s/GB (open + decompress), both ${((s.lz4Compress + s.seal + s.open + s.lz4Decompress) / gb).toFixed(3)} CPU-s/GB`,
  ];
}

function codecCostLines(runs: FloorRun[]): string[] {
  const none = runs.find((r) => r.mode === 'none' && r.fio && !r.error);
  if (!none?.fio) return [];
  const both = (r: FloorRun): number => perGB((r.productionCpuSeconds ?? 0) + (r.drCpuSeconds ?? 0), r.fio!.bytes);
  return runs.filter((r) => r.mode !== 'none' && r.fio && !r.error).map((r) =>
    `  ${variantLabel[r.mode]} - no codec: ${(both(r) - both(none)).toFixed(2)} CPU-s/GB for the codec in the two-process program ` +
    `(I/O alone: ${both(none).toFixed(2)} CPU-s/GB)`);
}

/** The project's target, for reading the floor against it (reported, never asserted). */
const targetCpuSecondsPerGB = 5;

function targetLines(runs: FloorRun[]): string[] {
  const best = runs.filter((r) => r.mode !== 'none' && r.fio && !r.error)
    .map((r) => ({ r, v: perGB((r.productionCpuSeconds ?? 0) + (r.drCpuSeconds ?? 0), r.fio!.bytes) }))
    .sort((a, b) => a.v - b.v)[0];
  if (!best) return [];
  return [`  target ${targetCpuSecondsPerGB} CPU-s/GB for both gateways; lowest floor with LZ4 + AES here: ${best.v.toFixed(2)} (${variantLabel[best.r.mode]})`];
}

export function formatFloorBench(r: FloorBenchResult): string {
  const lines = [
    `Floor benchmark: ${r.fioVersion ?? 'fio ?'} nbd engine, 64 KiB sequential writes, QD 16, 50% compressible, refill_buffers,`,
    `${(r.fioBytes / MiB).toFixed(0)} MiB onto a ${(r.volumeBytes / MiB).toFixed(0)} MiB ${r.prefilled ? 'volume and a journal file written once before' : 'sparse volume, into an empty journal file'} (busy % = the whole machine in the window).`,
    '',
    ...codecLines(r.codec),
    '',
    'Two floor processes (CPU-s per GB fio wrote, GB = 10^9 B, all threads, fio job start until DR acked every write):',
    ...headerLines(),
    ...r.runs.map(runLine),
    ...codecCostLines(r.runs),
    ...targetLines(r.runs),
    'Where the CPU went (CPU-s/GB; rest = libuv file-system pool + V8 GC/compiler threads):',
    ...r.runs.flatMap(splitLine),
    `  (repl MB/s = fio bytes / window incl. drain; ratio = raw / (table + LZ4 data) per frame; fio's 50% layout check on the`,
    `  source image: ${r.runs.map((x) => `${x.mode} ${fix(x.fioZeroHalfShare, 3, 0)}`).join(', ')} of 512 B segments end in 256 zero bytes. ${r.seconds.toFixed(0)} s in all.)`,
  ];
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const workDir = process.argv[2] ?? join(process.cwd(), 'bench', 'work', 'floor');
  const result = await benchFloor({ workDir });
  await writeFile(join(resolve(workDir), 'floor-bench.json'), JSON.stringify(result, null, 2));
  process.stdout.write(`${formatFloorBench(result)}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
