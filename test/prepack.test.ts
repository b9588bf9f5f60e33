// Prepacking (src/collective/prepack.ts, native ainftp_exps_pack): a 16-bit
// round's exponents and packets from one pass over x.
//   - The kernel gives, on every build this CPU runs, the bytes of
//     ainftp_chunk_exps and then ainftp_pack_chunks at scale
//     max(prediction, exponent): to nearest and stochastic, with NaN and
//     saturation planted, chunks without a packet left untouched, and a
//     layout that does not fit refused with nothing written.
//   - A round that prepacks sums the same bits as one that does not, in the
//     simulator, with the prediction right, wrong (the scales change every
//     round: packets packed again at the plan), and under loss; at 8 and 4
//     bits too (the transform's pass, ainftp_bits_rht_exps_pack: its bytes
//     are checked in test/bits.test.ts), with error feedback, at the plan
//     and speculating (speculate.ts sends the prepacked packets).
import { describe, expect, test } from "bun:test";
import { PKT_CONTRIB } from "../src/abi.ts";
import { PREPACK } from "../src/collective/prepack.ts";
import { SPEC } from "../src/collective/speculate.ts";
import { mulberry32 } from "../src/random.ts";
import { headerTemplate } from "../src/quantize.ts";
import { cChunkExps, cExpsPack, cPackChunks, NO_OFFSET, QUANT_EINVAL, quantIsasSupported, setQuantIsa } from "../native/quant.ts";
import { CLEAN, runGradients, SimWorld, simPrograms, type Faults } from "./sim/world.ts";

const HDR = 32;
const header = headerTemplate({ type: PKT_CONTRIB, jobId: 77, round: 5, rank: 2, version: 1, flags: 0 });

/** n values with zeros, NaN, ±Inf, subnormals and a chunk of huge values planted. */
function input(seed: number, n: number, ce: number): Float32Array {
  const rnd = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (rnd() * 2 - 1) * 2 ** Math.floor(rnd() * 8 - 4);
  for (let i = 0; i < ce && i < n; i++) x[i] = 0; // an all-zero chunk
  if (n > 3 * ce) for (let i = 2 * ce; i < 3 * ce; i++) x[i] = (rnd() - 0.5) * 1e30;
  if (n > 5) (x[n - 2] = 1e-42), (x[n - 3] = -1e-40);
  return x;
}

/** What the two calls give: exponents, scales max(pred, e), packets at them. */
function reference(x: Float32Array, ce: number, pred: Int8Array | null, offsets: Uint32Array, outLen: number, seed: number) {
  const chunks = Math.ceil(x.length / ce);
  const exps = new Int8Array(chunks);
  const bad = cChunkExps(x, ce, exps);
  const scale = exps.map((e, c) => (pred && pred[c] > e ? pred[c] : e));
  const out = new Uint8Array(outLen).fill(0xa5);
  let sat = 0;
  for (let c = 0; c < chunks; c++) {
    if (offsets[c] === NO_OFFSET) continue;
    const count = Math.min(ce, x.length - c * ce);
    const one = new Uint8Array(HDR + 2 * Math.min(ce, x.length));
    const rc = cPackChunks(x, ce, Uint32Array.of(c), 1, scale, header, one, one.length, seed);
    expect(rc).not.toBe(QUANT_EINVAL);
    sat += rc;
    out.set(one.subarray(0, HDR + 2 * count), offsets[c]);
  }
  return { bad, exps, scale, out, sat };
}

function fused(x: Float32Array, ce: number, pred: Int8Array | null, offsets: Uint32Array, outLen: number, seed: number) {
  const chunks = Math.ceil(x.length / ce);
  const exps = new Int8Array(chunks), scale = new Int8Array(chunks), sat = new Uint32Array(1);
  const out = new Uint8Array(outLen).fill(0xa5);
  const bad = cExpsPack(x, ce, pred, exps, scale, offsets, header, out, seed, sat);
  return { bad, exps, scale, out, sat: sat[0] };
}

/** Packets in reverse chunk order, every third chunk without one. */
function layout(x: Float32Array, ce: number): { offsets: Uint32Array; outLen: number } {
  const chunks = Math.ceil(x.length / ce);
  const offsets = new Uint32Array(chunks);
  let at = 0;
  for (let c = chunks - 1; c >= 0; c--) {
    if (c % 3 === 1) {
      offsets[c] = NO_OFFSET;
      continue;
    }
    offsets[c] = at;
    at += HDR + 2 * ce + 6; // (a gap a packet must not write)
  }
  return { offsets, outLen: at };
}

describe("ainftp_exps_pack", () => {
  const builds = quantIsasSupported();
  test(`the bytes of the exponents' pass and packing, on every build (${builds.join(", ")})`, () => {
    let cases = 0;
    try {
      for (const isa of builds) {
        setQuantIsa(isa);
        for (const [n, ce] of [[4464 * 5 + 17, 4464], [1000, 64], [33, 16], [7, 8]] as const) {
          for (const seed of [0, 0x9e37]) {
            for (const withPred of [false, true]) {
              const x = input(n * 31 + seed, n, ce);
              if (n > 40) x[41] = NaN;
              const chunks = Math.ceil(n / ce);
              const rnd = mulberry32(n + seed);
              // a prediction above some exponents, below others
              const pred = withPred ? Int8Array.from({ length: chunks }, () => Math.floor(rnd() * 20) - 20) : null;
              const { offsets, outLen } = layout(x, ce);
              const want = reference(x, ce, pred, offsets, outLen, seed);
              const got = fused(x, ce, pred, offsets, outLen, seed);
              expect(got.bad).toBe(want.bad);
              expect([...got.exps]).toEqual([...want.exps]);
              expect([...got.scale]).toEqual([...want.scale]);
              expect(got.sat).toBe(want.sat);
              expect(Bun.hash(got.out)).toBe(Bun.hash(want.out));
              cases++;
            }
          }
        }
      }
    } finally {
      setQuantIsa("best");
    }
    expect(cases).toBe(builds.length * 16);
  });

  test("the saturation count: a prediction below the chunk's exponent is never used (nothing clips)", () => {
    const ce = 64, x = input(5, 4 * ce, ce);
    const { offsets, outLen } = layout(x, ce);
    const got = fused(x, ce, new Int8Array(4).fill(-126), offsets, outLen, 0);
    expect(got.sat).toBe(0);
    expect([...got.scale]).toEqual([...got.exps]);
  });

  test("a layout that does not fit is refused, and nothing is written", () => {
    const ce = 64, x = input(9, 4 * ce, ce);
    const { offsets } = layout(x, ce);
    // one byte short of the packet that ends last
    const need = Math.max(...[...offsets].filter((o) => o !== NO_OFFSET).map((o) => o + HDR + 2 * ce));
    const out = new Uint8Array(need - 1).fill(0xa5);
    const rc = cExpsPack(x, ce, null, new Int8Array(4), new Int8Array(4), offsets, header, out, 0, new Uint32Array(1));
    expect(rc).toBe(QUANT_EINVAL);
    expect(out.every((b) => b === 0xa5)).toBe(true);
    const odd = Uint32Array.from(offsets, (o) => (o === NO_OFFSET ? o : o + 1));
    expect(cExpsPack(x, ce, null, new Int8Array(4), new Int8Array(4), odd, header, new Uint8Array(need + 8), 0, new Uint32Array(1))).toBe(QUANT_EINVAL);
  });
});

const root = process.getuid?.() === 0;
if (!root) console.log("[prepack] the simulator part skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");
const HOSTS = 4, CHUNKS = 16, ELEMS = 64, PORT = 47163, ROUNDS = 10;
const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);
const saved = { ...PREPACK };

async function pair(seed: number, faults: Faults, alike: boolean) {
  const run = async (on: boolean) => {
    // (the simulator's rounds are small: prepack them too)
    Object.assign(PREPACK, { enabled: on, minValues: 0 });
    try {
      return await runGradients(new SimWorld(seed, faults, programs, PORT), seed, ROUNDS, CHUNKS * ELEMS, {}, alike);
    } finally {
      Object.assign(PREPACK, saved);
    }
  };
  const off = await run(false), on = await run(true);
  const prepacked = (r: typeof on) => r.stats.reduce((a, s) => a + s.prepackedRounds, 0);
  for (let k = 0; k < HOSTS; k++) {
    expect(on.hashes[k]).toEqual(off.hashes[0]);
    expect(off.hashes[k]).toEqual(off.hashes[0]);
  }
  expect(prepacked(off)).toBe(0);
  return prepacked(on);
}

describe.skipIf(!root)("prepacked rounds (simulated network, real program)", () => {
  test("rounds below PREPACK.minValues (4 MiB of float32) do not prepack", async () => {
    const r = await runGradients(new SimWorld(4040, CLEAN, programs, PORT), 4040, 3, CHUNKS * ELEMS, {}, true);
    expect(r.stats.reduce((a, s) => a + s.prepackedRounds, 0)).toBe(0);
  }, 300_000);

  test("the prediction holds: the same sums as without, every round prepacked", async () => {
    expect(await pair(4141, CLEAN, true)).toBe(HOSTS * ROUNDS);
  }, 300_000);

  test("the scales change every round (packets packed again at the plan): the same sums", async () => {
    expect(await pair(4242, CLEAN, false)).toBe(HOSTS * ROUNDS);
  }, 300_000);

  test("5% loss, 2% duplication, 5% reordering, scales changing: the same sums, over 4 seeds", async () => {
    const faults: Faults = { loss: 0.05, dup: 0.02, reorder: 0.05, reorderMs: 0.3, latencyMs: 0.05, jitterMs: 0.02 };
    let n = 0;
    for (let seed = 4300; seed < 4304; seed++) n += await pair(seed, faults, seed % 2 === 0);
    expect(n).toBeGreaterThan(0);
  }, 600_000);
});

describe.skipIf(!root)("prepacked rounds at 8 and 4 bits (simulated network, real program)", () => {
  /** The same world twice, the transform's pass packing or not: every
   * rank's sums bit for bit alike (error feedback on: the residual the
   * prepacked packets leave feeds the next round). Returns the prepacked
   * rounds and the speculated ones of the run that prepacks. */
  async function narrowPair(
    bits: 8 | 4, seed: number, faults: Faults, alike: boolean, speculate: boolean, lateMs: ((rank: number, k: number) => number) | null = null,
    errorFeedback = true,
  ) {
    const run = async (on: boolean) => {
      Object.assign(PREPACK, { enabled: true, narrow: on, minValues: 0 });
      SPEC.anyLink = speculate;
      try {
        // (window 2: most packets are still unsent when the plan comes, and are mended unsent)
        return await runGradients(new SimWorld(seed, faults, programs, PORT), seed, ROUNDS, CHUNKS * ELEMS * 2 - 5, { bits, window: 2, errorFeedback }, alike, lateMs);
      } finally {
        Object.assign(PREPACK, saved);
        SPEC.anyLink = false;
      }
    };
    const off = await run(false), on = await run(true);
    const sum = (r: typeof on, k: "prepackedRounds" | "specRounds") => r.stats.reduce((a, s) => a + s[k], 0);
    for (let k = 0; k < HOSTS; k++) {
      expect(on.hashes[k]).toEqual(off.hashes[0]);
      expect(off.hashes[k]).toEqual(off.hashes[0]);
    }
    expect(sum(off, "prepackedRounds")).toBe(0);
    return { prepacked: sum(on, "prepackedRounds"), spec: sum(on, "specRounds") };
  }

  for (const bits of [8, 4] as const) {
    test(`${bits} bits without error feedback (the transform not kept, chunks made again where packed again): the same sums, at the plan and speculating, scales changing, under faults, the leader late`, async () => {
      const faults: Faults = { loss: 0.05, dup: 0.02, reorder: 0.05, reorderMs: 0.3, latencyMs: 0.05, jitterMs: 0.02 };
      expect((await narrowPair(bits, 5800 + bits, CLEAN, false, false, null, false)).prepacked).toBe(HOSTS * ROUNDS);
      expect((await narrowPair(bits, 5810 + bits, faults, false, false, null, false)).prepacked).toBeGreaterThan(0);
      expect((await narrowPair(bits, 5820 + bits, CLEAN, false, true, null, false)).spec).toBeGreaterThan(0);
      expect((await narrowPair(bits, 5830 + bits, faults, false, true, null, false)).spec).toBeGreaterThan(0);
      expect((await narrowPair(bits, 5840 + bits, CLEAN, false, true, (rank, k) => (rank === (k + 2) % HOSTS ? 3 : 0), false)).prepacked).toBe(HOSTS * ROUNDS);
    }, 600_000);

    test(`${bits} bits at the plan: the same sums as without, every round prepacked; scales changing and under faults too`, async () => {
      expect(await narrowPair(bits, 5100 + bits, CLEAN, true, false)).toEqual({ prepacked: HOSTS * ROUNDS, spec: 0 });
      expect((await narrowPair(bits, 5200 + bits, CLEAN, false, false)).prepacked).toBe(HOSTS * ROUNDS);
      const faults: Faults = { loss: 0.05, dup: 0.02, reorder: 0.05, reorderMs: 0.3, latencyMs: 0.05, jitterMs: 0.02 };
      expect((await narrowPair(bits, 5300 + bits, faults, false, false)).prepacked).toBeGreaterThan(0);
    }, 600_000);

    test(`${bits} bits speculating: the prepacked packets go before the plan, mended where the plan differs; the same sums`, async () => {
      // (the first round has no prediction: it does not speculate)
      const right = await narrowPair(bits, 5400 + bits, CLEAN, true, true);
      expect(right.spec).toBeGreaterThan(0);
      expect(right.prepacked).toBe(HOSTS * ROUNDS);
      const wrong = await narrowPair(bits, 5500 + bits, CLEAN, false, true);
      expect(wrong.spec).toBeGreaterThan(0);
      const faults: Faults = { loss: 0.05, dup: 0.02, reorder: 0.05, reorderMs: 0.3, latencyMs: 0.05, jitterMs: 0.02 };
      expect((await narrowPair(bits, 5600 + bits, faults, false, true)).spec).toBeGreaterThan(0);
      // the round's leader late (rank k + 2 leads round k here): the others'
      // exponents are all in when it starts, its plan goes before it would
      // speculate, and the packets it made to speculate go at the plan
      // (usePrepack clears their F_SPEC; the sums would not show it: the
      // owners claimed their slots at the plan, and take them either way)
      const late = await narrowPair(bits, 5700 + bits, CLEAN, false, true, (rank, k) => (rank === (k + 2) % HOSTS ? 3 : 0));
      expect(late.prepacked).toBe(HOSTS * ROUNDS);
    }, 600_000);
  }
});
