import { randomBytes } from 'node:crypto';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { compareVolumes } from '../src/cli/demo.js';
import type { GatewayChild } from '../src/cli/gateway-child.js';
import type { IpcMessage, LoadProgress } from '../src/cli/gateway-process.js';
import type { LoadOptions } from '../src/cli/load-generator.js';
import { ErrorCode } from '../src/core/errors.js';
import { Journal, RecordKind } from '../src/journal/journal.js';
import { parseConfig } from '../src/replication/config.js';
import type { ProductionStatus } from '../src/replication/source/production-gateway.js';
import { code } from './lib/error-code.js';
import { pairConfigJson } from './lib/pair.js';
import { ackedWritesMissing, drainChild, processPair, watchChild } from './lib/process-pair.js';

// The write-back intake (config intake.writeBack): a write is acknowledged once it is in the journal file
// and on the source (page cache), before the journal's fdatasync; FLUSH makes it durable. A process crash
// loses nothing; a host crash (a new boot id after an unclean stop) makes every VM run a consistency check,
// which repairs what the source holds and DR lacks.

const MiB = 1024 * 1024;
type Status = IpcMessage & { type: 'status'; status: unknown; load: LoadProgress };
const prodStatus = (s: Status) => (s.status as ProductionStatus).vms[0]!;

declare global {
  namespace Tap {
    type Test = typeof t;
  }
}

t.test('config: intake.writeBack is a boolean, off by default', async (t) => {
  const json = pairConfigJson({ dir: '/tmp/unused' });
  t.equal(parseConfig(json.prod).intake?.writeBack, false, 'default: acknowledge after the fdatasync');
  t.equal(parseConfig({ ...json.prod, intake: { writeBack: true } }).intake?.writeBack, true);
  t.equal(parseConfig(json.prod).intake?.bootIdPath, '/proc/sys/kernel/random/boot_id');
  t.equal(code(() => parseConfig({ ...json.prod, intake: { writeBack: 'yes' } })), ErrorCode.CONFIG_INVALID, 'a string is refused');
  t.equal(code(() => parseConfig({ ...json.prod, intake: 5 })), ErrorCode.CONFIG_INVALID, 'not an object');
});

t.test('journal: whenWritten resolves once the record is in the file, whenDurable once it is fdatasync\'ed', async (t) => {
  const j = await Journal.open({ dir: join(t.testdir(), 'j'), capacityBytes: 8 * MiB });
  t.teardown(() => j.close());
  const rec = (i: number) => ({ volumeIndex: 0, offset: i * 4096, length: 4096, kind: RecordKind.WRITE, codec: 0, payload: Buffer.alloc(4096, i) });
  const durable = j.append([rec(1), rec(2)]);
  t.equal(j.appendedSeq, 2, 'seqs are assigned at append');
  t.ok(j.lastSeq < 2, 'not durable yet');
  let writtenAt = -1;
  await j.whenWritten(2).then(() => (writtenAt = j.writtenSeq));
  t.ok(writtenAt >= 2, 'written when whenWritten resolves');
  await j.whenDurable(2);
  t.ok(j.lastSeq >= 2, 'durable when whenDurable resolves');
  await durable;
  await j.whenWritten(1);
  await j.whenDurable(1); // already past: resolves at once
  t.throws(() => j.whenDurable(3), 'a seq never appended is a caller bug (assertion)');
});

async function setup(dir: string) {
  const json = pairConfigJson({ dir, volumeSizeBytes: 64 * MiB, volumes: 1 });
  const bootIdPath = join(dir, 'boot_id');
  await writeFile(bootIdPath, 'boot-a\n');
  Object.assign(json.prod, { intake: { writeBack: true, bootIdPath } });
  const source = json.prod.vms[0]!.volumes[0]!.path;
  await mkdir(join(dir, 'source'), { recursive: true });
  // A source full of data: the initial sync sends it as RESYNC records (read from the source, so never
  // replayed onto it at start), and only the load's own writes are in the journal.
  await writeFile(source, randomBytes(64 * MiB));
  const { startDr, startProd } = processPair(dir, json);
  const load: LoadOptions = { totalBytes: 24 * MiB, volumes: json.prod.vms[0]!.volumes, writeBytes: 64 * 1024, queueDepth: 8, seed: 11, sequential: true };
  const target = json.dr.vms[0]!.volumes[0]!.path;
  return { startDr, startProd, load, source, target, bootIdPath, identical: () => compareVolumes([[source, target]]) };
}

async function status(prod: GatewayChild) {
  return prodStatus(await prod.request<Status>({ type: 'status' }, 'status'));
}

t.test('write-back: a SIGKILL loses no acknowledged write; the same boot id means no check', async (t) => {
  const s = await setup(t.testdir());
  const dr = await s.startDr();
  let prod = await s.startProd();
  await drainChild(prod, dr); // initial sync and its check
  const acked = new Set<number>();
  const loadDone = prod.request({ type: 'load', load: s.load }, 'loadDone').catch(() => 'killed');
  await watchChild<Status>(prod, dr, acked, (st) => (st.load?.bytes ?? 0) >= 8 * MiB);
  await prod.kill();
  await loadDone;
  t.ok(acked.size > 50, `${acked.size} writes acknowledged before the SIGKILL`);
  t.equal(await ackedWritesMissing(s.source, s.load, acked), 0, 'the page cache kept every acknowledged write (source)');
  prod = await s.startProd();
  await drainChild(prod, dr);
  const after = await status(prod);
  t.equal(after.replication.transitions['queue->check'], 0, 'no consistency check after a process crash');
  t.equal(after.replication.state, 'queue');
  t.equal(await ackedWritesMissing(s.target, s.load, acked), 0, 'every acknowledged write reached DR');
  t.equal(await prod.stop(), 0);
  t.equal(await dr.stop(), 0);
  t.equal(await s.identical(), null, 'DR volume equals the source');
});

t.test('write-back: after a host crash (new boot id) the VM is checked and DR repaired to the source', async (t) => {
  const s = await setup(t.testdir());
  const dr = await s.startDr();
  let prod = await s.startProd();
  await drainChild(prod, dr);
  await prod.request({ type: 'load', load: s.load }, 'loadDone');
  await drainChild(prod, dr);
  t.equal(await prod.stop(), 0);
  // A clean stop is not a crash: the next start (same boot id) runs no check.
  prod = await s.startProd();
  await drainChild(prod, dr);
  t.equal((await status(prod)).replication.transitions['queue->check'], 0, 'no check after a clean stop');
  await prod.kill(); // the host goes down with it
  // What a power loss can leave behind: blocks on the source whose journal records never became durable
  // (so DR never got them). Three 64 KiB blocks past the load's range (24 MiB from offset 0), which the
  // journal replay at start does not rewrite.
  const fh = await open(s.source, 'r+');
  for (const at of [30 * MiB, 40 * MiB + 65536, 63 * MiB]) await fh.write(randomBytes(65536), 0, 65536, at);
  await fh.sync();
  await fh.close();
  t.not(await s.identical(), null, 'the source now differs from DR');
  await writeFile(s.bootIdPath, 'boot-b\n');
  prod = await s.startProd();
  await drainChild(prod, dr);
  const after = await status(prod);
  t.comment(JSON.stringify({ transitions: after.replication.transitions, check: after.replication.check }));
  t.equal(after.replication.transitions['queue->check'], 1, 'the restart after a host crash ran a consistency check');
  t.equal(after.replication.check?.regionsDiffering, 3, 'the check found the three differing regions');
  t.equal(after.replication.check?.regionsRepaired, 3, 'and repaired them');
  t.equal(after.replication.state, 'queue', 'back in queue');
  t.equal(await prod.stop(), 0);
  t.equal(await dr.stop(), 0);
  t.equal(await s.identical(), null, 'DR volume equals the source, the blocks the journal lost included');
});
