import { networkInterfaces } from 'node:os';
import type { FastifyInstance } from 'fastify';
import { ApiErrorNumber } from '../auth/error-codes.js';
import { field } from './vm-strategy.js';
import { ipv4Number, isIpv4, isNetmask, isPort, restError, UUID_RE } from './rest-errors.js';
import type { NetAddress, NetAddresses, RestContext } from './rest-context.js';
import { deleteVmBody, modMngNetBody, vmFailoverBody, vmSplitBrainBody, trapInfoBody, trapInfoReply, vmUuidParams, vrgMapBody, vrgMapReply } from './schemas.js';

// 004 §3.2-§3.7 and §3.9: alarm server, gateway status, networks, a VM's DR status, pairing, management network.

export interface NetInfo {
  type: 0 | 1 | 2;
  ip: string;
  port: number;
  gateway: string;
  netmask: string;
}

/** The netmask of the interface holding `ip` ("" when no interface has it, e.g. a wildcard listener). */
function netmaskOf(ip: string): string {
  for (const addrs of Object.values(networkInterfaces())) {
    const a = addrs?.find((x) => x.family === 'IPv4' && x.address === ip);
    if (a) return a.netmask;
  }
  return '';
}

/**
 * GET /netinfos: 0 the management (REST) listener, 1 the NBD intake (production) or replica exports (DR),
 * 2 the peer link (DR: its listener; production: the DR endpoint it dials). Only type 0 has a gateway
 * (the one POST /modmngnet stored, else ""). 10440305 when the management listener has no address.
 */
export function netInfos(a: NetAddresses, mngGateway: string): NetInfo[] {
  if (a.management === null) throw restError(ApiErrorNumber.NO_MGMT_NET, 'the management listener has no address');
  const one = (type: 0 | 1 | 2, n: NetAddress): NetInfo => ({
    type, ip: n.ip, port: n.port, gateway: type === 0 ? mngGateway : '', netmask: netmaskOf(n.ip),
  });
  const out = [one(0, a.management)];
  if (a.intake) out.push(one(1, a.intake));
  if (a.peer) out.push(one(2, a.peer));
  return out;
}

function checkIpPort(ip: unknown, port: unknown): asserts ip is string {
  if (!isIpv4(ip)) throw restError(ApiErrorNumber.BAD_IP, 'not an IPv4 address');
  if (!isPort(port)) throw restError(ApiErrorNumber.BAD_PORT, 'port must be an integer in [1, 65535]');
}

export function registerGatewayRoutes(api: FastifyInstance, ctx: RestContext): void {
  const { service } = ctx;
  api.post('/trapinfo', { schema: { summary: 'Set the SNMP trap server; ip 0.0.0.0 deletes it', body: trapInfoBody } }, async (req, reply) => {
    const b = req.body as { ip: string; port: number };
    if (b.ip === '0.0.0.0') {
      await service.store.update((s) => { s.trap = null; });
      return reply.send();
    }
    checkIpPort(b.ip, b.port);
    await service.store.update((s) => { s.trap = { ip: b.ip, port: b.port }; });
    return reply.send();
  });

  api.get('/trapinfo', { schema: { summary: 'The SNMP trap server', response: { 200: trapInfoReply } } }, async () => {
    const trap = service.store.state.trap;
    if (trap === null) throw restError(ApiErrorNumber.NO_TRAP_SERVER, 'no trap server is set');
    return trap;
  });

  api.get('/vrgstatus', {
    schema: { summary: 'Gateway status (1 normal, 2 abnormal) and journal capacity in KB (-1: no journal, DR side)' },
  }, async () => service.vrgStatus());

  api.get('/netinfos', { schema: { summary: 'Listening addresses: 0 management, 1 intake, 2 peer link' } }, async () => ({
    netinfos: netInfos(ctx.netAddresses(), service.store.state.mngNet?.gateway ?? ''),
  }));

  api.get('/vmdrstatus/:vmUuid', {
    schema: { summary: 'A VM\'s DR status: 1 queue, 2 CBT, 3 consistency check', params: vmUuidParams },
  }, async (req) => {
    const { vmUuid } = req.params as { vmUuid: string };
    if (!UUID_RE.test(vmUuid)) throw restError(ApiErrorNumber.BAD_VM_UUID, 'not a UUID');
    const st = service.vmRole(vmUuid);
    if (st === null) throw restError(ApiErrorNumber.NO_SUCH_VM, `no VM ${vmUuid}`);
    // role and generation (issue 14): which side of the VM this gateway is, and its epoch.
    return { status: st.status, role: st.role, generation: st.generation, splitBrain: st.splitBrain };
  });

  api.get('/vmreplication', {
    schema: { summary: 'Every VM on this gateway (source or target side): state, mode, lag (writes, bytes, seconds behind: the RPO), running totals, link' },
  }, async () => ({ vms: service.vmReplication() }));

  api.post('/vmfailover', {
    schema: {
      summary: 'Fail a VM over to this gateway, its target: "planned" moves it with its source\'s help (nothing resynced); ' +
        '"unplanned" (DR) promotes it at its last consistent image; ' +
        'type "test" exports a writable clone of that image as <volUuid>-test while replication goes on', body: vmFailoverBody,
    },
  }, async (req) => {
    const b = (req.body ?? {}) as { vmUuid?: string; type?: string };
    if (typeof b.vmUuid !== 'string' || !UUID_RE.test(b.vmUuid)) throw restError(ApiErrorNumber.BAD_VM_UUID, 'vmUuid must be a UUID');
    if (b.type === 'test') return service.testFailover(b.vmUuid);
    if (b.type !== 'unplanned' && b.type !== 'planned') throw restError(ApiErrorNumber.INVALID_PARAMETER, 'type must be "planned", "unplanned" or "test"');
    return service.failover(b.vmUuid, b.type);
  });

  api.post('/vmsplitbrain', {
    schema: { summary: 'Resolve a VM\'s split brain on the losing side: its writes since the split are discarded; the peer survives', body: vmSplitBrainBody },
  }, async (req, reply) => {
    const b = (req.body ?? {}) as { vmUuid?: string; survivor?: string };
    if (typeof b.vmUuid !== 'string' || !UUID_RE.test(b.vmUuid)) throw restError(ApiErrorNumber.BAD_VM_UUID, 'vmUuid must be a UUID');
    if (b.survivor !== 'peer') throw restError(ApiErrorNumber.INVALID_PARAMETER, 'survivor must be "peer": run this on the side whose writes lose');
    await service.discardDivergence(b.vmUuid);
    return reply.send();
  });

  api.post('/linkrekey', {
    schema: { summary: 'Rotate the link secret with the peer (production gateway): both sides store the next one, the link reconnects with it, the old one is refused from then on' },
  }, async (_req, reply) => reply.send(await service.rekeyLink()));

  api.delete('/vmfailover/:vmUuid', {
    schema: { summary: 'End a VM\'s test failover: its clone and the <volUuid>-test exports are discarded', params: vmUuidParams },
  }, async (req, reply) => {
    const { vmUuid } = req.params as { vmUuid: string };
    if (!UUID_RE.test(vmUuid)) throw restError(ApiErrorNumber.BAD_VM_UUID, 'not a UUID');
    await service.endTestFailover(vmUuid);
    return reply.send();
  });

  api.post('/vrgmap', { schema: { summary: 'Pair with the peer VRG (then poll GET)', body: vrgMapBody } }, async (req, reply) => {
    const b = req.body as Record<string, unknown>;
    const [ip, port] = [field(b, 'dstIp'), field(b, 'dstPort')];
    checkIpPort(ip, port);
    await service.setPeer(ip, port as number);
    return reply.send();
  });

  api.delete('/vrgmap', { schema: { summary: 'Unpair: disconnect and forget the peer' } }, async (_req, reply) => {
    await service.deletePeer();
    return reply.send();
  });

  api.get('/vrgmap', {
    schema: { summary: 'Pairing: 1 normal, 2 pairing, 3 pairing failed, 4 not paired, 5 link down', response: { 200: vrgMapReply } },
  }, async () => service.peerStatus());

  api.post('/vmstrategy/:vmUuid', {
    schema: { summary: 'Delete a VM\'s protection (delFlag 1 normal, 2 forced); answers its status before', params: vmUuidParams, body: deleteVmBody },
  }, async (req) => {
    const { vmUuid } = req.params as { vmUuid: string };
    if (!UUID_RE.test(vmUuid)) throw restError(ApiErrorNumber.BAD_VM_UUID, 'not a UUID');
    const flag = field((req.body ?? {}) as Record<string, unknown>, 'delFlag') ?? 1;
    return { drStatus: await service.removeVm(vmUuid, flag === 2) };
  });

  registerModMngNet(api, ctx);
}

/**
 * POST /modmngnet/: the gateway cannot change this host's network configuration (that is the operating
 * system's, and needs privileges the gateway does not run with): it validates the request, stores it (GET
 * /netinfos reports the gateway as type 0's) and answers it as the document says.
 */
function registerModMngNet(api: FastifyInstance, ctx: RestContext): void {
  api.post('/modmngnet', { schema: { summary: 'Management network (validated and stored)', body: modMngNetBody } }, async (req) => {
    const b = req.body as { newIp: string; newMask: string; newGateway: string };
    if (!isIpv4(b.newIp) || !isIpv4(b.newGateway)) throw restError(ApiErrorNumber.BAD_IP, 'newIp and newGateway must be IPv4 addresses');
    if (!isNetmask(b.newMask)) throw restError(ApiErrorNumber.INVALID_PARAMETER, 'newMask must be a contiguous netmask');
    const mask = ipv4Number(b.newMask);
    if ((ipv4Number(b.newIp) & mask) >>> 0 !== (ipv4Number(b.newGateway) & mask) >>> 0) {
      throw restError(ApiErrorNumber.INVALID_PARAMETER, 'newGateway is not in newIp\'s subnet');
    }
    await ctx.service.store.update((s) => { s.mngNet = { ip: b.newIp, netmask: b.newMask, gateway: b.newGateway }; });
    return { IP: b.newIp, netmask: b.newMask, netGateway: b.newGateway };
  });
}
