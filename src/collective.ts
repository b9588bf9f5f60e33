// The collective: an int16 all-reduce across hosts through the XDP engine.
//
// One round all-reduces a segment of up to `capacity` chunks (the chunks the
// attached program's maps were sized for); a longer vector takes several
// rounds. A round:
//   1. plan and scale: every member sends each chunk's smallest exponent to
//      the round's leader. The leader waits for the members the swarm calls
//      fit (alive, not down-ranked), or for the first --quorum of them, or
//      until the round's deadline, and decides the round's plan: the active
//      members (those whose exponents are here) and the shared scale (their
//      maximum, THC-style agreement before sending, so nothing saturates).
//      It sends both to every member (CONTROL/EXPS_MAX), naming the next
//      round's leader among the active ones.
//   2. reduce-scatter: chunk c is owned by the plan's active member
//      c % K (K active members). Each active member quantizes the chunks it
//      does not own and sends them to their owners with UDP GSO, owners
//      interleaved so that every owner's XDP program starts summing at once.
//      A passive member (down-ranked, late, or past the quorum) sends
//      nothing and owns nothing: it keeps computing and receives results.
//   3. the owner's XDP program sums the contributions of the active members;
//      on completion the owner adds its own chunk, requantizes (integer math:
//      bit-identical everywhere), stores the result in its own results map
//      and sends it to every member, whose XDP program writes it straight
//      into their results map. At the round's deadline (derived from recent
//      round times) an owner closes its open slots with the members present;
//      a result carries its contributor count, so a mean stays exact.
//   4. every member dequantizes the round's results from its results map.
// Loss: a member missing results retransmits its contributions (flagged); a
// retransmit to a completed slot makes the owner's XDP program raise a
// resend event and the owner sends the stored result again (SwitchML). A
// passive member asks the owner with a control packet (RESULT_REQ).
// The window: the program accepts rounds [base, base+1]. An event of round r
// proves every active peer finished round r-1, so the base moves to r then.
import type { Pointer } from "bun:ffi";
import { join } from "node:path";
import { coll } from "../native/collective.ts";
import {
  CFG_AUTH_FULL, CFG_AUTH_HDR, CFG_CHECK_SOURCE, CFG_CONTRIBS_TO_RING, CFG_RESULTS_TO_XSK, CFG_SENTRY, CTRL_BYE, CTRL_STATUS, CTRL_STATUS_REQ, CTRL_EXPS, CTRL_EXPS_MAX, CTRL_EXPS_REQ, CTRL_MEMBER, CTRL_HELLO, CTRL_RESULT_REQ, EV_RESEND, EV_RESULT, EV_SLOT_COMPLETE,
  F_RETRANSMIT, MAC_BYTES, MAGIC, MAX_ELEMS_AUTH, MAX_WORKERS, PKT_CONTRIB, PKT_CONTROL, PKT_RESULT, SIZEOF, VERSION, readHeader, writeHeader,
  type Counters, type JobConfig,
} from "./abi.ts";
import { pinnedPort, pinRoot } from "./attach.ts";
import { AinftpError } from "./errors.ts";
import { chunkCount, chunkExpsInto, headerTemplate, NonFiniteGradientError, packChunks } from "./quantize.ts";
import { EventRing, PinnedReflex } from "./reflex.ts";
import { gateIndex, SentryKeeper, type KeeperOptions } from "./sentry/keeper.ts";
import { RobustAggregator, robustKey, type AggregateMode, type RobustOptions } from "./sentry/robust.ts";
import { cChunkExps, cQuantize } from "../native/quant.ts";
import { publishState, readmitPath, removeState, statePath, takeReadmits } from "./sentry/state.ts";
import { UdpEndpoint, ipv4ToBe32 } from "./transport.ts";
import { XskSocket } from "./xsk.ts";
import { ControlGuard, type ControlDrop } from "./control-guard.ts";
import { sealPackets } from "../native/mac.ts";
import type { AuthMode } from "./jobkey.ts";

const HDR = SIZEOF.ainftp_wire_hdr;
/** Payload bytes of one control packet (exponents per packet). */
const CTRL_PAYLOAD = 1400;
/** Fast retransmit: a result this many positions behind the furthest result
 * of the same owner, and missing for GAP_MS (doubling per try), is lost. */
const GAP_BEHIND = 2;
const GAP_MS = 4;
/** At a deadline, how long owners get to say whom they wait for. */
const STATUS_WAIT_MS = 300;
/** With the sentry: how far (in powers of two) a rank's exponent may exceed
 * its chunk's median before the shared scale leaves it out: 2^12, far more
 * than honest workers' magnitudes differ by, far less than a poisoner gains. */
const EXPS_ABOVE_MEDIAN = 12;
/** Chunks packed and sent per owner before moving to the next owner. */
const SEND_PIECE = 44;
/** EXPS_MAX pieces start with the plan: the active members' mask (u64),
 * the next round's leader (u16) and a lateness score per member (u8). */
const PLAN_FIXED = 10;
/** Lateness: a member that misses a plan (its exponents not there when the
 * leader decides) gains a point, one that makes it loses one. At
 * LATE_SLOW points leaders stop waiting for it (down-ranked); scores stop
 * at LATE_MAX, so a member back to speed is waited for again after
 * LATE_MAX - LATE_SLOW + 1 plans it made. Two misses in a row: one round
 * waiting out a deadline can be bad luck, two are a pattern. */
const LATE_SLOW = 2;
/** A member whose exponents come within this of the majority's is prompt:
 * it may lead the next round. */
const PROMPT_MS = 50;
/** Rounds of plans and results kept for passive members that fall behind. */
const CACHE_ROUNDS = 4;
const LATE_MAX = 3;
/** The round's grace for late members: once a majority has sent its
 * exponents, the leader waits this long for the rest. It is 4 times the
 * median of the last DEADLINE_WINDOW rounds (a member 4 times slower than
 * the cluster is not jitter), at least 100 ms (4 busy processes on a
 * 2-vCPU host start a round tens of ms apart) and at most 500 ms (the issue's "lag above
 * 500 ms": down-rank it). Before there is a history: 500 ms. An owner closes
 * its open slots when they made no progress for the grace or two capped
 * retransmission intervals, whichever is longer: a lost packet always gets
 * two tries before its sender's contribution is given up. */
const DEADLINE_FACTOR = 4;
const DEADLINE_FLOOR_MS = 100;
const DEADLINE_CAP_MS = 500;
const DEADLINE_WINDOW = 32;

export interface CommunicatorOptions {
  /** Interface the program is attached to (`ainftp attach IFACE`). */
  iface: string;
  /** IPv4 address of every member, in rank order. */
  peers: string[];
  rank: number;
  /** UDP port of the attached program (default: the attached one). */
  port?: number;
  job?: number;
  /** A round not complete after this long fails, naming the missing members. */
  roundTimeoutMs?: number;
  /** First retransmission after this long without progress; doubles up to maxRetransmitMs. */
  retransmitMs?: number;
  maxRetransmitMs?: number;
  /** Waiting for every peer at open. */
  openTimeoutMs?: number;
  /** Where results arrive: "map" (the XDP program writes them into a map we
   * mmap) or "xsk" (it redirects the packets to an AF_XDP socket whose UMEM
   * is `umem`, and we dequantize from the frames). Default "map". */
  rx?: "map" | "xsk";
  /** UMEM memory for rx "xsk" (an arena region); default: the socket's own. */
  umem?: { ptr: number; bytes: number };
  /** Ask the program to wake us once per this many events (default 64). */
  batch?: number;
  /** Chunks per owner in flight (sent, result not back). Default: what fits
   * `rxQueue` (see open). */
  window?: number;
  /** Frames a receiving host's queue holds (veth: 256); sizes the window. */
  rxQueue?: number;
  /** While window-blocked, look for results at least this often (ms). */
  pumpMs?: number;
  /** Stochastic rounding with this seed (0: round to nearest). */
  stochasticSeed?: number;
  /** Where the pins are (tests); default as `ainftp attach` puts them. */
  pinRoot?: string;
  /** Swarm hook: called when a round starts; may change the member set later. */
  onRoundStart?: (round: number) => void;
  /** The sentry: the program drops contributions whose energy is outside
   * their chunk's gate, which this host (as the chunks' owner) keeps; workers
   * rejected again and again are quarantined. Needs rx "map". */
  sentry?: KeeperOptions | boolean;
  /** The sentry quarantined or re-admitted members (their ranks). */
  onQuarantine?: (quarantined: number[], round: number) => void;
  /** How an owner combines its chunks' contributions: summed by the XDP
   * program (default), or handed to userspace and combined robustly
   * (src/sentry/robust.ts). Robust modes need rx "map". */
  aggregate?: AggregateMode;
  robust?: RobustOptions;
  /** Longest a round's poll waits (ms): a swarm that ticks its membership
   * protocol from a timer wants the loop back often (default: no bound). */
  maxWaitMs?: number;
  /** Backup workers: the leader goes as soon as this many members
   * (itself included) have sent their exponents; the rest are passive in
   * that round. Default: wait for every fit member. */
  quorum?: number;
  /** The round deadline, after which the leader plans with the members
   * present and owners close their slots with the contributions present:
   * "auto" (default) is 4x the median of recent rounds, at least 50 ms;
   * a number is a fixed deadline in ms; 0 turns partial rounds off (a
   * round then waits for every active member, up to roundTimeoutMs). */
  deadlineMs?: number | "auto";
  /** The job's 128-bit key (issue 16): every control packet carries a
   * SipHash-2-4 MAC under it, and contributions and results one as `auth`
   * says. Every member must have the same key. Default: none. */
  key?: Uint8Array | null;
  /** With a key, what the data plane's MAC covers: "header" (default: a host
   * without the key cannot forge a frame), "full" (header and payload: not
   * even an on-path host can change one), or "off". */
  auth?: AuthMode;
}

export interface CollectiveStats {
  rounds: number;
  /** Contribution packets sent again after a timeout. */
  retransmits: number;
  /** Results sent again on a resend request. */
  resends: number;
  /** Retransmit timers that fired. */
  timeouts: number;
  /** Values clipped by the quantizer (0 with the shared max scale). */
  saturations: number;
  /** Times this process woke up (poll returns). */
  wakeups: number;
  /** Control packets read from the socket. */
  controlReceived: number;
  /** With the sentry: exponents left out of the shared scale (far above their chunk's median). */
  expsLeftOut: number;
  /** Rounds whose plan left members out (down-ranked, late, past the quorum). */
  partialRounds: number;
  /** Rounds this member sat out as passive (it received the results). */
  passiveRounds: number;
  /** Owned slots closed at the deadline with the contributions present. */
  deadlineCloses: number;
  packetsSent: number;
  /** Where round time went: computing exponents, waiting for the peers'
   * exponents, packing/sending/finishing (work), waiting for packets, and
   * dequantizing the results. */
  phaseMs: { exps: number; control: number; work: number; wait: number; gather: number };
}

export interface RoundReport {
  round: number;
  ms: number;
  chunks: number;
  /** The round's active members (whose contributions its results hold,
   * less any the sentry dropped or a deadline closed out). */
  active: number[];
  leader: number;
}

/** A round failed: members did not answer in time, or one left. */
export class RoundError extends AinftpError {
  constructor(op: string, message: string, readonly missingRanks: number[], hint: string) {
    super(op, message, { hint });
    this.name = "RoundError";
  }
}

interface RoundState {
  r: number;
  n: number; // elements
  nchunks: number;
  counts: Uint16Array;
  exps: Int8Array; // all ranks' exps, rank-major
  /** Per rank: when its exponents were all here (the leader's view). */
  expsAt: Float64Array;
  /** Per rank: offsets of the exponent pieces received. */
  pieces: Set<number>[];
  haveExps: boolean[];
  t0: number;
  /** The rank that collects the members' exponents, decides the plan and
   * sends back the maximum with it. */
  leader: number;
  /** Leader: sent the plan; others: received it (pieces in sharedPieces). */
  haveShared: boolean;
  sharedPieces: Set<number>;
  shared: Int8Array;
  /** The plan: active members (mask), the next round's leader, and the
   * members' lateness scores after this round. */
  active: bigint;
  next: number;
  scores: Uint8Array;
  /** Per rank: its index among the active members (the owners), or -1. */
  ownerIdx: Int32Array;
  /** Active members (the owners): chunk c is owned by owners[c % K]. */
  K: number;
  owners: number[];
  passive: boolean;
  /** How long late members get (see DEADLINE_FACTOR); Infinity: forever. */
  grace: number;
  /** A barrier: waits for every fit member (see allreduce's `patient`). */
  patient: boolean;
  /** Check the results map for completion even without the events. */
  lookInMap: boolean;
  /** Leader: when a majority's exponents were here. */
  majorityAt: number;
  /** Owner: last time our slots or results moved; the slots close when
   * nothing moved for ownerGrace. */
  lastProgress: number;
  ownerGrace: number;
  closedAtDeadline: boolean;
  owned: Uint32Array;
  ownedDone: Uint8Array;
  ownedDoneCount: number;
  /** Owned slots that completed before our own chunk was quantized. */
  pending: number[];
  /** Per chunk: contributions the program summed into our slot (its event's count). */
  summed: Uint16Array;
  /** Our gradient of this round (robust modes combine it with the others'). */
  x: Float32Array;
  /** Robust modes: the contributions to our chunks, by chunk and rank. */
  recs: Map<number, Map<number, { exp: number; q: Int16Array }>>;
  resultsSeen: number;
  sent: boolean;
  header: Uint8Array;
  seed: number;
  /** Per owner: chunks sent, and results received (the window). */
  pos: number[];
  acked: number[];
  sendBuf: Uint8Array; // contribution packets, region per owner
  ownerOffset: number[]; // byte offset of each owner's region
  ownerChunks: Uint32Array[];
  ownBuf: Uint8Array; // own chunks' packets (own quantized values)
  /** Results that arrived, by chunk (rx "xsk": already dequantized into `out`). */
  xdone: Uint8Array;
  /** Per chunk: when it was last sent, and how often it was sent again. */
  sentAt: Float64Array;
  tries: Uint8Array;
  /** Per owner: first list position whose result is missing, and the
   * furthest position with a result (a gap behind it means a loss). */
  lowest: number[];
  furthest: number[];
  out: Float32Array;
}

export class Communicator implements Disposable {
  readonly rank: number;
  readonly peers: readonly string[];
  readonly size: number;
  readonly chunkElems: number;
  readonly capacity: number;
  readonly port: number;
  readonly job: number;
  readonly stats: CollectiveStats = {
    rounds: 0, retransmits: 0, resends: 0, timeouts: 0, saturations: 0, wakeups: 0, controlReceived: 0, packetsSent: 0, expsLeftOut: 0,
    partialRounds: 0, passiveRounds: 0, deadlineCloses: 0,
    phaseMs: { exps: 0, control: 0, work: 0, wait: 0, gather: 0 },
  };

  private maps: PinnedReflex;
  /** Checks, authenticates and binds every control frame; counts refusals. */
  private guard: ControlGuard;
  /** Data plane MAC: the key and mode the program checks (null: none). */
  private dataAuth: { key: Uint8Array; full: boolean } | null = null;
  private ring: EventRing;
  private sock: UdpEndpoint;
  private cfg: JobConfig;
  private accBase: Pointer;
  private resBase: Pointer;
  private nextRound = 0;
  private o: Required<Omit<CommunicatorOptions, "onRoundStart" | "onQuarantine" | "pinRoot" | "port" | "job">> & CommunicatorOptions;
  /** The sentry's gates and strikes for the chunks we own (null: off). */
  readonly sentry: SentryKeeper | null = null;
  private quarantined = 0n;
  /** Robust aggregation: the combiner, and the ring of contributions. */
  readonly robust: RobustAggregator | null = null;
  private contribs: EventRing | null = null;
  /** Contributions of rounds we have not started yet. */
  private earlyRecs = new Map<number, Map<number, Map<number, { exp: number; q: Int16Array }>>>();
  /** Exponents that arrived for rounds we have not started. */
  private early = new Map<number, Map<number, Map<number, Int8Array>>>();
  private seg: number; // packet stride
  private resPkts: Uint8Array;
  private chunkList: Uint32Array;
  private closed = false;
  private lastYield = performance.now();
  /** The AF_XDP socket results arrive on (rx "xsk"), else null. */
  readonly xsk: XskSocket | null = null;
  /** The round base our program had before this job: every HELLO carries
   * it (also replies sent after our handshake), so that every member
   * computes the same first round from the same values. */
  private readonly helloBase: number;
  /** Answers to our CTRL_STATUS_REQ: owner rank → mask of ranks it lacks. */
  private statusAnswers = new Map<number, bigint>();
  /** Ranks that left, with the first round each did not complete. */
  private left = new Map<number, number>();
  /** The next round's leader: named by the last plan (all agree on it). */
  private leaderNext = 0;
  /** Plans (EXPS_MAX pieces) that arrived for rounds we have not started. */
  private earlyMax = new Map<number, Map<number, Map<number, Uint8Array>>>();
  /** Recent round times (ms), for the deadline. */
  private roundTimes: number[] = [];
  /** Partial rounds' plans we led, and results we own, for passive members
   * that fall behind and ask after we moved on (the last CACHE_ROUNDS). */
  private planCache = new Map<number, Pick<RoundState, "r" | "active" | "next" | "scores" | "shared">>();
  /** Per round (the last CACHE_ROUNDS): our result packets, one buffer
   * reused round after round, and where each chunk's packet sits in it. */
  private resultRing: { round: number; buf: Uint8Array; at: Int32Array; used: number }[] = [];
  private keep<T>(m: Map<number, T>, round: number, v: T): void {
    m.set(round, v);
    for (const k of m.keys()) if (k <= round - CACHE_ROUNDS) m.delete(k);
  }
  /** Lateness per member, as the last plan left it (see LATE_SLOW). */
  private lateness: Uint8Array = new Uint8Array(0);

  private constructor(o: Communicator["o"], maps: PinnedReflex, sock: UdpEndpoint, port: number) {
    this.o = o;
    this.rank = o.rank;
    this.peers = o.peers;
    this.size = o.peers.length;
    this.maps = maps;
    this.sock = sock;
    this.port = port;
    this.cfg = maps.config();
    this.helloBase = this.cfg.roundBase;
    this.job = o.job ?? this.cfg.jobId;
    this.chunkElems = this.cfg.chunkElems;
    this.capacity = maps.chunks;
    this.guard = new ControlGuard({ job: this.job, peers: this.peers, key: o.key ?? null, helloKind: CTRL_HELLO });
    const auth = o.key ? (o.auth ?? "header") : "off";
    if (o.key && auth !== "off") this.dataAuth = { key: o.key, full: auth === "full" };
    // a contribution or result under auth ends with its MAC
    this.seg = HDR + 2 * this.chunkElems + (this.dataAuth ? MAC_BYTES : 0);
    this.ring = maps.events();
    while (this.ring.pollRaw(0) > 0); // events a previous job left behind
    this.roundsContributed.push(...new Array(this.size).fill(0));
    this.roundsMissed.push(...new Array(this.size).fill(0));
    this.accBase = maps.accBase();
    this.resBase = maps.resultsBase();
    this.resPkts = new Uint8Array(this.seg * this.capacity);
    this.chunkList = new Uint32Array(this.capacity);
  }

  /** Opens the communicator on an interface where `ainftp attach` put the
   * program, and waits until every peer has opened it with the same job. */
  static async open(opts: CommunicatorOptions): Promise<Communicator> {
    const op = "open communicator";
    const n = opts.peers.length;
    if (n < 1 || n > MAX_WORKERS) throw new AinftpError(op, `${n} peers; a job has 1..${MAX_WORKERS}`);
    if (!Number.isInteger(opts.rank) || opts.rank < 0 || opts.rank >= n)
      throw new AinftpError(op, `rank ${opts.rank} is not in 0..${n - 1}`, { hint: "ranks count from 0 in the order of --peers" });
    const dup = opts.peers.find((p, i) => opts.peers.indexOf(p) !== i);
    if (dup) throw new AinftpError(op, `peer ${dup} is listed twice`, { hint: "give each member's address once, in rank order" });
    // In flight towards one host: (N-1) senders' windows plus the owners'
    // result bursts. Keep the windows within a receive queue of `rxQueue`
    // frames (veth: 256), leaving room for results; 48 measured best at 4 hosts.
    const batch = opts.batch ?? 64;
    const window = opts.window ?? Math.max(8, Math.min(48, Math.floor((opts.rxQueue ?? 256) / Math.max(1, n - 1)) - 16));
    const o = {
      window,
      roundTimeoutMs: 10_000, retransmitMs: 50, maxRetransmitMs: 500, openTimeoutMs: 30_000, stochasticSeed: 0,
      pumpMs: 2, batch: 48, sentry: false, maxWaitMs: 1e9,
      // an option given as undefined keeps its default
      ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
    } as Communicator["o"];
    const dir = join(pinRoot(opts.pinRoot), opts.iface);
    const maps = PinnedReflex.open(dir);
    let sock: UdpEndpoint | undefined;
    try {
      const port = opts.port ?? pinnedPort(dir);
      sock = UdpEndpoint.open("0.0.0.0", port);
      // a previous job's slots and results must not look like ours
      maps.resetState();
      const c = new Communicator(o, maps, sock, port);
      if (c.dataAuth && c.chunkElems > MAX_ELEMS_AUTH)
        throw new AinftpError(op, `--auth ${o.auth ?? "header"} leaves room for ${MAX_ELEMS_AUTH} values per packet, the program is attached with ${c.chunkElems}`, {
          hint: `attach with --chunk-elems ${MAX_ELEMS_AUTH} or less, or run with --auth off`,
        });
      if (o.aggregate && o.aggregate !== "sum") {
        if (o.rx === "xsk") throw new AinftpError(op, `--aggregate ${o.aggregate} needs --rx map`, { hint: "drop --rx xsk" });
        (c as { robust: RobustAggregator | null }).robust = new RobustAggregator(o.aggregate, o.robust);
        c.contribs = new EventRing(maps.mapFd("contribs"), SIZEOF.ainftp_contrib_rec, 256);
        while (c.contribs.pollRaw(0) > 0); // a previous job's records
      }
      if (o.sentry) {
        if (o.rx === "xsk") throw new AinftpError(op, "the sentry needs --rx map", { hint: "drop --rx xsk, or the sentry" });
        (c as { sentry: SentryKeeper | null }).sentry = new SentryKeeper(n, o.sentry === true ? {} : o.sentry);
      }
      if (o.rx === "xsk")
        (c as { xsk: XskSocket | null }).xsk = XskSocket.open({ iface: o.iface, xsksMapFd: maps.mapFd("xsks"), area: o.umem });
      try {
        await c.handshake();
      } catch (e) {
        c.xsk?.close();
        throw e;
      }
      return c;
    } catch (e) {
      sock?.close();
      maps.close();
      throw e;
    }
  }

  // ---- membership check --------------------------------------------------------

  private fingerprint(): string {
    return JSON.stringify({ v: VERSION, job: this.job, peers: this.peers, chunkElems: this.chunkElems, port: this.port, auth: this.dataAuth ? (this.dataAuth.full ? "full" : "header") : "off" });
  }

  /** HELLO to every peer until all have answered with the same fingerprint;
   * agrees the first round (above anything these hosts' programs saw). */
  private async handshake(): Promise<void> {
    const me = this.fingerprint();
    const bases = new Map<number, number>([[this.rank, this.helloBase]]);
    const deadline = performance.now() + this.o.openTimeoutMs;
    let nextSend = 0;
    // After spotting a different job we still greet everyone for a moment,
    // so members that start a little later learn it too instead of timing out.
    let failure: AinftpError | null = null;
    let failAt = Infinity;
    const send = (to: number, wantReply: boolean) =>
      this.sendControl(to, CTRL_HELLO, this.helloBase, wantReply ? 1 : 0, 0, new TextEncoder().encode(me));
    while (bases.size < this.size || failure) {
      const now = performance.now();
      if (failure && now > failAt) throw failure;
      if (now > deadline) {
        if (failure) throw failure;
        const missing = this.others().filter((r) => !bases.has(r));
        throw new RoundError("open communicator", `no answer from ${describeRanks(missing, this.peers)} within ${this.o.openTimeoutMs} ms`, missing,
          "start ainftp on every member with the same --peers and --job; check the addresses and that the interface is attached");
      }
      if (now >= nextSend) {
        for (const r of this.others()) if (failure || !bases.has(r)) send(r, true);
        nextSend = now + 100;
      }
      const b = this.sock.recvBatch(Math.max(1, Math.min(100, Math.ceil(nextSend - now))));
      for (let i = 0; i < b.count; i++) {
        const h = this.parseControl(b.datagram(i), b.sourceAddr(i));
        if (!h) continue;
        if (h.kind !== CTRL_HELLO) {
          this.handleControl(h, null); // a faster peer's first exponents
          continue;
        }
        if (!h.member || new TextDecoder().decode(h.payload) !== me) {
          const err = this.mismatch(h);
          if (!failure) (failure = err), (failAt = performance.now() + 1000);
          continue;
        }
        if (!bases.has(h.rank)) bases.set(h.rank, h.round);
        if (h.flags & 1) send(h.rank, false);
      }
      await Bun.sleep(0);
    }
    // Every member computes the same first round: past any round these
    // programs have seen, so old slot and result tags can never match.
    const first = Math.max(...bases.values()) + 2;
    this.nextRound = first;
    this.leaderNext = first % this.size;
    this.lateness = new Uint8Array(this.size);
    // only members' addresses may speak for their ranks; with a key, only its holders
    this.maps.setMemberAddrs(this.peers.map((p) => ipv4ToBe32(p)));
    this.maps.setJobKey(this.dataAuth?.key ?? null);
    this.cfg = {
      ...this.cfg, jobId: this.job, roundBase: first, members: this.size, memberMask: this.othersMask(), bankMask: [0n, 0n], batch: this.o.batch,
      flags: ((this.cfg.flags ?? 0) & ~(CFG_RESULTS_TO_XSK | CFG_SENTRY | CFG_AUTH_HDR | CFG_AUTH_FULL)) | CFG_CHECK_SOURCE |
        (this.dataAuth ? (this.dataAuth.full ? CFG_AUTH_FULL : CFG_AUTH_HDR) : 0) |
        (this.xsk ? CFG_RESULTS_TO_XSK : 0) | (this.sentry ? CFG_SENTRY : 0) | (this.robust ? CFG_CONTRIBS_TO_RING : 0),
    };
    if (this.sentry) {
      // every gate starts calibrating: its band is closed
      const gates = this.maps.gates();
      for (let at = 0; at < 2 * this.capacity; at++) [gates[2 * at], gates[2 * at + 1]] = this.sentry.band(at);
    }
    this.maps.setConfig(this.cfg);
  }

  private others(): number[] {
    return [...Array(this.size).keys()].filter((r) => r !== this.rank);
  }

  private othersMask(): bigint {
    let m = 0n;
    for (const r of this.others()) m |= 1n << BigInt(r);
    return m;
  }

  // ---- the swarm's hooks -------------------------------------------------------

  /** Membership messages from a member (rank, payload); see src/swarm.ts. */
  onMember: ((rank: number, payload: Uint8Array) => void) | null = null;
  /** What the swarm knows of a member, for round failures ("declared dead 1.2 s ago"). */
  describeMember: ((rank: number) => string | null) | null = null;
  /** Members a leader waits for: bit r set = rank r is alive and not
   * down-ranked. The swarm keeps it current; without one, everyone. */
  fitMask = ~0n;
  /** Members alive (or merely suspected), slow or not: a barrier waits for them. */
  liveMask = ~0n;
  private inRound = false;
  /** Per member: rounds completed with it, and rounds it was left out of. */
  readonly roundsContributed: number[] = [];
  readonly roundsMissed: number[] = [];

  /** Sends a membership message to a member. */
  sendMember(rank: number, payload: Uint8Array): void {
    if (!this.closed && rank !== this.rank && rank < this.size) this.sendControl(rank, CTRL_MEMBER, 0, 0, 0, payload);
  }

  /** Between rounds: reads the control packets waiting (a round reads its own). */
  service(): void {
    if (!this.closed && !this.inRound) this.drainControl(null);
  }

  // ---- control packets ---------------------------------------------------------

  private ctrlBuf = new Uint8Array(HDR + 65536);

  private sendControl(to: number, kind: number, round: number, flags: number, chunk: number, payload: Uint8Array): void {
    this.sendControlTo(this.peers[to], kind, round, flags, chunk, payload);
  }

  private sendControlTo(addr: string, kind: number, round: number, flags: number, chunk: number, payload: Uint8Array): void {
    const b = this.ctrlBuf;
    writeHeader(new DataView(b.buffer), 0, {
      type: PKT_CONTROL, jobId: this.job, round, chunk, rank: this.rank, count: payload.length, contributors: kind, flags,
    });
    b.set(payload, HDR);
    this.sock.sendGso(addr, this.port, b, this.guard.seal(b, HDR + payload.length), 1);
    this.stats.packetsSent++;
  }

  /** A control packet from a member of this job, or null. A HELLO is
   * returned from anyone (with `member` false when its job, rank or address
   * does not match ours), so a mismatch can be reported instead of ignored. */
  private parseControl(d: Uint8Array, from: string) {
    // checked, authenticated and bound to its sender (src/control-guard.ts)
    const h = this.guard.open(d, from);
    if (h) this.stats.controlReceived++;
    return h;
  }

  /** Bytes of a full data packet's UDP payload (header, values, MAC). */
  get packetBytes(): number {
    return this.seg;
  }

  /** Control frames (or parts) refused, by reason (issue 16). */
  get controlDrops(): Readonly<Record<ControlDrop, number>> {
    return this.guard.drops;
  }

  /** Seals n data packets every seg bytes of buf (the data plane's MAC), after their last change. */
  private sealData(buf: Uint8Array, n: number): void {
    if (this.dataAuth && n > 0) sealPackets(this.dataAuth.key, buf, n, this.seg, this.dataAuth.full);
  }

  /** Bytes on the wire of a data packet of `count` values. */
  private wireBytes(count: number): number {
    return HDR + 2 * count + (this.dataAuth ? MAC_BYTES : 0);
  }

  /** A HELLO whose job does not match ours: answer with ours (so the sender
   * learns it too) and describe the difference. */
  private mismatch(h: { rank: number; from: string; payload: Uint8Array }): AinftpError {
    const me = this.fingerprint();
    this.sendControlTo(h.from, CTRL_HELLO, this.helloBase, 0, 0, new TextEncoder().encode(me));
    const theirs = new TextDecoder().decode(h.payload);
    const who = this.peers.includes(h.from)
      ? `rank ${this.peers.indexOf(h.from)} (${h.from})`
      : `a host at ${h.from}, which is not in our --peers,`;
    return new AinftpError("open communicator", `${who} runs a different job: ours ${me}, theirs ${theirs}`, {
      hint: "every member must get the same --peers (same order), --job and chunk size",
    });
  }

  private sendExps(to: number, r: number, exps: Int8Array, kind = CTRL_EXPS): void {
    const bytes = new Uint8Array(exps.buffer, exps.byteOffset, exps.length);
    for (let off = 0; off < bytes.length || off === 0; off += CTRL_PAYLOAD) {
      this.sendControl(to, kind, r, 0, off, bytes.subarray(off, off + CTRL_PAYLOAD));
      if (bytes.length === 0) break;
    }
  }

  /** The leader's plan: every piece carries the active mask and the next
   * leader before its share of the maximum exponents. */
  private sendPlan(to: number, st: Pick<RoundState, "r" | "active" | "next" | "scores" | "shared">): void {
    const head = PLAN_FIXED + this.size;
    const piece = new Uint8Array(head + CTRL_PAYLOAD);
    const dv = new DataView(piece.buffer);
    dv.setBigUint64(0, st.active, true);
    dv.setUint16(8, st.next, true);
    piece.set(st.scores, PLAN_FIXED);
    const bytes = new Uint8Array(st.shared.buffer, st.shared.byteOffset, st.shared.length);
    for (let off = 0; off < bytes.length; off += CTRL_PAYLOAD) {
      const part = bytes.subarray(off, off + CTRL_PAYLOAD);
      piece.set(part, head);
      this.sendControl(to, CTRL_EXPS_MAX, st.r, 0, off, piece.subarray(0, head + part.length));
    }
  }

  /** Reads every queued control packet. */
  private drainControl(st: RoundState | null): void {
    for (;;) {
      const b = this.sock.recvBatch(0);
      if (b.count === 0) return;
      for (let i = 0; i < b.count; i++) {
        const h = this.parseControl(b.datagram(i), b.sourceAddr(i));
        if (h) this.handleControl(h, st);
      }
    }
  }

  private handleControl(h: NonNullable<ReturnType<Communicator["parseControl"]>>, st: RoundState | null): void {
    if (h.kind === CTRL_HELLO) {
      // a host of another job greeting us: tell it (it fails its open), carry on
      if (!h.member || new TextDecoder().decode(h.payload) !== this.fingerprint()) void this.mismatch(h);
      else if (h.flags & 1) this.sendControl(h.rank, CTRL_HELLO, this.helloBase, 0, 0, new TextEncoder().encode(this.fingerprint()));
    } else if (h.kind === CTRL_STATUS_REQ) {
      // a member at its deadline asks whom we wait for in this round
      // (our answer also tells it that we are alive)
      if (st && h.round === st.r) {
        const b = new Uint8Array(8);
        new DataView(b.buffer).setBigUint64(0, this.waitingFor(st, (st.r & 1) * this.cfg.chunks), true);
        this.sendControl(h.rank, CTRL_STATUS, st.r, 0, 0, b);
      }
    } else if (h.kind === CTRL_STATUS) {
      if (h.payload.length === 8) this.statusAnswers.set(h.rank, new DataView(h.payload.buffer, h.payload.byteOffset, 8).getBigUint64(0, true));
    } else if (h.kind === CTRL_BYE) {
      // `round` is the first round the leaver did not complete
      this.left.set(h.rank, h.round);
    } else if (h.kind === CTRL_EXPS || h.kind === CTRL_EXPS_REQ) {
      this.storeExps(st, h.rank, h.round, h.chunk, h.payload);
      if (h.kind !== CTRL_EXPS_REQ) return;
      if (!st || h.round !== st.r) {
        // a passive member that fell behind asks for a plan we sent
        const plan = this.planCache.get(h.round);
        if (plan) this.sendPlan(h.rank, plan);
        return;
      }
      // the leader answers a member that lacks the plan with it; a member
      // asked by a leader still collecting answers with its own exponents
      if (st.leader === this.rank && st.haveShared) this.sendPlan(h.rank, st);
      else if (h.round !== st.r) {
        const plan = this.planCache.get(h.round);
        if (plan) this.sendPlan(h.rank, plan);
      } else if (st.haveExps[this.rank]) this.sendExps(h.rank, st.r, st.exps.subarray(this.rank * st.nchunks, (this.rank + 1) * st.nchunks));
    } else if (h.kind === CTRL_EXPS_MAX) {
      if (st && h.round === st.r) {
        if (h.rank === st.leader) this.storeShared(st, h.chunk, h.payload);
      } else if (h.round >= this.nextRound && h.round - this.nextRound < 4 && h.chunk < this.capacity && h.chunk % CTRL_PAYLOAD === 0) {
        // a plan for a round we have not started (we were passive, or past
        // the quorum): keep it, the round will need it
        // (by sender: which one leads that round is known when it starts)
        let bySender = this.earlyMax.get(h.round);
        if (!bySender) this.earlyMax.set(h.round, (bySender = new Map()));
        let pieces = bySender.get(h.rank);
        if (!pieces) bySender.set(h.rank, (pieces = new Map()));
        pieces.set(h.chunk, Uint8Array.from(h.payload));
      } else if (h.round >= this.nextRound) {
        this.guard.count(h.round - this.nextRound < 4 ? "bad_chunk" : "future_round");
      }
    } else if (h.kind === CTRL_RESULT_REQ) {
      // a passive member lacks results of ours: send the stored ones again
      // (indices past the job's chunks are counted, never used)
      for (const c of this.guard.chunkList(h.payload, this.cfg.chunks)) this.resend(h.round, c, h.rank);
    } else if (h.kind === CTRL_MEMBER) {
      this.onMember?.(h.rank, h.payload);
    }
  }

  /** Stores one piece (CTRL_PAYLOAD exponents from chunk `first`) of a
   * rank's exponents; a rank's set is complete when every piece is here. */
  private storeExps(st: RoundState | null, rank: number, round: number, first: number, payload: Uint8Array): void {
    const ex = new Int8Array(payload.buffer, payload.byteOffset, payload.length);
    if (first % CTRL_PAYLOAD !== 0) return;
    if (st && round === st.r) {
      if (first + ex.length > st.nchunks || st.haveExps[rank]) return;
      if (ex.length !== Math.min(CTRL_PAYLOAD, st.nchunks - first)) return;
      st.exps.set(ex, rank * st.nchunks + first);
      st.pieces[rank].add(first);
      if (st.pieces[rank].size === Math.ceil(st.nchunks / CTRL_PAYLOAD)) (st.haveExps[rank] = true), (st.expsAt[rank] = performance.now());
      return;
    }
    if (round < this.nextRound) return; // an old round: nothing needs it any more
    // bounded memory: a few rounds ahead, pieces within the job's chunks
    if (!this.guard.keepsRound(round, this.nextRound)) return;
    if (first >= this.capacity) return this.guard.count("bad_chunk");
    let m = this.early.get(round);
    if (!m) this.early.set(round, (m = new Map()));
    let pieces = m.get(rank);
    if (!pieces) m.set(rank, (pieces = new Map()));
    pieces.set(first, Int8Array.from(ex));
  }

  /** Stores one piece of the leader's plan (active mask, next leader, and
   * a share of the maximum exponents); every piece must name the same plan. */
  private storeShared(st: RoundState, first: number, payload: Uint8Array): void {
    const head = PLAN_FIXED + this.size;
    if (st.haveShared || payload.length < head) return;
    const dv = new DataView(payload.buffer, payload.byteOffset, PLAN_FIXED);
    const active = dv.getBigUint64(0, true), next = dv.getUint16(8, true);
    const ex = payload.subarray(head);
    if (first % CTRL_PAYLOAD !== 0 || ex.length !== Math.min(CTRL_PAYLOAD, st.nchunks - first)) return;
    const all = (1n << BigInt(this.size)) - 1n;
    if (next >= this.size || (active & ~all) !== 0n || !((active >> BigInt(st.leader)) & 1n)) return;
    if (st.sharedPieces.size && (active !== st.active || next !== st.next)) return;
    st.active = active;
    st.next = next;
    for (let k = 0; k < this.size; k++) st.scores[k] = Math.min(LATE_MAX, payload[PLAN_FIXED + k]);
    st.shared.set(new Int8Array(ex.buffer, ex.byteOffset, ex.length), first);
    st.sharedPieces.add(first);
    if (st.sharedPieces.size === Math.ceil(st.nchunks / CTRL_PAYLOAD)) st.haveShared = true;
  }

  /** The plan is known: as a member, once the leader's pieces are all here;
   * as the leader, once the members it waits for have sent their exponents
   * (the fit ones, or the first `quorum`, or whoever is here at the
   * deadline). The leader then decides and sends the plan to everyone. */
  private sharedReady(st: RoundState): boolean {
    if (st.haveShared) return true;
    if (st.leader !== this.rank) return false;
    let have = 0n, count = 0;
    for (let k = 0; k < this.size; k++) if (st.haveExps[k]) (have |= 1n << BigInt(k)), count++;
    // a barrier (patient) waits for every fit member, down-ranked or not,
    // and leaves the lateness scores as they were
    let downRanked = 0n;
    for (let k = 0; k < this.size; k++) if (this.lateness[k] >= LATE_SLOW) downRanked |= 1n << BigInt(k);
    const slow = st.patient ? 0n : downRanked;
    const awaited = this.othersMask() & (st.patient ? this.liveMask : this.fitMask) & ~slow & ~have;
    const quorate = !st.patient && this.o.quorum !== undefined && count >= this.o.quorum;
    const now = performance.now();
    if (st.majorityAt === Infinity && count > this.size / 2) {
      st.majorityAt = now;
      // ask the rest at once: a lost exponents packet is then back within
      // a round trip, not the member's retransmission timer
      const mine = st.exps.subarray(this.rank * st.nchunks, (this.rank + 1) * st.nchunks);
      for (let k = 0; k < this.size; k++)
        if (k !== this.rank && !st.haveExps[k] && ((this.liveMask >> BigInt(k)) & 1n)) this.sendExps(k, st.r, mine, CTRL_EXPS_REQ);
    }
    if (awaited !== 0n && !quorate && now < st.majorityAt + st.grace) return false;
    st.active = have;
    for (let k = 0; k < this.size; k++)
      st.scores[k] = st.patient ? this.lateness[k] : st.haveExps[k] ? Math.max(0, this.lateness[k] - 1) : Math.min(LATE_MAX, this.lateness[k] + 1);
    // the maximum over the active members' exponents only
    let rows = st.exps;
    if (count < this.size) {
      rows = new Int8Array(count * st.nchunks);
      let at = 0;
      for (let k = 0; k < this.size; k++) if (st.haveExps[k]) rows.set(st.exps.subarray(k * st.nchunks, (k + 1) * st.nchunks), (at++) * st.nchunks);
    }
    // with the sentry, an exponent far above the chunk's median (4096 times
    // its magnitude) is a poisoner's: left out of the shared scale
    if (this.sentry) this.stats.expsLeftOut += coll.ainftp_robust_max_exps(rows, count, st.nchunks, st.shared, EXPS_ABOVE_MEDIAN);
    else coll.ainftp_max_exps(rows, count, st.nchunks, st.shared);
    // the next leader: the next active member after us (it answered this
    // round in time), else the next fit one, else simply the next rank
    // the next leader: one whose exponents came with the majority (a barrier
    // waits for a delayed member too, which must not lead: its plan would
    // reach everyone late)
    let prompt = 0n;
    for (let k = 0; k < this.size; k++) if (st.haveExps[k] && st.expsAt[k] <= Math.min(now, st.majorityAt) + PROMPT_MS) prompt |= 1n << BigInt(k);
    st.next = this.nextLeader([prompt & ~downRanked & this.fitMask, prompt, have, this.fitMask]);
    st.haveShared = true;
    for (const p of this.others()) this.sendPlan(p, st);
    // a passive member may ask for this plan after we moved on
    if (count < this.size) this.keep(this.planCache, st.r, { r: st.r, active: st.active, next: st.next, scores: st.scores, shared: st.shared });
    return true;
  }

  /** The first member after us (in rank order, cyclic) in the first pool
   * that has one; never ourselves, so a leader whose own link is slow (it
   * sees everyone late) cannot keep the role. */
  private nextLeader(pools: bigint[]): number {
    for (const pool of pools)
      for (let i = 1; i < this.size; i++) {
        const k = (this.rank + i) % this.size;
        if ((pool >> BigInt(k)) & 1n) return k;
      }
    return (this.rank + 1) % this.size;
  }

  /** `rank`, or the first member after it (rank order, cyclic) that the
   * swarm does not hold dead: a dead leader would stall every round. */
  private liveFrom(rank: number): number {
    for (let i = 0; i < this.size; i++) {
      const k = (rank + i) % this.size;
      if (k === this.rank || (this.liveMask >> BigInt(k)) & 1n) return k;
    }
    return rank;
  }

  /** How long this round gives late members (see DEADLINE_FACTOR). */
  private graceMs(): number {
    const d = this.o.deadlineMs ?? "auto";
    if (d === 0) return Infinity;
    if (typeof d === "number") return d;
    if (this.roundTimes.length < 4) return DEADLINE_CAP_MS;
    const sorted = [...this.roundTimes].sort((a, b) => a - b);
    return Math.min(DEADLINE_CAP_MS, Math.max(DEADLINE_FLOOR_MS, DEADLINE_FACTOR * sorted[sorted.length >> 1]));
  }

  // ---- the round --------------------------------------------------------------

  /** Sums x over every member, in place (or into out). `mean` divides by the
   * member count. Resolves when the result is complete on this host. */
  async allreduce(
    x: Float32Array,
    opts: {
      op?: "sum" | "mean"; out?: Float32Array;
      /** first retransmission after this long (default: the communicator's) */ retransmitMs?: number;
      /** a barrier: wait for every member that is fit and not down-ranked, with no deadline */ patient?: boolean;
    } = {},
  ): Promise<RoundReport[]> {
    if (this.closed) throw new AinftpError("allreduce", "communicator is closed");
    const out = opts.out ?? x;
    if (out.length !== x.length) throw new AinftpError("allreduce", `out has ${out.length} elements, x has ${x.length}`);
    const per = this.capacity * this.chunkElems;
    const reports: RoundReport[] = [];
    for (let off = 0; off < x.length || (off === 0 && x.length === 0); off += per) {
      if (x.length === 0) break;
      const end = Math.min(x.length, off + per);
      this.inRound = true;
      let rep: RoundReport;
      try {
        rep = await this.round(x.subarray(off, end), out.subarray(off, end), opts.retransmitMs ?? this.o.retransmitMs, opts.patient ?? false);
      } finally {
        this.inRound = false;
      }
      reports.push(rep);
      if (opts.op === "mean") {
        // a mean over the contributions each chunk's result holds: fewer
        // than the members when the round was partial or the sentry dropped
        // some (rx "xsk" keeps no per-chunk count: the plan's active members)
        const k = this.xsk ? new Uint16Array(rep.chunks).fill(rep.active.length) : this.contributorsOf(rep.round, rep.chunks);
        for (let c = 0; c < rep.chunks; c++) {
          const from = off + c * this.chunkElems, to = Math.min(end, from + this.chunkElems);
          const d = k[c] || 1;
          for (let i = from; i < to; i++) out[i] /= d;
        }
      }
    }
    return reports;
  }

  private async round(x: Float32Array, out: Float32Array, retransmitMs: number, patient: boolean): Promise<RoundReport> {
    const t0 = performance.now();
    const r = this.nextRound++;
    this.o.onRoundStart?.(r);
    const N = this.size;
    const E = this.chunkElems;
    const nchunks = chunkCount(x.length, E);
    if (N === 1) {
      out.set(x);
      this.stats.rounds++;
      return { round: r, ms: performance.now() - t0, chunks: nchunks, active: [0], leader: 0 };
    }
    const st = this.newRound(r, x, out, nchunks, t0, patient ? Infinity : this.graceMs(), patient);

    // exponents: ours to every peer, then theirs (some may be here already)
    const mine = st.exps.subarray(this.rank * nchunks, (this.rank + 1) * nchunks);
    let tp = performance.now();
    const bad = chunkExpsInto(x, E, mine);
    tp = this.phase("exps", tp);
    if (bad > 0) {
      const i = x.findIndex((v) => !Number.isFinite(v));
      throw new NonFiniteGradientError(bad, i, Math.floor(i / E), x[i]);
    }
    st.haveExps[this.rank] = true;
    st.expsAt[this.rank] = performance.now();
    // One leader per round (rotating among the active members) gathers the
    // exponents and sends back the plan with their maximum: a member
    // receives one control packet per round instead of one per peer, which
    // keeps socket packets and wake-ups far below the data packets at small
    // sizes (N = 4 at 1 MiB: 1.5 instead of 3).
    if (st.leader !== this.rank) this.sendExps(st.leader, r, mine);
    for (const [first, piece] of this.earlyMax.get(r)?.get(st.leader) ?? []) this.storeShared(st, first, piece);
    for (const k of this.earlyMax.keys()) if (k <= r) this.earlyMax.delete(k);
    const early = this.early.get(r);
    if (early) {
      this.early.delete(r);
      for (const [rank, pieces] of early)
        for (const [first, ex] of pieces) this.storeExps(st, rank, r, first, new Uint8Array(ex.buffer, ex.byteOffset, ex.length));
    }
    for (const k of this.early.keys()) if (k < r) this.early.delete(k);

    const bank = r & 1;
    const bankBase = bank * this.cfg.chunks;
    const deadline = t0 + this.o.roundTimeoutMs;
    let interval = retransmitMs;
    let nextRetx = performance.now() + interval;
    const ringFd = this.ring.epollFd();
    const sockFd = this.sock.fd;
    for (;;) {
      // let signal handlers and timers run now and then (Ctrl-C mid-round),
      // across rounds too: short rounds never return to the event loop
      if (performance.now() - this.lastYield > 25) {
        await Bun.sleep(0);
        this.lastYield = performance.now();
        if (this.closed) throw new AinftpError(`round ${r}`, "communicator closed during the round");
      }
      // a member that finished this round and said so still lingers (close)
      // to resend results we may lack; one that had not finished it is gone
      const gone = [...this.left].filter(([, upTo]) => upTo <= r).map(([p]) => p);
      if (gone.length)
        throw new RoundError(`round ${r}`, `${describeRanks(gone, this.peers)} left the job before finishing this round`, gone,
          "every member must call allreduce the same number of times; restart the job with the remaining members");
      if (!st.sent && this.sharedReady(st)) {
        this.applyPlan(st);
        this.startContributions(st, x, bankBase);
        // (slots of ours that completed before we had the plan)
        const pending = st.pending.filter((c) => st.ownerIdx[this.rank] === c % st.K);
        if (pending.length) this.finish(st, bankBase, Uint32Array.from(pending));
        st.pending = [];
      }
      if (st.sent && !st.closedAtDeadline && st.ownedDoneCount < st.owned.length && performance.now() >= st.lastProgress + st.ownerGrace) {
        // the deadline: close our open slots with the contributions present
        st.closedAtDeadline = true;
        const open: number[] = [];
        for (const c of st.owned) if (!st.ownedDone[c]) open.push(c);
        if (open.length) {
          this.maps.closeSlots(r, open, { force: true, rank: this.rank, jobId: this.job, srcAddr: this.peers[this.rank] });
          this.stats.deadlineCloses += open.length;
        }
      }
      // (a passive member may hold results that came before its round began,
      // their events drained in the round before: look at the map then)
      if (st.sent && st.ownedDoneCount === st.owned.length && (st.resultsSeen >= nchunks - st.owned.length || (st.lookInMap && !this.xsk))) {
        st.lookInMap = false;
        if (this.xsk) break; // each result was counted once, when it was dequantized
        // results stored before the plan was known, from a rank that does not own them: asked for again
        const foreign = st.K ? coll.ainftp_results_drop_foreign(this.resBase, bankBase, nchunks, r + 1, Uint8Array.from(st.owners), st.K, this.rank) : 0;
        if (foreign) this.guard.count("not_owner", foreign);
        const missing = coll.ainftp_results_missing(this.resBase, bankBase, nchunks, r + 1, this.chunkList, this.capacity);
        if (missing === 0) break;
        st.resultsSeen = nchunks - st.owned.length - missing; // events and map disagree: trust the map
      }
      const now = performance.now();
      if (now >= deadline) await this.fail(st, bankBase);
      if (now >= nextRetx) {
        st.lookInMap = true;
        this.stats.timeouts++;
        this.retransmit(st, bankBase);
        interval = Math.min(interval * 2, this.o.maxRetransmitMs);
        nextRetx = now + interval;
      }
      // window-blocked: the wake-up for the results we wait on may be batched
      // with others, so look again soon
      const soon = st.sent && this.unsent(st) ? now + this.o.pumpMs : Infinity;
      // the round deadline matters to a leader still collecting and to an owner with open slots
      const due = !st.sent && st.leader === this.rank ? st.majorityAt + st.grace
        : st.sent && !st.closedAtDeadline && st.ownedDoneCount < st.owned.length ? st.lastProgress + st.ownerGrace : Infinity;
      const wait = Math.max(0, Math.min(this.o.maxWaitMs, Math.ceil(Math.min(nextRetx, deadline, soon, due) - now)));
      tp = this.phase("work", tp);
      const ready = coll.ainftp_wait3(ringFd, sockFd, this.xsk ? this.xsk.fd : -1, wait);
      tp = this.phase(st.sent ? "wait" : "control", tp);
      this.stats.wakeups++;
      if (ready & 2) this.drainControl(st);
      const progress = st.resultsSeen + st.ownedDoneCount + st.pending.length;
      this.drainEvents(st, bankBase);
      if (this.xsk) this.drainXsk(st);
      if (st.sent) this.retransmitGaps(st);
      if (st.resultsSeen + st.ownedDoneCount + st.pending.length !== progress) {
        st.lastProgress = performance.now();
        // results are flowing: nothing is lost yet, restart the timer
        interval = retransmitMs;
        nextRetx = performance.now() + interval;
      }
      if (st.sent) this.pump(st, x);
    }
    tp = this.phase("work", tp);
    // rx "xsk": the peers' results are in `out` already; ours are in our map
    const bad2 = this.xsk
      ? coll.ainftp_gather_list(this.resBase, bankBase, st.owned, st.owned.length, E, r + 1, out, out.length)
      : coll.ainftp_gather_results(this.resBase, bankBase, nchunks, E, r + 1, out, out.length);
    this.phase("gather", tp);
    if (bad2) throw new AinftpError(`round ${r}`, `${bad2} result entries changed while being read`);
    this.stats.rounds++;
    // done with round r: every active member finished r-1 (it contributed);
    // a round completed from the map alone moved no window yet
    if (this.cfg.roundBase < r) this.advanceWindow(r);
    // per member: a round it was active in (and, on our slots, not held in
    // quarantine), or one it sat out (passive, late, quarantined)
    const counted = st.active & (this.cfg.memberMask | (1n << BigInt(this.rank)));
    for (let k = 0; k < this.size; k++)
      if ((counted >> BigInt(k)) & 1n) this.roundsContributed[k]++;
      else this.roundsMissed[k]++;
    if (st.active !== (1n << BigInt(N)) - 1n) this.stats.partialRounds++;
    if (st.passive) this.stats.passiveRounds++;
    this.leaderNext = st.next;
    this.lateness = st.scores;
    if (this.sentry) this.sentryHousekeeping();
    const ms = performance.now() - t0;
    if (!st.patient) {
      // barriers wait for everyone: they say nothing of a normal round's time
      this.roundTimes.push(ms);
      if (this.roundTimes.length > DEADLINE_WINDOW) this.roundTimes.shift();
    }
    const active: number[] = [];
    for (let k = 0; k < N; k++) if ((st.active >> BigInt(k)) & 1n) active.push(k);
    return { round: r, ms, chunks: nchunks, active, leader: st.leader };
  }

  private buffers = new Map<string, Uint8Array>();

  /** A buffer reused across rounds (a fresh 10 MB array per round costs
   * thousands of page faults). Its contents are whatever the last round left. */
  private scratch(name: string, bytes: number): Uint8Array {
    let b = this.buffers.get(name);
    if (!b || b.length < bytes) this.buffers.set(name, (b = new Uint8Array(bytes)));
    return b.subarray(0, bytes);
  }

  private newRound(r: number, x: Float32Array, out: Float32Array, nchunks: number, t0: number, grace: number, patient = false): RoundState {
    const N = this.size;
    const E = this.chunkElems;
    const counts = new Uint16Array(nchunks).fill(E);
    counts[nchunks - 1] = x.length - (nchunks - 1) * E;
    // We finished round r-1, so we need nothing older: a member that sat
    // the last round out saw none of its events, which move the window.
    if (this.cfg.roundBase < r - 1) this.advanceWindow(r - 1);
    // Until the plan is here, our slots of this round wait for every member
    // (bank mask 0: the member mask); the plan can only shrink that set.
    const bankMask: [bigint, bigint] = [...(this.cfg.bankMask ?? [0n, 0n])];
    bankMask[r & 1] = 0n;
    this.cfg = { ...this.cfg, memberMask: this.expectedMask(r), bankMask };
    this.maps.setConfig(this.cfg);
    const empty = new Uint32Array(0);
    return {
      r, t0, n: x.length, nchunks, counts,
      exps: new Int8Array(N * nchunks), haveExps: new Array(N).fill(false), expsAt: new Float64Array(N),
      leader: this.liveFrom(this.leaderNext), haveShared: false, sharedPieces: new Set(),
      pieces: Array.from({ length: N }, () => new Set<number>()), shared: new Int8Array(nchunks),
      active: 0n, next: 0, scores: new Uint8Array(N), ownerIdx: new Int32Array(N).fill(-1), K: 0, owners: [], passive: false,
      grace, patient, lookInMap: false, majorityAt: Infinity, lastProgress: t0, ownerGrace: Math.max(grace, 2 * this.o.maxRetransmitMs), closedAtDeadline: false,
      owned: empty, ownedDone: new Uint8Array(nchunks), ownedDoneCount: 0, pending: [], summed: new Uint16Array(nchunks), resultsSeen: 0, sent: false,
      x, recs: this.earlyRecs.get(r) ?? new Map(),
      header: new Uint8Array(HDR), seed: 0, pos: new Array(N).fill(0), acked: new Array(N).fill(0),
      sendBuf: empty as unknown as Uint8Array, ownerOffset: new Array(N).fill(0), ownerChunks: Array.from({ length: N }, () => empty),
      ownBuf: new Uint8Array(0), xdone: this.scratch("xdone", nchunks).fill(0), out,
      sentAt: new Float64Array(nchunks), tries: new Uint8Array(nchunks),
      lowest: new Array(N).fill(0), furthest: new Array(N).fill(-1),
    };
  }

  /** The plan is known: chunk c is owned by the active member of index
   * c % K. Lays out what we send and own, and tells the program whom our
   * slots of this round wait for. */
  private applyPlan(st: RoundState): void {
    const N = this.size;
    let K = 0;
    for (let k = 0; k < N; k++) st.ownerIdx[k] = (st.active >> BigInt(k)) & 1n ? (st.owners.push(k), K++) : -1;
    st.K = K;
    st.passive = st.ownerIdx[this.rank] < 0;
    // results of this round only from their chunk's owner (the program checks)
    if (K > 0) this.maps.setPlan(st.r, st.owners);
    let off = 0;
    for (let o = 0; o < N; o++) {
      const i = st.ownerIdx[o];
      const n = i >= 0 && i < st.nchunks ? Math.ceil((st.nchunks - i) / K) : 0;
      const list = new Uint32Array(n);
      for (let k = 0; k < n; k++) list[k] = i + k * K;
      st.ownerChunks[o] = list;
      st.ownerOffset[o] = off;
      if (o !== this.rank && !st.passive) off += n * this.seg;
    }
    st.sendBuf = this.scratch("send", off);
    st.owned = st.ownerChunks[this.rank];
    st.ownBuf = this.scratch("own", st.owned.length * this.seg);
    const others = st.active & this.othersMask();
    const bankMask: [bigint, bigint] = [...(this.cfg.bankMask ?? [0n, 0n])];
    bankMask[st.r & 1] = others === this.othersMask() ? 0n : others;
    // the program's end-of-round wake-ups for this round
    this.cfg = { ...this.cfg, ownedChunks: st.owned.length, resultsPerRound: st.nchunks - st.owned.length, bankMask };
    this.maps.setConfig(this.cfg);
    // contributions that came before the plan waited for everyone: close
    // the slots that already hold every active member
    if (bankMask[st.r & 1] !== 0n && st.owned.length)
      this.maps.closeSlots(st.r, st.owned, { force: false, rank: this.rank, jobId: this.job, srcAddr: this.peers[this.rank] });
  }

  /** Shared scale known: quantize our own chunks for the finishing step and
   * start the reduce-scatter. */
  private startContributions(st: RoundState, x: Float32Array, bankBase: number): void {
    st.sent = true;
    st.lookInMap = true;
    st.lastProgress = performance.now();
    if (st.passive) return; // we send nothing this round: results come to us
    st.header = headerTemplate({ type: PKT_CONTRIB, jobId: this.job, round: st.r, rank: this.rank });
    st.seed = this.o.stochasticSeed ? (this.o.stochasticSeed ^ st.r) >>> 0 || 1 : 0;
    if (st.owned.length)
      this.stats.saturations += packChunks(x, {
        chunkElems: this.chunkElems, chunks: st.owned, exps: st.shared, header: st.header, out: st.ownBuf, stride: this.seg, seed: st.seed,
      });
    if (st.K === 1 && st.owned.length) {
      // the only active member: no contribution will come, finish alone
      for (const c of st.owned) st.ownedDone[c] = 1;
      this.finish(st, bankBase, Uint32Array.from(st.owned));
      return;
    }
    this.pump(st, x);
  }

  /** Reduce-scatter, self-clocked: quantize and send the chunks we do not
   * own, owners interleaved, keeping at most `window` chunks per owner whose
   * result has not come back. A receiver's queue (veth: 256 frames) is never
   * flooded, and every result that arrives lets one more chunk go. */
  private pump(st: RoundState, x: Float32Array): void {
    if (st.passive) return;
    const W = this.o.window;
    for (let more = true; more; ) {
      more = false;
      for (let o = 0; o < this.size; o++) {
        if (o === this.rank) continue;
        const list = st.ownerChunks[o];
        const from = st.pos[o];
        const room = W - (from - st.acked[o]);
        if (from >= list.length || room <= 0) continue;
        const to = Math.min(list.length, from + Math.min(SEND_PIECE, room));
        const region = st.sendBuf.subarray(st.ownerOffset[o] + from * this.seg, st.ownerOffset[o] + to * this.seg);
        this.stats.saturations += packChunks(x, {
          chunkElems: this.chunkElems, chunks: list.subarray(from, to), exps: st.shared, header: st.header, out: region,
          stride: this.seg, seed: st.seed,
        });
        const last = list[to - 1];
        this.sealData(region, to - from);
        this.stats.packetsSent += this.sock.sendGso(this.peers[o], this.port, region, this.seg, to - from, this.wireBytes(st.counts[last]));
        const now = performance.now();
        for (let k = from; k < to; k++) st.sentAt[list[k]] = now;
        st.pos[o] = to;
        if (to < list.length && W - (to - st.acked[o]) > 0) more = true;
      }
    }
  }

  /** Chunks we still have to send (window-blocked). */
  private unsent(st: RoundState): boolean {
    for (let o = 0; o < this.size; o++) if (o !== this.rank && st.pos[o] < st.ownerChunks[o].length) return true;
    return false;
  }

  /** Reads the program's events: finish completed slots, count results,
   * serve resend requests, and move the window. */
  private drainEvents(st: RoundState | null, bankBase: number): void {
    if (this.contribs) this.drainContribs(st);
    const raw = this.ring.raw;
    const done = this.chunkList;
    for (;;) {
      const n = this.ring.pollRaw(0);
      if (n === 0) return;
      let nd = 0;
      const resends: number[] = [];
      for (let i = 0; i < n; i++) {
        const type = raw[4 * i] & 0xffff;
        const round = raw[4 * i + 1];
        const chunk = raw[4 * i + 2];
        if (type === EV_RESEND) {
          resends.push(round, chunk, raw[4 * i] >>> 16);
          continue;
        }
        if (!st) continue;
        if (round > this.cfg.roundBase && round === st.r) this.advanceWindow(round);
        if (type === EV_SLOT_COMPLETE) {
          if (round === st.r && chunk < st.nchunks && !st.ownedDone[chunk]) {
            st.ownedDone[chunk] = 1;
            st.summed[chunk] = raw[4 * i] >>> 16;
            done[nd++] = chunk;
          }
        } else if (type === EV_RESULT) {
          if (round === st.r && chunk < st.nchunks && !st.xdone[chunk]) {
            st.resultsSeen++;
            this.gotResult(st, chunk);
          }
        }
      }
      if (nd && st) {
        // a slot can complete before we have every exponent (the others had
        // ours first): our own chunk is not quantized yet, so finish later
        if (st.sent) this.finish(st, bankBase, done.subarray(0, nd));
        else for (let i = 0; i < nd; i++) st.pending.push(done[i]);
      }
      for (let i = 0; i < resends.length; i += 3) this.resend(resends[i], resends[i + 1], resends[i + 2]);
    }
  }

  /** rx "xsk": dequantize the results waiting in the socket's UMEM frames. */
  private drainXsk(st: RoundState): void {
    const newly = this.chunkList;
    const n = this.xsk!.results(this.job, st.r, st.nchunks, this.chunkElems, st.out, st.xdone, newly);
    if (n === 0) return;
    if (st.r > this.cfg.roundBase) this.advanceWindow(st.r); // a result of round r: everyone finished r-1
    st.resultsSeen += n;
    for (let i = 0; i < Math.min(n, newly.length); i++) this.gotResult(st, newly[i]);
  }

  private gotResult(st: RoundState, chunk: number): void {
    const o = ownerOf(st, chunk);
    st.xdone[chunk] = 1;
    st.acked[o]++;
    const k = Math.floor(chunk / st.K);
    if (k > st.furthest[o]) st.furthest[o] = k;
  }

  /** Fast retransmit: an owner completes slots in the order we (and every
   * member) sent them, so a missing result well behind one that arrived
   * means a lost packet. Send those chunks again now instead of waiting for
   * the timer (which only fires when nothing at all moves). */
  private retransmitGaps(st: RoundState): void {
    const now = performance.now();
    for (let o = 0; o < this.size; o++) {
      if (o === this.rank) continue;
      const list = st.ownerChunks[o];
      while (st.lowest[o] < st.pos[o] && st.xdone[list[st.lowest[o]]]) st.lowest[o]++;
      const upto = Math.min(st.pos[o], st.furthest[o] - GAP_BEHIND);
      let late: number[] | null = null;
      for (let k = st.lowest[o]; k < upto; k++) {
        const c = list[k];
        if (st.xdone[c] || now - st.sentAt[c] < GAP_MS * (1 << Math.min(st.tries[c], 5))) continue;
        (late ??= []).push(c);
      }
      if (late) this.sendAgain(st, o, late);
    }
  }

  /** Chunks whose result has not arrived (listed in this.chunkList); returns how many. */
  private missingResults(st: RoundState, bankBase: number): number {
    if (!this.xsk) return coll.ainftp_results_missing(this.resBase, bankBase, st.nchunks, st.r + 1, this.chunkList, this.capacity);
    let m = 0;
    for (let c = 0; c < st.nchunks; c++)
      if (!st.xdone[c] && ownerOf(st, c) !== this.rank) this.chunkList[m++] = c;
      else if (ownerOf(st, c) === this.rank && !st.ownedDone[c]) this.chunkList[m++] = c;
    return m;
  }

  /** Every peer has finished round-1: accept round+1, reuse round-1's bank. */
  private advanceWindow(round: number): void {
    this.maps.resetBank((round + 1) & 1);
    this.cfg = { ...this.cfg, roundBase: round };
    this.maps.setConfig(this.cfg);
  }

  /** Owner's step for completed slots: requantize with our own chunk, store,
   * and send the results to every peer. */
  private finish(st: RoundState, bankBase: number, chunks: Uint32Array): void {
    // GSO wants every segment but the last one full: the short chunk goes last
    const short = st.counts[st.nchunks - 1] < this.chunkElems ? st.nchunks - 1 : -1;
    if (short >= 0) {
      const at = chunks.indexOf(short);
      if (at >= 0 && at !== chunks.length - 1) (chunks[at] = chunks[chunks.length - 1]), (chunks[chunks.length - 1] = short);
    }
    if (this.sentry) this.judge(st, bankBase, chunks);
    if (this.robust) return this.finishRobust(st, bankBase, chunks);
    const tmpl = headerTemplate({ type: PKT_CONTRIB, jobId: this.job, round: st.r, rank: this.rank });
    const n = coll.ainftp_finish_batch(
      this.accBase, this.resBase, bankBase, chunks, chunks.length, st.summed,
      st.ownBuf.subarray(HDR), st.K, this.seg / 2, st.counts, st.shared, tmpl, this.resPkts, this.seg,
    );
    if (n < 0) throw new AinftpError(`round ${st.r}`, "finishing a slot failed (bad count)");
    st.ownedDoneCount += n;
    this.cacheResults(st, chunks, n);
    const lastSize = this.wireBytes(st.counts[chunks[chunks.length - 1]]);
    this.sealData(this.resPkts, n);
    for (const p of this.others()) this.stats.packetsSent += this.sock.sendGso(this.peers[p], this.port, this.resPkts, this.seg, n, lastSize);
  }

  /** Keeps the result packets we send for CACHE_ROUNDS rounds: a member
   * that fell behind (it sat rounds out, or lost a result while we moved
   * two rounds on) asks for them after our results map's bank moved on.
   * One copy of what we send (16 MiB over 4 hosts: 2 MB a round). */
  private cacheResults(st: RoundState, chunks: Uint32Array, n: number): void {
    const slot = st.r % CACHE_ROUNDS;
    let e = this.resultRing[slot];
    if (!e || e.round !== st.r) {
      const bytes = st.owned.length * this.seg;
      const buf = e && e.buf.length >= bytes ? e.buf : new Uint8Array(bytes);
      e = this.resultRing[slot] = { round: st.r, buf, at: (e?.at ?? new Int32Array(this.capacity)).fill(-1), used: 0 };
    }
    if (e.used + n * this.seg > e.buf.length) return;
    // the batch's packets lie one after another: one copy
    e.buf.set(this.resPkts.subarray(0, n * this.seg), e.used);
    for (let i = 0; i < n; i++) e.at[chunks[i]] = e.used + i * this.seg;
    e.used += n * this.seg;
  }

  /** Robust modes: files the contributions the program copied to the ring
   * (one per rank and chunk; a retransmission's copy is a duplicate). */
  private drainContribs(st: RoundState | null): void {
    const ring = this.contribs!;
    const rec = SIZEOF.ainftp_contrib_rec;
    for (let n; (n = ring.pollRaw(0)) > 0; ) {
      const b = ring.bytes;
      for (let i = 0; i < n; i++) {
        const dv = new DataView(b.buffer, i * rec, 16);
        const round = dv.getUint32(0, true), chunk = dv.getUint32(4, true), rank = dv.getUint16(8, true);
        const count = Math.min(dv.getUint16(10, true), this.chunkElems);
        let byChunk: Map<number, Map<number, { exp: number; q: Int16Array }>>;
        if (st && round === st.r) byChunk = st.recs;
        else if (round > (st?.r ?? this.nextRound - 1)) {
          let m = this.earlyRecs.get(round);
          if (!m) this.earlyRecs.set(round, (m = new Map()));
          byChunk = m;
        } else continue; // an old round's retransmission
        let ranks = byChunk.get(chunk);
        if (!ranks) byChunk.set(chunk, (ranks = new Map()));
        if (!ranks.has(rank)) ranks.set(rank, { exp: dv.getInt16(12, true), q: new Int16Array(b.buffer.slice(i * rec + 16, i * rec + 16 + 2 * count)) });
      }
    }
    if (st) for (const k of this.earlyRecs.keys()) if (k <= st.r) this.earlyRecs.delete(k);
  }

  /** Robust modes: combine each completed chunk's contributions (ours from
   * x, the others' from the ring), publish the result in our results map and
   * send it to every member. */
  private finishRobust(st: RoundState, bankBase: number, chunks: Uint32Array): void {
    this.drainContribs(st);
    const E = this.chunkElems;
    const out = new Float32Array(E);
    const exp = new Int8Array(1);
    const pkts = new DataView(this.resPkts.buffer);
    chunks.forEach((c, i) => {
      const count = st.counts[c];
      const recs: { q: Int16Array; exp: number }[] = [];
      const ranks = [this.rank];
      for (const [rank, rec] of st.recs.get(c) ?? []) {
        if (rank === this.rank || rank >= this.size || rec.q.length !== count) continue;
        recs.push(rec);
        ranks.push(rank);
      }
      st.recs.delete(c);
      const agg = out.subarray(0, count);
      this.robust!.combineQuantized(robustKey(c, count), st.x.subarray(c * E, c * E + count), recs, ranks, agg);
      cChunkExps(agg, count, exp);
      const entry = this.maps.resultEntry(bankBase + c);
      cQuantize(agg, exp[0], entry.v.subarray(0, count), 0);
      entry.publish(st.r + 1, count, ranks.length, exp[0]);
      writeHeader(pkts, i * this.seg, {
        type: PKT_RESULT, jobId: this.job, round: st.r, chunk: c, rank: this.rank, count, exp: exp[0], contributors: ranks.length,
      });
      this.resPkts.set(new Uint8Array(entry.v.buffer, entry.v.byteOffset, 2 * count), i * this.seg + HDR);
    });
    st.ownedDoneCount += chunks.length;
    this.cacheResults(st, chunks, chunks.length);
    const lastSize = this.wireBytes(st.counts[chunks[chunks.length - 1]]);
    this.sealData(this.resPkts, chunks.length);
    for (const p of this.others()) this.stats.packetsSent += this.sock.sendGso(this.peers[p], this.port, this.resPkts, this.seg, chunks.length, lastSize);
  }

  /** Members whose contributions our slots wait for in round r: the others,
   * less those the sentry holds in quarantine. */
  private expectedMask(r: number): bigint {
    if (!this.sentry) return this.othersMask();
    const q = this.sentry.quarantinedMask(r) & this.othersMask();
    if (q !== this.quarantined) {
      const changed = [...Array(this.size).keys()].filter((k) => ((q ^ this.quarantined) >> BigInt(k)) & 1n);
      this.quarantined = q;
      this.o.onQuarantine?.(changed, r);
    }
    return this.othersMask() & ~q;
  }

  /** The sentry's part of finishing owned slots: learn from the energies the
   * program recorded, strike the rejected, and set each chunk's band before
   * its result goes out (so no contribution of the next round meets the old
   * band). A slot read (a syscall) only when some contribution was dropped. */
  private judge(st: RoundState, bankBase: number, chunks: Uint32Array): void {
    const keeper = this.sentry!;
    const gates = this.maps.gates();
    const bank = this.cfg.bankMask?.[st.r & 1] ?? 0n;
    const expected = this.cfg.memberMask & (bank === 0n ? ~0n : bank);
    let full = 0;
    for (let m = expected; m; m &= m - 1n) full++;
    let quarantine = false;
    for (const c of chunks) {
      let seen = expected;
      let rejected = 0n;
      if (st.summed[c] < full) {
        const slot = this.maps.slot(bankBase + c);
        seen = slot.seen;
        rejected = slot.rejected;
      }
      const obs = this.maps.obs(bankBase + c);
      const at = gateIndex(c, st.counts[c] !== this.chunkElems);
      if (keeper.observe(st.r, at, seen, rejected, obs.energy).length) quarantine = true;
      [gates[2 * at], gates[2 * at + 1]] = keeper.band(at);
    }
    if (quarantine) {
      // stop waiting for them at once, in this round's open slots too
      this.cfg = { ...this.cfg, memberMask: this.expectedMask(st.r) };
      this.maps.setConfig(this.cfg);
    }
  }

  /** The program's per-rank counts of the contributions its sentry accepted
   * and rejected (for our chunks, since the communicator opened). */
  sentryCounts(): { accepted: number; rejected: number }[] {
    return this.maps.sentryWorkers(this.size);
  }

  /** Re-admits a quarantined member (an operator's decision). */
  readmit(rank: number): void {
    this.sentry?.readmit(rank);
  }

  private lastPublish = 0;

  /** At most twice a second, between rounds (no file system calls in every
   * round): take operators' re-admissions (ainftp sentry readmit) and publish
   * the sentry's state for `ainftp sentry status`. */
  private sentryHousekeeping(): void {
    const now = Date.now();
    if (now - this.lastPublish < 500) return;
    this.lastPublish = now;
    const root = this.o.pinRoot;
    for (const rank of takeReadmits(readmitPath(this.o.iface, root))) if (rank >= 0 && rank < this.size) this.readmit(rank);
    try {
      publishState(statePath(this.o.iface, root), {
        ...this.sentry!.status(), iface: this.o.iface, job: this.job, rank: this.rank, peers: [...this.peers], pid: process.pid, updated: now,
      });
    } catch {
      // /run not writable: status then shows the kernel's counts only
    }
  }

  /** Per chunk of the last round: contributions its result holds (the
   * owner's own included). Fewer than the members when the sentry dropped
   * some or a member was quarantined. */
  contributorsOf(round: number, chunks: number): Uint16Array {
    const out = new Uint16Array(chunks);
    const base = (round & 1) * this.cfg.chunks;
    for (let c = 0; c < chunks; c++) out[c] = this.maps.result(base + c).contributors;
    return out;
  }

  /** A peer lost our result for (round, chunk): send the stored one again. */
  private resend(round: number, chunk: number, rank: number): void {
    if (rank >= this.size || rank === this.rank) return;
    const tmpl = headerTemplate({ type: PKT_CONTRIB, jobId: this.job, round, rank: this.rank });
    const one = new Uint32Array([chunk]);
    const pkt = new Uint8Array(this.seg);
    let len: number;
    if (chunk >= this.cfg.chunks) return this.guard.count("bad_chunk");
    if (coll.ainftp_result_packets(this.resBase, (round & 1) * this.cfg.chunks, this.cfg.chunks, one, 1, tmpl, pkt, this.seg) === 1) {
      len = this.wireBytes(new DataView(pkt.buffer).getUint16(22, true));
    } else {
      // the bank holds a newer round now: a passive member fell behind
      const e = this.resultRing[round % CACHE_ROUNDS];
      const at = e && e.round === round && chunk < e.at.length ? e.at[chunk] : -1;
      if (at < 0) return;
      pkt.set(e.buf.subarray(at, at + this.seg));
      const h = new DataView(pkt.buffer);
      h.setUint16(2 + 4, F_RETRANSMIT, true);
      len = this.wireBytes(h.getUint16(22, true));
    }
    this.sealData(pkt, 1);
    this.stats.packetsSent += this.sock.sendGso(this.peers[rank], this.port, pkt, len, 1);
    this.stats.resends++;
  }

  /** No progress for a while: ask again for missing exponents, or send again
   * the contributions whose results have not come back. */
  private retransmit(st: RoundState, bankBase: number): void {
    if (!st.sent) {
      const mine = st.exps.subarray(this.rank * st.nchunks, (this.rank + 1) * st.nchunks);
      for (const p of this.expsAwaited(st)) this.sendExps(p, st.r, mine, CTRL_EXPS_REQ);
      return;
    }
    const m = this.missingResults(st, bankBase);
    const byOwner = new Map<number, number[]>();
    for (let i = 0; i < Math.min(m, this.capacity); i++) {
      const c = this.chunkList[i];
      const o = ownerOf(st, c);
      if (o === this.rank || (!st.passive && Math.floor(c / st.K) >= st.pos[o])) continue;
      let l = byOwner.get(o);
      if (!l) byOwner.set(o, (l = []));
      l.push(c);
    }
    for (const [o, list] of byOwner) {
      // our contributions again (the owner may lack them), and the results
      // asked for by name: an owner that moved two rounds on answers from
      // its cache, which its program's window no longer reaches. A passive
      // member sent nothing: it only asks.
      if (!st.passive) this.sendAgain(st, o, list);
      for (let i = 0; i < list.length; i += CTRL_PAYLOAD / 4) {
        const part = Uint32Array.from(list.slice(i, i + CTRL_PAYLOAD / 4));
        this.sendControl(o, CTRL_RESULT_REQ, st.r, 0, 0, new Uint8Array(part.buffer));
      }
      if (st.passive) this.stats.retransmits += list.length;
    }
  }

  /** Sends the listed chunks (all owned by o, in order) to o again, flagged as
   * retransmissions so a completed slot answers with its stored result. */
  private sendAgain(st: RoundState, o: number, list: number[]): void {
    const stage = new Uint8Array(list.length * this.seg);
    const now = performance.now();
    list.forEach((c, i) => {
      const k = Math.floor(c / st.K);
      stage.set(st.sendBuf.subarray(st.ownerOffset[o] + k * this.seg, st.ownerOffset[o] + (k + 1) * this.seg), i * this.seg);
      st.sentAt[c] = now;
      if (st.tries[c] < 255) st.tries[c]++;
    });
    coll.ainftp_set_flags(stage, list.length, this.seg, F_RETRANSMIT);
    this.sealData(stage, list.length);
    // the short chunk, if any, is the owner's last: keep it last
    const lastSize = this.wireBytes(st.counts[list[list.length - 1]]);
    this.stats.packetsSent += this.sock.sendGso(this.peers[o], this.port, stage, this.seg, list.length, lastSize);
    this.stats.retransmits += list.length;
  }

  /** Whom we wait for before the shared scale is known: the leader, or (as
   * the leader, or with two members) those whose exponents we lack. */
  private expsAwaited(st: RoundState): number[] {
    if (st.leader !== this.rank) return st.haveShared ? [] : [st.leader];
    return this.others().filter((p) => !st.haveExps[p] && (this.fitMask >> BigInt(p)) & 1n);
  }

  /** Ranks we wait for in this round: whose exponents we lack, or whose
   * contributions our incomplete owned slots lack. */
  private waitingFor(st: RoundState, bankBase: number): bigint {
    let mask = 0n;
    if (!st.sent) {
      for (const p of this.expsAwaited(st)) mask |= 1n << BigInt(p);
      return mask;
    }
    for (let i = 0; i < st.owned.length; i++) {
      const c = st.owned[i];
      if (st.ownedDone[c]) continue;
      const slot = this.maps.slot(bankBase + c);
      const seen = slot.tag === st.r + 1 ? slot.seen : 0n;
      for (const p of this.others()) if (!(seen & (1n << BigInt(p))) && (st.active >> BigInt(p)) & 1n) mask |= 1n << BigInt(p);
    }
    return mask;
  }

  /** The round missed its deadline: say who is missing. Every member is
   * asked whom it waits for (and so shown alive), so that a live member
   * blocked by a dead one is not blamed for it. */
  private async fail(st: RoundState, bankBase: number): Promise<never> {
    // whom we wait for, and for how many chunks
    const waitsOn = new Map<number, string>();
    if (!st.sent) {
      for (const p of this.expsAwaited(st)) waitsOn.set(p, p === st.leader ? "the round's shared scale, which it gathers" : "its scale exponents");
    } else {
      const perRank = new Map<number, number>();
      for (let i = 0; i < st.owned.length; i++) {
        const c = st.owned[i];
        if (st.ownedDone[c]) continue;
        const slot = this.maps.slot(bankBase + c);
        const seen = slot.tag === st.r + 1 ? slot.seen : 0n;
        for (const p of this.others())
          if (!(seen & (1n << BigInt(p))) && (st.active >> BigInt(p)) & 1n) perRank.set(p, (perRank.get(p) ?? 0) + 1);
      }
      for (const [p, k] of perRank) waitsOn.set(p, `its contributions to ${k} of our chunks`);
      const m = this.missingResults(st, bankBase);
      const owners = new Map<number, number>();
      for (let i = 0; i < Math.min(m, this.capacity); i++) {
        const o = ownerOf(st, this.chunkList[i]);
        if (o !== this.rank) owners.set(o, (owners.get(o) ?? 0) + 1);
      }
      for (const [o, k] of owners) waitsOn.set(o, `${waitsOn.has(o) ? waitsOn.get(o) + " and " : ""}results for ${k} chunks`);
    }
    // ask everyone (answering their questions meanwhile)
    this.statusAnswers.clear();
    for (const p of this.others()) this.sendControl(p, CTRL_STATUS_REQ, st.r, 0, 0, new Uint8Array(0));
    const until = performance.now() + STATUS_WAIT_MS;
    while (performance.now() < until) {
      coll.ainftp_wait3(this.sock.fd, -1, -1, Math.max(1, Math.ceil(until - performance.now())));
      this.drainControl(st);
      await Bun.sleep(0);
    }
    const alive = new Set(this.statusAnswers.keys());
    // the dead: silent members; failing that, whom the members we wait for wait on
    const missing = new Set([...waitsOn.keys()].filter((p) => !alive.has(p)));
    if (missing.size === 0)
      for (const p of waitsOn.keys())
        for (const q of this.others())
          if (q !== p && (this.statusAnswers.get(p) ?? 0n) & (1n << BigInt(q))) missing.add(q);
    if (missing.size === 0) for (const p of waitsOn.keys()) missing.add(p);
    const parts: string[] = [];
    for (const [p, what] of waitsOn) {
      const swarm = this.describeMember?.(p);
      if (!alive.has(p)) parts.push(`${describeRanks([p], this.peers)} does not answer (we lack ${what})${swarm ? `; ${swarm}` : ""}`);
      else {
        const its = this.others().filter((q) => q !== p && (this.statusAnswers.get(p)! & (1n << BigInt(q))));
        parts.push(`${describeRanks([p], this.peers)} is alive but ${its.length ? `waits for ${describeRanks(its, this.peers)}` : "waits for no one"} (we lack ${what})`);
      }
    }
    const ranks = [...missing].sort((a, b) => a - b);
    // the next round's leader: the plan's choice is lost with this round,
    // so every survivor takes the first live member after this leader
    this.leaderNext = this.liveFrom((st.leader + 1) % this.size);
    throw new RoundError(`round ${st.r}`, `not complete after ${this.o.roundTimeoutMs} ms: missing ${describeRanks(ranks, this.peers)}; ${parts.join("; ")}`, ranks,
      "check that those members are running and attached; a member that died must be restarted with the whole job");
  }

  /** Adds the time since `from` to a phase; returns now. */
  private phase(name: keyof CollectiveStats["phaseMs"], from: number, now = performance.now()): number {
    this.stats.phaseMs[name] += now - from;
    return now;
  }

  /** XDP counters of the attached program. */
  counters(): Counters {
    return this.maps.counters();
  }

  /** Leaves at once (Ctrl-C): tells the peers that the current round will not
   * complete, so they fail it now instead of at its deadline. */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.sentry) removeState(this.o.iface, this.o.pinRoot);
    try {
      for (const p of this.others()) this.sendControl(p, CTRL_BYE, this.nextRound - 1, 0, 0, new Uint8Array(0));
    } catch {
      // leaving anyway
    }
    this.sock.close();
    this.xsk?.close();
    this.contribs?.close();
    this.maps.close();
  }

  /** Leaves the job: tells the peers, then keeps serving resend requests
   * until every peer has left too (or lingerMs passes, by default the round
   * bound), so a peer that lost one of our results can still finish its
   * last round. */
  close(lingerMs = this.o.roundTimeoutMs): void {
    if (this.closed) return;
    this.closed = true;
    if (this.sentry) removeState(this.o.iface, this.o.pinRoot);
    try {
      const bye = (all = false) => {
        for (const p of this.others()) if (all || !this.left.has(p)) this.sendControl(p, CTRL_BYE, this.nextRound, 0, 0, new Uint8Array(0));
      };
      bye();
      const end = performance.now() + lingerMs;
      const ringFd = this.ring.epollFd();
      let again = performance.now() + 100;
      // (a member the swarm holds dead will not say goodbye)
      const waiting = () => this.others().some((p) => !this.left.has(p) && (this.liveMask >> BigInt(p)) & 1n);
      while (waiting() && performance.now() < end) {
        // a lost BYE must not keep a peer lingering for the whole bound
        if (performance.now() >= again) (bye(), (again = performance.now() + 100));
        coll.ainftp_wait3(ringFd, this.sock.fd, -1, Math.max(1, Math.ceil(Math.min(50, end - performance.now()))));
        this.drainControl(null);
        this.drainEvents(null, 0);
      }
      // peers that are lingering for us may have lost our BYE: say it twice more
      for (let i = 0; i < 2; i++) {
        Bun.sleepSync(30);
        bye(true);
      }
    } catch {
      // leaving anyway
    }
    this.sock.close();
    this.xsk?.close();
    this.contribs?.close();
    this.maps.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The active member that owns chunk c in the round's plan. */
function ownerOf(st: RoundState, c: number): number {
  return st.owners[c % st.K];
}

function describeRanks(ranks: number[], peers: readonly string[]): string {
  if (ranks.length === 0) return "no rank";
  return ranks.map((r) => `rank ${r} (${peers[r]})`).join(", ");
}

