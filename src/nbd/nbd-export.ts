import { ErrorCode, isVrgError } from '../core/errors.js';
import { NbdErrno } from '../protocol/nbd.js';

/** What an NBD export serves. Ranges reaching the server's backend are already checked against sizeBytes. */
export interface NbdExport {
  name: string;
  description?: string;
  sizeBytes: number;
  readOnly: boolean;
  /**
   * Advertise NBD_FLAG_CAN_MULTI_CONN: flush() and FUA cover writes completed on every connection, not just
   * the caller's. Default true (every backend in VRG flushes the whole volume).
   */
  canMultiConn?: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  /** Resolves when the data is durable by the backend's rule; with `fua` it must be durable. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, opts: { fua: boolean; noHole: boolean }): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /** Everything completed before the call is durable when it resolves. */
  flush(): Promise<void>;
}

export type NbdExportSource = () => NbdExport[] | Map<string, NbdExport>;

export function findExport(source: NbdExportSource, name: string): NbdExport | null {
  const all = source();
  if (all instanceof Map) return all.get(name) ?? null;
  return all.find((e) => e.name === name) ?? null;
}

export function listExports(source: NbdExportSource): NbdExport[] {
  const all = source();
  return all instanceof Map ? [...all.values()] : all;
}

/** The NBD error a backend failure is reported as. */
export function nbdErrnoFor(err: unknown): number {
  if (isVrgError(err, ErrorCode.VOLUME_OUT_OF_RANGE)) return NbdErrno.EINVAL;
  if (isVrgError(err, ErrorCode.JOURNAL_FULL)) return NbdErrno.ENOSPC;
  if (isVrgError(err, ErrorCode.CLOSED)) return NbdErrno.ESHUTDOWN;
  // A VM being moved (planned failover) or no longer served here as its source.
  if (isVrgError(err, ErrorCode.VM_ROLE_CONFLICT)) return NbdErrno.EPERM;
  if (isVrgError(err, ErrorCode.VOLUME_NOT_FOUND)) return NbdErrno.ESHUTDOWN;
  const codes = [
    (err as { code?: unknown } | null)?.code,
    (err as { details?: { code?: unknown } } | null)?.details?.code,
    ((err as { cause?: unknown } | null)?.cause as { code?: unknown } | undefined)?.code,
  ];
  if (codes.includes('ENOSPC') || codes.includes('EDQUOT')) return NbdErrno.ENOSPC;
  return NbdErrno.EIO;
}
