// The control packets' codec: every field read or written through the ABI's
// LAYOUT (src/abi.ts), none at a hand-written offset. A control packet is a
// wire header (type PKT_CONTROL, the control kind in `contributors`) and a
// payload: a HELLO's fingerprint, a piece of exponents, a piece of the plan,
// a status mask, a list of chunks, or nothing.
import { F_RETRANSMIT, LAYOUT, MAGIC, PKT_CONTROL, SIZEOF, VERSION, readHeader, writeHeader } from "../abi.ts";
import { TUNING } from "./options.ts";

export const HDR = SIZEOF.ainftp_wire_hdr;
export const H = LAYOUT.ainftp_wire_hdr;
const REC = LAYOUT.ainftp_contrib_rec;

/** Chunk numbers one RESULT_REQ carries. */
export const REQ_CHUNKS = TUNING.CTRL_PAYLOAD / 4;

/** A control packet as received. `member`: from a member of this job at its address. */
export interface Control {
  kind: number;
  rank: number;
  round: number;
  chunk: number;
  flags: number;
  payload: Uint8Array;
  from: string;
  /** From the member its rank names, of our job. Only a HELLO from one of
   * our peers' addresses is returned with member false (a misconfigured
   * member is told and reported; anyone else is answered nothing). */
  member: boolean;
}

/** Writes a control packet's header and payload into buf; returns its length. */
export function encodeControl(
  buf: Uint8Array, job: number, rank: number, kind: number, round: number, flags: number, chunk: number, payload: Uint8Array,
): number {
  writeHeader(new DataView(buf.buffer, buf.byteOffset, buf.byteLength), 0, {
    type: PKT_CONTROL, jobId: job, round, chunk, rank, count: payload.length, contributors: kind, flags,
  });
  buf.set(payload, HDR);
  return HDR + payload.length;
}

/** A control packet of this job's members, or null. A HELLO is returned
 * from anyone (`member` false when its job, rank or address does not match
 * ours), so a mismatch can be reported instead of ignored. */
export function decodeControl(d: Uint8Array, from: string, job: number, peers: readonly string[]): Control | null {
  if (d.length < HDR) return null;
  const h = readHeader(new DataView(d.buffer, d.byteOffset, d.byteLength), 0);
  if (h.magic !== MAGIC || h.version !== VERSION || h.type !== PKT_CONTROL || h.count !== d.length - HDR) return null;
  const member = h.jobId === job && h.rank < peers.length && peers[h.rank] === from;
  return { kind: h.contributors, rank: h.rank, round: h.round, chunk: h.chunk, flags: h.flags, payload: d.subarray(HDR), from, member };
}

// ---- the plan (CTRL_EXPS_MAX) ---------------------------------------------------

/** A plan piece starts with the active members' mask (u64), the next
 * round's leader (u16) and a lateness score per member (u8), then its share
 * of the maximum exponents. */
export const PLAN = { active: 0, next: 8, scores: 10 } as const;
export const PLAN_FIXED = PLAN.scores;

export interface PlanHead {
  active: bigint;
  next: number;
}

/** Bytes before a plan piece's exponents, for `members` members. */
export function planHeadBytes(members: number): number {
  return PLAN_FIXED + members;
}

export function encodePlanHead(piece: Uint8Array, active: bigint, next: number, scores: Uint8Array): void {
  const dv = new DataView(piece.buffer, piece.byteOffset, piece.byteLength);
  dv.setBigUint64(PLAN.active, active, true);
  dv.setUint16(PLAN.next, next, true);
  piece.set(scores, PLAN.scores);
}

export function decodePlanHead(payload: Uint8Array): PlanHead {
  const dv = new DataView(payload.buffer, payload.byteOffset, PLAN_FIXED);
  return { active: dv.getBigUint64(PLAN.active, true), next: dv.getUint16(PLAN.next, true) };
}

// ---- status, result requests --------------------------------------------------

/** CTRL_STATUS: the ranks the sender waits for (u64 mask). */
export function encodeStatus(mask: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, mask, true);
  return b;
}

export function decodeStatus(payload: Uint8Array): bigint | null {
  if (payload.length !== 8) return null;
  return new DataView(payload.buffer, payload.byteOffset, 8).getBigUint64(0, true);
}

/** CTRL_RESULT_REQ: the chunks whose results the sender lacks (u32 each). */
export function encodeChunkList(chunks: number[]): Uint8Array {
  return new Uint8Array(Uint32Array.from(chunks).buffer);
}

export function forEachChunk(payload: Uint8Array, f: (chunk: number) => void): void {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.length);
  for (let i = 0; i + 4 <= payload.length; i += 4) f(dv.getUint32(i, true));
}

// ---- data packets -------------------------------------------------------------

/** Elements a data packet at `at` in buf carries (its header's count). */
export function packetCount(buf: Uint8Array, at = 0): number {
  return new DataView(buf.buffer, buf.byteOffset).getUint16(at + H.count[0], true);
}

/** Flags a stored result packet as a retransmission (its flags are 0). */
export function markRetransmit(buf: Uint8Array, at = 0): void {
  const dv = new DataView(buf.buffer, buf.byteOffset);
  dv.setUint16(at + H.flags[0], dv.getUint16(at + H.flags[0], true) | F_RETRANSMIT, true);
}

/** A contribution record the program copied to the contribs ring (robust modes). */
export interface ContribRecord {
  round: number;
  chunk: number;
  rank: number;
  count: number;
  exp: number;
}

export function decodeContribRecord(bytes: Uint8Array, at: number, into: ContribRecord): ContribRecord {
  const dv = new DataView(bytes.buffer, bytes.byteOffset + at, REC.v[0]);
  into.round = dv.getUint32(REC.round[0], true);
  into.chunk = dv.getUint32(REC.chunk[0], true);
  into.rank = dv.getUint16(REC.rank[0], true);
  into.count = dv.getUint16(REC.count[0], true);
  into.exp = dv.getInt16(REC.exp[0], true);
  return into;
}

/** Offset of a contribution record's values. */
export const REC_VALUES = REC.v[0];
