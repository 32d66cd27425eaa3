import type { DrSite } from '../replication/dr-site.js';
import type { ProductionSite } from '../replication/production-site.js';
import { ProductionGateway, type ProductionStatus } from '../replication/source/production-gateway.js';
import type { DrGateway, DrStatus } from '../replication/target/dr-gateway.js';

// The figures every management face reports, from one lag model (VmReplicationStatus, kept by ProtectedVm):
// `/metrics`, REST GET /vmreplication, and `vrg status` (which reads that route). A gateway holds the source
// side of some VMs and the target side of others (after a failover), so both appear.

/** What a gateway holds now: its source VMs and its target VMs (either may be absent). */
export interface GatewayFigures {
  source: ProductionStatus | null;
  target: DrStatus | null;
}

export function gatewayFigures(site: DrSite | null, prodSite: ProductionSite | null, gw?: ProductionGateway | DrGateway): GatewayFigures {
  if (site !== null) {
    const s = site.status();
    return { source: s.promoted, target: s };
  }
  if (prodSite !== null) {
    const s = prodSite.status();
    return { source: s, target: s.targets };
  }
  if (gw instanceof ProductionGateway) return { source: gw.status(), target: null };
  return { source: null, target: gw?.status() ?? null };
}

/** One VM as GET /vmreplication and `vrg status` show it. Bytes are plain (as written) unless named wire. */
export interface VmFigures {
  vmUuid: string;
  role: 'source' | 'target';
  /** Source side: queue, cbt or check; target side: its staging state or null. */
  state: string | null;
  mode: string | null;
  writesBehind: number;
  bytesBehind: number;
  /** RPO: the age of the oldest write not yet durable on DR (0 when caught up). */
  secondsBehind: number;
  /** Source: last seq DR acknowledged; target: last seq durable in the DR log. */
  ackedSeq: number;
  /** Running totals (a reader's two samples give throughput). */
  intakeBytes: number;
  sentPlainBytes: number;
  sentWireBytes: number;
  appliedBytes: number;
  linkUp: boolean;
  rttMs: number | null;
  resync: { bytesDone: number; bytesTotal: number; rateBytesPerSec: number; etaSec: number | null } | null;
}

export function vmFigures(f: GatewayFigures): VmFigures[] {
  const rows: VmFigures[] = [];
  for (const v of f.source?.vms ?? []) {
    const r = v.replication;
    rows.push({
      vmUuid: v.vmUuid, role: 'source', state: r.state, mode: r.mode, writesBehind: r.writesBehind, bytesBehind: r.bytesBehind,
      secondsBehind: r.secondsBehind, ackedSeq: r.ackedSeq, intakeBytes: v.bytesIn, sentPlainBytes: v.plainBytesSent,
      sentWireBytes: v.bytesSent, appliedBytes: 0, linkUp: f.source!.connected, rttMs: f.source!.rttMs, resync: r.resync,
    });
  }
  for (const v of f.target?.vms ?? []) {
    rows.push({
      vmUuid: v.vmUuid, role: 'target', state: v.state, mode: null, writesBehind: 0, bytesBehind: 0, secondsBehind: 0,
      ackedSeq: v.durableSeq, intakeBytes: 0, sentPlainBytes: 0, sentWireBytes: 0, appliedBytes: v.bytesApplied,
      linkUp: f.target!.connected, rttMs: null, resync: null,
    });
  }
  return rows;
}
