// The rows of `ainftp bench`: how each metric is computed from what one
// system's run measured (pure functions, tested on canned inputs), the
// ratio of ainftp against the best plain-TCP peer, and the brief's claimed
// figures, which are shown beside the measurements and never used in them.
import { payloadBytes } from "../abi.ts";
import type { WindowSummary } from "./sampler.ts";
import { bandwidth, type Bandwidth } from "./shape.ts";

export type SystemName = "ainftp" | "ainftp-8" | "ainftp-4" | "tcp" | "gloo" | "mpi";
/** ainftp at each bit width (issue 14): "ainftp" is 16 bits, as before. */
export type AinftpSystem = "ainftp" | "ainftp-8" | "ainftp-4";
export type BaselineName = Exclude<SystemName, AinftpSystem>;
export const AINFTP_SYSTEMS: readonly AinftpSystem[] = ["ainftp", "ainftp-8", "ainftp-4"];
/** The system name of ainftp at `bits`. */
export function ainftpSystem(bits: 16 | 8 | 4): AinftpSystem {
  return bits === 16 ? "ainftp" : `ainftp-${bits}`;
}
export function isAinftp(s: SystemName): s is AinftpSystem {
  return (AINFTP_SYSTEMS as readonly string[]).includes(s);
}
export const BASELINES: readonly BaselineName[] = ["tcp", "gloo", "mpi"];

/** Round-time quantiles (ms) of the slowest rank per round. */
export interface RoundQuantiles {
  median: number;
  p10: number;
  p90: number;
  p99: number;
}

/** Interface counters over a whole run, per host and per round (warm-up rounds included). */
export interface WireCounts {
  tx_bytes_per_host_per_round: number;
  rx_bytes_per_host_per_round: number;
  tx_packets_per_host_per_round: number;
  rx_packets_per_host_per_round: number;
  /** rx bytes ÷ (MTU + 14): full-size frames a NIC would deliver (veth counts a 64 KB TSO/GSO frame as one packet). */
  rx_frames_per_host_per_round: number;
}

/** What a system's own counters say, per host and per timed round (null: it does not count it). */
export interface SystemCounters {
  /** Times userspace woke up to handle network events. */
  wakeups_per_round: number | null;
  /** What `wakeups_per_round` counts, in words. */
  wakeups_source: string | null;
  /** Packets the system itself counted as received (ainftp: its XDP program), or null. */
  packets_per_round: number | null;
  /** Payload bytes moved between kernel and userspace. */
  copy_bytes_per_round: number | null;
  copy_source: string | null;
}

export interface SystemRun {
  system: SystemName;
  /** Name in the table, with the version where known. */
  label: string;
  version: string | null;
  /** ok: it ran (see verified); na: not installed (reason says what to install); failed: it ran and broke. */
  status: "ok" | "na" | "failed";
  reason: string | null;
  /** Every rank's every timed round matched the reference sum (null: did not run). */
  verified: boolean | null;
  peers: number;
  bytes: number;
  warmup: number;
  rounds: number;
  round_ms: RoundQuantiles | null;
  round_times_ms: number[];
  /** Per timed round, the CPU its ranks spent inside it: each rank's process CPU (every thread, user and
   * kernel) around its own all-reduce, summed over ranks (null: a rank did not report it). */
  round_cpu_ms: number[] | null;
  wall_ms: number | null;
  wire: WireCounts | null;
  /** The sampled run (see src/bench/sampler.ts); null when not sampled. */
  window: WindowSummary | null;
  /** NET_RX / NET_TX softirqs raised on all CPUs over the whole run. */
  softirqs: { net_rx: number; net_tx: number } | null;
  counters: SystemCounters;
  metrics: Metrics;
  /** Why a metric is null, by metric name. */
  na: Partial<Record<keyof Metrics, string>>;
  /** Per-rank reports as the system printed them (hashes and per-round times left out). */
  detail: unknown;
  /** Each host's link rate in this run, bits/s (tbf both ways); null unshaped. */
  link_rate_bps?: number | null;
  /** nccl-tests' figures at the median round (null: no verified round time). */
  bandwidth?: Bandwidth | null;
  /** Shaped runs: the links' measured peak rates against the limit. */
  shaping?: ShapingCheck | null;
  /** --back-to-back: the same system with no barrier between rounds. */
  back_to_back?: BackToBackRun | null;
}

/** The check that a shaped run stayed within its rate: each host's highest tx and rx rate over
 * windows of `window_ms` (interface counters, sampled), against rate + burst ÷ window. */
export interface ShapingCheck {
  rate_bps: number;
  burst_bytes: number;
  limit_bytes: number;
  window_ms: number;
  /** Highest over hosts, bits/s. */
  peak_tx_bps: number;
  peak_rx_bps: number;
  /** What the token bucket lets through over one window, as a rate. */
  allowed_bps: number;
  within_rate: boolean;
  /** Packets the qdiscs dropped (queue full) and deferred (out of tokens), all links. */
  qdisc_drops: number;
  qdisc_overlimits: number;
}

/** The back-to-back run of a system, beside its barrier-separated one. */
export type BackToBackRun = Pick<
  SystemRun, "status" | "reason" | "verified" | "warmup" | "rounds" | "round_ms" | "round_times_ms" | "wall_ms" | "wire" | "detail"
> & { bandwidth: Bandwidth | null; shaping: ShapingCheck | null };

export interface Metrics {
  wire_bytes_per_host_per_round: number | null;
  round_ms_median: number | null;
  round_ms_p99: number | null;
  net_rx_softirqs_per_s: number | null;
  net_rx_softirqs_per_round: number | null;
  wakeups_per_1000_packets: number | null;
  ctx_switches_per_1000_packets: number | null;
  hw_irqs_per_s: number | null;
  cpu_ms_per_round: number | null;
  cpu_share_of_core_per_host: number | null;
  copy_bytes_per_host_per_round: number | null;
  /** Bytes copied ÷ bytes received: how many times each received byte's worth was copied (the brief counts copies per packet). */
  copies_per_byte_received: number | null;
  /** nccl-tests: float32 bytes ÷ median round time, bytes/s. */
  algbw_bytes_per_s: number | null;
  /** algbw × 2(N−1)/N, bytes/s. */
  busbw_bytes_per_s: number | null;
  /** Shaped: wire bytes per host per round ÷ (rate × median round time). */
  line_rate_fraction: number | null;
  /** --back-to-back: median round with no barrier between rounds. */
  round_ms_median_back_to_back: number | null;
}

export const METRIC_NAMES: readonly (keyof Metrics)[] = [
  "wire_bytes_per_host_per_round", "round_ms_median", "round_ms_p99", "net_rx_softirqs_per_s", "net_rx_softirqs_per_round",
  "wakeups_per_1000_packets", "ctx_switches_per_1000_packets", "hw_irqs_per_s", "cpu_ms_per_round", "cpu_share_of_core_per_host",
  "copy_bytes_per_host_per_round", "copies_per_byte_received", "algbw_bytes_per_s", "busbw_bytes_per_s", "line_rate_fraction",
  "round_ms_median_back_to_back",
];

export interface MetricContext {
  peers: number;
  mtu: number;
  /** Why hardware IRQs cannot be counted (veth), or null when the interface has a device. */
  hwIrqNa: string | null;
  /** Hardware IRQs of the interfaces per second over the run, when they have a device. */
  hwIrqsPerS?: number | null;
  /** Each host's link rate, bits/s; null unshaped. */
  rateBps?: number | null;
}

/** Rounds that moved data in a run: warm-up and timed. */
export function dataRounds(r: Pick<SystemRun, "warmup" | "rounds">): number {
  return r.warmup + r.rounds;
}

/**
 * Every metric of one run, from its measurements:
 * - wire bytes: the hosts' tx bytes over the whole run ÷ hosts ÷ data rounds;
 * - round times: the slowest rank's, per timed round;
 * - NET_RX softirqs: per second of the active window, and per data round over the whole run;
 * - wake-ups per 1000 packets: the system's own count ÷ the packets it received (its own count, or wire frames);
 * - context switches per 1000 packets: /proc/stat ctxt over the active window ÷ the frames received in it;
 * - CPU: the processes' CPU plus the ksoftirqd threads' (else every CPU's softirq ticks) in the active window, per round (the timed rounds when the window
 *   covers them alone: the ranks marked the end of their warm-up; else per data round), and as a share of one core per host;
 * - copies: the system's own syscall payload count, else /proc/PID/io when it is plausible, per host per round, and ÷ the bytes received.
 */
export function computeMetrics(r: SystemRun, ctx: MetricContext): { metrics: Metrics; na: SystemRun["na"] } {
  const na: SystemRun["na"] = {};
  const m: Metrics = {
    wire_bytes_per_host_per_round: null, round_ms_median: null, round_ms_p99: null, net_rx_softirqs_per_s: null,
    net_rx_softirqs_per_round: null, wakeups_per_1000_packets: null, ctx_switches_per_1000_packets: null, hw_irqs_per_s: null,
    cpu_ms_per_round: null, cpu_share_of_core_per_host: null, copy_bytes_per_host_per_round: null, copies_per_byte_received: null,
    algbw_bytes_per_s: null, busbw_bytes_per_s: null, line_rate_fraction: null, round_ms_median_back_to_back: null,
  };
  const all = (why: string) => {
    for (const k of METRIC_NAMES) na[k] = why;
    return { metrics: m, na };
  };
  if (r.status === "na") return all(r.reason ?? "not installed");
  if (r.status === "failed") return all(`failed: ${r.reason ?? "unknown"}`);
  if (r.verified !== true) return all("the result was not verified against the reference sum, so its figures do not count");
  const rounds = dataRounds(r);
  const w = r.window;
  const activeS = w ? w.activeMs / 1000 : 0;

  if (r.wire) m.wire_bytes_per_host_per_round = r.wire.tx_bytes_per_host_per_round;
  else na.wire_bytes_per_host_per_round = "interface counters not read";
  if (r.round_ms) {
    m.round_ms_median = r.round_ms.median;
    m.round_ms_p99 = r.round_ms.p99;
  }
  if (w && activeS > 0) m.net_rx_softirqs_per_s = w.netRx / activeS;
  else na.net_rx_softirqs_per_s = "no active interval was sampled";
  if (r.softirqs) m.net_rx_softirqs_per_round = r.softirqs.net_rx / rounds;

  const frames = r.wire?.rx_frames_per_host_per_round ?? null;
  const packets = r.counters.packets_per_round ?? frames;
  if (r.counters.wakeups_per_round !== null && packets) m.wakeups_per_1000_packets = (1000 * r.counters.wakeups_per_round) / packets;
  else na.wakeups_per_1000_packets = r.counters.wakeups_source ?? "not instrumented: it does not count its wake-ups";
  if (w && w.ctxSwitches !== undefined && w.rxBytes > 0) {
    const windowFrames = w.rxBytes / (ctx.mtu + 14);
    m.ctx_switches_per_1000_packets = (1000 * w.ctxSwitches) / windowFrames;
  } else na.ctx_switches_per_1000_packets = "no active interval was sampled";

  if (ctx.hwIrqNa) na.hw_irqs_per_s = ctx.hwIrqNa;
  else if (ctx.hwIrqsPerS != null) m.hw_irqs_per_s = ctx.hwIrqsPerS;
  else na.hw_irqs_per_s = "not counted";

  const inRound = r.round_cpu_ms?.length ? r.round_cpu_ms : null;
  if (inRound && r.round_ms) {
    // What the ranks burned inside their timed all-reduces (each rank's process CPU around its own
    // call, every thread, user and kernel: in-context softirq work included), summed over ranks,
    // plus ksoftirqd's in the sampled window where it was read (softirq work no rank was charged).
    // Not gated on traffic: a phase that moves no bytes (ainftp's exponents before the plan) costs
    // CPU all the same, and a rank verifying while others still move bytes is not charged.
    const ksoftirqd = w?.ksoftirqdMs !== undefined && activeS > 0 ? w.ksoftirqdMs / (w.timedOnly ? r.rounds : rounds) : 0;
    m.cpu_ms_per_round = inRound.reduce((s, v) => s + v, 0) / inRound.length + ksoftirqd;
    const meanRound = r.round_times_ms.reduce((s, v) => s + v, 0) / Math.max(1, r.round_times_ms.length);
    m.cpu_share_of_core_per_host = m.cpu_ms_per_round / meanRound / ctx.peers;
  } else if (w && activeS > 0) {
    // the ranks did not report their in-round CPU: the sampled window's active intervals (those that
    // moved bytes): the ranks' CPU (softirq work in their context included) + ksoftirqd's, when
    // sampled; else the softirq ticks of all CPUs, which count that in-context work a second time
    const cpu = w.cpuMs + (w.ksoftirqdMs ?? w.softirqMs);
    m.cpu_ms_per_round = cpu / (w.timedOnly ? r.rounds : rounds);
    m.cpu_share_of_core_per_host = cpu / w.activeMs / ctx.peers;
  } else {
    na.cpu_ms_per_round = "no active interval was sampled";
    na.cpu_share_of_core_per_host = na.cpu_ms_per_round;
  }

  if (r.counters.copy_bytes_per_round !== null) m.copy_bytes_per_host_per_round = r.counters.copy_bytes_per_round;
  else na.copy_bytes_per_host_per_round = r.counters.copy_source ?? "not instrumented";
  const received = r.wire?.rx_bytes_per_host_per_round ?? 0;
  if (m.copy_bytes_per_host_per_round !== null && received > 0) m.copies_per_byte_received = m.copy_bytes_per_host_per_round / received;
  else na.copies_per_byte_received = na.copy_bytes_per_host_per_round ?? "no bytes received";

  const rate = ctx.rateBps ?? null;
  if (r.round_ms && r.round_ms.median > 0) {
    const bw = bandwidth({ bytes: r.bytes, peers: ctx.peers, ms: r.round_ms.median, rateBps: rate, wireBytesPerHostPerRound: r.wire?.tx_bytes_per_host_per_round ?? null });
    m.algbw_bytes_per_s = bw.algbw_bytes_per_s;
    m.busbw_bytes_per_s = bw.busbw_bytes_per_s;
    m.line_rate_fraction = bw.line_rate_fraction;
  } else na.algbw_bytes_per_s = na.busbw_bytes_per_s = "no round time";
  if (rate === null) na.line_rate_fraction = "unshaped link: no line rate";
  else if (m.line_rate_fraction === null) na.line_rate_fraction ??= "interface counters not read";
  const b2b = r.back_to_back;
  if (!b2b) na.round_ms_median_back_to_back = "not run (--back-to-back)";
  else if (b2b.status !== "ok") na.round_ms_median_back_to_back = b2b.status === "na" ? (b2b.reason ?? "n/a") : `failed: ${b2b.reason ?? "unknown"}`;
  else if (b2b.verified !== true) na.round_ms_median_back_to_back = "the back-to-back result was not verified against the reference sum";
  else if (b2b.round_ms) m.round_ms_median_back_to_back = b2b.round_ms.median;
  return { metrics: m, na };
}

// ---- what the systems count themselves ------------------------------------------------------

/** The fields of ainftp's NodeReport (src/node.ts) the rows use. */
export interface AinftpRankReport {
  rank: number;
  peers: number;
  elements: number;
  rounds: number;
  chunk_elems: number;
  retransmits: number;
  wakeups: number;
  socket_packets: number;
  packets_received: number;
  result_copy_bytes_per_round: number;
  /** Bits per value on the wire (absent before issue 14: 16). */
  bits?: 16 | 8 | 4;
}

const WIRE_HDR = 32;

/**
 * UDP payload bytes rank `rank` hands to sendmsg in one all-reduce of
 * `elements` values: a contribution for every chunk it does not own, and the
 * result of every chunk it owns to each other member (chunk c of a protocol
 * round is owned by c mod N; a round holds at most `capacity` chunks).
 */
export function ainftpSendBytes(elements: number, chunkElems: number, peers: number, rank: number, capacity = 8192, bits: 16 | 8 | 4 = 16): number {
  let total = 0;
  for (let off = 0; off < elements; off += capacity * chunkElems) {
    const end = Math.min(elements, off + capacity * chunkElems);
    const chunks = Math.ceil((end - off) / chunkElems);
    for (let c = 0; c < chunks; c++) {
      const pkt = WIRE_HDR + payloadBytes(bits, Math.min(chunkElems, end - off - c * chunkElems));
      total += c % peers === rank ? (peers - 1) * pkt : pkt;
    }
  }
  return total;
}

/** ainftp's counters per host and timed round, from its ranks' reports. */
export function ainftpCounters(reports: AinftpRankReport[]): SystemCounters {
  const n = reports.length;
  const mean = (f: (r: AinftpRankReport) => number) => reports.reduce((a, r) => a + f(r), 0) / n;
  return {
    wakeups_per_round: mean((r) => (r.wakeups + r.socket_packets) / r.rounds),
    wakeups_source: "poll returns + control packets read from the socket (its report)",
    packets_per_round: mean((r) => r.packets_received / r.rounds),
    copy_bytes_per_round: mean(
      (r) => ainftpSendBytes(r.elements, r.chunk_elems, r.peers, r.rank, 8192, r.bits ?? 16) + (r.retransmits / r.rounds) * (WIRE_HDR + payloadBytes(r.bits ?? 16, r.chunk_elems)) + r.result_copy_bytes_per_round,
    ),
    copy_source: "UDP payload passed to sendmsg (from the protocol's packet count, retransmits included) + result bytes the XDP program writes into the mmapped map",
  };
}

/** The fields of the TCP ring's report (src/bench/tcp-ring.ts) the rows use. */
export interface TcpRankReport {
  bytes_written_per_round: number;
  bytes_read_per_round: number;
  polls_per_round: number;
  recv_calls_per_round: number;
  send_calls_per_round: number;
}

export function tcpCounters(reports: TcpRankReport[]): SystemCounters {
  const n = reports.length;
  const mean = (f: (r: TcpRankReport) => number) => reports.reduce((a, r) => a + f(r), 0) / n;
  return {
    wakeups_per_round: mean((r) => r.polls_per_round),
    wakeups_source: "poll() calls that waited because no byte could move (its counters)",
    packets_per_round: null,
    copy_bytes_per_round: mean((r) => r.bytes_written_per_round + r.bytes_read_per_round),
    copy_source: "payload of send() + recv() (its counters)",
  };
}

/**
 * Gloo and Open MPI count nothing themselves. Their copies come from
 * /proc/PID/io (read/write/readv/writev payload) when that is plausible: at
 * least what any ring all-reduce moves through its sockets, 2(N−1)/N of the
 * vector each way; otherwise they went through sendmsg/recvmsg, which
 * /proc/PID/io does not count, and the figure is n/a.
 */
export function untrackedCounters(ioBytesPerHostPerRound: number | null, bytes: number, peers: number): SystemCounters {
  const floor = 0.9 * 2 * 2 * bytes * ((peers - 1) / peers);
  const plausible = ioBytesPerHostPerRound !== null && ioBytesPerHostPerRound >= floor;
  return {
    wakeups_per_round: null,
    wakeups_source: "not instrumented: Gloo and Open MPI do not count their wake-ups (see the context-switch row)",
    packets_per_round: null,
    copy_bytes_per_round: plausible ? ioBytesPerHostPerRound : null,
    copy_source: plausible
      ? "read/write payload from /proc/PID/io over the active window"
      : `not instrumented: /proc/PID/io saw ${ioBytesPerHostPerRound === null ? "nothing" : Math.round(ioBytesPerHostPerRound)} B/round, less than a ring moves, so its sockets use sendmsg/recvmsg, which /proc/PID/io does not count`,
  };
}

// ---- the table ------------------------------------------------------------------------------

/** BRIEF.txt's table, for the column headed as the brief's claim (never measured, never used in a ratio). */
export const BRIEF_CLAIMS: Record<string, string> = {
  bandwidth: "~98% less (i16 + 32:1 aggregation)",
  latency: "~150 ms → ~5-15 ms (~10x)",
  interrupts: "1,000,000/s → 31,000/s",
  wakeups: "1 wake-up per 32 packets",
  cpu: "~40% → ~4%",
  copies: "2 per packet → 0",
  tlb: "~1000x fewer misses",
  security: "O(N) post-processing → O(1) inline",
  straggler: "blocks → auto-drop & reroute",
};

export interface MetricRow {
  id: string;
  /** The brief's metric this row measures. */
  group: string;
  metric: string;
  unit: string;
  /** By system; null where n/a. */
  values: Partial<Record<SystemName, number | null>>;
  /** Why a value is null, by system. */
  notes: Partial<Record<SystemName, string>>;
  /** The baseline with the best (lowest) value, and ainftp's value ÷ it. */
  best_peer: BaselineName | null;
  ratio: number | null;
  /** ainftp at 8 and 4 bits ÷ the same best peer, where they ran (issue 14). */
  ratios?: Partial<Record<AinftpSystem, number | null>>;
  brief_claim: string | null;
  /** Rows that are not per system (TLB, security, straggler): one text for the baselines' side and one for ainftp's. */
  text?: { baselines: string; ainftp: string };
  /** Bandwidth rows: the best peer is the highest, and a ratio above 1 favours ainftp. */
  higher_is_better?: boolean;
}

const ROW_DEFS: { id: keyof Metrics; group: string; metric: string; unit: string; brief_claim: string | null; higher?: true; when?: "shaped" | "back-to-back" }[] = [
  { id: "wire_bytes_per_host_per_round", group: "Bandwidth usage", metric: "bytes on the wire per host per round", unit: "MiB", brief_claim: BRIEF_CLAIMS.bandwidth },
  { id: "round_ms_median", group: "Latency per batch", metric: "round time, median", unit: "ms", brief_claim: BRIEF_CLAIMS.latency },
  { id: "round_ms_p99", group: "Latency per batch", metric: "round time, p99", unit: "ms", brief_claim: null },
  { id: "round_ms_median_back_to_back", group: "Latency per batch", metric: "round time, median, back to back (no barrier, as a trainer calls it)", unit: "ms", brief_claim: null, when: "back-to-back" },
  { id: "algbw_bytes_per_s", group: "Bandwidth usage", metric: "algbw: float32 bytes ÷ median round (higher is better)", unit: "GB/s", brief_claim: null, higher: true },
  { id: "busbw_bytes_per_s", group: "Bandwidth usage", metric: "busbw: algbw × 2(N−1)/N (nccl-tests; higher is better)", unit: "GB/s", brief_claim: null, higher: true },
  { id: "line_rate_fraction", group: "Bandwidth usage", metric: "share of line rate: wire bytes per host ÷ (rate × median round)", unit: "%", brief_claim: null, when: "shaped" },
  { id: "net_rx_softirqs_per_s", group: "Kernel interrupts", metric: "NET_RX softirqs per second (while moving data)", unit: "/s", brief_claim: BRIEF_CLAIMS.interrupts },
  { id: "net_rx_softirqs_per_round", group: "Kernel interrupts", metric: "NET_RX softirqs per round", unit: "", brief_claim: null },
  { id: "wakeups_per_1000_packets", group: "Kernel interrupts", metric: "userspace wake-ups per 1000 packets received", unit: "", brief_claim: BRIEF_CLAIMS.wakeups },
  { id: "ctx_switches_per_1000_packets", group: "Kernel interrupts", metric: "context switches per 1000 packets (machine-wide)", unit: "", brief_claim: null },
  { id: "hw_irqs_per_s", group: "Kernel interrupts", metric: "hardware IRQs per second", unit: "/s", brief_claim: null },
  { id: "cpu_ms_per_round", group: "CPU usage (networking)", metric: "CPU ms per round (ranks inside their rounds + ksoftirqd)", unit: "ms", brief_claim: BRIEF_CLAIMS.cpu },
  { id: "cpu_share_of_core_per_host", group: "CPU usage (networking)", metric: "share of one core per host while moving data", unit: "%", brief_claim: null },
  { id: "copy_bytes_per_host_per_round", group: "Memory copies", metric: "bytes copied kernel⇄user per host per round", unit: "MiB", brief_claim: BRIEF_CLAIMS.copies },
  { id: "copies_per_byte_received", group: "Memory copies", metric: "copies per byte received (bytes copied ÷ bytes received)", unit: "", brief_claim: null },
];

/** ainftp's value ÷ the best verified baseline's (the lowest; the highest when higher is better), and which baseline that was. */
export function bestRatio(values: Partial<Record<SystemName, number | null>>, higher = false): { best_peer: BaselineName | null; ratio: number | null } {
  let best: BaselineName | null = null;
  for (const b of BASELINES) {
    const v = values[b];
    if (v === null || v === undefined || !Number.isFinite(v)) continue;
    if (best === null || (higher ? v > (values[best] as number) : v < (values[best] as number))) best = b;
  }
  const ours = values.ainftp;
  if (best === null || ours === null || ours === undefined) return { best_peer: best, ratio: null };
  const theirs = values[best] as number;
  return { best_peer: best, ratio: theirs > 0 ? ours / theirs : null };
}

/** The per-system rows of one (peers, size, link rate) configuration; the line-rate row only when
 * shaped, the back-to-back row only when it ran. */
export function metricRows(systems: SystemRun[], o: { shaped?: boolean; backToBack?: boolean } = {}): MetricRow[] {
  const defs = ROW_DEFS.filter((d) => !d.when || (d.when === "shaped" ? o.shaped : o.backToBack));
  return defs.map((d) => {
    const values: MetricRow["values"] = {};
    const notes: MetricRow["notes"] = {};
    for (const s of systems) {
      values[s.system] = s.metrics[d.id];
      if (s.metrics[d.id] === null) notes[s.system] = s.na[d.id] ?? "n/a";
    }
    const best = bestRatio(values, d.higher);
    const ratios: Partial<Record<AinftpSystem, number | null>> = {};
    for (const a of AINFTP_SYSTEMS) {
      if (a === "ainftp" || !(a in values)) continue;
      const v = values[a], theirs = best.best_peer ? values[best.best_peer] : null;
      ratios[a] = v !== null && v !== undefined && theirs ? v / theirs : null;
    }
    return { id: d.id, group: d.group, metric: d.metric, unit: d.unit, values, notes, ...best, ...(Object.keys(ratios).length ? { ratios } : {}), brief_claim: d.brief_claim, ...(d.higher ? { higher_is_better: true } : {}) };
  });
}

export interface TlbSummary {
  ns_per_access_4k: number | null;
  ns_per_access_2m: number | null;
  ratio: number | null;
  skipped_2m: string | null;
  perf: { supported: boolean; why: string | null; event: string };
  perf_per_access_4k: number | null;
  perf_per_access_2m: number | null;
}

export interface SentrySummary {
  xdp_ns_per_packet_off: number;
  inline_ns_per_packet: number;
  inline_ns_spread: number;
  userspace_sampled_ns_per_packet: number;
  userspace_full_ns_per_packet: number;
  auth_elems?: number;
  auth_header_ns_per_packet?: number;
  auth_header_ns_spread?: number;
  auth_full_ns_per_packet?: number;
  auth_full_ns_spread?: number;
  control_mac_ns_per_frame?: number;
}

/** The rows that are not per system: TLB (arena pages), security check (sentry), straggler. */
export function machineRows(
  tlb: TlbSummary | { error: string } | null,
  sentry: SentrySummary | { error: string } | null,
  straggler: {
    status: "measured" | "n/a"; reason: string | null; delay_ms?: number; round_ms_median?: number | null; undelayed_round_ms_median?: number | null;
    tcp_round_ms_median?: number | null; passive_rounds?: number | null; rounds?: number; ratio?: number | null; verified?: boolean | null;
  },
): MetricRow[] {
  const rows: MetricRow[] = [];
  const base = { values: {}, notes: {}, best_peer: null } as const;
  if (tlb && !("error" in tlb)) {
    const f = (x: number | null) => (x === null ? "n/a" : `${x.toFixed(0)} ns`);
    rows.push({
      ...base, id: "tlb_ns_per_access", group: "TLB misses", metric: "random access over the arena (pointer chase)", unit: "ns",
      ratio: tlb.ratio === null ? null : 1 / tlb.ratio, brief_claim: BRIEF_CLAIMS.tlb,
      text: { baselines: `4 KB pages: ${f(tlb.ns_per_access_4k)}/access`, ainftp: tlb.skipped_2m ? `2 MB pages: n/a (${tlb.skipped_2m})` : `2 MB pages: ${f(tlb.ns_per_access_2m)}/access` },
    });
    rows.push({
      ...base, id: "tlb_pmu", group: "TLB misses", metric: `${tlb.perf.event} (PMU)`, unit: "", ratio: null, brief_claim: null,
      text: tlb.perf.supported
        ? { baselines: `4 KB pages: ${tlb.perf_per_access_4k?.toFixed(3) ?? "n/a"}/access`, ainftp: `2 MB pages: ${tlb.perf_per_access_2m?.toFixed(3) ?? "n/a"}/access` }
        : { baselines: `n/a: ${tlb.perf.why}`, ainftp: "n/a" },
    });
  } else {
    rows.push({ ...base, id: "tlb_ns_per_access", group: "TLB misses", metric: "random access over the arena (pointer chase)", unit: "ns", ratio: null, brief_claim: BRIEF_CLAIMS.tlb,
      text: { baselines: `n/a: ${tlb ? tlb.error : "not run (--no-micro)"}`, ainftp: "n/a" } });
  }
  if (sentry && !("error" in sentry)) {
    rows.push({
      ...base, id: "security_ns_per_packet", group: "Security check", metric: "energy check per packet", unit: "ns",
      // below the noise, the inline cost has no meaningful ratio
      ratio: sentry.inline_ns_per_packet > sentry.inline_ns_spread && sentry.userspace_sampled_ns_per_packet > 0
        ? sentry.inline_ns_per_packet / sentry.userspace_sampled_ns_per_packet : null,
      brief_claim: BRIEF_CLAIMS.security,
      text: {
        baselines: `userspace pass: ${sentry.userspace_sampled_ns_per_packet.toFixed(0)} ns (16 samples), ${sentry.userspace_full_ns_per_packet.toFixed(0)} ns (whole payload)`,
        ainftp: sentry.inline_ns_per_packet > sentry.inline_ns_spread
          ? `inline in XDP: +${sentry.inline_ns_per_packet.toFixed(0)} ± ${sentry.inline_ns_spread.toFixed(0)} ns (on ${sentry.xdp_ns_per_packet_off.toFixed(0)} ns)`
          : `inline in XDP: within the noise (${sentry.inline_ns_per_packet.toFixed(0)} ± ${sentry.inline_ns_spread.toFixed(0)} ns, on ${sentry.xdp_ns_per_packet_off.toFixed(0)} ns)`,
      },
    });
    if (sentry.auth_header_ns_per_packet !== undefined) {
      const pm = (x: number, sp: number) => `+${x.toFixed(0)} ± ${sp.toFixed(0)} ns`;
      rows.push({
        ...base, id: "auth_ns_per_packet", group: "Security check", metric: "authentication per packet (job key, SipHash-2-4)", unit: "ns", ratio: null, brief_claim: null,
        text: {
          baselines: "none: plain TCP authenticates nothing (a host on the segment can inject into the stream)",
          ainftp: `XDP, ${sentry.auth_elems} values: header MAC ${pm(sentry.auth_header_ns_per_packet, sentry.auth_header_ns_spread ?? 0)}, ` +
            `header + payload ${pm(sentry.auth_full_ns_per_packet ?? 0, sentry.auth_full_ns_spread ?? 0)}; control frames ${sentry.control_mac_ns_per_frame?.toFixed(0)} ns each`,
        },
      });
    }
  } else {
    rows.push({ ...base, id: "security_ns_per_packet", group: "Security check", metric: "energy check per packet", unit: "ns", ratio: null, brief_claim: BRIEF_CLAIMS.security,
      text: { baselines: `n/a: ${sentry ? sentry.error : "not run (--no-micro)"}`, ainftp: "n/a" } });
  }
  const ms = (x: number | null | undefined) => formatValue("round_ms_median", x);
  rows.push({
    ...base, id: "straggler_round_ms", group: "Straggler handling", metric: `median round, one host's link delayed ${straggler.delay_ms ?? 600} ms`, unit: "ms",
    ratio: straggler.status === "n/a" ? null : (straggler.ratio ?? null),
    brief_claim: BRIEF_CLAIMS.straggler,
    text: straggler.status === "n/a"
      ? { baselines: `n/a: ${straggler.reason}`, ainftp: "n/a" }
      : {
          baselines: `tcp ring: ${ms(straggler.tcp_round_ms_median)} (every ring step waits for the delayed host)`,
          ainftp: `${ms(straggler.round_ms_median)} (undelayed ${ms(straggler.undelayed_round_ms_median)}); the delayed host sat out ${straggler.passive_rounds ?? "?"} of ${straggler.rounds ?? "?"} rounds` +
            (straggler.verified === false ? "; NOT verified" : ""),
        },
  });
  return rows;
}

// ---- formatting -------------------------------------------------------------------------------

/** A metric's value as the table shows it. */
export function formatValue(id: string, v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "n/a";
  switch (id) {
    case "wire_bytes_per_host_per_round":
    case "copy_bytes_per_host_per_round":
      return `${(v / 2 ** 20).toFixed(2)} MiB`;
    case "algbw_bytes_per_s":
    case "busbw_bytes_per_s":
      return `${(v / 1e9).toFixed(v < 1e9 ? 3 : 2)} GB/s`;
    case "line_rate_fraction":
      return `${(100 * v).toFixed(0)}%`;
    case "round_ms_median":
    case "round_ms_median_back_to_back":
    case "round_ms_p99":
    case "cpu_ms_per_round":
      return `${v.toFixed(v < 10 ? 2 : 1)} ms`;
    case "cpu_share_of_core_per_host":
      return `${(100 * v).toFixed(1)}%`;
    case "copies_per_byte_received":
      return `${v.toFixed(2)}×`;
    default:
      return v >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(v < 10 ? 2 : 1);
  }
}

export function formatRatio(r: MetricRow): string {
  if (r.ratio === null || !Number.isFinite(r.ratio)) return "-";
  const x = r.ratio >= 10 ? r.ratio.toFixed(0) : r.ratio >= 1 ? r.ratio.toFixed(2) : r.ratio.toPrecision(2);
  return r.best_peer ? `${x}× (vs ${r.best_peer})` : `${x}×`;
}
