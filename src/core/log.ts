import { pino, destination, type Logger } from 'pino';

export type { Logger };

/** JSON lines on stderr, so stdout stays for the CLI's machine-readable lines. */
export function createLogger(name: string, level = process.env.VRG_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { name, pid: process.pid } }, destination(2));
}

export const silentLogger: Logger = pino({ level: 'silent' });
