// The TypeScript mirror (src/abi.ts) against what the C compiler laid out
// (native/shim.c's ainftp_abi_describe, compiled against
// bpf/include/ainftp_abi.h), plus round trips of the encoders.
import { describe, expect, test } from "bun:test";
import * as abi from "../src/abi.ts";
import {
  ACC_BIAS, CNT, COUNTERS, LAYOUT, MAGIC, MAX_ELEMS, SIZEOF, VERSION, accPosition, decodeConfig, decodeSums, encodeConfig,
  readHeader, writeHeader, type JobConfig, type WireHeader,
} from "../src/abi.ts";
import { shim } from "../native/shim.ts";
import { mulberry32 } from "../src/random.ts";

type Described = Record<string, number | [number, number]>;

function describeC(): Described {
  const buf = Buffer.alloc(64 * 1024);
  const n = shim.ainftp_abi_describe(buf, buf.length);
  expect(n).toBeGreaterThan(2);
  expect(n).toBeLessThan(buf.length - 1); // not truncated
  return JSON.parse(buf.subarray(0, n).toString("utf8")) as Described;
}

const c = describeC();
const keys = Object.keys(c);
const fieldKeys = keys.filter((k) => !k.startsWith("sizeof.") && !k.startsWith("const."));
const sizeKeys = keys.filter((k) => k.startsWith("sizeof."));
const constKeys = keys.filter((k) => k.startsWith("const."));

/** Every "struct.field" key the TS mirror has. */
const tsFieldKeys = Object.entries(LAYOUT).flatMap(([s, fields]) => Object.keys(fields).map((f) => `${s}.${f}`));

/** The TS value of a C constant name (without the AINFTP_ prefix). */
function tsConst(name: string): number | undefined {
  if (name === "CNT__MAX") return COUNTERS.length;
  if (name.startsWith("CNT_")) return (CNT as Record<string, number>)[name.slice(4).toLowerCase()];
  const v = (abi as unknown as Record<string, unknown>)[name];
  return typeof v === "number" ? v : undefined;
}

describe("ABI mirror: src/abi.ts vs the C layout", () => {
  test("the shim describes a non-trivial ABI", () => {
    expect(fieldKeys.length).toBeGreaterThanOrEqual(40);
    expect(sizeKeys.length).toBe(Object.keys(SIZEOF).length);
    expect(constKeys.length).toBeGreaterThanOrEqual(20 + COUNTERS.length + 1);
  });

  test.each(fieldKeys.map((k) => [k] as const))("field %s has the same [offset, size]", (key) => {
    const [struct, field] = key.split(".");
    const s = (LAYOUT as Record<string, Record<string, readonly [number, number]> | undefined>)[struct];
    expect(s, `struct ${struct} missing from LAYOUT`).toBeDefined();
    const f = s?.[field];
    expect(f, `${key} missing from LAYOUT`).toBeDefined();
    expect([f?.[0], f?.[1]]).toEqual(c[key] as [number, number]);
  });

  test("every TS LAYOUT field is reported by the C side", () => {
    const missing = tsFieldKeys.filter((k) => !(k in c));
    expect(missing).toEqual([]);
  });

  test("every C field is in the TS LAYOUT", () => {
    const tsSet = new Set(tsFieldKeys);
    expect(fieldKeys.filter((k) => !tsSet.has(k))).toEqual([]);
    expect(new Set(fieldKeys)).toEqual(tsSet);
  });

  test.each(sizeKeys.map((k) => [k] as const))("%s equals SIZEOF", (key) => {
    const name = key.slice("sizeof.".length);
    expect((SIZEOF as Record<string, number>)[name]).toBe(c[key] as number);
  });

  test("every SIZEOF entry is reported by the C side", () => {
    expect(Object.keys(SIZEOF).map((k) => `sizeof.${k}`).sort()).toEqual([...sizeKeys].sort());
  });

  test("each struct's fields lie inside the struct and do not overlap", () => {
    for (const [s, fields] of Object.entries(LAYOUT)) {
      const size = (SIZEOF as Record<string, number>)[s];
      const spans = Object.values(fields as Record<string, readonly [number, number]>)
        .map(([o, n]) => [o, o + n] as const)
        .sort((a, b) => a[0] - b[0]);
      for (let i = 0; i < spans.length; i++) {
        expect(spans[i][1]).toBeLessThanOrEqual(size);
        if (i > 0) expect(spans[i][0]).toBeGreaterThanOrEqual(spans[i - 1][1]);
      }
    }
  });

  test.each(constKeys.map((k) => [k] as const))("%s equals the TS constant", (key) => {
    const name = key.slice("const.".length);
    const ts = tsConst(name);
    expect(ts, `no TS constant for ${name}`).toBeDefined();
    expect(ts).toBe(c[key] as number);
  });

  test("every counter in COUNTERS has a CNT_ constant on the C side, in order", () => {
    const cNames = constKeys
      .filter((k) => k.startsWith("const.CNT_") && k !== "const.CNT__MAX")
      .map((k) => [k.slice("const.CNT_".length).toLowerCase(), c[k] as number] as const)
      .sort((a, b) => a[1] - b[1]);
    expect(cNames.map(([n]) => n)).toEqual([...COUNTERS]);
    expect(cNames.map(([, i]) => i)).toEqual(COUNTERS.map((_, i) => i));
    expect(c["const.CNT__MAX"]).toBe(COUNTERS.length);
    expect(c["sizeof.ainftp_counters"]).toBe(8 * COUNTERS.length);
  });

  test("the TS-only constants the shim does not report are consistent", () => {
    expect(abi.FRAME_OVERHEAD_V4).toBe(14 + 20 + 8 + (c["sizeof.ainftp_wire_hdr"] as number));
    // the largest packet is a 9000-byte MTU's (IPv4 + UDP + header + values, no Ethernet), with room for the MAC
    expect(abi.FRAME_OVERHEAD_V4 - 14 + 2 * abi.MAX_ELEMS).toBe(8988);
    expect(abi.FRAME_OVERHEAD_V4 - 14 + 2 * abi.MAX_ELEMS_AUTH + abi.MAC_BYTES).toBeLessThanOrEqual(9000);
    // the one-page frame of veth without frags: 3514 bytes with Ethernet
    expect(abi.FRAME_OVERHEAD_V4 + 2 * abi.ELEMS_ONE_PAGE).toBe(3514);
    expect(Object.keys(abi.COUNTER_HELP).sort()).toEqual([...COUNTERS].sort());
  });
});

// ---- encoders -----------------------------------------------------------------

const rng = mulberry32;

describe("encoders round-trip", () => {
  const rand = rng(0xab1);
  const u32 = () => Math.floor(rand() * 2 ** 32);
  const u16 = () => Math.floor(rand() * 2 ** 16);
  const u8 = () => Math.floor(rand() * 256);
  const s16 = () => Math.floor(rand() * 2 ** 16) - 2 ** 15;

  test("encodeConfig/decodeConfig round-trip, extremes and random", () => {
    const cases: JobConfig[] = [
      { jobId: 0, roundBase: 0, memberMask: 0n, members: 0, chunkElems: 0, chunks: 0, batch: 0, ownedChunks: 0, flags: 0, resultsPerRound: 0 },
      {
        jobId: 0xffffffff, roundBase: 0xffffffff, memberMask: (1n << 64n) - 1n, members: 0xffff,
        chunkElems: 0xffff, chunks: 0xffffffff, batch: 0xffffffff, ownedChunks: 0xffffffff, flags: 0xffffffff,
        resultsPerRound: 0xffffffff, bankMask: [(1n << 64n) - 1n, (1n << 64n) - 1n],
      },
      { jobId: 1, roundBase: 2, memberMask: 1n << 63n, members: 64, chunkElems: 1720, chunks: 65536, batch: 32, ownedChunks: 7, flags: 0, resultsPerRound: 0 },
      // one bank with a mask, the other "every member"
      { jobId: 1, roundBase: 2, memberMask: 0b111n, members: 3, chunkElems: 720, chunks: 4, batch: 1, ownedChunks: 4, flags: 0, resultsPerRound: 0, bankMask: [0n, 0b101n] },
      { jobId: 1, roundBase: 2, memberMask: 0b111n, members: 3, chunkElems: 720, chunks: 4, batch: 1, ownedChunks: 4, flags: 0, resultsPerRound: 0, bankMask: [1n << 63n, 0n] },
    ];
    const u64 = () => (BigInt(u32()) << 32n) | BigInt(u32());
    for (let i = 0; i < 200; i++)
      cases.push({
        jobId: u32(), roundBase: u32(), memberMask: u64(), members: u16(),
        chunkElems: u16(), chunks: u32(), batch: u32(), ownedChunks: u32(), flags: u32(), resultsPerRound: u32(),
        ...(i & 1 ? { bankMask: [u64() | 1n, u64()] as [bigint, bigint] } : {}),
      });
    for (const cfg of cases) {
      const b = encodeConfig(cfg);
      expect(b.length).toBe(SIZEOF.ainftp_config);
      expect(decodeConfig(b)).toEqual(cfg);
    }
  });

  test("bankMask defaults to [0n, 0n] and reads back only when a bank has a mask", () => {
    const base: JobConfig = { jobId: 1, roundBase: 0, memberMask: 3n, members: 2, chunkElems: 4, chunks: 1, batch: 1, ownedChunks: 1 };
    const none = encodeConfig(base);
    expect(Array.from(none.subarray(40, 56))).toEqual(new Array(16).fill(0));
    expect(encodeConfig({ ...base, bankMask: [0n, 0n] })).toEqual(none);
    expect("bankMask" in decodeConfig(none)).toBe(false);
    // a mask is stored as a u64 (a negative bigint wraps, as memberMask does)
    expect(decodeConfig(encodeConfig({ ...base, bankMask: [-1n, 2n] })).bankMask).toEqual([(1n << 64n) - 1n, 2n]);
  });

  test("encodeConfig writes little-endian fields at the C offsets (golden bytes)", () => {
    const b = encodeConfig({
      jobId: 0x11223344, roundBase: 0x55667788, memberMask: 0x0102030405060708n, members: 0x090a,
      chunkElems: 0x0b0c, chunks: 0x0d0e0f10, batch: 0x11121314, ownedChunks: 0x15161718, flags: 0x191a1b1c,
      resultsPerRound: 0x1d1e1f20, bankMask: [0x2122232425262728n, 0x292a2b2c2d2e2f30n],
    });
    // struct ainftp_config { u32 job_id; u32 round_base; u64 member_mask; u16 members;
    //   u16 chunk_elems; u32 chunks; u32 batch; u32 owned_chunks; u32 flags; u32 results_per_round;
    //   u64 bank_mask[2]; }
    expect(Buffer.from(b).toString("hex")).toBe(
      "44332211" + "88776655" + "0807060504030201" + "0a09" + "0c0b" + "100f0e0d" + "14131211" + "18171615" + "1c1b1a19" + "201f1e1d" +
      "2827262524232221" + "302f2e2d2c2b2a29",
    );
    // decodeConfig honours a subarray's byteOffset
    const big = new Uint8Array(8 + b.length);
    big.set(b, 8);
    expect(decodeConfig(big.subarray(8)).jobId).toBe(0x11223344);
  });

  test("writeHeader/readHeader round-trip, extremes and random", () => {
    const cases: Required<WireHeader>[] = [
      { magic: MAGIC, version: VERSION, type: 1, flags: 0, jobId: 0, round: 0, chunk: 0, rank: 0, count: 0, exp: 0, contributors: 0, reserved: 0 },
      {
        magic: 0xffffffff, version: 255, type: 255, flags: 0xffff, jobId: 0xffffffff, round: 0xffffffff,
        chunk: 0xffffffff, rank: 0xffff, count: 0xffff, exp: -32768, contributors: 0xffff, reserved: 0xffffffff,
      },
      { magic: MAGIC, version: 1, type: 2, flags: 7, jobId: 9, round: 3, chunk: 4, rank: 5, count: 1720, exp: 32767, contributors: 64, reserved: 0 },
    ];
    for (let i = 0; i < 200; i++)
      cases.push({
        magic: u32(), version: u8(), type: u8(), flags: u16(), jobId: u32(), round: u32(), chunk: u32(),
        rank: u16(), count: u16(), exp: s16(), contributors: u16(), reserved: u32(),
      });
    for (const h of cases) {
      const b = new Uint8Array(SIZEOF.ainftp_wire_hdr + 5);
      const v = new DataView(b.buffer);
      writeHeader(v, 5, h);
      expect(readHeader(v, 5)).toEqual(h);
      expect(b.subarray(0, 5)).toEqual(new Uint8Array(5)); // nothing written before the offset
    }
  });

  test("writeHeader defaults magic, version, flags, exp, contributors and reserved", () => {
    const v = new DataView(new ArrayBuffer(SIZEOF.ainftp_wire_hdr));
    writeHeader(v, 0, { type: 1, jobId: 1, round: 2, chunk: 3, rank: 4, count: 5 });
    expect(readHeader(v, 0)).toEqual({
      magic: MAGIC, version: VERSION, type: 1, flags: 0, jobId: 1, round: 2, chunk: 3, rank: 4, count: 5,
      exp: 0, contributors: 0, reserved: 0,
    });
  });

  test("writeHeader lays the header out as the C struct (golden bytes)", () => {
    const b = new Uint8Array(SIZEOF.ainftp_wire_hdr);
    writeHeader(new DataView(b.buffer), 0, {
      type: 2, flags: 0x0102, jobId: 0x03040506, round: 0x0708090a, chunk: 0x0b0c0d0e, rank: 0x0f10,
      count: 0x1112, exp: -2, contributors: 0x1314, reserved: 0x15161718,
    });
    // magic "AINF", version 1, type 2, then little-endian fields in struct order
    expect(Buffer.from(b).toString("hex")).toBe(
      "41494e46" + "01" + "02" + "0201" + "06050403" + "0a090807" + "0e0d0c0b" + "100f" + "1211" + "feff" + "1413" + "18171615",
    );
    expect(Buffer.from(b.subarray(0, 4)).toString("latin1")).toBe("AINF");
  });
});

describe("acc layout helpers (biased, lane-interleaved sums)", () => {
  test("accPosition swaps the middle two of every four elements and is its own inverse", () => {
    expect(Array.from({ length: 12 }, (_, j) => accPosition(j))).toEqual([0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11]);
    for (let j = 0; j < MAX_ELEMS; j++) {
      expect(accPosition(accPosition(j))).toBe(j);
      expect(accPosition(j) >> 2).toBe(j >> 2);
    }
  });

  test("decodeSums inverts the layout for every count and contributor number, extremes included", () => {
    const rand = rng(0xacc);
    for (const contributors of [1, 2, 3, 64])
      for (const count of [1, 2, 3, 4, 5, 6, 7, 8, 9, 719, 720, MAX_ELEMS]) {
        const lo = -32768 * contributors;
        const hi = 32767 * contributors;
        const want = Int32Array.from({ length: count }, (_, j) =>
          j === 0 ? lo : j === 1 ? hi : lo + Math.floor(rand() * (hi - lo + 1)));
        // What the XDP program leaves in the map: sum + bias per contribution, positions swapped.
        const raw = new Uint32Array(MAX_ELEMS).fill(0xdeadbeef);
        for (let j = 0; j < count; j++) raw[accPosition(j)] = want[j] + ACC_BIAS * contributors;
        expect(Array.from(decodeSums(raw, count, contributors))).toEqual(Array.from(want));
        // into a caller's buffer
        const out = new Int32Array(count).fill(7);
        expect(decodeSums(raw, count, contributors, out)).toBe(out);
        expect(Array.from(out)).toEqual(Array.from(want));
      }
  });

  test("a lane cannot overflow: 64 contributions of 32767 fit in the unsigned 32-bit lane", () => {
    expect(64 * (32767 + ACC_BIAS)).toBeLessThan(2 ** 32);
    const raw = new Uint32Array(4).fill(64 * (32767 + ACC_BIAS));
    expect(Array.from(decodeSums(raw, 4, 64))).toEqual([64 * 32767, 64 * 32767, 64 * 32767, 64 * 32767]);
    expect(Array.from(decodeSums(new Uint32Array(4), 4, 64))).toEqual(new Array(4).fill(-64 * 32768));
  });
});
