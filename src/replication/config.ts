import { readFile } from 'node:fs/promises';
import { ErrorCode, vrgError } from '../core/errors.js';
import { limits, MiB } from '../core/limits.js';

// A gateway's configuration file (JSON). The management APIs (later issues) edit the same model.
//
// {
//   "role": "production" | "dr",
//   "gatewayId": "prod-a",
//   "dataDir": "/var/lib/vrg",                        // journal, DR state
//   "link": { "host": "127.0.0.1", "port": 7001,      // DR: where to listen; production: the DR peer
//             "secret": "<hex, >= 16 bytes>" },
//   "codecThreads": 1,
//   "journalCapacityBytes": 1073741824,               // production only
//   "vms": [ { "vmUuid": "...", "vmName": "...", "compressOption": 1, "encryptOption": 1,
//              "volumes": [ { "volUuid": "...", "url": "/data/disk0.img", "sizeBytes": 1073741824 } ] } ],
//   "nbd": { "host": "127.0.0.1", "port": 10809 }      // optional: NBD intake (production) / replica exports (DR)
// }

export type Role = 'production' | 'dr';

export interface VolumeConfig {
  volUuid: string;
  /** A file or block device path, or nbd://host:port/export (a write agent on the DR side). */
  url: string;
  sizeBytes: number;
}

export interface NbdListenConfig {
  host: string;
  port: number;
}

export interface VmConfig {
  vmUuid: string;
  vmName: string;
  compressOption: 0 | 1;
  encryptOption: 0 | 1;
  volumes: VolumeConfig[];
}

export interface GatewayConfig {
  role: Role;
  gatewayId: string;
  dataDir: string;
  link: { host: string; port: number; secret: Buffer };
  codecThreads: number;
  journalCapacityBytes: number;
  /** Production: the NBD intake (one export per protected volume); DR: read-only replica exports. */
  nbd: NbdListenConfig | null;
  vms: VmConfig[];
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
  };
}

function parseListen(v: unknown, path: string): NbdListenConfig {
  const o = obj(v, path);
  return { host: str(o, 'host', path), port: int(o, 'port', path, 0, 65535) };
}

export function parseConfig(raw: unknown): GatewayConfig {
  const o = obj(raw, '$');
  const role = o.role;
  if (role !== 'production' && role !== 'dr') fail('$.role', 'must be "production" or "dr"');
  const link = obj(o.link, '$.link');
  const secretHex = str(link, 'secret', '$.link');
  if (!/^([0-9a-fA-F]{2}){16,}$/.test(secretHex)) fail('$.link.secret', 'must be hex of at least 16 bytes');
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
    link: { host: str(link, 'host', '$.link'), port: int(link, 'port', '$.link', 0, 65535), secret: Buffer.from(secretHex, 'hex') },
    codecThreads: int(o, 'codecThreads', '$', 1, 16, 1),
    journalCapacityBytes: int(o, 'journalCapacityBytes', '$', 4 * MiB, Number.MAX_SAFE_INTEGER, 1024 * MiB),
    nbd: o.nbd === undefined || o.nbd === null ? null : parseListen(o.nbd, '$.nbd'),
    vms,
  };
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
