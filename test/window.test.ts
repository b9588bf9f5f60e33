// The send window in bytes (issue 15): chunks in flight per owner are capped
// by DEFAULTS.windowBytes once the packet size is known: up to a 9000-byte
// MTU's packets the chunk window decides, larger frames are capped in bytes.
import { describe, expect, test } from "bun:test";
import { DEFAULTS, defaultWindow, resolveOptions, windowChunks } from "../src/collective/options.ts";
import { HDR } from "../src/collective/control.ts";

describe("the window in bytes", () => {
  const win = defaultWindow(4);
  test("one-page frames (1720 int16 values) keep the 48 chunks measured best at 4 hosts", () => {
    expect(windowChunks(win, DEFAULTS.windowBytes, HDR + 2 * 1720)).toBe(48);
  });
  test("a 9000-byte MTU's packets (4464 values): the same 48 chunks (a quiet machine's 16 MiB rounds took 35-41 ms at 48, 52-63 at 18)", () => {
    const packet = HDR + 2 * 4464;
    expect(windowChunks(win, DEFAULTS.windowBytes, packet)).toBe(48);
    expect(48 * packet).toBeLessThanOrEqual(DEFAULTS.windowBytes);
  });
  test("frames beyond 9000 bytes are capped in bytes: a 32 KB frame gets 13 chunks", () => {
    expect(windowChunks(win, DEFAULTS.windowBytes, 32_768)).toBe(13);
    expect(13 * 32_768).toBeLessThanOrEqual(DEFAULTS.windowBytes);
  });
  test("small packets stay within the frame window (the receive ring), large ones keep at least 8 chunks", () => {
    expect(windowChunks(win, DEFAULTS.windowBytes, HDR + 2 * 720)).toBe(48); // 1500-byte MTU: the ring bounds it
    expect(windowChunks(win, DEFAULTS.windowBytes, 65_000)).toBe(8);
    expect(windowChunks(5, DEFAULTS.windowBytes, 65_000)).toBe(5); // a smaller window given stays
  });
  test("resolveOptions carries windowBytes; one given replaces the default", () => {
    const o = resolveOptions({ iface: "x", peers: ["10.0.0.1", "10.0.0.2"], rank: 0 } as never);
    expect(o.windowBytes).toBe(DEFAULTS.windowBytes);
    expect(resolveOptions({ iface: "x", peers: ["10.0.0.1", "10.0.0.2"], rank: 0, windowBytes: 1 << 20 } as never).windowBytes).toBe(1 << 20);
  });
});

describe("a round's spin (spinUs)", () => {
  const base = { iface: "x", peers: ["10.0.0.1", "10.0.0.2"], rank: 0 };
  test("the default and an explicit value resolve; a value that is not µs in 0..100000 is refused, naming it", () => {
    expect(resolveOptions(base).spinUs).toBe(DEFAULTS.spinUs);
    expect(resolveOptions({ ...base, spinUs: 0 }).spinUs).toBe(0);
    for (const bad of [-1, 1.5, Number.NaN, 200_000])
      expect(() => resolveOptions({ ...base, spinUs: bad })).toThrow(`spinUs ${bad} is not a number of µs in 0..100000`);
  });
});
