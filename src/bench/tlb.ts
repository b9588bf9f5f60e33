// The TLB row of `ainftp bench`: what 2 MB arena pages save against 4 KB
// pages, measured without a PMU by the method of bench/arena.ts: a random
// pointer chase over every cache line of a buffer far larger than the caches
// and than the 4 KB TLB reach, so both kinds miss the caches alike and the
// difference is the page walks that 4 KB pages need. Where `perf stat -e
// dTLB-load-misses` counts, its figure is added; where it does not, why.
import { chasePrepare, chaseRun, mmapAnon, munmap } from "../../native/arena.ts";
import { kernelPageSizeOf } from "../arena.ts";
import { AinftpError } from "../errors.ts";
import { HUGE_PAGE_SIZE, hugePagePool, hugePagesFor, reserve, type HugePageReservation } from "../hugepages.ts";

export interface TlbOptions {
  /** Buffer per page kind; rounded up to 2 MB. Default 512 MiB. */
  bytes?: number;
  /** Dependent loads per timed chase; default 2,000,000. */
  steps?: number;
  /** Interleaved timed chases per kind; default 3. */
  runs?: number;
  /** Default dTLB-load-misses. */
  perfEvent?: string;
}

export interface TlbResult {
  method: string;
  bytes: number;
  steps: number;
  runs: number;
  /** Median ns per access, and every run's. */
  ns_per_access_4k: number | null;
  ns_per_access_2m: number | null;
  runs_4k: number[];
  runs_2m: number[];
  /** 4 KB ÷ 2 MB latency; null when 2 MB pages could not be had. */
  ratio: number | null;
  /** KernelPageSize of each chased mapping (/proc/self/smaps), to show the pages were what they claim. */
  kernel_page_size_4k: number | null;
  kernel_page_size_2m: number | null;
  /** perf's count of the event per access over the first timed chase of each kind, where perf counts it. */
  perf_per_access_4k: number | null;
  perf_per_access_2m: number | null;
  /** 2 MB pages added to nr_hugepages for the run (and given back). */
  hugepages_reserved: number;
  /** Why the 2 MB side was not measured, or null. */
  skipped_2m: string | null;
  perf: { event: string; supported: boolean; why: string | null };
}

export const TLB_METHOD = "random pointer chase over every 64-byte line of the buffer, ns per dependent access (no PMU needed)";

/** null when `perf stat -e event` counts on this machine, otherwise why not. */
export function perfUnsupported(event: string): string | null {
  let r;
  try {
    r = Bun.spawnSync(["perf", "stat", "-x,", "-e", event, "true"], { stdout: "ignore", stderr: "pipe" });
  } catch {
    return "perf is not installed (apt-get install linux-perf)";
  }
  return parsePerfProbe(r.exitCode ?? -1, r.stderr.toString(), event);
}

/** The verdict on `perf stat -x, -e EVENT true`'s exit code and stderr (pure, for tests). */
export function parsePerfProbe(code: number, stderr: string, event: string): string | null {
  const out = stderr.trim();
  if (code !== 0) return `perf stat -e ${event} exited ${code}: ${out.split("\n").pop() ?? ""}`;
  // perf exits 0 even when the event does not exist: read the value field
  const line = out.split("\n").find((l) => l.split(",")[2]?.startsWith(event)) ?? "";
  const value = line.split(",")[0];
  if (value === "<not supported>") return `perf reports ${event} <not supported> in this VM (no PMU)`;
  if (!/^\d+(\.\d+)?$/.test(value)) return `perf stat -e ${event} says ${value || "nothing"}`;
  return null;
}

function median(xs: number[]): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

function map(bytes: number, huge: boolean): number {
  const m = mmapAnon(bytes, huge, true);
  if (typeof m === "number") throw new AinftpError("tlb bench", `mmap of ${bytes} bytes on ${huge ? "2 MB" : "4 KB"} pages failed`, { errno: -m });
  return m.addr;
}

/** Counts `event` in this process while fn runs (perf attached by pid). */
export async function perfCount(event: string, fn: () => void): Promise<number | null> {
  const perf = Bun.spawn(["perf", "stat", "-x,", "-e", event, "-p", String(process.pid)], { stdout: "ignore", stderr: "pipe" });
  await Bun.sleep(300); // let it attach
  fn();
  perf.kill("SIGINT");
  await perf.exited;
  const line = (await new Response(perf.stderr).text()).split("\n").find((l) => l.split(",")[2]?.startsWith(event)) ?? "";
  const v = Number(line.split(",")[0]);
  return Number.isFinite(v) && line ? v : null;
}

/** Runs the chase on 4 KB and on 2 MB pages (reserving the 2 MB pages for the run). */
export async function measureTlb(o: TlbOptions = {}): Promise<TlbResult> {
  const bytes = Math.ceil((o.bytes ?? 512 * 2 ** 20) / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
  const steps = o.steps ?? 2_000_000;
  const runs = o.runs ?? 3;
  const event = o.perfEvent ?? "dTLB-load-misses";
  const why = perfUnsupported(event);
  const pool = hugePagePool();
  if (pool.memAvailable < 2 * bytes + 256 * 2 ** 20)
    throw new AinftpError("tlb bench", `needs ${2 * bytes} bytes of memory, ${pool.memAvailable} available`, { hint: "use a smaller --tlb-size" });
  let reservation: HugePageReservation | undefined;
  let skipped: string | null = null;
  try {
    reservation = reserve(hugePagesFor(bytes));
  } catch (e) {
    skipped = e instanceof AinftpError ? e.message + (e.hint ? ` (${e.hint})` : "") : String(e);
  }
  const kinds = skipped ? [false] : [false, true];
  const addrs = new Map<boolean, number>();
  const ns = new Map<boolean, number[]>([[false, []], [true, []]]);
  const pageSize = new Map<boolean, number | null>();
  const perfPer = new Map<boolean, number | null>();
  try {
    for (const huge of kinds) {
      const a = map(bytes, huge);
      addrs.set(huge, a);
      pageSize.set(huge, kernelPageSizeOf(a));
      const n = chasePrepare(a, bytes, 0x5eed + (huge ? 1 : 0));
      if (n < 0) throw new AinftpError("tlb bench", "preparing the chase failed", { errno: -n });
    }
    // one untimed pass each (first touch of guest memory also faults on the host), then interleaved runs
    for (const huge of kinds) chaseRun(addrs.get(huge)!, Math.min(steps, 200_000));
    for (let i = 0; i < runs; i++)
      for (const huge of kinds) {
        const a = addrs.get(huge)!;
        if (i === 0 && why === null) {
          let t = 0;
          const count = await perfCount(event, () => (t = chaseRun(a, steps)));
          ns.get(huge)!.push(t);
          perfPer.set(huge, count === null ? null : count / steps);
        } else ns.get(huge)!.push(chaseRun(a, steps));
      }
  } finally {
    for (const a of addrs.values()) munmap(a, bytes);
    reservation?.release();
  }
  const small = median(ns.get(false)!);
  const big = median(ns.get(true)!);
  return {
    method: TLB_METHOD, bytes, steps, runs,
    ns_per_access_4k: small, ns_per_access_2m: big,
    runs_4k: ns.get(false)!.map((x) => +x.toFixed(2)), runs_2m: ns.get(true)!.map((x) => +x.toFixed(2)),
    ratio: small !== null && big !== null && big > 0 ? small / big : null,
    kernel_page_size_4k: pageSize.get(false) ?? null, kernel_page_size_2m: pageSize.get(true) ?? null,
    perf_per_access_4k: perfPer.get(false) ?? null, perf_per_access_2m: perfPer.get(true) ?? null,
    hugepages_reserved: reservation?.added ?? 0,
    skipped_2m: skipped,
    perf: { event, supported: why === null, why },
  };
}
