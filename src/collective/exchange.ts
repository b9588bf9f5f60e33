// The exchange of exponents and the plan: every member sends its chunks'
// exponents to the round's leader; the leader decides the plan (plan.ts)
// and sends it, with the shared scale, to everyone. Pieces that come before
// their round are kept (Host.earlyExps / earlyPlans) until it starts.
import { coll } from "../../native/collective.ts";
import { CTRL_EXPS, CTRL_EXPS_MAX, CTRL_EXPS_REQ } from "../abi.ts";
import { decodePlanHead, encodePlanHead, planHeadBytes } from "./control.ts";
import { Host } from "./host.ts";
import { TUNING } from "./options.ts";
import { activeRows, downRankedMask, haveMask, leaderPools, leaderStep, nextLeader, nextScores, promptMask } from "./plan.ts";
import type { Plan, RoundState } from "./round-state.ts";

const { CTRL_PAYLOAD, LATE_MAX, EXPS_ABOVE_MEDIAN } = TUNING;

/** Our own exponents of the round. */
export function myExps(h: Host, st: RoundState): Int8Array {
  return st.exps.subarray(h.rank * st.nchunks, (h.rank + 1) * st.nchunks);
}

/** Sends exponents to a member, CTRL_PAYLOAD per packet (one empty packet for none). */
export function sendExps(h: Host, to: number, r: number, exps: Int8Array, kind = CTRL_EXPS): void {
  const bytes = new Uint8Array(exps.buffer, exps.byteOffset, exps.length);
  for (let off = 0; off < bytes.length || off === 0; off += CTRL_PAYLOAD) {
    h.sendControl(to, kind, r, 0, off, bytes.subarray(off, off + CTRL_PAYLOAD));
    if (bytes.length === 0) break;
  }
}

/** The leader's plan: every piece carries the active mask and the next
 * leader before its share of the maximum exponents. */
export function sendPlan(h: Host, to: number, plan: Plan): void {
  const head = planHeadBytes(h.size);
  const piece = new Uint8Array(head + CTRL_PAYLOAD);
  encodePlanHead(piece, plan.active, plan.next, plan.scores);
  const bytes = new Uint8Array(plan.shared.buffer, plan.shared.byteOffset, plan.shared.length);
  for (let off = 0; off < bytes.length; off += CTRL_PAYLOAD) {
    const part = bytes.subarray(off, off + CTRL_PAYLOAD);
    piece.set(part, head);
    h.sendControl(to, CTRL_EXPS_MAX, plan.r, 0, off, piece.subarray(0, head + part.length));
  }
}

/** Adds a piece to an early round's store (by round, sender, piece). */
function keepEarly<T>(m: Map<number, Map<number, Map<number, T>>>, round: number, rank: number, first: number, v: T): void {
  let bySender = m.get(round);
  if (!bySender) m.set(round, (bySender = new Map()));
  let pieces = bySender.get(rank);
  if (!pieces) bySender.set(rank, (pieces = new Map()));
  pieces.set(first, v);
}

/** Stores one piece (CTRL_PAYLOAD exponents from chunk `first`) of a
 * rank's exponents; a rank's set is complete when every piece is here. */
export function storeExps(h: Host, st: RoundState | null, rank: number, round: number, first: number, payload: Uint8Array): void {
  const ex = new Int8Array(payload.buffer, payload.byteOffset, payload.length);
  if (first % CTRL_PAYLOAD !== 0) return;
  if (st && round === st.r) {
    if (st.haveExps[rank]) return;
    // a piece that fits no piece of ours: its sender reduces another length
    if (first + ex.length > st.nchunks || ex.length !== Math.min(CTRL_PAYLOAD, st.nchunks - first)) return void st.sizeMismatch.add(rank);
    st.exps.set(ex, rank * st.nchunks + first);
    st.pieces[rank].add(first);
    if (st.pieces[rank].size === Math.ceil(st.nchunks / CTRL_PAYLOAD)) (st.haveExps[rank] = true), (st.expsAt[rank] = h.clock.now());
    h.behind.delete(rank); // in our round: caught up
    return;
  }
  // an old round: nothing needs it any more (and its sender is not known to
  // be behind: a straggler behind a slow link sends every round's
  // exponents late, and must not be waited for)
  if (round < h.nextRound) return;
  // bounded memory: a few rounds ahead, pieces within the job's chunks
  if (!h.guard.keepsRound(round, h.nextRound)) return;
  if (first >= h.capacity) return h.guard.count("bad_chunk");
  keepEarly(h.earlyExps, round, rank, first, Int8Array.from(ex));
}

/** A plan piece for a round we have not started (we were passive, or past
 * the quorum): kept by sender, since who leads that round is known when it starts. */
export function storeEarlyPlan(h: Host, rank: number, round: number, first: number, payload: Uint8Array): void {
  if (round < h.nextRound) return;
  if (round - h.nextRound >= 4) return h.guard.count("future_round");
  if (first >= h.capacity || first % CTRL_PAYLOAD !== 0) return h.guard.count("bad_chunk");
  keepEarly(h.earlyPlans, round, rank, first, Uint8Array.from(payload));
}

/** Stores one piece of the leader's plan (active mask, next leader, and
 * a share of the maximum exponents); every piece must name the same plan. */
export function storeShared(h: Host, st: RoundState, first: number, payload: Uint8Array, leader = st.leader): void {
  const head = planHeadBytes(h.size);
  if (st.haveShared || payload.length < head) return;
  const { active, next } = decodePlanHead(payload);
  const ex = payload.subarray(head);
  if (first % CTRL_PAYLOAD !== 0) return;
  if (first + ex.length > st.nchunks || ex.length !== Math.min(CTRL_PAYLOAD, st.nchunks - first)) return void st.sizeMismatch.add(leader);
  const all = (1n << BigInt(h.size)) - 1n;
  if (next >= h.size || (active & ~all) !== 0n || !Host.has(active, leader)) return;
  if (st.sharedPieces.size && (active !== st.active || next !== st.next)) return;
  st.active = active;
  st.next = next;
  for (let k = 0; k < h.size; k++) st.scores[k] = Math.min(LATE_MAX, payload[planHeadBytes(0) + k]);
  st.shared.set(new Int8Array(ex.buffer, ex.byteOffset, ex.length), first);
  st.sharedPieces.add(first);
  if (st.sharedPieces.size === Math.ceil(st.nchunks / CTRL_PAYLOAD)) st.haveShared = true;
}

/** A plan piece from a member that is not our leader: taken only by the
 * successor of a leader that died before its plan reached the successor
 * (round.ts succeed), from a member that holds the dead leader's plan
 * (answerExpsRequest relays it). The successor then announces that plan
 * instead of deciding another: the survivors that hold it, and those
 * whose results are out under it, and those that had none, all end the
 * round under one plan, and take the same next leader from it. A relayed
 * plan must name the dead leader among its active members, as the plan a
 * leader decides always names itself. */
export function storeRelayedPlan(h: Host, st: RoundState | null, first: number, payload: Uint8Array): void {
  if (!st || st.deadLeader < 0 || st.leader !== h.rank || st.haveShared || st.sent) return;
  storeShared(h, st, first, payload, st.deadLeader);
  if (st.haveShared) st.relayed = true;
}

/** At a round's start: the leader's plan pieces and the members' exponents
 * that came before it. */
export function adoptEarly(h: Host, st: RoundState): void {
  const r = st.r;
  for (const [first, piece] of h.earlyPlans.get(r)?.get(st.leader) ?? []) storeShared(h, st, first, piece);
  for (const k of h.earlyPlans.keys()) if (k <= r) h.earlyPlans.delete(k);
  const early = h.earlyExps.get(r);
  if (early) {
    h.earlyExps.delete(r);
    for (const [rank, pieces] of early)
      for (const [first, ex] of pieces) storeExps(h, st, rank, r, first, new Uint8Array(ex.buffer, ex.byteOffset, ex.length));
  }
  for (const k of h.earlyExps.keys()) if (k < r) h.earlyExps.delete(k);
}

/** The leader's view of the round now: whose exponents are here, and
 * whether a majority just arrived and the plan can be decided (plan.ts). */
export function leaderTurn(h: Host, st: RoundState, now: number): { have: bigint; count: number; majorityNow: boolean; decide: boolean } {
  // a member the swarm declared dead is left out even when its exponents
  // came (it sent them, or answered our request, before it died): as an
  // owner it would leave the round without results
  for (let k = 0; k < h.size; k++) if (st.haveExps[k] && k !== h.rank && !Host.has(h.liveMask, k)) st.haveExps[k] = false;
  const { have, count } = haveMask(st.haveExps);
  const step = leaderStep({
    have, count, size: h.size, othersMask: h.othersMask, fitMask: h.fitMask, liveMask: h.liveMask, downRanked: downRankedMask(h.lateness),
    patient: st.patient, quorum: h.o.quorum, majorityAt: st.majorityAt, grace: st.grace, now,
  });
  if (step.decide && laggardAwaited(h, st, now)) step.decide = false;
  return { have, count, ...step };
}

/** A member is behind when it speaks of a round this many rounds before ours. */
export const LAG_ROUNDS = 2;

/** A member asked us for results of `round` (CTRL_RESULT_REQ): at least
 * LAG_ROUNDS before the round we are in, it is behind (a passive member
 * left out round after round, or one that waited out a dead owner); the
 * leaders then wait for it (leaderTurn) before it falls past our caches of
 * CACHE_ROUNDS rounds, whose results it could then never get. A member
 * that is not behind asks only for its current round's results; a
 * straggler behind a slow link gets every result in time and asks for
 * none (its exponents come late, which is why they are no evidence). */
export function noteAsked(h: Host, rank: number, round: number): void {
  if (rank === h.rank || rank >= h.size) return;
  if (h.nextRound - 1 - round >= LAG_ROUNDS) h.behind.set(rank, { round, at: h.clock.now() });
}

/** Evidence that a member is behind counts this long (ms). */
const BEHIND_FRESH_MS = 2000;
/** A leader waits for a member behind at most this long from the round's start (ms). */
const BEHIND_WAIT_MS = 1000;

/** Whether the leader holds its plan for a live member that is behind
 * (noteAsked) and whose exponents of this round are not here:
 * it catches up (passive, its rounds take round-trips) instead of falling
 * past the members' caches of results, which it could then never get (the
 * long gradients under loss with --quorum 3; a survivor that waited out a
 * dead owner's result while the others went on, sim seed 6545). Bounded:
 * BEHIND_WAIT_MS from the round's start, and never past half the round
 * timeout. */
function laggardAwaited(h: Host, st: RoundState, now: number): boolean {
  if (h.behind.size === 0 || now - st.t0 >= Math.min(BEHIND_WAIT_MS, h.o.roundTimeoutMs / 2)) return false;
  for (const [p, b] of h.behind) {
    if (now - b.at > BEHIND_FRESH_MS) {
      h.behind.delete(p);
      continue;
    }
    // (not one the swarm holds slow: its requests come late, from a round it has long left)
    if (!st.haveExps[p] && Host.has(h.fitMask, p) && Host.has(h.liveMask, p) && !h.left.has(p)) return true;
  }
  return false;
}

/** Asks the live members whose exponents are missing, at once: a lost
 * exponents packet is then back within a round trip, not the member's
 * retransmission timer. */
export function requestExps(h: Host, st: RoundState): void {
  const mine = myExps(h, st);
  for (let k = 0; k < h.size; k++)
    if (k !== h.rank && !st.haveExps[k] && Host.has(h.liveMask, k)) sendExps(h, k, st.r, mine, CTRL_EXPS_REQ);
}

/** The leader's decision (no I/O): the members whose exponents are here are active;
 * the shared scale is their maximum; the next leader is prompt and fit. */
export function decidePlan(h: Host, st: RoundState, have: bigint, count: number, now: number): void {
  st.active = have;
  nextScores(h.lateness, st.haveExps, st.patient, st.scores);
  const rows = activeRows(st.exps, st.haveExps, count, st.nchunks);
  // with the sentry, an exponent far above the chunk's median (4096 times
  // its magnitude) is a poisoner's: left out of the shared scale
  if (h.sentry) h.stats.expsLeftOut += coll.ainftp_robust_max_exps(rows, count, st.nchunks, st.shared, EXPS_ABOVE_MEDIAN);
  else coll.ainftp_max_exps(rows, count, st.nchunks, st.shared);
  const prompt = promptMask(st.haveExps, st.expsAt, now, st.majorityAt);
  st.next = nextLeader(h.rank, h.size, leaderPools(prompt, downRankedMask(h.lateness), h.fitMask, have));
  st.haveShared = true;
}

/** Sends the decided plan to every member; a partial round's plan is kept
 * for passive members that ask after we moved on. */
export function announcePlan(h: Host, st: RoundState, count: number): void {
  for (const p of h.others) sendPlan(h, p, st);
  if (count < h.size) h.keep(h.planCache, st.r, { r: st.r, active: st.active, next: st.next, scores: st.scores, shared: st.shared });
}

/** Answers a CTRL_EXPS_REQ: the leader with its plan (or a cached one for a
 * round we left), a member asked by a leader still collecting with its
 * exponents, a member asked by another (a dead leader's successor) with
 * the plan it follows (the cache holds every plan we followed). */
export function answerExpsRequest(h: Host, st: RoundState | null, from: number, round: number): void {
  if (!st || round !== st.r) {
    const plan = h.planCache.get(round);
    if (plan) sendPlan(h, from, plan);
    return;
  }
  if (st.leader === h.rank && st.haveShared) sendPlan(h, from, st);
  // a successor of our dead leader asks: it gets the plan we hold
  // (storeRelayedPlan), not our exponents for a plan of its own
  else if (st.haveShared && from !== st.leader) sendPlan(h, from, st);
  else if (st.haveExps[h.rank]) sendExps(h, from, st.r, myExps(h, st));
}
