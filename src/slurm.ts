// Who am I and who are my peers, from the variables srun sets: SLURM's
// hostlist syntax, its tasks-per-node counts and task layout, then the
// names' IPv4 addresses and the interface that reaches them.
import { lookup } from "node:dns/promises";
import { isIPv4 } from "node:net";
import { AinftpError } from "./errors.ts";

/** SLURM caps one range at this (hostlist.c MAX_RANGE); we cap a whole list: more hosts is a typo, not a cluster. */
export const MAX_HOSTS = 64 * 1024;

const RUN_HINT = "run under srun/sbatch, or pass --peers/--rank";

// ---- hostlists -------------------------------------------------------------

interface NumberRange {
  lo: number;
  hi: number;
  /** Digits of lo as written: "008" pads every value to 3. */
  width: number;
}

/** An item like r[1-2]n[01-02]: texts[i] comes before groups[i]; texts has one more entry. */
interface HostPattern {
  texts: string[];
  groups: NumberRange[][];
}

function hostlistError(what: string, hint: string): AinftpError {
  return new AinftpError("expand hostlist", what, { hint });
}

/**
 * Every host of a SLURM hostlist, in SLURM's order (`scontrol show hostnames`):
 * `node[01-04,07],gpu-a[1-2]` → node01 … node04, node07, gpu-a1, gpu-a2.
 */
export function expandHostlist(list: string): string[] {
  const hosts: string[] = [];
  for (const item of splitItems(list)) {
    const pattern = parsePattern(item);
    const count = pattern.groups.reduce((n, g) => n * groupSize(g), 1);
    if (hosts.length + count > MAX_HOSTS)
      throw hostlistError(`'${list}' expands to more than ${MAX_HOSTS} hosts`, "check the ranges for a typo (an extra digit?)");
    expandPattern(pattern, hosts);
  }
  return hosts;
}

/** Items separated by commas or blanks outside brackets (SLURM's separators); an empty item is an error. */
function splitItems(list: string): string[] {
  const items: string[] = [];
  let item = "";
  let depth = 0;
  let sawComma = false;
  let sinceComma = 0; // items since the last comma
  const endItem = () => {
    if (!item) return;
    items.push(item);
    sinceComma++;
    item = "";
  };
  for (const c of list) {
    if (depth === 0 && (c === "," || /\s/.test(c))) {
      endItem();
      if (c !== ",") continue;
      if (sinceComma === 0) throw hostlistError(`'${list}' has an empty item`, "remove the extra comma");
      sawComma = true;
      sinceComma = 0;
      continue;
    }
    if (c === "[") depth++;
    else if (c === "]" && depth > 0) depth--;
    item += c;
  }
  endItem();
  if (sawComma && sinceComma === 0) throw hostlistError(`'${list}' ends with an empty item`, "remove the trailing comma");
  return items;
}

function parsePattern(item: string): HostPattern {
  const texts: string[] = [];
  const groups: NumberRange[][] = [];
  let text = "";
  for (let i = 0; i < item.length; i++) {
    if (item[i] === "]") throw hostlistError(`'${item}' has a ']' without its '['`, "balance the brackets, e.g. node[1-4]");
    if (item[i] !== "[") {
      text += item[i];
      continue;
    }
    const close = item.indexOf("]", i);
    const body = close < 0 ? "" : item.slice(i + 1, close);
    if (close < 0 || body.includes("["))
      throw hostlistError(`'${item}' has a '[' without its ']'`, "balance the brackets (they do not nest), e.g. node[1-4]");
    texts.push(text);
    groups.push(parseGroup(item, body));
    text = "";
    i = close;
  }
  // SLURM rejects text after the last bracket (hostlist.c); only text between brackets is allowed.
  if (groups.length && text)
    throw hostlistError(`'${item}' has '${text}' after its last bracket, which SLURM does not allow`, `list such names one by one, e.g. ${texts[0]}1${text},${texts[0]}2${text}`);
  texts.push(text);
  return { texts, groups };
}

function parseGroup(item: string, body: string): NumberRange[] {
  return body.split(",").map((part) => {
    const m = /^(\d{1,15})(?:-(\d{1,15}))?$/.exec(part);
    if (!m)
      throw hostlistError(`'${part}' in '${item}' is not a number or a lo-hi range`, "write ranges as digits, e.g. [1-4,7] or [001-016]");
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo > hi) throw hostlistError(`range ${part} in '${item}' runs backwards`, `write it as ${m[2]}-${m[1]}`);
    return { lo, hi, width: m[1].length };
  });
}

function groupSize(group: NumberRange[]): number {
  return group.reduce((n, r) => n + r.hi - r.lo + 1, 0);
}

function expandPattern({ texts, groups }: HostPattern, out: string[]): void {
  const k = groups.length;
  // SLURM nests the loops with the last bracket innermost and the others from
  // the last to the first outermost (hostlist.c, _push_range_list):
  // a[1-2]b[1-2]c[1-2] walks b, then a, then c.
  const order = k ? [...Array(k - 1).keys()].reverse().concat(k - 1) : [];
  const values = groups.map((g) => g.flatMap((r) => Array.from({ length: r.hi - r.lo + 1 }, (_, j) => String(r.lo + j).padStart(r.width, "0"))));
  const chosen: string[] = new Array(k).fill("");
  const visit = (depth: number): void => {
    if (depth === k) {
      out.push(texts.map((t, i) => t + (chosen[i] ?? "")).join(""));
      return;
    }
    const g = order[depth];
    for (const v of values[g]) {
      chosen[g] = v;
      visit(depth + 1);
    }
  };
  visit(0);
}

/** SLURM's per-node task counts: `2(x3),1` → [2, 2, 2, 1]. */
export function expandTasksPerNode(spec: string, variable = "SLURM_TASKS_PER_NODE"): number[] {
  const counts: number[] = [];
  for (const part of spec.split(",")) {
    const m = /^(\d{1,6})(?:\(x(\d{1,6})\))?$/.exec(part.trim());
    const repeat = m?.[2] === undefined ? 1 : Number(m[2]);
    if (!m || repeat < 1 || counts.length + repeat > MAX_HOSTS)
      throw new AinftpError("slurm bootstrap", `${variable}='${spec}': '${part}' is not a count like 2 or 2(x3)`, { hint: RUN_HINT });
    for (let i = 0; i < repeat; i++) counts.push(Number(m[1]));
  }
  return counts;
}

// ---- bootstrap -------------------------------------------------------------

export interface SlurmJob {
  rank: number;
  size: number;
  /** Job id for the wire header, the same on every task of this step. */
  jobId: number;
  /** Host name of every task, in rank order. */
  hosts: string[];
  /** The step's nodes, in SLURM's order. */
  nodeNames: string[];
}

type Env = Record<string, string | undefined>;

function missing(variable: string): AinftpError {
  return new AinftpError("slurm bootstrap", `${variable} is not set`, { hint: RUN_HINT });
}

/** The first of `names` that is set (SLURM keeps old aliases such as SLURM_NPROCS). */
function firstSet(env: Env, names: string[]): [string, string] | undefined {
  for (const name of names) if (env[name] !== undefined) return [name, env[name]!];
  return undefined;
}

function integerVar(env: Env, names: string[], min: number): number {
  const found = firstSet(env, names);
  if (!found) throw missing(names[0]);
  const [name, text] = found;
  if (!/^\d{1,9}$/.test(text.trim()) || Number(text) < min)
    throw new AinftpError("slurm bootstrap", `${name}='${text}' is not an integer ≥ ${min}`, { hint: RUN_HINT });
  return Number(text);
}

/** FNV-1a: the same text gives the same u32 on every task. */
function fnv1a32(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) h = Math.imul(h ^ byte, 0x01000193);
  return h >>> 0;
}

function slurmJobId(env: Env): number {
  const found = firstSet(env, ["SLURM_JOB_ID", "SLURM_JOBID"]);
  if (!found) throw missing("SLURM_JOB_ID");
  const step = firstSet(env, ["SLURM_STEP_ID", "SLURM_STEPID"])?.[1];
  // Two sruns in one allocation share the job id; mixing in the step id keeps each step's packets out of the other's program.
  return fnv1a32(step === undefined ? found[1].trim() : `${found[1].trim()}.${step.trim()}`);
}

export type Distribution = "block" | "cyclic";

function taskDistribution(env: Env): Distribution {
  const text = env.SLURM_DISTRIBUTION ?? "block";
  // The first level (before ':') places tasks on nodes; pack/nopack only tune block.
  const first = text.split(/[:,]/)[0].trim().toLowerCase();
  if (first === "cyclic") return "cyclic";
  if (["block", "*", "", "pack", "nopack"].includes(first)) return "block";
  throw new AinftpError("slurm bootstrap", `SLURM_DISTRIBUTION='${text}': ainftp places tasks only for block and cyclic distributions`, {
    hint: "run srun with --distribution=block (the default), or pass --peers/--rank",
  });
}

/** The node index of every task, in rank order: block fills each node in turn, cyclic deals tasks round robin. */
export function taskNodes(counts: number[], distribution: Distribution): number[] {
  const nodes: number[] = [];
  if (distribution === "block") {
    counts.forEach((c, node) => nodes.push(...new Array<number>(c).fill(node)));
    return nodes;
  }
  const placed = counts.map(() => 0);
  const total = counts.reduce((a, b) => a + b, 0);
  while (nodes.length < total)
    for (let node = 0; node < counts.length; node++) {
      if (placed[node] === counts[node]) continue;
      placed[node]++;
      nodes.push(node);
    }
  return nodes;
}

/** Tasks per node from SLURM's variable, or an even split when it is absent. */
function tasksPerNode(env: Env, step: boolean, size: number, nodeCount: number): { counts: number[]; source: string } {
  const found = firstSet(env, step ? ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"] : ["SLURM_TASKS_PER_NODE"]);
  if (found) return { counts: expandTasksPerNode(found[1], found[0]), source: `${found[0]}='${found[1]}'` };
  if (size % nodeCount !== 0)
    throw new AinftpError("slurm bootstrap", `SLURM_TASKS_PER_NODE is not set and ${size} tasks do not split evenly over ${nodeCount} nodes`, { hint: RUN_HINT });
  return { counts: new Array<number>(nodeCount).fill(size / nodeCount), source: `${size} tasks over ${nodeCount} nodes` };
}

function nodesIn(variable: string, list: string): string[] {
  try {
    return expandHostlist(list);
  } catch (e) {
    if (!(e instanceof AinftpError)) throw e;
    throw new AinftpError("slurm bootstrap", `${variable}: ${e.message}`, { hint: `${e.hint}, or pass --peers/--rank` });
  }
}

/**
 * Rank, size, job id and every task's host from the variables srun sets
 * (SLURM_PROCID, SLURM_NTASKS, SLURM_JOB_ID, SLURM_STEP_NODELIST or
 * SLURM_JOB_NODELIST, and the tasks-per-node counts).
 */
export function slurmBootstrap(env: Env = process.env): SlurmJob {
  const rank = integerVar(env, ["SLURM_PROCID"], 0);
  const size = integerVar(env, ["SLURM_NTASKS", "SLURM_NPROCS"], 1);
  if (rank >= size)
    throw new AinftpError("slurm bootstrap", `SLURM_PROCID=${rank} is not below SLURM_NTASKS=${size}`, { hint: RUN_HINT });
  const step = env.SLURM_STEP_NODELIST !== undefined;
  const list = firstSet(env, ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"]);
  if (!list) throw missing("SLURM_JOB_NODELIST");
  const nodeNames = nodesIn(list[0], list[1]);
  if (nodeNames.length === 0) throw new AinftpError("slurm bootstrap", `${list[0]} is empty`, { hint: RUN_HINT });

  const { counts, source } = tasksPerNode(env, step, size, nodeNames.length);
  const total = counts.reduce((a, b) => a + b, 0);
  if (counts.length !== nodeNames.length || total !== size)
    throw new AinftpError("slurm bootstrap", `${source} gives ${total} tasks on ${counts.length} nodes, but SLURM_NTASKS=${size} and ${list[0]} has ${nodeNames.length} nodes`, {
      hint: RUN_HINT,
    });
  const distribution = taskDistribution(env);
  const nodeOf = taskNodes(counts, distribution);
  if (env.SLURM_NODEID !== undefined) {
    const nodeId = integerVar(env, ["SLURM_NODEID"], 0);
    if (nodeOf[rank] !== nodeId)
      throw new AinftpError("slurm bootstrap", `SLURM_NODEID=${nodeId}, but a ${distribution} layout of ${source} puts rank ${rank} on node ${nodeOf[rank]}`, {
        hint: "run srun with --distribution=block (the default), or pass --peers/--rank",
      });
  }
  return { rank, size, jobId: slurmJobId(env), hosts: nodeOf.map((n) => nodeNames[n]), nodeNames };
}

// ---- addresses and routes --------------------------------------------------

async function resolveOne(name: string): Promise<string> {
  if (isIPv4(name)) return name;
  try {
    return (await lookup(name, { family: 4 })).address;
  } catch (e) {
    throw new AinftpError("resolve hosts", `cannot resolve '${name}' to an IPv4 address (${(e as NodeJS.ErrnoException).code ?? e})`, {
      hint: `check the name (getent ahostsv4 ${name}), or pass --peers with addresses`,
    });
  }
}

/** `scontrol show node -o NAMES`: one line per node, NodeName=… NodeAddr=… among its fields. */
export function scontrolShowNodes(names: string[]): string {
  let r: ReturnType<typeof Bun.spawnSync>;
  try {
    r = Bun.spawnSync(["scontrol", "show", "node", "-o", names.join(",")], { stdout: "pipe", stderr: "pipe", timeout: 10_000 });
  } catch {
    return "";
  }
  return r.exitCode === 0 ? (r.stdout?.toString() ?? "") : "";
}

/** NodeName → NodeAddr from `scontrol show node -o` (NodeAddr defaults to the name). */
export function parseNodeAddrs(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const name = /(?:^|\s)NodeName=(\S+)/.exec(line)?.[1];
    const addr = /(?:^|\s)NodeAddr=(\S+)/.exec(line)?.[1];
    if (name && addr) out.set(name, addr);
  }
  return out;
}

/**
 * The IPv4 address of every name, in order; each distinct name is looked up
 * once. A name that does not resolve is looked up as a SLURM node: its
 * NodeAddr (`scontrol show node`), an address or a name that resolves.
 */
export async function resolveHosts(names: string[], o: { scontrol?: (names: string[]) => string } = {}): Promise<string[]> {
  const unique = [...new Set(names)];
  const found = await Promise.all(unique.map((n) => resolveOne(n).then((a) => [n, a] as const, (e: AinftpError) => [n, e] as const)));
  const failed = found.filter(([, a]) => a instanceof AinftpError).map(([n]) => n);
  const nodeAddr = failed.length ? parseNodeAddrs((o.scontrol ?? scontrolShowNodes)(failed)) : new Map<string, string>();
  const addrs = new Map<string, string>();
  for (const [n, a] of found) {
    if (!(a instanceof AinftpError)) {
      addrs.set(n, a);
      continue;
    }
    const via = nodeAddr.get(n);
    if (via === undefined || via === n)
      throw new AinftpError(a.op, a.message.replace(/^resolve hosts: /, ""), {
        hint: `check the name (getent ahostsv4 ${n}); give the node a NodeAddr in slurm.conf (scontrol show node ${n}), or pass --peers with addresses`,
      });
    addrs.set(n, await resolveOne(via));
  }
  return names.map((n) => addrs.get(n)!);
}

/** The socket `swarm --slurm --serve` listens on unless --socket says: one per
 * job and node, since nodes (or several slurmd) may share /run. */
export function slurmSocketPath(env: Env = process.env): string {
  const job = (env.SLURM_JOB_ID ?? env.SLURM_JOBID ?? "0").trim();
  const node = (env.SLURMD_NODENAME ?? env.HOSTNAME ?? "node").trim().replace(/[^A-Za-z0-9_.-]+/g, "_");
  return `/run/ainftp/slurm-${job}-${node}.sock`;
}

/** The device and source address in the output of `ip -j route get ADDR`. */
export function parseRouteGet(json: string): { dev: string; src: string } {
  let routes: unknown;
  try {
    routes = JSON.parse(json);
  } catch {
    throw new AinftpError("route lookup", "`ip -j route get` did not print JSON", { hint: "install a recent iproute2 (ip -j needs 4.14 or later)" });
  }
  const route = Array.isArray(routes) ? (routes[0] as { dev?: unknown; prefsrc?: unknown }) : undefined;
  if (typeof route?.dev !== "string")
    throw new AinftpError("route lookup", "`ip -j route get` printed no route with a device", { hint: "check the address, or pass --iface" });
  return { dev: route.dev, src: typeof route.prefsrc === "string" ? route.prefsrc : "" };
}

/** The interface the kernel would send to addr through. Give a peer's address: our own routes through lo. */
export function routeInterface(addr: string): string {
  let r: ReturnType<typeof Bun.spawnSync>;
  try {
    r = Bun.spawnSync(["ip", "-j", "route", "get", addr]);
  } catch {
    throw new AinftpError(`route to ${addr}`, "the ip command is not available", { hint: "install iproute2, or pass --iface" });
  }
  if (r.exitCode !== 0)
    throw new AinftpError(`route to ${addr}`, r.stderr?.toString().trim() || `ip route get exited with ${r.exitCode}`, { hint: "check the address, or pass --iface" });
  return parseRouteGet(r.stdout?.toString() ?? "").dev;
}

// ---- the swarm's members from SLURM ------------------------------------------

export interface SlurmMembers {
  peers: string[];
  rank: number;
  job: number;
  iface: string;
  /** Where each value came from, for the node's log line. */
  source: string;
  /** Default socket of --serve under SLURM (slurmSocketPath). */
  socket: string;
}

/**
 * What `ainftp swarm --slurm` runs with: every task's address (one task per
 * node: ainftp's port and XDP program are per interface), this task's rank,
 * the job id derived from the SLURM job and step, and the interface that
 * routes to the peers (unless given).
 */
export async function slurmMembers(env: Env = process.env, o: { iface?: string } = {}): Promise<SlurmMembers> {
  const job = slurmBootstrap(env);
  const peers = await resolveHosts(job.hosts);
  const twice = peers.find((p, i) => peers.indexOf(p) !== i);
  if (twice !== undefined)
    throw new AinftpError("slurm bootstrap", `two tasks run on ${job.hosts[peers.indexOf(twice)]} (${twice}); ainftp runs one node per host`, {
      hint: "start one task per node: srun --ntasks-per-node=1 (several GPUs of one host share that node through --serve)",
    });
  const other = peers.find((_, i) => i !== job.rank);
  const iface = o.iface ?? (other === undefined ? "lo" : routeInterface(other));
  return {
    peers, rank: job.rank, job: job.jobId, iface, socket: slurmSocketPath(env),
    source: `SLURM job ${env.SLURM_JOB_ID ?? env.SLURM_JOBID}${env.SLURM_STEP_ID !== undefined ? `.${env.SLURM_STEP_ID}` : ""}, ${job.size} tasks on ${job.nodeNames.length} nodes`,
  };
}
