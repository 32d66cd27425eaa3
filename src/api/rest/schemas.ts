// JSON schemas of the request bodies and responses (004 §3). They drive validation (a wrong type answers
// 400 / 10440101 before the handler runs) and the OpenAPI document. Bodies allow additional properties
// because the document's examples mix spellings (dstIp / dst_ip ...): both are declared and accepted, and
// the handlers check the finer rules with the document's own numbers (10440301 bad IP, 10440302 bad port ...).

const str = { type: 'string', maxLength: 1024 } as const;
const int = { type: 'integer' } as const;

export const errorSchema = {
  type: 'object',
  properties: { errorCode: { type: 'string' }, errorDes: { type: 'string' } },
  required: ['errorCode'],
} as const;

export const trapInfoBody = {
  type: 'object',
  properties: { ip: { type: 'string', maxLength: 64 }, port: int },
  required: ['ip', 'port'],
} as const;

export const trapInfoReply = { type: 'object', properties: { ip: str, port: int } } as const;

export const passwordBody = {
  type: 'object',
  description: 'oldKey / newKey: 64-digit hex SHA-256 of the old and new password (the X-Auth-Key form)',
  properties: { oldKey: { type: 'string', maxLength: 64 }, newKey: { type: 'string', maxLength: 64 } },
  required: ['oldKey', 'newKey'],
} as const;

export const vrgMapBody = {
  type: 'object',
  description: 'dstIp or dst_ip, dstPort or dst_port',
  properties: { dstIp: { type: 'string', maxLength: 64 }, dst_ip: { type: 'string', maxLength: 64 }, dstPort: int, dst_port: int },
} as const;

export const vrgMapReply = { type: 'object', properties: { dstIp: str, dstPort: int, status: int } } as const;

const volume = {
  type: 'object',
  properties: {
    volUuid: str, vol_uuid: str, seqNum: int, seq_num: int, volumeUrl: str, volume_url: str, dsUrn: str, ds_urn: str,
    volType: str, vol_type: str, sizeBytes: int, size: int,
  },
} as const;

export const vmStrategyBody = {
  type: 'object',
  description: 'production: vmUuid, vmId, vmName, encryptOption, compressOption, mode, volList[{volUuid, seqNum, volumeUrl?, sizeBytes?}]; ' +
    'DR: vmUuid, vmId, vmName, hostUrn, agentIp, agentPort, volList[{volUuid, volumeUrl, dsUrn, volType, seqNum, drExtParams, sizeBytes?}]',
  properties: {
    vmUuid: str, vm_uuid: str, vmId: str, vm_id: str, vmName: str, vm_name: str,
    encryptOption: int, encrypt_option: int, compressOption: int, compress_option: int,
    mode: { type: 'string', enum: ['async', 'sync', 'snapshots'] },
    hostUrn: str, host_urn: str, agentIp: str, agent_ip: str, agentPort: int, agent_port: int,
    volList: { type: 'array', maxItems: 64, items: volume }, vol_list: { type: 'array', maxItems: 64, items: volume },
  },
} as const;

export const vmStrategyQuery = {
  type: 'object',
  properties: {
    limit: { type: 'string' }, offset: { type: 'string' }, faultVms: { type: 'string' },
    vmUuid: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, maxItems: 100 }] },
  },
  additionalProperties: false,
} as const;

export const deleteVmBody = {
  type: 'object',
  properties: { delFlag: { type: 'integer', enum: [1, 2] }, del_flag: { type: 'integer', enum: [1, 2] } },
} as const;

/** POST /vmfailover (issue 14): the VM and the kind of failover. */
export const vmFailoverBody = {
  type: 'object',
  description: 'type: "unplanned" (promote the VM here) or "test" (a writable clone; end it with DELETE /vmfailover/<vmUuid>)',
  properties: { vmUuid: { type: 'string', maxLength: 128 }, type: { type: 'string', maxLength: 32 } },
  required: ['vmUuid', 'type'],
} as const;

/** POST /vmsplitbrain: run on the side whose writes lose; the peer survives. */
export const vmSplitBrainBody = {
  type: 'object',
  properties: { vmUuid: { type: 'string', maxLength: 128 }, survivor: { type: 'string', maxLength: 16 } },
  required: ['vmUuid', 'survivor'],
} as const;

export const modMngNetBody = {
  type: 'object',
  properties: { newIp: { type: 'string', maxLength: 64 }, newMask: { type: 'string', maxLength: 64 }, newGateway: { type: 'string', maxLength: 64 } },
  required: ['newIp', 'newMask', 'newGateway'],
} as const;

export const vmUuidParams = { type: 'object', properties: { vmUuid: { type: 'string', maxLength: 128 } }, required: ['vmUuid'] } as const;
