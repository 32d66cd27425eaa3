import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { passwordKey } from '../src/api/auth/account-store.js';
import { decodeClusterPairingKey, encodeClusterPairingKey } from '../src/api/jsonrpc/pairing-keys.js';
import { pairRpcCredentials } from '../src/api/jsonrpc/rpc-context.js';
import type { StoredClusterPair } from '../src/api/store/api-store.js';
import { spawnGateway, type GatewayChild } from '../src/cli/gateway-child.js';
import type { IpcMessage } from '../src/cli/gateway-process.js';
import { JsonRpcClient } from './lib/jsonrpc-client.js';
import { RestClient, tempDir, until } from './lib/rest-client.js';

// Secrets never logged (issue 17 item 5): two real gateway processes at log level debug are paired over
// JSON-RPC, logged into with right and wrong passwords, handed bad pairing keys, and dialed by a third one
// with a wrong link secret. No log line of any of them, and no API answer, holds any secret used, in any
// encoding the code uses (hex, base64, base64url); the one answer meant to hand out a key holds only that key.

type Ready = IpcMessage & { type: 'ready' };

const ADMIN = `Adm1n"pw\\${randomBytes(6).toString('hex')}`;
const WRONG = `Wr0ng-pw-${randomBytes(6).toString('hex')}`;

/** Every encoding of a secret the code uses: text as is, its UTF-8 in hex and base64; bytes in hex and base64. */
function encodings(s: string | Buffer): string[] {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  const out = [b.toString('hex'), b.toString('hex').toUpperCase(), b.toString('base64').replace(/=+$/, ''), b.toString('base64url')];
  if (typeof s === 'string') out.push(s, JSON.stringify(s).slice(1, -1));
  return out;
}

t.test('no log line of any gateway and no API answer holds a secret', async (t) => {
  const dir = await tempDir(t, 'vrg-secrets-');
  const secrets = new Map<string, string | Buffer>(); // what -> value
  const link = { prod: randomBytes(32), dr: randomBytes(32), bad: randomBytes(32) };
  secrets.set('production config link.secret', link.prod).set('DR config link.secret', link.dr).set('intruder link.secret', link.bad);
  secrets.set('admin password', ADMIN).set('admin X-Auth-Key', passwordKey(ADMIN));
  secrets.set('wrong password', WRONG).set('wrong X-Auth-Key', passwordKey(WRONG));
  const env = { ...process.env, VRG_LOG_LEVEL: 'debug' };
  const children: GatewayChild[] = [];
  t.teardown(() => Promise.all(children.map((c) => c.kill())));
  const start = async (role: 'production' | 'dr', name: string, secret: Buffer, extra: Record<string, unknown> = {}): Promise<Ready> => {
    const config = join(dir, `${name}.json`);
    await writeFile(config, JSON.stringify({
      role, gatewayId: `secrets-${name}`, dataDir: join(dir, name), vms: [],
      link: { host: '127.0.0.1', port: 0, secret: secret.toString('hex') }, journalCapacityBytes: 16 * 1024 * 1024, ...extra,
    }));
    const child = spawnGateway(role, config, join(dir, `${name}.log`), env);
    children.push(child);
    return child.request<Ready>(null, 'ready');
  };
  const api = { api: { host: '127.0.0.1', port: 0, adminPassword: ADMIN } };
  const dr = await start('dr', 'dr', link.dr, api);
  const prod = await start('production', 'prod', link.prod, api);

  /** Every answer body, but the one that hands out the pairing key (checked apart). */
  const bodies: string[] = [];
  const rpc = (ready: Ready, password = ADMIN) => {
    const c = new JsonRpcClient(`${new URL(ready.restUrl!).origin}/json-rpc/12.5`, 'admin', password);
    return async (method: string, params: Record<string, unknown> = {}, keep = true) => {
      const r = await c.post({ method, params, id: 1 });
      if (keep) bodies.push(JSON.stringify(r.body));
      return r.body;
    };
  };
  const [drRpc, prodRpc] = [rpc(dr), rpc(prod)];

  // REST logins: right (a session token), wrong, and a call with the token.
  for (const ready of [dr, prod]) {
    const rest = new RestClient(ready.restUrl!);
    const bad = await rest.login('admin', WRONG);
    t.equal(bad.status >= 400, true, 'a wrong password is refused');
    bodies.push(bad.text);
    const ok = await rest.login('admin', ADMIN);
    bodies.push(ok.text);
    t.ok(rest.token, 'logged in');
    secrets.set(`session token ${ready.role}`, rest.token!);
    for (const path of ['/vrgstatus', '/vrgmap', '/netinfos', '/trapinfo', '/vmstrategy']) bodies.push((await rest.call('GET', path)).text);
    bodies.push((await rest.call('DELETE', '/session')).text);
  }
  const wrongRpc = await rpc(dr, WRONG)('ListClusterPairs');
  t.notOk(wrongRpc?.result, 'JSON-RPC with a wrong password is refused');

  // Cluster pairing: bad keys first (garbage; well formed with a wrong credential), then the real one.
  const started = await drRpc('StartClusterPairing', {}, false);
  const key = started.result.clusterPairingKey as string;
  const fields = decodeClusterPairingKey(key);
  secrets.set('cluster pairing key', key).set('pairing key password', fields.password);
  const forged = encodeClusterPairingKey({ ...fields, password: `forged-${randomBytes(8).toString('hex')}` });
  const garbage = `${key.slice(0, 40)}zz${randomBytes(16).toString('hex')}`;
  secrets.set('forged pairing key', forged).set('forged key password', decodeClusterPairingKey(forged).password).set('garbage key', garbage);
  for (const k of [garbage, forged]) t.ok((await prodRpc('CompleteClusterPairing', { clusterPairingKey: k })).error, 'a bad key is refused');
  const done = await prodRpc('CompleteClusterPairing', { clusterPairingKey: key });
  t.type(done.result?.clusterPairID, 'number', 'paired');
  await until(async () => (await prodRpc('ListClusterPairs')).result.clusterPairs[0]?.status === 'Connected', 15_000, 'the link is up with the pair secret');
  await drRpc('ListClusterPairs');
  for (const side of ['dr', 'prod']) {
    const store = JSON.parse(await readFile(join(dir, side, 'api', 'api-config.json'), 'utf8')) as { rpc: { clusterPairs: StoredClusterPair[] } };
    const pair = store.rpc.clusterPairs[0]!;
    secrets.set(`${side} per-peer link secret`, Buffer.from(pair.linkSecretHex, 'hex'));
    secrets.set(`${side} pair RPC password`, pairRpcCredentials(pair).password);
  }

  // A production gateway with a wrong link secret dials DR: the handshake fails on both sides.
  await start('production', 'intruder', link.bad, { link: { host: '127.0.0.1', port: dr.linkPort, secret: link.bad.toString('hex') } });
  await until(async () => (await readFile(join(dir, 'dr.log'), 'utf8')).includes('link handshake failed'), 15_000, 'DR refused the intruder');
  for (const c of children) await c.stop();

  const logs = await Promise.all(['dr', 'prod', 'intruder'].map(async (n) => ({ n, text: await readFile(join(dir, `${n}.log`), 'utf8') })));
  const lines = logs.flatMap(({ n, text }) => text.split('\n').filter(Boolean).map((l) => ({ where: `${n}.log`, l })));
  t.ok(lines.some((x) => x.l.includes('"level":20')), 'debug lines were logged');
  t.ok(lines.length > 20, `${lines.length} log lines checked`);
  const leaks: string[] = [];
  const check = (where: string, text: string, except: string[] = []) => {
    for (const [what, v] of secrets) {
      if (except.includes(what)) continue;
      for (const e of encodings(v)) if (text.includes(e)) leaks.push(`${where} holds the ${what} (${e.slice(0, 12)}...)`);
    }
  };
  for (const { where, l } of lines) check(where, l);
  bodies.forEach((b, i) => check(`answer ${i}`, b));
  // Its purpose: the key, which holds its password (in hex).
  check('StartClusterPairing answer', JSON.stringify(started), ['cluster pairing key', 'pairing key password']);
  t.same(leaks, [], `no secret in ${lines.length} log lines and ${bodies.length + 1} answers (${secrets.size} secrets)`);
});
