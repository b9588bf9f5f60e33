// native/arena.c through bun:ffi: mappings for the arena (4 KB or 2 MB pages,
// hugetlbfs files), the NUMA node of an address, and the bench kernels.
// Thin typed wrappers returning the C result (>= 0 or -errno) or the address;
// src/arena.ts validates inputs and turns errors into AinftpErrors.
import { FFIType as T } from "bun:ffi";
import { cstr } from "./libc.ts";
import { openShimTable } from "./shim.ts";

const arena = openShimTable({
  ainftp_mmap_anon: { args: [T.u64, T.i32, T.i32, T.ptr], returns: T.i32 },
  ainftp_mmap_file: { args: [T.cstring, T.u64, T.i32, T.ptr], returns: T.i32 },
  ainftp_munmap2: { args: [T.u64, T.u64], returns: T.i32 },
  ainftp_numa_node: { args: [T.u64], returns: T.i32 },
  ainftp_chase: { args: [T.u64, T.u64, T.u64, T.u64], returns: T.f64 },
  ainftp_chase_prepare: { args: [T.u64, T.u64, T.u64], returns: T.i64 },
  ainftp_chase_run: { args: [T.u64, T.u64], returns: T.f64 },
  ainftp_touch: { args: [T.u64, T.u64], returns: T.f64 },
} as const);

/** The address written by the mmap calls (a u64 out-parameter). */
const outAddr = new BigUint64Array(1);

/** An address or a negative errno. */
export type MapResult = { addr: number } | number;

function mapped(rc: number): MapResult {
  if (rc < 0) return rc;
  return { addr: Number(outAddr[0]) };
}

/** A private anonymous mapping: huge on 2 MB hugetlb pages (len a multiple of
 * 2 MB), else 4 KB pages with transparent huge pages off; populate faults it in. */
export function mmapAnon(len: number, huge: boolean, populate: boolean): MapResult {
  return mapped(arena.ainftp_mmap_anon(len, huge ? 1 : 0, populate ? 1 : 0, outAddr));
}

/** A shared mapping of path (created 0600 if missing, grown to len if shorter). */
export function mmapFile(path: string, len: number, populate: boolean): MapResult {
  return mapped(arena.ainftp_mmap_file(cstr(path), len, populate ? 1 : 0, outAddr));
}

export function munmap(addr: number, len: number): number {
  return arena.ainftp_munmap2(addr, len);
}

/** NUMA node of the page at addr (faulted in for writing first), or -errno.
 * addr must be mapped writable. */
export function numaNode(addr: number): number {
  return arena.ainftp_numa_node(addr);
}

/** ns per dependent random access over every cache line of [addr, addr+len)
 * (a random cyclic permutation, built first and not timed). Overwrites it. */
export function chase(addr: number, len: number, steps: number, seed: number): number {
  return arena.ainftp_chase(addr, len, steps, seed);
}

/** Links every cache line of [addr, addr+len) into one random cycle from
 * addr (overwrites it); returns the line count or -EINVAL. */
export function chasePrepare(addr: number, len: number, seed: number): number {
  return Number(arena.ainftp_chase_prepare(addr, len, seed));
}

/** ns per access following `steps` links of a prepared cycle from addr. */
export function chaseRun(addr: number, steps: number): number {
  return arena.ainftp_chase_run(addr, steps);
}

/** ns to write one byte in every 4 KB of [addr, addr+len). */
export function touch(addr: number, len: number): number {
  return arena.ainftp_touch(addr, len);
}
