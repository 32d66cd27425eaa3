import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { GatewayChild } from '../src/cli/gateway-child.js';
import type { IpcMessage } from '../src/cli/gateway-process.js';
import { seededRandom } from '../src/core/random.js';
import type { FailoverResult } from '../src/replication/dr-site.js';
import { NbdVolume } from '../src/volume/nbd-volume.js';
import { compareVolumes } from '../src/cli/demo.js';
import { pairConfigJson, vmUuid } from './lib/pair.js';
import { startNbdProcessPair } from './lib/process-pair.js';

// Failback with real gateway processes: after an unplanned failover the old source comes back, sees the newer
// generation and becomes the VM's target; the promoted side ships only what differs (its bitmap since the
// promotion, then a consistency check repairs what the old source wrote and never got acknowledged).

const MiB = 1024 * 1024;
const volumeBytes = 1024 * MiB;
const writeBytes = 64 * 1024;

type Status = IpcMessage & { type: 'status' };
interface VmFigures { vmUuid: string; backlogRecords: number; plainBytesSent: number; replication: { state: string } }
interface DrSiteFigures { vms: Array<{ vmUuid: string }>; promoted: { vms: VmFigures[] } | null }
interface ProdSiteFigures { vms: VmFigures[]; targets: { vms: Array<{ vmUuid: string; durableSeq: number; appliedSeq: number }> } | null }

async function status<T>(child: GatewayChild): Promise<T> {
  return (await child.request<Status>({ type: 'status' }, 'status')).status as T;
}

async function until(what: string, ms: number, cond: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** `count` writes of 64 KiB at seeded random 64 KiB-aligned offsets (queue depth 8), each filled with `fill`. */
async function writeRandom(volume: NbdVolume, seed: number, count: number, fill: number): Promise<number[]> {
  const random = seededRandom(seed);
  const offsets = Array.from({ length: count }, () => Math.floor(random.float() * (volumeBytes / writeBytes)) * writeBytes);
  for (let i = 0; i < offsets.length; i += 8) {
    await Promise.all(offsets.slice(i, i + 8).map((o, j) => volume.write(o, Buffer.alloc(writeBytes, (fill + i + j) % 251))));
  }
  return offsets;
}

t.test('failback after an unplanned failover resyncs less than 5 % of the volume and ends identical', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-failback-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: volumeBytes });
  const { pair, dr, prod, children } = await startNbdProcessPair(t, dir, json);
  await until('the initial sync', 120_000, async () => (await status<ProdSiteFigures>(prod)).vms[0]?.replication.state === 'queue');

  // Writes at home, replicated; then more while the source dies (some never reach DR).
  const home = await NbdVolume.open({ host: '127.0.0.1', port: pair.ready.prod!.nbdPort!, exportName: 'vol-0' });
  await writeRandom(home, 1, 64, 1);
  await prod.request({ type: 'drain' }, 'drained');
  const dying = writeRandom(home, 2, 256, 2).catch(() => 'cut');
  await new Promise((r) => setTimeout(r, 50));
  await prod.kill();
  await dying;
  await home.close().catch(() => undefined);

  const result = (await dr.request<IpcMessage & { type: 'failedOver' }>({ type: 'failover', vmUuid, kind: 'unplanned' }, 'failedOver')).result as FailoverResult;
  t.equal(result.generation, 2);
  const away = await NbdVolume.open({ host: '127.0.0.1', port: pair.ready.dr!.nbdPort!, exportName: 'vol-0' });
  const sincePromotion = new Set(await writeRandom(away, 3, 256, 3)); // 16 MiB at DR after the promotion
  await away.flush();

  // The old source comes back: it becomes the target, and the promoted side ships what differs.
  const prod2 = await pair.startProd();
  children.push(prod2);
  await until('the old source to become the target', 30_000, async () => (await status<ProdSiteFigures>(prod2)).targets?.vms[0]?.vmUuid === vmUuid);
  const back = await status<ProdSiteFigures>(prod2);
  t.equal(back.vms.length, 0, 'the old source no longer serves the VM as its source');
  await until('the failback resync and check', 180_000, async () => {
    const s = await status<DrSiteFigures>(dr);
    const vm = s.promoted?.vms[0];
    return vm !== undefined && vm.replication.state === 'queue' && vm.backlogRecords === 0;
  });
  const promoted = (await status<DrSiteFigures>(dr)).promoted!.vms[0]!;
  const share = promoted.plainBytesSent / volumeBytes;
  t.comment(`failback shipped ${(promoted.plainBytesSent / MiB).toFixed(1)} MiB of ${volumeBytes / MiB} MiB (${(share * 100).toFixed(2)} %)`);
  t.ok(share < 0.05, `failback resynced less than 5 % of the volume (${(share * 100).toFixed(2)} %)`);
  t.ok(promoted.plainBytesSent >= sincePromotion.size * writeBytes,
    `at least the ${sincePromotion.size} blocks written at DR since the promotion`);

  // Writes at DR go on replicating to the old source, now the target.
  await writeRandom(away, 4, 16, 4);
  await away.close();
  await until('the last writes on the target', 30_000, async () => (await status<DrSiteFigures>(dr)).promoted!.vms[0]!.backlogRecords === 0);
  t.equal(await prod2.stop(), 0);
  t.equal(await dr.stop(), 0);
  t.equal(await compareVolumes([[json.prod.vms[0]!.volumes[0]!.path, json.dr.vms[0]!.volumes[0]!.path]]), null, 'both sides end identical');
});

interface Transitions { transitions: Record<string, number> }

t.test('planned failover and back under load loses nothing and resyncs nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-move-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const size = 64 * MiB;
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: size });
  const { pair, dr, prod } = await startNbdProcessPair(t, dir, json);
  await until('the initial sync', 60_000, async () => (await status<ProdSiteFigures>(prod)).vms[0]?.replication.state === 'queue');

  // Writes go on at home until the move refuses them (EPERM); every acknowledged one must be at DR.
  const home = await NbdVolume.open({ host: '127.0.0.1', port: pair.ready.prod!.nbdPort!, exportName: 'vol-0' });
  const acked = new Map<number, number>();
  let refused = '';
  let n = 0;
  const writer = (async () => {
    for (;;) {
      const offset = (n % (size / writeBytes)) * writeBytes;
      const fill = (n++ % 250) + 1;
      try {
        await home.write(offset, Buffer.alloc(writeBytes, fill));
      } catch (err) {
        refused = (err as Error).message;
        return;
      }
      acked.set(offset, fill);
    }
  })();
  await new Promise((r) => setTimeout(r, 300));
  const moved = (await dr.request<IpcMessage & { type: 'failedOver' }>({ type: 'failover', vmUuid, kind: 'planned' }, 'failedOver')).result as FailoverResult;
  await writer;
  await home.close().catch(() => undefined);
  t.equal(moved.generation, 2, 'the move takes the next generation');
  t.ok(acked.size > 0 && refused !== '', `writes at home went on until the move refused them (${acked.size} blocks written: ${refused})`);
  await until('the old source to become the target', 30_000, async () => (await status<ProdSiteFigures>(prod)).targets?.vms[0]?.vmUuid === vmUuid);

  const away = await NbdVolume.open({ host: '127.0.0.1', port: pair.ready.dr!.nbdPort!, exportName: 'vol-0' });
  let lost = 0;
  for (const [offset, fill] of acked) if ((await away.read(offset, writeBytes)).some((x) => x !== fill)) lost++;
  t.equal(lost, 0, 'every write acknowledged at home is on the moved VM');
  for (let i = 0; i < 16; i++) await away.write(i * writeBytes, Buffer.alloc(writeBytes, 0xd0 + i));
  await away.flush();
  await until('the writes at DR on the old source', 30_000, async () => (await status<DrSiteFigures>(dr)).promoted!.vms[0]!.backlogRecords === 0);
  const atDr = (await status<DrSiteFigures & { promoted: { vms: Array<VmFigures & { replication: Transitions }> } }>(dr)).promoted!.vms[0]!;
  t.equal(atDr.plainBytesSent, 16 * writeBytes, 'DR shipped only the writes taken since the move: nothing resynced');
  t.same(Object.values(atDr.replication.transitions).reduce((a, b) => a + b, 0), 0, 'no resync, no check');
  await away.close();

  // And home again, the same way.
  const back = (await prod.request<IpcMessage & { type: 'failedOver' }>({ type: 'failover', vmUuid, kind: 'planned' }, 'failedOver')).result as FailoverResult;
  t.equal(back.generation, 3);
  await until('DR to be the target again', 30_000, async () => {
    const s = await status<DrSiteFigures>(dr);
    return s.vms[0]?.vmUuid === vmUuid && (s.promoted?.vms.length ?? 0) === 0;
  });
  await until('home to ship again', 30_000, async () => (await status<ProdSiteFigures>(prod)).vms[0]?.replication.state === 'queue');
  const home2 = await NbdVolume.open({ host: '127.0.0.1', port: pair.ready.prod!.nbdPort!, exportName: 'vol-0' });
  for (let i = 0; i < 16; i++) t.equal((await home2.read(i * writeBytes, writeBytes))[0], 0xd0 + i, `home holds DR's write ${i}`);
  for (let i = 0; i < 8; i++) await home2.write((32 + i) * writeBytes, Buffer.alloc(writeBytes, 0xe0 + i));
  await home2.close();
  await prod.request({ type: 'drain' }, 'drained');
  const homeVm = (await status<ProdSiteFigures & { vms: Array<VmFigures & { replication: Transitions }> }>(prod)).vms[0]!;
  t.equal(homeVm.plainBytesSent, 8 * writeBytes, 'home shipped only its new writes: nothing resynced');
  t.equal(await prod.stop(), 0);
  t.equal(await dr.stop(), 0);
  t.equal(await compareVolumes([[json.prod.vms[0]!.volumes[0]!.path, json.dr.vms[0]!.volumes[0]!.path]]), null, 'both sides end identical');
});
