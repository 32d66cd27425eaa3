import { ErrorCode, vrgError, type VrgError } from '../../core/errors.js';
import type { ApiLanguage } from '../auth/error-codes.js';

/** An error the REST layer raises on purpose: `num` is the document's errorCode (src/api/auth/error-codes.ts). */
export function restError(num: string, message: string, details?: Record<string, unknown>): VrgError {
  return vrgError(ErrorCode.INVALID_ARGUMENT, message, { ...details, errorCode: num });
}

/** errorDes language: zh_CN when Accept-Language asks for Chinese (zh_CN, zh-CN, zh), else en_US. */
export function languageOf(header: string | string[] | undefined): ApiLanguage {
  const v = (Array.isArray(header) ? header.join(',') : header ?? '').toLowerCase();
  const zh = v.search(/\bzh\b|zh[_-]/);
  const en = v.search(/\ben\b|en[_-]/);
  return zh >= 0 && (en < 0 || zh < en) ? 'zh_CN' : 'en_US';
}

export const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** Dotted-quad IPv4 without leading zeros (the document's addresses are IPv4). */
export function isIpv4(s: unknown): s is string {
  if (typeof s !== 'string') return false;
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255);
}

export function ipv4Number(s: string): number {
  return s.split('.').reduce((acc, p) => acc * 256 + Number(p), 0);
}

/** A contiguous netmask (255.255.255.0 ...), not 0.0.0.0. */
export function isNetmask(s: unknown): s is string {
  if (!isIpv4(s)) return false;
  const n = ipv4Number(s);
  if (n === 0) return false;
  const inv = (~n) >>> 0;
  return (inv & (inv + 1)) === 0;
}

export function isPort(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65_535;
}
