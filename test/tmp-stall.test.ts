import t from 'tap';
import { runLoad } from '../src/cli/load-generator.js';
import { startPair } from './lib/pair.js';
import { SimNetwork } from './lib/sim-transport.js';

const MiB = 1024 * 1024;
const N = Number(process.env.N ?? 40);
t.test('stall hunt', async (t) => {
  let stalls = 0;
  for (let i = 0; i < N; i++) {
    const seed = 1000 + i;
    const net = new SimNetwork({ seed, cutProbability: 0, partitionProbability: 0, splitProbability: Number(process.env.SPLIT ?? 0.2), delayProbability: Number(process.env.DELAY ?? 0.05), maxDelayMs: 3 });
    const pair = await startPair({ dir: t.testdir() + '/' + i, transport: process.env.TCP ? undefined : net, pool: false, compress: 1, encrypt: 1, volumeSizeBytes: 16 * MiB });
    const vols = pair.configs.prod.vms[0]!.volumes;
    await runLoad({ totalBytes: 24 * MiB, volumes: vols, writeBytes: 64 * 1024, queueDepth: 16, seed },
      (w) => pair.prod.write(w.volUuid, w.offset, w.data), () => undefined);
    await pair.prod.writeZeroes('vol-0', 4096, 65536);
    await pair.prod.trim('vol-1', 1 * MiB, 2 * MiB);
    await pair.prod.flush();
    try {
      await pair.drain(10_000);
    } catch (err) {
      stalls++;
      console.error(`seed ${seed}: ${(err as Error).message}`);
    }
    await pair.close();
  }
  t.equal(stalls, 0, `stalls in ${N} runs`);
});
