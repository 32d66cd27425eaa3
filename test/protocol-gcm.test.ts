import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ErrorCode } from '../src/core/errors.js';
import { encodeFrame, FrameType, openFrame, parseFrame, type DirectionKeys } from '../src/protocol/frame.js';
import { loadNativeGcm, nativeGcm, nativeGcmStatus } from '../src/protocol/gcm.js';

// The addon's in-place AES-128-GCM (protocol/gcm.ts) against node:crypto: the same bytes and tags both ways, so a
// gateway with the addon and one without speak the same frames.

const gcmSkip = nativeGcm === null ? `addon GCM not loaded: ${nativeGcmStatus().error ?? ''}` : false;

function nodeSeal(key: Buffer, iv: Buffer, aad: Buffer, data: Buffer): { ct: Buffer; tag: Buffer } {
  const c = createCipheriv('aes-128-gcm', key, iv, { authTagLength: 16 });
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(data), c.final()]);
  return { ct, tag: c.getAuthTag() };
}

t.test('the GCM functions load with the addon and not with VRG_NATIVE=0', async (t) => {
  const built = existsSync(nativeGcmStatus().path) && process.env.VRG_NATIVE !== '0';
  if (built) t.ok(nativeGcmStatus().loaded, `loaded when built (${nativeGcmStatus().error ?? 'ok'})`);
  else t.comment(`addon not built: ${nativeGcmStatus().error ?? ''}`);
  t.match(loadNativeGcm({ VRG_NATIVE: '0' }), { gcm: null, status: { loaded: false, error: /VRG_NATIVE=0/ } });
});

t.test('gcmSeal / gcmOpen match node:crypto, in place and not, at every size', { skip: gcmSkip }, async (t) => {
  const g = nativeGcm!;
  for (const size of [0, 1, 15, 16, 17, 4096, 65536 + 3, 1 << 20]) {
    const key = randomBytes(16);
    const iv = randomBytes(12);
    const aad = randomBytes(size % 2 === 0 ? 40 : 0);
    const data = randomBytes(size);
    const ref = nodeSeal(key, iv, aad, data);
    const ct = Buffer.alloc(size);
    const tag = Buffer.alloc(16);
    g.gcmSeal(key, iv, aad, data, ct, tag);
    t.ok(ct.equals(ref.ct) && tag.equals(ref.tag), `${size} B: node:crypto's ciphertext and tag`);
    const inPlace = Buffer.from(data);
    const tag2 = Buffer.alloc(16);
    g.gcmSeal(key, iv, aad, inPlace, inPlace, tag2);
    t.ok(inPlace.equals(ref.ct) && tag2.equals(ref.tag), `${size} B: the same in place`);
    const back = Buffer.from(ref.ct);
    t.equal(g.gcmOpen(key, iv, aad, back, back, ref.tag), true, `${size} B: opens`);
    t.ok(back.equals(data), `${size} B: to the plaintext`);
    const bad = Buffer.from(ref.tag);
    bad[size % 16] ^= 0x40;
    t.equal(g.gcmOpen(key, iv, aad, Buffer.from(ref.ct), Buffer.alloc(size), bad), false, `${size} B: a flipped tag bit fails`);
    if (aad.length > 0) {
      const aad2 = Buffer.from(aad);
      aad2[3] ^= 1;
      t.equal(g.gcmOpen(key, iv, aad2, Buffer.from(ref.ct), Buffer.alloc(size), ref.tag), false, `${size} B: a flipped AAD bit fails`);
    }
  }
});

t.test('gcm refuses arguments of the wrong shape (a TypeError, nothing written)', { skip: gcmSkip }, async (t) => {
  const g = nativeGcm!;
  const k = Buffer.alloc(16);
  const iv = Buffer.alloc(12);
  const tag = Buffer.alloc(16);
  const dst = Buffer.alloc(8, 0xaa);
  t.throws(() => g.gcmSeal(Buffer.alloc(15), iv, Buffer.alloc(0), Buffer.alloc(8), dst, tag), TypeError, 'key of 15 bytes');
  t.throws(() => g.gcmSeal(k, Buffer.alloc(11), Buffer.alloc(0), Buffer.alloc(8), dst, tag), TypeError, 'iv of 11 bytes');
  t.throws(() => g.gcmSeal(k, iv, Buffer.alloc(0), Buffer.alloc(9), dst, tag), TypeError, 'dst shorter than src');
  t.throws(() => g.gcmOpen(k, iv, Buffer.alloc(0), Buffer.alloc(8), dst, Buffer.alloc(15)), TypeError, 'tag of 15 bytes');
  t.throws(() => (g.gcmSeal as (...a: unknown[]) => void)(k, iv, 'aad', Buffer.alloc(8), dst, tag), TypeError, 'a string');
  t.ok(dst.equals(Buffer.alloc(8, 0xaa)), 'dst untouched');
});

t.test('an encrypted frame is standard AES-128-GCM: node:crypto opens what encodeFrame sealed', async (t) => {
  const keys: DirectionKeys = { key: randomBytes(16), salt: randomBytes(4) };
  const payload = randomBytes(300_000);
  const header = Buffer.from('header bytes');
  const seq = 2 ** 40 + 7;
  const frame = encodeFrame({ type: FrameType.WRITE_BATCH, seq, header, payload }, { keys, encrypt: true });
  const raw = parseFrame(frame);
  const iv = Buffer.concat([keys.salt, Buffer.from([0, 0, 1, 0, 0, 0, 0, 7])]);
  const d = createDecipheriv('aes-128-gcm', keys.key, iv, { authTagLength: 16 });
  d.setAuthTag(raw.tag!);
  d.setAAD(frame.subarray(0, 16 + header.length));
  const plain = Buffer.concat([d.update(raw.payload), d.final()]);
  t.ok(plain.equals(payload), `node:crypto decrypts it (${nativeGcm ? 'sealed by the addon' : 'sealed by node:crypto'})`);
  const opened = openFrame(raw, keys, seq);
  t.ok(opened.payload.equals(payload), 'openFrame returns the payload');
  t.ok(parseFrame(frame).payload.equals(raw.payload), 'the frame bytes stay as received');
  const flipped = Buffer.from(frame);
  flipped[flipped.length - 1]! ^= 1;
  t.throws(() => openFrame(parseFrame(flipped), keys, seq), { code: ErrorCode.FRAME_AUTH_FAILED }, 'a flipped tag bit is refused');
});

t.test('an authenticated-only frame (ack, control, unencrypted VM) is GCM over header and payload as AAD', async (t) => {
  const keys: DirectionKeys = { key: randomBytes(16), salt: randomBytes(4) };
  const header = Buffer.from('ack header');
  for (const size of [0, 1, 4096, 300_000]) {
    const payload = randomBytes(size);
    const seq = 99 + size;
    const frame = encodeFrame({ type: FrameType.WRITE_BATCH, seq, header, payload }, { keys, encrypt: false });
    const raw = parseFrame(frame);
    t.ok(raw.payload.equals(payload), `${size} B: the payload travels in clear`);
    const iv = Buffer.concat([keys.salt, Buffer.alloc(4), Buffer.from([0, 0, 0, 0])]);
    iv.writeUInt32BE(seq, 8);
    const c = createCipheriv('aes-128-gcm', keys.key, iv, { authTagLength: 16 });
    c.setAAD(frame.subarray(0, 16 + header.length));
    if (size > 0) c.setAAD(payload);
    c.final();
    t.ok(c.getAuthTag().equals(raw.tag!), `${size} B: node:crypto's tag over header then payload`);
    t.ok(openFrame(raw, keys, seq).payload.equals(payload), `${size} B: openFrame accepts it`);
    // A header byte, the payload's last byte (when there is one), a tag byte.
    for (const at of size > 0 ? [16 + 2, frame.length - 17, frame.length - 1] : [16 + 2, frame.length - 1]) {
      const bad = Buffer.from(frame);
      bad[at]! ^= 1;
      t.throws(() => openFrame(parseFrame(bad), keys, seq), { code: ErrorCode.FRAME_AUTH_FAILED }, `${size} B: a flipped bit at ${at} is refused`);
    }
  }
});

if (nativeGcm !== null) {
  t.test('the frame tests with node:crypto instead of the addon (VRG_NATIVE=0, child process)', async (t) => {
    t.spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)],
      { env: { ...process.env, VRG_NATIVE: '0' } }, 'VRG_NATIVE=0 run of this file');
  });
}
