import t from 'tap';
import { lagAlarmChanges, type LagAlarmKind } from '../src/replication/source/lag-alarms.js';

// The lag alarms' rule (lag-alarms.ts): raise past the threshold, clear under 80 % of it, 0 turns one off.

const th = { rpoAlarmSeconds: 10, journalAlarmPercent: 80 };
const fig = (secondsBehind: number, usedPercent: number) => ({ secondsBehind, journalUsedBytes: usedPercent, journalCapacityBytes: 100 });

t.test('raise past the threshold, stay raised down to 80 % of it, then clear', async (t) => {
  const raised = new Set<LagAlarmKind>();
  const step = (s: number, j: number) => {
    const changes = lagAlarmChanges(raised, fig(s, j), th);
    for (const c of changes) (c.raised ? raised.add(c.kind) : raised.delete(c.kind));
    return changes.map((c) => `${c.kind}:${c.raised}`);
  };
  t.same(step(10, 80), [], 'at the thresholds: nothing');
  t.same(step(10.5, 81), ['rpoExceeded:true', 'journalHigh:true'], 'past both: both raised');
  t.same(step(11, 90), [], 'raised once, not at every tick');
  t.same(step(9, 70), [], 'under the thresholds but above 80 % of them: still raised');
  t.same(step(8, 64), ['rpoExceeded:false', 'journalHigh:false'], 'at 80 %: cleared');
  t.same(step(0, 0), [], 'nothing more to clear');
});

t.test('a threshold of 0 turns its alarm off, and clears one raised before', async (t) => {
  t.same(lagAlarmChanges(new Set(), fig(1e6, 100), { rpoAlarmSeconds: 0, journalAlarmPercent: 0 }), [], 'off: never raised');
  t.same(lagAlarmChanges(new Set<LagAlarmKind>(['rpoExceeded']), fig(1e6, 0), { rpoAlarmSeconds: 0, journalAlarmPercent: 80 }).map((c) => c.raised), [false],
    'turned off while raised: cleared');
  t.same(lagAlarmChanges(new Set(), { secondsBehind: 0, journalUsedBytes: 0, journalCapacityBytes: 0 }, th), [], 'no journal: no division by zero');
});
