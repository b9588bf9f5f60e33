// Loss recovery. The owner of a slot knows whose contribution it lacks; a
// member knows only that a result is missing. So: an owner whose open slot
// lies behind one that completed (every member sends its chunks in list
// order, so each member's later contribution is here) names to each member
// that lost a contribution exactly those chunks (nackGaps: CTRL_STATUS with
// a chunk list), and that member, only, sends them again (statusFromOwner).
// A member missing a result behind later ones of the same owner, or its last
// chunks' results once overdue, asks the owner for them by name
// (retransmitGaps, RACK-timed: CTRL_RESULT_REQ): the owner sends again the
// results it has and names the members its open slots lack (answerProbe).
// Asks and names are repeated after recovery's round trip (againMs),
// doubling. When nothing moves, the tail-loss probe polls each owner
// (probe), and once nothing moved for the RTO everything older is sent again
// (retransmit). A retransmission to a completed slot makes the owner's
// program raise a resend event and the owner sends the stored result again
// (resend), from its results map or, for a member that fell further behind,
// from the cache of the last CACHE_ROUNDS rounds. A passive member asks
// with CTRL_RESULT_REQ.
import { coll } from "../../native/collective.ts";
import { CTRL_EXPS_REQ, CTRL_RESULT_REQ, CTRL_STATUS, F_RETRANSMIT, PKT_CONTRIB } from "../abi.ts";
import { headerTemplate } from "../quantize.ts";
import { encodeChunkList, encodeStatus, HDR, markRetransmit, packetCount, REQ_CHUNKS, STATUS_MASK_BYTES } from "./control.ts";
import { expsAwaited, lackingIn } from "./diagnose.ts";
import { myExps, noteAsked, sendExps } from "./exchange.ts";
import { Host } from "./host.ts";
import { TUNING } from "./options.ts";
import { ownerOf, type RoundState } from "./round-state.ts";

const { CACHE_ROUNDS } = TUNING;
const TRACE = !!process.env.AINFTP_TRACE_RECOVERY;
/** RACK looks at chunks at least this many positions behind the furthest result. */
const RACK_BEHIND = 1;
/** A CTRL_RESULT_REQ's `chunk` field: the chunks asked for lie behind
 * results that arrived (RACK), so a result sent a moment ago was lost, not
 * on its way: the owner sends it again however fresh it is. */
export const PROBE_BEHIND = 1;
/** ... and the tail probe's: the last chunks sent to an owner, overdue.
 * Both come from a member in its current round: no sign that it is behind
 * (exchange.ts noteAsked), however late they arrive (a slow link). */
export const PROBE_TAIL = 2;
/** The tail probe asks for at most this many of an owner's last chunks. */
const TAIL_PROBE_CHUNKS = 4;
/** A full retransmission's tail-loss probe (barriers' passive path) sends
 * the last this many missing chunks per owner. */
const PROBE_CHUNKS = RACK_BEHIND + 1;

/** RACK (RFC 8985) on the results, asking instead of sending: an owner
 * completes slots in the order we (and every member) sent them, so a chunk
 * sent before one whose result arrived, and older than the round-trip plus
 * the reordering window, lacks its result: either the result was lost on
 * its way to us, or a contribution to its slot was (ours or another
 * member's). Only the owner knows which, so we ask it, by name, in one
 * control packet (CTRL_RESULT_REQ flagged PROBE_BEHIND): it sends the
 * result again if it has it, and names to each member whose contribution
 * the slot lacks exactly those chunks (answerProbe, nackGaps), and only
 * that member sends them again (statusFromOwner). Sending our contribution
 * again on a guess made every member send it (three data packets and a
 * result resent to each for one lost packet). The last chunks sent to an
 * owner have no later result behind them: once everything to that owner is
 * sent, the oldest of them are asked for after twice RACK's wait (the tail
 * probe). A chunk asked for is asked again after againMs, doubling.
 * Returns when the next chunk comes due (RACK's reorder timer). */
export function retransmitGaps(h: Host, st: RoundState): number {
  const now = h.clock.now();
  let next = Infinity;
  for (let o = 0; o < h.size; o++) {
    if (o === h.rank || st.ownerIdx[o] < 0) continue;
    const list = st.ownerChunks[o];
    while (st.lowest[o] < st.pos[o] && st.xdone[list[st.lowest[o]]]) st.lowest[o]++;
    // (results come in the order sent: every member sends an owner's
    // chunks in list order, so its slots complete in that order; one
    // position of slack, and the reordering window in time)
    const upto = Math.min(st.pos[o], st.furthest[o] - RACK_BEHIND);
    const tailTo = st.pos[o] === list.length ? st.pos[o] : upto;
    let behind: number[] | null = null, tail: number[] | null = null;
    for (let k = st.lowest[o]; k < tailTo; k++) {
      const c = list[k];
      if (st.xdone[c]) continue;
      const isTail = k >= upto;
      if (isTail && tail && tail.length >= TAIL_PROBE_CHUNKS) break;
      const at = dueAt(h, st, o, c, isTail);
      if (at > now) {
        if (at < next) next = at; // not yet: RACK's reorder timer wakes the loop then
        continue;
      }
      if (isTail) (tail ??= []).push(c);
      else (behind ??= []).push(c);
      if (behind && behind.length >= REQ_CHUNKS) break;
    }
    for (const [l, flag] of [[behind, PROBE_BEHIND], [tail, PROBE_TAIL]] as const) {
      if (!l) continue;
      h.sendControl(o, CTRL_RESULT_REQ, st.r, 0, flag, encodeChunkList(l));
      for (const c of l) (st.askedAt[c] = now), st.asks[c] < 255 && st.asks[c]++;
      st.probedAt[o] = now;
      st.asked++;
      next = Math.min(next, ...l.map((c) => dueAt(h, st, o, c, flag === PROBE_TAIL)));
    }
  }
  return next;
}

/** When a chunk whose result we lack is asked for (again). The first
 * time, RACK's wait past its sending (twice that in the tail). Once asked
 * for, or sent again on its owner's word, the owner is at work on it: the
 * wait is recovery's, a control packet's round trip (againMs), doubling
 * with each ask. (RACK's rtt is a data round-trip: an owner answers only
 * once every member's contribution is in, tens of ms on a loaded host.) */
function dueAt(h: Host, st: RoundState, o: number, c: number, tail: boolean): number {
  if (st.asks[c] === 0 && st.tries[c] === 0) return h.rtt.lostAt(st.sentAt[c], tail ? 1 : 0, st.rackRtt[o]);
  return Math.max(st.sentAt[c], st.askedAt[c]) + againMs(h) * (1 << Math.min(st.asks[c], 5));
}

/** Recovery's round trip (ms): a name, an ask or a contribution sent again
 * and its answer. NACK_AGAIN_MIN_MS (a loaded host's wake-up), or 4 times
 * the smallest data round-trip when that is longer. */
export function againMs(h: Host): number {
  return Math.max(TUNING.NACK_AGAIN_MIN_MS, 4 * h.rtt.minRtt);
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
 * least `rto` ago. A `probe` (the first timeout since progress; RACK-TLP)
 * sends only the last chunk each owner lacks: its result shows, by RACK,
 * which earlier ones are lost, and a probe into a round merely slow costs
 * one packet per owner instead of the whole window again. */
export function retransmit(h: Host, st: RoundState, bankBase: number, rto = 0, probe = false): void {
  if (!st.sent) {
    const mine = myExps(h, st);
    for (const p of expsAwaited(h, st)) sendExps(h, p, st.r, mine, CTRL_EXPS_REQ);
    return;
  }
  const m = missingResults(h, st, bankBase);
  const now = h.clock.now();
  const byOwner = new Map<number, number[]>();
  for (let i = 0; i < Math.min(m, h.capacity); i++) {
    const c = h.chunkList[i];
    const o = ownerOf(st, c);
    if (o === h.rank || (!st.passive && Math.floor(c / st.K) >= st.pos[o])) continue;
    if (!st.passive && now - st.sentAt[c] < rto) continue; // in flight, not lost
    let l = byOwner.get(o);
    if (!l) byOwner.set(o, (l = []));
    l.push(c);
  }
  if (probe && !st.passive) for (const [o, list] of byOwner) byOwner.set(o, list.slice(-PROBE_CHUNKS));
  for (const [o, list] of byOwner) {
    // our contributions again (the owner may lack them), and the results
    // asked for by name: an owner that moved two rounds on answers from
    // its cache, which its program's window no longer reaches. A passive
    // member sent nothing: it only asks.
    if (!st.passive) sendAgain(h, st, o, list);
    for (let i = 0; i < list.length; i += REQ_CHUNKS) h.sendControl(o, CTRL_RESULT_REQ, st.r, 0, 0, encodeChunkList(list.slice(i, i + REQ_CHUNKS)));
    if (st.passive) h.stats.retransmits += list.length;
  }
}

/** The tail-loss probe, a poll: asks each owner, by name, for the results
 * we lack (CTRL_RESULT_REQ). An owner that has them sends them again (a
 * lost result costs one round-trip); one whose slots still wait answers
 * with whom it waits for (CTRL_STATUS), and only a member named there sends
 * its contributions again (statusFromOwner). Nothing is sent twice on a
 * guess, so a probe into a round that is merely slow (a peer descheduled
 * on a busy host) costs one small packet per owner. Returns the polls sent. */
export function probe(h: Host, st: RoundState, bankBase: number): number {
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
    h.sendControl(o, CTRL_RESULT_REQ, st.r, 0, 0, encodeChunkList(list));
    st.probedAt[o] = now;
  }
  return byOwner.size;
}

/** An owner of this round says whom its slots wait for (its answer to a
 * probe, or to a deadline's question): if it waits for us, our
 * contributions to it whose results we lack, and that are older than RACK
 * allows, were lost: send them again. */
export function statusFromOwner(h: Host, st: RoundState, owner: number, mask: bigint, payload?: Uint8Array): void {
  if (!st.sent || st.passive || owner === h.rank || st.ownerIdx[owner] < 0 || ((mask >> BigInt(h.rank)) & 1n) === 0n) return;
  if (payload && payload.length > STATUS_MASK_BYTES) return nacked(h, st, owner, h.guard.chunkList(payload.subarray(STATUS_MASK_BYTES), st.nchunks));
  const list = st.ownerChunks[owner];
  // lost by the time of the probe the owner answers (else by now): a chunk
  // sent just before the probe may still be on its way (a loaded host's
  // softirq runs late), the owner's answer says nothing of it
  const now = h.clock.now();
  const asOf = st.probedAt[owner] > 0 ? Math.min(now, st.probedAt[owner]) : now;
  let late: number[] | null = null;
  for (let k = st.lowest[owner]; k < st.pos[owner]; k++) {
    const c = list[k];
    if (!st.xdone[c] && h.rtt.lostAt(st.sentAt[c], st.tries[c], st.rackRtt[owner]) <= asOf) (late ??= []).push(c);
  }
  if (process.env.AINFTP_TRACE_RECOVERY && !late) {
    let open = 0;
    for (let k = st.lowest[owner]; k < st.pos[owner]; k++) if (!st.xdone[list[k]]) open++;
    console.error(`[trace] r${st.r} rank ${h.rank} status from o${owner} at ${(h.clock.now() - st.t0).toFixed(1)}: 0 again (${open} lack results)`);
  }
  if (!late) return;
  if (process.env.AINFTP_TRACE_RECOVERY) console.error(`[trace] r${st.r} rank ${h.rank} status from o${owner} at ${(h.clock.now() - st.t0).toFixed(1)}: ${late.length} again`);
  sendAgain(h, st, owner, late);
  // a loss the timer had to find (the probe's answer), not RACK: a timeout,
  // as the full retransmission is; a probe that finds nothing lost is not
  h.stats.timeouts++;
}

/** An owner named the chunks of ours its slots lack (nackGaps, or its
 * answer to a probe): it has our later contributions, or someone asked for
 * these results, so these were lost. Send them again, unless we did a
 * moment ago (within the reordering window: that one is on its way). */
function nacked(h: Host, st: RoundState, owner: number, chunks: number[]): void {
  const now = h.clock.now();
  const guard = h.rtt.reoWnd();
  const late: number[] = [];
  for (const c of chunks) {
    if (ownerOf(st, c) !== owner || st.xdone[c] || Math.floor(c / st.K) >= st.pos[owner] || now - st.sentAt[c] < guard) continue;
    late.push(c);
  }
  if (!late.length) return;
  // in list order, so the short chunk (the owner's last) stays last
  late.sort((a, b) => a - b);
  if (TRACE) console.error(`[trace] r${st.r} rank ${h.rank} nack from o${owner} at ${(now - st.t0).toFixed(1)}: ${late.length} again`);
  sendAgain(h, st, owner, late);
  st.nacks++;
}

/** Owner-side RACK: an open slot of ours at least RACK_BEHIND positions
 * behind one that completed lacks contributions that were lost (every
 * member sends our chunks in list order, so each member's later
 * contribution is here). Name to each member that lost some the chunks it
 * lost (CTRL_STATUS with a chunk list): it sends exactly those again. A
 * chunk is named again after againMs, doubling (the name or the resending
 * was lost). One map lookup per slot named; returns when the next gap
 * comes due (the loop wakes then). */
export function nackGaps(h: Host, st: RoundState, bankBase: number): number {
  if (!st.sent || st.passive || st.ownedDoneCount >= st.owned.length) return Infinity;
  const own = st.owned;
  for (let k = own.length - 1; k > st.ownHigh; k--) if (st.ownedDone[own[k]]) { st.ownHigh = k; break; }
  while (st.ownLow < own.length && st.ownedDone[own[st.ownLow]]) st.ownLow++;
  const upto = st.ownHigh - RACK_BEHIND;
  if (st.ownLow >= upto) return Infinity;
  const now = h.clock.now();
  const again = againMs(h);
  let next = Infinity;
  const byRank = new Map<number, number[]>();
  for (let k = st.ownLow; k < upto; k++) {
    const c = own[k];
    if (st.ownedDone[c]) continue;
    // named at once: waiting out a reordering window here costs the owner
    // another wake-up, which on a loaded host is the longest step of the
    // recovery; a packet merely reordered is on its way by the time the
    // name arrives, and its sender (nacked) sends again only what it sent
    // longer ago than its reordering window
    if (st.gapAt[c] === 0) st.gapAt[c] = now;
    const due = st.nackCount[c] ? st.nackedAt[c] + again * (1 << Math.min(st.nackCount[c] - 1, 5)) : now;
    if (due > now) {
      next = Math.min(next, due);
      continue;
    }
    lackers(h, st, bankBase, c, byRank);
    st.nackedAt[c] = now;
    if (st.nackCount[c] < 255) st.nackCount[c]++;
    next = Math.min(next, now + again * (1 << Math.min(st.nackCount[c] - 1, 5)));
  }
  st.named += sendNacks(h, st, byRank);
  return next;
}

/** Adds chunk c (ours, open) to the list of each active member its slot lacks. */
function lackers(h: Host, st: RoundState, bankBase: number, c: number, byRank: Map<number, number[]>): void {
  const slot = h.maps.slot(bankBase + c);
  const lack = st.active & h.othersMask & ~(slot.tag === st.r + 1 ? slot.seen : 0n);
  if (!lack) return;
  for (const p of h.others) {
    if (!Host.has(lack, p)) continue;
    let l = byRank.get(p);
    if (!l) byRank.set(p, (l = []));
    if (l.length < REQ_CHUNKS) l.push(c);
  }
}

function sendNacks(h: Host, st: RoundState, byRank: Map<number, number[]>): number {
  for (const [p, l] of byRank) {
    const payload = new Uint8Array(STATUS_MASK_BYTES + 4 * l.length);
    payload.set(encodeStatus(1n << BigInt(p)));
    payload.set(encodeChunkList(l), STATUS_MASK_BYTES);
    h.sendControl(p, CTRL_STATUS, st.r, 0, 0, payload);
  }
  return byRank.size;
}

/** A member asks for results of ours (CTRL_RESULT_REQ: a probe, its RACK,
 * or a passive member): send again those we have (one we sent less than
 * RESULT_FRESH_MS ago is on its way, unless the asker saw later results:
 * PROBE_BEHIND). For open slots behind one that completed (each member's
 * later contribution is here), name to each member whose contribution they
 * lack the chunks it lost: it sends them again. For open slots at the
 * front, say whom they wait for, to the asker only (CTRL_STATUS: a member
 * named there sends again what RACK's timing says is lost). A contribution
 * missing there may only be late: on a loaded host a sender's packets wait
 * in the kernel's backlog for tens of ms, and naming them made the sender
 * send its whole window again, into the same backlog. */
export function answerProbe(h: Host, st: RoundState | null, asker: number, round: number, flag: number, chunks: number[]): void {
  if (flag !== PROBE_BEHIND && flag !== PROBE_TAIL) noteAsked(h, asker, round);
  const current = !!st && round === st.r;
  const fresh = current && flag !== PROBE_BEHIND ? h.clock.now() - TUNING.RESULT_FRESH_MS : Infinity;
  for (const chunk of chunks) if (!(current && st!.resultSentAt[chunk] > fresh)) resend(h, round, chunk, asker, true);
  if (!st || !current || !st.sent || st.ownerIdx[h.rank] < 0) return;
  const bankBase = (st.r & 1) * h.cfg.chunks;
  const now = h.clock.now();
  const byRank = new Map<number, number[]>();
  const front: number[] = [];
  for (const c of chunks) {
    if (c >= st.nchunks || st.ownedDone[c] || ownerOf(st, c) !== h.rank) continue;
    if (Math.floor(c / st.K) >= st.ownHigh - RACK_BEHIND) front.push(c);
    // (a name sent within the reordering window is still on its way)
    else if (now - st.nackedAt[c] >= h.rtt.reoWnd()) {
      lackers(h, st, bankBase, c, byRank);
      st.nackedAt[c] = now;
    }
  }
  st.named += sendNacks(h, st, byRank);
  const lack = front.length ? lackingIn(h, st, bankBase, front) : 0n;
  if (lack) h.sendControl(asker, CTRL_STATUS, st.r, 0, 0, encodeStatus(lack));
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
  h.stats.packetsSent += h.net.sendGso(h.peers[o], h.port, stage, seg, list.length, lastSize);
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
    const e = h.resultRing[round % CACHE_ROUNDS];
    const at = e && e.round === round && chunk < e.at.length ? e.at[chunk] : -1;
    if (at < 0) return;
    pkt.set(e.buf.subarray(at, at + h.seg));
    markRetransmit(pkt);
  }
  h.sealData(pkt, 1);
  h.stats.packetsSent += h.net.sendGso(h.peers[rank], h.port, pkt, h.wireBytes(packetCount(pkt)), 1);
  if (probe) h.stats.probeAnswers++;
  else h.stats.resends++;
}

/** Keeps the result packets we send for CACHE_ROUNDS rounds: a member
 * that fell behind (it sat rounds out, or lost a result while we moved
 * two rounds on) asks for them after our results map's bank moved on.
 * One copy of what we send (16 MiB over 4 hosts: 2 MB a round). */
export function cacheResults(h: Host, st: RoundState, chunks: Uint32Array, n: number): void {
  const slot = st.r % CACHE_ROUNDS;
  let e = h.resultRing[slot];
  if (!e || e.round !== st.r) {
    const bytes = st.owned.length * h.seg;
    const buf = e && e.buf.length >= bytes ? e.buf : new Uint8Array(bytes);
    e = h.resultRing[slot] = { round: st.r, buf, at: (e?.at ?? new Int32Array(h.capacity)).fill(-1), used: 0 };
  }
  if (e.used + n * h.seg > e.buf.length) return;
  // the batch's packets lie one after another: one copy
  e.buf.set(h.resPkts.subarray(0, n * h.seg), e.used);
  for (let i = 0; i < n; i++) e.at[chunks[i]] = e.used + i * h.seg;
  e.used += n * h.seg;
}
