// native/xsk.c through bun:ffi: the AF_XDP receive path.
import { FFIType as T } from "bun:ffi";
import { openShimTable } from "./shim.ts";

export const xskLib = openShimTable({
  ainftp_xsk_available: { args: [], returns: T.i32 },
  ainftp_xsk_open: { args: [T.cstring, T.u32, T.ptr, T.u64, T.u32, T.i32, T.i32, T.ptr, T.ptr], returns: T.i32 },
  ainftp_xsk_fd: { args: [T.ptr], returns: T.i32 },
  ainftp_xsk_stats: { args: [T.ptr, T.ptr], returns: T.void },
  ainftp_xsk_kernel_stats: { args: [T.ptr, T.ptr], returns: T.i32 },
  ainftp_xsk_results: {
    args: [T.ptr, T.u32, T.u32, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.u32, T.ptr, T.u32],
    returns: T.i32,
  },
  ainftp_xsk_close: { args: [T.ptr], returns: T.void },
});
