// What the communicator needs from the world, as three ports: the clock,
// the datagram socket (with the poll that waits on it), and the attached
// kernel program's maps. Communicator.open() builds the real ones; the
// simulator (test/sim/) builds a virtual clock and an in-process network.
//
// Hot-path rule: a real port adds no await, allocation or Map lookup per
// wake-up. wait() returns the ready mask synchronously; only a simulated
// port returns a promise, and the round loop awaits only then.
import type { Pointer } from "bun:ffi";
import { coll } from "../../native/collective.ts";
import type { Counters, JobConfig, SlotState } from "../abi.ts";
import type { CloseOptions, MapName } from "../reflex.ts";
import type { UdpEndpoint } from "../transport.ts";

export interface Clock {
  /** Milliseconds, monotonic (performance.now() in production). */
  now(): number;
  /** Lets signal handlers and timers run (Bun.sleep(0) in production). */
  yield(): Promise<void>;
  /** Blocks the caller for ms (close's goodbyes). */
  sleepSync(ms: number): void;
}

/** One batch of received datagrams (src/transport.ts RecvBatch). */
export interface Received {
  count: number;
  datagram(i: number): Uint8Array;
  sourceAddr(i: number): string;
}

/** What wait() watches and reports: bit 0 the program's event ring, bit 1
 * the socket, bit 2 the AF_XDP socket (the order of ainftp_wait3's fds). */
export const READY_RING = 1;
export const READY_SOCK = 2;
export const READY_XSK = 4;

export interface Datagrams {
  /** Sends nsegs segments of segSize bytes (the last lastSize) as one GSO
   * burst; returns the datagrams sent. */
  sendGso(addr: string, port: number, buf: Uint8Array, segSize: number, nsegs: number, lastSize?: number): number;
  /** From now on, send addr one frame per datagram, never a GSO burst: its
   * program runs in generic XDP mode, which sees a burst that a virtual
   * link carried unsegmented as one frame it cannot parse (and drops). */
  sendPlainTo(addr: string): void;
  /** The datagrams queued now (timeout 0: never blocks). */
  recvBatch(timeoutMs: number): Received;
  /** Waits up to ms for any of `watch` (READY_* bits) to be ready: the ready
   * bits, synchronously, or (simulated) a promise of them. spinUs: first
   * look without sleeping for that long, yielding the CPU between looks (a
   * round's waits; the simulator's virtual time ignores it). */
  wait(watch: number, ms: number, spinUs?: number): number | Promise<number>;
  close(): void;
}

/** The program's event ring (src/reflex.ts EventRing). */
export interface EventRingPort {
  readonly raw: Uint32Array;
  readonly bytes: Uint8Array;
  pollRaw(timeoutMs?: number): number;
  /** An fd that polls readable when the program has woken userspace. */
  epollFd(): number;
  close(): void;
}

/** The subset of ReflexMaps (src/reflex.ts) the communicator uses: the
 * config, slots, results, sentry maps, and raw pointers for native/collective.c. */
export interface ReflexPort {
  readonly chunks: number;
  config(): JobConfig;
  setConfig(cfg: JobConfig): void;
  counters(): Counters;
  resetState(): void;
  resetBank(bank: number): void;
  setMemberAddrs(addrsBe: number[]): void;
  /** The round's owners, for the program's owner check (issue 16). */
  setPlan(round: number, owners: readonly number[]): void;
  /** The job key the program checks data-plane MACs under (null: none). */
  setJobKey(key: Uint8Array | null): void;
  closeSlots(round: number, chunks: ArrayLike<number>, o: CloseOptions): number;
  slot(index: number): SlotState;
  /** Empties slots (under their locks): the next contribution claims each afresh. */
  clearSlots(indices: ArrayLike<number>): void;
  result(index: number): { tag: number; count: number; contributors: number; exp: number; flags: number; writes: number; rank: number; v: Int16Array };
  /** Contributor counts of consecutive result entries, read in place. */
  contributorsInto(first: number, out: Uint16Array): Uint16Array;
  resultEntry(index: number): { v: Int16Array; publish: (tag: number, count: number, contributors: number, exp: number) => void };
  gates(): Int32Array;
  obs(index: number): { tag: number; energy: Int16Array };
  sentryWorkers(members?: number): { accepted: number; rejected: number }[];
  accBase(): Pointer;
  resultsBase(): Pointer;
  mapFd(name: MapName): number;
  events(): EventRingPort;
  close(): void;
}

export const realClock: Clock = {
  now: () => performance.now(),
  yield: () => Bun.sleep(0),
  sleepSync: (ms) => Bun.sleepSync(ms),
};

/** The real socket, polled together with the event ring and the AF_XDP
 * socket (their fds fixed at open; -1 where there is none). */
export class SocketDatagrams implements Datagrams {
  private ringFd = -1;
  private xskFd = -1;
  constructor(private readonly sock: UdpEndpoint) {}

  /** The fds wait() polls besides the socket. */
  watchFds(ringFd: number, xskFd: number): void {
    this.ringFd = ringFd;
    this.xskFd = xskFd;
  }

  private readonly plain = new Set<string>();

  sendGso(addr: string, port: number, buf: Uint8Array, segSize: number, nsegs: number, lastSize?: number): number {
    return this.sock.sendGso(addr, port, buf, segSize, nsegs, lastSize, this.plain.size > 0 && this.plain.has(addr));
  }

  sendPlainTo(addr: string): void {
    this.plain.add(addr);
  }

  recvBatch(timeoutMs: number): Received {
    return this.sock.recvBatch(timeoutMs);
  }

  wait(watch: number, ms: number, spinUs = 0): number {
    if (watch === READY_SOCK) return coll.ainftp_wait3_spin(this.sock.fd, -1, -1, ms, spinUs) << 1;
    return coll.ainftp_wait3_spin(watch & READY_RING ? this.ringFd : -1, this.sock.fd, watch & READY_XSK ? this.xskFd : -1, ms, spinUs);
  }

  close(): void {
    this.sock.close();
  }
}
