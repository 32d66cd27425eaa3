import { runCodecAlone, type CodecAloneConfig } from './floor-codec-alone.js';
import { startDr, type DrConfig, type DrHandle } from './floor-dr.js';
import { startProduction, type ProductionConfig, type ProductionHandle } from './floor-production.js';

// Entry of the floor benchmark's child processes (forked by floor-bench.ts with an IPC channel):
// `node dist/bench/floor-node.js production|dr|codec`, then a { type: 'start', config } message.
// Parent -> child: start, drain (production), stats (dr), stop. Child -> parent: ready, drained, stats,
// codec, error. A child exits when its parent goes away, so none outlives the bench.

export type NodeConfig = ProductionConfig | DrConfig | CodecAloneConfig;

export type ToChild = { type: 'start'; config: NodeConfig } | { type: 'drain' } | { type: 'stats' } | { type: 'stop' };

export type FromChild =
  | { type: 'ready'; port: number; codecTid: number | null }
  | { type: 'drained'; stats: unknown }
  | { type: 'stats'; stats: unknown }
  | { type: 'codec'; result: unknown }
  | { type: 'error'; message: string };

function send(m: FromChild): void {
  process.send?.(m);
}

function die(err: unknown): void {
  send({ type: 'error', message: err instanceof Error ? err.stack ?? err.message : String(err) });
  process.exitCode = 1;
  setImmediate(() => process.exit(1)); // let the IPC message leave first
}

async function start(config: NodeConfig): Promise<ProductionHandle | DrHandle | null> {
  if (config.role === 'codec') {
    send({ type: 'codec', result: runCodecAlone(config) });
    return null;
  }
  const h = config.role === 'production' ? await startProduction(config) : await startDr(config);
  send({ type: 'ready', port: 'nbdPort' in h ? h.nbdPort : h.port, codecTid: h.codecTid });
  return h;
}

async function main(): Promise<void> {
  process.title = `floor-${process.argv[2] ?? 'node'}`; // floor-production / floor-dr / floor-codec in ps and top
  process.on('uncaughtException', die);
  process.on('disconnect', () => process.exit(0));
  let handle: ProductionHandle | DrHandle | null = null;
  process.on('message', (m: ToChild) => {
    const act = async (): Promise<void> => {
      if (m.type === 'start') handle = await start(m.config);
      else if (m.type === 'drain' && handle && 'drained' in handle) send({ type: 'drained', stats: await handle.drained() });
      else if (m.type === 'stats' && handle && 'stats' in handle) send({ type: 'stats', stats: handle.stats() });
      else if (m.type === 'stop') {
        await handle?.stop();
        process.exit(0);
      }
    };
    act().catch(die);
  });
}

void main();
