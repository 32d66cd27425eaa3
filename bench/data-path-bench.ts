import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { benchFloor, formatFloorBench } from './floor-bench.js';
import { benchNbd, formatNbdBench, type NbdTargetName } from './nbd-bench.js';
import { benchWan, formatWanBench } from './wan-bench.js';

// `node dist/bench/data-path-bench.js [workDir]`: the data-path rows in one run on this machine, so they can
// be compared: VRG Async (LZ4 forced) beside its intake alone and QEMU's mirror (nbd-bench), the floor (a
// minimal replicator doing only the unavoidable work), and the WAN-shaped row. Writes
// bench/results/data-path-<time>.json and prints the tables. Measures; asserts nothing.

const root = resolve(import.meta.dirname ?? '.', '..', '..');

async function main(): Promise<void> {
  const workDir = resolve(process.argv[2] ?? join(root, 'bench', 'work', 'data-path'));
  await mkdir(join(root, 'bench', 'results'), { recursive: true });
  const only: NbdTargetName[] = ['vrg', 'vrgIntakeOnly', 'qemuMirrorBackground', 'qemuMirrorWriteBlocking'];
  process.stdout.write('data path: NBD rows...\n');
  const nbd = await benchNbd({ workDir: join(workDir, 'nbd'), only });
  process.stdout.write('data path: floor...\n');
  const floor = await benchFloor({ workDir: join(workDir, 'floor') });
  process.stdout.write('data path: WAN row...\n');
  const wan = await benchWan({ workDir: join(workDir, 'wan') });
  const at = new Date().toISOString();
  const file = join(root, 'bench', 'results', `data-path-${at.replaceAll(':', '-')}.json`);
  await writeFile(file, JSON.stringify({ at, nbd, floor, wan }, null, 2));
  process.stdout.write(`${formatNbdBench(nbd)}\n\n${formatFloorBench(floor)}\n\n${formatWanBench(wan)}\n\nresult: ${file}\n`);
  await rm(workDir, { recursive: true, force: true });
}

main().catch((err) => {
  process.stderr.write(`data-path-bench: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
