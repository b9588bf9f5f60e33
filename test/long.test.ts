// Long gradients (issue 17): an all-reduce longer than one round's capacity
// takes several protocol rounds. Every one of them is verified (the
// per-chunk contributor counts are read as each round ends, before the
// two-bank results map moves on) and none stalls, under 5% loss, with every
// member waited for and with backup workers (--quorum 3 of 4). The maps are
// sized small (`ainftp attach --chunks 64`) so that 10 rounds stay cheap.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { NodeReport } from "../src/node.ts";
import { BIN as BUILT, canUseNetns, createLab, ensureBuilt, must, type Lab } from "./helpers/netns.ts";
import { PortImpairer, impairToolsPresent } from "./helpers/impair.ts";

const BIN = process.env.AINFTP_TEST_BIN ?? BUILT; // (a baseline binary, to show what a test catches)
const NODES = ["l0", "l1", "l2", "l3"];
const CHUNKS = 64;
const ELEMS = 720; // MTU 1500
const ROUND_BYTES = CHUNKS * ELEMS * 4;
const ROUNDS = 4;
const ok = canUseNetns() && impairToolsPresent();
if (!ok) console.warn("[long] SKIPPED: needs root, network namespaces, clang-19, tc and ethtool");

describe.skipIf(!ok)("gradients of several rounds, under 5% loss", () => {
  let lab: Lab;
  let imp: PortImpairer;
  beforeAll(() => {
    ensureBuilt();
    lab = createLab("long", NODES, { subnet: "10.213.78" });
    imp = new PortImpairer(lab, NODES);
    // the operator's pins: maps for 64 chunks, so a round carries 180 KiB
    for (const n of NODES) must([...lab.enter(n), BIN, "attach", "eth0", "--workers", "4", "--chunks", String(CHUNKS)]);
    imp.apply(50_000, 0);
  }, 60_000);
  afterAll(() => {
    imp?.clear();
    lab?.destroy();
  });

  async function job(bytes: number, extra: string[]): Promise<{ code: number; stderr: string; report: NodeReport | null }[]> {
    const peers = NODES.map((n) => lab.node(n).addr).join(",");
    const runs = NODES.map((n, k) => {
      const json = join(lab.tmp, `long-${bytes}-${extra.join("")}-${k}.json`);
      const p = lab.spawn(n, [BIN, "swarm", "--iface", "eth0", "--peers", peers, "--rank", String(k), "--synthetic", String(bytes),
        "--rounds", String(ROUNDS), "--verify", "--round-timeout", "10000", "--json", json, ...extra]);
      return { p, json };
    });
    return Promise.all(runs.map(async ({ p, json }) => {
      const kill = setTimeout(() => p.kill(9), 120_000);
      const [stderr, stdout] = await Promise.all([new Response(p.stderr).text(), new Response(p.stdout).text()]);
      const code = await p.exited;
      clearTimeout(kill);
      // a node that failed says why on stdout (its error as JSON)
      return { code, stderr: code !== 0 && !existsSync(json) ? `${stderr} ${stdout.slice(0, 1200)}` : stderr, report: existsSync(json) ? (JSON.parse(readFileSync(json, "utf8")) as NodeReport) : null };
    }));
  }

  for (const [label, extra] of [["every member", []], ["--quorum 3", ["--quorum", "3"]]] as const)
    for (const times of [1, 2.5, 10]) {
      const bytes = Math.round(times * ROUND_BYTES / 4) * 4;
      // With --quorum 3, 10 protocol rounds per all-reduce and 5% loss, a
      // member could stay 10 s in a round whose result for one chunk was
      // lost to it while the owner went on (1 run in 5-8 on a loaded host):
      // RACK kept sending that contribution again every few hundred ms,
      // which the owner, two rounds on, dropped as stale; and the timer,
      // which asks for the result by name (answered from the owner's cache),
      // skipped every chunk sent again within its interval, so nothing ever
      // asked. The timer now asks by name for every result we lack
      // (recovery.ts retransmit): 15 of 15 runs passed under load 11-13
      // (2026-12-05), and the case is back in make test.
      test(`${times}× one round's capacity (${bytes} bytes, ${Math.ceil(bytes / 4 / ELEMS)} chunks in ${Math.ceil(bytes / ROUND_BYTES)} rounds), ${label}: every round verified, results agree, none lost`, async () => {
        const runs = await job(bytes, [...extra]);
        const show = runs.map((r, k) => `rank ${k}: exit ${r.code} ${r.stderr.trim()}${r.report?.failed_rounds?.length ? ` failed rounds: ${JSON.stringify(r.report.failed_rounds).slice(0, 600)}` : ""}`).join("\n");
        for (const r of runs) {
          if (r.code !== 0 || !r.report) throw new Error(`a node failed:\n${show}`);
          const j = r.report;
          expect({ verified: j.verified, lost: j.lost_rounds }).toEqual({ verified: true, lost: 0 });
          expect(Number.isFinite(j.rel_l2_error_max)).toBe(true);
          expect(j.rel_l2_error_max!).toBeLessThanOrEqual(1e-3);
          // one entry per protocol round in each timed all-reduce
          expect(j.straggler.active.length).toBe(ROUNDS * Math.ceil(bytes / ROUND_BYTES));
        }
        const h = runs[0].report!.result_hash;
        for (const r of runs) expect(r.report!.result_hash).toEqual(h);
        // the loss was met: retransmissions, or (recovery.ts redundant: small
        // rounds send twice once RACK has seen a loss) second copies, which
        // can hide every loss of the timed rounds (a full make test of
        // 2026-12-06 met 0 retransmissions here: both copies of a packet are
        // lost only at 0.25%)
        expect(runs.reduce((a, r) => a + r.report!.retransmits + r.report!.copies_sent, 0)).toBeGreaterThan(0);
      }, 150_000);
    }
});
