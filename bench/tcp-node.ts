#!/usr/bin/env bun
// One rank of the plain-TCP ring all-reduce baseline (src/bench/tcp-ring.ts),
// for the bench to start in each host's network namespace:
//
//   bun bench/tcp-node.ts --peers 10.0.0.1,10.0.0.2,10.0.0.3 --rank 0 [--port 47200] --size 16MiB --rounds 20
//                         [--warmup 3] [--seed 1] [--chunk 64KiB] [--connect-timeout 30] [--spin] [--no-verify] [--json]
//
// Peers are in ring order, ADDR or ADDR:PORT. With --json it prints one JSON
// line (the report, or {"error": …} and exit 1); without, one summary line.
import { AinftpError } from "../src/errors.ts";
import { DEFAULT_CHUNK_BYTES, runTcpRing, TCP_RING_PORT, type TcpRingOptions } from "../src/bench/tcp-ring.ts";
import { formatSize, parseSize } from "../src/units.ts";

const USAGE =
  "usage: bun bench/tcp-node.ts --peers A,B,… --rank R [--port P] --size 16MiB --rounds N [--warmup W] [--seed S] " +
  "[--chunk 64KiB] [--connect-timeout SECONDS] [--spin] [--no-verify] [--json]";

export function parseArgs(argv: string[]): TcpRingOptions & { json: boolean } {
  const o: TcpRingOptions & { json: boolean } = { peers: [], rank: -1, port: TCP_RING_PORT, elements: 0, rounds: 20, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new AinftpError("tcp-node", `${a} needs a value`, { hint: USAGE });
      return v;
    };
    const int = (v: string) => {
      if (!/^\d+$/.test(v)) throw new AinftpError("tcp-node", `${a}: not a whole number: ${v}`);
      return Number(v);
    };
    switch (a) {
      case "--peers": o.peers = val().split(",").filter(Boolean); break;
      case "--rank": o.rank = int(val()); break;
      case "--port": o.port = int(val()); break;
      case "--size": {
        const bytes = parseSize(val(), "--size");
        if (bytes % 4) throw new AinftpError("tcp-node", `--size ${bytes} bytes is not a whole number of float32s`);
        o.elements = bytes / 4;
        break;
      }
      case "--rounds": o.rounds = int(val()); break;
      case "--warmup": o.warmup = int(val()); break;
      case "--seed": o.seed = int(val()); break;
      case "--chunk": o.chunkBytes = parseSize(val(), "--chunk"); break;
      case "--connect-timeout": o.connectTimeoutMs = int(val()) * 1000; break;
      case "--spin": o.spin = true; break;
      case "--no-verify": o.verify = false; break;
      case "--json": o.json = true; break;
      case "-h": case "--help": process.stdout.write(`${USAGE}\n`); process.exit(0);
      default: throw new AinftpError("tcp-node", `unknown argument ${a}`, { hint: USAGE });
    }
  }
  if (!o.peers.length || o.rank < 0 || !o.elements) throw new AinftpError("tcp-node", "--peers, --rank and --size are required", { hint: USAGE });
  return o;
}

if (import.meta.main) {
  const json = process.argv.includes("--json");
  try {
    const o = parseArgs(process.argv.slice(2));
    const r = runTcpRing(o);
    if (json) process.stdout.write(`${JSON.stringify(r)}\n`);
    else
      process.stdout.write(
        `tcp-ring rank ${r.rank}/${r.peers}, ${formatSize(r.bytes)}, ${r.rounds} rounds (chunk ${formatSize(o.chunkBytes ?? DEFAULT_CHUNK_BYTES)}, ${r.wait}): ` +
          `median ${r.round_ms.median.toFixed(2)} ms (p10 ${r.round_ms.p10.toFixed(2)}, p90 ${r.round_ms.p90.toFixed(2)}), ` +
          `verified ${r.verified} (rel L2 ${r.rel_l2_error_max?.toExponential(1) ?? "n/a"}), ` +
          `${formatSize(r.bytes_written_per_round)} written / ${formatSize(r.bytes_read_per_round)} read per round\n`,
      );
  } catch (e) {
    const err = e instanceof AinftpError ? e : new AinftpError("tcp-node", String((e as Error)?.stack ?? e));
    if (json) process.stdout.write(`${JSON.stringify(err.toJSON())}\n`);
    process.stderr.write(`${err.message}${err.hint ? `\nhint: ${err.hint}` : ""}\n`);
    process.exit(1);
  }
}
