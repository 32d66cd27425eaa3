import { cp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { compareVolumes } from '../src/cli/demo.js';
import { systemClock } from '../src/core/clock.js';
import { limits } from '../src/core/limits.js';
import { silentLogger } from '../src/core/log.js';
import { systemRandom } from '../src/core/random.js';
import { tcpTransport } from '../src/link/transport.js';
import { InlineCodec } from '../src/pipeline/codec.js';
import { parseConfig } from '../src/replication/config.js';
import { DrGateway } from '../src/replication/target/dr-gateway.js';
import { productionExports } from '../src/replication/nbd-exports.js';
import { ProductionGateway } from '../src/replication/source/production-gateway.js';
import { pairConfigJson } from './lib/pair.js';
import { drained, until } from './lib/wait.js';

// Shipping runs ahead of the journal's fdatasync (issue 13 item 1), so after a production *host* crash DR may
// hold records the replayed journal lost (item 4). Simulated here as a host crash leaves it: production's data
// dir and source volume are an older image of themselves (copied at a clean stop), DR has acknowledged more
// since, and the run was not clean under a different boot id. The restart skips the seqs DR may hold, finds DR
// ahead, runs a consistency check, and source and DR end byte-identical. Also: DR not ahead (no check), DR
// beyond anything production could have shipped (a fault), and Async FLUSH/FUA never waiting for DR (item 5).

const MiB = 1024 * 1024;
const volumeBytes = 8 * MiB;

async function setup(t: Test, dir: string, o: { writeBack?: boolean } = {}) {
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: volumeBytes, compress: 0, encrypt: 0 });
  const bootIdPath = join(dir, 'boot_id');
  await mkdir(dir, { recursive: true });
  await writeFile(bootIdPath, 'boot-a\n');
  Object.assign(json.prod, { intake: { writeBack: o.writeBack === true, bootIdPath } });
  const configs = { prod: parseConfig(json.prod), dr: parseConfig(json.dr) };
  const codec = new InlineCodec();
  const deps = { clock: systemClock, random: systemRandom, transport: tcpTransport, codec, logger: silentLogger };
  const dr = await DrGateway.open(configs.dr, deps);
  configs.prod.link.port = dr.linkPort;
  let prod: ProductionGateway | null = null;
  const startProd = async (): Promise<ProductionGateway> => (prod = await ProductionGateway.open(configs.prod, deps));
  const stopProd = async (): Promise<void> => {
    await prod?.close();
    prod = null;
  };
  let drOpen = true;
  const closeDr = async (): Promise<void> => {
    if (drOpen) await dr.close();
    drOpen = false;
  };
  t.teardown(async () => {
    await stopProd();
    await closeDr();
    await codec.close();
  });
  const source = configs.prod.vms[0]!.volumes[0]!.url;
  const target = configs.dr.vms[0]!.volumes[0]!.url;
  const prodDir = configs.prod.dataDir;
  const sourceDir = join(dir, 'source');
  const snapDir = join(dir, 'older-image');
  return {
    dr, closeDr, startProd, stopProd, bootIdPath, prodDir,
    drain: (p: ProductionGateway) => drained(p, dr),
    identical: () => compareVolumes([[source, target]]),
    /** Production's data dir and source volume as they are now (production stopped). */
    snapshot: async () => {
      await cp(prodDir, join(snapDir, 'production'), { recursive: true });
      await cp(sourceDir, join(snapDir, 'source'), { recursive: true });
    },
    /** What a host crash leaves: the older image back, the last run unclean, a new boot id. */
    hostCrash: async () => {
      await rm(prodDir, { recursive: true, force: true });
      await rm(sourceDir, { recursive: true, force: true });
      await cp(join(snapDir, 'production'), prodDir, { recursive: true });
      await cp(join(snapDir, 'source'), sourceDir, { recursive: true });
      const runState = join(prodDir, 'run-state.json');
      const state = JSON.parse(await readFile(runState, 'utf8')) as Record<string, unknown>;
      await writeFile(runState, JSON.stringify({ ...state, clean: false }));
      await writeFile(bootIdPath, 'boot-b\n');
    },
  };
}

/** `count` 4 KiB writes from `offset` (16 at a time, wrapping at the volume's end), each block filled with its own byte. */
async function writeBlocks(prod: ProductionGateway, offset: number, count: number, fill: number): Promise<void> {
  for (let i = 0; i < count; i += 16) {
    const n = Math.min(16, count - i);
    await Promise.all(Array.from({ length: n }, (_, k) =>
      prod.write('vol-0', (offset + (i + k) * 4096) % volumeBytes, Buffer.alloc(4096, (fill + i + k) & 0xff))));
  }
}

async function readSource(prod: ProductionGateway, offset: number, length: number): Promise<Buffer> {
  return Buffer.from(await prod.protectedVolumes()[0]!.volume.read(offset, length));
}

const drAheadFile = (prodDir: string, vmUuid: string) => join(prodDir, 'cbt', vmUuid, 'dr-ahead.json');
const exists = (p: string) => stat(p).then(() => true, () => false);

t.test('host crash with DR ahead: the restart skips past DR, checks the VM, and the volumes end identical', async (t) => {
  const s = await setup(t, t.testdir());
  let prod = await s.startProd();
  await writeBlocks(prod, 0, 64, 1);
  await s.drain(prod); // initial sync, its check, the writes
  const before = await readSource(prod, 0, 64 * 4096);
  await s.stopProd();
  await s.snapshot();
  prod = await s.startProd();
  const k = prod.status().vms[0]!.lastSeq;
  // Written after the older image: on DR, and lost with production's host (as unacknowledged ship-ahead is).
  await writeBlocks(prod, 1 * MiB, 200, 7);
  await s.drain(prod);
  const drSeq = s.dr.status().vms[0]!.appliedSeq;
  t.ok(drSeq > k && drSeq <= k + limits.shipAheadRecordsMax, `DR at ${drSeq}, beyond the older journal's ${k}`);
  await s.stopProd();
  await s.hostCrash();

  prod = await s.startProd();
  const vmUuid = prod.status().vms[0]!.vmUuid;
  t.ok(await exists(drAheadFile(s.prodDir, vmUuid)), 'the replayed journal end is remembered until DR is reconciled');
  await until(() => prod.status().connected, 15_000, 'link up');
  await s.drain(prod);
  const st = prod.status().vms[0]!;
  t.equal(st.fault, null, 'no fault: the pair reconciled itself');
  t.ok(st.lastSeq >= k + limits.shipAheadRecordsMax, `the journal continued past ${k} + shipAheadRecordsMax (at ${st.lastSeq})`);
  t.equal(st.replication.transitions['queue->check'], 1, 'DR ahead: a consistency check ran');
  t.ok((st.replication.check?.regionsDiffering ?? 0) > 0, 'it found the regions DR holds and the source lacks');
  t.equal(st.replication.check?.regionsRepaired, st.replication.check?.regionsDiffering, 'and repaired them');
  t.equal(st.replication.state, 'queue', 'back in queue');
  await until(async () => !(await exists(drAheadFile(s.prodDir, vmUuid))), 5_000, 'dr-ahead.json cleared');
  t.ok((await readSource(prod, 0, 64 * 4096)).equals(before), 'every write acknowledged before the older image is on the source');
  // New writes take seqs past the skipped ones and replicate.
  await writeBlocks(prod, 2 * MiB, 32, 9);
  await s.drain(prod);
  await s.stopProd();
  t.equal(await s.identical(), null, 'source and DR volumes byte-identical');
});

t.test('host crash with DR not ahead: the seqs are skipped, no check runs', async (t) => {
  const s = await setup(t, t.testdir());
  let prod = await s.startProd();
  await writeBlocks(prod, 0, 64, 3);
  await s.drain(prod);
  await s.stopProd();
  await s.snapshot();
  await s.hostCrash();
  prod = await s.startProd();
  const vmUuid = prod.status().vms[0]!.vmUuid;
  await until(() => prod.status().connected, 15_000, 'link up');
  await s.drain(prod);
  const st = prod.status().vms[0]!;
  t.equal(st.fault, null);
  t.equal(st.replication.transitions['queue->check'], 0, 'DR at or below the replayed journal: no check');
  await until(async () => !(await exists(drAheadFile(s.prodDir, vmUuid))), 5_000, 'dr-ahead.json cleared');
  await writeBlocks(prod, 1 * MiB, 32, 5);
  await s.drain(prod);
  await s.stopProd();
  t.equal(await s.identical(), null, 'source and DR volumes byte-identical');
});

t.test('host crash with DR beyond anything production could have shipped: a fault, not a silent reuse', async (t) => {
  const s = await setup(t, t.testdir());
  let prod = await s.startProd();
  await s.drain(prod);
  await s.stopProd();
  await s.snapshot();
  prod = await s.startProd();
  // More records than the ship-ahead bound: production never ships that far ahead of its durable journal.
  await writeBlocks(prod, 0, limits.shipAheadRecordsMax + 200, 1);
  await s.drain(prod);
  await s.stopProd();
  await s.hostCrash();
  prod = await s.startProd();
  await until(() => prod.status().vms[0]!.fault, 15_000, 'the fault');
  t.match(prod.status().vms[0]!.fault, /DR has applied seq \d+ beyond/, 'the fault names DR\'s position');
});

t.test('Async: FLUSH and FUA writes wait for local durability only, never for DR', async (t) => {
  for (const writeBack of [false, true]) {
    const s = await setup(t, join(t.testdir(), `write-back-${writeBack}`), { writeBack });
    const prod = await s.startProd();
    await s.drain(prod);
    await s.closeDr(); // DR gone: nothing is acknowledged from here on
    await until(() => !prod.status().connected, 15_000, 'link down');
    const exp = productionExports(prod)[0]!;
    await exp.write(0, Buffer.alloc(4096, 1), false);
    await exp.write(4096, Buffer.alloc(4096, 2), true); // FUA
    await exp.flush();
    const st = prod.status().vms[0]!;
    t.ok(st.ackedSeq < st.lastSeq, `writeBack=${writeBack}: FLUSH and FUA completed with DR behind (${st.ackedSeq} < ${st.lastSeq})`);
    t.ok((await readSource(prod, 4096, 4096)).every((b) => b === 2), 'the FUA write is on the source');
  }
});
