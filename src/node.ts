// The node runner behind `ainftp swarm`: attaches the program if needed,
// opens the communicator with a static member list and runs the synthetic
// workload, verifying every round against a locally computed reference.
import { coll } from "../native/collective.ts";
import { FRAME_OVERHEAD_V4, payloadBytes, type BitWidth, type Counters } from "./abi.ts";
import { ERROR_BOUND } from "./quantize.ts";
import type { ControlDrop } from "./control-guard.ts";
import { combineStats, RoundError, zeroStats, type Communicator, type CollectiveStats } from "./collective.ts";
import { AinftpError } from "./errors.ts";
import { Arena } from "./arena.ts";
import { formatSize } from "./units.ts";
import { startNodeMetrics } from "./metrics.ts";
import { RobustAggregator, robustKey, type AggregateMode } from "./sentry/robust.ts";
import { bringUp, type JobOptions } from "./node/bringup.ts";
import { quantiles, type Quantiles } from "./stats.ts";
import type { Swarm, SwarmChange, SwarmState } from "./swarm.ts";
import { cpuMs, markTimed } from "./bench/timed.ts";
import { PremadeRounds } from "./bench/premade.ts";

export { checkPacketFits, chunkElemsForMtu, dataTagBytes, interfaceMtu } from "./node/bringup.ts";
export { quantiles, type Quantiles };

/** First retransmission of a barrier round: long, a member may be verifying. */
const BARRIER_PATIENCE_MS = 300;

/** UMEM of the AF_XDP path: 4096 frames of 4 KB (the fill ring holds 2048). */
const UMEM_BYTES = 16 << 20;

export interface NodeOptions extends JobOptions {
  /** Bytes of f32 gradient per round. */
  syntheticBytes: number;
  rounds: number;
  verify: boolean;
  seed?: number;
  /** Rounds run before timing starts. */
  warmup?: number;
  /** No barrier rounds around the timed all-reduce (as a trainer calls it): a
   * rank's time then includes waiting for ranks still verifying the last round. */
  backToBack?: boolean;
  window?: number;
  /** Where results arrive: the mmapped map (default) or an AF_XDP socket. */
  rx?: "map" | "xsk";
  roundTimeoutMs?: number;
  retransmitMs?: number;
  openTimeoutMs?: number;
  stochasticSeed?: number;
  /** Bits per value on the wire: 16 (default), 8 or 4 (CommunicatorOptions.bits). */
  bits?: BitWidth;
  /** Leave the program attached at the end (default: detach if we attached it). */
  keepAttached?: boolean;
  /** The sentry (inline filter) on this node's chunks; z threshold. */
  sentry?: boolean | { z?: number };
  /** Test and demo only: `rank` sends its synthetic gradient times `factor`
   * (a scaling attack). Every node is told, so its reference sum holds the
   * poisoned gradient too and verification stays exact. */
  poison?: { rank: number; factor: number };
  /** How owners combine contributions (default sum, in the XDP program). */
  aggregate?: AggregateMode;
  /** Serve Prometheus metrics at ADDR:PORT while running (src/metrics.ts). */
  metrics?: string;
  /** One line each for what the user should know at start (stale pins replaced). */
  note?: (line: string) => void;
  /** Where the node says what happens to the swarm (a member suspected, dead, back). */
  log?: (line: string) => void;
  /** Backup workers: a round goes once this many members are in (see CommunicatorOptions.quorum). */
  quorum?: number;
  /** Grace for late members, ms; "auto" (default) or 0 (wait for everyone). */
  deadlineMs?: number | "auto";
}

export interface NodeReport {
  rank: number;
  peers: number;
  elements: number;
  bytes: number;
  rounds: number;
  chunk_elems: number;
  round_ms: Quantiles;
  /** Every timed round's time, in order (to pair with other ranks' rounds); lost rounds have none. */
  round_times_ms: number[];
  /** Per timed round: this process's CPU time inside its all-reduce (ms, every thread, user and kernel). */
  round_cpu_ms: number[];
  rel_l2_error_max: number | null;
  verified: boolean;
  /** Bits per value on the wire, and the relative L2 error --verify allows at that width (ERROR_BOUND). */
  bits: BitWidth;
  error_bound: number;
  /** Per timed iteration: the result's hash (xxHash3-64 of its float32
   * bytes, 16 hex digits; resultHash), null when the round was lost. Equal
   * on every member when the results are bit-identical. A self-check, not a
   * security hash: it runs on the path a back-to-back job waits on (sha256
   * took about 10 ms a rank at 16 MiB here, xxHash3 0.45 ms). */
  result_hash: (string | null)[];
  retransmits: number;
  resends: number;
  /** Results sent again in answer to a member's probe (issue 17's tail-loss probe). */
  probe_answers: number;
  duplicates: number;
  timeouts: number;
  /** Packets sent twice: under loss a small round sends its data twice (the second copies). */
  copies_sent: number;
  /** Rounds whose window this rank's measured egress rate capped (a link slower than the hosts: pace.ts). */
  paced_rounds: number;
  /** Rounds whose contributions started before the plan (speculate.ts), and of their contributions those sent again (the plan's scale was not the predicted one). */
  spec_rounds: number;
  spec_resent: number;
  /** 16-bit rounds whose packets came from the exponents' pass (collective/prepack.ts). */
  prepacked_rounds: number;
  saturations: number;
  /** Times this process woke (poll returns) during the timed rounds. */
  wakeups: number;
  /** Wake-ups the XDP program requested (ring-buffer wake-ups). */
  xdp_wakeups: number;
  /** Control packets that reached the socket. */
  socket_packets: number;
  /** ainftp packets the XDP program received (its rx counter). */
  packets_received: number;
  /** (wakeups + socket packets) / packets received. */
  wakeups_per_packet: number;
  attached_by_us: boolean;
  /** Control frames (or parts) this node refused, by reason (issue 16). */
  control_drops: Record<ControlDrop, number>;
  /** What the job key authenticated: "off" (no key), "control" (control frames only), "header" or "full" (and data frames). */
  auth: "off" | "control" | "header" | "full";
  /** Where results arrived: "map", or "xsk (copy mode)" / "xsk (zero-copy)". */
  rx: string;
  /** rx "xsk": the arena behind the UMEM. */
  umem: string | null;
  /** Bytes the kernel copied per timed round to hand results to us: the map
   * path writes each result's payload into the results map
   * (bpf_xdp_load_bytes); AF_XDP in copy mode writes whole frames into the
   * UMEM (zero-copy would write none). Userspace copies none: it dequantizes
   * in place. From the program's counters times the packet sizes. */
  result_copy_bytes_per_round: number;
  /** Mean ms per timed round in each phase (see CollectiveStats.phaseMs). */
  phase_ms: CollectiveStats["phaseMs"];
  /** With the sentry: what it did during the timed rounds. */
  sentry: SentryReport | null;
  /** The swarm's view at the end, and every membership change during the run. */
  swarm: { members: SwarmState["members"]; changes: SwarmChange[] };
  /** Straggler handling during the timed rounds. */
  straggler: StragglerReport;
  /** Rounds lost because a member died during them (the run went on). */
  failed_rounds: FailedRound[];
  /** Timed rounds that produced no result (their result_hash is null); verified is false when any was lost. */
  lost_rounds: number;
}

export interface FailedRound {
  /** Timed iteration (0-based) the round belonged to. */
  iteration: number;
  missing: number[];
  error: string;
  /** From the round's start until we gave it up and went on (what the death cost us). */
  ms: number;
}

export interface StragglerReport {
  /** Timed rounds whose plan left members out, and those we sat out. */
  partial_rounds: number;
  passive_rounds: number;
  /** Our slots closed at the deadline with the contributions present. */
  deadline_closes: number;
  /** Completions of ours held back in rounds whose plan left members out (owner.ts refuseOutsiders). */
  outsiders_refused: number;
  /** Contributions our program dropped because their slot had closed without them. */
  late_contributions: number;
  /** Per timed round: the members whose contributions it holds. */
  active: number[][];
}

export interface SentryReport {
  z: number;
  /** Contributions our program dropped (for chunks we own), per rank. */
  rejected_by_rank: number[];
  /** Ranks in quarantine at the end, by our sentry. */
  quarantined: number[];
  /** Contributions missing from the results we received (all owners). */
  excluded_contributions: number;
  /** Chunks whose result left out too many contributions to check exactly. */
  unverified_chunks: number;
  /** As the round's leader: exponents left out of the shared scale, far above their chunk's median. */
  exps_left_out: number;
}

export type Progress = (round: number, of: number, lastMs: number) => void;

export async function runNode(o: NodeOptions, progress?: Progress): Promise<NodeReport> {
  const n = Math.floor(o.syntheticBytes / 4);
  if (n < 1) throw new AinftpError("swarm", "the synthetic gradient is smaller than one float", { hint: "e.g. --synthetic 16MiB" });
  const N = o.peers.length;
  const node = bringUp({
    op: "swarm", iface: o.iface, peers: o.peers, rank: o.rank, port: o.port, job: o.job, mode: o.mode, chunkElems: o.chunkElems,
    key: o.key, auth: o.auth, roundElems: n, keepAttached: o.keepAttached, note: o.note,
    mtuAdvice: (needed) => `ip link set dev ${o.iface} mtu ${needed}; veth takes at most 3504 with native XDP`,
  });
  // values per packet: the attach unit at 16 bits, twice it at 8 and 4 (set once open)
  let chunkElems = node.chunkElems;
  let comm: Communicator | undefined;
  let swarm: Swarm | undefined;
  // rx "xsk": the UMEM is an arena region (2 MB pages when the pool has them)
  let arena: Arena | undefined;
  let metrics: ReturnType<typeof startNodeMetrics> | undefined;
  try {
    let umem: { ptr: number; bytes: number } | undefined;
    if (o.rx === "xsk") {
      arena = Arena.open({ size: UMEM_BYTES, hugepages: "auto" });
      const region = arena.alloc(UMEM_BYTES, 4096);
      umem = { ptr: region.ptr, bytes: region.bytes };
    }
    comm = await node.open({
      window: o.window, rx: o.rx, umem,
      roundTimeoutMs: o.roundTimeoutMs, retransmitMs: o.retransmitMs, openTimeoutMs: o.openTimeoutMs,
      stochasticSeed: o.stochasticSeed, sentry: o.sentry === true ? {} : o.sentry || undefined, aggregate: o.aggregate,
      maxWaitMs: 20, // the swarm's membership timer ticks every 20 ms
      quorum: o.quorum, deadlineMs: o.deadlineMs,
      // the synthetic workload verifies each round's exact sum: no error feedback
      bits: o.bits, errorFeedback: false,
    }, o.log);
    chunkElems = comm.chunkElems;
    swarm = node.swarm!;
    if (arena && comm.xsk) arena.registrations.nic = comm.xsk.mode === "zero-copy" ? "af_xdp (zero-copy)" : "af_xdp (copy mode)";
    if (o.metrics) {
      metrics = startNodeMetrics(o.metrics, comm, swarm, { rank: o.rank, peers: N, job: comm.job, iface: o.iface, bytesPerRound: n * 4 });
      o.note?.(`metrics at ${metrics.url}`);
    }
    const failedRounds: FailedRound[] = [];
    /** A round that failed because members died (every survivor loses it,
     * or the few that had the dead member's results do not): once the swarm
     * holds every missing member dead (within 3 s), note it and go on; the
     * next rounds' plans leave the dead out. Any other failure ends the run. */
    const survive = async <T>(iteration: number, f: () => Promise<T>): Promise<T | null> => {
      const t = performance.now();
      try {
        return await f();
      } catch (e) {
        if (!(e instanceof RoundError) || e.missingRanks.length === 0) throw e;
        const dead = () => e.missingRanks.every((k) => !((comm!.liveMask >> BigInt(k)) & 1n));
        const until = performance.now() + 3000;
        while (!dead() && performance.now() < until) await Bun.sleep(50); // the swarm ticks meanwhile
        if (!dead()) throw e;
        failedRounds.push({ iteration, missing: e.missingRanks, error: e.message, ms: +(performance.now() - t).toFixed(1) });
        o.log?.(`${e.message}: ${e.missingRanks.map((k) => `rank ${k}`).join(", ")} died; going on without`);
        return null;
      }
    };
    const seed = o.seed ?? 1;
    const x = new Float32Array(n);
    const barrier = new Float32Array(1);
    const warmup = o.warmup ?? 1;
    const scaleOf = (rank: number) => (o.poison && o.poison.rank === rank ? o.poison.factor : 1);
    // robust modes: the same combiner, fed the exact gradients; it sees the
    // warm-up rounds too (cclip keeps worker momentum per chunk)
    const reference = comm.robust ? new RobustAggregator(comm.robust.mode) : null;
    // back to back, the timed rounds' gradients are made now (before the
    // warm-up rounds line the ranks up), and their plain checks and hashes
    // wait until after the timed rounds (bench/premade.ts: nothing of the
    // lab's between calls). Barrier-separated, a round's gradient is made
    // just before it, fresh as a trainer's, and checked after it: the
    // barriers keep that work out of every rank's timed call.
    const premade = await PremadeRounds.make(seed, o.rank, n, o.backToBack ? o.rounds : 0, scaleOf(o.rank));
    const deferred: { r: number; g: Float32Array; check: boolean }[] = [];
    // a barrier round; patient, since waiting for a rank still verifying is
    // no loss worth a retransmission
    const barrierRound = (iteration: number) =>
      survive(iteration, () => comm!.allreduce(barrier, { retransmitMs: BARRIER_PATIENCE_MS, patient: true }));
    // a round's program counters and stats (since c0, s0) added into `into`
    const tallyRound = (into: { counters: Counters; stats: CollectiveStats }, c0: Counters, s0: CollectiveStats) => {
      const c1 = comm!.counters();
      for (const k of Object.keys(into.counters) as (keyof Counters)[]) into.counters[k] += c1[k] - c0[k];
      into.stats = addStats(into.stats, diffStats(comm!.stats, s0));
    };
    // (the warm-up rounds' sums, kept as the timed rounds' are, and dropped)
    const warmSums = { counters: Object.fromEntries(Object.keys(comm.counters()).map((k) => [k, 0])) as Counters, stats: zeroStats() };
    for (let w = 0; w < warmup; w++) {
      coll.ainftp_synth(seed, o.rank, 0xffff0000 + w, scaleOf(o.rank), x, n);
      // the calls of a timed round (its barriers, counters and stats), so
      // that what the timed rounds run is what the JIT compiled: warm-up
      // rounds without the barrier rounds between them left JavaScriptCore
      // compiling into the timed ones (53 functions a rank over 300 timed
      // rounds at 1 MiB, 0.3 ms of a JIT thread a round)
      if (!o.backToBack) await barrierRound(-1);
      const s0 = combineStats(comm.stats, zeroStats(), 1);
      const c0 = comm.counters();
      const reps = await survive(-1, () => comm!.allreduce(x, { key: x }));
      tallyRound(warmSums, c0, s0);
      if (!o.backToBack) await barrierRound(-1);
      if (reps && o.verify && reference)
        verifyRobust(x, reps.map((p) => p.contributors!), reference,
          { seed, round: 0xffff0000 + w, N, chunkElems, perRound: comm.capacity * chunkElems, scaleOf, active: reps.map((p) => p.active) });
    }
    markTimed(o.rank);
    const t: Tally = {
      counters: Object.fromEntries(Object.keys(comm.counters()).map((k) => [k, 0])) as Counters,
      times: [], cpu: [], hashes: [], maxErr: 0, stats: zeroStats(), excluded: 0, unverified: 0, active: [],
      rejected0: comm.sentry ? comm.sentryCounts().map((w) => w.rejected) : [], failed: failedRounds,
    };
    const { times, hashes } = t;
    for (let r = 0; r < o.rounds; r++) {
      const g = premade.round(r) ?? x;
      if (g === x) coll.ainftp_synth(seed, o.rank, r, scaleOf(o.rank), x, n);
      // a barrier round, so a rank still verifying the last round does not
      // count against this one
      if (!o.backToBack) await barrierRound(r);
      const s0 = combineStats(comm.stats, zeroStats(), 1);
      const c0 = comm.counters();
      const t0 = performance.now();
      const cpu0 = process.cpuUsage();
      // (error feedback keyed by the one buffer x, as a trainer's gradient buffer)
      const reps = await survive(r, () => comm!.allreduce(g, { key: x }));
      if (!reps) {
        // a member died during it: the round is lost here; keep the count of
        // rounds in step with the other survivors (they lost it too, or not)
        await barrierRound(r);
        hashes.push(null);
        metrics?.roundLost();
        continue;
      }
      times.push(performance.now() - t0);
      t.cpu.push(cpuMs(process.cpuUsage(cpu0)));
      metrics?.roundDone(times[times.length - 1]);
      // per chunk, the contributions its result holds (rx "xsk" keeps no
      // count: the plan's active members then)
      const kept = comm.xsk ? null : reps.map((p) => p.contributors!);
      const active = reps.map((p) => p.active);
      for (const a of active) t.active.push(a);
      const whole = active.every((a) => a.length === N) && (!kept || kept.every((k) => k.every((v) => v === N)));
      // the program's counters over the timed rounds only (barrier rounds,
      // where a rank still verifying makes others retransmit, are left out)
      tallyRound(t, c0, s0);
      // and one after, so our verification does not slow a rank still timing
      if (!o.backToBack) await barrierRound(r);
      // a premade round's plain check and its hash wait until after the
      // timed rounds; any other check runs here (it needs this round's reports)
      const plain = o.verify && whole && !comm.robust && !o.poison;
      if (o.verify && comm.robust) {
        const v = verifyRobust(g, kept, reference!, { seed, round: r, N, chunkElems, perRound: comm.capacity * chunkElems, scaleOf, active });
        t.maxErr = Math.max(t.maxErr, v.err);
        t.excluded += v.excluded;
        t.unverified += v.unverified;
      } else if (plain && g === x) {
        t.maxErr = Math.max(t.maxErr, coll.ainftp_synth_rel_l2(seed, N, r, 1, x, n));
      } else if (o.verify && !plain) {
        const v = verifyKept(g, kept, { seed, round: r, N, chunkElems, perRound: comm.capacity * chunkElems, scaleOf, active });
        t.maxErr = Math.max(t.maxErr, v.err);
        t.excluded += v.excluded;
        t.unverified += v.unverified;
      }
      // (one hash an iteration, lost ones null: hashes[r] is round r's)
      if (g === x) hashes.push(resultHash(x));
      else {
        deferred.push({ r, g, check: plain });
        hashes.push(null);
      }
      progress?.(r + 1, o.rounds, times[times.length - 1]);
    }
    // the premade rounds' plain checks and hashes, now that no rank times
    for (const d of deferred) {
      if (d.check) t.maxErr = Math.max(t.maxErr, coll.ainftp_synth_rel_l2(seed, N, d.r, 1, d.g, n));
      hashes[d.r] = resultHash(d.g);
      premade.release(d.r);
      await Bun.sleep(0); // (20 ms each at 16 MiB: the swarm's heartbeats go on)
    }
    return nodeReport(o, t, { n, chunkElems, attachedByUs: node.attachedByUs, comm, swarm, arena });
  } finally {
    metrics?.stop();
    node.end("polite");
    arena?.close();
  }
}

/** What the timed rounds of runNode tallied. */
interface Tally {
  /** The program's counters over the timed rounds only. */
  counters: Counters;
  times: number[];
  /** Per timed round: our process's CPU inside it (ms). */
  cpu: number[];
  hashes: (string | null)[];
  maxErr: number;
  stats: CollectiveStats;
  excluded: number;
  unverified: number;
  /** Per protocol round: its active members. */
  active: number[][];
  /** The sentry's per-rank rejections before the timed rounds. */
  rejected0: number[];
  failed: FailedRound[];
}

/** The node's report (the JSON of `ainftp swarm --json`) from the tally. */
function nodeReport(
  o: NodeOptions, t: Tally,
  at: { n: number; chunkElems: number; attachedByUs: boolean; comm: Communicator; swarm: Swarm; arena: Arena | undefined },
): NodeReport {
  const { comm, swarm, arena, chunkElems, n } = at;
  const { times, stats: statsTimed } = t;
  const N = o.peers.length;
  const d = (k: keyof Counters) => t.counters[k];
  const rx = d("rx");
  return {
    rank: o.rank, peers: N, elements: n, bytes: n * 4, rounds: o.rounds, chunk_elems: chunkElems,
    round_ms: quantiles(times),
    round_times_ms: times.map((ms) => +ms.toFixed(3)),
    round_cpu_ms: t.cpu.map((ms) => +ms.toFixed(3)),
    rel_l2_error_max: o.verify ? t.maxErr : null,
    verified: o.verify && times.length > 0 && t.maxErr <= ERROR_BOUND[comm.bits as BitWidth] && times.length === o.rounds,
    bits: comm.bits as BitWidth,
    error_bound: ERROR_BOUND[comm.bits as BitWidth],
    lost_rounds: o.rounds - times.length,
    result_hash: t.hashes,
    retransmits: statsTimed.retransmits, resends: statsTimed.resends, probe_answers: statsTimed.probeAnswers, duplicates: d("duplicate"),
    timeouts: statsTimed.timeouts, saturations: statsTimed.saturations, copies_sent: statsTimed.copiesSent, paced_rounds: statsTimed.pacedRounds, spec_rounds: statsTimed.specRounds, spec_resent: statsTimed.specResent, prepacked_rounds: statsTimed.prepackedRounds,
    wakeups: statsTimed.wakeups, xdp_wakeups: d("wakeups"), socket_packets: statsTimed.controlReceived,
    packets_received: rx,
    wakeups_per_packet: rx ? (statsTimed.wakeups + statsTimed.controlReceived) / rx : 0,
    attached_by_us: at.attachedByUs,
    control_drops: { ...at.comm.controlDrops },
    auth: !o.key ? "off" : o.auth === "off" ? "control" : o.auth ?? "header",
    rx: comm.xsk ? `xsk (${comm.xsk.mode} mode)` : "map",
    result_copy_bytes_per_round: Math.round(
      (comm.xsk
        ? comm.xsk.mode === "zero-copy" ? 0 : d("results_xsk") * (FRAME_OVERHEAD_V4 + 2 * chunkElems)
        : d("results") * payloadBytes(comm.bits as BitWidth, chunkElems)) / Math.max(1, times.length),
    ),
    umem: arena ? `${formatSize(arena.size)} arena, ${arena.hugepages ? "2 MB pages" : "4 KB pages (no 2 MB pages free: ainftp arena --reserve)"}` : null,
    phase_ms: Object.fromEntries(
      Object.entries(statsTimed.phaseMs).map(([k, v]) => [k, +(v / Math.max(1, times.length)).toFixed(3)]),
    ) as CollectiveStats["phaseMs"],
    swarm: { members: swarm.view(), changes: swarm.changes },
    failed_rounds: t.failed,
    straggler: {
      partial_rounds: statsTimed.partialRounds, passive_rounds: statsTimed.passiveRounds, deadline_closes: statsTimed.deadlineCloses, outsiders_refused: statsTimed.outsidersRefused,
      late_contributions: d("late"), active: t.active,
    },
    sentry: comm.sentry
      ? (() => {
          const st = comm.sentry!.status();
          return {
            z: st.z,
            rejected_by_rank: comm.sentryCounts().map((w, k) => w.rejected - (t.rejected0[k] ?? 0)),
            quarantined: st.workers.filter((w) => w.quarantined).map((w) => w.rank),
            excluded_contributions: t.excluded,
            unverified_chunks: t.unverified,
            exps_left_out: statsTimed.expsLeftOut,
          };
        })()
      : null,
  };
}

/** A result's hash for result_hash: xxHash3-64 of its bytes, as 16 hex digits. */
export function resultHash(x: Float32Array): string {
  return Bun.hash.xxHash3(new Uint8Array(x.buffer, x.byteOffset, x.byteLength)).toString(16).padStart(16, "0");
}

/** Every rank's synthetic gradient of a round, as each sent it. */
function synthRanks(o: { seed: number; round: number; N: number; scaleOf: (rank: number) => number }, n: number): Float32Array[] {
  return Array.from({ length: o.N }, (_, k) => {
    const v = new Float32Array(n);
    coll.ainftp_synth(o.seed, k, o.round, o.scaleOf(k), v, n);
    return v;
  });
}

/**
 * Verifies a round whose results may leave contributions out (the sentry, or
 * a quarantine): a chunk's result holds its owner's own contribution and
 * `kept - 1` others. Each chunk is checked against every such subset of the
 * ranks' synthetic gradients (the poisoned one scaled as it was sent), and
 * the closest counts; a chunk with more than C(N-1, k-1) = 64 candidates is
 * left unverified (and counted).
 */
function verifyKept(
  x: Float32Array, kept: Uint16Array[] | null,
  o: { seed: number; round: number; N: number; chunkElems: number; perRound: number; scaleOf: (rank: number) => number; active: number[][] },
): { err: number; excluded: number; unverified: number } {
  const n = x.length;
  const E = o.chunkElems;
  const ranks = synthRanks(o, n);
  let num = 0, den = 0, excluded = 0, unverified = 0;
  for (let off = 0, p = 0; off < n; off += o.perRound, p++) {
    const end = Math.min(n, off + o.perRound);
    const nchunks = Math.ceil((end - off) / E);
    const act = o.active[p];
    for (let c = 0; c < nchunks; c++) {
      const from = off + c * E, to = Math.min(end, from + E);
      const owner = act[c % act.length];
      const k = kept ? kept[p][c] : act.length;
      excluded += o.N - k;
      // a poisoner scaled beyond 2^12 has its exponents left out of the shared
      // scale (sentry): it owns its chunks, and its own part of them saturates
      // there, which this reference cannot replay
      if (Math.abs(o.scaleOf(owner)) > 4096) {
        unverified++;
        continue;
      }
      const others = act.filter((q) => q !== owner);
      const sets = subsets(others, Math.max(0, k - 1), 64);
      if (!sets) {
        unverified++;
        continue;
      }
      let best = Infinity, bestDen = 0;
      for (const set of sets) {
        let d2 = 0, r2 = 0;
        for (let i = from; i < to; i++) {
          let ref = ranks[owner][i];
          for (const q of set) ref += ranks[q][i];
          d2 += (x[i] - ref) ** 2;
          r2 += ref * ref;
        }
        if (d2 < best) (best = d2), (bestDen = r2);
      }
      num += best;
      den += bestDen;
    }
  }
  return { err: den > 0 ? Math.sqrt(num / den) : Math.sqrt(num), excluded, unverified };
}

/**
 * Verifies a round of a robust mode: each chunk against the same combiner
 * over every rank's exact gradient (the poisoned one as it was sent). Only
 * quantization separates the two. A chunk whose result left contributions
 * out (the sentry) cannot be recomputed here and is counted unverified.
 */
function verifyRobust(
  x: Float32Array, kept: Uint16Array[] | null, reference: RobustAggregator,
  o: { seed: number; round: number; N: number; chunkElems: number; perRound: number; scaleOf: (rank: number) => number; active: number[][] },
): { err: number; excluded: number; unverified: number } {
  const n = x.length;
  const E = o.chunkElems;
  const ranks = synthRanks(o, n);
  const all = [...Array(o.N).keys()];
  let num = 0, den = 0, excluded = 0, unverified = 0;
  const ref = new Float32Array(E);
  for (let off = 0, p = 0; off < n; off += o.perRound, p++) {
    const end = Math.min(n, off + o.perRound);
    const nchunks = Math.ceil((end - off) / E);
    for (let c = 0; c < nchunks; c++) {
      const from = off + c * E, to = Math.min(end, from + E);
      const k = kept ? kept[p][c] : o.N;
      excluded += o.N - k;
      // owner first, as the owner combines them (cclip's worker ids follow)
      const owner = o.active[p][c % o.active[p].length];
      const order = [owner, ...all.filter((q) => q !== owner)];
      const r = ref.subarray(0, to - from);
      reference.aggregate(robustKey(c, to - from), order.map((q) => ranks[q].subarray(from, to)), order, r);
      if (k < o.N) {
        unverified++;
        continue;
      }
      for (let i = from; i < to; i++) {
        num += (x[i] - r[i - from]) ** 2;
        den += r[i - from] ** 2;
      }
    }
  }
  return { err: den > 0 ? Math.sqrt(num / den) : Math.sqrt(num), excluded, unverified };
}

/** Every k-subset of xs, or null when there are more than `limit`. */
function subsets(xs: number[], k: number, limit: number): number[][] | null {
  const out: number[][] = [];
  const walk = (start: number, acc: number[]): boolean => {
    if (acc.length === k) {
      out.push([...acc]);
      return out.length <= limit;
    }
    for (let i = start; i < xs.length; i++) {
      acc.push(xs[i]);
      if (!walk(i + 1, acc)) return false;
      acc.pop();
    }
    return true;
  };
  return walk(0, []) ? out : null;
}

const diffStats = (a: CollectiveStats, b: CollectiveStats) => combineStats(a, b, -1);
const addStats = (a: CollectiveStats, b: CollectiveStats) => combineStats(a, b, 1);
