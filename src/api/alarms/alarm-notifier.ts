import type { EventEmitter } from 'node:events';
import snmp from 'net-snmp';
import type { Logger } from '../../core/log.js';
import type { AlarmEvent, AlarmKind } from '../../replication/control.js';

// Alarms of the REST document's "trapinfo" (§3.2): the gateways emit 'alarm' (AlarmEvent, raised or
// cleared); this keeps the set of active alarms (GET /vrgstatus's status 2 "abnormal" while any is active)
// and sends each change as an SNMP v2c trap (npm net-snmp, community "public" by default) to the trap
// server the API set. No trap server: the change is only tracked and logged.
//
// Trap layout (OIDs under NET-SNMP-MIB::netSnmpPlaypen 1.3.6.1.4.1.8072.9999, the arc Net-SNMP sets aside
// for unregistered experiments; VRG has no enterprise number of its own):
//   snmpTrapOID.0 = VRG_TRAP_OID.1.<kind>   alarm raised      (kind: 1 linkDown, 2 journalOverflow,
//   snmpTrapOID.0 = VRG_TRAP_OID.2.<kind>   alarm cleared           3 targetError, 4 checkDiffers, 5 syncDegraded,
//                                                                   6 splitBrain, 7 rpoExceeded,
//                                                                   8 journalHigh)
//   VRG_TRAP_OID.3.1  OctetString  kind name ("linkDown", ...)
//   VRG_TRAP_OID.3.2  OctetString  VM UUID ("" for gateway-wide alarms)
//   VRG_TRAP_OID.3.3  OctetString  detail text
//   VRG_TRAP_OID.3.4  OctetString  gateway id
//   VRG_TRAP_OID.3.5  Integer      1 raised, 0 cleared

export const VRG_TRAP_OID = '1.3.6.1.4.1.8072.9999.7';
export const ALARM_KIND_NUMBERS: Readonly<Record<AlarmKind, number>> = {
  linkDown: 1, journalOverflow: 2, targetError: 3, checkDiffers: 4, syncDegraded: 5, splitBrain: 6, rpoExceeded: 7, journalHigh: 8,
};
const trapTimeoutMs = 5_000;

export interface TrapTarget {
  ip: string;
  port: number;
}

export interface ActiveAlarm {
  kind: AlarmKind;
  vmUuid: string | null;
  detail: string;
  sinceMs: number;
}

export interface AlarmNotifierOptions {
  gatewayId: string;
  logger: Logger;
  /** The current trap server (read at each alarm, so a POST /trapinfo applies to the next one). */
  target: () => TrapTarget | null;
  community?: string;
}

export class AlarmNotifier {
  private readonly active = new Map<string, ActiveAlarm>();
  private readonly sources: Array<{ emitter: EventEmitter; fn: (ev: AlarmEvent) => void }> = [];
  private readonly pending = new Set<Promise<void>>();
  /** Traps sent (for status and tests) and failures. */
  readonly stats = { sent: 0, failed: 0 };

  constructor(private readonly opts: AlarmNotifierOptions) {}

  /** Subscribes to an emitter of 'alarm' events (a gateway). */
  watch(emitter: EventEmitter): void {
    const fn = (ev: AlarmEvent): void => this.onAlarm(ev);
    emitter.on('alarm', fn);
    this.sources.push({ emitter, fn });
  }

  activeAlarms(): ActiveAlarm[] {
    return [...this.active.values()];
  }

  onAlarm(ev: AlarmEvent): void {
    const key = `${ev.kind}/${ev.vmUuid ?? ''}`;
    if (ev.raised) this.active.set(key, { kind: ev.kind, vmUuid: ev.vmUuid, detail: ev.detail, sinceMs: ev.atMs });
    else this.active.delete(key);
    this.opts.logger.warn({ alarm: ev.kind, raised: ev.raised, vmUuid: ev.vmUuid, detail: ev.detail }, 'alarm');
    const target = this.opts.target();
    if (target === null) return;
    const p = this.sendTrap(target, ev).finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  /** Sends one trap; resolves either way (a failure is counted and logged, never thrown). */
  sendTrap(target: TrapTarget, ev: AlarmEvent): Promise<void> {
    const base = VRG_TRAP_OID;
    const kindNo = ALARM_KIND_NUMBERS[ev.kind];
    const str = snmp.ObjectType.OctetString;
    const varbinds = [
      { oid: `${base}.3.1`, type: str, value: ev.kind },
      { oid: `${base}.3.2`, type: str, value: ev.vmUuid ?? '' },
      { oid: `${base}.3.3`, type: str, value: ev.detail },
      { oid: `${base}.3.4`, type: str, value: this.opts.gatewayId },
      { oid: `${base}.3.5`, type: snmp.ObjectType.Integer, value: ev.raised ? 1 : 0 },
    ];
    return new Promise<void>((resolve) => {
      const session = snmp.createSession(target.ip, this.opts.community ?? 'public',
        { version: snmp.Version2c, trapPort: target.port, timeout: trapTimeoutMs, retries: 0 });
      let settled = false;
      // A v2c trap is unacknowledged: net-snmp answers once sent, but a socket error may leave it silent.
      const timer = setTimeout(() => done(new Error(`no send confirmation within ${trapTimeoutMs} ms`)), trapTimeoutMs);
      timer.unref();
      const done = (err: Error | null): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          this.stats.failed++;
          this.opts.logger.error({ err: err.message, target }, 'SNMP trap not sent');
        } else this.stats.sent++;
        try {
          session.close();
        } catch {
          // already closed after a socket error
        }
        resolve();
      };
      session.on('error', done);
      session.trap(`${base}.${ev.raised ? 1 : 2}.${kindNo}`, varbinds, done);
    });
  }

  /** Stops listening; waits for traps in flight. */
  async close(): Promise<void> {
    for (const { emitter, fn } of this.sources.splice(0)) emitter.off('alarm', fn);
    await Promise.all([...this.pending]);
  }
}
