import { readFileSync } from 'node:fs';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { systemClock } from '../core/clock.js';
import { plantedBugs } from '../core/planted-bugs.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { createLogger, type Logger } from '../core/log.js';
import { systemRandom } from '../core/random.js';
import { tcpTransport } from '../link/transport.js';
import { gatewayCodec, type Codec, type CodecStats } from '../pipeline/codec.js';
import { loadConfig, type GatewayConfig } from '../replication/config.js';
import { loadNbdTlsCredentials, nbdTls } from '../nbd/nbd-tls.js';
import { NbdServer } from '../nbd/nbd-server.js';
import { DrGateway } from '../replication/target/dr-gateway.js';
import type { TransitionEvent } from '../replication/control.js';
import type { Mode } from '../replication/protection-state.js';
import { ProductionGateway } from '../replication/source/production-gateway.js';
import { DrSite, type FailoverKind, type FailoverResult } from '../replication/dr-site.js';
import { ProductionSite } from '../replication/production-site.js';
import type { NbdExport } from '../nbd/nbd-server.js';
import { runLoad, type LoadOptions } from './load-generator.js';
import { gatewayRegistry } from '../api/metrics/metrics.js';
import { gatewayFigures } from '../api/replication-figures.js';
import { startMetricsServer } from '../api/metrics/metrics-server.js';
import { startApi } from '../api/rest/api-runtime.js';
import { openClusterGateway } from './cluster-gateway.js';

// `vrg start --config FILE`: one gateway process. When started by `vrg demo` (an IPC channel is
// present) it also takes a few commands from its parent: run the built-in load, drain, report status.

export type IpcRequest =
  | { type: 'load'; load: LoadOptions }
  | { type: 'drain' }
  | { type: 'snapshot' }
  /** resetLatency: the latency histograms start afresh once this status is taken (a bench job's window). */
  | { type: 'status'; resetLatency?: boolean }
  | { type: 'diagnostics' }
  /** DR: fail a VM over to this gateway (dr-site.ts). */
  | { type: 'failover'; vmUuid: string; kind: FailoverKind }
  /** Production: an operator's action on a VM (the calls the management APIs make); `vrg chaos` schedules them. */
  | { type: 'operate'; vmUuid: string; op: VmOperation; mode?: Mode };

export type VmOperation = 'pause' | 'resume' | 'check' | 'mode';

export type IpcMessage =
  | { type: 'ready'; role: string; linkPort?: number; nbdPort?: number; restUrl?: string; metricsUrl?: string }
  | { type: 'status'; status: unknown; load?: LoadProgress; process: ProcessFigures }
  | { type: 'loadDone'; load: LoadProgress }
  | { type: 'drained' }
  | { type: 'diagnostics'; diagnostics: unknown }
  | { type: 'snapshotTaken' }
  | { type: 'operated' }
  | { type: 'failedOver'; result: FailoverResult }
  | { type: 'transition'; vmUuid: string; from: string; to: string; reason: string }
  | { type: 'error'; code?: string; message: string };

export interface LoadProgress {
  bytes: number;
  writes: number;
  /** Since the previous status report. */
  latenciesUs: number[];
  /** Load indices of the writes acknowledged since the previous status report. */
  ackedIndices: number[];
  /** Wall-clock time of the first write (after the generator's set-up). */
  startedAtMs: number | null;
}

type Gateway = ProductionGateway | DrGateway;

/**
 * This process's peak RSS. VmHWM starts afresh at exec; getrusage's maxrss does not (a child started
 * by a large parent would report the parent's size), so it is only the fallback off Linux.
 */
function peakRssBytes(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

export interface ProcessFigures {
  /** Peak resident set size of this gateway process. */
  rssPeakBytes: number;
  cpuUserUs: number;
  cpuSystemUs: number;
  /** Since the gateway started: V8 garbage-collection pause time (PerformanceObserver 'gc' entries). */
  gcMs: number;
  gcCount: number;
  /** Since the gateway started: the main thread's event loop, active and idle (performance.eventLoopUtilization). */
  eluActiveMs: number;
  eluIdleMs: number;
  codec: CodecStats;
  /** process.memoryUsage() now (main thread's V8 heap; external and ArrayBuffer bytes of the whole process). */
  memory?: NodeJS.MemoryUsage;
}

/** Counts V8 garbage collection on the main thread from now on. */
function watchGc(): { ms: number; count: number } {
  const gc = { ms: 0, count: 0 };
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gc.ms += e.duration;
      gc.count++;
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  return gc;
}

export async function openGateway(config: GatewayConfig, logger: Logger):
    Promise<{ gw: Gateway; site: DrSite | null; prodSite: ProductionSite | null; codec: Codec & { stats(): CodecStats }; nbdPort: number | null; close(): Promise<void> }> {
  const codec = gatewayCodec(config.codecThreads);
  const deps = { clock: systemClock, random: systemRandom, transport: tcpTransport, codec, logger };
  // DR: the DR gateway and the VMs failed over to it (served as their source).
  // Production: its source VMs and the ones it became the target of (failback).
  const site = config.role === 'dr' ? await DrSite.open(config, deps) : null;
  const prodSite = config.role === 'production' ? await ProductionSite.open(config, deps) : null;
  const gw: Gateway = site?.dr ?? prodSite!.source;
  let nbd: NbdServer | null = null;
  let nbdPort: number | null = null;
  if (config.nbd) {
    // Read at each negotiation: VMs added later (REST API) are exported too.
    const exports = (): NbdExport[] => (site ?? prodSite!).exports();
    const l = config.nbd;
    const tls = nbdTls(l.tls, l.tls === 'off' ? {} : loadNbdTlsCredentials({ pskFile: l.tlsPskFile, certFile: l.tlsCertFile, keyFile: l.tlsKeyFile }));
    nbd = new NbdServer({ exports, logger: logger.child({ front: 'nbd' }), tls, ...(l.allowClients ? { allowClients: l.allowClients } : {}) });
    nbdPort = await nbd.listen(l.host, l.port);
    if (l.socketPath !== undefined) await nbd.listenUnix(l.socketPath);
    logger.info({ host: l.host, port: nbdPort, socketPath: l.socketPath, tls: l.tls, exports: exports().map((e) => e.name) }, 'nbd listening');
  }
  return {
    gw,
    site,
    prodSite,
    codec,
    nbdPort,
    async close() {
      await nbd?.close();
      await (site ?? prodSite!).close();
      await codec.close();
    },
  };
}

export async function startCommand(configPath: string): Promise<void> {
  const config = await loadConfig(configPath);
  const logger = createLogger(`vrg-${config.role}`);
  if (config.cluster) return startClusterCommand(config, logger);
  // The engine's timers never hold the event loop, and while a gateway opens nothing else may (a DR retrying a
  // target write agent that is restarting): without this the process would end, exit code 0, mid-open.
  // An open that throws ends the process anyway.
  const openingKeepAlive = setInterval(() => {}, 60_000);
  const { gw, site, prodSite, codec, nbdPort, close: closeGateway } = await openGateway(config, logger);
  // The management REST API (config "api"): replays its stored configuration (peer, VMs) into the engine.
  const api = config.api ? await startApi({ gw, site, prodSite, api: config.api, logger, nbdPort }) : null;
  const metrics = config.metrics ? await startMetricsServer(gatewayRegistry(() => gatewayFigures(site, prodSite),
    { gateway: config.gatewayId, role: config.role }), config.metrics, logger) : null;
  const close = async (): Promise<void> => {
    await metrics?.close();
    await api?.close();
    await closeGateway();
  };
  logger.info({ gatewayId: config.gatewayId, role: config.role }, 'gateway started');
  if (plantedBugs().length > 0) logger.error({ plantedBugs: plantedBugs() }, 'VRG_PLANTED_BUG is set: this gateway runs with bugs planted for a checker test');
  const send = stopOnSignals(close, logger);
  clearInterval(openingKeepAlive); // from here the IPC channel's listeners (or the servers) hold the process
  send({
    type: 'ready', role: config.role,
    ...(gw instanceof DrGateway ? { linkPort: gw.linkPort } : {}),
    ...(nbdPort === null ? {} : { nbdPort }),
    ...(api === null ? {} : { restUrl: api.url }),
    ...(metrics === null ? {} : { metricsUrl: metrics.url }),
  });
  if (gw instanceof ProductionGateway) {
    gw.on('transition', (ev: TransitionEvent) => send({ type: 'transition', vmUuid: ev.vmUuid, from: ev.from, to: ev.to, reason: ev.reason }));
  }
  const progress: LoadProgress = { bytes: 0, writes: 0, latenciesUs: [], ackedIndices: [], startedAtMs: null };
  const samplesMax = 100_000;
  const gc = watchGc();
  process.on('message', (req: IpcRequest) => {
    void handle(req).catch((err: Error & { code?: string }) => send({ type: 'error', code: err.code, message: err.message }));
  });
  const handle = async (req: IpcRequest): Promise<void> => {
    if (req.type === 'status') {
      const cpu = process.cpuUsage();
      const elu = performance.eventLoopUtilization();
      const figures: ProcessFigures = {
        rssPeakBytes: peakRssBytes(), cpuUserUs: cpu.user, cpuSystemUs: cpu.system,
        gcMs: gc.ms, gcCount: gc.count, eluActiveMs: elu.active, eluIdleMs: elu.idle, codec: codec.stats(),
        memory: process.memoryUsage(),
      };
      send({ type: 'status', status: (site ?? prodSite!).status(), load: progress, process: figures });
      if (req.resetLatency) gw.resetLatency();
      progress.latenciesUs = [];
      progress.ackedIndices = [];
    } else if (req.type === 'failover') {
      if (site !== null) send({ type: 'failedOver', result: await site.failover(req.vmUuid, req.kind) });
      else if (req.kind === 'planned' || req.kind === 'unplanned') send({ type: 'failedOver', result: await prodSite!.failover(req.vmUuid, req.kind) as FailoverResult });
      else throw vrgError(ErrorCode.INVALID_ARGUMENT, `a production gateway takes no ${req.kind} failover`);
    } else if (req.type === 'diagnostics') {
      send({ type: 'diagnostics', diagnostics: gw.diagnostics() });
    } else if (req.type === 'load') {
      // The VMs this process is the source of: production's, or the ones failed over to this DR gateway.
      const source = prodSite?.source ?? site?.promotedGateway ?? null;
      if (source === null) throw vrgError(ErrorCode.VM_ROLE_CONFLICT, 'this gateway is the source of no VM');
      await runLoad(req.load, (w) => {
        progress.startedAtMs ??= Date.now();
        return source.write(w.volUuid, w.offset, w.data);
      }, (w, ns) => {
        progress.bytes += w.data.byteLength;
        progress.writes++;
        if (progress.latenciesUs.length < samplesMax) progress.latenciesUs.push(Number(ns / 1000n));
        if (progress.ackedIndices.length < samplesMax) progress.ackedIndices.push(w.index);
      });
      await source.flush();
      send({ type: 'loadDone', load: progress });
    } else if (req.type === 'snapshot' && gw instanceof ProductionGateway) {
      for (const vm of gw.vmConfigs()) if (vm.mode === 'snapshots') gw.takeSnapshot(vm.vmUuid);
      send({ type: 'snapshotTaken' });
    } else if (req.type === 'operate' && gw instanceof ProductionGateway) {
      operate(gw, req);
      send({ type: 'operated' });
    } else if (req.type === 'drain') {
      await (prodSite?.source ?? site?.promotedGateway)?.drain();
      send({ type: 'drained' });
    } else {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, `a ${config.role} gateway takes no ${req.type} request`);
    }
  };
}

/** SIGTERM, SIGINT or the parent going: close, then exit 0. Returns the IPC sender (a no-op without a parent). */
function stopOnSignals(close: () => Promise<void>, logger: Logger): (m: IpcMessage) => void {
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await close();
    logger.info('gateway stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  process.on('disconnect', () => void stop());
  return (m) => {
    if (process.send && process.connected) process.send(m);
  };
}

/** Cluster mode: the member runs until a signal; a parent (a test) may ask for its status over IPC. */
async function startClusterCommand(config: GatewayConfig, logger: Logger): Promise<void> {
  const openingKeepAlive = setInterval(() => {}, 60_000);
  const gw = await openClusterGateway(config, logger);
  const send = stopOnSignals(() => gw.close(), logger);
  process.on('message', (req: IpcRequest) => {
    if (req.type !== 'status') return send({ type: 'error', code: ErrorCode.INVALID_ARGUMENT, message: `a cluster member takes no ${req.type} request` });
    const cpu = process.cpuUsage();
    send({ type: 'status', status: gw.status(), process: { rssPeakBytes: peakRssBytes(), cpuUserUs: cpu.user, cpuSystemUs: cpu.system } as ProcessFigures });
  });
  logger.info({ gatewayId: config.gatewayId, role: config.role, site: config.cluster!.site }, 'cluster gateway started');
  clearInterval(openingKeepAlive);
  // The registry's etcd client and the servers hold the event loop.
  setInterval(() => {}, 3_600_000);
  send({ type: 'ready', role: config.role, ...(gw.nbdPort === null ? {} : { nbdPort: gw.nbdPort }) });
}

function operate(gw: ProductionGateway, req: Extract<IpcRequest, { type: 'operate' }>): void {
  switch (req.op) {
    case 'pause': return gw.pause(req.vmUuid);
    case 'resume': return gw.resume(req.vmUuid);
    case 'check': return gw.requestCheck(req.vmUuid);
    case 'mode':
      if (req.mode === undefined) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'a mode change needs a mode');
      return gw.setMode(req.vmUuid, req.mode);
  }
}
