// Faults an operator meets (issue 17): pins left by a deleted namespace and
// found again through a reused inode number, pins of a node killed with
// SIGKILL, a node that exits on an error or on SIGTERM (scancel), and the
// exit codes and JSON of a run whose verification fails. Real `ainftp swarm`
// processes in network namespaces on a bridge.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, readdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { NodeReport } from "../src/node.ts";
import { loadavg } from "node:os";
import { impairToolsPresent, PortImpairer } from "./helpers/impair.ts";
import { BIN, BPFFS, canUseNetns, createLab, ensureBuilt, must, sh, until, type Lab } from "./helpers/netns.ts";

const IF = "eth0";
const MiB = 1 << 20;
const kernel = canUseNetns();
if (!kernel) console.warn("[faults] SKIPPED: needs root and network namespaces (ip netns, nsenter)");

interface Run {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  report: NodeReport | null;
  ms: number;
}

type Proc = Bun.Subprocess<"pipe", "pipe", "pipe">;

function start(lab: Lab, node: string, rank: number, peers: string[], args: string[]): { proc: Proc; json: string; t0: number } {
  const json = join(lab.tmp, `r-${node}-${rank}-${Math.random().toString(36).slice(2)}.json`);
  const proc = lab.spawn(node, [BIN, "swarm", "--iface", IF, "--peers", peers.join(","), "--rank", String(rank), "--json", json, ...args]);
  return { proc, json, t0: performance.now() };
}

async function finish(s: { proc: Proc; json: string; t0: number }, timeoutMs: number): Promise<Run> {
  const timer = setTimeout(() => s.proc.kill(9), timeoutMs);
  const [stdout, stderr] = await Promise.all([new Response(s.proc.stdout).text(), new Response(s.proc.stderr).text()]);
  const code = await s.proc.exited;
  clearTimeout(timer);
  let report: NodeReport | null = null;
  try {
    report = JSON.parse(readFileSync(s.json, "utf8"));
  } catch {}
  return { code: s.proc.signalCode ? null : code, signal: s.proc.signalCode ? String(s.proc.signalCode) : null, stdout, stderr, report, ms: performance.now() - s.t0 };
}

async function job(lab: Lab, nodes: string[], args: string[], o: { timeoutMs?: number; extra?: (rank: number) => string[] } = {}): Promise<Run[]> {
  const peers = nodes.map((n) => lab.node(n).addr);
  const started = nodes.map((n, i) => start(lab, n, i, peers, [...args, ...(o.extra?.(i) ?? [])]));
  return Promise.all(started.map((s) => finish(s, o.timeoutMs ?? 30_000)));
}

const show = (runs: Run[]) => runs.map((r, i) => `rank ${i}: code ${r.code} signal ${r.signal}: ${r.stderr.trim() || "-"}`).join("\n");

/** No XDP program on eth0 and no ainftp pins in the node's namespace. */
function expectNothingAttached(lab: Lab, node: string): void {
  expect({ node, xdp: lab.linkInfo(node, IF).xdp ?? null, pins: existsSync(lab.pinRoot(node)) }).toEqual({ node, xdp: null, pins: false });
}

function expectVerified(runs: Run[], rounds: number): NodeReport[] {
  for (const r of runs) if (r.code !== 0 || !r.report) throw new Error(`a node failed:\n${show(runs)}`);
  const reps = runs.map((r) => r.report!);
  for (const j of reps) {
    expect({ verified: j.verified, lost: j.lost_rounds, hashes: j.result_hash.filter(Boolean).length }).toEqual({ verified: true, lost: 0, hashes: rounds });
    expect(j.result_hash).toEqual(reps[0].result_hash);
  }
  return reps;
}

describe.skipIf(!kernel)("stale pins are replaced, never used", () => {
  const NODES = ["n0", "n1", "n2", "n3"];
  let old: Lab | undefined;
  let lab: Lab | undefined;
  beforeAll(() => ensureBuilt());
  afterAll(() => {
    lab?.destroy();
    old?.destroy();
  });

  test("a deleted namespace's pins, found again by a new namespace with the same inode number: swarm replaces them (one line), a 1 MiB job verifies, nothing is left attached", async () => {
    // attach in 4 namespaces, then delete them with the program attached
    old = createLab("stale", NODES, { subnet: "10.213.71" });
    for (const n of NODES) must([...old.enter(n), BIN, "attach", IF, "--workers", "4"]);
    const oldInos = NODES.map((n) => old!.node(n).ino);
    for (const n of NODES) {
      sh(["ip", "netns", "del", old.node(n).name]);
      old.inos.delete(old.node(n).ino); // their pins now belong to whoever gets the inode next
    }
    await Bun.sleep(500); // namespaces are freed by a kernel worker
    lab = createLab("reuse", NODES, { subnet: "10.213.72" });
    // the kernel hands out the lowest free inode numbers: the new namespaces
    // usually get the old ones (and with them the old pins). Where another
    // process took one first, move the old pins to the new inode: the same
    // state, made by hand.
    const newInos = new Set(NODES.map((n) => lab!.node(n).ino));
    const oldRoot = (ino: number) => join(BPFFS, "ainftp", `netns-${ino}`);
    // old pins that no new namespace of ours found: move them to those that found none
    const spare = oldInos.filter((ino) => !newInos.has(ino) && existsSync(oldRoot(ino)));
    let reused = 0;
    for (const n of NODES) {
      if (existsSync(lab.pinDir(n, IF))) reused++;
      else {
        const from = spare.shift();
        if (from !== undefined && !existsSync(lab.pinRoot(n))) renameSync(oldRoot(from), lab.pinRoot(n));
      }
    }
    for (const ino of spare) rmSync(oldRoot(ino), { recursive: true, force: true });
    console.log(`[faults] ${reused} of 4 new namespaces got a deleted one's inode (and pins) by themselves; the rest were moved there`);
    for (const n of NODES) {
      expect(existsSync(join(lab.pinDir(n, IF), "link"))).toBe(true);
      expect(lab.linkInfo(n, IF).xdp ?? null).toBeNull(); // pins, but no program
      const st = JSON.parse(lab.must(n, [BIN, "status", IF, "--json"]))[0];
      expect(st.stale).toBe(true);
    }
    const runs = await job(lab, NODES, ["--synthetic", String(MiB), "--rounds", "5", "--verify", "--round-timeout", "3000"], { timeoutMs: 40_000 });
    expectVerified(runs, 5);
    for (const r of runs) {
      const lines = r.stderr.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^ainftp: replacing stale pins in \S+netns-\d+\/eth0 \(the link is gone/);
      expect(r.report!.attached_by_us).toBe(true);
    }
    for (const n of NODES) expectNothingAttached(lab, n);
  }, 90_000);

  test("pins of a swarm killed with SIGKILL (link still attached, owner dead): the next swarm replaces them, verifies and leaves nothing attached; SIGTERM (scancel) detaches", async () => {
    lab ??= createLab("reuse", NODES, { subnet: "10.213.72" });
    const nodes = NODES.slice(0, 2);
    const peers = nodes.map((n) => lab!.node(n).addr);
    const started = nodes.map((n, i) => start(lab!, n, i, peers, ["--synthetic", String(MiB), "--rounds", "100000", "--round-timeout", "2000"]));
    expect(await until(() => nodes.every((n) => existsSync(join(lab!.pinDir(n, IF), "link"))), 10_000, 50)).toBe(true);
    await Bun.sleep(500);
    // n0 SIGKILL: its pins stay, the program stays attached; n1 SIGTERM: it detaches
    started[0].proc.kill("SIGKILL");
    started[1].proc.kill("SIGTERM");
    const [k, t] = await Promise.all(started.map((s) => finish(s, 10_000)));
    expect(k.signal).toBe("SIGKILL");
    expect(t.code).toBe(130);
    expectNothingAttached(lab, "n1");
    expect(lab.linkInfo("n0", IF).xdp?.prog?.name).toBe("ainftp_xdp");
    const owner = readdirSync(lab.pinDir("n0", IF)).find((x) => x.startsWith("owner-"));
    expect(owner).toBe(`owner-${started[0].proc.pid}-${owner!.split("-")[2]}`);
    const runs = await job(lab, nodes, ["--synthetic", String(MiB), "--rounds", "3", "--verify"], { timeoutMs: 30_000 });
    expectVerified(runs, 3);
    expect(runs[0].stderr.trim()).toBe(`ainftp: replacing stale pins in ${lab.pinDir("n0", IF)} (their owner (pid ${started[0].proc.pid}) is dead)`);
    expect(runs[1].stderr).toBe("");
    for (const n of nodes) expectNothingAttached(lab, n);
  }, 60_000);

  test("pins made by `ainftp attach` are the operator's: swarm uses them and leaves them", async () => {
    lab ??= createLab("reuse", NODES, { subnet: "10.213.72" });
    const nodes = NODES.slice(0, 2);
    for (const n of nodes) must([...lab.enter(n), BIN, "attach", IF, "--workers", "2"]);
    const runs = await job(lab, nodes, ["--synthetic", "256KiB", "--rounds", "2", "--verify"]);
    expectVerified(runs, 2);
    for (const r of runs) expect({ stderr: r.stderr, byUs: r.report!.attached_by_us }).toEqual({ stderr: "", byUs: false });
    for (const n of nodes) {
      expect(lab.linkInfo(n, IF).xdp?.prog?.name).toBe("ainftp_xdp");
      must([...lab.enter(n), BIN, "detach", IF]);
      expectNothingAttached(lab, n);
    }
  }, 60_000);

  test("a node that exits on an error (its peer never starts) leaves no pins behind", async () => {
    lab ??= createLab("reuse", NODES, { subnet: "10.213.72" });
    const peers = ["n0", "n1"].map((n) => lab!.node(n).addr);
    const r = await finish(start(lab, "n0", 0, peers, ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "500"]), 20_000);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).error).toContain("10.213.72.2");
    expectNothingAttached(lab, "n0");
  }, 30_000);
});

describe.skipIf(!kernel)("exit codes and the JSON of a run that fails", () => {
  let lab: Lab | undefined;
  beforeAll(() => {
    ensureBuilt();
    lab = createLab("exit", ["n0", "n1"], { subnet: "10.213.73" });
  });
  afterAll(() => lab?.destroy());

  test("--verify that fails exits 3 (through the binary's entry point) and the JSON says verified: false; back to back too (checked after the timed rounds)", async () => {
    // rank 1 draws its gradients from another seed: every rank's reference sum is then wrong
    for (const mode of [[], ["--back-to-back"]]) {
      const runs = await job(lab!, ["n0", "n1"], ["--synthetic", "256KiB", "--rounds", "2", "--verify", ...mode], { extra: (k) => (k === 1 ? ["--seed", "2"] : []) });
      for (const r of runs) {
        expect({ mode, code: r.code, verified: r.report?.verified, lost: r.report?.lost_rounds }).toEqual({ mode, code: 3, verified: false, lost: 0 });
        expect(r.report!.rel_l2_error_max!).toBeGreaterThan(1e-3);
        expect(r.stderr).toContain("verification failed");
      }
    }
    // and a good back-to-back run: verified, every round's hash made (after the timed rounds) and the same on both ranks
    const good = await job(lab!, ["n0", "n1"], ["--synthetic", "256KiB", "--rounds", "3", "--verify", "--back-to-back"]);
    for (const r of good) {
      expect({ code: r.code, verified: r.report?.verified }).toEqual({ code: 0, verified: true });
      expect(r.report!.result_hash).toHaveLength(3);
      for (const h of r.report!.result_hash) expect(h).toMatch(/^[0-9a-f]{16}$/);
    }
    expect(good[1].report!.result_hash).toEqual(good[0].report!.result_hash);
  }, 60_000);

  test("a run that completes every round exits 0 without --verify, and says lost_rounds: 0", async () => {
    const runs = await job(lab!, ["n0", "n1"], ["--synthetic", "64KiB", "--rounds", "2"]);
    for (const r of runs) expect({ code: r.code, verified: r.report?.verified, lost: r.report?.lost_rounds }).toEqual({ code: 0, verified: false, lost: 0 });
  }, 40_000);
});

describe.skipIf(!kernel)("a member killed with SIGKILL costs the survivors seconds, not a round timeout", () => {
  let lab: Lab | undefined;
  beforeAll(() => {
    ensureBuilt();
    lab = createLab("kill", ["k0", "k1", "k2", "k3"], { subnet: "10.213.79" });
  });
  afterAll(() => lab?.destroy());

  for (const trial of [1, 2])
    test(`trial ${trial}: 4 hosts, 1 MiB rounds, rank 3 SIGKILLed mid-run: no survivor's round (completed or given up) takes 3 s; the rest go on without it`, async () => {
      const nodes = ["k0", "k1", "k2", "k3"];
      const peers = nodes.map((n) => lab!.node(n).addr);
      // the last trial's victim left its pins (and counters): start afresh
      if (existsSync(lab!.pinDir("k3", IF))) must([...lab!.enter("k3"), BIN, "detach", IF]);
      const started = nodes.map((n, k) => start(lab!, n, k, peers, ["--synthetic", String(MiB), "--rounds", "150", "--verify", "--round-timeout", "10000"]));
      // kill it once rounds run
      const completed = () => {
        const r = lab!.ainftp("k3", ["status", IF, "--json"]);
        return r.code === 0 ? JSON.parse(r.stdout)[0].counters.completed : 0;
      };
      expect(await until(() => existsSync(join(lab!.pinDir("k3", IF), "link")) && completed() > 300, 30_000, 100)).toBe(true);
      await Bun.sleep(300 * trial);
      started[3].proc.kill("SIGKILL");
      const runs = await Promise.all(started.map((s) => finish(s, 90_000)));
      expect(runs[3].signal).toBe("SIGKILL");
      const costs: string[] = [];
      if (process.env.FAULTS_DEBUG) runs.forEach((r, k) => Bun.write(`/tmp/ops-fault-${trial}-r${k}.log`, r.stdout + r.stderr));
      for (const r of runs.slice(0, 3)) {
        const j = r.report;
        if (!j) throw new Error(`a survivor failed: ${r.code} ${r.stderr}`);
        // exit 0, or 4 (and verified false) when a round was lost
        expect({ code: r.code, verified: j.verified }).toEqual(j.lost_rounds ? { code: 4, verified: false } : { code: 0, verified: true });
        expect(j.rel_l2_error_max!).toBeLessThanOrEqual(1e-3);
        const worst = Math.max(...j.round_times_ms, ...j.failed_rounds.map((f) => f.ms));
        costs.push(`r${j.rank}: worst round ${worst.toFixed(0)} ms, ${j.failed_rounds.length} given up${j.failed_rounds.length ? ` (${j.failed_rounds.map((f) => f.ms.toFixed(0)).join(", ")} ms: ${j.failed_rounds[0].error.slice(0, 90)}…)` : ""}`);
        if (worst >= 3000) console.log(`[faults] slow: r${j.rank} failed ${JSON.stringify(j.failed_rounds.slice(0, 4))}`);
        expect(worst).toBeLessThan(3000);
        for (const f of j.failed_rounds) expect(f.missing).toEqual([3]);
        expect(j.swarm.members.find((m) => m.memberRank === 3)?.state).toBe("dead");
        expect(j.straggler.active.at(-1)).toEqual([0, 1, 2]);
      }
      console.log(`[faults] SIGKILL trial ${trial}: ${costs.join("; ")}`);
      // where two survivors both finished a round, the same result
      const [a, b, c] = runs.slice(0, 3).map((r) => r.report!.result_hash);
      a.forEach((h, i) => {
        for (const o of [b, c]) if (h !== null && o[i] !== null) expect(o[i]).toBe(h);
      });
    }, 120_000);
});

// ---- loss costs round-trips, not timer floors -------------------------------------------

describe.skipIf(!kernel || !impairToolsPresent())("3% loss plus 2% duplication at every bridge port costs a round a small multiple of the clean one (goal 2×, asserted 3×)", () => {
  const nodes = ["l0", "l1", "l2", "l3"];
  let lab: Lab | undefined;
  let imp: PortImpairer | undefined;
  beforeAll(() => {
    ensureBuilt();
    lab = createLab("lossy", nodes, { link: "bridge", subnet: "10.213.81" });
    imp = new PortImpairer(lab, nodes);
  });
  afterAll(() => {
    imp?.clear();
    lab?.destroy();
  });

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

  test("4 hosts, 1 MiB × 20 rounds, clean and impaired interleaved (3 pairs): every run verified and bit-identical to the clean one; median impaired round ≤ 3 × median clean round (goal 2×, printed)", async () => {
    const rounds = 20;
    const med: Record<"clean" | "impaired", number[]> = { clean: [], impaired: [] };
    let ref: (string | null)[] | null = null;
    const lines: string[] = [];
    for (let pair = 0; pair < 3; pair++)
      for (const kind of ["clean", "impaired"] as const) {
        if (kind === "clean") imp!.clear();
        else imp!.apply(30_000, 20_000);
        const s0 = kind === "impaired" ? imp!.stats() : null;
        const runs = await job(lab!, nodes, ["--synthetic", String(MiB), "--rounds", String(rounds), "--verify"], { timeoutMs: 120_000 });
        const reps = expectVerified(runs, rounds);
        ref ??= reps[0].result_hash;
        expect(reps[0].result_hash).toEqual(ref);
        const m = median(reps.flatMap((j) => j.round_times_ms));
        med[kind].push(m);
        const extra = s0 ? (() => {
          const s1 = imp!.stats();
          expect(s1.dropped - s0.dropped).toBeGreaterThan(0);
          expect(s1.duplicated - s0.duplicated).toBeGreaterThan(0);
          return ` frames dropped ${s1.dropped - s0.dropped}/${s1.seen - s0.seen}, duplicated ${s1.duplicated - s0.duplicated}`;
        })() : "";
        // small rounds send their data twice under loss, never on a clean link
        const copies = reps.reduce((a, j) => a + j.copies_sent, 0);
        if (kind === "clean") expect(copies).toBe(0);
        else expect(copies).toBeGreaterThan(0);
        lines.push(`${kind} median ${m.toFixed(1)} ms, retransmits ${reps.reduce((a, j) => a + j.retransmits, 0)}, timeouts ${reps.reduce((a, j) => a + j.timeouts, 0)}, copies ${copies}${extra}`);
      }
    imp!.clear();
    const ratio = median(med.impaired) / median(med.clean);
    console.log(`[faults] loss 3% + dup 2%, 1 MiB, 4 hosts: ${lines.join("; ")}; median of medians clean ${median(med.clean).toFixed(1)} ms, impaired ${median(med.impaired).toFixed(1)} ms, ratio ${ratio.toFixed(2)} (load ${loadavg()[0].toFixed(1)})`);
    // Issue 17's goal is ≤ 2×. Before small rounds sent their data twice
    // under loss (recovery.ts redundant), this test gave 1.62 (load 22) and
    // 2.41 (load 17, in the full suite) on the 2-core machine shared with
    // other suites, measure-loss.ts runs 2.2-3.0 (2026-12-05); with the
    // copies, 1.39 in the full suite (2026-12-06, load 2.2). The test
    // asserts 3× (this machine's load moves the clean rounds) and says
    // loudly when the goal is missed; test/sim/redundant.test.ts and
    // test/sim/collective.test.ts guard the mechanisms in virtual time.
    if (ratio > 2) console.warn(`[faults] NOT MET: issue 17's goal of ≤ 2× the clean median (ratio ${ratio.toFixed(2)} at load ${loadavg()[0].toFixed(1)})`);
    expect(ratio).toBeLessThanOrEqual(3);
  }, 600_000);
});
