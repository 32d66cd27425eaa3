import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t, { type Test } from 'tap';
import { ErrorCode, isVrgError } from '../src/core/errors.js';
import { MiB } from '../src/core/limits.js';
import { seededRandom } from '../src/core/random.js';
import { FileVolume } from '../src/volume/file-volume.js';
import { NbdVolume } from '../src/volume/nbd-volume.js';
import { openVolume, parseVolumeUrl } from '../src/volume/open-volume.js';
import { startAgent, type Agent } from './lib/agents.js';
import { needs } from './lib/tools.js';

// NBD volumes against real write agents (qemu-nbd, nbdkit), on 127.0.0.1 only.

function codeOf(err: unknown): string {
  return isVrgError(err) ? err.code : String((err as Error)?.message ?? err);
}

async function rejectsWith(t: Test, p: Promise<unknown>, code: string, what: string): Promise<unknown> {
  try {
    await p;
    t.fail(`${what}: expected ${code}, resolved`);
    return null;
  } catch (err) {
    t.equal(codeOf(err), code, what);
    return err;
  }
}

const qemuNbd = (t: Test, file: string, name: string, port?: number): Promise<Agent> =>
  startAgent(t, 'qemu-nbd', (p, pid) => ['--pid-file', pid, '-f', 'raw', '-x', name, '-p', String(p), '-b', '127.0.0.1', '-t', '-e', '8', file], port);

const nbdkit = (t: Test, file: string, filters: string[] = [], port?: number): Promise<Agent> =>
  startAgent(t, 'nbdkit', (p, pid) => ['-f', '-P', pid, '--exit-with-parent', '-p', String(p), '-i', '127.0.0.1',
    ...filters.filter((f) => !f.includes('=')).map((f) => `--filter=${f}`), 'file', `file=${file}`,
    ...filters.filter((f) => f.includes('='))], port);

async function scratch(t: Test, sizeBytes: number): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-nbd-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'vol.img');
  await writeFile(file, '');
  await truncate(file, sizeBytes);
  return file;
}

/** Writes, zeroes and trims through `vol`, mirroring them on `expected`; ends with a flush. */
async function exercise(t: Test, vol: NbdVolume, expected: Buffer, seed: number): Promise<void> {
  const rnd = seededRandom(seed);
  const size = vol.sizeBytes;
  const fill = (n: number): Buffer => rnd.bytes(n);
  const write = async (offset: number, data: Buffer): Promise<void> => {
    await vol.write(offset, data);
    data.copy(expected, offset);
  };
  // One write bigger than the largest block either agent accepts, at an unaligned offset.
  await write(3, fill(Math.min(size - 4, 36 * MiB)));
  // Many small concurrent writes in disjoint slots (pipelined), then overlapping ones one by one.
  const slot = Math.floor(size / 256);
  await Promise.all(Array.from({ length: 256 }, (_, i) => {
    const len = 1 + (rnd.uint32() % Math.min(slot, 70_000));
    const at = i * slot + (rnd.uint32() % (slot - len + 1));
    return write(at, fill(len));
  }));
  for (let i = 0; i < 50; i++) {
    const len = 1 + (rnd.uint32() % 200_000);
    await write(rnd.uint32() % (size - len), fill(len));
  }
  await write(size - 513, fill(513)); // the last byte
  // writeZeroes and trim both read back as zeroes.
  await vol.writeZeroes(4096 + 7, 3 * MiB);
  expected.fill(0, 4096 + 7, 4096 + 7 + 3 * MiB);
  await vol.trim(10 * MiB + 1, 2 * MiB + 5);
  expected.fill(0, 10 * MiB + 1, 12 * MiB + 6);
  await vol.writeZeroes(size - 100, 100);
  expected.fill(0, size - 100);
  await vol.flush();
  const back = await vol.read(0, size);
  t.ok(back.equals(expected), 'the whole volume reads back as expected');
  t.ok((await vol.read(10 * MiB + 1, 2 * MiB + 5)).equals(Buffer.alloc(2 * MiB + 5)), 'trimmed range reads zeroes');
  t.same(await vol.read(5, 0), Buffer.alloc(0), 'empty read');
}

async function checkRanges(t: Test, vol: NbdVolume): Promise<void> {
  const before = vol.stats.requestsSent;
  const size = vol.sizeBytes;
  await rejectsWith(t, vol.read(size - 1, 2), ErrorCode.VOLUME_OUT_OF_RANGE, 'read past the end');
  await rejectsWith(t, vol.write(size, Buffer.alloc(1)), ErrorCode.VOLUME_OUT_OF_RANGE, 'write past the end');
  await rejectsWith(t, vol.write(-1, Buffer.alloc(1)), ErrorCode.VOLUME_OUT_OF_RANGE, 'negative offset');
  await rejectsWith(t, vol.writeZeroes(0, size + 1), ErrorCode.VOLUME_OUT_OF_RANGE, 'zero past the end');
  await rejectsWith(t, vol.trim(1.5, 1), ErrorCode.VOLUME_OUT_OF_RANGE, 'fractional offset');
  t.equal(vol.stats.requestsSent, before, 'out-of-range ops send nothing');
}

t.test('qemu-nbd write agent: image equals the expected one byte for byte', needs('qemu-nbd'), async (t) => {
  const size = 48 * MiB;
  const file = await scratch(t, size);
  const agent = await qemuNbd(t, file, 'vol-a');
  const vol = await NbdVolume.open({ host: '127.0.0.1', port: agent.port, exportName: 'vol-a' }, { sizeBytes: size });
  t.equal(vol.sizeBytes, size, 'size from the handshake');
  t.equal(vol.url, `nbd://127.0.0.1:${agent.port}/vol-a`);
  t.ok(vol.info.canWriteZeroes && vol.info.canFlush, 'qemu-nbd supports write zeroes and flush');
  t.ok(vol.info.maxBlockSize <= 32 * MiB, `max block ${vol.info.maxBlockSize}`);
  const expected = Buffer.alloc(size);
  await exercise(t, vol, expected, 1);
  t.ok(vol.stats.peakInFlight > 1, `requests were pipelined (peak ${vol.stats.peakInFlight})`);
  await checkRanges(t, vol);
  await vol.close();
  await rejectsWith(t, vol.read(0, 1), ErrorCode.CLOSED, 'closed volume');
  t.ok((await readFile(file)).equals(expected), 'backing file equals the expected image');
  await rejectsWith(t, NbdVolume.open({ host: '127.0.0.1', port: agent.port, exportName: 'nope' }),
    ErrorCode.VOLUME_NOT_FOUND, 'unknown export name');
});

t.test('nbdkit with a 64 KiB maximum block: requests are split', needs('nbdkit'), async (t) => {
  const size = 40 * MiB;
  const file = await scratch(t, size);
  const agent = await nbdkit(t, file, ['blocksize-policy', 'blocksize-minimum=1', 'blocksize-preferred=4096',
    'blocksize-maximum=65536', 'blocksize-error-policy=error']);
  const vol = await openVolume(`nbd://127.0.0.1:${agent.port}/`, { sizeBytes: size, create: true }) as NbdVolume;
  t.ok(vol instanceof NbdVolume, 'nbd url opens an NbdVolume');
  t.equal(vol.info.maxBlockSize, 65536, 'max block size from NBD_INFO_BLOCK_SIZE');
  const expected = Buffer.alloc(size);
  await exercise(t, vol, expected, 2);
  await checkRanges(t, vol);
  await vol.close();
  t.ok((await readFile(file)).equals(expected), 'backing file equals the expected image');
});

t.test('nbdkit without write zeroes: zeroes are written as data', needs('nbdkit'), async (t) => {
  const size = 8 * MiB;
  const file = await scratch(t, size);
  await writeFile(file, Buffer.alloc(size, 0xab));
  const agent = await nbdkit(t, file, ['nozero', 'zeromode=none']);
  const vol = await NbdVolume.open({ host: '127.0.0.1', port: agent.port, exportName: '' });
  t.notOk(vol.info.canWriteZeroes, 'server lacks SEND_WRITE_ZEROES');
  await vol.writeZeroes(100, 3 * MiB + 1);
  await vol.trim(5 * MiB, 1000);
  await vol.flush();
  const expected = Buffer.alloc(size, 0xab).fill(0, 100, 100 + 3 * MiB + 1).fill(0, 5 * MiB, 5 * MiB + 1000);
  t.ok((await vol.read(0, size)).equals(expected), 'zeroed ranges read zeroes');
  await vol.close();
  t.ok((await readFile(file)).equals(expected), 'backing file matches');
});

t.test('old handshakes: OPT_EXPORT_NAME without NO_ZEROES, OPT_GO without NO_ZEROES', needs('nbdkit'), async (t) => {
  const file = await scratch(t, 2 * MiB);
  for (const mask of ['0', '1']) {
    const agent = await startAgent(t, 'nbdkit', (p, pid) => ['-f', '-P', pid, '--exit-with-parent', `--mask-handshake=${mask}`,
      '-p', String(p), '-i', '127.0.0.1', 'file', `file=${file}`]);
    const vol = await NbdVolume.open({ host: '127.0.0.1', port: agent.port, exportName: '' });
    t.equal(vol.sizeBytes, 2 * MiB, `mask ${mask}: size`);
    await vol.write(mask === '0' ? 0 : 4096, Buffer.alloc(4096, 0x5a));
    t.same(await vol.read(mask === '0' ? 0 : 4096, 4096), Buffer.alloc(4096, 0x5a), `mask ${mask}: write and read`);
    await vol.close();
    await agent.kill();
  }
});

t.test('server error replies fail only that request', needs('nbdkit'), async (t) => {
  const file = await scratch(t, 4 * MiB);
  const trigger = `${file}.fail`;
  const agent = await nbdkit(t, file, ['error', 'error-pwrite=EIO', 'error-pwrite-rate=100%', `error-pwrite-file=${trigger}`]);
  const vol = await NbdVolume.open({ host: '127.0.0.1', port: agent.port, exportName: '' });
  await writeFile(trigger, '');
  const err = await rejectsWith(t, vol.write(0, Buffer.alloc(10, 1)), ErrorCode.VOLUME_IO, 'write fails with VRG_VOLUME_IO');
  t.equal((err as { details?: { errno?: string } }).details?.errno, 'EIO', 'errno name in details');
  await rm(trigger);
  await vol.write(0, Buffer.alloc(10, 2));
  t.same(await vol.read(0, 10), Buffer.alloc(10, 2), 'the connection survives an error reply');
  await vol.close();
});

t.test('a killed agent fails pending ops; the next op reconnects once', needs('nbdkit'), async (t) => {
  const file = await scratch(t, 4 * MiB);
  const agent = await nbdkit(t, file, ['delay', 'delay-write=5']);
  const vol = await NbdVolume.open({ host: '127.0.0.1', port: agent.port, exportName: '' }, { connectTimeoutMs: 2_000 });
  const settled = Promise.allSettled(Array.from({ length: 8 }, (_, i) => vol.write(i * 4096, Buffer.alloc(4096, i + 1))));
  await new Promise((r) => setTimeout(r, 200));
  await agent.kill();
  const results = await settled;
  t.same(results.map((r) => r.status === 'rejected' ? codeOf(r.reason) : 'ok'),
    Array(8).fill(ErrorCode.CONNECTION_CLOSED), 'every pending write fails with VRG_CONNECTION_CLOSED');
  await rejectsWith(t, vol.read(0, 1), ErrorCode.CONNECTION_CLOSED, 'reconnect to a dead agent fails');
  await nbdkit(t, file, [], agent.port);
  t.same(await vol.read(0, 4), Buffer.alloc(4), 'the next op reconnects to the restarted agent');
  await vol.write(0, Buffer.alloc(4, 9));
  await rejectsWith(t, vol.flush(), ErrorCode.VOLUME_IO,
    'the first flush after a drop with unflushed writes fails: the agent may have lost them');
  await vol.write(0, Buffer.alloc(4, 9)); // the caller re-applies from its durable position
  await vol.flush();
  t.same(await vol.read(0, 4), Buffer.alloc(4, 9));
  await vol.close();
});

t.test('a request timeout fails it and drops the connection', needs('nbdkit'), async (t) => {
  const file = await scratch(t, 1 * MiB);
  const agent = await nbdkit(t, file, ['delay', 'delay-read=3']);
  const vol = await NbdVolume.open({ host: '127.0.0.1', port: agent.port, exportName: '' }, { requestTimeoutMs: 300 });
  await Promise.all([
    rejectsWith(t, vol.read(0, 10), ErrorCode.TIMEOUT, 'the first request times out'),
    rejectsWith(t, vol.read(100, 10), ErrorCode.CONNECTION_CLOSED, 'the other pending request fails with the connection'),
  ]);
  await vol.write(0, Buffer.alloc(3, 7)); // reconnected
  await vol.close();
});

t.test('bounded in-flight requests under heavy concurrency', needs('qemu-nbd'), async (t) => {
  const size = 16 * MiB;
  const file = await scratch(t, size);
  const agent = await qemuNbd(t, file, 'x');
  const vol = await NbdVolume.open({ host: '127.0.0.1', port: agent.port, exportName: 'x' }, { maxInFlight: 8 });
  const ops = Array.from({ length: 2000 }, (_, i) => vol.write(i * 8192, Buffer.alloc(8192, i & 0xff)));
  await Promise.all(ops);
  const reads = await Promise.all(Array.from({ length: 2000 }, (_, i) => vol.read(i * 8192, 8192)));
  t.ok(reads.every((b, i) => b.equals(Buffer.alloc(8192, i & 0xff))), '2000 pipelined writes read back');
  t.ok(vol.stats.peakInFlight <= 8 && vol.stats.peakInFlight > 1, `peak in flight ${vol.stats.peakInFlight} ≤ 8`);
  await vol.close();
});

t.test('openVolume of an nbd:// export', needs('qemu-nbd'), async (t) => {
  const file = await scratch(t, 2 * MiB);
  const agent = await qemuNbd(t, file, 'small');
  await rejectsWith(t, openVolume(`nbd://127.0.0.1:${agent.port}/small`, { sizeBytes: 4 * MiB, create: true }),
    ErrorCode.VOLUME_IO, 'an nbd export smaller than sizeBytes is refused (never created or grown)');
  const v = await openVolume(`nbd://127.0.0.1:${agent.port}/small`, { sizeBytes: 1 * MiB, create: true });
  t.equal(v.sizeBytes, 2 * MiB, 'export size');
  await v.close();
});

t.test('openVolume of paths and file:// URLs; nothing listening at an nbd:// URL', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vrg-ov-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const f1 = await openVolume(join(dir, 'a.img'), { sizeBytes: 4096, create: true });
  t.ok(f1 instanceof FileVolume && f1.sizeBytes === 4096, 'plain path → FileVolume');
  await f1.close();
  const f2 = await openVolume(pathToFileURL(join(dir, 'a.img')).href, { sizeBytes: 4096 });
  t.ok(f2 instanceof FileVolume, 'file:// url → FileVolume');
  await f2.close();
  await rejectsWith(t, openVolume('nbd://127.0.0.1:1/x', { nbd: { connectTimeoutMs: 1000 } }),
    ErrorCode.CONNECTION_CLOSED, 'nothing listening');
});

t.test('parseVolumeUrl', async (t) => {
  t.same(parseVolumeUrl('/srv/v.img'), { kind: 'file', path: '/srv/v.img' });
  t.same(parseVolumeUrl('rel/v.img'), { kind: 'file', path: 'rel/v.img' });
  t.same(parseVolumeUrl('file:///srv/a%20b.img'), { kind: 'file', path: '/srv/a b.img' });
  t.same(parseVolumeUrl('nbd://10.0.0.5:10810/vol-1'), { kind: 'nbd', host: '10.0.0.5', port: 10810, exportName: 'vol-1' });
  t.same(parseVolumeUrl('nbd://agent.example/vol%2F2'), { kind: 'nbd', host: 'agent.example', port: 10809, exportName: 'vol/2' });
  t.same(parseVolumeUrl('nbd://[::1]:10900/e'), { kind: 'nbd', host: '::1', port: 10900, exportName: 'e' });
  t.same(parseVolumeUrl('nbd://[fe80::1]/e'), { kind: 'nbd', host: 'fe80::1', port: 10809, exportName: 'e' });
  t.same(parseVolumeUrl('NBD://h/'), { kind: 'nbd', host: 'h', port: 10809, exportName: '' });
  t.same(parseVolumeUrl('nbd://h'), { kind: 'nbd', host: 'h', port: 10809, exportName: '' });
  for (const bad of ['', 'nbd://', 'nbd:///x', 'nbd://h:0/x', 'nbd://h:70000/x', 'nbd://h:port/x', 'nbd://u:p@h/x',
    'nbd://h/x?tls=1', 'nbd://h/x#f', 'nbd:h/x', 'nbds://h/x', 'nbd+unix:///x?socket=/s', 'http://h/x',
    'file://remote/x', 'file:rel', 'file:///', 'nbd://[::1/x', 'nbd://h/%zz', 'a\0b']) {
    t.throws(() => parseVolumeUrl(bad), { code: ErrorCode.INVALID_ARGUMENT }, `rejects '${bad.replace('\0', '\\0')}'`);
  }
});
