// Speculation (src/collective/speculate.ts): a round over an array of the
// last full round's length sends its contributions before the plan, under
// that round's scale. In the simulator, against the same runs with it off:
// the same sums bit for bit, clean, with the scale changing from round to
// round (the predicted scale wrong: chunks sent again), and under loss,
// duplication and reordering; and where the prediction holds, no chunk
// goes twice and the round is shorter in virtual time (the plan's round
// trip is no longer before the data).
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { SPEC } from "../../src/collective/speculate.ts";
import { CLEAN, openPair, runGradients, SimWorld, simPrograms, type Faults } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim speculate] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");
const HOSTS = 4;
const CHUNKS = 16;
const ELEMS = 64;
const PORT = 47143;
const ROUNDS = 12;
const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);

// (the simulator's rounds measure no egress rate: speculate on any link, as on a slow one)
beforeEach(() => void (SPEC.anyLink = true));
afterEach(() => void (SPEC.anyLink = false));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

async function pair(seed: number, faults: Faults, alike: boolean, bits: 16 | 8 = 16) {
  const off = await runGradients(new SimWorld(seed, faults, programs, PORT), seed, ROUNDS, CHUNKS * ELEMS, { speculate: false, bits }, alike);
  const on = await runGradients(new SimWorld(seed, faults, programs, PORT), seed, ROUNDS, CHUNKS * ELEMS, { speculate: true, bits }, alike);
  const count = (r: typeof on, k: "specRounds" | "specResent") => sum(r.stats.map((s) => s[k]));
  for (let k = 0; k < HOSTS; k++) {
    expect(on.hashes[k]).toEqual(off.hashes[0]);
    expect(off.hashes[k]).toEqual(off.hashes[0]);
  }
  expect(count(off, "specRounds")).toBe(0);
  return { off, on, rounds: count(on, "specRounds"), resent: count(on, "specResent") };
}

describe.skipIf(!root)("speculation (simulated network, real program)", () => {
  test(`4 hosts, ${ROUNDS} rounds of ${CHUNKS} chunks, the same scale every round: the same sums as without, every round after the first speculates, few chunks go twice, shorter rounds`, async () => {
    const { off, on, rounds, resent } = await pair(3131, CLEAN, true);
    console.log(`[sim speculate] prediction holds: median ${median(on.times).toFixed(3)} virtual ms against ${median(off.times).toFixed(3)} without; ${rounds} rounds speculated, ${resent} chunks again`);
    expect(rounds).toBe(HOSTS * (ROUNDS - 1));
    // (a chunk's maximum near a power of two moves its exponent now and then)
    expect(resent).toBeLessThan(0.05 * rounds * CHUNKS);
    expect(median(on.times)).toBeLessThan(median(off.times));
  }, 300_000);

  test("the scale changes from round to round (the prediction often wrong): the same sums, chunks sent again", async () => {
    const { rounds, resent } = await pair(3232, CLEAN, false);
    console.log(`[sim speculate] scale changing: ${rounds} rounds speculated, ${resent} chunks sent again`);
    expect(rounds).toBeGreaterThan(0);
    expect(resent).toBeGreaterThan(0);
  }, 300_000);

  test("8 bits (the transform's exponents): the same sums as without", async () => {
    const { rounds } = await pair(3333, CLEAN, false, 8);
    expect(rounds).toBeGreaterThan(0);
  }, 300_000);

  test("on a link not measured slower than the hosts no round speculates (a CPU-bound host gains nothing): the same sums", async () => {
    SPEC.anyLink = false;
    const { rounds } = await pair(3535, CLEAN, true);
    expect(rounds).toBe(0);
  }, 300_000);

  test("a member without speculation is named at open (every member must confirm its slots)", async () => {
    const errs = await openPair(new SimWorld(98, CLEAN, programs.slice(0, 2), PORT), { speculate: true }, { speculate: false });
    expect(errs.length).toBe(2);
    for (const m of errs) expect(m).toContain("runs a different job");
    expect(errs.some((m) => m.includes('"speculate":true'))).toBe(true);
  }, 60_000);

  test("5% loss, 2% duplication, 5% reordering, scales changing: the same sums as without, over 6 seeds", async () => {
    const faults: Faults = { loss: 0.05, dup: 0.02, reorder: 0.05, reorderMs: 0.3, latencyMs: 0.05, jitterMs: 0.02 };
    let rounds = 0, resent = 0;
    for (let seed = 3400; seed < 3406; seed++) {
      const r = await pair(seed, faults, seed % 2 === 0);
      rounds += r.rounds;
      resent += r.resent;
    }
    console.log(`[sim speculate] under faults: ${rounds} rounds speculated, ${resent} chunks again`);
    expect(rounds).toBeGreaterThan(0);
  }, 600_000);

  test("a leader that starts last finds every member's exponents in and sends the plan before it speculates: the same sums", async () => {
    // rank k starts each round k * 3 virtual ms late: when rank 3 leads, the
    // others' exponents wait in its socket, and it decides at once instead
    // of packing and sending its window first (round.ts, before speculate)
    const r = await runGradients(new SimWorld(3535, CLEAN, programs, PORT), 3535, ROUNDS, CHUNKS * ELEMS, { speculate: true }, true, (rank) => 3 * rank);
    for (let k = 1; k < HOSTS; k++) expect(r.hashes[k]).toEqual(r.hashes[0]);
    const spec = r.stats.map((st) => st.specRounds);
    console.log(`[sim speculate] late leader: rounds speculated per rank ${spec.join(", ")}`);
    // rank 0 starts first and never holds every exponent: it speculates in
    // every round after the first; the last rank does not in the rounds it leads
    expect(spec[0]).toBe(ROUNDS - 1);
    expect(spec[HOSTS - 1]).toBeLessThanOrEqual(ROUNDS - 1 - Math.floor((ROUNDS - 1) / HOSTS));
  }, 300_000);
});
