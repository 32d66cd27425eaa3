import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import t from 'tap';
import { ErrorCode, isVrgError } from '../src/core/errors.js';
import { FrameDecoder, encodeFrame, frameSeqMax, openFrame, type DirectionKeys, type RawFrame } from '../src/protocol/frame.js';
import * as m from '../src/protocol/messages.js';
import { cuts, fuzzBytes, fuzzParams, mutated, plain, split, typed } from './lib/fuzz.js';

// Property-based tests of the link's frame decoder and message codecs: any byte stream decodes to frames or
// fails with VRG_FRAME_MALFORMED / VRG_FRAME_TOO_LARGE, the same way for every split of the stream; a
// sealed frame that was changed never opens; every message round-trips and garbage fails typed.

const FRAME_MAX = 8192;
const DECODER_CODES = [ErrorCode.FRAME_MALFORMED, ErrorCode.FRAME_TOO_LARGE];
const keys: DirectionKeys = { key: Buffer.alloc(16, 0x42), salt: Buffer.from([1, 2, 3, 4]) };

const frameSpec = fc.record({
  type: fc.integer({ min: 0, max: 255 }),
  seq: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: frameSeqMax })),
  header: fc.uint8Array({ maxLength: 64 }),
  payload: fc.uint8Array({ maxLength: 512, size: 'medium' }),
  seal: fc.constantFrom('none', 'sealed', 'encrypted'),
});
type FrameSpec = typeof frameSpec extends fc.Arbitrary<infer T> ? T : never;

function encode(f: FrameSpec, seq = f.seq): Buffer {
  const seal = f.seal === 'none' ? undefined : { keys, encrypt: f.seal === 'encrypted' };
  return encodeFrame({ type: f.type, seq, header: f.header, payload: f.payload }, seal);
}

/** A stream of 1..3 valid frames back to back. */
const validStream = fc.array(frameSpec, { minLength: 1, maxLength: 3 }).map((fs) => Buffer.concat(fs.map((f) => encode(f))));

type Outcome = { frames: unknown[]; error: string | null };
const summary = (f: RawFrame): unknown => [f.type, f.flags, f.seq, f.bytes.toString('hex')];

function decodeChunks(chunks: Buffer[]): Outcome {
  const d = new FrameDecoder(FRAME_MAX);
  const frames: unknown[] = [];
  for (const c of chunks) {
    const r = typed(() => d.push(c), DECODER_CODES);
    if (!r.ok) {
      // A failed decoder stays failed, with the same typed error.
      const again = typed(() => d.push(Buffer.alloc(1)), DECODER_CODES);
      if (again.ok || again.code !== r.code) throw new Error('decoder did not stay failed');
      return { frames, error: r.code };
    }
    frames.push(...r.value.map(summary));
  }
  return { frames, error: null };
}

t.test('FrameDecoder: any stream gives frames or a typed error, the same for every split', async (t) => {
  fc.assert(fc.property(fuzzBytes(validStream, 512), cuts, (bytes, at) => {
    const whole = decodeChunks([bytes]);
    const pieces = decodeChunks(split(bytes, at));
    const bytewise = decodeChunks([...bytes].map((x) => Buffer.from([x])));
    // A push that fails returns none of the frames it completed before the bad one (the link drops the
    // connection then), so under an error the frames seen are a prefix of those a byte-wise feed sees.
    const prefixOf = (a: Outcome, b: Outcome): boolean => isDeepStrictEqual(a.frames, b.frames.slice(0, a.frames.length));
    if (whole.error === null) return isDeepStrictEqual(whole, pieces) && isDeepStrictEqual(whole, bytewise);
    return whole.error === pieces.error && whole.error === bytewise.error && prefixOf(whole, bytewise) && prefixOf(pieces, bytewise);
  }), fuzzParams(3000));
  t.pass('3000 streams');
});

t.test('frames round-trip through encodeFrame, the decoder and openFrame', async (t) => {
  fc.assert(fc.property(frameSpec, cuts, (f, at) => {
    const bytes = encode(f);
    const d = new FrameDecoder(FRAME_MAX);
    const frames = split(bytes, at).flatMap((c) => d.push(c));
    if (frames.length !== 1 || d.bufferedBytes !== 0) return false;
    const raw = frames[0]!;
    if (raw.type !== f.type || raw.seq !== f.seq) return false;
    const opened = f.seal === 'none' ? { header: raw.header, payload: raw.payload } : openFrame(raw, keys, f.seq);
    return Buffer.from(f.header).equals(opened.header) && Buffer.from(f.payload).equals(opened.payload);
  }), fuzzParams(800));
  t.pass('800 frames');
});

t.test('a changed sealed frame never opens: typed refusal, or the original bytes', async (t) => {
  const sealed = frameSpec.filter((f) => f.seal !== 'none').map((f) => ({ ...f, seq: 0 }));
  fc.assert(fc.property(sealed.chain((f) => fc.tuple(fc.constant(f), mutated(fc.constant(encode(f))))), ([f, bad]) => {
    const orig = encode(f);
    const out = decodeChunks([bad]);
    const d = new FrameDecoder(FRAME_MAX);
    const r = typed(() => d.push(bad), DECODER_CODES);
    if (!r.ok) return out.error === r.code;
    for (const [i, raw] of r.value.entries()) {
      const o = typed(() => openFrame(raw, keys, i), [ErrorCode.FRAME_AUTH_FAILED, ErrorCode.FRAME_SEQUENCE]);
      if (o.ok && !raw.bytes.equals(orig)) return false; // a forged or altered frame was accepted
    }
    return true;
  }), fuzzParams(2000));
  t.pass('2000 mutated sealed frames');
});

// ---- message codecs ----

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u64 = fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.maxSafeNat());
const str = fc.string({ unit: 'binary', maxLength: 40 });
const bytes = fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b));

const record = fc.record({ volumeIndex: u32, offset: u64, length: u32, kind: u32, codec: u32, storedLength: u32 });
const messages = {
  Hello: [m.encodeHello, m.decodeHello, fc.record({ protocolVersion: u32, gatewayId: str, nonce: bytes, role: str })],
  Auth: [m.encodeAuth, m.decodeAuth, fc.record({ transcriptHash: bytes })],
  Resume: [m.encodeResume, m.decodeResume, fc.record({
    vms: fc.array(fc.record({ vmUuid: str, appliedSeq: u64, generation: u64, role: str, splitBrain: fc.boolean(), fencingToken: u64 }), { maxLength: 4 }),
  })],
  WriteBatch: [m.encodeWriteBatch, m.decodeWriteBatch, fc.record({
    vmUuid: str, firstSeq: u64, volumeUuids: fc.array(str, { maxLength: 4 }), records: fc.array(record, { maxLength: 4 }),
    producedAtMs: u64, generation: u64, fencingToken: u64,
  })],
  WriteRecord: [m.encodeWriteRecord, m.decodeWriteRecord, record],
  Ack: [m.encodeAck, m.decodeAck, fc.record({ vmUuid: str, durableSeq: u64 })],
  Heartbeat: [m.encodeHeartbeat, m.decodeHeartbeat, fc.record({ id: u64, sentAtUs: u64 })],
  LinkError: [m.encodeLinkError, m.decodeLinkError, fc.record({ code: str, message: str })],
  VmState: [m.encodeVmState, m.decodeVmState, fc.record({
    vmUuid: str, state: str, mode: str, pausedManual: fc.boolean(), syncDegraded: fc.boolean(), atMs: u64,
  })],
  CheckRequest: [m.encodeCheckRequest, m.decodeCheckRequest, fc.record({
    vmUuid: str, checkId: u64, volumeIndex: u32, volUuid: str, start: u64, end: u64, regionBytes: u32,
  })],
  CheckDigests: [m.encodeCheckDigests, m.decodeCheckDigests, fc.record({ vmUuid: str, checkId: u64, digests: bytes, error: str })],
  FailoverRequest: [m.encodeFailoverRequest, m.decodeFailoverRequest, fc.record({ vmUuid: str, requestId: u64 })],
  FailoverReady: [m.encodeFailoverReady, m.decodeFailoverReady, fc.record({ vmUuid: str, requestId: u64, lastSeq: u64, error: str })],
  Rekey: [m.encodeRekey, m.decodeRekey, fc.record({ rekeyId: u64, nonce: bytes, generation: u32 })],
  RekeyAck: [m.encodeRekeyAck, m.decodeRekeyAck, fc.record({ rekeyId: u64, nonce: bytes, error: str })],
} as unknown as Record<string, [(x: unknown) => Uint8Array, (b: Uint8Array) => unknown, fc.Arbitrary<unknown>]>;

for (const [name, [enc, dec, arb]] of Object.entries(messages)) {
  t.test(`${name}: decode(encode(x)) = x; mutated and random bytes decode or fail VRG_FRAME_MALFORMED`, async (t) => {
    fc.assert(fc.property(arb, (x) => isDeepStrictEqual(plain(dec(enc(x))), plain(x))), fuzzParams(150));
    fc.assert(fc.property(fuzzBytes(arb.map(enc), 128), (b) => {
      const r = typed(() => dec(b), [ErrorCode.FRAME_MALFORMED]);
      // What decodes must encode again (its integers are in range) and decode to the same message.
      return !r.ok || isDeepStrictEqual(plain(dec(enc(r.value))), plain(r.value));
    }), fuzzParams(250));
    t.pass('150 round-trips, 250 fuzzed decodes');
  });
}

t.test('encoders refuse out-of-range integers with VRG_INVALID_ARGUMENT only', async (t) => {
  const badInt = fc.oneof(fc.constant(-1), fc.constant(2 ** 64), fc.constant(1.5), fc.constant(Number.NaN), fc.constant('7'));
  fc.assert(fc.property(badInt, (v) => {
    for (const x of [{ vmUuid: 'v', durableSeq: v }]) {
      try {
        m.encodeAck(x as unknown as m.Ack);
        return false;
      } catch (err) {
        if (!isVrgError(err, ErrorCode.INVALID_ARGUMENT)) throw err;
      }
    }
    return true;
  }), fuzzParams(20));
  t.pass('out-of-range values refused');
});
