import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from '../../core/log.js';
import type { AccountStore } from '../auth/account-store.js';
import type { SessionManager } from '../auth/session-manager.js';
import type { ApiService } from './api-service.js';

// What the REST server hands its route files (routes-*.ts), apart from the server itself, so the routes and
// the server do not import each other.

export const BASE_PATH = '/vrgservice';
export const BODY_LIMIT_BYTES = 64 * 1024;

export interface NetAddress {
  ip: string;
  port: number;
}

/** The gateway's real listening addresses (GET /netinfos): the REST listener, the NBD intake, the peer link. */
export interface NetAddresses {
  management: NetAddress | null;
  intake: NetAddress | null;
  peer: NetAddress | null;
}

export interface RestContext {
  service: ApiService;
  accounts: AccountStore;
  sessions: SessionManager;
  netAddresses: () => NetAddresses;
  logger: Logger;
  /** Other faces on the same server (the JSON-RPC API's POST /json-rpc/:version), mounted before ready. */
  mount?: (app: FastifyInstance) => Promise<void>;
}

export function tokenOf(req: FastifyRequest): string | undefined {
  const v = req.headers['x-auth-token'];
  return Array.isArray(v) ? v[0] : v;
}
