// `ainftp bench --slurm`: which options it takes (the cluster's NICs are
// measured as they are: no shaping, no MTU change, no delay line), and the
// hidden per-node commands it starts through srun (src/bench/slurm-node.ts).
import { Command } from "commander";
import { AinftpError } from "../src/errors.ts";
import { cleanNode, emitReport, probeNode, runRank } from "../src/bench/slurm-node.ts";
import type { SlurmBenchOptions } from "../src/bench/slurm.ts";
import { measureSentryCost } from "../src/bench/sentry-cost.ts";
import { measureTlb } from "../src/bench/tlb.ts";
import { chunkElemsForMtu } from "../src/node.ts";
import { ExitCode, type IO } from "./io.ts";

/** Options of the local bench that change the hosts' links, which --slurm leaves as it finds them. */
const LOCAL_ONLY: [string, string][] = [
  ["linkRate", "--link-rate shapes the links with tbf; on a cluster the bench measures your NICs as they are"],
  ["mtu", "--mtu sets the namespaces' MTU; on a cluster the bench uses the nodes' (set it on the NICs: ip link set dev IFACE mtu M)"],
  ["subnet", "--subnet addresses the namespaces; on a cluster the nodes' own addresses are used"],
  ["sweep", "--sweep sweeps link rates too; on a cluster give the sizes: --size 64KiB,256KiB,1MiB,4MiB,16MiB,64MiB"],
];

/** The --slurm run's options from the command's (refusing the local-only ones); `given` tells what the user set. */
export function slurmBenchOptions(o: Record<string, any>, given: (name: string) => boolean, defaultSizes: number[]): Omit<SlurmBenchOptions, "onProgress"> {
  if (given("bits") && (o.bits as number[]).some((b) => b !== 16))
    throw new AinftpError("bench --slurm", "--bits 8 and 4 are not run on a cluster yet: the cluster bench measures ainftp at 16 bits", {
      hint: "drop --bits (or run the local bench: ainftp bench --bits 16,8,4)",
    });
  const bad = LOCAL_ONLY.filter(([k]) => given(k));
  if (bad.length) throw new AinftpError("bench --slurm", bad.map(([, why]) => why).join("; "), { hint: `drop ${bad.map(([k]) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(", ")}` });
  return {
    sizes: o.size ?? defaultSizes, rounds: o.rounds, baselines: o.baseline, mode: o.mode, rx: o.rx, iface: o.iface,
    peers: given("peers") ? o.peers : undefined, backToBack: Boolean(o.backToBack), micro: o.micro, tlbBytes: o.tlbSize,
  };
}

function flags(args: string[]): { get: (n: string) => string | undefined; has: (n: string) => boolean; rest: string[] } {
  const cut = args.indexOf("--");
  const own = cut < 0 ? args : args.slice(0, cut);
  return {
    get: (n) => (own.includes(n) ? own[own.indexOf(n) + 1] : undefined),
    has: (n) => own.includes(n),
    rest: cut < 0 ? [] : args.slice(cut + 1),
  };
}

const internal = (name: string, what: string) =>
  new Command(name).description(`(internal) ${what}`).allowUnknownOption().allowExcessArguments().helpOption(false).argument("[args...]");

/** The per-node commands `bench --slurm` runs under srun; each prints its report as @ainftp-bench lines. */
export function slurmNodeCommands(io: IO): Command[] {
  const rank = () => Number(process.env.SLURM_PROCID ?? 0);
  return [
    internal("slurm-probe", "probe this node for bench --slurm: -- [--iface IF] --mode M [--gloo] [--mpi]").action(async (args: string[]) => {
      const f = flags(args);
      const r = await probeNode({ iface: f.get("--iface"), mode: f.get("--mode") === "generic" ? "generic" : "native", gloo: f.has("--gloo"), mpi: f.has("--mpi") });
      emitReport("probe", r.rank, r, io.out);
    }),
    internal("slurm-rank", "run one rank measured: -- --iface IF [--pins] -- CMD… ({rank} is the task's rank)").action(async (args: string[]) => {
      const f = flags(args);
      const iface = f.get("--iface");
      if (!iface || !f.rest.length) throw new AinftpError("bench node slurm-rank", "--iface and a command after -- are required", { hint: "started by ainftp bench --slurm" });
      const { report, exit } = await runRank({ iface, pins: f.has("--pins") }, f.rest);
      emitReport("rank", report.rank, report, io.out);
      if (exit) throw new ExitCode(exit);
    }),
    internal("slurm-clean", "after bench --slurm: remove stale pins, say what is attached: -- --iface IF").action(async (args: string[]) => {
      const r = await cleanNode(flags(args).get("--iface") ?? "");
      emitReport("clean", r.rank, r, io.out);
    }),
    internal("slurm-micro", "the machine rows on this node: -- --mtu M [--tlb-size BYTES]").action(async (args: string[]) => {
      const f = flags(args);
      const err = (e: unknown) => ({ error: e instanceof AinftpError ? `${e.message}${e.hint ? ` (${e.hint})` : ""}` : String((e as Error)?.message ?? e) });
      const sentry = await measureSentryCost({ elems: chunkElemsForMtu(Number(f.get("--mtu") ?? 1500)) }).catch(err);
      const tlb = await measureTlb({ bytes: f.get("--tlb-size") ? Number(f.get("--tlb-size")) : undefined }).catch(err);
      emitReport("micro", rank(), { sentry, tlb }, io.out);
    }),
  ];
}
