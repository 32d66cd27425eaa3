import net from 'node:net';

// A TCP proxy on loopback between the two gateways, for network faults without netem:
// cut() drops every live connection (both directions at once), block() refuses new ones.

export class FaultProxy {
  private readonly sockets = new Set<net.Socket>();
  private blocked = false;
  connections = 0;

  private constructor(private readonly server: net.Server, readonly port: number) {}

  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<FaultProxy> {
    const holder: { proxy?: FaultProxy } = {};
    const server = net.createServer((client) => {
      const proxy = holder.proxy!;
      if (proxy.blocked) {
        client.destroy();
        return;
      }
      proxy.connections++;
      const upstream = net.connect(targetPort, targetHost);
      for (const s of [client, upstream]) {
        proxy.sockets.add(s);
        s.on('close', () => proxy.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    holder.proxy = new FaultProxy(server, port);
    return holder.proxy;
  }

  cut(): void {
    for (const s of this.sockets) s.destroy();
  }

  block(on: boolean): void {
    this.blocked = on;
    if (on) this.cut();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
