import t from 'tap';
import { RwLock } from '../src/core/rw-lock.js';

const tick = () => new Promise((r) => setImmediate(r));

t.test('readers share, a writer excludes readers and other writers', async (t) => {
  const lock = new RwLock();
  const log: string[] = [];
  let release!: () => void;
  const r1 = lock.read(async () => { log.push('r1 in'); await new Promise<void>((r) => { release = r; }); log.push('r1 out'); });
  const r2 = lock.read(async () => { log.push('r2'); });
  await tick();
  t.same(log, ['r1 in', 'r2'], 'two readers at once');
  const w = lock.write(async () => { log.push('w'); });
  const r3 = lock.read(async () => { log.push('r3'); });
  await tick();
  t.same(log, ['r1 in', 'r2'], 'the writer waits for the reader; a new reader waits behind the writer');
  release();
  await Promise.all([r1, r2, w, r3]);
  t.same(log, ['r1 in', 'r2', 'r1 out', 'w', 'r3'], 'writer before the later reader');
});

t.test('a failing section releases the gate', async (t) => {
  const lock = new RwLock();
  await t.rejects(lock.write(async () => { throw new Error('boom'); }));
  t.equal(await lock.read(async () => 42), 42, 'gate free again');
});
