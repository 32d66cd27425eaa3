import type { NbdExport } from '../nbd/nbd-server.js';
import type { DrGateway } from './target/dr-gateway.js';
import { testExportName } from './target/test-clone.js';
import type { ProductionGateway } from './source/production-gateway.js';

// What the gateways serve over NBD. Production: one writable export per protected volume, named by
// its volume UUID; writes go through the intake (source volume + journal + replication), reads come
// from the source volume. DR: one read-only export per replica volume, read between batches, and one
// writable export per volume of a running test failover.

export function productionExports(gw: ProductionGateway): NbdExport[] {
  return gw.protectedVolumes().map(({ volUuid, vmUuid, volume }) => {
    // FUA: the request, then a flush of its VM (a write-back journal, or a write the CBT bitmap tracked,
    // is acknowledged before it is durable).
    const fua = async (done: Promise<void>, flag: boolean): Promise<void> => {
      await done;
      if (flag) await gw.flush(volUuid);
    };
    return {
      name: volUuid,
      description: `VRG source volume ${volUuid} of VM ${vmUuid}`,
      sizeBytes: volume.sizeBytes,
      readOnly: false,
      read: (offset, length) => volume.read(offset, length),
      write: (offset, data, flag) => fua(gw.write(volUuid, offset, data), flag),
      writeZeroes: (offset, length, o) => fua(gw.writeZeroes(volUuid, offset, length), o.fua),
      trim: (offset, length, flag) => fua(gw.trim(volUuid, offset, length), flag),
      flush: () => gw.flush(volUuid),
    };
  });
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

/**
 * DR test failover (target/test-clone.ts): one writable export per cloned volume, `<volUuid>-test`. Flush and FUA
 * fdatasync the clone files; TRIM zeroes (the clone cannot hand a block back to the target, which moved on).
 */
export function testCloneExports(dr: DrGateway): NbdExport[] {
  return dr.testCloneVolumes().map(({ vmUuid, volUuid, volumeIndex, sizeBytes, clone }) => {
    const fua = async (done: Promise<void>, flag: boolean): Promise<void> => {
      await done;
      if (flag) await clone.flush();
    };
    return {
      name: testExportName(volUuid),
      description: `VRG test failover clone of ${volUuid} of VM ${vmUuid} (discarded at the end)`,
      sizeBytes,
      readOnly: false,
      read: (offset, length) => clone.read(volumeIndex, offset, length),
      write: (offset, data, flag) => fua(clone.write(volumeIndex, offset, data), flag),
      writeZeroes: (offset, length, o) => fua(clone.writeZeroes(volumeIndex, offset, length), o.fua),
      trim: (offset, length, flag) => fua(clone.writeZeroes(volumeIndex, offset, length), flag),
      flush: () => clone.flush(),
    };
  });
}

function readOnly(): Error {
  return Object.assign(new Error('the DR replica is read-only'), { code: 'EPERM' });
}
