// The communicator's public face: open (the real ports, the policies, the
// handshake), allreduce (rounds of at most `capacity` chunks, round.ts),
// the swarm's hooks, and leaving (close, abort). The protocol lives in the
// rooms next to this file; docs/architecture.md maps them.
import { ELEMS_ONE_PAGE, MAX_ELEMS_AUTH } from "../abi.ts";
import type { ControlDrop } from "../control-guard.ts";
import { join } from "node:path";
import { CTRL_BYE, CTRL_MEMBER, MAX_WORKERS, SIZEOF, type Counters } from "../abi.ts";
import { pinnedPort, pinRoot, xdpQuery } from "../attach.ts";
import { ifNameToIndex } from "../../native/libc.ts";
import { AinftpError } from "../errors.ts";
import { EventRing, PinnedReflex } from "../reflex.ts";
import type { RobustAggregator } from "../sentry/robust.ts";
import type { SentryKeeper } from "../sentry/keeper.ts";
import { UdpEndpoint } from "../transport.ts";
import { XskSocket } from "../xsk.ts";
import { handshake } from "./handshake.ts";
import { Host } from "./host.ts";
import { resolveOptions, RoundError, TUNING, type CollectiveStats, type CommunicatorOptions, type RoundReport } from "./options.ts";
import { realClock, READY_RING, READY_SOCK, SocketDatagrams, type Clock, type Datagrams, type ReflexPort } from "./ports.ts";
import { ErrorFeedback } from "./feedback.ts";
import { drainControl, drainEvents } from "./receiver.ts";
import { RobustPolicy } from "./robust-policy.ts";
import { runRound } from "./round.ts";
import { SentryPolicy } from "./sentry-policy.ts";

/** The world a communicator runs in (ports.ts): real at open(), simulated in test/sim/. */
export interface CommunicatorPorts {
  clock: Clock;
  net: Datagrams;
  maps: ReflexPort;
  port: number;
}

export class Communicator implements Disposable {
  private readonly h: Host;
  /** Error feedback at 8 and 4 bits (feedback.ts); null when off. */
  readonly feedback: ErrorFeedback | null;

  private constructor(h: Host) {
    this.h = h;
    this.feedback = (h.o.errorFeedback ?? h.bits !== 16) ? new ErrorFeedback() : null;
  }

  /** Opens the communicator on an interface where `ainftp attach` put the
   * program, and waits until every peer has opened it with the same job. */
  static async open(opts: CommunicatorOptions): Promise<Communicator> {
    checkMembers(opts);
    const dir = join(pinRoot(opts.pinRoot), opts.iface);
    const maps = PinnedReflex.open(dir);
    let sock: UdpEndpoint | undefined;
    try {
      const port = opts.port ?? pinnedPort(dir);
      sock = UdpEndpoint.open("0.0.0.0", port);
      const net = new SocketDatagrams(sock);
      const c = Communicator.withPorts(opts, { clock: realClock, net, maps, port });
      const h = c.h;
      const ifindex = ifNameToIndex(opts.iface);
      h.plainFrames = ifindex > 0 && xdpQuery(ifindex).mode === "generic";
      if (h.o.rx === "xsk") h.xsk = XskSocket.open({ iface: h.o.iface, xsksMapFd: maps.mapFd("xsks"), area: h.o.umem });
      net.watchFds(h.ring.epollFd(), h.xsk ? h.xsk.fd : -1);
      try {
        await handshake(h);
      } catch (e) {
        h.xsk?.close();
        throw e;
      }
      return c;
    } catch (e) {
      sock?.close();
      maps.close();
      throw e;
    }
  }

  /** A communicator over the given ports, before its handshake (open() and
   * the simulator call it; the simulator then runs connect()). */
  static withPorts(opts: CommunicatorOptions, ports: CommunicatorPorts): Communicator {
    checkMembers(opts);
    const op = "open communicator";
    const o = resolveOptions(opts);
    // a previous job's slots and results must not look like ours
    ports.maps.resetState();
    const h = new Host(o, ports.clock, ports.net, ports.maps, ports.port);
    if (h.dataAuth && h.cfg.chunkElems > MAX_ELEMS_AUTH)
      throw new AinftpError(op, `--auth ${o.auth ?? "header"} leaves room for ${MAX_ELEMS_AUTH} values per packet, the program is attached with ${h.cfg.chunkElems}`, {
        hint: `attach with --chunk-elems ${MAX_ELEMS_AUTH} or less, or run with --auth off`,
      });
    if (h.bits !== 16) {
      // these read int16 payloads: the sentry's energy, robust combining, the AF_XDP result frames
      const bad = o.rx === "xsk" ? "--rx xsk" : o.sentry ? "the sentry" : o.aggregate && o.aggregate !== "sum" ? `--aggregate ${o.aggregate}` : null;
      if (bad) throw new AinftpError(op, `--bits ${h.bits} does not work with ${bad} yet`, { hint: `run with --bits 16, or without ${bad}` });
    }
    // an AF_XDP frame is one UMEM page: a frame in several buffers (xdp.frags) stays in the results map
    if (o.rx === "xsk" && h.seg - SIZEOF.ainftp_wire_hdr > 2 * ELEMS_ONE_PAGE)
      throw new AinftpError(op, `--rx xsk takes frames of one page (${ELEMS_ONE_PAGE} values, MTU 3504); the program is attached with ${h.cfg.chunkElems}`, {
        hint: `run with --rx map (the default), or attach with --chunk-elems ${ELEMS_ONE_PAGE}`,
      });
    if (o.aggregate && o.aggregate !== "sum") {
      if (o.rx === "xsk") throw new AinftpError(op, `--aggregate ${o.aggregate} needs --rx map`, { hint: "drop --rx xsk" });
      h.robust = new RobustPolicy(o.aggregate, o.robust, new EventRing(ports.maps.mapFd("contribs"), SIZEOF.ainftp_contrib_rec, 256));
    }
    if (o.sentry) {
      if (o.rx === "xsk") throw new AinftpError(op, "the sentry needs --rx map", { hint: "drop --rx xsk, or the sentry" });
      h.sentry = new SentryPolicy(h.size, o.sentry);
    }
    return new Communicator(h);
  }

  /** The handshake alone (withPorts' communicators). */
  async connect(): Promise<void> {
    await handshake(this.h);
  }

  // ---- what a caller reads -------------------------------------------------------

  get rank(): number { return this.h.rank; }
  get peers(): readonly string[] { return this.h.peers; }
  get size(): number { return this.h.size; }
  get chunkElems(): number { return this.h.chunkElems; }
  /** Bits per value on the wire (16, 8 or 4). */
  get bits(): number { return this.h.bits; }
  get capacity(): number { return this.h.capacity; }
  get port(): number { return this.h.port; }
  get job(): number { return this.h.job; }
  get stats(): CollectiveStats { return this.h.stats; }
  /** Control frames (or parts) refused, by reason (issue 16). */
  get controlDrops(): Readonly<Record<ControlDrop, number>> { return this.h.guard.drops; }
  /** Bytes of a full data packet's UDP payload (header, values, MAC). */
  get packetBytes(): number { return this.h.seg; }
  /** The AF_XDP socket results arrive on (rx "xsk"), else null. */
  get xsk(): XskSocket | null { return this.h.xsk; }
  /** The sentry's gates and strikes for the chunks we own (null: off). */
  get sentry(): SentryKeeper | null { return this.h.sentry?.keeper ?? null; }
  /** Robust aggregation's combiner (null: summed by the program). */
  get robust(): RobustAggregator | null { return this.h.robust?.aggregator ?? null; }
  /** Per member: rounds completed with it, and rounds it was left out of. */
  get roundsContributed(): number[] { return this.h.roundsContributed; }
  get roundsMissed(): number[] { return this.h.roundsMissed; }

  // ---- the swarm's hooks (src/swarm.ts) ------------------------------------------

  /** Membership messages from a member (rank, payload). */
  get onMember() { return this.h.onMember; }
  set onMember(f: ((rank: number, payload: Uint8Array) => void) | null) { this.h.onMember = f; }
  /** What the swarm knows of a member, for round failures ("declared dead 1.2 s ago"). */
  get describeMember() { return this.h.describeMember; }
  set describeMember(f: ((rank: number) => string | null) | null) { this.h.describeMember = f; }
  /** Members a leader waits for: bit r set = rank r is alive and not
   * down-ranked. The swarm keeps it current; without one, everyone. */
  get fitMask(): bigint { return this.h.fitMask; }
  set fitMask(m: bigint) { this.h.fitMask = m; }
  /** Members alive (or merely suspected), slow or not: a barrier waits for them. */
  get liveMask(): bigint { return this.h.liveMask; }
  set liveMask(m: bigint) { this.h.liveMask = m; }

  /** Sends a membership message to a member. */
  sendMember(rank: number, payload: Uint8Array): void {
    const h = this.h;
    if (!h.closed && rank !== h.rank && rank < h.size) h.sendControl(rank, CTRL_MEMBER, 0, 0, 0, payload);
  }

  /** Between rounds: reads the control packets waiting (a round reads its own). */
  service(): void {
    if (!this.h.closed && !this.h.inRound) drainControl(this.h, null);
  }

  // ---- the all-reduce ----------------------------------------------------------------

  /** Sums x over every member, in place (or into out). `mean` divides by the
   * member count. Resolves when the result is complete on this host. At 8
   * and 4 bits results land in `out` while the round still waits on others
   * (early.ts): a call that throws leaves `out` (x, in place) partly summed. */
  async allreduce(
    x: Float32Array,
    opts: {
      op?: "sum" | "mean"; out?: Float32Array;
      /** first retransmission after this long (default: the communicator's) */ retransmitMs?: number;
      /** a barrier: wait for every member that is fit and not down-ranked, with no deadline */ patient?: boolean;
      /** Filled with this rank's own quantization error: x minus what its
       * contribution dequantizes to (at 4 bits after the inverse transform).
       * Zeros at 16 bits. Passing it hands error feedback to the caller: the
       * communicator's own (`feedback`) is not used for this call. */
      residual?: Float32Array;
      /** The buffer error feedback keys its residual by (default: x itself). */
      key?: object;
    } = {},
  ): Promise<RoundReport[]> {
    const h = this.h;
    if (h.closed) throw new AinftpError("allreduce", "communicator is closed");
    const out = opts.out ?? x;
    if (out.length !== x.length) throw new AinftpError("allreduce", `out has ${out.length} elements, x has ${x.length}`);
    if (opts.residual && opts.residual.length !== x.length)
      throw new AinftpError("allreduce", `residual has ${opts.residual.length} elements, x has ${x.length}`, { hint: "one residual per gradient buffer, as long as it" });
    let resid = opts.residual ?? null, add: Float32Array | null = null;
    if (!resid && this.feedback) {
      const key = opts.key ?? x;
      resid = this.feedback.residual(key, x.length);
      // x + the last call's error is what we quantize: with the transform,
      // the round adds it in the transform's pass (native, no pass of its own)
      if (h.rht && h.size > 1) add = resid;
      else x = this.feedback.input(key, x);
    }
    const per = h.capacity * h.chunkElems;
    const reports: RoundReport[] = [];
    // A round given up for members the swarm declared dead does not end
    // the call: its remaining rounds still run (without them), so that this
    // member's rounds keep carrying the same pieces as every other
    // member's (starting the next call's first piece in a round whose other
    // members send this call's second piece, its exponents would never
    // match; sim seed 5731). The first error is thrown once they have run.
    // Any other failure ends the call at once.
    let failed: RoundError | null = null;
    for (let off = 0; off < x.length; off += per) {
      const end = Math.min(x.length, off + per);
      h.inRound = true;
      let rep: RoundReport;
      try {
        rep = await runRound(h, x.subarray(off, end), out.subarray(off, end), opts.retransmitMs ?? h.o.retransmitMs, opts.patient ?? false,
          resid ? resid.subarray(off, end) : null, add ? add.subarray(off, end) : null);
      } catch (e) {
        if (!(e instanceof RoundError) || !e.missingRanks.length || e.missingRanks.some((k) => Host.has(h.liveMask, k))) throw failed ?? e;
        failed ??= e;
        continue;
      } finally {
        h.inRound = false;
      }
      rep.contributors = h.xsk ? null : this.contributorsOf(rep.round, rep.chunks);
      reports.push(rep);
      if (opts.op === "mean") this.divide(rep, out, off, end);
    }
    if (failed) throw failed;
    return reports;
  }

  /** A mean over the contributions each chunk's result holds: fewer than
   * the members when the round was partial or the sentry dropped some (rx
   * "xsk" keeps no per-chunk count: the plan's active members). */
  private divide(rep: RoundReport, out: Float32Array, off: number, end: number): void {
    const E = this.h.chunkElems;
    const k = rep.contributors ?? new Uint16Array(rep.chunks).fill(rep.active.length);
    for (let c = 0; c < rep.chunks; c++) {
      const from = off + c * E, to = Math.min(end, from + E);
      const d = k[c] || 1;
      for (let i = from; i < to; i++) out[i] /= d;
    }
  }

  /** Per chunk of the last round: contributions its result holds (the
   * owner's own included). Fewer than the members when the sentry dropped
   * some or a member was quarantined. */
  contributorsOf(round: number, chunks: number): Uint16Array {
    return this.h.maps.contributorsInto((round & 1) * this.h.cfg.chunks, new Uint16Array(chunks));
  }

  /** The program's per-rank counts of the contributions its sentry accepted
   * and rejected (for our chunks, since the communicator opened). */
  sentryCounts(): { accepted: number; rejected: number }[] {
    return this.h.maps.sentryWorkers(this.h.size);
  }

  /** Re-admits a quarantined member (an operator's decision). */
  readmit(rank: number): void {
    this.h.sentry?.keeper.readmit(rank);
  }

  /** XDP counters of the attached program. */
  counters(): Counters {
    return this.h.maps.counters();
  }

  // ---- leaving ----------------------------------------------------------------------

  /** Leaves at once (Ctrl-C): tells the peers that the current round will not
   * complete, so they fail it now instead of at its deadline. */
  abort(): void {
    const h = this.h;
    if (h.closed) return;
    h.closed = true;
    h.sentry?.close(h);
    try {
      for (const p of h.others) h.sendControl(p, CTRL_BYE, h.nextRound - 1, 0, 0, new Uint8Array(0));
    } catch {
      // leaving anyway
    }
    this.release();
  }

  /** Leaves the job: tells the peers, then keeps serving resend requests
   * until every peer has left too (or lingerMs passes, by default the round
   * bound), so a peer that lost one of our results can still finish its
   * last round. Over the real ports all of it is done when close() returns;
   * a simulator, whose ports wait with promises, awaits leave() instead. */
  close(lingerMs = this.h.o.roundTimeoutMs): void {
    void this.depart(lingerMs);
  }

  /** close() as a promise (simulated ports). */
  async leave(lingerMs = this.h.o.roundTimeoutMs): Promise<void> {
    await this.depart(lingerMs);
  }

  /** Leaves; returns a promise only when a port's wait did. */
  private depart(lingerMs: number): Promise<void> | undefined {
    const h = this.h;
    if (h.closed) return;
    h.closed = true;
    h.sentry?.close(h);
    let waiting: Promise<void> | undefined;
    try {
      waiting = linger(h, lingerMs);
    } catch {
      // leaving anyway
    }
    if (!waiting) {
      this.release();
      return;
    }
    return waiting.catch(() => {}).then(() => this.release());
  }

  private release(): void {
    this.h.net.close();
    this.h.xsk?.close();
    this.h.robust?.close();
    this.h.maps.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Says goodbye, and serves resend requests until every live peer has said
 * goodbye too or lingerMs passes. Runs to the end synchronously over the
 * real ports; returns a promise only when a (simulated) port's wait does. */
function linger(h: Host, lingerMs: number): Promise<void> | undefined {
  const bye = (all = false) => {
    for (const p of h.others) if (all || !h.left.has(p)) h.sendControl(p, CTRL_BYE, h.nextRound, 0, 0, new Uint8Array(0));
  };
  bye();
  const end = h.clock.now() + lingerMs;
  let again = h.clock.now() + TUNING.GREET_MS;
  // (a member the swarm holds dead will not say goodbye)
  const waiting = () => h.others.some((p) => !h.left.has(p) && Host.has(h.liveMask, p));
  const serve = () => {
    drainControl(h, null);
    drainEvents(h, null, 0);
  };
  const loop = (): Promise<void> | undefined => {
    while (waiting() && h.clock.now() < end) {
      // a lost BYE must not keep a peer lingering for the whole bound
      if (h.clock.now() >= again) (bye(), (again = h.clock.now() + TUNING.GREET_MS));
      const ready = h.net.wait(READY_RING | READY_SOCK, Math.max(1, Math.ceil(Math.min(50, end - h.clock.now()))));
      if (typeof ready !== "number") return ready.then(() => (serve(), loop()));
      serve();
    }
    // peers that are lingering for us may have lost our BYE: say it twice more
    for (let i = 0; i < 2; i++) {
      h.clock.sleepSync(30);
      bye(true);
    }
  };
  return loop();
}

function checkMembers(opts: CommunicatorOptions): void {
  const op = "open communicator";
  const n = opts.peers.length;
  if (n < 1 || n > MAX_WORKERS) throw new AinftpError(op, `${n} peers; a job has 1..${MAX_WORKERS}`);
  if (!Number.isInteger(opts.rank) || opts.rank < 0 || opts.rank >= n)
    throw new AinftpError(op, `rank ${opts.rank} is not in 0..${n - 1}`, { hint: "ranks count from 0 in the order of --peers" });
  const dup = opts.peers.find((p, i) => opts.peers.indexOf(p) !== i);
  if (dup) throw new AinftpError(op, `peer ${dup} is listed twice`, { hint: "give each member's address once, in rank order" });
}
