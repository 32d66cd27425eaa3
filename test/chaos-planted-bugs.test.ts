import t from 'tap';
import { runChaos } from '../src/cli/chaos.js';
import type { PlantedBug } from '../src/core/planted-bugs.js';
import type { FaultKind } from '../src/chaos/schedule.js';

// The checkers of `vrg chaos` can fail: with a real bug planted in the gateways (VRG_PLANTED_BUG, read by the
// gateway processes at start), a run reports a violation within a bounded number of seeds.

const cases: Array<{ bug: PlantedBug; mode: 'async' | 'sync'; faults: FaultKind[]; caughtBy: RegExp; drainTimeoutMs?: number }> = [
  // Corrupt bytes on the link get past a link that does not check the AES-GCM tag: DR applies them.
  { bug: 'accept-bad-tag', mode: 'async', faults: ['corrupt'], caughtBy: /no prefix|differs from production|content no write produced|exited/ },
  // Sync acknowledging before DR has a write: a DR image read just after an ack lacks it.
  { bug: 'sync-ack-early', mode: 'sync', faults: ['latency'], caughtBy: /Sync: DR image holds at most/ },
  // Writes applied last first within a chunk: a replica read sees a later write without an earlier one, or
  // an older write ends on top.
  { bug: 'apply-out-of-order', mode: 'async', faults: ['bandwidth'], caughtBy: /no prefix|differs from production/ },
  // A staged pass committed without its content: the initial sync of the VM's data never reaches DR, and the
  // consistency check's repairs (staged too) never land: the pair does not converge.
  { bug: 'skip-staged-commit', mode: 'async', faults: ['check'], caughtBy: /drain|differs from production|no prefix/, drainTimeoutMs: 30_000 },
];

for (const c of cases) {
  t.test(`planted bug ${c.bug} is caught (${c.faults.join(', ')} faults, ${c.mode})`, async (t) => {
    process.env.VRG_PLANTED_BUG = c.bug;
    t.teardown(() => { delete process.env.VRG_PLANTED_BUG; });
    let caught: string | null = null;
    const seedsMax = 3;
    for (let seed = 1; seed <= seedsMax && caught === null; seed++) {
      const report = await runChaos({ seed, durationMs: 15_000, mode: c.mode, faults: c.faults, dir: t.testdir(),
        drainTimeoutMs: c.drainTimeoutMs }, () => undefined);
      caught = report.violations.find((v) => c.caughtBy.test(v)) ?? null;
      if (caught) t.pass(`seed ${seed}: ${caught.slice(0, 300)}`);
    }
    t.ok(caught, `caught within ${seedsMax} seeds`);
  });
}

t.test('without a planted bug the same runs pass (the violations above are the bug\'s)', async (t) => {
  for (const c of cases) {
    const report = await runChaos({ seed: 1, durationMs: 15_000, mode: c.mode, faults: c.faults, dir: t.testdir() }, () => undefined);
    t.same(report.violations, [], `${c.faults.join(', ')} ${c.mode}: no violation`);
  }
});
