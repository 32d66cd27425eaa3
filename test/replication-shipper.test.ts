import t from 'tap';
import { silentLogger } from '../src/core/log.js';
import { RecordKind, type Journal, type JournalRecord } from '../src/journal/journal.js';
import type { LinkConnection } from '../src/link/connection.js';
import { InlineCodec } from '../src/pipeline/codec.js';
import { RecordCodec } from '../src/pipeline/codec.js';
import { Shipper } from '../src/replication/shipper.js';

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
    async read(from: number): Promise<JournalRecord[]> {
      await new Promise<void>((resolve) => held.push(resolve));
      const out: JournalRecord[] = [];
      for (let seq = from; seq <= journal.lastSeq; seq++) out.push(record(seq));
      return out;
    },
  };
  return { journal, releaseReads: () => { for (const r of held.splice(0)) r(); }, pendingReads: () => held.length };
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
  const { journal, releaseReads, pendingReads } = heldJournal(3);
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
