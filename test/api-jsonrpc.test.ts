import t, { type Test } from 'tap';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { certFingerprint } from '../src/api/rest/tls.js';
import type { Clock } from '../src/core/clock.js';
import { decodeClusterPairingKey, decodeVolumePairingKey, encodeClusterPairingKey, encodeVolumePairingKey } from '../src/api/jsonrpc/pairing-keys.js';
import { DrGateway } from '../src/replication/target/dr-gateway.js';
import { ProductionGateway } from '../src/replication/source/production-gateway.js';
import { JsonRpcClient } from './lib/jsonrpc-client.js';
import { newSecret, RestClient, shiftedClock, tempDir, startApiGateway, until, type ApiGateway } from './lib/rest-client.js';
import { drained } from './lib/wait.js';

const MiB = 1024 * 1024;
const VM = '6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b';

type Gw = ApiGateway & { rpc: JsonRpcClient; rest: RestClient };

const tmp = (t: Test): Promise<string> => tempDir(t, 'vrg-jsonrpc-');

/** Each gateway gets its own config link secret: a link can only come up with the secret pairing exchanged. */
async function gateway(t: Test, role: 'production' | 'dr', o: { clock?: Clock; httpsPort?: number } = {}): Promise<Gw> {
  const g = await startApiGateway(role, { dir: await tmp(t), secret: newSecret(), ...o });
  t.teardown(() => g.close());
  return { ...g, rpc: new JsonRpcClient(g.api.jsonRpcUrl), rest: new RestClient(g.api.url) };
}

function prod(g: Gw): ProductionGateway {
  return g.gw as ProductionGateway;
}
function dr(g: Gw): DrGateway {
  return g.gw as DrGateway;
}

async function pairClusters(starter: Gw, completer: Gw): Promise<{ starterId: number; completerId: number }> {
  const started = await starter.rpc.ok('StartClusterPairing');
  const done = await completer.rpc.ok('CompleteClusterPairing', { clusterPairingKey: started.clusterPairingKey });
  return { starterId: started.clusterPairID, completerId: done.clusterPairID };
}

async function createVolume(g: Gw, name: string, totalSize = 4 * MiB): Promise<{ volumeID: number; volUuid: string }> {
  const r = await g.rpc.ok('CreateVolume', { name, accountID: 1, totalSize });
  const v = g.api.service.store.state.rpc!.volumes.find((x) => x.volumeID === r.volumeID)!;
  return { volumeID: r.volumeID, volUuid: v.volUuid };
}

function errName(t: Test, body: any, name: string, what = name): void { // eslint-disable-line @typescript-eslint/no-explicit-any
  t.equal(body?.error?.name, name, what);
  t.equal(body?.error?.code, 500, `${what}: code`);
  t.type(body?.error?.message, 'string');
  t.equal(body?.result, undefined, `${what}: no result`);
}

/** Everything a refused call must leave as it was: the store, the engine's VMs, the pairs as listed. */
async function snapshot(g: Gw): Promise<string> {
  // Link status and latency follow the link, not the configuration: a snapshot keeps only Pending or not.
  const pairs = (await g.rpc.ok('ListClusterPairs')).clusterPairs // eslint-disable-next-line @typescript-eslint/no-explicit-any
    .map((p: any) => ({ ...p, latency: 0, status: p.status === 'Pending' ? 'Pending' : 'paired' }));
  return JSON.stringify({ store: g.api.service.store.state, vms: g.gw.vmConfigs(), pairs });
}

t.test('pair two gateways and a volume through JSON-RPC only: writes replicate; modify; remove in order', async (t) => {
  const [p, d] = [await gateway(t, 'production'), await gateway(t, 'dr')];
  const started = await d.rpc.ok('StartClusterPairing');
  t.type(started.clusterPairID, 'number');
  const keyFields = decodeClusterPairingKey(started.clusterPairingKey);
  t.equal(keyFields.mvip, new URL(d.api.jsonRpcUrl).origin, 'the key carries the starter\'s management URL with its port');
  t.match(keyFields.username, /^__VRG_pair_/);
  t.same((await d.rpc.ok('ListClusterPairs')).clusterPairs.map((x: any) => x.status), ['Pending']); // eslint-disable-line @typescript-eslint/no-explicit-any
  const done = await p.rpc.ok('CompleteClusterPairing', { clusterPairingKey: started.clusterPairingKey });
  t.same(Object.keys(done), ['clusterPairID']);
  await until(() => prod(p).peerStatus()?.connected === true, 15_000, 'link up with the exchanged secret');
  await until(async () => (await p.rpc.ok('ListClusterPairs')).clusterPairs[0]?.status === 'Connected', 15_000, 'production lists Connected');
  const pl = (await p.rpc.ok('ListClusterPairs')).clusterPairs;
  t.equal(pl.length, 1);
  t.match(pl[0], { clusterName: 'rest-dr', clusterPairID: done.clusterPairID, clusterPairUUID: keyFields.clusterPairUUID, status: 'Connected', mvip: keyFields.mvip });
  for (const k of ['clusterUUID', 'latency']) t.ok(Number.isInteger(pl[0][k]), `${k} is an integer`);
  t.type(pl[0].version, 'string');
  await until(async () => (await d.rpc.ok('ListClusterPairs')).clusterPairs[0]?.status === 'Connected', 15_000, 'DR lists Connected');
  t.equal((await d.rpc.ok('ListClusterPairs')).clusterPairs[0].clusterName, 'rest-production');
  t.notOk(p.api.service.store.state.rpc!.clusterPairs[0]!.linkSecretHex === p.config.link.secret.toString('hex'), 'not the config secret');

  const src = await createVolume(p, 'src');
  const dst = await createVolume(d, 'dst');
  const vkey = (await p.rpc.ok('StartVolumePairing', { volumeID: src.volumeID })).volumePairingKey;
  const vfields = decodeVolumePairingKey(vkey);
  t.match(vfields, { volumeID: src.volumeID, volumeName: 'src', mvip: new URL(p.api.jsonRpcUrl).origin });
  t.same(await d.rpc.ok('CompleteVolumePairing', { volumeID: dst.volumeID, volumePairingKey: vkey }), {});
  const vmUuid = vfields.volumePairUUID;
  t.equal(prod(p).vmStatus(vmUuid)?.mode, 'async', 'Async is the default mode');

  const data = Buffer.alloc(64 * 1024);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
  await prod(p).write(src.volUuid, 8192, data);
  await until(async () => {
    await drained(prod(p), dr(d));
    return (await dr(d).readReplica(src.volUuid, 8192, data.length)).equals(data);
  }, 20_000, 'write replicated to the target volume');
  t.pass('the source write arrived on the target');

  const pv = await until(async () => {
    const v = (await p.rpc.ok('ListActivePairedVolumes')).volumes;
    return v[0]?.volumePairs[0].remoteReplication.state === 'Active' ? v : null;
    // The initial sync and its check run first (the write above went in during them): under a full suite's load
    // this took over 20 s once; the VM's state says where it was if it ever does not get there.
  }, 45_000, 'pair Active', () => ({ vm: prod(p).vmStatus(vmUuid), diagnostics: prod(p).diagnostics() }));
  t.equal(pv.length, 1);
  t.match(pv[0], { access: 'readWrite', volumeID: src.volumeID, name: 'src', totalSize: 4 * MiB, status: 'active', blockSize: 4096, sliceCount: 1 });
  t.match(pv[0].volumePairs[0], { clusterPairID: done.clusterPairID, remoteVolumeID: dst.volumeID, remoteVolumeName: 'dst', volumePairUUID: vmUuid,
    remoteReplication: { mode: 'Async', pauseLimit: p.config.journalCapacityBytes, snapshotReplication: { state: 'Idle' }, asyncDelay: '00:00:00.000000' } });
  const dv = (await d.rpc.ok('ListActivePairedVolumes')).volumes;
  t.match(dv[0], { access: 'replicationTarget', volumeID: dst.volumeID, volumePairs: [{ remoteVolumeID: src.volumeID, volumePairUUID: vmUuid, remoteReplication: { asyncDelay: null } }] });

  t.same(await p.rpc.ok('ModifyVolumePair', { volumeID: src.volumeID, mode: 'sync' }), {}, 'the document\'s lowercase "sync"');
  t.equal(prod(p).vmStatus(vmUuid)?.mode, 'sync');
  await p.rpc.ok('ModifyVolumePair', { volumeID: src.volumeID, pausedManual: true });
  t.equal(prod(p).vmStatus(vmUuid)?.pausedManual, true, 'paused in the engine');
  const paused = (await p.rpc.ok('ListActivePairedVolumes')).volumes[0].volumePairs[0].remoteReplication;
  t.match(paused, { state: 'PausedManual', mode: 'Sync' });
  t.equal(p.api.service.store.vm(vmUuid)?.pausedManual, true, 'stored');
  await p.rpc.ok('ModifyVolumePair', { volumeID: src.volumeID, pausedManual: false, mode: 'SnapshotsOnly' });
  t.match(prod(p).vmStatus(vmUuid), { pausedManual: false, mode: 'snapshots' });
  await p.rpc.ok('ModifyVolumePair', { volumeID: src.volumeID, mode: 'Async' });

  await p.rest.login();
  const rest = await p.rest.call('GET', '/vmstrategy');
  t.ok(rest.body.vmList.some((v: any) => v.vmUuid === vmUuid), 'the JSON-RPC pair is the REST face\'s VM'); // eslint-disable-line @typescript-eslint/no-explicit-any

  errName(t, await p.rpc.call('RemoveClusterPair', { clusterPairID: done.clusterPairID }), 'xClusterPairHasVolumePairs');
  errName(t, await d.rpc.call('RemoveClusterPair', { clusterPairID: started.clusterPairID }), 'xClusterPairHasVolumePairs');
  t.same(await p.rpc.ok('RemoveVolumePair', { volumeID: src.volumeID }), {});
  t.equal(prod(p).vmStatus(vmUuid), null, 'the source stopped protecting');
  t.same(await d.rpc.ok('RemoveVolumePair', { volumeID: dst.volumeID }), {});
  t.equal(dr(d).vmStatus(vmUuid), null, 'the target is unbound');
  t.same((await p.rpc.ok('ListActivePairedVolumes')).volumes, []);
  t.same(await p.rpc.ok('RemoveClusterPair', { clusterPairID: done.clusterPairID }), {});
  t.same(await d.rpc.ok('RemoveClusterPair', { clusterPairID: started.clusterPairID }), {});
  t.same((await p.rpc.ok('ListClusterPairs')).clusterPairs, []);
  t.equal(prod(p).peerStatus(), null, 'production link stopped');
});

t.test('request-level refusals: version, body, batch, basic auth; none changes anything', async (t) => {
  const p = await gateway(t, 'production');
  await createVolume(p, 'v1');
  const before = await snapshot(p);
  const base = new URL(p.api.jsonRpcUrl).origin;
  for (const v of ['9.6', '10.0', '11.7', '12.0', '12.3', '12.5']) {
    const r = await p.rpc.post({ method: 'ListClusterPairs', params: {}, id: 7 }, { url: `${base}/json-rpc/${v}` });
    t.same(r.body, { id: 7, result: { clusterPairs: [] } }, `version ${v} served`);
  }
  for (const v of ['9.5', '8.0', '13.0', 'x']) {
    const r = await p.rpc.post({ method: 'ListClusterPairs', params: {}, id: 7 }, { url: `${base}/json-rpc/${v}` });
    t.equal(r.status, 404, `version ${v}: 404`);
    t.equal(r.body.error.name, 'xUnknownAPIVersion');
  }
  const plain = await p.rpc.post({ method: 'ListClusterPairs', params: {}, id: 2 }, { contentType: 'text/plain' });
  t.same(plain.body, { id: 2, result: { clusterPairs: [] } }, 'any content type carries JSON');
  const batch = await p.rpc.post([{ method: 'ListClusterPairs', params: {}, id: 1 }]);
  t.equal(batch.status, 400);
  t.equal(batch.body.error.name, 'xBatchRequestsNotSupported');
  for (const body of ['{"method":', '', '42', '{"params":{}, "id": 3}']) {
    const r = await p.rpc.post(body);
    t.equal(r.status, 400, `body ${JSON.stringify(body)}: 400`);
    t.equal(r.body.error.name, 'xInvalidRequest');
  }
  const wrong = new JsonRpcClient(p.api.jsonRpcUrl, 'admin', 'not-the-password');
  const w = await wrong.post({ method: 'StartClusterPairing', params: {}, id: 1 });
  t.equal(w.status, 401, 'wrong password: 401');
  t.equal(w.body.error.name, 'xNotAuthorized');
  t.match(w.headers['www-authenticate'], /^Basic /);
  t.equal((await new JsonRpcClient(p.api.jsonRpcUrl, 'nobody').post({ method: 'CreateVolume', params: { name: 'x', accountID: 1, totalSize: MiB }, id: 1 })).status, 401, 'unknown user');
  t.equal((await p.rpc.post({ method: 'StartClusterPairing', params: {}, id: 1 }, { auth: null })).status, 401, 'no credentials');
  t.equal((await p.rpc.post({ method: 'StartClusterPairing', params: {}, id: 1 }, { auth: 'Bearer abc' })).status, 401, 'not basic');
  const internal = await p.rpc.post({ method: 'VrgPairVolume', params: {}, id: 1 });
  t.equal(internal.status, 401, 'the gateway-to-gateway method does not take admin credentials');
  t.equal(await snapshot(p), before, 'nothing changed');
  t.equal((await p.rpc.ok('ListClusterPairs')).clusterPairs.length, 0, 'no pending pairing was started');
});

t.test('method-level refusals: unknown method, missing and wrong-typed parameters, unknown volumeID', async (t) => {
  const [p, d] = [await gateway(t, 'production'), await gateway(t, 'dr')];
  const src = await createVolume(p, 'src');
  const before = await snapshot(p);
  const r = await p.rpc.post({ method: 'NoSuchMethod', params: {}, id: 'abc' });
  t.equal(r.status, 200);
  t.equal(r.body.id, 'abc', 'id echoed');
  errName(t, r.body, 'xUnknownAPIMethod');
  errName(t, await p.rpc.call('StartVolumePairing', {}), 'xMissingParameter', 'StartVolumePairing without volumeID');
  errName(t, await p.rpc.call('StartVolumePairing', { volumeID: String(src.volumeID) }), 'xInvalidParameter', 'volumeID as a string');
  errName(t, await p.rpc.call('StartVolumePairing', { volumeID: 1.5 }), 'xInvalidParameter', 'volumeID not an integer');
  errName(t, await p.rpc.call('StartVolumePairing', { volumeID: src.volumeID, mode: 'Fast' }), 'xInvalidParameter', 'unknown mode');
  errName(t, await p.rpc.call('StartVolumePairing', { volumeID: src.volumeID, mode: 1 }), 'xInvalidParameter', 'mode not a string');
  errName(t, await p.rpc.call('StartVolumePairing', { volumeID: 999 }), 'xVolumeIDDoesNotExist');
  errName(t, await p.rpc.call('StartVolumePairing', { volumeID: src.volumeID }), 'xClusterPairDoesNotExist', 'no cluster pair yet');
  errName(t, (await p.rpc.post({ method: 'ListClusterPairs', params: [1], id: 1 })).body, 'xInvalidParameter', 'params an array');
  errName(t, await p.rpc.call('CompleteClusterPairing', {}), 'xMissingParameter');
  errName(t, await p.rpc.call('CompleteClusterPairing', { clusterPairingKey: 12 }), 'xInvalidParameter');
  errName(t, await p.rpc.call('CompleteClusterPairing', { clusterPairingKey: 'zz' }), 'xPairingKeyInvalid', 'not hex');
  errName(t, await p.rpc.call('ModifyVolumePair', { volumeID: 999, pausedManual: true }), 'xVolumeIDDoesNotExist');
  errName(t, await p.rpc.call('ModifyVolumePair', { volumeID: src.volumeID, pausedManual: 'yes' }), 'xInvalidParameter');
  errName(t, await p.rpc.call('ModifyVolumePair', { volumeID: src.volumeID, pausedManual: true }), 'xVolumeNotPaired');
  errName(t, await p.rpc.call('RemoveVolumePair', {}), 'xMissingParameter');
  errName(t, await p.rpc.call('RemoveVolumePair', { volumeID: 999 }), 'xVolumeIDDoesNotExist');
  errName(t, await p.rpc.call('RemoveVolumePair', { volumeID: src.volumeID }), 'xVolumeNotPaired');
  errName(t, await p.rpc.call('RemoveClusterPair', {}), 'xMissingParameter');
  errName(t, await p.rpc.call('RemoveClusterPair', { clusterPairID: '1' }), 'xInvalidParameter');
  errName(t, await p.rpc.call('RemoveClusterPair', { clusterPairID: 1 }), 'xClusterPairDoesNotExist');
  errName(t, await p.rpc.call('CreateVolume', { name: 'x', accountID: 1 }), 'xMissingParameter', 'CreateVolume without totalSize');
  errName(t, await p.rpc.call('CreateVolume', { name: 'x', accountID: 1, totalSize: MiB, attributes: { volUuid: src.volUuid } }), 'xInvalidParameter', 'volUuid taken');
  errName(t, await d.rpc.call('StartVolumePairing', { volumeID: 1 }), 'xInvalidParameter', 'StartVolumePairing on the DR (target) gateway');
  t.equal(await snapshot(p), before, 'nothing changed');
});

t.test('pairing keys: reused, expired (injected clock), tampered, cancelled; none changes anything', async (t) => {
  const clock = shiftedClock();
  const d = await gateway(t, 'dr', { clock });
  const [p1, p2] = [await gateway(t, 'production'), await gateway(t, 'production')];
  const { clusterPairingKey: key } = await d.rpc.ok('StartClusterPairing');
  const k = decodeClusterPairingKey(key);
  const reencode = (f: Partial<typeof k>): string => Buffer.from(JSON.stringify({ ...k, ...f }), 'utf8').toString('hex');
  const beforeD = await snapshot(d);
  const beforeP1 = await snapshot(p1);
  errName(t, await p1.rpc.call('CompleteClusterPairing', { clusterPairingKey: reencode({ password: `${k.password}x` }) }), 'xPairingKeyInvalid', 'wrong password');
  errName(t, await p1.rpc.call('CompleteClusterPairing', { clusterPairingKey: reencode({ clusterPairID: k.clusterPairID + 1 }) }), 'xPairingKeyInvalid', 'changed pair id');
  errName(t, await p1.rpc.call('CompleteClusterPairing', { clusterPairingKey: `${key.slice(0, -2)}7e` }), 'xPairingKeyInvalid', 'truncated JSON');
  t.equal(await snapshot(d), beforeD, 'starter unchanged (the key is still pending)');
  t.equal(await snapshot(p1), beforeP1, 'completer unchanged');
  await p1.rpc.ok('CompleteClusterPairing', { clusterPairingKey: key });
  const afterD = await snapshot(d);
  const beforeP2 = await snapshot(p2);
  errName(t, await p2.rpc.call('CompleteClusterPairing', { clusterPairingKey: key }), 'xPairingKeyAlreadyUsed', 'reused key');
  t.equal(await snapshot(p2), beforeP2, 'the second completer stored nothing');
  t.equal(await snapshot(d), afterD, 'the starter kept one pair');

  const { clusterPairingKey: late } = await d.rpc.ok('StartClusterPairing');
  clock.advance(60 * 60 * 1000);
  errName(t, await p2.rpc.call('CompleteClusterPairing', { clusterPairingKey: late }), 'xPairingKeyExpired', 'expired after 1 hour');
  t.equal(await snapshot(p2), beforeP2);

  const { clusterPairingKey: cancelled, clusterPairID } = await d.rpc.ok('StartClusterPairing');
  t.same(await d.rpc.ok('RemoveClusterPair', { clusterPairID }), {}, 'a pending pairing can be cancelled');
  errName(t, await p2.rpc.call('CompleteClusterPairing', { clusterPairingKey: cancelled }), 'xPairingKeyInvalid', 'cancelled key');
  t.equal(await snapshot(p2), beforeP2);
  t.equal((await d.rpc.ok('ListClusterPairs')).clusterPairs.length, 1);
  const unreachable = encodeClusterPairingKey({ ...k, mvip: 'http://127.0.0.1:1' });
  errName(t, await p2.rpc.call('CompleteClusterPairing', { clusterPairingKey: unreachable }), 'xRemoteClusterUnreachable', 'starter unreachable');
  t.equal(await snapshot(p2), beforeP2);
});

t.test('volume keys: reused and tampered are refused and bind nothing', async (t) => {
  const [p, d] = [await gateway(t, 'production'), await gateway(t, 'dr')];
  await pairClusters(d, p);
  const src = await createVolume(p, 'src', MiB);
  const [dst1, dst2, small] = [await createVolume(d, 'dst1', MiB), await createVolume(d, 'dst2', MiB), await createVolume(d, 'small', 4096 * 4)];
  const vkey = (await p.rpc.ok('StartVolumePairing', { volumeID: src.volumeID, mode: 'Sync' })).volumePairingKey;
  const f = decodeVolumePairingKey(vkey);
  const [bp, bd] = [await snapshot(p), await snapshot(d)];
  errName(t, await d.rpc.call('CompleteVolumePairing', { volumeID: dst1.volumeID, volumePairingKey: encodeVolumePairingKey({ ...f, volumeName: 'other' }) }), 'xPairingKeyInvalid', 'tampered name');
  errName(t, await d.rpc.call('CompleteVolumePairing', { volumeID: dst1.volumeID, volumePairingKey: encodeVolumePairingKey({ ...f, volumePairUUID: '69624fcb-202e-4325-a569-ec9c655c7b5a' }) }), 'xPairingKeyInvalid', 'other token');
  errName(t, await d.rpc.call('CompleteVolumePairing', { volumeID: dst1.volumeID, volumePairingKey: encodeVolumePairingKey({ ...f, mvip: 'http://127.0.0.1:1' }) }), 'xClusterPairDoesNotExist', 'unpaired mvip');
  errName(t, await d.rpc.call('CompleteVolumePairing', { volumeID: small.volumeID, volumePairingKey: vkey }), 'xInvalidParameter', 'size mismatch');
  errName(t, await d.rpc.call('CompleteVolumePairing', { volumeID: 999, volumePairingKey: vkey }), 'xVolumeIDDoesNotExist');
  errName(t, await p.rpc.call('CompleteVolumePairing', { volumeID: src.volumeID, volumePairingKey: vkey }), 'xInvalidParameter', 'complete on the source');
  t.equal(await snapshot(p), bp, 'source unchanged');
  t.equal(await snapshot(d), bd, 'target unchanged');
  await d.rpc.ok('CompleteVolumePairing', { volumeID: dst1.volumeID, volumePairingKey: vkey });
  t.equal(prod(p).vmStatus(f.volumePairUUID)?.mode, 'sync', 'the mode given at StartVolumePairing');
  const [ap, ad] = [await snapshot(p), await snapshot(d)];
  errName(t, await d.rpc.call('CompleteVolumePairing', { volumeID: dst2.volumeID, volumePairingKey: vkey }), 'xPairingKeyAlreadyUsed', 'reused volume key');
  errName(t, await d.rpc.call('CompleteVolumePairing', { volumeID: dst1.volumeID, volumePairingKey: vkey }), 'xVolumeAlreadyPaired');
  errName(t, await p.rpc.call('StartVolumePairing', { volumeID: src.volumeID }), 'xVolumeAlreadyPaired');
  errName(t, await d.rpc.call('ModifyVolumePair', { volumeID: dst1.volumeID, pausedManual: true }), 'xVolumePairIsTarget');
  t.equal(await snapshot(p), ap);
  t.equal(await snapshot(d), ad);
  t.equal(dr(d).vmConfigs().length, 1, 'one target bound');
});

t.test('at most four cluster pairs; extra pairs are listed Disconnected', async (t) => {
  const p = await gateway(t, 'production');
  const drs: Gw[] = [];
  for (let i = 0; i < 5; i++) drs.push(await gateway(t, 'dr'));
  for (const d of drs.slice(0, 4)) await pairClusters(d, p);
  await until(async () => (await p.rpc.ok('ListClusterPairs')).clusterPairs.filter((c: any) => c.status === 'Connected').length === 1, 15_000, 'one link'); // eslint-disable-line @typescript-eslint/no-explicit-any
  const listed = (await p.rpc.ok('ListClusterPairs')).clusterPairs;
  t.same(listed.map((c: any) => c.status), ['Connected', 'Disconnected', 'Disconnected', 'Disconnected'], 'the first pair carries the link'); // eslint-disable-line @typescript-eslint/no-explicit-any
  const before = await snapshot(p);
  errName(t, await p.rpc.call('StartClusterPairing'), 'xClusterPairLimitExceeded', 'fifth start');
  const { clusterPairingKey } = await drs[4]!.rpc.ok('StartClusterPairing');
  const before5 = await snapshot(drs[4]!);
  errName(t, await p.rpc.call('CompleteClusterPairing', { clusterPairingKey }), 'xClusterPairLimitExceeded', 'fifth complete');
  t.equal(await snapshot(p), before, 'the production gateway unchanged');
  t.equal(await snapshot(drs[4]!), before5, 'the fifth DR unchanged (its key still pending)');
  errName(t, await drs[0]!.rpc.call('CompleteClusterPairing', { clusterPairingKey }), 'xClusterRoleMismatch', 'two DR gateways');
  t.equal(await snapshot(drs[4]!), before5);
});

t.test('one store: a VM protected through REST is a paired volume here, and JSON-RPC removes it', async (t) => {
  const [p, d] = [await gateway(t, 'production'), await gateway(t, 'dr')];
  const { completerId } = await pairClusters(d, p);
  await p.rest.login();
  const r = await p.rest.call('POST', '/vmstrategy', { vmUuid: VM, vmName: 'vm1', mode: 'sync', volList: [{ volUuid: 'rest-v0', sizeBytes: MiB }] });
  t.equal(r.status, 200);
  const vols = (await p.rpc.ok('ListActivePairedVolumes')).volumes;
  t.equal(vols.length, 1);
  t.match(vols[0], { name: 'vm1', totalSize: MiB, access: 'readWrite', volumePairs: [{ volumePairUUID: VM, clusterPairID: completerId, remoteReplication: { mode: 'Sync' } }] });
  const id = vols[0].volumeID;
  t.equal((await p.rpc.ok('ListActivePairedVolumes')).volumes[0].volumeID, id, 'the volumeID is stable');
  errName(t, await p.rpc.call('RemoveClusterPair', { clusterPairID: completerId }), 'xClusterPairHasVolumePairs', 'the REST VM replicates over the pair');
  await p.rpc.ok('ModifyVolumePair', { volumeID: id, pausedManual: true });
  t.equal(prod(p).vmStatus(VM)?.pausedManual, true);
  await p.rpc.ok('RemoveVolumePair', { volumeID: id });
  t.equal((await p.rest.call('GET', `/vmstrategy?vmUuid=${VM}`)).body.errorCode, '10440400', 'gone from the REST face too');
  t.same((await p.rpc.ok('ListActivePairedVolumes')).volumes, []);
});

t.test('HTTPS: pairing over the HTTPS listener pins both certificates', async (t) => {
  const [p, d] = [await gateway(t, 'production', { httpsPort: 0 }), await gateway(t, 'dr', { httpsPort: 0 })];
  t.match(p.api.jsonRpcUrl, /^https:\/\/127\.0\.0\.1:\d+\/json-rpc\/12\.5$/);
  const { clusterPairingKey } = await d.rpc.ok('StartClusterPairing');
  t.match(decodeClusterPairingKey(clusterPairingKey).mvip, /^https:/);
  await p.rpc.ok('CompleteClusterPairing', { clusterPairingKey });
  const fp = async (g: Gw) => certFingerprint(await readFile(join(g.config.dataDir, 'api', 'https-cert.pem'), 'utf8'));
  t.equal(decodeClusterPairingKey(clusterPairingKey).certFingerprint, await fp(d), 'the key carries the starter\'s fingerprint');
  t.equal(p.api.service.store.state.rpc!.clusterPairs[0]!.peerCertFingerprint, await fp(d), 'production pinned DR');
  t.equal(d.api.service.store.state.rpc!.clusterPairs[0]!.peerCertFingerprint, await fp(p), 'DR pinned production');
  // A pair stored before pinning existed has no fingerprint: its calls still go (unverified, with a warning).
  await d.api.service.store.update((s) => { delete s.rpc!.clusterPairs[0]!.peerCertFingerprint; });
  const [src, dst] = [await createVolume(p, 'src', MiB), await createVolume(d, 'dst', MiB)];
  const { volumePairingKey } = await p.rpc.ok('StartVolumePairing', { volumeID: src.volumeID });
  t.same(await d.rpc.ok('CompleteVolumePairing', { volumeID: dst.volumeID, volumePairingKey }), {}, 'a legacy unpinned pair still works');
  await until(() => prod(p).peerStatus()?.connected === true, 15_000, 'link up');
  const http = new JsonRpcClient(`${p.api.url.replace(/\/vrgservice$/, '')}/json-rpc/12.5`);
  t.equal((await http.ok('ListClusterPairs')).clusterPairs.length, 1, 'the HTTP listener serves the same state');
});

t.test('pairs survive a restart; link down shows as PausedDisconnected; the stored pause is re-applied', async (t) => {
  const [pdir, ddir, ps, ds] = [await tmp(t), await tmp(t), newSecret(), newSecret()];
  const open = async (role: 'production' | 'dr', dir: string, secret: string, linkPort?: number): Promise<Gw> => {
    const g = await startApiGateway(role, { dir, secret, ...(linkPort === undefined ? {} : { linkPort }) });
    t.teardown(() => g.close());
    return { ...g, rpc: new JsonRpcClient(g.api.jsonRpcUrl), rest: new RestClient(g.api.url) };
  };
  let d = await open('dr', ddir, ds);
  let p = await open('production', pdir, ps);
  const linkPort = dr(d).linkPort;
  const { completerId } = await pairClusters(d, p);
  const [src, dst] = [await createVolume(p, 'src', MiB), await createVolume(d, 'dst', MiB)];
  const vkey = (await p.rpc.ok('StartVolumePairing', { volumeID: src.volumeID })).volumePairingKey;
  await d.rpc.ok('CompleteVolumePairing', { volumeID: dst.volumeID, volumePairingKey: vkey });
  const vmUuid = decodeVolumePairingKey(vkey).volumePairUUID;
  await until(() => prod(p).peerStatus()?.connected === true, 15_000, 'link up');

  await d.close();
  await until(async () => (await p.rpc.ok('ListClusterPairs')).clusterPairs[0].status === 'Disconnected', 15_000, 'Disconnected');
  const down = (await p.rpc.ok('ListActivePairedVolumes')).volumes[0].volumePairs[0].remoteReplication;
  t.equal(down.state, 'PausedDisconnected', 'link down: paused by the fault');
  t.type(down.stateDetails, 'string');
  await p.rpc.ok('ModifyVolumePair', { volumeID: src.volumeID, pausedManual: true });
  await p.close();

  d = await open('dr', ddir, ds, linkPort);
  p = await open('production', pdir, ps);
  t.equal(prod(p).vmStatus(vmUuid)?.pausedManual, true, 'the pause came back with the gateway');
  await until(() => prod(p).peerStatus()?.connected === true, 15_000, 'link up again with the stored pair secret');
  await until(async () => (await d.rpc.ok('ListClusterPairs')).clusterPairs[0]?.status === 'Connected', 15_000, 'DR sees the pair connected');
  t.equal((await p.rpc.ok('ListClusterPairs')).clusterPairs[0].clusterPairID, completerId);
  await p.rpc.ok('ModifyVolumePair', { volumeID: src.volumeID, pausedManual: false });
  const data = Buffer.alloc(8192, 0x5a);
  await prod(p).write(src.volUuid, 4096, data);
  await until(async () => {
    await drained(prod(p), dr(d));
    return (await dr(d).readReplica(src.volUuid, 4096, data.length)).equals(data);
  }, 20_000, 'replicated after the restart');
  t.pass('writes replicate after the restart');
});

// The documents' response examples (seed 001), fields and types.
const DOC_CLUSTER_PAIR = { clusterName: 'cluster2', clusterPairID: 3, clusterPairUUID: '9866fbef-c2f8-4df3-beb9-58a5c4e49c9b', clusterUUID: 5487, latency: 1, mvip: '172.1.1.5', status: 'Connected', version: '8.0.0.1361' };
const DOC_VOLUME_PAIR = {
  clusterPairID: 2,
  remoteReplication: { mode: 'Async', pauseLimit: 3145728000, remoteServiceID: 14, resumeDetails: '', snapshotReplication: { state: 'Idle', stateDetails: '' }, state: 'Active', stateDetails: '' },
  remoteSliceID: 8, remoteVolumeID: 8, remoteVolumeName: 'PairingDoc', volumePairUUID: '229fcbf3-2d35-4625-865a-d04bb9455cef',
};
const DOC_VOLUME_FIELDS: Record<string, string> = {
  access: 'string', accountID: 'number', attributes: 'object', blockSize: 'number', createTime: 'string', deleteTime: 'string', enable512e: 'boolean',
  iqn: 'string', name: 'string', purgeTime: 'string', qos: 'object', scsiEUIDeviceID: 'string', scsiNAADeviceID: 'string', sliceCount: 'number',
  status: 'string', totalSize: 'number', virtualVolumeID: 'object', volumeAccessGroups: 'object', volumeID: 'number', volumePairs: 'object',
};

function sameShape(t: Test, got: any, want: any, path: string): void { // eslint-disable-line @typescript-eslint/no-explicit-any
  // VRG's documented additions to the documents' objects (README): nothing else beyond their fields.
  const extensions = new Set(['asyncDelay']);
  t.same(Object.keys(got).filter((k) => !extensions.has(k) || k in want).sort(), Object.keys(want).sort(), `${path}: the document's fields`);
  for (const k of Object.keys(want)) {
    if (typeof want[k] === 'object' && want[k] !== null) sameShape(t, got[k], want[k], `${path}.${k}`);
    else t.equal(typeof got[k], typeof want[k], `${path}.${k}: ${typeof want[k]}`);
  }
}

t.test('the documents\' request examples parse and answer in the documents\' shapes', async (t) => {
  const [p, d] = [await gateway(t, 'production'), await gateway(t, 'dr')];
  const started = await p.rpc.post('{\n  "method": "StartClusterPairing",\n  "params": {\n    },\n  "id" : 1\n}');
  t.same(Object.keys(started.body.result).sort(), ['clusterPairID', 'clusterPairingKey']);
  t.equal(started.body.id, 1);
  const d2 = await gateway(t, 'dr');
  await pairClusters(d, p);
  await p.rpc.ok('RemoveClusterPair', { clusterPairID: started.body.result.clusterPairID }); // the pending one
  const docKeyReq = '{"method":"CompleteClusterPairing","params":{"clusterPairingKey":"7b22636c7573746572506169724944223a312c22636c75737465725061697255554944223a2231636561313336322d346338662d343631612d626537322d373435363661393533643266222c22636c7573746572556e697175654944223a2278736d36222c226d766970223a223139322e3136382e3133392e313232222c226e616d65223a224175746f54657374322d63307552222c2270617373776f7264223a22695e59686f20492d64774d7d4c67614b222c22727063436f6e6e656374696f6e4944223a3931333134323634392c22757365726e616d65223a225f5f53465f706169725f50597a796647704c7246564432444a42227d"},"id":1}';
  t.equal(decodeClusterPairingKey(JSON.parse(docKeyReq).params.clusterPairingKey).mvip, '192.168.139.122', 'the document\'s key decodes');
  const src = await createVolume(p, 'PairingDoc', MiB);
  const dst = await createVolume(d, 'BK', MiB);
  const vkey = await p.rpc.post(`{"method": "StartVolumePairing", "params": {"mode": "Async", "volumeID" : ${src.volumeID}}, "id" : 1}`);
  t.same(Object.keys(vkey.body.result), ['volumePairingKey']);
  const done = await d.rpc.post(`{"method": "CompleteVolumePairing", "params": {"volumeID" : ${dst.volumeID}, "volumePairingKey" : "${vkey.body.result.volumePairingKey}"}, "id" : 1}`);
  t.same(done.body, { id: 1, result: {} });
  await until(async () => (await p.rpc.ok('ListClusterPairs')).clusterPairs[0]?.status === 'Connected', 15_000, 'Connected');
  const pairs = await p.rpc.post('{"method": "ListClusterPairs", "params": {}, "id" : 1}');
  sameShape(t, pairs.body.result.clusterPairs[0], DOC_CLUSTER_PAIR, 'clusterPairs[0]');
  const vols = await d.rpc.post('{"method": "ListActivePairedVolumes", "params": {}, "id" : 1}');
  const vol = vols.body.result.volumes[0];
  t.same(Object.keys(vol).sort(), Object.keys(DOC_VOLUME_FIELDS).sort(), 'volume: the document\'s fields');
  for (const [k, type] of Object.entries(DOC_VOLUME_FIELDS)) t.equal(typeof vol[k], type, `volume.${k}: ${type}`);
  sameShape(t, vol.volumePairs[0], DOC_VOLUME_PAIR, 'volumePairs[0]');
  const mod = await p.rpc.post(`{"method": "ModifyVolumePair", "params": {"pausedManual": false, "volumeID": ${src.volumeID}, "mode": "sync"}, "id": 1}`);
  t.same(mod.body, { id: 1, result: {} });
  t.same((await p.rpc.post(`{"method": "RemoveVolumePair", "params": {"volumeID": ${src.volumeID}}, "id" : 1}`)).body, { id: 1, result: {} });
  t.same((await d2.rpc.post('{"method": "ListClusterPairs", "params": {}, "id" : 1}')).body, { id: 1, result: { clusterPairs: [] } });
});

t.test('once paired, the DR side takes only the pair secret from that production gateway', async (t) => {
  const secret = newSecret();
  const d = await startApiGateway('dr', { dir: await tmp(t), secret });
  t.teardown(() => d.close());
  const p = await startApiGateway('production', { dir: await tmp(t), secret });
  t.teardown(() => p.close());
  const [dg, pg] = [{ ...d, rpc: new JsonRpcClient(d.api.jsonRpcUrl), rest: new RestClient(d.api.url) }, { ...p, rpc: new JsonRpcClient(p.api.jsonRpcUrl), rest: new RestClient(p.api.url) }];
  const linkPort = dr(dg).linkPort;
  prod(pg).setPeer({ host: '127.0.0.1', port: linkPort });
  await until(() => prod(pg).peerStatus()?.connected === true, 15_000, 'the shared config secret works before pairing');
  await pairClusters(dg, pg);
  await until(() => prod(pg).peerStatus()?.connected === true, 15_000, 'link up on the pair secret');
  prod(pg).setPeer({ host: '127.0.0.1', port: linkPort }); // the config secret again
  await until(() => /HANDSHAKE_FAILED/.test(prod(pg).peerStatus()?.lastError ?? ''), 15_000, 'refused with the config secret');
  t.equal(prod(pg).peerStatus()?.connected, false, 'the config secret no longer opens the link for this gateway');
});

t.test('two pairs on one production gateway: volume pairing moves the one link only while nothing replicates', async (t) => {
  const [p, d1, d2] = [await gateway(t, 'production'), await gateway(t, 'dr'), await gateway(t, 'dr')];
  const first = await pairClusters(d1, p);
  const second = await pairClusters(d2, p);
  await until(async () => (await p.rpc.ok('ListClusterPairs')).clusterPairs.map((c: any) => c.status).join() === 'Connected,Disconnected', 15_000, 'first pair active'); // eslint-disable-line @typescript-eslint/no-explicit-any
  const [src, dst2, dst1] = [await createVolume(p, 'src', MiB), await createVolume(d2, 'dst2', MiB), await createVolume(d1, 'dst1', MiB)];
  const k2 = (await p.rpc.ok('StartVolumePairing', { volumeID: src.volumeID })).volumePairingKey;
  await d2.rpc.ok('CompleteVolumePairing', { volumeID: dst2.volumeID, volumePairingKey: k2 });
  await until(async () => (await p.rpc.ok('ListClusterPairs')).clusterPairs.map((c: any) => c.status).join() === 'Disconnected,Connected', 15_000, 'the link moved to the second pair'); // eslint-disable-line @typescript-eslint/no-explicit-any
  t.match((await p.rpc.ok('ListActivePairedVolumes')).volumes[0].volumePairs[0], { clusterPairID: second.completerId });
  const data = Buffer.alloc(4096, 0xa5);
  await prod(p).write(src.volUuid, 0, data);
  await until(async () => {
    await drained(prod(p), dr(d2));
    return (await dr(d2).readReplica(src.volUuid, 0, data.length)).equals(data);
  }, 20_000, 'replicated to the second DR');
  const other = await createVolume(p, 'other', MiB);
  const k1 = (await p.rpc.ok('StartVolumePairing', { volumeID: other.volumeID })).volumePairingKey;
  const [bp, bd1] = [await snapshot(p), await snapshot(d1)];
  errName(t, await d1.rpc.call('CompleteVolumePairing', { volumeID: dst1.volumeID, volumePairingKey: k1 }), 'xInvalidParameter', 'the link is busy with the second pair');
  t.equal(await snapshot(p), bp, 'production unchanged');
  t.equal(await snapshot(d1), bd1, 'the first DR bound nothing');
  t.same(await p.rpc.ok('RemoveClusterPair', { clusterPairID: first.completerId }), {}, 'an idle pair can go');
});

t.test('ModifyVolume access: readWrite on the replication target fails the pair over (planned), and home again', async (t) => {
  const [p, d] = [await gateway(t, 'production'), await gateway(t, 'dr')];
  await pairClusters(d, p);
  await until(() => prod(p).peerStatus()?.connected === true, 15_000, 'link up');
  const src = await createVolume(p, 'src');
  const dst = await createVolume(d, 'dst');
  const vkey = (await p.rpc.ok('StartVolumePairing', { volumeID: src.volumeID })).volumePairingKey;
  await d.rpc.ok('CompleteVolumePairing', { volumeID: dst.volumeID, volumePairingKey: vkey });
  const data = Buffer.alloc(8192, 0x5c);
  await until(async () => (await p.rpc.ok('ListActivePairedVolumes')).volumes[0]?.volumePairs[0].remoteReplication.state === 'Active', 30_000, 'Active');
  await prod(p).write(src.volUuid, 0, data);
  await drained(prod(p), dr(d));

  // Bad input: each refused, nothing changed.
  const before = await snapshot(d);
  errName(t, await d.rpc.call('ModifyVolume', { volumeID: dst.volumeID, access: 'locked' }), 'xInvalidParameter', 'an unknown access');
  errName(t, await d.rpc.call('ModifyVolume', { volumeID: dst.volumeID, access: 'readWrite', totalSize: 1 }), 'xInvalidParameter', 'other parameters');
  errName(t, await d.rpc.call('ModifyVolume', { volumeID: 999, access: 'readWrite' }), 'xVolumeIDDoesNotExist');
  errName(t, await p.rpc.call('ModifyVolume', { volumeID: src.volumeID, access: 'replicationTarget' }), 'xInvalidParameter', 'the source cannot be made the target');
  t.equal(await snapshot(d), before, 'nothing changed');
  t.equal((await d.rpc.ok('ModifyVolume', { volumeID: dst.volumeID, access: 'replicationTarget' })).volume.access, 'replicationTarget', 'already the target: a no-op');

  const moved = await d.rpc.ok('ModifyVolume', { volumeID: dst.volumeID, access: 'readWrite' });
  t.equal(moved.volume.access, 'readWrite', 'the DR volume is writable: the VM failed over');
  const promoted = d.site!.promotedGateway!;
  await until(async () => (await p.rpc.ok('ListActivePairedVolumes')).volumes[0]?.access === 'replicationTarget', 60_000, 'production lists its volume as the target');
  await until(() => promoted.status().connected && promoted.status().vms[0]?.fault === null && promoted.status().vms[0]?.replication.state === 'queue', 60_000, 'the promoted VM ships to production');
  await promoted.write(src.volUuid, 65536, Buffer.alloc(4096, 0x77));
  await drained(promoted, p.prodSite!.target);
  t.ok((await p.prodSite!.target.readReplica(src.volUuid, 65536, 4096)).equals(Buffer.alloc(4096, 0x77)), 'DR\'s write reached production');
  t.equal((await d.rpc.ok('ListActivePairedVolumes')).volumes[0]?.volumePairs[0].remoteReplication.state, 'Active', 'the pair is Active from DR');

  const home = await p.rpc.ok('ModifyVolume', { volumeID: src.volumeID, access: 'readWrite' });
  t.equal(home.volume.access, 'readWrite', 'home again');
  await until(async () => (await d.rpc.ok('ListActivePairedVolumes')).volumes[0]?.access === 'replicationTarget', 60_000, 'DR lists the target again');
  t.equal(prod(p).status().vms.length, 1, 'production is the source');
});

t.test('asyncDelay: seconds behind as Element\'s duration string', async (t) => {
  const { asyncDelay } = await import('../src/api/jsonrpc/volume-list.js');
  t.equal(asyncDelay(0), '00:00:00.000000');
  t.equal(asyncDelay(1.5), '00:00:01.500000');
  t.equal(asyncDelay(3723.000042), '01:02:03.000042');
  t.equal(asyncDelay(null), null, 'the target side: unknown');
});
