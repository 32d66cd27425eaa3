import { execFile } from 'node:child_process';

// Runs the real NBD clients (qemu-io, nbdinfo, nbdcopy, fio) against the server under test.
// Whether a tool is there: tools.ts.

export interface ToolResult { code: number; stdout: string; stderr: string }

/** `env`: more environment variables for the tool (e.g. HOME, where libnbd finds its default certificates). */
export function runTool(tool: string, args: string[], timeoutMs = 120_000, env?: Record<string, string>): Promise<ToolResult> {
  return new Promise((resolve) => {
    const options = { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, ...(env ? { env: { ...process.env, ...env } } : {}) };
    execFile(tool, args, options, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}
