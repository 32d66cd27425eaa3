import type { VmConfig } from './config.js';
import type { Mode, StateName, Status, TransitionKey } from './protection-state.js';

// What the management faces (REST, JSON-RPC, CLI) may ask of a running gateway, and the events it
// reports. Both gateways implement the part that applies to their role; the management layer owns
// persistence (it replays its stored configuration through these calls at start).

export type { Mode, StateName, Status };

/** A VM to protect: the gateway's VmConfig plus the replication mode (production side). */
export interface VmProtection extends VmConfig {
  mode?: Mode;
  pausedManual?: boolean;
}

export interface PeerConfig {
  host: string;
  port: number;
  /** The link's pairing secret (>= 16 bytes); default: the gateway config's link.secret. */
  secret?: Buffer;
}

export type AlarmKind = 'linkDown' | 'journalOverflow' | 'targetError' | 'checkDiffers' | 'syncDegraded' | 'splitBrain'
  | 'rpoExceeded' | 'journalHigh';

export interface AlarmEvent {
  kind: AlarmKind;
  /** true: the condition began; false: it cleared. */
  raised: boolean;
  vmUuid: string | null;
  detail: string;
  atMs: number;
}

export interface TransitionEvent {
  vmUuid: string;
  from: StateName;
  to: StateName;
  reason: string;
  atMs: number;
}

/** One VM's replication figures (production side; the DR side reports what production last told it). */
export interface VmReplicationStatus {
  vmUuid: string;
  state: StateName;
  /** The VRG document's vmdrstatus: 1 queue, 2 CBT, 3 consistency check. */
  status: Status;
  mode: Mode;
  pausedManual: boolean;
  syncDegraded: boolean;
  transitions: Record<TransitionKey, number>;
  /** Lag: writes and bytes not yet durable on DR, seconds behind (RPO), last acknowledged seq. */
  writesBehind: number;
  bytesBehind: number;
  secondsBehind: number;
  ackedSeq: number;
  /** Resync / initial sync progress, when one runs. */
  resync: { bytesDone: number; bytesTotal: number; rateBytesPerSec: number; etaSec: number | null } | null;
  /** Last consistency check's figures. */
  check: { regionsChecked: number; regionsDiffering: number; regionsRepaired: number; atMs: number } | null;
}
