// One round's state, in one place: what the exchange of exponents and the
// plan, the send window, the owner's progress and the receiver keep.
import type { FinishBatchArgs } from "../../native/collective.ts";
import type { Early } from "./early.ts";
import type { Spec } from "./speculate.ts";
import type { Prepack } from "./prepack.ts";

/** A contribution to one of our chunks, as the contribs ring gave it (robust modes). */
export interface Contribution {
  exp: number;
  q: Int16Array;
}

/** Robust modes: contributions by chunk, then by rank. */
export type ContributionsByChunk = Map<number, Map<number, Contribution>>;

/** The plan a leader decides: the active members, the next leader, the
 * members' lateness scores after this round, and the shared scale. */
export interface Plan {
  r: number;
  active: bigint;
  next: number;
  scores: Uint8Array;
  shared: Int8Array;
}

export interface RoundState extends Plan {
  n: number; // elements
  nchunks: number;
  counts: Uint16Array;
  t0: number;
  /** When our own exponents were computed (the phases' clock starts there). */
  expsDoneAt: number;
  // ---- exponents and plan (exchange.ts) ----
  exps: Int8Array; // all ranks' exps, rank-major
  /** Per rank: when its exponents were all here (the leader's view). */
  expsAt: Float64Array;
  /** Per rank: offsets of the exponent pieces received. */
  pieces: Set<number>[];
  /** Members whose exponents or plan name another chunk count than this
   * round's: they reduce an array of another length (diagnose.ts says so). */
  sizeMismatch: Set<number>;
  haveExps: boolean[];
  /** The rank that collects the members' exponents, decides the plan and
   * sends back the maximum with it. */
  leader: number;
  /** The round's leader died before its plan reached us and the round went
   * on under its successor (round.ts succeed): the dead leader, else -1.
   * Slots may hold what its plan left. */
  deadLeader: number;
  replanned: boolean;
  /** Successor: the dead leader's plan, relayed by a member that holds it
   * (exchange.ts storeRelayedPlan), is this round's plan; to be announced. */
  relayed: boolean;
  /** Leader: sent the plan; others: received it (pieces in sharedPieces). */
  haveShared: boolean;
  sharedPieces: Set<number>;
  /** Per rank: its index among the active members (the owners), or -1. */
  ownerIdx: Int32Array;
  /** Active members (the owners): chunk c is owned by owners[c % K]. */
  K: number;
  owners: number[];
  /** The owners as bytes, for the native owner checks (xsk.c, results_drop_foreign); made with the plan. */
  ownersU8?: Uint8Array;
  passive: boolean;
  /** How long late members get (see TUNING.DEADLINE_FACTOR); Infinity: forever. */
  grace: number;
  /** A barrier: waits for every fit member (see allreduce's `patient`). */
  patient: boolean;
  /** Leader: when a majority's exponents were here. */
  majorityAt: number;
  // ---- owner (owner.ts) ----
  /** Owner: last time our slots or results moved; the slots close when
   * nothing moved for ownerGrace. */
  lastProgress: number;
  ownerGrace: number;
  closedAtDeadline: boolean;
  owned: Uint32Array;
  ownedDone: Uint8Array;
  ownedDoneCount: number;
  /** Owned slots that completed before our own chunk was quantized. */
  pending: number[];
  /** Per chunk: contributions the program summed into our slot (its event's count). */
  summed: Uint16Array;
  /** Our gradient of this round (robust modes combine it with the others'). */
  x: Float32Array;
  /** Robust modes: the contributions to our chunks, by chunk and rank. */
  recs: ContributionsByChunk;
  /** ainftp_finish_batch's arguments for this round (set with the plan). */
  finishArgs: FinishBatchArgs | null;
  /** Our packets, made with our exponents (prepack.ts; at 8 and 4 bits in the transform's pass), until the plan or speculation takes them; and whether the round sends them (pump packs nothing). */
  prepack: Prepack | null;
  prepacked: boolean;
  /** 8 and 4 bits without error feedback: the prepacking pass kept no
   * transformed array; x's chunks are made from src on demand
   * (sender.ts materialize) where one is packed again. */
  xLazy: { src: Float32Array; seed: number; done: Uint8Array } | null;
  // ---- sender and window (sender.ts) ----
  sent: boolean;
  header: Uint8Array;
  seed: number;
  decidedAt: number;
  /** When the plan came, and Host.dataBytes then (the round's egress rate, pace.ts). */
  planAt: number;
  bytesAtPlan: number;
  /** Chunks in flight per owner at most this round: the window, capped by
   * our measured egress rate (pace.ts). */
  window: number;
  /** At 8 and 4 bits with error feedback: where packing writes this rank's
   * quantization error, else null. */
  resid: Float32Array | null;
  /** The RHT's seed when packing takes that error back through the inverse
   * (the transform's rounds), else 0. */
  residSeed: number;
  /** Per owner: chunks sent, and results received (the window). */
  pos: number[];
  acked: number[];
  sendBuf: Uint8Array; // contribution packets, region per owner
  ownerOffset: number[]; // byte offset of each owner's region
  ownerChunks: Uint32Array[];
  ownBuf: Uint8Array; // own chunks' packets (own quantized values)
  // ---- receiver and recovery (receiver.ts, recovery.ts) ----
  /** The next round's plan is in the program already (receiver.ts planAhead), or ours to decide. */
  planAhead: boolean;
  /** Check the results map for completion even without the events. */
  lookInMap: boolean;
  resultsSeen: number;
  /** Results that arrived, by chunk (rx "xsk": already dequantized into `out`). */
  xdone: Uint8Array;
  /** Per chunk: when it was last sent, and how often it was sent again. */
  sentAt: Float64Array;
  tries: Uint8Array;
  /** Per chunk we own: when we sent its result (a probe for it sooner than
   * TUNING.RESULT_FRESH_MS after is answered by the result on its way). */
  resultSentAt: Float64Array;
  /** Per owner: first list position whose result is missing, and the
   * furthest position with a result (a gap behind it means a loss). */
  lowest: number[];
  furthest: number[];
  /** Per owner: RACK's rtt, of the latest-sent chunk whose result came, and when that chunk was sent. */
  rackRtt: Float64Array;
  rackSent: Float64Array;
  /** Per owner: when we last probed it (its CTRL_STATUS answers that probe). */
  probedAt: Float64Array;
  out: Float32Array;
  /** When our open slots last named the members they lack (recovery.ts tellTail). */
  toldAt: number;
  /** When we last asked owners for the round's last results (recovery.ts askTail). */
  askedAt: number;
  /** RACK sent a contribution of ours again in this round (a loss seen, not a slow peer). */
  rackFired: boolean;
  /** 8 and 4 bits: the gather, done in the round's waits (early.ts). */
  early: Early | null;
  // ---- speculation (speculate.ts) ----
  /** Members may have sent speculative contributions this round: the job speculates and the last round of its length was full. */
  predicted: boolean;
  /** What we sent before the plan, under the prediction; null: nothing. */
  spec: Spec | null;
  /** The scale our contributions are packed at now: the prediction's (ours
   * under it) before the plan, the plan's after. */
  packExps: Int8Array;
  /** When a speculated round's plan came: a round-trip is sampled only of
   * a chunk sent after it (one sent before waited for the owner's plan). */
  confirmedAt: number;
}

/** The active member that owns chunk c in the round's plan. */
export function ownerOf(st: RoundState, c: number): number {
  return st.owners[c % st.K];
}

export interface NewRound {
  r: number;
  size: number;
  chunkElems: number;
  x: Float32Array;
  out: Float32Array;
  nchunks: number;
  t0: number;
  leader: number;
  grace: number;
  patient: boolean;
  maxRetransmitMs: number;
  xdone: Uint8Array;
  recs: ContributionsByChunk;
  headerBytes: number;
}

export function newRoundState(a: NewRound): RoundState {
  const { r, t0, x, out, nchunks, grace, patient, size: N, chunkElems: E } = a;
  const counts = new Uint16Array(nchunks).fill(E);
  counts[nchunks - 1] = x.length - (nchunks - 1) * E;
  const empty = new Uint32Array(0);
  return {
    r, t0, expsDoneAt: t0, n: x.length, nchunks, counts,
    exps: new Int8Array(N * nchunks), haveExps: new Array(N).fill(false), expsAt: new Float64Array(N),
    leader: a.leader, deadLeader: -1, replanned: false, relayed: false, haveShared: false, sharedPieces: new Set(),
    pieces: Array.from({ length: N }, () => new Set<number>()), sizeMismatch: new Set<number>(), shared: new Int8Array(nchunks),
    active: 0n, next: 0, scores: new Uint8Array(N), ownerIdx: new Int32Array(N).fill(-1), K: 0, owners: [], passive: false,
    grace, patient, planAhead: false, lookInMap: false, majorityAt: Infinity, lastProgress: t0, ownerGrace: Math.max(grace, 2 * a.maxRetransmitMs),
    closedAtDeadline: false,
    owned: empty, ownedDone: new Uint8Array(nchunks), ownedDoneCount: 0, pending: [], summed: new Uint16Array(nchunks), resultsSeen: 0,
    sent: false, x, recs: a.recs, finishArgs: null, prepack: null, prepacked: false, xLazy: null,
    header: new Uint8Array(a.headerBytes), seed: 0, decidedAt: 0, planAt: 0, bytesAtPlan: 0, window: 1, resid: null, residSeed: 0, pos: new Array(N).fill(0), acked: new Array(N).fill(0),
    sendBuf: empty as unknown as Uint8Array, ownerOffset: new Array(N).fill(0), ownerChunks: Array.from({ length: N }, () => empty),
    ownBuf: new Uint8Array(0), xdone: a.xdone, out,
    sentAt: new Float64Array(nchunks), tries: new Uint8Array(nchunks), resultSentAt: new Float64Array(nchunks),
    lowest: new Array(N).fill(0), furthest: new Array(N).fill(-1), rackRtt: new Float64Array(N), rackSent: new Float64Array(N), probedAt: new Float64Array(N),
    early: null, toldAt: -Infinity, askedAt: -Infinity, rackFired: false,
    predicted: false, spec: null, packExps: new Int8Array(0), confirmedAt: 0,
  };
}
