import type { Clock, TimerHandle } from '../core/clock.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { Random } from '../core/random.js';
import type { LinkClient } from '../link/link-client.js';
import type { LinkSecretStore } from '../link/link-secrets.js';
import type { LinkConnection } from '../link/connection.js';
import { FrameType } from '../protocol/frame.js';
import { deriveRotatedSecret } from '../protocol/keys.js';
import { encodeRekey, encodeRekeyAck, type Rekey, type RekeyAck } from '../protocol/messages.js';

// Link secret rotation over the authenticated link (the protocol and its crash cases: link/link-secrets.ts).
// Production asks (`vrg rekey`, the REST call, or its schedule); DR stores the next secret before it answers;
// production stores it, then closes the link: the reconnect proves the new secret, DR makes it current and
// refuses the old one from then on. Unacknowledged batches are resent after the reconnect as after any cut.

const NONCE_BYTES = 32;

/** reconnected: the link came back on the new secret within the timeout (else it keeps trying). */
export interface RekeyResult { generation: number; reconnected: boolean }

/**
 * Production side: one rotation at a time, bounded by `timeoutMs` waiting for DR's answer and by
 * `reconnectTimeoutMs` waiting for the link to come back on the new secret.
 */
export class RekeyInitiator {
  private pending: { rekeyId: number; resolve: (a: RekeyAck) => void; reject: (e: Error) => void; timer: TimerHandle } | null = null;
  private nextId = 1;

  constructor(private readonly deps: { clock: Clock; random: Random; logger: Logger }, private readonly timeoutMs = 10_000,
    private readonly reconnectTimeoutMs = 30_000) {}

  get running(): boolean {
    return this.pending !== null;
  }

  async run(conn: LinkConnection | null, link: LinkClient | null, store: LinkSecretStore, initial: Buffer): Promise<RekeyResult> {
    if (this.pending) throw vrgError(ErrorCode.REKEY_IN_PROGRESS, 'a link secret rotation is already running');
    if (conn === null || link === null) throw vrgError(ErrorCode.REKEY_FAILED, 'the link to the DR gateway is down: rotate once it is up');
    const rekeyId = this.nextId++;
    const nonce = this.deps.random.bytes(NONCE_BYTES);
    const generation = store.get(initial).generation + 1;
    const answered = new Promise<RekeyAck>((resolve, reject) => {
      const timer = this.deps.clock.setTimer(this.timeoutMs, () =>
        reject(vrgError(ErrorCode.REKEY_FAILED, `DR did not answer the rotation within ${this.timeoutMs} ms; the secret is unchanged`)));
      this.pending = { rekeyId, resolve, reject, timer };
    });
    const onClose = (): void => this.pending?.reject(vrgError(ErrorCode.REKEY_FAILED, 'the link closed during the rotation; the secret is unchanged'));
    conn.once('close', onClose);
    try {
      conn.sendControl(FrameType.REKEY, encodeRekey({ rekeyId, nonce, generation }));
      const ack = await answered;
      if (ack.error !== '') throw vrgError(ErrorCode.REKEY_FAILED, `DR refused the rotation: ${ack.error}`);
      const next = deriveRotatedSecret(store.get(initial).current, nonce, ack.nonce);
      await store.adopt(initial, next);
      link.setSecret(next);
      this.deps.logger.info({ generation }, 'link secret rotated: reconnecting with it');
      const reconnected = this.reconnected(link);
      conn.close(); // the old session drains into the reconnect, which proves the new secret to DR
      return { generation, reconnected: await reconnected };
    } finally {
      conn.off('close', onClose);
      (this.pending as { timer: TimerHandle } | null)?.timer.cancel();
      this.pending = null;
    }
  }

  /** Whether the link comes back (on the new secret) within the timeout; the rotation holds either way. */
  private reconnected(link: LinkClient): Promise<boolean> {
    return new Promise((resolve) => {
      const onUp = (): void => {
        timer.cancel();
        resolve(true);
      };
      const timer = this.deps.clock.setTimer(this.reconnectTimeoutMs, () => {
        link.off('connected', onUp);
        resolve(false);
      });
      link.once('connected', onUp);
    });
  }

  onAck(ack: RekeyAck): void {
    if (this.pending?.rekeyId === ack.rekeyId) this.pending.resolve(ack);
  }
}

/** DR side: derives and durably stages the next secret, then answers. Run after promoteIfNext of the same connection. */
export async function answerRekey(conn: LinkConnection, req: Rekey, store: LinkSecretStore, logger: Logger, random: Random): Promise<void> {
  const nonce = random.bytes(NONCE_BYTES);
  let error = '';
  try {
    if (conn.auth === null) throw new Error('this connection has no pairing to rotate');
    if (req.nonce.length !== NONCE_BYTES) throw new Error(`a nonce of ${req.nonce.length} bytes`);
    // A rotation derives from the current secret, which the asking connection must have proved.
    const current = store.get(conn.auth.initial).current;
    if (!current.equals(conn.auth.secret)) throw new Error('the connection runs on a secret that is not the current one');
    const next = deriveRotatedSecret(current, req.nonce, nonce);
    await store.stageNext(conn.auth.initial, next);
    logger.info({ generation: req.generation }, 'link secret rotation staged: the next connection makes it current');
  } catch (err) {
    error = (err as Error).message;
    logger.warn({ err: error }, 'link secret rotation refused');
  }
  conn.sendControl(FrameType.REKEY_ACK, encodeRekeyAck({ rekeyId: req.rekeyId, nonce, error }));
}

/** DR side, at each new connection: one that proved the staged secret makes it current. */
export async function promoteIfNext(conn: LinkConnection, store: LinkSecretStore, logger: Logger): Promise<void> {
  if (conn.auth === null || !(store.get(conn.auth.initial).next?.equals(conn.auth.secret) ?? false)) return;
  const generation = await store.promoteNext(conn.auth.initial);
  logger.info({ generation, peer: conn.peer.gatewayId }, 'link secret rotated: the old secret is refused from now on');
}
