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
// The cluster itself is test/helpers/slurm-lab.ts (shared with the bench test).
// About 20 s here. Needs root, slurmctld, slurmd and munged
// (apt-get install slurm-wlm munge); without them it says so and skips.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { BIN, ROOT, ensureBuilt, sh, until } from "./helpers/netns.ts";
import {
  SLURM_NODES as NODES, attachedState, jobOutput, pidsOf, slurm, slurmSkipReason, startCluster, stopCluster, submit as sbatch,
  waitJobEnd, waitNodesIdle, type Cluster,
} from "./helpers/slurm-lab.ts";

const JOB_SCRIPT = join(ROOT, "examples/slurm/ainftp-job.sh");

const why = slurmSkipReason();
const skip = why !== null;
if (skip) console.warn(`[slurm-cluster] SKIPPED: ${why}`);

let cluster: Cluster | undefined;

const submit = (c: Cluster, args: string) => sbatch(c, JOB_SCRIPT, { AINFTP: BIN, AINFTP_ARGS: args });
const output = jobOutput;
const ainftpPids = (c: Cluster, n: string) => pidsOf(c, n);

function expectNothingAttached(c: Cluster): void {
  for (const s of attachedState(c)) expect(s).toEqual({ n: s.n, xdp: null, pins: false });
}

describe.skipIf(skip)("a real SLURM cluster: slurmctld + one slurmd per namespace", () => {
  beforeAll(async () => {
    ensureBuilt();
    cluster = startCluster();
    await waitNodesIdle(cluster);
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
