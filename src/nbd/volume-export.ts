import type { Volume } from '../volume/volume.js';
import type { NbdExport } from './nbd-export.js';

// Adapters from VRG's backends to NbdExport.

/**
 * A Volume served directly (tests, a DR replica served read-only). Volume writes are durable only after
 * flush(), so FUA is a write followed by a flush of the volume.
 */
export function volumeExport(volume: Volume, opts: { name: string; description?: string; readOnly?: boolean }): NbdExport {
  const durable = async (fua: boolean): Promise<void> => {
    if (fua) await volume.flush();
  };
  return {
    name: opts.name,
    ...(opts.description === undefined ? {} : { description: opts.description }),
    sizeBytes: volume.sizeBytes,
    readOnly: opts.readOnly ?? false,
    read: (offset, length) => volume.read(offset, length),
    write: async (offset, data, fua) => {
      await volume.write(offset, data);
      await durable(fua);
    },
    writeZeroes: async (offset, length, { fua, noHole }) => {
      await volume.writeZeroes(offset, length, { noHole });
      await durable(fua);
    },
    trim: async (offset, length, fua) => {
      await volume.trim(offset, length);
      await durable(fua);
    },
    flush: () => volume.flush(),
  };
}

/** The production gateway's intake API (ProductionGateway's write/writeZeroes/trim/flush). */
export interface IntakeLike {
  write(volUuid: string, offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(volUuid: string, offset: number, length: number): Promise<void>;
  trim(volUuid: string, offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

/**
 * A protected volume on production: writes go through the intake (journaled, replicated; acknowledged only
 * once on the source volume and durable in the journal, so FUA needs nothing more), reads come from the
 * source volume (`read`), which holds every acknowledged write.
 */
export function intakeExport(opts: {
  volUuid: string;
  sizeBytes: number;
  intake: IntakeLike;
  read: (offset: number, length: number) => Promise<Buffer>;
  description?: string;
}): NbdExport {
  const { volUuid, intake } = opts;
  return {
    name: volUuid,
    ...(opts.description === undefined ? {} : { description: opts.description }),
    sizeBytes: opts.sizeBytes,
    readOnly: false,
    read: opts.read,
    write: (offset, data) => intake.write(volUuid, offset, data),
    writeZeroes: (offset, length) => intake.writeZeroes(volUuid, offset, length),
    trim: (offset, length) => intake.trim(volUuid, offset, length),
    flush: () => intake.flush(),
  };
}
