// The system's pool of 2 MB huge pages: what it holds, and raising it for a
// while. A reservation puts nr_hugepages back when released, when the process
// exits, and on SIGINT/SIGTERM, so a crashed or interrupted run does not keep
// gigabytes of memory out of everyone else's reach.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { AinftpError, privilegeHint } from "./errors.ts";
import { geteuid } from "../native/libc.ts";

export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;
const POOL_DIR = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const NR_HUGEPAGES = `${POOL_DIR}/nr_hugepages`;

export interface HugePagePool {
  /** Whether this kernel has a 2 MB hugetlb pool at all. */
  present: boolean;
  pageSize: number;
  /** Pages in the pool (nr_hugepages plus surplus pages). */
  total: number;
  /** Pages not mapped by anyone; `reserved` of them are promised to mappings. */
  free: number;
  /** Pages promised to existing mappings but not faulted in yet. */
  reserved: number;
  /** Pages beyond nr_hugepages (overcommitted, or left over after a lowering). */
  surplus: number;
  /** What nr_hugepages says (the persistent pool). */
  nrHugepages: number;
  /** Pages a new mapping can get now: free - reserved. */
  available: number;
  /** From /proc/meminfo: memory the kernel could turn into huge pages, bytes. */
  memFree: number;
  memAvailable: number;
}

function readInt(path: string): number {
  return Number.parseInt(readFileSync(path, "utf8").trim(), 10);
}

/** /proc/meminfo as bytes (kB fields scaled, counts as they are). */
export function meminfo(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync("/proc/meminfo", "utf8").split("\n")) {
    const m = /^(\w+(?:\(\w+\))?):\s+(\d+)(\s*kB)?/.exec(line);
    if (m) out[m[1]] = Number(m[2]) * (m[3] ? 1024 : 1);
  }
  return out;
}

/** The 2 MB pool now. */
export function hugePagePool(): HugePagePool {
  const mi = meminfo();
  const mem = { memFree: mi.MemFree ?? 0, memAvailable: mi.MemAvailable ?? 0 };
  if (!existsSync(POOL_DIR))
    return { present: false, pageSize: HUGE_PAGE_SIZE, total: 0, free: 0, reserved: 0, surplus: 0, nrHugepages: 0, available: 0, ...mem };
  const nr = readInt(NR_HUGEPAGES);
  const free = readInt(`${POOL_DIR}/free_hugepages`);
  const reserved = readInt(`${POOL_DIR}/resv_hugepages`);
  const surplus = readInt(`${POOL_DIR}/surplus_hugepages`);
  return {
    present: true, pageSize: HUGE_PAGE_SIZE, total: nr + surplus, free, reserved, surplus, nrHugepages: nr,
    available: Math.max(0, free - reserved), ...mem,
  };
}

/** 2 MB pages needed to hold `bytes`. */
export function hugePagesFor(bytes: number): number {
  return Math.ceil(bytes / HUGE_PAGE_SIZE);
}

/** What to tell a user who lacks `missing` pages. */
export function reserveHint(missing: number, nrHugepages: number): string {
  return `reserve them with 'ainftp arena --reserve --size …' (given back on exit) or as root: echo ${nrHugepages + missing} > /proc/sys/vm/nr_hugepages`;
}

const fragmentedHint =
  "memory is too fragmented for that many 2 MB pages: reserve them early after boot (vm.nr_hugepages in /etc/sysctl.d, or hugepages=N on the kernel command line), " +
  "or free and compact memory first: sync; echo 3 > /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory";

export interface HugePageReservation extends Disposable {
  /** Pages added to nr_hugepages (0: the pool already had enough available). */
  readonly added: number;
  /** nr_hugepages before and after the reservation. */
  readonly before: number;
  readonly after: number;
  /** Whether release() ran (explicitly, at exit or on a signal). */
  readonly released: boolean;
  /** Lowers nr_hugepages by what was added; idempotent. Pages still mapped
   * become surplus pages and go back to the system when unmapped. */
  release(): void;
}

export interface ReserveOptions {
  /** Called once when the pages go back (by release(), at exit or on a
   * signal): the CLI says so there. `how` tells which. */
  onRelease?: (r: HugePageReservation, how: "release" | "exit" | "signal") => void;
}

const live = new Set<Reservation>();

class Reservation implements HugePageReservation {
  released = false;
  constructor(
    readonly added: number,
    readonly before: number,
    readonly after: number,
    private readonly onRelease?: ReserveOptions["onRelease"],
  ) {}

  release(how: "release" | "exit" | "signal" = "release"): void {
    if (this.released) return;
    this.released = true;
    live.delete(this);
    if (live.size === 0) uninstallHooks();
    if (this.added > 0) {
      // Take back only what we added: another reservation made since then keeps its pages.
      try {
        writeFileSync(NR_HUGEPAGES, String(Math.max(0, readInt(NR_HUGEPAGES) - this.added)));
      } catch {
        // at exit nothing can be reported; release() callers see the pool unchanged
      }
    }
    this.onRelease?.(this, how);
  }

  [Symbol.dispose](): void {
    this.release();
  }
}

// ---- exit and signal hooks ---------------------------------------------------------

const onExit = () => {
  for (const r of [...live]) r.release("exit");
};

function onSignal(signal: NodeJS.Signals): void {
  for (const r of [...live]) r.release("signal");
  // Ours was the only handler: end as the signal would have (128 + signal number).
  if (process.listenerCount(signal) === 0) process.exit(signal === "SIGINT" ? 130 : 143);
}

let hooked = false;

function installHooks(): void {
  if (hooked) return;
  hooked = true;
  process.on("exit", onExit);
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}

function uninstallHooks(): void {
  if (!hooked) return;
  hooked = false;
  process.off("exit", onExit);
  process.off("SIGINT", onSignal);
  process.off("SIGTERM", onSignal);
}

/**
 * Makes sure `pages` 2 MB pages are available (free and not promised to a
 * mapping), raising nr_hugepages by the shortfall. Needs root when it has to
 * raise it. Throws when the kernel could not find that many free 2 MB blocks
 * of memory (after putting nr_hugepages back).
 */
export function reserve(pages: number, o: ReserveOptions = {}): HugePageReservation {
  const op = `reserve ${pages} huge pages`;
  if (!Number.isSafeInteger(pages) || pages < 0) throw new AinftpError("reserve huge pages", `${pages} is not a page count`);
  const pool = hugePagePool();
  if (!pool.present)
    throw new AinftpError(op, "this kernel has no 2 MB huge page pool", {
      errno: 2,
      hint: "the kernel needs CONFIG_HUGETLBFS; without it the arena uses 4 KB pages (--hugepages auto)",
    });
  const missing = pages - pool.available;
  if (missing <= 0) return new Reservation(0, pool.nrHugepages, pool.nrHugepages, o.onRelease);
  const before = pool.nrHugepages;
  const target = before + missing;
  if (geteuid() !== 0)
    throw new AinftpError(op, `${missing} more are needed and raising nr_hugepages needs root`, {
      errno: 1,
      hint: `${privilegeHint}; or ask an administrator: echo ${target} > /proc/sys/vm/nr_hugepages`,
    });
  try {
    writeFileSync(NR_HUGEPAGES, String(target));
  } catch (e) {
    const errno = Math.abs((e as { errno?: number }).errno ?? 0);
    throw new AinftpError(op, `cannot write ${NR_HUGEPAGES}`, {
      errno,
      hint: errno === 1 || errno === 13 ? privilegeHint : undefined,
    });
  }
  // The kernel takes what it can find and says nothing: read back what it got.
  const got = readInt(NR_HUGEPAGES);
  if (got < target) {
    writeFileSync(NR_HUGEPAGES, String(before));
    const free = hugePagePool().memFree;
    throw new AinftpError(op, `the kernel could only reserve ${Math.max(0, got - before)} of ${missing} more pages (nr_hugepages ${before} → ${got} of ${target}; ${Math.floor(free / 2 ** 20)} MiB free); put back to ${before}`, {
      errno: 12,
      hint: fragmentedHint,
    });
  }
  const r = new Reservation(missing, before, got, o.onRelease);
  live.add(r);
  installHooks();
  return r;
}

/** Releases every reservation of this process (tests; the hooks do this at exit). */
export function releaseAll(): void {
  for (const r of [...live]) r.release();
}
