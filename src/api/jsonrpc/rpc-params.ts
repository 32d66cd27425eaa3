import { RpcErrorName, RpcError } from './rpc-errors.js';

// Parameter checks for the Element methods: a missing required parameter is xMissingParameter, a present
// one of the wrong type or range xInvalidParameter. No coercion: "12" is not 12.

export type Params = Record<string, unknown>;

function missing(name: string): RpcError {
  return new RpcError(RpcErrorName.MISSING_PARAMETER, `missing parameter ${name}`);
}

export function invalidParam(name: string, why: string): RpcError {
  return new RpcError(RpcErrorName.INVALID_PARAMETER, `parameter ${name} ${why}`);
}

/** `params` must be an object (or absent: no parameters). */
export function paramsOf(raw: unknown): Params {
  if (raw === undefined || raw === null) return {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw invalidParam('params', 'must be an object');
  return raw as Params;
}

export function reqInt(p: Params, name: string, min = 1): number {
  const v = p[name];
  if (v === undefined || v === null) throw missing(name);
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw invalidParam(name, 'must be an integer');
  if (v < min) throw invalidParam(name, `must be at least ${min}`);
  return v;
}

export function reqString(p: Params, name: string, maxChars = 4096): string {
  const v = p[name];
  if (v === undefined || v === null) throw missing(name);
  if (typeof v !== 'string' || v.length === 0 || v.length > maxChars) {
    throw invalidParam(name, `must be a string of 1 to ${maxChars} characters`);
  }
  return v;
}

export function optBool(p: Params, name: string): boolean | undefined {
  const v = p[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw invalidParam(name, 'must be a boolean');
  return v;
}

export type ElementMode = 'Async' | 'Sync' | 'SnapshotsOnly';
export type EngineMode = 'async' | 'sync' | 'snapshots';

const MODES: Record<string, EngineMode> = { async: 'async', sync: 'sync', snapshotsonly: 'snapshots' };

/** Element's mode names, case-insensitive (the ModifyVolumePair example sends "sync"). */
export function optMode(p: Params, name = 'mode'): EngineMode | undefined {
  const v = p[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalidParam(name, 'must be a string');
  const m = MODES[v.toLowerCase()];
  if (m === undefined) throw invalidParam(name, 'must be Async, Sync or SnapshotsOnly');
  return m;
}

export function elementMode(m: EngineMode): ElementMode {
  return m === 'async' ? 'Async' : m === 'sync' ? 'Sync' : 'SnapshotsOnly';
}
