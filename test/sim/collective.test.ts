// The collective in one process: N communicators over the simulated world
// (test/sim/world.ts) with the real XDP program per host (BPF_PROG_TEST_RUN,
// root), a virtual clock and seeded faults. A failing schedule prints its
// seed; AINFTP_SIM_SEED=<seed> replays that one schedule. By default 250
// fault schedules of 8 rounds (2000 rounds) and 25 death schedules run;
// AINFTP_SIM_SCHEDULES=1250 runs 10k fault rounds.
import { describe, expect, test } from "bun:test";
import { RoundError, type RoundReport } from "../../src/collective.ts";
import { PKT_RESULT } from "../../src/abi.ts";
import { reportError } from "../../cli/io.ts";
import { mulberry32 } from "../../src/random.ts";
import { CLEAN, SimWorld, simGradient, simPrograms, type Faults } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");

const MAX_HOSTS = 6;
const CHUNKS = 16;
const ELEMS = 64;
const PORT = 47123;
const ROUNDS = 8;
const SCHEDULES = Number(process.env.AINFTP_SIM_SCHEDULES ?? 250);
const ONLY = process.env.AINFTP_SIM_SEED === undefined ? null : Number(process.env.AINFTP_SIM_SEED);

const programs = simPrograms(root, MAX_HOSTS, CHUNKS, ELEMS, PORT);


/** Faults drawn from the seed: up to 5% loss, 5% duplication, 30% reordering. */
function faultsOf(seed: number): Faults {
  const rnd = mulberry32(seed ^ 0x5eed);
  return {
    loss: 0.05 * rnd(), dup: 0.05 * rnd(), reorder: 0.3 * rnd(), reorderMs: 5 * rnd(), latencyMs: 0.02 + 0.2 * rnd(), jitterMs: 0.5 * rnd(),
  };
}

interface Outcome {
  reports: (RoundReport[] | null)[];
  outs: (Float32Array | null)[];
  contributors: Uint16Array[];
}

interface ScheduleOptions {
  rounds?: number;
  /** Before the run: stragglers, deaths, swarm verdicts. */
  setup?: (w: SimWorld) => void;
  /** Every chunk's result must hold every member's contribution. */
  complete?: boolean;
  /** Round timeout (virtual ms). */
  roundTimeoutMs?: number;
  /** Called by each host before its r-th all-reduce. */
  beforeRound?: (w: SimWorld, rank: number, r: number) => void;
  /** Chunks in flight per owner (default: the library's). */
  window?: number;
}

/** One schedule: N hosts connect, then run `rounds` all-reduces of random
 * lengths (some span two protocol rounds), then leave. Checks every round:
 * the results are bit-identical on every host that completed it, each chunk
 * holds the same contributor count everywhere, and a chunk that holds every
 * member is the exact sum within the quantizer's error. A round that fails
 * because members died (RoundError naming only hosts the world killed) is
 * skipped, as a node does once its swarm holds them dead. */
async function schedule(seed: number, n: number, faults: Faults, o: ScheduleOptions = {}): Promise<{ world: SimWorld; rounds: number; per: Outcome[] }> {
  const world = new SimWorld(seed, faults, programs.slice(0, n), PORT);
  o.setup?.(world);
  const comms = world.hosts.map((_, rank) => world.communicator(rank, { roundTimeoutMs: o.roundTimeoutMs ?? 20_000, openTimeoutMs: 5_000, ...(o.window ? { window: o.window } : {}) }));
  const rnd = mulberry32(seed);
  const rounds = o.rounds ?? ROUNDS;
  const lengths = Array.from({ length: rounds }, () => 1 + Math.floor(rnd() * CHUNKS * ELEMS * 1.3));
  let done = 0;
  let per: Outcome[] = [];
  try {
    per = (await world.run(
      comms.map((c) => async (rank: number) => {
        await c.connect();
        const out: Outcome = { reports: [], outs: [], contributors: [] };
        for (let r = 0; r < rounds; r++) {
          o.beforeRound?.(world, rank, r);
          const x = simGradient(seed, r, rank, lengths[r]);
          let reps: RoundReport[] | null = null;
          try {
            reps = await c.allreduce(x);
          } catch (e) {
            if (!(e instanceof RoundError) || !e.missingRanks.length || !e.missingRanks.every((k) => world.hosts[k].dead)) throw e;
            if (process.env.AINFTP_SIM_DEBUG) console.log(`[death] rank ${rank} at ${world.now.toFixed(1)}: ${String(e).slice(0, 260)}`);
          }
          out.reports.push(reps);
          out.outs.push(reps ? x : null);
          out.contributors.push(reps?.length === 1 ? c.contributorsOf(reps[0].round, reps[0].chunks) : new Uint16Array(0));
        }
        // as a node does: linger, serving resends, until every peer has left
        await c.leave(30_000);
        return out;
      }),
      3_600_000,
    )) as Outcome[];
    for (let r = 0; r < rounds; r++) {
      const live = per.filter((p, rank) => p && !world.hosts[rank].dead && p.outs[r]);
      if (live.length === 0) continue;
      const ref = live[0].outs[r]!;
      for (const p of live) {
        expect(Buffer.from(p.outs[r]!.buffer).equals(Buffer.from(ref.buffer))).toBe(true);
        expect([...p.contributors[r]]).toEqual([...live[0].contributors[r]]);
      }
      const k = live[0].contributors[r];
      const reps = live[0].reports[r]!;
      // the members whose contributions the round's results hold: the plan's active ones
      const active = reps.length === 1 ? reps[0].active : reps.every((x) => x.active.length === n) ? [...Array(n).keys()] : null;
      if (o.complete && k.length) expect({ seed, round: r, incomplete: [...k].filter((v) => v !== active!.length).length }).toEqual({ seed, round: r, incomplete: 0 });
      if (active) checkSums(seed, r, active, ref, k, lengths[r], o.complete === true);
      done++;
    }
  } catch (e) {
    console.log(`[sim] FAILED seed ${seed} (${n} hosts, faults ${JSON.stringify(faults)}) after ${done} verified rounds, virtual ${world.now.toFixed(1)} ms: replay with AINFTP_SIM_SEED=${seed}`);
    throw e;
  } finally {
    for (const c of comms) c.close(0);
  }
  return { world, rounds: done, per };
}

/** Chunks whose result holds every active member's contribution: within
 * the quantizer's error of the exact sum over the active members. */
function checkSums(seed: number, r: number, active: number[], out: Float32Array, contributors: Uint16Array, len: number, all: boolean): void {
  const exact = new Float64Array(len);
  const n = active.length;
  let scale = 0;
  for (const k of active) {
    const x = simGradient(seed, r, k, len);
    for (let i = 0; i < len; i++) (exact[i] += x[i]), (scale = Math.max(scale, Math.abs(x[i])));
  }
  for (let c = 0; c * ELEMS < len; c++) {
    if (contributors.length ? contributors[c] !== n : !all) continue;
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

/** A member (seeded) dies at a seeded moment of a seeded round; the swarm's
 * verdict comes 300 ms later. Returns the rounds a survivor completed after
 * the verdict, each checked to be complete and to leave the dead out. */
async function deathSchedule(seed: number, lossy: boolean): Promise<number> {
  const rnd = mulberry32(seed ^ 0xdead);
  const n = 3 + (seed % 3);
  const victim = Math.floor(rnd() * n);
  const killRound = 1 + Math.floor(rnd() * 4);
  const delay = rnd() * 2;
  const faults = lossy ? faultsOf(seed) : { ...faultsOf(seed), loss: 0 };
  // when each host started each all-reduce, and when the verdict came
  const startedAt: number[][] = Array.from({ length: n }, () => []);
  let verdictAt = Infinity;
  const { per } = await schedule(seed, n, faults, {
    rounds: killRound + 2 * n + 2, roundTimeoutMs: 3_000,
    beforeRound: (w, rank, r) => {
      startedAt[rank][r] = w.now;
      if (rank !== victim || r !== killRound) return;
      w.at(w.now + delay, () => w.kill(victim));
      w.at(w.now + delay + 300, () => {
        verdictAt = w.now;
        for (const h of w.hosts) if (!h.dead) w.comm(h.rank).fitMask = w.comm(h.rank).liveMask = ~(1n << BigInt(victim));
      });
    },
  });
  const survivor = per.findIndex((p, k) => k !== victim && p);
  // the all-reduces from the second after the kill's on, that a survivor
  // started after the verdict: all complete, none led by the dead member
  // or holding it (one started before may fail: a member that lost a dead
  // owner's result; and one planned before, with the dead member in it).
  // Some schedules finish before the verdict (the leaders' grace left the
  // dead member out).
  const after = (k: number) => per[k].reports.filter((_, i) => i >= killRound + 2 && startedAt[k][i] > verdictAt);
  const tail = after(survivor);
  if (process.env.AINFTP_SIM_DEBUG) console.log(`[death] seed ${seed} n ${n} victim ${victim} killRound ${killRound}: ${per.map((p, k) => p ? `r${k}: ${p.reports.map((r) => (r ? r.map((x) => `${x.round}:${x.leader}:${x.active.join("")}`).join("+") : "X")).join(" ")}` : `r${k}: dead`).join(" | ")}`);
  for (const r of tail) {
    expect({ seed, complete: r !== null }).toEqual({ seed, complete: true });
    for (const x of r!) expect({ seed, active: x.active.includes(victim), leader: x.leader === victim }).toEqual({ seed, active: false, leader: false });
  }
  // every survivor: the same rounds after the verdict complete, and every
  // round two survivors both completed had the same leader on both
  const leaders = (k: number) => per[k].reports.map((r) => r?.map((x) => `${x.round}:${x.leader}`).join("+") ?? null);
  per.forEach((p, k) => {
    if (!p || k === victim) return;
    expect({ seed, rank: k, incomplete: after(k).filter((r) => r === null).length }).toEqual({ seed, rank: k, incomplete: 0 });
    const mine = leaders(k), ref = leaders(survivor);
    mine.forEach((l, i) => {
      if (l !== null && ref[i] !== null) expect({ seed, rank: k, allreduce: i, leaders: l }).toEqual({ seed, rank: k, allreduce: i, leaders: ref[i] });
    });
  });
  return tail.length;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

describe.skipIf(!root)("collective in the simulator (real XDP program, virtual clock)", () => {
  test("clean network, 2..6 hosts: bit-identical results, exact sums, every chunk complete", async () => {
    for (const n of [2, 3, 4, 6]) {
      const { world, rounds } = await schedule(1000 + n, n, CLEAN, { complete: true });
      expect(rounds).toBe(ROUNDS);
      expect(world.counts.lost).toBe(0);
    }
  }, 60_000);

  test(`seeded loss, duplication, reordering (${SCHEDULES} schedules × ${ROUNDS} rounds): bit-identical, every chunk holds every active member, exact`, async () => {
    let rounds = 0, lost = 0;
    const t0 = performance.now();
    for (const seed of seeds(1)) {
      const { world, rounds: k } = await schedule(seed, 2 + (seed % 4), faultsOf(seed), { complete: true });
      rounds += k;
      lost += world.counts.lost;
    }
    const ss = seeds(1);
    console.log(`[sim] faults: seeds ${ss[0]}..${ss[ss.length - 1]}, ${rounds} rounds (${lost} datagrams lost) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(rounds).toBe(seeds(1).length * ROUNDS);
    if (ONLY === null) expect(lost).toBeGreaterThan(0);
  }, 600_000);

  test("a seed replays the same run: same virtual time, same datagrams, same results", async () => {
    const a = await schedule(77, 4, faultsOf(77));
    const b = await schedule(77, 4, faultsOf(77));
    console.log(`[sim] seed 77: ${a.world.now.toFixed(1)} virtual ms, ${JSON.stringify(a.world.counts)}`);
    expect(b.world.now).toBe(a.world.now);
    expect(b.world.counts).toEqual(a.world.counts);
    expect(b.per[0].outs.map((x) => Buffer.from(x!.buffer).toString("hex"))).toEqual(a.per[0].outs.map((x) => Buffer.from(x!.buffer).toString("hex")));
  }, 60_000);

  test("3% loss + 2% duplication, 4 hosts: a round's recovery costs round-trips and the probe's few ms, not the old 50 ms timer (median over 8 seeds × 16 rounds, virtual time)", async () => {
    const lossy: Faults = { ...CLEAN, loss: 0.03, dup: 0.02 };
    const clean: number[] = [], impaired: number[] = [];
    let lost = 0;
    for (const seed of ONLY === null ? [601, 602, 603, 604, 605, 606, 607, 608] : [ONLY]) {
      for (const [f, into] of [[CLEAN, clean], [lossy, impaired]] as const) {
        const { world, per } = await schedule(seed, 4, f, { rounds: 16, complete: true });
        if (f === lossy) lost += world.counts.lost;
        // each rank's rounds after the first (no round-trip measured yet)
        for (const p of per) for (const reps of p.reports.slice(1)) for (const r of reps!) into.push(r.ms);
      }
    }
    const mc = median(clean), mi = median(impaired);
    const p90 = [...impaired].sort((a, b) => a - b)[Math.floor(impaired.length * 0.9)];
    console.log(`[sim] loss 3% + dup 2%, 4 hosts: median round clean ${mc.toFixed(2)} ms, impaired ${mi.toFixed(2)} ms (p90 ${p90.toFixed(2)}), ${lost} datagrams lost`);
    expect(lost).toBeGreaterThan(0);
    // the old timer's floor was 50 ms: a round that waited on it once took more
    expect(mi).toBeLessThan(10);
    expect(p90).toBeLessThan(50);
  }, 120_000);

  test("a straggler (its link 600 ms slow) sits out once the grace has passed, in virtual ms, and still gets every result", async () => {
    const { per } = await schedule(4242, 4, CLEAN, { rounds: 12, setup: (w) => (w.hosts[3].sendDelayMs = 600) });
    const reps = per[0].reports.map((r) => r![0]);
    // after the first rounds (no history: a 500 ms grace) leaders stop waiting for rank 3
    const late = reps.slice(6);
    expect(late.every((r) => !r.active.includes(3))).toBe(true);
    expect(median(late.map((r) => r.ms))).toBeLessThan(150);
    // rank 3 computes the same results (bit-identical, checked by schedule) as a passive member
    expect(per[3].outs.every((x) => x !== null)).toBe(true);
  }, 60_000);

  test(`a member dies mid-round (seeded round and time, ${Math.ceil(SCHEDULES / 10)} schedules, no loss); the swarm's verdict 300 ms later: survivors go on, bit-identical, led by live members`, async () => {
    let afterDeath = 0, schedules = 0;
    for (const seed of seeds(5000).slice(0, ONLY === null ? Math.ceil(SCHEDULES / 10) : 1)) {
      afterDeath += await deathSchedule(seed, false);
      schedules++;
    }
    console.log(`[sim] deaths: seeds 5000.., ${schedules} schedules, ${afterDeath} rounds completed after the verdict without the dead member`);
    expect(afterDeath).toBeGreaterThan(0);
  }, 600_000);

  // With loss, a member dies: seeds 5000..5199 (200 schedules). Found by
  // this simulator: 16 failed before issue 17's work (seed 5026 among
  // them): a survivor that lost one of a dying member's results fails the
  // round the others complete. The fixes: a survivor that had the plan
  // takes the plan's next leader after a failed round; recovery in
  // round-trips; a round given up because the swarm declared a member dead
  // names that member, and is given up at once (asking the others whom
  // they wait for first put that survivor 300 ms behind the rest, past
  // their caches: 5180); a round whose leader dies goes on under its
  // successor, the first live member after it, for every survivor that has
  // sent no result under the dead leader's plan (5061: a survivor that
  // started the round after the verdict and one already in it were a round
  // apart), with the slots the dead plan left emptied (5007, 5118).
  test("a member dies mid-round under loss (seeds 5000..5199, 5061 and 5180 among them): survivors agree on every round's leader, go on bit-identical, led by live members", async () => {
    let afterDeath = 0, schedules = 0;
    const all = ONLY !== null ? [ONLY] : Array.from({ length: 200 }, (_, i) => 5000 + i);
    for (const seed of all) {
      afterDeath += await deathSchedule(seed, true);
      schedules++;
    }
    console.log(`[sim] lossy deaths: ${schedules} schedules, ${afterDeath} rounds completed after the verdict without the dead member`);
    expect(afterDeath).toBeGreaterThan(0);
  }, 600_000);

  // A survivor whose window to a live owner is full when a member dies
  // (that owner's slots wait on the dead member until its own verdict)
  // still has contributions to send it when its own slots are done. It
  // gave the round up for the dead owner's results at that moment, and the
  // live owner waited on the unsent contributions to its deadline, failing
  // the job (a survivor exited 1 in test/collective.test.ts's SIGKILL
  // test, about one run in ten). A round is given up for a dead owner only
  // once every live owner's results are in.
  test("a member dies mid-round, the survivors' windows full (2 chunks per owner), the verdict reaching one survivor 150 ms before the other: each sends the live owners all it owes before it gives the round up", async () => {
    let afterVerdict = 0, latest = -Infinity;
    for (const seed of ONLY !== null ? [ONLY] : Array.from({ length: 10 }, (_, i) => 7001 + i))
      for (const victim of [0, 1, 2]) {
        const n = 3, killRound = 2;
        const [first, second] = [0, 1, 2].filter((k) => k !== victim);
        let verdictAt = Infinity;
        const startedAt: number[][] = Array.from({ length: n }, () => []);
        const { per } = await schedule(seed, n, CLEAN, {
          rounds: killRound + 6, roundTimeoutMs: 3_000, window: 2,
          beforeRound: (w, rank, r) => {
            startedAt[rank][r] = w.now;
            if (rank !== victim || r !== killRound) return;
            // it dies once its first window is out (2 contributions to each of the 2 other owners)
            let sent = 0;
            w.drop = (from, _to, data) => {
              if (from !== victim || data[5] !== 1) return false; // AINFTP_PKT_CONTRIB
              if (++sent === 4) w.at(w.now, () => w.kill(victim));
              return sent > 4;
            };
            // the swarm's verdict: one survivor 300 ms later, the other 150 ms after it
            const verdict = (k: number) => (w.comm(k).fitMask = w.comm(k).liveMask = ~(1n << BigInt(victim)));
            w.at(w.now + 300, () => verdict(first));
            w.at(w.now + 450, () => ((verdictAt = w.now), verdict(second)));
          },
        });
        // (schedule() fails the test on a round given up naming a live member)
        if (process.env.AINFTP_SIM_DEBUG) console.log(`[death2] seed ${seed} victim ${victim}: ${per.map((p, k) => p ? `r${k}: ${p.reports.map((r) => (r ? r.map((x) => `${x.round}:${x.leader}:${x.active.join("")}`).join("+") : "X")).join(" ")}` : `r${k}: dead`).join(" | ")}`);
        for (const k of [first, second]) {
          // the round of the death ends on each survivor (given up, or
          // complete) soon after the later verdict: without the fix the
          // second waited about a second for contributions the first never
          // sent (at --round-timeout 2000 it then failed naming the first)
          const ended = startedAt[k][killRound + 1] - verdictAt;
          latest = Math.max(latest, ended);
          expect({ seed, victim, rank: k, soon: ended < 250 }).toEqual({ seed, victim, rank: k, soon: true });
          // the rounds started after the verdict complete without it (the
          // round of the death is given up, or completes partial once the
          // owners' grace closes its slots)
          const after = per[k].reports.filter((_, i) => i > killRound && startedAt[k][i] > verdictAt);
          afterVerdict += after.length;
          expect({ seed, victim, rank: k, complete: after.every((r) => r !== null && r.every((x) => !x.active.includes(victim))) }).toEqual({ seed, victim, rank: k, complete: true });
        }
      }
    console.log(`[sim] deaths with full windows: the round of the death ended at most ${latest.toFixed(1)} virtual ms after the later verdict`);
    expect(afterVerdict).toBeGreaterThan(0);
  }, 300_000);

  // 5061 and 5180 on their own, with what parted the survivors' ways
  // before: every round after the verdict completes on every survivor, and
  // the survivors name the same leader for every round both completed
  for (const seed of [5061, 5180])
    test(`with loss, survivors that learn of a death at different moments of a round stay together (seed ${seed})`, async () => {
      expect(await deathSchedule(seed, true)).toBeGreaterThan(0);
    }, 60_000);

  test("the leader dies as its round starts: its round goes on under the first live member after it and completes within 2× the detection time; every later round completes without it", async () => {
    // (not 33 or 35: there the victim finishes the round before its death
    // while a result of its own to a survivor is lost; it dies before that
    // survivor asks again, and that survivor's round fails, as it must.
    // They passed before the small rounds sent their data twice under loss
    // (recovery.ts redundant) only because another moment of the same run
    // lost that packet; the deaths under loss are the 200 seeds above)
    for (const seed of ONLY === null ? [31, 32, 34, 36, 37, 38] : [ONLY]) {
      const n = 4, killRound = 3;
      // the same seed without the death names the round's leader (a seed replays the same run)
      const dry = await schedule(seed, n, faultsOf(seed), { rounds: killRound + 1 });
      const leader = dry.per[0].reports[killRound]![0].leader;
      const { per } = await schedule(seed, n, faultsOf(seed), {
        rounds: killRound + 8, roundTimeoutMs: 3_000,
        beforeRound: (w, rank, r) => {
          // the leader, as it starts the round: it sends nothing more, no plan
          // (killing it once every member has started depended on which
          // member starts last, which retransmission timing changes)
          if (r !== killRound || rank !== leader) return;
          w.kill(leader);
          w.at(w.now + 300, () => {
            for (const h of w.hosts) if (!h.dead) w.comm(h.rank).fitMask = w.comm(h.rank).liveMask = ~(1n << BigInt(leader));
          });
        },
      });
      const survivor = (leader + 1) % n;
      const reps = per[survivor].reports;
      // the round the leader died in (no plan out) goes on under its
      // successor, the next live member, once the swarm's verdict (300 ms)
      // is in: it completes without the dead leader, within 2× the verdict
      console.log(`[sim] seed ${seed}: leader ${leader} killed at round ${killRound} (verdict 300 ms later); that round ${reps[killRound]?.[0].ms.toFixed(1)} ms; leaders ${reps.map((r) => (r ? r.map((x) => `${x.leader}:${x.active.join("")}`).join("+") : "failed")).join(" ")}`);
      const died = reps[killRound];
      expect({ seed, completed: died !== null, leader: died?.[0].leader, withDead: died?.[0].active.includes(leader) }).toEqual({ seed, completed: true, leader: survivor, withDead: false });
      // (the others started the round before the leader died, at its start)
      expect(died![0].ms).toBeLessThan(2 * 300);
      const after = reps.slice(killRound);
      expect({ seed, failed: after.filter((r) => r === null).length }).toEqual({ seed, failed: 0 });
      for (const r of after) expect(r![0].active.includes(leader)).toBe(false);
      // every survivor completed the same rounds under the same leaders
      for (let k = 0; k < n; k++) if (k !== leader) expect(per[k].reports.map((r) => r?.map((x) => x.leader) ?? null)).toEqual(reps.map((r) => r?.map((x) => x.leader) ?? null));
    }
  }, 120_000);
});

describe.skipIf(!root)("a member out of step (simulator)", () => {
  // A trainer that calls allreduce with another length than the others (a
  // skipped or extra call): its exponents name another chunk count. The
  // round cannot complete; every member must say why, naming that member
  // and the lengths, not blame a live member for "waiting for no one".
  test("rank 2 reduces 3 chunks where the others reduce 5: every rank's round fails naming rank 2 and the lengths", async () => {
    const world = new SimWorld(7001, CLEAN, programs.slice(0, 3), PORT);
    const comms = world.hosts.map((_, rank) => world.communicator(rank, { roundTimeoutMs: 2_000, openTimeoutMs: 5_000 }));
    const errors: (string | null)[] = [];
    try {
      await world.run(comms.map((c) => async (rank: number) => {
        await c.connect();
        const x = simGradient(7001, 0, rank, (rank === 2 ? 3 : 5) * ELEMS);
        try {
          await c.allreduce(x);
          errors[rank] = null;
        } catch (e) {
          errors[rank] = e instanceof RoundError ? `${e.message} | ${e.missingRanks.join(",")}` : String(e);
        }
        c.close(0);
      }), 60_000);
    } finally {
      for (const c of comms) c.close(0);
    }
    for (const rank of [0, 1]) {
      expect(errors[rank]).toContain("rank 2 (");
      expect(errors[rank]).toContain("reduces an array of another length");
      expect(errors[rank]).toContain(`our 5 (${5 * ELEMS} values`);
      expect(errors[rank]).toEndWith("| 2");
    }
    // rank 2 sees the others' longer exponents (or the leader's plan) as the odd ones
    expect(errors[2]).toContain("an array of another length");
    expect(errors[2]).toContain("our 3 (");
  }, 60_000);

  test("a round that misses its deadline carries its state: the results it lacked with their entries, the program's counters (printed under the error)", async () => {
    // every result rank 1 sends rank 0 is lost (resends too): rank 0's round
    // cannot complete, while ranks 1 and 2 have everything and move on
    const world = new SimWorld(7002, CLEAN, programs.slice(0, 3), PORT);
    world.drop = (from, to, d) => from === 1 && to === 0 && d[5] === PKT_RESULT;
    const comms = world.hosts.map((_, rank) => world.communicator(rank, { roundTimeoutMs: 1_000, openTimeoutMs: 5_000 }));
    let err: unknown = null;
    try {
      await world.run(comms.map((c) => async (rank: number) => {
        await c.connect();
        try {
          await c.allreduce(simGradient(7002, 0, rank, 6 * ELEMS));
        } catch (e) {
          if (rank === 0) err = e;
        }
        c.close(0);
      }), 60_000);
    } finally {
      for (const c of comms) c.close(0);
    }
    expect(err).toBeInstanceOf(RoundError);
    const e = err as RoundError;
    expect(e.message).toContain("rank 1 (");
    expect(e.detail).toContain("rank 0, leader ");
    expect(e.detail).toContain("plan applied");
    // the chunks rank 1 owns, lacking, their entries empty (tag 0)
    expect(e.detail).toMatch(/results lacking c\d+\(o1\):tag0:/);
    expect(e.detail).not.toMatch(/\(o2\)/);
    expect(e.detail).toMatch(/counters .*results=\d+/);
    let printed = "";
    reportError({ out: () => {}, err: (t) => void (printed += t), tty: false }, e, false);
    expect(printed).toContain("--- the round's state ---");
    expect(printed).toContain("results lacking c");
  }, 60_000);
});
