import { modifyVolume } from './volume-access.js';
import type { FastifyError, FastifyInstance } from 'fastify';
import type { Clock } from '../../core/clock.js';
import type { Logger } from '../../core/log.js';
import { noteSecret } from '../../core/secrets.js';
import type { Random } from '../../core/random.js';
import { ProductionGateway } from '../../replication/source/production-gateway.js';
import { passwordKey, type AccountStore } from '../auth/account-store.js';
import type { ApiService, Gateway } from '../rest/api-service.js';
import type { ApiStore } from '../store/api-store.js';
import { listClusterPairs, removeClusterPair } from './cluster-pair-admin.js';
import { applyLink, completeClusterPairing, INTERNAL_PAIR_CLUSTER, pairClusterRemote, startClusterPairing } from './cluster-pairing.js';
import { decodeClusterPairingKey, PairingKeyIssuer } from './pairing-keys.js';
import { Mutex, pairOfCredentials, type RpcContext } from './rpc-context.js';
import { RpcError, RpcErrorName, rpcErrorBody, toRpcError } from './rpc-errors.js';
import { paramsOf, type Params } from './rpc-params.js';
import { createVolume, syncInventory } from './volume-inventory.js';
import { listActivePairedVolumes } from './volume-list.js';
import { completeVolumePairing, INTERNAL_PAIR_VOLUME, modifyVolumePair, pairVolumeRemote, removeVolumePair, startVolumePairing } from './volume-pairing.js';

// The Element-compatible replication JSON-RPC API (SPEC §4): POST /json-rpc/<version> on the REST API's
// fastify servers (HTTP and HTTPS). Versions 9.6 through 12.x. HTTP basic auth with the admin accounts;
// the two gateway-to-gateway methods (VrgPairCluster, VrgPairVolume) instead take the pairing key's
// one-time credential or the cluster pair's derived credential. One request per body: batches are refused.
// Every method runs under one mutex, so checks and changes of one call are not interleaved with another's.

export const JSONRPC_PATH = '/json-rpc';
export const JSONRPC_BODY_LIMIT_BYTES = 64 * 1024;
const VERSION_RE = /^(9\.[6-9]|1[0-2]\.\d{1,2}|1[0-2])$/;

type Handler = (ctx: RpcContext, p: Params) => unknown;

const METHODS: Readonly<Record<string, Handler>> = {
  StartClusterPairing: (c) => startClusterPairing(c),
  CompleteClusterPairing: (c, p) => completeClusterPairing(c, p),
  ListClusterPairs: (c) => listClusterPairs(c),
  RemoveClusterPair: (c, p) => removeClusterPair(c, p),
  StartVolumePairing: (c, p) => startVolumePairing(c, p),
  CompleteVolumePairing: (c, p) => completeVolumePairing(c, p),
  ListActivePairedVolumes: (c) => listActivePairedVolumes(c),
  ModifyVolumePair: (c, p) => modifyVolumePair(c, p),
  ModifyVolume: (c, p) => modifyVolume(c, p),
  RemoveVolumePair: (c, p) => removeVolumePair(c, p),
  CreateVolume: (c, p) => createVolume(c, p),
};

export interface JsonRpcFaceOptions {
  gw: Gateway;
  service: ApiService;
  store: ApiStore;
  accounts: AccountStore;
  logger: Logger;
  clock: Clock;
  random: Random;
  /** This gateway's management URL once listening (http(s)://host:port). */
  mvip: () => string;
  /** This gateway's HTTPS certificate fingerprint once listening (null: no HTTPS). */
  certFingerprint: () => string | null;
}

export interface RpcReply {
  status: number;
  body: Record<string, unknown>;
}

interface Credentials {
  username: string;
  password: string;
}

function basicCredentials(header: string | undefined): Credentials | null {
  const m = /^Basic ([A-Za-z0-9+/=]+)$/i.exec(header ?? '');
  if (m === null) return null;
  const text = Buffer.from(m[1]!, 'base64').toString('utf8');
  const at = text.indexOf(':');
  if (at <= 0) return null;
  const creds = { username: text.slice(0, at), password: text.slice(at + 1) };
  for (const s of [m[1]!, creds.password, passwordKey(creds.password)]) noteSecret(s);
  return creds;
}

/** Learns the pairing keys a request carries or a result hands out (and a cluster key's password): never logged. */
function learnKeys(bag: unknown): void {
  if (typeof bag !== 'object' || bag === null) return;
  for (const name of ['clusterPairingKey', 'volumePairingKey']) {
    const key = (bag as Record<string, unknown>)[name];
    if (typeof key !== 'string') continue;
    noteSecret(key);
    try {
      if (name === 'clusterPairingKey') noteSecret(decodeClusterPairingKey(key).password);
    } catch {
      // a bad key: the key itself is learned
    }
  }
}

function fail(status: number, code: RpcErrorName, message: string, id: unknown = null): RpcReply {
  return { status, body: { id, error: rpcErrorBody(new RpcError(code, message)) } };
}

export class JsonRpcFace {
  readonly ctx: RpcContext;
  private readonly mutex = new Mutex();

  constructor(private readonly o: JsonRpcFaceOptions) {
    this.ctx = {
      gw: o.gw, service: o.service, store: o.store, clock: o.clock, random: o.random, mvip: o.mvip, certFingerprint: o.certFingerprint,
      logger: o.logger.child({ front: 'jsonrpc' }), issuer: new PairingKeyIssuer({ clock: o.clock, random: o.random }),
      pendingClusters: new Map(), pendingVolumes: new Map(), linkedPairUUID: null,
    };
  }

  /** Gateway start: the stored pairs' secrets into the engine, and the operator's pauses again. */
  async init(): Promise<void> {
    await applyLink(this.ctx);
    const gw = this.o.gw;
    if (!(gw instanceof ProductionGateway)) return;
    for (const vm of this.o.store.state.vms) {
      if (vm.pausedManual === true && gw.vmStatus(vm.vmUuid)?.pausedManual === false) gw.pause(vm.vmUuid);
    }
  }

  /** One HTTP request: the version in the path, the raw body, the Authorization header. */
  async handle(version: string, text: unknown, authorization: string | undefined): Promise<RpcReply> {
    if (!VERSION_RE.test(version)) return fail(404, RpcErrorName.UNKNOWN_VERSION, `API version ${version.slice(0, 16)} is not served: use 9.6 through 12.x`);
    let req: unknown;
    try {
      req = typeof text === 'string' && text.trim() !== '' ? JSON.parse(text) : undefined;
    } catch {
      return fail(400, RpcErrorName.INVALID_REQUEST, 'the body is not JSON');
    }
    if (Array.isArray(req)) return fail(400, RpcErrorName.BATCH_UNSUPPORTED, 'batch requests (JSON arrays) are not supported: send one request per POST');
    if (typeof req !== 'object' || req === null) return fail(400, RpcErrorName.INVALID_REQUEST, 'the body must be a JSON object {method, params, id}');
    const { method, params, id = null } = req as { method?: unknown; params?: unknown; id?: unknown };
    if (typeof method !== 'string') return fail(400, RpcErrorName.INVALID_REQUEST, 'method must be a string', id);
    const creds = basicCredentials(authorization);
    learnKeys(params);
    const run = await this.authorize(method, creds);
    if (run === null) return fail(401, RpcErrorName.NOT_AUTHORIZED, 'HTTP basic authentication failed', id);
    try {
      const result = await this.mutex.run(async () => run(paramsOf(params)));
      learnKeys(result);
      return { status: 200, body: { id, result } };
    } catch (err) {
      const e = toRpcError(err);
      if (e.code === RpcErrorName.INTERNAL) this.ctx.logger.error({ method, err: (err as Error).message }, 'JSON-RPC method failed');
      else this.ctx.logger.info({ method, error: e.code }, 'JSON-RPC method refused');
      return { status: 200, body: { id, error: rpcErrorBody(e) } };
    }
  }

  /** The method bound to its caller, or null when the credentials do not authorize it. */
  private async authorize(method: string, creds: Credentials | null): Promise<((p: Params) => Promise<unknown>) | null> {
    if (creds === null) return null;
    const ctx = this.ctx;
    if (method === INTERNAL_PAIR_CLUSTER) {
      if (!creds.username.startsWith('__VRG_pair_')) return null;
      return (p) => pairClusterRemote(ctx, p, creds); // the one-time credential is checked inside, under the mutex
    }
    if (method === INTERNAL_PAIR_VOLUME) {
      const pair = pairOfCredentials(ctx, creds.username, creds.password);
      return pair === null ? null : async (p) => {
        await syncInventory(ctx);
        return pairVolumeRemote(ctx, p, pair);
      };
    }
    try {
      await this.o.accounts.verify(creds.username, passwordKey(creds.password));
    } catch {
      return null;
    }
    const handler = METHODS[method];
    if (handler === undefined) {
      return async () => {
        throw new RpcError(RpcErrorName.UNKNOWN_METHOD, `unknown method ${method.slice(0, 64)}`);
      };
    }
    return async (p) => {
      await syncInventory(ctx);
      return handler(ctx, p);
    };
  }

  /** Mounts POST /json-rpc/:version (call before the app is ready). */
  async mount(app: FastifyInstance): Promise<void> {
    await app.register(async (rpc) => {
      rpc.removeAllContentTypeParsers();
      rpc.addContentTypeParser('*', { parseAs: 'string', bodyLimit: JSONRPC_BODY_LIMIT_BYTES }, (_req, body, done) => done(null, body));
      rpc.setErrorHandler((err: FastifyError, _req, reply) => {
        const tooLarge = err.code === 'FST_ERR_CTP_BODY_TOO_LARGE';
        const r = fail(tooLarge ? 413 : 400, RpcErrorName.INVALID_REQUEST, tooLarge ? `body over ${JSONRPC_BODY_LIMIT_BYTES} bytes` : 'bad request');
        return reply.code(r.status).type('application/json').send(r.body);
      });
      rpc.post<{ Params: { version: string } }>(`${JSONRPC_PATH}/:version`, { config: { public: true }, schema: { hide: true } }, async (req, reply) => {
        const r = await this.handle(req.params.version, req.body, req.headers.authorization);
        if (r.status === 401) reply.header('www-authenticate', 'Basic realm="VRG JSON-RPC", charset="UTF-8"');
        return reply.code(r.status).type('application/json').send(r.body);
      });
    });
  }
}
