// The owner's side: finish the slots the program completed (our own chunk
// added, requantized, published and sent to every member), through the
// policies when they are on (sentry: judge first; robust: combine in
// userspace), and close open slots at the round's deadline.
import { finishBatch } from "../../native/collective.ts";
import { AinftpError } from "../errors.ts";
import { HDR } from "./control.ts";
import { noteResult } from "./early.ts";
import type { Host } from "./host.ts";
import { cacheResults, redundant } from "./recovery.ts";
import type { RoundState } from "./round-state.ts";

/** Owner's step for completed slots: requantize with our own chunk, store,
 * and send the results to every peer. */
export function finish(h: Host, st: RoundState, bankBase: number, chunks: Uint32Array): void {
  shortChunkLast(h, st, chunks);
  if (h.sentry) h.sentry.judge(h, st, bankBase, chunks);
  if (h.robust) return h.robust.finish(h, st, bankBase, chunks);
  const n = finishBatch(st.finishArgs!, chunks, chunks.length);
  if (n < 0) throw new AinftpError(`round ${st.r}`, "finishing a slot failed (bad count)");
  st.ownedDoneCount += n;
  if (st.early) for (let i = 0; i < n; i++) noteResult(st, chunks[i]);
  cacheResults(h, st, chunks, n);
  sendResults(h, st, chunks, n);
}

/** GSO wants every segment but the last one full: the short chunk goes last. */
function shortChunkLast(h: Host, st: RoundState, chunks: Uint32Array): void {
  const short = st.counts[st.nchunks - 1] < h.chunkElems ? st.nchunks - 1 : -1;
  if (short < 0) return;
  const at = chunks.indexOf(short);
  if (at >= 0 && at !== chunks.length - 1) (chunks[at] = chunks[chunks.length - 1]), (chunks[chunks.length - 1] = short);
}

/** Sends the batch's n result packets (in Host.resPkts) to every peer. */
export function sendResults(h: Host, st: RoundState, chunks: Uint32Array, n: number): void {
  const lastSize = h.wireBytes(st.counts[chunks[chunks.length - 1]]);
  h.sealData(h.resPkts, n);
  const copies = redundant(h, st) ? 2 : 1;
  for (const p of h.others) h.sendData(p, h.resPkts, n, lastSize, copies);
  const now = h.clock.now();
  for (let i = 0; i < n; i++) st.resultSentAt[chunks[i]] = now;
}

/** Whether our open slots have made no progress for the owner's grace. */
export function ownerDeadlinePassed(st: RoundState, now: number): boolean {
  return st.sent && !st.closedAtDeadline && st.ownedDoneCount < st.owned.length && now >= st.lastProgress + st.ownerGrace;
}

/** The deadline: close our open slots with the contributions present (the
 * program completes them and raises their events). */
export function closeAtDeadline(h: Host, st: RoundState): void {
  st.closedAtDeadline = true;
  const open: number[] = [];
  for (const c of st.owned) if (!st.ownedDone[c]) open.push(c);
  if (open.length) {
    h.maps.closeSlots(st.r, open, { force: true, rank: h.rank, jobId: h.job, srcAddr: h.peers[h.rank] });
    h.stats.deadlineCloses += open.length;
  }
}

/** Members whose contributions our slots wait for in round r: the others,
 * less those the sentry holds in quarantine. */
export function expectedMask(h: Host, r: number): bigint {
  return h.sentry ? h.sentry.expectedMask(h, r) : h.othersMask;
}

/** Slots of ours that completed before we had the plan: finish them now. */
export function finishPending(h: Host, st: RoundState, bankBase: number): void {
  const pending = st.pending.filter((c) => st.ownerIdx[h.rank] === c % st.K);
  if (pending.length) finish(h, st, bankBase, Uint32Array.from(pending));
  st.pending = [];
}
