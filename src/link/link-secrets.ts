import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { writeJsonAtomic } from '../core/atomic-file.js';
import { assert } from '../core/assert.js';
import { nodeFiles, type Files } from '../core/files.js';

// Rotated link secrets (vrg rekey), kept per pairing in <dataDir>/link-secrets.json (mode 0600). A pairing is
// named by a hash of the secret it was configured with (config link.secret, or a cluster pair's secret), so
// both sides find the same entry without naming each other, and a new pairing starts from its own secret.
//
// Rotation (production = the link's client, DR = its server):
//   P -> D REKEY(nonceP)      D derives next, stores {current, next} durably, then answers
//   D -> P REKEY_ACK(nonceD)  P derives next, stores {current: next} durably, closes the link, reconnects
//   P's next handshake proves next: D stores {current: next}; the old secret is refused from then on.
// A crash at any point leaves a state that still connects: D accepts current and next until one proves itself.
//
// Layout: { "version": 1, "pairings": { "<sha256(initial) hex>": { "generation": n, "current": hex, "next": hex|null } } }

export interface PairingSecrets {
  /** 0 = the configured secret, +1 per rotation. */
  generation: number;
  current: Buffer;
  /** DR only: the secret a rotation in progress will make current once a handshake proves it. */
  next: Buffer | null;
}

interface Entry { generation: number; current: string; next: string | null }

export function pairingId(initialSecret: Buffer): string {
  return createHash('sha256').update('vrg-link-pairing\0').update(initialSecret).digest('hex');
}

export class LinkSecretStore {
  private constructor(private readonly path: string, private readonly files: Files, private readonly entries: Map<string, Entry>) {}

  static async open(dataDir: string, files: Files = nodeFiles): Promise<LinkSecretStore> {
    const path = join(dataDir, 'link-secrets.json');
    let doc: { version: number; pairings: Record<string, Entry> } = { version: 1, pairings: {} };
    try {
      doc = JSON.parse((await files.readFile(path)).toString('utf8')) as typeof doc;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    assert(doc.version === 1 && typeof doc.pairings === 'object', `${path}: link secrets version 1`);
    return new LinkSecretStore(path, files, new Map(Object.entries(doc.pairings)));
  }

  /** The pairing's secrets now (the configured one until a rotation). */
  get(initial: Buffer): PairingSecrets {
    const e = this.entries.get(pairingId(initial));
    if (!e) return { generation: 0, current: initial, next: null };
    return { generation: e.generation, current: Buffer.from(e.current, 'hex'), next: e.next === null ? null : Buffer.from(e.next, 'hex') };
  }

  /** What a server accepts in a handshake: the current secret, then the next one of a rotation in progress. */
  candidates(initial: Buffer): Buffer[] {
    const s = this.get(initial);
    return s.next === null ? [s.current] : [s.current, s.next];
  }

  /** DR: holds `next` durably beside the current secret (both accepted until one proves itself). */
  async stageNext(initial: Buffer, next: Buffer): Promise<void> {
    const s = this.get(initial);
    await this.put(initial, { generation: s.generation, current: s.current.toString('hex'), next: next.toString('hex') });
  }

  /** DR: a handshake proved `next`: it becomes current; the old secret is refused from now on. */
  async promoteNext(initial: Buffer): Promise<number> {
    const s = this.get(initial);
    assert(s.next !== null, 'promoteNext with a rotation in progress');
    await this.put(initial, { generation: s.generation + 1, current: s.next.toString('hex'), next: null });
    return s.generation + 1;
  }

  /** Production: the rotation's secret is current (DR holds it already). */
  async adopt(initial: Buffer, next: Buffer): Promise<number> {
    const s = this.get(initial);
    await this.put(initial, { generation: s.generation + 1, current: next.toString('hex'), next: null });
    return s.generation + 1;
  }

  private async put(initial: Buffer, e: Entry): Promise<void> {
    const entries = new Map(this.entries).set(pairingId(initial), e);
    await writeJsonAtomic(this.path, { version: 1, pairings: Object.fromEntries(entries) }, this.files);
    this.entries.set(pairingId(initial), e); // in memory only once durable
  }
}
