#!/usr/bin/env bun
// UDP send cost on loopback, per datagram: one sendto() per datagram (the
// baseline, a C loop called once per burst so no FFI call per packet),
// sendmmsg (256 datagrams per syscall) and UDP GSO (up to 64 segments per
// message, several messages per sendmmsg), for 1472- and 3400-byte datagrams.
//
// Only the send calls are timed. On loopback the kernel delivers to the
// receiving socket inside the sender's syscall (softirq on the way out), so
// these times include the kernel's receive path but not the reader's
// recvmmsg. A sink socket with a large buffer is drained after every burst
// and at the end of each run; datagrams sent but never read are reported.
// Runs are interleaved (every method once per repetition) and the median is
// printed; speedups are against the sendto() baseline of the same run.
import Table from "cli-table3";
import { cpus, loadavg } from "node:os";
import { udpSendEach } from "../native/udp.ts";
import { UdpEndpoint, ipv4ToBe32, resetSyscallCounters, syscallCounters } from "../src/transport.ts";

const args = process.argv.slice(2);
const json = args.includes("--json");
const opt = (name: string, dflt: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const N = opt("--n", 20000);
const REPS = opt("--reps", 5);
/** Datagrams per send call: a round's worth to one peer. */
const BURST = opt("--burst", 1000);
const SIZES = [1472, 3400];
const LO = "127.0.0.1";

type Method = "send" | "sendmmsg" | "gso";
const METHODS: Method[] = ["send", "sendmmsg", "gso"];
const LABEL: Record<Method, string> = {
  send: "sendto() per datagram",
  sendmmsg: "sendmmsg, 256 per call",
  gso: "UDP GSO + sendmmsg",
};

interface Run {
  ns: number;
  syscalls: number;
  sent: number;
  received: number;
  drops: number;
}

interface Row {
  bytes: number;
  method: Method;
  datagrams: number;
  reps: number;
  nsPerPacket: number;
  nsPerPacketMin: number;
  nsPerPacketMax: number;
  syscallsPerPacket: number;
  speedupVsSend: number;
  gbitPerSec: number;
  sent: number;
  received: number;
  sinkDrops: number;
}

const sink = UdpEndpoint.open(LO, 0, { rcvbuf: 256 << 20, maxBatch: 1024, slotSize: 4096 });
const senders: Record<Method, UdpEndpoint> = {
  send: UdpEndpoint.open(LO, 0),
  sendmmsg: UdpEndpoint.open(LO, 0),
  gso: UdpEndpoint.open(LO, 0),
};
senders.sendmmsg.setGso(false);

function drain(waitMs: number): number {
  let n = 0;
  for (;;) {
    const b = sink.recvBatch(waitMs);
    if (b.count === 0) return n;
    n += b.count;
  }
}

function run(method: Method, bytes: number, buf: Uint8Array): Run {
  const tx = senders[method];
  const dropsBefore = sink.stats().drops;
  drain(0);
  resetSyscallCounters();
  let ns = 0, sent = 0, received = 0;
  for (let done = 0; done < N; done += BURST) {
    const k = Math.min(BURST, N - done);
    const t = Bun.nanoseconds();
    const n = method === "send" ? udpSendEach(tx.fd, ipv4ToBe32(LO), sink.port, buf, bytes, k, bytes) : tx.sendGso(LO, sink.port, buf, bytes, k);
    ns += Bun.nanoseconds() - t;
    if (n < 0) throw new Error(`${method}: send failed (${n})`);
    sent += n;
    received += drain(0);
  }
  const c = syscallCounters();
  received += drain(20);
  return { ns, syscalls: c.sendCalls + c.sendWaits, sent, received, drops: sink.stats().drops - dropsBefore };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const rows: Row[] = [];
const load = loadavg()[0];
for (const bytes of SIZES) {
  const buf = new Uint8Array(bytes * BURST);
  for (let i = 0; i < buf.length; i++) buf[i] = i * 31;
  const runs: Record<Method, Run[]> = { send: [], sendmmsg: [], gso: [] };
  for (const m of METHODS) run(m, bytes, buf); // warm-up, not counted
  for (let r = 0; r < REPS; r++) for (const m of METHODS) runs[m].push(run(m, bytes, buf));
  const nsPer = (m: Method) => median(runs[m].map((x) => x.ns / x.sent));
  const base = nsPer("send");
  for (const m of METHODS) {
    const rs = runs[m];
    const per = rs.map((x) => x.ns / x.sent);
    const sum = (f: (x: Run) => number) => rs.reduce((a, x) => a + f(x), 0);
    rows.push({
      bytes, method: m, datagrams: N, reps: REPS,
      nsPerPacket: Math.round(nsPer(m)),
      nsPerPacketMin: Math.round(Math.min(...per)),
      nsPerPacketMax: Math.round(Math.max(...per)),
      syscallsPerPacket: +(sum((x) => x.syscalls) / sum((x) => x.sent)).toFixed(4),
      speedupVsSend: +(base / nsPer(m)).toFixed(2),
      gbitPerSec: +((bytes * 8) / nsPer(m)).toFixed(2),
      sent: sum((x) => x.sent),
      received: sum((x) => x.received),
      sinkDrops: sum((x) => x.drops),
    });
  }
}
for (const s of [sink, ...Object.values(senders)]) s.close();

if (json) {
  console.log(JSON.stringify({ datagrams: N, burst: BURST, reps: REPS, cpus: cpus().length, loadAvg1m: load, rows }, null, 2));
} else {
  const t = new Table({
    head: ["datagram", "method", "ns/packet (median)", "min–max", "syscalls/packet", "vs sendto()", "Gbit/s", "received/sent"],
    colAligns: ["right", "left", "right", "right", "right", "right", "right", "right"],
    style: { head: [], border: [] },
  });
  for (const r of rows)
    t.push([
      `${r.bytes} B`, LABEL[r.method], r.nsPerPacket, `${r.nsPerPacketMin}–${r.nsPerPacketMax}`, r.syscallsPerPacket,
      r.method === "send" ? "1× (baseline)" : `${r.speedupVsSend}×`, r.gbitPerSec, `${r.received}/${r.sent}`,
    ]);
  console.log(`UDP send on loopback: ${N} datagrams per run in bursts of ${BURST}, median of ${REPS} interleaved runs`);
  console.log(`${cpus().length} CPUs, 1-minute load average ${load.toFixed(2)} when the bench started (other load inflates every row)`);
  console.log(t.toString());
  const lost = rows.filter((r) => r.received < r.sent);
  if (lost.length)
    console.log(`not all datagrams were read back: ${lost.map((r) => `${r.bytes} B ${r.method}: ${r.sent - r.received} (sink drops ${r.sinkDrops})`).join(", ")}`);
}
