// Link shaping for the bench's bandwidth-bound regime: a token bucket (tbf)
// on both directions of every host's link. This kernel has no sch_netem (nor
// sch_fq); tbf and htb are there, and tbf is all a rate limit needs.
//
//   host eth0 egress          → what the host sends is paced to RATE
//   bridge port p<i> egress   → what the host receives is paced to RATE
//
// Burst and queue (docs/bench.md, "Shaped links"): the bucket holds at least
// two 64 KiB GSO/TSO frames (TCP's TSO skbs and ainftp's UDP GSO batches are
// both ≤ 64 KiB; tbf would otherwise cut each into segments), or 1 ms of
// RATE when that is more; the queue holds 50 ms of RATE, 4 MiB at least, so
// that N−1 senders converging on one bridge port (ainftp's contributions to
// one owner) queue instead of being dropped. The qdiscs' drops are read and
// reported per run. Every qdisc this process adds is removed by remove(), by
// removeAllShaping() (the bench's Ctrl-C path) and on process exit.
import { AinftpError } from "../errors.ts";

/** tc's rate units (decimal, in bits per second), as `tc` spells them. */
export const RATE_UNITS: Readonly<Record<string, number>> = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9, tbit: 1e12 };
/** The largest GSO/TSO frame: 64 KiB. */
export const GSO_MAX_BYTES = 65536;
const MIN_RATE_BPS = 1e6;
const MAX_RATE_BPS = 400e9;

/** A rate in bits per second, or null for `none` (unshaped). Accepts tc's
 * decimal units: 1gbit, 2.5gbit, 500mbit, 100000kbit. */
export function parseRate(text: string): number | null {
  const s = text.trim().toLowerCase();
  if (s === "none" || s === "unshaped") return null;
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]+)$/.exec(s);
  const unit = m ? RATE_UNITS[m[2]] : undefined;
  if (!m || unit === undefined)
    throw new AinftpError("link rate", `"${text}" is not a rate: give a number and one of the units ${Object.keys(RATE_UNITS).join(", ")} (bits per second, as tc spells them), or none`, {
      hint: `e.g. --link-rate none,1gbit or 2.5gbit or 500mbit${/bps$|b\/s$|bit\/s$/.test(s) ? ` ("${m?.[2] ?? s}" is not one: tc reads "gbps" as gigaBYTES per second, so the bench takes only the *bit forms)` : ""}`,
    });
  const bps = Math.round(Number(m[1]) * unit);
  if (bps < MIN_RATE_BPS || bps > MAX_RATE_BPS)
    throw new AinftpError("link rate", `"${text}" is out of range: give 1mbit..400gbit, or none`);
  return bps;
}

/** A comma-separated list of rates (`none,1gbit`), in the order given, without repeats. */
export function parseRates(list: string): (number | null)[] {
  const items = list.split(",").map((s) => s.trim()).filter(Boolean);
  if (!items.length) throw new AinftpError("link rate", "no rate given", { hint: "e.g. --link-rate none,1gbit" });
  const out: (number | null)[] = [];
  for (const it of items) {
    const r = parseRate(it);
    if (!out.includes(r)) out.push(r);
  }
  return out;
}

/** "1 Gbit/s", "2.5 Gbit/s", "500 Mbit/s", or "unshaped". */
export function formatRate(bps: number | null): string {
  if (bps === null) return "unshaped";
  for (const [u, f] of [["Tbit/s", 1e12], ["Gbit/s", 1e9], ["Mbit/s", 1e6], ["kbit/s", 1e3]] as const)
    if (bps >= f) return `${+(bps / f).toFixed(3)} ${u}`;
  return `${bps} bit/s`;
}

/** tc's spelling of a rate ("1gbit", "2500mbit"): exact, for the command line. */
export function tcRate(bps: number): string {
  for (const [u, f] of [["gbit", 1e9], ["mbit", 1e6], ["kbit", 1e3]] as const) if (bps % f === 0) return `${bps / f}${u}`;
  return `${bps}bit`;
}

export interface TbfParams {
  rate_bps: number;
  /** Bucket size: what may leave at the link's own speed after an idle moment. */
  burst_bytes: number;
  /** Queue: bytes that may wait for tokens before tbf drops. */
  limit_bytes: number;
}

/** Burst: two 64 KiB GSO frames, or 1 ms of the rate when more; queue: 50 ms of the rate, 4 MiB at least. */
export function tbfParams(rateBps: number): TbfParams {
  const perMs = rateBps / 8 / 1000;
  return {
    rate_bps: rateBps,
    burst_bytes: Math.max(2 * GSO_MAX_BYTES, Math.ceil(perMs)),
    limit_bytes: Math.max(4 << 20, Math.ceil(50 * perMs)),
  };
}

/** One direction of one link: a device in a network namespace (by path, /run/netns/NAME). */
export interface ShapedDev {
  netns: string;
  dev: string;
  /** What this direction carries, e.g. "h0 tx". */
  label: string;
}

export interface QdiscStats {
  bytes: number;
  packets: number;
  drops: number;
  overlimits: number;
}

function tc(netns: string, args: string[]): { code: number; out: string; err: string } {
  const r = Bun.spawnSync(["nsenter", `--net=${netns}`, "tc", ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString().trim() };
}

const live = new Set<LinkShaper>();
let exitHook = false;

/** A rate limit on a set of devices (both directions of every host's link). */
export class LinkShaper {
  readonly params: TbfParams;
  private applied: ShapedDev[] = [];

  private constructor(readonly devs: ShapedDev[], rateBps: number) {
    this.params = tbfParams(rateBps);
  }

  /** Adds a root tbf to every device (replacing any root qdisc there); removes what it added if one fails. */
  static apply(devs: ShapedDev[], rateBps: number): LinkShaper {
    const s = new LinkShaper(devs, rateBps);
    if (!exitHook) {
      exitHook = true;
      process.on("exit", () => removeAllShaping());
    }
    live.add(s);
    const p = s.params;
    for (const d of devs) {
      const r = tc(d.netns, ["qdisc", "replace", "dev", d.dev, "root", "tbf", "rate", tcRate(p.rate_bps), "burst", String(p.burst_bytes), "limit", String(p.limit_bytes)]);
      if (r.code !== 0) {
        s.remove();
        throw new AinftpError("link rate", `tc could not add tbf on ${d.dev} (${d.label}): ${r.err}`, {
          hint: "the bench needs sch_tbf (CONFIG_NET_SCH_TBF) and iproute2's tc; run without --link-rate to measure unshaped",
        });
      }
      s.applied.push(d);
    }
    return s;
  }

  /** Counters of each device's tbf (bytes and packets it passed, drops, overlimits), by label. */
  stats(): Record<string, QdiscStats> {
    const out: Record<string, QdiscStats> = {};
    for (const d of this.applied) out[d.label] = qdiscStats(d.netns, d.dev) ?? { bytes: 0, packets: 0, drops: 0, overlimits: 0 };
    return out;
  }

  /** Deletes the qdiscs this shaper added (idempotent; a namespace already gone is fine). */
  remove(): void {
    for (const d of this.applied.splice(0)) tc(d.netns, ["qdisc", "del", "dev", d.dev, "root"]);
    live.delete(this);
  }
}

/** The root tbf's counters on a device, or null when it has none. */
export function qdiscStats(netns: string, dev: string): QdiscStats | null {
  const r = tc(netns, ["-s", "-j", "qdisc", "show", "dev", dev]);
  if (r.code !== 0) return null;
  try {
    const q = (JSON.parse(r.out) as { kind: string; root?: boolean; bytes: number; packets: number; drops: number; overlimits: number }[]).find((x) => x.root && x.kind === "tbf");
    return q ? { bytes: q.bytes, packets: q.packets, drops: q.drops, overlimits: q.overlimits } : null;
  } catch {
    return null;
  }
}

/** Removes every qdisc any shaper of this process added (Ctrl-C, exit). */
export function removeAllShaping(): void {
  for (const s of [...live]) s.remove();
}

// ---- the arithmetic: bandwidth figures (nccl-tests' conventions) and the shaping check -----------

export interface Bandwidth {
  /** float32 bytes ÷ round time. */
  algbw_bytes_per_s: number;
  /** algbw × 2(N−1)/N: what each rank's link carries in a ring, the figure to hold against the link's speed. */
  busbw_bytes_per_s: number;
  /** Shaped runs: bytes each host put on the wire per round ÷ (rate × round time); null unshaped. */
  line_rate_fraction: number | null;
}

/** nccl-tests' algbw and busbw for an all-reduce of `bytes` over `peers` ranks in `ms`, and
 * with a rate, the fraction of it the wire bytes (per host per round) took. */
export function bandwidth(o: { bytes: number; peers: number; ms: number; rateBps: number | null; wireBytesPerHostPerRound: number | null }): Bandwidth {
  const algbw = o.bytes / (o.ms / 1000);
  return {
    algbw_bytes_per_s: algbw,
    busbw_bytes_per_s: (algbw * 2 * (o.peers - 1)) / o.peers,
    line_rate_fraction: o.rateBps !== null && o.wireBytesPerHostPerRound !== null ? o.wireBytesPerHostPerRound / ((o.rateBps / 8) * (o.ms / 1000)) : null,
  };
}

/** Interface byte counters of one host at one moment (the sampler's per-namespace series): read
 * between t0Ms and t1Ms (both tMs when known exactly). */
export interface LinkSample {
  tMs: number;
  txBytes: number;
  rxBytes: number;
  t0Ms?: number;
  t1Ms?: number;
}

export interface PeakRate {
  /** Highest tx and rx rate over any window of at least windowMs, bits/s. */
  tx_bps: number;
  rx_bps: number;
}

/** A link's highest rate over windows of at least `windowMs`: for each sample, the first later one
 * at least windowMs away; 0 when the series is shorter than one window. A window runs from the
 * start of one reading to the end of the other (the widest the readings allow), so a reader that
 * was descheduled mid-sample does not make the link look faster than it was. */
export function peakRate(samples: LinkSample[], windowMs: number): PeakRate {
  let tx = 0, rx = 0;
  let j = 0;
  const start = (s: LinkSample) => s.t0Ms ?? s.tMs;
  const end = (s: LinkSample) => s.t1Ms ?? s.tMs;
  let whole = false;
  for (let i = 0; i < samples.length; i++) {
    if (j <= i) j = i + 1;
    while (j < samples.length && end(samples[j]) - start(samples[i]) < windowMs) j++;
    if (j >= samples.length) break;
    whole = true;
    const dt = (end(samples[j]) - start(samples[i])) / 1000;
    tx = Math.max(tx, ((samples[j].txBytes - samples[i].txBytes) * 8) / dt);
    rx = Math.max(rx, ((samples[j].rxBytes - samples[i].rxBytes) * 8) / dt);
  }
  // a run shorter than one window (a fast system's few rounds): what moved
  // in it, over the window that holds it, a lower bound of that window's rate
  if (!whole && samples.length >= 2) {
    const a = samples[0], b = samples[samples.length - 1];
    tx = ((b.txBytes - a.txBytes) * 8) / (windowMs / 1000);
    rx = ((b.rxBytes - a.rxBytes) * 8) / (windowMs / 1000);
  }
  return { tx_bps: tx, rx_bps: rx };
}

/** What a token bucket lets through over `windowMs` at most, as a rate: rate + burst ÷ window. */
export function allowedRate(p: TbfParams, windowMs: number): number {
  return p.rate_bps + (p.burst_bytes * 8) / (windowMs / 1000);
}
