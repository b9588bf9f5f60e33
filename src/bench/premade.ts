// A rank's synthetic gradients for its back-to-back timed rounds, made
// before them, each round's in its own buffer: the round sums it in place,
// and the check of its result against the exact sum (ainftp_synth_rel_l2)
// and its hash wait until the timed rounds are over. (Barrier-separated
// rounds need none of it: the barriers keep a rank's work between rounds
// out of every rank's timed call, and a gradient written just before its
// round is as fresh in the caches as a trainer's.)
//
// Why: back to back (no barrier between calls, as a trainer calls
// all-reduce), whatever a rank does between two calls runs on the cores the
// other ranks' calls need: four ranks share two vCPUs on this lab, where a
// cluster's ranks each have their own. Making the next gradient (3.1 ms at
// 16 MiB), checking the last result (20 ms) and hashing it (1.2 ms) there
// was the lab's work timed as the collective's. A trainer's gradient is
// already in memory when it calls all-reduce; here too. Open MPI's rank
// program likewise makes its input once (and copies it between calls).
import { freemem } from "node:os";
import { coll } from "../../native/collective.ts";

/** At most this much memory for a rank's premade rounds (rounds beyond it are made, checked and hashed between calls, as before). */
export const PREMADE_BUDGET_BYTES = 512 * 1024 * 1024;

export class PremadeRounds {
  private readonly bufs: Float32Array[] = [];

  private constructor(readonly elements: number) {}

  /** Rounds 0..rounds-1 of ainftp_synth(seed, rank, round, scale), as many as
   * the budget (and an eighth of the free memory) hold, round 0 upwards.
   * Yields to the event loop after each (a swarm's heartbeats go on). */
  static async make(seed: number, rank: number, elements: number, rounds: number, scale: number, budgetBytes = PREMADE_BUDGET_BYTES): Promise<PremadeRounds> {
    const p = new PremadeRounds(elements);
    for (const _ of p.making(seed, rank, rounds, scale, budgetBytes)) await Bun.sleep(0);
    return p;
  }

  /** The same, without yielding (the TCP ring's rank has no event loop to serve). */
  static makeSync(seed: number, rank: number, elements: number, rounds: number, scale: number, budgetBytes = PREMADE_BUDGET_BYTES): PremadeRounds {
    const p = new PremadeRounds(elements);
    for (const _ of p.making(seed, rank, rounds, scale, budgetBytes));
    return p;
  }

  private *making(seed: number, rank: number, rounds: number, scale: number, budgetBytes: number): Generator<number> {
    const bytes = this.elements * 4;
    const fit = bytes > 0 ? Math.floor(Math.min(budgetBytes, freemem() / 8) / bytes) : 0;
    for (let r = 0; r < Math.min(rounds, fit); r++) {
      const g = new Float32Array(this.elements);
      coll.ainftp_synth(seed, rank, r, scale, g, this.elements);
      this.bufs.push(g);
      yield r;
    }
  }

  /** Rounds made. */
  get made(): number {
    return this.bufs.length;
  }

  /** Round r's gradient (its buffer: the round's result replaces it), or null when it was not made. */
  round(r: number): Float32Array | null {
    return this.bufs[r] ?? null;
  }

  /** Round r's buffer no longer needed (its result checked). */
  release(r: number): void {
    if (this.bufs[r]) this.bufs[r] = new Float32Array(0);
  }
}
