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
import { DEFAULT_CHUNK_BYTES, parseTcpNodeArgs, runTcpRing } from "../src/bench/tcp-ring.ts";
import { formatSize } from "../src/units.ts";

/** The arguments of one rank (now in src/bench/tcp-ring.ts). */
export const parseArgs = parseTcpNodeArgs;

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
