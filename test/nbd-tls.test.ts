import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { ErrorCode } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';
import { NbdServer } from '../src/nbd/nbd-server.js';
import { loadNbdTlsCredentials, nbdTls, parsePskFile, type NbdTlsMode } from '../src/nbd/nbd-tls.js';
import { volumeExport } from '../src/nbd/volume-export.js';
import {
  GREETING_BYTES, NbdClientFlag, NbdOpt, NbdRep, OPTION_REPLY_HEADER_BYTES, decodeGreeting, decodeOptionReplyHeader,
  encodeInfoRequest, encodeOptionRequest,
} from '../src/protocol/nbd.js';
import { parseConfig } from '../src/replication/config.js';
import { FileVolume } from '../src/volume/file-volume.js';
import { pairConfigJson } from './lib/pair.js';
import { drainChild, startNbdProcessPair } from './lib/process-pair.js';
import { RawNbdClient } from './lib/nbd-raw-client.js';
import { runTool } from './lib/nbd-tools.js';
import { haveTool, needs } from './lib/tools.js';
import { makeTestPki } from './lib/x509.js';

// Issue 17: NBD over TLS (STARTTLS) with PSK and X.509, as the real clients speak it: nbdinfo and nbdcopy
// (libnbd, nbds:// URIs), qemu-io (tls-creds-psk / tls-creds-x509 objects) and fio's nbd engine. With
// `require` a plain client learns nothing: no export name, no size. Plus the allow-list and the unix socket.

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

const dir = await mkdtemp(join(tmpdir(), 'vrg-nbd-tls-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));
// qemu's tls-creds-psk reads <dir>/keys.psk; libnbd takes the file itself.
const pskDir = join(dir, 'psk');
const wrongDir = join(dir, 'wrong');
const x509Dir = join(dir, 'x509');
await Promise.all([pskDir, wrongDir, x509Dir].map((d) => mkdir(d)));
const pskFile = join(pskDir, 'keys.psk');
const wrongPskFile = join(wrongDir, 'keys.psk');
await writeFile(pskFile, `# VRG test keys\nalice:${randomBytes(32).toString('hex')}\n`);
await writeFile(wrongPskFile, `alice:${randomBytes(32).toString('hex')}\n`);
const pki = makeTestPki();
await writeFile(join(x509Dir, 'ca-cert.pem'), pki.caCert);
await writeFile(join(x509Dir, 'server-cert.pem'), pki.serverCert);
await writeFile(join(x509Dir, 'server-key.pem'), pki.serverKey);

const volPath = join(dir, 'vol.img');
await writeFile(volPath, seededRandom(5).bytes(SIZE));
const vol = await FileVolume.open(volPath, { native: null });
t.teardown(() => vol.close());
const exportName = 'secret-volume-name';

async function server(t: Test, mode: NbdTlsMode, opts: { allowClients?: string[]; x509?: boolean } = {}): Promise<{ port: number; srv: NbdServer }> {
  const creds = mode === 'off' ? {} : loadNbdTlsCredentials({
    pskFile, ...(opts.x509 ? { certFile: join(x509Dir, 'server-cert.pem'), keyFile: join(x509Dir, 'server-key.pem') } : {}),
  });
  const srv = new NbdServer({
    exports: () => [volumeExport(vol, { name: exportName })], tls: nbdTls(mode, creds), handshakeTimeoutMs: 5000,
    ...(opts.allowClients ? { allowClients: opts.allowClients } : {}),
  });
  const port = await srv.listen('127.0.0.1', 0);
  t.teardown(() => srv.close());
  return { port, srv };
}

const pskUri = (port: number, name = exportName, file = pskFile): string =>
  `nbds://alice@127.0.0.1:${port}/${name}?tls-psk-file=${file}`;

/** A plain client after the greeting and flags; `option` sends one and collects its replies. */
async function plainClient(port: number) {
  const c = await RawNbdClient.connect(port);
  decodeGreeting(await c.read(GREETING_BYTES));
  c.sock.write(Buffer.from([0, 0, 0, NbdClientFlag.FIXED_NEWSTYLE | NbdClientFlag.NO_ZEROES]));
  const option = async (opt: number, data?: Buffer): Promise<Array<{ type: number; data: Buffer }>> => {
    c.sock.write(encodeOptionRequest(opt, data));
    const replies = [];
    for (;;) {
      const h = decodeOptionReplyHeader(await c.read(OPTION_REPLY_HEADER_BYTES));
      replies.push({ type: h.type, data: await c.read(h.length) });
      if (h.type !== NbdRep.INFO && h.type !== NbdRep.SERVER) return replies;
    }
  };
  return { c, option };
}

t.test('require: a plain client gets no export list, no size, and EXPORT_NAME ends the session', async (t) => {
  const { port } = await server(t, 'require');
  const { c, option } = await plainClient(port);
  const list = await option(NbdOpt.LIST);
  t.same(list.map((r) => r.type), [NbdRep.ERR_TLS_REQD], 'LIST: one TLS-required error, no NBD_REP_SERVER');
  for (const [name, opt] of [['INFO', NbdOpt.INFO], ['GO', NbdOpt.GO]] as const) {
    const r = await option(opt, encodeInfoRequest(exportName, []));
    t.same(r.map((x) => x.type), [NbdRep.ERR_TLS_REQD], `${name}: TLS required, no NBD_REP_INFO`);
    t.notOk(r.some((x) => x.data.includes(exportName)), `${name}: the reply does not name the export`);
  }
  t.same((await option(NbdOpt.STRUCTURED_REPLY)).map((r) => r.type), [NbdRep.ERR_TLS_REQD], 'STRUCTURED_REPLY too');
  t.same((await option(NbdOpt.STARTTLS, Buffer.from('x'))).map((r) => r.type), [NbdRep.ERR_INVALID], 'STARTTLS with data: invalid');
  c.sock.write(encodeOptionRequest(NbdOpt.EXPORT_NAME, Buffer.from(exportName)));
  await c.closed;
  t.ok(c.ended, 'EXPORT_NAME before TLS: the server closed the connection without a reply');

  if (!haveTool('nbdinfo')) return; // the raw client above showed it; libnbd's view needs libnbd-bin
  const info = await runTool('nbdinfo', ['--list', `nbd://127.0.0.1:${port}/`]);
  t.not(info.code, 0, 'nbdinfo --list without TLS fails');
  t.notMatch(info.stdout + info.stderr, new RegExp(`${exportName}|16777216`), 'and shows no export name or size');
});

t.test('TLS PSK: nbdinfo and qemu-io read and write; a wrong key is refused', needs('nbdinfo', 'qemu-io'), async (t) => {
  const { port } = await server(t, 'require');
  const info = await runTool('nbdinfo', ['--json', pskUri(port)]);
  t.equal(info.code, 0, `nbdinfo over TLS PSK${info.stderr}`);
  t.match(info.stdout, /"export-size": 16777216/, 'sees the export and its size');
  t.match(info.stdout, /"TLS": true/, 'the session ran inside TLS');

  const qemu = await runTool('qemu-io', [
    '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir},username=alice`,
    '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=${exportName},tls-creds=tls0`,
    '-c', 'write -P 0x5a 1M 1M', '-c', 'read -P 0x5a 1M 1M', '-c', 'flush',
  ]);
  t.equal(qemu.code, 0, `qemu-io over TLS PSK${qemu.stderr}`);
  t.notMatch(qemu.stdout, /Pattern verification failed/, 'reads back what it wrote');
  t.same(await vol.read(MiB, MiB), Buffer.alloc(MiB, 0x5a), 'the write is on the volume');

  const before = await readFile(volPath);
  const wrong = await runTool('nbdinfo', [pskUri(port, exportName, wrongPskFile)]);
  t.not(wrong.code, 0, 'a wrong PSK: the TLS handshake fails');
  t.notMatch(wrong.stdout, /16777216/, 'and learns no size');
  const wrongQemu = await runTool('qemu-io', [
    '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${wrongDir},username=alice`,
    '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=${exportName},tls-creds=tls0`,
    '-c', 'write -P 0x11 0 64k',
  ]);
  t.not(wrongQemu.code, 0, 'qemu-io with a wrong PSK fails');
  const other = await runTool('nbdinfo', [`nbds://mallory@127.0.0.1:${port}/${exportName}?tls-psk-file=${wrongPskFile}`]);
  t.not(other.code, 0, 'an unknown PSK identity fails');
  t.ok((await readFile(volPath)).equals(before), 'nothing was written by the refused clients');
});

t.test('TLS X.509: nbdinfo and qemu-io verify the server against the CA', needs('nbdinfo', 'qemu-io'), async (t) => {
  const { port } = await server(t, 'require', { x509: true });
  const info = await runTool('nbdinfo', [`nbds://127.0.0.1:${port}/${exportName}?tls-certificates=${x509Dir}`]);
  t.equal(info.code, 0, `nbdinfo over TLS X.509${info.stderr}`);
  t.match(info.stdout, /export-size: 16777216/, 'sees the export');
  const qemu = await runTool('qemu-io', [
    '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${x509Dir}`,
    '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=${exportName},tls-creds=tls0`,
    '-c', 'write -P 0x6b 2M 64k', '-c', 'read -P 0x6b 2M 64k',
  ]);
  t.equal(qemu.code, 0, `qemu-io over TLS X.509${qemu.stderr}`);
  t.notMatch(qemu.stdout, /Pattern verification failed/, 'reads back what it wrote');
  // A CA that did not sign the server's certificate: the client refuses the server.
  const otherCa = join(dir, 'other-ca');
  await mkdir(otherCa, { recursive: true });
  await writeFile(join(otherCa, 'ca-cert.pem'), makeTestPki().caCert);
  const untrusted = await runTool('nbdinfo', [`nbds://127.0.0.1:${port}/${exportName}?tls-certificates=${otherCa}`]);
  t.not(untrusted.code, 0, 'a server certificate from another CA is refused by the client');
  // The same listener takes PSK clients too.
  t.equal((await runTool('nbdinfo', [pskUri(port)])).code, 0, 'PSK on the same listener');
});

t.test('allow: plain and TLS clients; off: STARTTLS unsupported', needs('nbdinfo'), async (t) => {
  const { port } = await server(t, 'allow');
  t.equal((await runTool('nbdinfo', [`nbd://127.0.0.1:${port}/${exportName}`])).code, 0, 'allow: a plain client');
  t.equal((await runTool('nbdinfo', [pskUri(port)])).code, 0, 'allow: a TLS client');
  const off = await server(t, 'off');
  const { option } = await plainClient(off.port);
  t.same((await option(NbdOpt.STARTTLS)).map((r) => r.type), [NbdRep.ERR_UNSUP], 'off: STARTTLS unsupported');
  t.not((await runTool('nbdinfo', [pskUri(off.port)])).code, 0, 'off: a client that requires TLS gives up');
});

t.test('allow-list: a client from another address is closed before the greeting', async (t) => {
  const { port } = await server(t, 'off', { allowClients: ['127.0.0.1/32', '::1'] });
  const { option } = await plainClient(port);
  t.same((await option(NbdOpt.LIST)).map((r) => r.type), [NbdRep.SERVER, NbdRep.ACK], '127.0.0.1 is allowed');
  const sock = connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' });
  let received = 0;
  sock.on('data', (d: Buffer) => { received += d.length; });
  await new Promise((resolve) => { sock.on('close', resolve); sock.on('error', resolve); });
  t.equal(received, 0, '127.0.0.2 gets not even the greeting');
  t.throws(() => new NbdServer({ exports: () => [], allowClients: ['10.0.0.0/33'] }), { code: ErrorCode.INVALID_ARGUMENT }, 'a bad subnet');
  t.throws(() => new NbdServer({ exports: () => [], allowClients: ['not-an-address'] }), { code: ErrorCode.INVALID_ARGUMENT }, 'a bad address');
});

t.test('a unix-socket listener (mode 0600) serves nbd+unix:// clients', needs('nbdinfo'), async (t) => {
  const { srv } = await server(t, 'off');
  const path = join(dir, 'nbd.sock');
  await srv.listenUnix(path);
  t.equal((await stat(path)).mode & 0o777, 0o600, 'the socket file is the owner\'s only');
  const info = await runTool('nbdinfo', [`nbd+unix:///${exportName}?socket=${path}`]);
  t.equal(info.code, 0, `nbdinfo over the unix socket${info.stderr}`);
  t.match(info.stdout, /export-size: 16777216/);
});

t.test('bad TLS settings: clear errors naming the line or field, no key echoed', async (t) => {
  const secretHex = 'ab'.repeat(16);
  t.throws(() => parsePskFile(`alice ${secretHex}\n`, 'k.psk'), { code: ErrorCode.CONFIG_INVALID, message: /k\.psk line 1/ }, 'no colon');
  t.throws(() => parsePskFile(`alice:${secretHex}zz\n`, 'k.psk'), { code: ErrorCode.CONFIG_INVALID }, 'not hex');
  t.throws(() => parsePskFile(`alice:${secretHex}\nalice:${secretHex}\n`, 'k.psk'), { code: ErrorCode.CONFIG_INVALID, message: /twice/ }, 'listed twice');
  t.throws(() => parsePskFile('# nothing\n', 'k.psk'), { code: ErrorCode.CONFIG_INVALID }, 'no key at all');
  try {
    parsePskFile(`alice:${secretHex}zz\n`, 'k.psk');
  } catch (err) {
    t.notMatch((err as Error).message, secretHex, 'the error does not echo the key');
  }
  t.same([...parsePskFile(`\n# c\nbob:${secretHex}\n`, 'k.psk').keys()], ['bob'], 'comments and blank lines skipped');
  t.throws(() => nbdTls('require', {}), { code: ErrorCode.CONFIG_INVALID }, 'require without credentials');
  t.throws(() => nbdTls('allow', { certPem: 'not a certificate', keyPem: 'nor a key' }), { code: ErrorCode.CONFIG_INVALID }, 'an unusable certificate');
  const base = pairConfigJson({ dir, volumes: 1 }).prod;
  const cfg = (nbd: Record<string, unknown>) => () => parseConfig({ ...base, nbd: { host: '127.0.0.1', port: 0, ...nbd } });
  t.throws(cfg({ tls: 'maybe' }), { code: ErrorCode.CONFIG_INVALID, message: /\$\.nbd\.tls/ }, 'an unknown mode');
  t.throws(cfg({ tls: 'require' }), { code: ErrorCode.CONFIG_INVALID }, 'require without a PSK file or certificate');
  t.throws(cfg({ tls: 'allow', tlsCertFile: 'c.pem' }), { code: ErrorCode.CONFIG_INVALID }, 'a certificate without its key');
  t.throws(cfg({ allowClients: [] }), { code: ErrorCode.CONFIG_INVALID }, 'an empty allow-list');
  t.match(parseConfig({ ...base, nbd: { host: '127.0.0.1', port: 0 } }).nbd, { tls: 'off' }, 'TLS is off by default');
});

t.test('both gateways with TLS required: qemu-io, fio and nbdcopy through the intake, the replica read back over TLS',
  needs('qemu-io', 'fio', 'nbdcopy', 'nbdinfo'), async (t) => {
    const pairDir = join(dir, 'pair');
    await mkdir(pairDir);
    const json = pairConfigJson({ dir: pairDir, volumes: 1, volumeSizeBytes: 64 * MiB });
    const { pair, prod, dr } = await startNbdProcessPair(t, pairDir, json, { nbd: {
      tls: 'require', tlsPskFile: pskFile, tlsCertFile: join(x509Dir, 'server-cert.pem'), tlsKeyFile: join(x509Dir, 'server-key.pem'),
    } });
    const intake = pair.ready.prod!.nbdPort!;
    const replica = pair.ready.dr!.nbdPort!;
    const qemu = await runTool('qemu-io', [
      '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir},username=alice`,
      '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${intake},export=vol-0,tls-creds=tls0`,
      '-c', 'write -P 0xc3 0 4M',
    ]);
    t.equal(qemu.code, 0, `qemu-io writes through the TLS intake${qemu.stderr}`);
    // fio's nbd engine lets libnbd read no file named in the URI (no tls-psk-file): it takes X.509 with the CA
    // from libnbd's default place, $HOME/.pki/libnbd.
    const home = join(pairDir, 'home');
    await mkdir(join(home, '.pki', 'libnbd'), { recursive: true });
    await writeFile(join(home, '.pki', 'libnbd', 'ca-cert.pem'), pki.caCert);
    const fio = await runTool('fio', ['--name=tls', '--ioengine=nbd', `--uri=nbds://127.0.0.1:${intake}/vol-0`, '--rw=randwrite',
      '--bs=64k', '--iodepth=8', '--size=16M', '--offset=8M', '--randseed=17', '--output-format=terse'], 120_000, { HOME: home });
    t.equal(fio.code, 0, `fio's nbd engine through nbds://${fio.stderr}`);
    const src = join(pairDir, 'upload.img');
    await writeFile(src, seededRandom(9).bytes(4 * MiB));
    const up = await runTool('nbdcopy', [src, pskUri(intake, 'vol-0')]); // onto the volume's first 4 MiB
    t.equal(up.code, 0, `nbdcopy uploads through nbds://${up.stderr}`);
    await drainChild(prod, dr);
    const plain = await runTool('nbdinfo', [`nbd://127.0.0.1:${replica}/vol-0`]);
    t.not(plain.code, 0, 'the replica export refuses a plain client');
    const out = join(pairDir, 'replica.img');
    const down = await runTool('nbdcopy', [pskUri(replica, 'vol-0'), out]);
    t.equal(down.code, 0, `nbdcopy reads the replica over TLS${down.stderr}`);
    const source = await readFile(json.prod.vms[0]!.volumes[0]!.path);
    const got = await readFile(out);
    t.equal(got.length, 64 * MiB, 'the whole replica');
    t.ok(got.equals(source), 'the replica read over TLS equals the source volume');
    t.ok(got.subarray(0, 4 * MiB).equals(await readFile(src)), 'with the uploaded image at its start');
  });
