import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { runChaos } from '../src/cli/chaos.js';
import { planSchedule, type FaultKind } from '../src/chaos/schedule.js';
import { needs } from './lib/tools.js';

// `vrg chaos` end to end: real gateway processes, a real NBD load, the fault proxy on the link. Three seeded
// schedules of 30 s with mixed faults (a fourth with DR disk faults through nbdkit) must end with no violation; the same seed replays the same schedule.

const main = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
const vrg = (...args: string[]) => spawnSync(process.execPath, [main, ...args], { encoding: 'utf8' });

t.test('the same seed plans the same schedule; another seed another; bad options are refused', async (t) => {
  const a = vrg('chaos', '--seed', '42', '--duration', '60', '--plan');
  const b = vrg('chaos', '--seed', '42', '--duration', '60', '--plan');
  const c = vrg('chaos', '--seed', '43', '--duration', '60', '--plan');
  t.equal(a.status, 0, 'exit 0');
  t.equal(a.stdout, b.stdout, 'seed 42 twice: the same faults, order and offsets');
  t.not(a.stdout, c.stdout, 'seed 43: another schedule');
  t.match(a.stdout, /^vrg chaos --seed 42 --duration 60s --faults \S+ --mode async\n\+2\.0s #1 /, `the replay command, then the faults:\n${a.stdout}`);
  t.ok(a.stdout.split('\n').length > 10, 'a minute holds many faults');
  for (const [args, why] of [
    [['--faults', 'kill-production,meteor'], /unknown fault "meteor"/],
    [['--duration', '2'], /--duration must be 5-86400 seconds/],
    [['--mode', 'snapshots'], /--mode must be async or sync/],
    [['--seed', 'x'], /--seed must be a positive integer/],
  ] as const) {
    const r = vrg('chaos', ...args, '--plan');
    t.equal(r.status, 2, `${args.join(' ')}: exit 2`);
    t.match(r.stderr, why, r.stderr.trim());
  }
});

const planDefaults: FaultKind[] = [
  'kill-production', 'kill-dr', 'freeze-production', 'freeze-dr', 'link-cut', 'partition', 'latency', 'bandwidth', 'corrupt', 'truncate', 'slow-close', 'slicer',
];

const runs: Array<{ seed: number; mode: 'async' | 'sync'; faults?: FaultKind[]; tools?: string[] }> = [
  { seed: 101, mode: 'async' },
  { seed: 202, mode: 'sync', faults: [...planDefaults, 'pause', 'check', 'mode-flip'] },
  { seed: 303, mode: 'async', faults: ['kill-production', 'kill-dr', 'freeze-dr', 'partition', 'corrupt', 'truncate'] },
  // DR's target behind nbdkit's error and rate filters, in Sync: DR's log holds what its target refused.
  { seed: 404, mode: 'sync', faults: ['dr-disk-errors', 'dr-disk-slow', 'kill-dr', 'link-cut', 'check'], tools: ['nbdkit'] },
];

for (const r of runs) {
  t.test(`vrg chaos --seed ${r.seed} --mode ${r.mode}: 30 s of mixed faults, no violation`, needs(...(r.tools ?? [])), async (t) => {
    const lines: string[] = [];
    const o = { seed: r.seed, durationMs: 30_000, mode: r.mode, dir: t.testdir(), faults: r.faults ?? planDefaults };
    const report = await runChaos(o, (l) => lines.push(l));
    t.same(report.violations, [], `no violation:\n${lines.join('\n')}`);
    t.ok(report.passed, 'passed');
    t.same(report.faults.map((f) => [f.n, f.kind, f.atMs]), planSchedule(o).map((f) => [f.n, f.kind, f.atMs]), 'the faults run are the planned ones, in order');
    const kinds = new Set(report.faults.map((f) => f.kind));
    t.ok(kinds.size >= 3, `mixed faults: ${[...kinds].join(', ')}`);
    const written = report.writes.acknowledged - report.writes.prefilled;
    t.ok(written > 500, `${written} writes acknowledged after ${report.writes.prefilled} on the disk before (${report.writes.resent} sent again)`);
    t.ok(report.drReads.checked >= 5, `${report.drReads.checked} DR images checked as prefixes (${report.drReads.skipped} skipped: DR down)`);
    t.ok(lines.some((l) => l.startsWith(`chaos: replay with: vrg chaos --seed ${r.seed} `)), 'it printed the replay command');
  });
}
