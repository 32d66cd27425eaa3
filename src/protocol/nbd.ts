import { assert } from '../core/assert.js';
import type { BlockMemory } from '../core/buffer-ring.js';
import { ErrorCode, vrgError } from '../core/errors.js';

// The NBD wire protocol (fixed newstyle handshake, simple and structured replies, no extended headers),
// as pure codecs shared by the server (src/nbd) and the client (src/volume/nbd-client.ts). No sockets here.
// All integers are big-endian. Offsets are u64 on the wire and JS numbers here: values above 2^53 decode
// inexactly but stay above any export size, so range checks still reject them.

// ---- constants ----

/** 'NBDMAGIC': first 8 bytes of every newstyle greeting. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': second 8 bytes of the greeting, and the first field of every option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** First field of every option reply. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Server handshake flags (u16 in the greeting). */
export const NbdHandshakeFlag = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;
/** Client flags (u32 sent right after the greeting). */
export const NbdClientFlag = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;

export const NbdOpt = {
  EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10, EXTENDED_HEADERS: 11,
} as const;

/** Option reply types; errors have bit 31 set. */
export const NBD_REP_FLAG_ERROR = 0x8000_0000;
export const NbdRep = {
  ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4,
  ERR_UNSUP: NBD_REP_FLAG_ERROR + 1,
  ERR_POLICY: NBD_REP_FLAG_ERROR + 2,
  ERR_INVALID: NBD_REP_FLAG_ERROR + 3,
  ERR_PLATFORM: NBD_REP_FLAG_ERROR + 4,
  ERR_TLS_REQD: NBD_REP_FLAG_ERROR + 5,
  ERR_UNKNOWN: NBD_REP_FLAG_ERROR + 6,
  ERR_SHUTDOWN: NBD_REP_FLAG_ERROR + 7,
  ERR_BLOCK_SIZE_REQD: NBD_REP_FLAG_ERROR + 8,
  ERR_TOO_BIG: NBD_REP_FLAG_ERROR + 9,
  ERR_EXT_HEADER_REQD: NBD_REP_FLAG_ERROR + 10,
} as const;

/** Information items of NBD_REP_INFO (and the u16 list in an INFO/GO request). */
export const NbdInfo = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags (u16, per export). */
export const NbdTransmissionFlag = {
  HAS_FLAGS: 1 << 0, READ_ONLY: 1 << 1, SEND_FLUSH: 1 << 2, SEND_FUA: 1 << 3, ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5, SEND_WRITE_ZEROES: 1 << 6, SEND_DF: 1 << 7, CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9, SEND_CACHE: 1 << 10, SEND_FAST_ZERO: 1 << 11, BLOCK_STAT_PAYLOAD: 1 << 12,
} as const;

export const NbdCmd = {
  READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7,
} as const;

/** Command flags (u16 in the request). */
export const NbdCmdFlag = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;

/** Error values on the wire (Linux numbering, as the protocol mandates). */
export const NbdErrno = {
  EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108,
} as const;

/** Structured reply chunk types; bit 15 marks the error types. */
export const NbdReplyType = {
  NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 32769, ERROR_OFFSET: 32770,
} as const;
export const NbdReplyFlag = { DONE: 1 } as const;

/** Largest export name the protocol lets a server insist on accepting. */
export const NBD_EXPORT_NAME_BYTES_MAX = 4096;

function protocolError(message: string, details?: Record<string, unknown>): Error {
  return vrgError(ErrorCode.NBD_PROTOCOL, message, details);
}

function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * 0x1_0000_0000 + buf.readUInt32BE(at + 4);
}

function writeU64(buf: Buffer, value: number, at: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, 'u64 field is a non-negative safe integer');
  buf.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  buf.writeUInt32BE(value % 0x1_0000_0000, at + 4);
}

function checkCookie(cookie: Buffer): void {
  assert(cookie.length === 8, 'an NBD cookie is 8 bytes');
}

// ---- handshake ----

/*
 Greeting (server → client), 18 bytes:
  0  u64 NBD_MAGIC
  8  u64 NBD_OPTS_MAGIC
 16  u16 handshake flags (NbdHandshakeFlag)
 Then the client sends u32 client flags (NbdClientFlag).
*/
export const GREETING_BYTES = 18;

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(GREETING_BYTES);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export function decodeGreeting(buf: Buffer, at = 0): { handshakeFlags: number } {
  if (buf.readBigUInt64BE(at) !== NBD_MAGIC || buf.readBigUInt64BE(at + 8) !== NBD_OPTS_MAGIC) {
    throw protocolError('not a newstyle NBD greeting');
  }
  return { handshakeFlags: buf.readUInt16BE(at + 16) };
}

/*
 Option request (client → server):
  0  u64 NBD_OPTS_MAGIC
  8  u32 option (NbdOpt)
 12  u32 data length
 16  data
*/
export const OPTION_REQUEST_HEADER_BYTES = 16;

export function encodeOptionRequest(option: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REQUEST_HEADER_BYTES + data.byteLength);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.byteLength, 12);
  b.set(data, OPTION_REQUEST_HEADER_BYTES);
  return b;
}

/** Throws VRG_NBD_PROTOCOL on a bad magic. */
export function decodeOptionRequestHeader(buf: Buffer, at = 0): { option: number; length: number } {
  if (buf.readBigUInt64BE(at) !== NBD_OPTS_MAGIC) throw protocolError('option request without IHAVEOPT magic');
  return { option: buf.readUInt32BE(at + 8), length: buf.readUInt32BE(at + 12) };
}

/*
 Option reply (server → client):
  0  u64 NBD_REP_MAGIC
  8  u32 option being answered
 12  u32 reply type (NbdRep)
 16  u32 data length
 20  data
*/
export const OPTION_REPLY_HEADER_BYTES = 20;

export interface NbdOptionReplyHeader { magic: bigint; option: number; type: number; length: number }

export function encodeOptionReply(option: number, type: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_BYTES + data.byteLength);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.byteLength, 16);
  b.set(data, OPTION_REPLY_HEADER_BYTES);
  return b;
}

/** Does not check the magic (the caller compares `magic` with NBD_REP_MAGIC and reports its own error). */
export function decodeOptionReplyHeader(buf: Buffer, at = 0): NbdOptionReplyHeader {
  return {
    magic: buf.readBigUInt64BE(at), option: buf.readUInt32BE(at + 8),
    type: buf.readUInt32BE(at + 12), length: buf.readUInt32BE(at + 16),
  };
}

/*
 NBD_OPT_INFO / NBD_OPT_GO data:
  0  u32 name length N
  4  N bytes export name (UTF-8)
     u16 count of information requests
     count × u16 NbdInfo
*/
export function encodeInfoRequest(name: string, infos: readonly number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((info, i) => b.writeUInt16BE(info, 6 + n.length + 2 * i));
  return b;
}

/** Throws VRG_NBD_PROTOCOL when the lengths do not add up (the server answers NBD_REP_ERR_INVALID). */
export function decodeInfoRequest(data: Buffer): { name: string; infos: number[] } {
  if (data.length < 6) throw protocolError('INFO/GO request shorter than 6 bytes');
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) throw protocolError('INFO/GO export name overruns the option');
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) throw protocolError('INFO/GO information list does not match its count');
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name, infos };
}

/*
 NBD_REP_INFO data, by type:
  NBD_INFO_EXPORT      u16 0, u64 export size, u16 transmission flags                    (12 bytes)
  NBD_INFO_NAME        u16 1, name (UTF-8, rest of the reply)
  NBD_INFO_DESCRIPTION u16 2, description (UTF-8, rest of the reply)
  NBD_INFO_BLOCK_SIZE  u16 3, u32 minimum, u32 preferred, u32 maximum block size           (14 bytes)
*/
export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NbdInfo.EXPORT, 0);
  writeU64(b, size, 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function encodeInfoName(name: string): Buffer {
  return encodeInfoText(NbdInfo.NAME, name);
}

export function encodeInfoDescription(description: string): Buffer {
  return encodeInfoText(NbdInfo.DESCRIPTION, description);
}

function encodeInfoText(type: number, text: string): Buffer {
  const t = Buffer.from(text, 'utf8');
  const b = Buffer.alloc(2 + t.length);
  b.writeUInt16BE(type, 0);
  t.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NbdInfo.BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

export type NbdInfoItem =
  | { type: 0; size: number; flags: number }
  | { type: 1; name: string }
  | { type: 2; description: string }
  | { type: 3; min: number; preferred: number; max: number }
  | { type: number; raw: Buffer };

export function decodeInfo(data: Buffer): NbdInfoItem {
  if (data.length < 2) throw protocolError('NBD_REP_INFO shorter than 2 bytes');
  const type = data.readUInt16BE(0);
  if (type === NbdInfo.EXPORT && data.length === 12) return { type, size: readU64(data, 2), flags: data.readUInt16BE(10) };
  if (type === NbdInfo.NAME) return { type, name: data.toString('utf8', 2) };
  if (type === NbdInfo.DESCRIPTION) return { type, description: data.toString('utf8', 2) };
  if (type === NbdInfo.BLOCK_SIZE && data.length === 14) {
    return { type, min: data.readUInt32BE(2), preferred: data.readUInt32BE(6), max: data.readUInt32BE(10) };
  }
  if (type <= NbdInfo.BLOCK_SIZE) throw protocolError(`NBD_REP_INFO type ${type} has a bad length ${data.length}`);
  return { type, raw: data.subarray(2) };
}

/*
 NBD_REP_SERVER data (one per export, answering NBD_OPT_LIST):
  0  u32 name length N
  4  N bytes name, then the description (UTF-8) to the end of the reply
*/
export function encodeServerReply(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function decodeServerReply(data: Buffer): { name: string; description: string } {
  if (data.length < 4 || data.readUInt32BE(0) > data.length - 4) throw protocolError('malformed NBD_REP_SERVER');
  const n = data.readUInt32BE(0);
  return { name: data.toString('utf8', 4, 4 + n), description: data.toString('utf8', 4 + n) };
}

/*
 Reply to NBD_OPT_EXPORT_NAME (no reply header):
  0  u64 export size
  8  u16 transmission flags
 10  124 zero bytes, left out when both sides set NO_ZEROES
*/
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(b, size, 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

// ---- transmission ----

/*
 Request (client → server), 28 bytes, then `length` payload bytes for NBD_CMD_WRITE only:
  0  u32 NBD_REQUEST_MAGIC
  4  u16 command flags (NbdCmdFlag)
  6  u16 command type (NbdCmd)
  8  u64 cookie (opaque, echoed in the reply)
 16  u64 offset
 24  u32 length
*/
export const REQUEST_HEADER_BYTES = 28;

export interface NbdRequest {
  flags: number;
  type: number;
  /** 8 bytes. */
  cookie: Buffer;
  offset: number;
  length: number;
}

export function encodeRequestHeader(r: NbdRequest): Buffer {
  checkCookie(r.cookie);
  const b = Buffer.alloc(REQUEST_HEADER_BYTES);
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  r.cookie.copy(b, 8);
  writeU64(b, r.offset, 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

/** Throws VRG_NBD_PROTOCOL on a bad magic. The cookie is a copy (never pins `buf`). */
export function decodeRequestHeader(buf: Buffer, at = 0): NbdRequest {
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_REQUEST_MAGIC) {
    throw protocolError(`NBD request with bad magic 0x${magic.toString(16)}`, { magic });
  }
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookie: Buffer.from(buf.subarray(at + 8, at + 16)),
    offset: readU64(buf, at + 16),
    length: buf.readUInt32BE(at + 24),
  };
}

/*
 Simple reply (server → client), 16 bytes, then the data of a successful NBD_CMD_READ:
  0  u32 NBD_SIMPLE_REPLY_MAGIC
  4  u32 error (NbdErrno, 0 = success)
  8  u64 cookie
*/
export const SIMPLE_REPLY_HEADER_BYTES = 16;

export function encodeSimpleReplyHeader(errno: number, cookie: Buffer): Buffer {
  checkCookie(cookie);
  const b = Buffer.alloc(SIMPLE_REPLY_HEADER_BYTES);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(errno, 4);
  cookie.copy(b, 8);
  return b;
}

/** Throws VRG_NBD_PROTOCOL on a bad magic. */
export function decodeSimpleReplyHeader(buf: Buffer, at = 0): { error: number; cookie: Buffer } {
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_SIMPLE_REPLY_MAGIC) throw protocolError(`NBD simple reply with bad magic 0x${magic.toString(16)}`);
  return { error: buf.readUInt32BE(at + 4), cookie: Buffer.from(buf.subarray(at + 8, at + 16)) };
}

/*
 Structured reply chunk (server → client), 20-byte header then `length` payload bytes:
  0  u32 NBD_STRUCTURED_REPLY_MAGIC
  4  u16 flags (NbdReplyFlag.DONE on the last chunk of a reply)
  6  u16 type (NbdReplyType)
  8  u64 cookie
 16  u32 payload length
 Payloads:
  OFFSET_DATA   u64 offset, data (length - 8 bytes)
  OFFSET_HOLE   u64 offset, u32 hole size
  ERROR         u32 error, u16 message length M, M bytes message
  ERROR_OFFSET  u32 error, u16 message length M, M bytes message, u64 offset
*/
export const STRUCTURED_REPLY_HEADER_BYTES = 20;

export interface NbdStructuredReplyHeader { flags: number; type: number; cookie: Buffer; length: number }

export function encodeStructuredReplyHeader(h: NbdStructuredReplyHeader): Buffer {
  checkCookie(h.cookie);
  const b = Buffer.alloc(STRUCTURED_REPLY_HEADER_BYTES);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(h.flags, 4);
  b.writeUInt16BE(h.type, 6);
  h.cookie.copy(b, 8);
  b.writeUInt32BE(h.length, 16);
  return b;
}

/** Throws VRG_NBD_PROTOCOL on a bad magic. */
export function decodeStructuredReplyHeader(buf: Buffer, at = 0): NbdStructuredReplyHeader {
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_STRUCTURED_REPLY_MAGIC) throw protocolError(`NBD structured reply with bad magic 0x${magic.toString(16)}`);
  return {
    flags: buf.readUInt16BE(at + 4), type: buf.readUInt16BE(at + 6),
    cookie: Buffer.from(buf.subarray(at + 8, at + 16)), length: buf.readUInt32BE(at + 16),
  };
}

/** Header plus the offset of an OFFSET_DATA chunk (28 bytes); the `dataLength` data bytes follow it. */
export function encodeOffsetDataChunkHead(cookie: Buffer, offset: number, dataLength: number, flags: number): Buffer {
  const b = Buffer.alloc(STRUCTURED_REPLY_HEADER_BYTES + 8);
  encodeStructuredReplyHeader({ flags, type: NbdReplyType.OFFSET_DATA, cookie, length: 8 + dataLength }).copy(b, 0);
  writeU64(b, offset, STRUCTURED_REPLY_HEADER_BYTES);
  return b;
}

export function encodeOffsetHoleChunk(cookie: Buffer, offset: number, size: number, flags: number): Buffer {
  const b = Buffer.alloc(STRUCTURED_REPLY_HEADER_BYTES + 12);
  encodeStructuredReplyHeader({ flags, type: NbdReplyType.OFFSET_HOLE, cookie, length: 12 }).copy(b, 0);
  writeU64(b, offset, STRUCTURED_REPLY_HEADER_BYTES);
  b.writeUInt32BE(size, STRUCTURED_REPLY_HEADER_BYTES + 8);
  return b;
}

/** A whole ERROR chunk (or ERROR_OFFSET when `offset` is given). */
export function encodeErrorChunk(cookie: Buffer, errno: number, message: string, flags: number, offset?: number): Buffer {
  const m = Buffer.from(message, 'utf8').subarray(0, 4096);
  const payloadLength = 6 + m.length + (offset === undefined ? 0 : 8);
  const b = Buffer.alloc(STRUCTURED_REPLY_HEADER_BYTES + payloadLength);
  const type = offset === undefined ? NbdReplyType.ERROR : NbdReplyType.ERROR_OFFSET;
  encodeStructuredReplyHeader({ flags, type, cookie, length: payloadLength }).copy(b, 0);
  b.writeUInt32BE(errno, 20);
  b.writeUInt16BE(m.length, 24);
  m.copy(b, 26);
  if (offset !== undefined) writeU64(b, offset, 26 + m.length);
  return b;
}

export type NbdChunkPayload =
  | { type: 0 }
  | { type: 1; offset: number; data: Buffer }
  | { type: 2; offset: number; size: number }
  | { type: 32769 | 32770; error: number; message: string; offset?: number }
  | { type: number; raw: Buffer };

/** Decodes the payload of one chunk (`payload` is exactly header.length bytes). */
export function decodeChunkPayload(type: number, payload: Buffer): NbdChunkPayload {
  const bad = (): Error => protocolError(`structured reply chunk type ${type} with bad length ${payload.length}`);
  switch (type) {
    case NbdReplyType.NONE:
      if (payload.length !== 0) throw bad();
      return { type };
    case NbdReplyType.OFFSET_DATA:
      if (payload.length < 8) throw bad();
      return { type, offset: readU64(payload, 0), data: payload.subarray(8) };
    case NbdReplyType.OFFSET_HOLE:
      if (payload.length !== 12) throw bad();
      return { type, offset: readU64(payload, 0), size: payload.readUInt32BE(8) };
    case NbdReplyType.ERROR:
    case NbdReplyType.ERROR_OFFSET: {
      if (payload.length < 6) throw bad();
      const m = payload.readUInt16BE(4);
      const tail = type === NbdReplyType.ERROR_OFFSET ? 8 : 0;
      if (payload.length !== 6 + m + tail) throw bad();
      const message = payload.toString('utf8', 6, 6 + m);
      const error = payload.readUInt32BE(0);
      return tail ? { type, error, message, offset: readU64(payload, 6 + m) } : { type, error, message };
    }
    default:
      return { type, raw: payload };
  }
}

// ---- incremental parsing (server side) ----

/** A FIFO of received chunks; takes exact byte counts without copying when one chunk holds them. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes of chunks[0] already consumed
  private size = 0;

  get length(): number {
    return this.size;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  /**
   * Exactly `n` bytes (n ≤ length); a view into a received chunk when possible, else a copy: into
   * `alloc(n)`'s buffer when it gives one (pooled memory), else a new buffer.
   */
  take(n: number, alloc?: (n: number) => Buffer | null): Buffer {
    assert(n <= this.size, 'take within the buffered bytes');
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return Buffer.alloc(0);
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.consume(n);
      return out;
    }
    const out = alloc?.(n) ?? Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length - this.head, n - done);
      c.copy(out, done, this.head, this.head + k);
      done += k;
      this.consume(k);
    }
    return out;
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    const k = Math.min(n, this.size);
    let left = k;
    while (left > 0) {
      const c = this.chunks[0]!;
      const step = Math.min(c.length - this.head, left);
      this.consume(step);
      left -= step;
    }
    return k;
  }

  /** Everything still buffered, emptying the queue (to hand over to another parser). */
  drain(): Buffer[] {
    const out = this.chunks.map((c, i) => (i === 0 ? c.subarray(this.head) : c));
    this.chunks = [];
    this.head = 0;
    this.size = 0;
    return out;
  }

  private consume(n: number): void {
    this.head += n;
    this.size -= n;
    const c = this.chunks[0]!;
    if (this.head === c.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}

export type NbdHandshakeEvent =
  | { kind: 'client-flags'; flags: number }
  | { kind: 'option'; option: number; data: Buffer }
  /** The option's data exceeded the limit and was read and dropped (answer NBD_REP_ERR_TOO_BIG). */
  | { kind: 'option-too-big'; option: number; length: number };

/**
 * Server side of the handshake after the greeting: the client flags, then option requests. Pull-based:
 * push() buffers, next() returns one event or null when more bytes are needed. Throws VRG_NBD_PROTOCOL on a
 * bad option magic. Once the server enters transmission, drain() hands the rest to an NbdRequestParser.
 */
export class NbdHandshakeParser {
  private readonly q = new ByteQueue();
  private gotFlags = false;
  private pending: { option: number; length: number } | null = null;
  private discarding = 0;

  constructor(private readonly optionBytesMax = 64 * 1024) {}

  push(chunk: Buffer): void {
    this.q.push(chunk);
  }

  next(): NbdHandshakeEvent | null {
    if (!this.gotFlags) {
      if (this.q.length < 4) return null;
      this.gotFlags = true;
      return { kind: 'client-flags', flags: this.q.take(4).readUInt32BE(0) };
    }
    if (!this.pending) {
      if (this.q.length < OPTION_REQUEST_HEADER_BYTES) return null;
      this.pending = decodeOptionRequestHeader(this.q.take(OPTION_REQUEST_HEADER_BYTES));
      this.discarding = this.pending.length > this.optionBytesMax ? this.pending.length : 0;
    }
    const p = this.pending;
    if (this.discarding > 0) {
      this.discarding -= this.q.skip(this.discarding);
      if (this.discarding > 0) return null;
      this.pending = null;
      return { kind: 'option-too-big', option: p.option, length: p.length };
    }
    if (this.q.length < p.length) return null;
    this.pending = null;
    return { kind: 'option', option: p.option, data: Buffer.from(this.q.take(p.length)) };
  }

  drain(): Buffer[] {
    return this.q.drain();
  }
}

export interface NbdRequestEvent {
  request: NbdRequest;
  /** WRITE only: exactly request.length bytes; null for other commands and for a discarded payload. */
  payload: Buffer | null;
  /** A WRITE whose length exceeded payloadBytesMax: its payload was read and dropped (answer EINVAL). */
  payloadDiscarded: boolean;
}


/**
 * Server side of the transmission phase: requests, each WRITE followed by its payload. Pull-based like
 * NbdHandshakeParser, so the server takes the next request only when it has room for it (backpressure).
 * Any split of the byte stream yields the same events. Throws VRG_NBD_PROTOCOL on a bad request magic
 * (the stream cannot be resynchronised: drop the client). Payloads may be views into pushed chunks.
 */
export class NbdRequestParser {
  private readonly q = new ByteQueue();
  private pending: NbdRequest | null = null;
  private discarding = 0;

  /**
   * `memory`: where WRITE payloads that span received chunks are assembled; the request's owner releases the
   * payload once the request is answered. A payload within one chunk stays a view of it (nothing copied).
   */
  constructor(private readonly payloadBytesMax: number, private readonly memory: BlockMemory | null = null) {}

  push(chunk: Buffer): void {
    this.q.push(chunk);
  }

  /** Bytes received but not yet returned as events. */
  get bufferedBytes(): number {
    return this.q.length;
  }

  /** True while a request's header or payload is partly received. */
  get midRequest(): boolean {
    return this.pending !== null || this.q.length > 0;
  }

  next(): NbdRequestEvent | null {
    if (!this.pending) {
      if (this.q.length < REQUEST_HEADER_BYTES) return null;
      const request = decodeRequestHeader(this.q.take(REQUEST_HEADER_BYTES));
      if (request.type !== NbdCmd.WRITE) return { request, payload: null, payloadDiscarded: false };
      this.pending = request;
      this.discarding = request.length > this.payloadBytesMax ? request.length : 0;
    }
    const request = this.pending;
    if (this.discarding > 0) {
      this.discarding -= this.q.skip(this.discarding);
      if (this.discarding > 0) return null;
      this.pending = null;
      return { request, payload: null, payloadDiscarded: true };
    }
    if (this.q.length < request.length) return null;
    this.pending = null;
    const memory = this.memory;
    const payload = this.q.take(request.length, memory ? (n) => memory.tryAlloc(n) : undefined);
    return { request, payload, payloadDiscarded: false };
  }
}
