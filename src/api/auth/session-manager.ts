import { createHash } from 'node:crypto';
import { systemClock, type Clock } from '../../core/clock.js';
import { ErrorCode, vrgError } from '../../core/errors.js';
import { silentLogger, type Logger } from '../../core/log.js';
import { systemRandom, type Random } from '../../core/random.js';
import { noteSecret } from '../../core/secrets.js';
import type { AccountStore } from './account-store.js';
import { ApiErrorNumber } from './error-codes.js';

// Login sessions of the management REST API (POST/DELETE /session, X-Auth-Token).
//
// Token: 32 bytes from the injected Random, base64url without padding (43 characters). Sessions are kept in a
// Map keyed by SHA-256(token), so a lookup never compares secret bytes and the token itself is never kept or
// logged (logs name a session by the first 8 hex digits of that hash).
//
// Validity, our reading of the document ("Token 有效期, 为 600000 单位 ms" and 10440102 "未登录或超时"): a
// SLIDING idle timeout. A token stays valid while it is used at least every validityMs (600000 ms); each
// successful authenticate() moves its expiry to now + validityMs. A token unused for validityMs ms is
// expired (exactly at expiry it is already invalid). An absolute cap (maxLifetimeMs, default 24 h from login)
// bounds the life of a token however often it is used. Time is the injected Clock's monotonic time.
//
// At most maxSessions sessions (default 64): a login beyond that first drops expired sessions, then evicts the
// least recently used one.

export const SESSION_VALIDITY_MS = 600_000;
export const SESSION_MAX_LIFETIME_MS = 24 * 3600_000;
export const MAX_SESSIONS = 64;
const TOKEN_BYTES = 32;
const TOKEN_RE = /^[A-Za-z0-9_-]{43}$/;

export interface Session {
  readonly user: string;
  /** First 8 hex digits of SHA-256(token): names the session in logs, never enough to use it. */
  readonly id: string;
  readonly createdMs: number; // monotonic ms
  lastUsedMs: number; // monotonic ms
}

export interface LoginResult {
  token: string;
  uuid: string;
  validityMs: number;
}

export interface SessionManagerOptions {
  accounts: AccountStore;
  /** The gateway's UUID, returned by login as `uuid`. */
  uuid: string;
  clock?: Clock;
  random?: Random;
  logger?: Logger;
  validityMs?: number;
  maxLifetimeMs?: number;
  maxSessions?: number;
}

function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

function notLoggedIn(message: string): Error {
  return vrgError(ErrorCode.AUTH_NOT_LOGGED_IN, message, { errorCode: ApiErrorNumber.NOT_LOGGED_IN });
}

export class SessionManager {
  readonly validityMs: number;
  readonly maxLifetimeMs: number;
  readonly maxSessions: number;
  private readonly sessions = new Map<string, Session>(); // key: SHA-256(token) hex; iteration order = LRU first
  private readonly accounts: AccountStore;
  private readonly uuid: string;
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly logger: Logger;

  constructor(opts: SessionManagerOptions) {
    this.accounts = opts.accounts;
    this.uuid = opts.uuid;
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? systemRandom;
    this.logger = opts.logger ?? silentLogger;
    this.validityMs = opts.validityMs ?? SESSION_VALIDITY_MS;
    this.maxLifetimeMs = opts.maxLifetimeMs ?? SESSION_MAX_LIFETIME_MS;
    this.maxSessions = Math.max(1, opts.maxSessions ?? MAX_SESSIONS);
  }

  /** POST /session. Errors are the AccountStore.verify ones (10440101, 10440200, 10440201, 10440202, 10440207, 10440208). */
  async login(user: string, keyHex: string): Promise<LoginResult> {
    await this.accounts.verify(user, keyHex);
    this.makeRoom();
    const token = this.random.bytes(TOKEN_BYTES).toString('base64url');
    noteSecret(token);
    const hash = tokenHash(token);
    const now = this.nowMs();
    const session: Session = { user, id: hash.slice(0, 8), createdMs: now, lastUsedMs: now };
    this.sessions.set(hash, session);
    this.logger.info({ user, session: session.id }, 'login');
    return { token, uuid: this.uuid, validityMs: this.validityMs };
  }

  /** The session of a valid token, its idle timer restarted; AUTH_NOT_LOGGED_IN (10440102) otherwise. */
  authenticate(token: string | undefined): Session {
    const found = this.lookup(token);
    if (found === undefined) throw notLoggedIn('not logged in or the session timed out');
    const [hash, session] = found;
    session.lastUsedMs = this.nowMs();
    this.sessions.delete(hash); // move to the most recently used end
    this.sessions.set(hash, session);
    return session;
  }

  /** DELETE /session. AUTH_LOGOUT_FAILED (10440205) when the token names no live session. */
  logout(token: string | undefined): void {
    const found = this.lookup(token);
    if (found === undefined) {
      throw vrgError(ErrorCode.AUTH_LOGOUT_FAILED, 'logout failed: no such session', { errorCode: ApiErrorNumber.LOGOUT_FAILED });
    }
    this.sessions.delete(found[0]);
    this.logger.info({ user: found[1].user, session: found[1].id }, 'logout');
  }

  /**
   * POST /password for the session's user: the old key must verify (lockout rules apply), then every other
   * session of that user is ended; the calling session stays.
   */
  async changePassword(token: string | undefined, oldKeyHex: string, newKeyHex: string): Promise<void> {
    const session = this.authenticate(token);
    await this.accounts.changePassword(session.user, oldKeyHex, newKeyHex);
    this.revokeUser(session.user, token);
  }

  /** Ends every session of `user` except the one of `exceptToken`; returns how many ended. */
  revokeUser(user: string, exceptToken?: string): number {
    const keep = exceptToken === undefined ? undefined : tokenHash(exceptToken);
    let n = 0;
    for (const [hash, s] of this.sessions) {
      if (s.user === user && hash !== keep) {
        this.sessions.delete(hash);
        n++;
      }
    }
    return n;
  }

  /** Live sessions (expired ones are dropped first). */
  get size(): number {
    this.dropExpired();
    return this.sessions.size;
  }

  private nowMs(): number {
    return Number(this.clock.monotonicNs() / 1_000_000n);
  }

  private expired(s: Session, now: number): boolean {
    return now - s.lastUsedMs >= this.validityMs || now - s.createdMs >= this.maxLifetimeMs;
  }

  private lookup(token: string | undefined): [string, Session] | undefined {
    if (typeof token !== 'string' || !TOKEN_RE.test(token)) return undefined;
    const hash = tokenHash(token);
    const session = this.sessions.get(hash);
    if (session === undefined) return undefined;
    if (this.expired(session, this.nowMs())) {
      this.sessions.delete(hash);
      return undefined;
    }
    return [hash, session];
  }

  private dropExpired(): void {
    const now = this.nowMs();
    for (const [hash, s] of this.sessions) if (this.expired(s, now)) this.sessions.delete(hash);
  }

  private makeRoom(): void {
    if (this.sessions.size < this.maxSessions) return;
    this.dropExpired();
    while (this.sessions.size >= this.maxSessions) {
      const oldest = this.sessions.entries().next().value as [string, Session] | undefined;
      if (oldest === undefined) break;
      this.sessions.delete(oldest[0]);
      this.logger.info({ user: oldest[1].user, session: oldest[1].id }, 'session evicted (too many sessions)');
    }
  }
}
