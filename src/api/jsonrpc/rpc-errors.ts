import { ErrorCode, isVrgError } from '../../core/errors.js';

// Element-style JSON-RPC errors: {code, name, message}. Clients (the SolidFire SDKs, Ansible, Terraform)
// match on `name`, so names are the stable identifiers; `code` is always 500 like Element's API errors.
// Method errors come with HTTP 200; request-level ones with their own HTTP status (jsonrpc-face.ts).

export const RpcErrorName = {
  UNKNOWN_METHOD: 'xUnknownAPIMethod',
  UNKNOWN_VERSION: 'xUnknownAPIVersion',
  MISSING_PARAMETER: 'xMissingParameter',
  INVALID_PARAMETER: 'xInvalidParameter',
  INVALID_REQUEST: 'xInvalidRequest',
  BATCH_UNSUPPORTED: 'xBatchRequestsNotSupported',
  NOT_AUTHORIZED: 'xNotAuthorized',
  VOLUME_ID_DOES_NOT_EXIST: 'xVolumeIDDoesNotExist',
  VOLUME_ALREADY_PAIRED: 'xVolumeAlreadyPaired',
  VOLUME_NOT_PAIRED: 'xVolumeNotPaired',
  VOLUME_PAIR_IS_TARGET: 'xVolumePairIsTarget',
  CLUSTER_PAIR_LIMIT: 'xClusterPairLimitExceeded',
  CLUSTER_PAIR_DOES_NOT_EXIST: 'xClusterPairDoesNotExist',
  CLUSTER_PAIR_EXISTS: 'xClusterPairAlreadyExists',
  CLUSTER_PAIR_HAS_VOLUME_PAIRS: 'xClusterPairHasVolumePairs',
  PAIRING_KEY_INVALID: 'xPairingKeyInvalid',
  PAIRING_KEY_EXPIRED: 'xPairingKeyExpired',
  PAIRING_KEY_USED: 'xPairingKeyAlreadyUsed',
  PAIRING_KEY_LIMIT: 'xPairingKeyLimitExceeded',
  ROLE_MISMATCH: 'xClusterRoleMismatch',
  REMOTE_UNREACHABLE: 'xRemoteClusterUnreachable',
  REMOTE_ERROR: 'xRemoteClusterError',
  // VRG's own: the peer gateway's HTTPS certificate is not the one pinned at pairing.
  PEER_CERT_MISMATCH: 'xPeerCertificateMismatch',
  INTERNAL: 'xInternalError',
  // VRG's own (Element has no failover errors): a failover refused, or one already running.
  FAILOVER_REFUSED: 'xFailoverRefused',
  FAILOVER_IN_PROGRESS: 'xFailoverInProgress',
} as const;
export type RpcErrorName = (typeof RpcErrorName)[keyof typeof RpcErrorName];

export const RPC_ERROR_CODE = 500;

export class RpcError extends Error {
  readonly rpcCode = RPC_ERROR_CODE;

  constructor(readonly code: RpcErrorName, message: string) {
    super(message);
    this.name = 'RpcError';
  }
}

export function rpcError(code: RpcErrorName, message: string): RpcError {
  return new RpcError(code, message);
}

/** Engine and pairing-key errors to Element names; anything else is internal (its text is not echoed). */
export function toRpcError(err: unknown): RpcError {
  if (err instanceof RpcError) return err;
  if (isVrgError(err)) {
    const byCode: Partial<Record<string, RpcErrorName>> = {
      [ErrorCode.PAIRING_KEY_INVALID]: RpcErrorName.PAIRING_KEY_INVALID,
      [ErrorCode.PAIRING_KEY_EXPIRED]: RpcErrorName.PAIRING_KEY_EXPIRED,
      [ErrorCode.PAIRING_KEY_USED]: RpcErrorName.PAIRING_KEY_USED,
      [ErrorCode.PAIRING_KEY_LIMIT]: RpcErrorName.PAIRING_KEY_LIMIT,
      [ErrorCode.PEER_CERT_MISMATCH]: RpcErrorName.PEER_CERT_MISMATCH,
      [ErrorCode.INVALID_ARGUMENT]: RpcErrorName.INVALID_PARAMETER,
      [ErrorCode.CONFIG_INVALID]: RpcErrorName.INVALID_PARAMETER,
      [ErrorCode.FAILOVER_REFUSED]: RpcErrorName.FAILOVER_REFUSED,
      [ErrorCode.TIMEOUT]: RpcErrorName.FAILOVER_REFUSED,
      [ErrorCode.FAILOVER_IN_PROGRESS]: RpcErrorName.FAILOVER_IN_PROGRESS,
      [ErrorCode.VM_ROLE_CONFLICT]: RpcErrorName.INVALID_PARAMETER,
    };
    const name = byCode[err.code];
    if (name !== undefined) return new RpcError(name, err.message);
  }
  // REST-layer validation errors (src/api/rest/rest-errors.ts) carry the document's number; they are
  // parameter problems here (the JSON-RPC face builds the same bodies the REST face validates).
  const e = err as { details?: { errorCode?: unknown } } | null;
  if (e?.details?.errorCode !== undefined && e.details.errorCode !== '10440000') {
    return new RpcError(RpcErrorName.INVALID_PARAMETER, (err as Error).message);
  }
  return new RpcError(RpcErrorName.INTERNAL, 'internal error');
}

export function rpcErrorBody(err: RpcError): { code: number; name: string; message: string } {
  return { code: err.rpcCode, name: err.code, message: err.message };
}
