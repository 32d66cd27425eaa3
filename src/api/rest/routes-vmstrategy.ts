import type { FastifyInstance } from 'fastify';
import { ApiErrorNumber } from '../auth/error-codes.js';
import type { StoredVm } from '../store/api-store.js';
import { VolStatus, type ApiService } from './api-service.js';
import { restError, UUID_RE } from './rest-errors.js';
import type { RestContext } from './rest-context.js';
import { vmStrategyBody, vmStrategyQuery } from './schemas.js';

// 004 §3.8: POST /vmstrategy (the body shape of this gateway's role, see vm-strategy.ts) and GET /vmstrategy.
//
// GET query, as the document says: `limit` and `offset` go together; a limit above 100 is served as
// limit=100, offset=0; `vmUuid` (repeatable) excludes both the paging and `faultVms`; faultVms=1 lists the
// faulty VMs only (target failed or not openable, stream stopped on a fault), faultVms=0 all. Without
// paging the first 100 are listed. 10440308 when the gateway has no VM at all; with vmUuid, 10440401 for a
// malformed one and 10440400 for an unknown one.

export const PAGE_MAX = 100;

interface Query {
  limit?: string;
  offset?: string;
  faultVms?: string;
  vmUuid?: string | string[];
}

function nonNegInt(v: string, name: string): number {
  if (!/^\d{1,9}$/.test(v)) throw restError(ApiErrorNumber.INVALID_PARAMETER, `${name} must be a non-negative integer`);
  return Number(v);
}

/** The page to list: [offset, offset + limit). */
export function pageOf(q: Query): { offset: number; limit: number } {
  if ((q.limit === undefined) !== (q.offset === undefined)) throw restError(ApiErrorNumber.INVALID_PARAMETER, 'limit and offset go together');
  if (q.limit === undefined || q.offset === undefined) return { offset: 0, limit: PAGE_MAX };
  const [limit, offset] = [nonNegInt(q.limit, 'limit'), nonNegInt(q.offset, 'offset')];
  if (limit === 0) throw restError(ApiErrorNumber.INVALID_PARAMETER, 'limit must be at least 1');
  return limit > PAGE_MAX ? { offset: 0, limit: PAGE_MAX } : { offset, limit };
}

function entryOf(service: ApiService, vm: StoredVm): Record<string, unknown> {
  const vols = vm.volList.map((v) => ({ volUuid: v.volUuid, seqNum: v.seqNum, volumeUrl: v.volumeUrl ?? v.url, sizeBytes: v.sizeBytes }));
  if (vm.flag === 1) {
    const mode = service.gw.vmStatus(vm.vmUuid)?.mode ?? vm.mode;
    return { flag: 1, vmUuid: vm.vmUuid, vmId: vm.vmId, vmName: vm.vmName, compressOption: vm.compressOption,
      encryptOption: vm.encryptOption, mode, volList: vols };
  }
  const volStatus = service.isFaulty(vm.vmUuid) ? VolStatus.BAD_PATH : VolStatus.NORMAL;
  return {
    flag: 2, vmUuid: vm.vmUuid, vmId: vm.vmId, vmName: vm.vmName, hostUrn: vm.hostUrn, agentIp: vm.agentIp, agentPort: vm.agentPort,
    volList: vm.volList.map((v, i) => ({ ...vols[i], dstVolDsUrn: v.dsUrn, dstVolType: v.volType, volStatus, drExtParams: v.drExtParams })),
  };
}

/** Every VM of the gateway: the API's, then any from the config file (in the stored form). */
function allVms(service: ApiService): StoredVm[] {
  const stored = service.store.state.vms;
  const ids = new Set(stored.map((v) => v.vmUuid));
  const flag = service.role === 'production' ? 1 : 2;
  const fromConfig: StoredVm[] = service.gw.vmConfigs().filter((c) => !ids.has(c.vmUuid)).map((c) => ({
    flag, vmUuid: c.vmUuid, vmName: c.vmName, compressOption: c.compressOption, encryptOption: c.encryptOption,
    volList: c.volumes.map((v) => ({ volUuid: v.volUuid, url: v.url, sizeBytes: v.sizeBytes })),
  }));
  return [...stored, ...fromConfig];
}

export function listVms(service: ApiService, q: Query): Array<Record<string, unknown>> {
  const vms = allVms(service);
  if (q.vmUuid !== undefined) {
    if (q.limit !== undefined || q.offset !== undefined || q.faultVms !== undefined) {
      throw restError(ApiErrorNumber.INVALID_PARAMETER, 'vmUuid excludes limit, offset and faultVms');
    }
    return [q.vmUuid].flat().map((id) => {
      if (!UUID_RE.test(id)) throw restError(ApiErrorNumber.BAD_VM_UUID, `${id} is not a UUID`);
      const vm = vms.find((v) => v.vmUuid === id);
      if (vm === undefined) throw restError(ApiErrorNumber.NO_SUCH_VM, `no VM ${id}`);
      return entryOf(service, vm);
    });
  }
  if (q.faultVms !== undefined && q.faultVms !== '0' && q.faultVms !== '1') throw restError(ApiErrorNumber.INVALID_PARAMETER, 'faultVms must be 0 or 1');
  const page = pageOf(q);
  if (vms.length === 0) throw restError(ApiErrorNumber.NO_VMS, 'no VM is configured');
  const chosen = q.faultVms === '1' ? vms.filter((v) => service.isFaulty(v.vmUuid)) : vms;
  return chosen.slice(page.offset, page.offset + page.limit).map((vm) => entryOf(service, vm));
}

export function registerVmStrategyRoutes(api: FastifyInstance, ctx: RestContext): void {
  api.post('/vmstrategy', {
    schema: { summary: 'Protect a VM (production) or bind its target volumes (DR)', body: vmStrategyBody },
  }, async (req, reply) => {
    if (req.body === undefined) throw restError(ApiErrorNumber.INVALID_PARAMETER, 'a JSON body is required');
    await ctx.service.addVm(req.body as Record<string, unknown>);
    return reply.send();
  });

  api.get('/vmstrategy', {
    schema: { summary: 'VM configurations: ?limit&offset, ?vmUuid=, ?faultVms=1', querystring: vmStrategyQuery },
  }, async (req) => ({ vmList: listVms(ctx.service, req.query as Query) }));
}
