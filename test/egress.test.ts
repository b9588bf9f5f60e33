// bench/egress.ts: the pcap reader and the per-round bins behind
// `bench/profile.ts --egress`, on a capture written here; the CPU timeline
// behind `--timeline`, on `perf script` lines written here.
import { describe, expect, test } from "bun:test";
import { BIN_MS, cpuTimeline, egressBins, parseSample, readPcap } from "../bench/egress.ts";
import { PKT_CONTRIB, PKT_RESULT } from "../src/abi.ts";

/** A classic pcap (little-endian, µs) of frames [epoch ms, wire length, ainftp type or -1 for a short frame]. */
function pcap(frames: [number, number, number][], le = true): Uint8Array {
  const parts: Uint8Array[] = [];
  const head = new DataView(new ArrayBuffer(24));
  head.setUint32(0, 0xa1b2c3d4, le);
  head.setUint16(4, 2, le), head.setUint16(6, 4, le), head.setUint32(16, 64, le), head.setUint32(20, 1, le);
  parts.push(new Uint8Array(head.buffer));
  for (const [ms, len, type] of frames) {
    const incl = type < 0 ? 20 : 64;
    const rec = new DataView(new ArrayBuffer(16 + incl));
    rec.setUint32(0, Math.floor(ms / 1000), le);
    rec.setUint32(4, Math.round((ms % 1000) * 1000), le);
    rec.setUint32(8, incl, le), rec.setUint32(12, len, le);
    if (type >= 0) rec.setUint8(16 + 14 + 20 + 8 + 5, type);
    parts.push(new Uint8Array(rec.buffer));
  }
  return Buffer.concat(parts);
}

describe("bench/egress.ts", () => {
  const T = 1_700_000_000_000; // epoch ms
  test("reads frames in either byte order: time, wire length, the ainftp type (-1 when the frame is too short to hold it)", () => {
    for (const le of [true, false]) {
      const f = readPcap(pcap([[T + 1.5, 9000, PKT_CONTRIB], [T + 2.25, 60, -1]], le));
      expect(f.map((x) => [x.t - T, x.len, x.type])).toEqual([[1.5, 9000, PKT_CONTRIB], [2.25, 60, -1]]);
    }
    expect(() => readPcap(new Uint8Array(24))).toThrow(/not a microsecond pcap/);
  });

  test("bins each round's frames from its start by kind, the median over rounds, rounds outside the capture left out", () => {
    // two rounds of 3 bins; the first bin of each sends 5000 bytes of contributions, the second 2000 of results
    const frames: [number, number, number][] = [];
    for (const s of [T, T + 100]) frames.push([s + 1, 5000, PKT_CONTRIB], [s + BIN_MS + 1, 2000, PKT_RESULT], [s + BIN_MS + 2, 500, 3]);
    // a third round after the capture's end: not counted
    frames.push([T + 201, 99999, PKT_CONTRIB]);
    const { rounds, bins } = egressBins(readPcap(pcap(frames)), [T, T + 100, T + 200], [T + 3 * BIN_MS, T + 100 + 3 * BIN_MS, T + 200 + 3 * BIN_MS], T, T + 150);
    expect(rounds).toBe(2);
    const mbit = (b: number) => (b * 8) / (BIN_MS * 1000);
    expect(bins).toEqual([
      { at: 0, all: mbit(5000), contrib: mbit(5000), result: 0 },
      { at: BIN_MS, all: mbit(2500), contrib: 0, result: mbit(2000) },
      { at: 2 * BIN_MS, all: 0, contrib: 0, result: 0 },
    ]);
    expect(egressBins([], [T], [T + 1], T + 10, T + 20)).toEqual({ rounds: 0, bins: [] });
  });

  test("reads perf script samples: pid, time (ms) and symbol; other lines are not samples", () => {
    expect(parseSample("    0 46659.260182:  ffffffff8224379b pv_native_safe_halt")).toEqual({ pid: 0, t: 46659260.182, sym: "pv_native_safe_halt" });
    expect(parseSample(" 1234 46659.5:  7f00aa bun_thing+0x10")).toEqual({ pid: 1234, t: 46659500, sym: "bun_thing+0x10" });
    expect(parseSample("")).toBeNull();
    expect(parseSample("# perf script header")).toBeNull();
  });

  test("the CPU timeline: each round's samples from its start by who ran (idle, each rank, the rest), as shares of the machine", () => {
    // rate: 2 samples per ms (the machine's, every CPU); 2 ms bins hold 4 a round
    const pids = [101, 202];
    const s = (pid: number, t: number, sym = "x") => ({ pid, t, sym });
    const samples = [];
    for (const r0 of [T, T + 10]) {
      // bin 0: rank 0 twice, rank 1 once, idle once; bin 1: the idle task in a
      // kernel function that is not its halt (the rest), rank 1, idle twice
      samples.push(s(101, r0 + 0.1), s(101, r0 + 0.6), s(202, r0 + 1.1), s(0, r0 + 1.6, "pv_native_safe_halt"));
      samples.push(s(0, r0 + 2.1, "handle_softirqs"), s(202, r0 + 2.6), s(0, r0 + 3.1, "default_idle_call"), s(0, r0 + 3.6, "pv_native_safe_halt"));
    }
    // a round outside [from, to]: not counted; a sample before the first round: dropped
    samples.push(s(101, T + 20.5), s(101, T - 1));
    const { rounds, bins } = cpuTimeline(samples, [T, T + 10, T + 20], [T + 4, T + 14, T + 24], T, T + 15, pids, 2);
    expect(rounds).toBe(2);
    expect(bins).toEqual([
      { at: 0, idle: 1 / 4, ranks: [2 / 4, 1 / 4], rest: 0 },
      { at: 2, idle: 2 / 4, ranks: [0, 1 / 4], rest: 1 / 4 },
    ]);
    expect(cpuTimeline(samples, [T], [T + 4], T + 100, T + 200, pids, 2)).toEqual({ rounds: 0, bins: [] });
  });
});
