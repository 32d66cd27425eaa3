import { readFile, writeFile } from 'node:fs/promises';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { NbdBenchResult, NbdJobName } from './nbd-bench.js';
import type { ProtectionBenchResult } from './protection-bench.js';

// Charts of a benchmark result, beside its JSON: vega-lite specs compiled to vega, rendered to SVG in Node
// (no browser), then to PNG with resvg. One chart per question a reader asks: how fast is each target
// (MB/s, VRG rows beside QEMU's), what does it cost (CPU-seconds per GB, all processes of the target), how
// long does a write wait (p50 and p99), and how fast are the protection passes (initial sync, check, resync).
// `node dist/bench/charts.js RESULT.json` draws them for an earlier result.

export interface ChartInput {
  nbd?: NbdBenchResult;
  protection?: ProtectionBenchResult;
}

type Row = Record<string, string | number>;

/** Long-format rows of the NBD section: one per target and job that ran. */
export function nbdRows(nbd: NbdBenchResult): Row[] {
  const rows: Row[] = [];
  for (const [target, r] of Object.entries(nbd.targets)) {
    for (const [job, f] of Object.entries(r.jobs) as Array<[NbdJobName, NonNullable<(typeof r.jobs)[NbdJobName]>]>) {
      rows.push({
        target, job, side: target.startsWith('vrg') ? 'VRG' : 'QEMU', MBps: f.MBps, p50Ms: f.p50Ms, p99Ms: f.p99Ms,
        ...(f.cpu ? { cpuSecondsPerGB: f.cpu.targetCpuSecondsPerGB } : {}),
      });
    }
  }
  return rows;
}

function bars(title: string, values: Row[], field: string, axis: string): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title, width: 360, height: 220, background: 'white',
    data: { values }, mark: 'bar',
    encoding: {
      column: { field: 'job', type: 'nominal', title: null },
      x: { field: 'target', type: 'nominal', title: null, sort: null, axis: { labelAngle: -40, labelLimit: 240 } },
      y: { field, type: 'quantitative', title: axis },
      color: { field: 'side', type: 'nominal', title: null },
      tooltip: [{ field: 'target' }, { field, type: 'quantitative', format: '.2f' }],
    },
  };
}

/** The charts' specs by file suffix; a chart whose figures are absent is left out. */
export function chartSpecs(input: ChartInput): Record<string, TopLevelSpec> {
  const specs: Record<string, TopLevelSpec> = {};
  if (input.nbd) {
    const rows = nbdRows(input.nbd);
    if (rows.length > 0) {
      specs['nbd-mbps'] = bars('fio through NBD: MB/s per target', rows, 'MBps', 'MB/s');
      const latency = rows.flatMap((r) => [{ ...r, pct: 'p50', ms: r.p50Ms! }, { ...r, pct: 'p99', ms: r.p99Ms! }]);
      specs['nbd-latency'] = {
        ...bars('write latency per target: p50 and p99 (ms)', latency, 'ms', 'ms'),
        encoding: {
          column: { field: 'job', type: 'nominal', title: null },
          x: { field: 'target', type: 'nominal', title: null, sort: null, axis: { labelAngle: -40, labelLimit: 240 } },
          xOffset: { field: 'pct', type: 'nominal' },
          y: { field: 'ms', type: 'quantitative', title: 'ms' },
          color: { field: 'pct', type: 'nominal', title: null },
        },
      } as TopLevelSpec;
    }
    const cpu = rows.filter((r) => typeof r.cpuSecondsPerGB === 'number');
    if (cpu.length > 0) specs['nbd-cpu'] = bars('CPU-seconds per replicated GB (all processes of the target)', cpu, 'cpuSecondsPerGB', 'CPU-s / GB');
  }
  if (input.protection) {
    const p = input.protection;
    const values: Row[] = [
      { pass: 'initial sync', MBps: p.initialSync.MBps }, { pass: 'consistency check', MBps: p.check.GBps * 1000 },
      { pass: 'CBT resync', MBps: p.cbtResync.MBps },
    ];
    specs['protection'] = {
      $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title: 'protection passes: MB/s of volume', width: 300, height: 200,
      background: 'white', data: { values }, mark: 'bar',
      encoding: { x: { field: 'pass', type: 'nominal', title: null, sort: null }, y: { field: 'MBps', type: 'quantitative', title: 'MB/s' } },
    };
  }
  return specs;
}

/** SVG and PNG of one spec. */
export async function render(spec: TopLevelSpec): Promise<{ svg: string; png: Buffer }> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  const png = new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, font: { loadSystemFonts: true } }).render().asPng();
  return { svg, png };
}

/** Writes `<base>-<chart>.svg` and `.png` for every chart the input has figures for; the files written. */
export async function writeCharts(input: ChartInput, base: string): Promise<string[]> {
  const files: string[] = [];
  for (const [name, spec] of Object.entries(chartSpecs(input))) {
    const { svg, png } = await render(spec);
    await writeFile(`${base}-${name}.svg`, svg);
    await writeFile(`${base}-${name}.png`, png);
    files.push(`${base}-${name}.svg`, `${base}-${name}.png`);
  }
  return files;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node dist/bench/charts.js RESULT.json (a bench, nbd-bench or protection result)\n');
    process.exit(2);
  }
  const doc = JSON.parse(await readFile(file, 'utf8')) as ChartInput & Partial<NbdBenchResult & ProtectionBenchResult>;
  // A whole bench result has sections; an nbd-bench or protection-bench result is the section itself.
  const input: ChartInput = doc.targets ? { nbd: doc as NbdBenchResult } : doc.initialSync ? { protection: doc as ProtectionBenchResult } : doc;
  const files = await writeCharts(input, file.replace(/\.json$/, ''));
  process.stdout.write(files.length > 0 ? `${files.join('\n')}\n` : `${file}: no figures to chart\n`);
}
