import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { ErrorCode, isVrgError, vrgError } from '../../core/errors.js';
import { derFingerprint } from '../rest/tls.js';
import { RpcError, RpcErrorName } from './rpc-errors.js';

// Calls a peer gateway's JSON-RPC endpoint (cluster and volume pairing run on both gateways). `mvip` is
// the peer's management URL as its pairing key carries it: http(s)://host:port. Gateways' certificates are
// self-signed, so there is no CA to verify against: a call between paired gateways is PINNED instead to
// the certificate fingerprint exchanged at pairing (SHA-256 of the DER). The TLS handshake completes, the
// fingerprint is compared, and only then does the request (with its credential) go out on that socket;
// a different certificate is PEER_CERT_MISMATCH and nothing is sent. `pin` null: unverified (an admin's
// own tool, or a pair stored before pinning existed).

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

/** Whether calls to this mvip go over HTTPS (and so carry a certificate to pin). */
export function isHttpsMvip(mvip: string): boolean {
  return parseMvip(mvip).protocol === 'https:';
}

/** A TLS connection whose leaf certificate has fingerprint `pin`, or PEER_CERT_MISMATCH (socket closed). */
function connectPinned(host: string, port: number, pin: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // No CA can vouch for a self-signed certificate: the fingerprint below is the verification.
    const sock = tlsConnect({ host, port, rejectUnauthorized: false, ...(isIP(host) === 0 ? { servername: host } : {}) });
    const timer = setTimeout(() => sock.destroy(new Error(`no TLS handshake within ${PEER_RPC_TIMEOUT_MS} ms`)), PEER_RPC_TIMEOUT_MS);
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      const der = sock.getPeerCertificate().raw as Buffer | undefined;
      const seen = der === undefined ? 'none' : derFingerprint(der);
      if (seen === pin) {
        resolve(sock);
        return;
      }
      sock.destroy();
      reject(vrgError(ErrorCode.PEER_CERT_MISMATCH,
        `peer gateway ${host}:${port} presented certificate sha256 ${seen}, not the one pinned at pairing (${pin}): refused, nothing sent`,
        { host, port, pinned: pin, presented: seen }));
    });
  });
}

/**
 * One call; the peer's {error} becomes an RpcError with the peer's name (prefixed message). `pin`: the
 * peer's certificate fingerprint (HTTPS only), or null for an unverified call.
 */
export async function callPeer(mvip: string, creds: PeerCredentials, method: string, params: unknown, pin: string | null): Promise<Record<string, unknown>> {
  const url = parseMvip(mvip);
  if (pin !== null && url.protocol !== 'https:') {
    throw vrgError(ErrorCode.PEER_CERT_MISMATCH, `peer gateway ${url.host} has a pinned certificate but its mvip is plain HTTP: refused`, { mvip });
  }
  const body = JSON.stringify({ method, params, id: 1 });
  const auth = Buffer.from(`${creds.username}:${creds.password}`, 'utf8').toString('base64');
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  const unreachable = (err: Error): never => {
    if (isVrgError(err, ErrorCode.PEER_CERT_MISMATCH)) throw err;
    throw new RpcError(RpcErrorName.REMOTE_UNREACHABLE, `peer gateway ${url.host} unreachable: ${err.message}`);
  };
  const pinned = pin === null ? null : await connectPinned(host, port, pin).catch(unreachable);
  // A pinned socket carries plain HTTP framing over its checked TLS; otherwise Node opens the connection.
  const send = url.protocol === 'https:' && pinned === null ? httpsRequest : httpRequest;
  const reply = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = send({
      host, port, method: 'POST', path: `/json-rpc/${PEER_RPC_VERSION}`,
      headers: { 'content-type': 'application/json', authorization: `Basic ${auth}`, 'content-length': Buffer.byteLength(body) },
      timeout: PEER_RPC_TIMEOUT_MS,
      ...(pinned !== null ? { createConnection: () => pinned } : url.protocol === 'https:' ? { rejectUnauthorized: false } : {}),
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
  }).catch(unreachable);
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
