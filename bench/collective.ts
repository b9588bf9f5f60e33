#!/usr/bin/env bun
// The collective against its peers, measured in one run on this machine:
// `ainftp swarm` on N network namespaces (a bridge, veth links, the XDP
// program attached in native mode), then Gloo and Open MPI all-reduce on the
// same topology (bench/baselines/run.ts). A round's time is the slowest
// rank's, for every system; ratios are against the baselines of this run.
//
//   bun bench/collective.ts --peers 4 --size 1MiB,16MiB --rounds 50 [--mtu 3504] [--rx map,xsk] [--systems gloo,mpi] [--json FILE]
import Table from "cli-table3";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { BIN, canUseNetns, createLab, ensureBuilt } from "../src/lab/netns.ts";
import type { NodeReport } from "../src/node.ts";
import { formatSize, parseSize } from "../src/units.ts";
import { runBaselines, type BaselineSystem } from "../src/bench/baselines.ts";

interface Row {
  system: string;
  bytes: number;
  median_ms: number | null;
  p10: number | null;
  p90: number | null;
  verified: boolean | null;
  note: string;
  detail?: unknown;
}

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
}

const peers = Number(arg("--peers", "4"));
const sizes = arg("--size", "1MiB,16MiB").split(",").map((s) => parseSize(s));
const rounds = Number(arg("--rounds", "30"));
const mtu = Number(arg("--mtu", "1500"));
const systems = arg("--systems", "gloo,mpi").split(",").filter(Boolean) as BaselineSystem[];
const rxPaths = arg("--rx", "map").split(",").filter(Boolean) as ("map" | "xsk")[];
const jsonFile = process.argv.includes("--json") ? arg("--json", "") : "";
const log = (s: string) => process.stderr.write(s + "\n");

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function runAinftp(bytes: number, rx: "map" | "xsk"): Promise<Row> {
  const names = Array.from({ length: peers }, (_, i) => `h${i}`);
  const lab = createLab("bench", names);
  try {
    if (mtu !== 1500) {
      for (const h of names) lab.must(h, ["ip", "link", "set", "eth0", "mtu", String(mtu)]);
      const br = `${lab.id}-br`;
      for (let i = 0; i < peers; i++) Bun.spawnSync(["ip", "-n", br, "link", "set", `p${i}`, "mtu", String(mtu)]);
      Bun.spawnSync(["ip", "-n", br, "link", "set", "br0", "mtu", String(mtu)]);
    }
    const addrs = names.map((h) => lab.node(h).addr).join(",");
    const procs = names.map((h, i) =>
      lab.spawn(h, [BIN, "swarm", "--iface", "eth0", "--peers", addrs, "--rank", String(i), "--synthetic", String(bytes),
        "--rounds", String(rounds), "--verify", "--mode", "native", "--rx", rx, "--json"]),
    );
    const outs = await Promise.all(procs.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text(), err: await new Response(p.stderr).text() })));
    const bad = outs.find((o) => o.code !== 0);
    const system = rx === "map" ? "ainftp" : "ainftp (AF_XDP rx)";
    if (bad) return { system, bytes, median_ms: null, p10: null, p90: null, verified: false, note: `failed: ${bad.err.trim().split("\n").at(-1)}` };
    const reports = outs.map((o) => JSON.parse(o.out) as NodeReport);
    const slowest = reports[0].round_times_ms.map((_, r) => Math.max(...reports.map((x) => x.round_times_ms[r])));
    const s = [...slowest].sort((a, b) => a - b);
    const identical = reports.every((x) => JSON.stringify(x.result_hash) === JSON.stringify(reports[0].result_hash));
    const err = Math.max(...reports.map((x) => x.rel_l2_error_max ?? Infinity));
    const wake = Math.max(...reports.map((x) => x.wakeups_per_packet));
    return {
      system, bytes, median_ms: median(slowest), p10: s[Math.floor(0.1 * s.length)], p90: s[Math.floor(0.9 * s.length)],
      verified: identical && reports.every((x) => x.verified),
      note: `${reports[0].chunk_elems} values/packet, rel L2 ≤ ${err.toExponential(1)}, bit-identical ${identical}, ` +
        `wake-ups ${(wake * 100).toFixed(2)}% of packets, retransmits ${reports.reduce((a, x) => a + x.retransmits, 0)}, ` +
        `result bytes copied by the kernel ${formatSize(reports[0].result_copy_bytes_per_round)}/round`,
      detail: reports.map(({ result_hash, round_times_ms, ...r }) => r),
    };
  } finally {
    lab.destroy();
  }
}

if (!canUseNetns()) {
  console.error("bench/collective.ts needs root (network namespaces, XDP)");
  process.exit(1);
}
ensureBuilt();
const rows: Row[] = [];
for (const rx of rxPaths)
  for (const b of sizes) {
    log(`ainftp (rx ${rx}), ${peers} hosts, ${formatSize(b)}, ${rounds} rounds…`);
    rows.push(await runAinftp(b, rx));
  }
const base = systems.length ? await runBaselines({ peers, sizes, rounds, systems, log }) : [];
for (const r of base)
  rows.push({
    system: r.version ? `${r.system} (${r.version})` : r.system, bytes: r.bytes, median_ms: r.median_ms, p10: r.p10, p90: r.p90,
    verified: r.verified, note: r.status === "ok" ? "" : `${r.status}: ${r.reason ?? ""}`.slice(0, 120),
  });

const t = new Table({ head: ["system", "size", "median ms", "p10", "p90", "verified", "ainftp ÷ this", "note"], style: { head: [], border: [] } });
for (const r of rows) {
  const ours = rows.find((x) => x.system === "ainftp" && x.bytes === r.bytes);
  const ratio = ours?.median_ms && r.median_ms && !r.system.startsWith("ainftp") ? (ours.median_ms / r.median_ms).toFixed(2) : "-";
  const f = (x: number | null) => (x === null ? "n/a" : x.toFixed(2));
  t.push([r.system, formatSize(r.bytes), f(r.median_ms), f(r.p10), f(r.p90), String(r.verified ?? "n/a"), ratio, r.note]);
}
console.log(`All-reduce, ${peers} hosts (network namespaces on a bridge, MTU ${mtu}), ${rounds} rounds; a round is the slowest rank's time`);
console.log(t.toString());
if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ peers, rounds, mtu, rows }, null, 2));
void join;
