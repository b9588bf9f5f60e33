// `ainftp bench --slurm`: the comparison on the allocation's own nodes, NICs
// and switch. Run once inside an allocation (salloc, or an sbatch script); it
// starts every rank through srun, one task per node:
//   1. a probe step (src/bench/slurm-node.ts): each node's interface (driver,
//      MTU, speed), root, whether the program attaches there, which peers are
//      installed; any node that cannot run the bench stops it here, with what
//      to do;
//   2. per (nodes, size, system) one step: ainftp (`swarm --slurm --verify`),
//      the built-in TCP ring, Gloo, Open MPI (srun --mpi=pmix, SLURM's PMIx;
//      without that plugin, mpirun inside the allocation),
//      each rank wrapped in `bench node slurm-rank`, which measures the node's
//      interface counters, softirqs and NIC IRQs around it;
//   3. the machine rows on the first node; a last step removes any stale pins
//      and checks that no node has a program attached or pins left.
// The result is the local bench's BenchResult (same table, JSON, charts),
// with `cluster` describing the nodes and the check after the run.
import pkg from "../../package.json" with { type: "json" };
import { AinftpError } from "../errors.ts";
import { chunkElemsForMtu, type NodeReport } from "../node.ts";
import { expandHostlist } from "../slurm.ts";
import { formatSize } from "../units.ts";
import { parseRankLines, summarize, type BaselineResult } from "./baselines.ts";
import type { MachineInfo } from "./machine.ts";
import type { IfaceStats } from "./proc.ts";
import {
  BASELINES, ainftpCounters, computeMetrics, dataRounds, machineRows, metricRows, tcpCounters, untrackedCounters,
  type AinftpRankReport, type BaselineName, type RoundQuantiles, type SystemCounters, type SystemName, type SystemRun, type TcpRankReport,
} from "./rows.ts";
import {
  SCHEMA_ID, SHAPING_WINDOW_MS, STRAGGLER_DELAY_MS, cpuPerRound, scalingRows, selfCommand, slowestPerRound, wireCounts,
  type BenchResult, type ProgressEvent, type RunResult, type StragglerResult, type SystemOutcome,
} from "./run.ts";
import { collectReports, type CleanReport, type ProbeReport, type RankReport } from "./slurm-node.ts";
import { quantiles, type TcpRingReport } from "./tcp-ring.ts";
import type { SentryCostResult } from "./sentry-cost.ts";
import type { TlbResult } from "./tlb.ts";

type Env = Record<string, string | undefined>;

export interface SlurmBenchOptions {
  sizes: number[];
  rounds: number;
  baselines: BaselineName[];
  mode: "native" | "generic";
  rx: "map" | "xsk";
  /** The interface between the nodes (default: the one that routes to them, on each node). */
  iface?: string;
  /** Node counts, each at most the allocation's (default: all of its nodes). */
  peers?: number[];
  backToBack?: boolean;
  micro?: boolean;
  tlbBytes?: number;
  self?: string[];
  onProgress?: (e: ProgressEvent) => void;
  env?: Env;
}

/** The `cluster` section of the JSON: where it ran, and the check after it. */
export interface ClusterInfo {
  scheduler: "slurm";
  job_id: string;
  nodelist: string;
  /** One entry per node, from its probe. */
  nodes: {
    name: string; hostname: string; addr: string; iface: string; driver: string | null; driver_version: string | null; firmware: string | null;
    bus_info: string | null; mtu: number | null; speed_mbps: number | null; irq_vectors: number; xdp_mode: string | null; kernel: string; cores: number; cpu_model: string;
  }[];
  /** Every node reported the same boot id: they are namespaces of one kernel, not machines (softirqs counted once). */
  shared_kernel: boolean;
  srun: string;
  /** How each system's ranks were started. */
  launch: Record<string, string>;
  /** After the run: what each node's interface holds (program 0 and no pins: left as found). */
  after: { node: string; program_id: number; pins: boolean; removed: string[] }[];
  left_as_found: boolean;
}

const REFUSE = "bench --slurm";
const RUN_HINT = "inside an allocation of 2 nodes or more: salloc -N 4 ainftp bench --slurm, or sbatch examples/slurm/bench-job.sh";

/** The allocation this process runs in; refuses (with what to do) outside one, under srun, or with one node. */
export function requireAllocation(env: Env): { jobId: string; nodelist: string; nodes: string[] } {
  const jobId = env.SLURM_JOB_ID ?? env.SLURM_JOBID;
  if (!jobId) throw new AinftpError(REFUSE, "not inside a SLURM allocation (SLURM_JOB_ID is not set)", { hint: RUN_HINT });
  if (env.SLURM_STEP_ID !== undefined && /^\d+$/.test(env.SLURM_STEP_ID) && Number(env.SLURM_NTASKS ?? 1) > 1)
    throw new AinftpError(REFUSE, `this is task ${env.SLURM_PROCID} of ${env.SLURM_NTASKS} of an srun step: the bench starts its own steps, so it runs once`, {
      hint: "run `ainftp bench --slurm` in the job script or salloc shell, not under srun",
    });
  const nodelist = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
  if (!nodelist) throw new AinftpError(REFUSE, "SLURM_JOB_NODELIST is not set", { hint: RUN_HINT });
  const nodes = expandHostlist(nodelist);
  if (nodes.length < 2) throw new AinftpError(REFUSE, `the allocation has ${nodes.length} node (${nodelist}); an all-reduce needs 2 or more`, { hint: RUN_HINT });
  if (!Bun.which("srun")) throw new AinftpError(REFUSE, "srun is not on PATH", { hint: "run it where SLURM's client commands are installed (the job's first node or the salloc shell)" });
  return { jobId, nodelist, nodes };
}

// ---- steps ----------------------------------------------------------------------------------------

export interface Step {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

let running: Bun.Subprocess | null = null;
let aborted = false;

/** Stops the running step (SIGTERM: srun passes it to every task, which passes it to its rank) and waits up to 10 s. */
export async function abortSlurmBench(): Promise<void> {
  aborted = true;
  const p = running;
  if (!p) return;
  p.kill("SIGTERM");
  const killer = setTimeout(() => p.kill("SIGKILL"), 10_000);
  await p.exited;
  clearTimeout(killer);
}

/** One srun step: a task on each of `nodes`. */
async function srunStep(nodes: string[], argv: string[], o: { timeoutMs: number; mpi?: MpiLaunch; env?: Record<string, string> }): Promise<Step> {
  if (aborted) return { code: null, stdout: "", stderr: "aborted", timedOut: false };
  // mpirun inside an allocation starts its daemons through srun itself, one rank per node from the first
  const cmd = o.mpi === "mpirun"
    ? ["mpirun", "-np", String(nodes.length), "--map-by", "ppr:1:node", "--bind-to", "none", ...argv]
    : [
      "srun", `--nodes=${nodes.length}`, `--ntasks=${nodes.length}`, "--ntasks-per-node=1", `--nodelist=${nodes.join(",")}`, "--kill-on-bad-exit=1",
      ...(o.mpi === "pmix" ? ["--mpi=pmix"] : []), ...argv,
    ];
  const p = Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...o.env } });
  running = p;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    p.kill("SIGTERM");
    setTimeout(() => p.kill("SIGKILL"), 10_000).unref();
  }, o.timeoutMs);
  try {
    const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    return { code, stdout, stderr, timedOut };
  } finally {
    clearTimeout(timer);
    running = null;
  }
}

const lastLines = (s: string, n = 3) => s.trim().split("\n").filter(Boolean).slice(-n).join(" | ");

/** Why a step gave fewer reports than nodes: srun's words (a missing binary, a node down) or the first rank that failed. */
function stepFailure(step: Step, got: number, want: number, nodes: string[], timeoutMs: number): string {
  if (step.timedOut) return `timed out after ${Math.round(timeoutMs / 1000)} s: ${lastLines(step.stderr)}`;
  const exec = /execve\(\): (\S+): No such file or directory/.exec(step.stderr);
  if (exec) return `a node has no ${exec[1]}`;
  return `${got} of ${want} nodes (${nodes.join(",")}) reported; srun exited ${step.code}: ${lastLines(step.stderr) || "no output"}`;
}

// ---- the probe -----------------------------------------------------------------------------------

interface Cluster {
  jobId: string;
  nodelist: string;
  nodes: string[];
  probes: ProbeReport[];
  iface: string;
  mtu: number;
  sharedKernel: boolean;
  /** How Open MPI's ranks start: srun --mpi=pmix when SLURM has the plugin, else mpirun (null: neither). */
  mpi: MpiLaunch | null;
}

type MpiLaunch = "pmix" | "mpirun";

/** srun --mpi=pmix when `srun --mpi=list` names pmix, else mpirun when installed here; AINFTP_BENCH_MPI_LAUNCH=pmix|mpirun chooses. */
function mpiLaunch(env: Env): MpiLaunch | null {
  const forced = env.AINFTP_BENCH_MPI_LAUNCH;
  if (forced === "pmix" || forced === "mpirun") return forced;
  const plugins = Bun.spawnSync(["srun", "--mpi=list"], { stdout: "pipe", stderr: "pipe" });
  if (/\bpmix\b/.test(plugins.stdout.toString() + plugins.stderr.toString())) return "pmix";
  return Bun.which("mpirun") ? "mpirun" : null;
}

/** Why the probed nodes cannot run the bench (each node that cannot, and what to do), or null. */
export function probeRefusal(probes: ProbeReport[], o: Pick<SlurmBenchOptions, "mode" | "iface">): AinftpError | null {
  const bad: string[] = [];
  let hint = "";
  for (const p of probes) {
    if (p.error) {
      bad.push(`${p.node}: ${p.error}`);
      hint ||= "pass --iface NAME (an interface every node has, ip -br addr) if the route is not the one to use";
    } else if (p.uid !== 0) {
      bad.push(`${p.node}: runs as uid ${p.uid}, and attaching XDP needs root`);
      hint ||= "run the job as root (the program needs CAP_NET_ADMIN and CAP_BPF on every node)";
    } else if (!p.xdp.ok) {
      bad.push(`${p.node}: ${p.iface} (driver ${p.nic.driver ?? "unknown"}) cannot run the program: ${p.xdp.reason}`);
      hint ||= o.mode === "native"
        ? `--mode generic runs it in the kernel's generic path (slower; every driver has it), or pick another interface with --iface`
        : "pick another interface with --iface";
    }
  }
  if (new Set(probes.map((p) => p.iface)).size > 1 && !o.iface) {
    bad.push(`the nodes route to each other through different interfaces (${probes.map((p) => `${p.node}: ${p.iface}`).join(", ")})`);
    hint ||= "pass --iface NAME";
  }
  const mtus = new Set(probes.map((p) => p.nic.mtu));
  if (!bad.length && mtus.size > 1) {
    bad.push(`the nodes' MTUs on ${probes[0].iface} differ (${probes.map((p) => `${p.node}: ${p.nic.mtu}`).join(", ")}); ainftp sizes its packets to its own MTU, so a larger one's frames are dropped by the others`);
    hint ||= `give every node the same MTU (ip link set dev ${probes[0].iface} mtu M), as the switch carries`;
  }
  return bad.length ? new AinftpError(REFUSE, `the nodes cannot run the bench: ${bad.join("; ")}`, { hint }) : null;
}

/** The probe step gave fewer reports than nodes: a node without the binary (srun says execve failed), or what srun said. */
export function probeStepError(step: Step, got: number, nodes: string[], timeoutMs: number): AinftpError {
  const exec = /(\S+): error: execve\(\): (\S+): No such file or directory/.exec(step.stderr);
  if (exec)
    return new AinftpError(REFUSE, `${exec[1].replace(/^slurmstepd-/, "")} has no ${exec[2]}`, {
      hint: `put ainftp at the same path on every node: a shared file system, or sbcast ${exec[2]} ${exec[2]} in the job script first`,
    });
  return new AinftpError(REFUSE, `probing the nodes failed: ${stepFailure(step, got, nodes.length, nodes, timeoutMs)}`, {
    hint: "check that every node runs the same ainftp (ainftp --version) and that srun works in this allocation (srun hostname)",
  });
}

async function probe(alloc: { jobId: string; nodelist: string; nodes: string[] }, o: SlurmBenchOptions, self: string[]): Promise<Cluster> {
  const args = ["bench", "node", "slurm-probe", "--", "--mode", o.mode, ...(o.iface ? ["--iface", o.iface] : []),
    ...(o.baselines.includes("gloo") ? ["--gloo"] : []), ...(o.baselines.includes("mpi") ? ["--mpi"] : [])];
  const timeoutMs = 180_000;
  const step = await srunStep(alloc.nodes, [...self, ...args], { timeoutMs });
  const got = collectReports<ProbeReport>(step.stdout, "probe");
  if (got.size !== alloc.nodes.length) throw probeStepError(step, got.size, alloc.nodes, timeoutMs);
  const probes = [...got.values()].sort((a, b) => a.rank - b.rank);
  const refusal = probeRefusal(probes, o);
  if (refusal) throw refusal;
  const mtus = probes.map((p) => p.nic.mtu ?? 1500);
  const boot = new Set(probes.map((p) => p.boot_id));
  return {
    ...alloc, probes, iface: probes[0].iface, mtu: Math.min(...mtus), sharedKernel: boot.size === 1 && !boot.has(null), mpi: mpiLaunch(o.env ?? process.env),
  };
}

// ---- one system on k nodes -------------------------------------------------------------------------

type Outcome = SystemOutcome<SystemCounters>;

interface Ctx {
  o: SlurmBenchOptions & { self: string[] };
  c: Cluster;
  nodes: string[];
  bytes: number;
  backToBack: boolean;
  launch: Record<string, string>;
  log: (line: string) => void;
}

const noCounters: SystemCounters = { wakeups_per_round: null, wakeups_source: null, packets_per_round: null, copy_bytes_per_round: null, copy_source: null };
const ZERO: IfaceStats = { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0, rxDropped: 0, txDropped: 0, rxErrors: 0, txErrors: 0 };
let glooPort = 29600;

function timeoutFor(x: Ctx, system: SystemName): number {
  const base = system === "gloo" ? 150_000 : 90_000;
  return base + Math.ceil((x.o.rounds + 3) * Math.max(1, x.bytes / 2 ** 20) * 100 * Math.max(1, x.nodes.length / 2));
}

/** The child each node runs for `system` (`{rank}`: the task's rank), and how srun starts it. */
function childOf(x: Ctx, system: SystemName): { argv: string[]; mpi?: MpiLaunch; env?: Record<string, string>; launch: string } | { na: string; version: string | null } {
  const { o, c, bytes } = x;
  const k = x.nodes.length;
  const b2b = x.backToBack;
  const addrs = c.probes.slice(0, k).map((p) => p.addr);
  if (system === "ainftp") {
    const argv = [...o.self, "swarm", "--slurm", "--iface", c.iface, "--synthetic", String(bytes), "--rounds", String(o.rounds), "--verify",
      "--mode", o.mode, "--rx", o.rx, "--json", ...(b2b ? ["--back-to-back"] : [])];
    return { argv, launch: "srun (one task per node): ainftp swarm --slurm --verify --json" };
  }
  if (system === "tcp") {
    const argv = [...o.self, "bench", "node", "tcp", "--", "--peers", addrs.join(","), "--rank", "{rank}", "--size", String(bytes),
      "--rounds", String(o.rounds), "--json", ...(b2b ? ["--back-to-back"] : [])];
    return { argv, launch: "srun (one task per node): ainftp bench node tcp -- --peers <node addresses> --rank $SLURM_PROCID" };
  }
  const probes = c.probes.slice(0, k);
  if (system === "gloo") {
    const bad = probes.find((p) => !p.gloo?.ok);
    if (bad) return { na: `${bad.node}: ${bad.gloo?.reason ?? "not probed"} (or: make bench-deps on every node)`, version: bad.gloo?.version ?? null };
    const py = probes[0].gloo!;
    if (probes.some((p) => p.gloo!.python !== py.python || p.gloo!.script !== py.script))
      return { na: `the nodes' Python with torch differ (${probes.map((p) => `${p.node}: ${p.gloo!.python}`).join(", ")}): install the same on every node`, version: py.version };
    const argv = [py.python!, py.script, "{rank}", String(k), addrs[0], String(glooPort++), String(bytes), String(o.rounds), "3", c.iface, ...(b2b ? ["back-to-back"] : [])];
    return { argv, env: { PYTHONUNBUFFERED: "1", OMP_NUM_THREADS: "1" }, launch: `srun (one task per node): ${py.python} gloo_allreduce.py $SLURM_PROCID ${k} ${addrs[0]} PORT …` };
  }
  const bad = probes.find((p) => !p.mpi?.ok);
  if (bad) return { na: `${bad.node}: ${bad.mpi?.reason ?? "not probed"} (or: make bench-deps on every node)`, version: bad.mpi?.version ?? null };
  if (!c.mpi) return { na: "this SLURM has no PMIx plugin (srun --mpi=list) and there is no mpirun here to start Open MPI's ranks: install either (Debian: slurm-wlm-basic-plugins, openmpi-bin)", version: probes[0].mpi!.version };
  if (probes.some((p) => p.mpi!.bin !== probes[0].mpi!.bin)) return { na: "the nodes built mpi_allreduce at different paths ($TMPDIR differs)", version: probes[0].mpi!.version };
  const argv = [probes[0].mpi!.bin!, String(bytes), String(o.rounds), "3", ...(b2b ? ["back-to-back"] : [])];
  // as the local bench: plain TCP through the BTL on the bench's interface, ranks yield when idle
  const env = {
    OMPI_MCA_pml: "ob1", OMPI_MCA_btl: "tcp,self", OMPI_MCA_btl_tcp_if_include: c.iface, OMPI_MCA_oob_tcp_if_include: c.iface,
    OMPI_MCA_mpi_yield_when_idle: "1", OMPI_MCA_btl_base_warn_component_unused: "0",
  };
  if (c.mpi === "mpirun") {
    // mpirun may run off the nodes (an salloc shell), where the interface has another name: only the ranks' BTL is pinned
    const { OMPI_MCA_oob_tcp_if_include: _, ...ranks } = env;
    return {
      argv, mpi: "mpirun", env: { ...ranks, OMPI_ALLOW_RUN_AS_ROOT: "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1" },
      launch: `mpirun inside the allocation (its daemons through srun), one rank per node: mpi_allreduce, btl tcp on ${c.iface}`,
    };
  }
  return { argv, mpi: "pmix", env, launch: `srun --mpi=pmix (SLURM's PMIx, no mpirun): mpi_allreduce, btl tcp on ${c.iface}` };
}

/** The system's verdict and round times from its ranks' reports. */
function outcomeOf(system: SystemName, x: Ctx, reports: RankReport[], version: string | null): Outcome {
  const base: Outcome = { label: system, version, status: "ok", reason: null, verified: null, warmup: 3, round_times_ms: [], counters: noCounters, detail: null };
  const failed = reports.find((r) => r.code !== 0 && !(r.code === 3 && (system === "ainftp" || system === "tcp")));
  if (failed) return { ...base, status: "failed", reason: `rank ${failed.rank} on ${failed.node} ${failed.code === null ? "was killed" : `exited ${failed.code}`}: ${lastLines(`${failed.stderr}\n${failed.stdout}`)}` };
  try {
    if (system === "ainftp") {
      const rs = reports.map((r) => JSON.parse(r.stdout) as NodeReport);
      const identical = rs.every((r) => JSON.stringify(r.result_hash) === JSON.stringify(rs[0].result_hash));
      const verified = identical && rs.every((r) => r.verified);
      return {
        ...base, label: "ainftp", version: `${pkg.version}, XDP ${x.o.mode}, results via ${x.o.rx === "map" ? "mmapped map" : "AF_XDP"}`, warmup: 1, verified,
        reason: verified ? null : identical ? `relative L2 error ${Math.max(...rs.map((r) => r.rel_l2_error_max ?? Infinity))} > 1e-3` : "results differ between ranks",
        round_times_ms: slowestPerRound(rs.map((r) => r.round_times_ms)),
        round_cpu_ms: cpuPerRound(rs.map((r) => r.round_cpu_ms), x.o.rounds),
        counters: ainftpCounters(rs as unknown as AinftpRankReport[]),
        detail: rs.map(({ result_hash, round_times_ms, round_cpu_ms, ...r }) => r),
      };
    }
    if (system === "tcp") {
      const rs = reports.map((r) => JSON.parse(r.stdout.trim().split("\n").at(-1)!) as TcpRingReport);
      const verified = rs.every((r) => r.verified);
      return {
        ...base, label: "tcp ring", version: "built in: ring all-reduce, C, TCP_NODELAY, pipelined 64 KiB", warmup: rs[0].warmup, verified,
        reason: verified ? null : `relative L2 error ${Math.max(...rs.map((r) => r.rel_l2_error_max ?? Infinity))} > ${rs[0].tolerance}`,
        round_times_ms: slowestPerRound(rs.map((r) => r.round_times_ms)),
        round_cpu_ms: cpuPerRound(rs.map((r) => r.round_cpu_ms), x.o.rounds),
        counters: tcpCounters(rs as unknown as TcpRankReport[]),
        detail: rs.map(({ round_times_ms, round_cpu_ms, ...r }) => r),
      };
    }
  } catch {
    return { ...base, status: "failed", reason: `a rank printed no JSON report: ${lastLines(reports.map((r) => r.stdout + r.stderr).join("\n"))}` };
  }
  const peer = system as "gloo" | "mpi";
  const blank: BaselineResult = {
    system: peer, peers: x.nodes.length, bytes: x.bytes, rounds: x.o.rounds, warmup: 3, status: "ok", round_ms: [], median_ms: null, p10: null, p90: null, p99: null,
    verified: null, ranks: [], version: version ?? undefined,
  };
  const r = summarize(blank, reports.flatMap((k) => parseRankLines(k.stdout, peer)), null);
  return {
    ...base, label: peer === "gloo" ? `Gloo${version ? ` (torch ${version.split(",")[0]})` : ""}` : `Open MPI${version ? ` ${version}` : ""}`,
    status: r.status, reason: r.reason ?? null, verified: r.verified, round_times_ms: r.round_ms,
    round_cpu_ms: cpuPerRound(r.ranks.map((k) => k.round_cpu_ms), x.o.rounds),
    counters: { ...untrackedCounters(null, x.bytes, x.nodes.length), copy_source: "not instrumented: Gloo and Open MPI count no copies, and on a cluster their /proc/PID/io is not sampled" },
    detail: { launch: x.launch[peer] ?? null, ranks: r.ranks.map(({ round_ms, round_cpu_ms, ...k }) => k) },
  };
}

const NOT_SAMPLED = "not sampled on a cluster: the local bench samples the hosts' processes every 5 ms; here each node reads its counters before and after the run";

/** Runs one system on x.nodes and measures it. */
async function runSystem(x: Ctx, system: SystemName): Promise<{ r: SystemRun; reports: RankReport[] }> {
  const child = childOf(x, system);
  const k = x.nodes.length;
  const versionOf = (s: SystemName) => (s === "gloo" ? x.c.probes[0].gloo?.version : s === "mpi" ? x.c.probes[0].mpi?.version : null) ?? null;
  let out: Outcome;
  let reports: RankReport[] = [];
  const t0 = performance.now();
  if ("na" in child) {
    out = { label: system === "gloo" ? "Gloo" : "Open MPI", version: child.version, status: "na", reason: child.na, verified: null, warmup: 3, round_times_ms: [], counters: noCounters, detail: null };
  } else {
    x.launch[system] = child.launch;
    const wrap = [...x.o.self, "bench", "node", "slurm-rank", "--", "--iface", x.c.iface, ...(system === "ainftp" ? ["--pins"] : []), "--", ...child.argv];
    const timeoutMs = timeoutFor(x, system);
    const step = await srunStep(x.nodes, wrap, { timeoutMs, mpi: child.mpi, env: child.env });
    reports = [...collectReports<RankReport>(step.stdout, "rank").values()].sort((a, b) => a.rank - b.rank);
    for (const r of reports) for (const line of r.cleaned) x.log(`${r.node}: removed ${line}`);
    out = reports.length === k && !step.timedOut ? outcomeOf(system, x, reports, versionOf(system))
      : { label: system, version: versionOf(system), status: "failed", reason: stepFailure(step, reports.length, k, x.nodes, timeoutMs), verified: null, warmup: 3, round_times_ms: [], counters: noCounters, detail: null };
    if (aborted) out = { ...out, status: "failed", reason: "stopped (SIGTERM/SIGINT)" };
  }
  return { r: measuredRun(x, system, out, reports, performance.now() - t0), reports };
}

function measuredRun(x: Ctx, system: SystemName, out: Outcome, reports: RankReport[], wallMs: number): SystemRun {
  const k = x.nodes.length;
  const ran = out.status === "ok" && reports.length === k;
  const total = reports.reduce((s, r) => {
    const t = { ...s };
    for (const key of Object.keys(t) as (keyof IfaceStats)[]) t[key] += r.net[key];
    return t;
  }, ZERO);
  // namespaces of one kernel each read the same /proc/softirqs: count it once
  const soft = x.c.sharedKernel
    ? { net_rx: Math.max(0, ...reports.map((r) => r.softirqs.net_rx)), net_tx: Math.max(0, ...reports.map((r) => r.softirqs.net_tx)) }
    : reports.reduce((s, r) => ({ net_rx: s.net_rx + r.softirqs.net_rx, net_tx: s.net_tx + r.softirqs.net_tx }), { net_rx: 0, net_tx: 0 });
  const r: SystemRun = {
    system, label: out.label, version: out.version, status: out.status, reason: out.reason, verified: out.verified,
    peers: k, bytes: x.bytes, warmup: out.warmup, rounds: x.o.rounds,
    round_ms: out.round_times_ms.length ? (quantiles(out.round_times_ms) as RoundQuantiles) : null,
    round_times_ms: out.round_times_ms.map((t) => +t.toFixed(3)),
    round_cpu_ms: out.round_cpu_ms?.map((t) => +t.toFixed(3)) ?? null,
    wall_ms: Math.round(wallMs),
    wire: ran ? wireCounts(ZERO, total, k, dataRounds({ warmup: out.warmup, rounds: x.o.rounds }), x.c.mtu) : null,
    window: null,
    softirqs: ran ? soft : null,
    counters: out.counters,
    metrics: {} as SystemRun["metrics"], na: {}, detail: out.detail,
    link_rate_bps: null, bandwidth: null, shaping: null, back_to_back: null,
  };
  finish(r, x, reports);
  return r;
}

/** Metrics of a run (again once its back-to-back run is attached). */
function finish(r: SystemRun, x: Ctx, reports: RankReport[]): void {
  const nic = x.c.probes[0].nic;
  const irqs = reports.map((k) => k.irqs);
  const hwIrqNa = irqs.length && irqs.every((v) => v !== null) ? null
    : `${x.c.iface} (driver ${nic.driver ?? "unknown"}) has no device IRQs of its own${x.c.sharedKernel ? " (namespaces: veth)" : ""}`;
  const perS = hwIrqNa === null ? reports.reduce((s, k) => s + k.irqs! / Math.max(1e-3, k.wall_ms / 1000), 0) / reports.length : null;
  const { metrics, na } = computeMetrics(r, { peers: x.nodes.length, mtu: x.c.mtu, hwIrqNa, hwIrqsPerS: perS, rateBps: null });
  for (const key of Object.keys(na) as (keyof typeof na)[]) if (na[key] === "no active interval was sampled") na[key] = NOT_SAMPLED;
  r.metrics = metrics;
  r.na = na;
  r.bandwidth = metrics.algbw_bytes_per_s === null ? null
    : { algbw_bytes_per_s: metrics.algbw_bytes_per_s, busbw_bytes_per_s: metrics.busbw_bytes_per_s!, line_rate_fraction: metrics.line_rate_fraction };
}

function summary(r: SystemRun): string {
  if (r.status === "na") return `n/a: ${r.reason}`;
  if (r.status === "failed") return `FAILED: ${r.reason}`;
  return `median ${r.round_ms?.median.toFixed(2)} ms, p99 ${r.round_ms?.p99.toFixed(2)} ms, verified ${r.verified}` +
    (r.wire ? `, ${formatSize(Math.round(r.wire.tx_bytes_per_host_per_round))} on the wire per node per round` : "") +
    (r.verified === false && r.reason ? ` (${r.reason})` : "");
}

// ---- the whole run --------------------------------------------------------------------------------

function clusterInfo(c: Cluster, launch: Record<string, string>, after: CleanReport[]): ClusterInfo {
  const srun = Bun.spawnSync(["srun", "--version"], { stdout: "pipe", stderr: "pipe" }).stdout.toString().trim();
  return {
    scheduler: "slurm", job_id: c.jobId, nodelist: c.nodelist,
    nodes: c.probes.map((p) => ({
      name: p.node, hostname: p.hostname, addr: p.addr, iface: p.iface, driver: p.nic.driver, driver_version: p.nic.driver_version, firmware: p.nic.firmware,
      bus_info: p.nic.bus_info, mtu: p.nic.mtu, speed_mbps: p.nic.speed_mbps, irq_vectors: p.nic.irq_vectors, xdp_mode: p.xdp.mode,
      kernel: p.machine.kernel, cores: p.machine.cores, cpu_model: p.machine.cpu_model,
    })),
    shared_kernel: c.sharedKernel, srun, launch,
    after: after.map((a) => ({ node: a.node, program_id: a.program_id, pins: a.pins, removed: a.removed })),
    left_as_found: after.length === c.probes.length && after.every((a) => a.program_id === 0 && !a.pins),
  };
}

/** One line about the nodes' links, for the machine's `links` and the table. */
export function clusterLinks(ci: ClusterInfo): string {
  const n = ci.nodes[0];
  const same = (f: (x: ClusterInfo["nodes"][number]) => unknown) => ci.nodes.every((x) => f(x) === f(n));
  const speed = (x: ClusterInfo["nodes"][number]) => (x.speed_mbps === null ? "speed not reported" : x.speed_mbps >= 1000 ? `${x.speed_mbps / 1000} Gbit/s` : `${x.speed_mbps} Mbit/s`);
  const nic = same((x) => `${x.iface} ${x.driver} ${x.mtu} ${x.speed_mbps}`)
    ? `${n.iface}: driver ${n.driver ?? "unknown"}, MTU ${n.mtu}, ${speed(n)}`
    : ci.nodes.map((x) => `${x.name} ${x.iface} (${x.driver ?? "?"}, MTU ${x.mtu}, ${speed(x)})`).join("; ");
  return `SLURM job ${ci.job_id}: ${ci.nodes.length} nodes (${ci.nodelist}), ${nic}` +
    (ci.shared_kernel ? "; the nodes share one kernel (network namespaces of one machine, not separate machines)" : "");
}

export async function runSlurmBench(opts: SlurmBenchOptions): Promise<BenchResult & { cluster: ClusterInfo }> {
  const env = opts.env ?? process.env;
  const alloc = requireAllocation(env);
  const o = { ...opts, self: opts.self ?? selfCommand(), micro: opts.micro ?? true, backToBack: opts.backToBack ?? false };
  const peers = o.peers ?? [alloc.nodes.length];
  for (const k of peers)
    if (k < 2 || k > alloc.nodes.length)
      throw new AinftpError(REFUSE, `--peers ${k}: the allocation has ${alloc.nodes.length} nodes`, { hint: `give node counts in 2..${alloc.nodes.length}, or allocate more (salloc -N ${k})` });
  aborted = false;
  const emit = o.onProgress ?? (() => {});
  const log = (line: string) => emit({ kind: "log", line });
  const started = performance.now();
  const date = new Date().toISOString();
  const systems: SystemName[] = ["ainftp", ...BASELINES.filter((b) => o.baselines.includes(b))];
  const total = 2 + peers.length * o.sizes.length * systems.length * (o.backToBack ? 2 : 1) + (o.micro ? 1 : 0);
  let step = 0;

  emit({ kind: "step", index: ++step, total, label: `probe · ${alloc.nodes.length} nodes of job ${alloc.jobId} · interface, driver, root, XDP, installed peers` });
  const c = await probe(alloc, o, o.self);
  emit({ kind: "done", index: step, total, label: "probe", summary: `${c.iface} on every node; ${c.probes.map((p) => `${p.node} ${p.addr} (${p.nic.driver}, MTU ${p.nic.mtu}, XDP ${p.xdp.mode})`).join(", ")}` });

  const launch: Record<string, string> = {};
  const runs: RunResult[] = [];
  for (const k of peers)
    for (const bytes of o.sizes) {
      const sys: SystemRun[] = [];
      for (const s of systems) {
        const one = async (b2b: boolean) => {
          const label = `${s} · ${k} nodes · ${formatSize(bytes)} · ${o.rounds} rounds${b2b ? " back to back" : ""}`;
          emit({ kind: "step", index: ++step, total, label });
          const x: Ctx = { o, c, nodes: c.nodes.slice(0, k), bytes, backToBack: b2b, launch, log };
          const { r, reports } = await runSystem(x, s);
          emit({ kind: "done", index: step, total, label, summary: summary(r) });
          return { r, x, reports };
        };
        const { r, x, reports } = await one(false);
        if (o.backToBack && r.status !== "na") {
          const b = (await one(true)).r;
          r.back_to_back = {
            status: b.status, reason: b.reason, verified: b.verified, warmup: b.warmup, rounds: b.rounds, round_ms: b.round_ms, round_times_ms: b.round_times_ms,
            wall_ms: b.wall_ms, wire: b.wire, bandwidth: b.bandwidth ?? null, shaping: null, detail: b.detail,
          };
          finish(r, x, reports);
        } else if (o.backToBack) step++;
        sys.push(r);
      }
      runs.push({
        peers: k, bytes, systems: sys, rows: metricRows(sys, { shaped: false, backToBack: o.backToBack }), link_rate_bps: null,
        regime: "the cluster's own links, unshaped: what the NICs, their drivers and the switch do", tbf: null,
      });
    }

  let tlb: BenchResult["tlb"] = null;
  let sentry: BenchResult["sentry"] = null;
  if (o.micro && !aborted) {
    emit({ kind: "step", index: ++step, total, label: `machine rows on ${c.nodes[0]}: the sentry's cost per packet, TLB` });
    const m = await srunStep([c.nodes[0]], [...o.self, "bench", "node", "slurm-micro", "--", "--mtu", String(c.mtu), ...(o.tlbBytes ? ["--tlb-size", String(o.tlbBytes)] : [])], { timeoutMs: 300_000 });
    const got = collectReports<{ tlb: TlbResult | { error: string }; sentry: SentryCostResult | { error: string } }>(m.stdout, "micro").get(0);
    tlb = got?.tlb ?? { error: stepFailure(m, 0, 1, [c.nodes[0]], 300_000) };
    sentry = got?.sentry ?? { error: stepFailure(m, 0, 1, [c.nodes[0]], 300_000) };
    emit({ kind: "done", index: step, total, label: "machine rows", summary: got ? "measured" : `failed: ${lastLines(m.stderr)}` });
  }

  emit({ kind: "step", index: ++step, total, label: "after: stale pins removed, every node checked" });
  const cl = await srunStep(c.nodes, [...o.self, "bench", "node", "slurm-clean", "--", "--iface", c.iface], { timeoutMs: 60_000 });
  const after = [...collectReports<CleanReport>(cl.stdout, "clean").values()].sort((a, b) => a.rank - b.rank);
  const cluster = clusterInfo(c, launch, after);
  emit({ kind: "done", index: step, total, label: "after", summary: cluster.left_as_found ? `every node as found: no program on ${c.iface}, no pins` : `NOT as found: ${JSON.stringify(cluster.after)}` });

  const straggler: StragglerResult = {
    status: "n/a", delay_ms: STRAGGLER_DELAY_MS, peers: null, bytes: null, round_ms_median: null, undelayed_round_ms_median: null,
    tcp_round_ms_median: null, verified: null, passive_rounds: null, rounds: 0, ratio: null,
    reason: "not run with --slurm: it delays one host's link through a delay line, and the bench leaves the nodes' links as it found them",
  };
  const p0 = c.probes[0].machine;
  const machine: MachineInfo = {
    ...p0, mtu: c.mtu, xdp_mode: o.mode,
    af_xdp: o.rx === "xsk" ? `AF_XDP on ${c.iface} (driver ${c.probes[0].nic.driver}; zero-copy where the driver has it)` : "not used (--rx map: results through the mmapped map)",
    links: clusterLinks(cluster),
  };
  const ran = runs.flatMap((r) => r.systems).filter((s) => s.status === "ok");
  return {
    schema: SCHEMA_ID, date, command: "", duration_s: +((performance.now() - started) / 1000).toFixed(1),
    config: {
      peers, sizes: o.sizes, rounds: o.rounds, baselines: o.baselines, mtu: c.mtu, xdp_mode: o.mode, rx: o.rx,
      subnet: `the nodes' own addresses on ${c.iface}: ${c.probes.map((p) => p.addr).join(" ")}`,
      chunk_elems: chunkElemsForMtu(c.mtu), sample_interval_ms: 0, active_bytes: 0, link_rates: [null], back_to_back: o.backToBack, sweep: false,
      shaping_window_ms: SHAPING_WINDOW_MS, shaped_sizes: [],
    },
    machine, runs, scaling: scalingRows(runs), tlb, sentry, straggler,
    machine_rows: machineRows(tlb, sentry, straggler),
    verified: ran.every((s) => s.verified === true && (!s.back_to_back || s.back_to_back.status === "na" || s.back_to_back.verified === true)),
    cluster,
  };
}

/** The cluster section of a result, when it ran under --slurm. */
export function clusterOf(r: BenchResult): ClusterInfo | null {
  return (r as BenchResult & { cluster?: ClusterInfo | null }).cluster ?? null;
}

/** The table's header, link line and footer for a --slurm run (null for a local one). */
export function clusterText(r: BenchResult): { header: string; links: string; footer: string } | null {
  const ci = clusterOf(r);
  if (!ci) return null;
  const m = r.machine;
  const kinds = [...new Set(ci.nodes.map((n) => `${n.cpu_model}, ${n.cores} cores, kernel ${n.kernel}`))];
  const header =
    `ainftp bench --slurm, ${r.date} — ${ci.nodes.length} nodes: ${kinds.join("; ")}; load ${m.loadavg_1m.toFixed(2)} on ${ci.nodes[0].name} at start; MTU ${m.mtu}, XDP ${m.xdp_mode}, ` +
    `${r.config.chunk_elems} int16 values per ainftp packet\n` +
    `nodes: ${m.links}\n` +
    `ranks: ${Object.entries(ci.launch).map(([s, l]) => `${s}: ${l}`).join("; ")}\n\n`;
  const after = ci.left_as_found
    ? `every node left as found: no program on ${ci.nodes[0].iface}, no pins`
    : `NOT every node left as found: ${ci.after.filter((a) => a.program_id || a.pins).map((a) => `${a.node}: ${a.program_id ? `program ${a.program_id}` : ""}${a.pins ? " pins" : ""}`).join(", ")}`;
  return {
    header,
    links: `the nodes' own links (${ci.nodes[0].iface}, ${ci.nodes[0].driver ?? "driver unknown"}), unshaped`,
    footer: `every figure above was measured in this run (${r.duration_s} s) on SLURM job ${ci.job_id}; ${after}` +
      `${ci.after.some((a) => a.removed.length) ? ` (stale pins removed: ${ci.after.flatMap((a) => a.removed.map((x) => `${a.node} ${x}`)).join(", ")})` : ""}\n`,
  };
}
