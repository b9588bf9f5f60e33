// One node start-up, shared by `ainftp swarm` (src/node.ts) and `swarm
// --serve` (src/local.ts): the MTU check and the chunk size, the map size,
// signal handlers, attach-if-needed, the communicator and its swarm, and the
// way out (a polite close that serves the peers' last resends, or an abort),
// detaching only what we attached.
import { BANKS, FRAME_OVERHEAD_V4, MAC_BYTES, SIZEOF, payloadBytes, type BitWidth } from "../abi.ts";
import { attachForNode, chunkElemsForMtu, detach, interfaceMtu, type AttachMode } from "../attach.ts";
import { Communicator, type CommunicatorOptions } from "../collective.ts";
import { AinftpError } from "../errors.ts";
import type { AuthMode } from "../jobkey.ts";
import { chunkCount } from "../quantize.ts";
import { Swarm } from "../swarm.ts";

/** Maps for at most this many chunks; a larger gradient takes several rounds. */
export const MAX_MAP_CHUNKS = 8192;
/** Kernel memory of one chunk's map entries (slots, sums, results, sentry
 * energies; both banks). Entries are sized for MAX_ELEMS whatever the chunk:
 * about 54 KB (21 KB when MAX_ELEMS was 1720), so MAX_MAP_CHUNKS take up to
 * 442 MB (was 170 MB); a 16 MiB round takes 51 MB at MTU 9000 (940 chunks),
 * 132 MB at 3504 and 314 MB at 1500. Entries sized at load from the job's
 * chunk would make it follow the round's bytes (docs/bench.md "MTU"). */
export const MAP_BYTES_PER_CHUNK = BANKS * (SIZEOF.ainftp_slot + SIZEOF.ainftp_acc + SIZEOF.ainftp_result + SIZEOF.ainftp_obs);

/** The chunks a node's maps are sized for: the round's, at most MAX_MAP_CHUNKS. */
export function mapChunks(roundElems: number, chunkElems: number): number {
  return Math.min(MAX_MAP_CHUNKS, chunkCount(roundElems, chunkElems));
}

/** IPv4 + UDP + ainftp header in front of a chunk (the MTU excludes Ethernet's 14). */
const L3_OVERHEAD = FRAME_OVERHEAD_V4 - 14;

export { chunkElemsForMtu, interfaceMtu };

/** Bytes of MAC after a data packet's values under these options. */
export function dataTagBytes(o: { key?: Uint8Array | null; auth?: AuthMode }): number {
  return o.key && o.auth !== "off" ? MAC_BYTES : 0;
}

/** The program may have been attached for a chunk size that leaves no room
 * for the MAC at this MTU: say so before the first round fails. */
export function checkPacketFits(comm: Communicator, mtu: number, iface: string, op = "swarm"): void {
  if (L3_OVERHEAD - 32 + comm.packetBytes <= mtu) return;
  const payload = payloadBytes(comm.bits as BitWidth, comm.chunkElems); // --bits 8 / 4: packed values
  const fit = chunkElemsForMtu(mtu, comm.packetBytes - 32 - payload);
  throw new AinftpError(op, `packets of ${comm.chunkElems} values${comm.packetBytes > 32 + payload ? " and a MAC" : ""} do not fit ${iface}'s MTU ${mtu}`, {
    hint: `re-attach for ${fit} values per packet on every member (ainftp detach ${iface}; ainftp attach ${iface} --chunk-elems ${fit}), or raise the MTU`,
  });
}


/** What names a node's job: shared by `swarm` (NodeOptions) and `--serve` (ServeOptions). */
export interface JobOptions {
  /** Interface the program is (or gets) attached to. */
  iface: string;
  /** Every member's IPv4 address, in rank order. */
  peers: string[];
  rank: number;
  port?: number;
  job?: number;
  /** XDP attach mode when we attach. */
  mode?: AttachMode;
  /** Elements per packet; default from the interface MTU. */
  chunkElems?: number;
  /** The job key and what its MAC covers (see CommunicatorOptions.key / auth). */
  key?: Uint8Array | null;
  auth?: AuthMode;
}

export interface BringupOptions extends JobOptions {
  /** Names the command in errors ("swarm", "swarm --serve"). */
  op: string;
  /** Elements of the largest round: sizes the maps (at most MAX_MAP_CHUNKS chunks). */
  roundElems: number;
  keepAttached?: boolean;
  /** One line each for what the user should know at start (stale pins replaced). */
  note?: (line: string) => void;
  /** The MTU error's advice besides --chunk-elems (e.g. how to raise the MTU). */
  mtuAdvice?: (needed: number) => string;
}

/** A node on its way up, and out: see bringUp. */
export class Node {
  readonly chunkElems: number;
  readonly chunks: number;
  readonly mtu: number;
  /** Set by open(): whether we attached the program (stale pins are replaced, never used). */
  attachedByUs = false;
  comm: Communicator | undefined;
  swarm: Swarm | undefined;
  /** What a SIGINT/SIGTERM does; by default: abort, detach ours, exit 130. */
  onSignal: (sig: NodeJS.Signals) => void;
  private readonly handler = (sig: NodeJS.Signals) => this.onSignal(sig);
  private ended = false;

  constructor(private readonly o: BringupOptions) {
    const mtu = (this.mtu = interfaceMtu(o.iface));
    const fits = chunkElemsForMtu(mtu, dataTagBytes(o));
    this.chunkElems = o.chunkElems ?? fits;
    if (this.chunkElems > fits) {
      const needed = L3_OVERHEAD + 2 * this.chunkElems + dataTagBytes(o);
      throw new AinftpError(o.op, `--chunk-elems ${this.chunkElems} needs an MTU of at least ${needed}; ${o.iface} has ${mtu}`, {
        hint: `raise it on every member${o.mtuAdvice ? ` (${o.mtuAdvice(needed)})` : ""} or use --chunk-elems ${fits}`,
      });
    }
    this.chunks = mapChunks(o.roundElems, this.chunkElems);
    this.onSignal = () => {
      this.comm?.abort();
      this.detachOurs();
      process.exit(130);
    };
    process.on("SIGINT", this.handler);
    process.on("SIGTERM", this.handler);
  }

  /** Attaches the program unless ainftp is already there, opens the
   * communicator (waiting for every peer) and starts its swarm. */
  async open(opts: Omit<CommunicatorOptions, "iface" | "peers" | "rank" | "port" | "job" | "key" | "auth">, log?: (line: string) => void): Promise<Communicator> {
    const o = this.o;
    const att = await attachForNode(o.iface, { port: o.port, mode: o.mode, jobId: o.job, workers: o.peers.length, chunks: this.chunks, chunkElems: this.chunkElems });
    this.attachedByUs = att.attachedByUs;
    for (const line of att.notes) o.note?.(line);
    this.comm = await Communicator.open({ iface: o.iface, peers: o.peers, rank: o.rank, port: o.port, job: o.job, key: o.key, auth: o.auth, ...opts });
    checkPacketFits(this.comm, this.mtu, o.iface, o.op);
    this.swarm = new Swarm(this.comm, { iface: o.iface, log });
    return this.comm;
  }

  /** The way out: stops the swarm, leaves the job (politely, serving the
   * peers' last resends for up to lingerMs, or at once), removes the signal
   * handlers and detaches what we attached. */
  end(how: "polite" | "abort", lingerMs?: number): void {
    if (this.ended) return;
    this.ended = true;
    this.onSignal = () => {};
    this.swarm?.close();
    if (how === "abort") this.comm?.abort();
    else this.comm?.close(lingerMs);
    process.off("SIGINT", this.handler);
    process.off("SIGTERM", this.handler);
    this.detachOurs();
  }

  private detachOurs(): void {
    if (!this.attachedByUs || this.o.keepAttached) return;
    try {
      detach(this.o.iface);
    } catch {
      // best effort on the way out
    }
  }
}

/** Checks the MTU against the chunk size, sizes the maps and installs the
 * signal handlers; then open() and, in a finally, end(). */
export function bringUp(o: BringupOptions): Node {
  return new Node(o);
}
