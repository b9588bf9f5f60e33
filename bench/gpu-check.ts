#!/usr/bin/env bun
// The GPU checks, in one short script to run wherever a GPU is at hand:
//   1. register the host buffer (the arena, src/arena.ts, when it is there;
//      else a page-aligned plain buffer) with the driver;
//   2. build the result an all-reduce of 4 ranks would return (synthetic
//      gradients from ainftp_synth, summed in f64 on the CPU as the
//      reference, quantized and dequantized through src/quantize.ts), copy it
//      from the registered buffer to the GPU and back, and compare bit for bit;
//   3. dequantize the int16 results on the GPU (NVRTC kernel, or the host path
//      when NVRTC is missing, which the output says) and compare bit for bit
//      with the CPU's dequantize;
//   4. measure host-to-device bandwidth for --size bytes (256 MiB) from
//      pageable memory, from the registered buffer and from cuMemHostAlloc
//      memory: wall clock around cuMemcpyHtoDAsync + cuStreamSynchronize,
//      median of --reps after one warm-up, sources interleaved.
// Without a GPU it prints one line saying why and exits 0 (1 with --require-gpu).
//
//   bun bench/gpu-check.ts [--json] [--require-gpu] [--device 0] [--size 256MiB] [--elems 4194304] [--reps 5] [--plain]
import Table from "cli-table3";
import { ptr } from "bun:ffi";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { coll } from "../native/collective.ts";
import { cudaAvailability } from "../native/cuda.ts";
import { AinftpError } from "../src/errors.ts";
import { GpuContext, gpuStatusLine, type HostRegistration } from "../src/gpu.ts";
import { chunkCount, chunkExps, dequantize, quantize } from "../src/quantize.ts";
import { formatSize, parseSize } from "../src/units.ts";

const args = process.argv.slice(2);
const json = args.includes("--json");
const requireGpu = args.includes("--require-gpu");
/** A plain buffer even where src/arena.ts is there (to compare the two). */
const plainOnly = args.includes("--plain");
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const DEVICE = Number(opt("--device", "0"));
const BW_BYTES = parseSize(opt("--size", "256MiB"), "--size");
const ELEMS = Number(opt("--elems", String(4 * 1024 * 1024)));
const REPS = Number(opt("--reps", "5"));
const RANKS = 4;
const CHUNK = 700;
const SEED = 7, ROUND = 0, SCALE = 1e-3;
const ALIGN = 2 * 1024 * 1024;

const a = cudaAvailability();
if (!a.available) {
  const line = gpuStatusLine();
  console.log(json ? JSON.stringify({ available: false, status: line, reason: a.reason, hint: a.hint }) : line);
  process.exit(requireGpu ? 1 : 0);
}

// ---- the host buffer: the arena when src/arena.ts is there, else plain ----------

interface HostArea {
  kind: "arena" | "plain";
  /** How it is backed, and why it is not the arena when it is not. */
  note: string;
  base: number;
  size: number;
  /** [offset, offset + bytes) as a view and an address. */
  region(offset: number, bytes: number): { ptr: number; u8: Uint8Array };
  register(ctx: GpuContext): HostRegistration;
  close(): void;
}

/** What this script needs of src/arena.ts's Arena (checked at run time: the module may change). */
interface ArenaShape {
  base: number;
  size: number;
  pageSize?: number;
  hugepages?: boolean;
  fallbackReason?: string | null;
  registrations?: { gpu: string };
  alloc(bytes: number, align?: number): { ptr: number; u8(): Uint8Array };
  close(): void;
}

async function openHostArea(size: number): Promise<HostArea> {
  const arenaPath = fileURLToPath(new URL("../src/arena.ts", import.meta.url));
  let why = plainOnly ? "--plain" : "src/arena.ts not found";
  if (!plainOnly && existsSync(arenaPath)) {
    try {
      const mod = (await import(arenaPath)) as { Arena?: { open(o: { size: number; hugepages: string }): ArenaShape } };
      if (typeof mod.Arena?.open !== "function") throw new Error("it exports no Arena.open");
      const arena = mod.Arena.open({ size, hugepages: "auto" });
      if (typeof arena.base !== "number" || typeof arena.alloc !== "function") {
        arena.close();
        throw new Error("its Arena has no numeric base or no alloc()");
      }
      const pages = arena.hugepages ? "2 MB pages" : `4 KB pages${arena.fallbackReason ? ` (${arena.fallbackReason})` : ""}`;
      return {
        kind: "arena",
        note: `arena, ${pages}`,
        base: arena.base,
        size: arena.size,
        region(offset, bytes) {
          const r = arena.alloc(bytes, 4096);
          if (r.ptr !== arena.base + offset) throw new Error(`arena region at ${r.ptr - arena.base}, expected ${offset}`);
          return { ptr: r.ptr, u8: r.u8() };
        },
        register: (ctx) => ctx.registerArena(arena),
        close: () => arena.close(),
      };
    } catch (e) {
      why = `src/arena.ts unusable: ${e instanceof Error ? e.message : e}`;
    }
  }
  const buf = new ArrayBuffer(size + 4096);
  const addr = ptr(new Uint8Array(buf));
  const skew = (4096 - (addr % 4096)) % 4096;
  return {
    kind: "plain",
    note: `plain page-aligned buffer (${why})`,
    base: addr + skew,
    size,
    region: (offset, bytes) => ({ ptr: addr + skew + offset, u8: new Uint8Array(buf, skew + offset, bytes) }),
    register: (ctx) => ctx.registerHost(addr + skew, size),
    close: () => void buf,
  };
}

// ---- the all-reduce result to check with ---------------------------------------------

interface Expected {
  /** The int16 results and their exponent per chunk, as the collective returns them. */
  q: Int16Array;
  exps: Int8Array;
  /** Their dequantization on the CPU: what a rank hands back. */
  result: Float32Array;
  /** ||result - f64 sum|| / ||f64 sum||. */
  relL2: number;
}

function expectedResult(n: number): Expected {
  const sum = new Float64Array(n);
  const g = new Float32Array(n);
  for (let r = 0; r < RANKS; r++) {
    coll.ainftp_synth(SEED, r, ROUND, SCALE, g, n);
    for (let i = 0; i < n; i++) sum[i] += g[i];
  }
  const sum32 = Float32Array.from(sum);
  const exps = chunkExps(sum32, CHUNK);
  const q = new Int16Array(n);
  const result = new Float32Array(n);
  for (let c = 0; c < exps.length; c++) {
    const s = c * CHUNK, e = Math.min(n, s + CHUNK);
    quantize(sum32.subarray(s, e), exps[c], q.subarray(s, e));
    dequantize(q.subarray(s, e), exps[c], result.subarray(s, e));
  }
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    num += (result[i] - sum[i]) ** 2;
    den += sum[i] ** 2;
  }
  return { q, exps, result, relL2: Math.sqrt(num / den) };
}

/** Elements whose bits differ. */
function mismatches(a: Float32Array, b: Float32Array): number {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length), y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let bad = 0;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) bad++;
  return bad + Math.abs(a.length - b.length);
}

const median = (xs: number[]) => [...xs].sort((p, q) => p - q)[Math.floor(xs.length / 2)];

// ---- run -------------------------------------------------------------------------------

const verifyBytes = 4 * ELEMS;
const verifyAt = Math.ceil(BW_BYTES / 4096) * 4096;
const hostSize = Math.ceil((verifyAt + verifyBytes) / ALIGN) * ALIGN;

let ctx: GpuContext;
try {
  ctx = GpuContext.open(DEVICE);
} catch (e) {
  if (!(e instanceof AinftpError)) throw e;
  console.error(`${gpuStatusLine()}\nerror: ${e.message}${e.hint ? `\nhint: ${e.hint}` : ""}`);
  process.exit(1);
}
const host = await openHostArea(hostSize);
let code = 0;
try {
  const bwRegion = host.region(0, BW_BYTES);
  const verifyRegion = host.region(verifyAt, verifyBytes);
  host.register(ctx);

  // 2. round trip of the result through the registered buffer
  const exp = expectedResult(ELEMS);
  new Float32Array(verifyRegion.u8.buffer, verifyRegion.u8.byteOffset, ELEMS).set(exp.result);
  const dResult = ctx.toDevice(verifyRegion.ptr, verifyBytes);
  const back = new Float32Array(ELEMS);
  ctx.fromDevice(back, dResult);
  const roundTripBad = mismatches(back, exp.result);

  // 3. dequantize on the GPU
  const deq = ctx.dequantizer();
  const dOut = ctx.deviceAlloc(verifyBytes);
  ctx.synchronize();
  const t0 = performance.now();
  deq.dequantizeTo(dOut, exp.q, exp.exps, CHUNK);
  const deqMs = performance.now() - t0;
  const gpuDeq = new Float32Array(ELEMS);
  ctx.fromDevice(gpuDeq, dOut);
  const deqBad = mismatches(gpuDeq, exp.result);
  dResult.free();
  dOut.free();

  // 4. H2D bandwidth
  const pageable = new Uint8Array(BW_BYTES).fill(1);
  bwRegion.u8.fill(2);
  const pinned = ctx.hostAlloc(BW_BYTES);
  pinned.view.fill(3);
  const dst = ctx.deviceAlloc(BW_BYTES);
  const sources: [string, () => void][] = [
    ["pageable (new Uint8Array)", () => ctx.toDevice(pageable, BW_BYTES, dst)],
    [`registered (${host.kind})`, () => ctx.toDevice(bwRegion.ptr, BW_BYTES, dst)],
    ["cuMemHostAlloc", () => ctx.toDevice(pinned.ptr, BW_BYTES, dst)],
  ];
  const times = sources.map(() => [] as number[]);
  for (let rep = -1; rep < REPS; rep++) {
    sources.forEach(([, copy], i) => {
      const s = performance.now();
      copy();
      const dt = performance.now() - s;
      if (rep >= 0) times[i].push(dt);
    });
  }
  const bandwidth = sources.map(([source], i) => ({
    source,
    bytes: BW_BYTES,
    medianGBps: BW_BYTES / 1e9 / (median(times[i]) / 1e3),
    bestGBps: BW_BYTES / 1e9 / (Math.min(...times[i]) / 1e3),
  }));
  dst.free();
  pinned.free();

  const ok = roundTripBad === 0 && deqBad === 0;
  if (!ok) code = 1;
  const report = {
    available: true,
    status: gpuStatusLine(ctx),
    device: ctx.device,
    driverVersion: ctx.driverVersion,
    host: { kind: host.kind, note: host.note, bytes: host.size, registered: ctx.registeredBytes },
    checks: {
      elements: ELEMS,
      ranks: RANKS,
      chunkElems: CHUNK,
      chunks: chunkCount(ELEMS, CHUNK),
      quantizationRelL2: exp.relL2,
      roundTrip: { ok: roundTripBad === 0, mismatches: roundTripBad, bytes: verifyBytes },
      dequantize: { ok: deqBad === 0, mismatches: deqBad, mode: deq.mode, arch: deq.arch || null, fallbackReason: deq.fallbackReason || null, ms: deqMs },
    },
    bandwidth,
    method: `wall clock around cuMemcpyHtoDAsync + cuStreamSynchronize, median of ${REPS} after one warm-up, sources interleaved`,
    ok,
  };
  if (json) console.log(JSON.stringify(report, null, 2));
  else render(report);
} finally {
  ctx.close(); // unpins before the arena unmaps
  host.close();
}
process.exitCode = code;

function render(r: {
  status: string; device: { name: string; computeCapability: number[] }; driverVersion: string;
  host: { note: string; bytes: number }; checks: {
    elements: number; chunks: number; quantizationRelL2: number;
    roundTrip: { ok: boolean; mismatches: number; bytes: number };
    dequantize: { ok: boolean; mismatches: number; mode: string; arch: string | null; fallbackReason: string | null; ms: number };
  }; bandwidth: { source: string; medianGBps: number; bestGBps: number }[]; method: string;
}): void {
  const verdict = (ok: boolean, bad: number) => (ok ? "bit-identical" : `MISMATCH in ${bad} elements`);
  const c = r.checks;
  const t = new Table({ head: ["check", "result"] });
  t.push(
    ["GPU", `${r.device.name} (cc ${r.device.computeCapability.join(".")}), driver ${r.driverVersion}`],
    ["host buffer", `${formatSize(r.host.bytes)}, ${r.host.note}, registered`],
    [`all-reduce result (${RANKS} ranks, ${c.elements} floats) vs f64 sum`, `rel L2 ${c.quantizationRelL2.toExponential(2)}`],
    [`registered → GPU → host (${formatSize(c.roundTrip.bytes)})`, verdict(c.roundTrip.ok, c.roundTrip.mismatches)],
    [
      `dequantize on GPU (${c.chunks} chunks) vs CPU`,
      `${verdict(c.dequantize.ok, c.dequantize.mismatches)}; ${c.dequantize.mode === "kernel" ? `NVRTC kernel (${c.dequantize.arch})` : `host path: ${c.dequantize.fallbackReason}`}, ${c.dequantize.ms.toFixed(1)} ms`,
    ],
  );
  const b = new Table({ head: [`H2D ${formatSize(BW_BYTES)} from`, "median GB/s", "best GB/s"] });
  for (const x of r.bandwidth) b.push([x.source, x.medianGBps.toFixed(2), x.bestGBps.toFixed(2)]);
  console.log(r.status);
  console.log(t.toString());
  console.log(b.toString());
  console.log(`bandwidth: ${r.method}`);
}
