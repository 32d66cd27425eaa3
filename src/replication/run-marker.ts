import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeJsonAtomic } from '../core/atomic-file.js';

// <dataDir>/run-state.json: { bootId, writeBack, clean }. Written (clean: false) when a production gateway
// opens and (clean: true) when it closes. A write-back intake acknowledges writes still only in the page
// cache: a process crash keeps them, a host crash may not, and may also leave on the source a write whose
// journal record was lost (so DR would never get it). An unclean stop of a write-back gateway with a
// different boot id now (or an unreadable one) is such a host crash: each VM then runs a consistency check.

interface RunState {
  bootId: string | null;
  writeBack: boolean;
  clean: boolean;
}

const fileName = 'run-state.json';

export interface RunMarker {
  /** The last run was write-back, did not stop cleanly, and the host has restarted since (or cannot tell). */
  readonly hostCrashed: boolean;
  markClean(): Promise<void>;
}

export async function openRunMarker(dataDir: string, bootIdPath: string, writeBack: boolean): Promise<RunMarker> {
  const path = join(dataDir, fileName);
  const bootId = await readFile(bootIdPath, 'utf8').then((t) => t.trim() || null, () => null);
  const previous = await readFile(path, 'utf8').then((t) => JSON.parse(t) as RunState, () => null);
  const hostCrashed = previous !== null && !previous.clean && previous.writeBack &&
    (bootId === null || previous.bootId === null || previous.bootId !== bootId);
  await writeJsonAtomic(path, { bootId, writeBack, clean: false } satisfies RunState);
  return {
    hostCrashed,
    markClean: () => writeJsonAtomic(path, { bootId, writeBack, clean: true } satisfies RunState),
  };
}
