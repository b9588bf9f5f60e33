// The sentry as an owner policy: before a batch of our slots is finished,
// learn from the energies the program recorded, strike the rejected
// contributors, and set each chunk's gate; members rejected again and
// again are quarantined (our slots stop waiting for them). Between rounds,
// at most twice a second, its file I/O: operators' re-admissions in, its
// state out for `ainftp sentry status` (never in the data path).
import { gateIndex, SentryKeeper, type KeeperOptions } from "../sentry/keeper.ts";
import { publishState, readmitPath, removeState, statePath, takeReadmits } from "../sentry/state.ts";
import type { Host } from "./host.ts";
import type { RoundState } from "./round-state.ts";

/** Between rounds, the sentry's file I/O at most this often (ms). */
const PUBLISH_MS = 500;

export class SentryPolicy {
  readonly keeper: SentryKeeper;
  private quarantined = 0n;
  private lastPublish = 0;

  constructor(members: number, o: KeeperOptions | true) {
    this.keeper = new SentryKeeper(members, o === true ? {} : o);
  }

  /** At the job's start every gate calibrates: its band is closed. */
  openGates(h: Host): void {
    const gates = h.maps.gates();
    for (let at = 0; at < 2 * h.capacity; at++) [gates[2 * at], gates[2 * at + 1]] = this.keeper.band(at);
  }

  /** Members our slots wait for in round r: the others less the
   * quarantined; tells the caller's hook when that set changes. */
  expectedMask(h: Host, r: number): bigint {
    const q = this.keeper.quarantinedMask(r) & h.othersMask;
    if (q !== this.quarantined) {
      const changed = [...Array(h.size).keys()].filter((k) => ((q ^ this.quarantined) >> BigInt(k)) & 1n);
      this.quarantined = q;
      h.o.onQuarantine?.(changed, r);
    }
    return h.othersMask & ~q;
  }

  /** The sentry's part of finishing owned slots: learn from the energies the
   * program recorded, strike the rejected, and set each chunk's band before
   * its result goes out (so no contribution of the next round meets the old
   * band). A slot read (a syscall) only when some contribution was dropped. */
  judge(h: Host, st: RoundState, bankBase: number, chunks: Uint32Array): void {
    const gates = h.maps.gates();
    const bank = h.cfg.bankMask?.[st.r & 1] ?? 0n;
    const expected = h.cfg.memberMask & (bank === 0n ? ~0n : bank);
    let full = 0;
    for (let m = expected; m; m &= m - 1n) full++;
    let quarantine = false;
    for (const c of chunks) {
      let seen = expected;
      let rejected = 0n;
      if (st.summed[c] < full) {
        const slot = h.maps.slot(bankBase + c);
        seen = slot.seen;
        rejected = slot.rejected;
      }
      const obs = h.maps.obs(bankBase + c);
      const at = gateIndex(c, st.counts[c] !== h.chunkElems);
      if (this.keeper.observe(st.r, at, seen, rejected, obs.energy).length) quarantine = true;
      [gates[2 * at], gates[2 * at + 1]] = this.keeper.band(at);
    }
    // stop waiting for them at once, in this round's open slots too
    if (quarantine) h.setConfig({ ...h.cfg, memberMask: this.expectedMask(h, st.r) });
  }

  /** Between rounds: take operators' re-admissions (ainftp sentry readmit)
   * and publish the sentry's state for `ainftp sentry status`. */
  housekeeping(h: Host): void {
    const now = Date.now();
    if (now - this.lastPublish < PUBLISH_MS) return;
    this.lastPublish = now;
    const root = h.o.pinRoot;
    for (const rank of takeReadmits(readmitPath(h.o.iface, root))) if (rank >= 0 && rank < h.size) this.keeper.readmit(rank);
    try {
      publishState(statePath(h.o.iface, root), {
        ...this.keeper.status(), iface: h.o.iface, job: h.job, rank: h.rank, peers: [...h.peers], pid: process.pid, updated: now,
      });
    } catch {
      // /run not writable: status then shows the kernel's counts only
    }
  }

  /** The job ends: its published state goes. */
  close(h: Host): void {
    removeState(h.o.iface, h.o.pinRoot);
  }
}
