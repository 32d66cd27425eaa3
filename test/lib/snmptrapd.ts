import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { until } from './wait.js';

// A real SNMP trap receiver for the alarm tests: Debian's snmptrapd on a free loopback UDP port, printing
// every trap (numeric OIDs) into `output()`.

async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export async function startSnmptrapd(t: { teardown(fn: () => unknown): void }, dir: string): Promise<{ port: number; output(): string }> {
  const conf = join(dir, 'snmptrapd.conf');
  await writeFile(conf, 'disableAuthorization yes\n');
  const port = await freeUdpPort();
  // -f foreground, -Lo log to stdout, -C only our config, -n numeric addresses, -On numeric OIDs.
  const trapd = spawn('snmptrapd', ['-f', '-Lo', '-C', '-c', conf, '-n', '-On', `udp:127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  trapd.stdout.on('data', (b: Buffer) => (out += b.toString()));
  trapd.stderr.on('data', (b: Buffer) => (out += b.toString()));
  t.teardown(() => { trapd.kill('SIGTERM'); });
  await until(() => /NET-SNMP version/.test(out), 10_000, 'snmptrapd started');
  return { port, output: () => out };
}
