// End to end on a real kernel: a "host" namespace running the XDP program and
// two "worker" namespaces, all on a bridge (in a fourth namespace). Workers
// send real UDP contributions; a probe process inside the host namespace
// opens the pinned maps (the event ring before any traffic) and reports the
// sums, events and counters, which must match a reference computed here.
// Runs once with native XDP and once with generic XDP.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { COUNTERS, EV_SLOT_COMPLETE, PKT_CONTRIB, type Counters } from "../src/abi.ts";
import { datagram } from "../src/packet.ts";
import { ROOT, canUseNetns, createLab, lineReader, must, sh, until, type Lab } from "./helpers/netns.ts";
import { mulberry32 } from "../src/random.ts";

const IF = "eth0";
const PORT = 47000;
const OTHER_PORT = 47001;
const TCP_PORT = 47002;
const JOB = 7;
const WORKERS = 3;
const CHUNKS = 16;
const BATCH_A = 4; // round 0
const BATCH_B = 5; // round 1, set by a second (idempotent) attach
const ELEMS = 720; // default --chunk-elems

// ---- scripts run inside the namespaces ---------------------------------------

const SENDER = `
const spec = await Bun.file(process.argv[2]).json();
const sock = await Bun.udpSocket({});
let sent = 0;
for (const p of spec.packets) {
  const bytes = Buffer.from(p.b64, "base64");
  let ok = false;
  for (let i = 0; i < 200 && !ok; i++) {
    ok = sock.send(bytes, p.port, spec.addr);
    if (!ok) await Bun.sleep(1);
  }
  if (!ok) { console.error("send failed after", sent); process.exit(1); }
  sent++;
}
sock.close();
console.log(sent);
`;

// Ordinary traffic: a TCP exchange with the probe's listener in the host.
const TCP_CLIENT = `
const [addr, port] = process.argv.slice(2);
const reply = await new Promise((resolve, reject) => {
  let got = "";
  setTimeout(() => reject(new Error("tcp timeout")), 3000).unref();
  Bun.connect({
    hostname: addr,
    port: Number(port),
    socket: {
      open(s) { s.write("ping"); },
      data(_s, d) { got += Buffer.from(d).toString(); },
      close() { resolve(got); },
      error(_s, e) { reject(e); },
      connectError(_s, e) { reject(e); },
    },
  });
});
console.log(reply);
process.exit(0);
`;

const PROBE = `
import { join } from "node:path";
import { toArrayBuffer } from "bun:ffi";
import { shim } from "${ROOT}/native/shim.ts";
import { cstr } from "${ROOT}/native/libc.ts";
import { EventRing, readConfig, readCounters } from "${ROOT}/src/reflex.ts";
import { BANKS, MAX_ELEMS, SIZEOF, decodeSums } from "${ROOT}/src/abi.ts";

const [dir, addr, wantEvents, tcpPort, ...ports] = process.argv.slice(2);
const open = (n) => {
  const fd = shim.ainftp_obj_get(cstr(join(dir, n)));
  if (fd < 0) throw new Error("opening pinned " + n + ": " + fd);
  return fd;
};
const fds = { events: open("events"), counters: open("counters"), config: open("job_config"), acc: open("acc") };
const ring = new EventRing(fds.events);
const received = {};
for (const p of ports) {
  received[p] = [];
  await Bun.udpSocket({ hostname: addr, port: Number(p), socket: { data(_s, buf) { received[p].push(Buffer.from(buf).toString()); } } });
}
Bun.listen({ hostname: addr, port: Number(tcpPort), socket: { data(s, d) { s.write("pong:" + Buffer.from(d).toString()); s.end(); } } });
process.stdout.write("ready\\n");
for await (const line of console) if (line.trim() === "go") break;

const events = [];
const end = performance.now() + 3000;
while (events.length < Number(wantEvents) && performance.now() < end) events.push(...ring.poll(50));
events.push(...ring.poll(0));
const config = readConfig(fds.config);
const counters = readCounters(fds.counters);
const stride = SIZEOF.ainftp_acc;
const len = Math.ceil((stride * BANKS * config.chunks) / 4096) * 4096;
const out = new BigUint64Array(1);
const rc = shim.ainftp_map_mmap(fds.acc, BigInt(len), 0, out);
if (rc < 0) throw new Error("mmap acc: " + rc);
const buf = toArrayBuffer(Number(out[0]), 0, len);
const sums = [];
// every slot of this test completes with all members: decode with that count
for (let i = 0; i < BANKS * config.chunks; i++)
  sums.push(Array.from(decodeSums(new Uint32Array(buf, i * stride, MAX_ELEMS), config.chunkElems, config.members)));
process.stdout.write(JSON.stringify({ events, counters, config: { ...config, memberMask: config.memberMask.toString() }, sums, received }) + "\\n");
process.exit(0);
`;

// ---- reference data -----------------------------------------------------------

const rng = mulberry32;

interface Slot {
  round: number;
  chunk: number;
  exp: number;
  /** values[rank] */
  values: Int16Array[];
  sum: Int32Array; // ELEMS long, zero past count
}

function makeRound(round: number, rand: () => number): Slot[] {
  const slots: Slot[] = [];
  for (let chunk = 0; chunk < CHUNKS; chunk++) {
    const count = chunk === 0 ? ELEMS : chunk === 1 ? 1 : 1 + Math.floor(rand() * ELEMS);
    const exp = (chunk % 5) - 2;
    const values = Array.from({ length: WORKERS }, () => {
      const v = new Int16Array(count);
      for (let i = 0; i < count; i++) v[i] = Math.floor(rand() * 65536) - 32768;
      return v;
    });
    if (chunk === 0) {
      // extremes: the int32 sum must not wrap at int16
      for (const v of values) (v[0] = -32768), (v[1] = 32767), (v[2] = -1);
    }
    const sum = new Int32Array(ELEMS);
    for (const v of values) for (let i = 0; i < count; i++) sum[i] += v[i];
    slots.push({ round, chunk, exp, values, sum });
  }
  return slots;
}

const contrib = (s: Slot, rank: number) =>
  datagram({ type: PKT_CONTRIB, jobId: JOB, round: s.round, chunk: s.chunk, rank, exp: s.exp }, s.values[rank]);

const b64 = (b: Uint8Array) => Buffer.from(b).toString("base64");

// ---- the lab --------------------------------------------------------------------

const kernel = canUseNetns();
let lab: Lab;
let seq = 0;

function writeSpec(packets: { port: number; bytes: Uint8Array }[]): string {
  const path = join(lab.tmp, `spec-${seq++}.json`);
  writeFileSync(path, JSON.stringify({ addr: lab.node("host").addr, packets: packets.map((p) => ({ port: p.port, b64: b64(p.bytes) })) }));
  return path;
}

/** Runs one sender per [node, packets] concurrently and waits for all. */
async function send(batches: [string, { port: number; bytes: Uint8Array }[]][]): Promise<void> {
  const procs = batches.map(([node, packets]) => lab.spawn(node, ["bun", join(lab.tmp, "sender.ts"), writeSpec(packets)]));
  const results = await Promise.all(
    procs.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text(), err: await new Response(p.stderr).text() })),
  );
  batches.forEach(([, packets], i) => {
    const r = results[i];
    if (r.code !== 0 || r.out.trim() !== String(packets.length)) throw new Error(`sender ${i} failed (${r.code}): ${r.out}${r.err}`);
  });
}

function status(): any {
  const r = lab.ainftp("host", ["status", IF, "--json"]);
  if (r.code !== 0) throw new Error(`status failed: ${r.stderr}`);
  return JSON.parse(r.stdout)[0];
}


function bpftoolJson(args: string[]): any | null {
  const r = sh(["bpftool", "-j", ...args]);
  return r.code === 0 ? JSON.parse(r.stdout) : null;
}

async function scenario(mode: "native" | "generic", seed: number): Promise<void> {
  const host = lab.node("host");
  const pinDir = lab.pinDir("host", IF);
  const rand = rng(seed);
  const round0 = makeRound(0, rand);
  const round1 = makeRound(1, rand);

  // -- attach ----------------------------------------------------------------
  const a = lab.ainftp("host", [
    "attach", IF, "--workers", String(WORKERS), "--job", String(JOB), "--chunks", String(CHUNKS),
    "--batch", String(BATCH_A), "--mode", mode, "--json",
  ]);
  expect(a.stderr).toBe("");
  expect(a.code).toBe(0);
  const att = JSON.parse(a.stdout);
  // the one note: the chunk the MTU (1500) holds, since no --chunk-elems was given
  expect(att).toMatchObject({ iface: IF, mode, alreadyAttached: false, port: PORT, pinDir, notes: [`720 int16 values per packet: the most ${IF}'s MTU 1500 holds (one packet per chunk)`] });
  expect(att.config.chunkElems).toBe(720);
  expect(att.config).toMatchObject({ jobId: JOB, members: WORKERS, chunks: CHUNKS, batch: BATCH_A, ownedChunks: CHUNKS, chunkElems: ELEMS, roundBase: 0 });
  expect(BigInt(att.config.memberMask)).toBe(7n);
  const xdp = lab.linkInfo("host", IF).xdp;
  expect(xdp.prog.id).toBe(att.progId);
  expect(xdp.mode).toBe(mode === "native" ? 1 : 2); // XDP_ATTACHED_DRV / _SKB
  expect(xdp.attached).toHaveLength(1);
  const progInfo = bpftoolJson(["prog", "show", "id", String(att.progId)]);
  expect(progInfo?.name).toBe("ainftp_xdp");
  const mapIds: number[] = progInfo.map_ids;
  expect(mapIds.length).toBeGreaterThanOrEqual(7);

  // -- probe: the event ring is open before any traffic ------------------------
  const probe = lab.spawn("host", ["bun", join(lab.tmp, "probe.ts"), pinDir, host.addr, String(2 * CHUNKS), String(TCP_PORT), String(PORT), String(OTHER_PORT)]);
  const probeLines = lineReader(probe);
  try {
    expect(await probeLines.next()).toBe("ready");

    // -- ordinary traffic passes: TCP from both workers to the host -------------
    const tcp = () => Promise.all(["w1", "w2"].map(async (w) => {
      const p = lab.spawn(w, ["bun", join(lab.tmp, "tcp.ts"), host.addr, String(TCP_PORT)]);
      const [code, out, err] = [await p.exited, await new Response(p.stdout).text(), await new Response(p.stderr).text()];
      return `${code} ${out.trim()}${err}`;
    }));
    expect(await tcp()).toEqual(["0 pong:ping", "0 pong:ping"]);

    // -- round 0, batch 4: rank 0 and 2 from w1 (two senders), rank 1 from w2 --
    await send([
      ["w1", round0.map((s) => ({ port: PORT, bytes: contrib(s, 0) }))],
      ["w2", round0.map((s) => ({ port: PORT, bytes: contrib(s, 1) }))],
      ["w1", round0.map((s) => ({ port: PORT, bytes: contrib(s, 2) }))],
    ]);
    const afterA = await until(() => {
      const s = status();
      return s.counters.completed >= CHUNKS ? s : null;
    });
    expect(afterA?.counters.completed).toBe(CHUNKS);

    // -- live config change: batch 5 for round 1 ----------------------------------
    const again = lab.ainftp("host", ["attach", IF, "--batch", String(BATCH_B)]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(`already attached to ${IF}`);
    expect(again.stdout).toContain(`program id ${att.progId}`);
    expect(status().config).toMatchObject({ batch: BATCH_B, members: WORKERS, jobId: JOB, ownedChunks: CHUNKS });

    // -- round 1, and packets that must be counted but not summed -------------------
    const extras = [
      { port: PORT, bytes: contrib(round0[3], 0) }, // duplicate of a summed contribution
      { port: PORT, bytes: datagram({ magic: 0xdeadbeef, type: PKT_CONTRIB, jobId: JOB, round: 1, chunk: 5, rank: 1, exp: round1[5].exp }, round1[5].values[1]) },
      { port: PORT, bytes: datagram({ type: PKT_CONTRIB, jobId: JOB + 1, round: 1, chunk: 2, rank: 0 }, [1, 2, 3]) },
      { port: PORT, bytes: datagram({ type: PKT_CONTRIB, jobId: JOB, round: 1, chunk: 2, rank: 3 }, [1, 2, 3]) },
      { port: PORT, bytes: datagram({ type: PKT_CONTRIB, jobId: JOB, round: 2, chunk: 2, rank: 0 }, [1, 2, 3]) },
      { port: OTHER_PORT, bytes: new TextEncoder().encode("hello, stack") },
    ];
    await send([
      ["w1", round1.map((s) => ({ port: PORT, bytes: contrib(s, 0) }))],
      ["w2", round1.map((s) => ({ port: PORT, bytes: contrib(s, 1) }))],
      ["w1", round1.map((s) => ({ port: PORT, bytes: contrib(s, 2) }))],
      ["w2", extras],
    ]);
    const rxWant = 2 * CHUNKS * WORKERS + 5;
    const afterB = await until(() => {
      const s = status();
      return s.counters.completed >= 2 * CHUNKS && s.counters.rx >= rxWant ? s : null;
    });
    expect(afterB?.counters.rx).toBe(rxWant);

    // -- what the probe saw -----------------------------------------------------------
    probe.stdin.write("go\n");
    probe.stdin.flush();
    const report = JSON.parse(await probeLines.next());
    expect(await probe.exited).toBe(0);

    const slots = [...round0, ...round1];
    const elems = slots.reduce((n, s) => n + s.values[0].length, 0);
    // wake on every batch-th event of a round and on the one reaching owned_chunks
    const wakes = (batch: number) => Array.from({ length: CHUNKS }, (_, i) => i + 1).filter((d) => d % batch === 0 || d >= CHUNKS).length;
    expect(wakes(BATCH_A) + wakes(BATCH_B)).toBe(4 + 4); // 4,8,12,16 and 5,10,15,16
    const want: Counters = Object.fromEntries(COUNTERS.map((k) => [k, 0])) as Counters;
    Object.assign(want, {
      rx: rxWant,
      summed: 2 * CHUNKS * WORKERS,
      elems_summed: WORKERS * elems,
      duplicate: 1,
      future_round: 1,
      foreign_job: 1,
      completed: 2 * CHUNKS,
      events: 2 * CHUNKS,
      wakeups: wakes(BATCH_A) + wakes(BATCH_B),
      mal_magic: 1,
      mal_rank: 1,
    });
    const got = report.counters as Counters;
    // TCP (SYN, ACK, data, FIN … from each worker), the other-port datagram
    // and ARP pass untouched
    expect(got.passed).toBeGreaterThanOrEqual(2 * 3 + 1);
    expect({ ...got, passed: 0 }).toEqual({ ...want, passed: 0 });
    // the CLI reads the same per-CPU counters
    const st = status();
    expect({ ...st.counters, passed: 0 }).toEqual({ ...want, passed: 0 });
    expect(st).toMatchObject({ attached: true, stale: false, mode, progId: att.progId, port: PORT, chunks: CHUNKS });

    // events: one SLOT_COMPLETE per (round, chunk), round 0's first
    const ev = report.events as { type: number; contributors: number; round: number; chunk: number; index: number }[];
    expect(ev).toHaveLength(2 * CHUNKS);
    for (const e of ev) {
      expect(e.type).toBe(EV_SLOT_COMPLETE);
      expect(e.contributors).toBe(WORKERS);
      expect(e.index).toBe((e.round & 1) * CHUNKS + e.chunk);
    }
    expect(ev.map((e) => `${e.round}/${e.chunk}`).sort()).toEqual(slots.map((s) => `${s.round}/${s.chunk}`).sort());
    expect(ev.slice(0, CHUNKS).every((e) => e.round === 0)).toBe(true);

    // sums: exact int32 over each slot's count (the duplicate and the
    // malformed packets added nothing)
    for (const s of slots) {
      const idx = (s.round & 1) * CHUNKS + s.chunk;
      const count = s.values[0].length;
      const gotSum = (report.sums[idx] as number[]).slice(0, count);
      expect(gotSum.length).toBe(count);
      s.sum = s.sum.slice(0, count);
      if (!Bun.deepEquals(gotSum, Array.from(s.sum)))
        expect({ seed, round: s.round, chunk: s.chunk, sum: gotSum }).toEqual({ seed, round: s.round, chunk: s.chunk, sum: Array.from(s.sum) });
    }
    expect(report.sums[0][0]).toBe(-3 * 32768);
    expect(report.sums[0][1]).toBe(3 * 32767);

    // our port is consumed by the program; the other port reaches the socket
    expect(report.received[String(PORT)]).toEqual([]);
    expect(report.received[String(OTHER_PORT)]).toEqual(["hello, stack"]);
  } finally {
    if (probe.exitCode === null) probe.kill(9);
    await probe.exited;
  }

  // -- detach: nothing left ---------------------------------------------------------
  const d = lab.ainftp("host", ["detach", IF]);
  expect(d.code).toBe(0);
  expect(d.stdout).toBe(`detached from ${IF} (program id ${att.progId}); removed ${pinDir}\n`);
  expect(lab.linkInfo("host", IF).xdp).toBeUndefined();
  expect(existsSync(pinDir)).toBe(false);
  expect(existsSync(lab.pinRoot("host"))).toBe(false);
  const gone = await until(
    () => bpftoolJson(["prog", "show", "id", String(att.progId)]) === null && mapIds.every((id) => bpftoolJson(["map", "show", "id", String(id)]) === null),
    3000,
  );
  expect(gone).toBe(true);
  expect(lab.ainftp("host", ["status"]).stdout).toBe("ainftp is not attached to any interface in this network namespace\n");
}

describe.skipIf(!kernel)("XDP aggregation across network namespaces", () => {
  beforeAll(() => {
    must(["make", "--no-print-directory", "-s", "build"], { timeoutMs: 120_000 });
    lab = createLab("net", ["host", "w1", "w2"], { link: "bridge", subnet: "10.213.7", ifname: IF });
    writeFileSync(join(lab.tmp, "sender.ts"), SENDER);
    writeFileSync(join(lab.tmp, "probe.ts"), PROBE);
    writeFileSync(join(lab.tmp, "tcp.ts"), TCP_CLIENT);
  });

  afterAll(() => {
    lab?.destroy();
  });

  /** A failed scenario must not leave the program attached for the next one. */
  async function guarded(mode: "native" | "generic", seed: number) {
    try {
      await scenario(mode, seed);
    } catch (e) {
      lab.ainftp("host", ["detach", IF]);
      rmSync(lab.pinRoot("host"), { recursive: true, force: true });
      sh(["ip", "-n", lab.node("host").name, "link", "set", "dev", IF, "xdp", "off"]);
      throw e;
    }
  }

  test("native mode: sums, counters, events and wake-ups are exact; detach leaves nothing", async () => {
    await guarded("native", 0x5eed0001);
  }, 30_000);

  test("generic mode: the same", async () => {
    await guarded("generic", 0x5eed0002);
  }, 30_000);
});
