// Order statistics, once: nearest-rank quantiles (what the node's reports
// and the round deadline use), linearly interpolated percentiles (numpy's
// default, what the baselines report), and the median.

/** Nearest-rank quantiles of a run of times. */
export interface Quantiles {
  median: number;
  p10: number;
  p90: number;
  p99: number;
}

/** A sorted copy. */
export function sortedCopy(xs: ArrayLike<number>): number[] {
  return Array.from(xs).sort((a, b) => a - b);
}

/** The floor(p·n)-th smallest of sorted values (nearest rank, the upper
 * middle for p = 0.5 and an even count); 0 when empty. */
export function nearestRank(sorted: readonly number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0;
}

/** Linear interpolation between the closest ranks (numpy's default); NaN when empty. */
export function percentile(sorted: readonly number[], q: number): number {
  if (!sorted.length) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** The median: the mean of the two middle values for an even count; NaN when empty. */
export function median(xs: ArrayLike<number>): number {
  const n = xs.length;
  if (n === 0) return NaN;
  const s = sortedCopy(xs);
  return n & 1 ? s[n >> 1] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** Median, p10, p90, p99: nearest rank ("rank", the node's reports) or
 * interpolated ("linear", the baselines' reports). */
export function quantiles(xs: ArrayLike<number>, how: "rank" | "linear" = "rank"): Quantiles {
  const s = sortedCopy(xs);
  const q = how === "rank" ? (p: number) => nearestRank(s, p) : (p: number) => percentile(s, p);
  return { median: q(0.5), p10: q(0.1), p90: q(0.9), p99: q(0.99) };
}
