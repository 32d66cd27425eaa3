import { createRequire } from 'node:module';
import t from 'tap';
import { ErrorCode, isVrgError } from '../src/core/errors.js';
import { MiB } from '../src/core/limits.js';
import { seededRandom } from '../src/core/random.js';
import { encodeFrame, FrameType, type DirectionKeys } from '../src/protocol/frame.js';
import { encodeWriteBatch, type WriteBatch, type WriteRecord } from '../src/protocol/messages.js';
import { batchPlainBytesMax, InlineCodec, PoolCodec, RecordCodec, type Codec } from '../src/pipeline/codec.js';
import { lz4BindingPath, lz4Encode, lz4EncodeBound, lz4IsNative } from '../src/pipeline/lz4-native.js';

const rnd = seededRandom(42);
const keys: DirectionKeys = { key: rnd.bytes(16), salt: rnd.bytes(4) };
const WRITE = 1;
const TRIM = 2;
const ZERO = 3;
const BARRIER = 4;

/** Text-like repetitive runs mixed with random bytes: LZ4 gets roughly 2:1. */
function compressible(n: number, seed: number): Buffer {
  const r = seededRandom(seed);
  const words = ['block ', 'replication ', 'gateway ', 'journal ', '\n', 'volume ', '0000', 'DR site ', 'lz4 '];
  const out = Buffer.allocUnsafe(n);
  let i = 0;
  while (i < n) {
    if (r.float() < 0.12) {
      const len = Math.min(n - i, 8 + Math.floor(r.float() * 40));
      r.bytes(len).copy(out, i);
      i += len;
    } else {
      const w = Buffer.from(words[Math.floor(r.float() * words.length)]!);
      i += w.copy(out, i, 0, Math.min(w.length, n - i));
    }
  }
  return out;
}

interface Dataset { name: string; data: Buffer; lengths: number[] }

function recordLengths(total: number, seed: number): number[] {
  const r = seededRandom(seed);
  const lengths: number[] = [];
  let left = total;
  while (left > 0) {
    const len = Math.min(left, [512, 4096, 65536, 131072][Math.floor(r.float() * 4)]! + Math.floor(r.float() * 100));
    lengths.push(len);
    left -= len;
  }
  return lengths;
}

const size = 1 * MiB;
const datasets: Dataset[] = [
  { name: 'compressible', data: compressible(size, 1), lengths: recordLengths(size, 2) },
  { name: 'random', data: seededRandom(3).bytes(size), lengths: recordLengths(size, 4) },
  { name: 'zeros', data: Buffer.alloc(size), lengths: recordLengths(size, 5) },
];

/** A WriteBatch for the given WRITE records, with a TRIM, a ZERO and a BARRIER mixed in. */
function batchFor(lengths: number[], storedLengths: number[], codecs: number[]): WriteBatch {
  const records: WriteRecord[] = lengths.map((length, i) => ({
    volumeIndex: i % 2, offset: i * 1048576, length, kind: WRITE, codec: codecs[i]!, storedLength: storedLengths[i]!,
  }));
  const extra = (kind: number, length: number): WriteRecord =>
    ({ volumeIndex: 1, offset: 4096, length, kind, codec: RecordCodec.RAW, storedLength: 0 });
  records.splice(1, 0, extra(TRIM, 8192));
  records.splice(3, 0, extra(ZERO, 65536), extra(BARRIER, 0));
  return { vmUuid: 'vm-1', firstSeq: 7, volumeUuids: ['vol-a', 'vol-b'], records, producedAtMs: 1234, generation: 3, fencingToken: 11 };
}

type Asserts = Pick<typeof t, 'ok' | 'fail'>;

async function expectCode(t: Asserts, p: Promise<unknown>, codes: string[], what: string): Promise<void> {
  let result: unknown;
  try {
    result = await p;
  } catch (err) {
    t.ok(isVrgError(err) && codes.includes(err.code), `${what}: rejected with ${codes.join('|')}`,
      { got: isVrgError(err) ? err.code : String(err) });
    return;
  }
  t.fail(`${what}: expected rejection, got a result`, { result: typeof result });
}

t.test('lz4 is the native binding', async (t) => {
  const require = createRequire(import.meta.url);
  t.equal(lz4BindingPath, require.resolve('lz4/build/Release/lz4.node'));
  t.match(lz4BindingPath, /node_modules[\\/]lz4[\\/]build[\\/]Release[\\/]lz4\.node$/);
  t.ok(require.cache[lz4BindingPath], 'the .node binding is loaded');
  t.ok(lz4IsNative(), 'encodeBlock is native code');
});

const codecs: Array<[string, () => Codec]> = [
  ['inline', () => new InlineCodec()],
  ['pool', () => new PoolCodec({ threads: 2, maxQueue: 2 })],
];

for (const [codecName, make] of codecs) {
  t.test(`${codecName}: round trips`, async (t) => {
    const codec = make();
    t.teardown(() => codec.close());
    let seq = 0;
    for (const ds of datasets) {
      for (const compress of [true, false]) {
        for (const encrypt of [true, false]) {
          const label = `${ds.name} compress=${compress} encrypt=${encrypt}`;
          const input = Buffer.from(ds.data);
          const c = await codec.compressRecords({ data: input, lengths: ds.lengths }, compress);
          t.equal(c.storedLengths.length, ds.lengths.length);
          t.equal(c.stored.length, c.storedLengths.reduce((a, b) => a + b, 0), `${label}: stored is the sum`);
          t.ok(c.stored.byteOffset === 0 && c.stored.byteLength === c.stored.buffer.byteLength, `${label}: owns its ArrayBuffer`);
          t.same(input, ds.data, `${label}: input untouched`);
          if (!compress || ds.name === 'random') {
            t.ok(c.codecs.every((x) => x === RecordCodec.RAW), `${label}: all RAW`);
            t.equal(c.stored.length, size, `${label}: stored == input length`);
          } else if (ds.name === 'zeros') {
            t.ok(c.codecs.every((x) => x === RecordCodec.LZ4), `${label}: all LZ4`);
            t.ok(c.stored.length < size / 100, `${label}: zeros shrink`);
          } else {
            const ratio = size / c.stored.length;
            t.ok(ratio > 1.5 && ratio < 3.5, `${label}: ratio about 2:1`, { ratio });
          }
          const header = encodeWriteBatch(batchFor(ds.lengths, c.storedLengths, c.codecs));
          const frame = await codec.sealBatch({ keys, seq, header, payload: c.stored, encrypt });
          const opened = await codec.openBatch({ keys, expectedSeq: seq, frame });
          seq++;
          t.ok(opened.data.equals(ds.data), `${label}: openBatch returns the input`);
          t.same(opened.batch, batchFor(ds.lengths, c.storedLengths, c.codecs), `${label}: header round trips`);
          t.equal(opened.batch.records[0]!.codec, c.codecs[0], `${label}: default fields survive`);
        }
      }
    }
  });

  t.test(`${codecName}: shipBatch compresses RAW journal records at ship time`, async (t) => {
    const codec = make();
    t.teardown(() => codec.close());
    let seq = 100;
    for (const ds of datasets) {
      for (const compress of [true, false]) {
        const label = `${ds.name} compress=${compress}`;
        const raw = batchFor(ds.lengths, ds.lengths, ds.lengths.map(() => RecordCodec.RAW));
        // An already compressed record (a journal written before ship-time compression) passes through as is.
        const lz4 = Buffer.allocUnsafe(lz4EncodeBound(ds.lengths[0]!));
        const n = lz4Encode(ds.data.subarray(0, ds.lengths[0]!), lz4);
        const mixed = n > 0 && n < ds.lengths[0]!;
        if (mixed) raw.records[0] = { ...raw.records[0]!, codec: RecordCodec.LZ4, storedLength: n };
        const payload = mixed ? Buffer.concat([lz4.subarray(0, n), ds.data.subarray(ds.lengths[0]!)]) : Buffer.from(ds.data);
        const before = Buffer.from(payload);
        const out = await codec.shipBatch({ keys, seq, batch: raw, payload, encrypt: true, compress });
        const parts: Buffer[] = [];
        for (let i = 0, at = 0; i < raw.records.length; at += raw.records[i]!.storedLength, i++) {
          parts.push(payload.subarray(at, at + raw.records[i]!.storedLength));
        }
        if (codec.takesParts) {
          const fromParts = await codec.shipBatch({ keys, seq, batch: raw, payload: parts, encrypt: true, compress });
          t.ok(Buffer.from(fromParts.frame).equals(out.frame), `${label}: one buffer per record seals the same frame`);
        } else {
          await expectCode(t, codec.shipBatch({ keys, seq, batch: raw, payload: parts, encrypt: true, compress }),
            [ErrorCode.INVALID_ARGUMENT], `${label}: the worker codec wants one buffer`);
        }
        const opened = await codec.openBatch({ keys, expectedSeq: seq, frame: out.frame });
        seq++;
        t.ok(opened.data.equals(ds.data), `${label}: DR gets the journal's bytes`);
        t.equal(opened.batch.records.length, raw.records.length, `${label}: every record, data or not`);
        t.equal(out.storedBytes, opened.batch.records.reduce((m, r) => m + r.storedLength, 0), `${label}: storedBytes is what the frame carries`);
        if (codecName === 'inline') t.same(payload, before, `${label}: input untouched`);
        const codecsOut = opened.batch.records.filter((r) => r.kind === WRITE).map((r) => r.codec);
        if (!compress || ds.name === 'random') {
          t.ok(codecsOut.slice(mixed ? 1 : 0).every((c) => c === RecordCodec.RAW), `${label}: RAW stays RAW`);
        } else {
          t.ok(codecsOut.every((c) => c === RecordCodec.LZ4), `${label}: every data record LZ4`);
          t.ok(out.storedBytes < size * 0.7, `${label}: fewer bytes on the wire`, { storedBytes: out.storedBytes });
        }
      }
    }
    const bad = batchFor([100], [100], [RecordCodec.RAW]);
    await expectCode(t, codec.shipBatch({ keys, seq, batch: bad, payload: Buffer.alloc(99), encrypt: true, compress: true }),
      [ErrorCode.FRAME_MALFORMED, ErrorCode.INVALID_ARGUMENT], 'records longer than the payload');
    if (codec.takesParts) {
      await expectCode(t, codec.shipBatch({ keys, seq, batch: bad, payload: [Buffer.alloc(99)], encrypt: true, compress: true }),
        [ErrorCode.INVALID_ARGUMENT], 'a part shorter than its record');
      await expectCode(t, codec.shipBatch({ keys, seq, batch: bad, payload: [], encrypt: true, compress: false }),
        [ErrorCode.INVALID_ARGUMENT], 'a part missing');
    }
  });

  t.test(`${codecName}: one flipped bit is rejected`, async (t) => {
    const codec = make();
    t.teardown(() => codec.close());
    const ds = datasets[0]!;
    const data = ds.data.subarray(0, 64 * 1024);
    const lengths = [16384, 16384, 32768];
    const c = await codec.compressRecords({ data, lengths }, true);
    const header = encodeWriteBatch(batchFor(lengths, c.storedLengths, c.codecs));
    for (const encrypt of [true, false]) {
      const frame = await codec.sealBatch({ keys, seq: 5, header, payload: c.stored, encrypt });
      const r = seededRandom(9);
      const bits: number[] = [];
      for (let b = 0; b < 24 * 8; b++) bits.push(b);                       // fixed fields and start of header
      for (let b = (frame.length - 16) * 8; b < frame.length * 8; b += 3) bits.push(b); // the tag
      for (let k = 0; k < 40; k++) bits.push(Math.floor(r.float() * frame.length * 8));  // anywhere
      for (const bit of bits) {
        const bad = Buffer.from(frame);
        bad[bit >> 3]! ^= 1 << (bit & 7);
        const byte = bit >> 3;
        // Bytes 0-15 carry length/type/flags/headerLen/seq: framing or sequence errors are also fine there.
        const allowed = byte >= 16 || (byte >= 4 && byte < 8)
          ? [ErrorCode.FRAME_AUTH_FAILED, ErrorCode.FRAME_MALFORMED]
          : [ErrorCode.FRAME_AUTH_FAILED, ErrorCode.FRAME_MALFORMED, ErrorCode.FRAME_TOO_LARGE, ErrorCode.FRAME_SEQUENCE];
        if (byte >= 16) allowed.splice(1);
        await expectCode(t, codec.openBatch({ keys, expectedSeq: 5, frame: bad }), allowed, `encrypt=${encrypt} bit ${bit}`);
      }
    }
    await expectCode(t, codec.openBatch({ keys, expectedSeq: 6, frame: await codec.sealBatch({ keys, seq: 5, header, payload: c.stored, encrypt: true }) }),
      [ErrorCode.FRAME_SEQUENCE], 'wrong sequence');
  });

  t.test(`${codecName}: lying headers`, async (t) => {
    const codec = make();
    t.teardown(() => codec.close());
    const plain = compressible(65536, 11);
    const block = Buffer.allocUnsafe(lz4EncodeBound(plain.length));
    const n = lz4Encode(plain, block);
    const lz4 = block.subarray(0, n);
    let seq = 100;
    const craft = (records: Array<Partial<WriteRecord>>, payload: Buffer, volumeUuids = ['v']): Promise<unknown> => {
      const batch: WriteBatch = {
        vmUuid: 'vm', firstSeq: 1, volumeUuids, producedAtMs: 0,
        records: records.map((r) => ({ volumeIndex: 0, offset: 0, length: 0, kind: WRITE, codec: 0, storedLength: 0, ...r })),
      };
      const frame = encodeFrame({ type: FrameType.WRITE_BATCH, seq, header: encodeWriteBatch(batch), payload }, { keys, encrypt: true });
      return codec.openBatch({ keys, expectedSeq: seq++, frame });
    };
    const lz4Rec = { kind: WRITE, codec: RecordCodec.LZ4, storedLength: lz4.length };
    const ok = (await craft([{ ...lz4Rec, length: plain.length }], lz4)) as { data: Buffer };
    t.ok(ok.data.equals(plain), 'the honest frame opens');
    const dec = [ErrorCode.DECOMPRESS_FAILED, ErrorCode.FRAME_MALFORMED];
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length + 1 }], lz4), dec, 'declared length larger');
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length - 1 }], lz4), dec, 'declared length smaller');
    await expectCode(t, craft([{ ...lz4Rec, length: 1 }], lz4), dec, 'declared length 1');
    const truncated = lz4.subarray(0, lz4.length >> 1);
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length, storedLength: truncated.length }], truncated), dec, 'truncated LZ4');
    const garbage = seededRandom(12).bytes(lz4.length);
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length }], garbage), dec, 'random bytes as LZ4');
    const zeroOffset = Buffer.from([0x10, 0x41, 0x00, 0x00, 0x00]); // literal 'A', then a match at offset 0
    await expectCode(t, craft([{ ...lz4Rec, length: 100, storedLength: zeroOffset.length }], zeroOffset), dec, 'match offset 0');

    const mal = [ErrorCode.FRAME_MALFORMED];
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length, storedLength: lz4.length - 1 }], lz4), mal, 'stored lengths short of payload');
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length, storedLength: lz4.length + 1 }], lz4), mal, 'stored lengths past payload');
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length, kind: 8 }], lz4), mal, 'kind 8');
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length, kind: 0 }], lz4), mal, 'kind 0');
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length, codec: 2 }], lz4), mal, 'codec 2');
    await expectCode(t, craft([{ ...lz4Rec, length: plain.length, volumeIndex: 1 }], lz4), mal, 'volume index out of range');
    await expectCode(t, craft([{ kind: WRITE, codec: 0, length: 10, storedLength: 9 }], Buffer.alloc(9)), mal, 'RAW stored != length');
    await expectCode(t, craft([{ kind: TRIM, length: 4096, storedLength: 4 }], Buffer.alloc(4)), mal, 'TRIM with payload');
    await expectCode(t, craft([{ kind: ZERO, length: 4096, storedLength: 4 }], Buffer.alloc(4)), mal, 'ZERO with payload');
    await expectCode(t, craft([{ kind: BARRIER, storedLength: 1 }], Buffer.alloc(1)), mal, 'BARRIER with payload');
    await expectCode(t, craft([{ kind: WRITE, codec: 1, length: 0xffffffff, storedLength: 5 }], Buffer.alloc(5)), mal, 'huge record');
    const notBatch = encodeFrame({ type: FrameType.ACK, seq, header: Buffer.alloc(0) }, { keys, encrypt: true });
    await expectCode(t, codec.openBatch({ keys, expectedSeq: seq++, frame: notBatch }), [ErrorCode.FRAME_UNEXPECTED], 'not a write batch');
    const frame = encodeFrame({ type: FrameType.WRITE_BATCH, seq, header: Buffer.from([0xff, 0xff, 0xff]), payload: Buffer.alloc(0) }, { keys, encrypt: true });
    await expectCode(t, codec.openBatch({ keys, expectedSeq: seq++, frame }), mal, 'undecodable header');
    const unsealed = encodeFrame({ type: FrameType.WRITE_BATCH, seq, header: encodeWriteBatch({ vmUuid: 'x', firstSeq: 1, volumeUuids: [], records: [], producedAtMs: 0 }) });
    await expectCode(t, codec.openBatch({ keys, expectedSeq: seq++, frame: unsealed }), [ErrorCode.FRAME_AUTH_FAILED], 'unsealed frame');
    const two = Buffer.concat([notBatch, notBatch]);
    await expectCode(t, codec.openBatch({ keys, expectedSeq: seq++, frame: two }), mal, 'two frames');

    // Declared plain total over the bound: 1 MiB zero records, LZ4 of a few KiB each.
    const mb = Buffer.alloc(MiB);
    const zb = Buffer.allocUnsafe(lz4EncodeBound(MiB));
    const zlz4 = Buffer.from(zb.subarray(0, lz4Encode(mb, zb)));
    const count = Math.floor(batchPlainBytesMax / MiB) + 1;
    const recs = Array.from({ length: count }, () => ({ kind: WRITE, codec: 1, length: MiB, storedLength: zlz4.length }));
    const payload = Buffer.concat(recs.map(() => zlz4));
    const allocSlow = Buffer.allocUnsafeSlow;
    let largest = 0;
    if (codecName === 'inline') {
      Buffer.allocUnsafeSlow = (n: number) => { largest = Math.max(largest, n); return allocSlow(n); };
    }
    try {
      await expectCode(t, craft(recs, payload), [ErrorCode.FRAME_TOO_LARGE], 'declared plain total over the bound');
    } finally {
      Buffer.allocUnsafeSlow = allocSlow;
    }
    t.ok(largest <= batchPlainBytesMax, 'nothing over the bound was allocated', { largest });
    const fits = recs.slice(0, count - 1);
    const big = (await craft(fits, Buffer.concat(fits.map(() => zlz4)))) as { data: Buffer };
    t.equal(big.data.length, (count - 1) * MiB, 'a batch at the bound opens');
  });
}

t.test('pool: backpressure, stats, errors across threads', async (t) => {
  const codec = new PoolCodec({ threads: 2, maxQueue: 1 });
  t.teardown(() => codec.close());
  const data = compressible(128 * 1024, 21);
  let maxWaiting = 0;
  const tasks = Array.from({ length: 60 }, async (_, i) => {
    const p = codec.compressRecords({ data, lengths: [65536, 65536] }, true);
    maxWaiting = Math.max(maxWaiting, codec.pending.waiting);
    const c = await p;
    if (i % 3 === 0) {
      // Every third task also fails in a worker: the error must come back with its code, not as a crash.
      await expectCode(t, codec.openBatch({ keys, expectedSeq: 0, frame: Buffer.from([0, 0, 0, 1, 3]) }),
        [ErrorCode.FRAME_MALFORMED], `task ${i} bad frame`);
    }
    return c.stored.length;
  });
  const sizes = await Promise.all(tasks);
  t.equal(sizes.length, 60, 'all tasks completed');
  t.ok(sizes.every((s) => s === sizes[0]), 'same result every time');
  t.ok(maxWaiting > 0, 'callers waited for room', { maxWaiting });
  t.same(codec.pending, { inFlight: 0, waiting: 0 });
  const s = codec.stats();
  t.equal(s.compress.calls, 60);
  t.equal(s.compress.bytesIn, 60 * data.length);
  t.ok(s.compress.bytesOut > 0 && s.compress.bytesOut < s.compress.bytesIn);
  t.ok(s.compress.busyNs > 0);
  const inline = new InlineCodec();
  t.equal((await inline.compressRecords({ data, lengths: [65536, 65536] }, true)).stored.length, sizes[0], 'pool and inline agree');
});

t.test('pool: transferInputs moves owned buffers, copies others', async (t) => {
  const codec = new PoolCodec({ threads: 1, transferInputs: true });
  t.teardown(() => codec.close());
  const owned = Buffer.allocUnsafeSlow(65536);
  compressible(65536, 31).copy(owned);
  const expected = Buffer.from(owned);
  const c = await codec.compressRecords({ data: owned, lengths: [65536] }, true);
  t.equal(owned.length, 0, 'the owned input was moved (detached)');
  const pooled = Buffer.from('small pooled buffer');
  const c2 = await codec.compressRecords({ data: pooled, lengths: [pooled.length] }, true);
  t.equal(pooled.toString(), 'small pooled buffer', 'a pooled input is copied, not detached');
  t.equal(c2.stored.length, pooled.length);
  const frame = await codec.sealBatch({ keys, seq: 0, header: encodeWriteBatch(batchFor([65536], c.storedLengths, c.codecs)), payload: c.stored, encrypt: true });
  const opened = await codec.openBatch({ keys, expectedSeq: 0, frame });
  t.ok(opened.data.equals(expected));
  const st = codec.stats();
  t.ok(st.seal.calls === 1 && st.open.calls === 1 && st.decompress.calls === 1);
  t.equal(st.decompress.bytesOut, 65536);
});

t.test('closed codecs reject', async (t) => {
  const pool = new PoolCodec({ threads: 1 });
  await pool.close();
  await expectCode(t, pool.compressRecords({ data: Buffer.alloc(1), lengths: [1] }, true), [ErrorCode.CLOSED], 'pool');
  const inline = new InlineCodec();
  await inline.close();
  await expectCode(t, inline.compressRecords({ data: Buffer.alloc(1), lengths: [1] }, true), [ErrorCode.CLOSED], 'inline');
});

t.test('the plain bytes a frame header declares, read before authentication, match the full decode', async (t) => {
  const { declaredPlainBytes } = await import('../src/pipeline/codec-ops.js');
  const rec = (kind: number, length: number): WriteRecord => ({ volumeIndex: 0, offset: 2 ** 40, length, kind, codec: 0, storedLength: 0 });
  const batch = (records: WriteRecord[]): Uint8Array => encodeWriteBatch({
    vmUuid: 'vm', firstSeq: 2 ** 33, volumeUuids: ['v'], records, producedAtMs: 1,
  });
  // WRITE 1, TRIM 2, ZERO 3, RESYNC 5: only WRITE and RESYNC carry data.
  t.equal(declaredPlainBytes(batch([rec(1, 65536), rec(2, 2 ** 31), rec(3, 4096), rec(5, 1 * MiB)])), 65536 + MiB, 'data-carrying kinds only');
  t.equal(declaredPlainBytes(batch([])), 0, 'no records');
  t.equal(declaredPlainBytes(batch([rec(1, batchPlainBytesMax), rec(1, 1)])), 0, 'over batchPlainBytesMax: 0');
  t.equal(declaredPlainBytes(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])), 0, 'not a WriteBatch: 0');
});
