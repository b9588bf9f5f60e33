// The bench's chart: round time against size or peer count, one line per
// system, as a standalone SVG. Drawn by Vega-Lite (compiled to a Vega spec
// and rendered headless by vega's View.toSVG: no DOM, no canvas, no native
// module), so axes, log scales and the legend are a charting library's, not
// ours.
import { parse, View } from "vega";
import { compile, type TopLevelSpec } from "vega-lite";

export interface ChartRow {
  /** One line per system, named in the legend. */
  system: string;
  /** Size (in the unit xLabel names) or peer count. */
  x: number;
  /** Round time in ms; rows without a finite time (a failed system) are left out. */
  ms: number;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  /** Default "round time (ms)". */
  yLabel?: string;
  logX?: boolean;
  logY?: boolean;
  /** Plot area in px; default 480 × 300. */
  width?: number;
  height?: number;
}

/** The Vega-Lite spec of the chart (kept beside a report, it redraws the chart anywhere). */
export function chartSpec(rows: ChartRow[], o: ChartOptions): TopLevelSpec {
  const values = rows.filter((r) => Number.isFinite(r.ms) && Number.isFinite(r.x)).map((r) => ({ system: r.system, x: r.x, ms: r.ms }));
  // the legend lists systems in the order the caller gave them (ainftp first), not alphabetically
  const systems = [...new Set(values.map((r) => r.system))];
  // a bench has a few sizes or peer counts: tick exactly those
  const xs = [...new Set(values.map((r) => r.x))].sort((a, b) => a - b);
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: o.title,
    width: o.width ?? 480,
    height: o.height ?? 300,
    background: "white",
    data: { values },
    mark: { type: "line", point: true },
    encoding: {
      x: {
        field: "x", type: "quantitative", title: o.xLabel,
        scale: o.logX ? { type: "log", nice: false } : { zero: false },
        axis: xs.length <= 12 ? { values: xs } : {},
      },
      y: { field: "ms", type: "quantitative", title: o.yLabel ?? "round time (ms)", scale: o.logY ? { type: "log", nice: false } : { zero: true } },
      color: { field: "system", type: "nominal", title: "system", scale: { domain: systems } },
      order: { field: "x", type: "quantitative" },
    },
  };
}

/** The chart as an SVG document. */
export async function renderChart(rows: ChartRow[], o: ChartOptions): Promise<string> {
  const spec = chartSpec(rows, o);
  if (!(spec as { data: { values: unknown[] } }).data.values.length) throw new Error(`chart "${o.title}": no row has a finite round time`);
  const view = new View(parse(compile(spec).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
