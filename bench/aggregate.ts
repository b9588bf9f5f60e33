#!/usr/bin/env bun
// What robust aggregation costs next to the in-kernel sum, measured in one
// run: `ainftp swarm --aggregate MODE` on N network namespaces, every mode on
// the same lab, each verified; a round is the slowest rank's time.
//
//   bun bench/aggregate.ts [--peers 4] [--size 1MiB,16MiB] [--rounds 20] [--mtu 3504] [--modes sum,trimmed-mean,median,cclip] [--sentry] [--json]
import Table from "cli-table3";
import type { NodeReport } from "../src/node.ts";
import { formatSize, parseSize } from "../src/units.ts";
import { BIN, canUseNetns, createLab, ensureBuilt } from "../src/lab/netns.ts";

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
}

const peers = Number(arg("--peers", "4"));
const sizes = arg("--size", "1MiB,16MiB").split(",").map((s) => parseSize(s));
const rounds = Number(arg("--rounds", "20"));
const mtu = Number(arg("--mtu", "3504"));
const modes = arg("--modes", "sum,trimmed-mean,median,cclip").split(",");
const sentry = process.argv.includes("--sentry");
const json = process.argv.includes("--json");
const log = (s: string) => process.stderr.write(s + "\n");

if (!canUseNetns()) {
  log("bench/aggregate.ts needs root and network namespaces");
  process.exit(1);
}
ensureBuilt();

interface Row { mode: string; bytes: number; median_ms: number; p90_ms: number; verified: boolean; rel_l2: number }

const names = Array.from({ length: peers }, (_, i) => `h${i}`);
const lab = createLab("agg", names, { link: "bridge", subnet: "10.213.56" });
const rows: Row[] = [];
try {
  if (mtu !== 1500) {
    for (const h of names) lab.must(h, ["ip", "link", "set", "eth0", "mtu", String(mtu)]);
    const br = `${lab.id}-br`;
    for (let i = 0; i < peers; i++) Bun.spawnSync(["ip", "-n", br, "link", "set", `p${i}`, "mtu", String(mtu)]);
    Bun.spawnSync(["ip", "-n", br, "link", "set", "br0", "mtu", String(mtu)]);
  }
  const addrs = names.map((h) => lab.node(h).addr).join(",");
  for (const bytes of sizes)
    for (const mode of modes) {
      log(`${mode}, ${peers} hosts, ${formatSize(bytes)}, ${rounds} rounds…`);
      const procs = names.map((h, i) =>
        lab.spawn(h, [BIN, "swarm", "--iface", "eth0", "--peers", addrs, "--rank", String(i), "--synthetic", String(bytes),
          "--rounds", String(rounds), "--verify", "--mode", "native", "--aggregate", mode, "--json", ...(sentry ? ["--sentry"] : [])]));
      const outs = await Promise.all(procs.map(async (p) => [await new Response(p.stdout).text(), await p.exited] as const));
      const reps = outs.map(([o, code]) => {
        if (code !== 0) throw new Error(`${mode}: a node failed: ${o.slice(0, 400)}`);
        return JSON.parse(o) as NodeReport;
      });
      // the slowest rank's time, round by round
      const per = reps[0].round_times_ms.map((_, r) => Math.max(...reps.map((j) => j.round_times_ms[r])));
      const s = [...per].sort((a, b) => a - b);
      rows.push({
        mode, bytes, median_ms: s[Math.floor(s.length / 2)], p90_ms: s[Math.floor(s.length * 0.9)],
        verified: reps.every((j) => j.verified), rel_l2: Math.max(...reps.map((j) => j.rel_l2_error_max ?? NaN)),
      });
    }
} finally {
  lab.destroy();
}

if (json) console.log(JSON.stringify({ peers, rounds, mtu, sentry, rows }, null, 2));
else {
  const t = new Table({ head: ["size", "aggregate", "median ms", "p90 ms", "× sum", "verified", "rel L2"], style: { head: [], border: [] } });
  for (const r of rows) {
    const base = rows.find((x) => x.bytes === r.bytes && x.mode === "sum");
    t.push([formatSize(r.bytes), r.mode, r.median_ms.toFixed(2), r.p90_ms.toFixed(2), base ? (r.median_ms / base.median_ms).toFixed(2) : "-", r.verified, r.rel_l2.toExponential(1)]);
  }
  console.log(`Aggregation modes, ${peers} hosts (network namespaces, MTU ${mtu}), ${rounds} rounds${sentry ? ", sentry on" : ""}; a round is the slowest rank's time`);
  console.log(t.toString());
}
