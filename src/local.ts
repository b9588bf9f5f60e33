// The local interface of a node (`ainftp swarm --serve`): trainers on this
// host connect to a Unix socket, register shared buffers (files in /dev/shm
// or on hugetlbfs that both sides map) and ask for all-reduces of ranges of
// them. The socket carries small length-prefixed JSON control messages only;
// gradient bytes stay in the shared pages, which the node hands to the
// collective as Float32Array views without a copy.
//
// K trainers per node (one per GPU, `local_size` in their hello): a round
// starts once all K asked for it (same round id, count and op), the node sums
// their buffers in place, runs one collective all-reduce and copies the result
// into each. The round order is the trainers' own, the same on every node, so
// nothing has to be agreed across nodes but the job's trainer count, which the
// first round's census (an all-reduce of K) gives every node.
//
// The job's bit width (16, 8 or 4 per coordinate on the wire) is the
// communicator's: the hello answer names it, a trainer that asks for another
// is refused. An all-reduce may ask for the residual of this node's
// quantization (x minus what its contribution dequantizes to), written into
// another range of a registered buffer: the trainer's error feedback.
// Protocol, version LOCAL_PROTOCOL_VERSION: clients/python/README.md.
import { lstatSync, mkdirSync, rmSync, statfsSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { basename, dirname, isAbsolute, join, normalize } from "node:path";
import { BIT_WIDTHS } from "./abi.ts";
import { Arena } from "./arena.ts";
import { RoundError, type Communicator } from "./collective.ts";
import { AinftpError } from "./errors.ts";
import { bringUp, type JobOptions, type Node } from "./node/bringup.ts";
import { formatSize } from "./units.ts";

export const LOCAL_PROTOCOL = "ainftp-local";
export const LOCAL_PROTOCOL_VERSION = 3;
/** Floats of the census below 16 bits: K in each, the mean of their sums
 * read (quantization is unbiased, its error in the mean shrinks as 1/sqrt(n)). */
export const CENSUS_FLOATS_QUANTIZED = 4096;
/** Largest frame body; every message is far smaller. */
export const MAX_FRAME = 64 * 1024;
/** Buffers one client may have registered at once. */
export const MAX_BUFFERS = 64;
/** Largest buffer one registration may map. */
export const MAX_BUFFER_BYTES = 16 * 2 ** 30;
/** Most trainers one node serves at once (`local_size`). */
export const MAX_LOCAL_SIZE = 64;

/** What a reply's `status` says. "quarantined" is reserved (the Sentry, later). */
export const STATUSES = [
  "ok", "bad_request", "version_mismatch", "busy", "peer_missing", "round_failed", "deadline_exceeded",
  "quarantined", "shutting_down", "internal",
] as const;
export type Status = (typeof STATUSES)[number];

const TMPFS_MAGIC = 0x01021994;
const HUGETLBFS_MAGIC = 0x958458f6;
const SHARED_NAME = /^ainftp-[A-Za-z0-9._-]{1,200}$/;

/** Where `ainftp swarm --serve` listens by default. */
export function defaultSocketPath(job = 0): string {
  return `/run/ainftp/${job}.sock`;
}

// ---- framing ---------------------------------------------------------------------------

export type Message = Record<string, unknown> & { type: string };

/** A frame the peer sent is not a protocol frame. */
export class FrameError extends Error {}

/** One frame: the body's length (u32, little-endian), then the body, a JSON object in UTF-8. */
export function encodeFrame(msg: Message): Uint8Array {
  const body = Buffer.from(JSON.stringify(msg), "utf8");
  if (body.length > MAX_FRAME) throw new FrameError(`a ${msg.type} message of ${body.length} bytes is over the ${MAX_FRAME}-byte frame limit`);
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32LE(body.length, 0);
  body.copy(out, 4);
  return out;
}

/** Turns a byte stream into messages; throws FrameError on anything that is not a frame. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Uint8Array): Message[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : Buffer.from(chunk);
    const out: Message[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (len === 0 || len > MAX_FRAME) throw new FrameError(`frame of ${len} bytes (1..${MAX_FRAME}): not an ainftp local-protocol client`);
      if (this.buf.length < 4 + len) break;
      const body = this.buf.subarray(4, 4 + len).toString("utf8");
      this.buf = this.buf.subarray(4 + len);
      let msg: unknown;
      try {
        msg = JSON.parse(body);
      } catch {
        throw new FrameError("a frame body is not JSON");
      }
      if (typeof msg !== "object" || msg === null || Array.isArray(msg) || typeof (msg as Message).type !== "string")
        throw new FrameError('a frame body is not a JSON object with a string "type"');
      out.push(msg as Message);
    }
    return out;
  }
}

// ---- what the server reduces with ------------------------------------------------------------

/** The part of Communicator the server uses (tests give a stand-in). */
export interface Reducer {
  readonly rank: number;
  readonly size: number;
  readonly job: number;
  readonly peers: readonly string[];
  readonly chunkElems: number;
  readonly capacity: number;
  /** Bits per coordinate on the wire (absent: 16). */
  readonly bits?: number;
  /** `residual`: filled with this node's own quantization error, x minus
   * what its contribution dequantizes to (left as given where the
   * communicator does not report one). */
  allreduce(x: Float32Array, o: { op?: "sum" | "mean"; residual?: Float32Array }): Promise<unknown>;
  /** Leave now, telling the peers (a round in flight fails everywhere). */
  abort(): void;
}

/** A failure a reply carries. */
export interface Failure {
  status: Status;
  message: string;
  hint?: string;
  /** Ranks the collective named. */
  missing?: number[];
}

/** Maps an error of the collective to the status a client sees. */
export function classify(e: unknown): Failure {
  if (e instanceof RoundError) {
    const status: Status = /left the job/.test(e.message) ? "peer_missing" : /not complete after|no answer from/.test(e.message) ? "deadline_exceeded" : "round_failed";
    return { status, message: e.message, hint: e.hint || undefined, missing: [...e.missingRanks] };
  }
  if (e instanceof AinftpError) return { status: "round_failed", message: e.message, hint: e.hint || undefined };
  return { status: "internal", message: e instanceof Error ? e.message : String(e) };
}

// ---- shared buffers ---------------------------------------------------------------------

/** Why path cannot be a shared buffer of `bytes` bytes, or null when it can. */
export function checkSharedFile(path: string, bytes: number): string | null {
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % 4 !== 0 || bytes > MAX_BUFFER_BYTES)
    return `bytes ${bytes} is not a positive multiple of 4 up to ${formatSize(MAX_BUFFER_BYTES)}`;
  if (!isAbsolute(path) || normalize(path) !== path) return `path ${JSON.stringify(path)} is not an absolute, normalized path`;
  if (!SHARED_NAME.test(basename(path))) return `the file name of ${path} does not match ${SHARED_NAME.source}`;
  let fsType: number;
  try {
    fsType = statfsSync(dirname(path)).type;
  } catch {
    return `cannot stat the file system of ${dirname(path)}`;
  }
  if (fsType !== TMPFS_MAGIC && fsType !== HUGETLBFS_MAGIC) return `${dirname(path)} is not on tmpfs (/dev/shm) or hugetlbfs`;
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return `${path} does not exist`;
  }
  if (!st.isFile()) return `${path} is not a regular file`;
  if (st.size < bytes) return `${path} holds ${st.size} bytes, fewer than the ${bytes} registered`;
  return null;
}

/** A client's file, mapped shared; `view` is its floats, no copy. */
class SharedBuffer {
  readonly view: Float32Array;
  /** Rounds in flight on it: unmapped only when none is. */
  busy = 0;
  private released = false;

  constructor(readonly id: number, readonly path: string, readonly bytes: number, private readonly arena: Arena) {
    this.view = arena.alloc(bytes, 64).f32();
  }

  /** Unmaps once no round uses it (now, or when the last one ends). */
  release(): void {
    this.released = true;
    if (this.busy === 0 && !this.arena.closed) this.arena.close();
  }

  settle(): void {
    this.busy--;
    if (this.released) this.release();
  }
}

// ---- the server -------------------------------------------------------------------------

interface Session {
  sock: Socket;
  decoder: FrameDecoder;
  hello: boolean;
  pid: number | null;
  name: string;
  /** Its place among this host's trainers (hello's local_rank): the order their buffers are summed in. */
  localRank: number | null;
  /** The job's trainer count it expects (hello's world), checked by the census. */
  world: number | null;
  /** When it joined, among this node's trainers: the summing order after local_rank. */
  joined: number;
  buffers: Map<number, SharedBuffer>;
  queue: Message[];
  working: boolean;
  /** The round id the next all-reduce must carry (null: any, at first). */
  nextRound: number | null;
  bye: boolean;
  /** Refused: whatever else it sends is ignored until it hangs up. */
  refused: boolean;
  closed: boolean;
}

/** One trainer's all-reduce, waiting for the other trainers of this host to ask for the same. */
interface Submission {
  s: Session;
  b: SharedBuffer;
  view: Float32Array;
  round: number;
  count: number;
  op: "sum" | "mean";
  /** Where this trainer wants the residual of the node's quantization (null: not asked). */
  residual: Float32Array | null;
  /** performance.now() when it came. */
  at: number;
  answer: (reply: Record<string, unknown>) => void;
}

export interface ServerStats {
  /** Trainers accepted, all told. */
  clients: number;
  /** Rounds reduced over the network (each combines this node's trainers). */
  allreduces: number;
  elements: number;
  /** Summed node-side time of the all-reduces. */
  ms: number;
}

/** How the server's job ended. */
export type ServeEnd = { kind: "failed"; failure: Failure } | { kind: "stopped"; why: string };

export interface LocalServerOptions {
  socketPath: string;
  reducer: Reducer;
  /** Lines for the operator (connections, failures). */
  log?: (line: string) => void;
}

/** Serves the local protocol on a Unix socket for one Reducer. */
export class LocalServer implements Disposable {
  readonly stats: ServerStats = { clients: 0, allreduces: 0, elements: 0, ms: 0 };
  /** Resolves when this node's job is over: a failure, or stop(). */
  readonly ended: Promise<ServeEnd>;
  private end!: (e: ServeEnd) => void;
  private sessions = new Set<Session>();
  /** This host's trainers in the job now: said hello, neither bye nor gone. */
  private members: Session[] = [];
  /** K, the trainers each round combines: the first hello's local_size, for good once the census ran. */
  private localSize: number | null = null;
  /** The job's trainers over every node: the census (first round) sums every node's K. */
  private world: number | null = null;
  /** All-reduces asked for and waiting for the rest of this host's trainers. */
  private pending: Submission[] = [];
  /** Set while some trainers said bye and others are still here: no new rounds, no new trainers. */
  private leaving: string | null = null;
  private joins = 0;
  private failure: Failure | null = null;
  private stopping: string | null = null;
  private inflight = 0;
  private nextBuffer = 1;
  private closed = false;
  private log: (line: string) => void;

  private constructor(private readonly server: Server, readonly socketPath: string, private readonly reducer: Reducer, log?: (line: string) => void) {
    this.ended = new Promise((resolve) => (this.end = resolve));
    this.log = log ?? (() => {});
    server.on("connection", (sock) => this.accept(sock));
  }

  /** Listens on socketPath (its directory created 0700 if missing). A live
   * server already there is an error; a stale socket file is replaced. */
  static async listen(o: LocalServerOptions): Promise<LocalServer> {
    const op = `serve on ${o.socketPath}`;
    await claimSocketPath(op, o.socketPath);
    const server = createServer({ allowHalfOpen: false });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (e: NodeJS.ErrnoException) =>
        reject(new AinftpError(op, `cannot listen: ${e.message}`, { errno: errnoOf(e), hint: "give another --socket path, or check the directory's permissions" })));
      server.listen(o.socketPath, () => resolve());
    });
    return new LocalServer(server, o.socketPath, o.reducer, o.log);
  }

  /** The trainers served now, and the counts: K per round here (null before
   * the first hello), the job's total (null before the first round's census). */
  get trainers(): { connected: { pid: number | null; name: string }[]; localSize: number | null; world: number | null } {
    return { connected: this.members.map((s) => ({ pid: s.pid, name: s.name })), localSize: this.localSize, world: this.world };
  }

  /** Ends the job on this node: tells the clients (a round in flight, or
   * waiting for its other trainers, fails with "shutting_down") and resolves `ended`. */
  stop(why: string): void {
    if (this.stopping || this.failure) return;
    this.stopping = why;
    if (this.inflight > 0) this.reducer.abort(); // the round cannot finish: peers learn it now
    for (const p of this.pending.splice(0)) this.answer(p, { status: "shutting_down", message: `node shutting down: ${why}` });
    for (const s of this.sessions) if (s.hello) this.send(s, { type: "shutdown", status: "shutting_down", message: `node shutting down: ${why}` });
    this.end({ kind: "stopped", why });
  }

  /** Bits per coordinate the job runs at (the communicator's). */
  get bits(): number {
    return this.reducer.bits ?? 16;
  }

  /** Whether a round is running on the collective now. */
  get busy(): boolean {
    return this.inflight > 0;
  }

  /** Closes every connection and the listening socket, unmaps every buffer
   * (once no round uses it) and removes the socket file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // the answer to a request in progress goes out before the hang-up (a
    // round cut short by abort() notices within a retransmission interval)
    const until = performance.now() + 1000;
    while ([...this.sessions].some((s) => s.working && !s.closed) && performance.now() < until) await Bun.sleep(5);
    const gone = [...this.sessions].map((s) => new Promise<void>((resolve) => {
      if (s.closed) return resolve();
      s.sock.once("close", () => resolve());
      s.sock.end();
      setTimeout(() => {
        s.sock.destroy();
        resolve();
      }, 500);
    }));
    await Promise.all(gone);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions) this.drop(s);
    rmSync(this.socketPath, { force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  [Symbol.dispose](): void {
    void this.close();
  }

  // ---- connections ------------------------------------------------------------------------

  private accept(sock: Socket): void {
    if (this.closed) return void sock.destroy();
    const s: Session = {
      sock, decoder: new FrameDecoder(), hello: false, pid: null, name: "", localRank: null, world: null, joined: 0, buffers: new Map(),
      queue: [], working: false, nextRound: null, bye: false, refused: false, closed: false,
    };
    this.sessions.add(s);
    sock.on("data", (chunk: Buffer) => {
      if (s.refused) return;
      let msgs: Message[];
      try {
        msgs = s.decoder.push(chunk);
      } catch (e) {
        this.refuse(s, "error", "bad_request", (e as Error).message);
        return;
      }
      for (const m of msgs) this.receive(s, m);
    });
    sock.on("error", () => {}); // a reset is a disconnect; "close" follows
    sock.on("close", () => this.disconnected(s));
  }

  private send(s: Session, msg: Message): void {
    if (!s.closed && !s.sock.destroyed && !s.sock.writableEnded) s.sock.write(encodeFrame(msg));
  }

  /** Answers with an error and hangs up (the conversation cannot go on). */
  private refuse(s: Session, type: string, status: Status, message: string, extra: Record<string, unknown> = {}): void {
    this.send(s, { type, status, message, ...extra });
    s.refused = true;
    s.queue = [];
    s.sock.end();
  }

  private receive(s: Session, m: Message): void {
    if (s.closed || s.bye || s.refused) return;
    if (!s.hello) return this.hello(s, m);
    s.queue.push(m);
    void this.work(s);
  }

  private hello(s: Session, m: Message): void {
    const refuse = (status: Status, message: string) => this.refuse(s, "hello", status, message);
    if (m.type !== "hello") return this.refuse(s, "error", "bad_request", `the first message must be a hello, not ${JSON.stringify(m.type)}`);
    if (m.protocol !== LOCAL_PROTOCOL) return refuse("bad_request", `protocol ${JSON.stringify(m.protocol)} is not ${JSON.stringify(LOCAL_PROTOCOL)}`);
    if (m.version !== LOCAL_PROTOCOL_VERSION)
      return this.refuse(s, "hello", "version_mismatch",
        `the client speaks ainftp local protocol version ${JSON.stringify(m.version)}, this node speaks version ${LOCAL_PROTOCOL_VERSION}: use the client shipped with this ainftp release (clients/python)`,
        { version: LOCAL_PROTOCOL_VERSION });
    if (this.failure) return this.refuse(s, "hello", this.failure.status, `this node's job failed: ${this.failure.message}`, {
        ...(this.failure.hint ? { hint: this.failure.hint } : {}), ...(this.failure.missing ? { missing: this.failure.missing } : {}),
      });
    if (this.stopping) return refuse("shutting_down", `node shutting down: ${this.stopping}`);
    const localSize = m.local_size ?? 1, world = m.world ?? null, localRank = m.local_rank ?? null, bits = m.bits ?? null;
    const jobBits = this.bits;
    if (bits !== null && !(BIT_WIDTHS as readonly unknown[]).includes(bits))
      return refuse("bad_request", `"bits" ${JSON.stringify(bits)} is not one of ${BIT_WIDTHS.join(", ")} (bits per gradient coordinate on the wire)`);
    if (bits !== null && bits !== jobBits)
      return this.refuse(s, "hello", "bad_request",
        `this trainer asks for ${bits}-bit gradients, but this node's job runs at ${jobBits} bits: start the swarm with --bits ${bits} (on every node), or connect with bits=${jobBits}`,
        { bits: jobBits });
    if (!isCount(localSize) || localSize < 1 || localSize > MAX_LOCAL_SIZE)
      return refuse("bad_request", `"local_size" ${JSON.stringify(localSize)} is not an integer 1..${MAX_LOCAL_SIZE} (the trainers on this host)`);
    if (world !== null && (!isCount(world) || world < 1)) return refuse("bad_request", `"world" ${JSON.stringify(world)} is not a positive integer (the trainers in the whole job)`);
    if (localRank !== null && (!isCount(localRank) || localRank >= localSize))
      return refuse("bad_request", `"local_rank" ${JSON.stringify(localRank)} is not an integer 0..${localSize - 1} (local_size ${localSize})`);
    const fix = "every trainer gives local_size = the trainers on its host (LOCAL_WORLD_SIZE) and world = all trainers of the job (WORLD_SIZE)";
    if (this.localSize !== null && localSize !== this.localSize)
      return refuse("bad_request", `this trainer says local_size ${localSize}, but this node serves ${this.localSize} trainer${plural(this.localSize)} (${this.world !== null || !this.members.length ? "since the job's first round" : `as ${who(this.members[0])} said`}): ${fix}`);
    const said = this.members.find((x) => x.world !== null);
    const expected = this.world ?? said?.world ?? null;
    if (world !== null && expected !== null && world !== expected)
      return refuse("bad_request", `this trainer says world ${world}, but ${this.world !== null ? `the job has ${this.world} trainers (the census of its first round)` : `${who(said!)} said ${expected}`}: ${fix}`);
    if (this.leaving) return refuse("busy", `${this.leaving} and ${this.members.map(who).join(", ")} still here: a new trainer may join once all have left`);
    if (this.members.length >= localSize)
      return refuse("busy", `this node serves ${localSize} trainer${plural(localSize)} (local_size ${localSize}) and has ${localSize === 1 ? "it" : "them all"}: ${this.members.map(who).join(", ")}; ` +
        "give every trainer of this host local_size = their number (LOCAL_WORLD_SIZE), or start another job");
    const twin = localRank === null ? undefined : this.members.find((x) => x.localRank === localRank);
    if (twin) return refuse("bad_request", `local_rank ${localRank} is taken by ${who(twin)}: each trainer of a host gives its own (LOCAL_RANK)`);
    s.hello = true;
    s.pid = typeof m.pid === "number" ? m.pid : null;
    s.name = typeof m.name === "string" ? m.name.slice(0, 100) : "";
    s.localRank = localRank;
    s.world = world;
    s.joined = this.joins++;
    this.localSize = localSize;
    this.members.push(s);
    this.stats.clients++;
    this.log(`trainer connected: ${who(s)}, ${this.members.length} of ${localSize} here`);
    const r = this.reducer;
    this.send(s, {
      type: "hello", status: "ok", protocol: LOCAL_PROTOCOL, version: LOCAL_PROTOCOL_VERSION,
      job: r.job, rank: r.rank, size: r.size, peers: [...r.peers], chunk_elems: r.chunkElems,
      round_elems: r.capacity * r.chunkElems, node_pid: process.pid, local_size: localSize, world: this.world, bits: jobBits,
    });
  }

  /** Serves a session's requests one at a time, in order. */
  private async work(s: Session): Promise<void> {
    if (s.working) return;
    s.working = true;
    try {
      while (s.queue.length && !s.closed) {
        const m = s.queue.shift()!;
        const reply = await this.request(s, m);
        this.send(s, { type: m.type, seq: m.seq ?? null, ...reply });
        if (m.type === "bye" && reply.status === "ok") {
          s.bye = true;
          s.queue = [];
          this.leave(s);
          this.log(`trainer ${who(s)} left cleanly`);
          s.sock.end();
          return;
        }
      }
    } finally {
      s.working = false;
    }
  }

  private async request(s: Session, m: Message): Promise<Record<string, unknown>> {
    const bad = (message: string) => ({ status: "bad_request", message });
    switch (m.type) {
      case "register": {
        if (s.buffers.size >= MAX_BUFFERS) return bad(`${MAX_BUFFERS} buffers are registered already: unregister one first`);
        const path = m.path, bytes = m.bytes;
        if (typeof path !== "string" || typeof bytes !== "number") return bad('register needs "path" (string) and "bytes" (number)');
        const why = checkSharedFile(path, bytes);
        if (why) return bad(why);
        let arena: Arena;
        try {
          arena = Arena.open({ size: bytes, file: path, hugepages: "auto", populate: false });
        } catch (e) {
          return bad((e as Error).message);
        }
        const b = new SharedBuffer(this.nextBuffer++, path, bytes, arena);
        s.buffers.set(b.id, b);
        return { status: "ok", buffer: b.id, page_size: arena.pageSize };
      }
      case "unregister": {
        const b = s.buffers.get(m.buffer as number);
        if (!b) return bad(`no buffer ${JSON.stringify(m.buffer)} is registered`);
        s.buffers.delete(b.id);
        b.release();
        return { status: "ok" };
      }
      case "allreduce":
        return this.allreduce(s, m);
      case "bye":
        return { status: "ok" };
      default:
        return bad(`unknown request type ${JSON.stringify(m.type)} (protocol version ${LOCAL_PROTOCOL_VERSION}: hello, register, unregister, allreduce, bye)`);
    }
  }

  /** Checks one trainer's all-reduce and holds it until every trainer of
   * this host asked for the same one; the answer comes when that round is over. */
  private async allreduce(s: Session, m: Message): Promise<Record<string, unknown>> {
    const bad = (message: string) => ({ status: "bad_request", message });
    const b = s.buffers.get(m.buffer as number);
    if (!b) return bad(`no buffer ${JSON.stringify(m.buffer)} is registered`);
    const offset = m.offset ?? 0, count = m.count, op = m.op ?? "sum", round = m.round;
    if (!isCount(offset) || !isCount(count)) return bad('"offset" and "count" must be non-negative integers (float32 elements)');
    if (offset + count > b.view.length) return bad(`elements ${offset}..${offset + count} are outside buffer ${b.id} (${b.view.length} floats)`);
    if (op !== "sum" && op !== "mean") return bad(`op ${JSON.stringify(op)} is not "sum" or "mean"`);
    if (!isCount(round)) return bad('"round" must be a non-negative integer');
    const ro = m.residual_offset ?? null;
    if (ro !== null) {
      if (!isCount(ro)) return bad('"residual_offset" must be a non-negative integer (float32 elements) or absent');
      if (ro + count > b.view.length) return bad(`the residual's elements ${ro}..${ro + count} are outside buffer ${b.id} (${b.view.length} floats)`);
      if (ro < offset + count && offset < ro + count) return bad(`the residual's elements ${ro}..${ro + count} overlap the data's ${offset}..${offset + count}`);
    }
    if (s.nextRound !== null && round !== s.nextRound) return bad(`round ${round} after round ${s.nextRound - 1}: round ids go up by one`);
    if (this.failure) return failureFields(this.failure);
    if (this.stopping) return { status: "shutting_down", message: `node shutting down: ${this.stopping}` };
    if (this.leaving) return bad(`${this.leaving}: round ${round} would miss its gradient (every trainer of a host does the same all-reduces; nothing was sent to the peers)`);
    const first = this.pending[0];
    if (first && (first.round !== round || first.count !== count || first.op !== op)) {
      const message = `this node's trainers asked for different all-reduces: ${who(first.s)} round ${first.round} (${first.count} floats, ${first.op}), ` +
        `${who(s)} round ${round} (${count} floats, ${op}): every trainer of a host must ask for the same ones in the same order (nothing was sent to the peers)`;
      this.log(message);
      for (const p of this.pending.splice(0)) this.answer(p, bad(message));
      return bad(message);
    }
    b.busy++;
    const answered = new Promise<Record<string, unknown>>((answer) =>
      this.pending.push({
        s, b, view: b.view.subarray(offset, offset + count), round, count, op, at: performance.now(), answer,
        residual: ro === null ? null : b.view.subarray(ro, ro + count),
      }));
    if (this.pending.length === this.localSize) void this.reduce(this.pending.splice(0));
    return answered;
  }

  /** Answers one waiting all-reduce (its buffer may be unmapped after). */
  private answer(p: Submission, reply: Record<string, unknown>): void {
    p.b.settle();
    p.answer(reply);
  }

  /** One round for this host's trainers: their buffers summed into the first
   * (by local_rank), one all-reduce over the network, the result copied back.
   * The residual of the node's quantization is of that sum: the first trainer
   * that asked for it gets it whole, the others zeros (what they add to their
   * next gradient sums to it). */
  private async reduce(subs: Submission[]): Promise<void> {
    const t0 = performance.now();
    const { round, count, op } = subs[0];
    for (const p of subs) p.s.nextRound = round + 1;
    const order = (s: Session) => s.localRank ?? MAX_LOCAL_SIZE + s.joined;
    subs.sort((a, b) => order(a.s) - order(b.s));
    const sum = subs[0].view;
    for (let k = 1; k < subs.length; k++) addInto(sum, subs[k].view);
    const askers = subs.filter((p) => p.residual !== null);
    for (const p of askers) p.residual!.fill(0); // what stays where the reducer reports none
    let reply: Record<string, unknown>;
    this.inflight++;
    try {
      if (this.world === null) await this.census();
      // error feedback is the trainers' (HookState): serveNode opens the communicator without its own
      await this.reducer.allreduce(sum, askers.length ? { op, residual: askers[0].residual! } : { op });
      // the collective's mean is over nodes; trainers are what DDP averages over
      if (op === "mean" && this.world !== this.reducer.size) rescale(sum, this.reducer.size, this.world!);
      for (let k = 1; k < subs.length; k++) subs[k].view.set(sum);
      const ms = performance.now() - t0;
      this.stats.allreduces++;
      this.stats.elements += count;
      this.stats.ms += ms;
      reply = { status: "ok", round, ms: +ms.toFixed(3), world: this.world, bits: this.bits };
    } catch (e) {
      if (this.stopping) {
        reply = { status: "shutting_down", message: `node shutting down during round ${round}: ${this.stopping}` };
      } else {
        const census = e instanceof CensusError;
        const f = this.failure ?? (census ? e.failure : classify(e));
        this.fail(f, census); // a wrong census is ours to report: the peers stop waiting for us
        reply = failureFields(f);
      }
    } finally {
      this.inflight--;
    }
    for (const p of subs) this.answer(p, { ...reply, wait_ms: +(t0 - p.at).toFixed(3) });
  }

  /** The first round: an all-reduce of K gives every node the job's trainer
   * count (the divisor of a mean), checked against what the trainers said. */
  private async census(): Promise<void> {
    const K = this.localSize!, N = this.reducer.size, bits = this.bits;
    // int16 sums small integers exactly; 8 and 4 bits only without bias: many copies, their mean
    const n = bits === 16 ? 1 : CENSUS_FLOATS_QUANTIZED;
    const x = new Float32Array(n).fill(K);
    await this.reducer.allreduce(x, { op: "sum" });
    let acc = 0;
    for (let i = 0; i < n; i++) acc += x[i];
    const got = acc / n, total = Math.round(got);
    const hint = "give each trainer local_size = the trainers on its host (LOCAL_WORLD_SIZE) and world = the DDP world size (WORLD_SIZE), then restart the whole job";
    if (!(Math.abs(got - total) < (bits === 16 ? 1e-3 : 0.25) && total >= N))
      throw new CensusError({
        status: "round_failed", hint,
        message: `the census of the job's trainers summed to ${got}${n > 1 ? ` (the mean of ${n} sums at ${bits} bits)` : ""}, not a whole number of at least ${N} (one per node)`,
      });
    const wrong = this.members.find((s) => s.world !== null && s.world !== total);
    if (wrong)
      throw new CensusError({ status: "round_failed", message: `the job has ${total} trainers (the census of its first round: ${N} node${plural(N)}, ${K} on this one), but ${who(wrong)} says world ${wrong.world}`, hint });
    this.world = total;
    this.log(`census: ${total} trainer${plural(total)} in the job, ${K} on this node${n > 1 ? ` (the mean of ${n} sums at ${bits} bits: ${got.toFixed(4)})` : ""}`);
  }

  /** The job cannot go on here (rounds no longer line up across nodes).
   * `tellPeers`: leave the collective now, so that the peers fail their
   * round at once; not when the collective failed by itself, since an early
   * goodbye from us would make a slower peer blame us instead of the member
   * that caused it (serveNode leaves once our trainers have had the error). */
  private fail(f: Failure, tellPeers: boolean): void {
    if (this.failure) return;
    this.failure = f;
    this.log(`job failed: ${f.message}`);
    if (tellPeers) {
      try {
        this.reducer.abort();
      } catch {
        // leaving anyway
      }
    }
    for (const p of this.pending.splice(0)) this.answer(p, failureFields(f));
    this.end({ kind: "failed", failure: f });
  }

  /** Waits until no trainer is connected, or timeoutMs. */
  async clientGone(timeoutMs: number): Promise<void> {
    const until = performance.now() + timeoutMs;
    while (this.members.length && performance.now() < until) await Bun.sleep(10);
  }

  /** A trainer said bye. The last one to go opens the node for the next
   * trainers; until then the others cannot reduce without it. */
  private leave(s: Session): void {
    const i = this.members.indexOf(s);
    if (i < 0) return;
    this.members.splice(i, 1);
    if (this.members.length === 0) {
      this.leaving = null;
      if (this.world === null) this.localSize = null; // no round yet: the next trainers may say another K
      return;
    }
    this.leaving = `trainer ${who(s)} left this node (bye) after ${s.nextRound === null ? "no round" : `round ${s.nextRound - 1}`}`;
    const message = `${this.leaving} while this trainer waits for it: every trainer of a host does the same all-reduces (nothing was sent to the peers)`;
    for (const p of this.pending.splice(0)) this.answer(p, { status: "bad_request", message });
  }

  private disconnected(s: Session): void {
    if (s.closed) return;
    s.closed = true;
    s.queue = [];
    const i = this.members.indexOf(s);
    if (i >= 0) {
      this.members.splice(i, 1);
      if (!this.stopping && !this.closed) {
        // its peers on other nodes, and its siblings here, would wait for rounds that never come
        this.fail({
          status: "peer_missing",
          message: `trainer ${who(s)} on this node disconnected without saying bye${s.nextRound !== null ? `, after round ${s.nextRound - 1}` : ""}; ` +
            `the job's other members were told${this.members.length ? `, and this node's other trainers (${this.members.map(who).join(", ")})` : ""}`,
          hint: "a trainer died: restart the whole job",
        }, true);
      }
    }
    this.drop(s);
  }

  /** Unmaps a session's buffers (each when its round, if any, is over). */
  private drop(s: Session): void {
    for (const b of s.buffers.values()) b.release();
    s.buffers.clear();
    this.sessions.delete(s);
  }
}

/** The census went wrong: this node ends the job and says why. */
class CensusError extends Error {
  constructor(readonly failure: Failure) {
    super(failure.message);
  }
}

/** dst += src, in float32, element by element. */
function addInto(dst: Float32Array, src: Float32Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] += src[i];
}

/** A mean over `nodes` made a mean over `trainers`: x * nodes / trainers (one rounding). */
function rescale(x: Float32Array, nodes: number, trainers: number): void {
  for (let i = 0; i < x.length; i++) x[i] = (x[i] * nodes) / trainers;
}

/** "pid 42 (ddp_train rank 3)", for messages. */
function who(s: Session): string {
  return `pid ${s.pid ?? "?"}${s.name ? ` (${s.name})` : ""}`;
}

function plural(n: number): string {
  return n === 1 ? "" : "s";
}

function isCount(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
}

function failureFields(f: Failure): Record<string, unknown> {
  return { status: f.status, message: f.message, ...(f.hint ? { hint: f.hint } : {}), ...(f.missing ? { missing: f.missing } : {}) };
}

function errnoOf(e: NodeJS.ErrnoException): number {
  return typeof e.errno === "number" ? Math.abs(e.errno) : 0;
}

/** Makes socketPath usable: its directory exists (created 0700), and no live
 * server answers there (a stale socket file of a crashed node is removed). */
async function claimSocketPath(op: string, socketPath: string): Promise<void> {
  try {
    mkdirSync(dirname(socketPath), { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new AinftpError(op, `cannot create ${dirname(socketPath)}`, { errno: errnoOf(e as NodeJS.ErrnoException), hint: "give a --socket path in a directory you may write" });
  }
  let st;
  try {
    st = lstatSync(socketPath);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new AinftpError(op, `${socketPath} exists and is not a socket`, { errno: 17, hint: "remove it or give another --socket path" });
  const live = await new Promise<boolean>((resolve) => {
    const c = createConnection(socketPath);
    c.once("connect", () => (c.destroy(), resolve(true)));
    c.once("error", () => resolve(false));
  });
  if (live)
    throw new AinftpError(op, `another node already serves ${socketPath}`, {
      errno: 98, hint: "stop it first, or give this node another --socket path (and the trainer the same one)",
    });
  rmSync(socketPath, { force: true });
}

// ---- the node behind `ainftp swarm --serve` ---------------------------------------------------

export interface ServeOptions extends JobOptions {
  window?: number;
  roundTimeoutMs?: number;
  retransmitMs?: number;
  openTimeoutMs?: number;
  stochasticSeed?: number;
  /** Bits per value on the wire (CommunicatorOptions.bits; default 16). */
  bits?: 16 | 8 | 4;
  keepAttached?: boolean;
  /** Default /run/ainftp/<job>.sock. */
  socketPath?: string;
  /** The sentry on this node's chunks (see CommunicatorOptions.sentry). */
  sentry?: boolean | { z?: number };
  /** Straggler handling (see CommunicatorOptions.quorum / deadlineMs). */
  quorum?: number;
  deadlineMs?: number | "auto";
  /** Largest all-reduce one protocol round carries, in bytes: sizes the
   * program's maps when we attach it (default 16 MiB); a larger request
   * takes several rounds. */
  roundBytes?: number;
}

export interface ServeReport {
  rank: number;
  peers: number;
  job: number;
  socket: string;
  attached_by_us: boolean;
  /** Trainers served, all told (local_size at a time). */
  clients: number;
  /** Trainers per round on this node, and in the whole job (the census); null before any. */
  local_size: number | null;
  world: number | null;
  /** Rounds over the network, each combining this node's trainers. */
  allreduces: number;
  elements: number;
  /** Mean node-side time per all-reduce. */
  mean_ms: number | null;
  /** Why serving ended: the signal (a failure is thrown instead). */
  stopped_by: string;
}

/** Attaches the program if needed, opens the communicator, then serves
 * local trainers until SIGINT/SIGTERM (resolves) or the job fails here
 * (throws, naming the cause); detaches if it attached, removes the socket. */
export async function serveNode(o: ServeOptions, log: (line: string) => void = () => {}): Promise<ServeReport> {
  const N = o.peers.length;
  const node: Node = bringUp({
    op: "swarm --serve", iface: o.iface, peers: o.peers, rank: o.rank, port: o.port, job: o.job, mode: o.mode, chunkElems: o.chunkElems,
    key: o.key, auth: o.auth, note: log,
    roundElems: Math.max(1, Math.floor((o.roundBytes ?? 16 << 20) / 4)), keepAttached: o.keepAttached,
  });
  const socketPath = o.socketPath ?? defaultSocketPath(o.job ?? 0);
  let comm: Communicator | undefined;
  let server: LocalServer | undefined;
  let failed = false;
  // until the server runs, a signal ends everything at once (as `swarm` does)
  const leave = node.onSignal;
  node.onSignal = (sig) => (server ? server.stop(sig) : leave(sig));
  try {
    comm = await node.open({
      window: o.window, roundTimeoutMs: o.roundTimeoutMs, retransmitMs: o.retransmitMs, openTimeoutMs: o.openTimeoutMs,
      stochasticSeed: o.stochasticSeed, sentry: o.sentry === true ? {} : o.sentry || undefined, maxWaitMs: 20, quorum: o.quorum,
      // the trainers' buffers are new views each call: error feedback is theirs (the DDP hook's HookState)
      deadlineMs: o.deadlineMs, bits: o.bits, errorFeedback: false,
    });
    server = await LocalServer.listen({ socketPath, reducer: comm, log });
    log(`serving job ${comm.job} (rank ${o.rank} of ${N}, ${o.iface}) on ${socketPath}`);
    const end = await server.ended;
    failed = end.kind === "failed";
    if (failed) await server.clientGone(2000); // our trainers hear why before the peers hear we left
    await server.close();
    if (end.kind === "failed") {
      // finally leaves the job (abort): the peers fail their round at once
      throw new AinftpError("swarm --serve", end.failure.message, { hint: end.failure.hint ?? "restart the whole job" });
    }
    const s = server.stats, t = server.trainers;
    return {
      rank: o.rank, peers: N, job: comm.job, socket: socketPath, attached_by_us: node.attachedByUs,
      clients: s.clients, local_size: t.localSize, world: t.world, allreduces: s.allreduces, elements: s.elements,
      mean_ms: s.allreduces ? +(s.ms / s.allreduces).toFixed(3) : null, stopped_by: end.why,
    };
  } finally {
    node.onSignal = () => {};
    await server?.close();
    // leave politely (serving peers' last resends) unless the job failed or a round was cut short
    node.end(failed || server?.busy ? "abort" : "polite", Math.min(2000, o.roundTimeoutMs ?? 2000));
  }
}
