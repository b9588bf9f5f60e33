// `ainftp bench`: ainftp against plain-TCP all-reduce peers, in one run, on
// one topology. N hosts are N network namespaces on a bridge (veth links at
// one MTU); on them, one after the other: `ainftp swarm` (the compiled
// binary, XDP attached natively), the built-in TCP ring (`ainftp bench node
// tcp`), Gloo and Open MPI when installed (bench/baselines). Each system's
// run is measured on its own, since namespaces share one kernel: interface
// counters of every host, softirqs and CPU over the run, and a sampler
// (src/bench/sampler.ts) that keeps the intervals in which data moved. A
// system's figures count only when every rank verified its result. Then the
// machine rows: TLB (arena pages), the sentry's per-packet cost, straggler.
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { runBaselines, waitAll, type BaselineHost, type BaselineResult, type Exit } from "./baselines.ts";
import { BIN, BPFFS, canUseNetns, createLab, type Lab } from "../lab/netns.ts";
import { AinftpError } from "../errors.ts";
import { chunkElemsForMtu, type NodeReport } from "../node.ts";
import { formatSize } from "../units.ts";
import { ELEMS_ONE_PAGE } from "../abi.ts";
import { machineInfo, type MachineInfo } from "./machine.ts";
import { readNsIfaceStats, readSoftirqs, type IfaceStats } from "./proc.ts";
import {
  BASELINES, ainftpCounters, ainftpSystem, isAinftp, computeMetrics, dataRounds, machineRows, metricRows, tcpCounters, untrackedCounters,
  type BackToBackRun, type BaselineName, type MetricRow, type RoundQuantiles, type ShapingCheck, type SystemCounters, type SystemName,
  type SystemRun, type TcpRankReport, type WireCounts,
} from "./rows.ts";
import { Sampler, pidsInNamespaces, summarize, type WindowSample, type WindowSummary } from "./sampler.ts";
import { measureSentryCost, type SentryCostResult } from "./sentry-cost.ts";
import { LinkShaper, allowedRate, formatRate, peakRate, removeAllShaping, type LinkSample, type TbfParams } from "./shape.ts";
import { delayHostLink, type LinkDelay } from "./straggler.ts";
import { quantiles, type TcpRingReport } from "./tcp-ring.ts";
import { TIMED_ENV } from "./timed.ts";
import { measureTlb, type TlbResult } from "./tlb.ts";

export const SCHEMA_ID = "ainftp-bench/2";
export const DEFAULT_SUBNET = "10.213.91";
/** The lab's MTU: jumbo frames, the largest whose packet MAX_ELEMS fills
 * (4464 int16 values; the frags-aware program takes it in native mode).
 * Measured against 3504 (one page) and larger in docs/bench.md "MTU". */
export const DEFAULT_MTU = 9000;
export const DEFAULT_ROUNDS = 20;
/** Untimed rounds before the timed ones, the same for every system: ainftp's JavaScript is still being
 * compiled in its first rounds. At 16 MiB its CPU per round fell by a third between 1 and 10 warm-up
 * rounds, and at 16 MiB and 4 bits its median was 44.5 ms over the 10 rounds after 10 warm-up rounds
 * and 37-39 over every 10 after those. Small rounds take far more: at 1 MiB (a barrier round on each
 * side of a timed one, so three calls a round) the median of each 100 timed rounds after 20 warm-up
 * ones fell 4.26, 3.32, 3.23, 3.06, 2.95, 2.78 ms and then held; with JavaScriptCore's DFG tier off
 * it held at 4.3 from the start (2026-12-06). A trainer calls all-reduce thousands of times, so the
 * bench times the steady state: at least 20 rounds and 256 MiB, and on an unshaped link at least
 * 1 GiB for rounds of 4 MiB or less (1000 rounds at 1 MiB, back to back: 3 s for ainftp; on a shaped
 * link the wire, not the CPU, sets the round, and 1 GiB at 100 Mbit/s would take minutes); at most
 * 1000 rounds. */
export function defaultWarmup(bytes: number, rateBps: number | null = null): number {
  const volume = bytes <= SMALL_ROUND_BYTES && rateBps === null ? 2 ** 30 : 256 * 2 ** 20;
  return Math.min(1000, Math.max(20, Math.ceil(volume / bytes)));
}
/** Rounds this small or smaller warm up over 1 GiB (defaultWarmup). */
const SMALL_ROUND_BYTES = 4 * 2 ** 20;
/** veth's largest MTU with native XDP and a frags-aware program (one IPv4 packet). */
export const MAX_MTU = 65535;
/** The default run's regimes: the CPU-bound lab, and each host's link at 1 Gbit/s (docs/bench.md, "Shaped links"). */
export const DEFAULT_LINK_RATES: (number | null)[] = [null, 1e9];
/** The window of the shaping check: each link's peak rate over any 100 ms. */
export const SHAPING_WINDOW_MS = 100;
export const STRAGGLER_DELAY_MS = 600;
const IF = "eth0";
/** An interval counts as moving data when the hosts' interfaces moved at least this much in it. */
const ACTIVE_BYTES = 32 * 1024;

export interface BenchOptions {
  /** Host counts: one lab per count. */
  peers: number[];
  /** Gradient sizes in bytes (multiples of 4). */
  sizes: number[];
  rounds: number;
  /** Untimed rounds before the timed ones, every system alike (default defaultWarmup(size)). */
  warmup?: number;
  /** Peers to compare with; ainftp always runs. */
  baselines: BaselineName[];
  mtu: number;
  /** XDP attach mode of the swarm. */
  mode: "native" | "generic";
  /** Where ainftp's results arrive. */
  rx: "map" | "xsk";
  /** First three octets of the hosts' addresses (10.213.x). */
  subnet: string;
  /** ainftp's chunks in flight per owner (swarm --window); default the swarm's. */
  window?: number;
  /** Also measure the machine rows (TLB, sentry); default true. */
  micro?: boolean;
  /** Buffer of the TLB chase; default 512 MiB. */
  tlbBytes?: number;
  /** How to start ainftp (default: selfCommand()). */
  self?: string[];
  /** Progress. */
  onProgress?: (e: ProgressEvent) => void;
  /** Also measure the straggler row (3 hosts or more); default true. */
  straggler?: boolean;
  /** Tests: fail right after the lab is built, to check the teardown. */
  injectFailure?: "after-lab";
  /** Each host's link rate, bits/s, one regime each; null is unshaped. Default [null]. */
  linkRates?: (number | null)[];
  /** Also run every system back to back (no barrier between rounds). */
  backToBack?: boolean;
  /** Recorded in the JSON: the run is a --sweep. */
  sweep?: boolean;
  /** Sizes of the shaped regimes (default: `sizes`). The default run shapes 16 MiB only. */
  shapedSizes?: number[];
  /** ainftp's bit widths, each its own system ("ainftp", "ainftp-8", "ainftp-4"); default [16]. */
  bits?: (16 | 8 | 4)[];
}

export type ProgressEvent =
  | { kind: "step"; index: number; total: number; label: string }
  | { kind: "done"; index: number; total: number; label: string; summary: string }
  | { kind: "log"; line: string };

export interface RunResult {
  peers: number;
  bytes: number;
  systems: SystemRun[];
  rows: MetricRow[];
  /** Each host's link rate, bits/s (tbf both ways); null unshaped. */
  link_rate_bps?: number | null;
  /** What the regime models, in words. */
  regime?: string;
  /** The token bucket on every link (null unshaped). */
  tbf?: TbfParams | null;
}

export interface ScalingRow {
  peers: number;
  bytes: number;
  link_rate_bps?: number | null;
  /** Median round ms by system (null: did not run or not verified). */
  round_ms_median: Partial<Record<SystemName, number | null>>;
  best_peer: BaselineName | null;
  ratio: number | null;
}

export interface BenchResult {
  schema: typeof SCHEMA_ID;
  date: string;
  /** The command line, as the CLI was given it. */
  command: string;
  duration_s: number;
  config: {
    peers: number[];
    sizes: number[];
    rounds: number;
    baselines: BaselineName[];
    mtu: number;
    xdp_mode: string;
    rx: string;
    subnet: string;
    /** int16 values per ainftp packet at this MTU (twice as many values at 8 and 4 bits). */
    chunk_elems: number;
    /** ainftp's bit widths run (issue 14); absent in older results: [16]. */
    bits?: (16 | 8 | 4)[];
    /** Sampler: interval and the bytes an interval must move to count. */
    sample_interval_ms: number;
    active_bytes: number;
    /** Each host's link rate per regime, bits/s; null unshaped. */
    link_rates: (number | null)[];
    back_to_back: boolean;
    sweep: boolean;
    shaping_window_ms: number;
    /** Sizes of the shaped regimes. */
    shaped_sizes: number[];
  };
  machine: MachineInfo;
  runs: RunResult[];
  scaling: ScalingRow[];
  tlb: TlbResult | { error: string } | null;
  sentry: SentryCostResult | { error: string } | null;
  straggler: StragglerResult;
  /** Rows that are not per system (TLB, security check, straggler). */
  machine_rows: MetricRow[];
  /** Every system that ran verified its result. */
  verified: boolean;
}

/** The straggler row: one host's link delays all it sends (src/bench/straggler.ts). */
export interface StragglerResult {
  status: "measured" | "n/a";
  reason: string | null;
  delay_ms: number;
  peers: number | null;
  bytes: number | null;
  /** ainftp with the delay: per round the slowest of the other hosts, median. */
  round_ms_median: number | null;
  /** ainftp on the same lab and size without the delay (the main run). */
  undelayed_round_ms_median: number | null;
  /** The plain-TCP ring with the delay (every ring step waits for the host). */
  tcp_round_ms_median: number | null;
  /** Both systems' results checked against the reference (ainftp: against
   * the contributions its rounds held, the delayed host's left out). */
  verified: boolean | null;
  /** Rounds the delayed host sat out, of those timed. */
  passive_rounds: number | null;
  rounds: number;
  /** ainftp ÷ TCP. */
  ratio: number | null;
}

/** Timed rounds of the straggler row: a TCP ring round takes seconds with the delay. */
const STRAGGLER_ROUNDS = { ainftp: 8, tcp: 3 };

/** How this process starts ainftp: itself when compiled, `bun cli/index.ts` in a checkout, else dist/ainftp. */
export function selfCommand(): string[] {
  if (Bun.main.startsWith("/$bunfs/")) return [process.execPath];
  if (/\/cli\/index\.ts$/.test(Bun.main)) return [process.execPath, Bun.main];
  return [BIN];
}

// ---- labs, processes and teardown -------------------------------------------------------------

interface BenchLab {
  lab: Lab;
  hosts: BaselineHost[];
  bridge: string;
  inodes: number[];
}

const liveLabs = new Set<Lab>();

/** Kills (by pid) every process in the lab's namespaces: all were started by this run. */
function killLabProcs(lab: Lab): void {
  for (let pass = 0; pass < 5; pass++) {
    const pids = pidsInNamespaces(new Set([...lab.inos].map((i) => `net:[${i}]`)));
    if (!pids.size) return;
    for (const pid of pids.keys()) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
    Bun.sleepSync(50);
  }
}

function destroyLab(lab: Lab): void {
  killLabProcs(lab);
  lab.destroy();
  liveLabs.delete(lab);
}

/** Tears down every lab of this process now (Ctrl-C): processes, the links' qdiscs, XDP pins, namespaces. */
export function abortBench(): void {
  removeAllShaping();
  for (const lab of [...liveLabs]) destroyLab(lab);
}

/** Shapes every host's link in both directions: its eth0 egress, and its bridge port's egress. */
function shapeLab(bl: BenchLab, rateBps: number): LinkShaper {
  const br = `/run/netns/${bl.bridge}`;
  return LinkShaper.apply(
    bl.hosts.flatMap((h, i) => [
      { netns: h.path, dev: IF, label: `${h.node} tx` },
      { netns: br, dev: `p${i}`, label: `${h.node} rx` },
    ]),
    rateBps,
  );
}

/** What the regime models, in words. */
export function regimeOf(rateBps: number | null): string {
  return rateBps === null
    ? "unshaped: the CPU-bound lab (veth moves bytes at memory speed; the hosts' CPU is the limit)"
    : "shaped: bandwidth-bound, as on 10/25 GbE where the wire, not the CPU, is the limit";
}

/** Namespaces a lab of this process still holds (tests). */
export function liveLabNames(): string[] {
  return [...liveLabs].flatMap((l) => l.names);
}

function buildLab(peers: number, subnet: string, mtu: number): BenchLab {
  const names = Array.from({ length: peers }, (_, i) => `h${i}`);
  const lab = createLab("bench", names, { link: "bridge", subnet, ifname: IF });
  liveLabs.add(lab);
  try {
    const bridge = `${lab.id}-br`;
    for (const n of names) lab.must(n, ["ip", "link", "set", IF, "mtu", String(mtu)]);
    const br = ["nsenter", `--net=/run/netns/${bridge}`];
    for (let i = 0; i < peers; i++) mustRun([...br, "ip", "link", "set", `p${i}`, "mtu", String(mtu)]);
    mustRun([...br, "ip", "link", "set", "br0", "mtu", String(mtu)]);
    const hosts = names.map((n) => {
      const x = lab.node(n);
      return { node: n, ns: x.name, path: x.path, addr: x.addr };
    });
    return { lab, hosts, bridge, inodes: names.map((n) => lab.node(n).ino) };
  } catch (e) {
    destroyLab(lab);
    throw e;
  }
}

function mustRun(cmd: string[]): void {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0)
    throw new AinftpError("bench lab", `${cmd.join(" ")} exited ${r.exitCode}: ${r.stderr.toString().trim()}`, {
      hint: "an MTU the veth driver refuses? veth takes up to 65535 with the frags-aware program (pass --mtu 1500 to check)",
    });
}

/** A rank gave up: exit 3 is `swarm --verify` reporting a failed check, which the table shows. */
const gaveUp = (code: number) => code !== 0 && code !== 3;

function lastLines(s: string, n = 3): string {
  return s.trim().split("\n").slice(-n).join(" | ");
}

/** A rank's error as it printed it: with --json, the error object ainftp
 * prints (its message and hint, which the last lines of the pretty-printed
 * object cut off); otherwise the last lines of its output. */
export function rankError(stdout: string, stderr: string): string {
  try {
    const j = JSON.parse(stdout.trim()) as { error?: unknown; hint?: unknown };
    if (typeof j.error === "string") return j.error + (typeof j.hint === "string" ? ` (hint: ${j.hint})` : "");
  } catch {
    // not one JSON object
  }
  return lastLines(stderr || stdout);
}

function firstFailure(exits: Exit[], timeoutMs: number): string | null {
  const i = exits.findIndex((e) => e.code === null || gaveUp(e.code));
  if (i < 0) return null;
  const e = exits[i];
  return `rank ${i} ${e.timedOut ? `timed out after ${Math.round(timeoutMs / 1000)} s` : `exited ${e.code}`}: ${rankError(e.stdout, e.stderr)}`;
}

/** Per timed round, the slowest rank's time. */
export function slowestPerRound(perRank: number[][]): number[] {
  if (!perRank.length) return [];
  const n = Math.min(...perRank.map((r) => r.length));
  return Array.from({ length: n }, (_, k) => Math.max(...perRank.map((r) => r[k])));
}

/** Per timed round, the CPU of all ranks inside it: each rank's `round_cpu_ms`
 * (its process CPU around its own all-reduce), summed. Null when a rank did
 * not report it, or reported another number of rounds. */
export function cpuPerRound(perRank: (number[] | undefined)[], rounds: number): number[] | null {
  if (!perRank.length || perRank.some((r) => !r || r.length !== rounds)) return null;
  return Array.from({ length: rounds }, (_, k) => perRank.reduce((s, r) => s + r![k], 0));
}

// ---- one system's run ---------------------------------------------------------------------------

/** What one system's run gave, before the row is made: here and on a
 * SLURM allocation (slurm.ts), whose counters come from the ranks' reports
 * (C = SystemCounters) where the local run's get the sampled window. */
export interface SystemOutcome<C> {
  label: string;
  version: string | null;
  status: SystemRun["status"];
  reason: string | null;
  verified: boolean | null;
  warmup: number;
  round_times_ms: number[];
  /** cpuPerRound of the ranks' reports (absent or null: not reported). */
  round_cpu_ms?: number[] | null;
  counters: C;
  detail: unknown;
}
/** The system's own counters get the sampled window (Gloo and MPI count nothing themselves). */
type Outcome = SystemOutcome<(window: WindowSummary | null, wire: WireCounts | null) => SystemCounters>;

interface RunContext {
  o: Required<Pick<BenchOptions, "rounds" | "warmup" | "mtu" | "mode" | "rx">> & Pick<BenchOptions, "window"> & { self: string[] };
  bl: BenchLab;
  bytes: number;
  log: (line: string) => void;
  /** The links' shaper in this regime (null unshaped). */
  shaper?: LinkShaper | null;
  /** No barrier between rounds. */
  backToBack?: boolean;
  /** A rank whose round times do not count (the straggler row's delayed host). */
  exclude?: number;
}

function timeoutFor(bytes: number, rounds: number, peers: number, rateBps: number | null = null): number {
  // shaped: a ring round moves 2(N−1)/N × bytes per host through the link, at the rate
  const wireMs = rateBps ? (rounds + 3) * ((2 * bytes * 8) / rateBps) * 1000 * 3 : 0;
  return 90_000 + Math.ceil((rounds + 3) * Math.max(1, bytes / 2 ** 20) * 100 * Math.max(1, peers / 2)) + Math.ceil(wireMs);
}

const noCounters: SystemCounters = { wakeups_per_round: null, wakeups_source: null, packets_per_round: null, copy_bytes_per_round: null, copy_source: null };

/** Rank programs run so far (AINFTP_BENCH_STDERR_DIR's file names). */
let keptRuns = 0;

/** Starts one process per host (`args(rank, peer list)`), waits for all,
 * and reads each rank's JSON report from its stdout (all of it, or its last
 * line); a string says why there are no reports. */
async function runRanks<R>(x: RunContext, args: (rank: number, addrs: string) => string[], json: "all" | "last-line"): Promise<R[] | string> {
  const { bl, bytes, o } = x;
  const addrs = bl.hosts.map((h) => h.addr).join(",");
  const timeout = timeoutFor(bytes, o.rounds + o.warmup, bl.hosts.length, x.shaper?.params.rate_bps ?? null);
  const exits = await waitAll(bl.hosts.map((h, i) => bl.lab.spawn(h.node, [...o.self, ...args(i, addrs)])), timeout, gaveUp);
  // AINFTP_BENCH_STDERR_DIR=DIR: each rank's stderr kept as DIR/<run>-<command>-<rank>.err
  // (and its stdout, with --json a failed round's error and state, as .out),
  // <run> counting the systems and cells of this bench from 01 (with
  // AINFTP_TRACE_RECOVERY=1, a line per round: its start in epoch ms, plan, end)
  const keepErr = process.env.AINFTP_BENCH_STDERR_DIR;
  if (keepErr) {
    const run = String(++keptRuns).padStart(2, "0");
    exits.forEach((e, i) => {
      Bun.write(join(keepErr, `${run}-${args(i, addrs)[0]}-${i}.err`), e.stderr);
      Bun.write(join(keepErr, `${run}-${args(i, addrs)[0]}-${i}.out`), e.stdout);
    });
  }
  const fail = firstFailure(exits, timeout);
  if (fail) return fail;
  try {
    return exits.map((e) => JSON.parse(json === "all" ? e.stdout : e.stdout.trim().split("\n").at(-1)!) as R);
  } catch {
    return `a rank printed no JSON report: ${lastLines(exits.map((e) => e.stdout + e.stderr).join("\n"))}`;
  }
}

async function runAinftp(x: RunContext, bits: 16 | 8 | 4 = 16): Promise<Outcome> {
  const { bl, bytes, o } = x;
  const got = await runRanks<NodeReport>(x, (i, addrs) => [
    "swarm", "--iface", IF, "--peers", addrs, "--rank", String(i), "--synthetic", String(bytes),
    "--rounds", String(o.rounds), "--warmup", String(o.warmup), "--verify", "--mode", o.mode, "--rx", o.rx, "--json", ...(x.backToBack ? ["--back-to-back"] : []),
    ...(bits !== 16 ? ["--bits", String(bits)] : []),
    ...(o.window !== undefined ? ["--window", String(o.window)] : []),
  ], "all");
  // a killed swarm leaves its program pinned: take it off before the next system runs on these links
  for (const ino of bl.inodes) rmSync(join(BPFFS, "ainftp", `netns-${ino}`), { recursive: true, force: true });
  const base: Outcome = {
    label: bits === 16 ? "ainftp" : `ainftp ${bits}-bit`, version: `${pkg.version}, XDP ${o.mode}, results via ${o.rx === "map" ? "mmapped map" : "AF_XDP"}, ${bits} bits per value`, status: "ok",
    reason: null, verified: null, warmup: o.warmup, round_times_ms: [], counters: () => noCounters, detail: null,
  };
  if (typeof got === "string") return { ...base, status: "failed", reason: got };
  const reports = got;
  const identical = reports.every((r) => JSON.stringify(r.result_hash) === JSON.stringify(reports[0].result_hash));
  const verified = identical && reports.every((r) => r.verified);
  return {
    ...base,
    verified,
    reason: verified ? null : identical ? `relative L2 error ${Math.max(...reports.map((r) => r.rel_l2_error_max ?? Infinity))} > ${reports[0].error_bound ?? 1e-3}` : "results differ between ranks",
    round_times_ms: slowestPerRound(reports.filter((_, i) => i !== x.exclude).map((r) => r.round_times_ms)),
    round_cpu_ms: cpuPerRound(reports.map((r) => r.round_cpu_ms), o.rounds),
    counters: () => ainftpCounters(reports),
    detail: reports.map(({ result_hash, round_times_ms, round_cpu_ms, ...r }) => r),
  };
}

async function runTcp(x: RunContext): Promise<Outcome> {
  const { bytes, o } = x;
  const got = await runRanks<TcpRingReport>(x, (i, addrs) => [
    "bench", "node", "tcp", "--", "--peers", addrs, "--rank", String(i), "--size", String(bytes), "--rounds", String(o.rounds), "--json",
    "--warmup", String(o.warmup), ...(x.backToBack ? ["--back-to-back"] : []),
  ], "last-line");
  const base: Outcome = {
    label: "tcp ring", version: "built in: ring all-reduce, C, TCP_NODELAY, pipelined 64 KiB", status: "ok", reason: null, verified: null,
    warmup: o.warmup, round_times_ms: [], counters: () => noCounters, detail: null,
  };
  if (typeof got === "string") return { ...base, status: "failed", reason: got };
  const reports = got;
  const verified = reports.every((r) => r.verified);
  return {
    ...base,
    warmup: reports[0].warmup,
    verified,
    reason: verified ? null : `relative L2 error ${Math.max(...reports.map((r) => r.rel_l2_error_max ?? Infinity))} > ${reports[0].tolerance}`,
    round_times_ms: slowestPerRound(reports.map((r) => r.round_times_ms)),
    round_cpu_ms: cpuPerRound(reports.map((r) => r.round_cpu_ms), o.rounds),
    counters: () => tcpCounters(reports as TcpRankReport[]),
    detail: reports.map(({ round_times_ms, round_cpu_ms, ...r }) => r),
  };
}

async function runPeer(x: RunContext, system: "gloo" | "mpi"): Promise<Outcome> {
  const { bl, bytes, o } = x;
  const peers = bl.hosts.length;
  const once = async () =>
    (
      await runBaselines({
        peers, sizes: [bytes], rounds: o.rounds, warmup: o.warmup, systems: [system], lab: { lab: bl.lab, hosts: bl.hosts, bridge: bl.bridge }, backToBack: x.backToBack,
        // Gloo: four torch imports took over 45 s at load 22; mpirun starts in seconds, and its
        // occasional silent hang is cut short and tried again (below)
        timeoutMs: (system === "gloo" ? 90_000 : 45_000) + Math.ceil((o.rounds + o.warmup) * Math.max(1, bytes / 2 ** 20) * 40 * Math.max(1, peers / 2)) +
          (x.shaper ? Math.ceil((o.rounds + o.warmup) * ((2 * bytes * 8) / x.shaper.params.rate_bps) * 1000 * 3) : 0),
        log: (l) => x.log(l),
      })
    )[0];
  let r: BaselineResult = await once();
  // mpirun has hung at start-up here now and then (no output, every rank idle): one more try, said so
  if (r.status === "failed" && /timed out/.test(r.reason ?? "")) {
    x.log(`${system}: ${r.reason}; trying once more`);
    killLabProcs(bl.lab);
    const first = r.reason;
    r = await once();
    if (r.status === "ok") r = { ...r, launch: `${r.launch ?? ""} (second try; the first ${first})` };
  }
  const rounds = o.rounds + r.warmup;
  return {
    label: system === "gloo" ? `Gloo${r.version ? ` (torch ${r.version.split(",")[0]})` : ""}` : `Open MPI${r.version ? ` ${r.version}` : ""}`,
    version: r.version ?? null,
    status: r.status,
    reason: r.status === "na" ? `${r.reason} (or: make bench-deps)` : (r.reason ?? null),
    verified: r.verified,
    warmup: r.warmup,
    round_times_ms: r.round_ms,
    round_cpu_ms: cpuPerRound(r.ranks.map((k) => k.round_cpu_ms), o.rounds),
    counters: (w) => untrackedCounters(w ? w.ioBytes / peers / (w.timedOnly ? o.rounds : rounds) : null, bytes, peers),
    detail: { launch: r.launch ?? null, ranks: r.ranks.map(({ round_ms, round_cpu_ms, ...k }) => k), loadavg: r.loadavg ?? null },
  };
}

function sumStats(xs: IfaceStats[]): IfaceStats {
  const t: IfaceStats = { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0, rxDropped: 0, txDropped: 0, rxErrors: 0, txErrors: 0 };
  for (const s of xs) for (const k of Object.keys(t) as (keyof IfaceStats)[]) t[k] += s[k];
  return t;
}

/** Interface counters over a run, per host and data round. */
export function wireCounts(before: IfaceStats, after: IfaceStats, hosts: number, rounds: number, mtu: number): WireCounts {
  const per = (k: keyof IfaceStats) => (after[k] - before[k]) / hosts / rounds;
  return {
    tx_bytes_per_host_per_round: per("txBytes"),
    rx_bytes_per_host_per_round: per("rxBytes"),
    tx_packets_per_host_per_round: per("txPackets"),
    rx_packets_per_host_per_round: per("rxPackets"),
    rx_frames_per_host_per_round: per("rxBytes") / (mtu + 14),
  };
}

const HW_IRQ_NA = "veth links have no device and no IRQ (here: n/a; on a real NIC, /proc/interrupts of its queues)";

/** Runs one system on the lab, measured on its own. */
async function measured(x: RunContext, system: SystemName, run: () => Promise<Outcome>): Promise<SystemRun> {
  const { bl, bytes, o } = x;
  const readHosts = () => sumStats(bl.hosts.map((h) => readNsIfaceStats(h.ns, IF)));
  const net0 = readHosts();
  const soft0 = readSoftirqs();
  const q0 = x.shaper?.stats() ?? null;
  // each rank marks the end of its warm-up here (TIMED_ENV): the window then sums the timed rounds alone
  const timedDir = mkdtempSync(join(bl.lab.tmp, `timed-${system}-`));
  process.env[TIMED_ENV] = timedDir;
  const sampler = new Sampler({ inodes: bl.inodes, ifname: IF, intervalMs: 5, timedDir, timedCount: bl.hosts.length }).start();
  const t0 = performance.now();
  let out: Outcome;
  let samples: WindowSample[] = [];
  let timedMarks = 0;
  try {
    out = await run();
  } finally {
    samples = sampler.stop();
    delete process.env[TIMED_ENV];
    killLabProcs(bl.lab);
    try {
      timedMarks = readdirSync(timedDir).length;
    } catch {
      // the lab's directory is gone (Ctrl-C): no marks to count
    }
    rmSync(timedDir, { recursive: true, force: true });
  }
  const wallMs = performance.now() - t0;
  const soft1 = readSoftirqs();
  const net1 = readHosts();
  const q1 = x.shaper?.stats() ?? null;
  const ran = out.status === "ok";
  const rounds = { warmup: out.warmup, rounds: o.rounds };
  const wire = ran ? wireCounts(net0, net1, bl.hosts.length, dataRounds(rounds), o.mtu) : null;
  const window = ran ? { ...summarize(samples, ACTIVE_BYTES), timedMarks } : null;
  const sum = (a: number[] | null) => (a ?? []).reduce((s, v) => s + v, 0);
  const r: SystemRun = {
    system, label: out.label, version: out.version, status: out.status, reason: out.reason, verified: out.verified,
    peers: bl.hosts.length, bytes, warmup: out.warmup, rounds: o.rounds,
    round_ms: out.round_times_ms.length ? (quantiles(out.round_times_ms) as RoundQuantiles) : null,
    round_times_ms: out.round_times_ms.map((t) => +t.toFixed(3)),
    round_cpu_ms: out.round_cpu_ms?.map((t) => +t.toFixed(3)) ?? null,
    wall_ms: Math.round(wallMs),
    wire, window,
    softirqs: ran ? { net_rx: sum(soft1.netRx) - sum(soft0.netRx), net_tx: sum(soft1.netTx) - sum(soft0.netTx) } : null,
    counters: ran ? out.counters(window, wire) : noCounters,
    metrics: {} as SystemRun["metrics"], na: {}, detail: out.detail,
    link_rate_bps: x.shaper?.params.rate_bps ?? null,
    bandwidth: null,
    shaping: ran && x.shaper ? shapingCheck(x.shaper, samples, bl.inodes, q0!, q1!) : null,
    back_to_back: null,
  };
  finishMetrics(r, x);
  return r;
}

/** The metrics of a run, and its bandwidth figures (again after a back-to-back run is attached). */
function finishMetrics(r: SystemRun, x: RunContext): void {
  const rateBps = x.shaper?.params.rate_bps ?? null;
  const { metrics, na } = computeMetrics(r, { peers: x.bl.hosts.length, mtu: x.o.mtu, hwIrqNa: HW_IRQ_NA, rateBps });
  r.metrics = metrics;
  r.na = na;
  r.bandwidth = metrics.algbw_bytes_per_s === null ? null
    : { algbw_bytes_per_s: metrics.algbw_bytes_per_s, busbw_bytes_per_s: metrics.busbw_bytes_per_s!, line_rate_fraction: metrics.line_rate_fraction };
}

/** Each host's link series (tx, rx bytes) from the sampler's per-namespace counters. */
export function linkSeries(samples: WindowSample[], inode: number): LinkSample[] {
  const key = `net:[${inode}]`;
  return samples.flatMap((w) => {
    const n = w.ns[key];
    return n ? [{ tMs: w.tMs, txBytes: n.bytes - n.rxBytes, rxBytes: n.rxBytes, t0Ms: n.t0Ms, t1Ms: n.t1Ms }] : [];
  });
}

/** The shaping check of one run: every host's peak tx and rx over 100 ms windows against rate + burst ÷ window. */
function shapingCheck(shaper: LinkShaper, samples: WindowSample[], inodes: number[], q0: Record<string, QdiscCounts>, q1: Record<string, QdiscCounts>): ShapingCheck {
  const p = shaper.params;
  let tx = 0, rx = 0;
  for (const ino of inodes) {
    const pk = peakRate(linkSeries(samples, ino), SHAPING_WINDOW_MS);
    tx = Math.max(tx, pk.tx_bps);
    rx = Math.max(rx, pk.rx_bps);
  }
  const allowed = allowedRate(p, SHAPING_WINDOW_MS);
  let drops = 0, over = 0;
  for (const k of Object.keys(q1)) {
    drops += q1[k].drops - (q0[k]?.drops ?? 0);
    over += q1[k].overlimits - (q0[k]?.overlimits ?? 0);
  }
  return {
    rate_bps: p.rate_bps, burst_bytes: p.burst_bytes, limit_bytes: p.limit_bytes, window_ms: SHAPING_WINDOW_MS,
    peak_tx_bps: Math.round(tx), peak_rx_bps: Math.round(rx), allowed_bps: Math.round(allowed),
    within_rate: tx <= allowed && rx <= allowed, qdisc_drops: drops, qdisc_overlimits: over,
  };
}

type QdiscCounts = { drops: number; overlimits: number };

/** A system's back-to-back run, condensed beside its barrier-separated one. */
function backToBackOf(r: SystemRun): BackToBackRun {
  return {
    status: r.status, reason: r.reason, verified: r.verified, warmup: r.warmup, rounds: r.rounds, round_ms: r.round_ms,
    round_times_ms: r.round_times_ms, wall_ms: r.wall_ms, wire: r.wire, bandwidth: r.bandwidth ?? null, shaping: r.shaping ?? null, detail: r.detail,
  };
}

function summary(r: SystemRun): string {
  if (r.status === "na") return `n/a: ${r.reason}`;
  if (r.status === "failed") return `FAILED: ${r.reason}`;
  const q = r.round_ms;
  return `median ${q?.median.toFixed(2)} ms, p99 ${q?.p99.toFixed(2)} ms, verified ${r.verified}` +
    (r.wire ? `, ${formatSize(Math.round(r.wire.tx_bytes_per_host_per_round))} on the wire per host per round` : "") +
    (r.bandwidth?.line_rate_fraction != null ? `, ${(100 * r.bandwidth.line_rate_fraction).toFixed(0)}% of line rate` : "") +
    (r.shaping ? `, peak ${(Math.max(r.shaping.peak_tx_bps, r.shaping.peak_rx_bps) / 1e9).toFixed(2)} Gbit/s per link (${r.shaping.within_rate ? "within" : "ABOVE"} the limit), ${r.shaping.qdisc_drops} qdisc drops` : "") +
    (r.verified === false && r.reason ? ` (${r.reason})` : "");
}

// ---- the whole bench -------------------------------------------------------------------------------

export function validateOptions(o: BenchOptions): void {
  const bad = (what: string, hint?: string) => new AinftpError("bench", what, { hint });
  if (!o.peers.length || o.peers.some((p) => !Number.isInteger(p) || p < 2 || p > 64)) throw bad(`peers ${o.peers.join(",")}: each must be 2..64`);
  if (!o.sizes.length || o.sizes.some((b) => !Number.isInteger(b) || b < 4 || b % 4)) throw bad("sizes must be positive multiples of 4 bytes (float32)");
  if (o.shapedSizes && (!o.shapedSizes.length || o.shapedSizes.some((b) => !Number.isInteger(b) || b < 4 || b % 4))) throw bad("shaped sizes must be positive multiples of 4 bytes (float32)");
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw bad(`rounds ${o.rounds} is not a positive integer`);
  if (o.warmup !== undefined && (!Number.isInteger(o.warmup) || o.warmup < 0 || o.warmup > 1000)) throw bad(`warm-up ${o.warmup} is not an integer in 0..1000`, "e.g. --warmup 10");
  if (!Number.isInteger(o.mtu) || o.mtu < 576 || o.mtu > MAX_MTU) throw bad(`MTU ${o.mtu} is not in 576..${MAX_MTU}`, "veth takes up to 65535 with the frags-aware program");
  if (o.rx === "xsk" && chunkElemsForMtu(o.mtu) > ELEMS_ONE_PAGE)
    throw bad(`--rx xsk takes frames of one page (an AF_XDP frame is one UMEM page); MTU ${o.mtu} makes them larger`, "add --mtu 3504 (or run with --rx map)");
  if (!/^10\.213\.\d{1,3}$/.test(o.subnet)) throw bad(`subnet ${o.subnet}: the bench's hosts live in 10.213.x`, "e.g. --subnet 10.213.91 (the default)");
  for (const b of o.baselines) if (!BASELINES.includes(b)) throw bad(`unknown baseline ${b}`, `choose from ${BASELINES.join(", ")}`);
}

/** Runs the bench; always tears its namespaces down (also when a system or the harness fails). */
export async function runBench(opts: BenchOptions): Promise<BenchResult> {
  validateOptions(opts);
  if (!canUseNetns())
    throw new AinftpError("bench", "needs root with network namespaces (ip netns, nsenter) and XDP", { errno: 1, hint: "run it as root: sudo ainftp bench" });
  const o = {
    ...opts, micro: opts.micro ?? true, self: opts.self ?? selfCommand(), linkRates: opts.linkRates ?? [null], backToBack: opts.backToBack ?? false,
    shapedSizes: opts.shapedSizes ?? opts.sizes,
  };
  const emit = o.onProgress ?? (() => {});
  const log = (line: string) => emit({ kind: "log", line });
  const started = performance.now();
  const date = new Date().toISOString();
  const widths = o.bits ?? [16];
  const systems: SystemName[] = [...widths.map(ainftpSystem), ...BASELINES.filter((b) => o.baselines.includes(b))];
  // the straggler row: on the largest lab (3 hosts at least: with 2, the
  // other host is the whole cluster), at the smallest size
  const stragglerPeers = Math.max(...o.peers) >= 3 && o.straggler !== false ? Math.max(...o.peers) : null;
  const stragglerBytes = Math.min(...o.sizes);
  const cells = o.linkRates.reduce<number>((n, r) => n + (r === null ? o.sizes : o.shapedSizes).length, 0);
  const total = o.peers.length * cells * systems.length * (o.backToBack ? 2 : 1) + (o.micro ? 2 : 0) + (stragglerPeers ? 1 : 0);
  let straggler: StragglerResult = {
    status: "n/a", delay_ms: STRAGGLER_DELAY_MS, peers: null, bytes: null, round_ms_median: null, undelayed_round_ms_median: null,
    tcp_round_ms_median: null, verified: null, passive_rounds: null, rounds: STRAGGLER_ROUNDS.ainftp, ratio: null,
    reason: o.straggler === false ? "not run (--no-straggler)" : "needs 3 hosts or more (--peers 4): with 2, the other host is the whole cluster",
  };
  let step = 0;
  const machine = machineInfo({
    mtu: o.mtu, xdpMode: o.mode,
    afXdp: o.rx === "xsk" ? "AF_XDP in copy mode (veth has no zero-copy)" : "not used (--rx map: results through the mmapped map); on veth AF_XDP runs in copy mode only",
    links: "veth pairs to one Linux bridge, one network namespace per host (one kernel: every host shares the CPUs)",
  });
  const runs: RunResult[] = [];
  for (const peers of o.peers) {
    const bl = buildLab(peers, o.subnet, o.mtu);
    log(`lab: ${peers} hosts (${bl.hosts.map((h) => h.addr).join(" ")}) on a bridge, MTU ${o.mtu}`);
    try {
      if (o.injectFailure === "after-lab") throw new AinftpError("bench", "injected failure after building the lab (test)");
      for (const rate of o.linkRates) {
        const shaper = rate === null ? null : shapeLab(bl, rate);
        if (shaper) log(`links: tbf ${formatRate(rate)} on every host's eth0 and bridge port (burst ${formatSize(shaper.params.burst_bytes)}, queue ${formatSize(shaper.params.limit_bytes)})`);
        try {
          for (const bytes of rate === null ? o.sizes : o.shapedSizes) {
            const x: RunContext = { o: { ...o, warmup: o.warmup ?? defaultWarmup(bytes, rate) }, bl, bytes, log, shaper };
            const sys: SystemRun[] = [];
            for (const s of systems) {
              const one = async (b2b: boolean) => {
                const label = `${s} · ${peers} hosts · ${formatSize(bytes)} · ${formatRate(rate)} · ${o.rounds} rounds${b2b ? " back to back" : ""}`;
                emit({ kind: "step", index: ++step, total, label });
                const xx = { ...x, backToBack: b2b };
                const r = await measured(xx, s, () => (isAinftp(s) ? runAinftp(xx, widthOf(s)) : s === "tcp" ? runTcp(xx) : runPeer(xx, s)));
                emit({ kind: "done", index: step, total, label, summary: summary(r) });
                return r;
              };
              const r = await one(false);
              if (o.backToBack && r.status !== "na") {
                r.back_to_back = backToBackOf(await one(true));
                finishMetrics(r, x);
              } else if (o.backToBack) step++;
              sys.push(r);
            }
            runs.push({ peers, bytes, systems: sys, rows: metricRows(sys, { shaped: rate !== null, backToBack: o.backToBack }), link_rate_bps: rate, regime: regimeOf(rate), tbf: shaper?.params ?? null });
          }
        } finally {
          shaper?.remove();
        }
      }
      if (peers === stragglerPeers) {
        const label = `straggler · ${peers} hosts · ${formatSize(stragglerBytes)} · host ${peers - 1}'s link delayed ${STRAGGLER_DELAY_MS} ms · ainftp and tcp ring`;
        emit({ kind: "step", index: ++step, total, label });
        const undelayed = runs.find((r) => r.peers === peers && r.bytes === stragglerBytes && (r.link_rate_bps ?? null) === null)?.systems.find((s) => s.system === "ainftp")?.round_ms?.median ?? null;
        straggler = await measureStraggler({ o: { ...o, warmup: 1 }, bl, bytes: stragglerBytes, log }, undelayed);
        emit({ kind: "done", index: step, total, label: "straggler", summary: straggler.status === "n/a" ? `n/a: ${straggler.reason}`
          : `ainftp ${straggler.round_ms_median?.toFixed(1)} ms (undelayed ${straggler.undelayed_round_ms_median?.toFixed(1) ?? "n/a"}), tcp ring ${straggler.tcp_round_ms_median?.toFixed(0) ?? "n/a"} ms` });
      }
    } finally {
      destroyLab(bl.lab);
    }
  }

  let tlb: BenchResult["tlb"] = null;
  let sentry: BenchResult["sentry"] = null;
  const errorOf = (e: unknown) => ({ error: e instanceof AinftpError ? e.message + (e.hint ? ` (${e.hint})` : "") : String((e as Error)?.message ?? e) });
  if (o.micro) {
    emit({ kind: "step", index: ++step, total, label: "security check: the sentry's cost per packet (BPF_PROG_TEST_RUN) vs userspace" });
    try {
      sentry = await measureSentryCost({ elems: chunkElemsForMtu(o.mtu) });
    } catch (e) {
      sentry = errorOf(e);
    }
    emit({ kind: "done", index: step, total, label: "security check", summary: "error" in sentry ? `failed: ${sentry.error}` : `inline ${sentry.inline_ns_per_packet} ± ${sentry.inline_ns_spread} ns/packet` });
    emit({ kind: "step", index: ++step, total, label: "TLB: pointer chase on 4 KB vs 2 MB pages" });
    try {
      tlb = await measureTlb({ bytes: o.tlbBytes });
    } catch (e) {
      tlb = errorOf(e);
    }
    emit({ kind: "done", index: step, total, label: "TLB", summary: "error" in tlb ? `failed: ${tlb.error}` : `4 KB ÷ 2 MB = ${tlb.ratio?.toFixed(2) ?? "n/a"}` });
  }
  const ran = runs.flatMap((r) => r.systems).filter((s) => s.status === "ok");
  return {
    schema: SCHEMA_ID, date, command: "", duration_s: +((performance.now() - started) / 1000).toFixed(1),
    config: {
      peers: o.peers, sizes: o.sizes, rounds: o.rounds, baselines: o.baselines, mtu: o.mtu, xdp_mode: o.mode, rx: o.rx, subnet: o.subnet,
      chunk_elems: chunkElemsForMtu(o.mtu), sample_interval_ms: 5, active_bytes: ACTIVE_BYTES,
      link_rates: o.linkRates, back_to_back: o.backToBack, sweep: o.sweep ?? false, shaping_window_ms: SHAPING_WINDOW_MS,
      shaped_sizes: o.shapedSizes, bits: widths,
    },
    machine, runs, scaling: scalingRows(runs), tlb, sentry, straggler,
    machine_rows: machineRows(tlb, sentry, straggler),
    verified: ran.every((s) => s.verified === true && (!s.back_to_back || s.back_to_back.status === "na" || s.back_to_back.verified === true)),
  };
}

/** The straggler row: the last host's link delays what it sends by 600 ms;
 * ainftp (the fast hosts' rounds) and the TCP ring run through it. */
async function measureStraggler(x: RunContext, undelayed: number | null): Promise<StragglerResult> {
  const { bl } = x;
  const slow = bl.hosts.length - 1;
  const base: StragglerResult = {
    status: "n/a", reason: null, delay_ms: STRAGGLER_DELAY_MS, peers: bl.hosts.length, bytes: x.bytes, round_ms_median: null,
    undelayed_round_ms_median: undelayed, tcp_round_ms_median: null, verified: null, passive_rounds: null, rounds: STRAGGLER_ROUNDS.ainftp, ratio: null,
  };
  let line: LinkDelay | null = null;
  try {
    line = await delayHostLink(bl.lab, bl.bridge, slow, STRAGGLER_DELAY_MS, x.o.self);
    // one warm-up round each: a ring round takes seconds through the delay
    const a = await runAinftp({ ...x, o: { ...x.o, rounds: STRAGGLER_ROUNDS.ainftp, warmup: 1 }, exclude: slow });
    const t = await runTcp({ ...x, o: { ...x.o, rounds: STRAGGLER_ROUNDS.tcp, warmup: 1 } });
    if (!(line.stats()?.delayed ?? 0)) return { ...base, reason: "the delay line passed no frame" };
    for (const [name, r] of [["ainftp", a], ["tcp ring", t]] as const)
      if (r.status !== "ok") return { ...base, reason: `${name} failed with the delay: ${r.reason}` };
    const median = (xs: number[]) => (xs.length ? quantiles(xs).median : null);
    const am = median(a.round_times_ms), tm = median(t.round_times_ms);
    const passive = (a.detail as NodeReport[] | null)?.[slow]?.straggler?.passive_rounds ?? null;
    return {
      ...base, status: "measured", round_ms_median: am, tcp_round_ms_median: tm, verified: a.verified === true && t.verified === true,
      passive_rounds: passive, ratio: am !== null && tm ? am / tm : null,
    };
  } catch (e) {
    return { ...base, reason: e instanceof AinftpError ? e.message : String((e as Error)?.message ?? e) };
  } finally {
    line?.remove();
    killLabProcs(bl.lab);
    for (const ino of bl.inodes) rmSync(join(BPFFS, "ainftp", `netns-${ino}`), { recursive: true, force: true });
  }
}

export function scalingRows(runs: RunResult[]): ScalingRow[] {
  return runs.map((r) => {
    const row = r.rows.find((x) => x.id === "round_ms_median")!;
    return { peers: r.peers, bytes: r.bytes, link_rate_bps: r.link_rate_bps ?? null, round_ms_median: row.values, best_peer: row.best_peer, ratio: row.ratio };
  });
}

/** The bit width of an ainftp system name. */
function widthOf(s: SystemName): 16 | 8 | 4 {
  return s === "ainftp-8" ? 8 : s === "ainftp-4" ? 4 : 16;
}
