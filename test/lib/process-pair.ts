import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawnGateway, type GatewayChild } from '../../src/cli/gateway-child.js';
import type { IpcMessage } from '../../src/cli/gateway-process.js';
import { generateLoad, type LoadOptions } from '../../src/cli/load-generator.js';
import type { pairConfigJson } from './pair.js';
import { StallError, stallTimeoutMs } from './wait.js';

// A production / DR pair as real `vrg start` processes (the crash tests SIGKILL them). The DR side
// listens on an ephemeral port; production's config file is written once that port is known.

type Ready = IpcMessage & { type: 'ready' };

/** route: what production dials for the DR link port (e.g. a fault proxy in front of it); default the port itself. */
export function processPair(dir: string, json: ReturnType<typeof pairConfigJson>, opts: { route?: (drLinkPort: number) => Promise<number> } = {}) {
  const files = { prod: join(dir, 'production.json'), dr: join(dir, 'dr.json') };
  /** Each side's last 'ready' message (its NBD port, its link port). */
  const ready: { prod: Ready | null; dr: Ready | null } = { prod: null, dr: null };
  const startDr = async (): Promise<GatewayChild> => {
    await writeFile(files.dr, JSON.stringify(json.dr));
    const dr = spawnGateway('dr', files.dr, join(dir, 'dr.log'));
    const r = await dr.request<Ready>(null, 'ready');
    ready.dr = r;
    if (json.dr.link.port === 0) {
      json.dr.link.port = r.linkPort!;
      await writeFile(files.dr, JSON.stringify(json.dr));
    }
    json.prod.link.port = opts.route ? await opts.route(json.dr.link.port) : json.dr.link.port;
    await writeFile(files.prod, JSON.stringify(json.prod));
    return dr;
  };
  const startProd = async (): Promise<GatewayChild> => {
    const prod = spawnGateway('production', files.prod, join(dir, 'production.log'));
    ready.prod = await prod.request<Ready>(null, 'ready');
    return prod;
  };
  return { startDr, startProd, ready };
}

/** Acknowledged writes of the load not on `path` (a later acknowledged write to the same offset wins). */
export async function ackedWritesMissing(path: string, load: LoadOptions, acked: Set<number>): Promise<number> {
  const last = new Map<number, { index: number; data: Buffer }>();
  for await (const w of generateLoad(load)) if (acked.has(w.index)) last.set(w.offset, { index: w.index, data: Buffer.from(w.data) });
  const fh = await open(path, 'r');
  let missing = 0;
  for (const [offset, w] of last) {
    const buf = Buffer.alloc(w.data.length);
    await fh.read(buf, 0, buf.length, offset);
    if (!buf.equals(w.data)) {
      missing++;
      if (missing <= 3) console.error(`missing write ${w.index} at ${offset}: ${path} has ${buf.subarray(0, 8).toString('hex')}, expected ${w.data.subarray(0, 8).toString('hex')}`);
    }
  }
  await fh.close();
  return missing;
}

/** What a gateway process is doing now (its `diagnostics` IPC reply), or why it could not say within 2 s. */
export async function childState(child: GatewayChild | null): Promise<unknown> {
  if (child === null) return null;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<string>((resolve) => { timer = setTimeout(() => resolve('no reply within 2000 ms'), 2_000); });
  const reply = child.request<IpcMessage & { type: 'diagnostics' }>({ type: 'diagnostics' }, 'diagnostics')
    .then((m) => m.diagnostics, (err: Error) => `no diagnostics: ${err.message}`);
  return Promise.race([reply, late]).finally(() => clearTimeout(timer));
}

/**
 * Asks the production process to drain and waits at most `ms`: a stall rejects with a StallError carrying
 * both processes' pipeline state, and kills both (their IPC channels would keep the test process alive).
 */
export async function drainChild(prod: GatewayChild, dr: GatewayChild | null, ms = 2 * stallTimeoutMs): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => { timer = setTimeout(() => resolve('late'), ms); });
  const done = await Promise.race([prod.request({ type: 'drain' }, 'drained'), late]).finally(() => clearTimeout(timer));
  if (done !== 'late') return;
  throw await stalled('drain (DR to acknowledge everything written)', ms, prod, dr);
}

/** A StallError with both processes' state; both are killed (their IPC channels would keep the test process alive). */
async function stalled(what: string, ms: number, prod: GatewayChild, dr: GatewayChild | null): Promise<StallError> {
  const state = { production: await childState(prod), dr: await childState(dr) };
  await Promise.all([prod.kill(), dr?.kill()]);
  return new StallError(what, ms, state);
}

type StatusReply = IpcMessage & { type: 'status' };

/**
 * Polls the production process's status until `done` holds, adding the load's acknowledged write indices to
 * `acked`; after `ms` a StallError with both processes' state (and both are killed).
 */
export async function watchChild<S extends StatusReply>(prod: GatewayChild, dr: GatewayChild | null, acked: Set<number>,
    done: (s: S) => boolean, ms = 2 * stallTimeoutMs): Promise<S> {
  const end = Date.now() + ms;
  for (;;) {
    const s = await prod.request<S>({ type: 'status' }, 'status');
    for (const i of s.load?.ackedIndices ?? []) acked.add(i);
    if (done(s)) return s;
    if (Date.now() > end) throw await stalled('watching the production gateway', ms, prod, dr);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Both gateways as processes with NBD listeners on loopback (the intake, the replica exports), started DR
 * first; `children` holds every process started (tests push restarts), all killed at teardown.
 */
export async function startNbdProcessPair(t: { teardown(fn: () => unknown): void }, dir: string, json: ReturnType<typeof pairConfigJson>,
    opts: Parameters<typeof processPair>[2] & { nbd?: Record<string, unknown> } = {}) {
  // `opts.nbd`: more of both listeners' settings (TLS, allow-list).
  const nbd = { host: '127.0.0.1', port: 0, ...opts.nbd };
  Object.assign(json.prod, { nbd });
  Object.assign(json.dr, { nbd });
  const pair = processPair(dir, json, opts);
  const children: GatewayChild[] = [];
  t.teardown(() => Promise.all(children.map((c) => c.kill())));
  const dr = await pair.startDr();
  children.push(dr);
  const prod = await pair.startProd();
  children.push(prod);
  return { pair, dr, prod, children };
}
