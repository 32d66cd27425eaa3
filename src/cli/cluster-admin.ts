import { readFile } from 'node:fs/promises';
import { EtcdRegistry } from '../cluster/etcd-registry.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import { parseVmSettings, type VmConfig } from '../replication/config.js';

// `vrg cluster protect|unprotect|drain` (cluster mode, src/cluster): an operator's writes to a site in etcd,
// made without joining it. protect stores VM settings (a file with one VM or a list, the config file's "vms"
// shape; all are checked before any is written), unprotect removes one, drain asks a member to move its VMs
// away (--off: to take VMs again); the members act on it.

function reader(endpoints: string[], site: string): EtcdRegistry {
  return new EtcdRegistry({ endpoints, site, member: { id: 'vrg-cluster-admin', role: 'reader', apiUrl: '', linkHost: '', linkPort: 0 } });
}

async function withSite<T>(endpoints: string[], site: string, work: (r: EtcdRegistry) => Promise<T>): Promise<T> {
  const r = reader(endpoints, site);
  try {
    return await work(r);
  } finally {
    await r.close();
  }
}

export async function readVmFile(file: string): Promise<VmConfig[]> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw vrgError(ErrorCode.CONFIG_INVALID, `cannot read VM settings ${file}: ${(err as Error).message}`, { file }, err);
  }
  const list = Array.isArray(doc) ? doc : [doc];
  const vms = list.map((v, i) => parseVmSettings(v, `${file}[${i}]`));
  if (new Set(vms.map((v) => v.vmUuid)).size !== vms.length) throw vrgError(ErrorCode.CONFIG_INVALID, `${file}: a vmUuid appears twice`, { file });
  return vms;
}

export async function runClusterProtect(o: { endpoints: string[]; site: string; file: string }): Promise<number> {
  const vms = await readVmFile(o.file);
  await withSite(o.endpoints, o.site, async (r) => {
    for (const vm of vms) await r.putVm(vm.vmUuid, vm);
  });
  process.stdout.write(`site ${o.site}: ${vms.length} VM${vms.length === 1 ? '' : 's'} stored\n`);
  return 0;
}

export async function runClusterUnprotect(o: { endpoints: string[]; site: string; vmUuid: string }): Promise<number> {
  await withSite(o.endpoints, o.site, (r) => r.deleteVm(o.vmUuid));
  process.stdout.write(`site ${o.site}: VM ${o.vmUuid} removed\n`);
  return 0;
}

export async function runClusterDrain(o: { endpoints: string[]; site: string; member: string; off: boolean }): Promise<number> {
  await withSite(o.endpoints, o.site, (r) => r.requestDrain(o.member, !o.off));
  process.stdout.write(`site ${o.site}: member ${o.member} ${o.off ? 'takes VMs again' : 'drains'}\n`);
  return 0;
}
