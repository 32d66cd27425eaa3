import { join } from 'node:path';
import { assert } from '../core/assert.js';
import type { FileHandleLike, Files } from '../core/files.js';
import { HEADER_BYTES, RECORD_MAGIC, RECORD_MAGIC_V1, crcMatches, decodeHeader, type RecordHeader } from './record-codec.js';

const NAME_RE = /^seg-(\d{16})\.vrgj$/;

const SPARE_RE = /^spare-(\d{16})\.vrgj$/;

/**
 * A trimmed segment kept for reuse (see Journal's spares): its name carries the first seq it held. Its records are
 * stale: every seq in it is below any the journal will write again.
 */
export function spareName(oldFirstSeq: number): string {
  return `spare-${String(oldFirstSeq).padStart(16, '0')}.vrgj`;
}

export function isSpareName(name: string): boolean {
  return SPARE_RE.test(name);
}

export function segmentName(firstSeq: number): string {
  return `seg-${String(firstSeq).padStart(16, '0')}.vrgj`;
}

/** The first seq a segment file name carries, or null for a file that is not a segment. */
export function parseSegmentName(name: string): number | null {
  const m = NAME_RE.exec(name);
  if (!m) return null;
  const seq = Number(m[1]);
  return Number.isSafeInteger(seq) && seq >= 1 ? seq : null;
}

/** Growable array of u32 file offsets: entry i is where record firstSeq+i starts (4 bytes per record). */
export class OffsetIndex {
  private arr = new Uint32Array(256);
  length = 0;

  push(offset: number): void {
    assert(offset >= 0 && offset < 0x1_0000_0000, 'segment offset fits u32');
    if (this.length === this.arr.length) {
      const next = new Uint32Array(this.arr.length * 2);
      next.set(this.arr);
      this.arr = next;
    }
    this.arr[this.length++] = offset;
  }

  get(i: number): number {
    assert(i >= 0 && i < this.length, 'offset index in range');
    return this.arr[i]!;
  }
}

export interface Segment {
  firstSeq: number;
  path: string;
  /** Bytes of records written to the file (the file's length). */
  size: number;
  offsets: OffsetIndex;
  /** Lazily opened handle (read-only for old segments, read-write for the active one). */
  fh: Promise<FileHandleLike> | null;
  readers: number;
  dropped: boolean;
  /** The file's length when it became this segment (a reused spare's; 0 for a new file): stale bytes may lie past `size`. */
  fileBytes: number;
}

export function newSegment(dir: string, firstSeq: number): Segment {
  return { firstSeq, path: join(dir, segmentName(firstSeq)), size: 0, offsets: new OffsetIndex(), fh: null, readers: 0, dropped: false, fileBytes: 0 };
}

/** Seq after the segment's last record. */
export function segmentEnd(seg: Segment): number {
  return seg.firstSeq + seg.offsets.length;
}

/** Byte length of record i of the segment (header + payload). */
export function recordBytesAt(seg: Segment, i: number): number {
  const end = i + 1 < seg.offsets.length ? seg.offsets.get(i + 1) : seg.size;
  return end - seg.offsets.get(i);
}

export async function fsyncDir(files: Files, dir: string): Promise<void> {
  const fh = await files.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const SCAN_CHUNK_BYTES = 8 * 1024 * 1024;

/** Reads a file through a window so a scan issues a few large reads, not one per record. */
export class WindowReader {
  private window = Buffer.alloc(0);
  private windowStart = 0;

  constructor(private readonly fh: FileHandleLike, readonly fileSize: number) {}

  /** Bytes [pos, pos+n) with the window offset, or null when the file is shorter. */
  async need(pos: number, n: number): Promise<{ buf: Buffer; at: number } | null> {
    if (pos + n > this.fileSize) return null;
    if (pos < this.windowStart || pos + n > this.windowStart + this.window.length) {
      const len = Math.min(Math.max(n, SCAN_CHUNK_BYTES), this.fileSize - pos);
      const buf = Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await this.fh.read(buf, got, len - got, pos + got);
        if (bytesRead === 0) return null;
        got += bytesRead;
      }
      this.window = buf;
      this.windowStart = pos;
    }
    return { buf: this.window, at: pos - this.windowStart };
  }
}

export type ProbeResult = { ok: true; header: RecordHeader } | { ok: false; reason: string };

/** Checks the record at `pos`: complete header, sane fields, expected seq (when given), complete payload, CRC. */
export async function probeRecord(r: WindowReader, pos: number, expectedSeq: number | null): Promise<ProbeResult> {
  const head = await r.need(pos, HEADER_BYTES);
  if (!head) return { ok: false, reason: 'short header' };
  const h = decodeHeader(head.buf, head.at);
  if (typeof h === 'string') return { ok: false, reason: h };
  if (expectedSeq !== null && h.seq !== expectedSeq) return { ok: false, reason: `seq ${h.seq}, expected ${expectedSeq}` };
  const whole = await r.need(pos, HEADER_BYTES + h.payloadLength);
  if (!whole) return { ok: false, reason: 'short payload' };
  if (!crcMatches(whole.buf, whole.at, h)) return { ok: false, reason: 'bad crc' };
  return { ok: true, header: h };
}

export interface ScanResult {
  /** Bytes of intact, consecutive records from the start of the file. */
  goodBytes: number;
  fileSize: number;
  /** Why the scan stopped before the end of the file (null when the whole file is intact). */
  badReason: string | null;
}

/** Verifies every record of a segment from its start, filling seg.offsets; stops at the first bad record. */
export async function scanSegment(fh: FileHandleLike, seg: Segment): Promise<ScanResult> {
  const { size: fileSize } = await fh.stat();
  const r = new WindowReader(fh, fileSize);
  let pos = 0;
  while (pos < fileSize) {
    const p = await probeRecord(r, pos, segmentEnd(seg));
    if (!p.ok) return { goodBytes: pos, fileSize, badReason: p.reason };
    seg.offsets.push(pos);
    pos += HEADER_BYTES + p.header.payloadLength;
  }
  return { goodBytes: pos, fileSize, badReason: null };
}

/** The first three bytes of every record format's magic ("VRG"; the fourth byte is the version's). */
const MAGIC_PREFIX = Buffer.from([0x56, 0x52, 0x47]);
assert((RECORD_MAGIC & 0xffffff) === MAGIC_PREFIX.readUIntLE(0, 3) && (RECORD_MAGIC_V1 & 0xffffff) === MAGIC_PREFIX.readUIntLE(0, 3),
  'record magics share the scanned prefix');

/**
 * After a bad record at `badAt` in the last segment: is there an intact record (seq ≥ minSeq) starting at or beyond
 * `from`? Such a record was written by a later group commit, so the bad record had been made durable: corruption.
 */
export async function findIntactRecordFrom(fh: FileHandleLike, fileSize: number, from: number, minSeq: number): Promise<number | null> {
  if (from >= fileSize) return null;
  const r = new WindowReader(fh, fileSize);
  const rest = Buffer.allocUnsafe(fileSize - from);
  const { bytesRead } = await fh.read(rest, 0, rest.length, from);
  let i = rest.subarray(0, bytesRead).indexOf(MAGIC_PREFIX);
  while (i >= 0) {
    const p = await probeRecord(r, from + i, null);
    if (p.ok && p.header.seq >= minSeq) return from + i;
    i = rest.indexOf(MAGIC_PREFIX, i + 1);
    if (i >= bytesRead) break;
  }
  return null;
}
