// native/udp.c through bun:ffi: batched UDP (GSO, sendmmsg, recvmmsg) and
// its syscall counters. Thin typed wrappers that return the C result (>= 0,
// or -errno); src/transport.ts validates inputs and turns errors into
// AinftpErrors. Addresses are be32 (network byte order), ports host order.
import { FFIType as T } from "bun:ffi";
import { openShimTable } from "./shim.ts";

const udp = openShimTable({
  ainftp_udp_open: { args: [T.u32, T.u16, T.i32, T.i32], returns: T.i32 },
  ainftp_udp_local: { args: [T.i32, T.ptr], returns: T.i32 },
  ainftp_udp_set_option: { args: [T.i32, T.i32, T.i32, T.i32], returns: T.i32 },
  ainftp_udp_stats: { args: [T.i32, T.ptr], returns: T.i32 },
  ainftp_udp_close: { args: [T.i32], returns: T.i32 },
  ainftp_udp_gso_state: { args: [T.i32], returns: T.i32 },
  ainftp_udp_set_gso: { args: [T.i32, T.i32], returns: T.i32 },
  ainftp_udp_send_gso: { args: [T.i32, T.u32, T.u16, T.ptr, T.u32, T.u32, T.u32], returns: T.i32 },
  ainftp_udp_send_plain: { args: [T.i32, T.u32, T.u16, T.ptr, T.u32, T.u32, T.u32], returns: T.i32 },
  ainftp_udp_send_each: { args: [T.i32, T.u32, T.u16, T.ptr, T.u32, T.u32, T.u32], returns: T.i32 },
  ainftp_udp_sendmmsg: { args: [T.i32, T.ptr, T.ptr, T.ptr, T.ptr, T.ptr, T.u32], returns: T.i32 },
  ainftp_udp_recv_batch: { args: [T.i32, T.ptr, T.u32, T.u32, T.i32, T.ptr, T.ptr, T.ptr], returns: T.i32 },
  ainftp_udp_counters: { args: [T.ptr, T.u32], returns: T.i32 },
  ainftp_udp_counters_reset: { args: [], returns: T.void },
});

/** Largest UDP payload of one IPv4 datagram (65535 - IP and UDP headers). */
export const UDP_MAX_PAYLOAD = 65507;
/** Segments per GSO message used by udpSendGso. */
export const GSO_MAX_SEGS = 64;

export const GSO_UNKNOWN = 0;
export const GSO_WORKS = 1;
export const GSO_OFF = 2;

export function udpOpen(bindIpBe: number, port: number, rcvbuf: number, sndbuf: number): number {
  return udp.ainftp_udp_open(bindIpBe, port, rcvbuf, sndbuf);
}

/** Bound address (be32) and port of fd, or the -errno. */
export function udpLocal(fd: number): { ipBe: number; port: number } | number {
  const out = new Uint32Array(2);
  const rc = udp.ainftp_udp_local(fd, out);
  return rc < 0 ? rc : { ipBe: out[0], port: out[1] };
}

export function udpSetOption(fd: number, level: number, name: number, value: number): number {
  return udp.ainftp_udp_set_option(fd, level, name, value);
}

export interface UdpSocketStats {
  /** Receive / send buffer limits in bytes (as the kernel reports them: doubled). */
  rcvbuf: number;
  sndbuf: number;
  /** Bytes waiting to be read / not yet released by the device. */
  rmemQueued: number;
  wmemQueued: number;
  /** Datagrams dropped because the receive buffer was full. */
  drops: number;
  /** GSO_UNKNOWN, GSO_WORKS or GSO_OFF. */
  gso: number;
}

export function udpStats(fd: number): UdpSocketStats | number {
  const out = new BigUint64Array(6);
  const rc = udp.ainftp_udp_stats(fd, out);
  if (rc < 0) return rc;
  const n = (i: number) => Number(out[i]);
  return { rcvbuf: n(0), sndbuf: n(1), rmemQueued: n(2), wmemQueued: n(3), drops: n(4), gso: n(5) };
}

export function udpClose(fd: number): number {
  return udp.ainftp_udp_close(fd);
}

export function udpGsoState(fd: number): number {
  return udp.ainftp_udp_gso_state(fd);
}

export function udpSetGso(fd: number, on: boolean): number {
  return udp.ainftp_udp_set_gso(fd, on ? 1 : 0);
}

/** nsegs datagrams back to back in buf (segSize each, the last lastSize) to
 * one destination, by UDP GSO (one message per datagram if refused). */
export function udpSendGso(
  fd: number, dstIpBe: number, dstPort: number, buf: Uint8Array, segSize: number, nsegs: number, lastSize: number,
): number {
  return udp.ainftp_udp_send_gso(fd, dstIpBe, dstPort, buf, segSize, nsegs, lastSize);
}

/** Same layout as udpSendGso, one message per datagram (several per
 * sendmmsg), never GSO: for a receiver in generic XDP mode. */
export function udpSendPlain(
  fd: number, dstIpBe: number, dstPort: number, buf: Uint8Array, segSize: number, nsegs: number, lastSize: number,
): number {
  return udp.ainftp_udp_send_plain(fd, dstIpBe, dstPort, buf, segSize, nsegs, lastSize);
}

/** Same layout as udpSendGso, one sendto() per datagram: the baseline. */
export function udpSendEach(
  fd: number, dstIpBe: number, dstPort: number, buf: Uint8Array, segSize: number, nsegs: number, lastSize: number,
): number {
  return udp.ainftp_udp_send_each(fd, dstIpBe, dstPort, buf, segSize, nsegs, lastSize);
}

/** n datagrams buf[offsets[i] .. + lens[i]) to dstIpsBe[i]:dstPorts[i], by sendmmsg. */
export function udpSendMmsg(
  fd: number, dstIpsBe: Uint32Array, dstPorts: Uint16Array, buf: Uint8Array, offsets: Uint32Array, lens: Uint32Array, n: number,
): number {
  return udp.ainftp_udp_sendmmsg(fd, dstIpsBe, dstPorts, buf, offsets, lens, n);
}

/** Waits up to timeoutMs then reads up to max datagrams into slotSize slots of buf. */
export function udpRecvBatch(
  fd: number, buf: Uint8Array, slotSize: number, max: number, timeoutMs: number,
  lens: Uint32Array, srcIpsBe: Uint32Array, srcPorts: Uint16Array,
): number {
  return udp.ainftp_udp_recv_batch(fd, buf, slotSize, max, timeoutMs, lens, srcIpsBe, srcPorts);
}

/** Process-wide counts since the last reset (every socket of the shim). */
export interface UdpCounters {
  /** sendto/sendmsg/sendmmsg calls, failed ones included. */
  sendCalls: number;
  /** polls/sleeps while the send buffer was full (one syscall each). */
  sendWaits: number;
  /** recvmmsg calls. */
  recvCalls: number;
  /** polls before reading. */
  recvPolls: number;
  /** Datagrams handed to the kernel / read. */
  sent: number;
  received: number;
  /** Messages that carried UDP_SEGMENT. */
  gsoMessages: number;
  /** Times the kernel refused GSO and a socket fell back to one message per datagram. */
  gsoRefused: number;
  /** Datagrams longer than their receive slot. */
  truncated: number;
}

const COUNTER_NAMES = [
  "sendCalls", "sendWaits", "recvCalls", "recvPolls", "sent", "received", "gsoMessages", "gsoRefused", "truncated",
] as const satisfies readonly (keyof UdpCounters)[];

const counterBuf = new BigUint64Array(COUNTER_NAMES.length);

export function udpCounters(): UdpCounters {
  udp.ainftp_udp_counters(counterBuf, counterBuf.length);
  const c = {} as UdpCounters;
  COUNTER_NAMES.forEach((k, i) => (c[k] = Number(counterBuf[i])));
  return c;
}

export function udpCountersReset(): void {
  udp.ainftp_udp_counters_reset();
}
