import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { ADMIN_PW } from './rest-client.js';

// A minimal Element JSON-RPC client for tests: POST {method, params, id} with HTTP basic auth.
// HTTPS certificates are not verified (the gateways' are self-signed, on loopback).

export interface RpcReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export class JsonRpcClient {
  private nextId = 1;

  /** `url`: http(s)://host:port/json-rpc/<version>. */
  constructor(readonly url: string, public user = 'admin', public password = ADMIN_PW) {}

  /** Sends a raw body (string) or a request object; no checks on the answer. */
  post(body: unknown, opts: { url?: string; auth?: string | null; contentType?: string } = {}): Promise<RpcReply> {
    const url = new URL(opts.url ?? this.url);
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const auth = opts.auth === undefined ? `Basic ${Buffer.from(`${this.user}:${this.password}`).toString('base64')}` : opts.auth;
    const headers: Record<string, string | number> = { 'content-type': opts.contentType ?? 'application/json', 'content-length': Buffer.byteLength(text) };
    if (auth !== null) headers.authorization = auth;
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = send({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers,
        ...(url.protocol === 'https:' ? { rejectUnauthorized: false } : {}) }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const raw = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = null;
          try {
            parsed = JSON.parse(raw);
          } catch {
            parsed = null;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
        });
      });
      req.on('error', reject);
      req.end(text);
    });
  }

  /** One call; resolves with the whole reply body ({id, result} or {id, error}). */
  async call(method: string, params: Record<string, unknown> = {}): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
    const id = this.nextId++;
    const r = await this.post({ method, params, id });
    return r.body;
  }

  /** One call that must succeed: its result. */
  async ok(method: string, params: Record<string, unknown> = {}): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
    const body = await this.call(method, params);
    if (body?.error !== undefined || body?.result === undefined) {
      throw new Error(`${method} failed: ${JSON.stringify(body?.error ?? body)}`);
    }
    return body.result;
  }
}
