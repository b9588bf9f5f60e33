#!/usr/bin/env bun
// XDP micro-benchmark: runs the Reflex through BPF_PROG_TEST_RUN and prints
// the kernel-measured ns per packet and per int16 element, for contribution
// and result packets at 1500-byte and ~3.5 KB frames.
//
// Two ways to measure summing, both printed:
// - sustained: the program dedupes by rank, so a packet repeated with
//   `repeat` would measure the duplicate path. A bench-only rodata switch
//   (bench_no_dedupe, always 0 when attached; the verifier prunes it) makes a
//   repeated contribution be summed again, so `repeat` = 100k measures the
//   lock + add loop + completion check with warm caches, as in a stream.
// - single-shot: every (round, chunk, rank) is run once (repeat = 1) with the
//   real program, 64 ranks filling every slot and rounds moving the window as
//   the collective will; each run pays a cold start (about the pass path's
//   repeat=1 time, printed too), so this is an upper bound.
// The duplicate and pass paths are measured with a large `repeat`.
import Table from "cli-table3";
import { CFG_SENTRY, MAX_ELEMS, ELEMS_MTU1500, ELEMS_ONE_PAGE, MAX_WORKERS, PKT_CONTRIB, PKT_RESULT, allMembers } from "../src/abi.ts";
import { datagram, frame } from "../src/packet.ts";
import { ReflexObject } from "../src/reflex.ts";

const args = process.argv.slice(2);
const json = args.includes("--json");
const rounds = Number(args[args.indexOf("--rounds") + 1]) || 4;
const CHUNKS = 64;
const ROUND_OFF = 14 + 20 + 8 + 12; // round field inside a plain IPv4 frame

interface Row {
  case: string;
  frameBytes: number;
  elements: number;
  packets: number;
  nsPerPacketMedian: number;
  nsPerPacketMean: number;
  nsPerPacketP99: number;
  nsPerElement: number | null;
  /** The sentry's extra time per packet against the same packets without it, in %. */
  sentryExtraPct?: number;
}

function stats(name: string, frameBytes: number, elements: number, ns: number[]): Row {
  const s = [...ns].sort((a, b) => a - b);
  const mean = ns.reduce((a, b) => a + b, 0) / ns.length;
  const med = s[Math.floor(s.length / 2)];
  return {
    case: name, frameBytes, elements, packets: ns.length,
    nsPerPacketMedian: med, nsPerPacketMean: Math.round(mean), nsPerPacketP99: s[Math.floor(s.length * 0.99)],
    nsPerElement: elements ? +(mean / elements).toFixed(3) : null,
  };
}

function randomValues(n: number, seed: number): Int16Array {
  const v = new Int16Array(n);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    v[i] = (x % 512) - 256;
  }
  return v;
}

async function contributions(r: ReflexObject, elems: number): Promise<Row> {
  const frames: Uint8Array[][] = [];
  for (let c = 0; c < CHUNKS; c++) {
    frames.push([]);
    for (let rank = 0; rank < MAX_WORKERS; rank++)
      frames[c].push(frame(datagram({ type: PKT_CONTRIB, jobId: 1, round: 0, chunk: c, rank }, randomValues(elems, c * 64 + rank + 1))));
  }
  const ns: number[] = [];
  const ring = r.events();
  for (let round = 0; round < rounds; round++) {
    r.setConfig({ ...r.config(), roundBase: Math.max(0, round - 1) });
    r.resetBank(round & 1);
    for (let c = 0; c < CHUNKS; c++)
      for (let rank = 0; rank < MAX_WORKERS; rank++) {
        const f = frames[c][rank];
        new DataView(f.buffer).setUint32(ROUND_OFF, round, true);
        const res = r.testRun(f);
        if (res.action !== 1) throw new Error(`contribution not consumed (action ${res.action})`);
        ns.push(res.ns);
      }
    ring.poll(0);
  }
  const c = r.counters();
  if (c.completed < rounds * CHUNKS) throw new Error(`only ${c.completed} slots completed`);
  ring.close();
  return stats(`contribution, single-shot (${MAX_WORKERS} ranks/slot)`, frames[0][0].length, elems, ns);
}

async function results(r: ReflexObject, elems: number): Promise<Row> {
  const ns: number[] = [];
  const ring = r.events();
  for (let round = 0; round < rounds * 16; round++) {
    r.setConfig({ ...r.config(), roundBase: Math.max(0, round - 1) });
    r.resetBank(round & 1);
    for (let c = 0; c < CHUNKS; c++) {
      const f = frame(datagram({ type: PKT_RESULT, jobId: 1, round, chunk: c, rank: 0, contributors: 64 }, randomValues(elems, c + 1)));
      const res = r.testRun(f);
      if (res.action !== 1) throw new Error("result not consumed");
      ns.push(res.ns);
    }
    ring.poll(0);
  }
  ring.close();
  return stats("result, single-shot, stored in mmapped map", 74 + elems * 2, elems, ns);
}

function repeated(r: ReflexObject, name: string, f: Uint8Array, elems: number, repeat = 100_000): Row {
  const ns: number[] = [];
  for (let i = 0; i < 20; i++) ns.push(r.testRun(f, repeat).ns);
  return { ...stats(name, f.length, elems, ns), packets: 20 * repeat };
}

async function main() {
  const rows: Row[] = [];
  const progress = (s: string) => !json && process.stderr.write(`  ${s}…\n`);
  // 1500-byte frames, the largest that fits one page (3514 B), and MAX_ELEMS
  // (a 9000-byte MTU's frame: over a page, its payload mostly in frags)
  for (const elems of [ELEMS_MTU1500, ELEMS_ONE_PAGE, MAX_ELEMS]) {
    {
      using s = await ReflexObject.load({ chunks: CHUNKS, benchNoDedupe: true });
      s.setConfig({
        jobId: 1, roundBase: 0, memberMask: allMembers(MAX_WORKERS), members: MAX_WORKERS,
        chunkElems: MAX_ELEMS, chunks: CHUNKS, batch: 32, ownedChunks: CHUNKS,
      });
      progress(`sustained contributions, ${elems} elements`);
      const f = frame(datagram({ type: PKT_CONTRIB, jobId: 1, round: 0, chunk: 0, rank: 0 }, randomValues(elems, 7)));
      // the sentry off and on (a gate that accepts every energy), runs
      // interleaved so both see the same machine
      const base = s.config();
      const gates = s.gates();
      for (const at of [0, 1]) [gates[2 * at], gates[2 * at + 1]] = [-(2 ** 31), 2 ** 31 - 1]; // chunk 0, full and short
      const off: number[] = [];
      const on: number[] = [];
      for (let i = 0; i < 20; i++) {
        s.setConfig({ ...base, flags: 0 });
        off.push(s.testRun(f, 100_000).ns);
        s.setConfig({ ...base, flags: CFG_SENTRY });
        on.push(s.testRun(f, 100_000).ns);
      }
      const plain = { ...stats("contribution, sustained (summed each run)", f.length, elems, off), packets: 20 * 100_000 };
      const sentry = { ...stats("contribution, sustained, sentry on", f.length, elems, on), packets: 20 * 100_000 };
      sentry.sentryExtraPct = Math.round(1000 * (sentry.nsPerPacketMedian / plain.nsPerPacketMedian - 1)) / 10;
      rows.push(plain, sentry);
      if (s.counters().summed < 40 * 100_000) throw new Error("sustained run did not sum every packet");
    }
    using r = await ReflexObject.load({ chunks: CHUNKS });
    r.setConfig({
      jobId: 1, roundBase: 0, memberMask: allMembers(MAX_WORKERS), members: MAX_WORKERS,
      chunkElems: MAX_ELEMS, chunks: CHUNKS, batch: 32, ownedChunks: CHUNKS,
    });
    progress(`contributions, ${elems} elements`);
    rows.push(await contributions(r, elems));
    progress(`results, ${elems} elements`);
    rows.push(await results(r, elems));
    const dup = frame(datagram({ type: PKT_CONTRIB, jobId: 1, round: rounds - 1, chunk: 0, rank: 0 }, randomValues(elems, 1)));
    rows.push(repeated(r, "contribution, duplicate (dropped)", dup, 0));
  }
  {
    using r = await ReflexObject.load({ chunks: CHUNKS });
    const other = frame(new Uint8Array(64), { dstPort: 53 });
    rows.push(repeated(r, "other UDP traffic (passed)", other, 0));
    const one: number[] = [];
    for (let i = 0; i < 5000; i++) one.push(r.testRun(other).ns);
    rows.push({ ...stats("other UDP traffic, single-shot (cold-start cost)", other.length, 0, one) });
  }

  if (json) {
    console.log(JSON.stringify({ method: "BPF_PROG_TEST_RUN, kernel-measured duration per run", rows }, null, 2));
    return;
  }
  const t = new Table({
    head: ["case", "frame B", "elems", "packets", "ns/pkt median", "ns/pkt mean", "ns/pkt p99", "ns/elem (mean)", "sentry extra"],
    style: { head: [], border: [] },
  });
  for (const x of rows)
    t.push([x.case, x.frameBytes, x.elements || "-", x.packets, x.nsPerPacketMedian, x.nsPerPacketMean, x.nsPerPacketP99, x.nsPerElement ?? "-", x.sentryExtraPct === undefined ? "" : `${x.sentryExtraPct}%`]);
  console.log("XDP program micro-benchmark (BPF_PROG_TEST_RUN; kernel-measured time per run, no syscall cost)");
  console.log(t.toString());
  const sus = rows.find((x) => x.elements === ELEMS_MTU1500 && x.case.includes("sustained"))!;
  const one = rows.find((x) => x.elements === ELEMS_MTU1500 && x.case.includes("single-shot"))!;
  console.log(
    `summing full 1500-byte frames: ${sus.nsPerElement} ns per int16 element sustained, ` +
      `${one.nsPerElement} ns single-shot (mean over ${one.packets} distinct packets, cold start included)`,
  );
  for (const elems of [ELEMS_ONE_PAGE, MAX_ELEMS]) {
    const big = rows.find((x) => x.elements === elems && x.case.includes("sustained"))!;
    const bigOne = rows.find((x) => x.elements === elems && x.case.includes("single-shot"))!;
    console.log(
      `summing ${big.frameBytes}-byte frames${big.frameBytes > 3520 ? " (several buffers: xdp.frags)" : " (one page)"}: ${big.nsPerElement} ns per int16 element sustained, ${bigOne.nsPerElement} ns single-shot`,
    );
  }
}

await main();
