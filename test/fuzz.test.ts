// Bounded differential fuzz of the XDP program: random, valid and mutated
// frames go through BPF_PROG_TEST_RUN and through a TypeScript model of
// bpf/ainftp.bpf.c (parser, round window, slots, sums, results, bank state,
// events, counters). Every packet's XDP action and counter deltas must match
// the model; at checkpoints every slot, every int32 sum, every result entry,
// both bank states and the ring-buffer events must match it exactly.
//
// Reproduce a failure with the seed it prints:
//   AINFTP_FUZZ_SEED=<seed> bun test test/fuzz.test.ts
// AINFTP_FUZZ_PACKETS overrides the packet count (default 100000).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  ACC_BIAS, ACC_BIAS4, ACC_BIAS8, BANKS, CFG_AUTH_FULL, CFG_AUTH_HDR, CFG_CHECK_SOURCE, CFG_INT4, CFG_INT8, MAC_BYTES, VERSION_INT4, VERSION_INT8,
  decodeSumsNarrow, payloadBytes, writeHeader, CFG_CONTRIBS_TO_RING, CFG_SENTRY, COUNTERS, EV_RESEND, EV_RESULT, EV_SLOT_COMPLETE, F_CONFIRM, F_FORCE, F_LAST, F_RETRANSMIT, F_SATURATED, F_SPEC,
  MAGIC, MAX_ELEMS, MAX_ROUND, MAX_WORKERS, PKT_CLOSE, PKT_CONTRIB, PKT_CONTROL, PKT_RESULT, SIZEOF, SLOT_COMPLETE, SLOT_EMPTY, SLOT_FILLING, VERSION,
  accPosition, allMembers,
  type Counters, type JobConfig, type ReflexEvent, type SlotState,
} from "../src/abi.ts";
import { datagram, frame } from "../src/packet.ts";
import { siphash24 } from "../native/mac.ts";
import { sealDatagram } from "../src/jobkey.ts";
import { EventRing, ReflexObject } from "../src/reflex.ts";
import { libbpf } from "../native/libbpf.ts";
import { ipv4ToBe32 } from "../src/transport.ts";

const XDP_DROP = 1;
const XDP_PASS = 2;
const PORT = 47000;
const JOB = 0xa1f0;
const MAP_CHUNKS = 8;
const MEMBERS = 5;
/** Linear data BPF_PROG_TEST_RUN gives an XDP program: 4096 - 256 headroom - 320 skb_shared_info.
 * A longer frame's rest goes into frags (the program is xdp.frags): the
 * headers must lie in this part, lengths are checked against the whole frame. */
const LINEAR_MAX = 3520;
const RESULT_BUSY = 0xffffffff;

const SEED = Number(process.env.AINFTP_FUZZ_SEED ?? 0x1f0ccafe) >>> 0;
const PACKETS = Number(process.env.AINFTP_FUZZ_PACKETS ?? 100_000);
const CHECK_EVERY = 2_000;
const DRAIN_EVERY = 500;

// ---- PRNG -----------------------------------------------------------------------

class Rng {
  private a: number;
  constructor(seed: number) {
    this.a = seed >>> 0;
  }
  next(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  u32(): number {
    return (this.int(0x10000) * 0x10000 + this.int(0x10000)) >>> 0;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
  int16(): number {
    const x = this.next();
    return x < 0.05 ? -32768 : x < 0.1 ? 32767 : this.int(65536) - 32768;
  }
}

// ---- the model ------------------------------------------------------------------

/** The model's slot: the same fields as the kernel's (src/abi.ts). */
type ModelSlot = SlotState;
/** ainftp_abi.h AINFTP_SLOT_SPEC, AINFTP_SLOT_CONFIRMED (slot.spec). */
const SLOT_SPEC = 1, SLOT_CONFIRMED = 2;

interface ModelResult {
  tag: number;
  count: number;
  contributors: number;
  exp: number;
  flags: number;
  writes: number;
  rank: number;
  v: Int16Array;
}

/** The ranks a slot of `round` waits for (slot_want): its bank's mask within the members. */
function wantOf(cfg: JobConfig, round: number): bigint {
  const bank = BigInt.asUintN(64, cfg.bankMask?.[round & 1] ?? 0n);
  return BigInt.asUintN(64, cfg.memberMask) & (bank || (1n << 64n) - 1n);
}

function zeroCounters(): Counters {
  const c = {} as Counters;
  for (const n of COUNTERS) c[n] = 0;
  return c;
}

/** A TypeScript transcription of bpf/ainftp.bpf.c's observable behaviour. */
class Model {
  cnt = zeroCounters();
  /** member_addrs: each rank's IPv4 source (as the kernel loads it). */
  memberAddrs: number[] = [];
  slots: ModelSlot[] = [];
  /** True int32 sums of each slot's current round (valid for its first `count` elements). */
  acc: Int32Array[] = [];
  /** The acc map's words as the program lays them out: biased by ACC_BIAS per
   * contribution, the middle two of every four elements swapped. */
  raw: Uint32Array[] = [];
  results: ModelResult[] = [];
  banks = Array.from({ length: BANKS }, () => ({ slotsDone: 0, resultsDone: 0 }));
  events: ReflexEvent[] = [];
  /** sentry_gate: per chunk "open" (no gate: lo >= hi) or "closed" (a band no energy reaches). */
  gate: ("open" | "closed")[] = [];
  /** Slots whose round counted a contribution it did not sum (ring mode):
   * their acc words are exact, but not a sum of `contributors` values. */
  ringCounted = new Set<number>();
  /** The lane width each slot's sums were added at (16, 8, 4), 0 when mixed (issue 14). */
  narrow = new Map<number, number>();
  /** Records the contribs ring should hold, in order. */
  ring: { round: number; chunk: number; rank: number; count: number; exp: number; v: number[] }[] = [];
  /** sentry_workers: [accepted, rejected] per rank. */
  workers = Array.from({ length: 64 }, () => [0, 0]);
  /** job_key; the frame's MAC verdict for contrib()/result() (ainftp_auth). */
  key = new Uint8Array(16);
  private macOk = true;
  /** round_plan per bank: the round's tag and its owners (result_admit). */
  plans = Array.from({ length: BANKS }, () => ({ tag: 0, owners: [] as number[] }));

  /** Closes the slot once every rank it waits for is in (slot_close_if_full). */
  /** slot_admit's speculative rule (AINFTP_F_SPEC): a contribution without
   * the flag at another scale than a slot holding only speculative ones
   * empties it (a completion it had counted is taken back) and is summed as
   * its first. */
  /** slot_admit: a speculative contribution to a slot the owner confirmed, from a rank outside the ranks it waits for. */
  private specRefused(slot: ModelSlot, h: { flags: number; round: number; rank: number }): boolean {
    if (!(h.flags & F_SPEC) || !(slot.spec & SLOT_CONFIRMED)) return false;
    return (BigInt.asUintN(64, wantOf(this.cfg, h.round)) & (1n << BigInt(h.rank & 63))) === 0n;
  }

  /** A slot of the round emptied (spec_replaced): a completion it had counted towards the bank's wake-up is taken back. */
  private specReplaced(slot: ModelSlot, round: number): void {
    if (slot.state === SLOT_COMPLETE) {
      const bank = this.banks[round & 1];
      bank.slotsDone = (bank.slotsDone - 1) >>> 0;
    }
    this.cnt.spec_replaced++;
  }

  private specReplaces(slot: ModelSlot, h: { flags: number; round: number; count: number; exp: number }): boolean {
    if (!(slot.spec & SLOT_SPEC) || h.flags & F_SPEC || (slot.count === h.count && slot.exp === h.exp)) return false;
    this.specReplaced(slot, h.round);
    Object.assign(slot, { seen: 0n, rejected: 0n, contributors: 0, count: h.count, exp: h.exp, state: SLOT_FILLING, spec: 0 });
    return true;
  }

  /** A slot claimed empty at the plan's scale (F_CONFIRM) takes its first contribution's count. Always true. */
  private adopt(slot: ModelSlot, h: { count: number }): boolean {
    if (slot.contributors === 0 && slot.count === 0) slot.count = h.count;
    return true;
  }

  private closeIfFull(slot: ModelSlot, round: number): boolean {
    if (slot.spec & SLOT_SPEC) return false; // speculative: only the owner's confirmation closes it
    const want = wantOf(this.cfg, round);
    if ((slot.seen & want) !== want) return false;
    return this.close(slot);
  }

  private close(slot: ModelSlot): boolean {
    slot.state = SLOT_COMPLETE;
    slot.completions = (slot.completions + 1) >>> 0;
    return true;
  }

  /** The energy is sampled at a random phase, so the fuzz uses gates whose
   * verdict does not depend on it: none, or a band no energy can reach. */
  gateRejects(chunk: number): boolean {
    return this.gate[chunk] === "closed";
  }

  constructor(public cfg: JobConfig, readonly mapChunks: number, readonly port: number) {
    for (let i = 0; i < BANKS * mapChunks; i++) {
      this.slots.push({ tag: 0, seen: 0n, count: 0, contributors: 0, exp: 0, state: SLOT_EMPTY, completions: 0, spec: 0, rejected: 0n });
      if (i < mapChunks) this.gate.push("open");
      this.acc.push(new Int32Array(MAX_ELEMS));
      this.raw.push(new Uint32Array(MAX_ELEMS));
      this.results.push({ tag: 0, count: 0, contributors: 0, exp: 0, flags: 0, writes: 0, rank: 0, v: new Int16Array(MAX_ELEMS) });
    }
  }

  resetBank(bank: number): void {
    this.banks[bank] = { slotsDone: 0, resultsDone: 0 };
  }

  private pass(): number {
    this.cnt.passed++;
    return XDP_PASS;
  }

  private drop(c: keyof Counters): number {
    this.cnt[c]++;
    return XDP_DROP;
  }

  run(f: Uint8Array): number {
    const end = Math.min(f.length, LINEAR_MAX); // data_end: the linear part
    const frameLen = f.length; // bpf_xdp_get_buff_len: every buffer
    const dv = new DataView(f.buffer, f.byteOffset, f.byteLength);
    // parse_eth
    if (14 > end) {
      this.cnt.mal_trunc_eth++;
      return XDP_PASS;
    }
    let pos = 14;
    let proto = dv.getUint16(12);
    for (let i = 0; i < 2; i++) {
      if (proto !== 0x8100 && proto !== 0x88a8) break;
      if (pos + 4 > end) {
        this.cnt.mal_trunc_eth++;
        return XDP_PASS;
      }
      proto = dv.getUint16(pos + 2);
      pos += 4;
    }
    let udp: number;
    let l3End: number;
    let saddr = 0;
    if (proto === 0x0800) {
      const ip = pos;
      if (ip + 20 > end) {
        this.cnt.mal_trunc_ip++;
        return XDP_PASS;
      }
      if (f[ip + 9] !== 17) return this.pass();
      const ihl = (f[ip] & 0xf) * 4;
      if (ihl < 20) {
        this.cnt.mal_trunc_ip++;
        return XDP_PASS;
      }
      const frag = dv.getUint16(ip + 6);
      if (frag & 0x1fff) return this.pass();
      udp = ip + ihl;
      if (udp + 8 > end) {
        this.cnt.mal_trunc_udp++;
        return XDP_PASS;
      }
      if (dv.getUint16(udp + 2) !== this.port) return this.pass();
      this.cnt.rx++;
      if (frag & 0x2000) return this.drop("mal_fragment");
      saddr = dv.getUint32(ip + 12, true); // as the kernel loads it on little-endian
      const tot = dv.getUint16(ip + 2);
      l3End = ip + tot;
      if (tot < ihl + 8 || l3End > frameLen) return this.drop("mal_trunc_ip");
    } else if (proto === 0x86dd) {
      const ip = pos;
      if (ip + 40 > end) {
        this.cnt.mal_trunc_ip++;
        return XDP_PASS;
      }
      if (f[ip + 6] !== 17) return this.pass();
      udp = ip + 40;
      if (udp + 8 > end) {
        this.cnt.mal_trunc_udp++;
        return XDP_PASS;
      }
      if (dv.getUint16(udp + 2) !== this.port) return this.pass();
      this.cnt.rx++;
      l3End = udp + dv.getUint16(ip + 4);
      if (l3End > frameLen) return this.drop("mal_trunc_ip");
    } else {
      return this.pass();
    }

    const ulen = dv.getUint16(udp + 4);
    if (ulen < 8 || udp + ulen > l3End) return this.drop("mal_trunc_udp");
    const h = udp + 8;
    if (h + 32 > end || ulen < 8 + 32) return this.drop("mal_trunc_hdr");
    if (dv.getUint32(h, true) !== MAGIC) return this.drop("mal_magic");
    // issue 14: versions 2 and 3 are int8 / int4 data packets; control and CLOSE are VERSION
    const ver = f[h + 4];
    const type = f[h + 5];
    if (ver < VERSION || ver > VERSION_INT4 || (ver !== VERSION && type !== PKT_CONTRIB && type !== PKT_RESULT)) return this.drop("mal_version");
    if (type === PKT_CONTROL) {
      this.cnt.control++;
      return XDP_PASS;
    }
    // test runs without a ctx arrive on loopback: CLOSE frames are honoured
    if (type !== PKT_CONTRIB && type !== PKT_RESULT && type !== PKT_CLOSE) return this.drop("mal_type");
    if (dv.getUint32(h + 28, true) !== 0) return this.drop("mal_reserved");
    const cfg = this.cfg;
    const hdr = {
      flags: dv.getUint16(h + 6, true),
      jobId: dv.getUint32(h + 8, true),
      round: dv.getUint32(h + 12, true),
      chunk: dv.getUint32(h + 16, true),
      rank: dv.getUint16(h + 20, true),
      count: dv.getUint16(h + 22, true),
      exp: dv.getInt16(h + 24, true),
      contributors: dv.getUint16(h + 26, true),
    };
    if (hdr.jobId !== cfg.jobId >>> 0) return this.drop("foreign_job");
    if (hdr.rank >= cfg.members || hdr.rank >= MAX_WORKERS) return this.drop("mal_rank");
    if ((cfg.flags ?? 0) & CFG_CHECK_SOURCE) {
      const a = this.memberAddrs[hdr.rank] ?? 0;
      if (!a || !saddr || a !== saddr) return this.drop("bad_source");
    }
    if (hdr.chunk >= cfg.chunks >>> 0) return this.drop("mal_chunk");
    if (type !== PKT_CLOSE && ver !== widthVersion(cfg)) return this.drop("bad_width");
    const count = hdr.count;
    const bits = ver === VERSION_INT8 ? 8 : ver === VERSION_INT4 ? 4 : 16;
    const pb = payloadBytes(bits, count);
    const auth = (cfg.flags ?? 0) & (CFG_AUTH_HDR | CFG_AUTH_FULL);
    const tagBytes = type !== PKT_CLOSE && auth ? MAC_BYTES : 0;
    const most = bits === 16 ? cfg.chunkElems : 2 * cfg.chunkElems;
    if (count === 0 || count > most || count > 2 * MAX_ELEMS || (bits === 16 && count > MAX_ELEMS) || ulen !== 8 + 32 + pb + tagBytes)
      return this.drop("mal_count");
    if (tagBytes) {
      const covered = f.subarray(h, h + 32 + (auth & CFG_AUTH_FULL ? pb : 0));
      const tag = f.subarray(h + 32 + pb, h + 32 + pb + MAC_BYTES);
      this.macOk = Buffer.from(siphash24(this.key, covered)).equals(Buffer.from(tag));
    } else this.macOk = true;
    if (hdr.round >= MAX_ROUND) return this.drop("mal_round");
    const ahead = (hdr.round - cfg.roundBase) | 0;
    if ((ahead < 0 || ahead > 1) && type === PKT_RESULT) this.cnt.result_window++;
    if (ahead < 0) return this.drop("stale_round");
    // (a speculative contribution may come a round earlier: ainftp_xdp)
    if (ahead > 1 && !(ahead === 2 && type === PKT_CONTRIB && hdr.flags & F_SPEC)) return this.drop("future_round");
    const idx = ((hdr.round & 1) * cfg.chunks + hdr.chunk) >>> 0;
    const payload = h + 32;
    const bytes = f.slice(payload, payload + pb);
    if (bits !== 16) return type === PKT_CONTRIB ? this.contribNarrow(hdr, idx, bits, bytes) : this.result(hdr, idx, new Int16Array(0), bytes);
    const values = new Int16Array(count);
    for (let i = 0; i < count; i++) values[i] = dv.getInt16(payload + 2 * i, true);
    if (type === PKT_CLOSE) return this.closeFrame(hdr, values);
    return type === PKT_CONTRIB ? this.contrib(hdr, idx, values) : this.result(hdr, idx, values, bytes);
  }

  /** A CLOSE frame (ainftp_close / close_one): each listed chunk in order. */
  private closeFrame(h: { flags: number; round: number; exp: number }, list: Int16Array): number {
    const cfg = this.cfg;
    const tag = (h.round + 1) >>> 0;
    const force = (h.flags & F_FORCE) !== 0;
    for (const v of list) {
      const chunk = v & 0xffff;
      if (chunk >= cfg.chunks >>> 0) continue;
      const idx = ((h.round & 1) * cfg.chunks + chunk) >>> 0;
      if (idx >= this.slots.length) continue;
      const slot = this.slots[idx];
      let closed = false;
      const newer = slot.tag !== 0 && ((slot.tag - tag) | 0) > 0;
      if (h.flags & F_CONFIRM) {
        // the plan's scale is h.exp: a speculative slot at it (nobody outside
        // the ranks it waits for) becomes ordinary; any other is claimed empty at it
        const want = BigInt.asUintN(64, wantOf(cfg, h.round));
        const ours = slot.tag === tag;
        if (newer || (ours && slot.state === SLOT_COMPLETE && !(slot.spec & SLOT_SPEC))) {
          // a newer round's, or complete (the owner checks who is in it)
        } else if (ours && slot.state === SLOT_FILLING && slot.exp === h.exp && (slot.seen & ~want) === 0n) {
          slot.spec = SLOT_CONFIRMED;
          closed = this.closeIfFull(slot, h.round);
        } else {
          if (ours) this.specReplaced(slot, h.round);
          Object.assign(slot, { tag, seen: 0n, rejected: 0n, contributors: 0, count: 0, exp: h.exp, spec: SLOT_CONFIRMED, state: SLOT_FILLING });
          this.ringCounted.delete(idx);
        }
      } else if (slot.tag === tag) {
        if (slot.state === SLOT_FILLING) closed = force ? this.close(slot) : this.closeIfFull(slot, h.round);
      } else if (force && !newer) {
        Object.assign(slot, { tag, seen: 0n, rejected: 0n, contributors: 0, count: 0, exp: 0, spec: 0 });
        this.ringCounted.delete(idx);
        closed = this.close(slot);
      }
      if (closed) {
        this.cnt.completed++;
        this.emit(EV_SLOT_COMPLETE, h.round, chunk, idx, slot.contributors);
      }
    }
    return XDP_DROP;
  }

  private contrib(
    h: { flags: number; round: number; chunk: number; rank: number; count: number; exp: number; contributors: number },
    idx: number,
    values: Int16Array,
  ): number {
    const cfg = this.cfg;
    const bit = 1n << BigInt(h.rank & 63);
    if ((BigInt.asUintN(64, cfg.memberMask) & bit) === 0n) return this.drop("not_member");
    if (idx >= this.slots.length) return this.drop("mal_chunk");
    if (!this.macOk) return this.drop("bad_mac");
    const slot = this.slots[idx];
    const tag = (h.round + 1) >>> 0;
    // robust aggregation: a copy for userspace (before any slot check), no sum
    const toRing = ((cfg.flags ?? 0) & CFG_CONTRIBS_TO_RING) !== 0;
    if (toRing && !(((cfg.flags ?? 0) & CFG_SENTRY) !== 0 && this.gateRejects(h.chunk))) {
      this.cnt.contribs_ring++;
      this.ring.push({ round: h.round, chunk: h.chunk, rank: h.rank, count: h.count, exp: h.exp, v: Array.from(values.subarray(0, h.count)) });
    }
    let outcome: keyof Counters = "summed";
    let complete = false;
    let resend = false;
    if (slot.tag !== tag) {
      if (slot.tag !== 0 && ((slot.tag - tag) | 0) > 0) outcome = "stale_round";
      else {
        slot.tag = tag;
        this.ringCounted.delete(idx);
        slot.seen = 0n;
        slot.rejected = 0n;
        slot.contributors = 0;
        slot.count = h.count;
        slot.exp = h.exp;
        slot.state = SLOT_FILLING;
        slot.spec = h.flags & F_SPEC ? 1 : 0;
      }
    } else if (this.specRefused(slot, h)) outcome = "spec_refused";
    else if (this.specReplaces(slot, h)) this.ringCounted.delete(idx);
    else if (slot.seen & bit) {
      outcome = "duplicate";
      resend = slot.state === SLOT_COMPLETE && (h.flags & F_RETRANSMIT) !== 0;
    }
    else if (slot.state === SLOT_COMPLETE) {
      outcome = "late";
      resend = (h.flags & F_RETRANSMIT) !== 0;
    }
    else if (this.adopt(slot, h) && (slot.count !== h.count || slot.exp !== h.exp)) outcome = h.flags & F_SPEC ? "spec_refused" : "mal_scale";
    else if (!(h.flags & F_SPEC)) slot.spec &= ~SLOT_SPEC;
    const reject = outcome === "summed" && ((cfg.flags ?? 0) & CFG_SENTRY) !== 0 && this.gateRejects(h.chunk);
    if (reject) {
      outcome = "sentry_rejected";
      slot.seen |= bit;
      slot.rejected |= bit;
      complete = this.closeIfFull(slot, h.round);
    }
    if ((outcome === "summed" || reject) && (cfg.flags ?? 0) & CFG_SENTRY) this.workers[h.rank & 63][reject ? 1 : 0]++;
    if (outcome === "summed" && toRing) {
      this.ringCounted.add(idx);
      slot.seen |= bit;
      slot.contributors = (slot.contributors + 1) & 0xffff;
      complete = this.closeIfFull(slot, h.round);
    } else if (outcome === "summed") {
      const keep = slot.contributors !== 0;
      const dst = this.acc[idx];
      const raw = this.raw[idx];
      const n = (h.count + 15) & ~15; // four source words (16 elements) per step, zero-padded
      for (let i = 0; i < n; i++) {
        const v = i < h.count ? values[i] : 0;
        dst[i] = keep ? (dst[i] + v) | 0 : v;
        const p = accPosition(i);
        raw[p] = keep ? (raw[p] + v + ACC_BIAS) >>> 0 : v + ACC_BIAS;
      }
      this.narrow.set(idx, keep && this.narrow.get(idx) !== 16 ? 0 : 16);
      slot.seen |= bit;
      slot.contributors = (slot.contributors + 1) & 0xffff;
      complete = this.closeIfFull(slot, h.round);
    }
    this.cnt[outcome]++;
    if (resend) {
      this.cnt.resend_req++;
      this.emit(EV_RESEND, h.round, h.chunk, idx, h.rank);
    }
    if (outcome === "summed") {
      if (!toRing) this.cnt.elems_summed += h.count;
      if (h.flags & F_SATURATED) this.cnt.saturated++;
    }
    if (complete) {
      this.cnt.completed++;
      this.emit(EV_SLOT_COMPLETE, h.round, h.chunk, idx, slot.contributors);
    }
    return XDP_DROP;
  }

  /** An int8 / int4 contribution (issue 14): the slot checks of contrib(),
   * no sentry verdict and no ring copy (those read int16 values), and the
   * sum as the program adds it: whole 64-bit words of 16-bit lanes (exact,
   * carries included, over whatever the entry held). */
  private contribNarrow(
    h: { flags: number; round: number; chunk: number; rank: number; count: number; exp: number; contributors: number },
    idx: number,
    bits: 8 | 4,
    bytes: Uint8Array,
  ): number {
    const cfg = this.cfg;
    const bit = 1n << BigInt(h.rank & 63);
    if ((BigInt.asUintN(64, cfg.memberMask) & bit) === 0n) return this.drop("not_member");
    if (idx >= this.slots.length) return this.drop("mal_chunk");
    if (!this.macOk) return this.drop("bad_mac");
    const slot = this.slots[idx];
    const tag = (h.round + 1) >>> 0;
    let outcome: keyof Counters = "summed";
    let complete = false;
    let resend = false;
    if (slot.tag !== tag) {
      if (slot.tag !== 0 && ((slot.tag - tag) | 0) > 0) outcome = "stale_round";
      else {
        Object.assign(slot, { tag, seen: 0n, rejected: 0n, contributors: 0, count: h.count, exp: h.exp, state: SLOT_FILLING, spec: h.flags & F_SPEC ? 1 : 0 });
        this.ringCounted.delete(idx);
      }
    } else if (this.specRefused(slot, h)) outcome = "spec_refused";
    else if (this.specReplaces(slot, h)) this.ringCounted.delete(idx);
    else if (slot.seen & bit) {
      outcome = "duplicate";
      resend = slot.state === SLOT_COMPLETE && (h.flags & F_RETRANSMIT) !== 0;
    } else if (slot.state === SLOT_COMPLETE) {
      outcome = "late";
      resend = (h.flags & F_RETRANSMIT) !== 0;
    } else if (this.adopt(slot, h) && (slot.count !== h.count || slot.exp !== h.exp)) outcome = h.flags & F_SPEC ? "spec_refused" : "mal_scale";
    else if (!(h.flags & F_SPEC)) slot.spec &= ~SLOT_SPEC;
    if (outcome === "summed" && (cfg.flags ?? 0) & CFG_SENTRY) this.workers[h.rank & 63][0]++;
    if (outcome === "summed") {
      const first = slot.contributors === 0;
      // the scratch as the program loads it: int8 bytes zero-padded to a word;
      // int4 nibbles spread into biased bytes (x ^ 8, low nibbles then high)
      const words = (((h.count + 7) >> 3) + 3) & ~3; // four source words per step, zero-padded
      const src = new Uint8Array(8 * words);
      if (bits === 8) src.set(bytes.subarray(0, Math.min(bytes.length, src.length)));
      else for (let w = 0; w < (bytes.length >> 3) && 2 * w < words; w++)
        for (let j = 0; j < 8; j++) {
          const b = bytes[8 * w + j] ^ 0x88;
          src[16 * w + j] = b & 15;
          if (16 * w + 8 + j < src.length) src[16 * w + 8 + j] = b >> 4;
        }
      const sw = new BigUint64Array(src.buffer);
      const dst = new BigUint64Array(this.raw[idx].buffer, this.raw[idx].byteOffset, (2 * MAX_ELEMS) >> 2);
      const bias = bits === 8 ? 0x8080808080808080n : 0n, mask = 0x00ff00ff00ff00ffn;
      for (let g = 0; g < words; g++) {
        const x = sw[g] ^ bias;
        dst[2 * g] = first ? x & mask : BigInt.asUintN(64, dst[2 * g] + (x & mask));
        dst[2 * g + 1] = first ? (x >> 8n) & mask : BigInt.asUintN(64, dst[2 * g + 1] + ((x >> 8n) & mask));
      }
      this.narrow.set(idx, first ? bits : this.narrow.get(idx) === bits ? bits : 0);
      slot.seen |= bit;
      slot.contributors = (slot.contributors + 1) & 0xffff;
      complete = this.closeIfFull(slot, h.round);
    }
    this.cnt[outcome]++;
    if (resend) {
      this.cnt.resend_req++;
      this.emit(EV_RESEND, h.round, h.chunk, idx, h.rank);
    }
    if (outcome === "summed") {
      this.cnt.elems_summed += h.count;
      if (h.flags & F_SATURATED) this.cnt.saturated++;
    }
    if (complete) {
      this.cnt.completed++;
      this.emit(EV_SLOT_COMPLETE, h.round, h.chunk, idx, slot.contributors);
    }
    return XDP_DROP;
  }

  private result(
    h: { flags: number; round: number; chunk: number; rank: number; count: number; exp: number; contributors: number },
    idx: number,
    _values: Int16Array,
    bytes: Uint8Array,
  ): number {
    // result_admit: a count of contributors no round can have, or a
    // result from a rank that does not own the chunk in the known plan
    if (h.contributors === 0 || h.contributors > this.cfg.members) return this.drop("mal_contributors");
    const plan = this.plans[h.round & 1];
    let fromOwner = false;
    if (plan.tag === ((h.round + 1) >>> 0) && plan.owners.length > 0) {
      if (h.rank !== plan.owners[h.chunk % plan.owners.length]) return this.drop("not_owner");
      if (h.contributors > plan.owners.length) return this.drop("mal_contributors");
      fromOwner = true;
    }
    if (!this.macOk) return this.drop("bad_mac");
    if (idx >= this.results.length) return this.drop("mal_chunk");
    const res = this.results[idx];
    const tag = (h.round + 1) >>> 0;
    const old = res.tag;
    // an entry holding this round's result: with the plan known, the
    // owner's replaces what the plan refuses (another rank's, or one under
    // the owner's rank claiming more contributors than the active set);
    // before it, a copy from the same rank is an early dup, and another
    // rank's is contested unless the previous round's plan names it the owner
    const foreign = res.rank !== h.rank, tooMany = fromOwner && res.contributors > plan.owners.length;
    if (old === RESULT_BUSY) return this.drop("result_dup");
    let replaced: "not_owner" | "mal_contributors" | "result_displaced" | null = null;
    if (old === tag) {
      if (fromOwner) {
        if (!foreign && !tooMany) return this.drop("result_dup");
        replaced = foreign ? "not_owner" : "mal_contributors";
      } else {
        // the previous round's plan takes a result from its owner within its active set
        const prev = this.plans[(h.round + 1) & 1];
        const takes = (rank: number, k: number) =>
          prev.tag === h.round && prev.owners.length > 0 && rank === prev.owners[h.chunk % prev.owners.length] && k <= prev.owners.length;
        if (!takes(h.rank, h.contributors) || takes(res.rank, res.contributors)) return this.drop(foreign ? "result_contested" : "result_early_dup");
        replaced = "result_displaced";
      }
    }
    if (old !== 0 && ((old - tag) | 0) > 0) {
      this.cnt.result_window++;
      return this.drop("stale_round");
    }
    if (replaced) this.cnt[replaced]++; // the stored one, replaced
    new Uint8Array(res.v.buffer, res.v.byteOffset, res.v.byteLength).set(bytes); // the payload's bytes, at any width
    res.count = h.count;
    res.contributors = h.contributors;
    res.exp = h.exp;
    res.flags = h.flags;
    res.writes = (res.writes + 1) & 0xffff;
    res.rank = h.rank;
    res.tag = tag;
    this.cnt.results++;
    this.emit(EV_RESULT, h.round, h.chunk, idx, h.contributors);
    return XDP_DROP;
  }

  private emit(type: number, round: number, chunk: number, index: number, contributors: number): void {
    const bank = this.banks[round & 1];
    this.events.push({ type, contributors, round, chunk, index });
    let done = 1;
    let end = (this.cfg.resultsPerRound ?? 0) >>> 0 || this.cfg.chunks >>> 0;
    if (type === EV_SLOT_COMPLETE) {
      done = bank.slotsDone = (bank.slotsDone + 1) >>> 0;
      end = this.cfg.ownedChunks >>> 0;
    } else if (type === EV_RESULT) {
      done = bank.resultsDone = (bank.resultsDone + 1) >>> 0;
    }
    const batch = this.cfg.batch >>> 0;
    const wake = type === EV_RESEND || batch <= 1 || done % batch === 0 || done >= end;
    this.cnt.events++;
    if (wake) this.cnt.wakeups++;
  }
}

/** The data packets' version a config's width flags ask for (INT4 wins). */
function widthVersion(cfg: JobConfig): number {
  const f = cfg.flags ?? 0;
  return f & CFG_INT4 ? VERSION_INT4 : f & CFG_INT8 ? VERSION_INT8 : VERSION;
}

// ---- packet generation ------------------------------------------------------------

interface Built {
  frame: Uint8Array;
  /** Offset of the ainftp header in the frame. */
  h: number;
  ip: number;
  udp: number;
  ipv6: boolean;
}

const COUNTS = [1, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 11, 13, 16, 17, 31, 33, 64, 127, 719, 720, 1719, 1720];

/** An int8 / int4 datagram (issue 14): the header, then its payload's bytes at
 * random (int4: the padding nibbles of the last group too). */
function narrowDatagram(h: { type: number; version: number; jobId: number; round: number; chunk: number; rank: number; exp: number; flags: number; contributors: number; count: number }, rng: Rng): Uint8Array {
  const pb = payloadBytes(h.version === VERSION_INT8 ? 8 : 4, h.count);
  const b = new Uint8Array(32 + pb);
  writeHeader(new DataView(b.buffer), 0, h);
  for (let i = 0; i < pb; i++) b[32 + i] = rng.chance(0.1) ? rng.pick([0x7f, 0x80, 0x77, 0x88, 0xff, 0]) : rng.int(256);
  return b;
}

class Generator {
  /** Recently built valid frames, for duplicates and as mutation seeds. */
  private pool: Uint8Array[] = [];

  /** `slots` peeks at the model so that some packets bring a rank a filling
   * slot still misses (otherwise most valid packets end up as duplicates). */
  constructor(private rng: Rng, private cfg: () => JobConfig, private slots: () => readonly ModelSlot[], private key: Uint8Array) {}

  /** A rank missing from an open, filling slot of (round, chunk), with the slot's count and exp. */
  private missing(round: number, chunk: number): { rank: number; count: number; exp: number } | undefined {
    const cfg = this.cfg();
    if (chunk >= cfg.chunks) return undefined;
    const slot = this.slots()[(round & 1) * cfg.chunks + chunk];
    if (!slot || slot.tag !== ((round + 1) >>> 0) || slot.state !== SLOT_FILLING) return undefined;
    const want = wantOf(cfg, round) & ~slot.seen;
    const ranks = Array.from({ length: MEMBERS }, (_, r) => r).filter((r) => (want >> BigInt(r)) & 1n);
    return ranks.length ? { rank: this.rng.pick(ranks), count: slot.count, exp: slot.exp } : undefined;
  }

  /** The count and exp all honest senders use for (round, chunk). */
  canon(round: number, chunk: number): { count: number; exp: number } {
    let x = Math.imul((round ^ 0x9e3779b9) >>> 0, 0x85ebca6b) ^ Math.imul(chunk + 1, 0xc2b2ae35);
    x = (x ^ (x >>> 13)) >>> 0;
    const big = x % 16 === 0; // mostly short vectors, sometimes long ones
    const count = big ? COUNTS[19 + ((x >>> 4) % 4)] : COUNTS[(x >>> 4) % 19];
    return { count, exp: ((x >>> 12) % 11) - 5 };
  }

  private round(): number {
    const base = this.cfg().roundBase;
    const x = this.rng.next();
    const r = x < 0.45 ? base : x < 0.85 ? base + 1 : x < 0.92 ? base - 1 : x < 0.97 ? base + 2 : base + this.rng.int(8) - 4;
    return r >>> 0;
  }

  private chunk(): number {
    const x = this.rng.next();
    return x < 0.95 ? this.rng.int(MAP_CHUNKS) : x < 0.98 ? MAP_CHUNKS + this.rng.int(4) : this.rng.u32();
  }

  private rank(): number {
    const x = this.rng.next();
    return x < 0.94 ? this.rng.int(MEMBERS) : x < 0.98 ? MEMBERS + this.rng.int(3) : this.rng.pick([63, 64, 65, 0xffff]);
  }

  private values(n: number): Int16Array {
    const v = new Int16Array(n);
    for (let i = 0; i < n; i++) v[i] = this.rng.int16();
    return v;
  }

  /** A well-formed contribution or result with a random encapsulation. */
  valid(type = this.rng.chance(0.85) ? PKT_CONTRIB : PKT_RESULT): Built {
    const round = this.round();
    const chunk = this.chunk();
    const canon = this.canon(round, chunk);
    let count = canon.count;
    let exp = canon.exp;
    let rank = this.rank();
    const gap = type === PKT_CONTRIB && this.rng.chance(0.4) ? this.missing(round, chunk) : undefined;
    if (gap) ({ rank, count, exp } = gap);
    else {
      if (this.rng.chance(0.06)) count = this.rng.chance(0.5) ? 1 + this.rng.int(40) : 1 + this.rng.int(MAX_ELEMS);
      if (this.rng.chance(0.04)) exp = this.rng.int(65536) - 32768;
    }
    const flags = this.rng.pick([0, 0, 0, F_SATURATED, F_RETRANSMIT, F_LAST, F_SATURATED | F_LAST, F_SPEC, F_SPEC, F_SPEC | F_RETRANSMIT, this.rng.int(65536)]);
    // issue 14: mostly the job's width (int8 / int4 values, up to twice the count), sometimes another
    const want = widthVersion(this.cfg());
    const ver = this.rng.chance(0.9) ? want : this.rng.pick([VERSION, VERSION_INT8, VERSION_INT4]);
    if (ver !== VERSION && !gap && this.rng.chance(0.3)) count = Math.min(2 * MAX_ELEMS, 2 * count);
    const contributors = type === PKT_RESULT ? this.rng.int(MEMBERS + 2) : 0;
    const payload = ver === VERSION
      ? datagram({ type, jobId: JOB, round, chunk, rank, exp, flags, contributors }, this.values(count))
      : narrowDatagram({ type, version: ver, jobId: JOB, round, chunk, rank, exp, flags, contributors, count }, this.rng);
    const x = this.rng.next();
    const enc =
      x < 0.8 ? {} : x < 0.88 ? { ipv6: true } : x < 0.93 ? { vlans: 1 } : x < 0.97 ? { vlans: 2 } : { ihl: 5 + 1 + this.rng.int(10) };
    // under --auth mostly sealed right; else a wrong key, the other mode's tag, or none
    const auth = (this.cfg().flags ?? 0) & (CFG_AUTH_HDR | CFG_AUTH_FULL);
    const mode = auth & CFG_AUTH_FULL ? "full" : "header";
    const y = this.rng.next();
    const f = frame(
      !auth || y > 0.97 ? payload
      : y < 0.9 ? sealDatagram(this.key, payload, mode)
      : y < 0.95 ? sealDatagram(this.key.map((b, i) => (i === 0 ? b ^ 1 : b)), payload, mode)
      : sealDatagram(this.key, payload, mode === "full" ? "header" : "full"),
      enc,
    );
    const l2 = 14 + 4 * (enc.vlans ?? 0);
    const l3 = enc.ipv6 ? 40 : (enc.ihl ?? 5) * 4;
    const b: Built = { frame: f, ip: l2, udp: l2 + l3, h: l2 + l3 + 8, ipv6: enc.ipv6 ?? false };
    if (f.length <= LINEAR_MAX) {
      this.pool.push(f);
      if (this.pool.length > 64) this.pool.shift();
    }
    return b;
  }

  /** The owner's close frame: a few chunk indices (some out of range), forced or not. */
  close(): Uint8Array {
    const rng = this.rng;
    const list = Array.from({ length: 1 + rng.int(6) }, () => (rng.chance(0.9) ? rng.int(MAP_CHUNKS) : rng.pick([MAP_CHUNKS, 0xffff, rng.int(65536)])));
    const flags = rng.pick([0, 0, F_FORCE, F_FORCE | F_RETRANSMIT, F_CONFIRM, F_CONFIRM, F_CONFIRM | F_FORCE, rng.int(65536)]);
    const round = this.round();
    // a confirmation mostly at a scale the slots hold (the plan's), else any
    const exp = rng.chance(0.7) ? this.canon(round, list[0] & 0xffff).exp : rng.int(65536) - 32768;
    return frame(datagram({ type: PKT_CLOSE, jobId: JOB, round, chunk: 0, rank: this.rank(), flags, exp }, list));
  }

  duplicate(): Uint8Array {
    return this.pool.length ? this.rng.pick(this.pool) : this.valid().frame;
  }

  /** A valid frame with 1..3 mutations. */
  mutated(): Uint8Array {
    const b = this.valid();
    let f: Uint8Array = b.frame.slice();
    const n = 1 + this.rng.int(3);
    for (let i = 0; i < n; i++) f = this.mutate(f, b);
    return f;
  }

  private mutate(f: Uint8Array, b: Built): Uint8Array {
    const rng = this.rng;
    const dv = new DataView(f.buffer, f.byteOffset, f.byteLength);
    // Earlier mutations may have truncated the frame: writes past its end are skipped.
    const ok = (off: number, size: number) => off >= 0 && off + size <= f.length;
    const set8 = (off: number, v: number) => ok(off, 1) && (f[off] = v & 0xff);
    const set16 = (off: number, v: number, le = false) => ok(off, 2) && dv.setUint16(off, v & 0xffff, le);
    const set32 = (off: number, v: number, le = false) => ok(off, 4) && dv.setUint32(off, v >>> 0, le);
    const get16 = (off: number, le = false) => (ok(off, 2) ? dv.getUint16(off, le) : 0);
    switch (rng.int(9)) {
      case 0: { // flip bits, mostly in the headers
        const span = rng.chance(0.8) ? Math.min(f.length, b.h + 32) : f.length;
        f[rng.int(span)] ^= 1 << rng.int(8);
        return f;
      }
      case 1: // random byte
        f[rng.int(Math.min(f.length, b.h + 40))] = rng.int(256);
        return f;
      case 2: // truncate (test runs need at least 14 bytes)
        return f.slice(0, 14 + rng.int(Math.max(1, f.length - 14)));
      case 3: { // trailer bytes after the packet
        const out = new Uint8Array(f.length + 1 + rng.int(64));
        out.set(f);
        for (let i = f.length; i < out.length; i++) out[i] = rng.int(256);
        return out;
      }
      case 4: { // a random value in one ainftp header field
        const fields: [number, 1 | 2 | 4][] = [[0, 4], [4, 1], [5, 1], [6, 2], [8, 4], [12, 4], [16, 4], [20, 2], [22, 2], [24, 2], [26, 2], [28, 4]];
        const [off, size] = rng.pick(fields);
        const val = rng.chance(0.5) ? rng.pick([0, 1, 2, 3, 4, 9, 0xff, 0xffff, 0xffffffff, MAGIC]) : rng.u32();
        if (size === 1) set8(b.h + off, val);
        else if (size === 2) set16(b.h + off, val, true);
        else set32(b.h + off, val, true);
        return f;
      }
      case 5: { // round / chunk / rank / count near their limits
        const cfg = this.cfg();
        const which = rng.int(4);
        if (which === 0) set32(b.h + 12, cfg.roundBase + rng.int(7) - 3, true);
        else if (which === 1) set32(b.h + 16, rng.int(cfg.chunks + 3), true);
        else if (which === 2) set16(b.h + 20, rng.int(MEMBERS + 3), true);
        else set16(b.h + 22, get16(b.h + 22, true) + rng.int(5) - 2, true);
        return f;
      }
      case 6: { // IP / UDP length fields
        const delta = rng.pick([-9, -2, -1, 1, 2, 8, 1000]);
        const o = rng.chance(0.5) ? (b.ipv6 ? b.ip + 4 : b.ip + 2) : b.udp + 4;
        set16(o, rng.chance(0.2) ? rng.int(65536) : get16(o) + delta);
        return f;
      }
      case 7: { // IP header: IHL, fragment bits, protocol, port
        const which = rng.int(4);
        if (which === 0 && !b.ipv6) set8(b.ip, 0x40 | rng.int(16));
        else if (which === 1 && !b.ipv6) set16(b.ip + 6, rng.pick([0x2000, 0x0001, 0x4000, 0x2001, 0x1fff, rng.int(65536)]));
        else if (which === 2) set8(b.ipv6 ? b.ip + 6 : b.ip + 9, rng.pick([6, 1, 44, 58, 17, rng.int(256)]));
        else set16(b.udp + 2, rng.pick([PORT + 1, PORT - 1, 53, 4789, rng.int(65536)]));
        return f;
      }
      default: // ethertype of the innermost layer-2 header
        set16(b.ip - 2, rng.pick([0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x88cc, rng.int(65536)]));
        return f;
    }
  }

  /** Random bytes, sometimes shaped like IPv4/IPv6 UDP to our port. */
  noise(): Uint8Array {
    const rng = this.rng;
    const f = new Uint8Array(14 + rng.int(120));
    for (let i = 0; i < f.length; i++) f[i] = rng.int(256);
    const dv = new DataView(f.buffer);
    if (rng.chance(0.6)) {
      const v6 = rng.chance(0.3);
      dv.setUint16(12, v6 ? 0x86dd : 0x0800);
      if (!v6 && f.length >= 14 + 20) {
        f[14] = 0x45;
        f[14 + 9] = 17;
        dv.setUint16(14 + 6, 0);
        if (f.length >= 14 + 24) dv.setUint16(14 + 20 + 2, PORT);
      } else if (v6 && f.length >= 14 + 40) {
        f[14 + 6] = 17;
        if (f.length >= 14 + 44) dv.setUint16(14 + 40 + 2, PORT);
      }
    }
    return f;
  }

  /** Larger than the linear area: the frame spans several buffers and the
   * program reads the payload across them (xdp.frags). */
  oversize(): Uint8Array {
    const vals = this.values(MAX_ELEMS);
    const round = this.round();
    const chunk = this.rng.int(MAP_CHUNKS);
    const dg = datagram({ type: PKT_CONTRIB, jobId: JOB, round, chunk, rank: this.rank(), ...this.canon(round, chunk), count: MAX_ELEMS }, vals);
    const x = this.rng.next();
    if (x < 0.4) return frame(dg, { vlans: 2 }); // 9010 bytes
    if (x < 0.8) return frame(dg, { ipv6: true }); // 9022 bytes
    const f = frame(dg);
    const out = new Uint8Array(f.length + 7 + this.rng.int(500));
    out.set(f);
    return out; // a valid 9002-byte packet in a longer frame
  }
}

// ---- kernel readers ------------------------------------------------------------------

function kernelBank(r: ReflexObject, bank: number): { slotsDone: number; resultsDone: number } {
  const v = new Uint32Array(SIZEOF.ainftp_bank_state / 4);
  const rc = libbpf.bpf_map_lookup_elem(r.mapFd("bank_state"), new Uint32Array([bank]), v);
  if (rc < 0) throw new Error(`bank_state lookup failed: ${rc}`);
  return { slotsDone: v[0], resultsDone: v[1] };
}

function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return -1;
}

function hex(f: Uint8Array, max = 160): string {
  return Buffer.from(f.subarray(0, max)).toString("hex") + (f.length > max ? `… (${f.length} bytes)` : ` (${f.length} bytes)`);
}

// ---- the run -------------------------------------------------------------------------

describe(`fuzz: ${PACKETS} random and mutated packets vs a TS model (seed ${SEED})`, () => {
  let r: ReflexObject | undefined;
  let ring: EventRing;
  let contribs: EventRing;
  beforeAll(async () => {
    r = await ReflexObject.load({ chunks: MAP_CHUNKS, port: PORT });
    ring = r.events();
    contribs = new EventRing(r.mapFd("contribs"), SIZEOF.ainftp_contrib_rec, 512);
    console.log(`fuzz seed ${SEED} (AINFTP_FUZZ_SEED=${SEED} reproduces), ${PACKETS} packets`);
  });
  afterAll(() => {
    contribs?.close();
    r?.close();
  });

  test("kernel state, sums, results, events and counters equal the model", () => {
    if (!r) throw new Error("not loaded");
    const k = r;
    const rng = new Rng(SEED);
    let cfg: JobConfig = {
      // Start 150..250 rounds before 2^32: the window crosses the u32 wrap mid-run.
      jobId: JOB, roundBase: (2 ** 32 - 150 - rng.int(100)) >>> 0, memberMask: allMembers(MEMBERS), members: MEMBERS,
      chunkElems: MAX_ELEMS, chunks: MAP_CHUNKS, batch: 4, ownedChunks: MAP_CHUNKS, flags: 0,
    };
    k.setConfig(cfg);
    k.resetBank(0);
    k.resetBank(1);
    const model = new Model(cfg, MAP_CHUNKS, PORT);
    // every rank speaks from the frames' source address but rank 2, whose
    // member address differs: with CHECK_SOURCE its packets are refused
    model.memberAddrs = Array.from({ length: MEMBERS }, (_, rank) => ipv4ToBe32(rank === 2 ? "10.99.0.7" : "10.99.0.1"));
    k.setMemberAddrs(model.memberAddrs);
    // the job key of CFG_AUTH_*: frames are mostly sealed under it (Generator.valid)
    model.key = Uint8Array.from({ length: 16 }, () => rng.int(256));
    k.setJobKey(model.key);
    const gen = new Generator(rng, () => cfg, () => model.slots, model.key);
    const counters0 = k.counters();
    ring.poll(0);
    const stats = { configChanges: 0, completedSeen: 0, checkpoints: 0, wrapped: false, multiBuffer: 0 };
    const history: string[] = []; // recent config changes, for failure reports

    const kernelDelta = (): Counters => {
      const now = k.counters();
      const d = {} as Counters;
      for (const n of COUNTERS) d[n] = now[n] - counters0[n];
      return d;
    };

    const checkState = (at: number) => {
      stats.checkpoints++;
      const where = `after packet ${at} (seed ${SEED})`;
      // the contribs ring: exactly the model's records, in order
      const recs: typeof model.ring = [];
      for (let n; (n = contribs.pollRaw(0)) > 0; ) {
        const b = contribs.bytes;
        for (let i = 0; i < n; i++) {
          const v = new DataView(b.buffer, i * SIZEOF.ainftp_contrib_rec, SIZEOF.ainftp_contrib_rec);
          const count = v.getUint16(10, true);
          recs.push({
            round: v.getUint32(0, true), chunk: v.getUint32(4, true), rank: v.getUint16(8, true), count, exp: v.getInt16(12, true),
            v: Array.from(new Int16Array(b.buffer, i * SIZEOF.ainftp_contrib_rec + 16, count)),
          });
        }
      }
      expect(recs, `contribs ring ${where}`).toEqual(model.ring);
      model.ring = [];
      expect(kernelDelta(), `counters ${where}`).toEqual(model.cnt);
      for (let idx = 0; idx < BANKS * MAP_CHUNKS; idx++) {
        const ks: SlotState = k.slot(idx);
        const ms = model.slots[idx];
        expect(ks, `slot ${idx} ${where}`).toEqual({ ...ms });
        const kraw = k.rawSums(idx);
        const d = firstDiff(kraw, model.raw[idx]);
        if (d >= 0)
          throw new Error(`raw acc[${idx}][${d}]: kernel ${kraw[d]} model ${model.raw[idx][d]} (slot count ${ms.count}) ${where}`);
        // a slot whose every contribution the sentry rejected, or that counted
        // ring-mode contributions, holds no sum of its round's contributors
        const width = model.narrow.get(idx) ?? 16;
        const decodable = ms.contributors > 0 && !model.ringCounted.has(idx) && width === 16;
        const ksum = decodable ? k.sums(idx, ms.count) : new Int32Array(0);
        const dd = firstDiff(ksum, decodable ? model.acc[idx].subarray(0, ms.count) : new Int32Array(0));
        // int8 / int4 slots: the raw words above are exact; their lanes decode to sums within the lanes' range
        if (ms.contributors > 0 && !model.ringCounted.has(idx) && (width === 8 || width === 4)) {
          const lanes = decodeSumsNarrow(new Uint16Array(kraw.buffer, kraw.byteOffset, 2 * MAX_ELEMS), ms.count, ms.contributors, width);
          const Q = width === 8 ? 128 : 8;
          for (const v of lanes) if (v < -Q * ms.contributors || v > (Q - 1) * ms.contributors) throw new Error(`narrow sums(${idx}): ${v} beyond ${ms.contributors} contributions ${where}`);
        }
        if (dd >= 0)
          throw new Error(`sums(${idx})[${dd}]: kernel ${ksum[dd]} model ${model.acc[idx][dd]} (slot count ${ms.count}) ${where}`);
        const kr = k.result(idx);
        const mr = model.results[idx];
        expect({ tag: kr.tag, count: kr.count, contributors: kr.contributors, exp: kr.exp, flags: kr.flags, writes: kr.writes, rank: kr.rank }, `result ${idx} ${where}`)
          .toEqual({ tag: mr.tag, count: mr.count, contributors: mr.contributors, exp: mr.exp, flags: mr.flags, writes: mr.writes, rank: mr.rank });
        const kv = new Int16Array(kr.v.buffer, kr.v.byteOffset, MAX_ELEMS);
        const dv = firstDiff(kv, mr.v);
        if (dv >= 0) throw new Error(`result[${idx}].v[${dv}]: kernel ${kv[dv]} model ${mr.v[dv]} ${where}`);
      }
      for (let b = 0; b < BANKS; b++) expect(kernelBank(k, b), `bank_state ${b} ${where}`).toEqual(model.banks[b]);
    };

    const drain = (at: number) => {
      const got = ring.poll(0);
      expect(got, `ring-buffer events up to packet ${at} (seed ${SEED})`).toEqual(model.events);
      stats.completedSeen += got.filter((e) => e.type === EV_SLOT_COMPLETE).length;
      model.events = [];
    };

    const changeConfig = () => {
      stats.configChanges++;
      const x = rng.next();
      const old = cfg.roundBase;
      let note: string;
      if (x < 0.45) {
        // The owner moves the window past round `old` and zeroes its bank.
        cfg = { ...cfg, roundBase: (old + 1) >>> 0 };
        k.resetBank(old & 1);
        model.resetBank(old & 1);
        note = `base ${old}→${cfg.roundBase}, resetBank(${old & 1})`;
      } else if (x < 0.6) {
        cfg = { ...cfg, roundBase: (old + 2) >>> 0 };
        for (const b of [0, 1]) {
          k.resetBank(b);
          model.resetBank(b);
        }
        note = `base ${old}→${cfg.roundBase}, resetBank(0, 1)`;
      } else if (x < 0.67) {
        cfg = { ...cfg, roundBase: (old - 1 - rng.int(2)) >>> 0 }; // a restarted owner, late packets reach older slots
        note = `base ${old}→${cfg.roundBase} (back)`;
      } else if (x < 0.74) {
        const y = rng.next();
        cfg = {
          ...cfg,
          memberMask: y < 0.5 ? allMembers(MEMBERS) : y < 0.9 ? allMembers(MEMBERS) & ~(1n << BigInt(rng.int(MEMBERS))) : BigInt(rng.int(1 << (MEMBERS + 2))),
        };
        note = `memberMask 0b${cfg.memberMask.toString(2)}`;
      } else if (x < 0.81) {
        // a round's active set: every member, all but a straggler, or any bits
        const mask = () => {
          const y = rng.next();
          return y < 0.4 ? 0n : y < 0.85 ? allMembers(MEMBERS) & ~(1n << BigInt(rng.int(MEMBERS))) : BigInt(rng.int(1 << (MEMBERS + 2)));
        };
        cfg = { ...cfg, bankMask: [mask(), mask()] };
        note = `bankMask [0b${cfg.bankMask![0].toString(2)}, 0b${cfg.bankMask![1].toString(2)}]`;
        // and a round's plan: the owners of the window's rounds (or an older one)
        if (rng.chance(0.7)) {
          const round = (cfg.roundBase + rng.int(3) - 1) >>> 0;
          const owners = [...Array(MEMBERS).keys()].filter(() => rng.chance(0.7));
          if (owners.length === 0) owners.push(rng.int(MEMBERS));
          k.setPlan(round, owners);
          model.plans[round & 1] = { tag: (round + 1) >>> 0, owners };
          note += `, plan of round ${round}: owners ${owners.join(",")}`;
        }
      } else if (x < 0.89) {
        cfg = {
          ...cfg, batch: rng.pick([0, 1, 2, 3, 4, 32]), ownedChunks: rng.int(2 * MAP_CHUNKS + 1),
          flags: rng.pick([0, 0, CFG_CHECK_SOURCE, CFG_SENTRY, CFG_SENTRY, CFG_SENTRY | CFG_CHECK_SOURCE, CFG_CONTRIBS_TO_RING, CFG_CONTRIBS_TO_RING | CFG_SENTRY]) |
            rng.pick([0, 0, CFG_AUTH_HDR, CFG_AUTH_FULL, CFG_AUTH_HDR | CFG_AUTH_FULL]) |
            rng.pick([0, 0, 0, CFG_INT8, CFG_INT8, CFG_INT4, CFG_INT4, CFG_INT8 | CFG_INT4]),
        };
        // close or open the sentry's gate of a few chunks
        const gates = k.gates();
        for (let g = rng.int(4); g > 0; g--) {
          const chunk = rng.int(MAP_CHUNKS);
          const closed = rng.next() < 0.5;
          model.gate[chunk] = closed ? "closed" : "open";
          // both of the chunk's gates (full and short chunks)
          const lo = closed ? 2 ** 31 - 2 : rng.pick([0, 5, 2 ** 31 - 1]);
          const hi = closed ? 2 ** 31 - 1 : rng.pick([0, -(2 ** 31)]);
          for (const at of [2 * chunk, 2 * chunk + 1]) [gates[2 * at], gates[2 * at + 1]] = [lo, hi];
        }
        note = `batch ${cfg.batch}, ownedChunks ${cfg.ownedChunks}, flags ${cfg.flags}, gates ${model.gate.join(",")}`;
      } else if (x < 0.95) {
        cfg = { ...cfg, chunkElems: rng.pick([MAX_ELEMS, MAX_ELEMS, 1719, 720, 16, 0xffff]) };
        note = `chunkElems ${cfg.chunkElems}`;
      } else {
        cfg = { ...cfg, chunks: rng.pick([MAP_CHUNKS, MAP_CHUNKS, MAP_CHUNKS, MAP_CHUNKS, MAP_CHUNKS - 2, 1]) };
        note = `chunks ${cfg.chunks}`;
      }
      k.setConfig(cfg);
      model.cfg = cfg;
      if (cfg.roundBase < 1000) stats.wrapped = true;
      history.push(note);
      if (history.length > 8) history.shift();
    };

    const t0 = performance.now();
    for (let i = 0; i < PACKETS; i++) {
      if (rng.chance(1 / 150)) changeConfig();
      if (rng.chance(1 / 20_000)) {
        const b = rng.int(2);
        k.resetBank(b);
        model.resetBank(b);
      }
      const x = rng.next();
      const f =
        x < 0.49 ? gen.valid().frame
        : x < 0.5 ? gen.close()
        : x < 0.6 ? gen.duplicate()
        : x < 0.9 ? gen.mutated()
        : x < 0.97 ? gen.noise()
        : x < 0.99 ? gen.valid(PKT_RESULT).frame // (results twice as often as before: result_dup came 0 to 11 times a run)
        : gen.oversize();
      const before = { ...model.cnt };
      const want = model.run(f);
      // frames in several buffers (xdp.frags) that were summed or stored
      if (f.length > LINEAR_MAX && (model.cnt.summed > before.summed || model.cnt.results > before.results)) stats.multiBuffer++;
      const got = k.testRun(f).action;
      if (got !== want) {
        const changed = COUNTERS.filter((n) => model.cnt[n] !== before[n]).join(", ");
        throw new Error(
          `packet ${i} (seed ${SEED}): kernel action ${got}, model ${want} (model counted: ${changed})\n` +
          `frame ${hex(f)}\nconfig ${JSON.stringify({ ...cfg, memberMask: cfg.memberMask.toString(2), bankMask: cfg.bankMask?.map((b) => b.toString(2)) })}\nrecent config changes: ${history.join("; ")}`,
        );
      }
      // Counter deltas per packet: cheap (one per-CPU map lookup) and pinpoints the packet.
      {
        const d = kernelDelta();
        if (COUNTERS.some((n) => d[n] !== model.cnt[n])) {
          const diff = COUNTERS.filter((n) => d[n] !== model.cnt[n]).map((n) => `${n}: kernel ${d[n]} model ${model.cnt[n]}`);
          throw new Error(`counters after packet ${i} (seed ${SEED}): ${diff.join(", ")}\nframe ${hex(f)}\nrecent config changes: ${history.join("; ")}`);
        }
      }
      if (i % DRAIN_EVERY === DRAIN_EVERY - 1) drain(i);
      if (i % CHECK_EVERY === CHECK_EVERY - 1) checkState(i);
    }
    drain(PACKETS);
    checkState(PACKETS);
    const ms = performance.now() - t0;
    const c = model.cnt;
    console.log(
      `fuzz: ${PACKETS} packets in ${(ms / 1000).toFixed(1)} s, ${stats.checkpoints} checkpoints, ${stats.configChanges} config changes, ` +
      `final round_base ${cfg.roundBase}${stats.wrapped ? " (wrapped)" : ""}; ` +
      `summed ${c.summed}, completed ${c.completed}, results ${c.results}, duplicate ${c.duplicate}, stale ${c.stale_round}, late ${c.late}, not_owner ${c.not_owner}, mal_contributors ${c.mal_contributors}, bad_mac ${c.bad_mac}, ` +
      `future ${c.future_round}, mal_scale ${c.mal_scale}, spec_refused ${c.spec_refused}, spec_replaced ${c.spec_replaced}, result_dup ${c.result_dup}, passed ${c.passed}, rx ${c.rx}; ${stats.multiBuffer} frames of several buffers summed or stored`,
    );
    if (PACKETS >= 10_000) expect(stats.multiBuffer, "frames longer than the linear part were summed (xdp.frags)").toBeGreaterThan(0);
    // The run must have exercised what it claims to.
    expect(stats.completedSeen).toBe(c.completed);
    expect(k.sentryWorkers(64).map((w) => [w.accepted, w.rejected]), "sentry counts per rank").toEqual(model.workers);
    // ringbuf_full needs a stalled reader, results_xsk an AF_XDP socket (test/xsk.test.ts)
    for (const n of COUNTERS) if (n !== "ringbuf_full" && n !== "results_xsk") expect(c[n], `counter ${n} never moved`).toBeGreaterThan(0);
    expect(c.ringbuf_full).toBe(0);
    if (PACKETS >= 100_000) expect(stats.wrapped, "the round window crossed 2^32").toBe(true);
  }, 60_000);
});
