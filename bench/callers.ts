// bench/profile.ts --callgraph: the chains that reach one kernel symbol,
// from `perf report -S SYM -g folded,...,caller,function,percent`, folded
// to their last frames and summed, so that "which copy is this memcpy"
// reads as one line per path.

/** Frames kept from the end of each chain (the symbol itself is the last). */
export const CALLER_FRAMES = 5;

/** [path, samples] of each distinct chain tail, largest first, those of at
 * least 0.5% of `total` samples; one XDP program's name for every load of
 * it (bpf_prog_<tag>_name → bpf_prog_name). */
export function foldCallers(report: string, total: number): [string, number][] {
  const sums = new Map<string, number>();
  for (const line of report.split("\n")) {
    const m = /^\s*([0-9.]+)%\s+(\S+;\S+)$/.exec(line);
    if (!m) continue;
    const path = m[2].split(";").slice(-CALLER_FRAMES).map((f) => f.replace(/^bpf_prog_[0-9a-f]+_/, "bpf_prog_")).join(" › ");
    sums.set(path, (sums.get(path) ?? 0) + (Number(m[1]) / 100) * total);
  }
  return [...sums].filter(([, n]) => n >= total / 200).sort((a, b) => b[1] - a[1]);
}
