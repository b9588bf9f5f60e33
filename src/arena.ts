// The arena: one big mapping, on 2 MB pages when the system has them, carved
// into aligned regions by a bump allocator. It holds what the kernel and the
// GPU must see without copies (AF_XDP UMEM, pinned staging buffers); few TLB
// entries cover it, and one registration covers every region in it.
import { toArrayBuffer } from "bun:ffi";
import { existsSync, readFileSync, statfsSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { mmapAnon, mmapFile, munmap, numaNode } from "../native/arena.ts";
import { AinftpError, errnoName } from "./errors.ts";
import { HUGE_PAGE_SIZE, hugePagePool, hugePagesFor, reserveHint, type HugePagePool } from "./hugepages.ts";
import { formatSize } from "./units.ts";

export const SMALL_PAGE_SIZE = 4096;
const HUGETLBFS_MAGIC = 0x958458f6;
const ENOMEM = 12;

/** auto: 2 MB pages when the pool has them, else 4 KB (see fallbackReason);
 * require: 2 MB pages or an error; off: 4 KB pages. */
export type HugePagesMode = "auto" | "require" | "off";
export const HUGEPAGES_MODES: readonly HugePagesMode[] = ["auto", "require", "off"];

export interface ArenaOptions {
  /** Bytes; rounded up to a whole number of pages. */
  size: number;
  /** Default "auto". */
  hugepages?: HugePagesMode;
  /** Fault every page in at open (default true): no page faults later, in the data path. */
  populate?: boolean;
  /** A file on hugetlbfs (or tmpfs, for 4 KB pages) to map shared, so that
   * other processes mapping it see the same memory. Created if missing and
   * left in place on close (it holds its pages until it is deleted). */
  file?: string;
}

/** Who else uses the arena's memory; filled in by the NIC (AF_XDP UMEM) and GPU parts. */
export interface ArenaRegistrations {
  nic: "none" | "af_xdp (copy mode)" | "af_xdp (zero-copy)";
  gpu: string;
}

export interface ArenaStatus {
  /** Mapped bytes (the size asked for, rounded up to pages). */
  size: number;
  /** Bytes handed out by alloc() since open or the last reset(). */
  used: number;
  pageSize: number;
  pages: number;
  hugepages: boolean;
  /** KernelPageSize of the mapping in /proc/self/smaps: what the kernel says it used. */
  kernelPageSize: number | null;
  numaNode: number | null;
  populated: boolean;
  file: string | null;
  /** Why "auto" ended on 4 KB pages; null when it did not fall back. */
  fallbackReason: string | null;
  registrations: ArenaRegistrations;
  /** The system's 2 MB pool, now. */
  pool: HugePagePool;
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** "64MiB": a size as the CLI's --size accepts it. */
function sizeArg(bytes: number): string {
  return formatSize(bytes).replace(" ", "");
}

/** KernelPageSize of the mapping of this process that contains addr (from
 * /proc/self/smaps), or null when no mapping contains it. */
export function kernelPageSizeOf(addr: number): number | null {
  let inside = false;
  for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (range) {
      inside = Number.parseInt(range[1], 16) <= addr && addr < Number.parseInt(range[2], 16);
      continue;
    }
    if (inside) {
      const m = /^KernelPageSize:\s+(\d+) kB/.exec(line);
      if (m) return Number(m[1]) * 1024;
    }
  }
  return null;
}

/** A piece of an arena. Its address stays valid until the arena is reset or closed. */
export class Region {
  /** @internal */
  constructor(
    private readonly arena: Arena,
    private readonly generation: number,
    /** Bytes from the arena's base. */
    readonly offset: number,
    readonly bytes: number,
  ) {}

  private check(): void {
    if (this.arena.closed) throw new AinftpError("arena region", "used after the arena was closed");
    if (this.arena.generation !== this.generation) throw new AinftpError("arena region", "used after arena.reset() freed it");
  }

  /** Absolute address of the first byte. */
  get ptr(): number {
    this.check();
    return this.arena.base + this.offset;
  }

  /** The bytes, without a copy. The view must not be used once the arena is closed. */
  u8(): Uint8Array {
    return new Uint8Array(toArrayBuffer(this.ptr, 0, this.bytes));
  }

  /** The region as floats (bytes / 4 of them); needs a 4-byte aligned region. */
  f32(): Float32Array {
    const p = this.ptr;
    if (p % 4 !== 0) throw new AinftpError("arena region", `offset ${this.offset} is not 4-byte aligned: allocate it with align >= 4`);
    return new Float32Array(toArrayBuffer(p, 0, this.bytes - (this.bytes % 4)));
  }
}

interface Mapping {
  base: number;
  size: number;
  pageSize: number;
  fallbackReason: string | null;
}

export class Arena implements Disposable {
  readonly size: number;
  readonly pageSize: number;
  readonly hugepages: boolean;
  readonly numaNode: number | null;
  readonly fallbackReason: string | null;
  readonly file: string | null;
  readonly populated: boolean;
  /** Set by the parts that register the arena with the NIC or the GPU. */
  readonly registrations: ArenaRegistrations = { nic: "none", gpu: "not registered" };
  private baseAddr: number;
  private cursor = 0;
  private gen = 0;

  private constructor(m: Mapping, file: string | null, populated: boolean) {
    this.baseAddr = m.base;
    this.size = m.size;
    this.pageSize = m.pageSize;
    this.hugepages = m.pageSize > SMALL_PAGE_SIZE;
    this.fallbackReason = m.fallbackReason;
    this.file = file;
    this.populated = populated;
    const node = numaNode(m.base);
    this.numaNode = node >= 0 ? node : null;
  }

  /**
   * Maps an arena of at least o.size bytes. With hugepages "require" and too
   * few 2 MB pages available it throws, saying how many are missing and how
   * to reserve them; with "auto" it falls back to 4 KB pages and says why in
   * fallbackReason.
   */
  static open(o: ArenaOptions): Arena {
    const mode = o.hugepages ?? "auto";
    const populate = o.populate ?? true;
    const size = o.size;
    if (!Number.isSafeInteger(size) || size <= 0) throw new AinftpError("open arena", `size ${size} is not a positive byte count`);
    if (!HUGEPAGES_MODES.includes(mode))
      throw new AinftpError("open arena", `hugepages '${mode}' is not one of ${HUGEPAGES_MODES.join(", ")}`);
    const op = `open arena of ${formatSize(size)}`;
    const m = o.file ? mapFile(op, o.file, size, mode, populate) : mapAnon(op, size, mode, populate);
    return new Arena(m, o.file ?? null, populate);
  }

  get closed(): boolean {
    return this.baseAddr === 0;
  }

  /** Address of the first byte. */
  get base(): number {
    if (this.closed) throw new AinftpError("arena", "used after close()");
    return this.baseAddr;
  }

  get pages(): number {
    return this.size / this.pageSize;
  }

  get used(): number {
    return this.cursor;
  }

  /** @internal Bumped by reset() and close(): regions of an older generation are stale. */
  get generation(): number {
    return this.gen;
  }

  /** `bytes` at an address aligned to `align` (a power of two up to the page size). */
  alloc(bytes: number, align = 64): Region {
    const op = `arena alloc ${bytes} bytes`;
    if (this.closed) throw new AinftpError(op, "the arena is closed");
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new AinftpError(op, `${bytes} is not a positive byte count`);
    if (!Number.isSafeInteger(align) || align <= 0 || (align & (align - 1)) !== 0 || align > this.pageSize)
      throw new AinftpError(op, `alignment ${align} is not a power of two in 1..${this.pageSize} (the page size)`);
    const offset = roundUp(this.cursor, align); // base is page-aligned, so offset alignment is address alignment
    if (offset + bytes > this.size) {
      const left = Math.max(0, this.size - offset);
      throw new AinftpError(op, `the arena is exhausted: asked ${formatSize(bytes)} (${bytes} bytes, aligned to ${align}), ${formatSize(left)} (${left} bytes) left of ${formatSize(this.size)}`, {
        errno: ENOMEM,
        hint: "open a larger arena (--size) or reset() it between uses",
      });
    }
    this.cursor = offset + bytes;
    return new Region(this, this.gen, offset, bytes);
  }

  /** Frees every region at once; their addresses may be handed out again. */
  reset(): void {
    if (this.closed) throw new AinftpError("arena reset", "the arena is closed");
    this.cursor = 0;
    this.gen++;
  }

  /** KernelPageSize of the mapping, as /proc/self/smaps reports it. */
  kernelPageSize(): number | null {
    return kernelPageSizeOf(this.base);
  }

  status(): ArenaStatus {
    return {
      size: this.size,
      used: this.used,
      pageSize: this.pageSize,
      pages: this.pages,
      hugepages: this.hugepages,
      kernelPageSize: this.kernelPageSize(),
      numaNode: this.numaNode,
      populated: this.populated,
      file: this.file,
      fallbackReason: this.fallbackReason,
      registrations: { ...this.registrations },
      pool: hugePagePool(),
    };
  }

  /** Unmaps the arena; idempotent. Views from u8()/f32() must not be used after. */
  close(): void {
    if (this.closed) return;
    const base = this.baseAddr;
    this.baseAddr = 0;
    this.cursor = 0;
    this.gen++;
    const rc = munmap(base, this.size);
    if (rc < 0) throw new AinftpError("close arena", "munmap failed", { errno: -rc });
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

// ---- mapping -------------------------------------------------------------------------

function mapAnon(op: string, size: number, mode: HugePagesMode, populate: boolean): Mapping {
  let fallbackReason: string | null = null;
  if (mode !== "off") {
    const pool = hugePagePool();
    const pages = hugePagesFor(size);
    let why: string;
    let errno = 0;
    let missing = Math.max(0, pages - pool.available);
    if (!pool.present) why = "this kernel has no 2 MB huge page pool";
    else if (missing > 0)
      why = `${missing} of the ${pages} 2 MB huge pages it needs are missing (${pool.available} available; pool: ${pool.total} total, ${pool.free} free, ${pool.reserved} reserved)`;
    else {
      const m = mmapAnon(pages * HUGE_PAGE_SIZE, true, populate);
      if (typeof m !== "number") return { base: m.addr, size: pages * HUGE_PAGE_SIZE, pageSize: HUGE_PAGE_SIZE, fallbackReason };
      // the pool looked big enough: another process took the pages, or a cgroup limit applies
      errno = -m;
      missing = Math.max(1, pages - hugePagePool().available);
      why = `mmap of ${pages} 2 MB huge pages failed (${errnoName(errno)})`;
    }
    if (mode === "require")
      throw new AinftpError(op, `2 MB pages required, but ${why}`, {
        errno,
        hint: pool.present
          ? reserveHint(missing, pool.nrHugepages).replace("--size …", `--size ${sizeArg(size)}`)
          : "the kernel needs CONFIG_HUGETLBFS; use --hugepages auto or off",
      });
    fallbackReason = why;
  }
  const len = roundUp(size, SMALL_PAGE_SIZE);
  const m = mmapAnon(len, false, populate);
  if (typeof m === "number") {
    const avail = hugePagePool().memAvailable;
    throw new AinftpError(op, `mmap of ${formatSize(len)} on 4 KB pages failed`, {
      errno: -m,
      hint: -m === ENOMEM ? `not enough memory (${formatSize(avail)} available): ask for less` : undefined,
    });
  }
  return { base: m.addr, size: len, pageSize: SMALL_PAGE_SIZE, fallbackReason };
}

function mapFile(op: string, file: string, size: number, mode: HugePagesMode, populate: boolean): Mapping {
  op = `${op} in ${file}`;
  let fs: { type: number; bsize: number };
  try {
    fs = statfsSync(dirname(file));
  } catch (e) {
    throw new AinftpError(op, `cannot stat the file system of ${dirname(file)}`, { errno: (e as { errno?: number }).errno ?? 2 });
  }
  const hugetlbfs = fs.type === HUGETLBFS_MAGIC;
  if (mode === "require" && !hugetlbfs)
    throw new AinftpError(op, `${dirname(file)} is not on hugetlbfs, so the file cannot have huge pages`, {
      errno: 22,
      hint: "put the file on a hugetlbfs mount (grep hugetlbfs /proc/mounts; mount one with: mount -t hugetlbfs none /dev/hugepages)",
    });
  if (mode === "off" && hugetlbfs)
    throw new AinftpError(op, `${dirname(file)} is on hugetlbfs, whose files always have huge pages`, {
      errno: 22,
      hint: "use --hugepages auto or require, or a file on tmpfs (/dev/shm) for 4 KB pages",
    });
  const pageSize = hugetlbfs ? fs.bsize : SMALL_PAGE_SIZE;
  const len = roundUp(size, pageSize);
  const m = mmapFile(file, len, populate);
  if (typeof m !== "number") return { base: m.addr, size: len, pageSize, fallbackReason: null };
  const errno = -m;
  if (hugetlbfs && errno === ENOMEM && pageSize === HUGE_PAGE_SIZE) {
    // pages the file already has (hugetlbfs counts them in st_blocks) are not taken from the pool again
    const had = existsSync(file) ? Math.floor((statSync(file).blocks * 512) / pageSize) : 0;
    const pool = hugePagePool();
    const missing = Math.max(1, hugePagesFor(len) - had - pool.available);
    throw new AinftpError(op, `not enough 2 MB huge pages: ${missing} missing (${pool.available} available)`, {
      errno,
      hint: reserveHint(missing, pool.nrHugepages).replace("--size …", `--size ${sizeArg(missing * HUGE_PAGE_SIZE)}`),
    });
  }
  throw new AinftpError(op, "mmap of the file failed", {
    errno,
    hint: errno === 13 || errno === 1 ? `check the permissions of ${file}` : undefined,
  });
}
