import t, { type Test } from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { passwordKey } from '../src/api/auth/account-store.js';
import { apiErrorOf } from '../src/api/auth/error-codes.js';
import { netInfos } from '../src/api/rest/routes-gateway.js';
import { ProductionGateway } from '../src/replication/source/production-gateway.js';
import { DrGateway } from '../src/replication/target/dr-gateway.js';
import { ADMIN_PW, newSecret, RestClient, shiftedClock, tempDir, startApiGateway, startApiPair, until, type ApiGateway } from './lib/rest-client.js';
import { drained } from './lib/wait.js';

const VM = '6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b';
const MiB = 1024 * 1024;

const tmp = (t: Test): Promise<string> => tempDir(t, 'vrg-rest-');

async function gateway(t: Test, role: 'production' | 'dr', o: Partial<Parameters<typeof startApiGateway>[1]> = {}): Promise<ApiGateway & { client: RestClient }> {
  const g = await startApiGateway(role, { dir: o.dir ?? await tmp(t), secret: o.secret ?? newSecret(), ...o });
  t.teardown(() => g.close());
  return { ...g, client: new RestClient(g.api.url) };
}

function isErr(t: Test, r: { status: number; body: any }, code: string, status = 400, msg = code): void {
  t.equal(r.status, status, `${msg}: HTTP ${status}`);
  t.equal(r.body?.errorCode, code, `${msg}: errorCode`);
  t.type(r.body?.errorDes, 'string');
}

const prodBody = (vols: Array<Record<string, unknown>>, extra: Record<string, unknown> = {}) => ({
  vmUuid: VM, vmId: 'i-00000001', vmName: 'vm1', encryptOption: 1, compressOption: 1, volList: vols, ...extra,
});

t.test('versions, login, logout, the token on every other endpoint, errorDes languages', async (t) => {
  const { client, api } = await gateway(t, 'production');
  const v = await client.call('GET', '/versions');
  t.equal(v.status, 200);
  t.same(v.body, { versions: [{ version: 'v1.0', loginUri: '/vrgservice/session' }] });
  for (const [m, p] of [['GET', '/vrgstatus'], ['GET', '/trapinfo'], ['GET', '/netinfos'], ['GET', '/vrgmap'], ['DELETE', '/vrgmap'],
    ['GET', '/vmstrategy'], ['POST', '/password'], ['GET', `/vmdrstatus/${VM}/`], ['GET', '/openapi.json']] as const) {
    isErr(t, await client.call(m, p), '10440102', 400, `${m} ${p} without a token`);
  }
  isErr(t, await client.call('GET', '/vrgstatus', undefined, { 'x-auth-token': 'A'.repeat(43) }), '10440102');
  client.lang = 'zh_CN';
  const zh = await client.call('GET', '/vrgstatus');
  t.equal(zh.body.errorDes, '用户未登录或超时,请重新登录后重试。');
  client.lang = 'en_US';
  isErr(t, await client.login('admin', 'wrong'), '10440202');
  isErr(t, await client.login('nobody'), '10440201');
  isErr(t, await client.call('POST', '/session', undefined, { 'x-auth-user': 'admin', 'x-auth-key': 'short' }), '10440200');
  isErr(t, await client.call('POST', '/session', undefined, { 'x-auth-user': 'x'.repeat(21), 'x-auth-key': passwordKey('a') }), '10440101');
  isErr(t, await client.call('POST', '/session'), '10440101', 400, 'no headers');
  const r = await client.login();
  t.equal(r.status, 200);
  t.equal(r.body.validity, 600000);
  t.equal(r.body.uuid, api.service.store.state.gatewayUuid);
  t.match(client.token, /^[A-Za-z0-9_-]{43}$/);
  t.equal((await client.call('GET', '/vrgstatus')).status, 200);
  const doc = await client.call('GET', '/openapi.json');
  t.equal(doc.status, 200);
  t.ok(doc.body.paths['/vrgservice/vmstrategy'], 'OpenAPI document lists the routes');
  const out = await client.call('DELETE', '/session', '', { 'content-type': 'application/json; charset=UTF-8' });
  t.equal(out.status, 200, 'logout with the document\'s empty JSON body');
  isErr(t, await client.call('GET', '/vrgstatus'), '10440102', 400, 'token gone after logout');
  isErr(t, await client.call('DELETE', '/session'), '10440205', 400, 'second logout');
});

t.test('lockout with an injected clock, token expiry (sliding 600000 ms), password change', async (t) => {
  const clock = shiftedClock();
  const { client } = await gateway(t, 'production', { clock });
  isErr(t, await client.login('admin', 'x1'), '10440202');
  isErr(t, await client.login('admin', 'x2'), '10440202');
  isErr(t, await client.login('admin', 'x3'), '10440207', 400, 'third wrong password locks');
  isErr(t, await client.login(), '10440208', 400, 'locked: even the right password');
  clock.advance(5 * 60_000 - 1000);
  isErr(t, await client.login(), '10440208', 400, 'still locked just before 5 minutes');
  clock.advance(1000);
  t.equal((await client.login()).status, 200, 'unlocked after 5 minutes');
  clock.advance(599_000);
  t.equal((await client.call('GET', '/vrgstatus')).status, 200, 'used within the validity: slides');
  clock.advance(599_000);
  t.equal((await client.call('GET', '/vrgstatus')).status, 200, 'still valid 1198 s after login');
  clock.advance(600_000);
  isErr(t, await client.call('GET', '/vrgstatus'), '10440102', 400, 'expired after 600000 ms idle');
  await client.login();
  isErr(t, await client.call('POST', '/password', { oldKey: passwordKey('no'), newKey: passwordKey('New#pass1') }), '10440202');
  isErr(t, await client.call('POST', '/password', { oldKey: passwordKey(ADMIN_PW), newKey: 'zz' }), '10440200');
  isErr(t, await client.call('POST', '/password', { oldKey: passwordKey(ADMIN_PW) }), '10440101', 400, 'newKey missing');
  t.equal((await client.call('POST', '/password', { oldKey: passwordKey(ADMIN_PW), newKey: passwordKey('New#pass1') })).status, 200);
  isErr(t, await new RestClient(client.baseUrl).login(), '10440202', 400, 'old password refused');
  t.equal((await new RestClient(client.baseUrl).login('admin', 'New#pass1')).status, 200, 'new password accepted');
});

t.test('trapinfo, modmngnet, netinfos, vrgstatus, HTTP-level refusals', async (t) => {
  const { client, api } = await gateway(t, 'production', { journalCapacityBytes: 64 * MiB });
  await client.login();
  isErr(t, await client.call('GET', '/trapinfo'), '10440402');
  isErr(t, await client.call('POST', '/trapinfo', { ip: '10.0.0.256', port: 162 }), '10440301');
  isErr(t, await client.call('POST', '/trapinfo', { ip: 'host', port: 162 }), '10440301');
  isErr(t, await client.call('POST', '/trapinfo', { ip: '10.0.0.9', port: 0 }), '10440302');
  isErr(t, await client.call('POST', '/trapinfo', { ip: '10.0.0.9', port: 70000 }), '10440302');
  isErr(t, await client.call('POST', '/trapinfo', { ip: '10.0.0.9', port: '162' }), '10440101', 400, 'port as a string');
  isErr(t, await client.call('GET', '/trapinfo'), '10440402', 400, 'refused requests stored nothing');
  t.equal((await client.call('POST', '/trapinfo', { ip: '10.0.0.9', port: 162 })).status, 200);
  t.same((await client.call('GET', '/trapinfo')).body, { ip: '10.0.0.9', port: 162 });
  t.equal((await client.call('POST', '/trapinfo', { ip: '0.0.0.0', port: 162 })).status, 200);
  isErr(t, await client.call('GET', '/trapinfo'), '10440402', 400, '0.0.0.0 deleted the trap server');

  const st = await client.call('GET', '/vrgstatus');
  t.same(st.body, { status: 1, availableCapacity: 65536, totalCapacity: 65536 }, 'KB of the real journal');

  isErr(t, await client.call('POST', '/modmngnet/', { newIp: '10.1.1.5', newMask: '255.255.0.255', newGateway: '10.1.1.1' }), '10440101');
  isErr(t, await client.call('POST', '/modmngnet/', { newIp: '10.1.1.5', newMask: '255.255.255.0', newGateway: '10.2.1.1' }), '10440101');
  isErr(t, await client.call('POST', '/modmngnet/', { newIp: '10.1.1', newMask: '255.255.255.0', newGateway: '10.1.1.1' }), '10440301');
  const mod = await client.call('POST', '/modmngnet/', { newIp: '10.1.1.5', newMask: '255.255.255.0', newGateway: '10.1.1.1' });
  t.same(mod.body, { IP: '10.1.1.5', netmask: '255.255.255.0', netGateway: '10.1.1.1' });

  const ni = await client.call('GET', '/netinfos');
  t.same(ni.body.netinfos, [{ type: 0, ip: '127.0.0.1', port: api.httpPort, gateway: '10.1.1.1', netmask: '255.0.0.0' }],
    'the REST listener; no intake, no peer yet');
  t.throws(() => netInfos({ management: null, intake: null, peer: null }, ''), { details: { errorCode: '10440305' } });
  t.equal(apiErrorOf(Object.assign(new Error('x'))).errorCode, '10440000', 'anything unexpected is 10440000');

  isErr(t, await client.call('GET', '/nothing'), '404', 404);
  isErr(t, await client.call('PUT', '/vrgstatus'), '405', 405);
  isErr(t, await client.call('DELETE', '/trapinfo'), '405', 405);
  isErr(t, await client.call('POST', '/trapinfo', '{"ip": "10.0.0.9",'), '10440101', 400, 'malformed JSON');
  isErr(t, await client.call('POST', '/trapinfo', [1, 2]), '10440101', 400, 'not an object');
  isErr(t, await client.call('POST', '/vrgmap', { dstIp: '10.0.0.2', dstPort: 7001, pad: 'x'.repeat(70_000) }), '413', 413, 'oversized body');
  t.same((await client.call('GET', '/vrgmap')).body, { dstIp: '', dstPort: 0, status: 4 }, 'the oversized request changed nothing');
});

t.test('vrgmap: pairing states, pairing failure, link down, DELETE stops the link', async (t) => {
  const secret = newSecret();
  const dr = await gateway(t, 'dr', { secret });
  const prod = await gateway(t, 'production', { secret });
  const wrongDr = await gateway(t, 'dr');
  const c = prod.client;
  await c.login();
  t.same((await c.call('GET', '/vrgmap')).body, { dstIp: '', dstPort: 0, status: 4 });
  isErr(t, await c.call('POST', '/vrgmap', { dstIp: '10.0.0', dstPort: 7001 }), '10440301');
  isErr(t, await c.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: 0 }), '10440302');
  isErr(t, await c.call('POST', '/vrgmap', { dstIp: '127.0.0.1' }), '10440302', 400, 'port missing');
  t.equal((prod.gw as ProductionGateway).peerStatus(), null, 'refused requests did not pair');

  t.equal((await c.call('POST', '/vrgmap', { dst_ip: '127.0.0.1', dst_port: (wrongDr.gw as DrGateway).linkPort })).status, 200);
  await until(async () => (await c.call('GET', '/vrgmap')).body.status === 3, 15_000, 'pairing failed (wrong secret)');

  const port = (dr.gw as DrGateway).linkPort;
  t.equal((await c.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: port })).status, 200);
  await until(async () => (await c.call('GET', '/vrgmap')).body.status === 1, 15_000, 'paired');
  t.same((await c.call('GET', '/vrgmap')).body, { dstIp: '127.0.0.1', dstPort: port, status: 1 });
  const ni = (await c.call('GET', '/netinfos')).body.netinfos;
  t.same(ni[1], { type: 2, ip: '127.0.0.1', port, gateway: '', netmask: '255.0.0.0' }, 'the peer link');
  const dc = dr.client;
  await dc.login();
  await dc.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: 9 });
  t.equal((await dc.call('GET', '/vrgmap')).body.status, 1, 'DR side sees the link up');
  t.same((await dc.call('GET', '/vrgstatus')).body, { status: 1, availableCapacity: -1, totalCapacity: -1 }, 'DR: no cache');

  t.equal((await c.call('DELETE', '/vrgmap')).status, 200);
  t.same((await c.call('GET', '/vrgmap')).body, { dstIp: '', dstPort: 0, status: 4 });
  t.equal((prod.gw as ProductionGateway).peerStatus(), null);
  await until(() => !(dr.gw as DrGateway).status().connected, 10_000, 'DR sees the link stop');
  t.equal((await dc.call('GET', '/vrgmap')).body.status, 5, 'DR side: link down');
  await new Promise((r) => setTimeout(r, 1500));
  t.notOk((dr.gw as DrGateway).status().connected, 'no reconnection after DELETE');

  const closed = await gateway(t, 'dr', { secret });
  const deadPort = (closed.gw as DrGateway).linkPort;
  await closed.close();
  await c.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: deadPort });
  await new Promise((r) => setTimeout(r, 300));
  t.equal((await c.call('GET', '/vrgmap')).body.status, 2, 'never connected yet: pairing');
});

t.test('vmstrategy: validation numbers, paging, filters, delete, vmdrstatus', async (t) => {
  const { client: c, gw } = await gateway(t, 'production');
  await c.login();
  isErr(t, await c.call('GET', '/vmstrategy'), '10440308');
  isErr(t, await c.call('GET', `/vmdrstatus/${VM}/`), '10440400');
  isErr(t, await c.call('GET', '/vmdrstatus/not-a-uuid/'), '10440401');
  const vol = (i: number, seq = i + 1) => ({ volUuid: `vol-${i}`, seqNum: seq, sizeBytes: MiB });
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([vol(0), vol(0)])), '10440306');
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([vol(0, 3), vol(1, 3)])), '10440309');
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([vol(0, 41)])), '10440101', 400, 'seqNum above 40');
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([vol(0)], { vmUuid: 'vm-1' })), '10440401');
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([vol(0)], { compressOption: '1' })), '10440101', 400, 'wrong type');
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([vol(0)], { mode: 'fast' })), '10440101');
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([])), '10440101');
  t.same(gw.vmConfigs(), [], 'refused requests protected nothing');
  isErr(t, await c.call('GET', '/vmstrategy'), '10440308');

  const uuids = [VM, ...[1, 2, 3].map((i) => `6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0${i}`)];
  for (const [i, id] of uuids.entries()) {
    const r = await c.call('POST', '/vmstrategy', prodBody([{ vol_uuid: `v${i}`, seq_num: 1, size: MiB }], { vm_uuid: id, vmUuid: undefined, mode: i === 1 ? 'sync' : undefined }));
    t.equal(r.status, 200, `VM ${i} protected`);
  }
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([{ volUuid: 'v0', seqNum: 1 }], { vmUuid: '6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a09' })), '10440306', 400, 'volUuid of another VM');
  isErr(t, await c.call('POST', '/vmstrategy', prodBody([{ volUuid: 'zz', seqNum: 1 }])), '10440101', 400, 'VM already configured');
  t.equal(gw.vmConfigs().length, 4, 'the engine protects the four VMs');
  const all = (await c.call('GET', '/vmstrategy')).body.vmList;
  t.same(all.map((v: any) => v.vmUuid), uuids);
  t.match(all[1], { flag: 1, compressOption: 1, encryptOption: 1, mode: 'sync', volList: [{ volUuid: 'v1', seqNum: 1, sizeBytes: MiB }] });
  const page = (q: string) => c.call('GET', `/vmstrategy?${q}`).then((r) => r.body.vmList?.map((v: any) => v.vmUuid));
  t.same(await page('limit=2&offset=1'), uuids.slice(1, 3));
  t.same(await page('limit=2&offset=3'), uuids.slice(3));
  t.same(await page('limit=101&offset=2'), uuids, 'limit > 100: served as limit=100, offset=0');
  t.same(await page('limit=100&offset=2'), uuids.slice(2));
  isErr(t, await c.call('GET', '/vmstrategy?limit=2'), '10440101', 400, 'limit without offset');
  isErr(t, await c.call('GET', '/vmstrategy?limit=x&offset=0'), '10440101');
  isErr(t, await c.call('GET', `/vmstrategy?vmUuid=${VM}&limit=1&offset=0`), '10440101');
  t.same(await page(`vmUuid=${uuids[2]}&vmUuid=${VM}`), [uuids[2], VM]);
  isErr(t, await c.call('GET', '/vmstrategy?vmUuid=6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a99'), '10440400');
  isErr(t, await c.call('GET', '/vmstrategy?vmUuid=abc'), '10440401');
  t.same(await page('faultVms=1'), [], 'no faulty VM');
  t.same(await page('faultVms=0'), uuids);
  isErr(t, await c.call('GET', '/vmstrategy?faultVms=2'), '10440101');

  const ds = await c.call('GET', `/vmdrstatus/${VM}/`);
  t.equal(ds.status, 200);
  t.ok([1, 2, 3].includes(ds.body.status), 'a document status');
  isErr(t, await c.call('POST', '/vmstrategy/abc/', { delFlag: 1 }), '10440401');
  isErr(t, await c.call('POST', '/vmstrategy/6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a99/', { delFlag: 1 }), '10440400');
  isErr(t, await c.call('POST', `/vmstrategy/${VM}/`, { delFlag: 3 }), '10440101');
  const del = await c.call('POST', `/vmstrategy/${VM}/`, { delFlag: 1 });
  t.equal(del.status, 200);
  t.ok([1, 2, 3].includes(del.body.drStatus));
  t.equal(gw.vmStatus(VM), null, 'the engine stopped protecting it');
  isErr(t, await c.call('GET', `/vmstrategy?vmUuid=${VM}`), '10440400');
  t.equal((await c.call('POST', `/vmstrategy/${uuids[1]}/`, { delFlag: 2 })).status, 200, 'forced delete');
  t.same(await page('limit=10&offset=0'), uuids.slice(2));
});

/** The DR side's POST /vmstrategy body for VM with two 4 MiB volumes at `target(i)`. */
function drStrategy(target: (i: number) => string) {
  return {
    vmUuid: VM, vmId: 'i-1', vmName: 'vm1', hostUrn: 'urn:sites:1:hosts:1', agentIp: '127.0.0.1', agentPort: 10809,
    volList: [0, 1].map((i) => ({ volUuid: `vol-${i}`, volumeUrl: target(i), dsUrn: 'urn:ds:1', volType: 'LOCALPOME', seqNum: i + 1,
      drExtParams: { dsMgntIp: '1.1.1.1', dsResourceId: '1' }, sizeBytes: 4 * MiB })),
  };
}

t.test('pairing and protection purely over HTTP replicate writes; the configuration survives a restart', async (t) => {
  const dir = await tmp(t);
  const secret = newSecret();
  const pair = await startApiPair(t, { dir, secret });
  const [pc, dc] = [new RestClient(pair.prod.api.url), new RestClient(pair.dr.api.url, 'zh_CN')];
  await pc.login();
  await dc.login();
  const target = (i: number) => join(dir, `target-${i}.img`);
  const drReq = drStrategy(target);
  isErr(t, await dc.call('POST', '/vmstrategy', { ...drReq, volList: [drReq.volList[0], { ...drReq.volList[1], seqNum: 1 }] }), '10440309');
  t.equal((await dc.call('POST', '/vmstrategy', drReq)).status, 200);
  const drList = (await dc.call('GET', '/vmstrategy')).body.vmList;
  t.match(drList, [{ flag: 2, vmUuid: VM, hostUrn: 'urn:sites:1:hosts:1', agentIp: '127.0.0.1', agentPort: 10809,
    volList: [{ volUuid: 'vol-0', dstVolDsUrn: 'urn:ds:1', dstVolType: 'LOCALPOME', volStatus: 1, seqNum: 1, volumeUrl: target(0) }, { volUuid: 'vol-1' }] }]);
  t.equal((await pc.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: (pair.dr.gw as DrGateway).linkPort })).status, 200);
  const vols = [0, 1].map((i) => ({ volUuid: `vol-${i}`, seqNum: i + 1, sizeBytes: 4 * MiB }));
  t.equal((await pc.call('POST', '/vmstrategy', prodBody(vols))).status, 200);
  await until(async () => (await pc.call('GET', '/vrgmap')).body.status === 1, 15_000, 'paired');
  const p = pair.prod.gw as ProductionGateway;
  const data = Buffer.alloc(64 * 1024, 0x5a);
  await p.write('vol-0', 4096, data);
  await p.write('vol-1', 2 * MiB, data.subarray(0, 8192));
  const d = pair.dr.gw as DrGateway;
  await drained(p, d);
  t.ok((await d.readReplica('vol-0', 4096, data.length)).equals(data), 'vol-0 replicated');
  t.ok((await d.readReplica('vol-1', 2 * MiB, 8192)).equals(data.subarray(0, 8192)), 'vol-1 replicated');
  const st = (await pc.call('GET', '/vrgstatus')).body;
  t.equal(st.totalCapacity, 65536);
  t.ok(st.availableCapacity <= st.totalCapacity);
  t.equal((await dc.call('GET', `/vmdrstatus/${VM}`)).body.status, 1, 'DR: the VM is in queue state');
  await pc.call('POST', '/trapinfo', { ip: '127.0.0.1', port: 16200 });
  await pc.call('POST', '/password', { oldKey: passwordKey(ADMIN_PW), newKey: passwordKey('Changed#1') });

  await pair.prod.close();
  await pair.restart('dr', { linkPort: d.linkPort });
  await pair.restart('prod');
  const { prod, dr } = pair;
  const [pc2, dc2] = [new RestClient(prod.api.url), new RestClient(dr.api.url)];
  t.equal((await pc2.login('admin', 'Changed#1')).status, 200, 'the changed password survived');
  await dc2.login();
  t.same((await pc2.call('GET', '/trapinfo')).body, { ip: '127.0.0.1', port: 16200 });
  t.same((await dc2.call('GET', '/vmstrategy')).body.vmList, drList, 'DR strategy survived');
  t.equal((await pc2.call('GET', '/vmstrategy')).body.vmList[0].vmUuid, VM);
  t.not(prod.gw.vmStatus(VM), null, 'the stored VM is protected again');
  await until(async () => (await pc2.call('GET', '/vrgmap')).body.status === 1, 15_000, 'paired again from the store');
  await (prod.gw as ProductionGateway).write('vol-0', 0, data.subarray(0, 4096));
  await drained(prod.gw as ProductionGateway, dr.gw as DrGateway);
  t.ok((await (dr.gw as DrGateway).readReplica('vol-0', 0, 4096)).equals(data.subarray(0, 4096)), 'replicating after the restart');
});

t.test('HTTPS on its own port with a certificate generated once and kept', async (t) => {
  const dir = await tmp(t);
  const g = await startApiGateway('dr', { dir, secret: newSecret(), httpsPort: 0 });
  t.teardown(() => g.close());
  t.ok(g.api.httpsPort);
  const ca = await readFile(join(dir, 'dr', 'api', 'https-cert.pem'), 'utf8');
  const body = await new Promise<string>((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port: g.api.httpsPort!, path: '/vrgservice/versions', ca, servername: 'localhost' }, (res) => {
      let s = '';
      res.on('data', (c: Buffer) => (s += c.toString()));
      res.on('end', () => resolve(s));
    });
    req.on('error', reject);
    req.end();
  });
  t.same(JSON.parse(body).versions[0].version, 'v1.0', 'verified against the kept certificate');
  await g.close();
  const again = await startApiGateway('dr', { dir, secret: newSecret(), httpsPort: 0 });
  t.teardown(() => again.close());
  t.equal(await readFile(join(dir, 'dr', 'api', 'https-cert.pem'), 'utf8'), ca, 'the same certificate after a restart');
});

t.test('write-back gateway: a VM the API store re-adds after a host crash (new boot id) is checked', async (t) => {
  const dir = await tmp(t);
  const secret = newSecret();
  const bootIdPath = join(dir, 'boot_id');
  await writeFile(bootIdPath, 'boot-1\n');
  const intake = { writeBack: true, bootIdPath };
  const pair = await startApiPair(t, { dir, secret, intake });
  const [pc, dc] = [new RestClient(pair.prod.api.url), new RestClient(pair.dr.api.url)];
  await pc.login();
  await dc.login();
  t.equal((await dc.call('POST', '/vmstrategy', drStrategy((i) => join(dir, `target-${i}.img`)))).status, 200);
  t.equal((await pc.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: (pair.dr.gw as DrGateway).linkPort })).status, 200);
  t.equal((await pc.call('POST', '/vmstrategy', prodBody([0, 1].map((i) => ({ volUuid: `vol-${i}`, seqNum: i + 1, sizeBytes: 4 * MiB }))))).status, 200);
  await until(async () => (await pc.call('GET', '/vrgmap')).body.status === 1, 15_000, 'paired');
  await (pair.prod.gw as ProductionGateway).write('vol-0', 0, Buffer.alloc(65536, 7));
  await drained(pair.prod.gw as ProductionGateway, pair.dr.gw as DrGateway);
  await pair.prod.close();
  // What a stop on a host that lost power leaves: the run marker still unclean, and a new boot id.
  const marker = join(dir, 'production', 'run-state.json');
  await writeFile(marker, JSON.stringify({ ...JSON.parse(await readFile(marker, 'utf8')), clean: false }));
  await writeFile(bootIdPath, 'boot-2\n');
  await pair.restart('prod');
  const st = await until(() => {
    const s = (pair.prod.gw as ProductionGateway).vmStatus(VM);
    return s && s.transitions['check->queue'] >= 1 ? s : null;
  }, 30_000, 'the check after the host crash');
  t.equal(st.transitions['queue->check'], 1, 'the re-added VM went to a consistency check');
  t.equal(st.check?.regionsDiffering, 0, 'and found DR equal to the source');
});

/** Both API gateways, paired over HTTP, the VM protected, one write replicated. */
async function protectedApiPair(t: Test) {
  const dir = await tmp(t);
  const pair = await startApiPair(t, { dir, secret: newSecret() });
  const [pc, dc] = [new RestClient(pair.prod.api.url), new RestClient(pair.dr.api.url)];
  await pc.login();
  await dc.login();
  t.equal((await dc.call('POST', '/vmstrategy', drStrategy((i) => join(dir, `target-${i}.img`)))).status, 200);
  t.equal((await pc.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: (pair.dr.gw as DrGateway).linkPort })).status, 200);
  const vols = [0, 1].map((i) => ({ volUuid: `vol-${i}`, seqNum: i + 1, sizeBytes: 4 * MiB }));
  t.equal((await pc.call('POST', '/vmstrategy', prodBody(vols))).status, 200);
  const p = pair.prod.gw as ProductionGateway;
  await until(async () => (await pc.call('GET', '/vrgmap')).body.status === 1, 15_000, 'paired');
  await p.write('vol-0', 0, Buffer.alloc(8192, 0x33));
  await drained(p, pair.dr.gw as DrGateway);
  return { dir, pair, pc, dc, p };
}

t.test('POST /vmfailover promotes a VM on the DR gateway; vmdrstatus reports role and generation', async (t) => {
  const { dir, pair, pc, dc, p } = await protectedApiPair(t);
  t.same((await dc.call('GET', `/vmdrstatus/${VM}`)).body, { status: 1, role: 'target', generation: 1, splitBrain: false });
  t.same((await pc.call('GET', `/vmdrstatus/${VM}`)).body, { status: 1, role: 'source', generation: 1, splitBrain: false });

  // Bad input: a clear number each, nothing changed.
  isErr(t, await pc.call('POST', '/vmfailover', { vmUuid: VM, type: 'unplanned' }), '10440410', 400, 'a failover on the source gateway');
  isErr(t, await dc.call('POST', '/vmfailover', { vmUuid: 'nope', type: 'unplanned' }), '10440401');
  isErr(t, await dc.call('POST', '/vmfailover', { vmUuid: VM, type: 'sideways' }), '10440101');
  isErr(t, await dc.call('POST', '/vmfailover', { vmUuid: '00000000-0000-4000-8000-000000000000', type: 'unplanned' }), '10440400');
  t.same((await dc.call('GET', `/vmdrstatus/${VM}`)).body, { status: 1, role: 'target', generation: 1, splitBrain: false }, 'still the target');

  const r = await dc.call('POST', '/vmfailover', { vmUuid: VM, type: 'unplanned' });
  t.equal(r.status, 200);
  t.match(r.body, { vmUuid: VM, kind: 'unplanned', generation: 2, exports: ['vol-0', 'vol-1'] });
  t.same((await dc.call('GET', `/vmdrstatus/${VM}`)).body, { status: 2, role: 'source', generation: 2, splitBrain: false }, 'a source in CBT');
  isErr(t, await dc.call('POST', '/vmfailover', { vmUuid: VM, type: 'unplanned' }), '10440410', 400, 'a second promotion');
  const promoted = pair.dr.site!.promotedGateway!;
  t.ok((await readFile(join(dir, 'target-0.img'))).subarray(0, 8192).equals(Buffer.alloc(8192, 0x33)), 'the promoted disk holds the replicated write');
  await promoted.write('vol-0', 65536, Buffer.alloc(4096, 0x44));

  // The stored VM is re-added at start: it comes back as the promoted source, not as a target.
  await pair.restart('dr', { linkPort: (pair.dr.gw as DrGateway).linkPort });
  const dc2 = new RestClient(pair.dr.api.url);
  await dc2.login();
  t.same((await dc2.call('GET', `/vmdrstatus/${VM}`)).body, { status: 2, role: 'source', generation: 2, splitBrain: false }, 'the promotion survived the restart');
  t.same((pair.dr.gw as DrGateway).replicaVolumes(), [], 'no replica of it is opened');
  // The old source sees the newer generation and becomes the target (failback); then the VM moves home.
  await until(async () => (await pc.call('GET', `/vmdrstatus/${VM}`)).body.role === 'target', 15_000, 'the old source to become the target');
  await until(async () => (await dc2.call('GET', `/vmdrstatus/${VM}`)).body.status === 1, 30_000, 'the failback resync and check',
    () => ({ promoted: pair.dr.site!.promotedGateway?.diagnostics(), promotedStatus: pair.dr.site!.promotedGateway?.status(), prod: pair.prod.site?.status?.() }));
  isErr(t, await pc.call('POST', '/vmfailover', { vmUuid: VM, type: 'unplanned' }), '10440101', 400, 'home only with a planned failover');
  isErr(t, await pc.call('POST', '/vmsplitbrain', { vmUuid: VM, survivor: 'this' }), '10440101');
  isErr(t, await dc2.call('POST', '/vmsplitbrain', { vmUuid: VM, survivor: 'peer' }), '10440410', 400, 'no split brain to resolve');
  const home = await pc.call('POST', '/vmfailover', { vmUuid: VM, type: 'planned' });
  t.equal(home.status, 200, JSON.stringify(home.body));
  t.match(home.body, { vmUuid: VM, kind: 'planned', generation: 3 });
  t.same((await pc.call('GET', `/vmdrstatus/${VM}`)).body, { status: 1, role: 'source', generation: 3, splitBrain: false }, 'home again');
  await until(async () => (await dc2.call('GET', `/vmdrstatus/${VM}`)).body.role === 'target', 15_000, 'DR to be the target again');
  const home2 = pair.prod.gw as ProductionGateway;
  await until(async () => home2.status().vms[0]?.replication.state === 'queue' && home2.status().vms[0]?.fault === null, 15_000, 'home to ship');
  await home2.write('vol-0', 131072, Buffer.alloc(4096, 0x66));
  await drained(home2, pair.dr.gw as DrGateway);
  t.ok((await (pair.dr.gw as DrGateway).readReplica('vol-0', 65536, 4096)).equals(Buffer.alloc(4096, 0x44)), 'DR kept the write it took while promoted');
  t.ok((await (pair.dr.gw as DrGateway).readReplica('vol-0', 131072, 4096)).equals(Buffer.alloc(4096, 0x66)), 'and replicates from home again');
});

t.test('POST /vmfailover type "test" exports a clone while the VM stays a target; DELETE /vmfailover/<vm> ends it', async (t) => {
  const { dir, pair, pc, dc, p } = await protectedApiPair(t);
  const site = pair.dr.site!;
  const exportNames = () => site.exports().map((e) => e.name).sort();

  isErr(t, await dc.call('DELETE', `/vmfailover/${VM}`), '10440414', 400, 'an end with no test failover running');
  isErr(t, await dc.call('DELETE', '/vmfailover/nope'), '10440401');
  isErr(t, await dc.call('DELETE', '/vmfailover/00000000-0000-4000-8000-000000000000'), '10440400');
  isErr(t, await pc.call('POST', '/vmfailover', { vmUuid: VM, type: 'test' }), '10440410', 400, 'a test failover on the source gateway');
  t.same(exportNames(), ['vol-0', 'vol-1'], 'nothing changed');

  const r = await dc.call('POST', '/vmfailover', { vmUuid: VM, type: 'test' });
  t.equal(r.status, 200);
  t.same(r.body, { vmUuid: VM, kind: 'test', exports: ['vol-0-test', 'vol-1-test'] });
  t.same(exportNames(), ['vol-0', 'vol-0-test', 'vol-1', 'vol-1-test'], 'the clones are exported beside the replicas');
  const clone = site.exports().find((e) => e.name === 'vol-0-test')!;
  t.equal(clone.readOnly, false);
  await clone.write(4096, Buffer.alloc(4096, 0x55), true);
  t.ok((await clone.read(0, 8192)).equals(Buffer.concat([Buffer.alloc(4096, 0x33), Buffer.alloc(4096, 0x55)])), 'the clone: the replica plus its write');
  isErr(t, await dc.call('POST', '/vmfailover', { vmUuid: VM, type: 'test' }), '10440413', 400, 'a second test failover');
  isErr(t, await dc.call('POST', '/vmfailover', { vmUuid: VM, type: 'unplanned' }), '10440413', 400, 'no promotion while the test runs');
  t.same((await dc.call('GET', `/vmdrstatus/${VM}`)).body, { status: 1, role: 'target', generation: 1, splitBrain: false }, 'still the target');
  await p.write('vol-0', 4096, Buffer.alloc(4096, 0x66));
  await drained(p, pair.dr.gw as DrGateway);
  t.ok((await readFile(join(dir, 'target-0.img'))).subarray(4096, 8192).equals(Buffer.alloc(4096, 0x66)), 'replication goes on');
  t.ok((await clone.read(4096, 4096)).equals(Buffer.alloc(4096, 0x55)), 'the clone keeps its own write');

  t.equal((await dc.call('DELETE', `/vmfailover/${VM}`)).status, 200);
  t.same(exportNames(), ['vol-0', 'vol-1'], 'the clone exports are gone');
  isErr(t, await dc.call('DELETE', `/vmfailover/${VM}`), '10440414', 400, 'a second end');
  dc.lang = 'zh_CN';
  t.equal((await dc.call('DELETE', `/vmfailover/${VM}`)).body.errorDes, '虚拟机没有正在运行的测试故障切换。');
  dc.lang = 'en_US';
  const u = await dc.call('POST', '/vmfailover', { vmUuid: VM, type: 'unplanned' });
  t.match(u.body, { vmUuid: VM, kind: 'unplanned', generation: 2 }, 'an unplanned failover once the test ended');
});
