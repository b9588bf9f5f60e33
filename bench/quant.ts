#!/usr/bin/env bun
// Quantizer micro-benchmark: ns per element of every per-element pass of a
// round, for each build of the kernels this CPU runs (generic, avx2, avx512;
// native/quant.c), at a 16 MiB vector (4M floats, as one all-reduce round
// touches it) and at one chunk (1720 elements, in cache).
//
// Runs are interleaved: each repetition times every build once, in a rotating
// order, and the table shows the median over repetitions (min in --json), so
// a neighbour's burst of CPU hits all builds alike. `--lib NAME=PATH`
// (repeatable; `--before PATH` is `--lib before=PATH`) adds a column for
// another build of the shim, e.g. one made before a change; it runs
// whatever build of the kernels that library picks.
//
// What each row times (one FFI call per sample for 4M, a JS loop of calls
// for one chunk, so the one-chunk rows include ~20 ns of call per chunk):
//   chunk_exps      ainftp_chunk_exps over the vector (chunks of 1720)
//   pack nearest    ainftp_pack_chunks, every chunk, round to nearest
//   pack stochastic the same with stochastic rounding
//   finish          ainftp_finish_chunk (3 others + own), chunk by chunk
//   finish batch    ainftp_finish_batch (native/collective.c) over every
//                   chunk: as an owner finishes, results map and RESULT
//                   packets written
//   dequantize      ainftp_dequantize (exp -5)
//   gather          4M: ainftp_gather_results (dequantize from the results map);
//                   and with streaming stores (see the case's comment: which
//                   build finds out cold depends on the order here)
import Table from "cli-table3";
import { dlopen, FFIType as T } from "bun:ffi";
import { existsSync } from "node:fs";
import { MAX_ELEMS, PKT_CONTRIB, SIZEOF } from "../src/abi.ts";
import { headerTemplate } from "../src/quantize.ts";
import { mulberry32 } from "../src/random.ts";

const args = process.argv.slice(2);
const opt = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const json = args.includes("--json");
const reps = Number(opt("--reps") ?? 9);
const libs: [string, string][] = [];
args.forEach((a, i) => {
  if (a === "--before") libs.push(["before", args[i + 1]]);
  if (a === "--lib") {
    const [name, path] = args[i + 1]?.split("=") ?? [];
    if (!name || !path) throw new Error(`--lib wants NAME=PATH, got ${args[i + 1]}`);
    libs.push([name, path]);
  }
});
if (args.includes("--help")) {
  console.log("usage: bun bench/quant.ts [--reps N] [--before PATH] [--lib NAME=PATH ...] [--json]");
  process.exit(0);
}

const symbols = {
  ainftp_chunk_exps: { args: [T.ptr, T.u32, T.u32, T.ptr], returns: T.u32 },
  ainftp_pack_chunks: { args: [T.ptr, T.u32, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.ptr, T.u32, T.u32], returns: T.u32 },
  ainftp_finish_chunk: { args: [T.ptr, T.u32, T.u32, T.ptr, T.ptr], returns: T.i32 },
  ainftp_dequantize: { args: [T.ptr, T.u32, T.i32, T.ptr], returns: T.i32 },
  ainftp_finish_batch: {
    args: [T.ptr, T.ptr, T.u32, T.ptr, T.u32, T.ptr, T.ptr, T.u32, T.u32, T.ptr, T.ptr, T.ptr, T.ptr, T.u32],
    returns: T.i32,
  },
  ainftp_gather_results: { args: [T.ptr, T.u32, T.u32, T.u32, T.u32, T.ptr, T.u32, T.u32], returns: T.u32 },
} as const;
const isaSymbols = {
  ainftp_quant_isa_mask: { args: [], returns: T.u32 },
  ainftp_quant_set_isa: { args: [T.i32], returns: T.i32 },
} as const;

const here = new URL("../native/build/libainftp.so", import.meta.url).pathname;
if (!existsSync(here)) throw new Error(`${here} is missing: run make build first`);
for (const [name, path] of libs) if (!existsSync(path)) throw new Error(`--lib ${name}=${path}: no such file`);
const lib = dlopen(here, { ...symbols, ...isaSymbols }).symbols;
type Fns = ReturnType<typeof dlopen<typeof symbols>>["symbols"];

/** A column of the table: one library, one build of its kernels. */
interface Column {
  name: string;
  fns: Fns;
  select(): void;
}
const ISAS = ["generic", "avx2", "avx512"];
const mask = lib.ainftp_quant_isa_mask();
const columns: Column[] = libs.map(([name, path]) => ({ name, fns: dlopen(path, symbols).symbols, select() {} }));
ISAS.forEach((name, i) => {
  if (mask & (1 << i)) columns.push({ name, fns: lib, select: () => void lib.ainftp_quant_set_isa(i) });
});

// ---- inputs: gradient-like values, magnitudes varying by chunk ----------------

const CE = MAX_ELEMS;
const BIG = 4 * 1024 * 1024;
const rng = mulberry32(7);
const x = new Float32Array(BIG);
for (let j = 0; j < BIG; j++) x[j] = (rng() - 0.5) * 2 ** ((j >> 11) % 24 - 12);
const nchunks = Math.ceil(BIG / CE);
const chunks = Uint32Array.from({ length: nchunks }, (_, c) => c);
const exps = new Int8Array(nchunks);
lib.ainftp_chunk_exps(x, BIG, CE, exps);
const header = headerTemplate({ type: PKT_CONTRIB, jobId: 1, round: 1, rank: 0 });
const stride = SIZEOF.ainftp_wire_hdr + 2 * CE;
const pkts = new Uint8Array(nchunks * stride);
const q = new Int16Array(BIG);
for (let j = 0; j < BIG; j++) q[j] = Math.floor(rng() * 65535) - 32767;
const back = new Float32Array(BIG);

// acc entries as the XDP program leaves them (3 contributions, biased), the
// results map the owner writes, and what the owner sends.
const ACC = (SIZEOF.ainftp_acc + 7) & ~7, RES = (SIZEOF.ainftp_result + 7) & ~7;
const acc = new Uint32Array((nchunks * ACC) / 4);
for (let i = 0; i < acc.length; i++) acc[i] = 3 * 32768 + Math.floor(rng() * 60000) - 30000;
const res = new Uint8Array(nchunks * RES);
const others = new Uint16Array(nchunks).fill(3);
const counts = Uint16Array.from({ length: nchunks }, (_, c) => Math.min(CE, BIG - c * CE));
const ownQ = q.subarray(0, nchunks * CE);
const oneOut = new Int16Array(CE);
const accEntry = Array.from({ length: nchunks }, (_, c) => acc.subarray((c * ACC) / 4));
const ownChunk = Array.from({ length: nchunks }, (_, c) => q.subarray(c * CE));

// ---- timing ---------------------------------------------------------------------

interface Case {
  kernel: string;
  size: string;
  elements: number;
  /** Runs the kernel `times` times with the given library. */
  run(f: Fns, times: number): void;
  times: number;
}

const one = (n: number) => x.subarray(0, n);
const cases: Case[] = [];
for (const [size, n, times] of [["4M", BIG, 1], ["1 chunk", CE, 400]] as const) {
  const nc = Math.ceil(n / CE);
  cases.push(
    { kernel: "chunk_exps", size, elements: n, times, run: (f, t) => { for (let i = 0; i < t; i++) f.ainftp_chunk_exps(one(n), n, CE, exps); } },
    { kernel: "pack nearest", size, elements: n, times, run: (f, t) => { for (let i = 0; i < t; i++) f.ainftp_pack_chunks(one(n), n, CE, chunks, nc, exps, header, pkts, stride, 0); } },
    { kernel: "pack stochastic", size, elements: n, times, run: (f, t) => { for (let i = 0; i < t; i++) f.ainftp_pack_chunks(one(n), n, CE, chunks, nc, exps, header, pkts, stride, 12345); } },
    { kernel: "finish", size, elements: n, times, run: (f, t) => {
      for (let i = 0; i < t; i++) for (let c = 0; c < nc; c++) f.ainftp_finish_chunk(accEntry[c], counts[c], 3, ownChunk[c], oneOut);
    } },
    { kernel: "finish batch", size, elements: n, times, run: (f, t) => { for (let i = 0; i < t; i++) f.ainftp_finish_batch(acc, res, 0, chunks, nc, others, ownQ, 1, CE, counts, exps, header, pkts, stride); } },
    { kernel: "dequantize", size, elements: n, times, run: (f, t) => { for (let i = 0; i < t; i++) f.ainftp_dequantize(q, n, -5, back); } },
  );
  if (n === BIG) {
    cases.push({ kernel: "gather", size, elements: n, times, run: (f, t) => {
      for (let i = 0; i < t; i++) if (f.ainftp_gather_results(res, 0, nc, CE, 2, back, n, 0) !== 0) throw new Error("gather: entries not ready");
    } });
    // (a plain gather leaves out in cache, where plain stores win; a streaming
    // one leaves it in memory, so the build timed after it here finds it cold,
    // as a round's gather does: the generic build's row, plain stores, shows that cost)
    cases.push({ kernel: "gather, streaming", size, elements: n, times, run: (f, t) => {
      for (let i = 0; i < t; i++) if (f.ainftp_gather_results(res, 0, nc, CE, 2, back, n, 1) !== 0) throw new Error("gather: entries not ready");
    } });
  }
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
interface Row { kernel: string; size: string; nsPerElement: Record<string, { median: number; min: number }> }
const rows: Row[] = [];
for (const c of cases) {
  const samples = new Map<string, number[]>(columns.map((col) => [col.name, []]));
  for (const col of columns) { col.select(); c.run(col.fns, c.times); } // warm-up, and the results map for gather
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < columns.length; i++) {
      const col = columns[(i + r) % columns.length];
      col.select();
      const t0 = Bun.nanoseconds();
      c.run(col.fns, c.times);
      samples.get(col.name)!.push((Bun.nanoseconds() - t0) / (c.times * c.elements));
    }
  }
  const ns: Row["nsPerElement"] = {};
  for (const [name, s] of samples) ns[name] = { median: median(s), min: Math.min(...s) };
  rows.push({ kernel: c.kernel, size: c.size, nsPerElement: ns });
  if (!json) process.stderr.write(`  ${c.kernel} ${c.size}…\n`);
}
lib.ainftp_quant_set_isa(-1);

if (json) {
  console.log(JSON.stringify({ method: `ns/element, ${reps} interleaved repetitions per build`, columns: columns.map((c) => c.name), rows }, null, 2));
} else {
  const best = columns[columns.length - 1].name;
  const t = new Table({ head: ["kernel", "size", ...columns.map((c) => `${c.name} ns/el`), `generic/${best}`] });
  for (const r of rows) {
    const g = r.nsPerElement.generic.median, b = r.nsPerElement[best].median;
    t.push([r.kernel, r.size, ...columns.map((c) => `${r.nsPerElement[c.name].median.toFixed(3)} (${r.nsPerElement[c.name].min.toFixed(3)})`), `${(g / b).toFixed(2)}×`]);
  }
  console.log(`Quantizer kernels, ns per element: median (min) of ${reps} interleaved runs; the ratio is of medians; one-chunk rows include the FFI call`);
  console.log(t.toString());
}
