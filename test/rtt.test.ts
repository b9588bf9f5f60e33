// src/collective/rtt.ts: RFC 6298's estimator, the datacenter floor, and
// RACK's reordering window (RFC 8985), on canned sequences of round-trips.
import { describe, expect, test } from "bun:test";
import { PTO_FLOOR_MS, REO_DECAY_ROUNDS, REO_FLOOR_MS, RTO_FLOOR_MS, RttEstimator } from "../src/collective/rtt.ts";

describe("RttEstimator", () => {
  test("before any sample the RTO is the configured first one; the first sample sets srtt = R, rttvar = R/2 (RFC 6298 2.2)", () => {
    const e = new RttEstimator();
    expect(e.rto(50, 500)).toBe(50);
    e.sample(8);
    expect({ srtt: e.srtt, rttvar: e.rttvar }).toEqual({ srtt: 8, rttvar: 4 });
    expect(e.rto(50, 500)).toBe(Math.max(RTO_FLOOR_MS, 8 + 16));
  });

  test("later samples: rttvar = 3/4 rttvar + 1/4 |srtt - R|, then srtt = 7/8 srtt + 1/8 R (RFC 6298 2.3)", () => {
    const e = new RttEstimator();
    e.sample(8);
    e.sample(4);
    expect(e.rttvar).toBeCloseTo(0.75 * 4 + 0.25 * 4, 12);
    expect(e.srtt!).toBeCloseTo(0.875 * 8 + 0.125 * 4, 12);
  });

  test("a steady 0.1 ms lab RTT gives the datacenter floor, not TCP's 200 ms or ainftp's old fixed 50 ms", () => {
    const e = new RttEstimator();
    for (let i = 0; i < 100; i++) e.sample(0.1);
    expect(e.rto(50, 500)).toBe(RTO_FLOOR_MS);
  });

  test("the cap holds, and bad samples are ignored", () => {
    const e = new RttEstimator();
    e.sample(NaN);
    e.sample(-1);
    e.sample(Infinity);
    expect(e.samples).toBe(0);
    e.sample(400);
    expect(e.rto(50, 500)).toBe(500);
  });

  test("RACK: lost only once older than the latest RTT plus the reordering window; each try doubles the wait", () => {
    const e = new RttEstimator();
    for (let i = 0; i < 10; i++) e.sample(4);
    e.endRound();
    expect(e.minRtt).toBe(4);
    expect(e.reoWnd()).toBe(1);
    expect(e.lost(100, 104.9, 0)).toBe(false); // a reordered result 0.9 ms late is not a loss
    expect(e.lost(100, 105, 0)).toBe(true);
    expect(e.lost(100, 109.9, 1)).toBe(false);
    expect(e.lost(100, 110, 1)).toBe(true);
  });

  test("a spurious retransmission (its result back in under half the minimum RTT) widens the window; clean rounds narrow it again", () => {
    const e = new RttEstimator();
    for (let i = 0; i < 10; i++) e.sample(4);
    e.endRound();
    e.resultAfterRetransmit(3); // a real loss: the retransmission's own result
    expect(e.reoWnd()).toBe(1);
    e.resultAfterRetransmit(0.5);
    e.resultAfterRetransmit(0.5);
    expect(e.spurious).toBe(2);
    expect(e.reoWnd()).toBe(3);
    for (let i = 0; i < REO_DECAY_ROUNDS; i++) e.endRound();
    expect(e.reoWnd()).toBe(1);
  });

  test("the window never drops below its floor, even before any sample", () => {
    const e = new RttEstimator();
    expect(e.reoWnd()).toBe(REO_FLOOR_MS);
    for (let i = 0; i < 5; i++) e.sample(0.05);
    expect(e.reoWnd()).toBe(REO_FLOOR_MS);
  });
});

describe("RttEstimator: outliers and the probe", () => {
  test("one stalled result (a peer still in the last round) cannot lift the RTO to its cap", () => {
    const e = new RttEstimator();
    for (let i = 0; i < 50; i++) e.sample(30);
    e.sample(4000);
    expect(e.rto(500, 5000)).toBeLessThan(200);
  });

  test("the tail-loss probe fires at 2·srtt, never later than the RTO", () => {
    const e = new RttEstimator();
    expect(e.pto(50, 500)).toBe(50);
    for (let i = 0; i < 50; i++) e.sample(30);
    // steady: rttvar has decayed, the RTO is about srtt, and the probe waits no longer
    expect(e.pto(500, 5000)).toBe(e.rto(500, 5000));
    expect(e.pto(500, 5000)).toBeGreaterThanOrEqual(30);
    const f = new RttEstimator();
    f.sample(30);
    expect(f.pto(500, 5000)).toBe(60);
    expect(f.rto(500, 5000)).toBe(90);
    // a fast lab: both at the floor
    const g = new RttEstimator();
    for (let i = 0; i < 50; i++) g.sample(0.5);
    expect(g.pto(50, 500)).toBe(PTO_FLOOR_MS);
    expect(g.rto(50, 500)).toBe(RTO_FLOOR_MS);
  });
});

describe("RttEstimator: RACK per owner and a probe that falls back after a lossy round", () => {
  test("with a per-owner RACK rtt (the latest-sent chunk with its result), a loss is declared after that round-trip plus the window, not after srtt", () => {
    const e = new RttEstimator();
    for (let i = 0; i < 20; i++) e.sample(20); // srtt 20 ms: rounds that waited on losses
    e.endRound();
    // the owner's latest result came 2 ms after its sending: 2 + reo (at least REO_FLOOR_MS)
    const reo = e.reoWnd();
    expect(e.lostAt(100, 0, 2)).toBeCloseTo(100 + 2 + reo, 9);
    expect(e.lostAt(100, 0)).toBeCloseTo(100 + 20 + reo, 9); // no RACK rtt: the estimate
    expect(e.lostAt(100, 2, 2)).toBeCloseTo(100 + 4 * (2 + reo), 9); // each try doubles
    expect(e.lost(100, 100 + 2 + reo - 0.01, 0)).toBe(false);
  });

  test("the probe waits 2·min(srtt, latest): one round whose results waited on a loss stretches srtt, but the next in-order sample brings the probe back at once", () => {
    const e = new RttEstimator();
    for (let i = 0; i < 20; i++) e.sample(30);
    expect(e.pto(500, 5000)).toBeCloseTo(Math.min(e.rto(500, 5000), 60), 9); // (never later than the RTO)
    e.sample(3); // a clean, in-order result
    expect(e.srtt!).toBeGreaterThan(20);
    expect(e.pto(500, 5000)).toBe(Math.max(PTO_FLOOR_MS, 6));
  });

  test("the probe's floor is a datacenter's (a few ms), the full retransmission's stays 50 ms", () => {
    expect(PTO_FLOOR_MS).toBeLessThanOrEqual(5);
    expect(RTO_FLOOR_MS).toBe(50);
    const g = new RttEstimator();
    for (let i = 0; i < 50; i++) g.sample(0.1);
    expect(g.pto(50, 500)).toBe(PTO_FLOOR_MS);
    expect(g.rto(50, 500)).toBe(RTO_FLOOR_MS);
  });
});
