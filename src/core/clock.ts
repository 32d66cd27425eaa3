import { ErrorCode, vrgError } from './errors.js';
// The engine never reads time directly: a simulator can substitute virtual time.

export interface TimerHandle {
  cancel(): void;
}

export interface Clock {
  /** Wall-clock milliseconds since the epoch (timestamps in records and status). */
  nowMs(): number;
  /** Monotonic nanoseconds, for latency measurement and timeouts. */
  monotonicNs(): bigint;
  /** Run `fn` once after `ms`; the handle cancels it. Timers never keep the process alive. */
  setTimer(ms: number, fn: () => void): TimerHandle;
}

export const systemClock: Clock = {
  nowMs: () => Date.now(),
  monotonicNs: () => process.hrtime.bigint(),
  setTimer(ms, fn) {
    const t = setTimeout(fn, ms);
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
};

export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimer(ms, resolve));
}

/** `work`, or a VRG_TIMEOUT error saying `what` once `ms` passed first (the work itself is not stopped). */
export function withTimeout<T>(clock: Clock, ms: number, work: Promise<T>, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = clock.setTimer(ms, () => reject(vrgError(ErrorCode.TIMEOUT, what, { timeoutMs: ms })));
    work.then((v) => {
      timer.cancel();
      resolve(v);
    }, (err: unknown) => {
      timer.cancel();
      reject(err);
    });
  });
}

export function elapsedMs(clock: Clock, sinceNs: bigint): number {
  return Number(clock.monotonicNs() - sinceNs) / 1e6;
}
