import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { Toxiproxy } from 'toxiproxy-node-client';
import { FaultProxyServer } from '../src/chaos/fault-proxy/fault-proxy-server.js';
import { ErrorCode } from '../src/core/errors.js';

// `vrg fault-proxy` driven by toxiproxy-node-client, a Toxiproxy client nobody here wrote: each toxic is
// added through it and the traffic through the proxy is measured to do what the toxic says.

interface Upstream { port: number; received: () => number; close: () => Promise<void> }

/** An echo server: what a connection sends comes back. */
async function echoServer(): Promise<Upstream> {
  let received = 0;
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    s.on('data', (d) => {
      received += d.length;
      s.write(d);
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: (srv.address() as net.AddressInfo).port, received: () => received,
    close: () => new Promise((r) => {
      for (const s of sockets) s.destroy();
      srv.close(() => r());
    }),
  };
}

function portOf(listen: string): number {
  return Number(listen.slice(listen.lastIndexOf(':') + 1));
}

function connectTo(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** Sends `bytes` and resolves with what came back once `expect` bytes did (or the connection ended), and the time. */
function exchange(s: net.Socket, bytes: Buffer, expect = bytes.length): Promise<{ data: Buffer; ms: number; error?: string }> {
  const start = performance.now();
  const parts: Buffer[] = [];
  let got = 0;
  return new Promise((resolve) => {
    const done = (error?: string): void => resolve({ data: Buffer.concat(parts), ms: performance.now() - start, ...(error ? { error } : {}) });
    s.on('data', (d: Buffer) => {
      parts.push(d);
      got += d.length;
      if (got >= expect) done();
    });
    s.on('error', (e: NodeJS.ErrnoException) => done(e.code));
    s.on('close', () => done());
    s.write(bytes);
  });
}

async function setup(t: Test) {
  const echo = await echoServer();
  const server = new FaultProxyServer({ seed: 7 });
  const url = await server.listen('127.0.0.1', 0);
  t.teardown(async () => {
    await server.close();
    await echo.close();
  });
  const client = new Toxiproxy(url);
  const proxy = await client.createProxy({ name: 'echo', listen: '127.0.0.1:0', upstream: `127.0.0.1:${echo.port}` });
  return { echo, server, url, client, proxy, port: portOf(proxy.listen) };
}

t.test('the client creates, lists and finds a proxy; bytes pass through it unchanged', async (t) => {
  const { client, proxy, port, url } = await setup(t);
  t.not(port, 0, `the proxy reports the port it listens on: ${proxy.listen}`);
  t.ok(proxy.enabled, 'enabled on creation');
  const version = await fetch(`${url}/version`).then((r) => r.json()) as { version: string };
  t.match(version.version, /^\d+\.\d+/, `GET /version answers as Toxiproxy does: ${version.version}`);
  t.same(Object.keys(await client.getAll()), ['echo'], 'listed');
  t.equal((await client.get('echo')).upstream, proxy.upstream, 'found by name');
  const s = await connectTo(port);
  const payload = Buffer.from('x'.repeat(100_000));
  const back = await exchange(s, payload);
  s.destroy();
  t.ok(back.data.equals(payload), '100 kB echoed unchanged');
});

t.test('latency: every chunk waits the latency; removing the toxic removes it', async (t) => {
  const { proxy, port } = await setup(t);
  const toxic = await proxy.addToxic({ name: 'slow', type: 'latency', stream: 'downstream', toxicity: 1, attributes: { latency: 300, jitter: 0 } });
  t.equal(toxic.attributes.latency, 300, 'the toxic as the server stored it');
  const s = await connectTo(port);
  const slow = await exchange(s, Buffer.from('ping'));
  t.ok(slow.ms >= 295, `round trip with 300 ms of latency: ${slow.ms.toFixed(0)} ms`);
  await toxic.remove();
  t.same((await proxy.toxiproxy.get('echo')).toJson().toxics ?? [], [], 'no toxic left');
  s.removeAllListeners('data');
  const fast = await exchange(s, Buffer.from('pong'));
  s.destroy();
  t.ok(fast.ms < 300, `round trip once removed: ${fast.ms.toFixed(1)} ms`);
});

t.test('bandwidth: the rate caps what passes (KB/s, Toxiproxy\'s unit)', async (t) => {
  const { proxy, port } = await setup(t);
  await proxy.addToxic({ name: 'cap', type: 'bandwidth', stream: 'upstream', toxicity: 1, attributes: { rate: 100 } });
  const s = await connectTo(port);
  const payload = Buffer.alloc(250_000, 1);
  const r = await exchange(s, payload);
  s.destroy();
  const rateKBps = payload.length / r.ms; // bytes per ms = KB/s
  t.ok(r.data.equals(payload), 'everything arrives');
  t.ok(r.ms >= 2300, `250 kB at 100 KB/s took ${r.ms.toFixed(0)} ms (≥ 2.4 s: the first 100 ms piece leaves at once): ${rateKBps.toFixed(0)} KB/s`);
});

t.test('reset_peer: the connection is reset (ECONNRESET) at the first data after its timeout', async (t) => {
  const { proxy, port, server } = await setup(t);
  await proxy.addToxic({ name: 'rst', type: 'reset_peer', stream: 'upstream', toxicity: 1, attributes: { timeout: 100 } });
  const s = await connectTo(port);
  const r = await exchange(s, Buffer.from('hello'), 1_000_000);
  t.equal(r.error, 'ECONNRESET', 'the client saw a TCP reset');
  t.equal(r.data.length, 0, 'nothing came back');
  t.equal(server.proxy('echo').counters.reset, 1, 'counted');
});

t.test('down: a disabled proxy refuses connections and cuts open ones; enabled again, it listens on the same port', async (t) => {
  const { proxy, port } = await setup(t);
  const open = await connectTo(port);
  const closed = new Promise<void>((r) => open.on('close', () => r()));
  const down = await proxy.update({ enabled: false, listen: proxy.listen, upstream: proxy.upstream });
  t.equal(down.enabled, false, 'reported disabled');
  await closed;
  t.pass('the open connection was cut');
  await t.rejects(connectTo(port), { code: 'ECONNREFUSED' }, 'a new one is refused');
  const up = await down.update({ enabled: true, listen: down.listen, upstream: down.upstream });
  t.equal(portOf(up.listen), port, 'same port');
  const s = await connectTo(port);
  t.equal((await exchange(s, Buffer.from('back'))).data.toString(), 'back', 'traffic flows again');
  s.destroy();
});

t.test('timeout: data stops and the connection closes after the timeout; limit_data closes after exactly N bytes', async (t) => {
  const { proxy, port, echo } = await setup(t);
  const toxic = await proxy.addToxic({ name: 'hang', type: 'timeout', stream: 'upstream', toxicity: 1, attributes: { timeout: 200 } });
  const s = await connectTo(port);
  const r = await exchange(s, Buffer.from('lost'), 1_000);
  t.equal(r.data.length, 0, 'nothing passed');
  t.equal(echo.received(), 0, 'the upstream got nothing');
  t.ok(r.ms >= 150, `closed by the timeout after ${r.ms.toFixed(0)} ms`);
  await toxic.remove();
  await proxy.addToxic({ name: 'limit', type: 'limit_data', stream: 'downstream', toxicity: 1, attributes: { bytes: 1000 } });
  const s2 = await connectTo(port);
  const r2 = await exchange(s2, Buffer.alloc(5000, 2), 1_000_000);
  t.equal(r2.data.length, 1000, 'exactly 1000 bytes came back before the close');
});

t.test('slicer cuts the stream into small writes, content intact; corrupt (VRG\'s own toxic) flips bits', async (t) => {
  const { proxy, port, server } = await setup(t);
  const slicer = await proxy.addToxic({ name: 'sl', type: 'slicer', stream: 'downstream', toxicity: 1, attributes: { average_size: 100, size_variation: 20, delay: 100 } });
  const s = await connectTo(port);
  let chunks = 0;
  s.on('data', () => chunks++);
  const payload = Buffer.from(Array.from({ length: 20_000 }, (_, i) => i & 0xff));
  const r = await exchange(s, payload);
  t.ok(r.data.equals(payload), 'intact');
  t.ok(chunks >= 50, `arrived in ${chunks} reads (slices of ~100 bytes)`);
  await slicer.remove();
  s.destroy();
  await new Promise((r) => setTimeout(r, 20));
  // Toxiproxy's client types have no `corrupt`; its API takes any type the server knows.
  await proxy.toxiproxy.getApi().post(`${proxy.getPath()}/toxics`, { name: 'bits', type: 'corrupt', stream: 'downstream', toxicity: 1, attributes: { probability: 1, bits: 3 } });
  const s2 = await connectTo(port);
  const r2 = await exchange(s2, payload);
  s2.destroy();
  t.equal(r2.data.length, payload.length, 'as many bytes');
  t.notOk(r2.data.equals(payload), 'but not the same ones');
  t.ok(server.proxy('echo').counters.corrupted >= 1, `${server.proxy('echo').counters.corrupted} chunks corrupted`);
});

t.test('bad input is refused with Toxiproxy\'s status codes and a stable code, and changes nothing', async (t) => {
  const { url, server, client } = await setup(t);
  const post = async (path: string, body: unknown) => {
    const r = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, body: await r.json() as { error: string; status: number; code: string } };
  };
  const cases: Array<[string, unknown, number, string]> = [
    ['/proxies', { name: 'echo', listen: '127.0.0.1:0', upstream: '127.0.0.1:1' }, 409, ErrorCode.FAULT_PROXY_EXISTS],
    ['/proxies', { listen: '127.0.0.1:0', upstream: '127.0.0.1:1' }, 400, ErrorCode.INVALID_ARGUMENT],
    ['/proxies', { name: 'x', upstream: 'no-port' }, 400, ErrorCode.INVALID_ARGUMENT],
    ['/proxies/nope/toxics', { type: 'latency' }, 404, ErrorCode.FAULT_PROXY_NOT_FOUND],
    ['/proxies/echo/toxics', { type: 'lag' }, 400, ErrorCode.INVALID_ARGUMENT],
    ['/proxies/echo/toxics', { type: 'latency', attributes: { latncy: 100 } }, 400, ErrorCode.INVALID_ARGUMENT],
    ['/proxies/echo/toxics', { type: 'latency', attributes: { latency: -1 } }, 400, ErrorCode.INVALID_ARGUMENT],
    ['/proxies/echo/toxics', { type: 'latency', stream: 'sideways' }, 400, ErrorCode.INVALID_ARGUMENT],
    ['/proxies/echo/toxics', { type: 'latency', toxicity: 2 }, 400, ErrorCode.INVALID_ARGUMENT],
    ['/proxies/echo/toxics/none', { attributes: { latency: 1 } }, 404, ErrorCode.FAULT_TOXIC_NOT_FOUND],
  ];
  for (const [path, body, status, code] of cases) {
    const r = await post(path, body);
    t.equal(r.status, status, `${path} ${JSON.stringify(body)} → ${status}: ${r.body.error}`);
    t.equal(r.body.code, code, `code ${code}`);
    t.equal(r.body.status, status, 'the body repeats the status, as Toxiproxy\'s does');
  }
  const dup = await post('/proxies/echo/toxics', { name: 'a', type: 'latency' });
  t.equal(dup.status, 200, 'a first toxic is added');
  t.equal((await post('/proxies/echo/toxics', { name: 'a', type: 'bandwidth' })).body.code, ErrorCode.FAULT_TOXIC_EXISTS, 'a second of that name is not');
  const bad = await fetch(`${url}/proxies`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{not json' });
  t.equal(bad.status, 400, 'a body that is not JSON: 400');
  t.same(Object.keys(server.all()), ['echo'], 'still one proxy');
  t.same(server.all().echo!.toxics.map((x) => x.name), ['a'], 'with the one toxic');
  await client.reset();
  t.same(server.all().echo!.toxics, [], 'POST /reset removed the toxics');
});

t.test('populate creates and replaces proxies; delete removes one', async (t) => {
  const { client, echo, server } = await setup(t);
  const proxies = await client.populate([
    { name: 'echo', listen: '127.0.0.1:0', upstream: `127.0.0.1:${echo.port}` },
    { name: 'second', listen: '127.0.0.1:0', upstream: `127.0.0.1:${echo.port}` },
  ]);
  t.same(Object.keys(proxies).sort(), ['echo', 'second'], 'both returned');
  const s = await connectTo(portOf(proxies.second!.listen));
  t.equal((await exchange(s, Buffer.from('2nd'))).data.toString(), '2nd', 'the new one proxies');
  s.destroy();
  await proxies.second!.remove();
  t.same(Object.keys(server.all()), ['echo'], 'deleted');
  await t.rejects(client.get('second'), /404/, 'a deleted proxy is not found');
});

t.test('vrg fault-proxy: the command serves the API with the proxies of its --config, and stops on SIGTERM', async (t) => {
  const dir = t.testdir({ 'proxies.json': JSON.stringify([{ name: 'link', listen: '127.0.0.1:0', upstream: '127.0.0.1:9' }]) });
  const main = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
  const child = spawn(process.execPath, [main, 'fault-proxy', '--port', '0', '--seed', '5', '--config', join(dir, 'proxies.json')]);
  let out = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /API on (http:\/\/\S+), seed 5/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`exited ${code}: ${out}`)));
  });
  const all = await new Toxiproxy(url).getAll();
  t.same(Object.keys(all), ['link'], 'the configured proxy is there');
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'exit 0 on SIGTERM');
  const bad = spawnSync(process.execPath, [main, 'fault-proxy', '--port', '70000'], { encoding: 'utf8' });
  t.equal(bad.status, 2, 'a bad --port: exit 2');
  t.match(bad.stderr, /--port must be 0-65535/, 'says so');
});
