// The native shim (native/shim.c) through bun:ffi. In a compiled binary the
// .so is embedded under /$bunfs, which dlopen cannot open across Bun
// versions: it is copied into a memfd and opened through /proc/self/fd.
import { dlopen, FFIType, type FFIFunction } from "bun:ffi";
import shimPath from "./build/libainftp.so" with { type: "file" };
import { readFileSync } from "node:fs";
import { memfdWith } from "./libc.ts";

const T = FFIType;
const table = {
  ainftp_log_reset: { args: [], returns: T.void },
  ainftp_log_read: { args: [T.ptr, T.i32], returns: T.i32 },
  ainftp_obj_open: { args: [T.ptr, T.u64, T.cstring, T.ptr], returns: T.i32 },
  ainftp_obj_set_rodata: { args: [T.ptr, T.cstring, T.ptr, T.u64], returns: T.i32 },
  ainftp_obj_set_max_entries: { args: [T.ptr, T.cstring, T.u32], returns: T.i32 },
  ainftp_obj_load: { args: [T.ptr], returns: T.i32 },
  ainftp_obj_prog_fd: { args: [T.ptr], returns: T.i32 },
  ainftp_obj_rodata_fd: { args: [T.ptr], returns: T.i32 },
  ainftp_xdp_link: { args: [T.i32, T.i32, T.u32], returns: T.i32 },
  ainftp_xdp_query: { args: [T.i32, T.ptr], returns: T.i32 },
  ainftp_xdp_detach: { args: [T.i32, T.u32], returns: T.i32 },
  ainftp_link_info: { args: [T.i32, T.ptr], returns: T.i32 },
  ainftp_map_info: { args: [T.i32, T.ptr], returns: T.i32 },
  ainftp_prog_info: { args: [T.i32, T.ptr], returns: T.i32 },
  ainftp_obj_pin: { args: [T.i32, T.cstring], returns: T.i32 },
  ainftp_obj_get: { args: [T.cstring], returns: T.i32 },
  ainftp_map_mmap: { args: [T.i32, T.u64, T.i32, T.ptr], returns: T.i32 },
  ainftp_munmap: { args: [T.ptr, T.u64], returns: T.i32 },
  ainftp_test_run: {
    args: [T.i32, T.ptr, T.u32, T.ptr, T.u32, T.u32, T.ptr],
    returns: T.i32,
  },
  ainftp_test_run_on: {
    args: [T.i32, T.ptr, T.u32, T.ptr, T.u32, T.u32, T.u32, T.ptr],
    returns: T.i32,
  },
  ainftp_ring_open: { args: [T.i32, T.u32], returns: T.i32 },
  ainftp_ring_poll: { args: [T.i32, T.i32, T.ptr, T.i32], returns: T.i32 },
  ainftp_ring_epoll_fd: { args: [T.i32], returns: T.i32 },
  ainftp_ring_close: { args: [T.i32], returns: T.void },
  ainftp_abi_describe: { args: [T.ptr, T.i32], returns: T.i32 },
} as const;

let libraryPath: string | undefined;

/** Path dlopen can open for the shim library (a memfd in a compiled binary). */
function shimLibrary(): string {
  if (libraryPath) return libraryPath;
  if (!shimPath.startsWith("/$bunfs")) return (libraryPath = shimPath);
  const fd = memfdWith("libainftp.so", readFileSync(shimPath));
  if (fd < 0) throw new Error("cannot copy the embedded native shim into a memfd");
  return (libraryPath = `/proc/self/fd/${fd}`);
}

/** Opens a table of symbols of the shim library; each native/*.c file has its
 * own table module (native/quant.ts, native/udp.ts, …) built on this. */
export function openShimTable<T extends Record<string, FFIFunction>>(symbols: T) {
  return dlopen(shimLibrary(), symbols).symbols;
}

export const shim = openShimTable(table);

/** libbpf's captured messages since the last open/load (verifier log tail). */
export function libbpfLog(): string {
  const buf = Buffer.alloc(64 * 1024);
  const n = shim.ainftp_log_read(buf, buf.length);
  return buf.subarray(0, n).toString("utf8");
}
