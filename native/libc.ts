// libc through bun:ffi: the calls that return plain ints and report errors
// we do not need errno for. Calls whose errno matters go through the shim.
import { dlopen, FFIType, ptr } from "bun:ffi";

const { symbols: libc } = dlopen("libc.so.6", {
  if_nametoindex: { args: [FFIType.cstring], returns: FFIType.u32 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  geteuid: { args: [], returns: FFIType.u32 },
  memfd_create: { args: [FFIType.cstring, FFIType.u32], returns: FFIType.i32 },
  write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
});

/** NUL-terminated C string for a ptr/cstring argument. */
export function cstr(s: string): Buffer {
  return Buffer.from(s + "\0", "utf8");
}

/** Interface index, or 0 when there is no such interface. */
export function ifNameToIndex(name: string): number {
  return libc.if_nametoindex(cstr(name));
}

export function closeFd(fd: number): void {
  if (fd >= 0) libc.close(fd);
}

export function geteuid(): number {
  return libc.geteuid();
}

/** An anonymous in-memory file holding `bytes`; returns its fd (or -1). */
export function memfdWith(name: string, bytes: Uint8Array): number {
  const fd = libc.memfd_create(cstr(name), 1 /* MFD_CLOEXEC */);
  if (fd < 0) return -1;
  let off = 0;
  while (off < bytes.length) {
    const n = Number(libc.write(fd, ptr(bytes, off), BigInt(bytes.length - off)));
    if (n <= 0) {
      libc.close(fd);
      return -1;
    }
    off += n;
  }
  return fd;
}

/** Socket calls for the bench's delay line (an AF_PACKET socket per side,
 * src/bench/delay-line.ts): plain return values, errno not needed. */
export const socketCalls = dlopen("libc.so.6", {
  socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  recv: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i64 },
  send: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i64 },
  poll: { args: [FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
}).symbols;
