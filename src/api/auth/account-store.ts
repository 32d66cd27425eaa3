import { createHash, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { writeJsonAtomic } from '../../core/atomic-file.js';
import { readFile, rm } from 'node:fs/promises';
import { systemClock, type Clock } from '../../core/clock.js';
import { ErrorCode, vrgError, type VrgError } from '../../core/errors.js';
import { silentLogger, type Logger } from '../../core/log.js';
import { systemRandom, type Random } from '../../core/random.js';
import { noteSecret } from '../../core/secrets.js';
import { ApiErrorNumber } from './error-codes.js';

// Accounts of the management REST API, one JSON file written atomically (tmp + fsync + rename + dir fsync),
// mode 0600.
//
// What is stored: the client never sends the password, it sends X-Auth-Key = lowercase/uppercase hex of
// SHA-256(UTF-8 password) (the "key"). The store keeps, per user, only
//     hash = scrypt(P = the 32 raw key bytes decoded from that hex, S = 16 random salt bytes, keylen 32, N, r, p)
// with N = 2^15, r = 8, p = 1 by default (parameters kept per user, so they can be raised later).
// Neither the password nor the key is ever written or logged.
//
// File layout (version 1):
//   { "version": 1, "users": { "<name>": { "kdf": "scrypt", "N": 32768, "r": 8, "p": 1,
//                                           "salt": "<base64 16 B>", "hash": "<base64 32 B>", "updatedMs": <epoch ms> } } }
//
// Lockout (document codes 10440207 / 10440208), kept in memory: three consecutive wrong keys for one user lock
// that user for five minutes; the third wrong key answers 10440207, any attempt while locked answers 10440208
// without checking the key (so even the right key is refused), a right key before the third resets the count,
// and when the lock ends the count starts again from zero. "Consecutive" has no time window. Durations use the
// injected Clock's monotonic time. Unknown users keep no state (the document's 10440201 reveals them anyway).

export const USER_NAME_RE = /^[A-Za-z0-9._@-]{1,20}$/;
export const KEY_HEX_RE = /^[0-9a-fA-F]{64}$/;
export const PASSWORD_MAX_CHARS = 128;
export const LOCKOUT_ATTEMPTS = 3;
export const LOCKOUT_MS = 5 * 60_000;
export const MAX_USERS = 64;
export const DEFAULT_SCRYPT = { N: 1 << 15, r: 8, p: 1 } as const;

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

interface UserRecord extends ScryptParams {
  kdf: 'scrypt';
  salt: string;
  hash: string;
  updatedMs: number;
}

interface LockState {
  failures: number;
  lockedUntilMs: number; // monotonic ms; 0 = not locked
}

/** X-Auth-Key for a password: lowercase hex SHA-256 of its UTF-8 bytes (what clients and the CLI send). */
export function passwordKey(password: string): string {
  return createHash('sha256').update(password, 'utf8').digest('hex');
}

function authError(code: ErrorCode, errorCode: string, message: string, details?: Record<string, unknown>): VrgError {
  return vrgError(code, message, { ...details, errorCode });
}

function checkUserName(user: unknown): asserts user is string {
  if (typeof user !== 'string' || !USER_NAME_RE.test(user)) {
    throw authError(ErrorCode.INVALID_ARGUMENT, ApiErrorNumber.INVALID_PARAMETER,
      'user name must be 1-20 characters of A-Z a-z 0-9 . _ @ -');
  }
}

function checkKeyHex(keyHex: unknown, what: string): asserts keyHex is string {
  if (typeof keyHex !== 'string' || !KEY_HEX_RE.test(keyHex)) {
    throw authError(ErrorCode.AUTH_INVALID_PASSWORD, ApiErrorNumber.INVALID_PASSWORD,
      `${what} must be the 64-digit hex SHA-256 of the password`);
  }
}

function derive(key: Buffer, salt: Buffer, params: ScryptParams): Promise<Buffer> {
  const opts: ScryptOptions = { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r + (1 << 20) };
  return new Promise((resolve, reject) => {
    scryptCb(key, salt, 32, opts, (err, out) => (err ? reject(err) : resolve(out)));
  });
}

function parseRecord(name: string, v: unknown): UserRecord {
  const r = v as Partial<UserRecord> | null;
  const ok = r !== null && typeof r === 'object' && r.kdf === 'scrypt' && USER_NAME_RE.test(name) &&
    Number.isInteger(r.N) && Number.isInteger(r.r) && Number.isInteger(r.p) &&
    typeof r.salt === 'string' && typeof r.hash === 'string' && Buffer.from(r.hash, 'base64').length === 32 &&
    Buffer.from(r.salt, 'base64').length >= 16;
  if (!ok) throw vrgError(ErrorCode.CONFIG_INVALID, `account store: bad record for user ${JSON.stringify(name)}`);
  return { kdf: 'scrypt', N: r.N!, r: r.r!, p: r.p!, salt: r.salt!, hash: r.hash!, updatedMs: Number(r.updatedMs ?? 0) };
}

export interface AccountStoreOptions {
  path: string;
  clock?: Clock;
  random?: Random;
  logger?: Logger;
  /** scrypt cost for new hashes (tests lower it); stored per user, verification uses the stored values. */
  scrypt?: ScryptParams;
}

export class AccountStore {
  private readonly users = new Map<string, UserRecord>();
  private readonly locks = new Map<string, LockState>();
  private writeChain: Promise<void> = Promise.resolve();

  private constructor(
    readonly path: string,
    private readonly clock: Clock,
    private readonly random: Random,
    private readonly logger: Logger,
    private readonly params: ScryptParams,
  ) {}

  /** Loads the file (a missing file is an empty store; a leftover `<path>.tmp` is ignored and removed). */
  static async open(opts: AccountStoreOptions): Promise<AccountStore> {
    const store = new AccountStore(opts.path, opts.clock ?? systemClock, opts.random ?? systemRandom,
      opts.logger ?? silentLogger, opts.scrypt ?? DEFAULT_SCRYPT);
    await rm(`${opts.path}.tmp`, { force: true });
    let text: string;
    try {
      text = await readFile(opts.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return store;
      throw err;
    }
    let doc: { version?: unknown; users?: unknown };
    try {
      doc = JSON.parse(text) as typeof doc;
    } catch (err) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `account store ${opts.path} is not valid JSON`, undefined, err);
    }
    if (doc.version !== 1 || doc.users === null || typeof doc.users !== 'object') {
      throw vrgError(ErrorCode.CONFIG_INVALID, `account store ${opts.path}: unsupported layout`);
    }
    for (const [name, rec] of Object.entries(doc.users as Record<string, unknown>)) store.users.set(name, parseRecord(name, rec));
    return store;
  }

  hasUser(user: string): boolean {
    return this.users.has(user);
  }

  userNames(): string[] {
    return [...this.users.keys()].sort();
  }

  /** Sets (or creates the user with) a plain password: the first password, from the CLI or config. Clears any lockout. */
  async setPassword(user: string, password: string): Promise<void> {
    noteSecret(password); // never logged, nor its key (src/core/secrets.ts)
    checkUserName(user);
    if (typeof password !== 'string' || password.length < 1 || password.length > PASSWORD_MAX_CHARS) {
      throw authError(ErrorCode.AUTH_INVALID_PASSWORD, ApiErrorNumber.INVALID_PASSWORD,
        `password must be 1-${PASSWORD_MAX_CHARS} characters`);
    }
    await this.setKey(user, passwordKey(password));
  }

  /** Same as setPassword with the X-Auth-Key form (SHA-256 hex) of the password. */
  async setKey(user: string, keyHex: string): Promise<void> {
    noteSecret(keyHex);
    checkUserName(user);
    checkKeyHex(keyHex, 'key');
    if (!this.users.has(user) && this.users.size >= MAX_USERS) {
      throw authError(ErrorCode.INVALID_ARGUMENT, ApiErrorNumber.INVALID_PARAMETER, `at most ${MAX_USERS} users`);
    }
    const rec = await this.makeRecord(keyHex);
    await this.commit(user, rec);
    this.locks.delete(user);
    this.logger.info({ user }, 'password set');
  }

  /**
   * Checks a login key with the lockout rules. Throws INVALID_ARGUMENT (10440101) for a bad name,
   * AUTH_INVALID_PASSWORD (10440200) for a key that is not 64 hex digits, AUTH_NO_SUCH_USER (10440201),
   * AUTH_ACCOUNT_LOCKED (10440208), AUTH_LOCKED_NOW (10440207, third wrong key), AUTH_WRONG_PASSWORD (10440202).
   * Malformed keys do not count as attempts.
   */
  async verify(user: string, keyHex: string): Promise<void> {
    noteSecret(keyHex); // right or wrong: a wrong key may be the user's password elsewhere
    checkUserName(user);
    checkKeyHex(keyHex, 'X-Auth-Key');
    const rec = this.users.get(user);
    if (rec === undefined) throw authError(ErrorCode.AUTH_NO_SUCH_USER, ApiErrorNumber.NO_SUCH_USER, 'no such user', { user });
    this.throwIfLocked(user);
    const ok = await this.matches(rec, keyHex);
    this.throwIfLocked(user); // locked by a concurrent attempt while scrypt ran
    const st = this.lockState(user);
    if (ok) {
      st.failures = 0;
      return;
    }
    st.failures++;
    if (st.failures >= LOCKOUT_ATTEMPTS) {
      st.failures = 0;
      st.lockedUntilMs = this.nowMs() + LOCKOUT_MS;
      this.logger.warn({ user }, 'account locked for 5 minutes after 3 wrong passwords');
      throw authError(ErrorCode.AUTH_LOCKED_NOW, ApiErrorNumber.LOCKED_NOW, 'wrong password 3 times in a row: account locked for 5 minutes', { user });
    }
    throw authError(ErrorCode.AUTH_WRONG_PASSWORD, ApiErrorNumber.WRONG_PASSWORD, 'wrong password', { user });
  }

  /** POST /password: the old key must verify (same lockout rules); the new key must be well formed. */
  async changePassword(user: string, oldKeyHex: string, newKeyHex: string): Promise<void> {
    noteSecret(newKeyHex);
    checkUserName(user);
    checkKeyHex(oldKeyHex, 'old key');
    checkKeyHex(newKeyHex, 'new key');
    await this.verify(user, oldKeyHex);
    const rec = await this.makeRecord(newKeyHex);
    await this.commit(user, rec);
    this.logger.info({ user }, 'password changed');
  }

  /** Remaining lock time for a user (0 when not locked). */
  lockedForMs(user: string): number {
    const st = this.locks.get(user);
    return st === undefined ? 0 : Math.max(0, st.lockedUntilMs - this.nowMs());
  }

  private nowMs(): number {
    return Number(this.clock.monotonicNs() / 1_000_000n);
  }

  private lockState(user: string): LockState {
    let st = this.locks.get(user);
    if (st === undefined) {
      st = { failures: 0, lockedUntilMs: 0 };
      this.locks.set(user, st);
    }
    return st;
  }

  private throwIfLocked(user: string): void {
    const st = this.locks.get(user);
    if (st === undefined || st.lockedUntilMs === 0) return;
    if (this.nowMs() < st.lockedUntilMs) {
      throw authError(ErrorCode.AUTH_ACCOUNT_LOCKED, ApiErrorNumber.ACCOUNT_LOCKED, 'account locked', { user });
    }
    st.lockedUntilMs = 0;
    st.failures = 0;
  }

  private async matches(rec: UserRecord, keyHex: string): Promise<boolean> {
    const expected = Buffer.from(rec.hash, 'base64');
    const got = await derive(Buffer.from(keyHex, 'hex'), Buffer.from(rec.salt, 'base64'), rec);
    return got.length === expected.length && timingSafeEqual(got, expected);
  }

  private async makeRecord(keyHex: string): Promise<UserRecord> {
    const salt = this.random.bytes(16);
    const hash = await derive(Buffer.from(keyHex, 'hex'), salt, this.params);
    return { kdf: 'scrypt', ...this.params, salt: salt.toString('base64'), hash: hash.toString('base64'), updatedMs: this.clock.nowMs() };
  }

  /** Writes the store with `user` set to `rec`; memory changes only once the file is durable. Serialized. */
  private commit(user: string, rec: UserRecord): Promise<void> {
    const run = async (): Promise<void> => {
      const next = new Map(this.users);
      next.set(user, rec);
      await this.writeFile(next);
      this.users.set(user, rec);
    };
    const p = this.writeChain.then(run, run);
    this.writeChain = p.catch(() => undefined);
    return p;
  }

  private async writeFile(users: Map<string, UserRecord>): Promise<void> {
    const doc = { version: 1, users: Object.fromEntries([...users].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) };
    await writeJsonAtomic(this.path, doc);
  }
}
