import { randomBytes } from 'node:crypto';
import { mkdir, open, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ErrorCode, vrgError } from '../core/errors.js';
import { MiB } from '../core/limits.js';
import { formatBytes } from '../core/size.js';
import type { DrStatus } from '../replication/target/dr-gateway.js';
import type { ProductionStatus } from '../replication/source/production-gateway.js';
import { apiSession } from './api-command.js';
import { JSONRPC_PATH } from '../api/jsonrpc/jsonrpc-face.js';
import { pairOverJsonRpc } from '../api/jsonrpc/jsonrpc-setup.js';
import { PEER_RPC_VERSION } from '../api/jsonrpc/peer-rpc-client.js';
import { spawnGateway, type GatewayChild } from './gateway-child.js';
import type { IpcMessage, LoadProgress, ProcessFigures } from './gateway-process.js';

type StatusReply = Extract<IpcMessage, { type: 'status' }>;
import { ProgressDisplay } from './progress.js';
import { runFailoverDemo, type FailoverDemo } from './demo-failover.js';

// `vrg demo`: a production and a DR gateway as two processes on loopback, one protected VM with two
// volumes, a built-in load, live progress, and at the end a byte-for-byte check of every DR volume.

export interface DemoOptions {
  dir: string;
  sizeBytes: number;
  volumeSizeBytes: number;
  compress: 0 | 1;
  encrypt: 0 | 1;
  source?: string | undefined;
  seed: number;
  writeBytes: number;
  queueDepth: number;
  /** 'builtin' writes the built-in load; 'none' waits for outside NBD clients until SIGINT/SIGTERM. */
  load: 'builtin' | 'none';
  /** First password of `admin` on both gateways' REST API (default: generated and printed once). */
  adminPassword?: string | undefined;
  mode?: 'async' | 'sync' | 'snapshots';
  journalCapacityBytes?: number;
  /** Bandwidth cap on the link (0 or absent: none). */
  linkRateBytesPerSec?: number;
  /** SnapshotsOnly: interval between snapshots (0: one snapshot after the load). */
  snapshotIntervalMs?: number;
  /** How the demo pairs the gateways: the REST API (default) or the Element JSON-RPC API. */
  api?: 'rest' | 'jsonrpc';
  /** Production's write-back intake (config intake.writeBack). */
  writeBack?: boolean;
  /** After the load, run a failover cycle under load (demo-failover.ts). */
  failover?: FailoverDemo;
}

export interface DemoResult {
  verified: boolean;
  elapsedMs: number;
  bytes: number;
  latenciesUs: number[];
  production: ProductionStatus;
  productionProcess: ProcessFigures;
  dr: DrStatus | null;
  drProcess: ProcessFigures | null;
}

function gatewayConfig(role: 'production' | 'dr', dir: string, port: number, secret: string, o: DemoOptions, vmUuid: string) {
  return {
    role, gatewayId: `demo-${role}`, dataDir: join(dir, role), codecThreads: 1,
    link: { host: '127.0.0.1', port, secret, rateBytesPerSec: o.linkRateBytesPerSec ?? 0 },
    nbd: { host: '127.0.0.1', port: 0 },
    metrics: { host: '127.0.0.1', port: 0 },
    journalCapacityBytes: o.journalCapacityBytes ?? 1024 * MiB,
    protection: { snapshotIntervalMs: o.snapshotIntervalMs ?? 0 },
    intake: { writeBack: o.writeBack === true },
    vms: [{
      vmUuid, vmName: 'demo-vm', compressOption: o.compress, encryptOption: o.encrypt,
      volumes: [0, 1].map((i) => ({
        volUuid: `${vmUuid.slice(0, 24)}${String(i).padStart(12, "0")}`,
        path: join(dir, role === 'production' ? 'source' : 'target', `disk${i}.img`),
        sizeBytes: o.volumeSizeBytes,
      })),
    }],
  };
}

export async function runDemo(o: DemoOptions, out: NodeJS.WriteStream = process.stdout): Promise<DemoResult> {
  const dir = resolve(o.dir);
  if (o.source) {
    const st = await stat(o.source).catch(() => null);
    if (!st?.isFile()) throw vrgError(ErrorCode.INVALID_ARGUMENT, `--source ${o.source}: not a readable file`);
  }
  for (const sub of ['production', 'dr', 'source', 'target']) await rm(join(dir, sub), { recursive: true, force: true });
  for (const sub of ['source', 'target']) await mkdir(join(dir, sub), { recursive: true });
  const secret = randomBytes(32).toString('hex');
  const vmUuid = '4a1c7e52-9d3b-4f0e-8a61-2b5c9e7d3f10';
  const drCfg = gatewayConfig('dr', dir, 0, secret, o, vmUuid);
  // The gateways start with no VM and no peer: the demo configures both through the REST API.
  const adminPassword = o.adminPassword ?? randomBytes(12).toString('base64url');
  if (o.adminPassword === undefined) out.write(`admin-password: ${adminPassword}\n`);
  const api = { host: '127.0.0.1', port: 0, adminPassword };
  await writeFile(join(dir, 'dr.json'), JSON.stringify({ ...drCfg, vms: [], api }, null, 2));
  const dr = spawnGateway('dr', join(dir, 'dr.json'), join(dir, 'dr.log'));
  const children: GatewayChild[] = [dr];
  try {
    type Ready = { type: 'ready'; role: string; linkPort?: number; nbdPort?: number; restUrl?: string; metricsUrl?: string };
    const ready = await dr.request<Ready>(null, 'ready');
    const prodCfg = gatewayConfig('production', dir, 0, secret, o, vmUuid);
    await writeFile(join(dir, 'production.json'), JSON.stringify({ ...prodCfg, vms: [], api }, null, 2));
    const prod = spawnGateway('production', join(dir, 'production.json'), join(dir, 'production.log'));
    children.push(prod);
    const prodReady = await prod.request<Ready>(null, 'ready');
    // Protection state changes of the demo VM, as they happen.
    prod.onMessage((m) => {
      if (m.type === 'transition') out.write(`state: ${m.vmUuid} ${m.from} -> ${m.to}\n`);
    });
    if (o.api === 'jsonrpc') await configureOverJsonRpc(prodReady.restUrl!, ready.restUrl!, adminPassword, prodCfg.vms[0]!, drCfg.vms[0]!, o.mode ?? 'async', out);
    else await configureOverRest(prodReady.restUrl!, ready.restUrl!, ready.linkPort!, adminPassword, prodCfg.vms[0]!, drCfg.vms[0]!, o.mode ?? 'async');
    out.write(`rest: production ${prodReady.restUrl}\nrest: dr ${ready.restUrl}\n`);
    out.write(`metrics: production ${prodReady.metricsUrl}\nmetrics: dr ${ready.metricsUrl}\n`);
    const vols = prodCfg.vms[0]!.volumes;
    for (const v of vols) out.write(`source: ${v.volUuid} ${v.path}\n`);
    for (const v of drCfg.vms[0]!.volumes) out.write(`target: ${v.volUuid} ${v.path}\n`);
    for (const v of vols) out.write(`intake: ${v.volUuid} nbd://127.0.0.1:${prodReady.nbdPort}/${v.volUuid}\n`);
    for (const v of vols) out.write(`replica: ${v.volUuid} nbd://127.0.0.1:${ready.nbdPort}/${v.volUuid}\n`);
    const result = await driveLoad(prod, o, vols, out);
    let prodNow = prod;
    if (o.failover) {
      ({ prod: prodNow } = await runFailoverDemo(o.failover, {
        prod, dr, prodRestUrl: prodReady.restUrl!, drRestUrl: ready.restUrl!, prodNbdPort: prodReady.nbdPort!, drNbdPort: ready.nbdPort!,
        password: adminPassword, vmUuid, volumes: vols, out,
        load: (totalBytes, seed) => ({ totalBytes, volumes: vols, writeBytes: o.writeBytes, queueDepth: o.queueDepth, seed: o.seed + seed }),
        restartProduction: async () => {
          const p = spawnGateway('production', join(dir, 'production.json'), join(dir, 'production.log'));
          children.push(p);
          const r = await p.request<Ready>(null, 'ready');
          return { prod: p, restUrl: r.restUrl!, nbdPort: r.nbdPort! };
        },
      }));
    }
    const drReply = await dr.request<StatusReply>({ type: 'status' }, 'status');
    result.dr = drReply.status as DrStatus;
    result.drProcess = drReply.process;
    const [pc, dc] = [await prodNow.stop(), await dr.stop()];
    if (pc !== 0 || dc !== 0) throw new Error(`gateways exited with codes ${pc} and ${dc}`);
    const mismatch = await compareVolumes(vols.map((v, i) => [v.path, drCfg.vms[0]!.volumes[i]!.path]));
    result.verified = mismatch === null;
    if (mismatch) out.write(`MISMATCH: ${mismatch}\n`);
    else out.write(`verified: ${vols.length * o.volumeSizeBytes} bytes identical\n`);
    return result;
  } finally {
    await Promise.all(children.map((c) => c.stop()));
  }
}

type DemoVm = ReturnType<typeof gatewayConfig>['vms'][number];

/** DR binds its target volumes, then production pairs with DR and protects the VM: all over REST. */
async function configureOverRest(prodUrl: string, drUrl: string, linkPort: number, password: string, prodVm: DemoVm, drVm: DemoVm,
    mode: 'async' | 'sync' | 'snapshots'): Promise<void> {
  const volList = (vm: DemoVm) => vm.volumes.map((v, i) => ({ volUuid: v.volUuid, seqNum: i + 1, volumeUrl: v.path, sizeBytes: v.sizeBytes }));
  const [prod, dr] = [await apiSession(prodUrl, 'admin', password), await apiSession(drUrl, 'admin', password)];
  await dr.call('POST', '/vmstrategy', { vmUuid: drVm.vmUuid, vmName: drVm.vmName, volList: volList(drVm) });
  await prod.call('POST', '/vrgmap', { dstIp: '127.0.0.1', dstPort: linkPort });
  await prod.call('POST', '/vmstrategy', { vmUuid: prodVm.vmUuid, vmName: prodVm.vmName, compressOption: prodVm.compressOption,
    encryptOption: prodVm.encryptOption, volList: volList(prodVm), mode });
}

type Figure = 'bytesIn' | 'writes' | 'backlogRecords' | 'journalUsedBytes' | 'plainBytesSent' | 'bytesSent';

/** The demo's figures over all its VMs (JSON-RPC pairing makes one engine VM per volume). */
function vmTotals(vms: ProductionStatus['vms']): Record<Figure, number> {
  const figures: Figure[] = ['bytesIn', 'writes', 'backlogRecords', 'journalUsedBytes', 'plainBytesSent', 'bytesSent'];
  return Object.fromEntries(figures.map((k) => [k, vms.reduce((n, v) => n + v[k], 0)])) as Record<Figure, number>;
}

/** Plain bytes of the data shipped over their bytes on the wire (compression happens at ship time). */
function shipRatio(vm: Record<Figure, number>): number {
  return vm.bytesSent > 0 ? vm.plainBytesSent / vm.bytesSent : 1;
}

/** The same set-up through the Element JSON-RPC API: cluster pairing, then one volume pair per volume. */
async function configureOverJsonRpc(prodUrl: string, drUrl: string, password: string, prodVm: DemoVm, drVm: DemoVm,
    mode: 'async' | 'sync' | 'snapshots', out: NodeJS.WriteStream): Promise<void> {
  const [productionMvip, drMvip] = [new URL(prodUrl).origin, new URL(drUrl).origin];
  const volumes = prodVm.volumes.map((v, i) => ({ name: `${prodVm.vmName}-disk${i}`, volUuid: v.volUuid, sizeBytes: v.sizeBytes,
    sourcePath: v.path, targetPath: drVm.volumes[i]!.path }));
  await pairOverJsonRpc({ productionMvip, drMvip, user: 'admin', password, volumes, mode });
  out.write(`jsonrpc: production ${productionMvip}${JSONRPC_PATH}/${PEER_RPC_VERSION}\njsonrpc: dr ${drMvip}${JSONRPC_PATH}/${PEER_RPC_VERSION}\n`);
}

async function driveLoad(prod: GatewayChild, o: DemoOptions, vols: Array<{ volUuid: string; sizeBytes: number }>,
    out: NodeJS.WriteStream): Promise<DemoResult> {
  const display = new ProgressDisplay(out);
  const started = Date.now();
  const latencies: number[] = [];
  let last: ProductionStatus | null = null;
  let figures: ProcessFigures | null = null;
  let load: LoadProgress = { bytes: 0, writes: 0, latenciesUs: [], ackedIndices: [], startedAtMs: null };
  const poll = async (): Promise<void> => {
    const s = await prod.request<StatusReply>({ type: 'status' }, 'status');
    last = s.status as ProductionStatus;
    figures = s.process;
    if (s.load) {
      load = s.load;
      latencies.push(...s.load.latenciesUs);
    }
    const vm = vmTotals(last.vms);
    if (o.load === 'none') load = { ...load, bytes: vm.bytesIn, writes: vm.writes };
    display.update({
      loadBytes: load.bytes, loadTotalBytes: o.load === 'none' ? 0 : o.sizeBytes, backlogRecords: vm.backlogRecords, journalBytes: vm.journalUsedBytes,
      ratio: shipRatio(vm), rttMs: last.rttMs, connected: last.connected,
      state: o.load === 'none' ? 'serving' : load.bytes < o.sizeBytes ? 'writing' : 'draining',
    }, Date.now());
  };
  const timer = setInterval(() => void poll().catch(() => undefined), o.load === 'none' ? 1000 : 250);
  try {
    if (o.load === 'none') {
      out.write('waiting for NBD clients on the intake exports; SIGINT or SIGTERM drains, verifies and stops\n');
      await untilSignal();
    } else {
      // The initial sync (a full resync, then a check) first, as a real deployment would: the load
      // then runs against a protected VM in queue, and overflow into CBT shows as its own transition.
      await prod.request({ type: 'drain' }, 'drained');
      await prod.request({ type: 'load', load: {
        totalBytes: o.sizeBytes, volumes: vols, writeBytes: o.writeBytes, queueDepth: o.queueDepth, seed: o.seed, sourcePath: o.source,
      } }, 'loadDone');
    }
    // SnapshotsOnly ships nothing live: a final snapshot carries what the load wrote.
    if (o.mode === 'snapshots') await prod.request({ type: 'snapshot' }, 'snapshotTaken');
    await prod.request({ type: 'drain' }, 'drained');
    clearInterval(timer);
    await poll();
  } finally {
    clearInterval(timer);
    display.finish();
  }
  // From the first write (the generator's set-up is not replication) until DR acknowledged the last.
  const elapsedMs = Date.now() - (load.startedAtMs ?? started);
  const vm = vmTotals(last!.vms);
  latencies.sort((a, b) => a - b);
  const pct = (p: number): number => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? 0;
  if (o.load === 'none') {
    out.write(`replicated: ${formatBytes(vm.bytesIn)} in ${vm.writes} writes from NBD clients; ` +
      `compression ${shipRatio(vm).toFixed(2)}:1 (data shipped)\n`);
  } else out.write(`replicated: ${formatBytes(load.bytes)} in ${(elapsedMs / 1000).toFixed(2)} s, ` +
    `${(load.bytes / 1e6 / (elapsedMs / 1000)).toFixed(1)} MB/s end to end; ` +
    `compression ${shipRatio(vm).toFixed(2)}:1 (data shipped); ` +
    `ack latency p50 ${(pct(0.5) / 1000).toFixed(2)} ms p99 ${(pct(0.99) / 1000).toFixed(2)} ms\n`);
  return {
    verified: false, elapsedMs, bytes: load.bytes, latenciesUs: latencies, production: last!, productionProcess: figures!,
    dr: null, drProcess: null,
  };
}

function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
}

/** Null when every pair of files is identical, else where the first difference is. */
export async function compareVolumes(pairs: Array<[string, string]>): Promise<string | null> {
  const chunk = 4 * MiB;
  for (const [a, b] of pairs) {
    const [fa, fb] = [await open(a, 'r'), await open(b, 'r')];
    try {
      const [sa, sb] = [(await fa.stat()).size, (await fb.stat()).size];
      if (sa !== sb) return `${b} is ${sb} bytes, ${a} is ${sa} bytes`;
      const [ba, bb] = [Buffer.alloc(chunk), Buffer.alloc(chunk)];
      for (let at = 0; at < sa; at += chunk) {
        const n = Math.min(chunk, sa - at);
        await Promise.all([fa.read(ba, 0, n, at), fb.read(bb, 0, n, at)]);
        if (!ba.subarray(0, n).equals(bb.subarray(0, n))) {
          let i = 0;
          while (ba[i] === bb[i]) i++;
          return `${b} differs from ${a} at byte ${at + i}`;
        }
      }
    } finally {
      await fa.close();
      await fb.close();
    }
  }
  return null;
}
