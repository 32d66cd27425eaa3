import { readFileSync } from 'node:fs';
import { createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import type { Socket } from 'node:net';
import { ErrorCode, vrgError } from '../core/errors.js';
import { noteSecret } from '../core/secrets.js';

// NBD over TLS (NBD_OPT_STARTTLS, as qemu-nbd and nbdkit do it): the client asks during option haggling, the
// server acknowledges in plain text, then both run a TLS handshake on the same socket and haggling goes on
// inside it. Credentials are either pre-shared keys (the `username:hexkey` file of qemu's tls-creds-psk and
// nbdkit's --tls-psk) or an X.509 certificate and key, or both on one listener.
//
// Modes: 'off' refuses STARTTLS; 'allow' serves plain and TLS clients; 'require' answers every option but
// STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD before TLS, so a plain client learns no export name or size.

export type NbdTlsMode = 'off' | 'allow' | 'require';

export interface NbdTlsCredentials {
  /** PSK identities (usernames) and their keys. */
  psk?: Map<string, Buffer>;
  /** PEM certificate chain and private key for X.509. */
  certPem?: string;
  keyPem?: string;
}

export interface NbdTls {
  mode: NbdTlsMode;
  /** Upgrades the plain socket after STARTTLS's acknowledgement; resolves once the handshake is done. */
  upgrade(plain: Socket): TLSSocket;
}

// TLS 1.3 suites first, then TLS 1.2 (EC)DHE-PSK and certificate suites; plain PSK (no forward secrecy)
// last, for clients that offer nothing else. In the server's order, SHA-256 suites first: OpenSSL binds a
// TLS 1.3 PSK from the callback to SHA-256, so a SHA-384 suite would drop the PSK and fall back to the
// certificate (a PSK-only client then fails with "insufficient credentials").
const cipherSuites = [
  'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_256_GCM_SHA384',
  'ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256',
  'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-AES128-GCM-SHA256', 'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256',
].join(':');

/** RFC 4279: identities up to 128 bytes, keys up to 64 bytes (OpenSSL's limit too). */
const pskIdentityBytesMax = 128;
const pskKeyBytesMax = 64;

/**
 * Parses a PSK file: one `username:hexkey` per line (blank lines and `#` comments ignored), as
 * `psktool -u NAME -p FILE` writes it. Throws CONFIG_INVALID naming the line; never echoes a key.
 */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = `${file} line ${i + 1}`;
    const colon = line.indexOf(':');
    const name = colon < 0 ? '' : line.slice(0, colon);
    const hex = colon < 0 ? '' : line.slice(colon + 1);
    if (name === '' || Buffer.byteLength(name) > pskIdentityBytesMax) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `${at}: expected username:hexkey with a username of 1..${pskIdentityBytesMax} bytes`, { file, line: i + 1 });
    }
    if (!/^([0-9a-fA-F]{2}){1,64}$/.test(hex) || hex.length / 2 > pskKeyBytesMax) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `${at}: the key of '${name}' must be hex of 1..${pskKeyBytesMax} bytes`, { file, line: i + 1 });
    }
    if (keys.has(name)) throw vrgError(ErrorCode.CONFIG_INVALID, `${at}: '${name}' is listed twice`, { file, line: i + 1 });
    noteSecret(hex); // never in a log line or an error from here on
    keys.set(name, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw vrgError(ErrorCode.CONFIG_INVALID, `${file}: no username:hexkey line`, { file });
  return keys;
}

/** Reads the files a listener's config names (pskFile, certFile + keyFile). */
export function loadNbdTlsCredentials(files: { pskFile?: string; certFile?: string; keyFile?: string }): NbdTlsCredentials {
  const read = (file: string): string => {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      throw vrgError(ErrorCode.CONFIG_INVALID, `cannot read NBD TLS file ${file}: ${(err as Error).message}`, { file }, err);
    }
  };
  const creds: NbdTlsCredentials = {};
  if (files.pskFile !== undefined) creds.psk = parsePskFile(read(files.pskFile), files.pskFile);
  if ((files.certFile === undefined) !== (files.keyFile === undefined)) {
    throw vrgError(ErrorCode.CONFIG_INVALID, 'NBD TLS: certFile and keyFile go together');
  }
  if (files.certFile !== undefined) {
    creds.certPem = read(files.certFile);
    creds.keyPem = read(files.keyFile!);
  }
  return creds;
}

export function nbdTls(mode: NbdTlsMode, creds: NbdTlsCredentials): NbdTls {
  if (mode === 'off') return { mode, upgrade: () => { throw new Error('NBD TLS is off'); } };
  if (!creds.psk && !creds.certPem) {
    throw vrgError(ErrorCode.CONFIG_INVALID, `NBD TLS '${mode}' needs a PSK file or a certificate and key`);
  }
  let context: SecureContext;
  try {
    context = createSecureContext({ ciphers: cipherSuites, honorCipherOrder: true, minVersion: 'TLSv1.2', cert: creds.certPem, key: creds.keyPem });
  } catch (err) {
    throw vrgError(ErrorCode.CONFIG_INVALID, `NBD TLS: the certificate or key is not usable: ${(err as Error).message}`, {}, err);
  }
  const psk = creds.psk;
  return {
    mode,
    upgrade(plain: Socket): TLSSocket {
      return new TLSSocket(plain, {
        isServer: true,
        secureContext: context,
        requestCert: false,
        // An unknown identity gets no key: the handshake fails and the client learns nothing.
        ...(psk ? { pskCallback: (_s: TLSSocket, identity: string) => psk.get(identity) ?? null } : {}),
      });
    },
  };
}
