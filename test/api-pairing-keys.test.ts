import t, { type Test } from 'tap';
import type { Clock } from '../src/core/clock.js';
import { ErrorCode, VrgError, isVrgError } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';
import {
  PAIRING_KEY_HEX_MAX,
  PAIRING_KEY_TTL_MS_DEFAULT,
  PairingKeyIssuer,
  decodeClusterPairingKey,
  decodeVolumePairingKey,
  encodeClusterPairingKey,
  encodeVolumePairingKey,
  redact,
  type ClusterPairingKeyFields,
  type PairingCredentialRecord,
} from '../src/api/jsonrpc/pairing-keys.js';

// The source documents' example keys, verbatim (the PDFs wrap long strings; `unwrap` removes that wrapping).
// seed 001 (pt-BR), CompleteVolumePairing request example, lines 218-224 (the document shows a cluster key there)
const DOC_CLUSTER_KEY = [
  '7b22636c7573746572506169724944223a312c22636c75737465725061697255554944223',
  'a2231636561313336322d346338662d343631612d626537322d37343536366139353364326',
  '6222c22636c7573746572556e697175654944223a2278736d36222c226d766970223a22313',
  '9322e3136382e3133392e313232222c226e616d65223a224175746f54657374322d6330755',
  '2222c2270617373776f7264223a22695e59686f20492d64774d7d4c67614b222c227270634',
  '36f6e6e656374696f6e4944223a3931333134323634392c22757365726e616d65223a225f5',
  'f53465f706169725f50597a796647704c7246564432444a42227d',
].join('\n');

// seed 001 (pt-BR), StartVolumePairing response example, lines 664-667
const DOC_VOLUME_KEY = [
  '7b226d766970223a223139322e3136382e3133392e313232222c22766f6c756d654944223',
  'a312c22766f6c756d654e616d65223a2254657374222c22766f6c756d65506169725555494',
  '4223a2236393632346663622d323032652d343332352d613536392d6563396336353563376',
  '23561227d',
].join('\n');

// seed 000 (zh-CN), CompleteClusterPairing request example, line 133: 497 hex digits
const DOC_CLUSTER_KEY_ODD = [
  '7b22636c7573746572506169724944223a312c22636c75737465725061697255554944223a2231636561313336322d346338662d343631612d626537322d373435363661393533643266222c22636c75737465725556e697175654944223a2278736d36222c226d766970223a223139322e3136382e3133392e313232222c2226e616d65223a224175746f54657374322d6330755222c2270617373776f7264223a22695e59686f20492d64774d7d4c67614b222c22727063436f6e6e656374696f6e4944223a3931333134323634392c22757365726e616d65223a225f5f53465f706169725f50597a796647704c7246564432444a42227d',
].join('\n');

// seed 000 (zh-CN), StartClusterPairing response example, line 575: even length, but a digit was inserted and another dropped (not UTF-8)
const DOC_CLUSTER_KEY_GARBLED = [
  '7b22636c7573746572506169724944223a312c22636c75737465725061697255554944223a2231636561313336322d346338662d343631612d626537322d373435363661393533643266222c22636c75737465725556e697175654944223a2278736d36222c226d766970223a223139322e3136382e3133392e313232222c226e616d65223a224175746f54657374322d6330755222c2270617373776f7264223a22695e59686f20492d64774d7d4c67614b222c22727063436f6e6e656374696f6e4944223a3931333134323634392c22757365726e616d65223a225f5f53465f706169725f50597a796647704c7246564432444a42227d',
].join('\n');

// seed 002 (ja), StartVolumePairing response example, line 673: 231 hex digits
const DOC_VOLUME_KEY_ODD = [
  '7b226d766970223a223139322e3136382e31333392e313232222c22766f6c756d654944223a312c22766f6c756d654e616d65223a2254657374222c22766f6c756d655061697255554944223a2236393632346663622d323032652d343332352d613536392d656339633635356337623561227d',
].join('\n');

const unwrap = (s: string): string => s.replace(/\s+/g, '');

const DOC_CLUSTER_FIELDS: ClusterPairingKeyFields = {
  clusterPairID: 1,
  clusterPairUUID: '1cea1362-4c8f-461a-be72-74566a953d2f',
  clusterUniqueID: 'xsm6',
  mvip: '192.168.139.122',
  name: 'AutoTest2-c0uR',
  password: 'i^Yho I-dwM}LgaK',
  rpcConnectionID: 913142649,
  username: '__SF_pair_PYzyfGpLrFVD2DJB',
};
const DOC_VOLUME_FIELDS = {
  mvip: '192.168.139.122',
  volumeID: 1,
  volumeName: 'Test',
  volumePairUUID: '69624fcb-202e-4325-a569-ec9c655c7b5a',
};

/** Every error a test provokes, so the last test can check none of them carries a secret. */
const seenErrors: VrgError[] = [];
const secrets = new Set<string>([DOC_CLUSTER_FIELDS.password, unwrap(DOC_CLUSTER_KEY)]);

function catchCode(t: Test, fn: () => unknown, code: string, msg: string): void {
  try {
    fn();
    t.fail(`${msg}: no error`);
  } catch (err) {
    if (!isVrgError(err)) throw err;
    seenErrors.push(err);
    t.equal(err.code, code, msg);
  }
}

function manualClock(start = 1_700_000_000_000): Clock & { advance(ms: number): void } {
  let now = start;
  return {
    nowMs: () => now,
    monotonicNs: () => BigInt(now) * 1_000_000n,
    setTimer: () => ({ cancel() {} }),
    advance(ms: number) { now += ms; },
  };
}

const CLUSTER_PARAMS = {
  clusterPairID: 3,
  clusterPairUUID: 'a7e4c3b2-1d0f-4e9a-8b7c-6d5e4f3a2b1c',
  clusterUniqueID: 'gw01',
  mvip: '10.0.0.5:8443',
  name: 'site-a',
};

function issuer(seed = 1, extra: Partial<ConstructorParameters<typeof PairingKeyIssuer>[0]> = {}) {
  const clock = manualClock();
  const iss = new PairingKeyIssuer({ clock, random: seededRandom(seed), ...extra });
  return { clock, iss };
}

function issueCluster(iss: PairingKeyIssuer) {
  const r = iss.issueCluster(CLUSTER_PARAMS);
  const f = decodeClusterPairingKey(r.clusterPairingKey);
  secrets.add(r.clusterPairingKey);
  secrets.add(f.password);
  return { ...r, fields: f };
}

t.test("the documents' example keys decode to the documented fields and re-encode byte for byte", async (t) => {
  const cluster = decodeClusterPairingKey(unwrap(DOC_CLUSTER_KEY));
  t.same(cluster, DOC_CLUSTER_FIELDS, 'cluster key fields and types');
  t.same(Object.keys(cluster), Object.keys(DOC_CLUSTER_FIELDS), 'field order as in the document');
  t.equal(encodeClusterPairingKey(cluster), unwrap(DOC_CLUSTER_KEY), 'cluster key re-encodes identically');
  const volume = decodeVolumePairingKey(unwrap(DOC_VOLUME_KEY));
  t.same(volume, DOC_VOLUME_FIELDS, 'volume key fields and types');
  t.same(Object.keys(volume), ['mvip', 'volumeID', 'volumeName', 'volumePairUUID'], 'volume field order');
  t.equal(encodeVolumePairingKey(volume), unwrap(DOC_VOLUME_KEY), 'volume key re-encodes identically');
  t.equal(Buffer.from(unwrap(DOC_VOLUME_KEY), 'hex').toString(),
    '{"mvip":"192.168.139.122","volumeID":1,"volumeName":"Test","volumePairUUID":"69624fcb-202e-4325-a569-ec9c655c7b5a"}');
});

t.test("the documents' garbled copies of the examples are refused", async (t) => {
  catchCode(t, () => decodeClusterPairingKey(unwrap(DOC_CLUSTER_KEY_ODD)), ErrorCode.PAIRING_KEY_INVALID, 'odd number of hex digits');
  catchCode(t, () => decodeClusterPairingKey(unwrap(DOC_CLUSTER_KEY_GARBLED)), ErrorCode.PAIRING_KEY_INVALID, 'shifted nibbles: not UTF-8 JSON');
  catchCode(t, () => decodeVolumePairingKey(unwrap(DOC_VOLUME_KEY_ODD)), ErrorCode.PAIRING_KEY_INVALID, 'volume key with a digit too many');
  catchCode(t, () => decodeVolumePairingKey(unwrap(DOC_CLUSTER_KEY)), ErrorCode.PAIRING_KEY_INVALID, 'a cluster key is not a volume key');
  catchCode(t, () => decodeClusterPairingKey(DOC_CLUSTER_KEY), ErrorCode.PAIRING_KEY_INVALID, 'whitespace is not hex (keys are strict)');
});

t.test('round trips', async (t) => {
  const fields = { ...DOC_CLUSTER_FIELDS, name: 'Zürich ✓ "quoted"', clusterPairID: 0, rpcConnectionID: 2 ** 31 - 1 };
  const hex = encodeClusterPairingKey(fields);
  t.match(hex, /^[0-9a-f]+$/, 'lowercase hex');
  t.same(decodeClusterPairingKey(hex), fields);
  t.same(decodeClusterPairingKey(hex.toUpperCase()), fields, 'uppercase hex accepted');
  const vol = { mvip: 'gw-b.example:443', volumeID: 40, volumeName: 'db-data', volumePairUUID: DOC_VOLUME_FIELDS.volumePairUUID };
  t.same(decodeVolumePairingKey(encodeVolumePairingKey(vol)), vol);
  const withExtra = Buffer.from(JSON.stringify({ ...vol, futureField: [1, 2] })).toString('hex');
  t.same(decodeVolumePairingKey(withExtra), vol, 'unknown extra fields are ignored and dropped');
});

t.test('certFingerprint: an optional VRG field, first in order, 64 lowercase hex digits', async (t) => {
  const fp = 'ab'.repeat(32);
  const hex = encodeClusterPairingKey({ ...DOC_CLUSTER_FIELDS, certFingerprint: fp });
  const back = decodeClusterPairingKey(hex);
  t.equal(back.certFingerprint, fp);
  t.same(Object.keys(back), ['certFingerprint', ...Object.keys(DOC_CLUSTER_FIELDS)], 'alphabetical: first');
  t.notOk('certFingerprint' in decodeClusterPairingKey(unwrap(DOC_CLUSTER_KEY)), 'an Element key without it decodes, without it');
  const hexOf = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('hex');
  for (const bad of ['AB'.repeat(32), 'ab'.repeat(31), `${'ab'.repeat(32)}0`, 'AB:'.repeat(31) + 'AB', '', 42, null]) {
    catchCode(t, () => decodeClusterPairingKey(hexOf({ ...DOC_CLUSTER_FIELDS, certFingerprint: bad })), ErrorCode.PAIRING_KEY_INVALID, `certFingerprint ${JSON.stringify(bad)}`);
  }
  const { iss } = issuer();
  const issued = iss.issueCluster({ ...CLUSTER_PARAMS, certFingerprint: fp });
  secrets.add(issued.clusterPairingKey);
  t.equal(decodeClusterPairingKey(issued.clusterPairingKey).certFingerprint, fp, 'the issuer puts it in the key');
  t.equal(iss.redeemClusterKey(issued.clusterPairingKey).certFingerprint, fp, 'and in the grant');
});

t.test('malformed keys are refused with PAIRING_KEY_INVALID', async (t) => {
  const hexOf = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('hex');
  const bad: Array<[string, unknown]> = [
    ['empty', ''],
    ['not a string', 42],
    ['non-hex characters', unwrap(DOC_CLUSTER_KEY).replace(/^7b/, 'zz')],
    ['odd length', unwrap(DOC_CLUSTER_KEY).slice(0, -1)],
    ['truncated JSON', unwrap(DOC_CLUSTER_KEY).slice(0, -2)],
    ['not JSON', hexOf('hello, world')],
    ['invalid UTF-8', 'ff'.repeat(8)],
    ['JSON array', hexOf([1, 2, 3])],
    ['JSON null', hexOf('null')],
    ['JSON string', hexOf('"x"')],
    ['oversize', '20'.repeat(PAIRING_KEY_HEX_MAX / 2 + 1)],
  ];
  for (const [what, key] of bad) catchCode(t, () => decodeClusterPairingKey(key as string), ErrorCode.PAIRING_KEY_INVALID, what);
  for (const field of Object.keys(DOC_CLUSTER_FIELDS)) {
    const { [field]: _gone, ...rest } = DOC_CLUSTER_FIELDS as unknown as Record<string, unknown>;
    catchCode(t, () => decodeClusterPairingKey(hexOf(rest)), ErrorCode.PAIRING_KEY_INVALID, `missing ${field}`);
  }
  const wrongTypes: Array<[string, unknown]> = [
    ['clusterPairID', '1'], ['clusterPairID', 1.5], ['clusterPairID', -1], ['rpcConnectionID', null],
    ['clusterPairUUID', 'not-a-uuid'], ['mvip', 192], ['name', ''], ['password', { p: 1 }], ['username', ['u']],
    ['name', 'a\nb'], ['clusterUniqueID', 'x'.repeat(257)],
  ];
  for (const [field, value] of wrongTypes) {
    catchCode(t, () => decodeClusterPairingKey(hexOf({ ...DOC_CLUSTER_FIELDS, [field]: value })),
      ErrorCode.PAIRING_KEY_INVALID, `${field} = ${JSON.stringify(value)}`);
  }
  catchCode(t, () => decodeVolumePairingKey(hexOf({ ...DOC_VOLUME_FIELDS, volumeID: 0 })), ErrorCode.PAIRING_KEY_INVALID, 'volumeID 0');
  catchCode(t, () => decodeVolumePairingKey(hexOf({ ...DOC_VOLUME_FIELDS, volumeID: '1' })), ErrorCode.PAIRING_KEY_INVALID, 'volumeID string');
  catchCode(t, () => encodeClusterPairingKey({ ...DOC_CLUSTER_FIELDS, clusterPairID: NaN }), ErrorCode.PAIRING_KEY_INVALID, 'encode validates too');
  catchCode(t, () => encodeClusterPairingKey({ ...DOC_CLUSTER_FIELDS, name: '€'.repeat(256), mvip: '€'.repeat(256), clusterUniqueID: '€'.repeat(256) }),
    ErrorCode.PAIRING_KEY_INVALID, 'encode refuses a key over the size bound');
});

t.test('issue, then redeem exactly once', async (t) => {
  const { iss } = issuer();
  const k = issueCluster(iss);
  t.same(Object.keys(k.fields), Object.keys(DOC_CLUSTER_FIELDS), 'issued key has the documented fields in order');
  t.match(k.fields, { ...CLUSTER_PARAMS, username: k.username });
  t.ok(Buffer.from(k.fields.password, 'base64url').length >= 16, 'password carries at least 128 random bits');
  t.equal(iss.outstanding, 1);
  const grant = iss.redeemClusterKey(k.clusterPairingKey);
  t.same(grant, { ...CLUSTER_PARAMS, rpcConnectionID: k.fields.rpcConnectionID, username: k.username }, 'grant without the password');
  t.notOk('password' in grant);
  t.equal(iss.outstanding, 0);
  catchCode(t, () => iss.redeemClusterKey(k.clusterPairingKey), ErrorCode.PAIRING_KEY_USED, 'second use');
  catchCode(t, () => iss.redeem(k.username, k.fields.password), ErrorCode.PAIRING_KEY_USED, 'second use by credential');
  catchCode(t, () => iss.redeem(k.username, 'guess'), ErrorCode.PAIRING_KEY_INVALID, 'wrong password says nothing about use');
});

t.test('expiry follows the injected clock', async (t) => {
  const { clock, iss } = issuer();
  const a = issueCluster(iss);
  const b = issueCluster(iss);
  t.equal(a.expiresAtMs, clock.nowMs() + PAIRING_KEY_TTL_MS_DEFAULT, 'one hour by default');
  clock.advance(PAIRING_KEY_TTL_MS_DEFAULT - 1);
  t.ok(iss.redeemClusterKey(a.clusterPairingKey), 'valid until the last millisecond');
  clock.advance(1);
  catchCode(t, () => iss.redeemClusterKey(b.clusterPairingKey), ErrorCode.PAIRING_KEY_EXPIRED, 'expired');
  catchCode(t, () => iss.redeemClusterKey(a.clusterPairingKey), ErrorCode.PAIRING_KEY_USED, 'used and expired reports used');
  t.equal(iss.outstanding, 0);
  clock.advance(25 * 3600_000);
  catchCode(t, () => iss.redeemClusterKey(b.clusterPairingKey), ErrorCode.PAIRING_KEY_INVALID, 'tombstone pruned after a day');
  const short = issuer(1, { ttlMs: 1000 });
  const c = issueCluster(short.iss);
  short.clock.advance(1000);
  catchCode(t, () => short.iss.redeemClusterKey(c.clusterPairingKey), ErrorCode.PAIRING_KEY_EXPIRED, 'configured ttl');
});

t.test('tampered keys are INVALID and do not burn the credential', async (t) => {
  const { iss } = issuer();
  const k = issueCluster(iss);
  const hex = k.clusterPairingKey;
  const pwHex = Buffer.from(`"password":"`).toString('hex');
  const at = hex.indexOf(pwHex) + pwHex.length + 1; // low nibble of the password's first byte
  const flipped = (parseInt(hex[at]!, 16) ^ 1).toString(16);
  const tampered = hex.slice(0, at) + flipped + hex.slice(at + 1);
  t.not(decodeClusterPairingKey(tampered).password, k.fields.password, 'still decodes, other password');
  catchCode(t, () => iss.redeemClusterKey(tampered), ErrorCode.PAIRING_KEY_INVALID, 'flipped password digit');
  const otherPair = encodeClusterPairingKey({ ...k.fields, clusterPairID: 4 });
  catchCode(t, () => iss.redeemClusterKey(otherPair), ErrorCode.PAIRING_KEY_INVALID, 'mismatching clusterPairID');
  const otherMvip = encodeClusterPairingKey({ ...k.fields, mvip: '10.6.6.6' });
  catchCode(t, () => iss.redeemClusterKey(otherMvip), ErrorCode.PAIRING_KEY_INVALID, 'mismatching mvip');
  const otherUser = encodeClusterPairingKey({ ...k.fields, username: `${k.username}x` });
  catchCode(t, () => iss.redeemClusterKey(otherUser), ErrorCode.PAIRING_KEY_INVALID, 'unknown username');
  catchCode(t, () => iss.redeemClusterKey(unwrap(DOC_CLUSTER_KEY)), ErrorCode.PAIRING_KEY_INVALID, 'the document example grants nothing');
  t.ok(iss.redeemClusterKey(k.clusterPairingKey), 'the genuine key still works once');
});

t.test('every issue makes a new key and a new credential', async (t) => {
  const { iss } = issuer();
  const keys = new Set<string>();
  const users = new Set<string>();
  const passwords = new Set<string>();
  for (let i = 0; i < 10; i++) {
    const k = issueCluster(iss);
    keys.add(k.clusterPairingKey);
    users.add(k.username);
    passwords.add(k.fields.password);
  }
  t.equal(keys.size, 10);
  t.equal(users.size, 10);
  t.equal(passwords.size, 10);
  const again = issuer(); // same seed, fresh issuer: the same stream, so the injected Random is really used
  t.equal(again.iss.issueCluster(CLUSTER_PARAMS).username, [...users][0]);
});

t.test('outstanding keys are bounded', async (t) => {
  const { clock, iss } = issuer(7, { maxOutstanding: 3 });
  const ks = [issueCluster(iss), issueCluster(iss), issueCluster(iss)];
  catchCode(t, () => iss.issueCluster(CLUSTER_PARAMS), ErrorCode.PAIRING_KEY_LIMIT, 'fourth outstanding key refused');
  iss.redeemClusterKey(ks[0]!.clusterPairingKey);
  t.ok(issueCluster(iss), 'a redeemed key frees a slot');
  clock.advance(PAIRING_KEY_TTL_MS_DEFAULT);
  for (let i = 0; i < 3; i++) issueCluster(iss);
  t.equal(iss.outstanding, 3, 'expired keys free their slots');
  catchCode(t, () => iss.issueCluster({ ...CLUSTER_PARAMS, clusterPairUUID: 'nope' }), ErrorCode.PAIRING_KEY_INVALID, 'bad params');
});

t.test('volume keys: documented format, single use, expiry, tampering', async (t) => {
  const { clock, iss } = issuer(3);
  const v = iss.issueVolume({ mvip: '10.0.0.5', volumeID: 7, volumeName: 'db' });
  const f = decodeVolumePairingKey(v.volumePairingKey);
  t.same(f, { mvip: '10.0.0.5', volumeID: 7, volumeName: 'db', volumePairUUID: v.volumePairUUID });
  t.match(v.volumePairUUID, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'v4 UUID');
  catchCode(t, () => iss.redeemVolumeKey(encodeVolumePairingKey({ ...f, volumeID: 8 })), ErrorCode.PAIRING_KEY_INVALID, 'other volumeID');
  catchCode(t, () => iss.redeemVolumeKey(encodeVolumePairingKey({ ...f, volumePairUUID: DOC_VOLUME_FIELDS.volumePairUUID })),
    ErrorCode.PAIRING_KEY_INVALID, 'unknown UUID');
  t.same(iss.redeemVolumeKey(v.volumePairingKey), f, 'redeemed once');
  catchCode(t, () => iss.redeemVolumeKey(v.volumePairingKey), ErrorCode.PAIRING_KEY_USED, 'twice');
  const w = iss.issueVolume({ mvip: '10.0.0.5', volumeID: 7, volumeName: 'db' });
  t.not(w.volumePairingKey, v.volumePairingKey, 'new key every call');
  clock.advance(PAIRING_KEY_TTL_MS_DEFAULT);
  catchCode(t, () => iss.redeemVolumeKey(w.volumePairingKey), ErrorCode.PAIRING_KEY_EXPIRED, 'expired');
});

t.test('the persistence hook sees no secrets and restores the state', async (t) => {
  let saved: readonly PairingCredentialRecord[] = [];
  const { clock, iss } = issuer(11, { persist: (r) => { saved = r; } });
  const a = issueCluster(iss);
  const b = issueCluster(iss);
  iss.redeemClusterKey(a.clusterPairingKey);
  t.equal(saved.length, 2);
  const dump = JSON.stringify(saved);
  t.notOk(dump.includes(a.fields.password) || dump.includes(b.fields.password), 'no plaintext password persisted');
  t.notOk(dump.includes(a.clusterPairingKey) || dump.includes(b.clusterPairingKey), 'no key persisted');
  const restored = new PairingKeyIssuer({ clock, random: seededRandom(99), records: saved });
  catchCode(t, () => restored.redeemClusterKey(a.clusterPairingKey), ErrorCode.PAIRING_KEY_USED, 'used survives a restart');
  t.ok(restored.redeemClusterKey(b.clusterPairingKey), 'outstanding key survives a restart');
  const failing = issuer(12, { persist: () => { throw new Error('disk full'); } });
  t.throws(() => failing.iss.issueCluster(CLUSTER_PARAMS), /disk full/);
  t.equal(failing.iss.outstanding, 0, 'a failed save undoes the issue');
});

t.test('redact hides the key', async (t) => {
  const { iss } = issuer();
  const k = issueCluster(iss);
  const r = redact(k.clusterPairingKey);
  t.notOk(r.includes(k.clusterPairingKey.slice(0, 16)), 'no key prefix');
  t.notOk(r.includes(k.fields.password));
  t.match(r, /^<pairing-key \d+ chars sha256:[0-9a-f]{8}…>$/);
  t.equal(r, redact(k.clusterPairingKey), 'stable, to correlate log lines');
  t.equal(redact(undefined), '<pairing-key: none>');
});

t.test('no error carries a key or a password', async (t) => {
  t.ok(seenErrors.length > 40, `${seenErrors.length} errors collected`);
  const hexSecrets = [...secrets].map((s) => (/^[0-9a-f]+$/i.test(s) ? s : Buffer.from(s).toString('hex')));
  const texts = seenErrors.map((e) => [e.message, JSON.stringify(e.details ?? {}), String(e.cause ?? ''), e.stack ?? ''].join('\n'));
  for (const text of texts) {
    for (const s of [...secrets, ...hexSecrets]) {
      if (text.includes(s)) t.fail(`secret leaked in: ${text.slice(0, 80)}`);
    }
    if (/[0-9a-f]{32,}/i.test(text.split('\n    at ')[0]!)) t.fail('a long hex string in an error');
  }
  t.equal(seenErrors.filter((e) => e.cause !== undefined).length, 0, 'no causes attached (JSON.parse quotes its input)');
});
