import t from 'tap';
import { seededRandom } from '../src/core/random.js';
import type { Volume } from '../src/volume/volume.js';
import { startPair } from './lib/pair.js';

// The DR replica as a reader sees it (the read-only export reads through DrGateway.readReplica) must be
// production's image at some point of the write history: never half a batch. Writes stamp block i
// with i, in order, so every consistent image is a prefix: blocks 0..m written, the rest still zero.

const block = 4096;
const blocks = 2048;

t.test('replica reads during replication always show a prefix of the write history', async (t) => {
  // The DR target lands each write after a random delay, so the records of one batch (applied
  // concurrently) complete out of order: only the batch gate keeps readers from seeing that.
  const rnd = seededRandom(Number(process.env.VRG_TEST_SEED ?? 99));
  const slow = (v: Volume): Volume => Object.assign(Object.create(v) as Volume, {
    write: async (offset: number, data: Uint8Array) => {
      await new Promise((r) => setTimeout(r, rnd.uint32() % 3));
      return v.write(offset, data);
    },
  });
  const pair = await startPair({ dir: t.testdir(), volumes: 1, volumeSizeBytes: blocks * block, wrapDrVolume: slow });
  let done = false;
  const checks = { reads: 0, notPrefix: 0, maxPrefix: 0 };
  const reader = (async () => {
    while (!done) {
      const img = await pair.dr.readReplica('vol-0', 0, blocks * block);
      let m = 0;
      while (m < blocks && img.readUInt32LE(m * block) === m + 1) m++;
      for (let i = m; i < blocks; i++) if (img.readUInt32LE(i * block) !== 0) { checks.notPrefix++; break; }
      checks.reads++;
      checks.maxPrefix = Math.max(checks.maxPrefix, m);
      await new Promise((r) => setImmediate(r));
    }
  })();
  // Writes are submitted 64 at a time (so batches hold many records, applied concurrently on DR),
  // but each 64 only after the previous ones were acknowledged, so the history order is block order.
  for (let i = 0; i < blocks; i += 64) {
    await Promise.all(Array.from({ length: 64 }, (_, k) => {
      const b = Buffer.alloc(block, 0xee);
      b.writeUInt32LE(i + k + 1, 0);
      return pair.prod.write('vol-0', (i + k) * block, b);
    }));
  }
  await pair.drain();
  done = true;
  await reader;
  const final = await pair.dr.readReplica('vol-0', 0, blocks * block);
  await pair.close();
  t.ok(checks.reads > 5, `${checks.reads} whole-volume reads during replication`);
  t.equal(checks.notPrefix, 0, 'no read showed a later block without every earlier one');
  t.equal(final.readUInt32LE((blocks - 1) * block), blocks, 'the last block arrived');
});
