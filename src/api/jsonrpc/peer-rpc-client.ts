import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { RpcError, RpcErrorName } from './rpc-errors.js';

// Calls a peer gateway's JSON-RPC endpoint (cluster and volume pairing run on both gateways). `mvip` is
// the peer's management URL as its pairing key carries it: http(s)://host:port. HTTPS certificates are NOT
// verified (gateways generate self-signed ones, and the Element key format has no field to pin one): the
// pairing credential and the link secret contributions then rely on the network path. Operators who need
// more run the management network on a trusted segment; pinning is a follow-up (see README).

export const PEER_RPC_TIMEOUT_MS = 15_000;
export const PEER_RPC_VERSION = '12.5';
const REPLY_BYTES_MAX = 1024 * 1024;

export interface PeerCredentials {
  username: string;
  password: string;
}

/** VRG keys carry http(s)://host:port; an Element-style bare "host" or "host:port" means HTTPS (443). */
export function parseMvip(mvip: string): URL {
  const bad = (): RpcError => new RpcError(RpcErrorName.PAIRING_KEY_INVALID, 'the key\'s mvip is not a host, host:port or http(s)://host:port');
  let url: URL;
  try {
    url = new URL(/^https?:\/\//i.test(mvip) ? mvip : `https://${mvip}`);
  } catch {
    throw bad();
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.pathname !== '/' || url.search !== '' || url.username !== '') throw bad();
  return url;
}

/** One call; the peer's {error} becomes an RpcError with the peer's name (prefixed message). */
export async function callPeer(mvip: string, creds: PeerCredentials, method: string, params: unknown): Promise<Record<string, unknown>> {
  const url = parseMvip(mvip);
  const body = JSON.stringify({ method, params, id: 1 });
  const auth = Buffer.from(`${creds.username}:${creds.password}`, 'utf8').toString('base64');
  const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
  const reply = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = send({
      host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || (url.protocol === 'https:' ? 443 : 80)), method: 'POST', path: `/json-rpc/${PEER_RPC_VERSION}`,
      headers: { 'content-type': 'application/json', authorization: `Basic ${auth}`, 'content-length': Buffer.byteLength(body) },
      timeout: PEER_RPC_TIMEOUT_MS, ...(url.protocol === 'https:' ? { rejectUnauthorized: false } : {}),
    }, (res) => {
      const chunks: Buffer[] = [];
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
        if (n > REPLY_BYTES_MAX) req.destroy(new Error('reply too large'));
        else chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${PEER_RPC_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(body);
  }).catch((err: Error) => {
    throw new RpcError(RpcErrorName.REMOTE_UNREACHABLE, `peer gateway ${url.host} unreachable: ${err.message}`);
  });
  let parsed: { result?: unknown; error?: { name?: unknown; message?: unknown } };
  try {
    parsed = JSON.parse(reply.text) as typeof parsed;
  } catch {
    throw new RpcError(RpcErrorName.REMOTE_ERROR, `peer gateway ${url.host} answered HTTP ${reply.status} without JSON`);
  }
  if (parsed.error !== undefined) {
    const name = typeof parsed.error.name === 'string' ? parsed.error.name : RpcErrorName.REMOTE_ERROR;
    const known = (Object.values(RpcErrorName) as string[]).includes(name) ? name as RpcErrorName : RpcErrorName.REMOTE_ERROR;
    throw new RpcError(known, `peer gateway ${url.host}: ${String(parsed.error.message ?? name)}`);
  }
  if (typeof parsed.result !== 'object' || parsed.result === null) {
    throw new RpcError(RpcErrorName.REMOTE_ERROR, `peer gateway ${url.host} answered without a result`);
  }
  return parsed.result as Record<string, unknown>;
}
