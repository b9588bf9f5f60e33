// The end of a round, done early (8 and 4 bits): while the round waits on
// others (a shaped link, the last results), the results already here go
// back through the inverse transform into `out`. At the end only what is
// left remains: the round ends sooner by the work that was done in its
// waits (before early.ts, the gather and the residual's inverse were 3-6 ms
// of a 16 MiB round at 8 bits, all after the last result). The residual of
// error feedback needs no such step now: packing
// takes each chunk's residual back through the inverse while it is in
// cache (packChunksAt residSeed). A round that fails leaves `out` partly
// written (in place: x is then partly summed).
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
}

/** The round's early gather, where it applies: 8 and 4 bits on the map path,
 * without a robust mode (which finishes chunks its own way). */
export function earlyFor(h: Host, st: RoundState, seed: number): Early | null {
  if (!EARLY.enabled || !h.rht || h.xsk || h.robust) return null;
  return { seed, queue: new Uint32Array(st.nchunks), queued: 0, gathered: new Uint8Array(st.nchunks) };
}

/** A result of chunk c arrived (ours, once finished, too). */
export function noteResult(st: RoundState, c: number): void {
  const e = st.early;
  if (e && !e.gathered[c] && e.queued < e.queue.length) e.queue[e.queued++] = c;
}

/** Before the round waits: gather what arrived. Only once the plan is known
 * (the results map then takes results from their owners only; an entry not
 * from its owner stays for the end). */
export function workEarly(h: Host, st: RoundState, bankBase: number): void {
  const e = st.early;
  if (!e || !st.sent || st.K === 0) return;
  if (e.queued >= EARLY.batch) {
    h.stats.gatheredEarly += coll.ainftp_gather_early_bits(h.resBase, bankBase, e.queue, e.queued, st.nchunks, h.chunkElems, st.r + 1, st.out, st.out.length,
      h.bits, e.seed, st.ownersU8!, st.K, e.gathered, streamsGather(st.out.length));
    e.queued = 0;
  }
}

/** The end: the results not gathered yet into `out`; returns how many
 * entries did not hold the round's result. */
export function gatherRest(h: Host, st: RoundState, bankBase: number): number {
  const e = st.early!;
  return coll.ainftp_gather_rest_bits(h.resBase, bankBase, st.nchunks, h.chunkElems, st.r + 1, st.out, st.out.length, h.bits, e.seed, e.gathered, streamsGather(st.out.length));
}
