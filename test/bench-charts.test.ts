import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { chartSpecs, writeCharts } from '../bench/charts.js';
import type { NbdBenchResult } from '../bench/nbd-bench.js';

// The benchmark's charts (bench/charts.ts): vega-lite to SVG in Node, resvg to PNG. The figures below are a
// fixture for the renderer, not measurements.

const job = (MBps: number, p50Ms: number, p99Ms: number, cpu?: number) => ({
  bytes: 1, seconds: 1, MBps, iops: 1, p50Ms, p99Ms, syncMs: null,
  ...(cpu === undefined ? {} : { cpu: { window: {} as never, targetCpuSecondsPerGB: cpu, fioCpuSeconds: 1 } }),
});
const target = (jobs: object, skipped: string | null = null) => ({ description: '', skipped, error: null, jobs, verified: null, verifyDetail: null });
const nbd = {
  volumeBytes: 1, seconds: 1, fio: { version: null, common: [], jobs: { seq64k: [], rand4k: [] } }, ratios: {},
  targets: {
    vrg: target({ seq64k: job(89, 5, 20, 17.6), rand4k: job(12, 2, 9) }),
    qemuMirrorWriteBlocking: target({ seq64k: job(345, 1.5, 43, 2.2) }),
    qemuNbd: target({}, 'qemu-nbd not found'),
  },
} as unknown as NbdBenchResult;

t.test('SVG and PNG per chart, VRG rows beside the QEMU rows; a skipped target and absent figures are left out', async (t) => {
  const base = join(t.testdir(), 'bench-x');
  const files = await writeCharts({ nbd, protection: { volumeBytes: 1, dataBytes: 1, initialSync: { seconds: 1, MBps: 400, bytesSent: 1 },
    check: { seconds: 1, GBps: 1.2, regionsChecked: 1 }, cbtResync: { dirtyBytes: 1, seconds: 1, MBps: 300 } } }, base);
  t.same(files.map((f) => f.slice(base.length)).sort(), ['-nbd-cpu.png', '-nbd-cpu.svg', '-nbd-latency.png', '-nbd-latency.svg',
    '-nbd-mbps.png', '-nbd-mbps.svg', '-protection.png', '-protection.svg']);
  const mbps = await readFile(`${base}-nbd-mbps.svg`, 'utf8');
  t.match(mbps, /^<svg/, 'an SVG document');
  for (const s of ['vrg', 'qemuMirrorWriteBlocking', 'MB/s', 'seq64k', 'rand4k']) t.ok(mbps.includes(s), `the MB/s chart shows ${s}`);
  t.notOk(mbps.includes('qemuNbd<') || mbps.includes('>qemuNbd'), 'the skipped target is not drawn');
  t.ok((await readFile(`${base}-nbd-cpu.svg`, 'utf8')).includes('CPU-s / GB'), 'the CPU chart');
  const png = await readFile(`${base}-nbd-mbps.png`);
  t.same([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG (resvg\'s native binding loaded)');
  t.ok(png.readUInt32BE(16) > 300 && png.readUInt32BE(20) > 200, `${png.readUInt32BE(16)}x${png.readUInt32BE(20)} pixels`);
  t.same(Object.keys(chartSpecs({})), [], 'no figures: no chart');
  t.same(Object.keys(chartSpecs({ nbd: { ...nbd, targets: { vrg: target({ seq64k: job(1, 1, 1) }) } } as unknown as NbdBenchResult })), ['nbd-mbps', 'nbd-latency'],
    'no CPU figures: no CPU chart');
});
