// Issue 17, small rounds under loss (recovery.ts redundant): once a member's
// RACK saw a loss, a round of at most REDUNDANT_BYTES of frames sends every
// contribution and every result twice, each copy right behind itself, for
// REDUNDANT_ROUNDS rounds. Both copies are lost with the square of the loss
// rate, so the round rarely waits for a recovery. The same seeded faults
// with the copies off (REDUNDANT_BYTES 0) show that the test can fail: far
// more retransmissions and a slower median round, in virtual time. The
// sums are bit for bit the same either way (a copy is dropped by the
// program as a duplicate, never summed twice).
import { afterEach, describe, expect, test } from "bun:test";
import { EgressPace } from "../../src/collective/pace.ts";
import { redundant } from "../../src/collective/recovery.ts";
import type { Host } from "../../src/collective/host.ts";
import type { RoundState } from "../../src/collective/round-state.ts";
import { TUNING } from "../../src/collective/options.ts";
import { runGradients, SimWorld, simPrograms, type Faults } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim redundant] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");

const HOSTS = 4;
const CHUNKS = 16;
const ELEMS = 64;
const PORT = 47133;
const ROUNDS = 24;
const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);
// TUNING is read-only to the code; the second run turns the copies off here
const tuning = TUNING as unknown as { REDUNDANT_BYTES: number };
const BYTES = TUNING.REDUNDANT_BYTES;
const LOSSY: Faults = { loss: 0.05, dup: 0.02, reorder: 0, reorderMs: 0, latencyMs: 0.05, jitterMs: 0.02 };

interface Run {
  hashes: string[][];
  /** Virtual ms per round, every rank's. */
  times: number[];
  retransmits: number;
  packets: number;
}

async function run(copies: boolean, seed: number): Promise<Run> {
  tuning.REDUNDANT_BYTES = copies ? BYTES : 0;
  // (without speculation: its chunks sent again when a scale changes would
  // blur the packet counts compared here; speculate.test.ts runs it under loss)
  const { hashes, times, stats } = await runGradients(new SimWorld(seed, LOSSY, programs, PORT), seed, ROUNDS, CHUNKS * ELEMS, { speculate: false });
  return {
    hashes, times,
    retransmits: stats.reduce((a, st) => a + st.retransmits, 0),
    packets: stats.reduce((a, st) => a + st.packetsSent, 0),
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

describe.skipIf(!root)("small rounds send their data twice under loss (simulated network)", () => {
  afterEach(() => {
    tuning.REDUNDANT_BYTES = BYTES;
  });

  test(`5% loss + 2% duplication, 4 hosts, ${ROUNDS} rounds of ${CHUNKS} chunks: with the copies, far fewer retransmissions and a faster median round; the same sums`, async () => {
    const one = await run(false, 1717);
    const two = await run(true, 1717);
    console.log(`[sim redundant] one copy: median ${median(one.times).toFixed(2)} virtual ms, ${one.retransmits} retransmissions, ${one.packets} packets; two copies: median ${median(two.times).toFixed(2)}, ${two.retransmits} retransmissions, ${two.packets} packets`);
    expect(two.packets).toBeGreaterThan(1.3 * one.packets);
    expect(two.retransmits).toBeLessThan(one.retransmits / 2);
    expect(median(two.times)).toBeLessThan(median(one.times));
    for (let k = 0; k < HOSTS; k++) {
      expect(two.hashes[k]).toEqual(one.hashes[0]);
      expect(one.hashes[k]).toEqual(one.hashes[0]);
    }
  }, 120_000);
});

describe("the copies' rule (recovery.ts redundant)", () => {
  test("under loss a small round sends twice, unless its frames take longer than REDUNDANT_MS at our measured egress rate (a slow link)", () => {
    const at = (rate: number) => {
      const pace = new EgressPace();
      if (rate) pace.note(rate * 100, 100); // bytes per ms
      return { seg: 4504, pace, lossRound: 10 } as unknown as Host;
    };
    const round = (nchunks: number, r = 11) => ({ nchunks, r, rackFired: false }) as unknown as RoundState;
    // 4 bits, 16 MiB: 470 chunks, 2.1 MB of frames
    expect(redundant(at(0), round(470))).toBe(true); // no rate known: as before
    expect(redundant(at(1e6), round(470))).toBe(true); // 2.1 ms of frames
    expect(redundant(at(121e3), round(470))).toBe(false); // 1 Gbit/s: 17 ms, a copy costs more than a recovery
    expect(redundant(at(121e3), round(59))).toBe(true); // 59 chunks: 2.2 ms at 1 Gbit/s
    expect(redundant(at(0), round(470, 10 + 257))).toBe(false); // no loss for REDUNDANT_ROUNDS rounds
  });
});
