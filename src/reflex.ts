// The Reflex's userspace handle: opens the embedded XDP object, loads it with
// the job's sizes, and gives typed access to its maps (config, counters,
// slots, the mmapped sums and results, the event ring). Attaching to an
// interface lives in src/attach.ts.
import { ptr, toArrayBuffer, type Pointer } from "bun:ffi";
import objPath from "../bpf/build/ainftp.bpf.o" with { type: "file" };
import { libbpf } from "../native/libbpf.ts";
import { closeFd, cstr, ifNameToIndex } from "../native/libc.ts";
import { libbpfLog, shim } from "../native/shim.ts";
import {
  BANKS, COUNTERS, DEFAULT_PORT, decodeSums, F_CONFIRM, F_FORCE, MAX_CHUNKS, MAX_ELEMS, MAX_WORKERS, PKT_CLOSE, SIZEOF, decodeConfig, encodePlan,
  decodeEvents, decodeSlot, encodeConfig, type Counters, type JobConfig, type ReflexEvent, type SlotState,
} from "./abi.ts";
import { AinftpError, check, privilegeHint } from "./errors.ts";
import { datagram, frame } from "./packet.ts";
import { ipv4ToBe32 } from "./transport.ts";

/** bpf_map_update_elem: take the value's spin lock while writing (linux/bpf.h). */
const BPF_F_LOCK = 4n;

const XDP_DROP = 1;

/** Map names in the object, and the names they are pinned under. */
export const MAP_NAMES = [
  "job_config", "slots", "acc", "results", "bank_state", "counters", "events", "member_addrs", "xsks",
  "sentry_gate", "sentry_obs", "sentry_workers", "contribs", "round_plan", "job_key",
] as const;
export type MapName = (typeof MAP_NAMES)[number];

export interface LoadOptions {
  /** UDP destination port the program consumes. */
  port?: number;
  /** Chunks per round: sizes the slot, sum and result maps (× 2 banks). */
  chunks?: number;
  /** Benchmarks only: repeated contributions are summed again, not dropped. */
  benchNoDedupe?: boolean;
}

let objBytes: Uint8Array | undefined;
/** The embedded object, or AINFTP_BPF_OBJECT (a developer override, used by
 * the tests to load a program the verifier rejects). */
async function objectBytes(): Promise<Uint8Array> {
  const override = process.env.AINFTP_BPF_OBJECT;
  if (override) return new Uint8Array(await Bun.file(override).arrayBuffer());
  objBytes ??= new Uint8Array(await Bun.file(objPath).arrayBuffer());
  return objBytes;
}

export function possibleCpus(): number {
  return libbpf.libbpf_num_possible_cpus();
}

/** Reads a per-CPU counters value and sums it over CPUs. */
export function readCounters(fd: number): Counters {
  const ncpu = possibleCpus();
  const stride = SIZEOF.ainftp_counters; // already a multiple of 8
  const buf = new BigUint64Array((ncpu * stride) / 8);
  const key = new Uint32Array([0]);
  check(libbpf.bpf_map_lookup_elem(fd, key, buf), "read counters", "lookup failed");
  const out = {} as Counters;
  COUNTERS.forEach((name, i) => {
    let sum = 0n;
    for (let c = 0; c < ncpu; c++) sum += buf[c * (stride / 8) + i];
    out[name] = Number(sum);
  });
  return out;
}

export function readConfig(fd: number): JobConfig {
  const b = new Uint8Array(SIZEOF.ainftp_config);
  check(libbpf.bpf_map_lookup_elem(fd, new Uint32Array([0]), b), "read config", "lookup failed");
  return decodeConfig(b);
}

/** How closeSlots builds its CLOSE frames: they pass the program's header
 * checks like any packet of this host's. */
export interface CloseOptions {
  /** F_FORCE: close the slots whatever they hold; an untouched one is claimed
   * closed and empty (its event carries 0 contributors). Without it a slot
   * closes only if it holds every rank its bank now waits for (bankMask). */
  force: boolean;
  /** This host's rank and the job's id. */
  rank: number;
  jobId: number;
  /** This host's IPv4 address, the frames' source (needed with CFG_CHECK_SOURCE). */
  srcAddr?: string;
  /** F_CONFIRM: confirm the slots at this scale (the plan's) instead of
   * closing them: a speculative slot holding it (and nobody outside the
   * ranks it waits for) becomes ordinary and closes if full; any other is
   * claimed empty at it (speculate.ts). */
  confirmExp?: number;
}

export function writeConfig(fd: number, cfg: JobConfig): void {
  check(libbpf.bpf_map_update_elem(fd, new Uint32Array([0]), encodeConfig(cfg), 0n), "write config", "update failed");
}

/** Typed access to the Reflex's maps, however they were opened: from a
 * freshly loaded object (ReflexObject) or from the pins of an attached
 * program (PinnedReflex). */
/** Bytes per entry of an mmapped array map: values are laid out 8-aligned. */
const RESULT_STRIDE = Math.ceil(SIZEOF.ainftp_result / 8) * 8;

export abstract class ReflexMaps implements Disposable {
  /** Chunks the slot, sum and result maps were sized for (x BANKS entries). */
  readonly chunks: number;
  protected maps = new Map<MapName, number>();
  private mmaps: { addr: Pointer; len: number; kind: MapName }[] = [];
  private rings: EventRing[] = [];
  private open = true;

  protected constructor(chunks: number) {
    this.chunks = chunks;
  }

  mapFd(name: MapName): number {
    const fd = this.maps.get(name);
    if (fd === undefined || !this.open) throw new AinftpError("map", `${name}: object closed`);
    return fd;
  }

  /** Map fds of a pinned attachment are the same maps: see src/attach.ts. */
  get mapFds(): ReadonlyMap<MapName, number> {
    return this.maps;
  }

  setConfig(cfg: JobConfig): void {
    if (cfg.chunks > this.chunks)
      throw new AinftpError("config", `chunks ${cfg.chunks} > ${this.chunks} the maps were sized for`);
    writeConfig(this.mapFd("job_config"), cfg);
  }

  config(): JobConfig {
    return readConfig(this.mapFd("job_config"));
  }

  counters(): Counters {
    return readCounters(this.mapFd("counters"));
  }

  /** The XDP program's fd, for BPF_PROG_TEST_RUN. */
  protected abstract programFd(): number;
  /** The UDP port the program consumes. */
  protected abstract listenPort(): number;

  /** Runs the program on one frame (BPF_PROG_TEST_RUN), on this namespace's
   * loopback device or, with ifindex, as if it arrived on that interface.
   * ns is per run. */
  testRun(frame: Uint8Array, repeat = 1, ifindex = 0): { action: number; ns: number; out: Uint8Array } {
    if (!this.open) throw new AinftpError("test run", "program: object closed");
    const out = new Uint8Array(frame.length + 256);
    const res = new Uint32Array(3);
    check(
      shim.ainftp_test_run_on(this.programFd(), frame, frame.length, out, out.length, repeat, ifindex, res),
      "test run", "BPF_PROG_TEST_RUN failed",
    );
    return { action: res[0], ns: res[1], out: out.subarray(0, res[2]) };
  }

  /** Closes this host's slots of `round` for `chunks` in the program itself,
   * under the slots' locks (a CLOSE frame run through BPF_PROG_TEST_RUN: see
   * ainftp_abi.h), so no contribution races the decision. Each slot closed
   * raises EV_SLOT_COMPLETE as a full one does. Up to chunk_elems indices
   * go in a frame; returns the number of frames run. */
  closeSlots(round: number, chunks: ArrayLike<number>, o: CloseOptions): number {
    if (chunks.length === 0) return 0;
    const per = Math.min(this.config().chunkElems, MAX_ELEMS);
    if (per < 1) throw new AinftpError("close", "the config's chunk_elems is 0: no chunk list fits a frame");
    const src = o.srcAddr === undefined ? undefined : new Uint8Array(new Uint32Array([ipv4ToBe32(o.srcAddr)]).buffer);
    const port = this.listenPort();
    let frames = 0;
    for (let at = 0; at < chunks.length; at += per) {
      const list = new Array<number>(Math.min(per, chunks.length - at));
      for (let i = 0; i < list.length; i++) {
        const c = chunks[at + i];
        if (!Number.isInteger(c) || c < 0 || c >= MAX_CHUNKS)
          throw new AinftpError("close", `chunk ${c} is not a chunk index`, { hint: `chunks are 0..${MAX_CHUNKS - 1}` });
        list[i] = c;
      }
      const f = frame(
        datagram({
          type: PKT_CLOSE, flags: (o.force ? F_FORCE : 0) | (o.confirmExp !== undefined ? F_CONFIRM : 0), jobId: o.jobId, round, chunk: 0, rank: o.rank,
          exp: o.confirmExp ?? 0,
        }, list),
        { dstPort: port },
      );
      if (src) f.set(src, 14 + 12); // the IPv4 source address
      const { action } = this.testRun(f);
      // every frame for our port is dropped; a pass means it was not ours
      if (action !== XDP_DROP) throw new AinftpError("close", `the program did not take the close frame (XDP action ${action})`);
      frames++;
    }
    return frames;
  }

  slot(index: number): SlotState {
    const b = new Uint8Array(SIZEOF.ainftp_slot);
    check(libbpf.bpf_map_lookup_elem(this.mapFd("slots"), new Uint32Array([index]), b), "slot", `lookup ${index} failed`);
    return decodeSlot(b);
  }

  /** Empties slots (bank * chunks + chunk), under each slot's lock
   * (BPF_F_LOCK): the next contribution claims it afresh. For a slot that
   * holds a contribution the round's plan refuses (a member that died
   * after contributing under a plan the others never got). */
  clearSlots(indices: ArrayLike<number>): void {
    const zero = new Uint8Array(SIZEOF.ainftp_slot);
    const key = new Uint32Array(1);
    for (let i = 0; i < indices.length; i++) {
      key[0] = indices[i];
      check(libbpf.bpf_map_update_elem(this.mapFd("slots"), key, zero, BPF_F_LOCK), "slot", `clearing slot ${indices[i]} failed`);
    }
  }

  /** Sets the IPv4 address (network-order u32) each rank's packets must come from. */
  setMemberAddrs(addrsBe: number[]): void {
    addrsBe.forEach((a, rank) =>
      check(
        libbpf.bpf_map_update_elem(this.mapFd("member_addrs"), new Uint32Array([rank]), new Uint32Array([a]), 0n),
        "members", `setting the address of rank ${rank} failed`,
      ),
    );
  }

  /** Tells the program the plan of `round` (its bank's entry): chunk c is
   * owned by owners[c % owners.length]; results from any other rank are dropped. */
  setPlan(round: number, owners: readonly number[]): void {
    check(
      libbpf.bpf_map_update_elem(this.mapFd("round_plan"), new Uint32Array([round & 1]), encodePlan(round, owners), 0n),
      "plan", `setting the plan of round ${round} failed`,
    );
  }

  /** The job key the program checks data-plane MACs under (CFG_AUTH_*); null: zeroes. */
  setJobKey(key: Uint8Array | null): void {
    const v = new Uint8Array(SIZEOF.ainftp_key);
    if (key) {
      if (key.length !== SIZEOF.ainftp_key) throw new RangeError(`a job key is ${SIZEOF.ainftp_key} bytes, not ${key.length}`);
      v.set(key);
    }
    check(libbpf.bpf_map_update_elem(this.mapFd("job_key"), new Uint32Array([0]), v, 0n), "key", "setting the job key failed");
  }

  /** Forgets every slot and result a previous job left in these maps, so
   * no stale round tag can ever match a round of the next job. */
  resetState(): void {
    const zero = new Uint8Array(SIZEOF.ainftp_slot);
    const key = new Uint32Array(1);
    for (let i = 0; i < BANKS * this.chunks; i++) {
      key[0] = i;
      check(libbpf.bpf_map_update_elem(this.mapFd("slots"), key, zero, 0n), "reset", `clearing slot ${i} failed`);
    }
    const dv = new DataView(this.results());
    for (let i = 0; i < BANKS * this.chunks; i++) dv.setUint32(i * RESULT_STRIDE, 0, true);
    this.gates().fill(0);
    const obsStride = SIZEOF.ainftp_obs;
    this.obs(0);
    const ov = new DataView(this.obsBuf!);
    for (let i = 0; i < BANKS * this.chunks; i++) ov.setUint32(i * obsStride, 0, true);
    const zeros = new BigUint64Array(possibleCpus() * 2);
    for (let rank = 0; rank < MAX_WORKERS; rank++)
      check(libbpf.bpf_map_update_elem(this.mapFd("sentry_workers"), new Uint32Array([rank]), zeros, 0n), "reset", "clearing sentry counts failed");
    this.resetBank(0);
    this.resetBank(1);
    for (let bank = 0; bank < BANKS; bank++)
      check(libbpf.bpf_map_update_elem(this.mapFd("round_plan"), new Uint32Array([bank]), new Uint8Array(SIZEOF.ainftp_plan), 0n), "reset", "clearing the plan failed");
  }

  /** Zeroes a bank's event counts (done by the round owner when it moves the window). */
  resetBank(bank: number): void {
    check(
      libbpf.bpf_map_update_elem(this.mapFd("bank_state"), new Uint32Array([bank]), new Uint32Array(2), 0n),
      "bank", "reset failed",
    );
  }

  protected mmapMap(name: MapName, valueSize: number, entries = BANKS * this.chunks): ArrayBuffer {
    const stride = Math.ceil(valueSize / 8) * 8;
    const len = Math.ceil((stride * entries) / 4096) * 4096;
    const out = new BigUint64Array(1);
    check(shim.ainftp_map_mmap(this.mapFd(name), BigInt(len), 1, out), "mmap", `mapping ${name} failed`);
    const addr = Number(out[0]) as Pointer;
    this.mmaps.push({ addr, len, kind: name });
    return toArrayBuffer(addr, 0, len);
  }

  private accBuf?: ArrayBuffer;
  private resBuf?: ArrayBuffer;

  /** The raw acc entry of slot `index` (bank * chunks + chunk), a view of the
   * mmapped map: biased, lane-interleaved (see decodeSums). */
  rawSums(index: number): Uint32Array {
    this.accBuf ??= this.mmapMap("acc", SIZEOF.ainftp_acc);
    return new Uint32Array(this.accBuf, index * SIZEOF.ainftp_acc, MAX_ELEMS);
  }

  /** The int32 sums of slot `index`'s first `count` elements. `contributors`
   * defaults to the slot's own count (one map lookup). */
  sums(index: number, count = MAX_ELEMS, contributors = this.slot(index).contributors): Int32Array {
    return decodeSums(this.rawSums(index), count, contributors);
  }

  private resU16?: Uint16Array;

  /** The mmapped results map; each entry takes RESULT_STRIDE bytes. */
  private results(): ArrayBuffer {
    return (this.resBuf ??= this.mmapMap("results", SIZEOF.ainftp_result));
  }

  /** Contributor counts of the result entries first .. first + out.length - 1,
   * read in place: once per round for every chunk, so no object per entry. */
  contributorsInto(first: number, out: Uint16Array): Uint16Array {
    const u16 = (this.resU16 ??= new Uint16Array(this.results()));
    for (let i = 0, at = (first * RESULT_STRIDE + 6) >> 1; i < out.length; i++, at += RESULT_STRIDE >> 1) out[i] = u16[at];
    return out;
  }

  /** The result entry at `index`: header fields and int16 values. */
  result(index: number): { tag: number; count: number; contributors: number; exp: number; flags: number; writes: number; rank: number; v: Int16Array } {
    const stride = RESULT_STRIDE;
    const dv = new DataView(this.results(), index * stride, stride);
    const count = dv.getUint16(4, true);
    return {
      tag: dv.getUint32(0, true),
      count,
      contributors: dv.getUint16(6, true),
      exp: dv.getInt16(8, true),
      flags: dv.getUint16(10, true),
      writes: dv.getUint16(12, true),
      rank: dv.getUint16(14, true),
      v: new Int16Array(this.results(), index * stride + 16, Math.min(count, MAX_ELEMS)),
    };
  }

  private gateBuf?: ArrayBuffer;
  private obsBuf?: ArrayBuffer;

  /** The sentry's gates, [lo, hi] per gate (lo >= hi: none, accept), a view
   * of the mmapped map: a write takes effect on the next packet. Gate
   * gateIndex(chunk, short) sits at [2 * gate, 2 * gate + 1]. */
  gates(): Int32Array {
    this.gateBuf ??= this.mmapMap("sentry_gate", SIZEOF.ainftp_gate, 2 * this.chunks);
    return new Int32Array(this.gateBuf, 0, 4 * this.chunks);
  }

  /** Every contributor's energy recorded for slot `index` (in round tag - 1). */
  obs(index: number): { tag: number; energy: Int16Array } {
    this.obsBuf ??= this.mmapMap("sentry_obs", SIZEOF.ainftp_obs);
    const off = index * SIZEOF.ainftp_obs;
    return { tag: new Uint32Array(this.obsBuf, off, 1)[0], energy: new Int16Array(this.obsBuf, off + 8, MAX_WORKERS) };
  }

  /** Base address of the mmapped sentry_obs map (for the native loops). */
  obsBase(): Pointer {
    this.obs(0);
    return this.mmaps.find((m) => m.kind === "sentry_obs")!.addr;
  }

  /** Contributions the sentry accepted and rejected, per rank (summed over CPUs). */
  sentryWorkers(members = MAX_WORKERS): { accepted: number; rejected: number }[] {
    const ncpu = possibleCpus();
    const buf = new BigUint64Array(ncpu * 2);
    const out: { accepted: number; rejected: number }[] = [];
    for (let rank = 0; rank < members; rank++) {
      check(libbpf.bpf_map_lookup_elem(this.mapFd("sentry_workers"), new Uint32Array([rank]), buf), "sentry", `reading rank ${rank} failed`);
      let a = 0n, r = 0n;
      for (let c = 0; c < ncpu; c++) (a += buf[2 * c]), (r += buf[2 * c + 1]);
      out.push({ accepted: Number(a), rejected: Number(r) });
    }
    return out;
  }

  /** A writable view of result entry `index`, for an owner that publishes a
   * result it computed itself (robust aggregation): write v, then publish(). */
  resultEntry(index: number): { v: Int16Array; publish: (tag: number, count: number, contributors: number, exp: number) => void } {
    const stride = RESULT_STRIDE;
    const dv = new DataView(this.results(), index * stride, stride);
    return {
      v: new Int16Array(this.results(), index * stride + 16, MAX_ELEMS),
      publish: (tag, count, contributors, exp) => {
        dv.setUint32(0, 0xffffffff, true); // being written
        dv.setUint16(4, count, true);
        dv.setUint16(6, contributors, true);
        dv.setInt16(8, exp, true);
        dv.setUint16(10, 0, true);
        dv.setUint16(12, (dv.getUint16(12, true) + 1) & 0xffff, true); // writes; the rank (14) is left as it was
        dv.setUint32(0, tag, true); // last: a reader checks it before and after the copy
      },
    };
  }

  events(): EventRing {
    const r = new EventRing(this.mapFd("events"));
    this.rings.push(r);
    return r;
  }

  /** Base address of the mmapped acc map (for the native collective loops). */
  accBase(): Pointer {
    this.rawSums(0);
    return this.mmaps.find((m) => m.kind === "acc")!.addr;
  }

  /** Base address of the mmapped results map. */
  resultsBase(): Pointer {
    this.result(0);
    return this.mmaps.find((m) => m.kind === "results")!.addr;
  }

  close(): void {
    for (const r of this.rings) r.close();
    this.rings = [];
    for (const m of this.mmaps) shim.ainftp_munmap(m.addr, BigInt(m.len));
    this.mmaps = [];
    this.accBuf = this.resBuf = this.gateBuf = this.obsBuf = undefined;
    this.resU16 = undefined;
    this.open = false;
    this.closeHandles();
  }

  /** Releases what the subclass holds (object or pinned fds). */
  protected abstract closeHandles(): void;

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A loaded (not necessarily attached) XDP object. */
export class ReflexObject extends ReflexMaps {
  readonly progFd: number;
  readonly port: number;
  private obj: Pointer | null;

  private constructor(obj: Pointer, progFd: number, chunks: number, port: number) {
    super(chunks);
    this.obj = obj;
    this.progFd = progFd;
    this.port = port;
    for (const name of MAP_NAMES) {
      const fd = libbpf.bpf_object__find_map_fd_by_name(obj, cstr(name));
      if (fd < 0) throw new AinftpError("load", `map ${name} missing from the object`);
      this.maps.set(name, fd);
    }
  }

  /** Opens the embedded object from memory and loads it into the kernel. */
  static async load(opts: LoadOptions = {}): Promise<ReflexObject> {
    const port = opts.port ?? DEFAULT_PORT;
    const chunks = opts.chunks ?? 1024;
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      throw new AinftpError("load", `port ${port} is not a UDP port`, { hint: "pick a port in 1..65535" });
    if (!Number.isInteger(chunks) || chunks < 1 || chunks > MAX_CHUNKS)
      throw new AinftpError("load", `chunks ${chunks} out of range`, { hint: `pick 1..${MAX_CHUNKS}` });
    const bytes = await objectBytes();
    const out = new BigUint64Array(1);
    check(shim.ainftp_obj_open(bytes, BigInt(bytes.length), cstr("ainftp"), out), "load", "opening the BPF object failed");
    const obj = Number(out[0]) as Pointer;
    try {
      check(shim.ainftp_obj_set_rodata(obj, cstr("listen_port"), new Uint16Array([port]), 2n), "load", "setting the port failed");
      // the sentry's sampling phase is keyed: a sender must not know it
      {
        const rc = shim.ainftp_obj_set_rodata(obj, cstr("sentry_key"), crypto.getRandomValues(new Uint8Array(8)), 8n);
        if (rc !== -2) check(rc, "load", "setting the sentry key failed"); // an object without a sentry (test fixtures)
      }
      if (opts.benchNoDedupe)
        check(shim.ainftp_obj_set_rodata(obj, cstr("bench_no_dedupe"), new Uint8Array([1]), 1n), "load", "setting the bench switch failed");
      for (const [m, n] of [["slots", BANKS * chunks], ["acc", BANKS * chunks], ["results", BANKS * chunks], ["sentry_obs", BANKS * chunks], ["sentry_gate", 2 * chunks]] as const)
      {
        const rc = shim.ainftp_obj_set_max_entries(obj, cstr(m), n);
        // a map the object lacks (-ENOENT) is named later, when the maps are looked up
        if (rc !== -2) check(rc, "load", `sizing map ${m} failed`);
      }
      const rc = shim.ainftp_obj_load(obj);
      if (rc < 0) {
        const log = libbpfLog();
        const errno = -rc;
        const verifier = log.includes("PROG LOAD LOG");
        const hint = verifier
          ? "the kernel's verifier rejected the program (log tail below); rebuild with 'make' or report it with this log"
          : errno === 1 || errno === 13
            ? privilegeHint
            : errno === 12 || errno === 7
              ? `the maps for ${chunks} chunks did not fit: lower --chunks`
              : "see the libbpf log tail below";
        throw new AinftpError("load", verifier ? "the verifier rejected the XDP program" : "loading the XDP program failed", {
          errno, hint, detail: tail(log, 30),
        });
      }
      const progFd = check(shim.ainftp_obj_prog_fd(obj), "load", "program missing");
      return new ReflexObject(obj, progFd, chunks, port);
    } catch (e) {
      libbpf.bpf_object__close(obj);
      throw e;
    }
  }

  protected programFd(): number {
    return this.progFd;
  }

  protected listenPort(): number {
    return this.port;
  }

  /** The .rodata map (listen_port), pinned so `status` can show the port. */
  rodataFd(): number {
    if (!this.obj) throw new AinftpError("map", ".rodata: object closed");
    return check(shim.ainftp_obj_rodata_fd(this.obj), "map", ".rodata missing");
  }

  protected closeHandles(): void {
    if (this.obj) libbpf.bpf_object__close(this.obj);
    this.obj = null;
  }
}

/** Refuses pins whose link is gone or sits on another interface (a deleted
 * namespace's pins, found again through a reused inode number): nothing
 * would sum into those maps, and every round would stall. */
function requireLiveLink(pinDir: string): void {
  const iface = pinDir.slice(pinDir.lastIndexOf("/") + 1);
  const link = shim.ainftp_obj_get(cstr(`${pinDir}/link`));
  const info = new Uint32Array(3);
  const ok = link >= 0 && shim.ainftp_link_info(link, info) >= 0;
  if (link >= 0) closeFd(link);
  // (the interface by name only in our own namespace: a process outside it
  // may open another namespace's pins, and sees no such interface here)
  const ifindex = ifNameToIndex(iface);
  if (ok && info[2] !== 0 && (ifindex === 0 || info[2] === ifindex)) return;
  const why = !ok ? "no pinned link" : info[2] === 0 ? "the link is gone" : `the link is on interface ${info[2]}, not ${iface} (${ifindex})`;
  throw new AinftpError("open", `stale pins in ${pinDir} (${why}): the program is not on ${iface}`, {
    hint: `remove them with 'ainftp detach ${iface}' and attach again ('ainftp swarm' replaces them itself)`,
  });
}

/** The maps of a program attached by `ainftp attach`, opened from its pins. */
export class PinnedReflex extends ReflexMaps {
  readonly pinDir: string;
  /** The attached program's fd and port, opened on first use (closeSlots). */
  private progFd = -1;
  private port = 0;

  private constructor(pinDir: string, chunks: number, fds: Map<MapName, number>) {
    super(chunks);
    this.pinDir = pinDir;
    this.maps = fds;
  }

  /** Opens every pinned map under pinDir (see src/attach.ts for the layout). */
  static open(pinDir: string): PinnedReflex {
    const fds = new Map<MapName, number>();
    try {
      for (const name of MAP_NAMES) {
        const fd = shim.ainftp_obj_get(cstr(`${pinDir}/${name}`));
        check(fd, "open", `opening pinned map ${pinDir}/${name} failed`, (e) =>
          e === 2 ? "is ainftp attached? run: ainftp attach <iface>" : undefined,
        );
        fds.set(name, fd);
      }
      const info = new Uint32Array(6);
      check(shim.ainftp_map_info(fds.get("slots")!, info), "open", "reading map info failed");
      requireLiveLink(pinDir);
      return new PinnedReflex(pinDir, info[3] / BANKS, fds);
    } catch (e) {
      for (const fd of fds.values()) closeFd(fd);
      throw e;
    }
  }

  /** The program of the pinned link (src/attach.ts pins it as <pinDir>/link). */
  protected programFd(): number {
    if (this.progFd >= 0) return this.progFd;
    const link = check(shim.ainftp_obj_get(cstr(`${this.pinDir}/link`)), "open", `opening the pinned link ${this.pinDir}/link failed`, (e) =>
      e === 2 ? "is ainftp attached? run: ainftp attach <iface>" : undefined,
    );
    const info = new Uint32Array(3);
    try {
      check(shim.ainftp_link_info(link, info), "open", "reading the pinned link failed");
    } finally {
      closeFd(link);
    }
    this.progFd = check(libbpf.bpf_prog_get_fd_by_id(info[1]), "open", `opening the attached program (id ${info[1]}) failed`);
    return this.progFd;
  }

  /** listen_port, from the pinned .rodata (as src/attach.ts pinnedPort reads it). */
  protected listenPort(): number {
    if (this.port) return this.port;
    const fd = check(shim.ainftp_obj_get(cstr(`${this.pinDir}/rodata`)), "open", `opening ${this.pinDir}/rodata failed`);
    try {
      const b = new Uint16Array(64);
      check(libbpf.bpf_map_lookup_elem(fd, new Uint32Array([0]), b), "open", "reading the port failed");
      this.port = b[0];
    } finally {
      closeFd(fd);
    }
    return this.port;
  }

  protected closeHandles(): void {
    for (const fd of this.maps.values()) closeFd(fd);
    this.maps.clear();
    if (this.progFd >= 0) closeFd(this.progFd);
    this.progFd = -1;
  }
}

/** Consumer of the program's ring buffer; events are copied out in the shim. */
export class EventRing implements Disposable {
  private h: number;
  private buf: Uint8Array;
  /** Bytes per record copied out. */
  readonly recSize: number;

  /** A consumer of a ring-buffer map: program events (the default), or
   * other fixed-size records (recSize), at most `cap` per poll. */
  constructor(mapFd: number, recSize: number = SIZEOF.ainftp_event, cap = 4096) {
    this.recSize = recSize;
    this.buf = new Uint8Array(recSize * cap);
    this.raw = new Uint32Array(this.buf.buffer);
    this.h = check(shim.ainftp_ring_open(mapFd, recSize), "ring", "opening the event ring failed");
  }

  /** The last pollRaw()'s records as bytes. */
  get bytes(): Uint8Array {
    return this.buf;
  }

  /** The last pollRaw()'s events, four u32 each: type | contributors << 16,
   * round, chunk, index (struct ainftp_event). */
  readonly raw: Uint32Array;

  /** Like poll() without decoding: returns how many events are in `raw`. */
  pollRaw(timeoutMs = 0): number {
    if (this.h < 0) return 0;
    return check(shim.ainftp_ring_poll(this.h, timeoutMs, this.buf, this.buf.length / this.recSize), "ring", "poll failed");
  }

  /** An fd that polls readable when the program has woken userspace. */
  epollFd(): number {
    return check(shim.ainftp_ring_epoll_fd(this.h), "ring", "no epoll fd");
  }

  /** Events available now (timeoutMs 0) or after waiting up to timeoutMs. */
  poll(timeoutMs = 0): ReflexEvent[] {
    if (this.h < 0) return [];
    const n = check(shim.ainftp_ring_poll(this.h, timeoutMs, this.buf, this.buf.length / SIZEOF.ainftp_event), "ring", "poll failed");
    return decodeEvents(this.buf, n);
  }

  close(): void {
    if (this.h >= 0) shim.ainftp_ring_close(this.h);
    this.h = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export function tail(text: string, lines: number): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

export { closeFd };
