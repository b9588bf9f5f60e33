// The userspace half of the inline filter, shared by the node (an owner's
// chunks) and `ainftp sentry eval`: a gate per chunk over the energies the XDP
// program records (src/sentry/energy.ts: 16 * log2 of the mean square, so a
// scaling is an offset and the honest spread is near Gaussian), the band each
// gate gives the program, and strikes and quarantine per worker.
//
// Per chunk and round, once its slot completed:
//   - calibrating gate: the band was closed (everything rejected, the result
//     is the owner's own chunk), and every energy is recorded unjudged;
//   - otherwise accepted energies are pushed (winsorized, see stats.ts);
//   - when the next round shows up, a worker that had more than
//     `strikeShare` of its contributions of the round rejected gets a strike
//     (a 3.5 sigma gate still drops an honest contribution now and then; an
//     attacker loses nearly all of them);
//   - a band that rejected more than half of the live workers is stale, not
//     surrounded by attackers (fewer than half by assumption): it recalibrates.
import { ENERGY_ZERO } from "../abi.ts";
import { Gate, MAD_SCALE, median, Strikes, type GateOptions, type StrikesOptions } from "./stats.ts";

/** The program's gate of a chunk: full chunks and short ones (a call's
 * tail, a barrier) have gates of their own, their energies differ. */
export function gateIndex(chunk: number, short: boolean): number {
  return 2 * chunk + (short ? 1 : 0);
}

/** A band no energy reaches: the program rejects everything (calibration). */
export const CLOSED_BAND: readonly [number, number] = [2 ** 31 - 2, 2 ** 31 - 1];
/** lo >= hi: no gate, the program accepts everything (the sentry off for a chunk). */
export const OPEN_BAND: readonly [number, number] = [0, 0];

/**
 * The honest spread of energies around their chunk's center, pooled over
 * every chunk of a kind (full or short). A chunk's own gate sees N - 1
 * energies a round, far too few for a sigma early on (three values gave gates
 * so wide that a ×-10 attacker passed); the spread itself (sampling noise plus
 * how much workers differ) is much the same from chunk to chunk. Robust: MAD
 * of the last WINDOW deviations of accepted energies.
 */
class PooledSpread {
  static readonly WINDOW = 512;
  private readonly devs: number[] = [];
  private next = 0;
  private cached: number | null = null;

  push(d: number): void {
    if (this.devs.length < PooledSpread.WINDOW) this.devs.push(d);
    else this.devs[this.next++ % PooledSpread.WINDOW] = d;
    this.cached = null;
  }

  /** sigma estimate, or null with fewer than 8 deviations. */
  sigma(): number | null {
    if (this.devs.length < 8) return null;
    this.cached ??= MAD_SCALE * median(this.devs.map(Math.abs));
    return this.cached;
  }
}

export interface KeeperOptions {
  /** z threshold of the gate, both sides (default 3.5). */
  z?: number;
  /** Share of a worker's contributions in a round that must be rejected for
   * a strike (default 0.25). */
  strikeShare?: number;
  /** How long a quarantine lasts before the worker is re-admitted (default 5 minutes). */
  coolDownMs?: number;
  gate?: GateOptions;
  strikes?: StrikesOptions;
}

export interface WorkerStatus {
  rank: number;
  strikes: number;
  quarantined: boolean;
}

export interface KeeperStatus {
  z: number;
  round: number;
  workers: WorkerStatus[];
  gates: { chunks: number; calibrating: number; warmup: number; steady: number; medianLo: number | null; medianHi: number | null };
}

export class SentryKeeper {
  readonly z: number;
  private readonly gates = new Map<number, Gate>();
  private readonly gateOptions: GateOptions;
  readonly strikes: Strikes;
  private lastRound = 0;
  readonly strikeShare: number;
  private readonly spread = [new PooledSpread(), new PooledSpread()]; // full, short
  private readonly minSigma: number;
  private readonly coolDownMs: number;
  /** When each quarantined worker was quarantined (ms, monotonic). */
  private readonly since = new Map<number, number>();
  /** The round being observed: per worker, contributions seen and rejected. */
  private open = { round: -1, seen: [] as number[], rejected: [] as number[] };

  constructor(readonly members: number, o: KeeperOptions = {}) {
    this.z = o.z ?? 3.5;
    this.strikeShare = o.strikeShare ?? 0.25;
    // energies are already logs (in 1/16 bits); sigma at least half a bit
    // (8 units: what sampling 16 elements alone spreads a mean square by),
    // so a gate calibrated on a few close values is not too narrow; forget
    // with a half-life of 50 values, as gradient norms fall during training;
    // one round of the other workers' energies calibrates a gate
    this.gateOptions = { z: this.z, log: false, minSigma: 8, halfLife: 50, calibration: Math.max(1, Math.min(5, members - 1)), ...o.gate };
    // a quarantine lasts coolDownMs (default 5 minutes) unless an operator
    // re-admits earlier (ainftp sentry readmit): time, not rounds, since a
    // round takes milliseconds in one job and seconds in another, and a node
    // that poisoned three rounds in ten should not be back within seconds
    this.strikes = new Strikes({ coolDown: Infinity, ...o.strikes });
    this.coolDownMs = o.coolDownMs ?? 300_000;
    this.minSigma = this.gateOptions.minSigma ?? 8;
  }

  /** The gate at index `chunk` (gateIndex(chunk, short) for the program's map). */
  gate(chunk: number): Gate {
    let g = this.gates.get(chunk);
    if (!g) this.gates.set(chunk, (g = new Gate(this.gateOptions)));
    return g;
  }

  /** The band the program should apply to chunk's next contributions: the
   * chunk's center, ± z times the pooled spread of its kind (the chunk's own
   * sigma until the pool has enough values). */
  band(chunk: number): readonly [number, number] {
    const v = this.gate(chunk).view();
    if (v.phase === "calibrating") return CLOSED_BAND;
    const pooled = this.spread[chunk & 1].sigma();
    const sigma = pooled === null ? v.sigma : Math.max(pooled, this.minSigma);
    let lo = Math.max(-(2 ** 31), Math.ceil(v.center - this.z * sigma));
    let hi = Math.min(2 ** 31 - 1, Math.floor(v.center + this.z * sigma));
    if (!Number.isFinite(lo)) lo = -(2 ** 31);
    if (!Number.isFinite(hi)) hi = 2 ** 31 - 1;
    return hi > lo ? [lo, hi] : [lo, lo + 1];
  }

  /** Whether the band of chunk rejects energy (the program's own rule). */
  static rejects(band: readonly [number, number], energy: number): boolean {
    return band[0] < band[1] && (energy < band[0] || energy > band[1]);
  }

  /**
   * A slot of `round` completed. `seen` are the ranks whose contribution
   * reached the program, `rejected` those it dropped, `energy` the recorded
   * energies (indexed by rank). Returns the ranks quarantined by this round.
   */
  observe(round: number, chunk: number, seen: bigint, rejected: bigint, energy: ArrayLike<number>): number[] {
    const quarantined = this.closeRounds(round);
    if (round > this.open.round) this.open = { round, seen: new Array(this.members).fill(0), rejected: new Array(this.members).fill(0) };
    this.lastRound = Math.max(this.lastRound, round);
    const g = this.gate(chunk);
    const live: number[] = [];
    for (let w = 0; w < this.members; w++) if ((seen >> BigInt(w)) & 1n && !this.strikes.quarantined(w, round)) live.push(w);
    const isRejected = (w: number) => ((rejected >> BigInt(w)) & 1n) === 1n;
    const finite = (w: number) => energy[w] !== ENERGY_ZERO;
    const spread = this.spread[chunk & 1];
    const calibrate = () => {
      const xs = live.filter(finite).map((w) => energy[w]);
      g.record(xs);
      if (g.phase !== "calibrating") {
        const c = g.view().center;
        for (const x of xs) spread.push(x - c);
      }
    };
    if (g.phase === "calibrating") {
      calibrate();
      return quarantined;
    }
    const out = live.filter(isRejected);
    if (out.length * 2 > live.length) {
      g.reset(); // stale: the honest majority moved, not an attack
      calibrate();
      return quarantined;
    }
    for (const w of live)
      if (!isRejected(w) && finite(w)) {
        spread.push(energy[w] - g.view().center);
        g.push(energy[w]);
      }
    if (round === this.open.round)
      for (const w of live) {
        this.open.seen[w]++;
        if (isRejected(w)) this.open.rejected[w]++;
      }
    return quarantined;
  }

  /** Strikes for the round before `round`, once: workers that lost more
   * than strikeShare of their judged contributions. Returns those quarantined. */
  private closeRounds(round: number): number[] {
    const o = this.open;
    if (o.round < 0 || round <= o.round) return [];
    const out: number[] = [];
    for (let w = 0; w < this.members; w++)
      if (o.seen[w] > 0 && o.rejected[w] > this.strikeShare * o.seen[w] && this.strikes.strike(w, o.round)) {
        out.push(w);
        this.since.set(w, performance.now());
      }
    this.open = { round, seen: new Array(this.members).fill(0), rejected: new Array(this.members).fill(0) };
    return out;
  }

  /** Ranks quarantined in round (a cool-down that ended re-admits); closes
   * the rounds before it. */
  quarantinedMask(round: number): bigint {
    this.closeRounds(round);
    for (const [w, at] of this.since) if (performance.now() - at >= this.coolDownMs) this.readmit(w);
    let m = 0n;
    for (let w = 0; w < this.members; w++) if (this.strikes.quarantined(w, round)) m |= 1n << BigInt(w);
    return m;
  }

  readmit(rank: number): void {
    this.strikes.readmit(rank);
    this.since.delete(rank);
  }

  status(): KeeperStatus {
    const r = this.lastRound;
    const phases = { calibrating: 0, warmup: 0, steady: 0 };
    const los: number[] = [];
    const his: number[] = [];
    for (const [chunk, g] of this.gates) {
      phases[g.phase]++;
      if (g.phase !== "calibrating") {
        const [lo, hi] = this.band(chunk);
        los.push(lo);
        his.push(hi);
      }
    }
    const mid = (xs: number[]) => (xs.length ? xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)] : null);
    return {
      z: this.z,
      round: r,
      workers: Array.from({ length: this.members }, (_, rank) => ({
        rank,
        strikes: this.strikes.count(rank, r), quarantined: this.strikes.quarantined(rank, r),
      })),
      gates: { chunks: this.gates.size, ...phases, medianLo: mid(los), medianHi: mid(his) },
    };
  }
}
