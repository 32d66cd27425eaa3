import t, { type Test } from 'tap';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../src/core/clock.js';
import { ErrorCode, isVrgError } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';
import { AccountStore, DEFAULT_SCRYPT, passwordKey } from '../src/api/auth/account-store.js';
import { SessionManager } from '../src/api/auth/session-manager.js';
import { API_ERRORS, apiErrorOf } from '../src/api/auth/error-codes.js';

const FAST = { N: 1 << 10, r: 8, p: 1 };
const PW = 'Secret#123';
const KEY = passwordKey(PW);
const WRONG = passwordKey('not it');

function fakeClock(): Clock & { advance(ms: number): void } {
  let ms = 1_700_000_000_000;
  return {
    nowMs: () => ms,
    monotonicNs: () => BigInt(ms) * 1_000_000n,
    setTimer: () => ({ cancel() {} }),
    advance(d) { ms += d; },
  };
}

async function tmpDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-auth-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The document number (details.errorCode) `p` rejects with, checking the VrgError code agrees with the table. */
async function errNo(p: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    if (typeof p === 'function') p(); else await p;
  } catch (err) {
    if (!isVrgError(err)) return `non-VrgError: ${(err as Error).message}`;
    const n = err.details?.errorCode;
    return typeof n === 'string' && apiErrorOf(err).errorCode === n ? n : `no errorCode on ${err.code}`;
  }
  return undefined;
}

async function setup(t: Test, extra: { maxSessions?: number } = {}) {
  const dir = await tmpDir(t);
  const clock = fakeClock();
  const path = join(dir, 'accounts.json');
  const accounts = await AccountStore.open({ path, clock, random: seededRandom(1), scrypt: FAST });
  await accounts.setPassword('admin', PW);
  const sessions = new SessionManager({ accounts, uuid: 'vrg-uuid-1', clock, random: seededRandom(2), ...extra });
  return { dir, path, clock, accounts, sessions };
}

t.test('the store keeps only a salted scrypt hash: never the password or the key', async (t) => {
  const dir = await tmpDir(t);
  const path = join(dir, 'accounts.json');
  const accounts = await AccountStore.open({ path }); // default cost N = 2^15
  await accounts.setPassword('admin', PW);
  await accounts.setPassword('other', PW);
  const text = await readFile(path, 'utf8');
  const raw = Buffer.from(KEY, 'hex');
  for (const secret of [PW, KEY, KEY.toUpperCase(), raw.toString('base64'), raw.toString('base64url'), raw.toString('latin1')]) {
    t.notOk(text.includes(secret), 'secret form absent from the file');
  }
  const doc = JSON.parse(text) as { version: number; users: Record<string, { kdf: string; N: number; salt: string; hash: string }> };
  t.equal(doc.version, 1);
  t.same(Object.keys(doc.users), ['admin', 'other']);
  t.equal(doc.users.admin?.kdf, 'scrypt');
  t.equal(doc.users.admin?.N, DEFAULT_SCRYPT.N);
  t.not(doc.users.admin?.salt, doc.users.other?.salt, 'per-user salt');
  t.not(doc.users.admin?.hash, doc.users.other?.hash, 'same password, different hashes');
  t.equal((await stat(path)).mode & 0o777, 0o600, 'file mode 0600');
  await accounts.verify('admin', KEY);
  await accounts.verify('admin', KEY.toUpperCase()); // hex is case-insensitive: same key bytes
});

t.test('login, authenticate, wrong password, unknown user', async (t) => {
  const { sessions } = await setup(t);
  const r = await sessions.login('admin', KEY);
  t.equal(r.uuid, 'vrg-uuid-1');
  t.equal(r.validityMs, 600000);
  t.match(r.token, /^[A-Za-z0-9_-]{43}$/, '32 random bytes, base64url');
  const s = sessions.authenticate(r.token);
  t.equal(s.user, 'admin');
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202', 'wrong password');
  t.equal(await errNo(sessions.login('nobody', KEY)), '10440201', 'unknown user');
  t.equal(await errNo(() => sessions.authenticate('x'.repeat(43))), '10440102', 'unknown token');
  t.equal(await errNo(() => sessions.authenticate(undefined)), '10440102', 'no token');
  const r2 = await sessions.login('admin', KEY);
  t.not(r2.token, r.token, 'a new token per login');
  t.equal(sessions.size, 2);
});

t.test('lockout: 3rd wrong → 10440207, locked → 10440208 even with the right key, free after 5 min', async (t) => {
  const { sessions, clock, accounts } = await setup(t);
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202');
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202');
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440207', 'third wrong locks');
  t.equal(await errNo(sessions.login('admin', KEY)), '10440208', 'right key refused while locked');
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440208');
  clock.advance(5 * 60_000 - 1);
  t.equal(await errNo(sessions.login('admin', KEY)), '10440208', 'still locked 1 ms before the end');
  t.equal(accounts.lockedForMs('admin'), 1);
  clock.advance(1);
  await sessions.login('admin', KEY);
  t.pass('right key works after 5 minutes');
  // the count starts again from zero after the lock
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202');
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202');
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440207');
});

t.test('a right password before the third resets the counter; malformed keys do not count', async (t) => {
  const { sessions } = await setup(t);
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202');
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202');
  await sessions.login('admin', KEY);
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202', 'count restarted');
  t.equal(await errNo(sessions.login('admin', WRONG)), '10440202');
  t.equal(await errNo(sessions.login('admin', 'zz')), '10440200', 'malformed key');
  await sessions.login('admin', KEY);
  t.pass('still not locked');
});

t.test('concurrent wrong attempts lock exactly once', async (t) => {
  const { sessions } = await setup(t);
  const got = await Promise.all([1, 2, 3, 4, 5].map(() => errNo(sessions.login('admin', WRONG))));
  // scrypt runs on the thread pool, so completion order varies: count the answers
  t.same([...got].sort(), ['10440202', '10440202', '10440207', '10440208', '10440208']);
});

t.test('token validity: sliding 600000 ms idle timeout, plus the absolute cap', async (t) => {
  const { sessions, clock, accounts } = await setup(t);
  const a = (await sessions.login('admin', KEY)).token;
  const b = (await sessions.login('admin', KEY)).token;
  clock.advance(599_999);
  sessions.authenticate(a); // a's idle timer restarts; b is left alone
  clock.advance(1);
  t.equal(await errNo(() => sessions.authenticate(b)), '10440102', 'b expires exactly 600000 ms after its last use');
  clock.advance(599_998);
  t.equal(sessions.authenticate(a).user, 'admin', 'a still valid: sliding');
  clock.advance(600_000);
  t.equal(await errNo(() => sessions.authenticate(a)), '10440102', 'a expired after 600000 ms idle');
  t.equal(sessions.size, 0);

  const capped = new SessionManager({ accounts, uuid: 'u', clock, maxLifetimeMs: 1_000_000 });
  const c = (await capped.login('admin', KEY)).token;
  clock.advance(500_000);
  capped.authenticate(c);
  clock.advance(499_999);
  capped.authenticate(c);
  clock.advance(1);
  t.equal(await errNo(() => capped.authenticate(c)), '10440102', 'absolute cap ends even a busy session');
});

t.test('logout', async (t) => {
  const { sessions } = await setup(t);
  const { token } = await sessions.login('admin', KEY);
  sessions.logout(token);
  t.equal(await errNo(() => sessions.authenticate(token)), '10440102', 'token dead after logout');
  t.equal(await errNo(() => sessions.logout(token)), '10440205', 'second logout fails');
  t.equal(await errNo(() => sessions.logout(undefined)), '10440205');
});

t.test('bounded sessions: the least recently used is evicted', async (t) => {
  const { sessions } = await setup(t, { maxSessions: 3 });
  const toks: string[] = [];
  for (let i = 0; i < 3; i++) toks.push((await sessions.login('admin', KEY)).token);
  sessions.authenticate(toks[0]!); // 0 becomes most recent; 1 is now the oldest
  const d = (await sessions.login('admin', KEY)).token;
  t.equal(sessions.size, 3);
  t.equal(await errNo(() => sessions.authenticate(toks[1]!)), '10440102', 'LRU session evicted');
  for (const tok of [toks[0]!, toks[2]!, d]) t.equal(sessions.authenticate(tok).user, 'admin');
});

t.test('change password: old key required; old password stops working; other sessions end', async (t) => {
  const { sessions, path, clock } = await setup(t);
  const NEW = passwordKey('brand new pw');
  const mine = (await sessions.login('admin', KEY)).token;
  const other = (await sessions.login('admin', KEY)).token;
  const before = await readFile(path, 'utf8');
  t.equal(await errNo(sessions.changePassword(mine, WRONG, NEW)), '10440202', 'wrong old key');
  t.equal(await errNo(sessions.changePassword(mine, KEY, 'nothex')), '10440200', 'malformed new key');
  t.equal(await errNo(sessions.changePassword('bogus', KEY, NEW)), '10440102', 'needs a session');
  t.equal(await readFile(path, 'utf8'), before, 'refused changes leave the file alone');
  await sessions.changePassword(mine, KEY, NEW);
  t.equal(sessions.authenticate(mine).user, 'admin', 'the calling session stays');
  t.equal(await errNo(() => sessions.authenticate(other)), '10440102', 'other sessions of the user end');
  t.equal(await errNo(sessions.login('admin', KEY)), '10440202', 'old password refused');
  await sessions.login('admin', NEW);
  const reopened = await AccountStore.open({ path, clock });
  await reopened.verify('admin', NEW);
  t.equal(await errNo(reopened.verify('admin', KEY)), '10440202', 'change is durable');

  // wrong old keys count toward the lockout (the count was reset by the successful login above)
  t.equal(await errNo(sessions.changePassword(mine, WRONG, KEY)), '10440202');
  t.equal(await errNo(sessions.changePassword(mine, WRONG, KEY)), '10440202');
  t.equal(await errNo(sessions.changePassword(mine, WRONG, KEY)), '10440207');
  t.equal(await errNo(sessions.changePassword(mine, NEW, KEY)), '10440208');
});

t.test('persistence across reopen; a leftover .tmp does not corrupt; a corrupt store is refused', async (t) => {
  const dir = await tmpDir(t);
  const path = join(dir, 'accounts.json');
  const s1 = await AccountStore.open({ path, scrypt: FAST });
  t.same(s1.userNames(), [], 'missing file = empty store');
  await s1.setPassword('admin', PW);
  await s1.setPassword('ops.user-1', 'another');
  await writeFile(`${path}.tmp`, '{"version":1,"users":{"admin":{"kdf":"scr'); // a crash mid-write
  const s2 = await AccountStore.open({ path });
  t.same(s2.userNames(), ['admin', 'ops.user-1']);
  await s2.verify('admin', KEY);
  await s2.verify('ops.user-1', passwordKey('another'));
  await t.rejects(stat(`${path}.tmp`), 'leftover tmp removed on open');
  await s2.setPassword('admin', 'third');
  const s3 = await AccountStore.open({ path });
  await s3.verify('admin', passwordKey('third'));
  t.equal(s3.hasUser('ops.user-1'), true);

  await writeFile(path, '{"version":1,"users":{"admin":{"kdf":"scr');
  await t.rejects(AccountStore.open({ path }), { code: ErrorCode.CONFIG_INVALID });
});

t.test('bad user names and keys are refused with the right codes and change nothing', async (t) => {
  const { accounts, sessions, path } = await setup(t);
  const before = await readFile(path, 'utf8');
  for (const bad of ['', 'x'.repeat(21), 'a b', 'ünï', 'a/b', 'a\n']) {
    t.equal(await errNo(accounts.setPassword(bad, PW)), '10440101', `setPassword name ${JSON.stringify(bad)}`);
    t.equal(await errNo(sessions.login(bad, KEY)), '10440101', `login name ${JSON.stringify(bad)}`);
  }
  t.equal(await errNo(accounts.setPassword('x'.repeat(20), PW)), undefined, '20 characters is fine');
  const after20 = await readFile(path, 'utf8');
  t.not(after20, before);
  for (const bad of ['', 'abc', KEY.slice(1), `${KEY}0`, `${KEY.slice(2)}zz`, PW]) {
    t.equal(await errNo(sessions.login('admin', bad)), '10440200', `login key ${JSON.stringify(bad)}`);
    t.equal(await errNo(accounts.setKey('admin', bad)), '10440200', `setKey ${JSON.stringify(bad)}`);
  }
  t.equal(await errNo(accounts.setPassword('admin', '')), '10440200', 'empty password');
  t.equal(await errNo(accounts.setPassword('admin', 'p'.repeat(129))), '10440200', 'over-long password');
  t.equal(await readFile(path, 'utf8'), after20, 'file unchanged by refused requests');
  await sessions.login('admin', KEY);
  t.pass('admin password unchanged, not locked by malformed attempts');
});

t.test('error catalogue: every auth code has a number, status 400 and both languages', async (t) => {
  for (const n of ['10440000', '10440101', '10440102', '10440200', '10440201', '10440202', '10440205', '10440207', '10440208']) {
    const e = API_ERRORS[n];
    t.ok(e, n);
    t.equal(e?.httpStatus, 400);
    t.ok(e?.en_US && e.zh_CN);
  }
  const { sessions } = await setup(t);
  const err = await sessions.login('nobody', KEY).catch((e: unknown) => e);
  t.same(apiErrorOf(err, 'zh_CN'), { httpStatus: 400, errorCode: '10440201', errorDes: '用户不存在。' });
  t.same(apiErrorOf(new Error('boom'), 'en_US').errorCode, '10440000', 'anything else is internal');
});
