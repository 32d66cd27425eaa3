import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { writeCharts } from './charts.js';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { runDemo, type DemoResult } from '../src/cli/demo.js';
import { MiB } from '../src/core/limits.js';
import type { CodecStats } from '../src/pipeline/codec.js';
import { benchCodec, formatCodecBench, type CodecBenchResult } from './codec-bench.js';
import { benchFloor, formatFloorBench } from './floor-bench.js';
import { benchNbd, formatNbdBench } from './nbd-bench.js';
import { benchWan, formatWanBench } from './wan-bench.js';
import { benchProtection, formatProtectionBench } from './protection-bench.js';
import { benchClusterScale, formatClusterScaleBench } from './cluster-scale-bench.js';

// `npm run bench`: one run on this machine, side by side: the codec per worker beside `lz4 -b1` and
// `openssl speed` on the same data, and end-to-end Async replication of a realistic disk image (an ext4
// file system filled with this machine's system files) through two gateway processes on loopback.
// Writes bench/results/<time>.json and prints a table. Nothing here is asserted: it measures.

const run = promisify(execFile);
const root = resolve(import.meta.dirname ?? '.', '..', '..');
const workDir = join(root, 'bench', 'work');
const imageBytes = 768 * MiB;

/** An ext4 image made by mkfs.ext4 -d from system files: binaries, libraries, headers, docs. */
async function makeImage(path: string): Promise<void> {
  if (existsSync(path)) return;
  const staging = await mkdtemp(join(tmpdir(), 'vrg-image-'));
  try {
    // About 580 MB of binaries, headers, Python modules and docs: a system disk ~75% full.
    const sources = ['/usr/bin', '/usr/include', '/usr/lib/python3.11', '/usr/share/doc', '/usr/share/perl'];
    for (const src of sources.filter((s) => existsSync(s))) {
      await run('cp', ['-a', src, join(staging, src.replaceAll('/', '_'))], { maxBuffer: 1 << 20 }).catch(() => undefined);
    }
    await run('du', ['-sm', staging]);
    await run('truncate', ['-s', String(imageBytes), path]);
    await run('mkfs.ext4', ['-q', '-F', '-d', staging, path]);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

const sink = new Writable({ write: (_c, _e, cb) => cb() }) as unknown as NodeJS.WriteStream;

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
}

function perWorkerMBps(stats: CodecStats, stage: keyof CodecStats): number {
  const s = stats[stage];
  return s.busyNs > 0 ? s.bytesIn / 1e6 / (s.busyNs / 1e9) : 0;
}

function e2eFigures(r: DemoResult) {
  const seconds = r.elapsedMs / 1000;
  const p = r.production.vms[0]!;
  const cpu = (f: DemoResult['productionProcess'] | null) => (f ? (f.cpuUserUs + f.cpuSystemUs) / 1e6 : 0);
  return {
    bytes: r.bytes,
    seconds,
    throughputMBps: r.bytes / 1e6 / seconds,
    writesPerSec: p.writes / seconds,
    ackLatencyP50Ms: pct(r.latenciesUs, 0.5) / 1000,
    ackLatencyP99Ms: pct(r.latenciesUs, 0.99) / 1000,
    compressionRatio: p.bytesSent > 0 ? p.plainBytesSent / p.bytesSent : 1,
    verified: r.verified,
    productionRssPeakMiB: r.productionProcess.rssPeakBytes / MiB,
    drRssPeakMiB: (r.drProcess?.rssPeakBytes ?? 0) / MiB,
    productionCpuSeconds: cpu(r.productionProcess),
    drCpuSeconds: cpu(r.drProcess),
    stageBusySeconds: {
      compress: r.productionProcess.codec.compress.busyNs / 1e9,
      seal: r.productionProcess.codec.seal.busyNs / 1e9,
      open: (r.drProcess?.codec.open.busyNs ?? 0) / 1e9,
      decompress: (r.drProcess?.codec.decompress.busyNs ?? 0) / 1e9,
    },
    stageMBpsPerWorker: {
      compress: perWorkerMBps(r.productionProcess.codec, 'compress'),
      seal: perWorkerMBps(r.productionProcess.codec, 'seal'),
      open: r.drProcess ? perWorkerMBps(r.drProcess.codec, 'open') : 0,
      decompress: r.drProcess ? perWorkerMBps(r.drProcess.codec, 'decompress') : 0,
    },
  };
}

async function e2e(image: string, compress: 0 | 1, encrypt: 0 | 1, sizeBytes: number) {
  const r = await runDemo({
    dir: join(workDir, 'e2e'), sizeBytes, volumeSizeBytes: 1024 * MiB, compress, encrypt, source: image,
    seed: 1, writeBytes: 256 * 1024, queueDepth: 32, load: 'builtin',
  }, sink);
  return e2eFigures(r);
}

function table(codec: CodecBenchResult, rows: Array<[string, ReturnType<typeof e2eFigures>]>): string {
  const lines = [formatCodecBench(codec), '', 'end-to-end Async replication (realistic ext4 image, 256 KiB writes, QD 32):'];
  lines.push('  mode            MB/s   IOPS   p50 ms  p99 ms  ratio  prodRSS  drRSS  prodCPU  drCPU  verified');
  for (const [name, f] of rows) {
    lines.push(`  ${name.padEnd(14)} ${f.throughputMBps.toFixed(1).padStart(6)} ${f.writesPerSec.toFixed(0).padStart(6)} ` +
      `${f.ackLatencyP50Ms.toFixed(2).padStart(7)} ${f.ackLatencyP99Ms.toFixed(2).padStart(7)} ${f.compressionRatio.toFixed(2).padStart(6)} ` +
      `${f.productionRssPeakMiB.toFixed(0).padStart(6)}M ${f.drRssPeakMiB.toFixed(0).padStart(5)}M ` +
      `${f.productionCpuSeconds.toFixed(1).padStart(7)}s ${f.drCpuSeconds.toFixed(1).padStart(5)}s  ${f.verified}`);
    const b = f.stageBusySeconds;
    lines.push(`    stage busy: compress ${b.compress.toFixed(2)}s, seal ${b.seal.toFixed(2)}s, open ${b.open.toFixed(2)}s, ` +
      `decompress ${b.decompress.toFixed(2)}s over ${f.seconds.toFixed(2)}s`);
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  await mkdir(join(root, 'bench', 'results'), { recursive: true });
  await mkdir(workDir, { recursive: true });
  const image = join(workDir, 'image.ext4');
  process.stdout.write(`preparing ${image} (mkfs.ext4 -d from system files)...\n`);
  await makeImage(image);
  process.stdout.write('codec on one thread vs lz4 -b1 and openssl speed...\n');
  const codec = await benchCodec({ imagePath: image });
  const sizeBytes = Number(process.env.VRG_BENCH_BYTES ?? 512 * MiB);
  const rows: Array<[string, ReturnType<typeof e2eFigures>]> = [];
  for (const [name, c, e] of [['lz4+aes', 1, 1], ['raw', 0, 0]] as const) {
    process.stdout.write(`end to end, ${name}...\n`);
    rows.push([name, await e2e(image, c, e, sizeBytes)]);
  }
  process.stdout.write('NBD intake: fio against VRG, qemu-nbd and a QEMU blockdev-mirror...\n');
  const nbd = await benchNbd({ workDir: join(workDir, 'nbd') });
  await rm(join(workDir, 'nbd'), { recursive: true, force: true });
  process.stdout.write('floor: a minimal two-process replicator doing only the unavoidable work...\n');
  const floor = await benchFloor({ workDir: join(workDir, 'floor') });
  await rm(join(workDir, 'floor'), { recursive: true, force: true });
  process.stdout.write('WAN row: production and DR in two network namespaces over a tbf-shaped veth...\n');
  const wan = await benchWan({ workDir: join(workDir, 'wan') });
  await rm(join(workDir, 'wan'), { recursive: true, force: true });
  process.stdout.write('protection: initial sync, consistency check, CBT resync...\n');
  const protection = await benchProtection({ imagePath: image, workDir: join(workDir, 'protection') });
  // Opt-in (it needs the etcd binary, ~30 s): 4 + 4 gateways' cluster loops against a real etcd.
  const cluster = process.env.VRG_BENCH_CLUSTER === '1' ? await benchClusterScale() : null;
  const result = {
    at: new Date().toISOString(), machine: { cores: (await import('node:os')).cpus().length }, codec, e2e: Object.fromEntries(rows), nbd, floor, wan, protection, cluster,
  };
  const file = join(root, 'bench', 'results', `bench-${result.at.replaceAll(':', '-')}.json`);
  await writeFile(file, JSON.stringify(result, null, 2));
  const charts = await writeCharts({ nbd, protection }, file.replace(/\.json$/, ''));
  process.stdout.write(`${table(codec, rows)}\n\n${formatNbdBench(nbd)}\n\n${formatFloorBench(floor)}\n\n${formatWanBench(wan)}\n\n${formatProtectionBench(protection)}${cluster ? `\n\n${formatClusterScaleBench(cluster)}` : ''}\n\nresult: ${file}\ncharts: ${charts.filter((f) => f.endsWith('.svg')).join(' ')} (and .png)\n`);
  await rm(join(workDir, 'e2e'), { recursive: true, force: true });
}

main().catch((err) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
