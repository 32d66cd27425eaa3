import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';

// `vrg demo --api jsonrpc` as a user runs it (the compiled entry point: `npm test` builds first).

const execFileP = promisify(execFile);
/** A demo that stalls is killed after this, its output in the error, instead of waiting for tap's timeout. */
const runTimeoutMs = 180_000;
const run = (cmd: string, args: string[]) => execFileP(cmd, args, { timeout: runTimeoutMs, killSignal: 'SIGKILL' });
const main = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));

t.test('vrg demo --api jsonrpc pairs through Start/Complete cluster and volume pairing and verifies', async (t) => {
  const { stdout } = await run('node', [main, 'demo', '--dir', t.testdir(), '--size', '16MiB', '--volume-size', '8MiB',
    '--api', 'jsonrpc', '--mode', 'sync', '--admin-password', 'demo-pass-1']);
  t.match(stdout, /^jsonrpc: production http:\/\/127\.0\.0\.1:\d+\/json-rpc\/12\.5$/m, 'production JSON-RPC line');
  t.match(stdout, /^jsonrpc: dr http:\/\/127\.0\.0\.1:\d+\/json-rpc\/12\.5$/m, 'DR JSON-RPC line');
  for (const kind of ['rest', 'source', 'target', 'intake', 'replica']) t.match(stdout, new RegExp(`^${kind}: `, 'm'), `${kind} lines still come`);
  t.equal(stdout.trim().split('\n').at(-1), `verified: ${2 * 8 * 1024 * 1024} bytes identical`, 'last line says verified');
});

t.test('vrg demo --api refuses an unknown face', async (t) => {
  const err = await run('node', [main, 'demo', '--api', 'soap']).then(() => null, (e: { code: number; stderr: string }) => e);
  t.ok(err, 'exits non-zero');
  t.match(err?.stderr, /--api must be "rest" or "jsonrpc"/);
});
