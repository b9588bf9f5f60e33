// The collective's pure rooms, without a network or a program: planning
// (src/collective/plan.ts) and the control codec (src/collective/control.ts).
import { describe, expect, test } from "bun:test";
import { CTRL_EXPS_MAX, F_RETRANSMIT, LAYOUT, PKT_CONTRIB, SIZEOF, writeHeader } from "../../src/abi.ts";
import {
  decodeContribRecord, decodeControl, decodePlanHead, decodeStatus, encodeChunkList, encodeControl, encodePlanHead, encodeStatus,
  forEachChunk, markRetransmit, packetCount, planHeadBytes,
} from "../../src/collective/control.ts";
import { DEFAULTS, defaultWindow, resolveOptions, TUNING } from "../../src/collective/options.ts";
import {
  activeRows, downRankedMask, graceMs, haveMask, leaderStep, liveFrom, nextLeader, nextScores, ownedChunks, owners, promptMask,
} from "../../src/collective/plan.ts";

describe("planning (pure)", () => {
  test("the grace: 500 ms without history, 4x the median after, between 100 and 500 ms; fixed or off by option", () => {
    expect(graceMs([], "auto")).toBe(TUNING.DEADLINE_CAP_MS);
    expect(graceMs([10, 10, 10], undefined)).toBe(500);
  });

  test("the grace follows the upper median of the window (nearest rank)", () => {
    expect(graceMs([10, 40, 20, 30], "auto")).toBe(120);
    expect(graceMs([1, 1, 1, 1, 1], "auto")).toBe(TUNING.DEADLINE_FLOOR_MS);
    expect(graceMs([900, 900, 900, 900], "auto")).toBe(TUNING.DEADLINE_CAP_MS);
    expect(graceMs([900, 900, 900, 900], 0)).toBe(Infinity);
    expect(graceMs([900, 900, 900, 900], 250)).toBe(250);
  });

  test("the next leader: the first member after us in the first pool that has one, never us", () => {
    expect(nextLeader(1, 4, [0b1000n, 0b1111n])).toBe(3);
    expect(nextLeader(3, 4, [0b0001n])).toBe(0);
    expect(nextLeader(2, 4, [0b0100n, 0b0000n])).toBe(3); // only us in the pools: the next rank
    expect(nextLeader(0, 4, [0n, 0b0100n])).toBe(2);
  });

  test("a dead leader is skipped: the first live member from it, we count as live", () => {
    expect(liveFrom(2, 0, 4, ~(1n << 2n))).toBe(3);
    expect(liveFrom(2, 0, 4, 0b0001n)).toBe(0);
    expect(liveFrom(1, 1, 3, 0n)).toBe(1);
  });

  test("the leader waits for the fit members, not the down-ranked; a quorum or the grace after the majority ends the wait", () => {
    const base = { size: 4, othersMask: 0b1110n, fitMask: ~0n, liveMask: ~0n, downRanked: 0n, patient: false, quorum: undefined, grace: 100 };
    // leader 0 has 0 and 1: no majority yet, waits
    expect(leaderStep({ ...base, have: 0b0011n, count: 2, majorityAt: Infinity, now: 5 })).toEqual({ majorityNow: false, decide: false });
    // three of four: the majority now, still waiting for 3
    expect(leaderStep({ ...base, have: 0b0111n, count: 3, majorityAt: Infinity, now: 5 })).toEqual({ majorityNow: true, decide: false });
    // the grace after the majority has passed
    expect(leaderStep({ ...base, have: 0b0111n, count: 3, majorityAt: 5, now: 105 })).toEqual({ majorityNow: false, decide: true });
    // 3 is down-ranked: not waited for
    expect(leaderStep({ ...base, downRanked: 0b1000n, have: 0b0111n, count: 3, majorityAt: 5, now: 6 }).decide).toBe(true);
    // a barrier waits for the down-ranked too, whatever the grace
    expect(leaderStep({ ...base, patient: true, grace: Infinity, downRanked: 0b1000n, have: 0b0111n, count: 3, majorityAt: 5, now: 1e6 }).decide).toBe(false);
    // the quorum
    expect(leaderStep({ ...base, quorum: 3, have: 0b0111n, count: 3, majorityAt: Infinity, now: 5 }).decide).toBe(true);
  });

  test("lateness: made it -1, missed +1, capped; a barrier keeps the scores; two misses down-rank", () => {
    const late = Uint8Array.from([0, 1, 3, 2]);
    expect([...nextScores(late, [true, false, false, true], false, new Uint8Array(4))]).toEqual([0, 2, TUNING.LATE_MAX, 1]);
    expect([...nextScores(late, [true, false, false, true], true, new Uint8Array(4))]).toEqual([0, 1, 3, 2]);
    expect(downRankedMask(Uint8Array.from([0, TUNING.LATE_SLOW, 1, TUNING.LATE_MAX]))).toBe(0b1010n);
  });

  test("prompt members came within PROMPT_MS of the majority", () => {
    const at = Float64Array.from([0, 10, 10 + TUNING.PROMPT_MS + 1, 5]);
    expect(promptMask([true, true, true, false], at, 100, 10)).toBe(0b0011n);
  });

  test("the active rows and the owners' layout", () => {
    expect(haveMask([true, false, true])).toEqual({ have: 0b101n, count: 2 });
    const exps = Int8Array.from([1, 2, 3, 4, 5, 6]); // 3 ranks x 2 chunks
    expect([...activeRows(exps, [true, false, true], 2, 2)]).toEqual([1, 2, 5, 6]);
    expect(activeRows(exps, [true, true, true], 3, 2)).toBe(exps);
    const idx = new Int32Array(4);
    expect(owners(0b1101n, 4, idx)).toEqual({ owners: [0, 2, 3], K: 3 });
    expect([...idx]).toEqual([0, -1, 1, 2]);
    expect([...ownedChunks(1, 3, 8)]).toEqual([1, 4, 7]);
    expect([...ownedChunks(-1, 3, 8)]).toEqual([]);
    expect([...ownedChunks(5, 3, 4)]).toEqual([]);
  });
});

describe("options", () => {
  test("every default from one table; the window from the receive queue; undefined keeps the default", () => {
    const o = resolveOptions({ iface: "x", peers: ["a", "b", "c", "d"], rank: 0, batch: undefined, pumpMs: 3 });
    expect(o.batch).toBe(DEFAULTS.batch);
    expect(o.batch).toBe(48);
    expect(o.pumpMs).toBe(3);
    expect(o.window).toBe(defaultWindow(4));
    expect(defaultWindow(4)).toBe(48); // min(48, 256/3 - 16 = 69)
    expect(defaultWindow(16)).toBe(8);
  });
});

describe("the control codec (through LAYOUT)", () => {
  test("a control packet round-trips; a wrong count, magic or non-member is refused", () => {
    const buf = new Uint8Array(SIZEOF.ainftp_wire_hdr + 64);
    const len = encodeControl(buf, 7, 2, CTRL_EXPS_MAX, 41, 1, 1400, Uint8Array.from([9, 8, 7]));
    const d = buf.subarray(0, len);
    const peers = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    expect(decodeControl(d, "10.0.0.3", 7, peers)).toMatchObject({ kind: CTRL_EXPS_MAX, rank: 2, round: 41, chunk: 1400, flags: 1, member: true });
    expect([...decodeControl(d, "10.0.0.3", 7, peers)!.payload]).toEqual([9, 8, 7]);
    expect(decodeControl(d, "10.0.0.9", 7, peers)!.member).toBe(false);
    expect(decodeControl(d, "10.0.0.3", 8, peers)!.member).toBe(false);
    expect(decodeControl(d.subarray(0, len - 1), "10.0.0.3", 7, peers)).toBeNull();
    const bad = Uint8Array.from(d);
    bad[LAYOUT.ainftp_wire_hdr.magic[0]] ^= 1;
    expect(decodeControl(bad, "10.0.0.3", 7, peers)).toBeNull();
  });

  test("plan head, status, chunk lists", () => {
    const piece = new Uint8Array(planHeadBytes(3));
    encodePlanHead(piece, 0b101n, 2, Uint8Array.from([0, 3, 1]));
    expect(decodePlanHead(piece)).toEqual({ active: 0b101n, next: 2 });
    expect([...piece.subarray(planHeadBytes(0))]).toEqual([0, 3, 1]);
    expect(decodeStatus(encodeStatus(0x8000_0000_0000_0001n))).toBe(0x8000_0000_0000_0001n);
    expect(decodeStatus(new Uint8Array(7))).toBeNull();
    const got: number[] = [];
    forEachChunk(encodeChunkList([3, 70000, 0]), (c) => got.push(c));
    expect(got).toEqual([3, 70000, 0]);
  });

  test("a stored result packet: its count read and its retransmit flag set through the layout", () => {
    const pkt = new Uint8Array(SIZEOF.ainftp_wire_hdr + 8);
    writeHeader(new DataView(pkt.buffer), 0, { type: PKT_CONTRIB, jobId: 1, round: 2, chunk: 3, rank: 0, count: 4 });
    expect(packetCount(pkt)).toBe(4);
    markRetransmit(pkt);
    expect(new DataView(pkt.buffer).getUint16(LAYOUT.ainftp_wire_hdr.flags[0], true)).toBe(F_RETRANSMIT);
  });

  test("a contribution record decodes field by field", () => {
    const b = new Uint8Array(2 * SIZEOF.ainftp_contrib_rec);
    const R = LAYOUT.ainftp_contrib_rec;
    const dv = new DataView(b.buffer, SIZEOF.ainftp_contrib_rec);
    dv.setUint32(R.round[0], 9, true);
    dv.setUint32(R.chunk[0], 5, true);
    dv.setUint16(R.rank[0], 3, true);
    dv.setUint16(R.count[0], 700, true);
    dv.setInt16(R.exp[0], -4, true);
    const rec = decodeContribRecord(b, SIZEOF.ainftp_contrib_rec, { round: 0, chunk: 0, rank: 0, count: 0, exp: 0 });
    expect(rec).toEqual({ round: 9, chunk: 5, rank: 3, count: 700, exp: -4 });
  });
});
