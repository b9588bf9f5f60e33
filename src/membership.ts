// SWIM membership (Das et al., 2002) with Lifeguard's refinements (Dadgar et
// al., 2018) as a deterministic state machine: the caller feeds it time
// (tick) and datagrams (receive) and carries what it sends. It owns no
// socket and no timer, so a simulated network can drive it.
import { AinftpError } from "./errors.ts";

// ---- records and messages --------------------------------------------------

export type MemberState = "alive" | "suspect" | "dead" | "left";
/** Wire codes, and SWIM's precedence at equal incarnation (a later state wins). */
const STATES: readonly MemberState[] = ["alive", "suspect", "dead", "left"];

/** What one member says about another or itself: the unit of gossip. */
export interface MemberRecord {
  name: string;
  addr: string;
  /** Random per process, never 0: a restart under the same name is a new member. 0 = not heard from yet (a seed). */
  boot: number;
  state: MemberState;
  incarnation: number;
  /** For suspect: who suspects it (Lifeguard counts independent accusers). */
  by?: string;
}

export type MessageKind = "ping" | "ack" | "ping-req" | "indirect-ack" | "nack" | "leave";
const KINDS: readonly MessageKind[] = ["ping", "ack", "ping-req", "indirect-ack", "nack", "leave"];

export interface MemberMessage {
  kind: MessageKind;
  /** ping/ping-req: chosen by the sender; ack/indirect-ack/nack: the seq they answer. */
  seq: number;
  /** The sender's own record: first-hand word of its identity and incarnation. */
  sender: MemberRecord;
  /** ping-req: the member to probe on the sender's behalf. */
  target?: string;
  updates: MemberRecord[];
}

// ---- wire format -----------------------------------------------------------
// version u8, kind u8, seq u32, sender record, target string, update count u8, updates.
// Record: state u8, boot u32, incarnation u32, name, addr, by. Strings: u8 length + UTF-8.
// Integers little-endian.

/** Bumped when the layout changes; a datagram of another version is dropped. */
export const MEMBERSHIP_WIRE_VERSION = 1;
const MAX_STRING_BYTES = 255; // one length byte
const MAX_UPDATES = 255; // one count byte
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function stringBytes(s: string): number {
  return 1 + utf8.encode(s).length;
}

function recordBytes(r: MemberRecord): number {
  return 1 + 4 + 4 + stringBytes(r.name) + stringBytes(r.addr) + stringBytes(r.by ?? "");
}

function messageBytes(m: MemberMessage): number {
  return 6 + recordBytes(m.sender) + stringBytes(m.target ?? "") + 1 + m.updates.reduce((n, u) => n + recordBytes(u), 0);
}

class Writer {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private off = 0;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }
  u8(v: number): void {
    this.view.setUint8(this.off++, v);
  }
  u32(v: number): void {
    this.view.setUint32(this.off, v >>> 0, true);
    this.off += 4;
  }
  str(s: string): void {
    const b = utf8.encode(s);
    if (b.length > MAX_STRING_BYTES)
      throw new AinftpError("encode membership message", `'${s.slice(0, 40)}…' is ${b.length} bytes; names and addresses fit in ${MAX_STRING_BYTES}`);
    this.u8(b.length);
    this.bytes.set(b, this.off);
    this.off += b.length;
  }
  record(r: MemberRecord): void {
    this.u8(STATES.indexOf(r.state));
    this.u32(r.boot);
    this.u32(r.incarnation);
    this.str(r.name);
    this.str(r.addr);
    this.str(r.by ?? "");
  }
}

/** Thrown inside decoding only; decodeMessage turns it into null. */
class Malformed extends Error {}

class Reader {
  private readonly view: DataView;
  private off = 0;
  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  private need(n: number): void {
    if (this.off + n > this.bytes.length) throw new Malformed();
  }
  get done(): boolean {
    return this.off === this.bytes.length;
  }
  u8(): number {
    this.need(1);
    return this.view.getUint8(this.off++);
  }
  u32(): number {
    this.need(4);
    this.off += 4;
    return this.view.getUint32(this.off - 4, true);
  }
  str(): string {
    const n = this.u8();
    this.need(n);
    this.off += n;
    try {
      return strictUtf8.decode(this.bytes.subarray(this.off - n, this.off));
    } catch {
      throw new Malformed();
    }
  }
  record(): MemberRecord {
    const state = STATES[this.u8()];
    const boot = this.u32();
    const incarnation = this.u32();
    const name = this.str();
    const addr = this.str();
    const by = this.str();
    if (!state || !name) throw new Malformed();
    return { name, addr, boot, state, incarnation, ...(by ? { by } : {}) };
  }
}

export function encodeMessage(msg: MemberMessage): Uint8Array {
  if (msg.updates.length > MAX_UPDATES)
    throw new AinftpError("encode membership message", `${msg.updates.length} updates; at most ${MAX_UPDATES} fit`);
  const w = new Writer(messageBytes(msg));
  w.u8(MEMBERSHIP_WIRE_VERSION);
  w.u8(KINDS.indexOf(msg.kind));
  w.u32(msg.seq);
  w.record(msg.sender);
  w.str(msg.target ?? "");
  w.u8(msg.updates.length);
  for (const u of msg.updates) w.record(u);
  return w.bytes;
}

/** The message in a datagram, or null when it is short, garbled or of another version. Never throws. */
export function decodeMessage(bytes: Uint8Array): MemberMessage | null {
  try {
    const r = new Reader(bytes);
    if (r.u8() !== MEMBERSHIP_WIRE_VERSION) return null;
    const kind = KINDS[r.u8()];
    const seq = r.u32();
    const sender = r.record();
    const target = r.str();
    const updates = Array.from({ length: r.u8() }, () => r.record());
    if (!kind || !r.done) return null;
    return { kind, seq, sender, ...(target ? { target } : {}), updates };
  } catch (e) {
    if (e instanceof Malformed) return null;
    throw e;
  }
}

// ---- round-trip times ------------------------------------------------------

/** RFC 6298's smoothed RTT and RTT variation, plus a p99 over the last `window` samples. */
export class RttEstimator {
  srtt: number | null = null;
  rttvar = 0;
  private readonly samples: number[] = [];
  private next = 0;

  constructor(private readonly window: number) {}

  add(rtt: number): void {
    if (this.srtt === null) {
      this.srtt = rtt;
      this.rttvar = rtt / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - rtt);
      this.srtt = 0.875 * this.srtt + 0.125 * rtt;
    }
    this.samples[this.next] = rtt;
    this.next = (this.next + 1) % this.window;
  }

  /** When an answer counts as late: RFC 6298's RTO, without its 1 s floor. */
  expected(): number {
    return (this.srtt ?? 0) + 4 * this.rttvar;
  }

  p99(): number | null {
    if (this.samples.length === 0) return null;
    const sorted = [...this.samples].sort((a, b) => a - b);
    return sorted[Math.ceil(0.99 * sorted.length) - 1];
  }
}

// ---- options ---------------------------------------------------------------

export interface MembershipOptions {
  protocolPeriodMs: number;
  probeTimeoutMs: number;
  indirectProbes: number;
  suspicionMult: number;
  suspicionMaxMult: number;
  gossipMult: number;
  maxHealth: number;
  accuseMaxHealth: number;
  rttSlack: number;
  tickMs: number;
  lateTickMs: number;
  reconnectMs: number;
  maxMessageBytes: number;
  rttWindow: number;
  slowLagMs: number;
  slowRttFactor: number;
  slowRttFloorMs: number;
  slowAfter: number;
  fastAfter: number;
}

export const MEMBERSHIP_DEFAULTS: MembershipOptions = {
  // One probe per 200 ms: at N = 4 every peer is probed within ~1 s (randomized round robin).
  protocolPeriodMs: 200,
  // Half the period waits for the direct ack (LAN RTTs are far below it), half for the indirect probes (memberlist's split).
  probeTimeoutMs: 100,
  // SWIM's k: one lossy path alone does not make a member suspect.
  indirectProbes: 3,
  // A suspicion confirmed by K = 4 − 2 others lasts 4 × max(1, log10 N) periods: 800 ms up to N = 10 (memberlist's 4).
  suspicionMult: 4,
  // Unconfirmed, 3 times that (2.4 s) for a falsely suspected member to refute; a real death is confirmed within a
  // probe pass, so at N = 4 it is declared on all within 1.5 s (2.3 s under 10 % loss) in the simulated network.
  suspicionMaxMult: 3,
  // Each update rides on 3 × ceil(log2(N + 1)) messages: 9 at N = 4, enough to reach everyone through 10 % loss.
  gossipMult: 3,
  // Lifeguard's cap: a node that doubts itself waits at most 9 times longer.
  maxHealth: 8,
  // From this local health on a node accuses no one of its own probes' failures (it is the likely culprit):
  // two probes that no helper even nacked. Gossip from healthy members still reaches it.
  accuseMaxHealth: 4,
  // An answer from a member may take this many times its measured RTO (srtt + 4·rttvar) before a probe
  // gives up on it, a suspicion lasts at least twice that, and a suspect's own late answer restarts its
  // suspicion: a member behind a slow link (a 600 ms delay) is slow, not dead. 0 turns this off.
  rttSlack: 1.5,
  // The driver calls tick() this often; 20 ms keeps the 100 ms deadlines within a fifth of themselves.
  tickMs: 20,
  // A tick this late means our own event loop stalled long enough to miss a timely ack.
  lateTickMs: 100,
  // A dead member is pinged once a second so a healed partition or a late starter comes back.
  reconnectMs: 1000,
  // One unfragmented datagram on a 1500-byte MTU, after IP and UDP headers.
  maxMessageBytes: 1400,
  // 128 samples: a p99 needs at least a hundred.
  rttWindow: 128,
  // The threshold: an ack half a second later than expected is a member worth down-ranking.
  slowLagMs: 500,
  // An RTT 4 times the others' median marks a slow path, not jitter...
  slowRttFactor: 4,
  // ...unless it is under 5 ms, too little to matter for a gradient round.
  slowRttFloorMs: 5,
  // Three observations in a row to go slow and three to come back: one GC pause moves nobody.
  slowAfter: 3,
  fastAfter: 3,
};

// ---- the state machine -----------------------------------------------------

export type MemberEventKind = "join" | "alive" | "suspect" | "dead" | "left" | "slow" | "fast";

export interface MemberView {
  name: string;
  addr: string;
  boot: number;
  state: MemberState;
  incarnation: number;
  /** Smoothed RTT in ms (RFC 6298's SRTT), null before the first ack. */
  rttEwma: number | null;
  rttVar: number;
  rttP99: number | null;
  /** How far past its expected RTT the member's latest ack came (or, unanswered, is now), in ms. */
  lag: number;
  /** Position in ranking(), 0 = fastest; null for ourselves and members not alive or suspect. */
  rank: number | null;
  slow: boolean;
  self: boolean;
}

export interface MemberEvent {
  kind: MemberEventKind;
  member: MemberView;
}

export interface MembershipConfig {
  self: { name: string; addr: string; incarnation?: number };
  /** The static seed list; our own entry, if present, is skipped. */
  members: { name: string; addr: string }[];
  clock: () => number;
  /** Carries msg to the member at addr `to` (encodeMessage gives the datagram). */
  send: (to: string, msg: MemberMessage) => void;
  /** Uniform [0, 1): probe order, helpers and the boot id (Math.random in production, a seeded one in tests). */
  random: () => number;
  options?: Partial<MembershipOptions>;
  onChange?: (event: MemberEvent) => void;
}

interface Suspicion {
  startedAt: number;
  accusers: Set<string>;
  /** Lifeguard's K: confirmations after which the timeout reaches its minimum. */
  expected: number;
  minMs: number;
  maxMs: number;
}

interface Member {
  name: string;
  addr: string;
  boot: number;
  state: MemberState;
  incarnation: number;
  suspicion: Suspicion | null;
  /** Boot ids of earlier processes under this name: their gossip is history. */
  retiredBoots: Set<number>;
  rtt: RttEstimator;
  lastPing: { seq: number; sentAt: number; answered: boolean } | null;
  lag: number;
  slow: boolean;
  badRun: number;
  goodRun: number;
}

interface Probe {
  target: string;
  seq: number;
  directDeadline: number;
  endAt: number;
  askedHelpers: boolean;
  expectedNacks: number;
  nacks: number;
}

/** A ping we send for another member's ping-req. */
interface Relay {
  requesterAddr: string;
  requesterName: string;
  requesterSeq: number;
  nackAt: number;
  nacked: boolean;
  /** A late ack still becomes an indirect-ack until then (a slow target). */
  expireAt: number;
}

const isLive = (m: Member) => m.state === "alive" || m.state === "suspect";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function validName(what: string, s: string): void {
  const n = utf8.encode(s).length;
  if (n === 0 || n > MAX_STRING_BYTES)
    throw new AinftpError("membership", `${what} '${s}' must be 1 to ${MAX_STRING_BYTES} bytes`, { hint: "use the host name or address" });
}

export class Membership {
  readonly name: string;
  /** This process's identity: a restarted node is a new member even under the same name. */
  readonly boot: number;
  private readonly addr: string;
  private incarnation: number;
  private hasLeft = false;
  private readonly opts: MembershipOptions;
  private readonly clock: () => number;
  private readonly sendTo: MembershipConfig["send"];
  private readonly random: () => number;
  private readonly onChange?: (event: MemberEvent) => void;
  private readonly members = new Map<string, Member>();
  /** Updates still to piggyback, one per member, with how often each went out. */
  private readonly gossip = new Map<string, { record: MemberRecord; sent: number }>();
  private readonly relays = new Map<number, Relay>();
  private probe: Probe | null = null;
  private probeOrder: string[] = [];
  private nextProbeAt = -Infinity;
  private nextReconnectAt = -Infinity;
  private seq = 0;
  /** Lifeguard's local health multiplier: 0 = healthy; scales our timeouts by 1 + health. */
  private healthScore = 0;
  private lastTickAt: number | null = null;
  private lastStallAt = -Infinity;

  constructor(config: MembershipConfig) {
    validName("name", config.self.name);
    validName("address", config.self.addr);
    this.opts = { ...MEMBERSHIP_DEFAULTS, ...config.options };
    if (this.opts.probeTimeoutMs >= this.opts.protocolPeriodMs)
      throw new AinftpError("membership", `probe timeout ${this.opts.probeTimeoutMs} ms is not below the protocol period ${this.opts.protocolPeriodMs} ms`, {
        hint: "leave time for the indirect probes: e.g. half the period",
      });
    this.name = config.self.name;
    this.addr = config.self.addr;
    this.incarnation = config.self.incarnation ?? 0;
    this.clock = config.clock;
    this.sendTo = config.send;
    this.random = config.random;
    this.onChange = config.onChange;
    this.boot = 1 + Math.floor(config.random() * 0xfffffffe);
    for (const seed of config.members) {
      if (seed.name === this.name) continue;
      validName("name", seed.name);
      validName("address", seed.addr);
      this.members.set(seed.name, this.newMember({ name: seed.name, addr: seed.addr, boot: 0, state: "alive", incarnation: 0 }));
    }
  }

  /** Local health (0 = healthy, up to maxHealth): how much this node currently doubts its own timeliness. */
  get health(): number {
    return this.healthScore;
  }

  /** Call every tickMs: runs the probe cycle and the timers. */
  tick(now = this.clock()): void {
    if (this.hasLeft) return;
    this.noticeStall(now);
    this.lastTickAt = now;
    this.sendDueNacks(now);
    this.advanceProbe(now);
    this.expireSuspicions(now);
    if (!this.probe && now >= this.nextProbeAt) this.startProbe(now);
    if (now >= this.nextReconnectAt) this.pingOneDead(now);
  }

  /** Messages dropped because they did not come from the member they name
   * as their sender, and gossip that tried to speak for another member
   * ("left" second hand, or a new address). */
  readonly rejected = { wrongSender: 0, secondHand: 0 };

  /** Handles one message; `from` is the sender's address as the transport saw it (replies go there).
   * A member speaks only for itself: a message whose sender record is not
   * the member at `from` changes nothing (counted in `rejected`). */
  receive(from: string, msg: MemberMessage, now = this.clock()): void {
    if (this.hasLeft) return;
    if (!this.speaksForItself(from, msg.sender)) {
      this.rejected.wrongSender++;
      return;
    }
    this.noticeStall(now);
    this.learn(msg.sender, now, true);
    for (const u of msg.updates) this.learn(u, now, false);
    const sender = this.members.get(msg.sender.name);
    switch (msg.kind) {
      case "ping":
        this.send(from, "ack", msg.seq, sender);
        break;
      case "ping-req":
        this.relay(from, msg, now);
        break;
      case "ack":
        this.onAck(msg, sender, now);
        break;
      case "indirect-ack":
        if (this.probe?.seq === msg.seq) this.probeSucceeded();
        break;
      case "nack":
        if (this.probe?.seq === msg.seq) this.probe.nacks++;
        break;
      case "leave": // the sender's record, now "left", said it all
        break;
    }
  }

  /** Tells every live member we are leaving; afterwards tick and receive do nothing. */
  leave(): void {
    if (this.hasLeft) return;
    this.incarnation++; // so our "left" outranks every record of us still in flight
    this.hasLeft = true;
    for (const m of this.members.values()) if (isLive(m)) this.send(m.addr, "leave", this.nextSeq(), m);
  }

  /** Live members (alive or suspect), fastest first: by smoothed RTT, unmeasured after measured, slow ones last. */
  ranking(): string[] {
    const srtt = (m: Member) => m.rtt.srtt ?? Number.MAX_VALUE;
    return [...this.members.values()]
      .filter(isLive)
      .sort((a, b) => Number(a.slow) - Number(b.slow) || srtt(a) - srtt(b) || (a.name < b.name ? -1 : 1))
      .map((m) => m.name);
  }

  /** The live members (alive or suspect) and whether each is slow: what a
   * round needs every tick, without building views (snapshot sorts RTTs). */
  live(): { name: string; slow: boolean }[] {
    return [...this.members.values()].filter(isLive).map((m) => ({ name: m.name, slow: m.slow }));
  }

  /** Ourselves first, then every member we know of, as plain data. */
  snapshot(now = this.clock()): MemberView[] {
    const ranks = new Map(this.ranking().map((name, i) => [name, i]));
    const self: MemberView = {
      name: this.name, addr: this.addr, boot: this.boot, state: this.hasLeft ? "left" : "alive", incarnation: this.incarnation,
      rttEwma: null, rttVar: 0, rttP99: null, lag: 0, rank: null, slow: false, self: true,
    };
    return [self, ...[...this.members.values()].map((m) => this.view(m, now, ranks.get(m.name) ?? null))];
  }

  // ---- probing -------------------------------------------------------------

  private scale(): number {
    return 1 + this.healthScore;
  }

  private startProbe(now: number): void {
    this.nextProbeAt = now + this.opts.protocolPeriodMs * this.scale();
    const target = this.nextTarget();
    if (!target) return;
    const seq = this.nextSeq();
    this.ping(target, seq, now);
    // a member whose answers take long (measured) gets that long, twice
    // over for the indirect probes; the next probe waits for this one
    const wait = this.answerMs(target);
    this.nextProbeAt = Math.max(this.nextProbeAt, now + 2 * wait);
    this.probe = {
      target: target.name, seq, askedHelpers: false, expectedNacks: 0, nacks: 0,
      directDeadline: now + wait,
      endAt: this.nextProbeAt,
    };
  }

  /** How long a probe waits for m's answer (ms): the probe timeout (scaled
   * by our local health), or, for a member measured slow, rttSlack times
   * its RTO (srtt + 4·rttvar): a member behind a slow link answers late,
   * it is not dead. */
  private answerMs(m: Member): number {
    const base = this.opts.probeTimeoutMs * this.scale();
    return m.rtt.srtt === null ? base : Math.max(base, this.opts.rttSlack * m.rtt.expected());
  }

  /** SWIM's randomized round robin: every live member once per pass, in a fresh order each pass. */
  private nextTarget(): Member | undefined {
    if (this.probeOrder.length === 0) this.probeOrder = this.shuffled([...this.members.values()].filter(isLive).map((m) => m.name));
    while (this.probeOrder.length) {
      const m = this.members.get(this.probeOrder.pop()!);
      if (m && isLive(m)) return m;
    }
    return undefined;
  }

  private advanceProbe(now: number): void {
    const p = this.probe;
    if (!p) return;
    if (!p.askedHelpers && now >= p.directDeadline) this.askHelpers(p);
    if (now >= p.endAt) this.probeFailed(p, now);
  }

  private askHelpers(p: Probe): void {
    p.askedHelpers = true;
    const helpers = this.shuffled([...this.members.values()].filter((m) => m.state === "alive" && m.name !== p.target));
    for (const h of helpers.slice(0, this.opts.indirectProbes)) {
      this.send(h.addr, "ping-req", p.seq, h, p.target);
      p.expectedNacks++;
    }
  }

  private probeSucceeded(): void {
    this.probe = null;
    this.lowerHealth();
  }

  private probeFailed(p: Probe, now: number): void {
    this.probe = null;
    // Lifeguard: helpers that did not even nack suggest our own messages are not getting through.
    this.raiseHealth(p.expectedNacks ? p.expectedNacks - p.nacks : 1);
    // Lifeguard: a node whose own probes keep failing with no helper even
    // nacking is the likely culprit (its link is slow or cut): it widens
    // its timeouts (scale) and accuses no one; the healthy members' word
    // (gossip) still reaches it
    if (this.healthScore >= this.opts.accuseMaxHealth) return;
    const m = this.members.get(p.target);
    if (!m || !isLive(m)) return;
    if (m.state === "alive") this.transition(m, "suspect", m.incarnation, now, this.name);
    else this.confirm(m, this.name);
  }

  private onAck(msg: MemberMessage, sender: Member | undefined, now: number): void {
    if (sender && sender.boot === msg.sender.boot) this.measure(sender, msg.seq, now);
    const relay = this.relays.get(msg.seq);
    if (relay) {
      this.relays.delete(msg.seq);
      this.send(relay.requesterAddr, "indirect-ack", relay.requesterSeq, this.members.get(relay.requesterName));
    }
    // a suspect that answers us itself is not dead: its suspicion starts
    // over (its refutation, with a higher incarnation, may be on a slow way)
    if (this.opts.rttSlack > 0 && sender && sender.boot === msg.sender.boot && sender.state === "suspect" && sender.suspicion) sender.suspicion.startedAt = now;
    if (this.probe?.seq === msg.seq && this.probe.target === msg.sender.name) this.probeSucceeded();
  }

  private relay(from: string, msg: MemberMessage, now: number): void {
    const target = msg.target === undefined ? undefined : this.members.get(msg.target);
    if (!target || target.state === "left") return; // we cannot help with a member we do not know
    const seq = this.nextSeq();
    // Nack within half our probe timeout so the answer is back inside the requester's indirect window.
    this.relays.set(seq, {
      requesterAddr: from, requesterName: msg.sender.name, requesterSeq: msg.seq, nackAt: now + this.opts.probeTimeoutMs / 2, nacked: false,
      expireAt: now + 2 * this.answerMs(target),
    });
    this.ping(target, seq, now);
  }

  private sendDueNacks(now: number): void {
    for (const [seq, r] of this.relays) {
      if (now >= r.expireAt) this.relays.delete(seq);
      if (r.nacked || now < r.nackAt) continue;
      // the nack says we are alive and tried; a late ack still becomes an
      // indirect-ack until the relay expires
      r.nacked = true;
      this.send(r.requesterAddr, "nack", r.requesterSeq, this.members.get(r.requesterName));
    }
  }

  private pingOneDead(now: number): void {
    this.nextReconnectAt = now + this.opts.reconnectMs;
    const dead = [...this.members.values()].filter((m) => m.state === "dead");
    if (dead.length) this.ping(dead[Math.floor(this.random() * dead.length)], this.nextSeq(), now);
  }

  private ping(m: Member, seq: number, now: number): void {
    m.lastPing = { seq, sentAt: now, answered: false };
    this.send(m.addr, "ping", seq, m);
  }

  // ---- our own health ------------------------------------------------------

  /** A tick far later than due means we were not running: nothing we saw (or missed) meanwhile is evidence. */
  private noticeStall(now: number): void {
    if (this.lastTickAt === null) return;
    const late = now - this.lastTickAt - this.opts.tickMs;
    if (late <= this.opts.lateTickMs) return;
    this.lastTickAt = now;
    this.lastStallAt = now;
    this.raiseHealth(1);
    // Time we spent stalled does not count against anyone: push every deadline past it.
    if (this.probe) {
      this.probe.directDeadline += late;
      this.probe.endAt += late;
    }
    for (const r of this.relays.values()) (r.nackAt += late), (r.expireAt += late);
    for (const m of this.members.values()) if (m.suspicion) m.suspicion.startedAt += late;
  }

  private raiseHealth(by: number): void {
    this.healthScore = Math.min(this.opts.maxHealth, this.healthScore + Math.max(0, by));
  }

  private lowerHealth(): void {
    this.healthScore = Math.max(0, this.healthScore - 1);
  }

  // ---- what we learn -------------------------------------------------------

  /** Whether a message from `from` may carry `sender` as its first-hand
   * record: the named member must be the one at that address (and an
   * unknown name must not take a known member's address, nor ours). */
  private speaksForItself(from: string, sender: MemberRecord): boolean {
    if (sender.name === this.name || sender.addr !== from) return false;
    const m = this.members.get(sender.name);
    if (m) return m.addr === from;
    if (from === this.addr) return false;
    for (const x of this.members.values()) if (x.addr === from) return false;
    return true;
  }

  private learn(r: MemberRecord, now: number, firstHand: boolean): void {
    if (r.name === this.name) return this.hearAboutSelf(r);
    const m = this.members.get(r.name);
    // second hand, nobody may say that another member left, nor move it to
    // another address: only the member itself can (a Byzantine member could
    // otherwise evict or redirect any other)
    if (!firstHand && m && (r.state === "left" || (r.addr && r.addr !== m.addr))) {
      this.rejected.secondHand++;
      return;
    }
    if (!m) {
      if (r.state === "alive") this.join(r, now);
      return;
    }
    if (r.boot !== m.boot) {
      if (this.acceptsNewBoot(m, r, firstHand)) this.adoptBoot(m, r, now);
      return;
    }
    if (!overrides(r, m)) {
      if (r.state === "suspect" && m.state === "suspect" && r.incarnation === m.incarnation) this.confirm(m, r.by ?? "");
      return;
    }
    m.addr = r.addr || m.addr;
    this.transition(m, r.state, r.incarnation, now, r.by ?? "");
  }

  /** Gossip can only accuse this process; a higher incarnation of "alive" answers everywhere. */
  private hearAboutSelf(r: MemberRecord): void {
    if (r.boot !== this.boot || (r.state !== "suspect" && r.state !== "dead") || r.incarnation < this.incarnation) return;
    this.incarnation = r.incarnation + 1;
    this.enqueue(this.selfRecord());
    this.raiseHealth(1); // Lifeguard: being suspected hints that we are the slow one
    // Refute at once, to every live member: a ping carries our new record
    // first hand. Left to the next probe and ack, the refutation could take
    // a probe pass, longer than a confirmed suspicion lasts at N = 3 (one
    // other member confirms it): at 10% loss that cost a false death about
    // every 20 simulated minutes, none in 60 with this.
    for (const m of this.members.values()) if (isLive(m)) this.send(m.addr, "ping", this.nextSeq(), m);
  }

  /** A new boot id replaces a seed not heard from, a member already gone, or any member when it says so itself. */
  private acceptsNewBoot(m: Member, r: MemberRecord, firstHand: boolean): boolean {
    if (m.retiredBoots.has(r.boot)) return false;
    return m.boot === 0 || firstHand || m.state === "dead" || m.state === "left";
  }

  private adoptBoot(m: Member, r: MemberRecord, now: number): void {
    m.retiredBoots.add(m.boot);
    Object.assign(m, this.newMember(r), { retiredBoots: m.retiredBoots });
    if (r.state === "suspect") m.suspicion = this.newSuspicion(r.by ?? "", now, m);
    this.enqueue(this.recordOf(m));
    this.emit(r.state === "alive" ? "join" : r.state, m, now);
  }

  private join(r: MemberRecord, now: number): void {
    const m = this.newMember(r);
    this.members.set(m.name, m);
    this.enqueue(this.recordOf(m));
    this.emit("join", m, now);
  }

  private transition(m: Member, state: MemberState, incarnation: number, now: number, accuser = ""): void {
    const was = m.state;
    m.state = state;
    m.incarnation = incarnation;
    m.suspicion = state === "suspect" ? this.newSuspicion(accuser, now, m) : null;
    this.enqueue(this.recordOf(m, accuser));
    if (state !== was) this.emit(state, m, now);
  }

  // ---- suspicion -----------------------------------------------------------

  private liveCount(): number {
    return 1 + [...this.members.values()].filter(isLive).length;
  }

  private newSuspicion(accuser: string, now: number, m: Member): Suspicion {
    const n = this.liveCount();
    // at least twice the suspect's own answer time: a member behind a slow
    // link needs about that long to hear of it and refute
    const minMs = Math.max(this.opts.suspicionMult * Math.max(1, Math.log10(n)) * this.opts.protocolPeriodMs * this.scale(), 2 * this.answerMs(m));
    return {
      startedAt: now,
      accusers: new Set([accuser]),
      expected: Math.max(0, Math.min(this.opts.suspicionMult - 2, n - 2)),
      minMs,
      maxMs: minMs * this.opts.suspicionMaxMult,
    };
  }

  /** Another member suspects m independently: the timeout shrinks, and we pass the word on. */
  private confirm(m: Member, accuser: string): void {
    const s = m.suspicion;
    if (!s || s.accusers.has(accuser)) return;
    s.accusers.add(accuser);
    this.enqueue(this.recordOf(m, accuser));
  }

  private expireSuspicions(now: number): void {
    for (const m of this.members.values())
      if (m.state === "suspect" && m.suspicion && now - m.suspicion.startedAt >= suspicionTimeout(m.suspicion))
        this.transition(m, "dead", m.incarnation, now);
  }

  // ---- speed ---------------------------------------------------------------

  private measure(m: Member, seq: number, now: number): void {
    const ping = m.lastPing;
    if (!ping || ping.seq !== seq || ping.answered) return;
    ping.answered = true;
    if (ping.sentAt < this.lastStallAt) return; // we stalled meanwhile: the delay is ours, not theirs
    const rtt = now - ping.sentAt;
    m.lag = Math.max(0, rtt - m.rtt.expected());
    m.rtt.add(rtt);
    this.observe(m, m.lag > this.opts.slowLagMs || this.farAboveMedian(m, rtt), now);
  }

  private farAboveMedian(m: Member, rtt: number): boolean {
    const others = [...this.members.values()].filter((o) => o !== m && isLive(o) && o.rtt.srtt !== null).map((o) => o.rtt.srtt!);
    return others.length > 0 && rtt > Math.max(this.opts.slowRttFloorMs, this.opts.slowRttFactor * median(others));
  }

  /** Hysteresis: slowAfter bad observations in a row to go slow, fastAfter good ones to come back. */
  private observe(m: Member, bad: boolean, now: number): void {
    m.badRun = bad ? m.badRun + 1 : 0;
    m.goodRun = bad ? 0 : m.goodRun + 1;
    if (!m.slow && m.badRun >= this.opts.slowAfter) {
      m.slow = true;
      this.emit("slow", m, now);
    } else if (m.slow && m.goodRun >= this.opts.fastAfter) {
      m.slow = false;
      this.emit("fast", m, now);
    }
  }

  private lagOf(m: Member, now: number): number {
    const p = m.lastPing;
    return p && !p.answered ? Math.max(0, now - p.sentAt - m.rtt.expected()) : m.lag;
  }

  // ---- messages out --------------------------------------------------------

  private send(to: string, kind: MessageKind, seq: number, recipient: Member | undefined, target?: string): void {
    const msg: MemberMessage = { kind, seq, sender: this.selfRecord(), ...(target ? { target } : {}), updates: [] };
    msg.updates = this.piggyback(recipient, messageBytes(msg));
    this.sendTo(to, msg);
  }

  /** The least-sent updates that fit the datagram; a suspected recipient hears about itself first. */
  private piggyback(recipient: Member | undefined, used: number): MemberRecord[] {
    const picked: MemberRecord[] = [];
    let room = this.opts.maxMessageBytes - used;
    // Lifeguard's buddy system: a member we suspect (or think dead) learns it from us at once, so it can refute in time.
    const buddy = recipient && (recipient.state === "suspect" || recipient.state === "dead") ? recipient.name : undefined;
    if (buddy) {
      const own = this.recordOf(recipient!);
      picked.push(own);
      room -= recordBytes(own);
    }
    const limit = this.opts.gossipMult * Math.ceil(Math.log2(this.liveCount() + 1));
    for (const [name, entry] of [...this.gossip].sort((a, b) => a[1].sent - b[1].sent)) {
      if (picked.length === MAX_UPDATES) break;
      const size = recordBytes(entry.record);
      if (size > room || name === buddy) continue;
      picked.push(entry.record);
      room -= size;
      if (++entry.sent >= limit) this.gossip.delete(name);
    }
    return picked;
  }

  private enqueue(record: MemberRecord): void {
    this.gossip.set(record.name, { record, sent: 0 });
  }

  private selfRecord(): MemberRecord {
    return { name: this.name, addr: this.addr, boot: this.boot, state: this.hasLeft ? "left" : "alive", incarnation: this.incarnation };
  }

  private recordOf(m: Member, accuser?: string): MemberRecord {
    const by = m.state === "suspect" ? accuser || [...(m.suspicion?.accusers ?? [])][0] : undefined;
    return { name: m.name, addr: m.addr, boot: m.boot, state: m.state, incarnation: m.incarnation, ...(by ? { by } : {}) };
  }

  // ---- helpers -------------------------------------------------------------

  private newMember(r: MemberRecord): Member {
    return {
      name: r.name, addr: r.addr, boot: r.boot, state: r.state, incarnation: r.incarnation,
      suspicion: null, retiredBoots: new Set(), rtt: new RttEstimator(this.opts.rttWindow),
      lastPing: null, lag: 0, slow: false, badRun: 0, goodRun: 0,
    };
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  private shuffled<T>(xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = Math.floor(this.random() * (i + 1));
      [xs[i], xs[j]] = [xs[j], xs[i]];
    }
    return xs;
  }

  private view(m: Member, now: number, rank: number | null): MemberView {
    return {
      name: m.name, addr: m.addr, boot: m.boot, state: m.state, incarnation: m.incarnation,
      rttEwma: m.rtt.srtt, rttVar: m.rtt.rttvar, rttP99: m.rtt.p99(), lag: this.lagOf(m, now),
      rank, slow: m.slow, self: false,
    };
  }

  private emit(kind: MemberEventKind, m: Member, now: number): void {
    if (!this.onChange) return;
    const rank = this.ranking().indexOf(m.name);
    this.onChange({ kind, member: this.view(m, now, rank < 0 ? null : rank) });
  }
}

/** Lifeguard: from maxMs with no confirmation down to minMs at `expected` confirmations, logarithmically. */
function suspicionTimeout(s: Suspicion): number {
  const confirmations = s.accusers.size - 1;
  if (s.expected === 0 || confirmations >= s.expected) return s.minMs;
  return s.maxMs - ((s.maxMs - s.minMs) * Math.log(confirmations + 1)) / Math.log(s.expected + 1);
}

/** SWIM's precedence between two records of one process: a higher incarnation wins, at equal
 * incarnation suspect beats alive and dead beats both; left is final, and a dead member is not suspected again. */
function overrides(r: MemberRecord, m: Member): boolean {
  if (m.state === "left") return false;
  if (r.state === "left") return true;
  if (r.state === "suspect" && m.state === "dead") return false;
  if (r.incarnation !== m.incarnation) return r.incarnation > m.incarnation;
  return STATES.indexOf(r.state) > STATES.indexOf(m.state);
}
