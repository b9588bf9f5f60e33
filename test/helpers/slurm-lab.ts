// A real SLURM cluster on network namespaces (Debian's slurm-wlm and munge):
// munged on the host, slurmctld in the bridge's namespace, one slurmd per
// node namespace, all on one bridge. Node names (sn0…) resolve nowhere: jobs
// find their peers through NodeAddr. Used by test/slurm-cluster.test.ts,
// test/slurm-bench.test.ts, and on its own to run a job script on it:
//
//   bun test/helpers/slurm-lab.ts JOB_SCRIPT [ENV=VALUE…]   # prints the job's output and state
//
// Its ports (46817/46818) and subnet are fixed: one cluster at a time.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { BIN, ROOT, canUseNetns, createLab, ensureBuilt, sh, until, type Lab, type Result } from "./netns.ts";

export const SLURM_NODES = ["n0", "n1", "n2", "n3"];
const SUBNET = "10.213.76";
const CTLD_ADDR = `${SUBNET}.254`;
const EPILOG = join(ROOT, "examples/slurm/epilog.sh");
const DAEMONS = ["slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel", "srun"];

export interface Cluster {
  lab: Lab;
  dir: string;
  env: Record<string, string>;
  pids: number[];
  /** Node namespaces (n0…), in SLURM's node order (sn0…). */
  nodes: string[];
}

/** Why a cluster cannot run here (null: it can): needs root, namespaces and the daemons. */
export function slurmSkipReason(): string | null {
  if (!canUseNetns()) return "needs root and network namespaces";
  const missing = DAEMONS.filter((c) => !Bun.which(c, { PATH: `${process.env.PATH}:/usr/sbin` }));
  return missing.length ? `missing ${missing.join(", ")} (make slurm-deps, or apt-get install -y slurm-wlm munge)` : null;
}

/** Runs a SLURM client command from the controller's namespace. */
export function slurm(c: Cluster, cmd: string[], extraEnv: Record<string, string> = {}, timeoutMs = 20_000): Result {
  return sh(["nsenter", `--net=/run/netns/${c.lab.id}-br`, ...cmd], { env: { ...c.env, ...extraEnv }, timeoutMs });
}

export function jobFields(c: Cluster, id: string): Record<string, string> {
  const r = slurm(c, ["scontrol", "show", "job", "-o", id]);
  return Object.fromEntries(r.stdout.trim().split(/\s+/).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
}

/** Waits for the job to end and every node to be idle again (the Epilog runs as a job completes). */
export async function waitJobEnd(c: Cluster, id: string, timeoutMs: number): Promise<Record<string, string>> {
  let f: Record<string, string> = {};
  await until(() => {
    f = jobFields(c, id);
    return ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"].includes(f.JobState) && !/COMPLETING/.test(f.JobState);
  }, timeoutMs, 200);
  await until(() => !/COMPLETING|COMP/.test(slurm(c, ["sinfo", "-h", "-o", "%T"]).stdout), 15_000, 200);
  return f;
}

/** sbatch SCRIPT with env; the job's output goes to <dir>/job-<id>.out. Returns the job id. */
export function submit(c: Cluster, script: string, env: Record<string, string> = {}, args: string[] = []): string {
  const r = slurm(c, ["sbatch", "--parsable", "-o", join(c.dir, "job-%j.out"), ...args, script], env);
  if (r.code !== 0) throw new Error(`sbatch failed: ${r.stderr}`);
  return r.stdout.trim().split(";")[0];
}

export const jobOutput = (c: Cluster, id: string): string => {
  const f = join(c.dir, `job-${id}.out`);
  return existsSync(f) ? readFileSync(f, "utf8") : "";
};

/** Processes of `exe` (default dist/ainftp) in node n's namespace (what slurmd started there). */
export function pidsOf(c: Cluster, n: string, exe = BIN): number[] {
  return sh(["ip", "netns", "pids", c.lab.node(n).name]).stdout.split(/\s+/).filter(Boolean).map(Number)
    .filter((p) => sh(["readlink", `/proc/${p}/exe`]).stdout.trim() === exe);
}

/** Per node: the XDP program on eth0 (null: none) and whether ainftp pins are left in its namespace. */
export function attachedState(c: Cluster): { n: string; xdp: unknown; pins: boolean }[] {
  return c.nodes.map((n) => ({ n, xdp: c.lab.linkInfo(n, "eth0").xdp ?? null, pins: existsSync(c.lab.pinRoot(n)) }));
}

function slurmConf(dir: string, sock: string, nodes: number): string {
  const last = nodes - 1;
  return [
    "ClusterName=aft", `SlurmctldHost=${hostname()}(${CTLD_ADDR})`,
    "AuthType=auth/munge", `AuthInfo=socket=${sock}`, "CredType=cred/munge", "SlurmUser=root", "SlurmdUser=root",
    `StateSaveLocation=${dir}/ctld`, `SlurmdSpoolDir=${dir}/slurmd-%n`, `SlurmctldPidFile=${dir}/slurmctld.pid`, `SlurmdPidFile=${dir}/slurmd-%n.pid`,
    `SlurmctldLogFile=${dir}/slurmctld.log`, `SlurmdLogFile=${dir}/slurmd-%n.log`,
    // ports of our own, away from a real cluster's 6817/6818
    "SlurmctldPort=46817", "SlurmdPort=46818",
    "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
    "AccountingStorageType=accounting_storage/none", "SwitchType=switch/none", "MpiDefault=none", "SelectType=select/linear",
    "ReturnToService=2", "KillWait=5", "MinJobAge=600", `Epilog=${dir}/epilog.sh`,
    // one /tmp per node: srun --mpi=pmix makes its clients' directory under TmpFS, and the namespaces share one /tmp
    `TmpFS=${dir}/tmp-%n`,
    `NodeName=sn[0-${last}] NodeAddr=${SUBNET}.[1-${nodes}] CPUs=1 State=UNKNOWN`,
    `PartitionName=p Nodes=sn[0-${last}] Default=YES MaxTime=INFINITE State=UP`, "",
  ].join("\n");
}

/** Starts munged, slurmctld and one slurmd per node namespace; the Epilog is
 * the documented one (examples/slurm/epilog.sh), logging to <dir>/epilog-<node>.log. */
export function startCluster(tag = "slurm", nodes = SLURM_NODES): Cluster {
  const lab = createLab(tag, nodes, { subnet: SUBNET });
  const dir = lab.tmp;
  sh(["ip", "-n", `${lab.id}-br`, "addr", "add", `${CTLD_ADDR}/24`, "dev", "br0"]);
  const c: Cluster = { lab, dir, env: { SLURM_CONF: join(dir, "slurm.conf") }, pids: [], nodes };
  mkdirSync(join(dir, "ctld"), { recursive: true });
  nodes.forEach((_, i) => mkdirSync(join(dir, `tmp-sn${i}`), { recursive: true }));
  writeFileSync(join(dir, "epilog.sh"), `#!/bin/sh\nAINFTP=${BIN} ${EPILOG} >> ${dir}/epilog-$SLURMD_NODENAME.log 2>&1\n`, { mode: 0o755 });
  const sock = join(dir, "munge.sock");
  writeFileSync(c.env.SLURM_CONF, slurmConf(dir, sock, nodes.length));
  const daemon = (cmd: string[], pidFile: string) => {
    const r = sh(cmd, { env: c.env, timeoutMs: 20_000 });
    if (r.code !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr}`);
    // a daemon writes its pid file once it has forked (created first, then written)
    const readPid = () => (existsSync(pidFile) ? Number(readFileSync(pidFile, "utf8").trim()) || 0 : 0);
    const end = performance.now() + 10_000;
    while (!readPid() && performance.now() < end) Bun.sleepSync(50);
    const pid = readPid();
    if (!pid) throw new Error(`${cmd.join(" ")}: no pid in ${pidFile}`);
    c.pids.push(pid);
  };
  try {
    daemon(["munged", "-f", "-S", sock, `--pid-file=${dir}/munged.pid`, `--log-file=${dir}/munged.log`, `--seed-file=${dir}/munged.seed`], join(dir, "munged.pid"));
    daemon(["nsenter", `--net=/run/netns/${lab.id}-br`, "slurmctld", "-i", "-f", c.env.SLURM_CONF], join(dir, "slurmctld.pid"));
    nodes.forEach((n, i) => daemon([...lab.enter(n), "slurmd", "-N", `sn${i}`, "-f", c.env.SLURM_CONF], join(dir, `slurmd-sn${i}.pid`)));
  } catch (e) {
    stopCluster(c);
    throw e;
  }
  return c;
}

/** Waits until every node is idle; throws with the controller's log when they do not come up. */
export async function waitNodesIdle(c: Cluster, timeoutMs = 20_000): Promise<void> {
  const want = new RegExp(`^(idle\\n){${c.nodes.length}}$`);
  const idle = await until(() => want.test(slurm(c, ["sinfo", "-h", "-N", "-o", "%T"]).stdout), timeoutMs, 250);
  if (!idle) throw new Error(`the nodes did not come up: ${slurm(c, ["sinfo", "-N"]).stdout}\n${readFileSync(join(c.dir, "slurmctld.log"), "utf8").slice(-2000)}`);
}

export function stopCluster(c: Cluster): void {
  for (const pid of [...c.pids].reverse()) {
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

// `bun test/helpers/slurm-lab.ts SCRIPT [K=V…]`: one job on a fresh cluster, its output on stdout.
if (import.meta.main) {
  const [script, ...kv] = process.argv.slice(2);
  const why = slurmSkipReason();
  if (!script || why) {
    console.error(why ?? "usage: bun test/helpers/slurm-lab.ts JOB_SCRIPT [ENV=VALUE…]");
    process.exit(2);
  }
  ensureBuilt();
  const env = Object.fromEntries(kv.map((x) => [x.slice(0, x.indexOf("=")), x.slice(x.indexOf("=") + 1)]));
  const c = startCluster("slab");
  let code = 1;
  try {
    await waitNodesIdle(c);
    const id = submit(c, script, { AINFTP: BIN, ...env });
    console.error(`job ${id} on ${c.nodes.length} nodes (slurmctld + one slurmd per namespace); output below`);
    const f = await waitJobEnd(c, id, 3_600_000);
    process.stdout.write(jobOutput(c, id));
    console.error(`job ${id}: ${f.JobState}, exit ${f.ExitCode}; nodes after it: ${JSON.stringify(attachedState(c))}`);
    code = f.JobState === "COMPLETED" ? 0 : 1;
  } finally {
    stopCluster(c);
  }
  process.exit(code);
}
