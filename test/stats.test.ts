// src/stats.ts: the order statistics every report uses.
import { expect, test } from "bun:test";
import { median, nearestRank, percentile, quantiles, sortedCopy } from "../src/stats.ts";

test("nearest rank (the node's reports, the round deadline): the floor(p·n)-th smallest, 0 when empty", () => {
  const s = sortedCopy([5, 1, 4, 2, 3]);
  expect(s).toEqual([1, 2, 3, 4, 5]);
  expect(nearestRank(s, 0.5)).toBe(3);
  expect(nearestRank([1, 2, 3, 4], 0.5)).toBe(3); // the upper middle
  expect(nearestRank(s, 0.99)).toBe(5);
  expect(nearestRank([], 0.5)).toBe(0);
  expect(quantiles([4, 1, 3, 2, 5])).toEqual({ median: 3, p10: 1, p90: 5, p99: 5 });
});

test("interpolated (numpy's default, the baselines' reports)", () => {
  expect(percentile([1, 2, 3, 4, 5], 0.1)).toBeCloseTo(1.4, 12);
  expect(quantiles([4, 1, 3, 2, 5], "linear")).toEqual({ median: 3, p10: 1.4, p90: 4.6, p99: 4.96 });
  expect(percentile([], 0.5)).toBeNaN();
});

test("the median: the mean of the two middles for an even count, NaN when empty", () => {
  expect(median([3, 1, 2])).toBe(2);
  expect(median([4, 1, 3, 2])).toBe(2.5);
  expect(median(Float64Array.from([7]))).toBe(7);
  expect(median([])).toBeNaN();
});
