// Frames longer than a page (issue 15): the XDP program is frags-aware
// (SEC("xdp.frags"), BPF_F_XDP_HAS_FRAGS), so a frame may span several
// buffers. BPF_PROG_TEST_RUN supports such frames for a frags program: it
// puts the first 3520 bytes (4096 - 256 headroom - 320 shared info) in the
// linear part and the rest in frags, so every case below with a frame over
// 3520 bytes runs the multi-buffer path. The last block attaches the program
// in native mode to a veth at MTU 9000 (veth refuses a program without frags
// above 3504) and sends it real 9000-byte packets from another namespace.
//
// Needs root (BPF_PROG_LOAD, BPF_PROG_TEST_RUN, network namespaces).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  CFG_AUTH_FULL, COUNTERS, MAX_ELEMS, MAX_ELEMS_AUTH, PKT_CONTRIB, PKT_RESULT, SLOT_COMPLETE, allMembers,
  type Counters, type JobConfig,
} from "../src/abi.ts";
import { sealDatagram } from "../src/jobkey.ts";
import { datagram, frame } from "../src/packet.ts";
import { PinnedReflex, ReflexObject } from "../src/reflex.ts";
import { mulberry32 } from "../src/random.ts";
import { ROOT, canUseNetns, createLab } from "./helpers/netns.ts";

const XDP_DROP = 1;
const JOB = 0xf4a6;
/** Linear bytes BPF_PROG_TEST_RUN gives an XDP frame; the rest goes to frags. */
const LINEAR = 3520;
const CHUNKS = 16;

const root = process.getuid?.() === 0;
if (!root) console.warn("SKIP test/xdp-frags.test.ts: needs root (BPF_PROG_LOAD, BPF_PROG_TEST_RUN, namespaces)");

function values(seed: number, n: number): Int16Array {
  const rand = mulberry32(seed);
  return Int16Array.from({ length: n }, () => Math.floor(rand() * 65536) - 32768);
}

function contrib(chunk: number, rank: number, v: ArrayLike<number>, round = 0): Uint8Array {
  return frame(datagram({ type: PKT_CONTRIB, jobId: JOB, round, chunk, rank }, Array.from(v)));
}

function delta(a: Counters, b: Counters): Partial<Counters> {
  const d: Partial<Counters> = {};
  for (const n of COUNTERS) if (b[n] !== a[n]) d[n] = b[n] - a[n];
  return d;
}

describe.skipIf(!root)("multi-buffer frames through BPF_PROG_TEST_RUN (xdp.frags)", () => {
  let r: ReflexObject;
  const cfg: JobConfig = {
    jobId: JOB, roundBase: 0, memberMask: allMembers(3), members: 3, chunkElems: MAX_ELEMS, chunks: CHUNKS, batch: 1, ownedChunks: CHUNKS,
  };
  beforeAll(async () => {
    r = await ReflexObject.load({ chunks: CHUNKS });
  });
  afterAll(() => r?.close());

  test(`3 ranks × ${MAX_ELEMS} values (${contrib(0, 0, new Int16Array(MAX_ELEMS)).length}-byte frames, most of the payload in frags) sum exactly`, () => {
    r.setConfig(cfg);
    const vs = [0, 1, 2].map((k) => values(100 + k, MAX_ELEMS));
    expect(contrib(1, 0, vs[0]).length).toBeGreaterThan(2 * LINEAR);
    const before = r.counters();
    for (let rank = 0; rank < 3; rank++) expect(r.testRun(contrib(1, rank, vs[rank])).action).toBe(XDP_DROP);
    expect(delta(before, r.counters())).toEqual({ rx: 3, summed: 3, elems_summed: 3 * MAX_ELEMS, completed: 1, events: 1, wakeups: 1 });
    const want = Array.from({ length: MAX_ELEMS }, (_, i) => vs[0][i] + vs[1][i] + vs[2][i]);
    expect(Array.from(r.sums(1, MAX_ELEMS))).toEqual(want);
    expect(r.slot(1)).toMatchObject({ tag: 1, contributors: 3, count: MAX_ELEMS, state: SLOT_COMPLETE });
  });

  test("odd counts across the buffer boundary (1759..1761 values: the payload ends just past the linear part) sum exactly", () => {
    r.setConfig(cfg);
    let chunk = 2;
    for (const n of [1759, 1760, 1761, 2047, MAX_ELEMS - 1]) {
      const vs = [0, 1, 2].map((k) => values(n * 7 + k, n));
      for (let rank = 0; rank < 3; rank++) expect(r.testRun(contrib(chunk, rank, vs[rank])).action).toBe(XDP_DROP);
      const want = Array.from({ length: n }, (_, i) => vs[0][i] + vs[1][i] + vs[2][i]);
      expect(Array.from(r.sums(chunk, n)), `${n} values`).toEqual(want);
      chunk++;
    }
  });

  test(`a RESULT of ${MAX_ELEMS} values is stored bit-exact from every buffer`, () => {
    r.setConfig(cfg);
    const v = values(7, MAX_ELEMS);
    const before = r.counters();
    const f = frame(datagram({ type: PKT_RESULT, jobId: JOB, round: 0, chunk: 9, rank: 1, contributors: 3, exp: -2 }, Array.from(v)));
    expect(r.testRun(f).action).toBe(XDP_DROP);
    expect(delta(before, r.counters())).toEqual({ rx: 1, results: 1, events: 1, wakeups: 1 });
    const got = r.result(9);
    expect({ tag: got.tag, count: got.count, contributors: got.contributors, exp: got.exp }).toEqual({ tag: 1, count: MAX_ELEMS, contributors: 3, exp: -2 });
    expect(Array.from(got.v)).toEqual(Array.from(v));
  });

  test("a frame cut short in its frags (IP length beyond the frame) is dropped as mal_trunc_ip, nothing summed", () => {
    r.setConfig(cfg);
    const f = contrib(10, 0, values(11, MAX_ELEMS));
    const before = r.counters();
    for (const len of [LINEAR + 1, 6000, f.length - 1]) expect(r.testRun(f.slice(0, len)).action).toBe(XDP_DROP);
    expect(delta(before, r.counters())).toEqual({ rx: 3, mal_trunc_ip: 3 });
    expect(r.slot(10).contributors).toBe(0);
  });

  test("UDP length beyond the IP packet, and a count the payload does not hold, are dropped and counted", () => {
    r.setConfig(cfg);
    const f = contrib(11, 0, values(12, MAX_ELEMS));
    const dv = new DataView(f.buffer);
    const udpLen = dv.getUint16(14 + 20 + 4);
    const longUdp = f.slice();
    new DataView(longUdp.buffer).setUint16(14 + 20 + 4, udpLen + 2);
    const fewer = f.slice();
    new DataView(fewer.buffer).setUint16(14 + 20 + 8 + 22, MAX_ELEMS - 1, true); // count: one value less than the payload holds
    const before = r.counters();
    expect(r.testRun(longUdp).action).toBe(XDP_DROP);
    expect(r.testRun(fewer).action).toBe(XDP_DROP);
    expect(delta(before, r.counters())).toEqual({ rx: 2, mal_trunc_udp: 1, mal_count: 1 });
  });

  test("--auth full: the MAC covers the payload in the frags: a byte flipped there is bad_mac, never summed", () => {
    const key = crypto.getRandomValues(new Uint8Array(16));
    r.setJobKey(key);
    r.setConfig({ ...cfg, chunkElems: MAX_ELEMS_AUTH, flags: CFG_AUTH_FULL });
    try {
      const v = values(13, MAX_ELEMS_AUTH);
      const sealed = (rank: number) => frame(sealDatagram(key, datagram({ type: PKT_CONTRIB, jobId: JOB, round: 0, chunk: 12, rank }, Array.from(v)), "full"));
      const bad = sealed(1);
      bad[LINEAR + 2000] ^= 0x40; // in the frags
      const before = r.counters();
      expect(r.testRun(bad).action).toBe(XDP_DROP);
      expect(delta(before, r.counters())).toEqual({ rx: 1, bad_mac: 1 });
      expect(r.testRun(sealed(0)).action).toBe(XDP_DROP);
      expect(r.testRun(sealed(1)).action).toBe(XDP_DROP);
      expect(delta(before, r.counters())).toEqual({ rx: 3, bad_mac: 1, summed: 2, elems_summed: 2 * MAX_ELEMS_AUTH });
      expect(Array.from(r.sums(12, MAX_ELEMS_AUTH))).toEqual(Array.from(v, (x) => 2 * x));
    } finally {
      r.setJobKey(null);
    }
  });
});

describe.skipIf(!canUseNetns())("native XDP on a veth at MTU 9000 (root, network namespaces)", () => {
  test("attach picks native mode and the MTU's chunk; real 9000-byte packets from a peer are summed exactly", () => {
    const lab = createLab("frags", ["a", "b"], { link: "pair", subnet: "10.213.166", ifname: "frx0" });
    try {
      for (const n of ["a", "b"]) lab.must(n, ["ip", "link", "set", "frx0", "mtu", "9000"]);
      const attachScript = join(lab.tmp, "attach.ts");
      writeFileSync(attachScript, `
import { attach } from "${ROOT}/src/attach.ts";
const r = await attach("frx0", { port: 47166, workers: 2, jobId: ${JOB}, chunks: 4, mode: "native" });
console.log(JSON.stringify({ pinDir: r.pinDir, mode: r.mode, chunkElems: r.config.chunkElems, notes: r.notes }));
`);
      const att = JSON.parse(lab.must("b", ["bun", attachScript]));
      expect(att.mode).toBe("native");
      expect(att.chunkElems).toBe(MAX_ELEMS); // (9000 - 60) / 2, rounded down to 4
      expect(att.notes.join("\n")).toContain(`${MAX_ELEMS} int16 values per packet: the most frx0's MTU 9000 holds`);
      const maps = PinnedReflex.open(att.pinDir);
      try {
        maps.setConfig({ ...maps.config(), roundBase: 0, batch: 1 });
        const vs = [0, 1].map((k) => values(200 + k, MAX_ELEMS));
        const sendScript = join(lab.tmp, "send.ts");
        writeFileSync(sendScript, `
import { datagram } from "${ROOT}/src/packet.ts";
import dgram from "node:dgram";
const vs = ${JSON.stringify(vs.map((v) => Array.from(v)))};
const s = dgram.createSocket("udp4");
await new Promise((ok) => s.bind(0, ok));
for (let rank = 0; rank < 2; rank++) {
  const d = datagram({ type: ${PKT_CONTRIB}, jobId: ${JOB}, round: 0, chunk: 3, rank }, vs[rank]);
  if (d.length !== ${32 + 2 * MAX_ELEMS}) throw new Error("datagram of " + d.length + " bytes");
  await new Promise((ok, no) => s.send(d, 47166, "10.213.166.2", (e) => (e ? no(e) : ok(0))));
}
s.close();
`);
        lab.must("a", ["bun", sendScript]);
        const deadline = Date.now() + 5000;
        while (maps.counters().summed < 2 && Date.now() < deadline) Bun.sleepSync(20);
        const c = maps.counters();
        expect({ summed: c.summed, elems: c.elems_summed, completed: c.completed, malformed: c.mal_trunc_ip + c.mal_trunc_udp + c.mal_count + c.mal_fragment })
          .toEqual({ summed: 2, elems: 2 * MAX_ELEMS, completed: 1, malformed: 0 });
        expect(Array.from(maps.sums(3, MAX_ELEMS))).toEqual(Array.from({ length: MAX_ELEMS }, (_, i) => vs[0][i] + vs[1][i]));
      } finally {
        maps.close();
      }
      expect(lab.linkInfo("b", "frx0").xdp?.mode).toBe(1); // XDP_ATTACHED_DRV: native, not generic
    } finally {
      lab.destroy();
    }
  }, 60_000);
});
