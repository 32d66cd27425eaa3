import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VRG_TRAP_OID } from '../src/api/alarms/alarm-notifier.js';
import { DrGateway } from '../src/replication/target/dr-gateway.js';
import { newSecret, RestClient, startApiPair, until } from './lib/rest-client.js';
import { needs } from './lib/tools.js';
import { startSnmptrapd } from './lib/snmptrapd.js';

// A trap from a simulated link failure (the DR gateway stops) reaches a real snmptrapd (Debian package
// snmptrapd), and a recovery trap follows when the DR gateway is back.


t.test('link failure and recovery traps arrive at snmptrapd', needs('snmptrapd'), async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-trap-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const trapd = await startSnmptrapd(t, dir);
  const port = trapd.port;

  const secret = newSecret();
  const pair = await startApiPair(t, { dir, secret });
  const { prod } = pair;
  const linkPort = (pair.dr.gw as DrGateway).linkPort;
  const c = new RestClient(prod.api.url);
  await c.login();
  t.equal((await c.call('POST', '/trapinfo', { ip: '127.0.0.1', port })).status, 200);
  await c.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: linkPort });
  await until(async () => (await c.call('GET', '/vrgmap')).body.status === 1, 15_000, 'paired');
  t.equal((await c.call('GET', '/vrgstatus')).body.status, 1, 'normal');

  await pair.dr.close(); // the simulated link failure
  const raised = `${VRG_TRAP_OID}.1.1`;
  await until(() => trapd.output().includes(raised), 15_000, 'the linkDown trap');
  t.match(trapd.output(), new RegExp(`${VRG_TRAP_OID.replace(/\./g, '\\.')}\\.3\\.1 = STRING: "linkDown"`), 'kind varbind');
  t.match(trapd.output(), /rest-production/, 'gateway id varbind');
  t.equal((await c.call('GET', '/vrgstatus')).body.status, 2, 'abnormal while the link is down');
  t.equal((await c.call('GET', '/vrgmap')).body.status, 5, 'link down');

  await pair.restart('dr', { linkPort });
  await until(() => trapd.output().includes(`${VRG_TRAP_OID}.2.1`), 20_000, 'the recovery trap');
  t.equal((await c.call('GET', '/vrgstatus')).body.status, 1, 'normal again');
  t.equal(prod.api.alarms.stats.failed, 0);

  t.equal((await c.call('POST', '/trapinfo', { ip: '0.0.0.0', port: 1 })).status, 200, 'trap server deleted');
  const before = trapd.output().length;
  await pair.dr.close();
  await until(async () => (await c.call('GET', '/vrgmap')).body.status === 5, 15_000, 'link down again');
  await new Promise((r) => setTimeout(r, 500));
  t.notOk(trapd.output().slice(before).includes(raised), 'no trap once the trap server is deleted');
});
