// Assertions guard invariants: a failure is a bug in VRG, never an expected runtime condition.
// Expected conditions (bad input, a dead peer, a full journal) are VrgErrors from errors.ts instead.

export class AssertionError extends Error {
  constructor(message: string) {
    super(`assertion failed: ${message}`);
    this.name = 'AssertionError';
  }
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function unreachable(value: never, message = 'unreachable'): never {
  throw new AssertionError(`${message}: ${String(value)}`);
}
