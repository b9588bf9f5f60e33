// The window on a slow link (src/collective/pace.ts): our measured egress
// rate caps the chunks in flight per owner, so a link slower than the hosts
// is not buried under a queue of our own contributions. The arithmetic
// alone, then the simulator with the cap forced down to one chunk per
// owner: the same sums bit for bit, the rounds counted as paced, and slower
// in virtual time (each chunk then waits for the one before it: the cap
// acts on the wire); with the cap off, no round is paced.
import { afterEach, describe, expect, test } from "bun:test";
import { EgressPace, PACE } from "../../src/collective/pace.ts";
import { CLEAN, runGradients, SimWorld, simPrograms } from "./world.ts";

const saved = { ...PACE };
afterEach(() => Object.assign(PACE, saved));

describe("the egress rate's cap (arithmetic)", () => {
  const MB = 1 << 20;
  test("linkBound (speculation's test): a rate is known and would cap the window; it counts no large round", () => {
    const p = new EgressPace();
    expect(p.linkBound(3, 9002, 48)).toBe(false); // no rate yet
    p.note(6.3e6, 52); // 8 bits at 1 Gbit/s
    expect(p.linkBound(3, 9002, 48)).toBe(true);
    // the first capFor is still the first large round (a probe): linkBound counted none
    expect(p.capFor(16 * MB, 3, 9002)).toBe(Math.floor((PACE.PROBE_GAIN * (6.3e6 / 52) * PACE.QUEUE_MS) / (3 * 9002)));
    const fast = new EgressPace();
    fast.note(12.6e6, 25); // 16 MiB unshaped: the CPU, not the link
    expect(fast.linkBound(3, 9002, 48)).toBe(false);
    PACE.enabled = false;
    expect(p.linkBound(3, 9002, 48)).toBe(false);
  });
  test("no cap before a rate is known or for small rounds; then rate x QUEUE_MS over the owners' packets (PROBE_GAIN times that on a probe round), never below FLOOR", () => {
    const p = new EgressPace();
    expect(p.capFor(16 * MB, 3, 9002)).toBe(Infinity); // the first large round: no rate yet
    p.note(6.3e6, 52); // 8 bits at 1 Gbit/s: 121 kB per ms
    p.note(1 * MB, 1); // a small round measures nothing
    expect(p.rate()).toBeCloseTo(6.3e6 / 52, 3);
    const cap = p.capFor(16 * MB, 3, 9002);
    expect(cap).toBe(Math.floor(((6.3e6 / 52) * PACE.QUEUE_MS) / (3 * 9002)));
    expect(cap).toBeGreaterThanOrEqual(PACE.FLOOR);
    expect(cap).toBeLessThan(48); // below the unshaped window: the cap binds at 1 Gbit/s
    expect(p.capFor(1 * MB, 3, 9002)).toBe(Infinity); // 1 MiB: never capped, and not counted
    for (let k = 2; k < PACE.PROBE_EVERY; k++) expect(p.capFor(16 * MB, 3, 9002)).toBe(cap);
    // every PROBE_EVERY-th large round probes with PROBE_GAIN times the cap
    expect(p.capFor(16 * MB, 3, 9002)).toBe(Math.floor((PACE.PROBE_GAIN * (6.3e6 / 52) * PACE.QUEUE_MS) / (3 * 9002)));
    expect(p.capFor(16 * MB, 3, 9002)).toBe(cap);
    // a fast link (unshaped 16 MiB: 12.6 MB in 25 ms) is never capped below the window of 48
    const fast = new EgressPace();
    fast.note(12.6e6, 25);
    fast.capFor(16 * MB, 3, 9002);
    expect(fast.capFor(16 * MB, 3, 9002)).toBeGreaterThan(48);
    // the max filter: a slow round among fast ones does not lower the cap; RATE_ROUNDS later it is gone
    fast.note(1e6, 100);
    expect(fast.rate()).toBe(12.6e6 / 25);
    for (let k = 0; k < PACE.RATE_ROUNDS; k++) fast.note(2.1e6, 100);
    expect(fast.rate()).toBe(2.1e6 / 100);
    // a slow measured rate still leaves FLOOR chunks per owner
    const slow = new EgressPace();
    slow.note(PACE.RATE_MIN_BYTES, 10_000);
    slow.capFor(16 * MB, 3, 9002);
    expect(slow.capFor(16 * MB, 3, 9002)).toBe(PACE.FLOOR);
    PACE.enabled = false;
    expect(slow.capFor(16 * MB, 3, 9002)).toBe(Infinity);
  });
});

const root = process.getuid?.() === 0;
if (!root) console.log("[sim pace] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");
const HOSTS = 4;
const CHUNKS = 16;
const ELEMS = 64;
const PORT = 47141;
const ROUNDS = 10;
const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);

async function run(capped: boolean, seed: number) {
  // every round measures the rate, the cap is one chunk per owner, and no round probes
  Object.assign(PACE, saved, capped ? { RATE_MIN_BYTES: 0, QUEUE_MS: 1e-12, FLOOR: 1, PROBE_EVERY: 1e9 } : { enabled: false });
  const { hashes, times, stats } = await runGradients(new SimWorld(seed, { ...CLEAN, latencyMs: 0.05 }, programs, PORT), seed, ROUNDS, CHUNKS * ELEMS);
  return { hashes, times, paced: stats.reduce((a, st) => a + st.pacedRounds, 0) };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

describe.skipIf(!root)("the egress rate's cap on the wire (simulated network)", () => {
  test(`4 hosts, ${ROUNDS} rounds of ${CHUNKS} chunks, the cap forced to one chunk per owner: the same sums as uncapped, the rounds paced, each slower in virtual time`, async () => {
    const off = await run(false, 2121);
    const on = await run(true, 2121);
    console.log(`[sim pace] uncapped: median ${median(off.times).toFixed(3)} virtual ms, ${off.paced} paced rounds; one chunk per owner: median ${median(on.times).toFixed(3)}, ${on.paced} paced`);
    expect(off.paced).toBe(0);
    // every rank's rounds after the first (which measures the first rate)
    expect(on.paced).toBe(HOSTS * (ROUNDS - 1));
    expect(median(on.times)).toBeGreaterThan(median(off.times));
    for (let k = 0; k < HOSTS; k++) {
      expect(on.hashes[k]).toEqual(off.hashes[0]);
      expect(off.hashes[k]).toEqual(off.hashes[0]);
    }
  }, 300_000);
});
