#!/usr/bin/env -S node --initial-old-space-size=64
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { isVrgError } from '../core/errors.js';
import { parseSize } from '../core/size.js';
import { runDemo, type DemoOptions } from './demo.js';
import { startCommand } from './gateway-process.js';
import { runApiCall } from './api-command.js';
import { runFaultProxy } from '../chaos/fault-proxy/fault-proxy-server.js';
import { describeFault, diskFaultKinds, faultKinds, parseFaultList, planSchedule, type FaultKind } from '../chaos/schedule.js';
import { nbdkitAvailable } from '../chaos/target-agent.js';
import { replayCommand, runChaos } from './chaos.js';
import { runSimSeeds } from '../chaos/sim/sim-run.js';
import { runStatus } from './status-command.js';
import { runClusterStatus } from './cluster-status.js';
import { runClusterDrain, runClusterProtect, runClusterUnprotect } from './cluster-admin.js';

const usage = `usage: vrg <command> [options]

commands:
  demo     run a production and a DR gateway on loopback, replicate a built-in load, verify the replica
             --dir DIR            data directory (default ./vrg-data)
             --size SIZE          bytes of load to write (default 512MiB)
             --volume-size SIZE   size of each of the two volumes (default 1GiB)
             --compress 0|1       LZ4 compression (default 1)
             --encrypt 0|1        AES-128-GCM payload encryption (default 1)
             --source FILE        replay a disk image as the write content
             --seed N             load generator seed (default 1)
             --write-size SIZE    bytes per write (default 256KiB)
             --queue-depth N      writes in flight (default 32)
             --load builtin|none  none: no built-in load; serve the intake over NBD until SIGINT/SIGTERM
             --admin-password P   first password of REST user admin on both gateways (default: generated, printed)
             --mode async|sync|snapshots   replication mode of the demo VM (default async)
             --journal-capacity SIZE       production journal capacity (default 1GiB); overflow falls back to CBT
             --link-rate RATE     bandwidth cap on the link, e.g. 20MB/s (default none)
             --write-back         acknowledge writes once in the journal file (FLUSH/FUA make them durable)
             --snapshot-interval SECONDS   SnapshotsOnly: take a snapshot this often (default: one at the end)
             --api rest|jsonrpc   pair the gateways through the REST API (default) or the Element JSON-RPC API
             --failover planned|unplanned|test   after the load, the failover cycle under load (failover:, failback:)
  start    run one gateway: vrg start --config FILE
  api      call the management REST API: vrg api --url http://127.0.0.1:8080 --user admin --password P
             [--insecure] [--lang zh_CN|en_US] METHOD PATH [JSON-BODY]   e.g. GET /vrgstatus
  status   a gateway's VMs through its REST API: side, state, mode, lag (MiB and seconds behind), MB/s, ratio, RTT
             vrg status --url URL --password P [--user admin] [--json] [--watch [--count N]] [--interval 1]
  failover fail a VM over to its target gateway, through that gateway's REST API:
             vrg failover --url URL --password P [--user admin] --vm UUID [--type planned|unplanned|test] [--end]
             planned: the source stops and drains the VM, roles swap, nothing resynced; unplanned: the source site
             is gone, the DR copy becomes the VM's disk; test: a writable clone <volUuid>-test (--end discards it)
  failback move a failed-over VM home (a planned failover run on the home gateway, now its target):
             vrg failback --url URL --password P --vm UUID
  splitbrain resolve a split brain on the side whose writes lose: vrg splitbrain --url URL --password P --vm UUID
  rekey    rotate the link secret with the DR peer, on the production gateway: vrg rekey --url URL --password P
             (both sides store the next secret, the link reconnects with it, the old one is refused)
  cluster  cluster mode (gateways with a "cluster" config section share a site's VMs through etcd):
             vrg cluster status --etcd http://127.0.0.1:2379[,URL...] --site NAME [--json]
               members (load, draining), each VM's owner, fencing token, state and lag
             vrg cluster protect --etcd URL --site NAME --file VMS.json   store VM settings (one VM or a list)
             vrg cluster unprotect --etcd URL --site NAME --vm UUID
             vrg cluster drain --etcd URL --site NAME --member ID [--off]   move a member's VMs away (planned)
  chaos    a gateway pair under a stamped write load and a seeded schedule of faults, with checkers
             (nothing acknowledged lost, DR always a prefix image, Sync: every ack on DR, DR = production at the end)
             --seed N             the schedule's seed (default: random, printed); the same N replays it
             --duration SECONDS   length of the faulted load (default 30)
             --faults LIST        comma-separated kinds (default: all): ${faultKinds.join(' ')}
             --mode async|sync    replication mode (default async)
             --dir DIR            working directory (default ./vrg-chaos); report in DIR/chaos-report.json
             --plan               print the schedule and exit
  sim      the simulator: both gateways in this process, a seeded faulty network and faulty DR disks, the
             checkers of chaos; vrg sim [--seeds 200] [--from 1] [--mode async|sync] [--parallel 4] [--dir DIR]
             (default: Async on odd seeds, Sync on even ones); exit 1 naming each failing seed and its replay
  fault-proxy  a TCP fault proxy driven over Toxiproxy's HTTP API (its clients work unchanged):
             vrg fault-proxy [--host 127.0.0.1] [--port 8474] [--seed N] [--config PROXIES.json]
             toxics: latency bandwidth slow_close timeout reset_peer slicer limit_data down, and VRG's corrupt
  help     this text
`;

class UsageError extends Error {}

function flag01(v: string | undefined, name: string, def: 0 | 1): 0 | 1 {
  if (v === undefined) return def;
  if (v !== '0' && v !== '1') throw new UsageError(`--${name} must be 0 or 1, not "${v}"`);
  return v === '1' ? 1 : 0;
}

function positiveInt(v: string | undefined, name: string, def: number): number {
  if (v === undefined) return def;
  if (!/^\d+$/.test(v) || Number(v) <= 0) throw new UsageError(`--${name} must be a positive integer, not "${v}"`);
  return Number(v);
}

function loadKind(v: string | undefined): 'builtin' | 'none' {
  if (v === undefined || v === 'builtin') return 'builtin';
  if (v === 'none') return 'none';
  throw new UsageError(`--load must be "builtin" or "none", not "${v}"`);
}

function modeOf(v: string | undefined): 'async' | 'sync' | 'snapshots' {
  if (v === undefined) return 'async';
  if (v === 'async' || v === 'sync' || v === 'snapshots') return v;
  throw new UsageError(`--mode must be "async", "sync" or "snapshots", not "${v}"`);
}

function parseDemo(args: string[]): DemoOptions {
  const { values } = parseArgs({
    args, strict: true, allowPositionals: false,
    options: {
      dir: { type: 'string' }, size: { type: 'string' }, 'volume-size': { type: 'string' },
      compress: { type: 'string' }, encrypt: { type: 'string' }, source: { type: 'string' },
      seed: { type: 'string' }, 'write-size': { type: 'string' }, 'queue-depth': { type: 'string' },
      load: { type: 'string' }, 'admin-password': { type: 'string' }, mode: { type: 'string' },
      'journal-capacity': { type: 'string' }, 'link-rate': { type: 'string' }, 'snapshot-interval': { type: 'string' },
      api: { type: 'string' }, 'write-back': { type: 'boolean' }, failover: { type: 'string' },
    },
  });
  const o: DemoOptions = {
    dir: values.dir ?? './vrg-data',
    sizeBytes: parseSize(values.size ?? '512MiB', '--size'),
    volumeSizeBytes: parseSize(values['volume-size'] ?? '1GiB', '--volume-size'),
    compress: flag01(values.compress, 'compress', 1),
    encrypt: flag01(values.encrypt, 'encrypt', 1),
    source: values.source,
    seed: positiveInt(values.seed, 'seed', 1),
    writeBytes: parseSize(values['write-size'] ?? '256KiB', '--write-size'),
    queueDepth: positiveInt(values['queue-depth'], 'queue-depth', 32),
    load: loadKind(values.load),
    adminPassword: values['admin-password'],
    mode: modeOf(values.mode),
    journalCapacityBytes: parseSize(values['journal-capacity'] ?? '1GiB', '--journal-capacity'),
    linkRateBytesPerSec: values['link-rate'] === undefined ? 0 : parseSize(values['link-rate'], '--link-rate', { rate: true }),
    snapshotIntervalMs: values['snapshot-interval'] === undefined ? 0 : positiveInt(values['snapshot-interval'], 'snapshot-interval', 1) * 1000,
    writeBack: values['write-back'] === true,
  };
  if (values.api !== undefined && values.api !== 'rest' && values.api !== 'jsonrpc') throw new UsageError(`--api must be "rest" or "jsonrpc", not "${values.api}"`);
  if (values.api === 'jsonrpc') o.api = 'jsonrpc';
  if (values.failover !== undefined) {
    if (values.failover !== 'planned' && values.failover !== 'unplanned' && values.failover !== 'test') {
      throw new UsageError(`--failover must be planned, unplanned or test, not "${values.failover}"`);
    }
    if (o.load === 'none' || o.api === 'jsonrpc') throw new UsageError('--failover runs with the built-in load and the REST API');
    o.failover = values.failover;
  }
  if (o.journalCapacityBytes! < 2 * 1024 * 1024) throw new UsageError('--journal-capacity must be at least 2MiB');
  if (o.linkRateBytesPerSec !== 0 && o.linkRateBytesPerSec! < 64 * 1024) throw new UsageError('--link-rate must be at least 64KB/s');
  if (o.sizeBytes <= 0) throw new UsageError('--size must be more than 0 bytes');
  if (o.volumeSizeBytes < 1024 * 1024 || o.volumeSizeBytes % 4096 !== 0) {
    throw new UsageError('--volume-size must be at least 1MiB and a multiple of 4KiB');
  }
  if (o.writeBytes < 4096 || o.writeBytes % 4096 !== 0 || o.writeBytes > o.volumeSizeBytes) {
    throw new UsageError('--write-size must be a multiple of 4KiB between 4KiB and the volume size');
  }
  return o;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'demo': {
      const r = await runDemo(parseDemo(rest));
      return r.verified ? 0 : 1;
    }
    case 'start': {
      const { values } = parseArgs({ args: rest, strict: true, options: { config: { type: 'string' } } });
      if (!values.config) throw new UsageError('start needs --config FILE');
      await startCommand(values.config);
      return -1; // keeps running until a signal
    }
    case 'api': {
      const { values, positionals } = parseArgs({
        args: rest, strict: true, allowPositionals: true,
        options: { url: { type: 'string' }, user: { type: 'string' }, password: { type: 'string' }, insecure: { type: 'boolean' }, lang: { type: 'string' } },
      });
      const [method, path, body] = positionals;
      if (!values.url || values.password === undefined || !method || !path || positionals.length > 3) {
        throw new UsageError('api needs --url URL --password P [--user admin] METHOD PATH [JSON-BODY]');
      }
      return runApiCall({ url: values.url, user: values.user ?? 'admin', password: values.password, method, path, body,
        insecure: values.insecure ?? false, ...(values.lang ? { lang: values.lang } : {}) });
    }
    case 'status': {
      const { values } = parseArgs({
        args: rest, strict: true,
        options: { url: { type: 'string' }, user: { type: 'string' }, password: { type: 'string' }, json: { type: 'boolean' },
          watch: { type: 'boolean' }, interval: { type: 'string' }, count: { type: 'string' } },
      });
      if (!values.url || values.password === undefined) throw new UsageError('status needs --url URL --password P');
      const interval = values.interval === undefined ? 1 : Number(values.interval);
      if (!Number.isFinite(interval) || interval < 0.1 || interval > 3600) throw new UsageError(`--interval must be 0.1-3600 seconds, not "${values.interval}"`);
      return runStatus({
        url: values.url, user: values.user ?? 'admin', password: values.password, json: values.json ?? false, watch: values.watch ?? false,
        intervalMs: interval * 1000, ...(values.count === undefined ? {} : { count: positiveInt(values.count, 'count', 1) }),
      });
    }
    case 'cluster': {
      const [sub, ...args] = rest;
      if (sub !== 'status' && sub !== 'protect' && sub !== 'unprotect' && sub !== 'drain') {
        throw new UsageError(`cluster takes "status", "protect", "unprotect" or "drain", not "${sub ?? ''}"`);
      }
      const { values } = parseArgs({ args, strict: true, options: {
        etcd: { type: 'string' }, site: { type: 'string' }, json: { type: 'boolean' }, file: { type: 'string' }, vm: { type: 'string' },
        member: { type: 'string' }, off: { type: 'boolean' },
      } });
      const endpoints = (values.etcd ?? '').split(',').filter(Boolean);
      if (endpoints.length === 0 || !values.site) throw new UsageError(`cluster ${sub} needs --etcd URL[,URL...] --site NAME`);
      if (endpoints.some((e) => !/^https?:\/\/[^/]+$/.test(e))) throw new UsageError(`--etcd takes http(s)://host:port URLs, not "${values.etcd}"`);
      const site = values.site;
      if (sub === 'status') return runClusterStatus({ endpoints, site, json: values.json ?? false });
      if (sub === 'protect') {
        if (!values.file) throw new UsageError('cluster protect needs --file VMS.json');
        return runClusterProtect({ endpoints, site, file: values.file });
      }
      if (sub === 'unprotect') {
        if (!values.vm) throw new UsageError('cluster unprotect needs --vm UUID');
        return runClusterUnprotect({ endpoints, site, vmUuid: values.vm });
      }
      if (!values.member) throw new UsageError('cluster drain needs --member ID [--off]');
      return runClusterDrain({ endpoints, site, member: values.member, off: values.off ?? false });
    }
    case 'rekey': {
      const { values } = parseArgs({
        args: rest, strict: true,
        options: { url: { type: 'string' }, user: { type: 'string' }, password: { type: 'string' }, insecure: { type: 'boolean' } },
      });
      if (!values.url || values.password === undefined) throw new UsageError('rekey needs --url URL --password P');
      return runApiCall({ url: values.url, user: values.user ?? 'admin', password: values.password, insecure: values.insecure ?? false,
        method: 'POST', path: 'linkrekey', body: '{}' });
    }
    case 'failover':
    case 'failback':
    case 'splitbrain': {
      const { values } = parseArgs({
        args: rest, strict: true,
        options: { url: { type: 'string' }, user: { type: 'string' }, password: { type: 'string' }, insecure: { type: 'boolean' },
          vm: { type: 'string' }, type: { type: 'string' }, end: { type: 'boolean' } },
      });
      if (!values.url || values.password === undefined || !values.vm) throw new UsageError(`${cmd} needs --url URL --password P --vm UUID`);
      const call = { url: values.url, user: values.user ?? 'admin', password: values.password, insecure: values.insecure ?? false };
      if (cmd === 'splitbrain') return runApiCall({ ...call, method: 'POST', path: 'vmsplitbrain', body: JSON.stringify({ vmUuid: values.vm, survivor: 'peer' }) });
      const type = cmd === 'failback' ? 'planned' : values.type ?? 'planned';
      if (!['planned', 'unplanned', 'test'].includes(type)) throw new UsageError(`--type must be planned, unplanned or test, not "${type}"`);
      if (values.end) {
        if (type !== 'test') throw new UsageError('--end ends a test failover: use it with --type test');
        return runApiCall({ ...call, method: 'DELETE', path: `vmfailover/${encodeURIComponent(values.vm)}` });
      }
      return runApiCall({ ...call, method: 'POST', path: 'vmfailover', body: JSON.stringify({ vmUuid: values.vm, type }) });
    }
    case 'chaos': {
      const { values } = parseArgs({
        args: rest, strict: true,
        options: { seed: { type: 'string' }, duration: { type: 'string' }, faults: { type: 'string' }, mode: { type: 'string' },
          dir: { type: 'string' }, plan: { type: 'boolean' } },
      });
      const seed = values.seed === undefined ? 1 + Math.floor(Math.random() * 1e9) : positiveInt(values.seed, 'seed', 1);
      const seconds = /^(\d+)s?$/.exec(values.duration ?? '30');
      if (!seconds || Number(seconds[1]) < 5 || Number(seconds[1]) > 86_400) throw new UsageError(`--duration must be 5-86400 seconds, not "${values.duration}"`);
      const mode = values.mode ?? 'async';
      if (mode !== 'async' && mode !== 'sync') throw new UsageError(`--mode must be async or sync, not "${mode}"`);
      const o = { seed, durationMs: Number(seconds[1]) * 1000, mode, dir: values.dir ?? 'vrg-chaos', faults: chaosFaults(values.faults) } as const;
      if (values.plan) {
        process.stdout.write(`${replayCommand(o)}\n`);
        for (const f of planSchedule(o)) process.stdout.write(`+${(f.atMs / 1000).toFixed(1)}s #${f.n} ${describeFault(f)}\n`);
        return 0;
      }
      return (await runChaos(o)).passed ? 0 : 1;
    }
    case 'sim': {
      const { values } = parseArgs({
        args: rest, strict: true,
        options: { seeds: { type: 'string' }, from: { type: 'string' }, mode: { type: 'string' }, dir: { type: 'string' }, parallel: { type: 'string' } },
      });
      const mode = values.mode;
      if (mode !== undefined && mode !== 'async' && mode !== 'sync') throw new UsageError(`--mode must be async or sync, not "${mode}"`);
      const results = await runSimSeeds({
        from: positiveInt(values.from, 'from', 1), count: positiveInt(values.seeds, 'seeds', 200),
        dir: values.dir ?? join(tmpdir(), `vrg-sim-${process.pid}`), ...(mode ? { mode } : {}),
        parallel: positiveInt(values.parallel, 'parallel', 4),
      });
      return results.every((r) => r.violations.length === 0) ? 0 : 1;
    }
    case 'fault-proxy': {
      const { values } = parseArgs({
        args: rest, strict: true,
        options: { host: { type: 'string' }, port: { type: 'string' }, seed: { type: 'string' }, config: { type: 'string' } },
      });
      const port = values.port === undefined ? 8474 : Number(values.port);
      if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new UsageError(`--port must be 0-65535, not "${values.port}"`);
      await runFaultProxy({
        host: values.host ?? '127.0.0.1', port,
        ...(values.seed === undefined ? {} : { seed: positiveInt(values.seed, 'seed', 1) }),
        ...(values.config === undefined ? {} : { configPath: values.config }),
      });
      return -1; // serves until a signal
    }
    case undefined:
    case 'help':
    case '--help':
      process.stdout.write(usage);
      return 0;
    default:
      throw new UsageError(`unknown command "${cmd}"`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err: unknown) => {
    const e = err as Error & { code?: string };
    if (err instanceof UsageError || (e.code && isVrgError(err))) {
      // The stable code too: scripts (and tests) match on it, not on the text.
      process.stderr.write(`vrg: ${e.message}${isVrgError(err) ? ` (${err.code})` : ''}\n`);
      if (err instanceof UsageError) process.stderr.write(`run "vrg help" for the options\n`);
      process.exit(2);
    }
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' ||
        e.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      process.stderr.write(`vrg: ${e.message}\nrun "vrg help" for the options\n`);
      process.exit(2);
    }
    process.stderr.write(`vrg: ${e.stack ?? String(err)}\n`);
    process.exit(1);
  },
);

/** --faults: a list, or every kind (without the disk faults when nbdkit, their write agent, is not installed). */
function chaosFaults(v: string | undefined): FaultKind[] {
  if (v !== undefined && v !== 'all') {
    const list = parseFaultList(v);
    const disk = list.filter((f) => diskFaultKinds.includes(f));
    if (disk.length > 0 && !nbdkitAvailable()) throw new UsageError(`${disk.join(', ')} need nbdkit (Debian: apt install nbdkit)`);
    return list;
  }
  if (nbdkitAvailable()) return [...faultKinds];
  process.stderr.write(`vrg chaos: nbdkit is not installed: no ${diskFaultKinds.join(', ')} faults\n`);
  return faultKinds.filter((f) => !diskFaultKinds.includes(f));
}
