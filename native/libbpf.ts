// libbpf through bun:ffi: functions that return an int (>= 0, or -errno in
// libbpf 1.x) are called directly; pointer-returning and opts-taking ones go
// through the shim (native/shim.ts).
import { dlopen, FFIType } from "bun:ffi";

const { symbols } = dlopen("libbpf.so.1", {
  // maps
  bpf_map_lookup_elem: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  bpf_map_update_elem: {
    args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.u64],
    returns: FFIType.i32,
  },
  bpf_object__find_map_fd_by_name: { args: [FFIType.ptr, FFIType.cstring], returns: FFIType.i32 },
  // objects
  bpf_object__close: { args: [FFIType.ptr], returns: FFIType.void },
  bpf_prog_get_fd_by_id: { args: [FFIType.u32], returns: FFIType.i32 },
  // system
  libbpf_num_possible_cpus: { args: [], returns: FFIType.i32 },
});

export const libbpf = symbols;
