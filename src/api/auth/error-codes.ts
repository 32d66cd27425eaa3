import { ErrorCode, isVrgError } from '../../core/errors.js';

// The VRG REST document's error numbers (004, §2.1.4 common codes and §3.1.3 logout), with the HTTP status
// and the two `errorDes` languages. One catalogue: the REST layer adds its endpoint codes here and maps every
// error through `apiErrorOf`. Errors raised on purpose carry `details.errorCode` (a string, as on the wire).

export type ApiLanguage = 'zh_CN' | 'en_US';

export interface ApiErrorEntry {
  httpStatus: number;
  en_US: string;
  zh_CN: string;
}

export const ApiErrorNumber = {
  INTERNAL: '10440000',
  INVALID_PARAMETER: '10440101',
  NOT_LOGGED_IN: '10440102',
  INVALID_PASSWORD: '10440200',
  NO_SUCH_USER: '10440201',
  WRONG_PASSWORD: '10440202',
  LOGOUT_FAILED: '10440205',
  LOCKED_NOW: '10440207',
  ACCOUNT_LOCKED: '10440208',
  // Endpoint codes (004 §3.2-§3.8)
  BAD_IP: '10440301',
  BAD_PORT: '10440302',
  NO_MGMT_NET: '10440305',
  DUP_VOL_UUID: '10440306',
  NO_VMS: '10440308',
  DUP_SEQ_NUM: '10440309',
  NO_SUCH_VM: '10440400',
  BAD_VM_UUID: '10440401',
  NO_TRAP_SERVER: '10440402',
  // Failover (issue 14; the document has none: numbers after its VM codes)
  ROLE_CONFLICT: '10440410',
  FAILOVER_IN_PROGRESS: '10440411',
  FAILOVER_REFUSED: '10440412',
  TEST_FAILOVER_ACTIVE: '10440413',
  TEST_FAILOVER_NOT_ACTIVE: '10440414',
  // Link secret rotation (issue 17)
  REKEY_FAILED: '10440420',
  REKEY_IN_PROGRESS: '10440421',
  // HTTP-level refusals the document has no number for: the number is the HTTP status (REST layer).
  HTTP_NOT_FOUND: '404',
  HTTP_METHOD_NOT_ALLOWED: '405',
  HTTP_TOO_LARGE: '413',
  HTTP_UNSUPPORTED_MEDIA: '415',
} as const;

export const API_ERRORS: Readonly<Record<string, ApiErrorEntry>> = {
  '10440000': { httpStatus: 400, en_US: 'Internal system error. Check the system status.', zh_CN: '系统内部错误,请检查系统运行状态。' },
  '10440101': { httpStatus: 400, en_US: 'Invalid input parameter.', zh_CN: '输入参数不合法。' },
  '10440102': { httpStatus: 400, en_US: 'Not logged in or the session timed out. Log in again and retry.', zh_CN: '用户未登录或超时,请重新登录后重试。' },
  '10440200': { httpStatus: 400, en_US: 'Invalid user password.', zh_CN: '用户密码不合法。' },
  '10440201': { httpStatus: 400, en_US: 'The user does not exist.', zh_CN: '用户不存在。' },
  '10440202': { httpStatus: 400, en_US: 'Wrong user password.', zh_CN: '用户密码错误。' },
  '10440205': { httpStatus: 400, en_US: 'Logout failed. Retry.', zh_CN: '退出失败,请重试。' },
  '10440207': { httpStatus: 400, en_US: 'Wrong password entered 3 times in a row; the account is locked for 5 minutes.', zh_CN: '用户密码连续 3 次输入错误,帐户锁定 5 分钟。' },
  '10440208': { httpStatus: 400, en_US: 'The user account is locked; the user cannot log in.', zh_CN: '用户账户被锁定,用户无法登录。' },
  '10440301': { httpStatus: 400, en_US: 'Invalid IP address.', zh_CN: 'IP 地址不合法。' },
  '10440302': { httpStatus: 400, en_US: 'Invalid port.', zh_CN: '端口不合法。' },
  '10440305': { httpStatus: 400, en_US: 'The management network (eth0) does not exist.', zh_CN: '管理面 eth0 不存在。' },
  '10440306': { httpStatus: 400, en_US: 'Duplicate volume UUID.', zh_CN: '卷 Uuid 重复。' },
  '10440308': { httpStatus: 400, en_US: 'No virtual machine exists in the system.', zh_CN: '系统当前不存在虚拟机。' },
  '10440309': { httpStatus: 400, en_US: 'Duplicate disk slot number.', zh_CN: '磁盘槽位号重复。' },
  '10440400': { httpStatus: 400, en_US: 'The virtual machine does not exist.', zh_CN: '虚拟机不存在。' },
  '10440401': { httpStatus: 400, en_US: 'Invalid virtual machine UUID.', zh_CN: '虚拟机 UUID 不合法。' },
  '10440402': { httpStatus: 400, en_US: 'No alarm server is set.', zh_CN: '告警管理端信息不存在。' },
  '10440410': { httpStatus: 400, en_US: 'The operation does not fit the virtual machine\'s role on this gateway.', zh_CN: '该操作与虚拟机在本网关上的角色不符。' },
  '10440411': { httpStatus: 400, en_US: 'A failover of the virtual machine is already running.', zh_CN: '虚拟机的故障切换正在进行。' },
  '10440412': { httpStatus: 400, en_US: 'The failover was refused: the target volumes cannot hold a consistent image now.', zh_CN: '故障切换被拒绝:目标卷当前无法保持一致的镜像。' },
  '10440413': { httpStatus: 400, en_US: 'A test failover of the virtual machine is running. End it first.', zh_CN: '虚拟机的测试故障切换正在运行,请先结束它。' },
  '10440414': { httpStatus: 400, en_US: 'No test failover of the virtual machine is running.', zh_CN: '虚拟机没有正在运行的测试故障切换。' },
  '10440420': { httpStatus: 400, en_US: 'The link secret was not rotated: the link to the peer is down or the peer refused. The secret is unchanged.', zh_CN: '链路密钥未轮换:到对端的链路中断或对端拒绝,密钥未改变。' },
  '10440421': { httpStatus: 400, en_US: 'A link secret rotation is already running.', zh_CN: '链路密钥轮换正在进行。' },
  '404': { httpStatus: 404, en_US: 'No such resource.', zh_CN: '资源不存在。' },
  '405': { httpStatus: 405, en_US: 'This resource does not support the method.', zh_CN: '此资源不支持该方法。' },
  '413': { httpStatus: 413, en_US: 'The request body is too large.', zh_CN: '请求正文过大。' },
  '415': { httpStatus: 415, en_US: 'The request body must be application/json.', zh_CN: '请求正文必须为 application/json。' },
};

/** The document's number for each VrgError code raised by the auth layer (the errors also carry it in details). */
export const AUTH_ERROR_NUMBERS: Readonly<Partial<Record<ErrorCode, string>>> = {
  [ErrorCode.INVALID_ARGUMENT]: ApiErrorNumber.INVALID_PARAMETER,
  [ErrorCode.AUTH_NOT_LOGGED_IN]: ApiErrorNumber.NOT_LOGGED_IN,
  [ErrorCode.AUTH_INVALID_PASSWORD]: ApiErrorNumber.INVALID_PASSWORD,
  [ErrorCode.AUTH_NO_SUCH_USER]: ApiErrorNumber.NO_SUCH_USER,
  [ErrorCode.AUTH_WRONG_PASSWORD]: ApiErrorNumber.WRONG_PASSWORD,
  [ErrorCode.AUTH_LOGOUT_FAILED]: ApiErrorNumber.LOGOUT_FAILED,
  [ErrorCode.AUTH_LOCKED_NOW]: ApiErrorNumber.LOCKED_NOW,
  [ErrorCode.AUTH_ACCOUNT_LOCKED]: ApiErrorNumber.ACCOUNT_LOCKED,
  [ErrorCode.VM_NOT_FOUND]: ApiErrorNumber.NO_SUCH_VM,
  [ErrorCode.VM_ROLE_CONFLICT]: ApiErrorNumber.ROLE_CONFLICT,
  [ErrorCode.FAILOVER_IN_PROGRESS]: ApiErrorNumber.FAILOVER_IN_PROGRESS,
  [ErrorCode.FAILOVER_REFUSED]: ApiErrorNumber.FAILOVER_REFUSED,
  [ErrorCode.TEST_FAILOVER_ACTIVE]: ApiErrorNumber.TEST_FAILOVER_ACTIVE,
  [ErrorCode.TEST_FAILOVER_NOT_ACTIVE]: ApiErrorNumber.TEST_FAILOVER_NOT_ACTIVE,
  [ErrorCode.REKEY_FAILED]: ApiErrorNumber.REKEY_FAILED,
  [ErrorCode.REKEY_IN_PROGRESS]: ApiErrorNumber.REKEY_IN_PROGRESS,
};

/**
 * The wire form of any error: `details.errorCode` when it names a catalogued number, else the number the
 * VrgError code maps to, else 10440000 (internal; the cause is logged by the caller, never sent).
 */
export function apiErrorOf(err: unknown, lang: ApiLanguage = 'en_US'): { httpStatus: number; errorCode: string; errorDes: string } {
  let num: string = ApiErrorNumber.INTERNAL;
  if (isVrgError(err)) {
    const fromDetails = err.details?.errorCode;
    if (typeof fromDetails === 'string' && API_ERRORS[fromDetails] !== undefined) num = fromDetails;
    else num = AUTH_ERROR_NUMBERS[err.code] ?? ApiErrorNumber.INTERNAL;
  }
  const entry = API_ERRORS[num] ?? (API_ERRORS[ApiErrorNumber.INTERNAL] as ApiErrorEntry);
  return { httpStatus: entry.httpStatus, errorCode: num, errorDes: entry[lang] };
}
