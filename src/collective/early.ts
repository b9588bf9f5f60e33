// The end of a round, done early (8 and 4 bits): while the round waits on
// others (a shaped link, the last results), the results already here go
// back through the inverse transform into `out`, and the residual of every
// chunk already packed goes back to the gradient's domain. At the end only
// what is left remains: the round ends sooner by the work that was done in
// its waits (the gather and the residual's inverse were 3-6 ms of a 16 MiB
// round at 8 bits, all after the last result). A round that fails leaves
// `out` partly written (in place: x is then partly summed).
import { coll } from "../../native/collective.ts";
import type { Host } from "./host.ts";
import { streamsGather } from "./options.ts";
import type { RoundState } from "./round-state.ts";

/** `enabled`: the early work at all (a test compares with it off); `batch`:
 * gather once at least this many results wait (one FFI call each time). */
export const EARLY = { enabled: true, batch: 8 };

export interface Early {
  /** The RHT's seed of the round (rhtSeed). */
  seed: number;
  /** Results that arrived, not yet gathered. */
  queue: Uint32Array;
  queued: number;
  /** Per chunk: in `out` already. */
  gathered: Uint8Array;
  /** With error feedback: per chunk, its residual back in the gradient's domain. */
  residDone: Uint8Array | null;
  /** Per owner: list positions whose residual went back (up to st.pos). */
  residAt: number[];
  ownResidDone: boolean;
}

let iota = new Uint32Array(0);
/** 0, 1, … n-1 (shared, read-only). */
function allChunks(n: number): Uint32Array {
  if (iota.length < n) iota = Uint32Array.from({ length: Math.max(n, 2 * iota.length) }, (_, i) => i);
  return iota.subarray(0, n);
}

/** The round's early gather, where it applies: 8 and 4 bits on the map path,
 * without a robust mode (which finishes chunks its own way). */
export function earlyFor(h: Host, st: RoundState, seed: number, resid: Float32Array | null): Early | null {
  if (!EARLY.enabled || !h.rht || h.xsk || h.robust) return null;
  return {
    seed, queue: new Uint32Array(st.nchunks), queued: 0, gathered: new Uint8Array(st.nchunks),
    residDone: resid ? new Uint8Array(st.nchunks) : null, residAt: new Array(h.size).fill(0), ownResidDone: false,
  };
}

/** A result of chunk c arrived (ours, once finished, too). */
export function noteResult(st: RoundState, c: number): void {
  const e = st.early;
  if (e && !e.gathered[c] && e.queued < e.queue.length) e.queue[e.queued++] = c;
}

/** Before the round waits: gather what arrived, and take the residual of
 * what we packed back through the inverse. Only once the plan is known (the
 * results map then takes results from their owners only; an entry not from
 * its owner stays for the end). */
export function workEarly(h: Host, st: RoundState, bankBase: number): void {
  const e = st.early;
  if (!e || !st.sent || st.K === 0) return;
  if (e.queued >= EARLY.batch) {
    h.stats.gatheredEarly += coll.ainftp_gather_early_bits(h.resBase, bankBase, e.queue, e.queued, st.nchunks, h.chunkElems, st.r + 1, st.out, st.out.length,
      h.bits, e.seed, st.ownersU8!, st.K, e.gathered, streamsGather(st.out.length));
    e.queued = 0;
  }
  const resid = st.resid;
  if (!resid || !e.residDone || st.passive) return;
  if (!e.ownResidDone && st.owned.length) {
    coll.ainftp_rht_list(resid, resid.length, h.chunkElems, st.owned, st.owned.length, e.seed, 1, e.residDone);
    e.ownResidDone = true;
  }
  for (let o = 0; o < h.size; o++) {
    if (o === h.rank || e.residAt[o] >= st.pos[o]) continue;
    const list = st.ownerChunks[o].subarray(e.residAt[o], st.pos[o]);
    coll.ainftp_rht_list(resid, resid.length, h.chunkElems, list, list.length, e.seed, 1, e.residDone);
    e.residAt[o] = st.pos[o];
  }
}

/** The end: the results not gathered yet into `out` (returns how many
 * entries did not hold the round's result), and the rest of the residual
 * back through the inverse. */
export function gatherRest(h: Host, st: RoundState, bankBase: number): number {
  const e = st.early!;
  const bad = coll.ainftp_gather_rest_bits(h.resBase, bankBase, st.nchunks, h.chunkElems, st.r + 1, st.out, st.out.length, h.bits, e.seed, e.gathered, streamsGather(st.out.length));
  const resid = st.resid;
  if (resid && e.residDone)
    coll.ainftp_rht_list(resid, resid.length, h.chunkElems, allChunks(st.nchunks), st.nchunks, e.seed, 1, e.residDone);
  return bad;
}
