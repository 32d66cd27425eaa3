import { randomBytes } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { compareVolumes } from '../src/cli/demo.js';
import type { GatewayChild } from '../src/cli/gateway-child.js';
import type { IpcMessage, LoadProgress } from '../src/cli/gateway-process.js';
import type { LoadOptions } from '../src/cli/load-generator.js';
import type { ProductionStatus } from '../src/replication/source/production-gateway.js';
import { pairConfigJson } from './lib/pair.js';
import { ackedWritesMissing, drainChild, processPair, watchChild } from './lib/process-pair.js';

// Issue 4 with gateways as real processes: SIGKILL of either gateway during a CBT resync (here the
// initial sync of a pre-filled source, which is one) and during a consistency check loses nothing and
// ends identical; in Sync mode every write acknowledged before production is killed is on the DR volume.

const MiB = 1024 * 1024;
type Status = IpcMessage & { type: 'status'; status: unknown; load: LoadProgress };
const prodStatus = (s: Status) => (s.status as ProductionStatus).vms[0]!;

async function setup(dir: string, o: { volumeBytes: number; prefillBytes: number; mode?: 'sync' }) {
  const json = pairConfigJson({ dir, volumeSizeBytes: o.volumeBytes, volumes: 1 });
  if (o.mode) (json.prod.vms[0] as Record<string, unknown>).mode = o.mode;
  const source = json.prod.vms[0]!.volumes[0]!.path;
  await mkdir(join(dir, 'source'), { recursive: true });
  const fh = await open(source, 'w');
  await fh.truncate(o.volumeBytes);
  for (let at = 0; at < o.prefillBytes; at += 4 * MiB) await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, at);
  await fh.close();
  const { startDr, startProd } = processPair(dir, json);
  const load: LoadOptions = {
    totalBytes: 32 * MiB, volumes: json.prod.vms[0]!.volumes, writeBytes: 64 * 1024, queueDepth: 8, seed: 5, sequential: true,
  };
  const identical = () => compareVolumes([[source, json.dr.vms[0]!.volumes[0]!.path]]);
  return { json, startDr, startProd, load, identical, target: json.dr.vms[0]!.volumes[0]!.path };
}

declare global {
  namespace Tap {
    type Test = typeof t;
  }
}

for (const victim of ['production', 'dr'] as const) {
  for (const phase of ['cbt', 'check'] as const) {
    t.test(`${victim} gateway SIGKILLed during ${phase === 'cbt' ? 'a CBT resync' : 'a consistency check'}: nothing lost, ends identical`, async (t) => {
      const dir = t.testdir();
      const s = await setup(dir, { volumeBytes: 256 * MiB, prefillBytes: 96 * MiB });
      let dr = await s.startDr();
      let prod = await s.startProd();
      const acked = new Set<number>();
      const loadDone = prod.request({ type: 'load', load: s.load }, 'loadDone').catch(() => 'killed');
      const at = await watchChild<Status>(prod, dr, acked, (st) => {
        const r = prodStatus(st).replication;
        return phase === 'cbt' ? r.state === 'cbt' && (r.resync?.bytesDone ?? 0) >= 16 * MiB : r.state === 'check';
      });
      t.comment(`killed at ${JSON.stringify(prodStatus(at).replication.resync ?? prodStatus(at).replication.state)}`);
      if (victim === 'production') {
        await prod.kill();
        await loadDone;
        prod = await s.startProd();
      } else {
        await dr.kill();
        dr = await s.startDr();
        await loadDone;
      }
      await drainChild(prod, dr);
      const final = prodStatus(await prod.request<Status>({ type: 'status' }, 'status'));
      t.equal(final.replication.state, 'queue', 'back in queue');
      t.equal(await prod.stop(), 0);
      t.equal(await dr.stop(), 0);
      t.equal(await s.identical(), null, 'DR volume equals the production volume');
      t.equal(await ackedWritesMissing(s.target, s.load, acked), 0, `all ${acked.size} acknowledged writes are on DR`);
    });
  }
}

t.test('Sync mode: every write acknowledged before production is SIGKILLed is already on the DR volume', async (t) => {
  const dir = t.testdir();
  const s = await setup(dir, { volumeBytes: 64 * MiB, prefillBytes: 0, mode: 'sync' });
  const dr = await s.startDr();
  const prod = await s.startProd();
  await drainChild(prod, dr); // initial sync, then Sync proper
  const st = prodStatus(await prod.request<Status>({ type: 'status' }, 'status')).replication;
  t.match(st, { mode: 'sync', syncDegraded: false, state: 'queue' });
  const acked = new Set<number>();
  void prod.request({ type: 'load', load: s.load }, 'loadDone').catch(() => 'killed');
  await watchChild<Status>(prod, dr, acked, (x) => x.load.bytes >= 8 * MiB);
  await prod.kill();
  // Acknowledged means durable in DR's log (its targets follow in the background): SIGKILL DR as well, then a
  // fresh DR process replays its log at open; its volume file is read once that process has stopped.
  await dr.kill();
  const dr2 = await s.startDr();
  t.equal(await dr2.stop(), 0);
  t.ok(acked.size > 50, `${acked.size} writes acknowledged before the kill`);
  t.equal(await ackedWritesMissing(s.target, s.load, acked), 0, 'every acknowledged write is on the DR volume');
});
