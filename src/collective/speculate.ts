// Speculation: a round's contributions go before its plan (issue 15,
// "no extra control round trip"). The plan's shared scale is the maximum of
// the members' exponents, and over an array of the same length it is
// usually the last round's: gradients change little from step to step. So
// a member that holds the plan of the last full round over an array of
// this length (its "prediction") quantizes under that scale at once, and
// sends while its exponents travel to the leader and the plan comes back:
//
//   - the contributions carry F_SPEC; our scale of chunk c is
//     max(prediction, our own exponent): nothing is ever clipped;
//   - the plan decides as before. Where its scale is ours, what we sent
//     stands (the sums are the same bits as without speculation: the
//     rounding streams are per chunk). Where it is not, we send the chunk
//     again at the plan's scale, and the program empties the speculative
//     slot for it (slot_admit). If the plan's active set is not the one
//     speculated on, we start the round's contributions over;
//   - a slot holding only speculative contributions never completes by
//     itself: the owner, once it has the plan, confirms its slots at the
//     plan's scale (CLOSE + F_CONFIRM, one frame per scale). The program
//     then closes those at that scale with nobody outside the active set
//     in them, and empties the others and claims the untouched ones at the
//     plan's scale, so a late speculative contribution at another is
//     refused. Every completion an owner finishes is at the plan's scale.
//
// Only on a link slower than the hosts (the pace's measured egress rate
// would cap the window): there the link idles while the plan travels.
// Off with the sentry and robust aggregation (they judge contributions
// before the plan's scale is known) and with rx "xsk".
import { F_SPEC } from "../abi.ts";
import { H } from "./control.ts";
import type { Host } from "./host.ts";
import type { RoundState } from "./round-state.ts";
import { beginSending, contribHeader, layOut, packFromX, packOwn, pump } from "./sender.ts";
import { claimAtPlan } from "./owner.ts";
import { redundant } from "./recovery.ts";
import { windowChunks } from "./options.ts";

/** A round's plan, as the prediction of the next round of its length. */
export interface Prediction {
  round: number;
  shared: Int8Array;
  /** Its active set was every member: only such a plan predicts a round. */
  full: boolean;
}

/** What a round sent before its plan. */
export interface Spec {
  /** Our scale per chunk under the prediction: max(prediction, our exponent). */
  S: Int8Array;
  active: bigint;
  /** 8 and 4 bits: our packets, all made in the transform's pass
   * (prepack.ts), contributions then our own chunks; null: packed as sent. */
  pp: { buf: Uint8Array; sendLen: number } | null;
}

/** Predictions kept, one per array length (a trainer's buckets). */
const KEEP = 8;

export const SPEC = {
  /** Speculate on any link, not only one the pace measured slower than the
   * hosts (the simulator's tests: their rounds measure no rate). */
  anyLink: false,
};

function allMask(size: number): bigint {
  return (1n << BigInt(size)) - 1n;
}

/** Whether this communicator speculates at all. */
export function speculationOn(h: Host): boolean {
  return h.o.speculate !== false && h.size > 1 && !h.sentry && !h.robust && !h.xsk;
}

/** Whether members may have speculated in this round (before its plan is
 * remembered): the last round of its length was full. */
export function predicted(h: Host, nchunks: number): boolean {
  return !!h.predictions.get(nchunks)?.full;
}

/** The round's plan is applied: it is the prediction of the next round of
 * its length (in a job that speculates). */
export function rememberPlan(h: Host, st: RoundState): void {
  const m = h.predictions;
  m.delete(st.nchunks);
  m.set(st.nchunks, { round: st.r, shared: Int8Array.from(st.shared), full: st.active === allMask(h.size) });
  if (m.size > KEEP) m.delete(m.keys().next().value!);
}

/** The prediction this round would speculate under, or null where it
 * cannot (it then does not, whatever comes before its plan). */
export function maySpeculate(h: Host, st: RoundState): Prediction | null {
  // (not a barrier: it only waits for everyone, and has nothing to gain)
  if (!speculationOn(h) || st.patient) return null;
  const p = h.predictions.get(st.nchunks);
  const all = allMask(h.size);
  // (a member held dead or slow is likely left out by the plan)
  if (!p?.full || (h.liveMask & all) !== all || (h.fitMask & all) !== all) return null;
  // Where it pays: a link slower than the hosts, which idles while the plan
  // travels. On a CPU-bound host the work only moves before the plan and
  // delays it (16 MiB unshaped: the plan came 3 ms later, the round no
  // sooner; 1 MiB: owners answered more probes with results on their way).
  if (!SPEC.anyLink && !h.pace.linkBound(h.size - 1, h.seg, windowChunks(h.o.window, h.o.windowBytes, h.seg))) return null;
  return p;
}

/** Before the plan (our exponents `mine` are out): lays the round out for
 * every member and sends what the window allows under the prediction.
 * Returns whether we speculate. */
export function speculate(h: Host, st: RoundState, x: Float32Array, mine: Int8Array): boolean {
  const p = st.haveShared || st.sent ? null : maySpeculate(h, st);
  if (!p) return false;
  const all = allMask(h.size);
  const S = new Int8Array(st.nchunks);
  for (let c = 0; c < st.nchunks; c++) S[c] = Math.max(p.shared[c], mine[c]);
  st.spec = { S, active: all, pp: null };
  layOut(h, st, all);
  h.setConfig({ ...h.cfg, ownedChunks: st.owned.length, resultsPerRound: st.nchunks - st.owned.length });
  beginSending(h, st, contribHeader(h, st, true));
  st.packExps = S;
  const pp = st.prepack;
  if (pp?.spec) {
    // every packet already made under S, flagged, in the layout of every
    // member (prepack.ts): sent as it is
    st.prepack = null;
    st.spec.pp = { buf: pp.buf, sendLen: pp.sendLen };
    usePackets(h, st);
    st.prepacked = true;
    h.stats.prepackedRounds++;
  } else packOwn(h, st, x, S);
  h.stats.specRounds++;
  pump(h, st, x);
  return true;
}

/** The round's buffers are the prepacked ones (speculating at 8 and 4 bits). */
function usePackets(h: Host, st: RoundState): void {
  const pp = st.spec!.pp!;
  st.sendBuf = pp.buf.subarray(0, pp.sendLen);
  st.ownBuf = pp.buf.subarray(pp.sendLen, pp.sendLen + st.owned.length * h.seg);
}

/** The plan is here and applied (sender.ts applyPlan): what we sent under
 * the prediction stands where the plan's scale is ours and goes again
 * where it is not; our own chunks likewise. Call before startContributions. */
export function confirm(h: Host, st: RoundState, x: Float32Array): void {
  const spec = st.spec!;
  const now = h.clock.now();
  st.confirmedAt = now;
  const firm = contribHeader(h, st);
  if (st.active !== spec.active) {
    // another active set, another layout (applyPlan made it): every
    // contribution goes again under it; the owners empty what outsiders left
    let sent = 0;
    for (let o = 0; o < h.size; o++) sent += st.pos[o];
    h.stats.specResent += sent;
    st.pos.fill(0);
    st.acked.fill(0);
    st.lowest.fill(0);
    st.furthest.fill(-1);
    st.sentAt.fill(0);
    st.tries.fill(0);
    st.rackRtt.fill(0);
    st.rackSent.fill(0);
    // results already here acknowledge their chunks under the new layout
    for (let c = 0; c < st.nchunks; c++)
      if (st.xdone[c] && st.K > 0) {
        const o = st.owners[c % st.K];
        st.acked[o]++;
      }
    // (startContributions then begins as in a round without speculation)
    st.spec = null;
    st.prepacked = false;
    return;
  }
  // (applyPlan laid the same layout out in its own buffers)
  if (spec.pp) usePackets(h, st);
  st.header = firm;
  const changed: number[] = [];
  for (let k = 0; k < st.owned.length; k++) if (spec.S[st.owned[k]] !== st.shared[st.owned[k]]) changed.push(k);
  if (changed.length) packOwn(h, st, x, st.shared, changed);
  const seg = h.seg;
  const copies = redundant(h, st) ? 2 : 1;
  for (let o = 0; o < h.size; o++) {
    if (o === h.rank || (st.pos[o] === 0 && !st.prepacked)) continue;
    const list = st.ownerChunks[o];
    // (prepacked: the packets not sent yet are mended too; pump sends them as they are)
    const upTo = st.prepacked ? list.length : st.pos[o];
    const region = st.sendBuf.subarray(st.ownerOffset[o], st.ownerOffset[o] + upTo * seg);
    const dv = new DataView(region.buffer, region.byteOffset, region.byteLength);
    const again: number[] = [];
    for (let k = 0; k < upTo; k++) {
      const c = list[k];
      if (spec.S[c] !== st.shared[c]) {
        if (k < st.pos[o]) st.sentAt[c] = now;
        packFromX(h, st, x, list.subarray(k, k + 1), st.shared, region.subarray(k * seg, (k + 1) * seg), firm);
        if (k < st.pos[o]) again.push(k);
      } else {
        // the same packet without F_SPEC: a retransmission of it must not
        // depend on the owner's prediction
        dv.setUint16(k * seg + H.flags[0], dv.getUint16(k * seg + H.flags[0], true) & ~F_SPEC, true);
        dv.setUint16(k * seg + H.contributors[0], 0, true);
      }
    }
    h.sealData(region, st.pos[o]);
    for (const k of again) h.sendData(o, region.subarray(k * seg, (k + 1) * seg), 1, h.wireBytes(st.counts[list[k]]), copies);
    h.stats.specResent += again.length;
  }
}

/** Owner, once the plan is applied: our slots of the round confirmed at
 * the plan's scale (one CLOSE + F_CONFIRM frame per scale): speculative ones
 * at it close if full, the others are emptied or claimed at it. In every
 * round of a job that speculates (the option is in the job's fingerprint:
 * every member has it), whether or not we speculated in this one. */
export function confirmSlots(h: Host, st: RoundState): void {
  if (!h.o.speculate || h.robust || st.owned.length === 0) return;
  claimAtPlan(h, st, st.owned);
}
