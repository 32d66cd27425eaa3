import t from 'tap';
import { SimDisk } from '../src/chaos/sim/sim-disk.js';
import { SimFiles } from '../src/chaos/sim/sim-files.js';

// The simulator's file system and disks lose, at a power cut, exactly what was not synced or flushed; what
// survives reads back whole, a torn write keeps a sector-aligned prefix, and the instance that lost power can
// do nothing more.

const codeOf = async (p: Promise<unknown>): Promise<string | undefined> => p.then(() => undefined, (e: { code?: string }) => e.code);

t.test('a power cut keeps what was fdatasync\'ed and loses the rest', async (t) => {
  const fs = new SimFiles();
  const a = fs.view();
  await a.mkdir('/d/j');
  const fh = await a.open('/d/j/seg', 'wx+');
  await fh.write(Buffer.alloc(4096, 1), 0, 4096, 0);
  await fh.datasync();
  await fh.writev([Buffer.alloc(100, 2), Buffer.alloc(100, 3)], 4096);
  t.equal((await fh.stat()).size, 4296, 'before the cut the file holds the unsynced write too');
  const report = fs.powerCut();
  t.same(report, { files: 1, lostOps: 1, torn: 0 });
  t.equal(await codeOf(fh.read(Buffer.alloc(1), 0, 1, 0)), 'EIO', 'the old instance\'s handle is dead');
  t.equal(await codeOf(a.open('/d/j/seg', 'r')), 'EIO', 'and so is its view');
  const b = fs.view();
  t.same(await b.readdir('/d/j'), ['seg'], 'names survive');
  t.same(await b.readFile('/d/j/seg'), Buffer.alloc(4096, 1), 'exactly the synced bytes');
  t.equal(await codeOf(b.open('/d/j/seg', 'wx+')), 'EEXIST');
  t.equal(await codeOf(b.open('/d/j/none', 'r')), 'ENOENT');
  t.equal(await codeOf(b.open('/nodir/x', 'w')), 'ENOENT', 'no file in a directory that does not exist');
});

t.test('a torn cut keeps a prefix of the unsynced writes, the last one cut short', async (t) => {
  const fs = new SimFiles();
  const v = fs.view();
  await v.mkdir('/d');
  const fh = await v.open('/d/log', 'w');
  await fh.sync(); // the open's truncate is an op of its own
  for (let i = 0; i < 4; i++) await fh.write(Buffer.alloc(2048, i + 1), 0, 2048, i * 2048);
  fs.powerCut((n) => {
    t.equal(n, 4, 'four writes pending');
    return { keep: 3, tornBytes: 512 };
  });
  const got = await fs.view().readFile('/d/log');
  t.equal(got.length, 2 * 2048 + 512, 'two whole writes and 512 bytes of the third');
  t.ok(got.subarray(0, 2048).every((x) => x === 1) && got.subarray(4096).every((x) => x === 3), 'in order, each its own bytes');
});

t.test('truncate, rename, rm and stat behave as a file system does', async (t) => {
  const fs = new SimFiles();
  const v = fs.view();
  await v.mkdir('/a/b');
  const fh = await v.open('/a/b/f', 'w');
  await fh.write(Buffer.alloc(1000, 7), 0, 1000, 0);
  await fh.truncate(10);
  await fh.write(Buffer.from([9]), 0, 1, 20);
  const back = await v.readFile('/a/b/f');
  t.same([...back], [...Array(10).fill(7), ...Array(10).fill(0), 9], 'a truncated range reads back as zeros when extended');
  await fh.sync();
  await v.rename('/a/b/f', '/a/g');
  t.equal((await v.stat('/a/g')).size, 21);
  t.ok((await v.stat('/a/b')).isDirectory());
  t.same(await v.readdir('/a'), ['b', 'g']);
  await v.rm('/a');
  t.equal(await codeOf(v.stat('/a/g')), 'ENOENT', 'rm -rf');
  const ro = await (async () => {
    await v.mkdir('/r');
    await (await v.open('/r/x', 'w')).close();
    return v.open('/r/x', 'r');
  })();
  t.equal(await codeOf(ro.write(Buffer.alloc(1), 0, 1, 0)), 'EBADF', 'a read-only handle does not write');
});

t.test('a simulated disk loses unflushed writes at a power cut, and no write lands after it', async (t) => {
  const disk = new SimDisk('sim://x/vol', 64 * 1024);
  const h = disk.open();
  await h.write(0, Buffer.alloc(4096, 1));
  await h.flush();
  await h.write(4096, Buffer.alloc(4096, 2));
  disk.slowMs = 20;
  const late = h.write(8192, Buffer.alloc(4096, 3)); // in flight when the power goes
  disk.powerCut();
  disk.slowMs = 0;
  t.equal(await codeOf(late), 'VRG_VOLUME_IO', 'the write in flight fails');
  t.equal(await codeOf(h.read(0, 1)), 'VRG_VOLUME_IO', 'the old handle is dead');
  const image = await disk.open().read(0, 12288);
  t.ok(image.subarray(0, 4096).every((x) => x === 1), 'the flushed write survives');
  t.ok(image.subarray(4096).every((x) => x === 0), 'the unflushed one and the late one do not');
});
