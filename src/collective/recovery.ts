// Loss recovery. A member missing results sends its contributions again
// (flagged F_RETRANSMIT): fast, when a chunk sent before one whose result
// arrived is older than that owner's latest round-trip plus a reordering
// window (RACK, retransmitGaps, which also returns when the next such
// chunk comes due); when nothing moves, the probe asks each owner for the
// results we lack (probe: CTRL_RESULT_REQ; an owner resends what it has and
// answers with CTRL_STATUS whose contributions its open slots lack, and a
// member named there sends again: statusFromOwner); under loss, at the
// round's tail, owners name the member a slot lacks alone, unasked (tellTail,
// and the probe); once nothing moved for the RTO, everything older than it
// (retransmit). All timed by measured
// round-trips (rtt.ts). A retransmit to a completed slot makes the owner's
// program raise a resend event and the owner sends the stored result again
// (resend), from its results map or, for a member that fell further behind,
// from the cache of the last rounds (cacheDepth). A passive member asks
// with CTRL_RESULT_REQ.
import { coll } from "../../native/collective.ts";
import { CTRL_EXPS_REQ, CTRL_RESULT_REQ, CTRL_STATUS, F_RETRANSMIT, PKT_CONTRIB } from "../abi.ts";
import { headerTemplate } from "../quantize.ts";
import { encodeChunkList, encodeStatus, HDR, markRetransmit, packetCount, REQ_CHUNKS } from "./control.ts";
import { expsAwaited, lackingAlone } from "./diagnose.ts";
import { myExps, sendExps } from "./exchange.ts";
import { Host } from "./host.ts";
import { TUNING } from "./options.ts";
import { ownerOf, type RoundState } from "./round-state.ts";
import { unsent } from "./sender.ts";

const { CACHE_ROUNDS, CACHE_ROUNDS_MIN, CACHE_BYTES } = TUNING;

/** Rounds of results kept when a round's are `bytes`. */
export function cacheDepth(bytes: number): number {
  return Math.max(CACHE_ROUNDS_MIN, Math.min(CACHE_ROUNDS, Math.floor(CACHE_BYTES / Math.max(1, bytes))));
}
/** AINFTP_TRACE_RECOVERY (round.ts): a line for each owner's status we act on. */
const TRACE = !!process.env.AINFTP_TRACE_RECOVERY;
/** RACK looks at chunks at least this many positions behind the furthest result. */
const RACK_BEHIND = 1;

/** Fast retransmit (RACK, RFC 8985): an owner completes slots in the order
 * we (and every member) sent them, so a chunk sent before one whose result
 * arrived, and older than the round-trip plus the reordering window, is
 * lost. Send those chunks again now instead of waiting for the timer
 * (which only fires when nothing at all moves). A result merely reordered
 * comes within the window; a retransmission that proves spurious widens it. */
export function retransmitGaps(h: Host, st: RoundState): number {
  const now = h.clock.now();
  let next = Infinity;
  for (let o = 0; o < h.size; o++) {
    if (o === h.rank) continue;
    const list = st.ownerChunks[o];
    while (st.lowest[o] < st.pos[o] && st.xdone[list[st.lowest[o]]]) st.lowest[o]++;
    // (results come in the order sent: every member sends an owner's
    // chunks in list order, so its slots complete in that order; one
    // position of slack, and the reordering window in time)
    const upto = Math.min(st.pos[o], st.furthest[o] - RACK_BEHIND);
    let late: number[] | null = null;
    for (let k = st.lowest[o]; k < upto; k++) {
      const c = list[k];
      if (st.xdone[c]) continue;
      const at = h.rtt.lostAt(st.sentAt[c], st.tries[c], st.rackRtt[o]);
      if (at > now) {
        // not yet: RACK's reorder timer wakes the loop then
        if (at < next) next = at;
        continue;
      }
      (late ??= []).push(c);
    }
    if (late) {
      sendAgain(h, st, o, late);
      for (const c of late) next = Math.min(next, h.rtt.lostAt(st.sentAt[c], st.tries[c], st.rackRtt[o]));
    }
  }
  return next;
}

/** Chunks whose result has not arrived (listed in h.chunkList); returns how many. */
export function missingResults(h: Host, st: RoundState, bankBase: number): number {
  if (!h.xsk) return coll.ainftp_results_missing(h.resBase, bankBase, st.nchunks, st.r + 1, h.chunkList, h.capacity);
  let m = 0;
  for (let c = 0; c < st.nchunks; c++)
    if (!st.xdone[c] && ownerOf(st, c) !== h.rank) h.chunkList[m++] = c;
    else if (ownerOf(st, c) === h.rank && !st.ownedDone[c]) h.chunkList[m++] = c;
  return m;
}

/** No progress for `rto` ms: ask again for missing exponents, or send again
 * the contributions whose results have not come back and that were sent at
 * least `rto` ago, and ask their owners for every result we lack by name.
 * (The probe, the first timeout since progress, is probe() below.) */
export function retransmit(h: Host, st: RoundState, bankBase: number, rto = 0): void {
  if (!st.sent) {
    const mine = myExps(h, st);
    for (const p of expsAwaited(h, st)) sendExps(h, p, st.r, mine, CTRL_EXPS_REQ);
    return;
  }
  const m = missingResults(h, st, bankBase);
  const now = h.clock.now();
  // per owner: the results we lack of chunks we sent (asked for by name),
  // and of those the contributions sent at least rto ago (sent again)
  const ask = new Map<number, number[]>();
  const again = new Map<number, number[]>();
  for (let i = 0; i < Math.min(m, h.capacity); i++) {
    const c = h.chunkList[i];
    const o = ownerOf(st, c);
    if (o === h.rank || (!st.passive && Math.floor(c / st.K) >= st.pos[o])) continue;
    let l = ask.get(o);
    if (!l) ask.set(o, (l = []));
    l.push(c);
    if (st.passive || now - st.sentAt[c] < rto) continue; // in flight, not lost
    let a = again.get(o);
    if (!a) again.set(o, (a = []));
    a.push(c);
  }
  // our contributions again (the owner may lack them). A passive member
  // sent nothing: it only asks.
  for (const [o, list] of again) sendAgain(h, st, o, list);
  // and the results asked for by name, also those whose contribution went
  // again a moment ago (RACK): an owner that moved two rounds on drops a
  // contribution of this round as stale, and answers only a request, from
  // its cache. Were these skipped while RACK kept resending the
  // contribution, nothing would ever ask (10x --quorum 3 under loss: a
  // member stuck 10 s in a round whose owner had gone on).
  for (const [o, list] of ask) {
    askResults(h, o, st.r, list);
    if (st.passive) h.stats.retransmits += list.length;
  }
}

/** Asks owner o for the results of `round` it holds for `list`, by name
 * (CTRL_RESULT_REQ, REQ_CHUNKS a packet): from its map, or from its cache
 * once its program's window has moved on. */
export function askResults(h: Host, o: number, round: number, list: readonly number[]): void {
  for (let i = 0; i < list.length; i += REQ_CHUNKS) h.sendControl(o, CTRL_RESULT_REQ, round, 0, 0, encodeChunkList(list.slice(i, i + REQ_CHUNKS)));
}

/** The tail-loss probe, a poll: asks each owner, by name, for the results
 * we lack (CTRL_RESULT_REQ). An owner that has them sends them again (a
 * lost result costs one round-trip); one whose slots still wait answers
 * with whom it waits for (CTRL_STATUS), and only a member named there sends
 * its contributions again (statusFromOwner). Nothing is sent twice on a
 * guess, so a probe into a round that is merely slow (a peer descheduled
 * on a busy host) costs one small packet per owner. Returns the polls sent. */
export function probe(h: Host, st: RoundState, bankBase: number): number {
  const asked = askOwners(h, st, bankBase);
  // the round's tail: the few slots of ours still open that lack one
  // member's contribution alone (the others' came: lost, not late). Tell
  // that member, who sends again what RACK already counts as lost
  // (statusFromOwner), instead of waiting for its own probe of us. Not
  // earlier: mid-round (16 MiB) a slot lacking one member is mostly one
  // whose last contribution is on its way, and members sent whole windows
  // again (retransmissions +12%, timeouts 3-5x)
  const open = st.owned.length - st.ownedDoneCount;
  if (!st.passive && open > 0 && open <= TUNING.TELL_TAIL && lossSeen(h, st)) tellLacking(h, st, lackingAlone(h, st, bankBase));
  return asked;
}

/** Asks each owner, by name, for the results we lack of the chunks we sent
 * it (a passive member: of every chunk), one packet per owner (at most
 * REQ_CHUNKS), and notes when (statusFromOwner judges the answer as of
 * then). Returns the owners asked. */
function askOwners(h: Host, st: RoundState, bankBase: number): number {
  const m = Math.min(missingResults(h, st, bankBase), h.capacity);
  const byOwner = new Map<number, number[]>();
  for (let i = 0; i < m; i++) {
    const c = h.chunkList[i];
    const o = ownerOf(st, c);
    if (o === h.rank || (!st.passive && Math.floor(c / st.K) >= st.pos[o])) continue;
    let l = byOwner.get(o);
    if (!l) byOwner.set(o, (l = []));
    if (l.length < REQ_CHUNKS) l.push(c);
  }
  const now = h.clock.now();
  for (const [o, list] of byOwner) {
    askResults(h, o, st.r, list);
    st.probedAt[o] = now;
  }
  return byOwner.size;
}

/** Loss seen here: RACK sent a contribution again in this round or in the
 * last LOSSY_ROUNDS. Only then do owners name, unasked, the members their
 * slots lack (probe, tellTail, the answer to another member's probe): on a
 * clean network a slot that lacks one member is a slow member, and naming
 * it makes it send again on RACK's clock (a clean 8-host job on 2 cores
 * sent 40 results twice). */
export function lossSeen(h: Host, st: RoundState, rounds: number = TUNING.LOSSY_ROUNDS): boolean {
  return st.rackFired || st.r - h.lossRound <= rounds;
}

/** Under loss (RACK fired here in this round or the last
 * REDUNDANT_ROUNDS), a small round's data goes out twice: each
 * contribution and each result is sent again right behind itself (the
 * program drops the copy that comes second, counted as a duplicate; a
 * contribution's copy carries no F_RETRANSMIT, so it never asks for a
 * result again). At 1 MiB a round is a few round trips long, and every loss
 * cost it the round trips of its recovery (RACK, the probe, the tail ask):
 * 2.3x the clean round at 3% loss and 2% duplication per bridge port. Both
 * copies are lost with the square of the loss rate. Large rounds keep one
 * copy: they are CPU-bound, and their recovery hides behind the rest of
 * the round (16 MiB under the same loss: 1.9x). */
export function redundant(h: Host, st: RoundState): boolean {
  // (a longer memory than lossSeen's: two copies hide most losses from
  // RACK, and with LOSSY_ROUNDS the copies stopped 8 rounds after the
  // last loss RACK saw, and the next loss cost a round its recovery again)
  // Not where the link is the bottleneck: the frames' time at our measured
  // egress rate is then what a second copy costs (4 bits, 16 MiB at 1
  // Gbit/s, 2.1 MB of frames: one spurious RACK doubled every round's bytes
  // for REDUNDANT_ROUNDS rounds, 66 ms a round against 41)
  const bytes = st.nchunks * h.seg;
  if (bytes > TUNING.REDUNDANT_BYTES || !lossSeen(h, st, TUNING.REDUNDANT_ROUNDS)) return false;
  const rate = h.pace.rate();
  return !(rate > 0 && bytes / rate > TUNING.REDUNDANT_MS);
}

/** When the owner's tail check is next due (Infinity: not now). Under loss
 * (lossSeen: RACK fired here in this round or the last few), once at most
 * TELL_TAIL slots of ours are open: every TELL_MS, a slot that lacks one
 * member's contribution alone names that member (tellTail). Members send
 * in list order, so by then its contribution was lost, not late; the member
 * sends again only what its RACK counts as lost (statusFromOwner). */
export function tellDue(h: Host, st: RoundState): number {
  if (!st.sent || st.passive || !lossSeen(h, st)) return Infinity;
  const open = st.owned.length - st.ownedDoneCount;
  return open > 0 && open <= TUNING.TELL_TAIL ? st.toldAt + TUNING.TELL_MS : Infinity;
}

/** When the member's tail ask is next due (Infinity: not now). Under loss
 * (lossSeen), once every contribution of ours is sent and at most TELL_TAIL
 * results are missing: ASK_MS after the last progress (or the last ask),
 * their owners are asked by name, as the probe asks, without waiting for
 * the probe timer (2·srtt, which a loaded host's round-trips stretch to
 * tens of ms). A result whose slot completed is sent again; an owner still
 * waiting says for whom (statusFromOwner). Members send in list order and
 * owners answer in slot order, so by then a missing last result was lost. */
export function askDue(h: Host, st: RoundState): number {
  if (!st.sent || st.passive || !lossSeen(h, st) || unsent(h, st)) return Infinity;
  const lacking = st.nchunks - st.owned.length - st.resultsSeen;
  return lacking > 0 && lacking <= TUNING.TELL_TAIL ? Math.max(st.lastProgress, st.askedAt) + TUNING.ASK_MS : Infinity;
}

/** The member's tail ask (askDue): each owner, by name, for the results we lack. */
export function askTail(h: Host, st: RoundState, bankBase: number): void {
  st.askedAt = h.clock.now();
  askOwners(h, st, bankBase);
}

/** The owner's tail check (tellDue): name the members whose contribution
 * alone our open slots lack. */
export function tellTail(h: Host, st: RoundState, bankBase: number): void {
  st.toldAt = h.clock.now();
  tellLacking(h, st, lackingAlone(h, st, bankBase));
}

/** Our open slots wait for the members in `mask`: a CTRL_STATUS naming them
 * to each of them (a member not named ignores it). */
export function tellLacking(h: Host, st: RoundState, mask: bigint): void {
  if (!mask) return;
  const status = encodeStatus(mask);
  for (const p of h.others) if (Host.has(mask, p)) h.sendControl(p, CTRL_STATUS, st.r, 0, 0, status);
}

/** An owner of this round says whom its slots wait for (its answer to a
 * probe, or to a deadline's question): if it waits for us, our
 * contributions to it whose results we lack, and that are older than RACK
 * allows, were lost: send them again. */
export function statusFromOwner(h: Host, st: RoundState, owner: number, mask: bigint): void {
  if (!st.sent || st.passive || owner === h.rank || st.ownerIdx[owner] < 0 || ((mask >> BigInt(h.rank)) & 1n) === 0n) return;
  const list = st.ownerChunks[owner];
  // lost by the time of the probe the owner answers (else by now): a chunk
  // sent just before the probe may still be on its way (a loaded host's
  // softirq runs late), the owner's answer says nothing of it
  // (one probe's time, once: a later status, the owner's own tail check
  // unasked, speaks of the owner's state then, not at that old probe)
  const now = h.clock.now();
  const asOf = st.probedAt[owner] > 0 ? Math.min(now, st.probedAt[owner]) : now;
  st.probedAt[owner] = 0;
  let late: number[] | null = null;
  for (let k = st.lowest[owner]; k < st.pos[owner]; k++) {
    const c = list[k];
    if (!st.xdone[c] && h.rtt.lostAt(st.sentAt[c], st.tries[c], st.rackRtt[owner]) <= asOf) (late ??= []).push(c);
  }
  if (TRACE && !late) {
    let open = 0;
    for (let k = st.lowest[owner]; k < st.pos[owner]; k++) if (!st.xdone[list[k]]) open++;
    console.error(`[trace] r${st.r} rank ${h.rank} status from o${owner} at ${(h.clock.now() - st.t0).toFixed(1)}: 0 again (${open} lack results)`);
  }
  if (!late) return;
  if (TRACE) console.error(`[trace] r${st.r} rank ${h.rank} status from o${owner} at ${(h.clock.now() - st.t0).toFixed(1)}: ${late.length} again`);
  sendAgain(h, st, owner, late);
  // a loss the timer had to find (the probe's answer), not RACK: a timeout,
  // as the full retransmission is; a probe that finds nothing lost is not
  h.stats.timeouts++;
}

/** Sends the listed chunks (all owned by o, in order) to o again, flagged as
 * retransmissions so a completed slot answers with its stored result. */
export function sendAgain(h: Host, st: RoundState, o: number, list: number[]): void {
  const seg = h.seg;
  const stage = new Uint8Array(list.length * seg);
  const now = h.clock.now();
  list.forEach((c, i) => {
    const k = Math.floor(c / st.K);
    stage.set(st.sendBuf.subarray(st.ownerOffset[o] + k * seg, st.ownerOffset[o] + (k + 1) * seg), i * seg);
    st.sentAt[c] = now;
    if (st.tries[c] < 255) st.tries[c]++;
  });
  coll.ainftp_set_flags(stage, list.length, seg, F_RETRANSMIT);
  h.sealData(stage, list.length);
  // the short chunk, if any, is the owner's last: keep it last
  const lastSize = h.wireBytes(st.counts[list[list.length - 1]]);
  h.sendData(o, stage, list.length, lastSize);
  h.stats.retransmits += list.length;
}

/** A peer lost our result for (round, chunk): send the stored one again. */
export function resend(h: Host, round: number, chunk: number, rank: number, probe = false): void {
  if (rank >= h.size || rank === h.rank) return;
  const tmpl = headerTemplate({ type: PKT_CONTRIB, jobId: h.job, round, rank: h.rank, version: h.version });
  const one = new Uint32Array([chunk]);
  const pkt = new Uint8Array(h.seg);
  if (chunk >= h.cfg.chunks) return h.guard.count("bad_chunk");
  if (coll.ainftp_result_packets(h.resBase, (round & 1) * h.cfg.chunks, h.cfg.chunks, one, 1, tmpl, pkt, h.seg) !== 1) {
    // the bank holds a newer round now: a passive member fell behind
    // (the ring's depth follows the rounds' sizes: look in every entry)
    const e = h.resultRing.find((c) => c?.round === round);
    const at = e && chunk < e.at.length ? e.at[chunk] : -1;
    if (!e || at < 0) return;
    pkt.set(e.buf.subarray(at, at + h.seg));
    markRetransmit(pkt);
  }
  h.sealData(pkt, 1);
  h.sendData(rank, pkt, 1, h.wireBytes(packetCount(pkt)));
  if (probe) h.stats.probeAnswers++;
  else h.stats.resends++;
}

/** Keeps the result packets we send for the last rounds (as many as
 * CACHE_BYTES hold, CACHE_ROUNDS_MIN to CACHE_ROUNDS): a member that fell
 * behind (it sat rounds out, or lost a result while we moved two rounds on)
 * asks for them after our results map's bank moved on. One copy of what we
 * send (16 MiB over 4 hosts: 2 MB a round). */
export function cacheResults(h: Host, st: RoundState, chunks: Uint32Array, n: number): void {
  const room = cacheRoom(h, st, n);
  if (!room) return;
  // the batch's packets lie one after another: one copy
  room.set(h.resPkts.subarray(0, n * h.seg));
  cached(h, st, chunks, n);
}

/** Where the next n result packets of round st.r go in the cache, or null
 * when they do not fit (not cached). The owner's step writes them there
 * and sends them from there (owner.ts finish): no copy of what we send
 * (2 MB a rank a 16 MiB round at 16 bits). Then `cached` records them. */
export function cacheRoom(h: Host, st: RoundState, n: number): Uint8Array | null {
  const slot = st.r % cacheDepth(st.owned.length * h.seg);
  let e = h.resultRing[slot];
  if (!e || e.round !== st.r) {
    const bytes = st.owned.length * h.seg;
    const buf = e && e.buf.length >= bytes ? e.buf : new Uint8Array(bytes);
    e = h.resultRing[slot] = { round: st.r, buf, at: (e?.at ?? new Int32Array(h.capacity)).fill(-1), used: 0 };
  }
  if (e.used + n * h.seg > e.buf.length) return null;
  return e.buf.subarray(e.used, e.used + n * h.seg);
}

/** The n packets cacheRoom gave room for are there: chunks[i] at the i-th. */
export function cached(h: Host, st: RoundState, chunks: Uint32Array, n: number): void {
  const e = h.resultRing[st.r % cacheDepth(st.owned.length * h.seg)];
  for (let i = 0; i < n; i++) e.at[chunks[i]] = e.used + i * h.seg;
  e.used += n * h.seg;
}
