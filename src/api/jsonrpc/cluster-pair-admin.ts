import { ProductionGateway } from '../../replication/source/production-gateway.js';
import type { StoredClusterPair } from '../store/api-store.js';
import { activePair, applyLink } from './cluster-pairing.js';
import { rpcState, updateRpc, type RpcContext } from './rpc-context.js';
import { RpcErrorName, rpcError } from './rpc-errors.js';
import { reqInt, type Params } from './rpc-params.js';

// ListClusterPairs and RemoveClusterPair. Status and latency come from the real link: production asks its
// link client (peerStatus, heartbeat RTT), DR its link server's current connection. A pair that is stored
// but not the one the link runs on is "Disconnected"; a started, not yet completed pairing is "Pending".

export interface ClusterPairView {
  clusterName: string;
  clusterPairID: number;
  clusterPairUUID: string;
  clusterUUID: number;
  latency: number;
  mvip: string;
  status: 'Connected' | 'Disconnected' | 'Pending';
  version: string;
}

/** Element shows clusterUUID as an integer: the first 28 bits of the peer's gateway UUID. */
function clusterUUIDNumber(uuid: string): number {
  const n = Number.parseInt(uuid.replace(/-/g, '').slice(0, 7), 16);
  return Number.isFinite(n) ? n : 0;
}

function linkOf(ctx: RpcContext, pair: StoredClusterPair): { up: boolean; rttMs: number | null } {
  const gw = ctx.gw;
  if (gw instanceof ProductionGateway) {
    const p = gw.peerStatus();
    const isActive = activePair(ctx)?.clusterPairUUID === pair.clusterPairUUID && ctx.linkedPairUUID === pair.clusterPairUUID;
    return isActive && p !== null && p.connected ? { up: true, rttMs: p.rttMs } : { up: false, rttMs: null };
  }
  const peer = gw.linkPeer();
  return peer !== null && peer.gatewayId === pair.peerGatewayId ? { up: true, rttMs: peer.rttMs } : { up: false, rttMs: null };
}

export function listClusterPairs(ctx: RpcContext): { clusterPairs: ClusterPairView[] } {
  const now = ctx.clock.nowMs();
  const views: ClusterPairView[] = rpcState(ctx).clusterPairs.map((pair) => {
    const link = linkOf(ctx, pair);
    return {
      clusterName: pair.peerName, clusterPairID: pair.clusterPairID, clusterPairUUID: pair.clusterPairUUID,
      clusterUUID: clusterUUIDNumber(pair.peerUuid), latency: link.up ? Math.round(link.rttMs ?? 0) : 0,
      mvip: pair.peerMvip, status: link.up ? 'Connected' : 'Disconnected', version: pair.peerVersion,
    };
  });
  for (const [clusterPairID, p] of ctx.pendingClusters) {
    if (now >= p.expiresAtMs) continue;
    views.push({ clusterName: '', clusterPairID, clusterPairUUID: p.clusterPairUUID, clusterUUID: 0, latency: 0, mvip: '', status: 'Pending', version: '' });
  }
  return { clusterPairs: views.sort((a, b) => a.clusterPairID - b.clusterPairID) };
}

/** The engine VMs of the store (and config file) that replicate over `pair`. */
export function vmsOnPair(ctx: RpcContext, pair: StoredClusterPair): string[] {
  const rpc = rpcState(ctx);
  const live = new Set([...ctx.store.state.vms.map((v) => v.vmUuid), ...ctx.gw.vmConfigs().map((v) => v.vmUuid)]);
  const paired = rpc.volumePairs.filter((vp) => vp.clusterPairID === pair.clusterPairID && live.has(vp.volumePairUUID));
  const out = paired.map((vp) => vp.volumePairUUID);
  // Production VMs configured otherwise (REST, config file) replicate over the active pair's link too.
  if (ctx.gw instanceof ProductionGateway && activePair(ctx)?.clusterPairUUID === pair.clusterPairUUID) {
    const rpcVms = new Set(rpc.volumePairs.map((vp) => vp.volumePairUUID));
    out.push(...[...live].filter((id) => !rpcVms.has(id)));
  }
  return out;
}

/** Local only, like Element: run it on both gateways. Refused while volumes replicate over the pair. */
export async function removeClusterPair(ctx: RpcContext, params: Params): Promise<Record<string, never>> {
  const id = reqInt(params, 'clusterPairID', 0);
  if (ctx.pendingClusters.delete(id)) return {}; // its key then fails at completion (no pending start)
  const pair = rpcState(ctx).clusterPairs.find((p) => p.clusterPairID === id);
  if (pair === undefined) throw rpcError(RpcErrorName.CLUSTER_PAIR_DOES_NOT_EXIST, `no cluster pair ${id}`);
  const vms = vmsOnPair(ctx, pair);
  if (vms.length > 0) {
    throw rpcError(RpcErrorName.CLUSTER_PAIR_HAS_VOLUME_PAIRS, `${vms.length} volume pair(s) use cluster pair ${id}: remove them first (RemoveVolumePair)`);
  }
  const wasActive = activePair(ctx)?.clusterPairUUID === pair.clusterPairUUID;
  await updateRpc(ctx, (rpc, s) => {
    rpc.clusterPairs = rpc.clusterPairs.filter((p) => p.clusterPairID !== id);
    rpc.volumePairs = rpc.volumePairs.filter((vp) => vp.clusterPairID !== id);
    if (wasActive) s.peer = null;
  });
  ctx.logger.info({ clusterPairID: id, peer: pair.peerGatewayId }, 'cluster pair removed');
  await applyLink(ctx);
  return {};
}
