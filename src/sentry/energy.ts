// The sentry's statistic, as the XDP program computes it (bpf/ainftp.bpf.c
// ainftp_sentry_energy): the log of a contribution's mean square in real
// units, 16 * log2(mean q^2 * 4^exp), over SENTRY_SAMPLES elements at a
// random phase of an even stride. Same integer arithmetic, so a gate set
// from these values means the same thing in the kernel.
import { ENERGY_ZERO, SENTRY_SAMPLES } from "../abi.ts";

/** 16 * log2(x) for x > 0: the position of the leading one, plus the four
 * bits below it read as a linear fraction (error under 1.4 sixteenths). */
export function log2Q4(x: bigint): number {
  if (x <= 0n) throw new RangeError("log2Q4 of a non-positive value");
  const n = x.toString(2).length - 1;
  const frac = n >= 4 ? Number((x >> BigInt(n - 4)) & 15n) : Number((x << BigInt(4 - n)) & 15n);
  return n * 16 + frac;
}

/** Sampling of a `count`-element contribution: how many elements, and the stride. */
export function samplePlan(count: number): { m: number; stride: number } {
  const m = Math.min(count, SENTRY_SAMPLES);
  return { m, stride: Math.floor(count / m) };
}

/** The energy the program computes for `q` at scale `exp` when its random
 * phase is `phase` (0 <= phase < stride). */
export function energyOf(q: ArrayLike<number>, exp: number, phase = 0): number {
  const count = q.length;
  if (count === 0) return ENERGY_ZERO;
  const { m, stride } = samplePlan(count);
  let s = 0n;
  for (let i = 0, pos = phase; i < m; i++, pos += stride) s += BigInt(q[pos]) * BigInt(q[pos]);
  if (s === 0n) return ENERGY_ZERO;
  return log2Q4(s) - log2Q4(BigInt(m)) + 32 * exp;
}

/** Every energy the program can compute for q (one per phase). */
export function possibleEnergies(q: ArrayLike<number>, exp: number): Set<number> {
  const { stride } = samplePlan(q.length);
  const out = new Set<number>();
  for (let p = 0; p < stride; p++) out.add(energyOf(q, exp, p));
  return out;
}

/** Energy (in the same 1/16-log2 units) of a real mean square: for gates
 * derived from f32 statistics. */
export function energyOfMeanSquare(ms: number): number {
  return ms > 0 ? Math.round(16 * Math.log2(ms)) : ENERGY_ZERO;
}
