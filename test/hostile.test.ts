// A hostile network against a live 4-node job (issue 16): four `ainftp
// swarm` members on a bridge and a fifth, non-member host ("x") that sends
// what an attacker would, with raw IPv4 sockets (python3, IP_HDRINCL) so it
// can forge any member's source address. Each attack from the issue is a case
// here; each must leave every rank alive and verified, with bit-identical
// results, and each attempt counted under a named reason (the program's
// counters, the node's control-plane drops, the swarm's rejected messages).
//
// What a case assumes of the attacker: it knows the job's port, job id and
// current round (read here from `status`, the strongest off-path attacker),
// and, unless the job has a key, nothing stops it from speaking as a member
// (a forged source address is a member as far as the wire can tell): those
// cases model a Byzantine member. With a job key (--key-file) it lacks the
// key, and nothing it sends may change a result or a membership state.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  CTRL_BYE, CTRL_EXPS, CTRL_HELLO, CTRL_MEMBER, CTRL_RESULT_REQ, DROP_REASONS, PKT_CONTRIB, PKT_CONTROL, PKT_RESULT, SIZEOF, writeHeader,
  type WireHeader,
} from "../src/abi.ts";
import { encodeMessage, type MemberRecord } from "../src/membership.ts";
import type { NodeReport } from "../src/node.ts";
import { datagram } from "../src/packet.ts";
import { mulberry32 } from "../src/random.ts";
import type { SwarmState } from "../src/swarm.ts";
import { readConfig, readCounters } from "../src/reflex.ts";
import { shim } from "../native/shim.ts";
import { closeFd, cstr } from "../native/libc.ts";
import { BIN, canUseNetns, createLab, ensureBuilt, sh, until, type Lab } from "./helpers/netns.ts";

/** The build under attack: AINFTP_HOSTILE_BIN runs the same attacks against
 * another one (e.g. a build from before issue 16, to see each case fail). */
const AINFTP = process.env.AINFTP_HOSTILE_BIN ?? BIN;
const IF = "eth0";
const PORT = 47000;
const JOB = 16;
const MEMBERS = ["n0", "n1", "n2", "n3"];
const kernel = canUseNetns();
const python = kernel && sh(["python3", "-c", "import socket; socket.IPPROTO_RAW"]).code === 0;

// ---- the attacker's tools -------------------------------------------------------------

/** Sends forged IPv4/UDP datagrams: one JSON line per datagram on stdin
 * ({src, dst, sport, dport, hex}); prints how many it sent at EOF. */
const RAW_SENDER = `
import json, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
print("ready", flush=True)
sent = 0
for line in iter(sys.stdin.readline, ""):  # no read-ahead: each datagram goes out when written
    p = json.loads(line)
    data = bytes.fromhex(p["hex"])
    udp = struct.pack("!HHHH", p["sport"], p["dport"], 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), sent & 0xffff, 0, 64, 17, 0,
                     socket.inet_aton(p["src"]), socket.inet_aton(p["dst"])) + udp
    s.sendto(ip, (p["dst"], 0))
    sent += 1
print(sent, flush=True)
`;

/** Listens on the job's port for `seconds`, prints the datagrams it got (JSON). */
const LISTENER = `
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.05)
print("ready", flush=True)
got = []
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        d, a = s.recvfrom(70000)
        got.append({"from": a[0], "len": len(d), "text": d[32:].decode("utf-8", "replace")[:400]})
    except socket.timeout:
        pass
print(json.dumps(got), flush=True)
`;

interface Forged {
  src: string;
  dst: string;
  bytes: Uint8Array;
}

/** A control datagram (kind in `contributors`, `count` = payload bytes). */
function control(h: Omit<WireHeader, "type" | "count" | "contributors" | "jobId"> & { kind: number; jobId?: number }, payload: Uint8Array): Uint8Array {
  const b = new Uint8Array(SIZEOF.ainftp_wire_hdr + payload.length);
  writeHeader(new DataView(b.buffer), 0, { ...h, type: PKT_CONTROL, jobId: h.jobId ?? JOB, count: payload.length, contributors: h.kind });
  b.set(payload, SIZEOF.ainftp_wire_hdr);
  return b;
}

// ---- the job ----------------------------------------------------------------------------

type Proc = Bun.Subprocess<"pipe", "pipe", "pipe">;

interface Run {
  node: string;
  code: number | null;
  signal: string | null;
  stderr: string;
  report: NodeReport | null;
}

let lab: Lab;
let keyFile = "";
let seq = 0;
const addr = (n: string) => lab.node(n).addr;
const peers = () => MEMBERS.map(addr);

interface Job {
  procs: { node: string; proc: Proc; json: string }[];
  done: Promise<Run[]>;
}

function startJob(args: string[], o: { key?: boolean; timeoutMs?: number } = {}): Job {
  const procs = MEMBERS.map((node, rank) => {
    const json = join(lab.tmp, `r${seq++}.json`);
    const key = o.key ? ["--key-file", keyFile] : [];
    const proc = lab.spawn(node, [AINFTP, "swarm", "--iface", IF, "--peers", peers().join(","), "--rank", String(rank), "--job", String(JOB),
      "--keep-attached", "--json", json, ...key, ...args]);
    return { node, proc, json };
  });
  const done = Promise.all(procs.map(async ({ node, proc, json }) => {
    const timer = setTimeout(() => proc.kill(9), o.timeoutMs ?? 60_000);
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    clearTimeout(timer);
    let report: NodeReport | null = null;
    if (existsSync(json)) report = JSON.parse(readFileSync(json, "utf8"));
    return { node, code: proc.signalCode ? null : code, signal: proc.signalCode ? String(proc.signalCode) : null, stderr, report };
  }));
  return { procs, done };
}

/** Every rank exited 0, verified, with the same hashes in every round. */
function expectSurvived(runs: Run[], rounds: number): NodeReport[] {
  const why = runs.map((r) => `${r.node}: code ${r.code} signal ${r.signal} ${r.stderr.trim().slice(0, 600)}`).join("\n");
  for (const r of runs) expect({ node: r.node, code: r.code, signal: r.signal, report: r.report !== null }, why).toEqual({ node: r.node, code: 0, signal: null, report: true });
  const reps = runs.map((r) => r.report!);
  for (const j of reps) {
    expect(j.verified, why).toBe(true);
    expect(j.result_hash).toHaveLength(rounds);
    expect(j.result_hash).toEqual(reps[0].result_hash);
  }
  expect(reps[0].result_hash.every((h) => typeof h === "string")).toBe(true);
  return reps;
}

function status(node: string): any {
  const r = lab.run(node, [AINFTP, "status", IF, "--json"]);
  if (r.code !== 0) throw new Error(`status in ${node}: ${r.stderr}`);
  return JSON.parse(r.stdout)[0];
}

function swarmView(node: string): SwarmState & { drops: Record<string, number> | null } {
  const r = lab.run(node, [AINFTP, "swarm", "status", IF, "--json"]);
  if (r.code !== 0) throw new Error(`swarm status in ${node}: ${r.stderr}`);
  return JSON.parse(r.stdout)[0];
}

/** The sum of every drop reason's counter on the members' programs, read
 * from their pinned maps (`ainftp status` takes seconds on this loaded
 * machine while a job runs; a build with other counters: through status). */
function programDrops(names: readonly string[] = DROP_REASONS): Record<string, number> {
  const out: Record<string, number> = {};
  for (const n of MEMBERS) {
    let c: Record<string, number>;
    const fd = shim.ainftp_obj_get(cstr(join(lab.pinDir(n, IF), "counters")));
    try {
      c = AINFTP === BIN && fd >= 0 ? readCounters(fd) : status(n).counters;
    } finally {
      if (fd >= 0) closeFd(fd);
    }
    for (const k of process.env.AINFTP_HOSTILE_ALL ? Object.keys(c) : names) out[k] = (out[k] ?? 0) + ((c as Record<string, number>)[k] ?? 0);
  }
  return out;
}

/** Frames the links dropped on their way to the members, before any
 * program saw them (the bridge ports' veth tx drops, the members' rx
 * drops): a burst overflows a member's receive ring under load. */
function linkDrops(): number {
  const br = lab.names.find((n) => n.endsWith("-br"))!;
  let d = 0;
  for (const [i] of MEMBERS.entries()) {
    const port = JSON.parse(sh(["ip", "-n", br, "-s", "-j", "link", "show", "dev", `p${i}`]).stdout)[0];
    d += port?.stats64?.tx?.dropped ?? 0;
  }
  for (const n of MEMBERS) {
    const dev = JSON.parse(sh(["ip", "-n", lab.node(n).name, "-s", "-j", "link", "show", "dev", IF]).stdout)[0];
    d += dev?.stats64?.rx?.dropped ?? 0;
  }
  return d;
}

/** The members' control-plane drops by reason (their reports). */
function controlDrops(reps: NodeReport[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const j of reps) for (const [k, v] of Object.entries((j as any).control_drops ?? {})) out[k] = (out[k] ?? 0) + (v as number);
  return out;
}

/** n0's round window now, read from its pinned config map (microseconds:
 * the attacker keeps up with rounds of a few ms; only job_config, so that a
 * build with other maps can be attacked too). */
let pinned: { fd: number; close(): void } | null = null;
function liveBase(): number {
  if (!pinned) {
    const fd = shim.ainftp_obj_get(cstr(join(lab.pinDir("n0", IF), "job_config")));
    if (fd < 0) throw new Error(`n0's job_config is not pinned (${fd})`);
    pinned = { fd, close: () => closeFd(fd) };
  }
  return readConfig(pinned.fd).roundBase;
}

/** Waits until the job is running rounds (n0's program moved its window). */
async function running(): Promise<number> {
  pinned?.close();
  pinned = null;
  const ok = await until(() => {
    try {
      if (!existsSync(lab.pinDir("n0", IF))) return false;
      pinned = null;
      return liveBase() > 6;
    } catch {
      return false;
    }
  }, 20_000, 50);
  if (!ok) throw new Error("the job did not start");
  return liveBase();
}

/** Sends the datagrams from x (forged sources allowed), `gapMs` apart in
 * batches; returns how many went out. */
async function attack(list: Forged[] | (() => Forged[]), o: { batches?: number; gapMs?: number } = {}): Promise<number> {
  const p = lab.spawn("x", ["python3", join(lab.tmp, "raw_sender.py")]);
  // python starts in a few hundred ms here: frames made before would be stale when sent
  const reader = p.stdout.getReader();
  let out = new TextDecoder().decode((await reader.read()).value);
  if (!out.startsWith("ready")) throw new Error(`raw sender: ${out}${await new Response(p.stderr).text()}`);
  let n = 0;
  for (let b = 0; b < (o.batches ?? 1); b++) {
    const items = typeof list === "function" ? list() : list;
    for (const f of items)
      p.stdin.write(JSON.stringify({ src: f.src, dst: f.dst, sport: PORT, dport: PORT, hex: Buffer.from(f.bytes).toString("hex") }) + "\n");
    n += items.length;
    await Bun.sleep(o.gapMs ?? 20);
  }
  p.stdin.end();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    out += new TextDecoder().decode(value);
  }
  const [err, code] = [await new Response(p.stderr).text(), await p.exited];
  if (code !== 0) throw new Error(`raw sender: ${err}`);
  expect(Number(out.trim().split("\n").at(-1))).toBe(n);
  return n;
}

async function cleanupJob(job?: Job): Promise<void> {
  pinned?.close();
  pinned = null;
  if (job) for (const { proc } of job.procs) proc.kill(9);
  for (const n of MEMBERS) if (existsSync(lab.pinDir(n, IF))) lab.ainftp(n, ["detach", IF]);
}

/** The programs' counters under which a forged RESULT ends (the member-liar case). */
const FORGED_RESULT = ["not_owner", "mal_contributors", "result_early_dup", "result_contested", "result_displaced", "result_window"] as const;
/** How far the member-liar case's tally may be off, as a share of the forgeries sent (see the case). */
const TALLY_SLACK = 0.01;

// ---- the cases -------------------------------------------------------------------------------

describe.skipIf(!kernel || !python)("a hostile network against a live 4-node job (issue 16)", () => {
  if (!kernel) console.warn("[hostile] SKIPPED: needs root and network namespaces");
  else if (!python) console.warn("[hostile] SKIPPED: needs python3 for the attacker's raw sockets");

  beforeAll(() => {
    ensureBuilt();
    lab = createLab("hst", [...MEMBERS, "x"]);
    writeFileSync(join(lab.tmp, "raw_sender.py"), RAW_SENDER);
    writeFileSync(join(lab.tmp, "listener.py"), LISTENER);
    keyFile = join(lab.tmp, "job.key");
    expect(sh([BIN, "keygen", "--out", keyFile]).code).toBe(0);
    if (AINFTP !== BIN) console.warn(`[hostile] attacking ${AINFTP}, not this tree's build`);
  }, 150_000);
  afterAll(() => lab?.destroy());

  // long enough that attacks land mid-run (a 256 KiB round: a few ms; 91 chunks of 720)
  const ROUNDS = 300;
  const CHUNKS = 91;
  const WORK = ["--synthetic", "256KiB", "--rounds", String(ROUNDS), "--verify"];
  const chunkIdsBad = [0xfffffff0, 0x7fffffff, 65536, 5000];

  test("RESULT_REQ naming chunk 0xFFFFFFF0 (as a member, forged): no node crashes; each bad index counted", async () => {
    const job = startJob(WORK);
    try {
      await running();
      const payload = new Uint8Array(new Uint32Array(chunkIdsBad).buffer);
      const sent = await attack(() => {
        const b = liveBase();
        return MEMBERS.flatMap((victim, v) =>
          [0, 1, 2, 3].filter((k) => k !== v).flatMap((k) =>
            [b, b + 1, b - 1].map((round) => ({ src: addr(MEMBERS[k]), dst: addr(victim), bytes: control({ kind: CTRL_RESULT_REQ, round, chunk: 0, rank: k }, payload) }))));
      }, { batches: 5 });
      const reps = expectSurvived(await job.done, ROUNDS);
      expect(controlDrops(reps).bad_chunk ?? 0).toBe(sent * chunkIdsBad.length);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  // Rounds of 1 MiB take tens of ms here, and the attacker sprays a few
  // rounds around n0's window, so that its frames land in the window.
  const SLOW = ["--synthetic", "1MiB", "--rounds", "100", "--verify"];

  test("RESULTs with a contributor count no round has (from the owner's address): dropped as mal_contributors, results unchanged", async () => {
    const job = startJob(SLOW);
    try {
      const base = await running();
      const before = programDrops();
      const sent = await attack(() => {
        const b = liveBase();
        return MEMBERS.flatMap((victim, v) =>
          Array.from({ length: 24 }, (_, i) => {
            const chunk = i, owner = chunk % 4, round = b + (i % 4);
            return owner === v ? null : {
              src: addr(MEMBERS[owner]), dst: addr(victim),
              bytes: datagram({ type: PKT_RESULT, jobId: JOB, round, chunk, rank: owner, contributors: [0, 5, 0xffff][i % 3] }, new Int16Array(720).fill(12345)),
            };
          }).filter((x): x is Forged => x !== null));
      }, { batches: 20 });
      const reps = expectSurvived(await job.done, 100);
      void base;
      const after = programDrops();
      const counted = Object.keys(after).reduce((a, k) => a + after[k] - (before[k] ?? 0), 0);
      console.log(`[hostile] ${sent} forged results; the programs counted ${JSON.stringify(Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - (before[k] ?? 0)]).filter(([, v]) => v)))}`);
      expect(after.mal_contributors - before.mal_contributors).toBeGreaterThan(0);
      expect(counted).toBeGreaterThanOrEqual(sent);
      expect(reps.length).toBe(4);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  // Results stored before a node knows the round's plan are the hard part:
  // an owner's program may hold the liar's RESULT in the entry of a chunk the
  // owner finishes itself (resends send only what the owner wrote), and in a
  // partial round the liar may own a chunk it forged claiming every member
  // (the plan's active set tells it apart). test/sim/hostile.test.ts replays
  // both by seed.
  test("a member sending RESULTs for chunks it does not own (well formed, its own rank): nothing corrupted, each one counted once", async () => {
    // 1 MiB rounds (tens of ms here): the forged results reach the window
    // before the owners' do; 160 of them outlast the attack on a loaded
    // machine (100 did not, once in five runs)
    const job = startJob(["--synthetic", "1MiB", "--rounds", "160", "--verify"]);
    try {
      await running();
      const before = programDrops(FORGED_RESULT);
      const linkBefore = linkDrops();
      const liar = 1;
      const sent = await attack(() => {
        const b = liveBase();
        return MEMBERS.filter((_, v) => v !== liar).flatMap((victim) =>
          Array.from({ length: 2 * 96 }, (_, i) => i).filter((i) => (i >> 1) % 4 !== liar).map((i) => ({
            src: addr(MEMBERS[liar]), dst: addr(victim),
            bytes: datagram({ type: PKT_RESULT, jobId: JOB, round: b + 1 + (i & 1), chunk: i >> 1, rank: liar, contributors: 4 }, new Int16Array(720).fill(-777)),
          })));
      }, { batches: 40, gapMs: 15 });
      const endBase = liveBase();
      const reps = expectSurvived(await job.done, 160);
      // the job outlasts the attack (else forgeries for rounds that never run stay uncounted)
      expect(liveBase()).toBeGreaterThan(endBase + 2);
      const after = programDrops(FORGED_RESULT);
      const xdp = Object.fromEntries(FORGED_RESULT.map((k) => [k, after[k] - (before[k] ?? 0)]));
      const drops = controlDrops(reps);
      const user = { not_owner: drops.not_owner ?? 0, mal_contributors: drops.mal_contributors ?? 0 };
      const counted = Object.values(xdp).reduce((a, v) => a + v, 0) + user.not_owner + user.mal_contributors;
      const link = linkDrops() - linkBefore;
      console.log(`[hostile] forged ${sent}, counted ${counted} (${((100 * counted) / sent).toFixed(2)}%), links dropped ${link}; programs ${JSON.stringify(xdp)}, nodes ${JSON.stringify(user)}`);
      expect(xdp.not_owner + user.not_owner).toBeGreaterThan(0);
      // Every forgery is counted once, under the reason that dropped it:
      // refused by owner (not_owner; mal_contributors in a partial round
      // where the liar owns the chunk), stored before the plan and then
      // replaced by the owner's (not_owner) or by the owner the previous
      // plan names (result_displaced) or emptied by its node's sweep when
      // the plan came (the nodes' not_owner), refused before the plan as a
      // copy of one stored (result_early_dup) or against the owner's stored
      // (result_contested), or out of the round window (result_window).
      // The owners' own copies are result_dup, which is not summed here.
      // What else these counters may hold (an honest result out of window
      // after its round, an honest copy before the plan, the owner's result
      // contested when the active set changed), and frames the links
      // dropped (all traffic's), bound the tolerance.
      expect(counted).toBeLessThanOrEqual(sent + TALLY_SLACK * sent);
      expect(counted + link).toBeGreaterThanOrEqual(sent - TALLY_SLACK * sent);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  test("membership messages that name another member as their sender: nobody is marked left, each one rejected", async () => {
    const job = startJob(WORK);
    try {
      await running();
      const victim = 2;
      const record: MemberRecord = { name: `r${victim}`, addr: addr(MEMBERS[victim]), boot: 1, state: "left", incarnation: 1 << 20 };
      const msg = encodeMessage({ kind: "leave", seq: 1, sender: record, updates: [] });
      const gossip = encodeMessage({ kind: "ping", seq: 2, sender: { name: "r1", addr: addr("n1"), boot: 7, state: "alive", incarnation: 1 << 20 }, updates: [record] });
      const sent = await attack(
        MEMBERS.filter((_, v) => v !== 1 && v !== victim).flatMap((to) => [
          { src: addr("n1"), dst: addr(to), bytes: control({ kind: CTRL_MEMBER, round: 0, chunk: 0, rank: 1 }, msg) },
          { src: addr("n1"), dst: addr(to), bytes: control({ kind: CTRL_MEMBER, round: 0, chunk: 0, rank: 1 }, gossip) },
        ]),
        { batches: 3, gapMs: 100 },
      );
      await Bun.sleep(700); // a publish interval of the swarm's view
      const views = MEMBERS.filter((_, v) => v !== 1 && v !== victim).map(swarmView);
      for (const v of views) {
        expect(v.members.find((m) => m.memberRank === victim)?.state).toBe("alive");
        expect(v.changes.some((c) => c.rank === victim && c.kind === "left")).toBe(false);
      }
      const rejected = views.reduce((a, v) => a + v.rejected.wrongSender + v.rejected.secondHand, 0);
      expect(rejected).toBe(sent);
      expectSurvived(await job.done, ROUNDS);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  test("with a job key: spoofed BYE frames (every member's address) end nothing; each counted bad_mac", async () => {
    const job = startJob(WORK, { key: true });
    try {
      const base = await running();
      const sent = await attack(
        MEMBERS.flatMap((victim, v) => MEMBERS.filter((_, k) => k !== v).map((from) => ({
          src: addr(from), dst: addr(victim), bytes: control({ kind: CTRL_BYE, round: base, chunk: 0, rank: MEMBERS.indexOf(from) }, new Uint8Array(0)),
        }))),
        { batches: 3 },
      );
      const reps = expectSurvived(await job.done, ROUNDS);
      expect(controlDrops(reps).bad_mac ?? 0).toBe(sent);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  test("a HELLO from a non-member during start-up: every rank opens and verifies; the HELLO is counted", async () => {
    // the attacker greets every member before and while they open
    const hello = (to: string) => ({ src: addr("x"), dst: addr(to), bytes: control({ kind: CTRL_HELLO, round: 0, chunk: 0, rank: 0, flags: 1 }, new TextEncoder().encode("{}")) });
    const early = attack(() => MEMBERS.map(hello), { batches: 40, gapMs: 50 });
    const job = startJob(WORK);
    try {
      const sent = await early;
      const reps = expectSurvived(await job.done, ROUNDS);
      expect(controlDrops(reps).not_member ?? 0).toBeGreaterThan(0);
      expect(controlDrops(reps).not_member ?? 0).toBeLessThanOrEqual(sent);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  test("a HELLO mid-run from a non-member gets no answer (no job id, members, chunk size or port)", async () => {
    const job = startJob(WORK);
    try {
      await running();
      const l = lab.spawn("x", ["python3", join(lab.tmp, "listener.py"), String(PORT), "6"]);
      const reader = l.stdout.getReader();
      const first = new TextDecoder().decode((await reader.read()).value);
      expect(first).toContain("ready");
      const hello = (to: string, rank: number) => ({ src: addr("x"), dst: addr(to), bytes: control({ kind: CTRL_HELLO, round: 0, chunk: 0, rank, flags: 1 }, new TextEncoder().encode("{}")) });
      await attack(MEMBERS.flatMap((to) => [0, 1, 2, 3].map((rank) => hello(to, rank))), { batches: 5, gapMs: 50 });
      let out = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        out += new TextDecoder().decode(value);
      }
      await l.exited;
      const got = JSON.parse(out.trim().split("\n").at(-1)!);
      if (got.length) console.log(`[hostile] a non-member got ${got.length} answers, e.g. ${JSON.stringify(got[0])}`);
      expect(got).toEqual([]);
      expectSurvived(await job.done, ROUNDS);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  test("EXPS for far-future rounds (as a member): memory stays bounded, each refused and counted", async () => {
    const job = startJob(WORK);
    try {
      const base = await running();
      const pid = job.procs[0].proc.pid;
      const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;
      const before = rss();
      const piece = new Uint8Array(1400).fill(3);
      let round = base + 100;
      // paced, so that the node's socket buffer drops none (what it drops is the kernel's count, not ours)
      const sent = await attack(() => Array.from({ length: 20 }, () => ({
        src: addr("n1"), dst: addr("n0"), bytes: control({ kind: CTRL_EXPS, round: round++, chunk: 0, rank: 1 }, piece),
      })), { batches: 150, gapMs: 8 });
      const grew = rss() - before;
      const reps = expectSurvived(await job.done, ROUNDS);
      // every one that reached the node's socket (a busy node's full socket
      // buffer drops some: the kernel counts those, as UDP RcvbufErrors)
      const refused = controlDrops([reps[0]]).future_round ?? 0;
      console.log(`[hostile] far-future EXPS: ${sent} sent, ${refused} refused as future_round, RSS +${(grew / 2 ** 20).toFixed(1)} MB`);
      expect(refused).toBeLessThanOrEqual(sent);
      expect(refused).toBeGreaterThanOrEqual(sent * 0.9);
      // 3000 pieces of 1.4 KB kept would be 4 MB and more: allow the job's own churn
      expect(grew).toBeLessThan(32 << 20);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  test("with a job key: forged CONTRIBs and RESULTs from members' addresses change no result; each counted bad_mac", async () => {
    const job = startJob(SLOW, { key: true });
    try {
      await running();
      const before = programDrops();
      const sent = await attack(() => {
        const b = liveBase();
        return MEMBERS.flatMap((victim, v) => Array.from({ length: 32 }, (_, i) => {
          const from = (v + 1 + (i % 3)) % 4, round = b + (i % 4);
          const type = i % 2 ? PKT_RESULT : PKT_CONTRIB;
          const d = datagram({ type, jobId: JOB, round, chunk: i, rank: from, contributors: type === PKT_RESULT ? 4 : 0 }, new Int16Array(716).fill(999));
          const tagged = new Uint8Array(d.length + 8);
          tagged.set(d);
          crypto.getRandomValues(tagged.subarray(d.length));
          return { src: addr(MEMBERS[from]), dst: addr(victim), bytes: tagged };
        }));
      }, { batches: 10 });
      expectSurvived(await job.done, 100);
      const after = programDrops();
      const counted = Object.keys(after).reduce((a, k) => a + after[k] - (before[k] ?? 0), 0);
      expect(after.bad_mac - before.bad_mac).toBeGreaterThan(0);
      expect(counted).toBeGreaterThanOrEqual(sent);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);

  test("control-plane fuzz: random and mutated control frames (as members, forged) against a live job: no crash, no hang, memory bounded", async () => {
    const seed = Number(process.env.AINFTP_FUZZ_SEED ?? (Date.now() & 0x7fffffff));
    console.log(`[hostile] control fuzz seed ${seed} (AINFTP_FUZZ_SEED=${seed} reproduces)`);
    const rand = mulberry32(seed);
    const int = (n: number) => Math.floor(rand() * n);
    const bytes = (n: number) => Uint8Array.from({ length: n }, () => int(256));
    const job = startJob(WORK);
    try {
      await running();
      const pids = job.procs.map((p) => p.proc.pid);
      const rss = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;
      const before = pids.map(rss);
      // plausible frames of every kind, then 0..3 mutations (a byte, a
      // length, a truncation, an extension)
      const frameFor = (b: number) => {
        let kind = rand() < 0.9 ? 1 + int(9) : int(256);
        if (kind === CTRL_BYE) kind = CTRL_EXPS;
        const round = rand() < 0.6 ? b + int(4) - 1 : rand() < 0.5 ? int(2 ** 32) : b + 5 + int(1000);
        const payload = kind === CTRL_RESULT_REQ ? new Uint8Array(new Uint32Array(Array.from({ length: 1 + int(8) }, () => (rand() < 0.5 ? int(100) : int(2 ** 32)))).buffer)
          : kind === CTRL_MEMBER ? bytes(int(120))
          : bytes(rand() < 0.5 ? int(64) : int(1300)); // (a frame fits the MTU with an extension)
        const rank = rand() < 0.8 ? int(4) : int(65536);
        const chunk = rand() < 0.5 ? 1400 * int(3) : int(2 ** 32);
        let f = control({ kind, round, chunk, rank, flags: int(4) }, payload);
        for (let m = int(4); m > 0; m--) {
          const x = rand();
          if (x < 0.5) f[int(f.length)] ^= 1 << int(8);
          else if (x < 0.7 && f.length >= 24) new DataView(f.buffer).setUint16(22, int(65536), true); // count
          else if (x < 0.85 && f.length > 1) f = f.slice(0, int(f.length));
          else f = Uint8Array.from([...f, ...bytes(1 + int(64))]);
        }
        // without a key a BYE from a member's address is that member's word
        // (it leaves, and the job fails its round by design): no BYE here;
        // with a key a forged one is bad_mac (the BYE case above)
        if (f.length >= 28 && f[26] === CTRL_BYE && f[27] === 0) f[26] = 0xee;
        const to = int(4), from = rand() < 0.85 ? MEMBERS[(to + 1 + int(3)) % 4] : "x";
        return { src: addr(from), dst: addr(MEMBERS[to]), bytes: f };
      };
      const sent = await attack(() => {
        const b = liveBase();
        return Array.from({ length: 40 }, () => frameFor(b));
      }, { batches: 75, gapMs: 10 });
      const after = pids.map(rss);
      const reps = expectSurvived(await job.done, ROUNDS);
      const refused = Object.values(controlDrops(reps)).reduce((a, v) => a + v, 0);
      console.log(`[hostile] control fuzz: ${sent} frames, ${refused} refusals counted (by reason: ${JSON.stringify(controlDrops(reps))}), RSS growth ${after.map((a, i) => ((a - before[i]) / 2 ** 20).toFixed(1)).join(", ")} MB`);
      expect(refused).toBeGreaterThan(sent / 2);
      for (let i = 0; i < pids.length; i++) expect(after[i] - before[i]).toBeLessThan(32 << 20);
    } finally {
      await cleanupJob(job);
    }
  }, 150_000);
});
