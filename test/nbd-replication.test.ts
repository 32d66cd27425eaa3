import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import net from 'node:net';
import t from 'tap';
import { needs } from './lib/tools.js';
import { compareVolumes } from '../src/cli/demo.js';
import { NbdServer } from '../src/nbd/nbd-server.js';
import { productionExports, replicaExports } from '../src/replication/nbd-exports.js';
import { startPair, type Pair } from './lib/pair.js';

// Real NBD clients drive the production intake; the DR replica is checked through its read-only export.

const run = promisify(execFile);
const MiB = 1024 * 1024;


async function withNbd(t: Tap.Test, opts: Parameters<typeof startPair>[0]) {
  const pair = await startPair(opts);
  const intake = new NbdServer({ exports: () => productionExports(pair.prod) });
  const replica = new NbdServer({ exports: () => replicaExports(pair.dr) });
  const intakePort = await intake.listen('127.0.0.1', 0);
  const replicaPort = await replica.listen('127.0.0.1', 0);
  t.teardown(async () => {
    await intake.close();
    await replica.close();
  });
  return {
    pair,
    intakeUrl: (vol: string) => `nbd://127.0.0.1:${intakePort}/${vol}`,
    replicaUrl: (vol: string) => `nbd://127.0.0.1:${replicaPort}/${vol}`,
    async finish() {
      await pair.drain();
      await intake.close();
      await replica.close();
      await pair.close();
    },
  };
}

declare global {
  namespace Tap {
    type Test = typeof t;
  }
}

async function sameVolumes(pair: Pair): Promise<string | null> {
  const p = pair.configs.prod.vms[0]!.volumes;
  const d = pair.configs.dr.vms[0]!.volumes;
  return compareVolumes(p.map((v, i) => [v.url, d[i]!.url]));
}

t.test('qemu-io writes, zeroes and discards through the intake; the replica verifies', needs('qemu-io'), async (t) => {
  const s = await withNbd(t, { dir: t.testdir(), volumeSizeBytes: 32 * MiB });
  const io = (url: string, cmds: string[], readOnly = false) =>
    run('qemu-io', ['-f', 'raw', ...(readOnly ? ['-r'] : []), ...cmds.flatMap((c) => ['-c', c]), url]);
  const w = await io(s.intakeUrl('vol-0'), [
    'write -P 0xab 0 1M', 'write -P 0xcd 4M 64k', 'write -z 8M 2M', 'write -P 0x11 12M 1M', 'discard 12M 512k',
    'read -P 0xab 0 1M', 'read -P 0xcd 4M 64k', 'read -P 0 8M 2M', 'read -P 0 12M 512k', 'read -P 0x11 12800k 512k',
  ]);
  t.notMatch(w.stdout + w.stderr, /verification failed|error|failed/i, 'qemu-io wrote and read back its patterns');
  await s.pair.drain();
  const r = await io(s.replicaUrl('vol-0'), ['read -P 0xab 0 1M', 'read -P 0xcd 4M 64k', 'read -P 0 8M 2M', 'read -P 0 12M 512k',
    'read -P 0x11 12800k 512k'], true);
  t.notMatch(r.stdout + r.stderr, /verification failed|error|failed/i, 'the DR replica holds the same patterns');
  const ro = await io(s.replicaUrl('vol-0'), ['write -P 0x77 0 4k']).then((x) => x.stdout + x.stderr, (e) => String(e.stdout) + String(e.stderr));
  t.match(ro, /permission denied|read-only|not permitted/i, 'the replica export refuses to be opened for writing');
  const status = s.pair.prod.status().vms[0]!;
  t.ok(status.bytesSent < 4 * MiB, `zeroes and discards replicated as small records (${status.bytesSent} bytes sent)`);
  await s.finish();
  t.equal(await sameVolumes(s.pair), null, 'DR volumes identical to production');
});

t.test('nbdinfo reports size and flags; nbdcopy copies an image in and it arrives on DR', needs('nbdinfo', 'nbdcopy'), async (t) => {
  const dir = t.testdir();
  const s = await withNbd(t, { dir, volumeSizeBytes: 16 * MiB });
  const info = JSON.parse((await run('nbdinfo', ['--json', s.intakeUrl('vol-1')])).stdout);
  const exp = info.exports[0];
  t.equal(exp['export-size'], 16 * MiB, 'size');
  t.ok(exp.can_flush && exp.can_fua && exp.can_trim && exp.can_zero, 'flush, FUA, trim and zero advertised');
  t.notOk(exp.is_read_only, 'intake is writable');
  const rinfo = JSON.parse((await run('nbdinfo', ['--json', s.replicaUrl('vol-1')])).stdout);
  t.ok(rinfo.exports[0].is_read_only, 'replica is read-only');
  const image = join(dir, 'image.raw');
  const content = Buffer.concat([randomBytes(4 * MiB), Buffer.alloc(4 * MiB), Buffer.from('x'.repeat(8 * MiB))]);
  await writeFile(image, content);
  await run('nbdcopy', [image, s.intakeUrl('vol-1')]);
  await s.pair.drain();
  const back = join(dir, 'back.raw');
  await run('nbdcopy', [s.replicaUrl('vol-1'), back]);
  t.equal(await compareVolumes([[image, back]]), null, 'the DR replica equals the image byte for byte');
  await s.finish();
});

t.test('fio writes with crc32c verification through the intake; fio verifies the DR replica', needs('fio'), async (t) => {
  const s = await withNbd(t, { dir: t.testdir(), volumeSizeBytes: 32 * MiB });
  const job = ['--name=vrg', '--ioengine=nbd', '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=16M',
    '--verify=crc32c', '--verify_state_save=0', '--randseed=42', '--buffer_compress_percentage=50', '--refill_buffers'];
  const w = await run('fio', [...job, `--uri=${s.intakeUrl('vol-0')}`, '--do_verify=1']);
  t.match(w.stdout, /WRITE:/, 'fio wrote through the intake');
  await s.pair.drain();
  const v = await run('fio', [...job, `--uri=${s.replicaUrl('vol-0')}`, '--verify_only']);
  t.notMatch(v.stdout + v.stderr, /verify: bad|verify failed|err=\s*[1-9]/i, 'fio verify pass over the DR replica succeeds');
  t.match(v.stdout, /issued rwts: total=4096,/, 'all 4096 blocks were read back and checked');
  await s.finish();
  t.equal(await sameVolumes(s.pair), null, 'DR volumes identical');
});

t.test('a DR volume served by qemu-nbd as write agent ends identical to production', needs('qemu-nbd', 'qemu-io'), async (t) => {
  const dir = t.testdir();
  const agentFile = join(dir, 'agent.img');
  await run('truncate', ['-s', String(16 * MiB), agentFile]);
  const port = await new Promise<number>((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
  const agent = spawn('qemu-nbd', ['-f', 'raw', '-x', 'dr0', '-p', String(port), '-b', '127.0.0.1', '-t', '-e', '4', agentFile],
    { stdio: 'ignore' });
  t.teardown(() => { agent.kill('SIGTERM'); });
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const s = await withNbd(t, { dir, volumeSizeBytes: 16 * MiB, volumes: 1, drUrls: [`nbd://127.0.0.1:${port}/dr0`] });
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 3M', '-c', 'write -z 1M 512k', '-c', 'write -P 0x33 15M 1M',
    '-c', 'discard 15M 4k', s.intakeUrl('vol-0')]);
  await s.finish();
  t.equal(await compareVolumes([[s.pair.configs.prod.vms[0]!.volumes[0]!.url, agentFile]]), null,
    'the write agent\'s file equals the production volume');
});
