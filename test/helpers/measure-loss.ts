// Measures what loss and duplication cost a 4-host job: the same job clean
// and with LOSS% loss + DUP% duplication at every bridge port, interleaved
// (clean, impaired, clean, impaired …) so both see the same machine load.
// Prints per run the median round over all ranks, retransmits, and whether
// every rank verified and agreed bit for bit with the clean run.
//   bun test/helpers/measure-loss.ts [--sizes 1MiB,16MiB] [--rounds 30] [--reps 2] [--loss 3] [--dup 2] [--hosts 4] [--mtu 9000]
//     [--trace DIR]: runs with AINFTP_TRACE_RECOVERY=1, keeps each rank's
//     stderr as DIR/<size>-bin<b>-<kind>-<rep>-r<rank>.log and prints, per
//     run, where the data rounds' time went (breakdown(): when RACK first
//     fired, how long the round ran on after its last RACK, whether an
//     owner's slot (a lost contribution) or a result lost to one member
//     ended the round, and whether RACK, the probe or the full timer found
//     the last loss)
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { NodeReport } from "../../src/node.ts";
import { parseSize } from "../../src/units.ts";
import { BIN, createLab, ensureBuilt } from "./netns.ts";
import { PortImpairer } from "./impair.ts";

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const sizes = arg("sizes", "1MiB,16MiB").split(",");
const rounds = Number(arg("rounds", "30"));
const reps = Number(arg("reps", "2"));
const loss = Number(arg("loss", "3")), dup = Number(arg("dup", "2"));
const hosts = Number(arg("hosts", "4"));
// --mtu M: the links' MTU (default the lab's 1500; the bench runs 9000)
const mtu = arg("mtu", "") ? Number(arg("mtu", "")) : undefined;
const extra = arg("extra", "").split(" ").filter(Boolean);
// --bins A,B: alternate binaries (a baseline and a change), each clean and impaired, interleaved
const bins = arg("bins", BIN).split(",");
const kinds = arg("kinds", "clean,impaired").split(",") as ("clean" | "impaired")[];
const traceDir = arg("trace", "");
if (traceDir) mkdirSync(traceDir, { recursive: true });

ensureBuilt();
const nodes = Array.from({ length: hosts }, (_, i) => `h${i}`);
const lab = createLab("mloss", nodes, { link: "bridge", subnet: "10.213.77", mtu });
const imp = new PortImpairer(lab, nodes);
/** One rank's trace line of one data round (round.ts, AINFTP_TRACE_RECOVERY). */
interface TracedRound { plan: number; own: number; done: number; racks: number[]; polls: number; timers: number }

/** Where the data rounds' time went, from the ranks' trace lines (see the header). */
function breakdown(logs: string[]): string {
  const rounds = new Map<number, TracedRound[]>();
  const re = /^\[trace\] r(\d+) rank \d+ leader \d+ n(\d+) (.*) own@([\d.]*) last@([\d.]*) served \S+ done@([\d.]+)/;
  for (const log of logs)
    for (const line of log.split("\n")) {
      const m = re.exec(line);
      if (!m || Number(m[2]) < 2) continue; // (barrier rounds carry one value)
      const body = m[3];
      const t = (k: string) => [...body.matchAll(new RegExp(`${k}@([\\d.]+)`, "g"))].map((x) => Number(x[1]));
      const r = { plan: t("plan")[0] ?? 0, own: Number(m[4] || 0), done: Number(m[6]), racks: t("rack"), polls: t("poll").length, timers: t("timer").length };
      rounds.set(Number(m[1]), [...(rounds.get(Number(m[1])) ?? []), r]);
    }
  const ends: number[] = [], firsts: number[] = [], tails: number[] = [];
  const by = new Map<string, number>();
  for (const rs of rounds.values()) {
    const end = Math.max(...rs.map((r) => r.done)), racks = rs.flatMap((r) => r.racks);
    ends.push(end);
    if (racks.length) firsts.push(Math.min(...racks) - Math.max(...rs.map((r) => r.plan)));
    tails.push(end - Math.max(0, ...racks));
    const side = Math.max(...rs.map((r) => r.own)) >= end - 1 ? "owner" : "results";
    const how = rs.some((r) => r.timers) ? "timer" : rs.some((r) => r.polls) ? "probe" : "rack";
    by.set(`${side}/${how}`, (by.get(`${side}/${how}`) ?? 0) + 1);
  }
  const med = (xs: number[]) => (xs.length ? median(xs).toFixed(1) : "-");
  return `  breakdown of ${rounds.size} data rounds (slowest rank's view): median end ${med(ends)} ms, first RACK ${med(firsts)} ms after the plan, ` +
    `${med(tails)} ms from the last RACK to the end; the round ended by (side/mechanism) ${[...by].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", ")}`;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? NaN;
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))] ?? NaN;

async function run(size: string, bin: string, tag: string): Promise<NodeReport[]> {
  const peers = nodes.map((n) => lab.node(n).addr).join(",");
  const procs = nodes.map((n, k) => {
    const json = join(lab.tmp, `m-${n}.json`);
    const p = lab.spawn(n, [bin, "swarm", "--iface", "eth0", "--peers", peers, "--rank", String(k), "--synthetic", size, "--rounds", String(rounds), "--verify", "--json", json, ...extra],
      traceDir ? { env: { AINFTP_TRACE_RECOVERY: "1" } } : {});
    return { p, json };
  });
  const codes = await Promise.all(procs.map(async ({ p }, k) => {
    const t = setTimeout(() => p.kill(9), 300_000);
    const [err] = await Promise.all([new Response(p.stderr).text(), new Response(p.stdout).text()]);
    const c = await p.exited;
    clearTimeout(t);
    if (traceDir) writeFileSync(join(traceDir, `${tag}-r${k}.log`), err);
    if (c !== 0 || process.env.AINFTP_DEBUG_RTT) console.error(`exit ${c}: ${err.trim()}`);
    return c;
  }));
  if (traceDir) console.log(breakdown(nodes.map((_, k) => readFileSync(join(traceDir, `${tag}-r${k}.log`), "utf8"))));
  return procs.map(({ json }, k) => {
    if (!existsSync(json)) throw new Error(`rank ${k}: no report (exit ${codes[k]})`);
    return JSON.parse(readFileSync(json, "utf8")) as NodeReport;
  });
}

try {
  for (const size of sizes) {
    parseSize(size, "--sizes");
    let ref: (string | null)[] | null = null;
    const med: Record<string, number[]> = {};
    for (let i = 0; i < reps; i++) {
      for (const [b, bin] of bins.entries()) {
        for (const kind of kinds) {
          if (kind === "clean") imp.clear();
          else imp.apply(loss * 10_000, dup * 10_000);
          const s0 = kind === "impaired" ? imp.stats() : null;
          const r = await run(size, bin, `${size}-bin${b}-${kind}-${i}`);
          const s1 = kind === "impaired" ? imp.stats() : null;
          const times = r.flatMap((j) => j.round_times_ms);
          if (kind === "clean") ref ??= r[0].result_hash;
          const agree = r.every((j) => JSON.stringify(j.result_hash) === JSON.stringify(r[0].result_hash));
          const asClean = JSON.stringify(r[0].result_hash) === JSON.stringify(ref);
          const m = median(times);
          (med[`${b}-${kind}`] ??= []).push(m);
          console.log(`${size} bin${b} ${kind.padEnd(8)} median ${m.toFixed(2)} ms  p90 ${pct(times, 0.9).toFixed(2)}  p99 ${pct(times, 0.99).toFixed(2)}  ` +
            `retransmits ${r.reduce((a, j) => a + j.retransmits, 0)}  timeouts ${r.reduce((a, j) => a + j.timeouts, 0)}  partial ${r.reduce((a, j) => a + j.straggler.partial_rounds, 0)}  ` +
            `verified ${r.every((j) => j.verified)}  ranks agree ${agree}  = clean ${asClean}` +
            (s0 && s1 ? `  frames dropped ${s1.dropped - s0.dropped}/${s1.seen - s0.seen} duplicated ${s1.duplicated - s0.duplicated}` : ""));
          if (process.env.MEASURE_DETAIL)
            for (const j of r) console.log(`  r${j.rank}: timeouts ${j.timeouts} retransmits ${j.retransmits} resends ${j.resends} dups ${j.duplicates} phases ${JSON.stringify(j.phase_ms)} times ${j.round_times_ms.map((t) => t.toFixed(0)).join(" ")}`);
        }
      }
    }
    for (const b of bins.keys())
      if (med[`${b}-impaired`] && med[`${b}-clean`]) console.log(`${size} bin${b} (${bins[b]}): impaired/clean median ratio ${(median(med[`${b}-impaired`]) / median(med[`${b}-clean`])).toFixed(2)} (clean ${med[`${b}-clean`].map((x) => x.toFixed(2)).join(", ")}; impaired ${med[`${b}-impaired`].map((x) => x.toFixed(2)).join(", ")})`);
  }
} finally {
  imp.clear();
  lab.destroy();
}
