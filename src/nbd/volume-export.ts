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
