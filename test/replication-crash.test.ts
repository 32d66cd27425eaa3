import { readFile, writeFile } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { compareVolumes } from '../src/cli/demo.js';
import { spawnGateway, type GatewayChild } from '../src/cli/gateway-child.js';
import type { IpcMessage, LoadProgress } from '../src/cli/gateway-process.js';
import { generateLoad, type LoadOptions } from '../src/cli/load-generator.js';
import type { DrStatus } from '../src/replication/target/dr-gateway.js';
import type { ProductionStatus } from '../src/replication/source/production-gateway.js';
import { pairConfigJson } from './lib/pair.js';
import { drainChild, watchChild } from './lib/process-pair.js';

// Gateways as real processes, killed with SIGKILL mid-load and restarted (the compiled CLI is used:
// `npm test` builds first).

const MiB = 1024 * 1024;
type Status = IpcMessage & { type: 'status'; status: unknown; load: LoadProgress };

async function setup(dir: string, codecThreads?: number) {
  const json = pairConfigJson({ dir, volumeSizeBytes: 64 * MiB, ...(codecThreads !== undefined ? { codecThreads } : {}) });
  const files = { prod: join(dir, 'production.json'), dr: join(dir, 'dr.json') };
  await writeFile(files.dr, JSON.stringify(json.dr));
  const env = { ...process.env, VRG_LOG_LEVEL: 'debug' };
  const startDr = async (): Promise<GatewayChild> => {
    const dr = spawnGateway('dr', files.dr, join(dir, 'dr.log'), env);
    const ready = await dr.request<IpcMessage & { type: 'ready' }>(null, 'ready');
    if (json.dr.link.port === 0) {
      json.dr.link.port = ready.linkPort!; // restarts listen on the same port
      json.prod.link.port = ready.linkPort!;
      await writeFile(files.dr, JSON.stringify(json.dr));
      await writeFile(files.prod, JSON.stringify(json.prod));
    }
    return dr;
  };
  const startProd = async (): Promise<GatewayChild> => {
    const prod = spawnGateway('production', files.prod, join(dir, 'production.log'), env);
    await prod.request(null, 'ready');
    return prod;
  };
  const load: LoadOptions = {
    totalBytes: 96 * MiB, volumes: json.prod.vms[0]!.volumes, writeBytes: 64 * 1024, queueDepth: 16, seed: 11, sequential: true,
  };
  return { json, startDr, startProd, load };
}

async function checkAckedWrites(t: Tap.Test, load: LoadOptions, acked: Set<number>, targetPath: (volUuid: string) => string) {
  let bad = 0;
  for await (const w of generateLoad(load)) {
    if (!acked.has(w.index)) continue;
    const fh = await open(targetPath(w.volUuid), 'r');
    const buf = Buffer.alloc(w.data.byteLength);
    await fh.read(buf, 0, buf.length, w.offset);
    await fh.close();
    if (!buf.equals(w.data)) bad++;
  }
  t.equal(bad, 0, `all ${acked.size} writes acknowledged before the kill are on the DR volumes`);
}

declare global {
  namespace Tap {
    type Test = typeof t;
  }
}

for (const codecThreads of [1, 0]) t.test(`production gateway SIGKILLed mid-load loses no acknowledged write (codecThreads ${codecThreads})`, async (t) => {
  const dir = t.testdir();
  const { json, startDr, startProd, load } = await setup(dir, codecThreads);
  const dr = await startDr();
  let prod = await startProd();
  const acked = new Set<number>();
  const loadDone = prod.request({ type: 'load', load }, 'loadDone').catch(() => 'killed');
  await watchChild<Status>(prod, dr, acked, (s) => s.load.bytes >= 24 * MiB);
  await prod.kill();
  t.equal(await loadDone, 'killed', 'killed before the load finished');
  t.ok(acked.size > 0, `${acked.size} writes were acknowledged before the kill`);

  prod = await startProd();
  await drainChild(prod, dr);
  const final = (await prod.request<Status>({ type: 'status' }, 'status')).status as ProductionStatus;
  t.equal(final.vms[0]!.ackedSeq, final.vms[0]!.lastSeq, 'DR acknowledged the replayed journal');
  t.equal(await prod.stop(), 0, 'production exits cleanly');
  t.equal(await dr.stop(), 0, 'DR exits cleanly');
  const vols = json.prod.vms[0]!.volumes;
  t.equal(await compareVolumes(vols.map((v, i) => [v.path, json.dr.vms[0]!.volumes[i]!.path])), null,
    'DR volumes equal the production volumes');
  await checkAckedWrites(t, load, acked, (u) => json.dr.vms[0]!.volumes.find((v) => v.volUuid === u)!.path);
});

t.test('DR gateway SIGKILLed mid-load resumes with no gap and no duplicate', async (t) => {
  const dir = t.testdir();
  const { json, startDr, startProd, load } = await setup(dir);
  let dr = await startDr();
  const prod = await startProd();
  const acked = new Set<number>();
  const loadDone = prod.request({ type: 'load', load }, 'loadDone');
  await watchChild<Status>(prod, dr, acked, (s) => (s.status as ProductionStatus).vms[0]!.ackedSeq > 100);
  await dr.kill();
  await watchChild<Status>(prod, dr, acked, (s) => s.load.bytes >= 48 * MiB);
  dr = await startDr();
  await loadDone;
  await drainChild(prod, dr);
  const final = (await prod.request<Status>({ type: 'status' }, 'status')).status as ProductionStatus;
  t.equal(await prod.stop(), 0, 'production exits cleanly');
  t.equal(await dr.stop(), 0, 'DR exits cleanly');

  // Every DR process logged one contiguous run of records, starting right after its durable position.
  const lines = (await readFile(join(dir, 'dr.log'), 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const byPid = new Map<number, { start: number; next: number }>();
  let gaps = 0;
  for (const l of lines) {
    if (l.msg === 'dr vm opened') byPid.set(l.pid, { start: l.durableSeq + 1, next: l.durableSeq + 1 });
    if (l.msg !== 'logged') continue;
    const run = byPid.get(l.pid)!;
    if (l.firstSeq + l.skipped !== run.next) gaps++;
    run.next = l.lastSeq + 1;
  }
  t.equal(byPid.size, 2, `two DR processes ran: ${JSON.stringify([...byPid])}`);
  t.equal(gaps, 0, 'no gap and no duplicate in what each DR process logged');
  t.equal([...byPid.values()].at(-1)!.next - 1, final.vms[0]!.lastSeq, 'the restarted DR logged up to the last record');
  const vols = json.prod.vms[0]!.volumes;
  t.equal(await compareVolumes(vols.map((v, i) => [v.path, json.dr.vms[0]!.volumes[i]!.path])), null,
    'DR volumes equal the production volumes');
  await checkAckedWrites(t, load, acked, (u) => json.dr.vms[0]!.volumes.find((v) => v.volUuid === u)!.path);
});
