import t from 'tap';
import { BLOCK_ALIGN_BYTES, BufferRing } from '../src/core/buffer-ring.js';

const span = (bytes: number): number => Math.ceil(bytes / BLOCK_ALIGN_BYTES) * BLOCK_ALIGN_BYTES;
import { seededRandom } from '../src/core/random.js';

t.test('a full ring refuses, and freed space is handed out again', async (t) => {
  const ring = new BufferRing({ capacityBytes: 1000 }); // 1024: a whole number of aligned blocks
  t.equal(ring.capacityBytes, 1024);
  const a = ring.tryAlloc(400)!;
  const b = ring.tryAlloc(400)!;
  t.ok(a && b, 'two blocks fit');
  t.equal(ring.tryAlloc(400), null, 'a third does not');
  t.equal(ring.stats().refusals, 1);
  ring.free(a);
  const c = ring.tryAlloc(400)!;
  t.ok(c, 'the oldest block freed: its space comes back (wrapping to the start)');
  t.equal(c.byteOffset, 0);
  t.equal(ring.stats().usedBytes, 2 * span(400), 'each block takes its size rounded up to the alignment');
  ring.free(b);
  ring.free(c);
  t.same(ring.stats().usedBytes, 0, 'everything returned');
  t.equal(ring.stats().blocks, 0);
  t.equal(ring.tryAlloc(1024)!.byteOffset, 0, 'an empty ring starts again at 0: the whole capacity is one run');
});

t.test('blocks never overlap, whatever the order of frees (seeded)', async (t) => {
  const seed = Number(process.env.VRG_SEED ?? Date.now() % 1e9);
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const ring = new BufferRing({ capacityBytes: 64 * 1024 });
  const live: Array<{ buf: Buffer; fill: number }> = [];
  for (let i = 0; i < 5000; i++) {
    if (live.length > 0 && random.float() < 0.45) {
      // Mostly FIFO (as on the data path), sometimes out of order.
      const k = random.float() < 0.8 ? 0 : Math.floor(random.float() * live.length);
      const [x] = live.splice(k, 1);
      if (!x!.buf.every((v) => v === x!.fill)) t.fail(`block filled with ${x!.fill} was overwritten (seed ${seed})`);
      ring.free(x!.buf);
      continue;
    }
    const bytes = 1 + Math.floor(random.float() * 9000);
    const buf = ring.tryAlloc(bytes);
    if (!buf) continue;
    if (buf.byteOffset % BLOCK_ALIGN_BYTES !== 0) t.fail(`block at ${buf.byteOffset} is not aligned (seed ${seed})`);
    const fill = i % 251;
    buf.fill(fill);
    live.push({ buf, fill });
  }
  const used = live.reduce((n, x) => n + span(x.buf.length), 0);
  t.equal(ring.stats().usedBytes, used, 'used bytes are the live blocks');
  for (const x of live.splice(0)) ring.free(x.buf);
  t.equal(ring.stats().usedBytes, 0);
});

t.test('freeing a foreign or already freed block is a bug', async (t) => {
  const ring = new BufferRing({ capacityBytes: 100 });
  const a = ring.tryAlloc(10)!;
  ring.free(a);
  t.throws(() => ring.free(a), /live/);
  t.throws(() => ring.free(Buffer.alloc(10)), /belongs to this ring/);
});

t.test('release() frees the ring\'s own blocks and leaves fallback buffers alone', async (t) => {
  const ring = new BufferRing({ capacityBytes: 100, shared: true });
  const a = ring.tryAlloc(90)!;
  t.ok(ring.owns(a) && !ring.owns(Buffer.alloc(1)));
  ring.release(Buffer.alloc(10));
  ring.release(null);
  t.equal(ring.stats().usedBytes, span(90), 'foreign buffers and null change nothing');
  ring.release(a);
  t.equal(ring.stats().usedBytes, 0, 'its own block is freed');
});

t.test('a block at the end of a ring whose capacity is not a multiple of the alignment has all its bytes', async (t) => {
  const ring = new BufferRing({ capacityBytes: 1000, shared: true });
  const a = ring.tryAlloc(960)!;
  const b = ring.tryAlloc(60)!; // the ring's last aligned block: 960 .. 1020, past the caller's 1000
  t.equal(a.length, 960);
  t.equal(b.length, 60, 'not cut short by the memory the caller asked for');
  t.equal(b.byteOffset, 960);
  b.fill(7);
  t.equal(b.reduce((n, x) => n + x, 0), 420);
  const c = ring.tryAlloc(64);
  t.equal(c, null, 'full: 1024 of 1024 taken');
});
