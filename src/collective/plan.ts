// Planning, as pure functions: how long a round waits for late members,
// when the leader decides, who is active, who leads next, and how the
// members' lateness scores move. No I/O, no clock: the caller passes `now`.
import { nearestRank, sortedCopy } from "../stats.ts";
import { TUNING } from "./options.ts";

const { LATE_SLOW, LATE_MAX, PROMPT_MS, DEADLINE_CAP_MS, DEADLINE_FACTOR, DEADLINE_FLOOR_MS } = TUNING;

const bit = (k: number) => 1n << BigInt(k);
const has = (mask: bigint, k: number) => ((mask >> BigInt(k)) & 1n) !== 0n;

/** How long a round gives late members (see TUNING.DEADLINE_FACTOR). */
export function graceMs(roundTimes: readonly number[], deadlineMs: number | "auto" | undefined): number {
  const d = deadlineMs ?? "auto";
  if (d === 0) return Infinity;
  if (typeof d === "number") return d;
  if (roundTimes.length < 4) return DEADLINE_CAP_MS;
  const median = nearestRank(sortedCopy(roundTimes), 0.5);
  return Math.min(DEADLINE_CAP_MS, Math.max(DEADLINE_FLOOR_MS, DEADLINE_FACTOR * median));
}

/** The first member after `rank` (rank order, cyclic) in the first pool
 * that has one; never `rank` itself, so a leader whose own link is slow (it
 * sees everyone late) cannot keep the role. */
export function nextLeader(rank: number, size: number, pools: readonly bigint[]): number {
  for (const pool of pools)
    for (let i = 1; i < size; i++) {
      const k = (rank + i) % size;
      if (has(pool, k)) return k;
    }
  return (rank + 1) % size;
}

/** `rank`, or the first member after it (rank order, cyclic) that the
 * swarm does not hold dead (`me` is always alive): a dead leader would
 * stall every round. */
export function liveFrom(rank: number, me: number, size: number, liveMask: bigint): number {
  for (let i = 0; i < size; i++) {
    const k = (rank + i) % size;
    if (k === me || has(liveMask, k)) return k;
  }
  return rank;
}

/** The members whose exponents are here, and how many. */
export function haveMask(haveExps: readonly boolean[]): { have: bigint; count: number } {
  let have = 0n, count = 0;
  for (let k = 0; k < haveExps.length; k++) if (haveExps[k]) (have |= bit(k)), count++;
  return { have, count };
}

/** Members whose lateness has reached LATE_SLOW: leaders stop waiting for them. */
export function downRankedMask(lateness: Uint8Array): bigint {
  let m = 0n;
  for (let k = 0; k < lateness.length; k++) if (lateness[k] >= LATE_SLOW) m |= bit(k);
  return m;
}

export interface LeaderView {
  have: bigint;
  count: number;
  size: number;
  othersMask: bigint;
  fitMask: bigint;
  liveMask: bigint;
  downRanked: bigint;
  /** A barrier: waits for every live member, down-ranked or not. */
  patient: boolean;
  quorum: number | undefined;
  majorityAt: number;
  grace: number;
  now: number;
}

/** Whether a majority's exponents are here for the first time (the leader
 * then asks the rest at once), and whether the leader decides the plan now:
 * nobody it waits for is missing, the quorum is reached, or the grace after
 * the majority has passed. */
export function leaderStep(v: LeaderView): { majorityNow: boolean; decide: boolean } {
  const slow = v.patient ? 0n : v.downRanked;
  const awaited = v.othersMask & (v.patient ? v.liveMask : v.fitMask) & ~slow & ~v.have;
  const quorate = !v.patient && v.quorum !== undefined && v.count >= v.quorum;
  const majorityNow = v.majorityAt === Infinity && v.count > v.size / 2;
  const majorityAt = majorityNow ? v.now : v.majorityAt;
  return { majorityNow, decide: awaited === 0n || quorate || v.now >= majorityAt + v.grace };
}

/** The lateness scores after a plan: a member whose exponents made it loses
 * a point, one that missed gains one; a barrier leaves them as they were. */
export function nextScores(lateness: Uint8Array, haveExps: readonly boolean[], patient: boolean, into: Uint8Array): Uint8Array {
  for (let k = 0; k < into.length; k++)
    into[k] = patient ? lateness[k] : haveExps[k] ? Math.max(0, lateness[k] - 1) : Math.min(LATE_MAX, lateness[k] + 1);
  return into;
}

/** Members whose exponents came with the majority (within PROMPT_MS): they
 * may lead the next round. A barrier waits for a delayed member too, which
 * must not lead: its plan would reach everyone late. */
export function promptMask(haveExps: readonly boolean[], expsAt: Float64Array, now: number, majorityAt: number): bigint {
  let prompt = 0n;
  for (let k = 0; k < haveExps.length; k++) if (haveExps[k] && expsAt[k] <= Math.min(now, majorityAt) + PROMPT_MS) prompt |= bit(k);
  return prompt;
}

/** The leader's pools for the next leader, best first: prompt and fit and
 * not down-ranked, prompt, active, fit. */
export function leaderPools(prompt: bigint, downRanked: bigint, fitMask: bigint, have: bigint): bigint[] {
  return [prompt & ~downRanked & fitMask, prompt, have, fitMask];
}

/** The active members' exponent rows, one after another (all rows when all are active). */
export function activeRows(exps: Int8Array, haveExps: readonly boolean[], count: number, nchunks: number): Int8Array {
  if (count === haveExps.length) return exps;
  const rows = new Int8Array(count * nchunks);
  let at = 0;
  for (let k = 0; k < haveExps.length; k++) if (haveExps[k]) rows.set(exps.subarray(k * nchunks, (k + 1) * nchunks), (at++) * nchunks);
  return rows;
}

/** The owners' layout of a plan: per rank its index among the active
 * members or -1, the owners in rank order, and K. */
export function owners(active: bigint, size: number, ownerIdx: Int32Array): { owners: number[]; K: number } {
  const list: number[] = [];
  for (let k = 0; k < size; k++) ownerIdx[k] = has(active, k) ? (list.push(k), list.length - 1) : -1;
  return { owners: list, K: list.length };
}

/** The chunks an owner of index i (of K) holds in a round of nchunks: i, i+K, … */
export function ownedChunks(i: number, K: number, nchunks: number): Uint32Array {
  const n = i >= 0 && i < nchunks ? Math.ceil((nchunks - i) / K) : 0;
  const list = new Uint32Array(n);
  for (let k = 0; k < n; k++) list[k] = i + k * K;
  return list;
}
