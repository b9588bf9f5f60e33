// The security-check row of `ainftp bench`: what the sentry's inline check
// costs per packet in the XDP program (BPF_PROG_TEST_RUN of the same
// contribution with the sentry off and on, interleaved, as bench/xdp.ts's
// "sentry on" rows), against the same statistic computed in userspace as a
// pass over packets already in memory: the 16-sample energy the program
// computes, and the full-payload mean square a post-processing filter would
// take. Userspace figures leave out getting the packets there (a receive
// path ainftp does not have), so they favour the post-processing side.
import { CFG_AUTH_FULL, CFG_AUTH_HDR, CFG_SENTRY, MAC_BYTES, MAX_ELEMS_AUTH, MAX_WORKERS, PKT_CONTRIB, SENTRY_SAMPLES, allMembers } from "../abi.ts";
import { sealDatagram } from "../jobkey.ts";
import { macSeal } from "../../native/mac.ts";
import { datagram, frame } from "../packet.ts";
import { ReflexObject } from "../reflex.ts";

export interface SentryCostOptions {
  /** int16 values per packet (the run's chunk size). */
  elems: number;
  /** Interleaved off/on test runs; default 20. */
  runs?: number;
  /** Packets per test run (BPF_PROG_TEST_RUN repeat); default 50,000. */
  repeat?: number;
  /** Packets in the userspace pass; default 4096 (a 16 MiB round at 1720 values each is ~2400 per host). */
  packets?: number;
}

export interface SentryCostResult {
  method: string;
  elems: number;
  frame_bytes: number;
  /** Median kernel-measured ns per packet without and with the sentry. */
  xdp_ns_per_packet_off: number;
  xdp_ns_per_packet_on: number;
  /** on − off: the inline check's cost per packet (median of the interleaved pairs' differences). */
  inline_ns_per_packet: number;
  /** Half the interquartile range of those differences: the noise around it. */
  inline_ns_spread: number;
  /** Same 16-sample statistic in userspace (a tight loop over packets in memory), ns per packet. */
  userspace_sampled_ns_per_packet: number;
  /** Full-payload mean square in userspace, ns per packet: the O(N) post-processing pass. */
  userspace_full_ns_per_packet: number;
  /** The job key's data-plane MAC (issue 16), measured in the same interleaved runs on a
   * contribution of auth_elems values (a MAC takes 8 bytes of the packet): header only
   * (the default with a key) and header + payload (--auth full), each against no MAC. */
  auth_elems: number;
  auth_header_ns_per_packet: number;
  auth_header_ns_spread: number;
  auth_full_ns_per_packet: number;
  auth_full_ns_spread: number;
  /** The control plane's MAC in userspace (SipHash-2-4 over a full control frame), ns per frame. */
  control_mac_ns_per_frame: number;
  runs: number;
  repeat: number;
  packets: number;
}

export const SENTRY_METHOD =
  "XDP: BPF_PROG_TEST_RUN of one contribution, sentry off vs on, interleaved (kernel-measured ns/packet, median); " +
  "userspace: the same energy statistic in a tight loop over packets already in memory (receive cost not included)";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

function payload(n: number, seed: number): Int16Array {
  const v = new Int16Array(n);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    v[i] = (x % 4096) - 2048;
  }
  return v;
}

/** The program's energy in userspace: SENTRY_SAMPLES values at a stride, log2 of their mean square (in 1/16 units), per packet. */
export function sampledEnergies(packets: Int16Array, elems: number, out: Int32Array, phase = 0): void {
  const stride = Math.max(1, Math.floor(elems / SENTRY_SAMPLES));
  const m = Math.min(elems, SENTRY_SAMPLES);
  for (let p = 0, base = 0; p < out.length; p++, base += elems) {
    let s = 0;
    for (let i = 0, at = base + phase; i < m; i++, at += stride) s += packets[at] * packets[at];
    out[p] = s > 0 ? Math.round(16 * Math.log2(s / m)) : -32768;
  }
}

/** The whole payload's mean square, per packet: what a post-processing filter without sampling computes. */
export function fullEnergies(packets: Int16Array, elems: number, out: Int32Array): void {
  for (let p = 0, base = 0; p < out.length; p++, base += elems) {
    let s = 0;
    for (let i = base, end = base + elems; i < end; i++) s += packets[i] * packets[i];
    out[p] = s > 0 ? Math.round(16 * Math.log2(s / elems)) : -32768;
  }
}

function nsPerPacket(fn: () => void, packets: number, runs: number): number {
  for (let i = 0; i < 3; i++) fn(); // JIT warm-up
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = Bun.nanoseconds();
    fn();
    t.push((Bun.nanoseconds() - t0) / packets);
  }
  return median(t);
}

/** Needs root (BPF_PROG_TEST_RUN of the embedded program). */
export async function measureSentryCost(o: SentryCostOptions): Promise<SentryCostResult> {
  const runs = o.runs ?? 20;
  const repeat = o.repeat ?? 50_000;
  const packets = o.packets ?? 4096;
  const f = frame(datagram({ type: PKT_CONTRIB, jobId: 1, round: 0, chunk: 0, rank: 0 }, payload(o.elems, 7)));
  const off: number[] = [];
  const on: number[] = [];
  // the MAC's rows: a packet of as many values as fit beside the tag
  const authElems = Math.min(MAX_ELEMS_AUTH, o.elems - Math.ceil(MAC_BYTES / 2));
  const key = crypto.getRandomValues(new Uint8Array(16));
  // its own slot (chunk 1): a slot keeps the count of its first contribution
  const d = datagram({ type: PKT_CONTRIB, jobId: 1, round: 0, chunk: 1, rank: 0 }, payload(authElems, 9));
  const authFrames = { off: frame(d), header: frame(sealDatagram(key, d, "header")), full: frame(sealDatagram(key, d, "full")) };
  const auth = { off: [] as number[], header: [] as number[], full: [] as number[] };
  {
    using s = await ReflexObject.load({ chunks: 64, benchNoDedupe: true });
    const base = {
      jobId: 1, roundBase: 0, memberMask: allMembers(MAX_WORKERS), members: MAX_WORKERS,
      chunkElems: o.elems, chunks: 64, batch: 32, ownedChunks: 64, flags: 0,
    };
    s.setConfig({ ...s.config(), ...base });
    s.setJobKey(key);
    // a gate that accepts every energy: the check runs in full, nothing is dropped
    const gates = s.gates();
    for (const at of [0, 1]) [gates[2 * at], gates[2 * at + 1]] = [-(2 ** 31), 2 ** 31 - 1];
    const cfg = s.config();
    for (let i = 0; i < runs; i++) {
      s.setConfig({ ...cfg, flags: 0 });
      off.push(s.testRun(f, repeat).ns);
      s.setConfig({ ...cfg, flags: CFG_SENTRY });
      on.push(s.testRun(f, repeat).ns);
      for (const [m, flags] of [["off", 0], ["header", CFG_AUTH_HDR], ["full", CFG_AUTH_FULL]] as const) {
        s.setConfig({ ...cfg, chunkElems: authElems, flags });
        const before = s.counters().summed;
        auth[m].push(s.testRun(authFrames[m], repeat).ns);
        if (s.counters().summed - before !== repeat) throw new Error(`auth ${m}: the program did not sum every run (a bad MAC?)`);
      }
    }
  }
  const data = new Int16Array(packets * o.elems);
  for (let p = 0; p < packets; p++) data.set(payload(o.elems, p + 1), p * o.elems);
  const out = new Int32Array(packets);
  const sampled = nsPerPacket(() => sampledEnergies(data, o.elems, out), packets, runs);
  const full = nsPerPacket(() => fullEnergies(data, o.elems, out), packets, runs);
  const ctrl = new Uint8Array(32 + 1400 + MAC_BYTES);
  const controlMac = nsPerPacket(() => {
    for (let i = 0; i < 256; i++) macSeal(key, ctrl, ctrl.length - MAC_BYTES);
  }, 256, runs);
  // each pair ran back to back: its difference cancels most of the drift of a shared machine
  const spreadOf = (xs: number[], base: number[]) => {
    const ds = xs.map((x, i) => x - base[i]).sort((a, b) => a - b);
    const q = (p: number) => ds[Math.min(ds.length - 1, Math.floor(p * ds.length))];
    return { median: median(ds), spread: (q(0.75) - q(0.25)) / 2 };
  };
  const inline = spreadOf(on, off), hdr = spreadOf(auth.header, auth.off), whole = spreadOf(auth.full, auth.off);
  return {
    method: SENTRY_METHOD, elems: o.elems, frame_bytes: f.length,
    xdp_ns_per_packet_off: median(off), xdp_ns_per_packet_on: median(on),
    inline_ns_per_packet: inline.median, inline_ns_spread: inline.spread,
    auth_elems: authElems, auth_header_ns_per_packet: hdr.median, auth_header_ns_spread: hdr.spread,
    auth_full_ns_per_packet: whole.median, auth_full_ns_spread: whole.spread, control_mac_ns_per_frame: +controlMac.toFixed(1),
    userspace_sampled_ns_per_packet: +sampled.toFixed(1), userspace_full_ns_per_packet: +full.toFixed(1),
    runs, repeat, packets,
  };
}
