import { join } from 'node:path';
import { EtcdRegistry } from '../cluster/etcd-registry.js';
import { DrMember } from '../cluster/dr-member.js';
import { ProductionMember } from '../cluster/production-member.js';
import { systemClock } from '../core/clock.js';
import { openLocked } from '../core/data-dir-lock.js';
import { nodeFiles } from '../core/files.js';
import type { Logger } from '../core/log.js';
import { systemRandom } from '../core/random.js';
import { tcpTransport } from '../link/transport.js';
import { loadNbdTlsCredentials, nbdTls } from '../nbd/nbd-tls.js';
import { NbdServer } from '../nbd/nbd-server.js';
import { gatewayCodec } from '../pipeline/codec.js';
import type { ClusterConfig, GatewayConfig } from '../replication/config.js';
import type { GatewayDeps } from '../replication/gateway-deps.js';
import { productionExports } from '../replication/nbd-exports.js';
import { ProductionGateway } from '../replication/source/production-gateway.js';
import { DrGateway } from '../replication/target/dr-gateway.js';

// `vrg start` of a gateway whose config has a "cluster" section: a member of its site in etcd
// (src/cluster). Production: one engine, its NBD intake exporting the VMs it owns now, its URL in the member
// record. DR: an engine per production member it pairs with, each on its own link port.

export interface ClusterGateway {
  readonly role: 'production' | 'dr';
  readonly nbdPort: number | null;
  status(): unknown;
  close(): Promise<void>;
}

function registries(config: GatewayConfig, c: ClusterConfig, nbdUrl?: string): { own: EtcdRegistry; peers: EtcdRegistry } {
  const common = { endpoints: c.etcd, leaseTtlSec: c.leaseTtlSeconds, requestTimeoutMs: c.requestTimeoutMs };
  const own = new EtcdRegistry({ ...common, site: c.site, member: {
    id: config.gatewayId, role: config.role, apiUrl: '', linkHost: config.link.host, linkPort: 0, ...(nbdUrl ? { nbdUrl } : {}),
  } });
  // A reader of the peer site: it never joins, so it holds no lease there.
  const peers = new EtcdRegistry({ ...common, site: c.peerSite, member: { id: `${config.gatewayId}-reader`, role: 'reader', apiUrl: '', linkHost: '', linkPort: 0 } });
  return { own, peers };
}

export function openClusterGateway(config: GatewayConfig, logger: Logger): Promise<ClusterGateway> {
  const files = nodeFiles;
  return openLocked(config.dataDir, files, async (lock) => {
    const codec = gatewayCodec(config.codecThreads);
    const deps: GatewayDeps = { clock: systemClock, random: systemRandom, transport: tcpTransport, codec, logger, files };
    const gw = config.role === 'production' ? await openProduction(config, deps) : await openDr(config, deps);
    return {
      ...gw,
      async close() {
        try {
          await gw.close();
          await codec.close();
        } finally {
          await lock.release();
        }
      },
    };
  });
}

async function openProduction(config: GatewayConfig, deps: GatewayDeps): Promise<ClusterGateway> {
  const c = config.cluster!;
  let member: ProductionMember | null = null;
  const engine = await ProductionGateway.open({ ...config, vms: [], link: { ...config.link, port: 0 } }, deps, {
    writeGuard: (vmUuid) => member!.guard(vmUuid),
  });
  let nbd: NbdServer | null = null;
  let nbdPort: number | null = null;
  if (config.nbd) {
    const l = config.nbd;
    const tls = nbdTls(l.tls, l.tls === 'off' ? {} : loadNbdTlsCredentials({ pskFile: l.tlsPskFile, certFile: l.tlsCertFile, keyFile: l.tlsKeyFile }));
    nbd = new NbdServer({ exports: () => productionExports(engine), logger: deps.logger.child({ front: 'nbd' }), tls,
      ...(l.allowClients ? { allowClients: l.allowClients } : {}) });
    nbdPort = await nbd.listen(l.host, l.port);
  }
  const { own, peers } = registries(config, c, nbdPort === null ? undefined : `nbd://${config.nbd!.host}:${nbdPort}`);
  member = new ProductionMember({ engine, registry: own, peers, clock: deps.clock, logger: deps.logger });
  await member.start();
  const m = member;
  return {
    role: 'production', nbdPort,
    status: () => ({ ...engine.status(), tokens: Object.fromEntries(m.tokens()) }),
    async close() {
      await nbd?.close();
      await m.close();
      await engine.close();
    },
  };
}

async function openDr(config: GatewayConfig, deps: GatewayDeps): Promise<ClusterGateway> {
  const c = config.cluster!;
  // A DR state directory left by an earlier run is never replayed: another DR member may have written the
  // targets since. The production owners restart those VMs' streams with a check.
  await deps.files!.rm(join(config.dataDir, 'pairs'));
  const { own, peers } = registries(config, c);
  const member = new DrMember({
    registry: own, peers, dataDir: config.dataDir, clock: deps.clock, logger: deps.logger,
    openEngine: (prodId, fence) => DrGateway.open({
      ...config, dataDir: join(config.dataDir, 'pairs', prodId), vms: [], nbd: null, api: null, link: { ...config.link, port: 0 },
    }, { ...deps, logger: deps.logger.child({ pair: prodId }) }, { fence }),
  });
  await member.start();
  return {
    role: 'dr', nbdPort: null,
    status: () => ({ role: 'dr', engines: member.engineList().map(({ prodId, engine }) => ({ prodId, ...engine.status() })) }),
    close: () => member.close(),
  };
}
