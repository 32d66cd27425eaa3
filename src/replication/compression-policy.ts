import { ErrorCode, vrgError } from '../core/errors.js';

// Whether the shipper compresses the next batch, for a VM whose compressOption allows it. LZ4 pays while
// the link is the bottleneck (batches wait for the send window or the rate cap: fewer bytes, sooner) and
// only costs CPU while it is not (the link idles, waiting for the codec or for writes). The shipper
// observes which at each frame it hands to the link; the choice flips only after a run of observations of
// the other kind (hysteresis): `enterAfter` busy ones to start compressing, `leaveAfter` idle ones to stop
// (more, since a link that compression relieves looks idle). `always` and `never` force the choice.
// Pure: state in, state out.

export type CompressionSetting = 'auto' | 'always' | 'never';
export const compressionSettings: readonly CompressionSetting[] = ['auto', 'always', 'never'];

/** linkBound: a frame waited for the window or queued behind the link. linkIdle: nothing waited on the link. */
export type LinkObservation = 'linkBound' | 'linkIdle' | 'neither';

export interface CompressionState {
  readonly setting: CompressionSetting;
  /** What the next batch does. */
  readonly compressing: boolean;
  /** Observations in a row that argue for the other choice. */
  readonly against: number;
  /** Flips so far (auto only). */
  readonly switches: number;
}

/** Observations in a row before auto flips: into compression, and out of it. */
export const enterAfterDefault = 8;
export const leaveAfterDefault = 32;

export function initialCompression(setting: CompressionSetting): CompressionState {
  if (!compressionSettings.includes(setting)) {
    throw vrgError(ErrorCode.CONFIG_INVALID, `compression must be one of ${compressionSettings.join(', ')}`, { setting });
  }
  // auto starts compressing: a replication link is more often short of bandwidth than the gateway of CPU.
  return { setting, compressing: setting !== 'never', against: 0, switches: 0 };
}

export function observe(s: CompressionState, obs: LinkObservation, enterAfter = enterAfterDefault, leaveAfter = leaveAfterDefault): CompressionState {
  if (s.setting !== 'auto') return s;
  const argues = (s.compressing && obs === 'linkIdle') || (!s.compressing && obs === 'linkBound');
  if (!argues) return s.against === 0 ? s : { ...s, against: 0 };
  if (s.against + 1 < (s.compressing ? leaveAfter : enterAfter)) return { ...s, against: s.against + 1 };
  return { ...s, compressing: !s.compressing, against: 0, switches: s.switches + 1 };
}
