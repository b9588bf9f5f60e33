// What comes in: control packets from the socket, the program's events
// from its ring (completed slots, results, resend requests), and (rx "xsk")
// results from the AF_XDP socket.
import {
  CTRL_BYE, CTRL_EXPS, CTRL_EXPS_MAX, CTRL_EXPS_REQ, CTRL_HELLO, CTRL_MEMBER, CTRL_RESULT_REQ, CTRL_STATUS, CTRL_STATUS_REQ,
  EV_RESEND, EV_RESULT, EV_SLOT_COMPLETE,
} from "../abi.ts";
import { coll } from "../../native/collective.ts";
import { decodePlanHead, decodeStatus, encodeStatus, planHeadBytes, type Control } from "./control.ts";
import { lackingIn, waitingFor } from "./diagnose.ts";
import { answerExpsRequest, noteAsked, storeEarlyPlan, storeExps, storeRelayedPlan, storeShared } from "./exchange.ts";
import { answerHello } from "./handshake.ts";
import type { Host } from "./host.ts";
import { TUNING } from "./options.ts";
import { noteResult } from "./early.ts";
import { finish } from "./owner.ts";
import { liveFrom } from "./plan.ts";
import { askResults, lossSeen, resend, statusFromOwner, tellLacking } from "./recovery.ts";
import { ownerOf, type RoundState } from "./round-state.ts";

/** A control packet of this job's members (or a peer's HELLO of another
 * job), counted; else null: checked, authenticated under the job key and
 * bound to its sender by src/control-guard.ts, which counts what it refuses. */
export function parseControl(h: Host, d: Uint8Array, from: string): Control | null {
  const c = h.guard.open(d, from);
  if (c) h.stats.controlReceived++;
  return c;
}

/** Reads every queued control packet. */
export function drainControl(h: Host, st: RoundState | null): void {
  for (;;) {
    const b = h.net.recvBatch(0);
    if (b.count === 0) return;
    for (let i = 0; i < b.count; i++) {
      const c = parseControl(h, b.datagram(i), b.sourceAddr(i));
      if (c) handleControl(h, c, st);
    }
  }
}

export function handleControl(h: Host, c: Control, st: RoundState | null): void {
  switch (c.kind) {
    case CTRL_HELLO:
      return answerHello(h, c);
    case CTRL_STATUS_REQ:
      // a member at its deadline asks whom we wait for in this round
      // (our answer also tells it that we are alive)
      if (st && c.round === st.r) h.sendControl(c.rank, CTRL_STATUS, st.r, 0, 0, encodeStatus(waitingFor(h, st, (st.r & 1) * h.cfg.chunks)));
      return;
    case CTRL_STATUS: {
      const mask = decodeStatus(c.payload);
      if (mask === null) return;
      h.statusAnswers.set(c.rank, mask);
      if (st && c.round === st.r) statusFromOwner(h, st, c.rank, mask);
      return;
    }
    case CTRL_BYE:
      // `round` is the first round the leaver did not complete
      h.left.set(c.rank, c.round);
      return;
    case CTRL_EXPS:
    case CTRL_EXPS_REQ:
      storeExps(h, st, c.rank, c.round, c.chunk, c.payload);
      if (c.kind === CTRL_EXPS_REQ) answerExpsRequest(h, st, c.rank, c.round);
      return;
    case CTRL_EXPS_MAX:
      if (st && c.round === st.r) {
        if (c.rank === st.leader) storeShared(h, st, c.chunk, c.payload);
        else storeRelayedPlan(h, st, c.chunk, c.payload);
      } else {
        storeEarlyPlan(h, c.rank, c.round, c.chunk, c.payload);
        if (st && c.round === st.r + 1) planAhead(h, st);
      }
      return;
    case CTRL_RESULT_REQ:
      // a passive member lacks results of ours: send the stored ones again
      // (indices past the job's chunks are counted, never used)
      {
        const chunks = [...h.guard.chunkList(c.payload, h.cfg.chunks)];
        noteAsked(h, c.rank, c.round);
        // a result we sent a moment ago is on its way (we were descheduled
        // while the asker's probe timer ran): not sent twice; one truly
        // lost is asked for again
        const fresh = st && c.round === st.r ? h.clock.now() - TUNING.RESULT_FRESH_MS : Infinity;
        for (const chunk of chunks) if (!(st && st.resultSentAt[chunk] > fresh)) resend(h, c.round, chunk, c.rank, true);
        // a probe for slots of ours still open: say whose contributions they
        // lack (a member named there lost one and sends it again)
        if (st && c.round === st.r && st.sent) {
          const lack = lackingIn(h, st, (st.r & 1) * h.cfg.chunks, chunks);
          if (lack) h.sendControl(c.rank, CTRL_STATUS, st.r, 0, 0, encodeStatus(lack));
          // and to the members named (not the asker): they lost a contribution
          const others = lack & ~(1n << BigInt(c.rank));
          if (others && lossSeen(h, st)) tellLacking(h, st, others);
        }
      }
      return;
    case CTRL_MEMBER:
      h.onMember?.(c.rank, c.payload);
      return;
  }
}

/** Reads the program's events: finish completed slots, count results,
 * serve resend requests, and move the window. */
export function drainEvents(h: Host, st: RoundState | null, bankBase: number): void {
  if (h.robust) h.robust.drain(h, st);
  const raw = h.ring.raw;
  const done = h.chunkList;
  for (;;) {
    const n = h.ring.pollRaw(0);
    if (n === 0) return;
    let nd = 0;
    let resends: number[] | null = null;
    for (let i = 0; i < n; i++) {
      const type = raw[4 * i] & 0xffff;
      const round = raw[4 * i + 1];
      const chunk = raw[4 * i + 2];
      if (type === EV_RESEND) {
        (resends ??= []).push(round, chunk, raw[4 * i] >>> 16);
        continue;
      }
      if (!st) continue;
      if (round > h.cfg.roundBase && round === st.r) {
        h.advanceWindow(round);
        planAhead(h, st); // (the window reaches the next round now)
      }
      if (type === EV_SLOT_COMPLETE) {
        // (a chunk another member owns: a slot speculation filled under
        // another layout than the plan's, never ours to finish)
        if (round === st.r && chunk < st.nchunks && !st.ownedDone[chunk] && (st.K === 0 || st.ownerIdx[h.rank] === chunk % st.K)) {
          st.ownedDone[chunk] = 1;
          st.summed[chunk] = raw[4 * i] >>> 16;
          done[nd++] = chunk;
        }
      } else if (type === EV_RESULT) {
        if (round === st.r && chunk < st.nchunks && !st.xdone[chunk]) {
          st.resultsSeen++;
          gotResult(st, chunk, h);
          noteResult(st, chunk);
        }
      }
    }
    if (nd && st) {
      // a slot can complete before we have every exponent (the others had
      // ours first): our own chunk is not quantized yet, so finish later
      if (st.sent) finish(h, st, bankBase, done.subarray(0, nd));
      else for (let i = 0; i < nd; i++) st.pending.push(done[i]);
    }
    if (resends) for (let i = 0; i < resends.length; i += 3) resend(h, resends[i], resends[i + 1], resends[i + 2]);
  }
}

/** rx "xsk": dequantize the results waiting in the socket's UMEM frames. */
export function drainXsk(h: Host, st: RoundState): void {
  // only once the plan says who owns what: a result is taken only from its
  // chunk's owner (native/xsk.c checks, as the program does on the map
  // path); until then the frames wait in the socket's ring
  if (!st.sent || st.K === 0) return;
  const newly = h.chunkList;
  const n = h.xsk!.results(h.job, st.r, st.nchunks, h.chunkElems, st.out, st.xdone, newly, st.ownersU8!);
  if (n === 0) return;
  if (st.r > h.cfg.roundBase) h.advanceWindow(st.r); // a result of round r: everyone finished r-1
  st.resultsSeen += n;
  for (let i = 0; i < Math.min(n, newly.length); i++) gotResult(st, newly[i], h);
}

/** A result arrived: it acknowledges one chunk of its owner's window, and
 * times its round-trip (Karn: only of a chunk sent once; the result of one
 * sent again tells whether that was needed). */
export function gotResult(st: RoundState, chunk: number, h: Host): void {
  const o = ownerOf(st, chunk);
  st.xdone[chunk] = 1;
  const k = Math.floor(chunk / st.K);
  if (st.sentAt[chunk] > 0) {
    const since = h.clock.now() - st.sentAt[chunk];
    // a round-trip only of a result in order: one overtaken by a later
    // chunk's result waited on a loss (ours, or another member's lost
    // contribution to the same slot), which says nothing of the path and
    // would stretch every timer under loss
    // (not of one sent before its round's plan: it waited for the owner's plan too)
    if (st.sent && st.sentAt[chunk] >= st.confirmedAt) {
      if (st.tries[chunk] === 0) {
        if (k > st.furthest[o]) h.rtt.sample(since);
      } else h.rtt.resultAfterRetransmit(since);
    }
    // RACK's rtt: of the latest-sent chunk with its result (a retransmitted
    // one only when the result cannot be the first sending's)
    if (st.sentAt[chunk] >= st.rackSent[o] && (st.tries[chunk] === 0 || since >= h.rtt.minRtt)) {
      st.rackSent[o] = st.sentAt[chunk];
      st.rackRtt[o] = since;
    }
  }
  st.acked[o]++;
  if (k > st.furthest[o]) st.furthest[o] = k;
}

const xskNotOwner = new WeakMap<Host, number>();
/** rx "xsk": results native/xsk.c dropped as not from their chunk's owner,
 * counted under the guard's not_owner (as the program counts them on the
 * map path); read between rounds, not per wake-up. */
export function countXskDrops(h: Host): void {
  if (!h.xsk) return;
  const now = h.xsk.stats().notOwner;
  const d = now - (xskNotOwner.get(h) ?? 0);
  xskNotOwner.set(h, now);
  if (d > 0) h.guard.count("not_owner", d);
}

/** Empties, and counts once under its reason, every results-map entry of
 * this round that holds what the plan refuses: a result from a rank that
 * does not own the chunk (not_owner), or one under the owner's rank with a
 * contributor count the active set cannot have (mal_contributors), both
 * stored before the plan was known. `self` = our rank leaves our own
 * chunks' entries alone (they hold our finished results); NO_RANK also
 * empties forgeries stored in them (our finish would overwrite them
 * uncounted). An entry the program already replaced with the owner's was
 * counted there, and is kept; an owner's result is never emptied. */
export function dropForeign(h: Host, st: RoundState, bankBase: number, self: number): void {
  const emptied = st.K ? sweepForeign(h, bankBase, st.nchunks, st.r, st.ownersU8!, st.K, self, st.passive) : 0;
  // past the round's chunks (a one-value barrier round has one) no rank
  // owns anything: whatever was stored there for this round is forged
  if (self === NO_RANK && st.nchunks < h.cfg.chunks) sweepForeign(h, bankBase + st.nchunks, h.cfg.chunks - st.nchunks, st.r, NOBODY, 1, NO_RANK, false);
  if (emptied) recountResults(h, st, bankBase);
}

/** The results we hold, from the map: a forgery's event marked its chunk
 * done (xdone, resultsSeen) before the plan could tell, and the owner's
 * result, stored after we emptied the forgery, raised an event for a chunk
 * already marked: the round then waited for its timer to look in the map. */
function recountResults(h: Host, st: RoundState, bankBase: number): void {
  const m = Math.min(coll.ainftp_results_missing(h.resBase, bankBase, st.nchunks, st.r + 1, h.chunkList, h.capacity), h.capacity);
  st.xdone.fill(1, 0, st.nchunks);
  for (let i = 0; i < m; i++) st.xdone[h.chunkList[i]] = 0;
  let seen = 0;
  for (let c = 0; c < st.nchunks; c++) if (ownerOf(st, c) !== h.rank) seen += st.xdone[c];
  st.resultsSeen = seen;
}
export const NO_RANK = 0xffff;
const NOBODY = Uint8Array.of(0xff);
const tooMany = new Uint32Array(1);
/** Chunks a sweep emptied, to ask their owners for (at most this many a sweep). */
const EMPTIED_MAX = 4096;
const emptied = new Uint32Array(EMPTIED_MAX);

/** ainftp_results_drop_foreign over [bankBase, bankBase + n) of round r,
 * counted. With `ask` (a round we sit out: its results need nothing of
 * ours, so they may have come before we knew its plan), the owner's result
 * for an entry a forgery held may have been refused while the forgery
 * stood: it is asked for now, while the owner, which may be rounds ahead
 * of a straggler, still holds it. Returns how many entries it emptied. */
function sweepForeign(h: Host, bankBase: number, n: number, r: number, owners: Uint8Array, k: number, self: number, ask: boolean): number {
  const dropped = coll.ainftp_results_drop_foreign(h.resBase, bankBase, n, r + 1, owners, k, self, tooMany, emptied, EMPTIED_MAX);
  if (dropped > tooMany[0]) h.guard.count("not_owner", dropped - tooMany[0]);
  if (tooMany[0]) h.guard.count("mal_contributors", tooMany[0]);
  if (ask) {
    const byOwner = new Map<number, number[]>();
    for (let i = 0; i < Math.min(dropped, EMPTIED_MAX); i++) {
      const o = owners[emptied[i] % k];
      if (o === h.rank) continue;
      let l = byOwner.get(o);
      if (!l) byOwner.set(o, (l = []));
      l.push(emptied[i]);
    }
    for (const [o, list] of byOwner) askResults(h, o, r, list);
  }
  return dropped;
}

/** The next round's plan into the program as soon as we can know it: we
 * hold this round's plan (so we know who leads the next), the window
 * reaches the next round, and a piece of that leader's plan is here (each
 * names the active set). The program then refuses forgeries for that round
 * by owner, and what it stored before is emptied and counted now. Without
 * it a member learnt a round's plan only when it started the round: a
 * straggler rounds behind held a forgery stored first, which kept the
 * owner's result out (refused as a duplicate), and by the time it emptied
 * the forgery the owner, rounds ahead, no longer held its result (sim
 * seeds 9100-9112). A leader that dies before its plan is followed leaves
 * this plan in place until the round's own (round.ts applyPlan) replaces it. */
export function planAhead(h: Host, st: RoundState): void {
  if (st.planAhead || !st.sent || h.cfg.roundBase !== st.r) return;
  const r = st.r + 1;
  const leader = liveFrom(st.next, h.rank, h.size, h.liveMask);
  if (leader === h.rank) return void (st.planAhead = true); // ours to decide: results come after it
  const pieces = h.earlyPlans.get(r)?.get(leader);
  const piece: Uint8Array | undefined = pieces?.values().next().value;
  if (!piece || piece.length < planHeadBytes(h.size)) return;
  st.planAhead = true;
  const { active } = decodePlanHead(piece);
  // (as storeShared checks a plan: its members are ours, its leader among them)
  if (active >> BigInt(h.size) || !((active >> BigInt(leader)) & 1n)) return;
  const owners: number[] = [];
  for (let k = 0; k < h.size; k++) if ((active >> BigInt(k)) & 1n) owners.push(k);
  h.maps.setPlan(r, owners);
  if (!h.xsk) sweepForeign(h, (r & 1) * h.cfg.chunks, h.cfg.chunks, r, Uint8Array.from(owners), owners.length, NO_RANK, !((active >> BigInt(h.rank)) & 1n));
}
