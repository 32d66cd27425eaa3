import { ProductionGateway } from '../../replication/source/production-gateway.js';
import type { StoredClusterPair, StoredRpcVolume } from '../store/api-store.js';
import { activePair, applyLink } from './cluster-pairing.js';
import { vmsOnPair } from './cluster-pair-admin.js';
import { decodeVolumePairingKey, PAIRING_KEY_HEX_MAX } from './pairing-keys.js';
import { callPeer } from './peer-rpc-client.js';
import { pairPin, pairRpcCredentials, role, rpcState, sha256Hex, updateRpc, type RpcContext } from './rpc-context.js';
import { RpcErrorName, rpcError } from './rpc-errors.js';
import { elementMode, optBool, optMode, reqInt, reqString, type EngineMode, type Params } from './rpc-params.js';
import { pairingOf, volumeOrThrow } from './volume-inventory.js';

// Volume pairing. The source is a production gateway's volume, the target a DR gateway's. Start (source)
// issues a key whose random volumePairUUID is its one-time token. Complete (target) asks the source, over
// the cluster pair (internal VrgPairVolume, step "check"), what the key protects; binds the target volume
// in the DR engine under the source's volUuid (vmUuid = volumePairUUID); then asks the source to redeem
// the key and start protecting (step "commit"). If the commit fails the target binding is undone.

export const INTERNAL_PAIR_VOLUME = 'VrgPairVolume';

function requireRole(ctx: RpcContext, want: 'production' | 'dr', method: string): void {
  if (role(ctx) !== want) {
    throw rpcError(RpcErrorName.INVALID_PARAMETER, `${method} runs on the ${want === 'production' ? 'source (production)' : 'target (DR)'} gateway`);
  }
}

function unpairedVolume(ctx: RpcContext, volumeID: number): StoredRpcVolume {
  const v = volumeOrThrow(rpcState(ctx), volumeID);
  if (pairingOf(ctx, v) !== null) throw rpcError(RpcErrorName.VOLUME_ALREADY_PAIRED, `volume ${volumeID} is already paired`);
  return v;
}

export function startVolumePairing(ctx: RpcContext, p: Params): { volumePairingKey: string } {
  const volumeID = reqInt(p, 'volumeID');
  const mode = optMode(p) ?? 'async';
  requireRole(ctx, 'production', 'StartVolumePairing');
  const v = unpairedVolume(ctx, volumeID);
  if (rpcState(ctx).clusterPairs.length === 0) throw rpcError(RpcErrorName.CLUSTER_PAIR_DOES_NOT_EXIST, 'pair the gateways first (StartClusterPairing)');
  const now = ctx.clock.nowMs();
  for (const [hash, pending] of ctx.pendingVolumes) if (now >= pending.expiresAtMs) ctx.pendingVolumes.delete(hash);
  const issued = ctx.issuer.issueVolume({ mvip: ctx.mvip(), volumeID, volumeName: v.name });
  ctx.pendingVolumes.set(sha256Hex(issued.volumePairUUID), { volumeID, mode, expiresAtMs: issued.expiresAtMs });
  return { volumePairingKey: issued.volumePairingKey };
}

export async function completeVolumePairing(ctx: RpcContext, p: Params): Promise<Record<string, never>> {
  const volumeID = reqInt(p, 'volumeID');
  const key = reqString(p, 'volumePairingKey', PAIRING_KEY_HEX_MAX);
  requireRole(ctx, 'dr', 'CompleteVolumePairing');
  const v = unpairedVolume(ctx, volumeID);
  const fields = decodeVolumePairingKey(key);
  const pair = rpcState(ctx).clusterPairs.find((cp) => cp.peerMvip === fields.mvip);
  if (pair === undefined) throw rpcError(RpcErrorName.CLUSTER_PAIR_DOES_NOT_EXIST, 'no cluster pair with the gateway that issued this key');
  const creds = pairRpcCredentials(pair);
  const pin = pairPin(ctx, pair);
  const ask = (step: string): Promise<Record<string, unknown>> =>
    callPeer(pair.peerMvip, creds, INTERNAL_PAIR_VOLUME, { step, volumePairingKey: key, remoteVolumeID: volumeID, remoteVolumeName: v.name }, pin);
  const src = await ask('check');
  if (typeof src.volUuid !== 'string' || typeof src.vmUuid !== 'string' || typeof src.sizeBytes !== 'number') {
    throw rpcError(RpcErrorName.REMOTE_ERROR, 'the source gateway answered without the volume');
  }
  if (src.sizeBytes !== v.sizeBytes) {
    throw rpcError(RpcErrorName.INVALID_PARAMETER, `volume ${volumeID} has ${v.sizeBytes} bytes, the source ${src.sizeBytes}: sizes must match`);
  }
  await ctx.service.addVm({ vmUuid: src.vmUuid, vmName: v.name, volList: [{ volUuid: src.volUuid, volumeUrl: v.url, sizeBytes: v.sizeBytes }] });
  try {
    await ask('commit');
    await updateRpc(ctx, (rpc) => {
      rpc.volumePairs.push({ volumeID, volumePairUUID: src.vmUuid as string, clusterPairID: pair.clusterPairID, role: 'target',
        remoteVolumeID: fields.volumeID, remoteVolumeName: fields.volumeName });
    });
  } catch (err) {
    await ctx.service.removeVm(src.vmUuid, true).catch(() => undefined); // nothing stays bound
    throw err;
  }
  return {};
}

/** Production switches its one link to `pair` only while nothing replicates over another pair. */
function checkLinkFor(ctx: RpcContext, pair: StoredClusterPair): void {
  const peer = ctx.store.state.peer;
  if (peer === null || (peer.host === pair.linkHost && peer.port === pair.linkPort)) return;
  const active = activePair(ctx);
  // A peer set through REST (no pair) carries every VM of this gateway.
  const busy = active === null ? ctx.gw.vmConfigs().length > 0 : vmsOnPair(ctx, active).length > 0;
  if (busy) {
    const over = active === null ? `the REST-configured peer ${peer.host}:${peer.port}` : `cluster pair ${active.clusterPairID}`;
    throw rpcError(RpcErrorName.INVALID_PARAMETER, `this gateway replicates over ${over}; a production gateway links to one DR gateway at a time`);
  }
}

/** On the source, authenticated as the cluster pair. */
export async function pairVolumeRemote(ctx: RpcContext, p: Params, pair: StoredClusterPair): Promise<Record<string, unknown>> {
  const step = reqString(p, 'step', 16);
  const key = reqString(p, 'volumePairingKey', PAIRING_KEY_HEX_MAX);
  const remoteVolumeID = reqInt(p, 'remoteVolumeID');
  const remoteVolumeName = reqString(p, 'remoteVolumeName', 256);
  if (step !== 'check' && step !== 'commit') throw rpcError(RpcErrorName.INVALID_PARAMETER, 'step must be check or commit');
  const fields = ctx.issuer.checkVolumeKey(key);
  const tokenHash = sha256Hex(fields.volumePairUUID);
  const pending = ctx.pendingVolumes.get(tokenHash);
  if (pending === undefined) throw rpcError(RpcErrorName.PAIRING_KEY_INVALID, 'no volume pairing started with this key');
  const v = unpairedVolume(ctx, fields.volumeID);
  checkLinkFor(ctx, pair);
  if (step === 'check') return { vmUuid: fields.volumePairUUID, volUuid: v.volUuid, sizeBytes: v.sizeBytes, mode: elementMode(pending.mode) };
  ctx.issuer.redeemVolumeKey(key);
  ctx.pendingVolumes.delete(tokenHash);
  if (activePair(ctx)?.clusterPairUUID !== pair.clusterPairUUID) {
    await ctx.store.update((s) => {
      s.peer = { host: pair.linkHost, port: pair.linkPort };
    });
    await applyLink(ctx);
  }
  await ctx.service.addVm({
    vmUuid: fields.volumePairUUID, vmName: v.name, mode: pending.mode, compressOption: 1, encryptOption: 1,
    volList: [{ volUuid: v.volUuid, volumeUrl: v.url, sizeBytes: v.sizeBytes }],
  });
  await updateRpc(ctx, (rpc) => {
    rpc.volumePairs.push({ volumeID: v.volumeID, volumePairUUID: fields.volumePairUUID, clusterPairID: pair.clusterPairID, role: 'source', remoteVolumeID, remoteVolumeName });
  });
  ctx.logger.info({ volumeID: v.volumeID, clusterPairID: pair.clusterPairID, mode: pending.mode }, 'volume pair active');
  return {};
}

/** On the source: mode and pausedManual on the running engine, then stored (re-applied at start). */
export async function modifyVolumePair(ctx: RpcContext, p: Params): Promise<Record<string, never>> {
  const volumeID = reqInt(p, 'volumeID');
  const paused = optBool(p, 'pausedManual');
  const mode: EngineMode | undefined = optMode(p);
  const pairing = pairingOf(ctx, volumeOrThrow(rpcState(ctx), volumeID));
  if (pairing === null) throw rpcError(RpcErrorName.VOLUME_NOT_PAIRED, `volume ${volumeID} is not paired`);
  const gw = ctx.gw;
  if (pairing.role === 'target' || !(gw instanceof ProductionGateway)) {
    throw rpcError(RpcErrorName.VOLUME_PAIR_IS_TARGET, `volume ${volumeID} is a replication target: modify the pair on its source`);
  }
  const now = gw.vmStatus(pairing.vmUuid);
  if (now === null) throw rpcError(RpcErrorName.VOLUME_NOT_PAIRED, `volume ${volumeID} is not protected by the engine`);
  if (mode !== undefined && mode !== now.mode) gw.setMode(pairing.vmUuid, mode);
  if (paused === true && !now.pausedManual) gw.pause(pairing.vmUuid);
  if (paused === false && now.pausedManual) gw.resume(pairing.vmUuid);
  await ctx.store.update((s) => {
    const vm = s.vms.find((x) => x.vmUuid === pairing.vmUuid);
    if (vm === undefined) return; // a config-file VM: the engine changed, the config file is the operator's
    if (mode !== undefined) vm.mode = mode;
    if (paused !== undefined) vm.pausedManual = paused;
  });
  return {};
}

/** On either side: the engine stops protecting (the whole VM, for a multi-volume VM made through REST). */
export async function removeVolumePair(ctx: RpcContext, p: Params): Promise<Record<string, never>> {
  const volumeID = reqInt(p, 'volumeID');
  const pairing = pairingOf(ctx, volumeOrThrow(rpcState(ctx), volumeID));
  if (pairing === null) throw rpcError(RpcErrorName.VOLUME_NOT_PAIRED, `volume ${volumeID} is not paired`);
  await ctx.service.removeVm(pairing.vmUuid, false);
  await updateRpc(ctx, (rpc) => {
    rpc.volumePairs = rpc.volumePairs.filter((vp) => vp.volumePairUUID !== pairing.vmUuid);
  });
  ctx.logger.info({ volumeID, vmUuid: pairing.vmUuid }, 'volume pair removed');
  return {};
}
