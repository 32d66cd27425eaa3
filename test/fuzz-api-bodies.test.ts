import fc from 'fast-check';
import t from 'tap';
import { passwordKey } from '../src/api/auth/account-store.js';
import { decodeClusterPairingKey, decodeVolumePairingKey, encodeClusterPairingKey, encodeVolumePairingKey } from '../src/api/jsonrpc/pairing-keys.js';
import { RpcErrorName } from '../src/api/jsonrpc/rpc-errors.js';
import { isIpv4 } from '../src/api/rest/rest-errors.js';
import { fuzzParams, mutated } from './lib/fuzz.js';
import { JsonRpcClient } from './lib/jsonrpc-client.js';
import { newSecret, RestClient, startApiGateway, tempDir } from './lib/rest-client.js';

// Property-based tests of the management APIs' request bodies, against a real in-process production gateway
// on 127.0.0.1: valid bodies edited field by field, their JSON text mutated byte by byte, and random JSON.
// REST answers 200 or a 4xx with the API's error body (never 10440000, the internal error); JSON-RPC answers
// {id, result} or {id, error: {code 500, name, message}} with a documented name (never xInternalError); and a
// refused body changes nothing: the store and the engine's VMs are as before.
// Bodies that would make the gateway dial or send traps anywhere but loopback are not sent.

const VM = '6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b';
const UUID = '1cea1362-5a3e-4c5d-9f7a-0123456789ab';
const MVIP = 'http://127.0.0.1:9';

const jsonValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }), fc.constantFrom('', VM, '127.0.0.1', 'unplanned', 'peer', 'sync', '1'),
  fc.integer(), fc.constantFrom(0, -1, 1, 40, 41, 65_536, 2 ** 53, 1.5, 1e300), fc.boolean(), fc.constant(null),
  fc.array(fc.oneof(fc.nat(), fc.string({ maxLength: 4 }), fc.object({ maxDepth: 1 })), { maxLength: 3 }), fc.object({ maxDepth: 2 }),
);

/** The template with some fields (top level, or inside its first array's first object) changed, dropped or added. */
function edited(template: Record<string, unknown>): fc.Arbitrary<Record<string, unknown>> {
  const names = [...Object.keys(template), 'extra', 'vm_uuid', '__proto__'];
  const edit = fc.tuple(fc.constantFrom(...names), fc.oneof(jsonValue, fc.constant(undefined)), fc.boolean());
  return fc.array(edit, { minLength: 1, maxLength: 3 }).map((edits) => {
    const out: Record<string, unknown> = structuredClone(template);
    for (const [k, v, nested] of edits) {
      const list = Object.values(out).find((x) => Array.isArray(x) && typeof x[0] === 'object') as Array<Record<string, unknown>> | undefined;
      const target = nested && list ? list[0]! : out;
      if (v === undefined) delete target[k];
      else Object.defineProperty(target, k, { value: v, enumerable: true, writable: true, configurable: true });
    }
    return out;
  });
}

/** Body text: an edited template, the template's JSON mutated byte by byte, or random JSON / text. */
function bodies(template: Record<string, unknown>): fc.Arbitrary<string> {
  const text = JSON.stringify(template);
  return fc.oneof(
    { weight: 3, arbitrary: edited(template).map((o) => JSON.stringify(o)) },
    { weight: 2, arbitrary: mutated(fc.constant(Buffer.from(text))).map((b) => b.toString('latin1')) },
    { weight: 1, arbitrary: fc.oneof(fc.json({ maxDepth: 2 }), fc.string({ unit: 'binary', maxLength: 60 }), fc.constantFrom('', ' ', '[]', 'null', '{', '{"a":1}{}')) },
  );
}

function strings(v: unknown, out: string[] = []): string[] {
  if (typeof v === 'string') out.push(v);
  else if (v !== null && typeof v === 'object') for (const x of Object.values(v)) strings(x, out);
  return out;
}

/** False when the body, as the server would read it, names an address off this machine. */
function staysLocal(text: string): boolean {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return true; // refused as malformed before anything is dialled
  }
  for (const s of strings(parsed)) {
    if (isIpv4(s.trim()) && !s.trim().startsWith('127.') && s.trim() !== '0.0.0.0') return false;
    for (const decode of [decodeClusterPairingKey, decodeVolumePairingKey]) {
      try {
        if (!/^(https?:\/\/)?127\.0\.0\.1(:\d+)?\/?$/i.test(decode(s).mvip)) return false;
      } catch { /* not a key */ }
    }
  }
  return true;
}

t.test('REST bodies: 200 or a 4xx with the API error body; a refused body changes nothing', async (t) => {
  const g = await startApiGateway('production', { dir: await tempDir(t, 'vrg-fuzz-rest-'), secret: newSecret() });
  t.teardown(() => g.close());
  const client = new RestClient(g.api.url);
  t.equal((await client.login()).status, 200);
  const snapshot = (): string => JSON.stringify({ store: g.api.service.store.state, vms: g.gw.vmConfigs() });
  const vol = { volUuid: 'vol-0', seqNum: 1, sizeBytes: 1024 * 1024 };
  const targets: Array<[string, Record<string, unknown>]> = [
    ['/trapinfo', { ip: '127.0.0.1', port: 162 }],
    ['/modmngnet', { newIp: '10.1.1.5', newMask: '255.255.255.0', newGateway: '10.1.1.1' }],
    ['/vrgmap', { dstIp: '127.0.0.1', dstPort: 9 }],
    ['/vmstrategy', { vmUuid: VM, vmId: 'i-1', vmName: 'vm1', encryptOption: 1, compressOption: 1, volList: [vol] }],
    [`/vmstrategy/${VM}`, { delFlag: 1 }],
    ['/vmfailover', { vmUuid: VM, type: 'unplanned' }],
    ['/vmsplitbrain', { vmUuid: VM, survivor: 'peer' }],
    ['/password', { oldKey: passwordKey('not-the-password'), newKey: passwordKey('New#pass1') }],
  ];
  const request = fc.constantFrom(...targets).chain(([path, tpl]) => fc.tuple(fc.constant(path), bodies(tpl),
    fc.constantFrom('application/json; charset=UTF-8', 'application/json', 'text/plain', 'application/x-www-form-urlencoded')));
  let before = snapshot();
  const seen: Record<number, number> = {};
  await fc.assert(fc.asyncProperty(request, async ([path, body, type]) => {
    if (!staysLocal(body)) return true;
    const r = await client.call('POST', path, body, { 'content-type': type });
    seen[r.status] = (seen[r.status] ?? 0) + 1;
    if (r.status === 200) {
      before = snapshot();
      return true;
    }
    const errorBody = r.status >= 400 && r.status < 500 && typeof r.body?.errorCode === 'string' &&
      typeof r.body?.errorDes === 'string' && r.body.errorCode !== '10440000';
    if (!errorBody) throw new Error(`POST ${path} ${JSON.stringify(body)} answered ${r.status} ${r.text}`);
    return snapshot() === before;
  }), fuzzParams(800));
  t.ok(Object.keys(seen).some((s) => s !== '200'), `statuses seen: ${JSON.stringify(seen)}`);
  t.equal((await client.call('GET', '/vrgstatus')).status, 200, 'the API still answers');
});

t.test('JSON-RPC bodies: a result or a documented error object; a refused call changes nothing', async (t) => {
  const g = await startApiGateway('production', { dir: await tempDir(t, 'vrg-fuzz-rpc-'), secret: newSecret() });
  t.teardown(() => g.close());
  const rpc = new JsonRpcClient(g.api.jsonRpcUrl);
  t.ok((await rpc.ok('CreateVolume', { name: 'base', accountID: 1, totalSize: 1024 * 1024 })).volumeID > 0);
  const snapshot = (): string => JSON.stringify({ store: g.api.service.store.state, vms: g.gw.vmConfigs() });
  const clusterKey = encodeClusterPairingKey({ clusterPairID: 1, clusterPairUUID: UUID, clusterUniqueID: 'x', mvip: MVIP,
    name: 'peer', password: 'pw', rpcConnectionID: 1, username: '__VRG_pair_AAAAAAAAAAAAAAAA' });
  const volumeKey = encodeVolumePairingKey({ mvip: MVIP, volumeID: 1, volumeName: 'v', volumePairUUID: UUID });
  const calls: Array<[string, Record<string, unknown>]> = [
    ['CreateVolume', { name: 'v', accountID: 1, totalSize: 1024 * 1024 }],
    ['CompleteClusterPairing', { clusterPairingKey: clusterKey }],
    ['StartVolumePairing', { volumeID: 1, mode: 'Async' }],
    ['CompleteVolumePairing', { volumeID: 1, volumePairingKey: volumeKey }],
    ['ModifyVolumePair', { volumeID: 1, paused: true }],
    ['ModifyVolume', { volumeID: 1, access: 'readWrite' }],
    ['RemoveVolumePair', { volumeID: 1 }],
    ['RemoveClusterPair', { clusterPairID: 1 }],
    ['ListClusterPairs', {}],
    ['VrgPairCluster', { clusterPairUUID: UUID }],
    ['NoSuchMethod', {}],
  ];
  const request = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...calls).chain(([method, params]) => edited(params).map((p) => JSON.stringify({ method, params: p, id: 7 }))) },
    { weight: 3, arbitrary: fc.constantFrom(...calls).chain(([method, params]) => bodies({ method, params, id: 7 })) },
  );
  const names = new Set<string>(Object.values(RpcErrorName));
  let before = snapshot();
  const seen: Record<string, number> = {};
  await fc.assert(fc.asyncProperty(request, async (body) => {
    if (!staysLocal(body)) return true;
    const r = await rpc.post(body);
    const e = r.body?.error;
    const key = e?.name ?? `HTTP ${r.status}`;
    seen[key] = (seen[key] ?? 0) + 1;
    if (r.status === 200 && e === undefined && r.body !== null && 'result' in r.body) {
      before = snapshot();
      return true;
    }
    const documented = [200, 400, 401, 404, 413].includes(r.status) && e?.code === 500 && typeof e?.message === 'string' &&
      names.has(e?.name) && e.name !== RpcErrorName.INTERNAL;
    if (!documented) throw new Error(`${body} answered ${r.status} ${JSON.stringify(r.body)}`);
    return snapshot() === before;
  }), fuzzParams(800));
  t.ok(Object.keys(seen).length > 3, `outcomes seen: ${JSON.stringify(seen)}`);
  t.ok((await rpc.ok('ListClusterPairs')).clusterPairs !== undefined, 'the API still answers');
});
