import { Worker } from 'node:worker_threads';
import type { CodecWorkerData } from './floor-codec-worker.js';

// Main-thread side of the codec worker: one thread, jobs answered in the order they were posted (the worker
// handles its messages one at a time), so frames leave and get applied in sequence order.

export class FifoWorker<Job, Done> {
  /** The worker thread's Linux thread id (its first message), so the bench can tell its CPU apart. */
  readonly tid: Promise<number>;
  private readonly waiting: Array<{ resolve(d: Done): void; reject(e: Error): void }> = [];
  private readonly worker: Worker;

  constructor(data: CodecWorkerData) {
    this.worker = new Worker(new URL('./floor-codec-worker.js', import.meta.url), { workerData: data });
    this.tid = new Promise((resolve) => this.worker.once('message', (m: { tid: number }) => {
      resolve(m.tid);
      this.worker.on('message', (d: Done) => this.waiting.shift()?.resolve(d));
    }));
    this.worker.on('error', (err) => {
      // A bad tag or a failed decode in the worker: every waiting job fails (the caller treats it as fatal).
      for (const w of this.waiting.splice(0)) w.reject(err);
    });
  }

  run(job: Job): Promise<Done> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.worker.postMessage(job);
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
