import t, { type Test } from 'tap';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { StageStore, type StagedOp } from '../src/replication/target/stage-store.js';
import { ErrorCode, isVrgError } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';

const VOLUME_BYTES = 64 * 1024;
const VOLUMES = 2;
const quiet = pino({ level: 'silent' });

function captureLogger(): { logger: Logger; warnings: Record<string, unknown>[] } {
  const warnings: Record<string, unknown>[] = [];
  const logger = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line)) });
  return { logger, warnings };
}

/** Target volumes held in memory: StageStore knows nothing of volumes, only of ops. */
function newImages(): Buffer[] {
  return Array.from({ length: VOLUMES }, (_, i) => Buffer.alloc(VOLUME_BYTES, 0x11 * (i + 1)));
}

function applyTo(images: Buffer[], ops: readonly StagedOp[]): void {
  for (const op of ops) {
    const img = images[op.volumeIndex]!;
    if (op.kind === 'write') op.data!.copy(img, op.offset);
    else img.fill(0, op.offset, op.offset + op.length);
  }
}

/** Random ops that overlap one another, so the order they are applied in shows in the image. */
function makeOps(rnd: ReturnType<typeof seededRandom>, n: number): StagedOp[] {
  const ops: StagedOp[] = [];
  for (let i = 0; i < n; i++) {
    const length = 1 + (rnd.uint32() % 3000);
    const offset = rnd.uint32() % (VOLUME_BYTES - length);
    const volumeIndex = rnd.uint32() % VOLUMES;
    const write = rnd.uint32() % 4 !== 0;
    ops.push({ volumeIndex, offset, length, kind: write ? 'write' : 'zero', data: write ? rnd.bytes(length) : null });
  }
  return ops;
}

function sameImages(a: Buffer[], b: Buffer[]): boolean {
  return a.length === b.length && a.every((img, i) => img.equals(b[i]!));
}

async function expectCode(t: Test, fn: () => unknown, code: string, label: string): Promise<void> {
  try {
    await fn();
    t.fail(`${label}: expected ${code}`);
  } catch (err) {
    t.ok(isVrgError(err) && err.code === code, `${label}: ${code}`, { got: (err as Error).message });
  }
}

/** Stages begin at `first`, then `records` records of ops, syncing after each; returns the ops by record and the file size after each. */
async function buildStage(path: string, seed: number, first: number, records: number): Promise<{ recs: StagedOp[][]; sizes: number[] }> {
  const rnd = seededRandom(seed);
  const s = await StageStore.open({ path, durableSeq: 0, logger: quiet });
  const recs: StagedOp[][] = [];
  s.begin(first);
  await s.sync();
  const sizes = [statSync(path).size];
  for (let i = 0; i < records; i++) {
    const ops = makeOps(rnd, 1 + (i % 3));
    s.append(first + 1 + i, ops);
    await s.sync();
    recs.push(ops);
    sizes.push(statSync(path).size);
  }
  await s.close();
  return { recs, sizes };
}

t.test('begin/append/sync/commit applies every op in order in bounded chunks, then clears', async (t) => {
  const path = join(t.testdir(), 'vm', 'stage.log');
  const rnd = seededRandom(7);
  const s = await StageStore.open({ path, durableSeq: 0, logger: quiet, applyChunkBytesMax: 8192 });
  const expected = newImages();
  const images = newImages();
  s.begin(10);
  t.equal(s.active, true);
  t.equal(s.beganSeq, 10);
  let ops = 0;
  for (let seq = 11; seq <= 40; seq++) {
    const rec = makeOps(rnd, 1 + (seq % 4));
    s.append(seq, rec);
    applyTo(expected, rec);
    ops += rec.length;
    if (seq % 7 === 0) await s.sync();
  }
  await s.sync();
  t.equal(s.stagedOps, ops);
  t.equal(s.stagedBytes, statSync(path).size, 'stagedBytes is the durable file size after sync');
  t.ok(sameImages(images, newImages()), 'nothing reaches the targets before the commit');
  const chunks: number[] = [];
  let sizeBeforeClear = -1;
  await s.commit(41, async (chunk) => {
    chunks.push(chunk.reduce((n, op) => n + (op.kind === 'write' ? op.length : 0), 0));
    applyTo(images, chunk);
  }, async () => {
    sizeBeforeClear = statSync(path).size;
  });
  t.ok(chunks.length > 3, `applied in ${chunks.length} chunks`);
  t.ok(chunks.every((n) => n <= 8192 + 3000), 'each chunk is bounded (one record may overshoot the soft bound)');
  t.ok(sameImages(images, expected), 'the applied image equals the in-memory one, byte for byte');
  t.ok(sizeBeforeClear > 0, 'beforeClear runs while the stage is still on disk');
  t.equal(statSync(path).size, 0, 'cleared');
  t.equal(s.active, false);
  t.equal(s.committedSeq, null);
  t.equal(s.stagedOps, 0);
  t.equal(s.stagedBytes, 0);
  // A second stage works the same way on the emptied file.
  s.begin(50);
  const more = makeOps(rnd, 5);
  s.append(51, more);
  applyTo(expected, more);
  await s.commit(52, async (chunk) => applyTo(images, chunk));
  t.ok(sameImages(images, expected), 'second stage applied');
  t.equal(await s.recover(async () => void t.fail('nothing to recover')), false);
  await s.close();
  const again = await StageStore.open({ path, durableSeq: 52, logger: quiet });
  t.equal(again.active, false);
  await again.close();
});

t.test('reopen with an uncommitted stage keeps it, drops what was never synced, and appending continues', async (t) => {
  const path = join(t.testdir(), 'stage.log');
  const { recs } = await buildStage(path, 3, 100, 12);
  const s = await StageStore.open({ path, durableSeq: 112, logger: quiet });
  s.append(113, makeOps(seededRandom(99), 2)); // never synced: lost at close
  await s.close();
  const { logger, warnings } = captureLogger();
  const r = await StageStore.open({ path, durableSeq: 112, logger });
  t.equal(warnings.length, 0, 'a clean file needs no repair');
  t.equal(r.active, true);
  t.equal(r.beganSeq, 100);
  t.equal(r.committedSeq, null);
  t.equal(r.stagedOps, recs.flat().length);
  t.equal(r.lastSeq, 112);
  const more = makeOps(seededRandom(5), 3);
  r.append(113, more);
  await r.sync();
  await r.close();
  const images = newImages();
  const expected = newImages();
  for (const ops of [...recs, more]) applyTo(expected, ops);
  const c = await StageStore.open({ path, durableSeq: 113, logger: quiet });
  t.equal(c.stagedOps, recs.flat().length + 3);
  await c.commit(114, async (ops) => applyTo(images, ops));
  t.ok(sameImages(images, expected), 'image after the commit');
  await c.close();
});

t.test('records past durableSeq are dropped on open; a durable commit marker is kept whatever durableSeq says', async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'stage.log');
  const { recs, sizes } = await buildStage(path, 11, 10, 20); // begin 10, records 11..30
  const tpl = readFileSync(path);

  const s = await StageStore.open({ path, durableSeq: 20, logger: quiet });
  t.equal(statSync(path).size, sizes[10], 'cut after record 20');
  t.equal(s.stagedOps, recs.slice(0, 10).flat().length);
  t.equal(s.lastSeq, 20);
  s.append(20, makeOps(seededRandom(1), 1));
  t.equal(s.duplicatesSkipped, 1, 'seq 20 is a duplicate');
  s.append(21, recs[10]!);
  await s.sync();
  t.equal(statSync(path).size, sizes[11], 'the resent record 21 lands where it was');
  t.ok(readFileSync(path).equals(tpl.subarray(0, sizes[11])), 'byte for byte the same records');
  await s.close();

  writeFileSync(path, tpl);
  const none = await StageStore.open({ path, durableSeq: 9, logger: quiet });
  t.equal(none.active, false, 'even the begin marker was never acknowledged');
  t.equal(statSync(path).size, 0);
  await none.close();

  writeFileSync(path, tpl);
  const c = await StageStore.open({ path, durableSeq: 30, logger: quiet });
  await t.rejects(c.commit(31, async () => {
    throw new Error('target down');
  }));
  await c.close();
  const { logger, warnings } = captureLogger();
  const k = await StageStore.open({ path, durableSeq: 25, logger });
  t.equal(k.committedSeq, 31, 'the commit marker and the whole stage are kept');
  t.equal(k.stagedOps, recs.flat().length);
  t.equal(warnings.length, 1, 'with a warning');
  const images = newImages();
  const expected = newImages();
  for (const ops of recs) applyTo(expected, ops);
  t.equal(await k.recover(async (ops) => applyTo(images, ops)), true);
  t.ok(sameImages(images, expected));
  await k.close();
});

t.test('torn tail: truncation at random byte positions is cut, the rest survives and stays usable', async (t) => {
  const base = t.testdir();
  const tplPath = join(base, 'tpl.log');
  const { recs, sizes } = await buildStage(tplPath, 21, 1, 15); // begin 1, records 2..16
  const tpl = readFileSync(tplPath);
  const rnd = seededRandom(2024);
  const cuts = new Set<number>([0, 1, sizes[0]!, sizes[0]! + 1, tpl.length - 1, ...sizes.slice(3, 5)]);
  while (cuts.size < 60) cuts.add(rnd.uint32() % tpl.length);
  for (const cut of cuts) {
    const path = join(base, `cut-${cut}.log`);
    writeFileSync(path, tpl.subarray(0, cut));
    const { logger, warnings } = captureLogger();
    const kept = sizes.filter((b) => b <= cut).length; // begin (seq 1) + kept-1 records survive
    // The torn record was never synced, so never acknowledged: durableSeq is the last surviving seq.
    const s = await StageStore.open({ path, durableSeq: kept, logger });
    const good = kept === 0 ? 0 : sizes[kept - 1]!;
    const label = `cut at ${cut}`;
    if (statSync(path).size !== good) t.fail(`${label}: file cut to ${statSync(path).size}, expected ${good}`);
    if (warnings.length !== (cut === good ? 0 : 1)) t.fail(`${label}: ${warnings.length} warnings`);
    if (kept === 0) {
      if (s.active || s.stagedOps !== 0) t.fail(`${label}: expected no stage`);
      await s.close();
      continue;
    }
    const survivors = recs.slice(0, kept - 1);
    if (s.beganSeq !== 1 || s.stagedOps !== survivors.flat().length) t.fail(`${label}: stage not as expected`);
    const next = makeOps(seededRandom(cut), 2);
    s.append(kept + 1, next); // the resent record after the survivors
    const expected = newImages();
    for (const ops of [...survivors, next]) applyTo(expected, ops);
    const images = newImages();
    await s.commit(kept + 2, async (ops) => applyTo(images, ops));
    if (!sameImages(images, expected)) t.fail(`${label}: image differs`);
    await s.close();
  }
  t.pass(`${cuts.size} cut positions`);
});

t.test('corruption followed by intact records is refused; a bad last record is a torn tail', async (t) => {
  const base = t.testdir();
  const tplPath = join(base, 'tpl.log');
  const { sizes } = await buildStage(tplPath, 31, 1, 10);
  const tpl = readFileSync(tplPath);
  const flips = [sizes[4]! + 30, sizes[4]! + 5, sizes[0]! - 3, 2]; // payload, header crc, begin seq, magic
  for (const at of flips) {
    const path = join(base, `flip-${at}.log`);
    const bytes = Buffer.from(tpl);
    bytes[at]! ^= 0x40;
    writeFileSync(path, bytes);
    await expectCode(t, () => StageStore.open({ path, durableSeq: 1000, logger: quiet }), ErrorCode.STAGE_CORRUPT, `flip at ${at}`);
    t.ok(readFileSync(path).equals(bytes), `flip at ${at}: the file is left alone`);
  }
  const path = join(base, 'last.log');
  const bytes = Buffer.from(tpl);
  bytes[sizes[9]! + 30]! ^= 0x40; // inside the last record
  writeFileSync(path, bytes);
  const { logger, warnings } = captureLogger();
  const s = await StageStore.open({ path, durableSeq: 1000, logger });
  t.equal(statSync(path).size, sizes[9], 'the bad last record is cut');
  t.equal(warnings.length, 1);
  t.equal(s.lastSeq, 1000);
  await s.close();
});

t.test('a durable commit not cleared (apply failed mid-way) is recovered to exactly the same image', async (t) => {
  const base = t.testdir();
  const path = join(base, 'stage.log');
  const rnd = seededRandom(41);
  const s = await StageStore.open({ path, durableSeq: 0, logger: quiet, applyChunkBytesMax: 4096 });
  const expected = newImages();
  s.begin(1);
  for (let seq = 2; seq <= 25; seq++) {
    const ops = makeOps(rnd, 2);
    s.append(seq, ops);
    applyTo(expected, ops);
  }
  await s.sync();
  const images = newImages();
  let calls = 0;
  const failing = async (ops: StagedOp[]): Promise<void> => {
    if (++calls === 3) throw new Error('target down');
    applyTo(images, ops);
  };
  await t.rejects(s.commit(26, failing), { message: 'target down' });
  t.equal(s.committedSeq, 26, 'still committed in memory');
  t.ok(statSync(path).size > 0, 'not cleared');
  t.notOk(sameImages(images, expected), 'the targets hold a partial apply');
  await expectCode(t, () => s.append(27, makeOps(rnd, 1)), ErrorCode.ILLEGAL_TRANSITION, 'append after the commit');
  await expectCode(t, () => s.commit(27, failing), ErrorCode.ILLEGAL_TRANSITION, 'another commit');
  await expectCode(t, () => s.begin(27), ErrorCode.ILLEGAL_TRANSITION, 'a new stage');
  await s.close(); // crash before the clear

  const r = await StageStore.open({ path, durableSeq: 25, logger: quiet, applyChunkBytesMax: 4096 });
  t.equal(r.committedSeq, 26);
  t.equal(r.active, true);
  let cleared = false;
  t.equal(await r.recover(async (ops) => applyTo(images, ops), async () => void (cleared = true)), true);
  t.ok(cleared, 'beforeClear ran');
  t.ok(sameImages(images, expected), 'the partial apply is redone to exactly the committed image');
  t.equal(statSync(path).size, 0);
  t.equal(r.committedSeq, null);
  t.equal(await r.recover(async () => void t.fail('nothing left')), false);
  r.begin(26); // a duplicate of the committed stage's seqs
  t.equal(r.active, false, 'seqs at or below the commit are duplicates');
  await r.close();

  // The same failure retried in process: commit(sameSeq) redoes the whole apply.
  const path2 = join(base, 'retry.log');
  const s2 = await StageStore.open({ path: path2, durableSeq: 0, logger: quiet });
  s2.begin(1);
  const ops = makeOps(rnd, 4);
  s2.append(2, ops);
  await t.rejects(s2.commit(3, async () => {
    throw new Error('once');
  }));
  const img2 = newImages();
  await s2.commit(3, async (o) => applyTo(img2, o));
  const exp2 = newImages();
  applyTo(exp2, ops);
  t.ok(sameImages(img2, exp2), 'retried commit applied');
  t.equal(statSync(path2).size, 0);
  await s2.close();
});

t.test('duplicate seqs are skipped and counted', async (t) => {
  const dir = t.testdir();
  const a = await StageStore.open({ path: join(dir, 'a.log'), durableSeq: 0, logger: quiet });
  const b = await StageStore.open({ path: join(dir, 'b.log'), durableSeq: 0, logger: quiet });
  const rnd = seededRandom(51);
  const r11 = makeOps(rnd, 2);
  const r12 = makeOps(rnd, 1);
  for (const s of [a, b]) {
    s.begin(10);
    s.append(11, r11);
    s.append(12, r12);
  }
  b.begin(10); // a stage is open: no-op
  b.begin(99); // a stage is open: no-op
  b.append(12, makeOps(rnd, 3));
  b.append(11, makeOps(rnd, 3));
  b.append(10, makeOps(rnd, 3));
  t.equal(b.duplicatesSkipped, 3);
  t.equal(b.stagedOps, 3);
  await a.sync();
  await b.sync();
  t.ok(readFileSync(join(dir, 'a.log')).equals(readFileSync(join(dir, 'b.log'))), 'duplicates leave no trace in the file');
  await b.commit(13, async () => {});
  await b.commit(13, async () => void t.fail('a resent commit applies nothing'));
  b.append(12, r12);
  b.begin(11);
  t.equal(b.duplicatesSkipped, 6);
  t.equal(b.active, false);
  await a.close();
  await b.close();
  const c = await StageStore.open({ path: join(dir, 'c.log'), durableSeq: 40, logger: quiet });
  c.begin(40);
  t.equal(c.active, false, 'at or below durableSeq: already acknowledged');
  c.begin(41);
  t.equal(c.beganSeq, 41);
  await c.close();
});

t.test('bad input is refused with a stable code and changes nothing', async (t) => {
  const path = join(t.testdir(), 'stage.log');
  const s = await StageStore.open({ path, durableSeq: 0, logger: quiet, stageBytesMax: 64 * 1024 });
  const d = (n: number): Buffer => Buffer.alloc(n, 7);
  await expectCode(t, () => s.append(1, [{ volumeIndex: 0, offset: 0, length: 4, kind: 'write', data: d(4) }]), ErrorCode.ILLEGAL_TRANSITION, 'append without begin');
  await expectCode(t, () => s.commit(1, async () => {}), ErrorCode.ILLEGAL_TRANSITION, 'commit without begin');
  s.begin(5);
  s.append(6, [{ volumeIndex: 1, offset: 100, length: 10, kind: 'write', data: d(10) }]);
  await s.sync();
  const before = readFileSync(path);
  const state = (): string => JSON.stringify([s.active, s.beganSeq, s.committedSeq, s.stagedOps, s.stagedBytes, s.lastSeq]);
  const was = state();
  const bad: Array<[string, () => unknown, string]> = [
    ['data length mismatch', () => s.append(7, [{ volumeIndex: 0, offset: 0, length: 5, kind: 'write', data: d(4) }]), ErrorCode.INVALID_ARGUMENT],
    ['write without data', () => s.append(7, [{ volumeIndex: 0, offset: 0, length: 5, kind: 'write', data: null }]), ErrorCode.INVALID_ARGUMENT],
    ['zero with data', () => s.append(7, [{ volumeIndex: 0, offset: 0, length: 4, kind: 'zero', data: d(4) }]), ErrorCode.INVALID_ARGUMENT],
    ['negative offset', () => s.append(7, [{ volumeIndex: 0, offset: -1, length: 4, kind: 'zero', data: null }]), ErrorCode.INVALID_ARGUMENT],
    ['zero length', () => s.append(7, [{ volumeIndex: 0, offset: 0, length: 0, kind: 'zero', data: null }]), ErrorCode.INVALID_ARGUMENT],
    ['volume index', () => s.append(7, [{ volumeIndex: 70_000, offset: 0, length: 4, kind: 'zero', data: null }]), ErrorCode.INVALID_ARGUMENT],
    ['bad kind', () => s.append(7, [{ volumeIndex: 0, offset: 0, length: 4, kind: 'trim' as 'zero', data: null }]), ErrorCode.INVALID_ARGUMENT],
    ['seq not an integer', () => s.append(7.5, []), ErrorCode.INVALID_ARGUMENT],
    ['seq zero', () => s.begin(0), ErrorCode.INVALID_ARGUMENT],
    ['commit not after the staged seqs', () => s.commit(6, async () => {}), ErrorCode.INVALID_ARGUMENT],
    ['too many ops', () => s.append(7, Array.from({ length: 1025 }, () => ({ volumeIndex: 0, offset: 0, length: 1, kind: 'zero' as const, data: null }))), ErrorCode.RECORD_TOO_LARGE],
    ['stage full', () => s.append(7, [{ volumeIndex: 0, offset: 0, length: 70_000, kind: 'write', data: d(70_000) }]), ErrorCode.JOURNAL_FULL],
    // The second op is bad: the first must not be staged either.
    ['one bad op of two', () => s.append(7, [{ volumeIndex: 0, offset: 0, length: 4, kind: 'zero', data: null }, { volumeIndex: 0, offset: 0, length: 4, kind: 'write', data: d(3) }]), ErrorCode.INVALID_ARGUMENT],
  ];
  for (const [label, fn, code] of bad) await expectCode(t, fn, code, label);
  await s.sync();
  t.equal(state(), was, 'in-memory state unchanged');
  t.ok(readFileSync(path).equals(before), 'file unchanged');
  s.append(7, [{ volumeIndex: 0, offset: 0, length: 4, kind: 'zero', data: null }]);
  t.equal(s.stagedOps, 2, 'the store still works');
  await s.close();
  await expectCode(t, () => s.append(8, []), ErrorCode.CLOSED, 'closed');
  await expectCode(t, () => StageStore.open({ path, durableSeq: -1, logger: quiet }), ErrorCode.INVALID_ARGUMENT, 'bad durableSeq');
});
