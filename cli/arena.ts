import Table from "cli-table3";
import { Command, InvalidArgumentError, Option } from "commander";
import { Arena, HUGEPAGES_MODES, type ArenaStatus, type HugePagesMode } from "../src/arena.ts";
import { hugePagesFor, reserve, type HugePageReservation } from "../src/hugepages.ts";
import { formatSize, parseSize } from "../src/units.ts";
import type { IO } from "./io.ts";
import { COMPACT } from "./status.ts";

function sizeOption(value: string): number {
  try {
    return parseSize(value, "--size");
  } catch {
    throw new InvalidArgumentError("Give a size such as 64MiB, 1GiB or a byte count.");
  }
}

export interface ArenaReport extends ArenaStatus {
  /** What --reserve did: pages added to nr_hugepages (0 when the pool had enough). */
  reservation: { added: number; before: number; after: number } | null;
}

export function renderArena(r: ArenaReport): string {
  const kind = r.hugepages ? `${formatSize(r.pageSize)} huge pages` : `${formatSize(r.pageSize)} pages`;
  let text = `arena of ${formatSize(r.size)} on ${kind}${r.file ? ` (shared file ${r.file})` : ""}\n`;
  if (r.fallbackReason) text += `  fell back to 4 KiB pages: ${r.fallbackReason}\n`;
  const t = new Table({ style: { head: [], border: [] }, chars: COMPACT });
  const kernel = r.kernelPageSize === null ? "unknown" : formatSize(r.kernelPageSize);
  t.push(
    ["size", `${formatSize(r.size)} (${r.size} bytes)`],
    ["page size", `${formatSize(r.pageSize)} (kernel says ${kernel})`],
    ["pages", r.pages],
    ["NUMA node", r.numaNode ?? "unknown"],
    ["populated", r.populated ? "yes (every page faulted in at open)" : "no"],
    ["NIC registration", r.registrations.nic],
    ["GPU registration", r.registrations.gpu],
  );
  text += t.toString() + "\n";
  const p = r.pool;
  if (!p.present) return text + "the kernel has no 2 MiB huge page pool\n";
  const pool = new Table({ head: ["2 MiB pool", "total", "free", "reserved", "surplus", "available"], style: { head: [], border: [] }, chars: COMPACT });
  pool.push(["pages", p.total, p.free, p.reserved, p.surplus, p.available]);
  pool.push(["bytes", formatSize(p.total * p.pageSize), formatSize(p.free * p.pageSize), formatSize(p.reserved * p.pageSize), formatSize(p.surplus * p.pageSize), formatSize(p.available * p.pageSize)]);
  return text + pool.toString() + "\n";
}

function renderReserved(r: HugePageReservation, pages: number): string {
  if (r.added === 0) return `the pool already had ${pages} huge pages available: nothing reserved\n`;
  return `reserved ${r.added} huge pages (${formatSize(r.added * 2 ** 21)}): nr_hugepages ${r.before} → ${r.after}; they go back on exit\n`;
}

/** Resolves on the first SIGINT or SIGTERM. */
function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      process.off("SIGINT", done);
      process.off("SIGTERM", done);
      resolve();
    };
    process.on("SIGINT", done);
    process.on("SIGTERM", done);
  });
}

export function arenaCommand(io: IO): Command {
  return new Command("arena")
    .summary("open a huge-page arena and show its pages, NUMA node and the huge page pool")
    .description(
      "Open an arena of --size bytes the way ainftp does for AF_XDP UMEM and GPU staging, and show its page size, " +
        "page count, NUMA node, registrations, and the system's pool of 2 MiB huge pages. " +
        "--reserve raises nr_hugepages enough for the arena first and puts it back on exit (also on Ctrl-C).",
    )
    .option("--size <size>", "arena size, e.g. 64MiB, 1GiB (default 64MiB)", sizeOption, 64 * 2 ** 20)
    .addOption(
      new Option("--hugepages <mode>", "auto: 2 MiB pages if available, else 4 KiB; require: 2 MiB or fail; off: 4 KiB")
        .choices(HUGEPAGES_MODES as string[])
        .default("auto"),
    )
    .option("--reserve", "raise nr_hugepages enough for --size first (root), and give the pages back on exit")
    .option("--hold", "keep the arena (and the reserved pages) until Ctrl-C, to inspect it from elsewhere")
    .option("--json", "print JSON with stable field names")
    .addHelpText("after", "\nExamples:\n  ainftp arena\n  ainftp arena --size 1GiB --reserve --hugepages require\n")
    .action(async (o) => {
      const size = o.size as number;
      const pages = hugePagesFor(size);
      let reservation: HugePageReservation | undefined;
      if (o.reserve) {
        reservation = reserve(pages, {
          onRelease: (r, how) => {
            if (r.added === 0 || o.json) return;
            const why = how === "signal" ? " (interrupted)" : "";
            io.out(`gave back ${r.added} huge pages: nr_hugepages ${r.after} → ${r.before}${why}\n`);
          },
        });
        if (!o.json) io.out(renderReserved(reservation, pages));
      }
      try {
        using arena = Arena.open({ size, hugepages: o.hugepages as HugePagesMode });
        const report: ArenaReport = {
          ...arena.status(),
          reservation: reservation ? { added: reservation.added, before: reservation.before, after: reservation.after } : null,
        };
        io.out(o.json ? JSON.stringify(report, null, 2) + "\n" : renderArena(report));
        if (o.hold) {
          if (!o.json) io.out(`holding the arena (pid ${process.pid}); Ctrl-C gives it back\n`);
          await untilSignal();
        }
      } finally {
        reservation?.release();
      }
    });
}
