// Diagnostics: whom a round waits for, and, when it misses its deadline,
// who is missing and why (RoundError), after asking every member whom it
// waits for so that a live member blocked by a dead one is not blamed.
import { CTRL_STATUS_REQ } from "../abi.ts";
import { Host } from "./host.ts";
import { describeRanks, RoundError, TUNING } from "./options.ts";
import { liveFrom } from "./plan.ts";
import { READY_SOCK } from "./ports.ts";
import { drainControl } from "./receiver.ts";
import { missingResults } from "./recovery.ts";
import { ownerOf, type RoundState } from "./round-state.ts";

/** Whom we wait for before the shared scale is known: the leader, or (as
 * the leader) the fit members whose exponents we lack. */
export function expsAwaited(h: Host, st: RoundState): number[] {
  if (st.leader !== h.rank) return st.haveShared ? [] : [st.leader];
  return h.others.filter((p) => !st.haveExps[p] && Host.has(h.fitMask, p));
}

/** Per active member: how many of our incomplete owned slots lack its contribution. */
function lackingContributions(h: Host, st: RoundState, bankBase: number): Map<number, number> {
  const perRank = new Map<number, number>();
  for (let i = 0; i < st.owned.length; i++) {
    const c = st.owned[i];
    if (st.ownedDone[c]) continue;
    const slot = h.maps.slot(bankBase + c);
    const seen = slot.tag === st.r + 1 ? slot.seen : 0n;
    for (const p of h.others) if (!Host.has(seen, p) && Host.has(st.active, p)) perRank.set(p, (perRank.get(p) ?? 0) + 1);
  }
  return perRank;
}

/** The members whose contribution is the only one an open slot of ours
 * still lacks (every other active member's came). */
export function lackingAlone(h: Host, st: RoundState, bankBase: number): bigint {
  let mask = 0n;
  const want = st.active & h.othersMask;
  for (let i = 0; i < st.owned.length; i++) {
    const c = st.owned[i];
    if (st.ownedDone[c]) continue;
    const slot = h.maps.slot(bankBase + c);
    const lack = want & ~(slot.tag === st.r + 1 ? slot.seen : 0n);
    if (lack && (lack & (lack - 1n)) === 0n) mask |= lack;
  }
  return mask;
}

/** The active members whose contributions the listed slots of ours (open
 * ones; the rest are skipped) lack: the answer to a probe names only the
 * members that lost a contribution to the chunks asked about. */
export function lackingIn(h: Host, st: RoundState, bankBase: number, chunks: Iterable<number>): bigint {
  let mask = 0n;
  for (const c of chunks) {
    if (c >= st.nchunks || st.ownedDone[c] || st.ownerIdx[h.rank] < 0 || ownerOf(st, c) !== h.rank) continue;
    const slot = h.maps.slot(bankBase + c);
    const seen = slot.tag === st.r + 1 ? slot.seen : 0n;
    mask |= st.active & h.othersMask & ~seen;
  }
  return mask;
}

/** Ranks we wait for in this round: whose exponents we lack, or whose
 * contributions our incomplete owned slots lack. */
export function waitingFor(h: Host, st: RoundState, bankBase: number): bigint {
  let mask = 0n;
  const ranks = st.sent ? lackingContributions(h, st, bankBase).keys() : expsAwaited(h, st);
  for (const p of ranks) mask |= 1n << BigInt(p);
  return mask;
}

/** Whom we wait for, and for what. */
function waitsOn(h: Host, st: RoundState, bankBase: number): Map<number, string> {
  const on = new Map<number, string>();
  if (!st.sent) {
    for (const p of expsAwaited(h, st)) on.set(p, p === st.leader ? "the round's shared scale, which it gathers" : "its scale exponents");
    return on;
  }
  for (const [p, k] of lackingContributions(h, st, bankBase)) on.set(p, `its contributions to ${k} of our chunks`);
  const m = missingResults(h, st, bankBase);
  const owners = new Map<number, number>();
  for (let i = 0; i < Math.min(m, h.capacity); i++) {
    const o = ownerOf(st, h.chunkList[i]);
    if (o !== h.rank) owners.set(o, (owners.get(o) ?? 0) + 1);
  }
  for (const [o, k] of owners) on.set(o, `${on.has(o) ? on.get(o) + " and " : ""}results for ${k} chunks`);
  return on;
}

/** Asks every member whom it waits for, answering their questions
 * meanwhile, for STATUS_WAIT_MS. */
async function askStatus(h: Host, st: RoundState): Promise<void> {
  h.statusAnswers.clear();
  for (const p of h.others) h.sendControl(p, CTRL_STATUS_REQ, st.r, 0, 0, new Uint8Array(0));
  const until = h.clock.now() + TUNING.STATUS_WAIT_MS;
  while (h.clock.now() < until) {
    const ready = h.net.wait(READY_SOCK, Math.max(1, Math.ceil(until - h.clock.now())));
    if (typeof ready !== "number") await ready;
    drainControl(h, st);
    await h.clock.yield();
  }
}

/** The round missed its deadline: say who is missing. Every member is
 * asked whom it waits for (and so shown alive), so that a live member
 * blocked by a dead one is not blamed for it. */
export async function fail(h: Host, st: RoundState, bankBase: number, cause?: string, dead?: number[], detail = ""): Promise<never> {
  const on = waitsOn(h, st, bankBase);
  // given up for members the swarm declared dead: at once. Asking the
  // others first (STATUS_WAIT_MS) put this member that much behind the
  // survivors that gave the round up without waiting, and past their
  // caches of plans and results (sim seed 5180)
  if (dead) h.statusAnswers.clear();
  else await askStatus(h, st);
  const alive = new Set(h.statusAnswers.keys());
  const lacks = (p: number, q: number) => Host.has(h.statusAnswers.get(p) ?? 0n, q);
  // the dead: silent members; failing that, whom the members we wait for wait on
  const missing = new Set([...on.keys()].filter((p) => !alive.has(p)));
  if (missing.size === 0)
    for (const p of on.keys())
      for (const q of h.others) if (q !== p && lacks(p, q)) missing.add(q);
  if (missing.size === 0) for (const p of on.keys()) missing.add(p);
  const parts: string[] = [];
  for (const [p, what] of on) {
    const swarm = h.describeMember?.(p);
    if (dead && !dead.includes(p)) parts.push(`${describeRanks([p], h.peers)} not asked (we lack ${what})`);
    else if (!alive.has(p)) parts.push(`${describeRanks([p], h.peers)} does not answer (we lack ${what})${swarm ? `; ${swarm}` : ""}`);
    else {
      const its = h.others.filter((q) => q !== p && lacks(p, q));
      parts.push(`${describeRanks([p], h.peers)} is alive but ${its.length ? `waits for ${describeRanks(its, h.peers)}` : "waits for no one"} (we lack ${what})`);
    }
  }
  // a round given up for members the swarm declared dead misses those: a
  // live member that gave the same round up before us (and so no longer
  // answers for it) is not to blame
  const ranks = (dead ?? [...missing]).sort((a, b) => a - b);
  // the next round's leader: the plan's choice when we have the plan (the
  // survivors that completed this round take it too; a dead choice is
  // skipped by everyone alike), else the first live member after this leader
  h.leaderNext = st.sent ? st.next : liveFrom((st.leader + 1) % h.size, h.rank, h.size, h.liveMask);
  if (st.sizeMismatch.size && !dead) {
    const odd = [...st.sizeMismatch].sort((a, b) => a - b);
    throw new RoundError(`round ${st.r}`, `${describeRanks(odd, h.peers)} reduce${odd.length > 1 ? "" : "s"} an array of another length in this round: ${odd.length > 1 ? "their" : "its"} exponents name another number of chunks than our ${st.nchunks} (${st.x.length} values, ${h.chunkElems} per chunk)`, odd,
      "every member must call allreduce with arrays of the same length, in the same order (a rank that skipped or added a call is out of step)");
  }
  throw new RoundError(`round ${st.r}`, `${cause ?? `not complete after ${h.o.roundTimeoutMs} ms`}: missing ${describeRanks(ranks, h.peers)}; ${parts.join("; ")}`, ranks,
    "check that those members are running and attached; a member that died must be restarted with the whole job", detail);
}

/** We hold more than half of the others dead: more likely our own link
 * failed (a member whose sends are delayed sees everyone stop answering)
 * than most of the job at once. Such a member acts on no death early; its
 * round waits out the round timeout, as before the swarm could tell. */
export function isolated(h: Host, dead: bigint): boolean {
  let n = 0;
  for (const p of h.others) if (Host.has(dead, p)) n++;
  return 2 * n > h.others.length;
}

/** Members the swarm holds dead that this round cannot do without: the
 * leader whose plan we lack (or who died with its plan half sent: the
 * members without it gave the round up), owners of results we lack (once
 * our own results are out, so that the survivors holding the dead owner's
 * results complete the round with ours, and every live owner's results are
 * in, so that none waits on a contribution of ours). Our slots that lack only a dead
 * member's contribution are closed without it instead (closeForDead). */
export function deadWeWaitFor(h: Host, st: RoundState, bankBase: number): number[] {
  const dead = h.othersMask & ~h.liveMask;
  if (!dead || isolated(h, dead)) return [];
  let m = 0n;
  if (!st.sent) {
    if (st.leader !== h.rank && !st.haveShared && Host.has(dead, st.leader)) m |= 1n << BigInt(st.leader);
  } else if (Host.has(dead, st.leader) && h.clock.now() - st.lastProgress > TUNING.LEADERLESS_MS) {
    m |= 1n << BigInt(st.leader);
  } else if (st.ownedDoneCount === st.owned.length) {
    const k = missingResults(h, st, bankBase);
    let live = false;
    for (let i = 0; i < Math.min(k, h.capacity); i++) {
      const o = ownerOf(st, h.chunkList[i]);
      if (Host.has(dead, o)) m |= 1n << BigInt(o);
      else live = true;
    }
    // a live owner's result we lack may wait on a contribution of ours not
    // sent yet (our window to it full while its slots waited on the dead
    // member, until its own verdict) or lost: we stay, send and answer its
    // probes until it comes. Giving the round up then left that owner
    // waiting on us to its deadline, where it failed the job (a survivor
    // exited 1: test/collective.test.ts, SIGKILL; test/sim/collective.test.ts)
    if (live) m = 0n;
  }
  return h.others.filter((p) => Host.has(m, p));
}

/** Closes our open slots whose missing contributions all belong to members
 * the swarm holds dead (the deadline's close, early): their results go out
 * with the contributions present, each saying how many it holds. Returns
 * how many it closed. */
export function closeForDead(h: Host, st: RoundState, bankBase: number): number {
  const dead = h.othersMask & ~h.liveMask & st.active;
  if (!dead || isolated(h, h.othersMask & ~h.liveMask)) return 0;
  const close: number[] = [];
  for (let i = 0; i < st.owned.length; i++) {
    const c = st.owned[i];
    if (st.ownedDone[c]) continue;
    const slot = h.maps.slot(bankBase + c);
    const seen = slot.tag === st.r + 1 ? slot.seen : 0n;
    const missing = st.active & h.othersMask & ~seen;
    if (missing && !(missing & ~dead)) close.push(c);
  }
  if (close.length) {
    h.maps.closeSlots(st.r, close, { force: true, rank: h.rank, jobId: h.job, srcAddr: h.peers[h.rank] });
    h.stats.deadlineCloses += close.length;
  }
  return close.length;
}
