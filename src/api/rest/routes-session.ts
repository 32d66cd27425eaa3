import type { FastifyInstance } from 'fastify';
import { ApiErrorNumber } from '../auth/error-codes.js';
import { restError } from './rest-errors.js';
import { BASE_PATH, tokenOf, type RestContext } from './rest-context.js';
import { passwordBody } from './schemas.js';

// 004 §3.1: versions, login, logout, and /password (its body is ours: {oldKey, newKey}, each the 64-digit hex
// SHA-256 of the password, as X-Auth-Key; the caller's own account; other sessions of the user end).

function header(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

export function registerSessionRoutes(api: FastifyInstance, ctx: RestContext): void {
  api.get('/versions', {
    config: { public: true },
    schema: { summary: 'Versions and their login URI (no authentication)', security: [] },
  }, async () => ({ versions: [{ version: 'v1.0', loginUri: `${BASE_PATH}/session` }] }));

  api.post('/session', {
    config: { public: true },
    schema: {
      summary: 'Log in: headers X-Auth-User (1-20 characters) and X-Auth-Key (hex SHA-256 of the password); the token comes back in X-Auth-Token',
      security: [],
      headers: { type: 'object', properties: { 'x-auth-user': { type: 'string' }, 'x-auth-key': { type: 'string' } } },
      response: { 200: { type: 'object', properties: { validity: { type: 'integer' }, uuid: { type: 'string' } } } },
    },
  }, async (req, reply) => {
    const user = header(req.headers['x-auth-user']);
    const key = header(req.headers['x-auth-key']);
    if (user === undefined || key === undefined) throw restError(ApiErrorNumber.INVALID_PARAMETER, 'X-Auth-User and X-Auth-Key are required');
    const r = await ctx.sessions.login(user, key);
    reply.header('X-Auth-Token', r.token);
    return { validity: r.validityMs, uuid: r.uuid };
  });

  api.delete('/session', {
    config: { public: true }, // an unknown or expired token answers the document's logout failure, 10440205
    schema: { summary: 'Log out (X-Auth-Token)' },
  }, async (req, reply) => {
    ctx.sessions.logout(tokenOf(req));
    return reply.send();
  });

  api.post('/password', {
    schema: { summary: 'Change the logged-in user\'s password', body: passwordBody },
  }, async (req, reply) => {
    const b = req.body as { oldKey: string; newKey: string };
    await ctx.sessions.changePassword(tokenOf(req), b.oldKey, b.newKey);
    return reply.send();
  });
}
