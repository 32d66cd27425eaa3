import { randomUUID } from 'node:crypto';
import { writeJsonAtomic } from '../../core/atomic-file.js';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ErrorCode, vrgError } from '../../core/errors.js';

// The configuration made through the REST API, one JSON file under dataDir (default
// <dataDir>/api/api-config.json), written atomically: temp file + fsync + rename + directory fsync. Memory
// changes only once the file is durable, so a refused or failed write changes nothing. Accounts live in
// their own file (src/api/auth/account-store.ts). At gateway start the runtime replays `peer` (setPeer) and
// `vms` (addVm) into the engine.
//
// File layout (version 1):
//   { "version": 1,
//     "gatewayUuid": "<uuid>",                          // POST /session's `uuid`, fixed at first start
//     "peer": { "host": "10.0.0.2", "port": 7001 } | null,
//     "trap": { "ip": "10.0.0.9", "port": 162 } | null,
//     "mngNet": { "ip": "...", "netmask": "...", "gateway": "..." } | null,
//     "vms": [ StoredVm, ... ] }                        // in the order they were added

export interface StoredVolume {
  volUuid: string;
  seqNum?: number;
  /** The URL the engine opens: a path or nbd://host:port/export. */
  url: string;
  sizeBytes: number;
  /** As the client sent it (DR `volumeUrl`), for GET. */
  volumeUrl?: string;
  dsUrn?: string;
  volType?: string;
  drExtParams?: unknown;
}

export interface StoredVm {
  /** 1 production, 2 DR (GET /vmstrategy's flag). */
  flag: 1 | 2;
  vmUuid: string;
  vmId?: string;
  vmName: string;
  compressOption: 0 | 1;
  encryptOption: 0 | 1;
  mode?: 'async' | 'sync' | 'snapshots';
  /** Paused by the operator (JSON-RPC ModifyVolumePair); re-applied at start. */
  pausedManual?: boolean;
  hostUrn?: string;
  agentIp?: string;
  agentPort?: number;
  volList: StoredVolume[];
}

/** JSON-RPC (Element) face: a volume of this gateway with its stable integer volumeID (src/api/jsonrpc). */
export interface StoredRpcVolume {
  volumeID: number;
  name: string;
  accountID: number;
  /** The engine's volume id; a JSON-RPC target volume is bound under its source's volUuid instead. */
  volUuid: string;
  url: string;
  sizeBytes: number;
  enable512e: boolean;
  createTime: string;
}

/** A completed cluster pair. linkSecretHex is the link's pairing secret (this file is mode 0600). */
export interface StoredClusterPair {
  clusterPairID: number;
  clusterPairUUID: string;
  peerName: string;
  peerGatewayId: string;
  peerUuid: string;
  peerRole: 'production' | 'dr';
  peerMvip: string;
  peerVersion: string;
  /** The DR peer's link listener (a production peer: '' and 0). */
  linkHost: string;
  linkPort: number;
  linkSecretHex: string;
  createdAtMs: number;
  /** The peer's HTTPS certificate fingerprint pinned at pairing (absent: a plain-HTTP peer, or paired before pinning). */
  peerCertFingerprint?: string;
}

/** A volume pair made through JSON-RPC; the engine VM it protects is `vms[vmUuid]` (vmUuid = volumePairUUID). */
export interface StoredVolumePair {
  volumeID: number;
  volumePairUUID: string;
  clusterPairID: number;
  role: 'source' | 'target';
  remoteVolumeID: number;
  remoteVolumeName: string;
}

export interface RpcState {
  nextVolumeID: number;
  nextClusterPairID: number;
  volumes: StoredRpcVolume[];
  clusterPairs: StoredClusterPair[];
  volumePairs: StoredVolumePair[];
}

export interface ApiState {
  /** The JSON-RPC face's volumes and pairs (absent until first used). */
  rpc?: RpcState;
  gatewayUuid: string;
  peer: { host: string; port: number } | null;
  trap: { ip: string; port: number } | null;
  mngNet: { ip: string; netmask: string; gateway: string } | null;
  vms: StoredVm[];
}

export class ApiStore {
  private writeChain: Promise<void> = Promise.resolve();

  private constructor(readonly path: string, private current: ApiState) {}

  static async open(path: string): Promise<ApiStore> {
    await mkdir(dirname(path), { recursive: true });
    await rm(`${path}.tmp`, { force: true });
    let text: string | null = null;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (text === null) {
      const store = new ApiStore(path, { gatewayUuid: randomUUID(), peer: null, trap: null, mngNet: null, vms: [] });
      await store.update(() => undefined);
      return store;
    }
    let doc: Partial<ApiState> & { version?: unknown };
    try {
      doc = JSON.parse(text) as typeof doc;
    } catch (err) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `api store ${path} is not valid JSON`, { path }, err);
    }
    if (doc.version !== 1 || typeof doc.gatewayUuid !== 'string' || !Array.isArray(doc.vms)) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `api store ${path}: unsupported layout`, { path });
    }
    return new ApiStore(path, {
      gatewayUuid: doc.gatewayUuid, peer: doc.peer ?? null, trap: doc.trap ?? null, mngNet: doc.mngNet ?? null, vms: doc.vms,
      ...(doc.rpc === undefined ? {} : { rpc: doc.rpc }),
    });
  }

  /** A deep copy of the state (callers cannot change the store by mutating it). */
  get state(): ApiState {
    return structuredClone(this.current);
  }

  vm(vmUuid: string): StoredVm | undefined {
    const vm = this.current.vms.find((v) => v.vmUuid === vmUuid);
    return vm === undefined ? undefined : structuredClone(vm);
  }

  /** Applies `change` to a copy, writes it durably, then makes it current. Serialized. */
  update(change: (s: ApiState) => void): Promise<void> {
    const run = async (): Promise<void> => {
      const next = structuredClone(this.current);
      change(next);
      await this.writeFile(next);
      this.current = next;
    };
    const p = this.writeChain.then(run, run);
    this.writeChain = p.catch(() => undefined);
    return p;
  }

  private async writeFile(state: ApiState): Promise<void> {
    await writeJsonAtomic(this.path, { version: 1, ...state });
  }
}
