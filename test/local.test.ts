// The local interface (`ainftp swarm --serve`) and the Python client.
//   - unit: the framing, and a LocalServer driven by a stand-in reducer over a
//     real Unix socket (a bad version refused, bad requests answered with an
//     error status, zero-copy buffers in /dev/shm, local_size trainers per
//     node summed into one round, mismatched rounds refused, the census, a
//     trainer that disconnects or leaves, a failed round), also through the
//     Python client (standard library only);
//   - kernel (root, torch): 2 namespaces × 2 trainers (DDP world 4) through
//     `dist/ainftp swarm --serve` and examples/ddp_train.py end at the loss of
//     plain Gloo with 4 processes (< 1%); on 4 namespaces × 1, a trainer
//     killed mid-step makes the others fail with an error naming it, within a bound.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { IO } from "../cli/io.ts";
import { run } from "../cli/program.ts";
import { RoundError } from "../src/collective.ts";
import {
  CENSUS_FLOATS_QUANTIZED, encodeFrame, FrameDecoder, FrameError, LOCAL_PROTOCOL, LOCAL_PROTOCOL_VERSION, LocalServer, MAX_FRAME, type Message, type Reducer,
} from "../src/local.ts";
import { BIN, canUseNetns, createLab, ensureBuilt, ROOT, sh, until, type Lab } from "./helpers/netns.ts";

const PY_CLIENT = join(ROOT, "clients/python");
const EXAMPLE = join(ROOT, "examples/ddp_train.py");
/** No __pycache__ left in clients/python by the runs here. */
const PY_ENV = { PYTHONDONTWRITEBYTECODE: "1" };

/** A Python that imports torch with Gloo: $AINFTP_PYTHON, python3, then
 * /usr/bin/python3 (Debian's python3-torch; a pyenv python3 may shadow it). */
function torchPython(): string | null {
  for (const py of new Set([process.env.AINFTP_PYTHON, "python3", "/usr/bin/python3"].filter((x): x is string => !!x))) {
    if (!Bun.which(py)) continue;
    const r = sh([py, "-c", "import torch.distributed as d; assert d.is_available() and d.is_gloo_available()"], { timeoutMs: 60_000 });
    if (r.code === 0) return py;
  }
  return null;
}

const kernel = canUseNetns();
const python = torchPython();
const skipWhy = !kernel ? "not root, or no network namespaces (ip netns, nsenter)" : !python ? "no python3 that imports torch with Gloo (apt-get install -y python3-torch)" : null;
if (skipWhy) console.log(`[local] skipping the kernel tests: ${skipWhy}`);


// ---- framing -----------------------------------------------------------------------------

describe("framing", () => {
  test("messages survive a round trip, whole or split at any byte", () => {
    const msgs: Message[] = [
      { type: "hello", protocol: LOCAL_PROTOCOL, version: 1, pid: 42, name: "trainer ü" },
      { type: "allreduce", seq: 7, buffer: 1, offset: 0, count: 1 << 20, op: "mean", round: 3 },
      { type: "bye", seq: 8 },
    ];
    const bytes = Buffer.concat(msgs.map((m) => encodeFrame(m)));
    expect(bytes.readUInt32LE(0)).toBe(Buffer.byteLength(JSON.stringify(msgs[0])));
    expect(new FrameDecoder().push(bytes)).toEqual(msgs);
    for (let cut = 1; cut < bytes.length; cut++) {
      const d = new FrameDecoder();
      expect([...d.push(bytes.subarray(0, cut)), ...d.push(bytes.subarray(cut))]).toEqual(msgs);
    }
  });

  test("anything that is not a frame is refused", () => {
    const frame = (body: string) => {
      const b = Buffer.from(body);
      const h = Buffer.alloc(4);
      h.writeUInt32LE(b.length);
      return Buffer.concat([h, b]);
    };
    expect(() => new FrameDecoder().push(Buffer.from([0, 0, 0, 0]))).toThrow(FrameError);
    const big = Buffer.alloc(4);
    big.writeUInt32LE(MAX_FRAME + 1);
    expect(() => new FrameDecoder().push(big)).toThrow(/frame of/);
    expect(() => new FrameDecoder().push(Buffer.from("GET / HTTP/1.1\r\n"))).toThrow(FrameError);
    expect(() => new FrameDecoder().push(frame("{not json"))).toThrow(/not JSON/);
    expect(() => new FrameDecoder().push(frame("[1,2]"))).toThrow(/JSON object/);
    expect(() => new FrameDecoder().push(frame('{"type":3}'))).toThrow(/string "type"/);
    expect(() => encodeFrame({ type: "x", pad: "y".repeat(MAX_FRAME) })).toThrow(FrameError);
  });
});

// ---- the server, with a stand-in for the collective ------------------------------------------------

/** Two members whose other member holds the same data: a sum doubles.
 * Below 16 bits, x is first rounded to the nearest multiple of max|x| / (2^(bits-1) - 1),
 * and a residual asked for gets x minus that. */
class FakeReducer implements Reducer {
  rank = 0;
  size = 2;
  job = 7;
  peers = ["10.0.0.1", "10.0.0.2"];
  chunkElems = 720;
  capacity = 8;
  aborted = false;
  calls: { n: number; op: string; residual?: true }[] = [];
  failWith: Error | null = null;
  delayMs = 1;
  bits = 16;

  async allreduce(x: Float32Array, o: { op?: "sum" | "mean"; residual?: Float32Array }): Promise<void> {
    this.calls.push({ n: x.length, op: o.op ?? "sum", ...(o.residual ? { residual: true as const } : {}) });
    await Bun.sleep(this.delayMs);
    if (this.aborted) throw new Error("aborted");
    if (this.failWith) throw this.failWith;
    if (this.bits < 16) {
      const step = x.reduce((m, v) => Math.max(m, Math.abs(v)), 0) / (2 ** (this.bits - 1) - 1) || 1;
      for (let i = 0; i < x.length; i++) {
        const q = Math.fround(Math.round(x[i] / step) * step);
        if (o.residual) o.residual[i] = x[i] - q;
        x[i] = q;
      }
    }
    for (let i = 0; i < x.length; i++) x[i] = o.op === "mean" ? x[i] : 2 * x[i];
  }

  abort(): void {
    this.aborted = true;
  }
}

/** A raw protocol client for the tests. */
class RawClient {
  private decoder = new FrameDecoder();
  private inbox: Message[] = [];
  private waiters: ((m: Message | null) => void)[] = [];
  ended = false;

  private constructor(readonly sock: Socket) {
    sock.on("data", (c: Buffer) => {
      for (const m of this.decoder.push(c)) {
        const w = this.waiters.shift();
        if (w) w(m);
        else this.inbox.push(m);
      }
    });
    sock.on("close", () => {
      this.ended = true;
      for (const w of this.waiters.splice(0)) w(null);
    });
    sock.on("error", () => {});
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = createConnection(path);
      s.once("connect", () => resolve(new RawClient(s)));
      s.once("error", reject);
    });
  }

  send(m: Message): void {
    this.sock.write(encodeFrame(m));
  }

  /** The next message, or null once the node hung up. */
  next(timeoutMs = 3000): Promise<Message | null> {
    const m = this.inbox.shift();
    if (m) return Promise.resolve(m);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no message from the node")), timeoutMs);
      this.waiters.push((x) => (clearTimeout(t), resolve(x)));
    });
  }

  async ask(m: Message): Promise<Message> {
    this.send(m);
    const r = await this.next();
    if (!r) throw new Error(`the node hung up on ${m.type}`);
    return r;
  }

  /** A hello; `extra` adds or overrides fields (local_size, world, version…). */
  hello(extra: Record<string, unknown> = {}): Promise<Message> {
    return this.ask({ type: "hello", protocol: LOCAL_PROTOCOL, version: LOCAL_PROTOCOL_VERSION, pid: process.pid, name: "test", ...extra });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** A shared buffer file as a client makes one. */
function sharedFile(name: string, floats: Float32Array): string {
  const path = `/dev/shm/ainftp-test-${process.pid}-${name}`;
  writeFileSync(path, new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength), { mode: 0o600 });
  return path;
}

function readFloats(path: string, n: number): Float32Array {
  const b = new Uint8Array(4 * n);
  const fd = openSync(path, "r");
  readSync(fd, b, 0, b.length, 0);
  closeSync(fd);
  return new Float32Array(b.buffer);
}

/** Whether this process maps path (the node's view of a registered buffer). */
function mapped(path: string): boolean {
  return readFileSync("/proc/self/maps", "utf8").includes(path);
}

describe("LocalServer with a stand-in reducer", () => {
  let dir: string;
  let server: LocalServer;
  let reducer: FakeReducer;
  const files: string[] = [];
  const clients: RawClient[] = [];
  const sockPath = () => join(dir, "sub", "7.sock");
  const connect = async () => {
    const c = await RawClient.connect(sockPath());
    clients.push(c);
    return c;
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "aft-local-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await server?.close();
    for (const f of files.splice(0)) rmSync(f, { force: true });
  });
  const start = async () => {
    reducer = new FakeReducer();
    server = await LocalServer.listen({ socketPath: sockPath(), reducer });
  };

  test("hello: the node describes the job; its directory is 0700; a bad version or protocol is refused, saying both versions", async () => {
    await start();
    expect(statSync(join(dir, "sub")).mode & 0o777).toBe(0o700);
    const ok = await (await connect()).hello();
    expect(ok).toMatchObject({ type: "hello", status: "ok", protocol: LOCAL_PROTOCOL, version: 3, job: 7, rank: 0, size: 2, round_elems: 8 * 720, local_size: 1, world: null, bits: 16 });
    clients.pop()!.close();

    const c = await connect();
    const r = await c.hello({ version: 1 }); // a client of before trainers shared a node
    expect(r).toMatchObject({ type: "hello", status: "version_mismatch", version: 3 });
    expect(r.message).toMatch(/client speaks ainftp local protocol version 1, this node speaks version 3/);
    expect(await c.next()).toBeNull(); // and hangs up

    const d = await connect();
    expect(await d.ask({ type: "hello", protocol: "http", version: 1 })).toMatchObject({ status: "bad_request" });
    const e = await connect();
    expect(await e.ask({ type: "allreduce", buffer: 1 })).toMatchObject({ status: "bad_request", message: expect.stringMatching(/first message must be a hello/) });
    const f = await connect();
    f.sock.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(await f.next()).toMatchObject({ status: "bad_request", message: expect.stringMatching(/not an ainftp local-protocol client/) });
    expect(await f.next()).toBeNull();
  });

  test("bits: the hello names the job's width; a trainer asking for another is refused naming both and the fix; any other value is refused", async () => {
    await start();
    reducer.bits = 8;
    const refused = async (hello: Record<string, unknown>, re: RegExp) => {
      const c = await connect();
      const r = await c.hello(hello);
      expect(r).toMatchObject({ type: "hello", status: "bad_request" });
      expect(r.message).toMatch(re);
      expect(await c.next()).toBeNull(); // and hangs up
    };
    await refused({ bits: 4 }, /this trainer asks for 4-bit gradients, but this node's job runs at 8 bits: start the swarm with --bits 4 \(on every node\), or connect with bits=8/);
    await refused({ bits: 16 }, /asks for 16-bit gradients, but this node's job runs at 8 bits: start the swarm with --bits 16/);
    for (const bad of [3, 32, "8", 8.5, true])
      await refused({ bits: bad }, /"bits" .* is not one of 16, 8, 4 \(bits per gradient coordinate on the wire\)/);
    expect(server.trainers.connected).toEqual([]);
    const first = await connect();
    expect(await first.hello({ bits: 8 })).toMatchObject({ status: "ok", bits: 8 });
    expect(await first.ask({ type: "bye", seq: 1 })).toMatchObject({ status: "ok" });
    expect(await (await connect()).hello()).toMatchObject({ status: "ok", bits: 8 }); // not asked: told
    expect(server.bits).toBe(8);
  });

  test("the residual of the node's quantization goes where the request says; a bad range is refused; two trainers: the first asker gets it whole, the other zeros", async () => {
    await start();
    reducer.bits = 4;
    const c = await connect();
    await c.hello();
    const x = Float32Array.from([1, 0.3, -0.55, 0.1, 7, 7, 7, 7, 7]);
    const path = sharedFile("res", x);
    files.push(path);
    const b = (await c.ask({ type: "register", seq: 1, path, bytes: x.byteLength })).buffer;
    const bad = async (m: Record<string, unknown>, re: RegExp) => {
      const r = await c.ask({ type: "allreduce", seq: 2, buffer: b, count: 4, round: 0, ...m });
      expect(r).toMatchObject({ status: "bad_request" });
      expect(r.message).toMatch(re);
    };
    await bad({ residual_offset: 6 }, /the residual's elements 6\.\.10 are outside buffer/);
    await bad({ residual_offset: 2 }, /the residual's elements 2\.\.6 overlap the data's 0\.\.4/);
    await bad({ residual_offset: -1 }, /"residual_offset" must be a non-negative integer/);
    expect(reducer.calls).toEqual([]);
    expect(await c.ask({ type: "allreduce", seq: 3, buffer: b, count: 4, round: 0, op: "mean", residual_offset: 4 })).toMatchObject({ status: "ok", bits: 4 });
    const y = readFloats(path, 9), step = 1 / 7;
    for (let i = 0; i < 4; i++) {
      const q = Math.fround(Math.round(x[i] / step) * step);
      expect(y[i]).toBe(q);
      expect(y[4 + i]).toBe(Math.fround(x[i] - q));
    }
    expect(y[8]).toBe(7); // past the residual: untouched
    // below 16 bits the census is the mean of many sums (int16 sums it exactly in one float)
    expect(reducer.calls).toEqual([{ n: CENSUS_FLOATS_QUANTIZED, op: "sum" }, { n: 4, op: "mean", residual: true }]);
    expect(server.trainers.world).toBe(2);
    // no residual asked: none computed, and the range is untouched
    expect(await c.ask({ type: "allreduce", seq: 4, buffer: b, count: 4, round: 1 })).toMatchObject({ status: "ok" });
    expect(reducer.calls.at(-1)).toEqual({ n: 4, op: "sum" });
    expect([...readFloats(path, 9).subarray(4)]).toEqual([...y.subarray(4)]);
  });

  test("bad requests get a bad_request status and the session goes on", async () => {
    await start();
    const c = await connect();
    await c.hello();
    const x = Float32Array.from([1, 2, 3, 4]);
    const path = sharedFile("bad", x);
    files.push(path);
    const bad = async (m: Message, re: RegExp) => {
      const r = await c.ask({ seq: 1, ...m });
      expect(r).toMatchObject({ type: m.type, seq: 1, status: "bad_request" });
      expect(r.message).toMatch(re);
    };
    await bad({ type: "frobnicate" }, /unknown request type "frobnicate"/);
    await bad({ type: "register", path: "/etc/passwd", bytes: 16 }, /file name of \/etc\/passwd does not match/);
    await bad({ type: "register", path: "/dev/shm/../etc/ainftp-x", bytes: 16 }, /not an absolute, normalized path/);
    await bad({ type: "register", path: join(dir, "ainftp-x"), bytes: 16 }, /not on tmpfs|does not exist/);
    await bad({ type: "register", path, bytes: 6 }, /positive multiple of 4/);
    await bad({ type: "register", path, bytes: 4096 }, /holds 16 bytes, fewer than the 4096 registered/);
    await bad({ type: "register", path: "/dev/shm/ainftp-missing-file", bytes: 16 }, /does not exist/);
    await bad({ type: "allreduce", buffer: 9, count: 1, round: 0 }, /no buffer 9 is registered/);
    const reg = await c.ask({ type: "register", seq: 2, path, bytes: 16 });
    const b = reg.buffer; // before toMatchObject, which (Bun 1.4.5) replaces matched fields with the matchers
    expect(reg).toMatchObject({ status: "ok", buffer: expect.any(Number) });
    await bad({ type: "allreduce", buffer: b, offset: 2, count: 3, round: 0 }, /elements 2\.\.5 are outside buffer/);
    await bad({ type: "allreduce", buffer: b, count: -1, round: 0 }, /non-negative integers/);
    await bad({ type: "allreduce", buffer: b, count: 4, op: "max", round: 0 }, /op "max" is not "sum" or "mean"/);
    await bad({ type: "allreduce", buffer: b, count: 4 }, /"round" must be/);
    expect(reducer.calls).toEqual([]);
    expect(await c.ask({ type: "allreduce", seq: 3, buffer: b, count: 4, round: 5 })).toMatchObject({ status: "ok", seq: 3, round: 5 });
    await bad({ type: "allreduce", buffer: b, count: 4, round: 7 }, /round 7 after round 5: round ids go up by one/);
  });

  test("register maps the client's file shared: the node reduces it in place, no copy; unregister and bye unmap", async () => {
    await start();
    const c = await connect();
    await c.hello();
    const x = Float32Array.from({ length: 1024 }, (_, i) => i - 512.5);
    const path = sharedFile("zc", x);
    files.push(path);
    const reg = await c.ask({ type: "register", seq: 1, path, bytes: x.byteLength });
    expect(reg.status).toBe("ok");
    expect(mapped(path)).toBe(true);
    const r = await c.ask({ type: "allreduce", seq: 2, buffer: reg.buffer, offset: 100, count: 200, op: "sum", round: 0 });
    expect(r).toMatchObject({ status: "ok", round: 0, ms: expect.any(Number) });
    // what the client sees through its own mapping: elements 100..299 doubled, the rest untouched
    const y = readFloats(path, 1024);
    for (const i of [0, 99, 100, 299, 300, 1023]) expect(y[i]).toBe(i >= 100 && i < 300 ? 2 * x[i] : x[i]);
    // a write by the client is what the node reduces next
    const fd = openSync(path, "r+");
    writeSync(fd, new Uint8Array(Float32Array.from([3]).buffer), 0, 4, 0);
    closeSync(fd);
    expect(await c.ask({ type: "allreduce", seq: 3, buffer: reg.buffer, count: 1, op: "mean", round: 1 })).toMatchObject({ status: "ok" });
    expect(reducer.calls).toEqual([{ n: 1, op: "sum" }, { n: 200, op: "sum" }, { n: 1, op: "mean" }]); // the census, then the rounds
    expect(await c.ask({ type: "unregister", seq: 4, buffer: reg.buffer })).toMatchObject({ status: "ok" });
    expect(mapped(path)).toBe(false);
    const reg2 = await c.ask({ type: "register", seq: 5, path, bytes: 64 });
    expect(mapped(path)).toBe(true);
    expect(await c.ask({ type: "bye", seq: 6 })).toMatchObject({ type: "bye", status: "ok" });
    expect(await c.next()).toBeNull();
    expect(reg2.status).toBe("ok");
    await Bun.sleep(20);
    expect(mapped(path)).toBe(false);
    // a clean departure keeps the job: the next trainer is served
    const d = await connect();
    expect(await d.hello()).toMatchObject({ status: "ok" });
    expect(reducer.aborted).toBe(false);
  });

  test("local_size 1 (the default): a second trainer is refused with busy, naming the first", async () => {
    await start();
    const c = await connect();
    await c.hello();
    const d = await connect();
    const r = await d.hello();
    expect(r).toMatchObject({ status: "busy" });
    expect(r.message).toMatch(new RegExp(`serves 1 trainer \\(local_size 1\\) and has it: pid ${process.pid} \\(test\\); give every trainer of this host local_size`));
    expect(await d.next()).toBeNull();
  });

  // ---- trainers sharing a node ----

  /** A trainer of this host: hello'd with `hello`, and `xs` registered. */
  const trainer = async (name: string, xs: Float32Array, hello: Record<string, unknown>) => {
    const c = await connect();
    expect(await c.hello({ name, ...hello })).toMatchObject({ status: "ok" });
    const path = sharedFile(name, xs);
    files.push(path);
    const reg = await c.ask({ type: "register", seq: 1, path, bytes: xs.byteLength });
    return { c, path, buffer: reg.buffer as number };
  };
  const pair = async (hello: Record<string, unknown> = {}) => [
    await trainer("gpu0", Float32Array.from([1, 2, 3, 4]), { local_size: 2, local_rank: 0, ...hello }),
    await trainer("gpu1", Float32Array.from([10, 20, 30, 40, 99]), { local_size: 2, local_rank: 1, ...hello }),
  ];
  const ask = (t: { c: RawClient; buffer: number }, m: Record<string, unknown>) => t.c.send({ type: "allreduce", seq: 9, buffer: t.buffer, op: "sum", count: 4, ...m });

  test("two trainers on one node: a round waits for both, sums their buffers, goes over the network once, and both get the result; mean divides by the job's trainers", async () => {
    await start();
    const [a, b] = await pair({ world: 4 });
    expect(server.trainers).toMatchObject({ localSize: 2, world: null, connected: [{ name: "gpu0" }, { name: "gpu1" }] });
    ask(a, { round: 0 });
    await Bun.sleep(30);
    expect(reducer.calls).toEqual([]); // gpu1 has not asked yet
    ask(b, { round: 0, offset: 1 }); // its own buffer and offset: floats 20, 30, 40, 99
    const [ra, rb] = [await a.c.next(), await b.c.next()];
    const waited = ra!.wait_ms; // before toMatchObject, which (Bun 1.4.5) replaces matched fields with the matchers
    // (a + b) summed here, doubled by the stand-in's other member: each of 2 nodes has 2 trainers
    for (const r of [ra, rb]) expect(r).toMatchObject({ type: "allreduce", status: "ok", round: 0, world: 4, ms: expect.any(Number), wait_ms: expect.any(Number) });
    expect(waited as number).toBeGreaterThanOrEqual(25);
    expect([...readFloats(a.path, 4)]).toEqual([42, 64, 86, 206]);
    expect([...readFloats(b.path, 5)]).toEqual([10, 42, 64, 86, 206]);
    expect(reducer.calls).toEqual([{ n: 1, op: "sum" }, { n: 4, op: "sum" }]); // the census (2 + 2), then one round
    // mean: the other node holds the same, so the mean of the 4 trainers is (a + b) / 2 = 42, 64, …
    ask(b, { round: 1, offset: 1, op: "mean" });
    ask(a, { round: 1, op: "mean" });
    for (const r of [await a.c.next(), await b.c.next()]) expect(r).toMatchObject({ status: "ok", round: 1 });
    expect([...readFloats(a.path, 4)]).toEqual([42, 64, 86, 206]);
    expect([...readFloats(b.path, 5)]).toEqual([10, 42, 64, 86, 206]);
    expect(reducer.calls.slice(2)).toEqual([{ n: 4, op: "mean" }]);
    expect(server.trainers).toMatchObject({ localSize: 2, world: 4 });
    expect(server.stats).toMatchObject({ clients: 2, allreduces: 2, elements: 8 });
  });

  test("two trainers asking for the residual: it is of the node's sum, given whole to the first asker (by local_rank), zeros to the other; one not asking gets nothing written", async () => {
    await start();
    reducer.bits = 8;
    const [a, b] = await pair();
    // a's buffer: [1, 2, 3, 4], b's: [10, 20, 30, 40, 99]
    ask(a, { round: 0, count: 2, offset: 2 }); // a: [3, 4], no residual asked
    ask(b, { round: 0, count: 2, offset: 3, residual_offset: 0 }); // b: [40, 99], residual into its floats 0..1
    for (const r of [await a.c.next(), await b.c.next()]) expect(r).toMatchObject({ status: "ok", round: 0, bits: 8 });
    const sum = [43, 103], step = 103 / 127;
    const q = sum.map((v) => Math.fround(Math.round(v / step) * step));
    expect([...readFloats(b.path, 5)]).toEqual([Math.fround(43 - q[0]), Math.fround(103 - q[1]), 30, 2 * q[0], 2 * q[1]]);
    expect([...readFloats(a.path, 4)]).toEqual([1, 2, 2 * q[0], 2 * q[1]]);
    // both ask: local_rank 0 gets the residual, local_rank 1 zeros
    ask(b, { round: 1, count: 2, offset: 3, residual_offset: 0 });
    ask(a, { round: 1, count: 2, offset: 0, residual_offset: 2 });
    for (const r of [await a.c.next(), await b.c.next()]) expect(r).toMatchObject({ status: "ok", round: 1 });
    const sum1 = [Math.fround(1 + 2 * q[0]), Math.fround(2 + 2 * q[1])], step1 = sum1[1] / 127;
    const q1 = sum1.map((v) => Math.fround(Math.round(v / step1) * step1));
    expect([...readFloats(a.path, 4)]).toEqual([2 * q1[0], 2 * q1[1], Math.fround(sum1[0] - q1[0]), Math.fround(sum1[1] - q1[1])]);
    expect([...readFloats(b.path, 5)].slice(0, 2)).toEqual([0, 0]);
    expect(reducer.calls.slice(1)).toEqual([{ n: 2, op: "sum", residual: true }, { n: 2, op: "sum", residual: true }]);
  });

  test("hello with local_size 2: a third trainer is busy; another local_size, a taken local_rank or another world is refused, saying why", async () => {
    await start();
    const a = await connect();
    expect(await a.hello({ local_size: 2, local_rank: 0, world: 4, name: "gpu0" })).toMatchObject({ status: "ok", local_size: 2, world: null });
    const refused = async (hello: Record<string, unknown>, status: string, re: RegExp) => {
      const c = await connect();
      const r = await c.hello(hello);
      expect(r).toMatchObject({ type: "hello", status });
      expect(r.message).toMatch(re);
      expect(await c.next()).toBeNull(); // and hangs up
    };
    await refused({ local_size: 3 }, "bad_request", /says local_size 3, but this node serves 2 trainers \(as pid \d+ \(gpu0\) said\): every trainer gives local_size/);
    await refused({ local_size: 2, local_rank: 0 }, "bad_request", /local_rank 0 is taken by pid \d+ \(gpu0\)/);
    await refused({ local_size: 2, world: 6 }, "bad_request", /says world 6, but pid \d+ \(gpu0\) said 4/);
    await refused({ local_size: 2, local_rank: 2 }, "bad_request", /"local_rank" 2 is not an integer 0\.\.1/);
    await refused({ local_size: 0 }, "bad_request", /"local_size" 0 is not an integer 1\.\.64/);
    const b = await connect();
    expect(await b.hello({ local_size: 2, name: "gpu1" })).toMatchObject({ status: "ok" }); // no local_rank, no world: fine
    await refused({ local_size: 2 }, "busy", /serves 2 trainers \(local_size 2\) and has them all: pid \d+ \(gpu0\), pid \d+ \(gpu1\)/);
  });

  test("trainers of a node asking for different all-reduces (count, op, round) all get a bad_request; nothing reaches the network; then they go on", async () => {
    await start();
    const [a, b] = await pair();
    for (const [mb, what] of [[{ count: 3 }, /round 0 \(3 floats, sum\)/], [{ op: "mean" }, /round 0 \(4 floats, mean\)/], [{ round: 1 }, /round 1 \(4 floats, sum\)/]] as const) {
      ask(a, { round: 0 });
      ask(b, { round: 0, ...mb });
      for (const r of [await a.c.next(), await b.c.next()]) {
        expect(r).toMatchObject({ status: "bad_request" });
        expect(r!.message).toMatch(/this node's trainers asked for different all-reduces: pid \d+ \(gpu0\) round 0 \(4 floats, sum\), pid \d+ \(gpu1\) /);
        expect(r!.message).toMatch(what);
        expect(r!.message).toMatch(/nothing was sent to the peers/);
      }
    }
    expect(reducer.calls).toEqual([]);
    ask(a, { round: 0 });
    ask(b, { round: 0 });
    for (const r of [await a.c.next(), await b.c.next()]) expect(r).toMatchObject({ status: "ok", round: 0 });
  });

  test("a trainer that disconnects while its sibling waits for it: the sibling's round fails naming it, the job ends, the peers are told", async () => {
    await start();
    const [a, b] = await pair();
    ask(a, { round: 0 });
    ask(b, { round: 0 });
    await a.c.next();
    await b.c.next();
    ask(a, { round: 1 });
    await Bun.sleep(20);
    b.c.close(); // dies before asking for round 1
    const r = await a.c.next();
    expect(r).toMatchObject({ status: "peer_missing", hint: "a trainer died: restart the whole job" });
    expect(r!.message).toMatch(/trainer pid \d+ \(gpu1\) on this node disconnected without saying bye, after round 0; the job's other members were told, and this node's other trainers \(pid \d+ \(gpu0\)\)/);
    expect(await server.ended).toMatchObject({ kind: "failed", failure: { status: "peer_missing" } });
    expect(reducer.aborted).toBe(true);
    expect(reducer.calls.length).toBe(2); // the census and round 0; round 1 never went out
    ask(a, { round: 1 }); // asked again: the job is over
    expect(await a.c.next()).toMatchObject({ status: "peer_missing" });
  });

  test("a trainer that disconnects during the network round: its sibling's round fails naming it", async () => {
    await start();
    const [a, b] = await pair();
    reducer.delayMs = 200;
    ask(a, { round: 0 });
    ask(b, { round: 0 });
    await Bun.sleep(50);
    b.c.close(); // mid-round (the census is on the stand-in's wire)
    const r = await a.c.next();
    expect(r).toMatchObject({ status: "peer_missing", message: expect.stringMatching(/trainer pid \d+ \(gpu1\) on this node disconnected without saying bye/) });
    expect(reducer.aborted).toBe(true);
  });

  test("bye: while one trainer of the node has left, the other's rounds are refused and nobody joins; once all left, the next ones continue the job", async () => {
    await start();
    const [a, b] = await pair({ world: 4 });
    ask(a, { round: 0 });
    ask(b, { round: 0 });
    await a.c.next();
    await b.c.next();
    expect(await a.c.ask({ type: "bye", seq: 10 })).toMatchObject({ status: "ok" });
    ask(b, { round: 1 });
    const r = await b.c.next();
    expect(r).toMatchObject({ status: "bad_request", message: expect.stringMatching(/trainer pid \d+ \(gpu0\) left this node \(bye\) after round 0: round 1 would miss its gradient/) });
    const late = await connect();
    expect(await late.hello({ local_size: 2 })).toMatchObject({ status: "busy", message: expect.stringMatching(/left this node \(bye\) after round 0 and pid \d+ \(gpu1\) still here/) });
    expect(await b.c.ask({ type: "bye", seq: 11 })).toMatchObject({ status: "ok" });
    await Bun.sleep(20);
    expect(server.trainers.connected).toEqual([]);
    // the next two: the job goes on, no second census; a local_size unlike the census' is refused
    const odd = await connect();
    expect(await odd.hello({ local_size: 3 })).toMatchObject({ status: "bad_request", message: expect.stringMatching(/this node serves 2 trainers \(since the job's first round\)/) });
    const [c, d] = await pair();
    ask(c, { round: 0 });
    ask(d, { round: 0 });
    for (const x of [await c.c.next(), await d.c.next()]) expect(x).toMatchObject({ status: "ok", world: 4 });
    expect(reducer.calls.map((x) => x.n)).toEqual([1, 4, 4]);
    // one of them leaving while the other waits: the waiting one hears why at once
    ask(c, { round: 1 });
    await Bun.sleep(20);
    expect(await d.c.ask({ type: "bye", seq: 12 })).toMatchObject({ status: "ok" });
    expect(await c.c.next()).toMatchObject({ status: "bad_request", message: expect.stringMatching(/left this node \(bye\) after round 0 while this trainer waits for it/) });
    expect(reducer.aborted).toBe(false);
  });

  test("the census: trainers saying another world than the job's trainer count fail the first round, and the job ends with the peers told", async () => {
    await start();
    const [a, b] = await pair({ world: 3 });
    ask(a, { round: 0 });
    ask(b, { round: 0 });
    for (const r of [await a.c.next(), await b.c.next()]) {
      expect(r).toMatchObject({ status: "round_failed", hint: expect.stringMatching(/local_size = the trainers on its host/) });
      expect(r!.message).toMatch(/the job has 4 trainers \(the census of its first round: 2 nodes, 2 on this one\), but pid \d+ \(gpu0\) says world 3/);
    }
    expect(await server.ended).toMatchObject({ kind: "failed", failure: { status: "round_failed" } });
    expect(reducer.aborted).toBe(true);
    expect(reducer.calls).toEqual([{ n: 1, op: "sum" }]);
  });

  test("a trainer that disconnects without bye ends the job: peers told (abort), buffers unmapped after the round in flight", async () => {
    await start();
    reducer.delayMs = 200;
    const c = await connect();
    await c.hello();
    const path = sharedFile("drop", new Float32Array(256));
    files.push(path);
    const reg = await c.ask({ type: "register", seq: 1, path, bytes: 1024 });
    c.send({ type: "allreduce", seq: 2, buffer: reg.buffer, count: 256, round: 0 });
    await Bun.sleep(50);
    c.close(); // mid-round
    const end = await server.ended;
    expect(end).toMatchObject({ kind: "failed", failure: { status: "peer_missing" } });
    expect(end.kind === "failed" && end.failure.message).toMatch(/trainer pid \d+ \(test\) on this node disconnected without saying bye, after round 0/);
    expect(reducer.aborted).toBe(true);
    expect(mapped(path)).toBe(true); // the round still runs on it
    await Bun.sleep(250);
    expect(mapped(path)).toBe(false);
    const d = await connect();
    expect(await d.hello()).toMatchObject({ status: "peer_missing", message: expect.stringMatching(/this node's job failed/) });
  });

  test("a failed round reaches the client as a status naming the members; the job is over", async () => {
    await start();
    const c = await connect();
    await c.hello();
    const path = sharedFile("fail", new Float32Array(16));
    files.push(path);
    const reg = await c.ask({ type: "register", seq: 1, path, bytes: 64 });
    reducer.failWith = new RoundError("round 12", "rank 1 (10.0.0.2) left the job before finishing this round", [1], "restart the job");
    const r = await c.ask({ type: "allreduce", seq: 2, buffer: reg.buffer, count: 16, round: 0 });
    expect(r).toMatchObject({ status: "peer_missing", missing: [1], hint: "restart the job", message: expect.stringMatching(/rank 1 \(10\.0\.0\.2\) left the job/) });
    expect(await server.ended).toMatchObject({ kind: "failed" });
    expect(reducer.aborted).toBe(false); // the collective failed by itself: serveNode leaves it once the trainer is gone
    expect(await c.ask({ type: "allreduce", seq: 3, buffer: reg.buffer, count: 16, round: 1 })).toMatchObject({ status: "peer_missing" });
  });

  test("stop(): the client is told, its next request answered shutting_down; close() removes the socket", async () => {
    await start();
    const c = await connect();
    await c.hello();
    server.stop("SIGTERM");
    expect(await c.next()).toMatchObject({ type: "shutdown", status: "shutting_down", message: "node shutting down: SIGTERM" });
    expect(await c.ask({ type: "allreduce", seq: 1, buffer: 1, count: 0, round: 0 })).toMatchObject({ status: "bad_request" });
    expect(await server.ended).toEqual({ kind: "stopped", why: "SIGTERM" });
    await server.close();
    expect(existsSync(sockPath())).toBe(false);
    expect(await c.next()).toBeNull();
  });

  test("a live server on the path is not replaced; a stale socket file is", async () => {
    await start();
    const other = LocalServer.listen({ socketPath: sockPath(), reducer: new FakeReducer() });
    await expect(other).rejects.toThrow(/another node already serves/);
    await server.close();
    // a stale socket: a server that died without removing it
    const bound = Bun.spawnSync(["python3", "-c", `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(sockPath())})`]);
    expect(bound.exitCode).toBe(0);
    expect(existsSync(sockPath())).toBe(true);
    await start();
    expect(await (await connect()).hello()).toMatchObject({ status: "ok" });
  });

  test("the Python client (standard library only): allreduce of array('f'), errors as exceptions, a version mismatch refused", async () => {
    await start();
    const script = `
import array, sys, json
sys.path.insert(0, ${JSON.stringify(PY_CLIENT)})
import ainftp
c = ainftp.connect(socket=${JSON.stringify(sockPath())}, timeout=5)
out = {"rank": c.rank, "size": c.size, "job": c.job}
x = array.array("f", [1.5, -2.0, 3.25])
ainftp.allreduce(x)
out["sum"] = list(x)
big = array.array("f", range(600000))   # grows the shared buffer past 1 MiB
ainftp.allreduce(big)
out["big"] = [big[0], big[1], big[599999]]
try:
    ainftp.allreduce(array.array("d", [1.0]))
except TypeError as e:
    out["typeerror"] = str(e)
try:
    c2 = ainftp.client_mod.connect(socket=${JSON.stringify(sockPath())}, timeout=5)
except ainftp.NodeBusy as e:
    out["busy"] = e.status
import ainftp.session as cm
cm.VERSION = 99
try:
    cm.connect(socket=${JSON.stringify(sockPath())}, timeout=5)
except ainftp.VersionMismatch as e:
    out["mismatch"] = str(e)
import os
out["leftovers"] = [f for f in os.listdir("/dev/shm") if f.startswith("ainftp-%d-%d-" % (c.job, os.getpid()))]
ainftp.close()
print(json.dumps(out))
`.replace("ainftp.client_mod.connect", "__import__('ainftp.session').session.connect");
    const p = Bun.spawn(["python3", "-c", script], { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...PY_ENV } });
    const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
    expect({ code: await p.exited, err }).toEqual({ code: 0, err: "" });
    const r = JSON.parse(out);
    expect(r).toMatchObject({ rank: 0, size: 2, job: 7, sum: [3, -4, 6.5], big: [0, 2, 1199998], busy: "busy", leftovers: [] });
    expect(r.typeerror).toMatch(/float32/);
    expect(r.mismatch).toMatch(/client speaks ainftp local protocol version 99, this node speaks version 3/);
    await Bun.sleep(20);
    expect(server.trainers.connected).toEqual([]); // it said bye
    expect(reducer.aborted).toBe(false);
  });

  test("two Python clients share the node (local_size 2): one round over the network, the mean over the job's 4 trainers in both", async () => {
    await start();
    const script = (i: number) => `
import array, sys, json
sys.path.insert(0, ${JSON.stringify(PY_CLIENT)})
import ainftp
c = ainftp.connect(socket=${JSON.stringify(sockPath())}, timeout=5, local_size=2, local_rank=${i}, world=4, name="gpu${i}")
x = array.array("f", [${i + 1}.0, ${10 * (i + 1)}.0])
ainftp.allreduce(x, op="mean")
print(json.dumps({"x": list(x), "world": c.world, "local_size": c.local_size}))
ainftp.close()
`;
    const runs = [0, 1].map((i) => Bun.spawn(["python3", "-c", script(i)], { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...PY_ENV } }));
    const outs = await Promise.all(runs.map(async (p) => {
      const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
      expect({ code: await p.exited, err }).toEqual({ code: 0, err: "" });
      return JSON.parse(out);
    }));
    // ([1, 10] + [2, 20]) on each of the stand-in's 2 nodes, over 4 trainers
    for (const o of outs) expect(o).toEqual({ x: [1.5, 15], world: 4, local_size: 2 });
    expect(reducer.calls).toEqual([{ n: 1, op: "sum" }, { n: 2, op: "mean" }]);
    await Bun.sleep(20);
    expect(server.trainers.connected).toEqual([]);
  });
});

describe("the Python client's own tests (a stand-in node in Python)", () => {
  test("buffers, CPU tensors (and CUDA ones where there is a GPU), the DDP hook's future", async () => {
    const py = python ?? "python3";
    const p = Bun.spawn([py, "-m", "unittest", "discover", "-s", join(PY_CLIENT, "tests")], { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...PY_ENV } });
    const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
    if ((await p.exited) !== 0) throw new Error(`${py} -m unittest failed:\n${out}${err}`);
    expect(err).toMatch(/\nOK/);
    if (!python) console.log("[local] the Python client's torch tests were skipped: no python3 that imports torch");
  }, 60_000);
});

// ---- the CLI ---------------------------------------------------------------------------------

describe("ainftp swarm --serve (parsing, in-process)", () => {
  async function cli(argv: string[]) {
    const c = { out: "", err: "" };
    const io: IO = { out: (t) => void (c.out += t), err: (t) => void (c.err += t), tty: false };
    return { code: await run(argv, io), ...c };
  }
  const base = ["swarm", "--iface", "eth0", "--peers", "10.0.0.1,10.0.0.2", "--rank", "0"];

  test("--help names --serve, --socket and --round-size", async () => {
    const r = await cli(["swarm", "--help"]);
    for (const o of ["--serve", "--socket <path>", "/run/ainftp/<job>.sock", "--round-size <size>", "ainftp.connect(job=7)"]) expect(r.out).toContain(o);
  });

  test("--serve excludes --synthetic; --socket and --round-size need --serve; neither mode says what to give", async () => {
    const both = await cli([...base, "--serve", "--synthetic", "1MiB"]);
    expect(both.code).toBe(1);
    expect(both.err).toContain("--serve and --synthetic exclude each other");
    const lone = await cli([...base, "--socket", "/tmp/x.sock"]);
    expect(lone.code).toBe(1);
    expect(lone.err).toContain("--socket and --round-size go with --serve");
    const none = await cli(base);
    expect(none.code).toBe(1);
    expect(none.err).toContain("give --synthetic SIZE or --serve");
  });
});

// ---- 4 namespaces: dist/ainftp swarm --serve and examples/ddp_train.py ----------------------------------

type Proc = Bun.Subprocess<"pipe", "pipe", "pipe">;

interface Exit {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

/** Waits for p, killing it after timeoutMs; collects its output. */
async function exited(p: Proc, t0: number, timeoutMs: number): Promise<Exit> {
  let timedOut = false;
  const timer = setTimeout(() => ((timedOut = true), p.kill(9)), Math.max(0, timeoutMs - (performance.now() - t0)));
  const [stdout, stderr] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  const code = await p.exited;
  clearTimeout(timer);
  return { code, stdout, stderr, ms: performance.now() - t0, timedOut };
}

interface TrainReport {
  rank: number;
  world: number;
  hook: string;
  final_loss: number;
  mean_step_ms: number;
  mean_allreduce_ms: number | null;
}

describe.skipIf(skipWhy !== null)("trainers in namespaces: swarm --serve + ddp_train.py (DDP, Gloo process group)", () => {
  const NODES = ["t0", "t1", "t2", "t3"];
  const JOB = 7;
  let lab: Lab;
  let gloPort = 29600;
  const procs = new Set<Proc>();
  const notes: string[] = [];
  const sock = (n: string) => join(lab.tmp, `${n}.sock`);
  const peersOf = (names: string[]) => names.map((n) => lab.node(n).addr).join(",");
  const track = (p: Proc) => (procs.add(p), p.exited.then(() => procs.delete(p)), p);

  beforeAll(() => {
    ensureBuilt();
    lab = createLab("local", NODES, { link: "bridge", subnet: "10.213.88" });
  });
  afterEach(async () => {
    for (const p of procs) p.kill(9);
    await Promise.all([...procs].map((p) => p.exited));
    for (const n of NODES) if (lab && existsSync(lab.pinDir(n, "eth0"))) lab.ainftp(n, ["detach", "eth0"]);
  });
  afterAll(() => {
    lab?.destroy();
    if (notes.length) console.log("[local] measured\n" + notes.map((n) => "  " + n).join("\n"));
  });

  /** Starts a serving node in each of `names` and waits for their sockets
   * (they appear once every member is up). */
  const startNodes = async (names = NODES) => {
    const nodes = names.map((n, i) => track(lab.spawn(n, [BIN, "swarm", "--iface", "eth0", "--peers", peersOf(names), "--rank", String(i), "--job", String(JOB),
      "--serve", "--socket", sock(n), "--round-size", "1MiB", "--json"])));
    const up = await until(() => names.every((n) => existsSync(sock(n))) || nodes.some((p) => p.exitCode !== null), 20_000);
    if (!up || nodes.some((p) => p.exitCode !== null)) {
      for (const p of nodes) p.kill(9);
      const outs = await Promise.all(nodes.map((p) => exited(p, performance.now(), 5000)));
      throw new Error(`the nodes did not come up:\n${outs.map((o, i) => `node ${i}: code ${o.code}\n${o.stderr}${o.stdout}`).join("\n")}`);
    }
    return nodes;
  };

  /** `perNode` trainers in each of `names` (DDP ranks node by node, as torchrun numbers them). */
  const startTrainers = (hook: string, steps: number, names = NODES, perNode = 1) => {
    const port = gloPort++;
    return names.flatMap((n, i) => Array.from({ length: perNode }, (_, j) => track(lab.spawn(n,
      [python!, EXAMPLE, "--hook", hook, "--steps", String(steps), "--job", String(JOB), "--socket", sock(n)], {
        env: {
          ...PY_ENV, RANK: String(i * perNode + j), WORLD_SIZE: String(names.length * perNode), LOCAL_RANK: String(j), LOCAL_WORLD_SIZE: String(perNode),
          MASTER_ADDR: lab.node(names[0]).addr, MASTER_PORT: String(port), GLOO_SOCKET_IFNAME: "eth0",
        },
      }))));
  };

  const trainReports = (runs: Exit[]): TrainReport[] =>
    runs.map((r, i) => {
      if (r.code !== 0) throw new Error(`trainer ${i} exited ${r.code}${r.timedOut ? " (timed out)" : ""}:\n${r.stderr.slice(-3000)}\n${r.stdout.slice(-1000)}`);
      return JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    });

  const fmt = (x: number | null) => (x === null ? "-" : x.toFixed(2));

  test("2 nodes × 2 trainers (DDP world 4): the ainftp hook and plain Gloo with 4 processes train to the same loss (< 1%); every rank ends with the same model; SIGTERM stops the nodes cleanly", async () => {
    const PAIR = ["t0", "t1"];
    const t0 = performance.now();
    const nodes = await startNodes(PAIR);
    const STEPS = 30;
    const hooked = trainReports(await Promise.all(startTrainers("ainftp", STEPS, PAIR, 2).map((p) => exited(p, performance.now(), 45_000))));
    const t1 = performance.now();
    const gloo = trainReports(await Promise.all(startTrainers("none", STEPS, PAIR, 2).map((p) => exited(p, performance.now(), 45_000))));
    const t2 = performance.now();
    // bit-identical results everywhere: every rank's model, so its loss, is the same
    for (const r of hooked) expect(r).toMatchObject({ hook: "ainftp", world: 4, final_loss: hooked[0].final_loss });
    for (const r of gloo) expect(r.final_loss).toBeCloseTo(gloo[0].final_loss, 5);
    const rel = Math.abs(hooked[0].final_loss - gloo[0].final_loss) / gloo[0].final_loss;
    expect(rel).toBeLessThan(0.01);
    const mean = (rs: TrainReport[], k: "mean_step_ms" | "mean_allreduce_ms") => rs.reduce((s, r) => s + (r[k] ?? 0), 0) / rs.length;
    notes.push(
      `2 namespaces × 2 trainers, ${hooked[0].world} ranks, MLP ${STEPS} steps: final loss ainftp ${hooked[0].final_loss.toFixed(6)} vs gloo ${gloo[0].final_loss.toFixed(6)} (${(rel * 100).toFixed(4)}%)`,
      `  per step (mean of ranks): ainftp hook ${fmt(mean(hooked, "mean_step_ms"))} ms, all-reduce inside it ${fmt(mean(hooked, "mean_allreduce_ms"))} ms; ` +
        `gloo ${fmt(mean(gloo, "mean_step_ms"))} ms, all-reduce ${fmt(mean(gloo, "mean_allreduce_ms"))} ms`,
      `  ranks (step/all-reduce ms): ainftp ${hooked.map((r) => `${fmt(r.mean_step_ms)}/${fmt(r.mean_allreduce_ms)}`).join(" ")}; gloo ${gloo.map((r) => `${fmt(r.mean_step_ms)}/${fmt(r.mean_allreduce_ms)}`).join(" ")}`,
      `  wall: nodes + ainftp run ${((t1 - t0) / 1000).toFixed(1)} s, gloo run ${((t2 - t1) / 1000).toFixed(1)} s`,
    );
    // the nodes outlived their trainers (who said bye); SIGTERM ends them: report, socket gone, program detached
    for (const p of nodes) p.kill("SIGTERM");
    const ends = await Promise.all(nodes.map((p) => exited(p, performance.now(), 10_000)));
    ends.forEach((e, i) => {
      if (e.code !== 0) throw new Error(`node ${i} exited ${e.code}:\n${e.stderr}`);
      expect(JSON.parse(e.stdout)).toMatchObject({ rank: i, peers: 2, job: JOB, clients: 2, local_size: 2, world: 4, stopped_by: "SIGTERM", attached_by_us: true });
      expect(JSON.parse(e.stdout).allreduces).toBeGreaterThanOrEqual(STEPS);
      expect(existsSync(sock(PAIR[i]))).toBe(false);
      expect(lab.linkInfo(PAIR[i], "eth0").xdp ?? null).toBeNull();
    });
  }, 120_000);

  test("4 nodes × 1 trainer, one killed mid-step: the others fail within 15 s naming it, not hang; every node exits saying why", async () => {
    const nodes = await startNodes();
    const trainers = startTrainers("ainftp", 100_000);
    const victim = trainers[3];
    const reader = victim.stdout.getReader();
    let seen = "";
    const dec = new TextDecoder();
    while (!/step 5 /.test(seen)) {
      const { value, done } = await Promise.race([reader.read(), Bun.sleep(60_000).then(() => ({ value: undefined, done: true }))]);
      if (done) throw new Error(`trainer 3 ended before step 5: ${seen}${await new Response(victim.stderr).text()}`);
      seen += dec.decode(value);
    }
    victim.kill(9);
    const killedAt = performance.now();
    const others = await Promise.all(trainers.slice(0, 3).map((p) => exited(p, killedAt, 30_000)));
    others.forEach((r, i) => {
      expect({ rank: i, timedOut: r.timedOut, code: r.code }).toEqual({ rank: i, timedOut: false, code: 3 });
      expect(r.stderr).toMatch(/failed: round \d+: rank 3 \(10\.213\.88\.4\)[^\n]* left the job/);
      expect(r.ms).toBeLessThan(15_000);
    });
    const worst = Math.max(...others.map((r) => r.ms));
    const ends = await Promise.all(nodes.map((p) => exited(p, killedAt, 30_000)));
    ends.forEach((e, i) => {
      expect({ node: i, code: e.code, timedOut: e.timedOut }).toEqual({ node: i, code: 1, timedOut: false });
      expect(e.stderr).toMatch(i === 3 ? /trainer pid \d+ \(ddp_train rank 3\) on this node disconnected without saying bye/ : /rank 3 \(10\.213\.88\.4\)[^\n]* left the job/);
      expect(existsSync(sock(NODES[i]))).toBe(false);
      expect(lab.linkInfo(NODES[i], "eth0").xdp ?? null).toBeNull();
    });
    notes.push(`trainer 3 killed after step 5: the other trainers failed ${others.map((r) => (r.ms / 1000).toFixed(2)).join(", ")} s later (worst ${(worst / 1000).toFixed(2)} s); nodes exited by ${(Math.max(...ends.map((e) => e.ms)) / 1000).toFixed(2)} s`);
  }, 120_000);
});
