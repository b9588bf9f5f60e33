import { writeFileSync } from "node:fs";
import Table from "cli-table3";
import { Command, InvalidArgumentError, Option } from "commander";
import { BIT_WIDTHS, DEFAULT_PORT, MAX_ELEMS, MAX_WORKERS, type BitWidth } from "../src/abi.ts";
import type { AttachMode } from "../src/attach.ts";
import { AinftpError } from "../src/errors.ts";
import { defaultSocketPath, serveNode, type ServeReport } from "../src/local.ts";
import { runNode, type NodeReport } from "../src/node.ts";
import { parseListen } from "../src/metrics.ts";
import { slurmMembers } from "../src/slurm.ts";
import { JOB_KEY_ENV, loadJobKey } from "../src/jobkey.ts";
import { swarmStatusCommand } from "./swarm-status.ts";
import { formatSize, parseSize } from "../src/units.ts";
import { ExitCode, floatOption, intOption, type IO } from "./io.ts";
import { COMPACT } from "./status.ts";

function peerList(value: string): string[] {
  const peers = value.split(",").map((p) => p.trim()).filter(Boolean);
  if (peers.length === 0 || peers.length > MAX_WORKERS) throw new InvalidArgumentError(`Give 1..${MAX_WORKERS} IPv4 addresses, comma-separated.`);
  for (const p of peers)
    if (!/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(p) || p.split(".").some((o) => Number(o) > 255))
      throw new InvalidArgumentError(`'${p}' is not an IPv4 address.`);
  return peers;
}

function poisonOption(value: string): { rank: number; factor: number } {
  const m = /^(\d+):(-?\d+(?:\.\d+)?)$/.exec(value.trim());
  if (!m || !Number.isFinite(Number(m[2])) || Number(m[1]) >= MAX_WORKERS) throw new InvalidArgumentError("Give RANK:FACTOR, e.g. 3:-10.");
  return { rank: Number(m[1]), factor: Number(m[2]) };
}

function deadlineOption(value: string): number | "auto" {
  if (value.trim() === "auto") return "auto";
  const ms = Number(value);
  if (!Number.isInteger(ms) || ms < 0 || ms > 3_600_000) throw new InvalidArgumentError("Give auto, 0 (wait for everyone) or a grace in ms, e.g. 200.");
  return ms;
}

function metricsOption(value: string): string {
  try {
    parseListen(value);
  } catch {
    throw new InvalidArgumentError("Give ADDR:PORT, e.g. 127.0.0.1:9464 (0.0.0.0:9464 for every interface).");
  }
  return value.trim();
}

function sizeOption(value: string): number {
  try {
    return parseSize(value, "--synthetic");
  } catch {
    throw new InvalidArgumentError("Give a size like 1MiB, 16MiB, 1GiB or a byte count.");
  }
}

/** Exit codes of `swarm --synthetic` beyond 0 (every round completed, and verified with --verify), 1 (an error) and 2 (usage). */
export const EXIT_VERIFY_FAILED = 3;
export const EXIT_ROUNDS_LOST = 4;

/** 3 when a completed round failed verification (wrong results outrank missing ones), 4 when rounds were lost, else 0. */
export function swarmExitCode(r: Pick<NodeReport, "verified" | "rel_l2_error_max" | "lost_rounds"> & { error_bound?: number }, verify: boolean): number {
  if (verify && r.rel_l2_error_max !== null && !(r.rel_l2_error_max <= (r.error_bound ?? 1e-3))) return EXIT_VERIFY_FAILED;
  if (r.lost_rounds > 0) return EXIT_ROUNDS_LOST;
  if (verify && !r.verified) return EXIT_VERIFY_FAILED;
  return 0;
}

export function renderNodeReport(r: NodeReport): string {
  const t = new Table({ style: { head: [], border: [] }, chars: COMPACT });
  const ms = (x: number) => x.toFixed(2);
  t.push(
    ["rank / peers", `${r.rank} / ${r.peers}`],
    ["results arrive by", r.umem ? `${r.rx}, UMEM in a ${r.umem}` : r.rx],
    ["gradient", `${formatSize(r.bytes)} (${r.elements} floats, ${r.chunk_elems} per packet, ${r.bits ?? 16} bits each)`],
    ["rounds", r.lost_rounds ? `${r.rounds} (${r.lost_rounds} lost)` : r.rounds],
    ["round time ms: median / p10 / p90 / p99", `${ms(r.round_ms.median)} / ${ms(r.round_ms.p10)} / ${ms(r.round_ms.p90)} / ${ms(r.round_ms.p99)}`],
    ["relative L2 error (max)", r.rel_l2_error_max === null ? "not verified (--verify)" : `${r.rel_l2_error_max.toExponential(2)} (bound ${r.error_bound ?? 1e-3})${r.verified ? "" : " (not verified)"}`],
    ["retransmits / resends / duplicates", `${r.retransmits} / ${r.resends} / ${r.duplicates}`],
    ["timeouts / saturations", `${r.timeouts} / ${r.saturations}`],
    ["packets received by XDP", r.packets_received],
    ["kernel copies to deliver results, per round", formatSize(r.result_copy_bytes_per_round)],
    ["wake-ups + socket packets per XDP packet", `${r.wakeups} + ${r.socket_packets} → ${(r.wakeups_per_packet * 100).toFixed(2)}% (1/${r.wakeups_per_packet ? Math.round(1 / r.wakeups_per_packet) : "∞"})`],
    ["last result hash (xxh3)", r.result_hash.at(-1) ?? "-"],
  );
  const st = r.straggler;
  t.push(["partial rounds / sat out / late contributions", `${st.partial_rounds} / ${st.passive_rounds} / ${st.late_contributions}`]);
  const drops = Object.entries(r.control_drops ?? {}).filter(([, n]) => n);
  t.push(["job key / control frames refused", `${r.auth ?? "off"} / ${drops.map(([k, n]) => `${k} ${n}`).join(", ") || "none"}`]);
  if (r.sentry)
    t.push(
      ["sentry: dropped by our gates, per rank", r.sentry.rejected_by_rank.join(" ")],
      ["sentry: quarantined / contributions left out of results", `${r.sentry.quarantined.join(",") || "none"} / ${r.sentry.excluded_contributions}`],
    );
  return t.toString() + "\n";
}

export function renderServeReport(r: ServeReport): string {
  const t = new Table({ style: { head: [], border: [] }, chars: COMPACT });
  t.push(
    ["rank / peers", `${r.rank} / ${r.peers}`],
    ["socket", r.socket],
    ["trainers served", r.clients],
    ["all-reduces", `${r.allreduces} (${formatSize(4 * r.elements)} in all)`],
    ["mean all-reduce ms (node side)", r.mean_ms === null ? "-" : r.mean_ms.toFixed(2)],
    ["stopped by", r.stopped_by],
  );
  return t.toString() + "\n";
}

export function swarmCommand(io: IO): Command {
  const swarm = new Command("swarm")
    .summary("run an all-reduce node with a static member list")
    .description(
      "Run this host's node of the collective: attach ainftp to --iface if it is not attached, agree the job with every " +
        "peer, then run the synthetic workload (deterministic gradients from seed, rank and round) and, with --verify, check " +
        "every round against the exact sum computed here. Start the same command on every member with its own --rank.",
    )
    .option("--iface <name>", "interface that reaches the peers (ip -br addr); with --slurm, default: the one that routes to them")
    .option("--peers <ips>", "IPv4 address of every member, in rank order, comma-separated", peerList)
    .option("--rank <k>", "this host's rank: its position in --peers, from 0", intOption(0, MAX_WORKERS - 1))
    .option("--slurm", "take the members, this task's rank and the job id from SLURM (run under srun, one task per node)")
    .option("--port <n>", `UDP port (default ${DEFAULT_PORT})`, intOption(1, 65535))
    .option("--job <id>", "job id every member uses (default 0)", intOption(0, 0xffffffff))
    .option("--synthetic <size>", "gradient size per round: 1MiB, 16MiB, 1GiB or bytes", sizeOption)
    .option("--rounds <r>", "timed rounds (default 10)", intOption(1, 1_000_000), 10)
    .option("--warmup <r>", "untimed rounds first, left out of the figures (default 1; the JIT is still compiling in the first rounds)", intOption(0, 1000))
    .option("--verify", "check every round against the exact f64 sum of all ranks' gradients")
    .option("--seed <n>", "seed of the synthetic gradients (default 1)", intOption(0, 0xffffffff))
    .option("--back-to-back", "no barrier round before and after each timed round (as a trainer calls all-reduce); the timed rounds' gradients are made before them (up to 512 MiB a rank, an eighth of free memory at most) and checked after them, so nothing runs between two calls")
    .addOption(new Option("--mode <mode>", "XDP mode when attaching").choices(["auto", "native", "generic"]).default("auto"))
    .addOption(new Option("--rx <path>", "where results arrive: the program's mmapped map, or an AF_XDP socket (UMEM)").choices(["map", "xsk"]).default("map"))
    .option("--chunk-elems <n>", `int16 values per packet (default: what the MTU holds, max ${MAX_ELEMS})`, intOption(4, MAX_ELEMS))
    .option("--window <n>", "chunks in flight per owner (default 48)", intOption(1, 4096))
    .option("--round-timeout <ms>", "fail a round not complete after this long (default 10000)", intOption(10, 3_600_000))
    .option("--retransmit <ms>", "first retransmission after this long without progress, until round-trips are measured; then at most this (default 50)", intOption(1, 60_000))
    .option("--open-timeout <ms>", "wait this long for every peer at start (default 30000)", intOption(100, 3_600_000))
    .option("--stochastic <seed>", "stochastic rounding with this seed (always on at --bits 8 and 4)", intOption(1, 0xffffffff))
    .option("--bits <b>", "bits per gradient value on the wire: 16 (default), 8 or 4; every member must give the same (README \"Bits\")", bitsOption)
    .option("--keep-attached", "leave the program attached at the end")
    .option("--sentry", "filter contributions inline: drop those whose energy is beyond --sentry-z sigma of their chunk's honest history (ainftp sentry status shows it)")
    .option("--sentry-z <z>", "the sentry's gate, in standard deviations (default 3.5)", floatOption(0.5, 100))
    .addOption(new Option("--aggregate <mode>", "how owners combine contributions: summed in XDP (sum), or in userspace, robustly").choices(["sum", "trimmed-mean", "median", "cclip"]).default("sum"))
    .option("--poison <rank:factor>", "test/demo only: that rank sends its synthetic gradient times factor (every member must be told)", poisonOption)
    .option("--serve", "serve local trainers (clients/python) on a Unix socket until Ctrl-C/SIGTERM, instead of --synthetic")
    .option("--socket <path>", `with --serve: the socket trainers connect to (default ${defaultSocketPath().replace("0.sock", "<job>.sock")})`)
    .option("--round-size <size>", "with --serve: largest all-reduce one protocol round carries, sizes the maps (default 16MiB; larger ones take several rounds)", sizeOption)
    .option("--quorum <k>", "backup workers: a round goes as soon as k members (this one included) have sent their scales; the rest sit it out and still get the result (default: wait for every member the swarm holds fit)", intOption(1, MAX_WORKERS))
    .option("--deadline <ms|auto>", "grace for late members before a round goes without them: auto = 4x the median of recent rounds, 100..500 ms; 0 = wait for every member (up to --round-timeout)", deadlineOption, "auto")
    .option("--key-file <file>", `the job's 128-bit key (ainftp keygen; or ${JOB_KEY_ENV}): control frames carry a MAC under it, and data frames as --auth says`)
    .addOption(new Option("--auth <mode>", "with a key, what the data frames' MAC covers: header (a host without the key cannot forge one), full (header and payload: nor change one on the path), off (control frames only)").choices(["header", "full", "off"]))
    .option("--metrics <addr:port>", "serve Prometheus metrics at http://ADDR:PORT/metrics while running (rounds, round times, retransmits, drops by reason, sentry, members, bytes)", metricsOption)
    .option("--json [file]", "print the report as JSON (to a file if given)")
    .addHelpText("after", "\nExample (4 hosts; run on each with its rank):\n  ainftp swarm --iface eth0 --peers 10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4 --rank 0 --synthetic 16MiB --rounds 200 --verify --json r0.json\n" +
      "  ainftp swarm --iface eth0 --peers 10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4 --rank 0 --job 7 --serve   # trainers: ainftp.connect(job=7)\n")
    .action(async (o) => {
      if (o.slurm) {
        if (o.peers !== undefined || o.rank !== undefined)
          throw new AinftpError("swarm", "--slurm takes the members and the rank from SLURM", { hint: "drop --peers and --rank, or --slurm" });
        const m = await slurmMembers(process.env, { iface: o.iface });
        Object.assign(o, { peers: m.peers, rank: m.rank, iface: m.iface, job: o.job ?? m.job });
        if (o.serve && o.socket === undefined) o.socket = m.socket;
        io.err(`ainftp: ${m.source}: rank ${m.rank} of ${m.peers.length} on ${m.iface}, job ${o.job}\n`);
      }
      for (const [flag, v] of [["--iface", o.iface], ["--peers", o.peers], ["--rank", o.rank]] as const)
        if (v === undefined) throw new AinftpError("swarm", `${flag} is missing`, { hint: "give --iface, --peers and --rank, or run under srun with --slurm" });
      if (o.rank >= o.peers.length)
        throw new AinftpError("swarm", `--rank ${o.rank} but --peers lists ${o.peers.length} members`, { hint: `ranks are 0..${o.peers.length - 1}` });
      if (o.serve && o.synthetic !== undefined)
        throw new AinftpError("swarm", "--serve and --synthetic exclude each other", { hint: "a serving node all-reduces what its trainer sends; run the synthetic workload without --serve" });
      if (!o.serve && (o.socket !== undefined || o.roundSize !== undefined))
        throw new AinftpError("swarm", "--socket and --round-size go with --serve", { hint: "add --serve" });
      if (o.quorum !== undefined && o.quorum > o.peers.length)
        throw new AinftpError("swarm", `--quorum ${o.quorum} but --peers lists ${o.peers.length} members`, { hint: `give a quorum of 1..${o.peers.length}` });
      if (o.serve && o.metrics !== undefined)
        throw new AinftpError("swarm", "--metrics goes with --synthetic (a serving node does not export metrics yet)", { hint: "drop --metrics, or run the synthetic workload" });
      if (o.serve && o.poison) throw new AinftpError("swarm", "--poison goes with --synthetic", { hint: "it scales the synthetic gradient of one rank; a trainer's gradients are its own" });
      const key = loadJobKey({ keyFile: o.keyFile });
      if (!key && o.auth !== undefined)
        throw new AinftpError("swarm", `--auth ${o.auth} needs a job key`, { hint: `give --key-file (ainftp keygen --out job.key) or ${JOB_KEY_ENV}` });
      if (o.serve) {
        const report = await serveNode({
          iface: o.iface, peers: o.peers, rank: o.rank, port: o.port, job: o.job, mode: o.mode as AttachMode, chunkElems: o.chunkElems,
          window: o.window, roundTimeoutMs: o.roundTimeout, retransmitMs: o.retransmit, openTimeoutMs: o.openTimeout,
          stochasticSeed: o.stochastic, keepAttached: Boolean(o.keepAttached), socketPath: o.socket, roundBytes: o.roundSize, bits: o.bits,
          sentry: o.sentry || o.sentryZ !== undefined ? { z: o.sentryZ } : false, quorum: o.quorum, deadlineMs: o.deadline,
          key, auth: o.auth,
        }, (line) => io.err(`ainftp: ${line}\n`));
        if (typeof o.json === "string") writeFileSync(o.json, JSON.stringify(report, null, 2) + "\n");
        if (o.json === true) io.out(JSON.stringify(report, null, 2) + "\n");
        else io.out(renderServeReport(report));
        return;
      }
      if (o.synthetic === undefined)
        throw new AinftpError("swarm", "nothing to run: give --synthetic SIZE or --serve", { hint: "e.g. --synthetic 16MiB --rounds 100 --verify, or --serve for trainers (clients/python)" });
      const progress = io.tty
        ? (r: number, of: number, ms: number) => io.err(`\r  round ${r}/${of}  ${ms.toFixed(1)} ms   ${r === of ? "\n" : ""}`)
        : undefined;
      const report = await runNode({
        iface: o.iface, peers: o.peers, rank: o.rank, port: o.port, job: o.job, syntheticBytes: o.synthetic, rounds: o.rounds, warmup: o.warmup,
        verify: Boolean(o.verify), seed: o.seed, mode: o.mode as AttachMode, chunkElems: o.chunkElems, window: o.window, rx: o.rx,
        roundTimeoutMs: o.roundTimeout, retransmitMs: o.retransmit, openTimeoutMs: o.openTimeout, stochasticSeed: o.stochastic,
        keepAttached: Boolean(o.keepAttached), bits: o.bits,
        sentry: o.sentry || o.sentryZ !== undefined ? { z: o.sentryZ } : false, poison: o.poison, aggregate: o.aggregate,
        quorum: o.quorum, deadlineMs: o.deadline, backToBack: Boolean(o.backToBack), key, auth: o.auth,
        note: (line) => io.err(`ainftp: ${line}\n`), metrics: o.metrics,
      }, progress);
      if (typeof o.json === "string") writeFileSync(o.json, JSON.stringify(report, null, 2) + "\n");
      if (o.json === true) io.out(JSON.stringify(report, null, 2) + "\n");
      else io.out(renderNodeReport(report));
      const code = swarmExitCode(report, Boolean(o.verify));
      if (code === EXIT_VERIFY_FAILED) io.err(`ainftp: verification failed: relative L2 error ${report.rel_l2_error_max} > ${report.error_bound}\n`);
      else if (code === EXIT_ROUNDS_LOST)
        io.err(`ainftp: ${report.lost_rounds} of ${report.rounds} rounds lost (members died during them; see failed_rounds)${o.verify ? ": not verified" : ""}\n`);
      if (code !== 0) throw new ExitCode(code);
    });
  swarm.addCommand(swarmStatusCommand(io).configureOutput({ writeOut: io.out, writeErr: io.err }).showHelpAfterError("(add --help for usage)").exitOverride());
  return swarm;
}

/** --bits: 16, 8 or 4 (any other value names the allowed ones). */
export function bitsOption(v: string): BitWidth {
  const b = Number(v);
  if (!(BIT_WIDTHS as readonly number[]).includes(b)) throw new InvalidArgumentError(`--bits ${v} is not a width ainftp sums: use one of ${BIT_WIDTHS.join(", ")}`);
  return b as BitWidth;
}
