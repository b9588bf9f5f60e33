// A Byzantine member in the simulator (test/sim/world.ts; real XDP program,
// virtual clock, seeded faults): rank 1 is honest in what its communicator
// does, but with every datagram it sends it also sprays well-formed RESULTs
// under its own rank for every chunk of the round it is in and the next, to
// every other member (test/hostile.test.ts does the same against a live
// job). Results from a rank that does not own the chunk must never reach
// anyone's output: every host's results stay bit-identical and within the
// quantizer's error of the exact sum, under loss too. A failing schedule
// prints its seed; AINFTP_SIM_SEED=<seed> replays it.
//
// What this found (issue 16): before a host knows a round's plan its
// program stores such a RESULT, also into the entry of a chunk the host
// owns itself; a peer's retransmission (EV_RESEND) or RESULT_REQ then made
// the owner resend that entry under its own rank, and every receiver took
// it as the owner's result (the honest liar's own node included): the first
// case, seed 9000 before the fix. In a partial round the liar may turn out
// to own a chunk it forged (claiming every member): under the owner's rank,
// such a forgery stood where it came first; the plan's active set tells it
// from the owner's (the second case, seed 9100 before the fix). A
// straggler rounds behind learnt a round's plan only when it started the
// round: a forgery stored first kept the owner's result out (refused as a
// duplicate), and when the straggler emptied the forgery the owner, rounds
// ahead, no longer held its result: the round stalled (the third case,
// seeds 9100-9105 and 9110-9112; 0 of seeds 9000-9300 passed without a
// stall). Now the next round's plan goes into the program as soon as its
// leader's piece is here (receiver.ts planAhead), a forgery's entry is
// emptied then, before any plan the previous round's tells the owner's
// result from a forgery (result_displaced), and the owners keep up to 16
// rounds of results (recovery.ts cacheDepth, was 4) for a member that asks late.
import { describe, expect, test } from "bun:test";
import { PKT_CONTRIB, PKT_CONTROL, PKT_RESULT } from "../../src/abi.ts";
import { datagram } from "../../src/packet.ts";
import { mulberry32 } from "../../src/random.ts";
import { SimWorld, simGradient, simPrograms, type Faults } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");

const HOSTS = 4;
const CHUNKS = 16;
const ELEMS = 64;
const PORT = 47124;
const ROUNDS_DEFAULT = 8;
const JOB = 7; // SimWorld.communicator's job
const LIAR = 1;
const SCHEDULES = Number(process.env.AINFTP_SIM_HOSTILE_SCHEDULES ?? 40);
const ONLY = process.env.AINFTP_SIM_SEED === undefined ? null : Number(process.env.AINFTP_SIM_SEED);

const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);
/** How far the tally of forged RESULTs may exceed those sent, as a share (see the first case). */
const TALLY_SLACK = 0.01;
/** Straggler schedules that must run without a stall: 9100-9105 and 9110-9112 stalled before planAhead and the up to 16 rounds of results the owners keep. */
const STRAGGLER_SEEDS = [9100, 9101, 9102, 9103, 9104, 9105, 9106, 9107, 9108, 9109, 9110, 9111, 9112];


/** Loss up to 5% (retransmissions and resends, where the hole was), some reordering. */
function faultsOf(seed: number): Faults {
  const rnd = mulberry32(seed ^ 0xbad);
  return { loss: 0.05 * rnd(), dup: 0.02 * rnd(), reorder: 0.2 * rnd(), reorderMs: 3 * rnd(), latencyMs: 0.02 + 0.2 * rnd(), jitterMs: 0.3 * rnd() };
}

/** One schedule with the liar spraying; returns the forged RESULTs sent and
 * the rounds checked. */
async function liarSchedule(seed: number, o: { rounds?: number; straggler?: number; inJob?: boolean } = {}): Promise<{ forged: number; rounds: number; whole: number; partial: number; swept: number }> {
  // with a straggler, no loss (a straggler under loss stalls rounds with or
  // without a liar: a known limit of the retransmission, not this case's)
  const world = new SimWorld(seed, o.straggler === undefined ? faultsOf(seed) : { ...faultsOf(seed), loss: 0, dup: 0 }, programs, PORT);
  if (o.straggler !== undefined) world.hosts[o.straggler].sendDelayMs = 40;
  const ROUNDS = o.rounds ?? ROUNDS_DEFAULT;
  let partial = 0;
  const poison = new Int16Array(ELEMS).fill(-777);
  let forged = 0;
  // inJob: only while the liar is in an allreduce, and not for the round
  // after the last (each forgery then meets a round its victims run, where
  // it must be counted; else the handshake's and the last round's sprays
  // meet a program not yet attached to the job, or stay stored for a round
  // that never comes)
  let ahead = o.inJob ? 0 : 2;
  world.tap = (from, _to, data) => {
    if (from !== LIAR || data.length < 32 || ahead === 0) return;
    const type = data[5];
    if (type !== PKT_CONTRIB && type !== PKT_CONTROL) return;
    const round = new DataView(data.buffer, data.byteOffset).getUint32(12, true);
    for (let victim = 0; victim < HOSTS; victim++) {
      if (victim === LIAR) continue;
      for (const r of ahead === 2 ? [round, round + 1] : [round])
        for (let chunk = 0; chunk < CHUNKS; chunk++) {
          if (chunk % HOSTS === LIAR) continue; // its own when all are active (a partial round: caught by the count)
          world.inject(LIAR, victim, datagram({ type: PKT_RESULT, jobId: JOB, round: r, chunk, rank: LIAR, contributors: HOSTS }, poison));
          forged++;
        }
    }
  };
  const comms = world.hosts.map((_, rank) => world.communicator(rank, { roundTimeoutMs: 20_000, openTimeoutMs: 5_000, ...(o.straggler !== undefined ? { deadlineMs: 5 } : {}) }));
  const rnd = mulberry32(seed);
  // whole chunks: the liar's forged counts are a full chunk's
  const lengths = Array.from({ length: ROUNDS }, () => ELEMS * (1 + Math.floor(rnd() * CHUNKS)));
  let checked = 0, whole = 0, swept = 0;
  try {
    const per = (await world.run(
      comms.map((c) => async (rank: number) => {
        await c.connect();
        const outs: { x: Float32Array; active: number[]; kept: Uint16Array }[] = [];
        for (let r = 0; r < ROUNDS; r++) {
          const x = simGradient(seed, r, rank, lengths[r]);
          if (o.inJob && rank === LIAR) ahead = r < ROUNDS - 1 ? 2 : 1;
          const reps = await c.allreduce(x);
          if (o.inJob && rank === LIAR) ahead = 0;
          // whole chunks of at most CHUNKS: one protocol round each
          outs.push({ x, active: reps[0].active, kept: c.contributorsOf(reps[0].round, reps[0].chunks) });
        }
        await c.leave(30_000);
        return outs;
      }),
      3_600_000,
    )) as { x: Float32Array; active: number[]; kept: Uint16Array }[][];
    for (let r = 0; r < ROUNDS; r++) {
      const { x: ref, active, kept } = per[0][r];
      for (let k = 1; k < HOSTS; k++) {
        expect({ seed, round: r, rank: k, same: Buffer.from(per[k][r].x.buffer).equals(Buffer.from(ref.buffer)) }).toEqual({ seed, round: r, rank: k, same: true });
        expect({ seed, round: r, rank: k, kept: [...per[k][r].kept] }).toEqual({ seed, round: r, rank: k, kept: [...kept] });
      }
      // no chunk holds more than the plan's active members (a straggler sits
      // out; an owner's deadline closes a slot with fewer, under loss)
      expect({ seed, round: r, active, kept: [...kept] }).toEqual({ seed, round: r, active, kept: [...kept].map((v) => Math.min(v, active.length)) });
      const exact = new Float64Array(lengths[r]);
      let scale = 0;
      for (const k of active) {
        const x = simGradient(seed, r, k, lengths[r]);
        for (let i = 0; i < x.length; i++) (exact[i] += x[i]), (scale = Math.max(scale, Math.abs(x[i])));
      }
      let worst = 0, at = -1;
      for (let i = 0; i < exact.length; i++) {
        if (kept[Math.floor(i / ELEMS)] !== active.length) continue; // a subset's sum: bit-identity is checked above
        const e = Math.abs(ref[i] - exact[i]);
        if (e > worst) (worst = e), (at = i);
      }
      expect({ seed, round: r, chunk: Math.floor(at / ELEMS), ok: worst <= (active.length * scale) / 8192 }).toEqual({ seed, round: r, chunk: Math.floor(at / ELEMS), ok: true });
      checked++;
      if (active.length < HOSTS) partial++;
      whole += kept.filter((v) => v === active.length).length;
    }
  } catch (e) {
    console.log(`[sim] FAILED seed ${seed} (a member forging RESULTs, faults ${JSON.stringify(world.faults)}) after ${checked} verified rounds: replay with AINFTP_SIM_SEED=${seed}`);
    throw e;
  } finally {
    for (const c of comms) (swept += c.controlDrops.not_owner + c.controlDrops.mal_contributors), c.close(0);
  }
  return { forged, rounds: checked, whole, partial, swept };
}

/** The programs' counters under which a forged RESULT ends (test/hostile.test.ts
 * sums the same), and foreign_job: here the liar starts spraying when its own
 * handshake ends, and a victim whose handshake has not ended is not attached
 * to the job yet (a run without the liar counts no foreign_job). */
const FORGED_RESULT = ["not_owner", "mal_contributors", "result_early_dup", "result_contested", "result_displaced", "result_window", "foreign_job"] as const;

function forgedCounted(): number {
  let n = 0;
  for (const p of programs) {
    const c = p.obj.counters() as Record<string, number>;
    for (const k of FORGED_RESULT) n += c[k] ?? 0;
  }
  return n;
}

describe.skipIf(!root)("a Byzantine member in the simulator (issue 16)", () => {
  test(`a member sending well-formed RESULTs under its own rank for chunks it does not own (${SCHEDULES} seeded schedules × ${ROUNDS_DEFAULT} rounds, with loss): every result is the owners', bit-identical and exact; each forgery counted once`, async () => {
    let forged = 0, rounds = 0, swept = 0;
    const seeds = ONLY !== null ? [ONLY] : Array.from({ length: SCHEDULES }, (_, i) => 9000 + i);
    const before = forgedCounted();
    for (const seed of seeds) {
      const o = await liarSchedule(seed, { inJob: true });
      forged += o.forged;
      rounds += o.rounds;
      swept += o.swept;
    }
    const counted = forgedCounted() - before + swept;
    console.log(`[sim] liar: seeds ${seeds[0]}..${seeds[seeds.length - 1]}, ${rounds} rounds verified, ${forged} forged RESULTs, ${counted} counted (${((100 * counted) / forged).toFixed(3)}%; ${swept} of them by the nodes' sweeps)`);
    expect(rounds).toBe(seeds.length * ROUNDS_DEFAULT);
    expect(swept).toBeGreaterThan(0);
    // the injected forgeries cross no faults: each reaches a program once.
    // The honest results the same counters may hold (a copy the network
    // duplicated, before the plan; one out of window after its round) are
    // the slack: see the log line for the figure
    expect(counted).toBeGreaterThanOrEqual(forged);
    expect(counted).toBeLessThanOrEqual(forged * (1 + TALLY_SLACK));
  }, 600_000);

  // With a straggler (rank 3, its link 40 ms slow) leaders stop waiting for
  // it: in those rounds the liar owns chunks 1, 4, 7, ... of 3, and its
  // forgeries of 4, 7, ... (claiming 4 contributors) arrive under the owner's
  // rank before the plan. The owner's result must replace them, and the
  // straggler, rounds behind, must not stall on a forgery stored first.
  test("... and in partial rounds (a straggler sits out), where the liar turns out to own chunks it forged before the plan; the straggler never stalls", async () => {
    let rounds = 0, partial = 0;
    const seeds = ONLY !== null ? [ONLY] : STRAGGLER_SEEDS;
    for (const seed of seeds) {
      const o = await liarSchedule(seed, { rounds: 12, straggler: 3 });
      rounds += o.rounds;
      partial += o.partial;
    }
    console.log(`[sim] liar with a straggler: seeds ${seeds.join(",")}: ${rounds} rounds verified, ${partial} of them partial`);
    expect(rounds).toBe(seeds.length * 12);
    expect(partial).toBeGreaterThan(0);
  }, 600_000);

  // Seed 9112 was the last of these to stall: the straggler got a round's
  // plan after the owners' results (the network reordered them), a forgery
  // stood in the entry, and the active set changed from the round before,
  // so the previous plan could not tell the owner's result from the forgery
  // (result_contested, dropped). The straggler empties the forgery at the
  // plan and asks the owner at once; its link is 40 ms slow and the owners
  // run 3 ms rounds, and with 4 rounds of results kept they held it no
  // longer. Small rounds keep 16 (recovery.ts cacheDepth): it is in STRAGGLER_SEEDS
  // now, and the sweep below passed 301 of 301 seeds (9000-9300).

  // AINFTP_SIM_HOSTILE_SWEEP=9000-9300: the straggler schedule over a seed
  // range, printing how many pass (the before/after figure).
  const sweep = process.env.AINFTP_SIM_HOSTILE_SWEEP;
  test.skipIf(!sweep)(`the straggler schedule over seeds ${sweep ?? "(AINFTP_SIM_HOSTILE_SWEEP unset: skipped)"}`, async () => {
    const [a, b] = sweep!.split("-").map(Number);
    const fails: number[] = [];
    for (let seed = a; seed <= b; seed++) {
      const log = console.log;
      console.log = () => {};
      try {
        await liarSchedule(seed, { rounds: 12, straggler: 3 });
      } catch {
        fails.push(seed);
      } finally {
        console.log = log;
      }
    }
    console.log(`[sim] straggler sweep ${a}-${b}: ${b - a + 1 - fails.length} of ${b - a + 1} pass; stalled: ${fails.join(",")}`);
  }, 3_600_000);
});
