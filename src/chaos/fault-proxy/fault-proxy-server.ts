import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { systemClock, type Clock } from '../../core/clock.js';
import { ErrorCode, isVrgError, vrgError } from '../../core/errors.js';
import { seededRandom, systemRandom, type Random } from '../../core/random.js';
import { FaultProxy, parseAddress, type ProxyJson } from './proxy.js';

// `vrg fault-proxy`: TCP proxies with faults ("toxics"), driven over Toxiproxy's HTTP API, so that the clients
// and scripts people already drive Toxiproxy with (toxiproxy-node-client, toxiproxy-cli, the Go and Ruby
// clients) drive this one unchanged. Routes, bodies, status codes and the `{"error", "status"}` error body are
// Toxiproxy 2.x's; error bodies also carry VRG's stable `code`.
//
//   GET    /version                          {"version"}
//   POST   /reset                            every proxy enabled, every toxic removed          204
//   GET    /proxies                          {name: proxy}
//   POST   /proxies                          {name, listen, upstream, enabled?}                 201 | 409
//   POST   /populate                         [proxy...], create or replace                      201 {proxies}
//   GET    /proxies/{p}                      proxy with its toxics                              200 | 404
//   POST   /proxies/{p}                      {enabled?, listen?, upstream?}                     200
//   DELETE /proxies/{p}                                                                         204
//   GET    /proxies/{p}/toxics               [toxic]
//   POST   /proxies/{p}/toxics               {name?, type, stream?, toxicity?, attributes}      200 | 409
//   GET    /proxies/{p}/toxics/{t}, POST (PATCH) .../{t} {attributes...}, DELETE .../{t}        200 | 204 | 404
//   GET    /vrg/counters                     VRG's own: what each proxy's toxics did

export const faultProxyVersion = '2.12.0-vrg';

const statusOf: Partial<Record<string, number>> = {
  [ErrorCode.INVALID_ARGUMENT]: 400,
  [ErrorCode.FAULT_PROXY_NOT_FOUND]: 404,
  [ErrorCode.FAULT_TOXIC_NOT_FOUND]: 404,
  [ErrorCode.FAULT_PROXY_EXISTS]: 409,
  [ErrorCode.FAULT_TOXIC_EXISTS]: 409,
};

function sendError(reply: FastifyReply, err: unknown): FastifyReply {
  const status = (isVrgError(err) && statusOf[err.code]) || 500;
  const code = isVrgError(err) ? err.code : undefined;
  return reply.code(status).send({ error: (err as Error).message, status, ...(code ? { code } : {}) });
}

export interface FaultProxyServerOptions {
  clock?: Clock;
  /** Seeds the toxics' draws (toxicity, jitter, slicer sizes, corrupt bits): a `vrg chaos` run replays them. */
  seed?: number;
  random?: Random;
}

export class FaultProxyServer {
  private readonly proxies = new Map<string, FaultProxy>();
  private readonly clock: Clock;
  private readonly random: Random;
  private app: FastifyInstance | null = null;
  url = '';

  constructor(opts: FaultProxyServerOptions = {}) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? (opts.seed === undefined ? systemRandom : seededRandom(opts.seed));
  }

  proxy(name: string): FaultProxy {
    const p = this.proxies.get(name);
    if (!p) throw vrgError(ErrorCode.FAULT_PROXY_NOT_FOUND, `proxy not found: ${name}`, { proxy: name });
    return p;
  }

  all(): Record<string, ProxyJson> {
    return Object.fromEntries([...this.proxies].map(([n, p]) => [n, p.toJSON()]));
  }

  async create(body: unknown): Promise<FaultProxy> {
    const b = proxyBody(body);
    if (this.proxies.has(b.name)) throw vrgError(ErrorCode.FAULT_PROXY_EXISTS, `proxy already exists: ${b.name}`, { proxy: b.name });
    const p = new FaultProxy(b.name, b.listen, b.upstream, this.clock, this.random);
    if (b.enabled) await p.setEnabled(true); // a listen that fails leaves nothing behind
    this.proxies.set(b.name, p);
    return p;
  }

  async update(name: string, body: unknown): Promise<FaultProxy> {
    const p = this.proxy(name);
    if (typeof body !== 'object' || body === null) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'a proxy update is a JSON object');
    const b = body as Record<string, unknown>;
    if (b.enabled !== undefined && typeof b.enabled !== 'boolean') throw vrgError(ErrorCode.INVALID_ARGUMENT, 'enabled is true or false');
    const listen = b.listen ?? p.listen;
    const upstream = b.upstream ?? p.upstream;
    parseAddress('listen', listen); // both checked before anything changes
    parseAddress('upstream', upstream);
    if (listen !== p.listen) {
      // A new address: the old listener and its connections go, as Toxiproxy restarts the proxy.
      await p.close();
      p.listen = listen as string;
    }
    p.upstream = upstream as string;
    await p.setEnabled((b.enabled as boolean | undefined) ?? p.enabled);
    return p;
  }

  async remove(name: string): Promise<void> {
    await this.proxy(name).close();
    this.proxies.delete(name);
  }

  /** Creates the proxies given, replacing any of the same name whose listen or upstream differ. */
  async populate(body: unknown): Promise<FaultProxy[]> {
    if (!Array.isArray(body)) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'populate takes a JSON array of proxies');
    const wanted = body.map(proxyBody);
    const out: FaultProxy[] = [];
    for (const b of wanted) {
      const old = this.proxies.get(b.name);
      if (old && old.upstream === b.upstream && sameListen(old.listen, b.listen)) {
        await old.setEnabled(b.enabled);
        out.push(old);
        continue;
      }
      if (old) await this.remove(b.name);
      out.push(await this.create(b));
    }
    return out;
  }

  async reset(): Promise<void> {
    for (const p of this.proxies.values()) {
      await p.resetToxics();
      await p.setEnabled(true);
    }
  }

  async listen(host = '127.0.0.1', port = 8474): Promise<string> {
    const app = Fastify({ logger: false });
    app.setErrorHandler((err: FastifyError, _req, reply) => sendError(reply,
      err.statusCode === 400 ? vrgError(ErrorCode.INVALID_ARGUMENT, `bad request body: ${err.message}`) : err));
    this.routes(app);
    await app.listen({ host, port });
    const addr = app.server.address() as { port: number };
    this.app = app;
    this.url = `http://${host}:${addr.port}`;
    return this.url;
  }

  private routes(app: FastifyInstance): void {
    type P = { Params: { proxy: string; toxic: string } };
    const guard = (fn: (req: { params: { proxy: string; toxic: string }; body: unknown }, reply: FastifyReply) => Promise<unknown> | unknown) =>
      async (req: { params: unknown; body: unknown }, reply: FastifyReply) => {
        try {
          return await fn(req as { params: { proxy: string; toxic: string }; body: unknown }, reply);
        } catch (err) {
          return sendError(reply, err);
        }
      };
    app.get('/version', async () => ({ version: faultProxyVersion }));
    app.post('/reset', guard(async (_req, reply) => {
      await this.reset();
      return reply.code(204).send();
    }));
    app.get('/proxies', async () => this.all());
    app.post('/proxies', guard(async (req, reply) => reply.code(201).send((await this.create(req.body)).toJSON())));
    app.post('/populate', guard(async (req, reply) => reply.code(201).send({ proxies: (await this.populate(req.body)).map((p) => p.toJSON()) })));
    app.get<P>('/proxies/:proxy', guard((req) => this.proxy(req.params.proxy).toJSON()));
    for (const method of ['POST', 'PATCH'] as const) {
      app.route<P>({ method, url: '/proxies/:proxy', handler: guard(async (req) => (await this.update(req.params.proxy, req.body)).toJSON()) });
      app.route<P>({ method, url: '/proxies/:proxy/toxics/:toxic', handler: guard((req) => this.proxy(req.params.proxy).updateToxic(req.params.toxic, req.body)) });
    }
    app.delete<P>('/proxies/:proxy', guard(async (req, reply) => {
      await this.remove(req.params.proxy);
      return reply.code(204).send();
    }));
    app.get<P>('/proxies/:proxy/toxics', guard((req) => this.proxy(req.params.proxy).toJSON().toxics));
    app.post<P>('/proxies/:proxy/toxics', guard((req) => this.proxy(req.params.proxy).addToxic(req.body)));
    app.get<P>('/proxies/:proxy/toxics/:toxic', guard((req) => this.proxy(req.params.proxy).toxic(req.params.toxic)));
    app.delete<P>('/proxies/:proxy/toxics/:toxic', guard(async (req, reply) => {
      await this.proxy(req.params.proxy).removeToxic(req.params.toxic);
      return reply.code(204).send();
    }));
    app.get('/vrg/counters', async () => Object.fromEntries([...this.proxies].map(([n, p]) => [n, p.counters])));
  }

  async close(): Promise<void> {
    for (const p of this.proxies.values()) await p.close();
    await this.app?.close();
  }
}

function proxyBody(body: unknown): { name: string; listen: string; upstream: string; enabled: boolean } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'a proxy is a JSON object');
  const b = body as Record<string, unknown>;
  if (typeof b.name !== 'string' || !/^[A-Za-z0-9._-]{1,128}$/.test(b.name)) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, 'missing required field: name (1-128 letters, digits, ".", "_" or "-")');
  }
  if (typeof b.upstream !== 'string') throw vrgError(ErrorCode.INVALID_ARGUMENT, 'missing required field: upstream');
  if (b.enabled !== undefined && typeof b.enabled !== 'boolean') throw vrgError(ErrorCode.INVALID_ARGUMENT, 'enabled is true or false');
  const listen = typeof b.listen === 'string' ? b.listen : '127.0.0.1:0';
  return { name: b.name, listen, upstream: b.upstream, enabled: b.enabled ?? true };
}

function sameListen(current: string, wanted: string): boolean {
  return current === wanted || wanted.endsWith(':0');
}

/** `vrg fault-proxy`: serves until SIGINT or SIGTERM; `configPath` holds proxies to create at start (as /populate). */
export async function runFaultProxy(o: { host: string; port: number; seed?: number; configPath?: string }): Promise<void> {
  const server = new FaultProxyServer(o.seed === undefined ? {} : { seed: o.seed });
  if (o.configPath) {
    const { readFile } = await import('node:fs/promises');
    let body: unknown;
    try {
      body = JSON.parse(await readFile(o.configPath, 'utf8'));
    } catch (err) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `${o.configPath}: ${(err as Error).message}`);
    }
    await server.populate(body);
  }
  const url = await server.listen(o.host, o.port);
  const proxies = Object.values(server.all()).map((p) => `${p.name} ${p.listen} → ${p.upstream}`);
  process.stdout.write(`vrg fault-proxy: Toxiproxy API on ${url}${o.seed === undefined ? '' : `, seed ${o.seed}`}\n`);
  for (const p of proxies) process.stdout.write(`  proxy ${p}\n`);
  const stop = (): void => void server.close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
