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
// from the owner's (the second case, seed 9100 before the fix).
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


/** Loss up to 5% (retransmissions and resends, where the hole was), some reordering. */
function faultsOf(seed: number): Faults {
  const rnd = mulberry32(seed ^ 0xbad);
  return { loss: 0.05 * rnd(), dup: 0.02 * rnd(), reorder: 0.2 * rnd(), reorderMs: 3 * rnd(), latencyMs: 0.02 + 0.2 * rnd(), jitterMs: 0.3 * rnd() };
}

/** One schedule with the liar spraying; returns the forged RESULTs sent and
 * the rounds checked. */
async function liarSchedule(seed: number, o: { rounds?: number; straggler?: number } = {}): Promise<{ forged: number; rounds: number; whole: number; partial: number }> {
  // with a straggler, no loss (a straggler under loss stalls rounds with or
  // without a liar: a known limit of the retransmission, not this case's)
  const world = new SimWorld(seed, o.straggler === undefined ? faultsOf(seed) : { ...faultsOf(seed), loss: 0, dup: 0 }, programs, PORT);
  if (o.straggler !== undefined) world.hosts[o.straggler].sendDelayMs = 40;
  const ROUNDS = o.rounds ?? ROUNDS_DEFAULT;
  let partial = 0;
  const poison = new Int16Array(ELEMS).fill(-777);
  let forged = 0;
  world.tap = (from, _to, data) => {
    if (from !== LIAR || data.length < 32) return;
    const type = data[5];
    if (type !== PKT_CONTRIB && type !== PKT_CONTROL) return;
    const round = new DataView(data.buffer, data.byteOffset).getUint32(12, true);
    for (let victim = 0; victim < HOSTS; victim++) {
      if (victim === LIAR) continue;
      for (const r of [round, round + 1])
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
  let checked = 0, whole = 0;
  try {
    const per = (await world.run(
      comms.map((c) => async (rank: number) => {
        await c.connect();
        const outs: { x: Float32Array; active: number[]; kept: Uint16Array }[] = [];
        for (let r = 0; r < ROUNDS; r++) {
          const x = simGradient(seed, r, rank, lengths[r]);
          const reps = await c.allreduce(x);
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
    for (const c of comms) c.close(0);
  }
  return { forged, rounds: checked, whole, partial };
}

describe.skipIf(!root)("a Byzantine member in the simulator (issue 16)", () => {
  test(`a member sending well-formed RESULTs under its own rank for chunks it does not own (${SCHEDULES} seeded schedules × ${ROUNDS_DEFAULT} rounds, with loss): every result is the owners', bit-identical and exact`, async () => {
    let forged = 0, rounds = 0, notOwner = 0;
    const seeds = ONLY !== null ? [ONLY] : Array.from({ length: SCHEDULES }, (_, i) => 9000 + i);
    const before = programs.map((p) => p.obj.counters().not_owner ?? 0);
    for (const seed of seeds) {
      const o = await liarSchedule(seed);
      forged += o.forged;
      rounds += o.rounds;
    }
    programs.forEach((p, i) => (notOwner += (p.obj.counters().not_owner ?? 0) - before[i]));
    console.log(`[sim] liar: seeds ${seeds[0]}..${seeds[seeds.length - 1]}, ${rounds} rounds verified, ${forged} forged RESULTs, ${notOwner} dropped by the programs as not_owner`);
    expect(rounds).toBe(seeds.length * ROUNDS_DEFAULT);
    expect(notOwner).toBeGreaterThan(0);
  }, 600_000);

  // With a straggler (rank 3, its link 600 ms slow) leaders stop waiting for
  // it: in those rounds the liar owns chunks 1, 4, 7, ... of 3, and its
  // forgeries of 4, 7, ... (claiming 4 contributors) arrive under the owner's
  // rank before the plan. The owner's result must replace them.
  test("... and in partial rounds (a straggler sits out), where the liar turns out to own chunks it forged before the plan; the straggler gives no round up", async () => {
    let rounds = 0, partial = 0;
    // 9100-9105 and 9110-9112 stalled with 4 rounds of results kept (below)
    const seeds = ONLY !== null ? [ONLY] : Array.from({ length: 13 }, (_, i) => 9100 + i);
    for (const seed of seeds) {
      const o = await liarSchedule(seed, { rounds: 12, straggler: 3 });
      rounds += o.rounds;
      partial += o.partial;
    }
    console.log(`[sim] liar with a straggler: ${rounds} rounds verified, ${partial} of them partial, none given up`);
    expect(rounds).toBe(seeds.length * 12);
    expect(partial).toBeGreaterThan(0);
  }, 600_000);

  // Known and open until the owners kept 16 rounds of results: the
  // straggler (passive, rounds behind) learns a round's plan late; before
  // it, the liar's forgery for a chunk is stored first and the owner's
  // result is refused as a duplicate. The straggler empties the forgery once
  // it has the plan and asks the owner again; with 4 rounds kept
  // (TUNING.CACHE_ROUNDS) the owner was further ahead and held it no longer,
  // and the straggler's round failed (seeds 9100-9105, 9110-9112; nothing
  // wrong was summed). The test above runs those seeds with no round given up.
});
