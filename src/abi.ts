// The TypeScript mirror of bpf/include/ainftp_abi.h. Hand-written;
// test/abi.test.ts compares every offset, size and constant with what the C
// compiler laid out, so a change on one side alone fails the suite.

export const MAX_WORKERS = 64;
/** int16 elements per packet at most: a 9000-byte MTU's (the program is
 * frags-aware, so a frame may exceed a page; this bounds the map entries). */
export const MAX_ELEMS = 4464;
export const ELEMS_MTU1500 = 720;
/** The most veth's native XDP took before the program was frags-aware
 * (a 3504-byte MTU, one page per frame). */
export const ELEMS_ONE_PAGE = 1720;
/** Elements per packet at most when contributions and results carry a MAC (8 bytes more per frame). */
export const MAX_ELEMS_AUTH = MAX_ELEMS - 4;
export const MAX_CHUNKS = 65536;
export const BANKS = 2;
export const MAX_ROUND = 0xfffffffe;
export const ACC_BIAS = 32768;
export const ACC_BIAS8 = 128;
export const ACC_BIAS4 = 8;
export const DEFAULT_PORT = 47000;
export const DEFAULT_BATCH = 32;
export const SENTRY_SAMPLES = 16;
export const ENERGY_ZERO = -32768;
export const MAGIC = 0x464e4941;
export const VERSION = 1;
/** Data packets' version byte names their lane width (issue 14): int8 and
 * int4 payloads (ainftp_abi.h); control and CLOSE packets are VERSION. */
export const VERSION_INT8 = 2;
export const VERSION_INT4 = 3;
/** Bit widths a job may run at, and each one's data-packet version. */
export const BIT_WIDTHS = [16, 8, 4] as const;
export type BitWidth = (typeof BIT_WIDTHS)[number];
export function versionOfBits(bits: BitWidth): number {
  return bits === 8 ? VERSION_INT8 : bits === 4 ? VERSION_INT4 : VERSION;
}
/** Payload bytes of a data packet of `count` values at `bits` (ainftp_payload_bytes). */
export function payloadBytes(bits: BitWidth, count: number): number {
  return bits === 8 ? count : bits === 4 ? ((count + 15) >>> 4) << 3 : 2 * count;
}

export const PKT_CONTRIB = 1;
export const PKT_RESULT = 2;
export const PKT_CONTROL = 3;
/** The owner's userspace to its own program (BPF_PROG_TEST_RUN only): close
 * the listed slots (ReflexMaps.closeSlots; see ainftp_abi.h). */
export const PKT_CLOSE = 4;

export const F_RETRANSMIT = 0x0001;
export const F_SATURATED = 0x0002;
export const F_LAST = 0x0004;
/** CLOSE: close the listed slots whatever they hold. */
export const F_FORCE = 0x0008;
/** CONTRIB quantized under a predicted scale, sent before the plan (ainftp_abi.h AINFTP_F_SPEC). */
export const F_SPEC = 0x0010;
/** CLOSE: confirm the listed slots at the plan's scale (the header's exp) instead of closing them. */
export const F_CONFIRM = 0x0020;

export const EV_SLOT_COMPLETE = 1;
export const EV_RESULT = 2;
export const EV_RESEND = 3;

export const CTRL_HELLO = 1;
export const CTRL_EXPS = 2;
export const CTRL_EXPS_REQ = 3;
export const CTRL_BYE = 4;
export const CTRL_STATUS_REQ = 5;
export const CTRL_STATUS = 6;
export const CTRL_EXPS_MAX = 7;
export const CTRL_MEMBER = 8;
/** A passive member asks an owner for results it lacks: payload = u32 chunk indices. */
export const CTRL_RESULT_REQ = 9;

/** Config flag: check each packet's IPv4 source against its rank's address. */
export const CFG_CHECK_SOURCE = 0x1;
/** Config flag: redirect result packets to the AF_XDP socket of their RX queue. */
export const CFG_RESULTS_TO_XSK = 0x2;
/** Config flag: drop contributions whose energy is outside their chunk's sentry gate. */
export const CFG_SENTRY = 0x4;
/** Config flag: copy accepted contributions to the contribs ring and sum nothing (robust aggregation). */
export const CFG_CONTRIBS_TO_RING = 0x8;
/** Config flag: contributions and results carry a MAC of their header under the job key. */
export const CFG_AUTH_HDR = 0x10;
/** Config flag: ... of their header and payload (wins over CFG_AUTH_HDR). */
export const CFG_AUTH_FULL = 0x20;
/** Config flag: the job's data packets are int8 (VERSION_INT8). */
export const CFG_INT8 = 0x40;
/** Config flag: the job's data packets are int4 (VERSION_INT4; wins over CFG_INT8). */
export const CFG_INT4 = 0x80;
/** The config flag of a bit width. */
export function cfgOfBits(bits: BitWidth): number {
  return bits === 8 ? CFG_INT8 : bits === 4 ? CFG_INT4 : 0;
}
/** Bytes of the data plane's MAC after a contribution's or result's payload. */
export const MAC_BYTES = 8;

export const SLOT_EMPTY = 0;
export const SLOT_FILLING = 1;
export const SLOT_COMPLETE = 2;

/** Bytes of Ethernet + IPv4 + UDP + ainftp header in front of the payload. */
export const FRAME_OVERHEAD_V4 = 14 + 20 + 8 + 32;

type Field = readonly [offset: number, size: number];

/** Field layouts, keyed "struct.field" as the shim's ainftp_abi_describe() names them. */
export const LAYOUT = {
  ainftp_wire_hdr: {
    magic: [0, 4], version: [4, 1], type: [5, 1], flags: [6, 2], job_id: [8, 4],
    round: [12, 4], chunk: [16, 4], rank: [20, 2], count: [22, 2], exp: [24, 2],
    contributors: [26, 2], reserved: [28, 4],
  },
  ainftp_config: {
    job_id: [0, 4], round_base: [4, 4], member_mask: [8, 8], members: [16, 2],
    chunk_elems: [18, 2], chunks: [20, 4], batch: [24, 4], owned_chunks: [28, 4],
    flags: [32, 4], results_per_round: [36, 4], bank_mask: [40, 16],
  },
  ainftp_slot: {
    lock: [0, 4], tag: [4, 4], seen: [8, 8], count: [16, 2], contributors: [18, 2],
    exp: [20, 2], state: [22, 2], completions: [24, 4], spec: [28, 4], rejected: [32, 8],
  },
  ainftp_gate: { lo: [0, 4], hi: [4, 4] },
  ainftp_obs: { tag: [0, 4], reserved: [4, 4], energy: [8, 2 * MAX_WORKERS] },
  ainftp_sentry_worker: { accepted: [0, 8], rejected: [8, 8] },
  ainftp_contrib_rec: { round: [0, 4], chunk: [4, 4], rank: [8, 2], count: [10, 2], exp: [12, 2], reserved: [14, 2], v: [16, 2 * MAX_ELEMS] },
  ainftp_acc: { v: [0, 4 * MAX_ELEMS] }, // biased, lane-interleaved: decodeSums()
  ainftp_result: {
    tag: [0, 4], count: [4, 2], contributors: [6, 2], exp: [8, 2], flags: [10, 2],
    writes: [12, 2], rank: [14, 2], v: [16, 2 * MAX_ELEMS],
  },
  ainftp_bank_state: { slots_done: [0, 4], results_done: [4, 4] },
  ainftp_plan: { tag: [0, 4], owners: [4, 2], reserved: [6, 2], owner: [8, MAX_WORKERS] },
  ainftp_key: { k0: [0, 8], k1: [8, 8] },
  ainftp_event: { type: [0, 2], contributors: [2, 2], round: [4, 4], chunk: [8, 4], index: [12, 4] },
} as const satisfies Record<string, Record<string, Field>>;

export const SIZEOF = {
  ainftp_wire_hdr: 32,
  ainftp_config: 56,
  ainftp_slot: 40,
  ainftp_gate: 8,
  ainftp_obs: 8 + 2 * MAX_WORKERS,
  ainftp_sentry_worker: 16,
  ainftp_contrib_rec: 16 + 2 * MAX_ELEMS,
  ainftp_acc: 4 * MAX_ELEMS,
  ainftp_result: 16 + 2 * MAX_ELEMS,
  ainftp_bank_state: 8,
  ainftp_plan: 8 + MAX_WORKERS,
  ainftp_key: 16,
  ainftp_event: 16,
  ainftp_counters: 0, // set below from COUNTERS
};

/** Counter ids in enum order; names are the stable keys of `status --json`. */
export const COUNTERS = [
  "rx", "summed", "elems_summed", "duplicate", "stale_round", "future_round", "foreign_job",
  "not_member", "completed", "results", "result_dup", "wakeups", "events", "ringbuf_full",
  "control", "passed", "saturated",
  "mal_trunc_eth", "mal_trunc_ip", "mal_trunc_udp", "mal_trunc_hdr", "mal_fragment",
  "mal_magic", "mal_version", "mal_type", "mal_rank", "mal_chunk", "mal_count", "mal_scale",
  "mal_reserved", "mal_round", "resend_req", "bad_source", "results_xsk",
  "sentry_rejected", "contribs_ring", "late", "not_owner", "mal_contributors", "bad_mac",
  "bad_width", "result_early_dup", "result_contested", "result_displaced", "result_window",
  "spec_refused", "spec_replaced",
] as const;
export type CounterName = (typeof COUNTERS)[number];
export type Counters = Record<CounterName, number>;
export const CNT = Object.fromEntries(COUNTERS.map((n, i) => [n, i])) as Record<CounterName, number>;
SIZEOF.ainftp_counters = 8 * COUNTERS.length;

/** What each counter means, for `status` and the README. */
export const COUNTER_HELP: Record<CounterName, string> = {
  rx: "packets addressed to our UDP port (IPv4 first fragments and IPv6 without extension headers)",
  summed: "contributions added into a slot",
  elems_summed: "int16 elements added",
  duplicate: "contribution from a rank already in the slot (ignored)",
  stale_round: "round below the window, or its bank already holds a newer round",
  future_round: "round above the window",
  foreign_job: "job id differs from the attached job",
  not_member: "rank not in the member set",
  completed: "slots that reached every expected member, or that the owner closed",
  results: "result packets stored for userspace",
  result_dup: "the chunk owner's result for a round already stored (a copy), or one racing a write",
  wakeups: "ring-buffer events that woke userspace",
  events: "ring-buffer events submitted",
  ringbuf_full: "events lost: ring buffer full",
  control: "control packets passed to the stack",
  passed: "packets not for ainftp, passed untouched",
  saturated: "summed contributions the sender flagged as clipped",
  mal_trunc_eth: "malformed: shorter than Ethernet/VLAN header (passed: not provably ours)",
  mal_trunc_ip: "malformed: truncated IP header or bad IP length",
  mal_trunc_udp: "malformed: truncated UDP header or bad UDP length",
  mal_trunc_hdr: "malformed: shorter than the ainftp header",
  mal_fragment: "malformed: IP fragment addressed to our port",
  mal_magic: "malformed: bad magic",
  mal_version: "malformed: unsupported version",
  mal_type: "malformed: unknown packet type",
  mal_rank: "malformed: rank >= members",
  mal_chunk: "malformed: chunk >= chunks",
  mal_count: "malformed: element count 0, too large, or not matching the payload",
  mal_scale: "malformed: scale or count differs from the slot's first contribution",
  mal_reserved: "malformed: reserved field not zero",
  mal_round: "malformed: round number in the reserved top range",
  resend_req: "retransmitted contribution to a completed slot: result resent",
  bad_source: "a rank's packet from an address that is not that member's",
  results_xsk: "result packets redirected to the AF_XDP socket (arena UMEM)",
  sentry_rejected: "contributions the sentry dropped: energy outside the chunk's gate (not summed)",
  contribs_ring: "contributions copied to userspace for robust aggregation (--aggregate)",
  late: "contributions to a slot that had closed without them (a deadline or the round's active set)",
  not_owner: "result from a rank that does not own the chunk in the round's plan",
  mal_contributors: "malformed: result whose contributor count is 0 or above the members (or the round's active set)",
  bad_mac: "contribution or result whose MAC under the job key does not match (--auth)",
  bad_width: "contribution or result of another bit width than the job's (--bits)",
  result_early_dup: "result before its round's plan, for an entry holding the same rank's result of the round (a copy)",
  result_contested: "result before its round's plan, for an entry holding another rank's result of the round (one of the two is forged)",
  result_displaced: "result stored before its round's plan, replaced by the rank the previous round's plan names as the chunk's owner (presumed forged)",
  result_window: "results among stale_round and future_round (a breakdown, counted there too)",
  spec_refused: "speculative contributions (sent before the plan, under a predicted scale) at another scale than their slot's: not summed",
  spec_replaced: "speculative slots emptied by a contribution at the plan's scale (the predicted scale was wrong)",
};

/** Counters that count a packet dropped for what it said (a reason), as
 * `status` and `swarm status` list them: malformed, out of window, not from
 * whom it claims, or not the owner's. */
export const DROP_REASONS = [
  "stale_round", "future_round", "foreign_job", "not_member", "result_dup", "mal_trunc_eth", "mal_trunc_ip", "mal_trunc_udp",
  "mal_trunc_hdr", "mal_fragment", "mal_magic", "mal_version", "mal_type", "mal_rank", "mal_chunk", "mal_count", "mal_scale",
  "mal_reserved", "mal_round", "bad_source", "sentry_rejected", "not_owner", "mal_contributors", "bad_mac",
  "bad_width", "result_early_dup", "result_contested", "result_displaced",
] as const satisfies readonly CounterName[];

/** The non-zero drop reasons of a counter set, in DROP_REASONS order. */
export function dropsOf(c: Counters): Partial<Record<(typeof DROP_REASONS)[number], number>> {
  const out: Partial<Record<(typeof DROP_REASONS)[number], number>> = {};
  for (const n of DROP_REASONS) if (c[n]) out[n] = c[n];
  return out;
}

/** The round_plan entry of a round (see ainftp_abi.h): chunk c is owned by
 * owners[c % owners.length]; the ranks ascending, as the plan lists them. */
export function encodePlan(round: number, owners: readonly number[]): Uint8Array {
  if (owners.length < 1 || owners.length > MAX_WORKERS) throw new RangeError(`a plan has 1..${MAX_WORKERS} owners, not ${owners.length}`);
  const b = new Uint8Array(SIZEOF.ainftp_plan);
  const v = new DataView(b.buffer);
  v.setUint32(LAYOUT.ainftp_plan.tag[0], (round + 1) >>> 0, true);
  v.setUint16(LAYOUT.ainftp_plan.owners[0], owners.length, true);
  b.set(owners, LAYOUT.ainftp_plan.owner[0]);
  return b;
}

/** Physical position in the acc map of logical element j of a slot: the
 * middle two of every group of four are swapped (two lanes per 64-bit add). */
export function accPosition(j: number): number {
  const k = j & 3;
  return k === 1 || k === 2 ? j ^ 3 : j;
}

/** The true int32 sums of `count` elements from an acc entry (raw biased
 * lanes, see ainftp_abi.h) that holds `contributors` contributions. */
export function decodeSums(raw: Uint32Array, count: number, contributors: number, out = new Int32Array(count)): Int32Array {
  const bias = ACC_BIAS * contributors;
  let j = 0;
  for (; j + 4 <= count; j += 4) {
    out[j] = raw[j] - bias;
    out[j + 1] = raw[j + 2] - bias;
    out[j + 2] = raw[j + 1] - bias;
    out[j + 3] = raw[j + 3] - bias;
  }
  for (; j < count; j++) out[j] = raw[accPosition(j)] - bias;
  return out;
}

/** The true sums of `count` elements from an acc entry of an int8 or int4
 * job (16-bit lanes: value 8g + k at lane 8g + 4 * (k & 1) + (k >> 1),
 * biased by ACC_BIAS8 or ACC_BIAS4 per contribution; see ainftp_abi.h). */
export function decodeSumsNarrow(raw: Uint16Array, count: number, contributors: number, bits: 8 | 4, out = new Int32Array(count)): Int32Array {
  const bias = (bits === 8 ? ACC_BIAS8 : ACC_BIAS4) * contributors;
  for (let j = 0; j < count; j++) {
    const k = j & 7;
    out[j] = raw[(j - k) + 4 * (k & 1) + (k >> 1)] - bias;
  }
  return out;
}

// ---- encoders / decoders ----------------------------------------------------

export interface WireHeader {
  magic?: number;
  version?: number;
  type: number;
  flags?: number;
  jobId: number;
  round: number;
  chunk: number;
  rank: number;
  count: number;
  exp?: number;
  contributors?: number;
  reserved?: number;
}

const H = LAYOUT.ainftp_wire_hdr;

export function writeHeader(view: DataView, off: number, h: WireHeader): void {
  view.setUint32(off + H.magic[0], h.magic ?? MAGIC, true);
  view.setUint8(off + H.version[0], h.version ?? VERSION);
  view.setUint8(off + H.type[0], h.type);
  view.setUint16(off + H.flags[0], h.flags ?? 0, true);
  view.setUint32(off + H.job_id[0], h.jobId >>> 0, true);
  view.setUint32(off + H.round[0], h.round >>> 0, true);
  view.setUint32(off + H.chunk[0], h.chunk >>> 0, true);
  view.setUint16(off + H.rank[0], h.rank, true);
  view.setUint16(off + H.count[0], h.count, true);
  view.setInt16(off + H.exp[0], h.exp ?? 0, true);
  view.setUint16(off + H.contributors[0], h.contributors ?? 0, true);
  view.setUint32(off + H.reserved[0], h.reserved ?? 0, true);
}

export function readHeader(view: DataView, off: number): Required<WireHeader> {
  return {
    magic: view.getUint32(off + H.magic[0], true),
    version: view.getUint8(off + H.version[0]),
    type: view.getUint8(off + H.type[0]),
    flags: view.getUint16(off + H.flags[0], true),
    jobId: view.getUint32(off + H.job_id[0], true),
    round: view.getUint32(off + H.round[0], true),
    chunk: view.getUint32(off + H.chunk[0], true),
    rank: view.getUint16(off + H.rank[0], true),
    count: view.getUint16(off + H.count[0], true),
    exp: view.getInt16(off + H.exp[0], true),
    contributors: view.getUint16(off + H.contributors[0], true),
    reserved: view.getUint32(off + H.reserved[0], true),
  };
}

export interface JobConfig {
  jobId: number;
  roundBase: number;
  memberMask: bigint;
  members: number;
  chunkElems: number;
  chunks: number;
  batch: number;
  ownedChunks: number;
  flags?: number;
  /** Result events that end a round on this host (0: chunks). */
  resultsPerRound?: number;
  /** Ranks the slots of each bank's round (round & 1) wait for, within
   * memberMask; 0n: every member. Default [0n, 0n]. decodeConfig sets it
   * only when a bank has a mask, so a config without one reads back as
   * written. */
  bankMask?: [bigint, bigint];
}

const C = LAYOUT.ainftp_config;

export function encodeConfig(c: JobConfig): Uint8Array {
  const b = new Uint8Array(SIZEOF.ainftp_config);
  const v = new DataView(b.buffer);
  v.setUint32(C.job_id[0], c.jobId >>> 0, true);
  v.setUint32(C.round_base[0], c.roundBase >>> 0, true);
  v.setBigUint64(C.member_mask[0], BigInt.asUintN(64, c.memberMask), true);
  v.setUint16(C.members[0], c.members, true);
  v.setUint16(C.chunk_elems[0], c.chunkElems, true);
  v.setUint32(C.chunks[0], c.chunks >>> 0, true);
  v.setUint32(C.batch[0], c.batch >>> 0, true);
  v.setUint32(C.owned_chunks[0], c.ownedChunks >>> 0, true);
  v.setUint32(C.flags[0], c.flags ?? 0, true);
  v.setUint32(C.results_per_round[0], c.resultsPerRound ?? 0, true);
  const [b0, b1] = c.bankMask ?? [0n, 0n];
  v.setBigUint64(C.bank_mask[0], BigInt.asUintN(64, b0), true);
  v.setBigUint64(C.bank_mask[0] + 8, BigInt.asUintN(64, b1), true);
  return b;
}

export function decodeConfig(b: Uint8Array): JobConfig {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const bankMask: [bigint, bigint] = [v.getBigUint64(C.bank_mask[0], true), v.getBigUint64(C.bank_mask[0] + 8, true)];
  return {
    jobId: v.getUint32(C.job_id[0], true),
    roundBase: v.getUint32(C.round_base[0], true),
    memberMask: v.getBigUint64(C.member_mask[0], true),
    members: v.getUint16(C.members[0], true),
    chunkElems: v.getUint16(C.chunk_elems[0], true),
    chunks: v.getUint32(C.chunks[0], true),
    batch: v.getUint32(C.batch[0], true),
    ownedChunks: v.getUint32(C.owned_chunks[0], true),
    flags: v.getUint32(C.flags[0], true),
    resultsPerRound: v.getUint32(C.results_per_round[0], true),
    ...(bankMask[0] || bankMask[1] ? { bankMask } : {}),
  };
}

/** Member mask with ranks 0..members-1 set. */
export function allMembers(members: number): bigint {
  return members >= 64 ? (1n << 64n) - 1n : (1n << BigInt(members)) - 1n;
}

export interface SlotState {
  tag: number;
  seen: bigint;
  count: number;
  contributors: number;
  exp: number;
  state: number;
  completions: number;
  /** 1: every contribution held is speculative (F_SPEC). */
  spec: number;
  /** Ranks in `seen` whose contribution the sentry dropped. */
  rejected: bigint;
}

const S = LAYOUT.ainftp_slot;

export function decodeSlot(b: Uint8Array): SlotState {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    tag: v.getUint32(S.tag[0], true),
    seen: v.getBigUint64(S.seen[0], true),
    count: v.getUint16(S.count[0], true),
    contributors: v.getUint16(S.contributors[0], true),
    exp: v.getInt16(S.exp[0], true),
    state: v.getUint16(S.state[0], true),
    completions: v.getUint32(S.completions[0], true),
    spec: v.getUint32(S.spec[0], true),
    rejected: v.getBigUint64(S.rejected[0], true),
  };
}

export interface ReflexEvent {
  type: number;
  contributors: number;
  round: number;
  chunk: number;
  index: number;
}

const E = LAYOUT.ainftp_event;

export function decodeEvents(b: Uint8Array, n: number): ReflexEvent[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: ReflexEvent[] = [];
  for (let i = 0; i < n; i++) {
    const o = i * SIZEOF.ainftp_event;
    out.push({
      type: v.getUint16(o + E.type[0], true),
      contributors: v.getUint16(o + E.contributors[0], true),
      round: v.getUint32(o + E.round[0], true),
      chunk: v.getUint32(o + E.chunk[0], true),
      index: v.getUint32(o + E.index[0], true),
    });
  }
  return out;
}
