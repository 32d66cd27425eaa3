import { ErrorCode, vrgError } from '../core/errors.js';
import { seededRandom } from '../core/random.js';

// The fault catalogue of `vrg chaos` and the schedule a seed draws from it. The schedule is a pure function
// of (seed, duration, faults): the same command line replays the same faults in the same order at the same
// offsets. One fault at a time, each followed by its recovery and a quiet gap, so that every fault's effect
// is seen on its own and the pair must recover from each before the next.
//
// Link faults act through the fault proxy between the gateways (src/chaos/fault-proxy): `upstream` there is
// production → DR (the write batches), `downstream` DR → production (the acknowledgements).

export const faultKinds = [
  'kill-production', // SIGKILL, restarted after `forMs`: journal recovery, link resume
  'kill-dr', // SIGKILL, restarted after `forMs`: the DR log replays past its checkpoint
  'freeze-production', // SIGSTOP for `forMs`, then SIGCONT: a VM host stall, heartbeats missed
  'freeze-dr',
  'link-cut', // every connection reset at once (TCP RST both ways)
  'partition', // the proxy down for `forMs`: connections cut and refused
  'latency', // latency ± jitter on both directions for `forMs`
  'bandwidth', // production → DR capped for `forMs`
  'corrupt', // bits flipped in production → DR bytes for `forMs`: the AEAD tag must refuse each frame
  'truncate', // each connection closed after `bytes` production → DR bytes, for `forMs`
  'slow-close', // closes held back, then a cut
  'slicer', // production → DR in small slices with delays (frames split across many reads)
  // DR's target disk (a real write agent: nbdkit with its error and rate filters):
  'dr-disk-errors', // every write and flush to DR's target fails with EIO for `forMs`: DR holds on to its log and retries
  'dr-disk-slow', // DR's target takes writes at `rate` kbit/s for `forMs`
  // Operations, as an operator would run them in the middle of all this:
  'pause', // replication paused for `forMs` (writes go on into the journal, Sync ones acknowledged locally), then resumed
  'check', // a consistency check requested: DR's regions compared with the source's, any difference repaired
  'mode-flip', // the VM switched to the other of Async and Sync for `forMs`, then back
] as const;
export type FaultKind = (typeof faultKinds)[number];

/** Faults that need DR's target behind nbdkit. */
export const diskFaultKinds: readonly FaultKind[] = ['dr-disk-errors', 'dr-disk-slow'];

export interface ScheduledFault {
  /** Order in the schedule, from 1. */
  n: number;
  kind: FaultKind;
  /** Offset from the start of the load. */
  atMs: number;
  /** How long the fault lasts before its recovery (0 for instantaneous ones). */
  forMs: number;
  /** The toxic's attributes (link faults), from the seed. */
  params: Record<string, number>;
}

export interface ScheduleOptions {
  seed: number;
  durationMs: number;
  faults: readonly FaultKind[];
}

export function parseFaultList(v: string): FaultKind[] {
  const list = v.split(',').map((s) => s.trim()).filter(Boolean);
  if (list.length === 0) throw vrgError(ErrorCode.INVALID_ARGUMENT, '--faults needs at least one fault');
  for (const f of list) {
    if (!(faultKinds as readonly string[]).includes(f)) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, `unknown fault "${f}": one of ${faultKinds.join(', ')}`, { fault: f });
    }
  }
  return list as FaultKind[];
}

/** The faults of one run, in order. The first comes after 2 s of clean load; the last ends 1 s before the end. */
export function planSchedule(o: ScheduleOptions): ScheduledFault[] {
  if (o.faults.length === 0) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'a schedule needs at least one fault kind');
  const rnd = seededRandom(o.seed);
  const between = (lo: number, hi: number): number => lo + Math.floor(rnd.float() * (hi - lo + 1));
  const out: ScheduledFault[] = [];
  let at = 2_000;
  for (;;) {
    const kind = o.faults[Math.floor(rnd.float() * o.faults.length)]!;
    const { forMs, params } = draw(kind, between);
    if (at + forMs + 1_000 > o.durationMs) break;
    out.push({ n: out.length + 1, kind, atMs: at, forMs, params });
    at += forMs + between(1_000, 3_000);
  }
  return out;
}

function draw(kind: FaultKind, between: (lo: number, hi: number) => number): { forMs: number; params: Record<string, number> } {
  switch (kind) {
    case 'kill-production':
    case 'kill-dr': return { forMs: between(200, 2_000), params: {} };
    case 'freeze-production':
    case 'freeze-dr': return { forMs: between(300, 3_000), params: {} };
    case 'link-cut': return { forMs: 0, params: {} };
    case 'partition': return { forMs: between(500, 4_000), params: {} };
    case 'latency': {
      const latency = between(5, 150);
      return { forMs: between(1_000, 4_000), params: { latency, jitter: between(0, Math.floor(latency / 2)) } };
    }
    case 'bandwidth': return { forMs: between(1_000, 4_000), params: { rate: between(100, 4_000) } };
    case 'corrupt': return { forMs: between(500, 3_000), params: { probability: between(5, 50) / 100, bits: 2 * between(0, 3) + 1 } };
    case 'truncate': return { forMs: between(500, 3_000), params: { bytes: between(1_000, 2_000_000) } };
    case 'slow-close': return { forMs: between(100, 1_500), params: { delay: between(100, 1_500) } };
    case 'dr-disk-errors': return { forMs: between(200, 2_000), params: {} };
    case 'dr-disk-slow': return { forMs: between(1_000, 4_000), params: { rate: between(20_000, 80_000) } };
    case 'pause': return { forMs: between(300, 3_000), params: {} };
    case 'check': return { forMs: 0, params: {} };
    case 'mode-flip': return { forMs: between(1_000, 4_000), params: {} };
    case 'slicer': return { forMs: between(1_000, 3_000), params: { average_size: between(16, 2_048), size_variation: between(0, 15), delay: between(0, 500) } };
  }
}

export function describeFault(f: ScheduledFault): string {
  const p = Object.entries(f.params).map(([k, v]) => `${k}=${v}`).join(' ');
  return `${f.kind}${f.forMs > 0 ? ` for ${(f.forMs / 1000).toFixed(1)}s` : ''}${p ? ` (${p})` : ''}`;
}
