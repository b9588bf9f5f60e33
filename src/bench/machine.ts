// The machine a bench ran on, for its JSON and its header line: kernel,
// cores, CPU model, memory, virtualization, load, and the tools' versions.
import { cpus, loadavg, release, totalmem } from "node:os";
import { readFileSync } from "node:fs";
import pkg from "../../package.json" with { type: "json" };

export interface MachineInfo {
  kernel: string;
  cores: number;
  cpu_model: string;
  memory_bytes: number;
  /** systemd-detect-virt's answer, or null when it is not installed. */
  virtualization: string | null;
  /** 1-minute load average at the start: other work on the machine skews every timing. */
  loadavg_1m: number;
  bun: string;
  ainftp: string;
  /** Link MTU of the hosts' interfaces in the run. */
  mtu: number;
  /** How the XDP program was attached: native or generic. */
  xdp_mode: string;
  /** Where results arrive and, for AF_XDP, in which mode. */
  af_xdp: string;
  /** The links between hosts. */
  links: string;
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (m) return m[1].trim();
  } catch {}
  return cpus()[0]?.model ?? "unknown";
}

function virt(): string | null {
  try {
    const r = Bun.spawnSync(["systemd-detect-virt"], { stdout: "pipe", stderr: "ignore" });
    return r.stdout.toString().trim() || null;
  } catch {
    return null;
  }
}

export function machineInfo(o: { mtu: number; xdpMode: string; afXdp: string; links: string }): MachineInfo {
  return {
    kernel: release(),
    cores: navigator.hardwareConcurrency,
    cpu_model: cpuModel(),
    memory_bytes: totalmem(),
    virtualization: virt(),
    loadavg_1m: loadavg()[0],
    bun: Bun.version,
    ainftp: pkg.version,
    mtu: o.mtu,
    xdp_mode: o.xdpMode,
    af_xdp: o.afXdp,
    links: o.links,
  };
}
