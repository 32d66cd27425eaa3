import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/log.js';
import { systemRandom } from '../../src/core/random.js';
import { tcpTransport, type Transport } from '../../src/link/transport.js';
import { InlineCodec, PoolCodec, type Codec } from '../../src/pipeline/codec.js';
import { parseConfig, type GatewayConfig } from '../../src/replication/config.js';
import { DrGateway } from '../../src/replication/target/dr-gateway.js';
import { ProductionGateway, type ProductionGatewayOptions } from '../../src/replication/source/production-gateway.js';
import { openVolume } from '../../src/volume/open-volume.js';
import type { Volume } from '../../src/volume/volume.js';
import { FaultProxy } from './fault-proxy.js';
import { drained, pairState, stallTimeoutMs } from './wait.js';

// Both gateways in this process over real TCP on loopback, optionally through a FaultProxy.

export interface PairOptions {
  dir: string;
  /** Process pairs: the gateways' codecThreads (0: the codec on the event loop). */
  codecThreads?: number;
  compress?: 0 | 1;
  encrypt?: 0 | 1;
  volumeSizeBytes?: number;
  volumes?: number;
  pool?: boolean;
  proxy?: boolean;
  journalCapacityBytes?: number;
  /** Production's link.compression (default auto) and link.rateBytesPerSec (default none). */
  compression?: 'auto' | 'always' | 'never';
  linkRateBytesPerSec?: number;
  /** DR target URLs (e.g. nbd:// write agents) instead of files, one per volume. */
  drUrls?: string[];
  /** Wraps each DR target volume (fault and timing injection). */
  wrapDrVolume?: (v: Volume) => Volume;
  /** Wraps each production source volume (fault injection). */
  wrapProdVolume?: (v: Volume) => Volume;
  /** The network both gateways use (default: TCP on loopback). */
  transport?: Transport;
  /** The VM's replication mode in its configuration (default: none given, i.e. async). */
  mode?: 'async' | 'sync' | 'snapshots';
  /** Production gateway options (link-down limits, CBT granularity, snapshot interval). */
  prodOptions?: ProductionGatewayOptions;
}

export const vmUuid = '0b7d3c4e-1f2a-4b5c-9d8e-7f6a5b4c3d2e';

/** Both gateways' configuration files (JSON objects) for one protected VM. */
export function pairConfigJson(o: PairOptions, secret = randomBytes(32).toString('hex')) {
  const vols = (side: string) => Array.from({ length: o.volumes ?? 2 }, (_, i) => ({
    volUuid: `vol-${i}`,
    path: side === 'target' && o.drUrls?.[i] ? o.drUrls[i]! : join(o.dir, side, `disk${i}.img`),
    sizeBytes: o.volumeSizeBytes ?? 16 * 1024 * 1024,
  }));
  const base = (role: string, side: string) => ({
    role, gatewayId: `test-${role}`, dataDir: join(o.dir, role), ...(o.codecThreads !== undefined ? { codecThreads: o.codecThreads } : {}),
    link: { host: '127.0.0.1', port: 0, secret, compression: o.compression ?? 'auto', rateBytesPerSec: role === 'production' ? o.linkRateBytesPerSec ?? 0 : 0 },
    journalCapacityBytes: o.journalCapacityBytes ?? 256 * 1024 * 1024,
    vms: [{ vmUuid, vmName: 'vm', compressOption: o.compress ?? 1, encryptOption: o.encrypt ?? 1, volumes: vols(side), ...(o.mode ? { mode: o.mode } : {}) }],
  });
  return { prod: base('production', 'source'), dr: base('dr', 'target') };
}

export function pairConfigs(o: PairOptions): { prod: GatewayConfig; dr: GatewayConfig } {
  const json = pairConfigJson(o);
  return { prod: parseConfig(json.prod), dr: parseConfig(json.dr) };
}

export interface Pair {
  prod: ProductionGateway;
  dr: DrGateway;
  proxy: FaultProxy | null;
  configs: { prod: GatewayConfig; dr: GatewayConfig };
  restartDr(): Promise<void>;
  /**
   * Waits until DR acknowledged everything written, at most `ms`: a stall rejects with both gateways' state
   * (StallError) and closes the pair, so the test ends at once instead of at tap's timeout.
   */
  drain(ms?: number): Promise<void>;
  /** What both gateways are doing now (link, shipper, journal, intake, DR apply). */
  state(): unknown;
  /** Idempotent. */
  close(): Promise<void>;
}

export async function startPair(o: PairOptions): Promise<Pair> {
  const configs = pairConfigs(o);
  const codec: Codec = o.pool ? new PoolCodec({ threads: 1 }) : new InlineCodec();
  const deps = { clock: systemClock, random: systemRandom, transport: o.transport ?? tcpTransport, codec, logger: silentLogger };
  const wrapped = (wrap: ((v: Volume) => Volume) | undefined) => wrap
    ? { ...deps, openVolume: async (url: string, opts: Parameters<typeof openVolume>[1]) => wrap(await openVolume(url, opts)) }
    : deps;
  const drDeps = wrapped(o.wrapDrVolume);
  const prodDeps = wrapped(o.wrapProdVolume);
  let dr = await DrGateway.open(configs.dr, drDeps);
  const proxy = o.proxy ? await FaultProxy.start(dr.linkPort) : null;
  configs.dr.link.port = dr.linkPort;
  configs.prod.link.port = proxy ? proxy.port : dr.linkPort;
  const prod = await ProductionGateway.open(configs.prod, prodDeps, o.prodOptions);
  const pair: Pair = {
    prod, dr, proxy, configs,
    async restartDr() {
      await pair.dr.close();
      pair.dr = dr = await DrGateway.open(configs.dr, drDeps);
    },
    async drain(ms = stallTimeoutMs) {
      try {
        await drained(prod, pair.dr, ms);
        // Acknowledged means durable in DR's log; the targets follow in the background.
        await pair.dr.caughtUp(ms);
      } catch (err) {
        await pair.close();
        throw err;
      }
    },
    state: () => pairState(prod, pair.dr)(),
    close() {
      closing ??= (async () => {
        await prod.close();
        await pair.dr.close();
        await proxy?.close();
        await codec.close();
      })();
      return closing;
    },
  };
  let closing: Promise<void> | null = null;
  return pair;
}
