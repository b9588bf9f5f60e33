// Byzantine attacks for `ainftp sentry eval`. Each byzantine worker computes
// its honest gradient first; an attack then rewrites those gradients in
// place, seeing every honest gradient of the round (an omniscient attacker),
// or changes the labels the byzantine workers train on (label flip).
import { gaussian } from "./data.ts";
import type { GateView } from "../stats.ts";

export interface AttackContext {
  round: number;
  /** The honest workers' gradients of this round. */
  honest: readonly Float32Array[];
  /** Workers in all, n, and byzantine among them, f. */
  workers: number;
  byzantine: number;
  rng: () => number;
  /** Elements per chunk: the unit the gate judges. */
  chunkElems: number;
  /** The sum-of-squares gate of a chunk, for attackers that aim just inside
   * it; absent (or null) when there is no filter or it is calibrating. */
  gate?: (chunk: number) => GateView | null;
}

export interface Attack {
  readonly name: string;
  /** Data-level attack: the label a byzantine worker trains on instead of y. */
  flipLabel?(y: number, classes: number): number;
  /** Rewrites byz[i], which holds byzantine worker i's honest gradient. */
  apply?(byz: Float32Array[], ctx: AttackContext): void;
  /** Forgets what an attack with memory (drift) learned: a new run starts. */
  reset?(): void;
}

/** Coordinate-wise mean of the honest gradients. */
function honestMean(ctx: AttackContext): Float64Array {
  const d = ctx.honest[0].length;
  const m = new Float64Array(d);
  for (const g of ctx.honest) for (let j = 0; j < d; j++) m[j] += g[j];
  for (let j = 0; j < d; j++) m[j] /= ctx.honest.length;
  return m;
}

export function signFlip(): Attack {
  return { name: "sign flip", apply: (byz) => byz.forEach((g) => g.forEach((v, j) => (g[j] = -v))) };
}

/** Replaces the gradient with N(0, sigma^2) noise. */
export function gaussianNoise(sigma: number): Attack {
  return {
    name: `gaussian σ=${sigma}`,
    apply: (byz, ctx) => byz.forEach((g) => g.forEach((_, j) => (g[j] = sigma * gaussian(ctx.rng)))),
  };
}

export function scaling(factor: number): Attack {
  return { name: `scaling ×${factor}`, apply: (byz) => byz.forEach((g) => g.forEach((v, j) => (g[j] = factor * v))) };
}

/** Byzantine workers train on label classes - 1 - y. */
export function labelFlip(): Attack {
  return { name: "label flip", flipLabel: (y, classes) => classes - 1 - y };
}

/** Inner product manipulation (Xie, Koyejo, Gupta 2020): every byzantine
 * worker sends -epsilon * mean(honest). */
export function ipm(epsilon: number): Attack {
  return {
    name: `IPM ε=${epsilon}`,
    apply: (byz, ctx) => {
      const m = honestMean(ctx);
      for (const g of byz) for (let j = 0; j < g.length; j++) g[j] = -epsilon * m[j];
    },
  };
}

/** Inverse of the standard normal CDF (Acklam's rational approximation,
 * relative error < 1.2e-9). */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) return p === 0 ? -Infinity : p === 1 ? Infinity : NaN;
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const tail = (q: number) =>
    (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5, r = q * q;
  return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/** ALIE's z_max (Baruch, Baruch, Goldberg 2019): with s = floor(n/2 + 1) - f
 * honest workers the attackers need on their side, the largest z such that
 * s workers are further from the mean than mean - z sigma:
 * z = Phi^-1((n - s) / n). */
export function alieZ(n: number, f: number): number {
  const s = Math.floor(n / 2 + 1) - f;
  return normalQuantile((n - s) / n);
}

/** "A Little Is Enough": every byzantine worker sends mean - z_max * std of
 * the honest gradients, coordinate-wise; small enough to pass as honest. */
export function alie(): Attack {
  return {
    name: "ALIE",
    apply: (byz, ctx) => {
      const m = honestMean(ctx);
      const z = alieZ(ctx.workers, ctx.byzantine);
      const h = ctx.honest.length;
      for (let j = 0; j < m.length; j++) {
        let v = 0;
        for (const g of ctx.honest) v += (g[j] - m[j]) ** 2;
        const x = m[j] - z * Math.sqrt(v / h);
        for (const g of byz) g[j] = x;
      }
    },
  };
}

/** Where the gate puts a chunk's sum of squares: center and sigma in ln
 * space. From the gate when the attacker is told it; otherwise estimated
 * from the honest chunks (the omniscient attacker computes what the gate
 * would learn). */
function chunkReference(ctx: AttackContext, c: number, lo: number, hi: number): { center: number; sigma: number } {
  const v = ctx.gate?.(c);
  if (v && v.phase !== "calibrating" && v.log) return { center: v.center, sigma: v.sigma };
  const logs = ctx.honest.map((g) => {
    let s = 0;
    for (let j = lo; j < hi; j++) s += g[j] * g[j];
    return Math.log(s);
  });
  const center = logs.reduce((a, b) => a + b, 0) / logs.length;
  const sigma = Math.sqrt(logs.reduce((a, b) => a + (b - center) ** 2, 0) / Math.max(1, logs.length - 1));
  return { center, sigma };
}

/** Sends -mean(honest), chunk by chunk scaled to a sum of squares of
 * exp(center + z(round) sigma): the most harmful direction at the largest
 * size the gate lets through. */
function aimed(name: string, zOf: (round: number, first: number) => number, frozen: boolean): Attack {
  let first = -1;
  const frozenRef = new Map<number, { center: number; sigma: number }>();
  return {
    name,
    reset: () => {
      first = -1;
      frozenRef.clear();
    },
    apply: (byz, ctx) => {
      if (first < 0) first = ctx.round;
      const m = honestMean(ctx);
      const z = zOf(ctx.round, first);
      for (let lo = 0, c = 0; lo < m.length; lo += ctx.chunkElems, c++) {
        const hi = Math.min(m.length, lo + ctx.chunkElems);
        let ref = frozen ? frozenRef.get(c) : undefined;
        if (!ref) {
          ref = chunkReference(ctx, c, lo, hi);
          if (frozen && Number.isFinite(ref.center)) frozenRef.set(c, ref);
        }
        let norm2 = 0;
        for (let j = lo; j < hi; j++) norm2 += m[j] * m[j];
        const k = norm2 > 0 ? -Math.sqrt(Math.exp(ref.center + z * ref.sigma) / norm2) : 0;
        for (const g of byz) for (let j = lo; j < hi; j++) g[j] = k * m[j];
      }
    },
  };
}

/** The adaptive attacker: each round, every chunk aimed at z sigmas above
 * the gate's current center (default 3.4, just inside a 3.5 gate). */
export function adaptive(z = 3.4): Attack {
  return aimed(`adaptive ${z}σ`, () => z, false);
}

/** The slow drift: the statistic climbs step sigma per round from where the
 * gate stood when the attack began (cumulative: round k of the attack is at
 * (k + 1) step sigma above that first center). */
export function drift(step = 0.5): Attack {
  return aimed(`drift +${step}σ/round`, (round, first) => (round - first + 1) * step, true);
}
