// What a long-running node exposes to Prometheus (`swarm --metrics
// ADDR:PORT`): rounds and their times, retransmissions, the XDP program's
// drops by reason, the sentry's verdicts, the swarm's member states and the
// bytes reduced, in the text exposition format (version 0.0.4). Each scrape
// reads the live sources; only the round-time histogram is kept here.
import { isIPv4 } from "node:net";
import { COUNTERS, COUNTER_HELP, type CounterName, type Counters } from "./abi.ts";
import type { CollectiveStats, Communicator } from "./collective.ts";
import { AinftpError } from "./errors.ts";
import type { MemberState } from "./membership.ts";
import type { Swarm } from "./swarm.ts";

/** Upper bounds of the round-time histogram, seconds: 0.5 ms (a small round) to 10 s (the default round timeout). */
export const ROUND_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** XDP counters that count packets the program dropped (or did not sum), by reason. */
export const DROP_REASONS: CounterName[] = COUNTERS.filter(
  (c) => c.startsWith("mal_") || ["duplicate", "stale_round", "future_round", "foreign_job", "not_member", "result_dup", "ringbuf_full", "bad_source", "sentry_rejected", "late"].includes(c),
);

const MEMBER_STATES: MemberState[] = ["alive", "suspect", "dead", "left"];

/** What a scrape reads: the node's live state, each a cheap call. */
export interface MetricsSource {
  info: { rank: number; peers: number; job: number; iface: string };
  stats(): CollectiveStats;
  counters(): Counters;
  /** Per rank, contributions the sentry let through and dropped; null without it. */
  sentry(): { accepted: number; rejected: number }[] | null;
  quarantined(): number[];
  members(): { memberRank: number; state: MemberState }[];
  /** Bytes of f32 gradient one all-reduce carries. */
  bytesPerRound: number;
}

export class RoundHistogram {
  readonly counts = new Array<number>(ROUND_BUCKETS_S.length).fill(0);
  sum = 0;
  count = 0;

  observe(seconds: number): void {
    for (let i = 0; i < ROUND_BUCKETS_S.length; i++) if (seconds <= ROUND_BUCKETS_S[i]) this.counts[i]++;
    this.sum += seconds;
    this.count++;
  }
}

const esc = (v: string | number) => String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
const labels = (l: Record<string, string | number>) => {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${esc(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
};

/** A family: its HELP and TYPE lines, then one sample per entry. */
function family(name: string, type: "counter" | "gauge" | "histogram", help: string, samples: [Record<string, string | number>, number][], suffix = ""): string {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`];
  for (const [l, v] of samples) lines.push(`${name}${suffix}${labels(l)} ${Number.isFinite(v) ? v : 0}`);
  return lines.join("\n");
}

export class NodeMetrics {
  readonly rounds = new RoundHistogram();
  lost = 0;

  constructor(private readonly src: MetricsSource) {}

  /** A timed round completed in ms. */
  roundDone(ms: number): void {
    this.rounds.observe(ms / 1000);
  }

  roundLost(): void {
    this.lost++;
  }

  /** The exposition text of everything, now. */
  render(): string {
    const s = this.src.stats();
    const c = this.src.counters();
    const i = this.src.info;
    const h = this.rounds;
    const out: string[] = [];
    out.push(family("ainftp_node_info", "gauge", "This node: rank, members, job and interface.", [[{ rank: i.rank, peers: i.peers, job: i.job, iface: i.iface }, 1]]));
    out.push(family("ainftp_rounds_total", "counter", "Timed all-reduce rounds, by outcome (lost: a member died during it).", [[{ result: "completed" }, h.count], [{ result: "lost" }, this.lost]]));
    const hist = [`# HELP ainftp_round_duration_seconds Time of one timed all-reduce round.`, `# TYPE ainftp_round_duration_seconds histogram`];
    ROUND_BUCKETS_S.forEach((b, k) => hist.push(`ainftp_round_duration_seconds_bucket{le="${b}"} ${h.counts[k]}`));
    hist.push(`ainftp_round_duration_seconds_bucket{le="+Inf"} ${h.count}`, `ainftp_round_duration_seconds_sum ${h.sum}`, `ainftp_round_duration_seconds_count ${h.count}`);
    out.push(hist.join("\n"));
    out.push(family("ainftp_collective_rounds_total", "counter", "Protocol rounds run, barriers and warm-up included.", [[{}, s.rounds]]));
    out.push(family("ainftp_retransmits_total", "counter", "Contribution packets sent again after a timeout.", [[{}, s.retransmits]]));
    out.push(family("ainftp_retransmit_timeouts_total", "counter", "Retransmission timers that fired.", [[{}, s.timeouts]]));
    out.push(family("ainftp_resends_total", "counter", "Results sent again on a resend request.", [[{}, s.resends]]));
    out.push(family("ainftp_probe_answers_total", "counter", "Results sent again in answer to a member's probe.", [[{}, s.probeAnswers]]));
    out.push(family("ainftp_packets_sent_total", "counter", "Contribution and result packets sent.", [[{}, s.packetsSent]]));
    out.push(family("ainftp_packets_copied_total", "counter", "Of the packets sent, second copies (small rounds under loss).", [[{}, s.copiesSent]]));
    out.push(family("ainftp_rounds_paced_total", "counter", "Rounds whose window the measured egress rate capped (a link slower than the hosts).", [[{}, s.pacedRounds]]));
    out.push(family("ainftp_rounds_speculated_total", "counter", "Rounds whose contributions started before the plan, under the last plan's scale.", [[{}, s.specRounds]]));
    out.push(family("ainftp_packets_speculated_again_total", "counter", "Speculative contributions sent again: the plan's scale or active set was not the predicted one.", [[{}, s.specResent]]));
    out.push(family("ainftp_partial_rounds_total", "counter", "Rounds whose plan left members out (late, down-ranked, past the quorum).", [[{}, s.partialRounds]]));
    out.push(family("ainftp_deadline_closes_total", "counter", "Owned slots closed at the deadline with the contributions present.", [[{}, s.deadlineCloses]]));
    out.push(family("ainftp_xdp_packets_total", "counter", "ainftp packets the XDP program received.", [[{}, c.rx]]));
    out.push(family("ainftp_xdp_drops_total", "counter", "Packets the XDP program dropped or did not sum, by reason (see ainftp status).",
      DROP_REASONS.map((r) => [{ reason: r }, c[r]] as [Record<string, string>, number])));
    out.push(family("ainftp_xdp_completed_slots_total", "counter", COUNTER_HELP.completed, [[{}, c.completed]]));
    out.push(family("ainftp_bytes_reduced_total", "counter", "Bytes of f32 gradient all-reduced in completed timed rounds.", [[{}, h.count * this.src.bytesPerRound]]));
    out.push(family("ainftp_xdp_elements_summed_total", "counter", COUNTER_HELP.elems_summed, [[{}, c.elems_summed]]));
    const sentry = this.src.sentry();
    const verdicts: [Record<string, string | number>, number][] = [];
    sentry?.forEach((w, k) => verdicts.push([{ rank: k, verdict: "accepted" }, w.accepted], [{ rank: k, verdict: "rejected" }, w.rejected]));
    out.push(family("ainftp_sentry_verdicts_total", "counter", "The sentry's verdicts on contributions to chunks we own, per sending rank (none without --sentry).", verdicts));
    const q = new Set(this.src.quarantined());
    out.push(family("ainftp_sentry_quarantined", "gauge", "1 when our sentry holds the rank in quarantine.",
      sentry ? sentry.map((_, k) => [{ rank: k }, q.has(k) ? 1 : 0] as [Record<string, number>, number]) : []));
    const members = this.src.members();
    out.push(family("ainftp_members", "gauge", "Members of the swarm in each state, as this node sees them.",
      MEMBER_STATES.map((st) => [{ state: st }, members.filter((m) => m.state === st).length] as [Record<string, string>, number])));
    out.push(family("ainftp_member_state", "gauge", "1 for each member's current state.", members.map((m) => [{ rank: m.memberRank, state: m.state }, 1] as [Record<string, string | number>, number])));
    return out.join("\n") + "\n";
  }
}

/** Parses ADDR:PORT (IPv4, or localhost) for --metrics. */
export function parseListen(value: string): { hostname: string; port: number } {
  const m = /^(.+):(\d{1,5})$/.exec(value.trim());
  const host = m?.[1] ?? "";
  const port = Number(m?.[2]);
  if (!m || !(isIPv4(host) || host === "localhost") || !Number.isInteger(port) || port < 1 || port > 65535)
    throw new AinftpError("metrics", `'${value}' is not ADDR:PORT`, { hint: "give an IPv4 address and a port, e.g. --metrics 127.0.0.1:9464 (0.0.0.0:9464 for every interface)" });
  return { hostname: host, port };
}

/** Serves GET /metrics at listen until stop(); any other path is a 404. */
export function serveMetrics(listen: string, metrics: NodeMetrics): { url: string; stop(): void } {
  const { hostname, port } = parseListen(listen);
  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({
      hostname, port,
      fetch(req) {
        if (new URL(req.url).pathname !== "/metrics") return new Response("ainftp: metrics are at /metrics\n", { status: 404 });
        return new Response(metrics.render(), { headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" } });
      },
    });
  } catch (e) {
    throw new AinftpError("metrics", `cannot listen on ${listen}: ${e instanceof Error ? e.message : e}`, {
      hint: "pick a free port, or an address of this host (ip -br addr)",
    });
  }
  return { url: `http://${hostname}:${server.port}/metrics`, stop: () => server.stop(true) };
}

/** The sources of a node that runs a Communicator and a Swarm, served at listen. */
export function startNodeMetrics(
  listen: string,
  comm: Pick<Communicator, "stats" | "counters" | "sentry" | "sentryCounts">,
  swarm: Pick<Swarm, "view">,
  o: { rank: number; peers: number; job: number; iface: string; bytesPerRound: number },
): NodeMetrics & { url: string; stop(): void } {
  const m = new NodeMetrics({
    info: { rank: o.rank, peers: o.peers, job: o.job, iface: o.iface },
    stats: () => comm.stats,
    counters: () => comm.counters(),
    sentry: () => (comm.sentry ? comm.sentryCounts() : null),
    quarantined: () => comm.sentry?.status().workers.filter((w) => w.quarantined).map((w) => w.rank) ?? [],
    members: () => swarm.view(),
    bytesPerRound: o.bytesPerRound,
  });
  const s = serveMetrics(listen, m);
  return Object.assign(m, s);
}
