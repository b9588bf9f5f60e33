// Plain-TCP all-reduce peers, measured on this machine in the same run as
// whatever they are compared with: Gloo (PyTorch's torch.distributed, Debian's
// python3-torch) and Open MPI's MPI_Allreduce (openmpi-bin + libopenmpi-dev).
//
//   bun bench/baselines/run.ts --peers 4 --size 1MiB,16MiB --rounds 50 [--systems gloo,mpi] [--json FILE]
//
// N hosts are N network namespaces on a bridge (in its own namespace), host i
// at 10.214.0.(i+1)/24 on eth0; one rank runs in each, entered with
// `nsenter --net`. Every round: restore the input, barrier, time the
// all-reduce alone, verify the sum against one computed locally. A round's
// time is the slowest rank's (the all-reduce is done when every rank has the
// result); per-rank figures are kept in the JSON.
//
// Open MPI across namespaces: mpirun runs inside host 0's namespace with
// --host 10.214.0.1,...; host 0 is local to it, and the other hosts are
// "remote", so it starts their orted through plm_rsh_agent, which here is a
// generated script that maps the host address to /run/netns/<ns> and runs the
// orted command line there (nsenter --net ... sh -c, as ssh would). Each orted
// starts its rank in its own namespace; OOB and the TCP BTL are pinned to eth0.
//
// A system whose packages are missing gives a row that says which package to
// install, not a failure. Progress goes to stderr; the table (or --json) is
// the only stdout.
import Table from "cli-table3";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { canUseNetns, createLab, must, sh, type Lab } from "../lab/netns.ts";
import { formatSize, parseSize as parseBytes } from "../units.ts";
// Embedded as text, so a compiled `ainftp bench` can run the peers without this tree.
import glooSource from "./peers/gloo_allreduce.py" with { type: "text" };
import mpiSource from "./peers/mpi_allreduce.c" with { type: "text" };

export type BaselineSystem = "gloo" | "mpi";
export const SYSTEMS: readonly BaselineSystem[] = ["gloo", "mpi"];

export interface BaselineOptions {
  /** Hosts (network namespaces), one rank each; at least 2. */
  peers: number;
  /** Vector sizes in bytes (multiples of 4; float32 count = bytes / 4). */
  sizes: number[];
  /** Timed rounds per (system, size). */
  rounds: number;
  /** Untimed rounds first (connection setup, first-touch); default 3. */
  warmup?: number;
  /** No barrier before the timed rounds (as a trainer calls all-reduce); default false. */
  backToBack?: boolean;
  /** Default: all of SYSTEMS. */
  systems?: BaselineSystem[];
  /** Progress lines; default: stderr. */
  log?: (line: string) => void;
  /** Limit for one (system, size) run; default scales with size × rounds. */
  timeoutMs?: number;
  /** Python with torch for the Gloo ranks; default: $AINFTP_PYTHON, python3, /usr/bin/python3 (first that imports torch). */
  python?: string;
  /**
   * Let idle MPI ranks busy-poll (Open MPI's default on a node it does not
   * think is oversubscribed). Default false: mpi_yield_when_idle=1, which is
   * what Open MPI picks itself when it knows ranks outnumber cores, as here
   * (every namespace "host" reports one slot, so it cannot know).
   */
  mpiBusyPoll?: boolean;
  /**
   * Every MPI rank must have done its first all-reduce within this long
   * (default MPI_STARTUP_MS), else mpirun is stopped as hung at start-up: it
   * did that now and then here, silently, and then waited out the whole
   * run's limit (126 s at 1 MiB).
   */
  mpiStartupMs?: number;
  /**
   * Run on these hosts (namespaces on a bridge) instead of building a lab:
   * `ainftp bench` measures every system on one topology. The caller owns
   * the lab (and the signals): it is neither torn down nor hooked here.
   */
  lab?: BaselineLab;
}

/** Hosts of an existing lab for runBaselines (one rank each, host i on IFNAME). */
export interface BaselineLab {
  lab: Lab;
  hosts: BaselineHost[];
  /** Namespace holding the bridge; its ports are p0, p1, …. */
  bridge: string;
}

export interface RankResult {
  system: BaselineSystem;
  rank: number;
  world: number;
  bytes: number;
  rounds: number;
  round_ms: number[];
  /** Per timed round: the rank's process CPU inside its all-reduce (ms; every thread). */
  round_cpu_ms?: number[];
  median_ms: number;
  p10: number;
  p90: number;
  p99: number;
  verified: boolean;
  max_abs_err?: number;
  torch_version?: string;
  mpi_version?: string;
}

export interface BaselineResult {
  system: BaselineSystem;
  peers: number;
  bytes: number;
  rounds: number;
  warmup: number;
  /** ok: measured; na: packages missing (reason says which); failed: ran and broke (reason has the output). */
  status: "ok" | "na" | "failed";
  reason?: string;
  /** Version of the peer (torch or Open MPI) when known. */
  version?: string;
  /** Per timed round, the slowest rank's all-reduce time. */
  round_ms: number[];
  median_ms: number | null;
  p10: number | null;
  p90: number | null;
  p99: number | null;
  /** Every rank's every round matched the locally computed sum (null when not run). */
  verified: boolean | null;
  /** What each rank printed. */
  ranks: RankResult[];
  /** How the ranks were started (for the record). */
  launch?: string;
  wall_ms?: number;
  /** Bytes that entered the bridge from the hosts, per round (warm-up and barriers included). */
  wire_bytes_per_round?: number;
  /** 1-minute load average before the run: other work on the machine skews these figures. */
  loadavg?: number;
}

const HERE = join(import.meta.dir, "peers");
/** The scripts on disk: in this tree, or (compiled binary) a copy of the embedded text under $TMPDIR. */
export const GLOO_PY = onDisk(join(HERE, "gloo_allreduce.py"), glooSource);
const MPI_C = onDisk(join(HERE, "mpi_allreduce.c"), mpiSource);

function onDisk(path: string, text: string): string {
  if (existsSync(path)) return path;
  const hash = createHash("sha256").update(text).digest("hex").slice(0, 12);
  const dir = join(tmpdir(), "ainftp-baselines");
  const copy = join(dir, `${hash}-${path.split("/").pop()}`);
  if (!existsSync(copy)) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(`${copy}.${process.pid}.tmp`, text);
    renameSync(`${copy}.${process.pid}.tmp`, copy);
  }
  return copy;
}
const SUBNET = "10.214.0";
const IFNAME = "eth0";
const NS_DIR = "/run/netns";
const INSTALL_GLOO = "apt-get install -y python3-torch";
const INSTALL_MPI = "apt-get install -y openmpi-bin libopenmpi-dev";

// ---- sizes and statistics ------------------------------------------------------

/** Bytes of a size as users write them (src/units.ts), which must hold whole float32s. */
export function parseSize(s: string): number {
  const v = parseBytes(s, "--size");
  if (v % 4) throw new Error(`size ${s} = ${v} bytes: must be a multiple of 4 (float32)`);
  return v;
}

/** Linear interpolation between closest ranks (numpy's default), as the rank programs. */
export function percentile(sorted: number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

// ---- what is installed ---------------------------------------------------------

export interface Probe {
  ok: boolean;
  reason?: string;
  version?: string;
  /** gloo: the interpreter that imports torch. */
  python?: string;
}

function which(cmd: string): boolean {
  return Bun.which(cmd) !== null;
}

/** Probes by interpreter choice: a torch import takes seconds, and a bench asks once per run. */
const glooProbes = new Map<string, Probe>();

/**
 * The Python that can import torch: opts.python, $AINFTP_PYTHON, python3 on
 * PATH, then /usr/bin/python3 (Debian's python3-torch installs for the
 * system interpreter; a pyenv or venv python3 earlier on PATH does not see it).
 */
export function probeGloo(explicit?: string): Probe {
  const key = `${explicit ?? ""}|${process.env.AINFTP_PYTHON ?? ""}|${process.env.PATH ?? ""}`;
  let p = glooProbes.get(key);
  if (!p) glooProbes.set(key, (p = probeGlooOnce(explicit)));
  return p;
}

function probeGlooOnce(explicit?: string): Probe {
  const candidates = [...new Set([explicit, process.env.AINFTP_PYTHON, "python3", "/usr/bin/python3"].filter((x): x is string => !!x))];
  const tried: string[] = [];
  for (const py of candidates) {
    if (!which(py)) continue;
    const r = sh([py, "-c", "import torch, torch.distributed as d; print(torch.__version__, d.is_available() and d.is_gloo_available())"], {
      timeoutMs: 60_000,
    });
    if (r.code !== 0) {
      tried.push(`${py}: ${/No module named '?torch/.test(r.stderr) ? "no torch" : lastLine(r.stderr)}`);
      continue;
    }
    const [version, gloo] = r.stdout.trim().split(/\s+/);
    if (gloo !== "True") return { ok: false, version, reason: `torch ${version} (${py}) was built without Gloo (torch.distributed.is_gloo_available() is False)` };
    const deb = sh(["dpkg-query", "-W", "-f", "${Version}", "python3-torch"]);
    return { ok: true, python: py, version: deb.code === 0 && deb.stdout ? `${version}, python3-torch ${deb.stdout}` : version };
  }
  if (!tried.length) return { ok: false, reason: `package python3-torch not installed (no python3): ${INSTALL_GLOO}` };
  return { ok: false, reason: `package python3-torch not installed (${tried.join("; ")}): ${INSTALL_GLOO}` };
}

export function probeMpi(): Probe {
  if (!which("mpirun")) return { ok: false, reason: `package openmpi-bin not installed (no mpirun): ${INSTALL_MPI}` };
  if (!which("mpicc")) return { ok: false, reason: `package libopenmpi-dev not installed (no mpicc): ${INSTALL_MPI}` };
  const v = sh(["mpirun", "--version"]);
  const m = /Open MPI\)?\s+([\d.]+)/i.exec(v.stdout + v.stderr);
  if (!m) return { ok: false, reason: `mpirun is not Open MPI (${lastLine(v.stdout + v.stderr)}); select it with update-alternatives --config mpirun, or ${INSTALL_MPI}` };
  return { ok: true, version: m[1] };
}

function lastLine(s: string): string {
  const lines = s.trim().split("\n");
  return lines[lines.length - 1] ?? "";
}

/** Compiles mpi_allreduce.c once per source version into $TMPDIR/ainftp-baselines/ (nothing in the tree). */
export function buildMpi(): string {
  const src = readFileSync(MPI_C);
  const hash = createHash("sha256").update(src).digest("hex").slice(0, 12);
  const dir = join(tmpdir(), "ainftp-baselines");
  const bin = join(dir, `mpi_allreduce-${hash}`);
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  const tmp = `${bin}.${process.pid}.tmp`;
  must(["mpicc", "-O2", "-Wall", "-o", tmp, MPI_C, "-lm"], { timeoutMs: 120_000 });
  renameSync(tmp, bin);
  return bin;
}

// ---- the lab ---------------------------------------------------------------------

export type BaselineHost = Host;

interface Host {
  node: string;
  ns: string;
  path: string;
  addr: string;
}

/**
 * N namespaces from the shared lab helper (so they are named, swept and torn
 * down like every other lab), joined here by a bridge in one more namespace,
 * because the helper's own bridge only hands out 10.213.x (the tests' subnet).
 */
function buildLab(peers: number): { lab: Lab; hosts: Host[]; bridge: string } {
  const nodes = Array.from({ length: peers }, (_, i) => `r${i}`);
  const lab = createLab("bl", nodes, { link: "none" });
  try {
    const br = `${lab.id}-br`;
    lab.addNamespace(br);
    must(["ip", "-n", br, "link", "add", "br0", "type", "bridge"]);
    must(["ip", "-n", br, "link", "set", "br0", "up"]);
    const hosts = nodes.map((n, i): Host => {
      const x = lab.node(n);
      const port = `p${i}`;
      must(["ip", "-n", x.name, "link", "add", IFNAME, "type", "veth", "peer", "name", port, "netns", br]);
      must(["ip", "-n", br, "link", "set", port, "master", "br0"]);
      must(["ip", "-n", br, "link", "set", port, "up"]);
      const addr = `${SUBNET}.${i + 1}`;
      must(["ip", "-n", x.name, "addr", "add", `${addr}/24`, "dev", IFNAME]);
      must(["ip", "-n", x.name, "link", "set", IFNAME, "up"]);
      return { node: n, ns: x.name, path: x.path, addr };
    });
    return { lab, hosts, bridge: br };
  } catch (e) {
    destroyLab(lab);
    throw e;
  }
}

/** Bytes received by the bridge from the hosts so far (sum over its ports). */
function bridgeRxBytes(bridge: string): number {
  const links = JSON.parse(must(["ip", "-n", bridge, "-s", "-j", "link", "show"])) as { ifname: string; stats64?: { rx: { bytes: number } } }[];
  return links.filter((l) => /^p\d+$/.test(l.ifname)).reduce((a, l) => a + (l.stats64?.rx.bytes ?? 0), 0);
}

function loadavg(): number {
  try {
    return Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
  } catch {
    return NaN;
  }
}

/**
 * Kills (by pid) every process still inside one of the lab's namespaces: all
 * of them were started by this run (orted and ranks that mpirun did not reap,
 * Python ranks), and a namespace lives on while a process is in it.
 */
function killNamespaceProcs(lab: Lab): number {
  const inos = new Set([...lab.inos].map((i) => `net:[${i}]`));
  let killed = 0;
  for (let pass = 0; pass < 5; pass++) {
    let found = 0;
    for (const d of readdirSync("/proc")) {
      if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
      let link: string;
      try {
        link = readlinkSync(`/proc/${d}/ns/net`);
      } catch {
        continue;
      }
      if (!inos.has(link)) continue;
      found++;
      try {
        process.kill(Number(d), "SIGKILL");
        killed++;
      } catch {}
    }
    if (!found) break;
    Bun.sleepSync(50);
  }
  return killed;
}

function destroyLab(lab: Lab): void {
  killNamespaceProcs(lab);
  lab.destroy();
}

// ---- running ranks ------------------------------------------------------------------

export interface Exit {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Waits for all ranks of one system (reading their output as they go); on
 * timeout SIGTERM, then SIGKILL after 3 s. `failed` says which exit codes
 * mean a rank gave up (default: any but 0). */
export async function waitAll(
  procs: Bun.Subprocess<"pipe", "pipe", "pipe">[], timeoutMs: number, failed: (code: number) => boolean = (c) => c !== 0,
): Promise<Exit[]> {
  const outs = procs.map((p) => Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    for (const p of procs) p.kill("SIGTERM");
    setTimeout(() => procs.forEach((p) => p.kill("SIGKILL")), 3000).unref();
  }, timeoutMs);
  // One rank failing leaves the others waiting on it (up to Gloo's 60 s
  // timeout): stop them after a short grace so the error arrives now.
  for (const p of procs)
    p.exited.then((code) => {
      if (failed(code)) setTimeout(() => procs.forEach((q) => q.exitCode === null && q.kill("SIGTERM")), 2000).unref();
    });
  try {
    const codes = await Promise.all(procs.map((p) => p.exited));
    const texts = await Promise.all(outs);
    return codes.map((code, i) => ({ code, stdout: texts[i][0], stderr: texts[i][1], timedOut }));
  } finally {
    clearTimeout(timer);
  }
}

export function parseRankLines(stdout: string, system: BaselineSystem): RankResult[] {
  const out: RankResult[] = [];
  for (const line of stdout.split("\n")) {
    const t = line.trim();
    if (!t.startsWith("{")) continue;
    try {
      const j = JSON.parse(t);
      if (j.system === system && typeof j.rank === "number") out.push(j);
    } catch {}
  }
  return out.sort((a, b) => a.rank - b.rank);
}

function tail(s: string, lines = 15): string {
  return s.trim().split("\n").slice(-lines).join("\n");
}

export function summarize(base: BaselineResult, ranks: RankResult[], fail: string | null): BaselineResult {
  if (fail) return { ...base, status: "failed", reason: fail, ranks };
  const world = base.peers;
  const byRank = new Set(ranks.map((r) => r.rank));
  if (ranks.length !== world || byRank.size !== world)
    return { ...base, status: "failed", reason: `expected ${world} rank results, got ranks [${[...byRank].join(",")}]`, ranks };
  const bad = ranks.find((r) => r.round_ms.length !== base.rounds || r.world !== world || r.bytes !== base.bytes);
  if (bad) return { ...base, status: "failed", reason: `rank ${bad.rank} reported world ${bad.world}, ${bad.bytes} B, ${bad.round_ms.length} rounds`, ranks };
  const round_ms = Array.from({ length: base.rounds }, (_, k) => Math.max(...ranks.map((r) => r.round_ms[k])));
  const s = [...round_ms].sort((a, b) => a - b);
  return {
    ...base,
    status: "ok",
    round_ms,
    median_ms: percentile(s, 0.5),
    p10: percentile(s, 0.1),
    p90: percentile(s, 0.9),
    p99: percentile(s, 0.99),
    verified: ranks.every((r) => r.verified === true),
    ranks,
  };
}

function defaultTimeout(bytes: number, rounds: number, peers: number): number {
  // Generous: start-up (a torch import per rank on few cores) plus 1 s per MiB-round.
  return 60_000 + peers * 5_000 + Math.ceil((bytes / (1 << 20)) * rounds * 1000);
}

let glooPort = 29500;

async function runGloo(lab: Lab, hosts: Host[], base: BaselineResult, python: string, timeoutMs: number, backToBack: boolean): Promise<BaselineResult> {
  const port = glooPort++;
  const master = hosts[0].addr;
  const argv = (rank: number) =>
    [python, GLOO_PY, String(rank), String(hosts.length), master, String(port), String(base.bytes), String(base.rounds), String(base.warmup), IFNAME, ...(backToBack ? ["back-to-back"] : [])];
  const launch = `per host i: nsenter --net=/run/netns/<ns i> ${argv(0).join(" ").replace(GLOO_PY, "gloo_allreduce.py").replace(/ 0 /, " i ")}`;
  const procs = hosts.map((h, i) => lab.spawn(h.node, argv(i), { env: { PYTHONUNBUFFERED: "1", OMP_NUM_THREADS: "1" } }));
  const exits = await waitAll(procs, timeoutMs);
  const ranks = exits.flatMap((e) => parseRankLines(e.stdout, "gloo"));
  const failed = exits.findIndex((e) => e.code !== 0);
  const fail =
    failed < 0
      ? null
      : `rank ${failed} ${exits[failed].timedOut ? `timed out after ${timeoutMs} ms` : `exited ${exits[failed].code}`}: ${tail(exits[failed].stderr)}`;
  return summarize({ ...base, launch }, ranks, fail);
}

/** MPI ranks that have not all done their first all-reduce by now hung at start-up. */
export const MPI_STARTUP_MS = 30_000;
let mpiRuns = 0;

async function runMpi(
  lab: Lab, hosts: Host[], base: BaselineResult, bin: string, busyPoll: boolean, timeoutMs: number, backToBack: boolean, startupMs: number,
): Promise<BaselineResult> {
  // plm_rsh_agent: called as `agent HOST CMD...` like ssh; runs CMD in HOST's namespace.
  const agent = join(lab.tmp, "nsagent.sh");
  const cases = hosts.map((h) => `  ${h.addr}) ns=${join(NS_DIR, h.ns)} ;;`).join("\n");
  writeFileSync(
    agent,
    `#!/bin/sh
# Generated by src/bench/baselines.ts: Open MPI's plm_rsh_agent for namespace hosts.
host="$1"; shift
case "$host" in
${cases}
  *) echo "nsagent: unknown host $host" >&2; exit 1 ;;
esac
exec nsenter --net="$ns" /bin/sh -c "$*"
`,
  );
  chmodSync(agent, 0o755);
  const mca = [
    ["plm_rsh_agent", agent],
    ["plm_rsh_no_tree_spawn", "1"], // mpirun starts every orted itself
    ["pml", "ob1"], // not UCX: plain TCP through the BTL, like Gloo
    ["btl", "tcp,self"],
    ["btl_tcp_if_include", IFNAME],
    ["oob_tcp_if_include", IFNAME],
    ["mpi_yield_when_idle", busyPoll ? "0" : "1"],
  ];
  const cmd = [
    "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
    "-np", String(hosts.length), "--host", hosts.map((h) => h.addr).join(","),
    ...mca.flatMap(([k, v]) => ["--mca", k, v]),
    bin, String(base.bytes), String(base.rounds), String(base.warmup), ...(backToBack ? ["back-to-back"] : []),
  ];
  const launch = `nsenter --net=/run/netns/<ns 0> ${cmd.join(" ").replace(agent, "<nsagent.sh>").replace(bin, "mpi_allreduce")}`;
  // each rank marks its first all-reduce done (mpi_allreduce.c mark_started)
  const started = join(lab.tmp, `mpi-started-${++mpiRuns}`);
  mkdirSync(started, { recursive: true });
  const p = lab.spawn(hosts[0].node, cmd, {
    env: {
      OMPI_ALLOW_RUN_AS_ROOT: "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1", OMPI_MCA_btl_base_warn_component_unused: "0",
      AINFTP_BENCH_STARTED: started,
    },
  });
  let hung: number | null = null; // ranks started when mpirun was stopped as hung
  const t0 = performance.now();
  const watch = setInterval(() => {
    const n = readdirSync(started).length;
    if (n >= hosts.length) return clearInterval(watch);
    if (performance.now() - t0 < startupMs) return;
    clearInterval(watch);
    hung = n;
    p.kill("SIGKILL");
  }, 250);
  const [e] = await waitAll([p], timeoutMs).finally(() => clearInterval(watch));
  // Whatever mpirun left behind (an orted it could not reach) goes now, not at the end.
  killNamespaceProcs(lab);
  const ranks = parseRankLines(e.stdout, "mpi");
  const said = tail(e.stderr + e.stdout) || "(no output)";
  const fail = e.code === 0 ? null
    : hung !== null ? `mpirun timed out at start-up: ${hung} of ${hosts.length} ranks had done their first all-reduce after ${Math.round(startupMs / 1000)} s: ${said}`
    : `mpirun ${e.timedOut ? `timed out after ${timeoutMs} ms` : `exited ${e.code}`}: ${said}`;
  return summarize({ ...base, launch }, ranks, fail);
}

/**
 * Measures the peers: for each system, each size, one fresh set of ranks
 * (one per namespace) doing warmup + rounds all-reduces. Creates and always
 * removes its own namespaces (also on SIGINT/SIGTERM, which then exit).
 */
export async function runBaselines(opts: BaselineOptions): Promise<BaselineResult[]> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const systems = opts.systems ?? [...SYSTEMS];
  const warmup = opts.warmup ?? 3;
  if (!Number.isInteger(opts.peers) || opts.peers < 2 || opts.peers > 64) throw new Error(`peers must be 2..64, not ${opts.peers}`);
  if (!Number.isInteger(opts.rounds) || opts.rounds < 1 || opts.rounds > 100_000) throw new Error(`rounds must be 1..100000, not ${opts.rounds}`);
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error(`warmup must be >= 0, not ${warmup}`);
  if (!opts.sizes.length) throw new Error("no sizes");
  for (const b of opts.sizes) if (!Number.isInteger(b) || b <= 0 || b % 4) throw new Error(`size ${b}: must be a positive multiple of 4`);
  for (const s of systems) if (!SYSTEMS.includes(s)) throw new Error(`unknown system ${s} (known: ${SYSTEMS.join(", ")})`);

  const blank = (system: BaselineSystem, bytes: number): BaselineResult => ({
    system, peers: opts.peers, bytes, rounds: opts.rounds, warmup, status: "ok",
    round_ms: [], median_ms: null, p10: null, p90: null, p99: null, verified: null, ranks: [],
  });

  const probes = new Map<BaselineSystem, Probe>();
  for (const s of systems) {
    const p = s === "gloo" ? probeGloo(opts.python) : probeMpi();
    log(p.ok ? `${s}: ${s === "gloo" ? `torch ${p.version} (${p.python})` : `Open MPI ${p.version}`}` : `${s}: n/a — ${p.reason}`);
    probes.set(s, p);
  }
  let mpiBin: string | null = null;
  if (probes.get("mpi")?.ok) {
    try {
      mpiBin = buildMpi();
      log(`mpi: built ${mpiBin}`);
    } catch (e) {
      probes.set("mpi", { ok: false, version: probes.get("mpi")!.version, reason: `mpicc failed: ${tail(String(e), 8)}` });
    }
  }

  const results: BaselineResult[] = [];
  const runnable = systems.filter((s) => probes.get(s)!.ok);
  for (const s of systems) {
    const p = probes.get(s)!;
    if (p.ok) continue;
    const failedBuild = s === "mpi" && p.reason?.startsWith("mpicc failed");
    for (const b of opts.sizes) results.push({ ...blank(s, b), status: failedBuild ? "failed" : "na", reason: p.reason, version: p.version });
  }
  if (!runnable.length) return order(results, systems, opts.sizes);
  if (!canUseNetns()) throw new Error("the baselines need root and network namespaces (ip netns, nsenter)");

  const own = !opts.lab;
  if (opts.lab && opts.lab.hosts.length !== opts.peers) throw new Error(`the lab has ${opts.lab.hosts.length} hosts, not ${opts.peers}`);
  const { lab, hosts, bridge } = opts.lab ?? buildLab(opts.peers);
  if (own) log(`lab: ${hosts.length} namespaces on a bridge, ${hosts.map((h) => h.addr).join(" ")} (${IFNAME})`);
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: removing the namespaces`);
    destroyLab(lab);
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  if (own) {
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  }
  try {
    for (const s of runnable) {
      for (const bytes of opts.sizes) {
        const base = { ...blank(s, bytes), version: probes.get(s)!.version };
        const timeoutMs = opts.timeoutMs ?? defaultTimeout(bytes, opts.rounds + warmup, opts.peers);
        log(`${s} ${formatSize(bytes)}: ${opts.peers} ranks × ${warmup}+${opts.rounds} rounds…`);
        const load = loadavg();
        const rx0 = bridgeRxBytes(bridge);
        const t0 = performance.now();
        let r =
          s === "gloo"
            ? await runGloo(lab, hosts, base, probes.get(s)!.python!, timeoutMs, opts.backToBack ?? false)
            : await runMpi(lab, hosts, base, mpiBin!, opts.mpiBusyPoll ?? false, timeoutMs, opts.backToBack ?? false, opts.mpiStartupMs ?? MPI_STARTUP_MS);
        r.wall_ms = Math.round(performance.now() - t0);
        r.loadavg = load;
        r.wire_bytes_per_round = Math.round((bridgeRxBytes(bridge) - rx0) / (opts.rounds + warmup));
        // Any all-reduce of S bytes over 2+ hosts moves at least S bytes between them
        // per round; less means the ranks found a path around the bridge.
        if (r.status === "ok" && r.wire_bytes_per_round < bytes)
          r = { ...r, status: "failed", reason: `only ${r.wire_bytes_per_round} B/round crossed the bridge for ${bytes} B: the ranks did not talk over ${IFNAME}` };
        log(
          r.status === "ok"
            ? `${s} ${formatSize(bytes)}: median ${r.median_ms!.toFixed(2)} ms, verified ${r.verified}, ` +
                `${(r.wire_bytes_per_round! / 2 ** 20).toFixed(1)} MiB/round on the bridge (${(r.wall_ms! / 1000).toFixed(1)} s, load ${load})`
            : `${s} ${formatSize(bytes)}: FAILED — ${r.reason}`,
        );
        results.push(r);
      }
    }
  } finally {
    if (own) {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      destroyLab(lab);
    }
  }
  return order(results, systems, opts.sizes);
}

function order(rs: BaselineResult[], systems: BaselineSystem[], sizes: number[]): BaselineResult[] {
  const key = (r: BaselineResult) => systems.indexOf(r.system) * sizes.length + sizes.indexOf(r.bytes);
  return [...rs].sort((a, b) => key(a) - key(b));
}

// ---- rendering and the command line -------------------------------------------------

/** One n/a or failure text for a row, e.g. "n/a (package python3-torch not installed: apt-get install -y python3-torch)". */
export function rowNote(r: BaselineResult): string {
  if (r.status === "na") return `n/a (${r.reason})`;
  const why = (r.reason ?? "").replace(/\s+/g, " ").trim();
  return `FAILED (${why.length > 240 ? `${why.slice(0, 240)}… (full text in --json)` : why})`;
}

export function renderTable(rs: BaselineResult[]): string {
  const t = new Table({ head: ["system", "size", "median ms", "p10", "p90", "p99", "verified"], wordWrap: true });
  const ms = (v: number | null) => (v === null ? "" : v.toFixed(2));
  for (const r of rs) {
    const sys = r.version ? `${r.system} (${r.system === "gloo" ? "torch" : "Open MPI"} ${r.version})` : r.system;
    if (r.status === "ok") t.push([sys, formatSize(r.bytes), ms(r.median_ms), ms(r.p10), ms(r.p90), ms(r.p99), String(r.verified)]);
    else t.push([sys, formatSize(r.bytes), { colSpan: 5, content: rowNote(r) }]);
  }
  return t.toString();
}

