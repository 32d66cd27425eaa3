import { randomBytes } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { writeAt } from '../src/core/write-fully.js';

// writeAt splits a write into pwritev calls of at most 64 KiB (and goes to libuv's pool past 4 MiB): whatever
// the buffers' sizes and where the cuts fall, the file ends up holding exactly the bytes, at the position.

t.test('writeAt writes every byte of many odd-sized buffers, inline and through the pool', async (t) => {
  const path = join(t.testdir(), 'f.img');
  const fh = await open(path, 'w+');
  t.teardown(() => fh.close());
  const sizes = [[1], [65535, 1, 2], [70_000, 3, 65_536, 100_000], [1 << 20, 12345, 3 << 20], [5 << 20, 777]];
  let at = 4096 + 5;
  const expect: Buffer[] = [Buffer.alloc(at)];
  for (const set of sizes) {
    const bufs = set.map((n) => randomBytes(n));
    const total = set.reduce((a, b) => a + b, 0);
    t.equal(await writeAt(fh, bufs, at), total, `${set.join('+')} bytes: all written`);
    expect.push(...bufs);
    at += total;
  }
  await fh.sync();
  t.ok((await readFile(path)).equals(Buffer.concat(expect)), 'the file holds exactly the bytes written, in order');
});
