// Issue 14 in the simulator: jobs at 8 and 4 bits end to end over the real
// XDP program (BPF_PROG_TEST_RUN), clean and under the sim's seeded faults
// (loss, duplication, reordering): every host's results bit-identical, each
// chunk holding every member, the error against the exact float sum within
// the width's bound (src/quantize.ts ERROR_BOUND), a member of another width
// named at open, and the residual that error feedback is built on.
import { describe, expect, test } from "bun:test";
import type { RoundReport } from "../../src/collective.ts";
import { ERROR_BOUND, QMAX_BITS } from "../../src/quantize.ts";
import { mulberry32 } from "../../src/random.ts";
import { CLEAN, SimWorld, simGradient, simPrograms, type Faults } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim bits] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");

const HOSTS = 4;
const CHUNKS = 16;
const ELEMS = 64; // int16 values per packet: 128 at 8 and 4 bits
const PORT = 47124;
const SCHEDULES = Number(process.env.AINFTP_SIM_BITS_SCHEDULES ?? 30);
const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);

function faultsOf(seed: number): Faults {
  const rnd = mulberry32(seed ^ 0x5eed);
  return { loss: 0.05 * rnd(), dup: 0.05 * rnd(), reorder: 0.3 * rnd(), reorderMs: 5 * rnd(), latencyMs: 0.02 + 0.2 * rnd(), jitterMs: 0.5 * rnd() };
}

interface Run {
  outs: Float32Array[][];
  resids: Float32Array[][];
  xs: Float32Array[][];
  lengths: number[];
  reps: RoundReport[][][];
  world: SimWorld;
}

/** HOSTS members at `bits` run `rounds` all-reduces of seeded lengths (some
 * longer than one protocol round) over a world with `faults`. */
async function run(bits: 8 | 4, seed: number, faults: Faults, rounds: number, o: { residual?: boolean } = {}): Promise<Run> {
  const world = new SimWorld(seed, faults, programs.slice(0, HOSTS), PORT);
  const comms = world.hosts.map((_, rank) => world.communicator(rank, { bits, errorFeedback: false, roundTimeoutMs: 20_000, openTimeoutMs: 5_000 }));
  const rnd = mulberry32(seed);
  const perRound = CHUNKS * ELEMS * 2;
  const lengths = Array.from({ length: rounds }, () => 1 + Math.floor(rnd() * perRound * 1.3));
  const r: Run = { outs: [], resids: [], xs: [], lengths, reps: [], world };
  try {
    await world.run(
      comms.map((c) => async (rank: number) => {
        await c.connect();
        r.outs[rank] = [];
        r.resids[rank] = [];
        r.xs[rank] = [];
        r.reps[rank] = [];
        for (let k = 0; k < rounds; k++) {
          const x = simGradient(seed, k, rank, lengths[k]);
          r.xs[rank].push(Float32Array.from(x));
          const residual = o.residual ? new Float32Array(x.length) : undefined;
          r.reps[rank].push(await c.allreduce(x, { residual }));
          r.outs[rank].push(x);
          if (residual) r.resids[rank].push(residual);
        }
        await c.leave(30_000);
      }),
      3_600_000,
    );
  } finally {
    for (const c of comms) c.close(0);
  }
  return r;
}

/** Relative L2 error of every round against the exact (f64) sum; checks
 * bit-identical results and complete chunks on the way. */
function check(r: Run, bits: 8 | 4, seed: number): number {
  let worst = 0;
  for (let k = 0; k < r.lengths.length; k++) {
    const ref = r.outs[0][k];
    for (let rank = 1; rank < HOSTS; rank++) expect({ seed, round: k, rank, same: Buffer.from(r.outs[rank][k].buffer).equals(Buffer.from(ref.buffer)) }).toEqual({ seed, round: k, rank, same: true });
    for (const rep of r.reps[0][k]) expect(rep.active.length).toBe(HOSTS);
    let num = 0, den = 0;
    for (let i = 0; i < ref.length; i++) {
      let exact = 0;
      for (let rank = 0; rank < HOSTS; rank++) exact += r.xs[rank][k][i];
      num += (ref[i] - exact) ** 2;
      den += exact ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num / den));
  }
  expect({ seed, bits, relL2: worst, within: worst <= ERROR_BOUND[bits] }).toMatchObject({ within: true });
  return worst;
}

describe.skipIf(!root)("8 and 4 bits over the real XDP program (simulated network)", () => {
  for (const bits of [8, 4] as const) {
    test(`${bits} bits, clean: bit-identical on every host, within the error bound, nothing dropped for its width`, async () => {
      const r = await run(bits, 4242 + bits, CLEAN, 6);
      const err = check(r, bits, 4242 + bits);
      console.log(`[sim bits] ${bits} bits clean: worst relative L2 error ${err.toExponential(2)} (bound ${ERROR_BOUND[bits]})`);
      for (const h of r.world.hosts) {
        const c = h.program.port().counters();
        expect(c.bad_width).toBe(0);
        expect(c.mal_count).toBe(0);
        expect(c.summed).toBeGreaterThan(0);
      }
    }, 120_000);

    test(`${bits} bits under ${SCHEDULES} fault schedules (loss, duplication, reordering): bit-identical, complete, within the bound`, async () => {
      let worst = 0;
      for (let s = 0; s < SCHEDULES; s++) {
        const seed = 14000 + bits * 1000 + s;
        try {
          worst = Math.max(worst, check(await run(bits, seed, faultsOf(seed), 4), bits, seed));
        } catch (e) {
          console.log(`[sim bits] FAILED seed ${seed} at ${bits} bits`);
          throw e;
        }
      }
      console.log(`[sim bits] ${bits} bits, ${SCHEDULES} fault schedules: worst relative L2 error ${worst.toExponential(2)}`);
    }, 600_000);
  }

  test("8 bits: the residual is exactly what the sum lost of each rank (the owner's requantization aside)", async () => {
    const r = await run(8, 777, CLEAN, 3, { residual: true });
    for (let k = 0; k < 3; k++) {
      const out = r.outs[0][k];
      let scale = 0, residMax = 0;
      for (let rank = 0; rank < HOSTS; rank++) for (const v of r.xs[rank][k]) scale = Math.max(scale, Math.abs(v));
      for (let rank = 0; rank < HOSTS; rank++) for (const v of r.resids[rank][k]) residMax = Math.max(residMax, Math.abs(v));
      // each rank's error is below one step of its chunk's scale (at most 2 * scale / 127), and not all zero
      expect(residMax).toBeGreaterThan(0);
      expect(residMax).toBeLessThanOrEqual((2 * scale) / QMAX_BITS[8]);
      // sum of (x - residual) is the sum of what was sent; the owner's step adds
      // less than one step of the result's scale (at most 2 * N * scale / 127)
      for (let i = 0; i < out.length; i++) {
        let sent = 0;
        for (let rank = 0; rank < HOSTS; rank++) sent += r.xs[rank][k][i] - r.resids[rank][k][i];
        if (Math.abs(out[i] - sent) > (2 * HOSTS * scale) / QMAX_BITS[8]) throw new Error(`round ${k} element ${i}: ${out[i]} vs sent ${sent}`);
      }
    }
  }, 120_000);

  test("a member at another width is named on every side at open", async () => {
    const world = new SimWorld(99, CLEAN, programs.slice(0, 2), PORT);
    const comms = [world.communicator(0, { bits: 8, openTimeoutMs: 3_000 }), world.communicator(1, { bits: 16, openTimeoutMs: 3_000 })];
    const errs: string[] = [];
    try {
      await world.run(comms.map((c) => async () => {
        try {
          await c.connect();
          errs.push("connected");
        } catch (e) {
          errs.push(String((e as Error).message));
        }
      }), 60_000);
    } finally {
      for (const c of comms) c.close(0);
    }
    expect(errs.length).toBe(2);
    for (const m of errs) expect(m).toMatch(/different job.*bits/);
    expect(errs.some((m) => m.includes("rank 1"))).toBe(true);
    expect(errs.some((m) => m.includes("rank 0"))).toBe(true);
  }, 60_000);
});
