// Network-namespace labs for the kernel tests: N namespaces joined by veth
// pairs or by a bridge in its own namespace, commands run inside one with
// `nsenter --net` (not `ip netns exec`, which remounts /sys and so hides
// /sys/fs/bpf), and an idempotent teardown that also removes the ainftp pins
// of those namespaces (<bpffs>/ainftp/netns-<inode>), so a failed test leaves
// nothing attached.
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dir, "../..");
export const BIN = join(ROOT, "dist/ainftp");
export const BPFFS = process.env.AINFTP_BPFFS ?? "/sys/fs/bpf";
const NETNS_DIR = "/run/netns";

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: Record<string, string | undefined>;
  stdin?: string;
  timeoutMs?: number;
}

/** Runs a command to completion; never throws for a non-zero exit. */
export function sh(cmd: string[], o: RunOptions = {}): Result {
  const r = Bun.spawnSync(cmd, {
    cwd: ROOT,
    env: o.env ? { ...process.env, ...o.env } : process.env,
    stdin: o.stdin !== undefined ? Buffer.from(o.stdin) : "ignore",
    stdout: "pipe",
    stderr: "pipe",
    timeout: o.timeoutMs ?? 30_000,
  });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** Like sh, but throws (with the output) when the command fails. */
export function must(cmd: string[], o: RunOptions = {}): string {
  const r = sh(cmd, o);
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} exited ${r.code}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Builds dist/ainftp and the fixtures if anything is newer (a no-op when up to date). */
export function ensureBuilt(): void {
  must(["make", "--no-print-directory", "-s", "build"], { timeoutMs: 120_000 });
}

/** Whether this process can do the kernel tests (root with network namespaces). */
export function canUseNetns(): boolean {
  if (process.getuid?.() !== 0) return false;
  return sh(["ip", "netns", "list"]).code === 0 && sh(["which", "nsenter"]).code === 0;
}

export interface Node {
  /** Short name given to createLab, e.g. "host". */
  node: string;
  /** Namespace name under /run/netns. */
  name: string;
  path: string;
  /** Inode of the namespace: ainftp pins live under <bpffs>/ainftp/netns-<ino>. */
  ino: number;
  /** Interface joining it to the others ("" with link "none"). */
  ifname: string;
  /** IPv4 address on ifname ("" with link "none"). */
  addr: string;
}

export interface LabOptions {
  /** "bridge" (default for more than 2 nodes): a bridge in its own namespace;
   * "pair": one veth pair (exactly 2 nodes); "none": unconnected namespaces. */
  link?: "bridge" | "pair" | "none";
  /** First three octets of the node addresses; node i gets .(i+1)/24. */
  subnet?: string;
  /** Interface name in every node namespace. */
  ifname?: string;
  /** MTU of every link of the lab: the nodes' interfaces, and the bridge's
   * ports and br0. Set on one end only, a veth or bridge port at 1500 drops
   * every larger frame sent alone (is_skb_forwardable: counted as the
   * sender's TX dropped) while letting GSO batches through, so only the
   * lone datagrams vanish. Default: the kernel's (1500). */
  mtu?: number;
}

const labs = new Set<Lab>();
let exitHook = false;

export class Lab {
  readonly nodes = new Map<string, Node>();
  /** Namespaces created (node and bridge namespaces), in creation order. */
  readonly names: string[] = [];
  readonly inos = new Set<number>();
  readonly tmp: string;
  private procs = new Set<Bun.Subprocess>();
  private destroyed = false;

  constructor(readonly id: string) {
    this.tmp = mkdtempSync(join(tmpdir(), `${id}-`));
  }

  node(n: string): Node {
    const x = this.nodes.get(n);
    if (!x) throw new Error(`no node ${n} in lab ${this.id}`);
    return x;
  }

  /** Pin directory of ainftp for `iface` in node n's namespace. */
  pinRoot(n: string): string {
    return join(BPFFS, "ainftp", `netns-${this.node(n).ino}`);
  }
  pinDir(n: string, iface: string): string {
    return join(this.pinRoot(n), iface);
  }

  /** The argv prefix that enters node n's network namespace only. */
  enter(n: string): string[] {
    return ["nsenter", `--net=${this.node(n).path}`];
  }

  /** Runs cmd in node n's network namespace. */
  run(n: string, cmd: string[], o: RunOptions = {}): Result {
    return sh([...this.enter(n), ...cmd], o);
  }
  must(n: string, cmd: string[], o: RunOptions = {}): string {
    return must([...this.enter(n), ...cmd], o);
  }

  /** Runs dist/ainftp in node n's network namespace. */
  ainftp(n: string, args: string[], o: RunOptions = {}): Result {
    return this.run(n, [BIN, ...args], o);
  }

  /** Starts cmd in node n's namespace with piped stdio; killed by destroy() if still running. */
  spawn(n: string, cmd: string[], o: { env?: Record<string, string> } = {}): Bun.Subprocess<"pipe", "pipe", "pipe"> {
    const p = Bun.spawn([...this.enter(n), ...cmd], {
      cwd: ROOT,
      env: o.env ? { ...process.env, ...o.env } : process.env,
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
    });
    this.procs.add(p);
    p.exited.then(() => this.procs.delete(p));
    return p;
  }

  /** Adds a veth pair a <-> b inside node n's namespace (both ends up, no addresses). */
  addVeth(n: string, a: string, b: string): void {
    const ns = this.node(n).name;
    must(["ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b]);
    must(["ip", "-n", ns, "link", "set", a, "up"]);
    must(["ip", "-n", ns, "link", "set", b, "up"]);
  }

  /** `ip -j link show` of iface in node n's namespace. */
  linkInfo(n: string, iface: string): any {
    return JSON.parse(must(["ip", "-n", this.node(n).name, "-j", "link", "show", "dev", iface]))[0];
  }

  /** Removes pins, kills our processes, deletes the namespaces and the temp dir. Idempotent. */
  destroy(): void {
    if (this.destroyed) return;
    for (const p of this.procs) {
      try {
        p.kill(9);
      } catch {}
    }
    this.procs.clear();
    // Pins first: unpinning the link detaches the program even if the
    // interface outlives the namespace (it does not, but be exact).
    for (const ino of this.inos) removePins(ino);
    for (const name of [...this.names].reverse()) deleteNetns(name);
    rmSync(this.tmp, { recursive: true, force: true });
    this.destroyed = true;
    labs.delete(this);
  }

  [Symbol.dispose](): void {
    this.destroy();
  }

  /** @internal */
  addNamespace(name: string): { path: string; ino: number } {
    deleteNetns(name);
    must(["ip", "netns", "add", name]);
    this.names.push(name);
    const path = join(NETNS_DIR, name);
    const ino = statSync(path).ino;
    this.inos.add(ino);
    // Quiet namespaces: no IPv6 (router solicitations, MLD) to disturb counters.
    sh(["nsenter", `--net=${path}`, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]);
    must(["ip", "-n", name, "link", "set", "lo", "up"]);
    return { path, ino };
  }
}

function removePins(ino: number): void {
  rmSync(join(BPFFS, "ainftp", `netns-${ino}`), { recursive: true, force: true });
}

function deleteNetns(name: string): void {
  if (existsSync(join(NETNS_DIR, name))) sh(["ip", "netns", "del", name]);
}

/** Namespace names are aft-<tag>-<pid>-<node>; removes those of processes that
 * are gone (a test run that was killed before its afterAll), their pins and
 * their temp directories (/tmp/aft-<tag>-<pid>-*). */
export function sweepStale(): void {
  const dead = (pid: string) => Number(pid) !== process.pid && !existsSync(`/proc/${pid}`);
  try {
    for (const d of readdirSync(tmpdir())) {
      const m = /^aft-[a-z0-9]+-(\d+)-/.exec(d);
      if (m && dead(m[1])) rmSync(join(tmpdir(), d), { recursive: true, force: true });
    }
  } catch {}
  let names: string[] = [];
  try {
    names = readdirSync(NETNS_DIR);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^aft-[a-z0-9]+-(\d+)-/.exec(name);
    if (!m || !dead(m[1])) continue;
    try {
      removePins(statSync(join(NETNS_DIR, name)).ino);
    } catch {}
    deleteNetns(name);
  }
}

/**
 * Creates namespaces aft-<tag>-<pid>-<node> for each node, joined as
 * `o.link` says, node i at <subnet>.(i+1)/24 on o.ifname. Call destroy() (in
 * afterAll / finally); it also runs at process exit as a last resort.
 */
export function createLab(tag: string, nodeNames: string[], o: LabOptions = {}): Lab {
  sweepStale();
  const link = o.link ?? (nodeNames.length > 2 ? "bridge" : nodeNames.length === 2 ? "pair" : "none");
  const subnet = o.subnet ?? "10.213.0";
  const ifname = o.ifname ?? "eth0";
  if (link === "pair" && nodeNames.length !== 2) throw new Error("link 'pair' joins exactly 2 nodes");
  if (o.mtu !== undefined && !(Number.isInteger(o.mtu) && o.mtu >= 68 && o.mtu <= 65535))
    throw new Error(`lab MTU ${o.mtu}: give an integer in 68..65535`);
  if (!/^10\.213\.\d{1,3}$/.test(subnet)) throw new Error(`test subnets are 10.213.x, not ${subnet}`);
  const id = `aft-${tag}-${process.pid}`;
  const lab = new Lab(id);
  labs.add(lab);
  if (!exitHook) {
    exitHook = true;
    process.on("exit", () => {
      for (const l of [...labs]) l.destroy();
    });
  }
  try {
    nodeNames.forEach((n, i) => {
      const name = `${id}-${n}`;
      const { path, ino } = lab.addNamespace(name);
      lab.nodes.set(n, {
        node: n, name, path, ino,
        ifname: link === "none" ? "" : ifname,
        addr: link === "none" ? "" : `${subnet}.${i + 1}`,
      });
    });
    if (link === "pair") {
      const [a, b] = nodeNames.map((n) => lab.node(n));
      must(["ip", "-n", a.name, "link", "add", ifname, "type", "veth", "peer", "name", ifname, "netns", b.name]);
    } else if (link === "bridge") {
      const br = `${id}-br`;
      lab.addNamespace(br);
      must(["ip", "-n", br, "link", "add", "br0", "type", "bridge"]);
      must(["ip", "-n", br, "link", "set", "br0", "up"]);
      nodeNames.forEach((n, i) => {
        const port = `p${i}`;
        must(["ip", "-n", lab.node(n).name, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", br]);
        must(["ip", "-n", br, "link", "set", port, "master", "br0"]);
        if (o.mtu !== undefined) must(["ip", "-n", br, "link", "set", port, "mtu", String(o.mtu)]);
        must(["ip", "-n", br, "link", "set", port, "up"]);
      });
      if (o.mtu !== undefined) must(["ip", "-n", br, "link", "set", "br0", "mtu", String(o.mtu)]);
    }
    if (link !== "none") {
      for (const x of lab.nodes.values()) {
        if (o.mtu !== undefined) must(["ip", "-n", x.name, "link", "set", ifname, "mtu", String(o.mtu)]);
        must(["ip", "-n", x.name, "addr", "add", `${x.addr}/24`, "dev", ifname]);
        must(["ip", "-n", x.name, "link", "set", ifname, "up"]);
      }
    }
  } catch (e) {
    lab.destroy();
    throw e;
  }
  return lab;
}

/** Polls f until it returns a truthy value or timeoutMs passes; returns the last value. */
export async function until<T>(f: () => T, timeoutMs = 3000, everyMs = 25): Promise<T> {
  const end = performance.now() + timeoutMs;
  let v = f();
  while (!v && performance.now() < end) {
    await Bun.sleep(everyMs);
    v = f();
  }
  return v;
}

/** Reads a subprocess's stdout line by line (keeping what follows a line for
 * the next call); kills the process if a line takes longer than timeoutMs. */
export function lineReader(p: Bun.Subprocess<"pipe", "pipe", "pipe">) {
  const reader = p.stdout.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let ended = false;
  return {
    /** The next line (without "\n"); throws if stdout ends first. */
    async next(timeoutMs = 10_000): Promise<string> {
      const timer = setTimeout(() => p.kill(9), timeoutMs);
      try {
        while (!buf.includes("\n") && !ended) {
          const { value, done } = await reader.read();
          if (done) ended = true;
          else buf += dec.decode(value, { stream: true });
        }
      } finally {
        clearTimeout(timer);
      }
      const at = buf.indexOf("\n");
      if (at < 0) throw new Error(`process ended before a full line: ${buf}${await new Response(p.stderr).text()}`);
      const line = buf.slice(0, at);
      buf = buf.slice(at + 1);
      return line;
    },
    /** Everything left, once the process has ended. */
    async rest(): Promise<string> {
      while (!ended) {
        const { value, done } = await reader.read();
        if (done) ended = true;
        else buf += dec.decode(value, { stream: true });
      }
      const r = buf;
      buf = "";
      return r;
    },
  };
}
