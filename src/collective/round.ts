// One round, start to end: begin (the program's window and config, the
// round's state, our exponents out), the loop (plan, send, finish, recover,
// wait), and the end (gather the results, the bookkeeping).
import { coll } from "../../native/collective.ts";
import { CTRL_EXPS_REQ } from "../abi.ts";
import { AinftpError } from "../errors.ts";
import { chunkCount, chunkExpsAt, mix32, NonFiniteGradientError, rhtFromExps } from "../quantize.ts";
import { HDR } from "./control.ts";
import { earlyFor, gatherRest, workEarly } from "./early.ts";
import { closeForDead, deadWeWaitFor, expsAwaited, fail, isolated } from "./diagnose.ts";
import { adoptEarly, announcePlan, decidePlan, leaderTurn, myExps, requestExps, sendExps, sendPlan } from "./exchange.ts";
import { Host } from "./host.ts";
import { describeRanks, RoundError, streamsGather, TUNING, windowChunks, type RoundReport } from "./options.ts";
import { closeAtDeadline, expectedMask, finishPending, outsidersOf, ownerDeadlinePassed } from "./owner.ts";
import { graceMs, liveFrom, ownedChunks } from "./plan.ts";
import { READY_RING, READY_SOCK, READY_XSK } from "./ports.ts";
import { countXskDrops, drainControl, drainEvents, drainXsk, dropForeign, NO_RANK, planAhead } from "./receiver.ts";
import { askDue, askTail, lossSeen, missingResults, probe, retransmit, retransmitGaps, tellDue, tellTail } from "./recovery.ts";
import { newRoundState, ownerOf, type RoundState } from "./round-state.ts";
import { PTO_FLOOR_MS } from "./rtt.ts";

/** AINFTP_TRACE_RECOVERY=1: one line per round on stderr (plan, fast and timed retransmissions, completion). */
const TRACE = !!process.env.AINFTP_TRACE_RECOVERY;
import { applyPlan, materialize, pump, startContributions, unpackedResidual, unsent } from "./sender.ts";
import { confirm, confirmSlots, predicted, rememberPlan, speculate } from "./speculate.ts";
import { prepack, prepacks, type RhtIn } from "./prepack.ts";

/** One round over x (at most capacity chunks): the report, once every
 * result is in `out`. `add` (error feedback, with the transform only: the
 * last call's residual, usually `resid` itself) is added to x in the
 * transform's pass: the round sums x + add. */
export async function runRound(
  h: Host, x: Float32Array, out: Float32Array, retransmitMs: number, patient: boolean, resid: Float32Array | null = null,
  add: Float32Array | null = null,
): Promise<RoundReport> {
  if (add && !h.rht) throw new RangeError("runRound: add needs the transform (8 and 4 bits)");
  const t0 = h.clock.now();
  const r = h.nextRound++;
  h.o.onRoundStart?.(r);
  const nchunks = chunkCount(x.length, h.chunkElems);
  if (h.size === 1) {
    if (add) for (let i = 0; i < x.length; i++) out[i] = x[i] + add[i];
    else out.set(x);
    resid?.fill(0);
    h.stats.rounds++;
    return { round: r, ms: h.clock.now() - t0, chunks: nchunks, active: [0], leader: 0 };
  }
  // 8 and 4 bits: the round sums the randomized Hadamard transform of x (the
  // same signs on every member), and the results come back through its inverse
  const seed = rhtSeed(h.job, r);
  let xq = x, rin: RhtIn | null = null;
  if (h.rht) {
    const b = h.scratch("rht", 4 * x.length);
    xq = new Float32Array(b.buffer, b.byteOffset, x.length);
    // the transform of x into xq in beginRound, our exponents from the same
    // pass (xq is not read again for them), and in a large round every
    // packet of ours too (prepack.ts); with error feedback the same pass
    // adds the last residual. Packing writes this round's residual chunk by
    // chunk, back through the inverse while the chunk is in cache; what we
    // never pack (a round we sit out) is all error, and gets xq at the end
    // (unpackedResidual): no copy of all of xq first (16 MiB written per
    // 16 MiB round, which packing overwrote)
    rin = { src: x, add, seed, resid: resid && h.bits !== 16 ? resid : null };
  }
  const st = beginRound(h, r, xq, out, nchunks, t0, patient, rin);
  noteDeaths(h, r);
  if (TRACE) console.error(`[trace] start r${r} rank ${h.rank} leader ${st.leader} at ${t0.toFixed(1)} epoch ${(performance.timeOrigin + t0).toFixed(2)} live ${(h.liveMask & ((1n << BigInt(h.size)) - 1n)).toString(2)}`);
  if (resid) {
    // what we never pack (a round we sit out) is all error; packing overwrites
    // the rest (with the transform: unpackedResidual, at the end)
    if (h.bits !== 16) {
      if (!h.rht) resid.set(xq);
      st.resid = resid;
      st.residSeed = h.rht ? seed : 0;
    }
    else resid.fill(0); // int16: the residual is not kept (error feedback is off at 16 bits)
  }
  st.early = earlyFor(h, st, seed);
  // The leader reads the members' exponents before it speculates: when its
  // own came last they are all here, and the plan goes out now, not after
  // our window is packed and sent (the leader read them 2-5 ms after its own
  // in a shaped 8-bit round, busy or waiting for a core; 1-2 ms a round)
  if (st.leader === h.rank && !st.haveShared && !st.sent) {
    drainControl(h, st);
    planReady(h, st);
  }
  // contributions under the last plan's scale while ours travel (speculate.ts)
  speculate(h, st, xq, myExps(h, st));
  try {
    await roundLoop(h, st, xq, retransmitMs, st.expsDoneAt);
  } finally {
    if (h.rht && st.resid) unpackedResidual(h, st, xq, seed);
  }
  // the gather takes each chunk of out back through the inverse while it is
  // in cache (8 and 4 bits need rx "map": Communicator.withPorts refuses xsk)
  return endRound(h, st, h.rht ? seed : 0);
}

/** The RHT's seed of round r: the same on every member of the job. */
export function rhtSeed(job: number, r: number): number {
  return mix32((job ^ mix32((r + 0x7a11) >>> 0)) >>> 0) || 1;
}

/** The program's window and config for round r, the round's state, and our
 * exponents (to the leader, unless we lead); at 8 and 4 bits (`rin`) the
 * transform of the gradient into x in the same pass (prepack.ts). */
function beginRound(h: Host, r: number, x: Float32Array, out: Float32Array, nchunks: number, t0: number, patient: boolean, rin: RhtIn | null): RoundState {
  // We finished round r-1, so we need nothing older: a member that sat
  // the last round out saw none of its events, which move the window.
  if (h.cfg.roundBase < r - 1) h.advanceWindow(r - 1);
  // Until the plan is here, our slots of this round wait for every member
  // (bank mask 0: the member mask); the plan can only shrink that set.
  const bankMask: [bigint, bigint] = [...(h.cfg.bankMask ?? [0n, 0n])];
  bankMask[r & 1] = 0n;
  h.setConfig({ ...h.cfg, memberMask: expectedMask(h, r), bankMask });
  const st = newRoundState({
    r, size: h.size, chunkElems: h.chunkElems, x, out, nchunks, t0, leader: liveFrom(h.leaderNext, h.rank, h.size, h.liveMask),
    grace: patient ? Infinity : graceMs(h.roundTimes, h.o.deadlineMs), patient, maxRetransmitMs: h.o.maxRetransmitMs,
    xdone: h.scratch("xdone", nchunks).fill(0), recs: h.robust?.recsFor(r) ?? new Map(), headerBytes: HDR,
  });
  st.predicted = !!h.o.speculate && predicted(h, nchunks);
  // exponents: ours to the leader, then theirs (some may be here already)
  const mine = myExps(h, st);
  const tp = h.clock.now();
  // (8 and 4 bits: x is the round's array, which this pass fills with the transform of rin.src)
  const bad = prepacks(h, st) ? prepack(h, st, x, mine, rin)
    : rin ? rhtFromExps(rin.src, x, h.chunkElems, rin.seed, mine, h.bits, rin.add, null)
    : chunkExpsAt(x, h.chunkElems, mine, h.bits);
  st.expsDoneAt = h.phase("exps", tp);
  if (bad > 0) {
    materialize(h, st, null); // (the transform not kept: made again to name the value)
    const i = x.findIndex((v) => !Number.isFinite(v));
    throw new NonFiniteGradientError(bad, i, Math.floor(i / h.chunkElems), x[i]);
  }
  st.haveExps[h.rank] = true;
  st.expsAt[h.rank] = h.clock.now();
  // One leader per round (rotating among the active members) gathers the
  // exponents and sends back the plan with their maximum: a member
  // receives one control packet per round instead of one per peer, which
  // keeps socket packets and wake-ups far below the data packets at small
  // sizes (N = 4 at 1 MiB: 1.5 instead of 3).
  if (st.leader !== h.rank) {
    sendExps(h, st.leader, r, mine);
    // under loss, twice: a lost exponent packet held the whole round until
    // the control timer asked again (4 ms and a wake-up; 1 MiB at 6% loss
    // per packet lost one of its 6 control packets in 3 rounds of 10)
    if (lossSeen(h, st)) sendExps(h, st.leader, r, mine);
  }
  adoptEarly(h, st);
  return st;
}

/** The round's leader died (the swarm says so) before its plan reached
 * us: the round goes on under its successor, the first live member after
 * it, instead of being given up. A survivor that starts the round after
 * the verdict takes the same successor (liveFrom skips the dead), so
 * survivors that learn of the death at different moments of the round
 * stay in one round under one leader (sim seed 5061). The successor asks
 * the others (its control timer, CTRL_EXPS_REQ): a member that holds the
 * dead leader's plan answers with it, and the successor announces that
 * plan (storeRelayedPlan: then every survivor ends the round under the
 * one plan some already act on, and takes its next leader); when none
 * does, the successor decides a plan of its own without the dead leader.
 * We ask the successor too: it stores our exponents, and sends its plan
 * back if it has one. A member that holds the dead leader's plan keeps it.
 * Returns whether the leader changed. */
function succeed(h: Host, st: RoundState): boolean {
  if (st.leader === h.rank || st.haveShared || st.sent) return false;
  const dead = h.othersMask & ~h.liveMask;
  if (!Host.has(dead, st.leader) || isolated(h, dead)) return false;
  const next = liveFrom((st.leader + 1) % h.size, h.rank, h.size, h.liveMask);
  if (next === st.leader) return false;
  if (st.deadLeader < 0) st.deadLeader = st.leader;
  st.leader = next;
  st.replanned = true;
  // pieces of the dead leader's plan from it are worth nothing now
  st.sharedPieces.clear();
  st.active = 0n;
  st.majorityAt = Infinity;
  if (next !== h.rank) sendExps(h, next, st.r, myExps(h, st), CTRL_EXPS_REQ);
  return true;
}

/** Keeps Host.deaths: the members held dead, and when one more was. */
function noteDeaths(h: Host, r: number): void {
  const dead = h.othersMask & ~h.liveMask;
  const d = h.deaths;
  if (!d) return void (dead && (h.deaths = { mask: dead, round: r }));
  if (dead & ~d.mask) d.round = r;
  d.mask = dead;
}

/** The plan is here, not yet applied: our slots (under it) that hold a
 * contribution it refuses are emptied; their live contributors send again
 * (a probe's answer names them). One from a member outside its active
 * set, or quantized under another plan's scale (the program would then
 * refuse every contribution of this plan to the slot). Both come from a
 * plan that died with its leader, when its successor decides another
 * (succeed): the dead leader contributed under its own plan, which never
 * reached us, and a result counting that would be refused by every
 * member's program (more contributors than the active set), stalling the
 * round (sim seeds 5007, 5118). Only in such a round, or one a few rounds
 * after a death: a slot lookup per chunk we own. Returns how many slots it
 * emptied. */
function clearForeign(h: Host, st: RoundState, bankBase: number): number {
  // (members that speculated sent before they knew the plan left them out)
  const outside = outsidersOf(h, st);
  if (outside === null) return 0;
  let idx = 0, K = 0;
  for (let k = 0; k < h.size; k++) if (Host.has(st.active, k)) (k < h.rank && idx++), K++;
  drainEvents(h, st, bankBase); // (completions so far go to st.pending)
  PLAN_SEAM.at?.("drained", h, st);
  const bad: number[] = [];
  for (const c of ownedChunks(idx, K, st.nchunks)) {
    const s = h.maps.slot(bankBase + c);
    if (s.tag === st.r + 1 && s.contributors > 0 && ((s.seen & outside) !== 0n || s.exp !== st.shared[c])) bad.push(c);
  }
  if (!bad.length) return 0;
  h.maps.clearSlots(bad.map((c) => bankBase + c));
  for (const c of bad) st.ownedDone[c] = 0;
  st.pending = st.pending.filter((c) => !bad.includes(c));
  return bad.length;
}

/** What a round that missed its deadline waits on (our open slots, the
 * results we lack with their entries, the program's counters; at most
 * STUCK_MAX of each list): RoundError's detail, and AINFTP_TRACE_RECOVERY's line. */
const STUCK_MAX = 12;
function stuck(h: Host, st: RoundState, bankBase: number): string {
  const list = (xs: string[]) => (xs.length > STUCK_MAX ? `${xs.slice(0, STUCK_MAX).join(" ")} (and ${xs.length - STUCK_MAX} more)` : xs.join(" ")) || "-";
  const open = [...st.owned].filter((c) => !st.ownedDone[c]).map((c) => {
    const s = h.maps.slot(bankBase + c);
    return `c${c}:tag${s.tag}:seen${s.seen}:exp${s.exp}/${st.shared[c]}`;
  });
  const lack: string[] = [];
  const m = missingResults(h, st, bankBase);
  for (let i = 0; i < Math.min(m, h.capacity); i++) {
    const c = h.chunkList[i];
    const e = h.maps.result(bankBase + c);
    lack.push(`c${c}(o${ownerOf(st, c)}):tag${e.tag}:r${e.rank}:k${e.contributors}:exp${e.exp}`);
  }
  const counters = Object.entries(h.maps.counters()).filter(([, v]) => v).map(([k, v]) => `${k}=${v}`);
  const outside = outsidersOf(h, st);
  const plan = `active ${st.active.toString(2)}${st.predicted ? ", predicted" : ""}${outside ? `, outsiders ${outside.toString(2)}` : ""}; outsiders refused ${h.stats.outsidersRefused}`;
  return `${plan}; open slots ${list(open)}; results lacking ${list(lack)}; counters ${counters.join(" ")}`;
}

/** AINFTP_TRACE_RECOVERY: the program's counters that tell a contribution
 * refused or late, as they moved since the last round's line. */
const lastCounters = new WeakMap<Host, Record<string, number>>();
function traceCounters(h: Host): string {
  const now = h.maps.counters() as unknown as Record<string, number>;
  const was = lastCounters.get(h) ?? {};
  lastCounters.set(h, now);
  const keys = ["future_round", "stale_round", "spec_refused", "spec_replaced", "mal_scale", "late", "duplicate", "not_owner"];
  return keys.filter((k) => now[k] - (was[k] ?? 0)).map((k) => `${k}=${now[k] - (was[k] ?? 0)}`).join(",") || "-";
}

/** Members that left before finishing round r: the round fails. */
function checkLeavers(h: Host, r: number): void {
  // a member that finished this round and said so still lingers (close)
  // to resend results we may lack; one that had not finished it is gone
  const gone = [...h.left].filter(([, upTo]) => upTo <= r).map(([p]) => p);
  if (gone.length)
    throw new RoundError(`round ${r}`, `${describeRanks(gone, h.peers)} left the job before finishing this round`, gone,
      "every member must call allreduce the same number of times; restart the job with the remaining members");
}

/** The plan is known: as a member, once the leader's pieces are all here;
 * as the leader, once the members it waits for have sent their exponents
 * (the fit ones, or the first `quorum`, or whoever is here at the
 * deadline). The leader decides (exchange.ts, plan.ts), then sends: the
 * requests for missing exponents when a majority is in, and the plan. */
function planReady(h: Host, st: RoundState): boolean {
  if (st.haveShared) return true;
  if (st.leader !== h.rank) return false;
  const now = h.clock.now();
  const turn = leaderTurn(h, st, now);
  if (turn.majorityNow) {
    st.majorityAt = now;
    requestExps(h, st);
  }
  if (!turn.decide) return false;
  decidePlan(h, st, turn.have, turn.count, now);
  st.decidedAt = h.clock.now();
  announcePlan(h, st, turn.count);
  if (lossSeen(h, st)) for (const p of h.others) sendPlan(h, p, st); // (under loss, twice: as the exponents)
  return true;
}

/** Whether every result of the round is here (the events say so, or the
 * results map does when they may have been missed). */
function complete(h: Host, st: RoundState, bankBase: number): boolean {
  // (a passive member may hold results that came before its round began,
  // their events drained in the round before: look at the map then)
  if (!(st.sent && st.ownedDoneCount === st.owned.length && (st.resultsSeen >= st.nchunks - st.owned.length || (st.lookInMap && !h.xsk))))
    return false;
  st.lookInMap = false;
  if (h.xsk) return true; // each result was counted once, when it was dequantized
  // results stored before the plan was known, from a rank that does not own them: asked for again
  dropForeign(h, st, bankBase, h.rank);
  const missing = coll.ainftp_results_missing(h.resBase, bankBase, st.nchunks, st.r + 1, h.chunkList, h.capacity);
  if (missing === 0) return true;
  st.resultsSeen = st.nchunks - st.owned.length - missing; // events and map disagree: trust the map
  return false;
}

/** The simulator's seam: `at` runs at two points of taking the plan in,
 * where on a real host packets keep arriving (test/sim/speculate.test.ts
 * delivers some there): "drained", in clearForeign between reading the
 * program's events and looking at our slots, and "cleared", between
 * clearForeign and applying the plan. */
export const PLAN_SEAM: { at: ((where: "drained" | "cleared", h: Host, st: RoundState) => void) | null } = { at: null };

/** The round loop: until every result is here. */
async function roundLoop(h: Host, st: RoundState, x: Float32Array, retransmitMs: number, tp: number): Promise<void> {
  const r = st.r;
  const bankBase = (r & 1) * h.cfg.chunks;
  const deadline = st.t0 + h.o.roundTimeoutMs;
  const watch = READY_RING | READY_SOCK | (h.xsk ? READY_XSK : 0);
  // A round's waits spin first (spinUs), except on a link the pace measured
  // slower than the hosts: there the waits are for the wire, and spinning
  // through them burned 10-20 ms of CPU a 16 MiB round at 1 Gbit/s
  const spinUs = h.pace.linkBound(h.size - 1, h.seg, windowChunks(h.o.window, h.o.windowBytes, h.seg)) ? 0 : h.o.spinUs;
  // Two timers. Before the plan, the control timer: exponents and plans
  // are one small packet each, so asking again costs nothing and starts at
  // CTRL_RETRANSMIT_MS (a lost plan costs milliseconds, not 50). Once the
  // plan is known every active member is in the round (it sent its
  // exponents), and the data timer starts (rtt.ts): tail-loss probes at
  // 2·srtt (the last chunks each owner lacks: RACK then finds the rest),
  // doubling, and the full retransmission once nothing moved for the RTO.
  // retransmitMs (a barrier's patience included) bounds the first interval.
  const firstRto = () => Math.min(retransmitMs, h.rtt.pto(retransmitMs, h.o.maxRetransmitMs));
  const fullRto = () => Math.min(retransmitMs, h.rtt.rto(retransmitMs, h.o.maxRetransmitMs));
  let interval = Math.min(retransmitMs, TUNING.CTRL_RETRANSMIT_MS);
  let nextRetx = h.clock.now() + interval;
  let rackAt = Infinity; // RACK's reorder timer: when a chunk behind a result counts as lost
  let lossy = false; // RACK or a probe fired this round
  let nextDeathCheck = 0;
  const trace: string[] | null = TRACE ? [] : null;
  const T = () => (h.clock.now() - st.t0).toFixed(1);
  // (trace: when our slots were all finished, when the last result came, what we served)
  let ownAt = "", lastAt = "", seenBefore = 0;
  const served0 = h.stats.resends, answered0 = h.stats.probeAnswers;
  for (;;) {
    // let signal handlers and timers run now and then (Ctrl-C mid-round),
    // across rounds too: short rounds never return to the event loop
    if (h.clock.now() - h.lastYield > TUNING.YIELD_MS) {
      await h.clock.yield();
      h.lastYield = h.clock.now();
      if (h.closed) throw new AinftpError(`round ${r}`, "communicator closed during the round");
    }
    checkLeavers(h, r);
    if (!st.sent && planReady(h, st)) {
      trace?.push(`exps@${(st.expsDoneAt - st.t0).toFixed(1)}`, `plan@${T()}`);
      if (trace && st.leader === h.rank) trace.push(`decided@${(st.decidedAt - st.t0).toFixed(1)}`, `in@${[...st.expsAt].map((t) => (t ? t - st.t0 : NaN).toFixed(1)).join("/")}`);
      const cleared = clearForeign(h, st, bankBase);
      if (cleared) trace?.push(`cleared:${cleared}`);
      PLAN_SEAM.at?.("cleared", h, st);
      if (st.relayed) announcePlan(h, st, h.size); // (the dead leader's plan, which we lead to its end)
      applyPlan(h, st);
      confirmSlots(h, st);
      if (st.spec) {
        trace?.push(`spec:${st.spec.active === st.active ? "kept" : "relaid"}`);
        const resent = h.stats.specResent;
        confirm(h, st, x);
        if (trace && h.stats.specResent !== resent) trace.push(`again:${h.stats.specResent - resent}`);
      }
      if (h.o.speculate) rememberPlan(h, st);
      // forgeries stored before we knew the plan, our own chunks' included:
      // out now, counted, so the owners' results are stored when they come
      if (!h.xsk) dropForeign(h, st, bankBase, NO_RANK);
      // every plan we follow is kept a few rounds: a dead leader's
      // successor may ask us for it (exchange.ts answerExpsRequest)
      if (!h.planCache.has(st.r)) h.keep(h.planCache, st.r, { r: st.r, active: st.active, next: st.next, scores: st.scores, shared: st.shared });
      startContributions(h, st, x, bankBase);
      finishPending(h, st, bankBase); // (slots of ours that completed before we had the plan)
      if (h.o.speculate) drainEvents(h, st, bankBase); // (and those our confirmation closed: it raised no wake-up)
      planAhead(h, st); // (the next round's, if its leader's is here)
      // the data timer starts now: peers that were still busy before the
      // plan are in the round now
      interval = firstRto();
      nextRetx = h.clock.now() + interval;
    }
    if (ownerDeadlinePassed(st, h.clock.now())) closeAtDeadline(h, st);
    if (trace && st.sent) {
      if (!ownAt && st.ownedDoneCount === st.owned.length) ownAt = T();
      if (st.resultsSeen !== seenBefore) (seenBefore = st.resultsSeen), (lastAt = T());
    }
    if (complete(h, st, bankBase)) {
      if (st.rackFired) h.lossRound = r;
      if (trace) trace.push(`xdp:${traceCounters(h)}`);
      if (trace) console.error(`[trace] r${r} rank ${h.rank} leader ${st.leader} next ${st.next} active ${st.active.toString(2)} n${st.nchunks} ${trace.join(" ")} window ${st.window} rate ${h.pace.rate().toFixed(0)} own@${ownAt} last@${lastAt} served ${h.stats.resends - served0}/${h.stats.probeAnswers - answered0} done@${T()} srtt ${h.rtt.srtt?.toFixed(1)} var ${h.rtt.rttvar.toFixed(1)} latest ${h.rtt.latest.toFixed(1)} min ${h.rtt.minRtt.toFixed(2)} reo ${h.rtt.reoWnd().toFixed(2)}`);
      break;
    }
    const now = h.clock.now();
    if (now >= deadline) {
      const state = stuck(h, st, bankBase);
      if (trace) console.error(`[trace] r${r} rank ${h.rank} leader ${st.leader} ${trace.join(" ")} FAILED@${T()} (deadline) ${state}`);
      await fail(h, st, bankBase, undefined, undefined, `rank ${h.rank}, leader ${st.leader}, ${st.sent ? "plan applied" : "no plan"}${st.spec ? ", speculated" : ""}; ${state}`);
    }
    // a member the swarm declared dead: our slots that lack only its
    // contributions close now; a round that needs its plan or its results
    // is given up now, not at the deadline (the next plans leave it out)
    if (now >= nextDeathCheck) {
      nextDeathCheck = now + TUNING.DEATH_CHECK_MS;
      noteDeaths(h, r);
      if (succeed(h, st)) {
        trace?.push(`succeed@${T()}:${st.leader}`);
        interval = Math.min(retransmitMs, TUNING.CTRL_RETRANSMIT_MS);
        nextRetx = h.clock.now() + interval;
      }
      const dead = deadWeWaitFor(h, st, bankBase);
      // the dead leader's plan, relayed by its successor (succeed): as with
      // a plan from a leader that died, the members it left without the
      // plan gave the round up; nothing moving for LEADERLESS_MS, so do we
      if (!dead.length && st.sent && st.deadLeader >= 0 && Host.has(st.active, st.deadLeader) && !Host.has(h.liveMask, st.deadLeader) &&
        now - st.lastProgress > TUNING.LEADERLESS_MS) dead.push(st.deadLeader);
      if (dead.length && trace) console.error(`[trace] r${r} rank ${h.rank} leader ${st.leader} ${trace.join(" ")} FAILED@${T()} (dead ${dead.join(",")})`);
      if (dead.length) await fail(h, st, bankBase, `${describeRanks(dead, h.peers)} declared dead by the swarm while this round waited on ${dead.length > 1 ? "them" : "it"}`, dead);
      if (st.sent) closeForDead(h, st, bankBase);
    }
    if (now >= nextRetx) {
      st.lookInMap = true;
      // a probe (a poll, recovery.ts; a timeout only when its answer shows
      // a loss) until nothing moved for the RTO, then the full
      // retransmission (a timeout). Before the plan, asking again
      // within retransmitMs polls a peer that may only be busy: a clean run
      // counts no timeout.
      const poll = st.sent ? now - st.lastProgress < fullRto() && !st.passive : now - st.t0 < retransmitMs;
      if (!poll) h.stats.timeouts++;
      if (trace) {
        const m = st.sent ? missingResults(h, st, bankBase) : 0;
        const by = new Map<number, number>();
        for (let i = 0; i < Math.min(m, h.capacity); i++) { const o = ownerOf(st, h.chunkList[i]); by.set(o, (by.get(o) ?? 0) + 1); }
        trace.push(`${poll ? "poll" : "timer"}@${T()}(${interval.toFixed(0)}ms ${st.sent ? [...by].map(([o, n]) => `o${o}:${n}`).join(",") : "noplan:" + expsAwaited(h, st).join(",")} own:${st.owned.length - st.ownedDoneCount})`);
      }
      if (poll && st.sent) (probe(h, st, bankBase), (lossy = true));
      else retransmit(h, st, bankBase, st.sent ? interval : 0);
      interval = Math.min(interval * 2, h.o.maxRetransmitMs);
      nextRetx = now + interval;
    }
    // window-blocked: the wake-up for the results we wait on may be batched
    // with others, so look again soon
    const soon = st.sent && unsent(h, st) ? now + h.o.pumpMs : Infinity;
    // the round deadline matters to a leader still collecting and to an owner with open slots
    const due = !st.sent && st.leader === h.rank ? st.majorityAt + st.grace
      : st.sent && !st.closedAtDeadline && st.ownedDoneCount < st.owned.length ? st.lastProgress + st.ownerGrace : Infinity;
    // a lossy round: our slots may have been completed by a retransmission
    // whose event the program batches without a wake-up; look every probe
    // floor while ours are open, so their results go out
    const own = lossy && st.sent && st.ownedDoneCount < st.owned.length ? now + PTO_FLOOR_MS : Infinity;
    const tell = Math.min(tellDue(h, st), askDue(h, st));
    const wait = Math.max(0, Math.min(h.o.maxWaitMs, Math.ceil(Math.min(nextRetx, rackAt, deadline, soon, due, own, tell) - now)));
    tp = h.phase("work", tp);
    if (st.early) (workEarly(h, st, bankBase), (tp = h.phase("gather", tp)));
    let ready = h.net.wait(watch, wait, spinUs);
    if (typeof ready !== "number") ready = await ready;
    tp = h.phase(st.sent ? "wait" : "control", tp);
    h.stats.wakeups++;
    if (ready & READY_SOCK) drainControl(h, st);
    const progress = st.resultsSeen + st.ownedDoneCount + st.pending.length;
    drainEvents(h, st, bankBase);
    if (h.xsk) drainXsk(h, st);
    if (st.sent) {
      const before = h.stats.retransmits;
      rackAt = retransmitGaps(h, st);
      if (h.stats.retransmits !== before) lossy = st.rackFired = true;
      if (trace && h.stats.retransmits !== before) trace.push(`rack@${T()}:${h.stats.retransmits - before}`);
    }
    if (st.resultsSeen + st.ownedDoneCount + st.pending.length !== progress) {
      st.lastProgress = h.clock.now();
      // results are flowing: nothing is lost yet, restart the timer
      interval = firstRto();
      nextRetx = h.clock.now() + interval;
    }
    if (st.sent) pump(h, st, x);
    if (tellDue(h, st) <= h.clock.now()) tellTail(h, st, bankBase);
    if (askDue(h, st) <= h.clock.now()) {
      if (trace) trace.push(`ask@${T()}`);
      askTail(h, st, bankBase);
    }
  }
  h.phase("work", tp);
}

/** The round's results into `out` (rhtSeed, if not 0: each chunk through
 * the inverse transform as it is gathered), the window moved, and the
 * bookkeeping: per member counts, partial and passive rounds, the next
 * leader and lateness, the round time for the deadline. */
function endRound(h: Host, st: RoundState, rhtSeed: number): RoundReport {
  const r = st.r;
  const bankBase = (r & 1) * h.cfg.chunks;
  const tp = h.clock.now();
  // rx "xsk": the peers' results are in `out` already; ours are in our map
  const bad = st.early
    ? gatherRest(h, st, bankBase)
    : h.xsk
    ? coll.ainftp_gather_list(h.resBase, bankBase, st.owned, st.owned.length, h.chunkElems, r + 1, st.out, st.out.length)
    : h.bits === 16
      ? coll.ainftp_gather_results(h.resBase, bankBase, st.nchunks, h.chunkElems, r + 1, st.out, st.out.length, streamsGather(st.out.length))
      : coll.ainftp_gather_results_bits(h.resBase, bankBase, st.nchunks, h.chunkElems, r + 1, st.out, st.out.length, h.bits, rhtSeed, streamsGather(st.out.length));
  h.phase("gather", tp);
  if (bad) throw new AinftpError(`round ${r}`, `${bad} result entries changed while being read`);
  h.stats.rounds++;
  // done with round r: every active member finished r-1 (it contributed);
  // a round completed from the map alone moved no window yet
  if (h.cfg.roundBase < r) h.advanceWindow(r);
  h.rtt.endRound();
  if (st.sent && !st.passive) h.pace.note(h.dataBytes - st.bytesAtPlan, h.clock.now() - st.planAt);
  countXskDrops(h);
  // per member: a round it was active in (and, on our slots, not held in
  // quarantine), or one it sat out (passive, late, quarantined)
  const counted = st.active & (h.cfg.memberMask | (1n << BigInt(h.rank)));
  for (let k = 0; k < h.size; k++)
    if ((counted >> BigInt(k)) & 1n) h.roundsContributed[k]++;
    else h.roundsMissed[k]++;
  if (st.active !== (1n << BigInt(h.size)) - 1n) h.stats.partialRounds++;
  if (st.passive) h.stats.passiveRounds++;
  h.leaderNext = st.next;
  h.lateness = st.scores;
  h.sentry?.housekeeping(h);
  const ms = h.clock.now() - st.t0;
  if (!st.patient) {
    // barriers wait for everyone: they say nothing of a normal round's time
    h.roundTimes.push(ms);
    if (h.roundTimes.length > TUNING.DEADLINE_WINDOW) h.roundTimes.shift();
  }
  const active: number[] = [];
  for (let k = 0; k < h.size; k++) if ((st.active >> BigInt(k)) & 1n) active.push(k);
  return { round: r, ms, chunks: st.nchunks, active, leader: st.leader };
}
