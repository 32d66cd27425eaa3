import { join } from 'node:path';
import { writeJsonAtomic } from '../../core/atomic-file.js';
import { nodeFiles, type Files } from '../../core/files.js';

// <dataDir>/run-state.json: { bootId, writeBack, clean }. Written (clean: false) when a production gateway
// opens and (clean: true) when it closes. An unclean stop with a different boot id now (or an unreadable one)
// is a host crash: the journal's written-not-durable tail may be lost, and records are shipped to DR before
// they are durable (in any mode), so DR may hold seqs the journal no longer has (each VM then skips past
// them: ProtectedVm.skipShipAheadSeqs). A write-back intake also acknowledges writes still only in the page
// cache and may leave on the source a write whose journal record was lost (so DR would never get it): after
// such a host crash each VM runs a consistency check.

interface RunState {
  bootId: string | null;
  writeBack: boolean;
  clean: boolean;
}

const fileName = 'run-state.json';

export interface RunMarker {
  /** The last run did not stop cleanly, and the host has restarted since (or cannot tell). */
  readonly hostCrashed: boolean;
  /** hostCrashed, and the last run was write-back. */
  readonly writeBackHostCrashed: boolean;
  markClean(): Promise<void>;
}

export async function openRunMarker(dataDir: string, bootIdPath: string, writeBack: boolean, files: Files = nodeFiles): Promise<RunMarker> {
  const path = join(dataDir, fileName);
  const bootId = await files.readFile(bootIdPath).then((b) => b.toString('utf8').trim() || null, () => null);
  const previous = await files.readFile(path).then((b) => JSON.parse(b.toString('utf8')) as RunState, () => null);
  const hostCrashed = previous !== null && !previous.clean &&
    (bootId === null || previous.bootId === null || previous.bootId !== bootId);
  await writeJsonAtomic(path, { bootId, writeBack, clean: false } satisfies RunState, files);
  return {
    hostCrashed,
    writeBackHostCrashed: hostCrashed && previous.writeBack,
    markClean: () => writeJsonAtomic(path, { bootId, writeBack, clean: true } satisfies RunState, files),
  };
}
