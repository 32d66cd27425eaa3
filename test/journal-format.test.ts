import t from 'tap';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32, crc32c } from '../src/core/checksum.js';
import { seededRandom } from '../src/core/random.js';
import { Journal, RecordKind, type JournalRecordInput } from '../src/journal/journal.js';
import { HEADER_BYTES, RECORD_MAGIC, RECORD_MAGIC_V1, encodeHeader } from '../src/journal/record-codec.js';

// Journal record format versions: version 2 records carry a CRC32C (hardware-accelerated), version 1
// records (journals written before it) a zlib CRC-32. A version 1 journal still opens, reads and replays;
// new records are written as version 2, in the same segment if need be.

t.test('CRC32C: the standard check value, chaining, and the native binding', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283, 'check value of "123456789"');
  t.equal(crc32c(Buffer.from('56789'), crc32c(Buffer.from('1234'))), 0xe3069283, 'chains like one pass');
  t.equal(crc32(Buffer.from('123456789')), 0xcbf43926, 'zlib CRC-32 check value (version 1 records)');
  const big = seededRandom(3).bytes(1 << 20);
  t.equal(crc32c(big.subarray(4096), crc32c(big.subarray(0, 4096))), crc32c(big), 'chains over 1 MiB');
  const { createRequire } = await import('node:module');
  const require = createRequire(import.meta.url);
  const binding = Object.keys(require.cache).find((p) => /@node-rs[\\/]crc32-[^\\/]+[\\/].*\.node$/.test(p));
  t.ok(binding, `the prebuilt native binding is loaded (${binding ?? 'none'})`);
});

function records(n: number, seed: number): JournalRecordInput[] {
  const rnd = seededRandom(seed);
  return Array.from({ length: n }, (_, i) => {
    const size = 100 + (rnd.uint32() % 4000);
    return { volumeIndex: 0, offset: i * 8192, length: size, kind: RecordKind.WRITE, codec: 0, payload: rnd.bytes(size) };
  });
}

/** A version 1 header: the same fields, magic VRGJ and a zlib CRC-32 (as journals before version 2 wrote it). */
function encodeHeaderV1(buf: Buffer, at: number, seq: number, timestampMs: number, rec: JournalRecordInput): void {
  encodeHeader(buf, at, seq, timestampMs, rec);
  buf.writeUInt32LE(RECORD_MAGIC_V1, at);
  buf.writeUInt32LE(crc32(rec.payload, crc32(buf.subarray(at + 8, at + HEADER_BYTES))), at + 4);
}

/** A segment file as a version 1 journal wrote it. */
function writeV1Segment(dir: string, firstSeq: number, recs: JournalRecordInput[]): void {
  const parts: Buffer[] = [];
  recs.forEach((r, i) => {
    const h = Buffer.alloc(HEADER_BYTES);
    encodeHeaderV1(h, 0, firstSeq + i, 1_700_000_000_000 + i, r);
    parts.push(h, r.payload);
  });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `seg-${String(firstSeq).padStart(16, '0')}.vrgj`), Buffer.concat(parts));
}

function magics(dir: string): number[] {
  const out: number[] = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.vrgj')).sort()) {
    const b = readFileSync(join(dir, f));
    for (let at = 0; at < b.length; at += HEADER_BYTES + b.readUInt32LE(at + 40)) out.push(b.readUInt32LE(at));
  }
  return out;
}

t.test('a version 1 journal opens and reads back; new appends are version 2 and reopen with it', async (t) => {
  const dir = join(t.testdir(), 'j');
  const old = records(20, 1);
  writeV1Segment(dir, 1, old);
  const j = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes: 0 });
  t.equal(j.firstSeq, 1);
  t.equal(j.lastSeq, 20, 'every version 1 record was accepted');
  const got = await j.read(1, Infinity);
  t.ok(got.length === 20 && got.every((r, i) => r.seq === i + 1 && r.payload.equals(old[i]!.payload)), 'payloads as written');
  const fresh = records(5, 2);
  await j.append(fresh);
  await j.close();
  t.same(magics(dir), [...Array(20).fill(RECORD_MAGIC_V1), ...Array(5).fill(RECORD_MAGIC)], 'old records v1, new ones v2');
  const again = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes: 0 });
  const all = await again.read(1, Infinity);
  t.equal(again.lastSeq, 25, 'a mixed segment reopens whole');
  t.ok(all.slice(20).every((r, i) => r.payload.equals(fresh[i]!.payload)), 'the version 2 records read back');
  await again.close();
});

t.test('a damaged version 1 record is still caught by its CRC-32 (torn tail cut)', async (t) => {
  const dir = join(t.testdir(), 'j');
  const old = records(10, 4);
  writeV1Segment(dir, 1, old);
  const file = join(dir, readdirSync(dir)[0]!);
  const b = readFileSync(file);
  b[b.length - 5]! ^= 0x40; // a payload byte of the last record
  writeFileSync(file, b);
  const j = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes: 0 });
  t.equal(j.lastSeq, 9, 'the damaged last record is cut, the nine before it kept');
  await j.close();
});

t.test('a version 2 header read with the version 1 checksum fails: the magic picks the algorithm', async (t) => {
  const dir = join(t.testdir(), 'j');
  const j = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes: 0 });
  await j.append(records(3, 5));
  await j.close();
  const file = join(dir, readdirSync(dir)[0]!);
  const b = readFileSync(file);
  b.writeUInt32LE(RECORD_MAGIC_V1, 0); // relabel the first record as version 1: its CRC no longer matches
  writeFileSync(file, b);
  const again = await Journal.open({ dir, capacityBytes: 64 << 20, cacheBytes: 0 });
  t.equal(again.lastSeq, 0, 'the relabelled record fails its check and is cut with what follows (a torn tail)');
  await again.close();
});
