import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { passwordKey } from '../api/auth/account-store.js';

// `vrg api --url http://127.0.0.1:8080 --user admin --password P [--insecure] METHOD PATH [JSON]`: logs in
// (POST /session with X-Auth-Key = SHA-256 hex of the password), calls METHOD /vrgservice/PATH with the
// token, prints the JSON answer on stdout, logs out. Exit status 0 on HTTP 200, 1 otherwise.
// --insecure accepts a self-signed HTTPS certificate (the one the gateway generates).

export interface ApiCallOptions {
  url: string;
  user: string;
  password: string;
  method: string;
  path: string;
  body?: string | undefined;
  insecure?: boolean;
  lang?: string;
}

interface HttpReply {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
}

const replyBytesMax = 16 * 1024 * 1024;

function send(o: { url: URL; method: string; headers: Record<string, string>; body?: string | undefined; insecure: boolean }): Promise<HttpReply> {
  const req = o.url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const r = req(o.url, { method: o.method, headers: o.headers, ...(o.url.protocol === 'https:' ? { rejectUnauthorized: !o.insecure } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
        if (n > replyBytesMax) r.destroy(new Error(`reply larger than ${replyBytesMax} bytes`));
        else chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    r.on('error', reject);
    if (o.body !== undefined) r.write(o.body);
    r.end();
  });
}

/** The API base (http://host:port/vrgservice) from --url with or without the base path. */
export function apiBase(url: string): URL {
  const u = new URL(url);
  if (!u.pathname.replace(/\/+$/, '').endsWith('/vrgservice')) u.pathname = `${u.pathname.replace(/\/+$/, '')}/vrgservice`;
  return u;
}

export async function runApiCall(o: ApiCallOptions, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  if (o.body !== undefined) JSON.parse(o.body); // refuse a malformed body here, before logging in
  const base = apiBase(o.url);
  const at = (p: string): URL => new URL(`${base.pathname.replace(/\/+$/, '')}/${p.replace(/^\/+/, '').replace(/^vrgservice\//, '')}`, base);
  const common = { accept: 'application/json;version=v1.0;charset=UTF-8', 'accept-language': o.lang ?? 'en_US' };
  const insecure = o.insecure ?? false;
  const login = await send({ url: at('session'), method: 'POST', insecure,
    headers: { ...common, 'x-auth-user': o.user, 'x-auth-key': passwordKey(o.password) } });
  const token = login.headers['x-auth-token'];
  if (login.status !== 200 || typeof token !== 'string') {
    out.write(`${login.text}\n`);
    return 1;
  }
  try {
    const headers: Record<string, string> = { ...common, 'x-auth-token': token };
    if (o.body !== undefined) headers['content-type'] = 'application/json; charset=UTF-8';
    const r = await send({ url: at(o.path), method: o.method.toUpperCase(), headers, body: o.body, insecure });
    let text = r.text;
    try {
      text = JSON.stringify(JSON.parse(r.text), null, 2);
    } catch {
      // not JSON (an empty 200): print as is
    }
    out.write(text === '' ? `HTTP ${r.status}\n` : `${text}\n`);
    return r.status === 200 ? 0 : 1;
  } finally {
    await send({ url: at('session'), method: 'DELETE', headers: { ...common, 'x-auth-token': token }, insecure }).catch(() => undefined);
  }
}

/** A logged-in session for programs (the demo): call() throws on any answer but 200. */
export async function apiSession(url: string, user: string, password: string): Promise<{
  call(method: string, path: string, body?: unknown): Promise<unknown>;
  /** Logs out (best effort). */
  close(): Promise<void>;
}> {
  const base = apiBase(url);
  const at = (p: string): URL => new URL(`${base.pathname.replace(/\/+$/, '')}/${p.replace(/^\/+/, '')}`, base);
  const common = { accept: 'application/json;version=v1.0;charset=UTF-8', 'accept-language': 'en_US' };
  const login = await send({ url: at('session'), method: 'POST', insecure: false, headers: { ...common, 'x-auth-user': user, 'x-auth-key': passwordKey(password) } });
  const token = login.headers['x-auth-token'];
  if (login.status !== 200 || typeof token !== 'string') throw new Error(`login to ${url} failed: ${login.text}`);
  return {
    async call(method, path, body) {
      const headers: Record<string, string> = { ...common, 'x-auth-token': token };
      if (body !== undefined) headers['content-type'] = 'application/json; charset=UTF-8';
      const r = await send({ url: at(path), method, headers, body: body === undefined ? undefined : JSON.stringify(body), insecure: false });
      if (r.status !== 200) throw new Error(`${method} ${path} on ${url}: HTTP ${r.status} ${r.text}`);
      return r.text === '' ? null : JSON.parse(r.text);
    },
    async close() {
      await send({ url: at('session'), method: 'DELETE', headers: { ...common, 'x-auth-token': token }, insecure: false }).catch(() => undefined);
    },
  };
}
