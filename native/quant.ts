// The quantizer kernels (native/quant.c) through bun:ffi. Each call covers a
// whole array or chunk list; typed arrays go to C as pointers (their
// byteOffset included), with no copy and no per-element JS. These wrappers
// only size-check what C would otherwise read or write out of bounds;
// src/quantize.ts is the API with error messages.
import { dlopen, FFIType as T } from "bun:ffi";
import { openShimTable } from "./shim.ts";

const BITS_SYMBOLS = {
  ainftp_bits_chunk_exps: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_bits_pack: {
    args: [T.ptr, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.ptr, T.u32, T.u32, T.u32, T.ptr],
    returns: T.u32,
  },
  ainftp_bits_dequantize: { args: [T.ptr, T.u32, T.i32, T.u32, T.ptr], returns: T.i32 },
  ainftp_rht: { args: [T.ptr, T.u32, T.u32, T.u32, T.u32], returns: T.i32 },
  ainftp_rht_from: { args: [T.ptr, T.ptr, T.u32, T.u32, T.u32], returns: T.i32 },
  ainftp_bits_finish: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32, T.u32, T.ptr, T.ptr], returns: T.i32 },
} as const;
const RHT_FROM_EXPS = { ainftp_rht_from_exps: { args: [T.ptr, T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 } } as const;
const PACK_EF = {
  ainftp_bits_pack_ef: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
} as const;

const quant = openShimTable({
  ainftp_chunk_exps: { args: [T.ptr, T.u32, T.u32, T.ptr], returns: T.u32 },
  ainftp_pack_chunks: {
    args: [T.ptr, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.ptr, T.u32, T.u32],
    returns: T.u32,
  },
  ainftp_quantize: { args: [T.ptr, T.u32, T.i32, T.ptr, T.u32], returns: T.u32 },
  ainftp_exps_pack: {
    args: [T.ptr, T.u32, T.u32, T.ptr, T.ptr, T.ptr, T.ptr, T.ptr, T.ptr, T.u32, T.u32, T.ptr],
    returns: T.u32,
  },
  ainftp_finish_chunk: { args: [T.ptr, T.u32, T.u32, T.ptr, T.ptr], returns: T.i32 },
  ainftp_finish_chunk_to: { args: [T.ptr, T.u32, T.u32, T.ptr, T.ptr, T.ptr], returns: T.i32 },
  ainftp_dequantize: { args: [T.ptr, T.u32, T.i32, T.ptr], returns: T.i32 },
  ainftp_dequantize_stream: { args: [T.ptr, T.u32, T.i32, T.ptr], returns: T.i32 },
  ainftp_stream_fence: { args: [], returns: T.void },
  ainftp_copy_stream: { args: [T.ptr, T.ptr, T.u32], returns: T.void },
  ainftp_quant_isa_mask: { args: [], returns: T.u32 },
  ainftp_quant_set_isa: { args: [T.i32], returns: T.i32 },
  ainftp_quant_isa: { args: [], returns: T.i32 },
  ...BITS_SYMBOLS,
  ...RHT_FROM_EXPS,
  ainftp_rht_ef_exps: { args: [T.ptr, T.ptr, T.ptr, T.ptr, T.u32, T.u32, T.u32, T.ptr, T.u32], returns: T.u32 },
  ainftp_rht_chunk: { args: [T.ptr, T.u32, T.u32, T.u32, T.u32], returns: T.i32 },
  ainftp_bits_rht_exps_pack: {
    args: [T.ptr, T.ptr, T.ptr, T.u32, T.u32, T.u32, T.u32, T.ptr, T.ptr, T.ptr, T.ptr, T.ptr, T.ptr, T.u32, T.u32, T.ptr, T.u32, T.ptr],
    returns: T.u32,
  },
  ...PACK_EF,
  ainftp_bits_payload: { args: [T.u32, T.u32], returns: T.u32 },
  ainftp_rht_isa: { args: [], returns: T.i32 },
} as const);

/** Builds of the kernels, in AINFTP_ISA_* order: the same bits at different speeds. */
export const QUANT_ISAS = ["generic", "avx2", "avx512"] as const;
export type QuantIsa = (typeof QUANT_ISAS)[number];

// The shim picked its build when it was loaded: the best this CPU runs, or
// the one AINFTP_QUANT_ISA names if the CPU runs it. A name that is no build
// at all is a typo worth stopping for.
const wanted = process.env.AINFTP_QUANT_ISA;
if (wanted && !(QUANT_ISAS as readonly string[]).includes(wanted)) {
  throw new RangeError(`AINFTP_QUANT_ISA=${wanted} names no build of the quantizer: ` +
    `use one of ${QUANT_ISAS.join(", ")}, or unset it for the best this CPU runs`);
}

/** The builds this CPU runs (generic always). */
export function quantIsasSupported(): QuantIsa[] {
  const mask = quant.ainftp_quant_isa_mask();
  return QUANT_ISAS.filter((_, i) => mask & (1 << i));
}

/** The build the kernels use now. */
export function quantIsa(): QuantIsa {
  return QUANT_ISAS[quant.ainftp_quant_isa()];
}

/** Makes every kernel use one build ("best": the fastest this CPU runs);
 * returns the build now in use. Process-wide, for tests and benchmarks. */
export function setQuantIsa(isa: QuantIsa | "best"): QuantIsa {
  const rc = quant.ainftp_quant_set_isa(isa === "best" ? -1 : QUANT_ISAS.indexOf(isa));
  if (rc < 0) {
    throw new RangeError(`native quantizer: this CPU cannot run the ${isa} build ` +
      `(it runs ${quantIsasSupported().join(", ")}); pick one of those or "best"`);
  }
  return QUANT_ISAS[rc];
}

/** What ainftp_chunk_exps / ainftp_pack_chunks / ainftp_quantize return for invalid arguments. */
export const QUANT_EINVAL = 0xffffffff;

function need(ok: boolean, what: string): void {
  if (!ok) throw new RangeError(`native quantizer: ${what}`);
}

/** exps[c] for every chunk of x; returns the count of NaN/±Inf values (left out of the maxima). */
export function cChunkExps(x: Float32Array, chunkElems: number, exps: Int8Array): number {
  need(chunkElems > 0, "chunkElems must be > 0");
  need(exps.length >= Math.ceil(x.length / chunkElems), "exps shorter than the chunk count");
  return quant.ainftp_chunk_exps(x, x.length, chunkElems, exps);
}

/** Header + int16 payload of chunks[0..nchunks) at out + i*stride; returns the saturated
 * count or QUANT_EINVAL. */
export function cPackChunks(
  x: Float32Array, chunkElems: number, chunks: Uint32Array, nchunks: number, exps: Int8Array,
  header: Uint8Array, out: Uint8Array, stride: number, seed: number,
): number {
  need(chunkElems > 0, "chunkElems must be > 0");
  need(nchunks <= chunks.length, "nchunks exceeds the chunk list");
  need(exps.length >= Math.ceil(x.length / chunkElems), "exps shorter than the chunk count");
  need(header.length >= 32, "header template must be 32 bytes");
  need(out.length >= nchunks * stride, "out shorter than nchunks * stride");
  return quant.ainftp_pack_chunks(x, x.length, chunkElems, chunks, nchunks, exps, header, out, stride, seed >>> 0);
}

/** cChunkExps and cPackChunks in one pass: exps[c] of each chunk, then its
 * packet at out + offsets[c] (none for NO_OFFSET) at scale[c] =
 * max(pred[c], exps[c]) (exps[c] without pred), written too. Returns the
 * NaN/±Inf count or QUANT_EINVAL; adds the values clipped to saturated[0]. */
export function cExpsPack(
  x: Float32Array, chunkElems: number, pred: Int8Array | null, exps: Int8Array, scale: Int8Array, offsets: Uint32Array,
  header: Uint8Array, out: Uint8Array, seed: number, saturated: Uint32Array,
): number {
  const chunks = Math.ceil(x.length / chunkElems);
  need(chunkElems > 0, "chunkElems must be > 0");
  need(exps.length >= chunks && scale.length >= chunks && offsets.length >= chunks, "exps, scale or offsets shorter than the chunk count");
  need(!pred || pred.length >= chunks, "pred shorter than the chunk count");
  need(header.length >= 32, "header template must be 32 bytes");
  need(saturated.length >= 1, "saturated holds one count");
  if (!x.length) return 0;
  return quant.ainftp_exps_pack(x, x.length, chunkElems, pred, exps, scale, offsets, header, out, out.length, seed >>> 0, saturated);
}

/** ainftp_exps_pack's offset for a chunk that gets no packet. */
export const NO_OFFSET = 0xffffffff;

/** q = round(x / 2^exp); returns the saturated count or QUANT_EINVAL. */
export function cQuantize(x: Float32Array, exp: number, q: Int16Array, seed: number): number {
  need(q.length >= x.length, "q shorter than x");
  return quant.ainftp_quantize(x, x.length, exp, q, seed >>> 0);
}

/** The owner's requantization of one acc entry into out (and into `also`,
 * if given, in the same pass); returns k (>= 0) or -EINVAL. */
export function cFinishChunk(
  raw: Uint32Array | null, count: number, contributors: number, own: Int16Array | null, out: Int16Array,
  also: Int16Array | null = null,
): number {
  need(contributors === 0 || (raw !== null && raw.length >= ((count + 3) & ~3)),
    "raw must hold count rounded up to 4 lanes");
  need(own === null || own.length >= count, "own shorter than count");
  need(out.length >= count, "out shorter than count");
  need(also === null || also.length >= count, "also shorter than count");
  if (also) return quant.ainftp_finish_chunk_to(raw, count, contributors, own, out, also);
  return quant.ainftp_finish_chunk(raw, count, contributors, own, out);
}

/** out = q * 2^exp; returns 0 or -EINVAL. */
export function cDequantize(q: Int16Array, exp: number, out: Float32Array): number {
  need(out.length >= q.length, "out shorter than q");
  return quant.ainftp_dequantize(q, q.length, exp, out);
}

/** dst[0..src.length) = src with streaming stores (the 8- and 4-bit gather's last step), fenced. */
export function cCopyStream(dst: Float32Array, src: Float32Array): void {
  need(dst.length >= src.length, "dst shorter than src");
  quant.ainftp_copy_stream(dst, src, src.length);
  quant.ainftp_stream_fence();
}

/** cDequantize with streaming stores (the same values), fenced before it returns. */
export function cDequantizeStream(q: Int16Array, exp: number, out: Float32Array): number {
  need(out.length >= q.length, "out shorter than q");
  const rc = quant.ainftp_dequantize_stream(q, q.length, exp, out);
  quant.ainftp_stream_fence();
  return rc;
}

// ---- 8 and 4 bits (native/bits.c, issue 14) --------------------------------------

/** The narrow widths native/bits.c packs. */
export type NarrowBits = 8 | 4;

/** exps[c] for every chunk of x at 8 or 4 bits; returns the NaN/±Inf count. */
export function cBitsChunkExps(x: Float32Array, chunkElems: number, exps: Int8Array, bits: NarrowBits): number {
  need(chunkElems > 0, "chunkElems must be > 0");
  need(exps.length >= Math.ceil(x.length / chunkElems), "exps shorter than the chunk count");
  return quant.ainftp_bits_chunk_exps(x, x.length, chunkElems, exps, bits);
}

/** Header + packed payload of chunks[0..nchunks) at out + i*stride, at 8 or
 * 4 bits; resid (if given, as long as x) gets x - q * 2^e of every value
 * packed. Returns the saturated count or QUANT_EINVAL. */
export function cBitsPack(
  x: Float32Array, chunkElems: number, chunks: Uint32Array, nchunks: number, exps: Int8Array,
  header: Uint8Array, out: Uint8Array, stride: number, seed: number, bits: NarrowBits, resid: Float32Array | null, residSeed = 0,
): number {
  need(chunkElems > 0, "chunkElems must be > 0");
  need(nchunks <= chunks.length, "nchunks exceeds the chunk list");
  need(exps.length >= Math.ceil(x.length / chunkElems), "exps shorter than the chunk count");
  need(header.length >= 32, "header template must be 32 bytes");
  need(out.length >= nchunks * stride, "out shorter than nchunks * stride");
  need(resid === null || resid.length >= x.length, "resid shorter than x");
  // (residSeed 0: as ainftp_bits_pack, which older builds have too: bench/bits.ts --baseline)
  return quant.ainftp_bits_pack_ef(x, x.length, chunkElems, chunks, nchunks, exps, header, out, stride, seed >>> 0, bits, resid, residSeed >>> 0);
}

/** The owner's step at 8 or 4 bits over a 16-bit-lane acc entry; returns k or -EINVAL. */
export function cBitsFinish(
  raw: Uint16Array | null, count: number, contributors: number, own: Uint8Array | null, bits: NarrowBits, key: number,
  out: Uint8Array,
): number {
  need(contributors === 0 || (raw !== null && raw.length >= ((count + 7) & ~7)), "raw must hold count rounded up to 8 lanes");
  need(own === null || own.length >= cBitsPayload(bits, count), "own shorter than the payload");
  need(out.length >= cBitsPayload(bits, count), "out shorter than the payload");
  return quant.ainftp_bits_finish(raw, count, contributors, own, bits, key >>> 0, out, null);
}

/** out = q * 2^exp for `count` packed values; returns 0 or -EINVAL. */
export function cBitsDequantize(p: Uint8Array, count: number, exp: number, bits: NarrowBits, out: Float32Array): number {
  need(p.length >= cBitsPayload(bits, count), "payload shorter than count");
  need(out.length >= count, "out shorter than count");
  return quant.ainftp_bits_dequantize(p, count, exp, bits, out);
}

/** Payload bytes of `count` values at `bits`. */
export function cBitsPayload(bits: number, count: number): number {
  return quant.ainftp_bits_payload(bits, count);
}

/** The randomized Hadamard transform of x in place (or its inverse), by
 * chunks of chunkElems in power-of-two blocks, signs from `seed`. */
export function cRht(x: Float32Array, chunkElems: number, seed: number, inverse: boolean): void {
  need(chunkElems > 0, "chunkElems must be > 0");
  if (x.length) quant.ainftp_rht(x, x.length, chunkElems, seed >>> 0, inverse ? 1 : 0);
}

/** The forward transform of src into out (as long as src, not overlapping it), without a copy. */
export function cRhtFrom(src: Float32Array, out: Float32Array, chunkElems: number, seed: number): void {
  need(chunkElems > 0, "chunkElems must be > 0");
  need(out.length >= src.length, "out shorter than src");
  if (src.length) quant.ainftp_rht_from(src, out, src.length, chunkElems, seed >>> 0);
}

/** cRhtFrom, then cBitsChunkExps of out, in one pass over the values (out
 * may be src itself: in place). Returns the NaN/±Inf count of out. Error
 * feedback's part of the pass: `add` (if given) is added to src first, and
 * `also` (if given; may be `add`) gets a copy of out. */
export function cRhtFromExps(
  src: Float32Array, out: Float32Array, chunkElems: number, seed: number, exps: Int8Array, bits: NarrowBits,
  add: Float32Array | null = null, also: Float32Array | null = null,
): number {
  need(chunkElems > 0, "chunkElems must be > 0");
  need(out.length >= src.length, "out shorter than src");
  need(exps.length >= Math.ceil(src.length / chunkElems), "exps shorter than the chunk count");
  need(!add || add.length >= src.length, "add shorter than src");
  need(!also || also.length >= src.length, "also shorter than src");
  if (!src.length) return 0;
  if (!add && !also) return quant.ainftp_rht_from_exps(src, out, src.length, chunkElems, seed >>> 0, exps, bits);
  return quant.ainftp_rht_ef_exps(src, add, out, also, src.length, chunkElems, seed >>> 0, exps, bits);
}

/** Prepacking at 8 and 4 bits: cRhtFromExps of src (+ add) into out (null:
 * not kept, each chunk packed from a scratch), and
 * in the same pass, while each chunk is in cache, its packet at out +
 * offsets[c] (none for NO_OFFSET) at scale[c] = max(pred[c], exps[c])
 * (exps[c] without pred), as cBitsPack with the residual (resid, through
 * the inverse of residSeed) would make it from out. Returns the NaN/±Inf
 * count or QUANT_EINVAL; adds the values clipped to saturated[0]. */
export function cBitsRhtExpsPack(
  src: Float32Array, add: Float32Array | null, out: Float32Array | null, chunkElems: number, rhtSeed: number, bits: NarrowBits,
  pred: Int8Array | null, exps: Int8Array, scale: Int8Array, offsets: Uint32Array, header: Uint8Array, pkts: Uint8Array,
  seed: number, resid: Float32Array | null, residSeed: number, saturated: Uint32Array,
): number {
  const chunks = Math.ceil(src.length / chunkElems);
  need(chunkElems > 0, "chunkElems must be > 0");
  need((!out || out.length >= src.length) && (!add || add.length >= src.length) && (!resid || resid.length >= src.length), "out, add or resid shorter than src");
  need(exps.length >= chunks && scale.length >= chunks && offsets.length >= chunks, "exps, scale or offsets shorter than the chunk count");
  need(!pred || pred.length >= chunks, "pred shorter than the chunk count");
  need(header.length >= 32, "header template must be 32 bytes");
  need(saturated.length >= 1, "saturated holds one count");
  if (!src.length) return 0;
  return quant.ainftp_bits_rht_exps_pack(src, add, out, src.length, chunkElems, rhtSeed >>> 0, bits, pred, exps, scale, offsets, header, pkts,
    pkts.length, seed >>> 0, resid, residSeed >>> 0, saturated);
}

/** The RHT of one chunk in place, `chunk` its index in the whole array (the
 * gather's per-chunk inverse, native/collective.c). */
export function cRhtChunk(x: Float32Array, chunk: number, seed: number, inverse: boolean): void {
  need(x.length > 0, "an empty chunk");
  quant.ainftp_rht_chunk(x, x.length, chunk, seed >>> 0, inverse ? 1 : 0);
}

/** The build the 8/4-bit kernels use (the quantizer's; the avx512 build's transform is the AVX2 code). */
export function rhtIsa(): QuantIsa {
  return QUANT_ISAS[quant.ainftp_rht_isa()];
}

/** The 8/4-bit kernels, as bench/bits.ts times them (no argument checks:
 * the bench's arrays are sized right). */
export type BitsCalls = {
  exps(x: Float32Array, chunkElems: number, exps: Int8Array, bits: NarrowBits): number;
  pack(x: Float32Array, chunkElems: number, chunks: Uint32Array, exps: Int8Array, header: Uint8Array, out: Uint8Array, stride: number, seed: number, bits: NarrowBits, resid: Float32Array | null): number;
  dequantize(p: Uint8Array, count: number, exp: number, bits: NarrowBits, out: Float32Array): number;
  /** The owner's step (ainftp_bits_finish) of one chunk. */
  finish(raw: Uint16Array, count: number, contributors: number, own: Uint8Array | null, bits: NarrowBits, key: number, out: Uint8Array): number;
  rhtFrom(src: Float32Array, out: Float32Array, chunkElems: number, seed: number): void;
  rhtInverse(x: Float32Array, chunkElems: number, seed: number): void;
  /** null in a build from before ainftp_rht_from_exps. */
  rhtFromExps: ((src: Float32Array, out: Float32Array, chunkElems: number, seed: number, exps: Int8Array, bits: NarrowBits) => number) | null;
  /** pack with the residual back through the inverse (ainftp_bits_pack_ef); null in a build from before it. */
  packEf: ((x: Float32Array, chunkElems: number, chunks: Uint32Array, exps: Int8Array, header: Uint8Array, out: Uint8Array, stride: number, seed: number, bits: NarrowBits, resid: Float32Array, rhtSeed: number) => number) | null;
};

function bitsCalls(l: typeof quant | ReturnType<typeof dlopen<typeof BITS_SYMBOLS>>["symbols"], fused: typeof quant.ainftp_rht_from_exps | null,
  ef: typeof quant.ainftp_bits_pack_ef | null): BitsCalls {
  return {
    exps: (x, ce, e, bits) => l.ainftp_bits_chunk_exps(x, x.length, ce, e, bits),
    pack: (x, ce, chunks, e, hdr, out, stride, seed, bits, resid) =>
      l.ainftp_bits_pack(x, x.length, ce, chunks, chunks.length, e, hdr, out, stride, seed >>> 0, bits, resid),
    dequantize: (p, count, exp, bits, out) => l.ainftp_bits_dequantize(p, count, exp, bits, out),
    finish: (raw, count, contributors, own, bits, key, out) => l.ainftp_bits_finish(raw, count, contributors, own, bits, key >>> 0, out, null),
    rhtFrom: (src, out, ce, seed) => void l.ainftp_rht_from(src, out, src.length, ce, seed >>> 0),
    rhtInverse: (x, ce, seed) => void l.ainftp_rht(x, x.length, ce, seed >>> 0, 1),
    rhtFromExps: fused && ((src, out, ce, seed, e, bits) => fused(src, out, src.length, ce, seed >>> 0, e, bits)),
    packEf: ef && ((x, ce, chunks, e, hdr, out, stride, seed, bits, resid, rseed) =>
      ef(x, x.length, ce, chunks, chunks.length, e, hdr, out, stride, seed >>> 0, bits, resid, rseed >>> 0)),
  };
}

/** This build's 8/4-bit kernels, or another build's (a libainftp.so from
 * an older tree: bench/bits.ts --baseline compares the two in one process). */
export function openBitsCalls(path?: string): BitsCalls {
  if (!path) return bitsCalls(quant, quant.ainftp_rht_from_exps, quant.ainftp_bits_pack_ef);
  const l = dlopen(path, BITS_SYMBOLS).symbols;
  let fused: typeof quant.ainftp_rht_from_exps | null = null;
  try {
    fused = dlopen(path, RHT_FROM_EXPS).symbols.ainftp_rht_from_exps;
  } catch {
    // a build from before the fused entry point: the bench times rhtFrom + exps for it
  }
  let ef: typeof quant.ainftp_bits_pack_ef | null = null;
  try {
    ef = dlopen(path, PACK_EF).symbols.ainftp_bits_pack_ef;
  } catch {
    // a build from before it: the bench times pack + the inverse for it
  }
  return bitsCalls(l, fused, ef);
}
