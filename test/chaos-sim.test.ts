import t from 'tap';
import { runSimSeeds } from '../src/chaos/sim/sim-run.js';
import { plantBugsForTest, type PlantedBug } from '../src/core/planted-bugs.js';

// The simulator (`vrg sim`): 200 seeds per CI run, Async on odd seeds and Sync on even ones, each with its
// own faulty network, DR disks and production power cut, on virtual time; every seed must end with no
// violation, and a seed run again replays the same run. Then the checkers are shown to fail: with a bug
// planted in this process, some seed within a bound reports it.
// Replay one seed: npx vrg sim --from N --seeds 1 --mode async|sync

const from = process.env.VRG_SEED ? Number(process.env.VRG_SEED) : 1;
const count = process.env.VRG_SEED ? 1 : 200;

t.test(`${count} simulated schedules from seed ${from}: no violation`, async (t) => {
  const lines: string[] = [];
  const results = await runSimSeeds({ from, count, dir: t.testdir(), out: (l) => lines.push(l) });
  t.equal(results.length, count, 'every seed ran');
  // Seed 192 (sync) once found a bit flip in a frame's length field that left DR waiting for bytes that never
  // came (the prefix check in protocol/frame.ts now catches it): a stalled write is a violation like any other.
  const failed = results.filter((r) => r.violations.length > 0);
  t.same(failed.map((r) => ({ seed: r.seed, mode: r.mode, violations: r.violations })), [], lines.join('\n'));
  const sum = (f: (r: (typeof results)[number]) => number): number => results.reduce((n, r) => n + f(r), 0);
  t.ok(sum((r) => r.network.cuts) >= count / 2, `the network cut links ${sum((r) => r.network.cuts)} times`);
  t.ok(sum((r) => r.network.corrupted) > 0, `and flipped ${sum((r) => r.network.corrupted)} bits`);
  t.ok(sum((r) => r.diskFaults) > 0, `DR disks failed ${sum((r) => r.diskFaults)} times`);
  t.ok(sum((r) => r.drRestarts) > 0, `DR restarted ${sum((r) => r.drRestarts)} times`);
  t.ok(sum((r) => r.powerCuts) >= count / 4, `production lost power ${sum((r) => r.powerCuts)} times`);
  t.ok(sum((r) => r.operations) > 0, `${sum((r) => r.operations)} operations (pause, check, mode flip)`);
  t.ok(sum((r) => r.drReads) >= count, `${sum((r) => r.drReads)} DR images checked`);
  t.comment(lines.at(-1) ?? '');
});

t.test('a seed replays the same run: the same events in the same order, alone or beside other seeds', async (t) => {
  const strip = (rs: Awaited<ReturnType<typeof runSimSeeds>>) => rs.map(({ elapsedMs: _wall, ...r }) => r);
  const a = strip(await runSimSeeds({ from: 1, count: 8, dir: t.testdir(), out: () => undefined }));
  const b = strip(await runSimSeeds({ from: 1, count: 8, parallel: 1, dir: t.testdir(), out: () => undefined }));
  t.same(b, a, 'the same results, timers fired and virtual time, seed for seed');
  t.ok(a.every((r) => r.timersFired > 100 && r.writes > 0), `each seed ran (${a.map((r) => r.timersFired).join(', ')} timers fired)`);
});

const planted: Array<{ bug: PlantedBug; mode: 'async' | 'sync'; seedsMax: number }> = [
  { bug: 'accept-bad-tag', mode: 'async', seedsMax: 40 },
  { bug: 'sync-ack-early', mode: 'sync', seedsMax: 20 },
  { bug: 'apply-out-of-order', mode: 'async', seedsMax: 20 },
  // The initial sync of the VM's data is a staged pass: committed without its content, DR never converges.
  { bug: 'skip-staged-commit', mode: 'async', seedsMax: 4 },
  // Only a power cut shows it: the journal loses the acknowledged write that was not yet fdatasync'ed.
  { bug: 'ack-before-fsync', mode: 'async', seedsMax: 20 },
];

for (const p of planted) {
  t.test(`planted bug ${p.bug}: caught within ${p.seedsMax} seeds`, async (t) => {
    plantBugsForTest([p.bug]);
    t.teardown(() => plantBugsForTest([]));
    const results = await runSimSeeds({ from: 1, count: p.seedsMax, mode: p.mode, dir: t.testdir(), out: () => undefined });
    const caught = results.filter((r) => r.violations.length > 0);
    t.ok(caught.length > 0, `caught by ${caught.length} of ${p.seedsMax} seeds; first: seed ${caught[0]?.seed}: ${caught[0]?.violations[0]}`);
  });
}
