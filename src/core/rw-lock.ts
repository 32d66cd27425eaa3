// A readers–writer gate: readers share it, a writer has it alone. Writers take precedence over new
// readers, so a steady stream of reads cannot starve the DR side's apply of a batch.

export class RwLock {
  private readers = 0;
  private writing = false;
  private writersWaiting: Array<() => void> = [];
  private readersWaiting: Array<() => void> = [];

  async read<T>(fn: () => Promise<T>): Promise<T> {
    if (this.writing || this.writersWaiting.length > 0) {
      await new Promise<void>((resolve) => this.readersWaiting.push(resolve));
    } else {
      this.readers++;
    }
    try {
      return await fn();
    } finally {
      this.readers--;
      this.next();
    }
  }

  async write<T>(fn: () => Promise<T>): Promise<T> {
    if (this.writing || this.readers > 0) {
      await new Promise<void>((resolve) => this.writersWaiting.push(resolve));
    } else {
      this.writing = true;
    }
    try {
      return await fn();
    } finally {
      this.writing = false;
      this.next();
    }
  }

  /** Hands the gate on: to one waiting writer once no reader holds it, else to every waiting reader. */
  private next(): void {
    if (this.writing || this.readers > 0) return;
    const writer = this.writersWaiting.shift();
    if (writer) {
      this.writing = true;
      writer();
      return;
    }
    const readers = this.readersWaiting.splice(0);
    this.readers += readers.length;
    for (const r of readers) r();
  }
}
