import { seededRandom } from '../core/random.js';
import { NbdClient } from '../volume/nbd-client.js';
import { blockBytes, stampedBlock } from './stamps.js';

// The write load of `vrg chaos`: one NBD client on production's export writing stamped 4 KiB blocks, one at a
// time, to blocks the seed picks. Write k carries stamp k, so an image tells which prefix of the history it
// holds. A write whose fate is unknown (the connection died under it, production was killed) is sent again,
// same block, same stamp, until it is acknowledged: the history stays one sequence, and a write is never
// counted acknowledged unless production said so.

export interface Endpoint {
  host: string;
  port: number;
}

export class StampedLoad {
  /** history[k - 1]: the block written by stamp k (the first ones, the VM's data before protection). */
  readonly history: number[];
  /** Stamps 1..acked are acknowledged (one write at a time, so acknowledgements come in order). */
  acked: number;
  resent = 0;
  private client: NbdClient | null = null;
  private stopping = false;
  private running: Promise<void> | null = null;
  private readonly rnd;

  constructor(private readonly endpoint: () => Endpoint | null, private readonly exportName: string,
    private readonly blockCount: number, seed: number, private readonly giveUpAfterMs: number, prefilled: readonly number[] = []) {
    this.rnd = seededRandom(seed ^ 0x51ed270b);
    this.history = [...prefilled];
    this.acked = prefilled.length;
  }

  start(): void {
    this.running = this.run();
  }

  /** Stops after the write in flight is acknowledged; rejects if production never acknowledged it. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
    await this.client?.disconnect().catch(() => undefined);
    this.client = null;
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      const stamp = this.history.length + 1;
      const block = Math.floor(this.rnd.float() * this.blockCount);
      this.history.push(block);
      await this.writeUntilAcked(stamp, block);
      this.acked = stamp;
    }
  }

  private async writeUntilAcked(stamp: number, block: number): Promise<void> {
    const data = stampedBlock(stamp, block);
    const deadline = Date.now() + this.giveUpAfterMs;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) {
        this.resent++;
        await new Promise((r) => setTimeout(r, 50));
      }
      try {
        const c = this.client ?? (this.client = await this.connect());
        await c.write(block * blockBytes, data);
        return;
      } catch (err) {
        this.client?.destroy();
        this.client = null;
        if (Date.now() > deadline) throw new Error(`write ${stamp} not acknowledged within ${this.giveUpAfterMs} ms: ${(err as Error).message}`);
      }
    }
  }

  private async connect(): Promise<NbdClient> {
    const at = this.endpoint();
    if (at === null) throw new Error('production is not running');
    return NbdClient.connect({ ...at, exportName: this.exportName, connectTimeoutMs: 2_000, requestTimeoutMs: 15_000, maxInFlight: 4 });
  }
}

/** A whole export in one read request (a replica export serves it between two applied batches). */
export async function readImage(at: Endpoint, exportName: string, sizeBytes: number, timeoutMs: number): Promise<Buffer> {
  const c = await NbdClient.connect({ ...at, exportName, connectTimeoutMs: 2_000, requestTimeoutMs: timeoutMs });
  try {
    return await c.read(0, sizeBytes);
  } finally {
    await c.disconnect().catch(() => c.destroy());
  }
}
