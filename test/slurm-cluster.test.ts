// A real SLURM cluster (Debian's slurm-wlm and munge): slurmctld in the
// bridge's namespace, one slurmd per node namespace, all on one bridge. Node
// names (sn0..sn3) resolve nowhere: the swarm finds its peers through their
// NodeAddr. The documented job script (examples/slurm/ainftp-job.sh) and
// Epilog (examples/slurm/epilog.sh) run as they are:
//   - a job verifies and leaves nothing attached;
//   - a job whose swarm fails is FAILED with its exit code;
//   - scancel of a serving job: every node detaches itself, the sockets
//     (one per job and node, under a shared /run) are gone;
//   - a swarm killed outright (SIGKILL): the Epilog removes its pins.
// About 30 s here. Needs root, slurmctld, slurmd and munged
// (apt-get install slurm-wlm munge); without them it says so and skips.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { BIN, ROOT, canUseNetns, createLab, ensureBuilt, sh, until, type Lab } from "./helpers/netns.ts";

const NODES = ["n0", "n1", "n2", "n3"];
const SUBNET = "10.213.76";
const CTLD_ADDR = `${SUBNET}.254`;
const JOB_SCRIPT = join(ROOT, "examples/slurm/ainftp-job.sh");
const EPILOG = join(ROOT, "examples/slurm/epilog.sh");

const missing = ["slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel"].filter((c) => !Bun.which(c, { PATH: `${process.env.PATH}:/usr/sbin` }));
const kernel = canUseNetns();
const skip = !kernel || missing.length > 0;
if (skip)
  console.warn(`[slurm-cluster] SKIPPED: ${!kernel ? "needs root and network namespaces" : `missing ${missing.join(", ")} (apt-get install -y slurm-wlm munge)`}`);

interface Cluster {
  lab: Lab;
  dir: string;
  env: Record<string, string>;
  pids: number[];
}

let cluster: Cluster | undefined;

/** Runs a SLURM client command from the controller's namespace. */
function slurm(c: Cluster, cmd: string[], extraEnv: Record<string, string> = {}) {
  return sh(["nsenter", `--net=/run/netns/${c.lab.id}-br`, ...cmd], { env: { ...c.env, ...extraEnv }, timeoutMs: 20_000 });
}

function jobFields(c: Cluster, id: string): Record<string, string> {
  const r = slurm(c, ["scontrol", "show", "job", "-o", id]);
  return Object.fromEntries(r.stdout.trim().split(/\s+/).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
}

async function waitJobEnd(c: Cluster, id: string, timeoutMs: number): Promise<Record<string, string>> {
  let f: Record<string, string> = {};
  await until(() => {
    f = jobFields(c, id);
    return ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"].includes(f.JobState) && !/COMPLETING/.test(f.JobState);
  }, timeoutMs, 200);
  // the Epilog runs as the job completes: wait for every node to be idle again
  await until(() => !/COMPLETING|COMP/.test(slurm(c, ["sinfo", "-h", "-o", "%T"]).stdout), 15_000, 200);
  return f;
}

function submit(c: Cluster, args: string): string {
  const out = join(c.dir, "job-%j.out");
  const r = slurm(c, ["sbatch", "--parsable", "-o", out, JOB_SCRIPT], { AINFTP: BIN, AINFTP_ARGS: args });
  if (r.code !== 0) throw new Error(`sbatch failed: ${r.stderr}`);
  return r.stdout.trim().split(";")[0];
}

const output = (c: Cluster, id: string) => readFileSync(join(c.dir, `job-${id}.out`), "utf8");

/** ainftp processes in node n's namespace (what slurmd started there). */
function ainftpPids(c: Cluster, n: string): number[] {
  return sh(["ip", "netns", "pids", c.lab.node(n).name]).stdout.split(/\s+/).filter(Boolean).map(Number)
    .filter((p) => sh(["readlink", `/proc/${p}/exe`]).stdout.trim() === BIN);
}

function expectNothingAttached(c: Cluster): void {
  for (const n of NODES) {
    const xdp = c.lab.linkInfo(n, "eth0").xdp ?? null;
    expect({ n, xdp, pins: existsSync(c.lab.pinRoot(n)) }).toEqual({ n, xdp: null, pins: false });
  }
}

function startCluster(): Cluster {
  const lab = createLab("slurm", NODES, { subnet: SUBNET });
  const dir = lab.tmp;
  const br = `${lab.id}-br`;
  sh(["ip", "-n", br, "addr", "add", `${CTLD_ADDR}/24`, "dev", "br0"]);
  const c: Cluster = { lab, dir, env: { SLURM_CONF: join(dir, "slurm.conf") }, pids: [] };
  mkdirSync(join(dir, "ctld"), { recursive: true });
  // the Epilog as an admin installs it: the documented script, told where ainftp is
  writeFileSync(join(dir, "epilog.sh"), `#!/bin/sh\nAINFTP=${BIN} ${EPILOG} >> ${dir}/epilog-$SLURMD_NODENAME.log 2>&1\n`, { mode: 0o755 });
  const sock = join(dir, "munge.sock");
  writeFileSync(c.env.SLURM_CONF, [
    "ClusterName=aft", `SlurmctldHost=${hostname()}(${CTLD_ADDR})`,
    "AuthType=auth/munge", `AuthInfo=socket=${sock}`, "CredType=cred/munge", "SlurmUser=root", "SlurmdUser=root",
    `StateSaveLocation=${dir}/ctld`, `SlurmdSpoolDir=${dir}/slurmd-%n`, `SlurmctldPidFile=${dir}/slurmctld.pid`, `SlurmdPidFile=${dir}/slurmd-%n.pid`,
    `SlurmctldLogFile=${dir}/slurmctld.log`, `SlurmdLogFile=${dir}/slurmd-%n.log`,
    // ports of our own, away from a real cluster's 6817/6818
    "SlurmctldPort=46817", "SlurmdPort=46818",
    "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
    "AccountingStorageType=accounting_storage/none", "SwitchType=switch/none", "MpiDefault=none", "SelectType=select/linear",
    "ReturnToService=2", "KillWait=5", "MinJobAge=600", `Epilog=${dir}/epilog.sh`,
    `NodeName=sn[0-3] NodeAddr=${SUBNET}.[1-4] CPUs=1 State=UNKNOWN`,
    "PartitionName=p Nodes=sn[0-3] Default=YES MaxTime=INFINITE State=UP", "",
  ].join("\n"));
  const daemon = (cmd: string[], pidFile: string) => {
    const r = sh(cmd, { env: c.env, timeoutMs: 20_000 });
    if (r.code !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr}`);
    // a daemon writes its pid file once it has forked
    const end = performance.now() + 10_000;
    while (!existsSync(pidFile) && performance.now() < end) Bun.sleepSync(50);
    const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, "utf8")) : 0;
    if (!pid) throw new Error(`${cmd.join(" ")}: no pid in ${pidFile}`);
    c.pids.push(pid);
  };
  try {
    startDaemons(c, lab, daemon, sock, br);
  } catch (e) {
    stopCluster(c);
    throw e;
  }
  return c;
}

function startDaemons(c: Cluster, lab: Lab, daemon: (cmd: string[], pidFile: string) => void, sock: string, br: string): void {
  const dir = c.dir;
  daemon(["munged", "-f", "-S", sock, `--pid-file=${dir}/munged.pid`, `--log-file=${dir}/munged.log`, `--seed-file=${dir}/munged.seed`], join(dir, "munged.pid"));
  daemon(["nsenter", `--net=/run/netns/${br}`, "slurmctld", "-i", "-f", c.env.SLURM_CONF], join(dir, "slurmctld.pid"));
  NODES.forEach((n, i) => daemon([...lab.enter(n), "slurmd", "-N", `sn${i}`, "-f", c.env.SLURM_CONF], join(dir, `slurmd-sn${i}.pid`)));
}

function stopCluster(c: Cluster): void {
  for (const pid of c.pids.reverse()) {
    try {
      process.kill(pid, "SIGTERM");
    } catch {}
  }
  Bun.sleepSync(500);
  for (const pid of c.pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
  }
  c.lab.destroy();
}

describe.skipIf(skip)("a real SLURM cluster: slurmctld + one slurmd per namespace", () => {
  beforeAll(async () => {
    ensureBuilt();
    cluster = startCluster();
    const idle = await until(() => /^(idle\n){4}$/.test(slurm(cluster!, ["sinfo", "-h", "-N", "-o", "%T"]).stdout), 20_000, 250);
    if (!idle) throw new Error(`the nodes did not come up: ${slurm(cluster!, ["sinfo", "-N"]).stdout}\n${readFileSync(join(cluster!.dir, "slurmctld.log"), "utf8").slice(-2000)}`);
  }, 40_000);
  afterAll(() => {
    if (cluster) stopCluster(cluster);
  });

  test("the documented job script: 4 nodes found by NodeAddr (their names resolve nowhere), 1 MiB × 10 verified, COMPLETED, nothing left attached", async () => {
    const c = cluster!;
    expect(sh(["getent", "ahostsv4", "sn0"]).code).not.toBe(0);
    const id = submit(c, "--synthetic 1MiB --rounds 10 --verify");
    const f = await waitJobEnd(c, id, 60_000);
    const out = output(c, id);
    expect({ state: f.JobState, exit: f.ExitCode }).toEqual({ state: "COMPLETED", exit: "0:0" });
    for (let k = 0; k < 4; k++) expect(out).toContain(`rank ${k} of 4 on eth0`);
    expect(out.match(/relative L2 error \(max\)\s+│ \d\.\d\de-\d /g)?.length).toBe(4);
    expectNothingAttached(c);
  }, 90_000);

  test("a job whose swarm fails is FAILED with a non-zero exit code (the script waits for srun, not for nothing)", async () => {
    const c = cluster!;
    const id = submit(c, "--synthetic 1MiB --rounds 0");
    const f = await waitJobEnd(c, id, 30_000);
    // srun's code is the highest of its tasks': 2 (usage), or 143 when
    // --kill-on-bad-exit ended the others first; never 0
    expect(f.JobState).toBe("FAILED");
    expect(["2:0", "143:0"]).toContain(f.ExitCode);
    expect(output(c, id)).toContain("--rounds");
    expectNothingAttached(c);
  }, 60_000);

  test("scancel of a serving job: every node detaches itself (SIGTERM), its socket (one per job and node under the shared /run) is gone", async () => {
    const c = cluster!;
    const id = submit(c, "--serve");
    const socks = [0, 1, 2, 3].map((i) => `/run/ainftp/slurm-${id}-sn${i}.sock`);
    const up = await until(() => socks.every((s) => existsSync(s)) && NODES.every((n) => c.lab.linkInfo(n, "eth0").xdp), 20_000, 100);
    expect(up ? "serving" : output(c, id)).toBe("serving");
    expect(slurm(c, ["scancel", id]).code).toBe(0);
    const f = await waitJobEnd(c, id, 30_000);
    expect(f.JobState).toBe("CANCELLED");
    expectNothingAttached(c);
    for (const s of socks) expect(existsSync(s)).toBe(false);
    expect(output(c, id).match(/stopped by\s+│ SIGTERM/g)?.length).toBe(4);
    // the swarm cleaned up, the Epilog found nothing to do
    for (let i = 0; i < 4; i++) expect(readFileSync(join(c.dir, `epilog-sn${i}.log`), "utf8").trim().split("\n").at(-1)).toBe("no stale pins");
  }, 60_000);

  test("a swarm killed outright (SIGKILL, as after KillWait or by the OOM killer) leaves its pins; the documented Epilog removes them; the job is FAILED", async () => {
    const c = cluster!;
    const id = submit(c, "--synthetic 1MiB --rounds 1000000");
    expect(await until(() => NODES.every((n) => c.lab.linkInfo(n, "eth0").xdp) && ainftpPids(c, "n0").length > 0, 20_000, 100)).toBe(true);
    const victims = ainftpPids(c, "n0");
    for (const p of victims) process.kill(p, "SIGKILL");
    const f = await waitJobEnd(c, id, 30_000);
    expect(f.JobState).toBe("FAILED");
    expectNothingAttached(c);
    const log = readFileSync(join(c.dir, "epilog-sn0.log"), "utf8");
    expect(log).toMatch(new RegExp(`removed stale pins at \\S+/eth0 \\(their owner \\(pid (${victims.join("|")})\\) is dead\\)`));
  }, 60_000);
});
