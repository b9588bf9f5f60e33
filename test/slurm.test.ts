// src/slurm.ts: SLURM's hostlist syntax against what `scontrol show
// hostnames` prints, tasks-per-node counts and task layouts, the bootstrap
// from srun's variables (and every way they can be missing or wrong), name
// resolution, and `ip -j route get` parsing.
import { describe, expect, test } from "bun:test";
import { AinftpError } from "../src/errors.ts";
import {
  MAX_HOSTS, expandHostlist, expandTasksPerNode, parseNodeAddrs, parseRouteGet, resolveHosts, routeInterface, slurmBootstrap, slurmSocketPath, taskNodes,
} from "../src/slurm.ts";

/** The AinftpError fn throws; fails the test when it throws nothing or something else. */
function errorOf(fn: () => unknown): AinftpError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(AinftpError);
    return e as AinftpError;
  }
  throw new Error("expected an AinftpError");
}

describe("expandHostlist", () => {
  test.each([
    // scontrol(1)'s and srun's documented examples, and node lists from real jobs
    ["tux[1-3]", ["tux1", "tux2", "tux3"]],
    ["lx[10-12]", ["lx10", "lx11", "lx12"]],
    ["gnode[10,20,25,37]", ["gnode10", "gnode20", "gnode25", "gnode37"]],
    ["sh04-15n01", ["sh04-15n01"]],
    // the examples
    ["node[01-04,07],gpu-a[1-2]", ["node01", "node02", "node03", "node04", "node07", "gpu-a1", "gpu-a2"]],
    ["n[008-011]", ["n008", "n009", "n010", "n011"]],
    ["r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]],
    ["c[5]", ["c5"]],
    ["alpha,beta", ["alpha", "beta"]],
  ])("%s", (list, hosts) => {
    expect(expandHostlist(list)).toEqual(hosts);
  });

  test("the width is the low bound's, as written", () => {
    expect(expandHostlist("n[8-11]")).toEqual(["n8", "n9", "n10", "n11"]);
    expect(expandHostlist("n[098-101]")).toEqual(["n098", "n099", "n100", "n101"]);
    expect(expandHostlist("n[99-101]")).toEqual(["n99", "n100", "n101"]);
    expect(expandHostlist("n[0-1]")).toEqual(["n0", "n1"]);
    expect(expandHostlist("n[0001]")).toEqual(["n0001"]);
  });

  test("three brackets nest the way SLURM nests them: middle, first, last", () => {
    expect(expandHostlist("a[1-2]b[1-2]c[1-2]")).toEqual([
      "a1b1c1", "a1b1c2", "a2b1c1", "a2b1c2", "a1b2c1", "a1b2c2", "a2b2c1", "a2b2c2",
    ]);
  });

  test("commas inside brackets do not split items; blanks separate items like commas", () => {
    expect(expandHostlist("a[1,3],b[2-3,5]")).toEqual(["a1", "a3", "b2", "b3", "b5"]);
    expect(expandHostlist("a1 b2\tc3, d4")).toEqual(["a1", "b2", "c3", "d4"]);
    expect(expandHostlist("[1-2]")).toEqual(["1", "2"]);
    expect(expandHostlist("")).toEqual([]);
  });

  test("duplicates are kept in order, as SLURM keeps them", () => {
    expect(expandHostlist("a[1-2],a1")).toEqual(["a1", "a2", "a1"]);
  });

  test.each([
    ["n[1-2", "'n[1-2' has a '[' without its ']'"],
    ["n1-2]", "'n1-2]' has a ']' without its '['"],
    ["n[[1]]", "without its ']'"],
    ["n[5-3]", "range 5-3 in 'n[5-3]' runs backwards"],
    ["a,,b", "empty item"],
    [",a", "empty item"],
    ["a,", "ends with an empty item"],
    ["n[]", "'' in 'n[]' is not a number"],
    ["n[1,,2]", "'' in 'n[1,,2]' is not a number"],
    ["n[a-b]", "'a-b' in 'n[a-b]' is not a number"],
    ["n[1-]", "'1-' in 'n[1-]'"],
    ["n[-1]", "'-1' in 'n[-1]'"],
    ["n[1 - 2]", "'1 - 2' in 'n[1 - 2]'"],
    ["node[1-2]-ib", "'-ib' after its last bracket"],
  ])("%s is rejected, naming the bad part", (list, what) => {
    const e = errorOf(() => expandHostlist(list));
    expect(e.message).toContain(what);
    expect(e.message).toContain(`'${list}'`);
    expect(e.hint).not.toBe("");
  });

  test("the reversed range's hint gives it the right way round", () => {
    expect(errorOf(() => expandHostlist("n[5-3]")).hint).toContain("3-5");
  });

  test("absurd expansions are refused before they are built", () => {
    expect(expandHostlist(`n[1-${MAX_HOSTS}]`)).toHaveLength(MAX_HOSTS);
    expect(errorOf(() => expandHostlist(`n[0-${MAX_HOSTS}]`)).message).toContain(`more than ${MAX_HOSTS} hosts`);
    // a product of two modest brackets, and a sum of items, count too
    expect(errorOf(() => expandHostlist("a[0-999]b[0-999]")).message).toContain("more than");
    expect(errorOf(() => expandHostlist(`x[1-${MAX_HOSTS}],y1`)).message).toContain("more than");
    expect(errorOf(() => expandHostlist("n[0-999999999999999]")).message).toContain("more than");
  });
});

describe("tasks per node", () => {
  test("SLURM's repeat syntax", () => {
    expect(expandTasksPerNode("2(x3),1")).toEqual([2, 2, 2, 1]);
    expect(expandTasksPerNode("1(x4)")).toEqual([1, 1, 1, 1]);
    expect(expandTasksPerNode("4")).toEqual([4]);
    expect(expandTasksPerNode("3,2(x2)")).toEqual([3, 2, 2]);
  });

  test.each(["", "2(3)", "2(x0)", "x2", "2(x3", "-1"])("%p is rejected, naming the variable", (spec) => {
    const e = errorOf(() => expandTasksPerNode(spec, "SLURM_STEP_TASKS_PER_NODE"));
    expect(e.message).toContain(`SLURM_STEP_TASKS_PER_NODE='${spec}'`);
  });

  test("block fills each node in turn; cyclic deals round robin, skipping full nodes", () => {
    expect(taskNodes([2, 2, 1], "block")).toEqual([0, 0, 1, 1, 2]);
    expect(taskNodes([2, 2, 1], "cyclic")).toEqual([0, 1, 2, 0, 1]);
    expect(taskNodes([3, 1], "cyclic")).toEqual([0, 1, 0, 0]);
  });
});

describe("slurmBootstrap", () => {
  // What srun sets for task 5 of `srun -N4 -n8 ./train` (the variables we read, plus some we do not).
  const srun8 = {
    SLURM_JOB_ID: "123456",
    SLURM_JOBID: "123456",
    SLURM_STEP_ID: "0",
    SLURM_JOB_NODELIST: "node[01-04]",
    SLURM_STEP_NODELIST: "node[01-04]",
    SLURM_NTASKS: "8",
    SLURM_NPROCS: "8",
    SLURM_TASKS_PER_NODE: "2(x4)",
    SLURM_STEP_TASKS_PER_NODE: "2(x4)",
    SLURM_PROCID: "5",
    SLURM_NODEID: "2",
    SLURM_LOCALID: "1",
    SLURM_DISTRIBUTION: "block",
  };

  test("two tasks on each of four nodes, block layout", () => {
    const job = slurmBootstrap(srun8);
    expect(job.rank).toBe(5);
    expect(job.size).toBe(8);
    expect(job.nodeNames).toEqual(["node01", "node02", "node03", "node04"]);
    expect(job.hosts).toEqual(["node01", "node01", "node02", "node02", "node03", "node03", "node04", "node04"]);
    expect(job.hosts[job.rank]).toBe("node03");
    expect(Number.isInteger(job.jobId) && job.jobId >= 0 && job.jobId <= 0xffffffff).toBe(true);
  });

  test("the minimal set: the job's list and counts, no step variables, no node id", () => {
    const job = slurmBootstrap({ SLURM_JOB_NODELIST: "node[01-04]", SLURM_NTASKS: "8", SLURM_TASKS_PER_NODE: "2(x4)", SLURM_PROCID: "5", SLURM_JOB_ID: "7" });
    expect(job.hosts[5]).toBe("node03");
  });

  test("a real single-task-per-node environment (older aliases only)", () => {
    const job = slurmBootstrap({
      SLURM_NODELIST: "gnode[10,20,25,37]", SLURM_JOBID: "200505", SLURM_NPROCS: "4", SLURM_TASKS_PER_NODE: "1(x4)",
      SLURM_PROCID: "3", SLURM_NODEID: "3", SLURM_DISTRIBUTION: "cyclic",
    });
    expect(job.hosts).toEqual(["gnode10", "gnode20", "gnode25", "gnode37"]);
    expect(job.rank).toBe(3);
  });

  test("the step's node list and counts win over the job's", () => {
    const job = slurmBootstrap({
      ...srun8, SLURM_STEP_NODELIST: "node[02-03]", SLURM_STEP_TASKS_PER_NODE: "1(x2)", SLURM_NTASKS: "2", SLURM_PROCID: "1", SLURM_NODEID: "1",
    });
    expect(job.hosts).toEqual(["node02", "node03"]);
  });

  test("uneven counts and a cyclic layout", () => {
    const env = { SLURM_JOB_ID: "9", SLURM_JOB_NODELIST: "a,b,c", SLURM_NTASKS: "7", SLURM_TASKS_PER_NODE: "3(x2),1", SLURM_PROCID: "0" };
    expect(slurmBootstrap(env).hosts).toEqual(["a", "a", "a", "b", "b", "b", "c"]);
    expect(slurmBootstrap({ ...env, SLURM_DISTRIBUTION: "cyclic:block" }).hosts).toEqual(["a", "b", "c", "a", "b", "a", "b"]);
  });

  test("without tasks-per-node, an even split is assumed and an uneven one refused", () => {
    const env = { SLURM_JOB_ID: "9", SLURM_JOB_NODELIST: "a,b", SLURM_NTASKS: "4", SLURM_PROCID: "2" };
    expect(slurmBootstrap(env).hosts).toEqual(["a", "a", "b", "b"]);
    expect(errorOf(() => slurmBootstrap({ ...env, SLURM_NTASKS: "3" })).message).toContain("do not split evenly");
  });

  test("the job id is a u32 that every task derives alike, and differs per step", () => {
    const a = slurmBootstrap(srun8).jobId;
    expect(slurmBootstrap({ ...srun8, SLURM_PROCID: "0", SLURM_NODEID: "0" }).jobId).toBe(a);
    expect(slurmBootstrap({ ...srun8, SLURM_STEP_ID: "1" }).jobId).not.toBe(a);
    expect(slurmBootstrap({ ...srun8, SLURM_JOB_ID: "123457", SLURM_JOBID: "123457" }).jobId).not.toBe(a);
    const { SLURM_STEP_ID: _, ...noStep } = srun8;
    expect(slurmBootstrap(noStep).jobId).not.toBe(a);
  });

  test.each(["SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_JOB_NODELIST"])("missing %s is named, with what to do", (name) => {
    const env: Record<string, string | undefined> = { ...srun8 };
    // the aliases must go too, or they would stand in
    const aliases: Record<string, string[]> = { SLURM_NTASKS: ["SLURM_NPROCS"], SLURM_JOB_ID: ["SLURM_JOBID"], SLURM_JOB_NODELIST: ["SLURM_STEP_NODELIST"] };
    for (const alias of aliases[name] ?? []) delete env[alias];
    delete env[name];
    const e = errorOf(() => slurmBootstrap(env));
    expect(e.message).toBe(`slurm bootstrap: ${name} is not set`);
    expect(e.hint).toBe("run under srun/sbatch, or pass --peers/--rank");
  });

  test("no SLURM variables at all (not under SLURM)", () => {
    expect(errorOf(() => slurmBootstrap({})).message).toContain("SLURM_PROCID is not set");
  });

  test.each([
    [{ SLURM_PROCID: "x" }, "SLURM_PROCID='x' is not an integer"],
    [{ SLURM_PROCID: "-1" }, "SLURM_PROCID='-1'"],
    [{ SLURM_NTASKS: "0", SLURM_NPROCS: "0" }, "SLURM_NTASKS='0' is not an integer ≥ 1"],
    [{ SLURM_PROCID: "8" }, "SLURM_PROCID=8 is not below SLURM_NTASKS=8"],
    [{ SLURM_STEP_TASKS_PER_NODE: "2(x3)" }, "SLURM_STEP_TASKS_PER_NODE='2(x3)' gives 6 tasks on 3 nodes, but SLURM_NTASKS=8 and SLURM_STEP_NODELIST has 4 nodes"],
    [{ SLURM_STEP_NODELIST: "node[01-04" }, "SLURM_STEP_NODELIST: expand hostlist: 'node[01-04' has a '[' without its ']'"],
    [{ SLURM_NODEID: "3" }, "SLURM_NODEID=3, but a block layout of SLURM_STEP_TASKS_PER_NODE='2(x4)' puts rank 5 on node 2"],
    [{ SLURM_DISTRIBUTION: "plane=4" }, "SLURM_DISTRIBUTION='plane=4'"],
    [{ SLURM_DISTRIBUTION: "arbitrary" }, "only for block and cyclic"],
  ])("invalid %p", (override, what) => {
    const e = errorOf(() => slurmBootstrap({ ...srun8, ...override }));
    expect(e.message).toContain(what);
    expect(e.hint).toContain("--peers/--rank");
  });
});

describe("resolveHosts", () => {
  test("IPv4 literals pass through; names resolve to IPv4, in order", async () => {
    expect(await resolveHosts(["10.0.0.7", "localhost", "127.0.0.1", "localhost"])).toEqual(["10.0.0.7", "127.0.0.1", "127.0.0.1", "127.0.0.1"]);
  });

  test("an unresolvable name is named", async () => {
    const e = await resolveHosts(["localhost", "no-such-host.invalid"]).catch((x) => x);
    expect(e).toBeInstanceOf(AinftpError);
    expect(e.message).toContain("'no-such-host.invalid'");
    expect(e.hint).toContain("--peers");
  });
});

describe("NodeAddr when a node name does not resolve (scontrol show node)", () => {
  // as `scontrol show node -o sn0,sn1` prints it (slurm-wlm 22.05), fields trimmed
  const SHOW = [
    "NodeName=sn0 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=1 NodeAddr=10.213.75.1 NodeHostName=sn0 Version=22.05.8 OS=Linux State=IDLE Partitions=p",
    "NodeName=sn1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=1 NodeAddr=localhost NodeHostName=sn1 Version=22.05.8 OS=Linux State=IDLE Partitions=p",
    "NodeName=sn2 Arch=x86_64 NodeAddr=sn2 NodeHostName=sn2 State=IDLE",
  ].join("\n");

  test("parseNodeAddrs reads NodeName → NodeAddr", () => {
    expect([...parseNodeAddrs(SHOW)]).toEqual([["sn0", "10.213.75.1"], ["sn1", "localhost"], ["sn2", "sn2"]]);
    expect(parseNodeAddrs("").size).toBe(0);
  });

  test("names that do not resolve take their NodeAddr (an address, or a name that resolves); scontrol is asked once, for those only", async () => {
    const asked: string[][] = [];
    const scontrol = (names: string[]) => (asked.push(names), SHOW);
    expect(await resolveHosts(["sn0", "localhost", "sn1"], { scontrol }))
      .toEqual(["10.213.75.1", "127.0.0.1", "127.0.0.1"]);
    expect(asked).toEqual([["sn0", "sn1"]]);
  });

  test("a node whose NodeAddr is its unresolvable name, or that scontrol does not know, is named with the fix", async () => {
    for (const name of ["sn2", "sn9"]) {
      const e = await resolveHosts([name], { scontrol: () => SHOW }).catch((x) => x);
      expect(e).toBeInstanceOf(AinftpError);
      expect(e.message).toContain(`'${name}'`);
      expect(e.hint).toContain("NodeAddr");
    }
  });

  test("the --serve socket is unique per job and node", () => {
    expect(slurmSocketPath({ SLURM_JOB_ID: "42", SLURMD_NODENAME: "sn0" })).toBe("/run/ainftp/slurm-42-sn0.sock");
    expect(slurmSocketPath({ SLURM_JOB_ID: "42", SLURMD_NODENAME: "sn1" })).not.toBe(slurmSocketPath({ SLURM_JOB_ID: "42", SLURMD_NODENAME: "sn0" }));
    expect(slurmSocketPath({ SLURM_JOB_ID: "43", SLURMD_NODENAME: "sn0" })).not.toBe(slurmSocketPath({ SLURM_JOB_ID: "42", SLURMD_NODENAME: "sn0" }));
    expect(slurmSocketPath({ SLURM_JOB_ID: "7", SLURMD_NODENAME: "a/b c" })).toBe("/run/ainftp/slurm-7-a_b_c.sock");
  });
});

describe("routes", () => {
  test("parseRouteGet on canned `ip -j route get` output", () => {
    expect(parseRouteGet('[{"dst":"8.8.8.8","gateway":"192.0.2.1","dev":"eth0","prefsrc":"192.0.2.2","flags":[],"uid":0,"cache":[]}]')).toEqual({
      dev: "eth0", src: "192.0.2.2",
    });
    expect(parseRouteGet('[{"type":"local","dst":"127.0.0.1","dev":"lo","prefsrc":"127.0.0.1","flags":[],"uid":0,"cache":["local"]}]')).toEqual({
      dev: "lo", src: "127.0.0.1",
    });
    expect(parseRouteGet('[{"dst":"10.1.0.2","dev":"veth0","flags":[]}]')).toEqual({ dev: "veth0", src: "" });
  });

  test.each(["", "not json", "[]", "{}", '[{"dst":"1.2.3.4"}]'])("parseRouteGet rejects %p", (text) => {
    expect(errorOf(() => parseRouteGet(text)).op).toBe("route lookup");
  });

  test.skipIf(!Bun.which("ip"))("routeInterface asks the kernel", () => {
    expect(routeInterface("127.0.0.1")).toBe("lo");
    expect(errorOf(() => routeInterface("999.1.1.1")).message).toContain("route to 999.1.1.1");
  });
});
