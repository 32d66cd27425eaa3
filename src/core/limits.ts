// Every bound in one place, units last. Config may lower these; nothing may exceed them.

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export const limits = {
  /** Largest frame body accepted from a peer (header + payload + tag). */
  frameBytesMax: 8 * MiB,
  /** Largest protobuf header inside a frame. */
  frameHeaderBytesMax: 65_535, // u16 on the wire
  /** Target payload of one write-batch frame (0.5–1 MiB keeps per-task pool cost low). */
  batchBytesTarget: 1 * MiB,
  /** Largest single journal record payload; bigger writes are split. */
  recordBytesMax: 1 * MiB,
  /** Records in one write batch. */
  batchRecordsMax: 1024,
  /** Write-batch frames sent but not yet acknowledged. */
  framesInFlightMax: 16,
  /** Bytes sent but not yet acknowledged. */
  bytesInFlightMax: 32 * MiB,
  handshakeTimeoutMs: 5_000,
  heartbeatIntervalMs: 1_000,
  heartbeatTimeoutMs: 6_000,
  reconnectBackoffMinMs: 50,
  reconnectBackoffMaxMs: 5_000,
  /** Journal segment size before rolling to a new file. */
  journalSegmentBytes: 64 * MiB,
  /** Appends waiting for one group commit. */
  groupCommitBytesMax: 4 * MiB,
  /** Hot records kept in memory for shipping without reading the journal back. */
  journalCacheBytesMax: 256 * MiB,
  /** The cache a journal has unless told otherwise: a VM's shipping backlog beyond it is read back from disk. */
  journalCacheBytesDefault: 16 * MiB,
  /**
   * Per journal, made on its first pinned read from disk: a backlog beyond the cache is read back into it (a
   * shipper batch, limits.batchBytesTarget, or a DR apply chunk, limits.drApplyChunkBytes, at a time).
   */
  journalReadRingBytes: 8 * MiB,
  /**
   * Production: the ring batches are assembled and frames sealed in (held until the socket has taken them).
   * DR: the ring frames are received into and opened into (held until applied). Beyond it, buffers of their own.
   * About twice the peak the seq64k bench uses (4-9 MiB production, 4.7-6 MiB DR): every byte of a ring ends up
   * resident as it cycles, and each gateway keeps under 256 MiB RSS (issue 12; DR 32 -> 16 MiB took its peak
   * RSS from 254-261 to 247-254 MiB with no refusals).
   */
  linkRingBytesProduction: 16 * MiB,
  linkRingBytesDr: 16 * MiB,
  /**
   * NBD: WRITE payloads spanning received chunks are assembled here until answered (all clients of a server).
   * Room for a queue of 16 writes of 1 MiB with some to spare: at 8 MiB, 45 % of the WAN row's 1 MiB writes
   * found none and had a buffer of their own (922 MiB of new ArrayBuffers per 2 GiB, GC by external memory).
   */
  nbdPayloadRingBytes: 20 * MiB,
  /**
   * Records shipped to DR may run this far beyond the journal's durable seq (shipping overlaps the local
   * fdatasync). After a host crash production skips this many seqs (filler barriers), so it never reuses a
   * seq DR may already hold.
   */
  shipAheadRecordsMax: 4096,
  /** Writes accepted by the intake but not yet durable. */
  intakePendingBytesMax: 64 * MiB,
  /**
   * The journal is trimmed only at checkpoints: once the source volumes are fsynced up to what DR
   * acknowledged. Checkpoint at least this often, and at once when the journal is this full.
   */
  checkpointIntervalMs: 5_000,
  checkpointJournalFraction: 0.5,
  /**
   * DR: a VM's log is applied to its targets in the background and checkpointed (targets fsynced, position
   * saved, log trimmed) after this many applied bytes, this often, or at once when the log is this full. Small
   * and frequent: a checkpoint's fdatasync of much dirty target data delays the log's own fdatasyncs on the same
   * disk (Sync seq64k p99 139 ms with 64 MiB / 1 s, 78 ms with 8 MiB / 200 ms).
   */
  drCheckpointBytes: 8 * MiB,
  drCheckpointIntervalMs: 200,
  drCheckpointLogFraction: 0.5,
  /**
   * Volumes: written pages are dropped from the page cache behind the writes in windows of this many bytes
   * (src/volume/drop-behind.ts; 0 keeps them). WAN row (2 GiB written once onto a new 4 GiB volume): both
   * gateways 13.5-14.8 CPU-s/GB and a 104-116 MB/s drain keeping the pages, 8.8-11.3 and 133-178 MB/s with
   * 32 MiB windows (first writes into the page cache were a quarter of each gateway's CPU).
   */
  volumeDropBehindBytes: 32 * MiB,
  /** DR: records the applier takes from the log at once (one gate hold: replica reads wait at most this much). */
  drApplyChunkBytes: 4 * MiB,
  /** DR: a batch waits this long for room in a full log before the connection is dropped (production resends). */
  drLogRoomWaitMs: 30_000,
  /** DR: after a target write fails, the applier retries from the last checkpoint this much later. */
  drApplyRetryMs: 1_000,
  /** DR: a replica read or check digest first waits this long for the targets to reach what was acknowledged. */
  replicaCatchUpMs: 10_000,
  /** DR: a clean stop applies and checkpoints each VM's log for at most this long (the rest replays at open). */
  drCloseSettleMs: 60_000,
  /** DR: a target write agent (nbd://) that refuses connections at start is retried this long (it may be restarting). */
  targetOpenWaitMs: 30_000,
  targetOpenRetryMs: 250,
  /** Planned failover: the source drains the VM's acknowledged writes to its target within this. */
  plannedFailoverDrainMs: 60_000,
  /** Planned failover: a source whose VM the target did not promote within this takes its writes again. */
  plannedFailoverPromoteMs: 30_000,
  /**
   * DR test failover (target/test-clone.ts): the clone owns blocks of this size, the unit of its copy-before-write
   * and read-modify-write (smaller: less copied per first overwrite; larger: a smaller in-memory map).
   */
  testCloneGranuleBytes: 64 * KiB,
  /**
   * DR test failover: bytes one clone may hold (what its client wrote plus the base blocks the applier overwrote
   * since it began). Beyond it a client write fails (ENOSPC); an overwrite the clone has no room for ends the clone.
   */
  testCloneBytesMax: 64 * GiB,
  /** Async mode: the link down longer than this moves a VM from the journal to CBT. */
  linkDownCbtAfterMs: 300_000,
  /** Sync mode: the link down longer than this degrades a VM to Async with CBT. */
  syncDegradeAfterMs: 10_000,
  /** Volumes per VM (the VRG document's seqNum range is 1–40). */
  volumesPerVmMax: 40,
} as const;
