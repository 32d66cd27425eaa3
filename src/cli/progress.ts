import { formatBytes } from '../core/size.js';

// A live status line on a terminal; plain periodic lines when stdout is a pipe or a file.

export interface ProgressSample {
  loadBytes: number;
  loadTotalBytes: number;
  /** Journal records DR has not acknowledged yet. */
  backlogRecords: number;
  /** Bytes the journal holds (unacknowledged records plus those waiting for a checkpoint). */
  journalBytes: number;
  ratio: number;
  rttMs: number | null;
  connected: boolean;
  state: string;
}

export class ProgressDisplay {
  private lastAt = 0;
  private lastLoad = 0;
  private lastPrintAt = 0;
  private readonly tty: boolean;

  constructor(private readonly out: NodeJS.WriteStream = process.stdout, private readonly plainEveryMs = 1000) {
    this.tty = out.isTTY === true;
  }

  update(s: ProgressSample, nowMs: number): void {
    const dt = (nowMs - this.lastAt) / 1000;
    const rate = this.lastAt === 0 || dt <= 0 ? 0 : (s.loadBytes - this.lastLoad) / dt / 1e6;
    this.lastAt = nowMs;
    this.lastLoad = s.loadBytes;
    const load = s.loadTotalBytes > 0
      ? `load ${formatBytes(s.loadBytes)}/${formatBytes(s.loadTotalBytes)} (${((100 * s.loadBytes) / s.loadTotalBytes).toFixed(0)}%)`
      : `received ${formatBytes(s.loadBytes)}`;
    const line = `progress: ${s.state} ${load} ` +
      `${rate.toFixed(1)} MB/s  backlog ${s.backlogRecords} writes  journal ${formatBytes(s.journalBytes)}  ratio ${s.ratio.toFixed(2)}:1  ` +
      `link ${s.connected ? 'up' : 'down'}${s.rttMs === null ? '' : ` rtt ${s.rttMs.toFixed(2)} ms`}`;
    if (this.tty) {
      this.out.write(`\r\x1b[K${line}`);
    } else if (nowMs - this.lastPrintAt >= this.plainEveryMs) {
      this.lastPrintAt = nowMs;
      this.out.write(`${line}\n`);
    }
  }

  /** Ends the live line so the next output starts on a fresh one. */
  finish(): void {
    if (this.tty) this.out.write('\n');
  }
}
