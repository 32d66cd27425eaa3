import net from 'node:net';
import type { Clock } from '../../core/clock.js';
import { ErrorCode, vrgError } from '../../core/errors.js';
import type { Random } from '../../core/random.js';
import { Link, type LinkHost } from './link.js';
import { parseToxic, type Stream, type ToxicJson } from './toxic.js';

// One proxy of the fault proxy: listens on `listen`, opens a connection to `upstream` for each client and
// passes the bytes both ways through its toxics. Disabled (enabled=false, or a `down` toxic), it listens on
// nothing and has no connections: a peer that is down.

export interface ProxyJson {
  name: string;
  listen: string;
  upstream: string;
  enabled: boolean;
  toxics: ToxicJson[];
}

export interface ProxyCounters {
  connections: number;
  corrupted: number;
  reset: number;
  limited: number;
  timedOut: number;
  dropped: number;
}

/** "host:port" → its parts; port 0 lets the system choose (the proxy then reports the port it got). */
export function parseAddress(what: string, v: unknown): { host: string; port: number } {
  if (typeof v !== 'string') throw vrgError(ErrorCode.INVALID_ARGUMENT, `${what} is "host:port"`);
  const m = /^(.*):(\d{1,5})$/.exec(v);
  const port = m ? Number(m[2]) : -1;
  if (!m || m[1] === '' || port > 65_535) throw vrgError(ErrorCode.INVALID_ARGUMENT, `${what} "${v}" is not "host:port"`);
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port };
}

export class FaultProxy implements LinkHost {
  private server: net.Server | null = null;
  private readonly links = new Set<Link>();
  private toxicList: ToxicJson[] = [];
  listen: string;
  enabled = false;
  readonly counters: ProxyCounters = { connections: 0, corrupted: 0, reset: 0, limited: 0, timedOut: 0, dropped: 0 };

  constructor(readonly name: string, listen: string, public upstream: string, readonly clock: Clock, readonly random: Random) {
    parseAddress('listen', listen);
    parseAddress('upstream', upstream);
    this.listen = listen;
  }

  toJSON(): ProxyJson {
    return { name: this.name, listen: this.listen, upstream: this.upstream, enabled: this.enabled, toxics: this.toxicList };
  }

  toxics(stream: Stream): readonly ToxicJson[] {
    return this.toxicList.filter((t) => t.stream === stream);
  }

  count(event: keyof ProxyCounters, n = 1): void {
    this.counters[event] += n;
  }

  private get down(): boolean {
    return this.toxicList.some((t) => t.type === 'down' && t.toxicity > 0);
  }

  /** Starts or stops listening to match `enabled` and the `down` toxics. */
  async setEnabled(on: boolean): Promise<void> {
    this.enabled = on;
    await this.sync();
  }

  private async sync(): Promise<void> {
    const shouldListen = this.enabled && !this.down;
    if (shouldListen && this.server === null) await this.start();
    if (!shouldListen && this.server !== null) await this.stop();
  }

  private async start(): Promise<void> {
    const { host, port } = parseAddress('listen', this.listen);
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(vrgError(ErrorCode.INVALID_ARGUMENT,
        `proxy ${this.name} cannot listen on ${this.listen}: ${err.code ?? err.message}`, { listen: this.listen })));
      server.listen(port, host, () => resolve());
    });
    const addr = server.address() as net.AddressInfo;
    // The address it got (port 0 chose one), so that a restart after a `down` listens on the same port.
    this.listen = `${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
    this.server = server;
  }

  private async stop(): Promise<void> {
    const server = this.server!;
    this.server = null;
    for (const l of [...this.links]) l.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    this.counters.connections++;
    const { host, port } = parseAddress('upstream', this.upstream);
    const upstream = net.connect({ host, port, allowHalfOpen: true, noDelay: true });
    const link = new Link(this, client, upstream, () => this.links.delete(link));
    if (!link.closed) this.links.add(link);
  }

  addToxic(body: unknown): ToxicJson {
    const t = parseToxic(body);
    if (this.toxicList.some((x) => x.name === t.name)) {
      throw vrgError(ErrorCode.FAULT_TOXIC_EXISTS, `toxic already exists: ${t.name}`, { proxy: this.name, toxic: t.name });
    }
    this.toxicList = [...this.toxicList, t];
    for (const l of this.links) l.toxicAdded(t);
    void this.sync();
    return t;
  }

  toxic(name: string): ToxicJson {
    const t = this.toxicList.find((x) => x.name === name);
    if (!t) throw vrgError(ErrorCode.FAULT_TOXIC_NOT_FOUND, `toxic not found: ${name}`, { proxy: this.name, toxic: name });
    return t;
  }

  /** New attributes take effect on every connection now (a new draw of toxicity, a timeout restarted). */
  updateToxic(name: string, body: unknown): ToxicJson {
    const old = this.toxic(name);
    const t = parseToxic({ ...(body as object), name }, old);
    this.toxicList = this.toxicList.map((x) => (x.name === name ? t : x));
    for (const l of this.links) {
      l.toxicRemoved(name);
      l.toxicAdded(t);
    }
    return t;
  }

  async removeToxic(name: string): Promise<void> {
    this.toxic(name);
    this.toxicList = this.toxicList.filter((x) => x.name !== name);
    for (const l of this.links) l.toxicRemoved(name);
    await this.sync();
  }

  async resetToxics(): Promise<void> {
    for (const t of this.toxicList) for (const l of this.links) l.toxicRemoved(t.name);
    this.toxicList = [];
    await this.sync();
  }

  /** Every open connection cut (a FIN to both peers, or a RST with `reset`); new ones are still accepted. */
  cut(reset = false): number {
    const n = this.links.size;
    for (const l of [...this.links]) l.close(reset);
    return n;
  }

  async close(): Promise<void> {
    this.enabled = false;
    if (this.server) await this.stop();
  }
}
