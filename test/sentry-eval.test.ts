// `ainftp sentry eval` in pure TypeScript (src/sentry/eval/): the data and
// its splits, the models' gradients against finite differences, each attack
// doing what its paper says, the reference filter's decisions against its
// own integer thresholds, and the headline rows in the reduced CI form
// (n = 10 workers, f = 2, IID, 30 rounds, one seed).
import { beforeAll, describe, expect, test } from "bun:test";
import { mulberry32 } from "../src/random.ts";
import * as attacks from "../src/sentry/eval/attacks.ts";
import { dirichlet, dirichletSplit, gamma, iidSplit, synthetic, type Dataset } from "../src/sentry/eval/data.ts";
import { Mlp, SoftmaxRegression, accuracy, type Model } from "../src/sentry/eval/model.ts";
import {
  ReferenceFilter, chunkExponent, filterRates, quantizeChunk, runEval, type AggregateMode, type EvalOptions,
} from "../src/sentry/eval/train.ts";
import { sumSquares, type GateView } from "../src/sentry/stats.ts";

const data = synthetic({ seed: 1 });

describe("data", () => {
  test("gamma (Marsaglia-Tsang) has mean and variance = shape, below and above 1", () => {
    const rng = mulberry32(1);
    for (const shape of [0.5, 2.5]) {
      const xs = Array.from({ length: 40_000 }, () => gamma(rng, shape));
      const m = xs.reduce((a, b) => a + b, 0) / xs.length;
      const v = xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length;
      expect(Math.abs(m - shape) / shape).toBeLessThan(0.03);
      expect(Math.abs(v - shape) / shape).toBeLessThan(0.06);
      expect(xs.every((x) => x > 0)).toBe(true);
    }
    const p = dirichlet(rng, 0.5, 10);
    expect(p.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
  });

  test("synthetic data is deterministic from its seed", () => {
    const again = synthetic({ seed: 1 });
    expect(again.train.x).toEqual(data.train.x);
    expect(again.test.y).toEqual(data.test.y);
    expect(synthetic({ seed: 2 }).train.x[0]).not.toBe(data.train.x[0]);
    expect([data.train.rows, data.test.rows, data.train.dim, data.train.classes]).toEqual([10_000, 2_000, 50, 4]);
  });

  const partition = (shares: Uint32Array[], rows: number) => {
    const all = shares.flatMap((s) => Array.from(s)).sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: rows }, (_, i) => i));
  };
  /** Mean over workers of the share of its most frequent class. */
  const skew = (shares: Uint32Array[], y: Uint8Array) =>
    shares.reduce((acc, s) => {
      const counts = [0, 0, 0, 0];
      for (const r of s) counts[y[r]]++;
      return acc + Math.max(...counts) / s.length;
    }, 0) / shares.length;

  test("IID split: a partition into near-equal shares", () => {
    const shares = iidSplit(data.train.rows, 10, 3);
    partition(shares, data.train.rows);
    expect(shares.every((s) => s.length === 1000)).toBe(true);
    expect(skew(shares, data.train.y)).toBeLessThan(0.3);
  });

  test("Dirichlet(0.5) split: a partition, every worker has rows, and it is skewed", () => {
    const shares = dirichletSplit(data.train.y, 4, 10, { alpha: 0.5, seed: 3 });
    partition(shares, data.train.rows);
    expect(Math.min(...shares.map((s) => s.length))).toBeGreaterThanOrEqual(10);
    expect(skew(shares, data.train.y)).toBeGreaterThan(0.5); // IID: ~0.27
    expect(() => dirichletSplit(data.train.y, 4, 10, { seed: 3, minRows: 2000 })).toThrow("cannot give");
  });
});

describe("models", () => {
  const small: Dataset = synthetic({ seed: 5, dim: 6, classes: 3, train: 20, test: 1 }).train;

  for (const model of [new SoftmaxRegression(6, 3), new Mlp(6, 5, 3)] as Model[]) {
    test(`${model.constructor.name}: gradient matches central finite differences`, () => {
      const rng = mulberry32(6);
      const p = model.init(7);
      for (let k = 0; k < p.length; k++) p[k] += 0.3 * (rng() - 0.5);
      const idx = Uint32Array.from({ length: 20 }, (_, i) => i);
      const g = new Float32Array(model.size), scratch = new Float32Array(model.size);
      model.gradient(p, small, idx, g);
      const loss = (q: Float32Array) => model.gradient(q, small, idx, scratch);
      for (let k = 0; k < model.size; k++) {
        const q = Float32Array.from(p);
        q[k] = p[k] + 1e-3;
        const hi = q[k], up = loss(q);
        q[k] = p[k] - 1e-3;
        const lo = q[k], down = loss(q);
        expect(g[k]).toBeCloseTo((up - down) / (hi - lo), 3); // the step as f32 holds it
      }
    });
  }

  test("label hook: the gradient on flipped labels differs", () => {
    const m = new SoftmaxRegression(50, 4);
    const p = m.init(), a = new Float32Array(m.size), b = new Float32Array(m.size);
    const idx = Uint32Array.from({ length: 64 }, (_, i) => i);
    m.gradient(p, data.train, idx, a);
    m.gradient(p, data.train, idx, b, data.train.y.map((y) => 3 - y));
    expect(a).not.toEqual(b);
  });

  test("both train to > 80% test accuracy on clean data, IID and Dirichlet", () => {
    const base = { workers: 10, byzantine: [], rounds: 30, lr: 0.1, seed: 1, data } as const;
    expect(runEval({ ...base, split: "iid" }).accuracy).toBeGreaterThan(0.8);
    expect(runEval({ ...base, split: "dirichlet" }).accuracy).toBeGreaterThan(0.8);
    expect(runEval({ ...base, split: "iid", model: "mlp" }).accuracy).toBeGreaterThan(0.8);
    expect(accuracy(new SoftmaxRegression(50, 4), new Float32Array(204), data.test)).toBeLessThan(0.35); // untrained
  });
});

describe("attacks", () => {
  const honest = [Float32Array.from([1, 2, 3, 4]), Float32Array.from([3, 2, 1, 0])];
  const ctx = (over: Partial<attacks.AttackContext> = {}): attacks.AttackContext => ({
    round: 0, honest, workers: 4, byzantine: 2, rng: mulberry32(9), chunkElems: 4, ...over,
  });
  const run = (a: attacks.Attack, c = ctx()) => {
    const byz = [Float32Array.from([1, -1, 2, 0]), Float32Array.from([0.5, 0.5, 0.5, 0.5])];
    a.apply!(byz, c);
    return byz.map((g) => Array.from(g));
  };

  test("sign flip, scaling, IPM", () => {
    expect(run(attacks.signFlip())).toEqual([[-1, 1, -2, -0], [-0.5, -0.5, -0.5, -0.5]]);
    expect(run(attacks.scaling(-10))).toEqual([[-10, 10, -20, -0], [-5, -5, -5, -5]]);
    // mean(honest) = [2, 2, 2, 2]
    for (const row of run(attacks.ipm(2))) expect(row).toEqual([-4, -4, -4, -4]);
    for (const row of run(attacks.ipm(0.1))) row.forEach((v) => expect(v).toBeCloseTo(-0.2, 6));
  });

  test("Gaussian noise replaces the gradient with N(0, sigma^2)", () => {
    const byz = [new Float32Array(20_000)];
    attacks.gaussianNoise(100).apply!(byz, ctx());
    const m = byz[0].reduce((a, b) => a + b, 0) / byz[0].length;
    const sd = Math.sqrt(byz[0].reduce((a, b) => a + (b - m) ** 2, 0) / byz[0].length);
    expect(Math.abs(m)).toBeLessThan(3);
    expect(sd).toBeGreaterThan(97);
    expect(sd).toBeLessThan(103);
  });

  test("label flip is a data-level hook", () => {
    const a = attacks.labelFlip();
    expect(a.apply).toBeUndefined();
    expect([0, 1, 2, 3].map((y) => a.flipLabel!(y, 4))).toEqual([3, 2, 1, 0]);
  });

  test("ALIE: z_max from n and f as in the paper, mean - z std per coordinate", () => {
    expect(attacks.normalQuantile(0.975)).toBeCloseTo(1.959964, 5);
    expect(attacks.normalQuantile(0.001)).toBeCloseTo(-3.090232, 5);
    expect(attacks.normalQuantile(0.5)).toBe(0);
    // n = 10, f = 2: s = floor(10/2 + 1) - 2 = 4, z = Phi^-1(6/10)
    expect(attacks.alieZ(10, 2)).toBeCloseTo(0.253347, 5);
    // n = 50, f = 12 (the paper's CIFAR setting): s = 14, Phi^-1(36/50)
    expect(attacks.alieZ(50, 12)).toBeCloseTo(0.582842, 5);
    const z = attacks.alieZ(4, 2); // s = 1: Phi^-1(3/4)
    // honest columns: mean 2 2 2 2, std 1 0 1 2
    const expected = [2 - z, 2, 2 - z, 2 - 2 * z];
    for (const row of run(attacks.alie())) row.forEach((v, j) => expect(v).toBeCloseTo(expected[j], 5));
  });

  test("adaptive: -mean(honest), scaled to a sum of squares at the gate's center + 3.4 sigma", () => {
    const view: GateView = { phase: "steady", log: true, center: Math.log(50), sigma: 0.2, lo: 0, hi: 0 };
    const rows = run(attacks.adaptive(), ctx({ gate: () => view }));
    for (const row of rows) {
      expect(row.reduce((a, v) => a + v * v, 0)).toBeCloseTo(50 * Math.exp(3.4 * 0.2), 3);
      expect(row.every((v) => v < 0)).toBe(true); // against mean(honest) = [2, 2, 2, 2]
    }
  });

  test("drift: +0.5 sigma per round from where the gate stood when the attack began", () => {
    let view: GateView = { phase: "steady", log: true, center: 0, sigma: 1, lo: 0, hi: 0 };
    const a = attacks.drift();
    const level = (round: number) => {
      const [row] = run(a, ctx({ round, gate: () => view }));
      return Math.log(row.reduce((s, v) => s + v * v, 0));
    };
    expect(level(3)).toBeCloseTo(0.5, 6);
    view = { ...view, center: 100 }; // the gate moves; the drift does not follow it
    expect(level(4)).toBeCloseTo(1.0, 6);
    expect(level(9)).toBeCloseTo(3.5, 6);
    a.reset!(); // a new run: the reference is taken again
    expect(level(0)).toBeCloseTo(100.5, 6);
  });
});

describe("quantization and the reference filter", () => {
  test("chunk exponent and round-to-nearest-even, as src/quantize.ts defines them", () => {
    expect(chunkExponent(new Float32Array(4))).toBe(-126);
    expect(chunkExponent(Float32Array.from([32767]))).toBe(0);
    expect(chunkExponent(Float32Array.from([-32767.5]))).toBe(1);
    expect(chunkExponent(Float32Array.from([0.001, -0.49]))).toBe(-16); // 0.49 <= 32767 * 2^-16 = 0.49998
    expect(chunkExponent(Float32Array.from([0.001, -0.5]))).toBe(-15);
    const q = new Int16Array(6);
    quantizeChunk(Float32Array.from([0.5, 1.5, 2.5, -0.5, -1.5, 1e9]), 0, q);
    expect(Array.from(q)).toEqual([0, 2, 2, 0, -2, 32767]);
  });

  test("first round calibrates (all rejected); then the integer thresholds decide, and a x10 contribution is out", () => {
    const filter = new ReferenceFilter();
    const rng = mulberry32(10);
    const chunk = (k: number) => Int16Array.from({ length: 100 }, () => Math.round(k * 1000 * (rng() - 0.5)));
    const info = { chunk: 0, exp: -12, prev: null };
    expect(filter.decide(0, Array.from({ length: 10 }, () => chunk(1)), info)).toEqual(new Array(10).fill(false));
    for (let round = 1; round < 6; round++) {
      const qs = Array.from({ length: 10 }, (_, w) => chunk(w === 0 ? 10 : 1));
      const { lo, hi } = filter.thresholds(0, info.exp);
      const expected = qs.map((q) => lo <= BigInt(sumSquares(q)) && BigInt(sumSquares(q)) <= hi);
      const got = filter.decide(round, qs, info);
      expect(got).toEqual(expected);
      expect(got[0]).toBe(false);
      expect(got.slice(1).filter(Boolean).length).toBeGreaterThanOrEqual(8);
    }
    expect(filter.view(0)!.phase).toBe("steady");
  });

  test("strikes quarantine a persistent attacker: rejected even when it behaves", () => {
    const filter = new ReferenceFilter({ strikes: { strikes: 2, window: 5, coolDown: 3 } });
    const rng = mulberry32(11);
    const chunk = (k: number) => Int16Array.from({ length: 100 }, () => Math.round(k * 1000 * (rng() - 0.5)));
    const info = { chunk: 0, exp: 0, prev: null };
    const decide = (round: number, loud: boolean) =>
      filter.decide(round, Array.from({ length: 10 }, (_, w) => chunk(w === 3 && loud ? 10 : 1)), info)[3];
    decide(0, false); // calibration
    expect(decide(1, true)).toBe(false);
    expect(decide(2, true)).toBe(false); // second strike: quarantined from round 2 to 5
    expect(filter.strikes!.quarantined(3, 3)).toBe(true);
    expect(decide(3, false)).toBe(false);
    expect(decide(5, false)).toBe(true); // cool-down over
  });

  test("a gate that rejects most of a round is stale: it recalibrates instead of starving the job", () => {
    const filter = new ReferenceFilter();
    const rng = mulberry32(12);
    const chunk = (k: number) => Int16Array.from({ length: 100 }, () => Math.round(k * 1000 * (rng() - 0.5)));
    const info = { chunk: 0, exp: 0, prev: null };
    for (let round = 0; round < 4; round++) filter.decide(round, Array.from({ length: 10 }, () => chunk(1)), info);
    // Everyone's gradient drops 100-fold at once (e.g. a learning-rate schedule).
    expect(filter.decide(4, Array.from({ length: 10 }, () => chunk(0.01)), info).some(Boolean)).toBe(false);
    expect(filter.view(0)!.phase).toBe("warmup");
    expect(filter.decide(5, Array.from({ length: 10 }, () => chunk(0.01)), info).every(Boolean)).toBe(true);
  });
});

describe("runEval", () => {
  test("decisions per round, chunk and worker; deterministic from the seed", () => {
    const o: EvalOptions = { workers: 6, byzantine: [0], attack: attacks.scaling(-10), rounds: 5, lr: 0.1, seed: 3, split: "iid", data, chunkElems: 64 };
    const f = new ReferenceFilter();
    const r = runEval({ ...o, filter: f.decide });
    expect(r.chunks).toBe(4); // 204 parameters in chunks of 64
    expect(r.decisions.length).toBe(5);
    expect(r.decisions.every((round) => round.length === 4 && round.every((c) => c.length === 6))).toBe(true);
    expect(r.decisions[0].flat().some(Boolean)).toBe(false); // calibration
    const rates = filterRates(r.decisions, [0], 1);
    expect(rates.tpr).toBe(1);
    expect(rates.fpr).toBeLessThan(0.1); // 5 honest values per chunk and round: a young gate is noisy
    expect(runEval({ ...o, filter: new ReferenceFilter().decide })).toEqual(r);
    expect(() => runEval({ ...o, byzantine: [6] })).toThrow("byzantine workers");
  });
});

// ---- the headline rows -------------------------------------------------------
// n = 10, f = 2 (workers 0 and 1), IID, 30 rounds, lr 0.1, seed 1; the cost of
// an attack is the clean plain-mean accuracy minus the attacked accuracy.

describe("headline (n = 10, f = 2, IID, 30 rounds, seed 1)", () => {
  const byzantine = [0, 1];
  const results = new Map<string, { accuracy: number; tpr: number; fpr: number }>();
  let clean = 0;

  const evaluate = (attack: attacks.Attack | null, aggregate: AggregateMode, filtered: boolean) => {
    const filter = filtered ? new ReferenceFilter() : null;
    const r = runEval({
      workers: 10, byzantine: attack ? byzantine : [], attack, aggregate, filter: filter?.decide, gate: filter?.view,
      rounds: 30, lr: 0.1, seed: 1, split: "iid", data,
    });
    return { accuracy: r.accuracy, ...filterRates(r.decisions, attack ? byzantine : [], 1) };
  };
  const modes: [string, AggregateMode, boolean][] = [
    ["mean", "mean", false], ["mean+filter", "mean", true], ["trimmedMean", "trimmedMean", false],
    ["median", "median", false], ["centeredClipping", "centeredClipping", false], ["trimmedMean+filter", "trimmedMean", true],
  ];
  const rows: [string, attacks.Attack][] = [
    ["sign flip", attacks.signFlip()], ["gaussian σ=100", attacks.gaussianNoise(100)], ["scaling ×−10", attacks.scaling(-10)],
    ["ALIE", attacks.alie()], ["IPM ε=0.1", attacks.ipm(0.1)], ["IPM ε=2", attacks.ipm(2)],
  ];
  const cost = (row: string, mode: string) => clean - results.get(`${row}|${mode}`)!.accuracy;

  beforeAll(() => {
    clean = evaluate(null, "mean", false).accuracy;
    for (const [row, attack] of rows) for (const [mode, aggregate, filtered] of modes) results.set(`${row}|${mode}`, evaluate(attack, aggregate, filtered));
    const pct = (v: number) => (100 * v).toFixed(1).padStart(7);
    const lines = rows.map(([row]) => row.padEnd(16) + modes.map(([m]) => pct(results.get(`${row}|${m}`)!.accuracy)).join("") +
      `   filter TPR ${results.get(`${row}|mean+filter`)!.tpr.toFixed(2)} FPR ${results.get(`${row}|mean+filter`)!.fpr.toFixed(3)}`);
    console.log(`clean (mean): ${pct(clean)}\n${"".padEnd(16)}${modes.map(([m]) => m.slice(0, 6).padStart(7)).join("")}\n${lines.join("\n")}`);
  });

  for (const row of ["sign flip", "gaussian σ=100", "scaling ×−10"])
    test(`${row}: costs <= 2 points with the filter on`, () => expect(cost(row, "mean+filter")).toBeLessThanOrEqual(0.02));

  for (const row of ["gaussian σ=100", "scaling ×−10"])
    test(`${row}: costs > 10 points with the filter off (plain mean)`, () => expect(cost(row, "mean")).toBeGreaterThan(0.1));

  // Does not hold, measured: 2 sign-flipped of 10 leave (8 - 2) / 10 = 0.6 of
  // the mean gradient, still a descent direction, and this convex task
  // converges within a few rounds even at 0.6 the step (cost ~0 points).
  test.failing("sign flip: costs > 10 points with the filter off (plain mean)", () => expect(cost("sign flip", "mean")).toBeGreaterThan(0.1));

  for (const row of ["ALIE", "IPM ε=0.1", "IPM ε=2"])
    test(`${row}: at least one robust mode stays within 5 points`, () => {
      const robust = modes.filter(([m]) => m !== "mean").map(([m]) => cost(row, m));
      expect(Math.min(...robust)).toBeLessThanOrEqual(0.05);
    });

  test("the filter rejects every gaussian σ=100 and scaling ×−10 contribution after calibration, few honest ones", () => {
    for (const row of ["gaussian σ=100", "scaling ×−10"]) {
      const r = results.get(`${row}|mean+filter`)!;
      expect(r.tpr).toBe(1);
      expect(r.fpr).toBeLessThan(0.05);
    }
  });
});
