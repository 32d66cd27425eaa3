import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../../core/clock.js';
import type { Logger } from '../../core/log.js';
import { noteSecret } from '../../core/secrets.js';
import type { Random } from '../../core/random.js';
import { DrGateway } from '../../replication/target/dr-gateway.js';
import type { ApiService, Gateway } from '../rest/api-service.js';
import type { ApiStore, RpcState, StoredClusterPair, StoredRpcVolume, StoredVm } from '../store/api-store.js';
import type { PairingKeyIssuer } from './pairing-keys.js';
import { isHttpsMvip } from './peer-rpc-client.js';
import type { EngineMode } from './rpc-params.js';

// What the JSON-RPC methods share: the one engine, the one store (ApiStore, also the REST face's), the
// pairing-key issuer, and the in-memory starts that await their Complete call. Outstanding pairing keys
// live only in memory (hashed): a restart invalidates them, which is safer than persisting them.

/** Element: "a single cluster can be paired with up to four other clusters". */
export const CLUSTER_PAIRS_MAX = 4;
/** The Element API version this gateway reports as its own (ListClusterPairs `version` on the peer). */
export const ELEMENT_VERSION = '12.5.0.0';

export interface PendingClusterPair {
  clusterPairUUID: string;
  expiresAtMs: number;
}

export interface PendingVolumePair {
  volumeID: number;
  mode: EngineMode;
  expiresAtMs: number;
}

export interface RpcContext {
  gw: Gateway;
  service: ApiService;
  store: ApiStore;
  issuer: PairingKeyIssuer;
  clock: Clock;
  random: Random;
  logger: Logger;
  /** This gateway's management URL (a pairing key's mvip): http(s)://host:port. */
  mvip(): string;
  /** This gateway's HTTPS certificate fingerprint (null: no HTTPS listener). */
  certFingerprint(): string | null;
  /** Started cluster pairings by clusterPairID. */
  pendingClusters: Map<number, PendingClusterPair>;
  /** Started volume pairings by SHA-256 of the volumePairUUID (the key's one-time token). */
  pendingVolumes: Map<string, PendingVolumePair>;
  /** The cluster pair whose secret the production link uses now (null: none or a REST-configured peer). */
  linkedPairUUID: string | null;
}

export function emptyRpcState(): RpcState {
  return { nextVolumeID: 1, nextClusterPairID: 1, volumes: [], clusterPairs: [], volumePairs: [] };
}

export function rpcState(ctx: RpcContext): RpcState {
  return ctx.store.state.rpc ?? emptyRpcState();
}

/** A durable change to the JSON-RPC part of the store. */
export function updateRpc(ctx: RpcContext, change: (rpc: RpcState, s: { vms: StoredVm[]; peer: { host: string; port: number } | null }) => void): Promise<void> {
  return ctx.store.update((s) => {
    s.rpc ??= emptyRpcState();
    change(s.rpc, s);
  });
}

export function role(ctx: RpcContext): 'production' | 'dr' {
  return ctx.gw instanceof DrGateway ? 'dr' : 'production';
}

export function uuidV4(random: Random): string {
  const b = random.bytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function sha256Hex(...parts: Array<string | Buffer>): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex');
}

/** The link secret both sides derive from their fresh contributions (completer's nonce first). */
export function linkSecret(clusterPairUUID: string, completerNonce: Buffer, starterNonce: Buffer): Buffer {
  const secret = createHash('sha256').update('vrg-link-secret-v1\0').update(clusterPairUUID).update('\0')
    .update(completerNonce).update(starterNonce).digest();
  noteSecret(secret);
  return secret;
}

/** The pair's credentials for later gateway-to-gateway calls, derived from the link secret. */
export function pairRpcCredentials(pair: StoredClusterPair): { username: string; password: string } {
  const password = createHmac('sha256', Buffer.from(pair.linkSecretHex, 'hex')).update('vrg-cluster-rpc-v1').digest('base64url');
  noteSecret(password);
  return { username: `__VRG_cp_${pair.clusterPairUUID}`, password };
}

/** The fingerprint later calls to the pair's peer must see; null (warned) for a pair stored before pinning. */
export function pairPin(ctx: RpcContext, pair: StoredClusterPair): string | null {
  const pin = pair.peerCertFingerprint ?? null;
  if (pin === null && isHttpsMvip(pair.peerMvip)) {
    ctx.logger.warn({ clusterPairID: pair.clusterPairID, peer: pair.peerGatewayId },
      'cluster pair has no pinned certificate (paired before pinning): this call is unverified; remove the pair on both gateways and pair again to pin');
  }
  return pin;
}

/** The stored pair these basic-auth credentials belong to, or null. */
export function pairOfCredentials(ctx: RpcContext, username: string, password: string): StoredClusterPair | null {
  const m = /^__VRG_cp_([0-9a-f-]{36})$/.exec(username);
  if (m === null) return null;
  const pair = rpcState(ctx).clusterPairs.find((p) => p.clusterPairUUID === m[1]);
  if (pair === undefined) return null;
  const want = Buffer.from(pairRpcCredentials(pair).password);
  const got = Buffer.from(password);
  return want.length === got.length && timingSafeEqual(want, got) ? pair : null;
}

/** An inventory volume by its volumeID. */
export function volumeById(rpc: RpcState, volumeID: number): StoredRpcVolume | undefined {
  return rpc.volumes.find((v) => v.volumeID === volumeID);
}

/** Serializes the state-changing methods (a pair limit or a volume cannot be claimed twice at once). */
export class Mutex {
  private chain: Promise<void> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.then(() => undefined, () => undefined);
    return p;
  }
}
