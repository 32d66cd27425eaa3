import fc from 'fast-check';
import t from 'tap';
import { placeVms, type PlacementMember, type PlacementMove, type PlacementVm } from '../src/cluster/placement.js';
import { fuzzParams } from './lib/fuzz.js';

// The cluster's balancing rule (src/cluster/placement.ts): examples of each clause, then properties over random
// sites: after the moves every VM has a non-draining owner, the VM-count spread is at most 1, the moves respect
// their bound, and a balanced placement yields no move (stable).

const member = (id: string, writeRateBytesPerSec = 0, draining = false): PlacementMember => ({ id, writeRateBytesPerSec, draining });
const vm = (id: string, owner: string | null, writeRateBytesPerSec = 0): PlacementVm => ({ id, owner, writeRateBytesPerSec });

/** The VMs after `moves`. */
function applied(vms: readonly PlacementVm[], moves: readonly PlacementMove[]): PlacementVm[] {
  const to = new Map(moves.map((m) => [m.vmId, m.to]));
  return vms.map((v) => ({ ...v, owner: to.get(v.id) ?? v.owner }));
}

function counts(members: readonly PlacementMember[], vms: readonly PlacementVm[]): Map<string, number> {
  const out = new Map(members.map((m) => [m.id, 0]));
  for (const v of vms) if (v.owner !== null && out.has(v.owner)) out.set(v.owner, out.get(v.owner)! + 1);
  return out;
}

t.test('an unowned VM goes to the member with the fewest VMs, then the lowest write rate, then the lowest id', async (t) => {
  const members = [member('c', 0), member('a', 500), member('b', 100)];
  t.same(placeVms(members, [vm('x', 'a'), vm('new', null)]), [{ vmId: 'new', from: null, to: 'c', reason: 'unowned' }],
    'b and c have 0 VMs; c has the lower rate');
  const tied = [member('c', 7), member('b', 7), member('a', 7)];
  t.same(placeVms(tied, [vm('new', null)]).map((m) => m.to), ['a'], 'all tied: the lowest id');
});

t.test('a VM whose owner is not a live member is placed like an unowned one', async (t) => {
  const moves = placeVms([member('a'), member('b')], [vm('v1', 'a'), vm('v2', 'gone')]);
  t.same(moves, [{ vmId: 'v2', from: 'gone', to: 'b', reason: 'unowned' }]);
});

t.test('a draining member gets no VM and its VMs move, within the bound', async (t) => {
  const members = [member('a'), member('b'), member('d', 0, true)];
  const vms = [vm('v1', 'd'), vm('v2', 'd'), vm('v3', 'd'), vm('v4', null)];
  const all = placeVms(members, vms);
  t.notOk(all.some((m) => m.to === 'd'), 'nothing goes to the draining member');
  t.same([...counts(members, applied(vms, all))], [['a', 2], ['b', 2], ['d', 0]]);
  const bounded = placeVms(members, vms, { maxMoves: 1 });
  t.same(bounded.map((m) => m.reason), ['unowned', 'draining'], 'the unowned VM is placed regardless; one draining move');
  t.same(placeVms([member('d', 0, true)], vms), [], 'no member can take them: nothing moves');
});

t.test('rebalance moves a VM only when the spread exceeds 1, the quietest first, at most maxMoves', async (t) => {
  const two = [member('a'), member('b')];
  t.same(placeVms(two, [vm('v1', 'a'), vm('v2', 'b'), vm('v3', 'a')]), [], 'spread 1: no move');
  t.same(placeVms(two, [vm('v1', 'a'), vm('v2', 'a')]).map((m) => m.vmId), ['v1'], 'spread 2: one move');
  const vms = [vm('v1', 'a', 9), vm('v2', 'a', 1), vm('v3', 'a', 5)];
  t.same(placeVms(two, vms), [{ vmId: 'v2', from: 'a', to: 'b', reason: 'rebalance' }]);
  const six = ['v1', 'v2', 'v3', 'v4', 'v5', 'v6'].map((id) => vm(id, 'a'));
  t.equal(placeVms(two, six, { maxMoves: 2 }).length, 2, 'bounded');
  t.equal(placeVms(two, six).length, 3, 'unbounded: 3/3');
});

const site = fc.record({
  members: fc.uniqueArray(fc.record({ id: fc.constantFrom('m0', 'm1', 'm2', 'm3', 'm4', 'm5'), writeRateBytesPerSec: fc.nat(1000), draining: fc.boolean() }),
    { selector: (m) => m.id, minLength: 1, maxLength: 6 }),
  vms: fc.uniqueArray(fc.record({
    id: fc.string({ minLength: 1, maxLength: 4 }),
    owner: fc.option(fc.constantFrom('m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'gone')),
    writeRateBytesPerSec: fc.nat(1000),
  }), { selector: (v) => v.id, maxLength: 60 }),
  maxMoves: fc.option(fc.integer({ min: 1, max: 8 }), { nil: undefined }),
});

t.test('property: repeated calls end balanced on non-draining members, each within its bound, then stable', async (t) => {
  fc.assert(fc.property(site, ({ members, vms, maxMoves }) => {
    const live = members.filter((m) => !m.draining);
    let now: PlacementVm[] = vms;
    for (let round = 0; round <= vms.length; round++) {
      const moves = placeVms(members, now, { maxMoves });
      if (moves.length === 0) break;
      if (new Set(moves.map((m) => m.vmId)).size !== moves.length) return false;
      if (moves.some((m) => !live.some((l) => l.id === m.to))) return false;
      if (maxMoves !== undefined && moves.filter((m) => m.reason !== 'unowned').length > maxMoves) return false;
      now = applied(now, moves);
    }
    if (placeVms(members, now, { maxMoves }).length !== 0) return false;
    if (live.length === 0) return true;
    if (now.some((v) => !live.some((l) => l.id === v.owner))) return false;
    const c = [...counts(live, now).values()];
    return Math.max(...c) - Math.min(...c) <= 1;
  }), fuzzParams(500));
  t.pass('500 random sites');
});

t.test('property: an unbounded call balances at once, and a balanced placement yields no move', async (t) => {
  fc.assert(fc.property(site, ({ members, vms }) => {
    const live = members.filter((m) => !m.draining);
    const after = applied(vms, placeVms(members, vms));
    if (placeVms(members, after).length !== 0) return false;
    if (live.length === 0) return true;
    const c = [...counts(live, after).values()];
    return Math.max(...c) - Math.min(...c) <= 1;
  }), fuzzParams(500));
  t.pass('500 random sites');
});
