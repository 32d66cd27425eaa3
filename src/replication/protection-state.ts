import { assert } from '../core/assert.js';
import { ErrorCode, vrgError } from '../core/errors.js';

// The per-VM protection state machine of issue 4, as a pure function (no I/O, no clock, no callbacks):
//   transition(state, event, nowMs) -> { state, effects }
// The driver feeds it events (journal overflow, link up/down, resync drained, check results, operator
// requests, a periodic tick) and performs the effects, which are plain data. The allowed (state, event)
// pairs are the explicit TABLE below; any other pair throws VRG_ILLEGAL_TRANSITION naming both.
//
// States (the VRG document's, `status` for the REST vmdrstatus):
//   1 queue  incremental queue: writes go to the journal, the journal is shipped in order
//   2 cbt    incremental CBT: the journal overflowed or the link stayed down too long; writes mark a dirty
//            bitmap, a resync ships the dirty blocks' current content
//   3 check  consistency check: per-region digests compared; differing regions reshipped (`repairing`);
//            writes meanwhile go to the journal and are shipped as in queue
// Orthogonal facts kept in the state: mode (async | sync | snapshots), syncDegraded, pausedManual, link.
//
// Decisions (beyond the text):
// - Time is the `nowMs` argument of every transition; `tick` carries nothing else. The link-down limit is
//   `linkDownCbtAfterMs` in async mode and `syncDegradeAfterMs` in sync mode (there writes wait for DR
//   instead of piling up in the journal); snapshots mode never leaves queue because of the link.
//   "Longer than" is strict: down for exactly the limit is still within it.
// - In sync mode, being in cbt implies syncDegraded (CBT cannot acknowledge a write only once DR has it):
//   entering cbt in sync mode, for whatever reason, degrades and raises the `syncDegraded` alarm.
//   syncDegraded is cleared only by a clean consistency check (or by leaving sync mode). A check that
//   found and repaired differences while degraded is followed by another check (`verify-after-repair`)
//   instead of queue, so sync returns only after a check that found nothing.
// - On-demand check (`checkRequested`): queue -> check. In cbt and check it is accepted and absorbed
//   (no effect): a check follows the resync anyway, and a running check already does what was asked.
// - Pause / resume are allowed in every state and idempotent. While paused nothing is shipped
//   (`stopShipping`), writes are still tracked (journal, then cbt on overflow). A paused sync VM
//   acknowledges writes locally (otherwise they would hang); it is not marked degraded unless it enters cbt.
// - Mode changes: entering snapshots stops live shipping (`stopLiveShipping`) and clears syncDegraded; the
//   state name is kept. Leaving snapshots for async/sync goes to check from any state (live writes were not
//   shipped, so DR holds only the last snapshot; a check repairs what differs, subsuming any CBT bitmap).
//   async -> sync from cbt degrades at once (rule above). sync -> async clears syncDegraded.
// - `recovered` (production gateway restarted after a crash): queue and check -> check (a fresh check:
//   cheap when clean, and it also covers a future write-back mode where the source may hold writes the
//   journal lacks); cbt stays cbt and restarts the resync (the bitmap is persistent and a check follows the
//   drain anyway). The link is considered down from that instant (the crash dropped the connection).
// - `journalOverflow` in check -> cbt (the check is abandoned; resync, then a new check). In cbt the
//   journal is not used, so an overflow there is illegal.
// - Work effects (`resumeQueue`, `startResync`, `startConsistencyCheck`, `shipRegions`) mean "make sure this
//   is running" and are emitted only when live shipping is possible (link up, not paused, not snapshots);
//   otherwise the same effects come with the `linkUp` / `resume` / mode change that makes it possible.
//   The driver treats them as idempotent.
// - `setAckPolicy { waitForDr }` is emitted whenever whether a write's ack waits for DR changes
//   (true only in sync mode, not degraded, not paused).
// - Counters count state changes only (from !== to); restarting a check within check is not counted.

export type StateName = 'queue' | 'cbt' | 'check';
export type Mode = 'async' | 'sync' | 'snapshots';
export type Status = 1 | 2 | 3;
export type TransitionKey = `${StateName}->${StateName}`;

export interface Region {
  volumeIndex: number;
  offset: number;
  length: number;
}

export interface Options {
  /** Async mode: link down longer than this -> cbt. */
  linkDownCbtAfterMs: number;
  /** Sync mode: link down longer than this -> Async-with-CBT (syncDegraded). */
  syncDegradeAfterMs: number;
}

export interface LastTransition {
  from: StateName;
  to: StateName;
  atMs: number;
  reason: string;
}

export interface State {
  readonly opts: Readonly<Options>;
  readonly name: StateName;
  readonly status: Status;
  readonly mode: Mode;
  readonly syncDegraded: boolean;
  readonly pausedManual: boolean;
  readonly linkUp: boolean;
  readonly linkUpSinceMs: number | null;
  readonly linkDownSinceMs: number | null;
  /** In check: differing regions were found and are being reshipped. */
  readonly repairing: boolean;
  /** In check: the regions being repaired (re-sent after a link drop or resume). */
  readonly repairRegions: readonly Region[];
  /** In check: why the current check runs. */
  readonly checkReason: string | null;
  /** State changes per (from, to); the six keys with from !== to, all present. */
  readonly transitions: Readonly<Record<TransitionKey, number>>;
  readonly lastTransition: LastTransition | null;
}

export type Event =
  | { type: 'journalOverflow' }
  | { type: 'resyncNeeded'; reason: string }
  | { type: 'tick' }
  | { type: 'linkUp' }
  | { type: 'linkDown' }
  | { type: 'resyncDrained' }
  | { type: 'checkClean' }
  | { type: 'checkDiffers'; regions: readonly Region[] }
  | { type: 'repairDone' }
  | { type: 'checkRequested'; reason?: string }
  | { type: 'pause' }
  | { type: 'resume' }
  | { type: 'setMode'; mode: Mode }
  | { type: 'recovered' };
export type EventType = Event['type'];

export type Effect =
  | { type: 'log'; from: StateName; to: StateName; reason: string }
  | { type: 'startCbtTracking' }
  | { type: 'stopCbtTracking' }
  | { type: 'startResync' }
  | { type: 'startConsistencyCheck'; reason: string }
  | { type: 'shipRegions'; regions: readonly Region[] }
  | { type: 'resumeQueue' }
  | { type: 'stopShipping' }
  | { type: 'startShipping' }
  | { type: 'stopLiveShipping' }
  | { type: 'modeChanged'; from: Mode; to: Mode }
  | { type: 'setAckPolicy'; waitForDr: boolean }
  | { type: 'alarm'; kind: 'syncDegraded'; raised: boolean };

export interface Result {
  state: State;
  effects: Effect[];
}

export const stateNames: readonly StateName[] = ['queue', 'cbt', 'check'];
export const modes: readonly Mode[] = ['async', 'sync', 'snapshots'];
export const eventTypes: readonly EventType[] = [
  'journalOverflow', 'resyncNeeded', 'tick', 'linkUp', 'linkDown', 'resyncDrained', 'checkClean', 'checkDiffers',
  'repairDone', 'checkRequested', 'pause', 'resume', 'setMode', 'recovered',
];

export function stateNumber(name: StateName): Status {
  switch (name) {
    case 'queue': return 1;
    case 'cbt': return 2;
    case 'check': return 3;
  }
}

type Handler = (s: State, ev: Event, nowMs: number) => Result;

interface Row {
  from: StateName;
  event: EventType;
  /** The states this row can lead to (checked by the tests). */
  to: readonly StateName[];
  handler: Handler;
}

// ---- helpers -------------------------------------------------------------------------------------------

function illegal(s: State, ev: EventType, why?: string): never {
  const tail = why === undefined ? '' : ` (${why})`;
  throw vrgError(ErrorCode.ILLEGAL_TRANSITION, `event "${ev}" is not allowed in state "${s.name}"${tail}`,
    { state: s.name, event: ev, ...(why === undefined ? {} : { why }) });
}

function canShipLive(s: State): boolean {
  return s.linkUp && !s.pausedManual && s.mode !== 'snapshots';
}

/** Whether a write's ack waits for DR in state `s` (the intake's ack policy; setAckPolicy reports its changes). */
export function waitsForDr(s: State): boolean {
  return s.mode === 'sync' && !s.syncDegraded && !s.pausedManual;
}

/** The "make sure this is running" effects of the current state, when live shipping is possible. */
function workEffects(s: State): Effect[] {
  if (!canShipLive(s)) return [];
  switch (s.name) {
    case 'queue': return [{ type: 'resumeQueue' }];
    case 'cbt': return [{ type: 'startResync' }];
    case 'check':
      return s.repairing
        ? [{ type: 'resumeQueue' }, { type: 'shipRegions', regions: s.repairRegions }]
        : [{ type: 'resumeQueue' }, { type: 'startConsistencyCheck', reason: s.checkReason ?? 'check' }];
  }
}

/** Effects for orthogonal facts that changed between two states (alarm, ack policy). */
function factEffects(before: State, after: State): Effect[] {
  const out: Effect[] = [];
  if (before.syncDegraded !== after.syncDegraded) out.push({ type: 'alarm', kind: 'syncDegraded', raised: after.syncDegraded });
  if (waitsForDr(before) !== waitsForDr(after)) out.push({ type: 'setAckPolicy', waitForDr: waitsForDr(after) });
  return out;
}

function withName(s: State, name: StateName): State {
  return { ...s, name, status: stateNumber(name) };
}

/**
 * Moves to `to` (a state change when `to !== s.name`, else a restart of `to`'s work): clears check fields,
 * applies the sync-in-cbt rule, counts, and returns the effects (log first, then CBT on/off, facts, work).
 */
function enter(s: State, to: StateName, reason: string, nowMs: number, factsFrom: State = s): Result {
  const from = s.name;
  let next: State = { ...withName(s, to), repairing: false, repairRegions: [], checkReason: to === 'check' ? reason : null };
  if (to === 'cbt' && next.mode === 'sync') next = { ...next, syncDegraded: true };
  const effects: Effect[] = [];
  if (from !== to) {
    const key: TransitionKey = `${from}->${to}`;
    next = {
      ...next,
      transitions: { ...s.transitions, [key]: s.transitions[key] + 1 },
      lastTransition: { from, to, atMs: nowMs, reason },
    };
    effects.push({ type: 'log', from, to, reason });
    if (from === 'cbt') effects.push({ type: 'stopCbtTracking' });
    if (to === 'cbt') effects.push({ type: 'startCbtTracking' });
  }
  effects.push(...factEffects(factsFrom, next), ...workEffects(next));
  return { state: next, effects };
}

function stay(s: State): Result {
  return { state: s, effects: [] };
}

function linkDownLongerThan(s: State, limitMs: number, nowMs: number): boolean {
  return !s.linkUp && s.linkDownSinceMs !== null && nowMs - s.linkDownSinceMs > limitMs;
}

// ---- handlers ------------------------------------------------------------------------------------------

const toCbt = (reason: string): Handler => (s, _ev, now) => enter(s, 'cbt', reason, now);
/** Initial sync of a new volume, a dirty bitmap found at restart, a lost bitmap: the reason travels with the event. */
const onResyncNeeded: Handler = (s, ev, now) => enter(s, 'cbt', (ev as { reason: string }).reason, now);

const onTick: Handler = (s, _ev, now) => {
  if (s.name === 'cbt') return stay(s); // sync in cbt is already degraded; nothing more to do
  if (s.mode === 'sync' && linkDownLongerThan(s, s.opts.syncDegradeAfterMs, now)) return enter(s, 'cbt', 'sync-link-down-timeout', now);
  if (s.mode === 'async' && linkDownLongerThan(s, s.opts.linkDownCbtAfterMs, now)) return enter(s, 'cbt', 'link-down-timeout', now);
  return stay(s);
};

const onLinkUp: Handler = (s, _ev, now) => {
  if (s.linkUp) return stay(s);
  const next: State = { ...s, linkUp: true, linkUpSinceMs: now, linkDownSinceMs: null };
  return { state: next, effects: [...factEffects(s, next), ...workEffects(next)] };
};

const onLinkDown: Handler = (s, _ev, now) => {
  if (!s.linkUp) return stay(s);
  return { state: { ...s, linkUp: false, linkUpSinceMs: null, linkDownSinceMs: now }, effects: [] };
};

const onCheckRequestedInQueue: Handler = (s, ev, now) =>
  enter(s, 'check', (ev as { reason?: string }).reason ?? 'on-demand', now);

const onCheckClean: Handler = (s, ev, now) => {
  if (s.repairing) illegal(s, ev.type, 'a repair is in progress; expected repairDone');
  return enter({ ...s, syncDegraded: false }, 'queue', 'check-clean', now, s);
};

const onCheckDiffers: Handler = (s, ev) => {
  if (s.repairing) illegal(s, ev.type, 'a repair is in progress; expected repairDone');
  const regions = validateRegions((ev as { regions: readonly Region[] }).regions);
  const next: State = { ...s, repairing: true, repairRegions: regions };
  return { state: next, effects: canShipLive(next) ? [{ type: 'shipRegions', regions }] : [] };
};

const onRepairDone: Handler = (s, ev, now) => {
  if (!s.repairing) illegal(s, ev.type, 'no repair is in progress');
  // Sync returns only after a check that found nothing: re-verify while degraded.
  if (s.syncDegraded) return enter(s, 'check', 'verify-after-repair', now);
  return enter(s, 'queue', 'repair-done', now);
};

const onPause: Handler = (s) => {
  if (s.pausedManual) return stay(s);
  const next: State = { ...s, pausedManual: true };
  return { state: next, effects: [{ type: 'stopShipping' }, ...factEffects(s, next)] };
};

const onResume: Handler = (s) => {
  if (!s.pausedManual) return stay(s);
  const next: State = { ...s, pausedManual: false };
  return { state: next, effects: [{ type: 'startShipping' }, ...factEffects(s, next), ...workEffects(next)] };
};

const onSetMode: Handler = (s, ev, now) => {
  const to = (ev as { mode: Mode }).mode;
  if (!modes.includes(to)) throw vrgError(ErrorCode.INVALID_ARGUMENT, `unknown mode ${String(to)}`, { mode: to });
  const from = s.mode;
  if (to === from) return stay(s);
  const changed: Effect = { type: 'modeChanged', from, to };
  if (to === 'snapshots') {
    const next: State = { ...s, mode: to, syncDegraded: false };
    return { state: next, effects: [changed, { type: 'stopLiveShipping' }, ...factEffects(s, next)] };
  }
  if (from === 'snapshots') {
    const r = enter({ ...s, mode: to }, 'check', 'left-snapshots', now, s);
    return { state: r.state, effects: [changed, ...r.effects] };
  }
  // async <-> sync
  const next: State = { ...s, mode: to, syncDegraded: to === 'sync' && s.name === 'cbt' };
  return { state: next, effects: [changed, ...factEffects(s, next)] };
};

const onRecovered: Handler = (s, _ev, now) => {
  const down: State = { ...s, linkUp: false, linkUpSinceMs: null, linkDownSinceMs: now };
  if (s.name === 'cbt') return { state: down, effects: [...factEffects(s, down), { type: 'startCbtTracking' }] };
  return enter(down, 'check', 'recovered', now);
};

// ---- the table -----------------------------------------------------------------------------------------

const common = (from: StateName): Row[] => [
  { from, event: 'tick', to: from === 'cbt' ? ['cbt'] : [from, 'cbt'], handler: onTick },
  { from, event: 'linkUp', to: [from], handler: onLinkUp },
  { from, event: 'linkDown', to: [from], handler: onLinkDown },
  { from, event: 'pause', to: [from], handler: onPause },
  { from, event: 'resume', to: [from], handler: onResume },
  { from, event: 'setMode', to: [from, 'check'], handler: onSetMode },
  { from, event: 'recovered', to: from === 'cbt' ? ['cbt'] : ['check'], handler: onRecovered },
];

const TABLE: readonly Row[] = [
  { from: 'queue', event: 'journalOverflow', to: ['cbt'], handler: toCbt('journal-overflow') },
  { from: 'queue', event: 'checkRequested', to: ['check'], handler: onCheckRequestedInQueue },
  { from: 'queue', event: 'resyncNeeded', to: ['cbt'], handler: onResyncNeeded },
  ...common('queue'),

  { from: 'cbt', event: 'resyncDrained', to: ['check'], handler: (s, _e, now) => enter(s, 'check', 'cbt-resync-drained', now) },
  { from: 'cbt', event: 'checkRequested', to: ['cbt'], handler: stay },
  { from: 'cbt', event: 'resyncNeeded', to: ['cbt'], handler: stay },
  ...common('cbt'),

  { from: 'check', event: 'journalOverflow', to: ['cbt'], handler: toCbt('journal-overflow') },
  { from: 'check', event: 'resyncNeeded', to: ['cbt'], handler: onResyncNeeded },
  { from: 'check', event: 'checkClean', to: ['queue'], handler: onCheckClean },
  { from: 'check', event: 'checkDiffers', to: ['check'], handler: onCheckDiffers },
  { from: 'check', event: 'repairDone', to: ['queue', 'check'], handler: onRepairDone },
  { from: 'check', event: 'checkRequested', to: ['check'], handler: stay },
  ...common('check'),
];

const rowsByKey = new Map<string, Row>(TABLE.map((r) => [`${r.from}:${r.event}`, r]));
assert(rowsByKey.size === TABLE.length, 'protection-state table has duplicate rows');

/** The table's rows, for tests and documentation. */
export function tableRows(): ReadonlyArray<{ from: StateName; event: EventType; to: readonly StateName[] }> {
  return TABLE.map(({ from, event, to }) => ({ from, event, to }));
}

export function allowedEvents(name: StateName): EventType[] {
  return TABLE.filter((r) => r.from === name).map((r) => r.event);
}

// ---- entry points --------------------------------------------------------------------------------------

function validateOptions(opts: Options): Readonly<Options> {
  for (const k of ['linkDownCbtAfterMs', 'syncDegradeAfterMs'] as const) {
    const v = (opts as unknown as Record<string, unknown> | null | undefined)?.[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `${k} must be a finite number of milliseconds >= 0`, { [k]: v });
    }
  }
  return Object.freeze({ linkDownCbtAfterMs: opts.linkDownCbtAfterMs, syncDegradeAfterMs: opts.syncDegradeAfterMs });
}

function validateRegions(regions: readonly Region[]): readonly Region[] {
  if (!Array.isArray(regions) || regions.length === 0) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, 'checkDiffers needs a non-empty list of regions (none differing is checkClean)');
  }
  for (const r of regions) {
    const ok = Number.isSafeInteger(r.volumeIndex) && r.volumeIndex >= 0 && Number.isSafeInteger(r.offset)
      && r.offset >= 0 && Number.isSafeInteger(r.length) && r.length > 0;
    if (!ok) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'bad region', { region: r });
  }
  return regions.map((r) => ({ volumeIndex: r.volumeIndex, offset: r.offset, length: r.length }));
}

function validateNow(nowMs: number): void {
  if (typeof nowMs !== 'number' || !Number.isFinite(nowMs)) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, 'nowMs must be a finite number', { nowMs });
  }
}

/** A VM's state when protection starts: queue, link not yet up (down since `nowMs`), not paused. */
export function initialState(opts: Options, mode: Mode, nowMs: number): State {
  const o = validateOptions(opts);
  if (!modes.includes(mode)) throw vrgError(ErrorCode.CONFIG_INVALID, `unknown mode ${String(mode)}`, { mode });
  validateNow(nowMs);
  const transitions = {} as Record<TransitionKey, number>;
  for (const f of stateNames) for (const t of stateNames) if (f !== t) transitions[`${f}->${t}`] = 0;
  return {
    opts: o, name: 'queue', status: 1, mode, syncDegraded: false, pausedManual: false,
    linkUp: false, linkUpSinceMs: null, linkDownSinceMs: nowMs,
    repairing: false, repairRegions: [], checkReason: null, transitions, lastTransition: null,
  };
}

/** Applies one event. Pure: `state` is not modified. Throws VRG_ILLEGAL_TRANSITION for a pair not in the table. */
export function transition(state: State, event: Event, nowMs: number): Result {
  validateNow(nowMs);
  const row = rowsByKey.get(`${state.name}:${event.type}`);
  if (row === undefined) illegal(state, event.type);
  const result = row.handler(state, event, nowMs);
  assert(row.to.includes(result.state.name), `row ${row.from}:${row.event} led to ${result.state.name}`);
  return result;
}
