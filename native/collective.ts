// native/collective.c through bun:ffi: the collective's per-batch loops.
import { FFIType as T } from "bun:ffi";
import { openShimTable } from "./shim.ts";

export const coll = openShimTable({
  ainftp_finish_batch: {
    args: [T.ptr, T.ptr, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.u32, T.u32, T.ptr, T.ptr, T.ptr, T.ptr, T.u32],
    returns: T.i32,
  },
  ainftp_result_packets: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.u32], returns: T.i32 },
  ainftp_results_drop_foreign: { args: [T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32, T.u32], returns: T.u32 },
  ainftp_results_missing: { args: [T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_gather_results: { args: [T.ptr, T.u32, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_wait3: { args: [T.i32, T.i32, T.i32, T.i32], returns: T.i32 },
  ainftp_gather_list: { args: [T.ptr, T.u32, T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_set_flags: { args: [T.ptr, T.u32, T.u32, T.u16], returns: T.void },
  ainftp_max_exps: { args: [T.ptr, T.u32, T.u32, T.ptr], returns: T.void },
  ainftp_robust_max_exps: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_robust_chunk: { args: [T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.u32, T.ptr], returns: T.i32 },
  ainftp_synth: { args: [T.u32, T.u32, T.u32, T.f32, T.ptr, T.u32], returns: T.void },
  ainftp_synth_rel_l2: { args: [T.u32, T.u32, T.u32, T.f32, T.ptr, T.u32, T.ptr, T.ptr], returns: T.f64 },
});
