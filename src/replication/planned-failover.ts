import type { Clock } from '../core/clock.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { LinkConnection } from '../link/connection.js';
import { FrameType } from '../protocol/frame.js';
import { encodeFailoverRequest, type FailoverReady } from '../protocol/messages.js';

// Planned failover (move), the target's request: the source stops the VM's writes and answers once every
// one of them is acknowledged here (ProductionGateway.onFailoverRequest). Both sites use it: a DR site moving
// a VM to itself, and a production site moving a failed-back VM home.

let nextRequestId = 1;

/** Resolves with the source's last seq of the VM once its writes stopped and are all acknowledged. */
export function requestMove(conn: LinkConnection, vmUuid: string, clock: Clock, timeoutMs: number): Promise<number> {
  const requestId = nextRequestId++;
  return new Promise<number>((resolve, reject) => {
    const done = (): void => {
      timer.cancel();
      conn.off('control', onControl);
      conn.off('close', onClose);
    };
    const onControl = (type: number, msg: unknown): void => {
      const r = msg as FailoverReady;
      if (type !== FrameType.FAILOVER_READY || r.requestId !== requestId || r.vmUuid !== vmUuid) return;
      done();
      if (r.error !== '') reject(vrgError(ErrorCode.FAILOVER_REFUSED, `the source refused to move VM ${vmUuid}: ${r.error}`, { vmUuid }));
      else resolve(r.lastSeq);
    };
    const onClose = (): void => {
      done();
      reject(vrgError(ErrorCode.FAILOVER_REFUSED, `the link to the source closed while VM ${vmUuid} was moving`, { vmUuid }));
    };
    const timer = clock.setTimer(timeoutMs, () => {
      done();
      reject(vrgError(ErrorCode.TIMEOUT, `the source did not stop and drain VM ${vmUuid} within ${timeoutMs} ms`, { vmUuid }));
    });
    conn.on('control', onControl);
    conn.once('close', onClose);
    conn.sendControl(FrameType.FAILOVER_REQUEST, encodeFailoverRequest({ vmUuid, requestId }));
  });
}
