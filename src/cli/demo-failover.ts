import { formatBytes } from '../core/size.js';
import type { FailoverResult } from '../replication/dr-site.js';
import { NbdVolume } from '../volume/nbd-volume.js';
import { apiSession } from './api-command.js';
import type { GatewayChild } from './gateway-child.js';
import type { IpcMessage } from './gateway-process.js';
import type { LoadOptions } from './load-generator.js';

// `vrg demo --failover planned|unplanned|test`: after the demo's load, the failover cycle under load, each step
// through the gateways' REST API as an operator would run it, printing `failover:` / `failback:` lines with
// the bytes resynced. The demo then stops both gateways and compares the volumes (`verified:`).
//
//   planned:   writes at home while the VM moves to DR (the move refuses them: EPERM), writes at DR, the VM
//              moves home, writes at home. Nothing is resynced either way.
//   unplanned: writes at home while the production gateway is killed, DR promotes the VM, writes at DR, the
//              old production gateway restarts and becomes the target (failback: only what differs ships),
//              the VM moves home (planned), writes at home.
//   test:      a writable clone at DR takes writes while production keeps writing; the clone is discarded.

export type FailoverDemo = 'planned' | 'unplanned' | 'test';

export interface FailoverDemoContext {
  prod: GatewayChild;
  dr: GatewayChild;
  prodRestUrl: string;
  drRestUrl: string;
  prodNbdPort: number;
  drNbdPort: number;
  password: string;
  vmUuid: string;
  volumes: Array<{ volUuid: string; sizeBytes: number }>;
  /** A load of `totalBytes` for a gateway's IPC `load` (the demo's write size, queue depth and seed). */
  load: (totalBytes: number, seed: number) => LoadOptions;
  /** Starts the production gateway again (same config and data); resolves with it and its new addresses. */
  restartProduction: () => Promise<{ prod: GatewayChild; restUrl: string; nbdPort: number }>;
  out: NodeJS.WritableStream;
}

type Status = IpcMessage & { type: 'status' };
interface SourceVm { vmUuid: string; plainBytesSent: number; backlogRecords: number; fault: string | null; replication: { state: string } }
interface SiteStatus { vms: SourceVm[]; promoted?: { vms: SourceVm[] } | null; targets?: { vms: Array<{ vmUuid: string }> } | null }

const stepTimeoutMs = 300_000;

async function siteStatus(child: GatewayChild): Promise<SiteStatus> {
  return (await child.request<Status>({ type: 'status' }, 'status')).status as SiteStatus;
}

async function until(what: string, cond: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + stepTimeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`demo: ${what} did not happen within ${stepTimeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The VM as a source in `s` (production's own, or promoted at DR) in steady state: queue, nothing behind. */
function steady(vm: SourceVm | undefined): boolean {
  return vm !== undefined && vm.replication.state === 'queue' && vm.backlogRecords === 0 && vm.fault === null;
}

/** 64 KiB writes to the first volume over NBD until one is refused; resolves with the bytes acknowledged. */
function writeUntilRefused(port: number, volUuid: string): { stop(): void; done: Promise<number> } {
  let stopped = false;
  const done = (async () => {
    const v = await NbdVolume.open({ host: '127.0.0.1', port, exportName: volUuid });
    let bytes = 0;
    try {
      for (let i = 0; !stopped; i++) {
        await v.write((i % 256) * 65_536, Buffer.alloc(65_536, (i % 250) + 1));
        bytes += 65_536;
      }
    } catch {
      // refused (the move) or cut (the kill): the end of this burst
    }
    await v.close().catch(() => undefined);
    return bytes;
  })();
  return { stop: () => { stopped = true; }, done };
}

export async function runFailoverDemo(kind: FailoverDemo, c: FailoverDemoContext): Promise<{ prod: GatewayChild }> {
  const drApi = await apiSession(c.drRestUrl, 'admin', c.password);
  const say = (line: string): void => void c.out.write(`${line}\n`);
  if (kind === 'test') {
    const t0 = Date.now();
    const started = await drApi.call('POST', '/vmfailover', { vmUuid: c.vmUuid, type: 'test' }) as { exports: string[] };
    const clone = await NbdVolume.open({ host: '127.0.0.1', port: c.drNbdPort, exportName: started.exports[0]! });
    for (let i = 0; i < 64; i++) await clone.write(i * 65_536, Buffer.alloc(65_536, 0xc0));
    await clone.flush();
    await clone.close();
    say(`failover: test clone ${started.exports.join(', ')} took ${formatBytes(64 * 65_536)} of writes (${Date.now() - t0} ms); replication went on`);
    await c.prod.request({ type: 'load', load: c.load(c.volumes[0]!.sizeBytes / 8, 7) }, 'loadDone');
    await c.prod.request({ type: 'drain' }, 'drained');
    await drApi.call('DELETE', `/vmfailover/${c.vmUuid}`);
    say('failback: test clone discarded, 0 bytes resynced: the replica was never touched by it');
    return { prod: c.prod };
  }
  let prod = c.prod;
  let prodApi = await apiSession(c.prodRestUrl, 'admin', c.password);
  let prodNbd = c.prodNbdPort;
  const burst = writeUntilRefused(prodNbd, c.volumes[0]!.volUuid);
  await new Promise((r) => setTimeout(r, 200));
  const t0 = Date.now();
  let moved: FailoverResult;
  if (kind === 'planned') {
    moved = await drApi.call('POST', '/vmfailover', { vmUuid: c.vmUuid, type: 'planned' }) as FailoverResult;
  } else {
    await prod.kill();
    moved = await drApi.call('POST', '/vmfailover', { vmUuid: c.vmUuid, type: 'unplanned' }) as FailoverResult;
  }
  burst.stop();
  const burstBytes = await burst.done;
  const promotedSent = async (): Promise<number> => (await siteStatus(c.dr)).promoted?.vms[0]?.plainBytesSent ?? 0;
  say(`failover: ${kind} to dr in ${Date.now() - t0} ms, generation ${moved.generation}, at seq ${moved.fromSeq}; ` +
    `${formatBytes(burstBytes)} written at home during it`);

  await c.dr.request({ type: 'load', load: c.load(c.volumes[0]!.sizeBytes / 8, 11) }, 'loadDone');
  say(`writes at dr: ${formatBytes(c.volumes[0]!.sizeBytes / 8)}`);
  const t1 = Date.now();
  if (kind === 'unplanned') {
    ({ prod, restUrl: c.prodRestUrl, nbdPort: prodNbd } = await c.restartProduction());
    prodApi = await apiSession(c.prodRestUrl, 'admin', c.password);
  }
  await until('the old source becoming the target', async () => (await siteStatus(prod)).targets?.vms[0]?.vmUuid === c.vmUuid);
  await until('the promoted VM catching up', async () => steady((await siteStatus(c.dr)).promoted?.vms[0]));
  const resynced = await promotedSent();
  const share = `${((resynced / c.volumes.reduce((n, v) => n + v.sizeBytes, 0)) * 100).toFixed(2)} % of the VM`;
  say(kind === 'planned'
    ? `failback: the old source is the target again in ${Date.now() - t1} ms; 0 B resynced, the ${formatBytes(resynced)} written at dr replicated to it`
    : `failback: the old source is the target again in ${Date.now() - t1} ms; ${formatBytes(resynced)} resynced (${share}: ` +
      'the blocks written at dr since the promotion, then what a consistency check found different)');

  const t2 = Date.now();
  const home = await prodApi.call('POST', '/vmfailover', { vmUuid: c.vmUuid, type: 'planned' }) as FailoverResult;
  await until('the VM shipping from home', async () => steady((await siteStatus(prod)).vms[0]));
  const homeResynced = (await siteStatus(prod)).vms[0]!.plainBytesSent;
  say(`failover: planned home in ${Date.now() - t2} ms, generation ${home.generation}; ${formatBytes(homeResynced)} resynced`);
  await prod.request({ type: 'load', load: c.load(c.volumes[0]!.sizeBytes / 8, 13) }, 'loadDone');
  await prod.request({ type: 'drain' }, 'drained');
  say(`writes at home: ${formatBytes(c.volumes[0]!.sizeBytes / 8)}`);
  return { prod };
}
