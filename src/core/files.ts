import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { writeAt } from './write-fully.js';

// The engine's local files (journals, DR logs, stages, bitmaps, state files) go through this interface, as
// its volumes go through Volume and its link through Transport: in production it is node:fs, in the
// simulator (src/chaos/sim/sim-files.ts) an in-memory file system whose power cut loses every write not yet
// fdatasync'ed, as LazyFS does. Only what the engine uses is here.

/** An open file: node's FileHandle has this shape. */
export interface FileHandleLike {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  writev(buffers: Uint8Array[], position: number): Promise<{ bytesWritten: number }>;
  /** Data (and the size) durable: what a journal's group commit waits for. */
  datasync(): Promise<void>;
  sync(): Promise<void>;
  truncate(length: number): Promise<void>;
  stat(): Promise<{ size: number }>;
  close(): Promise<void>;
}

/** Flags as node's: 'r', 'r+', 'w', 'wx+', 'a+'. */
export type OpenFlags = 'r' | 'r+' | 'w' | 'wx' | 'wx+' | 'a+';

export interface Files {
  open(path: string, flags: OpenFlags, mode?: number): Promise<FileHandleLike>;
  /** Recursive: succeeds when the directory exists. */
  mkdir(path: string): Promise<void>;
  readdir(path: string): Promise<string[]>;
  readFile(path: string): Promise<Buffer>;
  unlink(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  /** Recursive and forced (absent is not an error), like `rm -rf`. */
  rm(path: string): Promise<void>;
  /** ENOENT as node's error code when absent. */
  stat(path: string): Promise<{ size: number; isDirectory(): boolean }>;
}

/** node's FileHandle, its writes made whole by writeAt (small ones inline): journals and DR logs write groups. */
class NodeFileHandle implements FileHandleLike {
  constructor(private readonly fh: FileHandle) {}

  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
    return this.fh.read(buffer, offset, length, position);
  }

  async write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }> {
    return { bytesWritten: await writeAt(this.fh, [buffer.subarray(offset, offset + length)], position) };
  }

  async writev(buffers: Uint8Array[], position: number): Promise<{ bytesWritten: number }> {
    return { bytesWritten: await writeAt(this.fh, buffers, position) };
  }

  datasync(): Promise<void> { return this.fh.datasync(); }
  sync(): Promise<void> { return this.fh.sync(); }
  truncate(length: number): Promise<void> { return this.fh.truncate(length); }
  stat(): Promise<{ size: number }> { return this.fh.stat(); }
  close(): Promise<void> { return this.fh.close(); }
}

export const nodeFiles: Files = {
  open: async (path, flags, mode) => new NodeFileHandle(await open(path, flags, mode)),
  mkdir: async (path) => {
    await mkdir(path, { recursive: true });
  },
  readdir: (path) => readdir(path),
  readFile: (path) => readFile(path),
  unlink: (path) => unlink(path),
  rename: (from, to) => rename(from, to),
  rm: (path) => rm(path, { recursive: true, force: true }),
  stat: (path) => stat(path),
};
