import { ProductionGateway } from '../../replication/source/production-gateway.js';
import { rpcState, type RpcContext } from './rpc-context.js';
import { elementMode } from './rpc-params.js';
import { pairingOf, restPairId, syncInventory, volumeObject, type Pairing } from './volume-inventory.js';

// ListActivePairedVolumes: every paired volume with its pair as the engine runs it now.
// remoteReplication.state: PausedManual (operator), PausedMisconfigured (the stream stopped on a fault,
// e.g. the DR side does not protect the VM), PausedDisconnected (link down), ResumingFullSync (initial or
// full resync), ResumingDataTransfer (catching up from changed-block tracking after an outage),
// ResumingLocalSync (consistency check), else Active. pauseLimit is the production journal's capacity in
// bytes: past it a VM falls back to changed-block tracking (the DR side reports 0: it has no journal).
// asyncDelay: how far DR is behind (the RPO), "HH:MM:SS.ffffff", from the same lag model as /metrics.

interface StateView {
  state: string;
  stateDetails: string;
  resumeDetails: string;
}

function productionState(gw: ProductionGateway, pairing: Pairing): StateView {
  const st = gw.vmStatus(pairing.vmUuid);
  const fault = gw.status().vms.find((v) => v.vmUuid === pairing.vmUuid)?.fault ?? null;
  // A VM failed over to a DR gateway ships on the peer's connection: that gateway dials no peer itself.
  const link = gw.peerStatus() ?? (gw.status().connected ? { connected: true, lastError: null } : null);
  const none = { stateDetails: '', resumeDetails: '' };
  if (st === null) return { state: 'PausedMisconfigured', stateDetails: 'not open in the engine', resumeDetails: '' };
  if (st.pausedManual) return { state: 'PausedManual', ...none };
  if (fault !== null) return { state: 'PausedMisconfigured', stateDetails: fault, resumeDetails: '' };
  if (link === null || !link.connected) return { state: 'PausedDisconnected', stateDetails: link?.lastError ?? 'no link peer', resumeDetails: '' };
  if (st.resync !== null) {
    return { state: 'ResumingFullSync', stateDetails: '', resumeDetails: `${st.resync.bytesDone} of ${st.resync.bytesTotal} bytes` };
  }
  if (st.state === 'cbt') return { state: 'ResumingDataTransfer', ...none };
  if (st.state === 'check') return { state: 'ResumingLocalSync', ...none };
  return { state: 'Active', ...none };
}

function stateOf(ctx: RpcContext, pairing: Pairing): StateView {
  const gw = ctx.gw;
  // Both sides took writes as source: nothing replicates until an operator picks the survivor.
  if (ctx.service.vmRole(pairing.vmUuid)?.splitBrain === true) {
    return { state: 'PausedMisconfigured', stateDetails: 'split brain: both sides took writes as source', resumeDetails: 'POST /vrgservice/vmsplitbrain on the side whose writes lose' };
  }
  if (gw instanceof ProductionGateway) return productionState(gw, pairing);
  // This side's part of the VM: its source (production's own, or promoted at DR) or its target (DR's, or
  // production's after a failback).
  const source = pairing.role === 'source' ? ctx.service.site?.promotedGateway ?? (gw instanceof ProductionGateway ? gw : null) : null;
  if (source !== null) return productionState(source, pairing);
  const target = ctx.service.prodSite?.target ?? (gw instanceof ProductionGateway ? null : gw);
  const st = target?.vmStatus(pairing.vmUuid) ?? null;
  if (target === null || st === null) return { state: 'PausedMisconfigured', stateDetails: 'not open in the engine', resumeDetails: '' };
  if (st.pausedManual) return { state: 'PausedManual', stateDetails: '', resumeDetails: '' };
  if (target.linkPeer() === null) return { state: 'PausedDisconnected', stateDetails: 'no link from the source gateway', resumeDetails: '' };
  return { state: 'Active', stateDetails: '', resumeDetails: '' };
}

/** Seconds as Element's duration string "HH:MM:SS.ffffff". */
export function asyncDelay(seconds: number | null): string | null {
  if (seconds === null) return null;
  const us = Math.round(seconds * 1e6);
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  const h = Math.floor(us / 3_600_000_000);
  const m = Math.floor(us / 60_000_000) % 60;
  const sec = Math.floor(us / 1_000_000) % 60;
  return `${pad(h)}:${pad(m)}:${pad(sec)}.${pad(us % 1_000_000, 6)}`;
}

function pairView(ctx: RpcContext, pairing: Pairing): Record<string, unknown> {
  const mode = ctx.gw.vmStatus(pairing.vmUuid)?.mode ?? pairing.mode ?? 'async';
  const s = stateOf(ctx, pairing);
  const snapState = mode !== 'snapshots' ? 'Idle' : s.state === 'Active' ? 'Active' : s.state;
  const r = pairing.record;
  return {
    clusterPairID: r?.clusterPairID ?? restPairId(ctx),
    remoteReplication: {
      // The lag model's seconds behind (replication-figures.ts), as Element's duration string; null on the
      // target side, which does not know how far its source is ahead.
      asyncDelay: asyncDelay(ctx.service.vmReplication().find((v) => v.vmUuid === pairing.vmUuid && v.role === 'source')?.secondsBehind ?? null),
      mode: elementMode(mode),
      pauseLimit: ctx.gw instanceof ProductionGateway ? ctx.gw.config.journalCapacityBytes : 0,
      remoteServiceID: 0,
      resumeDetails: s.resumeDetails,
      snapshotReplication: { state: snapState, stateDetails: mode === 'snapshots' ? s.stateDetails : '' },
      state: s.state,
      stateDetails: s.stateDetails,
    },
    remoteSliceID: r?.remoteVolumeID ?? 0,
    remoteVolumeID: r?.remoteVolumeID ?? 0,
    remoteVolumeName: r?.remoteVolumeName ?? pairing.vmName,
    volumePairUUID: pairing.vmUuid,
  };
}

export async function listActivePairedVolumes(ctx: RpcContext): Promise<{ volumes: Array<Record<string, unknown>> }> {
  await syncInventory(ctx);
  const volumes: Array<Record<string, unknown>> = [];
  for (const v of rpcState(ctx).volumes) {
    const pairing = pairingOf(ctx, v);
    if (pairing !== null) volumes.push(volumeObject(ctx, v, pairing, [pairView(ctx, pairing)]));
  }
  return { volumes };
}
