import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCode, vrgError } from '../core/errors.js';
import { RwLock } from '../core/rw-lock.js';
import { limits } from '../core/limits.js';
import type { LinkConnection } from '../link/connection.js';
import { LinkServer } from '../link/link-server.js';
import { RecordKind } from '../journal/journal.js';
import { FrameType, type RawFrame } from '../protocol/frame.js';
import { encodeAck, type Resume, type WriteBatch } from '../protocol/messages.js';
import { openVolume } from '../volume/open-volume.js';
import { applyInOrder, type VolumeOp } from '../volume/ordered-writes.js';
import type { Volume } from '../volume/volume.js';
import { ApplyState } from './apply-state.js';
import type { GatewayConfig, VmConfig } from './config.js';
import type { GatewayDeps } from './production-gateway.js';

// The DR gateway: authenticates and opens write batches in the codec pool, applies each VM's records
// to its target volumes strictly in production order, makes them durable (fdatasync of the targets,
// then the apply state), and only then acknowledges them. Group commit: while one durability point is
// being written, later batches keep applying; the ack names the seq captured before the flush began.

class DrVm {
  appliedSeq: number;
  durableSeq: number;
  bytesApplied = 0;
  recordsApplied = 0;
  duplicatesSkipped = 0;
  lastProducedAtMs = 0;
  /** Batches apply under the write side; replica reads take the read side, so none sees half a batch. */
  readonly gate = new RwLock();

  constructor(
    readonly config: VmConfig,
    readonly volumes: Map<string, Volume>,
    readonly state: ApplyState,
  ) {
    this.appliedSeq = state.appliedSeq;
    this.durableSeq = state.appliedSeq;
  }
}

interface Opened {
  batch: WriteBatch;
  data: Buffer;
}

export interface DrVmStatus {
  vmUuid: string;
  appliedSeq: number;
  durableSeq: number;
  bytesApplied: number;
  recordsApplied: number;
  duplicatesSkipped: number;
}

export interface DrStatus {
  role: 'dr';
  connected: boolean;
  linkPort: number;
  vms: DrVmStatus[];
}

export class DrGateway {
  private conn: LinkConnection | null = null;
  private queue: Array<Promise<Opened>> = [];
  private applying = false;
  private flushing = false;
  private idleWaiters: Array<() => void> = [];

  private constructor(
    readonly config: GatewayConfig,
    private readonly deps: GatewayDeps,
    private readonly vms: Map<string, DrVm>,
    private readonly server: LinkServer,
    readonly linkPort: number,
  ) {
    server.on('connection', (conn: LinkConnection) => this.attach(conn));
  }

  static async open(config: GatewayConfig, deps: GatewayDeps): Promise<DrGateway> {
    const vms = new Map<string, DrVm>();
    for (const vmc of config.vms) {
      const volumes = new Map<string, Volume>();
      for (const v of vmc.volumes) {
        volumes.set(v.volUuid, await (deps.openVolume ?? openVolume)(v.url, { sizeBytes: v.sizeBytes, create: true }));
      }
      const dir = join(config.dataDir, 'dr', vmc.vmUuid);
      await mkdir(dir, { recursive: true });
      vms.set(vmc.vmUuid, new DrVm(vmc, volumes, await ApplyState.open(join(dir, 'applied.state'))));
    }
    const resume = (): Resume => ({
      // The durable position, not the applied one: production trims its journal to what we report.
      // Records between the two are resent and skipped here, so each still applies exactly once.
      vms: [...vms.values()].map((vm) => ({ vmUuid: vm.config.vmUuid, appliedSeq: vm.durableSeq })),
    });
    const server = new LinkServer({
      transport: deps.transport, gatewayId: config.gatewayId, role: 'dr', secret: config.link.secret,
      clock: deps.clock, random: deps.random, logger: deps.logger, resume,
    });
    const port = await server.listen(config.link.host, config.link.port);
    for (const vm of vms.values()) deps.logger.info({ vmUuid: vm.config.vmUuid, durableSeq: vm.durableSeq }, 'dr vm opened');
    return new DrGateway(config, deps, vms, server, port);
  }

  /**
   * Reads a DR replica as of a batch boundary: production's image at some point of its acknowledged
   * write history (for test failover and verification).
   */
  readReplica(volUuid: string, offset: number, length: number): Promise<Buffer> {
    for (const vm of this.vms.values()) {
      const volume = vm.volumes.get(volUuid);
      if (volume) return vm.gate.read(() => volume.read(offset, length));
    }
    return Promise.reject(vrgError(ErrorCode.VOLUME_NOT_FOUND, `no replica volume ${volUuid}`, { volUuid }));
  }

  /** The replica volumes, for exporting them read-only. */
  replicaVolumes(): Array<{ vmUuid: string; volUuid: string; sizeBytes: number }> {
    return [...this.vms.values()].flatMap((vm) => [...vm.volumes.entries()].map(([volUuid, v]) => ({
      vmUuid: vm.config.vmUuid, volUuid, sizeBytes: v.sizeBytes,
    })));
  }

  status(): DrStatus {
    return {
      role: 'dr',
      connected: this.conn !== null,
      linkPort: this.linkPort,
      vms: [...this.vms.values()].map((vm) => ({
        vmUuid: vm.config.vmUuid, appliedSeq: vm.appliedSeq, durableSeq: vm.durableSeq,
        bytesApplied: vm.bytesApplied, recordsApplied: vm.recordsApplied, duplicatesSkipped: vm.duplicatesSkipped,
      })),
    };
  }

  async close(): Promise<void> {
    await this.server.close();
    this.conn?.close();
    this.conn = null;
    await this.idle();
    await this.flushDurable();
    for (const vm of this.vms.values()) {
      for (const v of vm.volumes.values()) await v.close();
      await vm.state.close();
    }
  }

  private idle(): Promise<void> {
    if (!this.applying && !this.flushing) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private attach(conn: LinkConnection): void {
    this.conn = conn;
    this.queue = [];
    conn.on('writeBatch', (seq: number, raw: RawFrame) => {
      if (this.queue.length >= limits.framesInFlightMax * 2) {
        conn.close(vrgError(ErrorCode.FRAME_UNEXPECTED, 'peer exceeded the in-flight window'));
        return;
      }
      const opened = this.deps.codec.openBatch({ keys: conn.recvKeys, expectedSeq: seq, frame: raw.bytes });
      opened.catch(() => undefined); // observed in order by applyLoop
      this.queue.push(opened);
      this.kickApply(conn);
    });
    conn.on('close', () => {
      if (this.conn === conn) {
        this.conn = null;
        this.queue = [];
      }
    });
    this.kickFlush();
  }

  private kickApply(conn: LinkConnection): void {
    if (this.applying) return;
    this.applying = true;
    void this.applyLoop(conn).finally(() => {
      this.applying = false;
      if (this.queue.length > 0 && this.conn) this.kickApply(this.conn);
      else this.settleIdle();
    });
  }

  private async applyLoop(conn: LinkConnection): Promise<void> {
    while (this.conn === conn && this.queue.length > 0) {
      let opened: Opened;
      try {
        opened = await this.queue[0]!;
      } catch (err) {
        // Nothing of a frame that fails authentication or decoding is applied, nor anything after it.
        conn.close(err as Error);
        return;
      }
      if (this.conn !== conn) return;
      this.queue.shift();
      try {
        await this.applyBatch(opened.batch, opened.data);
      } catch (err) {
        this.deps.logger.error({ err }, 'apply failed');
        this.rewindToDurable();
        conn.close(err as Error);
        return;
      }
      this.kickFlush();
    }
  }

  /** Validates the whole batch first, so a bad batch changes nothing; then applies it in order. */
  private async applyBatch(batch: WriteBatch, data: Buffer): Promise<void> {
    const vm = this.vms.get(batch.vmUuid);
    if (!vm) throw vrgError(ErrorCode.VM_NOT_FOUND, `batch for unknown VM ${batch.vmUuid}`);
    if (batch.firstSeq > vm.appliedSeq + 1) {
      throw vrgError(ErrorCode.APPLY_GAP, `VM ${batch.vmUuid}: batch starts at ${batch.firstSeq}, applied ${vm.appliedSeq}`);
    }
    const volumes = batch.volumeUuids.map((u) => {
      const v = vm.volumes.get(u);
      if (!v) throw vrgError(ErrorCode.VOLUME_NOT_FOUND, `VM ${batch.vmUuid} has no target volume ${u}`);
      return v;
    });
    const ops: VolumeOp[] = [];
    let at = 0;
    let skipped = 0;
    batch.records.forEach((r, i) => {
      const volume = volumes[r.volumeIndex];
      if (!volume || r.offset + r.length > volume.sizeBytes) {
        throw vrgError(ErrorCode.VOLUME_OUT_OF_RANGE, `record ${batch.firstSeq + i} outside its target volume`);
      }
      const payload = r.kind === RecordKind.WRITE ? data.subarray(at, at + r.length) : null;
      if (payload) at += r.length;
      // Records already applied (a resend after reconnect) are skipped: each applies exactly once.
      if (batch.firstSeq + i <= vm.appliedSeq) {
        skipped++;
        return;
      }
      if (r.kind === RecordKind.BARRIER) return;
      // A TRIM applies as zeroing: production's trim reads back zeros, and a discard on a DR block
      // device or write agent need not, which would leave the replica different.
      const kind = r.kind === RecordKind.WRITE ? 'write' : 'zero';
      ops.push({ volume, offset: r.offset, length: r.length, data: payload, kind });
    });
    if (at !== data.byteLength) throw vrgError(ErrorCode.FRAME_MALFORMED, 'batch data length does not match its records');
    await vm.gate.write(() => applyInOrder(ops));
    const lastSeq = batch.firstSeq + batch.records.length - 1;
    if (lastSeq > vm.appliedSeq) {
      vm.appliedSeq = lastSeq;
      vm.lastProducedAtMs = batch.producedAtMs;
    }
    vm.duplicatesSkipped += skipped;
    vm.recordsApplied += batch.records.length - skipped;
    vm.bytesApplied += data.byteLength;
    const msg = skipped === batch.records.length ? 'skipped' : 'applied';
    this.deps.logger.debug({ vmUuid: vm.config.vmUuid, firstSeq: batch.firstSeq, lastSeq, skipped }, msg);
  }

  /**
   * After a target volume failed (a write agent dropped, a flush refused), what was applied since the
   * last durability point may be lost on the target: forget it, so the resend from the durable position
   * (production resumes from there on the next connection) applies it again instead of skipping it.
   */
  private rewindToDurable(): void {
    for (const vm of this.vms.values()) vm.appliedSeq = vm.durableSeq;
  }

  private kickFlush(): void {
    if (this.flushing) return;
    this.flushing = true;
    void this.flushDurable()
      .catch((err) => {
        this.deps.logger.error({ err }, 'durability flush failed');
        this.rewindToDurable();
        this.conn?.close(err as Error);
      })
      .finally(() => {
        this.flushing = false;
        this.settleIdle();
      });
  }

  /** Makes everything applied so far durable, then acknowledges it; repeats while more was applied. */
  private async flushDurable(): Promise<void> {
    for (;;) {
      const due = [...this.vms.values()].filter((vm) => vm.appliedSeq > vm.durableSeq);
      if (due.length === 0) break;
      const marks = due.map((vm) => vm.appliedSeq);
      await Promise.all(due.flatMap((vm) => [...vm.volumes.values()].map((v) => v.flush())));
      await Promise.all(due.map((vm, i) => vm.state.save(marks[i]!, this.deps.clock.nowMs())));
      due.forEach((vm, i) => {
        vm.durableSeq = marks[i]!;
        this.conn?.sendControl(FrameType.ACK, encodeAck({ vmUuid: vm.config.vmUuid, durableSeq: vm.durableSeq }));
      });
    }
  }

  private settleIdle(): void {
    if (this.applying || this.flushing) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
