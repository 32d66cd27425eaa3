import { createHash, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../../core/clock.js';
import { ErrorCode, vrgError, type VrgError } from '../../core/errors.js';
import type { Random } from '../../core/random.js';

// Element-format pairing keys (NetApp Element "Replication API methods", StartClusterPairing /
// StartVolumePairing). A key is the lowercase hex of the UTF-8 bytes of a compact JSON object:
//
//   cluster: {"clusterPairID":1,"clusterPairUUID":"1cea1362-…","clusterUniqueID":"xsm6",
//             "mvip":"192.168.139.122","name":"AutoTest2-c0uR","password":"i^Yho I-dwM}LgaK",
//             "rpcConnectionID":913142649,"username":"__SF_pair_PYzyfGpLrFVD2DJB"}
//   volume:  {"mvip":"192.168.139.122","volumeID":1,"volumeName":"Test",
//             "volumePairUUID":"69624fcb-202e-4325-a569-ec9c655c7b5a"}
//
// Field order is the documents' (alphabetical); numbers are JSON integers, everything else strings.
// Decoding is strict: hex only, even length, ≤ PAIRING_KEY_HEX_MAX chars, valid UTF-8, a JSON object,
// every documented field present with its type. Unknown extra fields are ignored and dropped (newer
// Element releases may add some). VRG adds one optional cluster key field, `certFingerprint`: the lowercase
// hex SHA-256 of the issuer's HTTPS certificate (DER), which the completing gateway pins. Errors never carry the key, its JSON, or a JSON.parse cause (whose
// message quotes the input): a key holds a password.

/** Longest key accepted, in hex characters (2 KiB of JSON; the documents' cluster key is 496). */
export const PAIRING_KEY_HEX_MAX = 4096;
const STRING_MAX = 256;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface ClusterPairingKeyFields {
  /** VRG: the issuer's HTTPS certificate fingerprint (absent: an issuer without HTTPS, or an older VRG). */
  certFingerprint?: string;
  clusterPairID: number;
  clusterPairUUID: string;
  clusterUniqueID: string;
  mvip: string;
  name: string;
  password: string;
  rpcConnectionID: number;
  username: string;
}

export interface VolumePairingKeyFields {
  mvip: string;
  volumeID: number;
  volumeName: string;
  volumePairUUID: string;
}

type FieldKind = 'uint' | 'posint' | 'string' | 'uuid' | 'sha256?';
type FieldSpec<T> = ReadonlyArray<readonly [keyof T, FieldKind]>;
const CLUSTER_FIELDS: FieldSpec<ClusterPairingKeyFields> = [
  ['certFingerprint', 'sha256?'],
  ['clusterPairID', 'uint'],
  ['clusterPairUUID', 'uuid'],
  ['clusterUniqueID', 'string'],
  ['mvip', 'string'],
  ['name', 'string'],
  ['password', 'string'],
  ['rpcConnectionID', 'uint'],
  ['username', 'string'],
];
const VOLUME_FIELDS: FieldSpec<VolumePairingKeyFields> = [
  ['mvip', 'string'],
  ['volumeID', 'posint'],
  ['volumeName', 'string'],
  ['volumePairUUID', 'uuid'],
];

function invalid(what: string, details: Record<string, unknown>): VrgError {
  return vrgError(ErrorCode.PAIRING_KEY_INVALID, `invalid ${what}`, details);
}

function fieldProblem(value: unknown, kind: FieldKind): string | null {
  if (kind === 'uint' || kind === 'posint') {
    if (typeof value !== 'number' || !Number.isSafeInteger(value)) return 'not an integer';
    return value < (kind === 'posint' ? 1 : 0) ? 'out of range' : null;
  }
  if (typeof value !== 'string') return 'not a string';
  if (kind === 'sha256?') return /^[0-9a-f]{64}$/.test(value) ? null : 'not a SHA-256 in lowercase hex';
  if (value.length === 0 || value.length > STRING_MAX) return 'bad length';
  if (/[\u0000-\u001f\u007f]/.test(value)) return 'control character';
  return kind === 'uuid' && !UUID_RE.test(value) ? 'not a UUID' : null;
}

/** Copy the listed fields in order, checking each; the reported detail names the field, never its value. */
function pickFields<T>(obj: Record<string, unknown>, spec: FieldSpec<T>, what: string): T {
  const out: Record<string, unknown> = {};
  for (const [name, kind] of spec) {
    const field = String(name);
    const present = Object.prototype.hasOwnProperty.call(obj, field) && obj[field] !== undefined;
    if (!present && kind.endsWith('?')) continue; // an optional field: absent stays absent
    if (!present) throw invalid(what, { field, reason: 'missing' });
    const reason = fieldProblem(obj[field], kind);
    if (reason !== null) throw invalid(what, { field, reason });
    out[field] = obj[field];
  }
  return out as T;
}

function encodeKey<T>(fields: T, spec: FieldSpec<T>, what: string): string {
  if (typeof fields !== 'object' || fields === null) throw invalid(what, { reason: 'not an object' });
  const ordered = pickFields<T>(fields as Record<string, unknown>, spec, what);
  const hex = Buffer.from(JSON.stringify(ordered), 'utf8').toString('hex');
  if (hex.length > PAIRING_KEY_HEX_MAX) throw invalid(what, { reason: 'too long', maxChars: PAIRING_KEY_HEX_MAX });
  return hex;
}

function decodeKey<T>(hex: unknown, spec: FieldSpec<T>, what: string): T {
  if (typeof hex !== 'string') throw invalid(what, { reason: 'not a string' });
  if (hex.length === 0 || hex.length > PAIRING_KEY_HEX_MAX) {
    throw invalid(what, { reason: 'bad length', length: hex.length, maxChars: PAIRING_KEY_HEX_MAX });
  }
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(hex)) throw invalid(what, { reason: 'not hex' });
  let parsed: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(hex, 'hex'));
    parsed = JSON.parse(text);
  } catch {
    throw invalid(what, { reason: 'not UTF-8 JSON' }); // no cause: its message would quote the key
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw invalid(what, { reason: 'not a JSON object' });
  }
  return pickFields<T>(parsed as Record<string, unknown>, spec, what);
}

export function encodeClusterPairingKey(fields: ClusterPairingKeyFields): string {
  return encodeKey(fields, CLUSTER_FIELDS, 'cluster pairing key');
}
export function decodeClusterPairingKey(hex: string): ClusterPairingKeyFields {
  return decodeKey(hex, CLUSTER_FIELDS, 'cluster pairing key');
}
export function encodeVolumePairingKey(fields: VolumePairingKeyFields): string {
  return encodeKey(fields, VOLUME_FIELDS, 'volume pairing key');
}
export function decodeVolumePairingKey(hex: string): VolumePairingKeyFields {
  return decodeKey(hex, VOLUME_FIELDS, 'volume pairing key');
}

/** A log-safe stand-in for a key: its length and a 32-bit SHA-256 fingerprint (to correlate log lines). */
export function redact(key: unknown): string {
  if (typeof key !== 'string') return '<pairing-key: none>';
  const fp = createHash('sha256').update(key, 'utf8').digest('hex').slice(0, 8);
  return `<pairing-key ${key.length} chars sha256:${fp}…>`;
}

// ---------------------------------------------------------------------------------------------------
// PairingKeyIssuer: one-time credentials behind the keys.
//
// issueCluster() makes a fresh username (`__VRG_pair_` + 16 base62 chars) and password (24 random bytes
// from the injected Random, base64url: 192 bits) per call and stores only
//   secretHash = SHA-256("vrg-pairing-key-v1\0" + username + "\0" + password).
// Plain SHA-256 is enough because the password is a 192-bit random secret, not a human choice: there is
// no dictionary to grind, so a slow KDF (scrypt) would add latency and a CPU-exhaustion surface on an
// unauthenticated path without adding security. Comparison is timingSafeEqual on the digests.
// Volume keys carry no password; their token is the random v4 volumePairUUID (122 bits), kept hashed too.
//
// A credential is redeemable once, before expiresAtMs (default 1 hour after issue, from the injected
// Clock). Redeemed and expired credentials stay as tombstones for `retainMs` (default 24 h) after expiry,
// so a replay reports USED/EXPIRED rather than INVALID; then they are pruned. Outstanding (unused,
// unexpired) credentials are bounded (default 16): issuing more fails with PAIRING_KEY_LIMIT.
// A wrong password or mismatching pair fields never consume the credential.

export const PAIRING_KEY_TTL_MS_DEFAULT = 60 * 60 * 1000;
export const PAIRING_KEY_RETAIN_MS_DEFAULT = 24 * 60 * 60 * 1000;
export const PAIRING_KEYS_OUTSTANDING_MAX_DEFAULT = 16;

export type ClusterPairingGrant = Omit<ClusterPairingKeyFields, 'password'>;
export type VolumePairingGrant = VolumePairingKeyFields;

/** What the persistence hook sees and what the constructor restores: never a plaintext secret. */
export interface PairingCredentialRecord {
  kind: 'cluster' | 'volume';
  /** cluster: the username; volume: hex SHA-256 of the volumePairUUID. */
  lookup: string;
  /** Hex SHA-256 of the domain-separated secret. */
  secretHash: string;
  issuedAtMs: number;
  expiresAtMs: number;
  usedAtMs: number | null;
  /** cluster: the key's fields minus the password; volume: the key's fields minus the UUID. */
  grant: Record<string, unknown>;
}

export interface PairingKeyIssuerOptions {
  clock: Clock;
  random: Random;
  ttlMs?: number;
  retainMs?: number;
  maxOutstanding?: number;
  /** Called synchronously after every change with all records; a throw undoes an issue (redeem stays used). */
  persist?: (records: readonly PairingCredentialRecord[]) => void;
  /** Records to start from (what `persist` last saw). */
  records?: readonly PairingCredentialRecord[];
}

export interface ClusterIssueParams {
  clusterPairID: number;
  clusterPairUUID: string;
  clusterUniqueID: string;
  mvip: string;
  name: string;
  /** Element's RPC connection id; a random 31-bit value when omitted. */
  rpcConnectionID?: number;
  /** The issuer's HTTPS certificate fingerprint, carried in the key (omitted: the key carries none). */
  certFingerprint?: string;
}

export interface VolumeIssueParams {
  mvip: string;
  volumeID: number;
  volumeName: string;
}

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function sha256Hex(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\0'), 'utf8').digest('hex');
}

function clusterSecretHash(username: string, password: string): string {
  return sha256Hex('vrg-pairing-key-v1', username, password);
}

export class PairingKeyIssuer {
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly ttlMs: number;
  private readonly retainMs: number;
  private readonly maxOutstanding: number;
  private readonly persist: ((records: readonly PairingCredentialRecord[]) => void) | undefined;
  private readonly records = new Map<string, PairingCredentialRecord>();

  constructor(opts: PairingKeyIssuerOptions) {
    this.clock = opts.clock;
    this.random = opts.random;
    this.ttlMs = opts.ttlMs ?? PAIRING_KEY_TTL_MS_DEFAULT;
    this.retainMs = opts.retainMs ?? PAIRING_KEY_RETAIN_MS_DEFAULT;
    this.maxOutstanding = opts.maxOutstanding ?? PAIRING_KEYS_OUTSTANDING_MAX_DEFAULT;
    this.persist = opts.persist;
    for (const [name, v] of [['ttlMs', this.ttlMs], ['retainMs', this.retainMs], ['maxOutstanding', this.maxOutstanding]] as const) {
      if (!Number.isSafeInteger(v) || v < (name === 'retainMs' ? 0 : 1)) {
        throw vrgError(ErrorCode.INVALID_ARGUMENT, `PairingKeyIssuer: bad ${name}`, { [name]: v });
      }
    }
    for (const r of opts.records ?? []) this.records.set(`${r.kind}:${r.lookup}`, { ...r, grant: { ...r.grant } });
  }

  /** Unused, unexpired credentials. */
  get outstanding(): number {
    const now = this.clock.nowMs();
    let n = 0;
    for (const r of this.records.values()) if (r.usedAtMs === null && now < r.expiresAtMs) n++;
    return n;
  }

  /** A new cluster pairing key with a fresh one-time credential. The key is a secret: log `redact(key)`. */
  issueCluster(params: ClusterIssueParams): { clusterPairingKey: string; username: string; expiresAtMs: number } {
    const rpcConnectionID = params.rpcConnectionID ?? this.random.bytes(4).readUInt32BE(0) >>> 1;
    const username = `__VRG_pair_${this.base62(16)}`;
    const password = this.random.bytes(24).toString('base64url');
    const fields: ClusterPairingKeyFields = {
      ...(params.certFingerprint === undefined ? {} : { certFingerprint: params.certFingerprint }),
      clusterPairID: params.clusterPairID,
      clusterPairUUID: params.clusterPairUUID,
      clusterUniqueID: params.clusterUniqueID,
      mvip: params.mvip,
      name: params.name,
      password,
      rpcConnectionID,
      username,
    };
    const clusterPairingKey = encodeClusterPairingKey(fields); // validates the params
    const { password: _omit, ...grant } = fields;
    const rec = this.add('cluster', username, clusterSecretHash(username, password), grant);
    return { clusterPairingKey, username, expiresAtMs: rec.expiresAtMs };
  }

  /** A new volume pairing key; its random volumePairUUID is the one-time token. */
  issueVolume(params: VolumeIssueParams): { volumePairingKey: string; volumePairUUID: string; expiresAtMs: number } {
    const volumePairUUID = this.uuidV4();
    const volumePairingKey = encodeVolumePairingKey({ ...pickVolume(params), volumePairUUID });
    const lookup = sha256Hex('vrg-volume-pair-v1', volumePairUUID);
    const rec = this.add('volume', lookup, lookup, { ...pickVolume(params) });
    return { volumePairingKey, volumePairUUID, expiresAtMs: rec.expiresAtMs };
  }

  /**
   * Consume a cluster credential. `expect` (the rest of the presented key) must match what was issued.
   * Throws PAIRING_KEY_INVALID (unknown user, wrong password, mismatch), _USED, or _EXPIRED.
   */
  redeem(username: string, password: string, expect?: Partial<ClusterPairingGrant>): ClusterPairingGrant {
    return this.clusterCredential(username, password, expect, true);
  }

  /** As `redeem`, but leaves the credential unused: lets a caller refuse for other reasons without burning it. */
  checkCluster(username: string, password: string, expect?: Partial<ClusterPairingGrant>): ClusterPairingGrant {
    return this.clusterCredential(username, password, expect, false);
  }

  /** As `redeemVolumeKey`, but leaves the key unused. */
  checkVolumeKey(hex: string): VolumePairingKeyFields {
    return this.volumeCredential(hex, false);
  }

  private clusterCredential(username: string, password: string, expect: Partial<ClusterPairingGrant> | undefined, use: boolean): ClusterPairingGrant {
    this.prune(this.clock.nowMs());
    const rec = this.records.get(`cluster:${String(username)}`);
    const presented = Buffer.from(clusterSecretHash(String(username), String(password)), 'hex');
    const stored = Buffer.from(rec?.secretHash ?? '00'.repeat(32), 'hex');
    const match = stored.length === presented.length && timingSafeEqual(stored, presented);
    if (rec === undefined || !match) throw invalid('cluster pairing key', { reason: 'no matching credential' });
    return this.consume(rec, expect ?? {}, 'cluster pairing key', use) as unknown as ClusterPairingGrant;
  }

  /** Decode a presented cluster key and redeem it; every field must match the issued one. */
  redeemClusterKey(hex: string): ClusterPairingGrant {
    const { username, password, ...rest } = decodeClusterPairingKey(hex);
    return this.redeem(username, password, rest);
  }

  /** Consume a volume pairing key (decoded and checked against what was issued). */
  redeemVolumeKey(hex: string): VolumePairingKeyFields {
    return this.volumeCredential(hex, true);
  }

  private volumeCredential(hex: string, use: boolean): VolumePairingKeyFields {
    const { volumePairUUID, ...rest } = decodeVolumePairingKey(hex);
    this.prune(this.clock.nowMs());
    const rec = this.records.get(`volume:${sha256Hex('vrg-volume-pair-v1', volumePairUUID)}`);
    if (rec === undefined) throw invalid('volume pairing key', { reason: 'no matching credential' });
    const grant = this.consume(rec, rest, 'volume pairing key', use) as unknown as VolumeIssueParams;
    return { ...grant, volumePairUUID };
  }

  private consume(rec: PairingCredentialRecord, expect: Record<string, unknown>, what: string, use = true): Record<string, unknown> {
    const now = this.clock.nowMs();
    if (rec.usedAtMs !== null) throw vrgError(ErrorCode.PAIRING_KEY_USED, `${what} already used`);
    if (now >= rec.expiresAtMs) {
      throw vrgError(ErrorCode.PAIRING_KEY_EXPIRED, `${what} expired`, { expiresAtMs: rec.expiresAtMs });
    }
    for (const [field, value] of Object.entries(expect)) {
      if (value !== undefined && rec.grant[field] !== value) throw invalid(what, { field, reason: 'mismatch' });
    }
    if (!use) return { ...rec.grant };
    rec.usedAtMs = now;
    this.prune(now);
    this.save();
    return { ...rec.grant };
  }

  private add(kind: 'cluster' | 'volume', lookup: string, secretHash: string, grant: Record<string, unknown>): PairingCredentialRecord {
    const now = this.clock.nowMs();
    this.prune(now);
    if (this.outstanding >= this.maxOutstanding) {
      throw vrgError(ErrorCode.PAIRING_KEY_LIMIT, 'too many outstanding pairing keys', { max: this.maxOutstanding });
    }
    const id = `${kind}:${lookup}`;
    if (this.records.has(id)) throw vrgError(ErrorCode.PAIRING_KEY_LIMIT, 'pairing credential collision; random source repeats');
    const rec: PairingCredentialRecord = { kind, lookup, secretHash, issuedAtMs: now, expiresAtMs: now + this.ttlMs, usedAtMs: null, grant };
    this.records.set(id, rec);
    try {
      this.save();
    } catch (err) {
      this.records.delete(id);
      throw err;
    }
    return rec;
  }

  /** Drop tombstones `retainMs` past expiry, then the oldest tombstones beyond 4 × maxOutstanding. */
  private prune(now: number): void {
    for (const [id, r] of this.records) if (now >= r.expiresAtMs + this.retainMs) this.records.delete(id);
    const tombstones = [...this.records].filter(([, r]) => r.usedAtMs !== null || now >= r.expiresAtMs);
    tombstones.sort((a, b) => a[1].issuedAtMs - b[1].issuedAtMs);
    const excess = tombstones.length - 4 * this.maxOutstanding;
    for (let i = 0; i < excess; i++) this.records.delete(tombstones[i]![0]);
  }

  private save(): void {
    this.persist?.([...this.records.values()].map((r) => ({ ...r, grant: { ...r.grant } })));
  }

  private base62(n: number): string {
    let out = '';
    while (out.length < n) {
      for (const b of this.random.bytes(n)) if (b < 248 && out.length < n) out += BASE62[b % 62];
    }
    return out;
  }

  private uuidV4(): string {
    const b = this.random.bytes(16);
    b[6] = (b[6]! & 0x0f) | 0x40;
    b[8] = (b[8]! & 0x3f) | 0x80;
    const h = b.toString('hex');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
}

function pickVolume(p: VolumeIssueParams): VolumeIssueParams {
  return { mvip: p.mvip, volumeID: p.volumeID, volumeName: p.volumeName };
}
