import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import t from 'tap';
import type { Clock } from '../src/core/clock.js';
import { ErrorCode } from '../src/core/errors.js';
import { seededRandom } from '../src/core/random.js';
import {
  PairingKeyIssuer, decodeClusterPairingKey, decodeVolumePairingKey, encodeClusterPairingKey, encodeVolumePairingKey,
} from '../src/api/jsonrpc/pairing-keys.js';
import { fuzzBytes, fuzzParams, typed } from './lib/fuzz.js';

// Property-based tests of the pairing-key codecs: any string decodes to the documented fields or fails with
// VRG_PAIRING_KEY_INVALID; what decodes re-encodes to a key that decodes the same; a refused key leaves the
// issuer's credential unused. The templates come from a real issuer, so a field added to the keys later is
// carried through without this file listing it.

const INVALID = [ErrorCode.PAIRING_KEY_INVALID];
const clock: Clock = { nowMs: () => 1_000_000, monotonicNs: () => 0n, setTimer: () => ({ cancel() {} }) };
const UUID = '1cea1362-5a3e-4c5d-9f7a-0123456789ab';

function issuer(seed: number): PairingKeyIssuer {
  return new PairingKeyIssuer({ clock, random: seededRandom(seed) });
}
const clusterParams = { clusterPairID: 3, clusterPairUUID: UUID, clusterUniqueID: 'xsm6', mvip: '127.0.0.1:9', name: 'fuzz' };
const volumeParams = { mvip: '127.0.0.1:9', volumeID: 4, volumeName: 'vol' };

type Codec = { encode(x: Record<string, unknown>): string; decode(hex: string): Record<string, unknown>; template(seed: number): string };
const codecs: Record<string, Codec> = {
  cluster: {
    encode: (x) => encodeClusterPairingKey(x as never), decode: (h) => ({ ...decodeClusterPairingKey(h) }),
    template: (seed) => issuer(seed).issueCluster(clusterParams).clusterPairingKey,
  },
  volume: {
    encode: (x) => encodeVolumePairingKey(x as never), decode: (h) => ({ ...decodeVolumePairingKey(h) }),
    template: (seed) => issuer(seed).issueVolume(volumeParams).volumePairingKey,
  },
};

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');
/** A JSON value of the kinds keys hold, plus the ones they must refuse. */
const value = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 300, size: 'max' }),
  // Strings a key may hold (printable, 1..256 UTF-16 units) and just past the limit; size 'max': fast-check
  // otherwise keeps strings to a few characters.
  fc.string({ minLength: 1, maxLength: 257, size: 'max' }), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 130, size: 'max' }),
  fc.constantFrom('', UUID, UUID.toUpperCase(), 'a\u0000b', 'é'),
  fc.integer(), fc.constantFrom(0, -1, 1, 2 ** 53, 1.5), fc.boolean(), fc.constant(null), fc.array(fc.nat(), { maxLength: 2 }),
);

for (const [kind, codec] of Object.entries(codecs)) {
  const template = codec.decode(codec.template(1));
  const fieldNames = Object.keys(template);
  /** The template's JSON with one field changed, dropped, or an extra one added. */
  const edited = fc.tuple(fc.constantFrom(...fieldNames, 'extraField'), fc.oneof(value, fc.constant(undefined)))
    .map(([f, v]) => ({ ...template, [f]: v }));

  t.test(`${kind} key: any string decodes or fails VRG_PAIRING_KEY_INVALID`, async (t) => {
    const valid = fc.integer({ min: 1, max: 1000 }).map((s) => Buffer.from(codec.template(s), 'hex'));
    const inputs = fc.oneof(
      fuzzBytes(valid, 600).map(hexOf), // mutated JSON bytes, hex-encoded
      edited.map((o) => Buffer.from(JSON.stringify(o)).toString('hex')),
      fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEFxyz '), maxLength: 600 }), // mutated hex text
      fc.string({ unit: 'binary', maxLength: 64 }),
      fc.constantFrom('', '0', 'zz', '7b7d', '5b5d', '6e756c6c', 'ff'.repeat(16), '0'.repeat(5000)),
    );
    const seen = { decoded: 0, refused: 0 };
    fc.assert(fc.property(inputs, (hex) => {
      const r = typed(() => codec.decode(hex), INVALID);
      seen[r.ok ? 'decoded' : 'refused']++;
      if (!r.ok) return true;
      // What decodes is a whole key: encoding it gives a key that decodes to the same fields.
      return isDeepStrictEqual(codec.decode(codec.encode(r.value)), r.value);
    }), fuzzParams(2000));
    const nonStrings = fc.oneof(fc.integer(), fc.constant(null), fc.constant(undefined), fc.object());
    fc.assert(fc.property(nonStrings, (x) => !typed(() => codec.decode(x as unknown as string), INVALID).ok), fuzzParams(100));
    t.ok(seen.decoded > 0 && seen.refused > 0, `both outcomes seen: ${JSON.stringify(seen)}`);
  });

  t.test(`${kind} key: decode(encode(x)) = x, or encode refuses with VRG_PAIRING_KEY_INVALID`, async (t) => {
    let encoded = 0;
    fc.assert(fc.property(edited, (x) => {
      const r = typed(() => codec.encode(x), INVALID);
      if (!r.ok) return true;
      encoded++;
      const back = codec.decode(r.value);
      // Extra fields are dropped; every field the key keeps comes back as it was given.
      return Object.keys(back).every((k) => isDeepStrictEqual(back[k], x[k])) && codec.encode(back) === r.value;
    }), fuzzParams(1500));
    t.ok(encoded > 0, `${encoded} of 1500 edited keys encoded`);
  });
}

t.test('a refused or altered cluster key never consumes the credential', async (t) => {
  fc.assert(fc.property(fc.integer({ min: 1, max: 1 << 30 }),
    fc.array(fc.tuple(fc.nat(), fc.constantFrom(...'0123456789abcdef')), { minLength: 1, maxLength: 3 }), (seed, edits) => {
    const iss = issuer(seed);
    const key = iss.issueCluster(clusterParams).clusterPairingKey;
    const altered = edits.reduce((k, [at, c]) => k.slice(0, at % k.length) + c + k.slice(at % k.length + 1), key);
    const r = typed(() => iss.redeemClusterKey(altered), [ErrorCode.PAIRING_KEY_INVALID, ErrorCode.PAIRING_KEY_USED]);
    if (r.ok) return altered === key || isDeepStrictEqual(decodeClusterPairingKey(altered), decodeClusterPairingKey(key));
    // Refused: the real key still redeems, once.
    return typed(() => iss.redeemClusterKey(key), []).ok && !typed(() => iss.redeemClusterKey(key), [ErrorCode.PAIRING_KEY_USED]).ok;
  }), fuzzParams(400));
  t.pass('400 altered keys');
});
