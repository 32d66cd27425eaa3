import { callPeer } from './peer-rpc-client.js';
import { elementMode, type EngineMode } from './rpc-params.js';

// Pairs a production and a DR gateway and their volumes through the Element JSON-RPC methods only, as an
// administrator's tool would (`vrg demo --api jsonrpc`): StartClusterPairing on DR, CompleteClusterPairing
// on production; per volume CreateVolume on both sides, StartVolumePairing on production,
// CompleteVolumePairing on DR. Each volume becomes its own volume pair (one engine VM per volume).
// These are an administrator's calls to each gateway, not gateway-to-gateway ones: nothing is pinned
// (`vrg demo` serves plain HTTP on loopback); the gateways pin each other during the pairing itself.

export interface SetupVolume {
  name: string;
  volUuid: string;
  sizeBytes: number;
  sourcePath: string;
  targetPath: string;
}

/** `productionMvip` / `drMvip`: http(s)://host:port of each gateway's management API. */
export async function pairOverJsonRpc(o: {
  productionMvip: string; drMvip: string; user: string; password: string; volumes: SetupVolume[]; mode: EngineMode;
}): Promise<void> {
  const admin = { username: o.user, password: o.password };
  const call = (mvip: string, method: string, params: Record<string, unknown>) => callPeer(mvip, admin, method, params, null);
  const started = await call(o.drMvip, 'StartClusterPairing', {});
  await call(o.productionMvip, 'CompleteClusterPairing', { clusterPairingKey: started.clusterPairingKey });
  for (const v of o.volumes) {
    const create = (mvip: string, url: string) => call(mvip, 'CreateVolume', {
      name: v.name, accountID: 1, totalSize: v.sizeBytes, enable512e: false, attributes: { volUuid: v.volUuid, url },
    });
    const src = await create(o.productionMvip, v.sourcePath);
    const dst = await create(o.drMvip, v.targetPath);
    const key = await call(o.productionMvip, 'StartVolumePairing', { volumeID: src.volumeID, mode: elementMode(o.mode) });
    await call(o.drMvip, 'CompleteVolumePairing', { volumeID: dst.volumeID, volumePairingKey: key.volumePairingKey });
  }
}
