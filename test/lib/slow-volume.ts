import type { Volume } from '../../src/volume/volume.js';

/** A DR target whose writes each take 5-25 ms and finish out of order (the applier runs behind the log). */
export function slowWrites(v: Volume): Volume {
  const later = (): Promise<void> => new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 20)));
  return {
    url: v.url, sizeBytes: v.sizeBytes,
    read: (o, l) => v.read(o, l),
    write: async (o, d) => { await later(); await v.write(o, d); },
    writeZeroes: async (o, l, opts) => { await later(); await v.writeZeroes(o, l, opts); },
    trim: (o, l) => v.trim(o, l),
    flush: () => v.flush(),
    close: () => v.close(),
  };
}
