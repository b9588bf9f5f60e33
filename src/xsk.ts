// An AF_XDP socket that receives the collective's result packets: the XDP
// program redirects them (CFG_RESULTS_TO_XSK) into this socket's UMEM, which
// is caller memory (an arena region) or, without one, memory of its own.
// Results are dequantized straight from the UMEM frames into the caller's
// buffer: no copy into a BPF map, no copy through a socket buffer.
import type { Pointer } from "bun:ffi";
import { xskLib } from "../native/xsk.ts";
import { cstr } from "../native/libc.ts";
import { AinftpError, check } from "./errors.ts";

export interface XskOptions {
  iface: string;
  /** RX queue to bind (veth has one: 0). */
  queue?: number;
  /** fd of the program's xsks map (PinnedReflex.mapFd("xsks")). */
  xsksMapFd: number;
  /** UMEM memory: an arena region's address and size; default: our own. */
  area?: { ptr: number; bytes: number };
  /** Bytes of UMEM when no area is given (default 16 MiB: 4096 frames). */
  bytes?: number;
  frameSize?: 2048 | 4096;
  /** Try zero-copy first (needs driver support; veth has none). */
  zeroCopy?: boolean;
}

export interface XskStats {
  received: number;
  fillKicks: number;
  framesReturned: number;
  dropped: number;
  /** Results dropped because they were not from their chunk's owner in the round's plan. */
  notOwner: number;
}

export class XskSocket implements Disposable {
  readonly mode: "zero-copy" | "copy";
  readonly fd: number;
  private h: Pointer | null;

  private constructor(h: Pointer, zc: boolean) {
    this.h = h;
    this.mode = zc ? "zero-copy" : "copy";
    this.fd = xskLib.ainftp_xsk_fd(h);
  }

  /** Whether libxdp is installed (AF_XDP sockets need it). */
  static available(): boolean {
    return xskLib.ainftp_xsk_available() === 0;
  }

  static open(o: XskOptions): XskSocket {
    const op = `AF_XDP socket on ${o.iface}`;
    const avail = xskLib.ainftp_xsk_available();
    if (avail < 0) throw new AinftpError(op, "libxdp.so.1 is not installed", { hint: "apt-get install libxdp1 (or run without --rx xsk)" });
    const out = new BigUint64Array(1);
    const mode = new Int32Array(1);
    const bytes = o.area?.bytes ?? o.bytes ?? 16 << 20;
    check(
      xskLib.ainftp_xsk_open(cstr(o.iface), o.queue ?? 0, (o.area?.ptr ?? null) as Pointer | null, BigInt(bytes),
        o.frameSize ?? 4096, o.zeroCopy === false ? 0 : 1, o.xsksMapFd, out, mode),
      op, "opening the socket failed",
      (e) => (e === 28 ? "the UMEM needs at least 2048 frames (8 MiB at 4 KB)" : e === 16 ? "another AF_XDP socket is bound to that queue" : undefined),
    );
    return new XskSocket(Number(out[0]) as Pointer, mode[0] === 1);
  }

  private get handle(): Pointer {
    if (!this.h) throw new AinftpError("AF_XDP socket", "used after close()");
    return this.h;
  }

  /** Dequantizes waiting results of (job, round) into out; marks done[chunk]
   * and lists new chunks in newly. Returns how many were new. With the
   * round's plan (`owners`: chunk c is owned by owners[c % owners.length]),
   * only the owner's result is taken; others are dropped and counted (notOwner). */
  results(job: number, round: number, nchunks: number, chunkElems: number, out: Float32Array, done: Uint8Array, newly: Uint32Array, owners?: Uint8Array): number {
    return check(
      xskLib.ainftp_xsk_results(this.handle, job, round, nchunks, chunkElems, out, out.length, done, newly, newly.length, owners ?? null, owners?.length ?? 0),
      "AF_XDP receive", "refilling the fill ring failed",
    );
  }

  stats(): XskStats {
    const s = new BigUint64Array(5);
    xskLib.ainftp_xsk_stats(this.handle, s);
    return { received: Number(s[0]), fillKicks: Number(s[1]), framesReturned: Number(s[2]), dropped: Number(s[3]), notOwner: Number(s[4]) };
  }

  /** The kernel's side (XDP_STATISTICS): frames redirected to this socket
   * that never reached its RX ring, because no fill-ring frame was there to
   * copy into (dropped) or the RX ring was full (ringFull); and how often
   * the fill ring was found empty. */
  kernelStats(): { dropped: number; ringFull: number; fillEmpty: number } {
    const s = new BigUint64Array(3);
    check(xskLib.ainftp_xsk_kernel_stats(this.handle, s), "AF_XDP receive", "reading XDP_STATISTICS failed");
    return { dropped: Number(s[0]), ringFull: Number(s[1]), fillEmpty: Number(s[2]) };
  }

  close(): void {
    if (this.h) xskLib.ainftp_xsk_close(this.h);
    this.h = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
