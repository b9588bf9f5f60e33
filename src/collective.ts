// The collective: an int16 all-reduce across hosts through the XDP engine.
//
// One round all-reduces a segment of up to `capacity` chunks (the chunks the
// attached program's maps were sized for); a longer vector takes several
// rounds. Chunk c of a round is owned by rank c % N. A round:
//   1. scale: every rank computes each chunk's smallest exponent and sends it
//      to every peer (CONTROL/EXPS); the shared scale is the maximum
//      (THC-style agreement before sending, so no value can saturate).
//   2. reduce-scatter: each rank quantizes the chunks it does not own and
//      sends them to their owners with UDP GSO, interleaving owners so every
//      owner's XDP program starts summing at once.
//   3. the owner's XDP program sums the N-1 contributions; on completion the
//      owner adds its own chunk, requantizes (integer math: bit-identical
//      everywhere), stores the result in its own results map and sends it to
//      every peer, whose XDP program writes it straight into their results map.
//   4. every rank dequantizes the round's results from its results map.
// Loss: a rank missing results retransmits its contributions (flagged); a
// retransmit to a completed slot makes the owner's XDP program raise a
// resend event and the owner sends the stored result again (SwitchML).
// The window: the program accepts rounds [base, base+1]. An event of round r
// proves every peer finished round r-1, so the base moves to r then.
import type { Pointer } from "bun:ffi";
import { join } from "node:path";
import { coll } from "../native/collective.ts";
import {
  CFG_CHECK_SOURCE, CFG_CONTRIBS_TO_RING, CFG_RESULTS_TO_XSK, CFG_SENTRY, CTRL_BYE, CTRL_STATUS, CTRL_STATUS_REQ, CTRL_EXPS, CTRL_EXPS_MAX, CTRL_EXPS_REQ, CTRL_MEMBER, CTRL_HELLO, EV_RESEND, EV_RESULT, EV_SLOT_COMPLETE,
  F_RETRANSMIT, MAGIC, MAX_WORKERS, PKT_CONTRIB, PKT_CONTROL, PKT_RESULT, SIZEOF, VERSION, readHeader, writeHeader,
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
  /** Per rank: offsets of the exponent pieces received. */
  pieces: Set<number>[];
  haveExps: boolean[];
  /** The rank that collects every member's exponents and sends back their
   * maximum (-1: with two members, each sends its own to the other). */
  leader: number;
  /** Leader: sent the maximum; others: received it (pieces in sharedPieces). */
  haveShared: boolean;
  sharedPieces: Set<number>;
  shared: Int8Array;
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
    phaseMs: { exps: 0, control: 0, work: 0, wait: 0, gather: 0 },
  };

  private maps: PinnedReflex;
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
    this.seg = HDR + 2 * this.chunkElems;
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
    return JSON.stringify({ v: VERSION, job: this.job, peers: this.peers, chunkElems: this.chunkElems, port: this.port });
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
    // only members' addresses may speak for their ranks
    this.maps.setMemberAddrs(this.peers.map((p) => ipv4ToBe32(p)));
    this.cfg = {
      ...this.cfg, jobId: this.job, roundBase: first, members: this.size, memberMask: this.othersMask(), batch: this.o.batch,
      flags: ((this.cfg.flags ?? 0) & ~(CFG_RESULTS_TO_XSK | CFG_SENTRY)) | CFG_CHECK_SOURCE |
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
    this.sock.sendGso(addr, this.port, b, HDR + payload.length, 1);
    this.stats.packetsSent++;
  }

  /** A control packet from a member of this job, or null. A HELLO is
   * returned from anyone (with `member` false when its job, rank or address
   * does not match ours), so a mismatch can be reported instead of ignored. */
  private parseControl(d: Uint8Array, from: string) {
    if (d.length < HDR) return null;
    const h = readHeader(new DataView(d.buffer, d.byteOffset, d.byteLength), 0);
    if (h.magic !== MAGIC || h.version !== VERSION || h.type !== PKT_CONTROL || h.count !== d.length - HDR) return null;
    const member = h.jobId === this.job && h.rank < this.size && this.peers[h.rank] === from;
    if (!member && h.contributors !== CTRL_HELLO) return null;
    this.stats.controlReceived++;
    return { kind: h.contributors, rank: h.rank, round: h.round, chunk: h.chunk, flags: h.flags, payload: d.subarray(HDR), from, member };
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
      if (h.kind !== CTRL_EXPS_REQ || !st || h.round !== st.r) return;
      // the leader answers a member that lacks the maximum with it; anyone
      // else (or a leader still collecting) answers with its own exponents
      if (st.leader === this.rank && st.haveShared) this.sendExps(h.rank, st.r, st.shared, CTRL_EXPS_MAX);
      else if (st.haveExps[this.rank]) this.sendExps(h.rank, st.r, st.exps.subarray(this.rank * st.nchunks, (this.rank + 1) * st.nchunks));
    } else if (h.kind === CTRL_EXPS_MAX) {
      if (st && h.round === st.r && h.rank === st.leader) this.storeShared(st, h.chunk, h.payload);
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
      if (st.pieces[rank].size === Math.ceil(st.nchunks / CTRL_PAYLOAD)) st.haveExps[rank] = true;
      return;
    }
    if (round < this.nextRound) return; // an old round: nothing needs it any more
    let m = this.early.get(round);
    if (!m) this.early.set(round, (m = new Map()));
    let pieces = m.get(rank);
    if (!pieces) m.set(rank, (pieces = new Map()));
    pieces.set(first, Int8Array.from(ex));
  }

  /** Stores one piece of the leader's maximum exponents. */
  private storeShared(st: RoundState, first: number, payload: Uint8Array): void {
    if (st.haveShared || first % CTRL_PAYLOAD !== 0 || payload.length !== Math.min(CTRL_PAYLOAD, st.nchunks - first)) return;
    st.shared.set(new Int8Array(payload.buffer, payload.byteOffset, payload.length), first);
    st.sharedPieces.add(first);
    if (st.sharedPieces.size === Math.ceil(st.nchunks / CTRL_PAYLOAD)) st.haveShared = true;
  }

  /** The shared scale is known: as the leader, once every member's exponents
   * are here (and then sent to all); as a member, once the leader's maximum
   * is here; with two members, once the peer's exponents are here. */
  private sharedReady(st: RoundState): boolean {
    if (st.haveShared) return true;
    if (st.leader !== -1 && st.leader !== this.rank) return false;
    if (!st.haveExps.every(Boolean)) return false;
    // with the sentry, an exponent far above the chunk's median (4096 times
    // its magnitude) is a poisoner's: left out of the shared scale
    if (this.sentry) this.stats.expsLeftOut += coll.ainftp_robust_max_exps(st.exps, this.size, st.nchunks, st.shared, EXPS_ABOVE_MEDIAN);
    else coll.ainftp_max_exps(st.exps, this.size, st.nchunks, st.shared);
    st.haveShared = true;
    if (st.leader === this.rank) for (const p of this.others()) this.sendExps(p, st.r, st.shared, CTRL_EXPS_MAX);
    return true;
  }

  // ---- the round --------------------------------------------------------------

  /** Sums x over every member, in place (or into out). `mean` divides by the
   * member count. Resolves when the result is complete on this host. */
  async allreduce(
    x: Float32Array,
    opts: { op?: "sum" | "mean"; out?: Float32Array; /** first retransmission after this long (default: the communicator's) */ retransmitMs?: number } = {},
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
        rep = await this.round(x.subarray(off, end), out.subarray(off, end), opts.retransmitMs ?? this.o.retransmitMs);
      } finally {
        this.inRound = false;
      }
      reports.push(rep);
      if (opts.op === "mean" && (this.sentry || this.robust) && this.size > 1) {
        // a mean over the contributions each chunk's result holds
        const k = this.contributorsOf(rep.round, rep.chunks);
        for (let c = 0; c < rep.chunks; c++) {
          const from = off + c * this.chunkElems, to = Math.min(end, from + this.chunkElems);
          const d = k[c] || 1;
          for (let i = from; i < to; i++) out[i] /= d;
        }
      }
    }
    if (opts.op === "mean" && !((this.sentry || this.robust) && this.size > 1)) for (let i = 0; i < out.length; i++) out[i] /= this.size;
    return reports;
  }

  private async round(x: Float32Array, out: Float32Array, retransmitMs: number): Promise<RoundReport> {
    const t0 = performance.now();
    const r = this.nextRound++;
    this.o.onRoundStart?.(r);
    const N = this.size;
    const E = this.chunkElems;
    const nchunks = chunkCount(x.length, E);
    if (N === 1) {
      out.set(x);
      this.stats.rounds++;
      return { round: r, ms: performance.now() - t0, chunks: nchunks };
    }
    const st = this.newRound(r, x, out, nchunks);

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
    // One leader per round (rotating) gathers the exponents and sends back
    // their maximum: a member receives one control packet per round instead
    // of one per peer, which keeps socket packets and wake-ups far below the
    // data packets at small sizes (N = 4 at 1 MiB: 1.5 instead of 3).
    if (st.leader === -1) for (const p of this.others()) this.sendExps(p, r, mine);
    else if (st.leader !== this.rank) this.sendExps(st.leader, r, mine);
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
        this.startContributions(st, x);
        if (st.pending.length) this.finish(st, bankBase, Uint32Array.from(st.pending));
        st.pending = [];
      }
      if (st.sent && st.ownedDoneCount === st.owned.length && st.resultsSeen >= nchunks - st.owned.length) {
        if (this.xsk) break; // each result was counted once, when it was dequantized
        const missing = coll.ainftp_results_missing(this.resBase, bankBase, nchunks, r + 1, this.chunkList, this.capacity);
        if (missing === 0) break;
        st.resultsSeen = nchunks - st.owned.length - missing; // events and map disagree: trust the map
      }
      const now = performance.now();
      if (now >= deadline) await this.fail(st, bankBase);
      if (now >= nextRetx) {
        this.stats.timeouts++;
        this.retransmit(st, bankBase);
        interval = Math.min(interval * 2, this.o.maxRetransmitMs);
        nextRetx = now + interval;
      }
      // window-blocked: the wake-up for the results we wait on may be batched
      // with others, so look again soon
      const soon = st.sent && this.unsent(st) ? now + this.o.pumpMs : Infinity;
      const wait = Math.max(0, Math.min(this.o.maxWaitMs, Math.ceil(Math.min(nextRetx, deadline, soon) - now)));
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
    // per member: a round it was expected in (its contribution awaited by our
    // slots, or ours), or one it was left out of (quarantined)
    for (let k = 0; k < this.size; k++)
      if (k === this.rank || (this.cfg.memberMask >> BigInt(k)) & 1n) this.roundsContributed[k]++;
      else this.roundsMissed[k]++;
    if (this.sentry) this.sentryHousekeeping();
    return { round: r, ms: performance.now() - t0, chunks: nchunks };
  }

  private buffers = new Map<string, Uint8Array>();

  /** A buffer reused across rounds (a fresh 10 MB array per round costs
   * thousands of page faults). Its contents are whatever the last round left. */
  private scratch(name: string, bytes: number): Uint8Array {
    let b = this.buffers.get(name);
    if (!b || b.length < bytes) this.buffers.set(name, (b = new Uint8Array(bytes)));
    return b.subarray(0, bytes);
  }

  private newRound(r: number, x: Float32Array, out: Float32Array, nchunks: number): RoundState {
    const N = this.size;
    const E = this.chunkElems;
    const counts = new Uint16Array(nchunks).fill(E);
    counts[nchunks - 1] = x.length - (nchunks - 1) * E;
    const ownerChunks: Uint32Array[] = [];
    const ownerOffset: number[] = [];
    let off = 0;
    for (let o = 0; o < N; o++) {
      const n = o < nchunks ? Math.ceil((nchunks - o) / N) : 0;
      const list = new Uint32Array(n);
      for (let k = 0; k < n; k++) list[k] = o + k * N;
      ownerChunks.push(list);
      ownerOffset.push(off);
      if (o !== this.rank) off += n * this.seg;
    }
    const owned = ownerChunks[this.rank];
    // the program's end-of-round wake-ups for this round
    this.cfg = { ...this.cfg, ownedChunks: owned.length, resultsPerRound: nchunks - owned.length, memberMask: this.expectedMask(r) };
    this.maps.setConfig(this.cfg);
    return {
      r, n: x.length, nchunks, counts,
      exps: new Int8Array(N * nchunks), haveExps: new Array(N).fill(false),
      leader: N > 2 ? r % N : -1, haveShared: false, sharedPieces: new Set(),
      pieces: Array.from({ length: N }, () => new Set<number>()), shared: new Int8Array(nchunks),
      owned, ownedDone: new Uint8Array(nchunks), ownedDoneCount: 0, pending: [], summed: new Uint16Array(nchunks), resultsSeen: 0, sent: false,
      x, recs: this.earlyRecs.get(r) ?? new Map(),
      header: new Uint8Array(HDR), seed: 0, pos: new Array(N).fill(0), acked: new Array(N).fill(0),
      sendBuf: this.scratch("send", off), ownerOffset, ownerChunks, ownBuf: this.scratch("own", owned.length * this.seg),
      xdone: this.scratch("xdone", nchunks).fill(0), out,
      sentAt: new Float64Array(nchunks), tries: new Uint8Array(nchunks),
      lowest: new Array(N).fill(0), furthest: new Array(N).fill(-1),
    };
  }

  /** Shared scale known: quantize our own chunks for the finishing step and
   * start the reduce-scatter. */
  private startContributions(st: RoundState, x: Float32Array): void {
    st.header = headerTemplate({ type: PKT_CONTRIB, jobId: this.job, round: st.r, rank: this.rank });
    st.seed = this.o.stochasticSeed ? (this.o.stochasticSeed ^ st.r) >>> 0 || 1 : 0;
    if (st.owned.length)
      this.stats.saturations += packChunks(x, {
        chunkElems: this.chunkElems, chunks: st.owned, exps: st.shared, header: st.header, out: st.ownBuf, stride: this.seg, seed: st.seed,
      });
    st.sent = true;
    this.pump(st, x);
  }

  /** Reduce-scatter, self-clocked: quantize and send the chunks we do not
   * own, owners interleaved, keeping at most `window` chunks per owner whose
   * result has not come back. A receiver's queue (veth: 256 frames) is never
   * flooded, and every result that arrives lets one more chunk go. */
  private pump(st: RoundState, x: Float32Array): void {
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
        this.stats.packetsSent += this.sock.sendGso(this.peers[o], this.port, region, this.seg, to - from, HDR + 2 * st.counts[last]);
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
    const o = chunk % this.size;
    st.xdone[chunk] = 1;
    st.acked[o]++;
    const k = Math.floor(chunk / this.size);
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
      if (!st.xdone[c] && c % this.size !== this.rank) this.chunkList[m++] = c;
      else if (c % this.size === this.rank && !st.ownedDone[c]) this.chunkList[m++] = c;
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
      st.ownBuf.subarray(HDR), this.size, this.seg / 2, st.counts, st.shared, tmpl, this.resPkts, this.seg,
    );
    if (n < 0) throw new AinftpError(`round ${st.r}`, "finishing a slot failed (bad count)");
    st.ownedDoneCount += n;
    const lastSize = HDR + 2 * st.counts[chunks[chunks.length - 1]];
    for (const p of this.others()) this.stats.packetsSent += this.sock.sendGso(this.peers[p], this.port, this.resPkts, this.seg, n, lastSize);
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
    const lastSize = HDR + 2 * st.counts[chunks[chunks.length - 1]];
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
    const expected = this.cfg.memberMask;
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
    if (coll.ainftp_result_packets(this.resBase, (round & 1) * this.cfg.chunks, one, 1, tmpl, pkt, this.seg) !== 1) return;
    const len = HDR + 2 * new DataView(pkt.buffer).getUint16(22, true);
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
      const o = c % this.size;
      if (o === this.rank || Math.floor(c / this.size) >= st.pos[o]) continue;
      let l = byOwner.get(o);
      if (!l) byOwner.set(o, (l = []));
      l.push(c);
    }
    for (const [o, list] of byOwner) this.sendAgain(st, o, list);
  }

  /** Sends the listed chunks (all owned by o, in order) to o again, flagged as
   * retransmissions so a completed slot answers with its stored result. */
  private sendAgain(st: RoundState, o: number, list: number[]): void {
    const stage = new Uint8Array(list.length * this.seg);
    const now = performance.now();
    list.forEach((c, i) => {
      const k = Math.floor(c / this.size);
      stage.set(st.sendBuf.subarray(st.ownerOffset[o] + k * this.seg, st.ownerOffset[o] + (k + 1) * this.seg), i * this.seg);
      st.sentAt[c] = now;
      if (st.tries[c] < 255) st.tries[c]++;
    });
    coll.ainftp_set_flags(stage, list.length, this.seg, F_RETRANSMIT);
    // the short chunk, if any, is the owner's last: keep it last
    const lastSize = HDR + 2 * st.counts[list[list.length - 1]];
    this.stats.packetsSent += this.sock.sendGso(this.peers[o], this.port, stage, this.seg, list.length, lastSize);
    this.stats.retransmits += list.length;
  }

  /** Whom we wait for before the shared scale is known: the leader, or (as
   * the leader, or with two members) those whose exponents we lack. */
  private expsAwaited(st: RoundState): number[] {
    if (st.leader !== -1 && st.leader !== this.rank) return st.haveShared ? [] : [st.leader];
    return this.others().filter((p) => !st.haveExps[p]);
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
      for (const p of this.others()) if (!(seen & (1n << BigInt(p)))) mask |= 1n << BigInt(p);
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
        for (const p of this.others()) if (!(seen & (1n << BigInt(p)))) perRank.set(p, (perRank.get(p) ?? 0) + 1);
      }
      for (const [p, k] of perRank) waitsOn.set(p, `its contributions to ${k} of our chunks`);
      const m = this.missingResults(st, bankBase);
      const owners = new Map<number, number>();
      for (let i = 0; i < Math.min(m, this.capacity); i++) {
        const o = this.chunkList[i] % this.size;
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
      while (this.left.size < this.size - 1 && performance.now() < end) {
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

function describeRanks(ranks: number[], peers: readonly string[]): string {
  if (ranks.length === 0) return "no rank";
  return ranks.map((r) => `rank ${r} (${peers[r]})`).join(", ");
}

