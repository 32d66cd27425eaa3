import { ErrorCode, vrgError } from '../../core/errors.js';

// The toxics of the fault proxy: Toxiproxy's catalogue (same names, attributes, units and defaults, so its
// clients and scripts drive this proxy unchanged) plus VRG's own `corrupt`, which flips bits in the bytes
// it passes (a link fault TCP's checksum would miss: an offload bug, a bad NIC, a broken middlebox).
//
// A toxic acts on one direction of every connection through its proxy: `upstream` is client → server,
// `downstream` server → client (Toxiproxy's default). `toxicity` is the share of connections it affects,
// drawn per connection when the connection opens or the toxic is added.

export type Stream = 'upstream' | 'downstream';

export const toxicTypes = ['latency', 'bandwidth', 'slow_close', 'timeout', 'reset_peer', 'slicer', 'limit_data', 'down', 'corrupt'] as const;
export type ToxicType = (typeof toxicTypes)[number];

/** Attribute names, defaults and the range each accepts, per toxic type (all integers but corrupt's probability). */
const attributeSpecs: Record<ToxicType, Record<string, { default: number; min: number; max: number; integer: boolean }>> = {
  latency: { latency: int(0), jitter: int(0) }, // ms; each chunk waits latency ± jitter after it arrived
  bandwidth: { rate: int(0) }, // KB/s (1000 bytes); 0 = no cap
  slow_close: { delay: int(0) }, // ms between the sender's FIN and its forwarding
  timeout: { timeout: int(0) }, // ms until the connection closes; data meanwhile dropped; 0 = never closes
  reset_peer: { timeout: int(0) }, // ms after the first data until a TCP RST
  slicer: { average_size: int(0), size_variation: int(0), delay: int(0) }, // bytes, bytes, µs between slices
  limit_data: { bytes: int(0) }, // bytes passed before the connection closes
  down: {}, // while present the proxy refuses connections and cuts the open ones (as enabled=false)
  corrupt: { probability: { default: 0.01, min: 0, max: 1, integer: false }, bits: int(1, 1, 64) }, // per chunk
};

function int(def: number, min = 0, max = Number.MAX_SAFE_INTEGER): { default: number; min: number; max: number; integer: boolean } {
  return { default: def, min, max, integer: true };
}

export interface ToxicJson {
  name: string;
  type: ToxicType;
  stream: Stream;
  toxicity: number;
  attributes: Record<string, number>;
}

function invalid(message: string, details?: Record<string, unknown>): Error {
  return vrgError(ErrorCode.INVALID_ARGUMENT, message, details);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A toxic from an API body (POST /proxies/{proxy}/toxics), or `base` updated by one (POST .../toxics/{name}).
 * Unknown attribute names and out-of-range values are refused: a typo must not silently mean "no fault".
 */
export function parseToxic(body: unknown, base?: ToxicJson): ToxicJson {
  if (!isObject(body)) throw invalid('a toxic is a JSON object');
  const type = body.type ?? base?.type;
  if (typeof type !== 'string' || !(toxicTypes as readonly string[]).includes(type)) {
    throw invalid(`invalid toxic type ${JSON.stringify(type)}: one of ${toxicTypes.join(', ')}`);
  }
  if (base && type !== base.type) throw invalid(`a toxic's type cannot change (${base.type} → ${type})`);
  const stream = body.stream ?? base?.stream ?? 'downstream';
  if (stream !== 'upstream' && stream !== 'downstream') throw invalid('stream was invalid, can be either upstream or downstream');
  const name = body.name ?? base?.name ?? `${type}_${stream}`;
  if (typeof name !== 'string' || !/^[A-Za-z0-9._-]{1,128}$/.test(name)) throw invalid('a toxic name is 1-128 letters, digits, ".", "_" or "-"');
  const toxicity = body.toxicity ?? base?.toxicity ?? 1;
  if (typeof toxicity !== 'number' || !(toxicity >= 0 && toxicity <= 1)) throw invalid('toxicity is a number in [0, 1]');
  const given = body.attributes ?? {};
  if (!isObject(given)) throw invalid('attributes is a JSON object');
  const spec = attributeSpecs[type as ToxicType];
  const attributes: Record<string, number> = {};
  for (const [key, s] of Object.entries(spec)) attributes[key] = base?.attributes[key] ?? s.default;
  for (const [key, value] of Object.entries(given)) {
    const s = spec[key];
    if (!s) throw invalid(`${type} has no attribute "${key}" (it has: ${Object.keys(spec).join(', ') || 'none'})`);
    if (typeof value !== 'number' || !Number.isFinite(value) || (s.integer && !Number.isInteger(value)) || value < s.min || value > s.max) {
      throw invalid(`${type}.${key} must be ${s.integer ? 'an integer' : 'a number'} in [${s.min}, ${s.max}], not ${JSON.stringify(value)}`);
    }
    attributes[key] = value;
  }
  return { name, type: type as ToxicType, stream, toxicity, attributes };
}
