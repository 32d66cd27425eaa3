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
