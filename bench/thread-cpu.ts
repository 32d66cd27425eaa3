import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

// Where a process's CPU went over a window, from /proc: user vs system time of the whole process, and the
// main thread (tid = pid) and one named thread (the codec worker) apart from the rest (libuv's file-system
// pool, V8's GC and compiler threads). Node does not name its threads, so the rest stays one figure.


/** The kernel's clock ticks per second (utime and stime in /proc are counted in them). */
export const clockTicksPerSec = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

interface UserSys { userSeconds: number; sysSeconds: number }

function readUserSys(path: string): UserSys {
  try {
    const stat = readFileSync(path, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { userSeconds: Number(f[11]) / clockTicksPerSec, sysSeconds: Number(f[12]) / clockTicksPerSec };
  } catch {
    return { userSeconds: 0, sysSeconds: 0 };
  }
}

export interface ThreadSplit {
  userSeconds: number;
  sysSeconds: number;
  mainSeconds: number;
  /** The codec worker thread; 0 without one. */
  workerSeconds: number;
  /** Everything else: libuv pool threads (fs calls), GC and compiler threads. */
  otherSeconds: number;
}

function sample(pid: number, workerTid: number | null): { all: UserSys; main: UserSys; worker: UserSys } {
  return {
    all: readUserSys(`/proc/${pid}/stat`),
    main: readUserSys(`/proc/${pid}/task/${pid}/stat`),
    worker: workerTid ? readUserSys(`/proc/${pid}/task/${workerTid}/stat`) : { userSeconds: 0, sysSeconds: 0 },
  };
}

const sum = (a: UserSys): number => a.userSeconds + a.sysSeconds;

/** Starts a split window over `pid`; end() returns the CPU of the window by kind and thread. */
export function startThreadSplit(pid: number, workerTid: number | null): { end(): ThreadSplit } {
  const a = sample(pid, workerTid);
  return {
    end(): ThreadSplit {
      const b = sample(pid, workerTid);
      const all = sum(b.all) - sum(a.all);
      const main = sum(b.main) - sum(a.main);
      const worker = sum(b.worker) - sum(a.worker);
      return {
        userSeconds: b.all.userSeconds - a.all.userSeconds, sysSeconds: b.all.sysSeconds - a.all.sysSeconds,
        mainSeconds: main, workerSeconds: worker, otherSeconds: all - main - worker,
      };
    },
  };
}
