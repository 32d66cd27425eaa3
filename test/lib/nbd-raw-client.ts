import { connect, type Socket } from 'node:net';
import {
  ByteQueue, GREETING_BYTES, NbdClientFlag, NbdOpt, NbdRep, OPTION_REPLY_HEADER_BYTES, SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES, decodeGreeting, decodeOptionReplyHeader, decodeSimpleReplyHeader, decodeStructuredReplyHeader, encodeInfoRequest, encodeOptionRequest,
  encodeRequestHeader, type NbdRequest, type NbdStructuredReplyHeader,
} from '../../src/protocol/nbd.js';

// A deliberately dumb NBD client for tests: it sends whatever bytes it is told to, so tests can feed the
// server malformed input after a correct handshake. Only simple replies (no structured replies negotiated).

export class RawNbdClient {
  private readonly q = new ByteQueue();
  private waiters: Array<() => void> = [];
  ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly sock: Socket) {
    sock.on('data', (c: Buffer) => {
      this.q.push(c);
      this.wake();
    });
    this.closed = new Promise((resolve) => sock.on('close', () => {
      this.ended = true;
      this.wake();
      resolve();
    }));
    sock.on('error', () => undefined);
  }

  static async connect(port: number): Promise<RawNbdClient> {
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    return new RawNbdClient(sock);
  }

  /** Greeting, flags, then NBD_OPT_GO; returns the option replies' types. Throws unless the export is attached. */
  static async attach(port: number, exportName: string, opts: { structured?: boolean } = {}): Promise<RawNbdClient> {
    const c = await RawNbdClient.connect(port);
    decodeGreeting(await c.read(GREETING_BYTES));
    c.sock.write(Buffer.from([0, 0, 0, NbdClientFlag.FIXED_NEWSTYLE | NbdClientFlag.NO_ZEROES]));
    if (opts.structured) {
      c.sock.write(encodeOptionRequest(NbdOpt.STRUCTURED_REPLY));
      const h = decodeOptionReplyHeader(await c.read(OPTION_REPLY_HEADER_BYTES));
      if (h.type !== NbdRep.ACK || h.length !== 0) throw new Error('STRUCTURED_REPLY refused');
    }
    c.sock.write(encodeOptionRequest(NbdOpt.GO, encodeInfoRequest(exportName, [])));
    for (;;) {
      const h = decodeOptionReplyHeader(await c.read(OPTION_REPLY_HEADER_BYTES));
      await c.read(h.length);
      if (h.type === NbdRep.ACK) return c;
      if (h.type !== NbdRep.INFO) throw new Error(`GO failed with reply type 0x${h.type.toString(16)}`);
    }
  }

  /** Exactly n bytes; rejects if the connection closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.q.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.q.length} of ${n} bytes`);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    return Buffer.from(this.q.take(n));
  }

  send(req: Omit<NbdRequest, 'cookie'> & { cookie?: Buffer }, payload?: Buffer): void {
    const cookie = req.cookie ?? Buffer.alloc(8, 0x11);
    this.sock.write(encodeRequestHeader({ ...req, cookie }));
    if (payload) this.sock.write(payload);
  }

  /** The next simple reply (and `dataBytes` of data when it succeeded). */
  async reply(dataBytes = 0): Promise<{ error: number; cookie: Buffer; data: Buffer | null }> {
    const r = decodeSimpleReplyHeader(await this.read(SIMPLE_REPLY_HEADER_BYTES));
    const data = r.error === 0 && dataBytes > 0 ? await this.read(dataBytes) : null;
    return { ...r, data };
  }

  /** The next structured reply chunk: header and payload. */
  async chunk(): Promise<NbdStructuredReplyHeader & { payload: Buffer }> {
    const h = decodeStructuredReplyHeader(await this.read(STRUCTURED_REPLY_HEADER_BYTES));
    return { ...h, payload: await this.read(h.length) };
  }

  close(): void {
    this.sock.destroy();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}
