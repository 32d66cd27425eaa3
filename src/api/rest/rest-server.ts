import swagger from '@fastify/swagger';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { ApiErrorNumber, apiErrorOf } from '../auth/error-codes.js';
import { languageOf, restError } from './rest-errors.js';
import { registerGatewayRoutes } from './routes-gateway.js';
import { registerSessionRoutes } from './routes-session.js';
import { registerVmStrategyRoutes } from './routes-vmstrategy.js';
import { errorSchema } from './schemas.js';
import { BASE_PATH, BODY_LIMIT_BYTES, tokenOf, type RestContext } from './rest-context.js';

export { BASE_PATH, BODY_LIMIT_BYTES, tokenOf, type NetAddress, type NetAddresses, type RestContext } from './rest-context.js';

// The management REST API (004; SPEC §3) on fastify, under /vrgservice. One builder serves both the HTTP
// and the HTTPS listener (same state). Every answer but 200 is {errorCode, errorDes} with errorDes in the
// Accept-Language; every route but /versions and /session needs a live X-Auth-Token (10440102).

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Answers without a session (GET /versions, POST/DELETE /session). */
    public?: boolean;
  }
}

/** Method and path (fastify form) of every route, for 405 on a known path with another method. */
type RouteKey = { method: string; re: RegExp };

export function sendError(req: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const e = apiErrorOf(err, languageOf(req.headers['accept-language']));
  return reply.code(e.httpStatus).type('application/json; charset=UTF-8').send({ errorCode: e.errorCode, errorDes: e.errorDes });
}

/** Framework errors (bad JSON, schema, body size) to the document's numbers. */
function frameworkError(err: FastifyError): unknown {
  if (err.validation || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ||
      (err instanceof SyntaxError)) return restError(ApiErrorNumber.INVALID_PARAMETER, err.message);
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return restError(ApiErrorNumber.HTTP_TOO_LARGE, err.message);
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return restError(ApiErrorNumber.HTTP_UNSUPPORTED_MEDIA, err.message);
  return err;
}

export async function buildRestApp(ctx: RestContext, https?: { key: string; cert: string }): Promise<FastifyInstance> {
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT_BYTES,
    routerOptions: { ignoreTrailingSlash: true },
    // Types are the client's business: no coercion ("1" is not 1), schema errors answer 10440101.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    ...(https ? { https } : {}),
  }) as unknown as FastifyInstance;
  // The document's DELETE /session sends Content-Type: application/json with no body: an empty body is none.
  const jsonParser = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    const text = body.toString();
    if (text.trim() === '') return done(null, undefined);
    return jsonParser(req, text, done);
  });
  const routes: RouteKey[] = [];
  app.addHook('onRoute', (r) => {
    const re = new RegExp(`^${r.url.replace(/:[A-Za-z]+/g, '[^/]+').replace(/\/$/, '')}/?$`);
    for (const m of [r.method].flat()) routes.push({ method: m, re });
  });
  app.addHook('onRequest', async (req) => {
    if (req.routeOptions.url === undefined || req.routeOptions.config.public === true) return;
    ctx.sessions.authenticate(tokenOf(req));
  });
  app.addHook('onSend', async (_req, reply, payload) => {
    reply.header('cache-control', 'no-store');
    return payload;
  });
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const mapped = frameworkError(err);
    if (apiErrorOf(mapped).errorCode === ApiErrorNumber.INTERNAL) ctx.logger.error({ err, url: req.url }, 'REST request failed');
    return sendError(req, reply, mapped);
  });
  app.setNotFoundHandler((req, reply) => {
    const path = (req.url.split('?')[0] ?? '').replace(/\/+$/, '');
    const known = routes.filter((r) => r.re.test(path) && r.method !== 'HEAD');
    if (known.length > 0) {
      reply.header('allow', [...new Set(known.map((r) => r.method))].join(', '));
      return sendError(req, reply, restError(ApiErrorNumber.HTTP_METHOD_NOT_ALLOWED, `${req.method} not allowed`));
    }
    return sendError(req, reply, restError(ApiErrorNumber.HTTP_NOT_FOUND, 'no such resource'));
  });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'VRG management REST API', version: 'v1.0', description: 'FusionCompute VRG interface (004), base path /vrgservice' },
      components: { securitySchemes: { token: { type: 'apiKey', in: 'header', name: 'X-Auth-Token' } } },
      security: [{ token: [] }],
    },
  });
  app.addSchema({ $id: 'Error', ...errorSchema });
  await app.register(async (api) => {
    registerSessionRoutes(api, ctx);
    registerGatewayRoutes(api, ctx);
    registerVmStrategyRoutes(api, ctx);
    api.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  }, { prefix: BASE_PATH });
  if (ctx.mount) await ctx.mount(app);
  await app.ready();
  return app;
}

