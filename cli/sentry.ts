// `ainftp sentry`: the Sentry's commands. `eval` trains a model with n
// workers, f of them Byzantine, over a grid of attacks, aggregators, the
// inline filter on and off and IID or non-IID data, and shows what each
// attack costs. The filter is the XDP program itself, run through
// BPF_PROG_TEST_RUN (root), or with --reference the pure-TypeScript filter.
import Table from "cli-table3";
import { Command, InvalidArgumentError, Option } from "commander";
import { BpfFilter, loadForEval } from "../src/sentry/bpf-filter.ts";
import * as attacks from "../src/sentry/eval/attacks.ts";
import { synthetic, type Dataset } from "../src/sentry/eval/data.ts";
import { Mlp, SoftmaxRegression } from "../src/sentry/eval/model.ts";
import { ReferenceFilter, filterRates, runEval, type AggregateMode } from "../src/sentry/eval/train.ts";
import type { ReflexObject } from "../src/reflex.ts";
import { AinftpError } from "../src/errors.ts";
import { intOption, type IO } from "./io.ts";
import { sentryReadmitCommand, sentryStatusCommand } from "./sentry-node.ts";
import { COMPACT } from "./status.ts";

// ---- the grid's names --------------------------------------------------------

/** Attack names as the CLI takes them; --attack all runs these. */
export const ATTACK_NAMES = [
  "sign-flip", "gaussian-1", "gaussian-100", "scale-10", "label-flip", "ipm-0.1", "ipm-2", "alie", "adaptive", "drift",
] as const;

const number = String.raw`(\d+(?:\.\d+)?)`;
/** Parameterized forms: the number is the attack's parameter. */
const ATTACK_FORMS: [RegExp, (x: number) => attacks.Attack][] = [
  [new RegExp(`^gaussian-${number}$`), (s) => attacks.gaussianNoise(s)],
  [new RegExp(`^scale-${number}$`), (k) => attacks.scaling(-k)], // scale-10: every value times -10
  [new RegExp(`^ipm-${number}$`), (e) => attacks.ipm(e)],
  [new RegExp(`^adaptive(?:-${number})?$`), (z) => attacks.adaptive(Number.isNaN(z) ? undefined : z)],
  [new RegExp(`^drift(?:-${number})?$`), (step) => attacks.drift(Number.isNaN(step) ? undefined : step)],
];
const ATTACK_HELP = `${ATTACK_NAMES.join(", ")} (or gaussian-<sigma>, scale-<k> for x-k, ipm-<epsilon>, adaptive-<z>, drift-<step>)`;

/** The attack a CLI name stands for; undefined when it names none. */
export function makeAttack(name: string): attacks.Attack | undefined {
  if (name === "sign-flip") return attacks.signFlip();
  if (name === "label-flip") return attacks.labelFlip();
  if (name === "alie") return attacks.alie();
  for (const [re, make] of ATTACK_FORMS) {
    const m = re.exec(name);
    if (m) return make(m[1] === undefined ? NaN : Number(m[1]));
  }
  return undefined;
}

export const AGGREGATES = { mean: "mean", "trimmed-mean": "trimmedMean", median: "median", cclip: "centeredClipping" } as const satisfies Record<string, AggregateMode>;
export type AggregateName = keyof typeof AGGREGATES;
export type FilterSetting = "on" | "off";
export type Split = "iid" | "dirichlet";
export type ModelName = "logreg" | "mlp";

/** A comma-separated list of names, "all" for every one of `all`. */
function listOption(what: string, all: readonly string[], valid: (name: string) => boolean = (n) => all.includes(n), help = all.join(", ")) {
  return (value: string): string[] => {
    const names = value.split(",").map((s) => s.trim()).filter(Boolean);
    if (names.length === 1 && names[0] === "all") return [...all];
    const bad = names.filter((n) => !valid(n));
    if (bad.length || names.length === 0)
      throw new InvalidArgumentError(`Unknown ${what} ${bad.map((b) => `"${b}"`).join(", ") || "(none given)"}; valid: ${help}, or all.`);
    return [...new Set(names)];
  };
}

function ranksOption(value: string): number[] {
  const ranks = value.split(",").map((s) => s.trim());
  if (!ranks.every((r) => /^\d+$/.test(r))) throw new InvalidArgumentError("Give worker ranks separated by commas, e.g. 0,2,3.");
  return [...new Set(ranks.map(Number))].sort((a, b) => a - b);
}

// ---- collecting --------------------------------------------------------------

export interface SentryEvalOptions {
  workers: number;
  /** Ranks of the Byzantine workers (in every row but the clean ones, whose workers are all honest). */
  byzantine: readonly number[];
  attacks: readonly string[];
  aggregates: readonly AggregateName[];
  filters: readonly FilterSetting[];
  splits: readonly Split[];
  seeds: number;
  rounds: number;
  model: ModelName;
  lr: number;
  /** The pure-TypeScript reference filter instead of the XDP program. */
  reference: boolean;
  /** Called after every training run. */
  onProgress?: (done: number, total: number, what: string) => void;
}

export interface SentryEvalRow {
  /** "clean", or the attack's CLI name. */
  attack: string;
  /** The attack as its paper names it, e.g. "gaussian σ=100". */
  label: string;
  aggregate: AggregateName;
  filter: FilterSetting;
  split: Split;
  /** Final test accuracy (0..1) over seeds: mean, sample standard deviation, each seed's. */
  accuracy: { mean: number; sd: number; seeds: number[] };
  /** Mean accuracy minus that of clean with the same aggregate, filter and split; null on clean rows. */
  delta: number | null;
  /** Share of Byzantine contributions the filter rejected, after the calibration round; null without filter or attackers. */
  tpr: number | null;
  /** Share of honest contributions the filter rejected, after the calibration round; null without filter. */
  fpr: number | null;
}

export interface SentryEvalReport {
  /** Who decided: the XDP program through BPF_PROG_TEST_RUN, or the TypeScript reference. */
  filter: "xdp" | "reference";
  workers: number;
  byzantine: number[];
  model: ModelName;
  parameters: number;
  chunks: number;
  chunkElems: number;
  rounds: number;
  lr: number;
  seeds: number[];
  rows: SentryEvalRow[];
  runs: number;
  seconds: number;
  date: string;
}

const CHUNK_ELEMS = 720; // a 1500-byte MTU's worth, as on the wire

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const sd = (xs: number[]) => (xs.length < 2 ? 0 : Math.sqrt(xs.reduce((a, x) => a + (x - mean(xs)) ** 2, 0) / (xs.length - 1)));
const finiteOrNull = (x: number) => (Number.isFinite(x) ? x : null);

function modelSize(model: ModelName, data: Dataset): number {
  return (model === "mlp" ? new Mlp(data.dim, 32, data.classes) : new SoftmaxRegression(data.dim, data.classes)).size;
}

/** Runs the grid: every attack (and clean) x aggregate x filter x split x seed. */
export async function collectSentryEval(o: SentryEvalOptions): Promise<SentryEvalReport> {
  const start = performance.now();
  const n = o.workers;
  if (o.byzantine.some((w) => w >= n)) throw new AinftpError("sentry eval", `byzantine ranks ${o.byzantine.join(",")} must be below --workers ${n}`, { hint: "pick ranks in 0..workers-1" });
  if (2 * o.byzantine.length >= n) throw new AinftpError("sentry eval", `${o.byzantine.length} byzantine of ${n} workers is not a minority`, { hint: "the filter and the robust aggregators assume f < n / 2: lower --f" });
  for (const a of o.attacks) if (!makeAttack(a)) throw new AinftpError("sentry eval", `unknown attack "${a}"`, { hint: `valid: ${ATTACK_HELP}` });
  const seeds = Array.from({ length: o.seeds }, (_, i) => i + 1);
  const data = new Map(seeds.map((s) => [s, synthetic({ seed: s })]));
  const parameters = modelSize(o.model, data.get(1)!.train);
  const chunks = Math.ceil(parameters / CHUNK_ELEMS);
  const useXdp = !o.reference && o.filters.includes("on");
  // Loaded once for the whole grid (verification takes a while); each run gets fresh maps and a fresh keeper.
  const reflex: ReflexObject | null = useXdp ? await loadForEval(chunks) : null;
  const cells = new Map<string, { acc: number[]; tpr: number[]; fpr: number[] }>();
  const key = (attack: string, agg: string, filter: string, split: string) => `${attack}|${agg}|${filter}|${split}`;
  const attackList = ["clean", ...o.attacks];
  const total = o.splits.length * seeds.length * o.aggregates.length * o.filters.length * attackList.length;
  let done = 0;
  try {
    for (const split of o.splits)
      for (const seed of seeds)
        for (const aggregate of o.aggregates)
          for (const filterSetting of o.filters)
            for (const name of attackList) {
              const attack = name === "clean" ? null : makeAttack(name)!;
              const filter = filterSetting === "off" ? null
                : reflex ? new BpfFilter(reflex, { workers: n, chunkElems: CHUNK_ELEMS })
                : new ReferenceFilter(); // the whole chunk's sum of squares, no strikes: see docs/sentry-eval.md
              const r = runEval({
                workers: n, byzantine: o.byzantine, attack, aggregate: AGGREGATES[aggregate], filter: filter?.decide, gate: filter?.view,
                rounds: o.rounds, lr: o.lr, seed, split, data: data.get(seed), model: o.model === "mlp" ? "mlp" : "softmax", chunkElems: CHUNK_ELEMS,
              });
              // Clean rows: the byzantine ranks behave, so every worker is honest.
              const rates = filterRates(r.decisions, attack ? o.byzantine : [], 1);
              const k = key(name, aggregate, filterSetting, split);
              const cell = cells.get(k) ?? { acc: [], tpr: [], fpr: [] };
              cells.set(k, cell);
              cell.acc.push(r.accuracy);
              cell.tpr.push(rates.tpr);
              cell.fpr.push(rates.fpr);
              o.onProgress?.(++done, total, `${name}, ${aggregate}, filter ${filterSetting}, ${split}, seed ${seed}`);
            }
  } finally {
    reflex?.close();
  }
  const rows: SentryEvalRow[] = [];
  for (const name of attackList)
    for (const aggregate of o.aggregates)
      for (const filter of o.filters)
        for (const split of o.splits) {
          const c = cells.get(key(name, aggregate, filter, split))!;
          const clean = cells.get(key("clean", aggregate, filter, split))!;
          rows.push({
            attack: name,
            label: name === "clean" ? "clean" : makeAttack(name)!.name,
            aggregate, filter, split,
            accuracy: { mean: mean(c.acc), sd: sd(c.acc), seeds: c.acc },
            delta: name === "clean" ? null : mean(c.acc) - mean(clean.acc),
            tpr: filter === "on" && name !== "clean" ? finiteOrNull(mean(c.tpr)) : null,
            fpr: filter === "on" ? finiteOrNull(mean(c.fpr)) : null,
          });
        }
  return {
    filter: o.reference ? "reference" : "xdp",
    workers: n, byzantine: [...o.byzantine], model: o.model, parameters, chunks, chunkElems: CHUNK_ELEMS,
    rounds: o.rounds, lr: o.lr, seeds, rows, runs: total,
    seconds: Math.round((performance.now() - start) / 100) / 10,
    date: new Date().toISOString(),
  };
}

// ---- rendering ---------------------------------------------------------------

const pct = (x: number) => (100 * x).toFixed(1);
const rate = (x: number | null) => (x === null ? "–" : x.toFixed(2));

export function renderSentryEval(r: SentryEvalReport): string {
  const who = r.filter === "xdp"
    ? "filter: the XDP program through BPF_PROG_TEST_RUN"
    : "filter: the pure-TypeScript reference (--reference), not the XDP program";
  let text = `ainftp sentry eval: ${r.workers} workers, byzantine ${r.byzantine.join(",") || "none"} (f = ${r.byzantine.length}), ` +
    `${r.model} (${r.parameters} parameters, ${r.chunks} chunk${r.chunks > 1 ? "s" : ""}), ${r.rounds} rounds, lr ${r.lr}, ` +
    `${r.seeds.length} seed${r.seeds.length > 1 ? "s" : ""}\n${who}\n`;
  const t = new Table({
    head: ["attack", "aggregate", "filter", "split", "accuracy %", "Δ clean", "TPR", "FPR"],
    style: { head: [], border: [] }, chars: COMPACT,
  });
  for (const row of r.rows) {
    const acc = r.seeds.length > 1 ? `${pct(row.accuracy.mean)} ± ${pct(row.accuracy.sd)}` : pct(row.accuracy.mean);
    const delta = row.delta === null ? "" : `${row.delta >= 0 ? "+" : "−"}${pct(Math.abs(row.delta))}`;
    t.push([row.label, row.aggregate, row.filter, row.split, acc, delta, rate(row.tpr), rate(row.fpr)]);
  }
  text += t.toString() + "\n";
  text += `accuracy: final test accuracy, mean ± sample sd over the seeds; Δ clean: points against clean with the same aggregate, filter and split;\n` +
    `TPR / FPR: share of byzantine / honest contributions the filter rejected (quarantine included), after the calibration round\n`;
  text += `${r.runs} training runs in ${r.seconds} s\n`;
  return text;
}

// ---- the commands --------------------------------------------------------------

function sentryEvalCommand(io: IO): Command {
  return new Command("eval")
    .summary("train with Byzantine workers over a grid of attacks and aggregators, the inline filter on and off")
    .description(
      "Train a model with --workers workers, f of them Byzantine, for every attack x aggregate x filter x split x seed, " +
        "and show the final test accuracy, what each attack costs against clean, and the filter's true and false positive rates. " +
        "Gradients are quantized per chunk as the collective does; with the filter on, every contribution goes through the XDP " +
        "program (BPF_PROG_TEST_RUN, root; nothing is attached) with the gates the node's keeper sets. " +
        "--reference uses the pure-TypeScript filter instead (no root).",
    )
    .option("--workers <n>", "workers", intOption(3, 64), 10)
    .option("--byzantine <ranks>", "ranks of the Byzantine workers, e.g. 0,2,3,4 (instead of --f)", ranksOption)
    .option("--f <n>", "Byzantine workers: ranks 0..f-1 (default 2)", intOption(0, 63))
    .addOption(new Option("--attack <names>", `attacks, comma-separated, or all: ${ATTACK_HELP}`)
      .argParser(listOption("attack", ATTACK_NAMES, (n) => makeAttack(n) !== undefined, ATTACK_HELP)).default([...ATTACK_NAMES], "all"))
    .addOption(new Option("--aggregate <names>", "aggregators: mean, trimmed-mean, median, cclip, or all")
      .argParser(listOption("aggregate", Object.keys(AGGREGATES))).default(Object.keys(AGGREGATES), "all"))
    .addOption(new Option("--filter <settings>", "the inline filter: on, off, or on,off")
      .argParser(listOption("filter setting", ["on", "off"])).default(["on", "off"], "on,off"))
    .addOption(new Option("--split <names>", "data over workers: iid, dirichlet (alpha 0.5), or iid,dirichlet")
      .argParser(listOption("split", ["iid", "dirichlet"])).default(["iid", "dirichlet"], "iid,dirichlet"))
    .option("--seeds <n>", "seeds per cell (1..n)", intOption(1, 100), 5)
    .option("--rounds <n>", "training rounds", intOption(1, 10_000), 30)
    .addOption(new Option("--model <name>", "logreg (204 parameters, one chunk) or mlp (1764, three)").choices(["logreg", "mlp"]).default("logreg"))
    .option("--lr <rate>", "learning rate", (v) => {
      const x = Number(v);
      if (!(x > 0 && Number.isFinite(x))) throw new InvalidArgumentError("Give a positive number.");
      return x;
    }, 0.1)
    .option("--reference", "the pure-TypeScript reference filter instead of the XDP program (no root needed)")
    .option("--json", "print JSON with stable field names")
    .addHelpText("after", "\nExamples:\n  sudo ainftp sentry eval\n  ainftp sentry eval --reference --attack gaussian-100,alie --aggregate mean,median --seeds 1\n  sudo ainftp sentry eval --byzantine 0,2,3,4 --split dirichlet --model mlp --json\n")
    .action(async (o) => {
      if (o.byzantine && o.f !== undefined) throw new AinftpError("sentry eval", "--byzantine and --f both given", { hint: "give the ranks (--byzantine 0,2) or a count (--f 2), not both" });
      const byzantine: number[] = o.byzantine ?? Array.from({ length: o.f ?? 2 }, (_, i) => i);
      const progress = Boolean(process.stderr.isTTY);
      const report = await collectSentryEval({
        workers: o.workers, byzantine, attacks: o.attack, aggregates: o.aggregate, filters: o.filter, splits: o.split,
        seeds: o.seeds, rounds: o.rounds, model: o.model, lr: o.lr, reference: Boolean(o.reference),
        onProgress: progress ? (done, total, what) => io.err(`\r\x1b[2K  ${done}/${total}  ${what}`) : undefined,
      });
      if (progress) io.err("\r\x1b[2K");
      io.out(o.json ? JSON.stringify(report, null, 2) + "\n" : renderSentryEval(report));
    });
}

/** `ainftp sentry`: the parent of the Sentry's commands. */
export function sentryCommand(io: IO): Command {
  const sentry = new Command("sentry")
    .summary("the Sentry: the inline filter of Byzantine contributions")
    .description("The Sentry drops contributions whose energy is outside their chunk's learnt band, in the XDP program.");
  for (const make of [sentryStatusCommand, sentryReadmitCommand, sentryEvalCommand])
    sentry.addCommand(make(io).configureOutput({ writeOut: io.out, writeErr: io.err }).showHelpAfterError("(add --help for usage)").exitOverride());
  return sentry;
}
