// The GPU end of a round: a CUDA context and stream on one device, host memory
// registered (pinned) with it so that copies run as DMA at full PCIe speed,
// and the last step of an all-reduce, dequantizing int16 results, run on the
// GPU itself.
//
// The arena is what gets registered: registerArena(arena) (or
// registerHost(region.ptr, region.bytes) for a single region) pins the
// mapping once, and every region carved from it afterwards is copied from
// without staging. Where there is no driver or device, GpuContext.open throws
// an AinftpError saying which, and gpuStatusLine() says so in one line; the
// rest of ainftp runs on the CPU path either way.
import { ptr, toArrayBuffer } from "bun:ffi";
import {
  CU_MEMHOSTALLOC_PORTABLE, CU_MEMHOSTALLOC_WRITECOMBINED, CU_MEMHOSTREGISTER_PORTABLE, CU_STREAM_NON_BLOCKING,
  NVRTC_ERROR_INVALID_OPTION, CudaError, NvrtcError, cu, cudaAvailability, nvrtcAvailability, nvrtcCompile,
  type CudaDevice, type HostPtr,
} from "../native/cuda.ts";
import { AinftpError } from "./errors.ts";
import { DEQ_EXP_MAX, DEQ_EXP_MIN, chunkCount, dequantize } from "./quantize.ts";
import { formatSize } from "./units.ts";

/** Host memory as callers hold it: an address, or a typed array / Buffer. */
export type HostMemory = HostPtr | NodeJS.TypedArray | DataView;

function hostAddress(m: HostMemory): number | bigint {
  return typeof m === "number" || typeof m === "bigint" ? m : ptr(m);
}

function byteLength(m: HostMemory, bytes: number | undefined, op: string): number {
  if (bytes !== undefined) {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new AinftpError(op, `${bytes} is not a byte count`);
    if (typeof m === "object" && bytes > m.byteLength) throw new AinftpError(op, `${bytes} bytes asked of a ${m.byteLength}-byte buffer`);
    return bytes;
  }
  if (typeof m === "object") return m.byteLength;
  throw new AinftpError(op, "a byte count is needed with a raw address");
}

/** Device memory (cuMemAlloc). */
export class DeviceBuffer implements Disposable {
  /** @internal */
  constructor(private readonly owner: GpuContext, private addr: bigint, readonly bytes: number) {}
  /** The CUdeviceptr; throws once freed. */
  get dptr(): bigint {
    if (this.addr === 0n) throw new AinftpError("device buffer", "used after free()");
    return this.addr;
  }
  get freed(): boolean {
    return this.addr === 0n;
  }
  free(): void {
    if (this.addr === 0n) return;
    const a = this.addr;
    this.addr = 0n;
    this.owner._forget(this);
    this.owner._use();
    cu.memFree(a);
  }
  [Symbol.dispose](): void {
    this.free();
  }
}

/** Page-locked host memory from the driver (cuMemHostAlloc). */
export class PinnedHostBuffer implements Disposable {
  /** The bytes, without a copy; not to be used after free(). */
  readonly view: Uint8Array;
  /** @internal */
  constructor(private readonly owner: GpuContext, private addr: number, readonly bytes: number) {
    this.view = new Uint8Array(toArrayBuffer(addr, 0, bytes));
  }
  get ptr(): number {
    if (this.addr === 0) throw new AinftpError("pinned host buffer", "used after free()");
    return this.addr;
  }
  free(): void {
    if (this.addr === 0) return;
    const a = this.addr;
    this.addr = 0;
    this.owner._forget(this);
    this.owner._use();
    cu.memFreeHost(a);
  }
  [Symbol.dispose](): void {
    this.free();
  }
}

/** A host range registered with the driver (cuMemHostRegister). */
export class HostRegistration implements Disposable {
  private live = true;
  /** @internal */
  constructor(private readonly owner: GpuContext, readonly ptr: number | bigint, readonly bytes: number,
    private readonly onUnregister?: () => void) {}
  get registered(): boolean {
    return this.live;
  }
  /** Unpins the range; it must still be mapped. Idempotent. */
  unregister(): void {
    if (!this.live) return;
    this.live = false;
    this.owner._forget(this);
    this.owner._use();
    try {
      cu.memHostUnregister(this.ptr);
    } finally {
      this.onUnregister?.();
    }
  }
  [Symbol.dispose](): void {
    this.unregister();
  }
}

/** What registerArena needs of an arena (src/arena.ts's Arena has it). */
export interface ArenaLike {
  readonly base: number;
  readonly size: number;
  readonly registrations?: { gpu: string };
}

export interface CopyOptions {
  /** Wait for the copy to finish (default true). With false the host memory
   * must stay alive and unchanged until synchronize(). */
  wait?: boolean;
}

/** The context that the calling thread currently has, to skip redundant cuCtxSetCurrent calls. */
let currentCtx = 0n;

/** One device: its primary context and a stream that every copy and kernel of
 * this object is ordered on. */
export class GpuContext implements Disposable {
  readonly device: CudaDevice;
  readonly driverVersion: string;
  /** The CUstream (non-blocking) all work of this context goes to. */
  readonly stream: bigint;
  private ctx: bigint;
  private readonly owned = new Set<DeviceBuffer | PinnedHostBuffer | HostRegistration>();
  private deq?: Dequantizer;

  private constructor(device: CudaDevice, driverVersion: string, ctx: bigint, stream: bigint) {
    this.device = device;
    this.driverVersion = driverVersion;
    this.ctx = ctx;
    this.stream = stream;
  }

  /** Retains device `deviceIndex`'s primary context (the one the CUDA runtime,
   * and so PyTorch, uses too) and creates a stream on it. Throws AinftpError
   * naming the reason when there is no driver or no such device. */
  static open(deviceIndex = 0): GpuContext {
    const a = cudaAvailability();
    if (!a.available) throw new AinftpError("open GPU", a.reason, { hint: a.hint });
    const device = cu.device(deviceIndex);
    const ctx = cu.primaryCtxRetain(device.handle);
    try {
      cu.ctxSetCurrent(ctx);
      currentCtx = ctx;
      const stream = cu.streamCreate(CU_STREAM_NON_BLOCKING);
      return new GpuContext(device, a.driverVersion, ctx, stream);
    } catch (e) {
      currentCtx = 0n;
      cu.primaryCtxRelease(device.handle);
      throw e;
    }
  }

  get closed(): boolean {
    return this.ctx === 0n;
  }

  /** @internal Makes this context current for the next driver call. */
  _use(): void {
    if (this.ctx === 0n) throw new AinftpError("GPU context", "used after close()");
    if (currentCtx !== this.ctx) {
      cu.ctxSetCurrent(this.ctx);
      currentCtx = this.ctx;
    }
  }

  /** @internal */
  _forget(r: DeviceBuffer | PinnedHostBuffer | HostRegistration): void {
    this.owned.delete(r);
  }

  /** Bytes of host memory this context has registered. */
  get registeredBytes(): number {
    let n = 0;
    for (const r of this.owned) if (r instanceof HostRegistration) n += r.bytes;
    return n;
  }

  /** Pins [ptr, ptr + bytes) for DMA, portable across contexts. The arena
   * part passes its mapping's address (Arena.base) or a Region's ptr; the
   * range must stay mapped until unregister(). Hugepage-backed mappings pin
   * with fewer page-table entries on the GPU side too. */
  registerHost(ptr: HostPtr, bytes: number): HostRegistration {
    const op = `register ${formatSize(bytes)} of host memory with ${this.device.name}`;
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new AinftpError(op, `${bytes} is not a positive byte count`);
    if (BigInt(ptr) === 0n) throw new AinftpError(op, "null address");
    this._use();
    cu.memHostRegister(ptr, bytes, CU_MEMHOSTREGISTER_PORTABLE);
    const r = new HostRegistration(this, ptr, bytes);
    this.owned.add(r);
    return r;
  }

  /** Registers a whole arena and records it in arena.registrations.gpu (reset
   * to "not registered" on unregister). */
  registerArena(arena: ArenaLike): HostRegistration {
    this._use();
    cu.memHostRegister(arena.base, arena.size, CU_MEMHOSTREGISTER_PORTABLE);
    const regs = arena.registrations;
    if (regs) regs.gpu = `${this.device.name} (device ${this.device.index}, cuMemHostRegister)`;
    const r = new HostRegistration(this, arena.base, arena.size, () => {
      if (regs) regs.gpu = "not registered";
    });
    this.owned.add(r);
    return r;
  }

  deviceAlloc(bytes: number): DeviceBuffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new AinftpError("cuMemAlloc", `${bytes} is not a positive byte count`);
    this._use();
    const b = new DeviceBuffer(this, cu.memAlloc(bytes), bytes);
    this.owned.add(b);
    return b;
  }

  /** Page-locked host memory from the driver; writeCombined is fast to write
   * and to DMA from, slow for the CPU to read. */
  hostAlloc(bytes: number, opts: { writeCombined?: boolean } = {}): PinnedHostBuffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new AinftpError("cuMemHostAlloc", `${bytes} is not a positive byte count`);
    this._use();
    const flags = CU_MEMHOSTALLOC_PORTABLE | (opts.writeCombined ? CU_MEMHOSTALLOC_WRITECOMBINED : 0);
    const b = new PinnedHostBuffer(this, cu.memHostAlloc(bytes, flags), bytes);
    this.owned.add(b);
    return b;
  }

  /** Copies `bytes` (default: all of src) from host memory into dst (default:
   * a new device buffer of that size), on this context's stream. From a
   * registered or pinned range the copy is one DMA; from pageable memory the
   * driver stages it through its own pinned buffers. */
  toDevice(src: HostMemory, bytes?: number, dst?: DeviceBuffer, opts: CopyOptions = {}): DeviceBuffer {
    const n = byteLength(src, bytes, "copy to device");
    if (dst && n > dst.bytes) throw new AinftpError("copy to device", `${n} bytes into a ${dst.bytes}-byte device buffer`);
    const out = dst ?? this.deviceAlloc(Math.max(1, n));
    this._use();
    if (n > 0) cu.memcpyHtoDAsync(out.dptr, hostAddress(src), n, this.stream);
    if (opts.wait ?? true) this.synchronize();
    return out;
  }

  /** Copies `bytes` (default: all of dst) from device memory into host memory. */
  fromDevice(dst: HostMemory, src: DeviceBuffer, bytes?: number, opts: CopyOptions = {}): void {
    const n = byteLength(dst, bytes, "copy from device");
    if (n > src.bytes) throw new AinftpError("copy from device", `${n} bytes from a ${src.bytes}-byte device buffer`);
    this._use();
    if (n > 0) cu.memcpyDtoHAsync(hostAddress(dst), src.dptr, n, this.stream);
    if (opts.wait ?? true) this.synchronize();
  }

  /** Waits for everything queued on this context's stream. */
  synchronize(): void {
    this._use();
    cu.streamSynchronize(this.stream);
  }

  /** The dequantizer of this context (NVRTC kernel, or the host path), made once. */
  dequantizer(): Dequantizer {
    return (this.deq ??= Dequantizer.create(this));
  }

  /** Frees what this context allocated, unpins what it registered, destroys
   * its stream and releases the primary context. Idempotent. */
  close(): void {
    if (this.ctx === 0n) return;
    const errors: unknown[] = [];
    const attempt = (f: () => void) => {
      try {
        f();
      } catch (e) {
        errors.push(e);
      }
    };
    attempt(() => this.synchronize());
    attempt(() => this.deq?.close());
    for (const r of [...this.owned]) attempt(() => (r instanceof HostRegistration ? r.unregister() : r.free()));
    attempt(() => {
      this._use();
      cu.streamDestroy(this.stream);
    });
    this.ctx = 0n;
    currentCtx = 0n;
    attempt(() => cu.primaryCtxRelease(this.device.handle));
    if (errors.length) throw errors[0];
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

// ---- dequantize on the GPU -----------------------------------------------------

/** out[i] = q[i] * 2^exps[i / chunk_elems], bit-identical to native/quant.c's
 * ainftp_dequantize: an exponent in [-126, 127] is one exact power of two and
 * one rounding multiply; outside it the power is split in two exact halves
 * and the product rounds once more, in the same order as the C code.
 * __fmul_rn keeps the compiler from fusing or reordering; NVRTC's default
 * (-ftz=false) keeps subnormal results. */
export const DEQUANTIZE_KERNEL = String.raw`
__device__ __forceinline__ float ainftp_pow2(int e) { return __int_as_float((e + 127) << 23); }

extern "C" __global__ void ainftp_dequantize(const short *__restrict__ q, const short *__restrict__ exps,
                                             unsigned int chunk_elems, unsigned long long n,
                                             float *__restrict__ out)
{
  unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    int e = exps[i / chunk_elems];
    float v = (float)q[i];
    if (e >= -126 && e <= 127) {
      out[i] = __fmul_rn(v, ainftp_pow2(e));
    } else {
      int e1 = (e - (e & 1)) / 2;
      out[i] = __fmul_rn(__fmul_rn(v, ainftp_pow2(e1)), ainftp_pow2(e - e1));
    }
  }
}
`;
const KERNEL_NAME = "ainftp_dequantize";
const BLOCK = 256;
const MAX_GRID = 1 << 16;

/** PTX per target architecture, compiled once per process. */
const ptxCache = new Map<string, Uint8Array>();

/** Targets to try for a device: its own, then older ones the PTX JIT can
 * raise (an NVRTC older than the device does not know its architecture). */
function targets(cc: [number, number]): string[] {
  const own = cc[0] * 10 + cc[1];
  const older = [90, 89, 86, 80, 75, 70, 60, 52].filter((t) => t < own);
  return [own, ...older].map((t) => `compute_${t}`);
}

function compilePtx(cc: [number, number]): { ptx: Uint8Array; arch: string } {
  let last: unknown;
  for (const arch of targets(cc)) {
    const cached = ptxCache.get(arch);
    if (cached) return { ptx: cached, arch };
    try {
      const { ptx } = nvrtcCompile(DEQUANTIZE_KERNEL, "ainftp_dequantize.cu", [`--gpu-architecture=${arch}`]);
      ptxCache.set(arch, ptx);
      return { ptx, arch };
    } catch (e) {
      last = e;
      if (!(e instanceof NvrtcError && e.code === NVRTC_ERROR_INVALID_OPTION)) break;
    }
  }
  throw last;
}

export type ExpArray = Int8Array | Int16Array | Int32Array;

/** Dequantizes int16 all-reduce results into f32 device memory: with an
 * NVRTC-compiled kernel on the GPU when NVRTC is there and the driver loads
 * its PTX, else on the host (src/quantize.ts) followed by one copy. */
export class Dequantizer implements Disposable {
  /** "kernel": on the GPU; "host": dequantize on the CPU, then copy. */
  readonly mode: "kernel" | "host";
  /** Why the host path is used; "" in kernel mode. */
  readonly fallbackReason: string;
  /** compute_XY the PTX was compiled for (kernel mode). */
  readonly arch: string;
  private module = 0n;
  private fn = 0n;
  private scratch: { q?: DeviceBuffer; exps?: DeviceBuffer } = {};

  private constructor(private readonly ctx: GpuContext, mode: "kernel" | "host", reason: string, arch = "", module = 0n, fn = 0n) {
    this.mode = mode;
    this.fallbackReason = reason;
    this.arch = arch;
    this.module = module;
    this.fn = fn;
  }

  /** Compiles (or takes from the cache) and loads the kernel; never throws
   * for a missing or unusable NVRTC: that is the host path, with its reason. */
  static create(ctx: GpuContext, opts: { host?: boolean } = {}): Dequantizer {
    if (opts.host) return new Dequantizer(ctx, "host", "host path requested");
    const nv = nvrtcAvailability();
    if (!nv.available) return new Dequantizer(ctx, "host", `${nv.reason}; dequantizing on the host`);
    let compiled: { ptx: Uint8Array; arch: string };
    try {
      compiled = compilePtx(ctx.device.computeCapability);
    } catch (e) {
      if (!(e instanceof AinftpError)) throw e;
      return new Dequantizer(ctx, "host", `NVRTC ${nv.version} could not compile the kernel (${e.message}); dequantizing on the host`);
    }
    ctx._use();
    let module: bigint;
    try {
      module = cu.moduleLoadData(compiled.ptx);
    } catch (e) {
      if (!(e instanceof CudaError)) throw e;
      return new Dequantizer(ctx, "host",
        `driver ${ctx.driverVersion} refused NVRTC ${nv.version}'s PTX (${e.codeName}); dequantizing on the host`);
    }
    try {
      return new Dequantizer(ctx, "kernel", "", compiled.arch, module, cu.moduleGetFunction(module, KERNEL_NAME));
    } catch (e) {
      cu.moduleUnload(module);
      throw e;
    }
  }

  /** out[i] = q[i] * 2^exps[floor(i / chunkElems)] for i < n, all in device
   * memory: q holds n int16, exps one int16 per chunk (each in
   * [DEQ_EXP_MIN, DEQ_EXP_MAX], unchecked here), out n floats. Kernel mode
   * only; queued on the context's stream (synchronize() to wait). */
  runOnDevice(q: DeviceBuffer, exps: DeviceBuffer, chunkElems: number, n: number, out: DeviceBuffer): void {
    const op = "dequantize on the GPU";
    if (this.mode !== "kernel") throw new AinftpError(op, `no kernel: ${this.fallbackReason}`);
    if (!(chunkElems > 0 && chunkElems <= 0xffffffff)) throw new AinftpError(op, `chunkElems ${chunkElems} out of range`);
    if (n === 0) return;
    if (q.bytes < 2 * n || out.bytes < 4 * n || exps.bytes < 2 * chunkCount(n, chunkElems))
      throw new AinftpError(op, `buffers too small for ${n} elements in chunks of ${chunkElems}`);
    this.ctx._use();
    const grid = Math.min(Math.ceil(n / BLOCK), MAX_GRID);
    cu.launchKernel(this.fn, [grid, 1, 1], [BLOCK, 1, 1], 0, this.ctx.stream, [
      ["ptr", q.dptr], ["ptr", exps.dptr], ["u32", chunkElems], ["u64", BigInt(n)], ["ptr", out.dptr],
    ]);
  }

  /** Dequantizes host int16 results (chunk c at exponent exps[c]) into the
   * device buffer out, and waits. Kernel mode copies q and exps up and runs
   * the kernel; host mode dequantizes on the CPU and copies the floats. */
  dequantizeTo(out: DeviceBuffer, q: Int16Array, exps: ExpArray, chunkElems: number): void {
    const op = "dequantize to the GPU";
    const n = q.length;
    const nchunks = chunkCount(n, chunkElems);
    if (exps.length < nchunks) throw new AinftpError(op, `${exps.length} exponents for ${nchunks} chunks`);
    if (out.bytes < 4 * n) throw new AinftpError(op, `${n} floats do not fit a ${out.bytes}-byte device buffer`);
    const e16 = new Int16Array(nchunks);
    for (let c = 0; c < nchunks; c++) {
      const e = exps[c];
      if (e < DEQ_EXP_MIN || e > DEQ_EXP_MAX) throw new AinftpError(op, `chunk ${c}: exponent ${e} outside [${DEQ_EXP_MIN}, ${DEQ_EXP_MAX}]`);
      e16[c] = e;
    }
    if (n === 0) return;
    if (this.mode === "host") {
      const f = new Float32Array(n);
      for (let c = 0; c < nchunks; c++) {
        const s = c * chunkElems, end = Math.min(n, s + chunkElems);
        dequantize(q.subarray(s, end), e16[c], f.subarray(s, end));
      }
      this.ctx.toDevice(f, 4 * n, out);
      return;
    }
    const qd = this.scratchBuffer("q", 2 * n);
    const ed = this.scratchBuffer("exps", 2 * nchunks);
    this.ctx.toDevice(q, 2 * n, qd, { wait: false });
    this.ctx.toDevice(e16, 2 * nchunks, ed, { wait: false });
    this.runOnDevice(qd, ed, chunkElems, n, out);
    this.ctx.synchronize();
  }

  private scratchBuffer(which: "q" | "exps", bytes: number): DeviceBuffer {
    const have = this.scratch[which];
    if (have && !have.freed && have.bytes >= bytes) return have;
    have?.free();
    return (this.scratch[which] = this.ctx.deviceAlloc(bytes));
  }

  /** Frees the scratch buffers and unloads the module. Idempotent. */
  close(): void {
    this.scratch.q?.free();
    this.scratch.exps?.free();
    this.scratch = {};
    if (this.module !== 0n && !this.ctx.closed) {
      this.ctx._use();
      cu.moduleUnload(this.module);
    }
    this.module = 0n;
    this.fn = 0n;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

// ---- one line for CLIs -----------------------------------------------------------

function gib(bytes: number): string {
  return `${Math.floor(bytes / 2 ** 30)} GiB`;
}

/** "GPU: none (no CUDA driver: libcuda.so.1 not found); using the CPU path",
 * "GPU: NVIDIA H200 (139 GiB), CUDA driver 12.4", or with a context that has
 * registered memory, "GPU: NVIDIA H200 (139 GiB), arena registered". */
export function gpuStatusLine(ctx?: GpuContext): string {
  const a = cudaAvailability();
  if (!a.available) return `GPU: none (${a.summary}); using the CPU path`;
  const d = ctx && !ctx.closed ? ctx.device : a.devices[0];
  const more = a.devices.length > 1 ? ` (+${a.devices.length - 1} more)` : "";
  const tail = ctx && !ctx.closed
    ? ctx.registeredBytes > 0 ? "arena registered" : "arena not registered"
    : `CUDA driver ${a.driverVersion}`;
  return `GPU: ${d.name} (${gib(d.totalMem)})${more}, ${tail}`;
}
