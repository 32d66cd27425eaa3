import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { compareVolumes } from '../src/cli/demo.js';
import type { IpcMessage } from '../src/cli/gateway-process.js';
import type { LoadOptions } from '../src/cli/load-generator.js';
import { systemClock } from '../src/core/clock.js';
import { ErrorCode } from '../src/core/errors.js';
import { systemRandom } from '../src/core/random.js';
import { clientHandshake } from '../src/link/handshake.js';
import { LinkSecretStore, pairingId } from '../src/link/link-secrets.js';
import { tcpTransport } from '../src/link/transport.js';
import { parseConfig } from '../src/replication/config.js';
import { apiSession } from '../src/cli/api-command.js';
import { pairConfigJson } from './lib/pair.js';
import { ackedWritesMissing, drainChild, startNbdProcessPair, watchChild } from './lib/process-pair.js';
import { until } from './lib/wait.js';
import { vrg } from './lib/vrg-cli.js';

// Issue 17: the link secret rotates over the authenticated link (vrg rekey). Under load nothing acknowledged is
// lost; the old secret no longer connects and the new one does; a restart keeps the rotated secret; the DR side
// and a down link refuse with their codes and change nothing.

const MiB = 1024 * 1024;
const adminPassword = 'rekey-test-pw';
type Ready = IpcMessage & { type: 'ready' };

/** A handshake as a production gateway with `secret` against DR's link port: 'ok' or the error's code. */
async function tryHandshake(port: number, secret: Buffer): Promise<string> {
  const sock = await tcpTransport.connect('127.0.0.1', port);
  try {
    const conn = await clientHandshake(sock, {
      gatewayId: 'rekey-probe', role: 'production', secret, clock: systemClock, random: systemRandom, handshakeTimeoutMs: 5000,
    });
    conn.close();
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

t.test('vrg rekey under load: nothing acknowledged lost, the old secret refused, the new one kept across a restart', async (t) => {
  const dir = t.testdir();
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: 64 * MiB });
  for (const side of [json.prod, json.dr]) Object.assign(side, { api: { host: '127.0.0.1', port: 0, adminPassword } });
  const initial = Buffer.from(json.prod.link.secret, 'hex');
  const started = await startNbdProcessPair(t, dir, json);
  const { pair, children } = started;
  let { dr, prod } = started;
  const rest = { prod: (pair.ready.prod as Ready).restUrl!, dr: (pair.ready.dr as Ready).restUrl! };
  await drainChild(prod, dr);

  const load: LoadOptions = { totalBytes: 32 * MiB, volumes: json.prod.vms[0]!.volumes, writeBytes: 64 * 1024, queueDepth: 8, seed: 21, sequential: true };
  const acked = new Set<number>();
  const loading = prod.request({ type: 'load', load }, 'loadDone');
  await watchChild(prod, dr, acked, () => acked.size > 40);
  const first = await vrg('rekey', '--url', rest.prod, '--password', adminPassword);
  t.equal(first.code, 0, `vrg rekey under load${first.stderr}`);
  t.match(JSON.parse(first.stdout), { generation: 1, reconnected: true }, 'the first rotation, the link back on the new secret');
  const second = await vrg('rekey', '--url', rest.prod, '--password', adminPassword);
  t.match(JSON.parse(second.stdout), { generation: 2, reconnected: true }, `a second one, still under load ${second.stdout} ${second.stderr}`);
  await watchChild(prod, dr, acked, () => true);
  await loading;
  await watchChild(prod, dr, acked, () => true);
  await drainChild(prod, dr);
  t.ok(acked.size > 100, `${acked.size} writes acknowledged around the rotations`);
  t.equal(await ackedWritesMissing(json.dr.vms[0]!.volumes[0]!.path, load, acked), 0, 'every acknowledged write is on DR');

  // Both sides hold the rotated secret; the configured one and the first rotation's are refused now.
  const prodStore = await LinkSecretStore.open(json.prod.dataDir);
  const now = prodStore.get(initial);
  t.equal(now.generation, 2, 'production: generation 2');
  t.not(now.current.toString('hex'), initial.toString('hex'), 'production: a new secret');
  await until(async () => (await LinkSecretStore.open(json.dr.dataDir)).get(initial).generation === 2, 10_000, 'DR to make the new secret current');
  t.same((await LinkSecretStore.open(json.dr.dataDir)).candidates(initial).map((b) => b.toString('hex')), [now.current.toString('hex')],
    'DR accepts only the new secret');
  const linkPort = json.dr.link.port;
  t.equal(await tryHandshake(linkPort, initial), ErrorCode.HANDSHAKE_FAILED, 'the configured secret no longer connects');
  t.equal(await tryHandshake(linkPort, now.current), 'ok', 'the rotated one does');
  const fileText = await readFile(join(json.dr.dataDir, 'link-secrets.json'), 'utf8');
  t.notMatch(fileText, initial.toString('hex'), 'the old secret is not kept on DR');
  t.match(fileText, pairingId(initial), 'the pairing is named by a hash, not by its secret');

  // A restart of both: the link comes up on the rotated secret (the config still names the first one).
  t.equal(await prod.stop(), 0);
  t.equal(await dr.stop(), 0);
  dr = await pair.startDr();
  children.push(dr);
  prod = await pair.startProd();
  children.push(prod);
  await drainChild(prod, dr);
  t.equal(await prod.stop(), 0, 'production exits cleanly');
  t.equal(await dr.stop(), 0, 'DR exits cleanly');
  t.equal(await compareVolumes([[json.prod.vms[0]!.volumes[0]!.path, json.dr.vms[0]!.volumes[0]!.path]]), null, 'DR equals production');
});

t.test('rekey refused on DR and with the link down: its error number, nothing changed', async (t) => {
  const dir = t.testdir();
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: 16 * MiB });
  for (const side of [json.prod, json.dr]) Object.assign(side, { api: { host: '127.0.0.1', port: 0, adminPassword } });
  const { pair, dr, prod } = await startNbdProcessPair(t, dir, json);
  const rest = { prod: (pair.ready.prod as Ready).restUrl!, dr: (pair.ready.dr as Ready).restUrl! };
  const onDr = await apiSession(rest.dr, 'admin', adminPassword);
  t.teardown(() => onDr.close());
  await t.rejects(onDr.call('POST', 'linkrekey', {}), { message: /10440410/ }, 'on DR: the role-conflict number');
  await dr.kill();
  const onProd = await apiSession(rest.prod, 'admin', adminPassword);
  t.teardown(() => onProd.close());
  await until(async () => {
    const s = await prod.request<IpcMessage & { type: 'status' }>({ type: 'status' }, 'status');
    return (s.status as { connected: boolean }).connected === false;
  }, 30_000, 'production to see the link down');
  await t.rejects(onProd.call('POST', 'linkrekey', {}), { message: /10440420/ }, 'link down: the rekey-failed number');
  const store = await LinkSecretStore.open(json.prod.dataDir);
  t.equal(store.get(Buffer.from(json.prod.link.secret, 'hex')).generation, 0, 'the secret is unchanged');
});

t.test('link.rekeyIntervalSeconds rotates on a schedule; the link stays up and replicates', async (t) => {
  const dir = t.testdir();
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: 16 * MiB });
  Object.assign(json.prod.link, { rekeyIntervalSeconds: 1 });
  const initial = Buffer.from(json.prod.link.secret, 'hex');
  const { dr, prod } = await startNbdProcessPair(t, dir, json);
  await until(async () => (await LinkSecretStore.open(json.prod.dataDir)).get(initial).generation >= 2, 30_000, 'two scheduled rotations');
  await until(async () => (await LinkSecretStore.open(json.dr.dataDir)).get(initial).generation >= 2, 10_000, 'DR on the rotated secret');
  const load: LoadOptions = { totalBytes: 4 * MiB, volumes: json.prod.vms[0]!.volumes, writeBytes: 64 * 1024, queueDepth: 4, seed: 5 };
  await prod.request({ type: 'load', load }, 'loadDone');
  await drainChild(prod, dr);
  t.equal(await prod.stop(), 0);
  t.equal(await dr.stop(), 0);
  t.equal(await compareVolumes([[json.prod.vms[0]!.volumes[0]!.path, json.dr.vms[0]!.volumes[0]!.path]]), null, 'DR equals production after the scheduled rotations');
  t.throws(() => parseConfig({ ...json.prod, link: { ...json.prod.link, rekeyIntervalSeconds: -1 } }), { code: ErrorCode.CONFIG_INVALID }, 'a negative interval is refused');
});
