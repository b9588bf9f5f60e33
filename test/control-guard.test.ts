// The control plane's gate (src/control-guard.ts), without a network: each
// kind of bad frame is refused and counted under its reason; a sealed frame
// opens under the key and under no other; a non-member's HELLO is refused.
import { describe, expect, test } from "bun:test";
import { CTRL_BYE, CTRL_HELLO, CTRL_RESULT_REQ, PKT_CONTROL, PKT_CONTRIB, SIZEOF, writeHeader } from "../src/abi.ts";
import { ControlGuard, ROUNDS_AHEAD, type ControlDrop } from "../src/control-guard.ts";

const PEERS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
const JOB = 9;
const KEY = Uint8Array.from({ length: 16 }, (_, i) => i * 3);

function frame(o: { kind?: number; rank?: number; job?: number; type?: number; count?: number; round?: number } = {}, payload = new Uint8Array(4), room = 8): Uint8Array {
  const b = new Uint8Array(SIZEOF.ainftp_wire_hdr + payload.length + room);
  writeHeader(new DataView(b.buffer), 0, {
    type: o.type ?? PKT_CONTROL, jobId: o.job ?? JOB, round: o.round ?? 5, chunk: 0, rank: o.rank ?? 1,
    count: o.count ?? payload.length, contributors: o.kind ?? CTRL_BYE,
  });
  b.set(payload, SIZEOF.ainftp_wire_hdr);
  return b;
}
const bare = (f: Uint8Array) => f.subarray(0, f.length - 8);
const guard = (key: Uint8Array | null = null) => new ControlGuard({ job: JOB, peers: PEERS, key, helloKind: CTRL_HELLO });
const nonZero = (g: ControlGuard) => Object.fromEntries(Object.entries(g.drops).filter(([, n]) => n)) as Partial<Record<ControlDrop, number>>;

describe("ControlGuard", () => {
  test("a member's frame opens, bound to the rank its address names", () => {
    const g = guard();
    const f = g.open(bare(frame({ rank: 1 })), PEERS[1]);
    expect(f).toMatchObject({ kind: CTRL_BYE, rank: 1, round: 5, member: true });
    expect(f!.payload.length).toBe(4);
    expect(nonZero(g)).toEqual({});
  });

  test("each bad frame is refused under its reason", () => {
    const g = guard();
    const cases: [Uint8Array, string, ControlDrop][] = [
      [new Uint8Array(10), PEERS[1], "malformed"],
      [bare(frame({ type: PKT_CONTRIB })), PEERS[1], "malformed"],
      [bare(frame({ count: 5 })), PEERS[1], "bad_length"],
      [bare(frame({ kind: 0 })), PEERS[1], "bad_kind"],
      [bare(frame({ kind: 200 })), PEERS[1], "bad_kind"],
      [bare(frame({ rank: 2 })), PEERS[1], "not_member"], // rank 2 from rank 1's address
      [bare(frame({ rank: 7 })), PEERS[1], "not_member"], // no such rank
      [bare(frame({ job: 10 })), PEERS[1], "not_member"], // another job
      [bare(frame({ rank: 0 })), "10.0.0.99", "not_member"], // a host that is no member
      [bare(frame({ kind: CTRL_HELLO, rank: 0 })), "10.0.0.99", "not_member"], // its HELLO too: no answer
    ];
    for (const [d, from, why] of cases) {
      const before = g.drops[why];
      expect(g.open(d, from), `${why} from ${from}`).toBeNull();
      expect(g.drops[why]).toBe(before + 1);
    }
    expect(Object.values(g.drops).reduce((a, b) => a + b, 0)).toBe(cases.length);
  });

  test("a peer's HELLO of another job opens as a non-member (it is told, and the mismatch reported)", () => {
    const g = guard();
    expect(g.open(bare(frame({ kind: CTRL_HELLO, rank: 0, job: 11 })), PEERS[2])).toMatchObject({ kind: CTRL_HELLO, member: false });
  });

  test("with a key: a sealed frame opens; no tag, a flipped bit, or another key: bad_mac", () => {
    const g = guard(KEY);
    const f = frame({ rank: 2, kind: CTRL_RESULT_REQ });
    expect(g.seal(f, f.length - 8)).toBe(f.length);
    expect(g.open(f, PEERS[2])).toMatchObject({ kind: CTRL_RESULT_REQ, rank: 2, member: true });
    expect(g.open(f, PEERS[2])!.payload.length).toBe(4); // the tag is not payload
    expect(g.open(bare(f), PEERS[2])).toBeNull();
    for (let i = 0; i < f.length; i += 5) {
      const t = f.slice();
      t[i] ^= 0x10;
      expect(g.open(t, PEERS[2])).toBeNull();
    }
    const other = guard(KEY.map((b) => b ^ 1));
    const h = frame({ rank: 2 });
    other.seal(h, h.length - 8);
    expect(g.open(h, PEERS[2])).toBeNull();
    // a flip in magic, version or type is malformed before the tag is looked at
    expect(g.drops.bad_mac + g.drops.malformed).toBe(2 + Math.ceil(f.length / 5));
    expect(g.drops.malformed).toBeLessThanOrEqual(3);
    // without a key a sealed frame is a frame with 8 bytes too many
    expect(guard().open(f, PEERS[2])).toBeNull();
  });

  test("chunk lists: indices past the round and a ragged tail are counted, the rest kept", () => {
    const g = guard();
    const p = new Uint8Array(new Uint32Array([3, 0xfffffff0, 99, 100, 0x7fffffff]).buffer);
    expect(g.chunkList(p, 100)).toEqual([3, 99]);
    expect(g.drops.bad_chunk).toBe(3);
    expect(g.chunkList(new Uint8Array(6), 100)).toEqual([0]);
    expect(g.drops.bad_length).toBe(1);
  });

  test(`state is kept for at most ${ROUNDS_AHEAD} rounds ahead`, () => {
    const g = guard();
    expect(g.keepsRound(10, 10)).toBe(true);
    expect(g.keepsRound(10 + ROUNDS_AHEAD - 1, 10)).toBe(true);
    expect(g.keepsRound(10 + ROUNDS_AHEAD, 10)).toBe(false);
    expect(g.keepsRound(0xffffff00, 10)).toBe(false);
    expect(g.drops.future_round).toBe(2);
  });
});
