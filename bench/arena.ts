#!/usr/bin/env bun
// The TLB effect of the arena's 2 MB pages, measured without a PMU (this VM
// has none): random-access latency by pointer chasing over every cache line
// of a --size buffer (default 1 GiB), on 4 KB pages and on 2 MB hugetlb
// pages. Each load depends on the previous one, so ns/access is the whole
// latency of a random access; the buffer is far larger than the caches, so
// both kinds miss the cache alike and the difference is the page walk that
// 4 KB pages need and 2 MB pages (512 of them: within the L2 TLB) do not.
// Also: the time to populate each mapping at mmap and to fault it in by a
// first touch (one write per 4 KB). Where `perf stat -e dTLB-load-misses`
// works, its count over the timed chase is shown; otherwise n/a and why.
//
// The 2 MB pages are reserved for the run (root) and given back at the end,
// on Ctrl-C too. A warm-up pass maps and frees each kind once, untimed: in a
// VM the first touch of guest memory also faults on the host.
import Table from "cli-table3";
import { chasePrepare, chaseRun, mmapAnon, munmap, touch } from "../native/arena.ts";
import { kernelPageSizeOf } from "../src/arena.ts";
import { AinftpError } from "../src/errors.ts";
import { HUGE_PAGE_SIZE, hugePagePool, hugePagesFor, reserve, type HugePageReservation } from "../src/hugepages.ts";
import { formatSize, parseSize } from "../src/units.ts";
import { perfCount } from "../src/bench/tlb.ts";

const args = process.argv.slice(2);
const json = args.includes("--json");
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const SIZE = Math.ceil(parseSize(opt("--size") ?? "1GiB", "--size") / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
const STEPS = Number(opt("--steps") ?? 4_000_000);
const RUNS = Number(opt("--runs") ?? 3);
const PERF_EVENT = opt("--perf-event") ?? "dTLB-load-misses";
if (!Number.isSafeInteger(STEPS) || STEPS < 1 || !Number.isSafeInteger(RUNS) || RUNS < 1) {
  console.error("bench/arena: --steps and --runs take positive integers");
  process.exit(2);
}
const LINES = SIZE / 64;
const METHOD = `random pointer chase over ${LINES} cache lines (${formatSize(SIZE)}), ns/access; no PMU here`;

type Kind = "4 KiB" | "2 MiB";

interface Row {
  pages: Kind;
  pageCount: number;
  /** KernelPageSize of the chased mapping in /proc/self/smaps. */
  kernelPageSize: number | null;
  populateMs: number[];
  touchMs: number[];
  chaseNs: number[];
  /** PERF_EVENT count per access over the first timed chase, or null. */
  perfPerAccess: number | null;
  skipped: string | null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}
const now = () => performance.now();

function map(huge: boolean, populate: boolean): number {
  const m = mmapAnon(SIZE, huge, populate);
  if (typeof m === "number") throw new AinftpError(`mmap ${formatSize(SIZE)}`, huge ? "on 2 MB pages" : "on 4 KB pages", { errno: -m });
  return m.addr;
}

// ---- perf: only where the counter exists --------------------------------------------

/** null when `perf stat -e event` counts here, else why it does not. */
function perfUnsupported(event: string): string | null {
  let r;
  try {
    r = Bun.spawnSync(["perf", "stat", "-x,", "-e", event, "true"], { stdout: "ignore", stderr: "pipe" });
  } catch {
    return "perf is not installed";
  }
  const out = r.stderr.toString().trim();
  if (r.exitCode !== 0) return `perf stat -e ${event} exited ${r.exitCode}: ${out.split("\n").pop()}`;
  // perf exits 0 even when the event does not exist: read the value field
  const line = out.split("\n").find((l) => l.split(",")[2]?.startsWith(event)) ?? "";
  const value = line.split(",")[0];
  if (value === "<not supported>") return `perf stat -e ${event} says <not supported> (no hardware counter for it: no PMU in this VM)`;
  if (!/^\d+(\.\d+)?$/.test(value)) return `perf stat -e ${event} says ${value || "nothing"}`;
  return null;
}

// ---- the run -----------------------------------------------------------------------------

const pool = hugePagePool();
if (pool.memAvailable < 2 * SIZE + 256 * 2 ** 20) {
  console.error(`bench/arena: needs ${formatSize(2 * SIZE)} of memory, ${formatSize(pool.memAvailable)} available: use a smaller --size`);
  process.exit(1);
}

let reservation: HugePageReservation | undefined;
let hugeSkipped: string | null = null;
try {
  reservation = reserve(hugePagesFor(SIZE));
} catch (e) {
  hugeSkipped = e instanceof AinftpError ? e.message + (e.hint ? ` (${e.hint})` : "") : String(e);
}
const perfWhy = perfUnsupported(PERF_EVENT);

const rows: Row[] = (["4 KiB", "2 MiB"] as Kind[]).map((pages) => ({
  pages, pageCount: SIZE / (pages === "2 MiB" ? HUGE_PAGE_SIZE : 4096), kernelPageSize: null,
  populateMs: [], touchMs: [], chaseNs: [], perfPerAccess: null, skipped: pages === "2 MiB" ? hugeSkipped : null,
}));
const active = rows.filter((r) => !r.skipped);
const isHuge = (r: Row) => r.pages === "2 MiB";
const t0 = now();
const chased = new Map<Row, number>();
try {
  for (const r of active) munmap(map(isHuge(r), true), SIZE); // warm-up, untimed
  for (let i = 0; i < RUNS; i++) {
    for (const r of active) {
      let t = now();
      const a = map(isHuge(r), true);
      r.populateMs.push(now() - t);
      munmap(a, SIZE);
      const b = map(isHuge(r), false);
      r.touchMs.push(touch(b, SIZE) / 1e6);
      munmap(b, SIZE);
    }
  }
  for (const r of active) {
    const a = map(isHuge(r), true);
    chased.set(r, a);
    r.kernelPageSize = kernelPageSizeOf(a);
    const n = chasePrepare(a, SIZE, 0x5eed + chased.size);
    if (n < 0) throw new AinftpError("chase", "prepare failed", { errno: -n });
  }
  // interleaved, so drift in the machine's load hits both kinds alike
  for (let i = 0; i < RUNS; i++) {
    for (const r of active) {
      const a = chased.get(r)!;
      if (i === 0 && !perfWhy) {
        let ns = 0;
        const count = await perfCount(PERF_EVENT, () => (ns = chaseRun(a, STEPS)));
        r.chaseNs.push(ns);
        r.perfPerAccess = count === null ? null : count / STEPS;
      } else r.chaseNs.push(chaseRun(a, STEPS));
    }
  }
} finally {
  for (const a of chased.values()) munmap(a, SIZE);
  reservation?.release();
}
const seconds = (now() - t0) / 1000;

// ---- report ------------------------------------------------------------------------------

const [small, huge] = rows;
const ratio = !huge.skipped ? median(small.chaseNs) / median(huge.chaseNs) : null;
const populateRatio = !huge.skipped ? median(small.populateMs) / median(huge.populateMs) : null;
const touchRatio = !huge.skipped ? median(small.touchMs) / median(huge.touchMs) : null;
const perfNote = perfWhy ? `n/a: ${perfWhy}` : `${PERF_EVENT} per access over the first timed chase (perf stat -p)`;

if (json) {
  console.log(JSON.stringify({
    method: METHOD, size: SIZE, cacheLines: LINES, steps: STEPS, runs: RUNS, seconds,
    latencyRatio4kTo2m: ratio, populateRatio4kTo2m: populateRatio, touchRatio4kTo2m: touchRatio,
    perf: { event: PERF_EVENT, supported: !perfWhy, why: perfWhy }, rows,
  }, null, 2));
} else {
  const fmt = (xs: number[], digits: number) =>
    xs.length === 0 ? "n/a" : xs.length === 1 ? xs[0].toFixed(digits) : `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`;
  const t = new Table({
    head: ["pages", "page count", "kernel page size", "populate ms", "first touch ms", "chase ns/access", PERF_EVENT],
    style: { head: [], border: [] },
  });
  for (const r of rows) {
    if (r.skipped) {
      t.push([r.pages, r.pageCount, { colSpan: 5, content: `skipped: ${r.skipped}` }]);
      continue;
    }
    t.push([
      r.pages, r.pageCount, r.kernelPageSize === null ? "?" : formatSize(r.kernelPageSize),
      fmt(r.populateMs, 0), fmt(r.touchMs, 0), fmt(r.chaseNs, 1),
      r.perfPerAccess === null ? "n/a" : r.perfPerAccess.toPrecision(3),
    ]);
  }
  console.log(`TLB effect, method: ${METHOD}`);
  console.log(`${STEPS} dependent loads per run, ${RUNS} interleaved runs (median, range); populate = MAP_POPULATE / MADV_POPULATE_WRITE at mmap, first touch = one write per 4 KB of an unpopulated mapping`);
  console.log(t.toString());
  if (ratio !== null)
    console.log(`4 KiB vs 2 MiB pages: random access ${ratio.toFixed(2)}× as slow; populate ${populateRatio!.toFixed(2)}× and first touch ${touchRatio!.toFixed(2)}× as long`);
  console.log(`${PERF_EVENT}: ${perfNote}`);
  if (reservation && reservation.added > 0)
    console.log(`huge pages: reserved ${reservation.added} for the run (nr_hugepages ${reservation.before} → ${reservation.after}) and gave them back`);
  console.log(`took ${seconds.toFixed(1)} s`);
}
