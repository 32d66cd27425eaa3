import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawnGateway, type GatewayChild } from '../../src/cli/gateway-child.js';
import type { IpcMessage } from '../../src/cli/gateway-process.js';
import { generateLoad, type LoadOptions } from '../../src/cli/load-generator.js';
import type { pairConfigJson } from './pair.js';

// A production / DR pair as real `vrg start` processes (the crash tests SIGKILL them). The DR side
// listens on an ephemeral port; production's config file is written once that port is known.

export function processPair(dir: string, json: ReturnType<typeof pairConfigJson>) {
  const files = { prod: join(dir, 'production.json'), dr: join(dir, 'dr.json') };
  const startDr = async (): Promise<GatewayChild> => {
    await writeFile(files.dr, JSON.stringify(json.dr));
    const dr = spawnGateway('dr', files.dr, join(dir, 'dr.log'));
    const ready = await dr.request<IpcMessage & { type: 'ready' }>(null, 'ready');
    if (json.dr.link.port === 0) {
      json.dr.link.port = ready.linkPort!;
      await writeFile(files.dr, JSON.stringify(json.dr));
    }
    json.prod.link.port = json.dr.link.port;
    await writeFile(files.prod, JSON.stringify(json.prod));
    return dr;
  };
  const startProd = async (): Promise<GatewayChild> => {
    const prod = spawnGateway('production', files.prod, join(dir, 'production.log'));
    await prod.request(null, 'ready');
    return prod;
  };
  return { startDr, startProd };
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
