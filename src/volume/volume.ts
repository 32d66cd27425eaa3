import { ErrorCode, vrgError } from '../core/errors.js';
// A block volume: the source volume on production, a target volume on DR.
// Issue 3 adds block devices and nbd:// volumes behind the same interface.

export interface Volume {
  readonly url: string;
  readonly sizeBytes: number;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Optional: the buffers written back to back from `offset` in one call (one pwritev for a file). */
  writev?(offset: number, datas: readonly Uint8Array[]): Promise<void>;
  /** The range reads back as zeros afterwards; with `noHole` it also stays allocated. */
  writeZeroes(offset: number, length: number, opts?: WriteZeroesOptions): Promise<void>;
  /** A hint that the range is unused; whether it then reads as zeros depends on the volume (see each class). */
  trim(offset: number, length: number): Promise<void>;
  /**
   * Optional: the parts of [offset, offset+length) that may hold data, ascending [start, end) pairs; the rest
   * reads as zeros (initial sync skips it). Volumes that cannot tell omit it or return the whole range.
   */
  dataRanges?(offset: number, length: number): Promise<DataRange[]>;
  /** Everything written before the call is durable when it resolves. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface WriteZeroesOptions {
  /** Keep the range allocated (no hole / no deallocation), e.g. for thick-provisioned replicas. */
  noHole?: boolean;
}

/** [start, end) in bytes. */
export type DataRange = [number, number];

export interface VolumeWrite {
  offset: number;
  data: Uint8Array;
}

/** Refuses a range outside the volume (nothing is sent or written): VRG_VOLUME_OUT_OF_RANGE. */
export function checkVolumeRange(volume: { url: string; sizeBytes: number }, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > volume.sizeBytes) {
    throw vrgError(ErrorCode.VOLUME_OUT_OF_RANGE,
      `range ${offset}+${length} outside volume ${volume.url} of ${volume.sizeBytes} bytes`, { offset, length });
  }
}
