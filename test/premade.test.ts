// bench/premade.ts: a rank's timed rounds' gradients made before them, as
// many as the memory budget holds, each the generator's values for its round.
import { describe, expect, test } from "bun:test";
import { coll } from "../native/collective.ts";
import { PremadeRounds } from "../src/bench/premade.ts";

const synth = (seed: number, rank: number, round: number, n: number, scale = 1) => {
  const v = new Float32Array(n);
  coll.ainftp_synth(seed, rank, round, scale, v, n);
  return v;
};

describe("premade rounds", () => {
  test("each round's buffer holds that round's gradient (scale included), its own memory; the budget caps the count", async () => {
    const n = 3000;
    const p = await PremadeRounds.make(4, 2, n, 5, 0.5);
    expect(p.made).toBe(5);
    for (let r = 0; r < 5; r++) expect(p.round(r)).toEqual(synth(4, 2, r, n, 0.5));
    expect(p.round(0)!.buffer).not.toBe(p.round(1)!.buffer);
    expect(p.round(5)).toBeNull();
    // room for two rounds: rounds 2.. are made between calls, as before
    const small = PremadeRounds.makeSync(4, 2, n, 5, 1, 2 * n * 4 + 100);
    expect(small.made).toBe(2);
    expect(small.round(1)).toEqual(synth(4, 2, 1, n));
    expect(small.round(2)).toBeNull();
    small.release(1);
    expect(small.round(1)!.length).toBe(0);
    expect(PremadeRounds.makeSync(4, 2, 0, 5, 1).made).toBe(0);
  });
});
