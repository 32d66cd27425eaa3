import { readFileSync } from 'node:fs';
import type { GatewayChild } from '../src/cli/gateway-child.js';
import { clockTicksPerSec, startThreadSplit, type ThreadSplit } from './thread-cpu.js';
import type { IpcMessage, ProcessFigures } from '../src/cli/gateway-process.js';

// CPU accounting of one benchmark window: the CPU-seconds of a target's processes (all their threads:
// /proc/<pid>/stat utime + stime), the machine's busy share (/proc/stat), and for VRG gateways their GC pause
// time and event-loop utilization over the same window (from their status reports). fio's own CPU comes
// from its JSON report (its I/O runs in a child process that /proc of the parent would miss).

/** utime + stime of a process (every thread), in seconds; 0 once it is gone. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSec; // fields 14 and 15 of proc(5)
  } catch {
    return 0;
  }
}

/** All CPUs' busy and total time so far, in clock ticks. */
function machineTicks(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = v[3]! + v[4]!; // idle + iowait
  return { busy: total - idle, total };
}

export interface GatewayWindow {
  role: string;
  cpuSeconds: number;
  gcMs: number;
  gcCount: number;
  /** GC pause time as a share of the gateway's CPU time in the window. */
  gcShareOfCpu: number;
  /** Main-thread event-loop utilization in the window (0..1). */
  eventLoopUtilization: number;
  /** The gateway's CPU by kind (user / system) and thread (main / the rest: codec workers, libuv pool, GC). */
  split: ThreadSplit;
}

export interface CpuWindow {
  seconds: number;
  /** The target's processes (both VRG gateways with their worker threads; qemu-storage-daemon + qemu-nbd). */
  targetCpuSeconds: number;
  machineBusyPct: number;
  gateways: GatewayWindow[];
}

type StatusReply = Extract<IpcMessage, { type: 'status' }>;

async function figures(g: GatewayChild): Promise<ProcessFigures> {
  return (await g.request<StatusReply>({ type: 'status' }, 'status')).process;
}

/** Starts a window over `pids` (and the gateways' GC / ELU figures); `end()` closes it. */
export async function startCpuWindow(pids: readonly number[], gateways: readonly GatewayChild[] = []): Promise<{ end(): Promise<CpuWindow> }> {
  const before = { at: performance.now(), cpu: pids.map(processCpuSeconds), machine: machineTicks(), gw: await Promise.all(gateways.map(figures)) };
  const splits = gateways.map((g) => startThreadSplit(g.proc.pid!, null));
  return {
    async end(): Promise<CpuWindow> {
      const gw = await Promise.all(gateways.map(figures));
      const cpu = pids.map(processCpuSeconds);
      const machine = machineTicks();
      const seconds = (performance.now() - before.at) / 1000;
      return {
        seconds,
        targetCpuSeconds: cpu.reduce((n, c, i) => n + c - before.cpu[i]!, 0),
        machineBusyPct: (100 * (machine.busy - before.machine.busy)) / Math.max(1, machine.total - before.machine.total),
        gateways: gateways.map((g, i) => {
          const a = before.gw[i]!;
          const b = gw[i]!;
          const cpuSeconds = (b.cpuUserUs + b.cpuSystemUs - a.cpuUserUs - a.cpuSystemUs) / 1e6;
          const active = b.eluActiveMs - a.eluActiveMs;
          const idle = b.eluIdleMs - a.eluIdleMs;
          return {
            role: g.role, cpuSeconds, gcMs: b.gcMs - a.gcMs, gcCount: b.gcCount - a.gcCount,
            gcShareOfCpu: cpuSeconds > 0 ? (b.gcMs - a.gcMs) / 1000 / cpuSeconds : 0,
            eventLoopUtilization: active + idle > 0 ? active / (active + idle) : 0,
            split: splits[i]!.end(),
          };
        }),
      };
    },
  };
}
