// Training parity on real data (issue 14): scikit-learn's digits, a small MLP,
// DDP with world 4 on 4 network namespaces (one trainer each), the same seed,
// weights, split and batch order for every configuration:
//   float32 Gloo DDP (TCP between the namespaces), then the ainftp hook
//   through `dist/ainftp swarm --serve` at 16 bits, and at 8 and 4 bits
//   (4 with error feedback and without) where the swarm has --bits.
// Asserts: every run learned (test accuracy > 85%), every rank of a run ends
// with the same model, ainftp within 1 point of Gloo at 16 and 8 bits, within
// 2 at 4 bits with error feedback, whose final weights end closer to Gloo's
// than without it; a trainer asking the 8-bit nodes for 4 bits
// is refused, naming both. examples/digits_parity.py trains; this file
// starts the nodes of each bit width while the trainers run the previous one.
//
// CI runs the short version; AINFTP_PARITY_STEPS=1000 runs the full one
// (README, "Training parity"), AINFTP_PARITY_SEED another seed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { BIN, canUseNetns, createLab, ensureBuilt, lineReader, ROOT, sh, until, type Lab } from "./helpers/netns.ts";

const SCRIPT = join(ROOT, "examples/digits_parity.py");
const STEPS = Number(process.env.AINFTP_PARITY_STEPS ?? 150);
/** The seed of the weights, the split and the batch order (examples/digits_parity.py --seed). */
const SEED = Number(process.env.AINFTP_PARITY_SEED ?? 1);
const NODES = ["p0", "p1", "p2", "p3"];
const JOB = 14;
/** Largest gap to Gloo's test accuracy, in points, per run (none: reported only). */
const MAX_GAP: Record<string, number | null> = { "ainftp:16": 1, "ainftp:16:ef": 1, "ainftp:8": 1, "ainftp:4": 2, "ainftp:4:no-ef": null };

/** A Python with torch (Gloo) and scikit-learn: $AINFTP_PYTHON, python3, /usr/bin/python3. */
function parityPython(): { py: string | null; why: string } {
  let why = "no python3 that imports torch with Gloo (apt-get install -y python3-torch)";
  for (const py of new Set([process.env.AINFTP_PYTHON, "python3", "/usr/bin/python3"].filter((x): x is string => !!x))) {
    if (!Bun.which(py)) continue;
    if (sh([py, "-c", "import torch.distributed as d; assert d.is_available() and d.is_gloo_available()"], { timeoutMs: 60_000 }).code !== 0) continue;
    if (sh([py, "-c", "import sklearn.datasets"], { timeoutMs: 60_000 }).code === 0) return { py, why: "" };
    why = `${py} has torch but no scikit-learn (apt-get install -y python3-sklearn)`;
  }
  return { py: null, why };
}

const kernel = canUseNetns();
const { py: python, why: pyWhy } = kernel ? parityPython() : { py: null, why: "" };
const skipWhy = !kernel ? "not root, or no network namespaces (ip netns, nsenter)" : !python ? pyWhy : null;
if (skipWhy) console.log(`[parity] skipping the training parity test: ${skipWhy}`);

/** Whether this build's swarm takes --bits (issue 14's core). */
function swarmHasBits(): boolean {
  const r = sh([BIN, "swarm", "--help"], { timeoutMs: 30_000 });
  return r.code === 0 && /--bits\b/.test(r.stdout + r.stderr);
}

interface RunReport {
  rank: number;
  run: string;
  bits: number;
  error_feedback: boolean;
  test_accuracy: number;
  test_correct: number;
  test_samples: number;
  train_loss: number;
  ms: number;
  buckets: number | null;
  node_bits?: number;
  weights_rel_distance?: number;
}

type Proc = Bun.Subprocess<"pipe", "pipe", "pipe">;

describe.skipIf(skipWhy !== null)("training parity on scikit-learn's digits: DDP world 4, Gloo float32 vs the ainftp hook", () => {
  let lab: Lab;
  const procs = new Set<Proc>();
  const track = (p: Proc) => (procs.add(p), p.exited.then(() => procs.delete(p)), p);
  const sock = (n: string, bits: number) => join(lab.tmp, `${n}-${bits}.sock`);
  /** What the nodes' census read below 16 bits (the mean of many quantized sums of the trainer count). */
  const censuses: string[] = [];

  beforeAll(() => {
    ensureBuilt();
    lab = createLab("parity", NODES, { link: "bridge", subnet: "10.213.141" });
  }, 180_000); // make build, when the sources changed, takes minutes on a loaded machine
  afterAll(async () => {
    for (const p of procs) p.kill(9);
    await Promise.all([...procs].map((p) => p.exited));
    for (const n of NODES) if (lab && existsSync(lab.pinDir(n, "eth0"))) lab.ainftp(n, ["detach", "eth0"]);
    lab?.destroy();
  });

  /** Serving nodes at `bits` (--bits only where the swarm has it), their sockets up. */
  const startNodes = async (bits: number, withFlag: boolean) => {
    const peers = NODES.map((n) => lab.node(n).addr).join(",");
    const nodes = NODES.map((n, i) => track(lab.spawn(n, [BIN, "swarm", "--iface", "eth0", "--peers", peers, "--rank", String(i), "--job", String(JOB),
      "--serve", "--socket", sock(n, bits), "--round-size", "1MiB", "--json", ...(withFlag ? ["--bits", String(bits)] : [])])));
    const up = await until(() => NODES.every((n) => existsSync(sock(n, bits))) || nodes.some((p) => p.exitCode !== null), 30_000);
    if (!up || nodes.some((p) => p.exitCode !== null)) {
      for (const p of nodes) p.kill(9);
      const errs = await Promise.all(nodes.map(async (p) => `${await new Response(p.stderr).text()}`));
      throw new Error(`the ${bits}-bit nodes did not come up:\n${errs.map((e, i) => `node ${i}: ${e}`).join("\n")}`);
    }
    return nodes;
  };

  const stopNodes = async (nodes: Proc[], bits: number) => {
    for (const p of nodes) p.kill("SIGTERM");
    const ends = await Promise.all(nodes.map(async (p) => {
      const t = setTimeout(() => p.kill(9), 15_000);
      const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
      const code = await p.exited;
      clearTimeout(t);
      return { code, out, err };
    }));
    ends.forEach((e, i) => {
      if (e.code !== 0) throw new Error(`the ${bits}-bit node ${i} exited ${e.code}:\n${e.err}`);
      const census = /census: 4 trainers in the job, 1 on this node(?: \(the mean of \d+ sums at \d+ bits: ([\d.]+)\))?/.exec(e.err);
      expect({ node: i, census: census !== null }).toEqual({ node: i, census: true });
      if (census?.[1]) censuses.push(`${bits} bits node ${i}: ${census[1]}`);
      expect(JSON.parse(e.out)).toMatchObject({ rank: i, peers: 4, job: JOB, world: 4, stopped_by: "SIGTERM" });
    });
  };

  /** A trainer asking the 8-bit node for 4 bits is refused, naming both widths and the fix (the job goes on). */
  const wrongWidthRefused = async () => {
    const script = `import sys; sys.path.insert(0, ${JSON.stringify(join(ROOT, "clients/python"))}); import ainftp
try:
    ainftp.connect(socket=${JSON.stringify(sock("p0", 8))}, bits=4, timeout=5)
    print("connected")
except ainftp.BadRequest as e:
    print(e)`;
    const p = track(lab.spawn("p0", [python!, "-c", script], { env: { PYTHONDONTWRITEBYTECODE: "1" } }));
    const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
    expect({ code: await p.exited, err }).toEqual({ code: 0, err: "" });
    expect(out).toMatch(/this trainer asks for 4-bit gradients, but this node's job runs at 8 bits: start the swarm with --bits 4 \(on every node\), or connect with bits=8/);
  };

  test(`Gloo float32 and the ainftp hook reach the same test accuracy (${STEPS} steps)`, async () => {
    const hasBits = swarmHasBits();
    const widths = hasBits ? [16, 8, 4] : [16];
    // without --bits, error feedback forced on at 16 bits still runs the residual's path end to end (the residual: zeros)
    const runs = ["gloo", "ainftp:16", ...(hasBits ? ["ainftp:8", "ainftp:4", "ainftp:4:no-ef"] : ["ainftp:16:ef"])];
    if (!hasBits)
      console.log("[parity] 8 and 4 bits PENDING: this build's `ainftp swarm` has no --bits (issue 14's core); only float32 Gloo and the ainftp hook at 16 bits (error feedback off and on) are compared");
    const t0 = performance.now();
    const trainers = NODES.map((n, i) => track(lab.spawn(n, [python!, SCRIPT, "--runs", runs.join(","), "--steps", String(STEPS), "--seed", String(SEED), "--job", String(JOB),
      "--socket", join(lab.tmp, `${n}-{bits}.sock`)], {
      env: {
        PYTHONDONTWRITEBYTECODE: "1", RANK: String(i), WORLD_SIZE: "4", MASTER_ADDR: lab.node(NODES[0]).addr, MASTER_PORT: "29714",
        GLOO_SOCKET_IFNAME: "eth0",
      },
    })));
    const lines = trainers.map((p) => lineReader(p));
    const reports: RunReport[][] = NODES.map(() => []);
    /** The trainers' reports of the next `k` runs (each trainer prints one line per run). */
    const collect = async (k: number) => {
      for (let j = 0; j < k; j++) {
        const got = await Promise.all(lines.map(async (l, i) => {
          try {
            return JSON.parse(await l.next(240_000)) as RunReport;
          } catch (e) {
            throw new Error(`trainer ${i} (rank ${i}, after ${reports[i].length} runs): ${(e as Error).message}`); // the reader adds its stderr
          }
        }));
        got.forEach((r, i) => reports[i].push(r));
      }
    };
    const nodesOf = new Map<number, number>(); // bits -> runs at that width
    for (const r of runs.slice(1)) nodesOf.set(Number(r.split(":")[1]), (nodesOf.get(Number(r.split(":")[1])) ?? 0) + 1);
    // the nodes of each width come up while the trainers run the configuration before
    let nodes = await startNodes(widths[0], hasBits);
    await collect(1); // gloo
    for (const [k, bits] of widths.entries()) {
      await collect(nodesOf.get(bits)!);
      if (bits === 8) await wrongWidthRefused();
      await stopNodes(nodes, bits);
      if (k + 1 < widths.length) nodes = await startNodes(widths[k + 1], hasBits);
    }
    for (const [i, p] of trainers.entries()) {
      const t = setTimeout(() => p.kill(9), 30_000);
      const code = await p.exited;
      clearTimeout(t);
      if (code !== 0) throw new Error(`trainer ${i} exited ${code}:\n${await new Response(p.stderr).text()}`);
    }
    const wall = (performance.now() - t0) / 1000;

    const byRun = new Map(runs.map((name, j) => [name, reports.map((rs) => rs[j])]));
    for (const [name, rs] of byRun) {
      expect(rs.map((r) => r.run)).toEqual(NODES.map(() => name));
      // every rank ends with the same model: the same predictions
      expect(rs.map((r) => r.test_correct)).toEqual(NODES.map(() => rs[0].test_correct));
      if (name !== "gloo") expect(rs[0].node_bits).toBe(rs[0].bits);
    }
    const gloo = byRun.get("gloo")![0];
    const pts = (r: RunReport) => 100 * r.test_accuracy;
    const lines_: string[] = [];
    for (const [name, rs] of byRun) {
      const r = rs[0], gap = pts(r) - pts(gloo);
      lines_.push(`${name.padEnd(15)} test accuracy ${pts(r).toFixed(2)}% (${r.test_correct}/${r.test_samples})` +
        (name === "gloo" ? "" : `, ${gap >= 0 ? "+" : ""}${gap.toFixed(2)} points vs gloo`) +
        `, train loss ${r.train_loss.toFixed(4)}, weights ${r.weights_rel_distance === undefined ? "-" : `${(100 * r.weights_rel_distance).toFixed(2)}%`} from gloo's` +
        `, error feedback ${r.error_feedback ? "on" : "off"}, ${(r.ms / STEPS).toFixed(1)} ms/step`);
    }
    console.log(`[parity] digits, MLP, DDP world 4 on 4 namespaces, ${STEPS} steps, seed ${SEED}, batch 32 per rank (wall ${wall.toFixed(1)} s):\n  ${lines_.join("\n  ")}` +
      (censuses.length ? `\n  census (4 trainers) read as ${censuses.join(", ")}` : ""));
    for (const [name, rs] of byRun) {
      expect({ run: name, learned: pts(rs[0]) > 85 }).toEqual({ run: name, learned: true });
      const max = MAX_GAP[name];
      if (max != null) expect({ run: name, gap_within: Math.abs(pts(rs[0]) - pts(gloo)) <= max }).toEqual({ run: name, gap_within: true });
      if (name === "ainftp:16") expect(rs[0].error_feedback).toBe(false); // off at 16 bits by default
      if (name === "ainftp:8" || name === "ainftp:4" || name === "ainftp:16:ef") expect({ run: name, ef: rs[0].error_feedback, buckets: (rs[0].buckets ?? 0) >= 2 }).toEqual({ run: name, ef: true, buckets: true });
      if (name === "ainftp:4:no-ef") expect(rs[0].error_feedback).toBe(false);
    }
    // what error feedback buys on this easy task is not accuracy but a trajectory closer to Gloo's
    // (measured 14% against 20% at 150 steps, 20% against 31% at 1000): broken, both would be alike
    const ef = byRun.get("ainftp:4")?.[0], noEf = byRun.get("ainftp:4:no-ef")?.[0];
    if (ef && noEf) expect({ ef_closer: ef.weights_rel_distance! < 0.9 * noEf.weights_rel_distance! }).toEqual({ ef_closer: true });
  }, 600_000);
});
