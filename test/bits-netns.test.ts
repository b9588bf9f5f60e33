// Issue 14 end to end with real processes: `dist/ainftp swarm --bits 8|4`
// on network namespaces (the XDP program attached natively to each veth),
// synthetic gradients checked against the exact sum with --verify (within
// the width's error bound), bit-identical on every rank; a member started
// with another width is refused by every side. Root only.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { NodeReport } from "../src/node.ts";
import { ERROR_BOUND } from "../src/quantize.ts";
import { BIN, canUseNetns, createLab, ensureBuilt, type Lab } from "./helpers/netns.ts";

const kernel = canUseNetns();
if (!kernel) console.log("[bits-netns] skipped: needs root with network namespaces and XDP");
const IF = "eth0";
const NODES = ["b0", "b1", "b2"];
let seq = 0;

interface Run {
  code: number | null;
  stderr: string;
  report: NodeReport | null;
}

async function job(lab: Lab, args: (rank: number) => string[], timeoutMs = 60_000): Promise<Run[]> {
  const peers = NODES.map((n) => lab.node(n).addr).join(",");
  const procs = NODES.map((n, rank) => {
    const file = join(lab.tmp, `bits-${seq++}.json`);
    const p = lab.spawn(n, [BIN, "swarm", "--iface", IF, "--peers", peers, "--rank", String(rank), "--json", file, ...args(rank)]);
    return { p, file };
  });
  const timer = setTimeout(() => procs.forEach(({ p }) => p.kill(9)), timeoutMs);
  try {
    return await Promise.all(procs.map(async ({ p, file }) => {
      // with --json an error is a JSON object on stdout: both streams are the run's words
      const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
      const stderr = err + out;
      const code = await p.exited;
      return { code, stderr, report: existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as NodeReport) : null };
    }));
  } finally {
    clearTimeout(timer);
  }
}

describe.skipIf(!kernel)("swarm --bits 8 and 4 on namespaces (dist/ainftp)", () => {
  let lab: Lab;
  beforeAll(() => {
    ensureBuilt();
    lab = createLab("bits", NODES, { link: "bridge", subnet: "10.213.43" });
  });
  afterEach(() => {
    for (const n of NODES) if (existsSync(lab.pinDir(n, IF))) lab.ainftp(n, ["detach", IF]);
  });
  afterAll(() => lab?.destroy());

  for (const bits of [8, 4] as const) {
    test(`--bits ${bits}, 3 hosts, 2 MiB × 6 rounds: verified within ${ERROR_BOUND[bits]}, bit-identical, ${2 * 720} values per packet`, async () => {
      const runs = await job(lab, () => ["--synthetic", "2MiB", "--rounds", "6", "--verify", "--bits", String(bits)]);
      for (const r of runs) if (r.code !== 0 || !r.report) throw new Error(`a node failed: ${runs.map((x) => `code ${x.code}: ${x.stderr}`).join("\n")}`);
      const reps = runs.map((r) => r.report!);
      for (const j of reps) {
        expect({ bits: j.bits, bound: j.error_bound, verified: j.verified, chunk: j.chunk_elems }).toEqual({ bits, bound: ERROR_BOUND[bits], verified: true, chunk: 2 * 720 });
        expect(j.rel_l2_error_max!).toBeGreaterThan(1e-3); // coarser than int16, as it must be
        expect(j.rel_l2_error_max!).toBeLessThanOrEqual(ERROR_BOUND[bits]);
        expect(j.result_hash).toEqual(reps[0].result_hash);
      }
      console.log(`[bits-netns] --bits ${bits}: relative L2 error ${reps.map((j) => j.rel_l2_error_max!.toExponential(2)).join(" ")}, median round ${reps.map((j) => j.round_ms.median.toFixed(1)).join(" ")} ms`);
    }, 90_000);
  }

  test("a member started with --bits 16 among --bits 8 ones: every side refuses it, naming the width", async () => {
    const runs = await job(lab, (rank) => ["--synthetic", "256KiB", "--rounds", "2", "--open-timeout", "3000", "--bits", rank === 2 ? "16" : "8"], 30_000);
    for (const r of runs) {
      expect(r.code).toBe(1);
      if (!/runs a different job \(--bits (8 here, 16|16 here, 8) there\)/.test(r.stderr)) throw new Error(`stderr: ${r.stderr}`);
    }
    expect(runs[0].stderr).toContain("rank 2 (");
    expect(runs[2].stderr).toMatch(/rank [01] \(/);
  }, 60_000);

  test("--bits 5 is refused before anything starts, naming 16, 8 and 4", () => {
    const r = lab.ainftp(NODES[0], ["swarm", "--iface", IF, "--peers", "10.213.43.1", "--rank", "0", "--synthetic", "1MiB", "--bits", "5"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("--bits 5 is not a width ainftp sums: use one of 16, 8, 4");
  });
});
