import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCode, vrgError } from './errors.js';
import { nodeFiles, type Files } from './files.js';
import { writeFully } from './write-fully.js';

// One gateway process per data directory. Node has no flock, so the lock is a file created with O_EXCL that
// names its holder: pid, boot id and the process's start time (/proc/<pid>/stat field 22), so neither a
// host restart nor a recycled pid is taken for the holder. A gateway killed without releasing it leaves the
// file behind; the next one finds the holder gone (no such process, a zombie, another start time or boot)
// and takes it over. A loser changes nothing: its create fails, it reads, it throws DATA_DIR_LOCKED.

export const lockFileName = 'vrg.lock';

export interface LockHolder {
  pid: number;
  /** null off Linux: liveness then rests on the pid alone. */
  bootId: string | null;
  startTicks: string | null;
  dataDir: string;
  sinceMs: number;
}

/** This host's boot id and a process's start time, from /proc (null when unavailable). */
export interface HostProbe {
  bootId(): string | null;
  /** undefined: no such process (or a zombie). null: no /proc, the pid exists. */
  startTicks(pid: number): string | null | undefined;
}

export const procProbe: HostProbe = {
  bootId: () => readOrNull('/proc/sys/kernel/random/boot_id')?.trim() ?? null,
  startTicks(pid) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return pidExists(pid) ? null : undefined;
    }
    // The command name (field 2) may hold spaces and parentheses: fields count from its closing one.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // A SIGKILLed process its parent has not reaped yet is a zombie: dead, though kill(pid, 0) succeeds.
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
    return fields[19] ?? null;
  },
};

function readOrNull(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function holderAlive(h: LockHolder, probe: HostProbe): boolean {
  const boot = probe.bootId();
  if (h.bootId !== null && boot !== null && h.bootId !== boot) return false;
  const ticks = probe.startTicks(h.pid);
  if (ticks === undefined) return false;
  return h.startTicks === null || ticks === null || ticks === h.startTicks;
}

function parseHolder(text: string): LockHolder | null {
  try {
    const h = JSON.parse(text) as LockHolder;
    return Number.isInteger(h.pid) && h.pid > 0 ? h : null;
  } catch {
    return null;
  }
}

async function readText(files: Files, path: string): Promise<string | null> {
  try {
    return (await files.readFile(path)).toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class DataDirLock {
  private released = false;

  private constructor(readonly dataDir: string, private readonly path: string, private readonly text: string,
    private readonly files: Files) {}

  /**
   * Takes `dataDir` (made when absent) for this process. DATA_DIR_LOCKED (details: dataDir, pid, lockFile) when
   * a live process holds it, this one included: a second open in the same process is refused too.
   */
  static async acquire(dataDir: string, files: Files = nodeFiles, probe: HostProbe = procProbe): Promise<DataDirLock> {
    await files.mkdir(dataDir);
    const path = join(dataDir, lockFileName);
    const me: LockHolder = { pid: process.pid, bootId: probe.bootId(), startTicks: probe.startTicks(process.pid) ?? null, dataDir, sinceMs: Date.now() };
    const text = `${JSON.stringify(me)}\n`;
    for (let attempt = 0; attempt < 4; attempt++) {
      if (await createExclusive(files, path, text)) return new DataDirLock(dataDir, path, text, files);
      await DataDirLock.removeIfStale(dataDir, path, files, probe);
    }
    throw vrgError(ErrorCode.DATA_DIR_LOCKED, `data directory ${dataDir}: could not take ${lockFileName} (contended)`, { dataDir, lockFile: path });
  }

  /** Throws DATA_DIR_LOCKED when the holder lives; removes the file when it is gone. */
  private static async removeIfStale(dataDir: string, path: string, files: Files, probe: HostProbe): Promise<void> {
    let text = await readText(files, path);
    if (text === null) return;
    let holder = parseHolder(text);
    if (holder === null) {
      // Created, not yet written (the holder is between its open and its write), or torn by a crash: look again.
      await sleep(100);
      text = await readText(files, path);
      if (text === null) return;
      holder = parseHolder(text);
    }
    if (holder !== null && holderAlive(holder, probe)) {
      throw vrgError(ErrorCode.DATA_DIR_LOCKED,
        `data directory ${dataDir} is in use by another gateway (pid ${holder.pid}, lock file ${path})`,
        { dataDir, pid: holder.pid, lockFile: path });
    }
    // Stale: remove it unless another taker replaced it meanwhile (then the next create fails and we look again).
    if (await readText(files, path) !== text) return;
    await files.unlink(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  /** Idempotent. Removes the file only while it is still this lock's (not a successor's after a takeover). */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    if (await readText(this.files, this.path) !== this.text) return;
    await this.files.unlink(this.path).catch(() => undefined);
  }
}

/** false when the file exists. */
async function createExclusive(files: Files, path: string, text: string): Promise<boolean> {
  let fh;
  try {
    fh = await files.open(path, 'wx', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    await writeFully(fh, [Buffer.from(text, 'utf8')], 0);
  } catch (err) {
    await fh.close();
    await files.unlink(path).catch(() => undefined);
    throw err;
  }
  await fh.close();
  return true;
}

/** Runs `open` holding `dataDir`'s lock; the lock goes when `open` throws, else with the returned closer. */
export async function openLocked<T>(dataDir: string, files: Files | undefined, open: (lock: DataDirLock) => Promise<T>): Promise<T> {
  const lock = await DataDirLock.acquire(dataDir, files);
  try {
    return await open(lock);
  } catch (err) {
    await lock.release();
    throw err;
  }
}
