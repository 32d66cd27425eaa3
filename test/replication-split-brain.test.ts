import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { systemClock } from '../src/core/clock.js';
import { silentLogger } from '../src/core/log.js';
import { systemRandom } from '../src/core/random.js';
import { tcpTransport } from '../src/link/transport.js';
import { InlineCodec } from '../src/pipeline/codec.js';
import type { AlarmEvent } from '../src/replication/control.js';
import { DrSite } from '../src/replication/dr-site.js';
import { ProductionSite } from '../src/replication/production-site.js';
import { FaultProxy } from './lib/fault-proxy.js';
import { pairConfigJson, pairConfigs, vmUuid } from './lib/pair.js';
import { startNbdProcessPair } from './lib/process-pair.js';
import { apiSession } from '../src/cli/api-command.js';
import { compareVolumes } from '../src/cli/demo.js';
import type { IpcMessage } from '../src/cli/gateway-process.js';
import { NbdVolume } from '../src/volume/nbd-volume.js';

// Split brain: a partition during which the target is promoted while the source keeps taking writes. Both
// sites (in this process, over real TCP through a fault proxy) detect it when the link heals, overwrite
// nothing until an operator picks the survivor, and then end identical to the survivor.

const MiB = 1024 * 1024;
const volumeBytes = 8 * MiB;
const block = 64 * 1024;

async function until(what: string, ms: number, cond: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function blockOf(path: string, i: number): Promise<number> {
  return (await readFile(path))[i * block]!;
}

/** Both sites in this process over real TCP, production's link through a fault proxy; closed at teardown. */
async function startSites(t: Test): Promise<{ dir: string; dr: DrSite; proxy: FaultProxy; prod: ProductionSite }> {
  const dir = t.testdir();
  const configs = pairConfigs({ dir, volumes: 1, volumeSizeBytes: volumeBytes });
  const deps = { clock: systemClock, random: systemRandom, transport: tcpTransport, codec: new InlineCodec(), logger: silentLogger };
  const dr = await DrSite.open(configs.dr, deps);
  const proxy = await FaultProxy.start(dr.dr.linkPort);
  configs.prod.link.port = proxy.port;
  const prod = await ProductionSite.open(configs.prod, deps);
  t.teardown(async () => {
    await prod.close();
    await dr.close();
    await proxy.close();
  });
  return { dir, dr, proxy, prod };
}

async function splitBrain(t: Test, survivor: 'dr' | 'production'): Promise<void> {
  const { dir, dr, proxy, prod } = await startSites(t);
  const alarms: string[] = [];
  prod.source.on('alarm', (a: AlarmEvent) => alarms.push(`production ${a.kind}:${a.raised}`));
  const [home, away] = [join(dir, 'source', 'disk0.img'), join(dir, 'target', 'disk0.img')];

  await prod.source.drain();
  await prod.source.write('vol-0', 0, Buffer.alloc(block, 0x11));
  await prod.source.drain();

  // The partition: the source keeps writing, the target is promoted and writes too.
  proxy.block(true);
  proxy.cut();
  await until('the link to drop', 10_000, () => !prod.source.status().connected);
  await prod.source.write('vol-0', 1 * block, Buffer.alloc(block, 0xaa));
  await dr.failover(vmUuid, 'unplanned');
  dr.promotedGateway!.on('alarm', (a: AlarmEvent) => alarms.push(`dr ${a.kind}:${a.raised}`));
  await dr.promotedGateway!.write('vol-0', 2 * block, Buffer.alloc(block, 0xbb));
  await dr.promotedGateway!.flush();
  proxy.block(false);

  await until('both sides to see the split brain', 20_000, () => prod.vmRole(vmUuid)?.splitBrain === true && dr.vmRole(vmUuid)?.splitBrain === true);
  t.ok(alarms.includes('production splitBrain:true') && alarms.includes('dr splitBrain:true'), `an alarm on each side (${alarms.join(', ')})`);
  t.match(prod.source.status().vms[0]!.fault, /split brain/, 'the source reports it');
  await new Promise((r) => setTimeout(r, 1_000));
  t.equal(await blockOf(home, 2), 0, 'nothing of the promoted side reached the old source');
  t.equal(await blockOf(away, 1), 0, 'nothing of the old source reached the promoted side');
  t.equal(await blockOf(home, 1), 0xaa);
  t.equal(await blockOf(away, 2), 0xbb);

  if (survivor === 'dr') {
    await prod.source.discardDivergence(vmUuid);
    await until('the old source to become the target', 20_000, () => prod.vmRole(vmUuid)?.role === 'target');
    await until('the failback to end', 60_000, () => {
      const s = dr.promotedGateway!.status().vms[0];
      return s !== undefined && s.replication.state === 'queue' && s.backlogRecords === 0 && s.ackedSeq > 0;
    });
    await dr.dr.caughtUp();
    await prod.target.caughtUp();
  } else {
    await dr.discardDivergence(vmUuid);
    await until('the promoted side to be the target again', 20_000, () => dr.vmRole(vmUuid)?.role === 'target');
    await until('the survivor to check and ship', 60_000, () => {
      const s = prod.source.status().vms[0];
      return s !== undefined && s.replication.state === 'queue' && s.backlogRecords === 0 && s.fault === null;
    });
    await prod.source.drain();
    await dr.dr.caughtUp();
  }
  t.notOk(prod.vmRole(vmUuid)?.splitBrain ?? false, 'resolved on the production side');
  t.notOk(dr.vmRole(vmUuid)?.splitBrain ?? false, 'resolved on the DR side');
  t.ok(alarms.includes('production splitBrain:false'), 'the alarm cleared');
  const [a, b] = [await readFile(home), await readFile(away)];
  t.ok(a.equals(b), `both sides identical (survivor: ${survivor})`);
  t.equal(a[1 * block], survivor === 'dr' ? 0 : 0xaa, 'the survivor\'s block 1');
  t.equal(a[2 * block], survivor === 'dr' ? 0xbb : 0, 'the survivor\'s block 2');
  t.equal(a[0], 0x11, 'what both had before the split');
}

t.test('split brain resolved with the promoted side as survivor', (t) => splitBrain(t, 'dr'));
t.test('split brain resolved with the old source as survivor', (t) => splitBrain(t, 'production'));

t.test('split brain between real gateway processes: the REST API reports it on both sides and resolves it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-split-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: volumeBytes });
  const password = 'Split#brain1';
  for (const side of [json.prod, json.dr]) Object.assign(side, { api: { host: '127.0.0.1', port: 0, adminPassword: password } });
  let proxy: FaultProxy | null = null;
  t.teardown(() => proxy?.close());
  const { pair, dr, prod } = await startNbdProcessPair(t, dir, json, {
    route: async (port) => (proxy = await FaultProxy.start(port)).port,
  });
  type Status = IpcMessage & { type: 'status' };
  const prodStatus = async () => (await prod.request<Status>({ type: 'status' }, 'status')).status as { connected: boolean; vms: Array<{ replication: { state: string } }> };
  await untilAsync('the initial sync', 60_000, async () => (await prodStatus()).vms[0]?.replication.state === 'queue');
  const [home, away] = [json.prod.vms[0]!.volumes[0]!.path, json.dr.vms[0]!.volumes[0]!.path];
  const homeNbd = await NbdVolume.open({ host: '127.0.0.1', port: pair.ready.prod!.nbdPort!, exportName: 'vol-0' });
  await homeNbd.write(0, Buffer.alloc(block, 0x11));
  await prod.request({ type: 'drain' }, 'drained');

  proxy!.block(true);
  proxy!.cut();
  await untilAsync('the link to drop', 10_000, async () => !(await prodStatus()).connected);
  await homeNbd.write(1 * block, Buffer.alloc(block, 0xaa));
  await homeNbd.flush();
  const [prodApi, drApi] = [await apiSession(pair.ready.prod!.restUrl!, 'admin', password), await apiSession(pair.ready.dr!.restUrl!, 'admin', password)];
  await drApi.call('POST', '/vmfailover', { vmUuid, type: 'unplanned' });
  const awayNbd = await NbdVolume.open({ host: '127.0.0.1', port: pair.ready.dr!.nbdPort!, exportName: 'vol-0' });
  await awayNbd.write(2 * block, Buffer.alloc(block, 0xbb));
  await awayNbd.flush();
  proxy!.block(false);

  const role = async (api: typeof prodApi) => await api.call('GET', `/vmdrstatus/${vmUuid}`) as { role: string; splitBrain: boolean };
  await untilAsync('both sides to report the split brain', 20_000, async () => (await role(prodApi)).splitBrain && (await role(drApi)).splitBrain);
  t.pass('vmdrstatus says splitBrain on both gateways');
  await new Promise((r) => setTimeout(r, 1_000));
  t.equal(await blockOf(home, 2), 0, 'nothing of the promoted side reached the old source');
  t.equal(await blockOf(away, 1), 0, 'nothing of the old source reached the promoted side');

  await prodApi.call('POST', '/vmsplitbrain', { vmUuid, survivor: 'peer' });
  await untilAsync('the old source to become the target', 20_000, async () => (await role(prodApi)).role === 'target');
  await untilAsync('the promoted side to catch the target up', 60_000, async () => {
    const s = (await dr.request<Status>({ type: 'status' }, 'status')).status as { promoted: { vms: Array<{ backlogRecords: number; replication: { state: string } }> } };
    return s.promoted.vms[0]?.replication.state === 'queue' && s.promoted.vms[0]?.backlogRecords === 0;
  });
  t.notOk((await role(drApi)).splitBrain, 'resolved on the DR side too');
  await homeNbd.close().catch(() => undefined);
  await awayNbd.close();
  t.equal(await prod.stop(), 0);
  t.equal(await dr.stop(), 0);
  t.equal(await compareVolumes([[home, away]]), null, 'both sides identical to the survivor');
  t.equal(await blockOf(home, 2), 0xbb);
  t.equal(await blockOf(home, 1), 0, 'the old source\'s write since the split is gone');
});

async function untilAsync(what: string, ms: number, cond: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('bad input: a second failover while one runs, a planned failover with the source unreachable', async (t) => {
  const { dr, proxy, prod } = await startSites(t);
  await prod.source.drain();
  const code = (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (e: { code?: string }) => e.code ?? 'no code');

  proxy.block(true);
  proxy.cut();
  await until('the link to drop', 10_000, () => !prod.source.status().connected && dr.dr.peerConnection() === null);
  t.equal(await code(dr.failover(vmUuid, 'planned')), 'VRG_FAILOVER_REFUSED', 'a planned failover needs the source');
  t.match(dr.vmRole(vmUuid), { role: 'target', generation: 1, promoting: false, splitBrain: false }, 'nothing changed');
  t.equal(await code(prod.failover(vmUuid, 'planned')), 'VRG_VM_ROLE_CONFLICT', 'the source cannot fail itself over');

  const [first, second] = await Promise.all([code(dr.failover(vmUuid, 'unplanned')), code(dr.failover(vmUuid, 'unplanned'))]);
  t.same([first, second], ['ok', 'VRG_FAILOVER_IN_PROGRESS'], 'one failover at a time');
  t.equal(dr.vmRole(vmUuid)?.generation, 2, 'promoted once');
  t.equal(await code(dr.failover(vmUuid, 'planned')), 'VRG_VM_ROLE_CONFLICT', 'a promoted VM is no longer a target');

});
