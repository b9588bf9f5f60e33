// `ainftp bench` (cli/bench.ts, src/bench/run.ts): the row methods on canned
// inputs (sampler windows, the systems' counters, ratios, the JSON schema,
// the rendered table), then as root: a failure injected after the lab is
// built leaves no namespace behind, Ctrl-C removes everything, and a 2-host,
// 1 MiB, 3-round run of the compiled binary passes with every installed
// system verified and a JSON that validates.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../cli/program.ts";
import type { IO } from "../cli/io.ts";
import { chartRows, renderBench, renderRun, writeReport } from "../cli/bench.ts";
import {
  ainftpCounters, ainftpSendBytes, bestRatio, computeMetrics, machineRows, metricRows, tcpCounters, untrackedCounters,
  type SystemRun,
} from "../src/bench/rows.ts";
import { SCHEMA_ID, defaultWarmup, liveLabNames, rankError, cpuPerRound, runBench, scalingRows, slowestPerRound, wireCounts, type BenchResult } from "../src/bench/run.ts";
import { parseNetDev, parseProcIo, parseSchedstat, parseStatSoftirqCtxt, summarize, type WindowSample } from "../src/bench/sampler.ts";
import { TIMED_ENV, markTimed } from "../src/bench/timed.ts";
import { BENCH_SCHEMA, validate, validateBenchJson } from "../src/bench/schema.ts";
import { fullEnergies, sampledEnergies } from "../src/bench/sentry-cost.ts";
import { energyOf } from "../src/sentry/energy.ts";
import { parsePerfProbe } from "../src/bench/tlb.ts";
import { delayHostLink } from "../src/bench/straggler.ts";
import type { TcpRingReport } from "../src/bench/tcp-ring.ts";
import { BIN, canUseNetns, createLab, ensureBuilt } from "./helpers/netns.ts";

const kernel = canUseNetns();
if (!kernel) console.warn("test/bench-run.test.ts: kernel tests SKIPPED — the bench builds network namespaces and attaches XDP, which needs root with `ip netns` and `nsenter`");

const MiB = 1 << 20;

// ---- canned inputs -------------------------------------------------------------------------

/** A sample: one process with two threads, one namespace. */
function sample(tMs: number, cpu: [number, number], bytes: number, o: { netRx?: number; soft?: number; ctxt?: number; io?: number; rx?: number } = {}): WindowSample {
  return {
    tMs,
    procs: { 100: { threads: { 100: cpu[0], 101: cpu[1] }, ioBytes: o.io ?? 0 } },
    ns: { "net:[1]": { bytes, rxBytes: o.rx ?? bytes / 2, rxPackets: 0 } },
    netRx: o.netRx ?? 0, netTx: 0, softirqTicks: o.soft ?? 0, ctxt: o.ctxt ?? 0,
  };
}

function cannedRun(system: SystemRun["system"], over: Partial<SystemRun> = {}): SystemRun {
  const r: SystemRun = {
    system, label: system, version: null, status: "ok", reason: null, verified: true, peers: 4, bytes: 16 * MiB, warmup: 3, rounds: 7,
    round_ms: { median: 80, p10: 70, p90: 90, p99: 120 }, round_times_ms: [80, 70, 90, 120], round_cpu_ms: null, wall_ms: 5000,
    wire: { tx_bytes_per_host_per_round: 24 * MiB, rx_bytes_per_host_per_round: 24 * MiB, tx_packets_per_host_per_round: 400, rx_packets_per_host_per_round: 400, rx_frames_per_host_per_round: 7000 },
    window: {
      intervals: 100, activeIntervals: 50, sampledMs: 2000, activeMs: 1000, cpuMs: 1500, softirqMs: 500, netRx: 20000, netTx: 10, ioBytes: 0,
      wireBytes: 48 * MiB * 10, rxBytes: 3514 * 10000, rxPackets: 0, ctxSwitches: 300, cpuMsAll: 1800, maxIntervalMs: 12, timedOnly: false,
    },
    softirqs: { net_rx: 25000, net_tx: 10 },
    counters: { wakeups_per_round: 7, wakeups_source: "x", packets_per_round: null, copy_bytes_per_round: 48 * MiB, copy_source: "y" },
    metrics: {} as SystemRun["metrics"], na: {}, detail: null, link_rate_bps: null, bandwidth: null, shaping: null, back_to_back: null,
    ...over,
  };
  const { metrics, na } = computeMetrics(r, { peers: r.peers, mtu: 3500, hwIrqNa: "veth" });
  return { ...r, metrics, na };
}

function cannedBench(): BenchResult {
  const systems = [cannedRun("ainftp", { counters: ainftpCounters([ainftpReport(0), ainftpReport(1), ainftpReport(2), ainftpReport(3)]) }), cannedRun("tcp"),
    cannedRun("gloo", { status: "na", reason: "package python3-torch not installed: apt-get install -y python3-torch (or: make bench-deps)", verified: null, round_ms: null, wire: null, window: null, softirqs: null }),
    cannedRun("mpi")];
  const runs = [{ peers: 4, bytes: 16 * MiB, systems, rows: metricRows(systems), link_rate_bps: null, regime: "unshaped", tbf: null }];
  const straggler = {
    status: "measured" as const, reason: null, delay_ms: 600, peers: 4, bytes: MiB, round_ms_median: 9.5, undelayed_round_ms_median: 8.1,
    tcp_round_ms_median: 3700, verified: true, passive_rounds: 8, rounds: 8, ratio: 9.5 / 3700,
  };
  const tlb = {
    method: "m", bytes: 64 * MiB, steps: 10, runs: 1, ns_per_access_4k: 400, ns_per_access_2m: 250, runs_4k: [400], runs_2m: [250], ratio: 1.6,
    kernel_page_size_4k: 4096, kernel_page_size_2m: 2 * MiB, perf_per_access_4k: null, perf_per_access_2m: null, hugepages_reserved: 32, skipped_2m: null,
    perf: { event: "dTLB-load-misses", supported: false, why: "perf reports dTLB-load-misses <not supported> in this VM (no PMU)" },
  };
  return {
    schema: SCHEMA_ID, date: "2026-01-01T00:00:00.000Z", command: "ainftp bench", duration_s: 1,
    config: { peers: [4], sizes: [16 * MiB], rounds: 7, baselines: ["tcp", "gloo", "mpi"], mtu: 3504, xdp_mode: "native", rx: "map", subnet: "10.213.91", chunk_elems: 1720, sample_interval_ms: 5, active_bytes: 32768, link_rates: [null], back_to_back: false, sweep: false, shaping_window_ms: 100, shaped_sizes: [16 * MiB] },
    machine: { kernel: "6.18", cores: 2, cpu_model: "x", memory_bytes: 1, virtualization: null, loadavg_1m: 0.5, bun: "1.4.5", ainftp: "0.1.0", mtu: 3504, xdp_mode: "native", af_xdp: "not used", links: "veth" },
    runs, scaling: scalingRows(runs), tlb, sentry: { error: "needs root" }, straggler, machine_rows: machineRows(tlb, { error: "needs root" }, straggler), verified: true,
  };
}

function ainftpReport(rank: number) {
  return { rank, peers: 4, elements: 4 * 1720 * 10, rounds: 10, chunk_elems: 1720, retransmits: 0, wakeups: 30, socket_packets: 10, packets_received: 400, result_copy_bytes_per_round: 10 * 3440 };
}

// ---- row methods ---------------------------------------------------------------------------

describe("sampler windows", () => {
  test("only intervals that moved enough bytes count; threads summed; a new process's past left out", () => {
    const s = [
      sample(0, [0, 0], 0),
      sample(10, [5e6, 1e6], 100_000, { netRx: 10, soft: 1, ctxt: 5, io: 1000, rx: 60_000 }), // active: 6 ms CPU
      sample(20, [6e6, 1e6], 100_500, { netRx: 11, soft: 1, ctxt: 6, io: 1000, rx: 60_200 }), // 500 B: idle
      sample(30, [9e6, 4e6], 300_500, { netRx: 31, soft: 3, ctxt: 10, io: 5000, rx: 160_200 }), // active: 6 ms CPU
    ];
    // a process that appears in the last sample only: its CPU before is start-up
    s[3].procs[200] = { threads: { 200: 9e9 }, ioBytes: 9e9 };
    const w = summarize(s, 32 * 1024);
    expect(w).toMatchObject({ intervals: 3, activeIntervals: 2, sampledMs: 30, activeMs: 20, netRx: 30, ioBytes: 5000, wireBytes: 300_000, rxBytes: 160_000, ctxSwitches: 9, maxIntervalMs: 10 });
    expect(w.cpuMs).toBeCloseTo(12, 6);
    expect(w.cpuMsAll).toBeCloseTo(13, 6);
    expect(w.softirqMs).toBeCloseTo(30, 6); // 3 ticks of USER_HZ 100
    expect(w.timedOnly).toBe(false);
    expect(w.ksoftirqdMs).toBeUndefined(); // not sampled
    s.forEach((x, i) => (x.ksoftirqdNs = [0, 2e6, 2.5e6, 5e6][i]));
    expect(summarize(s, 32 * 1024).ksoftirqdMs).toBeCloseTo(4.5, 6); // 2 + 2.5 ms in the two active intervals
  });

  test("once every rank marked the end of its warm-up, only the intervals after it count", () => {
    const s = [
      sample(0, [0, 0], 0),
      sample(10, [5e6, 1e6], 100_000, { netRx: 10, soft: 1, ctxt: 5, io: 1000, rx: 60_000 }), // warm-up: 6 ms CPU
      sample(20, [7e6, 2e6], 200_000, { netRx: 20, soft: 2, ctxt: 6, io: 2000, rx: 120_000 }), // warm-up: 3 ms, marks seen at its end
      sample(30, [9e6, 4e6], 300_000, { netRx: 31, soft: 3, ctxt: 10, io: 5000, rx: 160_000 }), // timed: 4 ms CPU
    ];
    s.forEach((x, i) => (x.timed = i >= 2));
    const w = summarize(s, 32 * 1024);
    expect(w).toMatchObject({ timedOnly: true, intervals: 3, activeIntervals: 1, activeMs: 10, netRx: 11, wireBytes: 100_000 });
    expect(w.cpuMs).toBeCloseTo(4, 6);
    expect(w.cpuMsAll).toBeCloseTo(13, 6); // (all of it, as before)
    // marks seen only at the very end (no active interval after them): the whole run counts
    s.forEach((x, i) => (x.timed = i === 3));
    expect(summarize(s, 32 * 1024)).toMatchObject({ timedOnly: false, activeIntervals: 3 });
    // no mark ever seen: the whole run counts, as without marks
    s.forEach((x) => (x.timed = false));
    expect(summarize(s, 32 * 1024)).toMatchObject({ timedOnly: false, activeIntervals: 3 });
  });

  test("a rank that failed with --json is named by its error's message and hint, not the last lines of the pretty-printed object", () => {
    const out = JSON.stringify({ error: "open communicator: spinUs NaN is not a number of µs in 0..100000 (from AINFTP_SPIN_US)", op: "open communicator", errno: null, hint: "e.g. 150, or 0 to sleep at once" }, null, 2) + "\n";
    expect(rankError(out, "")).toBe("open communicator: spinUs NaN is not a number of µs in 0..100000 (from AINFTP_SPIN_US) (hint: e.g. 150, or 0 to sleep at once)");
    // anything else: the last lines, stderr first
    expect(rankError("a\nb\nc\nd\n", "")).toBe("b | c | d");
    expect(rankError("{}", "boom\n")).toBe("boom");
  });

  test("the default warm-up: at least 20 rounds and 256 MiB (1 GiB for small rounds on an unshaped link), at most 1000 rounds, every system alike", () => {
    expect(defaultWarmup(16 * MiB)).toBe(20);
    expect(defaultWarmup(4 * MiB)).toBe(256);
    expect(defaultWarmup(8 * MiB)).toBe(32);
    expect(defaultWarmup(1 * MiB)).toBe(1000);
    expect(defaultWarmup(64 * 1024)).toBe(1000);
    expect(defaultWarmup(1024 * MiB)).toBe(20);
    // shaped: the wire sets the round, the old rule
    expect(defaultWarmup(1 * MiB, 1e9)).toBe(256);
    expect(defaultWarmup(16 * MiB, 1e9)).toBe(20);
  });

  test("a rank's mark: a file named for its rank in $AINFTP_BENCH_TIMED, nothing when unset", () => {
    const dir = mkdtempSync(join(tmpdir(), "aft-timed-"));
    try {
      delete process.env[TIMED_ENV];
      markTimed(3);
      expect(readdirSync(dir)).toEqual([]);
      process.env[TIMED_ENV] = dir;
      markTimed(3);
      markTimed(0);
      expect(readdirSync(dir).sort()).toEqual(["0", "3"]);
      process.env[TIMED_ENV] = join(dir, "gone");
      expect(() => markTimed(1)).not.toThrow();
    } finally {
      delete process.env[TIMED_ENV];
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the /proc files it reads", () => {
    expect(parseSchedstat("380998280 4092523 57\n")).toBe(380998280);
    expect(() => parseSchedstat("x")).toThrow();
    expect(parseProcIo("rchar: 100\nwchar: 23\nsyscr: 5\nread_bytes: 9\n")).toBe(123);
    const dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n" +
      "    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n";
    expect(parseNetDev(dev, "eth0")).toEqual({ rxBytes: 1000, rxPackets: 10, txBytes: 2000, txPackets: 20, bytes: 3000 });
    expect(parseNetDev(dev, "eth1")).toBeNull();
    expect(parseStatSoftirqCtxt("cpu  593163 0 292807 1139648 2906 0 52150 2417 0 0\ncpu0 1 2 3\nctxt 13785931\n")).toEqual({ softirqTicks: 52150, ctxt: 13785931 });
  });
});

describe("row methods", () => {
  test("every metric from a canned run", () => {
    const m = cannedRun("tcp").metrics;
    expect(m.wire_bytes_per_host_per_round).toBe(24 * MiB);
    expect(m.round_ms_median).toBe(80);
    expect(m.round_ms_p99).toBe(120);
    expect(m.net_rx_softirqs_per_s).toBe(20000); // 20000 in 1 s of active window
    expect(m.net_rx_softirqs_per_round).toBe(2500); // 25000 over 3 + 7 rounds
    expect(m.wakeups_per_1000_packets).toBe(1); // 7 per round over 7000 frames
    expect(m.ctx_switches_per_1000_packets).toBeCloseTo(30, 6); // 300 over 10000 frames of 3514 B
    expect(m.hw_irqs_per_s).toBeNull();
    expect(m.cpu_ms_per_round).toBe(200); // (1500 + 500) / 10
    expect(m.cpu_share_of_core_per_host).toBe(0.5); // 2000 ms in 1000 ms over 4 hosts
    expect(m.copy_bytes_per_host_per_round).toBe(48 * MiB);
    expect(m.copies_per_byte_received).toBe(2);
  });

  test("CPU per round: the ranks' CPU + ksoftirqd's when sampled (softirq in a rank's context is in its CPU already)", () => {
    const base = cannedRun("tcp");
    const r = cannedRun("tcp", { window: { ...base.window!, ksoftirqdMs: 100 } });
    expect(r.metrics.cpu_ms_per_round).toBe(160); // (1500 + 100) / 10, not + the 500 ms of softirq ticks
    expect(base.metrics.cpu_ms_per_round).toBe(200); // not sampled: the softirq ticks, as before
  });

  test("CPU per round over the timed rounds alone when the window covers them alone (the ranks' warm-up marks)", () => {
    const base = cannedRun("ainftp");
    const r = cannedRun("ainftp", { window: { ...base.window!, timedOnly: true } });
    expect(r.metrics.cpu_ms_per_round).toBeCloseTo(2000 / 7, 6); // (1500 + 500) over the 7 timed rounds, not 3 + 7
    expect(r.metrics.cpu_share_of_core_per_host).toBe(0.5); // a share of the window: unchanged
  });

  test("CPU per round from the ranks' own in-round CPU when they report it, not from the traffic-gated window", () => {
    // The window's active intervals (those that moved bytes) saw 1500 ms of CPU, but the ranks say
    // their rounds cost 120, 100, 140 and 160 ms: a phase that moves no bytes (ainftp's exponents)
    // is CPU all the same. Mean 130, plus ksoftirqd's 100 ms over the 10 rounds of the window.
    const base = cannedRun("ainftp");
    const r = cannedRun("ainftp", { round_cpu_ms: [120, 100, 140, 160], window: { ...base.window!, ksoftirqdMs: 100 } });
    expect(r.metrics.cpu_ms_per_round).toBe(140);
    expect(r.metrics.cpu_share_of_core_per_host).toBeCloseTo(140 / 90 / 4, 9); // over the mean round (90 ms), per host
    // ksoftirqd not read: nothing added (the softirq ticks of all CPUs would count in-context work twice)
    expect(cannedRun("ainftp", { round_cpu_ms: [120, 100, 140, 160] }).metrics.cpu_ms_per_round).toBe(130);
    // no window at all (a SLURM cluster): still counted
    expect(cannedRun("tcp", { round_cpu_ms: [120, 100, 140, 160], window: null }).metrics.cpu_ms_per_round).toBe(130);
    expect(base.metrics.cpu_ms_per_round).toBe(200); // not reported: the window, as before
  });

  test("cpuPerRound sums the ranks' in-round CPU round by round, and is null when a rank did not report it", () => {
    expect(cpuPerRound([[1, 2, 3], [10, 20, 30]], 3)).toEqual([11, 22, 33]);
    expect(cpuPerRound([[1, 2, 3], undefined], 3)).toBeNull();
    expect(cpuPerRound([[1, 2, 3], [10, 20]], 3)).toBeNull(); // a rank with a round missing
    expect(cpuPerRound([], 3)).toBeNull();
  });

  test("n/a with the reason: not installed, failed, not verified, not counted", () => {
    const na = cannedRun("gloo", { status: "na", reason: "package python3-torch not installed" });
    expect(na.metrics.round_ms_median).toBeNull();
    expect(na.na.round_ms_median).toBe("package python3-torch not installed");
    const failed = cannedRun("mpi", { status: "failed", reason: "mpirun exited 1" });
    expect(failed.na.wire_bytes_per_host_per_round).toBe("failed: mpirun exited 1");
    const wrong = cannedRun("tcp", { verified: false });
    expect(wrong.metrics.round_ms_median).toBeNull();
    expect(wrong.na.round_ms_median).toMatch(/not verified/);
    const quiet = cannedRun("gloo", { counters: untrackedCounters(MiB, 16 * MiB, 4) });
    expect(quiet.metrics.wakeups_per_1000_packets).toBeNull();
    expect(quiet.na.wakeups_per_1000_packets).toMatch(/not instrumented/);
    expect(quiet.metrics.copy_bytes_per_host_per_round).toBeNull();
    expect(quiet.na.copy_bytes_per_host_per_round).toMatch(/sendmsg\/recvmsg/);
    expect(cannedRun("tcp").na.hw_irqs_per_s).toBe("veth");
  });

  test("ainftp's sendmsg bytes follow chunk ownership (c mod N), protocol rounds included", () => {
    const pkt = 32 + 2 * 1720;
    // 4 full chunks over 2 ranks: rank 0 owns 0 and 2 (a result to 1 peer each), contributes 1 and 3
    expect(ainftpSendBytes(4 * 1720, 1720, 2, 0)).toBe(4 * pkt);
    // a short last chunk (100 values) owned by rank 1 of 2: rank 1 sends it once, as a result
    expect(ainftpSendBytes(3 * 1720 + 100, 1720, 2, 1)).toBe(3 * pkt + (32 + 200));
    // 4 ranks: every rank sends (N-1)/N of the chunks as contributions and its own to 3 peers: 2(N-1)/N of the int16 vector
    const n = 4 * 1720 * 25;
    expect(ainftpSendBytes(n, 1720, 4, 3)).toBe(100 * pkt * 2 * 3 / 4);
    // capacity 10 chunks: the 25 chunks of 1720 are 3 protocol rounds (10, 10, 5), ownership restarts each
    expect(ainftpSendBytes(25 * 1720, 1720, 4, 0, 10)).toBe((3 * 3 + 7) * pkt + (3 * 3 + 7) * pkt + (2 * 3 + 3) * pkt);
  });

  test("counters from the systems' own reports", () => {
    const a = ainftpCounters([ainftpReport(0), ainftpReport(1), ainftpReport(2), ainftpReport(3)]);
    expect(a.wakeups_per_round).toBe(4);
    expect(a.packets_per_round).toBe(40);
    expect(a.copy_bytes_per_round).toBe(ainftpSendBytes(4 * 1720 * 10, 1720, 4, 0) + 10 * 3440);
    const t = tcpCounters([{ bytes_written_per_round: 10, bytes_read_per_round: 20, polls_per_round: 3, recv_calls_per_round: 5, send_calls_per_round: 6 }]);
    expect(t).toMatchObject({ wakeups_per_round: 3, copy_bytes_per_round: 30, packets_per_round: null });
    // /proc/PID/io that saw a ring's traffic both ways counts; half of it does not
    expect(untrackedCounters(2 * 1.5 * MiB, MiB, 4).copy_bytes_per_round).toBe(3 * MiB);
    expect(untrackedCounters(1.5 * MiB, MiB, 4).copy_bytes_per_round).toBeNull();
  });

  test("ratio against the best (lowest) TCP peer; null where ainftp or every peer is n/a", () => {
    expect(bestRatio({ ainftp: 50, tcp: 100, gloo: 80, mpi: null })).toEqual({ best_peer: "gloo", ratio: 0.625 });
    expect(bestRatio({ ainftp: null, tcp: 100 })).toEqual({ best_peer: "tcp", ratio: null });
    expect(bestRatio({ ainftp: 5 })).toEqual({ best_peer: null, ratio: null });
  });

  test("slowest rank per round; wire counts per host and round", () => {
    expect(slowestPerRound([[1, 5, 3], [2, 4, 9]])).toEqual([2, 5, 9]);
    const zero = { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0, rxDropped: 0, txDropped: 0, rxErrors: 0, txErrors: 0 };
    const w = wireCounts(zero, { ...zero, txBytes: 8000, rxBytes: 7028, txPackets: 8, rxPackets: 4 }, 2, 2, 3500);
    expect(w).toEqual({ tx_bytes_per_host_per_round: 2000, rx_bytes_per_host_per_round: 1757, tx_packets_per_host_per_round: 2, rx_packets_per_host_per_round: 1, rx_frames_per_host_per_round: 0.5 });
  });

  test("the sentry's statistic in userspace is the program's (within its log2 rounding)", () => {
    const elems = 1720;
    const packets = new Int16Array(3 * elems).map((_, i) => ((i * 7919) % 2001) - 1000);
    const out = new Int32Array(3);
    sampledEnergies(packets, elems, out);
    for (let p = 0; p < 3; p++) expect(Math.abs(out[p] - energyOf(packets.subarray(p * elems, (p + 1) * elems), 0))).toBeLessThanOrEqual(2);
    fullEnergies(packets, elems, out);
    expect(out[0]).toBeGreaterThan(0);
  });

  test("perf's answer: counted, <not supported>, missing", () => {
    expect(parsePerfProbe(0, "123,,dTLB-load-misses,100,100.00,,\n", "dTLB-load-misses")).toBeNull();
    expect(parsePerfProbe(0, "<not supported>,,dTLB-load-misses,0,100.00,,\n", "dTLB-load-misses")).toMatch(/<not supported> in this VM/);
    expect(parsePerfProbe(1, "perf: not found", "dTLB-load-misses")).toMatch(/exited 1/);
  });
});

/** The canned bench with a second regime: each link at 1 Gbit/s, every system also run back to back. */
function cannedShaped(): BenchResult {
  const b = cannedBench();
  const shaping = {
    rate_bps: 1e9, burst_bytes: 131072, limit_bytes: 6_250_000, window_ms: 100, peak_tx_bps: 0.99e9, peak_rx_bps: 0.98e9, allowed_bps: 1.0105e9,
    within_rate: true, qdisc_drops: 0, qdisc_overlimits: 1200,
  };
  const ctx = { peers: 4, mtu: 3500, hwIrqNa: "veth", rateBps: 1e9 };
  const shaped = (system: SystemRun["system"], median: number, b2b: number, wire: number) => {
    const base = cannedRun(system);
    const r: SystemRun = {
      ...base, link_rate_bps: 1e9, shaping, round_ms: { median, p10: median, p90: median, p99: median },
      wire: { ...base.wire!, tx_bytes_per_host_per_round: wire },
      back_to_back: {
        status: "ok", reason: null, verified: true, warmup: 3, rounds: 7, round_ms: { median: b2b, p10: b2b, p90: b2b, p99: b2b }, round_times_ms: [b2b],
        wall_ms: 1, wire: base.wire, bandwidth: null, shaping, detail: null,
      },
    };
    const { metrics, na } = computeMetrics(r, ctx);
    return { ...r, metrics, na, bandwidth: { algbw_bytes_per_s: metrics.algbw_bytes_per_s!, busbw_bytes_per_s: metrics.busbw_bytes_per_s!, line_rate_fraction: metrics.line_rate_fraction } };
  };
  const systems = [shaped("ainftp", 110, 150, 12.13 * MiB), shaped("tcp", 205, 210, 24 * MiB), shaped("mpi", 215, 230, 24 * MiB)];
  b.runs.push({ peers: 4, bytes: 16 * MiB, systems, rows: metricRows(systems, { shaped: true, backToBack: true }), link_rate_bps: 1e9, regime: "shaped", tbf: { rate_bps: 1e9, burst_bytes: 131072, limit_bytes: 6_250_000 } });
  b.config.link_rates = [null, 1e9];
  b.config.back_to_back = true;
  b.scaling = scalingRows(b.runs);
  return b;
}

describe("regimes: bandwidth rows, back to back", () => {
  test("algbw, busbw, share of line rate and the back-to-back median per system", () => {
    const b = cannedShaped();
    const run = b.runs[1];
    const ours = run.systems[0].metrics;
    expect(ours.algbw_bytes_per_s).toBeCloseTo((16 * MiB) / 0.11, 3);
    expect(ours.busbw_bytes_per_s).toBeCloseTo(((16 * MiB) / 0.11) * 1.5, 3);
    expect(ours.line_rate_fraction).toBeCloseTo((12.13 * MiB) / (125e6 * 0.11), 9);
    expect(ours.round_ms_median_back_to_back).toBe(150);
    // the ratio column: lowest round time is best, highest bandwidth is best
    const row = (id: string) => run.rows.find((r) => r.id === id)!;
    expect(row("round_ms_median")).toMatchObject({ best_peer: "tcp", ratio: 110 / 205 });
    expect(row("algbw_bytes_per_s")).toMatchObject({ best_peer: "tcp", higher_is_better: true });
    expect(row("algbw_bytes_per_s").ratio).toBeCloseTo(205 / 110, 9);
    expect(row("round_ms_median_back_to_back")).toMatchObject({ best_peer: "tcp", ratio: 150 / 210 });
    // unshaped: no line-rate row and no back-to-back row; the metric says why
    const plain = b.runs[0];
    expect(plain.rows.map((r) => r.id)).not.toContain("line_rate_fraction");
    expect(plain.rows.map((r) => r.id)).not.toContain("round_ms_median_back_to_back");
    expect(plain.systems[1].na.line_rate_fraction).toContain("unshaped");
    expect(plain.systems[1].na.round_ms_median_back_to_back).toContain("--back-to-back");
    expect(plain.systems[1].metrics.busbw_bytes_per_s).toBeCloseTo(((16 * MiB) / 0.08) * 1.5, 3);
  });

  test("a back-to-back run that did not verify gives no figure", () => {
    const r = cannedRun("tcp", { back_to_back: { status: "ok", reason: null, verified: false, warmup: 3, rounds: 7, round_ms: { median: 1, p10: 1, p90: 1, p99: 1 }, round_times_ms: [1], wall_ms: 1, wire: null, bandwidth: null, shaping: null, detail: null } });
    expect(r.metrics.round_ms_median_back_to_back).toBeNull();
    expect(r.na.round_ms_median_back_to_back).toContain("not verified");
  });

  test("both regimes validate against the schema; the table and the summary label them", () => {
    const b = cannedShaped();
    expect(validateBenchJson(b)).toEqual([]);
    const broken = JSON.parse(JSON.stringify(b));
    delete broken.runs[1].systems[0].bandwidth;
    broken.runs[1].systems[1].shaping.within_rate = "yes";
    broken.runs[1].systems[2].back_to_back.round_ms = 3;
    const problems = validate(broken, BENCH_SCHEMA).join("\n");
    expect(problems).toContain("$.runs[1].systems[0]: missing bandwidth");
    expect(problems).toContain("$.runs[1].systems[1].shaping.within_rate: expected boolean");
    expect(problems).toContain("$.runs[1].systems[2].back_to_back.round_ms");
    const text = renderBench(b);
    expect(text).toContain("links unshaped — the CPU-bound lab");
    expect(text).toContain("each host's link shaped to 1 Gbit/s both ways (tbf) — bandwidth-bound");
    expect(text).toContain("shaping check, ainftp: peak over 100 ms, tx 0.990 Gbit/s");
    expect(text).toContain("share of line rate");
    expect(text).toContain("back to back");
    expect(text).toMatch(/1 Gbit\/s\s*│ 205\.0 ms \/ 210\.0 ms/); // the summary: median / back to back per system
    expect(text).toMatch(/yes; back to\s*│[^\n]*\n[^\n]*back yes/); // the verdict row wraps
    expect(text).toContain("about half of a core");
  });

  test("charts on log axes: round time vs size per system and regime, vs link rate at 16 MiB", async () => {
    const b = cannedShaped();
    const bySize = chartRows(b, "size");
    expect(bySize.map((r) => r.system)).toContain("ainftp (unshaped)");
    expect(bySize.map((r) => r.system)).toContain("ainftp (1 Gbit/s)");
    const second = JSON.parse(JSON.stringify(b.runs[1]));
    second.link_rate_bps = 2e9;
    b.runs.push(second);
    const byRate = chartRows(b, "rate", 16 * MiB);
    expect(byRate.filter((r) => r.system === "ainftp").map((r) => r.x)).toEqual([1, 2]);
    const dir = mkdtempSync(join(tmpdir(), "aft-benchchart-"));
    try {
      const files = await writeReport(dir, b, "t");
      expect(files.map((f) => f.split("/").pop())).toEqual(["table.txt", "bench.json", "round-time-vs-size.svg", "round-time-vs-rate.svg"]);
      for (const name of ["round-time-vs-size", "round-time-vs-rate"]) {
        const spec = JSON.parse(readFileSync(join(dir, `${name}.vl.json`), "utf8"));
        expect(spec.encoding.x.scale.type).toBe("log");
        expect(spec.encoding.y.scale.type).toBe("log");
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the JSON and the table", () => {
  test("a result validates against the schema; a broken one says where", () => {
    const b = cannedBench();
    expect(validateBenchJson(b)).toEqual([]);
    const broken = JSON.parse(JSON.stringify(b));
    broken.runs[0].systems[0].status = "weird";
    delete broken.config.mtu;
    broken.runs[0].rows[0].values.ainftp = "fast";
    broken.extra = 1;
    const problems = validate(broken, BENCH_SCHEMA);
    expect(problems.join("\n")).toContain("$.runs[0].systems[0].status");
    expect(problems.join("\n")).toContain("$.config: missing mtu");
    expect(problems.join("\n")).toContain("$.runs[0].rows[0].values.ainftp: expected number or null, got string");
    expect(problems.join("\n")).toContain("unexpected property extra");
  });

  test("the table: a column per baseline that ran, n/a with numbered reasons, the brief's claims headed as such", () => {
    const b = cannedBench();
    const text = renderRun(b.runs[0], b.machine_rows);
    expect(text).toContain("brief's claim");
    expect(text).toContain("(BRIEF.txt, not");
    expect(text).toContain("ainftp ÷");
    expect(text).not.toContain("│ gloo"); // not installed: no column …
    expect(text).toContain("gloo: not run — package python3-torch not installed"); // … but a line saying what to install
    expect(text).toMatch(/n\/a \[\d\]/);
    expect(text).toMatch(/\[\d\] [^\n]*veth/); // the hardware-IRQ reason
    expect(text).toContain("4 KB pages: 400 ns/access");
    expect(text).toContain("n/a: perf reports");
    // the straggler row: both sides measured, and their ratio
    const row = b.machine_rows.find((r) => r.id === "straggler_round_ms")!;
    expect(row.text).toEqual({
      baselines: "tcp ring: 3700.0 ms (every ring step waits for the delayed host)",
      ainftp: "9.50 ms (undelayed 8.10 ms); the delayed host sat out 8 of 8 rounds",
    });
    expect(row.ratio).toBeCloseTo(9.5 / 3700, 9);
    const all = renderBench(b);
    expect(all).toContain("every figure above was measured in this run");
    expect(chartRows(b, "size").map((r) => r.system)).toEqual(["ainftp", "tcp ring", "Open MPI"]);
  });
});

/** Runs the CLI in-process with a fake IO. */
async function cli(argv: string[]) {
  const c = { out: "", err: "" };
  const io: IO = { out: (t) => void (c.out += t), err: (t) => void (c.err += t), tty: false };
  const se = process.stderr.write;
  (process.stderr as any).write = (t: string | Uint8Array) => ((c.err += String(t)), true);
  try {
    return { code: await run(argv, io), ...c };
  } finally {
    process.stderr.write = se;
  }
}

describe("the command line", () => {
  test("--slurm outside an allocation is refused with what to do (test/slurm-bench.test.ts runs it inside one)", async () => {
    const saved = process.env.SLURM_JOB_ID;
    delete process.env.SLURM_JOB_ID;
    try {
      const r = await cli(["bench", "--slurm", "--peers", "2,4,8", "--size", "1MiB,16MiB,100MiB"]);
      expect(r.code).toBe(1);
      expect(r.err).toContain("bench --slurm: not inside a SLURM allocation");
      expect(r.err).toMatch(/hint: .*salloc -N 4 ainftp bench --slurm/);
    } finally {
      if (saved !== undefined) process.env.SLURM_JOB_ID = saved;
    }
  });

  test("bad values are usage errors", async () => {
    expect((await cli(["bench", "--peers", "1"])).code).toBe(2);
    expect((await cli(["bench", "--baseline", "nccl"])).code).toBe(2);
    expect((await cli(["bench", "--size", "6"])).code).toBe(2);
    expect((await cli(["bench", "--mode", "offload"])).code).toBe(2);
  });
});

// ---- as root: real runs -----------------------------------------------------------------------

function benchNamespaces(pid: number): string[] {
  try {
    return readdirSync("/run/netns").filter((n) => n.startsWith(`aft-bench-${pid}-`));
  } catch {
    return [];
  }
}

describe.skipIf(!kernel)("ainftp bench on namespaces (root)", () => {
  let dir = "";
  beforeAll(() => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), "aft-benchrun-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("a failure after the lab is built leaves no namespace behind", async () => {
    const err = await runBench({
      peers: [2], sizes: [MiB], rounds: 1, baselines: [], mtu: 3504, mode: "native", rx: "map", subnet: "10.213.90", micro: false,
      injectFailure: "after-lab", self: [BIN],
    }).catch((e) => e);
    expect(String(err)).toContain("injected failure");
    expect(liveLabNames()).toEqual([]);
    expect(benchNamespaces(process.pid)).toEqual([]);
  });

  test("the straggler hook delays what one host sends: the TCP ring (64 KB TSO frames) through the line waits for it, then does not", async () => {
    const lab = createLab("benchdl", ["h0", "h1"], { link: "bridge", subnet: "10.213.90" });
    let line: Awaited<ReturnType<typeof delayHostLink>> | undefined;
    const addrs = `${lab.node("h0").addr},${lab.node("h1").addr}`;
    /** Median round of a verified 2-rank ring all-reduce of `size`. */
    const ring = async (size: string) => {
      const ranks = ["h0", "h1"].map((h, i) =>
        lab.spawn(h, [BIN, "bench", "node", "tcp", "--", "--peers", addrs, "--rank", String(i), "--size", size, "--rounds", "3", "--warmup", "1", "--json"]));
      const outs = await Promise.all(ranks.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text(), err: await new Response(p.stderr).text() })));
      const reports = outs.map((o) => {
        expect(o.code, o.err).toBe(0);
        return JSON.parse(o.out) as TcpRingReport;
      });
      for (const r of reports) expect(r.verified).toBe(true);
      return Math.max(...reports.map((r) => r.round_ms.median));
    };
    try {
      expect(await ring("4KiB")).toBeLessThan(50);
      line = await delayHostLink(lab, `${lab.id}-br`, 0, 200, [BIN]);
      const slow = await ring("1MiB"); // every ring step waits for h0's data
      expect(slow).toBeGreaterThan(190);
      expect(slow).toBeLessThan(1500);
      expect(line.stats()?.delayed ?? 0).toBeGreaterThan(0);
      line.remove();
      expect(await ring("4KiB")).toBeLessThan(50);
    } finally {
      line?.remove();
      lab.destroy();
    }
  }, 60_000);

  test("Ctrl-C stops every rank and removes the namespaces", async () => {
    const p = Bun.spawn([BIN, "bench", "--peers", "2", "--size", "16MiB", "--rounds", "500", "--baseline", "tcp", "--no-micro", "--no-report", "--subnet", "10.213.90"], {
      stdout: "pipe", stderr: "pipe",
    });
    const t0 = performance.now();
    while (benchNamespaces(p.pid).length < 3 && performance.now() - t0 < 20_000) await Bun.sleep(50);
    expect(benchNamespaces(p.pid).length).toBe(3); // 2 hosts + the bridge
    await Bun.sleep(1500); // the swarm ranks are up
    p.kill("SIGINT");
    const code = await p.exited;
    const err = await new Response(p.stderr).text();
    expect(code, err).toBe(130);
    expect(err).toContain("removing the namespaces");
    expect(benchNamespaces(p.pid)).toEqual([]);
    expect(readdirSync("/proc").filter((d) => /^\d+$/.test(d)).some((d) => {
      try {
        return readFileSync(`/proc/${d}/cmdline`, "utf8").includes("10.213.90.1,10.213.90.2");
      } catch {
        return false;
      }
    })).toBe(false);
  }, 60_000);

  test("2 hosts, 1 MiB, 3 rounds: every installed system verified; the JSON validates; the report is written", async () => {
    const json = join(dir, "out.json");
    const report = join(dir, "report");
    const t0 = performance.now();
    const p = Bun.spawn([BIN, "bench", "--peers", "2", "--size", "1MiB", "--rounds", "3", "--warmup", "2", "--subnet", "10.213.90", "--tlb-size", "64MiB", "--link-rate", "none,1gbit", "--back-to-back", "--json", json, "--report", report], {
      stdout: "pipe", stderr: "pipe",
    });
    const [code, out, err] = [await p.exited, await new Response(p.stdout).text(), await new Response(p.stderr).text()];
    console.log(`[bench-run] smoke run: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(code, err + out).toBe(0);
    const r = JSON.parse(readFileSync(json, "utf8")) as BenchResult;
    expect(validateBenchJson(r)).toEqual([]);
    expect(r.verified).toBe(true);
    const systems = r.runs[0].systems;
    const ours = systems.find((s) => s.system === "ainftp")!;
    const ring = systems.find((s) => s.system === "tcp")!;
    for (const s of [ours, ring]) {
      expect(s.status).toBe("ok");
      expect(s.verified).toBe(true);
      expect(s.round_times_ms.length).toBe(3);
      expect(s.warmup).toBe(2); // --warmup: every system alike
      expect(s.metrics.round_ms_median).toBeGreaterThan(0);
      expect(s.metrics.cpu_ms_per_round).toBeGreaterThan(0);
      expect(s.metrics.net_rx_softirqs_per_s).toBeGreaterThan(0);
    }
    // every system's ranks reported their CPU inside each timed round (two ranks' sum per round):
    // positive, and at most what two hosts' processes can burn in the round's span plus slack for
    // helper threads (Gloo's); the CPU row comes from it
    for (const s of systems.filter((x) => x.status === "ok")) {
      expect(s.round_cpu_ms?.length, s.system).toBe(3);
      for (const [k, c] of s.round_cpu_ms!.entries()) {
        expect(c, s.system).toBeGreaterThan(0);
        expect(c, s.system).toBeLessThan(8 * s.round_times_ms[k] + 50);
      }
      const mean = s.round_cpu_ms!.reduce((a, b) => a + b, 0) / 3;
      expect(s.metrics.cpu_ms_per_round!, s.system).toBeGreaterThanOrEqual(mean - 1e-6);
    }
    // int16 on the wire: about half of what the f32 ring sends
    expect(ours.metrics.wire_bytes_per_host_per_round! / ring.metrics.wire_bytes_per_host_per_round!).toBeLessThan(0.7);
    for (const s of systems.filter((x) => x.system === "gloo" || x.system === "mpi")) {
      if (s.status === "na") console.log(`[bench-run] ${s.system} not installed: ${s.reason}`);
      else expect(s.verified).toBe(true);
    }
    // every rank of every system that ran marked the end of its warm-up (src/bench/timed.ts), so its
    // CPU window could start at the timed rounds
    for (const s of systems.filter((x) => x.status === "ok")) expect(s.window?.timedMarks, s.system).toBe(2);
    expect(r.tlb && "ns_per_access_4k" in r.tlb ? r.tlb.ns_per_access_4k : 0).toBeGreaterThan(0);
    expect(r.sentry && "inline_ns_per_packet" in r.sentry).toBe(true);
    // the job key's MAC, measured in the same runs: a full MAC reads the payload, so it costs more than the header's
    if (r.sentry && "auth_full_ns_per_packet" in r.sentry) {
      expect(r.sentry.auth_full_ns_per_packet!).toBeGreaterThan(r.sentry.auth_header_ns_per_packet!);
      expect(r.sentry.control_mac_ns_per_frame).toBeGreaterThan(0);
      expect(String((r.machine_rows ?? []).find((x) => x.id === "auth_ns_per_packet")?.text?.ainftp)).toContain("header MAC +");
    } else throw new Error("the security check measured no authentication");
    // two hosts: the other host is the whole cluster, so no straggler row
    expect(r.straggler).toMatchObject({ status: "n/a", peers: null });
    expect(r.straggler.reason).toContain("needs 3 hosts or more");
    for (const f of ["table.txt", "bench.json", "round-time-vs-size.svg", "round-time-vs-size.vl.json"]) expect(existsSync(join(report, f))).toBe(true);
    expect(readFileSync(join(report, "round-time-vs-size.svg"), "utf8")).toContain("<svg");
    expect(out).toContain("Bandwidth");
    // the shaped regime: every link held to 1 Gbit/s, the line-rate share measured, back to back verified
    expect(r.runs.map((x) => x.link_rate_bps)).toEqual([null, 1e9]);
    for (const s of r.runs[1].systems.filter((x) => x.status === "ok")) {
      expect(s.shaping!.within_rate).toBe(true);
      expect(s.shaping!.peak_tx_bps).toBeGreaterThan(0);
      expect(s.metrics.line_rate_fraction).toBeGreaterThan(0);
      expect(s.back_to_back!.verified).toBe(true);
      expect(s.metrics.round_ms_median_back_to_back).toBeGreaterThan(0);
    }
    expect(r.runs[0].systems[0].shaping).toBeNull();
    expect(out).toContain("each host's link shaped to 1 Gbit/s");
    expect(benchNamespaces(p.pid)).toEqual([]);
  }, 240_000);
});
