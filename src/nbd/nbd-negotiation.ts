import {
  NbdClientFlag, NbdInfo, NbdOpt, NbdRep, NbdTransmissionFlag, decodeInfoRequest, encodeExportNameReply,
  encodeInfoBlockSize, encodeInfoDescription, encodeInfoExport, encodeInfoName, encodeOptionReply, encodeServerReply,
  type NbdHandshakeEvent,
} from '../protocol/nbd.js';
import type { NbdTlsMode } from './nbd-tls.js';
import { findExport, listExports, type NbdExport, type NbdExportSource } from './nbd-export.js';

// Option haggling of the fixed newstyle handshake, without sockets: each event from NbdHandshakeParser
// gives the bytes to send and what happens next. Supported: EXPORT_NAME, ABORT, LIST, INFO, GO,
// STRUCTURED_REPLY, and STARTTLS when the listener has TLS (nbd-tls.ts). Everything else: NBD_REP_ERR_UNSUP
// (meta contexts and extended headers are not implemented, so clients fall back to plain reads and compact
// headers).
//
// With TLS required, nothing but STARTTLS and ABORT is answered before TLS is up (NBD_REP_ERR_TLS_REQD;
// EXPORT_NAME, which has no error reply, ends the session), so a plain client learns no export.

export type NegotiationStep =
  | { next: 'continue'; send: Buffer[] }
  | { next: 'close'; send: Buffer[]; reason: string }
  | { next: 'transmission'; send: Buffer[]; export: NbdExport }
  /** Send the acknowledgement, then run the TLS handshake on the socket; haggling goes on inside TLS. */
  | { next: 'starttls'; send: Buffer[] };

export interface NegotiationOptions {
  exports: NbdExportSource;
  /** Advertised NBD_INFO_BLOCK_SIZE: [minimum, preferred, maximum]. Maximum is the READ/WRITE payload limit. */
  blockSizes: [number, number, number];
  /** Refuse new exports (NBD_REP_ERR_SHUTDOWN) while the server shuts down. */
  shuttingDown: () => boolean;
  /** The listener's TLS mode (default 'off'). */
  tls?: NbdTlsMode;
}

export class NbdNegotiation {
  /** Structured replies were negotiated: READ replies must be structured. */
  structured = false;
  private noZeroes = false;
  /** TLS is up on this connection. */
  private tlsActive = false;

  constructor(private readonly opts: NegotiationOptions) {}

  onEvent(ev: NbdHandshakeEvent): NegotiationStep {
    if (ev.kind === 'client-flags') {
      const known = NbdClientFlag.FIXED_NEWSTYLE | NbdClientFlag.NO_ZEROES;
      if ((ev.flags & ~known) !== 0) return close(`client set unknown flags 0x${ev.flags.toString(16)}`);
      if ((ev.flags & NbdClientFlag.FIXED_NEWSTYLE) === 0) return close('client does not speak fixed newstyle');
      this.noZeroes = (ev.flags & NbdClientFlag.NO_ZEROES) !== 0;
      return { next: 'continue', send: [] };
    }
    if (ev.kind === 'option-too-big') {
      return reply(ev.option, NbdRep.ERR_TOO_BIG, `option data of ${ev.length} bytes is too large`);
    }
    const { option, data } = ev;
    if (option === NbdOpt.STARTTLS) return this.startTls(data);
    if (this.opts.tls === 'require' && !this.tlsActive && option !== NbdOpt.ABORT) {
      if (option === NbdOpt.EXPORT_NAME) return close('EXPORT_NAME before STARTTLS on a TLS-only listener');
      return reply(option, NbdRep.ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
    }
    switch (option) {
      case NbdOpt.EXPORT_NAME: return this.exportName(data.toString('utf8'));
      case NbdOpt.ABORT:
        return { next: 'close', send: [encodeOptionReply(option, NbdRep.ACK)], reason: 'client aborted the handshake' };
      case NbdOpt.LIST: return this.list(data);
      case NbdOpt.INFO:
      case NbdOpt.GO: return this.infoOrGo(option, data);
      case NbdOpt.STRUCTURED_REPLY:
        if (data.length !== 0) return reply(option, NbdRep.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        this.structured = true;
        return { next: 'continue', send: [encodeOptionReply(option, NbdRep.ACK)] };
      default: return reply(option, NbdRep.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  /** The TLS handshake finished: options negotiated before it no longer count (NBD spec, STARTTLS). */
  tlsStarted(): void {
    this.tlsActive = true;
    this.structured = false;
  }

  private startTls(data: Buffer): NegotiationStep {
    const option = NbdOpt.STARTTLS;
    if ((this.opts.tls ?? 'off') === 'off') return reply(option, NbdRep.ERR_UNSUP, 'TLS is not enabled on this listener');
    if (this.tlsActive) return reply(option, NbdRep.ERR_INVALID, 'TLS is already running');
    if (data.length !== 0) return reply(option, NbdRep.ERR_INVALID, 'STARTTLS takes no data');
    return { next: 'starttls', send: [encodeOptionReply(option, NbdRep.ACK)] };
  }

  transmissionFlags(exp: NbdExport): number {
    const F = NbdTransmissionFlag;
    let flags = F.HAS_FLAGS | F.SEND_FLUSH;
    if (exp.canMultiConn !== false) flags |= F.CAN_MULTI_CONN;
    if (this.structured) flags |= F.SEND_DF; // one chunk per read: DF always holds
    if (exp.readOnly) flags |= F.READ_ONLY;
    else flags |= F.SEND_FUA | F.SEND_TRIM | F.SEND_WRITE_ZEROES;
    return flags;
  }

  private exportName(name: string): NegotiationStep {
    const exp = this.opts.shuttingDown() ? null : findExport(this.opts.exports, name);
    // NBD_OPT_EXPORT_NAME has no error reply: an unknown export ends the session.
    if (!exp) return close(`unknown export '${name}' (EXPORT_NAME)`);
    return {
      next: 'transmission', export: exp,
      send: [encodeExportNameReply(exp.sizeBytes, this.transmissionFlags(exp), this.noZeroes)],
    };
  }

  private list(data: Buffer): NegotiationStep {
    if (data.length !== 0) return reply(NbdOpt.LIST, NbdRep.ERR_INVALID, 'LIST takes no data');
    if (this.opts.shuttingDown()) return reply(NbdOpt.LIST, NbdRep.ERR_SHUTDOWN, 'server is shutting down');
    const send = listExports(this.opts.exports)
      .map((e) => encodeOptionReply(NbdOpt.LIST, NbdRep.SERVER, encodeServerReply(e.name, e.description ?? '')));
    send.push(encodeOptionReply(NbdOpt.LIST, NbdRep.ACK));
    return { next: 'continue', send };
  }

  private infoOrGo(option: number, data: Buffer): NegotiationStep {
    let req: { name: string; infos: number[] };
    try {
      req = decodeInfoRequest(data);
    } catch (err) {
      return reply(option, NbdRep.ERR_INVALID, (err as Error).message);
    }
    if (this.opts.shuttingDown()) return reply(option, NbdRep.ERR_SHUTDOWN, 'server is shutting down');
    const exp = findExport(this.opts.exports, req.name);
    if (!exp) return reply(option, NbdRep.ERR_UNKNOWN, `no export named '${req.name}'`);
    const info = (body: Buffer): Buffer => encodeOptionReply(option, NbdRep.INFO, body);
    const send = [info(encodeInfoExport(exp.sizeBytes, this.transmissionFlags(exp)))];
    if (req.infos.includes(NbdInfo.NAME)) send.push(info(encodeInfoName(exp.name)));
    if (req.infos.includes(NbdInfo.DESCRIPTION) && exp.description) send.push(info(encodeInfoDescription(exp.description)));
    // Sent unasked too: the constraints are the protocol's defaults, so clients that ignore them stay correct.
    const [min, preferred, max] = this.opts.blockSizes;
    send.push(info(encodeInfoBlockSize(min, preferred, max)));
    send.push(encodeOptionReply(option, NbdRep.ACK));
    if (option === NbdOpt.INFO) return { next: 'continue', send };
    return { next: 'transmission', send, export: exp };
  }
}

function reply(option: number, type: number, message: string): NegotiationStep {
  return { next: 'continue', send: [encodeOptionReply(option, type, Buffer.from(message, 'utf8'))] };
}

function close(reason: string): NegotiationStep {
  return { next: 'close', send: [], reason };
}
