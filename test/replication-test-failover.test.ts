import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { NbdServer } from '../src/nbd/nbd-server.js';
import { replicaExports, testCloneExports } from '../src/replication/nbd-exports.js';
import type { DrGateway } from '../src/replication/target/dr-gateway.js';
import { NbdVolume } from '../src/volume/nbd-volume.js';
import type { Volume } from '../src/volume/volume.js';
import { startPair, vmUuid, type Pair } from './lib/pair.js';
import { blockBytes, stampedBlock, stampOf } from '../src/chaos/stamps.js';

// Test failover (issue 14): a writable copy-on-write clone of the DR image, exported over NBD as <volUuid>-test,
// while production keeps writing and the real replica keeps receiving. Stamped blocks (stamps.ts) tell which
// write a block of the clone holds: the clone must show the image as of its start plus its own writes only.

const KiB = 1024;
const MiB = 1024 * KiB;
const volumeBytes = 4 * MiB;
const blocks = volumeBytes / blockBytes;
const unknownVm = '00000000-0000-4000-8000-000000000000';

/** The code of a rejection (a VrgError's), or 'ok'. */
function outcome(p: Promise<unknown>): Promise<string> {
  return p.then(() => 'ok', (err: unknown) => (err as { code?: string }).code ?? `no code: ${(err as Error).message}`);
}

/** Blocks [first, first+count) stamped `stamp`, as one buffer. */
function stamped(stamp: number, first: number, count: number): Buffer {
  return Buffer.concat(Array.from({ length: count }, (_, i) => stampedBlock(stamp, first + i)));
}

/** Every block of a volume written with `stamp`, 256 KiB at a time. */
async function stampVolume(pair: Pair, volUuid: string, stamp: number): Promise<void> {
  for (let b = 0; b < blocks; b += 64) await pair.prod.write(volUuid, b * blockBytes, stamped(stamp, b, 64));
}

const source = (dir: string, i: number) => readFile(join(dir, 'source', `disk${i}.img`));
const target = (dir: string, i: number) => readFile(join(dir, 'target', `disk${i}.img`));
const cloneDir = (dir: string) => join(dir, 'dr', 'dr', vmUuid, 'test-clone');

async function readAll(v: NbdVolume): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = 0; at < volumeBytes; at += MiB) parts.push(await v.read(at, MiB));
  return Buffer.concat(parts);
}

/** A DR target whose reads take 0-4 ms and finish out of order (a clone's base copies then race one another). */
function slowReads(v: Volume): Volume {
  return {
    url: v.url, sizeBytes: v.sizeBytes,
    read: async (o, l) => {
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 5)));
      return v.read(o, l);
    },
    write: (o, d) => v.write(o, d),
    writeZeroes: (o, l, opts) => v.writeZeroes(o, l, opts),
    trim: (o, l) => v.trim(o, l),
    flush: () => v.flush(),
    close: () => v.close(),
  };
}

/** An NBD server with the DR gateway's replicas and test clones, as DrSite.exports() serves them. */
async function drNbd(t: Test, dr: () => DrGateway): Promise<(exportName: string) => Promise<NbdVolume>> {
  const server = new NbdServer({ exports: () => [...replicaExports(dr()), ...testCloneExports(dr())] });
  const port = await server.listen('127.0.0.1', 0);
  t.teardown(() => server.close());
  return (exportName) => NbdVolume.open({ host: '127.0.0.1', port, exportName });
}

t.test('a test clone takes writes and keeps its start image while production writes on into the replica', async (t) => {
  const dir = t.testdir();
  const pair = await startPair({ dir, volumes: 2, volumeSizeBytes: volumeBytes, wrapDrVolume: slowReads });
  t.teardown(() => pair.close());
  const open = await drNbd(t, () => pair.dr);
  await pair.drain();
  await stampVolume(pair, 'vol-0', 1);
  await stampVolume(pair, 'vol-1', 1);
  await pair.drain();
  const base = [await source(dir, 0), await source(dir, 1)];

  const started = await pair.dr.startTestFailover(vmUuid);
  t.same(started.exports, ['vol-0-test', 'vol-1-test']);
  t.same(testCloneExports(pair.dr).map((e) => [e.name, e.readOnly, e.sizeBytes]), [['vol-0-test', false, volumeBytes], ['vol-1-test', false, volumeBytes]]);
  const clone0 = await open('vol-0-test');
  const clone1 = await open('vol-1-test');
  t.teardown(async () => {
    await clone0.close().catch(() => undefined);
    await clone1.close().catch(() => undefined);
  });
  t.ok((await readAll(clone0)).equals(base[0]!), 'the clone starts as the replica\'s image');

  // The clone's own writes: one block inside a 64 KiB granule (read-modify-write), 16 concurrent blocks that
  // together fill one granule (each a read-modify-write of the same granule), an unaligned run over granules, zeros.
  const expected = Buffer.from(base[0]!);
  const cloneWrite = async (offset: number, data: Buffer): Promise<void> => {
    await clone0.write(offset, data);
    data.copy(expected, offset);
  };
  await cloneWrite(10 * blockBytes, stampedBlock(900, 10));
  await Promise.all(Array.from({ length: 16 }, (_, i) => cloneWrite((32 + i) * blockBytes, stampedBlock(1000 + i, 32 + i))));
  await cloneWrite(200 * KiB + 512, Buffer.alloc(150 * KiB, 0xab));
  await clone0.writeZeroes(600 * KiB, 100 * KiB);
  expected.fill(0, 600 * KiB, 700 * KiB);
  await clone0.flush();
  t.ok((await readAll(clone0)).equals(expected), 'the clone reads back its writes, the rest as it was');
  t.equal(stampOf(await clone0.read(0, 64 * KiB), 10), 900);
  const granule2 = await clone0.read(32 * blockBytes, 64 * KiB);
  const lost = Array.from({ length: 16 }, (_, i) => i).filter((i) => !granule2.subarray(i * blockBytes, (i + 1) * blockBytes).equals(stampedBlock(1000 + i, 32 + i)));
  t.same(lost, [], 'none of 16 concurrent writes into one granule was lost');
  t.ok((await pair.dr.readReplica('vol-0', 10 * blockBytes, blockBytes)).equals(stampedBlock(1, 10)), 'the replica does not see them');

  // Production writes on (direct records: writes over the clone's granules and others, zeroes, a trim), while
  // the clone is read: each read must show the clone's image, never one of these writes.
  // (The first half of vol-0 only: the snapshot below writes where the clone owns nothing yet.)
  const overwritten = [...Array.from({ length: blocks / 6 }, (_, i) => 3 * i), 10, 33, 40, 41];
  const production = (async () => {
    for (const b of overwritten) await pair.prod.write('vol-0', b * blockBytes, stampedBlock(2, b));
    await pair.prod.writeZeroes('vol-0', 1 * MiB, 256 * KiB);
    await pair.prod.trim('vol-0', 2 * MiB, 64 * KiB);
    await stampVolume(pair, 'vol-1', 2);
  })();
  let reads = 0;
  let mismatches = 0;
  let done = false;
  void production.finally(() => { done = true; });
  while (!done || reads < 3) {
    reads++;
    if (!(await readAll(clone0)).equals(expected)) mismatches++;
    if (!(await readAll(clone1)).equals(base[1]!)) mismatches++;
  }
  await production;
  t.equal(mismatches, 0, `${reads} reads of the clone while production wrote: each its own image`);

  // A staged pass (a SnapshotsOnly snapshot) applies through the stage: copy-before-write covers it too.
  pair.prod.setMode(vmUuid, 'snapshots');
  await pair.prod.write('vol-0', 800 * blockBytes, stamped(3, 800, 21));
  pair.prod.takeSnapshot(vmUuid);
  await pair.drain();
  t.equal(stampOf(await target(dir, 0), 800), 3, 'the snapshot reached the replica');

  // The real replica received every write, byte for byte.
  t.ok((await target(dir, 0)).equals(await source(dir, 0)), 'vol-0: the replica equals production');
  t.ok((await target(dir, 1)).equals(await source(dir, 1)), 'vol-1: the replica equals production');
  const image0 = await readAll(clone0);
  t.ok(image0.equals(expected), 'the clone still shows its start image plus its own writes');
  t.ok((await readAll(clone1)).equals(base[1]!), 'vol-1\'s clone shows its start image');
  const now = await source(dir, 0);
  const differing = Array.from({ length: blocks }, (_, b) => b).filter((b) => !image0.subarray(b * blockBytes, (b + 1) * blockBytes).equals(now.subarray(b * blockBytes, (b + 1) * blockBytes))).length;
  t.ok(differing > 200, `the clone and production differ in ${differing} blocks (production moved on)`);
  t.equal(stampOf(image0, 3), 1, 'a block production overwrote shows its start content in the clone');
  t.equal(stampOf(image0, 800), 1, 'so does one the snapshot overwrote');
  t.equal(stampOf(image0, 10), 900, 'a block both wrote shows the clone\'s write');
  const st = pair.dr.testFailoverStatus(vmUuid);
  t.match(st, { exports: ['vol-0-test', 'vol-1-test'], broken: null });
  t.ok(st!.ownedBytes >= 2 * MiB, `the clone holds the base production overwrote (${st!.ownedBytes} bytes)`);

  // The end: the exports and the clone files go, replication goes on.
  await pair.dr.endTestFailover(vmUuid);
  t.same(testCloneExports(pair.dr), [], 'no test exports');
  t.equal(pair.dr.testFailoverStatus(vmUuid), null);
  t.equal(await outcome(stat(cloneDir(dir))), 'ENOENT', 'the clone files are removed');
  t.not(await outcome(clone0.read(0, blockBytes)), 'ok', 'a client still attached gets errors');
  t.not(await outcome(open('vol-0-test')), 'ok', 'the export is gone');
  pair.prod.setMode(vmUuid, 'async');
  await pair.prod.write('vol-0', 0, stampedBlock(4, 0));
  await pair.drain();
  t.ok((await target(dir, 0)).equals(await source(dir, 0)), 'replication goes on after the end');
});

/** A one-volume pair, its volume stamped once and replicated. */
async function stampedPair(t: Test): Promise<{ dir: string; pair: Pair }> {
  const dir = t.testdir();
  const pair = await startPair({ dir, volumes: 1, volumeSizeBytes: volumeBytes });
  t.teardown(() => pair.close());
  await pair.drain();
  await stampVolume(pair, 'vol-0', 1);
  await pair.drain();
  return { dir, pair };
}

t.test('bad input changes nothing; a restart discards the clone; promotion and test failover exclude each other', async (t) => {
  const { dir, pair } = await stampedPair(t);

  t.equal(await outcome(pair.dr.endTestFailover(vmUuid)), 'VRG_TEST_FAILOVER_NOT_ACTIVE', 'an end with none running');
  t.equal(await outcome(pair.dr.startTestFailover(unknownVm)), 'VRG_VM_NOT_FOUND', 'a start for an unknown VM');
  t.equal(await outcome(pair.dr.endTestFailover(unknownVm)), 'VRG_VM_NOT_FOUND', 'an end for an unknown VM');
  t.same(testCloneExports(pair.dr), []);
  t.equal(await outcome(stat(cloneDir(dir))), 'ENOENT');

  await pair.dr.startTestFailover(vmUuid);
  const [exp] = testCloneExports(pair.dr);
  await exp!.write(0, stampedBlock(700, 0), false);
  const before = pair.dr.testFailoverStatus(vmUuid);
  t.equal(await outcome(pair.dr.startTestFailover(vmUuid)), 'VRG_TEST_FAILOVER_ACTIVE', 'a second start');
  t.same(pair.dr.testFailoverStatus(vmUuid), before, 'the running one is as it was');
  t.equal(stampOf(await exp!.read(0, blockBytes), 0), 700, 'its writes kept');
  t.equal(stampOf(await testCloneExports(pair.dr)[0]!.read(0, blockBytes), 0), 700, 'and still exported');

  t.equal(await outcome(pair.dr.promote(vmUuid, 'test')), 'VRG_TEST_FAILOVER_ACTIVE', 'no promotion while a test runs');
  t.same(pair.dr.vmRole(vmUuid), { role: 'target', generation: 1, promoting: false }, 'still the target');
  await pair.prod.write('vol-0', 0, stampedBlock(2, 0));
  await pair.drain();
  t.ok((await target(dir, 0)).equals(await source(dir, 0)), 'replication went on');

  // A DR restart: a clean stop discards the running clone; one left by a crash goes at open.
  await pair.restartDr();
  t.equal(pair.dr.testFailoverStatus(vmUuid), null, 'no test failover after a restart');
  t.equal(await outcome(stat(cloneDir(dir))), 'ENOENT', 'the clone files went with the stop');
  // What a crash leaves (no clone runs, so the stop does not touch it): removed by the open.
  await mkdir(cloneDir(dir), { recursive: true });
  await writeFile(join(cloneDir(dir), 'vol-0.img'), Buffer.alloc(4096, 1));
  await pair.restartDr();
  t.equal(await outcome(stat(cloneDir(dir))), 'ENOENT', 'a leftover clone directory is removed at open');
  t.equal(await outcome(pair.dr.endTestFailover(vmUuid)), 'VRG_TEST_FAILOVER_NOT_ACTIVE');
  await pair.prod.write('vol-0', blockBytes, stampedBlock(3, 1));
  await pair.drain();

  // Once promoted here, the VM is a source: no test failover of it.
  await pair.dr.promote(vmUuid, 'test');
  t.equal(await outcome(pair.dr.startTestFailover(vmUuid)), 'VRG_VM_ROLE_CONFLICT', 'a start for a promoted VM');
  t.equal(await outcome(pair.dr.endTestFailover(vmUuid)), 'VRG_VM_ROLE_CONFLICT', 'an end for a promoted VM');
});

t.test('the clone is bounded: a write it has no room for fails whole; an overwrite it cannot keep ends it, not replication', async (t) => {
  const { dir, pair } = await stampedPair(t);
  const base = await source(dir, 0);

  await pair.dr.startTestFailover(vmUuid, { bytesMax: 256 * KiB });
  const exp = () => testCloneExports(pair.dr)[0]!;
  t.equal(await outcome(exp().write(0, Buffer.alloc(320 * KiB, 0xee), false)), 'VRG_TEST_CLONE_FULL', 'a write beyond the bound');
  t.ok((await exp().read(0, 512 * KiB)).equals(base.subarray(0, 512 * KiB)), 'nothing of it was written');
  t.equal(pair.dr.testFailoverStatus(vmUuid)?.ownedBytes, 0);
  await exp().write(0, Buffer.alloc(64 * KiB, 0xee), false);
  t.equal(pair.dr.testFailoverStatus(vmUuid)?.ownedBytes, 64 * KiB, 'one granule');

  // Production overwrites 1 MiB the clone would have to keep: it cannot, so the clone is unusable.
  await pair.prod.write('vol-0', 2 * MiB, Buffer.alloc(MiB, 0x77));
  await pair.drain();
  const st = pair.dr.testFailoverStatus(vmUuid);
  t.type(st?.broken, 'string', `the clone is unusable: ${st?.broken}`);
  t.equal(await outcome(exp().read(0, blockBytes)), 'VRG_VOLUME_IO', 'its reads fail');
  t.equal(await outcome(exp().write(0, Buffer.alloc(blockBytes), false)), 'VRG_VOLUME_IO', 'and its writes');
  t.ok((await target(dir, 0)).equals(await source(dir, 0)), 'the replica got the overwrite');
  await pair.dr.endTestFailover(vmUuid);
  t.equal(await outcome(stat(cloneDir(dir))), 'ENOENT', 'an unusable clone ends like any other');
});
