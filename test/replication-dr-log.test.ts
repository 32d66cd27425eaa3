import { mkdir, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { compareVolumes } from '../src/cli/demo.js';
import type { IpcMessage, LoadProgress } from '../src/cli/gateway-process.js';
import type { LoadOptions } from '../src/cli/load-generator.js';
import type { DrStatus } from '../src/replication/target/dr-gateway.js';
import { pairConfigJson, startPair } from './lib/pair.js';
import { ackedWritesMissing, drainChild, processPair, watchChild } from './lib/process-pair.js';
import { startAgent, type Agent } from './lib/agents.js';
import { freePort } from './lib/ports.js';
import { needs } from './lib/tools.js';
import { drained } from './lib/wait.js';
import { slowWrites } from './lib/slow-volume.js';
import { systemClock } from '../src/core/clock.js';
import { silentLogger } from '../src/core/log.js';
import { systemRandom } from '../src/core/random.js';
import { tcpTransport } from '../src/link/transport.js';
import { NbdServer } from '../src/nbd/nbd-server.js';
import { volumeExport } from '../src/nbd/volume-export.js';
import { InlineCodec } from '../src/pipeline/codec.js';
import { parseConfig } from '../src/replication/config.js';
import { DrGateway } from '../src/replication/target/dr-gateway.js';
import { openVolume } from '../src/volume/open-volume.js';

// The DR side's log (issue 13): a batch is acknowledged once durable in the DR log, and applied to the targets
// in the background. A DR process killed while its log is ahead of its targets replays the log at open.

const MiB = 1024 * 1024;
type Status = IpcMessage & { type: 'status'; status: unknown; load: LoadProgress };

/** nbdkit serving `file` on two threads with every write delayed (a slow DR target: the log runs ahead of it). */
async function slowTarget(t: Test, file: string, sizeBytes: number, delayWriteMs: number, port?: number): Promise<Agent> {
  const fh = await open(file, 'a');
  await fh.truncate(sizeBytes);
  await fh.close();
  return startAgent(t, 'nbdkit', (p, pid) => ['-f', '-P', pid, '--exit-with-parent', '-t', '2', '-p', String(p),
    '-i', '127.0.0.1', '--filter=delay', '--filter=blocksize-policy', 'file', `file=${file}`, `delay-write=${delayWriteMs}ms`,
    'blocksize-maximum=65536', 'blocksize-preferred=4096', 'blocksize-minimum=1'], port);
}

/**
 * nbdkit 1.32's delay filter can abort (SIGABRT, "aborting sleep because of connection close") when its client
 * is killed in the middle of a delayed write. Its host would start it again, as this does, on the same port and
 * file: the writes it lost were never acknowledged to DR, whose log replay writes them again.
 */
async function restartIfAborted(t: Test, agent: Agent, file: string, sizeBytes: number, delayWriteMs: number): Promise<Agent> {
  await new Promise((r) => setTimeout(r, 100)); // an abort follows the client's death by a moment
  if (!agent.exited()) return agent;
  t.comment(`the write agent ended (${agent.stderr().trim()}); started again on port ${agent.port}`);
  return slowTarget(t, file, sizeBytes, delayWriteMs, agent.port);
}

async function drStatus(dr: { request<T>(m: unknown, type: string): Promise<T> }): Promise<DrStatus['vms'][number]> {
  return ((await dr.request<Status>({ type: 'status' }, 'status')).status as DrStatus).vms[0]!;
}

t.test('Sync: DR SIGKILLed between its log append and the apply replays the log and ends identical', needs('nbdkit'), async (t) => {
  const dir = t.testdir();
  const volumeBytes = 64 * MiB;
  await mkdir(join(dir, 'target'), { recursive: true });
  const targetFile = join(dir, 'target', 'slow.img');
  let agent = await slowTarget(t, targetFile, volumeBytes, 40);
  const json = pairConfigJson({ dir, volumeSizeBytes: volumeBytes, volumes: 1, drUrls: [agent.url] });
  (json.prod.vms[0] as Record<string, unknown>).mode = 'sync';
  const { startDr, startProd } = processPair(dir, json);
  let dr = await startDr();
  let prod = await startProd();
  await drainChild(prod, dr); // the initial sync of the empty source, then Sync proper
  // Sequential, so an acknowledged write is never overwritten later; the agent takes at most 64 KiB per request.
  const load: LoadOptions = {
    totalBytes: 24 * MiB, volumes: json.prod.vms[0]!.volumes, writeBytes: 64 * 1024, queueDepth: 8, seed: 13, sequential: true,
  };
  const acked = new Set<number>();
  void prod.request({ type: 'load', load }, 'loadDone').catch(() => 'killed');
  let at = await drStatus(dr);
  const deadline = Date.now() + 120_000;
  while (at.durableSeq - at.appliedSeq < 64 && Date.now() < deadline) {
    await watchChild<Status>(prod, dr, acked, () => true);
    at = await drStatus(dr);
  }
  await watchChild<Status>(prod, dr, acked, () => true);
  t.ok(at.durableSeq - at.appliedSeq >= 64, `DR log ahead of its targets at the kill: durable ${at.durableSeq}, applied ${at.appliedSeq}`);
  // Both sites go at once: what DR acknowledged must come back from its log alone.
  await dr.kill();
  await prod.kill();
  agent = await restartIfAborted(t, agent, targetFile, volumeBytes, 40);
  // Killed again as soon as it is up: only the replay at open can have brought the targets up to the log.
  dr = await startDr();
  await dr.kill();
  agent = await restartIfAborted(t, agent, targetFile, volumeBytes, 40);
  const lines = (await readFile(join(dir, 'dr.log'), 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  const replay = lines.find((l) => l.msg === 'dr log: applying what the log holds past the checkpoint');
  t.ok(replay && Number(replay.toSeq) >= at.durableSeq, `the replay covers everything acknowledged before the kill: ${JSON.stringify(replay)}`);
  t.ok(acked.size > 50, `${acked.size} writes acknowledged before the kill`);
  t.equal(await ackedWritesMissing(targetFile, load, acked), 0, 'every acknowledged write is on the DR volume');
  // Then the pair resumes and ends identical.
  dr = await startDr();
  prod = await startProd();
  await drainChild(prod, dr);
  t.equal(await prod.stop(), 0, 'production exits cleanly');
  t.equal(await dr.stop(), 0, 'DR exits cleanly');
  t.equal(await compareVolumes([[json.prod.vms[0]!.volumes[0]!.path, targetFile]]), null, 'DR volume equals the production volume');
});

t.test('a DR process whose target write agent is not up yet waits for it at open (it does not end mid-open)', needs('nbdkit'), async (t) => {
  const dir = t.testdir();
  const volumeBytes = 8 * MiB;
  await mkdir(join(dir, 'target'), { recursive: true });
  const agentPort = await freePort();
  const url = `nbd://127.0.0.1:${agentPort}/`;
  const json = pairConfigJson({ dir, volumeSizeBytes: volumeBytes, volumes: 1, drUrls: [url] });
  const { startDr } = processPair(dir, json);
  const starting = startDr();
  starting.catch(() => undefined); // awaited below
  // The agent starts only once the DR says it is retrying, then after a few more retries (every 250 ms):
  // meanwhile only the retry timers are pending in the DR process.
  const retrying = async (): Promise<boolean> => (await readFile(join(dir, 'dr.log'), 'utf8').catch(() => ''))
    .includes('target write agent not reachable yet; retrying');
  for (let i = 0; i < 600 && !(await retrying()); i++) await new Promise((r) => setTimeout(r, 50));
  t.ok(await retrying(), 'the DR said it was retrying the agent');
  await new Promise((r) => setTimeout(r, 1000));
  await slowTarget(t, join(dir, 'target', 'late.img'), volumeBytes, 0, agentPort);
  const dr = await starting;
  t.equal(await dr.stop(), 0, 'the DR came up once the agent did, and stops cleanly');
});

t.test('replica reads see a prefix of the write history, and no less than what was acknowledged when asked', async (t) => {
  const dir = t.testdir();
  const pair = await startPair({ dir, pool: false, volumes: 1, volumeSizeBytes: 8 * MiB, wrapDrVolume: slowWrites });
  t.teardown(() => pair.close());
  await pair.drain();
  const block = 64 * 1024;
  const blocks = (8 * MiB) / block;
  // Even blocks, then odd ones: no two consecutive writes are contiguous, so the targets get one write each.
  const order = [...Array.from({ length: blocks / 2 }, (_, i) => 2 * i), ...Array.from({ length: blocks / 2 }, (_, i) => 2 * i + 1)];
  const rank = new Map(order.map((b, i) => [b, i]));
  let torn = 0;
  let reads = 0;
  for (let round = 1; round <= 3; round++) {
    const writes: Promise<unknown>[] = [];
    for (const b of order) writes.push(pair.prod.write('vol-0', b * block, Buffer.alloc(block, round)));
    const all = Promise.all(writes);
    let done = false;
    void all.then(() => { done = true; });
    while (!done) {
      const img = await pair.dr.readReplica('vol-0', 0, 8 * MiB);
      reads++;
      // A prefix of the history ends in some round v after k of its writes: those k blocks (the first k of
      // `order`) hold v, every other block v - 1.
      const values = Array.from({ length: blocks }, (_, b) => img[b * block]!);
      const v = Math.max(...values);
      const k = values.filter((x) => x === v).length;
      const bad = values.filter((x, b) => x !== (rank.get(b)! < k ? v : v - 1)).length;
      if (bad > 0 && torn === 0) t.comment(`round ${round}: ${order.map((b) => values[b]).join('')}`);
      torn += bad;
    }
    await all;
  }
  t.ok(reads >= 3, `${reads} replica reads during the writes`);
  t.equal(torn, 0, 'each one a prefix of the write history');
  // Acknowledged by DR (durable in its log), not yet applied to the slow target: a read asked now sees all of it.
  await drained(pair.prod, pair.dr);
  const behind = pair.dr.status().vms[0]!;
  const after = await pair.dr.readReplica('vol-0', 0, 8 * MiB);
  t.ok(after.equals(Buffer.alloc(8 * MiB, 3)), `a replica read right after the acknowledgement sees every write (applied ${behind.appliedSeq} of ${behind.durableSeq} when asked)`);
});

t.test('status times each stage of a Sync write, and resetLatency starts the window afresh', async (t) => {
  const dir = t.testdir();
  const pair = await startPair({ dir, pool: false, volumes: 1, volumeSizeBytes: 8 * MiB });
  t.teardown(() => pair.close());
  await pair.drain();
  pair.prod.setMode(pair.configs.prod.vms[0]!.vmUuid, 'sync');
  pair.prod.resetLatency();
  pair.dr.resetLatency();
  for (let i = 0; i < 32; i++) await pair.prod.write('vol-0', i * 65536, Buffer.alloc(65536, i + 1));
  const p = pair.prod.status().vms[0]!.latency;
  const d = pair.dr.status().vms[0]!.durableLatency;
  for (const stage of ['group -> journal written', 'group -> journal durable', 'group -> DR durable (sync)', 'group -> acknowledged', 'batch taken -> DR ack']) {
    t.ok(p[stage]!.count > 0 && p[stage]!.p50Ms <= p[stage]!.p99Ms, `${stage}: ${JSON.stringify(p[stage])}`);
  }
  t.equal(p['group -> acknowledged']!.count, p['group -> DR durable (sync)']!.count, 'every acknowledged group waited for DR');
  t.ok(d.count > 0, `DR: frame received -> durable in its log ${JSON.stringify(d)}`);
  pair.prod.resetLatency();
  t.equal(pair.prod.status().vms[0]!.latency['group -> acknowledged']!.count, 0, 'reset empties the window');
});

t.test('a DR target write agent that starts listening after the DR gateway is waited for, not fatal', async (t) => {
  const dir = t.testdir();
  const port = await freePort();
  const json = pairConfigJson({ dir, volumeSizeBytes: 4 * MiB, volumes: 1, drUrls: [`nbd://127.0.0.1:${port}/late`] });
  const deps = { clock: systemClock, random: systemRandom, transport: tcpTransport, codec: new InlineCodec(), logger: silentLogger };
  const agentFile = join(dir, 'agent.img');
  const backing = await openVolume(agentFile, { sizeBytes: 4 * MiB, create: true });
  const agent = new NbdServer({ exports: () => [volumeExport(backing, { name: 'late' })] });
  t.teardown(async () => {
    await agent.close();
    await backing.close();
  });
  const opening = DrGateway.open(parseConfig(json.dr), deps);
  await new Promise((r) => setTimeout(r, 600)); // a few refused connects
  await agent.listen('127.0.0.1', port);
  const dr = await opening;
  t.teardown(() => dr.close());
  t.same(dr.replicaVolumes().map((v) => v.volUuid), ['vol-0'], 'the target opened once the agent listened');
});
