import t from 'tap';
import { ErrorCode } from '../src/core/errors.js';
import { silentLogger } from '../src/core/log.js';
import { RecordKind, type Journal, type JournalRecord } from '../src/journal/journal.js';
import type { LinkConnection } from '../src/link/connection.js';
import { InlineCodec, RecordCodec } from '../src/pipeline/codec.js';
import { enterAfterDefault, initialCompression, leaveAfterDefault, observe } from '../src/replication/compression-policy.js';
import { parseConfig } from '../src/replication/config.js';
import { Shipper } from '../src/replication/source/shipper.js';
import { pairConfigJson } from './lib/pair.js';

// The shipper's pump against a journal whose reads the test holds and releases, and connections that
// record what they were handed: the orderings a loaded machine produces now and then, made certain.

function record(seq: number): JournalRecord {
  return { seq, timestampMs: seq, volumeIndex: 0, offset: (seq - 1) * 4096, length: 4096, kind: RecordKind.WRITE, codec: RecordCodec.RAW, payload: Buffer.alloc(4096, seq) };
}

/** A journal of `lastSeq` records whose reads wait until the test releases them. */
function heldJournal(lastSeq: number) {
  const held: Array<() => void> = [];
  const journal = {
    firstSeq: 1,
    lastSeq,
    // Every record durable: written and shippable up to lastSeq too.
    get writtenSeq(): number { return journal.lastSeq; },
    get shippableSeq(): number { return journal.lastSeq; },
    async read(from: number, _maxBytes: number, opts: { upToSeq?: number } = {}): Promise<JournalRecord[]> {
      await new Promise<void>((resolve) => held.push(resolve));
      const out: JournalRecord[] = [];
      for (let seq = from; seq <= Math.min(opts.upToSeq ?? journal.lastSeq, journal.lastSeq); seq++) out.push(record(seq));
      return out;
    },
    // The shipper pins its reads (a backlog read from disk lands in the journal's read ring) and releases each.
    async readPinned(from: number, maxBytes: number, opts: { upToSeq?: number } = {}): Promise<{ records: JournalRecord[]; release: () => void }> {
      pinned++;
      const records = await journal.read(from, maxBytes, opts);
      let held = true;
      return { records, release: () => { if (held) pinned--; held = false; } };
    },
  };
  let pinned = 0;
  return { journal, releaseReads: () => { for (const r of held.splice(0)) r(); }, pendingReads: () => held.length, pinnedReads: () => pinned };
}

function fakeConnection(name: string) {
  const sent: number[] = [];
  let nextSeq = 1;
  const conn = {
    name,
    sendKeys: { key: Buffer.alloc(16, 1), salt: Buffer.alloc(4, 2) },
    allocSendSeq: () => nextSeq++,
    sendSealed: (seq: number) => { sent.push(seq); },
    close: () => undefined,
  };
  return { conn: conn as unknown as LinkConnection, sent };
}

const tick = () => new Promise((r) => setImmediate(r));

t.test('a connection attached while the previous one\'s journal read is outstanding gets the records', async (t) => {
  const { journal, releaseReads, pendingReads, pinnedReads } = heldJournal(3);
  const shipper = new Shipper('vm', ['vol-0'], journal as unknown as Journal, new InlineCodec(), {
    encrypt: () => false, compress: () => false, onAcked: () => undefined, logger: silentLogger,
  });
  const first = fakeConnection('first');
  shipper.attach(first.conn, 0);
  await tick();
  t.equal(pendingReads(), 1, 'the pump is reading the journal for the first connection');
  // The link drops and a new connection resumes from DR's position before that read returns.
  shipper.detach();
  const second = fakeConnection('second');
  shipper.attach(second.conn, 0);
  releaseReads();
  for (let i = 0; i < 5 && second.sent.length === 0; i++) {
    await tick();
    releaseReads();
  }
  t.same(first.sent, [], 'nothing went to the closed connection');
  t.equal(second.sent.length, 1, 'the records went to the new connection');
  t.equal(shipper.diagnostics().shippedSeq, 3, 'shipped up to the journal end');
  t.equal(pinnedReads(), 0, 'every read the pump pinned was released, the abandoned one too');
});

t.test('records that become durable while the pump is finishing are shipped', async (t) => {
  const { journal, releaseReads } = heldJournal(2);
  const shipper = new Shipper('vm', ['vol-0'], journal as unknown as Journal, new InlineCodec(), {
    encrypt: () => false, compress: () => false, onAcked: () => undefined, logger: silentLogger,
  });
  const c = fakeConnection('c');
  shipper.attach(c.conn, 0);
  await tick();
  releaseReads();
  // The pump sends 1..2 and finds nothing more; in the same turn, before it has quite stopped, 3 is durable.
  await Promise.resolve();
  await Promise.resolve();
  journal.lastSeq = 3;
  shipper.notify();
  for (let i = 0; i < 5; i++) {
    await tick();
    releaseReads();
  }
  t.equal(shipper.diagnostics().shippedSeq, 3, 'the notified record was shipped');
  t.equal(c.sent.length, 2, 'in a second frame');
});

t.test('compression policy: auto flips both ways with hysteresis; always and never are fixed', async (t) => {
  let s = initialCompression('auto');
  t.equal(s.compressing, true, 'auto starts compressing');
  for (let i = 0; i < leaveAfterDefault - 1; i++) s = observe(s, 'linkIdle');
  t.equal(s.compressing, true, `still compressing after ${leaveAfterDefault - 1} idle observations`);
  s = observe(s, 'linkBound');
  for (let i = 0; i < leaveAfterDefault - 1; i++) s = observe(s, 'linkIdle');
  t.equal(s.compressing, true, 'a busy observation restarts the count');
  s = observe(s, 'linkIdle');
  t.match(s, { compressing: false, switches: 1 }, `raw after ${leaveAfterDefault} idle observations in a row`);
  for (let i = 0; i < enterAfterDefault - 1; i++) s = observe(s, i % 2 ? 'linkBound' : 'neither');
  t.equal(s.compressing, false, 'neither does not count towards a flip');
  for (let i = 0; i < enterAfterDefault; i++) s = observe(s, 'linkBound');
  t.match(s, { compressing: true, switches: 2 }, `compressing again after ${enterAfterDefault} busy observations`);
  for (const setting of ['always', 'never'] as const) {
    let f = initialCompression(setting);
    for (let i = 0; i < 100; i++) f = observe(f, i % 2 ? 'linkBound' : 'linkIdle');
    for (let i = 0; i < 100; i++) f = observe(f, setting === 'always' ? 'linkIdle' : 'linkBound');
    t.match(f, { compressing: setting === 'always', switches: 0 }, `${setting} never flips`);
  }
  t.throws(() => initialCompression('sometimes' as never), { code: 'VRG_CONFIG_INVALID' });
});

t.test('the shipper compresses while frames queue in the link and sends raw while it idles', async (t) => {
  const { journal, releaseReads } = heldJournal(0);
  const flags: boolean[] = [];
  const inline = new InlineCodec();
  const codec = Object.assign(Object.create(inline) as InlineCodec, {
    shipBatch: (task: Parameters<InlineCodec['shipBatch']>[0]) => { flags.push(task.compress); return inline.shipBatch(task); },
  });
  const shipper = new Shipper('vm', ['vol-0'], journal as unknown as Journal, codec, {
    encrypt: () => false, compress: () => true, onAcked: () => undefined, logger: silentLogger, compression: 'auto',
  });
  const c = fakeConnection('c');
  let queued = 0;
  Object.defineProperty(c.conn, 'writableBytes', { get: () => queued });
  shipper.attach(c.conn, 0);
  /** One record made durable, shipped and acknowledged, with `bytes` queued in the link as its frame is sent. */
  const oneFrame = async (bytes: number): Promise<void> => {
    queued = bytes;
    journal.lastSeq++;
    shipper.notify();
    for (let i = 0; i < 4; i++) {
      await tick();
      releaseReads();
    }
    shipper.onAck(journal.lastSeq);
  };
  for (let i = 0; i < leaveAfterDefault + 2; i++) await oneFrame(0);
  t.equal(shipper.compression.compressing, false, 'raw once the link idled long enough');
  t.equal(flags.at(-1), false, 'the codec was told to send raw');
  for (let i = 0; i < enterAfterDefault + 2; i++) await oneFrame(4 * 1024 * 1024);
  t.equal(shipper.compression.compressing, true, 'compressing again once frames queue in the link');
  t.equal(flags.at(-1), true, 'the codec was told to compress');
  t.equal(shipper.compression.switches, 2, 'two flips');
  t.ok(shipper.stats.plainBytesCompressOn > 0 && shipper.stats.plainBytesCompressOn < shipper.stats.plainBytesSent, 'the share compressed is counted');
});

t.test('link.compression in the gateway config: auto by default, always or never, anything else refused', async (t) => {
  const json = pairConfigJson({ dir: t.testdir() });
  const { compression: _c, ...link } = json.prod.link;
  t.equal(parseConfig({ ...json.prod, link }).link.compression, 'auto', 'default auto');
  for (const c of ['always', 'never', 'auto'] as const) t.equal(parseConfig({ ...json.prod, link: { ...link, compression: c } }).link.compression, c);
  for (const bad of ['fast', 1, true, null]) {
    t.throws(() => parseConfig({ ...json.prod, link: { ...link, compression: bad } }), { code: ErrorCode.CONFIG_INVALID }, `${String(bad)} refused`);
  }
});

t.test('batches and frames come from the ring and go back to it once written; a full ring still ships', async (t) => {
  const { BufferRing } = await import('../src/core/buffer-ring.js');
  const { openBatch } = await import('../src/pipeline/codec-ops.js');
  for (const capacityBytes of [8 * 1024 * 1024, 4096]) {
    const ring = new BufferRing({ capacityBytes, shared: true });
    const { journal, releaseReads } = heldJournal(3);
    const shipper = new Shipper('vm', ['vol-0'], journal as unknown as Journal, new InlineCodec(), {
      encrypt: () => true, compress: () => true, onAcked: () => undefined, logger: silentLogger, compression: 'always', ring,
    });
    const frames: Buffer[] = [];
    const written: Array<() => void> = [];
    let nextSeq = 0;
    const conn = {
      sendKeys: { key: Buffer.alloc(16, 1), salt: Buffer.alloc(4, 2) },
      allocSendSeq: () => nextSeq++,
      sendSealed: (_seq: number, bytes: Buffer, onWritten?: () => void) => {
        frames.push(Buffer.from(bytes)); // what the socket would send, taken before the block is reused
        if (onWritten) written.push(onWritten);
      },
      close: () => undefined,
    } as unknown as LinkConnection;
    shipper.attach(conn, 0);
    for (let i = 0; i < 5 && frames.length === 0; i++) {
      await tick();
      releaseReads();
    }
    t.equal(frames.length, 1, `one frame shipped (ring of ${capacityBytes} bytes)`);
    const inRing = capacityBytes > 4096;
    t.equal(ring.stats().usedBytes > 0, inRing, inRing ? 'its frame holds a block until written' : 'no block: buffers of its own');
    for (const w of written.splice(0)) w();
    t.equal(ring.stats().usedBytes, 0, 'every block is back once the socket has written the frame');
    if (!inRing) t.ok(ring.stats().refusals > 0, 'the full ring refused, and the batch went anyway');
    const opened = openBatch({ key: Buffer.alloc(16, 1), salt: Buffer.alloc(4, 2) }, 0, frames[0]!).value;
    t.same(opened.data, Buffer.concat([1, 2, 3].map((s) => record(s).payload)), 'the frame carries the records, intact');
  }
});
