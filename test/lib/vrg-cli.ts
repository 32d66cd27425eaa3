import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// The built `vrg` command as a user runs it: a child process, its exit code and both outputs.

const main = fileURLToPath(new URL('../../dist/src/cli/main.js', import.meta.url));

export interface VrgRun { code: number | null; stdout: string; stderr: string }

/** `onStdout` sees the output as it comes (e.g. a --watch's first document). */
export function vrgStreaming(onStdout: (chunk: string) => void, ...args: string[]): Promise<VrgRun> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [main, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      onStdout(d.toString());
    });
    c.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    c.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

export function vrg(...args: string[]): Promise<VrgRun> {
  return vrgStreaming(() => undefined, ...args);
}
