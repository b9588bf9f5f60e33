// The training loop of `ainftp sentry eval`: n workers train one model on a
// synthetic task, f of them Byzantine; each round every gradient is
// quantized per chunk as the collective does (shared exponent = maximum over
// senders, the Byzantine ones included, so they set the scale; int16
// round-to-nearest-even), an injected filter decides per
// chunk which contributions count (the XDP program through BPF_PROG_TEST_RUN,
// or the reference filter here, which does the same math), and an aggregator
// combines what was accepted. Returns the final test accuracy and every
// filter decision.
import { CenteredClipping, mean, median, trimmedMean } from "../aggregate.ts";
import { Gate, Strikes, dotProduct, sumSquares, type GateOptions, type GateView, type StrikesOptions, type Thresholds } from "../stats.ts";
import { mulberry32 } from "../../random.ts";
import type { Attack } from "./attacks.ts";
import { dirichletSplit, iidSplit, synthetic, type Dataset } from "./data.ts";
import { Mlp, SoftmaxRegression, accuracy, type Model } from "./model.ts";

// ---- quantization, as src/quantize.ts's reference defines it ----------------
// (src/quantize.ts opens the native shim when imported; the eval stays pure TS.)

const QMAX = 32767;
const EXP_MIN = -126;
const EXP_MAX = 127;

/** The smallest exponent at which every value of x fits ±32767 (EXP_MIN for all zeros). */
export function chunkExponent(x: Float32Array): number {
  let m = 0;
  for (let j = 0; j < x.length; j++) m = Math.max(m, Math.abs(x[j]));
  if (m === 0) return EXP_MIN;
  let e = Math.max(EXP_MIN, Math.min(EXP_MAX, Math.ceil(Math.log2(m / QMAX))));
  while (e < EXP_MAX && m > QMAX * 2 ** e) e++;
  while (e > EXP_MIN && m <= QMAX * 2 ** (e - 1)) e--;
  return e;
}

/** q = round(x / 2^exp), ties to even, clipped to ±32767. */
export function quantizeChunk(x: Float32Array, exp: number, q: Int16Array): void {
  const s = 2 ** -exp;
  for (let j = 0; j < x.length; j++) {
    const v = x[j] * s;
    let r = Math.round(v);
    if (r - v === 0.5 && r % 2 !== 0) r -= 1; // Math.round rounds ties up; make them even
    q[j] = Math.max(-QMAX, Math.min(QMAX, r));
  }
}

// ---- the filter ------------------------------------------------------------

/** What a filter knows of a chunk besides its contributions. */
export interface ChunkInfo {
  chunk: number;
  /** The shared exponent: contribution w's values are q[w][j] * 2^exp. */
  exp: number;
  /** The previous round's aggregate for this chunk, quantized at its own
   * exponent (values q[j] * 2^exp), or null when there was none (first
   * round, or nothing accepted). */
  prev: { q: Int16Array; exp: number } | null;
}

/** Decides which workers' contributions to a chunk count: one boolean per
 * worker, true to accept. contributions[w] holds worker w's int16 values of
 * the chunk, as its packet carries them; the arrays are reused after the call. */
export type Filter = (round: number, contributions: readonly Int16Array[], info: ChunkInfo) => boolean[];

export interface ReferenceFilterOptions {
  /** The sum-of-squares gate (defaults: log space, z 3.5, lower gate on,
   * halfLife 50 values, i.e. about 5 rounds of 10 workers, and minSigma
   * 0.05, a gate never narrower than ±19% in sum of squares). */
  gate?: GateOptions;
  /** Also gate the dot product with the previous result (linear space,
   * lower gate only by default: a large aligned update is the sum of
   * squares gate's business). Off by default. */
  dot?: boolean | GateOptions;
  /** Quarantine workers that keep failing (off by default). */
  strikes?: StrikesOptions | null;
}

/** The Sentry's decision in TypeScript, per chunk: the integer statistics of
 * the int16 values compared against the integer thresholds the gate would
 * write into the XDP program's map, then the accepted values pushed back
 * into the gate. While a chunk's gate calibrates (its first round) every
 * contribution is rejected and only recorded. A gate that rejects more than
 * half of a round's live contributions is stale, not surrounded by
 * attackers (they are fewer than half): it is reset and recalibrated from
 * that round, whose rejections stand. */
export class ReferenceFilter {
  private readonly sumGates = new Map<number, Gate>();
  private readonly dotGates = new Map<number, Gate>();
  private readonly gateOptions: GateOptions;
  private readonly dotOptions: GateOptions | null;
  readonly strikes: Strikes | null;

  constructor(o: ReferenceFilterOptions = {}) {
    this.gateOptions = { log: true, minSigma: 0.05, halfLife: 50, ...o.gate };
    this.dotOptions = o.dot ? { z: Infinity, ...(o.dot === true ? {} : o.dot), log: false } : null;
    this.strikes = o.strikes ? new Strikes(o.strikes) : null;
  }

  /** The sum-of-squares gate of a chunk. */
  gate(chunk: number): Gate {
    let g = this.sumGates.get(chunk);
    if (!g) this.sumGates.set(chunk, (g = new Gate(this.gateOptions)));
    return g;
  }

  private dotGate(chunk: number): Gate {
    let g = this.dotGates.get(chunk);
    if (!g) this.dotGates.set(chunk, (g = new Gate(this.dotOptions!)));
    return g;
  }

  /** What the adaptive attacks are told: the chunk's sum-of-squares gate. */
  view = (chunk: number): GateView | null => this.sumGates.get(chunk)?.view() ?? null;

  /** The u64 thresholds on sum(q^2) for a chunk quantized at exp. */
  thresholds(chunk: number, exp: number): Thresholds {
    return this.gate(chunk).thresholds(4 ** exp);
  }

  decide: Filter = (round, contributions, info) => {
    const n = contributions.length;
    const live = Array.from({ length: n }, (_, w) => !this.strikes?.quarantined(w, round));
    const liveValues = (xs: number[], scale: number) => xs.filter((_, w) => live[w]).map((v) => v * scale);
    const accept = new Array<boolean>(n).fill(false);
    const gate = this.gate(info.chunk);
    const sums = contributions.map(sumSquares);
    const scale = 4 ** info.exp;
    // The dot product needs a previous result; a dot gate that is calibrating has no opinion yet.
    const prev = this.dotOptions ? info.prev : null;
    const dotGate = prev ? this.dotGate(info.chunk) : null;
    const dots = prev ? contributions.map((q) => dotProduct(q, prev.q)) : [];
    const dotScale = prev ? 2 ** (info.exp + prev.exp) : 1;
    const dotLimits = dotGate && dotGate.phase !== "calibrating" ? dotGate.thresholds(dotScale, true) : null;
    if (dotGate && !dotLimits) dotGate.record(liveValues(dots, dotScale));
    if (gate.phase === "calibrating") {
      gate.record(liveValues(sums, scale));
      return accept;
    }
    const limits = gate.thresholds(scale);
    for (let w = 0; w < n; w++) {
      if (!live[w]) continue;
      const s = BigInt(sums[w]);
      accept[w] = limits.lo <= s && s <= limits.hi;
      if (dotLimits) {
        const d = BigInt(dots[w]);
        accept[w] &&= dotLimits.lo <= d && d <= dotLimits.hi;
      }
    }
    if (2 * accept.filter(Boolean).length < live.filter(Boolean).length) {
      gate.reset();
      gate.record(liveValues(sums, scale));
      if (dotLimits) {
        dotGate!.reset();
        dotGate!.record(liveValues(dots, dotScale));
      }
      return accept; // the gate's fault, not the workers': no strikes
    }
    for (let w = 0; w < n; w++) {
      if (!live[w]) continue;
      if (!accept[w]) {
        this.strikes?.strike(w, round);
        continue;
      }
      gate.push(sums[w] * scale);
      if (dotLimits) dotGate!.push(dots[w] * dotScale);
    }
    return accept;
  };
}

// ---- the loop --------------------------------------------------------------

export type AggregateMode = "mean" | "trimmedMean" | "median" | "centeredClipping";

export interface EvalOptions {
  workers: number;
  /** Indices of the byzantine workers. */
  byzantine: readonly number[];
  attack?: Attack | null;
  /** How accepted contributions combine (default "mean": the sum over the
   * accepted divided by their number). */
  aggregate?: AggregateMode;
  /** Per-chunk accept mask; none accepts everything. */
  filter?: Filter | null;
  rounds: number;
  lr: number;
  seed: number;
  split: "iid" | "dirichlet";
  /** Dirichlet concentration (default 0.5). */
  alpha?: number;
  /** Rows per worker per round (default 32). */
  batch?: number;
  /** Elements per chunk, as on the wire (default 720: a 1500-byte MTU). */
  chunkElems?: number;
  model?: "softmax" | "mlp";
  /** Hidden units of the MLP (default 32). */
  hidden?: number;
  /** Train and test sets (default synthetic({ seed })); pass one to share it across runs. */
  data?: { train: Dataset; test: Dataset };
  /** The gate the adaptive attacks aim at (e.g. ReferenceFilter.view). */
  gate?: (chunk: number) => GateView | null;
  /** trimmedMean: values trimmed per side (default f, the byzantine count). */
  trim?: number;
  /** centeredClipping: clip radius (default 1), iterations (1) and worker momentum (0.9). */
  tau?: number;
  iterations?: number;
  momentum?: number;
}

export interface EvalResult {
  /** Test accuracy after the last round. */
  accuracy: number;
  /** Test accuracy after each round. */
  curve: number[];
  /** decisions[round][chunk][worker]: accepted (true when there is no filter). */
  decisions: boolean[][][];
  chunks: number;
}

function makeModel(o: EvalOptions, data: Dataset): Model {
  return o.model === "mlp" ? new Mlp(data.dim, o.hidden ?? 32, data.classes) : new SoftmaxRegression(data.dim, data.classes);
}

/** One aggregator per chunk (centered clipping keeps per-chunk state). */
function makeAggregator(o: EvalOptions): (xs: Float32Array[], out: Float32Array, workers: number[]) => void {
  const mode = o.aggregate ?? "mean";
  const f = o.byzantine.length;
  switch (mode) {
    case "mean":
      return (xs, out) => mean(xs, out);
    case "median":
      return (xs, out) => median(xs, out);
    case "trimmedMean":
      // Fewer accepted than 2 trim + 1: trim what can be trimmed.
      return (xs, out) => trimmedMean(xs, Math.min(o.trim ?? f, (xs.length - 1) >> 1), out);
    case "centeredClipping": {
      const cc = new CenteredClipping({ tau: o.tau ?? 1, iterations: o.iterations, momentum: o.momentum });
      return (xs, out, workers) => cc.aggregate(xs, out, workers);
    }
  }
}

export function runEval(o: EvalOptions): EvalResult {
  const n = o.workers;
  const byzantine = new Set(o.byzantine);
  o.attack?.reset?.();
  if ([...byzantine].some((w) => !(Number.isInteger(w) && w >= 0 && w < n))) throw new RangeError(`byzantine workers must be in [0, ${n})`);
  const data = o.data ?? synthetic({ seed: o.seed });
  const { train, test } = data;
  const model = makeModel(o, train);
  const params = model.init(o.seed);
  const P = model.size;
  const chunkElems = o.chunkElems ?? 720;
  const chunks = Math.ceil(P / chunkElems);
  const shards = o.split === "iid"
    ? iidSplit(train.rows, n, o.seed)
    : dirichletSplit(train.y, train.classes, n, { alpha: o.alpha, seed: o.seed });
  const labels = Array.from({ length: n }, (_, w) => {
    const flip = byzantine.has(w) ? o.attack?.flipLabel : undefined;
    return flip ? train.y.map((y) => flip(y, train.classes)) : train.y;
  });
  const batch = o.batch ?? 32;
  const sampleRng = mulberry32(o.seed ^ 0x5eed);
  const attackRng = mulberry32(o.seed ^ 0xa77ac);
  const grads = Array.from({ length: n }, () => new Float32Array(P));
  const deq = Array.from({ length: n }, () => new Float32Array(chunkElems));
  const qs = Array.from({ length: n }, () => new Int16Array(chunkElems));
  const idx = new Uint32Array(batch);
  const update = new Float32Array(P);
  const aggregators = Array.from({ length: chunks }, () => makeAggregator(o));
  const prev: (ChunkInfo["prev"])[] = new Array(chunks).fill(null);
  const decisions: boolean[][][] = [];
  const curve: number[] = [];

  for (let round = 0; round < o.rounds; round++) {
    for (let w = 0; w < n; w++) {
      const shard = shards[w];
      for (let i = 0; i < batch; i++) idx[i] = shard[Math.floor(sampleRng() * shard.length)];
      model.gradient(params, train, idx, grads[w], labels[w]);
    }
    if (o.attack?.apply && byzantine.size > 0) {
      o.attack.apply(grads.filter((_, w) => byzantine.has(w)), {
        round, honest: grads.filter((_, w) => !byzantine.has(w)), workers: n, byzantine: byzantine.size,
        rng: attackRng, chunkElems, gate: o.gate,
      });
    }
    const roundDecisions: boolean[][] = [];
    for (let c = 0; c < chunks; c++) {
      const lo = c * chunkElems, len = Math.min(chunkElems, P - lo);
      const views = grads.map((g) => g.subarray(lo, lo + len));
      const exp = Math.max(...views.map(chunkExponent));
      const q = qs.map((b, w) => {
        const v = b.subarray(0, len);
        quantizeChunk(views[w], exp, v);
        return v;
      });
      const accept = o.filter ? Array.from(o.filter(round, q, { chunk: c, exp, prev: prev[c] }), Boolean) : new Array<boolean>(n).fill(true);
      if (accept.length !== n) throw new RangeError(`filter decided for ${accept.length} workers of ${n}`);
      roundDecisions.push(accept);
      const accepted: number[] = [];
      for (let w = 0; w < n; w++) if (accept[w]) accepted.push(w);
      const out = update.subarray(lo, lo + len);
      if (accepted.length === 0) {
        out.fill(0);
        prev[c] = null;
        continue;
      }
      const scale = 2 ** exp;
      const xs = accepted.map((w) => {
        const d = deq[w].subarray(0, len);
        for (let j = 0; j < len; j++) d[j] = q[w][j] * scale;
        return d;
      });
      aggregators[c](xs, out, accepted);
      const rq = new Int16Array(len);
      const rexp = chunkExponent(out);
      quantizeChunk(out, rexp, rq);
      prev[c] = { q: rq, exp: rexp };
    }
    decisions.push(roundDecisions);
    for (let k = 0; k < P; k++) params[k] -= o.lr * update[k];
    curve.push(accuracy(model, params, test));
  }
  return { accuracy: curve.at(-1) ?? accuracy(model, params, test), curve, decisions, chunks };
}

/** True and false positive rates of a filter's decisions from round `from`
 * on: the share of byzantine contributions rejected, and of honest ones. */
export function filterRates(decisions: boolean[][][], byzantine: readonly number[], from = 0): { tpr: number; fpr: number } {
  const bad = new Set(byzantine);
  let byz = 0, byzRejected = 0, honest = 0, honestRejected = 0;
  for (const round of decisions.slice(from))
    for (const chunk of round)
      chunk.forEach((ok, w) => {
        if (bad.has(w)) (byz++, ok || byzRejected++);
        else (honest++, ok || honestRejected++);
      });
  return { tpr: byz ? byzRejected / byz : NaN, fpr: honest ? honestRejected / honest : NaN };
}
