// `ainftp sentry eval` with the real inline filter: every contribution goes
// through the XDP program (BPF_PROG_TEST_RUN) with the bands SentryKeeper
// sets, as on a live node. The headline rows in the reduced CI form (n = 10,
// f = 2, IID, logistic regression with 204 parameters, 30 rounds, one seed),
// the non-IID false positive rate, and the command's JSON and errors through
// dist/ainftp. Needs root (loading the program); nothing is attached.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { run } from "../cli/program.ts";
import type { IO } from "../cli/io.ts";
import { collectSentryEval, renderSentryEval, type SentryEvalReport, type SentryEvalRow } from "../cli/sentry.ts";
import { CFG_SENTRY } from "../src/abi.ts";
import { mulberry32 } from "../src/random.ts";
import type { ReflexObject } from "../src/reflex.ts";
import { BpfFilter, loadForEval } from "../src/sentry/bpf-filter.ts";
import { SentryKeeper, gateIndex } from "../src/sentry/keeper.ts";
import { BIN, ensureBuilt, sh } from "./helpers/netns.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("sentry-eval-cli: skipped, loading the XDP program needs root (the pure-TS filter is tested in sentry-eval.test.ts)");

async function cli(argv: string[]) {
  const c = { out: "", err: "" };
  const io: IO = { out: (t) => void (c.out += t), err: (t) => void (c.err += t), tty: false };
  const code = await run(argv, io);
  return { code, ...c };
}

describe.skipIf(!root)("BpfFilter: the program decides, the keeper learns", () => {
  let reflex: ReflexObject;
  beforeAll(async () => {
    reflex = await loadForEval(1);
  });
  afterAll(() => reflex?.close());

  test("calibration round rejects all; then the band decides on the energies the program recorded; a x10 sender is quarantined (not_member)", () => {
    const n = 10;
    const filter = new BpfFilter(reflex, { workers: n, chunkElems: 100 });
    const rng = mulberry32(21);
    const chunk = (k: number) => Int16Array.from({ length: 100 }, () => Math.round(k * 2000 * (rng() - 0.5)));
    const info = { chunk: 0, exp: -10, prev: null };
    expect(filter.decide(0, Array.from({ length: n }, () => chunk(1)), info)).toEqual(new Array(n).fill(false));
    let quarantinedAt = -1;
    for (let round = 1; round < 12; round++) {
      const band = filter.keeper.band(gateIndex(0, false));
      const before = reflex.counters();
      const got = filter.decide(round, Array.from({ length: n }, (_, w) => chunk(w === 3 ? 10 : 1)), info);
      const notMember = reflex.counters().not_member - before.not_member;
      const slot = (filter.firstRound + round) & 1; // bank of this protocol round
      const energy = reflex.obs(slot * reflex.chunks).energy;
      expect(got[3]).toBe(false);
      if (notMember === 0) {
        // every live worker's decision is the band applied to its recorded energy
        got.forEach((ok, w) => expect(ok).toBe(!SentryKeeper.rejects(band, energy[w])));
        expect(got.filter(Boolean).length).toBeGreaterThanOrEqual(8);
      } else {
        expect(notMember).toBe(1);
        expect(reflex.config().memberMask & (1n << 3n)).toBe(0n);
        if (quarantinedAt < 0) quarantinedAt = round;
      }
    }
    expect(quarantinedAt).toBeGreaterThan(0); // three strikes, then out of the member set
    expect(reflex.config().flags! & CFG_SENTRY).toBe(CFG_SENTRY);
  });
});

// ---- the headline rows ---------------------------------------------------------
// The cost of an attack: clean accuracy (plain mean, no filter, no attackers)
// minus the attacked run's. The XDP program samples 16 elements at a random
// phase, so its decisions vary from run to run: the bounds keep a margin.

describe.skipIf(!root)("headline (n = 10, f = 2, IID, 30 rounds, one seed, the XDP program as filter)", () => {
  let iid: SentryEvalReport;
  let nonIid: SentryEvalReport;
  const row = (r: SentryEvalReport, attack: string, aggregate: string, filter: "on" | "off", split = "iid"): SentryEvalRow =>
    r.rows.find((x) => x.attack === attack && x.aggregate === aggregate && x.filter === filter && x.split === split)!;
  const cost = (attack: string, aggregate: string, filter: "on" | "off") =>
    row(iid, "clean", "mean", "off").accuracy.mean - row(iid, attack, aggregate, filter).accuracy.mean;

  beforeAll(async () => {
    const base = { workers: 10, byzantine: [0, 1], seeds: 1, rounds: 30, model: "logreg", lr: 0.1, reference: false } as const;
    iid = await collectSentryEval({
      ...base, attacks: ["sign-flip", "gaussian-100", "scale-10", "alie", "ipm-0.1", "ipm-2"],
      aggregates: ["mean", "trimmed-mean", "median", "cclip"], filters: ["on", "off"], splits: ["iid"],
    });
    nonIid = await collectSentryEval({ ...base, attacks: ["gaussian-100", "scale-10"], aggregates: ["mean"], filters: ["on"], splits: ["dirichlet"] });
    console.log(renderSentryEval(iid));
    const clean = row(nonIid, "clean", "mean", "on", "dirichlet").fpr!;
    const attacked = ["gaussian-100", "scale-10"].map((a) => `${a} ${row(nonIid, a, "mean", "on", "dirichlet").fpr!.toFixed(3)}`);
    console.log(`non-IID (Dirichlet 0.5) false positive rate of the XDP filter: clean ${clean.toFixed(3)}, ${attacked.join(", ")}`);
  }, 120_000); // 70 training runs through the XDP program, about 5 s on a quiet machine

  for (const attack of ["sign-flip", "gaussian-100", "scale-10"])
    test(`${attack}: costs <= 2 points with the inline filter on (plain mean)`, () => expect(cost(attack, "mean", "on")).toBeLessThanOrEqual(0.02));

  for (const attack of ["gaussian-100", "scale-10"])
    test(`${attack}: costs > 10 points with the filter off (plain mean)`, () => expect(cost(attack, "mean", "off")).toBeGreaterThan(0.1));

  // Sign flip is harmless here even unfiltered: 2 flipped of 10 leave
  // (8 - 2) / 10 = 0.6 of the mean gradient, still a descent direction, and
  // this convex task converges within a few rounds at 0.6 the step. (The
  // energy filter cannot see it either: a flipped gradient has the same
  // energy.) On Dirichlet splits it costs ~10 points: docs/sentry-eval.md.
  test("sign-flip: costs < 2 points even with the filter off, on this convex IID task", () =>
    expect(cost("sign-flip", "mean", "off")).toBeLessThan(0.02));

  for (const attack of ["alie", "ipm-0.1", "ipm-2"])
    test(`${attack}: at least one robust aggregate stays within 5 points`, () => {
      const robust = ["trimmed-mean", "median", "cclip"].flatMap((a) => [cost(attack, a, "on"), cost(attack, a, "off")]);
      expect(Math.min(...robust)).toBeLessThanOrEqual(0.05);
    });

  test("the filter rejects gaussian σ=100 and scaling x-10 after calibration, and few honest contributions", () => {
    for (const attack of ["gaussian-100", "scale-10"]) {
      const r = row(iid, attack, "mean", "on");
      expect(r.tpr!).toBeGreaterThanOrEqual(0.95);
      expect(r.fpr!).toBeLessThan(0.05);
    }
  });

  test("non-IID: the false positive rate is computed (printed above) and stays low", () => {
    for (const attack of ["clean", "gaussian-100", "scale-10"]) {
      const fpr = row(nonIid, attack, "mean", "on", "dirichlet").fpr!;
      expect(Number.isFinite(fpr)).toBe(true);
      expect(fpr).toBeLessThan(0.05);
    }
  });
});

// ---- the command ----------------------------------------------------------------

describe("ainftp sentry eval: usage errors (in-process)", () => {
  test("an unknown attack lists the valid ones (exit 2)", async () => {
    const so = process.stderr.write;
    let leaked = "";
    (process.stderr as any).write = (t: string | Uint8Array) => ((leaked += String(t)), true);
    let r;
    try {
      r = await cli(["sentry", "eval", "--attack", "gaussian-100,bogus"]);
    } finally {
      process.stderr.write = so;
    }
    expect(r.code).toBe(2);
    const text = r.err + leaked;
    expect(text).toContain('Unknown attack "bogus"');
    for (const name of ["sign-flip", "gaussian-100", "scale-10", "label-flip", "ipm-0.1", "alie", "adaptive", "drift"]) expect(text).toContain(name);
  });

  test("--reference runs without the XDP program and says so", async () => {
    const r = await cli(["sentry", "eval", "--reference", "--attack", "scale-10", "--aggregate", "mean", "--split", "iid", "--seeds", "1", "--rounds", "5"]);
    expect(r.code).toBe(0);
    expect(r.out).toContain("pure-TypeScript reference");
    expect(r.out).toMatch(/scaling ×-10 +│ mean +│ on +│ iid/);
    expect(r.out).toContain("training runs in");
  });
});

describe.skipIf(!root)("dist/ainftp sentry eval", () => {
  beforeAll(() => ensureBuilt());

  test("--json: one row per attack (and clean) x aggregate x filter x split, with stable fields", () => {
    const r = sh([BIN, "sentry", "eval", "--attack", "gaussian-100,alie", "--aggregate", "mean,median", "--split", "iid", "--seeds", "2", "--rounds", "5", "--json"]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as SentryEvalReport;
    expect(report).toMatchObject({ filter: "xdp", workers: 10, byzantine: [0, 1], model: "logreg", parameters: 204, chunks: 1, rounds: 5, seeds: [1, 2], runs: 24 });
    expect(typeof report.seconds).toBe("number");
    expect(report.rows.length).toBe(3 * 2 * 2);
    for (const row of report.rows) {
      expect(Object.keys(row).sort()).toEqual(["accuracy", "aggregate", "attack", "delta", "filter", "fpr", "label", "split", "tpr"]);
      expect(row.accuracy.seeds.length).toBe(2);
      expect(row.accuracy.mean).toBeGreaterThan(0);
      expect(row.delta === null).toBe(row.attack === "clean");
      expect(row.fpr === null).toBe(row.filter === "off");
      expect(row.tpr === null).toBe(row.filter === "off" || row.attack === "clean");
    }
    expect(report.rows.find((x) => x.attack === "gaussian-100" && x.filter === "on" && x.aggregate === "mean")!.tpr).toBeGreaterThan(0.9);
  });

  test("not root: a clear error that suggests --reference", () => {
    const r = sh(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BIN, "sentry", "eval", "--seeds", "1", "--rounds", "2"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("needs root");
    expect(r.stderr).toContain("--reference");
  });
});
