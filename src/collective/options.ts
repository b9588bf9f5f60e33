// The communicator's options, its one table of defaults and tunables, its
// statistics and its round report and error. Every default lives here once;
// the comment next to it says where its value comes from.
import { BIT_WIDTHS, type BitWidth } from "../abi.ts";
import type { AuthMode } from "../jobkey.ts";
import { AinftpError } from "../errors.ts";
import type { KeeperOptions } from "../sentry/keeper.ts";
import type { AggregateMode, RobustOptions } from "../sentry/robust.ts";

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
  /** Ask the program to wake us once per this many events (default 48, see DEFAULTS.batch). */
  batch?: number;
  /** Chunks per owner in flight (sent, result not back). Default: what fits
   * `rxQueue` (see defaultWindow). */
  window?: number;
  /** Frames a receiving host's queue holds (veth: 256); sizes the window. */
  rxQueue?: number;
  /** Bytes of packets in flight per owner, at most: caps `window` once the
   * packet size is known (default DEFAULTS.windowBytes). */
  windowBytes?: number;
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
   * "auto" (default) is 4x the median of recent rounds, at least 100 ms
   * (DEADLINE_FLOOR_MS); a number is a fixed deadline in ms; 0 turns partial
   * rounds off (a round then waits for every active member, up to roundTimeoutMs). */
  deadlineMs?: number | "auto";
  /** The job's 128-bit key (issue 16): every control packet carries a
   * SipHash-2-4 MAC under it, and contributions and results one as `auth`
   * says. Every member must have the same key. Default: none. */
  key?: Uint8Array | null;
  /** With a key, what the data plane's MAC covers: "header" (default: a host
   * without the key cannot forge a frame), "full" (header and payload: not
   * even an on-path host can change one), or "off" (control frames only). */
  auth?: AuthMode;
  /** Bits per gradient value on the wire (issue 14): 16 (int16, default),
   * 8 or 4 (packed int8 / int4 lanes summed by the XDP program, results
   * requantized to the same width; at 4 bits a randomized Hadamard transform
   * first). Every member must use the same width; open() names one that
   * does not. 8 and 4 need rx "map", no sentry and no robust aggregation. */
  bits?: BitWidth;
  /** Error feedback (issue 14): this rank's quantization error of a call is
   * added to the next call's input of the same buffer (the `key` of
   * allreduce, else the array itself). Default: on at 8 and 4 bits, off
   * (nothing to feed back but int16 rounding) at 16. */
  errorFeedback?: boolean;
  /** Speculation: a round over an array of a length the last full round
   * had starts its contributions before the plan, quantized under that
   * round's shared scale; the plan confirms them, or the chunks whose scale
   * changed go again (src/collective/speculate.ts). The sums are the same
   * either way. Every member must have the same (it is part of the job's
   * fingerprint: open() names one that differs). Default on
   * (AINFTP_SPECULATE=0: off); it acts only where the pace measured the link
   * slower than the hosts, and never with the sentry, robust aggregation or
   * rx "xsk". */
  speculate?: boolean;
  /** A round's waits first look for what they wait on without sleeping, for
   * up to this many µs, yielding the CPU between looks (0: sleep at once).
   * Default DEFAULTS.spinUs. Only inside a round: an idle communicator
   * sleeps. */
  spinUs?: number;
}

/** The bit widths a job may run at, as an error message lists them. */
export function checkBits(bits: unknown, op = "open communicator"): BitWidth {
  if (!(BIT_WIDTHS as readonly unknown[]).includes(bits))
    throw new AinftpError(op, `--bits ${String(bits)} is not a width ainftp sums`, { hint: `use one of ${BIT_WIDTHS.join(", ")}` });
  return bits as BitWidth;
}

/** The defaults of the options a caller may leave out. */
export const DEFAULTS = {
  roundTimeoutMs: 10_000,
  /** First retransmission after 50 ms without progress, doubling to 500 ms. */
  retransmitMs: 50,
  maxRetransmitMs: 500,
  openTimeoutMs: 30_000,
  stochasticSeed: 0,
  pumpMs: 2,
  /** Wake-ups: one per 48 program events. This is what every communicator
   * has run with (the old doc said 64, a dead line said 64); `ainftp attach`
   * writes 32 (DEFAULT_BATCH in src/abi.ts) for a program no job has opened,
   * and open() replaces it with this one. */
  batch: 48,
  sentry: false as KeeperOptions | boolean,
  maxWaitMs: 1e9,
  rxQueue: 256,
  /** The window in bytes: 48 chunks of a 9000-byte MTU's frames (9002 B).
   * veth's ring holds 256 frames whatever their size, so up to MTU 9000 the
   * chunk window (48 at 4 hosts) decides; this caps larger frames. On a
   * quiet machine, 16 MiB unshaped at MTU 9000, 48 chunks took 35-41 ms a
   * round against 52-63 for 18 (48 x 3514 bytes, measured best under load
   * before), and at 1 Gbit/s 116-124 against 113-117 (docs/bench.md "The
   * window in bytes"). */
  windowBytes: 48 * 9002,
  /** int16 until 8 bits is shown at training parity here (issue 14): 16 is
   * what every figure before that issue was measured with. */
  bits: 16 as BitWidth,
  /** On since session 13: on links shaped to 1 Gbit/s it took 1.5-2.5 ms
   * off every 16 MiB round at 16 and 8 bits, 3 pairs of 3 (README, Measured,
   * session 13); it acts only on a link the pace measured slow.
   * AINFTP_SPECULATE=0 turns it off (an A/B of the same build). */
  speculate: process.env.AINFTP_SPECULATE !== "0",
  /** 150 µs (session 13): 1 MiB unshaped, 4 hosts on 2 cores, same build
   * alternating: bench 3.65 / 3.48 → 2.75 / 3.00 ms, CPU per round 15.5 /
   * 13.5 → 13.3 / 14.7 ms; 16 MiB at 8 bits, unshaped and at 1 Gbit/s:
   * no change. AINFTP_SPIN_US sets it (an A/B of the same build). */
  spinUs: process.env.AINFTP_SPIN_US !== undefined ? Number(process.env.AINFTP_SPIN_US) : 150,
} as const;

/** The protocol's tunables (not options: every member must agree on them). */
export const TUNING = {
  /** Payload bytes of one control packet (exponents per packet). */
  CTRL_PAYLOAD: 1400,
  /** (Fast retransmit is RACK's, timed by measured round-trips: rtt.ts.)
   * How often a round looks whether the swarm declared dead a member it
   * waits on (the swarm ticks every 20 ms). */
  DEATH_CHECK_MS: 20,
  /** Before a round's plan: ask again for missing exponents or the plan
   * after this long, doubling (a control packet is small, so asking costs
   * nothing; the data timer is rtt.ts's). */
  CTRL_RETRANSMIT_MS: 4,
  /** A probe for a result we sent less than this ago is not answered with
   * it again: it is on its way (a clean run with 64-value chunks saw 48-96
   * duplicate results per rank without this, the asker's 4 ms probe timer
   * running while the owner was descheduled). */
  RESULT_FRESH_MS: 2,
  /** A round whose leader died after we had its plan is given up after
   * this long without progress: the members without the plan gave it up. */
  LEADERLESS_MS: 200,
  /** At a deadline, how long owners get to say whom they wait for. */
  STATUS_WAIT_MS: 300,
  /** With the sentry: how far (in powers of two) a rank's exponent may exceed
   * its chunk's median before the shared scale leaves it out: 2^12, far more
   * than honest workers' magnitudes differ by, far less than a poisoner gains. */
  EXPS_ABOVE_MEDIAN: 12,
  /** Chunks packed and sent per owner before moving to the next owner
   * (one GSO call: 44 segments measured best on loopback, docs/DESIGN.md). */
  /** An owner's probe tells the members its open slots lack only once at
   * most this many are open (recovery.ts probe): the round's tail. */
  TELL_TAIL: 8,
  /** At the tail, under loss, an owner looks at its open slots this often
   * (ms) and names the member a slot lacks alone (recovery.ts tellDue). */
  TELL_MS: 1,
  /** Under loss, rounds of at most this many bytes of frames send their
   * data twice (recovery.ts redundant), until REDUNDANT_ROUNDS rounds after
   * the last one whose RACK fired (longer than LOSSY_ROUNDS: the copies
   * hide most losses from RACK). */
  REDUNDANT_BYTES: 4 << 20,
  REDUNDANT_ROUNDS: 256,
  /** ... and whose frames take at most this long at our measured egress
   * rate (pace.ts; no rate known: any): on a slow link a second copy costs
   * its bytes' time (ms). 1 MiB unshaped here: about 1.6 ms. */
  REDUNDANT_MS: 4,
  /** "Under loss": RACK fired in this round or the last LOSSY_ROUNDS (recovery.ts lossSeen). */
  LOSSY_ROUNDS: 8,
  /** A member's tail ask (recovery.ts askDue): under loss, with every contribution sent and at most
   * TELL_TAIL results missing, it asks their owners by name this long after the last progress (no
   * sooner than an owner resends a result: RESULT_FRESH_MS). */
  ASK_MS: 2,
  SEND_PIECE: 44,
  /** Lateness: a member that misses a plan (its exponents not there when the
   * leader decides) gains a point, one that makes it loses one. At
   * LATE_SLOW points leaders stop waiting for it (down-ranked); scores stop
   * at LATE_MAX, so a member back to speed is waited for again after
   * LATE_MAX - LATE_SLOW + 1 plans it made. Two misses in a row: one round
   * waiting out a deadline can be bad luck, two are a pattern. */
  LATE_SLOW: 2,
  LATE_MAX: 3,
  /** A member whose exponents come within this of the majority's is prompt:
   * it may lead the next round. */
  PROMPT_MS: 50,
  /** Rounds of plans kept, and at most of results, for passive members
   * that fall behind. A member left out of the quorum round after round,
   * under loss, was seen 10 rounds behind while the others went on; a
   * straggler behind a 40 ms link asked for results 5 rounds late (the
   * simulator's straggler-plus-liar seeds 9100-9112 stalled with 4). */
  CACHE_ROUNDS: 16,
  /** Bytes of results kept: as many rounds as fit, CACHE_ROUNDS_MIN to
   * CACHE_ROUNDS. A round's results are a copy of what we send, in a buffer
   * of its own: 16 rounds of a 16 MiB job (2 MB a round and rank) cost its
   * first 16 rounds 25-40 ms each here, all page faults on fresh buffers
   * (2-6 ms per fresh 2 MB in Bun on this VM, 0.1 ms reused): 70-120 ms
   * rounds against 45-55. Small rounds, where members run many rounds
   * ahead, keep 16. */
  CACHE_BYTES: 4 << 20,
  CACHE_ROUNDS_MIN: 4,
  /** The round's grace for late members: once a majority has sent its
   * exponents, the leader waits this long for the rest. It is 4 times the
   * median of the last DEADLINE_WINDOW rounds (a member 4 times slower than
   * the cluster is not jitter), at least 100 ms (4 busy processes on a
   * 2-vCPU host start a round tens of ms apart) and at most 500 ms (the
   * issue's "lag above 500 ms": down-rank it). Before there is a history
   * (4 rounds): 500 ms. An owner closes its open slots when they made no
   * progress for the grace or two capped retransmission intervals, whichever
   * is longer: a lost packet always gets two tries before its sender's
   * contribution is given up. */
  DEADLINE_FACTOR: 4,
  DEADLINE_FLOOR_MS: 100,
  DEADLINE_CAP_MS: 500,
  DEADLINE_WINDOW: 32,
  /** Yield to the event loop (signals, timers) at least this often mid-round (ms). */
  YIELD_MS: 25,
  /** HELLOs and BYEs are repeated this often until answered (ms). */
  GREET_MS: 100,
  /** At 8 and 4 bits rounding is always stochastic (unbiased): with
   * stochasticSeed 0 the streams are seeded from this, the round and the rank. */
  NARROW_SEED: 0x0b17,
  /** Widths whose values go through the randomized Hadamard transform
   * before quantizing (the same on every member: seeded by job and round).
   * Measured here (4 ranks, 32 chunks of 3440, relative L2 error of the sum,
   * without → with): at 8 bits Student-t(3) gradients 0.129 → 0.024,
   * per-coordinate log-normal scales 0.164 → 0.028, 1% sparse spikes 0.089
   * → 0.026, Gaussian 0.025 → 0.027; at 4 bits 1.55 → 0.48, 1.13 → 0.45,
   * 0.44 → 0.45, 0.52 → 0.52. Real gradients are heavy-tailed: on at both
   * (README "Bits"). Its cost: about 2.5 ns per value each way here. */
  RHT_BITS: [8, 4] as readonly number[],
} as const;

/** The options with every default filled in. */
export type ResolvedOptions = Required<Omit<CommunicatorOptions, "onRoundStart" | "onQuarantine" | "pinRoot" | "port" | "job" | "key" | "auth" | "errorFeedback">> &
  CommunicatorOptions;

/** In flight towards one host: (N-1) senders' windows plus the owners'
 * result bursts. Keep the windows within a receive queue of `rxQueue`
 * frames (veth: 256), leaving room for results; 48 measured best at 4 hosts. */
export function defaultWindow(members: number, rxQueue: number = DEFAULTS.rxQueue): number {
  return Math.max(8, Math.min(48, Math.floor(rxQueue / Math.max(1, members - 1)) - 16));
}

/** Chunks in flight per owner for packets of `packetBytes`: the window, and
 * no more than windowBytes of packets (at least 8 chunks). */
export function windowChunks(window: number, windowBytes: number, packetBytes: number): number {
  return Math.max(1, Math.min(window, Math.max(8, Math.floor(windowBytes / Math.max(1, packetBytes)))));
}

/** The options with the defaults filled in; an option given as undefined keeps its default. */
export function resolveOptions(opts: CommunicatorOptions): ResolvedOptions {
  const { rxQueue: _rx, ...defaults } = DEFAULTS;
  if (opts.bits !== undefined) checkBits(opts.bits);
  const spin = opts.spinUs ?? DEFAULTS.spinUs;
  if (!Number.isInteger(spin) || spin < 0 || spin > 100_000)
    throw new AinftpError("open communicator", `spinUs ${String(spin)} is not a number of µs in 0..100000${opts.spinUs === undefined ? " (from AINFTP_SPIN_US)" : ""}`, { hint: "e.g. 150, or 0 to sleep at once" });
  return {
    window: defaultWindow(opts.peers.length, opts.rxQueue),
    ...defaults,
    ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
  } as ResolvedOptions;
}

export interface CollectiveStats {
  rounds: number;
  /** Contribution packets sent again after a timeout. */
  retransmits: number;
  /** Results sent again on a resend request. */
  resends: number;
  /** Results sent again in answer to a member's probe (CTRL_RESULT_REQ):
   * a lost result, or (a host descheduled past the asker's probe timer)
   * one that was on its way. */
  probeAnswers: number;
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
  /** Completions of ours not finished in a round whose plan left members
   * out: the slot held one's contribution, or was emptied after its event
   * (owner.ts refuseOutsiders). */
  outsidersRefused: number;
  packetsSent: number;
  /** Of packetsSent, the second copies a small round sends under loss (recovery.ts redundant). */
  copiesSent: number;
  /** Rounds whose window our measured egress rate capped below the window (pace.ts: a slow link). */
  pacedRounds: number;
  /** Rounds whose contributions started before the plan, under the last plan's scale (speculate.ts). */
  specRounds: number;
  /** Of those, contributions sent again: the plan's scale (or active set) was not the predicted one. */
  specResent: number;
  /** Rounds whose packets came from the exponents' pass (prepack.ts; at 8 and 4 bits the transform's). */
  prepackedRounds: number;
  /** 8 and 4 bits: result chunks gathered (dequantized, inverse transform)
   * while the round still waited, not after its last result (early.ts). */
  gatheredEarly: number;
  /** Where round time went: computing exponents, waiting for the peers'
   * exponents, packing/sending/finishing (work), waiting for packets, and
   * dequantizing the results. */
  phaseMs: { exps: number; control: number; work: number; wait: number; gather: number };
}

export function zeroStats(): CollectiveStats {
  return {
    rounds: 0, retransmits: 0, resends: 0, probeAnswers: 0, timeouts: 0, saturations: 0, wakeups: 0, controlReceived: 0, packetsSent: 0, copiesSent: 0, pacedRounds: 0, specRounds: 0, specResent: 0, prepackedRounds: 0, expsLeftOut: 0,
    partialRounds: 0, gatheredEarly: 0, passiveRounds: 0, deadlineCloses: 0, outsidersRefused: 0,
    phaseMs: { exps: 0, control: 0, work: 0, wait: 0, gather: 0 },
  };
}

/** a + sign * b, field by field (phases too). */
export function combineStats(a: CollectiveStats, b: CollectiveStats, sign: 1 | -1): CollectiveStats {
  const out = zeroStats();
  for (const k of Object.keys(out) as (keyof CollectiveStats)[]) {
    if (k === "phaseMs") {
      for (const p of Object.keys(out.phaseMs) as (keyof CollectiveStats["phaseMs"])[])
        out.phaseMs[p] = a.phaseMs[p] + sign * b.phaseMs[p];
    } else out[k] = a[k] + sign * b[k];
  }
  return out;
}

export interface RoundReport {
  round: number;
  ms: number;
  chunks: number;
  /** The round's active members (whose contributions its results hold,
   * less any the sentry dropped or a deadline closed out). */
  active: number[];
  leader: number;
  /** Per chunk, the contributions its result holds, read as the round ended
   * (the results map keeps two rounds: a later read of a long vector's
   * first rounds finds the next rounds' results there); null with rx "xsk". */
  contributors?: Uint16Array | null;
}

/** A round failed: members did not answer in time, or one left. */
export class RoundError extends AinftpError {
  /** `detail`: the round's state when it failed at its deadline (our open
   * slots, the results we lacked and their entries, the program's counters),
   * printed after the message: what tells a protocol bug from a dead peer. */
  constructor(op: string, message: string, readonly missingRanks: number[], hint: string, detail = "") {
    super(op, message, { hint, detail, detailTitle: "the round's state" });
    this.name = "RoundError";
  }
}

export function describeRanks(ranks: number[], peers: readonly string[]): string {
  if (ranks.length === 0) return "no rank";
  return ranks.map((r) => `rank ${r} (${peers[r]})`).join(", ");
}

/** `minValues`: a round's gather writes `out` with streaming stores from
 * this many values up (native/quant.c dequant_stream; at 8 and 4 bits each
 * chunk is dequantized and transformed back in a scratch chunk first): its
 * array has long left the caches by then, and a plain store reads each line
 * first (1.27 against 2.26 ms for 4M values cold; hot, plain stores win:
 * 0.89 against 1.02). 4 MiB of floats, as PREPACK.minValues. (A test forces
 * it on small rounds.) */
export const STREAM_GATHER = { minValues: 1 << 20 };

/** 1 where a round's gather of n values writes out with streaming stores, else 0: the native gathers' flag. */
export function streamsGather(n: number): number {
  return n >= STREAM_GATHER.minValues ? 1 : 0;
}
