// `ainftp bench --slurm` (src/bench/slurm.ts, examples/slurm/bench-job.sh):
//   - refusals without a cluster: outside an allocation, under srun, one
//     node, options that would change the nodes' links, a node without root
//     or without the binary (from canned probe reports and srun's words);
//   - on a real SLURM (test/helpers/slurm-lab.ts: slurmctld and one slurmd
//     per namespace), the documented job script in a 4-node allocation:
//     `--size 1MiB,16MiB` prints the table with every system verified, writes
//     the JSON (schema-valid, with the nodes' NIC) and the charts, and leaves
//     no program or pins; a scancel in the middle of ainftp's step leaves no
//     program and no pins either (the Epilog finds nothing to remove); a
//     node whose driver cannot run the program stops it before anything runs.
// `bun test` runs ainftp, the TCP ring and Open MPI (about 75 s with the
// cluster); Gloo (four torch imports per step, 15 s to 2 min here) and Open
// MPI started by mpirun instead of srun --mpi=pmix (the fallback without
// SLURM's PMIx plugin) run with AINFTP_SLURM_BENCH_FULL=1, which `make
// test-slurm` sets.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { probeRefusal, probeStepError, requireAllocation } from "../src/bench/slurm.ts";
import type { ProbeReport } from "../src/bench/slurm-node.ts";
import { validateBenchJson } from "../src/bench/schema.ts";
import { AinftpError } from "../src/errors.ts";
import { BIN, ROOT, ensureBuilt, sh, until } from "./helpers/netns.ts";
import {
  attachedState, jobOutput, slurm, slurmSkipReason, startCluster, stopCluster, submit, waitJobEnd, waitNodesIdle, type Cluster,
} from "./helpers/slurm-lab.ts";

const JOB = join(ROOT, "examples/slurm/bench-job.sh");
const FULL = process.env.AINFTP_SLURM_BENCH_FULL === "1";

/** The environment with every SLURM variable removed (this test may itself run inside a job). */
const noSlurm = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SLURM_")));

describe("bench --slurm refuses, saying what to do", () => {
  test("outside an allocation: the CLI exits 1, names SLURM_JOB_ID and says salloc/sbatch", () => {
    ensureBuilt();
    const r = Bun.spawnSync([BIN, "bench", "--slurm", "--size", "1MiB"], { env: noSlurm, stdout: "pipe", stderr: "pipe" });
    const err = r.stderr.toString();
    expect(r.exitCode).toBe(1);
    expect(err).toContain("not inside a SLURM allocation (SLURM_JOB_ID is not set)");
    expect(err).toMatch(/hint: .*salloc -N 4 ainftp bench --slurm.*sbatch examples\/slurm\/bench-job\.sh/);
  });

  test("options that change the hosts' links are refused with --slurm; --iface without --slurm too", () => {
    const a = Bun.spawnSync([BIN, "bench", "--slurm", "--link-rate", "1gbit", "--mtu", "1500"], { env: { ...noSlurm, SLURM_JOB_ID: "7", SLURM_JOB_NODELIST: "a[1-2]" }, stderr: "pipe" });
    expect(a.exitCode).toBe(1);
    expect(a.stderr.toString()).toContain("--link-rate shapes the links with tbf; on a cluster the bench measures your NICs as they are");
    expect(a.stderr.toString()).toContain("hint: drop --link-rate, --mtu");
    const b = Bun.spawnSync([BIN, "bench", "--iface", "eth0"], { env: noSlurm, stderr: "pipe" });
    expect(b.exitCode).toBe(1);
    expect(b.stderr.toString()).toContain("--iface is for --slurm");
  });

  test("under srun (a task of a step), or with one node", () => {
    const env = { SLURM_JOB_ID: "7", SLURM_JOB_NODELIST: "a[1-4]" };
    expect(() => requireAllocation({ ...env, SLURM_STEP_ID: "0", SLURM_NTASKS: "4", SLURM_PROCID: "2" })).toThrow(/task 2 of 4 of an srun step/);
    expect(() => requireAllocation({ ...env, SLURM_JOB_NODELIST: "a1" })).toThrow(/has 1 node \(a1\); an all-reduce needs 2 or more/);
    if (Bun.which("srun")) expect(requireAllocation(env).nodes).toEqual(["a1", "a2", "a3", "a4"]);
  });

  const probe = (node: string, o: Partial<ProbeReport> = {}): ProbeReport => ({
    rank: 0, node, hostname: node, addr: "10.0.0.1", iface: "ens1", uid: 0, boot_id: node,
    nic: { iface: "ens1", driver: "mlx5_core", driver_version: null, firmware: null, bus_info: null, mtu: 9000, speed_mbps: 100000, irq_vectors: 8 },
    xdp: { ok: true, mode: "native", reason: null }, found: { pins: "none", program_id: 0, note: null }, gloo: null, mpi: null,
    machine: {} as ProbeReport["machine"], error: null, ...o,
  });

  test("a node without root, or whose driver cannot run the program: each named, with what to do", () => {
    expect(probeRefusal([probe("a1"), probe("a2")], { mode: "native" })).toBeNull();
    const e = probeRefusal([probe("a1", { uid: 1000 }), probe("a2")], { mode: "native" })!;
    expect(e.message).toContain("a1: runs as uid 1000, and attaching XDP needs root");
    expect(e.hint).toContain("run the job as root");
    const d = probeRefusal([probe("a1"), probe("a2", { xdp: { ok: false, mode: null, reason: "attaching in native mode failed (EOPNOTSUPP)" } })], { mode: "native" })!;
    expect(d.message).toContain("a2: ens1 (driver mlx5_core) cannot run the program: attaching in native mode failed");
    expect(d.hint).toContain("--mode generic");
    const i = probeRefusal([probe("a1"), probe("a2", { iface: "ib0" })], { mode: "native" })!;
    expect(i.message).toContain("through different interfaces (a1: ens1, a2: ib0)");
  });

  test("a node without the binary: srun's execve error becomes that node and sbcast", () => {
    const e = probeStepError({ code: 2, stdout: "", timedOut: false, stderr: "slurmstepd-a3: error: execve(): /opt/ainftp: No such file or directory\nsrun: error: a3: task 2: Exited with exit code 2\n" }, 3, ["a1", "a2", "a3", "a4"], 1000);
    expect(e).toBeInstanceOf(AinftpError);
    expect(e.message).toContain("a3 has no /opt/ainftp");
    expect(e.hint).toContain("sbcast /opt/ainftp /opt/ainftp");
  });
});

const why = slurmSkipReason();
if (why) console.warn(`[slurm-bench] SKIPPED the cluster tests: ${why}`);
if (!why && !FULL)
  console.warn("[slurm-bench] Gloo and the mpirun launch are left out here (--baseline tcp,mpi): they run with AINFTP_SLURM_BENCH_FULL=1 (make test-slurm)");

describe.skipIf(why !== null)("bench --slurm on a real SLURM: slurmctld + one slurmd per namespace", () => {
  let c: Cluster;
  beforeAll(async () => {
    ensureBuilt();
    c = startCluster("sbench");
    await waitNodesIdle(c);
  }, 40_000);
  afterAll(() => {
    if (c) stopCluster(c);
  });

  test(`the job script in a 4-node allocation: --size 1MiB,16MiB, every system verified${FULL ? "" : " (Gloo: make test-slurm)"}, JSON and charts, nothing left attached`, async () => {
    const report = join(c.dir, "report");
    const args = `--size 1MiB,16MiB --rounds 3 --no-micro ${FULL ? "" : "--baseline tcp,mpi"}`;
    const id = submit(c, JOB, { AINFTP: BIN, AINFTP_REPORT: report, AINFTP_BENCH_ARGS: args });
    const f = await waitJobEnd(c, id, FULL ? 420_000 : 150_000);
    const out = jobOutput(c, id);
    expect({ state: f.JobState, exit: f.ExitCode, tail: f.JobState === "COMPLETED" ? "" : out.slice(-3000) }).toEqual({ state: "COMPLETED", exit: "0:0", tail: "" });
    // the table: every system, both sizes, verified
    const systems = FULL ? 4 : 3;
    expect(out.match(/^│ verified against the reference sum\s+│(.*)$/gm)?.map((l) => l.match(/│ yes\s/g)?.length)).toEqual([systems, systems]);
    expect(out).toContain(`nodes: SLURM job ${id}: 4 nodes (sn[0-3]), eth0: driver veth, MTU 1500`);
    expect(out).toContain(`on SLURM job ${id}; every node left as found: no program on eth0, no pins`);
    // the JSON: schema-valid, every run verified, the nodes' NIC as read on them
    const j = JSON.parse(readFileSync(join(report, "bench.json"), "utf8"));
    expect(validateBenchJson(j)).toEqual([]);
    expect(j.verified).toBe(true);
    expect(j.runs.map((r: any) => [r.bytes, r.systems.map((s: any) => [s.system, s.status, s.verified])])).toEqual(
      [1 << 20, 16 << 20].map((b) => [b, (FULL ? ["ainftp", "tcp", "gloo", "mpi"] : ["ainftp", "tcp", "mpi"]).map((s) => [s, "ok", true])]),
    );
    expect(j.cluster.nodes.map((n: any) => [n.name, n.addr, n.driver, n.mtu, n.xdp_mode])).toEqual(
      [0, 1, 2, 3].map((i) => [`sn${i}`, `10.213.76.${i + 1}`, "veth", 1500, "native"]),
    );
    expect(j.cluster.left_as_found).toBe(true);
    expect(j.cluster.launch.mpi).toContain("srun --mpi=pmix");
    // bytes on the wire were read on the nodes (a ring moves 2(N-1)/N of the vector each way)
    const tcp16 = j.runs[1].systems.find((s: any) => s.system === "tcp");
    expect(tcp16.wire.tx_bytes_per_host_per_round).toBeGreaterThan(1.4 * (16 << 20));
    for (const f of ["table.txt", "round-time-vs-size.svg", "round-time-vs-size.vl.json"]) expect(existsSync(join(report, f))).toBe(true);
    expect(readFileSync(join(report, "round-time-vs-size.svg"), "utf8")).toContain("<svg");
    for (const s of attachedState(c)) expect(s).toEqual({ n: s.n, xdp: null, pins: false });
  }, FULL ? 480_000 : 180_000);

  test("scancel in the middle of ainftp's step: every node detaches (SIGTERM), no pins, the Epilog finds nothing", async () => {
    const id = submit(c, JOB, { AINFTP: BIN, AINFTP_REPORT: join(c.dir, "r2"), AINFTP_BENCH_ARGS: "--size 16MiB --rounds 100000 --baseline none --no-micro" });
    const up = await until(() => attachedState(c).every((s) => s.xdp !== null && s.pins), 60_000, 100);
    expect(up ? "ainftp running on every node" : jobOutput(c, id)).toBe("ainftp running on every node");
    expect(slurm(c, ["scancel", id]).code).toBe(0);
    const f = await waitJobEnd(c, id, 40_000);
    expect(f.JobState).toBe("CANCELLED");
    for (const s of attachedState(c)) expect(s).toEqual({ n: s.n, xdp: null, pins: false });
    // the bench and its swarms cleaned up themselves: the Epilog, which runs after, had nothing left to remove
    for (let i = 0; i < 4; i++) expect(readFileSync(join(c.dir, `epilog-sn${i}.log`), "utf8").trim().split("\n").at(-1)).toBe("no stale pins");
    expect(jobOutput(c, id)).toContain("ainftp bench: SIGTERM: stopping the running step");
  }, 120_000);

  /** Runs the job script with args; returns the job's state and output once it has ended. */
  async function bench(args: string, timeoutMs = 60_000): Promise<{ state: string; out: string }> {
    const id = submit(c, JOB, { AINFTP: BIN, AINFTP_REPORT: join(c.dir, `r-${Date.now()}`), AINFTP_BENCH_ARGS: args });
    const f = await waitJobEnd(c, id, timeoutMs);
    return { state: f.JobState, out: jobOutput(c, id) };
  }

  test.skipIf(!FULL)("without SLURM's PMIx (AINFTP_BENCH_MPI_LAUNCH=mpirun): Open MPI through mpirun inside the allocation, verified, one rank per node", async () => {
    const report = join(c.dir, "r-mpirun");
    const id = submit(c, JOB, { AINFTP: BIN, AINFTP_REPORT: report, AINFTP_BENCH_MPI_LAUNCH: "mpirun", AINFTP_BENCH_ARGS: "--size 1MiB --rounds 3 --baseline mpi --no-micro" });
    const f = await waitJobEnd(c, id, 90_000);
    expect({ state: f.JobState, tail: f.JobState === "COMPLETED" ? "" : jobOutput(c, id).slice(-2000) }).toEqual({ state: "COMPLETED", tail: "" });
    const j = JSON.parse(readFileSync(join(report, "bench.json"), "utf8"));
    const mpi = j.runs[0].systems.find((s: any) => s.system === "mpi");
    expect([mpi.status, mpi.verified, mpi.detail.ranks.map((r: any) => r.rank)]).toEqual(["ok", true, [0, 1, 2, 3]]);
    expect(j.cluster.launch.mpi).toContain("mpirun inside the allocation");
    expect(mpi.wire.tx_bytes_per_host_per_round).toBeGreaterThan(1.4 * (1 << 20));
  }, 120_000);

  test("a driver without native XDP (a bridge, xbr0, on every node, --iface xbr0): refused before any system runs, each node named, --mode generic offered", async () => {
    for (const n of c.nodes) c.lab.must(n, ["ip", "link", "add", "xbr0", "type", "bridge"]);
    try {
      const { state, out } = await bench("--iface xbr0 --size 1MiB --rounds 3 --baseline tcp --no-micro");
      expect(state).toBe("FAILED");
      expect(out).toMatch(/ainftp: bench --slurm: the nodes cannot run the bench: sn0: xbr0 \(driver bridge\) cannot run the program: .*; sn1: xbr0/);
      expect(out).toContain("hint: --mode generic runs it in the kernel's generic path");
      expect(out).not.toContain("tcp · 4 nodes");
      for (const s of attachedState(c)) expect(s).toEqual({ n: s.n, xdp: null, pins: false });
    } finally {
      for (const n of c.nodes) c.lab.run(n, ["ip", "link", "del", "xbr0"]);
    }
  }, 90_000);

  test("nodes whose MTUs differ (sn2 at 3000): refused, naming each node's MTU", async () => {
    c.lab.must("n2", ["ip", "link", "set", "eth0", "mtu", "3000"]);
    try {
      const { state, out } = await bench("--size 1MiB --rounds 3 --baseline tcp --no-micro");
      expect(state).toBe("FAILED");
      expect(out).toContain("the nodes' MTUs on eth0 differ (sn0: 1500, sn1: 1500, sn2: 3000, sn3: 1500)");
      expect(out).toContain("hint: give every node the same MTU (ip link set dev eth0 mtu M)");
      for (const s of attachedState(c)) expect(s).toEqual({ n: s.n, xdp: null, pins: false });
    } finally {
      c.lab.must("n2", ["ip", "link", "set", "eth0", "mtu", "1500"]);
    }
  }, 90_000);
});
