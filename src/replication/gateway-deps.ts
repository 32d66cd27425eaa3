import type { Clock } from '../core/clock.js';
import type { Files } from '../core/files.js';
import type { Logger } from '../core/log.js';
import type { Random } from '../core/random.js';
import type { Transport } from '../link/transport.js';
import type { Codec } from '../pipeline/codec.js';
import type { openVolume } from '../volume/open-volume.js';

// What a gateway's two sides (source/ and target/) are given rather than reach for: the clock, randomness,
// the transport, the block store and the local files are injected so one seeded simulator can run both sides in one process.

export interface GatewayDeps {
  clock: Clock;
  random: Random;
  transport: Transport;
  codec: Codec;
  logger: Logger;
  /** The block store: opens a volume by URL (default openVolume; a simulator or test may wrap it). */
  openVolume?: typeof openVolume;
  /** Local files: journals, DR logs, stages, bitmaps, state files (default node:fs; the simulator's can lose power). */
  files?: Files;
}
