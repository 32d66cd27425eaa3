import { dirname, resolve } from 'node:path';
import type { Clock } from '../../core/clock.js';
import type { FileHandleLike, Files, OpenFlags } from '../../core/files.js';

// The simulator's local file system (the engine's journals, DR logs, stages, bitmaps and state files), in
// memory, with a power cut as LazyFS models it: every write and truncate since the file's last fsync or
// fdatasync is lost, except that a seeded cut may keep a prefix of them with the last one torn at a 512-byte
// boundary (a sector that reached the platter mid-write). Names (create, unlink, rename, mkdir) are durable at
// once: the engine fsyncs its directories after each such change anyway, and a cut that loses a name would
// only test the file system.
//
// Each gateway instance works through a view (view()); a power cut kills every view, so the instance that
// "lost power" can do nothing more (every call fails with EIO) while its successor opens a fresh view.

interface Op {
  /** A write at pos, or a truncate to pos when data is null. */
  pos: number;
  data: Buffer | null;
}

/** A growable byte array: appends double the capacity, so a log's appends cost what they write. */
class Bytes {
  buf = Buffer.alloc(0);
  size = 0;

  apply(op: Op): void {
    if (op.data === null) {
      if (op.pos < this.size) this.buf.fill(0, op.pos, this.size);
      else this.reserve(op.pos);
      this.size = op.pos;
      return;
    }
    const end = op.pos + op.data.length;
    this.reserve(end);
    if (op.pos > this.size) this.buf.fill(0, this.size, op.pos);
    op.data.copy(this.buf, op.pos);
    this.size = Math.max(this.size, end);
  }

  private reserve(size: number): void {
    if (size <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(size, this.buf.length * 2, 4096));
    this.buf.copy(next, 0, 0, this.size);
    this.buf = next;
  }

  clone(): Bytes {
    const c = new Bytes();
    c.buf = Buffer.from(this.buf.subarray(0, this.size));
    c.size = this.size;
    return c;
  }

  get bytes(): Buffer {
    return this.buf.subarray(0, this.size);
  }
}

class SimFile {
  readonly current = new Bytes();
  durable = new Bytes();
  pending: Op[] = [];

  change(op: Op): void {
    this.pending.push(op);
    this.current.apply(op);
  }

  /** fsync / fdatasync: what was written survives a cut. */
  sync(): void {
    for (const op of this.pending) this.durable.apply(op);
    this.pending = [];
  }

  /** A power cut: keeps the first `keep` pending ops, the last of them torn to `tornBytes` when given. */
  cut(keep: number, tornBytes: number | null): void {
    this.pending.slice(0, keep).forEach((op, i) => {
      const torn = i === keep - 1 && tornBytes !== null && op.data !== null;
      this.durable.apply(torn ? { pos: op.pos, data: op.data!.subarray(0, tornBytes) } : op);
    });
    this.pending = [];
    const image = this.durable.clone();
    this.current.buf = image.buf;
    this.current.size = image.size;
  }
}

function fsError(code: string, op: string, path: string): Error {
  return Object.assign(new Error(`${code}: ${op} '${path}' (simulated)`), { code, syscall: op, path });
}

export interface PowerCutReport {
  files: number;
  /** Pending writes and truncates lost (or torn). */
  lostOps: number;
  torn: number;
}

/** Virtual time a call takes (the simulator's SimClock): a page-cache write, a flush to the platter. */
export interface SimFilesTiming {
  clock: Clock;
  ioMs: number;
  syncMs: number;
}

export class SimFiles {
  private readonly files = new Map<string, SimFile>();
  private readonly dirs = new Set<string>(['/']);
  private epoch = 0;

  /** Without `timing` a call completes on the next event-loop turn. */
  constructor(private readonly timing: SimFilesTiming | null = null) {}

  /** An I/O turn: a real file call completes later, never in the same microtask run. */
  private ioTurn(sync: boolean): Promise<void> {
    const t = this.timing;
    return new Promise((resolve) => (t ? t.clock.setTimer(sync ? t.syncMs : t.ioMs, resolve) : setImmediate(resolve)));
  }

  /** A Files for one gateway instance; dead after the next power cut. */
  view(): Files {
    const epoch = this.epoch;
    const live = (op: string, path: string): void => {
      if (this.epoch !== epoch) throw fsError('EIO', op, path);
    };
    return {
      open: async (path, flags) => {
        live('open', path);
        return this.open(resolve(path), flags, () => live('io', path), (sync) => this.ioTurn(sync));
      },
      mkdir: async (path) => {
        live('mkdir', path);
        for (let d = resolve(path); !this.dirs.has(d); d = dirname(d)) this.dirs.add(d);
      },
      readdir: async (path) => {
        live('readdir', path);
        return this.readdir(resolve(path));
      },
      readFile: async (path) => {
        live('readFile', path);
        const f = this.files.get(resolve(path));
        if (!f) throw fsError('ENOENT', 'open', path);
        return Buffer.from(f.current.bytes);
      },
      unlink: async (path) => {
        live('unlink', path);
        if (!this.files.delete(resolve(path))) throw fsError('ENOENT', 'unlink', path);
      },
      rename: async (from, to) => {
        live('rename', from);
        const f = this.files.get(resolve(from));
        if (!f) throw fsError('ENOENT', 'rename', from);
        this.files.delete(resolve(from));
        this.files.set(resolve(to), f);
      },
      rm: async (path) => {
        live('rm', path);
        const p = resolve(path);
        for (const k of [...this.files.keys()]) if (k === p || k.startsWith(`${p}/`)) this.files.delete(k);
        for (const d of [...this.dirs]) if (d === p || d.startsWith(`${p}/`)) this.dirs.delete(d);
      },
      stat: async (path) => {
        live('stat', path);
        const p = resolve(path);
        const f = this.files.get(p);
        if (f) return { size: f.current.size, isDirectory: () => false };
        if (this.dirs.has(p)) return { size: 0, isDirectory: () => true };
        throw fsError('ENOENT', 'stat', path);
      },
    };
  }

  /**
   * The power goes: every view dies, and each file keeps what was synced; with `tear` (a seeded choice per
   * file) a prefix of its unsynced ops survives, the last one torn.
   */
  powerCut(tear: (pendingOps: number) => { keep: number; tornBytes: number | null } | null = () => null): PowerCutReport {
    this.epoch++;
    const report: PowerCutReport = { files: 0, lostOps: 0, torn: 0 };
    for (const f of this.files.values()) {
      if (f.pending.length === 0) continue;
      const t = tear(f.pending.length);
      report.files++;
      report.lostOps += f.pending.length - (t?.keep ?? 0);
      if (t?.tornBytes !== null && t?.tornBytes !== undefined) report.torn++;
      f.cut(t?.keep ?? 0, t?.tornBytes ?? null);
    }
    return report;
  }

  private readdir(dir: string): string[] {
    if (!this.dirs.has(dir)) throw fsError('ENOENT', 'scandir', dir);
    const names = new Set<string>();
    for (const k of [...this.files.keys(), ...this.dirs]) if (k !== dir && dirname(k) === dir) names.add(k.slice(dir.length + 1));
    return [...names].sort();
  }

  private open(path: string, flags: OpenFlags, live: () => void, ioTurn: (sync: boolean) => Promise<void>): FileHandleLike {
    if (this.dirs.has(path)) return dirHandle(live); // open(dir, 'r') + sync(): a directory fsync
    let f = this.files.get(path);
    if (f && flags.startsWith('wx')) throw fsError('EEXIST', 'open', path);
    if (!f && (flags === 'r' || flags === 'r+')) throw fsError('ENOENT', 'open', path);
    if (!this.dirs.has(dirname(path))) throw fsError('ENOENT', 'open', path);
    if (!f) this.files.set(path, f = new SimFile());
    if (flags === 'w') f.change({ pos: 0, data: null });
    return fileHandle(f, flags === 'r', path, live, ioTurn);
  }
}

function dirHandle(live: () => void): FileHandleLike {
  const none = async (): Promise<never> => {
    live();
    throw fsError('EISDIR', 'read', 'a directory');
  };
  return {
    read: none, write: none, writev: none, truncate: none,
    datasync: async () => live(), sync: async () => live(),
    stat: async () => ({ size: 0 }), close: async () => undefined,
  };
}

function fileHandle(f: SimFile, readOnly: boolean, path: string, live: () => void, ioTurn: (sync: boolean) => Promise<void>): FileHandleLike {
  let closed = false;
  // Checked before and after the I/O turn: a call the power cut overtook fails, its change lost.
  const check = async (op: string, writing = false): Promise<void> => {
    for (const turn of [false, true]) {
      if (turn) await ioTurn(op === 'fdatasync' || op === 'fsync');
      live();
      if (closed) throw fsError('EBADF', op, path);
      if (writing && readOnly) throw fsError('EBADF', op, path);
    }
  };
  return {
    read: async (buffer, offset, length, position) => {
      await check('read');
      const n = Math.max(0, Math.min(length, f.current.size - position));
      if (n > 0) f.current.buf.copy(buffer, offset, position, position + n);
      return { bytesRead: n };
    },
    write: async (buffer, offset, length, position) => {
      await check('write', true);
      f.change({ pos: position, data: Buffer.from(buffer.subarray(offset, offset + length)) });
      return { bytesWritten: length };
    },
    writev: async (buffers, position) => {
      await check('writev', true);
      const data = Buffer.concat(buffers);
      f.change({ pos: position, data });
      return { bytesWritten: data.length };
    },
    truncate: async (length) => {
      await check('ftruncate', true);
      f.change({ pos: length, data: null });
    },
    datasync: async () => {
      await check('fdatasync');
      f.sync();
    },
    sync: async () => {
      await check('fsync');
      f.sync();
    },
    stat: async () => {
      await check('fstat');
      return { size: f.current.size };
    },
    close: async () => {
      closed = true;
    },
  };
}
