import { bugPlanted } from '../core/planted-bugs.js';
import { ErrorCode, vrgError } from '../core/errors.js';
import type { FenceGuard } from '../replication/target/dr-gateway.js';

// A DR member's record of which production ownership each VM is open for (dr-member.ts): its owner and that
// ownership's fencing token. An engine's guard admits a batch only from that ownership: an older token is a
// stale owner (FENCING_TOKEN_STALE: paused or partitioned past its lease, its successor already started), a
// newer one an owner this member has not reopened the VM for yet (CLUSTER_NOT_OWNER: the link resets and the
// batch comes again once it has).

export interface Ownership {
  readonly prodId: string;
  readonly token: number;
}

export class FenceBook {
  private readonly open = new Map<string, Ownership>();

  get(vmUuid: string): Ownership | undefined {
    return this.open.get(vmUuid);
  }

  set(vmUuid: string, o: Ownership): void {
    this.open.set(vmUuid, o);
  }

  delete(vmUuid: string): void {
    this.open.delete(vmUuid);
  }

  entries(): Array<[string, Ownership]> {
    return [...this.open];
  }

  get size(): number {
    return this.open.size;
  }

  /** The guard of the engine that serves production member `prodId`. */
  guard(prodId: string): FenceGuard {
    return {
      tokenOf: (vmUuid) => {
        const o = this.open.get(vmUuid);
        return o !== undefined && o.prodId === prodId ? o.token : 0;
      },
      admit: (vmUuid, token) => {
        const o = this.open.get(vmUuid);
        const stale = o !== undefined && token < o.token;
        if (o !== undefined && o.prodId === prodId && (token === o.token || (stale && bugPlanted('fence-admits-stale')))) return;
        if (stale) {
          throw vrgError(ErrorCode.FENCING_TOKEN_STALE, `VM ${vmUuid}: fencing token ${token} is older than ${o.token}, its owner's now`,
            { vmUuid, token, newest: o.token });
        }
        throw vrgError(ErrorCode.CLUSTER_NOT_OWNER, `VM ${vmUuid} is not open here for the owner with token ${token} (yet)`, { vmUuid, token });
      },
    };
  }
}
