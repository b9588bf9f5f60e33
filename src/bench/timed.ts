// The end of a bench rank's warm-up. The bench (run.ts measured()) names a
// directory in AINFTP_BENCH_TIMED for each system it runs; every rank (ainftp
// swarm, the TCP ring, the Gloo and Open MPI peers) writes a file named for
// its rank there once its warm-up rounds are done, and the bench's sampler
// (sampler.ts) sums CPU and softirq time only from when every rank had:
// the timed rounds, not a JIT compiling or connections being set up.
import { writeFileSync } from "node:fs";
import { join } from "node:path";

export const TIMED_ENV = "AINFTP_BENCH_TIMED";

/** Marks this rank's warm-up as done, when the bench asked for marks (else nothing). */
export function markTimed(rank: number): void {
  const dir = process.env[TIMED_ENV];
  if (!dir) return;
  try {
    writeFileSync(join(dir, String(rank)), "");
  } catch {
    // the bench is gone: nothing to mark
  }
}

/** A `process.cpuUsage(before)` difference in ms: every thread of the
 * process, user and kernel (in-context softirq work included: this kernel
 * does not account IRQ time apart). Each rank of every system reports this
 * per timed round (`round_cpu_ms`), taken around its all-reduce alone, and
 * the bench's CPU row sums them: the CPU a round costs, whether or not it
 * moves bytes while it burns it. */
export function cpuMs(u: { user: number; system: number }): number {
  return (u.user + u.system) / 1000;
}
