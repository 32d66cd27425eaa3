import type { DrSite } from '../../replication/dr-site.js';
import type { ProductionSite } from '../../replication/production-site.js';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Clock } from '../../core/clock.js';
import type { Logger } from '../../core/log.js';
import type { Random } from '../../core/random.js';
import type { ApiListenConfig } from '../../replication/config.js';
import { DrGateway } from '../../replication/target/dr-gateway.js';
import { AlarmNotifier } from '../alarms/alarm-notifier.js';
import { AccountStore, type ScryptParams } from '../auth/account-store.js';
import { SessionManager } from '../auth/session-manager.js';
import { ApiStore } from '../store/api-store.js';
import { systemClock } from '../../core/clock.js';
import { systemRandom } from '../../core/random.js';
import { JSONRPC_PATH, JsonRpcFace } from '../jsonrpc/jsonrpc-face.js';
import { PEER_RPC_VERSION } from '../jsonrpc/peer-rpc-client.js';
import { ApiService, type Gateway } from './api-service.js';
import { BASE_PATH, buildRestApp, type NetAddresses } from './rest-server.js';
import { certFingerprint, loadOrCreateTls } from './tls.js';

// A gateway's management API, as `vrg start` runs it when the config has an "api" section: opens the API
// store and accounts under <dataDir>/api, sets admin's first password from the config (only when there is
// no admin yet), replays the stored configuration into the engine, subscribes the alarm notifier, and
// listens: HTTP on api.port, HTTPS on api.httpsPort when given.

export interface StartApiOptions {
  gw: Gateway;
  /** DR: the site that promotes its VMs (POST /vmfailover). */
  site?: DrSite | null;
  /** Production: the site that also holds the VMs this gateway is the target of (failback, moving home). */
  prodSite?: ProductionSite | null;
  api: ApiListenConfig;
  logger: Logger;
  /** The NBD listener's port, for GET /netinfos (null: none). */
  nbdPort: number | null;
  nbdHost?: string;
  clock?: Clock;
  random?: Random;
  /** scrypt cost (tests lower it). */
  scrypt?: ScryptParams;
}

export interface RunningApi {
  service: ApiService;
  sessions: SessionManager;
  accounts: AccountStore;
  alarms: AlarmNotifier;
  httpPort: number;
  httpsPort: number | null;
  /** http://host:port/vrgservice */
  url: string;
  httpsUrl: string | null;
  /** The Element JSON-RPC face on the same servers, and its URL (HTTPS when configured, else HTTP). */
  jsonRpc: JsonRpcFace;
  jsonRpcUrl: string;
  close(): Promise<void>;
}

function portOf(app: FastifyInstance): number {
  return (app.server.address() as AddressInfo).port;
}

export async function startApi(o: StartApiOptions): Promise<RunningApi> {
  const dir = join(o.gw.config.dataDir, 'api');
  const store = await ApiStore.open(join(dir, 'api-config.json'));
  const logger = o.logger.child({ front: 'rest' });
  const accounts = await AccountStore.open({ path: join(dir, 'accounts.json'), logger,
    ...(o.clock ? { clock: o.clock } : {}), ...(o.random ? { random: o.random } : {}), ...(o.scrypt ? { scrypt: o.scrypt } : {}) });
  if (o.api.adminPassword !== undefined && !accounts.hasUser('admin')) await accounts.setPassword('admin', o.api.adminPassword);
  const sessions = new SessionManager({ accounts, uuid: store.state.gatewayUuid, logger,
    ...(o.clock ? { clock: o.clock } : {}), ...(o.random ? { random: o.random } : {}) });
  const alarms = new AlarmNotifier({ gatewayId: o.gw.config.gatewayId, logger, target: () => store.state.trap });
  alarms.watch(o.gw);
  const service = new ApiService(o.gw, store, alarms, logger, o.site ?? null, o.prodSite ?? null);
  await service.replay();
  let mvip = '';
  let fingerprint: string | null = null;
  const jsonRpc = new JsonRpcFace({ gw: o.gw, service, store, accounts, logger, clock: o.clock ?? systemClock,
    random: o.random ?? systemRandom, mvip: () => mvip, certFingerprint: () => fingerprint });
  await jsonRpc.init();
  const apps: FastifyInstance[] = [];
  let httpPort = 0;
  const netAddresses = (): NetAddresses => {
    const peer = o.gw instanceof DrGateway ? { ip: o.gw.config.link.host, port: o.gw.linkPort } : o.gw.peerStatus();
    return {
      management: apps.length > 0 ? { ip: o.api.host, port: httpPort } : null,
      intake: o.nbdPort === null ? null : { ip: o.nbdHost ?? o.gw.config.nbd?.host ?? '127.0.0.1', port: o.nbdPort },
      peer: peer === null ? null : { ip: 'ip' in peer ? peer.ip : peer.host, port: peer.port },
    };
  };
  const ctx = { service, accounts, sessions, netAddresses, logger, mount: (app: FastifyInstance) => jsonRpc.mount(app) };
  try {
    const http = await buildRestApp(ctx);
    apps.push(http);
    await http.listen({ host: o.api.host, port: o.api.port });
    httpPort = portOf(http);
    let httpsPort: number | null = null;
    if (o.api.httpsPort !== undefined) {
      const tls = await loadOrCreateTls({ dir, commonName: o.gw.config.gatewayId, host: o.api.host,
        ...(o.api.certFile ? { certFile: o.api.certFile } : {}), ...(o.api.keyFile ? { keyFile: o.api.keyFile } : {}) });
      fingerprint = certFingerprint(tls.cert); // what paired gateways pin
      const https = await buildRestApp(ctx, tls);
      apps.push(https);
      await https.listen({ host: o.api.host, port: o.api.httpsPort });
      httpsPort = portOf(https);
    }
    const host = o.api.host.includes(':') ? `[${o.api.host}]` : o.api.host;
    mvip = httpsPort === null ? `http://${host}:${httpPort}` : `https://${host}:${httpsPort}`;
    logger.info({ host: o.api.host, httpPort, httpsPort }, 'REST API listening');
    return {
      service, sessions, accounts, alarms, httpPort, httpsPort, jsonRpc, jsonRpcUrl: `${mvip}${JSONRPC_PATH}/${PEER_RPC_VERSION}`,
      url: `http://${host}:${httpPort}${BASE_PATH}`,
      httpsUrl: httpsPort === null ? null : `https://${host}:${httpsPort}${BASE_PATH}`,
      async close() {
        await Promise.all(apps.map((a) => a.close()));
        await alarms.close();
      },
    };
  } catch (err) {
    await Promise.all(apps.map((a) => a.close()));
    await alarms.close();
    throw err;
  }
}
