import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { EtcdRegistry, type ClusterEvent, type EtcdRegistryOptions } from '../src/cluster/etcd-registry.js';
import { runPlacementRound } from '../src/cluster/placement-round.js';
import { ErrorCode, isVrgError } from '../src/core/errors.js';
import { code } from './lib/error-code.js';
import { startEtcd } from './lib/etcd.js';
import { FaultProxy } from './lib/fault-proxy.js';
import { needs } from './lib/tools.js';
import { freePort } from './lib/ports.js';
import { until } from './lib/wait.js';

// The cluster registry (src/cluster/etcd-registry.ts) against a real etcd on loopback: members join, claims of
// a VM are exclusive, a partitioned member is fenced and its VMs are taken over under higher fencing tokens,
// a non-owner's release changes nothing, and placement rounds over three members balance 30 VMs and empty a
// draining member. Each test uses its own site (key prefix) of the one etcd.

const uuid = (i: number) => `6f1e2d3c-4b5a-4978-8a6b-${String(i).padStart(12, '0')}`;

/** The VrgError code `p` rejects with, or 'resolved'. */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return isVrgError(err) ? err.code : `non-VrgError: ${(err as Error).message}`;
  }
}

t.test('cluster registry with a real etcd', needs('etcd'), async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-cluster-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const etcd = await startEtcd(t, dir);

  function registry(site: string, id: string, extra: Partial<EtcdRegistryOptions> = {}): EtcdRegistry {
    const r = new EtcdRegistry({
      endpoints: [etcd.endpoint], site, leaseTtlSec: 2, requestTimeoutMs: 5000,
      member: { id, role: 'production', apiUrl: `https://127.0.0.1:9443/${id}`, linkHost: '127.0.0.1', linkPort: 7000 }, ...extra,
    });
    t.teardown(() => r.close());
    return r;
  }

  t.test('two members join; a second registration of an id is refused; leave removes the member', async (t) => {
    const a = registry('join', 'gw-a');
    const b = registry('join', 'gw-b');
    await a.join();
    await b.join();
    const members = await a.members();
    t.same(members.map((m) => m.id).sort(), ['gw-a', 'gw-b']);
    t.match(members.find((m) => m.id === 'gw-b'), { role: 'production', linkPort: 7000, draining: false, vmCount: 0, writeRateBytesPerSec: 0 });
    t.equal(await codeOf(registry('join', 'gw-a').join()), ErrorCode.CLUSTER_MEMBER_EXISTS);
    await b.leave();
    t.same((await a.members()).map((m) => m.id), ['gw-a']);
    t.equal(await codeOf(b.claim(uuid(1))), ErrorCode.CLUSTER_FENCED, 'a member that left may not act');
    t.equal(await codeOf(registry('join', 'gw-c').claim(uuid(1))), ErrorCode.CLUSTER_FENCED, 'nor one that never joined');
  });

  t.test('two members racing for 20 VMs: each VM has exactly one owner, and the tokens are the owner keys', async (t) => {
    const a = registry('race', 'gw-a');
    const b = registry('race', 'gw-b');
    await Promise.all([a.join(), b.join()]);
    const vms = Array.from({ length: 20 }, (_, i) => uuid(i));
    for (const vm of vms) await a.putVm(vm, { name: `vm-${vm.slice(-2)}`, rpoSec: 15 });
    const attempt = async (r: EtcdRegistry, vm: string) => ({ vm, member: r.memberId, token: await r.claim(vm) });
    // All 40 claims in flight at once, a's and b's interleaved (b starts from the other end).
    const settled = await Promise.allSettled(vms.flatMap((vm, i) => [attempt(a, vm), attempt(b, vms[19 - i]!)]));
    const won = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const refused = settled.flatMap((s) => (s.status === 'rejected' ? [isVrgError(s.reason) ? s.reason.code : String(s.reason)] : []));
    t.same(won.map((w) => w.vm).sort(), [...vms].sort(), 'each VM claimed by exactly one member');
    t.same(new Set(refused), new Set([ErrorCode.CLUSTER_NOT_OWNER]), 'the loser of each race is told the VM is owned');
    const owners = await b.owners();
    t.same(owners.map((o) => [o.vmUuid, o.memberId, o.token]).sort(), won.map((w) => [w.vm, w.member, w.token]).sort(),
      'owners() agrees: owner and fencing token of every VM');
    t.equal(new Set(won.map((w) => w.token)).size, 20, 'twenty distinct tokens');
    const mine = won.find((w) => w.member === 'gw-a')!;
    t.equal(await a.claim(mine.vm), mine.token, 'claiming an owned VM again returns its token');
    t.equal(await codeOf(a.claim(uuid(99))), ErrorCode.VM_NOT_FOUND, 'a VM the site does not have');
    t.equal(await codeOf(a.claim('no/such')), ErrorCode.INVALID_ARGUMENT);
    t.same(await b.owners(), owners, 'the refused claims changed nothing');
  });

  t.test('a release by a non-owner changes nothing; the owner\'s release frees the VM', async (t) => {
    const a = registry('release', 'gw-a');
    const b = registry('release', 'gw-b');
    await Promise.all([a.join(), b.join()]);
    await a.putVm(uuid(1), { name: 'vm-1' });
    const token = await a.claim(uuid(1));
    t.equal(await codeOf(b.release(uuid(1))), ErrorCode.CLUSTER_NOT_OWNER);
    t.same(await b.owners(), [{ vmUuid: uuid(1), memberId: 'gw-a', token }]);
    await a.release(uuid(1));
    t.same(await b.owners(), []);
    t.equal(await codeOf(a.release(uuid(1))), ErrorCode.CLUSTER_NOT_OWNER, 'nothing left to release');
    t.ok(await b.claim(uuid(1)) > token, 'the next owner holds a higher token');
  });

  t.test('a partitioned member is fenced; its VMs are taken over with higher tokens; it acts again only after a new join', async (t) => {
    const proxy = await FaultProxy.start(Number(new URL(etcd.endpoint).port));
    t.teardown(() => proxy.close());
    const a = registry('partition', 'gw-a', { endpoints: [`http://127.0.0.1:${proxy.port}`] });
    const b = registry('partition', 'gw-b');
    await Promise.all([a.join(), b.join()]);
    const vms = [uuid(1), uuid(2), uuid(3)];
    for (const vm of vms) await b.putVm(vm, { name: vm });
    const oldTokens = new Map<string, number>();
    for (const vm of vms) oldTokens.set(vm, await a.claim(vm));
    const events: ClusterEvent[] = [];
    const watch = await b.watch((e) => events.push(e));
    t.teardown(() => watch.close());
    const lost = new Promise((resolve) => a.once('lost', resolve));

    proxy.block(true); // the partition: a cannot reach etcd, b can
    t.match(await lost, { code: ErrorCode.CLUSTER_FENCED }, 'a learns it lost its lease');
    t.notOk(a.live);
    await until(async () => (await b.owners()).length === 0, 15_000, "a's owner keys to expire", () => etcd.log());
    // etcd sends watch events after the revision commits, so a read can see the keys gone before b's watch
    // hears of it: wait for the events, bounded.
    const sawOwnersGo = () => vms.every((vm) => events.some((e) => e.kind === 'owner' && e.type === 'delete' && e.vmUuid === vm));
    const sawMemberGo = () => events.some((e) => e.kind === 'member' && e.type === 'delete' && e.memberId === 'gw-a');
    await until(() => sawOwnersGo() && sawMemberGo(), 10_000, "b's watch to deliver the deletes", () => events).catch(() => undefined);
    t.ok(sawOwnersGo(), 'b saw each owner key go');
    t.ok(sawMemberGo(), "b saw a's member key go");
    for (const vm of vms) t.ok(await b.claim(vm) > oldTokens.get(vm)!, `b owns ${vm.slice(-1)} under a higher token than a's`);

    t.equal(await codeOf(a.claim(uuid(1))), ErrorCode.CLUSTER_FENCED, 'the stale owner may not claim');
    t.equal(await codeOf(a.release(uuid(1))), ErrorCode.CLUSTER_FENCED, 'nor release');
    t.equal(await codeOf(a.setDraining(true)), ErrorCode.CLUSTER_FENCED, 'nor update its record');
    proxy.block(false);
    t.equal(await codeOf(a.claim(uuid(1))), ErrorCode.CLUSTER_FENCED, 'still fenced once etcd is reachable again');
    await until(async () => (await codeOf(a.join())) === 'resolved', 20_000, 'a to join again');
    t.ok(a.live);
    t.equal(await codeOf(a.release(uuid(1))), ErrorCode.CLUSTER_NOT_OWNER, 'rejoined, a still does not own what b took');
    t.same((await b.owners()).map((o) => o.memberId), ['gw-b', 'gw-b', 'gw-b']);
  });

  t.test('a crashed member (abandon: no renewal, no revoke) keeps its VMs until its lease ends; then they are claimable', async (t) => {
    // A 5 s TTL: the claims right after the crash land well inside it even on a loaded machine.
    const a = registry('crash', 'gw-a', { leaseTtlSec: 5 });
    const b = registry('crash', 'gw-b');
    await Promise.all([a.join(), b.join()]);
    const vms = [uuid(1), uuid(2)];
    for (const vm of vms) await b.putVm(vm, { name: vm });
    const oldTokens = new Map<string, number>();
    for (const vm of vms) oldTokens.set(vm, await a.claim(vm));

    a.abandon();
    t.notOk(a.live, 'the crashed member does not count itself live');
    t.equal(await codeOf(a.claim(uuid(1))), ErrorCode.CLUSTER_FENCED, 'nor may it act');
    for (const vm of vms) t.equal(await codeOf(b.claim(vm)), ErrorCode.CLUSTER_NOT_OWNER, `right after the crash ${vm.slice(-1)} is still a's`);
    t.same((await b.members()).map((m) => m.id).sort(), ['gw-a', 'gw-b'], "a's member key outlives the crash");
    t.same((await b.owners()).map((o) => o.memberId), ['gw-a', 'gw-a'], 'and so do its owner keys');

    await until(async () => (await b.owners()).length === 0, 20_000, "a's lease to expire", () => etcd.log());
    t.same((await b.members()).map((m) => m.id), ['gw-b'], 'the lease took the member key with it');
    for (const vm of vms) t.ok(await b.claim(vm) > oldTokens.get(vm)!, `b owns ${vm.slice(-1)} after the TTL, under a higher token`);
  });

  t.test('placement rounds over 3 members balance 30 VMs 10/10/10; a draining member ends with none', async (t) => {
    const members = ['gw-a', 'gw-b', 'gw-c'].map((id) => registry('place', id, { leaseTtlSec: 10 }));
    await Promise.all(members.map((m) => m.join()));
    for (let i = 0; i < 30; i++) await members[0]!.putVm(uuid(i), { name: `vm-${i}` });
    const settle = async () => {
      for (let cycle = 0; cycle < 40; cycle++) {
        let changed = 0;
        for (const m of members) {
          const r = await runPlacementRound(m, { maxMoves: 4 });
          changed += r.claimed.length + r.released.length;
        }
        if (changed === 0) return;
      }
      t.fail('placement did not settle in 40 cycles');
    };
    const counts = async () => {
      const owners = await members[0]!.owners();
      return Object.fromEntries(members.map((m) => [m.memberId, owners.filter((o) => o.memberId === m.memberId).length]));
    };
    await settle();
    t.same(await counts(), { 'gw-a': 10, 'gw-b': 10, 'gw-c': 10 });
    t.equal((await members[0]!.owners()).length, 30, 'every VM owned');
    await members[2]!.setDraining(true);
    await settle();
    t.same(await counts(), { 'gw-a': 15, 'gw-b': 15, 'gw-c': 0 });
    await members[2]!.setDraining(false);
    await settle();
    t.same(await counts(), { 'gw-a': 10, 'gw-b': 10, 'gw-c': 10 }, 'undrained, it gets its share back');
  });
});

t.test('an unreachable etcd is CLUSTER_UNAVAILABLE within the request timeout, and the member stays unjoined', async (t) => {
  const port = await freePort(); // nothing listens there
  const r = new EtcdRegistry({
    endpoints: [`http://127.0.0.1:${port}`], site: 'down', leaseTtlSec: 2, requestTimeoutMs: 1000,
    member: { id: 'gw-a', role: 'production', apiUrl: 'https://127.0.0.1:9443', linkHost: '127.0.0.1', linkPort: 7000 },
  });
  t.teardown(() => r.close());
  t.equal(await codeOf(r.join()), ErrorCode.CLUSTER_UNAVAILABLE);
  t.equal(await codeOf(r.members()), ErrorCode.CLUSTER_UNAVAILABLE);
  t.notOk(r.live);
  t.equal(await codeOf(r.claim(uuid(1))), ErrorCode.CLUSTER_FENCED, 'never joined: refuses to act');
});

t.test('bad options are refused before any request', async (t) => {
  const member = { id: 'gw-a', role: 'production', apiUrl: 'https://127.0.0.1:9443', linkHost: '127.0.0.1', linkPort: 7000 };
  const make = (o: Partial<EtcdRegistryOptions>) => () => new EtcdRegistry({ endpoints: ['http://127.0.0.1:1'], site: 's', member, ...o });
  t.equal(code(make({ site: '../x' })), ErrorCode.INVALID_ARGUMENT);
  t.equal(code(make({ member: { ...member, id: '' } })), ErrorCode.INVALID_ARGUMENT);
  t.equal(code(make({ leaseTtlSec: 1 })), ErrorCode.INVALID_ARGUMENT);
  t.equal(code(make({ endpoints: [] })), ErrorCode.INVALID_ARGUMENT);
});
