import type { NbdExport } from '../nbd/nbd-server.js';
import type { DrGateway } from './dr-gateway.js';
import type { ProductionGateway } from './production-gateway.js';

// What the gateways serve over NBD. Production: one writable export per protected volume, named by
// its volume UUID; writes go through the intake (source volume + journal + replication), reads come
// from the source volume. DR: one read-only export per replica volume, read between batches.

export function productionExports(gw: ProductionGateway): NbdExport[] {
  return gw.protectedVolumes().map(({ volUuid, vmUuid, volume }) => ({
    name: volUuid,
    description: `VRG source volume ${volUuid} of VM ${vmUuid}`,
    sizeBytes: volume.sizeBytes,
    readOnly: false,
    read: (offset, length) => volume.read(offset, length),
    // FUA needs nothing more: an acknowledged write is durable in the journal (the source's WAL).
    write: (offset, data) => gw.write(volUuid, offset, data),
    writeZeroes: (offset, length) => gw.writeZeroes(volUuid, offset, length),
    trim: (offset, length) => gw.trim(volUuid, offset, length),
    flush: () => gw.flush(),
  }));
}

export function replicaExports(dr: DrGateway): NbdExport[] {
  return dr.replicaVolumes().map(({ volUuid, vmUuid, sizeBytes }) => ({
    name: volUuid,
    description: `VRG DR replica ${volUuid} of VM ${vmUuid} (read-only)`,
    sizeBytes,
    readOnly: true,
    read: (offset, length) => dr.readReplica(volUuid, offset, length),
    write: () => Promise.reject(readOnly()),
    writeZeroes: () => Promise.reject(readOnly()),
    trim: () => Promise.reject(readOnly()),
    flush: () => Promise.resolve(),
  }));
}

function readOnly(): Error {
  return Object.assign(new Error('the DR replica is read-only'), { code: 'EPERM' });
}
