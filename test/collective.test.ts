// The collective end to end: real `ainftp swarm` processes (the compiled
// dist/ainftp), one per network namespace on a bridge, each attaching the XDP
// program to its own eth0, running the synthetic workload with --verify and
// writing its JSON report. Checked here:
//   - 2, 4 and 8 hosts, a partial last chunk and a vector that takes several
//     protocol rounds: every rank verified, bit-identical results, nothing
//     retransmitted on a clean network, few wake-ups per packet;
//   - an impaired network (loss, reordering, duplication, jitter): still
//     verified and bit-identical to the clean run, with the recovery visible
//     in the reports;
//   - failures: a member killed mid-round, a member that disagrees about the
//     job, a member that never starts, foreign packets, Ctrl-C.
//
// The impaired network. This kernel has no sch_netem (CONFIG_NET_SCH_NETEM is
// not set), so the tests bring their own equivalent, applied per frame to
// what every node sends, on the bridge side of its veth (the ingress of its
// bridge port, i.e. right after the node's eth0 egress):
//   - a tc-BPF program (clsact ingress, direct action) drops (loss), clones
//     back into the same ingress (duplication) or redirects to a delay veth
//     (delay), each with its own probability, for IPv4/UDP to the ainftp port;
//   - a delay line (a Bun script: AF_PACKET through bun:ffi) in the bridge
//     namespace reads the delay veth, holds each frame for delay ± jitter
//     (uniform, as netem without a distribution table) and sends it into the
//     bridge in due order, so jitter reorders as netem does.
// The nodes' eth0 get tx-udp-segmentation off for these cases, so the UDP GSO
// batches ainftp sends are split into frames before the bridge port and every
// frame is lost, duplicated or delayed on its own (netem on eth0 would act on
// whole GSO batches). Netem's correlation ("reorder 25% 50%") is not modelled:
// each frame draws independently.
import { IMPAIR_BPF } from "./helpers/impair.ts";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PKT_CONTRIB } from "../src/abi.ts";
import type { NodeReport } from "../src/node.ts";
import type { SentryNodeStatus } from "../cli/sentry-node.ts";
import type { SwarmState } from "../src/swarm.ts";
import { datagram } from "../src/packet.ts";
import { delayHostLink } from "../src/bench/straggler.ts";
import { TIMED_ENV } from "../src/bench/timed.ts";
import { BIN, canUseNetns, createLab, ensureBuilt, must, sh, until, type Lab } from "./helpers/netns.ts";

const IF = "eth0";
const PORT = 47000; // swarm's default
const MiB = 1 << 20;
const ELEMS = 720; // chunk elements at MTU 1500

const kernel = canUseNetns();
const have = (cmd: string) => sh(["which", cmd]).code === 0;
const impairTools = kernel && have("clang-19") && have("tc") && have("ethtool") && have("bpftool");

// ---- timings -------------------------------------------------------------------

const timings: [string, number][] = [];
const notes: string[] = [];

async function timed<T>(name: string, f: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await f();
  } finally {
    const ms = performance.now() - t0;
    timings.push([name, ms]);
    console.log(`[collective] ${name}: ${(ms / 1000).toFixed(2)} s`);
  }
}

afterAll(() => {
  if (timings.length === 0 && notes.length === 0) return;
  const w = Math.max(...timings.map(([n]) => n.length));
  const total = timings.reduce((s, [, ms]) => s + ms, 0);
  console.log(
    "[collective] per-case timings\n" +
      timings.map(([n, ms]) => `  ${n.padEnd(w)}  ${(ms / 1000).toFixed(2).padStart(6)} s`).join("\n") +
      `\n  ${"total".padEnd(w)}  ${(total / 1000).toFixed(2).padStart(6)} s` +
      (notes.length ? "\n[collective] measured\n" + notes.map((n) => "  " + n).join("\n") : ""),
  );
});

// ---- running swarm nodes -----------------------------------------------------------

type Proc = Bun.Subprocess<"pipe", "pipe", "pipe">;

interface Run {
  node: string;
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  /** From spawn to exit. */
  ms: number;
  /** Killed by the watchdog: it did not exit in time. */
  timedOut: boolean;
  report: NodeReport | null;
}

interface Started {
  node: string;
  proc: Proc;
  t0: number;
  jsonFile: string;
}

let jsonSeq = 0;
const live = new Set<Proc>();

/** Starts `ainftp swarm` on `node` with rank `rank` of `peers`, the JSON
 * report going to a file (with `json: false` no --json: errors then go to
 * stderr as text; with --json an error is a JSON object on stdout). `extra`
 * comes last (commander keeps the last value of a repeated option, so it may
 * override --peers or --rank). */
function startNode(lab: Lab, node: string, rank: number, peers: string[], args: string[], o: { extra?: string[]; json?: boolean; env?: Record<string, string> } = {}): Started {
  const jsonFile = join(lab.tmp, `report-${jsonSeq++}.json`);
  const json = o.json === false ? [] : ["--json", jsonFile];
  const proc = lab.spawn(node, [BIN, "swarm", "--iface", IF, "--peers", peers.join(","), "--rank", String(rank), ...json, ...args, ...(o.extra ?? [])], { env: o.env });
  live.add(proc);
  proc.exited.then(() => live.delete(proc));
  return { node, proc, t0: performance.now(), jsonFile };
}

/** Waits for a started node; SIGKILLs it if it is still running after timeoutMs. */
async function finish(s: Started, timeoutMs: number): Promise<Run> {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    s.proc.kill(9);
  }, Math.max(0, timeoutMs - (performance.now() - s.t0)));
  const [stdout, stderr] = await Promise.all([new Response(s.proc.stdout).text(), new Response(s.proc.stderr).text()]);
  const code = await s.proc.exited;
  clearTimeout(timer);
  const ms = performance.now() - s.t0;
  let report: NodeReport | null = null;
  if (existsSync(s.jsonFile)) {
    try {
      report = JSON.parse(readFileSync(s.jsonFile, "utf8"));
    } catch {}
  }
  return { node: s.node, code: s.proc.signalCode ? null : code, signal: s.proc.signalCode ? String(s.proc.signalCode) : null, stdout, stderr, ms, timedOut, report };
}

/** Runs one job: a node per entry of `nodes`, rank = position. */
async function job(lab: Lab, nodes: string[], args: string[], o: { timeoutMs?: number; extra?: (rank: number) => string[]; json?: boolean } = {}): Promise<Run[]> {
  const peers = nodes.map((n) => lab.node(n).addr);
  const started = nodes.map((n, i) => startNode(lab, n, i, peers, args, { extra: o.extra?.(i), json: o.json }));
  return Promise.all(started.map((s) => finish(s, o.timeoutMs ?? 30_000)));
}

function describeRun(r: Run): string {
  return `${r.node}: code ${r.code} signal ${r.signal} after ${r.ms.toFixed(0)} ms${r.timedOut ? " (killed: timed out)" : ""}\n` +
    `  stderr: ${r.stderr.trim() || "-"}` + (r.code !== 0 && r.stdout?.trim() ? `\n  stdout: ${r.stdout.trim().slice(0, 2000)}` : "");
}

/** Every rank finished, verified and agreed bit for bit. Returns the reports.
 * `delayed`: the rank behind a delayed link, held to the same standard
 * (until issue 17's RTT-aware membership timeouts, the swarm declared it,
 * or its peers, dead now and then, and a round was given up). */
function expectVerified(runs: Run[], o: { rounds: number; bytes: number; chunkElems?: number; delayed?: number }): NodeReport[] {
  const n = runs.length;
  runs.forEach((r) => {
    if (r.code !== 0 || r.timedOut || !r.report) throw new Error(`a node failed:\n${runs.map(describeRun).join("\n")}`);
    expect(r.stderr).toBe("");
  });
  const lost = (j: NodeReport) => j.lost_rounds > 0;
  const reps = runs.map((r) => r.report!);
  reps.forEach((j, i) => {
    expect({ rank: j.rank, peers: j.peers, elements: j.elements, bytes: j.bytes, rounds: j.rounds, chunk: j.chunk_elems }).toEqual({
      rank: i, peers: n, elements: Math.floor(o.bytes / 4), bytes: 4 * Math.floor(o.bytes / 4), rounds: o.rounds, chunk: o.chunkElems ?? ELEMS,
    });
    expect(j.verified).toBe(!lost(j));
    expect(j.rel_l2_error_max).not.toBeNull();
    // int16 quantization of random floats is never exact, and stays far below 1e-3
    expect(j.rel_l2_error_max!).toBeGreaterThan(0);
    expect(j.rel_l2_error_max!).toBeLessThanOrEqual(1e-3);
    expect(j.saturations).toBe(0);
    expect(j.attached_by_us).toBe(true);
    expect(j.result_hash).toHaveLength(o.rounds);
  });
  const h0 = reps[0].result_hash;
  expect(h0.every((h) => h !== null)).toBe(true);
  for (const j of reps) expect(j.result_hash.map((h, k) => h ?? h0[k])).toEqual(h0);
  // every round's gradients differ, so do the sums
  expect(new Set(h0).size).toBe(o.rounds);
  return reps;
}

/** A clean network: nothing lost, nothing sent twice, few wake-ups.
 * Wake-ups: the job's (wake-ups + socket packets) per XDP packet is at most
 * 1/32 (the program's event batch); one rank alone varies with scheduling on
 * two cores (a rank whose window is blocked on a descheduled peer polls every
 * --pump ms): measured 1/29 .. 1/67 per rank, so each rank gets 1/16. A
 * gradient of a few chunks has too few packets to amortize its wake-ups. */
function expectClean(reps: NodeReport[], o: { wakeups?: boolean } = {}): void {
  for (const j of reps) {
    expect({ rank: j.rank, retransmits: j.retransmits, resends: j.resends, timeouts: j.timeouts, duplicates: j.duplicates, partial: j.straggler.partial_rounds }).toEqual({
      rank: j.rank, retransmits: 0, resends: 0, timeouts: 0, duplicates: 0, partial: 0,
    });
    // a probe (a member's round stalled ≥ 4 ms: a descheduled peer on these
    // 2 shared cores) may be answered with results that were on their way;
    // counted apart from loss recovery, and rare. A probe is answered with
    // every result the prober lacks from that owner at once (20 at 8 hosts
    // and 1 MiB), so the count moves in such steps: 20 of ~5000 results once
    // with 8 hosts in the full suite; 40 of 3,860 (two probes) in sessions 20
    // and 21, also under the full suite; alone, 0-20 a rank in each of three
    // runs. 2% allows two probes and fails a rank that probes every round.
    expect(j.probe_answers).toBeLessThanOrEqual(Math.ceil(0.02 * j.packets_received));
    expect(j.packets_received).toBeGreaterThan(0);
    expect(j.wakeups_per_packet).toBeGreaterThan(0);
    expect(j.wakeups_per_packet).toBeCloseTo((j.wakeups + j.socket_packets) / j.packets_received, 12);
    if (o.wakeups !== false) expect(j.wakeups_per_packet).toBeLessThanOrEqual(1 / 16);
  }
  if (o.wakeups !== false) {
    const woke = reps.reduce((a, j) => a + j.wakeups + j.socket_packets, 0);
    const rx = reps.reduce((a, j) => a + j.packets_received, 0);
    expect(woke / rx).toBeLessThanOrEqual(1 / 32);
  }
}

/** No XDP program on eth0 and no ainftp pins in the node's namespace. */
function expectNothingAttached(lab: Lab, node: string): void {
  expect({ node, xdp: lab.linkInfo(node, IF).xdp ?? null, pins: existsSync(lab.pinRoot(node)) }).toEqual({ node, xdp: null, pins: false });
}

function status(lab: Lab, node: string): any {
  const r = lab.ainftp(node, ["status", IF, "--json"]);
  if (r.code !== 0) throw new Error(`status in ${node} failed: ${r.stderr}`);
  return JSON.parse(r.stdout)[0];
}

/** Kills what a test left running and detaches what it left attached. */
async function cleanup(lab: Lab | undefined, nodes: string[]): Promise<void> {
  for (const p of live) p.kill(9);
  await Promise.all([...live].map((p) => p.exited));
  if (!lab) return;
  for (const n of nodes) if (existsSync(lab.pinDir(n, IF))) lab.ainftp(n, ["detach", IF]);
}

const summary = (reps: NodeReport[]) =>
  reps.map((j) => `r${j.rank}: rt ${j.retransmits} rs ${j.resends} dup ${j.duplicates} to ${j.timeouts} median ${j.round_ms.median.toFixed(1)} ms`).join("; ");

// ---- clean network: sizes, host counts, chunking ----------------------------------------

describe.skipIf(!kernel)("all-reduce on a clean bridge (dist/ainftp swarm per namespace)", () => {
  const NODES = ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "x"];
  let lab: Lab;
  const addr = (n: string) => lab.node(n).addr;

  beforeAll(() => {
    ensureBuilt();
    lab = createLab("coll", NODES, { link: "bridge", subnet: "10.213.40" });
  });
  afterEach(() => cleanup(lab, NODES));
  afterAll(async () => {
    await cleanup(lab, NODES);
    lab?.destroy();
  });

  for (const [n, bytes, rounds] of [[2, MiB, 10], [4, MiB, 10], [8, MiB, 6]] as const) {
    test(`${n} hosts, ${bytes / MiB} MiB × ${rounds} rounds: verified, bit-identical, no retransmits, ≤ 1/32 wake-ups per packet`, async () => {
      const nodes = NODES.slice(0, n);
      const runs = await timed(`clean ${n} hosts ${bytes / MiB} MiB × ${rounds}`, () =>
        job(lab, nodes, ["--synthetic", String(bytes), "--rounds", String(rounds), "--verify"]));
      const reps = expectVerified(runs, { rounds, bytes });
      expectClean(reps);
      const all = reps.reduce((a, j) => a + j.packets_received, 0) / reps.reduce((a, j) => a + j.wakeups + j.socket_packets, 0);
      notes.push(`clean ${n} hosts: wake-ups/packet 1/${all.toFixed(0)} (ranks ${reps.map((j) => `1/${(1 / j.wakeups_per_packet).toFixed(0)}`).join(" ")}); median round ${reps.map((j) => j.round_ms.median.toFixed(1)).join(" ")} ms`);
      for (const x of nodes) expectNothingAttached(lab, x);
    }, 60_000);
  }

  // Generic XDP runs after the stack's GRO, so on a veth link a GSO burst
  // arrives as one frame the program cannot parse; before HELLO_PLAIN every
  // such frame was dropped and recovered by timer (1 MiB: 1085 ms a round).
  test("rank 0 in generic XDP mode, ranks 1-2 native: its peers send it single frames; verified, bit-identical, no retransmits", async () => {
    const nodes = NODES.slice(0, 3);
    const runs = await job(lab, nodes, ["--synthetic", String(MiB), "--rounds", "10", "--verify"], { extra: (i) => ["--mode", i === 0 ? "generic" : "native"] });
    const reps = expectVerified(runs, { rounds: 10, bytes: MiB });
    expectClean(reps, { wakeups: false });
    expect(lab.linkInfo("n0", IF).xdp).toBeUndefined(); // detached again
    notes.push(`generic rank 0: median round ${reps.map((j) => j.round_ms.median.toFixed(1)).join(" ")} ms`);
  }, 60_000);

  test("--slurm: members, rank, job and interface from SLURM's variables (as srun sets them), verified and bit-identical", async () => {
    const nodes = NODES.slice(0, 3);
    const list = nodes.map((n) => addr(n)).join(",");
    const procs = nodes.map((n, rank) => {
      const jsonFile = join(lab.tmp, `slurm-${rank}.json`);
      const env = {
        SLURM_JOB_ID: "4242", SLURM_STEP_ID: "0", SLURM_PROCID: String(rank), SLURM_NTASKS: "3", SLURM_NODEID: String(rank),
        SLURM_JOB_NODELIST: list, SLURM_STEP_NODELIST: list, SLURM_TASKS_PER_NODE: "1(x3)", SLURM_STEP_TASKS_PER_NODE: "1(x3)",
      };
      const p = lab.spawn(n, [BIN, "swarm", "--slurm", "--synthetic", "65536", "--rounds", "3", "--verify", "--json", jsonFile], { env });
      live.add(p);
      return { p, jsonFile };
    });
    const codes = await Promise.all(procs.map(({ p }) => p.exited));
    const errs = await Promise.all(procs.map(({ p }) => new Response(p.stderr).text()));
    expect(codes, errs.join("\n")).toEqual([0, 0, 0]);
    const reps = procs.map(({ jsonFile }) => JSON.parse(readFileSync(jsonFile, "utf8")) as NodeReport);
    reps.forEach((j, rank) => expect({ rank: j.rank, peers: j.peers, verified: j.verified }).toEqual({ rank, peers: 3, verified: true }));
    for (const j of reps) expect(j.result_hash).toEqual(reps[0].result_hash);
    // the log line says where the members came from and which interface routes to them
    errs.forEach((e, rank) => expect(e).toContain(`ainftp: SLURM job 4242.0, 3 tasks on 3 nodes: rank ${rank} of 3 on ${IF}, job `));
  }, 60_000);

  // ---- straggler-proof rounds (issue 6) --------------------------------------------

  test("straggler: 4 hosts, one whose link delays all it sends by 600 ms: the fast hosts' median round stays within 1.5x of the undelayed run; verified, bit-identical everywhere", async () => {
    const nodes = NODES.slice(0, 4);
    const rounds = 15, bytes = 4 * MiB;
    const args = ["--synthetic", String(bytes), "--rounds", String(rounds), "--verify"];
    const fastMedian = (reps: NodeReport[]) => {
      const all = reps.slice(0, 3).flatMap((j) => j.round_times_ms).sort((a, b) => a - b);
      return all[all.length >> 1];
    };
    const base = expectVerified(await timed("straggler: no delay", () => job(lab, nodes, args)), { rounds, bytes });
    // 4 MiB at 16 bits, every member in: each timed round's packets came from the exponents' pass (prepack.ts)
    for (const j of base) expect({ rank: j.rank, prepacked: j.prepacked_rounds }).toEqual({ rank: j.rank, prepacked: rounds });
    const line = await delayHostLink(lab, `${lab.id}-br`, 3, 600, [BIN]);
    let runs: Run[];
    try {
      runs = await timed("straggler: rank 3 delayed 600 ms", () => job(lab, nodes, args, { timeoutMs: 120_000 }));
      expect(line.stats()?.delayed ?? 0).toBeGreaterThan(0);
    } finally {
      line.remove();
    }
    // verified against the contributions each round's results hold, and the
    // delayed host holds the very same results
    const reps = expectVerified(runs, { rounds, bytes, delayed: 3 });
    const t0 = fastMedian(base), t1 = fastMedian(reps);
    notes.push(`straggler: fast hosts' median round ${t0.toFixed(1)} ms undelayed, ${t1.toFixed(1)} ms with rank 3 delayed 600 ms (${(t1 / t0).toFixed(2)}x); ` +
      `rank 3 sat out ${reps[3].straggler.passive_rounds} of ${rounds} timed rounds, late contributions ${reps.map((j) => j.straggler.late_contributions).join("/")}`);
    expect(t1).toBeLessThanOrEqual(1.5 * t0);
    // the delayed host sat out (it sends nothing in time) but kept receiving
    expect(reps[3].straggler.passive_rounds).toBeGreaterThanOrEqual(rounds - 2 - reps[3].lost_rounds);
    for (const j of reps) expect(j.straggler.partial_rounds).toBeGreaterThanOrEqual(rounds - 2 - j.lost_rounds);
    const without3 = reps[0].straggler.active.filter((a) => !a.includes(3)).length;
    expect(without3).toBeGreaterThanOrEqual(rounds - 2);
    for (const a of reps[0].straggler.active) expect(a).toEqual(expect.arrayContaining([0, 1, 2]));
    for (const j of reps) if (!j.lost_rounds) expect(j.straggler.active).toEqual(reps[0].straggler.active);
    // undelayed: nobody left out
    for (const j of base) expect({ rank: j.rank, partial: j.straggler.partial_rounds }).toEqual({ rank: j.rank, partial: 0 });
  }, 240_000);

  test("straggler back to speed: once the delay is gone, the host's contributions count again", async () => {
    const nodes = NODES.slice(0, 4);
    const rounds = 12;
    const line = await delayHostLink(lab, `${lab.id}-br`, 3, 600, [BIN]);
    let runs: Run[];
    try {
      const peers = nodes.map(addr);
      // each rank marks the end of its warm-up in this directory (src/bench/timed.ts)
      const marks = join(lab.tmp, "straggler-back-timed");
      mkdirSync(marks, { recursive: true });
      const started = nodes.map((x, i) => startNode(lab, x, i, peers, ["--synthetic", String(MiB), "--rounds", String(rounds), "--verify"], { env: { [TIMED_ENV]: marks } }));
      // a few delayed timed rounds (each barrier waits for the host: about
      // 3 s an iteration, measured alone), then the link heals. Counted from
      // rank 0's first timed round, not from the start: a fixed 8 s from the
      // start healed it after one timed round once the warm-up round had its
      // barriers too (session 21); 3 s after the mark did as well
      const markBy = performance.now() + 60_000;
      while (!existsSync(join(marks, "0")) && performance.now() < markBy) await Bun.sleep(50);
      expect(existsSync(join(marks, "0"))).toBe(true);
      await Bun.sleep(6000);
      line.remove();
      runs = await timed("straggler back to speed", () => Promise.all(started.map((s) => finish(s, 120_000))));
    } finally {
      line.remove();
    }
    const reps = expectVerified(runs, { rounds, bytes: MiB, delayed: 3 });
    const active = reps[0].straggler.active;
    const sat = active.map((a) => !a.includes(3));
    notes.push(`straggler back: rank 3 in the timed rounds' plans: ${active.map((a) => (a.includes(3) ? "in" : "out")).join(" ")}`);
    // out while delayed, in again at the end (a loaded machine may still
    // leave the healed host out of one late round: "… in in out" seen once)
    expect(sat.slice(0, 2)).toEqual([true, true]);
    expect(active.slice(-3).filter((a) => a.length === 4 && a.includes(3)).length).toBeGreaterThanOrEqual(2);
  }, 240_000);

  test("--quorum 3 (backup workers) with no deadline: rounds go as soon as three are in, without the delayed host", async () => {
    const nodes = NODES.slice(0, 4);
    const line = await delayHostLink(lab, `${lab.id}-br`, 3, 600, [BIN]);
    try {
      // --deadline 0: no grace ends a wait, so only the quorum (or the swarm
      // down-ranking the host) can keep a round from waiting 600 ms for it
      const reps = expectVerified(await timed("quorum 3, rank 3 delayed", () =>
        job(lab, nodes, ["--synthetic", String(MiB), "--rounds", "4", "--verify", "--deadline", "0", "--quorum", "3"], { timeoutMs: 120_000 })), { rounds: 4, bytes: MiB, delayed: 3 });
      for (const j of reps) {
        if (!j.lost_rounds) expect(j.straggler.active).toEqual([[0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2]]);
        // A leader waits up to 1 s for a member that asks for rounds two or
        // more behind (issue 17: a member left out must not fall past the
        // caches), until the swarm holds the delayed member slow (about
        // 1-2 s): one early round may take that wait (670 ms seen once in a
        // full run); every other goes as soon as three are in.
        const slow = j.round_times_ms.filter((t) => t >= 400);
        if (slow.length) console.warn(`[collective] quorum 3: rank ${j.rank} had a round of ${slow.map((t) => t.toFixed(0)).join(", ")} ms (a leader waited for the member behind before the swarm held it slow)`);
        expect(slow.length).toBeLessThanOrEqual(1);
        expect(Math.max(...j.round_times_ms)).toBeLessThan(1200);
      }
      expect(reps[3].straggler.passive_rounds).toBe(4 - reps[3].lost_rounds);
      notes.push(`quorum: rank 3 delayed 600 ms, --quorum 3 --deadline 0: rounds ${reps[0].round_times_ms.map((t) => t.toFixed(1)).join(", ")} ms`);
    } finally {
      line.remove();
    }
  }, 240_000);

  // ---- the sentry (issue 5): the inline filter in a live job ----------------------

  test("sentry on, 4 honest hosts, 1 MiB × 10: verified against the contributions each result holds, bit-identical, few dropped", async () => {
    const nodes = NODES.slice(0, 4);
    const runs = await timed("sentry 4 honest", () => job(lab, nodes, ["--synthetic", String(MiB), "--rounds", "10", "--verify", "--sentry"]));
    const reps = expectVerified(runs, { rounds: 10, bytes: MiB });
    for (const j of reps) {
      expect(j.sentry).not.toBeNull();
      expect(j.sentry!.quarantined).toEqual([]);
      expect(j.sentry!.unverified_chunks).toBe(0);
    }
    // honest traffic: the gates (3.5 sigma) drop almost nothing once calibrated
    const chunks = Math.ceil(MiB / 4 / ELEMS);
    const dropped = reps.reduce((a, j) => a + j.sentry!.rejected_by_rank.reduce((x, y) => x + y, 0), 0);
    expect(dropped).toBeLessThanOrEqual(0.02 * 10 * chunks * 3);
    notes.push(`sentry, 4 honest hosts: ${dropped} of ${10 * chunks * 3} contributions dropped (false positives)`);
  }, 60_000);

  test("sentry: rank 3 sends its gradient × -10; the others drop it, quarantine it, and their results hold only the honest contributions", async () => {
    const nodes = NODES.slice(0, 4);
    const runs = await timed("sentry poisoned", () =>
      job(lab, nodes, ["--synthetic", String(MiB), "--rounds", "10", "--verify", "--sentry", "--poison", "3:-10"]));
    const reps = expectVerified(runs, { rounds: 10, bytes: MiB });
    for (const j of reps.slice(0, 3)) {
      // strikes in the warm-up round and the first timed rounds, then quarantine (not_member drops)
      expect(j.sentry!.quarantined).toEqual([3]);
      expect(j.sentry!.rejected_by_rank[3]).toBeGreaterThan(0);
      for (const k of [0, 1, 2]) expect(j.sentry!.rejected_by_rank[k]).toBeLessThanOrEqual(j.sentry!.rejected_by_rank[3]);
    }
    // every chunk owned by an honest host lacks rank 3's contribution
    const chunks = Math.ceil(MiB / 4 / ELEMS);
    const honestOwned = [...Array(chunks).keys()].filter((c) => c % 4 !== 3).length;
    for (const j of reps) expect(j.sentry!.excluded_contributions).toBeGreaterThanOrEqual(10 * honestOwned);
    notes.push(`sentry, rank 3 × -10: dropped by rank 0's gates ${reps[0].sentry!.rejected_by_rank.join("/")}, contributions left out ${reps[0].sentry!.excluded_contributions}`);
  }, 60_000);

  test("sentry: rank 3 sends × 10000 (its exponents 13 powers of two above the others'): left out of the shared scale, so no one's precision drops; dropped and quarantined", async () => {
    const nodes = NODES.slice(0, 4);
    // not --verify: rank 3's own values saturate at the honest scale (counted),
    // and a gate that lets one such clipped contribution through while it
    // warms up leaves a sum no reference here can replay
    const runs = await timed("sentry exps poisoned", () =>
      job(lab, nodes, ["--synthetic", String(MiB), "--rounds", "10", "--sentry", "--poison", "3:10000"]));
    for (const r of runs) if (r.code !== 0 || !r.report) throw new Error(`a node failed:\n${runs.map(describeRun).join("\n")}`);
    const reps = runs.map((r) => r.report!);
    // every rank leads some rounds, and each left rank 3's exponents out then
    for (const j of reps) expect(j.sentry!.exps_left_out).toBeGreaterThan(0);
    for (const j of reps.slice(0, 3)) expect(j.sentry!.quarantined).toEqual([3]);
    expect(reps[3].saturations).toBeGreaterThan(0);
    for (const j of reps) expect(j.result_hash).toEqual(reps[0].result_hash);
    notes.push(`sentry, rank 3 × 10000: exponents left out ${reps.map((j) => j.sentry!.exps_left_out).join("/")}`);
  }, 60_000);

  test("ainftp sentry status on a running node shows the quarantine; sentry readmit ends it (the gates then drop the poisoner again)", async () => {
    // four hosts: each chunk then has three contributors, two of them honest
    // (with three hosts a poisoner is half of every chunk's contributors and
    // no robust statistic can tell which half is honest)
    const nodes = NODES.slice(0, 4);
    const peers = nodes.map((n) => addr(n));
    const started = nodes.map((n, i) =>
      startNode(lab, n, i, peers, ["--synthetic", "262144", "--rounds", "3000", "--sentry", "--poison", "2:-10"]));
    const status = () => {
      const r = lab.ainftp("n0", ["sentry", "status", IF, "--json"]);
      return r.code === 0 ? (JSON.parse(r.stdout)[0] as SentryNodeStatus) : null;
    };
    const until = async (what: string, ok: (s: SentryNodeStatus) => boolean, ms = 20_000) => {
      const end = performance.now() + ms;
      for (;;) {
        const s = status();
        if (s && ok(s)) return s;
        if (performance.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(s)}`);
        await Bun.sleep(100);
      }
    };
    try {
      const q = await until("rank 2 quarantined", (s) => s.workers[2]?.quarantined === true);
      expect(q.enabled).toBe(true);
      expect(q.node!.rank).toBe(0);
      expect(q.workers.map((w) => w.address)).toEqual(peers);
      expect(q.workers[2].rejected).toBeGreaterThan(0);
      expect(q.workers[1].quarantined).toBe(false);
      expect(q.node!.gates.chunks).toBeGreaterThan(0);
      const text = lab.ainftp("n0", ["sentry", "status", IF]);
      expect(text.stdout).toContain("sentry on, job 0, this node is rank 0");
      expect(text.stdout).toMatch(/2\s+│?\s*10\.213\.40\.3.*yes/);
      // quarantined: dropped as not_member, the gates no longer see it
      const frozen = status()!.workers[2].rejected;
      await Bun.sleep(300);
      expect(status()!.workers[2].rejected).toBe(frozen);
      // the swarm's view counts the rounds rank 2 was left out of
      await until("rank 2's missed rounds in swarm status", () => {
        const r = lab.ainftp("n0", ["swarm", "status", IF, "--json"]);
        const m = r.code === 0 ? (JSON.parse(r.stdout)[0] as SwarmState).members : [];
        return (m[2]?.roundsMissed ?? 0) > 0 && m[1]?.roundsMissed === 0 && m[1]?.roundsContributed > 0;
      }, 5_000);
      const r = lab.ainftp("n0", ["sentry", "readmit", IF, "2"]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain("re-admit rank 2");
      await until("rank 2 judged again", (s) => s.workers[2].rejected > frozen);
    } finally {
      for (const s of started) s.proc.kill("SIGINT");
      await Promise.all(started.map((s) => s.proc.exited));
    }
    // the node removed its published state on the way out
    expect(lab.ainftp("n0", ["sentry", "status", IF]).code).not.toBe(0);
  }, 60_000);

  // ---- robust aggregation (issue 5): contributions handed to userspace ----------------

  for (const mode of ["trimmed-mean", "median", "cclip"] as const)
    test(`--aggregate ${mode}, 4 hosts, 1 MiB × 5, rank 3 sends × -10: verified against the same combiner over the exact gradients, bit-identical`, async () => {
      const nodes = NODES.slice(0, 4);
      const runs = await timed(`aggregate ${mode}`, () =>
        job(lab, nodes, ["--synthetic", String(MiB), "--rounds", "5", "--verify", "--aggregate", mode, "--poison", "3:-10", "--keep-attached"]));
      const reps = expectVerified(runs, { rounds: 5, bytes: MiB });
      for (const j of reps) {
        expect(j.sentry).toBeNull();
        // every result holds all four contributions: the combiner, not a filter, handles the poisoner
        expect(j.rel_l2_error_max!).toBeLessThan(1e-3);
      }
      for (const n of nodes) {
        // the program copied the contributions to userspace and summed none of them
        const c = status(lab, n).counters;
        expect(c.contribs_ring).toBeGreaterThanOrEqual(6 * Math.floor(Math.ceil(MiB / 4 / ELEMS) / 4) * 3);
        expect(c.elems_summed).toBe(0);
        expect(lab.ainftp(n, ["detach", IF]).code).toBe(0);
      }
    }, 60_000);

  /** Protocol rounds per allreduce of `chunks` chunks, maps sized min(8192, chunks). */
  const protoRounds = (chunks: number) => Math.ceil(chunks / Math.min(8192, chunks));

  /** Runs with --keep-attached and checks the program's own view of the job:
   * every chunk of every protocol round completed once, and the round window
   * ended where the number of protocol rounds says. */
  async function exactJob(name: string, nodes: string[], bytes: number, rounds: number, chunkElems: number) {
    const args = ["--synthetic", String(bytes), "--rounds", String(rounds), "--verify", "--keep-attached"];
    if (chunkElems !== ELEMS) args.push("--chunk-elems", String(chunkElems));
    const runs = await timed(name, () => job(lab, nodes, args));
    const reps = expectVerified(runs, { rounds, bytes, chunkElems });
    expectClean(reps, { wakeups: bytes >= 256 * 1024 });
    const n = nodes.length;
    const chunks = Math.ceil(bytes / 4 / chunkElems);
    const k = protoRounds(chunks);
    // one warm-up round and the timed ones, each: barrier (1 chunk), x, barrier
    const protocolRounds = (rounds + 1) * (k + 2);
    const chunksDone = (rounds + 1) * (chunks + 2);
    const st = nodes.map((x) => status(lab, x));
    let completed = 0, summed = 0;
    st.forEach((s, i) => {
      expect({ node: nodes[i], chunks: s.chunks, chunkElems: s.config.chunkElems, members: s.config.members, jobId: s.config.jobId }).toEqual({
        node: nodes[i], chunks: Math.min(8192, chunks), chunkElems, members: n, jobId: 0,
      });
      // the first round is the attached base (0) + 2; the window ends at the last one
      expect(s.config.roundBase).toBe(2 + protocolRounds - 1);
      // every rank sees every chunk once: its own as completed slots, the others as results
      expect(s.counters.events).toBe(chunksDone);
      for (const c of ["duplicate", "stale_round", "future_round", "foreign_job", "not_member", "ringbuf_full", "mal_count", "mal_chunk"])
        expect({ node: nodes[i], [c]: s.counters[c] }).toEqual({ node: nodes[i], [c]: 0 });
      // duplicate results only from probe answers (expectClean), rare
      expect(s.counters.result_dup).toBeLessThanOrEqual(Math.ceil(0.01 * chunksDone));
      completed += s.counters.completed;
      summed += s.counters.summed;
    });
    expect(completed).toBe(chunksDone);
    expect(summed).toBe((n - 1) * chunksDone);
    for (const x of nodes) {
      const d = lab.ainftp(x, ["detach", IF]);
      expect(d.code).toBe(0);
      expectNothingAttached(lab, x);
    }
    return reps;
  }

  test("a partial last chunk (1002884 bytes: 348 full chunks + 161 floats, 349 chunks over 3 owners) and a gradient smaller than one chunk", async () => {
    const bytes = 348 * ELEMS * 4 + 161 * 4;
    expect(bytes).toBe(1002884);
    await exactJob("partial chunk 3 hosts 1002884 B × 5", NODES.slice(0, 3), bytes, 5, ELEMS);
    // 250 floats: one short chunk, owned by rank 0 alone
    await exactJob("one short chunk 3 hosts 1000 B × 5", NODES.slice(0, 3), 1000, 5, ELEMS);
  }, 60_000);

  test("--chunk-elems 64 with 2.5 MiB + 40 B: 10241 chunks, two protocol rounds per allreduce (8192 + 2049, the last chunk partial)", async () => {
    const bytes = 2.5 * MiB + 40;
    const chunks = Math.ceil(bytes / 4 / 64);
    expect({ chunks, k: protoRounds(chunks), last: (bytes / 4) % 64 }).toEqual({ chunks: 10241, k: 2, last: 10 });
    await exactJob("multi-round 3 hosts 2.5 MiB chunk 64 × 3", NODES.slice(0, 3), bytes, 3, 64);
  }, 60_000);

  // ---- failures ----------------------------------------------------------------------

  test("a member SIGKILLed mid-run: the swarm declares it dead and the survivors keep going without it, verified and bit-identical", async () => {
    const nodes = NODES.slice(0, 3);
    const peers = nodes.map(addr);
    const rounds = 300;
    await timed("failure: member killed mid-run", async () => {
      const started = nodes.map((x, i) =>
        startNode(lab, x, i, peers, ["--synthetic", String(MiB), "--rounds", String(rounds), "--verify", "--round-timeout", "2000"]));
      // rounds are running on the victim: its program has summed contributions
      const running = await until(() => existsSync(lab.pinDir("n2", IF)) && status(lab, "n2").counters.completed > 500, 8000, 100);
      expect(running).toBe(true);
      await Bun.sleep(300);
      const killedAt = performance.now();
      started[2].proc.kill("SIGKILL");
      const runs = await Promise.all(started.map((s) => finish(s, 50_000)));
      expect(runs[2].signal).toBe("SIGKILL");
      const reps = runs.slice(0, 2).map((r) => {
        // a lost round (issue 17): exit 4, verified false, lost_rounds says how many
        const lost = r.report?.lost_rounds ?? -1;
        // (any other exit shows the node's last words, stderr and stdout: --json prints the error there)
        const said = r.code === 0 || r.code === 4 ? "" : `${r.stderr.trim().split("\n").slice(-4).join(" | ")} || stdout: ${r.stdout.trim().split("\n").slice(-12).join(" | ")}`;
        expect({ node: r.node, timedOut: r.timedOut, code: r.code, verified: r.report?.verified, said }).toEqual({ node: r.node, timedOut: false, code: lost ? 4 : 0, verified: lost === 0, said: "" });
        expect(r.stderr).toBe(lost ? `ainftp: ${lost} of ${rounds} rounds lost (members died during them; see failed_rounds): not verified\n` : "");
        expect(r.report!.result_hash.filter((h) => h === null).length).toBe(lost);
        return r.report!;
      });
      for (const j of reps) {
        expect(j.rel_l2_error_max!).toBeLessThanOrEqual(1e-3);
        // the round in flight may be lost (the victim led it or owned chunks of it): at most that one
        expect(j.failed_rounds.length).toBeLessThanOrEqual(1);
        for (const f of j.failed_rounds) expect(f.missing).toEqual([2]);
        expect(j.swarm.members.find((m) => m.memberRank === 2)?.state).toBe("dead");
        expect(j.swarm.changes.some((c) => c.rank === 2 && c.kind === "dead")).toBe(true);
        // it went on: most rounds after the kill held the two survivors only
        const without2 = j.straggler.active.filter((a) => a.length === 2 && !a.includes(2)).length;
        expect(without2).toBeGreaterThan(rounds / 4);
        expect(j.straggler.active.at(-1)).toEqual([0, 1]);
      }
      // where both finished a round, the same result
      reps[0].result_hash.forEach((h, i) => {
        if (h !== null && reps[1].result_hash[i] !== null) expect(h).toBe(reps[1].result_hash[i]);
      });
      const after = Math.max(...runs.slice(0, 2).map((r, i) => r.ms - (killedAt - started[i].t0)));
      notes.push(`killed member: survivors went on, ${reps.map((j) => j.straggler.active.filter((a) => a.length === 2).length).join("/")} of ${rounds} timed rounds without it, ` +
        `${reps.map((j) => j.failed_rounds.length).join("/")} lost; done ${(after / 1000).toFixed(1)} s after the kill`);
      // the survivors detached themselves; the killed one left its pinned link
      expectNothingAttached(lab, "n0");
      expectNothingAttached(lab, "n1");
      expect(existsSync(lab.pinDir("n2", IF))).toBe(true);
      expect(lab.linkInfo("n2", IF).xdp?.prog?.name).toBe("ainftp_xdp");
      expect(lab.ainftp("n2", ["detach", IF]).code).toBe(0);
      expectNothingAttached(lab, "n2");
    });
  }, 90_000);

  test("one host given the peers in another order: the others refuse it at start, saying the job differs", async () => {
    const nodes = NODES.slice(0, 3);
    const [a0, a1, a2] = nodes.map(addr);
    const runs = await timed("failure: peer order differs", () =>
      job(lab, nodes, ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "3000"], {
        timeoutMs: 15_000,
        json: false,
        extra: (i) => (i === 2 ? ["--peers", [a1, a0, a2].join(",")] : []),
      }));
    for (const r of runs.slice(0, 2)) {
      expect({ node: r.node, code: r.code, timedOut: r.timedOut }).toEqual({ node: r.node, code: 1, timedOut: false });
      expect(r.stderr).toContain(`ainftp: open communicator: rank 2 (${a2}) runs a different job: ours `);
      expect(r.stderr).toContain(`"peers":["${a0}","${a1}","${a2}"]`);
      expect(r.stderr).toContain(`theirs {"v":1,"job":0,"peers":["${a1}","${a0}","${a2}"]`);
      expect(r.stderr).toContain("hint: every member must get the same --peers (same order), --job and chunk size");
      // detected from the first HELLO, not by waiting out --open-timeout (30 s);
      // the time includes starting and attaching, on two shared cores
      expect(r.ms).toBeLessThan(5000);
    }
    // the disagreeing host fails too
    expect({ code: runs[2].code, timedOut: runs[2].timedOut }).toEqual({ code: 1, timedOut: false });
    expect(runs[2].stderr).toStartWith("ainftp: open communicator: ");
    for (const x of nodes) expectNothingAttached(lab, x);
  }, 60_000);

  // A HELLO of another job, or from a member whose --peers order differs, is
  // compared and reported, not dropped (found by this suite, fixed).
  test("every member is told the job differs: another --job, and the host whose --peers order disagrees", async () => {
    await timed("failure: job differs (all sides)", async () => {
      const two = NODES.slice(0, 2);
      const jobRuns = await job(lab, two, ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "1500"], {
        timeoutMs: 15_000,
        json: false,
        extra: (i) => ["--job", String(i === 0 ? 1 : 2)],
      });
      for (const r of jobRuns) {
        expect({ node: r.node, code: r.code }).toEqual({ node: r.node, code: 1 });
        expect(r.stderr).toContain("runs a different job");
      }
      const three = NODES.slice(0, 3);
      const [a0, a1, a2] = three.map(addr);
      const orderRuns = await job(lab, three, ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "1500"], {
        timeoutMs: 15_000,
        json: false,
        extra: (i) => (i === 2 ? ["--peers", [a1, a0, a2].join(",")] : []),
      });
      expect(orderRuns[2].code).toBe(1);
      expect(orderRuns[2].stderr).toContain("runs a different job");
    });
  }, 60_000);

  // The member that spots a mismatch keeps greeting for a second, so one that
  // starts later learns it too (found by this suite, fixed).
  test("a member that starts after its peer with another chunk size is also told the job differs", async () => {
    await timed("failure: late member, chunk size differs", async () => {
      const peers = [addr("n0"), addr("n1")];
      const first = startNode(lab, "n0", 0, peers, ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "5000"], { json: false });
      expect(await until(() => existsSync(lab.pinDir("n0", IF)), 5000)).toBe(true);
      await Bun.sleep(300);
      const late = startNode(lab, "n1", 1, peers, ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "1500", "--chunk-elems", "360"], { json: false });
      const [r0, r1] = await Promise.all([finish(first, 15_000), finish(late, 15_000)]);
      expect(r0.code).toBe(1);
      expect(r0.stderr).toContain(`rank 1 (${peers[1]}) runs a different job`);
      expect(r1.code).toBe(1);
      expect(r1.stderr).toContain(`rank 0 (${peers[0]}) runs a different job`);
    });
  }, 60_000);

  test("a member that never starts: the others fail at open within --open-timeout, naming it", async () => {
    const nodes = NODES.slice(0, 3);
    const peers = nodes.map(addr);
    await timed("failure: member never starts", async () => {
      const started = [0, 1].map((i) => startNode(lab, nodes[i], i, peers, ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "1500"], { json: false }));
      const runs = await Promise.all(started.map((s) => finish(s, 15_000)));
      for (const r of runs) {
        expect({ node: r.node, code: r.code, timedOut: r.timedOut }).toEqual({ node: r.node, code: 1, timedOut: false });
        expect(r.stderr).toContain(`ainftp: open communicator: no answer from rank 2 (${peers[2]}) within 1500 ms\n`);
        expect(r.stderr).toContain("hint: start ainftp on every member with the same --peers and --job");
        // the member that did start is not blamed
        expect(r.stderr).not.toMatch(/rank [01] \(/);
        expect(r.ms).toBeGreaterThan(1500);
        expect(r.ms).toBeLessThan(1500 + 4000);
        expect(r.report).toBeNull();
        expectNothingAttached(lab, r.node);
      }
      expectNothingAttached(lab, "n2");
    });
  }, 60_000);

  test("packets of another job and of a non-member rank, sent by a 4th host mid-job, are dropped and counted; the job verifies", async () => {
    const nodes = NODES.slice(0, 3);
    const peers = nodes.map(addr);
    const FOREIGN_JOB = 0x5a5a;
    const FOREIGN = 30, NON_MEMBER = 20;
    const packets: string[] = [];
    for (let i = 0; i < FOREIGN; i++)
      packets.push(Buffer.from(datagram({ type: PKT_CONTRIB, jobId: FOREIGN_JOB, round: 2 + i, chunk: i % 8, rank: 1 }, new Int16Array(ELEMS).fill(1000))).toString("base64"));
    for (let i = 0; i < NON_MEMBER; i++)
      packets.push(Buffer.from(datagram({ type: PKT_CONTRIB, jobId: 0, round: 2 + i, chunk: i % 8, rank: 3 + (i % 5) }, new Int16Array(ELEMS).fill(-1000))).toString("base64"));
    const spec = join(lab.tmp, "foreign.json");
    writeFileSync(spec, JSON.stringify({ addr: peers[0], port: PORT, gapMs: 8, packets }));
    const sender = join(lab.tmp, "sender.ts");
    writeFileSync(sender, SENDER);
    await timed("foreign packets during a 3-host job", async () => {
      const rounds = 80;
      const started = nodes.map((x, i) =>
        startNode(lab, x, i, peers, ["--synthetic", String(MiB), "--rounds", String(rounds), "--verify", "--keep-attached"]));
      expect(await until(() => nodes.every((x) => existsSync(lab.pinDir(x, IF))) && status(lab, "n0").counters.completed > 0, 8000, 50)).toBe(true);
      const s = lab.spawn("x", ["bun", sender, spec]);
      const [out, err, code] = [await new Response(s.stdout).text(), await new Response(s.stderr).text(), await s.exited];
      const sentAt = performance.now();
      expect(`${code} ${out.trim()} ${err}`).toBe(`0 ${FOREIGN + NON_MEMBER} `);
      const runs = await Promise.all(started.map((x) => finish(x, 60_000)));
      // all of it arrived while the job ran
      expect(started[0].t0 + runs[0].ms).toBeGreaterThan(sentAt);
      expectVerified(runs, { rounds, bytes: MiB });
      const st = nodes.map((x) => status(lab, x));
      expect({ foreign_job: st[0].counters.foreign_job, mal_rank: st[0].counters.mal_rank }).toEqual({ foreign_job: FOREIGN, mal_rank: NON_MEMBER });
      for (const x of st.slice(1)) expect({ foreign_job: x.counters.foreign_job, mal_rank: x.counters.mal_rank }).toEqual({ foreign_job: 0, mal_rank: 0 });
      // nothing of theirs was summed: every summed contribution is the job's own
      const chunks = Math.ceil(MiB / 4 / ELEMS);
      const chunksDone = (rounds + 1) * (chunks + 2); // (a warm-up round and the timed ones, each between barriers)
      expect(st.reduce((a, x) => a + x.counters.summed, 0)).toBe(2 * chunksDone);
      expect(st.reduce((a, x) => a + x.counters.completed, 0)).toBe(chunksDone);
      for (const x of nodes) {
        expect(lab.ainftp(x, ["detach", IF]).code).toBe(0);
        expectNothingAttached(lab, x);
      }
    });
  }, 60_000);

  test("Ctrl-C (SIGINT) while waiting for peers at open: exits 130 and leaves nothing attached", async () => {
    const peers = [addr("n0"), addr("n1")];
    await timed("SIGINT at open", async () => {
      const s = startNode(lab, "n0", 0, peers, ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "20000"]);
      expect(await until(() => existsSync(lab.pinDir("n0", IF)) && lab.linkInfo("n0", IF).xdp !== undefined, 8000)).toBe(true);
      await Bun.sleep(300);
      const at = performance.now();
      s.proc.kill("SIGINT");
      const r = await finish(s, 15_000);
      expect({ code: r.code, timedOut: r.timedOut }).toEqual({ code: 130, timedOut: false });
      expect(r.ms - (at - s.t0)).toBeLessThan(2000);
      expectNothingAttached(lab, "n0");
    });
  }, 60_000);

  // Rounds return to the event loop every 25 ms, so Ctrl-C reaches the
  // handler mid-round (found by this suite, fixed).
  test("Ctrl-C (SIGINT) mid-round on a node that attached the program: exits 130 promptly and leaves nothing attached", async () => {
    const peers = [addr("n0"), addr("n1")];
    await timed("SIGINT mid-round", async () => {
      const started = [0, 1].map((i) => startNode(lab, `n${i}`, i, peers, ["--synthetic", String(MiB), "--rounds", "100000", "--round-timeout", "2000"]));
      expect(await until(() => existsSync(lab.pinDir("n0", IF)) && status(lab, "n0").counters.completed > 500, 8000, 100)).toBe(true);
      const at = performance.now();
      started[0].proc.kill("SIGINT");
      const r = await finish(started[0], at - started[0].t0 + 4000);
      expect({ code: r.code, timedOut: r.timedOut }).toEqual({ code: 130, timedOut: false });
      expectNothingAttached(lab, "n0");
    });
  }, 60_000);
});

// Sends base64 datagrams to addr:port, one every gapMs; prints how many.
const SENDER = `
const spec = await Bun.file(process.argv[2]).json();
const sock = await Bun.udpSocket({});
let sent = 0;
for (const b64 of spec.packets) {
  const bytes = Buffer.from(b64, "base64");
  let ok = false;
  for (let i = 0; i < 200 && !ok; i++) {
    ok = sock.send(bytes, spec.port, spec.addr);
    if (!ok) await Bun.sleep(1);
  }
  if (!ok) { console.error("send failed after", sent); process.exit(1); }
  sent++;
  await Bun.sleep(spec.gapMs);
}
sock.close();
console.log(sent);
`;

// ---- impaired network ---------------------------------------------------------------------


// The delay line: frames from RX (AF_PACKET) held for delay ± jitter ms
// (uniform), then sent on TX in due order. Writes its counters as JSON to
// STATS every 100 ms. Ends when killed, when PARENT is gone or when an
// interface is.
const DELAY_LINE = `
import { writeFileSync } from "node:fs";
import { dlopen, FFIType as T, ptr } from "bun:ffi";
const [rxName, txName, delayS, jitterS, statsFile, parentS] = process.argv.slice(2);
const parent = Number(parentS);
const delay = Number(delayS), jitter = Number(jitterS);
const { symbols: c } = dlopen("libc.so.6", {
  socket: { args: [T.i32, T.i32, T.i32], returns: T.i32 },
  bind: { args: [T.i32, T.ptr, T.u32], returns: T.i32 },
  setsockopt: { args: [T.i32, T.i32, T.i32, T.ptr, T.u32], returns: T.i32 },
  getsockopt: { args: [T.i32, T.i32, T.i32, T.ptr, T.ptr], returns: T.i32 },
  recv: { args: [T.i32, T.ptr, T.u64, T.i32], returns: T.i64 },
  send: { args: [T.i32, T.ptr, T.u64, T.i32], returns: T.i64 },
  poll: { args: [T.ptr, T.u64, T.i32], returns: T.i32 },
  if_nametoindex: { args: [T.ptr], returns: T.u32 },
});
const AF_PACKET = 17, SOCK_RAW = 3, ETH_P_ALL_BE = 0x0300, MSG_DONTWAIT = 0x40, SOL_PACKET = 263, SOL_SOCKET = 1;
function open(name) {
  const idx = c.if_nametoindex(Buffer.from(name + "\\0"));
  if (!idx) throw new Error("no interface " + name);
  const fd = c.socket(AF_PACKET, SOCK_RAW, ETH_P_ALL_BE);
  if (fd < 0) throw new Error("socket failed");
  const sll = new Uint8Array(20);
  const v = new DataView(sll.buffer);
  v.setUint16(0, AF_PACKET, true);
  v.setUint16(2, ETH_P_ALL_BE, true);
  v.setInt32(4, idx, true);
  if (c.bind(fd, ptr(sll), 20) !== 0) throw new Error("bind " + name + " failed");
  c.setsockopt(fd, SOL_PACKET, 23 /* PACKET_IGNORE_OUTGOING */, ptr(new Int32Array([1])), 4);
  // a burst of a whole window must not overflow the socket
  const big = new Int32Array([32 << 20]);
  if (c.setsockopt(fd, SOL_SOCKET, 33 /* SO_RCVBUFFORCE */, ptr(big), 4) !== 0) throw new Error("SO_RCVBUFFORCE failed");
  if (c.setsockopt(fd, SOL_SOCKET, 32 /* SO_SNDBUFFORCE */, ptr(big), 4) !== 0) throw new Error("SO_SNDBUFFORCE failed");
  return fd;
}
const rx = open(rxName), tx = open(txName);
const buf = new Uint8Array(65536);
const pfd = new Uint8Array(8);
new DataView(pfd.buffer).setInt32(0, rx, true);
new DataView(pfd.buffer).setInt16(4, 1 /* POLLIN */, true);
const q = [];
const st = { held: 0, sent: 0, failed: 0, overtaken: 0, socketDrops: 0 };
const pst = new Uint32Array(2), pstLen = new Uint32Array([8]);
let lastStats = 0;
process.stdout.write("ready\\n");
for (;;) {
  for (;;) {
    const n = Number(c.recv(rx, ptr(buf), buf.length, MSG_DONTWAIT));
    if (n <= 0) break;
    const f = buf.slice(0, n);
    // IPv4/UDP: checksum 0 (none): the frame may carry a partial checksum
    if (n >= 42 && f[12] === 8 && f[13] === 0 && f[23] === 17) { const l4 = 14 + (f[14] & 15) * 4; f[l4 + 6] = 0; f[l4 + 7] = 0; }
    const due = performance.now() + delay + (jitter ? (Math.random() * 2 - 1) * jitter : 0);
    let i = q.length;
    while (i > 0 && q[i - 1].due > due) i--;
    if (i < q.length) st.overtaken++;
    q.splice(i, 0, { due, f });
    st.held++;
  }
  const now = performance.now();
  while (q.length && q[0].due <= now) {
    const { f } = q.shift();
    if (Number(c.send(tx, ptr(f), f.length, 0)) === f.length) st.sent++;
    else st.failed++;
  }
  if (now - lastStats >= 100) {
    lastStats = now;
    // never outlive the test run or the lab
    try { process.kill(parent, 0); } catch { process.exit(0); }
    if (!c.if_nametoindex(Buffer.from(rxName + "\0")) || !c.if_nametoindex(Buffer.from(txName + "\0"))) process.exit(0);
    c.getsockopt(rx, SOL_PACKET, 6 /* PACKET_STATISTICS */, ptr(pst), ptr(pstLen));
    st.socketDrops += pst[1];
    writeFileSync(statsFile, JSON.stringify({ ...st, queued: q.length }));
  }
  const wait = q.length ? Math.max(0, Math.ceil(q[0].due - performance.now())) : 100;
  c.poll(ptr(pfd), 1, Math.min(wait, 100));
}
`;

interface Impairment {
  lossPpm?: number;
  dupPpm?: number;
  /** Share of frames through the delay line. */
  delayPpm?: number;
  delayMs?: number;
  jitterMs?: number;
}

interface ImpairStats {
  seen: number;
  dropped: number;
  duplicated: number;
  delayed: number;
}

interface LineStats {
  held: number;
  sent: number;
  failed: number;
  overtaken: number;
  socketDrops: number;
  queued: number;
}

/** Applies an Impairment to every frame the nodes send (see the header). */
class Impairer {
  readonly br: string;
  private line: { kill(sig?: number): void } | null = null;
  private lineStats = "";
  private objs = new Map<string, string>();
  private dqIndex = 0;

  constructor(readonly lab: Lab, readonly nodes: string[]) {
    this.br = `${lab.id}-br`;
  }

  private inBr(cmd: string[]): string {
    return must(["nsenter", `--net=/run/netns/${this.br}`, ...cmd]);
  }

  /** Once per lab: the delay veth, the script, per-frame segmentation on the nodes. */
  setup(): void {
    must(["ip", "-n", this.br, "link", "add", "dq0", "type", "veth", "peer", "name", "dq1"]);
    for (const d of ["dq0", "dq1"]) must(["ip", "-n", this.br, "link", "set", d, "up"]);
    this.inBr(["ethtool", "-K", "dq0", "tx", "off", "gso", "off", "tso", "off"]);
    this.dqIndex = JSON.parse(must(["ip", "-n", this.br, "-j", "link", "show", "dq0"]))[0].ifindex;
    for (const n of this.nodes) this.lab.must(n, ["ethtool", "-K", IF, "tx-udp-segmentation", "off"]);
    writeFileSync(join(this.lab.tmp, "impair.bpf.c"), IMPAIR_BPF);
    writeFileSync(join(this.lab.tmp, "delayline.ts"), DELAY_LINE);
  }

  private object(i: Required<Impairment>): string {
    const key = `${i.lossPpm}-${i.dupPpm}-${i.delayPpm}`;
    let obj = this.objs.get(key);
    if (!obj) {
      obj = join(this.lab.tmp, `impair-${key}.o`);
      must(["clang-19", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", `-I/usr/include/${process.arch === "arm64" ? "aarch64" : "x86_64"}-linux-gnu`,
        `-DPORT=${PORT}`, `-DLOSS_PPM=${i.lossPpm}`, `-DDUP_PPM=${i.dupPpm}`, `-DDELAY_PPM=${i.delayPpm}`, `-DDELAY_IFINDEX=${this.dqIndex}`,
        "-c", join(this.lab.tmp, "impair.bpf.c"), "-o", obj]);
      this.objs.set(key, obj);
    }
    return obj;
  }

  async apply(imp: Impairment): Promise<void> {
    this.clear();
    const i: Required<Impairment> = { lossPpm: 0, dupPpm: 0, delayPpm: 0, delayMs: 0, jitterMs: 0, ...imp };
    const obj = this.object(i);
    this.nodes.forEach((_, k) => {
      this.inBr(["tc", "qdisc", "add", "dev", `p${k}`, "clsact"]);
      this.inBr(["tc", "filter", "add", "dev", `p${k}`, "ingress", "bpf", "da", "obj", obj, "sec", "tc"]);
    });
    if (i.delayPpm) {
      this.lineStats = join(this.lab.tmp, `line-${jsonSeq++}.json`);
      const p = Bun.spawn(["nsenter", `--net=/run/netns/${this.br}`, "bun", join(this.lab.tmp, "delayline.ts"), "dq1", "br0", String(i.delayMs), String(i.jitterMs), this.lineStats, String(process.pid)], {
        stdin: "ignore", stdout: "pipe", stderr: "pipe",
      });
      this.line = p;
      const reader = p.stdout.getReader();
      const first = await Promise.race([reader.read(), Bun.sleep(10_000).then(() => ({ value: undefined, done: true }))]);
      reader.releaseLock();
      if (!first.value || !new TextDecoder().decode(first.value).startsWith("ready")) {
        p.kill(9);
        throw new Error(`delay line did not start: ${await new Response(p.stderr).text()}`);
      }
    }
  }

  /** Per bridge port: what the tc program did. */
  stats(): ImpairStats[] {
    return this.nodes.map((_, k) => {
      const f = JSON.parse(this.inBr(["tc", "-j", "filter", "show", "dev", `p${k}`, "ingress"])).find((x: any) => x.options?.prog);
      const prog = JSON.parse(must(["bpftool", "-j", "prog", "show", "id", String(f.options.prog.id)]));
      const mapId = (prog.map_ids as number[]).find((id) => JSON.parse(must(["bpftool", "-j", "map", "show", "id", String(id)])).name === "impair_stats");
      const entries = JSON.parse(must(["bpftool", "-j", "map", "dump", "id", String(mapId)]));
      const v = entries.map((e: any) =>
        e.formatted ? Number(e.formatted.value) : (e.value as string[]).reduceRight((a, h) => a * 256 + parseInt(h, 16), 0));
      return { seen: v[0], dropped: v[1], duplicated: v[2], delayed: v[3] };
    });
  }

  async lineStatsNow(): Promise<LineStats | null> {
    if (!this.line) return null;
    await Bun.sleep(250); // a fresh snapshot
    return JSON.parse(readFileSync(this.lineStats, "utf8"));
  }

  clear(): void {
    this.line?.kill(9);
    this.line = null;
    this.nodes.forEach((_, k) => sh(["nsenter", `--net=/run/netns/${this.br}`, "tc", "qdisc", "del", "dev", `p${k}`, "clsact"]));
  }
}

describe.skipIf(!impairTools)("all-reduce on an impaired network (netem equivalent: tc-BPF + delay line)", () => {
  const NODES = ["m0", "m1", "m2"];
  const BYTES = MiB;
  const ROUNDS = 10;
  let lab: Lab;
  let imp: Impairer;
  /** Result hashes of the loss-free run: every impaired run must match them. */
  let reference: (string | null)[] = [];

  beforeAll(() => {
    ensureBuilt();
    lab = createLab("colm", NODES, { link: "bridge", subnet: "10.213.41" });
    imp = new Impairer(lab, NODES);
    imp.setup();
  });
  afterEach(async () => {
    imp?.clear();
    await cleanup(lab, NODES);
  });
  afterAll(async () => {
    imp?.clear();
    await cleanup(lab, NODES);
    lab?.destroy();
  });

  async function impaired(name: string, what: Impairment, rounds = ROUNDS) {
    return timed(name, async () => {
      await imp.apply(what);
      // --deadline 0: these cases check loss recovery bit for bit against the
      // clean run; a deadline may rightly leave out a member whose exponents
      // were lost twice (a partial round, verified but not identical)
      const runs = await job(lab, NODES, ["--synthetic", String(BYTES), "--rounds", String(rounds), "--verify", "--round-timeout", "30000", "--deadline", "0"], { timeoutMs: 60_000 });
      const line = await imp.lineStatsNow();
      const st = imp.stats();
      imp.clear();
      const reps = expectVerified(runs, { rounds, bytes: BYTES });
      // bit-identical to the loss-free run (the reference run sets it)
      if (reference.length) expect(reps[0].result_hash).toEqual(reference.slice(0, rounds));
      for (const n of NODES) expectNothingAttached(lab, n);
      const sum = (k: keyof NodeReport) => reps.reduce((a, j) => a + (j[k] as number), 0);
      const tot = st.reduce((a, s) => ({ seen: a.seen + s.seen, dropped: a.dropped + s.dropped, duplicated: a.duplicated + s.duplicated, delayed: a.delayed + s.delayed }));
      notes.push(`${name}: frames ${tot.seen}, dropped ${tot.dropped}, duplicated ${tot.duplicated}, delayed ${tot.delayed}` +
        (line ? `, delay line held ${line.held} sent ${line.sent} overtaken ${line.overtaken} failed ${line.failed} socket drops ${line.socketDrops}` : "") +
        ` | retransmits ${sum("retransmits")} resends ${sum("resends")} duplicates ${sum("duplicates")} timeouts ${sum("timeouts")} | ${summary(reps)}`);
      // the program saw every frame of every node
      for (const s of st) expect(s.seen).toBeGreaterThan(1000);
      return { reps, st: tot, line, sum };
    });
  }

  test("reference: the same job through a pass-through filter, no loss, no retransmits", async () => {
    const { reps, st } = await impaired("impaired: none (pass-through)", {});
    expect(st.dropped + st.duplicated + st.delayed).toBe(0);
    expect(reps.map((j) => [j.retransmits, j.resends, j.timeouts, j.duplicates])).toEqual(reps.map(() => [0, 0, 0, 0]));
    reference = reps[0].result_hash;
  }, 60_000);

  test("1% loss: verified, bit-identical, the losses recovered (retransmits, or the second copies of small rounds)", async () => {
    expect(reference).toHaveLength(ROUNDS);
    const { st, sum } = await impaired("impaired: 1% loss", { lossPpm: 10_000 });
    expect(st.dropped).toBeGreaterThan(0);
    // Once RACK has seen a loss, a round this small sends everything twice
    // (recovery.ts redundant), and a lost frame's copy arrives instead: one
    // run of 313 drops needed no retransmission at all (session 15). Either
    // way the loss path ran: retransmissions, or copies (none without loss,
    // the reference test checks)
    expect(sum("retransmits") + sum("duplicates")).toBeGreaterThan(0);
    // (no timeout needed: RACK and the probe recover 1% loss in round
    // trips; the full retransmission timer may never fire, issue 17)
  }, 90_000);

  test("5% loss: verified, bit-identical, retransmits and resends > 0", async () => {
    expect(reference).toHaveLength(ROUNDS);
    const { st, sum } = await impaired("impaired: 5% loss", { lossPpm: 50_000 }, 8);
    expect(st.dropped).toBeGreaterThan(st.seen * 0.02);
    expect(sum("retransmits")).toBeGreaterThan(0);
    expect(sum("resends")).toBeGreaterThan(0);
  }, 90_000);

  test("25% reordering (75% of frames delayed 1 ms, the rest overtake them): verified, bit-identical", async () => {
    expect(reference).toHaveLength(ROUNDS);
    const { st, line } = await impaired("impaired: delay 1ms reorder 25%", { delayPpm: 750_000, delayMs: 1 });
    expect(st.delayed).toBeGreaterThan(st.seen * 0.6);
    expect(st.delayed).toBeLessThan(st.seen * 0.9);
    // every delayed frame went through the line, in order (the others overtook them)
    expect(line).toMatchObject({ held: st.delayed, sent: st.delayed, failed: 0, socketDrops: 0, overtaken: 0, queued: 0 });
  }, 90_000);

  test("5% duplication: verified, bit-identical, every rank counts duplicates", async () => {
    expect(reference).toHaveLength(ROUNDS);
    const { reps, st } = await impaired("impaired: 5% duplication", { dupPpm: 50_000 });
    expect(st.duplicated).toBeGreaterThan(0);
    for (const j of reps) expect({ rank: j.rank, dup: j.duplicates > 0 }).toEqual({ rank: j.rank, dup: true });
  }, 90_000);

  test("20 ms ± 10 ms jitter on every frame (reorders, as netem does): verified, bit-identical", async () => {
    expect(reference).toHaveLength(ROUNDS);
    const { st, line } = await impaired("impaired: delay 20ms 10ms", { delayPpm: 1_000_000, delayMs: 20, jitterMs: 10 });
    expect(st.delayed).toBe(st.seen);
    expect(line).toMatchObject({ held: st.delayed, sent: st.delayed, failed: 0, socketDrops: 0, queued: 0 });
    // jitter reorders: most frames were passed by a later one
    expect(line!.overtaken).toBeGreaterThan(st.seen / 4);
  }, 90_000);

  // ---- the swarm's membership (issue 6), on idle serving nodes -----------------------
  // Nodes started with --serve run no round until a trainer asks: what travels
  // is the membership protocol alone (heartbeats on the job's port).

  const startServing = (node: string) =>
    startNode(lab, node, NODES.indexOf(node), NODES.map((n) => lab.node(n).addr), ["--serve", "--socket", join(lab.tmp, `${node}.sock`)]);
  const swarmView = (node: string): SwarmState | null => {
    const r = lab.ainftp(node, ["swarm", "status", IF, "--json"]);
    return r.code === 0 ? (JSON.parse(r.stdout)[0] as SwarmState) : null;
  };
  const stateOf = (node: string, rank: number) => swarmView(node)?.members.find((m) => m.memberRank === rank)?.state ?? null;
  async function until(what: string, ok: () => boolean, ms: number): Promise<number> {
    const t0 = performance.now();
    while (!ok()) {
      if (performance.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
      await Bun.sleep(50);
    }
    return performance.now() - t0;
  }
  const allAlive = (node: string) => swarmView(node)?.members.every((m) => m.state === "alive") ?? false;
  async function stopAll(started: Started[]) {
    for (const s of started) if (s.proc.exitCode === null) s.proc.kill("SIGTERM");
    await Promise.all(started.map((s) => s.proc.exited));
  }

  test("swarm: a member SIGKILLed is declared dead by the others within 3 s; restarted, it rejoins", async () => {
    const started = NODES.map(startServing);
    try {
      await until("every member alive everywhere", () => NODES.every(allAlive), 20_000);
      const victim = started[2];
      victim.proc.kill(9);
      await victim.proc.exited;
      const ms = await until("rank 2 dead on m0 and m1", () => stateOf("m0", 2) === "dead" && stateOf("m1", 2) === "dead", 10_000);
      notes.push(`swarm: a killed member declared dead on both others after ${ms.toFixed(0)} ms (status polled every 50 ms)`);
      expect(ms).toBeLessThan(3000);
      started[2] = startServing("m2");
      const back = await until("rank 2 alive again on m0 and m1", () => stateOf("m0", 2) === "alive" && stateOf("m1", 2) === "alive", 20_000);
      notes.push(`swarm: the restarted member alive again on both others after ${back.toFixed(0)} ms (its node rejoined the job first)`);
    } finally {
      await stopAll(started);
    }
  }, 60_000);

  test("swarm: 10% of every node's frames lost, no member declared dead (30 s here; AINFTP_SWARM_SOAK_S=300 by hand)", async () => {
    await imp.apply({ lossPpm: 100_000 });
    const started = NODES.map(startServing);
    const soakS = Number(process.env.AINFTP_SWARM_SOAK_S ?? 30);
    try {
      await until("every member alive everywhere", () => NODES.every(allAlive), 30_000);
      const t0 = performance.now();
      let suspects = 0;
      while (performance.now() - t0 < soakS * 1000) {
        await Bun.sleep(1000);
        for (const n of NODES) expect(started[NODES.indexOf(n)].proc.exitCode).toBeNull();
      }
      const views = NODES.map((n) => swarmView(n)!);
      for (const v of views) {
        expect(v.changes.filter((c) => c.kind === "dead"), `rank ${v.rank} declared someone dead`).toEqual([]);
        suspects += v.changes.filter((c) => c.kind === "suspect").length;
        expect(v.members.every((m) => m.state === "alive" || m.state === "suspect")).toBe(true);
      }
      const st = imp.stats();
      const dropped = st.reduce((a, x) => a + x.dropped, 0), seen = st.reduce((a, x) => a + x.seen, 0);
      expect(dropped).toBeGreaterThan(seen * 0.05);
      notes.push(`swarm: ${soakS} s at 10% loss (${dropped} of ${seen} frames dropped): no member declared dead; ${suspects} suspicions, each cleared`);
    } finally {
      imp.clear();
      await stopAll(started);
    }
  }, 60_000 + Number(process.env.AINFTP_SWARM_SOAK_S ?? 30) * 1000);

  test("swarm: a member whose process is starved (SIGSTOP 1.5 s, three times) accuses no healthy peer", async () => {
    const started = NODES.map(startServing);
    try {
      await until("every member alive everywhere", () => NODES.every(allAlive), 20_000);
      for (let i = 0; i < 3; i++) {
        started[2].proc.kill("SIGSTOP");
        await Bun.sleep(1500);
        started[2].proc.kill("SIGCONT");
        await Bun.sleep(1000);
      }
      await Bun.sleep(1500);
      const v = swarmView("m2")!;
      // its own timers ran late: it doubted itself (Lifeguard), not the others
      const accused = v.changes.filter((c) => c.rank !== 2 && (c.kind === "suspect" || c.kind === "dead"));
      expect(accused).toEqual([]);
      expect(v.members.filter((m) => m.memberRank !== 2).every((m) => m.state === "alive")).toBe(true);
      notes.push(`swarm: starved member: accused none; the others saw it ${swarmView("m0")!.changes.filter((c) => c.rank === 2).map((c) => c.kind).join(", ") || "unchanged"}`);
    } finally {
      await stopAll(started);
    }
  }, 60_000);
});
