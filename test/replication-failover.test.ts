import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { GatewayChild } from '../src/cli/gateway-child.js';
import type { IpcMessage } from '../src/cli/gateway-process.js';
import { seededRandom } from '../src/core/random.js';
import type { FailoverResult } from '../src/replication/dr-site.js';
import { NbdVolume } from '../src/volume/nbd-volume.js';
import { pairConfigJson, startPair, vmUuid } from './lib/pair.js';
import { startNbdProcessPair } from './lib/process-pair.js';
import { blockBytes, prefixConflict, prefixOf, stampedBlock, stampOf } from '../src/chaos/stamps.js';
import { slowWrites } from './lib/slow-volume.js';

// Unplanned failover with real gateway processes: the source is SIGKILLed mid-load (stamped writes through
// its NBD intake), the DR gateway promotes the VM, and the promoted image must be production's image after
// some prefix of its writes in submission order; in Sync, a prefix holding every acknowledged write.

const volumeBytes = 8 * 1024 * 1024;
const blocks = volumeBytes / blockBytes;
const queueDepth = 8;

type Status = IpcMessage & { type: 'status' };

interface Load {
  history: number[];
  /** Highest stamp acknowledged (its write and every write submitted before it that was acknowledged). */
  ackedMax: number;
  acked: Set<number>;
  stop(): Promise<void>;
}

/** Stamped 4 KiB writes at queue depth 8 over one NBD connection until stopped (errors end it: the source died). */
function stampedLoad(volume: NbdVolume, seed: number): Load {
  const random = seededRandom(seed);
  const load: Load = { history: [], ackedMax: 0, acked: new Set(), stop: async () => undefined };
  let stopped = false;
  const worker = async (): Promise<void> => {
    while (!stopped) {
      const block = Math.floor(random.float() * blocks);
      load.history.push(block);
      const stamp = load.history.length;
      try {
        await volume.write(block * blockBytes, stampedBlock(stamp, block));
      } catch {
        return;
      }
      load.acked.add(stamp);
      load.ackedMax = Math.max(load.ackedMax, stamp);
    }
  };
  const workers = Array.from({ length: queueDepth }, worker);
  load.stop = async () => {
    stopped = true;
    await Promise.all(workers);
  };
  return load;
}

async function readAll(volume: NbdVolume): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = 0; at < volumeBytes; at += 1024 * 1024) parts.push(await volume.read(at, 1024 * 1024));
  return Buffer.concat(parts);
}

async function openExport(port: number | undefined): Promise<NbdVolume> {
  return NbdVolume.open({ host: '127.0.0.1', port: port!, exportName: 'vol-0' });
}

function status(child: GatewayChild): Promise<Status> {
  return child.request<Status>({ type: 'status' }, 'status');
}

async function failover(dr: GatewayChild, vm = vmUuid): Promise<FailoverResult> {
  return (await dr.request<IpcMessage & { type: 'failedOver' }>({ type: 'failover', vmUuid: vm, kind: 'unplanned' }, 'failedOver')).result;
}

/** The code of a rejection (a VrgError's, or the IPC reply's). */
function errorCode(err: unknown): string {
  return (err as { code?: string }).code ?? `no code: ${(err as Error).message}`;
}

async function until(what: string, ms: number, cond: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function runFailover(t: Test, mode: 'async' | 'sync', seed: number): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), `vrg-failover-${mode}-`));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: volumeBytes });
  Object.assign(json.prod.vms[0]!, { mode });
  const { pair, dr, prod, children } = await startNbdProcessPair(t, dir, json);

  // The initial sync of the empty volume ends before the load: the load then runs in the VM's steady state.
  await until('the initial sync', 60_000, async () => (await status(prod)).status !== null &&
    ((await status(prod)).status as { vms: Array<{ replication: { state: string } }> }).vms[0]!.replication.state === 'queue');
  const source = await openExport(pair.ready.prod!.nbdPort);
  const load = stampedLoad(source, seed);
  await until('writes acknowledged', 60_000, async () => load.acked.size >= 1500);
  await prod.kill();
  await load.stop();
  await source.close().catch(() => undefined);
  t.comment(`seed ${seed}: ${load.history.length} writes submitted, ${load.acked.size} acknowledged (highest ${load.ackedMax})`);

  const result = await failover(dr);
  t.equal(result.generation, 2, 'the promotion takes the next generation');
  t.same(result.exports, ['vol-0']);

  const promoted = await openExport(pair.ready.dr!.nbdPort);
  const image = await readAll(promoted);
  const k = prefixOf(image, load.history);
  t.ok(k, `the promoted image is production's after some prefix of its writes (seed ${seed})${k ? '' : `: ${prefixConflict(image, load.history)}`}`);
  t.ok(k === null || k.hi <= load.history.length);
  t.ok(result.fromSeq > 0, `promoted at the old source's seq ${result.fromSeq}`);
  if (mode === 'sync') {
    t.ok(k !== null && k.hi >= load.ackedMax, `every acknowledged write is in the image (highest acknowledged ${load.ackedMax}, prefix ${k?.lo}..${k?.hi})`);
  }

  // The promoted disk takes writes, tracked in its CBT bitmap.
  const after = stampedBlock(load.history.length + 1, 5);
  await promoted.write(5 * blockBytes, after);
  await promoted.flush();
  t.ok((await promoted.read(5 * blockBytes, blockBytes)).equals(after), 'a write to the promoted disk reads back');
  await promoted.close();
  const site = (await status(dr)).status as { promoted: { vms: Array<{ vmUuid: string; replication: { state: string } }> } | null; vms: unknown[] };
  t.equal(site.promoted?.vms[0]?.vmUuid, vmUuid, 'the VM is now a source on the DR gateway');
  t.equal(site.promoted?.vms[0]?.replication.state, 'cbt', 'its writes are tracked in the CBT bitmap');
  t.same(site.vms, [], 'and no longer one of its targets');

  // Bad input: each a clear error, nothing changed.
  t.equal(await failover(dr).then(() => 'ok', errorCode), 'VRG_VM_ROLE_CONFLICT', 'a source cannot be promoted');
  t.equal(await failover(dr, '00000000-0000-4000-8000-000000000000').then(() => 'ok', errorCode), 'VRG_VM_NOT_FOUND', 'nor an unknown VM');

  // The promotion survives a restart of the DR gateway, with the write taken since.
  await dr.stop();
  const dr2 = await pair.startDr();
  children.push(dr2);
  const reopened = await openExport(pair.ready.dr!.nbdPort);
  t.ok((await reopened.read(5 * blockBytes, blockBytes)).equals(after), 'after a restart the promoted disk keeps its writes');
  await reopened.write(6 * blockBytes, stampedBlock(load.history.length + 2, 6));
  await reopened.flush();

  // The old source comes back: it sees the newer generation and becomes the VM's target (failback), so
  // nothing it holds overwrites the promoted disk.
  const prod2 = await pair.startProd();
  children.push(prod2);
  await until('the old source to become the target', 30_000, async () => {
    const s = (await status(prod2)).status as { vms: unknown[]; targets: { vms: Array<{ vmUuid: string }> } | null };
    return s.vms.length === 0 && s.targets?.vms[0]?.vmUuid === vmUuid;
  });
  await new Promise((r) => setTimeout(r, 500));
  const now = await readAll(reopened);
  t.equal(stampOf(now, 5), load.history.length + 1, 'nothing the old source holds overwrote the promoted disk');
  t.equal(stampOf(now, 6), load.history.length + 2);
  await reopened.close();
  const log = await readFile(join(dir, 'production.log'), 'utf8');
  t.match(log, /was promoted on test-dr \(generation 2, this side 1\)/, 'the old source logs why it stopped');
}

t.test('unplanned failover (async): the promoted image is a prefix of the source\'s writes', async (t) => {
  await runFailover(t, 'async', 1401);
});

t.test('unplanned failover (sync): the promoted image holds every acknowledged write', async (t) => {
  await runFailover(t, 'sync', 1402);
});


t.test('a promotion applies everything the DR log acknowledged before the image is served', async (t) => {
  const dir = t.testdir();
  const pair = await startPair({ dir, pool: false, volumes: 1, volumeSizeBytes: volumeBytes, wrapDrVolume: slowWrites });
  t.teardown(() => pair.close());
  await pair.drain();
  pair.prod.setMode(vmUuid, 'sync');
  const block = 64 * 1024;
  // Even blocks, then odd ones: each write reaches the targets on its own (no merging).
  const order = [...Array.from({ length: volumeBytes / block / 2 }, (_, i) => 2 * i), ...Array.from({ length: volumeBytes / block / 2 }, (_, i) => 2 * i + 1)];
  await Promise.all(order.map((b) => pair.prod.write('vol-0', b * block, Buffer.alloc(block, 7))));
  const before = pair.dr.status().vms[0]!;
  t.ok(before.appliedSeq < before.durableSeq, `the targets are behind the log when the source goes (${before.appliedSeq} < ${before.durableSeq})`);
  const promoted = await pair.dr.promote(vmUuid, 'test');
  t.equal(promoted.role.generation, 2);
  t.equal(promoted.role.fromSeq, before.durableSeq, 'promoted at the last acknowledged seq');
  const image = await readFile(join(dir, 'target', 'disk0.img'));
  const missing = order.filter((b) => image[b * block] !== 7 || image[(b + 1) * block - 1] !== 7).length;
  t.equal(missing, 0, 'every acknowledged (Sync) write is in the promoted image');
  t.same(pair.dr.vmRole(vmUuid), { role: 'source', generation: 2, promoting: false });
  t.equal(await pair.dr.promote(vmUuid, 'again').then(() => 'ok', errorCode), 'VRG_VM_ROLE_CONFLICT');
});
