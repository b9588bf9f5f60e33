// Issue 17, the round's tail in the simulator: a member's last contribution
// to an owner is lost, and so are that member's own probes of the owner.
// Its owner (its probe timer and its tail check: recovery.ts tellLacking)
// and the members that lack the owner's result (their probes, answered to
// the member named: receiver.ts) tell it whose contribution the slot lacks,
// and it sends it again at once, instead of at the full retransmission's
// RTO (at least 50 ms, rtt.ts RTO_FLOOR_MS). Owners do so only once they
// have seen loss themselves (recovery.ts lossSeen: their RACK fired): one of
// the owner's own first contributions is lost in that round too. On a clean
// network nobody is named unasked (test/collective.test.ts: no resends).
import { describe, expect, test } from "bun:test";
import { CTRL_RESULT_REQ, F_RETRANSMIT, PKT_CONTRIB, PKT_CONTROL, readHeader } from "../../src/abi.ts";
import { RTO_FLOOR_MS } from "../../src/collective/rtt.ts";
import { CLEAN, SimWorld, simGradient, simPrograms } from "./world.ts";

const root = process.getuid?.() === 0;
if (!root) console.log("[sim tell] skipped: loading the XDP program for BPF_PROG_TEST_RUN needs root");

const HOSTS = 4;
const CHUNKS = 16;
const ELEMS = 64;
const PORT = 47126;
const programs = simPrograms(root, HOSTS, CHUNKS, ELEMS, PORT);
const LOSER = 1, OWNER = 0;
// owner 0's chunks are c % 4 == 0 (all four active): its last is 12
const LAST = CHUNKS - HOSTS;

describe.skipIf(!root)("the round's tail: an owner's open slot names the member that lost its contribution", () => {
  for (const askers of ["every member probes", "only the owner's own timer"] as const)
    test(`a member's last contribution to an owner lost, and its probes of the owner too (${askers}): sent again well before the RTO`, async () => {
      const world = new SimWorld(1717, CLEAN, programs, PORT);
      let target = -1, dropped = 0, asks = 0, ownLost = -1;
      world.drop = (from, to, d) => {
        if (d.length < 32) return false;
        // (a control packet carries its kind in `contributors`)
        const { type, round, flags, chunk, contributors: kind } = readHeader(new DataView(d.buffer, d.byteOffset, d.byteLength), 0);
        // the owner's own first contribution to rank 2, in the target round: its RACK fires (loss seen)
        if (type === PKT_CONTRIB && from === OWNER && to === 2 && round >= 3 && ownLost < 0 && !(flags & F_RETRANSMIT)) {
          ownLost = round;
          return true;
        }
        if (to !== OWNER) return false;
        if (type === PKT_CONTRIB && from === LOSER && chunk === LAST && !(flags & F_RETRANSMIT) && target < 0 && round >= 3) {
          target = round;
          dropped++;
          return true;
        }
        // the loser's probes of the owner (and, for the second case, every member's)
        if (type === PKT_CONTROL && round === target && kind === CTRL_RESULT_REQ && (from === LOSER || askers !== "every member probes")) {
          asks++;
          return true;
        }
        return false;
      };
      const comms = world.hosts.map((_, rank) => world.communicator(rank, { roundTimeoutMs: 20_000, openTimeoutMs: 5_000 }));
      const times = new Map<number, number>();
      try {
        await world.run(comms.map((c) => async (rank: number) => {
          await c.connect();
          for (let k = 0; k < 6; k++) {
            const x = simGradient(17, k, rank, CHUNKS * ELEMS);
            for (const rep of await c.allreduce(x)) if (rank === LOSER) times.set(rep.round, rep.ms);
          }
          await c.leave(30_000);
        }), 600_000);
      } finally {
        for (const c of comms) c.close(0);
      }
      expect(dropped).toBe(1);
      expect(ownLost).toBe(target);
      const ms = times.get(target)!;
      const others = [...times].filter(([r]) => r !== target).map(([, t]) => t);
      console.log(`[sim tell] ${askers}: round ${target} (its last contribution to the owner lost, ${asks} probes of the owner dropped) took ${ms.toFixed(2)} virtual ms; the others ${Math.max(...others).toFixed(2)} at most`);
      expect(ms).toBeLessThan(RTO_FLOOR_MS / 2);
    }, 120_000);
});
