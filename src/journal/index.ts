export { Journal, type JournalOptions, type JournalCounters } from './journal.js';
export { RecordKind, type JournalRecord, type JournalRecordInput } from './record-codec.js';
