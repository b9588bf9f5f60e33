// Issue 14's kernels one by one: the narrow exponents, stochastic packing
// (unbiased, replayable, its residual exact), the owner's requantization
// (unbiased over seeds, no overflow at 64 workers), the randomized Hadamard
// transform (inverse, norm, the same bits from every build), and the XDP
// program's int8 / int4 lanes at 64 workers' extremes (BPF_PROG_TEST_RUN,
// root), with packets of the wrong width dropped and counted.
import { describe, expect, test } from "bun:test";
import {
  ACC_BIAS4, ACC_BIAS8, CFG_INT4, CFG_INT8, MAX_ELEMS, PKT_CONTRIB, VERSION, VERSION_INT4, VERSION_INT8, allMembers, decodeSumsNarrow, payloadBytes,
  writeHeader, type JobConfig,
} from "../src/abi.ts";
import { frame } from "../src/packet.ts";
import {
  chunkExpsAt, dequantizeBits, ERROR_BOUND, finishChunkBits, headerTemplate, mix32, packChunksAt, QMAX_BITS, rht, rhtFrom,
  rhtFromExps,
} from "../src/quantize.ts";
import { cBitsRhtExpsPack, cRhtChunk, NO_OFFSET, quantIsasSupported, rhtIsa, setQuantIsa } from "../native/quant.ts";
import { mulberry32 } from "../src/random.ts";
import { ReflexObject } from "../src/reflex.ts";

const root = process.getuid?.() === 0;
const HDR = 32;

function gaussian(seed: number, n: number, scale = 1): Float32Array {
  const rnd = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd()) * scale;
  return x;
}

/** Packs one chunk of x (all of it) at `bits`; returns its payload, exp and residual. */
function packOne(x: Float32Array, bits: 8 | 4, seed: number): { payload: Uint8Array; exp: number; resid: Float32Array } {
  const exps = new Int8Array(1);
  chunkExpsAt(x, x.length, exps, bits);
  const stride = HDR + payloadBytes(bits, x.length);
  const out = new Uint8Array(stride);
  const resid = new Float32Array(x.length);
  packChunksAt(x, { chunkElems: x.length, chunks: new Uint32Array([0]), exps, header: headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 0, rank: 0 }), out, stride, seed, bits, resid });
  expect(out[4]).toBe(bits === 8 ? VERSION_INT8 : VERSION_INT4);
  return { payload: out.subarray(HDR), exp: exps[0], resid };
}

describe("narrow exponents and packing", () => {
  for (const bits of [8, 4] as const) {
    test(`${bits} bits: the smallest exponent at which every value fits ±${QMAX_BITS[bits]}`, () => {
      const rnd = mulberry32(bits);
      for (let t = 0; t < 500; t++) {
        const x = gaussian(t, 64, 2 ** Math.floor(rnd() * 40 - 20));
        const exps = new Int8Array(1);
        expect(chunkExpsAt(x, 64, exps, bits)).toBe(0);
        const m = Math.max(...Array.from(x, Math.abs));
        expect(m).toBeLessThanOrEqual(QMAX_BITS[bits] * 2 ** exps[0]);
        expect(m).toBeGreaterThan(QMAX_BITS[bits] * 2 ** (exps[0] - 1));
      }
    });

    test(`${bits} bits: stochastic values within one step, the residual exactly x minus what was sent, replayable by seed`, () => {
      const x = gaussian(7, 1000);
      const a = packOne(x, bits, 99), b = packOne(x, bits, 99), c = packOne(x, bits, 100);
      expect(Buffer.from(a.payload).equals(Buffer.from(b.payload))).toBe(true);
      expect(Buffer.from(a.payload).equals(Buffer.from(c.payload))).toBe(false);
      const deq = new Float32Array(x.length);
      dequantizeBits(a.payload, x.length, a.exp, bits, deq);
      const step = 2 ** a.exp;
      for (let i = 0; i < x.length; i++) {
        expect(Math.abs(deq[i] - x[i])).toBeLessThan(step);
        expect(Math.abs(deq[i] / step)).toBeLessThanOrEqual(QMAX_BITS[bits]);
        expect(a.resid[i]).toBe(Math.fround(x[i] - deq[i]));
      }
    });

    test(`${bits} bits: unbiased: the mean error over 4000 seeds tends to 0 (and round to nearest is biased)`, () => {
      const x = gaussian(11, 256);
      const n = 4000;
      const mean = new Float64Array(x.length);
      const deq = new Float32Array(x.length);
      let step = 0;
      for (let s = 1; s <= n; s++) {
        const p = packOne(x, bits, s);
        step = 2 ** p.exp;
        dequantizeBits(p.payload, x.length, p.exp, bits, deq);
        for (let i = 0; i < x.length; i++) mean[i] += (deq[i] - x[i]) / n;
      }
      // each value's error is in (-step, step) with variance <= step^2 / 4: its mean over n seeds
      // is within 5 sigma = 2.5 step / sqrt(n) of 0; the mean over all values far closer
      let all = 0;
      for (let i = 0; i < x.length; i++) {
        expect(Math.abs(mean[i])).toBeLessThan((2.5 * step) / Math.sqrt(n));
        all += mean[i] / x.length;
      }
      expect(Math.abs(all)).toBeLessThan((2.5 * step) / Math.sqrt(n * x.length));
      const near = packOne(x, bits, 0);
      dequantizeBits(near.payload, x.length, near.exp, bits, deq);
      let biased = 0;
      for (let i = 0; i < x.length; i++) biased = Math.max(biased, Math.abs(deq[i] - x[i]));
      expect(biased).toBeGreaterThan((2.5 * step) / Math.sqrt(n)); // nearest's error does not average out
    });
  }

  test("the int4 layout: value 16g + j in the low nibble of byte 8g + j, 16g + 8 + j in its high nibble; the tail group zero-padded", () => {
    const x = new Float32Array(20);
    for (let i = 0; i < 20; i++) x[i] = ((i % 15) - 7) * 0.5; // -3.5 .. 3.5: exactly q = i%15 - 7 at exp -1
    const p = packOne(x, 4, 0);
    expect(p.exp).toBe(-1);
    expect(p.payload.length).toBe(16);
    const q = (i: number) => ((i % 15) - 7) & 15;
    for (let j = 0; j < 8; j++) expect(p.payload[j]).toBe(q(j) | (q(j + 8) << 4));
    for (let j = 0; j < 4; j++) expect(p.payload[8 + j]).toBe(q(16 + j));
    for (let j = 4; j < 8; j++) expect(p.payload[8 + j]).toBe(0);
  });
});

describe("the owner's requantization", () => {
  /** An acc entry of 16-bit lanes holding `vals` (one row per contributor) as the XDP program lays it out. */
  function accOf(vals: Int8Array[], count: number, bits: 8 | 4): Uint16Array {
    const raw = new Uint16Array((count + 7) & ~7);
    const bias = bits === 8 ? ACC_BIAS8 : ACC_BIAS4;
    for (let j = 0; j < count; j++) {
      const k = j & 7;
      let s = 0;
      for (const v of vals) s += v[j] + bias;
      raw[(j - k) + 4 * (k & 1) + (k >> 1)] = s;
    }
    return raw;
  }

  for (const bits of [8, 4] as const) {
    test(`${bits} bits, 64 workers at ±${QMAX_BITS[bits]}: the lanes hold the sums, the result fits, the shift is the smallest`, () => {
      const count = 40, Q = QMAX_BITS[bits];
      const rows = Array.from({ length: 63 }, () => Int8Array.from({ length: count }, (_, j) => (j & 1 ? Q : -Q)));
      const own = Int8Array.from({ length: count }, (_, j) => (j & 1 ? Q : -Q));
      const raw = accOf(rows, count, bits);
      expect(Math.max(...raw)).toBeLessThanOrEqual(65535);
      const sums = decodeSumsNarrow(raw, count, 63, bits);
      const ownPacked = new Uint8Array(payloadBytes(bits, count));
      const tmp = new Float32Array(count);
      for (let j = 0; j < count; j++) tmp[j] = own[j];
      const o = packOne(tmp, bits, 0);
      expect(o.exp).toBe(0);
      ownPacked.set(o.payload);
      const out = new Uint8Array(payloadBytes(bits, count));
      const k = finishChunkBits(raw, count, 63, ownPacked, bits, 1234, out);
      const deq = new Float32Array(count);
      dequantizeBits(out, count, k, bits, deq);
      const maxS = Math.max(...Array.from(sums, (s, j) => Math.abs(s + own[j])));
      expect(maxS).toBe(64 * Q);
      expect(maxS).toBeLessThanOrEqual(Q * 2 ** k);
      expect(maxS).toBeGreaterThan(Q * 2 ** (k - 1));
      for (let j = 0; j < count; j++) expect(Math.abs(deq[j] - (sums[j] + own[j]))).toBeLessThan(2 ** k);
    });

    test(`${bits} bits: the owner's rounding is unbiased over keys, and the same key gives the same bytes`, () => {
      const count = 64, rnd = mulberry32(bits * 31);
      const Q = QMAX_BITS[bits];
      const rows = Array.from({ length: 5 }, () => Int8Array.from({ length: count }, () => Math.floor(rnd() * (2 * Q + 1)) - Q));
      const raw = accOf(rows, count, bits);
      const s = decodeSumsNarrow(raw, count, 5, bits);
      const n = 4000, mean = new Float64Array(count), out = new Uint8Array(payloadBytes(bits, count)), deq = new Float32Array(count);
      let k = 0;
      for (let key = 0; key < n; key++) {
        k = finishChunkBits(raw, count, 5, null, bits, key, out);
        dequantizeBits(out, count, k, bits, deq);
        for (let j = 0; j < count; j++) mean[j] += (deq[j] - s[j]) / n;
      }
      expect(k).toBeGreaterThan(0);
      for (let j = 0; j < count; j++) expect(Math.abs(mean[j])).toBeLessThan((2.5 * 2 ** k) / Math.sqrt(n));
      const a = new Uint8Array(out.length), b = new Uint8Array(out.length);
      finishChunkBits(raw, count, 5, null, bits, 77, a);
      finishChunkBits(raw, count, 5, null, bits, 77, b);
      expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    });
  }
});

// The 8/4-bit streams as native/bits.c documents them, in plain TypeScript:
// each build (and a block's vector lanes and a chunk's scalar tail) must
// draw exactly these bits.
const GOLDEN = 0x9e3779b9;
const streamKey = (seed: number, stream: number) => mix32((seed ^ mix32((stream + GOLDEN) >>> 0)) >>> 0);
/** stochastic_one: |q| = floor((floor(|v| * 2^16) + h16) / 2^16), v = x * 2^-e; hash lane
 * (j >> 5) * 16 + (j & 15), value j taking its low half when bit 4 of j is clear, its high half else. */
function refPackValues(x: Float32Array, exp: number, key: number): number[] {
  return Array.from(x, (xj, j) => {
    const v = Math.fround(xj * 2 ** -exp), h = mix32((key + Math.imul((j >>> 5) * 16 + (j & 15), GOLDEN)) >>> 0);
    const m = Math.floor((Math.trunc(Math.abs(v) * 65536) + (j & 16 ? h >>> 16 : h & 0xffff)) / 65536);
    return v < 0 ? -m || 0 : m; // (no -0: the values are integers)
  });
}
/** The owner's rounding of sums s at shift k: k <= 8: byte (j >> 4) & 3 of hash lane (j >> 6) * 16 + (j & 15); else a hash per value. */
function refFinishValues(s: ArrayLike<number>, k: number, key: number): number[] {
  return Array.from(s, (sj, j) => {
    const u = k <= 8
      ? (mix32((key + Math.imul((j >>> 6) * 16 + (j & 15), GOLDEN)) >>> 0) >>> (8 * ((j >>> 4) & 3))) & ((1 << k) - 1)
      : mix32((key + Math.imul(j, GOLDEN)) >>> 0) & ((1 << k) - 1);
    const r = sj >> k;
    return r + (u < sj - r * 2 ** k ? 1 : 0);
  });
}

describe("the streams' spec, against a TypeScript reference, in every build", () => {
  const COUNTS = [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000, 3440, 8928];
  const everyBuild = (body: (isa: string) => void) => {
    try {
      for (const isa of quantIsasSupported()) {
        setQuantIsa(isa);
        body(isa);
      }
    } finally {
      setQuantIsa("best");
    }
  };

  test("packing: 16 bits of a hash shared by two values, block lanes and tail alike, the chunk's stream by (seed, chunk)", () => {
    everyBuild((isa) => {
      for (const n of COUNTS)
        for (const bits of [8, 4] as const) {
          const x = gaussian(n * 3 + bits, 2 * n, 3), exps = new Int8Array(2);
          chunkExpsAt(x, n, exps, bits);
          const stride = HDR + payloadBytes(bits, n), out = new Uint8Array(2 * stride), resid = new Float32Array(2 * n);
          const seed = 0xc0ffee + n;
          expect(packChunksAt(x, { chunkElems: n, chunks: new Uint32Array([1, 0]), exps, header: headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 0, rank: 0 }), out, stride, seed, bits, resid })).toBe(0);
          for (const [i, c] of [[0, 1], [1, 0]]) {
            const got = new Float32Array(n);
            dequantizeBits(out.subarray(i * stride + HDR), n, 0, bits, got);
            const want = refPackValues(x.subarray(c * n, (c + 1) * n), exps[c], streamKey(seed, c));
            expect([isa, n, bits, c, Array.from(got)]).toEqual([isa, n, bits, c, want]);
          }
        }
    });
  });

  test("the owner's step: a byte of a hash shared by four values while k <= 8 (block lanes and tail alike), a hash per value beyond", () => {
    everyBuild((isa) => {
      for (const n of COUNTS)
        for (const bits of [8, 4] as const) {
          const Q = QMAX_BITS[bits], bias = bits === 8 ? ACC_BIAS8 : ACC_BIAS4, rnd = mulberry32(n + bits);
          const own = Uint8Array.from({ length: payloadBytes(bits, n) }, () => Math.floor(rnd() * 256));
          const ownQ = new Float32Array(n);
          dequantizeBits(own, n, 0, bits, ownQ);
          // contributions' sums within ±64 Q (k <= 7), and lanes no sum of contributions gives (k up to 14)
          for (const [contributors, lane] of [[64, () => 64 * bias + Math.floor(rnd() * (127 * Q + 1)) - 63 * Q], [3, () => 3 * bias + Math.floor(rnd() * (6 * Q + 1)) - 3 * Q], [1, () => Math.floor(rnd() * 65536)]] as const) {
            const raw = Uint16Array.from({ length: (n + 7) & ~7 }, lane), key = Math.floor(rnd() * 2 ** 32);
            const s = decodeSumsNarrow(raw, n, contributors, bits).map((v, j) => v + ownQ[j]);
            const m = Math.max(...Array.from(s, Math.abs));
            let k = 0;
            while (m > Q * 2 ** k) k++;
            const out = new Uint8Array(payloadBytes(bits, n)), got = new Float32Array(n);
            expect([isa, n, bits, contributors, finishChunkBits(raw, n, contributors, own, bits, key, out)]).toEqual([isa, n, bits, contributors, k]);
            dequantizeBits(out, n, 0, bits, got);
            expect([isa, n, bits, contributors, Array.from(got)]).toEqual([isa, n, bits, contributors, refFinishValues(s, k, key)]);
          }
        }
    });
  });
});

/** Today's bits for a fixed input: the transform, exponents, packets (8 and 4 bits, with residual), owner's step, dequantized results and inverse, over chunks with every block edge. */
function pinnedBits(): string {
  const h = new Bun.CryptoHasher("sha256");
  const add = (a: ArrayBufferView) => h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  for (const [n, ce] of [[8928 * 3 + 1001, 8928], [3440 * 2 + 7, 3440], [1025, 1023]] as const) {
    const rnd = mulberry32(n ^ ce), x = new Float32Array(n); // exact arithmetic only: the same input everywhere
    for (let i = 0; i < n; i++) x[i] = (rnd() - 0.5) * (i % 97 ? 8 : 8e4); // with spikes
    const y = new Float32Array(n);
    rhtFrom(x, y, ce, 0x9e3779b9);
    add(y);
    for (const bits of [8, 4] as const) {
      const nch = Math.ceil(n / ce), exps = new Int8Array(nch);
      chunkExpsAt(y, ce, exps, bits);
      add(exps);
      const stride = HDR + payloadBytes(bits, ce), out = new Uint8Array(stride * nch), resid = new Float32Array(n);
      const chunks = Uint32Array.from({ length: nch }, (_, i) => i);
      packChunksAt(y, { chunkElems: ce, chunks, exps, header: headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 0, rank: 0 }), out, stride, seed: 1234, bits, resid });
      add(out), add(resid);
      const back = new Float32Array(n);
      for (let c = 0; c < nch; c++) {
        const count = Math.min(ce, n - c * ce), raw = new Uint16Array((count + 7) & ~7).fill(bits === 8 ? 2 * ACC_BIAS8 + 3 : 2 * ACC_BIAS4 + 1);
        const fin = new Uint8Array(payloadBytes(bits, count));
        const k = finishChunkBits(raw, count, 2, out.subarray(c * stride + HDR), bits, 77 + c, fin);
        add(fin);
        dequantizeBits(fin, count, exps[c] + k, bits, back.subarray(c * ce, c * ce + count));
      }
      rht(back, ce, 0x9e3779b9, true);
      rht(resid, ce, 0x9e3779b9, true);
      add(back), add(resid);
    }
  }
  return h.digest("hex");
}

describe("the randomized Hadamard transform", () => {
  test("inverse undoes it (to rounding), the norm is kept per block, a seed replays, another seed differs", () => {
    for (const n of [1, 7, 8, 100, 1024, 3440, 5000]) {
      const x = gaussian(n, n);
      const y = Float32Array.from(x);
      rht(y, 3440, 42);
      const z = Float32Array.from(x);
      rht(z, 3440, 42);
      expect(Buffer.from(y.buffer).equals(Buffer.from(z.buffer))).toBe(true);
      const w = Float32Array.from(x);
      rht(w, 3440, 43);
      if (n > 1) expect(Buffer.from(y.buffer).equals(Buffer.from(w.buffer))).toBe(false);
      rht(y, 3440, 42, true);
      let err = 0, norm = 0;
      for (let i = 0; i < n; i++) (err = Math.max(err, Math.abs(y[i] - x[i]))), (norm = Math.max(norm, Math.abs(x[i])));
      expect(err).toBeLessThan(1e-5 * norm);
    }
  });

  test("rhtFrom (no copy) gives the same bits as a copy transformed in place", () => {
    const x = gaussian(21, 3440 * 2 + 999);
    const a = Float32Array.from(x);
    rht(a, 3440, 8);
    const b = new Float32Array(x.length);
    rhtFrom(x, b, 3440, 8);
    expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
    expect(Buffer.from(x.buffer).equals(Buffer.from(gaussian(21, 3440 * 2 + 999).buffer))).toBe(true); // src untouched
  });

  // The lengths and chunk sizes the register-blocked build has edges at:
  // every block size 1 .. 1024, chunks not a multiple of the block, a last
  // partial chunk, and a chunk shorter than a block.
  const EDGES: [n: number, chunk: number][] = [
    [1, 1], [1, 3440], [7, 3], [8, 8], [9, 3440], [100, 7], [127, 1024], [128, 128], [129, 1023], [1023, 1023], [1024, 1024],
    [1025, 1025], [1025, 1024], [2047, 3440], [3440 * 2 + 999, 3440], [5000, 1025], [8928 * 2 + 5, 8928], [4096 + 2048 + 1, 4097],
  ];
  const bitsOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  /** body for every build this CPU runs, every edge and both narrow widths; the best build again after. */
  const everyBuildEdgeWidth = (body: (what: string, n: number, ce: number, bits: 8 | 4) => void) => {
    try {
      for (const isa of quantIsasSupported()) {
        setQuantIsa(isa);
        for (const [n, ce] of EDGES) for (const bits of [8, 4] as const) body(`${isa} n ${n} chunk ${ce} ${bits} bits`, n, ce, bits);
      }
    } finally {
      setQuantIsa("best");
    }
  };

  test("rhtFromExps gives the same transformed values, exponents and non-finite count as rhtFrom then chunkExpsAt", () => {
    const isas = quantIsasSupported();
    try {
      for (const isa of isas) {
        setQuantIsa(isa);
        for (const [n, ce] of EDGES)
          for (const bits of [8, 4] as const)
            for (const poison of [false, true]) {
              const x = gaussian(n + ce, n, 1 + (n % 5) * 1000);
              if (poison) x[Math.floor(n / 2)] = n % 2 ? NaN : -Infinity; // spreads over its block: every value there non-finite
              const a = new Float32Array(n), ea = new Int8Array(Math.ceil(n / ce)).fill(99);
              rhtFrom(x, a, ce, 11);
              const badA = chunkExpsAt(a, ce, ea, bits);
              const b = new Float32Array(n), eb = new Int8Array(ea.length).fill(-99);
              const badB = rhtFromExps(x, b, ce, 11, eb, bits);
              const what = `${isa} n ${n} chunk ${ce} ${bits} bits${poison ? " poisoned" : ""}`;
              expect([what, badB]).toEqual([what, badA]);
              if (poison) expect(badA).toBeGreaterThan(0);
              else expect(badA).toBe(0);
              expect([what, [...eb]]).toEqual([what, [...ea]]);
              for (let i = 0; i < n; i++) if (Number.isNaN(a[i])) (a[i] = 0), (b[i] = Number.isNaN(b[i]) ? 0 : b[i]); // a NaN's payload is not a value
              expect([what, bitsOf(b).equals(bitsOf(a))]).toEqual([what, true]);
              const c = Float32Array.from(x), ec = new Int8Array(ea.length);
              expect(rhtFromExps(c, c, ce, 11, ec, bits)).toBe(badA); // in place
              expect([...ec]).toEqual([...ea]);
            }
      }
    } finally {
      setQuantIsa("best");
    }
    expect(() => rhtFromExps(new Float32Array(4), new Float32Array(4), 4, 1, new Int8Array(1), 16)).toThrow(/bits must be 8 or 4/);
    expect(() => rhtFromExps(new Float32Array(5), new Float32Array(5), 4, 1, new Int8Array(1), 8)).toThrow(/exps shorter/);
  });

  test("rhtFromExps with error feedback (add, also) gives the bits of the separate passes: Float32Array x + add, the transform, a copy into also; add and also may be one buffer", () => {
    everyBuildEdgeWidth((what, n, ce, bits) => {
      const x = gaussian(n + 2 * ce, n, 1 + (n % 3) * 100), r = gaussian(n + 7 * ce, n, 0.01);
      // the passes this replaces (ErrorFeedback.input, then the transform, then resid.set)
      const sum = new Float32Array(n);
      for (let i = 0; i < n; i++) sum[i] = x[i] + r[i];
      const a = new Float32Array(n), ea = new Int8Array(Math.ceil(n / ce));
      const badA = rhtFromExps(sum, a, ce, 5, ea, bits);
      // add and also apart
      const b = new Float32Array(n), eb = new Int8Array(ea.length), also = new Float32Array(n).fill(7);
      expect([what, rhtFromExps(x, b, ce, 5, eb, bits, r, also)]).toEqual([what, badA]);
      expect([what, [...eb]]).toEqual([what, [...ea]]);
      expect([what, bitsOf(b).equals(bitsOf(a)), bitsOf(also).equals(bitsOf(a))]).toEqual([what, true, true]);
      // add and also one buffer (the residual: read as the last call's, left as this call's start)
      const resid = Float32Array.from(r), c = new Float32Array(n), ec = new Int8Array(ea.length);
      expect(rhtFromExps(x, c, ce, 5, ec, bits, resid, resid)).toBe(badA);
      expect([what, bitsOf(c).equals(bitsOf(a)), bitsOf(resid).equals(bitsOf(a)), [...ec]]).toEqual([what, true, true, [...ea]]);
      // in place, with add
      const d = Float32Array.from(x), ed = new Int8Array(ea.length);
      expect(rhtFromExps(d, d, ce, 5, ed, bits, r)).toBe(badA);
      expect([what, bitsOf(d).equals(bitsOf(a))]).toEqual([what, true]);
    });
    expect(() => rhtFromExps(new Float32Array(8), new Float32Array(8), 4, 1, new Int8Array(2), 8, new Float32Array(7))).toThrow(/add has 7/);
    expect(() => rhtFromExps(new Float32Array(8), new Float32Array(8), 4, 1, new Int8Array(2), 8, null, new Float32Array(3))).toThrow(/also has 3/);
  });

  test("packing with residSeed gives the residual of packing then the inverse chunk by chunk, bit for bit, in every build; chunks not packed are untouched", () => {
    everyBuildEdgeWidth((what, n, ce, bits) => {
      const total = Math.ceil(n / ce);
      const x = gaussian(n + 3 * ce, n, 1 + (n % 5) * 10), exps = new Int8Array(total);
      chunkExpsAt(x, ce, exps, bits);
      // every other chunk, last first (the order a window packs them in does not matter)
      const chunks = Uint32Array.from({ length: Math.ceil(total / 2) }, (_, i) => 2 * i).reverse();
      const stride = HDR + payloadBytes(bits, Math.min(n, ce));
      const header = headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 3, rank: 1 });
      // the two passes this replaces: pack (residual in the transform's domain), then the inverse per chunk
      const outA = new Uint8Array(chunks.length * stride), a = new Float32Array(n).fill(5);
      const satA = packChunksAt(x, { chunkElems: ce, chunks, exps, header, out: outA, stride, seed: 11, bits, resid: a });
      for (const c of chunks) cRhtChunk(a.subarray(c * ce, Math.min(n, (c + 1) * ce)), c, 23, true);
      const outB = new Uint8Array(chunks.length * stride), b = new Float32Array(n).fill(5);
      const satB = packChunksAt(x, { chunkElems: ce, chunks, exps, header, out: outB, stride, seed: 11, bits, resid: b, residSeed: 23 });
      expect([what, satB, Buffer.from(outB).equals(Buffer.from(outA)), bitsOf(b).equals(bitsOf(a))]).toEqual([what, satA, true, true]);
      // the unpacked chunks kept what was there
      for (let c = 1; c < total; c += 2) expect([what, c, b.subarray(c * ce, Math.min(n, (c + 1) * ce)).every((v) => v === 5)]).toEqual([what, c, true]);
    });
  });

  test("prepacking (cBitsRhtExpsPack) gives the transform, exponents, packets and residual of the separate calls, in every build, the transform kept or not; chunks without an offset get none", () => {
    everyBuildEdgeWidth((what, n, ce, bits) => {
      const total = Math.ceil(n / ce);
      const x = gaussian(n + 5 * ce, n, 1 + (n % 7) * 30), add = gaussian(n + 9 * ce, n, 0.02);
      // a prediction above some exponents (the largest scale there is), below others, equal to some
      const pred = Int8Array.from({ length: total }, (_, c) => (c % 3 === 0 ? 127 : c % 3 === 1 ? -100 : 0));
      const stride = HDR + payloadBytes(bits, Math.min(n, ce));
      const header = headerTemplate({ type: PKT_CONTRIB, jobId: 2, round: 5, rank: 1 });
      // chunk c's packet at slot (total - 1 - c) (a layout's order is not the chunks'), chunk 1 none
      const offsets = Uint32Array.from({ length: total }, (_, c) => (c === 1 && total > 1 ? NO_OFFSET : (total - 1 - c) * stride));
      for (const withEf of [false, true]) {
        // the separate calls: the transform with the exponents, then each chunk packed at max(pred, exponent)
        const a = new Float32Array(n), ea = new Int8Array(total);
        const badA = rhtFromExps(x, a, ce, 31, ea, bits, withEf ? add : null);
        const sa = Int8Array.from(ea, (e, c) => (pred[c] > e && pred[c] <= 127 ? pred[c] : e));
        const outA = new Uint8Array(total * stride), ra = new Float32Array(n).fill(3);
        let satA = 0;
        for (let c = 0; c < total; c++) {
          if (offsets[c] === NO_OFFSET) continue;
          satA += packChunksAt(a, { chunkElems: ce, chunks: Uint32Array.of(c), exps: sa, header, out: outA.subarray(offsets[c], offsets[c] + stride), stride, seed: 41, bits, resid: withEf ? ra : null, residSeed: withEf ? 31 : 0 });
        }
        // one pass
        const b = new Float32Array(n), eb = new Int8Array(total), sb = new Int8Array(total), outB = new Uint8Array(total * stride), rb = new Float32Array(n).fill(3);
        const sat = new Uint32Array(1);
        const badB = cBitsRhtExpsPack(x, withEf ? add : null, b, ce, 31, bits, pred, eb, sb, offsets, header, outB, 41, withEf ? rb : null, withEf ? 31 : 0, sat);
        expect([what, withEf, badB, sat[0], [...eb], [...sb]]).toEqual([what, withEf, badA, satA, [...ea], [...sa]]);
        expect([what, withEf, bitsOf(b).equals(bitsOf(a)), Buffer.from(outB).equals(Buffer.from(outA)), bitsOf(rb).equals(bitsOf(ra))]).toEqual([what, withEf, true, true, true]);
        // the transform not kept (out null): the same exponents, scales and packets
        const ec = new Int8Array(total), sc = new Int8Array(total), outC = new Uint8Array(total * stride), satC = new Uint32Array(1);
        const badC = cBitsRhtExpsPack(x, withEf ? add : null, null, ce, 31, bits, pred, ec, sc, offsets, header, outC, 41, withEf ? rb.fill(3) : null, withEf ? 31 : 0, satC);
        expect([what, withEf, badC, satC[0], [...ec], [...sc], Buffer.from(outC).equals(Buffer.from(outA)), !withEf || bitsOf(rb).equals(bitsOf(ra))]).toEqual([what, withEf, badA, satA, [...ea], [...sa], true, true]);
      }
    });
    const o = new Uint32Array([0]);
    expect(cBitsRhtExpsPack(new Float32Array(8), null, new Float32Array(8), 8, 1, 8, null, new Int8Array(1), new Int8Array(1), o, new Uint8Array(32), new Uint8Array(39), 1, null, 0, new Uint32Array(1))).toBe(0xffffffff);
  });

  test("every build gives the same bits at every block size and chunk edge: forward, in place, inverse", () => {
    const isas = quantIsasSupported();
    const outs: Buffer[] = [];
    try {
      for (const isa of isas) {
        setQuantIsa(isa);
        const parts: Buffer[] = [];
        for (const [n, ce] of EDGES) {
          const x = gaussian(3 * n + ce, n, 2 ** ((n % 40) - 20));
          const y = new Float32Array(n);
          rhtFrom(x, y, ce, 21);
          const z = Float32Array.from(x);
          rht(z, ce, 21);
          expect(bitsOf(z).equals(bitsOf(y))).toBe(true);
          rht(y, ce, 21, true);
          parts.push(Buffer.from(z.buffer), Buffer.from(y.buffer));
        }
        outs.push(Buffer.concat(parts));
      }
    } finally {
      setQuantIsa("best");
    }
    if (isas.length < 2) console.log(`[bits] only the ${isas[0]} build runs here: nothing to compare`);
    for (const o of outs) expect(o.equals(outs[0])).toBe(true);
  });

  test("one chunk at a time (the gather's inverse) gives the same bits as the whole array", () => {
    for (const [n, ce] of EDGES) {
      const x = gaussian(n * 7 + ce, n);
      const whole = Float32Array.from(x), parts = Float32Array.from(x);
      rht(whole, ce, 31, true);
      for (let c = 0; c * ce < n; c++) cRhtChunk(parts.subarray(c * ce, Math.min(n, (c + 1) * ce)), c, 31, true);
      expect([n, ce, bitsOf(parts).equals(bitsOf(whole))]).toEqual([n, ce, true]);
      rht(whole, ce, 31);
      for (let c = 0; c * ce < n; c++) cRhtChunk(parts.subarray(c * ce, Math.min(n, (c + 1) * ce)), c, 31, false);
      expect([n, ce, bitsOf(parts).equals(bitsOf(whole))]).toEqual([n, ce, true]);
    }
  });

  test("today's bits, pinned: every build gives the hash of the streams' spec (transform, exponents, packets, residual, owner's step, inverse)", () => {
    // 825a4387...: measured with the tree at 7727c85 (stage-by-stage AVX2 transform, scalar residual loop), on its generic, avx2
    // and avx512 builds, and held by every build since, until the packets' and the owner's streams changed (a hash for two
    // values, 16 bits each, and for four, a byte each): f8c0b2e8..., the same on the generic, avx2 and avx512 builds, the
    // streams themselves held by the TypeScript reference above
    const PINNED = "f8c0b2e895f56b3efc34eb2d4ef35011f2e5a7dcf059baedefbc2d825d80be47";
    try {
      for (const isa of quantIsasSupported()) {
        setQuantIsa(isa);
        expect([isa, pinnedBits()]).toEqual([isa, PINNED]);
      }
    } finally {
      setQuantIsa("best");
    }
  });

  test("it spreads a spike: one large value among zeros leaves no value above 1/32 of it in a 1024-block", () => {
    const x = new Float32Array(1024);
    x[5] = 1024;
    rht(x, 1024, 9);
    for (const v of x) expect(Math.abs(v)).toBe(32); // 1024 * 2^-5 with a random sign
  });

  test("every build this CPU runs gives the same bits (generic, avx2, avx512): transform, packing, residual, owner's step, dequantizing", () => {
    const isas = quantIsasSupported();
    const ref = gaussian(3, 3440 * 3 + 77);
    const outs: Buffer[] = [];
    try {
      for (const isa of isas) {
        setQuantIsa(isa);
        const y = Float32Array.from(ref);
        rht(y, 3440, 5);
        const parts: Uint8Array[] = [new Uint8Array(Float32Array.from(y).buffer)];
        for (const bits of [8, 4] as const) {
          const p = packOne(y.subarray(0, 3440), bits, 17);
          const q = packOne(y.subarray(3440, 3440 + 1001), bits, 0);
          const deq = new Float32Array(3440);
          dequantizeBits(p.payload, 3440, p.exp, bits, deq);
          const fin = new Uint8Array(p.payload.length);
          const raw = new Uint16Array(3440).fill(bits === 8 ? 3 * 128 + 5 : 3 * 8 + 1);
          finishChunkBits(raw, 3440, 3, p.payload, bits, 99, fin);
          parts.push(p.payload, q.payload, new Uint8Array(p.resid.buffer), new Uint8Array(deq.buffer), fin);
        }
        rht(y, 3440, 6, true);
        parts.push(new Uint8Array(y.buffer));
        outs.push(Buffer.concat(parts));
      }
    } finally {
      setQuantIsa("best");
    }
    if (isas.length < 2) console.log(`[bits] only the ${isas[0]} build runs here: nothing to compare`);
    for (const o of outs) expect(o.equals(outs[0])).toBe(true);
    console.log(`[bits] RHT builds compared: ${isas.join(", ")}; in use now: ${rhtIsa()}`);
  });
});

test("the error bounds the README states: 16 < 8 < 4, each below 1", () => {
  expect(ERROR_BOUND[16]).toBeLessThan(ERROR_BOUND[8]);
  expect(ERROR_BOUND[8]).toBeLessThan(ERROR_BOUND[4]);
  expect(ERROR_BOUND[4]).toBeLessThan(1);
});

// ---- the XDP program's lanes -----------------------------------------------------------

const JOB = 0x14;

function narrowFrame(bits: 8 | 4, chunk: number, rank: number, payload: Uint8Array, count: number, version = bits === 8 ? VERSION_INT8 : VERSION_INT4): Uint8Array {
  const b = new Uint8Array(HDR + payload.length);
  writeHeader(new DataView(b.buffer), 0, { type: PKT_CONTRIB, version, jobId: JOB, round: 0, chunk, rank, count, exp: 0 });
  b.set(payload, HDR);
  return frame(b);
}

describe.skipIf(!root)("XDP: int8 and int4 lanes (BPF_PROG_TEST_RUN)", () => {
  for (const bits of [8, 4] as const) {
    test(`${bits} bits: 64 members at ±${QMAX_BITS[bits]} sum exactly into 16-bit lanes; a 16-bit packet is bad_width`, async () => {
      const r = await ReflexObject.load({ chunks: 4 });
      try {
        const cfg: JobConfig = { jobId: JOB, roundBase: 0, memberMask: allMembers(64), members: 64, chunkElems: MAX_ELEMS, chunks: 4, batch: 1, ownedChunks: 4, flags: bits === 8 ? CFG_INT8 : CFG_INT4 };
        r.setConfig(cfg);
        const count = 2 * MAX_ELEMS - 3, Q = QMAX_BITS[bits];
        const want = new Int32Array(count);
        for (let rank = 0; rank < 64; rank++) {
          const x = new Float32Array(count);
          for (let j = 0; j < count; j++) x[j] = (j + (rank >> 5)) % 3 === 0 ? Q : -Q; // ranks 0-31 one way, 32-63 shifted
          for (let j = 0; j < count; j++) want[j] += x[j];
          const p = packOne(x, bits, 0);
          expect(r.testRun(narrowFrame(bits, 1, rank, p.payload, count)).action).toBe(1);
        }
        const c = r.counters();
        expect(c.summed).toBe(64);
        expect(c.completed).toBe(1);
        expect(c.mal_count + c.bad_width).toBe(0);
        const raw = new Uint16Array(r.rawSums(1).buffer, r.rawSums(1).byteOffset, 2 * MAX_ELEMS);
        expect(Array.from(decodeSumsNarrow(raw, count, 64, bits))).toEqual(Array.from(want));
        // the other widths' packets are dropped and counted, never summed
        const v16 = new Uint8Array(4);
        r.testRun(narrowFrame(bits, 2, 0, v16, 2, VERSION));
        r.testRun(narrowFrame(bits, 2, 0, new Uint8Array(payloadBytes(bits === 8 ? 4 : 8, 2)), 2, bits === 8 ? VERSION_INT4 : VERSION_INT8));
        // a payload that does not match the count at this width
        r.testRun(narrowFrame(bits, 2, 0, new Uint8Array(payloadBytes(bits, 16) + 1), 16));
        const d = r.counters();
        expect(d.bad_width - c.bad_width).toBe(2);
        expect(d.mal_count - c.mal_count).toBe(1);
        expect(d.summed).toBe(64);
      } finally {
        r.close();
      }
    }, 60_000);
  }
});

test("a width other than 16, 8 or 4 is refused by the library, naming the allowed ones", async () => {
  const { resolveOptions } = await import("../src/collective/options.ts");
  expect(() => resolveOptions({ iface: "x", peers: ["10.0.0.1"], rank: 0, bits: 5 as never })).toThrow("--bits 5 is not a width ainftp sums");
  try {
    resolveOptions({ iface: "x", peers: ["10.0.0.1"], rank: 0, bits: 12 as never });
  } catch (e) {
    expect((e as { hint?: string }).hint).toBe("use one of 16, 8, 4");
  }
  expect(resolveOptions({ iface: "x", peers: ["10.0.0.1"], rank: 0 }).bits).toBe(16);
  expect(resolveOptions({ iface: "x", peers: ["10.0.0.1"], rank: 0, bits: 4 }).bits).toBe(4);
});
