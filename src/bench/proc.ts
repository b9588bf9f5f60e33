// What the bench measures besides round time, from the kernel's own
// accounting: softirqs per CPU (/proc/softirqs), CPU time by kind
// (/proc/stat), a process tree's CPU time (/proc/PID/stat), a device's
// interrupts (/proc/interrupts) and interface counters (sysfs, or
// `ip -n NS -j -s link` for a namespace, whose sysfs we cannot see). Each
// reader parses text and is pure; the read* helpers feed it the live files.
// sample() takes a snapshot, delta(a, b) what happened between two.
import { existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { basename, join } from "node:path";

/** Clock ticks per second of /proc times (USER_HZ: 100 on every Linux ABI that exists). */
export const USER_HZ = 100;

// ---- /proc/softirqs ---------------------------------------------------------------

export interface Softirqs {
  /** CPUs in the header (CPU0 … CPUn-1), offline ones included as the kernel lists them. */
  cpus: number;
  /** Count per CPU, by row name (HI, TIMER, NET_TX, NET_RX, …). */
  counts: Record<string, number[]>;
  /** NET_RX / NET_TX per CPU; null when the kernel printed no such row. */
  netRx: number[] | null;
  netTx: number[] | null;
}

export function parseSoftirqs(text: string): Softirqs {
  const lines = text.split("\n").filter((l) => l.trim());
  if (!lines.length || !/^\s*CPU\d+/.test(lines[0])) throw new Error("/proc/softirqs: no CPU header line");
  const cpus = lines[0].trim().split(/\s+/).length;
  const counts: Record<string, number[]> = {};
  for (const line of lines.slice(1)) {
    const m = /^\s*([A-Z_]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    const v = m[2].trim().split(/\s+/).filter(Boolean).map(Number);
    counts[m[1]] = Array.from({ length: cpus }, (_, i) => v[i] ?? 0);
  }
  return { cpus, counts, netRx: counts.NET_RX ?? null, netTx: counts.NET_TX ?? null };
}

// ---- /proc/stat ---------------------------------------------------------------------

/** Jiffies (1/USER_HZ s) a CPU (or all, for the "cpu" line) spent in each state. */
export interface CpuTimes {
  user: number;
  nice: number;
  system: number;
  idle: number;
  iowait: number;
  irq: number;
  softirq: number;
  steal: number;
  /** Already counted in user / nice (the kernel adds it to both). */
  guest: number;
  guestNice: number;
}

const CPU_FIELDS = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guestNice"] as const;

export interface ProcStat {
  /** All CPUs together (the "cpu" line). */
  total: CpuTimes;
  /** "cpuN" lines, in order. */
  perCpu: CpuTimes[];
  /** Softirqs raised since boot, all kinds (the "softirq" line's first number), or null. */
  softirqs: number | null;
  /** Context switches since boot, or null. */
  ctxt: number | null;
}

function cpuTimes(fields: string[]): CpuTimes {
  const t = {} as CpuTimes;
  CPU_FIELDS.forEach((k, i) => (t[k] = Number(fields[i] ?? 0)));
  return t;
}

export function parseProcStat(text: string): ProcStat {
  let total: CpuTimes | null = null;
  const perCpu: CpuTimes[] = [];
  let softirqs: number | null = null;
  let ctxt: number | null = null;
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f[0] === "cpu") total = cpuTimes(f.slice(1));
    else if (/^cpu\d+$/.test(f[0])) perCpu[Number(f[0].slice(3))] = cpuTimes(f.slice(1));
    else if (f[0] === "softirq") softirqs = Number(f[1]);
    else if (f[0] === "ctxt") ctxt = Number(f[1]);
  }
  if (!total) throw new Error("/proc/stat: no cpu line");
  return { total, perCpu: perCpu.filter(Boolean), softirqs, ctxt };
}

/** Jiffies not idle (iowait counts as idle; guest is inside user already). */
export function busyJiffies(t: CpuTimes): number {
  return t.user + t.nice + t.system + t.irq + t.softirq + t.steal;
}

// ---- /proc/PID/stat -----------------------------------------------------------------

export interface PidStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  /** Clock ticks in user / kernel mode. */
  utime: number;
  stime: number;
  /** Of its children that have exited and been waited for. */
  cutime: number;
  cstime: number;
  /** Ticks after boot at which it started. */
  starttime: number;
}

export function parsePidStat(text: string): PidStat {
  // comm may hold spaces and parentheses: it runs to the last ')'
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 0 || close < open) throw new Error(`/proc/PID/stat: no (comm) in "${text.slice(0, 60)}"`);
  const f = text.slice(close + 1).trim().split(/\s+/); // f[0] is field 3 (state)
  if (f.length < 20) throw new Error(`/proc/PID/stat: ${f.length + 2} fields, expected at least 22`);
  const n = (field: number) => Number(f[field - 3]);
  return {
    pid: Number(text.slice(0, open).trim()), comm: text.slice(open + 1, close), state: f[0], ppid: n(4),
    utime: n(14), stime: n(15), cutime: n(16), cstime: n(17), starttime: n(22),
  };
}

/** CPU ticks of the process itself, and with its reaped children. */
export function pidCpuTicks(s: PidStat): { self: number; withReaped: number } {
  return { self: s.utime + s.stime, withReaped: s.utime + s.stime + s.cutime + s.cstime };
}

// ---- /proc/interrupts ---------------------------------------------------------------

export interface IrqRow {
  /** "24", or a named one ("LOC", "NMI", "ERR"). */
  irq: string;
  /** Per CPU (ERR and MIS have a single total, stored as one entry). */
  counts: number[];
  total: number;
  /** Everything after the counts (chip, hwirq-type, actions, or a description). */
  desc: string;
  /** Names of the handlers (device names) for a numbered IRQ; [] for named rows. */
  actions: string[];
}

export interface Interrupts {
  cpus: number;
  rows: IrqRow[];
}

export function parseInterrupts(text: string): Interrupts {
  const lines = text.split("\n").filter((l) => l.trim());
  if (!lines.length || !/^\s*CPU\d+/.test(lines[0])) throw new Error("/proc/interrupts: no CPU header line");
  const cpus = lines[0].trim().split(/\s+/).length;
  const rows: IrqRow[] = [];
  for (const line of lines.slice(1)) {
    const m = /^\s*([^:\s]+):(.*)$/.exec(line);
    if (!m) continue;
    const tok = m[2].trim().split(/\s+/).filter(Boolean);
    const counts: number[] = [];
    while (counts.length < cpus && tok.length && /^\d+$/.test(tok[0])) counts.push(Number(tok.shift()));
    const desc = tok.join(" ");
    let actions: string[] = [];
    if (/^\d+$/.test(m[1])) {
      // chip, then hwirq-type ("5-edge", "0-edge", "9-fasteoi"), then the actions, comma separated
      const rest = m[2].trim().split(/\s+/).slice(counts.length);
      const at = rest.findIndex((t) => /^\d*-?(edge|level|fasteoi|simple|none)$/i.test(t) || /^(edge|level)$/i.test(t));
      const names = (at >= 0 ? rest.slice(at + 1) : rest.slice(-1)).join(" ");
      actions = names.split(",").map((s) => s.trim()).filter(Boolean);
    }
    rows.push({ irq: m[1], counts, total: counts.reduce((a, b) => a + b, 0), desc, actions });
  }
  return { cpus, rows };
}

/**
 * The IRQs of a device: rows with an action named like one of `names`
 * exactly or as a prefix followed by -, _, :, @ or . ("eth0-TxRx-0",
 * "virtio2-input.0", "mlx5_comp0@pci:…"), plus any listed in `irqs`.
 */
export function deviceIrqs(ints: Interrupts, names: string[], irqs: number[] = []): IrqRow[] {
  const matches = (a: string) => names.some((n) => a === n || (a.startsWith(n) && /[-_:@.]/.test(a[n.length])));
  const set = new Set(irqs.map(String));
  return ints.rows.filter((r) => set.has(r.irq) || r.actions.some(matches));
}

// ---- interface counters -------------------------------------------------------------

export interface IfaceStats {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  rxDropped: number;
  txDropped: number;
  rxErrors: number;
  txErrors: number;
}

/** /sys/class/net/IF/statistics/<file> texts, by file name (rx_bytes, …). */
export function parseSysfsStats(files: Record<string, string>): IfaceStats {
  const n = (k: string) => {
    const v = files[k];
    return v === undefined ? 0 : Number(v.trim());
  };
  return {
    rxBytes: n("rx_bytes"), txBytes: n("tx_bytes"), rxPackets: n("rx_packets"), txPackets: n("tx_packets"),
    rxDropped: n("rx_dropped"), txDropped: n("tx_dropped"), rxErrors: n("rx_errors"), txErrors: n("tx_errors"),
  };
}

/** The output of `ip [-n NS] -j -s link show dev IF` (its first entry). */
export function parseIpLinkStats(json: string): IfaceStats {
  const arr = JSON.parse(json);
  const link = Array.isArray(arr) ? arr[0] : undefined;
  const s = link?.stats64 ?? link?.stats;
  if (!s?.rx || !s?.tx) throw new Error("ip -j -s link: no stats64 in the output (was -s given?)");
  return {
    rxBytes: s.rx.bytes, txBytes: s.tx.bytes, rxPackets: s.rx.packets, txPackets: s.tx.packets,
    rxDropped: s.rx.dropped ?? 0, txDropped: s.tx.dropped ?? 0, rxErrors: s.rx.errors ?? 0, txErrors: s.tx.errors ?? 0,
  };
}

// ---- live readers -------------------------------------------------------------------

export function readSoftirqs(path = "/proc/softirqs"): Softirqs {
  return parseSoftirqs(readFileSync(path, "utf8"));
}

export function readProcStat(path = "/proc/stat"): ProcStat {
  return parseProcStat(readFileSync(path, "utf8"));
}

export function readPidStat(pid: number): PidStat {
  return parsePidStat(readFileSync(`/proc/${pid}/stat`, "utf8"));
}

export function readInterrupts(path = "/proc/interrupts"): Interrupts {
  return parseInterrupts(readFileSync(path, "utf8"));
}

/** Interface counters from this process's network namespace's sysfs. */
export function readIfaceStats(ifname: string, root = "/sys/class/net"): IfaceStats {
  const dir = join(root, ifname, "statistics");
  const files: Record<string, string> = {};
  for (const f of readdirSync(dir)) files[f] = readFileSync(join(dir, f), "utf8");
  return parseSysfsStats(files);
}

/** Interface counters in another network namespace (named under /run/netns). */
export function readNsIfaceStats(ns: string, ifname: string): IfaceStats {
  const r = Bun.spawnSync(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", ifname], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`ip -n ${ns} -j -s link show dev ${ifname}: ${r.stderr.toString().trim()}`);
  return parseIpLinkStats(r.stdout.toString());
}

/** Names an interface's IRQs go by: its own, and its bus device's ("virtio2"), with the device's MSI vectors. */
export function ifaceIrqNames(ifname: string, root = "/sys/class/net"): { names: string[]; irqs: number[] } {
  const names = [ifname];
  const irqs: number[] = [];
  try {
    const dev = readlinkSync(join(root, ifname, "device"));
    names.push(basename(dev));
    for (const d of [join(root, ifname, "device", "msi_irqs"), join(root, ifname, "device", "..", "msi_irqs")])
      if (existsSync(d)) {
        for (const f of readdirSync(d)) if (/^\d+$/.test(f)) irqs.push(Number(f));
        break;
      }
  } catch {
    // a virtual interface (veth, bridge) has no device and no IRQ of its own
  }
  return { names, irqs };
}

/** Descendants of pid that are alive now (through /proc/PID/task/TID/children). */
export function liveDescendants(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number) => {
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const t of tasks) {
      let kids = "";
      try {
        kids = readFileSync(`/proc/${p}/task/${t}/children`, "utf8");
      } catch {
        continue;
      }
      for (const k of kids.trim().split(/\s+/).filter(Boolean).map(Number)) {
        out.push(k);
        walk(k);
      }
    }
  };
  walk(pid);
  return out;
}

// ---- snapshots ----------------------------------------------------------------------

export interface Sample {
  /** performance.now() at the snapshot. */
  tMs: number;
  softirqs: Softirqs;
  stat: ProcStat;
  /** CPU ticks per watched pid: itself + live descendants + their reaped children. */
  procs: Record<number, number>;
  /** Interface counters by label ("eth0", or "NS/eth0"). */
  ifaces: Record<string, IfaceStats>;
  /** Interrupts of the watched devices, summed per CPU, by device label. */
  irqs: Record<string, number[]>;
}

/** The texts a sample is made of, so it can be built from canned input. */
export interface SampleTexts {
  tMs: number;
  softirqs: string;
  stat: string;
  /** /proc/PID/stat texts per watched pid: the pid's own and its descendants'. */
  procs?: Record<number, string[]>;
  ifaces?: Record<string, IfaceStats>;
  interrupts?: string;
  /** Device label → names / IRQ numbers (see deviceIrqs). */
  devices?: Record<string, { names: string[]; irqs?: number[] }>;
}

export function sampleFrom(t: SampleTexts): Sample {
  const procs: Record<number, number> = {};
  for (const [pid, texts] of Object.entries(t.procs ?? {}))
    procs[Number(pid)] = texts.reduce((a, x) => a + pidCpuTicks(parsePidStat(x)).withReaped, 0);
  const irqs: Record<string, number[]> = {};
  if (t.interrupts && t.devices) {
    const ints = parseInterrupts(t.interrupts);
    for (const [label, d] of Object.entries(t.devices)) {
      const per = new Array(ints.cpus).fill(0);
      for (const r of deviceIrqs(ints, d.names, d.irqs)) r.counts.forEach((c, i) => (per[i] += c));
      irqs[label] = per;
    }
  }
  return { tMs: t.tMs, softirqs: parseSoftirqs(t.softirqs), stat: parseProcStat(t.stat), procs, ifaces: { ...(t.ifaces ?? {}) }, irqs };
}

export interface SampleOptions {
  /** Processes whose CPU time (with their descendants) to record. */
  pids?: number[];
  /** Interfaces: a name in this namespace, or { ns, name } for one under /run/netns. */
  ifaces?: (string | { ns: string; name: string })[];
  /** Devices whose IRQs to count: interface names here (their IRQ names are looked up). */
  irqDevices?: string[];
}

/** A snapshot of the live counters. */
export function sample(o: SampleOptions = {}): Sample {
  const procs: Record<number, string[]> = {};
  for (const pid of o.pids ?? []) {
    const texts: string[] = [];
    for (const p of [pid, ...liveDescendants(pid)]) {
      try {
        texts.push(readFileSync(`/proc/${p}/stat`, "utf8"));
      } catch {
        // exited between the listing and the read: its time moves to its parent's cutime once reaped
      }
    }
    procs[pid] = texts;
  }
  const ifaces: Record<string, IfaceStats> = {};
  for (const i of o.ifaces ?? []) {
    if (typeof i === "string") ifaces[i] = readIfaceStats(i);
    else ifaces[`${i.ns}/${i.name}`] = readNsIfaceStats(i.ns, i.name);
  }
  const devices: Record<string, { names: string[]; irqs: number[] }> = {};
  for (const d of o.irqDevices ?? []) devices[d] = ifaceIrqNames(d);
  return sampleFrom({
    tMs: performance.now(),
    softirqs: readFileSync("/proc/softirqs", "utf8"),
    stat: readFileSync("/proc/stat", "utf8"),
    procs,
    ifaces,
    interrupts: o.irqDevices?.length ? readFileSync("/proc/interrupts", "utf8") : undefined,
    devices,
  });
}

export interface Delta {
  elapsedMs: number;
  /** NET_RX / NET_TX softirqs raised per CPU (null when the kernel has no such row). */
  netRx: number[] | null;
  netTx: number[] | null;
  netRxTotal: number;
  netTxTotal: number;
  /** CPU time all CPUs spent, in ms, by state, and busy (not idle/iowait). */
  cpuMs: Record<keyof CpuTimes, number> & { busy: number };
  /** Per CPU busy ms and softirq ms. */
  perCpuBusyMs: number[];
  perCpuSoftirqMs: number[];
  /** CPU ms of each watched process tree. */
  procsMs: Record<number, number>;
  ifaces: Record<string, IfaceStats>;
  irqs: Record<string, { perCpu: number[]; total: number }>;
}

const ticksToMs = (t: number) => (t * 1000) / USER_HZ;

function diffArrays(a: number[] | null, b: number[] | null): number[] | null {
  if (!a || !b) return null;
  return b.map((x, i) => x - (a[i] ?? 0));
}

/** What happened between snapshot a and the later snapshot b. */
export function delta(a: Sample, b: Sample): Delta {
  const netRx = diffArrays(a.softirqs.netRx, b.softirqs.netRx);
  const netTx = diffArrays(a.softirqs.netTx, b.softirqs.netTx);
  const cpuMs = {} as Delta["cpuMs"];
  for (const k of CPU_FIELDS) cpuMs[k] = ticksToMs(b.stat.total[k] - a.stat.total[k]);
  cpuMs.busy = ticksToMs(busyJiffies(b.stat.total) - busyJiffies(a.stat.total));
  const perCpuBusyMs = b.stat.perCpu.map((c, i) => ticksToMs(busyJiffies(c) - (a.stat.perCpu[i] ? busyJiffies(a.stat.perCpu[i]) : 0)));
  const perCpuSoftirqMs = b.stat.perCpu.map((c, i) => ticksToMs(c.softirq - (a.stat.perCpu[i]?.softirq ?? 0)));
  const procsMs: Record<number, number> = {};
  for (const [pid, ticks] of Object.entries(b.procs)) procsMs[Number(pid)] = ticksToMs(ticks - (a.procs[Number(pid)] ?? 0));
  const ifaces: Record<string, IfaceStats> = {};
  for (const [k, s] of Object.entries(b.ifaces)) {
    const p = a.ifaces[k];
    if (!p) continue;
    const d = {} as IfaceStats;
    for (const f of Object.keys(s) as (keyof IfaceStats)[]) d[f] = s[f] - p[f];
    ifaces[k] = d;
  }
  const irqs: Delta["irqs"] = {};
  for (const [k, per] of Object.entries(b.irqs)) {
    const d = diffArrays(a.irqs[k] ?? null, per);
    if (d) irqs[k] = { perCpu: d, total: d.reduce((x, y) => x + y, 0) };
  }
  const sum = (x: number[] | null) => (x ? x.reduce((s, v) => s + v, 0) : 0);
  return {
    elapsedMs: b.tMs - a.tMs, netRx, netTx, netRxTotal: sum(netRx), netTxTotal: sum(netTx),
    cpuMs, perCpuBusyMs, perCpuSoftirqMs, procsMs, ifaces, irqs,
  };
}
