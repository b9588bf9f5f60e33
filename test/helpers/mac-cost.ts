#!/usr/bin/env bun
// The data plane's MAC, measured (issue 16): ns per packet of the XDP program
// through BPF_PROG_TEST_RUN with auth off, header-only and full, runs
// interleaved so all three see the same machine. Contributions use the
// bench-only no-dedupe switch (each repeat is summed again, as bench/xdp.ts
// "sustained"); results are stored every run into alternating rounds.
// A measurement, not a test: `bun test/helpers/mac-cost.ts [--json]`. The
// rows belong in bench/xdp.ts (another engineer's file): see the README's
// Security section.
import { CFG_AUTH_FULL, CFG_AUTH_HDR, ELEMS_MTU1500, MAX_ELEMS_AUTH, MAX_WORKERS, PKT_CONTRIB, allMembers } from "../../src/abi.ts";
import { sealDatagram } from "../../src/jobkey.ts";
import { datagram, frame } from "../../src/packet.ts";
import { ReflexObject } from "../../src/reflex.ts";

const REPEAT = 50_000, RUNS = 15;
const KEY = crypto.getRandomValues(new Uint8Array(16));
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];
const values = (n: number) => Array.from({ length: n }, (_, i) => ((i * 7919) % 4001) - 2000);

const rows: { elems: number; off: number; header: number; full: number }[] = [];
for (const elems of [ELEMS_MTU1500, MAX_ELEMS_AUTH]) {
  using r = await ReflexObject.load({ chunks: 8, benchNoDedupe: true });
  const base = {
    jobId: 1, roundBase: 0, memberMask: allMembers(MAX_WORKERS), members: MAX_WORKERS,
    chunkElems: MAX_ELEMS_AUTH, chunks: 8, batch: 32, ownedChunks: 8,
  };
  r.setJobKey(KEY);
  const d = datagram({ type: PKT_CONTRIB, jobId: 1, round: 0, chunk: 0, rank: 0 }, values(elems));
  const frames = { off: frame(d), header: frame(sealDatagram(KEY, d, "header")), full: frame(sealDatagram(KEY, d, "full")) };
  const flags = { off: 0, header: CFG_AUTH_HDR, full: CFG_AUTH_FULL };
  const ns: Record<keyof typeof frames, number[]> = { off: [], header: [], full: [] };
  for (let i = 0; i < RUNS; i++)
    for (const m of ["off", "header", "full"] as const) {
      r.setConfig({ ...base, flags: flags[m] });
      const before = r.counters().summed;
      ns[m].push(r.testRun(frames[m], REPEAT).ns);
      if (r.counters().summed - before !== REPEAT) throw new Error(`${m}: not every run was summed (bad MAC?)`);
    }
  rows.push({ elems, off: median(ns.off), header: median(ns.header), full: median(ns.full) });
}
if (process.argv.includes("--json")) console.log(JSON.stringify({ method: "BPF_PROG_TEST_RUN, median of 15 interleaved runs of 50k repeats", rows }));
else
  for (const x of rows)
    console.log(
      `contribution, ${x.elems} elements: off ${x.off.toFixed(0)} ns/pkt, header ${x.header.toFixed(0)} (+${(x.header - x.off).toFixed(0)}), ` +
        `full ${x.full.toFixed(0)} (+${(x.full - x.off).toFixed(0)}, ${(x.full / x.off).toFixed(2)}x)`,
    );
