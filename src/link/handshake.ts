import { createHash, timingSafeEqual } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { ErrorCode, isVrgError, vrgError, type VrgError } from '../core/errors.js';
import { limits } from '../core/limits.js';
import { silentLogger } from '../core/log.js';
import { encodeFrame, FrameDecoder, FrameType, openFrame, type DirectionKeys, type RawFrame } from '../protocol/frame.js';
import { deriveSessionKeys } from '../protocol/keys.js';
import {
  decodeAuth, decodeHello, decodeLinkError, decodeResume, encodeAuth, encodeHello, encodeLinkError, encodeResume,
  type Hello, type Resume,
} from '../protocol/messages.js';
import { LinkConnection, type ConnectionInit, type LinkOptions } from './connection.js';

// The link handshake (client = production, server = DR):
//   C -> S  HELLO   unsealed, seq 0: protocol version, gateway id, role, 32-byte nonce
//   S -> C  HELLO   unsealed, seq 0
//           both derive session keys from the pairing secret and the two nonces (keys.ts)
//   C -> S  AUTH    sealed c2s seq 0: SHA-256(client HELLO frame bytes || server HELLO frame bytes)
//   S -> C  AUTH    sealed s2c seq 0: the same hash, after verifying the client's
//   S -> C  RESUME  sealed s2c seq 1: where each VM's stream resumes
// A side that rejects the peer sends an unsealed LINK_ERROR (seq 0) and closes. Unsealed HELLO frames are not
// counted in the sealed sequences. The whole exchange is bounded by handshakeTimeoutMs.

/** 2: frames of every type may go either way (roles are per VM, issue 14); 3: frame prefix check; 4: REKEY. */
export const PROTOCOL_VERSION = 4;
const NONCE_BYTES = 32;
const GATEWAY_ID_MAX = 256;
const ABORT_GRACE_MS = 1_000;

type HandshakeResult = Omit<ConnectionInit, 'sock' | 'opts' | 'decoder' | 'pending'>;

/** Queues the frames of one socket during the handshake; hands the decoder and leftovers on afterwards. */
class HandshakeReader {
  readonly decoder: FrameDecoder;
  failure: Error | null = null;
  private frames: RawFrame[] = [];
  private waiter: { resolve: (f: RawFrame) => void; reject: (e: Error) => void } | null = null;
  private readonly onData = (chunk: Buffer): void => {
    try {
      for (const f of this.decoder.push(chunk)) this.frames.push(f);
    } catch (err) {
      this.fail(err as Error);
    }
    this.wake();
  };
  private readonly onEnd = (): void => this.fail(vrgError(ErrorCode.CONNECTION_CLOSED, 'peer closed the connection during the handshake'));
  private readonly onError = (err: Error): void =>
    this.fail(vrgError(ErrorCode.CONNECTION_CLOSED, `socket error during the handshake: ${err.message}`, undefined, err));

  constructor(private readonly sock: Duplex, frameBytesMax: number) {
    this.decoder = new FrameDecoder(frameBytesMax);
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.on('error', this.onError);
  }

  next(): Promise<RawFrame> {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.wake();
    });
  }

  fail(err: Error): void {
    this.failure ??= err;
    this.wake();
  }

  /** Fails at once, dropping queued frames (timeouts). */
  abort(err: Error): void {
    this.frames = [];
    this.failure = err;
    this.wake();
  }

  detach(): RawFrame[] {
    this.sock.pause();
    this.sock.off('data', this.onData);
    this.sock.off('end', this.onEnd);
    this.sock.off('close', this.onEnd);
    this.sock.off('error', this.onError);
    return this.frames.splice(0);
  }

  private wake(): void {
    const w = this.waiter;
    if (w === null) return;
    const f = this.frames.shift();
    if (f !== undefined) {
      this.waiter = null;
      w.resolve(f);
    } else if (this.failure !== null) {
      this.waiter = null;
      w.reject(this.failure);
    }
  }
}

function failed(msg: string, details?: Record<string, unknown>, cause?: unknown): VrgError {
  return vrgError(ErrorCode.HANDSHAKE_FAILED, msg, details, cause);
}

/** Throws the peer's rejection if `f` is an unsealed LINK_ERROR, or a failure if `f` is not of `type`. */
function expectType(f: RawFrame, type: number, what: string): void {
  if (f.type === FrameType.LINK_ERROR && f.flags === 0) {
    let peer: { code: string; message: string };
    try {
      peer = decodeLinkError(f.header);
    } catch (err) {
      throw failed('peer sent a malformed LINK_ERROR during the handshake', undefined, err);
    }
    const code = peer.code === ErrorCode.PROTOCOL_VERSION ? ErrorCode.PROTOCOL_VERSION : ErrorCode.HANDSHAKE_FAILED;
    throw vrgError(code, `peer rejected the handshake: ${peer.code}: ${peer.message}`,
      { peerCode: peer.code, peerMessage: peer.message, fromPeer: true });
  }
  if (f.type !== type) throw failed(`expected ${what}, got frame type ${f.type}`, { type: f.type });
}

function checkHello(f: RawFrame, peerRole: string): Hello {
  expectType(f, FrameType.HELLO, 'HELLO');
  if (f.flags !== 0 || f.seq !== 0 || f.payload.length !== 0) throw failed('HELLO must be unsealed, seq 0, without payload');
  const hello = decodeHello(f.header);
  if (hello.protocolVersion !== PROTOCOL_VERSION) {
    throw vrgError(ErrorCode.PROTOCOL_VERSION, `peer speaks protocol ${hello.protocolVersion}, this gateway ${PROTOCOL_VERSION}`,
      { peerVersion: hello.protocolVersion, version: PROTOCOL_VERSION });
  }
  if (hello.nonce.length !== NONCE_BYTES) throw failed(`HELLO nonce of ${hello.nonce.length} bytes`);
  if (hello.gatewayId.length === 0 || hello.gatewayId.length > GATEWAY_ID_MAX) throw failed('HELLO gateway id is empty or too long');
  if (hello.role !== peerRole) throw failed(`peer role "${hello.role}", expected "${peerRole}"`, { peerRole: hello.role });
  return hello;
}

/** Checks a sealed AUTH: the tag (proves the peer holds the pairing secret) and the transcript hash. */
function verifyAuth(f: RawFrame, keys: DirectionKeys, transcript: Buffer): void {
  expectType(f, FrameType.AUTH, 'AUTH');
  let header: Buffer;
  try {
    header = openFrame(f, keys, 0).header;
  } catch (err) {
    throw failed('peer AUTH failed verification (wrong pairing secret?)', undefined, err);
  }
  const hash = decodeAuth(header).transcriptHash;
  if (hash.length !== transcript.length || !timingSafeEqual(hash, transcript)) throw failed('peer AUTH transcript hash mismatch');
}

function transcriptHash(clientHello: Buffer, serverHello: Buffer): Buffer {
  return createHash('sha256').update(clientHello).update(serverHello).digest();
}

function sealed(type: number, seq: number, header: Uint8Array, keys: DirectionKeys): Buffer {
  return encodeFrame({ type, seq, header }, { keys, encrypt: false });
}

function helloFrame(opts: LinkOptions, nonce: Buffer): Buffer {
  const header = encodeHello({ protocolVersion: PROTOCOL_VERSION, gatewayId: opts.gatewayId, nonce, role: opts.role });
  return encodeFrame({ type: FrameType.HELLO, seq: 0, header });
}

function toHandshakeError(err: unknown): VrgError {
  const keep: string[] = [ErrorCode.TIMEOUT, ErrorCode.PROTOCOL_VERSION, ErrorCode.HANDSHAKE_FAILED, ErrorCode.CONNECTION_CLOSED];
  if (isVrgError(err) && keep.includes(err.code)) return err;
  return failed(`handshake failed: ${(err as Error).message}`, undefined, err);
}

/** Drops a socket whose handshake failed, telling the peer why when this side rejected it. */
function abortSocket(sock: Duplex, err: VrgError, opts: LinkOptions): void {
  sock.on('error', () => undefined);
  const tellPeer = (err.code === ErrorCode.HANDSHAKE_FAILED || err.code === ErrorCode.PROTOCOL_VERSION) && err.details?.fromPeer !== true;
  if (!tellPeer || !sock.writable || sock.destroyed) {
    sock.destroy();
    return;
  }
  const header = encodeLinkError({ code: err.code, message: err.message.slice(0, 1024) });
  sock.end(encodeFrame({ type: FrameType.LINK_ERROR, seq: 0, header }));
  sock.resume();
  opts.clock.setTimer(ABORT_GRACE_MS, () => sock.destroy());
}

async function runHandshake(
  sock: Duplex, opts: LinkOptions, body: (r: HandshakeReader) => Promise<HandshakeResult>,
): Promise<LinkConnection> {
  const timeoutMs = opts.handshakeTimeoutMs ?? limits.handshakeTimeoutMs;
  const reader = new HandshakeReader(sock, opts.frameBytesMax ?? limits.frameBytesMax);
  const timer = opts.clock.setTimer(timeoutMs, () =>
    reader.abort(vrgError(ErrorCode.TIMEOUT, `handshake did not complete within ${timeoutMs} ms`)));
  try {
    const result = await body(reader);
    if (reader.failure) throw reader.failure;
    const pending = reader.detach();
    return new LinkConnection({ ...result, sock, opts, decoder: reader.decoder, pending });
  } catch (e) {
    const err = toHandshakeError(e);
    reader.detach();
    abortSocket(sock, err, opts);
    (opts.logger ?? silentLogger).debug({ code: err.code, err: err.message }, 'link handshake failed');
    throw err;
  } finally {
    timer.cancel();
  }
}

/** Production side: the socket was just connected to the DR gateway. */
export function clientHandshake(sock: Duplex, opts: LinkOptions): Promise<LinkConnection> {
  return runHandshake(sock, opts, async (r) => {
    const nonce = opts.random.bytes(NONCE_BYTES);
    const myHello = helloFrame(opts, nonce);
    sock.write(myHello);
    const peerHelloFrame = await r.next();
    const peerHello = checkHello(peerHelloFrame, opts.role === 'production' ? 'dr' : 'production');
    const keys = deriveSessionKeys(opts.secret, nonce, peerHello.nonce);
    const transcript = transcriptHash(myHello, peerHelloFrame.bytes);
    sock.write(sealed(FrameType.AUTH, 0, encodeAuth({ transcriptHash: transcript }), keys.clientToServer));
    verifyAuth(await r.next(), keys.serverToClient, transcript);
    const resumeFrame = await r.next();
    expectType(resumeFrame, FrameType.RESUME, 'RESUME');
    const resume = decodeResume(openFrame(resumeFrame, keys.serverToClient, 1).header);
    return {
      peer: { gatewayId: peerHello.gatewayId, role: peerHello.role }, sessionId: keys.sessionId, resume,
      sendKeys: keys.clientToServer, recvKeys: keys.serverToClient, sendSeq: 1, recvSeq: 2,
    };
  });
}

/** Per-peer pairing secrets (cluster pairs): the secret for a peer gateway id, or null for `secret`. */
export type PeerSecretLookup = (peerGatewayId: string) => Buffer | null;

/** The secrets a pairing accepts now (link-secrets.ts: current, then the next one of a rotation in progress). */
export type SecretCandidates = (initial: Buffer) => Buffer[];

/**
 * DR side: the socket was just accepted. `resume` says where each VM's stream continues. A peer whose
 * gateway id `peerSecret` knows must prove that secret (the claimed id only selects which one to check).
 */
export function serverHandshake(
  sock: Duplex, opts: LinkOptions & { resume: () => Resume; peerSecret?: PeerSecretLookup; candidates?: SecretCandidates },
): Promise<LinkConnection> {
  return runHandshake(sock, opts, async (r) => {
    const peerHelloFrame = await r.next();
    const peerHello = checkHello(peerHelloFrame, opts.role === 'dr' ? 'production' : 'dr');
    const nonce = opts.random.bytes(NONCE_BYTES);
    const myHello = helloFrame(opts, nonce);
    sock.write(myHello);
    const initial = opts.peerSecret?.(peerHello.gatewayId) ?? opts.secret;
    const transcript = transcriptHash(peerHelloFrame.bytes, myHello);
    const authFrame = await r.next();
    // During a rotation two secrets are accepted: the one whose keys open the peer's AUTH is the peer's.
    const secrets = opts.candidates?.(initial) ?? [initial];
    let candidate = 0;
    let keys = deriveSessionKeys(secrets[0]!, peerHello.nonce, nonce);
    for (;;) {
      try {
        verifyAuth(authFrame, keys.clientToServer, transcript);
        break;
      } catch (err) {
        if (++candidate >= secrets.length) throw err;
        keys = deriveSessionKeys(secrets[candidate]!, peerHello.nonce, nonce);
      }
    }
    const resume = encodeResume(opts.resume());
    sock.write(sealed(FrameType.AUTH, 0, encodeAuth({ transcriptHash: transcript }), keys.serverToClient));
    sock.write(sealed(FrameType.RESUME, 1, resume, keys.serverToClient));
    return {
      peer: { gatewayId: peerHello.gatewayId, role: peerHello.role }, sessionId: keys.sessionId, resume: null,
      sendKeys: keys.serverToClient, recvKeys: keys.clientToServer, sendSeq: 2, recvSeq: 1, auth: { initial, secret: secrets[candidate]! },
    };
  });
}
