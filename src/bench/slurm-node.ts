// What `ainftp bench --slurm` runs on each node of the allocation, one task
// per node through srun (src/bench/slurm.ts starts them):
//   - probe: who this node is, its interface (driver and link speed from
//     ethtool, MTU and counters from netlink: sysfs shows the namespace it
//     was mounted in, not a task's under `nsenter --net`; the device's IRQ
//     vectors from /sys/bus/pci), root, whether the program attaches there
//     (attached and detached again), the peers that are installed;
//   - rank: one rank of a system, started as a child and measured around it
//     (interface counters, softirqs, the NIC's IRQs, the child's CPU); a
//     SIGTERM (scancel, Ctrl-C) goes on to the child, and pins a dead swarm
//     left on this interface are removed before it exits;
//   - clean: stale pins removed, and what is attached now (the "after" check);
//   - micro: the machine rows (sentry cost, TLB) on this node.
// Each prints its report as short self-describing lines on stdout (srun
// forwards whole lines of at most ~1 KiB), which the orchestrator joins.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { attach, detach, detachStale, pinState, xdpQuery } from "../attach.ts";
import { AinftpError } from "../errors.ts";
import { ifNameToIndex } from "../../native/libc.ts";
import { slurmMembers } from "../slurm.ts";
import { buildMpi, probeGloo, probeMpi, GLOO_PY } from "./baselines.ts";
import { machineInfo, type MachineInfo } from "./machine.ts";
import { parseIpLinkStats, readInterrupts, readSoftirqs, type IfaceStats } from "./proc.ts";

const MARK = "@ainftp-bench";
const CHUNK = 720;

/** Prints a report as `@ainftp-bench KIND RANK I/N BASE64` lines. */
export function emitReport(kind: string, rank: number, value: unknown, write: (s: string) => void): void {
  const b64 = Buffer.from(JSON.stringify(value)).toString("base64");
  const n = Math.max(1, Math.ceil(b64.length / CHUNK));
  let out = "";
  for (let i = 0; i < n; i++) out += `${MARK} ${kind} ${rank} ${i}/${n} ${b64.slice(i * CHUNK, (i + 1) * CHUNK)}\n`;
  write(out);
}

/** The reports of one kind in srun's merged stdout (labelled or not), by rank; lines that are not ours are left out. */
export function collectReports<T>(stdout: string, kind: string): Map<number, T> {
  const parts = new Map<number, string[]>();
  const total = new Map<number, number>();
  const re = new RegExp(`^(?:\\s*\\d+: )?${MARK} ${kind} (\\d+) (\\d+)/(\\d+) (\\S*)$`);
  for (const line of stdout.split("\n")) {
    const m = re.exec(line.trim());
    if (!m) continue;
    const rank = Number(m[1]);
    if (!parts.has(rank)) parts.set(rank, []);
    parts.get(rank)![Number(m[2])] = m[4];
    total.set(rank, Number(m[3]));
  }
  const out = new Map<number, T>();
  for (const [rank, p] of parts) {
    if (p.filter((x) => x !== undefined).length !== total.get(rank)) continue;
    try {
      out.set(rank, JSON.parse(Buffer.from(p.join(""), "base64").toString()) as T);
    } catch {}
  }
  return out;
}

function rankOf(env: Record<string, string | undefined>): number {
  // under mpirun, SLURM_PROCID is its daemon's task (the node); the MPI rank comes first
  const r = Number(env.OMPI_COMM_WORLD_RANK ?? env.SLURM_PROCID ?? env.PMIX_RANK);
  if (!Number.isInteger(r) || r < 0)
    throw new AinftpError("bench --slurm node", "SLURM_PROCID is not set", { hint: "this command is started by `ainftp bench --slurm` through srun" });
  return r;
}

const readText = (p: string): string | null => {
  try {
    return readFileSync(p, "utf8").trim();
  } catch {
    return null;
  }
};

// ---- probe -------------------------------------------------------------------------------------

export interface NicInfo {
  iface: string;
  /** ethtool -i: driver, its version, firmware, bus; or the device's driver link. */
  driver: string | null;
  driver_version: string | null;
  firmware: string | null;
  bus_info: string | null;
  mtu: number | null;
  /** ethtool's Speed (Mbit/s); null when the driver reports none. */
  speed_mbps: number | null;
  /** Hardware IRQ vectors of its device (0: a virtual interface). */
  irq_vectors: number;
}

export interface ProbeReport {
  rank: number;
  node: string;
  hostname: string;
  addr: string;
  iface: string;
  uid: number;
  boot_id: string | null;
  nic: NicInfo;
  /** The program attached in the asked mode, and detached again; reason when it did not. */
  xdp: { ok: boolean; mode: string | null; reason: string | null };
  /** What was on the interface before (the bench refuses to run over a live ainftp or another program). */
  found: { pins: "none" | "live" | "stale"; program_id: number; note: string | null };
  gloo: { ok: boolean; python: string | null; script: string; version: string | null; reason: string | null } | null;
  mpi: { ok: boolean; bin: string | null; version: string | null; reason: string | null } | null;
  machine: MachineInfo;
  /** Why this node could not be probed at all (then the rest is partial). */
  error: string | null;
}

/** `ip -j -s link show dev IF`: netlink answers for this process's network namespace (sysfs
 * shows the namespace it was mounted in, which under `nsenter --net` is not ours). */
function ipLink(iface: string): { mtu: number; stats: IfaceStats } | null {
  const r = Bun.spawnSync(["ip", "-j", "-s", "link", "show", "dev", iface], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) return null;
  const text = r.stdout.toString();
  return { mtu: Number(JSON.parse(text)[0]?.mtu), stats: parseIpLinkStats(text) };
}

export function readLinkStats(iface: string): IfaceStats {
  const l = ipLink(iface);
  if (!l) throw new AinftpError("bench --slurm node", `no interface ${iface} here`, { hint: "pick one every node has (ip -br addr) with --iface" });
  return l.stats;
}

/** Hardware IRQ vectors of a PCI device (its MSI/MSI-X vectors), by bus address. */
function busIrqs(bus: string | null): number[] {
  if (!bus || !existsSync(join("/sys/bus/pci/devices", bus, "msi_irqs"))) return [];
  return readdirSync(join("/sys/bus/pci/devices", bus, "msi_irqs")).filter((f) => /^\d+$/.test(f)).map(Number);
}

/** Driver (ethtool -i), MTU (netlink), speed (ethtool), and the device's IRQ vectors. */
export function nicInfo(iface: string): NicInfo {
  const info: NicInfo = { iface, driver: null, driver_version: null, firmware: null, bus_info: null, mtu: null, speed_mbps: null, irq_vectors: 0 };
  const ethtool = (args: string[]) => (Bun.which("ethtool") ? Bun.spawnSync(["ethtool", ...args, iface], { stdout: "pipe", stderr: "pipe" }).stdout.toString() : "");
  const i = ethtool(["-i"]);
  const field = (text: string, name: string) => new RegExp(`^\\s*${name}:[ \\t]*(\\S.*)$`, "m").exec(text)?.[1]?.trim() ?? null;
  info.driver = field(i, "driver");
  info.driver_version = field(i, "version");
  info.firmware = field(i, "firmware-version");
  info.bus_info = field(i, "bus-info");
  info.mtu = ipLink(iface)?.mtu ?? null;
  const speed = /^(\d+)Mb\/s$/.exec(field(ethtool([]), "Speed") ?? "");
  info.speed_mbps = speed ? Number(speed[1]) : null;
  info.irq_vectors = busIrqs(info.bus_info).length;
  return info;
}

const errText = (e: unknown) => (e instanceof AinftpError ? `${e.message}${e.hint ? ` (${e.hint})` : ""}` : String((e as Error)?.message ?? e));

/** What the XDP program finds on iface, and whether it attaches there in `mode` (then detached again). */
async function xdpCheck(iface: string, mode: "native" | "generic"): Promise<Pick<ProbeReport, "xdp" | "found">> {
  const ifindex = ifNameToIndex(iface);
  const st = pinState(iface);
  const q = ifindex ? xdpQuery(ifindex) : { progId: 0, drvProgId: 0, skbProgId: 0, mode: "none" };
  const program = q.progId || q.drvProgId || q.skbProgId;
  const found = { pins: st.kind, program_id: program, note: st.kind === "stale" ? st.why : st.kind === "live" ? `live pins in ${st.dir}${st.owner ? ` (swarm pid ${st.owner})` : " (ainftp attach)"}` : null };
  if (st.kind === "live") return { found, xdp: { ok: false, mode: null, reason: `ainftp is already attached to ${iface} (${found.note}); the bench would share it` } };
  if (program && st.kind === "none") return { found, xdp: { ok: false, mode: null, reason: `${iface} already has an XDP program (id ${program}) that ainftp did not attach` } };
  try {
    const r = await attach(iface, { mode, owner: true });
    detach(iface);
    return { found, xdp: { ok: true, mode: r.mode, reason: null } };
  } catch (e) {
    try {
      if (pinState(iface).kind !== "none") detach(iface);
    } catch {}
    return { found, xdp: { ok: false, mode: null, reason: errText(e) } };
  }
}

export async function probeNode(o: { iface?: string; mode: "native" | "generic"; gloo: boolean; mpi: boolean }, env = process.env): Promise<ProbeReport> {
  const rank = rankOf(env);
  const hostname = readText("/proc/sys/kernel/hostname") ?? "";
  const blank: ProbeReport = {
    rank, node: env.SLURMD_NODENAME ?? hostname, hostname, addr: "", iface: o.iface ?? "", uid: process.getuid?.() ?? -1,
    boot_id: readText("/proc/sys/kernel/random/boot_id"), nic: nicInfo(o.iface ?? "lo"), xdp: { ok: false, mode: null, reason: "not checked" },
    found: { pins: "none", program_id: 0, note: null }, gloo: null, mpi: null,
    machine: machineInfo({ mtu: 0, xdpMode: o.mode, afXdp: "", links: "" }), error: null,
  };
  let r = blank;
  try {
    const m = await slurmMembers(env, { iface: o.iface });
    r = { ...r, addr: m.peers[m.rank], iface: m.iface };
    if (!ipLink(m.iface)) throw new AinftpError("bench --slurm", `there is no interface ${m.iface} on ${r.node}`, { hint: "pick one every node has (ip -br addr) with --iface" });
    r.nic = nicInfo(m.iface);
    r.machine.mtu = r.nic.mtu ?? 0;
    if (r.uid === 0) Object.assign(r, await xdpCheck(m.iface, o.mode));
    else r.xdp = { ok: false, mode: null, reason: "not root" };
  } catch (e) {
    r.error = errText(e);
  }
  if (o.gloo) {
    const p = probeGloo();
    r.gloo = { ok: p.ok, python: p.python ?? null, script: GLOO_PY, version: p.version ?? null, reason: p.reason ?? null };
  }
  if (o.mpi) {
    const p = probeMpi();
    let bin: string | null = null;
    let reason = p.reason ?? null;
    if (p.ok)
      try {
        bin = buildMpi();
      } catch (e) {
        reason = `mpicc failed: ${errText(e).split("\n").slice(-4).join(" | ")}`;
      }
    r.mpi = { ok: bin !== null, bin, version: p.version ?? null, reason };
  }
  return r;
}

// ---- one rank, measured --------------------------------------------------------------------------

export interface RankReport {
  rank: number;
  node: string;
  /** The child's exit code (null: killed by a signal). */
  code: number | null;
  /** The signal this wrapper passed on to the child (scancel, Ctrl-C), if any. */
  stopped_by: string | null;
  stdout: string;
  stderr: string;
  wall_ms: number;
  /** The interface's counters over the child's life. */
  net: IfaceStats;
  /** NET_RX / NET_TX softirqs of the whole node over the child's life. */
  softirqs: { net_rx: number; net_tx: number };
  /** Hardware IRQs of the interface's device (null: it has none, e.g. veth). */
  irqs: number | null;
  /** The child's CPU time (user + system). */
  cpu_ms: number | null;
  /** Stale pins this wrapper removed after the child (a swarm killed outright). */
  cleaned: string[];
  boot_id: string | null;
}

/** Hardware IRQs so far of the interface's device (its MSI vectors, or rows named after it); null without a device (veth). */
function ifaceIrqs(iface: string, bus: string | null): number | null {
  if (!bus) return null;
  const irqs = busIrqs(bus);
  const names = [iface, bus];
  let ints;
  try {
    ints = readInterrupts();
  } catch {
    return null;
  }
  const rows = ints.rows.filter((x) => irqs.includes(Number(x.irq)) || x.actions.some((a) => names.some((n) => a === n || a.startsWith(`${n}-`))));
  return rows.length ? rows.reduce((s, x) => s + x.total, 0) : null;
}

const sum = (a: number[] | null) => (a ?? []).reduce((s, v) => s + v, 0);
function diffStats(a: IfaceStats, b: IfaceStats): IfaceStats {
  const d = { ...b };
  for (const k of Object.keys(d) as (keyof IfaceStats)[]) d[k] = b[k] - a[k];
  return d;
}

/** Keeps the last `n` lines of s. */
const tail = (s: string, n = 40) => s.trim().split("\n").slice(-n).join("\n");

/**
 * Runs argv (`{rank}` replaced by this task's rank) as a child, measured
 * around it; SIGTERM/SIGINT go on to the child, which is waited for. Exit
 * codes: the child's, except 3 (a rank that ran and failed its check: the
 * report says so, and the other ranks must not be killed for it).
 */
export async function runRank(o: { iface: string; pins: boolean }, argv: string[], env = process.env): Promise<{ report: RankReport; exit: number }> {
  const rank = rankOf(env);
  const cmd = argv.map((a) => (a === "{rank}" ? String(rank) : a));
  const bus = nicInfo(o.iface).bus_info;
  const net0 = readLinkStats(o.iface);
  const soft0 = readSoftirqs();
  const irq0 = ifaceIrqs(o.iface, bus);
  const t0 = performance.now();
  const child = Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env });
  let stoppedBy: string | null = null;
  const pass = (sig: NodeJS.Signals) => {
    stoppedBy = sig;
    child.kill(sig);
  };
  process.on("SIGTERM", pass);
  process.on("SIGINT", pass);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  process.off("SIGTERM", pass);
  process.off("SIGINT", pass);
  const wall = performance.now() - t0;
  const soft1 = readSoftirqs();
  const irq1 = ifaceIrqs(o.iface, bus);
  const cleaned: string[] = [];
  if (o.pins) {
    try {
      for (const x of await detachStale()) cleaned.push(`${x.pinDir} (${x.why})`);
    } catch (e) {
      cleaned.push(`could not remove stale pins: ${errText(e)}`);
    }
  }
  const ru = child.resourceUsage();
  const report: RankReport = {
    rank, node: env.SLURMD_NODENAME ?? "", code: child.signalCode ? null : code, stopped_by: stoppedBy,
    stdout, stderr: tail(stderr), wall_ms: Math.round(wall),
    net: diffStats(net0, readLinkStats(o.iface)),
    softirqs: { net_rx: sum(soft1.netRx) - sum(soft0.netRx), net_tx: sum(soft1.netTx) - sum(soft0.netTx) },
    irqs: irq0 === null || irq1 === null ? null : irq1 - irq0,
    cpu_ms: ru ? Number(ru.cpuTime.total) / 1000 : null,
    cleaned, boot_id: readText("/proc/sys/kernel/random/boot_id"),
  };
  return { report, exit: stoppedBy ? 143 : code === 3 ? 0 : (code ?? 137) };
}

// ---- after the run -------------------------------------------------------------------------------

export interface CleanReport {
  rank: number;
  node: string;
  iface: string;
  /** XDP program on the interface now (0: none). */
  program_id: number;
  /** ainftp pins for the interface now. */
  pins: boolean;
  /** Stale pins removed now (a swarm killed outright earlier in the run). */
  removed: string[];
}

export async function cleanNode(iface: string, env = process.env): Promise<CleanReport> {
  const removed = (await detachStale()).map((x) => `${x.pinDir} (${x.why})`);
  const ifindex = ifNameToIndex(iface);
  const q = ifindex ? xdpQuery(ifindex) : { progId: 0, drvProgId: 0, skbProgId: 0 };
  return {
    rank: rankOf(env), node: env.SLURMD_NODENAME ?? "", iface, program_id: q.progId || q.drvProgId || q.skbProgId,
    pins: pinState(iface).kind !== "none", removed,
  };
}
