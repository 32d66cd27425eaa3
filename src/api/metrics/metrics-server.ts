import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from '../../core/log.js';

// The `/metrics` listener: its own port (config "metrics"), apart from the management API and its login, as
// Prometheus scrapes without a session. Loopback by default; an operator exposing it elsewhere puts it
// behind their network policy. GET /metrics only; anything else is a 404 or 405 and changes nothing.

export interface MetricsServer {
  url: string;
  close(): Promise<void>;
}

export async function startMetricsServer(reg: Registry, listen: { host: string; port: number }, logger: Logger): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    reg.metrics().then((text) => {
      res.writeHead(200, { 'content-type': reg.contentType }).end(req.method === 'HEAD' ? undefined : text);
    }, (err: Error) => {
      logger.error({ err }, 'metrics collection failed');
      res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  const url = `http://${host}:${port}/metrics`;
  logger.info({ url }, 'metrics listening');
  return {
    url,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
