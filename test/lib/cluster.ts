import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawnGateway, type GatewayChild } from '../../src/cli/gateway-child.js';
import { readClusterStatus, type ClusterStatus } from '../../src/cli/cluster-status.js';
import { NbdClient } from '../../src/volume/nbd-client.js';
import { MiB } from '../../src/core/limits.js';

// Cluster-mode gateways as real `vrg start` processes against one etcd, VMs whose source volumes are shared
// files of the production site and whose targets are shared files of the DR site, and a stamped write load
// that follows each VM to its owner's NBD intake (as a hypervisor's agent would after a takeover).

export const blockBytes = 4096;

export interface ClusterLayout {
  readonly dir: string;
  readonly etcd: string;
  readonly secret: string;
  readonly vmCount: number;
  readonly volumeBytes: number;
}

export const vmId = (i: number): string => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
export const volId = (i: number): string => `10000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
export const sourcePath = (l: ClusterLayout, i: number): string => join(l.dir, 'source', `vm${i}.img`);
export const targetPath = (l: ClusterLayout, i: number): string => join(l.dir, 'target', `vm${i}.img`);

export function layout(dir: string, etcd: string, vmCount: number, volumeBytes = 8 * MiB): ClusterLayout {
  return { dir, etcd, secret: randomBytes(32).toString('hex'), vmCount, volumeBytes };
}

/** The VM settings files for both sites (what `vrg cluster protect` stores). */
export async function writeVmFiles(l: ClusterLayout): Promise<{ prod: string; dr: string }> {
  const vm = (i: number, url: string) => ({
    vmUuid: vmId(i), vmName: `vm${i}`, compressOption: 1, encryptOption: 1,
    volumes: [{ volUuid: volId(i), url, sizeBytes: l.volumeBytes }],
  });
  const ids = Array.from({ length: l.vmCount }, (_, i) => i + 1);
  const files = { prod: join(l.dir, 'vms-prod.json'), dr: join(l.dir, 'vms-dr.json') };
  await writeFile(files.prod, JSON.stringify(ids.map((i) => vm(i, sourcePath(l, i)))));
  await writeFile(files.dr, JSON.stringify(ids.map((i) => vm(i, targetPath(l, i)))));
  return files;
}

export async function startMember(l: ClusterLayout, role: 'production' | 'dr', id: string, leaseTtlSeconds: number): Promise<GatewayChild> {
  const config = {
    role, gatewayId: id, dataDir: join(l.dir, id),
    link: { host: '127.0.0.1', port: 0, secret: l.secret },
    codecThreads: 1, journalCapacityBytes: 256 * MiB,
    ...(role === 'production' ? { nbd: { host: '127.0.0.1', port: 0 } } : {}),
    cluster: { etcd: [l.etcd], site: role === 'production' ? 'prod' : 'dr', peerSite: role === 'production' ? 'dr' : 'prod', leaseTtlSeconds },
  };
  const file = join(l.dir, `${id}.json`);
  await writeFile(file, JSON.stringify(config));
  const child = spawnGateway(id, file, join(l.dir, `${id}.log`));
  await child.request(null, 'ready');
  return child;
}

export const prodStatus = (l: ClusterLayout): Promise<ClusterStatus> => readClusterStatus([l.etcd], 'prod');
export const drStatus = (l: ClusterLayout): Promise<ClusterStatus> => readClusterStatus([l.etcd], 'dr');

/** True when every VM has an owner on both sites, and each production owner reports it in queue with no lag. */
export async function allReplicating(l: ClusterLayout): Promise<boolean> {
  const [p, d] = await Promise.all([prodStatus(l), drStatus(l)]);
  if (p.vms.length !== l.vmCount || d.vms.filter((v) => v.owner !== null).length !== l.vmCount) return false;
  return p.vms.every((v) => v.owner !== null && v.state === 'queue' && v.lagBytes === 0);
}

/** Each block index of a VM written with a unique stamp; acked: the blocks whose write was acknowledged. */
export class StampedLoad {
  readonly acked = new Map<number, Map<number, Buffer>>();
  readonly attempted = new Map<number, Set<number>>();
  writes = 0;
  failures = 0;
  private stopped = false;
  private readonly loops: Promise<void>[] = [];

  /** Each VM's writer writes blocks [fromBlock, fromBlock + blocks): loads of one test take disjoint ranges. */
  constructor(private readonly l: ClusterLayout, private readonly fromBlock = 0, private readonly blocks = 512) {}

  start(): void {
    for (let i = 1; i <= this.l.vmCount; i++) this.loops.push(this.run(i));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
  }

  /** One VM's writer: the next unwritten block, through its owner's intake; a failure reconnects to the owner now. */
  private async run(i: number): Promise<void> {
    const end = Math.min(this.l.volumeBytes / blockBytes, this.fromBlock + this.blocks);
    const acked = new Map<number, Buffer>();
    const tried = new Set<number>();
    this.acked.set(i, acked);
    this.attempted.set(i, tried);
    let next = this.fromBlock;
    let client: NbdClient | null = null;
    while (!this.stopped && next < end) {
      try {
        client ??= await this.connect(i);
        const data = stamp(i, next);
        tried.add(next);
        await client.write(next * blockBytes, data);
        acked.set(next, data);
        this.writes++;
        next++;
      } catch {
        this.failures++;
        next++; // a block whose write failed is never written again: it holds the stamp or zeros
        await client?.disconnect().catch(() => undefined);
        client = null;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    await client?.disconnect().catch(() => undefined);
  }

  private async connect(i: number): Promise<NbdClient> {
    const s = await prodStatus(this.l);
    const owner = s.vms.find((v) => v.vmUuid === vmId(i))?.owner;
    const url = s.members.find((m) => m.id === owner)?.nbdUrl;
    if (!url) throw new Error(`VM ${i} has no owner with an NBD intake yet`);
    const u = new URL(url);
    return NbdClient.connect({ host: u.hostname, port: Number(u.port), exportName: volId(i), requestTimeoutMs: 10_000 });
  }
}

export function stamp(vm: number, block: number): Buffer {
  const b = Buffer.alloc(blockBytes);
  const seed = createHash('sha256').update(`${vm}/${block}`).digest();
  for (let at = 0; at < blockBytes; at += seed.length) seed.copy(b, at);
  b.writeUInt32LE(vm, 0);
  b.writeUInt32LE(block, 4);
  return b;
}

/** Acknowledged blocks of VM `i` that `path` does not hold. */
export async function missingAcked(path: string, acked: ReadonlyMap<number, Buffer>): Promise<number> {
  const data = await readFile(path);
  let missing = 0;
  for (const [block, want] of acked) if (!data.subarray(block * blockBytes, (block + 1) * blockBytes).equals(want)) missing++;
  return missing;
}

export async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([readFile(a).catch(() => null), readFile(b).catch(() => null)]);
  return x !== null && y !== null && x.equals(y);
}

export interface FencingEntry { vmUuid: string; token: number; prodId: string; atMs: number; member: string }

export async function fencingLog(l: ClusterLayout, drIds: readonly string[]): Promise<FencingEntry[]> {
  const entries: FencingEntry[] = [];
  for (const id of drIds) {
    const text = await readFile(join(l.dir, id, 'fencing.jsonl'), 'utf8').catch(() => '');
    for (const line of text.split('\n')) if (line.trim() !== '') entries.push(JSON.parse(line) as FencingEntry);
  }
  return entries.sort((a, b) => a.atMs - b.atMs);
}
