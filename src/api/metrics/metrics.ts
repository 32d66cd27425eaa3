import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { ProductionStatus } from '../../replication/source/production-gateway.js';
import type { DrStatus } from '../../replication/target/dr-gateway.js';
import type { GatewayFigures } from '../replication-figures.js';
import type { LagAlarmKind } from '../../replication/source/lag-alarms.js';

// A gateway's Prometheus metrics (prom-client), read from the same status the REST and JSON-RPC faces and
// `vrg status` report (replication-figures.ts): one lag model (VmReplicationStatus: writes, bytes and seconds
// behind, from ProtectedVm) behind all of them. Every metric is computed at scrape time from that status; nothing is
// counted twice. Names follow Prometheus' conventions: base units, `_total` on counters, `_seconds`,
// `_bytes`; per VM labelled `vm` (its uuid). A gateway holds the source side of some VMs and the target side
// of others (after a failover), so both sets can appear on one gateway.

const states = ['queue', 'cbt', 'check'] as const;
const modes = ['async', 'sync', 'snapshots'] as const;
const lagAlarmKinds: readonly LagAlarmKind[] = ['rpoExceeded', 'journalHigh'];

type Read = () => GatewayFigures;

function gauge(reg: Registry, name: string, help: string, labelNames: string[], collect: (g: Gauge) => void): void {
  reg.registerMetric(new Gauge({ name, help, labelNames, registers: [], collect() { this.reset(); collect(this); } }));
}

/** A counter whose value is a running total the engine keeps: set at each scrape (it only grows). */
function counter(reg: Registry, name: string, help: string, labelNames: string[], values: () => Array<[Record<string, string>, number]>): void {
  reg.registerMetric(new Counter({
    name, help, labelNames, registers: [],
    collect() {
      this.reset();
      for (const [labels, v] of values()) this.inc(labels, v);
    },
  }));
}

function sourceVmMetrics(reg: Registry, read: Read): void {
  const vms = () => read().source?.vms ?? [];
  gauge(reg, 'vrg_vm_state', 'Protection state of the VM (1 for the state it is in): queue, cbt or check', ['vm', 'state'], (g) => {
    for (const v of vms()) for (const s of states) g.set({ vm: v.vmUuid, state: s }, v.replication.state === s ? 1 : 0);
  });
  gauge(reg, 'vrg_vm_mode', 'Replication mode of the VM (1 for its mode): async, sync or snapshots', ['vm', 'mode'], (g) => {
    for (const v of vms()) for (const m of modes) g.set({ vm: v.vmUuid, mode: m }, v.replication.mode === m ? 1 : 0);
  });
  const perVm = (name: string, help: string, f: (v: ProductionStatus['vms'][number]) => number) =>
    gauge(reg, name, help, ['vm'], (g) => { for (const v of vms()) g.set({ vm: v.vmUuid }, f(v)); });
  gauge(reg, 'vrg_vm_alarm', 'Lag alarms of the VM (1 while raised): rpoExceeded, journalHigh', ['vm', 'kind'], (g) => {
    for (const v of vms()) for (const k of lagAlarmKinds) g.set({ vm: v.vmUuid, kind: k }, v.lagAlarms.includes(k) ? 1 : 0);
  });
  perVm('vrg_vm_paused', '1 while replication of the VM is paused by an operator', (v) => (v.replication.pausedManual ? 1 : 0));
  perVm('vrg_vm_sync_degraded', '1 while a Sync VM acknowledges without DR (degraded)', (v) => (v.replication.syncDegraded ? 1 : 0));
  perVm('vrg_vm_writes_behind', 'Journaled writes not yet durable on DR', (v) => v.replication.writesBehind);
  perVm('vrg_vm_bytes_behind', 'Bytes of journaled writes not yet durable on DR', (v) => v.replication.bytesBehind);
  perVm('vrg_vm_seconds_behind', 'Age of the oldest write not yet durable on DR (RPO), 0 when caught up', (v) => v.replication.secondsBehind);
  perVm('vrg_vm_acked_seq', 'Last journal seq DR acknowledged durable', (v) => v.replication.ackedSeq);
  perVm('vrg_vm_journal_used_bytes', 'Journal bytes in use', (v) => v.journalUsedBytes);
  perVm('vrg_vm_journal_capacity_bytes', 'Journal capacity', (v) => v.journalCapacityBytes);
  perVm('vrg_vm_resync_done_bytes', 'Bytes of the running resync or initial sync done (0 when none runs)', (v) => v.replication.resync?.bytesDone ?? 0);
  perVm('vrg_vm_resync_total_bytes', 'Bytes of the running resync or initial sync in all (0 when none runs)', (v) => v.replication.resync?.bytesTotal ?? 0);
  perVm('vrg_vm_resync_rate_bytes_per_second', 'Rate of the running resync', (v) => v.replication.resync?.rateBytesPerSec ?? 0);
  perVm('vrg_vm_resync_eta_seconds', 'Time the running resync still needs at its rate (-1 when unknown or none runs)', (v) => v.replication.resync?.etaSec ?? -1);
  perVm('vrg_vm_check_regions_checked', 'Regions the last consistency check compared', (v) => v.replication.check?.regionsChecked ?? 0);
  // Two gauges, not a summary: the percentiles come from the intake's histogram since its last reset.
  perVm('vrg_vm_write_latency_p50_seconds', 'Intake write acknowledgement latency, p50 (journaled groups, since the last latency reset)',
    (v) => (v.latency['group -> acknowledged']?.p50Ms ?? 0) / 1000);
  perVm('vrg_vm_write_latency_p99_seconds', 'Intake write acknowledgement latency, p99 (journaled groups, since the last latency reset)',
    (v) => (v.latency['group -> acknowledged']?.p99Ms ?? 0) / 1000);
  perVm('vrg_vm_check_regions_differing', 'Regions the last consistency check found differing', (v) => v.replication.check?.regionsDiffering ?? 0);
  perVm('vrg_vm_check_regions_repaired', 'Regions the last consistency check repaired', (v) => v.replication.check?.regionsRepaired ?? 0);
  perVm('vrg_vm_check_last_timestamp_seconds', 'When the last consistency check ended (Unix time, 0: never)', (v) => (v.replication.check?.atMs ?? 0) / 1000);
  const each = (f: (v: ProductionStatus['vms'][number]) => number) => () => vms().map((v): [Record<string, string>, number] => [{ vm: v.vmUuid }, f(v)]);
  counter(reg, 'vrg_vm_intake_writes_total', 'Writes the intake acknowledged', ['vm'], each((v) => v.writes));
  counter(reg, 'vrg_vm_intake_bytes_total', 'Bytes the intake acknowledged', ['vm'], each((v) => v.bytesIn));
  counter(reg, 'vrg_vm_sent_plain_bytes_total', 'Plain bytes of the data records shipped to DR', ['vm'], each((v) => v.plainBytesSent));
  counter(reg, 'vrg_vm_sent_wire_bytes_total', 'Bytes of the data records shipped to DR as stored on the wire (compressed)', ['vm'], each((v) => v.bytesSent));
  counter(reg, 'vrg_vm_transitions_total', 'Protection state transitions', ['vm', 'from', 'to'], () => vms().flatMap((v) =>
    Object.entries(v.replication.transitions).map(([key, n]): [Record<string, string>, number] => {
      const [from = '', to = ''] = key.split('->').map((s) => s.trim());
      return [{ vm: v.vmUuid, from, to }, n];
    })));
}

function targetVmMetrics(reg: Registry, read: Read): void {
  const vms = () => read().target?.vms ?? [];
  const perVm = (name: string, help: string, f: (v: DrStatus['vms'][number]) => number) =>
    gauge(reg, name, help, ['vm'], (g) => { for (const v of vms()) g.set({ vm: v.vmUuid }, f(v)); });
  perVm('vrg_target_durable_seq', 'Target side: last seq durable in the DR log (acknowledged to the source)', (v) => v.durableSeq);
  perVm('vrg_target_applied_seq', 'Target side: last seq applied to the target volumes', (v) => v.appliedSeq);
  perVm('vrg_target_log_used_bytes', 'Target side: DR log bytes in use', (v) => v.logUsedBytes);
  perVm('vrg_target_log_capacity_bytes', 'Target side: DR log capacity', (v) => v.logCapacityBytes);
  perVm('vrg_target_apply_behind_records', 'Target side: records durable in the DR log and not yet applied', (v) => Math.max(0, v.durableSeq - v.appliedSeq));
  perVm('vrg_target_durable_latency_p50_seconds', 'Target side: a batch from its frame\'s arrival to durable in the DR log, p50', (v) => v.durableLatency.p50Ms / 1000);
  perVm('vrg_target_durable_latency_p99_seconds', 'Target side: a batch from its frame\'s arrival to durable in the DR log, p99', (v) => v.durableLatency.p99Ms / 1000);
  counter(reg, 'vrg_target_applied_bytes_total', 'Target side: bytes applied to the target volumes', ['vm'],
    () => vms().map((v): [Record<string, string>, number] => [{ vm: v.vmUuid }, v.bytesApplied]));
}

function linkMetrics(reg: Registry, read: Read): void {
  gauge(reg, 'vrg_link_up', '1 while the link to the peer gateway is connected', ['side'], (g) => {
    const f = read();
    if (f.source) g.set({ side: 'source' }, f.source.connected ? 1 : 0);
    if (f.target) g.set({ side: 'target' }, f.target.connected ? 1 : 0);
  });
  gauge(reg, 'vrg_link_rtt_seconds', 'Round-trip time of the link to the peer (heartbeats), while connected', [], (g) => {
    const rtt = read().source?.rttMs;
    if (rtt !== null && rtt !== undefined) g.set(rtt / 1000);
  });
}

/**
 * `read` once per scrape, not once per metric: prom-client calls every collect() in the same turn, so the
 * figures are kept until the next turn.
 */
function oncePerScrape(read: Read): Read {
  let cached: GatewayFigures | null = null;
  return () => {
    if (cached === null) {
      cached = read();
      setImmediate(() => { cached = null; });
    }
    return cached;
  };
}

/** A registry with the gateway's metrics and prom-client's process defaults (CPU, RSS, GC, event-loop lag). */
export function gatewayRegistry(readNow: Read, labels: { gateway: string; role: string }): Registry {
  const read = oncePerScrape(readNow);
  const reg = new Registry();
  reg.setDefaultLabels(labels);
  collectDefaultMetrics({ register: reg });
  // prom-client names these gauges with `_total`, which Prometheus reserves for counters (promtool refuses
  // them); the same figures stay, by type, in nodejs_active_handles / _requests / _resources.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) reg.removeSingleMetric(name);
  sourceVmMetrics(reg, read);
  targetVmMetrics(reg, read);
  linkMetrics(reg, read);
  return reg;
}
