#!/usr/bin/env bun
// Before/after of the whole product, interleaved: two builds of ainftp each
// run their own `ainftp bench` in turn (A, B, A, B, ...), so the drift of a
// shared machine (20-40% between minutes here) lands on both alike. Prints,
// per cell (size x link rate x system), every run's median round and its
// ratio to the TCP ring measured in that same run, CPU ms per round, and the
// median of B over A; with --back-to-back, the back-to-back medians as cells of their own.
//
//   bun bench/ab.ts --a /work/wt-base/dist/ainftp --b dist/ainftp [--pairs 2]
//       [--json FILE] -- <bench arguments>
//
// Bench arguments default to the two regimes of DESIGN.md:
//   --size 1MiB,16MiB --link-rate none,1gbit --rounds 10 --baseline tcp --no-micro --no-straggler
// A build of another commit: `git worktree add /tmp/base <commit> && make -C /tmp/base build`.
import Table from "cli-table3";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";

const DEFAULT_BENCH = ["--size", "1MiB,16MiB", "--link-rate", "none,1gbit", "--rounds", "10", "--baseline", "tcp", "--no-micro", "--no-straggler"];

function usage(msg: string): never {
  console.error(`bench/ab.ts: ${msg}\nusage: bun bench/ab.ts --a BIN --b BIN [--pairs N] [--json FILE] [-- bench args]`);
  process.exit(2);
}

const argv = process.argv.slice(2);
const dd = argv.indexOf("--");
const own = dd >= 0 ? argv.slice(0, dd) : argv;
const benchArgs = dd >= 0 ? argv.slice(dd + 1) : DEFAULT_BENCH;
const opt = (name: string) => {
  const i = own.indexOf(name);
  return i >= 0 ? own[i + 1] : undefined;
};
const bins = { A: opt("--a"), B: opt("--b") };
if (!bins.A || !bins.B) usage("--a and --b name the two ainftp binaries");
for (const [k, p] of Object.entries(bins)) if (!existsSync(p!)) usage(`--${k.toLowerCase()} ${p}: no such file (build it: make build)`);
const pairs = Number(opt("--pairs") ?? 2);
if (!Number.isInteger(pairs) || pairs < 1 || pairs > 20) usage("--pairs takes 1..20");
if (benchArgs.includes("--json") || benchArgs.includes("--report")) usage("leave --json/--report to bench/ab.ts");

interface Cell { runs: { tag: "A" | "B"; pair: number; ms: number; ring: number | null; cpu: number | null; verified: boolean; load: number }[] }
const cells = new Map<string, Cell>();
const dir = mkdtempSync(join(tmpdir(), "ainftp-ab-"));

function record(tag: "A" | "B", pair: number, file: string, load: number): void {
  const j = JSON.parse(readFileSync(file, "utf8"));
  for (const run of j.runs) {
    const ring = run.systems.find((s: any) => s.system === "tcp");
    for (const s of run.systems) {
      if (!String(s.system).startsWith("ainftp") || s.round_ms?.median == null) continue;
      const rate = s.link_rate_bps ? `${s.link_rate_bps / 1e9} Gbit/s` : "unshaped";
      const key = `${s.system} · ${run.bytes >= 1 << 20 ? `${run.bytes / (1 << 20)} MiB` : `${run.bytes / 1024} KiB`} · ${rate}`;
      const ringRun = ring && ring.link_rate_bps === s.link_rate_bps ? ring : run.systems.find((x: any) => x.system === "tcp" && x.link_rate_bps === s.link_rate_bps);
      const cell = cells.get(key) ?? { runs: [] };
      cell.runs.push({ tag, pair, ms: s.round_ms.median, ring: ringRun?.round_ms?.median ?? null, cpu: s.metrics?.cpu_ms_per_round ?? null, verified: s.verified === true, load });
      cells.set(key, cell);
      // --back-to-back: the same system with no barrier between rounds, a cell of its own
      const b2b = s.back_to_back;
      if (b2b?.round_ms?.median != null) {
        const c2 = cells.get(`${key} · back to back`) ?? { runs: [] };
        c2.runs.push({ tag, pair, ms: b2b.round_ms.median, ring: ringRun?.back_to_back?.round_ms?.median ?? null, cpu: null, verified: b2b.verified === true, load });
        cells.set(`${key} · back to back`, c2);
      }
    }
  }
}

const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};

let stop = false;
process.on("SIGINT", () => { stop = true; console.error("bench/ab.ts: Ctrl-C, stopping after this run"); });
try {
  for (let p = 1; p <= pairs && !stop; p++)
    for (const tag of ["A", "B"] as const) {
      if (stop) break;
      const file = join(dir, `${tag}-${p}.json`);
      const load = loadavg()[0];
      const t0 = performance.now();
      const proc = Bun.spawnSync([resolve(bins[tag]!), "bench", ...benchArgs, "--json", file, "--no-report"], { stdout: "ignore", stderr: "pipe" });
      if (proc.exitCode !== 0) {
        console.error(`bench/ab.ts: ${tag} (pair ${p}) exited ${proc.exitCode}:\n${proc.stderr.toString().slice(-2000)}`);
        process.exit(1);
      }
      record(tag, p, file, load);
      console.error(`${tag} pair ${p}: ${((performance.now() - t0) / 1000).toFixed(0)} s, load ${load.toFixed(1)} at start`);
    }
  const table = new Table({ style: process.stdout.isTTY ? {} : { head: [], border: [] }, head: ["cell", ...Array.from({ length: pairs }, (_, i) => [`A${i + 1}`, `B${i + 1}`]).flat(), "B ÷ A (medians)", "CPU ms/round A → B"] });
  const out: Record<string, unknown> = {};
  for (const [key, c] of cells) {
    const fmt = (r: Cell["runs"][number] | undefined) => (r ? `${r.ms.toFixed(1)}${r.ring ? ` (${(r.ms / r.ring).toFixed(2)}×)` : ""}${r.verified ? "" : " UNVERIFIED"}` : "-");
    const cols = Array.from({ length: pairs }, (_, i) => [fmt(c.runs.find((r) => r.tag === "A" && r.pair === i + 1)), fmt(c.runs.find((r) => r.tag === "B" && r.pair === i + 1))]).flat();
    const a = median(c.runs.filter((r) => r.tag === "A").map((r) => r.ms));
    const b = median(c.runs.filter((r) => r.tag === "B").map((r) => r.ms));
    const ca = median(c.runs.filter((r) => r.tag === "A" && r.cpu !== null).map((r) => r.cpu!));
    const cb = median(c.runs.filter((r) => r.tag === "B" && r.cpu !== null).map((r) => r.cpu!));
    table.push([key, ...cols, (b / a).toFixed(2), Number.isNaN(ca) || Number.isNaN(cb) ? "-" : `${ca.toFixed(0)} → ${cb.toFixed(0)}`]);
    out[key] = { runs: c.runs, median_a: a, median_b: b, ratio: b / a, cpu_a: ca, cpu_b: cb };
  }
  console.log(`A = ${bins.A}\nB = ${bins.B}\nbench ${benchArgs.join(" ")}\nmedian round in ms (÷ the TCP ring of the same run); order A1 B1 A2 B2 …`);
  console.log(table.toString());
  const jf = opt("--json");
  if (jf) writeFileSync(jf, JSON.stringify({ a: bins.A, b: bins.B, bench: benchArgs, pairs, cells: out }, null, 2));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
