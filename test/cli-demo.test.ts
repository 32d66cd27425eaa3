import { execFile, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';
import { needs } from './lib/tools.js';
import { until, within } from './lib/wait.js';

// The `vrg` CLI as a user runs it (the compiled entry point: `npm test` builds first).

const execFileP = promisify(execFile);
/** A demo that stalls is killed after this, its output in the error, instead of waiting for tap's timeout. */
const runTimeoutMs = 180_000;
const run = (cmd: string, args: string[]) => execFileP(cmd, args, { timeout: runTimeoutMs, killSignal: 'SIGKILL' });
const main = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));


t.test('vrg demo replicates a small load and verifies the replica', async (t) => {
  const dir = t.testdir();
  const { stdout } = await run('node', [main, 'demo', '--dir', dir, '--size', '24MiB', '--volume-size', '16MiB',
    '--compress', '1', '--encrypt', '1']);
  t.match(stdout, /^source: \S+ \S+$/m, 'source lines');
  t.match(stdout, /^target: \S+ \S+$/m, 'target lines');
  t.match(stdout, /^intake: \S+ nbd:\/\/127\.0\.0\.1:\d+\/\S+$/m, 'intake lines');
  const last = stdout.trim().split('\n').at(-1);
  t.equal(last, `verified: ${2 * 16 * 1024 * 1024} bytes identical`, 'last line says verified');
});

t.test('vrg demo with a small journal and a capped link goes through CBT and a consistency check, then verifies', async (t) => {
  const dir = t.testdir();
  const { stdout } = await run('node', [main, 'demo', '--dir', dir, '--size', '48MiB', '--volume-size', '32MiB',
    '--journal-capacity', '4MiB', '--link-rate', '8MB/s', '--compress', '0', '--admin-password', 'demo-pass-1']);
  const states = [...stdout.matchAll(/^state: \S+ (\w+) -> (\w+)$/gm)].map((m) => `${m[1]}->${m[2]}`);
  t.ok(states.includes('queue->cbt'), `into CBT: ${states.join(', ')}`);
  t.ok(states.includes('cbt->check'), 'CBT resync drained into a consistency check');
  t.equal(states.at(-1), 'check->queue', 'back in queue at the end');
  t.match(stdout, /^rest: production http:\/\/127\.0\.0\.1:\d+/m);
  t.match(stdout, /^rest: dr http:\/\/127\.0\.0\.1:\d+/m);
  t.equal(stdout.trim().split('\n').at(-1), `verified: ${2 * 32 * 1024 * 1024} bytes identical`);
});

for (const args of [['--mode', 'sync'], ['--mode', 'snapshots'], ['--write-back']]) {
  t.test(`vrg demo ${args.join(' ')} verifies`, async (t) => {
    const dir = t.testdir();
    const { stdout } = await run('node', [main, 'demo', '--dir', dir, '--size', '16MiB', '--volume-size', '16MiB', ...args]);
    t.equal(stdout.trim().split('\n').at(-1), `verified: ${2 * 16 * 1024 * 1024} bytes identical`);
    if (args[0] === '--write-back') {
      const cfg = JSON.parse(await readFile(join(dir, 'production.json'), 'utf8')) as { intake: { writeBack: boolean } };
      t.equal(cfg.intake.writeBack, true, 'the production gateway ran with the write-back intake');
    }
  });
}

for (const mode of ['planned', 'unplanned', 'test']) {
  t.test(`vrg demo --failover ${mode} runs the cycle under load and verifies`, async (t) => {
    const dir = t.testdir();
    const { stdout } = await run('node', [main, 'demo', '--dir', dir, '--size', '16MiB', '--volume-size', '32MiB', '--failover', mode]);
    const lines = stdout.trim().split('\n');
    t.equal(lines.at(-1), `verified: ${2 * 32 * 1024 * 1024} bytes identical`);
    t.ok(lines.some((l) => l.startsWith('failover: ')), 'a failover: line');
    t.ok(lines.some((l) => l.startsWith('failback: ')), 'a failback: line');
    if (mode !== 'test') t.match(lines.find((l) => l.startsWith('failover: planned home')) ?? '', /generation 3; 0 B resynced/, 'home again with nothing resynced');
    if (mode === 'planned') t.match(lines.find((l) => l.startsWith('failback: ')) ?? '', /0 B resynced/);
  });
}

t.test('bad options get a clear message and exit code 2', async (t) => {
  for (const args of [['--compress', '2'], ['--size', 'lots'], ['--bogus'], ['--load', 'maybe'], ['--source', '/nonexistent/file'],
    ['--mode', 'fast'], ['--journal-capacity', '1KiB'], ['--link-rate', 'quick'], ['--failover', 'sideways'], ['--failover', 'test', '--load', 'none']]) {
    const r = await run('node', [main, 'demo', '--dir', t.testdir(), ...args]).then(() => null, (e) => e as { code: number; stderr: string });
    t.ok(r, `${args.join(' ')} fails`);
    t.equal(r?.code, 2, `${args.join(' ')}: exit code 2`);
    t.match(r?.stderr ?? '', /^vrg: /, `${args.join(' ')}: says what is wrong (${(r?.stderr ?? '').split('\n')[0]})`);
  }
  const u = await run('node', [main, 'frobnicate']).then(() => null, (e) => e as { code: number; stderr: string });
  t.equal(u?.code, 2, 'unknown command: exit code 2');
});

t.test('vrg demo --load none serves the intake until SIGTERM, then drains and verifies', needs('qemu-io'), async (t) => {
  const dir = t.testdir();
  const demo = spawn('node', [main, 'demo', '--dir', dir, '--volume-size', '16MiB', '--load', 'none'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  demo.stdout.on('data', (c) => { out += String(c); });
  const exited = new Promise<number | null>((resolve) => demo.on('exit', resolve));
  t.teardown(() => { demo.kill('SIGKILL'); });
  await until(() => /waiting for NBD clients/.test(out), 60_000, 'the demo to serve its intake', () => out);
  const urls = [...out.matchAll(/^intake: \S+ (nbd:\S+)$/gm)].map((m) => m[1]!);
  t.equal(urls.length, 2, 'one intake line per volume');
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 2M', '-c', 'write -z 4M 1M', urls[0]!]);
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x17 1M 3M', urls[1]!]);
  demo.kill('SIGTERM');
  t.equal(await within(exited, 'the demo to drain, verify and exit', () => out, runTimeoutMs), 0, 'the demo exits 0');
  t.match(out, /^verified: \d+ bytes identical$/m, 'the replica verified after the drain');
});
