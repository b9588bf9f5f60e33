#!/usr/bin/env bun
// Plain-TCP all-reduce peers, measured on this machine in the same run as
// whatever they are compared with: Gloo (PyTorch's torch.distributed, Debian's
// python3-torch) and Open MPI's MPI_Allreduce (openmpi-bin + libopenmpi-dev).
//
//   bun bench/baselines/run.ts --peers 4 --size 1MiB,16MiB --rounds 50 [--systems gloo,mpi] [--json FILE]
//
// N hosts are N network namespaces on a bridge (in its own namespace), host i
// at 10.214.0.(i+1)/24 on eth0; one rank runs in each, entered with
// `nsenter --net`. Every round: restore the input, barrier, time the
// all-reduce alone, verify the sum against one computed locally. A round's
// time is the slowest rank's (the all-reduce is done when every rank has the
// result); per-rank figures are kept in the JSON.
//
// Open MPI across namespaces: mpirun runs inside host 0's namespace with
// --host 10.214.0.1,...; host 0 is local to it, and the other hosts are
// "remote", so it starts their orted through plm_rsh_agent, which here is a
// generated script that maps the host address to /run/netns/<ns> and runs the
// orted command line there (nsenter --net ... sh -c, as ssh would). Each orted
// starts its rank in its own namespace; OOB and the TCP BTL are pinned to eth0.
//
// A system whose packages are missing gives a row that says which package to
// install, not a failure. Progress goes to stderr; the table (or --json) is
// the only stdout.
import { writeFileSync } from "node:fs";
import { parseSize, renderTable, runBaselines, type BaselineOptions, type BaselineSystem } from "../../src/bench/baselines.ts";

export * from "../../src/bench/baselines.ts";

function parseArgs(argv: string[]): BaselineOptions & { json?: string } {
  const o: BaselineOptions & { json?: string } = { peers: 4, sizes: [1 << 20, 16 << 20], rounds: 50 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const int = (v: string) => {
      if (!/^\d+$/.test(v)) throw new Error(`${a}: not a whole number: ${v}`);
      return Number(v);
    };
    switch (a) {
      case "--peers": o.peers = int(val()); break;
      case "--size": case "--sizes": o.sizes = val().split(",").map(parseSize); break;
      case "--rounds": o.rounds = int(val()); break;
      case "--warmup": o.warmup = int(val()); break;
      case "--systems": o.systems = val().split(",").map((s) => s.trim()) as BaselineSystem[]; break;
      case "--json": o.json = val(); break;
      case "--timeout": o.timeoutMs = int(val()) * 1000; break;
      case "--python": o.python = val(); break;
      case "--mpi-busy-poll": o.mpiBusyPoll = true; break;
      case "-h": case "--help":
        process.stdout.write(
          "usage: bun bench/baselines/run.ts [--peers N] [--size 1MiB,16MiB] [--rounds R] [--warmup W] [--systems gloo,mpi] [--json FILE] [--timeout SECONDS] [--python PATH] [--mpi-busy-poll]\n",
        );
        process.exit(0);
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  return o;
}

if (import.meta.main) {
  let opts: ReturnType<typeof parseArgs>;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    process.exit(2);
  }
  const rs = await runBaselines(opts);
  process.stdout.write(`${renderTable(rs)}\n`);
  const ok = rs.find((r) => r.status === "ok");
  if (ok)
    process.stdout.write(
      `${ok.peers} hosts (network namespaces on one bridge, ${ok.peers} ranks on ${navigator.hardwareConcurrency} cores), ` +
        `${ok.rounds} timed rounds after ${ok.warmup} warm-up; a round = the slowest rank's all-reduce after a barrier.\n` +
        `1-min load average before each run: ${rs.filter((r) => r.loadavg !== undefined).map((r) => r.loadavg).join(", ")} ` +
        `(other work on the machine skews these figures).\n`,
    );
  if (opts.json) {
    writeFileSync(opts.json, `${JSON.stringify({ date: new Date().toISOString(), results: rs }, null, 2)}\n`);
    process.stderr.write(`wrote ${opts.json}\n`);
  }
  process.exit(rs.some((r) => r.status === "failed") ? 1 : 0);
}
