// The bench's link shaping (src/bench/shape.ts): rates parsed and bad ones
// rejected naming the units; nccl-tests' bandwidth arithmetic and the shaping
// check on canned inputs; then as root, in a namespace this test creates:
// tbf set on both ends of a veth pair with the documented burst and queue,
// traffic through it held to the rate, and the qdiscs removed by remove(),
// on process exit, and when the process gets SIGINT.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { AinftpError } from "../src/errors.ts";
import {
  GSO_MAX_BYTES, LinkShaper, allowedRate, bandwidth, formatRate, parseRate, parseRates, peakRate, qdiscStats, tbfParams, tcRate,
} from "../src/bench/shape.ts";
import { ROOT, canUseNetns, must, sh } from "./helpers/netns.ts";

const kernel = canUseNetns();
if (!kernel) console.warn("test/bench-shape.test.ts: kernel tests SKIPPED — adding qdiscs in a network namespace needs root with `ip netns` and `nsenter`");

describe("rates", () => {
  test("tc's decimal units, decimals, none", () => {
    expect(parseRate("1gbit")).toBe(1e9);
    expect(parseRate("2.5gbit")).toBe(2.5e9);
    expect(parseRate("500mbit")).toBe(500e6);
    expect(parseRate("100000kbit")).toBe(100e6);
    expect(parseRate(" 10GBIT ")).toBe(10e9);
    expect(parseRate("none")).toBeNull();
    expect(parseRates("none,1gbit,2.5gbit,1gbit")).toEqual([null, 1e9, 2.5e9]);
    expect(formatRate(2.5e9)).toBe("2.5 Gbit/s");
    expect(formatRate(500e6)).toBe("500 Mbit/s");
    expect(formatRate(null)).toBe("unshaped");
    expect(tcRate(2.5e9)).toBe("2500mbit");
    expect(tcRate(1e9)).toBe("1gbit");
  });

  test("a bad rate is rejected with the accepted units named", () => {
    for (const bad of ["10gbps", "10", "gbit", "1,5gbit", "10 GB/s", "-1gbit"]) {
      let err: unknown;
      try {
        parseRate(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(AinftpError);
      expect((err as Error).message).toContain("bit, kbit, mbit, gbit, tbit");
      expect((err as Error).message).toContain(bad);
    }
    // tc would read "gbps" as gigabytes: the hint says so
    try {
      parseRate("10gbps");
    } catch (e) {
      expect((e as AinftpError).hint).toContain("gigaBYTES");
    }
    expect(() => parseRate("10kbit")).toThrow(/out of range/);
    expect(() => parseRates(" , ")).toThrow(/no rate/);
  });

  test("the CLI refuses a bad --link-rate before building anything", async () => {
    const r = sh([process.execPath, join(ROOT, "cli/index.ts"), "bench", "--link-rate", "10gbps"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("bit, kbit, mbit, gbit, tbit");
  });
});

describe("burst and queue", () => {
  test("the bucket holds two 64 KiB GSO frames or 1 ms of the rate; the queue 50 ms or 4 MiB", () => {
    expect(tbfParams(1e9)).toEqual({ rate_bps: 1e9, burst_bytes: 2 * GSO_MAX_BYTES, limit_bytes: 6_250_000 });
    expect(tbfParams(10e9)).toEqual({ rate_bps: 10e9, burst_bytes: 1_250_000, limit_bytes: 62_500_000 });
    expect(tbfParams(100e6)).toEqual({ rate_bps: 100e6, burst_bytes: 2 * GSO_MAX_BYTES, limit_bytes: 4 << 20 });
    // over a 100 ms window a 1 Gbit/s bucket lets 1 Gbit/s + 128 KiB through
    expect(allowedRate(tbfParams(1e9), 100)).toBeCloseTo(1e9 + (131072 * 8) / 0.1, 3);
  });
});

describe("bandwidth arithmetic (nccl-tests' conventions)", () => {
  test("algbw, busbw and the share of line rate on canned inputs", () => {
    // 16 MiB in 200 ms over 4 ranks; a ring puts 24 MiB per host on a 1 Gbit/s link
    const b = bandwidth({ bytes: 16 * 2 ** 20, peers: 4, ms: 200, rateBps: 1e9, wireBytesPerHostPerRound: 24 * 2 ** 20 });
    expect(b.algbw_bytes_per_s).toBeCloseTo(83_886_080, 3);
    expect(b.busbw_bytes_per_s).toBeCloseTo(83_886_080 * 1.5, 3);
    expect(b.line_rate_fraction).toBeCloseTo((24 * 2 ** 20) / (125e6 * 0.2), 9); // 1.0066: the link was full
    // 2 ranks: busbw = algbw; unshaped: no line rate
    const u = bandwidth({ bytes: 1e6, peers: 2, ms: 10, rateBps: null, wireBytesPerHostPerRound: 1e6 });
    expect(u).toEqual({ algbw_bytes_per_s: 1e8, busbw_bytes_per_s: 1e8, line_rate_fraction: null });
    // 8 ranks: × 1.75
    expect(bandwidth({ bytes: 8e6, peers: 8, ms: 1000, rateBps: null, wireBytesPerHostPerRound: null }).busbw_bytes_per_s).toBeCloseTo(14e6, 6);
  });

  test("the shaping check's peak rate over windows", () => {
    // 1 Gbit/s for 300 ms in 5 ms samples, then a 10 ms burst at 4 Gbit/s
    const s: { tMs: number; txBytes: number; rxBytes: number }[] = [];
    let tx = 0;
    for (let t = 0; t <= 300; t += 5) {
      s.push({ tMs: t, txBytes: tx, rxBytes: tx / 2 });
      tx += 125e6 * 0.005;
    }
    const steady = peakRate(s, 100);
    expect(steady.tx_bps).toBeCloseTo(1e9, -3);
    expect(steady.rx_bps).toBeCloseTo(0.5e9, -3);
    s.push({ tMs: 305, txBytes: tx + 2.5e6, rxBytes: 0 });
    expect(peakRate(s, 100).tx_bps).toBeGreaterThan(1.1e9); // the burst shows within a 100 ms window
    // shorter than a window (20 ms at 1 Gbit/s): what moved, over the window that holds it
    expect(peakRate(s.slice(0, 5), 100).tx_bps).toBeCloseTo(0.2e9, -3);
    expect(peakRate(s.slice(0, 1), 100)).toEqual({ tx_bps: 0, rx_bps: 0 });
  });

  test("a reader descheduled mid-sample does not make the link look faster", () => {
    // 1 Gbit/s; the sample at 100 ms was stamped before a 50 ms stall and read after it (t0/t1)
    const at = (t: number) => 125e6 * (t / 1000);
    const s = [
      { tMs: 0, txBytes: at(0), rxBytes: 0, t0Ms: 0, t1Ms: 0 },
      { tMs: 100, txBytes: at(150), rxBytes: 0, t0Ms: 150, t1Ms: 150 },
      { tMs: 200, txBytes: at(200), rxBytes: 0, t0Ms: 200, t1Ms: 200 },
    ];
    expect(peakRate(s, 100).tx_bps).toBeCloseTo(1e9, -3);
    // by the stamps alone the first window would claim 1.5 Gbit/s
    expect(peakRate(s.map(({ t0Ms, t1Ms, ...x }) => x), 100).tx_bps).toBeCloseTo(1.5e9, -3);
  });
});

describe.skipIf(!kernel)("tbf on a veth pair in a namespace of this test (root)", () => {
  const ns = `ainftp-shape-${process.pid}`;
  const path = `/run/netns/${ns}`;
  const devs = [
    { netns: path, dev: "sa", label: "a tx" },
    { netns: path, dev: "sb", label: "a rx" },
  ];
  const inNs = (cmd: string[]) => sh(["nsenter", `--net=${path}`, ...cmd]);
  const hasTbf = (dev: string) => qdiscStats(path, dev) !== null;

  must(["ip", "netns", "add", ns]);
  must(["ip", "-n", ns, "link", "add", "name", "sa", "type", "veth", "peer", "name", "sb"]);
  must(["ip", "-n", ns, "link", "set", "sa", "up"]);
  must(["ip", "-n", ns, "link", "set", "sb", "up"]);
  afterAll(() => {
    sh(["ip", "netns", "del", ns]);
  });

  test("set on both devices with the documented burst and queue; traffic held to the rate; removed", () => {
    const s = LinkShaper.apply(devs, 200e6);
    try {
      const q = JSON.parse(inNs(["tc", "-j", "qdisc", "show", "dev", "sa"]).stdout)[0];
      expect(q.kind).toBe("tbf");
      expect(q.options.rate).toBe(25e6); // tc reports bytes/s
      expect(q.options.burst).toBeGreaterThanOrEqual(2 * GSO_MAX_BYTES - 100);
      expect(hasTbf("sb")).toBe(true);
      // 2.8 MB of datagrams through sa in one go: with 200 Mbit/s they cannot leave in less than ~150 ms
      must(["ip", "-n", ns, "addr", "add", "10.213.97.1/24", "dev", "sa"]);
      must(["ip", "-n", ns, "neigh", "add", "10.213.97.2", "lladdr", "02:00:00:00:00:02", "dev", "sa"]);
      // bounded: 2000 datagrams of 1400 B (2.9 MB of frames) to an address that only the veth peer sees;
      // python times them from the first send until sa's tx counter (/proc/net/dev, this namespace) has them all
      const py = [
        "import socket, time",
        "def tx():",
        "  for l in open('/proc/net/dev'):",
        "    if l.strip().startswith('sa:'): return int(l.split(':')[1].split()[8])",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "b0 = tx(); t0 = time.monotonic()",
        "for i in range(2000): s.sendto(b'x' * 1400, ('10.213.97.2', 9))",
        "want = b0 + 2000 * 1442",
        "while tx() < want and time.monotonic() - t0 < 5: time.sleep(0.002)",
        "print(tx() - b0, time.monotonic() - t0)",
      ].join("\n");
      const r = inNs(["python3", "-c", py]);
      expect(r.code).toBe(0);
      const [bytes, secs] = r.stdout.trim().split(" ").map(Number);
      expect(bytes).toBeGreaterThanOrEqual(2000 * 1442);
      const bps = (bytes * 8) / secs;
      expect(bps).toBeLessThanOrEqual(allowedRate(s.params, secs * 1000)); // held to 200 Mbit/s (+ the burst)
      expect(bps).toBeGreaterThan(100e6); // and not far below: nothing was lost on the way
      const st = s.stats();
      expect(st["a tx"].packets).toBeGreaterThanOrEqual(2000);
      expect(st["a tx"].drops).toBe(0);
    } finally {
      s.remove();
    }
    expect(hasTbf("sa")).toBe(false);
    expect(hasTbf("sb")).toBe(false);
    s.remove(); // idempotent
  });

  /** A child process that shapes both devices, says "ready", and then waits (or exits). */
  function child(after: "wait" | "exit") {
    const code =
      `import { LinkShaper, removeAllShaping } from ${JSON.stringify(join(ROOT, "src/bench/shape.ts"))};\n` +
      // the bench's Ctrl-C path (cli/bench.ts → abortBench → removeAllShaping)
      `process.on("SIGINT", () => { removeAllShaping(); process.exit(130); });\n` +
      `LinkShaper.apply(${JSON.stringify(devs)}, 1e9);\n` +
      `console.log("ready");\n` +
      (after === "exit" ? `process.exit(0);\n` : `setTimeout(() => process.exit(9), 20000);\n`);
    return Bun.spawn([process.execPath, "-e", code], { stdout: "pipe", stderr: "pipe" });
  }

  async function readyOf(p: ReturnType<typeof child>): Promise<void> {
    const reader = p.stdout.getReader();
    let text = "";
    const until = Date.now() + 15_000;
    while (!text.includes("ready") && Date.now() < until) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    reader.releaseLock();
    expect(text).toContain("ready");
  }

  test("removed when the process gets SIGINT", async () => {
    const p = child("wait");
    await readyOf(p);
    expect(hasTbf("sa")).toBe(true);
    expect(hasTbf("sb")).toBe(true);
    p.kill("SIGINT");
    expect(await p.exited).toBe(130);
    expect(hasTbf("sa")).toBe(false);
    expect(hasTbf("sb")).toBe(false);
  }, 30_000);

  test("removed when the process exits without removing them", async () => {
    const p = child("exit");
    expect(await p.exited).toBe(0);
    expect(await new Response(p.stdout).text()).toContain("ready"); // it had shaped them
    expect(hasTbf("sa")).toBe(false);
    expect(hasTbf("sb")).toBe(false);
  }, 30_000);
});
