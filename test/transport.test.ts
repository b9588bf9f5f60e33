// The UDP transport (native/udp.c through src/transport.ts): GSO bursts, the
// sendmmsg fallback, sendMany to several peers and recvBatch on loopback,
// every datagram checked byte for byte; input validation before any syscall;
// errors with their hints. Then across two network namespaces joined by a
// veth pair (MTU 1500, then 3520): GSO segments arrive as separate
// datagrams of the right size, and a segment over the MTU is an error, not
// silent IP fragmentation.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import dgram from "node:dgram";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { AinftpError } from "../src/errors.ts";
import {
  UDP_MAX_PAYLOAD, UdpEndpoint, be32ToIpv4, ipv4ToBe32, resetSyscallCounters, syscallCounters,
} from "../src/transport.ts";
import { ROOT, canUseNetns, createLab, lineReader, must, type Lab } from "./helpers/netns.ts";

// ---- datagrams that say who they are ---------------------------------------------

/** Datagram `index`: its index and length, then bytes that depend on both and the seed. */
function fill(buf: Uint8Array, at: number, index: number, len: number, seed: number): void {
  const v = new DataView(buf.buffer, buf.byteOffset + at, 8);
  v.setUint32(0, index, true);
  v.setUint32(4, len, true);
  for (let j = 8; j < len; j++) buf[at + j] = (index * 131 + j * 7 + seed) & 0xff;
}

/** "" when d is datagram (its index) of the burst, else what is wrong. */
function verify(d: Uint8Array, seed: number): string {
  if (d.length < 8) return `short datagram (${d.length} bytes)`;
  const v = new DataView(d.buffer, d.byteOffset, 8);
  const index = v.getUint32(0, true);
  if (v.getUint32(4, true) !== d.length) return `datagram ${index}: ${d.length} bytes, it says ${v.getUint32(4, true)}`;
  for (let j = 8; j < d.length; j++)
    if (d[j] !== ((index * 131 + j * 7 + seed) & 0xff)) return `datagram ${index}: byte ${j} differs`;
  return "";
}

/** nsegs datagrams back to back, segSize each, the last lastSize. */
function burst(nsegs: number, segSize: number, lastSize: number, seed: number): Uint8Array {
  const buf = new Uint8Array((nsegs - 1) * segSize + lastSize);
  for (let i = 0; i < nsegs; i++) fill(buf, i * segSize, i, i === nsegs - 1 ? lastSize : segSize, seed);
  return buf;
}

interface Received {
  /** index -> length */
  lens: Map<number, number>;
  duplicates: number;
  bad: string[];
  sources: Set<string>;
  truncated: number;
}

/** Reads until `want` datagrams came or nothing arrives for idleMs. */
function receive(rx: UdpEndpoint, want: number, seed: number, idleMs = 500): Received {
  const r: Received = { lens: new Map(), duplicates: 0, bad: [], sources: new Set(), truncated: 0 };
  let n = 0;
  while (n < want) {
    const b = rx.recvBatch(idleMs);
    if (b.count === 0) break;
    r.truncated += b.truncated;
    for (let i = 0; i < b.count; i++, n++) {
      const d = b.datagram(i);
      const why = verify(d, seed);
      if (why) r.bad.push(why);
      const index = new DataView(d.buffer, d.byteOffset, 4).getUint32(0, true);
      if (r.lens.has(index)) r.duplicates++;
      r.lens.set(index, d.length);
      r.sources.add(`${b.sourceAddr(i)}:${b.sourcePort(i)}`);
    }
  }
  return r;
}

function expectBurst(r: Received, nsegs: number, segSize: number, lastSize: number): void {
  expect(r.bad).toEqual([]);
  expect(r.duplicates).toBe(0);
  expect(r.truncated).toBe(0);
  expect(r.lens.size).toBe(nsegs);
  for (let i = 0; i < nsegs; i++) {
    const want = i === nsegs - 1 ? lastSize : segSize;
    if (r.lens.get(i) !== want) expect({ index: i, len: r.lens.get(i) }).toEqual({ index: i, len: want });
  }
}

function thrown(f: () => unknown): AinftpError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(AinftpError);
    return e as AinftpError;
  }
  throw new Error("expected an AinftpError");
}

// ---- loopback --------------------------------------------------------------------------

describe("UDP transport on loopback", () => {
  let rx: UdpEndpoint;
  let tx: UdpEndpoint;
  const LO = "127.0.0.1";

  beforeAll(() => {
    rx = UdpEndpoint.open(LO, 0, { rcvbuf: 64 << 20 });
    tx = UdpEndpoint.open(LO, 0);
  });
  afterAll(() => {
    rx?.close();
    tx?.close();
  });

  test("ipv4 <-> be32", () => {
    const be = ipv4ToBe32("10.1.2.3");
    const bytes = new Uint8Array(new Uint32Array([be]).buffer);
    expect(Array.from(bytes)).toEqual([10, 1, 2, 3]); // network order in memory
    for (const a of ["0.0.0.0", "127.0.0.1", "255.255.255.255", "10.213.31.2"]) expect(be32ToIpv4(ipv4ToBe32(a))).toBe(a);
    for (const a of ["256.0.0.1", "1.2.3", "1.2.3.4.5", "a.b.c.d", "", " 1.2.3.4", "1.2.3.-4"])
      expect(thrown(() => ipv4ToBe32(a)).message).toContain("is not an IPv4 address");
  });

  test("open binds where asked; port 0 gives an ephemeral port; close is idempotent", () => {
    expect(rx.address).toBe(LO);
    expect(rx.port).toBeGreaterThan(0);
    expect(rx.port).not.toBe(tx.port);
    const s = rx.stats();
    expect(s.drops).toBe(0);
    expect(s.rcvbuf).toBeGreaterThan(0);
    const e = UdpEndpoint.open(LO, 0);
    e.close();
    e.close();
    expect(e.closed).toBe(true);
    expect(thrown(() => e.recvBatch(0)).message).toContain("used after close()");
    {
      using scoped = UdpEndpoint.open(LO, 0);
      expect(scoped.closed).toBe(false);
    }
  });

  test("GSO: 1000 datagrams of 1472 bytes arrive intact, one syscall for all of them", () => {
    const N = 1000, SEG = 1472;
    const buf = burst(N, SEG, SEG, 1);
    resetSyscallCounters();
    expect(tx.sendGso(LO, rx.port, buf, SEG, N)).toBe(N);
    const c = syscallCounters();
    expect(tx.gso).toBe("works");
    expect(c.sent).toBe(N);
    expect(c.gsoMessages).toBe(Math.ceil(N / Math.floor(65507 / SEG))); // 44 per message: 23
    expect(c.gsoRefused).toBe(0);
    // one sendmmsg of 23 GSO messages (waits would only come from a full buffer)
    expect((c.sendCalls + c.sendWaits) / N).toBeLessThan(0.05);
    const r = receive(rx, N, 1);
    expectBurst(r, N, SEG, SEG);
    expect([...r.sources]).toEqual([`${LO}:${tx.port}`]);
    expect(rx.stats().drops).toBe(0);
  });

  test("GSO with a shorter last segment", () => {
    const N = 101, SEG = 1472, LAST = 100;
    const buf = burst(N, SEG, LAST, 2);
    expect(tx.sendGso(LO, rx.port, buf, SEG, N, LAST)).toBe(N);
    expectBurst(receive(rx, N, 2), N, SEG, LAST);
  });

  test("GSO with 3400-byte segments (19 per message)", () => {
    const N = 500, SEG = 3400;
    const buf = burst(N, SEG, SEG, 3);
    resetSyscallCounters();
    expect(tx.sendGso(LO, rx.port, buf, SEG, N)).toBe(N);
    expect(syscallCounters().gsoMessages).toBe(Math.ceil(N / 19));
    expectBurst(receive(rx, N, 3), N, SEG, SEG);
  });

  test("one datagram and a lone last segment go without GSO", () => {
    resetSyscallCounters();
    expect(tx.sendGso(LO, rx.port, burst(1, 1000, 1000, 4), 1000, 1)).toBe(1);
    expect(syscallCounters()).toMatchObject({ sendCalls: 1, gsoMessages: 0, sent: 1 });
    expectBurst(receive(rx, 1, 4), 1, 1000, 1000);
    // 45 segments of 1472: a 44-segment GSO message and a plain datagram, one sendmmsg
    resetSyscallCounters();
    expect(tx.sendGso(LO, rx.port, burst(45, 1472, 9, 5), 1472, 45, 9)).toBe(45);
    expect(syscallCounters()).toMatchObject({ sendCalls: 1, gsoMessages: 1, sent: 45 });
    expectBurst(receive(rx, 45, 5), 45, 1472, 9);
  });

  test("GSO refused by the kernel (SO_NO_CHECK): falls back to sendmmsg, and remembers", () => {
    using s = UdpEndpoint.open(LO, 0);
    s.setOption(1 /* SOL_SOCKET */, 11 /* SO_NO_CHECK */, 1); // the kernel refuses GSO without checksums (EINVAL)
    expect(s.gso).toBe("unknown");
    const N = 300, SEG = 1472;
    resetSyscallCounters();
    expect(s.sendGso(LO, rx.port, burst(N, SEG, 700, 6), SEG, N, 700)).toBe(N);
    let c = syscallCounters();
    expect(c.gsoRefused).toBe(1);
    expect(c.gsoMessages).toBe(0);
    expect(c.sendCalls).toBe(1 + Math.ceil(N / 256)); // the refused try, then 256 datagrams per sendmmsg
    expect(s.gso).toBe("off");
    expectBurst(receive(rx, N, 6), N, SEG, 700);
    // remembered: no second try
    resetSyscallCounters();
    expect(s.sendGso(LO, rx.port, burst(N, SEG, SEG, 7), SEG, N)).toBe(N);
    c = syscallCounters();
    expect(c.gsoRefused).toBe(0);
    expect(c.sendCalls).toBe(Math.ceil(N / 256));
    expectBurst(receive(rx, N, 7), N, SEG, SEG);
  });

  test("setGso(false) sends one message per datagram, batched by sendmmsg", () => {
    using s = UdpEndpoint.open(LO, 0);
    s.setGso(false);
    expect(s.gso).toBe("off");
    const N = 600, SEG = 1472;
    resetSyscallCounters();
    expect(s.sendGso(LO, rx.port, burst(N, SEG, SEG, 8), SEG, N)).toBe(N);
    expect(syscallCounters()).toMatchObject({ sendCalls: 3, gsoMessages: 0, gsoRefused: 0, sent: N });
    expectBurst(receive(rx, N, 8), N, SEG, SEG);
    s.setGso(true);
    expect(s.gso).toBe("unknown");
  });

  test("sendMany: datagrams to two receivers in one sendmmsg", () => {
    using rx2 = UdpEndpoint.open(LO, 0);
    const N = 50;
    const out = Array.from({ length: N }, (_, i) => {
      const len = 40 + 37 * i;
      const data = new Uint8Array(len);
      fill(data, 0, i, len, 9);
      return { addr: LO, port: i % 2 ? rx2.port : rx.port, data };
    });
    resetSyscallCounters();
    expect(tx.sendMany(out)).toBe(N);
    expect(syscallCounters()).toMatchObject({ sendCalls: 1, sent: N });
    const a = receive(rx, N / 2, 9);
    const b = receive(rx2, N / 2, 9);
    for (const [r, parity] of [[a, 0], [b, 1]] as const) {
      expect(r.bad).toEqual([]);
      expect(r.duplicates).toBe(0);
      expect([...r.lens.keys()].sort((x, y) => x - y)).toEqual(Array.from({ length: N / 2 }, (_, k) => 2 * k + parity));
      for (const [i, len] of r.lens) expect(len).toBe(40 + 37 * i);
      expect([...r.sources]).toEqual([`${LO}:${tx.port}`]);
    }
    expect(tx.sendMany([])).toBe(0);
  });

  test("recvBatch with nothing queued returns 0 within its timeout", () => {
    using idle = UdpEndpoint.open(LO, 0);
    for (const ms of [0, 50, 200]) {
      const t = performance.now();
      expect(idle.recvBatch(ms).count).toBe(0);
      const took = performance.now() - t;
      expect(took).toBeGreaterThanOrEqual(ms - 2);
      expect(took).toBeLessThan(ms + 250);
    }
  });

  test("a datagram longer than the slot is cut, and says so", () => {
    using small = UdpEndpoint.open(LO, 0, { slotSize: 1024, maxBatch: 4 });
    const N = 6;
    expect(tx.sendGso(LO, small.port, burst(N, 1472, 1000, 10), 1472, N, 1000)).toBe(N);
    let cut = 0, whole = 0, got = 0;
    while (got < N) {
      const b = small.recvBatch(500);
      if (!b.count) break;
      expect(b.count).toBeLessThanOrEqual(4);
      for (let i = 0; i < b.count; i++) {
        const d = b.datagram(i);
        expect(d.length).toBe(Math.min(b.lens[i], 1024));
        if (b.lens[i] > 1024) cut++;
        else whole++;
      }
      got += b.count;
      expect(b.truncated).toBe(Array.from(b.lens.subarray(0, b.count)).filter((l) => l > 1024).length);
    }
    expect({ cut, whole }).toEqual({ cut: N - 1, whole: 1 });
  });

  test("bad inputs are refused before any syscall, with a clear message", () => {
    const buf = new Uint8Array(1472 * 4);
    resetSyscallCounters();
    const cases: [() => unknown, string][] = [
      [() => tx.sendGso(LO, rx.port, buf, 0, 4), "segment size 0 is not in 1..65507"],
      [() => tx.sendGso(LO, rx.port, buf, 65508, 1), "segment size 65508 is not in 1..65507"],
      [() => tx.sendGso(LO, rx.port, buf, 1.5, 4), "segment size 1.5"],
      [() => tx.sendGso(LO, rx.port, buf, 1472, 0), "segment count 0 is not a positive integer"],
      [() => tx.sendGso(LO, rx.port, buf, 1472, 5), "buffer holds 5888 bytes, 5 segments of 1472 (last 1472) need 7360"],
      [() => tx.sendGso(LO, rx.port, buf, 1472, 4, 1473), "last segment size 1473 is not in 1..1472"],
      [() => tx.sendGso(LO, rx.port, buf, 1472, 4, 0), "last segment size 0"],
      [() => tx.sendGso(LO, 0, buf, 1472, 4), "port 0 is not an integer in 1..65535"],
      [() => tx.sendGso(LO, 70000, buf, 1472, 4), "port 70000"],
      [() => tx.sendGso("127.0.0.300", rx.port, buf, 1472, 4), "is not an IPv4 address"],
      [() => tx.sendMany([{ addr: LO, port: rx.port, data: new Uint8Array(UDP_MAX_PAYLOAD + 1) }]), "more than 65507"],
      [() => tx.sendMany([{ addr: LO, port: -1, data: buf }]), "port -1"],
      [() => rx.recvBatch(-1), "timeout -1 ms is not a non-negative integer"],
      [() => UdpEndpoint.open(LO, 65536), "port 65536"],
      [() => UdpEndpoint.open(LO, 0, { slotSize: 0 }), "slotSize 0"],
      [() => UdpEndpoint.open("localhost", 0), "is not an IPv4 address"],
    ];
    for (const [f, msg] of cases) {
      const e = thrown(f);
      expect(e.message).toContain(msg);
      expect(e.errno).toBe(0);
    }
    const c = syscallCounters();
    expect(c.sendCalls + c.recvCalls + c.recvPolls).toBe(0);
  });

  test("system errors carry the errno and a hint", async () => {
    // a port held by a socket without SO_REUSEADDR
    const holder = dgram.createSocket("udp4");
    await new Promise<void>((res) => holder.bind(0, LO, () => res()));
    try {
      const port = holder.address().port;
      const e = thrown(() => UdpEndpoint.open(LO, port));
      expect(e.errno).toBe(98); // EADDRINUSE
      expect(e.message).toContain(`open UDP ${LO}:${port}`);
      expect(e.hint).toContain(`another process (or socket) uses ${LO}:${port}`);
    } finally {
      holder.close();
    }
    // two of our endpoints never share a port silently
    const first = UdpEndpoint.open(LO, 0);
    try {
      expect(thrown(() => UdpEndpoint.open(LO, first.port)).errno).toBe(98);
    } finally {
      first.close();
    }
    // an address of no interface here (TEST-NET-1)
    const na = thrown(() => UdpEndpoint.open("192.0.2.1", 0));
    expect(na.errno).toBe(99); // EADDRNOTAVAIL
    expect(na.hint).toContain("is not an address of this host");
    // loopback's broadcast address without SO_BROADCAST: refused before anything is sent
    const bc = thrown(() => tx.sendGso("127.255.255.255", 9, new Uint8Array(100), 100, 1));
    expect(bc.errno).toBe(13); // EACCES
    expect(bc.hint).toContain("broadcast");
    expect(bc.message).toContain("send to 127.255.255.255:9");
  });
});

// ---- two namespaces, one veth pair ------------------------------------------------------

const RECEIVER = `
import { UdpEndpoint } from "${ROOT}/src/transport.ts";
${verify.toString()}
const [addr, port, want, seed] = process.argv.slice(2);
const rx = UdpEndpoint.open(addr, Number(port), { rcvbuf: 64 << 20 });
process.stdout.write("ready\\n");
const lens = {}, bad = [], seen = new Set(), sources = new Set();
let got = 0, dup = 0, truncated = 0;
const end = performance.now() + 10000;
while (got < Number(want) && performance.now() < end) {
  const b = rx.recvBatch(got ? 1000 : 200);
  if (b.count === 0) { if (got) break; continue; }
  truncated += b.truncated;
  for (let i = 0; i < b.count; i++, got++) {
    const d = b.datagram(i);
    const why = verify(d, Number(seed));
    if (why && bad.length < 5) bad.push(why);
    const index = new DataView(d.buffer, d.byteOffset, 4).getUint32(0, true);
    if (seen.has(index)) dup++;
    seen.add(index);
    lens[d.length] = (lens[d.length] ?? 0) + 1;
    sources.add(b.sourceAddr(i));
  }
}
console.log(JSON.stringify({ got, distinct: seen.size, dup, bad, lens, truncated, sources: [...sources], drops: rx.stats().drops }));
rx.close();
`;

const SENDER = `
import { UdpEndpoint, resetSyscallCounters, syscallCounters } from "${ROOT}/src/transport.ts";
${fill.toString()}
const [bind, dst, port, n, seg, last, seed] = process.argv.slice(2);
const N = Number(n), SEG = Number(seg), LAST = Number(last);
const buf = new Uint8Array((N - 1) * SEG + LAST);
for (let i = 0; i < N; i++) fill(buf, i * SEG, i, i === N - 1 ? LAST : SEG, Number(seed));
const tx = UdpEndpoint.open(bind, 0);
resetSyscallCounters();
let sent = 0, error = null;
try {
  sent = tx.sendGso(dst, Number(port), buf, SEG, N, LAST);
} catch (e) {
  error = { message: e.message, errno: e.errno, hint: e.hint };
}
console.log(JSON.stringify({ sent, error, counters: syscallCounters(), gso: tx.gso }));
tx.close();
`;

const kernel = canUseNetns();
if (!kernel)
  console.warn("SKIPPING the veth transport tests: they need root, `ip netns` and nsenter (CI runs them as root)");

describe.skipIf(!kernel)("UDP GSO across a veth pair between two network namespaces", () => {
  let lab: Lab;
  const PORT = 47100;

  beforeAll(() => {
    lab = createLab("udp", ["a", "b"], { link: "pair", subnet: "10.213.31" });
    writeFileSync(join(lab.tmp, "receiver.ts"), RECEIVER);
    writeFileSync(join(lab.tmp, "sender.ts"), SENDER);
    // Neighbours resolved up front: on veth ARP completes inside the first
    // send anyway, but on a slower link the kernel queues only
    // unres_qlen_bytes (~200 KB, three 64 KB GSO packets) while it waits.
    for (const [from, to] of [["a", "b"], ["b", "a"]]) {
      const mac = lab.linkInfo(to, "eth0").address;
      must(["ip", "-n", lab.node(from).name, "neigh", "replace", lab.node(to).addr, "lladdr", mac, "dev", "eth0", "nud", "permanent"]);
    }
  });
  afterAll(() => {
    lab?.destroy();
  });

  function setMtu(mtu: number): void {
    for (const n of ["a", "b"]) must(["ip", "-n", lab.node(n).name, "link", "set", "dev", "eth0", "mtu", String(mtu)]);
    expect(lab.linkInfo("b", "eth0").mtu).toBe(mtu);
  }


  function send(dst: string, n: number, seg: number, last: number, seed: number): any {
    const r = lab.run("a", [process.execPath, join(lab.tmp, "sender.ts"), lab.node("a").addr, dst, String(PORT), String(n), String(seg), String(last), String(seed)]);
    if (r.code !== 0) throw new Error(`sender failed (${r.code}): ${r.stdout}${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  /** Receiver in b, sender in a; returns both reports. */
  async function transfer(n: number, seg: number, last: number, seed: number): Promise<{ tx: any; rx: any }> {
    const b = lab.node("b");
    const p = lab.spawn("b", [process.execPath, join(lab.tmp, "receiver.ts"), b.addr, String(PORT), String(n), String(seed)]);
    const lines = lineReader(p);
    try {
      expect(await lines.next()).toBe("ready");
      const tx = send(b.addr, n, seg, last, seed);
      const rx = JSON.parse(await lines.next());
      expect(await p.exited).toBe(0);
      return { tx, rx };
    } finally {
      if (p.exitCode === null) p.kill(9);
      await p.exited;
    }
  }

  test("MTU 1500: 1000 GSO segments of 1472 bytes arrive as 1000 datagrams of 1472 bytes", async () => {
    setMtu(1500);
    const N = 1000, SEG = 1472;
    const { tx, rx } = await transfer(N, SEG, SEG, 21);
    expect(tx.error).toBeNull();
    expect(tx.sent).toBe(N);
    expect(tx.gso).toBe("works");
    expect(tx.counters.gsoMessages).toBe(23);
    expect((tx.counters.sendCalls + tx.counters.sendWaits) / N).toBeLessThan(0.05);
    expect(rx).toEqual({
      got: N, distinct: N, dup: 0, bad: [], lens: { [SEG]: N }, truncated: 0, sources: [lab.node("a").addr], drops: 0,
    });
  }, 30_000);

  test("MTU 3520: 3400-byte segments, a shorter last one", async () => {
    setMtu(3520);
    const N = 600, SEG = 3400, LAST = 1000;
    const { tx, rx } = await transfer(N, SEG, LAST, 22);
    expect(tx.error).toBeNull();
    expect(tx.sent).toBe(N);
    expect(tx.counters.gsoMessages).toBe(Math.ceil(N / 19));
    expect(rx).toEqual({
      got: N, distinct: N, dup: 0, bad: [], lens: { [SEG]: N - 1, [LAST]: 1 }, truncated: 0, sources: [lab.node("a").addr], drops: 0,
    });
  }, 30_000);

  test("MTU 1500: a 3400-byte segment is an error with the MTU in its hint, not IP fragments", () => {
    setMtu(1500);
    const tx = send(lab.node("b").addr, 10, 3400, 3400, 23);
    expect(tx.sent).toBe(0);
    expect(tx.error.errno).toBe(90); // EMSGSIZE
    expect(tx.error.hint).toContain("MTU - 28");
    expect(tx.gso).toBe("unknown"); // not taken for a refusal of GSO
  });

  test("no route: ENETUNREACH with a hint, nothing sent", () => {
    const tx = send("10.213.99.1", 2, 100, 100, 24);
    expect(tx.sent).toBe(0);
    expect(tx.error.errno).toBe(101);
    expect(tx.error.hint).toContain("ip route get 10.213.99.1");
  });
});

describe("a round's wait: a spin, then asleep (ainftp_wait3_spin)", () => {
  test("what is queued is seen at once; with nothing, it spins for spin_us (CPU spent), then sleeps out the rest of the timeout; 0 sleeps at once", () => {
    const { coll } = require("../native/collective.ts") as typeof import("../native/collective.ts");
    const LO = "127.0.0.1";
    using rx = UdpEndpoint.open(LO, 0);
    using tx = UdpEndpoint.open(LO, 0);
    // queued: the first look sees it (bit 1: fd_b)
    tx.sendGso(LO, rx.port, new Uint8Array(64), 64, 1);
    let t = performance.now();
    expect(coll.ainftp_wait3_spin(-1, rx.fd, -1, 1000, 50_000)).toBe(2);
    expect(performance.now() - t).toBeLessThan(50);
    rx.recvBatch(0);
    // nothing: a 20 ms spin inside a 60 ms timeout
    const cpu = (f: () => void) => {
      const c0 = process.cpuUsage(), w0 = performance.now();
      f();
      const c = process.cpuUsage(c0);
      return { cpuMs: (c.user + c.system) / 1000, wallMs: performance.now() - w0 };
    };
    const spun = cpu(() => expect(coll.ainftp_wait3_spin(-1, rx.fd, -1, 60, 20_000)).toBe(0));
    expect(spun.wallMs).toBeGreaterThanOrEqual(58);
    expect(spun.wallMs).toBeLessThan(60 + 40); // the rest of the timeout, not all of it again
    expect(spun.cpuMs).toBeGreaterThan(5); // it looked, awake, for a while
    const slept = cpu(() => expect(coll.ainftp_wait3_spin(-1, rx.fd, -1, 60, 0)).toBe(0));
    expect(slept.wallMs).toBeGreaterThanOrEqual(58);
    expect(slept.cpuMs).toBeLessThan(spun.cpuMs / 2);
    // a spin longer than the timeout ends at the timeout
    t = performance.now();
    expect(coll.ainftp_wait3_spin(-1, rx.fd, -1, 10, 100_000)).toBe(0);
    expect(performance.now() - t).toBeLessThan(40);
  });
});
