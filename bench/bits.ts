#!/usr/bin/env bun
// Issue 14's measurements, in one run (README "Bits"):
//  1. accuracy: the relative L2 error of a 4-rank sum at 8 and 4 bits, with
//     and without the randomized Hadamard transform, for four kinds of
//     gradients (the pipeline of the collective, the XDP lanes emulated);
//  2. userspace cost per round of 4M values: exponents, packing, dequantizing,
//     the transform;
//  3. the XDP program's time per contribution packet at each width
//     (BPF_PROG_TEST_RUN, summed every run; root only).
import { ACC_BIAS4, ACC_BIAS8, CFG_INT4, CFG_INT8, MAX_ELEMS, PKT_CONTRIB, VERSION, VERSION_INT4, VERSION_INT8, allMembers, payloadBytes, writeHeader } from "../src/abi.ts";
import { frame } from "../src/packet.ts";
import { chunkExpsAt, dequantizeBits, finishChunkBits, headerTemplate, packChunksAt, rht } from "../src/quantize.ts";
import { mulberry32 } from "../src/random.ts";
import { ReflexObject } from "../src/reflex.ts";
import { rhtIsa } from "../native/quant.ts";

const N = 4, E = 3440, C = 32, n = E * C;

function gradient(kind: string, seed: number): Float32Array {
  const r = mulberry32(seed), x = new Float32Array(n);
  const g = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  for (let i = 0; i < n; i++) {
    if (kind === "Gaussian") x[i] = g();
    else if (kind === "Student-t(3)") {
      const z = g();
      let s = 0;
      for (let k = 0; k < 3; k++) s += g() ** 2;
      x[i] = z / Math.sqrt(s / 3);
    } else if (kind === "log-normal scales") x[i] = g() * Math.exp(2 * g());
    else x[i] = r() < 0.01 ? g() * 30 : g() * 0.1; // sparse spikes
  }
  return x;
}

/** One round's relative L2 error: ranks quantize (after the transform), rank 0 owns every chunk. */
function roundError(kind: string, bits: 8 | 4, transform: boolean, trial: number): number {
  const xs = Array.from({ length: N }, (_, k) => gradient(kind, trial * 100 + k));
  const seed = 1234 + trial;
  const ys = xs.map((x) => {
    const y = Float32Array.from(x);
    if (transform) rht(y, E, seed);
    return y;
  });
  const exps = new Int8Array(C).fill(-128);
  for (const y of ys) {
    const e = new Int8Array(C);
    chunkExpsAt(y, E, e, bits);
    for (let c = 0; c < C; c++) exps[c] = Math.max(exps[c], e[c]);
  }
  const stride = 32 + payloadBytes(bits, E);
  const chunks = Uint32Array.from({ length: C }, (_, i) => i);
  const packed = ys.map((y, k) => {
    const out = new Uint8Array(stride * C);
    packChunksAt(y, { chunkElems: E, chunks, exps, header: headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 0, rank: k }), out, stride, seed: 77 + 13 * k + trial, bits });
    return out;
  });
  const out = new Float32Array(n), q = new Float32Array(E), res = new Uint8Array(payloadBytes(bits, E));
  for (let c = 0; c < C; c++) {
    const raw = new Uint16Array(E); // the program's 16-bit lanes
    for (let k = 1; k < N; k++) {
      dequantizeBits(packed[k].subarray(c * stride + 32), E, 0, bits, q);
      for (let j = 0; j < E; j++) raw[(j & ~7) + 4 * (j & 1) + ((j & 7) >> 1)] += q[j] + (bits === 8 ? ACC_BIAS8 : ACC_BIAS4);
    }
    const shift = finishChunkBits(raw, E, N - 1, packed[0].subarray(c * stride + 32), bits, 999 + c, res);
    dequantizeBits(res, E, exps[c] + shift, bits, out.subarray(c * E, (c + 1) * E));
  }
  if (transform) rht(out, E, seed, true);
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (const x of xs) s += x[i];
    num += (out[i] - s) ** 2;
    den += s * s;
  }
  return Math.sqrt(num / den);
}

console.log(`1. relative L2 error of a ${N}-rank sum, ${C} chunks of ${E} values, mean of 3 trials (without → with the transform)`);
for (const kind of ["Gaussian", "Student-t(3)", "log-normal scales", "sparse spikes"]) {
  const cells = ([8, 4] as const).map((bits) => {
    const m = (t: boolean) => ([0, 1, 2].map((k) => roundError(kind, bits, t, k)).reduce((a, b) => a + b, 0) / 3).toFixed(3);
    return `${bits} bits ${m(false)} → ${m(true)}`;
  });
  console.log(`  ${kind.padEnd(18)} ${cells.join("   ")}`);
}

console.log(`2. userspace per 4M values (16 MiB of float32), median of 7, kernels: ${rhtIsa()}`);
{
  const m = 4 << 20, x = new Float32Array(m);
  for (let i = 0; i < m; i++) x[i] = Math.sin(i) * 3;
  const time = (f: () => void) => {
    f();
    const t: number[] = [];
    for (let i = 0; i < 7; i++) {
      const a = performance.now();
      f();
      t.push(performance.now() - a);
    }
    return t.sort((a, b) => a - b)[3].toFixed(2);
  };
  for (const bits of [8, 4] as const) {
    const ce = 2 * MAX_ELEMS, nch = Math.ceil(m / ce), exps = new Int8Array(nch), chunks = Uint32Array.from({ length: nch }, (_, i) => i);
    const stride = 32 + payloadBytes(bits, ce), out = new Uint8Array(stride * nch), o = new Float32Array(ce);
    const hdr = headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 0, rank: 0 });
    console.log(`  ${bits} bits: exponents ${time(() => chunkExpsAt(x, ce, exps, bits))} ms, packing ${time(() => packChunksAt(x, { chunkElems: ce, chunks, exps, header: hdr, out, stride, seed: 5, bits }))} ms, ` +
      `dequantizing ${time(() => { for (let c = 0; c < nch; c++) dequantizeBits(out.subarray(c * stride + 32), ce, exps[c], bits, o); })} ms`);
  }
  const y = Float32Array.from(x);
  console.log(`  transform ${time(() => rht(y, 2 * MAX_ELEMS, 7))} ms, inverse ${time(() => rht(y, 2 * MAX_ELEMS, 7, true))} ms`);
}

if (process.getuid?.() !== 0) console.log("3. XDP: skipped (BPF_PROG_TEST_RUN needs root)");
else {
  console.log("3. XDP per contribution packet (BPF_PROG_TEST_RUN, summed every run: bench_no_dedupe), median of 7 × 100k");
  const r = await ReflexObject.load({ chunks: 4, benchNoDedupe: true });
  try {
    for (const bits of [16, 8, 4] as const) {
      r.setConfig({ jobId: 1, roundBase: 0, memberMask: allMembers(64), members: 64, chunkElems: MAX_ELEMS, chunks: 4, batch: 1000, ownedChunks: 4, flags: bits === 8 ? CFG_INT8 : bits === 4 ? CFG_INT4 : 0 });
      const count = bits === 16 ? MAX_ELEMS : 2 * MAX_ELEMS, pb = payloadBytes(bits, count);
      const b = new Uint8Array(32 + pb);
      writeHeader(new DataView(b.buffer), 0, { type: PKT_CONTRIB, version: bits === 8 ? VERSION_INT8 : bits === 4 ? VERSION_INT4 : VERSION, jobId: 1, round: 0, chunk: bits === 16 ? 1 : bits === 8 ? 2 : 3, rank: 0, count, exp: 0 });
      for (let i = 0; i < pb; i++) b[32 + i] = (i * 37) & 0xff;
      const f = frame(b);
      const before = r.counters().summed;
      const ns: number[] = [];
      for (let k = 0; k < 7; k++) ns.push(r.testRun(f, 100_000).ns);
      if (r.counters().summed - before !== 700_000) throw new Error(`${bits} bits: the packets were not all summed`);
      const med = ns.sort((a, b) => a - b)[3];
      console.log(`  ${String(bits).padStart(2)} bits: ${count} values in a ${f.length}-byte frame: ${med} ns per packet, ${(med / count).toFixed(3)} ns per value`);
    }
  } finally {
    r.close();
  }
}
