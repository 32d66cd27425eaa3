import { crc32 } from '../core/checksum.js';
import { nodeFiles, type FileHandleLike, type Files } from '../core/files.js';
import { ErrorCode, vrgError } from '../core/errors.js';

// The DR side's durable position for one VM: the highest journal seq whose effects are durable on
// the target volumes. Two fixed slots written alternately, each with a CRC, so a torn write of one
// slot leaves the other intact; one pwrite + one fdatasync per update.
//
// slot (32 bytes, at 0 or 32):
//   0 u32le magic 'VRGA'   4 u32le crc32 of bytes 8..32
//   8 u64le generation    16 u64le appliedSeq    24 u64le updatedAtMs

const MAGIC = 0x41475256;
const SLOT_BYTES = 32;

export class ApplyState {
  private generation: number;
  private saving: Promise<void> = Promise.resolve();

  private constructor(
    private readonly fh: FileHandleLike,
    generation: number,
    public appliedSeq: number,
  ) {
    this.generation = generation;
  }

  static async open(path: string, files: Files = nodeFiles): Promise<ApplyState> {
    let fh: FileHandleLike;
    try {
      fh = await files.open(path, 'a+');
      await fh.close();
      fh = await files.open(path, 'r+');
    } catch (err) {
      throw vrgError(ErrorCode.VOLUME_IO, `cannot open apply state ${path}: ${(err as Error).message}`, { path }, err);
    }
    const buf = Buffer.alloc(SLOT_BYTES * 2);
    await fh.read(buf, 0, buf.length, 0);
    let best = { generation: 0, appliedSeq: 0 };
    for (let at = 0; at < buf.length; at += SLOT_BYTES) {
      const slot = decodeSlot(buf.subarray(at, at + SLOT_BYTES));
      if (slot && slot.generation > best.generation) best = slot;
    }
    return new ApplyState(fh, best.generation, best.appliedSeq);
  }

  /**
   * Durably records `appliedSeq` (never below what is recorded: the position only moves forward). Saves are
   * serialized: two at once (DR's flush and a stage commit) would otherwise take the same generation and slot,
   * and the one landing last, possibly the lower position, would win.
   */
  save(appliedSeq: number, nowMs: number): Promise<void> {
    const run = this.saving.then(() => this.write(Math.max(appliedSeq, this.appliedSeq), nowMs));
    this.saving = run.catch(() => undefined);
    return run;
  }

  private async write(appliedSeq: number, nowMs: number): Promise<void> {
    const generation = this.generation + 1;
    const slot = Buffer.alloc(SLOT_BYTES);
    slot.writeUInt32LE(MAGIC, 0);
    slot.writeBigUInt64LE(BigInt(generation), 8);
    slot.writeBigUInt64LE(BigInt(appliedSeq), 16);
    slot.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(nowMs))), 24);
    slot.writeUInt32LE(crc32(slot.subarray(8)), 4);
    await this.fh.write(slot, 0, SLOT_BYTES, (generation % 2) * SLOT_BYTES);
    await this.fh.datasync();
    this.generation = generation;
    this.appliedSeq = appliedSeq;
  }

  async close(): Promise<void> {
    await this.saving;
    return this.fh.close();
  }
}

function decodeSlot(b: Buffer): { generation: number; appliedSeq: number } | null {
  if (b.readUInt32LE(0) !== MAGIC || b.readUInt32LE(4) !== crc32(b.subarray(8))) return null;
  return { generation: Number(b.readBigUInt64LE(8)), appliedSeq: Number(b.readBigUInt64LE(16)) };
}
