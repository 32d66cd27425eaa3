import { EventEmitter } from 'node:events';
import { Etcd3, EtcdLeaseInvalidError, type IKeyValue, type Lease, type Watcher } from 'etcd3';
import { systemClock, withTimeout, type Clock, type TimerHandle } from '../core/clock.js';
import { ErrorCode, isVrgError, vrgError, type VrgError } from '../core/errors.js';

// A site's gateways in etcd: who is alive, which VMs the site protects, and which gateway owns each VM.
// The cluster members (production-member.ts, dr-member.ts) act on it.
//
// Key layout (one prefix per site, so sites can share an etcd):
//   /vrg/<site>/members/<memberId>  lease-backed; JSON MemberRecord. Vanishes when the member's lease ends.
//   /vrg/<site>/vms/<vmUuid>        no lease; the VM's settings JSON, written by any gateway's APIs.
//   /vrg/<site>/owners/<vmUuid>     lease-backed (the owner's lease); value = the owner's memberId.
//   /vrg/<site>/custody/<vmUuid>    no lease; JSON Custody: how the last owner left the VM (kept past its death).
//   /vrg/<site>/fence/<vmUuid>      no lease; DR site: the newest fencing token seen for the VM (16 digits, so
//                                   etcd's byte-wise compare is numeric); it only rises (raiseFence()).
//   /vrg/<site>/drain/<memberId>    no lease; "1": an operator asked the member to drain (vrg cluster drain).
//   /vrg/<site>/recheck/<vmUuid>    no lease; a fenced member may have written the VM's source after its lease
//                                   ended: the VM's owner checks it again (production-member.ts).
//
// Ownership is created only if absent (one etcd transaction), so each VM has at most one owner. The FENCING
// TOKEN of an ownership is its owner key's mod revision: etcd's revision only rises, so a later owner of a
// VM always holds a higher token than every earlier one, and a receiver that remembers the highest token seen
// can refuse an older owner's work. The owner may renew() its key for a new token: a new seq stream of the VM
// (its DR side then starts one too).
//
// A member acts only while it is sure its lease lives: it counts the lease as ending TTL seconds after the send
// of the last keep-alive etcd answered (etcd renews on receipt, so never earlier). Once that passes, or etcd
// says the lease is gone, the member is FENCED: it emits 'lost', and every write it tries throws CLUSTER_FENCED
// until join() grants a new lease. Its owner keys end with the old lease, so others may claim its VMs.

export interface MemberIdentity {
  readonly id: string;
  readonly role: string;
  readonly apiUrl: string;
  readonly linkHost: string;
  readonly linkPort: number;
  /** Production: where its NBD intake listens (nbd://host:port), for the hypervisor's agent to find its VMs. */
  readonly nbdUrl?: string;
}

/** A member's report of one VM it serves (vrg cluster status shows it). */
export interface VmReport {
  readonly state: string;
  readonly mode: string;
  /** Journaled and not yet acknowledged by DR (production), or logged and not yet applied (DR). */
  readonly lagBytes: number;
  readonly lagSeconds: number;
  readonly token: number;
}

export interface MemberStats {
  readonly vmCount: number;
  readonly writeRateBytesPerSec: number;
  /** DR: the link port of this member's engine for each production member it pairs with. */
  readonly links?: Readonly<Record<string, number>>;
  /** Production: the DR member it links to now (pairing.ts keeps pairs sticky). */
  readonly drPeer?: string;
  readonly vms?: Readonly<Record<string, VmReport>>;
}

export interface MemberRecord extends MemberIdentity, MemberStats {
  readonly draining: boolean;
  readonly updatedAtMs: number;
}

/**
 * How a VM's last owner left it: 'owned' while an owner serves it (so a successor knows the owner may have
 * died mid-stream and checks the VM), 'clean' after a planned hand-over left DR equal to the source.
 */
export interface Custody {
  readonly state: 'owned' | 'clean';
  readonly memberId: string;
  readonly token: number;
  readonly atMs: number;
}

export interface OwnerRecord {
  readonly vmUuid: string;
  readonly memberId: string;
  /** The fencing token: the owner key's mod revision (its creation, or the owner's last renew()). */
  readonly token: number;
}

export type ClusterEvent =
  | { readonly kind: 'member'; readonly type: 'put' | 'delete'; readonly memberId: string; readonly member: MemberRecord | null }
  | { readonly kind: 'owner'; readonly type: 'put' | 'delete'; readonly vmUuid: string; readonly owner: OwnerRecord | null };

export interface ClusterWatch {
  close(): Promise<void>;
}

export interface EtcdRegistryOptions {
  /** etcd client URLs, e.g. ['http://127.0.0.1:2379']. */
  readonly endpoints: readonly string[];
  readonly site: string;
  readonly member: MemberIdentity;
  /** Lease TTL, whole seconds (etcd's unit), at least 2; default 10. */
  readonly leaseTtlSec?: number;
  /** Bound of every etcd request; default 5000 ms. */
  readonly requestTimeoutMs?: number;
  readonly clock?: Clock;
}

type State = 'idle' | 'joined' | 'fenced' | 'left' | 'closed';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

function checkName(what: string, value: string): void {
  if (!NAME.test(value)) throw vrgError(ErrorCode.INVALID_ARGUMENT, `${what} must be 1-128 letters, digits, '.', '_', ':' or '-'`, { [what]: value });
}

export class EtcdRegistry extends EventEmitter<{ lost: [VrgError] }> {
  private readonly client: Etcd3;
  private readonly clock: Clock;
  private readonly ttlSec: number;
  private readonly timeoutMs: number;
  private readonly root: string;
  private state: State = 'idle';
  private lease: Lease | null = null;
  private leaseId = '';
  private validUntilNs = 0n;
  private expiryTimer: TimerHandle | null = null;
  private draining = false;
  private stats: MemberStats = { vmCount: 0, writeRateBytesPerSec: 0 };

  constructor(private readonly options: EtcdRegistryOptions) {
    super();
    checkName('site', options.site);
    checkName('memberId', options.member.id);
    this.ttlSec = options.leaseTtlSec ?? 10;
    if (!Number.isInteger(this.ttlSec) || this.ttlSec < 2) {
      throw vrgError(ErrorCode.INVALID_ARGUMENT, 'leaseTtlSec must be a whole number of seconds, at least 2', { leaseTtlSec: this.ttlSec });
    }
    if (options.endpoints.length === 0) throw vrgError(ErrorCode.INVALID_ARGUMENT, 'at least one etcd endpoint is needed');
    this.timeoutMs = options.requestTimeoutMs ?? 5000;
    this.clock = options.clock ?? systemClock;
    this.root = `/vrg/${options.site}/`;
    this.client = new Etcd3({ hosts: [...options.endpoints], dialTimeout: this.timeoutMs });
  }

  get memberId(): string {
    return this.options.member.id;
  }

  /** True while this member may act: joined, and its lease surely alive. */
  get live(): boolean {
    return this.state === 'joined' && this.clock.monotonicNs() < this.validUntilNs;
  }

  /** Grant a lease, keep it alive, and register this member. Also the way back after 'lost'. */
  async join(): Promise<void> {
    if (this.state === 'closed') throw vrgError(ErrorCode.CLOSED, 'the registry is closed');
    if (this.state === 'joined') return;
    await this.dropLease();
    const sentNs = this.clock.monotonicNs();
    const lease = this.client.lease(this.ttlSec);
    this.lease = lease;
    this.leaseId = await this.request('grant a lease', lease.grant());
    this.watchLease(lease, sentNs);
    const key = this.memberKey(this.memberId);
    const txn = await this.request('register the member', this.client.if(key, 'Create', '==', 0)
      .then(this.client.put(key).value(this.memberJson()).lease(this.leaseId)).commit());
    if (!txn.succeeded) {
      await this.dropLease();
      throw vrgError(ErrorCode.CLUSTER_MEMBER_EXISTS, `member ${this.memberId} is registered under another live lease`, { memberId: this.memberId });
    }
    this.state = 'joined';
  }

  /** Deregister: revoking the lease removes the member key and every owner key of this member at once. */
  async leave(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'left';
    await this.dropLease();
  }

  async close(): Promise<void> {
    if (this.state === 'closed') return;
    await this.leave().catch(() => undefined);
    this.state = 'closed';
    this.client.close();
  }

  /**
   * Stop renewing without revoking: what a crashed process leaves behind. The member and owner keys stay until
   * etcd ends the lease a TTL after the last renewal; only then may others claim this member's VMs. For the
   * scale bench and the takeover tests; a gateway that stops on purpose calls leave() or close().
   */
  abandon(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.expiryTimer?.cancel();
    this.validUntilNs = 0n;
    this.lease?.release();
    this.lease = null;
    this.client.close();
  }

  /**
   * Own `vmUuid`: its fencing token. Idempotent for the owner (so a claim that timed out, and may have landed,
   * is retried safely); CLUSTER_NOT_OWNER when another member owns it, VM_NOT_FOUND when the site has no such VM.
   */
  async claim(vmUuid: string): Promise<number> {
    checkName('vmUuid', vmUuid);
    this.assertLive();
    const ownerKey = this.ownerKey(vmUuid);
    const vmKey = this.vmKey(vmUuid);
    const txn = await this.request(`claim VM ${vmUuid}`, this.client
      .if(ownerKey, 'Create', '==', 0).and(vmKey, 'Create', '>', 0)
      .then(this.client.put(ownerKey).value(this.memberId).lease(this.leaseId))
      .else(this.client.get(ownerKey), this.client.get(vmKey))
      .commit());
    if (txn.succeeded) return Number(txn.header.revision);
    const owner = txn.responses[0]?.response_range.kvs[0];
    if (owner !== undefined) {
      if (this.ours(owner)) return Number(owner.mod_revision);
      throw vrgError(ErrorCode.CLUSTER_NOT_OWNER, `VM ${vmUuid} is owned by member ${owner.value.toString()}`, { vmUuid, owner: owner.value.toString() });
    }
    throw vrgError(ErrorCode.VM_NOT_FOUND, `site ${this.options.site} has no VM ${vmUuid}`, { vmUuid });
  }

  /** A new fencing token for a VM this member owns under its current lease (else CLUSTER_NOT_OWNER). */
  async renew(vmUuid: string): Promise<number> {
    checkName('vmUuid', vmUuid);
    this.assertLive();
    const key = this.ownerKey(vmUuid);
    const txn = await this.request(`renew VM ${vmUuid}`, this.client
      .if(key, 'Value', '==', this.memberId).and(key, 'Lease', '==', this.leaseId)
      .then(this.client.put(key).value(this.memberId).lease(this.leaseId))
      .commit());
    if (!txn.succeeded) throw vrgError(ErrorCode.CLUSTER_NOT_OWNER, `member ${this.memberId} does not own VM ${vmUuid}`, { vmUuid });
    return Number(txn.header.revision);
  }

  /**
   * Give up `vmUuid`: deleted only if this member owns it under its current lease, else CLUSTER_NOT_OWNER.
   * `custody`, if given, is stored in the same transaction (a successor reads how the VM was left).
   */
  async release(vmUuid: string, custody?: Custody): Promise<void> {
    checkName('vmUuid', vmUuid);
    this.assertLive();
    const key = this.ownerKey(vmUuid);
    const then = [this.client.delete().key(key)];
    if (custody) then.push(this.client.put(this.custodyKey(vmUuid)).value(JSON.stringify(custody)) as never);
    const txn = await this.request(`release VM ${vmUuid}`, this.client
      .if(key, 'Value', '==', this.memberId).and(key, 'Lease', '==', this.leaseId)
      .then(...then)
      .else(this.client.get(key))
      .commit());
    if (txn.succeeded) return;
    const owner = txn.responses[0]?.response_range.kvs[0]?.value.toString() ?? null;
    throw vrgError(ErrorCode.CLUSTER_NOT_OWNER, `member ${this.memberId} does not own VM ${vmUuid}`, { vmUuid, owner });
  }

  /** Stores how this owner holds the VM, only while it owns it under its current lease (else CLUSTER_NOT_OWNER). */
  async putCustody(vmUuid: string, custody: Custody): Promise<void> {
    checkName('vmUuid', vmUuid);
    this.assertLive();
    const key = this.ownerKey(vmUuid);
    const txn = await this.request(`record custody of VM ${vmUuid}`, this.client
      .if(key, 'Value', '==', this.memberId).and(key, 'Lease', '==', this.leaseId)
      .then(this.client.put(this.custodyKey(vmUuid)).value(JSON.stringify(custody)))
      .commit());
    if (!txn.succeeded) throw vrgError(ErrorCode.CLUSTER_NOT_OWNER, `member ${this.memberId} does not own VM ${vmUuid}`, { vmUuid });
  }

  /** How the VM's last owner left it, or null (never owned: a new VM). */
  async getCustody(vmUuid: string): Promise<Custody | null> {
    checkName('vmUuid', vmUuid);
    const value = await this.request(`read custody of VM ${vmUuid}`, this.client.get(this.custodyKey(vmUuid)).string());
    return value === null ? null : JSON.parse(value) as Custody;
  }

  /**
   * DR site: raises the VM's fence to `token` (compare-and-swap, so it only rises, whichever member writes).
   * Resolves with the fence now: `token` itself, or a newer one (then `token` is stale).
   */
  async raiseFence(vmUuid: string, token: number): Promise<number> {
    checkName('vmUuid', vmUuid);
    const key = this.root + 'fence/' + vmUuid;
    const value = String(token).padStart(16, '0');
    for (let attempt = 0; attempt < 8; attempt++) {
      const txn = await this.request(`fence VM ${vmUuid}`, this.client.if(key, 'Create', '==', 0)
        .then(this.client.put(key).value(value)).else(this.client.get(key)).commit());
      if (txn.succeeded) return token;
      const now = txn.responses[0]?.response_range.kvs[0]?.value.toString() ?? value;
      if (now >= value) return Number(now);
      const cas = await this.request(`fence VM ${vmUuid}`, this.client.if(key, 'Value', '==', now).then(this.client.put(key).value(value)).commit());
      if (cas.succeeded) return token;
    }
    throw vrgError(ErrorCode.CLUSTER_UNAVAILABLE, `VM ${vmUuid}: the fence kept changing under eight compare-and-swaps`, { vmUuid });
  }

  /** An operator's drain request for a member (it acts on it: setDraining), kept across its restarts. */
  async requestDrain(memberId: string, on: boolean): Promise<void> {
    checkName('memberId', memberId);
    const key = this.root + 'drain/' + memberId;
    if (on) await this.request(`drain ${memberId}`, this.client.put(key).value('1').exec());
    else await this.request(`undrain ${memberId}`, this.client.delete().key(key).exec());
  }

  async drainRequested(memberId: string): Promise<boolean> {
    return (await this.request(`read drain of ${memberId}`, this.client.get(this.root + 'drain/' + memberId).string())) !== null;
  }

  /** Asks the VM's owner, whoever it is now, to check the VM again. */
  async requestRecheck(vmUuid: string): Promise<void> {
    checkName('vmUuid', vmUuid);
    const doc = JSON.stringify({ memberId: this.memberId, atMs: this.clock.nowMs() });
    await this.request(`ask for a recheck of ${vmUuid}`, this.client.put(this.root + 'recheck/' + vmUuid).value(doc).exec());
  }

  /** The VMs some member asked to be checked again. */
  async rechecks(): Promise<string[]> {
    const prefix = this.root + 'recheck/';
    return (await this.request('list rechecks', this.client.getAll().prefix(prefix).keys())).map((k) => k.slice(prefix.length));
  }

  async clearRecheck(vmUuid: string): Promise<void> {
    checkName('vmUuid', vmUuid);
    await this.request(`clear the recheck of ${vmUuid}`, this.client.delete().key(this.root + 'recheck/' + vmUuid).exec());
  }

  get isDraining(): boolean {
    return this.draining;
  }

  async owners(): Promise<OwnerRecord[]> {
    const res = await this.request('list owners', this.client.getAll().prefix(this.root + 'owners/').exec());
    return res.kvs.map((kv) => this.ownerRecord(kv));
  }

  async members(): Promise<MemberRecord[]> {
    const res = await this.request('list members', this.client.getAll().prefix(this.root + 'members/').exec());
    return res.kvs.map((kv) => JSON.parse(kv.value.toString()) as MemberRecord);
  }

  /**
   * Calls `onEvent` for each change of a member or owner key from now on (etcd3 resumes the watch after a
   * disconnection); `onError` when etcd ends it, after which the caller should list again and watch anew.
   */
  async watch(onEvent: (event: ClusterEvent) => void, onError: (err: VrgError) => void = () => undefined): Promise<ClusterWatch> {
    const watcher: Watcher = await this.request('watch the site', this.client.watch().prefix(this.root).withPreviousKV().create());
    const forward = (type: 'put' | 'delete') => (kv: IKeyValue) => {
      const event = this.eventOf(type, kv);
      if (event !== null) onEvent(event);
    };
    watcher.on('put', forward('put')).on('delete', forward('delete'))
      .on('error', (err) => onError(vrgError(ErrorCode.CLUSTER_UNAVAILABLE, `etcd ended the watch: ${err.message}`, { site: this.options.site }, err)));
    return { close: () => this.request('stop watching', watcher.cancel()) };
  }

  /** Stores a VM's settings (no lease needed: an operator's tool writes them as well as the gateways' APIs). */
  async putVm(vmUuid: string, settings: unknown): Promise<void> {
    checkName('vmUuid', vmUuid);
    await this.request(`store VM ${vmUuid}`, this.client.put(this.vmKey(vmUuid)).value(JSON.stringify(settings)).exec());
  }

  /** The VM's settings, or VM_NOT_FOUND. */
  async getVm(vmUuid: string): Promise<unknown> {
    checkName('vmUuid', vmUuid);
    const value = await this.request(`read VM ${vmUuid}`, this.client.get(this.vmKey(vmUuid)).string());
    if (value === null) throw vrgError(ErrorCode.VM_NOT_FOUND, `site ${this.options.site} has no VM ${vmUuid}`, { vmUuid });
    return JSON.parse(value) as unknown;
  }

  async listVms(): Promise<Array<{ vmUuid: string; settings: unknown }>> {
    const prefix = this.root + 'vms/';
    const res = await this.request('list VMs', this.client.getAll().prefix(prefix).exec());
    return res.kvs.map((kv) => ({ vmUuid: kv.key.toString().slice(prefix.length), settings: JSON.parse(kv.value.toString()) as unknown }));
  }

  /** Removes the VM's settings (its owner key stays until its owner releases it or its lease ends). */
  async deleteVm(vmUuid: string): Promise<void> {
    checkName('vmUuid', vmUuid);
    const res = await this.request(`delete VM ${vmUuid}`, this.client.delete().key(this.vmKey(vmUuid)).exec());
    if (Number(res.deleted) === 0) throw vrgError(ErrorCode.VM_NOT_FOUND, `site ${this.options.site} has no VM ${vmUuid}`, { vmUuid });
  }

  /** A draining member gets no VM from the placement rule, and its VMs move away. */
  async setDraining(draining: boolean): Promise<void> {
    this.assertLive();
    this.draining = draining;
    await this.putMember();
  }

  /** Publish this member's load, the placement rule's input on the other members, and its VMs' figures. */
  async report(stats: MemberStats): Promise<void> {
    this.assertLive();
    this.stats = { ...stats };
    await this.putMember();
  }

  private async putMember(): Promise<void> {
    await this.request('update the member', this.client.put(this.memberKey(this.memberId)).value(this.memberJson()).lease(this.leaseId).exec());
  }

  private memberJson(): string {
    const record: MemberRecord = { ...this.options.member, draining: this.draining, ...this.stats, updatedAtMs: this.clock.nowMs() };
    return JSON.stringify(record);
  }

  /** Renewals move the local deadline; a lost lease or a passed deadline fences. */
  private watchLease(lease: Lease, grantSentNs: bigint): void {
    const sent: bigint[] = [];
    this.extendUntil(grantSentNs + BigInt(this.ttlSec) * 1_000_000_000n);
    lease.on('keepaliveEstablished', () => sent.splice(0));
    lease.on('keepaliveFired', () => { if (sent.push(this.clock.monotonicNs()) > 64) sent.shift(); });
    lease.on('keepaliveSucceeded', (res) => {
      const at = sent.shift();
      if (at !== undefined && this.lease === lease) this.extendUntil(at + BigInt(Number(res.TTL)) * 1_000_000_000n);
    });
    lease.on('lost', () => { if (this.lease === lease) this.fence('etcd reports the lease lost'); });
  }

  private extendUntil(untilNs: bigint): void {
    if (untilNs <= this.validUntilNs) return;
    this.validUntilNs = untilNs;
    this.expiryTimer?.cancel();
    const ms = Math.max(0, Number(untilNs - this.clock.monotonicNs()) / 1e6);
    this.expiryTimer = this.clock.setTimer(ms, () => { if (this.state === 'joined' && !this.live) this.fence('no keep-alive answered within the lease TTL'); });
  }

  private fence(reason: string): void {
    if (this.state !== 'joined') return;
    this.state = 'fenced';
    this.lease?.release(); // no renewal of the old lease from now on: a rejoin grants a new one
    this.emit('lost', this.fencedError(reason));
  }

  private fencedError(reason: string): VrgError {
    return vrgError(ErrorCode.CLUSTER_FENCED, `member ${this.memberId} may not act: ${reason}; join again`, { memberId: this.memberId, state: this.state });
  }

  private assertLive(): void {
    if (this.state === 'joined' && !this.live) this.fence('its lease TTL passed without a renewal');
    if (this.state !== 'joined') throw this.fencedError(this.state === 'fenced' ? 'its lease was lost' : `it is ${this.state === 'idle' ? 'not joined' : this.state}`);
  }

  private async dropLease(): Promise<void> {
    this.expiryTimer?.cancel();
    this.validUntilNs = 0n;
    const lease = this.lease;
    this.lease = null;
    if (lease !== null) await this.request('revoke the lease', lease.revoke()).catch(() => undefined);
  }

  private ours(kv: IKeyValue): boolean {
    return kv.value.toString() === this.memberId && kv.lease === this.leaseId;
  }

  private ownerRecord(kv: IKeyValue): OwnerRecord {
    return { vmUuid: kv.key.toString().slice(this.root.length + 'owners/'.length), memberId: kv.value.toString(), token: Number(kv.mod_revision) };
  }

  private eventOf(type: 'put' | 'delete', kv: IKeyValue): ClusterEvent | null {
    const [kind, id] = kv.key.toString().slice(this.root.length).split('/');
    if (id === undefined) return null;
    if (kind === 'members') {
      return { kind: 'member', type, memberId: id, member: type === 'put' ? JSON.parse(kv.value.toString()) as MemberRecord : null };
    }
    if (kind === 'owners') return { kind: 'owner', type, vmUuid: id, owner: type === 'put' ? this.ownerRecord(kv) : null };
    return null;
  }

  /** `work` bounded by the request timeout, its failure as a VrgError: a lost lease fences this member. */
  private async request<T>(what: string, work: Promise<T>): Promise<T> {
    try {
      return await withTimeout(this.clock, this.timeoutMs, work, `etcd: ${what}`);
    } catch (err) {
      if (isVrgError(err) && err.code !== ErrorCode.TIMEOUT) throw err;
      if (err instanceof EtcdLeaseInvalidError) {
        this.fence('etcd has no such lease');
        throw this.fencedError('etcd has no such lease');
      }
      throw vrgError(ErrorCode.CLUSTER_UNAVAILABLE, `etcd: ${what} failed: ${(err as Error).message}`, { endpoints: this.options.endpoints }, err);
    }
  }

  private memberKey(id: string): string {
    return `${this.root}members/${id}`;
  }

  private vmKey(vmUuid: string): string {
    return `${this.root}vms/${vmUuid}`;
  }

  private custodyKey(vmUuid: string): string {
    return `${this.root}custody/${vmUuid}`;
  }

  private ownerKey(vmUuid: string): string {
    return `${this.root}owners/${vmUuid}`;
  }
}
