import { dirname } from 'node:path';
import { nodeFiles, type Files } from './files.js';
import { writeFully } from './write-fully.js';

/**
 * Replaces `path` with `doc` as pretty JSON, atomically and durably: a temp file written and fsynced,
 * renamed over the old one, then the directory fsynced (so the rename itself survives a crash).
 */
export async function writeJsonAtomic(path: string, doc: unknown, files: Files = nodeFiles, mode = 0o600): Promise<void> {
  const tmp = `${path}.tmp`;
  const fh = await files.open(tmp, 'w', mode);
  try {
    await writeFully(fh, [Buffer.from(`${JSON.stringify(doc, null, 2)}\n`, 'utf8')], 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await files.rename(tmp, path);
  const dir = await files.open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
