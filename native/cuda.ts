// The CUDA driver API (libcuda.so.1) and NVRTC (libnvrtc.so*) through bun:ffi.
//
// Nothing is dlopen'ed until first use, and absence is an answer, not an
// exception: cudaAvailability() says in one sentence why there is no GPU (no
// driver library, or a driver with no device). Real failures of a call throw
// CudaError, which names the CUresult (CUDA_ERROR_OUT_OF_MEMORY …) and the
// driver's own description of it.
//
// Why the driver API and not libcudart: its ABI is plain C with stable,
// versioned symbol names (cuMemAlloc_v2 …) and no version-dependent property
// structs, and it ships with the driver itself, so a GPU host needs no toolkit.
// Values below are from NVIDIA's cuda.h and nvrtc.h.
//
// Handles (CUcontext, CUstream, CUmodule, CUfunction) and device pointers
// (CUdeviceptr) are bigint; host pointers are numbers (as bun:ffi's ptr()
// returns them) or bigint.
//
// AINFTP_LIBCUDA=/path/to/libcuda.so and AINFTP_LIBNVRTC=/path/to/libnvrtc.so
// replace the library search (for tests with a stub library, and for drivers
// installed outside the loader's path).
import { CString, FFIType as T, dlopen, ptr, type ConvertFns, type FFIFunction } from "bun:ffi";
import { existsSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { AinftpError } from "../src/errors.ts";

// ---- constants (cuda.h) ------------------------------------------------------

/** CUresult values this code names; the driver's cuGetErrorName covers the rest. */
export const CUDA_SUCCESS = 0;
export const CUDA_ERROR_INVALID_VALUE = 1;
export const CUDA_ERROR_OUT_OF_MEMORY = 2;
export const CUDA_ERROR_NOT_INITIALIZED = 3;
export const CUDA_ERROR_STUB_LIBRARY = 34;
export const CUDA_ERROR_DEVICE_UNAVAILABLE = 46;
export const CUDA_ERROR_NO_DEVICE = 100;
export const CUDA_ERROR_INVALID_DEVICE = 101;
export const CUDA_ERROR_INVALID_PTX = 218;
export const CUDA_ERROR_JIT_COMPILER_NOT_FOUND = 221;
export const CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222;
export const CUDA_ERROR_OPERATING_SYSTEM = 304;
export const CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712;
export const CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED = 713;
export const CUDA_ERROR_NOT_PERMITTED = 800;
export const CUDA_ERROR_NOT_SUPPORTED = 801;
export const CUDA_ERROR_SYSTEM_NOT_READY = 802;
export const CUDA_ERROR_SYSTEM_DRIVER_MISMATCH = 803;
export const CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE = 804;
export const CUDA_ERROR_UNKNOWN = 999;

/** Names for when the library cannot tell us (cuGetErrorName missing or failing). */
const RESULT_NAMES: Record<number, string> = {
  0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY", 3: "CUDA_ERROR_NOT_INITIALIZED",
  4: "CUDA_ERROR_DEINITIALIZED", 34: "CUDA_ERROR_STUB_LIBRARY", 46: "CUDA_ERROR_DEVICE_UNAVAILABLE",
  100: "CUDA_ERROR_NO_DEVICE", 101: "CUDA_ERROR_INVALID_DEVICE", 102: "CUDA_ERROR_DEVICE_NOT_LICENSED",
  200: "CUDA_ERROR_INVALID_IMAGE", 201: "CUDA_ERROR_INVALID_CONTEXT", 209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
  218: "CUDA_ERROR_INVALID_PTX", 221: "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", 222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
  304: "CUDA_ERROR_OPERATING_SYSTEM", 400: "CUDA_ERROR_INVALID_HANDLE", 500: "CUDA_ERROR_NOT_FOUND",
  700: "CUDA_ERROR_ILLEGAL_ADDRESS", 701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", 719: "CUDA_ERROR_LAUNCH_FAILED",
  712: "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", 713: "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
  800: "CUDA_ERROR_NOT_PERMITTED", 801: "CUDA_ERROR_NOT_SUPPORTED", 802: "CUDA_ERROR_SYSTEM_NOT_READY",
  803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", 804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", 999: "CUDA_ERROR_UNKNOWN",
};

/** cuMemHostRegister flags. */
export const CU_MEMHOSTREGISTER_PORTABLE = 0x01;
export const CU_MEMHOSTREGISTER_DEVICEMAP = 0x02;
/** cuMemHostAlloc flags. */
export const CU_MEMHOSTALLOC_PORTABLE = 0x01;
export const CU_MEMHOSTALLOC_DEVICEMAP = 0x02;
export const CU_MEMHOSTALLOC_WRITECOMBINED = 0x04;
/** cuStreamCreate flag: no implicit synchronization with the legacy NULL stream. */
export const CU_STREAM_NON_BLOCKING = 0x1;
/** CUdevice_attribute values. */
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;

/** nvrtcResult values this code names (nvrtcGetErrorString covers the rest). */
export const NVRTC_SUCCESS = 0;
export const NVRTC_ERROR_INVALID_OPTION = 5;
export const NVRTC_ERROR_COMPILATION = 6;
export const NVRTC_ERROR_BUILTIN_OPERATION_FAILURE = 7;

// ---- symbol tables -------------------------------------------------------------

/** What cudaAvailability needs: a stub driver that exports only these can be probed. */
const probeTable = {
  cuInit: { args: [T.u32], returns: T.i32 },
  cuDriverGetVersion: { args: [T.ptr], returns: T.i32 },
  cuDeviceGetCount: { args: [T.ptr], returns: T.i32 },
  cuDeviceGet: { args: [T.ptr, T.i32], returns: T.i32 },
  cuDeviceGetName: { args: [T.ptr, T.i32, T.i32], returns: T.i32 },
  cuDeviceTotalMem_v2: { args: [T.ptr, T.i32], returns: T.i32 },
  cuDeviceGetAttribute: { args: [T.ptr, T.i32, T.i32], returns: T.i32 },
  cuGetErrorName: { args: [T.i32, T.ptr], returns: T.i32 },
  cuGetErrorString: { args: [T.i32, T.ptr], returns: T.i32 },
} as const satisfies Record<string, FFIFunction>;

/** Everything else, opened when a context is first needed. The _v2 names are
 * what cuda.h's macros resolve to since CUDA 11 (drivers r450 and later). */
const workTable = {
  // contexts and streams
  cuDevicePrimaryCtxRetain: { args: [T.ptr, T.i32], returns: T.i32 },
  cuDevicePrimaryCtxRelease_v2: { args: [T.i32], returns: T.i32 },
  cuCtxSetCurrent: { args: [T.ptr], returns: T.i32 },
  cuCtxSynchronize: { args: [], returns: T.i32 },
  cuStreamCreate: { args: [T.ptr, T.u32], returns: T.i32 },
  cuStreamDestroy_v2: { args: [T.ptr], returns: T.i32 },
  cuStreamSynchronize: { args: [T.ptr], returns: T.i32 },
  // memory
  cuMemAlloc_v2: { args: [T.ptr, T.u64], returns: T.i32 },
  cuMemFree_v2: { args: [T.u64], returns: T.i32 },
  cuMemsetD8_v2: { args: [T.u64, T.u8, T.u64], returns: T.i32 },
  cuMemHostRegister_v2: { args: [T.ptr, T.u64, T.u32], returns: T.i32 },
  cuMemHostUnregister: { args: [T.ptr], returns: T.i32 },
  cuMemHostAlloc: { args: [T.ptr, T.u64, T.u32], returns: T.i32 },
  cuMemFreeHost: { args: [T.ptr], returns: T.i32 },
  cuMemcpyHtoDAsync_v2: { args: [T.u64, T.ptr, T.u64, T.ptr], returns: T.i32 },
  cuMemcpyDtoHAsync_v2: { args: [T.ptr, T.u64, T.u64, T.ptr], returns: T.i32 },
  cuMemcpyHtoD_v2: { args: [T.u64, T.ptr, T.u64], returns: T.i32 },
  cuMemcpyDtoH_v2: { args: [T.ptr, T.u64, T.u64], returns: T.i32 },
  // modules and launches
  cuModuleLoadData: { args: [T.ptr, T.ptr], returns: T.i32 },
  cuModuleUnload: { args: [T.ptr], returns: T.i32 },
  cuModuleGetFunction: { args: [T.ptr, T.ptr, T.cstring], returns: T.i32 },
  cuLaunchKernel: {
    args: [T.ptr, T.u32, T.u32, T.u32, T.u32, T.u32, T.u32, T.u32, T.ptr, T.ptr, T.ptr],
    returns: T.i32,
  },
} as const satisfies Record<string, FFIFunction>;

const nvrtcTable = {
  nvrtcVersion: { args: [T.ptr, T.ptr], returns: T.i32 },
  nvrtcGetErrorString: { args: [T.i32], returns: T.ptr },
  nvrtcCreateProgram: { args: [T.ptr, T.cstring, T.cstring, T.i32, T.ptr, T.ptr], returns: T.i32 },
  nvrtcCompileProgram: { args: [T.ptr, T.i32, T.ptr], returns: T.i32 },
  nvrtcGetPTXSize: { args: [T.ptr, T.ptr], returns: T.i32 },
  nvrtcGetPTX: { args: [T.ptr, T.ptr], returns: T.i32 },
  nvrtcGetProgramLogSize: { args: [T.ptr, T.ptr], returns: T.i32 },
  nvrtcGetProgramLog: { args: [T.ptr, T.ptr], returns: T.i32 },
  nvrtcDestroyProgram: { args: [T.ptr], returns: T.i32 },
} as const satisfies Record<string, FFIFunction>;

type Symbols<S extends Record<string, FFIFunction>> = ConvertFns<S>;

// ---- availability ----------------------------------------------------------------

export interface CudaDevice {
  /** Ordinal, as CUDA_VISIBLE_DEVICES numbers them. */
  index: number;
  /** The CUdevice for driver calls. */
  handle: number;
  name: string;
  /** Bytes of device memory (cuDeviceTotalMem). */
  totalMem: number;
  /** [major, minor], e.g. [9, 0] for an H100/H200. */
  computeCapability: [number, number];
}

export type CudaAvailability =
  | {
      available: false;
      /** One sentence: why there is no GPU, and what to do when that is obvious. */
      reason: string;
      /** The same without the advice, for a status line. */
      summary: string;
      /** What to install or set. */
      hint: string;
      /** The library that was loaded, when one was. */
      library?: string;
    }
  | {
      available: true;
      library: string;
      /** "12.4" (from cuDriverGetVersion: 1000 * major + 10 * minor). */
      driverVersion: string;
      devices: CudaDevice[];
    };

export const DRIVER_HINT =
  "install the NVIDIA driver, which provides libcuda.so.1 (Debian: nvidia-driver and libcuda1 from non-free; " +
  "Ubuntu: nvidia-driver-<version>), or point AINFTP_LIBCUDA at it; without a GPU ainftp uses the CPU path";
const NO_DEVICE_HINT =
  "check that the GPU is visible (nvidia-smi; CUDA_VISIBLE_DEVICES; /dev/nvidia* inside containers) and that " +
  "the kernel module matches the driver library; without a GPU ainftp uses the CPU path";

interface Loaded {
  path: string;
  probe: Symbols<typeof probeTable>;
  work?: Symbols<typeof workTable>;
}

let loaded: Loaded | undefined;
let availability: CudaAvailability | undefined;

/** Library names to try, in order (the env override alone when set). */
function driverCandidates(): string[] {
  const override = process.env.AINFTP_LIBCUDA;
  return override ? [override] : ["libcuda.so.1", "libcuda.so"];
}

/** dlopen failed because `name` itself is absent (not a dependency of it, not a broken file). */
function isNotFound(e: unknown, name: string): boolean {
  const m = e instanceof Error ? e.message : String(e);
  return m.includes(`${basename(name)}: cannot open shared object file`);
}

function missingSymbol(e: unknown): string | undefined {
  const m = /Symbol "([^"]+)" not found/.exec(e instanceof Error ? e.message : String(e));
  return m?.[1];
}

function unavailable(summary: string, hint: string, advice = "", library?: string): CudaAvailability {
  return { available: false, reason: advice ? `${summary} (${advice})` : summary, summary, hint, library };
}

function openDriver(): Loaded | CudaAvailability {
  const names = driverCandidates();
  let lastError = "";
  for (const name of names) {
    try {
      return { path: name, probe: dlopen(name, probeTable).symbols };
    } catch (e) {
      const sym = missingSymbol(e);
      if (sym)
        return unavailable(`CUDA driver ${name} lacks ${sym}`, `${DRIVER_HINT} (this one is too old or not NVIDIA's)`,
          "update the NVIDIA driver", name);
      if (!isNotFound(e, name)) {
        const msg = e instanceof Error ? e.message : String(e);
        lastError = `${name} cannot be loaded: ${msg.replace(/^Failed to open library "[^"]*": /, "")}`;
        break;
      }
    }
  }
  if (lastError) return unavailable(`no CUDA driver: ${lastError}`, DRIVER_HINT, "install or repair the NVIDIA driver");
  return unavailable(`no CUDA driver: ${names[0]} not found`, DRIVER_HINT, "install the NVIDIA driver");
}

/** The name of a CUresult ("CUDA_ERROR_NO_DEVICE"); works before cuInit. */
export function cudaResultName(code: number): string {
  const lib = loaded?.probe;
  if (lib) {
    const out = new BigUint64Array(1);
    if (lib.cuGetErrorName(code, out) === CUDA_SUCCESS && out[0] !== 0n) return new CString(out[0]);
  }
  return RESULT_NAMES[code] ?? `CUresult ${code}`;
}

/** The driver's description of a CUresult ("no CUDA-capable device is detected"). */
export function cudaResultString(code: number): string {
  const lib = loaded?.probe;
  if (lib) {
    const out = new BigUint64Array(1);
    if (lib.cuGetErrorString(code, out) === CUDA_SUCCESS && out[0] !== 0n) return new CString(out[0]);
  }
  return "";
}

/** Is there a usable CUDA driver with at least one device? Loads and
 * initializes the driver on the first call (cached); never throws for absence. */
export function cudaAvailability(): CudaAvailability {
  if (availability) return availability;
  const opened = openDriver();
  if (!("probe" in opened)) return (availability = opened);
  loaded = opened;
  const lib = opened.probe;
  const rc = lib.cuInit(0);
  if (rc !== CUDA_SUCCESS) return (availability = initFailure(rc, opened.path));
  const i32 = new Int32Array(1);
  let driverVersion = "unknown";
  if (lib.cuDriverGetVersion(i32) === CUDA_SUCCESS) driverVersion = `${Math.floor(i32[0] / 1000)}.${(i32[0] % 1000) / 10}`;
  const cnt = lib.cuDeviceGetCount(i32);
  if (cnt !== CUDA_SUCCESS) return (availability = initFailure(cnt, opened.path, "cuDeviceGetCount"));
  if (i32[0] === 0)
    return (availability = unavailable("CUDA driver present but no device (cuDeviceGetCount: 0)", NO_DEVICE_HINT, "", opened.path));
  const devices: CudaDevice[] = [];
  for (let index = 0; index < i32[0]; index++) {
    try {
      devices.push(describeDevice(lib, index));
    } catch (e) {
      if (e instanceof CudaError)
        return (availability = unavailable(`CUDA driver present but device ${index} cannot be queried (${e.message})`,
          NO_DEVICE_HINT, "", opened.path));
      throw e;
    }
  }
  return (availability = { available: true, library: opened.path, driverVersion, devices });
}

function initFailure(rc: number, library: string, op = "cuInit"): CudaAvailability {
  const name = cudaResultName(rc);
  if (rc === CUDA_ERROR_NO_DEVICE) return unavailable(`CUDA driver present but no device (${op}: ${name})`, NO_DEVICE_HINT, "", library);
  if (rc === CUDA_ERROR_STUB_LIBRARY)
    return unavailable(`CUDA driver stub loaded instead of the driver (${op}: ${name})`,
      `${DRIVER_HINT}; ${library} is the toolkit's link-time stub, keep it out of LD_LIBRARY_PATH`, "", library);
  const text = cudaResultString(rc);
  const hint = rc === CUDA_ERROR_SYSTEM_DRIVER_MISMATCH || rc === CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
    ? "the driver library and the kernel module differ in version: reinstall the driver or reboot after an upgrade"
    : NO_DEVICE_HINT;
  return unavailable(`CUDA driver present but unusable (${op}: ${name}${text ? `, ${text}` : ""})`, hint, "", library);
}

function describeDevice(lib: Symbols<typeof probeTable>, index: number): CudaDevice {
  const dev = new Int32Array(1);
  check(lib.cuDeviceGet(dev, index), `cuDeviceGet(${index})`);
  const nameBuf = new Uint8Array(256);
  check(lib.cuDeviceGetName(nameBuf, nameBuf.length, dev[0]), "cuDeviceGetName");
  const end = nameBuf.indexOf(0);
  const name = new TextDecoder().decode(nameBuf.subarray(0, end < 0 ? nameBuf.length : end));
  const mem = new BigUint64Array(1);
  check(lib.cuDeviceTotalMem_v2(mem, dev[0]), "cuDeviceTotalMem");
  const major = new Int32Array(1), minor = new Int32Array(1);
  check(lib.cuDeviceGetAttribute(major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev[0]), "cuDeviceGetAttribute");
  check(lib.cuDeviceGetAttribute(minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev[0]), "cuDeviceGetAttribute");
  return { index, handle: dev[0], name, totalMem: Number(mem[0]), computeCapability: [major[0], minor[0]] };
}

// ---- errors ----------------------------------------------------------------------

const RESULT_HINTS: Record<number, string> = {
  [CUDA_ERROR_OUT_OF_MEMORY]: "free GPU memory (other processes: nvidia-smi) or use a smaller size",
  [CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED]: "this host range (or part of it) is already registered: unregister it first",
  [CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED]: "only a pointer that cuMemHostRegister returned can be unregistered",
  [CUDA_ERROR_NOT_PERMITTED]: "pinning may be limited: raise the locked-memory limit (ulimit -l) or run as root",
  [CUDA_ERROR_NOT_SUPPORTED]: "this driver or device does not support the operation",
  [CUDA_ERROR_UNSUPPORTED_PTX_VERSION]: "NVRTC is newer than the driver: update the driver or use an NVRTC of its CUDA version",
};

/** A CUDA driver call that failed: the operation, the CUresult and what it means. */
export class CudaError extends AinftpError {
  /** The CUresult. */
  readonly code: number;
  /** Its name, e.g. "CUDA_ERROR_OUT_OF_MEMORY". */
  readonly codeName: string;
  constructor(op: string, code: number, hint?: string) {
    const codeName = cudaResultName(code);
    const text = cudaResultString(code);
    super(op, `${codeName}${text ? ` (${text})` : ""}`, { hint: hint ?? RESULT_HINTS[code] });
    this.name = "CudaError";
    this.code = code;
    this.codeName = codeName;
  }
}

/** Throws CudaError unless rc is CUDA_SUCCESS. */
export function check(rc: number, op: string, hint?: string): void {
  if (rc !== CUDA_SUCCESS) throw new CudaError(op, rc, hint);
}

// ---- the driver --------------------------------------------------------------------

/** The driver's symbols for real work; throws AinftpError (with the reason and
 * what to install) when there is no usable driver or device. */
function work(): Symbols<typeof workTable> {
  const a = cudaAvailability();
  if (!a.available) throw new AinftpError("open GPU", a.reason, { hint: a.hint });
  const l = loaded!;
  if (!l.work) {
    try {
      l.work = dlopen(l.path, workTable).symbols;
    } catch (e) {
      const sym = missingSymbol(e);
      throw new AinftpError("open GPU", sym ? `CUDA driver ${l.path} lacks ${sym}` : `cannot load ${l.path}: ${e}`, {
        hint: "update the NVIDIA driver (ainftp needs the CUDA 11 driver API or later, r450+)",
      });
    }
  }
  return l.work;
}

/** Host pointers in, as bun:ffi takes them. */
export type HostPtr = number | bigint;
const hp = (p: HostPtr): bigint => BigInt(p);

function outPtr(fn: (out: BigUint64Array) => number, op: string, hint?: string): bigint {
  const out = new BigUint64Array(1);
  check(fn(out), op, hint);
  return out[0];
}

/** Typed wrappers: one per driver call, throwing CudaError on failure. */
export const cu = {
  device(index: number): CudaDevice {
    const a = cudaAvailability();
    if (!a.available) throw new AinftpError("open GPU", a.reason, { hint: a.hint });
    const d = a.devices[index];
    if (!d) throw new AinftpError("open GPU", `no CUDA device ${index} (${a.devices.length} present)`, {
      hint: `use a device index in [0, ${a.devices.length - 1}]`,
    });
    return d;
  },
  primaryCtxRetain: (dev: number) => outPtr((o) => work().cuDevicePrimaryCtxRetain(o, dev), `cuDevicePrimaryCtxRetain(${dev})`),
  primaryCtxRelease: (dev: number) => check(work().cuDevicePrimaryCtxRelease_v2(dev), `cuDevicePrimaryCtxRelease(${dev})`),
  ctxSetCurrent: (ctx: bigint) => check(work().cuCtxSetCurrent(ctx), "cuCtxSetCurrent"),
  ctxSynchronize: () => check(work().cuCtxSynchronize(), "cuCtxSynchronize"),
  streamCreate: (flags = 0) => outPtr((o) => work().cuStreamCreate(o, flags), "cuStreamCreate"),
  streamDestroy: (s: bigint) => check(work().cuStreamDestroy_v2(s), "cuStreamDestroy"),
  streamSynchronize: (s: bigint) => check(work().cuStreamSynchronize(s), "cuStreamSynchronize"),
  memAlloc: (bytes: number) => outPtr((o) => work().cuMemAlloc_v2(o, bytes), `cuMemAlloc(${bytes})`),
  memFree: (d: bigint) => check(work().cuMemFree_v2(d), "cuMemFree"),
  memsetD8: (d: bigint, value: number, bytes: number) => check(work().cuMemsetD8_v2(d, value, bytes), "cuMemsetD8"),
  memHostRegister: (p: HostPtr, bytes: number, flags: number) =>
    check(work().cuMemHostRegister_v2(hp(p), bytes, flags), `cuMemHostRegister(${bytes} bytes)`),
  memHostUnregister: (p: HostPtr) => check(work().cuMemHostUnregister(hp(p)), "cuMemHostUnregister"),
  memHostAlloc: (bytes: number, flags: number) =>
    Number(outPtr((o) => work().cuMemHostAlloc(o, bytes, flags), `cuMemHostAlloc(${bytes})`)),
  memFreeHost: (p: HostPtr) => check(work().cuMemFreeHost(hp(p)), "cuMemFreeHost"),
  memcpyHtoDAsync: (dst: bigint, src: HostPtr, bytes: number, stream: bigint) =>
    check(work().cuMemcpyHtoDAsync_v2(dst, hp(src), bytes, stream), "cuMemcpyHtoDAsync"),
  memcpyDtoHAsync: (dst: HostPtr, src: bigint, bytes: number, stream: bigint) =>
    check(work().cuMemcpyDtoHAsync_v2(hp(dst), src, bytes, stream), "cuMemcpyDtoHAsync"),
  memcpyHtoD: (dst: bigint, src: HostPtr, bytes: number) => check(work().cuMemcpyHtoD_v2(dst, hp(src), bytes), "cuMemcpyHtoD"),
  memcpyDtoH: (dst: HostPtr, src: bigint, bytes: number) => check(work().cuMemcpyDtoH_v2(hp(dst), src, bytes), "cuMemcpyDtoH"),
  /** image: PTX text (NUL-terminated) or a cubin. */
  moduleLoadData: (image: Uint8Array) => outPtr((o) => work().cuModuleLoadData(o, image), "cuModuleLoadData"),
  moduleUnload: (m: bigint) => check(work().cuModuleUnload(m), "cuModuleUnload"),
  moduleGetFunction: (m: bigint, name: string) =>
    outPtr((o) => work().cuModuleGetFunction(o, m, Buffer.from(name + "\0")), `cuModuleGetFunction(${name})`),
  launchKernel,
};

/** One kernel argument: its C type and value. */
export type KernelArg = ["ptr" | "u64", bigint] | ["u32" | "i32", number] | ["f32", number];

/** cuLaunchKernel with kernelParams built from typed arguments (the driver
 * copies them at launch, so the buffers need not outlive the call). */
function launchKernel(
  fn: bigint, grid: [number, number, number], block: [number, number, number], sharedBytes: number, stream: bigint,
  args: KernelArg[],
): void {
  const slots = new DataView(new ArrayBuffer(8 * Math.max(1, args.length)));
  args.forEach(([type, v], i) => {
    if (type === "ptr" || type === "u64") slots.setBigUint64(8 * i, v as bigint, true);
    else if (type === "u32") slots.setUint32(8 * i, v as number, true);
    else if (type === "i32") slots.setInt32(8 * i, v as number, true);
    else slots.setFloat32(8 * i, v as number, true);
  });
  const base = ptr(slots);
  const params = new BigUint64Array(Math.max(1, args.length));
  for (let i = 0; i < args.length; i++) params[i] = BigInt(base + 8 * i);
  check(work().cuLaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], sharedBytes, stream, params, null),
    "cuLaunchKernel");
  void slots; // keep the argument storage alive across the call
}

// ---- NVRTC ---------------------------------------------------------------------------

export type NvrtcAvailability =
  | { available: false; reason: string }
  | { available: true; library: string; version: string };

let nvrtcLoaded: { path: string; lib: Symbols<typeof nvrtcTable> } | undefined;
let nvrtcState: NvrtcAvailability | undefined;

/** libnvrtc names to try: the override, the unversioned and versioned sonames,
 * then whatever the toolkit directories hold. */
function nvrtcCandidates(): string[] {
  const override = process.env.AINFTP_LIBNVRTC;
  if (override) return [override];
  const names = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so.11.1", "libnvrtc.so.11.0"];
  for (const dir of ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"]) {
    if (!existsSync(dir)) continue;
    try {
      for (const f of readdirSync(dir).sort().reverse()) if (/^libnvrtc\.so(\.\d+)*$/.test(f)) names.push(join(dir, f));
    } catch { /* unreadable directory: skip it */ }
  }
  return names;
}

/** Is NVRTC (the run-time CUDA C++ compiler) loadable? Cached; never throws. */
export function nvrtcAvailability(): NvrtcAvailability {
  if (nvrtcState) return nvrtcState;
  const names = nvrtcCandidates();
  for (const name of names) {
    try {
      const lib = dlopen(name, nvrtcTable).symbols;
      const major = new Int32Array(1), minor = new Int32Array(1);
      const version = lib.nvrtcVersion(major, minor) === NVRTC_SUCCESS ? `${major[0]}.${minor[0]}` : "unknown";
      nvrtcLoaded = { path: name, lib };
      return (nvrtcState = { available: true, library: name, version });
    } catch (e) {
      const sym = missingSymbol(e);
      if (sym) return (nvrtcState = { available: false, reason: `NVRTC ${name} lacks ${sym}` });
      if (!isNotFound(e, name)) return (nvrtcState = { available: false, reason: `NVRTC ${name} cannot be loaded: ${e}` });
    }
  }
  return (nvrtcState = {
    available: false,
    reason: `no NVRTC: ${process.env.AINFTP_LIBNVRTC ?? "libnvrtc.so"} not found (install the CUDA toolkit's NVRTC ` +
      "library, e.g. NVIDIA's cuda-nvrtc-<version> package, or set AINFTP_LIBNVRTC)",
  });
}

/** An NVRTC call that failed, with the compiler log when there is one. */
export class NvrtcError extends AinftpError {
  readonly code: number;
  constructor(op: string, code: number, log = "") {
    const lib = nvrtcLoaded?.lib;
    const text = lib ? new CString(lib.nvrtcGetErrorString(code)) : `nvrtcResult ${code}`;
    super(op, `${text} (nvrtcResult ${code})`, { detail: log, hint: "the dequantize kernel falls back to the host path" });
    this.name = "NvrtcError";
    this.code = code;
  }
}

/** Compiles CUDA C++ source to PTX (NUL-terminated, ready for cuModuleLoadData). */
export function nvrtcCompile(source: string, name: string, options: string[]): { ptx: Uint8Array; log: string } {
  const a = nvrtcAvailability();
  if (!a.available) throw new AinftpError("nvrtc", a.reason, { hint: "the dequantize kernel falls back to the host path" });
  const lib = nvrtcLoaded!.lib;
  const prog = new BigUint64Array(1);
  let rc = lib.nvrtcCreateProgram(prog, Buffer.from(source + "\0"), Buffer.from(name + "\0"), 0, null, null);
  if (rc !== NVRTC_SUCCESS) throw new NvrtcError("nvrtcCreateProgram", rc);
  try {
    const optBufs = options.map((o) => Buffer.from(o + "\0"));
    const optPtrs = new BigUint64Array(Math.max(1, options.length));
    optBufs.forEach((b, i) => (optPtrs[i] = BigInt(ptr(b))));
    rc = lib.nvrtcCompileProgram(prog[0], options.length, optPtrs);
    const log = programLog(lib, prog[0]);
    void optBufs; // keep the option strings alive across the call
    if (rc !== NVRTC_SUCCESS) throw new NvrtcError(`nvrtcCompileProgram(${options.join(" ")})`, rc, log);
    const size = new BigUint64Array(1);
    rc = lib.nvrtcGetPTXSize(prog[0], size);
    if (rc !== NVRTC_SUCCESS) throw new NvrtcError("nvrtcGetPTXSize", rc);
    const ptx = new Uint8Array(Number(size[0])); // includes the terminating NUL
    rc = lib.nvrtcGetPTX(prog[0], ptx);
    if (rc !== NVRTC_SUCCESS) throw new NvrtcError("nvrtcGetPTX", rc);
    return { ptx, log };
  } finally {
    lib.nvrtcDestroyProgram(prog);
  }
}

function programLog(lib: Symbols<typeof nvrtcTable>, prog: bigint): string {
  const size = new BigUint64Array(1);
  if (lib.nvrtcGetProgramLogSize(prog, size) !== NVRTC_SUCCESS || size[0] <= 1n) return "";
  const buf = new Uint8Array(Number(size[0]));
  if (lib.nvrtcGetProgramLog(prog, buf) !== NVRTC_SUCCESS) return "";
  return new TextDecoder().decode(buf.subarray(0, buf.length - 1)).trim();
}
