import t from 'tap';
import { compareVolumes } from '../src/cli/demo.js';
import { runLoad } from '../src/cli/load-generator.js';
import { ErrorCode } from '../src/core/errors.js';
import { startPair } from './lib/pair.js';

const MiB = 1024 * 1024;

async function replicate(t: Tap.Test, o: { compress: 0 | 1; encrypt: 0 | 1; pool: boolean }) {
  const dir = t.testdir();
  // Always: this is about the codec path (auto would send raw on this unconstrained link; tested below).
  const pair = await startPair({ dir, ...o, compression: 'always' });
  const vols = pair.configs.prod.vms[0]!.volumes;
  await runLoad({ totalBytes: 24 * MiB, volumes: vols, writeBytes: 64 * 1024, queueDepth: 16, seed: 7 },
    (w) => pair.prod.write(w.volUuid, w.offset, w.data), () => undefined);
  await pair.prod.writeZeroes('vol-0', 4096, 65536);
  await pair.prod.trim('vol-1', 1 * MiB, 2 * MiB);
  await pair.prod.flush();
  await pair.drain();
  const status = pair.prod.status().vms[0]!;
  const drStatus = pair.dr.status().vms[0]!;
  const rings = { production: pair.prod.diagnostics().linkRing, dr: pair.dr.diagnostics().linkRing };
  await pair.close();
  t.equal(status.ackedSeq, status.lastSeq, 'DR acknowledged every record');
  for (const [side, ring] of Object.entries(rings)) {
    // Drained: every batch, frame and opened batch has given its block back; the pooled path was used.
    t.equal(ring.usedBytes, 0, `${side}: every ring block returned`);
    t.ok(ring.allocs > 0 && ring.usedBytesPeak <= ring.capacityBytes, `${side}: frames went through the ring`);
  }
  t.equal(drStatus.recordsApplied, status.lastSeq, 'each record applied exactly once');
  t.equal(await compareVolumes(vols.map((v, i) => [v.url, pair.configs.dr.vms[0]!.volumes[i]!.url])), null,
    'DR volumes identical to the source volumes');
  // Writes made before the initial sync began were tracked by the CBT bitmap, not journaled.
  // Compressed at ship time: the journal keeps the writes as they arrived.
  if (o.compress) t.ok(status.plainBytesSent / status.bytesSent > 1.5, `compressed ${(status.plainBytesSent / status.bytesSent).toFixed(2)}:1 on the wire`);
  else t.equal(status.bytesSent, status.plainBytesSent, 'sent raw without compression');
}

// Tap's global type for a subtest.
declare global {
  namespace Tap {
    type Test = typeof t;
  }
}

for (const [compress, encrypt] of [[1, 1], [0, 0], [1, 0], [0, 1]] as const) {
  t.test(`replicates with compress=${compress} encrypt=${encrypt} (inline codec)`, (t) =>
    replicate(t, { compress, encrypt, pool: false }));
}
t.test('replicates through the worker pool', (t) => replicate(t, { compress: 1, encrypt: 1, pool: true }));

for (const capped of [false, true]) {
  t.test(`auto compression ${capped ? 'compresses behind a capped link' : 'sends raw on an unconstrained link'}`, async (t) => {
    const pair = await startPair({ dir: t.testdir(), compress: 1, pool: false, ...(capped ? { linkRateBytesPerSec: 6_000_000 } : {}) });
    t.teardown(() => pair.close());
    await pair.drain(); // the initial sync of the empty volumes
    const vols = pair.configs.prod.vms[0]!.volumes;
    await runLoad({ totalBytes: 24 * MiB, volumes: vols, writeBytes: 64 * 1024, queueDepth: 16, seed: 9 },
      (w) => pair.prod.write(w.volUuid, w.offset, w.data), () => undefined);
    await pair.drain();
    const s = pair.prod.status().vms[0]!;
    t.comment(`compression ${JSON.stringify(s.compression)}, ${(s.plainBytesSent / s.bytesSent).toFixed(2)}:1 on the wire`);
    t.equal(s.compression.setting, 'auto');
    if (capped) {
      t.equal(s.compression.compressing, true, 'compressing: the link is the bottleneck');
      t.ok(s.compression.compressedShare > 0.9, 'nearly every byte went compressed');
      t.ok(s.plainBytesSent / s.bytesSent > 1.5, 'and the wire carried about half');
    } else {
      t.equal(s.compression.compressing, false, 'raw: nothing waits on the link, compressing would only cost CPU');
      t.ok(s.compression.switches >= 1, 'it switched from compressing to raw');
      t.ok(s.compression.compressedShare < 0.95, `the rest went raw (share compressed ${s.compression.compressedShare.toFixed(2)})`);
    }
    t.equal(await compareVolumes(vols.map((v, i) => [v.url, pair.configs.dr.vms[0]!.volumes[i]!.url])), null, 'DR volumes identical');
  });
}

t.test('resumes after dropped TCP connections with no gap and no duplicate', async (t) => {
  const dir = t.testdir();
  const pair = await startPair({ dir, proxy: true, pool: true });
  const vols = pair.configs.prod.vms[0]!.volumes;
  // Cut every 8 MiB written (not on a timer: a fast machine would finish the load between two ticks).
  let cuts = 0;
  let written = 0;
  await runLoad({ totalBytes: 48 * MiB, volumes: vols, writeBytes: 128 * 1024, queueDepth: 8, seed: 3 },
    (w) => {
      written += w.data.byteLength;
      if (written >= (cuts + 1) * 8 * MiB && written < 48 * MiB) {
        pair.proxy!.cut();
        cuts++;
      }
      return pair.prod.write(w.volUuid, w.offset, w.data);
    }, () => undefined);
  await pair.drain();
  const prodStatus = pair.prod.status().vms[0]!;
  const drStatus = pair.dr.status().vms[0]!;
  await pair.close();
  t.ok(cuts >= 2 && pair.proxy!.connections >= 2, `link was cut ${cuts} times, ${pair.proxy!.connections} connections`);
  t.equal(drStatus.durableSeq, prodStatus.lastSeq, 'DR durable up to the last record');
  t.equal(drStatus.recordsApplied, prodStatus.lastSeq, 'each record applied exactly once across reconnects');
  t.equal(await compareVolumes(vols.map((v, i) => [v.url, pair.configs.dr.vms[0]!.volumes[i]!.url])), null,
    'DR volumes identical');
});

t.test('a DR gateway restart resumes from its durable position', async (t) => {
  const dir = t.testdir();
  const pair = await startPair({ dir, pool: false });
  const vols = pair.configs.prod.vms[0]!.volumes;
  const load = (seed: number) => runLoad({ totalBytes: 8 * MiB, volumes: vols, writeBytes: 64 * 1024, queueDepth: 8, seed },
    (w) => pair.prod.write(w.volUuid, w.offset, w.data), () => undefined);
  await load(1);
  await pair.drain();
  const before = pair.dr.status().vms[0]!.durableSeq;
  await pair.restartDr();
  t.equal(pair.dr.status().vms[0]!.durableSeq, before, 'durable position survives the restart');
  await load(2);
  await pair.drain();
  const after = pair.dr.status().vms[0]!;
  const prodStatus = pair.prod.status().vms[0]!;
  await pair.close();
  t.equal(after.recordsApplied, prodStatus.lastSeq - before, 'the new process applied exactly the records after it');
  t.equal(after.duplicatesSkipped, 0, 'nothing was resent');
  t.equal(await compareVolumes(vols.map((v, i) => [v.url, pair.configs.dr.vms[0]!.volumes[i]!.url])), null,
    'DR volumes identical');
});

t.test('bad intake requests get a clear error and change nothing', async (t) => {
  const dir = t.testdir();
  const pair = await startPair({ dir });
  await t.rejects(pair.prod.write('no-such-volume', 0, Buffer.alloc(4096)), { code: ErrorCode.VOLUME_NOT_FOUND });
  await t.rejects(pair.prod.write('vol-0', 16 * MiB - 1024, Buffer.alloc(4096)), { code: ErrorCode.VOLUME_OUT_OF_RANGE });
  await t.rejects(pair.prod.write('vol-0', -4096, Buffer.alloc(4096)), { code: ErrorCode.VOLUME_OUT_OF_RANGE });
  t.equal(pair.prod.status().vms[0]!.lastSeq, 0, 'nothing journaled');
  await pair.close();
});

t.test('a journal smaller than the load fills up, checkpoints, and replication completes', async (t) => {
  const dir = t.testdir();
  const pair = await startPair({ dir, journalCapacityBytes: 16 * MiB, compress: 0, volumeSizeBytes: 32 * MiB });
  const vols = pair.configs.prod.vms[0]!.volumes;
  let peakUsed = 0;
  await runLoad({ totalBytes: 64 * MiB, volumes: vols, writeBytes: 256 * 1024, queueDepth: 16, seed: 5 },
    (w) => pair.prod.write(w.volUuid, w.offset, w.data),
    () => { peakUsed = Math.max(peakUsed, pair.prod.status().vms[0]!.journalUsedBytes); });
  await pair.drain();
  const status = pair.prod.status().vms[0]!;
  await pair.close();
  t.ok(peakUsed <= 16 * MiB, `journal never exceeded its capacity (peak ${(peakUsed / MiB).toFixed(1)} MiB)`);
  t.ok(status.bytesIn >= 64 * MiB, 'the whole load was accepted');
  t.equal(await compareVolumes(vols.map((v, i) => [v.url, pair.configs.dr.vms[0]!.volumes[i]!.url])), null,
    'DR volumes identical');
});
