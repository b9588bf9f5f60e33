// A round's stages: the exponents and the plan of a large round are
// exchanged a stage of chunks at a time, so data leaves as soon as the
// first stage is planned instead of after every member has computed (at 8
// and 4 bits: transformed) its whole array. The first stage is small (the
// time to the first byte), each next one twice the one before (its plan
// comes while the one before is on the wire). Every member derives the
// same stages from the round's chunk count; control packets never cross a
// stage, so a piece is named by its first chunk as before.
import { TUNING } from "./options.ts";

export interface Stages {
  /** Stage s covers chunks [s ? ends[s-1] : 0, ends[s]). */
  ends: Uint32Array;
  /** Pieces (one control packet each): first chunk and length, by stage. */
  firsts: Uint32Array;
  lens: Uint32Array;
  /** Stage s's pieces are [pieceFrom[s], pieceFrom[s+1]). */
  pieceFrom: Uint32Array;
  /** First chunk → piece index. */
  index: Map<number, number>;
}

/** The ends of a round's stages (one stage: [nchunks]). */
export function stageEnds(nchunks: number, minChunks: number = TUNING.STAGE_MIN_CHUNKS, firstDiv: number = TUNING.STAGE_FIRST_DIV): number[] {
  if (!minChunks || nchunks < minChunks || firstDiv <= 1) return [nchunks];
  let size = Math.ceil(nchunks / firstDiv);
  const ends = [size];
  for (let e = size; e < nchunks; ) {
    size *= 2;
    // a last stage smaller than the one before joins it
    e = nchunks - (e + size) < size ? nchunks : e + size;
    ends.push(e);
  }
  return ends;
}

const cache = new Map<string, Stages>();

/** The stages and pieces of a round of nchunks (cached: the same object for the same round size). */
export function stagesOf(nchunks: number, payload: number = TUNING.CTRL_PAYLOAD): Stages {
  const key = `${nchunks}/${payload}/${TUNING.STAGE_MIN_CHUNKS}/${TUNING.STAGE_FIRST_DIV}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const ends = stageEnds(nchunks);
  const firsts: number[] = [], lens: number[] = [], pieceFrom: number[] = [];
  let a = 0;
  for (const b of ends) {
    pieceFrom.push(firsts.length);
    for (let f = a; f < b; f += payload) firsts.push(f), lens.push(Math.min(payload, b - f));
    a = b;
  }
  // (a round of no chunks: one empty piece, as before stages)
  if (nchunks === 0) firsts.push(0), lens.push(0);
  pieceFrom.push(firsts.length);
  const s: Stages = {
    ends: Uint32Array.from(ends), firsts: Uint32Array.from(firsts), lens: Uint32Array.from(lens), pieceFrom: Uint32Array.from(pieceFrom),
    index: new Map(firsts.map((f, i) => [f, i])),
  };
  if (cache.size > 64) cache.clear();
  cache.set(key, s);
  return s;
}

/** The length of the piece that starts at chunk `first`, or -1 when no piece starts there. */
export function pieceLen(s: Stages, first: number): number {
  const i = s.index.get(first);
  return i === undefined ? -1 : s.lens[i];
}

/** Chunks [from, to) of stage k. */
export function stageSpan(s: Stages, k: number): [number, number] {
  return [k ? s.ends[k - 1] : 0, s.ends[k]];
}

/** Whether every piece of stage k is in `pieces` (first chunks received). */
export function stageIn(s: Stages, pieces: Set<number>, k: number): boolean {
  for (let i = s.pieceFrom[k]; i < s.pieceFrom[k + 1]; i++) if (!pieces.has(s.firsts[i])) return false;
  return true;
}

/** How many stages from the first are complete in `pieces`, from stage `from` on. */
export function stagesIn(s: Stages, pieces: Set<number>, from = 0): number {
  let k = from;
  while (k < s.ends.length && stageIn(s, pieces, k)) k++;
  return k;
}

/** How many entries of a sorted list are below `limit`. */
export function countBelow(list: Uint32Array, limit: number): number {
  let lo = 0, hi = list.length;
  while (lo < hi) {
    const m = (lo + hi) >> 1;
    if (list[m] < limit) lo = m + 1;
    else hi = m;
  }
  return lo;
}
