import { join } from 'node:path';
import { writeJsonAtomic } from '../../core/atomic-file.js';
import { nodeFiles, type Files } from '../../core/files.js';
import { ErrorCode, isVrgError, vrgError } from '../../core/errors.js';
import { RecordKind, type Journal, type JournalRecordInput } from '../../journal/journal.js';

// DR ahead of production (issue 13 item 4). Records are shipped once written to the journal, before they
// are durable (at most limits.shipAheadRecordsMax beyond the durable seq), so after a host crash DR may hold
// seqs up to that far beyond what the replayed journal ends at (K). None of them was acknowledged to a client.
// The restart appends filler BARRIER records (header only; DR applies nothing for them) past every seq DR may
// hold, so new records never reuse one, and remembers K in <cbt dir>/dr-ahead.json until DR's position is
// known: at or below K nothing is lost or extra on DR; above it DR holds writes the source never got, and a
// consistency check (the source is the truth; the repair is a staged pass) brings DR back to the source.

export interface DrAhead {
  /** The journal's last seq after the replay that followed the host crash (the earliest such crash unresolved). */
  aboveSeq: number;
  /** Seqs up to here are filler barriers or older: DR may hold any seq up to it from before the crash. */
  skipToSeq: number;
}

const fileName = 'dr-ahead.json';
/** Barriers per journal append (header only: 48 KiB of journal per 1024). */
const barriersPerAppendMax = 1024;

export async function loadDrAhead(dir: string, files: Files = nodeFiles): Promise<DrAhead | null> {
  const text = await files.readFile(join(dir, fileName)).then((b) => b.toString('utf8'), () => null);
  if (text === null) return null;
  const doc = JSON.parse(text) as Partial<DrAhead>;
  if (!Number.isSafeInteger(doc.aboveSeq) || !Number.isSafeInteger(doc.skipToSeq) || doc.skipToSeq! < doc.aboveSeq!) {
    throw vrgError(ErrorCode.CONFIG_INVALID, `${fileName} is malformed`, { dir, doc });
  }
  return { aboveSeq: doc.aboveSeq!, skipToSeq: doc.skipToSeq! };
}

export function saveDrAhead(dir: string, s: DrAhead, files: Files = nodeFiles): Promise<void> {
  return writeJsonAtomic(join(dir, fileName), s, files);
}

export function clearDrAhead(dir: string, files: Files = nodeFiles): Promise<void> {
  return files.rm(join(dir, fileName));
}

/**
 * Appends BARRIER records until the journal's appended seq reaches `seq`, durably. Returns the seq reached:
 * less than `seq` when the journal has no room for all of them (VRG_JOURNAL_FULL stops the filling).
 */
export async function appendBarriersTo(journal: Journal, seq: number): Promise<number> {
  const barrier: JournalRecordInput = { volumeIndex: 0, offset: 0, length: 0, kind: RecordKind.BARRIER, codec: 0, payload: Buffer.alloc(0) };
  const appends: Promise<unknown>[] = [];
  try {
    while (journal.appendedSeq < seq) {
      const n = Math.min(barriersPerAppendMax, seq - journal.appendedSeq);
      appends.push(journal.append(new Array<JournalRecordInput>(n).fill(barrier)));
    }
  } catch (err) {
    if (!isVrgError(err, ErrorCode.JOURNAL_FULL)) throw err;
  } finally {
    await Promise.all(appends);
  }
  return journal.appendedSeq;
}
