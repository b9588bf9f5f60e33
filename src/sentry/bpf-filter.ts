// The Sentry's filter for `ainftp sentry eval`, decided by the XDP program
// itself: each worker's quantized contribution goes through
// BPF_PROG_TEST_RUN as a contribution packet, after the band SentryKeeper
// keeps for the chunk was written into the program's gate map; the slot's
// seen and rejected bitmaps and the energies the program recorded then go
// back to the keeper, as the live node does it. Needs root (it loads the
// program; nothing is attached).
import { CFG_SENTRY, MAX_ELEMS, MAX_WORKERS, PKT_CONTRIB, SLOT_COMPLETE, allMembers, type JobConfig } from "../abi.ts";
import { AinftpError } from "../errors.ts";
import { datagram, frame } from "../packet.ts";
import { ReflexObject } from "../reflex.ts";
import type { Filter } from "./eval/train.ts";
import { CLOSED_BAND, SentryKeeper, gateIndex, type KeeperOptions } from "./keeper.ts";
import type { GateView } from "./stats.ts";

const XDP_DROP = 1;
const EVAL_JOB = 0x5e17e7;

export interface BpfFilterOptions {
  workers: number;
  /** Elements of a full chunk, the job's chunk size (default 720, as
   * runEval); a shorter chunk (a tail) has a gate of its own. */
  chunkElems?: number;
  /** Job id the packets carry (any; the program only checks it matches). */
  jobId?: number;
  /** Protocol round of the eval's round 0: round r is sent as firstRound + r (default 1). */
  firstRound?: number;
  keeper?: KeeperOptions;
}

/** Whether a bit of a u64 bitmap is set. */
const has = (mask: bigint, bit: number) => ((mask >> BigInt(bit)) & 1n) === 1n;

export class BpfFilter implements Disposable {
  readonly workers: number;
  readonly keeper: SentryKeeper;
  private readonly reflex: ReflexObject;
  private readonly owned: boolean;
  readonly firstRound: number;
  private cfg: JobConfig;
  /** Elements per chunk, from the last contributions seen (for view()). */
  private readonly lengths = new Map<number, number>();

  /** A filter on an already loaded program (its maps are reset: one filter
   * per program at a time). close() leaves the program loaded. */
  constructor(reflex: ReflexObject, o: BpfFilterOptions, owned = false) {
    if (!(Number.isInteger(o.workers) && o.workers >= 1 && o.workers <= MAX_WORKERS))
      throw new RangeError(`workers must be in 1..${MAX_WORKERS}, got ${o.workers}`);
    this.reflex = reflex;
    this.owned = owned;
    this.workers = o.workers;
    this.firstRound = o.firstRound ?? 1;
    this.keeper = new SentryKeeper(o.workers, o.keeper);
    const chunkElems = o.chunkElems ?? 720;
    if (!(Number.isInteger(chunkElems) && chunkElems >= 1 && chunkElems <= MAX_ELEMS)) throw new RangeError(`chunkElems must be in 1..${MAX_ELEMS}, got ${chunkElems}`);
    this.cfg = {
      jobId: o.jobId ?? EVAL_JOB, roundBase: this.firstRound, memberMask: allMembers(o.workers), members: o.workers,
      chunkElems, chunks: reflex.chunks, batch: 1, ownedChunks: reflex.chunks, flags: CFG_SENTRY,
    };
    reflex.resetState();
    reflex.setConfig(this.cfg);
  }

  /** Loads the program for `chunks` chunks and puts a filter on it; close()
   * unloads it. Not root: an AinftpError that suggests the reference filter. */
  static async load(o: BpfFilterOptions & { chunks: number }): Promise<BpfFilter> {
    return new BpfFilter(await loadForEval(o.chunks), o, true);
  }

  decide: Filter = (round, contributions, info) => {
    const n = this.workers;
    if (contributions.length !== n) throw new RangeError(`${contributions.length} contributions for ${n} workers`);
    const c = info.chunk;
    if (c >= this.reflex.chunks) throw new RangeError(`chunk ${c} beyond the ${this.reflex.chunks} the program was loaded for`);
    const len = contributions[0].length;
    if (len > this.cfg.chunkElems) throw new RangeError(`chunks of ${len} elements for a job of ${this.cfg.chunkElems}`);
    this.lengths.set(c, len);
    const gate = gateIndex(c, len !== this.cfg.chunkElems);

    // The window moves with the rounds (round r lives in bank r & 1, so a
    // slot is reused every other round); quarantined workers leave the
    // member set, and the program drops their packets as not_member.
    const r = this.firstRound + round;
    if (r < this.cfg.roundBase) throw new RangeError(`round ${round} comes after a later one`);
    const members = allMembers(n) & ~this.keeper.quarantinedMask(r);
    if (members === 0n) return new Array<boolean>(n).fill(false);
    if (r !== this.cfg.roundBase || members !== this.cfg.memberMask) {
      this.cfg = { ...this.cfg, roundBase: r, memberMask: members };
      this.reflex.setConfig(this.cfg);
    }
    const [lo, hi] = this.keeper.band(gate);
    const gates = this.reflex.gates();
    gates[2 * gate] = lo;
    gates[2 * gate + 1] = hi;

    for (let w = 0; w < n; w++) {
      const packet = frame(datagram({ type: PKT_CONTRIB, jobId: this.cfg.jobId, round: r, chunk: c, rank: w, exp: info.exp }, contributions[w]));
      const { action } = this.reflex.testRun(packet);
      if (action !== XDP_DROP) throw new AinftpError("sentry eval", `round ${r} chunk ${c}: the program passed rank ${w}'s contribution (action ${action}) instead of consuming it`);
    }
    const index = (r & 1) * this.reflex.chunks + c;
    const slot = this.reflex.slot(index);
    if (slot.tag !== r + 1 || slot.state !== SLOT_COMPLETE)
      throw new AinftpError("sentry eval", `round ${r} chunk ${c}: the slot did not complete (tag ${slot.tag}, state ${slot.state}, seen 0x${slot.seen.toString(16)})`, {
        hint: `counters: ${JSON.stringify(this.reflex.counters())}`,
      });
    const energy = Int16Array.from(this.reflex.obs(index).energy.subarray(0, n));
    this.keeper.observe(r, gate, slot.seen, slot.rejected, energy);
    return Array.from({ length: n }, (_, w) => has(slot.seen, w) && !has(slot.rejected, w));
  };

  /** The band the program applies to a chunk, as the adaptive attacks read
   * a gate: in ln of the chunk's real sum of squares. An energy E is 16 log2
   * of the mean square, so ln(sum of squares) = ln(len) + E ln2 / 16. */
  view = (chunk: number): GateView | null => {
    const len = this.lengths.get(chunk);
    if (!len) return null;
    const gate = gateIndex(chunk, len !== this.cfg.chunkElems);
    const [lo, hi] = this.keeper.band(gate);
    if (lo === CLOSED_BAND[0] && hi === CLOSED_BAND[1]) return null;
    const k = Math.LN2 / 16;
    const phase = this.keeper.gate(gate).phase;
    return {
      phase, log: true, center: Math.log(len) + k * (lo + hi) / 2, sigma: (k * (hi - lo)) / (2 * this.keeper.z),
      lo: len * 2 ** (lo / 16), hi: len * 2 ** (hi / 16),
    };
  };

  close(): void {
    if (this.owned) this.reflex.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Loads the XDP program for the eval; a privilege failure says what to do. */
export async function loadForEval(chunks: number): Promise<ReflexObject> {
  try {
    return await ReflexObject.load({ chunks });
  } catch (e) {
    if (e instanceof AinftpError && (e.errno === 1 || e.errno === 13))
      throw new AinftpError("sentry eval", "the inline filter runs the XDP program through BPF_PROG_TEST_RUN, which needs root", {
        errno: e.errno,
        hint: "run as root (sudo ainftp sentry eval …), or add --reference to use the pure-TypeScript filter instead",
      });
    throw e;
  }
}
