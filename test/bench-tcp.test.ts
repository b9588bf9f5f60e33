// The plain-TCP ring all-reduce baseline (bench/tcp-node.ts, one per network
// namespace on a bridge): every rank verified against the f64 reference sum,
// positive round times, exactly the ring's payload through the sockets, at
// least that much on each host's wire; a rank that starts late is waited for,
// one that never starts is named in a clear error.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { parseTcpNodeArgs as parseArgs } from "../src/bench/tcp-ring.ts";
import { parseEndpoint, quantiles, TCP_RING_PORT, type TcpRingReport } from "../src/bench/tcp-ring.ts";
import { readNsIfaceStats } from "../src/bench/proc.ts";
import { ROOT, canUseNetns, createLab, must, type Lab } from "./helpers/netns.ts";

const kernel = canUseNetns();
if (!kernel) console.warn("test/bench-tcp.test.ts: SKIPPED — the ring runs in network namespaces, which need root with `ip netns` and `nsenter`");

const MiB = 1 << 20;
const NODES = ["h0", "h1", "h2"];

/** Bytes rank r of N writes in one ring all-reduce of n floats: segments (r - t) mod N, t < 2(N-1). */
function ringBytes(r: number, N: number, n: number): number {
  const start = (s: number) => Math.floor((s * n) / N);
  let b = 0;
  for (let t = 0; t < 2 * (N - 1); t++) {
    const s = (((r - t) % N) + N) % N;
    b += (start(s + 1) - start(s)) * 4;
  }
  return b;
}

interface Exit {
  code: number;
  stdout: string;
  stderr: string;
}

describe("tcp-ring without privileges", () => {
  test("peers, quantiles, arguments", () => {
    expect(parseEndpoint("10.0.0.2", 47200)).toMatchObject({ addr: "10.0.0.2", port: 47200 });
    expect(parseEndpoint("10.0.0.2:5", 47200).port).toBe(5);
    expect(() => parseEndpoint("10.0.0.2:70000", 1)).toThrow(/port/);
    expect(() => parseEndpoint("host.example", 1)).toThrow(/IPv4/);
    expect(quantiles([4, 1, 3, 2, 5])).toEqual({ median: 3, p10: 1.4, p90: 4.6, p99: 4.96 });
    const o = parseArgs(["--peers", "10.0.0.1,10.0.0.2", "--rank", "1", "--size", "1MiB", "--rounds", "7", "--chunk", "64KiB", "--json"]);
    expect(o).toMatchObject({ peers: ["10.0.0.1", "10.0.0.2"], rank: 1, port: TCP_RING_PORT, elements: MiB / 4, rounds: 7, chunkBytes: 65536, json: true });
    expect(() => parseArgs(["--peers", "10.0.0.1", "--rank", "0", "--size", "6"])).toThrow(/float32/);
    expect(() => parseArgs(["--rank", "0", "--size", "1MiB"])).toThrow(/required/);
    expect(() => parseArgs(["--bogus"])).toThrow(/unknown argument/);
  });

  test("2 ranks on loopback (addr:port peers), odd vector length: verified", async () => {
    must(["make", "--no-print-directory", "-s", "native/build/libainftp.so"], { timeoutMs: 120_000 });
    const base = 47380 + (process.pid % 10) * 2;
    const peers = `127.0.0.1:${base},127.0.0.1:${base + 1}`;
    const procs = [0, 1].map((r) =>
      Bun.spawn([process.execPath, "bench/tcp-node.ts", "--peers", peers, "--rank", String(r), "--size", "4100", "--rounds", "2", "--json", "--chunk", "1000"], {
        cwd: ROOT, stdout: "pipe", stderr: "pipe",
      }),
    );
    const timer = setTimeout(() => procs.forEach((p) => p.kill(9)), 30_000);
    const outs = await Promise.all(procs.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text(), err: await new Response(p.stderr).text() })));
    clearTimeout(timer);
    for (const o of outs) expect(o.code, o.err).toBe(0);
    for (const o of outs) expect(JSON.parse(o.out)).toMatchObject({ elements: 1025, verified: true, bytes_written_per_round: 4100 });
  }, 40_000);

  test("back to back, the checks after the timed rounds (premade gradients) still catch a wrong sum: a rank on another seed fails every rank", async () => {
    must(["make", "--no-print-directory", "-s", "native/build/libainftp.so"], { timeoutMs: 120_000 });
    for (const [seed1, want] of [[1, true], [2, false]] as const) {
      const base = 47390 + (process.pid % 10) * 2;
      const peers = `127.0.0.1:${base},127.0.0.1:${base + 1}`;
      const procs = [0, 1].map((r) =>
        Bun.spawn([process.execPath, "bench/tcp-node.ts", "--peers", peers, "--rank", String(r), "--size", "64KiB", "--rounds", "3", "--warmup", "1",
          "--back-to-back", "--json", ...(r === 1 ? ["--seed", String(seed1)] : [])], { cwd: ROOT, stdout: "pipe", stderr: "pipe" }),
      );
      const timer = setTimeout(() => procs.forEach((p) => p.kill(9)), 30_000);
      const outs = await Promise.all(procs.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text(), err: await new Response(p.stderr).text() })));
      clearTimeout(timer);
      for (const o of outs) expect(JSON.parse(o.out), o.err).toMatchObject({ rounds: 3, verified: want });
    }
  }, 60_000);
});

describe.skipIf(!kernel)("plain-TCP ring all-reduce across namespaces (bench/tcp-node.ts)", () => {
  let lab: Lab;
  let port = 47400;

  beforeAll(() => {
    must(["make", "--no-print-directory", "-s", "native/build/libainftp.so"], { timeoutMs: 120_000 });
    lab = createLab("tcpring", NODES, { link: "bridge", subnet: "10.213.77" });
  });
  afterAll(() => lab?.destroy());

  /** Starts one rank per node (rank i after delays[i] ms) and waits for all, killing them after timeoutMs. */
  async function runRing(nodes: string[], args: string[], delays: number[] = [], timeoutMs = 60_000): Promise<Exit[]> {
    const peers = nodes.map((n) => lab.node(n).addr).join(",");
    const p = port++;
    const procs = await Promise.all(
      nodes.map(async (n, i) => {
        if (delays[i]) await Bun.sleep(delays[i]);
        return lab.spawn(n, [process.execPath, "bench/tcp-node.ts", "--peers", peers, "--rank", String(i), "--port", String(p), "--json", ...args]);
      }),
    );
    const timer = setTimeout(() => procs.forEach((x) => x.kill(9)), timeoutMs);
    try {
      return await Promise.all(
        procs.map(async (x) => ({ code: await x.exited, stdout: await new Response(x.stdout).text(), stderr: await new Response(x.stderr).text() })),
      );
    } finally {
      clearTimeout(timer);
    }
  }

  // 2 hosts wait for their sockets in poll(), 3 spin with sched_yield()
  for (const [N, wait] of [[2, "poll"], [3, "spin"]] as const) {
    test(`${N} hosts (${wait}), 1 MiB × 3 rounds: every rank verified, positive times, the ring's payload through the sockets`, async () => {
      const nodes = NODES.slice(0, N);
      const wire0 = nodes.map((n) => readNsIfaceStats(lab.node(n).name, "eth0"));
      // rank 0 starts 300 ms after the others: their connect retries until it listens
      const args = ["--size", "1MiB", "--rounds", "3", "--warmup", "3", ...(wait === "spin" ? ["--spin"] : [])];
      const exits = await runRing(nodes, args, [300]);
      const wire1 = nodes.map((n) => readNsIfaceStats(lab.node(n).name, "eth0"));
      for (const [i, e] of exits.entries()) expect(e.code, `rank ${i}: ${e.stderr}`).toBe(0);
      const reps = exits.map((e) => JSON.parse(e.stdout.trim().split("\n").at(-1)!) as TcpRingReport);
      const n = MiB / 4;
      for (const [i, r] of reps.entries()) {
        expect(r).toMatchObject({ system: "tcp-ring", rank: i, peers: N, elements: n, bytes: MiB, rounds: 3, verified: true, wait });
        if (wait === "spin") expect(r.polls_per_round).toBe(0);
        expect(r.rel_l2_error_max!).toBeLessThan(1e-6);
        expect(r.round_times_ms).toHaveLength(3);
        for (const t of r.round_times_ms) expect(t).toBeGreaterThan(0);
        expect(r.round_ms.median).toBeGreaterThan(0);
        expect(r.round_ms.p10).toBeLessThanOrEqual(r.round_ms.p90);
        // exactly 2(N-1)/N of the vector each way, barriers not counted
        expect(r.bytes_written_per_round).toBe(ringBytes(i, N, n));
        expect(r.bytes_read_per_round).toBe(ringBytes((i + N - 1) % N, N, n));
        // the wire carried at least the payload of warm-up + timed rounds (plus headers)
        expect(wire1[i].txBytes - wire0[i].txBytes).toBeGreaterThanOrEqual(6 * r.bytes_written_per_round);
      }
    }, 90_000);
  }

  test("a rank that never starts: the others fail within the connect timeout, naming it", async () => {
    const peers = NODES.map((n) => lab.node(n).addr).join(",");
    const p = String(port++);
    const t0 = performance.now();
    const procs = [0, 1].map((i) =>
      lab.spawn(NODES[i], [process.execPath, "bench/tcp-node.ts", "--peers", peers, "--rank", String(i), "--port", p, "--size", "64KiB", "--rounds", "1", "--connect-timeout", "2", "--json"]),
    );
    const exits = await Promise.all(procs.map(async (x) => ({ code: await x.exited, out: await new Response(x.stdout).text() })));
    expect(performance.now() - t0).toBeLessThan(15_000);
    const errs = exits.map((e) => JSON.parse(e.out.trim()));
    for (const e of exits) expect(e.code).toBe(1);
    // rank 1 connects to rank 2, which is not there; rank 0 waits for rank 2 to connect to it
    expect(errs[1].error).toContain(`rank 2 at ${lab.node("h2").addr}:${p} did not accept a connection within 2000 ms`);
    expect(errs[1].hint).toMatch(/start every rank/);
    expect(errs[0].error).toContain(`rank 2 (${lab.node("h2").addr}) did not connect within 2000 ms`);
  }, 30_000);
});
