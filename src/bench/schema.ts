// The JSON of `ainftp bench --json` as a JSON Schema (hand-written, the
// subset below), and a validator for that subset: type (with "integer" and
// "null"), properties, required, additionalProperties, items, enum, const,
// minimum, anyOf. Field names are stable; docs/bench.md lists them.
import { METRIC_NAMES } from "./rows.ts";

export type JsonSchema = {
  $schema?: string;
  $id?: string;
  title?: string;
  description?: string;
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  items?: JsonSchema;
  enum?: unknown[];
  const?: unknown;
  minimum?: number;
  anyOf?: JsonSchema[];
};

const num: JsonSchema = { type: "number" };
const int: JsonSchema = { type: "integer", minimum: 0 };
const str: JsonSchema = { type: "string" };
const bool: JsonSchema = { type: "boolean" };
const numOrNull: JsonSchema = { type: ["number", "null"] };
const strOrNull: JsonSchema = { type: ["string", "null"] };
const boolOrNull: JsonSchema = { type: ["boolean", "null"] };
const nums: JsonSchema = { type: "array", items: num };
const systemName: JsonSchema = { enum: ["ainftp", "ainftp-8", "ainftp-4", "tcp", "gloo", "mpi"] };
const baselineName: JsonSchema = { enum: ["tcp", "gloo", "mpi"] };

/** An object whose every listed property is required and nothing else is allowed. */
function obj(properties: Record<string, JsonSchema>, o: { optional?: string[]; open?: boolean } = {}): JsonSchema {
  return {
    type: "object",
    properties,
    required: Object.keys(properties).filter((k) => !o.optional?.includes(k)),
    additionalProperties: o.open ?? false,
  };
}

const nullable = (s: JsonSchema): JsonSchema => ({ anyOf: [s, { type: "null" }] });
const bySystem = (v: JsonSchema): JsonSchema => ({ type: "object", properties: { ainftp: v, "ainftp-8": v, "ainftp-4": v, tcp: v, gloo: v, mpi: v }, additionalProperties: false });
const errorObj = obj({ error: str });

const quantiles = obj({ median: num, p10: num, p90: num, p99: num });

const window = obj({
  intervals: int, activeIntervals: int, sampledMs: num, activeMs: num, cpuMs: num, softirqMs: num, netRx: num, netTx: num,
  ioBytes: num, wireBytes: num, rxBytes: num, rxPackets: num, ctxSwitches: num, cpuMsAll: num, maxIntervalMs: num, timedOnly: bool, timedMarks: int, ksoftirqdMs: num,
}, { optional: ["timedMarks", "ksoftirqdMs"] });

const wire = obj({
  tx_bytes_per_host_per_round: num, rx_bytes_per_host_per_round: num, tx_packets_per_host_per_round: num,
  rx_packets_per_host_per_round: num, rx_frames_per_host_per_round: num,
});

const counters = obj({
  wakeups_per_round: numOrNull, wakeups_source: strOrNull, packets_per_round: numOrNull, copy_bytes_per_round: numOrNull, copy_source: strOrNull,
});

const metrics = obj(Object.fromEntries(METRIC_NAMES.map((k) => [k, numOrNull])));
const metricNotes: JsonSchema = { type: "object", properties: Object.fromEntries(METRIC_NAMES.map((k) => [k, str])), additionalProperties: false };

const bandwidth = obj({ algbw_bytes_per_s: num, busbw_bytes_per_s: num, line_rate_fraction: numOrNull });

const shaping = obj({
  rate_bps: num, burst_bytes: int, limit_bytes: int, window_ms: num, peak_tx_bps: num, peak_rx_bps: num, allowed_bps: num,
  within_rate: bool, qdisc_drops: int, qdisc_overlimits: int,
});

const tbf = obj({ rate_bps: num, burst_bytes: int, limit_bytes: int });

const status: JsonSchema = { enum: ["ok", "na", "failed"] };

const backToBack = obj({
  status, reason: strOrNull, verified: boolOrNull, warmup: int, rounds: int, round_ms: nullable(quantiles), round_times_ms: nums,
  wall_ms: numOrNull, wire: nullable(wire), bandwidth: nullable(bandwidth), shaping: nullable(shaping), detail: {},
});

const systemRun = obj({
  system: systemName, label: str, version: strOrNull, status, reason: strOrNull, verified: boolOrNull,
  peers: int, bytes: int, warmup: int, rounds: int, round_ms: nullable(quantiles), round_times_ms: nums, round_cpu_ms: nullable(nums), wall_ms: numOrNull,
  wire: nullable(wire), window: nullable(window), softirqs: nullable(obj({ net_rx: num, net_tx: num })), counters, metrics, na: metricNotes,
  detail: {},
  // ainftp-bench/2: the regime's link rate, nccl-tests' bandwidth figures, the shaping check, the back-to-back run
  link_rate_bps: numOrNull, bandwidth: nullable(bandwidth), shaping: nullable(shaping), back_to_back: nullable(backToBack),
});

const metricRow = obj(
  {
    id: str, group: str, metric: str, unit: str, values: bySystem(numOrNull), notes: bySystem(str), best_peer: nullable(baselineName),
    ratio: numOrNull, ratios: bySystem(numOrNull), brief_claim: strOrNull, text: obj({ baselines: str, ainftp: str }), higher_is_better: bool,
  },
  { optional: ["text", "higher_is_better", "ratios"] },
);

const tlb = obj({
  method: str, bytes: int, steps: int, runs: int, ns_per_access_4k: numOrNull, ns_per_access_2m: numOrNull, runs_4k: nums, runs_2m: nums,
  ratio: numOrNull, kernel_page_size_4k: numOrNull, kernel_page_size_2m: numOrNull, perf_per_access_4k: numOrNull, perf_per_access_2m: numOrNull,
  hugepages_reserved: int, skipped_2m: strOrNull, perf: obj({ event: str, supported: bool, why: strOrNull }),
});

const sentry = obj({
  method: str, elems: int, frame_bytes: int, xdp_ns_per_packet_off: num, xdp_ns_per_packet_on: num, inline_ns_per_packet: num, inline_ns_spread: num,
  userspace_sampled_ns_per_packet: num, userspace_full_ns_per_packet: num, runs: int, repeat: int, packets: int,
  auth_elems: int, auth_header_ns_per_packet: num, auth_header_ns_spread: num, auth_full_ns_per_packet: num, auth_full_ns_spread: num,
  control_mac_ns_per_frame: num,
});

/** `bench --slurm`: the allocation's nodes as probed, how the ranks were started, and the check after the run. */
const cluster = obj({
  scheduler: { const: "slurm" }, job_id: str, nodelist: str,
  nodes: {
    type: "array",
    items: obj({
      name: str, hostname: str, addr: str, iface: str, driver: strOrNull, driver_version: strOrNull, firmware: strOrNull, bus_info: strOrNull,
      mtu: nullable(int), speed_mbps: numOrNull, irq_vectors: int, xdp_mode: strOrNull, kernel: str, cores: int, cpu_model: str,
    }),
  },
  shared_kernel: bool, srun: str, launch: { type: "object", additionalProperties: str },
  after: { type: "array", items: obj({ node: str, program_id: int, pins: bool, removed: { type: "array", items: str } }) },
  left_as_found: bool,
});

export const BENCH_SCHEMA: JsonSchema = {
  $schema: "https://json-schema.org/draft/2020-12/schema",
  $id: "ainftp-bench/2",
  title: "ainftp bench result",
  ...obj({
    schema: { const: "ainftp-bench/2" },
    date: str,
    command: str,
    duration_s: num,
    config: obj({
      peers: { type: "array", items: int }, sizes: { type: "array", items: int }, rounds: int, baselines: { type: "array", items: baselineName },
      mtu: int, xdp_mode: str, rx: str, subnet: str, chunk_elems: int, sample_interval_ms: num, active_bytes: int,
      link_rates: { type: "array", items: numOrNull }, back_to_back: bool, sweep: bool, shaping_window_ms: num, shaped_sizes: { type: "array", items: int },
      bits: { type: "array", items: { enum: [16, 8, 4] } },
    }, { optional: ["bits"] }),
    machine: obj({
      kernel: str, cores: int, cpu_model: str, memory_bytes: int, virtualization: strOrNull, loadavg_1m: num, bun: str, ainftp: str,
      mtu: int, xdp_mode: str, af_xdp: str, links: str,
    }),
    runs: {
      type: "array",
      items: obj({
        peers: int, bytes: int, systems: { type: "array", items: systemRun }, rows: { type: "array", items: metricRow },
        link_rate_bps: numOrNull, regime: str, tbf: nullable(tbf),
      }),
    },
    scaling: {
      type: "array",
      items: obj({ peers: int, bytes: int, link_rate_bps: numOrNull, round_ms_median: bySystem(numOrNull), best_peer: nullable(baselineName), ratio: numOrNull }),
    },
    tlb: { anyOf: [tlb, errorObj, { type: "null" }] },
    sentry: { anyOf: [sentry, errorObj, { type: "null" }] },
    straggler: obj({
      status: { enum: ["measured", "n/a"] }, reason: strOrNull, delay_ms: num, peers: nullable(int), bytes: nullable(int), round_ms_median: numOrNull,
      undelayed_round_ms_median: numOrNull, tcp_round_ms_median: numOrNull, verified: nullable(bool), passive_rounds: nullable(int), rounds: int, ratio: numOrNull,
    }),
    machine_rows: { type: "array", items: metricRow },
    verified: bool,
    // only in a --slurm run (still ainftp-bench/2: a local run's JSON is unchanged)
    cluster: nullable(cluster),
  }, { optional: ["cluster"] }),
};

function typeOf(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

function typeMatches(t: string, v: unknown): boolean {
  if (t === "integer") return typeof v === "number" && Number.isInteger(v);
  if (t === "number") return typeof v === "number" && Number.isFinite(v);
  return typeOf(v) === t;
}

/** Problems of `value` against `schema`, as "path: what" lines; [] when it validates. */
export function validate(value: unknown, schema: JsonSchema, path = "$"): string[] {
  const out: string[] = [];
  if (schema.anyOf) {
    const fits = schema.anyOf.map((s) => validate(value, s, path));
    if (!fits.some((f) => f.length === 0)) out.push(`${path}: matches none of ${schema.anyOf.length} alternatives (${fits.map((f) => f[0]).join(" | ")})`);
  }
  if (schema.const !== undefined && JSON.stringify(value) !== JSON.stringify(schema.const)) out.push(`${path}: must be ${JSON.stringify(schema.const)}`);
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value)))
    out.push(`${path}: ${JSON.stringify(value)} is not one of ${schema.enum.map((e) => JSON.stringify(e)).join(", ")}`);
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!types.some((t) => typeMatches(t, value))) {
      out.push(`${path}: expected ${types.join(" or ")}, got ${typeOf(value)}${typeof value === "number" ? ` ${value}` : ""}`);
      return out;
    }
  }
  if (schema.minimum !== undefined && typeof value === "number" && value < schema.minimum) out.push(`${path}: ${value} < ${schema.minimum}`);
  if (typeOf(value) === "object") {
    const o = value as Record<string, unknown>;
    for (const k of schema.required ?? []) if (!(k in o)) out.push(`${path}: missing ${k}`);
    for (const [k, v] of Object.entries(o)) {
      const p = schema.properties?.[k];
      if (p) out.push(...validate(v, p, `${path}.${k}`));
      else if (schema.additionalProperties === false) out.push(`${path}: unexpected property ${k}`);
      else if (typeof schema.additionalProperties === "object") out.push(...validate(v, schema.additionalProperties, `${path}.${k}`));
    }
  }
  if (Array.isArray(value) && schema.items) value.forEach((v, i) => out.push(...validate(v, schema.items!, `${path}[${i}]`)));
  return out;
}

/** Problems of a bench result against BENCH_SCHEMA. */
export function validateBenchJson(value: unknown): string[] {
  return validate(JSON.parse(JSON.stringify(value)), BENCH_SCHEMA);
}
