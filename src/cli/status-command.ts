import type { VmFigures } from '../api/replication-figures.js';
import { apiSession } from './api-command.js';

// `vrg status --url URL --password P [--user admin] [--json] [--watch] [--interval S] [--count N]`: a gateway's
// VMs from its REST API (GET /vmreplication, the same lag model as /metrics): per VM its side, state, mode,
// lag in bytes and seconds (RPO), intake throughput, compression ratio on the wire and the link's RTT.
// Throughput comes from two samples `--interval` seconds apart; --watch refreshes in place on a terminal
// (one table after another otherwise) until interrupted or --count tables; --json prints one JSON
// document per sample for scripts.

export interface StatusOptions {
  url: string;
  user: string;
  password: string;
  json: boolean;
  watch: boolean;
  intervalMs: number;
  /** Tables (or JSON documents) to print with --watch; default until interrupted. */
  count?: number;
}

export interface VmStatusRow extends VmFigures {
  /** Intake (source) or apply (target) bytes per second between the last two samples. */
  bytesPerSec: number;
  /** Plain bytes shipped per wire byte (compression), null before anything was sent. */
  ratio: number | null;
}

const MiB = 1024 * 1024;

export function rows(before: VmFigures[], after: VmFigures[], dtMs: number): VmStatusRow[] {
  return after.map((v) => {
    const b = before.find((x) => x.vmUuid === v.vmUuid && x.role === v.role);
    const moved = (f: (x: VmFigures) => number) => (b === undefined || dtMs <= 0 ? 0 : Math.max(0, f(v) - f(b)) / (dtMs / 1000));
    return {
      ...v,
      bytesPerSec: v.role === 'source' ? moved((x) => x.intakeBytes) : moved((x) => x.appliedBytes),
      ratio: v.sentWireBytes > 0 ? v.sentPlainBytes / v.sentWireBytes : null,
    };
  });
}

export function table(rs: VmStatusRow[]): string {
  const head = ['VM', 'SIDE', 'STATE', 'MODE', 'BEHIND MiB', 'RPO s', 'MB/s', 'RATIO', 'LINK', 'RTT ms'];
  const body = rs.map((r) => [
    r.vmUuid, r.role, r.state ?? '-', r.mode ?? '-', (r.bytesBehind / MiB).toFixed(1), r.secondsBehind.toFixed(1),
    (r.bytesPerSec / 1e6).toFixed(1), r.ratio === null ? '-' : r.ratio.toFixed(2), r.linkUp ? 'up' : 'down',
    r.rttMs === null ? '-' : r.rttMs.toFixed(2),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(head), ...body.map(line), ...(rs.length === 0 ? ['(no VM on this gateway)'] : [])].join('\n');
}

export async function runStatus(o: StatusOptions, out: NodeJS.WriteStream = process.stdout): Promise<number> {
  const api = await apiSession(o.url, o.user, o.password);
  const sample = async () => ({ atMs: Date.now(), vms: ((await api.call('GET', 'vmreplication')) as { vms: VmFigures[] }).vms });
  let before = await sample();
  let printed = 0;
  const limit = o.watch ? o.count ?? Number.POSITIVE_INFINITY : 1;
  let stop = false;
  const onInt = (): void => { stop = true; };
  process.once('SIGINT', onInt);
  try {
    while (!stop && printed < limit) {
      await new Promise((r) => setTimeout(r, o.intervalMs));
      const after = await sample();
      const rs = rows(before.vms, after.vms, after.atMs - before.atMs);
      if (o.json) out.write(`${JSON.stringify({ url: o.url, atMs: after.atMs, vms: rs })}\n`);
      else out.write(`${o.watch && out.isTTY ? '\x1b[H\x1b[2J' : ''}${o.watch ? `${new Date(after.atMs).toISOString()}  ${o.url}\n` : ''}${table(rs)}\n`);
      printed++;
      before = after;
    }
  } finally {
    process.off('SIGINT', onInt);
    await api.close();
  }
  return 0;
}
