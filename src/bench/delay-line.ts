// A delay line between two interfaces, for the straggler row of `ainftp
// bench` (this kernel has no sch_netem, nor sch_fq for EDT): frames read
// from A (AF_PACKET) are sent on B `delayMs` later, in order; frames from B
// go to A at once. PACKET_VNET_HDR on both sockets carries each frame's
// offload state (GSO size, partial checksum) across, so TCP's 64 KB TSO
// frames and ainftp's UDP GSO batches pass whole, as the stack made them.
// Runs as `ainftp bench node delay-line` inside the bridge's namespace
// (src/bench/straggler.ts starts it); ends when its parent is gone.
import { writeFileSync } from "node:fs";
import { ptr } from "bun:ffi";
import { AinftpError } from "../errors.ts";
import { ifNameToIndex, socketCalls as libc } from "../../native/libc.ts";

const AF_PACKET = 17;
const SOCK_RAW = 3;
const ETH_P_ALL_BE = 0x0300;
const MSG_DONTWAIT = 0x40;
const SOL_PACKET = 263;
const SOL_SOCKET = 1;
const PACKET_VNET_HDR = 15;
const PACKET_IGNORE_OUTGOING = 23;
const SO_RCVBUFFORCE = 33;
const SO_SNDBUFFORCE = 32;
const POLLIN = 1;

export interface DelayLineOptions {
  /** Frames from this interface are delayed … */
  from: string;
  /** … on their way out of this one; the other direction passes at once. */
  to: string;
  delayMs: number;
  /** Counters as JSON, rewritten every 100 ms. */
  statsFile?: string;
  /** Exit when this process is gone. */
  parent?: number;
  /** Called once both sockets are bound. */
  onReady?: () => void;
}

export interface DelayLineStats {
  delayed: number;
  passed: number;
  failed: number;
  queued: number;
  bytes: number;
}

function packetSocket(name: string): number {
  const index = ifNameToIndex(name);
  if (!index) throw new AinftpError("delay line", `no interface ${name} in this namespace`);
  const fd = libc.socket(AF_PACKET, SOCK_RAW, ETH_P_ALL_BE);
  if (fd < 0) throw new AinftpError("delay line", "socket(AF_PACKET) failed", { hint: "needs root (CAP_NET_RAW)" });
  const one = new Int32Array([1]);
  const big = new Int32Array([32 << 20]);
  // vnet header before bind: the socket's frames carry their offload state from the first one on
  if (libc.setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, ptr(one), 4) !== 0) throw new AinftpError("delay line", "PACKET_VNET_HDR failed");
  libc.setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, ptr(one), 4);
  libc.setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, ptr(big), 4);
  libc.setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, ptr(big), 4);
  const sll = new Uint8Array(20);
  const v = new DataView(sll.buffer);
  v.setUint16(0, AF_PACKET, true);
  v.setUint16(2, ETH_P_ALL_BE, true);
  v.setInt32(4, index, true);
  if (libc.bind(fd, ptr(sll), 20) !== 0) throw new AinftpError("delay line", `bind to ${name} failed`);
  return fd;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Runs until the parent or an interface is gone (never returns otherwise). */
export function runDelayLine(o: DelayLineOptions): void {
  const a = packetSocket(o.from);
  const b = packetSocket(o.to);
  const buf = new Uint8Array(65536 + 256);
  const fds = new Uint8Array(16);
  const pv = new DataView(fds.buffer);
  pv.setInt32(0, a, true);
  pv.setInt16(4, POLLIN, true);
  pv.setInt32(8, b, true);
  pv.setInt16(12, POLLIN, true);
  const queue: { due: number; frame: Uint8Array }[] = [];
  let head = 0;
  const st: DelayLineStats = { delayed: 0, passed: 0, failed: 0, queued: 0, bytes: 0 };
  let lastStats = 0;
  o.onReady?.();
  for (;;) {
    for (;;) {
      const n = Number(libc.recv(a, ptr(buf), buf.length, MSG_DONTWAIT));
      if (n <= 0) break;
      queue.push({ due: performance.now() + o.delayMs, frame: buf.slice(0, n) });
      st.delayed++;
      st.bytes += n;
    }
    for (;;) {
      const n = Number(libc.recv(b, ptr(buf), buf.length, MSG_DONTWAIT));
      if (n <= 0) break;
      if (Number(libc.send(a, ptr(buf), n, 0)) === n) st.passed++;
      else st.failed++;
    }
    const now = performance.now();
    while (head < queue.length && queue[head].due <= now) {
      const f = queue[head++].frame;
      if (Number(libc.send(b, ptr(f), f.length, 0)) !== f.length) st.failed++;
    }
    if (head > 4096 && head * 2 > queue.length) queue.splice(0, head), (head = 0);
    if (now - lastStats >= 100) {
      lastStats = now;
      if (o.parent && !alive(o.parent)) break;
      if (!ifNameToIndex(o.from) || !ifNameToIndex(o.to)) break;
      st.queued = queue.length - head;
      if (o.statsFile) writeFileSync(o.statsFile, JSON.stringify(st));
    }
    const wait = head < queue.length ? Math.max(0, Math.ceil(queue[head].due - performance.now())) : 100;
    libc.poll(ptr(fds), 2, Math.min(wait, 100));
  }
  libc.close(a);
  libc.close(b);
}
