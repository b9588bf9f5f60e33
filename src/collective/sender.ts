// The reduce-scatter's sending side: lay out the round once the plan is
// known, quantize our own chunks, and pump contributions to their owners
// through a self-clocked window.
import { F_SPEC, PKT_CONTRIB } from "../abi.ts";
import { coll } from "../../native/collective.ts";
import { cRhtChunk } from "../../native/quant.ts";
import { headerTemplate, mix32, packChunksAt, rht } from "../quantize.ts";
import { HDR } from "./control.ts";
import type { Host } from "./host.ts";
import { TUNING, windowChunks } from "./options.ts";
import { finish } from "./owner.ts";
import { ownedChunks, owners } from "./plan.ts";
import { redundant } from "./recovery.ts";
import { usePrepack } from "./prepack.ts";
import type { RoundState } from "./round-state.ts";

/** A round's layout for the active set `active`: chunk c is owned by the
 * active member of index c % K (ownerIdx: each member's index, -1 outside);
 * the packets of our contributions sit in one buffer by owner, each
 * owner's from ownerOffset[o], sendBytes in all (none when we are passive). */
export interface Layout {
  owners: number[];
  K: number;
  passive: boolean;
  ownerChunks: Uint32Array[];
  ownerOffset: number[];
  sendBytes: number;
}

export function layoutOf(h: Host, active: bigint, nchunks: number, ownerIdx: Int32Array): Layout {
  const N = h.size;
  const { owners: list, K } = owners(active, N, ownerIdx);
  const passive = ownerIdx[h.rank] < 0;
  const ownerChunks: Uint32Array[] = [], ownerOffset: number[] = [];
  let off = 0;
  for (let o = 0; o < N; o++) {
    ownerChunks[o] = ownedChunks(ownerIdx[o], K, nchunks);
    ownerOffset[o] = off;
    if (o !== h.rank && !passive) off += ownerChunks[o].length * h.seg;
  }
  return { owners: list, K, passive, ownerChunks, ownerOffset, sendBytes: off };
}

/** Lays the round out for the active set `active` (layoutOf): what we send and own. */
export function layOut(h: Host, st: RoundState, active: bigint): void {
  const lay = layoutOf(h, active, st.nchunks, st.ownerIdx);
  st.owners = lay.owners;
  st.ownersU8 = Uint8Array.from(st.owners);
  st.K = lay.K;
  st.passive = lay.passive;
  for (let o = 0; o < h.size; o++) (st.ownerChunks[o] = lay.ownerChunks[o]), (st.ownerOffset[o] = lay.ownerOffset[o]);
  st.sendBuf = h.scratch("send", lay.sendBytes);
  st.owned = st.ownerChunks[h.rank];
  st.ownBuf = h.scratch("own", st.owned.length * h.seg);
}

/** The plan is known: lays the round out under it, and tells the program
 * whom our slots of this round wait for. */
export function applyPlan(h: Host, st: RoundState): void {
  layOut(h, st, st.active);
  // results of this round only from their chunk's owner (the program checks)
  if (st.K > 0) h.maps.setPlan(st.r, st.owners);
  const others = st.active & h.othersMask;
  const bankMask: [bigint, bigint] = [...(h.cfg.bankMask ?? [0n, 0n])];
  bankMask[st.r & 1] = others === h.othersMask ? 0n : others;
  // the program's end-of-round wake-ups for this round
  h.setConfig({ ...h.cfg, ownedChunks: st.owned.length, resultsPerRound: st.nchunks - st.owned.length, bankMask });
  // contributions that came before the plan waited for everyone: close
  // the slots that already hold every active member
  if (bankMask[st.r & 1] !== 0n && st.owned.length)
    h.maps.closeSlots(st.r, st.owned, { force: false, rank: h.rank, jobId: h.job, srcAddr: h.peers[h.rank] });
}

/** The header of our contributions: speculative ones (speculate.ts) carry F_SPEC. */
export function contribHeader(h: Host, st: RoundState, spec = false): Uint8Array {
  return headerTemplate({ type: PKT_CONTRIB, jobId: h.job, round: st.r, rank: h.rank, version: h.version, flags: spec ? F_SPEC : 0 });
}

/** Our first contribution of the round goes now (at the plan, or before it:
 * speculate.ts): the window, the rounding seed, the header, and the egress
 * clock of the pace. */
export function beginSending(h: Host, st: RoundState, header: Uint8Array): void {
  st.planAt = h.clock.now();
  st.bytesAtPlan = h.dataBytes;
  const full = windowChunks(h.o.window, h.o.windowBytes, h.seg);
  st.window = Math.min(full, h.pace.capFor((st.nchunks - st.owned.length) * h.seg, st.K - 1, h.seg));
  if (st.window < full) h.stats.pacedRounds++;
  st.header = header;
  st.seed = stochasticSeed(h, st.r);
}

/** The rounding seed of our contributions in round r (0: to nearest). */
export function stochasticSeed(h: Host, r: number): number {
  return h.bits !== 16 ? narrowSeed(h.o.stochasticSeed || TUNING.NARROW_SEED, r, h.rank)
    : h.o.stochasticSeed ? (h.o.stochasticSeed ^ r) >>> 0 || 1 : 0;
}

/** The listed chunks of the round's transformed array x packed under
 * `exps` into out (one packet every h.seg bytes), with the round's seed and
 * residual; every packing from x goes through here, so a chunk the
 * prepacking pass did not keep is made first (materialize). */
export function packFromX(h: Host, st: RoundState, x: Float32Array, chunks: Uint32Array, exps: Int8Array, out: Uint8Array, header = st.header): void {
  materialize(h, st, chunks);
  h.stats.saturations += packChunksAt(x, {
    chunkElems: h.chunkElems, chunks, exps, header, out, stride: h.seg, seed: st.seed, bits: h.bits, resid: st.resid, residSeed: st.residSeed,
  });
}

/** Quantizes chunks of ours (positions `at` of st.owned, all when null) into
 * their packets of st.ownBuf, under `exps`. */
export function packOwn(h: Host, st: RoundState, x: Float32Array, exps: Int8Array, at: number[] | null = null): void {
  if (!at) return void (st.owned.length && packFromX(h, st, x, st.owned, exps, st.ownBuf));
  for (const k of at) packFromX(h, st, x, st.owned.subarray(k, k + 1), exps, st.ownBuf.subarray(k * h.seg, (k + 1) * h.seg));
}

/** Shared scale known: quantize our own chunks for the finishing step and
 * start the reduce-scatter (or, after speculating, go on with it). */
export function startContributions(h: Host, st: RoundState, x: Float32Array, bankBase: number): void {
  st.sent = true;
  st.lookInMap = true;
  st.lastProgress = h.clock.now();
  if (st.passive) return; // we send nothing this round: results come to us
  if (!st.spec) {
    beginSending(h, st, contribHeader(h, st));
    if (!usePrepack(h, st, x)) packOwn(h, st, x, st.shared);
  }
  st.packExps = st.shared;
  st.finishArgs = {
    acc: h.accBase, results: h.resBase, bankBase, summed: st.summed, own: st.ownBuf.subarray(HDR), ownDiv: st.K, ownStride: h.seg / 2,
    counts: st.counts, exps: st.shared, header: st.header, pkts: h.resPkts, pktStride: h.seg,
  };
  if (st.K === 1 && st.owned.length) {
    // the only active member: no contribution will come, finish alone
    for (const c of st.owned) st.ownedDone[c] = 1;
    finish(h, st, bankBase, Uint32Array.from(st.owned));
    return;
  }
  pump(h, st, x);
}

/** Reduce-scatter, self-clocked: quantize and send the chunks we do not
 * own, owners interleaved, keeping at most `window` chunks per owner whose
 * result has not come back, and no more than `windowBytes` of packets (a
 * window in bytes: frames grow with the MTU), nor more than our egress
 * drains in PACE.QUEUE_MS (st.window, pace.ts). A receiver's queue (veth: 256
 * frames) is never flooded, and every result that arrives lets one more
 * chunk go. */
export function pump(h: Host, st: RoundState, x: Float32Array): void {
  if (st.passive || st.K === 0) return;
  const copies = redundant(h, st) ? 2 : 1;
  // (two copies: half the chunks in flight, the same frames)
  const W = Math.max(1, Math.floor(st.window / copies));
  const seg = h.seg;
  for (let more = true; more; ) {
    more = false;
    for (let o = 0; o < h.size; o++) {
      if (o === h.rank) continue;
      const list = st.ownerChunks[o];
      const from = st.pos[o];
      const room = W - (from - st.acked[o]);
      if (from >= list.length || room <= 0) continue;
      const to = Math.min(list.length, from + Math.min(TUNING.SEND_PIECE, room));
      const region = st.sendBuf.subarray(st.ownerOffset[o] + from * seg, st.ownerOffset[o] + to * seg);
      if (!st.prepacked) packFromX(h, st, x, list.subarray(from, to), st.packExps, region);
      const last = list[to - 1];
      h.sealData(region, to - from);
      h.sendData(o, region, to - from, h.wireBytes(st.counts[last]), copies);
      const now = h.clock.now();
      for (let k = from; k < to; k++) st.sentAt[list[k]] = now;
      st.pos[o] = to;
      if (to < list.length && W - (to - st.acked[o]) > 0) more = true;
    }
  }
}

/** At 8 and 4 bits rounding is always stochastic, with a stream per (seed,
 * round, rank): ranks round independently, so their errors do not add up
 * coherently in the sum, and a run replays. Never 0 (0 rounds to nearest). */
export function narrowSeed(seed: number, round: number, rank: number): number {
  return mix32((mix32((seed ^ Math.imul(round, 0x9e3779b9)) >>> 0) + rank) >>> 0) || 1;
}

/** Chunks we still have to send (window-blocked). */
export function unsent(h: Host, st: RoundState): boolean {
  for (let o = 0; o < h.size; o++) if (o !== h.rank && st.pos[o] < st.ownerChunks[o].length) return true;
  return false;
}

/** Error feedback with the transform: packing wrote the residual of every
 * chunk it quantized, back through the inverse (residSeed); a chunk we
 * never packed (a round we sat out, chunks still unsent when the round
 * ended or failed) keeps all of x's transform as its error, and goes back
 * through the inverse here. */
export function unpackedResidual(h: Host, st: RoundState, xq: Float32Array, seed: number): void {
  const resid = st.resid!;
  const ce = h.chunkElems;
  if (!st.sent || st.passive || st.K === 0) return void (resid.set(xq), rht(resid, ce, seed, true));
  const list: number[] = [];
  for (let o = 0; o < h.size; o++) {
    if (o === h.rank) continue;
    const chunks = st.ownerChunks[o];
    for (let k = st.pos[o]; k < chunks.length; k++) list.push(chunks[k]);
  }
  if (!list.length) return;
  for (const c of list) resid.set(xq.subarray(c * ce, Math.min(xq.length, (c + 1) * ce)), c * ce);
  coll.ainftp_rht_list(resid, resid.length, ce, Uint32Array.from(list), list.length, seed, 1, h.scratch("resid-done", st.nchunks).fill(0));
}

/** Before packing from the round's transformed array x where the
 * prepacking pass kept none (8 and 4 bits without error feedback,
 * st.xLazy): the listed chunks (null: every one) made from the gradient as
 * the pass made them (the same bits: each chunk's transform is keyed by
 * its index). Every packing from x calls it (packFromX). */
export function materialize(h: Host, st: RoundState, chunks: ArrayLike<number> | null): void {
  const lz = st.xLazy;
  if (!lz) return;
  const ce = h.chunkElems, x = st.x;
  const one = (c: number) => {
    if (lz.done[c]) return;
    lz.done[c] = 1;
    const a = c * ce, b = Math.min(x.length, a + ce);
    x.set(lz.src.subarray(a, b), a);
    cRhtChunk(x.subarray(a, b), c, lz.seed, false);
  };
  if (chunks) for (let i = 0; i < chunks.length; i++) one(chunks[i]);
  else for (let c = 0; c < st.nchunks; c++) one(c);
}
