import { join } from 'node:path';
import { ErrorCode, isVrgError } from '../../core/errors.js';
import { limits } from '../../core/limits.js';
import { parseVolumeUrl } from '../../volume/open-volume.js';
import type { VmProtection } from '../../replication/control.js';
import { ApiErrorNumber } from '../auth/error-codes.js';
import type { StoredVm, StoredVolume } from '../store/api-store.js';
import { isIpv4, isPort, restError, UUID_RE } from './rest-errors.js';

// POST /vmstrategy bodies (004 §3.8.1 production, §3.8.2 DR) → the stored form and the engine's VmProtection.
//
// Our choices where the document leaves room:
// - Spellings: every field is also accepted in snake_case (vm_uuid, vol_list, seq_num, volume_url, agent_ip ...).
// - `mode` (extension): "async" (default) | "sync" | "snapshots", production only.
// - Volume size (extension): `sizeBytes` (or `size`) per volume, bytes, a multiple of 4096; default 1 GiB.
//   A new file is created sparse at that size; an existing one must have it. Both sides must agree.
// - Production volume source (extension): `volumeUrl` per volume (a path or nbd://host:port/export); default
//   the file <dataDir>/volumes/<volUuid>.img. The hypervisor writes into it through the NBD intake.
// - DR volume target: `volumeUrl` that is an absolute path, file:// or nbd:// URL is opened as is; any other
//   `volumeUrl` (or none: the volUuid) names an export of the write agent: nbd://<agentIp>:<agentPort>/<name>.
//   agentIp/agentPort are required only in that case. hostUrn, dsUrn, volType, drExtParams are stored and
//   reported by GET; volType must be one of LOCALPOME, LUNPOME, NAS, DSWARE when given.
// - seqNum is optional (the document requires it only on Xen), 1-40, unique within the VM.

export const DEFAULT_VOLUME_BYTES = 1024 * 1024 * 1024;
export const SEQ_NUM_MAX = 40;
export const VOL_TYPES = ['LOCALPOME', 'LUNPOME', 'NAS', 'DSWARE'] as const;

type Json = Record<string, unknown>;

/** The field under its camelCase or snake_case name. */
export function field(o: Json, camel: string): unknown {
  if (o[camel] !== undefined) return o[camel];
  return o[camel.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)];
}

function bad(what: string): never {
  throw restError(ApiErrorNumber.INVALID_PARAMETER, what);
}

function optString(o: Json, key: string, maxChars = 256): string | undefined {
  const v = field(o, key);
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v.length > maxChars) bad(`${key} must be a string of at most ${maxChars} characters`);
  return v;
}

function option01(o: Json, key: string): 0 | 1 {
  const v = field(o, key) ?? 0;
  if (v !== 0 && v !== 1) bad(`${key} must be 0 or 1`);
  return v;
}

function sizeOf(o: Json): number {
  const v = o.sizeBytes ?? o.size_bytes ?? o.size ?? DEFAULT_VOLUME_BYTES;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 4096 || v % 4096 !== 0) bad('sizeBytes must be a positive multiple of 4096');
  return v;
}

function checkUrl(url: string): string {
  try {
    parseVolumeUrl(url);
  } catch (err) {
    if (isVrgError(err, ErrorCode.INVALID_ARGUMENT)) bad(err.message);
    throw err;
  }
  return url;
}

function isDirectTarget(url: string): boolean {
  return url.startsWith('/') || /^(file|nbd):\/\//i.test(url);
}

interface Common {
  vmUuid: string;
  vols: Json[];
}

/** Checks what both bodies share: vmUuid (10440401), the volume list, duplicate volUuid (10440306) / seqNum (10440309). */
function common(body: Json): Common {
  const vmUuid = field(body, 'vmUuid');
  if (typeof vmUuid !== 'string' || !UUID_RE.test(vmUuid)) throw restError(ApiErrorNumber.BAD_VM_UUID, 'vmUuid must be a UUID');
  const vols = field(body, 'volList');
  if (!Array.isArray(vols) || vols.length === 0 || vols.length > limits.volumesPerVmMax) bad(`volList must list 1 to ${limits.volumesPerVmMax} volumes`);
  const uuids = new Set<string>();
  const seqs = new Set<number>();
  for (const v of vols) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) bad('volList entries must be objects');
    const volUuid = field(v as Json, 'volUuid');
    if (typeof volUuid !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(volUuid)) bad('volUuid must be 1-64 characters of A-Z a-z 0-9 . _ -');
    if (uuids.has(volUuid)) throw restError(ApiErrorNumber.DUP_VOL_UUID, `duplicate volUuid ${volUuid}`);
    uuids.add(volUuid);
    const seq = field(v as Json, 'seqNum');
    if (seq === undefined || seq === null) continue;
    if (typeof seq !== 'number' || !Number.isInteger(seq) || seq < 1 || seq > SEQ_NUM_MAX) bad(`seqNum must be an integer in [1, ${SEQ_NUM_MAX}]`);
    if (seqs.has(seq)) throw restError(ApiErrorNumber.DUP_SEQ_NUM, `duplicate seqNum ${seq}`);
    seqs.add(seq);
  }
  return { vmUuid, vols: vols as Json[] };
}

function seqOf(v: Json): { seqNum?: number } {
  const s = field(v, 'seqNum');
  return typeof s === 'number' ? { seqNum: s } : {};
}

export function productionVm(body: Json, dataDir: string): StoredVm {
  const { vmUuid, vols } = common(body);
  const mode = field(body, 'mode') ?? 'async';
  if (mode !== 'async' && mode !== 'sync' && mode !== 'snapshots') bad('mode must be "async", "sync" or "snapshots"');
  const volList: StoredVolume[] = vols.map((v) => {
    const volUuid = field(v, 'volUuid') as string;
    const given = optString(v, 'volumeUrl', 1024);
    return { volUuid, ...seqOf(v), url: checkUrl(given ?? join(dataDir, 'volumes', `${volUuid}.img`)), sizeBytes: sizeOf(v),
      ...(given === undefined ? {} : { volumeUrl: given }) };
  });
  const vmId = optString(body, 'vmId');
  return {
    flag: 1, vmUuid, ...(vmId === undefined ? {} : { vmId }), vmName: optString(body, 'vmName') ?? vmUuid,
    compressOption: option01(body, 'compressOption'), encryptOption: option01(body, 'encryptOption'), mode, volList,
  };
}

function agentOf(body: Json): { agentIp?: string; agentPort?: number } {
  const ip = field(body, 'agentIp');
  const port = field(body, 'agentPort');
  if (ip === undefined && port === undefined) return {};
  if (!isIpv4(ip)) throw restError(ApiErrorNumber.BAD_IP, 'agentIp must be an IPv4 address');
  if (!isPort(port)) throw restError(ApiErrorNumber.BAD_PORT, 'agentPort must be an integer in [1, 65535]');
  return { agentIp: ip, agentPort: port };
}

function drVolume(v: Json, agent: { agentIp?: string; agentPort?: number }): StoredVolume {
  const volUuid = field(v, 'volUuid') as string;
  const given = optString(v, 'volumeUrl', 1024);
  let url: string;
  if (given !== undefined && isDirectTarget(given)) url = given;
  else if (agent.agentIp === undefined) bad(`volume ${volUuid}: give agentIp/agentPort or a volumeUrl path or nbd:// URL`);
  else url = `nbd://${agent.agentIp}:${agent.agentPort}/${encodeURIComponent(given ?? volUuid)}`;
  const volType = optString(v, 'volType');
  if (volType !== undefined && !(VOL_TYPES as readonly string[]).includes(volType)) bad(`volType must be one of ${VOL_TYPES.join(', ')}`);
  const dsUrn = optString(v, 'dsUrn');
  const ext = field(v, 'drExtParams');
  return {
    volUuid, ...seqOf(v), url: checkUrl(url), sizeBytes: sizeOf(v), ...(given === undefined ? {} : { volumeUrl: given }),
    ...(dsUrn === undefined ? {} : { dsUrn }), ...(volType === undefined ? {} : { volType }), ...(ext === undefined ? {} : { drExtParams: ext }),
  };
}

export function drVm(body: Json): StoredVm {
  const { vmUuid, vols } = common(body);
  const agent = agentOf(body);
  const volList = vols.map((v) => drVolume(v, agent));
  const [vmId, hostUrn] = [optString(body, 'vmId'), optString(body, 'hostUrn')];
  return {
    flag: 2, vmUuid, ...(vmId === undefined ? {} : { vmId }), vmName: optString(body, 'vmName') ?? vmUuid,
    compressOption: 0, encryptOption: 0, ...(hostUrn === undefined ? {} : { hostUrn }), ...agent, volList,
  };
}

/** The engine's view of a stored VM. */
export function protectionOf(vm: StoredVm): VmProtection {
  return {
    vmUuid: vm.vmUuid, vmName: vm.vmName, compressOption: vm.compressOption, encryptOption: vm.encryptOption,
    volumes: vm.volList.map((v) => ({ volUuid: v.volUuid, url: v.url, sizeBytes: v.sizeBytes })),
    ...(vm.mode === undefined ? {} : { mode: vm.mode }),
  };
}
