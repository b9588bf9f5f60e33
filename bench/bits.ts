#!/usr/bin/env bun
// Issue 14's measurements, in one run (README "Bits"):
//  1. accuracy: the relative L2 error of a 4-rank sum at 8 and 4 bits, with
//     and without the randomized Hadamard transform, for four kinds of
//     gradients (the pipeline of the collective, the XDP lanes emulated);
//  2. userspace cost per value at 4M values: the transform (forward, fused
//     with the exponents, inverse), exponents, packing (with and without the
//     residual), dequantizing, the owner's step; with --baseline, against
//     another build;
//  3. the XDP program's time per contribution packet at each width
//     (BPF_PROG_TEST_RUN, summed every run; root only).
import { ACC_BIAS4, ACC_BIAS8, CFG_INT4, CFG_INT8, MAX_ELEMS, PKT_CONTRIB, VERSION, VERSION_INT4, VERSION_INT8, allMembers, payloadBytes, writeHeader } from "../src/abi.ts";
import { frame } from "../src/packet.ts";
import { chunkExpsAt, dequantizeBits, finishChunkBits, headerTemplate, packChunksAt, rht } from "../src/quantize.ts";
import { mulberry32 } from "../src/random.ts";
import { ReflexObject } from "../src/reflex.ts";
import { existsSync } from "node:fs";
import { openBitsCalls, rhtIsa } from "../native/quant.ts";

const N = 4, E = 3440, C = 32, n = E * C;
const u8 = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

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

// Options: --baseline PATH/libainftp.so times another build of the shim (an
// older tree's) against this one in the same process, kernel by kernel,
// interleaved, and checks that both give the same bits; --kernels runs
// section 2 only.
const argv = process.argv.slice(2);
const baselineAt = argv.indexOf("--baseline");
const baselinePath = baselineAt >= 0 ? argv[baselineAt + 1] : undefined;
if (baselineAt >= 0 && (!baselinePath || !existsSync(baselinePath))) {
  throw new Error(`--baseline needs the path of a built libainftp.so (got ${baselinePath ?? "nothing"}): build one from an older tree with 'make native/build/libainftp.so' there`);
}
const kernelsOnly = argv.includes("--kernels");

if (!kernelsOnly) {
  console.log(`1. relative L2 error of a ${N}-rank sum, ${C} chunks of ${E} values, mean of 3 trials (without → with the transform)`);
  for (const kind of ["Gaussian", "Student-t(3)", "log-normal scales", "sparse spikes"]) {
    const cells = ([8, 4] as const).map((bits) => {
      const m = (t: boolean) => ([0, 1, 2].map((k) => roundError(kind, bits, t, k)).reduce((a, b) => a + b, 0) / 3).toFixed(3);
      return `${bits} bits ${m(false)} → ${m(true)}`;
    });
    console.log(`  ${kind.padEnd(18)} ${cells.join("   ")}`);
  }
}

console.log(`2. userspace per value at 4M values (16 MiB of float32), chunks of ${2 * MAX_ELEMS}, median (and min) of 15, kernels: ${rhtIsa()}` +
  (baselinePath ? `; this tree vs ${baselinePath}, interleaved` : ""));
{
  const m = 4 << 20, ce = 2 * MAX_ELEMS, nch = Math.ceil(m / ce), x = new Float32Array(m);
  for (let i = 0; i < m; i++) x[i] = Math.sin(i) * 3;
  const chunks = Uint32Array.from({ length: nch }, (_, i) => i);
  const hdr = headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 0, rank: 0 });
  // the owner's step: 3 contributions in the lanes (sums of values within ±Q) and its own packed values, the same for every build
  const fin = ([8, 4] as const).map((bits) => {
    const r = mulberry32(bits), Q = bits === 8 ? 127 : 7, bias = bits === 8 ? ACC_BIAS8 : ACC_BIAS4;
    const raw = Uint16Array.from({ length: nch * ce }, () => 3 * bias + Math.floor(r() * (6 * Q + 1)) - 3 * Q);
    const own = Uint8Array.from({ length: nch * payloadBytes(bits, ce) }, () => Math.floor(r() * 256));
    return { bits, raw, own };
  });
  const builds = [{ name: "this tree", k: openBitsCalls() }, ...(baselinePath ? [{ name: "baseline", k: openBitsCalls(baselinePath) }] : [])].map((b) => ({
    ...b, y: new Float32Array(m), resid: new Float32Array(m), exps: new Int8Array(nch), deq: new Float32Array(ce),
    out: { 8: new Uint8Array((32 + payloadBytes(8, ce)) * nch), 4: new Uint8Array((32 + payloadBytes(4, ce)) * nch) },
    fin: { 8: new Uint8Array(payloadBytes(8, ce) * nch), 4: new Uint8Array(payloadBytes(4, ce) * nch) },
  }));
  type B = (typeof builds)[number];
  const stride = (bits: 8 | 4) => 32 + payloadBytes(bits, ce);
  const ops: [string, (b: B) => void, (b: B) => Uint8Array[]][] = [
    ["rht forward (rhtFrom)", (b) => b.k.rhtFrom(x, b.y, ce, 7), (b) => [u8(b.y)]],
    ["exponents, 8 bits", (b) => b.k.exps(b.y, ce, b.exps, 8), (b) => [u8(b.exps)]],
    ["rht forward + exponents (a build without the fused call: the two)", (b) => (b.k.rhtFromExps ? b.k.rhtFromExps(x, b.y, ce, 7, b.exps, 8) : (b.k.rhtFrom(x, b.y, ce, 7), b.k.exps(b.y, ce, b.exps, 8))), (b) => [u8(b.y), u8(b.exps)]],
    ...([8, 4] as const).flatMap((bits) => [false, true].map((ef): [string, (b: B) => void, (b: B) => Uint8Array[]] => [
      `pack ${bits} bits${ef ? " + residual" : ""}`,
      (b) => b.k.pack(b.y, ce, chunks, b.exps, hdr, b.out[bits], stride(bits), 5, bits, ef ? b.resid : null),
      (b) => [b.out[bits], ...(ef ? [u8(b.resid)] : [])],
    ])),
    // error feedback with the transform: the residual back in the gradient's domain
    ...([8, 4] as const).map((bits): [string, (b: B) => void, (b: B) => Uint8Array[]] => [
      `pack ${bits} bits + residual through the inverse (a build without the fused call: pack, then the inverse)`,
      (b) => (b.k.packEf ? b.k.packEf(b.y, ce, chunks, b.exps, hdr, b.out[bits], stride(bits), 5, bits, b.resid, 9)
        : (b.k.pack(b.y, ce, chunks, b.exps, hdr, b.out[bits], stride(bits), 5, bits, b.resid), b.k.rhtInverse(b.resid, ce, 9))),
      (b) => [b.out[bits], u8(b.resid)],
    ]),
    ...([8, 4] as const).map((bits): [string, (b: B) => void, (b: B) => Uint8Array[]] => [`dequantize ${bits} bits`, (b) => {
      for (let c = 0; c < nch; c++) b.k.dequantize(b.out[bits].subarray(c * stride(bits) + 32), Math.min(ce, m - c * ce), b.exps[c], bits, b.deq);
    }, (b) => [u8(b.deq)]]),
    // the owner's requantization (ainftp_bits_finish), chunk by chunk
    ...fin.map(({ bits, raw, own }): [string, (b: B) => void, (b: B) => Uint8Array[]] => [`owner's step ${bits} bits (3 contributions + its own)`, (b) => {
      const pb = payloadBytes(bits, ce);
      for (let c = 0; c < nch; c++) {
        const count = Math.min(ce, m - c * ce);
        b.k.finish(raw.subarray(c * ce), count, 3, own.subarray(c * pb), bits, 999 + c, b.fin[bits].subarray(c * pb));
      }
    }, (b) => [b.fin[bits]]]),
    ["rht inverse", (b) => b.k.rhtInverse(b.y, ce, 7), (b) => [u8(b.y)]],
  ];
  const rows: string[][] = [["", ...builds.map((b) => `${b.name} ns/value (min)`), ...(builds.length > 1 ? ["ratio of medians", "same bits"] : [])]];
  for (const [name, run, result] of ops) {
    const t = builds.map(() => [] as number[]);
    for (let i = 0; i < 16; i++)
      builds.forEach((b, j) => {
        const a = performance.now();
        run(b);
        if (i > 0) t[j].push(((performance.now() - a) * 1e6) / m); // the first is a warm-up
      });
    const sorted = t.map((v) => v.sort((a, b) => a - b)), med = sorted.map((v) => v[7]);
    // the min says what the kernel costs on a machine others load; the median what a round sees
    const same = builds.length > 1 && result(builds[0]).every((r, i) => Buffer.from(r).equals(Buffer.from(result(builds[1])[i])));
    rows.push([name, ...sorted.map((v) => `${v[7].toFixed(3)} (${v[0].toFixed(3)})`), ...(builds.length > 1 ? [(med[0] / med[1]).toFixed(2), same ? "yes" : "NO"] : [])]);
  }
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) console.log("  " + r.map((v, c) => (c ? v.padStart(w[c]) : v.padEnd(w[c]))).join("  "));
}

if (kernelsOnly) process.exit(0);
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
