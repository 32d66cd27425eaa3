import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { EtcdRegistry } from '../src/cluster/etcd-registry.js';
import { startEtcd } from './lib/etcd.js';
import { freePort } from './lib/ports.js';
import { needs } from './lib/tools.js';
import { vrg } from './lib/vrg-cli.js';

// Issue 18: `vrg cluster status` reads a site's members and VM placement from a real etcd, as a user runs it.

const vm = (n: number): string => `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;

t.test('vrg cluster status: members, owners with their fencing tokens, unowned VMs; --json; bad input', needs('etcd'), async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-cluster-status-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const etcd = await startEtcd(t, dir);
  const member = (id: string): EtcdRegistry => {
    const r = new EtcdRegistry({ endpoints: [etcd.endpoint], site: 'site-a', leaseTtlSec: 5,
      member: { id, role: 'production', apiUrl: `http://127.0.0.1:8080/${id}`, linkHost: '127.0.0.1', linkPort: 7000 } });
    t.teardown(() => r.close());
    return r;
  };
  const [a, b] = [member('gw-a'), member('gw-b')];
  await a.join();
  await b.join();
  for (let i = 1; i <= 5; i++) await a.putVm(vm(i), { vmName: `vm${i}` });
  const tokens = new Map<string, number>();
  for (const i of [1, 2]) tokens.set(vm(i), await a.claim(vm(i)));
  tokens.set(vm(3), await b.claim(vm(3)));
  await b.setDraining(true);

  const shown = await vrg('cluster', 'status', '--etcd', etcd.endpoint, '--site', 'site-a');
  t.equal(shown.code, 0, `exit 0${shown.stderr}`);
  t.match(shown.stdout, /^site site-a: 2 members, 5 VMs, 2 unowned$/m, 'the summary line');
  t.match(shown.stdout, /^gw-a\s+production\s+2\s+0\.0\s+no\s/m, 'gw-a owns two VMs');
  t.match(shown.stdout, /^gw-b\s+production\s+1\s+0\.0\s+yes\s/m, 'gw-b owns one and is draining');
  t.match(shown.stdout, new RegExp(`^${vm(3)}\\s+gw-b\\s+${tokens.get(vm(3))}\\s`, 'm'), 'a VM with its owner and fencing token');
  t.match(shown.stdout, new RegExp(`^${vm(5)}\\s+-\\s+-\\s`, 'm'), 'an unowned VM');

  const json = await vrg('cluster', 'status', '--etcd', etcd.endpoint, '--site', 'site-a', '--json');
  const doc = JSON.parse(json.stdout) as { members: Array<{ id: string }>; vms: Array<{ vmUuid: string; owner: string | null; token: number | null }> };
  t.same(doc.members.map((m) => m.id), ['gw-a', 'gw-b']);
  t.same(doc.vms.filter((v) => v.owner !== null).map((v) => [v.vmUuid, v.owner, v.token]),
    [1, 2, 3].map((i) => [vm(i), i === 3 ? 'gw-b' : 'gw-a', tokens.get(vm(i))]), '--json: the same placement');
  t.same((await vrg('cluster', 'status', '--etcd', etcd.endpoint, '--site', 'other', '--json')).stdout.trim(),
    JSON.stringify({ site: 'other', members: [], vms: [] }), 'another site is empty');

  const usage = await vrg('cluster', 'status', '--site', 'site-a');
  t.equal(usage.code, 2, 'no --etcd: a usage error');
  t.match(usage.stderr, /needs --etcd/);
  t.equal((await vrg('cluster', 'stats')).code, 2, 'an unknown subcommand');
  t.equal((await vrg('cluster', 'status', '--etcd', 'localhost:2379', '--site', 's')).code, 2, 'an endpoint without a scheme');
  const down = await vrg('cluster', 'status', '--etcd', `http://127.0.0.1:${await freePort()}`, '--site', 's');
  t.not(down.code, 0, 'etcd unreachable: a non-zero exit');
  t.match(down.stderr, /VRG_CLUSTER_UNAVAILABLE/, 'naming the cluster-unavailable code');
  t.same((await a.owners()).length, 3, 'reading changed nothing');
});
