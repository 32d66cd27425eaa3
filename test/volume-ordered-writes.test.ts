import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import t from 'tap';
import { seededRandom } from '../src/core/random.js';
import { FileVolume } from '../src/volume/file-volume.js';
import { applyInOrder, type VolumeOp } from '../src/volume/ordered-writes.js';
import type { Volume } from '../src/volume/volume.js';

// applyInOrder: the result equals applying the ops one by one, while non-overlapping ops run concurrently
// and consecutive writes that continue each other go out as one writev.

/** Counts the calls a volume receives. */
function counted(v: FileVolume) {
  const calls = { write: 0, writev: 0 };
  const vol: Volume = {
    url: v.url, sizeBytes: v.sizeBytes, read: (o, l) => v.read(o, l), flush: () => v.flush(), close: () => v.close(),
    write: (o, d) => { calls.write++; return v.write(o, d); },
    writev: (o, ds) => { calls.writev++; return v.writev(o, ds); },
    writeZeroes: (o, l, opts) => v.writeZeroes(o, l, opts), trim: (o, l) => v.trim(o, l),
  };
  return { vol, calls };
}

t.test('a sequential run of writes becomes one writev; the bytes land where each write said', async (t) => {
  const v = await FileVolume.open(join(t.testdir(), 'v.img'), { sizeBytes: 4 << 20, create: true });
  t.teardown(() => v.close());
  const { vol, calls } = counted(v);
  const parts = Array.from({ length: 16 }, () => randomBytes(65536));
  await applyInOrder(parts.map((data, i) => ({ volume: vol, offset: 1 << 20 | i * 65536, data, length: data.length, kind: 'write' as const })));
  t.same(calls, { write: 0, writev: 1 }, 'one call for 16 contiguous writes');
  t.ok((await v.read(1 << 20, 16 * 65536)).equals(Buffer.concat(parts)), 'content in order');
});

t.test('random ops (overlapping writes, zeroes, trims) end as if applied one by one', async (t) => {
  const rnd = seededRandom(7);
  const size = 256 * 1024;
  for (let round = 0; round < 20; round++) {
    const v = await FileVolume.open(join(t.testdir(), `v${round}.img`), { sizeBytes: size, create: true });
    const { vol } = counted(v);
    const model = Buffer.alloc(size);
    const ops: VolumeOp[] = [];
    let at = 0;
    for (let i = 0; i < 60; i++) {
      // Half the ops continue the previous one (merge candidates), the rest land anywhere (overlaps).
      const length = 4096 * (1 + (rnd.uint32() % 8));
      const offset = rnd.float() < 0.5 && at + length <= size ? at : 4096 * (rnd.uint32() % ((size - length) / 4096 + 1));
      const r = rnd.float();
      const kind = r < 0.8 ? 'write' : r < 0.9 ? 'zero' : 'trim';
      const data = kind === 'write' ? Buffer.from(rnd.bytes(length)) : null;
      ops.push({ volume: vol, offset, length, data, kind });
      if (data) data.copy(model, offset);
      else model.fill(0, offset, offset + length);
      at = offset + length;
    }
    await applyInOrder(ops);
    t.ok((await v.read(0, size)).equals(model), `round ${round}: equals the one-by-one result`);
    await v.close();
  }
});
