import { pino, destination, stdSerializers, type DestinationStream, type Logger } from 'pino';
import { isVrgError } from './errors.js';
import { REDACTED, redactFields, scrubSecrets, secretFieldPaths } from './secrets.js';

export type { Logger };

/** An error as a log field: pino's shape, details' secret fields censored, learned secrets cut from the text. */
function errSerializer(err: unknown): unknown {
  if (!(err instanceof Error)) return typeof err === 'string' ? scrubSecrets(err) : redactFields(err);
  const out = stdSerializers.err(err) as unknown as Record<string, unknown>;
  if (isVrgError(err) && err.details !== undefined) out.details = redactFields(err.details);
  return JSON.parse(scrubSecrets(JSON.stringify(redactFields(out)))) as unknown;
}

/**
 * JSON lines on stderr, so stdout stays for the CLI's machine-readable lines. Secrets never reach them: fields
 * named as secrets are censored (pino's redact), errors go through errSerializer, and each line is scrubbed of
 * the secrets this process learned (src/core/secrets.ts) before it is written.
 */
export function createLogger(name: string, level = process.env.VRG_LOG_LEVEL ?? 'info', dest: DestinationStream = destination(2)): Logger {
  return pino({
    name, level, base: { name, pid: process.pid },
    redact: { paths: secretFieldPaths(), censor: REDACTED },
    serializers: { err: errSerializer, error: errSerializer },
    hooks: { streamWrite: scrubSecrets },
  }, dest);
}

export const silentLogger: Logger = pino({ level: 'silent' });
