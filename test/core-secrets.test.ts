import { randomBytes } from 'node:crypto';
import t from 'tap';
import { ErrorCode, vrgError } from '../src/core/errors.js';
import { createLogger } from '../src/core/log.js';
import { noteSecret, REDACTED } from '../src/core/secrets.js';

// The logger's three nets (src/core/log.ts): secret-named fields, errors' details, and the values learned as
// secrets, cut from any line; VrgError messages and details carry none either.

function capture() {
  const lines: string[] = [];
  return { lines, logger: createLogger('test', 'debug', { write: (s: string) => void lines.push(s) }) };
}

t.test('secret-named fields are censored at any of three levels, in any case', async (t) => {
  const { lines, logger } = capture();
  logger.info({ secret: 's1-value', link: { secret: 's2-value' }, a: { b: { password: 's3-value' } },
    'x-auth-token': 's4-value', headers: { authorization: 's5-value' }, clusterPairingKey: 's6-value' }, 'fields');
  for (const v of ['s1', 's2', 's3', 's4', 's5', 's6']) t.notMatch(lines[0]!, `${v}-value`, `${v} censored`);
  t.match(lines[0]!, REDACTED);
});

t.test('a learned secret is cut from messages, fields and errors, in hex, base64 and JSON-escaped', async (t) => {
  const { lines, logger } = capture();
  const bytes = randomBytes(32);
  const password = `pa"ss\\${randomBytes(4).toString('hex')}`;
  noteSecret(bytes);
  noteSecret(password);
  logger.info(`hex ${bytes.toString('hex')} HEX ${bytes.toString('hex').toUpperCase()}`);
  logger.info({ anything: bytes.toString('base64'), other: bytes.toString('base64url') }, 'fields');
  logger.warn({ err: new Error(`boom ${password}`) }, 'error');
  logger.debug({ note: password }, 'escaped');
  const all = lines.join('');
  for (const e of [bytes.toString('hex'), bytes.toString('hex').toUpperCase(), bytes.toString('base64').replace(/=+$/, ''),
    bytes.toString('base64url'), JSON.stringify(password).slice(1, -1)]) t.notOk(all.includes(e), `${e.slice(0, 8)}... cut`);
  t.equal(lines.length, 4, 'every line still written');
});

t.test('a VrgError carries no secret in its message or details, and logs none', async (t) => {
  const secret = randomBytes(16);
  noteSecret(secret);
  const err = vrgError(ErrorCode.INVALID_ARGUMENT, `bad ${secret.toString('hex')}`, { psk: 'raw-psk-value', nested: { token: 'raw-token' }, path: '$.x' });
  t.notMatch(err.message, secret.toString('hex'));
  t.same(err.details, { psk: REDACTED, nested: { token: REDACTED }, path: '$.x' }, 'other details kept');
  t.equal(err.code, ErrorCode.INVALID_ARGUMENT);
  const { lines, logger } = capture();
  logger.error({ err }, 'failed');
  t.notMatch(lines[0]!, 'raw-psk-value');
  t.match(lines[0]!, ErrorCode.INVALID_ARGUMENT, 'the code stays');
});
