import { randomUUID } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { spawnGateway, type GatewayChild } from '../src/cli/gateway-child.js';
import { decodeClusterPairingKey, encodeClusterPairingKey } from '../src/api/jsonrpc/pairing-keys.js';
import { certFingerprint } from '../src/api/rest/tls.js';
import type { ApiState } from '../src/api/store/api-store.js';
import { JsonRpcClient } from './lib/jsonrpc-client.js';
import { freePort } from './lib/ports.js';
import { newSecret } from './lib/rest-client.js';

// Issue 17, pinned peers: two `vrg start` processes serving JSON-RPC over HTTPS with their self-signed
// certificates pair; each pins the other's certificate; the pins survive a restart and later peer calls
// use them; once a gateway's certificate is replaced, the other side's next call is refused; a key whose
// fingerprint was altered is refused at completion. Every refusal leaves both stores as they were.

const MiB = 1024 * 1024;
const adminPassword = 'pinning-test-pw';
type Role = 'production' | 'dr';

interface Site {
  dir: string;
  child: GatewayChild | null;
  rpc: JsonRpcClient;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** The certificate the HTTPS listener serves now (under dataDir/api). */
  fingerprint(): Promise<string>;
  store(): Promise<ApiState>;
}

async function site(t: Test, root: string, role: Role, drLinkPort: number): Promise<Site> {
  const dir = join(root, role);
  const httpsPort = await freePort(); // fixed: the peer stores this mvip
  const config = join(root, `${role}.json`);
  await writeFile(config, JSON.stringify({
    role, gatewayId: `pin-${role}`, dataDir: dir, vms: [], journalCapacityBytes: 64 * MiB,
    link: { host: '127.0.0.1', port: role === 'dr' ? drLinkPort : 0, secret: newSecret() },
    api: { host: '127.0.0.1', port: 0, httpsPort, adminPassword },
  }));
  const s: Site = {
    dir, child: null, rpc: new JsonRpcClient(`https://127.0.0.1:${httpsPort}/json-rpc/12.5`, 'admin', adminPassword),
    async start() {
      s.child = spawnGateway(role, config, join(root, `${role}.log`));
      await s.child.request(null, 'ready');
    },
    async stop() {
      await s.child?.stop();
      s.child = null;
    },
    fingerprint: async () => certFingerprint(await readFile(join(dir, 'api', 'https-cert.pem'), 'utf8')),
    store: async () => JSON.parse(await readFile(join(dir, 'api', 'api-config.json'), 'utf8')) as ApiState,
  };
  t.teardown(async () => {
    await s.child?.kill();
  });
  await s.start();
  return s;
}

function refused(t: Test, body: any, name: string, what: string): void { // eslint-disable-line @typescript-eslint/no-explicit-any
  t.equal(body?.error?.name, name, what);
  t.equal(body?.result, undefined, `${what}: no result`);
}

async function createVolume(s: Site, name: string): Promise<number> {
  return (await s.rpc.ok('CreateVolume', { name, accountID: 1, totalSize: MiB })).volumeID as number;
}

/** DR and production processes, DR first (its link port is fixed so that restarts keep the pair's address). */
async function sites(t: Test): Promise<{ dr: Site; prod: Site }> {
  const root = t.testdir();
  const drLinkPort = await freePort();
  const dr = await site(t, root, 'dr', drLinkPort);
  return { dr, prod: await site(t, root, 'production', drLinkPort) };
}

const pins = async (prod: Site, dr: Site) => [(await prod.store()).rpc?.clusterPairs[0]?.peerCertFingerprint, (await dr.store()).rpc?.clusterPairs[0]?.peerCertFingerprint];

t.test('pairing pins both certificates; a key with an altered or no fingerprint is refused, nothing changed', async (t) => {
  const { dr, prod } = await sites(t);
  const [drFp, prodFp] = [await dr.fingerprint(), await prod.fingerprint()];
  const { clusterPairingKey } = await dr.rpc.ok('StartClusterPairing');
  const fields = decodeClusterPairingKey(clusterPairingKey);
  t.equal(fields.certFingerprint, drFp, 'the key carries the starter\'s certificate fingerprint');

  const before = JSON.stringify([await prod.store(), await dr.store()]);
  const flipped = `${drFp.slice(0, -1)}${drFp.endsWith('0') ? '1' : '0'}`;
  refused(t, await prod.rpc.call('CompleteClusterPairing', { clusterPairingKey: encodeClusterPairingKey({ ...fields, certFingerprint: flipped }) }),
    'xPeerCertificateMismatch', 'a key whose fingerprint was altered (one digit)');
  const { certFingerprint: _dropped, ...unpinned } = fields;
  refused(t, await prod.rpc.call('CompleteClusterPairing', { clusterPairingKey: encodeClusterPairingKey(unpinned) }),
    'xPairingKeyInvalid', 'a key without a fingerprint for an HTTPS mvip');
  // The issuer's side: a completer (an older VRG) that sends no fingerprint for its HTTPS mvip.
  const { username, password, certFingerprint: _fp, ...keyFields } = fields;
  const peer = { gatewayId: 'old-vrg', uuid: randomUUID(), role: 'production', mvip: 'https://127.0.0.1:1', version: '12.5.0.0', linkHost: '', linkPort: 0 };
  refused(t, await new JsonRpcClient(dr.rpc.url, username, password).call('VrgPairCluster', { ...keyFields, peer, nonce: '00'.repeat(32) }),
    'xInvalidParameter', 'a completer without a fingerprint for its HTTPS mvip');
  t.equal(JSON.stringify([await prod.store(), await dr.store()]), before, 'both stores unchanged');
  t.same((await prod.rpc.ok('ListClusterPairs')).clusterPairs, [], 'production has no pair');
  t.same((await dr.rpc.ok('ListClusterPairs')).clusterPairs.map((p: { status: string }) => p.status), ['Pending'], 'DR still waits');

  await prod.rpc.ok('CompleteClusterPairing', { clusterPairingKey }); // the refusals did not spend the credential
  t.same(await pins(prod, dr), [drFp, prodFp], 'production pinned DR\'s certificate, DR production\'s');
});

t.test('the pins survive a restart and later calls pass them; a replaced certificate is refused, nothing changed', async (t) => {
  const { dr, prod } = await sites(t);
  const [drFp, prodFp] = [await dr.fingerprint(), await prod.fingerprint()];
  await prod.rpc.ok('CompleteClusterPairing', { clusterPairingKey: (await dr.rpc.ok('StartClusterPairing')).clusterPairingKey });
  await prod.stop();
  await dr.stop();
  await dr.start();
  await prod.start();
  t.same(await pins(prod, dr), [drFp, prodFp], 'both pins after a restart of both');
  t.equal((await dr.rpc.ok('ListClusterPairs')).clusterPairs.length, 1);
  const [src, dst] = [await createVolume(prod, 'src'), await createVolume(dr, 'dst')];
  const { volumePairingKey } = await prod.rpc.ok('StartVolumePairing', { volumeID: src });
  t.same(await dr.rpc.ok('CompleteVolumePairing', { volumeID: dst, volumePairingKey }), {}, 'a later peer call (DR to production) passes the pin');

  // Production gets a new self-signed certificate: DR's next call to it is refused.
  await prod.stop();
  await rm(join(prod.dir, 'api', 'https-cert.pem'));
  await rm(join(prod.dir, 'api', 'https-key.pem'));
  await prod.start();
  t.not(await prod.fingerprint(), prodFp, 'production serves another certificate');
  const [src2, dst2] = [await createVolume(prod, 'src2'), await createVolume(dr, 'dst2')];
  const second = await prod.rpc.ok('StartVolumePairing', { volumeID: src2 });
  await dr.rpc.ok('ListActivePairedVolumes'); // the inventory is synced: the refusal alone must change nothing
  const stores = JSON.stringify([await prod.store(), await dr.store()]);
  refused(t, await dr.rpc.call('CompleteVolumePairing', { volumeID: dst2, volumePairingKey: second.volumePairingKey }),
    'xPeerCertificateMismatch', 'DR refuses production\'s replaced certificate');
  t.equal(JSON.stringify([await prod.store(), await dr.store()]), stores, 'both stores unchanged');
  const paired = (await dr.rpc.ok('ListActivePairedVolumes')).volumes.map((v: { volumeID: number }) => v.volumeID);
  t.same(paired, [dst], 'only the first volume is paired on DR');
});
