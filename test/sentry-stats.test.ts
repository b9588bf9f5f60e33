// The Sentry's statistics (src/sentry/stats.ts): Welford against a two-pass
// computation and its merge, median/MAD, the gate's three phases (an outlier
// among warm-up values does not widen it, rejected values do not move it,
// attackers at its edge cannot widen it round after round), its integer
// thresholds against its own check, and strikes with quarantine.
import { describe, expect, test } from "bun:test";
import { mulberry32 } from "../src/random.ts";
import {
  Gate, MAD_SCALE, S64_MAX, S64_MIN, Strikes, U64_MAX, Welford, dotProduct, mad, median, normalCdf, sumSquares,
} from "../src/sentry/stats.ts";

function gaussian(rng: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

function twoPass(xs: number[]): { mean: number; variance: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  return { mean, variance: xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1) };
}

/** A gate that has finished warm-up on values of N(center, sigma). */
function steadyGate(o: ConstructorParameters<typeof Gate>[0], center: number, sigma: number, seed: number): Gate {
  const g = new Gate(o);
  const rng = mulberry32(seed);
  while (g.phase !== "steady") g.observe(center + sigma * gaussian(rng));
  return g;
}

describe("Welford", () => {
  test("matches a two-pass mean and sample variance", () => {
    const rng = mulberry32(1);
    // A large offset is where the naive sum-of-squares formula loses every digit.
    const xs = Array.from({ length: 10_000 }, () => 1e9 + 3 * gaussian(rng));
    const w = new Welford();
    for (const x of xs) w.push(x);
    const ref = twoPass(xs);
    expect(w.count).toBe(xs.length);
    expect(Math.abs(w.mean - ref.mean)).toBeLessThan(1e-4); // 1e-13 relative
    expect(w.variance / ref.variance).toBeCloseTo(1, 7);
    expect(w.sigma / Math.sqrt(ref.variance)).toBeCloseTo(1, 7);
    const naive = (xs.reduce((a, x) => a + x * x, 0) - xs.length * ref.mean ** 2) / (xs.length - 1);
    expect(Math.abs(naive / ref.variance - 1)).toBeGreaterThan(0.01); // what Welford is for
  });

  test("no variance below two values; a weight of 2 is the value pushed twice", () => {
    const w = new Welford();
    expect(w.variance).toBe(0);
    w.push(5);
    expect([w.mean, w.variance]).toEqual([5, 0]);
    const a = new Welford(), b = new Welford();
    for (const x of [1, 4, 4, 9]) a.push(x);
    for (const [x, k] of [[1, 1], [4, 2], [9, 1]]) b.push(x, k);
    expect(b.count).toBe(a.count);
    expect(b.mean).toBeCloseTo(a.mean, 12);
    expect(b.variance).toBeCloseTo(a.variance, 12);
  });

  test("merge equals pushing everything into one", () => {
    const rng = mulberry32(2);
    const xs = Array.from({ length: 1000 }, () => 10 + gaussian(rng));
    const all = new Welford(), left = new Welford(), right = new Welford();
    xs.forEach((x, i) => (all.push(x), (i < 300 ? left : right).push(x)));
    left.merge(right);
    expect(left.count).toBe(all.count);
    expect(left.mean).toBeCloseTo(all.mean, 12);
    expect(left.variance).toBeCloseTo(all.variance, 12);
    const empty = new Welford();
    empty.merge(all);
    expect([empty.count, empty.mean, empty.m2]).toEqual([all.count, all.mean, all.m2]);
    all.merge(new Welford());
    expect(all.count).toBe(1000);
  });

  test("decay discounts history", () => {
    const w = new Welford();
    for (let i = 0; i < 100; i++) w.push(0);
    w.decay(0.01);
    w.push(10);
    expect(w.mean).toBeCloseTo(5, 9); // 100 old values now weigh as much as the new one
  });
});

describe("median and MAD", () => {
  test("hand-checked values", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([])).toBeNaN();
    // deviations from 3: 2 1 0 1 97 -> median 1
    expect(mad([1, 2, 3, 4, 100])).toBeCloseTo(MAD_SCALE, 12);
    expect(mad([7, 7, 7])).toBe(0);
  });

  test("MAD estimates sigma of Gaussian data, and ignores a third of wild values", () => {
    const rng = mulberry32(3);
    const xs = Array.from({ length: 20_000 }, () => 2 * gaussian(rng));
    expect(mad(xs)).toBeCloseTo(2, 1);
    for (let i = 0; i < xs.length / 3; i++) xs[i] = 1e12;
    expect(median(xs)).toBeLessThan(2);
    expect(mad(xs)).toBeLessThan(6);
  });

  test("normal CDF", () => {
    expect(normalCdf(0)).toBeCloseTo(0.5, 7);
    expect(normalCdf(1.959964)).toBeCloseTo(0.975, 6);
    expect(normalCdf(-3)).toBeCloseTo(0.0013499, 6);
  });
});

describe("integer statistics", () => {
  test("sum of squares and dot product of int16 values, exact at the extremes", () => {
    const q = Int16Array.from([32767, -32767, 3, 0]);
    expect(sumSquares(q)).toBe(2 * 32767 ** 2 + 9);
    expect(sumSquares(new Int16Array(1720).fill(-32767))).toBe(1720 * 32767 ** 2);
    expect(dotProduct(q, Int16Array.from([1, 1, -2, 5]))).toBe(-6);
    expect(dotProduct(q, Int16Array.from([2]))).toBe(65534); // the shorter length counts
  });
});

describe("Gate", () => {
  test("calibrating: rejects everything, thresholds empty, records the first values unjudged", () => {
    const g = new Gate({ calibration: 3, warmup: 10 });
    expect(g.phase).toBe("calibrating");
    expect(g.check(1)).toEqual({ accept: false, z: NaN });
    const t = g.thresholds();
    expect(t.lo > t.hi).toBe(true);
    const ts = g.thresholds(1, true);
    expect(ts.lo > ts.hi).toBe(true);
    g.record([10, 11, 1e9]); // an attacker among the first values
    expect(g.phase).toBe("warmup");
    expect(g.check(10.5).accept).toBe(true);
    expect(g.check(1e9).accept).toBe(false);
    expect(() => g.record([1])).toThrow("calibration is over");
  });

  test("an outlier among warm-up values does not widen the gate", () => {
    const rng = mulberry32(4);
    const values = Array.from({ length: 20 }, () => 100 + gaussian(rng));
    const clean = new Gate();
    clean.record(values);
    const dirty = new Gate();
    dirty.record([...values.slice(0, 19), 1e6]); // one of the 20 replaced by a wild value
    expect(clean.phase).toBe("steady");
    expect(dirty.phase).toBe("steady");
    expect(Math.abs(dirty.view().center - clean.view().center)).toBeLessThan(0.5);
    expect(dirty.view().sigma).toBeLessThan(1.3 * clean.view().sigma);
    expect(dirty.view().hi).toBeLessThan(110);
    expect(dirty.check(1e6).accept).toBe(false);
  });

  test("rejected values do not move it", () => {
    const g = steadyGate({}, 0, 1, 5);
    const before = g.view();
    for (const x of [1e9, -1e9, 50, -50, Infinity, NaN]) expect(g.observe(x).accept).toBe(false);
    expect(g.view()).toEqual(before);
    const mid = g.observe(before.center);
    expect(mid.accept).toBe(true);
    expect(mid.z).toBeCloseTo(0, 12);
  });

  test("z is in sigmas; upper and lower gate at ±3.5 by default; the lower gate can be turned off", () => {
    const g = steadyGate({}, 10, 2, 6);
    const { center, sigma } = g.view();
    expect(g.check(center + 3.4 * sigma).accept).toBe(true);
    expect(g.check(center + 3.6 * sigma).accept).toBe(false);
    expect(g.check(center - 3.6 * sigma).accept).toBe(false);
    expect(g.check(center + 3 * sigma).z).toBeCloseTo(3, 9);
    const upperOnly = steadyGate({ lowerZ: null }, 10, 2, 6);
    expect(upperOnly.check(-1e9).accept).toBe(true);
    expect(upperOnly.thresholds(1, true).lo).toBe(S64_MIN);
    const lowerOnly = steadyGate({ z: Infinity }, 10, 2, 6);
    expect(lowerOnly.check(1e300).accept).toBe(true);
    expect(lowerOnly.check(-1e9).accept).toBe(false);
  });

  test("log space: a sum of squares scaled by 100 (x10 update) or zero is rejected, a typical one accepted", () => {
    const rng = mulberry32(7);
    const sumsq = (k: number) => {
      let s = 0;
      for (let j = 0; j < 500; j++) s += (k * gaussian(rng)) ** 2;
      return s;
    };
    const g = new Gate({ log: true });
    g.record(Array.from({ length: 10 }, () => sumsq(1)));
    for (let i = 0; i < 40; i++) g.observe(sumsq(1));
    expect(g.phase).toBe("steady");
    expect(g.check(sumsq(1)).accept).toBe(true);
    expect(g.check(sumsq(10)).accept).toBe(false);
    expect(g.check(sumsq(0.1)).accept).toBe(false);
    expect(g.check(0)).toEqual({ accept: false, z: -Infinity });
    expect(g.view().lo).toBeGreaterThan(300);
    expect(g.view().hi).toBeLessThan(800);
  });

  test("identical warm-up values: minSigma keeps the gate from being zero-wide", () => {
    const narrow = new Gate();
    narrow.record(new Array(20).fill(5));
    expect(narrow.check(5).accept).toBe(true);
    expect(narrow.check(5.000001).accept).toBe(false);
    const floored = new Gate({ minSigma: 0.1 });
    floored.record(new Array(20).fill(5));
    expect(floored.check(5.3).accept).toBe(true);
    expect(floored.check(5.4).accept).toBe(false);
  });

  test("attackers sitting at 3.4 sigma cannot widen it without bound (winsorized pushes)", () => {
    const run = (clip: number) => {
      const g = steadyGate({ clip, halfLife: 50 }, 0, 1, 8);
      const rng = mulberry32(9);
      const sigmas: number[] = [];
      for (let round = 0; round < 200; round++) {
        for (let i = 0; i < 8; i++) g.observe(gaussian(rng));
        for (let i = 0; i < 2; i++) {
          const { center, sigma } = g.view();
          expect(g.observe(center + 3.4 * sigma).accept).toBe(true);
        }
        sigmas.push(g.view().sigma);
      }
      return sigmas;
    };
    expect(run(Infinity).at(-1)!).toBeGreaterThan(1e6); // pushed as they are: geometric growth
    const bounded = run(1.5);
    expect(Math.max(...bounded)).toBeLessThan(2.5); // settles near 1.9 for 20% attackers
    expect(Math.abs(bounded[199] - bounded[99])).toBeLessThan(0.3);
  });

  test("a half-life lets it follow a statistic that falls as training converges, sigma back at the noise level", () => {
    const follow = (halfLife: number) => {
      const g = steadyGate({ halfLife }, 0, 1, 10);
      const rng = mulberry32(11);
      let rejected = 0;
      const level = (i: number) => -16 * (1 - Math.exp(-i / 200)); // like ln |g|^2: a fast fall, then a plateau
      for (let i = 0; i < 1000; i++) if (!g.observe(level(i) + gaussian(rng)).accept) rejected++;
      return { rejected, ...g.view() };
    };
    const forever = follow(Infinity), recent = follow(50);
    expect(recent.rejected).toBeLessThan(10);
    expect(Math.abs(recent.center + 15.9)).toBeLessThan(0.5);
    expect(recent.sigma).toBeLessThan(1.3);
    // Without forgetting, the trend stays in the variance: a gate 4 times too wide, lagging behind.
    expect(forever.sigma).toBeGreaterThan(3);
    expect(forever.center).toBeGreaterThan(-14);
  });

  test("reset returns it to calibrating", () => {
    const g = steadyGate({}, 0, 1, 12);
    g.reset();
    expect(g.phase).toBe("calibrating");
    expect(g.check(0).accept).toBe(false);
  });
});

describe("Gate thresholds for the XDP program", () => {
  test("integer thresholds agree with check at the boundary integers (u64, log space, scale 4^e)", () => {
    const rng = mulberry32(13);
    const g = new Gate({ log: true });
    const real = () => Math.exp(2 + 0.3 * gaussian(rng));
    g.record(Array.from({ length: 10 }, real));
    while (g.phase !== "steady") g.observe(real());
    for (const exp of [-20, -14, -8, 0]) {
      const scale = 4 ** exp;
      const { lo, hi } = g.thresholds(scale);
      expect(lo > 0n && lo <= hi).toBe(true);
      for (const s of [lo - 1n, lo, lo + 1n, (lo + hi) / 2n, hi - 1n, hi, hi + 1n]) {
        const inside = lo <= s && s <= hi;
        expect([s, g.check(Number(s) * scale).accept]).toEqual([s, inside]);
      }
    }
  });

  test("signed thresholds for a linear statistic with a negative center", () => {
    const g = steadyGate({}, -1000, 10, 14);
    const { lo, hi } = g.thresholds(1, true);
    const v = g.view();
    expect(lo).toBe(BigInt(Math.ceil(v.lo)));
    expect(hi).toBe(BigInt(Math.floor(v.hi)));
    expect(lo < 0n && hi < 0n).toBe(true);
    expect(g.check(Number(lo)).accept && g.check(Number(hi)).accept).toBe(true);
    expect(g.check(Number(lo) - 1).accept || g.check(Number(hi) + 1).accept).toBe(false);
  });

  test("thresholds clamp to the map's integer range", () => {
    const g = steadyGate({ log: true }, 10, 1, 15);
    expect(g.thresholds(2 ** -252).hi).toBe(U64_MAX); // a tiny scale: the real bound is beyond 2^64 integers
    expect(g.thresholds(2 ** 100)).toEqual({ lo: 1n, hi: 0n }); // a huge one: no integer but 0 is small enough
    const lin = steadyGate({}, 0, 1e30, 16);
    expect(lin.thresholds(1, true)).toEqual({ lo: S64_MIN, hi: S64_MAX });
  });
});

describe("Strikes", () => {
  test("K strikes within the window quarantine; the cool-down re-admits with a clean record", () => {
    const s = new Strikes({ strikes: 3, window: 5, coolDown: 10 });
    expect(s.strike(4, 0)).toBe(false);
    expect(s.strike(4, 2)).toBe(false);
    expect(s.count(4, 2)).toBe(2);
    expect(s.strike(4, 3)).toBe(true);
    expect(s.quarantined(4, 3)).toBe(true);
    expect(s.quarantined(4, 12)).toBe(true);
    expect(s.strike(4, 12)).toBe(false); // no strikes while quarantined
    expect(s.quarantined(4, 13)).toBe(false); // 3 + 10
    expect(s.count(4, 13)).toBe(0);
    expect(s.quarantined(5, 3)).toBe(false); // others untouched
  });

  test("strikes outside the sliding window expire; one strike per round", () => {
    const s = new Strikes({ strikes: 3, window: 5 });
    for (const r of [0, 5, 10, 15]) expect(s.strike(1, r)).toBe(false); // never two within 5 rounds
    expect(s.count(1, 15)).toBe(1);
    for (let i = 0; i < 10; i++) s.strike(2, 20); // ten rejected chunks of one round
    expect(s.count(2, 20)).toBe(1);
    expect(s.quarantined(2, 20)).toBe(false);
    s.strike(2, 21);
    expect(s.strike(2, 24)).toBe(true); // 20, 21, 24: within 5
  });

  test("readmit ends a quarantine at once", () => {
    const s = new Strikes({ strikes: 1, coolDown: 100 });
    expect(s.strike(7, 0)).toBe(true);
    expect(s.quarantined(7, 1)).toBe(true);
    s.readmit(7);
    expect(s.quarantined(7, 1)).toBe(false);
    expect(s.strike(7, 2)).toBe(true);
  });
});
