// native/tcpring.c through bun:ffi: the plain-TCP ring all-reduce baseline
// (connections, a ring barrier, the pipelined all-reduce) and its syscall
// counters. Thin typed wrappers that return the C result (>= 0, or -errno);
// src/bench/tcp-ring.ts validates inputs and turns errors into messages.
// Addresses are be32 (network byte order), ports host order.
import { FFIType as T } from "bun:ffi";
import { openShimTable } from "./shim.ts";

const ring = openShimTable({
  // connections
  ainftp_tcpring_listen: { args: [T.u32, T.u16], returns: T.i32 },
  ainftp_tcpring_connect: { args: [T.u32, T.u16, T.i32, T.i32], returns: T.i32 },
  ainftp_tcpring_accept: { args: [T.i32, T.i32, T.ptr], returns: T.i32 },
  ainftp_tcpring_setup: { args: [T.i32, T.i32, T.i32, T.i32], returns: T.i32 },
  ainftp_tcpring_close: { args: [T.i32], returns: T.i32 },
  ainftp_tcpring_send_all: { args: [T.i32, T.ptr, T.u32, T.i32], returns: T.i32 },
  ainftp_tcpring_recv_all: { args: [T.i32, T.ptr, T.u32, T.i32], returns: T.i32 },
  // the collective
  ainftp_tcpring_set_spin: { args: [T.i32], returns: T.void },
  ainftp_tcpring_barrier: { args: [T.i32, T.i32, T.u32, T.u32, T.i32], returns: T.i32 },
  ainftp_tcpring_allreduce: { args: [T.i32, T.i32, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.u32, T.i32, T.ptr], returns: T.i32 },
  // counters
  ainftp_tcpring_counters: { args: [T.ptr, T.u32], returns: T.i32 },
  ainftp_tcpring_counters_reset: { args: [], returns: T.void },
});

/** A listening socket on ipBe:port (0: every address), SO_REUSEADDR. */
export function tcpListen(bindIpBe: number, port: number): number {
  return ring.ainftp_tcpring_listen(bindIpBe, port);
}

/** Connects, retrying every retryMs while nobody listens yet, for up to timeoutMs. */
export function tcpConnect(ipBe: number, port: number, timeoutMs: number, retryMs: number): number {
  return ring.ainftp_tcpring_connect(ipBe, port, timeoutMs, retryMs);
}

/** One connection accepted within timeoutMs, with the peer's address, or the -errno. */
export function tcpAccept(listenFd: number, timeoutMs: number): { fd: number; peerIpBe: number } | number {
  const peer = new Uint32Array(1);
  const fd = ring.ainftp_tcpring_accept(listenFd, timeoutMs, peer);
  return fd < 0 ? fd : { fd, peerIpBe: peer[0] };
}

/** TCP_NODELAY, non-blocking; buffer sizes > 0 fix them (0 keeps autotuning). */
export function tcpSetup(fd: number, nodelay: boolean, sndbuf = 0, rcvbuf = 0): number {
  return ring.ainftp_tcpring_setup(fd, nodelay ? 1 : 0, sndbuf, rcvbuf);
}

export function tcpClose(fd: number): number {
  return ring.ainftp_tcpring_close(fd);
}

/** Sends all of buf (non-blocking fd), waiting at most timeoutMs for each move. */
export function tcpSendAll(fd: number, buf: Uint8Array, timeoutMs: number): number {
  return ring.ainftp_tcpring_send_all(fd, buf, buf.byteLength, timeoutMs);
}

/** Fills buf; -ECONNRESET when the peer closed first. */
export function tcpRecvAll(fd: number, buf: Uint8Array, timeoutMs: number): number {
  return ring.ainftp_tcpring_recv_all(fd, buf, buf.byteLength, timeoutMs);
}

/** How ranks of this process wait when no byte can move: sleep in poll() (false), or spin with sched_yield() (true). */
export function tcpRingSetSpin(on: boolean): void {
  ring.ainftp_tcpring_set_spin(on ? 1 : 0);
}

/** Returns when every rank of the ring has called it (a token round the ring, then a release). */
export function tcpRingBarrier(nextFd: number, prevFd: number, rank: number, ranks: number, timeoutMs: number): number {
  return ring.ainftp_tcpring_barrier(nextFd, prevFd, rank, ranks, timeoutMs);
}

/** Where a failed all-reduce stopped. */
export interface RingStop {
  /** "send": writing to the next rank; "recv": reading from the previous one. */
  side: "send" | "recv";
  sendStep: number;
  recvStep: number;
}

const whereBuf = new Uint32Array(3);

/**
 * Sums buf over the ring in place (reduce-scatter then all-gather, pipelined
 * in chunkBytes pieces); scratch holds ceil(n / ranks) floats. Gives up when
 * nothing moves for timeoutMs. Returns 0, or -errno with where it stopped.
 */
export function tcpRingAllreduce(
  nextFd: number, prevFd: number, rank: number, ranks: number, buf: Float32Array, scratch: Float32Array,
  chunkBytes: number, timeoutMs: number,
): { rc: number; stop: RingStop } {
  const rc = ring.ainftp_tcpring_allreduce(nextFd, prevFd, rank, ranks, buf, buf.length, scratch, chunkBytes, timeoutMs, whereBuf);
  return { rc, stop: { side: whereBuf[0] ? "recv" : "send", sendStep: whereBuf[1], recvStep: whereBuf[2] } };
}

/** Process-wide syscall counts since the last reset. */
export interface TcpRingCounters {
  /** send() calls, EAGAIN ones included. */
  sendCalls: number;
  /** recv() calls, EAGAIN ones included. */
  recvCalls: number;
  /** poll() calls while neither direction could move. */
  polls: number;
  /** sched_yield() calls instead, when spinning. */
  yields: number;
  /** Payload bytes the kernel took / handed over. */
  bytesSent: number;
  bytesReceived: number;
}

const COUNTER_NAMES = ["sendCalls", "recvCalls", "polls", "yields", "bytesSent", "bytesReceived"] as const satisfies readonly (keyof TcpRingCounters)[];
const counterBuf = new BigUint64Array(COUNTER_NAMES.length);

export function tcpRingCounters(): TcpRingCounters {
  ring.ainftp_tcpring_counters(counterBuf, counterBuf.length);
  const c = {} as TcpRingCounters;
  COUNTER_NAMES.forEach((k, i) => (c[k] = Number(counterBuf[i])));
  return c;
}

export function tcpRingCountersReset(): void {
  ring.ainftp_tcpring_counters_reset();
}
