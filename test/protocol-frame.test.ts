import { createCipheriv, randomBytes } from 'node:crypto';
import t from 'tap';
import { ErrorCode } from '../src/core/errors.js';
import { limits } from '../src/core/limits.js';
import { seededRandom } from '../src/core/random.js';
import {
  encodeFrame, FRAME_PREFIX_BYTES, FrameDecoder, FrameFlags, FrameType, frameSeqMax, openFrame, parseFrame, prefixCheck, type DirectionKeys, type RawFrame,
} from '../src/protocol/frame.js';
import { deriveSessionKeys } from '../src/protocol/keys.js';
import {
  decodeHeartbeat, decodeWriteBatch, encodeHeartbeat, encodeWriteBatch, type WriteBatch,
} from '../src/protocol/messages.js';
import { code } from './lib/error-code.js';

/** A prefix edited by a test, with its check made right again, so the check under test is the next one. */
function resealed(b: Buffer): Buffer {
  b.writeUInt16BE(prefixCheck(b), 14);
  return b;
}

const keys: DirectionKeys = { key: randomBytes(16), salt: randomBytes(4) };


function batch(n: number): WriteBatch {
  return {
    vmUuid: 'vm-1', firstSeq: 2 ** 40, volumeUuids: ['vol-a', 'vol-b'], producedAtMs: 1_700_000_000_000, generation: 2, fencingToken: 2 ** 33,
    records: Array.from({ length: n }, (_, i) => ({
      volumeIndex: i % 2, offset: i * 4096 + 2 ** 45, length: 4096, kind: 1, codec: i % 2, storedLength: 100,
    })),
  };
}

t.test('GCM accepts the AAD in several setAAD calls', async (t) => {
  const key = randomBytes(16);
  const iv = randomBytes(12);
  const [a, b] = [randomBytes(23), randomBytes(1000)];
  const split = createCipheriv('aes-128-gcm', key, iv, { authTagLength: 16 });
  split.setAAD(a);
  split.setAAD(b);
  split.final();
  const whole = createCipheriv('aes-128-gcm', key, iv, { authTagLength: 16 });
  whole.setAAD(Buffer.concat([a, b]));
  whole.final();
  t.same(split.getAuthTag(), whole.getAuthTag());
});

t.test('sealed round trips, encrypted and plain', async (t) => {
  const header = encodeWriteBatch(batch(3));
  const payload = randomBytes(1024 * 1024 + 17);
  for (const encrypt of [true, false]) {
    const bytes = encodeFrame({ type: FrameType.WRITE_BATCH, seq: 7, header, payload }, { keys, encrypt });
    t.equal(bytes.buffer.byteLength, bytes.length, 'output owns its ArrayBuffer');
    t.equal(bytes.readUInt32BE(0), bytes.length - 4);
    const f = parseFrame(bytes);
    t.equal(f.flags, FrameFlags.SEALED | (encrypt ? FrameFlags.ENCRYPTED : 0));
    t.equal(f.seq, 7);
    t.equal(f.tag?.length, 16);
    t.equal(f.payload.equals(payload), !encrypt, encrypt ? 'payload is ciphertext' : 'payload is plain');
    const opened = openFrame(f, keys, 7);
    t.ok(opened.payload.equals(payload), `payload round trip (encrypt=${encrypt})`);
    t.same(decodeWriteBatch(opened.header), batch(3));
  }
});

t.test('unsealed frames and empty payloads', async (t) => {
  const header = encodeHeartbeat({ id: 1, sentAtUs: 12345 });
  const bytes = encodeFrame({ type: FrameType.HELLO, seq: 0, header });
  const f = parseFrame(bytes);
  t.equal(f.flags, 0);
  t.equal(f.tag, null);
  t.equal(f.payload.length, 0);
  t.same(decodeHeartbeat(f.header), { id: 1, sentAtUs: 12345 });
  t.equal(code(() => openFrame(f, keys, 0)), ErrorCode.FRAME_AUTH_FAILED, 'an unsealed frame does not open');
  const sealedEmpty = parseFrame(encodeFrame({ type: FrameType.ACK, seq: 0, header: new Uint8Array(0) }, { keys, encrypt: true }));
  t.equal(openFrame(sealedEmpty, keys, 0).payload.length, 0);
});

t.test('the same payload under two seqs gives different ciphertext and tags', async (t) => {
  const payload = Buffer.alloc(4096, 7);
  const a = parseFrame(encodeFrame({ type: FrameType.WRITE_BATCH, seq: 1, header: new Uint8Array(0), payload }, { keys, encrypt: true }));
  const b = parseFrame(encodeFrame({ type: FrameType.WRITE_BATCH, seq: 2, header: new Uint8Array(0), payload }, { keys, encrypt: true }));
  t.notOk(a.payload.equals(b.payload));
  t.notOk(a.tag!.equals(b.tag!));
});

t.test('wrong expected seq and wrong keys', async (t) => {
  const f = parseFrame(encodeFrame({ type: FrameType.ACK, seq: 5, header: Buffer.from('x') }, { keys, encrypt: false }));
  t.equal(code(() => openFrame(f, keys, 4)), ErrorCode.FRAME_SEQUENCE);
  t.equal(code(() => openFrame(f, keys, 6)), ErrorCode.FRAME_SEQUENCE);
  const other: DirectionKeys = { key: randomBytes(16), salt: keys.salt };
  t.equal(code(() => openFrame(f, other, 5)), ErrorCode.FRAME_AUTH_FAILED);
  const otherSalt: DirectionKeys = { key: keys.key, salt: randomBytes(4) };
  t.equal(code(() => openFrame(f, otherSalt, 5)), ErrorCode.FRAME_AUTH_FAILED);
});

t.test('a flipped bit anywhere in a sealed frame is detected', async (t) => {
  for (const encrypt of [true, false]) {
    const header = encodeWriteBatch(batch(2));
    const bytes = encodeFrame({ type: FrameType.WRITE_BATCH, seq: 3, header, payload: randomBytes(300) }, { keys, encrypt });
    const outcomes = new Map<string, number>();
    for (let bit = 0; bit < bytes.length * 8; bit++) {
      const bad = Buffer.from(bytes);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      const byte = bit >> 3;
      let result: string | undefined;
      let frames: RawFrame[] = [];
      result = code(() => (frames = new FrameDecoder().push(bad)));
      if (result === undefined) {
        if (frames.length !== 1) result = `decoded ${frames.length} frames`;
        else result = code(() => openFrame(frames[0]!, keys, 3));
      }
      const region = byte < 16 ? 'prefix' : 'body';
      // A flipped prefix bit fails as soon as the prefix is in (never a frame waiting for bytes that do not come):
      // a length beyond the limit as FRAME_TOO_LARGE, anything else by the prefix check.
      const ok = region === 'body' ? result === ErrorCode.FRAME_AUTH_FAILED
        : result === ErrorCode.FRAME_MALFORMED || (byte < 4 && result === ErrorCode.FRAME_TOO_LARGE);
      if (!ok) t.fail(`bit ${bit} (${region}, encrypt=${encrypt}) gave ${String(result)}`);
      outcomes.set(`${region}:${String(result)}`, (outcomes.get(`${region}:${String(result)}`) ?? 0) + 1);
    }
    t.ok(outcomes.get(`body:${ErrorCode.FRAME_AUTH_FAILED}`)! >= (bytes.length - 16) * 8, `every body bit (encrypt=${encrypt})`);
    t.comment(JSON.stringify([...outcomes]));
  }
});

t.test('a corrupted prefix fails once its 16 bytes are in, before the body is awaited: every 1- and 2-bit error', async (t) => {
  const bytes = encodeFrame({ type: FrameType.WRITE_BATCH, seq: 7, header: Buffer.alloc(40, 1), payload: randomBytes(2000) }, { keys, encrypt: true });
  const flip = (b: Buffer, bit: number): void => { b[bit >> 3]! ^= 1 << (bit & 7); };
  let cases = 0;
  let waiting = 0;
  for (let i = 0; i < FRAME_PREFIX_BYTES * 8; i++) {
    for (let j = i; j < FRAME_PREFIX_BYTES * 8; j++) {
      const prefix = Buffer.from(bytes.subarray(0, FRAME_PREFIX_BYTES));
      flip(prefix, i);
      if (j !== i) flip(prefix, j);
      cases++;
      // Only the prefix arrives (the rest of the frame is still on the way, or never comes).
      if (code(() => new FrameDecoder().push(prefix)) === undefined) waiting++;
    }
  }
  t.equal(waiting, 0, `${cases} corrupted prefixes, none left the decoder waiting for a body`);
  const good = new FrameDecoder();
  t.same(good.push(bytes.subarray(0, FRAME_PREFIX_BYTES)), [], 'an intact prefix waits for its body');
  t.equal(good.push(bytes.subarray(FRAME_PREFIX_BYTES)).length, 1, 'which then decodes');
});

t.test('sealed flag, tag and flags are enforced', async (t) => {
  const bytes = encodeFrame({ type: FrameType.ACK, seq: 0, header: Buffer.from('hdr') }, { keys, encrypt: false });
  const f = parseFrame(bytes);
  t.equal(code(() => openFrame({ ...f, flags: 0 }, keys, 0)), ErrorCode.FRAME_AUTH_FAILED, 'SEALED missing');
  t.equal(code(() => openFrame({ ...f, tag: f.tag!.subarray(0, 12) }, keys, 0)), ErrorCode.FRAME_AUTH_FAILED, 'short tag');
  t.equal(code(() => openFrame({ ...f, tag: null }, keys, 0)), ErrorCode.FRAME_AUTH_FAILED, 'no tag');
  const unknownFlag = Buffer.from(bytes);
  unknownFlag[5] = 0x05;
  t.equal(code(() => parseFrame(resealed(unknownFlag))), ErrorCode.FRAME_MALFORMED);
  const encNotSealed = Buffer.from(encodeFrame({ type: FrameType.ACK, seq: 0, header: Buffer.from('x') }));
  encNotSealed[5] = FrameFlags.ENCRYPTED;
  t.equal(code(() => parseFrame(resealed(encNotSealed))), ErrorCode.FRAME_MALFORMED);
});

/** A stream of mixed frames: sealed/unsealed, with and without payloads. */
function frameStream(): { stream: Buffer; frames: Buffer[] } {
  const rnd = seededRandom(99);
  const frames: Buffer[] = [];
  for (let i = 0; i < 30; i++) {
    const payload = rnd.bytes(i % 3 === 0 ? 0 : Math.floor(rnd.float() * 5000));
    const header = rnd.bytes(Math.floor(rnd.float() * 100));
    const seal = i % 4 === 0 ? undefined : { keys, encrypt: i % 2 === 0 };
    frames.push(encodeFrame({ type: 1 + (i % 8), seq: i, header, payload }, seal));
  }
  return { stream: Buffer.concat(frames), frames };
}

t.test('FrameDecoder: any split of the stream gives the same frames', async (t) => {
  const { stream, frames } = frameStream();
  const check = (got: RawFrame[], what: string): void => {
    t.equal(got.length, frames.length, `${what}: frame count`);
    const same = got.every((f, i) => f.bytes.equals(frames[i]!) && f.bytes.buffer.byteLength === f.bytes.length);
    t.ok(same, `${what}: identical frames in their own buffers`);
  };
  const byByte = new FrameDecoder();
  const got: RawFrame[] = [];
  for (let i = 0; i < stream.length; i++) got.push(...byByte.push(stream.subarray(i, i + 1)));
  check(got, 'byte by byte');
  t.equal(byByte.bufferedBytes, 0);
  check(new FrameDecoder().push(stream), 'whole');
  const seed = Date.now() % 1_000_000;
  const rnd = seededRandom(seed);
  for (let round = 0; round < 20; round++) {
    const dec = new FrameDecoder();
    const out: RawFrame[] = [];
    let at = 0;
    while (at < stream.length) {
      const n = 1 + Math.floor(rnd.float() * (rnd.float() < 0.5 ? 20 : 9000));
      out.push(...dec.push(stream.subarray(at, at + n)));
      at += n;
    }
    check(out, `random splits, seed ${seed} round ${round}`);
  }
  // the opened content is the same too
  const f = byByte.push(Buffer.alloc(0));
  t.same(f, []);
});

t.test('FrameDecoder rejects oversize and malformed frames', async (t) => {
  const big = Buffer.alloc(4);
  big.writeUInt32BE(1024 + 1);
  const dec = new FrameDecoder(1024);
  t.equal(code(() => dec.push(big)), ErrorCode.FRAME_TOO_LARGE, 'oversize before buffering');
  t.equal(dec.bufferedBytes, 4);
  t.equal(code(() => dec.push(Buffer.alloc(10))), ErrorCode.FRAME_TOO_LARGE, 'stays failed');
  const huge = Buffer.alloc(4);
  huge.writeUInt32BE(limits.frameBytesMax + 1);
  t.equal(code(() => new FrameDecoder().push(huge)), ErrorCode.FRAME_TOO_LARGE, 'default limit');

  const tiny = Buffer.alloc(4 + 11);
  tiny.writeUInt32BE(11);
  t.equal(code(() => new FrameDecoder().push(tiny)), ErrorCode.FRAME_MALFORMED, 'body shorter than 12');

  const overrun = Buffer.from(encodeFrame({ type: FrameType.HELLO, seq: 0, header: Buffer.alloc(10) }));
  overrun.writeUInt16BE(11, 6);
  t.equal(code(() => new FrameDecoder().push(resealed(overrun))), ErrorCode.FRAME_MALFORMED, 'header overruns');

  const sealed = Buffer.from(encodeFrame({ type: FrameType.ACK, seq: 0, header: Buffer.alloc(10) }, { keys, encrypt: false }));
  sealed.writeUInt16BE(10 + 5, 6);
  t.equal(code(() => new FrameDecoder().push(resealed(sealed))), ErrorCode.FRAME_MALFORMED, 'sealed frame too short for its tag');
  const noTag = Buffer.from(encodeFrame({ type: FrameType.ACK, seq: 0, header: Buffer.alloc(0) }));
  noTag[5] = FrameFlags.SEALED;
  t.equal(code(() => new FrameDecoder().push(resealed(noTag))), ErrorCode.FRAME_MALFORMED, 'sealed without room for a tag');

  const unchecked = Buffer.from(encodeFrame({ type: FrameType.ACK, seq: 0, header: Buffer.alloc(0) }));
  unchecked[15]! ^= 1;
  t.equal(code(() => new FrameDecoder().push(unchecked)), ErrorCode.FRAME_MALFORMED, 'a wrong prefix check');
});

t.test('encodeFrame bounds', async (t) => {
  t.equal(code(() => encodeFrame({ type: 3, seq: 0, header: Buffer.alloc(0x10000) })), ErrorCode.FRAME_TOO_LARGE, 'header > u16');
  t.equal(code(() => encodeFrame({ type: 3, seq: 0, header: Buffer.alloc(0), payload: Buffer.alloc(limits.frameBytesMax) })),
    ErrorCode.FRAME_TOO_LARGE);
  t.equal(code(() => encodeFrame({ type: 3, seq: -1, header: Buffer.alloc(0) })), ErrorCode.INVALID_ARGUMENT);
  t.equal(code(() => encodeFrame({ type: 3, seq: 2 ** 53, header: Buffer.alloc(0) })), ErrorCode.INVALID_ARGUMENT);
  t.equal(code(() => encodeFrame({ type: 3, seq: frameSeqMax + 1, header: Buffer.alloc(0) })), ErrorCode.INVALID_ARGUMENT, 'seq beyond u48');
  const hi = parseFrame(encodeFrame({ type: 3, seq: frameSeqMax, header: Buffer.alloc(0) }, { keys, encrypt: true }));
  t.equal(hi.seq, frameSeqMax, 'the largest seq round-trips');
  t.same(openFrame(hi, keys, frameSeqMax).payload.length, 0);
});

t.test('messages: garbage and unsafe integers are malformed', async (t) => {
  t.equal(code(() => decodeWriteBatch(Buffer.from([0xff, 0xff, 0xff]))), ErrorCode.FRAME_MALFORMED);
  const unsafe = Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]); // first_seq = 2^64-1
  t.equal(code(() => decodeWriteBatch(unsafe)), ErrorCode.FRAME_MALFORMED);
  const rnd = seededRandom(5);
  let nonVrg = 0;
  for (let i = 0; i < 2000; i++) {
    const c = code(() => decodeWriteBatch(rnd.bytes(1 + (i % 64))));
    if (c !== undefined && c !== ErrorCode.FRAME_MALFORMED) nonVrg++;
  }
  t.equal(nonVrg, 0, 'random garbage only ever fails with VRG_FRAME_MALFORMED');
  t.equal(code(() => encodeWriteBatch({ ...batch(1), firstSeq: 1.5 })), ErrorCode.INVALID_ARGUMENT);
  t.same(decodeWriteBatch(encodeWriteBatch(batch(4096))).records.length, 4096);
});

t.test('session keys', async (t) => {
  const secret = randomBytes(32);
  const [cn, sn] = [randomBytes(32), randomBytes(32)];
  const a = deriveSessionKeys(secret, cn, sn);
  const b = deriveSessionKeys(secret, cn, sn);
  t.same(a, b, 'deterministic');
  t.notSame(a.clientToServer.key, a.serverToClient.key);
  t.equal(a.clientToServer.key.length, 16);
  t.equal(a.clientToServer.salt.length, 4);
  t.equal(a.sessionId.length, 16);
  t.notSame(deriveSessionKeys(randomBytes(32), cn, sn).clientToServer.key, a.clientToServer.key);
  t.notSame(deriveSessionKeys(secret, sn, cn).clientToServer.key, a.clientToServer.key);
});
