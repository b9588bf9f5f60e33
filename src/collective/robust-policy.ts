// Robust aggregation as an owner policy: the program copies every
// contribution to our chunks into the contribs ring instead of summing
// them, and the owner combines each completed chunk's contributions in
// userspace (src/sentry/robust.ts), publishes the result in its results
// map and sends it like a summed one.
import { PKT_RESULT, SIZEOF, writeHeader } from "../abi.ts";
import { cChunkExps, cQuantize } from "../../native/quant.ts";
import { RobustAggregator, robustKey, type AggregateMode, type RobustOptions } from "../sentry/robust.ts";
import { decodeContribRecord, HDR, REC_VALUES, type ContribRecord } from "./control.ts";
import type { Host } from "./host.ts";
import { sendResults } from "./owner.ts";
import type { EventRingPort } from "./ports.ts";
import { cacheResults } from "./recovery.ts";
import type { Contribution, ContributionsByChunk, RoundState } from "./round-state.ts";

export class RobustPolicy {
  readonly aggregator: RobustAggregator;
  /** Contributions of rounds we have not started yet. */
  private early = new Map<number, ContributionsByChunk>();
  private rec: ContribRecord = { round: 0, chunk: 0, rank: 0, count: 0, exp: 0 };

  constructor(mode: Exclude<AggregateMode, "sum">, o: RobustOptions | undefined, private readonly contribs: EventRingPort) {
    this.aggregator = new RobustAggregator(mode, o);
    while (contribs.pollRaw(0) > 0); // a previous job's records
  }

  /** A round's store of contributions (some may have come before it). */
  recsFor(round: number): ContributionsByChunk {
    return this.early.get(round) ?? new Map();
  }

  /** Files the contributions the program copied to the ring (one per rank
   * and chunk; a retransmission's copy is a duplicate). */
  drain(h: Host, st: RoundState | null): void {
    const size = SIZEOF.ainftp_contrib_rec;
    for (let n; (n = this.contribs.pollRaw(0)) > 0; ) {
      const b = this.contribs.bytes;
      for (let i = 0; i < n; i++) {
        const { round, chunk, rank, count: raw, exp } = decodeContribRecord(b, i * size, this.rec);
        const count = Math.min(raw, h.chunkElems);
        const byChunk = this.storeFor(h, st, round);
        if (!byChunk) continue; // an old round's retransmission
        let ranks = byChunk.get(chunk);
        if (!ranks) byChunk.set(chunk, (ranks = new Map()));
        const at = i * size + REC_VALUES;
        if (!ranks.has(rank)) ranks.set(rank, { exp, q: new Int16Array(b.buffer.slice(at, at + 2 * count)) });
      }
    }
    if (st) for (const k of this.early.keys()) if (k <= st.r) this.early.delete(k);
  }

  private storeFor(h: Host, st: RoundState | null, round: number): ContributionsByChunk | null {
    if (st && round === st.r) return st.recs;
    if (round <= (st?.r ?? h.nextRound - 1)) return null;
    let m = this.early.get(round);
    if (!m) this.early.set(round, (m = new Map()));
    return m;
  }

  /** Combine each completed chunk's contributions (ours from x, the
   * others' from the ring), publish the result in our results map and send
   * it to every member. */
  finish(h: Host, st: RoundState, bankBase: number, chunks: Uint32Array): void {
    this.drain(h, st);
    const E = h.chunkElems;
    const out = new Float32Array(E);
    const exp = new Int8Array(1);
    const pkts = new DataView(h.resPkts.buffer);
    chunks.forEach((c, i) => {
      const count = st.counts[c];
      const recs: Contribution[] = [];
      const ranks = [h.rank];
      for (const [rank, rec] of st.recs.get(c) ?? []) {
        if (rank === h.rank || rank >= h.size || rec.q.length !== count) continue;
        recs.push(rec);
        ranks.push(rank);
      }
      st.recs.delete(c);
      const agg = out.subarray(0, count);
      this.aggregator.combineQuantized(robustKey(c, count), st.x.subarray(c * E, c * E + count), recs, ranks, agg);
      cChunkExps(agg, count, exp);
      const entry = h.maps.resultEntry(bankBase + c);
      cQuantize(agg, exp[0], entry.v.subarray(0, count), 0);
      entry.publish(st.r + 1, count, ranks.length, exp[0]);
      writeHeader(pkts, i * h.seg, {
        type: PKT_RESULT, jobId: h.job, round: st.r, chunk: c, rank: h.rank, count, exp: exp[0], contributors: ranks.length,
      });
      h.resPkts.set(new Uint8Array(entry.v.buffer, entry.v.byteOffset, 2 * count), i * h.seg + HDR);
    });
    st.ownedDoneCount += chunks.length;
    cacheResults(h, st, chunks, chunks.length);
    sendResults(h, st, chunks, chunks.length);
  }

  close(): void {
    this.contribs.close();
  }
}
