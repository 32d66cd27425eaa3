import { ProductionGateway } from '../../replication/source/production-gateway.js';
import type { StoredClusterPair } from '../store/api-store.js';
import { decodeClusterPairingKey, PAIRING_KEY_HEX_MAX } from './pairing-keys.js';
import { callPeer, isHttpsMvip } from './peer-rpc-client.js';
import {
  CLUSTER_PAIRS_MAX, ELEMENT_VERSION, linkSecret, rpcState, role, updateRpc, uuidV4, type RpcContext,
} from './rpc-context.js';
import { RpcError, RpcErrorName, rpcError } from './rpc-errors.js';
import { invalidParam, reqInt, reqString, type Params } from './rpc-params.js';

// Cluster pairing (Element StartClusterPairing / CompleteClusterPairing / ListClusterPairs /
// RemoveClusterPair). Gateway A starts: a key with A's mvip and a one-time credential (1 h). Gateway B
// completes: it calls A's internal VrgPairCluster with that credential; each side contributes 32 fresh
// random bytes and both derive the link secret from them; both store the pair. The production side then
// dials the DR side with that secret, and the DR side accepts that secret for that production gateway id.
// Certificates: A's key carries A's HTTPS certificate fingerprint, B's call to A is pinned to it (a key
// without one for an HTTPS mvip is refused); B sends its own in `peer`; each side stores the other's.
//
// The engine's production side has ONE link peer. The "active" pair is the one whose DR link address is
// the store's `peer` (also what REST GET /vrgmap shows): the first pair a production gateway makes becomes
// active; other pairs are stored and listed "Disconnected" until volume pairing on them switches the link
// (allowed only while no volume is protected through the active pair) or the active pair is removed.

export const NONCE_BYTES = 32;
export const INTERNAL_PAIR_CLUSTER = 'VrgPairCluster';

interface SelfInfo {
  gatewayId: string;
  uuid: string;
  role: 'production' | 'dr';
  mvip: string;
  version: string;
  linkHost: string;
  linkPort: number;
  /** The gateway's HTTPS certificate fingerprint ('' when it serves no HTTPS). */
  certFingerprint: string;
}

function selfInfo(ctx: RpcContext): SelfInfo {
  const dr = ctx.gw instanceof ProductionGateway ? null : ctx.gw;
  return {
    gatewayId: ctx.gw.config.gatewayId, uuid: ctx.store.state.gatewayUuid, role: role(ctx), mvip: ctx.mvip(),
    version: ELEMENT_VERSION, linkHost: dr === null ? '' : dr.config.link.host, linkPort: dr === null ? 0 : dr.linkPort,
    certFingerprint: ctx.certFingerprint() ?? '',
  };
}

function peerInfo(v: unknown): SelfInfo {
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  const strs = ['gatewayId', 'uuid', 'mvip', 'version', 'linkHost'] as const;
  const ok = strs.every((k) => typeof o[k] === 'string' && (o[k] as string).length <= 256) &&
    (o.role === 'production' || o.role === 'dr') && Number.isInteger(o.linkPort) && (o.gatewayId as string).length > 0;
  if (!ok) throw invalidParam('peer', 'must describe the peer gateway');
  const certFingerprint = o.certFingerprint ?? '';
  if (typeof certFingerprint !== 'string' || !/^([0-9a-f]{64})?$/.test(certFingerprint)) {
    throw invalidParam('peer', 'certFingerprint must be a SHA-256 in lowercase hex');
  }
  return { ...(o as unknown as SelfInfo), certFingerprint };
}

function nonceOf(v: unknown): Buffer {
  if (typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v)) throw invalidParam('nonce', `must be ${NONCE_BYTES} bytes of hex`);
  return Buffer.from(v, 'hex');
}

function pendingLive(ctx: RpcContext): number {
  const now = ctx.clock.nowMs();
  for (const [id, p] of ctx.pendingClusters) if (now >= p.expiresAtMs) ctx.pendingClusters.delete(id);
  return ctx.pendingClusters.size;
}

/** Refuses a pair this gateway cannot take: limit, same role, already paired with that gateway. */
function checkNewPair(ctx: RpcContext, peer: { uuid: string; role: string }, pendingCounted: number): void {
  const pairs = rpcState(ctx).clusterPairs;
  if (pairs.length + pendingCounted >= CLUSTER_PAIRS_MAX) {
    throw rpcError(RpcErrorName.CLUSTER_PAIR_LIMIT, `a gateway pairs with at most ${CLUSTER_PAIRS_MAX} others`);
  }
  if (peer.uuid === ctx.store.state.gatewayUuid) throw rpcError(RpcErrorName.INVALID_PARAMETER, 'a gateway cannot pair with itself');
  if (peer.role === role(ctx)) {
    throw rpcError(RpcErrorName.ROLE_MISMATCH, `both gateways are ${peer.role}: a pair is one production and one DR gateway`);
  }
  if (pairs.some((p) => p.peerUuid === peer.uuid)) throw rpcError(RpcErrorName.CLUSTER_PAIR_EXISTS, 'already paired with that gateway');
}

function nextPairId(ctx: RpcContext): number {
  const ids = [...rpcState(ctx).clusterPairs.map((p) => p.clusterPairID), ...ctx.pendingClusters.keys(), rpcState(ctx).nextClusterPairID - 1];
  return Math.max(0, ...ids) + 1;
}

export function startClusterPairing(ctx: RpcContext): { clusterPairingKey: string; clusterPairID: number } {
  if (rpcState(ctx).clusterPairs.length + pendingLive(ctx) >= CLUSTER_PAIRS_MAX) {
    throw rpcError(RpcErrorName.CLUSTER_PAIR_LIMIT, `a gateway pairs with at most ${CLUSTER_PAIRS_MAX} others`);
  }
  const clusterPairID = nextPairId(ctx);
  const clusterPairUUID = uuidV4(ctx.random);
  const issued = ctx.issuer.issueCluster({
    clusterPairID, clusterPairUUID, clusterUniqueID: ctx.store.state.gatewayUuid, mvip: ctx.mvip(), name: ctx.gw.config.gatewayId,
    ...(ctx.certFingerprint() === null ? {} : { certFingerprint: ctx.certFingerprint()! }),
  });
  ctx.pendingClusters.set(clusterPairID, { clusterPairUUID, expiresAtMs: issued.expiresAtMs });
  return { clusterPairingKey: issued.clusterPairingKey, clusterPairID };
}

/** On gateway B: redeem A's key at A, derive the link secret, store the pair, bring the link up. */
export async function completeClusterPairing(ctx: RpcContext, params: Params): Promise<{ clusterPairID: number }> {
  const key = reqString(params, 'clusterPairingKey', PAIRING_KEY_HEX_MAX);
  const { password, username, certFingerprint, ...fields } = decodeClusterPairingKey(key);
  const pin = certFingerprint ?? null;
  if (pin === null && isHttpsMvip(fields.mvip)) {
    throw rpcError(RpcErrorName.PAIRING_KEY_INVALID, 'the key carries no certificate fingerprint to pin the starter\'s HTTPS (an older VRG?): start the pairing again on an upgraded gateway');
  }
  // The starter's role is learnt from its answer; check what can be checked before contacting it.
  checkNewPair(ctx, { uuid: fields.clusterUniqueID, role: '' }, pendingLive(ctx));
  const myNonce = ctx.random.bytes(NONCE_BYTES);
  const reply = await callPeer(fields.mvip, { username, password }, INTERNAL_PAIR_CLUSTER, {
    ...fields, peer: selfInfo(ctx), nonce: myNonce.toString('hex'),
  }, pin);
  const peer = peerInfo(reply.peer);
  const secret = linkSecret(fields.clusterPairUUID, myNonce, nonceOf(reply.nonce));
  checkNewPair(ctx, peer, pendingLive(ctx)); // the starter checked too; its answer is not trusted blindly
  const clusterPairID = nextPairId(ctx);
  await storePair(ctx, { clusterPairID, clusterPairUUID: fields.clusterPairUUID, peer, secret, pin });
  return { clusterPairID };
}

/** On gateway A, authenticated by the key's credential (checked, then consumed once nothing refuses). */
export async function pairClusterRemote(ctx: RpcContext, params: Params, creds: { username: string; password: string }): Promise<Record<string, unknown>> {
  const expect = {
    clusterPairID: reqInt(params, 'clusterPairID', 0), clusterPairUUID: reqString(params, 'clusterPairUUID', 64),
    clusterUniqueID: reqString(params, 'clusterUniqueID', 256), mvip: reqString(params, 'mvip', 256),
    name: reqString(params, 'name', 256), rpcConnectionID: reqInt(params, 'rpcConnectionID', 0),
  };
  ctx.issuer.checkCluster(creds.username, creds.password, expect);
  const pending = ctx.pendingClusters.get(expect.clusterPairID);
  if (pending?.clusterPairUUID !== expect.clusterPairUUID) {
    throw rpcError(RpcErrorName.PAIRING_KEY_INVALID, 'this pairing was cancelled (RemoveClusterPair) or has expired');
  }
  const peer = peerInfo(params.peer);
  if (peer.certFingerprint === '' && isHttpsMvip(peer.mvip)) {
    throw invalidParam('peer', 'must carry the certificate fingerprint of its HTTPS mvip (an older VRG?)');
  }
  const completerNonce = nonceOf(params.nonce);
  pendingLive(ctx);
  checkNewPair(ctx, peer, ctx.pendingClusters.has(expect.clusterPairID) ? ctx.pendingClusters.size - 1 : ctx.pendingClusters.size);
  ctx.issuer.redeem(creds.username, creds.password, expect);
  ctx.pendingClusters.delete(expect.clusterPairID);
  const myNonce = ctx.random.bytes(NONCE_BYTES);
  const secret = linkSecret(expect.clusterPairUUID, completerNonce, myNonce);
  await storePair(ctx, { clusterPairID: expect.clusterPairID, clusterPairUUID: expect.clusterPairUUID, peer, secret, pin: peer.certFingerprint || null });
  return { peer: selfInfo(ctx), nonce: myNonce.toString('hex') };
}

type NewPair = { clusterPairID: number; clusterPairUUID: string; peer: SelfInfo; secret: Buffer; pin: string | null };

async function storePair(ctx: RpcContext, p: NewPair): Promise<void> {
  const pair: StoredClusterPair = {
    clusterPairID: p.clusterPairID, clusterPairUUID: p.clusterPairUUID, peerName: p.peer.gatewayId, peerGatewayId: p.peer.gatewayId,
    peerUuid: p.peer.uuid, peerRole: p.peer.role, peerMvip: p.peer.mvip, peerVersion: p.peer.version,
    linkHost: p.peer.linkHost, linkPort: p.peer.linkPort, linkSecretHex: p.secret.toString('hex'), createdAtMs: ctx.clock.nowMs(),
    ...(p.pin === null ? {} : { peerCertFingerprint: p.pin }),
  };
  await updateRpc(ctx, (rpc) => {
    rpc.clusterPairs.push(pair);
    rpc.nextClusterPairID = Math.max(rpc.nextClusterPairID, pair.clusterPairID + 1);
  });
  ctx.logger.info({ clusterPairID: pair.clusterPairID, peer: pair.peerGatewayId, pinned: p.pin !== null }, 'cluster pair stored');
  await applyLink(ctx);
}

/**
 * Makes the engine use the stored pairs: DR accepts each paired production gateway's secret; production
 * links to the active pair (the store's peer), choosing the first pair when there is no peer yet.
 */
export async function applyLink(ctx: RpcContext): Promise<void> {
  const gw = ctx.gw;
  if (!(gw instanceof ProductionGateway)) {
    gw.setPeerSecrets((peerGatewayId) => {
      const pair = rpcState(ctx).clusterPairs.find((p) => p.peerGatewayId === peerGatewayId);
      return pair === undefined ? null : Buffer.from(pair.linkSecretHex, 'hex');
    });
    return;
  }
  const s = ctx.store.state;
  const pairs = s.rpc?.clusterPairs ?? [];
  let active = activePair(ctx);
  if (active === null && s.peer === null && pairs.length > 0) {
    active = pairs[0]!;
    const { linkHost: host, linkPort: port } = active;
    await ctx.store.update((st) => {
      st.peer = { host, port };
    });
  }
  if (active === null) {
    if (ctx.linkedPairUUID !== null) gw.setPeer(s.peer); // the pair went away: the REST peer (or none) again
    ctx.linkedPairUUID = null;
    return;
  }
  if (ctx.linkedPairUUID === active.clusterPairUUID) return;
  gw.setPeer({ host: active.linkHost, port: active.linkPort, secret: Buffer.from(active.linkSecretHex, 'hex') });
  ctx.linkedPairUUID = active.clusterPairUUID;
}

/** Production: the pair whose DR link address is the store's peer. */
export function activePair(ctx: RpcContext): StoredClusterPair | null {
  const s = ctx.store.state;
  if (s.peer === null) return null;
  return s.rpc?.clusterPairs.find((p) => p.linkHost === s.peer!.host && p.linkPort === s.peer!.port) ?? null;
}

export { RpcError };
