// Secrets never logged (issue 17 item 5). Two nets: fields named as secrets are censored wherever they sit (a
// log record, an error's details), and the values this process learned as secrets (link secrets, passwords and
// their X-Auth-Key, session tokens, pairing keys) are cut out of any text (a log line, an error message), in
// each encoding the code uses for them. An API answer that hands out a key on purpose (StartClusterPairing)
// is not text that passes through here.

export const REDACTED = '[redacted]';

/** Field names whose values are secrets, as the code and HTTP headers spell them. */
const SECRET_FIELD_NAMES = ['secret', 'secretHex', 'linkSecret', 'linkSecretHex', 'password', 'adminPassword', 'oldPassword',
  'newPassword', 'passwd', 'token', 'authToken', 'authKey', 'oldKey', 'newKey', 'authorization', 'psk', 'pskHex', 'pairingKey',
  'clusterPairingKey', 'volumePairingKey', 'privateKey', 'x-auth-token', 'x-auth-key'];

const normalized = (name: string): string => name.toLowerCase().replace(/[-_]/g, '');
/** The same names compared lowercase, without - and _, wherever they appear. */
const SECRET_FIELDS = new Set(SECRET_FIELD_NAMES.map(normalized));

export function isSecretField(name: string): boolean {
  return SECRET_FIELDS.has(normalized(name));
}

/** The field names pino's `redact` censors, at the top and two levels down (its paths take no deep wildcard). */
export function secretFieldPaths(): string[] {
  return SECRET_FIELD_NAMES.flatMap((n) => {
    const key = n.includes('-') ? `["${n}"]` : n;
    const at = (prefix: string): string => (key.startsWith('[') ? `${prefix}${key}` : `${prefix}.${key}`);
    return [n.includes('-') ? n : key, at('*'), at('*.*')];
  });
}

/** A copy of `value` with every secret-named field censored, at any depth (cycles cut). */
export function redactFields<T>(value: T, seen = new WeakSet<object>()): T {
  if (value === null || typeof value !== 'object' || Buffer.isBuffer(value) || ArrayBuffer.isView(value)) return value;
  if (seen.has(value)) return '[cycle]' as T;
  seen.add(value);
  if (Array.isArray(value)) return value.map((v) => redactFields(v, seen)) as T;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = isSecretField(k) ? REDACTED : redactFields(v, seen);
  return out as T;
}

// Known values, most recent last; bounded (a token per login): the oldest go first.
const MAX_KNOWN = 512;
const MIN_CHARS = 8;
const known = new Map<string, true>();

function remember(text: string): void {
  if (text.length < MIN_CHARS) return;
  known.delete(text);
  known.set(text, true);
  if (known.size > MAX_KNOWN) known.delete(known.keys().next().value!);
}

/**
 * Learns a secret: a string as itself (and its UTF-8 base64), bytes as hex (both cases) and base64 (both
 * alphabets). Values shorter than 8 characters are not learned (cutting them would garble every line).
 */
export function noteSecret(value: string | Uint8Array | null | undefined): void {
  if (value === null || value === undefined) return;
  if (typeof value === 'string') {
    if (value.length < MIN_CHARS) return;
    remember(value);
    remember(JSON.stringify(value).slice(1, -1)); // as it stands in a JSON log line (quotes, backslashes escaped)
    remember(Buffer.from(value, 'utf8').toString('base64').replace(/=+$/, ''));
    return;
  }
  const b = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  const hex = b.toString('hex');
  for (const s of [hex, hex.toUpperCase(), b.toString('base64').replace(/=+$/, ''), b.toString('base64url')]) remember(s);
}

/** `text` with every learned secret cut out. */
export function scrubSecrets(text: string): string {
  let out = text;
  for (const s of known.keys()) if (out.includes(s)) out = out.split(s).join(REDACTED);
  return out;
}

/** Test-only: forget what was learned. */
export function forgetSecretsForTest(): void {
  known.clear();
}
