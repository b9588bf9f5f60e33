// The GPU boundary (native/cuda.ts, src/gpu.ts, bench/gpu-check.ts) on a
// machine without a GPU: what it says when there is no driver, and — through
// stub libraries built here with gcc and loaded via AINFTP_LIBCUDA /
// AINFTP_LIBNVRTC — what it says when the driver has no device, how a
// device is listed, how CUresults become errors, and that the wrappers pass
// pointers, sizes and kernel arguments where the C ABI expects them.
//
// The "fake" driver backs device memory with host memory and runs the
// dequantize kernel as a C loop when it is launched; it checks the FFI
// plumbing, not CUDA: bench/gpu-check.ts on a real GPU is the check of that.
// Every stub scenario runs in a child process: availability is cached per
// process, and a crash in native code fails one test, not the runner.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { cudaAvailability, nvrtcAvailability } from "../native/cuda.ts";
import { AinftpError } from "../src/errors.ts";
import { GpuContext, gpuStatusLine } from "../src/gpu.ts";

const ROOT = resolve(import.meta.dir, "..");
const BENCH = join(ROOT, "bench/gpu-check.ts");
const NO_DRIVER = "no CUDA driver: libcuda.so.1 not found (install the NVIDIA driver)";
const NO_DEVICE = "CUDA driver present but no device (cuInit: CUDA_ERROR_NO_DEVICE)";

/** Is there a real driver here? Then the "no driver" expectations do not apply. */
const realDriver = cudaAvailability().available || cudaAvailability().library !== undefined;

// ---- stub libraries ------------------------------------------------------------

const STUB_CUDA = String.raw`
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int CUresult;
typedef unsigned long long CUdeviceptr;

static const char *names[][3] = {
  {"0", "CUDA_SUCCESS", "no error"},
  {"1", "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
  {"2", "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
  {"100", "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
  {"218", "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
  {"500", "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
  {"712", "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped"},
  {"713", "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region"},
};
static CUresult lookup(CUresult e, const char **p, int which) {
  for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (atoi(names[i][0]) == e) { *p = names[i][which]; return 0; }
  *p = 0;
  return 1;
}
CUresult cuGetErrorName(CUresult e, const char **p) { return lookup(e, p, 1); }
CUresult cuGetErrorString(CUresult e, const char **p) { return lookup(e, p, 2); }

#ifdef STUB_NO_DEVICE
CUresult cuInit(unsigned flags) { return 100; }
CUresult cuDeviceGetCount(int *n) { return 3; /* CUDA_ERROR_NOT_INITIALIZED */ }
#else
CUresult cuInit(unsigned flags) { return flags == 0 ? 0 : 1; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
#endif
CUresult cuDriverGetVersion(int *v) { *v = 12040; return 0; }
CUresult cuDeviceGet(int *dev, int ordinal) { if (ordinal != 0) return 101; *dev = 0; return 0; }
CUresult cuDeviceGetName(char *name, int len, int dev) { snprintf(name, len, "Stub GPU"); return 0; }
CUresult cuDeviceTotalMem_v2(size_t *bytes, int dev) { *bytes = 80ull << 30; return 0; }
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
  if (attr == 75) { *v = 9; return 0; }
  if (attr == 76) { *v = 0; return 0; }
  return 1;
}

#ifdef STUB_FULL
/* A fake device: device memory is host memory, streams and contexts are tokens. */
static long live_allocs, live_pins, ctx_refs;
static struct { uintptr_t p; size_t n; } regs[64];
static int nregs;
#define CTX ((void *)0xc0)
#define STREAM ((void *)0x5e)
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { if (dev) return 101; *ctx = CTX; ctx_refs++; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { ctx_refs--; return 0; }
CUresult cuCtxSetCurrent(void *ctx) { return ctx == CTX ? 0 : 201; }
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuStreamCreate(void **s, unsigned flags) { *s = STREAM; return flags == 1 ? 0 : 1; }
CUresult cuStreamDestroy_v2(void *s) { return s == STREAM ? 0 : 400; }
CUresult cuStreamSynchronize(void *s) { return s == STREAM ? 0 : 400; }
CUresult cuMemAlloc_v2(CUdeviceptr *d, size_t n) {
  if (n > (1ull << 34)) return 2;
  void *p = malloc(n);
  if (!p) return 2;
  live_allocs++;
  *d = (CUdeviceptr)(uintptr_t)p;
  return 0;
}
CUresult cuMemFree_v2(CUdeviceptr d) { free((void *)(uintptr_t)d); live_allocs--; return 0; }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { memset((void *)(uintptr_t)d, v, n); return 0; }
CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned flags) {
  uintptr_t a = (uintptr_t)p;
  if (flags & ~1u) return 1;
  for (int i = 0; i < nregs; i++)
    if (a < regs[i].p + regs[i].n && regs[i].p < a + n) return 712;
  regs[nregs].p = a; regs[nregs].n = n; nregs++;
  live_pins++;
  return 0;
}
CUresult cuMemHostUnregister(void *p) {
  for (int i = 0; i < nregs; i++)
    if (regs[i].p == (uintptr_t)p) { regs[i] = regs[--nregs]; live_pins--; return 0; }
  return 713;
}
CUresult cuMemHostAlloc(void **p, size_t n, unsigned flags) { *p = malloc(n); live_allocs++; return *p ? 0 : 2; }
CUresult cuMemFreeHost(void *p) { free(p); live_allocs--; return 0; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *st) {
  if (st != STREAM) return 400;
  memcpy((void *)(uintptr_t)d, s, n);
  return 0;
}
CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, void *st) {
  if (st != STREAM) return 400;
  memcpy(d, (void *)(uintptr_t)s, n);
  return 0;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { memcpy((void *)(uintptr_t)d, s, n); return 0; }
CUresult cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { memcpy(d, (void *)(uintptr_t)s, n); return 0; }

#define MODULE ((void *)0x30)
#define FUNC ((void *)0xf0)
CUresult cuModuleLoadData(void **m, const void *image) {
  if (strncmp((const char *)image, "// fake PTX", 11) != 0) return 218;
  *m = MODULE;
  return 0;
}
CUresult cuModuleUnload(void *m) { return m == MODULE ? 0 : 400; }
CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
  if (m != MODULE || strcmp(name, "ainftp_dequantize") != 0) return 500;
  *f = FUNC;
  return 0;
}
static float pow2f(int e) { uint32_t b = (uint32_t)(e + 127) << 23; float f; memcpy(&f, &b, 4); return f; }
/* The kernel's loop, reading its arguments the way the driver does: one pointer per parameter. */
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *st, void **params, void **extra) {
  if (f != FUNC || st != STREAM || extra || !params || gy != 1 || gz != 1 || by != 1 || bz != 1 || !gx || !bx) return 1;
  const short *q = *(const short **)params[0];
  const short *exps = *(const short **)params[1];
  unsigned chunk = *(unsigned *)params[2];
  unsigned long long n = *(unsigned long long *)params[3];
  float *out = *(float **)params[4];
  for (unsigned long long i = 0; i < n; i++) {
    int e = exps[i / chunk];
    float v = (float)q[i];
    if (e >= -126 && e <= 127) out[i] = v * pow2f(e);
    else { int e1 = (e - (e & 1)) / 2; out[i] = (v * pow2f(e1)) * pow2f(e - e1); }
  }
  return 0;
}
__attribute__((destructor)) static void report(void) {
  if (live_allocs || live_pins || ctx_refs)
    fprintf(stderr, "stub: leaked %ld allocations, %ld registrations, %ld context references\n", live_allocs, live_pins, ctx_refs);
}
#endif
`;

const STUB_NVRTC = String.raw`
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
typedef int nvrtcResult;
static char last_opts[256];
nvrtcResult nvrtcVersion(int *major, int *minor) { *major = 12; *minor = 4; return 0; }
const char *nvrtcGetErrorString(nvrtcResult r) { return r == 5 ? "NVRTC_ERROR_INVALID_OPTION" : r ? "NVRTC_ERROR" : "NVRTC_SUCCESS"; }
nvrtcResult nvrtcCreateProgram(void **prog, const char *src, const char *name, int nh, const char *const *h, const char *const *inc) {
  if (!strstr(src, "ainftp_dequantize") || strcmp(name, "ainftp_dequantize.cu") != 0 || nh != 0) return 3;
  *prog = malloc(1);
  return 0;
}
nvrtcResult nvrtcCompileProgram(void *prog, int n, const char *const *opts) {
  if (n != 1) return 5;
  snprintf(last_opts, sizeof(last_opts), "%s", opts[0]);
  return strcmp(opts[0], "--gpu-architecture=compute_90") == 0 ? 0 : 5;
}
static const char ptx[] = "// fake PTX for compute_90\n";
nvrtcResult nvrtcGetPTXSize(void *prog, size_t *n) { *n = sizeof(ptx); return 0; }
nvrtcResult nvrtcGetPTX(void *prog, char *out) { memcpy(out, ptx, sizeof(ptx)); return 0; }
nvrtcResult nvrtcGetProgramLogSize(void *prog, size_t *n) { *n = 1; return 0; }
nvrtcResult nvrtcGetProgramLog(void *prog, char *log) { log[0] = 0; return 0; }
nvrtcResult nvrtcDestroyProgram(void **prog) { free(*prog); *prog = 0; return 0; }
`;

let dir = "";
const lib = { noDevice: "", probeOnly: "", fake: "", nvrtc: "" };

function gcc(name: string, source: string, defines: string[]): string {
  const src = join(dir, `${name}.c`), out = join(dir, `${name}.so`);
  writeFileSync(src, source);
  const r = Bun.spawnSync(["gcc", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", ...defines.map((d) => `-D${d}`), "-o", out, src]);
  if (r.exitCode !== 0) throw new Error(`gcc ${name}: ${r.stderr.toString()}`);
  return out;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ainftp-gpu-"));
  lib.noDevice = gcc("libcuda-nodevice", STUB_CUDA, ["STUB_NO_DEVICE"]);
  lib.probeOnly = gcc("libcuda-probe", STUB_CUDA, []);
  lib.fake = gcc("libcuda-fake", STUB_CUDA, ["STUB_FULL"]);
  lib.nvrtc = gcc("libnvrtc-fake", STUB_NVRTC, []);
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs `body` (TypeScript, with the repo's modules imported) in a child with env; returns its JSON output. */
function child(body: string, env: Record<string, string>): { code: number; out: any; stdout: string; stderr: string } {
  const file = join(dir, `child-${Math.random().toString(36).slice(2)}.ts`);
  writeFileSync(file, `
import * as cuda from ${JSON.stringify(join(ROOT, "native/cuda.ts"))};
import * as gpu from ${JSON.stringify(join(ROOT, "src/gpu.ts"))};
import * as quantize from ${JSON.stringify(join(ROOT, "src/quantize.ts"))};
import { AinftpError } from ${JSON.stringify(join(ROOT, "src/errors.ts"))};
const out: Record<string, unknown> = {};
const error = (f: () => unknown) => { try { f(); return null; } catch (e) {
  return { name: (e as Error).name, message: (e as Error).message, hint: (e as AinftpError).hint ?? null,
           isAinftp: e instanceof AinftpError, codeName: (e as { codeName?: string }).codeName ?? null }; } };
${body}
console.log(JSON.stringify(out));
`);
  const r = Bun.spawnSync([process.execPath, file], { env: { ...process.env, ...env }, cwd: ROOT });
  const stdout = r.stdout.toString(), stderr = r.stderr.toString();
  let out: any = null;
  try {
    out = JSON.parse(stdout.trim().split("\n").at(-1) ?? "");
  } catch { /* left null: the assertion on out shows stdout and stderr */ }
  if (out === null) console.error(`child failed (${r.exitCode}):\n${stdout}\n${stderr}`);
  return { code: r.exitCode ?? -1, out, stdout, stderr };
}

function bench(args: string[], env: Record<string, string> = {}) {
  const r = Bun.spawnSync([process.execPath, BENCH, ...args], { env: { ...process.env, ...env }, cwd: ROOT });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

// ---- this machine: no driver -----------------------------------------------------

describe.skipIf(realDriver)("without a CUDA driver", () => {
  test("cudaAvailability says there is no driver, and why", () => {
    const a = cudaAvailability();
    expect(a.available).toBe(false);
    if (a.available) return;
    expect(a.reason).toBe(NO_DRIVER);
    expect(a.hint).toContain("NVIDIA driver");
  });

  test("gpuStatusLine says the CPU path is used", () => {
    expect(gpuStatusLine()).toBe("GPU: none (no CUDA driver: libcuda.so.1 not found); using the CPU path");
  });

  test("GpuContext.open throws an AinftpError naming the reason, with what to install", () => {
    let err: unknown;
    try {
      GpuContext.open();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AinftpError);
    const e = err as AinftpError;
    expect(e.message).toContain(NO_DRIVER);
    expect(e.hint).toContain("install the NVIDIA driver");
    expect(e.hint).toContain("libcuda.so.1");
  });

  test("NVRTC absence is an answer, not an exception", () => {
    const n = nvrtcAvailability();
    if (n.available) return; // a toolkit without a driver: nothing to say
    expect(n.reason).toMatch(/^no NVRTC: .* not found/);
  });

  test("bench/gpu-check.ts prints the one line and exits 0, or 1 with --require-gpu", () => {
    const line = "GPU: none (no CUDA driver: libcuda.so.1 not found); using the CPU path\n";
    const plain = bench([]);
    expect(plain.stdout).toBe(line);
    expect(plain.code).toBe(0);
    const strict = bench(["--require-gpu"]);
    expect(strict.stdout).toBe(line);
    expect(strict.code).toBe(1);
    const json = bench(["--json"]);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ available: false, reason: NO_DRIVER });
  });
});

test("AINFTP_LIBCUDA pointing nowhere reads as no driver", () => {
  const r = child(`out.a = cuda.cudaAvailability();`, { AINFTP_LIBCUDA: "/nonexistent/libcuda.so.1" });
  expect(r.out.a).toMatchObject({ available: false, reason: "no CUDA driver: /nonexistent/libcuda.so.1 not found (install the NVIDIA driver)" });
});

// ---- stub drivers --------------------------------------------------------------------

describe("a driver with no device (stub)", () => {
  test("availability, status line, open() and the bench all say so", () => {
    const r = child(`
      out.a = cuda.cudaAvailability();
      out.line = gpu.gpuStatusLine();
      out.open = error(() => gpu.GpuContext.open());
    `, { AINFTP_LIBCUDA: lib.noDevice });
    expect(r.out.a).toMatchObject({ available: false, reason: NO_DEVICE, library: lib.noDevice });
    expect(r.out.line).toBe(`GPU: none (${NO_DEVICE}); using the CPU path`);
    expect(r.out.open).toMatchObject({ isAinftp: true, message: `open GPU: ${NO_DEVICE}` });
    expect(r.out.open.hint).toContain("nvidia-smi");

    const b = bench([], { AINFTP_LIBCUDA: lib.noDevice });
    expect(b.stdout).toBe(`GPU: none (${NO_DEVICE}); using the CPU path\n`);
    expect(b.code).toBe(0);
    expect(bench(["--require-gpu"], { AINFTP_LIBCUDA: lib.noDevice }).code).toBe(1);
  });
});

describe("a driver that lists one device but has no memory calls (stub)", () => {
  test("the device is listed; open() says which symbol is missing", () => {
    const r = child(`
      out.a = cuda.cudaAvailability();
      out.line = gpu.gpuStatusLine();
      out.open = error(() => gpu.GpuContext.open());
      out.badIndex = error(() => cuda.cu.device(3));
      out.names = [cuda.cudaResultName(712), cuda.cudaResultString(712), cuda.cudaResultName(4242)];
    `, { AINFTP_LIBCUDA: lib.probeOnly });
    expect(r.out.a).toEqual({
      available: true, library: lib.probeOnly, driverVersion: "12.4",
      devices: [{ index: 0, handle: 0, name: "Stub GPU", totalMem: 80 * 2 ** 30, computeCapability: [9, 0] }],
    });
    expect(r.out.line).toBe("GPU: Stub GPU (80 GiB), CUDA driver 12.4");
    expect(r.out.open).toMatchObject({ isAinftp: true });
    expect(r.out.open.message).toContain("lacks cuDevicePrimaryCtxRetain");
    expect(r.out.open.hint).toContain("update the NVIDIA driver");
    expect(r.out.badIndex.message).toBe("open GPU: no CUDA device 3 (1 present)");
    expect(r.out.names).toEqual([
      "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
      "part or all of the requested memory range is already mapped",
      "CUresult 4242",
    ]);
  });
});

describe("a fake driver backed by host memory", () => {
  const NO_NVRTC = { AINFTP_LIBNVRTC: "/nonexistent/libnvrtc.so" };

  test("register, copy both ways, pinned and device memory, errors by CUresult name, close frees all", () => {
    const r = child(`
      const ctx = gpu.GpuContext.open(0);
      const buf = new Uint8Array(1 << 20);
      for (let i = 0; i < buf.length; i++) buf[i] = (i * 7) & 255;
      const { ptr } = await import("bun:ffi");
      const reg = ctx.registerHost(ptr(buf), buf.length);
      out.lineRegistered = gpu.gpuStatusLine(ctx);
      out.twice = error(() => ctx.registerHost(ptr(buf, 4096), 4096));
      const d = ctx.toDevice(ptr(buf), buf.length);
      const back = new Uint8Array(buf.length);
      ctx.fromDevice(back, d);
      out.roundTrip = Buffer.compare(Buffer.from(back), Buffer.from(buf)) === 0;
      const pinned = ctx.hostAlloc(4096);
      pinned.view.fill(9);
      const d2 = ctx.toDevice(pinned.view.subarray(100, 200));
      const small = new Uint8Array(100);
      ctx.fromDevice(small, d2);
      out.pinned = small.every((x) => x === 9);
      out.tooBig = error(() => ctx.fromDevice(new Uint8Array(200), d2));
      out.registeredBytes = ctx.registeredBytes;
      reg.unregister();
      out.lineAfter = gpu.gpuStatusLine(ctx);
      out.unregisterAgain = error(() => reg.unregister());
      const arena = { base: ptr(buf), size: buf.length, registrations: { gpu: "not registered" } };
      const areg = ctx.registerArena(arena);
      out.arenaGpu = arena.registrations.gpu;
      areg.unregister();
      out.arenaAfter = arena.registrations.gpu;
      ctx.deviceAlloc(1000);          // left for close() to free
      ctx.registerHost(ptr(buf), 64); // left for close() to unpin
      ctx.close();
      ctx.close();
      out.afterClose = error(() => ctx.deviceAlloc(8));
    `, { AINFTP_LIBCUDA: lib.fake, ...NO_NVRTC });
    expect(r.stderr).not.toContain("leaked");
    expect(r.out).toMatchObject({
      lineRegistered: "GPU: Stub GPU (80 GiB), arena registered",
      roundTrip: true,
      pinned: true,
      registeredBytes: 1 << 20,
      lineAfter: "GPU: Stub GPU (80 GiB), arena not registered",
      unregisterAgain: null,
      arenaGpu: "Stub GPU (device 0, cuMemHostRegister)",
      arenaAfter: "not registered",
    });
    expect(r.out.twice).toMatchObject({ name: "CudaError", isAinftp: true, codeName: "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED" });
    expect(r.out.twice.message).toContain("CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED (part or all of the requested memory range is already mapped)");
    expect(r.out.twice.hint).toContain("already registered");
    expect(r.out.tooBig.message).toContain("200 bytes from a 100-byte device buffer");
    expect(r.out.afterClose.message).toContain("used after close()");
  });

  const DEQ = `
    const n = 10_000, chunk = 700, nchunks = Math.ceil(n / chunk);
    const q = new Int16Array(n);
    for (let i = 0; i < n; i++) q[i] = ((i * 2654435761) % 65535) - 32767;
    // every regime: normal, subnormal and split powers, both ends of the range
    const exps = new Int16Array(nchunks);
    const pick = [-252, -200, -149, -140, -127, -126, -20, 0, 5, 100, 127, 128, 200, 224, -3];
    for (let c = 0; c < nchunks; c++) exps[c] = pick[c % pick.length];
    const want = new Float32Array(n);
    for (let c = 0; c < nchunks; c++) quantize.dequantize(q.subarray(c * chunk, Math.min(n, (c + 1) * chunk)), exps[c], want.subarray(c * chunk, Math.min(n, (c + 1) * chunk)));
    const ctx = gpu.GpuContext.open();
    const deq = ctx.dequantizer();
    out.mode = deq.mode; out.reason = deq.fallbackReason; out.arch = deq.arch;
    const d = ctx.deviceAlloc(4 * n);
    deq.dequantizeTo(d, q, exps, chunk);
    const got = new Float32Array(n);
    ctx.fromDevice(got, d);
    const a = new Uint32Array(got.buffer), b = new Uint32Array(want.buffer);
    out.mismatches = a.reduce((m, x, i) => m + (x !== b[i] ? 1 : 0), 0);
    out.badExp = error(() => deq.dequantizeTo(d, q.subarray(0, 10), new Int16Array([300]), chunk));
    out.same = ctx.dequantizer() === deq;
    ctx.close();
  `;

  test("dequantize falls back to the host path without NVRTC, and says so", () => {
    const r = child(DEQ, { AINFTP_LIBCUDA: lib.fake, ...NO_NVRTC });
    expect(r.stderr).not.toContain("leaked");
    expect(r.out).toMatchObject({ mode: "host", mismatches: 0, same: true });
    expect(r.out.reason).toBe(
      "no NVRTC: /nonexistent/libnvrtc.so not found (install the CUDA toolkit's NVRTC library, e.g. NVIDIA's " +
        "cuda-nvrtc-<version> package, or set AINFTP_LIBNVRTC); dequantizing on the host",
    );
    expect(r.out.badExp.message).toContain("exponent 300 outside [-252, 224]");
  });

  test("dequantize compiles with NVRTC for the device's architecture and launches with the kernel's arguments", () => {
    const r = child(DEQ, { AINFTP_LIBCUDA: lib.fake, AINFTP_LIBNVRTC: lib.nvrtc });
    expect(r.stderr).not.toContain("leaked");
    expect(r.out).toMatchObject({ mode: "kernel", reason: "", arch: "compute_90", mismatches: 0, same: true });
  });

  test("bench/gpu-check.ts runs end to end (arena registered, copies and dequantize bit-identical)", () => {
    const env = { AINFTP_LIBCUDA: lib.fake, AINFTP_LIBNVRTC: lib.nvrtc };
    const r = bench(["--json", "--size", "4MiB", "--elems", "50000", "--reps", "2"], env);
    expect(r.stderr).not.toContain("leaked");
    expect(r.code).toBe(0);
    const rep = JSON.parse(r.stdout);
    expect(rep).toMatchObject({
      available: true, ok: true,
      checks: { roundTrip: { ok: true, mismatches: 0 }, dequantize: { ok: true, mode: "kernel", arch: "compute_90" } },
    });
    expect(rep.checks.quantizationRelL2).toBeGreaterThan(0);
    expect(rep.checks.quantizationRelL2).toBeLessThan(1e-4);
    expect(rep.host.registered).toBe(rep.host.bytes);
    expect(rep.bandwidth.map((b: { source: string }) => b.source)).toEqual([
      "pageable (new Uint8Array)", `registered (${rep.host.kind})`, "cuMemHostAlloc",
    ]);
    const table = bench(["--size", "4MiB", "--elems", "50000", "--reps", "1", "--plain"], env);
    expect(table.stderr).not.toContain("leaked");
    expect(table.code).toBe(0);
    expect(table.stdout).toContain("plain page-aligned buffer (--plain)");
    expect(table.stdout).toContain("bit-identical");
    expect(table.stdout).toContain("registered (plain)");
  });
});
