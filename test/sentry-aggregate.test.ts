// Robust aggregators (src/sentry/aggregate.ts): each on hand-checkable
// inputs, against a sort-per-coordinate reference on random ones (both the
// small-n and the n > 64 path), and its robustness property: median and
// trimmed mean stay inside the honest range with f < n/2 (or f <= trim)
// arbitrary values, NaN included; centered clipping moves at most tau per
// iteration and settles within f tau / (n - f) of an honest consensus.
import { describe, expect, test } from "bun:test";
import { mulberry32 } from "../src/random.ts";
import { CenteredClipping, mean, median, rows, sum, trimmedMean } from "../src/sentry/aggregate.ts";

const f32 = (...rows: number[][]) => rows.map((r) => Float32Array.from(r));

function randomRows(n: number, d: number, seed: number): Float32Array[] {
  const rng = mulberry32(seed);
  return Array.from({ length: n }, () => Float32Array.from({ length: d }, () => Math.round((rng() - 0.5) * 200) / 8));
}

/** Coordinate-wise reference: sort each column with Array.prototype.sort. */
function reference(xs: Float32Array[], pick: (sorted: number[]) => number): Float32Array {
  const d = xs[0].length;
  return Float32Array.from({ length: d }, (_, j) => pick(xs.map((x) => x[j]).sort((a, b) => a - b)));
}

const norm = (v: ArrayLike<number>) => Math.sqrt(Array.from(v).reduce((a, x) => a + x * x, 0));

describe("sum and mean", () => {
  test("hand-checked", () => {
    const xs = f32([1, 2], [3, 4], [5, 6]);
    expect(Array.from(sum(xs))).toEqual([9, 12]);
    expect(Array.from(mean(xs))).toEqual([3, 4]);
    const out = new Float32Array(2);
    expect(mean(xs, out)).toBe(out);
  });

  test("rows: views of a matrix", () => {
    const m = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const r = rows(m, 3);
    expect(r.map((x) => Array.from(x))).toEqual([[1, 2], [3, 4], [5, 6]]);
    expect(Array.from(median(rows(m, 2)))).toEqual([2.5, 3.5, 4.5]);
    r[1][0] = 30;
    expect(m[2]).toBe(30); // no copy
    expect(() => rows(m, 4)).toThrow("does not have 4 rows");
  });

  test("refuses mismatched input", () => {
    expect(() => sum([])).toThrow("no contributions");
    expect(() => sum(f32([1, 2], [3]))).toThrow("differ in length");
    expect(() => median(f32([1, 2]), new Float32Array(3))).toThrow("out holds 3");
  });
});

describe("trimmed mean and median", () => {
  test("hand-checked", () => {
    const xs = f32([1, 10], [2, -50], [3, 30], [4, 20], [100, 40]);
    expect(Array.from(trimmedMean(xs, 1))).toEqual([3, 20]); // (2+3+4)/3, (10+20+30)/3
    expect(Array.from(trimmedMean(xs, 0))).toEqual(Array.from(mean(xs)));
    expect(Array.from(trimmedMean(xs, 2))).toEqual(Array.from(median(xs)));
    expect(Array.from(median(xs))).toEqual([3, 20]);
    expect(Array.from(median(f32([4], [1], [3], [2])))).toEqual([2.5]);
    expect(() => trimmedMean(xs, 3)).toThrow("2 trim < n");
    expect(() => trimmedMean(xs, 0.5)).toThrow("integer");
  });

  for (const n of [1, 2, 3, 10, 64, 65]) {
    test(`match a sort-per-coordinate reference (n = ${n})`, () => {
      const xs = randomRows(n, 500, n);
      const mid = n >> 1;
      expect(median(xs)).toEqual(reference(xs, (s) => (n & 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2)));
      const trim = (n - 1) >> 2;
      const tm = trimmedMean(xs, trim);
      const ref = reference(xs, (s) => s.slice(trim, n - trim).reduce((a, b) => a + b, 0) / (n - 2 * trim));
      for (let j = 0; j < 500; j++) expect(tm[j]).toBeCloseTo(ref[j], 4);
    });
  }

  test("robust: f < n/2 arbitrary rows (huge, infinite, NaN) keep the median inside the honest range; trim >= f does for the trimmed mean", () => {
    const n = 10, f = 4, d = 1000;
    const honest = randomRows(n - f, d, 21);
    const rng = mulberry32(22);
    const wild = [1e30, -1e30, Infinity, -Infinity, NaN, 0];
    const byz = Array.from({ length: f }, () => Float32Array.from({ length: d }, () => wild[Math.floor(rng() * wild.length)]));
    const xs = [...byz, ...honest];
    const med = median(xs), tm = trimmedMean(xs, f);
    for (let j = 0; j < d; j++) {
      const col = honest.map((x) => x[j]);
      const lo = Math.min(...col), hi = Math.max(...col);
      for (const v of [med[j], tm[j]]) {
        expect(v).toBeGreaterThanOrEqual(lo);
        expect(v).toBeLessThanOrEqual(hi);
      }
    }
    expect(Number.isNaN(mean(xs)[0]) || !Number.isFinite(mean(xs)[0]) || Math.abs(mean(xs)[0]) > 1e20).toBe(true);
  });
});

describe("centered clipping", () => {
  test("with a radius nothing reaches and no momentum, one iteration is the mean", () => {
    const xs = f32([1, 2], [3, 4], [5, 9]);
    const cc = new CenteredClipping({ tau: 1e9, momentum: 0 });
    expect(Array.from(cc.aggregate(xs))).toEqual(Array.from(mean(xs)));
  });

  test("hand-checked clipping: from v = 0, tau = 1, one far worker moves v by tau / n", () => {
    const cc = new CenteredClipping({ tau: 1, momentum: 0 });
    // workers at 0.5 (inside tau), 0 and 100 (clipped to 1): v = (0.5 + 0 + 1) / 3
    const v = cc.aggregate(f32([0.5, 0], [0, 0], [100, 0]));
    expect(v[0]).toBeCloseTo(0.5, 6);
    expect(v[1]).toBe(0);
  });

  test("moves at most tau per iteration, whatever the inputs", () => {
    const cc = new CenteredClipping({ tau: 0.5, iterations: 3, momentum: 0 });
    const xs = randomRows(10, 100, 31).map((x) => x.map((v) => v * 1e6));
    const before = new Float32Array(100);
    for (let round = 0; round < 5; round++) {
      const v = cc.aggregate(xs);
      expect(norm(v.map((x, j) => x - before[j]))).toBeLessThanOrEqual(3 * 0.5 * (1 + 1e-6));
      before.set(v);
    }
  });

  test("robust: with f of n far away, the state settles within f tau / (n - f) of the honest consensus", () => {
    const n = 10, f = 2, d = 50, tau = 1;
    const rng = mulberry32(32);
    const target = Float32Array.from({ length: d }, () => rng() * 4 - 2);
    const xs = Array.from({ length: n }, (_, w) => (w < f ? Float32Array.from({ length: d }, () => 1e6 * (rng() - 0.5)) : target));
    const cc = new CenteredClipping({ tau, iterations: 3, momentum: 0 });
    let v = cc.aggregate(xs);
    for (let round = 1; round < 40; round++) v = cc.aggregate(xs);
    const dist = norm(v.map((x, j) => x - target[j]));
    expect(dist).toBeLessThanOrEqual((f * tau) / (n - f) + 1e-3);
    expect(norm(mean(xs).map((x, j) => x - target[j]))).toBeGreaterThan(1e4); // the mean is lost
  });

  test("worker momentum follows worker ids, also when some are filtered out", () => {
    const cc = new CenteredClipping({ tau: 1e9, momentum: 0.5 });
    cc.aggregate(f32([0], [0], [0]), undefined, [0, 1, 2]);
    // worker 2 absent; workers 0 and 1 send 4: momenta 2 and 2 (0.5 * 4 + 0.5 * 0)
    expect(Array.from(cc.aggregate(f32([4], [4]), undefined, [0, 1]))).toEqual([2]);
    // a new worker starts from its own input: momenta 0.5*4+0.5*2 = 3 and 8
    expect(Array.from(cc.aggregate(f32([4], [8]), undefined, [0, 7]))).toEqual([5.5]);
    cc.reset();
    expect(Array.from(cc.aggregate(f32([6])))).toEqual([6]);
    expect(() => cc.aggregate(f32([1, 2]))).toThrow("state of 1");
    expect(() => new CenteredClipping({ tau: 0 })).toThrow("tau");
  });

  test("a NaN or infinite contribution moves nothing", () => {
    const cc = new CenteredClipping({ tau: 10, momentum: 0 });
    // the NaN worker counts as one sitting at the center: v = ([2, 2] + [4, 3]) / 3
    const v = cc.aggregate(f32([NaN, 1], [2, 2], [4, 3]));
    expect(v[0]).toBeCloseTo(2, 6);
    expect(v[1]).toBeCloseTo(5 / 3, 6);
  });
});
