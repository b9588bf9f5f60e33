// The sentry's inline filter in the XDP program, through BPF_PROG_TEST_RUN:
// the energy it records, accept and reject at the gate's edges, a rejected
// worker's slot still completing (with its contributor count), quarantine by
// the member mask, and the per-rank counts. Needs root; nothing is attached.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  CFG_SENTRY, ENERGY_ZERO, EV_SLOT_COMPLETE, MAX_ELEMS, PKT_CONTRIB, SLOT_COMPLETE, allMembers, type Counters, type JobConfig,
} from "../src/abi.ts";
import { datagram, frame } from "../src/packet.ts";
import { ReflexObject, type EventRing } from "../src/reflex.ts";
import { mulberry32 } from "../src/random.ts";
import { energyOf, log2Q4, possibleEnergies } from "../src/sentry/energy.ts";
import { gateIndex } from "../src/sentry/keeper.ts";

const XDP_DROP = 1;
const JOB = 0x5e17;
const CHUNKS = 64;
const BASE = 40;

const pkt = (h: { round?: number; chunk: number; rank: number; exp?: number }, values: ArrayLike<number>) =>
  frame(datagram({ type: PKT_CONTRIB, jobId: JOB, round: h.round ?? BASE, chunk: h.chunk, rank: h.rank, exp: h.exp ?? 0 }, Array.from(values)));

/** count elements of magnitude 2^k, signs alternating: energy 32k exactly. */
const pow2 = (count: number, k: number) => Int16Array.from({ length: count }, (_, i) => (i & 1 ? -1 : 1) * 2 ** k);

let r: ReflexObject;
let ring: EventRing;
let cfg: JobConfig;
let nextChunk = 0;
const fresh = () => nextChunk++;

/** The same band for the chunk's full and short gates. */
function setGate(chunk: number, lo: number, hi: number, on = r): void {
  const g = on.gates();
  for (const at of [gateIndex(chunk, false), gateIndex(chunk, true)]) [g[2 * at], g[2 * at + 1]] = [lo, hi];
}

function delta(a: Counters, b: Counters): Partial<Counters> {
  const d: Partial<Counters> = {};
  for (const k of Object.keys(b) as (keyof Counters)[]) if (b[k] !== a[k]) d[k] = b[k] - a[k];
  return d;
}

beforeAll(async () => {
  r = await ReflexObject.load({ chunks: CHUNKS });
  ring = r.events();
  r.resetState();
  cfg = {
    jobId: JOB, roundBase: BASE, memberMask: allMembers(4), members: 4, chunkElems: MAX_ELEMS, chunks: CHUNKS,
    batch: 1, ownedChunks: CHUNKS, flags: CFG_SENTRY,
  };
  r.setConfig(cfg);
});
afterAll(() => r?.close());

describe("energy", () => {
  test("the TS mirror's log2: exact at powers of two, linear mantissa between", () => {
    expect(log2Q4(1n)).toBe(0);
    expect(log2Q4(2n ** 40n)).toBe(640);
    expect(log2Q4(3n)).toBe(16 + 8); // 1.5 → 8/16
    expect(log2Q4(0b10111n)).toBe(4 * 16 + 7);
  });

  for (const count of [1, 5, 63, 64, 65, 719, MAX_ELEMS])
    for (const [k, exp] of [[0, 0], [5, 0], [14, -3], [9, 7]] as const)
      test(`${count} elements of ±2^${k} at exp ${exp}: energy ${32 * (k + exp)}`, () => {
        const chunk = fresh();
        setGate(chunk, 0, 0); // no gate: recorded, accepted
        ring.poll(0);
        const { action } = r.testRun(pkt({ chunk, rank: 1, exp }, pow2(count, k)));
        expect(action).toBe(XDP_DROP);
        const o = r.obs((BASE & 1) * CHUNKS + chunk);
        expect(o.tag).toBe(BASE + 1);
        expect(o.energy[1]).toBe(32 * (k + exp));
        expect(energyOf(pow2(count, k), exp)).toBe(32 * (k + exp));
      });

  test("an all-zero contribution has ENERGY_ZERO", () => {
    const chunk = fresh();
    r.testRun(pkt({ chunk, rank: 0 }, new Int16Array(720)));
    expect(r.obs((BASE & 1) * CHUNKS + chunk).energy[0]).toBe(ENERGY_ZERO);
  });

  test("random contributions: the kernel's energy is one the TS mirror computes for some phase", () => {
    const rand = mulberry32(0xe4e);
    for (let t = 0; t < 40; t++) {
      const chunk = t % CHUNKS;
      const count = 1 + Math.floor(rand() * MAX_ELEMS);
      const scale = 2 ** Math.floor(rand() * 15);
      const q = Int16Array.from({ length: count }, () => Math.round((rand() * 2 - 1) * scale));
      const exp = Math.floor(rand() * 20) - 10;
      // round BASE + 1: the other bank, no clash with the cases above; a
      // fresh slot per try (its first contribution fixes the slot's scale)
      r.resetState();
      r.testRun(pkt({ round: BASE + 1, chunk, rank: 2, exp }, q));
      const got = r.obs(((BASE + 1) & 1) * CHUNKS + chunk).energy[2];
      expect(possibleEnergies(q, exp).has(got), `count ${count} exp ${exp}: energy ${got}`).toBe(true);
    }
    r.resetState(); // the loop used chunks freely: start the next cases on clean maps
    nextChunk = 0;
  });
});

describe("the gate", () => {
  // energy 32 * 5 = 160 for ±32 at exp 0
  const E = 160;
  const cases: [string, number, number, boolean][] = [
    ["lo = energy", E, E + 10, true],
    ["lo = energy + 1", E + 1, E + 10, false],
    ["hi = energy", E - 10, E, true],
    ["hi = energy - 1", E - 10, E - 1, false],
    ["no gate (lo = hi)", E + 1, E + 1, true],
    ["no gate (lo > hi)", E + 50, E - 50, true],
  ];
  let load: ReflexObject;
  let chunk = 0;
  beforeAll(async () => {
    load = await ReflexObject.load({ chunks: CHUNKS });
    load.resetState();
    load.setConfig({ ...cfg, memberMask: allMembers(2), members: 2 });
  });
  afterAll(() => load?.close());

  for (const [name, lo, hi, accept] of cases)
    test(`${name}: ${accept ? "accepted" : "rejected"}`, () => {
      const c = chunk++;
      setGate(c, lo, hi, load);
      const before = load.counters();
      load.testRun(pkt({ chunk: c, rank: 1 }, pow2(720, 5)));
      expect(delta(before, load.counters())).toEqual(accept ? { rx: 1, summed: 1, elems_summed: 720 } : { rx: 1, sentry_rejected: 1 });
      const slot = load.slot((BASE & 1) * CHUNKS + c);
      expect(slot.seen).toBe(2n);
      expect(slot.rejected).toBe(accept ? 0n : 2n);
      expect(slot.contributors).toBe(accept ? 1 : 0);
    });

  test("with the sentry off the gate is not consulted and nothing is recorded", () => {
    const c = chunk++;
    setGate(c, 1000, 1001, load);
    load.setConfig({ ...cfg, memberMask: allMembers(2), members: 2, flags: 0 });
    const before = load.counters();
    const w0 = load.sentryWorkers(2)[1];
    load.testRun(pkt({ chunk: c, rank: 1 }, pow2(720, 5)));
    expect(delta(before, load.counters())).toEqual({ rx: 1, summed: 1, elems_summed: 720 });
    expect(load.sentryWorkers(2)[1]).toEqual(w0);
    expect(load.obs((BASE & 1) * CHUNKS + c).tag).toBe(0);
    load.setConfig({ ...cfg, memberMask: allMembers(2), members: 2 });
  });

  test("Inf-like extremes (every element ±32767) are rejected by a gate learnt from normal traffic", () => {
    const c = chunk++;
    setGate(c, 160 - 40, 160 + 40, load);
    const before = load.counters();
    load.testRun(pkt({ chunk: c, rank: 1 }, Int16Array.from({ length: 720 }, (_, i) => (i & 1 ? -32768 : 32767))));
    expect(delta(before, load.counters())).toEqual({ rx: 1, sentry_rejected: 1 });
  });
});

describe("a rejected worker's slot", () => {
  test("completes with the accepted contributions only; the event and the slot count them; per-rank counts", () => {
    const chunk = fresh();
    const index = (BASE & 1) * CHUNKS + chunk;
    setGate(chunk, 100, 200); // ±32 (160) passes, ±1024 (320) does not
    ring.poll(0);
    const w0 = r.sentryWorkers(4);
    const honest = [0, 1, 3].map(() => pow2(720, 5));
    const poisoned = pow2(720, 10);
    for (const [i, rank] of [0, 1].entries()) r.testRun(pkt({ chunk, rank }, honest[i]));
    const before = r.counters();
    r.testRun(pkt({ chunk, rank: 2 }, poisoned));
    expect(delta(before, r.counters())).toEqual({ rx: 1, sentry_rejected: 1 });
    r.testRun(pkt({ chunk, rank: 3 }, honest[2]));
    const slot = r.slot(index);
    expect(slot).toMatchObject({ seen: 0b1111n, rejected: 0b0100n, contributors: 3, state: SLOT_COMPLETE });
    expect(Array.from(r.sums(index, 720))).toEqual(Array.from(pow2(720, 5), (v) => 3 * v));
    expect(ring.poll(0)).toEqual([{ type: EV_SLOT_COMPLETE, contributors: 3, round: BASE, chunk, index }]);
    const w = r.sentryWorkers(4).map((x, k) => ({ accepted: x.accepted - w0[k].accepted, rejected: x.rejected - w0[k].rejected }));
    expect(w).toEqual([{ accepted: 1, rejected: 0 }, { accepted: 1, rejected: 0 }, { accepted: 0, rejected: 1 }, { accepted: 1, rejected: 0 }]);
  });

  test("every contribution rejected: the slot still completes, with 0 contributors (the owner's own chunk is the result)", () => {
    const chunk = fresh();
    setGate(chunk, 0, 10);
    ring.poll(0);
    for (const rank of [0, 1, 2, 3]) r.testRun(pkt({ chunk, rank }, pow2(100, 5)));
    const index = (BASE & 1) * CHUNKS + chunk;
    expect(r.slot(index)).toMatchObject({ seen: 0b1111n, rejected: 0b1111n, contributors: 0, state: SLOT_COMPLETE });
    expect(ring.poll(0)).toEqual([{ type: EV_SLOT_COMPLETE, contributors: 0, round: BASE, chunk, index }]);
  });

  test("a rejected rank's retransmission is a duplicate, not a second chance", () => {
    const chunk = fresh();
    setGate(chunk, 100, 200);
    r.testRun(pkt({ chunk, rank: 2 }, pow2(720, 10)));
    const before = r.counters();
    r.testRun(pkt({ chunk, rank: 2 }, pow2(720, 5)));
    expect(delta(before, r.counters())).toEqual({ rx: 1, duplicate: 1 });
    expect(r.slot((BASE & 1) * CHUNKS + chunk)).toMatchObject({ rejected: 0b0100n, contributors: 0 });
  });

  test("quarantine: a rank left out of the member mask is dropped as not_member and no longer awaited", () => {
    const chunk = fresh();
    setGate(chunk, 0, 0);
    r.setConfig({ ...cfg, memberMask: 0b1011n });
    try {
      ring.poll(0);
      const before = r.counters();
      for (const rank of [0, 1, 2, 3]) r.testRun(pkt({ chunk, rank }, pow2(64, 3)));
      expect(delta(before, r.counters())).toEqual({
        rx: 4, summed: 3, elems_summed: 3 * 64, not_member: 1, completed: 1, events: 1, wakeups: 1,
      });
      const index = (BASE & 1) * CHUNKS + chunk;
      expect(r.slot(index)).toMatchObject({ seen: 0b1011n, contributors: 3, state: SLOT_COMPLETE });
    } finally {
      r.setConfig(cfg);
    }
  });
});
