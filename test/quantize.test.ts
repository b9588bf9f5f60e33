// The quantizer (native/quant.c via src/quantize.ts): the C kernels against
// the plain TypeScript reference bit for bit, the end-to-end error of a
// simulated all-reduce (biased XDP lanes included) for N = 2..64 workers,
// saturation, the owner's requantization, non-finite input, and a rough
// speed print.
import { describe, expect, test } from "bun:test";
import { MAX_ELEMS, PKT_CONTRIB, accPosition, readHeader } from "../src/abi.ts";
import { mulberry32 } from "../src/random.ts";
import {
  DEQ_EXP_MAX, DEQ_EXP_MIN, EXP_MAX, EXP_MIN, NonFiniteGradientError, QMAX, chunkCount, chunkExps, chunkExpsInto,
  chunkLength, dequantize, finishChunk, headerTemplate, maxExps, packChunks, packStride, quantize,
  refChunkExps, refDequantize, refFinishChunk, refPackChunks, refQuantize,
} from "../src/quantize.ts";
import { quantIsasSupported, setQuantIsa } from "../native/quant.ts";

const F_SATURATED = 0x0002;

// ---- helpers ---------------------------------------------------------------

function gaussian(rng: () => number): number {
  // Box-Muller; 1 - u keeps the log argument in (0, 1].
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

function studentT(rng: () => number, nu: number): number {
  let chi2 = 0;
  for (let i = 0; i < nu; i++) chi2 += gaussian(rng) ** 2;
  return gaussian(rng) / Math.sqrt(chi2 / nu);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** The next f32 after v towards +Inf (dir 1) or -Inf (dir -1); v finite and nonzero. */
function nextF32(v: number, dir: 1 | -1): number {
  f32[0] = v;
  u32[0] += (v > 0) === (dir > 0) ? 1 : -1;
  return f32[0];
}

const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** A vector of n values spanning every interesting magnitude, with edge
 * values planted: zeros, subnormals, exact maxima, ties and near-ties. */
function edgyVector(n: number, chunkElems: number, seed: number): Float32Array {
  const rng = mulberry32(seed);
  const x = new Float32Array(n);
  for (let c = 0; c < chunkCount(n, chunkElems); c++) {
    const start = c * chunkElems, len = chunkLength(n, chunkElems, c);
    const kind = c % 6;
    const mag = 2 ** Math.floor(rng() * 240 - 130); // 2^-130 .. 2^109
    for (let j = 0; j < len; j++) {
      const g = gaussian(rng);
      x[start + j] = kind === 0 ? 0 : kind === 1 ? g * 1e-42 /* subnormal */ : g * mag;
    }
    if (kind === 2 && len > 4) {
      // The chunk's maximum exactly 32767 * 2^e: exp e, no saturation.
      const e = Math.floor(rng() * 200) - 120;
      x[start] = 32767 * 2 ** e;
      x[start + 1] = -32767 * 2 ** e;
      x[start + 2] = 32767.5 * 2 ** e; // forces e + 1
    }
    if (kind === 3 && len > 8) {
      // Ties and values one ulp either side of them at the chunk's own scale.
      x[start] = 30000 * mag; // sets the scale near mag
      for (let j = 1; j + 2 < len; j += 3) {
        const k = Math.floor(rng() * 20000) - 10000;
        const t = (k + 0.5) * mag;
        x[start + j] = t;
        x[start + j + 1] = t === 0 ? t : nextF32(t, 1);
        x[start + j + 2] = t === 0 ? t : nextF32(t, -1);
      }
    }
    if (kind === 4 && len > 3) {
      x[start] = -0;
      x[start + 1] = 1.4e-45; // smallest subnormal
      x[start + 2] = 1.1754942e-38; // largest subnormal
    }
  }
  return x;
}

// ---- C vs reference, bit for bit --------------------------------------------

describe("native quantizer matches the TypeScript reference bit for bit", () => {
  const CE = 720;
  const N = CE * 13 + 7; // partial last chunk, n not a multiple of 4
  const x = edgyVector(N, CE, 1);

  test("chunkExps", () => {
    const ref = refChunkExps(x, CE);
    const exps = chunkExps(x, CE);
    expect(ref.nonFinite).toBe(0);
    expect(Array.from(exps)).toEqual(Array.from(ref.exps));
    // Spot checks of the definition.
    expect(exps[0]).toBe(EXP_MIN); // all zero
    expect(exps[1]).toBe(EXP_MIN); // subnormal
    for (let c = 0; c < exps.length; c++) {
      let m = 0;
      for (let j = c * CE; j < c * CE + chunkLength(N, CE, c); j++) m = Math.max(m, Math.abs(x[j]));
      expect(m).toBeLessThanOrEqual(QMAX * 2 ** exps[c]);
      if (exps[c] > EXP_MIN) expect(m).toBeGreaterThan(QMAX * 2 ** (exps[c] - 1));
    }
  });

  test("chunkExps: exact boundaries", () => {
    const cases: [number, number][] = [
      [32767, 0], [32767.5, 1], [nextF32(32767, -1), 0], [nextF32(32767, 1), 1], [65534, 1], [65535, 2],
      [1, -14], [0.5, -15], [3.4028235e38, 114], [2 ** -100, -114], [1.17549435e-38, -126], [0, -126],
    ];
    for (const [v, e] of cases) {
      expect(chunkExps(new Float32Array([v]), 1)[0]).toBe(e);
      expect(chunkExps(new Float32Array([-v]), 1)[0]).toBe(e);
      expect(refChunkExps(new Float32Array([v]), 1).exps[0]).toBe(e);
    }
  });

  for (const seed of [0, 1, 0xdeadbeef]) {
    test(`quantize (seed ${seed}) at each chunk's exponent and at too-small ones`, () => {
      const exps = chunkExps(x, CE);
      for (let c = 0; c < exps.length; c++) {
        const part = x.subarray(c * CE, c * CE + chunkLength(N, CE, c)); // a view: byteOffset != 0
        for (const e of [exps[c], Math.max(EXP_MIN, exps[c] - 3), Math.min(EXP_MAX, exps[c] + 5)]) {
          const q = new Int16Array(part.length), r = new Int16Array(part.length);
          const sat = quantize(part, e, q, seed);
          const rsat = refQuantize(part, e, r, seed);
          expect(sat).toBe(rsat);
          expect(Array.from(q)).toEqual(Array.from(r));
          if (e === exps[c]) expect(sat).toBe(0);
        }
      }
    });
  }

  test("quantize: ties go to even, near-ties to the nearer integer", () => {
    const xs = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 32766.5, -32766.5, nextF32(0.5, 1), nextF32(0.5, -1),
      nextF32(-2.5, 1), nextF32(-2.5, -1), 0.49999997, -0.49999997];
    const want = [0, 2, 2, -0, -2, -2, 32766, -32766, 1, 0, -2, -3, 0, -0];
    const q = new Int16Array(xs.length);
    expect(quantize(new Float32Array(xs), 0, q)).toBe(0);
    expect(Array.from(q)).toEqual(want.map((v) => v | 0));
    // Scaled: the same at exponent -20 and 37 (exact powers of two).
    for (const e of [-20, 37]) {
      const q2 = new Int16Array(xs.length);
      quantize(new Float32Array(xs.map((v) => v * 2 ** e)), e, q2);
      expect(Array.from(q2)).toEqual(Array.from(q));
    }
  });

  test("stochastic rounding is unbiased and reproducible", () => {
    const v = new Float32Array(200_000).fill(0.3);
    const a = new Int16Array(v.length), b = new Int16Array(v.length), c = new Int16Array(v.length);
    quantize(v, 0, a, 7);
    quantize(v, 0, b, 7);
    quantize(v, 0, c, 8);
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Array.from(a)).not.toEqual(Array.from(c));
    const mean = a.reduce((s, q) => s + q, 0) / a.length;
    expect(Math.abs(mean - 0.3)).toBeLessThan(0.005); // sd of the mean ≈ 0.001
    expect(new Set(a).size).toBe(2); // only 0 and 1
    const neg = new Int16Array(v.length);
    quantize(new Float32Array(v.length).fill(-2.75), 0, neg, 9);
    expect(Math.abs(neg.reduce((s, q) => s + q, 0) / neg.length + 2.75)).toBeLessThan(0.005);
    // An integer never moves: 32767 stays, and does not saturate.
    const top = new Int16Array(1000);
    expect(quantize(new Float32Array(1000).fill(32767), 0, top, 3)).toBe(0);
    expect(top.every((q) => q === 32767)).toBe(true);
  });

  for (const seed of [0, 42]) {
    test(`packChunks (seed ${seed}): headers and payloads, any chunk order, padded stride`, () => {
      const exps = chunkExps(x, CE);
      const total = exps.length;
      const rng = mulberry32(99 + seed);
      const order = Array.from({ length: total }, (_, i) => i).sort(() => rng() - 0.5).slice(0, total - 2);
      const chunks = Uint32Array.from(order.concat([total - 1])); // the partial chunk included
      const header = headerTemplate({ type: PKT_CONTRIB, jobId: 0xabcdef, round: 77, rank: 3, flags: F_SATURATED | 0x4 });
      for (const stride of [packStride(CE), packStride(CE) + 10]) {
        const out = new Uint8Array(chunks.length * stride).fill(0xa5);
        const ref = new Uint8Array(chunks.length * stride).fill(0xa5);
        const sat = packChunks(x, { chunkElems: CE, chunks, exps, header, out, stride, seed });
        const rsat = refPackChunks(x, { chunkElems: CE, chunks, exps, header, out: ref, stride, seed });
        expect(sat).toBe(0);
        expect(rsat).toBe(0);
        expect(Buffer.from(out).equals(Buffer.from(ref))).toBe(true);
        const view = new DataView(out.buffer);
        for (let i = 0; i < chunks.length; i++) {
          const h = readHeader(view, i * stride);
          expect(h).toMatchObject({ type: PKT_CONTRIB, jobId: 0xabcdef, round: 77, rank: 3, chunk: chunks[i] });
          expect(h.count).toBe(chunkLength(N, CE, chunks[i]));
          expect(h.exp).toBe(exps[chunks[i]]);
          expect(h.flags).toBe(0x4); // template's F_SATURATED cleared: nothing clipped
        }
      }
      // Chunk c's payload is quantize() of that chunk with stream c; chunk 0's equals quantize's own stream.
      const out = new Uint8Array(packStride(CE));
      packChunks(x, { chunkElems: CE, chunks: Uint32Array.of(0), exps, header, out, seed });
      const q0 = new Int16Array(CE);
      quantize(x.subarray(0, CE), exps[0], q0, seed);
      expect(Array.from(new Int16Array(out.buffer, 32, CE))).toEqual(Array.from(q0));
    });
  }

  test("finishChunk on random acc entries, with and without the owner's share", () => {
    const rng = mulberry32(5);
    for (let t = 0; t < 150; t++) {
      const count = t < 20 ? t + 1 : t % 7 === 0 ? MAX_ELEMS : 1 + Math.floor(rng() * MAX_ELEMS);
      const contributors = t % 5 === 0 ? 64 : Math.floor(rng() * 65);
      const style = t % 4; // 0 random, 1 all +max, 2 all -max, 3 raw garbage
      const raw = new Uint32Array((count + 3) & ~3);
      const own = t % 3 === 0 ? null : new Int16Array(count);
      const amp = Math.floor(rng() * QMAX) + 1;
      for (let j = 0; j < count; j++) {
        let s = 0;
        for (let r = 0; r < contributors; r++) {
          const q = style === 1 ? QMAX : style === 2 ? -QMAX : Math.round((rng() * 2 - 1) * amp);
          s += q + 32768;
        }
        raw[accPosition(j)] = style === 3 ? Math.floor(rng() * 2 ** 32) : s;
        if (own) own[j] = style === 1 ? QMAX : style === 2 ? -QMAX : Math.round((rng() * 2 - 1) * amp);
      }
      const out = new Int16Array(count), ref = new Int16Array(count);
      const k = finishChunk(contributors ? raw : null, count, contributors, own, out);
      const rk = refFinishChunk(contributors ? raw : null, count, contributors, own, ref);
      expect(k).toBe(rk);
      expect(Array.from(out)).toEqual(Array.from(ref));
      if (style !== 3) expect(k).toBeLessThanOrEqual(7); // 65 * 32767 at most
    }
  });

  test("dequantize over the whole exponent range, subnormal and overflowing results included", () => {
    const rng = mulberry32(11);
    const q = new Int16Array(1001);
    for (let j = 0; j < q.length; j++) q[j] = Math.floor(rng() * 65535) - 32767;
    q[0] = 0; q[1] = 32767; q[2] = -32767; q[3] = 1; q[4] = -1; q[5] = -32768;
    for (let e = DEQ_EXP_MIN; e <= DEQ_EXP_MAX; e++) {
      const a = new Float32Array(q.length), b = new Float32Array(q.length);
      dequantize(q, e, a);
      refDequantize(q, e, b);
      expect(Array.from(bitsOf(a))).toEqual(Array.from(bitsOf(b)));
    }
    const a = new Float32Array(2);
    dequantize(Int16Array.of(3, -1), -149, a);
    expect(a[0]).toBe(3 * 2 ** -149); // a subnormal, exact
    dequantize(Int16Array.of(2, 0), 127, a);
    expect(a[0]).toBe(Infinity);
    expect(a[1]).toBe(0); // not 0 * Inf
  });
});

// ---- end-to-end error of a simulated all-reduce ------------------------------

type Dist = "gaussian" | "student-t(3)" | "mixed 1e-8/1e+3";

function gradient(dist: Dist, n: number, chunkElems: number, rng: () => number): Float32Array {
  const g = new Float32Array(n);
  for (let j = 0; j < n; j++) {
    if (dist === "gaussian") g[j] = gaussian(rng);
    else if (dist === "student-t(3)") g[j] = studentT(rng, 3);
    else {
      // Chunk kind (shared by every rank): tiny, large, or both within the chunk.
      const kind = Math.floor(j / chunkElems) % 3;
      const big = kind === 1 || (kind === 2 && rng() < 0.5);
      g[j] = gaussian(rng) * (big ? 1e3 : 1e-8);
    }
  }
  return g;
}

interface Outcome {
  relL2: number;
  /** Relative L2 error over the chunks holding only 1e-8 values (mixed only). */
  tinyRelL2?: number;
  maxK: number;
  saturated: number;
}

/** One all-reduce as the protocol does it: shared max exponents, packets,
 * the XDP program's biased lanes for the N-1 other ranks, the owner's own
 * share through finishChunk, then dequantize. */
function allReduce(grads: Float32Array[], chunkElems: number, seed: number): { result: Float32Array; maxK: number; saturated: number } {
  const N = grads.length, n = grads[0].length;
  const total = chunkCount(n, chunkElems);
  const exps = maxExps(grads.map((g) => chunkExps(g, chunkElems)));
  const stride = packStride(chunkElems);
  const chunks = Uint32Array.from({ length: total }, (_, c) => c);
  let saturated = 0;
  const packets = grads.map((g, r) => {
    const out = new Uint8Array(total * stride);
    const header = headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 0, rank: r });
    saturated += packChunks(g, { chunkElems, chunks, exps, header, out, seed: seed ? seed + r : 0 });
    return out;
  });
  const result = new Float32Array(n);
  const raw = new Uint32Array(MAX_ELEMS);
  const summed = new Int16Array(MAX_ELEMS);
  let maxK = 0;
  for (let c = 0; c < total; c++) {
    const owner = c % N, count = chunkLength(n, chunkElems, c);
    raw.fill(0);
    for (let r = 0; r < N; r++) {
      if (r === owner) continue;
      const q = new Int16Array(packets[r].buffer, c * stride + 32, count);
      for (let j = 0; j < count; j++) raw[accPosition(j)] += q[j] + 32768;
    }
    const own = new Int16Array(packets[owner].buffer, c * stride + 32, count);
    const k = finishChunk(raw, count, N - 1, own, summed);
    maxK = Math.max(maxK, k);
    dequantize(summed.subarray(0, count), exps[c] + k, result.subarray(c * chunkElems, c * chunkElems + count));
  }
  return { result, maxK, saturated };
}

function relL2(result: Float32Array, exact: Float64Array, keep: (j: number) => boolean = () => true): number {
  let num = 0, den = 0;
  for (let j = 0; j < exact.length; j++) {
    if (!keep(j)) continue;
    num += (result[j] - exact[j]) ** 2;
    den += exact[j] ** 2;
  }
  return Math.sqrt(num / den);
}

describe("all-reduce error: relative L2 vs the exact float64 sum <= 1e-3", () => {
  const L = 100_000, CE = 720;
  const dists: Dist[] = ["gaussian", "student-t(3)", "mixed 1e-8/1e+3"];
  for (const dist of dists) {
    for (const N of [2, 4, 8, 16, 32, 64]) {
      test(`${dist}, N = ${N}`, () => {
        const rng = mulberry32(1000 + N);
        const grads = Array.from({ length: N }, () => gradient(dist, L, CE, rng));
        const exact = new Float64Array(L);
        for (const g of grads) for (let j = 0; j < L; j++) exact[j] += g[j];
        const out: Record<string, Outcome> = {};
        for (const [mode, seed] of [["nearest", 0], ["stochastic", 17]] as const) {
          const { result, maxK, saturated } = allReduce(grads, CE, seed);
          const o: Outcome = { relL2: relL2(result, exact), maxK, saturated };
          if (dist === "mixed 1e-8/1e+3") o.tinyRelL2 = relL2(result, exact, (j) => Math.floor(j / CE) % 3 === 0);
          out[mode] = o;
          expect(saturated).toBe(0);
          expect(o.relL2).toBeLessThanOrEqual(1e-3);
          if (o.tinyRelL2 !== undefined) expect(o.tinyRelL2).toBeLessThanOrEqual(1e-3);
        }
        const fmt = (o: Outcome) => `${o.relL2.toExponential(2)}${o.tinyRelL2 !== undefined ? ` (tiny chunks ${o.tinyRelL2.toExponential(2)})` : ""} k<=${o.maxK}`;
        const row = `${dist.padEnd(16)} N=${String(N).padStart(2)}  nearest ${fmt(out.nearest)}  stochastic ${fmt(out.stochastic)}`;
        console.log(`[quantize error] ${row}`);
      }, 60_000);
    }
  }
});

// ---- saturation, the owner's step, non-finite input, arguments ----------------

describe("saturation is counted and clipped, never wrapped", () => {
  test("quantize at a too-small exponent", () => {
    const x = new Float32Array([40000, -40000, 32767, -32767, 32767.5, -32767.5, 1e30, -1e30, 5]);
    for (const seed of [0, 3]) {
      const q = new Int16Array(x.length);
      const sat = quantize(x, 0, q, seed);
      expect(Array.from(q.subarray(0, 4))).toEqual([32767, -32767, 32767, -32767]);
      expect(Array.from(q.subarray(6))).toEqual([32767, -32767, 5]);
      expect(Array.from(q.subarray(4, 6))).toEqual([32767, -32767]);
      // ±32767.5: nearest ties to even ±32768, clipped; stochastic clips |v| > 32767 before rounding.
      expect(sat).toBe(6);
      expect(sat).toBe(refQuantize(x, 0, new Int16Array(x.length), seed));
    }
  });

  test("packChunks flags the clipping chunk and counts its values", () => {
    const CE = 8;
    const x = new Float32Array(24);
    for (let j = 0; j < 24; j++) x[j] = j - 12;
    x[10] = 1e6; x[11] = -3e6;
    const exps = chunkExps(x, CE);
    const small = Int8Array.from(exps);
    small[1] = 0; // chunk 1 needs exp 7 for 3e6
    const out = new Uint8Array(3 * packStride(CE));
    const header = headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 1, rank: 0 });
    const sat = packChunks(x, { chunkElems: CE, chunks: Uint32Array.of(0, 1, 2), exps: small, header, out });
    expect(sat).toBe(2);
    const view = new DataView(out.buffer);
    expect(readHeader(view, 0).flags & F_SATURATED).toBe(0);
    expect(readHeader(view, packStride(CE)).flags & F_SATURATED).toBe(F_SATURATED);
    expect(readHeader(view, 2 * packStride(CE)).flags & F_SATURATED).toBe(0);
    const q1 = new Int16Array(out.buffer, packStride(CE) + 32, CE);
    expect(q1[2]).toBe(32767);
    expect(q1[3]).toBe(-32767);
    expect(packChunks(x, { chunkElems: CE, chunks: Uint32Array.of(0, 1, 2), exps, header, out })).toBe(0);
  });
});

describe("finishChunk: the owner's requantization", () => {
  /** An acc entry holding the given per-contributor values. */
  function acc(contribs: number[][]): Uint32Array {
    const count = contribs[0].length;
    const raw = new Uint32Array((count + 3) & ~3);
    for (const c of contribs) for (let j = 0; j < count; j++) raw[accPosition(j)] += c[j] + 32768;
    return raw;
  }

  test("k is minimal and rounding is half away from zero", () => {
    const cases: [number[], number, number[]][] = [
      [[32767, -32767, 0, 5, 1], 0, [32767, -32767, 0, 5, 1]],
      [[32768, -3, 3, -1, 1], 1, [16384, -2, 2, -1, 1]],
      [[65534, -65534, 1, -1, 0], 1, [32767, -32767, 1, -1, 0]],
      [[65535, -5, 6, 2, 0], 2, [16384, -1, 2, 1, 0]],
      [[-65535, 4, 3, 2, 1], 2, [-16384, 1, 1, 1, 0]],
      [[64 * 32767, -64 * 32767, 32, -32, 31], 6, [32767, -32767, 1, -1, 0]],
    ];
    for (const [sums, k, want] of cases) {
      // Split each sum over 64 contributors' int16 values plus none from the owner.
      const parts = Array.from({ length: 64 }, (_, r) => sums.map((s) => Math.trunc(s / 64) + (r < Math.abs(s % 64) ? Math.sign(s) : 0)));
      const raw = acc(parts);
      const out = new Int16Array(sums.length);
      expect(finishChunk(raw, sums.length, 64, null, out)).toBe(k);
      expect(Array.from(out)).toEqual(want);
      // Same input, same output, every call.
      const again = new Int16Array(sums.length);
      expect(finishChunk(raw, sums.length, 64, null, again)).toBe(k);
      expect(Array.from(again)).toEqual(Array.from(out));
      // Minimal: at k - 1 some value would not fit.
      if (k > 0) expect(sums.some((s) => Math.floor(Math.abs(s) / 2 ** (k - 1) + 0.5) > QMAX)).toBe(true);
    }
  });

  test("the owner's share is added; a lone owner needs no acc entry", () => {
    const raw = acc([[100, -200, 300, 32767, 5], [1, 2, 3, 32767, 5]]);
    const out = new Int16Array(5);
    expect(finishChunk(raw, 5, 2, Int16Array.of(10, 20, 30, 32767, 5), out)).toBe(2);
    expect(Array.from(out)).toEqual([28, -45, 83, 24575, 4]);
    expect(finishChunk(null, 3, 0, Int16Array.of(7, -7, 32767), out)).toBe(0);
    expect(Array.from(out.subarray(0, 3))).toEqual([7, -7, 32767]);
  });

  test("refuses out-of-range arguments", () => {
    const raw = new Uint32Array(MAX_ELEMS + 4), out = new Int16Array(MAX_ELEMS + 4);
    expect(() => finishChunk(raw, 0, 1, null, out)).toThrow(RangeError);
    expect(() => finishChunk(raw, MAX_ELEMS + 1, 1, null, out)).toThrow(RangeError);
    expect(() => finishChunk(raw, 8, 65, null, out)).toThrow(RangeError);
    expect(() => finishChunk(new Uint32Array(4), 5, 1, null, out)).toThrow(RangeError); // raw too short
  });
});

describe("non-finite gradients fail the round", () => {
  const x = new Float32Array(2000).fill(1);
  x[1500] = NaN;
  x[1700] = -Infinity;
  x[10] = Infinity;

  test("chunkExps throws NonFiniteGradientError naming the first one", () => {
    let err: unknown;
    try {
      chunkExps(x, 720);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NonFiniteGradientError);
    const e = err as NonFiniteGradientError;
    expect(e.count).toBe(3);
    expect(e.index).toBe(10);
    expect(e.chunk).toBe(0);
    expect(e.message).toContain("3 non-finite values");
    expect(e.hint).not.toBe("");
  });

  test("chunkExpsInto counts them and scales by the finite values", () => {
    const exps = new Int8Array(3);
    expect(chunkExpsInto(x, 720, exps)).toBe(3);
    expect(Array.from(exps)).toEqual([-14, -14, -14]); // 1 <= 32767 * 2^-14
    expect(refChunkExps(x, 720).nonFinite).toBe(3);
  });

  test("quantize stores NaN as 0, Inf as ±32767, and counts both", () => {
    const v = new Float32Array([NaN, Infinity, -Infinity, 1, -NaN]);
    for (const seed of [0, 5]) {
      const q = new Int16Array(v.length), r = new Int16Array(v.length);
      expect(quantize(v, 0, q, seed)).toBe(4);
      expect(refQuantize(v, 0, r, seed)).toBe(4);
      expect(Array.from(q)).toEqual([0, 32767, -32767, 1, 0]);
      expect(Array.from(r)).toEqual(Array.from(q));
    }
  });
});

describe("argument checks", () => {
  const x = new Float32Array(100).fill(1);
  const header = headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 1, rank: 0 });
  const exps = chunkExps(x, 10);

  test("exponents outside the representable range are refused", () => {
    expect(() => quantize(x, EXP_MIN - 1, new Int16Array(100))).toThrow(RangeError);
    expect(() => quantize(x, EXP_MAX + 1, new Int16Array(100))).toThrow(RangeError);
    expect(() => dequantize(new Int16Array(4), DEQ_EXP_MAX + 1, new Float32Array(4))).toThrow(RangeError);
    const bad = Int8Array.from(exps);
    bad[3] = -128;
    expect(() => packChunks(x, { chunkElems: 10, chunks: Uint32Array.of(3), exps: bad, header, out: new Uint8Array(packStride(10)) }))
      .toThrow(/chunk 3: exponent -128/);
  });

  test("chunk indices, strides and buffers are checked before anything is written", () => {
    const out = new Uint8Array(4 * packStride(10));
    expect(() => packChunks(x, { chunkElems: 10, chunks: Uint32Array.of(0, 10), exps, header, out })).toThrow(/chunk 10 out of range/);
    expect(out.every((b) => b === 0)).toBe(true);
    expect(() => packChunks(x, { chunkElems: 10, chunks: Uint32Array.of(0), exps, header, out, stride: 51 })).toThrow(/aligned/);
    expect(() => packChunks(x, { chunkElems: 10, chunks: Uint32Array.of(0), exps, header, out, stride: 40 })).toThrow(/stride/);
    expect(() => packChunks(x, { chunkElems: 10, chunks: Uint32Array.of(0, 1, 2, 3, 4), exps, header, out })).toThrow(RangeError);
    expect(() => chunkCount(10, 0)).toThrow(RangeError);
  });

  test("maxExps is the elementwise maximum", () => {
    expect(Array.from(maxExps([Int8Array.of(-126, 3, 0), Int8Array.of(5, -2, 0), Int8Array.of(-7, 4, -1)]))).toEqual([5, 4, 0]);
    expect(() => maxExps([Int8Array.of(1), Int8Array.of(1, 2)])).toThrow(RangeError);
    expect(() => maxExps([])).toThrow(RangeError);
  });
});

// ---- every build of the kernels against the reference ------------------------------

// test/quant-simd.test.ts compares the builds with each other byte for byte
// over harder inputs; this holds each build, the generic one included, to
// the TypeScript reference directly.
describe("every build of the native kernels matches the reference", () => {
  const CE = 720, N = CE * 7 + 13;
  const x = edgyVector(N, CE, 21);
  for (const isa of quantIsasSupported()) {
    test(`${isa}: chunkExps, quantize, packChunks, finishChunk, dequantize`, () => {
      expect(setQuantIsa(isa)).toBe(isa);
      try {
        const exps = chunkExps(x, CE);
        expect(Array.from(exps)).toEqual(Array.from(refChunkExps(x, CE).exps));
        for (const seed of [0, 5]) {
          for (let c = 0; c < exps.length; c++) {
            const part = x.subarray(c * CE, c * CE + chunkLength(N, CE, c));
            const e = Math.max(EXP_MIN, exps[c] - (c % 3)); // some saturate
            const q = new Int16Array(part.length), r = new Int16Array(part.length);
            expect(quantize(part, e, q, seed)).toBe(refQuantize(part, e, r, seed));
            expect(Array.from(q)).toEqual(Array.from(r));
          }
          const chunks = Uint32Array.from({ length: exps.length }, (_, c) => exps.length - 1 - c);
          const header = headerTemplate({ type: PKT_CONTRIB, jobId: 5, round: 2, rank: 1 });
          const out = new Uint8Array(chunks.length * packStride(CE)), ref = new Uint8Array(out.length);
          expect(packChunks(x, { chunkElems: CE, chunks, exps, header, out, seed }))
            .toBe(refPackChunks(x, { chunkElems: CE, chunks, exps, header, out: ref, seed }));
          expect(Buffer.from(out).equals(Buffer.from(ref))).toBe(true);
        }
        const rng = mulberry32(8);
        for (const count of [1, 5, 17, 719, MAX_ELEMS]) {
          const raw = Uint32Array.from({ length: (count + 3) & ~3 }, () => Math.floor(rng() * 2 ** 32));
          const own = Int16Array.from({ length: count }, () => Math.floor(rng() * 65536) - 32768);
          const out = new Int16Array(count), ref = new Int16Array(count);
          expect(finishChunk(raw, count, 9, own, out)).toBe(refFinishChunk(raw, count, 9, own, ref));
          expect(Array.from(out)).toEqual(Array.from(ref));
        }
        const q = Int16Array.from({ length: 1001 }, () => Math.floor(rng() * 65536) - 32768);
        for (const e of [DEQ_EXP_MIN, -149, -130, -126, -5, 0, 127, 130, DEQ_EXP_MAX]) {
          const a = new Float32Array(q.length), b = new Float32Array(q.length);
          dequantize(q, e, a);
          refDequantize(q, e, b);
          expect(Array.from(bitsOf(a))).toEqual(Array.from(bitsOf(b)));
        }
      } finally {
        setQuantIsa("best");
      }
    });
  }
});

// ---- speed (printed, never asserted) -------------------------------------------

test("speed print: ns/element for 4M elements", () => {
  const n = 4 * 1024 * 1024, CE = 720;
  const rng = mulberry32(3);
  const x = new Float32Array(n);
  for (let j = 0; j < n; j++) x[j] = (rng() - 0.5) * 2 ** ((j >> 10) % 20);
  const total = chunkCount(n, CE);
  const chunks = Uint32Array.from({ length: total }, (_, c) => c);
  const out = new Uint8Array(total * packStride(CE));
  const header = headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 1, rank: 0 });
  const q = new Int16Array(n);
  const back = new Float32Array(n);
  let exps = chunkExps(x, CE);
  const best = (f: () => void) => {
    let b = Infinity;
    for (let i = 0; i < 5; i++) {
      const t = Bun.nanoseconds();
      f();
      b = Math.min(b, Bun.nanoseconds() - t);
    }
    return (b / n).toFixed(3);
  };
  const r = {
    chunkExps: best(() => { exps = chunkExps(x, CE); }),
    packNearest: best(() => packChunks(x, { chunkElems: CE, chunks, exps, header, out })),
    packStochastic: best(() => packChunks(x, { chunkElems: CE, chunks, exps, header, out, seed: 1 })),
    quantize: best(() => quantize(x, 10, q)),
    dequantize: best(() => dequantize(q, -5, back)),
  };
  console.log(`[quantize speed] ns/element over ${n} elements (best of 5): ${JSON.stringify(r)}`);
});
