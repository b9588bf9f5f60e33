// native/collective.c through bun:ffi: the collective's per-batch loops.
import { FFIType as T, type Pointer } from "bun:ffi";
import { openShimTable } from "./shim.ts";

export const coll = openShimTable({
  ainftp_finish_batch: {
    args: [T.ptr, T.ptr, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.u32, T.u32, T.ptr, T.ptr, T.ptr, T.ptr, T.u32],
    returns: T.i32,
  },
  ainftp_result_packets: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.u32], returns: T.i32 },
  ainftp_results_drop_foreign: { args: [T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32, T.u32, T.ptr, T.ptr, T.u32], returns: T.u32 },
  ainftp_results_missing: { args: [T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_gather_results: { args: [T.ptr, T.u32, T.u32, T.u32, T.u32, T.ptr, T.u32, T.u32], returns: T.u32 },
  ainftp_gather_results_bits: { args: [T.ptr, T.u32, T.u32, T.u32, T.u32, T.ptr, T.u32, T.u32, T.u32, T.u32], returns: T.u32 },
  ainftp_gather_early_bits: {
    args: [T.ptr, T.u32, T.ptr, T.u32, T.u32, T.u32, T.u32, T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.u32],
    returns: T.u32,
  },
  ainftp_gather_rest_bits: { args: [T.ptr, T.u32, T.u32, T.u32, T.u32, T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_rht_list: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32, T.u32, T.u32, T.ptr], returns: T.u32 },
  ainftp_gather_list_bits: { args: [T.ptr, T.u32, T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32, T.u32], returns: T.u32 },
  ainftp_wait3: { args: [T.i32, T.i32, T.i32, T.i32], returns: T.i32 },
  ainftp_wait3_spin: { args: [T.i32, T.i32, T.i32, T.i32, T.i32], returns: T.i32 },
  ainftp_gather_list: { args: [T.ptr, T.u32, T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_set_flags: { args: [T.ptr, T.u32, T.u32, T.u16], returns: T.void },
  ainftp_max_exps: { args: [T.ptr, T.u32, T.u32, T.ptr], returns: T.void },
  ainftp_robust_max_exps: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_robust_chunk: { args: [T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.u32, T.ptr], returns: T.i32 },
  ainftp_synth: { args: [T.u32, T.u32, T.u32, T.f32, T.ptr, T.u32], returns: T.void },
  ainftp_synth_rel_l2: { args: [T.u32, T.u32, T.u32, T.f32, T.ptr, T.u32], returns: T.f64 },
});

/** The arguments of ainftp_finish_batch that stay the same for a round (an
 * owner's batches of completed slots): kept in the round's state, so a
 * batch costs no allocation. */
export interface FinishBatchArgs {
  /** The sums map and the results map (mmapped). */
  acc: Pointer;
  results: Pointer;
  /** Index of the round's bank's first entry. */
  bankBase: number;
  /** Per chunk: the other members' contributions the program summed. */
  summed: Uint16Array;
  /** Our own quantized chunks: chunk c at (c / ownDiv) * ownStride int16s. */
  own: Uint8Array;
  ownDiv: number;
  ownStride: number;
  /** Per chunk: elements; the shared exponents. */
  counts: Uint16Array;
  exps: Int8Array;
  /** Wire header of our contributions this round (round, job, rank). */
  header: Uint8Array;
  /** Where the result packets go, one per pktStride bytes. */
  pkts: Uint8Array;
  pktStride: number;
}

/** Finishes n completed slots (owner): adds our own chunk to the program's
 * sums, requantizes, publishes each result and writes its packet. Returns
 * the packets written, or -1 (a bad count). */
export function finishBatch(a: FinishBatchArgs, chunks: Uint32Array, n: number): number {
  return coll.ainftp_finish_batch(
    a.acc, a.results, a.bankBase, chunks, n, a.summed, a.own, a.ownDiv, a.ownStride, a.counts, a.exps, a.header, a.pkts, a.pktStride,
  );
}
