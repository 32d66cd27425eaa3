import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

// `perf record -a -g` over one benchmark window, on request: VRG_BENCH_PERF=<dir> makes every measured fio
// job also write <dir>/<label>.data and a flat report <dir>/<label>.txt (self time by command, DSO and
// symbol). Gateways need --perf-basic-prof for their JIT frames to have names; the bench adds it to
// VRG_GATEWAY_NODE_ARGS when a profile is asked for.

export const perfDir = process.env.VRG_BENCH_PERF || null;

if (perfDir && !(process.env.VRG_GATEWAY_NODE_ARGS ?? '').includes('--perf-basic-prof')) {
  process.env.VRG_GATEWAY_NODE_ARGS = `${process.env.VRG_GATEWAY_NODE_ARGS ?? ''} --perf-basic-prof`.trim();
}

export interface PerfRecording { stop(): Promise<string | null> }

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((res) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', () => undefined);
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', () => res({ code: null, out }));
    p.on('close', (code) => {
      clearTimeout(timer);
      res({ code, out });
    });
  });
}

/** Starts recording the whole machine (null when no profile was asked for); `stop()` returns the report's path. */
export function startPerf(label: string): PerfRecording | null {
  if (!perfDir) return null;
  const data = join(perfDir, `${label}.data`);
  const p: ChildProcess = spawn('perf', ['record', '-a', '-g', '-F', '499', '-o', data], { stdio: 'ignore' });
  const exited = new Promise<void>((res) => {
    p.once('exit', () => res());
    p.once('error', () => res());
  });
  return {
    async stop(): Promise<string | null> {
      p.kill('SIGINT');
      await exited;
      const r = await run('perf', ['report', '-i', data, '--stdio', '--no-children', '--sort', 'comm,dso,sym', '--percent-limit', '0.3', '-g', 'none'], 300_000);
      if (r.code !== 0) return null;
      const txt = join(perfDir!, `${label}.txt`);
      await writeFile(txt, r.out);
      return txt;
    },
  };
}
