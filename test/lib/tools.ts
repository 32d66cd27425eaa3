import { accessSync, appendFileSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// Which outside tools (qemu-io, nbdkit, fio, snmptrapd ...) this machine has. A test that needs one asks
// here, and is skipped with the Debian package's name when it is absent: no test crashes or waits on a
// missing tool. The list of tools and packages is test/debian-tools.txt, the one `.ci/run` installs from.
// When `npm test` runs (test/run-tests.mjs), each skip is also recorded, so the run can end with one line
// naming what was skipped and the command that installs it.

const listPath = fileURLToPath(new URL('../debian-tools.txt', import.meta.url));

/** Command → Debian package, from test/debian-tools.txt. */
export const debianPackages: ReadonlyMap<string, string> = new Map(
  readFileSync(listPath, 'utf8').split('\n')
    .map((line) => line.replace(/#.*/, '').trim().split(/\s+/))
    .filter((f) => f.length === 2)
    .map(([cmd, pkg]) => [cmd!, pkg!]),
);

/** The absolute path of `tool` on PATH, or null. */
export function toolPath(tool: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, tool);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not in this directory
    }
  }
  return null;
}

/** True when `tool` is an executable on PATH. */
export function haveTool(tool: string): boolean {
  return toolPath(tool) !== null;
}

function packageOf(tool: string): string {
  const pkg = debianPackages.get(tool);
  if (pkg === undefined) throw new Error(`${tool} is not in test/debian-tools.txt: add it with its Debian package`);
  return pkg;
}

/**
 * Tap options for a test that needs `tools`: `{}` when all are on PATH, else `{ skip: reason }` naming the
 * missing ones and their packages (recorded for the end-of-run line). Use as `t.test(name, needs('fio'), fn)`.
 */
export function needs(...tools: string[]): { skip?: string } {
  const missing = tools.filter((tool) => { packageOf(tool); return !haveTool(tool); });
  if (missing.length === 0) return {};
  const packages = [...new Set(missing.map(packageOf))];
  recordSkip(missing, packages);
  return { skip: `needs ${missing.join(', ')}, not found on PATH (Debian package ${packages.join(', ')})` };
}

/** One JSON line per skipped test into the file `npm test` reads at the end (VRG_TOOL_SKIPS). */
function recordSkip(tools: string[], packages: string[]): void {
  const file = process.env.VRG_TOOL_SKIPS;
  if (!file) return;
  appendFileSync(file, `${JSON.stringify({ tools, packages })}\n`);
}
