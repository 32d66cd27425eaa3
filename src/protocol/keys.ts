import { hkdfSync } from 'node:crypto';
import { ErrorCode, vrgError } from '../core/errors.js';
import { noteSecret } from '../core/secrets.js';
import type { DirectionKeys } from './frame.js';

// Session keys, fresh per connection: HKDF-SHA256 over the pairing secret, salted with both Hello nonces.
// Output key material (56 bytes), info "vrg-link-v1 session":
//  0 16  client->server AES-128 key
// 16  4  client->server IV salt
// 20 16  server->client AES-128 key
// 36  4  server->client IV salt
// 40 16  session id (logging / correlation; not secret-bearing)

const INFO = Buffer.from('vrg-link-v1 session', 'ascii');
const OKM_BYTES = 56;

export interface SessionKeys {
  clientToServer: DirectionKeys;
  serverToClient: DirectionKeys;
  sessionId: Buffer;
}

export function deriveSessionKeys(secret: Buffer, clientNonce: Buffer, serverNonce: Buffer): SessionKeys {
  if (secret.length === 0) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'pairing secret is empty');
  if (clientNonce.length === 0 || serverNonce.length === 0) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, 'handshake nonces must not be empty');
  }
  noteSecret(secret); // every link secret (config or per peer) passes here: none is ever logged
  const salt = Buffer.concat([clientNonce, serverNonce]);
  const okm = Buffer.from(hkdfSync('sha256', secret, salt, INFO, OKM_BYTES));
  const part = (start: number, len: number): Buffer => Buffer.from(okm.subarray(start, start + len));
  return {
    clientToServer: { key: part(0, 16), salt: part(16, 4) },
    serverToClient: { key: part(20, 16), salt: part(36, 4) },
    sessionId: part(40, 16),
  };
}

const ROTATE_INFO = Buffer.from('vrg-link-v1 rotate', 'ascii');
const SECRET_BYTES = 32;

/**
 * The next link secret of a rotation (vrg rekey): HKDF-SHA256 over the current secret, salted with both
 * sides' fresh nonces, so neither side alone picks it and it cannot be derived without the current one.
 */
export function deriveRotatedSecret(current: Buffer, clientNonce: Buffer, serverNonce: Buffer): Buffer {
  if (current.length === 0) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'link secret is empty');
  if (clientNonce.length < 16 || serverNonce.length < 16) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'rekey nonces of at least 16 bytes');
  return Buffer.from(hkdfSync('sha256', current, Buffer.concat([clientNonce, serverNonce]), ROTATE_INFO, SECRET_BYTES));
}
