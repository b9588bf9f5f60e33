// The Sentry's statistics in userspace: a gate per statistic (sum of squares
// of a contribution's int16 values, or its dot product with the previous
// round's result) that learns what honest contributions look like and turns
// that into the integer thresholds the XDP program compares against; strikes
// and quarantine for workers the gate keeps rejecting.
//
// The gate's life, per chunk:
//   1. calibrating: it has seen fewer than `calibration` values and has no
//      reference; it rejects everything (thresholds lo > hi) and `record`s
//      what it sees, unjudged. The XDP program still exports the statistics
//      of what it rejects, so one round is enough to calibrate.
//   2. warm-up: the reference is the median and MAD of the values recorded
//      so far; only accepted values are pushed. Median and MAD ignore up to
//      half of the values, so an attacker present from the first round
//      cannot widen the gate.
//   3. steady: after `warmup` values, the warm-up values inside the robust
//      gate seed a Welford accumulator, which from then on sees accepted
//      values only (a rejected value never moves the gate), each winsorized
//      at center ± clip sigma before it is pushed.
//
// Why winsorize. Attackers that sit just inside the gate (3.4 sigma) are
// accepted; pushed as they are, they widen the gate a little every round,
// without bound (measured: 2 of 10 of them multiply sigma by 10^16 in 400
// rounds at halfLife 50; in the eval the gate then lets a training-breaking
// update through). Winsorized at center ± k sigma (the variance rescaled to
// stay unbiased for Gaussian data), a share e of attackers adds about
// e k^2 / (1 - e) sigma^2 of variance against the k-winsorized normal's
// c(k) of honest variance: the gate stays bounded while that is below c(k),
// i.e. e < 26% at k = 1.5 (measured: sigma settles at 1.9 times the honest
// sigma at 20%), but not at k = 2 for 20% (still growing). k = 1 would
// allow a third, at a 6% false positive rate in the eval instead of 2%.
//
// Why forget (halfLife). Gradient norms fall as training converges (by e^2
// in sum of squares over the first 30 rounds of the eval): a Welford over
// all history lags behind and keeps the trend as variance (measured in the
// tests: a gate 4 times too wide). The reference filter forgets with a
// half-life of 50 values.
//
// The lower gate. A sum of squares far below normal is an attack too: a
// free rider sending zeros, or an update scaled down to dilute the mean
// (IPM with small epsilon). In log space the distribution is symmetric, so
// the same z serves both sides (lowerZ, default z). For the dot product the
// lower gate is the important one: a contribution opposing the last result
// has a negative dot product.

/** Consistency constant: MAD * 1.4826 estimates sigma for Gaussian data. */
export const MAD_SCALE = 1.4826;
export const U64_MAX = (1n << 64n) - 1n;
export const S64_MIN = -(1n << 63n);
export const S64_MAX = (1n << 63n) - 1n;

// ---- Welford ---------------------------------------------------------------

/** Running mean and variance (Welford), weighted so that old values can be
 * discounted (decay) and two accumulators merged (Chan et al.). */
export class Welford {
  /** Total weight: the number of values pushed, unless decayed. */
  count = 0;
  mean = 0;
  /** Sum of weighted squared deviations from the mean. */
  m2 = 0;

  push(x: number, weight = 1): void {
    if (!(weight > 0)) return;
    this.count += weight;
    const delta = x - this.mean;
    this.mean += (weight / this.count) * delta;
    this.m2 += weight * delta * (x - this.mean);
  }

  /** Adds another accumulator's values, as if pushed here. */
  merge(other: Welford): void {
    if (other.count === 0) return;
    if (this.count === 0) {
      this.count = other.count;
      this.mean = other.mean;
      this.m2 = other.m2;
      return;
    }
    const n = this.count + other.count;
    const delta = other.mean - this.mean;
    this.mean += (delta * other.count) / n;
    this.m2 += other.m2 + (delta * delta * this.count * other.count) / n;
    this.count = n;
  }

  /** Multiplies the weight of everything pushed so far by factor (0, 1]. */
  decay(factor: number): void {
    this.count *= factor;
    this.m2 *= factor;
  }

  /** Sample variance, m2 / (count - 1); 0 below two values. */
  get variance(): number {
    return this.count > 1 ? this.m2 / (this.count - 1) : 0;
  }

  get sigma(): number {
    return Math.sqrt(this.variance);
  }
}

// ---- robust location and scale ---------------------------------------------

/** The median (mean of the two middle values for an even count); NaN when empty. */
export function median(xs: ArrayLike<number>): number {
  const n = xs.length;
  if (n === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  return n & 1 ? s[n >> 1] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** Median absolute deviation around center, scaled by 1.4826 to estimate sigma. */
export function mad(xs: ArrayLike<number>, center = median(xs)): number {
  const dev = new Float64Array(xs.length);
  for (let i = 0; i < xs.length; i++) dev[i] = Math.abs(xs[i] - center);
  return MAD_SCALE * median(dev);
}

// ---- the integer statistics the XDP program computes -----------------------

/** Sum of squares of int16 values: exact (below 2^53 for up to 8M values),
 * what the XDP program accumulates in a u64. */
export function sumSquares(q: Int16Array): number {
  let s = 0;
  for (let i = 0; i < q.length; i++) s += q[i] * q[i];
  return s;
}

/** Dot product of two int16 vectors (s64 in the XDP program); the shorter length counts. */
export function dotProduct(q: Int16Array, r: Int16Array): number {
  let s = 0;
  const n = Math.min(q.length, r.length);
  for (let i = 0; i < n; i++) s += q[i] * r[i];
  return s;
}

// ---- the gate --------------------------------------------------------------

export interface GateOptions {
  /** Upper gate: reject above center + z sigma; Infinity turns it off (default 3.5). */
  z?: number;
  /** Lower gate: reject below center - lowerZ sigma; null turns it off
   * (default z, or 3.5 when the upper gate is off). */
  lowerZ?: number | null;
  /** Values (recorded while calibrating, then accepted) before Welford
   * takes over from median/MAD (default 20). */
  warmup?: number;
  /** Values recorded before the gate has a reference and stops rejecting everything (default 5). */
  calibration?: number;
  /** Judge ln(x) instead of x (for a sum of squares). */
  log?: boolean;
  /** Floor on sigma, in the judged units (after the log): identical warm-up
   * values must not make a zero-width gate (default 0). */
  minSigma?: number;
  /** Half-life of Welford's memory in accepted values, for a statistic that
   * drifts as training converges (default Infinity: plain Welford). */
  halfLife?: number;
  /** Accepted values are winsorized at center ± clip sigma before Welford
   * sees them; Infinity pushes them as they are (default 1.5). */
  clip?: number;
}

export interface GateDecision {
  accept: boolean;
  /** (t - center) / sigma in the judged units; NaN while calibrating. */
  z: number;
}

/** What the gate currently holds, in the judged units (ln x when log). */
export interface GateView {
  phase: "calibrating" | "warmup" | "steady";
  log: boolean;
  center: number;
  sigma: number;
  /** Accepted range, in the statistic's own units (exp'd back when log);
   * lo > hi while calibrating. */
  lo: number;
  hi: number;
}

/** Integer thresholds for the XDP program: accept iff lo <= s <= hi. */
export interface Thresholds {
  lo: bigint;
  hi: bigint;
}

export class Gate {
  readonly z: number;
  readonly lowerZ: number | null;
  readonly warmup: number;
  readonly calibration: number;
  readonly log: boolean;
  readonly minSigma: number;
  readonly clip: number;
  private readonly keep: number;
  /** Variance of a standard normal winsorized at ±clip: rescales Welford's. */
  private readonly clipVariance: number;
  private readonly buffer: number[] = [];
  private readonly welford = new Welford();
  private steady = false;

  constructor(o: GateOptions = {}) {
    this.z = o.z ?? 3.5;
    this.lowerZ = o.lowerZ === undefined ? (Number.isFinite(this.z) ? this.z : 3.5) : o.lowerZ;
    this.warmup = o.warmup ?? 20;
    this.calibration = Math.min(o.calibration ?? 5, this.warmup);
    this.log = o.log ?? false;
    this.minSigma = o.minSigma ?? 0;
    const halfLife = o.halfLife ?? Infinity;
    this.keep = Number.isFinite(halfLife) ? 0.5 ** (1 / halfLife) : 1;
    this.clip = o.clip ?? 1.5;
    this.clipVariance = winsorizedVariance(this.clip);
    if (!(this.clip > 0)) throw new RangeError("gate clip must be > 0");
    if (!(this.z > 0) || (this.lowerZ !== null && !(this.lowerZ > 0))) throw new RangeError("gate z values must be > 0");
    if (!(this.calibration >= 1)) throw new RangeError("gate calibration and warmup must be >= 1");
    if (!(halfLife > 0)) throw new RangeError("gate halfLife must be > 0");
  }

  get phase(): GateView["phase"] {
    return this.steady ? "steady" : this.buffer.length < this.calibration ? "calibrating" : "warmup";
  }

  /** The value the gate judges: ln x in log space (-Infinity for x <= 0). */
  private judged(x: number): number {
    return this.log ? (x > 0 ? Math.log(x) : -Infinity) : x;
  }

  private reference(): { center: number; sigma: number } {
    if (this.steady) return { center: this.welford.mean, sigma: Math.max(Math.sqrt(this.welford.variance / this.clipVariance), this.minSigma) };
    const center = median(this.buffer);
    return { center, sigma: Math.max(mad(this.buffer, center), this.minSigma) };
  }

  /** Accepted range in judged units; null while calibrating. */
  private bounds(): { center: number; sigma: number; lo: number; hi: number } | null {
    if (this.phase === "calibrating") return null;
    const { center, sigma } = this.reference();
    const lo = this.lowerZ === null || this.lowerZ === Infinity ? -Infinity : center - this.lowerZ * sigma;
    const hi = this.z === Infinity ? Infinity : center + this.z * sigma;
    return { center, sigma, lo, hi };
  }

  /** Judges x without changing anything. */
  check(x: number): GateDecision {
    const b = this.bounds();
    if (!b) return { accept: false, z: NaN };
    const t = this.judged(x);
    const d = t - b.center;
    const z = b.sigma > 0 ? d / b.sigma : d === 0 ? 0 : d > 0 ? Infinity : -Infinity;
    return { accept: t >= b.lo && t <= b.hi, z };
  }

  /** Records an accepted value. */
  push(x: number): void {
    const t = this.judged(x);
    if (!Number.isFinite(t)) return; // ln 0 or an infinity: no meaningful mean; rejected by any sane gate
    if (this.steady) {
      const { center, sigma } = this.reference();
      this.welford.decay(this.keep);
      this.welford.push(Math.max(center - this.clip * sigma, Math.min(center + this.clip * sigma, t)));
      return;
    }
    this.buffer.push(t);
    if (this.buffer.length >= this.warmup) this.seed();
  }

  /** Records values unjudged while calibrating (the XDP program rejected
   * them all, but their statistics are what the reference is built from). */
  record(xs: ArrayLike<number>): void {
    if (this.phase !== "calibrating") throw new Error("gate.record: calibration is over; push accepted values instead");
    for (let i = 0; i < xs.length; i++) {
      const t = this.judged(xs[i]);
      if (Number.isFinite(t)) this.buffer.push(t);
    }
    if (this.buffer.length >= this.warmup) this.seed();
  }

  /** check(x), then push(x) when accepted; while calibrating, records x and rejects. */
  observe(x: number): GateDecision {
    if (this.phase === "calibrating") {
      this.push(x);
      return { accept: false, z: NaN };
    }
    const d = this.check(x);
    if (d.accept) this.push(x);
    return d;
  }

  /** Warm-up is over: Welford starts from the warm-up values the robust gate accepts. */
  private seed(): void {
    const b = this.bounds()!;
    const lo = b.center - this.clip * b.sigma, hi = b.center + this.clip * b.sigma;
    for (const t of this.buffer) if (t >= b.lo && t <= b.hi) this.welford.push(Math.max(lo, Math.min(hi, t)));
    this.steady = true;
    this.buffer.length = 0;
  }

  /** Forgets everything: back to calibrating (for a gate found stale). */
  reset(): void {
    this.buffer.length = 0;
    this.welford.count = this.welford.mean = this.welford.m2 = 0;
    this.steady = false;
  }

  view(): GateView {
    const b = this.bounds();
    if (!b) return { phase: "calibrating", log: this.log, center: NaN, sigma: NaN, lo: Infinity, hi: -Infinity };
    const back = (t: number) => (this.log ? Math.exp(t) : t);
    return { phase: this.phase, log: this.log, center: b.center, sigma: b.sigma, lo: back(b.lo), hi: back(b.hi) };
  }

  /** Thresholds on an integer statistic s whose real value is s * scale
   * (a sum of squares of int16 values at exponent e: scale 4^e), for the
   * XDP program's map: u64 by default, s64 with signed. Rejects everything
   * (lo > hi) while calibrating. */
  thresholds(scale = 1, signed = false): Thresholds {
    const [min, max] = signed ? [S64_MIN, S64_MAX] : [0n, U64_MAX];
    const v = this.view();
    if (v.phase === "calibrating") return { lo: max, hi: min };
    return { lo: toInteger(v.lo / scale, Math.ceil, min, max, max), hi: toInteger(v.hi / scale, Math.floor, min, max, min) };
  }
}

/** round(v) clamped to [min, max]; NaN (a broken reference) becomes ifNaN, which rejects. */
/** Standard normal CDF (Abramowitz and Stegun 26.2.17, error < 7.5e-8). */
export function normalCdf(x: number): number {
  const t = 1 / (1 + 0.2316419 * Math.abs(x));
  const poly = t * (0.31938153 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978 + t * 1.330274429))));
  const tail = Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI) * poly;
  return x >= 0 ? 1 - tail : tail;
}

/** E[min(max(X, -k), k)^2] for a standard normal X. */
function winsorizedVariance(k: number): number {
  if (!Number.isFinite(k)) return 1;
  const inside = 2 * normalCdf(k) - 1;
  const density = Math.exp(-0.5 * k * k) / Math.sqrt(2 * Math.PI);
  return inside - 2 * k * density + k * k * (1 - inside);
}

function toInteger(v: number, round: (v: number) => number, min: bigint, max: bigint, ifNaN: bigint): bigint {
  if (Number.isNaN(v)) return ifNaN;
  if (v <= Number(min)) return min;
  if (v >= Number(max)) return max; // Number(max) rounds up to 2^64 / 2^63: anything at or above is out of range
  return BigInt(round(v));
}

// ---- strikes ---------------------------------------------------------------

export interface StrikesOptions {
  /** Strikes within the window that quarantine a worker (default 3). */
  strikes?: number;
  /** Sliding window, in rounds (default 10). */
  window?: number;
  /** Rounds a quarantine lasts before automatic re-admission (default 20). */
  coolDown?: number;
}

/** Per-worker strike counting over a sliding window of rounds. A worker gets
 * at most one strike per round (ten rejected chunks of one round are one
 * offence, not ten); K strikes within the window quarantine it for R rounds,
 * or until readmit(). A quarantined worker collects no strikes, and comes
 * back with a clean record. */
export class Strikes {
  readonly limit: number;
  readonly window: number;
  readonly coolDown: number;
  private readonly history = new Map<number, number[]>();
  private readonly since = new Map<number, number>();

  constructor(o: StrikesOptions = {}) {
    this.limit = o.strikes ?? 3;
    this.window = o.window ?? 10;
    this.coolDown = o.coolDown ?? 20;
    if (!(this.limit >= 1 && this.window >= 1 && this.coolDown >= 0)) throw new RangeError("strikes, window must be >= 1 and coolDown >= 0");
  }

  /** Records an offence of worker in round; true when it quarantines the worker now. */
  strike(worker: number, round: number): boolean {
    if (this.quarantined(worker, round)) return false;
    const rounds = this.history.get(worker) ?? [];
    if (rounds.at(-1) === round) return false;
    rounds.push(round);
    while (rounds.length && rounds[0] <= round - this.window) rounds.shift();
    this.history.set(worker, rounds);
    if (rounds.length < this.limit) return false;
    this.since.set(worker, round);
    this.history.delete(worker);
    return true;
  }

  /** Whether worker is quarantined in round (re-admitting it once the cool-down has passed). */
  quarantined(worker: number, round: number): boolean {
    const at = this.since.get(worker);
    if (at === undefined) return false;
    if (round < at + this.coolDown) return true;
    this.readmit(worker);
    return false;
  }

  /** Strikes of worker inside the window ending at round. */
  count(worker: number, round: number): number {
    return (this.history.get(worker) ?? []).filter((r) => r > round - this.window && r <= round).length;
  }

  /** Ends worker's quarantine now, with a clean record. */
  readmit(worker: number): void {
    this.since.delete(worker);
    this.history.delete(worker);
  }
}
