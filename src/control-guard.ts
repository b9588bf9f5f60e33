// The control plane's gate (issue 16): every control datagram a node reads
// passes here before it can change anything. It checks the frame (magic,
// version, lengths, kind), its MAC under the job key when the job has one
// (SipHash-2-4, native/mac.c: 8 bytes after the payload), and binds it to
// its sender: a frame speaks for the rank whose address it came from, and a
// host that is not a member is answered nothing. What it refuses is counted
// by reason (`drops`), never thrown. Sealing outgoing frames lives here too,
// so both ends agree on the format.
import { MAC_BYTES, MAGIC, PKT_CONTROL, SIZEOF, VERSION, readHeader } from "./abi.ts";
import { macSeal, macVerify } from "../native/mac.ts";
import type { Control } from "./collective/control.ts";

const HDR = SIZEOF.ainftp_wire_hdr;
/** Control kinds are 1..CTRL_KIND_MAX (ainftp_abi.h, enum ainftp_ctrl_kind). */
export const CTRL_KIND_MAX = 9;
/** Rounds ahead of the next one whose early state a node keeps (exponents,
 * plans); a frame for a round beyond is refused and counted (bounded memory). */
export const ROUNDS_AHEAD = 4;

/** Why a control frame (or part of one) was refused. */
export const CONTROL_DROP_REASONS = [
  "malformed", // too short, bad magic/version/type
  "bad_length", // count does not match the datagram, or a payload of the wrong size for its kind
  "bad_mac", // the job has a key and the tag does not match (or is missing)
  "bad_kind", // a kind no version of ainftp sends
  "not_member", // not from the member its rank names (address), or another job's; a non-member's HELLO
  "bad_chunk", // a chunk index (RESULT_REQ entry, EXPS piece) outside the round
  "future_round", // state for a round more than ROUNDS_AHEAD ahead
  "not_owner", // a result stored by a rank that does not own its chunk (found before use)
  "mal_contributors", // a result stored under its owner's rank with a contributor count the plan's active set cannot have (found before use)
] as const;
export type ControlDrop = (typeof CONTROL_DROP_REASONS)[number];

/** A control frame that passed the gate (the codec's Control). */
export type ControlFrame = Control;

export class ControlGuard {
  readonly drops = Object.fromEntries(CONTROL_DROP_REASONS.map((r) => [r, 0])) as Record<ControlDrop, number>;
  private readonly peerSet: Set<string>;

  constructor(private readonly o: { job: number; peers: readonly string[]; key: Uint8Array | null; helloKind: number }) {
    this.peerSet = new Set(o.peers);
  }

  /** Bytes a sealed frame carries after its payload. */
  get tagBytes(): number {
    return this.o.key ? MAC_BYTES : 0;
  }

  count(reason: ControlDrop, n = 1): void {
    this.drops[reason] += n;
  }

  /** Appends the MAC of buf[0..len) (with a key); buf needs tagBytes of room.
   * Returns the length to send. */
  seal(buf: Uint8Array, len: number): number {
    if (!this.o.key) return len;
    macSeal(this.o.key, buf, len);
    return len + MAC_BYTES;
  }

  /** A control frame from `from` that may be acted on, or null (counted). */
  open(d: Uint8Array, from: string): ControlFrame | null {
    if (d.length < HDR) return this.refuse("malformed");
    const h = readHeader(new DataView(d.buffer, d.byteOffset, d.byteLength), 0);
    if (h.magic !== MAGIC || h.version !== VERSION || h.type !== PKT_CONTROL) return this.refuse("malformed");
    let body = d;
    if (this.o.key) {
      if (d.length < HDR + MAC_BYTES || !macVerify(this.o.key, d)) return this.refuse("bad_mac");
      body = d.subarray(0, d.length - MAC_BYTES);
    }
    if (h.count !== body.length - HDR) return this.refuse("bad_length");
    const kind = h.contributors;
    if (kind < 1 || kind > CTRL_KIND_MAX) return this.refuse("bad_kind");
    const member = h.jobId === this.o.job && h.rank < this.o.peers.length && this.o.peers[h.rank] === from;
    // a HELLO that is not a member's is only heard from one of our peers'
    // addresses (a misconfigured member); anyone else learns nothing
    if (!member && (kind !== this.o.helloKind || !this.peerSet.has(from))) return this.refuse("not_member");
    return { kind, rank: h.rank, round: h.round, chunk: h.chunk, flags: h.flags, payload: body.subarray(HDR), from, member };
  }

  /** Whether a node may keep state for `round` now (its next round is
   * `next`): at most ROUNDS_AHEAD ahead; counted when not. */
  keepsRound(round: number, next: number): boolean {
    if (round - next < ROUNDS_AHEAD) return true;
    this.count("future_round");
    return false;
  }

  /** The u32 chunk indices of a RESULT_REQ payload below `nchunks`; the
   * others (and a ragged tail) are counted bad_chunk. */
  chunkList(payload: Uint8Array, nchunks: number): number[] {
    const out: number[] = [];
    const dv = new DataView(payload.buffer, payload.byteOffset, payload.length);
    for (let i = 0; i + 4 <= payload.length; i += 4) {
      const c = dv.getUint32(i, true);
      if (c < nchunks) out.push(c);
      else this.count("bad_chunk");
    }
    if (payload.length % 4) this.count("bad_length");
    return out;
  }

  private refuse(reason: ControlDrop): null {
    this.drops[reason]++;
    return null;
  }
}
