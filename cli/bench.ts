// `ainftp bench`: ainftp against plain-TCP all-reduce peers on N hosts built
// as network namespaces, in one run (src/bench/run.ts); prints the table of
// the brief's metrics, writes the JSON and the charts. `ainftp bench node …`
// (hidden) is one rank of the built-in TCP ring, started by the bench in each
// host, so the compiled binary needs nothing from the source tree.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Table from "cli-table3";
import { Command, InvalidArgumentError, Option } from "commander";
import { AinftpError } from "../src/errors.ts";
import { chartSpec, renderChart, type ChartRow } from "../src/bench/chart.ts";
import {
  AINFTP_SYSTEMS, BASELINES, formatRatio, formatValue, isAinftp, type AinftpSystem, type BaselineName, type MetricRow, type SystemName, type SystemRun,
} from "../src/bench/rows.ts";
import {
  DEFAULT_LINK_RATES, DEFAULT_MTU, MAX_MTU, DEFAULT_ROUNDS, DEFAULT_SUBNET, abortBench, runBench, type BenchResult, type ProgressEvent, type RunResult,
} from "../src/bench/run.ts";
import { formatRate, parseRates } from "../src/bench/shape.ts";
import { validateBenchJson } from "../src/bench/schema.ts";
import { runDelayLine } from "../src/bench/delay-line.ts";
import { parseTcpNodeArgs, runTcpRing } from "../src/bench/tcp-ring.ts";
import { abortSlurmBench, clusterText, runSlurmBench } from "../src/bench/slurm.ts";
import { slurmBenchOptions, slurmNodeCommands } from "./bench-slurm.ts";
import { formatSize, parseSize } from "../src/units.ts";
import { ExitCode, intOption, type IO } from "./io.ts";
import { chunkElemsForMtu } from "../src/attach.ts";

export const DEFAULT_SIZES = "1MiB,16MiB";
export const DEFAULT_REPORT = "bench-report";
/** The default run's shaped regime runs this size only (with --size, every size given runs in every regime). */
export const DEFAULT_SHAPED_SIZE = 16 << 20;
/** --sweep: 64 KiB … 64 MiB in ×4 steps, unshaped and four rates, 10 timed rounds (unless given). */
export const SWEEP_SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];
export const SWEEP_RATES = "none,5gbit,2gbit,1gbit,500mbit";
export const SWEEP_ROUNDS = 10;

function rateList(value: string): (number | null)[] {
  try {
    return parseRates(value);
  } catch (e) {
    throw new InvalidArgumentError(e instanceof AinftpError ? `${e.message}${e.hint ? ` (${e.hint})` : ""}` : String(e));
  }
}

function listOf<T>(parse: (s: string) => T, what: string) {
  return (value: string): T[] => {
    const items = value.split(",").map((s) => s.trim()).filter(Boolean);
    if (!items.length) throw new InvalidArgumentError(`Give one or more ${what}, comma-separated.`);
    return items.map(parse);
  };
}

function peerCount(s: string): number {
  if (!/^\d+$/.test(s) || Number(s) < 2 || Number(s) > 64) throw new InvalidArgumentError("Give host counts in 2..64, e.g. 4 or 2,4,8.");
  return Number(s);
}

function sizeOf(s: string): number {
  let b: number;
  try {
    b = parseSize(s, "--size");
  } catch {
    throw new InvalidArgumentError("Give sizes like 1MiB,16MiB,100MiB.");
  }
  if (b % 4) throw new InvalidArgumentError(`${s} is not a whole number of float32s (a multiple of 4 bytes).`);
  return b;
}

function baselineList(value: string): BaselineName[] {
  if (value.trim() === "none") return [];
  return listOf((s) => {
    if (!BASELINES.includes(s as BaselineName)) throw new InvalidArgumentError(`Choose from ${BASELINES.join(", ")} (or none).`);
    return s as BaselineName;
  }, "baselines")(value);
}

// ---- rendering ---------------------------------------------------------------------------------

const SYSTEM_ORDER: SystemName[] = ["tcp", "gloo", "mpi", "ainftp", "ainftp-8", "ainftp-4"];

/** Footnotes: each distinct reason once, numbered, with the systems it applies to. */
class Notes {
  private readonly reasons: string[] = [];
  private readonly who: Set<string>[] = [];
  mark(reason: string, system: string): string {
    let i = this.reasons.indexOf(reason);
    if (i < 0) {
      i = this.reasons.push(reason) - 1;
      this.who.push(new Set());
    }
    this.who[i].add(system);
    return `[${i + 1}]`;
  }
  text(): string {
    return this.reasons.map((r, i) => `[${i + 1}] ${[...this.who[i]].join(", ")}: ${r}\n`).join("");
  }
}

/** Column widths: the table stays within ~150 columns, long texts wrap. */
const WIDTH = { group: 13, metric: 30, system: 14, ratio: 14, brief_claim: 21 };

/** The table of one (peers, size) run, plus the machine rows, as text. */
export function renderRun(run: RunResult, machineRows: MetricRow[], o: { claims?: boolean; links?: string } = {}): string {
  const shown = SYSTEM_ORDER.map((s) => run.systems.find((x) => x.system === s)).filter((s): s is SystemRun => !!s && (s.status !== "na" || isAinftp(s.system)));
  const peers = shown.filter((s) => !isAinftp(s.system));
  // ainftp at each bit width that ran: a column each (16 bits is "ainftp")
  const mine = shown.filter((s) => isAinftp(s.system));
  const ours = mine.find((s) => s.system === "ainftp") ?? mine[0];
  const extra = mine.filter((s) => s !== ours);
  const notes = new Notes();
  const claims = o.claims ?? true;
  const head = ["brief's metric", "measured as", ...peers.map((s) => s.label), ours?.label ?? "ainftp", ...extra.map((s) => s.label), "ainftp ÷ best TCP peer", ...(claims ? ["brief's claim (BRIEF.txt, not measured)"] : [])];
  const colWidths = [WIDTH.group, WIDTH.metric, ...peers.map(() => WIDTH.system), WIDTH.system, ...extra.map(() => WIDTH.system), WIDTH.ratio, ...(claims ? [WIDTH.brief_claim] : [])];
  /** The ratio cell: 16 bits' ratio, then each other width's. */
  const ratioCell = (row: MetricRow) => {
    const r = ours && ours.system !== "ainftp" ? { ...row, ratio: row.ratios?.[ours.system as AinftpSystem] ?? null } : row;
    const more = extra.map((s) => {
      const v = row.ratios?.[s.system as AinftpSystem];
      return v === null || v === undefined ? null : `${s.label.replace("ainftp ", "")}: ${v.toFixed(2)}×`;
    }).filter(Boolean);
    return [formatRatio(r), ...more].join("\n");
  };
  const t = new Table({ head, colWidths, style: { head: [], border: [] }, wordWrap: true });
  let group = "";
  const first = (g: string) => {
    const label = g === group ? "" : g;
    group = g;
    return label;
  };
  const cell = (row: MetricRow, s: SystemRun | undefined) => {
    if (!s) return "-";
    const v = row.values[s.system];
    if (v !== null && v !== undefined) return formatValue(row.id, v);
    return `n/a ${notes.mark(row.notes[s.system] ?? "n/a", s.label)}`;
  };
  for (const row of run.rows)
    t.push([first(row.group), row.metric, ...peers.map((s) => cell(row, s)), cell(row, ours), ...extra.map((s) => cell(row, s)), ratioCell(row), ...(claims ? [row.brief_claim ?? ""] : [])]);
  for (const row of machineRows) {
    const text = row.text!;
    const base = peers.length ? [{ colSpan: peers.length, content: text.baselines }] : [];
    const us = extra.length ? [{ colSpan: 1 + extra.length, content: text.ainftp }] : [text.ainftp];
    t.push([first(row.group), row.metric, ...base, ...(peers.length ? us : [`${text.baselines} / ${text.ainftp}`]), formatRatio(row), ...(claims ? [row.brief_claim ?? ""] : [])]);
  }
  t.push([{ colSpan: 2, content: "verified against the reference sum" }, ...peers.map((s) => verdict(s)), ours ? verdict(ours) : "-", ...extra.map((s) => verdict(s)), "", ...(claims ? [""] : [])]);
  const rate = run.link_rate_bps ?? null;
  const link = o.links ?? (rate === null
    ? "links unshaped — the CPU-bound lab (veth moves bytes at memory speed)"
    : `each host's link shaped to ${formatRate(rate)} both ways (tbf) — bandwidth-bound, as on 10/25 GbE`);
  let out = `${run.peers} hosts, ${formatSize(run.bytes)} of float32 per round, ${shown[0]?.rounds ?? "?"} timed rounds each; ${link}\n${t.toString()}\n`;
  for (const s of shown.filter((x) => x.shaping)) {
    const c = s.shaping!;
    const g = (b: number) => `${(b / 1e9).toFixed(3)} Gbit/s`;
    out += `shaping check, ${s.label}: peak over ${c.window_ms} ms, tx ${g(c.peak_tx_bps)}, rx ${g(c.peak_rx_bps)} per link; ` +
      `allowed ${g(c.allowed_bps)} (rate + burst ÷ window): ${c.within_rate ? "within" : "ABOVE THE LIMIT"}; ${c.qdisc_drops} packets dropped by the qdiscs\n`;
  }
  for (const s of run.systems.filter((x) => x.status === "na" && !isAinftp(x.system))) out += `${s.label}: not run — ${s.reason}\n`;
  out += notes.text();
  return out;
}

function verdict(s: SystemRun): string {
  if (s.status === "failed") return "FAILED";
  if (s.status === "na") return "n/a";
  const b = s.back_to_back;
  const b2b = !b ? "" : b.status === "failed" ? "; back to back FAILED" : b.status === "ok" ? `; back to back ${b.verified ? "yes" : "NO"}` : "";
  return (s.verified ? "yes" : "NO") + b2b;
}

/** One line per (hosts, size, link rate): each system's median round (and back to back), busbw and
 * share of line rate, and ainftp ÷ the best TCP peer. */
export function renderScaling(r: BenchResult): string {
  const systems = SYSTEM_ORDER.filter((s) => r.runs.some((x) => x.systems.some((y) => y.system === s && y.status !== "na")));
  const b2b = r.config.back_to_back;
  const shaped = r.runs.some((x) => (x.link_rate_bps ?? null) !== null);
  const name = (s: SystemName) => SYSTEM_LABEL[s];
  const t = new Table({
    head: ["hosts", "size", "link per host", ...systems.map((s) => `${name(s)}: median${b2b ? " / back to back" : ""}, busbw${shaped ? ", % of line" : ""}`), "ainftp ÷ best TCP peer (median)"],
    style: { head: [], border: [] }, wordWrap: true, colWidths: [7, 9, 12, ...systems.map(() => 22), 16],
  });
  for (const run of r.runs) {
    const row = run.rows.find((x) => x.id === "round_ms_median")!;
    const widths = (["ainftp-8", "ainftp-4"] as const).filter((a) => row.ratios?.[a] != null).map((a) => `${a.slice(7)}-bit ${row.ratios![a]!.toFixed(2)}×`);
    const ratio = (row.ratio === null ? "-" : `${row.ratio.toFixed(2)}× (vs ${row.best_peer})`) + (widths.length ? `; ${widths.join(", ")}` : "");
    const cell = (sys: SystemName) => {
      const s = run.systems.find((x) => x.system === sys);
      if (!s || s.metrics.round_ms_median === null) return s?.status === "failed" ? "FAILED" : s?.status === "ok" ? "not verified" : "-";
      const m = s.metrics;
      return `${formatValue("round_ms_median", m.round_ms_median)}${b2b ? ` / ${formatValue("round_ms_median", m.round_ms_median_back_to_back)}` : ""}, ` +
        `${formatValue("busbw_bytes_per_s", m.busbw_bytes_per_s)}${m.line_rate_fraction !== null ? `, ${formatValue("line_rate_fraction", m.line_rate_fraction)}` : ""}`;
    };
    t.push([run.peers, formatSize(run.bytes), formatRate(run.link_rate_bps ?? null), ...systems.map(cell), ratio]);
  }
  return `Every regime: median round time (slowest rank)${b2b ? " / back to back (no barrier)" : ""}, busbw${shaped ? ", wire bytes ÷ (rate × median round)" : ""}\n${t.toString()}\n`;
}

export function renderBench(r: BenchResult): string {
  const m = r.machine;
  const share = m.cores / Math.max(...r.config.peers);
  const half = share === 0.5 ? "half" : share.toFixed(2);
  const cluster = clusterText(r);
  let out = cluster ? cluster.header :
    `ainftp bench, ${r.date} — ${m.cpu_model}, ${m.cores} cores${m.virtualization ? ` (${m.virtualization})` : ""}, kernel ${m.kernel}, ` +
    `load ${m.loadavg_1m.toFixed(2)} at start; MTU ${m.mtu}, XDP ${m.xdp_mode}, ${r.config.chunk_elems} int16 values per ainftp packet\n` +
    `hosts: ${m.links}\n` +
    `regimes: ${r.config.link_rates.map((x) => (x === null ? `unshaped (the CPU-bound lab: every host has about ${half} of a core, veth copies at memory speed)` : `${formatRate(x)} per host (bandwidth-bound, as on 10/25 GbE)`)).join("; ")}\n\n`;
  for (const run of r.runs) out += renderRun(run, r.machine_rows, { links: cluster?.links }) + "\n";
  if (r.runs.length > 1) out += renderScaling(r) + "\n";
  if (cluster) return out + cluster.footer;
  out += `every figure above was measured in this run (${r.duration_s} s); timings on a shared ${m.cores}-core machine are noisy, and every host shares its CPUs\n`;
  return out;
}

// ---- charts and the report -------------------------------------------------------------------

const SYSTEM_LABEL: Record<SystemName, string> = { ainftp: "ainftp", "ainftp-8": "ainftp 8-bit", "ainftp-4": "ainftp 4-bit", tcp: "tcp ring", gloo: "Gloo", mpi: "Open MPI" };

/** Chart rows: round time per system and regime against size, host count, or (at one size) link rate in Gbit/s. */
export function chartRows(r: BenchResult, by: "size" | "peers" | "rate", atBytes?: number): ChartRow[] {
  const rates = new Set(r.runs.map((x) => x.link_rate_bps ?? null));
  const several = by === "size" ? new Set(r.runs.map((x) => x.peers)).size > 1 : by === "peers" ? new Set(r.runs.map((x) => x.bytes)).size > 1 : new Set(r.runs.map((x) => x.peers)).size > 1;
  const rows: ChartRow[] = [];
  for (const system of [...AINFTP_SYSTEMS, ...BASELINES] as SystemName[])
    for (const run of r.runs) {
      const rate = run.link_rate_bps ?? null;
      if (by === "rate" && (rate === null || run.bytes !== atBytes)) continue;
      const s = run.systems.find((x) => x.system === system);
      if (!s || s.metrics.round_ms_median === null) continue;
      const tags = [
        ...(several ? [by === "peers" ? formatSize(run.bytes) : `${run.peers} hosts`] : []),
        ...(by !== "rate" && rates.size > 1 ? [formatRate(rate)] : []),
      ];
      rows.push({
        system: tags.length ? `${SYSTEM_LABEL[system]} (${tags.join(", ")})` : SYSTEM_LABEL[system],
        x: by === "size" ? run.bytes / 2 ** 20 : by === "peers" ? run.peers : rate! / 1e9,
        ms: s.metrics.round_ms_median,
      });
    }
  return rows;
}

/** The size the rate chart is drawn at: 16 MiB when the run has it, else the largest. */
export function rateChartBytes(r: BenchResult): number {
  const sizes = r.config.sizes;
  return sizes.includes(16 << 20) ? 16 << 20 : Math.max(...sizes);
}

/** Writes table.txt, bench.json and the charts into dir; returns the paths. Every chart is on log-log axes. */
export async function writeReport(dir: string, r: BenchResult, table: string): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const files = [join(dir, "table.txt"), join(dir, "bench.json")];
  writeFileSync(files[0], table);
  writeFileSync(files[1], JSON.stringify(r, null, 2) + "\n");
  const atBytes = rateChartBytes(r);
  const charts: [string, "size" | "peers" | "rate", string, string][] = [
    ["round-time-vs-size", "size", "gradient size (MiB, log)", `all-reduce round time (median, slowest rank) by size, MTU ${r.config.mtu}`],
  ];
  if (new Set(r.runs.map((x) => x.peers)).size > 1) charts.push(["round-time-vs-peers", "peers", "hosts (log)", `all-reduce round time (median, slowest rank) by hosts, MTU ${r.config.mtu}`]);
  if (new Set(r.runs.filter((x) => x.bytes === atBytes).map((x) => x.link_rate_bps ?? null).filter((x) => x !== null)).size > 1)
    charts.push(["round-time-vs-rate", "rate", "link rate per host (Gbit/s, log; tbf both ways)", `all-reduce round time at ${formatSize(atBytes)} by link rate, MTU ${r.config.mtu}`]);
  for (const [name, by, xLabel, title] of charts) {
    const rows = chartRows(r, by, atBytes);
    if (!rows.length) continue;
    const o = { title, xLabel, yLabel: "round time (ms, log)", logX: true, logY: true };
    const svg = join(dir, `${name}.svg`);
    writeFileSync(svg, await renderChart(rows, o));
    writeFileSync(join(dir, `${name}.vl.json`), JSON.stringify(chartSpec(rows, o), null, 2) + "\n");
    files.push(svg);
  }
  return files;
}

// ---- progress -----------------------------------------------------------------------------------

/** A progress bar on a terminal (redrawn on stderr), plain lines otherwise. */
export function progressPrinter(io: IO, tty: boolean) {
  let current: { index: number; total: number; label: string; t0: number } | null = null;
  let timer: ReturnType<typeof setInterval> | null = null;
  const bar = () => {
    if (!current || !tty) return;
    const width = 24;
    const done = Math.round(((current.index - 1) / current.total) * width);
    const s = ((performance.now() - current.t0) / 1000).toFixed(0);
    io.err(`\r\x1b[2K[${"#".repeat(done)}${"-".repeat(width - done)}] ${current.index}/${current.total} ${current.label} ${s} s`);
  };
  const clear = () => tty && io.err("\r\x1b[2K");
  return {
    onProgress(e: ProgressEvent): void {
      if (e.kind === "log") {
        clear();
        io.err(`  ${e.line}\n`);
        bar();
      } else if (e.kind === "step") {
        current = { index: e.index, total: e.total, label: e.label, t0: performance.now() };
        if (tty) {
          bar();
          timer ??= setInterval(bar, 500);
        } else io.err(`[${e.index}/${e.total}] ${e.label}\n`);
      } else {
        clear();
        io.err(`${tty ? `[${e.index}/${e.total}] ${e.label}: ` : "  → "}${e.summary}\n`);
        current = null;
      }
    },
    stop(): void {
      if (timer) clearInterval(timer);
      timer = null;
      clear();
    },
  };
}

// ---- the commands -------------------------------------------------------------------------------

/** The hidden node commands the bench starts inside each host. */
function nodeCommand(io: IO): Command {
  const node = new Command("node").description("(internal) a rank the bench starts in each host");
  node.addCommand(
    new Command("tcp")
      .description("one rank of the built-in TCP ring all-reduce: ainftp bench node tcp -- --peers A,B --rank R --size S --rounds N [--json]")
      .allowUnknownOption()
      .allowExcessArguments()
      .helpOption(false)
      .argument("[args...]", "the arguments of bench/tcp-node.ts, after --")
      .action((args: string[]) => {
        const o = parseTcpNodeArgs(args);
        const r = runTcpRing(o);
        io.out(o.json ? `${JSON.stringify(r)}\n` : `tcp-ring rank ${r.rank}/${r.peers}: median ${r.round_ms.median.toFixed(2)} ms, verified ${r.verified}\n`);
        if (!r.verified) throw new ExitCode(3);
      }),
  );
  node.addCommand(
    new Command("delay-line")
      .description("delay what one host sends: ainftp bench node delay-line -- --from p0 --to dl0a --delay 600 [--stats FILE] [--parent PID]")
      .allowUnknownOption()
      .allowExcessArguments()
      .helpOption(false)
      .argument("[args...]", "the line's arguments, after --")
      .action((args: string[]) => {
        const get = (name: string) => {
          const i = args.indexOf(name);
          return i >= 0 ? args[i + 1] : undefined;
        };
        const from = get("--from");
        const to = get("--to");
        const delay = Number(get("--delay"));
        if (!from || !to || !Number.isFinite(delay) || delay < 0)
          throw new AinftpError("delay line", "--from, --to and --delay MS are required", { hint: "ainftp bench node delay-line -- --from p0 --to dl0a --delay 600" });
        const parent = get("--parent");
        runDelayLine({ from, to, delayMs: delay, statsFile: get("--stats"), parent: parent ? Number(parent) : undefined, onReady: () => io.out("ready\n") });
      }),
  );
  for (const c of slurmNodeCommands(io)) node.addCommand(c);
  return node;
}

export function benchCommand(io: IO): Command {
  const cmd = new Command("bench")
    .summary("measure ainftp against plain-TCP all-reduce (built-in ring, Gloo, Open MPI) on N namespace hosts")
    .description(
      "Build N hosts as network namespaces on a bridge (veth links, one MTU), then run on them, one after the other: ainftp swarm, " +
        "the built-in TCP ring, and Gloo and Open MPI when installed (make bench-deps). Every system's result is verified against " +
        "the reference sum before its figures count. By default in two regimes: links unshaped (the CPU-bound lab) and each host's link " +
        "shaped to 1 Gbit/s both ways with tbf (bandwidth-bound, as on 10/25 GbE). Prints the brief's metrics, algbw, busbw and the share " +
        "of line rate for each (hosts, link rate, size), writes the JSON and the charts. " +
        "Needs root. Ctrl-C removes everything it built.",
    )
    .option("--peers <n[,n…]>", "host counts (a sweep: 2,4,8)", listOf(peerCount, "host counts"), [4])
    .option("--slurm", "inside a SLURM allocation (salloc/sbatch): run on its nodes through srun, one task per node, on their own NICs (docs/bench.md)")
    .option("--iface <name>", "with --slurm: the interface between the nodes (default: the one that routes to them)")
    .option("--size <size[,size…]>", `gradient sizes per round (default ${DEFAULT_SIZES} unshaped, 16MiB shaped; a size given runs in every regime)`, listOf(sizeOf, "sizes"))
    .option("--rounds <r>", `timed rounds per system (default ${DEFAULT_ROUNDS})`, intOption(1, 100_000), DEFAULT_ROUNDS)
    .option("--warmup <r>", "untimed rounds before them, the same for every system (default: 20..1000, enough rounds to move 256 MiB, and 1 GiB for unshaped rounds of 4 MiB or less: ainftp's JIT compiles over its first ~1000 calls)", intOption(0, 1000))
    .option("--baseline <list>", "TCP peers to compare with: tcp,gloo,mpi or none (default all)", baselineList, [...BASELINES])
    .option("--mtu <m>", `link MTU (default ${DEFAULT_MTU}: jumbo frames, one ${chunkElemsForMtu(DEFAULT_MTU)}-value packet per chunk; veth takes up to ${MAX_MTU} with the frags-aware program)`, intOption(576, MAX_MTU), DEFAULT_MTU)
    .addOption(new Option("--mode <mode>", "XDP mode of the swarm").choices(["native", "generic"]).default("native"))
    .addOption(new Option("--rx <path>", "where ainftp's results arrive").choices(["map", "xsk"]).default("map"))
    .option("--json <file>", "write every number, the configuration and the machine as JSON (- for stdout)")
    .option("--report <dir>", `write table.txt, bench.json and the charts here (default ${DEFAULT_REPORT})`, DEFAULT_REPORT)
    .option("--no-report", "write no report directory")
    .option("--no-micro", "skip the machine rows' measurements (TLB, sentry cost)")
    .option("--no-straggler", "skip the straggler row (one host's link delayed 600 ms: ainftp and the TCP ring, about 35 s)")
    .option("--tlb-size <size>", "buffer of the TLB pointer chase (default 512MiB)", sizeOf)
    .option("--link-rate <rate[,rate…]>", `each host's link rate, both ways (tbf), one regime each; none = unshaped; units bit, kbit, mbit, gbit, tbit (default ${DEFAULT_LINK_RATES.map((x) => (x === null ? "none" : `${x / 1e9}gbit`)).join(",")})`, rateList)
    .option("--back-to-back", "also run every system with no barrier between rounds (as a trainer calls all-reduce), shown beside the barrier figure")
    .option("--window <n>", "ainftp's chunks in flight per owner (swarm --window; default: what the receive ring holds)", intOption(1, 4096))
    .option("--bits <b[,b…]>", "ainftp's bits per value, one system each (16 = ainftp, 8 = ainftp 8-bit, 4 = ainftp 4-bit); the TCP peers stay float32 (default 16)", bitsList)
    .option("--sweep", `sizes 64KiB…64MiB ×4 and link rates ${SWEEP_RATES} (unless --size/--link-rate given), ${SWEEP_ROUNDS} rounds (unless --rounds given); charts on log axes`)
    .option("--subnet <a.b.c>", `hosts' addresses, <subnet>.1… (10.213.x; default ${DEFAULT_SUBNET})`, DEFAULT_SUBNET)
    .addHelpText(
      "after",
      "\nExamples:\n  ainftp bench                                   # 4 hosts, 1 MiB and 16 MiB, unshaped and at 1 Gbit/s per host, every installed peer; report in ./bench-report\n" +
        "  ainftp bench --link-rate none,2.5gbit,1gbit --back-to-back --size 16MiB\n" +
        "  ainftp bench --sweep --baseline tcp --no-micro --no-straggler   # charts: round time vs size and vs link rate\n" +
        "  ainftp bench --peers 2,4,8 --size 1MiB,16MiB,100MiB --rounds 20   # the scaling sweep\n" +
        "  ainftp bench --baseline tcp --size 16MiB --json out.json\n" +
        "  salloc -N 4 ainftp bench --slurm                # on the allocation's nodes and NICs, through srun (or sbatch examples/slurm/bench-job.sh)\n",
    )
    .action(async (o) => {
      if (o.iface && !o.slurm) throw new AinftpError("bench", "--iface is for --slurm (the local bench builds its own hosts' links)", { hint: "drop --iface, or add --slurm inside an allocation" });
      const slurm = o.slurm ? slurmBenchOptions(o, (k) => cmd.getOptionValueSource(k) === "cli", listOf(sizeOf, "sizes")(DEFAULT_SIZES)) : null;
      const sizes: number[] = o.size ?? (o.sweep ? SWEEP_SIZES : listOf(sizeOf, "sizes")(DEFAULT_SIZES));
      const linkRates: (number | null)[] = o.linkRate ?? (o.sweep ? parseRates(SWEEP_RATES) : DEFAULT_LINK_RATES);
      // the default run shapes 16 MiB only: at 1 Gbit/s a 1 MiB round is mostly latency, and the run must stay short
      const shapedSizes = o.size || o.sweep ? sizes : [DEFAULT_SHAPED_SIZE];
      const rounds: number = o.sweep && cmd.getOptionValueSource("rounds") === "default" ? SWEEP_ROUNDS : o.rounds;
      const progress = progressPrinter(io, io.tty);
      const onSignal = (sig: NodeJS.Signals) => {
        progress.stop();
        io.err(`\nainftp bench: ${sig}: ${slurm ? "stopping the running step (each rank detaches on SIGTERM)" : "stopping every rank and removing the namespaces"}\n`);
        if (slurm) void abortSlurmBench().finally(() => process.exit(sig === "SIGINT" ? 130 : 143));
        else {
          abortBench();
          process.exit(sig === "SIGINT" ? 130 : 143);
        }
      };
      process.on("SIGINT", onSignal);
      process.on("SIGTERM", onSignal);
      let r: BenchResult;
      try {
        r = slurm ? await runSlurmBench({ ...slurm, onProgress: progress.onProgress }) : await runBench({
          peers: o.peers, sizes, rounds, warmup: o.warmup, baselines: o.baseline, mtu: o.mtu, mode: o.mode, rx: o.rx, subnet: o.subnet,
          micro: o.micro, straggler: o.straggler, tlbBytes: o.tlbSize, onProgress: progress.onProgress,
          linkRates, backToBack: Boolean(o.backToBack), sweep: Boolean(o.sweep), shapedSizes, bits: o.bits, window: o.window,
        });
      } finally {
        progress.stop();
        process.off("SIGINT", onSignal);
        process.off("SIGTERM", onSignal);
      }
      r.command = ["ainftp", "bench", ...process.argv.slice(process.argv.indexOf("bench") + 1)].join(" ");
      const problems = validateBenchJson(r);
      if (problems.length) throw new AinftpError("bench", `the JSON does not match its schema: ${problems.slice(0, 3).join("; ")}`, { hint: "a bug: report it" });
      const table = renderBench(r);
      if (o.json === "-") io.out(JSON.stringify(r, null, 2) + "\n");
      else {
        io.out(table);
        if (o.json) {
          writeFileSync(o.json, JSON.stringify(r, null, 2) + "\n");
          io.err(`wrote ${o.json}\n`);
        }
      }
      if (o.report !== false) {
        const files = await writeReport(o.report, r, table);
        io.err(`wrote ${files.join(", ")}\n`);
      }
      const bad: string[] = [];
      for (const run of r.runs)
        for (const s of run.systems) {
          const where = `(${s.peers} hosts, ${formatSize(s.bytes)}, ${formatRate(run.link_rate_bps ?? null)})`;
          if (s.status === "failed" || (s.status === "ok" && !s.verified)) bad.push(`${s.label} ${s.status === "failed" ? "failed" : "not verified"} ${where}`);
          const b = s.back_to_back;
          if (b && (b.status === "failed" || (b.status === "ok" && !b.verified))) bad.push(`${s.label} back to back ${b.status === "failed" ? "failed" : "not verified"} ${where}`);
          for (const c of [s.shaping, b?.shaping]) if (c && !c.within_rate) bad.push(`${s.label} ${where}: a link ran above its rate (peak ${Math.max(c.peak_tx_bps, c.peak_rx_bps)} bit/s > ${c.allowed_bps})`);
        }
      if (bad.length) {
        io.err(`ainftp bench: ${bad.join("; ")}\n`);
        throw new ExitCode(1);
      }
    });
  cmd.addCommand(nodeCommand(io), { hidden: true });
  return cmd;
}

/** --bits 16,8,4: each a width ainftp sums, once each. */
function bitsList(v: string): (16 | 8 | 4)[] {
  const out: (16 | 8 | 4)[] = [];
  for (const part of v.split(",")) {
    const b = Number(part.trim());
    if (b !== 16 && b !== 8 && b !== 4) throw new InvalidArgumentError(`--bits ${part} is not a width ainftp sums: use 16, 8 or 4 (comma-separated)`);
    if (!out.includes(b)) out.push(b);
  }
  return out;
}
