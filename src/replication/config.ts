import { readFile } from 'node:fs/promises';
import { ErrorCode, vrgError } from '../core/errors.js';
import { limits, MiB } from '../core/limits.js';
import { noteSecret } from '../core/secrets.js';
import { compressionSettings, type CompressionSetting } from './compression-policy.js';

// A gateway's configuration file (JSON). The management APIs (later issues) edit the same model.
//
// {
//   "role": "production" | "dr",
//   "gatewayId": "prod-a",
//   "dataDir": "/var/lib/vrg",                        // journal, DR state
//   "link": { "host": "127.0.0.1", "port": 7001,      // DR: where to listen; production: the DR peer
//             "secret": "<hex, >= 16 bytes>" },
//   "codecThreads": 1,                                 // 0: the codec runs on the event loop's thread
//   "journalCapacityBytes": 1073741824,               // production: the journals; DR: the DR logs (split per VM)
//   "vms": [ { "vmUuid": "...", "vmName": "...", "compressOption": 1, "encryptOption": 1,
//              "volumes": [ { "volUuid": "...", "url": "/data/disk0.img", "sizeBytes": 1073741824 } ] } ],
//   "nbd": { "host": "127.0.0.1", "port": 10809,       // optional: NBD intake (production) / replica exports (DR)
//            "tls": "off" | "allow" | "require",       //   STARTTLS (default off) with a PSK file (username:hexkey
//            "tlsPskFile": "/etc/vrg/keys.psk",        //   lines, as qemu's tls-creds-psk and nbdkit --tls-psk read)
//            "tlsCertFile": "...", "tlsKeyFile": "...", //   and/or an X.509 certificate and key (PEM)
//            "allowClients": ["127.0.0.1", "10.0.0.0/8"], // TCP clients allowed (absent: any)
//            "socketPath": "/run/vrg/nbd.sock" },       //   also a unix socket (mode 0600)
//   "intake": { "writeBack": false },                 // optional (production): ack before the journal fsync
//   "cluster": { "etcd": ["http://127.0.0.1:2379"],   // optional: cluster mode (src/cluster); then "vms" stays
//                "site": "prod", "peerSite": "dr",    //   empty (the VMs live in etcd) and, on DR, link.port is
//                "leaseTtlSeconds": 10 }              //   where each pair's engine listens from (0: any port)
// }

export type Role = 'production' | 'dr';

export interface VolumeConfig {
  volUuid: string;
  /** A file or block device path, or nbd://host:port/export (a write agent on the DR side). */
  url: string;
  sizeBytes: number;
}

export interface ListenConfig {
  host: string;
  port: number;
}

/** The NBD listener: TCP, optionally a unix socket too, with STARTTLS and a client allow-list. */
export interface NbdListenConfig extends ListenConfig {
  tls: 'off' | 'allow' | 'require';
  tlsPskFile?: string;
  tlsCertFile?: string;
  tlsKeyFile?: string;
  allowClients?: string[];
  socketPath?: string;
}

export interface VmConfig {
  vmUuid: string;
  vmName: string;
  compressOption: 0 | 1;
  encryptOption: 0 | 1;
  volumes: VolumeConfig[];
  /** Replication mode at start (production side; default async). */
  mode?: 'async' | 'sync' | 'snapshots';
}

export interface ProtectionConfig {
  linkDownCbtAfterMs: number;
  syncDegradeAfterMs: number;
  cbtGranularityBytes: number;
  snapshotIntervalMs: number;
  /** An alarm (SNMP trap, metrics) while a VM is more than this many seconds behind; 0: none. */
  rpoAlarmSeconds: number;
  /** An alarm while a VM's journal is fuller than this; 0: none. */
  journalAlarmPercent: number;
}

/** Production: when the intake acknowledges a journaled write. */
export interface IntakeConfig {
  /**
   * false (default, SPEC §2.1): after the journal's fdatasync. true: once written to the journal file and the
   * source (page cache), as a disk's write cache does: FLUSH and FUA make writes durable, a process crash
   * loses nothing, and after a host crash (a new boot id) each VM runs a consistency check.
   */
  writeBack: boolean;
  /** Where the host's boot id is read (Linux); a different one after an unclean stop means the host restarted. */
  bootIdPath: string;
}

/** Cluster mode: the site's members, VMs and owners in etcd (src/cluster). */
export interface ClusterConfig {
  etcd: string[];
  /** This gateway's site (its members share VMs) and the paired site across the link. */
  site: string;
  peerSite: string;
  /** A dead member's VMs move after this (etcd lease TTL, whole seconds). */
  leaseTtlSeconds: number;
  /** Bound of each etcd request. */
  requestTimeoutMs: number;
}

export interface GatewayConfig {
  role: Role;
  gatewayId: string;
  dataDir: string;
  /**
   * rateBytesPerSec: a bandwidth cap on what production sends (0 = none). compression: how a VM's
   * compressOption 1 is applied: auto (LZ4 while the link is the bottleneck, raw while the CPU is), always, never.
   */
  link: {
    host: string; port: number; secret: Buffer; rateBytesPerSec: number; compression: CompressionSetting;
    /** Production: rotate the link secret this often (vrg rekey on a schedule); 0 or absent = only on request. */
    rekeyIntervalSeconds?: number;
  };
  /** The per-VM protection state machine's limits (production side). */
  protection: ProtectionConfig;
  /** parseConfig always sets it; absent means the defaults. */
  intake?: IntakeConfig;
  codecThreads: number;
  journalCapacityBytes: number;
  /** Production: the NBD intake (one export per protected volume); DR: read-only replica exports. */
  nbd: NbdListenConfig | null;
  vms: VmConfig[];
  /** Optional management REST API (src/api/rest): HTTP on port, HTTPS on httpsPort (absent: no HTTPS). */
  api?: ApiListenConfig | null;
  /** Optional Prometheus `/metrics` listener (src/api/metrics), on its own port: absent, none. */
  metrics?: ListenConfig | null;
  /** Cluster mode (absent: a single pair, as configured). */
  cluster?: ClusterConfig | null;
}

function parseCluster(v: unknown, path: string): ClusterConfig {
  const o = obj(v, path);
  const etcd = o.etcd;
  if (!Array.isArray(etcd) || etcd.length === 0 || etcd.some((e) => typeof e !== 'string' || !/^https?:\/\/[^\s/]+$/.test(e))) {
    fail(`${path}.etcd`, 'must list etcd client URLs such as "http://127.0.0.1:2379"');
  }
  const site = str(o, 'site', path);
  const peerSite = str(o, 'peerSite', path);
  if (site === peerSite) fail(`${path}.peerSite`, 'must differ from site');
  return {
    etcd: etcd as string[], site, peerSite,
    leaseTtlSeconds: int(o, 'leaseTtlSeconds', path, 2, 3600, 10),
    requestTimeoutMs: int(o, 'requestTimeoutMs', path, 100, 600_000, 5000),
  };
}

/** A VM's settings as stored in etcd in cluster mode (the same shape as a config file's "vms" entry). */
export function parseVmSettings(v: unknown, path = 'vm'): VmConfig {
  return parseVm(v, path);
}

/** "api": { "host": "127.0.0.1", "port": 8080, "httpsPort": 8443, "adminPassword": "...", "certFile": "...", "keyFile": "..." } */
export interface ApiListenConfig {
  host: string;
  port: number;
  httpsPort?: number;
  /** The first password of user `admin`, set only when the account store has no `admin` yet. */
  adminPassword?: string;
  /** An operator's PEM certificate and key for HTTPS (default: generated once under dataDir/api). */
  certFile?: string;
  keyFile?: string;
}

function parseApi(v: unknown, path: string): ApiListenConfig {
  const o = obj(v, path);
  const opt = (k: string): string | undefined => (o[k] === undefined ? undefined : str(o, k, path));
  const api: ApiListenConfig = { host: str(o, 'host', path, { def: '127.0.0.1' }), port: int(o, 'port', path, 0, 65535, 8080) };
  if (o.httpsPort !== undefined) api.httpsPort = int(o, 'httpsPort', path, 0, 65535);
  for (const k of ['adminPassword', 'certFile', 'keyFile'] as const) if (opt(k) !== undefined) api[k] = opt(k);
  noteSecret(api.adminPassword);
  if ((api.certFile === undefined) !== (api.keyFile === undefined)) fail(path, 'certFile and keyFile go together');
  return api;
}

type Json = Record<string, unknown>;

function fail(path: string, why: string): never {
  throw vrgError(ErrorCode.CONFIG_INVALID, `config ${path}: ${why}`, { path });
}

function str(o: Json, key: string, path: string, opt?: { def?: string }): string {
  const v = o[key] ?? opt?.def;
  if (typeof v !== 'string' || v.length === 0) fail(`${path}.${key}`, 'must be a non-empty string');
  return v;
}

function int(o: Json, key: string, path: string, min: number, max: number, def?: number): number {
  const v = o[key] ?? def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    fail(`${path}.${key}`, `must be an integer in [${min}, ${max}]`);
  }
  return v;
}

function obj(v: unknown, path: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, 'must be an object');
  return v as Json;
}

function parseVolume(v: unknown, path: string): VolumeConfig {
  const o = obj(v, path);
  return {
    volUuid: str(o, 'volUuid', path),
    url: str(o, o.url === undefined ? 'path' : 'url', path),
    sizeBytes: int(o, 'sizeBytes', path, 4096, Number.MAX_SAFE_INTEGER),
  };
}

function parseVm(v: unknown, path: string): VmConfig {
  const o = obj(v, path);
  const vols = o.volumes;
  if (!Array.isArray(vols) || vols.length === 0 || vols.length > limits.volumesPerVmMax) {
    fail(`${path}.volumes`, `must list 1 to ${limits.volumesPerVmMax} volumes`);
  }
  const volumes = vols.map((x, i) => parseVolume(x, `${path}.volumes[${i}]`));
  const seen = new Set<string>();
  for (const vol of volumes) {
    if (seen.has(vol.volUuid)) fail(`${path}.volumes`, `duplicate volUuid ${vol.volUuid}`);
    seen.add(vol.volUuid);
  }
  return {
    vmUuid: str(o, 'vmUuid', path),
    vmName: str(o, 'vmName', path, { def: str(o, 'vmUuid', path) }),
    compressOption: int(o, 'compressOption', path, 0, 1, 1) as 0 | 1,
    encryptOption: int(o, 'encryptOption', path, 0, 1, 1) as 0 | 1,
    volumes,
    ...(o.mode === undefined ? {} : { mode: parseMode(o.mode, `${path}.mode`) }),
  };
}

function parseCompression(v: unknown, path: string): CompressionSetting {
  if (v === undefined) return 'auto';
  if (!compressionSettings.includes(v as CompressionSetting)) fail(path, `must be one of ${compressionSettings.map((x) => `"${x}"`).join(', ')}`);
  return v as CompressionSetting;
}

function parseMode(v: unknown, path: string): 'async' | 'sync' | 'snapshots' {
  if (v !== 'async' && v !== 'sync' && v !== 'snapshots') fail(path, 'must be "async", "sync" or "snapshots"');
  return v;
}

function parseProtection(v: unknown, path: string): ProtectionConfig {
  const o = obj(v ?? {}, path);
  const day = 86_400_000;
  return {
    linkDownCbtAfterMs: int(o, 'linkDownCbtAfterMs', path, 0, day, limits.linkDownCbtAfterMs),
    syncDegradeAfterMs: int(o, 'syncDegradeAfterMs', path, 0, day, limits.syncDegradeAfterMs),
    cbtGranularityBytes: int(o, 'cbtGranularityBytes', path, 4096, 1024 * MiB, 64 * 1024),
    snapshotIntervalMs: int(o, 'snapshotIntervalMs', path, 0, day, 0),
    rpoAlarmSeconds: int(o, 'rpoAlarmSeconds', path, 0, 86_400, 300),
    journalAlarmPercent: int(o, 'journalAlarmPercent', path, 0, 100, 80),
  };
}

function parseIntake(v: unknown, path: string): IntakeConfig {
  const o = obj(v ?? {}, path);
  if (o.writeBack !== undefined && typeof o.writeBack !== 'boolean') fail(`${path}.writeBack`, 'must be true or false');
  return { writeBack: o.writeBack === true, bootIdPath: str(o, 'bootIdPath', path, { def: '/proc/sys/kernel/random/boot_id' }) };
}

function parseListen(v: unknown, path: string): ListenConfig {
  const o = obj(v, path);
  return { host: str(o, 'host', path), port: int(o, 'port', path, 0, 65535) };
}

function parseNbdListen(v: unknown, path: string): NbdListenConfig {
  const o = obj(v, path);
  const tls = o.tls ?? 'off';
  if (tls !== 'off' && tls !== 'allow' && tls !== 'require') fail(`${path}.tls`, 'must be "off", "allow" or "require"');
  const file = (key: string): Record<string, string> => (o[key] === undefined ? {} : { [key]: str(o, key, path) });
  const files = { ...file('tlsPskFile'), ...file('tlsCertFile'), ...file('tlsKeyFile'), ...file('socketPath') };
  if ((files.tlsCertFile === undefined) !== (files.tlsKeyFile === undefined)) fail(path, 'tlsCertFile and tlsKeyFile go together');
  if (tls !== 'off' && files.tlsPskFile === undefined && files.tlsCertFile === undefined) {
    fail(`${path}.tls`, `"${tls}" needs tlsPskFile or tlsCertFile and tlsKeyFile`);
  }
  const allow = o.allowClients;
  if (allow !== undefined && (!Array.isArray(allow) || allow.length === 0 || allow.some((a) => typeof a !== 'string'))) {
    fail(`${path}.allowClients`, 'must be a non-empty list of addresses or CIDR subnets');
  }
  return { ...parseListen(v, path), tls, ...files, ...(allow === undefined ? {} : { allowClients: allow as string[] }) };
}

export function parseConfig(raw: unknown): GatewayConfig {
  const o = obj(raw, '$');
  const role = o.role;
  if (role !== 'production' && role !== 'dr') fail('$.role', 'must be "production" or "dr"');
  const link = obj(o.link, '$.link');
  const secretHex = str(link, 'secret', '$.link');
  if (!/^([0-9a-fA-F]{2}){16,}$/.test(secretHex)) fail('$.link.secret', 'must be hex of at least 16 bytes');
  noteSecret(Buffer.from(secretHex, 'hex')); // never logged (src/core/secrets.ts)
  const vmsRaw = o.vms ?? [];
  if (!Array.isArray(vmsRaw)) fail('$.vms', 'must be an array');
  const vms = vmsRaw.map((v, i) => parseVm(v, `$.vms[${i}]`));
  const uuids = new Set<string>();
  for (const vm of vms) {
    if (uuids.has(vm.vmUuid)) fail('$.vms', `duplicate vmUuid ${vm.vmUuid}`);
    uuids.add(vm.vmUuid);
  }
  return {
    role,
    gatewayId: str(o, 'gatewayId', '$'),
    dataDir: str(o, 'dataDir', '$'),
    link: { host: str(link, 'host', '$.link'), port: int(link, 'port', '$.link', 0, 65535), secret: Buffer.from(secretHex, 'hex'),
      rateBytesPerSec: int(link, 'rateBytesPerSec', '$.link', 0, Number.MAX_SAFE_INTEGER, 0),
      compression: parseCompression(link.compression, '$.link.compression'),
      rekeyIntervalSeconds: int(link, 'rekeyIntervalSeconds', '$.link', 0, 365 * 86_400, 0) },
    protection: parseProtection(o.protection, '$.protection'),
    intake: parseIntake(o.intake, '$.intake'),
    codecThreads: int(o, 'codecThreads', '$', 0, 16, 1),
    journalCapacityBytes: int(o, 'journalCapacityBytes', '$', 2 * MiB, Number.MAX_SAFE_INTEGER, 1024 * MiB),
    nbd: o.nbd === undefined || o.nbd === null ? null : parseNbdListen(o.nbd, '$.nbd'),
    vms,
    api: o.api === undefined || o.api === null ? null : parseApi(o.api, '$.api'),
    metrics: o.metrics === undefined || o.metrics === null ? null : parseListen(o.metrics, '$.metrics'),
    cluster: o.cluster === undefined || o.cluster === null ? null : parseClusterMode(o.cluster, vms),
  };
}

function parseClusterMode(v: unknown, vms: VmConfig[]): ClusterConfig {
  if (vms.length > 0) fail('$.vms', 'must be empty in cluster mode: the VMs live in etcd (vrg cluster protect)');
  return parseCluster(v, '$.cluster');
}

export async function loadConfig(file: string): Promise<GatewayConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw vrgError(ErrorCode.CONFIG_INVALID, `cannot read config ${file}: ${(err as Error).message}`, { file }, err);
  }
  try {
    return parseConfig(JSON.parse(text));
  } catch (err) {
    if (err instanceof SyntaxError) throw vrgError(ErrorCode.CONFIG_INVALID, `config ${file}: ${err.message}`, { file }, err);
    throw err;
  }
}
