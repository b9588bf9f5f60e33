// This host's side of the job: the state every room of the communicator
// shares (identity, ports, the program's config, the stats, what carries
// over from round to round), and the few moves they all make (send a
// control packet, set the config, move the window, borrow a buffer).
import type { Pointer } from "bun:ffi";
import type { JobConfig } from "../abi.ts";
import type { XskSocket } from "../xsk.ts";
import { encodeControl, HDR } from "./control.ts";
import { CTRL_HELLO, MAC_BYTES, payloadBytes, versionOfBits, type BitWidth } from "../abi.ts";
import { sealPackets } from "../../native/mac.ts";
import { ControlGuard } from "../control-guard.ts";
import { TUNING, zeroStats, type CollectiveStats, type ResolvedOptions } from "./options.ts";
import type { Clock, Datagrams, EventRingPort, ReflexPort } from "./ports.ts";
import type { Plan } from "./round-state.ts";
import type { RobustPolicy } from "./robust-policy.ts";
import type { SentryPolicy } from "./sentry-policy.ts";
import { RttEstimator } from "./rtt.ts";
import { EgressPace } from "./pace.ts";
import type { Prediction } from "./speculate.ts";

/** A round's results we own, kept for members that fall behind (recovery.ts). */
export interface CachedResults {
  round: number;
  buf: Uint8Array;
  at: Int32Array;
  used: number;
}

/** Messages for rounds we have not started: by round, then sender, then piece. */
export type EarlyPieces<T> = Map<number, Map<number, Map<number, T>>>;

export class Host {
  readonly rank: number;
  readonly peers: readonly string[];
  readonly size: number;
  readonly port: number;
  readonly job: number;
  /** Bits per value on the wire (16, 8, 4), and its data packets' version byte. */
  readonly bits: BitWidth;
  readonly version: number;
  /** The randomized Hadamard transform runs before quantizing (TUNING.RHT_BITS). */
  readonly rht: boolean;
  /** Values per packet: the program's chunk_elems at 16 bits, twice that at
   * 8 and 4 (the acc entry's 16-bit lanes hold two bytes per value). */
  readonly chunkElems: number;
  /** Chunks one round carries (the maps' size). */
  readonly capacity: number;
  /** Bytes of one data packet (header and a full chunk): the packet stride. */
  readonly seg: number;
  readonly stats: CollectiveStats = zeroStats();
  /** Checks, authenticates and binds every control frame; counts refusals (issue 16). */
  readonly guard: ControlGuard;
  /** The data plane's MAC: the key and what it covers (null: none). */
  readonly dataAuth: { key: Uint8Array; full: boolean } | null = null;
  /** The program's config as we last wrote it. */
  cfg: JobConfig;
  readonly accBase: Pointer;
  readonly resBase: Pointer;
  readonly ring: EventRingPort;
  /** Result packets of the batch being finished; chunk numbers of a batch. */
  readonly resPkts: Uint8Array;
  readonly chunkList: Uint32Array;
  /** Every rank but ours, and their mask. */
  readonly others: readonly number[];
  readonly othersMask: bigint;
  /** The round base our program had before this job: every HELLO carries
   * it (also replies sent after our handshake), so that every member
   * computes the same first round from the same values. */
  readonly helloBase: number;
  /** Our program runs in generic XDP mode: every HELLO asks the peers to
   * send us one frame per datagram (HELLO_PLAIN), never a GSO burst. */
  plainFrames = false;

  // ---- carried from round to round ----
  nextRound = 0;
  /** Round-trips of our contributions: the retransmission timer and RACK (rtt.ts). */
  readonly rtt = new RttEstimator();
  /** Our egress rate, and the window's cap from it (pace.ts). */
  readonly pace = new EgressPace();
  /** Data bytes we sent (contributions and results, copies included). */
  dataBytes = 0;
  /** The next round's leader: named by the last plan (all agree on it). */
  leaderNext = 0;
  /** Lateness per member, as the last plan left it (see TUNING.LATE_SLOW). */
  lateness: Uint8Array = new Uint8Array(0);
  /** Recent round times (ms), for the deadline. */
  readonly roundTimes: number[] = [];
  /** Ranks that left, with the first round each did not complete. */
  readonly left = new Map<number, number>();
  /** Answers to our CTRL_STATUS_REQ: owner rank → mask of ranks it lacks. */
  readonly statusAnswers = new Map<number, bigint>();
  /** Exponents, and plans (EXPS_MAX pieces), that arrived for rounds we have not started. */
  readonly earlyExps: EarlyPieces<Int8Array> = new Map();
  readonly earlyPlans: EarlyPieces<Uint8Array> = new Map();
  /** Per member: the round it last asked us for results of, while we were
   * at least LAG_ROUNDS past it, and when: a member behind (exchange.ts
   * leaderTurn waits for it). */
  readonly behind = new Map<number, { round: number; at: number }>();
  /** The members the swarm held dead when last looked, and the round in
   * which one more was first seen dead (round.ts noteDeaths). */
  deaths: { mask: bigint; round: number } | null = null;
  /** Per member: when we last answered its HELLO with a full-size one
   * (handshake.ts fullAnswer: at most one per greeting interval). */
  fullAnsweredAt: Float64Array;
  /** Per array length (chunks): the last round's plan, which predicts the
   * next round's scale (speculate.ts). */
  readonly predictions = new Map<number, Prediction>();
  /** Partial rounds' plans we led, for passive members that fall behind
   * and ask after we moved on (the last CACHE_ROUNDS). */
  readonly planCache = new Map<number, Plan>();
  /** Per round (the last recovery.ts cacheDepth): our result packets, one buffer
   * reused round after round, and where each chunk's packet sits in it. */
  readonly resultRing: CachedResults[] = [];

  // ---- the owner's policies and the rx path (null: off) ----
  xsk: XskSocket | null = null;
  sentry: SentryPolicy | null = null;
  robust: RobustPolicy | null = null;

  // ---- the swarm's view (src/swarm.ts keeps them current) ----
  /** Members a leader waits for: bit r set = rank r is alive and not down-ranked. */
  fitMask = ~0n;
  /** Members alive (or merely suspected), slow or not: a barrier waits for them. */
  liveMask = ~0n;
  onMember: ((rank: number, payload: Uint8Array) => void) | null = null;
  describeMember: ((rank: number) => string | null) | null = null;
  /** Per member: rounds completed with it, and rounds it was left out of. */
  readonly roundsContributed: number[];
  readonly roundsMissed: number[];

  closed = false;
  inRound = false;
  lastYield: number;
  /** The last round in which RACK sent a contribution again here
   * (recovery.ts lossSeen: owners name the members their slots lack only
   * under loss). */
  lossRound = -Infinity;
  private buffers = new Map<string, Uint8Array>();
  private ctrlBuf = new Uint8Array(HDR + 65536);

  constructor(
    readonly o: ResolvedOptions,
    readonly clock: Clock,
    readonly net: Datagrams,
    readonly maps: ReflexPort,
    port: number,
  ) {
    this.rank = o.rank;
    this.peers = o.peers;
    this.size = o.peers.length;
    this.fullAnsweredAt = new Float64Array(this.size).fill(-Infinity);
    this.port = port;
    this.cfg = maps.config();
    this.helloBase = this.cfg.roundBase;
    this.job = o.job ?? this.cfg.jobId;
    this.bits = o.bits;
    this.version = versionOfBits(o.bits);
    this.rht = TUNING.RHT_BITS.includes(o.bits);
    this.chunkElems = this.cfg.chunkElems * (o.bits === 16 ? 1 : 2);
    this.capacity = maps.chunks;
    this.guard = new ControlGuard({ job: this.job, peers: this.peers, key: o.key ?? null, helloKind: CTRL_HELLO });
    const auth = o.key ? (o.auth ?? "header") : "off";
    if (o.key && auth !== "off") this.dataAuth = { key: o.key, full: auth === "full" };
    // a contribution or result under auth ends with its MAC
    this.seg = HDR + payloadBytes(this.bits, this.chunkElems) + (this.dataAuth ? MAC_BYTES : 0);
    this.ring = maps.events();
    while (this.ring.pollRaw(0) > 0); // events a previous job left behind
    this.roundsContributed = new Array(this.size).fill(0);
    this.roundsMissed = new Array(this.size).fill(0);
    this.accBase = maps.accBase();
    this.resBase = maps.resultsBase();
    this.resPkts = new Uint8Array(this.seg * this.capacity);
    this.chunkList = new Uint32Array(this.capacity);
    this.others = [...Array(this.size).keys()].filter((r) => r !== this.rank);
    let m = 0n;
    for (const r of this.others) m |= 1n << BigInt(r);
    this.othersMask = m;
    this.lastYield = clock.now();
  }

  sendControl(to: number, kind: number, round: number, flags: number, chunk: number, payload: Uint8Array): void {
    this.sendControlTo(this.peers[to], kind, round, flags, chunk, payload);
  }

  sendControlTo(addr: string, kind: number, round: number, flags: number, chunk: number, payload: Uint8Array): void {
    const len = encodeControl(this.ctrlBuf, this.job, this.rank, kind, round, flags, chunk, payload);
    this.net.sendGso(addr, this.port, this.ctrlBuf, this.guard.seal(this.ctrlBuf, len), 1);
    this.stats.packetsSent++;
  }

  /** Sends n data packets (seg bytes apart in buf, the last lastSize) to
   * member `to`, `copies` times back to back (recovery.ts redundant), and
   * counts them; returns the packets of one copy. */
  sendData(to: number, buf: Uint8Array, n: number, lastSize: number, copies = 1): number {
    let one = 0;
    for (let k = 0; k < copies; k++) {
      const sent = this.net.sendGso(this.peers[to], this.port, buf, this.seg, n, lastSize);
      this.stats.packetsSent += sent;
      this.dataBytes += sent === n ? (n - 1) * this.seg + lastSize : sent * this.seg;
      if (k) this.stats.copiesSent += sent;
      else one = sent;
    }
    return one;
  }

  /** Seals n data packets every seg bytes of buf (the data plane's MAC), after their last change. */
  sealData(buf: Uint8Array, n: number): void {
    if (this.dataAuth && n > 0) sealPackets(this.dataAuth.key, buf, n, this.seg, this.dataAuth.full);
  }

  /** Bytes on the wire of a data packet of `count` values (and its MAC). */
  wireBytes(count: number): number {
    return HDR + payloadBytes(this.bits, count) + (this.dataAuth ? MAC_BYTES : 0);
  }

  /** Writes the program's config. */
  setConfig(cfg: JobConfig): void {
    this.cfg = cfg;
    this.maps.setConfig(cfg);
  }

  /** Every peer has finished round-1: accept round+1, reuse round-1's bank. */
  advanceWindow(round: number): void {
    this.maps.resetBank((round + 1) & 1);
    this.setConfig({ ...this.cfg, roundBase: round });
  }

  /** A buffer reused across rounds (a fresh 10 MB array per round costs
   * thousands of page faults). Its contents are whatever the last round left. */
  scratch(name: string, bytes: number): Uint8Array {
    let b = this.buffers.get(name);
    if (!b || b.length < bytes) this.buffers.set(name, (b = new Uint8Array(bytes)));
    return b.subarray(0, bytes);
  }

  /** Keeps v for `round`, forgetting rounds CACHE_ROUNDS older. */
  keep<T>(m: Map<number, T>, round: number, v: T): void {
    m.set(round, v);
    for (const k of m.keys()) if (k <= round - TUNING.CACHE_ROUNDS) m.delete(k);
  }

  /** Adds the time since `from` to a phase; returns now. */
  phase(name: keyof CollectiveStats["phaseMs"], from: number, now = this.clock.now()): number {
    this.stats.phaseMs[name] += now - from;
    return now;
  }

  /** Whether rank k is in mask. */
  static has(mask: bigint, k: number): boolean {
    return ((mask >> BigInt(k)) & 1n) !== 0n;
  }
}
