// When to send a contribution again: from round-trips measured on this very
// job, as TCP does (RFC 6298: srtt, rttvar, RTO = srtt + 4·rttvar), with a
// floor suited to a datacenter's RTTs instead of TCP's 200 ms (or 1 s), and
// RACK's reordering tolerance (RFC 8985): a chunk is lost when a chunk sent
// after it to the same owner has its result and the chunk is older than the
// latest round-trip plus a reordering window (a quarter of the minimum RTT,
// widened each time a retransmission proves spurious). A round-trip here is
// from a chunk's first sending to its result's arrival: the owner answers
// only once every active member's contribution is in, so it holds the skew
// between the senders and the wake-up batching too, which is what a timer
// must wait out. Pure: no clock, no socket (the loop passes the times).

/** No RTO (nor probe) below this (ms). An owner finishing a batch of slots,
 * a wake-up batch, a descheduled peer on a busy 2-core host stall results
 * for many ms with nothing lost. Measured here (2 cores shared by 4 ranks
 * and other jobs): a 2 ms floor fired in most clean 16 MiB rounds (median
 * 206-693 ms against 137-166 ms), and 10 and 25 ms floors still fired on
 * the clean networks of test/collective.test.ts (which asserts none), so
 * the timer keeps the old 50 ms floor for the full retransmission (it adapts upward: a slow
 * link, barriers); the fast paths under loss are RACK (retransmitGaps) and
 * the probe (PTO_FLOOR_MS). */
export const RTO_FLOOR_MS = 50;
/** The tail-loss probe's floor. A probe only asks (recovery.ts probe: the
 * owners resend what they have, and name the members whose contributions
 * their open slots lack), so a probe into a stall costs a small packet per
 * owner, not a window of data: it can fire at a datacenter's scale. 4 ms:
 * a loaded host's wake-up batching; measured under 3% loss + 2%
 * duplication (README, "Loss"). The full retransmission keeps RTO_FLOOR_MS. */
export const PTO_FLOOR_MS = 4;

/** A sample counts as at most this many srtt (plus the floor); see sample(). */
export const SAMPLE_CLAMP = 4;
/** The reordering window is at least this (ms). */
export const REO_FLOOR_MS = 0.5;
/** RFC 8985's reo_wnd_mult stops here: at most 16 quarter-RTTs. */
export const REO_MULT_MAX = 16;
/** A spurious-retransmission verdict is forgotten after this many clean rounds (RFC 8985: 16 recoveries). */
export const REO_DECAY_ROUNDS = 16;
/** Samples of the minimum RTT are kept over this many rounds (a windowed min, as BBR and RACK keep it). */
export const MIN_RTT_ROUNDS = 64;

export class RttEstimator {
  /** Smoothed round-trip (ms); null before the first sample. */
  srtt: number | null = null;
  rttvar = 0;
  /** The latest sample (RACK's rack.rtt). */
  latest = 0;
  samples = 0;
  /** Retransmissions whose result came back too soon to be their own. */
  spurious = 0;
  private reoMult = 1;
  private cleanRounds = 0;
  private mins: number[] = [];
  private roundMin = Infinity;

  /** One round-trip (ms), of a chunk sent once (Karn: never of a retransmitted one).
   * A sample above SAMPLE_CLAMP·srtt counts as that much: a result waits for
   * the slowest member's contribution, so one member's loss (or a peer still
   * finishing the last round) shows up in everyone's samples; unclamped,
   * one stalled round lifts the RTO to its cap for the rounds after. */
  sample(ms: number): void {
    if (!(ms >= 0) || !Number.isFinite(ms)) return;
    if (this.srtt !== null) ms = Math.min(ms, SAMPLE_CLAMP * this.srtt + PTO_FLOOR_MS);
    this.samples++;
    this.latest = ms;
    if (ms < this.roundMin) this.roundMin = ms;
    if (this.srtt === null) {
      this.srtt = ms;
      this.rttvar = ms / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - ms);
      this.srtt = 0.875 * this.srtt + 0.125 * ms;
    }
  }

  /** The smallest round-trip of the last MIN_RTT_ROUNDS rounds (ms); 0 before any. */
  get minRtt(): number {
    const m = Math.min(this.roundMin, ...this.mins);
    return Number.isFinite(m) ? m : 0;
  }

  /** The retransmission timeout (ms): `initial` before any sample, else
   * srtt + 4·rttvar within [RTO_FLOOR_MS, cap]. */
  rto(initial: number, cap: number): number {
    if (this.srtt === null) return initial;
    return Math.min(cap, Math.max(RTO_FLOOR_MS, this.srtt + 4 * this.rttvar));
  }

  /** The tail-loss probe's timeout (RFC 8985 7.2: 2·srtt; here of the
   * smaller of srtt and the latest sample, which falls back at once after a
   * round whose results waited on losses), within [PTO_FLOOR_MS, rto]. */
  pto(initial: number, cap: number): number {
    if (this.srtt === null) return initial;
    return Math.min(this.rto(initial, cap), Math.max(PTO_FLOOR_MS, 2 * Math.min(this.srtt, this.latest)));
  }

  /** RACK's reordering window (ms). */
  reoWnd(): number {
    return Math.max(REO_FLOOR_MS, (this.reoMult * this.minRtt) / 4);
  }

  /** Whether a chunk sent at `sentAt` (and not since) is lost at `now`,
   * given that a chunk sent after it to the same owner has its result.
   * `tries` doubles the wait for a chunk sent several times already.
   * RACK's rtt is the round-trip of the latest-sent chunk whose result came
   * (`rackRtt`, per owner: RoundState.rackRtt); without one, the estimate. */
  lost(sentAt: number, now: number, tries: number): boolean {
    return now >= this.lostAt(sentAt, tries);
  }

  /** When a chunk sent at `sentAt` (and not since), with a later chunk's
   * result in, counts as lost (RACK's reorder timer, RFC 8985 6.3: the loop
   * wakes then instead of waiting for the next packet or the timer). */
  lostAt(sentAt: number, tries: number, rackRtt = 0): number {
    const rtt = rackRtt > 0 ? rackRtt : this.srtt === null ? this.latest : Math.max(this.latest, this.srtt);
    return sentAt + (rtt + this.reoWnd()) * (1 << Math.min(tries, 5));
  }

  /** A result came back `sinceRetransmit` ms after we sent its chunk again:
   * sooner than half the minimum round-trip, it answered the first sending,
   * which was only late (reordered), not lost. Widen the window. */
  resultAfterRetransmit(sinceRetransmit: number): void {
    if (this.minRtt > 0 && sinceRetransmit < this.minRtt / 2) {
      this.spurious++;
      this.reoMult = Math.min(REO_MULT_MAX, this.reoMult + 1);
      this.cleanRounds = 0;
    }
  }

  /** A round ended: roll the minimum's window; after REO_DECAY_ROUNDS rounds without a spurious retransmission, narrow the window again. */
  endRound(): void {
    if (Number.isFinite(this.roundMin)) {
      this.mins.push(this.roundMin);
      if (this.mins.length > MIN_RTT_ROUNDS) this.mins.shift();
    }
    this.roundMin = Infinity;
    if (++this.cleanRounds >= REO_DECAY_ROUNDS) {
      this.reoMult = 1;
      this.cleanRounds = 0;
    }
  }
}
