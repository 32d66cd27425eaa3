import type { FailoverKind } from '../../replication/dr-site.js';
import { rpcState, type RpcContext } from './rpc-context.js';
import { RpcErrorName, rpcError } from './rpc-errors.js';
import { reqInt, reqString, type Params } from './rpc-params.js';
import { pairingOf, volumeObject, volumeOrThrow } from './volume-inventory.js';

// ModifyVolume with `access`, Element's way of failing a paired volume over: on the replication target,
// `readWrite` makes this side the VM's source (a planned failover while the source is connected, else an
// unplanned one: the last consistent image). `replicationTarget` on a target changes nothing; on the source
// it is refused (set `readWrite` on the target instead: only the target knows which image it holds). The
// VM's volumes change access together. Other ModifyVolume parameters (QoS, size, account) are not VRG's
// to change and are refused, so nothing is silently ignored.

const ACCESS = ['readWrite', 'replicationTarget'] as const;
type Access = (typeof ACCESS)[number];

export async function modifyVolume(ctx: RpcContext, p: Params): Promise<Record<string, unknown>> {
  const volumeID = reqInt(p, 'volumeID');
  const other = Object.keys(p).filter((k) => k !== 'volumeID' && k !== 'access');
  if (other.length > 0) throw rpcError(RpcErrorName.INVALID_PARAMETER, `ModifyVolume takes volumeID and access only here, not ${other.join(', ')}`);
  const access = reqString(p, 'access', 32) as Access;
  if (!ACCESS.includes(access)) throw rpcError(RpcErrorName.INVALID_PARAMETER, `access must be "readWrite" or "replicationTarget", not "${access}"`);
  const volume = volumeOrThrow(rpcState(ctx), volumeID);
  const pairing = pairingOf(ctx, volume);
  if (pairing === null) throw rpcError(RpcErrorName.VOLUME_NOT_PAIRED, `volume ${volumeID} is not paired`);
  const role = ctx.service.vmRole(pairing.vmUuid)?.role ?? pairing.role;
  if (access === 'replicationTarget' && role === 'source') {
    throw rpcError(RpcErrorName.INVALID_PARAMETER, `volume ${volumeID} is its pair's source: set access "readWrite" on the replication target to fail over`);
  }
  if (access === 'readWrite' && role === 'target') {
    const connected = ctx.service.site?.dr.peerConnection() != null || ctx.service.prodSite !== null;
    const kind: FailoverKind = connected ? 'planned' : 'unplanned';
    await ctx.service.failover(pairing.vmUuid, kind);
  }
  return { volume: volumeObject(ctx, volume, pairingOf(ctx, volume)) };
}
