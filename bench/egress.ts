// A host's egress through a round, from a packet capture: bench/profile.ts
// --egress runs tcpdump on host 0's eth0 (outbound only) while perf samples,
// and bins each timed round's frames in BIN_MS bins from the round's start,
// by what they carry (contributions, results, the rest). The figure that
// showed, in a shaped 8-bit round, that the link idles from the end of the
// first window until the plan comes (README "Session 17"). And the CPU
// through a round, from `perf script` (bench/profile.ts --timeline):
// cpuTimeline, the figure that showed the 8-bit shaped round's first 8 ms
// busy on both cores with nothing sent (README "Session 19").
import { PKT_CONTRIB, PKT_RESULT } from "../src/abi.ts";

/** One captured frame: when (epoch ms), its length on the wire, and the ainftp frame type (-1: not ours). */
export interface Frame {
  t: number;
  len: number;
  type: number;
}

/** Offset of the wire header's `type` byte in an Ethernet + IPv4 (no options) + UDP frame. */
const TYPE_AT = 14 + 20 + 8 + 5;

/** The frames of a classic pcap file (microsecond timestamps, either byte order). */
export function readPcap(buf: Uint8Array): Frame[] {
  if (buf.length < 24) throw new Error(`not a pcap file: ${buf.length} bytes`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = dv.getUint32(0, true);
  const le = magic === 0xa1b2c3d4 ? true : magic === 0xd4c3b2a1 ? false : null;
  if (le === null) throw new Error(`not a microsecond pcap file (magic 0x${magic.toString(16)})`);
  const out: Frame[] = [];
  for (let off = 24; off + 16 <= buf.length; ) {
    const sec = dv.getUint32(off, le), us = dv.getUint32(off + 4, le), incl = dv.getUint32(off + 8, le), orig = dv.getUint32(off + 12, le);
    off += 16;
    if (off + incl > buf.length) break; // cut short when the capture was stopped
    out.push({ t: sec * 1000 + us / 1000, len: orig, type: incl > TYPE_AT ? buf[off + TYPE_AT] : -1 });
    off += incl;
  }
  return out;
}

export const BIN_MS = 4;

/** Per bin of BIN_MS from each round's start: the median over rounds of
 * Mbit/s sent, all frames and contributions and results apart. Rounds
 * outside the capture [from, to] are left out; bins run to the median round's length. */
export function egressBins(frames: Frame[], starts: number[], ends: number[], from: number, to: number): { rounds: number; bins: { at: number; all: number; contrib: number; result: number }[] } {
  const rounds: number[][][] = [];
  const lens: number[] = [];
  frames = [...frames].sort((a, b) => a.t - b.t);
  for (let i = 0; i < starts.length; i++) {
    if (starts[i] < from || ends[i] > to) continue;
    const n = Math.ceil((ends[i] - starts[i]) / BIN_MS);
    const b = Array.from({ length: n }, () => [0, 0, 0]);
    for (const f of frames) {
      if (f.t < starts[i]) continue;
      if (f.t >= ends[i]) break;
      const k = Math.min(n - 1, Math.floor((f.t - starts[i]) / BIN_MS));
      b[k][0] += f.len;
      if (f.type === PKT_CONTRIB) b[k][1] += f.len;
      else if (f.type === PKT_RESULT) b[k][2] += f.len;
    }
    rounds.push(b);
    lens.push(n);
  }
  if (!rounds.length) return { rounds: 0, bins: [] };
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  const nb = med(lens);
  const mbit = (bytes: number) => (bytes * 8) / (BIN_MS * 1000);
  const bins = Array.from({ length: nb }, (_, k) => {
    const col = (j: number) => mbit(med(rounds.map((b) => (k < b.length ? b[k][j] : 0))));
    return { at: k * BIN_MS, all: col(0), contrib: col(1), result: col(2) };
  });
  return { rounds: rounds.length, bins };
}

/** One `perf script -F pid,time,ip,sym` sample: its process (0 the idle
 * task), its time (epoch ms, perf on CLOCK_REALTIME) and symbol; null for
 * a line that is not a sample. */
export function parseSample(line: string): { pid: number; t: number; sym: string } | null {
  const m = /^\s*(\d+)\s+([\d.]+):\s*[0-9a-f]+\s+(\S*)/.exec(line);
  return m ? { pid: Number(m[1]), t: Number(m[2]) * 1000, sym: m[3] } : null;
}

/** The idle task's halt, as bench/profile.ts counts idle. */
export const IDLE_SYM = /^(pv_native_safe_halt|default_idle|cpuidle|do_idle|acpi_idle|native_safe_halt|pvm_safe_halt)/;

/** The CPU through a round: in `bin` ms bins from each round's start (the
 * rounds wholly inside [from, to]), the share of all the machine's samples
 * that were the idle task, each rank's process (pids[r]: its threads, user
 * and kernel) and the rest; `rate` is the machine's samples per ms (every
 * CPU; perf's own rate, in this VM below its -F). Bins run to the longest
 * round; a round's later bins may hold the next round's barrier. */
export function cpuTimeline(
  samples: { pid: number; t: number; sym: string }[], starts: number[], ends: number[], from: number, to: number,
  pids: number[], rate: number, bin = 2,
): { rounds: number; bins: { at: number; idle: number; ranks: number[]; rest: number }[] } {
  const inside = starts.map((s0, i) => s0 >= from && ends[i] <= to);
  const nIn = inside.filter(Boolean).length;
  if (!nIn) return { rounds: 0, bins: [] };
  const nb = Math.ceil(Math.max(...starts.map((s0, i) => (inside[i] ? ends[i] - s0 : 0))) / bin);
  const cells = Array.from({ length: nb }, () => ({ idle: 0, ranks: new Array<number>(pids.length).fill(0), rest: 0 }));
  const sorted = [...samples].sort((a, b) => a.t - b.t);
  let ri = 0;
  for (const s of sorted) {
    while (ri + 1 < starts.length && starts[ri + 1] <= s.t) ri++;
    if (!inside[ri] || s.t < starts[ri]) continue;
    const b = Math.floor((s.t - starts[ri]) / bin);
    if (b >= nb) continue;
    const r = pids.indexOf(s.pid);
    if (s.pid === 0 && IDLE_SYM.test(s.sym)) cells[b].idle++;
    else if (r >= 0) cells[b].ranks[r]++;
    else cells[b].rest++;
  }
  const full = rate * bin * nIn;
  return { rounds: nIn, bins: cells.map((c, i) => ({ at: i * bin, idle: c.idle / full, ranks: c.ranks.map((v) => v / full), rest: c.rest / full })) };
}
