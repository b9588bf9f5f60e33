// Issue 17, the round's tail in the simulator, the member's side: the last
// result an owner sends a member is lost. No later result of that owner
// comes for the member's RACK to see, so before session 9 only its probe
// timer found it (2·srtt, at least PTO_FLOOR_MS; a loaded host's round-trips
// stretch that to tens of ms). Under loss (the member's RACK fired: one of
// its own first contributions is lost in that round too), a member that has
// sent everything and lacks at most TELL_TAIL results asks their owners by
// name ASK_MS after the last progress (recovery.ts askDue/askTail). The
// second case turns the ask off and shows that the test can fail.
import { afterEach, describe, expect, test } from "bun:test";
import { CTRL_RESULT_REQ, F_RETRANSMIT, PKT_CONTRIB, PKT_CONTROL, PKT_RESULT, readHeader } from "../../src/abi.ts";
import { TUNING } from "../../src/collective/options.ts";
import { PTO_FLOOR_MS } from "../../src/collective/rtt.ts";
import { CLEAN, SimWorld, simGradient, simPrograms } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim ask] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");

const HOSTS = 4;
const CHUNKS = 16;
const ELEMS = 64;
const PORT = 47127;
const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);
const LOSER = 1, OWNER = 0;
// owner 0's chunks are c % 4 == 0 (all four active): its last is 12
const LAST = CHUNKS - HOSTS;
const ASK_MS = TUNING.ASK_MS;
// TUNING is read-only to the code; the second case turns the ask off here
const tuning = TUNING as unknown as { ASK_MS: number };

describe.skipIf(!root)("the round's tail: a member asks for its last results under loss", () => {
  afterEach(() => {
    tuning.ASK_MS = ASK_MS;
  });
  for (const ask of [true, false])
    test(`the owner's last result to a member lost: ${ask ? "asked for within ASK_MS" : "(asks off) only the probe timer asks"}`, async () => {
      if (!ask) tuning.ASK_MS = Infinity;
      const world = new SimWorld(1818, CLEAN, programs, PORT);
      let target = -1, ownLost = -1, droppedAt = -1, askedAt = -1;
      world.drop = (from, to, d) => {
        if (d.length < 32) return false;
        // (a control packet carries its kind in `contributors`)
        const { type, round, flags, chunk, contributors: kind } = readHeader(new DataView(d.buffer, d.byteOffset, d.byteLength), 0);
        // the member's own first contribution to rank 2, in the target round: its RACK fires (loss seen)
        if (type === PKT_CONTRIB && from === LOSER && to === 2 && round >= 3 && ownLost < 0 && !(flags & F_RETRANSMIT)) {
          ownLost = round;
          return true;
        }
        // the owner's result of its last chunk to the member, the first time
        if (type === PKT_RESULT && from === OWNER && to === LOSER && round === ownLost && target < 0 && chunk === LAST) {
          target = round;
          droppedAt = world.now;
          return true;
        }
        if (type === PKT_CONTROL && from === LOSER && to === OWNER && round === target && askedAt < 0 && kind === CTRL_RESULT_REQ)
          askedAt = world.now;
        return false;
      };
      // (without speculation: the schedule below loses a given result of a round that starts with its plan)
      const comms = world.hosts.map((_, rank) => world.communicator(rank, { roundTimeoutMs: 20_000, openTimeoutMs: 5_000, speculate: false }));
      const hashes: string[][] = world.hosts.map(() => []);
      try {
        await world.run(comms.map((c) => async (rank: number) => {
          await c.connect();
          for (let k = 0; k < 6; k++) {
            const x = simGradient(18, k, rank, CHUNKS * ELEMS);
            await c.allreduce(x);
            hashes[rank].push(Bun.hash(x.buffer).toString(16));
          }
          await c.leave(30_000);
        }), 600_000);
      } finally {
        for (const c of comms) c.close(0);
      }
      expect(target).toBe(ownLost);
      expect(askedAt).toBeGreaterThan(droppedAt);
      const wait = askedAt - droppedAt;
      console.log(`[sim ask] asks ${ask ? "on" : "off"}: round ${target}, the last result lost at ${droppedAt.toFixed(2)}, first asked for ${wait.toFixed(2)} virtual ms later`);
      // every rank ends with the same sums
      for (const h of hashes) expect(h).toEqual(hashes[0]);
      if (ask) expect(wait).toBeLessThan(PTO_FLOOR_MS);
      else expect(wait).toBeGreaterThanOrEqual(PTO_FLOOR_MS);
    }, 120_000);
});
