// The bench's chart (src/bench/chart.ts): a real Vega-Lite render, headless.
import { describe, expect, test } from "bun:test";
import { chartSpec, renderChart, type ChartRow } from "../src/bench/chart.ts";

const BY_SIZE: ChartRow[] = [
  { system: "ainftp", x: 1, ms: 3.1 }, { system: "ainftp", x: 16, ms: 31 },
  { system: "tcp-ring", x: 1, ms: 2.2 }, { system: "tcp-ring", x: 16, ms: 35 },
  { system: "gloo (torch 1.13)", x: 1, ms: 7.6 }, { system: "gloo (torch 1.13)", x: 16, ms: 40 },
  { system: "mpi", x: 1, ms: 2.8 }, { system: "mpi", x: 16, ms: Number.NaN }, // a failed run: left out
];

describe("renderChart", () => {
  test("an SVG with a line and a legend entry per system, log x", async () => {
    const svg = await renderChart(BY_SIZE, { title: "All-reduce, 4 hosts", xLabel: "vector size (MiB)", logX: true });
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg.trimEnd().endsWith("</svg>")).toBe(true);
    for (const name of ["ainftp", "tcp-ring", "gloo (torch 1.13)", "mpi"]) expect(svg).toContain(`>${name}</text>`);
    expect(svg).toContain("All-reduce, 4 hosts");
    expect(svg).toContain("vector size (MiB)");
    expect(svg).toContain("round time (ms)");
    expect(svg.match(/role-mark-line|class="mark-line/g)?.length ?? 0).toBeGreaterThan(0);
  });

  test("against peer count, linear axes; names are escaped", async () => {
    const rows = [2, 4, 8].flatMap((n) => [
      { system: "ainftp", x: n, ms: n * 2 },
      { system: "a<b>&c", x: n, ms: n * 3 },
    ]);
    const svg = await renderChart(rows, { title: "16 MiB", xLabel: "peers" });
    expect(svg).toContain(">ainftp</text>");
    expect(svg).toContain("a&lt;b&gt;&amp;c");
    expect(svg).not.toContain("a<b>");
  });

  test("legend in the caller's order; rows without a time left out; none at all is an error", async () => {
    const spec = chartSpec(BY_SIZE, { title: "t", xLabel: "x" }) as any;
    expect(spec.encoding.color.scale.domain).toEqual(["ainftp", "tcp-ring", "gloo (torch 1.13)", "mpi"]);
    expect(spec.data.values).toHaveLength(7);
    await expect(renderChart([{ system: "x", x: 1, ms: Number.NaN }], { title: "t", xLabel: "x" })).rejects.toThrow(/no row/);
  });
});
