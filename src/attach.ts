// Putting the Reflex on an interface and taking it off: load, attach as a
// bpf_link, pin maps and link under <bpffs>/ainftp/<iface>/, and read it all
// back for `status`. A link detaches itself when its last reference goes, so
// a crash before the link is pinned leaves nothing attached, and `detach`
// (removing the pins) always removes the program.
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statfsSync } from "node:fs";
import { join } from "node:path";
import { closeFd, cstr, geteuid, ifNameToIndex } from "../native/libc.ts";
import { libbpf } from "../native/libbpf.ts";
import { shim } from "../native/shim.ts";
import { DEFAULT_BATCH, DEFAULT_PORT, ELEMS_MTU1500, FRAME_OVERHEAD_V4, MAX_ELEMS, MAX_WORKERS, allMembers, type Counters, type JobConfig } from "./abi.ts";
import { AinftpError, check, errnoName, privilegeHint } from "./errors.ts";
import { MAP_NAMES, ReflexObject, readConfig, readCounters, writeConfig } from "./reflex.ts";

const BPF_FS_MAGIC = 0xcafe4a11;
const XDP_FLAGS_SKB_MODE = 1 << 1;
const XDP_FLAGS_DRV_MODE = 1 << 2;
const XDP_ATTACHED = ["none", "native", "generic", "offload", "multi"] as const;

export type AttachMode = "auto" | "native" | "generic";

export interface AttachOptions {
  port?: number;
  mode?: AttachMode;
  jobId?: number;
  workers?: number;
  batch?: number;
  chunks?: number;
  chunkElems?: number;
  /** Overrides where pins live (tests); default <bpffs>/ainftp. */
  pinRoot?: string;
  /** Mark this process as the pins' owner (a `swarm` that attaches for
   * itself): once it is dead, the next attach or swarm replaces them. */
  owner?: boolean;
}

export interface AttachResult {
  iface: string;
  ifindex: number;
  mode: "native" | "generic";
  progId: number;
  linkId: number;
  pinDir: string;
  /** true when the program was already attached and only the config changed. */
  alreadyAttached: boolean;
  /** Lines for the user: fallbacks taken, stale pins removed. */
  notes: string[];
  config: JobConfig;
  port: number;
}

function isBpffs(path: string): boolean {
  try {
    return statfsSync(path).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

function nsId(kind: "net" | "mnt", pid: string): string {
  try {
    return readlinkSync(`/proc/${pid}/ns/${kind}`);
  } catch {
    return "";
  }
}

/** Where this process's pins live. In the initial network namespace:
 * <bpffs>/ainftp/<iface>; in another one, <bpffs>/ainftp/netns-<inode>/<iface>,
 * since interface names repeat across namespaces. */
export function pinRoot(override?: string): string {
  if (override) return override;
  const base = process.env.AINFTP_BPFFS ?? "/sys/fs/bpf";
  const net = nsId("net", "self");
  const root = join(base, "ainftp");
  if (net && net !== nsId("net", "1")) {
    const ino = net.replace(/\D/g, "");
    return join(root, `netns-${ino}`);
  }
  return root;
}

/** Makes sure a bpffs is mounted where pins go; mounts one if we may. */
export function ensureBpffs(op: string, root = pinRoot()): void {
  const base = process.env.AINFTP_BPFFS ?? "/sys/fs/bpf";
  if (root.startsWith(base) && !isBpffs(base)) {
    const sameMountNs = nsId("mnt", "self") === nsId("mnt", "1");
    if (sameMountNs && geteuid() === 0) {
      const r = Bun.spawnSync(["mount", "-t", "bpf", "bpf", base]);
      if (r.exitCode === 0 && isBpffs(base)) return;
    }
    throw new AinftpError(op, `no BPF filesystem is mounted at ${base}`, {
      hint: sameMountNs
        ? `mount it: mount -t bpf bpf ${base}`
        : "`ip netns exec` hides /sys/fs/bpf behind a fresh /sys; enter only the network namespace: nsenter --net=/run/netns/NAME ainftp …",
    });
  }
}

function requireIface(op: string, iface: string): number {
  if (!iface || iface.includes("/") || iface.length > 15)
    throw new AinftpError(op, `'${iface}' is not an interface name`, { hint: "list interfaces with: ip -br link" });
  const ifindex = ifNameToIndex(iface);
  if (!ifindex)
    throw new AinftpError(op, `no such interface '${iface}' in this network namespace`, {
      errno: 19,
      hint: "list interfaces with: ip -br link (inside a namespace: nsenter --net=/run/netns/NAME …)",
    });
  return ifindex;
}

function requireRoot(op: string): void {
  if (geteuid() !== 0) throw new AinftpError(op, "permission denied", { errno: 1, hint: privilegeHint });
}

interface PinnedState {
  linkFd: number;
  linkId: number;
  progId: number;
  ifindex: number;
}

function openPinnedLink(dir: string): PinnedState | null {
  const path = join(dir, "link");
  if (!existsSync(path)) return null;
  const fd = shim.ainftp_obj_get(cstr(path));
  if (fd < 0) return null;
  const info = new Uint32Array(3);
  if (shim.ainftp_link_info(fd, info) < 0) {
    closeFd(fd);
    return null;
  }
  return { linkFd: fd, linkId: info[0], progId: info[1], ifindex: info[2] };
}

function withPinnedMap<T>(dir: string, name: string, f: (fd: number) => T): T {
  const fd = shim.ainftp_obj_get(cstr(join(dir, name)));
  check(fd, "status", `opening pinned map ${join(dir, name)} failed`);
  try {
    return f(fd);
  } finally {
    closeFd(fd);
  }
}

export function pinnedPort(dir: string): number {
  return withPinnedMap(dir, "rodata", (fd) => {
    const b = new Uint16Array(64);
    check(libbpf.bpf_map_lookup_elem(fd, new Uint32Array([0]), b), "status", "reading the port failed");
    return b[0];
  });
}

function pinnedChunks(dir: string): number {
  return withPinnedMap(dir, "slots", (fd) => {
    const info = new Uint32Array(6);
    check(shim.ainftp_map_info(fd, info), "status", "reading map info failed");
    return info[3] / 2;
  });
}

export function xdpQuery(ifindex: number): { mode: (typeof XDP_ATTACHED)[number]; progId: number; drvProgId: number; skbProgId: number } {
  const out = new Uint32Array(5);
  check(shim.ainftp_xdp_query(ifindex, out), "query", "XDP query failed");
  return { mode: XDP_ATTACHED[out[0]] ?? "none", progId: out[1], drvProgId: out[2], skbProgId: out[3] };
}

/** Largest chunk that fits an MTU (IPv4, no options; the MTU excludes
 * Ethernet's 14 bytes), with `tagBytes` of MAC after the values (--auth).
 * One packet per chunk: the program is frags-aware, so the frame may be
 * larger than a page (veth: up to 64 KB); MAX_ELEMS (a 9000-byte MTU's)
 * bounds it. */
export function chunkElemsForMtu(mtu: number, tagBytes = 0): number {
  const e = Math.floor((mtu - (FRAME_OVERHEAD_V4 - 14) - tagBytes) / 2);
  return Math.max(4, Math.min(MAX_ELEMS, e - (e % 4)));
}

/** The interface's MTU (1500 when `ip` cannot tell). */
export function interfaceMtu(iface: string): number {
  const r = Bun.spawnSync(["ip", "-j", "link", "show", "dev", iface]);
  try {
    return JSON.parse(r.stdout.toString())[0].mtu ?? 1500;
  } catch {
    return 1500;
  }
}

function validateJob(op: string, o: AttachOptions): void {
  const int = (name: string, v: number | undefined, lo: number, hi: number, fix: string) => {
    if (v === undefined) return;
    if (!Number.isInteger(v) || v < lo || v > hi)
      throw new AinftpError(op, `${name} ${v} is out of range ${lo}..${hi}`, { hint: fix });
  };
  int("--port", o.port, 1, 65535, "pick a free UDP port, e.g. --port 47000");
  int("--workers", o.workers, 1, MAX_WORKERS, `a job has 1..${MAX_WORKERS} workers`);
  int("--batch", o.batch, 1, 1 << 20, "wake userspace once per N completions, e.g. --batch 32");
  int("--job", o.jobId, 0, 0xffffffff, "job ids are 32-bit unsigned");
  int("--chunks", o.chunks, 1, 65536, "chunks per round, e.g. --chunks 1024");
  int("--chunk-elems", o.chunkElems, 1, MAX_ELEMS, `elements per packet: ${ELEMS_MTU1500} fit a 1500-byte MTU, ${MAX_ELEMS} a 9000-byte one (the default: what the interface's MTU holds)`);
}

/** `fits`: the chunk the interface's MTU holds, the default of a new attachment. */
function jobConfig(o: AttachOptions, chunks: number, prev?: JobConfig, fits = ELEMS_MTU1500): JobConfig {
  const workers = o.workers ?? prev?.members ?? 2;
  return {
    jobId: o.jobId ?? prev?.jobId ?? 0,
    roundBase: prev?.roundBase ?? 0,
    memberMask: o.workers !== undefined || !prev ? allMembers(workers) : prev.memberMask,
    members: workers,
    chunkElems: o.chunkElems ?? prev?.chunkElems ?? fits,
    chunks,
    batch: o.batch ?? prev?.batch ?? DEFAULT_BATCH,
    ownedChunks: prev?.ownedChunks ?? chunks,
  };
}

/** Attaches the Reflex to `iface`, or updates its config if it is already there. */
export async function attach(iface: string, o: AttachOptions = {}): Promise<AttachResult> {
  const op = `attach ${iface}`;
  validateJob(op, o);
  requireRoot(op);
  const ifindex = requireIface(op, iface);
  const root = pinRoot(o.pinRoot);
  ensureBpffs(op, root);
  const dir = join(root, iface);
  const notes: string[] = [];

  const dead = deadOwner(dir);
  if (dead !== null) {
    notes.push(`replacing the pins in ${dir}: their owner (pid ${dead}) is dead`);
    await removeLivePins(dir, ifindex);
  }
  const pinned = openPinnedLink(dir);
  if (pinned) {
    try {
      if (pinned.ifindex === ifindex) {
        const port = pinnedPort(dir);
        const chunks = pinnedChunks(dir);
        if ((o.port !== undefined && o.port !== port) || (o.chunks !== undefined && o.chunks !== chunks))
          throw new AinftpError(op, `already attached with port ${port} and ${chunks} chunks`, {
            errno: 17,
            hint: `the port and map sizes are fixed at load: run 'ainftp detach ${iface}' first`,
          });
        const cfg = withPinnedMap(dir, "job_config", (fd) => {
          const c = jobConfig(o, chunks, readConfig(fd));
          writeConfig(fd, c);
          return c;
        });
        const q = xdpQuery(ifindex);
        notes.push("already attached: configuration updated in place");
        return {
          iface, ifindex, mode: q.mode === "generic" ? "generic" : "native", progId: pinned.progId,
          linkId: pinned.linkId, pinDir: dir, alreadyAttached: true, notes, config: cfg, port,
        };
      }
    } finally {
      closeFd(pinned.linkFd);
    }
  }
  if (existsSync(dir)) {
    // Pins whose link is gone (interface or namespace deleted, earlier crash): clean them.
    rmSync(dir, { recursive: true, force: true });
    notes.push(`removed stale pins in ${dir} (${pinned ? (pinned.ifindex ? `their link is on interface ${pinned.ifindex}, not ${iface}` : "the link is gone") : "no pinned link"})`);
  }

  const q = xdpQuery(ifindex);
  if (q.progId || q.drvProgId || q.skbProgId) {
    const id = q.progId || q.drvProgId || q.skbProgId;
    throw new AinftpError(op, `${iface} already has another XDP program (id ${id}, ${q.mode} mode)`, {
      errno: 16,
      hint: `inspect it with 'bpftool net show dev ${iface}'; remove it with 'ip link set dev ${iface} xdp off' if nothing needs it`,
    });
  }

  const chunks = o.chunks ?? 1024;
  const port = o.port ?? DEFAULT_PORT;
  const obj = await ReflexObject.load({ port, chunks });
  let linkFd = -1;
  try {
    const mtu = interfaceMtu(iface), fits = chunkElemsForMtu(mtu);
    const cfg = jobConfig(o, chunks, undefined, fits);
    if (o.chunkElems === undefined) notes.push(`${fits} int16 values per packet: the most ${iface}'s MTU ${mtu} holds (one packet per chunk)`);
    obj.setConfig(cfg);
    const mode = o.mode ?? "auto";
    let used: "native" | "generic" = mode === "generic" ? "generic" : "native";
    linkFd = shim.ainftp_xdp_link(obj.progFd, ifindex, used === "native" ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE);
    if (linkFd < 0 && mode === "auto" && linkFd !== -1 && linkFd !== -13 && linkFd !== -16) {
      const why = -linkFd === 34 ? "the MTU is too large for the driver's native XDP, even with multi-buffer frames" : errnoName(-linkFd);
      notes.push(`native XDP is not available on ${iface} (${why}); using generic mode, which is slower (the kernel builds a socket buffer for every frame before the program sees it; ainftp's peers send this host single frames, never GSO bursts; 'ainftp bench --mode generic' measures the cost)`);
      used = "generic";
      linkFd = shim.ainftp_xdp_link(obj.progFd, ifindex, XDP_FLAGS_SKB_MODE);
    }
    check(linkFd, op, `attaching in ${used} mode failed`, (e) =>
      e === 16 || e === 17
        ? `${iface} already has an XDP program: 'bpftool net show dev ${iface}'`
        : e === 34
          ? `the MTU of ${iface} is too large for its driver's native XDP, even with multi-buffer frames (veth takes up to 64 KB, many NICs 9000 or less): lower it or use --mode generic`
          : e === 95 || e === 22
          ? mode === "native"
            ? "the driver has no native XDP: try --mode generic"
            : "the interface refused the program; check its MTU with 'ip link show' (a driver without XDP multi-buffer support takes only frames that fit one page, about 3.5 KB)"
          : undefined,
    );
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (o.owner) markOwner(dir);
    for (const name of MAP_NAMES) check(shim.ainftp_obj_pin(obj.mapFd(name), cstr(join(dir, name))), op, `pinning map ${name} failed`);
    check(shim.ainftp_obj_pin(obj.rodataFd(), cstr(join(dir, "rodata"))), op, "pinning the port map failed");
    // The link last: until it is pinned, our fd is its only reference.
    check(shim.ainftp_obj_pin(linkFd, cstr(join(dir, "link"))), op, "pinning the link failed");
    const info = new Uint32Array(3);
    check(shim.ainftp_link_info(linkFd, info), op, "reading the link failed");
    return { iface, ifindex, mode: used, progId: info[1], linkId: info[0], pinDir: dir, alreadyAttached: false, notes, config: cfg, port };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  } finally {
    closeFd(linkFd);
    obj.close();
  }
}

export interface DetachResult {
  iface: string;
  pinDir: string;
  /** true when a pinned ainftp link was removed. */
  detached: boolean;
  /** true when pins were there (possibly stale) and were removed. */
  removedPins: boolean;
  progId: number;
}

/** Removes the Reflex from `iface`: unpins the link (which detaches the
 * program) and the maps. Works on pins left behind by a crash, and for an
 * interface that no longer exists. */
export function detach(iface: string, o: { pinRoot?: string } = {}): DetachResult {
  const op = `detach ${iface}`;
  if (!iface || iface.includes("/") || iface.length > 15)
    throw new AinftpError(op, `'${iface}' is not an interface name`, { hint: "list interfaces with: ip -br link" });
  requireRoot(op);
  const root = pinRoot(o.pinRoot);
  ensureBpffs(op, root);
  const dir = join(root, iface);
  if (!existsSync(dir)) {
    const ifindex = ifNameToIndex(iface);
    if (!ifindex)
      throw new AinftpError(op, `no such interface '${iface}' and no pins at ${dir}`, {
        errno: 19,
        hint: "see what is attached with: ainftp status",
      });
    const q = xdpQuery(ifindex);
    if (q.progId || q.drvProgId || q.skbProgId)
      throw new AinftpError(op, `${iface} has an XDP program (id ${q.progId || q.drvProgId || q.skbProgId}) that ainftp did not attach`, {
        hint: `leave it, or remove it with 'ip link set dev ${iface} xdp off'`,
      });
    return { iface, pinDir: dir, detached: false, removedPins: false, progId: 0 };
  }
  const pinned = openPinnedLink(dir);
  let progId = 0;
  if (pinned) {
    progId = pinned.progId;
    closeFd(pinned.linkFd);
  }
  rmSync(dir, { recursive: true, force: true });
  if (root.includes("/netns-") && readdirSync(root).length === 0) rmSync(root, { recursive: true, force: true });
  return { iface, pinDir: dir, detached: pinned !== null && pinned.ifindex !== 0, removedPins: true, progId };
}

export interface IfaceStatus {
  iface: string;
  pinDir: string;
  attached: boolean;
  /** Pins exist but the link is gone (interface deleted): run detach. */
  stale: boolean;
  ifindex: number;
  mode: string;
  progId: number;
  linkId: number;
  port: number;
  chunks: number;
  config: JobConfig | null;
  counters: Counters | null;
}

function statusOf(root: string, iface: string): IfaceStatus {
  const dir = join(root, iface);
  const pinned = openPinnedLink(dir);
  const base: IfaceStatus = {
    iface, pinDir: dir, attached: false, stale: true, ifindex: 0, mode: "none", progId: 0, linkId: 0,
    port: 0, chunks: 0, config: null, counters: null,
  };
  if (!pinned) return base;
  try {
    const alive = pinned.ifindex !== 0;
    const q = alive ? xdpQuery(pinned.ifindex) : null;
    return {
      ...base,
      attached: alive,
      stale: !alive,
      ifindex: pinned.ifindex,
      mode: q?.mode ?? "none",
      progId: pinned.progId,
      linkId: pinned.linkId,
      port: pinnedPort(dir),
      chunks: pinnedChunks(dir),
      config: withPinnedMap(dir, "job_config", readConfig),
      counters: withPinnedMap(dir, "counters", readCounters),
    };
  } finally {
    closeFd(pinned.linkFd);
  }
}

/** Status of one interface, or of every interface with pins in this namespace. */
export function status(iface?: string, o: { pinRoot?: string } = {}): IfaceStatus[] {
  const op = iface ? `status ${iface}` : "status";
  requireRoot(op);
  const root = pinRoot(o.pinRoot);
  ensureBpffs(op, root);
  if (iface) {
    if (!existsSync(join(root, iface))) {
      requireIface(op, iface);
      throw new AinftpError(op, `ainftp is not attached to ${iface}`, { hint: `attach it with: ainftp attach ${iface}` });
    }
    return [statusOf(root, iface)];
  }
  if (!existsSync(root)) return [];
  return readdirSync(root, { withFileTypes: true })
    .filter((d) => d.isDirectory() && !d.name.startsWith("netns-"))
    .map((d) => statusOf(root, d.name));
}


// ---- pins a node attached for itself -----------------------------------------
//
// A `swarm` that attaches the program marks the pins as its own: an empty
// directory owner-<pid>-<start time> beside them (bpffs holds directories and
// BPF objects only). Once that process is gone (SIGKILL, a cancelled job) the
// pins are stale even though the link may still be attached: the next attach
// or swarm replaces them. Pins without a mark were made by `ainftp attach` and
// are the operator's: a swarm uses them and leaves them.

const OWNER = /^owner-(\d+)-(\d+)$/;

/** The start time of pid (field 22 of /proc/<pid>/stat, clock ticks since boot), or null when it is gone. */
function procStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

function markOwner(dir: string): void {
  mkdirSync(join(dir, `owner-${process.pid}-${procStart(process.pid) ?? 0}`), { mode: 0o700 });
}

/** The pid of the pins' owner when it is dead (a pid reused since counts as dead); null when alive or unmarked. */
export function deadOwner(dir: string): number | null {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return null;
  }
  for (const name of names) {
    const m = OWNER.exec(name);
    if (m && procStart(Number(m[1])) !== m[2]) return Number(m[1]);
  }
  return null;
}

/** Removes pins whose link may still be attached, and waits (up to 2 s) for
 * the program to leave the interface: the last reference goes when bpffs
 * frees the link's inode, after an RCU grace period. */
async function removeLivePins(dir: string, ifindex: number): Promise<void> {
  rmSync(dir, { recursive: true, force: true });
  const until = performance.now() + 2000;
  while (performance.now() < until) {
    const q = xdpQuery(ifindex);
    if (!q.progId && !q.drvProgId && !q.skbProgId) return;
    await Bun.sleep(10);
  }
}

export type PinState =
  | { kind: "none"; dir: string }
  /** A link on this interface; owner: the live swarm that made it, null for `ainftp attach`'s. */
  | { kind: "live"; dir: string; owner: number | null }
  | { kind: "stale"; dir: string; why: string };

/** What the pins of iface in this namespace are: none, live, or stale (the
 * link is gone, on another interface, or its owner is dead). */
export function pinState(iface: string, root = pinRoot()): PinState {
  const dir = join(root, iface);
  if (!existsSync(dir)) return { kind: "none", dir };
  const pinned = openPinnedLink(dir);
  if (!pinned) return { kind: "stale", dir, why: "no pinned link" };
  closeFd(pinned.linkFd);
  if (pinned.ifindex === 0) return { kind: "stale", dir, why: "the link is gone: its interface or namespace was deleted" };
  if (pinned.ifindex !== ifNameToIndex(iface)) return { kind: "stale", dir, why: `the link is on interface ${pinned.ifindex}, not ${iface}` };
  const dead = deadOwner(dir);
  if (dead !== null) return { kind: "stale", dir, why: `their owner (pid ${dead}) is dead` };
  const owner = readdirSync(dir).map((n) => OWNER.exec(n)).find(Boolean);
  return { kind: "live", dir, owner: owner ? Number(owner[1]) : null };
}

/**
 * What a node (`swarm`) does at start: use pins that are live on iface (an
 * operator's `ainftp attach`, or another live node's), and otherwise attach
 * the program for itself, marked as its own, replacing stale pins first (one
 * note says so). Never runs on stale pins. attachedByUs: detach at the end.
 */
export async function attachForNode(iface: string, o: AttachOptions): Promise<{ attachedByUs: boolean; notes: string[] }> {
  const root = pinRoot(o.pinRoot);
  const st = pinState(iface, root);
  if (st.kind === "live") return { attachedByUs: false, notes: [] };
  const notes: string[] = [];
  if (st.kind === "stale") {
    const ifindex = requireIface(`attach ${iface}`, iface);
    notes.push(`replacing stale pins in ${st.dir} (${st.why})`);
    await removeLivePins(st.dir, ifindex);
  }
  const r = await attach(iface, { ...o, owner: true });
  return { attachedByUs: true, notes: [...notes, ...r.notes] };
}

/** Removes every stale set of pins in this namespace (link gone, on another
 * interface, or its owning swarm dead): what a SLURM Epilog runs after a job
 * whose node was killed. Pins that are live stay. */
export async function detachStale(o: { pinRoot?: string } = {}): Promise<{ iface: string; pinDir: string; why: string }[]> {
  requireRoot("detach --stale");
  const root = pinRoot(o.pinRoot);
  ensureBpffs("detach --stale", root);
  if (!existsSync(root)) return [];
  const removed: { iface: string; pinDir: string; why: string }[] = [];
  for (const d of readdirSync(root, { withFileTypes: true })) {
    if (!d.isDirectory() || d.name.startsWith("netns-")) continue;
    const st = pinState(d.name, root);
    if (st.kind !== "stale") continue;
    const ifindex = ifNameToIndex(d.name);
    if (ifindex) await removeLivePins(st.dir, ifindex);
    else rmSync(st.dir, { recursive: true, force: true });
    removed.push({ iface: d.name, pinDir: st.dir, why: st.why });
  }
  if (root.includes("/netns-") && readdirSync(root).length === 0) rmSync(root, { recursive: true, force: true });
  return removed;
}
