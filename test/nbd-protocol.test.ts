import t from 'tap';
import { ErrorCode } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';
import {
  ByteQueue, NBD_REP_MAGIC, NbdCmd, NbdCmdFlag, NbdErrno, NbdHandshakeParser, NbdInfo, NbdOpt, NbdRep, NbdReplyFlag,
  NbdReplyType, NbdRequestParser, NbdTransmissionFlag, OPTION_REPLY_HEADER_BYTES, REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES, STRUCTURED_REPLY_HEADER_BYTES, decodeChunkPayload, decodeGreeting, decodeInfo,
  decodeInfoRequest, decodeOptionReplyHeader, decodeOptionRequestHeader, decodeRequestHeader, decodeServerReply,
  decodeSimpleReplyHeader, decodeStructuredReplyHeader, encodeErrorChunk, encodeExportNameReply, encodeGreeting,
  encodeInfoBlockSize, encodeInfoDescription, encodeInfoExport, encodeInfoName, encodeInfoRequest,
  encodeOffsetDataChunkHead, encodeOffsetHoleChunk, encodeOptionReply, encodeOptionRequest, encodeRequestHeader,
  encodeServerReply, encodeSimpleReplyHeader, encodeStructuredReplyHeader, type NbdRequest, type NbdRequestEvent,
} from '../src/protocol/nbd.js';
import { code } from './lib/error-code.js';


const cookie = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};

t.test('constants match the protocol document', async (t) => {
  t.equal(NbdRep.ERR_UNSUP, 2 ** 31 + 1);
  t.equal(NbdRep.ERR_UNKNOWN, 2 ** 31 + 6);
  t.equal(NbdRep.ERR_TOO_BIG, 2 ** 31 + 9);
  t.equal(NbdTransmissionFlag.CAN_MULTI_CONN, 256);
  t.equal(NbdReplyType.ERROR, 2 ** 15 + 1);
  t.equal(Buffer.from('NBDMAGIC').readBigUInt64BE(0), 0x4e42444d41474943n);
  t.equal(Buffer.from('IHAVEOPT').readBigUInt64BE(0), 0x49484156454f5054n);
});

t.test('request header round trip, wire layout, bad magic', async (t) => {
  const r: NbdRequest = { flags: NbdCmdFlag.FUA, type: NbdCmd.WRITE, cookie: cookie(0xdeadbeef01), offset: 2 ** 40 + 4096, length: 65536 };
  const b = encodeRequestHeader(r);
  t.equal(b.length, REQUEST_HEADER_BYTES);
  t.equal(b.toString('hex', 0, 8), '2560951300010001');
  t.same(decodeRequestHeader(b), r);
  const shifted = Buffer.concat([Buffer.alloc(3), b]);
  t.same(decodeRequestHeader(shifted, 3), r);
  // u64 offsets beyond 2^53 decode to numbers that are at least as large (range checks reject them).
  const huge = Buffer.from(b);
  huge.writeBigUInt64BE(0xffff_ffff_ffff_ff00n, 16);
  t.ok(decodeRequestHeader(huge).offset >= 2 ** 63);
  const bad = Buffer.from(b);
  bad[0] = 0;
  t.equal(code(() => decodeRequestHeader(bad)), ErrorCode.NBD_PROTOCOL);
});

t.test('simple and structured reply headers', async (t) => {
  const s = encodeSimpleReplyHeader(NbdErrno.EINVAL, cookie(7));
  t.equal(s.length, SIMPLE_REPLY_HEADER_BYTES);
  t.equal(s.toString('hex', 0, 8), '6744669800000016');
  t.same(decodeSimpleReplyHeader(s), { error: 22, cookie: cookie(7) });
  t.equal(code(() => decodeSimpleReplyHeader(Buffer.alloc(16))), ErrorCode.NBD_PROTOCOL);

  const h = { flags: NbdReplyFlag.DONE, type: NbdReplyType.OFFSET_HOLE, cookie: cookie(9), length: 12 };
  const hb = encodeStructuredReplyHeader(h);
  t.equal(hb.length, STRUCTURED_REPLY_HEADER_BYTES);
  t.equal(hb.toString('hex', 0, 8), '668e33ef00010002');
  t.same(decodeStructuredReplyHeader(hb), h);

  const data = Buffer.from('hello');
  const chunk = Buffer.concat([encodeOffsetDataChunkHead(cookie(1), 8192, data.length, NbdReplyFlag.DONE), data]);
  const ch = decodeStructuredReplyHeader(chunk);
  t.same(ch, { flags: 1, type: NbdReplyType.OFFSET_DATA, cookie: cookie(1), length: 13 });
  t.same(decodeChunkPayload(ch.type, chunk.subarray(20)), { type: 1, offset: 8192, data });

  const hole = encodeOffsetHoleChunk(cookie(2), 4096, 512, 0);
  t.same(decodeChunkPayload(2, hole.subarray(20)), { type: 2, offset: 4096, size: 512 });

  const err = encodeErrorChunk(cookie(3), NbdErrno.EIO, 'disk on fire', NbdReplyFlag.DONE);
  const eh = decodeStructuredReplyHeader(err);
  t.equal(eh.length, err.length - 20);
  t.same(decodeChunkPayload(eh.type, err.subarray(20)), { type: NbdReplyType.ERROR, error: 5, message: 'disk on fire' });
  const erro = encodeErrorChunk(cookie(3), NbdErrno.EIO, 'x', 0, 1234);
  t.same(decodeChunkPayload(NbdReplyType.ERROR_OFFSET, erro.subarray(20)),
    { type: NbdReplyType.ERROR_OFFSET, error: 5, message: 'x', offset: 1234 });
  t.equal(code(() => decodeChunkPayload(NbdReplyType.OFFSET_HOLE, Buffer.alloc(3))), ErrorCode.NBD_PROTOCOL);
  t.same(decodeChunkPayload(NbdReplyType.NONE, Buffer.alloc(0)), { type: 0 });
});

t.test('handshake codecs', async (t) => {
  t.same(decodeGreeting(encodeGreeting(3)), { handshakeFlags: 3 });
  t.equal(code(() => decodeGreeting(Buffer.alloc(18))), ErrorCode.NBD_PROTOCOL);

  const o = encodeOptionRequest(NbdOpt.GO, encodeInfoRequest('vol-1', [NbdInfo.NAME, NbdInfo.BLOCK_SIZE]));
  t.same(decodeOptionRequestHeader(o), { option: NbdOpt.GO, length: o.length - 16 });
  t.same(decodeInfoRequest(o.subarray(16)), { name: 'vol-1', infos: [1, 3] });
  t.equal(code(() => decodeInfoRequest(Buffer.from([0, 0, 0, 9, 0, 0]))), ErrorCode.NBD_PROTOCOL);
  t.equal(code(() => decodeInfoRequest(Buffer.concat([encodeInfoRequest('a', [1]), Buffer.alloc(1)]))), ErrorCode.NBD_PROTOCOL);
  t.equal(code(() => decodeOptionRequestHeader(Buffer.alloc(16))), ErrorCode.NBD_PROTOCOL);

  const rep = encodeOptionReply(NbdOpt.GO, NbdRep.ERR_UNKNOWN, Buffer.from('nope'));
  t.same(decodeOptionReplyHeader(rep), { magic: NBD_REP_MAGIC, option: NbdOpt.GO, type: NbdRep.ERR_UNKNOWN, length: 4 });
  t.equal(rep.length, OPTION_REPLY_HEADER_BYTES + 4);

  t.same(decodeInfo(encodeInfoExport(2 ** 44 + 512, 0x1ed)), { type: 0, size: 2 ** 44 + 512, flags: 0x1ed });
  t.same(decodeInfo(encodeInfoName('vol-é')), { type: 1, name: 'vol-é' });
  t.same(decodeInfo(encodeInfoDescription('a disk')), { type: 2, description: 'a disk' });
  t.same(decodeInfo(encodeInfoBlockSize(1, 4096, 32 << 20)), { type: 3, min: 1, preferred: 4096, max: 32 << 20 });
  t.equal(code(() => decodeInfo(encodeInfoExport(1, 1).subarray(0, 11))), ErrorCode.NBD_PROTOCOL);
  t.same(decodeServerReply(encodeServerReply('n', 'desc')), { name: 'n', description: 'desc' });

  t.equal(encodeExportNameReply(1024, 1, true).length, 10);
  const full = encodeExportNameReply(1024, 1, false);
  t.equal(full.length, 134);
  t.ok(full.subarray(10).every((b) => b === 0));
});

t.test('ByteQueue takes exact byte counts across chunks', async (t) => {
  const q = new ByteQueue();
  q.push(Buffer.from('abc'));
  q.push(Buffer.alloc(0));
  q.push(Buffer.from('defg'));
  t.equal(q.take(2).toString(), 'ab');
  t.equal(q.take(3).toString(), 'cde');
  t.equal(q.skip(10), 2);
  t.equal(q.length, 0);
  q.push(Buffer.from('xyz'));
  q.take(1);
  t.same(q.drain().map((b) => b.toString()), ['yz']);
});

/** A stream of requests with payloads, and the events it must parse to. */
function scenario(rnd: ReturnType<typeof seededRandom>, maxPayload: number): { bytes: Buffer; expected: NbdRequestEvent[] } {
  const parts: Buffer[] = [];
  const expected: NbdRequestEvent[] = [];
  const types = [NbdCmd.READ, NbdCmd.WRITE, NbdCmd.FLUSH, NbdCmd.TRIM, NbdCmd.WRITE_ZEROES, 99];
  for (let i = 0; i < 40; i++) {
    const type = types[rnd.uint32() % types.length]!;
    const oversize = type === NbdCmd.WRITE && rnd.uint32() % 8 === 0;
    const length = oversize ? maxPayload + 1 + (rnd.uint32() % 3000) : rnd.uint32() % (maxPayload + 1);
    const request: NbdRequest = { flags: rnd.uint32() % 4, type, cookie: cookie(i), offset: rnd.uint32() * 512, length };
    parts.push(encodeRequestHeader(request));
    let payload: Buffer | null = null;
    if (type === NbdCmd.WRITE) {
      const data = rnd.bytes(length);
      parts.push(data);
      payload = oversize ? null : data;
    }
    expected.push({ request, payload, payloadDiscarded: oversize });
  }
  return { bytes: Buffer.concat(parts), expected };
}

function feed(parser: NbdRequestParser, bytes: Buffer, cuts: number[]): NbdRequestEvent[] {
  const out: NbdRequestEvent[] = [];
  let at = 0;
  for (const end of [...cuts, bytes.length]) {
    parser.push(bytes.subarray(at, end));
    at = end;
    for (let ev = parser.next(); ev; ev = parser.next()) out.push({ ...ev, payload: ev.payload && Buffer.from(ev.payload) });
  }
  return out;
}

t.test('request parser: byte by byte', async (t) => {
  const { bytes, expected } = scenario(seededRandom(1), 2048);
  const cuts = Array.from({ length: bytes.length - 1 }, (_, i) => i + 1);
  const parser = new NbdRequestParser(2048);
  t.same(feed(parser, bytes, cuts), expected);
  t.equal(parser.midRequest, false);
});

t.test('request parser: random splits', async (t) => {
  const base = Number(process.env.NBD_TEST_SEED ?? Date.now() % 1_000_000);
  for (let round = 0; round < 50; round++) {
    const seed = base + round;
    const rnd = seededRandom(seed);
    const { bytes, expected } = scenario(rnd, 2048);
    const cuts = new Set<number>();
    const n = rnd.uint32() % 60;
    for (let i = 0; i < n; i++) cuts.add(1 + (rnd.uint32() % (bytes.length - 1)));
    const got = feed(new NbdRequestParser(2048), bytes, [...cuts].sort((a, b) => a - b));
    if (!t.same(got, expected, `seed ${seed}`)) {
      t.comment(`request parser mismatch: rerun with NBD_TEST_SEED=${seed}`);
      break;
    }
  }
});

t.test('request parser: truncated payload yields nothing, bad magic throws', async (t) => {
  const p = new NbdRequestParser(4096);
  p.push(encodeRequestHeader({ flags: 0, type: NbdCmd.WRITE, cookie: cookie(1), offset: 0, length: 100 }));
  p.push(Buffer.alloc(99));
  t.equal(p.next(), null);
  t.equal(p.midRequest, true);

  const q = new NbdRequestParser(4096);
  const bad = encodeRequestHeader({ flags: 0, type: NbdCmd.READ, cookie: cookie(1), offset: 0, length: 1 });
  bad.writeUInt32BE(0x12345678, 0);
  q.push(bad);
  t.equal(code(() => q.next()), ErrorCode.NBD_PROTOCOL);
});

t.test('handshake parser: flags, options, oversized option, any split', async (t) => {
  const bytes = Buffer.concat([
    Buffer.from([0, 0, 0, 3]),
    encodeOptionRequest(NbdOpt.STRUCTURED_REPLY),
    encodeOptionRequest(NbdOpt.LIST),
    encodeOptionRequest(99, Buffer.alloc(300, 1)),
    encodeOptionRequest(NbdOpt.GO, encodeInfoRequest('v', [])),
    encodeRequestHeader({ flags: 0, type: NbdCmd.FLUSH, cookie: cookie(5), offset: 0, length: 0 }),
  ]);
  for (const step of [1, 3, 7, 16, bytes.length]) {
    const p = new NbdHandshakeParser(256);
    const events = [];
    for (let at = 0; at < bytes.length; at += step) {
      p.push(bytes.subarray(at, Math.min(bytes.length, at + step)));
      for (let ev = p.next(); ev; ev = p.next()) {
        events.push(ev);
        if (ev.kind === 'option' && ev.option === NbdOpt.GO) break;
      }
      if (events.at(-1)?.kind === 'option' && (events.at(-1) as { option: number }).option === NbdOpt.GO) {
        const rest = new NbdRequestParser(1024);
        for (const b of p.drain()) rest.push(b);
        for (let b = at + step; b < bytes.length; b += step) rest.push(bytes.subarray(b, Math.min(bytes.length, b + step)));
        t.equal(rest.next()?.request.type, NbdCmd.FLUSH, `leftover handed over (step ${step})`);
        break;
      }
    }
    t.same(events, [
      { kind: 'client-flags', flags: 3 },
      { kind: 'option', option: NbdOpt.STRUCTURED_REPLY, data: Buffer.alloc(0) },
      { kind: 'option', option: NbdOpt.LIST, data: Buffer.alloc(0) },
      { kind: 'option-too-big', option: 99, length: 300 },
      { kind: 'option', option: NbdOpt.GO, data: encodeInfoRequest('v', []) },
    ], `step ${step}`);
  }
});
