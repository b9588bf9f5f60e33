// `swarm --metrics ADDR:PORT`: the Prometheus text exposition of a node.
// The format is checked line by line on a fake node, then a real swarm in two
// network namespaces is scraped twice mid-run: the counters move, the round
// histogram is consistent, the members are alive.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { COUNTERS, type Counters } from "../src/abi.ts";
import type { CollectiveStats } from "../src/collective.ts";
import { DROP_REASONS, NodeMetrics, ROUND_BUCKETS_S, parseListen } from "../src/metrics.ts";
import { AinftpError } from "../src/errors.ts";
import { BIN, canUseNetns, createLab, ensureBuilt, until, type Lab } from "./helpers/netns.ts";

const kernel = canUseNetns();
if (!kernel) console.warn("[metrics] the scrape of a real swarm is SKIPPED: needs root and network namespaces");

/** Samples by name and labels ("name{a=\"1\"}" → value); checks every line's syntax on the way. */
function parse(text: string): { samples: Map<string, number>; types: Map<string, string> } {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const t = /^# TYPE ([a-z_]+) (counter|gauge|histogram)$/.exec(line);
    if (t) {
      expect(types.has(t[1])).toBe(false);
      types.set(t[1], t[2]);
      continue;
    }
    if (line.startsWith("# HELP ")) continue;
    const m = /^([a-z_]+)(\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+)$/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const family = m[1].replace(/_(bucket|sum|count)$/, "");
    expect(types.has(m[1]) || types.has(family)).toBe(true);
    samples.set(m[1] + (m[2] ?? ""), Number(m[3]));
  }
  return { samples, types };
}

function fakeStats(): CollectiveStats {
  return {
    rounds: 12, retransmits: 5, resends: 2, probeAnswers: 4, timeouts: 3, saturations: 0, wakeups: 0, controlReceived: 0, packetsSent: 900, copiesSent: 60, pacedRounds: 7, specRounds: 9, specResent: 3, prepackedRounds: 0, expsLeftOut: 0, gatheredEarly: 0,
    partialRounds: 1, passiveRounds: 0, deadlineCloses: 0, outsidersRefused: 0, phaseMs: { exps: 0, control: 0, work: 0, wait: 0, gather: 0 },
  };
}

describe("exposition format", () => {
  test("every family has HELP and TYPE; rounds, histogram, retransmits, drops by reason, sentry verdicts, member states and bytes", () => {
    const counters = Object.fromEntries(COUNTERS.map((c, i) => [c, i + 1])) as Counters;
    const m = new NodeMetrics({
      info: { rank: 1, peers: 3, job: 7, iface: "eth0" },
      stats: fakeStats, counters: () => counters,
      sentry: () => [{ accepted: 10, rejected: 0 }, { accepted: 9, rejected: 0 }, { accepted: 1, rejected: 8 }],
      quarantined: () => [2],
      members: () => [{ memberRank: 0, state: "alive" }, { memberRank: 1, state: "alive" }, { memberRank: 2, state: "dead" }],
      bytesPerRound: 1 << 20,
    });
    for (const ms of [0.3, 4, 4.5, 30, 20_000]) m.roundDone(ms);
    m.roundLost();
    const { samples: s, types } = parse(m.render());
    expect(types.get("ainftp_round_duration_seconds")).toBe("histogram");
    expect(s.get('ainftp_rounds_total{result="completed"}')).toBe(5);
    expect(s.get('ainftp_rounds_total{result="lost"}')).toBe(1);
    expect(s.get('ainftp_round_duration_seconds_bucket{le="0.0005"}')).toBe(1);
    expect(s.get('ainftp_round_duration_seconds_bucket{le="0.005"}')).toBe(3);
    expect(s.get('ainftp_round_duration_seconds_bucket{le="10"}')).toBe(4);
    expect(s.get('ainftp_round_duration_seconds_bucket{le="+Inf"}')).toBe(5);
    expect(s.get("ainftp_round_duration_seconds_count")).toBe(5);
    expect(s.get("ainftp_round_duration_seconds_sum")).toBeCloseTo(20.0388, 6);
    // buckets never decrease
    const b = ROUND_BUCKETS_S.map((x) => s.get(`ainftp_round_duration_seconds_bucket{le="${x}"}`)!);
    for (let i = 1; i < b.length; i++) expect(b[i]).toBeGreaterThanOrEqual(b[i - 1]);
    expect(s.get("ainftp_retransmits_total")).toBe(5);
    expect(s.get("ainftp_packets_copied_total")).toBe(60);
    expect(s.get("ainftp_rounds_paced_total")).toBe(7);
    expect(s.get("ainftp_rounds_speculated_total")).toBe(9);
    expect(s.get("ainftp_packets_speculated_again_total")).toBe(3);
    expect(s.get("ainftp_probe_answers_total")).toBe(4);
    expect(s.get("ainftp_retransmit_timeouts_total")).toBe(3);
    for (const r of DROP_REASONS) expect(s.get(`ainftp_xdp_drops_total{reason="${r}"}`)).toBe(counters[r]);
    expect(DROP_REASONS).toContain("mal_magic");
    expect(DROP_REASONS).toContain("duplicate");
    expect(DROP_REASONS).not.toContain("summed");
    expect(s.get('ainftp_sentry_verdicts_total{rank="2",verdict="rejected"}')).toBe(8);
    expect(s.get('ainftp_sentry_quarantined{rank="2"}')).toBe(1);
    expect(s.get('ainftp_sentry_quarantined{rank="0"}')).toBe(0);
    expect(s.get('ainftp_members{state="alive"}')).toBe(2);
    expect(s.get('ainftp_members{state="dead"}')).toBe(1);
    expect(s.get('ainftp_member_state{rank="2",state="dead"}')).toBe(1);
    expect(s.get("ainftp_bytes_reduced_total")).toBe(5 << 20);
    expect(s.get('ainftp_node_info{rank="1",peers="3",job="7",iface="eth0"}')).toBe(1);
  });

  test("--metrics takes ADDR:PORT and names the fix otherwise", () => {
    expect(parseListen("127.0.0.1:9464")).toEqual({ hostname: "127.0.0.1", port: 9464 });
    expect(parseListen("localhost:1")).toEqual({ hostname: "localhost", port: 1 });
    for (const bad of ["9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "example.com:80", ":9464"]) {
      let e: unknown;
      try {
        parseListen(bad);
      } catch (x) {
        e = x;
      }
      expect(e).toBeInstanceOf(AinftpError);
      expect((e as AinftpError).hint).toContain("127.0.0.1:9464");
    }
  });
});

describe.skipIf(!kernel)("a real swarm, scraped mid-run", () => {
  let lab: Lab;
  beforeAll(() => {
    ensureBuilt();
    lab = createLab("metr", ["n0", "n1"], { subnet: "10.213.74" });
  });
  afterAll(() => lab?.destroy());

  test("two scrapes of rank 0 while it runs: rounds and bytes grow, the histogram counts every completed round, both members alive", async () => {
    const peers = ["n0", "n1"].map((n) => lab.node(n).addr).join(",");
    const args = (k: number) => [BIN, "swarm", "--iface", "eth0", "--peers", peers, "--rank", String(k), "--synthetic", "256KiB", "--rounds", "100000"];
    const p0 = lab.spawn("n0", [...args(0), "--metrics", "127.0.0.1:9464"]);
    const p1 = lab.spawn("n1", args(1));
    const scrape = () => {
      const r = lab.run("n0", ["bun", "-e", "const r = await fetch('http://127.0.0.1:9464/metrics'); console.log(r.headers.get('content-type')); console.log(await r.text())"], { timeoutMs: 5000 });
      return r.code === 0 ? r.stdout : "";
    };
    const firstText = await until(() => {
      const t = scrape();
      return /ainftp_rounds_total\{result="completed"\} [1-9]/.test(t) ? t : "";
    }, 15_000, 200);
    expect(firstText).toStartWith("text/plain; version=0.0.4");
    await Bun.sleep(500);
    const secondText = scrape();
    p0.kill("SIGTERM");
    p1.kill("SIGTERM");
    const [c0, err0] = [await p0.exited, await new Response(p0.stderr).text()];
    await p1.exited;
    const body = (t: string) => t.slice(t.indexOf("\n") + 1);
    const a = parse(body(firstText)).samples, b = parse(body(secondText)).samples;
    const done = (s: Map<string, number>) => s.get('ainftp_rounds_total{result="completed"}')!;
    expect(done(b)).toBeGreaterThan(done(a));
    expect(b.get('ainftp_round_duration_seconds_bucket{le="+Inf"}')).toBe(done(b));
    expect(b.get("ainftp_bytes_reduced_total")).toBe(done(b) * 256 * 1024);
    expect(b.get("ainftp_xdp_packets_total")!).toBeGreaterThan(a.get("ainftp_xdp_packets_total")!);
    expect(b.get('ainftp_members{state="alive"}')).toBe(2);
    expect(b.get('ainftp_xdp_drops_total{reason="mal_magic"}')).toBe(0);
    expect(c0).toBe(130);
    expect(err0).toContain("ainftp: metrics at http://127.0.0.1:9464/metrics");
    console.log(`[metrics] a scrape of rank 0 (excerpt):\n${body(secondText).split("\n").filter((l) => /^(# TYPE )?ainftp_(rounds_total|round_duration_seconds|retransmits_total|xdp_drops_total\{reason="(duplicate|mal_magic|late)"|members|bytes_reduced|xdp_packets)/.test(l)).join("\n")}`);
  }, 60_000);
});
