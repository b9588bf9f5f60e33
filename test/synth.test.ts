// The synthetic gradients of `ainftp swarm --synthetic` and the bench's
// verification (native/collective.c): ainftp_synth's values, and
// ainftp_synth_rel_l2, which checks a result against the exact sum over the
// ranks without making any rank's whole gradient first.
import { afterAll, describe, expect, test } from "bun:test";
import { coll } from "../native/collective.ts";
import { quantIsa, quantIsasSupported, setQuantIsa } from "../native/quant.ts";

const synth = (seed: number, rank: number, round: number, n: number, scale = 1) => {
  const v = new Float32Array(n);
  coll.ainftp_synth(seed, rank, round, scale, v, n);
  return v;
};

/** The relative L2 error of x against the f64 sum of `ranks` ranks' gradients, here in TypeScript. */
function relL2(x: Float32Array, seed: number, ranks: number, round: number, scale: number): number {
  const sum = new Float64Array(x.length);
  for (let r = 0; r < ranks; r++) {
    const g = synth(seed, r, round, x.length, scale);
    for (let i = 0; i < x.length; i++) sum[i] += g[i];
  }
  let num = 0, den = 0;
  for (let i = 0; i < x.length; i++) (num += (x[i] - sum[i]) ** 2), (den += sum[i] ** 2);
  return Math.sqrt(num / den);
}

describe("synthetic gradients", () => {
  const was = quantIsa();
  afterAll(() => void setQuantIsa(was));

  test("deterministic per (seed, rank, round); centred, sigma 2, bounded by 2 sqrt(12); scale multiplies", () => {
    const n = 200_003;
    const a = synth(1, 0, 5, n);
    expect(synth(1, 0, 5, n)).toEqual(a);
    for (const other of [synth(2, 0, 5, n), synth(1, 1, 5, n), synth(1, 0, 6, n)]) {
      let same = 0;
      for (let i = 0; i < n; i++) same += +(other[i] === a[i]);
      expect(same).toBeLessThan(n / 100);
    }
    let s = 0, s2 = 0, max = 0;
    for (const v of a) (s += v), (s2 += v * v), (max = Math.max(max, Math.abs(v)));
    expect(Math.abs(s / n)).toBeLessThan(0.02);
    expect(Math.abs(s2 / n - 4)).toBeLessThan(0.08);
    expect(max).toBeLessThanOrEqual(2 * Math.sqrt(12) + 1e-5);
    expect(max).toBeGreaterThan(6);
    const scaled = synth(1, 0, 5, n, 0.25);
    for (let i = 0; i < n; i += 997) expect(scaled[i]).toBe(Math.fround(a[i] * 0.25));
    // a prefix is the start of the longer stream (value i depends on i alone)
    expect(synth(1, 0, 5, 1000)).toEqual(a.subarray(0, 1000));
  });

  test("synth_rel_l2: 0 for the exact sum, the TypeScript figure for a wrong one, in every build; ranks out of range give NaN", () => {
    for (const isa of quantIsasSupported()) {
      setQuantIsa(isa);
      for (const [n, ranks] of [[1, 1], [511, 2], [4096 + 7, 4], [70_001, 5]] as const) {
        const exact = new Float32Array(n);
        for (let r = 0; r < ranks; r++) {
          const g = synth(3, r, 9, n, 0.5);
          for (let i = 0; i < n; i++) exact[i] += g[i];
        }
        const want = relL2(exact, 3, ranks, 9, 0.5);
        expect(coll.ainftp_synth_rel_l2(3, ranks, 9, 0.5, exact, n)).toBeCloseTo(want, 12);
        expect(want).toBeLessThan(1e-6); // (float32 sums of four values)
        // one rank left out, and another round's gradients: both far off
        const short = new Float32Array(n);
        for (let r = 0; r < ranks - 1; r++) {
          const g = synth(3, r, 9, n, 0.5);
          for (let i = 0; i < n; i++) short[i] += g[i];
        }
        expect(coll.ainftp_synth_rel_l2(3, ranks, 9, 0.5, short, n)).toBeCloseTo(relL2(short, 3, ranks, 9, 0.5), 9);
        if (n > 100) expect(coll.ainftp_synth_rel_l2(3, ranks, 9, 0.5, short, n)).toBeGreaterThan(0.3);
        expect(coll.ainftp_synth_rel_l2(3, ranks, 10, 0.5, exact, n)).toBeGreaterThan(0.5);
      }
      // every build makes the same values
      expect(synth(7, 2, 1, 5000)).toEqual((setQuantIsa(quantIsasSupported()[0]), synth(7, 2, 1, 5000)));
    }
    const x = new Float32Array(8);
    // (NaN: Math.max keeps it, and no bound holds it, so such a round never verifies)
    expect(coll.ainftp_synth_rel_l2(1, 0, 0, 1, x, 8)).toBeNaN();
    expect(coll.ainftp_synth_rel_l2(1, 65, 0, 1, x, 8)).toBeNaN();
    expect(Math.max(0, coll.ainftp_synth_rel_l2(1, 65, 0, 1, x, 8)) <= 1).toBe(false);
  });
});
