// Issue 14 in the simulator: jobs at 8 and 4 bits end to end over the real
// XDP program (BPF_PROG_TEST_RUN), clean and under the sim's seeded faults
// (loss, duplication, reordering): every host's results bit-identical, each
// chunk holding every member, the error against the exact float sum within
// the width's bound (src/quantize.ts ERROR_BOUND), a member of another width
// named at open, and the residual that error feedback is built on.
import { describe, expect, test } from "bun:test";
import type { RoundReport } from "../../src/collective.ts";
import { EARLY } from "../../src/collective/early.ts";
import { STREAM_GATHER } from "../../src/collective/options.ts";
import { ERROR_BOUND } from "../../src/quantize.ts";
import { mulberry32 } from "../../src/random.ts";
import { CLEAN, openPair, runGradients, SimWorld, simGradient, simPrograms, type Faults } from "./world.ts";

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
  /** Result chunks the members gathered in the rounds' waits (early.ts). */
  gatheredEarly: number;
}

/** HOSTS members at `bits` run `rounds` all-reduces of seeded lengths (some
 * longer than one protocol round) over a world with `faults`. */
async function run(
  bits: 8 | 4, seed: number, faults: Faults, rounds: number,
  o: { residual?: boolean; feedback?: boolean; sameGradient?: boolean; callerFeedback?: boolean; setup?: (w: SimWorld) => void } = {},
): Promise<Run> {
  const world = new SimWorld(seed, faults, programs.slice(0, HOSTS), PORT);
  o.setup?.(world);
  const comms = world.hosts.map((_, rank) => world.communicator(rank, { bits, errorFeedback: o.feedback ?? false, roundTimeoutMs: 20_000, openTimeoutMs: 5_000 }));
  const rnd = mulberry32(seed);
  const perRound = CHUNKS * ELEMS * 2;
  const lengths = o.sameGradient ? new Array(rounds).fill(perRound + 77) : Array.from({ length: rounds }, () => 1 + Math.floor(rnd() * perRound * 1.3));
  const r: Run = { outs: [], resids: [], xs: [], lengths, reps: [], world, gatheredEarly: 0 };
  try {
    await world.run(
      comms.map((c) => async (rank: number) => {
        await c.connect();
        r.outs[rank] = [];
        r.resids[rank] = [];
        r.xs[rank] = [];
        r.reps[rank] = [];
        // one gradient buffer, as a trainer has (error feedback keys its residual by it)
        const buf = new Float32Array(o.sameGradient ? lengths[0] : 0);
        // callerFeedback: error feedback as the communicator's own was made
        // before the transform's pass took it in: x + the residual summed
        // into a Float32Array first (ErrorFeedback.input), the residual
        // handed to the round to overwrite
        const mine = new Float32Array(o.callerFeedback ? lengths[0] : 0);
        for (let k = 0; k < rounds; k++) {
          let x = o.sameGradient ? buf : simGradient(seed, k, rank, lengths[k]);
          if (o.sameGradient) x.set(simGradient(seed, 0, rank, lengths[0]));
          r.xs[rank].push(Float32Array.from(x));
          const residual = o.callerFeedback ? mine : o.residual ? new Float32Array(x.length) : undefined;
          if (o.callerFeedback) x = x.map((v, i) => v + mine[i]);
          r.reps[rank].push(await c.allreduce(x, { residual }));
          r.outs[rank].push(Float32Array.from(x));
          if (residual) r.resids[rank].push(residual);
        }
        await c.leave(30_000);
      }),
      3_600_000,
    );
    r.gatheredEarly = comms.reduce((a, c) => a + c.stats.gatheredEarly, 0);
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

  for (const bits of [8, 4] as const) {
    test(`${bits} bits: the residual is what quantizing took from each rank (after the inverse transform): the sum of x - residual is the result but for the owner's step`, async () => {
      const r = await run(bits, 777 + bits, CLEAN, 3, { residual: true });
      for (let k = 0; k < 3; k++) {
        const out = r.outs[0][k];
        let all = 0, owner = 0, norm = 0, resid = 0, xs = 0;
        for (let i = 0; i < out.length; i++) {
          let exact = 0, sent = 0;
          for (let rank = 0; rank < HOSTS; rank++) {
            exact += r.xs[rank][k][i];
            sent += r.xs[rank][k][i] - r.resids[rank][k][i];
            resid += r.resids[rank][k][i] ** 2;
            xs += r.xs[rank][k][i] ** 2;
          }
          all += (out[i] - exact) ** 2;
          owner += (out[i] - sent) ** 2;
          norm += exact ** 2;
        }
        // each rank's error is a small, non-zero part of its gradient
        expect(resid).toBeGreaterThan(0);
        expect(Math.sqrt(resid / xs)).toBeLessThan(ERROR_BOUND[bits]);
        // what is left once the residuals are taken out is the owner's rounding alone: less than all of it
        expect(owner).toBeLessThan(all);
        expect(Math.sqrt(owner / norm)).toBeLessThan(ERROR_BOUND[bits]);
        console.log(`[sim bits] ${bits} bits residual: relative error ${Math.sqrt(all / norm).toExponential(2)}, without the ranks' own ${Math.sqrt(owner / norm).toExponential(2)}`);
      }
    }, 120_000);
  }

  test("the gather done in the rounds' waits (early.ts) gives the same bits as done at the end, and so does the residual, clean and under faults", async () => {
    const batch = EARLY.batch;
    try {
      for (const bits of [8, 4] as const)
        for (const seed of [515 + bits, 14000 + bits * 1000 + 3]) {
          const faults = seed < 14000 ? CLEAN : faultsOf(seed);
          EARLY.enabled = false;
          const end = await run(bits, seed, faults, 4, { residual: true });
          EARLY.enabled = true;
          EARLY.batch = 1; // (16 chunks a round here: gather at every wait)
          const early = await run(bits, seed, faults, 4, { residual: true });
          expect(end.gatheredEarly).toBe(0);
          expect(early.gatheredEarly).toBeGreaterThan(0);
          for (let rank = 0; rank < HOSTS; rank++)
            for (let k = 0; k < 4; k++) {
              const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer).equals(Buffer.from(b.buffer));
              expect({ bits, seed, rank, k, out: same(early.outs[rank][k], end.outs[rank][k]), resid: same(early.resids[rank][k], end.resids[rank][k]) })
                .toEqual({ bits, seed, rank, k, out: true, resid: true });
            }
          console.log(`[sim bits] ${bits} bits, seed ${seed}: ${early.gatheredEarly} result chunks gathered in the waits, same bits as at the end`);
        }
    } finally {
      EARLY.enabled = true;
      EARLY.batch = batch;
    }
  }, 300_000);

  test("the gather's streaming stores (rounds of 4 MiB or more; forced here) give the same bits as plain ones, at 16, 8 and 4 bits, clean and under faults", async () => {
    const streamFrom = STREAM_GATHER.minValues, batch = EARLY.batch;
    const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer).equals(Buffer.from(b.buffer));
    EARLY.batch = 1; // (16 chunks a round here: gather at every wait)
    try {
      for (const bits of [8, 4] as const)
        for (const seed of [616 + bits, 15000 + bits * 1000 + 7]) {
          const faults = seed < 15000 ? CLEAN : faultsOf(seed);
          STREAM_GATHER.minValues = Infinity;
          const plain = await run(bits, seed, faults, 4, { residual: true });
          STREAM_GATHER.minValues = 0;
          const streamed = await run(bits, seed, faults, 4, { residual: true });
          expect(streamed.gatheredEarly).toBeGreaterThan(0); // (the early gather streams too)
          for (let rank = 0; rank < HOSTS; rank++)
            for (let k = 0; k < 4; k++)
              expect({ bits, seed, rank, k, out: same(streamed.outs[rank][k], plain.outs[rank][k]), resid: same(streamed.resids[rank][k], plain.resids[rank][k]) })
                .toEqual({ bits, seed, rank, k, out: true, resid: true });
        }
      for (const seed of [717, 16007]) {
        const faults = seed < 16000 ? CLEAN : faultsOf(seed);
        const n = CHUNKS * ELEMS * 2 + 33;
        STREAM_GATHER.minValues = Infinity;
        const plain = await runGradients(new SimWorld(seed, faults, programs.slice(0, HOSTS), PORT), seed, 4, n, { bits: 16 });
        STREAM_GATHER.minValues = 0;
        const streamed = await runGradients(new SimWorld(seed, faults, programs.slice(0, HOSTS), PORT), seed, 4, n, { bits: 16 });
        expect(streamed.hashes).toEqual(plain.hashes);
        for (let rank = 1; rank < HOSTS; rank++) expect(streamed.hashes[rank]).toEqual(streamed.hashes[0]);
      }
    } finally {
      STREAM_GATHER.minValues = streamFrom;
      EARLY.batch = batch;
    }
  }, 300_000);

  test("error feedback (on by default at 8 and 4 bits): the same gradient 16 steps running, the results' running sum stays within twice one step's error of the exact one (the owner's rounding is not fed back); without it, over twice that", async () => {
    for (const bits of [8, 4] as const) {
      const steps = 16;
      const drift = async (feedback: boolean) => {
        const r = await run(bits, 31 + bits, CLEAN, steps, { feedback, sameGradient: true });
        const n = r.lengths[0];
        let worst = 0, one = 0;
        const total = new Float64Array(n), exact = new Float64Array(n);
        for (let i = 0; i < n; i++) for (let rank = 0; rank < HOSTS; rank++) exact[i] += r.xs[rank][0][i];
        for (let k = 0; k < steps; k++) {
          let num = 0, den = 0;
          for (let i = 0; i < n; i++) {
            total[i] += r.outs[0][k][i];
            num += (total[i] - (k + 1) * exact[i]) ** 2;
            den += exact[i] ** 2;
          }
          if (k === 0) one = Math.sqrt(num / den);
          worst = Math.sqrt(num / den); // the running sum's error after the last step, in units of one step's sum
        }
        return { one, last: worst };
      };
      const on = await drift(true), off = await drift(false);
      console.log(`[sim bits] ${bits} bits, ${steps} steps of the same gradient: running-sum error (in one sum's norm) with feedback ${on.last.toFixed(3)}, without ${off.last.toFixed(3)} (one step ${on.one.toFixed(3)})`);
      expect(on.last).toBeLessThan(off.last / 2);
      expect(on.last).toBeLessThan(2 * on.one);
    }
  }, 300_000);

  test("error feedback's add and residual copy done in the transform's pass give the bits of the separate passes, clean and under faults", async () => {
    for (const bits of [8, 4] as const)
      for (const [seed, faults] of [[41, CLEAN], [42, faultsOf(42)], [43, faultsOf(43)]] as const) {
        const fused = await run(bits, seed, faults, 6, { feedback: true, sameGradient: true });
        const apart = await run(bits, seed, faults, 6, { callerFeedback: true, sameGradient: true });
        for (let rank = 0; rank < HOSTS; rank++)
          for (let k = 0; k < 6; k++) {
            const a = fused.outs[rank][k], b = apart.outs[rank][k];
            expect([bits, seed, rank, k, Buffer.from(a.buffer).equals(Buffer.from(b.buffer))]).toEqual([bits, seed, rank, k, true]);
          }
        // and feedback does something: the steps' results differ from the first
        expect(Buffer.from(fused.outs[0][1].buffer).equals(Buffer.from(fused.outs[0][0].buffer))).toBe(false);
      }
  }, 300_000);

  test("a member that sits a round out (a straggler, its link 600 ms slow) keeps all of its gradient as that round's residual", async () => {
    for (const bits of [8, 4] as const) {
      const r = await run(bits, 4243, CLEAN, 10, { residual: true, sameGradient: true, setup: (w) => (w.hosts[3].sendDelayMs = 600) });
      let sat = 0;
      for (let k = 0; k < 10; k++) {
        const reps = r.reps[3][k];
        if (reps.some((p) => p.active.includes(3))) continue;
        sat++;
        // nothing of rank 3's went into the sum: its residual is its whole input (through the
        // transform and back: float rounding only), never what the buffer held before
        const x = r.xs[3][k], e = r.resids[3][k];
        let num = 0, den = 0;
        for (let i = 0; i < x.length; i++) (num += (e[i] - x[i]) ** 2), (den += x[i] ** 2);
        expect([bits, k, Math.sqrt(num / den) < 1e-5]).toEqual([bits, k, true]);
      }
      expect(sat).toBeGreaterThan(0);
    }
  }, 300_000);

  test("a member at another width is named on every side at open", async () => {
    const errs = await openPair(new SimWorld(99, CLEAN, programs.slice(0, 2), PORT), { bits: 8 }, { bits: 16 });
    expect(errs.length).toBe(2);
    for (const m of errs) expect(m).toMatch(/different job \(--bits (8 here, 16|16 here, 8) there\)/);
    expect(errs.some((m) => m.includes("rank 1"))).toBe(true);
    expect(errs.some((m) => m.includes("rank 0"))).toBe(true);
  }, 60_000);
});
