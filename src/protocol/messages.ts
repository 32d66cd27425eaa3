import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { ErrorCode, VrgError, vrgError } from '../core/errors.js';

// Typed codecs for the link messages of proto/link.proto (the wire layout is protobuf, proto3).
// 64-bit fields decode as JS numbers (toObject with longs: Number) and must be safe integers. protobufjs is
// shared with etcd3's gRPC stack, whose int64 lease ids need Long: it is configured per call, never globally.
// Decoding garbage throws VRG_FRAME_MALFORMED; encoding an out-of-range value throws VRG_INVALID_ARGUMENT.


function findProto(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'proto', 'link.proto');
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) throw new Error('proto/link.proto not found above ' + fileURLToPath(import.meta.url));
    dir = parent;
  }
}

const root = protobuf.loadSync(findProto());
const lookup = (name: string): protobuf.Type => root.lookupType(`vrg.link.${name}`);

export interface Hello { protocolVersion: number; gatewayId: string; nonce: Buffer; role: string }
export interface Auth { transcriptHash: Buffer }
/** generation and role: absent (0, '') from a peer older than roles, read as 1 and 'target'. */
export interface ResumeVm {
  vmUuid: string; appliedSeq: number; generation?: number; role?: string; splitBrain?: boolean;
  /** Cluster mode: the ownership (fencing token) whose stream DR holds; 0 or absent: a single pair. */
  fencingToken?: number;
}
export interface Resume { vms: ResumeVm[] }
export interface WriteRecord {
  volumeIndex: number; offset: number; length: number; kind: number; codec: number; storedLength: number;
}
export interface WriteBatch {
  vmUuid: string; firstSeq: number; volumeUuids: string[]; records: WriteRecord[]; producedAtMs: number;
  /** The source's generation of the VM (0 or absent: 1). */
  generation?: number;
  /** Cluster mode: the production owner's fencing token (0 or absent: a single pair, no fencing). */
  fencingToken?: number;
}
export interface Ack { vmUuid: string; durableSeq: number }
export interface Heartbeat { id: number; sentAtUs: number }
export interface LinkError { code: string; message: string }
export interface VmState { vmUuid: string; state: string; mode: string; pausedManual: boolean; syncDegraded: boolean; atMs: number }
export interface CheckRequest { vmUuid: string; checkId: number; volumeIndex: number; volUuid: string; start: number; end: number; regionBytes: number }
export interface CheckDigests { vmUuid: string; checkId: number; digests: Buffer; error: string }
export interface FailoverRequest { vmUuid: string; requestId: number }
export interface FailoverReady { vmUuid: string; requestId: number; lastSeq: number; error: string }
export interface Rekey { rekeyId: number; nonce: Buffer; generation: number }
export interface RekeyAck { rekeyId: number; nonce: Buffer; error: string }

const UINT32_MAX = 0xffff_ffff;

/** Returns a problem with one message's integer fields, or null. */
type IntegerCheck = (msg: Record<string, unknown>, path: string) => string | null;

const checkers = new Map<protobuf.Type, IntegerCheck>();

/**
 * Checks every integer field of `msg` (recursively) against its protobuf type; returns a problem or null. The
 * per-type check is built once from the type's fields: a batch holds up to 1024 records, each checked on encode
 * and decode, and walking the reflection per record cost more than the codec around it.
 */
function checkIntegers(type: protobuf.Type, msg: Record<string, unknown>, path: string): string | null {
  let check = checkers.get(type);
  if (!check) {
    check = compileCheck(type);
    checkers.set(type, check);
  }
  return check(msg, path);
}

function compileCheck(type: protobuf.Type): IntegerCheck {
  const fields = type.fieldsArray.flatMap((field) => {
    const sub = field.resolvedType instanceof protobuf.Type ? field.resolvedType : null;
    const max = field.type === 'uint64' ? Number.MAX_SAFE_INTEGER : field.type === 'uint32' ? UINT32_MAX : null;
    return sub || max !== null ? [{ name: field.name, repeated: field.repeated, sub, max }] : [];
  });
  return (msg, path) => {
    for (const f of fields) {
      const value = msg[f.name];
      if (value === undefined || value === null) continue;
      if (f.repeated && !Array.isArray(value)) return `${path}${f.name}: not an array`;
      const values = f.repeated ? (value as unknown[]) : [value];
      for (const v of values) {
        if (f.sub) {
          const problem = checkIntegers(f.sub, v as Record<string, unknown>, `${path}${f.name}.`);
          if (problem) return problem;
        } else if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > f.max!) {
          return `${path}${f.name}: ${String(v)} is not a ${f.max === UINT32_MAX ? 'uint32' : 'uint64'} safe integer`;
        }
      }
    }
    return null;
  };
}

function makeCodec<T extends object>(name: string): { encode(obj: T): Uint8Array; decode(buf: Uint8Array): T } {
  const type = lookup(name);
  return {
    encode(obj: T): Uint8Array {
      const problem = checkIntegers(type, obj as Record<string, unknown>, `${name}.`);
      if (problem) throw vrgError(ErrorCode.INVALID_ARGUMENT, `cannot encode ${problem}`);
      try {
        return type.encode(obj as Record<string, unknown>).finish();
      } catch (err) {
        throw vrgError(ErrorCode.INVALID_ARGUMENT, `cannot encode ${name}: ${(err as Error).message}`, undefined, err);
      }
    },
    decode(buf: Uint8Array): T {
      let obj: Record<string, unknown>;
      try {
        obj = type.toObject(type.decode(buf), { defaults: true, arrays: true, longs: Number });
      } catch (err) {
        if (err instanceof VrgError) throw err;
        throw vrgError(ErrorCode.FRAME_MALFORMED, `malformed ${name}: ${(err as Error).message}`, undefined, err);
      }
      const problem = checkIntegers(type, obj, `${name}.`);
      if (problem) throw vrgError(ErrorCode.FRAME_MALFORMED, `malformed ${problem}`);
      return obj as T;
    },
  };
}

const hello = makeCodec<Hello>('Hello');
const auth = makeCodec<Auth>('Auth');
const resume = makeCodec<Resume>('Resume');
const writeBatch = makeCodec<WriteBatch>('WriteBatch');
const writeRecord = makeCodec<WriteRecord>('WriteRecord');
const ack = makeCodec<Ack>('Ack');
const heartbeat = makeCodec<Heartbeat>('Heartbeat');
const linkError = makeCodec<LinkError>('LinkError');
const vmState = makeCodec<VmState>('VmState');
const checkRequest = makeCodec<CheckRequest>('CheckRequest');
const checkDigests = makeCodec<CheckDigests>('CheckDigests');
const failoverRequest = makeCodec<FailoverRequest>('FailoverRequest');
const failoverReady = makeCodec<FailoverReady>('FailoverReady');
const rekey = makeCodec<Rekey>('Rekey');
const rekeyAck = makeCodec<RekeyAck>('RekeyAck');

export const encodeHello = (m: Hello): Uint8Array => hello.encode(m);
export const decodeHello = (b: Uint8Array): Hello => hello.decode(b);
export const encodeAuth = (m: Auth): Uint8Array => auth.encode(m);
export const decodeAuth = (b: Uint8Array): Auth => auth.decode(b);
export const encodeResume = (m: Resume): Uint8Array => resume.encode(m);
export const decodeResume = (b: Uint8Array): Resume => resume.decode(b);
export const encodeWriteBatch = (m: WriteBatch): Uint8Array => writeBatch.encode(m);
export const decodeWriteBatch = (b: Uint8Array): WriteBatch => writeBatch.decode(b);

const writeBatchType = lookup('WriteBatch');

/**
 * The kind and length of each record of an encoded WriteBatch, decoded without the rest of the checks (no
 * object conversion, no range checks: lengths past 2^53 come out inexact): only to size a buffer before the
 * frame is authenticated and decoded in full. Throws on bytes that are not a WriteBatch.
 */
export function peekWriteBatchRecords(b: Uint8Array): Array<{ kind: number; length: number }> {
  const m = writeBatchType.decode(b) as unknown as { records?: Array<{ kind?: number; length?: number | { toNumber(): number } }> };
  return (m.records ?? []).map((r) => ({ kind: r.kind ?? 0, length: typeof r.length === 'object' && r.length !== null ? r.length.toNumber() : r.length ?? 0 }));
}
export const encodeWriteRecord = (m: WriteRecord): Uint8Array => writeRecord.encode(m);
export const decodeWriteRecord = (b: Uint8Array): WriteRecord => writeRecord.decode(b);
export const encodeAck = (m: Ack): Uint8Array => ack.encode(m);
export const decodeAck = (b: Uint8Array): Ack => ack.decode(b);
export const encodeHeartbeat = (m: Heartbeat): Uint8Array => heartbeat.encode(m);
export const decodeHeartbeat = (b: Uint8Array): Heartbeat => heartbeat.decode(b);
export const encodeLinkError = (m: LinkError): Uint8Array => linkError.encode(m);
export const decodeLinkError = (b: Uint8Array): LinkError => linkError.decode(b);
export const encodeVmState = (m: VmState): Uint8Array => vmState.encode(m);
export const decodeVmState = (b: Uint8Array): VmState => vmState.decode(b);
export const encodeCheckRequest = (m: CheckRequest): Uint8Array => checkRequest.encode(m);
export const decodeCheckRequest = (b: Uint8Array): CheckRequest => checkRequest.decode(b);
export const encodeCheckDigests = (m: CheckDigests): Uint8Array => checkDigests.encode(m);
export const decodeCheckDigests = (b: Uint8Array): CheckDigests => checkDigests.decode(b);
export const encodeFailoverRequest = (m: FailoverRequest): Uint8Array => failoverRequest.encode(m);
export const decodeFailoverRequest = (b: Uint8Array): FailoverRequest => failoverRequest.decode(b);
export const encodeFailoverReady = (m: FailoverReady): Uint8Array => failoverReady.encode(m);
export const encodeRekey = (m: Rekey): Uint8Array => rekey.encode(m);
export const decodeRekey = (b: Uint8Array): Rekey => rekey.decode(b);
export const encodeRekeyAck = (m: RekeyAck): Uint8Array => rekeyAck.encode(m);
export const decodeRekeyAck = (b: Uint8Array): RekeyAck => rekeyAck.decode(b);
export const decodeFailoverReady = (b: Uint8Array): FailoverReady => failoverReady.decode(b);
