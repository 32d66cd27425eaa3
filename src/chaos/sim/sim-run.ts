import { runSimSeed, type SimResult } from './sim-seed.js';

// `vrg sim`: many seeds of the simulator (sim-seed.ts), a few at a time, with one summary line and the replay
// command of each failing seed.

export { runSimSeed, type SimOptions, type SimResult } from './sim-seed.js';

/** Seeds `parallel` at a time (each on its own virtual clock, so they do not disturb each other); results in seed order. */
async function runEach(o: { from: number; count: number; dir: string; mode?: 'async' | 'sync'; parallel?: number }, results: SimResult[],
    out: (l: string) => void): Promise<void> {
  let next = o.from;
  const end = o.from + o.count;
  const worker = async (): Promise<void> => {
    while (next < end) {
      const seed = next++;
      const mode = o.mode ?? (seed % 2 === 0 ? 'sync' : 'async');
      const r = await runSimSeed({ seed, mode, dir: o.dir });
      results.push(r);
      if (r.violations.length > 0) out(`sim: seed ${seed} (${mode}) FAILED: ${r.violations[0]} — replay: vrg sim --from ${seed} --seeds 1 --mode ${mode}`);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.parallel ?? 4, o.count)) }, worker));
  results.sort((a, b) => a.seed - b.seed);
}

/** `vrg sim`: seeds from..from+count-1, alternating Async and Sync; the failures with their replay commands. */
export async function runSimSeeds(o: { from: number; count: number; dir: string; mode?: 'async' | 'sync'; parallel?: number; out?: (l: string) => void }):
    Promise<SimResult[]> {
  const out = o.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const results: SimResult[] = [];
  // The engine's timers never hold the event loop (the link's reconnects, the step bounds): in-process, with no
  // socket open, nothing else would, and the process would end mid-run with exit code 0.
  const keepAlive = setInterval(() => {}, 60_000);
  try {
    await runEach(o, results, out);
  } finally {
    clearInterval(keepAlive);
  }
  const failed = results.filter((r) => r.violations.length > 0);

  const sum = (f: (r: SimResult) => number): number => results.reduce((n, r) => n + f(r), 0);
  out(`sim: ${results.length} seeds, ${failed.length} failed; ${sum((r) => r.writes)} writes, ${sum((r) => r.drReads)} DR images checked, ` +
    `${sum((r) => r.network.cuts)} link cuts, ${sum((r) => r.network.corrupted)} bit flips, ${sum((r) => r.diskFaults)} disk fault spells, ` +
    `${sum((r) => r.drRestarts)} DR restarts, ${sum((r) => r.powerCuts)} production power cuts, ${sum((r) => r.operations)} operations (pause, check, mode flip); ${(sum((r) => r.elapsedMs) / 1000).toFixed(1)} s` +
    (failed.length > 0 ? `; failing seeds: ${failed.map((r) => r.seed).join(' ')}` : ''));
  return results;
}
