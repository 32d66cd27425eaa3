import { isVrgError } from '../../src/core/errors.js';

/** The VrgError code `fn` throws, a marker for any other error, or undefined when it does not throw. */
export function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isVrgError(err) ? err.code : `non-VrgError: ${(err as Error).message}`;
  }
  return undefined;
}
