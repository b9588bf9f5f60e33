// Prepacking: a 16-bit round that does not speculate reads x once instead
// of twice. Our exponents (for the leader) and every packet of ours come
// from one pass (native ainftp_exps_pack: a chunk's maximum, then its
// packet while the chunk is in cache), laid out as the plan lays a round
// out when every member is in it, each chunk at scale max(prediction, our
// exponent): the plan's, wherever the prediction holds and we hold a
// chunk's largest exponent or the prediction's. At the plan, the packets
// whose scale the plan changed are packed again from x, and the rest go
// as they are; the bits are those of packing at the plan. Another active
// set (another layout) packs everything again, as without prepacking.
//
// Before, the exponents' pass and packing each read all of x: 16 MiB
// twice a rank a round (README "Session 14").
//
// At 8 and 4 bits the pass is the transform's (native
// ainftp_bits_rht_exps_pack): each chunk transformed into the round's
// array, its exponent taken, and its packet made while it is in cache, so
// packing no longer reads the transformed array back from memory (16 MiB
// a rank a round). There it also serves a round that speculates: its
// packets are those speculate.ts sends before the plan (F_SPEC, each chunk
// at max(prediction, our exponent): the scale speculation packs at), and
// confirm() mends the ones the plan changed (README "Session 19").
import { cBitsRhtExpsPack, cExpsPack, QUANT_EINVAL } from "../../native/quant.ts";
import { F_SPEC } from "../abi.ts";
import { H } from "./control.ts";
import type { Host } from "./host.ts";
import type { RoundState } from "./round-state.ts";
import { contribHeader, layoutOf, packFromX, packOwn, stochasticSeed } from "./sender.ts";
import { maySpeculate } from "./speculate.ts";

/** A round's packets, made with its exponents. */
export interface Prepack {
  /** The contributions, by owner (as st.sendBuf), then our own chunks (as st.ownBuf). */
  buf: Uint8Array;
  sendLen: number;
  /** The scale each chunk was packed at. */
  scale: Int8Array;
  /** The packets carry F_SPEC (8 and 4 bits, a round that speculates). */
  spec: boolean;
}

/** At 8 and 4 bits the round's input: the gradient (plus error feedback's
 * residual `add`), the transform's seed, and where packing puts our error. */
export interface RhtIn {
  src: Float32Array;
  add: Float32Array | null;
  seed: number;
  resid: Float32Array | null;
}

export const PREPACK = {
  /** false: the exponents' pass and packing apart, as before (a test compares). */
  enabled: true,
  /** false: at 8 and 4 bits the transform's pass and packing apart, as
   * before session 19 (AINFTP_PREPACK_NARROW=0; a test compares). */
  narrow: process.env.AINFTP_PREPACK_NARROW !== "0",
  /** Rounds of fewer values pack at the plan, as before: their x stays in
   * the caches between the two passes, and packing before the exponents
   * go out only delays the plan, which a small round waits on (1 MiB,
   * three pairs: 3.2 / 3.1 / 3.5 → 3.5 / 3.5 / 3.4 ms). 4 MiB of float32. */
  minValues: 1 << 20,
};

/** Whether this round prepacks: a large round, members to send to; at 16
 * bits no speculation (which packs under the prediction, flagged), at 8
 * and 4 bits with the transform, speculating or not (speculate.ts sends
 * the packets). */
export function prepacks(h: Host, st: RoundState): boolean {
  if (!PREPACK.enabled || h.size <= 1 || st.patient || st.x.length < PREPACK.minValues) return false;
  return h.bits === 16 ? !maySpeculate(h, st) : PREPACK.narrow && h.rht;
}

const saturated = new Uint32Array(1);

/** Our exponents of x into `mine` and the round's packets into
 * st.prepack; returns the NaN/±Inf count (as chunkExpsAt). At 8 and 4
 * bits (rin) x is the round's array, which the same pass fills with the
 * transform of rin.src (+ rin.add). */
export function prepack(h: Host, st: RoundState, x: Float32Array, mine: Int8Array, rin: RhtIn | null = null): number {
  const n = st.nchunks, seg = h.seg;
  // the layout the plan gives a round of every member (sender.ts layoutOf):
  // where each chunk's packet goes, our own after the contributions
  const lay = layoutOf(h, (1n << BigInt(h.size)) - 1n, n, new Int32Array(h.size));
  const sendLen = lay.sendBytes;
  const offsets = new Uint32Array(h.scratch("prepack-offsets", 4 * n).buffer, 0, n);
  for (let o = 0; o < h.size; o++) {
    const list = lay.ownerChunks[o], at = o === h.rank ? sendLen : lay.ownerOffset[o];
    for (let k = 0; k < list.length; k++) offsets[list[k]] = at + k * seg;
  }
  const buf = h.scratch("prepack", sendLen + lay.ownerChunks[h.rank].length * seg);
  const scale = new Int8Array(n);
  const pred = h.predictions.get(n)?.shared ?? null;
  saturated[0] = 0;
  // (a round that speculates sends these before the plan: flagged as speculate.ts's)
  const spec = h.bits !== 16 && !!maySpeculate(h, st);
  const header = contribHeader(h, st, spec);
  let bad: number;
  if (h.bits === 16) bad = cExpsPack(x, h.chunkElems, pred, mine, scale, offsets, header, buf, stochasticSeed(h, st.r), saturated);
  else {
    if (!rin) throw new Error("prepack: 8 and 4 bits need the round's input (RhtIn)");
    // without error feedback nothing reads the transformed array again
    // unless the plan changes a chunk's scale or the layout: it is not
    // written (16 MiB a rank a 16 MiB round), and those chunks are made
    // again from the gradient when they are (sender.ts materialize)
    const keep = !!(rin.add || rin.resid);
    bad = cBitsRhtExpsPack(rin.src, rin.add, keep ? x : null, h.chunkElems, rin.seed, h.bits, pred, mine, scale, offsets, header, buf,
      stochasticSeed(h, st.r), rin.resid, rin.resid ? rin.seed : 0, saturated);
    if (!keep) st.xLazy = { src: rin.src, seed: rin.seed, done: new Uint8Array(n) };
  }
  if (bad === QUANT_EINVAL) throw new RangeError(`prepack: ${n} chunks of ${h.chunkElems} values do not fit their layout (${buf.length} bytes)`);
  h.stats.saturations += saturated[0];
  st.prepack = { buf, sendLen, scale, spec };
  return bad;
}

/** At the plan (after beginSending): the round's packets are the prepacked
 * ones when its layout is theirs; those whose scale the plan changed are
 * packed again. Returns false where they do not apply (pack as usual). */
export function usePrepack(h: Host, st: RoundState, x: Float32Array): boolean {
  const pp = st.prepack;
  st.prepack = null;
  if (!pp || st.passive || st.K !== h.size) return false;
  const seg = h.seg;
  st.sendBuf = pp.buf.subarray(0, pp.sendLen);
  st.ownBuf = pp.buf.subarray(pp.sendLen, pp.sendLen + st.owned.length * seg);
  // made for speculation, which did not happen (the plan came first): firm packets
  if (pp.spec) clearSpec(pp.buf.subarray(0, pp.sendLen + st.owned.length * seg), seg);
  for (let o = 0; o < h.size; o++) {
    if (o === h.rank) continue;
    const list = st.ownerChunks[o];
    for (let k = 0; k < list.length; k++) {
      const c = list[k];
      if (pp.scale[c] === st.shared[c]) continue;
      const at = st.ownerOffset[o] + k * seg;
      packFromX(h, st, x, list.subarray(k, k + 1), st.shared, st.sendBuf.subarray(at, at + seg));
    }
  }
  const changed: number[] = [];
  for (let k = 0; k < st.owned.length; k++) if (pp.scale[st.owned[k]] !== st.shared[st.owned[k]]) changed.push(k);
  if (changed.length) packOwn(h, st, x, st.shared, changed);
  st.prepacked = true;
  h.stats.prepackedRounds++;
  return true;
}

/** Clears F_SPEC in every packet of buf (one per seg bytes). */
export function clearSpec(buf: Uint8Array, seg: number): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let at = 0; at + seg <= buf.length; at += seg) dv.setUint16(at + H.flags[0], dv.getUint16(at + H.flags[0], true) & ~F_SPEC, true);
}
