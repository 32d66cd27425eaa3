import { join } from 'node:path';
import type { Clock, TimerHandle } from '../core/clock.js';
import { limits } from '../core/limits.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { Random } from '../core/random.js';
import { Journal, RecordKind } from '../journal/journal.js';
import type { LinkConnection } from '../link/connection.js';
import { LinkClient } from '../link/link-client.js';
import type { Transport } from '../link/transport.js';
import type { Codec } from '../pipeline/codec.js';
import { decodeRecordPayload } from '../pipeline/record-payload.js';
import { applyInOrder } from '../volume/ordered-writes.js';
import { FrameType } from '../protocol/frame.js';
import type { Ack, Resume } from '../protocol/messages.js';
import { openVolume } from '../volume/open-volume.js';
import type { Volume } from '../volume/volume.js';
import type { GatewayConfig, VmConfig } from './config.js';
import { Intake, toVolumeOp } from './intake.js';
import { Shipper } from './shipper.js';

/**
 * The journal is written ahead of the source volume, so after a crash the source may lack the tail of
 * what the journal holds (and DR will get). Re-applying every record still in the journal, in order,
 * is idempotent and brings the source up to the journal's last record.
 */
async function replayOntoSource(journal: Journal, volumes: Volume[], logger: Logger): Promise<void> {
  let seq = journal.firstSeq;
  let records = 0;
  while (seq <= journal.lastSeq) {
    const batch = await journal.read(seq, 16 * 1024 * 1024);
    await applyInOrder(batch.map((r) => toVolumeOp(volumes[r.volumeIndex]!, {
      volumeIndex: r.volumeIndex, offset: r.offset, kind: r.kind, length: r.length,
      data: r.kind === RecordKind.WRITE ? decodeRecordPayload(r.codec, r.payload, r.length) : null,
    })));
    seq = batch[batch.length - 1]!.seq + 1;
    records += batch.length;
  }
  await Promise.all(volumes.map((v) => v.flush()));
  if (records > 0) logger.info({ records, firstSeq: journal.firstSeq, lastSeq: journal.lastSeq }, 'journal replayed onto the source volumes');
}

export interface GatewayDeps {
  clock: Clock;
  random: Random;
  transport: Transport;
  codec: Codec;
  logger: Logger;
  /** The block store: opens a volume by URL (default openVolume; a simulator or test may wrap it). */
  openVolume?: typeof openVolume;
}

class ProductionVm {
  /** The journal is trimmed up to here: DR has it durably and so do the source volumes. */
  checkpointSeq = 0;
  lastCheckpointMs = 0;
  checkpointing: Promise<void> | null = null;

  constructor(
    readonly config: VmConfig,
    readonly volumes: Volume[],
    readonly journal: Journal,
    readonly intake: Intake,
    readonly shipper: Shipper,
  ) {}
}

export interface ProductionVmStatus {
  vmUuid: string;
  lastSeq: number;
  ackedSeq: number;
  backlogRecords: number;
  journalUsedBytes: number;
  journalCapacityBytes: number;
  lagMs: number;
  writes: number;
  bytesIn: number;
  bytesStored: number;
  bytesSent: number;
  fault: string | null;
}

export interface ProductionStatus {
  role: 'production';
  connected: boolean;
  rttMs: number | null;
  vms: ProductionVmStatus[];
}

/**
 * The production gateway: intake API → source volume + journal → codec pool → link to the DR gateway.
 * `write` settles per SPEC §2.1's Async rule: once the data is on the source volume and durable in the journal.
 */
export class ProductionGateway {
  private conn: LinkConnection | null = null;
  private readonly byVolume = new Map<string, { vm: ProductionVm; index: number }>();
  private readonly roomWaiters: Array<() => void> = [];
  private checkpointTimer: TimerHandle | null = null;
  private closed = false;

  private constructor(
    readonly config: GatewayConfig,
    private readonly deps: GatewayDeps,
    private readonly vms: ProductionVm[],
    private readonly link: LinkClient,
  ) {
    for (const vm of vms) vm.config.volumes.forEach((v, index) => this.byVolume.set(v.volUuid, { vm, index }));
    link.on('connected', (conn: LinkConnection) => this.onConnected(conn));
    link.on('disconnected', (err: Error | null) => this.onDisconnected(err));
  }

  static async open(config: GatewayConfig, deps: GatewayDeps): Promise<ProductionGateway> {
    const volUuids = new Set<string>();
    for (const vm of config.vms) {
      for (const v of vm.volumes) {
        if (volUuids.has(v.volUuid)) throw vrgError(ErrorCode.CONFIG_INVALID, `volUuid ${v.volUuid} is used twice`);
        volUuids.add(v.volUuid);
      }
    }
    const perVmCapacity = Math.floor(config.journalCapacityBytes / Math.max(1, config.vms.length));
    const holder: { gw?: ProductionGateway } = {};
    const vms: ProductionVm[] = [];
    for (const vmc of config.vms) {
      const volumes: Volume[] = [];
      for (const v of vmc.volumes) volumes.push(await (deps.openVolume ?? openVolume)(v.url, { sizeBytes: v.sizeBytes, create: true }));
      const logger = deps.logger.child({ vmUuid: vmc.vmUuid });
      const journal = await Journal.open({
        dir: join(config.dataDir, 'journal', vmc.vmUuid), capacityBytes: perVmCapacity, clock: deps.clock, logger,
      });
      await replayOntoSource(journal, volumes, logger);
      const shipper = new Shipper(vmc.vmUuid, vmc.volumes.map((v) => v.volUuid), journal, deps.codec, {
        encrypt: () => vmc.encryptOption === 1,
        onAcked: () => holder.gw?.checkpointSoon(),
        logger,
      });
      const intake = new Intake(journal, deps.codec, volumes, {
        compress: () => vmc.compressOption === 1,
        waitForRoom: () => holder.gw!.waitForRoom(),
        onCommitted: () => shipper.notify(),
        logger,
      });
      vms.push(new ProductionVm(vmc, volumes, journal, intake, shipper));
    }
    const link = new LinkClient({
      transport: deps.transport, host: config.link.host, port: config.link.port,
      gatewayId: config.gatewayId, role: 'production', secret: config.link.secret,
      clock: deps.clock, random: deps.random, logger: deps.logger,
    });
    const gw = new ProductionGateway(config, deps, vms, link);
    holder.gw = gw;
    link.start();
    gw.scheduleCheckpoints();
    return gw;
  }

  /** The protected volumes, for the NBD front. */
  protectedVolumes(): Array<{ vmUuid: string; volUuid: string; volume: Volume }> {
    return this.vms.flatMap((vm) => vm.config.volumes.map((v, i) => ({ vmUuid: vm.config.vmUuid, volUuid: v.volUuid, volume: vm.volumes[i]! })));
  }

  // ---- intake API (the NBD front calls these) ----

  async write(volUuid: string, offset: number, data: Uint8Array): Promise<void> {
    const { vm, index } = this.volume(volUuid);
    return vm.intake.submit({ volumeIndex: index, offset, kind: RecordKind.WRITE, length: data.byteLength, data });
  }

  async writeZeroes(volUuid: string, offset: number, length: number): Promise<void> {
    const { vm, index } = this.volume(volUuid);
    return vm.intake.submit({ volumeIndex: index, offset, kind: RecordKind.ZERO, length, data: null });
  }

  async trim(volUuid: string, offset: number, length: number): Promise<void> {
    const { vm, index } = this.volume(volUuid);
    return vm.intake.submit({ volumeIndex: index, offset, kind: RecordKind.TRIM, length, data: null });
  }

  /**
   * NBD FLUSH: everything acknowledged before the call is durable. In Async mode an acknowledged write
   * is already durable in the journal, which is the source volumes' write-ahead log (replayed onto them
   * at start, trimmed only at checkpoints after they are fsynced), so there is nothing left to wait for.
   */
  async flush(): Promise<void> {
    if (this.closed) throw vrgError(ErrorCode.CLOSED, 'gateway is closed');
  }

  /** Resolves once the DR side has durably applied everything written before the call. */
  async drain(): Promise<void> {
    await Promise.all(this.vms.map(async (vm) => {
      await vm.intake.idle();
      await vm.shipper.waitAcked(vm.journal.lastSeq);
    }));
  }

  status(): ProductionStatus {
    const now = this.deps.clock.nowMs();
    return {
      role: 'production',
      connected: this.conn !== null,
      rttMs: this.conn?.rttMs ?? null,
      vms: this.vms.map((vm) => {
        const behind = vm.journal.lastSeq - vm.shipper.ackedSeq;
        return {
          vmUuid: vm.config.vmUuid,
          lastSeq: vm.journal.lastSeq,
          ackedSeq: vm.shipper.ackedSeq,
          backlogRecords: behind,
          journalUsedBytes: vm.journal.usedBytes,
          journalCapacityBytes: vm.journal.capacityBytes,
          lagMs: behind === 0 ? 0 : Math.max(0, now - vm.shipper.ackedProducedAtMs),
          writes: vm.intake.stats.writes,
          bytesIn: vm.intake.stats.bytesIn,
          bytesStored: vm.intake.stats.bytesStored,
          bytesSent: vm.shipper.stats.bytesSent,
          fault: vm.shipper.fault,
        };
      }),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.checkpointTimer?.cancel();
    this.link.stop();
    this.onDisconnected(null);
    for (const vm of this.vms) {
      await vm.intake.close();
      await vm.checkpointing;
      await vm.journal.close();
      for (const v of vm.volumes) {
        await v.flush();
        await v.close();
      }
    }
    for (const w of this.roomWaiters.splice(0)) w();
  }

  private volume(volUuid: string): { vm: ProductionVm; index: number } {
    const found = this.byVolume.get(volUuid);
    if (!found) throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `no protected volume ${volUuid}`, { volUuid });
    return found;
  }

  /** A full journal waits for a checkpoint to trim it (issue 4 adds the CBT fallback). */
  private waitForRoom(): Promise<void> {
    const p = new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    this.checkpointSoon();
    return p;
  }

  scheduleCheckpoints(): void {
    if (this.closed) return;
    this.checkpointTimer = this.deps.clock.setTimer(limits.checkpointIntervalMs, () => {
      this.checkpointSoon();
      this.scheduleCheckpoints();
    });
  }

  /** Checkpoints each VM that is due: interval elapsed, journal filling up, or writers waiting for room. */
  checkpointSoon(): void {
    const now = this.deps.clock.nowMs();
    for (const vm of this.vms) {
      const due = this.roomWaiters.length > 0 ||
        vm.journal.usedBytes >= vm.journal.capacityBytes * limits.checkpointJournalFraction ||
        now - vm.lastCheckpointMs >= limits.checkpointIntervalMs;
      if (due) this.checkpoint(vm);
    }
  }

  /**
   * Trims the journal to what DR acknowledged *and* the source volumes hold durably: the source writes
   * are not fsynced per write (the journal is their WAL), so they are fsynced here, before the journal
   * forgets the records that could have replayed them.
   */
  private checkpoint(vm: ProductionVm): void {
    const target = Math.min(vm.shipper.ackedSeq, vm.intake.sourceAppliedSeq);
    if (vm.checkpointing || target <= vm.checkpointSeq) return;
    vm.checkpointing = (async () => {
      await Promise.all(vm.volumes.map((v) => v.flush()));
      await vm.journal.trim(target);
      vm.checkpointSeq = target;
      vm.lastCheckpointMs = this.deps.clock.nowMs();
    })()
      .catch((err) => this.deps.logger.error({ err }, 'checkpoint failed'))
      .finally(() => {
        vm.checkpointing = null;
        for (const w of this.roomWaiters.splice(0)) w();
      });
  }

  private onConnected(conn: LinkConnection): void {
    this.conn = conn;
    const resume: Resume = conn.resume ?? { vms: [] };
    conn.on('control', (type: number, msg: unknown) => {
      if (type !== FrameType.ACK) return;
      const ack = msg as Ack;
      const vm = this.vms.find((v) => v.config.vmUuid === ack.vmUuid);
      if (!vm) {
        conn.close(vrgError(ErrorCode.VM_NOT_FOUND, `ack for unknown VM ${ack.vmUuid}`));
        return;
      }
      vm.shipper.onAck(ack.durableSeq);
    });
    for (const vm of this.vms) {
      const at = resume.vms.find((r) => r.vmUuid === vm.config.vmUuid);
      if (!at) {
        vm.shipper.fault = `DR gateway ${conn.peer.gatewayId} does not protect VM ${vm.config.vmUuid}`;
        this.deps.logger.error({ vmUuid: vm.config.vmUuid }, vm.shipper.fault);
        continue;
      }
      vm.shipper.attach(conn, at.appliedSeq);
    }
  }

  private onDisconnected(err: Error | null): void {
    if (err) this.deps.logger.warn({ err: { code: (err as { code?: string }).code, message: err.message } }, 'link down');
    this.conn = null;
    for (const vm of this.vms) vm.shipper.detach();
  }
}
