// The bench's kernel counters (src/bench/proc.ts) on canned text: files as
// this 2-CPU machine printed them, and the edge cases (no NET_RX row, more
// CPUs, a comm with spaces and parentheses, a namespace's `ip -j -s link`).
import { describe, expect, test } from "bun:test";
import {
  busyJiffies, delta, deviceIrqs, parseInterrupts, parseIpLinkStats, parsePidStat, parseProcStat, parseSoftirqs,
  parseSysfsStats, pidCpuTicks, readInterrupts, readPidStat, readProcStat, readSoftirqs, sample, sampleFrom,
} from "../src/bench/proc.ts";

// ---- canned: this machine (2 CPUs, kernel 6.18, virtio_net eth0 = virtio2) --------------

const SOFTIRQS = `                    CPU0       CPU1       
          HI:          0          0
       TIMER:     154043     199488
      NET_TX:       3519       3858
      NET_RX:    9620411    9414570
       BLOCK:          0     204445
    IRQ_POLL:          0          0
     TASKLET:        662        430
       SCHED:     599215     584487
     HRTIMER:     619001     634944
         RCU:     369223     387982
`;

const STAT = `cpu  426834 0 209622 1073830 2587 0 49988 1895 0 0
cpu0 203659 0 100590 551659 490 0 25025 932 0 0
cpu1 223175 0 109032 522171 2097 0 24963 963 0 0
intr 11477009 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 9 0 0 0 0 1767 1148 0 156 1 204623 0 4942 3349 0 4604 11117 1 0
ctxt 13785931
btime 1795673301
processes 123845
procs_running 3
procs_blocked 0
softirq 22802614 0 354961 7377 19034981 205211 0 1092 1185771 1253945 759276
`;

const PID_STAT =
  "1 (process_api) S 0 0 0 0 -1 4194560 50235 103676604 0 18990 211 319 419337 241051 10 -10 11 0 14 37736448 2637 " +
  "18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

const INTERRUPTS = `           CPU0       CPU1       
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 25:          0          1  IO-APIC   6-edge      ACPI:Ged
 26:          0          9  IO-APIC   4-edge      ttyS0
 28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config
 31:          0       1763 PCI-MSIX-0000:00:01.0   3-edge      virtio0-stats
 32:       1147          0 PCI-MSIX-0000:00:01.0   4-edge      virtio0-reporting_vq
 36:          0     204511 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 37:          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config
 38:          0       4942 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       3349          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 41:       4589          0 PCI-MSIX-0000:00:04.0   1-edge      virtio3-rx
NMI:          0          0   Non-maskable interrupts
LOC:    2451020    2499628   Local timer interrupts
RES:     213301     200526   Rescheduling interrupts
ERR:          0
MIS:          0
`;

const IP_LINK =
  '[{"ifindex":4,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"pfifo_fast",' +
  '"operstate":"UP","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether","address":"02:fc:00:00:00:01",' +
  '"broadcast":"ff:ff:ff:ff:ff:ff","stats64":{"rx":{"bytes":240768586,"packets":6975,"errors":0,"dropped":0,"over_errors":0,' +
  '"multicast":0},"tx":{"bytes":298433,"packets":3802,"errors":0,"dropped":0,"carrier_errors":0,"collisions":0}}}]\n';

// ---- edge cases ------------------------------------------------------------------------

const SOFTIRQS_4CPU_NO_NET_RX = `                    CPU0       CPU1       CPU2       CPU3
          HI:          1          2          3          4
      NET_TX:         10         20         30         40
       SCHED:        100        200        300        400
`;

describe("/proc/softirqs", () => {
  test("this machine: NET_RX and NET_TX per CPU", () => {
    const s = parseSoftirqs(SOFTIRQS);
    expect(s.cpus).toBe(2);
    expect(s.netRx).toEqual([9620411, 9414570]);
    expect(s.netTx).toEqual([3519, 3858]);
    expect(s.counts.BLOCK).toEqual([0, 204445]);
    expect(Object.keys(s.counts)).toHaveLength(10);
  });

  test("more CPUs, no NET_RX row", () => {
    const s = parseSoftirqs(SOFTIRQS_4CPU_NO_NET_RX);
    expect(s.cpus).toBe(4);
    expect(s.netRx).toBeNull();
    expect(s.netTx).toEqual([10, 20, 30, 40]);
  });

  test("a short row is padded with zeros; no header is an error", () => {
    expect(parseSoftirqs("  CPU0 CPU1 CPU2\nNET_RX: 5 6\n").netRx).toEqual([5, 6, 0]);
    expect(() => parseSoftirqs("NET_RX: 1 2\n")).toThrow(/header/);
  });
});

describe("/proc/stat", () => {
  test("this machine: the cpu line, per CPU, softirq and ctxt", () => {
    const s = parseProcStat(STAT);
    expect(s.total).toEqual({ user: 426834, nice: 0, system: 209622, idle: 1073830, iowait: 2587, irq: 0, softirq: 49988, steal: 1895, guest: 0, guestNice: 0 });
    expect(s.perCpu).toHaveLength(2);
    expect(s.perCpu[1].softirq).toBe(24963);
    expect(s.softirqs).toBe(22802614);
    expect(s.ctxt).toBe(13785931);
    expect(busyJiffies(s.total)).toBe(426834 + 209622 + 49988 + 1895);
  });

  test("an old kernel's short cpu line; no cpu line is an error", () => {
    const s = parseProcStat("cpu 1 2 3 4\ncpu0 1 2 3 4\ncpu1 0 0 0 0\ncpu2 0 0 0 0\n");
    expect(s.total.softirq).toBe(0);
    expect(s.perCpu).toHaveLength(3);
    expect(s.softirqs).toBeNull();
    expect(() => parseProcStat("intr 0\n")).toThrow(/cpu line/);
  });
});

describe("/proc/PID/stat", () => {
  test("this machine's pid 1: times of itself and its reaped children", () => {
    const s = parsePidStat(PID_STAT);
    expect(s).toMatchObject({ pid: 1, comm: "process_api", state: "S", ppid: 0, utime: 211, stime: 319, cutime: 419337, cstime: 241051, starttime: 14 });
    expect(pidCpuTicks(s)).toEqual({ self: 530, withReaped: 530 + 419337 + 241051 });
  });

  test("a comm with spaces and parentheses", () => {
    const s = parsePidStat("42 (a b) (c)) R 7 0 0 0 -1 0 0 0 0 0 5 6 7 8 20 0 1 0 99 0 0\n");
    expect(s).toMatchObject({ pid: 42, comm: "a b) (c)", state: "R", ppid: 7, utime: 5, stime: 6, cutime: 7, cstime: 8, starttime: 99 });
    expect(() => parsePidStat("42 nocomm R 1")).toThrow();
    expect(() => parsePidStat("42 (x) R 1 2")).toThrow(/fields/);
  });
});

describe("/proc/interrupts", () => {
  test("this machine: eth0 is virtio2, three vectors", () => {
    const ints = parseInterrupts(INTERRUPTS);
    expect(ints.cpus).toBe(2);
    const rows = deviceIrqs(ints, ["eth0", "virtio2"]);
    expect(rows.map((r) => r.irq)).toEqual(["37", "38", "39"]);
    expect(rows.map((r) => r.actions[0])).toEqual(["virtio2-config", "virtio2-input.0", "virtio2-output.0"]);
    expect(rows.reduce((a, r) => a + r.total, 0)).toBe(4942 + 3349);
    // by MSI vector number alone
    expect(deviceIrqs(ints, [], [38]).map((r) => r.irq)).toEqual(["38"]);
    // a name is a whole prefix, not a substring: virtio0 does not catch virtio0x, nor "virtio" all of them
    expect(deviceIrqs(ints, ["virtio"])).toEqual([]);
  });

  test("named rows, one-count rows, shared IRQs and other CPUs", () => {
    const ints = parseInterrupts(INTERRUPTS);
    const loc = ints.rows.find((r) => r.irq === "LOC")!;
    expect(loc.counts).toEqual([2451020, 2499628]);
    expect(loc.actions).toEqual([]);
    expect(loc.desc).toBe("Local timer interrupts");
    expect(ints.rows.find((r) => r.irq === "ERR")!.counts).toEqual([0]);

    const four = parseInterrupts(
      "   CPU0 CPU1 CPU2 CPU3\n" +
        " 130:  1 2 3 4  IR-PCI-MSI 524288-edge      eth0-TxRx-0\n" +
        " 131:  5 6 7 8  IR-PCI-MSI 524289-edge      eth0-TxRx-1\n" +
        "  11:  0 0 0 9  GICv3  27 Level     eth1, usb1\n" +
        " 132:  1 1 1 1  IR-PCI-MSI 524290-edge      eth00-TxRx-0\n",
    );
    expect(deviceIrqs(four, ["eth0"]).map((r) => r.total)).toEqual([10, 26]);
    expect(deviceIrqs(four, ["usb1"]).map((r) => r.irq)).toEqual(["11"]);
    expect(deviceIrqs(four, ["eth1"])[0].actions).toEqual(["eth1", "usb1"]);
  });
});

describe("interface counters", () => {
  test("sysfs statistics files", () => {
    const s = parseSysfsStats({ rx_bytes: "240768586\n", tx_bytes: "298433\n", rx_packets: "6975\n", tx_packets: "3802\n", rx_dropped: "1\n" });
    expect(s).toEqual({ rxBytes: 240768586, txBytes: 298433, rxPackets: 6975, txPackets: 3802, rxDropped: 1, txDropped: 0, rxErrors: 0, txErrors: 0 });
  });

  test("ip -n NS -j -s link show dev IF", () => {
    expect(parseIpLinkStats(IP_LINK)).toEqual({ rxBytes: 240768586, txBytes: 298433, rxPackets: 6975, txPackets: 3802, rxDropped: 0, txDropped: 0, rxErrors: 0, txErrors: 0 });
    expect(() => parseIpLinkStats('[{"ifname":"eth0"}]')).toThrow(/-s/);
  });
});

describe("sample and delta", () => {
  test("canned before/after", () => {
    const before = sampleFrom({
      tMs: 1000, softirqs: SOFTIRQS, stat: STAT, procs: { 1: [PID_STAT] }, interrupts: INTERRUPTS,
      devices: { eth0: { names: ["eth0", "virtio2"] } },
      ifaces: { "ns/eth0": parseIpLinkStats(IP_LINK) },
    });
    const after = sampleFrom({
      tMs: 1500,
      softirqs: SOFTIRQS.replace("9620411", "9620511").replace("9414570", "9414590"),
      stat: STAT.replace("cpu  426834 0 209622 1073830 2587 0 49988", "cpu  426884 0 209622 1073880 2587 0 49998")
        .replace("cpu0 203659 0 100590 551659 490 0 25025", "cpu0 203709 0 100590 551659 490 0 25035"),
      procs: { 1: [PID_STAT.replace(" 211 319 ", " 221 320 "), "9 (child) S 1 0 0 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 50 0 0"] },
      interrupts: INTERRUPTS.replace("4942", "5042"),
      devices: { eth0: { names: ["eth0", "virtio2"] } },
      ifaces: { "ns/eth0": parseIpLinkStats(IP_LINK.replace("240768586", "240769586").replace('"packets":6975', '"packets":6985')) },
    });
    const d = delta(before, after);
    expect(d.elapsedMs).toBe(500);
    expect(d.netRx).toEqual([100, 20]);
    expect(d.netRxTotal).toBe(120);
    expect(d.netTx).toEqual([0, 0]);
    expect(d.cpuMs.user).toBe(500);
    expect(d.cpuMs.softirq).toBe(100);
    expect(d.cpuMs.idle).toBe(500);
    expect(d.cpuMs.busy).toBe(600);
    expect(d.perCpuBusyMs).toEqual([600, 0]);
    expect(d.perCpuSoftirqMs).toEqual([100, 0]);
    // the tree: +11 ticks of its own, +7 of a live child
    expect(d.procsMs[1]).toBe(180);
    expect(d.ifaces["ns/eth0"]).toMatchObject({ rxBytes: 1000, rxPackets: 10, txBytes: 0 });
    expect(d.irqs.eth0).toEqual({ perCpu: [0, 100], total: 100 });
  });

  test("a kernel without NET_RX gives null, not zeros", () => {
    const a = sampleFrom({ tMs: 0, softirqs: SOFTIRQS_4CPU_NO_NET_RX, stat: STAT });
    const d = delta(a, a);
    expect(d.netRx).toBeNull();
    expect(d.netRxTotal).toBe(0);
    expect(d.netTx).toEqual([0, 0, 0, 0]);
  });

  test("the live files parse", () => {
    const cpus = navigator.hardwareConcurrency;
    expect(readSoftirqs().cpus).toBeGreaterThanOrEqual(cpus);
    expect(readProcStat().perCpu.length).toBeGreaterThanOrEqual(cpus);
    expect(readPidStat(process.pid).pid).toBe(process.pid);
    expect(readInterrupts().rows.length).toBeGreaterThan(0);
    const a = sample({ pids: [process.pid], ifaces: ["lo"], irqDevices: ["lo"] });
    let x = 0;
    for (let i = 0; i < 3e6; i++) x += Math.sqrt(i);
    const b = sample({ pids: [process.pid], ifaces: ["lo"], irqDevices: ["lo"] });
    const d = delta(a, b);
    expect(x).toBeGreaterThan(0);
    expect(d.elapsedMs).toBeGreaterThan(0);
    expect(d.procsMs[process.pid]).toBeGreaterThanOrEqual(0);
    expect(d.ifaces.lo.rxBytes).toBeGreaterThanOrEqual(0);
    expect(d.irqs.lo.total).toBe(0);
  });
});
