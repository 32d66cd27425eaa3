import { randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import t, { type Test } from 'tap';
import { systemClock } from '../src/core/clock.js';
import { ErrorCode, isVrgError } from '../src/core/errors.js';
import { seededRandom, systemRandom } from '../src/core/random.js';
import type { LinkConnection, LinkOptions } from '../src/link/connection.js';
import { LinkClient } from '../src/link/link-client.js';
import { clientHandshake, PROTOCOL_VERSION, serverHandshake } from '../src/link/handshake.js';
import { LinkServer } from '../src/link/link-server.js';
import { tcpTransport } from '../src/link/transport.js';
import { encodeFrame, FrameDecoder, FrameType, openFrame, type RawFrame } from '../src/protocol/frame.js';
import {
  decodeLinkError, decodeWriteBatch, encodeAck, encodeHello, encodeResume, encodeWriteBatch, type Resume,
} from '../src/protocol/messages.js';

const secret = randomBytes(32);
// generation and role travel with each VM (issue 14): vm-2 was promoted on DR.
const resume: Resume = { vms: [{ vmUuid: 'vm-1', appliedSeq: 41, generation: 1, role: 'target', splitBrain: false, fencingToken: 0 }, { vmUuid: 'vm-2', appliedSeq: 0, generation: 2, role: 'source', splitBrain: false, fencingToken: 0 }] };
const QUIET = { heartbeatIntervalMs: 1_000_000, heartbeatTimeoutMs: 1_000_000 };

function opts(role: 'production' | 'dr', extra: Partial<LinkOptions> = {}): LinkOptions {
  return { gatewayId: role === 'dr' ? 'gw-dr' : 'gw-prod', role, secret, clock: systemClock, random: systemRandom, ...QUIET, ...extra };
}

function codeOf(err: unknown): string {
  if (err === null) return 'null';
  return isVrgError(err) ? err.code : (err as Error).message;
}

function closed(conn: LinkConnection): Promise<Error | null> {
  return new Promise((resolve) => conn.once('close', resolve));
}

async function waitFor(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

type Dir = 'c2s' | 's2c';
/** Per frame: what to forward instead (frames, 'end' to end the stream there), given the frame's index in its direction. */
type Tamper = (dir: Dir, frame: Buffer, index: number) => Array<Buffer | 'end'>;

/** A TCP proxy that cuts each direction into frames so a test can change, drop, repeat or reorder them. */
async function startProxy(targetPort: number, tamper: Tamper): Promise<{ port: number; close(): void }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((down) => {
    const up = connect(targetPort, '127.0.0.1');
    for (const s of [down, up]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => { down.destroy(); up.destroy(); });
    }
    const pipe = (from: Socket, to: Socket, dir: Dir): void => {
      const dec = new FrameDecoder(64 * 1024 * 1024);
      let index = 0;
      from.on('data', (chunk: Buffer) => {
        for (const f of dec.push(chunk)) {
          for (const out of tamper(dir, f.bytes, index)) {
            if (out === 'end') to.end();
            else if (to.writable) to.write(out);
          }
          index++;
        }
      });
      from.on('end', () => to.end());
    };
    pipe(down, up, 'c2s');
    pipe(up, down, 's2c');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  return {
    port: typeof addr === 'object' && addr ? addr.port : 0,
    close() {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

interface Pair { client: LinkConnection; server: LinkConnection; cleanup(): Promise<void> }

/** A DR listener (serverHandshake) and a production client, optionally through a tampering proxy. */
async function connectPair(
  t: Test, o: { tamper?: Tamper; client?: Partial<LinkOptions>; server?: Partial<LinkOptions> } = {},
): Promise<Pair> {
  let serverConn: Promise<LinkConnection> | null = null;
  const listener = await tcpTransport.listen('127.0.0.1', 0, (sock) => {
    serverConn = serverHandshake(sock, { ...opts('dr', o.server), resume: () => resume });
    serverConn.catch(() => undefined);
  });
  const proxy = o.tamper ? await startProxy(listener.port, o.tamper) : null;
  const sock = await tcpTransport.connect('127.0.0.1', proxy ? proxy.port : listener.port);
  const client = await clientHandshake(sock, opts('production', o.client));
  await waitFor('server handshake', () => serverConn !== null);
  const server = await serverConn!;
  const cleanup = async (): Promise<void> => {
    client.close();
    server.close();
    proxy?.close();
    await listener.close();
  };
  t.teardown(cleanup);
  return { client, server, cleanup };
}

function writeBatchFrame(conn: LinkConnection, n: number): { seq: number; frame: Buffer } {
  const header = encodeWriteBatch({
    vmUuid: 'vm-1', firstSeq: n, volumeUuids: ['v'], producedAtMs: 1,
    records: [{ volumeIndex: 0, offset: n * 4096, length: 4096, kind: 1, codec: 0, storedLength: 4096 }],
  });
  const seq = conn.allocSendSeq();
  const frame = encodeFrame({ type: FrameType.WRITE_BATCH, seq, header, payload: Buffer.alloc(4096, n) }, { keys: conn.sendKeys, encrypt: true });
  return { seq, frame };
}

function collect(conn: LinkConnection): { control: Array<[number, unknown]>; batches: Array<[number, RawFrame]> } {
  const got = { control: [] as Array<[number, unknown]>, batches: [] as Array<[number, RawFrame]> };
  conn.on('control', (type: number, msg: unknown) => got.control.push([type, msg]));
  conn.on('writeBatch', (seq: number, f: RawFrame) => got.batches.push([seq, f]));
  return got;
}

const typeOf = (frame: Buffer): number => frame[4]!;

t.test('handshake over TCP; the Resume reaches the client', async (t) => {
  const { client, server } = await connectPair(t);
  t.same(client.resume, resume);
  t.equal(server.resume, null);
  t.same(client.peer, { gatewayId: 'gw-dr', role: 'dr' });
  t.same(server.peer, { gatewayId: 'gw-prod', role: 'production' });
  t.ok(client.sessionId.equals(server.sessionId));
  t.ok(client.sendKeys.key.equals(server.recvKeys.key) && client.sendKeys.salt.equals(server.recvKeys.salt));
  t.ok(client.recvKeys.key.equals(server.sendKeys.key));
  t.notOk(client.sendKeys.key.equals(client.recvKeys.key));
});

t.test('a wrong secret is rejected on both sides', async (t) => {
  for (const wrong of ['client', 'server'] as const) {
    let serverResult: Promise<LinkConnection> | null = null;
    let serverSock: Duplex | null = null;
    const bad = { secret: randomBytes(32) };
    const listener = await tcpTransport.listen('127.0.0.1', 0, (sock) => {
      serverSock = sock;
      serverResult = serverHandshake(sock, { ...opts('dr', wrong === 'server' ? bad : {}), resume: () => resume });
      serverResult.catch(() => undefined);
    });
    const sock = await tcpTransport.connect('127.0.0.1', listener.port);
    const clientErr = await clientHandshake(sock, opts('production', wrong === 'client' ? bad : {})).then(() => null, (e: unknown) => e);
    t.equal(codeOf(clientErr), ErrorCode.HANDSHAKE_FAILED, `client rejects (wrong ${wrong} secret)`);
    const serverErr = await serverResult!.then(() => null, (e: unknown) => e);
    t.equal(codeOf(serverErr), ErrorCode.HANDSHAKE_FAILED, `server rejects (wrong ${wrong} secret)`);
    await waitFor('sockets destroyed', () => sock.destroyed && serverSock!.destroyed, 5_000);
    t.pass('both sockets destroyed');
    await listener.close();
  }
});

t.test('protocol version mismatch and handshake timeout', async (t) => {
  const results: Array<Promise<unknown>> = [];
  const listener = await tcpTransport.listen('127.0.0.1', 0, (sock) => {
    results.push(serverHandshake(sock, { ...opts('dr', { handshakeTimeoutMs: 200 }), resume: () => resume }).then(() => null, (e: unknown) => e));
  });
  t.teardown(() => listener.close());
  const raw = await tcpTransport.connect('127.0.0.1', listener.port);
  const dec = new FrameDecoder();
  const frames: RawFrame[] = [];
  raw.on('data', (c: Buffer) => frames.push(...dec.push(c)));
  raw.write(encodeFrame({
    type: FrameType.HELLO, seq: 0,
    header: encodeHello({ protocolVersion: PROTOCOL_VERSION + 1, gatewayId: 'future', nonce: randomBytes(32), role: 'production' }),
  }));
  await waitFor('server result', () => results.length === 1);
  t.equal(codeOf(await results[0]), ErrorCode.PROTOCOL_VERSION);
  await waitFor('LINK_ERROR to the peer', () => frames.length > 0);
  t.equal(frames[0]!.type, FrameType.LINK_ERROR);
  t.equal(decodeLinkError(frames[0]!.header).code, ErrorCode.PROTOCOL_VERSION);

  const silent = await tcpTransport.connect('127.0.0.1', listener.port);
  await waitFor('second server handshake', () => results.length === 2);
  t.equal(codeOf(await results[1]), ErrorCode.TIMEOUT, 'a silent client times out');
  await waitFor('silent socket closed by the server', () => silent.readableEnded || silent.destroyed, 5_000);
  silent.destroy();
  raw.destroy();
});

t.test('control frames and write batches are delivered in seq order', async (t) => {
  const { client, server } = await connectPair(t);
  const atClient = collect(client);
  const atServer = collect(server);
  server.sendControl(FrameType.ACK, encodeAck({ vmUuid: 'vm-1', durableSeq: 42 }));
  const a = writeBatchFrame(client, 1);
  const b = writeBatchFrame(client, 2);
  const c = writeBatchFrame(client, 3);
  client.sendSealed(c.seq, c.frame); // sealed out of order: held until a and b are written
  client.sendSealed(b.seq, b.frame);
  client.sendSealed(a.seq, a.frame);
  await waitFor('three batches', () => atServer.batches.length === 3);
  await waitFor('ack', () => atClient.control.length === 1);
  t.same(atClient.control[0], [FrameType.ACK, { vmUuid: 'vm-1', durableSeq: 42 }]);
  t.same(atServer.batches.map(([seq]) => seq), [a.seq, b.seq, c.seq]);
  for (const [i, [seq, raw]] of atServer.batches.entries()) {
    const opened = openFrame(raw, server.recvKeys, seq);
    t.equal(decodeWriteBatch(opened.header).firstSeq, i + 1);
    t.ok(opened.payload.equals(Buffer.alloc(4096, i + 1)));
  }
  t.notOk(client.isClosed || server.isClosed, 'both still up');
});

t.test('an unexpected frame type closes the link', async (t) => {
  const { client, server } = await connectPair(t);
  const got = collect(server);
  const serverClosed = closed(server);
  const clientClosed = closed(client);
  client.sendControl(FrameType.HELLO, new Uint8Array(0));
  t.equal(codeOf(await serverClosed), ErrorCode.FRAME_UNEXPECTED);
  t.equal(got.control.length, 0);
  const peerErr = await clientClosed;
  t.equal(codeOf(peerErr), ErrorCode.PEER_ERROR, 'the sender hears why');
  t.equal((peerErr as { details?: { peerCode?: string } }).details?.peerCode, ErrorCode.FRAME_UNEXPECTED);
});

t.test('a frame forged in flight closes the receiver', async (t) => {
  const { client, server } = await connectPair(t, {
    tamper: (dir, frame, index) => {
      if (dir === 's2c' && index >= 3 && typeOf(frame) === FrameType.ACK) {
        const bad = Buffer.from(frame);
        bad[20]! ^= 0x01; // inside the header
        return [bad];
      }
      return [frame];
    },
  });
  const got = collect(client);
  const clientClosed = closed(client);
  server.sendControl(FrameType.ACK, encodeAck({ vmUuid: 'vm-1', durableSeq: 7 }));
  t.equal(codeOf(await clientClosed), ErrorCode.FRAME_AUTH_FAILED);
  t.equal(got.control.length, 0, 'nothing emitted for the forged frame');
  t.equal(codeOf(await closed(server)), ErrorCode.PEER_ERROR);
});

t.test('a replayed frame closes the receiver', async (t) => {
  let last: Buffer | null = null;
  const { client, server } = await connectPair(t, {
    tamper: (dir, frame) => {
      if (dir !== 'c2s' || typeOf(frame) !== FrameType.WRITE_BATCH) return [frame];
      if (last === null) {
        last = frame;
        return [frame];
      }
      return [last]; // the second batch is replaced by the first one again
    },
  });
  const got = collect(server);
  const serverClosed = closed(server);
  const a = writeBatchFrame(client, 1);
  client.sendSealed(a.seq, a.frame);
  const b = writeBatchFrame(client, 2);
  client.sendSealed(b.seq, b.frame);
  t.equal(codeOf(await serverClosed), ErrorCode.FRAME_SEQUENCE);
  t.same(got.batches.map(([seq]) => seq), [a.seq], 'only the original was emitted');
});

t.test('a reordered pair closes the receiver', async (t) => {
  let held: Buffer | null = null;
  const { client, server } = await connectPair(t, {
    tamper: (dir, frame) => {
      if (dir !== 'c2s' || typeOf(frame) !== FrameType.WRITE_BATCH) return [frame];
      if (held === null) {
        held = frame;
        return [];
      }
      return [frame, held];
    },
  });
  const got = collect(server);
  const serverClosed = closed(server);
  for (const n of [1, 2]) {
    const f = writeBatchFrame(client, n);
    client.sendSealed(f.seq, f.frame);
  }
  t.equal(codeOf(await serverClosed), ErrorCode.FRAME_SEQUENCE);
  t.equal(got.batches.length, 0);
});

t.test('a truncated frame followed by close', async (t) => {
  const { client, server } = await connectPair(t, {
    tamper: (dir, frame, index) => {
      if (dir === 's2c' && index >= 3 && typeOf(frame) === FrameType.ACK) return [frame.subarray(0, frame.length - 5), 'end'];
      return [frame];
    },
  });
  const got = collect(client);
  const clientClosed = closed(client);
  server.sendControl(FrameType.ACK, encodeAck({ vmUuid: 'vm-1', durableSeq: 7 }));
  t.equal(codeOf(await clientClosed), ErrorCode.FRAME_MALFORMED);
  t.equal(got.control.length, 0);
});

t.test('heartbeats measure the round trip', async (t) => {
  const fast = { heartbeatIntervalMs: 20, heartbeatTimeoutMs: 10_000 };
  const { client, server } = await connectPair(t, { client: fast, server: fast });
  await waitFor('rtt on both sides', () => client.rttMs !== null && server.rttMs !== null);
  t.type(client.rttMs, 'number');
  t.ok(client.rttMs! >= 0 && client.rttMs! < 5_000, `client rtt ${client.rttMs} ms`);
  t.ok(server.rttMs! >= 0 && server.rttMs! < 5_000, `server rtt ${server.rttMs} ms`);
});

t.test('a silent peer times out', async (t) => {
  let blackhole = false;
  const { client } = await connectPair(t, {
    client: { heartbeatIntervalMs: 50, heartbeatTimeoutMs: 300 },
    tamper: (dir, frame) => (dir === 's2c' && blackhole ? [] : [frame]),
  });
  blackhole = true;
  const start = Date.now();
  t.equal(codeOf(await closed(client)), ErrorCode.TIMEOUT);
  const took = Date.now() - start;
  t.ok(took >= 250 && took < 5_000, `closed after ${took} ms`);
});

t.test('LinkServer replaces an older connection from the same gateway', async (t) => {
  const server = new LinkServer({ ...opts('dr'), transport: tcpTransport, resume: () => resume });
  const port = await server.listen('127.0.0.1', 0);
  t.teardown(() => server.close());
  const failures: unknown[] = [];
  server.on('handshakeFailed', (e: unknown) => failures.push(e));
  const first = await clientHandshake(await tcpTransport.connect('127.0.0.1', port), opts('production'));
  const firstClosed = closed(first);
  await waitFor('first registered', () => server.connections.size === 1);
  const second = await clientHandshake(await tcpTransport.connect('127.0.0.1', port), opts('production'));
  const err = await firstClosed;
  t.equal(codeOf(err), ErrorCode.PEER_ERROR);
  t.equal((err as { details?: { peerCode?: string } }).details?.peerCode, ErrorCode.CONNECTION_CLOSED);
  await waitFor('second registered', () => server.connections.get('gw-prod')?.sessionId.equals(second.sessionId) === true);
  t.notOk(second.isClosed);
  const bad = await clientHandshake(await tcpTransport.connect('127.0.0.1', port), opts('production', { secret: randomBytes(32) }))
    .then(() => null, (e: unknown) => e);
  t.equal(codeOf(bad), ErrorCode.HANDSHAKE_FAILED);
  await waitFor('server logged the failed handshake', () => failures.length === 1);
  t.equal(server.connections.size, 1);
  second.close();
});

t.test('LinkClient reconnects after a dropped socket and a server restart', async (t) => {
  const serverOpts = { ...opts('dr'), transport: tcpTransport, resume: () => resume };
  let server = new LinkServer(serverOpts);
  const port = await server.listen('127.0.0.1', 0);
  const client = new LinkClient({
    ...opts('production'), random: seededRandom(1), transport: tcpTransport, host: '127.0.0.1', port,
    backoffMinMs: 10, backoffMaxMs: 200,
  });
  const events: string[] = [];
  const serverConns: LinkConnection[] = [];
  client.on('connected', (c: LinkConnection) => events.push(`connected:${c.resume?.vms.length}`));
  client.on('disconnected', (e: unknown) => events.push(`disconnected:${codeOf(e)}`));
  server.on('connection', (c: LinkConnection) => serverConns.push(c));
  t.teardown(async () => {
    client.stop();
    await client.stopped();
    await server.close();
  });
  client.start();
  await waitFor('first connection', () => events.length === 1 && serverConns.length === 1);
  serverConns[0]!.close(); // the DR side drops the link
  await waitFor('reconnected', () => events.filter((e) => e.startsWith('connected')).length === 2);
  t.equal(events[1], `disconnected:${ErrorCode.CONNECTION_CLOSED}`);

  await server.close();
  await waitFor('disconnected by the restart', () => events.length === 4);
  server = new LinkServer(serverOpts);
  server.on('connection', (c: LinkConnection) => serverConns.push(c));
  t.equal(await server.listen('127.0.0.1', port), port, 'same port');
  await waitFor('reconnected after restart', () => events.filter((e) => e.startsWith('connected')).length === 3);
  t.same(events.filter((e) => e.startsWith('connected')), ['connected:2', 'connected:2', 'connected:2']);
  t.ok(client.connection !== null && !client.connection.isClosed);
  client.stop();
  await client.stopped();
  await waitFor('disconnected on stop', () => events.length === 6);
  t.equal(events[5], 'disconnected:null');
});


t.test('protocol 2: frames go both ways; a write batch to a side that targets no VM closes the link', async (t) => {
  const { client, server } = await connectPair(t);
  const [atClient, atServer] = [collect(client), collect(server)];
  // Roles are per VM: the DR side may acknowledge (it is the source of a VM), production may be asked for digests.
  client.sendControl(FrameType.ACK, encodeAck({ vmUuid: 'vm-9', durableSeq: 3 }));
  server.sendControl(FrameType.RESUME, encodeResume(resume));
  await waitFor('both control frames', () => atServer.control.length === 1 && atClient.control.length === 1);
  t.same(atServer.control[0], [FrameType.ACK, { vmUuid: 'vm-9', durableSeq: 3 }]);
  t.equal(atClient.control[0]![0], FrameType.RESUME);
  const bare = await connectPair(t);
  const serverClosed = closed(bare.server);
  const seq = bare.client.allocSendSeq();
  const header = encodeWriteBatch({ vmUuid: 'vm-1', firstSeq: 1, volumeUuids: [], records: [], producedAtMs: 0 });
  bare.client.sendSealed(seq, Buffer.from(encodeFrame({ type: FrameType.WRITE_BATCH, seq, header }, { keys: bare.client.sendKeys, encrypt: false })));
  t.equal(codeOf(await serverClosed), ErrorCode.FRAME_UNEXPECTED, 'nobody takes write batches there');
});
