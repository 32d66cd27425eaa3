import { ErrorCode, vrgError } from '../core/errors.js';
import { NbdClient, type NbdClientOptions, type NbdExportInfo } from './nbd-client.js';
import { checkVolumeRange, type Volume, type WriteZeroesOptions } from './volume.js';

export const NBD_DEFAULT_PORT = 10809;

export interface NbdTarget {
  host: string;
  port: number;
  exportName: string;
}

export type NbdVolumeOptions = Omit<NbdClientOptions, 'host' | 'port' | 'exportName'> & {
  /** The export must be at least this big (VRG_VOLUME_IO otherwise). NBD exports are never created. */
  sizeBytes?: number;
};

/** `nbd://host:port/export`, IPv6 hosts in brackets, the export name percent-encoded. */
export function formatNbdUrl(t: NbdTarget): string {
  const host = t.host.includes(':') ? `[${t.host}]` : t.host;
  return `nbd://${host}:${t.port}/${encodeURIComponent(t.exportName)}`;
}

/**
 * A volume on an NBD export: the DR side's write agents (qemu-nbd, nbdkit) or an nbd:// source.
 *
 * flush() is NBD_CMD_FLUSH, the durability point on the agent; it also waits for writes still in flight.
 * trim() is sent as NBD_CMD_WRITE_ZEROES (deallocation allowed), not NBD_CMD_TRIM: an NBD trim may be
 * ignored (qemu-nbd's default --discard=ignore) or read back as anything, while a trim on production's
 * file volumes reads back as zeroes, and a DR replica must equal production byte for byte. (A block-device
 * source whose discard does not zero is the one case where DR may then differ in trimmed ranges — ranges
 * whose contents are undefined on production anyway.) No dataRanges(): that needs NBD_CMD_BLOCK_STATUS,
 * which needs structured replies, which this client does not negotiate.
 *
 * Reconnect policy, deliberately simple: when the connection drops, every op pending on it fails
 * (VRG_CONNECTION_CLOSED or VRG_TIMEOUT) and nothing is retried — the caller re-applies from its own
 * durable position. The next op after a drop reconnects once (bounded by connectTimeoutMs); if that fails
 * the op fails, and the op after it tries once again. A reconnect to an export whose size shrank below
 * this volume's size fails with VRG_VOLUME_IO.
 */
export class NbdVolume implements Volume {
  private closed = false;
  private reconnecting: Promise<NbdClient> | null = null;
  /** Writes sent since the last successful flush; a dropped connection may have lost them. */
  private unflushedWrites = false;
  /** A connection carrying unflushed writes dropped: the next flush must fail, not vouch for them. */
  private writesMayBeLost = false;

  private constructor(
    readonly url: string,
    readonly sizeBytes: number,
    private client: NbdClient,
    private readonly target: NbdTarget,
    private readonly opts: NbdVolumeOptions,
  ) {}

  static async open(target: NbdTarget, opts: NbdVolumeOptions = {}): Promise<NbdVolume> {
    const url = formatNbdUrl(target);
    const client = await NbdClient.connect({ ...opts, ...target });
    try {
      checkSize(url, client.info, opts.sizeBytes);
    } catch (err) {
      client.destroy();
      throw err;
    }
    return new NbdVolume(url, client.info.sizeBytes, client, target, opts);
  }

  /** The export as negotiated on the current connection. */
  get info(): NbdExportInfo {
    return this.client.info;
  }

  /** Counters of the current connection (see NbdClient.stats). */
  get stats(): NbdClient['stats'] {
    return this.client.stats;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    if (length === 0) return Buffer.alloc(0);
    return (await this.connection()).read(offset, length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.check(offset, data.byteLength);
    if (data.byteLength === 0) return;
    const client = await this.connection();
    this.unflushedWrites = true;
    await client.write(offset, data);
  }

  /** NBD_CMD_WRITE_ZEROES (NO_HOLE with `noHole`); written zero buffers when the agent lacks it. */
  async writeZeroes(offset: number, length: number, opts: WriteZeroesOptions = {}): Promise<void> {
    this.check(offset, length);
    if (length === 0) return;
    const client = await this.connection();
    this.unflushedWrites = true;
    await client.writeZeroes(offset, length, { noHole: opts.noHole === true });
  }

  /** Sent as WRITE_ZEROES so the range reads back as zeroes, like a trim on VRG's other volumes. */
  async trim(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  /**
   * Fails when a connection that carried writes since the last flush dropped: the agent may have lost
   * them, and a flush on a fresh connection would wrongly vouch for them. The caller re-applies from
   * its last durable position and flushes again.
   */
  async flush(): Promise<void> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `volume ${this.url} is closed`);
    const client = await this.connection();
    if (this.writesMayBeLost) {
      this.writesMayBeLost = false;
      this.unflushedWrites = false;
      throw vrgError(ErrorCode.VOLUME_IO, `connection to ${this.url} dropped with unflushed writes; re-apply them`, { url: this.url });
    }
    this.unflushedWrites = false;
    try {
      await client.flush();
    } catch (err) {
      this.unflushedWrites = true;
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const pending = this.reconnecting;
    if (pending) await pending.then((c) => { this.client = c; }, () => undefined);
    await this.client.disconnect();
  }

  private check(offset: number, length: number): void {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, `volume ${this.url} is closed`);
    checkVolumeRange(this, offset, length);
  }

  /** The live client, reconnecting once (shared by concurrent callers) if the last connection dropped. */
  private connection(): Promise<NbdClient> {
    if (this.client.closeReason === null) return Promise.resolve(this.client);
    if (this.unflushedWrites) this.writesMayBeLost = true;
    this.reconnecting ??= (async () => {
      try {
        const client = await NbdClient.connect({ ...this.opts, ...this.target });
        try {
          checkSize(this.url, client.info, this.sizeBytes);
        } catch (err) {
          client.destroy();
          throw err;
        }
        if (this.closed) {
          client.destroy();
          throw vrgError(ErrorCode.CLOSED, `volume ${this.url} is closed`);
        }
        this.client = client;
        return client;
      } finally {
        this.reconnecting = null;
      }
    })();
    return this.reconnecting;
  }
}

function checkSize(url: string, info: NbdExportInfo, sizeBytes: number | undefined): void {
  if (sizeBytes !== undefined && info.sizeBytes < sizeBytes) {
    throw vrgError(ErrorCode.VOLUME_IO, `nbd export ${url} is ${info.sizeBytes} bytes, expected at least ${sizeBytes}`,
      { url, exportBytes: info.sizeBytes, sizeBytes });
  }
}
