import { redactFields, scrubSecrets } from './secrets.js';

// One catalogue of the errors VRG raises on purpose. Callers and tests match on `code`, never on text.
// The management APIs map these codes to HTTP status and the source documents' error numbers.

export const ErrorCode = {
  INVALID_ARGUMENT: 'VRG_INVALID_ARGUMENT',
  CONFIG_INVALID: 'VRG_CONFIG_INVALID',
  CLOSED: 'VRG_CLOSED',
  TIMEOUT: 'VRG_TIMEOUT',
  /** Another live gateway holds the data directory (src/core/data-dir-lock.ts); details: dataDir, pid. */
  DATA_DIR_LOCKED: 'VRG_DATA_DIR_LOCKED',
  // Link
  FRAME_MALFORMED: 'VRG_FRAME_MALFORMED',
  FRAME_TOO_LARGE: 'VRG_FRAME_TOO_LARGE',
  FRAME_SEQUENCE: 'VRG_FRAME_SEQUENCE',
  FRAME_AUTH_FAILED: 'VRG_FRAME_AUTH_FAILED',
  FRAME_UNEXPECTED: 'VRG_FRAME_UNEXPECTED',
  HANDSHAKE_FAILED: 'VRG_HANDSHAKE_FAILED',
  PROTOCOL_VERSION: 'VRG_PROTOCOL_VERSION',
  CONNECTION_CLOSED: 'VRG_CONNECTION_CLOSED',
  PEER_ERROR: 'VRG_PEER_ERROR',
  // Link secret rotation (src/replication/link-rekey.ts)
  REKEY_FAILED: 'VRG_REKEY_FAILED',
  REKEY_IN_PROGRESS: 'VRG_REKEY_IN_PROGRESS',
  // Codec
  DECOMPRESS_FAILED: 'VRG_DECOMPRESS_FAILED',
  // Journal
  JOURNAL_CORRUPT: 'VRG_JOURNAL_CORRUPT',
  JOURNAL_FULL: 'VRG_JOURNAL_FULL',
  RECORD_TOO_LARGE: 'VRG_RECORD_TOO_LARGE',
  JOURNAL_IO: 'VRG_JOURNAL_IO',
  STAGE_CORRUPT: 'VRG_STAGE_CORRUPT',
  // Changed-block tracking (CBT) bitmap: the driver falls back to a full resync on CORRUPT
  CBT_MISMATCH: 'VRG_CBT_MISMATCH',
  CBT_CORRUPT: 'VRG_CBT_CORRUPT',
  // Volumes and replication
  VOLUME_NOT_FOUND: 'VRG_VOLUME_NOT_FOUND',
  VOLUME_OUT_OF_RANGE: 'VRG_VOLUME_OUT_OF_RANGE',
  VOLUME_IO: 'VRG_VOLUME_IO',
  VM_NOT_FOUND: 'VRG_VM_NOT_FOUND',
  APPLY_GAP: 'VRG_APPLY_GAP',
  ILLEGAL_TRANSITION: 'VRG_ILLEGAL_TRANSITION',
  // Roles and failover (src/replication/vm-role.ts, target/promotion)
  VM_ROLE_CONFLICT: 'VRG_VM_ROLE_CONFLICT',
  GENERATION_MISMATCH: 'VRG_GENERATION_MISMATCH',
  FAILOVER_IN_PROGRESS: 'VRG_FAILOVER_IN_PROGRESS',
  FAILOVER_REFUSED: 'VRG_FAILOVER_REFUSED',
  // Test failover (src/replication/target/test-clone.ts)
  TEST_FAILOVER_ACTIVE: 'VRG_TEST_FAILOVER_ACTIVE',
  TEST_FAILOVER_NOT_ACTIVE: 'VRG_TEST_FAILOVER_NOT_ACTIVE',
  TEST_CLONE_FULL: 'VRG_TEST_CLONE_FULL',
  // The fault proxy (src/chaos/fault-proxy): Toxiproxy's 404 and 409 answers
  FAULT_PROXY_NOT_FOUND: 'VRG_FAULT_PROXY_NOT_FOUND',
  FAULT_PROXY_EXISTS: 'VRG_FAULT_PROXY_EXISTS',
  FAULT_TOXIC_NOT_FOUND: 'VRG_FAULT_TOXIC_NOT_FOUND',
  FAULT_TOXIC_EXISTS: 'VRG_FAULT_TOXIC_EXISTS',
  // NBD front end
  NBD_PROTOCOL: 'VRG_NBD_PROTOCOL',
  // Element pairing keys (src/api/jsonrpc/pairing-keys.ts)
  PAIRING_KEY_INVALID: 'VRG_PAIRING_KEY_INVALID',
  PAIRING_KEY_EXPIRED: 'VRG_PAIRING_KEY_EXPIRED',
  PAIRING_KEY_USED: 'VRG_PAIRING_KEY_USED',
  PAIRING_KEY_LIMIT: 'VRG_PAIRING_KEY_LIMIT',
  // Gateway-to-gateway HTTPS (src/api/jsonrpc/peer-rpc-client.ts): the peer's certificate is not the pinned one
  PEER_CERT_MISMATCH: 'VRG_PEER_CERT_MISMATCH',
  // Cluster mode (src/cluster): membership and VM ownership held in etcd
  /** etcd did not answer (down, partitioned, or slower than the operation's timeout). */
  CLUSTER_UNAVAILABLE: 'VRG_CLUSTER_UNAVAILABLE',
  /** Another member owns the VM (claim), or this member does not (release); details: vmUuid, owner. */
  CLUSTER_NOT_OWNER: 'VRG_CLUSTER_NOT_OWNER',
  /** This member's lease is lost or expired (or it never joined): it must not act until it joins again. */
  CLUSTER_FENCED: 'VRG_CLUSTER_FENCED',
  /** join(): another live lease holds this member id (a second gateway with the id, or this one's last life). */
  CLUSTER_MEMBER_EXISTS: 'VRG_CLUSTER_MEMBER_EXISTS',
  /** DR: a batch's fencing token is older than the newest seen for its VM (a stale owner); details: vmUuid, token, newest. */
  FENCING_TOKEN_STALE: 'VRG_FENCING_TOKEN_STALE',
  // Management API authentication (details.errorCode = the VRG REST document's number, src/api/auth/error-codes.ts)
  AUTH_NOT_LOGGED_IN: 'VRG_AUTH_NOT_LOGGED_IN',
  AUTH_INVALID_PASSWORD: 'VRG_AUTH_INVALID_PASSWORD',
  AUTH_NO_SUCH_USER: 'VRG_AUTH_NO_SUCH_USER',
  AUTH_WRONG_PASSWORD: 'VRG_AUTH_WRONG_PASSWORD',
  AUTH_LOGOUT_FAILED: 'VRG_AUTH_LOGOUT_FAILED',
  AUTH_LOCKED_NOW: 'VRG_AUTH_LOCKED_NOW',
  AUTH_ACCOUNT_LOCKED: 'VRG_AUTH_ACCOUNT_LOCKED',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class VrgError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    // Errors travel into logs and API answers: no secret in either (src/core/secrets.ts).
    super(scrubSecrets(message), options);
    this.name = 'VrgError';
    this.code = code;
    this.details = details === undefined ? undefined : redactFields(details);
  }
}

export function vrgError(
  code: ErrorCode,
  message: string,
  details?: Record<string, unknown>,
  cause?: unknown,
): VrgError {
  return new VrgError(code, message, details, cause === undefined ? undefined : { cause });
}

export function isVrgError(err: unknown, code?: ErrorCode): err is VrgError {
  return err instanceof VrgError && (code === undefined || err.code === code);
}
