import { ErrorCode, vrgError } from '../core/errors.js';
import { RecordCodec } from './codec-types.js';
import { lz4Decode } from './lz4-native.js';

/**
 * The plain bytes of one stored journal record (RAW or LZ4), decoded into a buffer of exactly its
 * declared length. Used by the production gateway's crash replay onto the source volume.
 */
export function decodeRecordPayload(codec: number, payload: Buffer, length: number): Buffer {
  if (codec === RecordCodec.RAW) {
    if (payload.byteLength !== length) {
      throw vrgError(ErrorCode.DECOMPRESS_FAILED, `raw record holds ${payload.byteLength} bytes, declares ${length}`);
    }
    return payload;
  }
  if (codec !== RecordCodec.LZ4) throw vrgError(ErrorCode.DECOMPRESS_FAILED, `unknown record codec ${codec}`);
  const out = Buffer.allocUnsafe(length);
  const n = lz4Decode(payload, out);
  if (n !== length) {
    throw vrgError(ErrorCode.DECOMPRESS_FAILED, `LZ4 record decodes to ${n} bytes, declares ${length}`);
  }
  return out;
}
