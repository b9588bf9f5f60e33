// What one system's run costs while it moves data. Every few milliseconds it
// reads, for the processes inside the lab's host namespaces, their threads'
// CPU time (/proc/PID/task/TID/schedstat: ns on the CPU, user and kernel
// together; Gloo moves data on threads of its own), their
// read/write payload (/proc/PID/io), their namespace's interface bytes
// (/proc/PID/net/dev: the namespace of that process, without a spawn), and
// the machine's NET_RX/NET_TX softirqs and softirq ticks. An interval is
// *active* when the lab's interfaces moved at least `activeBytes`: summing
// only those leaves out start-up (a torch import, the XDP verifier), the
// verification between rounds and idle waits, which no system should be
// charged for as networking. When the ranks mark the end of their warm-up
// (a file each in `timedDir`, named in AINFTP_BENCH_TIMED), only the
// intervals that start after every rank's mark count: the timed rounds,
// without the warm-up (a JIT still compiling, connections being set up).
// summarize() is pure, so the accounting is tested on canned samples.
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, readSync } from "node:fs";
import { USER_HZ, parseSoftirqs } from "./proc.ts";

export interface ProcSample {
  /** ns on the CPU of each of its threads (first field of /proc/PID/task/TID/schedstat), by tid. */
  threads: Record<number, number>;
  /** rchar + wchar of /proc/PID/io: bytes through read/write-family syscalls (not sendmsg/recvmsg). */
  ioBytes: number;
}

export interface NsSample {
  /** Bytes received + sent by the namespace's interface. */
  bytes: number;
  rxBytes: number;
  rxPackets: number;
  /** When the counters were read: just before and just after (performance.now()). The sample's tMs
   * is taken before the process scan, which can lag by tens of ms on a loaded machine. */
  t0Ms?: number;
  t1Ms?: number;
}

export interface WindowSample {
  tMs: number;
  /** By pid. */
  procs: Record<number, ProcSample>;
  /** By namespace label (its inode). */
  ns: Record<string, NsSample>;
  netRx: number;
  netTx: number;
  /** Softirq ticks of all CPUs (/proc/stat, USER_HZ). */
  softirqTicks: number;
  /** Context switches of all CPUs since boot (/proc/stat ctxt). */
  ctxt: number;
  /** Every rank had marked the end of its warm-up when this sample was taken (absent: no marks asked for). */
  timed?: boolean;
  /** ns on the CPU of the ksoftirqd threads, all CPUs (absent: not read). */
  ksoftirqdNs?: number;
}

export interface WindowSummary {
  /** Intervals seen, and the active ones. */
  intervals: number;
  activeIntervals: number;
  /** Wall time of all sampled intervals, and of the active ones. */
  sampledMs: number;
  activeMs: number;
  /** Totals over the active intervals. */
  cpuMs: number;
  softirqMs: number;
  /** CPU of the ksoftirqd threads: softirq work deferred out of any rank's context (the rest runs in the
   * rank that raised it and is in cpuMs: this kernel has no IRQ_TIME_ACCOUNTING). Absent: not sampled. */
  ksoftirqdMs?: number;
  netRx: number;
  netTx: number;
  ioBytes: number;
  wireBytes: number;
  rxBytes: number;
  rxPackets: number;
  /** Context switches, machine-wide. */
  ctxSwitches: number;
  /** CPU of the processes over every sampled interval (start-up after discovery included). */
  cpuMsAll: number;
  /** Longest gap between two samples: the sampler's own resolution under load. */
  maxIntervalMs: number;
  /** The sums cover the timed rounds alone (the ranks marked the end of their warm-up); false: the whole run. */
  timedOnly: boolean;
  /** Ranks that marked the end of their warm-up, counted at the end of the run (the bench sets it). */
  timedMarks?: number;
}

/**
 * Sums the active intervals of a sample series. A process counts in an
 * interval only if it is in both samples (a new one's earlier time is
 * start-up; an exited one's last slice is lost); likewise a namespace.
 * When some sample saw every rank's warm-up mark, an interval counts only
 * if it starts at or after the first such sample (timedOnly); when none of
 * those moved enough (timed rounds shorter than the sampling), the whole
 * run counts, as without marks.
 */
export function summarize(samples: WindowSample[], activeBytes: number, marks = true): WindowSummary {
  const s: WindowSummary = {
    intervals: 0, activeIntervals: 0, sampledMs: 0, activeMs: 0, cpuMs: 0, softirqMs: 0, netRx: 0, netTx: 0,
    ioBytes: 0, wireBytes: 0, rxBytes: 0, rxPackets: 0, ctxSwitches: 0, cpuMsAll: 0, maxIntervalMs: 0,
    timedOnly: marks && samples.some((x) => x.timed === true),
  };
  if (samples.length && samples.every((x) => x.ksoftirqdNs !== undefined)) s.ksoftirqdMs = 0;
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1];
    const b = samples[i];
    const dt = b.tMs - a.tMs;
    let cpuNs = 0;
    let io = 0;
    for (const [pid, p] of Object.entries(b.procs)) {
      const q = a.procs[Number(pid)];
      if (!q) continue;
      for (const [tid, ns] of Object.entries(p.threads)) {
        const before = q.threads[Number(tid)];
        if (before !== undefined) cpuNs += Math.max(0, ns - before);
      }
      io += Math.max(0, p.ioBytes - q.ioBytes);
    }
    let wire = 0;
    let rxb = 0;
    let rxp = 0;
    for (const [ns, n] of Object.entries(b.ns)) {
      const m = a.ns[ns];
      if (!m) continue;
      wire += Math.max(0, n.bytes - m.bytes);
      rxb += Math.max(0, n.rxBytes - m.rxBytes);
      rxp += Math.max(0, n.rxPackets - m.rxPackets);
    }
    s.intervals++;
    s.sampledMs += dt;
    s.cpuMsAll += cpuNs / 1e6;
    s.maxIntervalMs = Math.max(s.maxIntervalMs, dt);
    if (wire < activeBytes || (s.timedOnly && !a.timed)) continue;
    s.activeIntervals++;
    s.activeMs += dt;
    s.cpuMs += cpuNs / 1e6;
    s.softirqMs += ((b.softirqTicks - a.softirqTicks) * 1000) / USER_HZ;
    if (s.ksoftirqdMs !== undefined) s.ksoftirqdMs += Math.max(0, b.ksoftirqdNs! - a.ksoftirqdNs!) / 1e6;
    s.netRx += b.netRx - a.netRx;
    s.netTx += b.netTx - a.netTx;
    s.ioBytes += io;
    s.wireBytes += wire;
    s.rxBytes += rxb;
    s.rxPackets += rxp;
    s.ctxSwitches += b.ctxt - a.ctxt;
  }
  return s.timedOnly && s.activeIntervals === 0 ? summarize(samples, activeBytes, false) : s;
}

// ---- parsing the files ----------------------------------------------------------------

/** ns on the CPU from /proc/PID/schedstat ("<ns on cpu> <ns waiting> <slices>"). */
export function parseSchedstat(text: string): number {
  const v = Number(text.trim().split(/\s+/)[0]);
  if (!Number.isFinite(v)) throw new Error(`/proc/PID/schedstat: "${text.trim()}"`);
  return v;
}

/** rchar + wchar from /proc/PID/io. */
export function parseProcIo(text: string): number {
  let n = 0;
  for (const line of text.split("\n")) {
    const m = /^(rchar|wchar):\s*(\d+)/.exec(line);
    if (m) n += Number(m[2]);
  }
  return n;
}

/** One interface's counters from /proc/net/dev text, or null when it is not listed. */
export function parseNetDev(text: string, ifname: string): (NsSample & { txBytes: number; txPackets: number }) | null {
  for (const line of text.split("\n")) {
    const m = /^\s*([^:\s]+):\s*(.*)$/.exec(line);
    if (!m || m[1] !== ifname) continue;
    const f = m[2].trim().split(/\s+/).map(Number);
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets …
    return { rxBytes: f[0], rxPackets: f[1], txBytes: f[8], txPackets: f[9], bytes: f[0] + f[8] };
  }
  return null;
}

/** Softirq ticks of all CPUs (the "cpu" line's 7th value) and context switches (ctxt) from /proc/stat. */
export function parseStatSoftirqCtxt(text: string): { softirqTicks: number; ctxt: number } {
  const line = text.slice(0, text.indexOf("\n"));
  const f = line.trim().split(/\s+/);
  if (f[0] !== "cpu") throw new Error("/proc/stat: no cpu line first");
  const m = /^ctxt (\d+)$/m.exec(text);
  return { softirqTicks: Number(f[7]), ctxt: m ? Number(m[1]) : 0 };
}

// ---- the live sampler -------------------------------------------------------------------

export interface SamplerOptions {
  /** Inodes of the namespaces whose processes and interface to watch. */
  inodes: Iterable<number>;
  /** The interface inside each namespace. */
  ifname: string;
  /** Default 5 ms. */
  intervalMs?: number;
  /** How often to look for new processes in the namespaces; default 100 ms. */
  scanMs?: number;
  /** Where the ranks mark the end of their warm-up (a file each), and how many marks mean all. */
  timedDir?: string;
  timedCount?: number;
}

/** Processes in the given network namespaces (by /proc/PID/ns/net), this one excluded. */
export function pidsInNamespaces(inodes: Set<string>): Map<number, string> {
  const out = new Map<number, string>();
  let dirs: string[];
  try {
    dirs = readdirSync("/proc");
  } catch {
    return out;
  }
  for (const d of dirs) {
    if (d.charCodeAt(0) > 57 || Number(d) === process.pid) continue;
    try {
      const link = readlinkSync(`/proc/${d}/ns/net`);
      if (inodes.has(link)) out.set(Number(d), link);
    } catch {
      // gone, or a kernel thread
    }
  }
  return out;
}

/** /proc/PID/schedstat of each ksoftirqd/N kernel thread. */
export function ksoftirqdThreads(): string[] {
  const out: string[] = [];
  let dirs: string[] = [];
  try {
    dirs = readdirSync("/proc");
  } catch {
    return out;
  }
  for (const d of dirs) {
    if (d.charCodeAt(0) > 57) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, "latin1").startsWith("ksoftirqd/")) out.push(`/proc/${d}/schedstat`);
    } catch {
      // gone
    }
  }
  return out;
}

function threadsOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    return [];
  }
}

/**
 * /proc files kept open and re-read from offset 0 (a fresh open per read
 * costs ~4x as much, and this runs every few ms beside the ranks it measures).
 */
class ProcFiles {
  private fds = new Map<string, number>();
  private buf = Buffer.alloc(16384);

  read(path: string): string | null {
    let fd = this.fds.get(path);
    try {
      if (fd === undefined) this.fds.set(path, (fd = openSync(path, "r")));
      const n = readSync(fd, this.buf, 0, this.buf.length, 0);
      return this.buf.toString("latin1", 0, n);
    } catch {
      this.drop(path);
      return null;
    }
  }

  /** Closes every file not under one of the kept prefixes. */
  keepOnly(prefixes: string[]): void {
    for (const path of [...this.fds.keys()]) if (!prefixes.some((p) => path.startsWith(p))) this.drop(path);
  }

  drop(path: string): void {
    const fd = this.fds.get(path);
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {}
    }
    this.fds.delete(path);
  }

  closeAll(): void {
    for (const path of [...this.fds.keys()]) this.drop(path);
  }
}

/** Samples in the background until stop(); stop() returns the series. */
export class Sampler {
  private samples: WindowSample[] = [];
  private pids = new Map<number, string>();
  private tids = new Map<number, number[]>();
  private timer: ReturnType<typeof setInterval> | null = null;
  private lastScan = -Infinity;
  private files = new ProcFiles();
  private readonly inodes: Set<string>;
  private readonly scanMs: number;
  private timed = false;
  /** The ksoftirqd threads' schedstat files (found once: one per CPU, they never exit). */
  private readonly ksoftirqd = ksoftirqdThreads();

  constructor(private o: SamplerOptions) {
    this.inodes = new Set([...o.inodes].map((i) => `net:[${i}]`));
    this.scanMs = o.scanMs ?? 100;
  }

  start(): this {
    this.tick();
    this.timer = setInterval(() => this.tick(), this.o.intervalMs ?? 5);
    return this;
  }

  stop(): WindowSample[] {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.tick();
    this.files.closeAll();
    return this.samples;
  }

  private tick(): void {
    const tMs = performance.now();
    if (tMs - this.lastScan >= this.scanMs) {
      // threads are listed with the processes (a thread started since counts from the next scan)
      this.pids = pidsInNamespaces(this.inodes);
      this.tids = new Map([...this.pids.keys()].map((pid) => [pid, threadsOf(pid)]));
      this.files.keepOnly(["/proc/softirqs", "/proc/stat", ...this.ksoftirqd, ...[...this.pids.keys()].map((p) => `/proc/${p}/`)]);
      this.lastScan = tMs;
    }
    const procs: Record<number, ProcSample> = {};
    const ns: Record<string, NsSample> = {};
    for (const [pid, link] of this.pids) {
      const threads: Record<number, number> = {};
      for (const tid of this.tids.get(pid) ?? []) {
        const sched = this.files.read(`/proc/${pid}/task/${tid}/schedstat`);
        if (sched !== null) threads[tid] = parseSchedstat(sched);
      }
      if (!Object.keys(threads).length) {
        this.pids.delete(pid);
        continue;
      }
      const io = this.files.read(`/proc/${pid}/io`);
      procs[pid] = { threads, ioBytes: io === null ? 0 : parseProcIo(io) };
      if (!ns[link]) {
        const t0Ms = performance.now();
        const dev = this.files.read(`/proc/${pid}/net/dev`);
        const t1Ms = performance.now();
        const c = dev === null ? null : parseNetDev(dev, this.o.ifname);
        if (c) ns[link] = { bytes: c.bytes, rxBytes: c.rxBytes, rxPackets: c.rxPackets, t0Ms, t1Ms };
      }
    }
    const soft = parseSoftirqs(this.files.read("/proc/softirqs") ?? "");
    const sum = (x: number[] | null) => (x ? x.reduce((a, b) => a + b, 0) : 0);
    const { timedDir, timedCount } = this.o;
    if (timedDir && !this.timed) {
      try {
        this.timed = readdirSync(timedDir).length >= (timedCount ?? 1);
      } catch {
        // not made yet
      }
    }
    let kns = 0;
    for (const path of this.ksoftirqd) {
      const t = this.files.read(path);
      if (t !== null) kns += parseSchedstat(t);
    }
    this.samples.push({
      tMs, procs, ns, netRx: sum(soft.netRx), netTx: sum(soft.netTx),
      ...(this.ksoftirqd.length ? { ksoftirqdNs: kns } : {}),
      ...parseStatSoftirqCtxt(this.files.read("/proc/stat") ?? ""),
      ...(timedDir ? { timed: this.timed } : {}),
    });
  }
}
