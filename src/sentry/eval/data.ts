// Synthetic classification data for `ainftp sentry eval`: Gaussian classes
// around random means, deterministic from a seed, and its split over
// workers, either IID or non-IID by a Dirichlet(alpha) draw of each class's
// share per worker (the usual federated-learning skew).
import { mulberry32 } from "../../random.ts";

/** Row-major features with integer labels. */
export interface Dataset {
  /** rows x dim features. */
  x: Float32Array;
  y: Uint8Array;
  rows: number;
  dim: number;
  classes: number;
}

export interface SyntheticOptions {
  seed: number;
  /** Features (default 50). */
  dim?: number;
  /** Classes (default 4; at most 256). */
  classes?: number;
  train?: number;
  test?: number;
  /** Standard deviation of each class mean's coordinates; the features add
   * unit Gaussian noise. 0.4 at dim 50 puts class means ~4 noise sigmas
   * apart: a linear model reaches about 90% (default 0.4). */
  spread?: number;
}

/** Standard normal (Box-Muller; 1 - u keeps the log argument in (0, 1]). */
export function gaussian(rng: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

/** Gamma(shape, 1) by Marsaglia and Tsang (2000); shape < 1 through
 * Gamma(shape + 1) * U^(1/shape). */
export function gamma(rng: () => number, shape: number): number {
  if (!(shape > 0)) throw new RangeError(`gamma shape must be > 0, got ${shape}`);
  if (shape < 1) return gamma(rng, shape + 1) * (1 - rng()) ** (1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number, v: number;
    do {
      x = gaussian(rng);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = 1 - rng();
    if (u < 1 - 0.0331 * x * x * x * x) return d * v;
    if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
  }
}

/** A draw from the symmetric Dirichlet(alpha, ..., alpha) over k outcomes. */
export function dirichlet(rng: () => number, alpha: number, k: number): Float64Array {
  const p = new Float64Array(k);
  let total = 0;
  for (let i = 0; i < k; i++) total += p[i] = gamma(rng, alpha);
  for (let i = 0; i < k; i++) p[i] /= total;
  return p;
}

/** Train and test sets drawn around the same class means. */
export function synthetic(o: SyntheticOptions): { train: Dataset; test: Dataset } {
  const dim = o.dim ?? 50;
  const classes = o.classes ?? 4;
  const spread = o.spread ?? 0.4;
  if (!(classes >= 2 && classes <= 256)) throw new RangeError(`classes must be in [2, 256], got ${classes}`);
  const rng = mulberry32(o.seed);
  const means = new Float32Array(classes * dim);
  for (let i = 0; i < means.length; i++) means[i] = spread * gaussian(rng);
  const draw = (rows: number): Dataset => {
    const x = new Float32Array(rows * dim);
    const y = new Uint8Array(rows);
    for (let r = 0; r < rows; r++) {
      const c = Math.floor(rng() * classes);
      y[r] = c;
      for (let j = 0; j < dim; j++) x[r * dim + j] = means[c * dim + j] + gaussian(rng);
    }
    return { x, y, rows, dim, classes };
  };
  return { train: draw(o.train ?? 10_000), test: draw(o.test ?? 2_000) };
}

/** Fisher-Yates shuffle of 0..n-1. */
function permutation(rng: () => number, n: number): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const k = Math.floor(rng() * (i + 1));
    const t = p[i];
    p[i] = p[k];
    p[k] = t;
  }
  return p;
}

/** Row indices per worker: a random partition into near-equal shares. */
export function iidSplit(rows: number, workers: number, seed: number): Uint32Array[] {
  if (!(workers >= 1)) throw new RangeError("workers must be >= 1");
  const p = permutation(mulberry32(seed), rows);
  return Array.from({ length: workers }, (_, w) =>
    p.slice(Math.floor((w * rows) / workers), Math.floor(((w + 1) * rows) / workers)).sort(),
  );
}

/** Row indices per worker: each class's rows are divided among the workers
 * in Dirichlet(alpha) proportions (alpha 0.5: most workers see mostly one or
 * two classes). Redrawn until every worker has at least minRows rows. */
export function dirichletSplit(
  labels: Uint8Array, classes: number, workers: number, o: { alpha?: number; seed: number; minRows?: number },
): Uint32Array[] {
  const alpha = o.alpha ?? 0.5;
  const minRows = o.minRows ?? 10;
  if (minRows * workers > labels.length) throw new RangeError(`${labels.length} rows cannot give ${workers} workers ${minRows} each`);
  const rng = mulberry32(o.seed);
  const byClass: number[][] = Array.from({ length: classes }, () => []);
  for (let r = 0; r < labels.length; r++) byClass[labels[r]].push(r);
  for (let attempt = 0; ; attempt++) {
    const shares: number[][] = Array.from({ length: workers }, () => []);
    for (const members of byClass) {
      const order = permutation(rng, members.length);
      const p = dirichlet(rng, alpha, workers);
      let start = 0, cum = 0;
      for (let w = 0; w < workers; w++) {
        cum += p[w];
        const end = w === workers - 1 ? members.length : Math.round(cum * members.length);
        for (let i = start; i < end; i++) shares[w].push(members[order[i]]);
        start = end;
      }
    }
    if (shares.every((s) => s.length >= minRows)) return shares.map((s) => Uint32Array.from(s).sort());
    if (attempt === 1000) throw new RangeError(`no Dirichlet(${alpha}) split in 1000 draws gives every worker ${minRows} rows`);
  }
}
