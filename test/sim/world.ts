// A deterministic world for N communicators in one process (TigerBeetle's
// simulator, memberlist's MockTransport): a virtual clock, a seeded network
// with loss, duplication, reordering, per-host delay (stragglers) and death,
// and the real XDP program per host, run through BPF_PROG_TEST_RUN so the
// native finishing code reads real mmapped maps. Every datagram a host
// sends becomes an Ethernet frame run through the receiver's program: a
// contribution or result is summed or stored there (XDP_DROP, events in its
// ring), a control packet passes (XDP_PASS) into the receiver's socket inbox.
//
// Scheduling: one host runs at a time. A host runs until it waits
// (Datagrams.wait returns a promise), then the world resumes the first host
// in rank order that is ready (a datagram in its inbox, its ring touched,
// or its timer due), or moves the clock to the next delivery or timer.
// Nothing depends on wall time, so a seed replays the same run.
import { afterAll, beforeAll } from "bun:test";
import { Communicator, type CollectiveStats, type CommunicatorOptions } from "../../src/collective.ts";
import { READY_RING, READY_SOCK, type Clock, type Datagrams, type Received, type ReflexPort } from "../../src/collective/ports.ts";
import { ipv4ToBe32 } from "../../src/transport.ts";
import { frame } from "../../src/packet.ts";
import { mulberry32 } from "../../src/random.ts";
import { ReflexObject, type EventRing } from "../../src/reflex.ts";

/** XDP actions (linux/bpf.h). */
const XDP = { DROP: 1, PASS: 2 } as const;
/** A wait never takes less than this (virtual ms): a poll costs time. */
const MIN_WAIT_MS = 0.01;

export interface Faults {
  /** Probability a datagram is lost, duplicated, or delayed by up to reorderMs extra. */
  loss: number;
  dup: number;
  reorder: number;
  reorderMs: number;
  /** One-way latency and its uniform jitter (ms). */
  latencyMs: number;
  jitterMs: number;
}

export const CLEAN: Faults = { loss: 0, dup: 0, reorder: 0, reorderMs: 0, latencyMs: 0.05, jitterMs: 0 };

/** The real program for one simulated host, loaded once and reused by every
 * run (a load costs a verifier pass); close() of a communicator leaves it open. */
export class SimProgram {
  private ring: EventRing;
  private view: ReflexPort;
  private constructor(readonly obj: ReflexObject) {
    this.ring = obj.events();
    const ring = this.ring;
    // one view for every run: the maps' lazy mmaps are made once
    this.view = Object.assign(Object.create(obj) as ReflexObject, { events: () => ring, close: () => {} }) as unknown as ReflexPort;
  }

  static async load(chunks: number, chunkElems: number, port: number): Promise<SimProgram> {
    const obj = await ReflexObject.load({ chunks, port });
    obj.setConfig({ jobId: 0, roundBase: 0, memberMask: 0n, members: 0, chunkElems, chunks, batch: 32, ownedChunks: chunks });
    return new SimProgram(obj);
  }

  /** Before a run: round base 0, as a fresh attach leaves it, so a seed
   * replays the same rounds whatever ran before it. */
  reset(): void {
    this.obj.setConfig({ ...this.obj.config(), jobId: 0, roundBase: 0, memberMask: 0n, bankMask: [0n, 0n], flags: 0 });
    while (this.ring.pollRaw(0) > 0);
  }

  /** The program's maps as the communicator sees them: one shared ring, no close. */
  port(): ReflexPort {
    return this.view;
  }

  close(): void {
    this.ring.close();
    this.obj.close();
  }
}

interface InFlight {
  at: number;
  seq: number;
  to: number;
  from: number;
  data: Uint8Array;
}

interface Timer {
  at: number;
  seq: number;
  run: () => void;
}

/** One host's ports: its clock is the world's, its socket an inbox. */
export class SimHost implements Datagrams, Clock {
  inbox: { data: Uint8Array; from: string }[] = [];
  /** The program may have raised events since the host last looked. */
  ringTouched = false;
  dead = false;
  /** Extra delay on everything this host sends (a straggler's link). */
  sendDelayMs = 0;
  parked: { watch: number; until: number; resolve: (ready: number) => void } | null = null;
  private current: { data: Uint8Array; from: string }[] = [];
  private batch: Received;

  constructor(readonly world: SimWorld, readonly rank: number, readonly addr: string, readonly program: SimProgram) {
    const self = this;
    this.batch = {
      get count() { return self.current.length; },
      datagram: (i) => self.current[i].data,
      sourceAddr: (i) => self.current[i].from,
    };
  }

  now(): number {
    return this.world.now;
  }

  yield(): Promise<void> {
    return Promise.resolve();
  }

  sleepSync(): void {}

  /** Every simulated frame is delivered on its own already. */
  sendPlainTo(_addr: string): void {}

  sendGso(addr: string, _port: number, buf: Uint8Array, segSize: number, nsegs: number, lastSize = segSize): number {
    if (this.dead) return nsegs;
    const to = this.world.rankOf(addr);
    for (let i = 0; i < nsegs; i++) {
      const len = i === nsegs - 1 ? lastSize : segSize;
      this.world.transmit(this.rank, to, buf.slice(i * segSize, i * segSize + len), this.sendDelayMs);
    }
    return nsegs;
  }

  recvBatch(): Received {
    this.current = this.inbox.splice(0, 64);
    return this.batch;
  }

  ready(watch: number): number {
    return (watch & READY_SOCK && this.inbox.length ? READY_SOCK : 0) | (watch & READY_RING && this.ringTouched ? READY_RING : 0);
  }

  wait(watch: number, ms: number): Promise<number> {
    return this.world.park(this, watch, ms);
  }

  close(): void {}
}

export class SimWorld {
  now = 0;
  readonly hosts: SimHost[] = [];
  readonly rng: () => number;
  /** Datagrams delivered, lost, duplicated; host wake-ups. */
  readonly counts = { delivered: 0, lost: 0, duplicated: 0, wakeups: 0 };
  private queue: (InFlight | Timer)[] = [];
  private seq = 0;
  private running = 0;
  private idle: (() => void) | null = null;
  private byAddr = new Map<string, number>();
  private comms: Communicator[] = [];

  constructor(readonly seed: number, readonly faults: Faults, programs: SimProgram[], readonly port: number) {
    this.rng = mulberry32(seed);
    programs.forEach((p, rank) => {
      p.reset();
      const addr = `10.77.0.${rank + 1}`;
      this.byAddr.set(addr, rank);
      this.hosts.push(new SimHost(this, rank, addr, p));
    });
  }

  get peers(): string[] {
    return this.hosts.map((h) => h.addr);
  }

  rankOf(addr: string): number {
    const r = this.byAddr.get(addr);
    if (r === undefined) throw new Error(`no simulated host at ${addr}`);
    return r;
  }

  /** A communicator on host `rank` over the world's ports (not yet connected). */
  communicator(rank: number, o: Partial<CommunicatorOptions> = {}): Communicator {
    const h = this.hosts[rank];
    return (this.comms[rank] = Communicator.withPorts({ iface: "sim", peers: this.peers, rank, job: 7, ...o }, { clock: h, net: h, maps: h.program.port(), port: this.port }));
  }

  /** The communicator made for host `rank`. */
  comm(rank: number): Communicator {
    return this.comms[rank];
  }

  /** Sees every datagram a host sends (before the network's faults): a
   * Byzantine member's extra sends (inject) hang off it. */
  tap: ((from: number, to: number, data: Uint8Array) => void) | null = null;

  /** Sends one datagram as host `from` besides what its communicator sends
   * (a Byzantine member), with the network's latency and no faults. */
  inject(from: number, to: number, data: Uint8Array): void {
    this.push({ at: this.now + this.faults.latencyMs, seq: this.seq++, to, from, data });
  }

  /** Delivers one datagram to host `to` now, as sent by `from`, without
   * the network's latency or faults: a packet that reaches a host while its
   * communicator is between two steps (round.ts PLAN_SEAM). */
  deliverNow(from: number, to: number, data: Uint8Array): void {
    this.deliver({ at: this.now, seq: this.seq++, to, from, data });
  }

  /** Drops the datagrams it returns true for (counted as lost), before the
   * network's faults: a test's chosen loss. */
  drop: ((from: number, to: number, data: Uint8Array) => boolean) | null = null;

  /** Sends one datagram through the faulty network. */
  transmit(from: number, to: number, data: Uint8Array, extraMs: number): void {
    this.tap?.(from, to, data);
    if (this.drop?.(from, to, data)) {
      this.counts.lost++;
      return;
    }
    const f = this.faults;
    if (this.rng() < f.loss) {
      this.counts.lost++;
      return;
    }
    const copies = this.rng() < f.dup ? 2 : 1;
    if (copies === 2) this.counts.duplicated++;
    for (let i = 0; i < copies; i++) {
      let delay = f.latencyMs + f.jitterMs * this.rng() + extraMs;
      if (this.rng() < f.reorder) delay += f.reorderMs * this.rng();
      this.push({ at: this.now + delay, seq: this.seq++, to, from, data });
    }
  }

  /** Runs fn at virtual time `at` (a swarm's verdict, a death). */
  at(at: number, run: () => void): void {
    this.push({ at, seq: this.seq++, run });
  }

  /** Kills a host: it sends and receives nothing more and never resumes. */
  kill(rank: number): void {
    const h = this.hosts[rank];
    if (h.dead) return;
    // (the world kills between runs of hosts: h is parked or finished,
    // and a parked host is not counted as running)
    h.dead = true;
    h.parked = null;
  }

  park(h: SimHost, watch: number, ms: number): Promise<number> {
    return new Promise((resolve) => {
      if (h.dead) return this.finished(); // a dead host never resumes
      h.parked = { watch, until: this.now + Math.max(ms, MIN_WAIT_MS), resolve };
      this.finished();
    });
  }

  private finished(): void {
    if (--this.running === 0) this.idle?.();
  }

  private quiet(): Promise<void> {
    if (this.running <= 0) return Promise.resolve();
    return new Promise((r) => (this.idle = r));
  }

  private push(e: InFlight | Timer): void {
    // keep the queue sorted by (at, seq): a binary search and a splice
    let lo = 0, hi = this.queue.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const q = this.queue[mid];
      if (q.at < e.at || (q.at === e.at && q.seq < e.seq)) lo = mid + 1;
      else hi = mid;
    }
    this.queue.splice(lo, 0, e);
  }

  private deliver(e: InFlight): void {
    const h = this.hosts[e.to];
    if (h.dead) return; // (what a host sent before it died still arrives)
    const f = frame(e.data, { dstPort: this.port });
    f.set(new Uint8Array(new Uint32Array([ipv4ToBe32(this.hosts[e.from].addr)]).buffer), 14 + 12);
    const { action } = h.program.obj.testRun(f);
    this.counts.delivered++;
    if (action === XDP.PASS) h.inbox.push({ data: e.data, from: this.hosts[e.from].addr });
    else if (action === XDP.DROP) h.ringTouched = true;
  }

  /** Runs the hosts' tasks (one per host, in rank order) until every live
   * one has finished, or the virtual clock passes limitMs. */
  async run<T>(tasks: ((rank: number) => Promise<T>)[], limitMs: number): Promise<(T | undefined)[]> {
    const results: (T | undefined)[] = new Array(tasks.length).fill(undefined);
    const errors: unknown[] = [];
    this.running = tasks.length;
    tasks.forEach((t, rank) =>
      t(rank).then((v) => (results[rank] = v), (e) => errors.push(e)).finally(() => {
        if (!this.hosts[rank].dead) this.finished();
      }),
    );
    await this.quiet();
    while (this.hosts.some((h) => h.parked)) {
      if (errors.length) throw errors[0];
      if (this.now > limitMs) throw new Error(`seed ${this.seed}: still running at virtual ${this.now.toFixed(1)} ms (limit ${limitMs})`);
      const h = this.hosts.find((x) => x.parked && (x.ready(x.parked.watch) || x.parked.until <= this.now));
      if (!h) {
        this.advance();
        continue;
      }
      const p = h.parked!;
      const mask = h.ready(p.watch);
      if (mask & READY_RING) h.ringTouched = false;
      h.parked = null;
      this.running++;
      this.counts.wakeups++;
      p.resolve(mask);
      await this.quiet();
    }
    if (errors.length) throw errors[0];
    return results;
  }

  /** Moves the clock to the next delivery, timer or wake-up, and delivers. */
  private advance(): void {
    let next = Infinity;
    for (const h of this.hosts) if (h.parked && h.parked.until < next) next = h.parked.until;
    if (this.queue.length && this.queue[0].at < next) next = this.queue[0].at;
    if (next === Infinity) throw new Error(`seed ${this.seed}: deadlock at virtual ${this.now.toFixed(1)} ms: nothing to deliver, no timer`);
    this.now = Math.max(this.now, next);
    while (this.queue.length && this.queue[0].at <= this.now) {
      const e = this.queue.shift()!;
      if ("run" in e) e.run();
      else this.deliver(e);
    }
  }
}

/** A gradient for (seed, round, rank): values in ±2^k for a k per rank
 * (members up to 32 times apart), or in ±1 on every rank with `alike`
 * (the condition README's error bounds are stated for). */
export function simGradient(seed: number, round: number, rank: number, n: number, alike = false): Float32Array {
  const rnd = mulberry32((seed * 7919 + round * 131 + rank * 17) >>> 0);
  const k = Math.floor(rnd() * 6 - 3);
  const scale = alike ? 1 : 2 ** k;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (rnd() * 2 - 1) * scale;
  return x;
}

/** Every host of `world` connects and runs `rounds` all-reduces of
 * simGradient(seed, k, rank, n, alike) under options `o`, then leaves:
 * per rank the hash of each result, every rank's virtual ms per round, and
 * each rank's stats. `lateMs(rank, k)`: virtual ms a rank waits before its
 * round k (staggered starts). */
export async function runGradients(
  world: SimWorld, seed: number, rounds: number, n: number, o: Partial<CommunicatorOptions> = {}, alike = false,
  lateMs: ((rank: number, k: number) => number) | null = null,
): Promise<{ hashes: string[][]; times: number[]; stats: CollectiveStats[] }> {
  const comms = world.hosts.map((_, rank) => world.communicator(rank, { roundTimeoutMs: 20_000, openTimeoutMs: 5_000, ...o }));
  const hashes: string[][] = world.hosts.map(() => []);
  const times: number[] = [];
  try {
    await world.run(comms.map((c) => async (rank: number) => {
      await c.connect();
      for (let k = 0; k < rounds; k++) {
        const x = simGradient(seed, k, rank, n, alike);
        const late = lateMs?.(rank, k) ?? 0;
        if (late > 0) await world.hosts[rank].wait(0, late);
        const t0 = world.now;
        await c.allreduce(x);
        times.push(world.now - t0);
        hashes[rank].push(Bun.hash(x.buffer).toString(16));
      }
      await c.leave(30_000);
    }), 600_000);
  } finally {
    for (const c of comms) c.close(0);
  }
  return { hashes, times, stats: comms.map((c) => c.stats) };
}

/** Two hosts of `world` open with options `a` and `b`: what each one's
 * connect() ended with ("connected", or its error's message). */
export async function openPair(world: SimWorld, a: Partial<CommunicatorOptions>, b: Partial<CommunicatorOptions>): Promise<string[]> {
  const comms = [world.communicator(0, { openTimeoutMs: 3_000, ...a }), world.communicator(1, { openTimeoutMs: 3_000, ...b })];
  const outcomes: string[] = [];
  try {
    await world.run(comms.map((c) => async () => {
      try {
        await c.connect();
        outcomes.push("connected");
      } catch (e) {
        outcomes.push(String((e as Error).message));
      }
    }), 60_000);
  } finally {
    for (const c of comms) c.close(0);
  }
  return outcomes;
}

/** Loads `hosts` programs before the file's tests (as root) and closes them after; the array fills in beforeAll. */
export function simPrograms(root: boolean, hosts: number, chunks: number, elems: number, port: number): SimProgram[] {
  const programs: SimProgram[] = [];
  beforeAll(async () => {
    if (root) for (let i = 0; i < hosts; i++) programs.push(await SimProgram.load(chunks, elems, port));
  });
  afterAll(() => {
    for (const p of programs) p.close();
    programs.length = 0;
  });
  return programs;
}
