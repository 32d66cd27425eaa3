import type { Clock, TimerHandle } from '../core/clock.js';
import type { Logger } from '../core/log.js';
import type { ClusterWatch, EtcdRegistry } from './etcd-registry.js';

// Runs a cluster member's round: on every change etcd reports (watches of its site and the peer site) and every
// intervalMs in case a watch missed one. Rounds never overlap: kicks during a round coalesce into one more.
// A failed round (etcd unreachable, a VM that would not open) is logged and retried at the next kick.

export interface RoundRunnerOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly intervalMs: number;
  readonly round: () => Promise<void>;
}

export class RoundRunner {
  private busy: Promise<void> | null = null;
  private again = false;
  private timer: TimerHandle | null = null;
  private watches: ClusterWatch[] = [];
  running = false;
  rounds = 0;
  failures = 0;

  constructor(private readonly o: RoundRunnerOptions) {}

  async start(registries: readonly EtcdRegistry[]): Promise<void> {
    this.running = true;
    for (const r of registries) {
      this.watches.push(await r.watch(() => this.kick(), (err) => this.o.logger.warn({ err: err.message }, 'cluster: watch ended')));
    }
    this.tick();
    this.kick();
  }

  kick(): void {
    if (!this.running) return;
    if (this.busy !== null) {
      this.again = true;
      return;
    }
    this.busy = this.loop().finally(() => { this.busy = null; });
  }

  /** Resolves once no round runs; no round starts after it. */
  async stop(): Promise<void> {
    this.running = false;
    this.timer?.cancel();
    await Promise.all(this.watches.map((w) => w.close().catch(() => undefined)));
    this.watches = [];
    await this.busy;
  }

  private tick(): void {
    this.timer = this.o.clock.setTimer(this.o.intervalMs, () => {
      this.kick();
      if (this.running) this.tick();
    });
  }

  private async loop(): Promise<void> {
    do {
      this.again = false;
      try {
        await this.o.round();
        this.rounds++;
      } catch (err) {
        this.failures++;
        this.o.logger.warn({ err: { code: (err as { code?: string }).code, message: (err as Error).message } }, 'cluster: round failed');
        return;
      }
    } while (this.again && this.running);
  }
}
