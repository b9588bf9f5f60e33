// The quantizer: f32 gradients to int16 at a shared power-of-two scale per
// chunk, the chunk owner's requantization of the XDP program's sums, and the
// way back to f32. The hot paths are C (native/quant.c), called once per
// round or chunk; every function also has a plain TypeScript reference
// (ref*) that the tests hold the C code to, bit for bit.
//
// Why one shared scale per chunk, agreed before sending. Integers from
// different workers can be summed only if they mean the same thing: every
// rank must quantize chunk c with the same exponent e_c. Each rank computes
// the smallest exponent at which its own chunk fits int16 (chunkExps), the
// ranks exchange these (one byte per chunk: 5.8 kB for 4M floats) and take
// the elementwise maximum (maxExps). At the maximum no rank saturates,
// because |x| <= 32767 * 2^e_r <= 32767 * 2^max(e). This is THC's habit of
// agreeing on the maximum before the data moves; SwitchML instead piggybacks
// the next block's exponent on the current packet, saving the exchange but
// tying the scale to the packet stream. Here every header carries its exp and
// the XDP program refuses a contribution whose exp differs from the slot's
// (mal_scale), so a rank that skipped the agreement cannot corrupt a sum.
//
// Why the int32 sums cannot overflow. The XDP program adds q + 32768, which
// is in [1, 65535] for |q| <= 32767, into 32-bit lanes, two lanes per 64-bit
// add: at most 64 workers give 64 * 65535 < 2^32, so a lane never carries into
// its neighbour and never wraps (ainftp_abi.h asserts this). The headroom
// (16 bits of lane for 16 bits of data, log2(64) = 6 needed) lives in the
// lanes, so the quantizer uses the whole int16 range. The true sum is at most
// 64 * 32767 < 2^21 in magnitude; the owner shifts it right by the smallest k
// (<= 6 for valid input) that brings it back into int16 and sends exp + k.
import { MAX_ELEMS, SIZEOF, payloadBytes, writeHeader, accPosition, type WireHeader } from "./abi.ts";
import { AinftpError } from "./errors.ts";
import {
  QUANT_EINVAL, cBitsChunkExps, cBitsDequantize, cBitsFinish, cBitsPack, cChunkExps, cDequantize, cFinishChunk, cPackChunks, cQuantize, cRht, cRhtFrom, cRhtFromExps,
  type NarrowBits,
} from "../native/quant.ts";

/** Exponents a sender may use: 2^e and 2^-e are exact f32. */
export const EXP_MIN = -126;
export const EXP_MAX = 127;
/** Exponents dequantize accepts (a sender's exp plus the owner's k). */
export const DEQ_EXP_MIN = -252;
export const DEQ_EXP_MAX = 224;
/** Largest quantized magnitude; symmetric so that a biased lane holds [1, 65535]. */
export const QMAX = 32767;
const BIAS = 32768;
const HDR = SIZEOF.ainftp_wire_hdr;
const F_SATURATED = 0x0002;

/** Chunks of a vector of n elements. */
export function chunkCount(n: number, chunkElems: number): number {
  if (!(chunkElems > 0)) throw new RangeError(`chunkElems must be > 0, got ${chunkElems}`);
  return Math.ceil(n / chunkElems);
}

/** Elements of chunk c (the last one may be partial). */
export function chunkLength(n: number, chunkElems: number, c: number): number {
  return Math.max(0, Math.min(chunkElems, n - c * chunkElems));
}

/** Bytes one packed chunk takes: header + int16 payload. */
export function packStride(chunkElems: number): number {
  return HDR + 2 * chunkElems;
}

/** A gradient holds NaN or ±Inf: it has no scale, and summing it would spread
 * the damage to every rank. The round must fail. */
export class NonFiniteGradientError extends AinftpError {
  readonly count: number;
  readonly index: number;
  readonly chunk: number;
  constructor(count: number, index: number, chunk: number, value: number) {
    super("quantize", `gradient holds ${count} non-finite value${count === 1 ? "" : "s"} (first: ${value} at index ${index}, chunk ${chunk})`, {
      errno: 0,
      hint: "the model diverged or overflowed: lower the learning rate or enable loss scaling; ainftp sums finite gradients only",
    });
    this.name = "NonFiniteGradientError";
    this.count = count;
    this.index = index;
    this.chunk = chunk;
  }
}

// ---- the native path -------------------------------------------------------

/** Writes each chunk's smallest exponent into exps; returns the number of
 * NaN/±Inf values (left out of the maxima). Does not throw on them. */
export function chunkExpsInto(x: Float32Array, chunkElems: number, exps: Int8Array): number {
  if (x.length === 0) return 0;
  if (exps.length < chunkCount(x.length, chunkElems)) throw new RangeError("exps shorter than the chunk count");
  return cChunkExps(x, chunkElems, exps);
}

/** The smallest exponent per chunk at which every value fits ±32767; an
 * all-zero chunk gets EXP_MIN. Throws NonFiniteGradientError on NaN/±Inf. */
export function chunkExps(x: Float32Array, chunkElems: number): Int8Array {
  const exps = new Int8Array(chunkCount(x.length, chunkElems));
  const bad = chunkExpsInto(x, chunkElems, exps);
  if (bad > 0) {
    const i = x.findIndex((v) => !Number.isFinite(v)); // error path only
    throw new NonFiniteGradientError(bad, i, Math.floor(i / chunkElems), x[i]);
  }
  return exps;
}

// ---- 8 and 4 bits (issue 14; native/bits.c) ----------------------------------

/** The relative L2 error (|result - exact float sum| / |exact sum|) a
 * round's result stays within at each width, for gradients whose members'
 * magnitudes are alike (synthetic, the simulator's): `--verify` checks it,
 * test/sim/bits.test.ts and test/bits.test.ts hold it. 16: the int16 bound
 * every figure before issue 14 used. 8 and 4: measured worst cases with
 * headroom (README "Bits"): each member's stochastic rounding and the
 * owner's requantization each cost at most one step of the chunk's scale. */
export const ERROR_BOUND = { 16: 1e-3, 8: 0.05, 4: 0.6 } as const;

/** The largest quantized magnitude at each width. */
export const QMAX_BITS = { 16: QMAX, 8: 127, 4: 7 } as const;

/** chunkExpsInto at a width: the smallest exponent at which every value of
 * a chunk fits ±QMAX_BITS[bits]. Returns the NaN/±Inf count. */
export function chunkExpsAt(x: Float32Array, chunkElems: number, exps: Int8Array, bits: 16 | NarrowBits): number {
  if (bits === 16) return chunkExpsInto(x, chunkElems, exps);
  if (x.length === 0) return 0;
  if (exps.length < chunkCount(x.length, chunkElems)) throw new RangeError("exps shorter than the chunk count");
  return cBitsChunkExps(x, chunkElems, exps, bits);
}

/** packChunks at a width. At 8 and 4 bits the payload is packed int8 / int4
 * (ainftp_abi.h), rounding is stochastic unless seed is 0, and `resid` (if
 * given) receives x - q * 2^e of every value packed: this rank's own error;
 * with `residSeed` (x being the RHT of seed residSeed) that error taken back
 * through the inverse RHT chunk by chunk, as rht(resid, chunkElems,
 * residSeed, true) would over the chunks packed. */
export function packChunksAt(x: Float32Array, o: PackOptions & { bits: 16 | NarrowBits; resid?: Float32Array | null; residSeed?: number }): number {
  if (o.bits === 16) return packChunks(x, o);
  const nchunks = o.nchunks ?? o.chunks.length;
  if (nchunks === 0) return 0;
  const stride = o.stride ?? HDR + payloadBytes(o.bits, o.chunkElems);
  const rc = cBitsPack(x, o.chunkElems, o.chunks, nchunks, o.exps, o.header, o.out, stride, o.seed ?? 0, o.bits, o.resid ?? null, o.residSeed ?? 0);
  if (rc === QUANT_EINVAL) throw new RangeError(`packChunksAt: ${o.bits}-bit chunks of ${o.chunkElems} values (at most ${2 * MAX_ELEMS}) in a stride of ${stride}, exponents in [${EXP_MIN}, ${EXP_MAX}]`);
  return rc;
}

/** The owner's step at 8 or 4 bits for one chunk: the true sums of an acc
 * entry (16-bit lanes) plus the owner's packed values, requantized to the
 * width with unbiased stochastic rounding from `key`, packed into out.
 * Returns k: the result's exp is the slot's exp + k. */
export function finishChunkBits(raw: Uint16Array | null, count: number, contributors: number, own: Uint8Array | null, bits: NarrowBits, key: number, out: Uint8Array): number {
  const k = cBitsFinish(raw, count, contributors, own, bits, key, out);
  if (k < 0) throw new RangeError(`finishChunkBits: count ${count} must be in [1, ${2 * MAX_ELEMS}] and contributors ${contributors} in [0, 64]`);
  return k;
}

/** out = q * 2^exp for `count` packed values at 8 or 4 bits. */
export function dequantizeBits(p: Uint8Array, count: number, exp: number, bits: NarrowBits, out: Float32Array): void {
  checkExp(exp, DEQ_EXP_MIN, DEQ_EXP_MAX);
  if (cBitsDequantize(p, count, exp, bits, out) < 0) throw new RangeError(`dequantizeBits: ${count} values at ${bits} bits refused`);
}

/** The randomized Hadamard transform in place, by chunks of chunkElems in
 * power-of-two blocks (at most 1024), signs from `seed`; `inverse` undoes it
 * (to one rounding per butterfly). Every member naming the same seed
 * transforms alike. */
export function rht(x: Float32Array, chunkElems: number, seed: number, inverse = false): void {
  cRht(x, chunkElems, seed, inverse);
}

/** rht of src into out (no copy first; not overlapping): the same values as
 * out.set(src) then rht(out, ...). */
export function rhtFrom(src: Float32Array, out: Float32Array, chunkElems: number, seed: number): void {
  cRhtFrom(src, out, chunkElems, seed);
}

/** rhtFrom, then chunkExpsAt(out, ...) at 8 or 4 bits, in one pass: each
 * chunk's exponent is taken while its transformed values are in registers,
 * so out is not read again. The same values and exponents as the two calls;
 * returns the NaN/±Inf count of out (NonFiniteGradientError is the
 * caller's, as after chunkExpsAt). Error feedback in the same pass: `add`,
 * if given, is added to src first (the transform of src + add, the sum as
 * a Float32Array would hold it), and `also`, if given (it may be `add`),
 * gets a copy of out. */
export function rhtFromExps(
  src: Float32Array, out: Float32Array, chunkElems: number, seed: number, exps: Int8Array, bits: 16 | NarrowBits,
  add: Float32Array | null = null, also: Float32Array | null = null,
): number {
  if (exps.length < chunkCount(src.length, chunkElems)) throw new RangeError("exps shorter than the chunk count");
  if (bits !== 8 && bits !== 4) throw new RangeError(`rhtFromExps: bits must be 8 or 4, not ${bits} (16-bit rounds use chunkExpsAt without the transform)`);
  if (add && add.length < src.length) throw new RangeError(`add has ${add.length} values, src ${src.length}`);
  if (also && also.length < src.length) throw new RangeError(`also has ${also.length} values, src ${src.length}`);
  const bad = cRhtFromExps(src, out, chunkElems, seed, exps, bits, add, also);
  if (bad === QUANT_EINVAL) throw new RangeError(`rhtFromExps: chunkElems must be > 0 (got ${chunkElems})`);
  return bad;
}

/** Elementwise maximum of every rank's exponents: the shared scale. */
export function maxExps(list: readonly Int8Array[]): Int8Array {
  if (list.length === 0) throw new RangeError("maxExps needs at least one rank's exponents");
  const n = list[0].length;
  const out = Int8Array.from(list[0]);
  for (const e of list) {
    if (e.length !== n) throw new RangeError(`exponent lists differ in length (${e.length} vs ${n})`);
    for (let c = 0; c < n; c++) if (e[c] > out[c]) out[c] = e[c];
  }
  return out;
}

function checkExp(exp: number, lo: number, hi: number): void {
  if (!Number.isInteger(exp) || exp < lo || exp > hi) throw new RangeError(`exponent ${exp} outside [${lo}, ${hi}]`);
}

/** q = round(x / 2^exp): to nearest, ties to even, when seed is 0;
 * stochastically (the stream of chunk 0 of that seed) otherwise. Returns the
 * number of values clipped to ±32767 (nearest: |x/2^exp| >= 32767.5;
 * stochastic: > 32767) plus NaNs, which are stored as 0. */
export function quantize(x: Float32Array, exp: number, q: Int16Array, seed = 0): number {
  checkExp(exp, EXP_MIN, EXP_MAX);
  if (x.length === 0) return 0;
  return cQuantize(x, exp, q, seed);
}

export interface PackOptions {
  chunkElems: number;
  /** Chunk indices to pack, in packet order. */
  chunks: Uint32Array;
  /** How many of `chunks` to pack (default all). */
  nchunks?: number;
  /** Shared exponents, one per chunk of x (maxExps). */
  exps: Int8Array;
  /** 32-byte wire header template (headerTemplate); chunk, count, exp and the
   * saturated flag are filled in per chunk. */
  header: Uint8Array;
  /** Packet i goes to out[i*stride ...]; 2-byte aligned. */
  out: Uint8Array;
  /** Bytes per packet (default packStride(chunkElems)); even. */
  stride?: number;
  /** 0: round to nearest even; otherwise stochastic rounding from (seed, chunk). */
  seed?: number;
}

/** A header template for packChunks (chunk, count and exp are filled in there). */
export function headerTemplate(h: Omit<WireHeader, "chunk" | "count" | "exp">): Uint8Array {
  const b = new Uint8Array(HDR);
  writeHeader(new DataView(b.buffer), 0, { ...h, chunk: 0, count: 0, exp: 0 });
  return b;
}

/** Quantizes chunks straight into packets: header + int16 payload at
 * out + i*stride. Returns the number of clipped values (0 when exps is the
 * maximum over ranks of chunkExps); each clipping chunk's header carries
 * F_SATURATED. */
export function packChunks(x: Float32Array, o: PackOptions): number {
  const nchunks = o.nchunks ?? o.chunks.length;
  const stride = o.stride ?? packStride(o.chunkElems);
  if (nchunks === 0) return 0;
  const total = chunkCount(x.length, o.chunkElems);
  if (o.exps.length < total) throw new RangeError(`exps has ${o.exps.length} entries for ${total} chunks`);
  if (o.out.length < nchunks * stride) throw new RangeError(`out holds ${o.out.length} bytes, ${nchunks} packets need ${nchunks * stride}`);
  const rc = cPackChunks(x, o.chunkElems, o.chunks, nchunks, o.exps, o.header, o.out, stride, o.seed ?? 0);
  if (rc === QUANT_EINVAL) throw new RangeError(packProblem(x.length, o, nchunks, stride, total));
  return rc;
}

/** Why native pack refused its arguments (error path only). */
function packProblem(n: number, o: PackOptions, nchunks: number, stride: number, total: number): string {
  if (o.chunkElems > 0xffff) return `chunkElems ${o.chunkElems} exceeds the header's 16-bit count`;
  if (stride & 1 || o.out.byteOffset & 1) return "out and stride must be 2-byte aligned";
  if (stride < HDR + 2 * Math.min(n, o.chunkElems)) return `stride ${stride} cannot hold a chunk of ${o.chunkElems} elements`;
  for (let i = 0; i < nchunks; i++) {
    const c = o.chunks[i];
    if (c >= total) return `chunk ${c} out of range (${total} chunks)`;
    if (o.exps[c] < EXP_MIN) return `chunk ${c}: exponent ${o.exps[c]} below ${EXP_MIN}`;
  }
  return "invalid arguments";
}

/** The owner's step for one chunk: the true sums of `count` elements from
 * raw (an acc entry, biased and lane-interleaved, holding `contributors`
 * contributions; null when there are none) plus the owner's own int16
 * contribution (or null), requantized into out. Returns k: the result's exp
 * is the slot's exp + k. Integer math: bit-identical on every host. */
export function finishChunk(
  raw: Uint32Array | null, count: number, contributors: number, own: Int16Array | null, out: Int16Array,
): number {
  const k = cFinishChunk(raw, count, contributors, own, out);
  if (k < 0) throw new RangeError(`finishChunk: count ${count} must be in [1, 1720] and contributors ${contributors} in [0, 64]`);
  return k;
}

/** out = q * 2^exp (exact wherever f32 can hold the value). */
export function dequantize(q: Int16Array, exp: number, out: Float32Array): void {
  checkExp(exp, DEQ_EXP_MIN, DEQ_EXP_MAX);
  if (q.length === 0) return;
  if (cDequantize(q, exp, out) < 0) throw new RangeError(`dequantize: exponent ${exp} refused`);
}

// ---- the reference: plain TypeScript, defined by the spec, not for speed ----

const GOLDEN = 0x9e3779b9;

/** lowbias32, as native/quant.c's mix32. */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** The uniform in [0, 1) that stochastic rounding draws for element j of a stream. */
export function streamUniform(seed: number, stream: number, j: number): number {
  const key = mix32((seed ^ mix32((stream + GOLDEN) >>> 0)) >>> 0);
  return (mix32((key + Math.imul(j, GOLDEN)) >>> 0) >>> 8) / 16777216;
}

function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d !== 0.5) return d < 0.5 ? f : f + 1;
  return f % 2 === 0 ? f : f + 1;
}

export function refChunkExps(x: Float32Array, chunkElems: number): { exps: Int8Array; nonFinite: number } {
  const exps = new Int8Array(chunkCount(x.length, chunkElems));
  let nonFinite = 0;
  for (let c = 0; c < exps.length; c++) {
    let m = 0;
    for (let j = c * chunkElems; j < Math.min(x.length, (c + 1) * chunkElems); j++) {
      if (!Number.isFinite(x[j])) nonFinite++;
      else m = Math.max(m, Math.abs(x[j]));
    }
    let e = EXP_MIN;
    while (e < EXP_MAX && m > QMAX * 2 ** e) e++;
    exps[c] = e;
  }
  return { exps, nonFinite };
}

/** Reference of quantize; `stream` is the chunk index in packChunks.
 * Nearest: round half to even, then clip what lands beyond ±32767.
 * Stochastic: clip v to ±32767 first (counted), then floor(v) + (u < frac(v)). */
export function refQuantize(x: Float32Array, exp: number, q: Int16Array, seed = 0, stream = 0): number {
  let bad = 0;
  for (let j = 0; j < x.length; j++) {
    let v = Math.fround(x[j] * 2 ** -exp);
    if (Number.isNaN(v)) {
      q[j] = 0;
      bad++;
      continue;
    }
    let r: number;
    if (seed === 0) {
      r = roundHalfEven(v);
      if (Math.abs(r) > QMAX) bad++;
      r = Math.min(QMAX, Math.max(-QMAX, r));
    } else {
      if (Math.abs(v) > QMAX) bad++;
      v = Math.min(QMAX, Math.max(-QMAX, v));
      const fl = Math.floor(v);
      const frac = Math.fround(v - fl);
      r = fl + (streamUniform(seed >>> 0, stream, j) < frac ? 1 : 0);
    }
    q[j] = r;
  }
  return bad;
}

export function refPackChunks(x: Float32Array, o: PackOptions): number {
  const nchunks = o.nchunks ?? o.chunks.length;
  const stride = o.stride ?? packStride(o.chunkElems);
  const view = new DataView(o.out.buffer, o.out.byteOffset, o.out.byteLength);
  let bad = 0;
  for (let i = 0; i < nchunks; i++) {
    const c = o.chunks[i];
    const count = chunkLength(x.length, o.chunkElems, c);
    const q = new Int16Array(count);
    const sat = refQuantize(x.subarray(c * o.chunkElems, c * o.chunkElems + count), o.exps[c], q, o.seed ?? 0, c);
    const off = i * stride;
    o.out.set(o.header.subarray(0, HDR), off);
    const flags = view.getUint16(off + 6, true);
    view.setUint16(off + 6, sat ? flags | F_SATURATED : flags & ~F_SATURATED, true);
    view.setUint32(off + 16, c, true);
    view.setUint16(off + 22, count, true);
    view.setInt16(off + 24, o.exps[c], true);
    for (let j = 0; j < count; j++) view.setInt16(off + HDR + 2 * j, q[j], true);
    bad += sat;
  }
  return bad;
}

export function refFinishChunk(
  raw: Uint32Array | null, count: number, contributors: number, own: Int16Array | null, out: Int16Array,
): number {
  const s = new Array<number>(count);
  for (let j = 0; j < count; j++) {
    const summed = contributors ? (raw![accPosition(j)] - BIAS * contributors) | 0 : 0;
    s[j] = (summed + (own ? own[j] : 0)) | 0;
  }
  // The smallest k at which every sum, rounded half away from zero, fits.
  const rounded = (v: number, k: number) => Math.sign(v) * Math.floor(Math.abs(v) / 2 ** k + 0.5);
  let k = 0;
  while (s.some((v) => Math.abs(rounded(v, k)) > QMAX)) k++;
  for (let j = 0; j < count; j++) out[j] = rounded(s[j], k);
  return k;
}

export function refDequantize(q: Int16Array, exp: number, out: Float32Array): void {
  for (let j = 0; j < q.length; j++) out[j] = Math.fround(q[j] * 2 ** exp);
}
