#!/usr/bin/env bun
// Where a round's CPU goes: N hosts as network namespaces, each calling
// `Communicator.allreduce` back to back on a fixed gradient (the input
// copied back in before each round; no synthetic generation, hashing or
// verification inside the profile), while `perf record -a` samples the whole
// machine (cpu-clock: this VM has no PMU). Prints CPU ms per round by where
// it ran: the kernel, the XDP program, the native shim (symbolized with
// addr2line: it is loaded from a memfd), Bun and JS, libc, idle, and other
// processes; then the top symbols of each.
//
//   bun bench/profile.ts [--size 16MiB] [--peers 4] [--seconds 4] [--link-rate none|1gbit]
//       [--mtu 3504] [--bits 16] [--freq 1999] [--json FILE] [--keep DIR]
//       [--barrier]: a one-value all-reduce before each round (the ranks enter
//       together, as in the bench's timed rounds; its CPU is counted)
//       [--error-feedback]: at 8 and 4 bits, the residual kept and added back, as a trainer runs them
//       (the bench does not: it verifies each round's exact sum)
//       [--egress]: host 0's egress through a round too (tcpdump on its eth0
//       while perf samples; bench/egress.ts): Mbit/s in 4 ms bins from the
//       round's start, the median over the rounds, contributions and results apart
//       [--timeline]: where both cores went through a round: in 2 ms bins from
//       rank 0's round start, the share of the machine's CPU that was idle,
//       each rank's (its threads, user and kernel), and the rest (softirq
//       threads, JIT workers, other processes), the mean over the rounds in
//       the window (perf on CLOCK_REALTIME, the ranks' clock)
//       [--callgraph]: perf records call chains too (-g), and each of the
//       kernel's top 4 symbols is followed by the paths that reach it (the
//       last frames of each chain, CPU ms per round): which copy a memcpy
//       is, what writes an MSR
//   AINFTP_PROFILE_JS=DIR: each rank under Bun's sampling profiler too (--cpu-prof-md into DIR)
//
// Two builds compared: run it in each tree, back to back (DESIGN.md: the
// machine drifts 20-40% between minutes). CPU ms per round is the figure to
// compare; idle and other processes are listed so a loaded machine shows.
import Table from "cli-table3";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { BitWidth } from "../src/abi.ts";
import { LinkShaper, parseRate } from "../src/bench/shape.ts";
import { createLab, lineReader, type Lab } from "../src/lab/netns.ts";
import { bringUp } from "../src/node/bringup.ts";
import { parseSize } from "../src/units.ts";
import { BIN_MS, cpuTimeline, egressBins, IDLE_SYM, parseSample, readPcap } from "./egress.ts";
import { foldCallers } from "./callers.ts";

const ROOT = resolve(import.meta.dir, "..");
const SHIM = join(ROOT, "native/build/libainftp.so");
const argv = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
function usage(msg: string): never {
  console.error(`bench/profile.ts: ${msg}`);
  process.exit(2);
}

// ---- a rank: bench/profile.ts --rank R --peers a,b,c --size B --bits W ----
if (argv.includes("--rank")) {
  const rank = Number(opt("--rank", "0"));
  const peers = opt("--peers", "").split(",");
  const bytes = Number(opt("--size", "0"));
  const bits = Number(opt("--bits", "16")) as BitWidth;
  const seconds = Number(opt("--seconds", "4"));
  const n = Math.floor(bytes / 4);
  const node = bringUp({ op: "profile", iface: "eth0", peers, rank, roundElems: n });
  let code = 0;
  let comm: Awaited<ReturnType<typeof node.open>> | undefined;
  // the gradient, before the job starts (AINFTP_PROFILE_SKEW=1: after, so
  // the ranks enter the first round apart)
  const src = new Float32Array(n);
  const fill = () => { for (let i = 0; i < n; i++) src[i] = Math.sin(i * 0.001 + rank) * (1 + (i % 7)); };
  if (!process.env.AINFTP_PROFILE_SKEW) fill();
  try {
    // --error-feedback: as a trainer runs 8 and 4 bits (the residual kept per buffer); the bench runs without
    comm = await node.open({ bits, errorFeedback: argv.includes("--error-feedback"), maxWaitMs: 20 });
    if (process.env.AINFTP_PROFILE_SKEW) fill();
    const x = new Float32Array(n);
    const say = (s: string) => process.stdout.write(s + "\n");
    const now = () => performance.timeOrigin + performance.now();
    // warm up (at least 10 rounds and 0.5 s); how many rounds fill the
    // profile and a margin follows from the ranks' median warm round,
    // agreed by an all-reduce (its result is the same on every rank), so
    // every rank runs the same number
    const warm: number[] = [];
    const more = new Float32Array(1);
    for (const t0 = now(); ; ) {
      for (let i = 0; i < 10; i++) {
        const t1 = now();
        await comm.allreduce(src, { out: x });
        warm.push(now() - t1);
      }
      // whether to go on is agreed too: each rank's own clock stopped it at
      // a different round when rounds take milliseconds (1 MiB), and a rank
      // that went on to the one-value round below while the others still
      // warmed up stalled the job (its exponents fit no round of theirs)
      more[0] = now() - t0 < 500 ? 1 : 0;
      await comm.allreduce(more);
      if (more[0] < 0.5) break;
    }
    const med = warm.slice(2).sort((a, b) => a - b)[Math.floor((warm.length - 2) / 2)];
    const agree = new Float32Array([med]);
    await comm.allreduce(agree);
    const rounds = Math.max(5, Math.ceil((seconds * 1500 + 1000) / Math.max(0.2, agree[0] / peers.length)));
    say(`steady ${rounds}`);
    const starts: number[] = [], ends: number[] = [];
    const barrier = new Float32Array(1);
    for (let r = 0; r < rounds; r++) {
      // --barrier: the ranks enter each round together, as the bench's timed rounds do
      if (argv.includes("--barrier")) await comm.allreduce(barrier, { retransmitMs: 1000, patient: true });
      starts.push(now());
      // the sum into x, src as it was: no copy of the gradient between
      // rounds (a 16 MiB x.set a rank a round was 9 of the profile's
      // 58 CPU-ms a round, in libc's memmove, none of it the all-reduce's)
      await comm.allreduce(src, { out: x });
      ends.push(now());
    }
    say(JSON.stringify({ rank, rounds, starts, ends }));
    node.end("polite", 300);
  } catch (e) {
    console.error(`rank ${rank}: ${e instanceof Error ? e.message : e}`);
    if (comm) console.error(`counters ${JSON.stringify(Object.fromEntries(Object.entries(comm.counters()).filter(([, v]) => v)))}\nstats ${JSON.stringify(comm.stats)}`);
    node.end("abort");
    code = 1;
  }
  process.exit(code);
}

// ---- the orchestrator ----------------------------------------------------
const size = parseSize(opt("--size", "16MiB"));
const peers = Number(opt("--peers", "4"));
const seconds = Number(opt("--seconds", "4"));
const mtu = Number(opt("--mtu", "3504"));
const bits = Number(opt("--bits", "16"));
const freq = Number(opt("--freq", "1999"));
const rateText = opt("--link-rate", "none");
const rate = rateText === "none" ? null : parseRate(rateText);
if (rateText !== "none" && rate === null) usage(`--link-rate ${rateText}: say e.g. 1gbit, or none`);
if (!Number.isInteger(peers) || peers < 2 || peers > 16) usage("--peers takes 2..16");
if (![16, 8, 4].includes(bits)) usage("--bits takes 16, 8 or 4");
if (!(seconds > 0 && seconds <= 60)) usage("--seconds takes (0, 60]");
if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) usage("--mtu takes an integer in 68..65535");
if (process.getuid?.() !== 0) usage("needs root (network namespaces, XDP, perf -a)");
if (Bun.spawnSync(["which", "perf"]).exitCode !== 0) usage("perf is not installed (apt-get install linux-perf)");
if (!existsSync(SHIM)) usage(`${SHIM} is missing: make build`);
const egress = argv.includes("--egress");
if (egress && Bun.spawnSync(["which", "tcpdump"]).exitCode !== 0) usage("--egress needs tcpdump (apt-get install tcpdump)");

const keep = argv.includes("--keep") ? opt("--keep", "") : "";
const dir = keep || mkdtempSync(join(tmpdir(), "ainftp-profile-"));
mkdirSync(dir, { recursive: true });
const names = Array.from({ length: peers }, (_, i) => `p${i}`);
let lab: Lab | undefined;
let shaper: LinkShaper | undefined;
const procs: Bun.Subprocess<"pipe", "pipe", "pipe">[] = [];
let perf: Bun.Subprocess | undefined;
let dump: Bun.Subprocess | undefined;
const cleanup = () => {
  perf?.kill("SIGINT");
  dump?.kill("SIGKILL");
  for (const p of procs) p.kill("SIGKILL");
  shaper?.remove();
  lab?.destroy();
  if (!keep) rmSync(dir, { recursive: true, force: true });
};
process.on("SIGINT", () => (cleanup(), process.exit(130)));

interface Sample { comm: string; dso: string; sym: string; n: number }

try {
  // the MTU on every link, the bridge's ports too: set on eth0 alone, every
  // full-size datagram sent without GSO (a lone retransmission, result or
  // window refill) was dropped by the 1500-byte bridge port, and a round
  // whose last missing chunk only ever went alone never completed
  lab = createLab("prof", names, { subnet: "10.213.96", mtu });
  if (rate !== null) {
    const br = `/run/netns/${lab.names[lab.names.length - 1]}`;
    shaper = LinkShaper.apply(names.flatMap((n, i) => [{ netns: lab!.node(n).path, dev: "eth0", label: `${n} tx` }, { netns: br, dev: `p${i}`, label: `${n} rx` }]), rate);
  }
  const addrs = names.map((n) => lab!.node(n).addr).join(",");
  // each rank's stderr to a file (rank-N.err in the kept directory)
  const q = (a: string) => `'${a.replace(/'/g, "'\\''")}'`;
  for (let r = 0; r < peers; r++) {
    // AINFTP_PROFILE_JS=DIR: each rank also under Bun's sampling profiler, a markdown report in DIR
    const js = process.env.AINFTP_PROFILE_JS ? ["--cpu-prof-md", `--cpu-prof-dir=${process.env.AINFTP_PROFILE_JS}`, "--cpu-prof-interval=200"] : [];
    const cmd = [process.execPath, ...js, import.meta.path, "--rank", String(r), "--peers", addrs, "--size", String(size), "--bits", String(bits), "--seconds", String(seconds),
      ...(argv.includes("--barrier") ? ["--barrier"] : []), ...(argv.includes("--error-feedback") ? ["--error-feedback"] : [])];
    procs.push(lab.spawn(names[r], ["sh", "-c", `exec ${cmd.map(q).join(" ")} 2>${q(join(dir, `rank-${r}.err`))}`]));
  }
  const readers = procs.map((p) => lineReader(p));
  const first = await Promise.all(readers.map((rd) => rd.next(120_000))).catch(async (e) => {
    for (const p of procs) p.kill("SIGKILL");
    if (process.env.AINFTP_DEBUG_FAIL) for (const n of names) console.error(`${n}: ${lab!.run(n, ["ip", "-s", "-s", "link", "show", "eth0"]).stdout}`);
    const errs = procs.map((_, r) => `rank ${r}: ${existsSync(join(dir, `rank-${r}.err`)) ? readFileSync(join(dir, `rank-${r}.err`), "utf8").trim().split("\n").slice(-3).join("\n") : "(nothing)"}`);
    throw new Error(`a rank ended before its steady state: ${e instanceof Error ? e.message.split("\n")[0] : e}\n${errs.join("\n")}`);
  });
  if (first.some((l) => !l.startsWith("steady "))) {
    const errs = await Promise.all(procs.map((p) => (p.kill("SIGKILL"), new Response(p.stderr).text())));
    throw new Error(`ranks did not reach their steady state: ${JSON.stringify(first)}\n${errs.join("\n")}`);
  }
  const data = join(dir, "perf.data");
  // --egress: host 0's outbound frames (headers only) while perf samples
  const pcap = join(dir, "egress.pcap");
  if (egress) {
    dump = lab.spawn(names[0], ["tcpdump", "-i", "eth0", "-Q", "out", "-s", "64", "-U", "-w", pcap]);
    await Bun.sleep(500); // (listening before the window opens)
  }
  const ps = performance.timeOrigin + performance.now();
  const timeline = argv.includes("--timeline");
  const callgraph = argv.includes("--callgraph");
  perf = Bun.spawn(["perf", "record", "-a", ...(callgraph ? ["-g"] : []), "-e", "cpu-clock", "-F", String(freq), ...(timeline ? ["-k", "CLOCK_REALTIME"] : []), "-o", data, "--", "sleep", String(seconds)], { stdout: "ignore", stderr: "pipe" });
  await perf.exited;
  const pe = performance.timeOrigin + performance.now();
  const perfMs = pe - ps;
  perf = undefined;
  if (dump) {
    dump.kill("SIGINT");
    await dump.exited;
    dump = undefined;
  }
  const reports = await Promise.all(readers.map((rd) => rd.next(120_000)));
  const reps = reports.map((l) => JSON.parse(l) as { rank: number; rounds: number; starts: number[]; ends: number[] });
  await Promise.all(procs.map((p) => p.exited));
  const bad = procs.filter((p) => p.exitCode !== 0);
  if (bad.length) throw new Error(`${bad.length} ranks exited non-zero`);
  // rounds inside the window, by rank 0's clock (the same machine's):
  // each round counts for the share of it that perf saw
  const { starts, ends } = reps[0];
  let inWin = 0;
  for (let i = 0; i < starts.length; i++) inWin += Math.max(0, Math.min(ends[i], pe) - Math.max(starts[i], ps)) / (ends[i] - starts[i]);
  if (ends[ends.length - 1] < pe) console.error(`bench/profile.ts: the ranks finished ${(pe - ends[ends.length - 1]).toFixed(0)} ms before perf did: the tail of the window is idle`);
  const times = starts.map((s0, i) => ends[i] - s0);
  const median = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)];
  // the bench's figure: per round, the slowest rank's time
  const slowest = starts.map((_, i) => Math.max(...reps.map((p) => p.ends[i] - p.starts[i])));
  const slowMedian = [...slowest].sort((a, b) => a - b)[Math.floor(slowest.length / 2)];

  // ---- what perf saw --------------------------------------------------
  const rep = Bun.spawnSync(["perf", "report", "-g", "none", "-i", data, "--no-children", "--sort", "comm,dso,sym", "-F", "sample,comm,dso,sym", "--stdio", "-t", "\t"], { stdout: "pipe", stderr: "pipe" });
  const samples: Sample[] = [];
  for (const line of rep.stdout.toString().split("\n")) {
    if (!line.trim() || line.startsWith("#")) continue;
    const [n, comm, dso, sym] = line.split("\t").map((s) => s.trim());
    if (!Number(n)) continue;
    samples.push({ n: Number(n), comm, dso, sym: sym.replace(/^\[[.k]\]\s+/, "") });
  }
  // the shim's raw offsets, named
  const shimAddrs = [...new Set(samples.filter((s) => s.dso.includes("libainftp")).map((s) => s.sym))].filter((a) => /^0x[0-9a-f]+$/.test(a));
  const names2 = new Map<string, string>();
  if (shimAddrs.length) {
    const a2l = Bun.spawnSync(["addr2line", "-f", "-e", SHIM, ...shimAddrs], { stdout: "pipe" }).stdout.toString().split("\n");
    shimAddrs.forEach((a, i) => names2.set(a, a2l[2 * i] || a));
  }
  // ours: the ranks (bun), and the kernel's softirq work wherever no
  // other process was interrupted for it (ksoftirqd, or the idle task)
  const rank = (s: Sample) => s.comm === "bun" || s.comm.startsWith("bun") || s.comm === "ainftp";
  const softirqHost = (s: Sample) => s.comm.startsWith("ksoftirqd") || s.comm === "swapper";
  const category = (s: Sample): string => {
    const kernel = s.dso.includes("kernel") || s.dso.startsWith("bpf_prog_");
    if (s.comm === "swapper" && IDLE_SYM.test(s.sym)) return "idle";
    if (!rank(s) && !(kernel && softirqHost(s))) return "other processes";
    if (s.dso.startsWith("bpf_prog_") || s.sym.startsWith("bpf_prog_")) return "XDP program";
    if (kernel) return s.sym === "pvm_irq_enable" ? "kernel (irq-off sections, pvm_irq_enable)" : "kernel";
    if (s.dso.includes("libainftp")) return "native shim";
    if (s.dso.startsWith("libc")) return "libc";
    return "Bun and JS";
  };
  const total = samples.reduce((a, s) => a + s.n, 0);
  const byCat = new Map<string, number>();
  const bySym = new Map<string, Map<string, number>>();
  for (const s of samples) {
    const c = category(s);
    byCat.set(c, (byCat.get(c) ?? 0) + s.n);
    const name = s.dso.includes("libainftp") ? names2.get(s.sym) ?? s.sym : c === "other processes" ? `${s.comm}: ${s.sym}` : s.sym;
    const m = bySym.get(c) ?? new Map<string, number>();
    m.set(name, (m.get(name) ?? 0) + s.n);
    bySym.set(c, m);
  }
  const msPerSample = 1000 / freq;
  const busy = [...byCat].filter(([c]) => c !== "idle" && c !== "other processes").reduce((a, [, n]) => a + n, 0);
  const title = `${peers} hosts · ${size >= 1 << 20 ? `${size / (1 << 20)} MiB` : `${size / 1024} KiB`} · ${rate === null ? "unshaped" : rateText} · MTU ${mtu} · ${bits} bits · ${argv.includes("--barrier") ? "a barrier before each round" : "back to back"}`;
  const t = new Table({ style: process.stdout.isTTY ? {} : { head: [], border: [] }, head: ["where", "share of samples", "CPU ms per round"] });
  for (const [c, n] of [...byCat].sort((a, b) => b[1] - a[1])) t.push([c, `${((100 * n) / total).toFixed(1)}%`, c === "idle" ? "-" : ((n * msPerSample) / inWin).toFixed(2)]);
  t.push(["all but idle and other processes", `${((100 * busy) / total).toFixed(1)}%`, ((busy * msPerSample) / inWin).toFixed(2)]);
  console.log(`${title}\nperf -a, cpu-clock at ${freq} Hz for ${(perfMs / 1000).toFixed(1)} s: ${total} samples, ${inWin} rounds in the window (median round ${median.toFixed(2)} ms on rank 0, ${slowMedian.toFixed(2)} ms the slowest rank's, as the bench counts)`);
  console.log(t.toString());
  const tops: Record<string, [string, number][]> = {};
  for (const c of ["native shim", "kernel", "Bun and JS", "libc", "XDP program", "other processes"]) {
    const m = bySym.get(c);
    if (!m) continue;
    tops[c] = [...m].sort((a, b) => b[1] - a[1]).slice(0, 12);
    console.log(`\n${c}, top symbols (CPU ms per round):`);
    for (const [s, n] of tops[c]) console.log(`  ${((n * msPerSample) / inWin).toFixed(3).padStart(8)}  ${s}`);
  }
  if (callgraph) for (const [sym] of (tops.kernel ?? []).slice(0, 4)) {
    console.log(`\nwhat reaches ${sym} (the chains' last frames, CPU ms per round):`);
    const folded = Bun.spawnSync(["perf", "report", "-i", data, "--no-children", "--sort", "sym", "-S", sym, "-g", "folded,0.1,caller,function,percent", "--stdio"], { stdout: "pipe", stderr: "pipe" });
    for (const [path, n] of foldCallers(folded.stdout.toString(), total)) console.log(`  ${((n * msPerSample) / inWin).toFixed(3).padStart(8)}  ${path}`);
  }
  let eg: ReturnType<typeof egressBins> | null = null;
  if (egress) {
    if (!existsSync(pcap)) throw new Error(`--egress: tcpdump wrote no ${pcap}`);
    eg = egressBins(readPcap(new Uint8Array(readFileSync(pcap))), starts, ends, ps, pe);
    const et = new Table({ style: process.stdout.isTTY ? {} : { head: [], border: [] }, head: ["ms from the round's start", "all", "contributions", "results"] });
    for (const b of eg.bins) et.push([`${b.at}-${b.at + BIN_MS}`, ...[b.all, b.contrib, b.result].map((v) => v.toFixed(0))]);
    console.log(`\nhost 0's egress, Mbit/s (median of ${eg.rounds} rounds in the window, by rank 0's round starts)${rate === null ? "" : `; its link is shaped to ${rateText}`}`);
    console.log(et.toString());
  }
  let tl: ReturnType<typeof cpuTimeline> | null = null;
  if (argv.includes("--timeline")) {
    // each sample by pid (a rank's threads share it) at its time from the
    // start of the rank-0 round it fell in (rounds wholly in the window)
    const scr = Bun.spawnSync(["perf", "script", "-i", data, ...(callgraph ? ["--hide-call-graph"] : []), "-F", "pid,time,ip,sym"], { stdout: "pipe", stderr: "pipe" });
    const smp = scr.stdout.toString().split("\n").map(parseSample).filter((x) => x !== null);
    const pids = procs.map((p) => p.pid);
    // samples per ms with every CPU counted: perf's own rate (in this VM below -F's per CPU)
    tl = cpuTimeline(smp, starts, ends, ps, pe, pids, total / perfMs);
    const tt = new Table({ style: process.stdout.isTTY ? {} : { head: [], border: [] }, head: ["ms from rank 0's start", "idle", ...pids.map((_, r) => `rank ${r}`), "rest"] });
    const pc = (v: number) => `${(100 * v).toFixed(0)}%`;
    for (const c of tl.bins) tt.push([`${c.at}-${c.at + 2}`, pc(c.idle), ...c.ranks.map(pc), pc(c.rest)]);
    console.log(`\nwhere the ${navigator.hardwareConcurrency} CPUs went through a round: share of all CPU time per 2 ms bin, mean of ${tl.rounds} rounds (median round ${median.toFixed(1)} ms; a round's later bins may hold the next barrier)`);
    console.log(tt.toString());
  }
  const jf = opt("--json", "");
  if (jf) writeFileSync(jf, JSON.stringify({ title, freq, seconds: perfMs / 1000, samples: total, rounds_in_window: inWin, median_round_ms: median, cpu_ms_per_round: Object.fromEntries([...byCat].map(([c, n]) => [c, (n * msPerSample) / inWin])), top: tops, ...(eg ? { egress_mbit_per_s: eg } : {}), ...(tl ? { timeline: tl.bins } : {}) }, null, 2));
} catch (e) {
  console.error(`bench/profile.ts: ${e instanceof Error ? e.message : e}`);
  process.exitCode = 1;
} finally {
  cleanup();
}
