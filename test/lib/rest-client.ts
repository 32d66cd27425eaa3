import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../../src/core/clock.js';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/log.js';
import { systemRandom } from '../../src/core/random.js';
import { tcpTransport } from '../../src/link/transport.js';
import { InlineCodec } from '../../src/pipeline/codec.js';
import { parseConfig, type GatewayConfig } from '../../src/replication/config.js';
import { DrGateway } from '../../src/replication/target/dr-gateway.js';
import { ProductionGateway } from '../../src/replication/source/production-gateway.js';
import { passwordKey } from '../../src/api/auth/account-store.js';
import { startApi, type RunningApi } from '../../src/api/rest/api-runtime.js';
import { DrSite } from '../../src/replication/dr-site.js';
import { ProductionSite } from '../../src/replication/production-site.js';

// In-process gateways with no VMs and the REST API on 127.0.0.1 port 0, and a small HTTP client for it.

export const ADMIN_PW = 'Adm1n#pass';
export const FAST_SCRYPT = { N: 1 << 10, r: 8, p: 1 };

export interface ApiGateway {
  gw: ProductionGateway | DrGateway;
  /** DR: the site around gw (promoted VMs); null on production. */
  site: DrSite | null;
  /** Production: the site around gw (VMs failed back to it); null on DR. */
  prodSite: ProductionSite | null;
  api: RunningApi;
  config: GatewayConfig;
  /** Closes the API and the gateway (not the codec). */
  close(): Promise<void>;
}

export interface ApiGatewayOptions {
  dir: string;
  secret: string;
  /** DR: the link port to listen on (0: any); production: ignored (peers come through the API). */
  linkPort?: number;
  clock?: Clock;
  httpsPort?: number;
  journalCapacityBytes?: number;
  /** Production: the intake section of the config (write-back, boot id file). */
  intake?: { writeBack: boolean; bootIdPath: string };
}

const codec = new InlineCodec();

export async function startApiGateway(role: 'production' | 'dr', o: ApiGatewayOptions): Promise<ApiGateway> {
  const config = parseConfig({
    role, gatewayId: `rest-${role}`, dataDir: join(o.dir, role), vms: [],
    link: { host: '127.0.0.1', port: role === 'dr' ? o.linkPort ?? 0 : 0, secret: o.secret },
    journalCapacityBytes: o.journalCapacityBytes ?? 64 * 1024 * 1024,
    protection: { linkDownCbtAfterMs: 60_000 },
    ...(o.intake ? { intake: o.intake } : {}),
    api: { host: '127.0.0.1', port: 0, adminPassword: ADMIN_PW, ...(o.httpsPort === undefined ? {} : { httpsPort: o.httpsPort }) },
  });
  const deps = { clock: systemClock, random: systemRandom, transport: tcpTransport, codec, logger: silentLogger };
  const site = role === 'dr' ? await DrSite.open(config, deps) : null;
  const prodSite = role === 'production' ? await ProductionSite.open(config, deps) : null;
  const gw = site?.dr ?? prodSite!.source;
  const api = await startApi({ gw, site, prodSite, api: config.api!, logger: silentLogger, nbdPort: null, scrypt: FAST_SCRYPT, ...(o.clock ? { clock: o.clock } : {}) });
  let closing: Promise<void> | null = null;
  return {
    gw, site, prodSite, api, config,
    close() {
      closing ??= (async () => {
        await api.close();
        await (site ?? prodSite!).close();
      })();
      return closing;
    },
  };
}

/**
 * A DR and a production API gateway sharing `o` (dir, secret...). `restart` stops one side and starts it
 * again with `extra` options; teardown closes whichever instances are current then.
 */
export async function startApiPair(t: { teardown(fn: () => Promise<void>): void }, o: ApiGatewayOptions) {
  const pair = {
    dr: await startApiGateway('dr', o),
    prod: await startApiGateway('production', o),
    async restart(role: 'dr' | 'prod', extra: Partial<ApiGatewayOptions> = {}): Promise<void> {
      await pair[role].close();
      pair[role] = await startApiGateway(role === 'dr' ? 'dr' : 'production', { ...o, ...extra });
    },
  };
  t.teardown(async () => {
    await pair.prod.close();
    await pair.dr.close();
  });
  return pair;
}

export function newSecret(): string {
  return randomBytes(32).toString('hex');
}

export interface Reply {
  status: number;
  headers: Headers;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  text: string;
}

export class RestClient {
  token: string | undefined;

  constructor(readonly baseUrl: string, public lang: 'zh_CN' | 'en_US' = 'en_US') {}

  async call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
    const h: Record<string, string> = { accept: 'application/json;version=v1.0;charset=UTF-8', 'accept-language': this.lang, ...headers };
    if (this.token !== undefined && h['x-auth-token'] === undefined) h['x-auth-token'] = this.token;
    let payload: string | undefined;
    if (body !== undefined) {
      payload = typeof body === 'string' ? body : JSON.stringify(body);
      h['content-type'] ??= 'application/json; charset=UTF-8';
    }
    const res = await fetch(`${this.baseUrl}${path}`, { method, headers: h, ...(payload === undefined ? {} : { body: payload }) });
    const text = await res.text();
    let parsed: unknown = null;
    try {
      parsed = text === '' ? null : JSON.parse(text);
    } catch {
      parsed = null;
    }
    return { status: res.status, headers: res.headers, body: parsed, text };
  }

  async login(user = 'admin', password = ADMIN_PW): Promise<Reply> {
    const r = await this.call('POST', '/session', undefined, { 'x-auth-user': user, 'x-auth-key': passwordKey(password) });
    if (r.status === 200) this.token = r.headers.get('x-auth-token') ?? undefined;
    return r;
  }
}

export { until } from './wait.js';

/** A temporary directory removed when the test ends. */
export async function tempDir(t: { teardown(fn: () => unknown): void }, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Wall time a test can move forward (the gateway engine keeps the system clock). */
export function shiftedClock(): Clock & { advance(ms: number): void } {
  let offset = 0;
  return {
    nowMs: () => Date.now() + offset,
    monotonicNs: () => systemClock.monotonicNs() + BigInt(offset) * 1_000_000n,
    setTimer: (ms, fn) => systemClock.setTimer(ms, fn),
    advance(ms) { offset += ms; },
  };
}
