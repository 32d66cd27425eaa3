import { createCipheriv, createDecipheriv } from 'node:crypto';
import type { BlockMemory } from '../core/buffer-ring.js';
import { crc32c } from '../core/checksum.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { bugPlanted } from '../core/planted-bugs.js';
import { limits } from '../core/limits.js';
import { nativeGcm } from './gcm.js';

// The link frame:
//  0  u32be bodyLen     bytes after this field (≤ frameBytesMax)
//  4  u8    type        FrameType
//  5  u8    flags       bit0 SEALED (a 16-byte GCM tag ends the frame), bit1 ENCRYPTED (payload is ciphertext)
//  6  u16be headerLen   protobuf header bytes (≤ frameHeaderBytesMax, and a u16 in any case)
//  8  u48be seq         per-direction frame sequence, 0 for the first sealed frame of a session
// 14  u16be check       low 16 bits of CRC32C over bytes [0, 14)
// 16  header            protobuf message of the frame type
//     payload           raw bytes (write-batch data), possibly empty
//     tag               16 bytes, present iff SEALED
// AAD = bytes [0, 16 + headerLen) and, when not ENCRYPTED, the payload too.
// IV = 4-byte direction salt || u64be seq. AES-128-GCM, authTagLength 16 always.
// ENCRYPTED without SEALED and unknown flag bits are malformed.
// The check exists for bodyLen: the tag proves everything, but only once the whole frame is in, and a length
// corrupted upward (a flip TCP's checksum missed) would have the receiver wait for bytes that never come while
// the heartbeats it swallows keep the link looking alive. The check catches every 1- and 2-bit error of the
// prefix before any body byte is awaited.

export const FrameType = {
  HELLO: 1, AUTH: 2, WRITE_BATCH: 3, ACK: 4, HEARTBEAT: 5, HEARTBEAT_REPLY: 6, LINK_ERROR: 7, RESUME: 8,
  VM_STATE: 9, CHECK_REQUEST: 10, CHECK_DIGESTS: 11, FAILOVER_REQUEST: 12, FAILOVER_READY: 13, REKEY: 14, REKEY_ACK: 15,
} as const;

export const FrameFlags = { SEALED: 1, ENCRYPTED: 2 } as const;

export const FRAME_PREFIX_BYTES = 16;
export const FRAME_TAG_BYTES = 16;
/** Bytes of the body (after the length field) that every frame has. */
const BODY_FIXED_BYTES = FRAME_PREFIX_BYTES - 4;
/** headerLen is a u16 on the wire, whatever the configured limit. */
export const frameHeaderBytesMax = Math.min(limits.frameHeaderBytesMax, 0xffff);
/** Cipher work is done in chunks so no call returns a buffer bigger than this. */
const CIPHER_CHUNK_BYTES = 64 * 1024;

export interface DirectionKeys { key: Buffer /* 16 */; salt: Buffer /* 4 */ }

export interface RawFrame {
  type: number;
  flags: number;
  seq: number;
  header: Buffer;
  payload: Buffer;
  tag: Buffer | null;
  /** The whole frame including the length field; header/payload/tag are views into it. */
  bytes: Buffer;
}

/** A frame's seq fits the prefix's u48. */
export const frameSeqMax = 2 ** 48 - 1;

function ivFor(keys: DirectionKeys, seq: number): Buffer {
  const iv = Buffer.allocUnsafe(12);
  keys.salt.copy(iv, 0, 0, 4);
  iv.writeUInt32BE(Math.floor(seq / 0x1_0000_0000), 4);
  iv.writeUInt32BE(seq % 0x1_0000_0000, 8);
  return iv;
}

/** The u16 at offset 14 of a frame whose first 14 bytes are `prefix`'s. */
export function prefixCheck(prefix: Uint8Array): number {
  return crc32c(prefix.subarray(0, 14)) & 0xffff;
}

function checkKeys(keys: DirectionKeys): void {
  if (keys.key.length !== 16 || keys.salt.length !== 4) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, 'direction keys need a 16-byte key and a 4-byte salt');
  }
}

/** Runs `update` over `src` in chunks, writing the output into `dst` at `at`. */
function cipherInto(c: { update(b: Buffer): Buffer }, src: Uint8Array, dst: Buffer, at: number): void {
  const source = Buffer.from(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0; i < source.length; i += CIPHER_CHUNK_BYTES) {
    const out = c.update(source.subarray(i, i + CIPHER_CHUNK_BYTES));
    out.copy(dst, at + i);
    if (out.length !== Math.min(CIPHER_CHUNK_BYTES, source.length - i)) {
      throw new Error('GCM update returned an unexpected length');
    }
  }
}

const empty = new Uint8Array(0);

/** Frames smaller than this (control frames) are not worth a ring block. */
export const pooledFrameBytesMin = 16 * 1024;

/** Frame bytes beyond the header and payload: prefix and tag. */
export const FRAME_OVERHEAD_BYTES = FRAME_PREFIX_BYTES + FRAME_TAG_BYTES;

/**
 * Builds a frame in one buffer that owns its ArrayBuffer (transferable), or at the start of `into` (a
 * returned view of it) when given. Unsealed when `seal` is omitted.
 */
export function encodeFrame(
  f: { type: number; seq: number; header: Uint8Array; payload?: Uint8Array },
  seal?: { keys: DirectionKeys; encrypt: boolean },
  into?: Buffer,
): Buffer {
  const payload = f.payload ?? new Uint8Array(0);
  const headerLen = f.header.byteLength;
  if (!Number.isInteger(f.type) || f.type < 0 || f.type > 0xff) throw vrgError(ErrorCode.INVALID_ARGUMENT, `bad frame type ${f.type}`);
  if (!Number.isSafeInteger(f.seq) || f.seq < 0 || f.seq > frameSeqMax) throw vrgError(ErrorCode.INVALID_ARGUMENT, `bad frame seq ${f.seq}`);
  if (headerLen > frameHeaderBytesMax) {
    throw vrgError(ErrorCode.FRAME_TOO_LARGE, `frame header of ${headerLen} bytes exceeds ${frameHeaderBytesMax}`);
  }
  const bodyLen = BODY_FIXED_BYTES + headerLen + payload.byteLength + (seal ? FRAME_TAG_BYTES : 0);
  if (bodyLen > limits.frameBytesMax) {
    throw vrgError(ErrorCode.FRAME_TOO_LARGE, `frame body of ${bodyLen} bytes exceeds ${limits.frameBytesMax}`);
  }
  if (into && into.length < 4 + bodyLen) {
    throw vrgError(ErrorCode.INVALID_ARGUMENT, `frame of ${4 + bodyLen} bytes does not fit its ${into.length}-byte buffer`);
  }
  const out = into ? into.subarray(0, 4 + bodyLen) : Buffer.allocUnsafeSlow(4 + bodyLen);
  const flags = seal ? FrameFlags.SEALED | (seal.encrypt ? FrameFlags.ENCRYPTED : 0) : 0;
  out.writeUInt32BE(bodyLen, 0);
  out[4] = f.type;
  out[5] = flags;
  out.writeUInt16BE(headerLen, 6);
  out.writeUIntBE(f.seq, 8, 6);
  out.writeUInt16BE(prefixCheck(out), 14);
  out.set(f.header, FRAME_PREFIX_BYTES);
  const payloadAt = FRAME_PREFIX_BYTES + headerLen;
  if (!seal) {
    out.set(payload, payloadAt);
    return out;
  }
  checkKeys(seal.keys);
  if (nativeGcm) {
    const tagAt = payloadAt + payload.byteLength;
    const iv = ivFor(seal.keys, f.seq);
    const tag = out.subarray(tagAt, tagAt + FRAME_TAG_BYTES);
    if (seal.encrypt) {
      nativeGcm.gcmSeal(seal.keys.key, iv, out.subarray(0, payloadAt), payload, out.subarray(payloadAt, tagAt), tag);
    } else {
      // Authenticated only (acks, control frames, a VM without encryption): the payload is AAD after the
      // header, as node:crypto's second setAAD() below makes it.
      out.set(payload, payloadAt);
      nativeGcm.gcmSeal(seal.keys.key, iv, out.subarray(0, tagAt), empty, empty, tag);
    }
    return out;
  }
  const cipher = createCipheriv('aes-128-gcm', seal.keys.key, ivFor(seal.keys, f.seq), { authTagLength: FRAME_TAG_BYTES });
  cipher.setAAD(out.subarray(0, payloadAt));
  if (seal.encrypt) {
    cipherInto(cipher, payload, out, payloadAt);
  } else {
    out.set(payload, payloadAt);
    if (payload.byteLength > 0) cipher.setAAD(out.subarray(payloadAt, payloadAt + payload.byteLength));
  }
  cipher.final();
  cipher.getAuthTag().copy(out, payloadAt + payload.byteLength);
  return out;
}

/** Where a payload of `bytes` is decrypted: the caller's buffer when it is long enough, else one of its own. */
function plainBuffer(bytes: number, plainInto: Buffer | undefined): Buffer {
  return plainInto && plainInto.length >= bytes ? plainInto.subarray(0, bytes) : Buffer.allocUnsafeSlow(bytes);
}

/**
 * Authenticates a sealed frame (and decrypts an ENCRYPTED payload) before returning anything.
 * VRG_FRAME_SEQUENCE when f.seq !== expectedSeq; VRG_FRAME_AUTH_FAILED on a missing or bad tag.
 * `plainInto`: where an ENCRYPTED payload is decrypted when it is large enough (a caller's scratch, for a
 * plaintext it consumes at once); else into a buffer of its own. The frame's bytes stay as received either way.
 */
export function openFrame(f: RawFrame, keys: DirectionKeys, expectedSeq: number, plainInto?: Buffer): { header: Buffer; payload: Buffer } {
  if ((f.flags & FrameFlags.SEALED) === 0 || f.tag === null || f.tag.length !== FRAME_TAG_BYTES) {
    throw vrgError(ErrorCode.FRAME_AUTH_FAILED, `frame type ${f.type} seq ${f.seq} is not sealed`, { type: f.type, seq: f.seq });
  }
  if (f.seq !== expectedSeq) {
    throw vrgError(ErrorCode.FRAME_SEQUENCE, `frame seq ${f.seq}, expected ${expectedSeq}`, { seq: f.seq, expectedSeq });
  }
  checkKeys(keys);
  const headerEnd = FRAME_PREFIX_BYTES + f.header.length;
  const encrypted = (f.flags & FrameFlags.ENCRYPTED) !== 0;
  if (nativeGcm && !encrypted && payloadFollowsHeader(f, headerEnd)) {
    // Authenticated only: header and payload, back to back in the frame's bytes, are together the AAD.
    const ok = nativeGcm.gcmOpen(keys.key, ivFor(keys, f.seq), f.bytes.subarray(0, headerEnd + f.payload.length), empty, empty, f.tag);
    if (!ok && !bugPlanted('accept-bad-tag')) throw authFailed(f);
    return { header: f.header, payload: f.payload };
  }
  if (nativeGcm && encrypted) {
    const payload = plainBuffer(f.payload.length, plainInto);
    const ok = nativeGcm.gcmOpen(keys.key, ivFor(keys, f.seq), f.bytes.subarray(0, headerEnd), f.payload, payload, f.tag);
    if (!ok && !bugPlanted('accept-bad-tag')) throw authFailed(f);
    return { header: f.header, payload };
  }
  const decipher = createDecipheriv('aes-128-gcm', keys.key, ivFor(keys, f.seq), { authTagLength: FRAME_TAG_BYTES });
  decipher.setAuthTag(f.tag);
  decipher.setAAD(f.bytes.subarray(0, headerEnd));
  let payload = f.payload;
  if (encrypted) {
    payload = plainBuffer(f.payload.length, plainInto);
    cipherInto(decipher, f.payload, payload, 0);
  } else if (f.payload.length > 0) {
    decipher.setAAD(f.payload);
  }
  try {
    decipher.final();
  } catch (err) {
    if (bugPlanted('accept-bad-tag')) return { header: f.header, payload };
    throw authFailed(f, err);
  }
  return { header: f.header, payload };
}

/** decodeFrame's views: the payload starts in `bytes` where the header ends. */
function payloadFollowsHeader(f: RawFrame, headerEnd: number): boolean {
  return f.payload.buffer === f.bytes.buffer && f.payload.byteOffset === f.bytes.byteOffset + headerEnd;
}

function authFailed(f: RawFrame, cause?: unknown): Error {
  return vrgError(ErrorCode.FRAME_AUTH_FAILED, `frame type ${f.type} seq ${f.seq} failed authentication`, { type: f.type, seq: f.seq }, cause);
}

function malformed(msg: string): Error {
  return vrgError(ErrorCode.FRAME_MALFORMED, msg);
}

function checkPrefix(prefix: Buffer): void {
  const want = prefixCheck(prefix);
  const got = prefix.readUInt16BE(14);
  if (got !== want) throw malformed(`frame prefix check 0x${got.toString(16)} is not 0x${want.toString(16)} (a corrupted prefix)`);
}

/** Parses one complete frame (length field included); the result's views share `bytes`. */
export function parseFrame(bytes: Buffer, frameBytesMax: number = limits.frameBytesMax): RawFrame {
  if (bytes.length < FRAME_PREFIX_BYTES) throw malformed(`frame of ${bytes.length} bytes is shorter than its prefix`);
  const bodyLen = bytes.readUInt32BE(0);
  if (bodyLen > frameBytesMax) throw vrgError(ErrorCode.FRAME_TOO_LARGE, `frame body of ${bodyLen} bytes exceeds ${frameBytesMax}`);
  if (bodyLen !== bytes.length - 4) throw malformed(`frame length field ${bodyLen} does not match ${bytes.length - 4} bytes`);
  checkPrefix(bytes);
  const type = bytes[4]!;
  const flags = bytes[5]!;
  if ((flags & ~(FrameFlags.SEALED | FrameFlags.ENCRYPTED)) !== 0) throw malformed(`unknown frame flags 0x${flags.toString(16)}`);
  const sealed = (flags & FrameFlags.SEALED) !== 0;
  if (!sealed && (flags & FrameFlags.ENCRYPTED) !== 0) throw malformed('ENCRYPTED frame without SEALED');
  const headerLen = bytes.readUInt16BE(6);
  if (headerLen > frameHeaderBytesMax) throw malformed(`frame header of ${headerLen} bytes exceeds ${frameHeaderBytesMax}`);
  const seq = bytes.readUIntBE(8, 6);
  const headerEnd = FRAME_PREFIX_BYTES + headerLen;
  const payloadEnd = bytes.length - (sealed ? FRAME_TAG_BYTES : 0);
  if (headerEnd > payloadEnd) {
    throw malformed(sealed ? `sealed frame too short for header of ${headerLen} bytes and tag` : `header of ${headerLen} bytes overruns the frame`);
  }
  return {
    type, flags, seq,
    header: bytes.subarray(FRAME_PREFIX_BYTES, headerEnd),
    payload: bytes.subarray(headerEnd, payloadEnd),
    tag: sealed ? bytes.subarray(payloadEnd) : null,
    bytes,
  };
}

/**
 * Incremental frame decoder: any split of the byte stream gives the same frames. Holds at most one
 * partial frame, whose size is checked against frameBytesMax before any of its body is buffered.
 * Each frame is copied once into its own buffer (transferable to a worker) or a block of `memory`, which
 * whoever consumes the frame frees. After an error it stays failed.
 */
export class FrameDecoder {
  private readonly prefix = Buffer.alloc(FRAME_PREFIX_BYTES);
  private prefixFill = 0;
  private cur: Buffer | null = null;
  private curFill = 0;
  private failure: Error | null = null;
  /**
   * Set by the frame's consumer (the DR gateway): frames of pooledFrameBytesMin or more are received into it
   * (a buffer of their own when it has no room), and the consumer releases them once used.
   */
  memory: BlockMemory | null = null;

  constructor(private readonly frameBytesMax: number = limits.frameBytesMax) {}

  /** Hands back the partial frame's block (the connection is gone). */
  dispose(): void {
    this.memory?.release(this.cur);
    this.cur = null;
    this.failure ??= new Error('frame decoder disposed');
  }

  get bufferedBytes(): number {
    return this.cur ? this.curFill : this.prefixFill;
  }

  push(chunk: Buffer): RawFrame[] {
    if (this.failure) throw this.failure;
    try {
      return this.consume(chunk);
    } catch (err) {
      this.failure = err as Error;
      throw err;
    }
  }

  private consume(chunk: Buffer): RawFrame[] {
    const frames: RawFrame[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.cur === null) {
        const n = Math.min(FRAME_PREFIX_BYTES - this.prefixFill, chunk.length - at);
        chunk.copy(this.prefix, this.prefixFill, at, at + n);
        const before = this.prefixFill;
        this.prefixFill += n;
        at += n;
        if (before < 4 && this.prefixFill >= 4) checkBodyLen(this.prefix.readUInt32BE(0), this.frameBytesMax); // before any more is awaited
        if (this.prefixFill < FRAME_PREFIX_BYTES) break;
        checkPrefix(this.prefix);
        this.cur = this.startFrame(this.prefix.readUInt32BE(0));
        this.curFill = FRAME_PREFIX_BYTES;
      }
      const n = Math.min(this.cur.length - this.curFill, chunk.length - at);
      chunk.copy(this.cur, this.curFill, at, at + n);
      this.curFill += n;
      at += n;
      if (this.curFill === this.cur.length) {
        const bytes = this.cur;
        this.cur = null;
        this.curFill = 0;
        this.prefixFill = 0;
        frames.push(parseFrame(bytes, this.frameBytesMax));
      }
    }
    return frames;
  }

  private startFrame(bodyLen: number): Buffer {
    const pooled = this.memory && 4 + bodyLen >= pooledFrameBytesMin ? this.memory.tryAlloc(4 + bodyLen) : null;
    const buf = pooled ?? Buffer.allocUnsafeSlow(4 + bodyLen);
    this.prefix.copy(buf, 0);
    return buf;
  }
}

function checkBodyLen(bodyLen: number, frameBytesMax: number): void {
  if (bodyLen > frameBytesMax) {
    throw vrgError(ErrorCode.FRAME_TOO_LARGE, `frame body of ${bodyLen} bytes exceeds ${frameBytesMax}`, { bodyLen });
  }
  if (bodyLen < BODY_FIXED_BYTES) throw malformed(`frame body of ${bodyLen} bytes is shorter than ${BODY_FIXED_BYTES}`);
}
