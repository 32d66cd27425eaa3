// Bounded waits for tests: every wait on replication has a deadline of seconds, not tap's 300 s, and on
// expiry the error says what the pair was doing (link, shipper window and acked seq, journal head, intake
// backlog, DR apply queue), so a stall explains itself.

/** Default bound of a wait on replication progress (a healthy test pair drains in well under a second per MiB). */
export const stallTimeoutMs = 30_000;

export class StallError extends Error {
  readonly code = 'TEST_STALLED';
  constructor(what: string, ms: number, readonly state: unknown) {
    super(`${what}: not done after ${ms} ms; state:\n${JSON.stringify(state, null, 1)}`);
  }
}

/** Resolves with `p`, or rejects with a StallError carrying `explain()` once `ms` pass. */
export function within<T>(p: Promise<T>, what: string, explain: () => unknown = () => null, ms = stallTimeoutMs): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StallError(what, ms, safely(explain))), ms);
  });
  return Promise.race([p, expired]).finally(() => clearTimeout(timer));
}

/** Polls `fn` until it returns a truthy value; a StallError with `explain()` after `ms`. */
export async function until<T>(fn: () => Promise<T> | T, ms = 15_000, what = 'condition', explain: () => unknown = () => null): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new StallError(`waiting for ${what}`, ms, safely(explain));
    await new Promise((r) => setTimeout(r, 20));
  }
}

function safely(explain: () => unknown): unknown {
  try {
    return explain();
  } catch (err) {
    return `(could not describe the state: ${(err as Error).message})`;
  }
}

interface Diagnosable { diagnostics(): unknown }

/** Both gateways' pipelines, for a StallError. */
export function pairState(prod: Diagnosable | null, dr: Diagnosable | null): () => unknown {
  return () => ({ production: prod?.diagnostics() ?? null, dr: dr?.diagnostics() ?? null });
}

/** `prod.drain()` bounded: a StallError with both gateways' state when replication stops moving. */
export function drained(prod: Diagnosable & { drain(): Promise<void> }, dr: Diagnosable | null, ms = stallTimeoutMs): Promise<void> {
  return within(prod.drain(), 'drain (DR to acknowledge everything written)', pairState(prod, dr), ms);
}
