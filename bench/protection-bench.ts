import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { systemClock } from '../src/core/clock.js';
import { MiB } from '../src/core/limits.js';
import { silentLogger } from '../src/core/log.js';
import { systemRandom } from '../src/core/random.js';
import { tcpTransport } from '../src/link/transport.js';
import { PoolCodec } from '../src/pipeline/codec.js';
import { parseConfig } from '../src/replication/config.js';
import { DrGateway } from '../src/replication/target/dr-gateway.js';
import { ProductionGateway } from '../src/replication/source/production-gateway.js';

// Issue 4's rates, on a realistic disk image (the bench's ext4 image as the source volume):
// - initial sync: a full CBT resync of the image (holes skipped), staged on DR and committed;
// - consistency check of the clean pair (source and target digested, digests compared over the link);
// - CBT resync after an overflow: the journal is made tiny and the link is down while 64 MiB is written.
// Both gateways run in this process over loopback TCP, lz4 + AES, one codec thread.

export interface ProtectionBenchResult {
  volumeBytes: number;
  /** Bytes of data the initial sync shipped (the image's data; holes go as ZERO records). */
  dataBytes: number;
  initialSync: { seconds: number; MBps: number; bytesSent: number };
  check: { seconds: number; GBps: number; regionsChecked: number };
  cbtResync: { dirtyBytes: number; seconds: number; MBps: number };
}

const vmUuid = 'b3a1c2d4-0000-4000-8000-00000000be11';

export async function benchProtection(opts: { imagePath: string; workDir: string }): Promise<ProtectionBenchResult> {
  const dir = resolve(opts.workDir);
  await rm(dir, { recursive: true, force: true });
  await mkdir(join(dir, 'src'), { recursive: true });
  const source = join(dir, 'src', 'source.img');
  await copyFile(opts.imagePath, source);
  const volumeBytes = (await stat(source)).size;
  const secret = randomBytes(32).toString('hex');
  const cfg = (role: string, url: string, port: number) => parseConfig({
    role, gatewayId: `pb-${role}`, dataDir: join(dir, role), link: { host: '127.0.0.1', port, secret },
    journalCapacityBytes: 64 * MiB,
    vms: [{ vmUuid, vmName: 'bench', compressOption: 1, encryptOption: 1, volumes: [{ volUuid: 'v0', url, sizeBytes: volumeBytes }] }],
  });
  const codec = new PoolCodec({ threads: 1 });
  const deps = { clock: systemClock, random: systemRandom, transport: tcpTransport, codec, logger: silentLogger };
  const dr = await DrGateway.open(cfg('dr', join(dir, 'dr.img'), 0), deps);
  let t0 = Date.now();
  const prod = await ProductionGateway.open(cfg('production', source, dr.linkPort), deps);
  try {
    await until(() => prod.vmStatus(vmUuid)!.state === 'check');
    const syncSec = (Date.now() - t0) / 1000;
    const { bytesSent: sent, plainBytesSent: data } = prod.status().vms[0]!;
    await prod.drain();
    // An on-demand check of the clean pair, timed alone.
    t0 = Date.now();
    prod.requestCheck(vmUuid);
    await prod.drain();
    const check = { seconds: (Date.now() - t0) / 1000, regionsChecked: prod.vmStatus(vmUuid)!.check!.regionsChecked };
    const cbt = await cbtResync(prod, dr);
    return {
      volumeBytes, dataBytes: data,
      initialSync: { seconds: syncSec, MBps: volumeBytes / MiB / syncSec, bytesSent: sent },
      check: { ...check, GBps: volumeBytes / 1e9 / check.seconds },
      cbtResync: cbt,
    };
  } finally {
    await prod.close();
    await dr.close();
    await codec.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Pauses the VM (nothing shipped), overwrites 64 MiB past the journal's capacity, resumes: CBT resync. */
async function cbtResync(prod: ProductionGateway, _dr: DrGateway): Promise<ProtectionBenchResult['cbtResync']> {
  prod.pause(vmUuid);
  const chunk = Buffer.alloc(MiB);
  for (let i = 0; i < 128; i++) {
    chunk.fill(i & 0xff, 0, MiB / 2); // half compressible
    randomBytes(MiB / 2).copy(chunk, MiB / 2);
    await prod.write('v0', i * MiB, chunk);
  }
  const st = prod.vmStatus(vmUuid)!;
  const dirtyBytes = st.bytesBehind;
  const t0 = Date.now();
  prod.resume(vmUuid);
  await prod.drain();
  const seconds = (Date.now() - t0) / 1000;
  return { dirtyBytes, seconds, MBps: dirtyBytes / MiB / seconds };
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

export function formatProtectionBench(r: ProtectionBenchResult): string {
  return [
    `protection (ext4 image, ${(r.volumeBytes / MiB).toFixed(0)} MiB volume, lz4+aes, 1 codec thread):`,
    `  initial sync (full resync, holes skipped, staged + committed): ${r.initialSync.seconds.toFixed(2)} s, ` +
      `${r.initialSync.MBps.toFixed(0)} MB/s of volume, ${(r.dataBytes / MiB).toFixed(0)} MiB of data read, ` +
      `${(r.initialSync.bytesSent / MiB).toFixed(0)} MiB sent`,
    `  consistency check of a clean pair: ${r.check.seconds.toFixed(2)} s, ${r.check.GBps.toFixed(2)} GB/s of volume, ${r.check.regionsChecked} regions`,
    `  CBT resync after overflow: ${(r.cbtResync.dirtyBytes / MiB).toFixed(0)} MiB dirty in ${r.cbtResync.seconds.toFixed(2)} s ` +
      `(${r.cbtResync.MBps.toFixed(0)} MB/s, includes the check that follows)`,
  ].join('\n');
}

// `node dist/bench/protection-bench.js IMAGE [workDir]`: only this section.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(import.meta.dirname ?? '.', '..', '..');
  const image = process.argv[2] ?? join(root, 'bench', 'work', 'image.ext4');
  benchProtection({ imagePath: image, workDir: process.argv[3] ?? join(root, 'bench', 'work', 'protection') })
    .then(async (r) => {
      process.stdout.write(`${formatProtectionBench(r)}\n${JSON.stringify(r, null, 2)}\n`);
      await writeFile(join(root, 'bench', 'results', `protection-${new Date().toISOString().replaceAll(':', '-')}.json`), JSON.stringify(r, null, 2));
    })
    .catch((err) => {
      process.stderr.write(`protection-bench: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    });
}
