// Robust aggregation of one chunk's contributions at its owner, for
// `--aggregate trimmed-mean|median|cclip`: the XDP program hands every
// contribution to userspace (the contribs ring) instead of summing it, and the
// owner combines the dequantized vectors here. Each mode estimates the mean of
// the honest contributions; the result is that estimate times the number of
// contributions, so `sum` keeps its meaning and `mean` divides it back.
import { coll } from "../../native/collective.ts";
import { cDequantize } from "../../native/quant.ts";
import { CenteredClipping, median, trimmedMean } from "./aggregate.ts";

export type AggregateMode = "sum" | "trimmed-mean" | "median" | "cclip";
export const AGGREGATE_MODES: readonly AggregateMode[] = ["sum", "trimmed-mean", "median", "cclip"];

export interface RobustOptions {
  /** trimmed-mean: contributions trimmed from each side (default: a quarter of them, at least one when 3 or more). */
  trim?: number;
  /** cclip: clipping radius; default per chunk, twice the median distance of the first round's contributions from their coordinate-wise median. */
  tau?: number;
  /** cclip: worker momentum (default 0.9, as Karimireddy et al.). */
  momentum?: number;
}

/** The state key of a chunk for cclip: a chunk position of a given length
 * (a barrier's one float and a gradient's 720 at chunk 0 are different things). */
export function robustKey(chunk: number, count: number): number {
  return chunk * 65536 + count;
}

export class RobustAggregator {
  private readonly clippers = new Map<number, CenteredClipping>();

  constructor(readonly mode: Exclude<AggregateMode, "sum">, private readonly o: RobustOptions = {}) {}

  private stage = new Int16Array(0);
  private exps = new Int16Array(64);

  /** The owner's path: its own values and the others' quantized
   * contributions, combined in C (trimmed mean, median; one call per chunk)
   * or dequantized for cclip. ranks[0] is the owner's. */
  combineQuantized(key: number, own: Float32Array, recs: { q: Int16Array; exp: number }[], ranks: number[], out: Float32Array): void {
    const count = own.length;
    if (this.mode === "cclip") {
      const xs = [own, ...recs.map((r) => {
        const v = new Float32Array(count);
        cDequantize(r.q, r.exp, v);
        return v;
      })];
      return this.aggregate(key, xs, ranks, out);
    }
    const k = recs.length;
    if (this.stage.length < k * count) this.stage = new Int16Array(k * count);
    recs.forEach((r, i) => {
      this.stage.set(r.q, i * count);
      this.exps[i] = r.exp;
    });
    const rc = coll.ainftp_robust_chunk(this.mode === "median" ? 2 : 1, this.trimFor(k + 1), own, count, this.stage, this.exps, k, out);
    if (rc !== 0) throw new RangeError(`robust combine of ${k + 1} contributions of ${count} values failed`);
  }

  /** Contributions trimmed from each side when n are combined. */
  private trimFor(n: number): number {
    return Math.min(this.o.trim ?? (n >= 3 ? Math.max(1, Math.floor(n / 4)) : 0), Math.floor((n - 1) / 2));
  }

  /** Combines the vectors of one chunk (xs[i] from worker ranks[i]) into out
   * as (robust mean) × xs.length; `key` (robustKey) names cclip's state. */
  aggregate(key: number, xs: Float32Array[], ranks: number[], out: Float32Array): void {
    const n = xs.length;
    if (n === 0) {
      out.fill(0);
      return;
    }
    if (this.mode === "trimmed-mean") {
      trimmedMean(xs, this.trimFor(n), out);
    } else if (this.mode === "median") {
      median(xs, out);
    } else {
      let cc = this.clippers.get(key);
      if (!cc) this.clippers.set(key, (cc = new CenteredClipping({ tau: this.o.tau ?? defaultTau(xs), momentum: this.o.momentum })));
      cc.aggregate(xs, out, ranks);
    }
    for (let i = 0; i < out.length; i++) out[i] *= n;
  }
}

/** Twice the median L2 distance of the contributions from their coordinate-wise median. */
function defaultTau(xs: Float32Array[]): number {
  const m = median(xs, new Float32Array(xs[0].length));
  const d = xs.map((x) => {
    let s = 0;
    for (let i = 0; i < x.length; i++) s += (x[i] - m[i]) ** 2;
    return Math.sqrt(s);
  }).sort((a, b) => a - b);
  const mid = d[Math.floor(d.length / 2)];
  return mid > 0 ? 2 * mid : 1e-30;
}
