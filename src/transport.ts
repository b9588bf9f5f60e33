// The collective's UDP endpoint: a bound socket that sends runs of equal-size
// datagrams to one peer by UDP GSO (about one syscall per 44 packets of 1472
// bytes instead of one each), datagrams to several peers by sendmmsg, and
// receives batches by recvmmsg into a reused buffer. Inputs are checked here,
// before any syscall; system errors become AinftpErrors with a hint.
import { AinftpError, check } from "./errors.ts";
import {
  GSO_OFF, GSO_WORKS, UDP_MAX_PAYLOAD, udpClose, udpCounters, udpCountersReset, udpGsoState, udpLocal, udpOpen,
  udpRecvBatch, udpSendGso, udpSendMmsg, udpSendPlain, udpSetGso, udpSetOption, udpStats, type UdpCounters, type UdpSocketStats,
} from "../native/udp.ts";

export { UDP_MAX_PAYLOAD, type UdpCounters, type UdpSocketStats };

const EACCES = 13;
const EMSGSIZE = 90;
const EADDRINUSE = 98;
const EADDRNOTAVAIL = 99;
const ENETUNREACH = 101;
const ENOBUFS = 105;
const EAGAIN = 11;
const EHOSTUNREACH = 113;
const EPERM = 1;

// ---- IPv4 addresses as be32 -------------------------------------------------------

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The uint32 whose bytes in memory are the address in network order (what
 * the C side stores into sin_addr.s_addr), e.g. "10.0.0.1". */
export function ipv4ToBe32(addr: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(addr);
  const o = m ? m.slice(1).map(Number) : [];
  if (!m || o.some((x) => x > 255))
    throw new AinftpError("parse address", `"${addr}" is not an IPv4 address`, { hint: "write it dotted, like 10.0.0.2" });
  const [a, b, c, d] = o;
  return (LITTLE_ENDIAN ? a | (b << 8) | (c << 16) | (d << 24) : (a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}

export function be32ToIpv4(be: number): string {
  const o = LITTLE_ENDIAN
    ? [be & 0xff, (be >>> 8) & 0xff, (be >>> 16) & 0xff, be >>> 24]
    : [be >>> 24, (be >>> 16) & 0xff, (be >>> 8) & 0xff, be & 0xff];
  return o.join(".");
}

// ---- validation ---------------------------------------------------------------------

function fail(op: string, what: string): never {
  throw new AinftpError(op, what);
}

function checkPort(op: string, port: number, allowZero: boolean): void {
  if (!Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535)
    fail(op, `port ${port} is not ${allowZero ? "0 or " : ""}an integer in 1..65535`);
}

/** Hints for socket errors; `where` names the address involved. */
function socketHint(where: string, bind: boolean): (errno: number) => string | undefined {
  return (errno) => {
    switch (errno) {
      case EADDRINUSE:
        return `another process (or socket) uses ${where}: stop it or pick another port (ss -uapn shows who has it)`;
      case EADDRNOTAVAIL:
        return bind ? `${where.split(":")[0]} is not an address of this host (ip -4 addr shows them)` : undefined;
      case EACCES:
        return bind
          ? "ports below 1024 need root or CAP_NET_BIND_SERVICE"
          : `${where} is a broadcast address (needs SO_BROADCAST) or a firewall rule refuses it`;
      case EPERM:
        return bind ? undefined : `a firewall rule (nftables/iptables) drops traffic to ${where}`;
      case ENETUNREACH:
      case EHOSTUNREACH:
        return `no route to ${where}: check the interface address and routes (ip route get ${where.split(":")[0]})`;
      case EMSGSIZE:
        return bind
          ? undefined
          : "a GSO segment plus 28 bytes of IPv4/UDP headers exceeds the route's MTU: use segments of at most MTU - 28 bytes (the kernel will not fragment GSO segments)";
      case EAGAIN:
      case ENOBUFS:
        return "the socket send buffer stayed full for a second: raise sndbuf, or send less at once";
    }
    return undefined;
  };
}

// ---- received batches ------------------------------------------------------------------

/** Datagrams of one recvBatch: views into the endpoint's buffer, valid until
 * its next recvBatch. */
export class RecvBatch {
  /** Datagrams in this batch. */
  count = 0;
  /** How many of them were longer than slotSize (their view is cut). */
  truncated = 0;

  constructor(
    /** count * slotSize bytes of slots, datagram i at i * slotSize. */
    readonly buf: Uint8Array,
    readonly slotSize: number,
    /** Full length of each datagram (may exceed slotSize when truncated). */
    readonly lens: Uint32Array,
    /** Source address (be32) and port of each datagram. */
    readonly srcIpsBe: Uint32Array,
    readonly srcPorts: Uint16Array,
  ) {}

  /** The bytes of datagram i (at most slotSize). */
  datagram(i: number): Uint8Array {
    const at = i * this.slotSize;
    return this.buf.subarray(at, at + Math.min(this.lens[i], this.slotSize));
  }

  sourceAddr(i: number): string {
    return be32ToIpv4(this.srcIpsBe[i]);
  }

  sourcePort(i: number): number {
    return this.srcPorts[i];
  }

  *[Symbol.iterator](): IterableIterator<{ data: Uint8Array; addr: string; port: number }> {
    for (let i = 0; i < this.count; i++) yield { data: this.datagram(i), addr: this.sourceAddr(i), port: this.srcPorts[i] };
  }
}

// ---- the endpoint --------------------------------------------------------------------------

export interface UdpEndpointOptions {
  /** Receive / send buffer sizes in bytes (forced past net.core.*mem_max as
   * root). Default 32 MiB / 4 MiB: a round's burst must fit while we are not reading. */
  rcvbuf?: number;
  sndbuf?: number;
  /** Bytes per receive slot; longer datagrams are cut (and counted). Default
   * 9216: an ainftp packet at jumbo MTU. */
  slotSize?: number;
  /** Datagrams per recvBatch. Default 256. */
  maxBatch?: number;
}

export interface OutgoingDatagram {
  addr: string;
  port: number;
  data: Uint8Array;
}

export class UdpEndpoint implements Disposable {
  /** Address and port the socket is bound to (the real port when 0 was asked). */
  readonly address: string;
  readonly port: number;
  private fdValue: number;
  private readonly batch: RecvBatch;
  private readonly maxBatch: number;
  // staging for sendMany: grown on demand
  private stage = new Uint8Array(0);
  private stageIps = new Uint32Array(0);
  private stagePorts = new Uint16Array(0);
  private stageOffsets = new Uint32Array(0);
  private stageLens = new Uint32Array(0);
  // last destination parsed, since a round sends to the same few peers
  private lastAddr = "";
  private lastBe = 0;

  private constructor(fd: number, o: UdpEndpointOptions) {
    this.fdValue = fd;
    const local = udpLocal(fd);
    if (typeof local === "number") {
      udpClose(fd);
      check(local, "open UDP socket", "cannot read the bound address");
    }
    const { ipBe, port } = local as { ipBe: number; port: number };
    this.address = be32ToIpv4(ipBe);
    this.port = port;
    const slot = o.slotSize ?? 9216;
    this.maxBatch = o.maxBatch ?? 256;
    this.batch = new RecvBatch(
      new Uint8Array(slot * this.maxBatch), slot, new Uint32Array(this.maxBatch),
      new Uint32Array(this.maxBatch), new Uint16Array(this.maxBatch),
    );
  }

  /** A UDP socket bound to bindAddr:port (port 0: an ephemeral port, see .port). */
  static open(bindAddr = "0.0.0.0", port = 0, o: UdpEndpointOptions = {}): UdpEndpoint {
    const op = `open UDP ${bindAddr}:${port}`;
    checkPort(op, port, true);
    const slot = o.slotSize ?? 9216;
    const maxBatch = o.maxBatch ?? 256;
    if (!Number.isInteger(slot) || slot < 1 || slot > 65536) fail(op, `slotSize ${slot} is not in 1..65536`);
    if (!Number.isInteger(maxBatch) || maxBatch < 1 || maxBatch > 4096) fail(op, `maxBatch ${maxBatch} is not in 1..4096`);
    for (const [k, v] of [["rcvbuf", o.rcvbuf], ["sndbuf", o.sndbuf]] as const)
      if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 0x7fffffff)) fail(op, `${k} ${v} is not a byte count`);
    const ip = ipv4ToBe32(bindAddr);
    const fd = check(udpOpen(ip, port, o.rcvbuf ?? 32 << 20, o.sndbuf ?? 4 << 20), op, "cannot bind", socketHint(`${bindAddr}:${port}`, true));
    return new UdpEndpoint(fd, o);
  }

  get fd(): number {
    if (this.fdValue < 0) throw new AinftpError("UDP endpoint", "used after close()");
    return this.fdValue;
  }

  get closed(): boolean {
    return this.fdValue < 0;
  }

  private dst(addr: string): number {
    if (addr !== this.lastAddr) {
      this.lastBe = ipv4ToBe32(addr);
      this.lastAddr = addr;
    }
    return this.lastBe;
  }

  /**
   * Sends nsegs datagrams laid out back to back in buf — segSize bytes each,
   * the last lastSize bytes — to dstAddr:dstPort, by UDP GSO (up to 64
   * segments and 65507 bytes per message, several messages per syscall; one
   * message per datagram where the kernel refuses GSO, or always with
   * `plain`: for a receiver in generic XDP mode). Returns the number
   * sent: less than nsegs only if the send buffer stayed full for a second.
   */
  sendGso(dstAddr: string, dstPort: number, buf: Uint8Array, segSize: number, nsegs: number, lastSize = segSize, plain = false): number {
    const op = `send to ${dstAddr}:${dstPort}`;
    checkPort(op, dstPort, false);
    if (!Number.isInteger(segSize) || segSize < 1 || segSize > UDP_MAX_PAYLOAD)
      fail(op, `segment size ${segSize} is not in 1..${UDP_MAX_PAYLOAD}`);
    if (!Number.isInteger(nsegs) || nsegs < 1 || nsegs > 0xffffffff) fail(op, `segment count ${nsegs} is not a positive integer`);
    if (!Number.isInteger(lastSize) || lastSize < 1 || lastSize > segSize)
      fail(op, `last segment size ${lastSize} is not in 1..${segSize} (the segment size)`);
    const need = (nsegs - 1) * segSize + lastSize;
    if (buf.length < need)
      fail(op, `buffer holds ${buf.length} bytes, ${nsegs} segments of ${segSize} (last ${lastSize}) need ${need}`);
    const rc = (plain ? udpSendPlain : udpSendGso)(this.fd, this.dst(dstAddr), dstPort, buf, segSize, nsegs, lastSize);
    return check(rc, op, "sendmsg failed", socketHint(`${dstAddr}:${dstPort}`, false));
  }

  /** Sends each datagram to its own destination, by sendmmsg (256 per
   * syscall); the data are copied into one staging buffer. Returns the
   * number sent (all, unless the send buffer stayed full for a second). */
  sendMany(datagrams: readonly OutgoingDatagram[]): number {
    const n = datagrams.length;
    if (n === 0) return 0;
    this.ensureStage(n, datagrams.reduce((s, d) => s + d.data.length, 0));
    let off = 0;
    for (let i = 0; i < n; i++) {
      const d = datagrams[i];
      const op = `send to ${d.addr}:${d.port}`;
      checkPort(op, d.port, false);
      if (d.data.length > UDP_MAX_PAYLOAD) fail(op, `datagram ${i} is ${d.data.length} bytes, more than ${UDP_MAX_PAYLOAD}`);
      this.stageIps[i] = this.dst(d.addr);
      this.stagePorts[i] = d.port;
      this.stageOffsets[i] = off;
      this.stageLens[i] = d.data.length;
      this.stage.set(d.data, off);
      off += d.data.length;
    }
    const rc = udpSendMmsg(this.fd, this.stageIps, this.stagePorts, this.stage, this.stageOffsets, this.stageLens, n);
    if (rc >= 0) return rc;
    const first = datagrams[0];
    const where = datagrams.every((d) => d.addr === first.addr) ? first.addr : "one of the destinations";
    return check(rc, `send ${n} datagrams`, "sendmmsg failed", socketHint(`${where}:${first.port}`, false));
  }

  private ensureStage(n: number, bytes: number): void {
    if (this.stage.length < bytes) this.stage = new Uint8Array(Math.max(bytes, 2 * this.stage.length));
    if (this.stageIps.length < n) {
      const cap = Math.max(n, 2 * this.stageIps.length);
      this.stageIps = new Uint32Array(cap);
      this.stagePorts = new Uint16Array(cap);
      this.stageOffsets = new Uint32Array(cap);
      this.stageLens = new Uint32Array(cap);
    }
  }

  /**
   * Waits up to timeoutMs (0: only what is queued) and reads up to maxBatch
   * datagrams. The result is reused: its views hold until the next call.
   */
  recvBatch(timeoutMs = 0): RecvBatch {
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0x7fffffff)
      fail("receive", `timeout ${timeoutMs} ms is not a non-negative integer (a blocking wait would stall the event loop)`);
    const b = this.batch;
    const rc = udpRecvBatch(this.fd, b.buf, b.slotSize, this.maxBatch, timeoutMs, b.lens, b.srcIpsBe, b.srcPorts);
    b.count = check(rc, `receive on ${this.address}:${this.port}`, "recvmmsg failed");
    let t = 0;
    for (let i = 0; i < b.count; i++) if (b.lens[i] > b.slotSize) t++;
    b.truncated = t;
    return b;
  }

  /** Buffer sizes, queued bytes and receive drops of the socket. */
  stats(): UdpSocketStats {
    const s = udpStats(this.fd);
    if (typeof s === "number") check(s, `stats of ${this.address}:${this.port}`, "SO_MEMINFO failed");
    return s as UdpSocketStats;
  }

  /** "works" once a GSO send went through, "off" after the kernel refused it
   * (or setGso(false)), "unknown" before the first multi-segment send. */
  get gso(): "unknown" | "works" | "off" {
    const s = check(udpGsoState(this.fd), "UDP endpoint", "gso state");
    return s === GSO_WORKS ? "works" : s === GSO_OFF ? "off" : "unknown";
  }

  /** setGso(false): one message per datagram (sendmmsg only); true: try GSO again. */
  setGso(on: boolean): void {
    check(udpSetGso(this.fd, on), "UDP endpoint", "set gso");
  }

  /** setsockopt with an int value (e.g. SOL_SOCKET/SO_BROADCAST, IPPROTO_IP/IP_TOS). */
  setOption(level: number, name: number, value: number): void {
    check(udpSetOption(this.fd, level, name, value), `setsockopt ${level}/${name}`, "failed");
  }

  close(): void {
    if (this.fdValue < 0) return;
    const fd = this.fdValue;
    this.fdValue = -1;
    udpClose(fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Syscall and datagram counts of every endpoint in this process since the last reset. */
export function syscallCounters(): UdpCounters {
  return udpCounters();
}

export function resetSyscallCounters(): void {
  udpCountersReset();
}
