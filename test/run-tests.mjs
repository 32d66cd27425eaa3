// `npm test`: runs tap (with the arguments given), then ends with one line saying how many tests were
// skipped because a Debian tool is missing and the one command that installs those tools. The tests
// record their skips (test/lib/tools.ts) in the file named by VRG_TOOL_SKIPS. Exits with tap's status.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vrg-tool-skips-'));
const skipsFile = join(dir, 'skips.jsonl');
const tapBin = join(root, 'node_modules', '.bin', 'tap');

const child = spawn(tapBin, process.argv.slice(2), {
  cwd: root, stdio: 'inherit', env: { ...process.env, VRG_TOOL_SKIPS: skipsFile },
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));

child.on('exit', (code, signal) => {
  let lines = [];
  try {
    lines = readFileSync(skipsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  } catch {
    // no test was skipped for a tool
  }
  rmSync(dir, { recursive: true, force: true });
  const tools = [...new Set(lines.flatMap((l) => l.tools))].sort();
  const packages = [...new Set(lines.flatMap((l) => l.packages))].sort();
  const sudo = process.getuid?.() === 0 ? '' : 'sudo ';
  console.log(lines.length === 0
    ? 'vrg: no test was skipped for a missing tool'
    : `vrg: ${lines.length} tests skipped for missing tools (${tools.join(', ')}); install them with: ` +
      `${sudo}apt-get install -y ${packages.join(' ')}`);
  process.exit(signal ? 1 : code ?? 1);
});
