// The plain-TCP baseline of `ainftp bench`: one rank of an f32 ring
// all-reduce (reduce-scatter + all-gather, pipelined, summing in C: see
// native/tcpring.c) over TCP connections to its ring neighbours. It is what a
// careful engineer writes without a library, so ainftp is compared with an
// honest peer, not a straw man. Gradients are the swarm's synthetic ones
// (native/collective.c ainftp_synth); every timed round is checked against the
// sum computed locally in f64.
import { coll } from "../../native/collective.ts";
import {
  tcpAccept, tcpClose, tcpConnect, tcpListen, tcpRecvAll, tcpRingAllreduce, tcpRingBarrier, tcpRingCounters,
  tcpRingSetSpin, tcpSendAll, tcpSetup, type RingStop, type TcpRingCounters,
} from "../../native/tcpring.ts";
import { AinftpError } from "../errors.ts";
import { be32ToIpv4, ipv4ToBe32 } from "../transport.ts";
import { parseSize } from "../units.ts";
import { cpuMs, markTimed } from "./timed.ts";
import { PremadeRounds } from "./premade.ts";

/** Port every rank listens on unless its peer entry says addr:port. */
export const TCP_RING_PORT = 47200;
/** The ring forwards a step's data in pieces of at least this many bytes. */
export const DEFAULT_CHUNK_BYTES = 64 * 1024;

export interface TcpRingOptions {
  /** Ranks in ring order: "10.0.0.1" (listening on `port`) or "10.0.0.1:47201". */
  peers: string[];
  rank: number;
  /** Default TCP_RING_PORT. */
  port?: number;
  /** float32 values per rank. */
  elements: number;
  /** Timed rounds. */
  rounds: number;
  /** Untimed rounds first (connection warm-up, first touch); default 3, as the Gloo and MPI baselines. */
  warmup?: number;
  /** Seed of the synthetic gradients (every rank must use the same); default 1. */
  seed?: number;
  chunkBytes?: number;
  /** How long to wait for the neighbours to listen and connect; default 30 s. */
  connectTimeoutMs?: number;
  /** A round fails when nothing moves for this long; default 10 s. */
  idleTimeoutMs?: number;
  /** No barrier before the timed rounds (as a trainer calls all-reduce); default false. */
  backToBack?: boolean;
  /** How long a barrier waits for the slowest rank (which may still be verifying); default 60 s. */
  barrierTimeoutMs?: number;
  /** Check every timed round against the f64 reference sum; default true. */
  verify?: boolean;
  /** Largest relative L2 error accepted; default 1e-5 (f32 sums in another order differ by ~1e-7). */
  tolerance?: number;
  /** TCP_NODELAY on both connections; default true. */
  nodelay?: boolean;
  /**
   * Wait for the sockets by spinning with sched_yield() (as Open MPI's
   * progress loop does) instead of sleeping in poll(); default false: a plain
   * TCP program sleeps, and so does ainftp.
   */
  spin?: boolean;
  /** SO_SNDBUF / SO_RCVBUF when > 0; default 0: the kernel's autotuning. */
  sndbuf?: number;
  rcvbuf?: number;
}

export interface Quantiles {
  median: number;
  p10: number;
  p90: number;
  p99: number;
}

export interface TcpRingReport {
  system: "tcp-ring";
  rank: number;
  peers: number;
  elements: number;
  bytes: number;
  rounds: number;
  warmup: number;
  chunk_bytes: number;
  /** How the rank waited for its sockets. */
  wait: "poll" | "spin";
  /** This rank's all-reduce time per timed round (after a barrier). */
  round_ms: Quantiles;
  round_times_ms: number[];
  /** Per timed round: this process's CPU inside its all-reduce (ms). */
  round_cpu_ms: number[];
  /** Every timed round within tolerance of the reference sum (false when not verified). */
  verified: boolean;
  rel_l2_error_max: number | null;
  tolerance: number;
  /** Payload bytes through send()/recv() per timed round (2(N-1)/N of the vector for a ring). */
  bytes_written_per_round: number;
  bytes_read_per_round: number;
  send_calls_per_round: number;
  recv_calls_per_round: number;
  polls_per_round: number;
  yields_per_round: number;
  connect_ms: number;
}

/** Linear interpolation between closest ranks (numpy's default, as bench/baselines). */
export function percentile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export function quantiles(xs: number[]): Quantiles {
  const s = [...xs].sort((a, b) => a - b);
  return { median: percentile(s, 0.5), p10: percentile(s, 0.1), p90: percentile(s, 0.9), p99: percentile(s, 0.99) };
}

// errno names src/errors.ts does not know
const SOCKET_ERRNO: Record<number, string> = { 32: "EPIPE", 71: "EPROTO", 104: "ECONNRESET", 110: "ETIMEDOUT" };
const ETIMEDOUT = 110;

function sockError(op: string, what: string, rc: number, hint?: string): AinftpError {
  const name = SOCKET_ERRNO[-rc];
  return name ? new AinftpError(op, `${what} (${name})`, { hint }) : new AinftpError(op, what, { errno: -rc, hint });
}

export interface Endpoint {
  addr: string;
  ipBe: number;
  port: number;
}

/** "10.0.0.1" or "10.0.0.1:47201" → address and port. */
export function parseEndpoint(text: string, defaultPort: number): Endpoint {
  const m = /^([^:]+)(?::(\d+))?$/.exec(text.trim());
  if (!m) throw new AinftpError("tcp-ring", `peer "${text}" is not ADDR or ADDR:PORT`);
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new AinftpError("tcp-ring", `peer "${text}": port ${port} is not in 1..65535`);
  return { addr: m[1], ipBe: ipv4ToBe32(m[1]), port };
}

// hello: magic, version, rank, ranks, elements (u32 each)
const HELLO_MAGIC = 0x474e5254; // "TRNG"
const HELLO_VERSION = 1;
const HELLO_WORDS = 5;

/** The two connections of one rank: to the next rank and from the previous one. */
export class TcpRing implements Disposable {
  private closed = false;
  private constructor(
    readonly rank: number,
    readonly ranks: number,
    readonly elements: number,
    private readonly nextFd: number,
    private readonly prevFd: number,
    private readonly scratch: Float32Array,
    private readonly chunkBytes: number,
    private readonly idleTimeoutMs: number,
    private readonly barrierTimeoutMs: number,
    private readonly peers: Endpoint[],
  ) {}

  /**
   * Listens, connects to the next rank (retrying until it listens), accepts
   * the previous one, and checks both agree on rank, ring size and vector
   * length. A ring of one rank has no connections.
   */
  static open(o: TcpRingOptions): TcpRing {
    const port = o.port ?? TCP_RING_PORT;
    const peers = o.peers.map((p) => parseEndpoint(p, port));
    const N = peers.length;
    const { rank, elements } = o;
    if (N < 1) throw new AinftpError("tcp-ring", "no peers");
    if (!Number.isInteger(rank) || rank < 0 || rank >= N) throw new AinftpError("tcp-ring", `rank ${rank} is not in 0..${N - 1}`);
    if (!Number.isInteger(elements) || elements < 1 || elements > 0xffffffff) throw new AinftpError("tcp-ring", `elements ${elements} is not in 1..2^32-1`);
    const chunkBytes = o.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!Number.isInteger(chunkBytes) || chunkBytes < 1) throw new AinftpError("tcp-ring", `chunk ${chunkBytes} is not a positive byte count`);
    const idle = o.idleTimeoutMs ?? 10_000;
    const patience = o.barrierTimeoutMs ?? 60_000;
    const scratch = new Float32Array(Math.ceil(elements / N));
    if (N === 1) return new TcpRing(rank, 1, elements, -1, -1, scratch, chunkBytes, idle, patience, peers);

    const timeout = o.connectTimeoutMs ?? 30_000;
    const deadline = performance.now() + timeout;
    const left = () => Math.max(1, Math.round(deadline - performance.now()));
    const me = peers[rank];
    const next = peers[(rank + 1) % N];
    const prevRank = (rank + N - 1) % N;
    const fds: number[] = [];
    const open = (fd: number) => (fds.push(fd), fd);
    try {
      const lfd = tcpListen(me.ipBe, me.port);
      if (lfd < 0)
        throw sockError("tcp-ring listen", `cannot listen on ${me.addr}:${me.port}`, lfd,
          -lfd === 99 ? `rank ${rank} is ${me.addr} in --peers, but no interface here has that address: check --rank` :
          -lfd === 98 ? `port ${me.port} is taken: pick another with --port` : undefined);
      open(lfd);
      const nextFd = tcpConnect(next.ipBe, next.port, left(), 20);
      if (nextFd < 0)
        throw sockError("tcp-ring connect", `rank ${(rank + 1) % N} at ${next.addr}:${next.port} did not accept a connection within ${timeout} ms`, nextFd,
          "start every rank within the timeout, with the same --peers and --port");
      open(nextFd);
      checkRc(tcpSetup(nextFd, o.nodelay ?? true, o.sndbuf ?? 0, o.rcvbuf ?? 0), "tcp-ring setup", "TCP options of the connection to the next rank");
      const hello = new Uint32Array([HELLO_MAGIC, HELLO_VERSION, rank, N, elements]);
      const helloBytes = new Uint8Array(hello.buffer);
      const rc = tcpSendAll(nextFd, helloBytes, left());
      if (rc < 0) throw sockError("tcp-ring hello", `sending the greeting to rank ${(rank + 1) % N}`, rc);

      const acc = tcpAccept(lfd, left());
      if (typeof acc === "number")
        throw sockError("tcp-ring accept", `rank ${prevRank} (${peers[prevRank].addr}) did not connect within ${timeout} ms`, acc,
          "start every rank within the timeout, with the same --peers and --port");
      const prevFd = open(acc.fd);
      checkRc(tcpSetup(prevFd, o.nodelay ?? true, o.sndbuf ?? 0, o.rcvbuf ?? 0), "tcp-ring setup", "TCP options of the connection from the previous rank");
      expectHello(prevFd, prevRank, N, elements, be32ToIpv4(acc.peerIpBe), left());
      const r2 = tcpSendAll(prevFd, helloBytes, left());
      if (r2 < 0) throw sockError("tcp-ring hello", `answering rank ${prevRank}`, r2);
      expectHello(nextFd, (rank + 1) % N, N, elements, next.addr, left());
      tcpClose(lfd);
      fds.splice(fds.indexOf(lfd), 1);
      return new TcpRing(rank, N, elements, nextFd, prevFd, scratch, chunkBytes, idle, patience, peers);
    } catch (e) {
      for (const fd of fds) tcpClose(fd);
      throw e;
    }
  }

  /** Returns when every rank has called it. */
  barrier(): void {
    if (this.ranks < 2) return;
    const rc = tcpRingBarrier(this.nextFd, this.prevFd, this.rank, this.ranks, this.barrierTimeoutMs);
    if (rc < 0) throw sockError("tcp-ring barrier", "waiting for every rank", rc, this.deadHint());
  }

  /** Sums x over every rank, in place. */
  allreduce(x: Float32Array): void {
    if (x.length !== this.elements) throw new AinftpError("tcp-ring", `vector of ${x.length} values, the ring agreed on ${this.elements}`);
    if (this.ranks < 2) return;
    const { rc, stop } = tcpRingAllreduce(this.nextFd, this.prevFd, this.rank, this.ranks, x, this.scratch, this.chunkBytes, this.idleTimeoutMs);
    if (rc < 0) throw sockError("tcp-ring allreduce", this.describeStop(stop, rc), rc, this.deadHint());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.nextFd >= 0) tcpClose(this.nextFd);
    if (this.prevFd >= 0) tcpClose(this.prevFd);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  private describeStop(stop: RingStop, rc: number): string {
    const steps = 2 * (this.ranks - 1);
    const who = stop.side === "send" ? `sending to rank ${(this.rank + 1) % this.ranks}` : `receiving from rank ${(this.rank + this.ranks - 1) % this.ranks}`;
    const idle = -rc === ETIMEDOUT ? `, nothing moved for ${this.idleTimeoutMs} ms` : "";
    return `${who} failed at send step ${stop.sendStep}/${steps}, receive step ${stop.recvStep}/${steps}${idle}`;
  }

  private deadHint(): string {
    return `a rank exited or hangs: look at the other ranks' errors (ring ${this.peers.map((p) => p.addr).join(" → ")})`;
  }
}

function checkRc(rc: number, op: string, what: string): void {
  if (rc < 0) throw sockError(op, what, rc);
}

function expectHello(fd: number, rank: number, ranks: number, elements: number, from: string, timeoutMs: number): void {
  const got = new Uint32Array(HELLO_WORDS);
  const rc = tcpRecvAll(fd, new Uint8Array(got.buffer), timeoutMs);
  if (rc < 0) throw sockError("tcp-ring hello", `no greeting from ${from} (expected rank ${rank})`, rc);
  if (got[0] !== HELLO_MAGIC || got[1] !== HELLO_VERSION)
    throw new AinftpError("tcp-ring hello", `${from} is not a tcp-ring rank of this version (magic ${got[0].toString(16)}, version ${got[1]})`);
  if (got[2] !== rank || got[3] !== ranks || got[4] !== elements)
    throw new AinftpError("tcp-ring hello",
      `${from} says it is rank ${got[2]} of ${got[3]} with ${got[4]} values; expected rank ${rank} of ${ranks} with ${elements}`,
      { hint: "give every rank the same --peers (same order) and --size" });
}

/**
 * One rank's run: connect the ring, warmup + timed rounds (each: fresh
 * synthetic gradient, barrier, the timed all-reduce, then verification),
 * close. A round's time here is this rank's; the bench takes the slowest.
 */
export function runTcpRing(o: TcpRingOptions): TcpRingReport {
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new AinftpError("tcp-ring", `rounds ${o.rounds} is not a positive integer`);
  const warmup = o.warmup ?? 3;
  const seed = o.seed ?? 1;
  const verify = o.verify ?? true;
  const tolerance = o.tolerance ?? 1e-5;
  const n = o.elements;
  tcpRingSetSpin(o.spin ?? false);
  const t0 = performance.now();
  using ring = TcpRing.open(o);
  const connectMs = performance.now() - t0;
  const N = ring.ranks;
  const x = new Float32Array(n);
  // back to back, the timed rounds' gradients are made before the warm-up
  // rounds line the ranks up, and their checks wait until after the timed
  // rounds (premade.ts); barrier-separated, as before (fresh, checked between)
  const premade = PremadeRounds.makeSync(seed, o.rank, n, o.backToBack ? o.rounds : 0, 1);
  for (let w = 0; w < warmup; w++) {
    coll.ainftp_synth(seed, o.rank, 0xffff0000 + w, 1, x, n);
    ring.barrier();
    ring.allreduce(x);
  }
  markTimed(o.rank);
  const times: number[] = [];
  const cpu: number[] = [];
  let maxErr = 0;
  const totals = { sendCalls: 0, recvCalls: 0, polls: 0, yields: 0, bytesSent: 0, bytesReceived: 0 } satisfies TcpRingCounters;
  for (let r = 0; r < o.rounds; r++) {
    const g = premade.round(r) ?? x;
    if (g === x) coll.ainftp_synth(seed, o.rank, r, 1, x, n);
    if (!o.backToBack) ring.barrier();
    const c0 = tcpRingCounters();
    const t = performance.now();
    const cpu0 = process.cpuUsage();
    ring.allreduce(g);
    times.push(performance.now() - t);
    cpu.push(cpuMs(process.cpuUsage(cpu0)));
    const c1 = tcpRingCounters();
    for (const k of Object.keys(totals) as (keyof TcpRingCounters)[]) totals[k] += c1[k] - c0[k];
    // and a barrier after, as ainftp's swarm has: no rank verifies while another still moves data
    // (the bench's CPU window would charge the verification to the round)
    if (!o.backToBack && verify) ring.barrier();
    if (verify && g === x) maxErr = Math.max(maxErr, coll.ainftp_synth_rel_l2(seed, N, r, 1, x, n));
  }
  for (let r = 0; r < premade.made; r++) {
    if (verify) maxErr = Math.max(maxErr, coll.ainftp_synth_rel_l2(seed, N, r, 1, premade.round(r)!, n));
    premade.release(r);
  }
  const per = (k: keyof TcpRingCounters) => totals[k] / o.rounds;
  return {
    system: "tcp-ring", rank: o.rank, peers: N, elements: n, bytes: n * 4, rounds: o.rounds, warmup,
    chunk_bytes: o.chunkBytes ?? DEFAULT_CHUNK_BYTES,
    wait: o.spin ? "spin" : "poll",
    round_ms: quantiles(times),
    round_times_ms: times.map((t) => +t.toFixed(3)),
    round_cpu_ms: cpu.map((t) => +t.toFixed(3)),
    verified: verify && maxErr <= tolerance,
    rel_l2_error_max: verify ? maxErr : null,
    tolerance,
    bytes_written_per_round: per("bytesSent"),
    bytes_read_per_round: per("bytesReceived"),
    send_calls_per_round: per("sendCalls"),
    recv_calls_per_round: per("recvCalls"),
    polls_per_round: per("polls"),
    yields_per_round: per("yields"),
    connect_ms: +connectMs.toFixed(1),
  };
}

// ---- one rank's command line ----------------------------------------------------------------------

/** Usage of one ring rank: `bun bench/tcp-node.ts …` and `ainftp bench node tcp -- …` take these arguments. */
export const TCP_NODE_USAGE =
  "usage: bun bench/tcp-node.ts --peers A,B,… --rank R [--port P] --size 16MiB --rounds N [--warmup W] [--seed S] " +
  "[--chunk 64KiB] [--connect-timeout SECONDS] [--spin] [--back-to-back] [--no-verify] [--json]";

/** The arguments of one ring rank (bench/tcp-node.ts, `ainftp bench node tcp -- …`). */
export function parseTcpNodeArgs(argv: string[]): TcpRingOptions & { json: boolean } {
  const o: TcpRingOptions & { json: boolean } = { peers: [], rank: -1, port: TCP_RING_PORT, elements: 0, rounds: 20, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new AinftpError("tcp-node", `${a} needs a value`, { hint: TCP_NODE_USAGE });
      return v;
    };
    const int = (v: string) => {
      if (!/^\d+$/.test(v)) throw new AinftpError("tcp-node", `${a}: not a whole number: ${v}`);
      return Number(v);
    };
    switch (a) {
      case "--peers": o.peers = val().split(",").filter(Boolean); break;
      case "--rank": o.rank = int(val()); break;
      case "--port": o.port = int(val()); break;
      case "--size": {
        const bytes = parseSize(val(), "--size");
        if (bytes % 4) throw new AinftpError("tcp-node", `--size ${bytes} bytes is not a whole number of float32s`);
        o.elements = bytes / 4;
        break;
      }
      case "--rounds": o.rounds = int(val()); break;
      case "--warmup": o.warmup = int(val()); break;
      case "--seed": o.seed = int(val()); break;
      case "--chunk": o.chunkBytes = parseSize(val(), "--chunk"); break;
      case "--connect-timeout": o.connectTimeoutMs = int(val()) * 1000; break;
      case "--spin": o.spin = true; break;
      case "--back-to-back": o.backToBack = true; break;
      case "--no-verify": o.verify = false; break;
      case "--json": o.json = true; break;
      case "-h": case "--help": process.stdout.write(`${TCP_NODE_USAGE}\n`); process.exit(0);
      default: throw new AinftpError("tcp-node", `unknown argument ${a}`, { hint: TCP_NODE_USAGE });
    }
  }
  if (!o.peers.length || o.rank < 0 || !o.elements) throw new AinftpError("tcp-node", "--peers, --rank and --size are required", { hint: TCP_NODE_USAGE });
  return o;
}
