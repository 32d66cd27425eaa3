import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';

const tap = t;
import { ErrorCode, vrgError } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';
import { NbdServer, nbdErrnoFor, type NbdExport } from '../src/nbd/nbd-server.js';
import { volumeExport } from '../src/nbd/volume-export.js';
import {
  GREETING_BYTES, NbdCmd, NbdCmdFlag, NbdErrno, NbdHandshakeFlag, NbdInfo, NbdOpt, NbdRep, NbdReplyFlag, NbdReplyType,
  NbdTransmissionFlag, OPTION_REPLY_HEADER_BYTES, decodeChunkPayload, decodeGreeting, decodeInfo, decodeOptionReplyHeader,
  decodeServerReply, encodeInfoRequest, encodeOptionRequest, encodeRequestHeader,
} from '../src/protocol/nbd.js';
import { FileVolume } from '../src/volume/file-volume.js';
import { RawNbdClient } from './lib/nbd-raw-client.js';
import { runTool } from './lib/nbd-tools.js';
import { haveTool, needs } from './lib/tools.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const MAX_PAYLOAD = 1 * MiB;

const dir = await mkdtemp(join(tmpdir(), 'vrg-nbd-'));
const rwPath = join(dir, 'rw.img');
const roPath = join(dir, 'ro.img');
await writeFile(roPath, seededRandom(42).bytes(SIZE));
const rwVol = await FileVolume.open(rwPath, { sizeBytes: SIZE, create: true, native: null });
const roVol = await FileVolume.open(roPath, { native: null });

let flushes = 0;
const rwExport = volumeExport(rwVol, { name: 'vol-rw', description: 'a writable test volume' });
const rw: NbdExport = { ...rwExport, flush: () => { flushes++; return rwExport.flush(); } };
const ro = volumeExport(roVol, { name: 'vol-ro', readOnly: true });

/** An export whose backend fails each kind of request differently. */
const failing: NbdExport = {
  name: 'failing', sizeBytes: MiB, readOnly: false,
  read: async () => { throw new Error('media error'); },
  write: async () => { throw vrgError(ErrorCode.JOURNAL_FULL, 'journal is full'); },
  writeZeroes: async () => { throw vrgError(ErrorCode.VOLUME_OUT_OF_RANGE, 'out of range'); },
  trim: async () => { throw Object.assign(new Error('no space'), { code: 'ENOSPC' }); },
  flush: async () => { throw vrgError(ErrorCode.CLOSED, 'closed'); },
};

const server = new NbdServer({
  exports: () => [rw, ro, failing],
  maxPayloadBytes: MAX_PAYLOAD,
  handshakeTimeoutMs: 1500,
  stallTimeoutMs: 1500,
});
const port = await server.listen('127.0.0.1', 0);
const uri = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;

t.teardown(async () => {
  await server.close();
  await rwVol.close();
  await roVol.close();
  await rm(dir, { recursive: true, force: true });
});

const cookie = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};

async function fileBytes(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, offset);
    return b;
  } finally {
    await fh.close();
  }
}

function qemuOk(t: Pick<typeof tap, 'equal' | 'notMatch'>, r: { code: number; stdout: string; stderr: string }, what: string): void {
  const out = r.stdout + r.stderr;
  t.equal(r.code, 0, `${what}: qemu-io exits 0`);
  t.notMatch(out, /verification failed|failed|error/i, `${what}: no errors in qemu-io output`);
}

t.test('qemu-io: patterned writes, verified reads, discard, zero writes', needs('qemu-io'), async (t) => {
  const cmds = [
    'write -P 0xa5 0 64k', 'write -P 0x5a 1M 3M', 'write -P 0x11 204799 1',
    'aio_write -P 0x21 8M 128k', 'aio_write -P 0x22 9M 128k', 'aio_flush',
    'read -P 0xa5 0 64k', 'read -P 0x5a 1M 3M', 'read -P 0x11 204799 1', 'read -P 0x21 8M 128k', 'read -P 0x22 9M 128k',
    'discard 1M 1M', 'read -P 0 1M 1M', 'read -P 0x5a 2M 2M',
    'write -z 0 32k', 'read -P 0 0 32k', 'read -P 0xa5 32k 32k',
    'write -z -u 9M 64k', 'read -P 0 9M 64k',
    'write -f -P 0x77 12M 4k', 'read -P 0x77 12M 4k', 'flush',
  ];
  const r = await runTool('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri('vol-rw')]);
  qemuOk(t, r, 'all commands');
  t.same(await fileBytes(rwPath, 32 * 1024, 32 * 1024), Buffer.alloc(32 * 1024, 0xa5), 'file holds what qemu-io wrote');
  t.same(await fileBytes(rwPath, 1 * MiB, 4096), Buffer.alloc(4096), 'discarded range is zero in the file');
  const bad = await runTool('qemu-io', ['-f', 'raw', '-c', 'read -P 0x99 0 4k', uri('vol-rw')]);
  t.not(bad.code, 0, 'a wrong pattern is detected (the check is real)');
  t.match(bad.stdout + bad.stderr, /Pattern verification failed/);
  t.ok(flushes > 0, 'FLUSH and FUA reached the backend');
});

t.test('nbdinfo: export details and list', needs('nbdinfo'), async (t) => {
  const r = await runTool('nbdinfo', ['--json', uri('vol-rw')]);
  t.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout) as { structured: boolean; exports: Array<Record<string, unknown>> };
  t.equal(info.structured, true, 'structured replies negotiated');
  t.match(info.exports[0], {
    'export-name': 'vol-rw', 'export-size': SIZE, is_read_only: false, can_flush: true, can_fua: true, can_trim: true,
    can_zero: true, can_multi_conn: true, block_size_minimum: 1, block_size_preferred: 4096, block_size_maximum: MAX_PAYLOAD,
    description: 'a writable test volume',
  });
  const rr = await runTool('nbdinfo', ['--json', uri('vol-ro')]);
  t.equal(rr.code, 0, rr.stderr);
  t.match((JSON.parse(rr.stdout) as { exports: unknown[] }).exports[0], { is_read_only: true, can_trim: false, can_zero: false });

  const list = await runTool('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
  t.equal(list.code, 0, list.stderr);
  const names = (JSON.parse(list.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name']);
  t.same(names.sort(), ['failing', 'vol-ro', 'vol-rw']);

  const missing = await runTool('nbdinfo', [uri('no-such-volume')]);
  t.not(missing.code, 0, 'an unknown export is refused');
  t.match(missing.stderr, /no-such-volume/);
});

t.test('nbdcopy: a random sparse image in, byte-identical file out', needs('nbdcopy'), async (t) => {
  const src = join(dir, 'src.img');
  const rnd = seededRandom(7);
  const fh = await open(src, 'w');
  await fh.truncate(SIZE);
  for (let i = 0; i < 24; i++) {
    const len = 1 + (rnd.uint32() % (300 * 1024));
    await fh.write(rnd.bytes(len), 0, len, rnd.uint32() % (SIZE - len));
  }
  await fh.close();
  const r = await runTool('nbdcopy', [src, uri('vol-rw')]);
  t.equal(r.code, 0, r.stderr);
  t.ok((await readFile(rwPath)).equals(await readFile(src)), 'the served file equals the source image');
  const ring = server.payloadRingStats();
  t.ok(ring.allocs > 0, 'payloads spanning received chunks were assembled in the payload ring');
  t.equal(ring.usedBytes, 0, 'every payload block was freed once its write was answered');
  const back = join(dir, 'back.img');
  const r2 = await runTool('nbdcopy', [uri('vol-rw'), back]);
  t.equal(r2.code, 0, r2.stderr);
  t.ok((await readFile(back)).equals(await readFile(src)), 'reading it back gives the same bytes');
});

t.test('fio: random 4k writes at iodepth 16, crc32c verified', needs('fio'), async (t) => {
  const r = await runTool('fio', [
    '--name=nbd-verify', '--ioengine=nbd', `--uri=${uri('vol-rw')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
    '--size=8M', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0', `--directory=${dir}`,
  ], 300_000);
  t.equal(r.code, 0, r.stderr || r.stdout);
  t.notMatch(r.stdout + r.stderr, /verify: bad|crc32c: verify failed|err=\s*[1-9]/);
});

t.test('read-only export refuses writes', async (t) => {
  const before = await fileBytes(roPath, 0, 64 * 1024);
  if (haveTool('qemu-io')) {
    const r = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 4k', uri('vol-ro')]);
    t.not(r.code, 0, 'qemu-io write fails');
    const rd = await runTool('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 64k', uri('vol-ro')]);
    t.equal(rd.code, 0, 'qemu-io can read it');
  }
  const c = await RawNbdClient.attach(port, 'vol-ro');
  c.send({ flags: 0, type: NbdCmd.WRITE, offset: 0, length: 4096 }, Buffer.alloc(4096, 0x44));
  t.equal((await c.reply()).error, NbdErrno.EPERM, 'WRITE: EPERM (payload consumed, stream in sync)');
  c.send({ flags: 0, type: NbdCmd.TRIM, offset: 0, length: 4096 });
  t.equal((await c.reply()).error, NbdErrno.EPERM, 'TRIM: EPERM');
  c.send({ flags: NbdCmdFlag.NO_HOLE, type: NbdCmd.WRITE_ZEROES, offset: 0, length: 4096 });
  t.equal((await c.reply()).error, NbdErrno.EPERM, 'WRITE_ZEROES: EPERM');
  c.send({ flags: 0, type: NbdCmd.READ, offset: 0, length: 4096 });
  t.same((await c.reply(4096)).data, before.subarray(0, 4096), 'reads still work');
  c.close();
  t.same(await fileBytes(roPath, 0, 64 * 1024), before, 'file unchanged');
});

t.test('bad input: each client gets its answer, the others are undisturbed', async (t) => {
  const region = 14 * MiB; // the bystander writes only here
  const snapshot = await readFile(rwPath);
  const bystander = await RawNbdClient.attach(port, 'vol-rw');
  let bystanderRounds = 0;
  let stopBystander = false;
  const bystanderLoop = (async () => {
    const rnd = seededRandom(99);
    while (!stopBystander) {
      const data = rnd.bytes(8192);
      const at = region + (bystanderRounds % 64) * 8192;
      bystander.send({ flags: 0, type: NbdCmd.WRITE, cookie: cookie(bystanderRounds), offset: at, length: data.length }, data);
      const w = await bystander.reply();
      if (w.error !== 0) throw new Error(`bystander write failed ${w.error}`);
      bystander.send({ flags: 0, type: NbdCmd.READ, cookie: cookie(bystanderRounds), offset: at, length: data.length });
      const r = await bystander.reply(data.length);
      if (!r.data?.equals(data)) throw new Error('bystander read back different data');
      snapshot.set(data, at);
      bystanderRounds++;
    }
  })();

  await t.test('bad request magic: that client is disconnected', async (t) => {
    const c = await RawNbdClient.attach(port, 'vol-rw');
    const h = encodeRequestHeader({ flags: 0, type: NbdCmd.READ, cookie: cookie(1), offset: 0, length: 512 });
    h.writeUInt32BE(0xbadc0de, 0);
    c.sock.write(h);
    await c.closed;
    t.pass('server closed the connection');
  });

  await t.test('unknown command: EINVAL, connection keeps working', async (t) => {
    const c = await RawNbdClient.attach(port, 'vol-rw');
    c.send({ flags: 0, type: 42, cookie: cookie(5), offset: 0, length: 512 });
    const r = await c.reply();
    t.equal(r.error, NbdErrno.EINVAL);
    t.same(r.cookie, cookie(5));
    c.send({ flags: 0, type: NbdCmd.BLOCK_STATUS, offset: 0, length: 512 });
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'BLOCK_STATUS without a meta context: EINVAL');
    c.send({ flags: 0x8000, type: NbdCmd.READ, offset: 0, length: 512 });
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'unknown flag: EINVAL');
    c.send({ flags: 0, type: NbdCmd.READ, offset: 512, length: 512 });
    t.same((await c.reply(512)).data, snapshot.subarray(512, 1024), 'next READ answered');
    c.send({ flags: 0, type: NbdCmd.CACHE, offset: 0, length: 4096 });
    t.equal((await c.reply()).error, 0, 'CACHE succeeds');
    c.close();
  });

  await t.test('past the end: EINVAL, nothing written', async (t) => {
    const c = await RawNbdClient.attach(port, 'vol-rw');
    c.send({ flags: 0, type: NbdCmd.READ, offset: SIZE - 512, length: 1024 });
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'READ');
    c.send({ flags: 0, type: NbdCmd.WRITE, offset: SIZE - 512, length: 1024 }, Buffer.alloc(1024, 0xee));
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'WRITE (payload read and dropped)');
    const huge = encodeRequestHeader({ flags: 0, type: NbdCmd.WRITE, cookie: cookie(9), offset: 0, length: 16 });
    huge.writeBigUInt64BE(0xffff_ffff_ffff_fff0n, 16);
    c.sock.write(Buffer.concat([huge, Buffer.alloc(16, 0xee)]));
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'WRITE at a huge offset');
    c.send({ flags: 0, type: NbdCmd.TRIM, offset: SIZE, length: 1 });
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'TRIM');
    c.send({ flags: 0, type: NbdCmd.WRITE_ZEROES, offset: SIZE - 1, length: 2 });
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'WRITE_ZEROES');
    c.send({ flags: 0, type: NbdCmd.READ, offset: SIZE - 512, length: 512 });
    t.same((await c.reply(512)).data, snapshot.subarray(SIZE - 512), 'last sector unchanged, stream in sync');
    c.close();
  });

  await t.test('oversized length: EINVAL (WRITE payload read and dropped)', async (t) => {
    const c = await RawNbdClient.attach(port, 'vol-rw');
    c.send({ flags: 0, type: NbdCmd.READ, offset: 0, length: MAX_PAYLOAD + 1 });
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'READ');
    c.send({ flags: 0, type: NbdCmd.WRITE, offset: 0, length: MAX_PAYLOAD + 4096 }, Buffer.alloc(MAX_PAYLOAD + 4096, 0xdd));
    t.equal((await c.reply()).error, NbdErrno.EINVAL, 'WRITE');
    c.send({ flags: 0, type: NbdCmd.TRIM, offset: 0, length: 0 });
    t.equal((await c.reply()).error, 0, 'zero-length TRIM after it: still in sync');
    c.send({ flags: 0, type: NbdCmd.READ, offset: 0, length: 4096 });
    t.same((await c.reply(4096)).data, snapshot.subarray(0, 4096), 'nothing written');
    c.close();
  });

  await t.test('write payload cut short: nothing written, client dropped', async (t) => {
    const c = await RawNbdClient.attach(port, 'vol-rw');
    c.send({ flags: 0, type: NbdCmd.WRITE, offset: 2 * MiB, length: 65536 }, Buffer.alloc(30000, 0xcc));
    await new Promise((r) => setTimeout(r, 100));
    c.sock.end();
    await c.closed;
    const stalled = await RawNbdClient.attach(port, 'vol-rw');
    stalled.send({ flags: 0, type: NbdCmd.WRITE, offset: 3 * MiB, length: 65536 }, Buffer.alloc(100, 0xcc));
    const t0 = Date.now();
    await stalled.closed;
    t.ok(Date.now() - t0 >= 1000, 'a stalled payload is dropped after the stall timeout');
    t.same(await fileBytes(rwPath, 2 * MiB, 2 * MiB), snapshot.subarray(2 * MiB, 4 * MiB), 'nothing of either written');
  });

  await t.test('silent client is dropped by the handshake timeout', async (t) => {
    const c = await RawNbdClient.connect(port);
    await c.closed;
    t.pass('closed');
  });

  stopBystander = true;
  await bystanderLoop;
  t.ok(bystanderRounds > 0, `the bystander kept working (${bystanderRounds} write+read rounds)`);
  bystander.close();
  t.ok((await readFile(rwPath)).equals(snapshot), 'the file changed only where the bystander wrote');
});

t.test('backend errors map to NBD errors', async (t) => {
  t.equal(nbdErrnoFor(vrgError(ErrorCode.VOLUME_OUT_OF_RANGE, 'x')), NbdErrno.EINVAL);
  t.equal(nbdErrnoFor(vrgError(ErrorCode.JOURNAL_FULL, 'x')), NbdErrno.ENOSPC);
  t.equal(nbdErrnoFor(vrgError(ErrorCode.VOLUME_IO, 'x', { code: 'ENOSPC' })), NbdErrno.ENOSPC);
  t.equal(nbdErrnoFor(new Error('x')), NbdErrno.EIO);
  const c = await RawNbdClient.attach(port, 'failing');
  c.send({ flags: 0, type: NbdCmd.READ, offset: 0, length: 512 });
  t.equal((await c.reply()).error, NbdErrno.EIO, 'READ: EIO');
  c.send({ flags: 0, type: NbdCmd.WRITE, offset: 0, length: 512 }, Buffer.alloc(512));
  t.equal((await c.reply()).error, NbdErrno.ENOSPC, 'WRITE with a full journal: ENOSPC');
  c.send({ flags: 0, type: NbdCmd.WRITE_ZEROES, offset: 0, length: 512 });
  t.equal((await c.reply()).error, NbdErrno.EINVAL, 'out of range: EINVAL');
  c.send({ flags: 0, type: NbdCmd.TRIM, offset: 0, length: 512 });
  t.equal((await c.reply()).error, NbdErrno.ENOSPC, 'ENOSPC: ENOSPC');
  c.send({ flags: 0, type: NbdCmd.FLUSH, offset: 0, length: 0 });
  t.equal((await c.reply()).error, NbdErrno.ESHUTDOWN, 'closed backend: ESHUTDOWN');
  c.close();
});

t.test('structured replies: READ data and errors as chunks', async (t) => {
  const c = await RawNbdClient.attach(port, 'vol-ro', { structured: true });
  const expected = await fileBytes(roPath, 4096, 8192);
  c.send({ flags: NbdCmdFlag.DF, type: NbdCmd.READ, cookie: cookie(77), offset: 4096, length: 8192 });
  const ok = await c.chunk();
  t.match(ok, { flags: NbdReplyFlag.DONE, type: NbdReplyType.OFFSET_DATA, cookie: cookie(77) });
  t.same(decodeChunkPayload(ok.type, ok.payload), { type: NbdReplyType.OFFSET_DATA, offset: 4096, data: expected });
  c.send({ flags: 0, type: NbdCmd.READ, cookie: cookie(78), offset: SIZE, length: 512 });
  const err = await c.chunk();
  t.match(err, { flags: NbdReplyFlag.DONE, type: NbdReplyType.ERROR, cookie: cookie(78) });
  t.match(decodeChunkPayload(err.type, err.payload), { error: NbdErrno.EINVAL });
  c.send({ flags: 0, type: NbdCmd.FLUSH, cookie: cookie(79), offset: 0, length: 0 });
  t.same((await c.reply()).cookie, cookie(79), 'non-READ commands keep simple replies');
  c.close();
});

t.test('many requests in flight: bounded, answered out of order, DISC drains', async (t) => {
  let active = 0;
  let peak = 0;
  const store = Buffer.alloc(MiB);
  const slow: NbdExport = {
    name: 'slow', sizeBytes: MiB, readOnly: false,
    read: async (offset, length) => {
      active++;
      peak = Math.max(peak, active);
      await new Promise((r) => setTimeout(r, 40 - (offset / 4096) % 40)); // later offsets finish sooner
      active--;
      return Buffer.from(store.subarray(offset, offset + length));
    },
    write: async (offset, data) => {
      active++;
      peak = Math.max(peak, active);
      await new Promise((r) => setTimeout(r, 5));
      store.set(data, offset);
      active--;
    },
    writeZeroes: async () => undefined, trim: async () => undefined, flush: async () => undefined,
  };
  const srv = new NbdServer({ exports: () => new Map([['slow', slow]]), requestsInFlightMax: 4 });
  const p = await srv.listen('127.0.0.1', 0);
  const rnd = seededRandom(5);
  store.set(rnd.bytes(MiB));
  const c = await RawNbdClient.attach(p, 'slow');
  const n = 64;
  for (let i = 0; i < n; i++) c.send({ flags: 0, type: NbdCmd.READ, cookie: cookie(i), offset: i * 4096, length: 4096 });
  const order: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = await c.reply(4096);
    const k = Number(r.cookie.readBigUInt64BE(0));
    order.push(k);
    if (!r.data!.equals(store.subarray(k * 4096, k * 4096 + 4096))) t.fail(`reply ${k} carries another request's data`);
  }
  t.same([...order].sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i), 'every request answered once');
  t.not(order.join(), [...order].sort((a, b) => a - b).join(), 'replies came out of order');
  t.ok(peak <= 4 && peak >= 2, `backend concurrency stayed within requestsInFlightMax (peak ${peak})`);

  for (let i = 0; i < 8; i++) {
    c.send({ flags: 0, type: NbdCmd.WRITE, cookie: cookie(100 + i), offset: i * 512, length: 512 }, Buffer.alloc(512, i + 1));
  }
  c.send({ flags: 0, type: NbdCmd.DISC, offset: 0, length: 0 });
  for (let i = 0; i < 8; i++) t.equal((await c.reply()).error, 0);
  await c.closed;
  t.same(store.subarray(7 * 512, 8 * 512), Buffer.alloc(512, 8), 'writes sent before DISC were all done');
  for (let i = 0; i < 100 && srv.clients > 0; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(srv.clients, 0, 'the server forgot the client');
  await srv.close();
});

t.test('handshake: every option answered as specified', async (t) => {
  const hello = async (flags = 3): Promise<RawNbdClient> => {
    const c = await RawNbdClient.connect(port);
    t.same(decodeGreeting(await c.read(GREETING_BYTES)), { handshakeFlags: NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES });
    c.sock.write(Buffer.from([0, 0, 0, flags]));
    return c;
  };
  const option = async (c: RawNbdClient, opt: number, data?: Buffer): Promise<Array<{ type: number; data: Buffer }>> => {
    c.sock.write(encodeOptionRequest(opt, data));
    const replies = [];
    for (;;) {
      const h = decodeOptionReplyHeader(await c.read(OPTION_REPLY_HEADER_BYTES));
      t.equal(h.option, opt);
      const body = await c.read(h.length);
      replies.push({ type: h.type, data: body });
      if (h.type !== NbdRep.INFO && h.type !== NbdRep.SERVER) return replies;
    }
  };

  const c = await hello();
  t.equal((await option(c, NbdOpt.STARTTLS))[0]!.type, NbdRep.ERR_UNSUP, 'STARTTLS: unsupported');
  t.equal((await option(c, 200))[0]!.type, NbdRep.ERR_UNSUP, 'unknown option: unsupported');
  t.equal((await option(c, NbdOpt.SET_META_CONTEXT, Buffer.alloc(8)))[0]!.type, NbdRep.ERR_UNSUP, 'meta contexts: unsupported');
  t.equal((await option(c, NbdOpt.LIST, Buffer.alloc(1)))[0]!.type, NbdRep.ERR_INVALID, 'LIST with data: invalid');
  t.equal((await option(c, NbdOpt.GO, Buffer.alloc(3)))[0]!.type, NbdRep.ERR_INVALID, 'malformed GO: invalid');
  t.equal((await option(c, NbdOpt.INFO, encodeInfoRequest('nope')))[0]!.type, NbdRep.ERR_UNKNOWN, 'unknown export: ERR_UNKNOWN');
  t.equal((await option(c, NbdOpt.EXPORT_NAME + 100, Buffer.alloc(70 * 1024)))[0]!.type, NbdRep.ERR_TOO_BIG, 'huge option: ERR_TOO_BIG');
  const list = await option(c, NbdOpt.LIST);
  t.same(list.filter((r) => r.type === NbdRep.SERVER).map((r) => decodeServerReply(r.data).name).sort(), ['failing', 'vol-ro', 'vol-rw']);
  const info = await option(c, NbdOpt.INFO, encodeInfoRequest('vol-rw', [NbdInfo.NAME, NbdInfo.DESCRIPTION, NbdInfo.BLOCK_SIZE]));
  t.same(info.map((r) => r.type === NbdRep.INFO ? decodeInfo(r.data) : r.type), [
    { type: 0, size: SIZE, flags: NbdTransmissionFlag.HAS_FLAGS | NbdTransmissionFlag.SEND_FLUSH | NbdTransmissionFlag.SEND_FUA |
      NbdTransmissionFlag.SEND_TRIM | NbdTransmissionFlag.SEND_WRITE_ZEROES | NbdTransmissionFlag.CAN_MULTI_CONN },
    { type: 1, name: 'vol-rw' },
    { type: 2, description: 'a writable test volume' },
    { type: 3, min: 1, preferred: 4096, max: MAX_PAYLOAD },
    NbdRep.ACK,
  ], 'INFO: export, name, description, block sizes, ACK');
  // The old way in: EXPORT_NAME, answered by size + flags (no zero padding: NO_ZEROES was agreed).
  c.sock.write(encodeOptionRequest(NbdOpt.EXPORT_NAME, Buffer.from('vol-ro')));
  const reply = await c.read(10);
  t.equal(Number(reply.readBigUInt64BE(0)), SIZE);
  t.ok((reply.readUInt16BE(8) & NbdTransmissionFlag.READ_ONLY) !== 0, 'read-only flag');
  c.send({ flags: 0, type: NbdCmd.READ, offset: 0, length: 16 });
  t.same((await c.reply(16)).data, await fileBytes(roPath, 0, 16), 'transmission works after EXPORT_NAME');
  c.close();

  const unknown = await hello();
  unknown.sock.write(encodeOptionRequest(NbdOpt.EXPORT_NAME, Buffer.from('nope')));
  await unknown.closed;
  t.pass('EXPORT_NAME of an unknown export closes the session');

  const abort = await hello();
  t.equal((await option(abort, NbdOpt.ABORT))[0]!.type, NbdRep.ACK, 'ABORT: ACK');
  await abort.closed;

  const old = await hello(0);
  await old.closed;
  t.pass('a client without FIXED_NEWSTYLE is dropped');
  const odd = await hello(0x83);
  await odd.closed;
  t.pass('a client with unknown flags is dropped');
});
