import { open, rename } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * Replaces `path` with `doc` as pretty JSON, atomically and durably: a temp file written and fsynced,
 * renamed over the old one, then the directory fsynced (so the rename itself survives a crash).
 */
export async function writeJsonAtomic(path: string, doc: unknown, mode = 0o600): Promise<void> {
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(`${JSON.stringify(doc, null, 2)}\n`, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
