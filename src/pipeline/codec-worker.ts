import { Piscina } from 'piscina';
import { isVrgError } from '../core/errors.js';
import type { WriteBatch } from '../protocol/messages.js';
import type { StageSample } from './codec-types.js';
import * as ops from './codec-ops.js';
import { asBuffer } from './codec-ops.js';

// Piscina worker: runs codec-ops on one batch per task (~1 MiB, so the ~100 µs task overhead stays small).
// Buffers arrive as Uint8Array (moved, cloned, or views of a SharedArrayBuffer ring, shared as they are); results
// are moved back (each owns its whole ArrayBuffer) or, built in a shared block, returned as views of it.

export interface WireKeys { key: Uint8Array; salt: Uint8Array }

export type CodecTask =
  | { op: 'compress'; data: Uint8Array; lengths: number[]; compress: boolean }
  | { op: 'seal'; keys: WireKeys; seq: number; header: Uint8Array; payload: Uint8Array; encrypt: boolean }
  | { op: 'ship'; keys: WireKeys; seq: number; batch: WriteBatch; payload: Uint8Array; encrypt: boolean; compress: boolean; into?: Uint8Array }
  | { op: 'open'; keys: WireKeys; expectedSeq: number; frame: Uint8Array; into?: Uint8Array };

export interface WireError { code: string | null; name: string; message: string; details?: Record<string, unknown> }

export type CodecReply =
  | { ok: true; value: unknown; samples: StageSample[] }
  | { ok: false; error: WireError };

function keysOf(k: WireKeys): { key: Buffer; salt: Buffer } {
  return { key: asBuffer(k.key), salt: asBuffer(k.salt) };
}

/** A result built in a shared (pooled) block is seen by the caller as it is; only a buffer of its own moves. */
function movable(b: Uint8Array): ArrayBuffer[] {
  return b.buffer instanceof SharedArrayBuffer ? [] : [b.buffer as ArrayBuffer];
}

function runOp(task: CodecTask): { value: unknown; samples: StageSample[]; moved: ArrayBuffer[] } {
  switch (task.op) {
    case 'compress': {
      const r = ops.compressRecords(asBuffer(task.data), task.lengths, task.compress);
      return { ...r, moved: [r.value.stored.buffer as ArrayBuffer] };
    }
    case 'seal': {
      const r = ops.sealBatch(keysOf(task.keys), task.seq, task.header, asBuffer(task.payload), task.encrypt);
      return { ...r, moved: [r.value.buffer as ArrayBuffer] };
    }
    case 'ship': {
      const r = ops.shipBatch(keysOf(task.keys), task.seq, task.batch, asBuffer(task.payload), task.encrypt, task.compress,
        task.into && asBuffer(task.into));
      return { ...r, moved: movable(r.value.frame) };
    }
    case 'open': {
      const r = ops.openBatch(keysOf(task.keys), task.expectedSeq, asBuffer(task.frame), task.into && asBuffer(task.into));
      return { ...r, moved: movable(r.value.data) };
    }
  }
}

export default function codecWorker(task: CodecTask): unknown {
  try {
    const { value, samples, moved } = runOp(task);
    const reply: CodecReply = { ok: true, value, samples };
    // A Transferable wrapper: piscina transfers `moved` and posts `reply`.
    return Piscina.move({ [Piscina.transferableSymbol]: moved, [Piscina.valueSymbol]: reply } as never);
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    const error: WireError = {
      code: isVrgError(err) ? err.code : null,
      name: e.name,
      message: e.message,
      ...(isVrgError(err) && err.details ? { details: err.details } : {}),
    };
    return { ok: false, error } satisfies CodecReply;
  }
}
