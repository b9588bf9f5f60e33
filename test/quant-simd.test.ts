// The builds of the quantizer kernels (native/quant.c: generic, avx2,
// avx512) give the same bytes. Every kernel runs on every build this CPU
// runs, over random inputs with the edge cases planted (zeros, subnormals,
// ±Inf, NaN payloads, ties, saturation, every length mod 16, unaligned
// views), and each SIMD build's output buffers, sentinels past the end
// included, are compared byte for byte with the generic build's, which
// test/quantize.test.ts holds to the TypeScript reference.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { MAX_ELEMS, PKT_CONTRIB, accPosition } from "../src/abi.ts";
import { mulberry32 } from "../src/random.ts";
import {
  DEQ_EXP_MAX, DEQ_EXP_MIN, EXP_MAX, EXP_MIN, chunkCount, chunkExpsInto, dequantize, finishChunk, headerTemplate,
  packChunks, quantize,
} from "../src/quantize.ts";
import { cCopyStream, cDequantizeStream, cFinishChunk, quantIsa, quantIsasSupported, setQuantIsa, type QuantIsa } from "../native/quant.ts";
import { BIN, canUseNetns, createLab, ensureBuilt } from "./helpers/netns.ts";

const SEED = Number(process.env.QUANT_SIMD_SEED ?? 0x51d);
const SIMD = quantIsasSupported().filter((i) => i !== "generic");
console.log(`[quant-simd] seed ${SEED}; builds this CPU runs: ${quantIsasSupported().join(", ")}`);
if (SIMD.length === 0) {
  console.warn("[quant-simd] only the generic build runs on this CPU: the SIMD builds are NOT checked here");
}

/** Runs f with every kernel on one build, then restores the best one. */
function on<T>(isa: QuantIsa, f: () => T): T {
  expect(setQuantIsa(isa)).toBe(isa);
  try {
    return f();
  } finally {
    setQuantIsa("best");
  }
}

/** The same call on the generic build and on each SIMD build: the byte views
 * it returns must match, as must its return value. */
function sameOnEveryBuild(what: string, run: () => { rc: unknown; bytes: Uint8Array[] }): void {
  const want = on("generic", run);
  for (const isa of SIMD) {
    const got = on(isa, run);
    if (got.rc !== want.rc) throw new Error(`${what}: ${isa} returned ${got.rc}, generic ${want.rc}`);
    for (let b = 0; b < want.bytes.length; b++) {
      const i = firstDiff(want.bytes[b], got.bytes[b]);
      if (i >= 0) throw new Error(`${what}: ${isa} differs from generic in buffer ${b} at byte ${i} (${got.bytes[b][i]} vs ${want.bytes[b][i]})`);
    }
  }
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();

// ---- inputs --------------------------------------------------------------------

const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
const fromBits = (b: number) => ((u32[0] = b >>> 0), f32[0]);

/** Values that break careless vector code, as f32 bit patterns. */
const SPECIAL_BITS = [
  0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007fffff, 0x807fffff, 0x00800000, // ±0, subnormals, min normal
  0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0xffffffff, // ±Inf, NaNs
  0x7f7fffff, 0xff7fffff, 0x46fffe00, 0xc6fffe00, 0x46ffff00, 0xc6ffff00, 0x46fffeff, 0x46ffff01, // max, 32767, 32767.5 ±ulp
  0x3f000000, 0xbf000000, 0x3fc00000, 0xbfc00000, 0x40200000, 0x3effffff, 0x3f000001, // ±0.5, ±1.5, 2.5, 0.5 ± ulp
];

/** n floats, chunk by chunk of different kinds, specials planted everywhere. */
function edgyInput(n: number, chunkElems: number, rng: () => number): Float32Array {
  const x = new Float32Array(n);
  const bits = new Uint32Array(x.buffer);
  for (let c = 0; c < chunkCount(n, chunkElems); c++) {
    const start = c * chunkElems, end = Math.min(n, start + chunkElems);
    const kind = Math.floor(rng() * 7);
    const mag = 2 ** Math.floor(rng() * 250 - 140);
    for (let j = start; j < end; j++) {
      if (kind === 0) x[j] = 0;
      else if (kind === 1) bits[j] = Math.floor(rng() * 0x800000) | (rng() < 0.5 ? 0x80000000 : 0); // subnormals
      else if (kind === 2) bits[j] = Math.floor(rng() * 2 ** 32); // any pattern: NaNs, Infs, huge
      else if (kind === 3) x[j] = (Math.floor(rng() * 65536) - 32768 + (rng() < 0.5 ? 0.5 : rng())) * mag; // ties
      else x[j] = (rng() * 2 - 1) * mag;
    }
    // a few specials per chunk, except in the chunks meant to stay finite
    if (kind !== 4) for (let t = 0; t < 3 && end > start; t++) bits[start + Math.floor(rng() * (end - start))] = SPECIAL_BITS[Math.floor(rng() * SPECIAL_BITS.length)];
  }
  return x;
}

/** A view of n elements at an element offset off into a bigger buffer, the
 * elements after it filled with a sentinel so stray writes show. */
function view<T extends Float32Array | Int16Array | Uint32Array | Int8Array>(
  make: (len: number) => T, n: number, off: number, sentinel: number,
): { all: T; part: T } {
  const all = make(off + n + 40);
  all.fill(sentinel as never);
  return { all, part: all.subarray(off, off + n) as T };
}

// every residue mod 16 and 64, the chunk sizes the collective uses, odd ones
const LENGTHS = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 127, 719, 720, 721, 1719, 1720, 1721, 4099];

// ---- the tests -------------------------------------------------------------------

describe("every SIMD build gives the generic build's bytes", () => {
  test("this CPU's builds are the ones /proc/cpuinfo says it runs", () => {
    const flags = new Set((readFileSync("/proc/cpuinfo", "utf8").match(/^flags\s*:(.*)$/m)?.[1] ?? "").trim().split(/\s+/));
    const runs = quantIsasSupported();
    expect(runs[0]).toBe("generic");
    if (process.arch === "x64") {
      expect(runs.includes("avx2")).toBe(flags.has("avx2"));
      expect(runs.includes("avx512")).toBe(["avx512f", "avx512bw", "avx512vl", "avx512dq"].every((f) => flags.has(f)));
    }
    expect(quantIsa()).toBe(runs[runs.length - 1]); // the best is picked at load
  });

  test("chunkExps, every chunk size and offset", () => {
    const rng = mulberry32(SEED);
    for (const n of LENGTHS) {
      for (const ce of [1, 3, 16, 17, 720, 1720, n]) {
        const off = Math.floor(rng() * 17);
        const src = view((l) => new Float32Array(l), n, off, 0);
        src.part.set(edgyInput(n, ce, rng));
        const total = chunkCount(n, ce);
        sameOnEveryBuild(`chunkExps n=${n} ce=${ce} off=${off}`, () => {
          const e = view((l) => new Int8Array(l), total, 1, 0x55);
          const rc = chunkExpsInto(src.part, ce, e.part);
          return { rc, bytes: [bytes(e.all)] };
        });
      }
    }
  });

  for (const seed of [0, 1, 0xdeadbeef, 0xffffffff]) {
    test(`quantize (seed ${seed >>> 0}): every length and offset, at fitting, saturating and extreme exponents`, () => {
      const rng = mulberry32(SEED + seed);
      for (const n of LENGTHS) {
        const x = view((l) => new Float32Array(l), n, Math.floor(rng() * 17), 0);
        x.part.set(edgyInput(n, n, rng));
        const e0 = new Int8Array(1);
        chunkExpsInto(x.part, n, e0);
        const exps = [e0[0], Math.max(EXP_MIN, e0[0] - 4), EXP_MIN, EXP_MAX, EXP_MIN + Math.floor(rng() * (EXP_MAX - EXP_MIN))];
        for (const e of exps) {
          const qOff = Math.floor(rng() * 33);
          sameOnEveryBuild(`quantize n=${n} exp=${e} seed=${seed}`, () => {
            const q = view((l) => new Int16Array(l), n, qOff, 0x5a5a);
            const rc = quantize(x.part, e, q.part, seed);
            return { rc, bytes: [bytes(q.all)] };
          });
        }
      }
    });
  }

  for (const seed of [0, 7]) {
    test(`packChunks (seed ${seed}): chunks in any order, partial last chunk, odd strides and offsets`, () => {
      const rng = mulberry32(SEED ^ 0xbac4 ^ seed);
      const header = headerTemplate({ type: PKT_CONTRIB, jobId: 3, round: 9, rank: 2, flags: 0x0002 });
      for (const [n, ce] of [[4099, 720], [1720 * 5 + 17, 1720], [333, 16], [50, 7], [1721, 1720]] as const) {
        const x = view((l) => new Float32Array(l), n, Math.floor(rng() * 17), 0);
        x.part.set(edgyInput(n, ce, rng));
        const total = chunkCount(n, ce);
        const exps = new Int8Array(total);
        chunkExpsInto(x.part, ce, exps);
        for (let c = 0; c < total; c++) if (rng() < 0.3) exps[c] = Math.max(EXP_MIN, exps[c] - 2); // some saturate
        const chunks = Uint32Array.from({ length: total }, (_, c) => c).sort(() => rng() - 0.5);
        const stride = 32 + 2 * ce + 2 * Math.floor(rng() * 9);
        const outOff = 2 * Math.floor(rng() * 40);
        sameOnEveryBuild(`packChunks n=${n} ce=${ce} seed=${seed}`, () => {
          const out = new Uint8Array(outOff + total * stride + 64).fill(0xa5);
          const rc = packChunks(x.part, { chunkElems: ce, chunks, exps, header, out: out.subarray(outOff), stride, seed });
          return { rc, bytes: [out] };
        });
      }
    });
  }

  test("finishChunk: every count mod 16, 0..64 contributors, garbage lanes, with and without the owner's share", () => {
    const rng = mulberry32(SEED ^ 0xf1);
    const counts = [...Array.from({ length: 48 }, (_, i) => i + 1), MAX_ELEMS - 1, MAX_ELEMS, 719, 720, 721];
    for (let t = 0; t < 400; t++) {
      const count = t < counts.length ? counts[t] : 1 + Math.floor(rng() * MAX_ELEMS);
      const contributors = t % 9 === 0 ? 0 : t % 5 === 0 ? 64 : Math.floor(rng() * 65);
      const style = t % 4; // 0 in range, 1 all at +max, 2 all at -max, 3 any 32-bit lane (wrapping sums)
      const lanes = (count + 3) & ~3;
      const raw = view((l) => new Uint32Array(l), lanes, Math.floor(rng() * 9), 0xdeadbeef);
      for (let j = 0; j < lanes; j++) {
        const per = style === 1 ? 65535 : style === 2 ? 1 : 1 + Math.floor(rng() * 65535);
        raw.part[j] = style === 3 ? Math.floor(rng() * 2 ** 32) : per * contributors;
      }
      const own = t % 3 === 0 ? null : view((l) => new Int16Array(l), count, Math.floor(rng() * 9), 0).part;
      if (own) for (let j = 0; j < count; j++) own[j] = style === 1 ? 32767 : style === 2 ? -32768 : Math.floor(rng() * 65536) - 32768;
      if (style === 3 && contributors && t % 8 === 3) {
        // one sum exactly INT32_MIN: the only one whose magnitude (2^31) needs the unsigned compare
        const j = Math.floor(rng() * count);
        raw.part[accPosition(j)] = (0x80000000 + 32768 * contributors - (own ? own[j] : 0)) >>> 0;
      }
      const outOff = Math.floor(rng() * 9);
      sameOnEveryBuild(`finishChunk count=${count} contributors=${contributors} style=${style}`, () => {
        const out = view((l) => new Int16Array(l), count, outOff, 0x7777);
        const rc = finishChunk(contributors ? raw.part : null, count, contributors, own, out.part);
        // the two-output form: the same values in both places, in one pass
        const out2 = view((l) => new Int16Array(l), count, outOff + 1, 0x6666);
        const also = view((l) => new Int16Array(l), count, outOff + 3, 0x5555);
        const rc2 = cFinishChunk(contributors ? raw.part : null, count, contributors, own, out2.part, also.part);
        expect(rc2).toBe(rc);
        expect(bytes(out2.part)).toEqual(bytes(out.part));
        expect(bytes(also.part)).toEqual(bytes(out.part));
        return { rc, bytes: [bytes(out.all), bytes(out2.all), bytes(also.all)] };
      });
    }
  });

  test("the streaming copy (the 8- and 4-bit gather's scratch chunk out to a cold array): every length mod 16, every offset mod 16, nothing written beyond", () => {
    const rng = mulberry32(SEED ^ 0xc0b7);
    for (const n of LENGTHS)
      for (let off = 0; off < 17; off++) {
        const src = Float32Array.from({ length: n }, () => rng() * 2 - 1);
        sameOnEveryBuild(`copy stream n=${n} off=${off}`, () => {
          const dst = view((l) => new Float32Array(l), n, off, fromBits(0x7fa5a5a5));
          cCopyStream(dst.part, src);
          expect(bytes(dst.part)).toEqual(bytes(src));
          return { rc: 0, bytes: [bytes(dst.all)] };
        });
      }
  });

  test("dequantize: every exponent, every length mod 16, offsets, -32768 and overflow to Inf", () => {
    const rng = mulberry32(SEED ^ 0xde9);
    for (let e = DEQ_EXP_MIN; e <= DEQ_EXP_MAX; e++) {
      const n = LENGTHS[(e - DEQ_EXP_MIN) % LENGTHS.length];
      const q = view((l) => new Int16Array(l), n, Math.floor(rng() * 17), 0).part;
      for (let j = 0; j < n; j++) q[j] = Math.floor(rng() * 65536) - 32768;
      q[0] = rng() < 0.5 ? -32768 : 32767;
      const outOff = Math.floor(rng() * 17);
      sameOnEveryBuild(`dequantize n=${n} exp=${e}`, () => {
        const out = view((l) => new Float32Array(l), n, outOff, fromBits(0x7fa5a5a5));
        dequantize(q, e, out.part);
        // the streaming stores of a round's gather: the same bytes, and nothing
        // written outside the values (an unaligned head and tail store plainly)
        const streamed = view((l) => new Float32Array(l), n, outOff, fromBits(0x7fa5a5a5));
        expect(cDequantizeStream(q, e, streamed.part)).toBe(0);
        expect(bytes(streamed.all)).toEqual(bytes(out.all));
        return { rc: 0, bytes: [bytes(out.all)] };
      });
    }
  });
});

describe("choosing a build", () => {
  test("AINFTP_QUANT_ISA picks the build at load; a name that is no build is refused", () => {
    const child = (want: string) => Bun.spawnSync({
      cmd: [process.execPath, "-e", `import { quantIsa } from "${import.meta.dir}/../native/quant.ts"; console.log(quantIsa());`],
      env: { ...process.env, AINFTP_QUANT_ISA: want },
    });
    for (const want of quantIsasSupported()) expect(child(want).stdout.toString().trim()).toBe(want);
    const typo = child("avx-512");
    expect(typo.exitCode).not.toBe(0);
    expect(typo.stderr.toString()).toContain("AINFTP_QUANT_ISA=avx-512 names no build of the quantizer: use one of generic, avx2, avx512");
  });

  test("setQuantIsa switches every kernel and says which builds exist when refused", () => {
    for (const isa of quantIsasSupported()) expect(on(isa, () => quantIsa())).toBe(isa);
    expect(setQuantIsa("best")).toBe(quantIsasSupported().at(-1)!);
    const missing = (["avx2", "avx512"] as const).find((i) => !quantIsasSupported().includes(i));
    if (missing) expect(() => setQuantIsa(missing)).toThrow(/cannot run the .* build/);
    else console.log("[quant-simd] this CPU runs every build: the refusal path is not exercised here");
  });
});

// ---- a whole all-reduce, hosts on different builds -------------------------------

const kernel = canUseNetns();
if (!kernel) console.warn("[quant-simd] not root (or no netns): the 4-host run on mixed builds is SKIPPED");

describe.skipIf(!kernel)("an all-reduce gives the same bits whichever build each host runs", () => {
  /** Per-round result hashes of a 4-host swarm, rank i on builds[i]. */
  async function roundHashes(builds: QuantIsa[]): Promise<string> {
    const names = builds.map((_, i) => `h${i}`);
    const lab = createLab("qsimd", names);
    try {
      const addrs = names.map((h) => lab.node(h).addr).join(",");
      const procs = names.map((h, i) => lab.spawn(h, [BIN, "swarm", "--iface", "eth0", "--peers", addrs, "--rank", String(i),
        "--synthetic", "1MiB", "--rounds", "3", "--stochastic", "7", "--verify", "--mode", "native", "--json"],
      { env: { AINFTP_QUANT_ISA: builds[i] } }));
      const outs = await Promise.all(procs.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text(), err: await new Response(p.stderr).text() })));
      for (const o of outs) if (o.code !== 0) throw new Error(`swarm failed: ${o.err.trim().split("\n").at(-1)}`);
      const reports = outs.map((o) => JSON.parse(o.out) as { verified: boolean; result_hash: string[] });
      for (const r of reports) expect(r.verified).toBe(true);
      const hashes = reports.map((r) => JSON.stringify(r.result_hash));
      expect(new Set(hashes).size).toBe(1); // every host holds the same result
      return hashes[0];
    } finally {
      lab.destroy();
    }
  }

  test("every host generic, then one host on each build: the same result hashes, round by round", async () => {
    ensureBuilt();
    const runs = quantIsasSupported();
    const mixed = [0, 1, 2, 3].map((i) => runs[i % runs.length]);
    expect(await roundHashes(mixed)).toBe(await roundHashes(["generic", "generic", "generic", "generic"]));
  }, 120_000);
});
