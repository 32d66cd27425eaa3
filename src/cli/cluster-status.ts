import { EtcdRegistry, type MemberRecord, type OwnerRecord } from '../cluster/etcd-registry.js';

// `vrg cluster status --etcd URL[,URL...] --site NAME [--json]`: a site's members and VM placement as etcd holds
// them (src/cluster/etcd-registry.ts), read without joining: members with their load and draining flag, each
// VM's owner and fencing token with the state and lag its owner last reported, and the VMs nobody owns.

export interface ClusterStatus {
  site: string;
  members: MemberRecord[];
  vms: Array<{ vmUuid: string; owner: string | null; token: number | null; state: string | null; lagBytes: number | null; lagSeconds: number | null }>;
}

export async function readClusterStatus(endpoints: string[], site: string): Promise<ClusterStatus> {
  // A reader's identity: it never joins, so it holds no lease and owns nothing.
  const reg = new EtcdRegistry({ endpoints, site, member: { id: 'vrg-cluster-status', role: 'reader', apiUrl: '', linkHost: '', linkPort: 0 } });
  try {
    const [members, owners, vms] = await Promise.all([reg.members(), reg.owners(), reg.listVms()]);
    const byVm = new Map<string, OwnerRecord>(owners.map((o) => [o.vmUuid, o]));
    const ids = [...new Set([...vms.map((v) => v.vmUuid), ...byVm.keys()])].sort();
    return {
      site,
      members: [...members].sort((a, b) => a.id.localeCompare(b.id)),
      vms: ids.map((vmUuid) => {
        const owner = byVm.get(vmUuid);
        const report = members.find((m) => m.id === owner?.memberId)?.vms?.[vmUuid];
        return { vmUuid, owner: owner?.memberId ?? null, token: owner?.token ?? null,
          state: report?.state ?? null, lagBytes: report?.lagBytes ?? null, lagSeconds: report?.lagSeconds ?? null };
      }),
    };
  } finally {
    await reg.close();
  }
}

export function formatClusterStatus(s: ClusterStatus, nowMs: number): string {
  const lines = [`site ${s.site}: ${s.members.length} members, ${s.vms.length} VMs, ${s.vms.filter((v) => v.owner === null).length} unowned`];
  lines.push(`${'MEMBER'.padEnd(24)} ${'ROLE'.padEnd(10)} ${'VMS'.padStart(5)} ${'MB/s'.padStart(8)} DRAINING ${'SEEN s'.padStart(7)}  API`);
  for (const m of s.members) {
    lines.push(`${m.id.padEnd(24)} ${m.role.padEnd(10)} ${String(s.vms.filter((v) => v.owner === m.id).length).padStart(5)} ` +
      `${(m.writeRateBytesPerSec / 1e6).toFixed(1).padStart(8)} ${(m.draining ? 'yes' : 'no').padEnd(8)} ` +
      `${((nowMs - m.updatedAtMs) / 1000).toFixed(1).padStart(7)}  ${m.apiUrl}`);
  }
  lines.push('', `${'VM'.padEnd(38)} ${'OWNER'.padEnd(24)} ${'TOKEN'.padStart(8)} ${'STATE'.padEnd(8)} ${'LAG MiB'.padStart(9)} ${'LAG s'.padStart(7)}`);
  for (const v of s.vms) {
    lines.push(`${v.vmUuid.padEnd(38)} ${(v.owner ?? '-').padEnd(24)} ${String(v.token ?? '-').padStart(8)} ${(v.state ?? '-').padEnd(8)} ` +
      `${(v.lagBytes === null ? '-' : (v.lagBytes / 1048576).toFixed(1)).padStart(9)} ${(v.lagSeconds === null ? '-' : v.lagSeconds.toFixed(1)).padStart(7)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Prints the status; the exit code (0). etcd unreachable: CLUSTER_UNAVAILABLE, which main prints. */
export async function runClusterStatus(o: { endpoints: string[]; site: string; json: boolean }): Promise<number> {
  const status = await readClusterStatus(o.endpoints, o.site);
  process.stdout.write(o.json ? `${JSON.stringify(status)}\n` : formatClusterStatus(status, Date.now()));
  return 0;
}
