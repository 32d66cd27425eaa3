import { randomBytes } from 'node:crypto';
import t from 'tap';
import { crc32c as nodeRsCrc32c } from '@node-rs/crc32';
import { crc32c, crc32cSource, loadCrc32c } from '../src/core/checksum.js';

// The addon's CRC32C (three interleaved streams combined by shift tables) gives @node-rs/crc32's values at
// every length around its 12 KiB steps, at any alignment and chained from any seed.

t.test('CRC32C: the standard check value, and VRG_NATIVE=0 falls back to @node-rs/crc32', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283, 'crc32c("123456789")');
  t.equal(crc32c(Buffer.alloc(0), 0x12345678), 0x12345678, 'no bytes: the seed');
  const fallback = loadCrc32c({ ...process.env, VRG_NATIVE: '0' });
  t.equal(fallback.source, '@node-rs/crc32');
  t.equal(fallback.fn(Buffer.from('123456789'), 0) >>> 0, 0xe3069283);
});

t.test('the addon\'s CRC32C equals @node-rs/crc32 across lengths, offsets and seeds', async (t) => {
  const addon = loadCrc32c();
  if (addon.source !== 'addon') {
    t.skip(`the addon's crc32c is not loaded here (${crc32cSource}: not built, or not x86-64 with SSE4.2)`);
    return;
  }
  const data = randomBytes((1 << 20) + 64);
  const step = 3 * 4096;
  const lengths = [0, 1, 7, 8, 9, 63, 4095, 4096, step - 1, step, step + 1, 2 * step + 8, 65536, (1 << 20) + 13];
  let mismatches = 0;
  for (const n of lengths) {
    for (const offset of [0, 1, 3, 8, 13]) {
      const view = data.subarray(offset, offset + n);
      for (const seed of [0, 0xffffffff, 0x9e3779b9]) {
        if ((addon.fn(view, seed) >>> 0) !== (nodeRsCrc32c(view, seed) >>> 0)) mismatches++;
      }
    }
  }
  t.equal(mismatches, 0, `${lengths.length * 15} cases agree`);
  const a = data.subarray(0, 50000);
  const b = data.subarray(50000, 300001);
  t.equal(addon.fn(b, addon.fn(a, 0)) >>> 0, addon.fn(data.subarray(0, 300001), 0) >>> 0, 'chains: crc(b, crc(a)) === crc(a ++ b)');
  t.throws(() => addon.fn('abc' as unknown as Uint8Array, 0), { name: 'TypeError' }, 'not bytes: refused');
  t.throws(() => addon.fn(new Uint16Array(4) as unknown as Uint8Array, 0), { name: 'TypeError' }, 'another typed array: refused');
  t.throws(() => addon.fn(a, -1), { name: 'RangeError' }, 'a seed outside uint32: refused');
});
