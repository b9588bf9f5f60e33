// `ainftp swarm status`: the members as the node running on an interface of
// this network namespace sees them (published by src/swarm.ts).
import Table from "cli-table3";
import { Command } from "commander";
import { status as attachStatus } from "../src/attach.ts";
import { AinftpError } from "../src/errors.ts";
import { readSwarmState, swarmStatePath, type SwarmState } from "../src/swarm.ts";
import type { IO } from "./io.ts";
import { COMPACT, secondsOption } from "./status.ts";
import { dropsOf } from "../src/abi.ts";

/** A node's published view, with what its program dropped and why. */
export type SwarmStatus = SwarmState & { drops: ReturnType<typeof dropsOf> | null };

export function collectSwarmStatus(iface?: string): SwarmStatus[] {
  const attached = attachStatus().filter((x) => !x.stale);
  const ifaces = iface ? [iface] : attached.map((x) => x.iface);
  const list = ifaces
    .map((i) => {
      const s = readSwarmState(swarmStatePath(i));
      const c = attached.find((x) => x.iface === i)?.counters;
      return s && { ...s, drops: c ? dropsOf(c) : null };
    })
    .filter((s): s is SwarmStatus => !!s);
  if (list.length === 0)
    throw new AinftpError("swarm status", `no swarm node is running${iface ? ` on ${iface}` : ""} in this network namespace`, {
      hint: "start one with: ainftp swarm --iface IF --peers … --rank K (or --slurm), then ask again",
    });
  return list;
}

const ms = (x: number | null) => (x === null ? "-" : x < 10 ? x.toFixed(2) : x.toFixed(0));

export function renderSwarmStatus(list: SwarmStatus[]): string {
  return list.map((s) => {
    const age = ((Date.now() - s.updated) / 1000).toFixed(1);
    let text = `${s.iface}: job ${s.job}, this node is rank ${s.rank} (pid ${s.pid}), ${s.rounds} rounds, local health ${s.health}` +
      `${s.health ? " (its own timers run late: it accuses no one meanwhile)" : ""}, updated ${age} s ago\n`;
    const t = new Table({
      head: ["rank", "address", "state", "RTT ms (EWMA)", "RTT ms (p99)", "lag ms", "speed rank", "slow", "rounds in", "rounds out", "incarnation"],
      style: { head: [], border: [] }, chars: COMPACT,
    });
    for (const m of s.members)
      t.push([m.memberRank + (m.self ? " (this node)" : ""), m.addr, m.state, ms(m.rttEwma), ms(m.rttP99), m.self ? "-" : ms(m.lag), m.rank ?? "-", m.slow ? "yes" : "no", m.roundsContributed, m.roundsMissed, m.incarnation]);
    text += t.toString() + "\n  rounds in / out: rounds this node completed with the member's contributions awaited, and without (quarantined)\n";
    const recent = s.changes.filter((c) => c.kind !== "join").slice(-5);
    if (recent.length) text += `  recent: ${recent.map((c) => `rank ${c.rank} ${c.kind} at ${(c.at_ms / 1000).toFixed(1)} s`).join("; ")}\n`;
    const rej = s.rejected ?? { wrongSender: 0, secondHand: 0, undecodable: 0 };
    text += `  membership messages dropped: ${rej.wrongSender} not from the member they name, ${rej.secondHand} speaking for another member, ${rej.undecodable} undecodable\n`;
    if (s.drops) text += `  program drops: ${Object.entries(s.drops).map(([k, n]) => `${k} ${n}`).join(", ") || "none"}\n`;
    const cd = Object.entries(s.controlDrops ?? {}).filter(([, n]) => n);
    text += `  control frames refused: ${cd.map(([k, n]) => `${k} ${n}`).join(", ") || "none"}\n`;
    return text;
  }).join("\n");
}

export function swarmStatusCommand(io: IO): Command {
  return new Command("status")
    .summary("the members as a running node sees them: state, RTT, lag, speed rank")
    .description("Show the swarm's membership as the node running on an interface of this network namespace sees it.")
    .argument("[iface]", "interface (default: every attached interface)")
    .option("--json", "print JSON")
    .option("--watch <s>", "refresh every s seconds until Ctrl-C", secondsOption)
    .action(async (iface: string | undefined, o: { json?: boolean; watch?: number }, cmd: Command) => {
      // `swarm` has a --json of its own, which commander hands the parent
      const json = o.json || cmd.parent?.opts().json === true;
      const show = () => {
        const list = collectSwarmStatus(iface);
        return json ? JSON.stringify(list, null, 2) + "\n" : renderSwarmStatus(list);
      };
      if (!o.watch) return void io.out(show());
      for (;;) {
        io.out((io.tty ? "\x1b[2J\x1b[H" : "") + show());
        await Bun.sleep(o.watch * 1000);
      }
    });
}
