// The owner's side: finish the slots the program completed (our own chunk
// added, requantized, published and sent to every member), through the
// policies when they are on (sentry: judge first; robust: combine in
// userspace), and close open slots at the round's deadline.
import { finishBatch } from "../../native/collective.ts";
import { SLOT_COMPLETE } from "../abi.ts";
import { AinftpError } from "../errors.ts";
import { HDR } from "./control.ts";
import { noteResult } from "./early.ts";
import { Host } from "./host.ts";
import { cached, cacheRoom, redundant } from "./recovery.ts";
import type { RoundState } from "./round-state.ts";
import { TUNING } from "./options.ts";

/** Owner's step for completed slots: requantize with our own chunk, store,
 * and send the results to every peer. */
export function finish(h: Host, st: RoundState, bankBase: number, chunks: Uint32Array): void {
  chunks = refuseOutsiders(h, st, bankBase, chunks);
  if (chunks.length === 0) return;
  shortChunkLast(h, st, chunks);
  if (h.sentry) h.sentry.judge(h, st, bankBase, chunks);
  if (h.robust) return h.robust.finish(h, st, bankBase, chunks);
  // the packets go straight into the cache of results sent, when it has
  // room, and are sent from there
  const room = cacheRoom(h, st, chunks.length);
  const a = st.finishArgs!;
  a.pkts = room ?? h.resPkts;
  const n = finishBatch(a, chunks, chunks.length);
  if (n < 0) throw new AinftpError(`round ${st.r}`, "finishing a slot failed (bad count)");
  st.ownedDoneCount += n;
  if (st.early) for (let i = 0; i < n; i++) noteResult(st, chunks[i]);
  if (room) cached(h, st, chunks, n);
  sendResults(h, st, chunks, n, a.pkts);
}

/** The members the round's plan left out whose contributions may be in
 * our slots of it (possibly none: 0n), or null when no slot needs a look:
 * a round whose members speculated on every member, one whose leader died
 * before its plan reached us, or one a few rounds after a death (a member
 * that died contributed under a plan the others never got). */
export function outsidersOf(h: Host, st: RoundState): bigint | null {
  if (!Host.has(st.active, h.rank)) return null;
  const outside = h.othersMask & ~st.active;
  const d = h.deaths;
  const recent = !!d && (outside & d.mask) !== 0n && st.r - d.round <= TUNING.CACHE_ROUNDS;
  const speculated = st.predicted && outside !== 0n;
  return st.replanned || recent || speculated ? outside : null;
}

/**
 * Completed slots that hold a contribution from a member the plan left out
 * are not finished. Their result would count more contributors than the
 * active set, and every member's program would refuse it, so the round
 * stalled until its deadline (`ainftp bench --bits 8 --link-rate 1gbit`,
 * about 1 run in 50).
 *
 * How one gets there: a speculated round whose plan leaves a late member
 * out. That member's contributions (sent before it knew) reach a slot of
 * ours while we take the plan in, and the slot completes with them: after
 * clearForeign emptied the slots holding one (before applyPlan's bank mask
 * the slot waits for every member; our confirmation leaves a completed
 * slot alone), or after clearForeign read the events and before it looked
 * at the slot, which it then empties while the completion's event is
 * still to be read.
 *
 * So in such a round every completion is checked against its slot now:
 * - one whose slot is no longer complete in this round was emptied after
 *   its event: not finished (the slot completes again, with an event);
 * - one whose slot holds an outsider is emptied and claimed again at the
 *   plan's scale (at the deadline: closed empty);
 * - the rest are finished with the slot's contributor count.
 * The active contributors of an emptied slot send again, named by our
 * answer to the first probe for its result. Returns the chunks to finish
 * (`chunks` itself when every one is).
 */
function refuseOutsiders(h: Host, st: RoundState, bankBase: number, chunks: Uint32Array): Uint32Array {
  // (the only active member, a plan of one under --quorum 1, finishes its
  // chunks with no contribution: no slot to look at)
  const outside = h.robust || st.K === 1 ? null : outsidersOf(h, st);
  if (outside === null) return chunks;
  const keep: number[] = [], bad: number[] = [];
  for (const c of chunks) {
    const s = h.maps.slot(bankBase + c);
    if (s.tag !== st.r + 1 || s.state !== SLOT_COMPLETE) st.ownedDone[c] = 0;
    else if ((s.seen & outside) !== 0n) bad.push(c);
    else (st.summed[c] = s.contributors), keep.push(c);
  }
  if (keep.length === chunks.length) return chunks;
  h.stats.outsidersRefused += chunks.length - keep.length;
  if (bad.length) {
    h.maps.clearSlots(bad.map((c) => bankBase + c));
    for (const c of bad) st.ownedDone[c] = 0;
    if (st.closedAtDeadline) h.maps.closeSlots(st.r, bad, { force: true, rank: h.rank, jobId: h.job, srcAddr: h.peers[h.rank] });
    else if (h.o.speculate) claimAtPlan(h, st, bad);
  }
  return Uint32Array.from(keep);
}

/** Our slots `chunks` of the round claimed at the plan's scale (CLOSE +
 * F_CONFIRM, one frame per scale; speculate.ts confirmSlots): speculative
 * ones at it close if full, the others are emptied or claimed at it, and a
 * late speculative contribution from outside the active set is refused. */
export function claimAtPlan(h: Host, st: RoundState, chunks: ArrayLike<number>): void {
  const byExp = new Map<number, number[]>();
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i], e = st.shared[c];
    let l = byExp.get(e);
    if (!l) byExp.set(e, (l = []));
    l.push(c);
  }
  for (const [e, list] of byExp)
    h.maps.closeSlots(st.r, list, { force: false, rank: h.rank, jobId: h.job, srcAddr: h.peers[h.rank], confirmExp: e });
}

/** GSO wants every segment but the last one full: the short chunk goes last. */
function shortChunkLast(h: Host, st: RoundState, chunks: Uint32Array): void {
  const short = st.counts[st.nchunks - 1] < h.chunkElems ? st.nchunks - 1 : -1;
  if (short < 0) return;
  const at = chunks.indexOf(short);
  if (at >= 0 && at !== chunks.length - 1) (chunks[at] = chunks[chunks.length - 1]), (chunks[chunks.length - 1] = short);
}

/** Sends the batch's n result packets (in `pkts`, Host.resPkts unless
 * given) to every peer. */
export function sendResults(h: Host, st: RoundState, chunks: Uint32Array, n: number, pkts: Uint8Array = h.resPkts): void {
  const lastSize = h.wireBytes(st.counts[chunks[chunks.length - 1]]);
  h.sealData(pkts, n);
  const copies = redundant(h, st) ? 2 : 1;
  for (const p of h.others) h.sendData(p, pkts, n, lastSize, copies);
  const now = h.clock.now();
  for (let i = 0; i < n; i++) st.resultSentAt[chunks[i]] = now;
}

/** Whether our open slots have made no progress for the owner's grace. */
export function ownerDeadlinePassed(st: RoundState, now: number): boolean {
  return st.sent && !st.closedAtDeadline && st.ownedDoneCount < st.owned.length && now >= st.lastProgress + st.ownerGrace;
}

/** The deadline: close our open slots with the contributions present (the
 * program completes them and raises their events). */
export function closeAtDeadline(h: Host, st: RoundState): void {
  st.closedAtDeadline = true;
  const open: number[] = [];
  for (const c of st.owned) if (!st.ownedDone[c]) open.push(c);
  if (open.length) {
    h.maps.closeSlots(st.r, open, { force: true, rank: h.rank, jobId: h.job, srcAddr: h.peers[h.rank] });
    h.stats.deadlineCloses += open.length;
  }
}

/** Members whose contributions our slots wait for in round r: the others,
 * less those the sentry holds in quarantine. */
export function expectedMask(h: Host, r: number): bigint {
  return h.sentry ? h.sentry.expectedMask(h, r) : h.othersMask;
}

/** Slots of ours that completed before we had the plan: finish them now. */
export function finishPending(h: Host, st: RoundState, bankBase: number): void {
  const pending = st.pending.filter((c) => st.ownerIdx[h.rank] === c % st.K);
  if (pending.length) finish(h, st, bankBase, Uint32Array.from(pending));
  st.pending = [];
}
