// Issues 14 and 15, a large round's plan in stages (src/collective/stages.ts):
// the exponents and the plan go a stage of chunks at a time, and a stage's
// data leaves as soon as its plan is here. The sums must not change: the
// shared scale of a chunk is the same maximum over the same active members
// whether it is planned with the first stage or a later one, and the
// stochastic rounding is seeded per round, rank and chunk. So a staged run
// gives bit for bit what an unstaged one gives, on a clean network and
// under loss, duplication and reordering, at 16 bits and at 8 (with error
// feedback: the residual is the same too). The tests count the plan pieces
// that start past chunk 0 (only a staged plan has any at this size), so a
// run that silently stopped staging fails.
import { afterEach, describe, expect, test } from "bun:test";
import { CTRL_EXPS_MAX, PKT_CONTROL, readHeader } from "../../src/abi.ts";
import { TUNING } from "../../src/collective/options.ts";
import { stageEnds } from "../../src/collective/stages.ts";
import { CLEAN, SimWorld, simGradient, simPrograms, type Faults } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim stages] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");

const HOSTS = 4;
const CHUNKS = 48;
const ELEMS = 64;
const PORT = 47131;
const ROUNDS = 5;
const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);
// TUNING is read-only to the code; the tests stage rounds of this size
const tuning = TUNING as unknown as { STAGE_MIN_CHUNKS: number; STAGE_FIRST_DIV: number };
const saved = { ...tuning };
const LOSSY: Faults = { loss: 0.05, dup: 0.02, reorder: 0.2, reorderMs: 0.3, latencyMs: 0.05, jitterMs: 0.02 };

interface Run {
  /** Per rank, per round: the sums' hash (and with feedback, the residual's). */
  hashes: string[][];
  /** Plan pieces sent that start past chunk 0: a later stage's. */
  laterPieces: number;
}

async function run(staged: boolean, bits: 16 | 8, seed: number, faults: Faults): Promise<Run> {
  tuning.STAGE_MIN_CHUNKS = staged ? 8 : 0;
  tuning.STAGE_FIRST_DIV = 8;
  const world = new SimWorld(seed, faults, programs, PORT);
  let laterPieces = 0;
  world.drop = (_from, _to, d) => {
    if (d.length < 32) return false;
    const { type, chunk, contributors: kind } = readHeader(new DataView(d.buffer, d.byteOffset, d.byteLength), 0);
    if (type === PKT_CONTROL && kind === CTRL_EXPS_MAX && chunk > 0) laterPieces++;
    return false;
  };
  const feedback = bits === 8;
  const comms = world.hosts.map((_, rank) => world.communicator(rank, { bits, errorFeedback: feedback, roundTimeoutMs: 20_000, openTimeoutMs: 5_000 }));
  const hashes: string[][] = world.hosts.map(() => []);
  try {
    await world.run(comms.map((c) => async (rank: number) => {
      await c.connect();
      for (let k = 0; k < ROUNDS; k++) {
        // (a short last chunk: the stages' last piece is short too)
        const x = simGradient(seed, k, rank, CHUNKS * ELEMS * (bits === 8 ? 2 : 1) - 17);
        await c.allreduce(x);
        hashes[rank].push(Bun.hash(x.buffer).toString(16));
      }
      await c.leave(30_000);
    }), 600_000);
  } finally {
    for (const c of comms) c.close(0);
  }
  return { hashes, laterPieces };
}

describe.skipIf(!root)("a large round's plan in stages (simulated network)", () => {
  afterEach(() => Object.assign(tuning, saved));

  test("the stages of this test's rounds: a small first one, then twice the one before", () => {
    tuning.STAGE_MIN_CHUNKS = 8;
    tuning.STAGE_FIRST_DIV = 8;
    expect(stageEnds(CHUNKS)).toEqual([6, 18, 48]);
  });

  for (const bits of [16, 8] as const)
    for (const [name, faults] of [["clean", CLEAN], ["5% loss, 2% duplication, 20% reordering", LOSSY]] as const)
      test(`${bits} bits, ${name}: staged rounds sum bit for bit what unstaged ones do, on every rank`, async () => {
        const plain = await run(false, bits, 41, CLEAN);
        const staged = await run(true, bits, 41, faults);
        console.log(`[sim stages] ${bits} bits, ${name}: ${staged.laterPieces} plan pieces of later stages sent (unstaged: ${plain.laterPieces})`);
        expect(plain.laterPieces).toBe(0);
        expect(staged.laterPieces).toBeGreaterThanOrEqual(2 * (HOSTS - 1));
        for (let k = 0; k < HOSTS; k++) {
          expect(staged.hashes[k]).toEqual(plain.hashes[0]);
          expect(plain.hashes[k]).toEqual(plain.hashes[0]);
        }
      }, 120_000);
});
