// The swarm's membership on a running node: the SWIM/Lifeguard state machine
// of src/membership.ts, carried as control packets (CTRL_MEMBER) on the job's
// UDP port and ticked from a timer, with its view published for `ainftp swarm
// status` (/run/ainftp/swarm/, one file per interface and network namespace).
// A member's name is its rank ("r0", "r1", …) and its address its peer IP.
//
// What the view is used for: a round's leader waits only for members the
// swarm holds alive (or merely suspected) and not slow (Communicator.fitMask,
// refreshed every tick), so a dead member costs no round its deadline; round
// failures name what the swarm knows ("declared dead 1.2 s ago"); and the
// node's report carries every change. The collective keeps its own,
// round-level lateness on top (src/collective.ts, LATE_SLOW).
import { rmSync } from "node:fs";
import { join } from "node:path";
import { pinRoot } from "./attach.ts";
import { nodeStateName, readJsonFile, writeJsonAtomic } from "./run-state.ts";
import type { Communicator } from "./collective.ts";
import { decodeMessage, encodeMessage, Membership, MEMBERSHIP_DEFAULTS, type MemberEvent, type MembershipOptions, type MemberView } from "./membership.ts";

export const SWARM_STATE_DIR = "/run/ainftp/swarm";

export interface SwarmChange {
  /** ms since the swarm started. */
  at_ms: number;
  kind: MemberEvent["kind"];
  rank: number;
  addr: string;
}

export interface SwarmState {
  iface: string;
  job: number;
  rank: number;
  pid: number;
  /** ms since the epoch when written. */
  updated: number;
  /** Lifeguard's local health: 0 = this node trusts its own timeliness. */
  health: number;
  rounds: number;
  members: (MemberView & { memberRank: number; roundsContributed: number; roundsMissed: number })[];
  changes: SwarmChange[];
  /** Membership messages dropped: not from the member they name as sender,
   * gossip speaking for another member, or undecodable (issue 16). */
  rejected: { wrongSender: number; secondHand: number; undecodable: number };
  /** Control frames the node refused, by reason (src/control-guard.ts). */
  controlDrops: Record<string, number>;
}

const rankOf = (name: string) => Number(name.slice(1));

export function swarmStatePath(iface: string, root?: string): string {
  return join(SWARM_STATE_DIR, `${nodeStateName(iface, root)}.json`);
}

export function readSwarmState(path: string): SwarmState | null {
  return readJsonFile<SwarmState>(path);
}

export class Swarm implements Disposable {
  readonly membership: Membership;
  readonly changes: SwarmChange[] = [];
  private readonly timer: ReturnType<typeof setInterval>;
  private readonly t0 = performance.now();
  private readonly deadAt = new Map<number, number>();
  private lastPublish = 0;
  private undecodable = 0;
  private readonly statePath: string;

  constructor(private readonly comm: Communicator, o: { iface: string; pinRoot?: string; options?: Partial<MembershipOptions>; log?: (line: string) => void } = { iface: "" }) {
    const peers = comm.peers;
    this.statePath = swarmStatePath(o.iface, pinRoot(o.pinRoot));
    this.membership = new Membership({
      self: { name: `r${comm.rank}`, addr: peers[comm.rank] },
      members: peers.map((addr, k) => ({ name: `r${k}`, addr })),
      clock: () => performance.now(),
      send: (to, msg) => {
        const k = peers.indexOf(to);
        if (k >= 0) comm.sendMember(k, encodeMessage(msg));
      },
      random: Math.random,
      options: o.options,
      onChange: (e) => {
        const rank = rankOf(e.member.name);
        const c = { at_ms: Math.round(performance.now() - this.t0), kind: e.kind, rank, addr: e.member.addr };
        this.changes.push(c);
        if (e.kind === "dead") this.deadAt.set(rank, performance.now());
        if (e.kind === "alive" || e.kind === "join") this.deadAt.delete(rank);
        if (e.kind !== "join") o.log?.(`swarm: rank ${rank} (${e.member.addr}) ${e.kind}`);
      },
    });
    comm.onMember = (rank, payload) => {
      // `rank` is the sender the collective bound to its address: the
      // message's own sender record must be that member (Membership.receive)
      const msg = decodeMessage(payload);
      if (msg) this.membership.receive(peers[rank], msg);
      else this.undecodable++;
    };
    comm.describeMember = (rank) => {
      const at = this.deadAt.get(rank);
      if (at !== undefined) return `the swarm declared it dead ${((performance.now() - at) / 1000).toFixed(1)} s ago`;
      const v = this.membership.snapshot().find((m) => m.name === `r${rank}`);
      return v && v.state === "suspect" ? "the swarm suspects it" : null;
    };
    this.o = o;
    // The membership protocol runs beside the rounds: between rounds this
    // timer reads the control packets; during one, the round loop does (its
    // poll is bounded by maxWaitMs so that the timer still ticks).
    this.timer = setInterval(() => this.tick(), { ...MEMBERSHIP_DEFAULTS, ...o.options }.tickMs);
  }

  private readonly o: { iface: string; pinRoot?: string };

  private tick(): void {
    this.comm.service();
    this.membership.tick();
    let fit = 1n << BigInt(this.comm.rank), live = fit;
    for (const m of this.membership.live()) {
      live |= 1n << BigInt(rankOf(m.name));
      if (!m.slow) fit |= 1n << BigInt(rankOf(m.name));
    }
    this.comm.fitMask = fit;
    this.comm.liveMask = live;
    const now = Date.now();
    if (now - this.lastPublish >= 500) {
      this.lastPublish = now;
      this.publish(now);
    }
  }

  /** The members as this node sees them, with their ranks. */
  view(): SwarmState["members"] {
    return this.membership.snapshot()
      .map((m) => {
        const k = rankOf(m.name);
        return { ...m, memberRank: k, roundsContributed: this.comm.roundsContributed[k] ?? 0, roundsMissed: this.comm.roundsMissed[k] ?? 0 };
      })
      .sort((a, b) => a.memberRank - b.memberRank);
  }

  private publish(now: number): void {
    const s: SwarmState = {
      iface: this.o.iface, job: this.comm.job, rank: this.comm.rank, pid: process.pid, updated: now,
      health: this.membership.health, rounds: this.comm.stats.rounds, members: this.view(), changes: this.changes.slice(-50),
      rejected: { ...this.membership.rejected, undecodable: this.undecodable },
      controlDrops: { ...this.comm.controlDrops },
    };
    try {
      writeJsonAtomic(this.statePath, s);
    } catch {
      // /run not writable: `swarm status` then has nothing to show
    }
  }

  /** Says goodbye to the others (a clean leave is not a death) and stops. */
  close(): void {
    clearInterval(this.timer);
    try {
      this.membership.leave();
      this.comm.service();
    } catch {
      // leaving anyway
    }
    this.comm.onMember = null;
    this.comm.describeMember = null;
    rmSync(this.statePath, { force: true });
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
