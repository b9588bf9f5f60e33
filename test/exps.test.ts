// The shared scale's exponent maxima (native/collective.c): the plain
// maximum, and the sentry's robust one that leaves a poisoner's huge
// exponents out.
import { describe, expect, test } from "bun:test";
import { coll } from "../native/collective.ts";
import { mulberry32 } from "../src/random.ts";

/** ranks × n exponents, rank-major. */
const layout = (cols: number[][]) => Int8Array.from(cols[0].flatMap((_, r) => cols.map((c) => c[r])));

describe("exponent maxima", () => {
  test("max_exps: element-wise maximum over ranks", () => {
    const all = layout([[-3, 4, -8, 0], [1, 1, 1, 1]]); // 4 ranks, 2 chunks
    const out = new Int8Array(2);
    coll.ainftp_max_exps(all, 4, 2, out);
    expect(Array.from(out)).toEqual([4, 1]);
  });

  test("robust_max_exps: an exponent more than `above` over the chunk's median is left out and counted; all-zero chunks do not count", () => {
    // chunk 0: median (lower middle) of [-5,-4,-3,20] is -4: 20 > -4 + 8 is left out
    // chunk 1: [2, 3, 9, 10] has median 3: 10 > 11? no: all in
    const all = layout([[-5, -4, 20, -3], [2, 9, 10, 3]]);
    const out = new Int8Array(2);
    expect(coll.ainftp_robust_max_exps(all, 4, 2, out, 8)).toBe(1);
    expect(Array.from(out)).toEqual([-3, 10]);
    // two all-zero chunks (AINFTP_EXP_MIN) do not drag the median down: the
    // two real exponents are fewer than three, so nothing is left out
    const sparse = layout([[-126, -126, -2, 7]]);
    const one = new Int8Array(1);
    expect(coll.ainftp_robust_max_exps(sparse, 4, 1, one, 8)).toBe(0);
    expect(one[0]).toBe(7);
  });

  test("robust_max_exps equals max_exps on honest exponents (random, within the bound)", () => {
    const rand = mulberry32(0xe7);
    for (const ranks of [2, 3, 4, 10, 64]) {
      const n = 257;
      const all = Int8Array.from({ length: ranks * n }, () => Math.floor(rand() * 8) - 20);
      const a = new Int8Array(n), b = new Int8Array(n);
      coll.ainftp_max_exps(all, ranks, n, a);
      expect(coll.ainftp_robust_max_exps(all, ranks, n, b, 8)).toBe(0);
      expect(b).toEqual(a);
    }
  });

  test("robust_max_exps: with a poisoner in each of 10 ranks' chunks, the scale stays the honest maximum", () => {
    const rand = mulberry32(0x9);
    const ranks = 10, n = 64;
    const all = Int8Array.from({ length: ranks * n }, () => Math.floor(rand() * 4) - 10);
    for (let c = 0; c < n; c++) all[3 * n + c] = -128; // the honest maximum: the other nine's
    const honest = new Int8Array(n);
    coll.ainftp_max_exps(all, ranks, n, honest);
    for (let c = 0; c < n; c++) all[3 * n + c] = 120; // rank 3 announces 2^120
    const out = new Int8Array(n);
    expect(coll.ainftp_robust_max_exps(all, ranks, n, out, 8)).toBe(n);
    expect(out).toEqual(honest);
  });
});
