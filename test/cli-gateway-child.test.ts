import { spawn } from 'node:child_process';
import { once } from 'node:events';
import t from 'tap';
import { GatewayChild } from '../src/cli/gateway-child.js';

// A gateway whose IPC channel closed before its exit was seen (the window a chaos kill opens): a request to it
// rejects, and nothing is thrown where no one listens (the send's EPIPE once failed a chaos run).

t.test('a request to a gateway whose channel has closed rejects instead of throwing', async (t) => {
  const proc = spawn(process.execPath, ['-e', 'process.disconnect(); setTimeout(() => {}, 10_000)'], { stdio: ['ignore', 'ignore', 'ignore', 'ipc'] });
  const child = new GatewayChild('dr', proc);
  t.teardown(() => { proc.kill('SIGKILL'); });
  await once(proc, 'disconnect');
  t.equal(proc.exitCode, null, 'the process still runs: only its channel is gone');
  let uncaught: unknown = null;
  const onUncaught = (err: unknown): void => { uncaught = err; };
  process.on('uncaughtException', onUncaught);
  t.teardown(() => { process.off('uncaughtException', onUncaught); });
  await t.rejects(child.request({ type: 'status' }, 'status'), /dr gateway: request status not sent/);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(uncaught, null, 'no uncaught exception');
  await child.kill();
});
