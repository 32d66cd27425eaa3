import type { AlarmKind } from '../control.js';

// The lag alarms of one VM (issue 16): RPO (seconds behind) over `rpoAlarmSeconds`, the journal fuller than
// `journalAlarmPercent`. A pure function of the figures and what is raised now: it raises past the threshold
// and clears only once the figure is back under 80 % of it, so a lag that hovers at the line does not send
// a trap at every tick. A threshold of 0 turns its alarm off.

export type LagAlarmKind = Extract<AlarmKind, 'rpoExceeded' | 'journalHigh'>;

export interface LagThresholds {
  rpoAlarmSeconds: number;
  journalAlarmPercent: number;
}

export interface LagFigures {
  secondsBehind: number;
  journalUsedBytes: number;
  journalCapacityBytes: number;
}

export interface LagAlarmChange {
  kind: LagAlarmKind;
  raised: boolean;
  detail: string;
}

const clearFraction = 0.8;

export function lagAlarmChanges(raised: ReadonlySet<LagAlarmKind>, f: LagFigures, th: LagThresholds): LagAlarmChange[] {
  const journalPercent = f.journalCapacityBytes > 0 ? (100 * f.journalUsedBytes) / f.journalCapacityBytes : 0;
  const checks: Array<{ kind: LagAlarmKind; value: number; limit: number; what: string }> = [
    { kind: 'rpoExceeded', value: f.secondsBehind, limit: th.rpoAlarmSeconds, what: `${f.secondsBehind.toFixed(1)} s behind (RPO alarm at ${th.rpoAlarmSeconds} s)` },
    { kind: 'journalHigh', value: journalPercent, limit: th.journalAlarmPercent, what: `journal ${journalPercent.toFixed(0)} % full (alarm at ${th.journalAlarmPercent} %)` },
  ];
  const out: LagAlarmChange[] = [];
  for (const c of checks) {
    const on = raised.has(c.kind);
    if (!on && c.limit > 0 && c.value > c.limit) out.push({ kind: c.kind, raised: true, detail: c.what });
    else if (on && (c.limit <= 0 || c.value <= c.limit * clearFraction)) out.push({ kind: c.kind, raised: false, detail: `cleared: ${c.what}` });
  }
  return out;
}
