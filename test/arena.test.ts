// The arena: the bump allocator (alignment, exhaustion, reset, close), page
// size selection against the system's 2 MB pool (fallback, require, a real
// 2 MB arena), MAP_FAILED handling, a hugetlbfs file shared by two mappings
// and two processes, reservations given back at exit and on signals, and
// `ainftp arena`. The pool is a system-wide setting: every test that changes
// nr_hugepages puts it back, and afterAll restores the value found at start.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../cli/program.ts";
import type { IO } from "../cli/io.ts";
import { mmapAnon, munmap } from "../native/arena.ts";
import { Arena, SMALL_PAGE_SIZE } from "../src/arena.ts";
import { AinftpError } from "../src/errors.ts";
import { HUGE_PAGE_SIZE, hugePagePool, releaseAll, reserve } from "../src/hugepages.ts";
import { BIN, ROOT, ensureBuilt, must, sh } from "./helpers/netns.ts";

const MiB = 2 ** 20;
const NR = "/proc/sys/vm/nr_hugepages";
const root = process.getuid?.() === 0 && existsSync("/sys/kernel/mm/hugepages/hugepages-2048kB");
if (!root) console.warn("test/arena.test.ts: NOT ROOT or no 2 MB pool — the huge page tests are SKIPPED");

const readNr = () => Number(readFileSync(NR, "utf8").trim());
const writeNr = (n: number) => writeFileSync(NR, String(n));
let nrAtStart = 0;

beforeAll(() => {
  if (root) nrAtStart = readNr();
});
afterEach(() => releaseAll());
afterAll(() => {
  releaseAll();
  if (root) writeNr(nrAtStart);
});

/** Runs fn with nr_hugepages set to n, then puts the old value back. */
async function withPool<T>(n: number, fn: () => T | Promise<T>): Promise<T> {
  const before = readNr();
  writeNr(n);
  try {
    return await fn();
  } finally {
    writeNr(before);
  }
}

function thrown(fn: () => unknown): AinftpError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(AinftpError);
    return e as AinftpError;
  }
  throw new Error("expected an AinftpError, nothing was thrown");
}

/** Runs TypeScript in a child bun (native code that may crash fails one test, not the runner). */
function child(code: string, timeoutMs = 20_000) {
  return sh([process.execPath, "-e", code], { timeoutMs });
}

describe("the bump allocator (4 KB pages, no privileges)", () => {
  test("regions are aligned as asked, in order, without overlap", () => {
    using a = Arena.open({ size: MiB, hugepages: "off" });
    expect(a.pageSize).toBe(SMALL_PAGE_SIZE);
    expect(a.base % SMALL_PAGE_SIZE).toBe(0);
    let end = 0;
    for (const align of [1, 2, 8, 64, 256, 4096, 16, 4096, 1]) {
      const pad = a.alloc(3, 1); // leave the cursor misaligned
      expect(pad.offset).toBe(end);
      const r = a.alloc(100, align);
      expect(r.ptr % align).toBe(0);
      expect(r.offset % align).toBe(0);
      expect(r.ptr).toBe(a.base + r.offset);
      expect(r.offset).toBeGreaterThanOrEqual(pad.offset + 3);
      expect(r.offset - (pad.offset + 3)).toBeLessThan(align);
      end = r.offset + r.bytes;
      expect(a.used).toBe(end);
    }
    const d = a.alloc(64);
    expect(d.ptr % 64).toBe(0); // the default alignment is a cache line
    for (const bad of [0, 3, 48, -64, 8192, 1.5])
      expect(thrown(() => a.alloc(8, bad)).message).toContain(`alignment ${bad} is not a power of two in 1..4096`);
    for (const bad of [0, -1, 2.5, NaN]) expect(thrown(() => a.alloc(bad)).message).toContain("is not a positive byte count");
  });

  test("views: u8 and f32 see the same bytes; f32 needs 4-byte alignment", () => {
    using a = Arena.open({ size: 64 * 1024, hugepages: "off", populate: false });
    const r = a.alloc(4096, 64);
    const f = r.f32();
    expect(f.length).toBe(1024);
    f[0] = 1.5;
    f[1023] = -2;
    const u = r.u8();
    expect(u.length).toBe(4096);
    expect(new Float32Array(u.buffer, u.byteOffset, 2)[0]).toBe(1.5);
    expect(new DataView(u.buffer, u.byteOffset).getFloat32(4092, true)).toBe(-2);
    a.alloc(1, 1);
    const odd = a.alloc(8, 1);
    expect(odd.offset % 4).not.toBe(0);
    expect(thrown(() => odd.f32()).message).toContain("is not 4-byte aligned");
  });

  test("exhaustion: the error says how much was asked and how much is left", () => {
    using a = Arena.open({ size: 64 * 1024, hugepages: "off" });
    expect(a.size).toBe(65536);
    a.alloc(60000);
    const e = thrown(() => a.alloc(8192, 64));
    expect(e.message).toContain("the arena is exhausted: asked 8 KiB (8192 bytes, aligned to 64)");
    expect(e.message).toContain("(5504 bytes) left of 64 KiB"); // 65536 - roundUp(60000, 64)
    expect(e.errno).toBe(12);
    expect(e.hint).toContain("larger arena");
    expect(a.alloc(5504).offset).toBe(60032); // exactly what was left still fits
    expect(thrown(() => a.alloc(1, 1)).message).toContain("(0 bytes) left");
  });

  test("reset() frees every region; a region from before the reset refuses to be used", () => {
    using a = Arena.open({ size: 64 * 1024, hugepages: "off" });
    const old = a.alloc(65536);
    old.u8()[0] = 7;
    a.reset();
    expect(a.used).toBe(0);
    const fresh = a.alloc(100);
    expect(fresh.offset).toBe(0);
    expect(fresh.u8()[0]).toBe(7); // same memory, not cleared
    expect(thrown(() => old.ptr).message).toContain("used after arena.reset() freed it");
    expect(thrown(() => old.u8()).message).toContain("reset()");
  });

  test("close() and dispose are idempotent; using the arena or a region after close throws", () => {
    let r;
    let a: Arena;
    {
      using inner = Arena.open({ size: 4 * SMALL_PAGE_SIZE, hugepages: "off" });
      a = inner;
      r = inner.alloc(128);
      expect(inner.closed).toBe(false);
    }
    expect(a.closed).toBe(true);
    a.close();
    a[Symbol.dispose]();
    expect(thrown(() => r.ptr).message).toBe("arena region: used after the arena was closed");
    expect(thrown(() => r.f32()).message).toContain("closed");
    expect(thrown(() => a.base).message).toBe("arena: used after close()");
    expect(thrown(() => a.alloc(1)).message).toContain("the arena is closed");
    expect(thrown(() => a.reset()).message).toContain("the arena is closed");
  });

  test("sizes round up to whole pages; bad options are refused", () => {
    using a = Arena.open({ size: 5000, hugepages: "off" });
    expect(a.size).toBe(8192);
    expect(a.pages).toBe(2);
    expect(a.hugepages).toBe(false);
    expect(a.fallbackReason).toBeNull();
    expect(a.registrations).toEqual({ nic: "none", gpu: "not registered" });
    expect(thrown(() => Arena.open({ size: 0 })).message).toContain("size 0 is not a positive byte count");
    expect(thrown(() => Arena.open({ size: 4096, hugepages: "maybe" as never })).message).toContain("not one of auto, require, off");
  });

  test("status(): page size from smaps, NUMA node, the pool", () => {
    using a = Arena.open({ size: MiB, hugepages: "off" });
    const s = a.status();
    expect(s.kernelPageSize).toBe(4096); // transparent huge pages are off for it
    const online = readFileSync("/sys/devices/system/node/online", "utf8").trim();
    expect(s.numaNode).not.toBeNull();
    expect(online.split(/[,-]/).map(Number)).toContain(s.numaNode!);
    expect(s.pool.pageSize).toBe(HUGE_PAGE_SIZE);
    expect(Object.keys(s).sort()).toEqual(
      ["fallbackReason", "file", "hugepages", "kernelPageSize", "numaNode", "pageSize", "pages", "pool", "populated", "registrations", "size", "used"],
    );
  });

  test("MAP_FAILED is an errno, not a huge address and not a crash", () => {
    // in a child: a wrong comparison would hand back 2^64-1 as an address and segfault on use
    const r = child(`
      import { mmapAnon, munmap } from "${ROOT}/native/arena.ts";
      import { Arena } from "${ROOT}/src/arena.ts";
      console.log(JSON.stringify({
        hugeAbsurd: mmapAnon(2 ** 46, true, false),
        smallAbsurd: mmapAnon(2 ** 50, false, true),
        zero: mmapAnon(0, false, false),
        badUnmap: munmap(4097, 4096),
      }));
      try { Arena.open({ size: 2 ** 50, hugepages: "off" }); } catch (e) { console.log(e.message); console.log(e.hint); }
    `);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const [first, msg, hint] = r.stdout.trim().split("\n");
    const j = JSON.parse(first);
    expect([-12, -22]).toContain(j.hugeAbsurd); // ENOMEM (no pages) or EINVAL
    expect(j.smallAbsurd).toBe(-12);
    expect(j.zero).toBe(-22);
    expect(j.badUnmap).toBe(-22);
    expect(msg).toBe("open arena of 1048576 GiB: mmap of 1048576 GiB on 4 KB pages failed (ENOMEM)");
    expect(hint).toContain("not enough memory");
  });
});

describe.skipIf(!root)("2 MB pages against the system pool (root)", () => {
  test("auto with an empty pool: 4 KB pages, and fallbackReason says why", async () => {
    await withPool(0, () => {
      using a = Arena.open({ size: 8 * MiB, hugepages: "auto" });
      expect(a.hugepages).toBe(false);
      expect(a.pageSize).toBe(4096);
      expect(a.kernelPageSize()).toBe(4096);
      expect(a.fallbackReason).toContain("4 of the 4 2 MB huge pages it needs are missing (0 available");
    });
  });

  test("require with too few pages: the error counts the missing pages and says how to reserve them", async () => {
    for (const [pool, missing] of [[0, 4], [1, 3]]) {
      await withPool(pool, () => {
        const e = thrown(() => Arena.open({ size: 8 * MiB, hugepages: "require" }));
        expect(e.message).toContain(`open arena of 8 MiB: 2 MB pages required, but ${missing} of the 4 2 MB huge pages it needs are missing (${pool} available`);
        expect(e.hint).toContain("ainftp arena --reserve --size 8MiB");
        expect(e.hint).toContain("echo 4 > /proc/sys/vm/nr_hugepages");
      });
    }
    expect(hugePagePool().reserved).toBe(0); // nothing was left half-mapped
  });

  test("after reserve(): a 2 MB-page arena; the pool's free count drops by its pages; release() restores nr_hugepages", () => {
    const before = readNr();
    const r = reserve(4);
    expect(r.after).toBeGreaterThanOrEqual(before);
    expect(readNr()).toBe(r.after);
    const free0 = hugePagePool().free;
    {
      using a = Arena.open({ size: 5 * MiB, hugepages: "require" });
      expect(a.hugepages).toBe(true);
      expect(a.pageSize).toBe(HUGE_PAGE_SIZE);
      expect(a.size).toBe(6 * MiB);
      expect(a.pages).toBe(3);
      expect(a.kernelPageSize()).toBe(HUGE_PAGE_SIZE);
      expect(a.base % HUGE_PAGE_SIZE).toBe(0);
      expect(hugePagePool().free).toBe(free0 - 3); // populated: all three faulted in
      const big = a.alloc(4 * MiB, HUGE_PAGE_SIZE);
      expect(big.ptr % HUGE_PAGE_SIZE).toBe(0);
      big.f32().fill(3);
      expect(big.f32()[MiB - 1]).toBe(3);
      expect(thrown(() => a.alloc(1, 2 * HUGE_PAGE_SIZE)).message).toContain("in 1..2097152");
    }
    expect(hugePagePool().free).toBe(free0);
    r.release();
    r.release();
    expect(readNr()).toBe(before);
  });

  test("without populate the pages are reserved at mmap and faulted on first use", () => {
    const r = reserve(2);
    const p0 = hugePagePool();
    using a = Arena.open({ size: 4 * MiB, hugepages: "require", populate: false });
    // numaNode faulted in the first page; the other stays reserved
    const p1 = hugePagePool();
    expect(p1.free).toBe(p0.free - 1);
    expect(p1.reserved).toBe(p0.reserved + 1);
    a.alloc(4 * MiB).u8().fill(1);
    expect(hugePagePool().free).toBe(p0.free - 2);
    a.close();
    r.release();
  });

  test("reserve() when the pool already has enough adds nothing", async () => {
    await withPool(readNr() + 3, () => {
      const nr = readNr();
      const r = reserve(2);
      expect(r.added).toBe(0);
      expect(readNr()).toBe(nr);
      r.release();
      expect(readNr()).toBe(nr);
    });
  });

  test("a reservation goes back when the process exits, and on SIGTERM", async () => {
    const before = readNr();
    const exit = child(`
      import { reserve } from "${ROOT}/src/hugepages.ts";
      const r = reserve(2);
      console.log(r.added, r.after, require("node:fs").readFileSync("${NR}", "utf8").trim());
    `);
    expect(exit.code).toBe(0);
    expect(exit.stdout.trim()).toBe(`2 ${before + 2} ${before + 2}`);
    expect(readNr()).toBe(before);

    const p = Bun.spawn([process.execPath, "-e", `
      import { reserve } from "${ROOT}/src/hugepages.ts";
      reserve(3);
      console.log("ready");
      setInterval(() => {}, 1000);
    `], { stdout: "pipe", stderr: "pipe" });
    const reader = p.stdout.getReader();
    let out = "";
    while (!out.includes("ready")) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    expect(out).toContain("ready");
    expect(readNr()).toBe(before + 3);
    p.kill("SIGTERM");
    expect(await p.exited).toBe(143);
    expect(readNr()).toBe(before);
  });

  test("a hugetlbfs file arena is shared: two mappings and a second process see the same bytes", () => {
    let dir = readFileSync("/proc/mounts", "utf8").split("\n").map((l) => l.split(" "))
      .find((f) => f[2] === "hugetlbfs" && !/pagesize=(?!2M)/.test(f[3] ?? ""))?.[1];
    let mounted: string | undefined;
    if (!dir) {
      mounted = mkdtempSync(join(tmpdir(), "ainftp-hugetlbfs-"));
      must(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "none", mounted]);
      dir = mounted;
    }
    const file = join(dir, `arena-test-${process.pid}`);
    const r = reserve(2);
    try {
      using a = Arena.open({ size: 4 * MiB, hugepages: "require", file });
      using b = Arena.open({ size: 4 * MiB, hugepages: "auto", file });
      expect(a.pageSize).toBe(HUGE_PAGE_SIZE);
      expect(b.hugepages).toBe(true);
      expect(a.file).toBe(file);
      expect(a.base).not.toBe(b.base);
      expect(a.kernelPageSize()).toBe(HUGE_PAGE_SIZE);
      const wa = a.alloc(4 * MiB).u8();
      const rb = b.alloc(4 * MiB).u8();
      wa[0] = 0xab;
      wa[4 * MiB - 1] = 0xcd;
      expect(rb[0]).toBe(0xab);
      expect(rb[4 * MiB - 1]).toBe(0xcd);
      // another process maps the file (no new pages needed) and writes back
      const c = child(`
        import { Arena } from "${ROOT}/src/arena.ts";
        using x = Arena.open({ size: 4 * 1024 * 1024, hugepages: "require", file: "${file}" });
        const u = x.alloc(16).u8();
        console.log(u[0]);
        u[1] = 0x5a;
      `);
      expect(c.stderr).toBe("");
      expect(c.stdout.trim()).toBe(String(0xab));
      expect(rb[1]).toBe(0x5a);
      // the file's page size decides: "off" cannot be honoured there
      expect(thrown(() => Arena.open({ size: 4 * MiB, hugepages: "off", file })).message).toContain("is on hugetlbfs, whose files always have huge pages");
    } finally {
      rmSync(file, { force: true });
      r.release();
      if (mounted) {
        must(["umount", mounted]);
        rmdirSync(mounted);
      }
    }
    expect(hugePagePool().reserved).toBe(0);
  });

  test("a file arena on tmpfs is 4 KB pages; require refuses it", () => {
    const dir = mkdtempSync(join("/dev/shm", "ainftp-arena-"));
    try {
      const file = join(dir, "a");
      const e = thrown(() => Arena.open({ size: MiB, hugepages: "require", file }));
      expect(e.message).toContain("is not on hugetlbfs");
      expect(e.hint).toContain("mount -t hugetlbfs");
      expect(existsSync(file)).toBe(false);
      using a = Arena.open({ size: MiB, hugepages: "auto", file });
      using b = Arena.open({ size: MiB, file });
      expect(a.pageSize).toBe(4096);
      a.alloc(8).u8()[3] = 9;
      expect(b.alloc(8).u8()[3]).toBe(9);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a hugetlbfs file mapping with too few pages names the shortfall and leaves no file behind", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ainftp-hugetlbfs-"));
    must(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", dir]);
    try {
      await withPool(1, () => {
        const file = join(dir, "f");
        const e = thrown(() => Arena.open({ size: 8 * MiB, hugepages: "auto", file }));
        expect(e.message).toContain("not enough 2 MB huge pages: 3 missing (1 available)");
        expect(e.hint).toContain("echo 4 > /proc/sys/vm/nr_hugepages");
        expect(existsSync(file)).toBe(false);
      });
    } finally {
      must(["umount", dir]);
      rmdirSync(dir);
    }
  });
});

// ---- the CLI ------------------------------------------------------------------------------

async function cli(argv: string[]) {
  const c = { out: "", err: "" };
  const io: IO = { out: (t) => void (c.out += t), err: (t) => void (c.err += t), tty: false };
  const code = await run(argv, io);
  return { code, ...c };
}

describe("ainftp arena", () => {
  test("--size 64MiB --json: stable field names", async () => {
    const r = await cli(["arena", "--size", "64MiB", "--json"]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(Object.keys(j).sort()).toEqual(
      ["fallbackReason", "file", "hugepages", "kernelPageSize", "numaNode", "pageSize", "pages", "pool", "populated", "registrations", "reservation", "size", "used"],
    );
    expect(Object.keys(j.pool).sort()).toEqual(["available", "free", "memAvailable", "memFree", "nrHugepages", "pageSize", "present", "reserved", "surplus", "total"]);
    expect(j.size).toBe(64 * MiB);
    expect(j.pages * j.pageSize).toBe(64 * MiB);
    expect(j.kernelPageSize).toBe(j.pageSize);
    expect(j.registrations).toEqual({ nic: "none", gpu: "not registered" });
    expect(j.reservation).toBeNull();
    if (!j.hugepages) expect(j.fallbackReason).toContain("32 2 MB huge pages it needs are missing");
  });

  test("text output: page size, pages, NUMA node, registrations and the pool", async () => {
    const r = await cli(["arena", "--size", "4MiB", "--hugepages", "off"]);
    expect(r.code).toBe(0);
    expect(r.out).toStartWith("arena of 4 MiB on 4 KiB pages\n");
    for (const w of ["page size", "4 KiB (kernel says 4 KiB)", "pages", "1024", "NUMA node", "NIC registration", "none", "GPU registration", "not registered", "2 MiB pool", "total", "free", "reserved", "surplus"])
      expect(r.out).toContain(w);
  });

  const bad: [string[], string][] = [
    [["arena", "--size", "lots"], "--size"],
    [["arena", "--size", "0"], "--size"],
    [["arena", "--size", "-1MiB"], "--size"],
    [["arena", "--hugepages", "sometimes"], "--hugepages"],
  ];
  for (const [argv, opt] of bad) {
    test(`${argv.join(" ")} → exit 2 naming ${opt}`, async () => {
      const r = await cli(argv);
      expect(r.code).toBe(2);
      expect(r.err).toContain(opt);
      expect(r.out).toBe("");
    });
  }

  test.skipIf(!root)("--reserve: reserves, says so, uses 2 MB pages and puts the pool back", async () => {
    await withPool(0, async () => {
      const t = await cli(["arena", "--size", "8MiB", "--reserve"]);
      expect(t.code).toBe(0);
      expect(t.out).toStartWith("reserved 4 huge pages (8 MiB): nr_hugepages 0 → 4; they go back on exit\narena of 8 MiB on 2 MiB huge pages\n");
      expect(t.out).toEndWith("gave back 4 huge pages: nr_hugepages 4 → 0\n");
      expect(readNr()).toBe(0);

      const j = await cli(["arena", "--size", "8MiB", "--reserve", "--hugepages", "require", "--json"]);
      expect(j.code).toBe(0);
      const o = JSON.parse(j.out);
      expect(o).toMatchObject({ hugepages: true, pageSize: HUGE_PAGE_SIZE, pages: 4, kernelPageSize: HUGE_PAGE_SIZE, reservation: { added: 4, before: 0, after: 4 } });
      expect(o.pool).toMatchObject({ total: 4, free: 0 });
      expect(readNr()).toBe(0);

      const req = await cli(["arena", "--size", "8MiB", "--hugepages", "require"]);
      expect(req.code).toBe(1);
      expect(req.err).toContain("4 of the 4 2 MB huge pages it needs are missing");
      expect(req.err).toContain("hint: reserve them with 'ainftp arena --reserve --size 8MiB'");
    });
  });

  describe.skipIf(!root)("the binary", () => {
    beforeAll(() => ensureBuilt());

    test("--reserve --hold: Ctrl-C gives the pages back and says so", async () => {
      await withPool(0, async () => {
        const p = Bun.spawn([BIN, "arena", "--size", "8MiB", "--reserve", "--hold"], { stdout: "pipe", stderr: "pipe" });
        const reader = p.stdout.getReader();
        let out = "";
        while (!out.includes("Ctrl-C gives it back")) {
          const { value, done } = await reader.read();
          if (done) break;
          out += new TextDecoder().decode(value);
        }
        expect(out).toContain("arena of 8 MiB on 2 MiB huge pages");
        expect(readNr()).toBe(4);
        p.kill("SIGINT");
        expect(await p.exited).toBe(0);
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          out += new TextDecoder().decode(value);
        }
        expect(out).toContain("gave back 4 huge pages: nr_hugepages 4 → 0 (interrupted)");
        expect(readNr()).toBe(0);
      });
    });

    test("--reserve as an unprivileged user: needs root, says how", async () => {
      await withPool(0, () => {
        const r = sh(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BIN, "arena", "--size", "8MiB", "--reserve"]);
        expect(r.code).toBe(1);
        expect(r.stderr).toContain("ainftp: reserve 4 huge pages: 4 more are needed and raising nr_hugepages needs root (EPERM)");
        expect(r.stderr).toContain("echo 4 > /proc/sys/vm/nr_hugepages");
        expect(readNr()).toBe(0);
      });
    });
  });
});

test("the native calls in-process: a 4 KB mapping round-trips", () => {
  const m = mmapAnon(SMALL_PAGE_SIZE, false, true);
  expect(typeof m).toBe("object");
  if (typeof m === "object") expect(munmap(m.addr, SMALL_PAGE_SIZE)).toBe(0);
});
