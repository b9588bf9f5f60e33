// The collective in one process: N communicators over the simulated world
// (test/sim/world.ts) with the real XDP program per host (BPF_PROG_TEST_RUN,
// root), a virtual clock and seeded faults. Every schedule prints its seed;
// AINFTP_SIM_SEED=<seed> replays one schedule, AINFTP_SIM_SCHEDULES=<n>
// runs n schedules per claim (CI: a few hundred fault rounds per claim;
// 10k rounds in all by hand: AINFTP_SIM_SCHEDULES=250).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { RoundError, type RoundReport } from "../../src/collective.ts";
import { mulberry32 } from "../../src/random.ts";
import { CLEAN, SimProgram, SimWorld, type Faults } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");

const MAX_HOSTS = 6;
const CHUNKS = 16;
const ELEMS = 64;
const PORT = 47123;
const ROUNDS = 8;
const SCHEDULES = Number(process.env.AINFTP_SIM_SCHEDULES ?? 25);
const ONLY = process.env.AINFTP_SIM_SEED === undefined ? null : Number(process.env.AINFTP_SIM_SEED);

let programs: SimProgram[] = [];
beforeAll(async () => {
  if (root) for (let i = 0; i < MAX_HOSTS; i++) programs.push(await SimProgram.load(CHUNKS, ELEMS, PORT));
});
afterAll(() => {
  for (const p of programs) p.close();
  programs = [];
});

/** A gradient for (seed, round, rank): values in ±2^k for a k per rank. */
function gradient(seed: number, round: number, rank: number, n: number): Float32Array {
  const rnd = mulberry32((seed * 7919 + round * 131 + rank * 17) >>> 0);
  const scale = 2 ** Math.floor(rnd() * 6 - 3);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (rnd() * 2 - 1) * scale;
  return x;
}

/** Faults drawn from the seed: up to 5% loss, 5% duplication, 30% reordering. */
function faultsOf(seed: number): Faults {
  const rnd = mulberry32(seed ^ 0x5eed);
  return {
    loss: 0.05 * rnd(), dup: 0.05 * rnd(), reorder: 0.3 * rnd(), reorderMs: 5 * rnd(), latencyMs: 0.02 + 0.2 * rnd(), jitterMs: 0.5 * rnd(),
  };
}

interface Outcome {
  reports: RoundReport[][];
  outs: Float32Array[];
  contributors: Uint16Array[];
}

/** One schedule: N hosts connect, then run `rounds` all-reduces of random
 * lengths (some span two protocol rounds). Checks every round: the results
 * are bit-identical everywhere, each chunk holds the same contributor count
 * everywhere, and a chunk that holds every member is the exact sum within
 * the quantizer's error. */
async function schedule(seed: number, n: number, faults: Faults, o: { rounds?: number; setup?: (w: SimWorld) => void } = {}): Promise<{ world: SimWorld; rounds: number }> {
  const world = new SimWorld(seed, faults, programs.slice(0, n), PORT);
  o.setup?.(world);
  const comms = world.hosts.map((_, rank) => world.communicator(rank, { roundTimeoutMs: 20_000, openTimeoutMs: 5_000 }));
  const rnd = mulberry32(seed);
  const rounds = o.rounds ?? ROUNDS;
  const lengths = Array.from({ length: rounds }, () => 1 + Math.floor(rnd() * CHUNKS * ELEMS * 1.3));
  let done = 0;
  try {
    const per: Outcome[] = (await world.run(
      comms.map((c) => async (rank: number) => {
        await c.connect();
        const out: Outcome = { reports: [], outs: [], contributors: [] };
        for (let r = 0; r < rounds; r++) {
          const x = gradient(seed, r, rank, lengths[r]);
          const reps = await c.allreduce(x);
          out.reports.push(reps);
          out.outs.push(x);
          const k = new Uint16Array(0);
          out.contributors.push(reps.length === 1 ? c.contributorsOf(reps[0].round, reps[0].chunks) : k);
        }
        return out;
      }),
      600_000,
    )) as Outcome[];
    for (let r = 0; r < rounds; r++) {
      const live = per.filter((p, rank) => p && !world.hosts[rank].dead);
      const ref = live[0].outs[r];
      for (const p of live) {
        expect(Buffer.from(p.outs[r].buffer).equals(Buffer.from(ref.buffer))).toBe(true);
        expect([...p.contributors[r]]).toEqual([...live[0].contributors[r]]);
      }
      checkSums(seed, r, n, ref, live[0].contributors[r], lengths[r]);
      done++;
    }
  } catch (e) {
    console.log(`[sim] FAILED seed ${seed} (${n} hosts, faults ${JSON.stringify(faults)}) after ${done} verified rounds, virtual ${world.now.toFixed(1)} ms: replay with AINFTP_SIM_SEED=${seed}`);
    throw e;
  } finally {
    for (const c of comms) c.close(0);
  }
  return { world, rounds: done };
}

/** Chunks whose result holds all n contributions: within the quantizer's error of the exact sum. */
function checkSums(seed: number, r: number, n: number, out: Float32Array, contributors: Uint16Array, len: number): void {
  const exact = new Float64Array(len);
  let scale = 0;
  for (let k = 0; k < n; k++) {
    const x = gradient(seed, r, k, len);
    for (let i = 0; i < len; i++) (exact[i] += x[i]), (scale = Math.max(scale, Math.abs(x[i])));
  }
  for (let c = 0; c * ELEMS < len; c++) {
    if (contributors.length && contributors[c] !== n) continue;
    for (let i = c * ELEMS; i < Math.min(len, (c + 1) * ELEMS); i++) {
      const err = Math.abs(out[i] - exact[i]);
      if (err > (n * scale) / 8192) throw new Error(`seed ${seed} round ${r} element ${i}: ${out[i]} vs exact ${exact[i]} (chunk ${c}, ${contributors[c] ?? "?"} contributions)`);
    }
  }
}

function seeds(base: number): number[] {
  if (ONLY !== null) return [ONLY];
  return Array.from({ length: SCHEDULES }, (_, i) => base + i);
}

describe.skipIf(!root)("collective in the simulator (real XDP program, virtual clock)", () => {
  test("clean network, 2..6 hosts: bit-identical results, exact sums", async () => {
    for (const n of [2, 3, 4, 6]) {
      const { world, rounds } = await schedule(1000 + n, n, CLEAN);
      expect(rounds).toBe(ROUNDS);
      expect(world.counts.lost).toBe(0);
    }
  }, 60_000);

  test(`seeded loss, duplication, reordering (${SCHEDULES} schedules × ${ROUNDS} rounds): bit-identical, every chunk complete and exact`, async () => {
    let rounds = 0;
    const t0 = performance.now();
    for (const seed of seeds(1)) {
      const n = 2 + (seed % 4);
      const { world, rounds: k } = await schedule(seed, n, faultsOf(seed), {});
      rounds += k;
      void world;
    }
    console.log(`[sim] faults: ${rounds} rounds in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(rounds).toBe(seeds(1).length * ROUNDS);
  }, 600_000);
});

export { RoundError };
