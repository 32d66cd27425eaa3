import t, { type Test } from 'tap';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { Journal, RecordKind, type JournalRecordInput } from '../src/journal/journal.js';
import { seededRandom } from '../src/core/random.js';

const HEADER = 48;

function makeRecords(rnd: ReturnType<typeof seededRandom>, n: number, maxPayload: number): JournalRecordInput[] {
  const out: JournalRecordInput[] = [];
  for (let i = 0; i < n; i++) {
    const size = 1 + (rnd.uint32() % maxPayload);
    out.push({ volumeIndex: 1, offset: i * 4096, length: size, kind: RecordKind.WRITE, codec: 0, payload: rnd.bytes(size) });
  }
  return out;
}

function segFiles(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.startsWith('seg-') && n.endsWith('.vrgj')).sort();
}

function captureLogger(): { logger: Logger; warnings: Record<string, unknown>[] } {
  const warnings: Record<string, unknown>[] = [];
  const logger = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line)) });
  return { logger, warnings };
}

/** A journal of several segments; returns the payloads by seq (index 0 = seq 1). */
async function buildJournal(dir: string, seed: number, appends: number, segmentBytes = 2048): Promise<Buffer[]> {
  const rnd = seededRandom(seed);
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes });
  const payloads: Buffer[] = [];
  for (let a = 0; a < appends; a++) {
    const recs = makeRecords(rnd, 1 + (a % 2), 300);
    await j.append(recs);
    payloads.push(...recs.map((r) => r.payload));
  }
  await j.close();
  return payloads;
}

function copyDir(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const f of segFiles(from)) copyFileSync(join(from, f), join(to, f));
}

async function expectPrefix(t: Test, dir: string, payloads: Buffer[], n: number, fileLen: number | null, label: string): Promise<void> {
  const { logger, warnings } = captureLogger();
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 2048, logger, cacheBytes: 0 });
  const got = await j.read(1, Infinity);
  const ok = j.lastSeq === n && got.length === n && got.every((g, i) => g.seq === i + 1 && g.payload.equals(payloads[i]!));
  if (!ok) t.fail(`${label}: expected the intact prefix of ${n} records, got ${got.length} (lastSeq ${j.lastSeq})`);
  const last = segFiles(dir).at(-1)!;
  if (fileLen !== null && statSync(join(dir, last)).size !== fileLen) t.fail(`${label}: last segment not truncated to ${fileLen}`);
  if (fileLen !== null && warnings.length !== 1) t.fail(`${label}: expected one warning, got ${warnings.length}`);
  const r = await j.append(makeRecords(seededRandom(n), 1, 50));
  if (r.firstSeq !== n + 1) t.fail(`${label}: next append got seq ${r.firstSeq}, expected ${n + 1}`);
  await j.close();
  const again = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 2048 });
  if (again.lastSeq !== n + 1) t.fail(`${label}: reopen after repair lost the new record`);
  await again.close();
}

t.test('torn tail: truncation at every byte offset inside the last record', async (t) => {
  const base = t.testdir();
  const tpl = join(base, 'tpl');
  const payloads = await buildJournal(tpl, 1, 12);
  const last = segFiles(tpl).at(-1)!;
  const bytes = readFileSync(join(tpl, last));
  const lastLen = HEADER + payloads.at(-1)!.length;
  const lastStart = bytes.length - lastLen;
  t.ok(lastStart > 0, 'the last segment holds more than one record');
  const n = payloads.length;
  for (let cut = lastStart; cut < bytes.length; cut++) {
    const dir = join(base, `cut-${cut}`);
    copyDir(tpl, dir);
    writeFileSync(join(dir, last), bytes.subarray(0, cut));
    // cut === lastStart is a clean header boundary: nothing to repair
    await expectPrefix(t, dir, payloads, n - 1, cut === lastStart ? null : lastStart, `cut at ${cut}`);
  }
  t.pass(`${bytes.length - lastStart} truncation points checked`);
  // the untouched template still opens whole
  await expectPrefix(t, tpl, payloads, n, null, 'template');
});

t.test('torn tail: a bad payload byte, a bad header byte, garbage after the end', async (t) => {
  const base = t.testdir();
  const tpl = join(base, 'tpl');
  const payloads = await buildJournal(tpl, 2, 12);
  const n = payloads.length;
  const last = segFiles(tpl).at(-1)!;
  const bytes = readFileSync(join(tpl, last));
  const lastStart = bytes.length - HEADER - payloads.at(-1)!.length;
  const variants: [string, (b: Buffer) => Buffer, number, number | null][] = [
    ['flipped payload byte', (b) => { const c = Buffer.from(b); c[c.length - 1]! ^= 1; return c; }, n - 1, lastStart],
    ['flipped seq byte', (b) => { const c = Buffer.from(b); c[lastStart + 8]! ^= 0x10; return c; }, n - 1, lastStart],
    ['flipped magic', (b) => { const c = Buffer.from(b); c[lastStart]! ^= 0xff; return c; }, n - 1, lastStart],
    ['flipped crc', (b) => { const c = Buffer.from(b); c[lastStart + 5]! ^= 0x01; return c; }, n - 1, lastStart],
    ['huge payload length', (b) => { const c = Buffer.from(b); c.writeUInt32LE(0xfffffff0, lastStart + 40); return c; }, n - 1, lastStart],
    ['garbage after the end', (b) => Buffer.concat([b, seededRandom(4).bytes(777)]), n, bytes.length],
    ['a header-like garbage tail', (b) => Buffer.concat([b, b.subarray(lastStart, lastStart + HEADER + 3)]), n, bytes.length],
    ['zeros after the end', (b) => Buffer.concat([b, Buffer.alloc(4096)]), n, bytes.length],
  ];
  for (const [label, damage, keep, len] of variants) {
    const dir = join(base, label.replace(/ /g, '-'));
    copyDir(tpl, dir);
    writeFileSync(join(dir, last), damage(bytes));
    await expectPrefix(t, dir, payloads, keep, len, label);
  }
  t.pass('variants checked');
});

t.test('torn tail warning carries the byte counts', async (t) => {
  const dir = t.testdir();
  const payloads = await buildJournal(dir, 3, 6);
  const last = segFiles(dir).at(-1)!;
  const bytes = readFileSync(join(dir, last));
  writeFileSync(join(dir, last), bytes.subarray(0, bytes.length - 5));
  const { logger, warnings } = captureLogger();
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 2048, logger });
  t.equal(j.lastSeq, payloads.length - 1);
  t.equal(warnings.length, 1);
  const lastLen = HEADER + payloads.at(-1)!.length;
  t.match(warnings[0], { keptBytes: bytes.length - lastLen, cutBytes: lastLen - 5, reason: 'short payload' });
  t.equal(j.stats.tailsCut, 1);
  await j.close();
});

t.test('a last segment torn down to nothing keeps its seq', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(8);
  const j = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 1000 });
  for (let a = 0; a < 5; a++) await j.append(makeRecords(rnd, 1, 900).map((r) => ({ ...r, payload: Buffer.alloc(950, a) })));
  const lastSeq = j.lastSeq;
  await j.close();
  const last = segFiles(dir).at(-1)!;
  t.equal(statSync(join(dir, last)).size, HEADER + 950, 'one record in the last segment');
  writeFileSync(join(dir, last), readFileSync(join(dir, last)).subarray(0, 20));
  let k = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 1000 });
  t.equal(k.lastSeq, lastSeq - 1);
  t.equal(statSync(join(dir, last)).size, 0);
  await k.trim(k.lastSeq); // everything acknowledged: only the empty segment remains
  t.same(segFiles(dir), [last]);
  await k.close();
  k = await Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 1000 });
  t.equal(k.firstSeq, lastSeq, 'the empty newest segment still carries the next seq');
  t.equal(k.lastSeq, lastSeq - 1);
  t.same(await k.append(makeRecords(rnd, 1, 10)), { firstSeq: lastSeq, lastSeq });
  await k.close();
});

t.test('corruption in an older segment refuses to open', async (t) => {
  const base = t.testdir();
  const tpl = join(base, 'tpl');
  await buildJournal(tpl, 5, 20);
  const files = segFiles(tpl);
  t.ok(files.length >= 3);
  const cases: [string, (dir: string) => void][] = [
    ['flipped byte in the middle of the first segment', (dir) => {
      const p = join(dir, files[0]!);
      const b = readFileSync(p);
      b[Math.floor(b.length / 2)]! ^= 0x04;
      writeFileSync(p, b);
    }],
    ['torn tail of a non-last segment', (dir) => {
      const p = join(dir, files[1]!);
      const b = readFileSync(p);
      writeFileSync(p, b.subarray(0, b.length - 7));
    }],
    ['a missing middle segment', (dir) => unlinkSync(join(dir, files[1]!))],
  ];
  for (const [label, damage] of cases) {
    const dir = join(base, label.replace(/ /g, '-'));
    copyDir(tpl, dir);
    damage(dir);
    const sizes = segFiles(dir).map((f) => statSync(join(dir, f)).size);
    await t.rejects(Journal.open({ dir, capacityBytes: 1 << 20, segmentBytes: 2048 }), { code: 'VRG_JOURNAL_CORRUPT' }, label);
    t.same(segFiles(dir).map((f) => statSync(join(dir, f)).size), sizes, `${label}: nothing truncated`);
  }
});

t.test('corruption followed by intact records well beyond one group commit in the last segment', async (t) => {
  const dir = t.testdir();
  const rnd = seededRandom(6);
  const j = await Journal.open({ dir, capacityBytes: 128 << 20, segmentBytes: 32 << 20 });
  for (let a = 0; a < 7; a++) await j.append([{ volumeIndex: 0, offset: a << 20, length: 1 << 20, kind: RecordKind.WRITE, codec: 0, payload: rnd.bytes(1 << 20) }]);
  await j.close();
  const [only] = segFiles(dir);
  const p = join(dir, only!);
  const b = readFileSync(p);
  const size = b.length;
  b[HEADER + 100]! ^= 0x01; // first record's payload; 6 MiB of intact records follow
  writeFileSync(p, b);
  await t.rejects(Journal.open({ dir, capacityBytes: 128 << 20, segmentBytes: 32 << 20 }), { code: 'VRG_JOURNAL_CORRUPT' });
  t.equal(statSync(p).size, size, 'nothing truncated');
});
