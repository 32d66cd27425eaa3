import { resolve } from 'node:path';
import { ProductionGateway } from '../../replication/source/production-gateway.js';
import type { RpcState, StoredRpcVolume, StoredVm, StoredVolumePair } from '../store/api-store.js';
import { activePair } from './cluster-pairing.js';
import { rpcState, sha256Hex, updateRpc, type RpcContext } from './rpc-context.js';
import { RpcErrorName, rpcError } from './rpc-errors.js';
import { invalidParam, optBool, reqInt, reqString, type Params } from './rpc-params.js';

// The JSON-RPC face's volumes. A "volume" has a stable integer volumeID kept in the store (rpc.volumes):
// - volumes made with CreateVolume (an Element method; the target file is created sparse when the volume
//   is first bound), and
// - every volume of a VM configured otherwise (REST POST /vmstrategy, the config file), given an ID the
//   first time a JSON-RPC call sees it: REST-protected VMs show up here as paired volumes.
// A volume is paired while an engine VM protects it: a JSON-RPC volume pair is the engine VM whose
// vmUuid is the pair's volumePairUUID (one volume each); a REST VM's volumes are paired through that VM.

export const BLOCK_BYTES = 4096;
export const VOLUME_BYTES_MAX = 16 * 1024 ** 4;
const VOL_UUID_RE = /^[A-Za-z0-9._-]{1,64}$/;

export interface Pairing {
  vmUuid: string;
  role: 'source' | 'target';
  /** The JSON-RPC pair record (null: a VM configured through REST or the config file). */
  record: StoredVolumePair | null;
  vmName: string;
  mode: 'async' | 'sync' | 'snapshots' | undefined;
  pausedManual: boolean;
}

interface VmLike {
  vmUuid: string;
  vmName: string;
  mode?: 'async' | 'sync' | 'snapshots' | undefined;
  pausedManual?: boolean | undefined;
  vols: Array<{ volUuid: string; url: string; sizeBytes: number }>;
}

/** The store's VMs and the config file's (the engine's), once each. */
function allVms(ctx: RpcContext): VmLike[] {
  const stored: VmLike[] = ctx.store.state.vms.map((v: StoredVm) => ({ vmUuid: v.vmUuid, vmName: v.vmName, mode: v.mode, pausedManual: v.pausedManual, vols: v.volList }));
  const ids = new Set(stored.map((v) => v.vmUuid));
  const engine = ctx.gw.vmConfigs().filter((v) => !ids.has(v.vmUuid)).map((v) => ({ vmUuid: v.vmUuid, vmName: v.vmName, mode: v.mode, vols: v.volumes }));
  return [...stored, ...engine];
}

/** Gives IDs to volumes of VMs configured outside JSON-RPC; drops pair records whose VM was removed (REST). */
export async function syncInventory(ctx: RpcContext): Promise<void> {
  const rpc = rpcState(ctx);
  const vms = allVms(ctx);
  const live = new Set(vms.map((v) => v.vmUuid));
  const rpcVms = new Set(rpc.volumePairs.map((vp) => vp.volumePairUUID));
  const known = new Set(rpc.volumes.map((v) => v.volUuid));
  const add = vms.filter((vm) => !rpcVms.has(vm.vmUuid))
    .flatMap((vm) => vm.vols.filter((v) => !known.has(v.volUuid)).map((v) => ({ vm, v })));
  const stale = rpc.volumePairs.filter((vp) => !live.has(vp.volumePairUUID));
  if (add.length === 0 && stale.length === 0) return;
  const createTime = new Date(ctx.clock.nowMs()).toISOString().replace(/\.\d{3}Z$/, 'Z');
  await updateRpc(ctx, (r) => {
    for (const { vm, v } of add) {
      r.volumes.push({ volumeID: r.nextVolumeID++, name: vm.vols.length === 1 ? vm.vmName : `${vm.vmName}-${v.volUuid}`, accountID: 1,
        volUuid: v.volUuid, url: v.url, sizeBytes: v.sizeBytes, enable512e: false, createTime });
    }
    r.volumePairs = r.volumePairs.filter((vp) => live.has(vp.volumePairUUID));
  });
}

export function volumeOrThrow(rpc: RpcState, volumeID: number): StoredRpcVolume {
  const v = rpc.volumes.find((x) => x.volumeID === volumeID);
  if (v === undefined) throw rpcError(RpcErrorName.VOLUME_ID_DOES_NOT_EXIST, `volume ${volumeID} does not exist`);
  return v;
}

/** How a volume is paired now, or null. */
export function pairingOf(ctx: RpcContext, v: StoredRpcVolume): Pairing | null {
  const rpc = rpcState(ctx);
  const vms = allVms(ctx);
  const record = rpc.volumePairs.find((vp) => vp.volumeID === v.volumeID);
  const rpcVms = new Set(rpc.volumePairs.map((vp) => vp.volumePairUUID));
  const vm = record !== undefined ? vms.find((x) => x.vmUuid === record.volumePairUUID)
    : vms.find((x) => !rpcVms.has(x.vmUuid) && x.vols.some((y) => y.volUuid === v.volUuid));
  if (vm === undefined) return null;
  const pausedManual = ctx.gw.vmStatus(vm.vmUuid)?.pausedManual ?? vm.pausedManual ?? false;
  return {
    // The live role first: a failover (issue 14) swaps it on both sides.
    vmUuid: vm.vmUuid, role: ctx.service.vmRole(vm.vmUuid)?.role ?? record?.role ?? (ctx.gw instanceof ProductionGateway ? 'source' : 'target'),
    record: record ?? null,
    vmName: vm.vmName, mode: vm.mode, pausedManual,
  };
}

/** CreateVolume (Element): name, accountID, totalSize, enable512e; attributes.volUuid / attributes.url (VRG). */
export async function createVolume(ctx: RpcContext, p: Params): Promise<{ volumeID: number; volume: Record<string, unknown> }> {
  const name = reqString(p, 'name', 64);
  const accountID = reqInt(p, 'accountID', 0);
  const totalSize = reqInt(p, 'totalSize', 1);
  if (totalSize > VOLUME_BYTES_MAX) throw invalidParam('totalSize', `must be at most ${VOLUME_BYTES_MAX} bytes`);
  const enable512e = optBool(p, 'enable512e') ?? false;
  const attrs = p.attributes ?? {};
  if (typeof attrs !== 'object' || attrs === null || Array.isArray(attrs)) throw invalidParam('attributes', 'must be an object');
  const a = attrs as Record<string, unknown>;
  const rpc = rpcState(ctx);
  const volUuid = a.volUuid ?? `vol-${sha256Hex(ctx.random.bytes(16)).slice(0, 16)}`;
  if (typeof volUuid !== 'string' || !VOL_UUID_RE.test(volUuid)) throw invalidParam('attributes.volUuid', 'must be 1-64 characters of A-Z a-z 0-9 . _ -');
  const used = new Set([...rpc.volumes.map((v) => v.volUuid), ...allVms(ctx).flatMap((vm) => vm.vols.map((v) => v.volUuid))]);
  if (used.has(volUuid)) throw invalidParam('attributes.volUuid', 'is used by another volume');
  const url = a.url ?? resolve(ctx.gw.config.dataDir, 'volumes', `${volUuid}.img`);
  if (typeof url !== 'string' || !url.startsWith('/') || url.length > 1024) throw invalidParam('attributes.url', 'must be an absolute path');
  const sizeBytes = Math.ceil(totalSize / BLOCK_BYTES) * BLOCK_BYTES; // Element rounds sizes up too
  const createTime = new Date(ctx.clock.nowMs()).toISOString().replace(/\.\d{3}Z$/, 'Z');
  let volumeID = 0;
  await updateRpc(ctx, (r) => {
    volumeID = r.nextVolumeID++;
    r.volumes.push({ volumeID, name, accountID, volUuid, url, sizeBytes, enable512e, createTime });
  });
  const created = volumeOrThrow(rpcState(ctx), volumeID);
  return { volumeID, volume: volumeObject(ctx, created, null) };
}

/** Element's documented QoS defaults. VRG does not throttle: the object carries them so SDK models parse. */
const ELEMENT_DEFAULT_QOS = {
  burstIOPS: 15000, burstTime: 60, maxIOPS: 15000, minIOPS: 50,
  curve: { 4096: 100, 8192: 160, 16384: 270, 32768: 500, 65536: 1000, 131072: 1950, 262144: 3900, 524288: 7600, 1048576: 15000 },
};

/** A volume object with the fields of the documents' ListActivePairedVolumes example. */
export function volumeObject(ctx: RpcContext, v: StoredRpcVolume, pairing: Pairing | null, pairs: unknown[] = []): Record<string, unknown> {
  const id = sha256Hex(ctx.store.state.gatewayUuid, String(v.volumeID));
  const slug = v.name.toLowerCase().replace(/[^a-z0-9.-]/g, '-');
  return {
    access: pairing?.role === 'target' ? 'replicationTarget' : 'readWrite',
    accountID: v.accountID, attributes: {}, blockSize: BLOCK_BYTES, createTime: v.createTime, deleteTime: '',
    enable512e: v.enable512e, iqn: `iqn.2010-01.com.vrg:${ctx.gw.config.gatewayId.toLowerCase()}.${slug}.${v.volumeID}`,
    name: v.name, purgeTime: '', qos: ELEMENT_DEFAULT_QOS,
    scsiEUIDeviceID: id.slice(0, 34), scsiNAADeviceID: `6${id.slice(34, 67)}`, sliceCount: 1, status: 'active',
    totalSize: v.sizeBytes, virtualVolumeID: null, volumeAccessGroups: [], volumeID: v.volumeID, volumePairs: pairs,
  };
}

/** Production VMs configured through REST replicate over the active cluster pair. */
export function restPairId(ctx: RpcContext): number {
  return ctx.gw instanceof ProductionGateway ? activePair(ctx)?.clusterPairID ?? 0 : 0;
}
