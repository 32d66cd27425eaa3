import { join } from 'node:path';
import { writeJsonAtomic } from '../core/atomic-file.js';
import { nodeFiles, type Files } from '../core/files.js';
import { ErrorCode, vrgError } from '../core/errors.js';

// A VM's role on this gateway and its generation, persisted per VM so both survive a restart.
//
// The generation is an epoch: it starts at 1 and grows by one at every promotion, on the side that promotes.
// Both sides carry it (the handshake's Resume, every WriteBatch), so a gateway always knows which side of a VM
// is newer: a source whose peer reports a higher generation for the VM was failed over from, and must not ship
// it again (it is the stale side). Writing the file is the commit point of a promotion.
//
// Disk layout: <dataDir>/roles/<vmUuid>.json (atomic replace, fsynced):
//   { "version": 1, "vmUuid": "...", "role": "source" | "target", "generation": 2,
//     "changedAtMs": 1764668400000, "reason": "unplanned failover", "fromSeq": 1234 }
// No file: the role the gateway's config gives the VM, generation 1.

export type VmRole = 'source' | 'target';

export interface VmRoleState {
  vmUuid: string;
  role: VmRole;
  generation: number;
  /** Wall-clock time of the last role change (0: never changed). */
  changedAtMs: number;
  reason: string;
  /** Promotion: the last seq of the old source's history the promoted image holds. */
  fromSeq?: number;
  /**
   * A source took writes while disconnected from its peer (since this time, durably noted before the first
   * such write was acknowledged); cleared once the peer attaches the VM at the same generation. A peer found
   * promoted meanwhile means both sides took writes as source: split brain.
   */
  divergedAtMs?: number;
}

const FORMAT_VERSION = 1;

export function vmRolePath(dataDir: string, vmUuid: string): string {
  return join(dataDir, 'roles', `${vmUuid}.json`);
}

/** The VM's stored role, or `initial` with generation 1 when none is stored. */
export async function loadVmRole(dataDir: string, vmUuid: string, initial: VmRole, files: Files = nodeFiles): Promise<VmRoleState> {
  const path = vmRolePath(dataDir, vmUuid);
  let text: string;
  try {
    text = (await files.readFile(path)).toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { vmUuid, role: initial, generation: 1, changedAtMs: 0, reason: 'initial' };
    throw err;
  }
  const doc = JSON.parse(text) as Partial<VmRoleState> & { version?: number };
  const ok = doc.version === FORMAT_VERSION && doc.vmUuid === vmUuid && (doc.role === 'source' || doc.role === 'target') &&
    Number.isSafeInteger(doc.generation) && doc.generation! >= 1;
  if (!ok) throw vrgError(ErrorCode.CONFIG_INVALID, `role file ${path} is not a version ${FORMAT_VERSION} role of VM ${vmUuid}`, { path });
  return {
    vmUuid, role: doc.role!, generation: doc.generation!, changedAtMs: doc.changedAtMs ?? 0, reason: doc.reason ?? '',
    ...(doc.fromSeq === undefined ? {} : { fromSeq: doc.fromSeq }),
    ...(doc.divergedAtMs === undefined ? {} : { divergedAtMs: doc.divergedAtMs }),
  };
}

export async function saveVmRole(dataDir: string, state: VmRoleState, files: Files = nodeFiles): Promise<void> {
  await files.mkdir(join(dataDir, 'roles'));
  await writeJsonAtomic(vmRolePath(dataDir, state.vmUuid), { version: FORMAT_VERSION, ...state }, files);
}

/** A generation as carried on the wire: 0 (a peer from before generations) means 1. */
export function wireGeneration(g: number | undefined): number {
  return g === undefined || g === 0 ? 1 : g;
}
