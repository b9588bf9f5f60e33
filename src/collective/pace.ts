// The window on a slow link. The window (sender.ts pump) bounds the chunks
// in flight per owner by what a receiver's queue holds: on a fast link,
// where the CPU is the bottleneck, that is what keeps every core busy
// (16 MiB unshaped: 48 chunks per owner took 33 ms a round, 24 took 36). On
// a link slower than the hosts, the same window only queues: at 1 Gbit/s, 48
// chunks to each of 3 owners is 1.3 MB, 10 ms of queue at our own egress,
// which every result and control packet behind it waits out (8 bits, 16 MiB:
// 24 chunks took 2-5 ms less a round, and less CPU).
//
// So the window is capped by our measured egress rate: no more chunks in
// flight than our link drains in QUEUE_MS. The rate is a round's data bytes
// over its time from plan to end, the largest of the last RATE_ROUNDS large
// rounds (a max filter, as BBR keeps its bottleneck bandwidth), and every
// PROBE_EVERY-th large round probes with a cap PROBE_GAIN times larger (as
// BBR's gain cycle): a rate the cap itself held down is measured higher
// there, and the max filter keeps it (a cap never ratchets down). Probing
// at the full window instead made every 8th shaped round 3-5 ms slower.
// Small rounds (1 MiB: 15 chunks per owner) never reach the cap.

export const PACE = {
  /** A round's in-flight contributions drain within this at the measured rate (ms). */
  QUEUE_MS: 6,
  /** Rounds that sent fewer data bytes do not measure the rate (their time is wake-ups). */
  RATE_MIN_BYTES: 2 << 20,
  /** The max filter's length, in measured rounds. */
  RATE_ROUNDS: 16,
  /** Every this many large rounds, one probes: its cap PROBE_GAIN times the rate's. */
  PROBE_EVERY: 8,
  PROBE_GAIN: 1.25,
  /** The cap never goes below this many chunks per owner. */
  FLOOR: 16,
  /** false: no cap (a test compares). */
  enabled: true,
};

export class EgressPace {
  private readonly rates: number[] = [];
  private large = 0;

  /** A round sent `bytes` of data in `ms` from its plan to its end. */
  note(bytes: number, ms: number): void {
    if (bytes < PACE.RATE_MIN_BYTES || !(ms > 0)) return;
    this.rates.push(bytes / ms);
    if (this.rates.length > PACE.RATE_ROUNDS) this.rates.shift();
  }

  /** Bytes per ms: the largest recent measurement (0: none yet). */
  rate(): number {
    return this.rates.length ? Math.max(...this.rates) : 0;
  }

  /** Whether our link is slower than the hosts: a rate is known (from
   * large rounds) and the window of `full` chunks per owner to `owners`
   * owners in packets of `seg` bytes would be capped by it. Counts no
   * round (capFor does). */
  linkBound(owners: number, seg: number, full: number): boolean {
    if (!PACE.enabled || owners < 1) return false;
    const rate = this.rate();
    return rate > 0 && Math.max(PACE.FLOOR, Math.floor((rate * PACE.QUEUE_MS) / (owners * seg))) < full;
  }

  /** The cap on chunks in flight per owner for a round about to send
   * `roundBytes` of data to `owners` owners in packets of `seg` bytes
   * (Infinity: none; counts the large rounds for the probes). */
  capFor(roundBytes: number, owners: number, seg: number): number {
    if (!PACE.enabled || roundBytes < PACE.RATE_MIN_BYTES || owners < 1) return Infinity;
    const probe = this.large++ % PACE.PROBE_EVERY === 0;
    const rate = this.rate();
    if (rate === 0) return Infinity;
    return Math.max(PACE.FLOOR, Math.floor(((probe ? PACE.PROBE_GAIN : 1) * rate * PACE.QUEUE_MS) / (owners * seg)));
  }
}
