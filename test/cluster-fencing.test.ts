import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { FenceBook } from '../src/cluster/fence-book.js';
import { systemClock } from '../src/core/clock.js';
import { ErrorCode } from '../src/core/errors.js';
import { silentLogger } from '../src/core/log.js';
import { systemRandom } from '../src/core/random.js';
import { tcpTransport } from '../src/link/transport.js';
import { InlineCodec } from '../src/pipeline/codec.js';
import { parseConfig, type VmConfig } from '../src/replication/config.js';
import { ProductionGateway } from '../src/replication/source/production-gateway.js';
import { DrGateway } from '../src/replication/target/dr-gateway.js';
import { pairConfigJson } from './lib/pair.js';
import { until, within } from './lib/wait.js';

// Fencing (issue 18): a DR engine in cluster mode takes a VM's batches only from the ownership it opened the VM
// for. An owner that lost the VM (paused past its lease while a successor claimed it: a newer token) keeps
// shipping: every batch of its older token is refused with FENCING_TOKEN_STALE, and the target is unchanged.
// The successor's batches are taken. Real TCP, real files, the cluster member's own FenceBook.

const block = 64 * 1024;

t.test('a stale owner is refused: its batches never reach the target; the newer token\'s do', async (t) => {
  const dir = t.testdir();
  const json = pairConfigJson({ dir, volumes: 1, volumeSizeBytes: 4 * 1024 * 1024 });
  const vmc = json.prod.vms[0]! as unknown as VmConfig;
  const codec = new InlineCodec();
  const deps = { clock: systemClock, random: systemRandom, transport: tcpTransport, codec, logger: silentLogger };
  const book = new FenceBook();
  const dr = await DrGateway.open(parseConfig({ ...json.dr, vms: [] }), deps, { fence: book.guard('prod-a') });
  book.set(vmc.vmUuid, { prodId: 'prod-a', token: 5 });
  await dr.addVm(parseConfig({ ...json.dr }).vms[0]!);
  const prodCfg = (name: string) => parseConfig({ ...json.prod, dataDir: join(dir, name), vms: [], link: { ...json.prod.link, port: dr.linkPort } });
  const old = await ProductionGateway.open(prodCfg('old-owner'), deps);
  t.teardown(async () => {
    await old.close();
    await dr.close();
    await codec.close();
  });
  await old.adoptVm(parseConfig({ ...json.prod }).vms[0]!, { fencingToken: 5, start: 'new' });
  const volUuid = vmc.volumes[0]!.volUuid;
  await old.write(volUuid, 0, Buffer.alloc(block, 0x11));
  await old.drain();
  await dr.caughtUp(30_000);
  const target = join(dir, 'target', 'disk0.img');
  const source = join(dir, 'source', 'disk0.img');
  t.ok((await readFile(target)).subarray(0, block).equals(Buffer.alloc(block, 0x11)), 'the owner of token 5 replicates');

  // A successor claimed the VM (token 9) and DR has seen it: from now on only token 9 is admitted.
  book.set(vmc.vmUuid, { prodId: 'prod-a', token: 9 });
  const before = await readFile(target);
  await old.write(volUuid, block, Buffer.alloc(block, 0x22)); // taken locally: the old owner does not know yet
  await until(() => dr.status().fenceRefusals > 0, 15_000, 'DR to refuse the stale owner\'s batch');
  await until(() => old.peerStatus()?.lastErrorCode === ErrorCode.FENCING_TOKEN_STALE, 15_000, 'the stale owner to learn why',
    () => old.peerStatus());
  await new Promise((r) => setTimeout(r, 500)); // reconnects and resends: each one refused again
  t.ok((await readFile(target)).equals(before), 'the target holds nothing of the stale owner\'s write');
  t.ok(dr.status().fenceRefusals >= 1, `each stale batch refused (${dr.status().fenceRefusals})`);
  t.equal(old.peerStatus()!.lastErrorCode, ErrorCode.FENCING_TOKEN_STALE, 'the code reaches the stale owner');
  await within(old.close(), 'the stale owner to close');

  // The successor: DR reopens the VM for its ownership as a new stream (dr-member.ts), and the successor
  // rebuilds it from the source with a check.
  await dr.removeVm(vmc.vmUuid, 30_000);
  await dr.addVm(parseConfig({ ...json.dr }).vms[0]!);
  const next = await ProductionGateway.open(prodCfg('new-owner'), deps);
  t.teardown(() => next.close());
  await next.adoptVm(parseConfig({ ...json.prod }).vms[0]!, { fencingToken: 9, start: 'check' });
  await next.write(volUuid, 2 * block, Buffer.alloc(block, 0x33));
  await within(next.drain(), 'the successor to drain', () => ({ prod: next.diagnostics(), dr: dr.diagnostics() }));
  await dr.caughtUp(30_000);
  t.ok((await readFile(target)).equals(await readFile(source)), 'the successor\'s check and writes make the target equal to the source');
});

t.test('the guard: older token stale, newer not open yet, another member\'s engine refused', async (t) => {
  const book = new FenceBook();
  book.set('vm-1', { prodId: 'p1', token: 7 });
  const g = book.guard('p1');
  t.doesNotThrow(() => g.admit('vm-1', 7), 'the open ownership');
  t.throws(() => g.admit('vm-1', 6), { code: ErrorCode.FENCING_TOKEN_STALE }, 'an older token');
  t.throws(() => g.admit('vm-1', 0), { code: ErrorCode.FENCING_TOKEN_STALE }, 'no token (a single-pair peer) is older than any');
  t.throws(() => g.admit('vm-1', 8), { code: ErrorCode.CLUSTER_NOT_OWNER }, 'a newer token: not reopened for it yet');
  t.throws(() => book.guard('p2').admit('vm-1', 7), { code: ErrorCode.CLUSTER_NOT_OWNER }, 'the engine of another production member');
  t.throws(() => g.admit('vm-2', 7), { code: ErrorCode.CLUSTER_NOT_OWNER }, 'a VM not open here');
});
