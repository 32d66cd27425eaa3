import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import t from 'tap';
import { ErrorCode } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';
import { NbdNegotiation } from '../src/nbd/nbd-negotiation.js';
import { NbdServer, type NbdExport } from '../src/nbd/nbd-server.js';
import { volumeExport } from '../src/nbd/volume-export.js';
import {
  GREETING_BYTES, NBD_REP_MAGIC, NbdCmd, NbdHandshakeFlag, NbdHandshakeParser, NbdOpt, NbdReplyType, NbdRequestParser,
  OPTION_REPLY_HEADER_BYTES, REQUEST_HEADER_BYTES, decodeChunkPayload, decodeGreeting, decodeInfo, decodeInfoRequest,
  decodeOptionReplyHeader, decodeOptionRequestHeader, decodeRequestHeader, decodeServerReply, decodeSimpleReplyHeader,
  decodeStructuredReplyHeader, encodeErrorChunk, encodeGreeting, encodeInfoBlockSize, encodeInfoDescription,
  encodeInfoExport, encodeInfoName, encodeInfoRequest, encodeOffsetHoleChunk, encodeOptionReply, encodeOptionRequest,
  encodeRequestHeader, encodeServerReply, encodeSimpleReplyHeader, encodeStructuredReplyHeader,
} from '../src/protocol/nbd.js';
import { FileVolume } from '../src/volume/file-volume.js';
import { cuts, fuzzBytes, fuzzParams, mutated, split, typed } from './lib/fuzz.js';
import { RawNbdClient } from './lib/nbd-raw-client.js';
import { tempDir, until } from './lib/rest-client.js';

// Property-based tests of the NBD front end: the pure parsers and codecs of src/protocol/nbd.ts, the option
// haggling of src/nbd/nbd-negotiation.ts, and a real NbdServer on 127.0.0.1 fed valid, mutated and random
// client streams over TCP. It must answer or drop each client, close every connection by its timeouts at
// the latest, never throw anything but VRG_NBD_PROTOCOL, never pass an out-of-range request to its backend,
// and never change a read-only export's file.

const PROTO = [ErrorCode.NBD_PROTOCOL];
const SIZE = 256 * 1024;
const MAX_PAYLOAD = 4096;
const cookie = fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => Buffer.from(b));
const name = fc.oneof(fc.constantFrom('ro', 'rw', 'nope', ''), fc.string({ unit: 'binary', maxLength: 12 }));

// ---- a client's stream: flags, options, the export choice, then requests ----

const option = fc.oneof(
  fc.constant(encodeOptionRequest(NbdOpt.STRUCTURED_REPLY)),
  fc.constant(encodeOptionRequest(NbdOpt.LIST)),
  fc.tuple(name, fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }))
    .map(([n, infos]) => encodeOptionRequest(NbdOpt.INFO, encodeInfoRequest(n, infos))),
  fc.constantFrom(NbdOpt.STARTTLS, NbdOpt.LIST_META_CONTEXT, NbdOpt.EXTENDED_HEADERS, 99)
    .map((o) => encodeOptionRequest(o, Buffer.from('x'))),
);
const attach = fc.tuple(fc.constantFrom('ro', 'rw', 'rw', 'rw', 'nope'), fc.boolean()).map(([n, go]) =>
  go ? encodeOptionRequest(NbdOpt.GO, encodeInfoRequest(n, [])) : encodeOptionRequest(NbdOpt.EXPORT_NAME, Buffer.from(n)));
const request = fc.record({
  type: fc.constantFrom(NbdCmd.READ, NbdCmd.WRITE, NbdCmd.WRITE, NbdCmd.TRIM, NbdCmd.WRITE_ZEROES, NbdCmd.FLUSH,
    NbdCmd.CACHE, NbdCmd.BLOCK_STATUS, 9),
  flags: fc.constantFrom(0, 0, 0, 0, 1, 1, 2, 4, 8),
  cookie,
  offset: fc.oneof(fc.integer({ min: 0, max: SIZE }), fc.constantFrom(SIZE - 1, 2 ** 40, Number.MAX_SAFE_INTEGER)),
  length: fc.oneof(fc.integer({ min: 0, max: MAX_PAYLOAD }), fc.integer({ min: 0, max: 2 * MAX_PAYLOAD }), fc.constantFrom(1, 512, 0xffff_ffff)),
}).map((r) => {
  const payload = r.type === NbdCmd.WRITE && r.length <= 2 * MAX_PAYLOAD ? Buffer.alloc(r.length, 0xee) : Buffer.alloc(0);
  return Buffer.concat([encodeRequestHeader(r), payload]);
});
const clientStream = fc.tuple(
  fc.constantFrom(3, 3, 3, 3, 1, 0, 7),
  fc.array(option, { maxLength: 3 }),
  attach,
  fc.array(request, { maxLength: 6 }),
  fc.boolean(),
).map(([flags, opts, go, reqs, disc]) => {
  const f = Buffer.alloc(4);
  f.writeUInt32BE(flags);
  const end = disc ? [encodeRequestHeader({ type: NbdCmd.DISC, flags: 0, cookie: Buffer.alloc(8), offset: 0, length: 0 })] : [];
  return Buffer.concat([f, ...opts, go, ...reqs, ...end]);
});
const handshakeStream = fc.tuple(fc.constantFrom(3, 1), fc.array(option, { maxLength: 4 }), attach)
  .map(([flags, opts, go]) => Buffer.concat([Buffer.from([0, 0, 0, flags]), ...opts, go]));
const requestStream = fc.array(request, { minLength: 1, maxLength: 4 }).map((rs) => Buffer.concat(rs));

// ---- pure parsers ----

/** Every event of `parser` for `chunks`, pulled after each push, ending at a typed error. */
function pullAll<E>(push: (c: Buffer) => void, next: () => E | null, chunks: Buffer[], summary: (e: E) => unknown): unknown[] {
  const out: unknown[] = [];
  for (const c of chunks) {
    push(c);
    for (;;) {
      const r = typed(next, PROTO);
      if (!r.ok) return [...out, r.code];
      if (r.value === null) break;
      out.push(summary(r.value));
    }
  }
  return out;
}

const hex = (b: Buffer | null): string | null => b && b.toString('hex');

function handshakeEvents(chunks: Buffer[]): unknown[] {
  const p = new NbdHandshakeParser(256);
  return pullAll((c) => p.push(c), () => p.next(), chunks,
    (e) => (e.kind === 'option' ? { ...e, data: hex(e.data) } : e));
}

function requestEvents(chunks: Buffer[]): unknown[] {
  const p = new NbdRequestParser(MAX_PAYLOAD);
  return pullAll((c) => p.push(c), () => p.next(), chunks,
    (e) => ({ ...e.request, cookie: hex(e.request.cookie), payload: hex(e.payload), discarded: e.payloadDiscarded }));
}

t.test('NbdHandshakeParser: typed errors only, the same events for every split', async (t) => {
  fc.assert(fc.property(fuzzBytes(handshakeStream, 300), cuts, (b, at) => {
    const whole = handshakeEvents([b]);
    return isDeepStrictEqual(whole, handshakeEvents(split(b, at))) &&
      isDeepStrictEqual(whole, handshakeEvents([...b].map((x) => Buffer.from([x]))));
  }), fuzzParams(800));
  t.pass('800 handshake streams');
});

t.test('NbdRequestParser: typed errors only, the same events for every split, oversized payloads dropped', async (t) => {
  fc.assert(fc.property(fuzzBytes(requestStream, 300), cuts, (b, at) => {
    const whole = requestEvents([b]);
    const ok = whole.every((e) => typeof e === 'string' ||
      ((e as { discarded: boolean }).discarded === ((e as { type: number }).type === NbdCmd.WRITE && (e as { length: number }).length > MAX_PAYLOAD)));
    return ok && isDeepStrictEqual(whole, requestEvents(split(b, at)));
  }), fuzzParams(800));
  t.pass('800 request streams');
});

t.test('NbdNegotiation: any handshake events give well-formed replies, never a throw', async (t) => {
  const exp = (n: string, readOnly: boolean): NbdExport => ({ name: n, sizeBytes: SIZE, readOnly } as unknown as NbdExport);
  fc.assert(fc.property(fuzzBytes(handshakeStream, 300), fc.boolean(), (b, down) => {
    const neg = new NbdNegotiation({ exports: () => [exp('ro', true), exp('rw', false)], blockSizes: [1, 4096, MAX_PAYLOAD], shuttingDown: () => down });
    const p = new NbdHandshakeParser(256);
    p.push(b);
    for (;;) {
      const ev = typed(() => p.next(), PROTO);
      if (!ev.ok || ev.value === null) return true;
      const step = neg.onEvent(ev.value);
      const exportName = ev.value.kind === 'option' && ev.value.option === NbdOpt.EXPORT_NAME;
      for (const s of step.send) {
        if (exportName && step.next === 'transmission') {
          if (s.length !== 10 && s.length !== 134) return false;
          continue;
        }
        const h = decodeOptionReplyHeader(s);
        if (h.magic !== NBD_REP_MAGIC || s.length !== OPTION_REPLY_HEADER_BYTES + h.length) return false;
      }
      if (step.next !== 'continue') return true;
    }
  }), fuzzParams(800));
  t.pass('800 negotiations');
});

t.test('variable-length decoders fail only with VRG_NBD_PROTOCOL', async (t) => {
  const infoReq = fc.tuple(name, fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 6 })).map(([n, i]) => encodeInfoRequest(n, i));
  const info = fc.oneof(
    fc.tuple(fc.maxSafeNat(), fc.integer({ min: 0, max: 0xffff })).map(([s, f]) => encodeInfoExport(s, f)),
    name.map(encodeInfoName), name.map(encodeInfoDescription),
    fc.tuple(fc.nat(), fc.nat(), fc.nat()).map(([a, b, c]) => encodeInfoBlockSize(a, b, c)),
  );
  const server = fc.tuple(name, name).map(([n, d]) => encodeServerReply(n, d));
  const chunk = fc.tuple(fc.constantFrom(0, 1, 2, 5, 32769, 32770, 7), fuzzBytes(fc.uint8Array({ maxLength: 40 }), 40));
  fc.assert(fc.property(fuzzBytes(infoReq), fuzzBytes(info), fuzzBytes(server), chunk, (a, b, c, [type, payload]) => {
    typed(() => decodeInfoRequest(a), PROTO);
    typed(() => decodeInfo(b), PROTO);
    typed(() => decodeServerReply(c), PROTO);
    typed(() => decodeChunkPayload(type, payload), PROTO);
    return true;
  }), fuzzParams(1500));
  t.pass('1500 inputs per decoder');
});

t.test('decode(encode(x)) = x for every NBD codec', async (t) => {
  const u16 = fc.integer({ min: 0, max: 0xffff });
  const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
  const req = fc.record({ flags: u16, type: u16, cookie, offset: fc.maxSafeNat(), length: u32 }).map((r) => ({ ...r })); // a plain prototype
  fc.assert(fc.property(name, fc.array(u16, { maxLength: 8 }), req, fc.maxSafeNat(), u16, u32, u32, u32, (n, infos, r, size, flags, a, b, c) => {
    const same = isDeepStrictEqual;
    return same(decodeInfoRequest(encodeInfoRequest(n, infos)), { name: n, infos }) &&
      same(decodeRequestHeader(encodeRequestHeader(r)), r) &&
      same(decodeInfo(encodeInfoExport(size, flags)), { type: 0, size, flags }) &&
      same(decodeInfo(encodeInfoName(n)), { type: 1, name: n }) &&
      same(decodeInfo(encodeInfoDescription(n)), { type: 2, description: n }) &&
      same(decodeInfo(encodeInfoBlockSize(a, b, c)), { type: 3, min: a, preferred: b, max: c }) &&
      same(decodeServerReply(encodeServerReply(n, `${n}!`)), { name: n, description: `${n}!` }) &&
      same(decodeGreeting(encodeGreeting(flags)), { handshakeFlags: flags }) &&
      same(decodeOptionRequestHeader(encodeOptionRequest(a, Buffer.from(n))), { option: a, length: Buffer.byteLength(n) }) &&
      same(decodeOptionReplyHeader(encodeOptionReply(a, b)), { magic: NBD_REP_MAGIC, option: a, type: b, length: 0 }) &&
      same(decodeSimpleReplyHeader(encodeSimpleReplyHeader(a, r.cookie)), { error: a, cookie: r.cookie }) &&
      same(decodeStructuredReplyHeader(encodeStructuredReplyHeader({ flags, type: r.type, cookie: r.cookie, length: a })),
        { flags, type: r.type, cookie: r.cookie, length: a }) &&
      same(decodeChunkPayload(NbdReplyType.OFFSET_HOLE, encodeOffsetHoleChunk(r.cookie, size, a, 1).subarray(20)),
        { type: 2, offset: size, size: a }) &&
      same(decodeChunkPayload(NbdReplyType.ERROR_OFFSET, encodeErrorChunk(r.cookie, a, n, 1, size).subarray(20)),
        { type: NbdReplyType.ERROR_OFFSET, error: a, message: n, offset: size });
  }), fuzzParams(1000));
  t.pass('1000 values through 14 codec pairs');
});

// ---- a real server over TCP ----

t.test('NbdServer on 127.0.0.1: mutated client streams are answered or dropped, nothing out of range, the read-only file unchanged', async (t) => {
  const dir = await tempDir(t, 'vrg-fuzz-nbd-');
  const roPath = join(dir, 'ro.img');
  await writeFile(roPath, seededRandom(7).bytes(SIZE));
  const roHash = createHash('sha256').update(await readFile(roPath)).digest('hex');
  const roVol = await FileVolume.open(roPath, { native: null });
  const rwVol = await FileVolume.open(join(dir, 'rw.img'), { sizeBytes: SIZE, create: true, native: null });
  const violations: string[] = [];
  const calls: Record<string, number> = {};
  const inRange = (what: string, offset: number, length: number): void => {
    calls[what] = (calls[what] ?? 0) + 1;
    if (!(Number.isSafeInteger(offset) && offset >= 0 && offset + length <= SIZE)) violations.push(`${what} ${offset}+${length}`);
  };
  const base = volumeExport(rwVol, { name: 'rw' });
  const rw: NbdExport = {
    ...base,
    read: (o, l) => (inRange('read', o, l), base.read(o, l)),
    write: (o, d, f) => (inRange('write', o, d.length), base.write(o, d, f)),
    writeZeroes: (o, l, x) => (inRange('zero', o, l), base.writeZeroes(o, l, x)),
    trim: (o, l, f) => (inRange('trim', o, l), base.trim(o, l, f)),
  };
  const server = new NbdServer({
    exports: () => [volumeExport(roVol, { name: 'ro', readOnly: true }), rw],
    maxPayloadBytes: MAX_PAYLOAD, handshakeTimeoutMs: 300, stallTimeoutMs: 300, idleTimeoutMs: 300, closeTimeoutMs: 1000,
  });
  const port = await server.listen('127.0.0.1', 0);
  t.teardown(async () => {
    await server.close();
    await roVol.close();
    await rwVol.close();
  });
  const greeting = encodeGreeting(NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES);

  /** Sends the chunks (then a FIN, or not); resolves with what the server sent once it closed the connection. */
  const exchange = (chunks: Buffer[], end: boolean): Promise<Buffer> => new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    const got: Buffer[] = [];
    // Far beyond the server's 300 ms timeouts: only a connection the server never closes gets here.
    const hang = setTimeout(() => {
      sock.destroy();
      reject(new Error(`server kept the connection open (end=${end})`));
    }, 15_000);
    sock.on('data', (c: Buffer) => got.push(c));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(hang);
      resolve(Buffer.concat(got));
    });
    sock.on('connect', () => {
      for (const c of chunks) sock.write(c);
      if (end) sock.end();
    });
  });

  const runs = fuzzParams<[Buffer, number[], number]>(600);
  await fc.assert(fc.asyncProperty(fuzzBytes(clientStream, 400), cuts, fc.integer({ min: 0, max: 9 }), async (b, at, mode) => {
    const reply = await exchange(split(b, at), mode !== 0); // one in ten keeps its side open: timeouts close it
    if (reply.length >= GREETING_BYTES && !reply.subarray(0, GREETING_BYTES).equals(greeting)) return false;
    const hash = createHash('sha256').update(await readFile(roPath)).digest('hex');
    return hash === roHash && violations.length === 0;
  }), runs);
  t.same(violations, [], 'no out-of-range request reached the backend');
  t.ok(['read', 'write', 'zero', 'trim'].every((k) => (calls[k] ?? 0) > 0), `the fuzz reached every backend call: ${JSON.stringify(calls)}`);
  t.equal(createHash('sha256').update(await readFile(roPath)).digest('hex'), roHash, 'the read-only export\'s file is unchanged');
  await until(() => server.clients === 0, 10_000, 'every fuzzed client is gone');

  const c = await RawNbdClient.attach(port, 'ro');
  c.send({ type: NbdCmd.READ, flags: 0, offset: 4096, length: 4096 });
  const r = await c.reply(4096);
  t.equal(r.error, 0, 'a well-behaved client is still served');
  t.same(r.data, (await readFile(roPath)).subarray(4096, 8192), 'and reads the file');
  c.close();
});

t.test('a mutated request header never reads as another valid magic', async (t) => {
  // Regression guard on the bad-magic path the server relies on to drop desynchronised clients.
  fc.assert(fc.property(mutated(fc.constant(encodeRequestHeader({ type: 0, flags: 0, cookie: Buffer.alloc(8), offset: 0, length: 0 }))), (b) => {
    if (b.length < REQUEST_HEADER_BYTES) return true;
    const r = typed(() => decodeRequestHeader(b), PROTO);
    return r.ok === (b.readUInt32BE(0) === 0x25609513);
  }), fuzzParams(300));
  t.pass('300 headers');
});
