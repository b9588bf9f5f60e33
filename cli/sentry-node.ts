// `ainftp sentry status` and `ainftp sentry readmit`: the sentry of a node
// running on an interface of this network namespace. The kernel's per-rank
// counts come from the pinned map; strikes, quarantine and gates from the
// state the node publishes (src/sentry/state.ts).
import { existsSync } from "node:fs";
import { join } from "node:path";
import Table from "cli-table3";
import { Command } from "commander";
import { CFG_SENTRY } from "../src/abi.ts";
import { pinRoot, status as attachStatus } from "../src/attach.ts";
import { AinftpError } from "../src/errors.ts";
import { PinnedReflex } from "../src/reflex.ts";
import { readState, requestReadmit, statePath, type PublishedState } from "../src/sentry/state.ts";
import { intOption, type IO } from "./io.ts";
import { COMPACT } from "./status.ts";

export interface SentryNodeStatus {
  iface: string;
  enabled: boolean;
  /** The node's published state; null when no node with --sentry runs here. */
  node: PublishedState | null;
  /** Seconds since the node last published (stale above a few). */
  age_s: number | null;
  workers: { rank: number; address: string | null; accepted: number; rejected: number; strikes: number | null; quarantined: boolean | null }[];
}

export function collectSentryStatus(iface: string): SentryNodeStatus {
  const dir = join(pinRoot(), iface);
  if (!existsSync(join(dir, "job_config")))
    throw new AinftpError("sentry status", `ainftp is not attached to ${iface} in this network namespace`, {
      hint: "start the node with: ainftp swarm --iface IF --peers … --rank K --sentry (see ainftp status for what is attached)",
    });
  using maps = PinnedReflex.open(dir);
  const cfg = maps.config();
  const counts = maps.sentryWorkers(Math.max(1, cfg.members));
  const node = readState(statePath(iface));
  const mine = node && (cfg.flags ?? 0) & CFG_SENTRY ? node : null;
  const w = new Map(mine?.workers.map((x) => [x.rank, x]) ?? []);
  return {
    iface,
    enabled: ((cfg.flags ?? 0) & CFG_SENTRY) !== 0,
    node: mine,
    age_s: mine ? +((Date.now() - mine.updated) / 1000).toFixed(1) : null,
    workers: counts.map((c, rank) => ({
      rank, address: mine?.peers[rank] ?? null, accepted: c.accepted, rejected: c.rejected,
      strikes: w.get(rank)?.strikes ?? null, quarantined: w.get(rank)?.quarantined ?? null,
    })),
  };
}

export function renderSentryStatus(s: SentryNodeStatus): string {
  let text = `${s.iface}: sentry ${s.enabled ? "on" : "off (start the node with --sentry)"}`;
  if (s.node) text += `, job ${s.node.job}, this node is rank ${s.node.rank}, z ${s.node.z}, round ${s.node.round}, updated ${s.age_s} s ago\n`;
  else text += s.enabled ? ", no state published yet (the node has not finished a round)\n" : "\n";
  if (s.node) {
    const g = s.node.gates;
    const band = g.medianLo === null ? "none yet" : `[${g.medianLo}, ${g.medianHi}] (energy = 16·log2 of the mean square; median over chunks)`;
    text += `  gates over the chunks this node owns: ${g.chunks} (calibrating ${g.calibrating}, warm-up ${g.warmup}, steady ${g.steady}); band ${band}\n`;
  }
  const t = new Table({ head: ["rank", "address", "accepted", "rejected", "strikes", "quarantined"], style: { head: [], border: [] }, chars: COMPACT });
  for (const w of s.workers)
    t.push([w.rank, w.address ?? "-", w.accepted, w.rejected, w.strikes ?? "-", w.quarantined === null ? "-" : w.quarantined ? "yes" : "no"]);
  return text + t.toString() + "\n  accepted/rejected: contributions to this node's chunks, counted by the XDP program\n";
}

export function sentryStatusCommand(io: IO): Command {
  return new Command("status")
    .summary("per worker: accepted, rejected, strikes, quarantine, and the gates")
    .description("Show the sentry of the node running on an interface of this network namespace.")
    .argument("[iface]", "interface (default: every attached interface)")
    .option("--json", "print JSON")
    .action((iface: string | undefined, o: { json?: boolean }) => {
      const ifaces = iface ? [iface] : attachStatus().filter((x) => !x.stale).map((x) => x.iface);
      if (ifaces.length === 0) throw new AinftpError("sentry status", "ainftp is not attached to any interface in this network namespace", { hint: "ainftp swarm … --sentry attaches it" });
      const list = ifaces.map(collectSentryStatus);
      io.out(o.json ? JSON.stringify(list, null, 2) + "\n" : list.map(renderSentryStatus).join("\n"));
    });
}

export function sentryReadmitCommand(io: IO): Command {
  return new Command("readmit")
    .summary("end a worker's quarantine now")
    .description("Ask the node on IFACE to re-admit quarantined workers; it takes the request at its next round.")
    .argument("<iface>", "interface the node runs on")
    .argument("<ranks...>", "ranks to re-admit")
    .action((iface: string, ranks: string[]) => {
      const parse = intOption(0, 63);
      const list = ranks.map((r) => parse(r));
      const s = collectSentryStatus(iface);
      if (!s.enabled || !s.node) throw new AinftpError("sentry readmit", `no node with --sentry is running on ${iface}`, { hint: "ainftp sentry status shows what runs" });
      const p = requestReadmit(iface, list);
      io.out(`asked the node on ${iface} (pid ${s.node.pid}) to re-admit rank${list.length > 1 ? "s" : ""} ${list.join(", ")} (${p})\n`);
    });
}
