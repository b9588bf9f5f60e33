// The handshake at open: HELLO to every peer until all have answered with
// the same job fingerprint; agree the first round; write the program's
// config for the job.
import {
  CFG_AUTH_FULL, CFG_AUTH_HDR, CFG_CHECK_SOURCE, CFG_CONTRIBS_TO_RING, CFG_INT4, CFG_INT8, CFG_RESULTS_TO_XSK, CFG_SENTRY, CTRL_HELLO,
  VERSION, cfgOfBits,
} from "../abi.ts";
import { AinftpError } from "../errors.ts";
import { ipv4ToBe32 } from "../transport.ts";
import type { Control } from "./control.ts";
import type { Host } from "./host.ts";
import { describeRanks, RoundError, TUNING } from "./options.ts";
import { READY_SOCK } from "./ports.ts";
import { handleControl, parseControl } from "./receiver.ts";

/** What every member of a job must agree on. */
export function fingerprint(h: Host): string {
  // bits only when not 16: a 16-bit member's fingerprint is what it was before issue 14
  return JSON.stringify({ v: VERSION, job: h.job, peers: h.peers, chunkElems: h.cfg.chunkElems, port: h.port, auth: h.dataAuth ? (h.dataAuth.full ? "full" : "header") : "off",
    ...(h.bits !== 16 ? { bits: h.bits } : {}) });
}

function sendHello(h: Host, to: number, wantReply: boolean): void {
  h.sendControl(to, CTRL_HELLO, h.helloBase, wantReply ? 1 : 0, 0, new TextEncoder().encode(fingerprint(h)));
}

/** A HELLO after our handshake: a host of another job greeting us is told
 * (it fails its open) and we carry on; a member asking for a reply gets one. */
export function answerHello(h: Host, c: Control): void {
  if (!c.member || new TextDecoder().decode(c.payload) !== fingerprint(h)) void mismatch(h, c);
  else if (c.flags & 1) sendHello(h, c.rank, false);
}

/** A HELLO whose job does not match ours: answer with ours (so the sender
 * learns it too) and describe the difference. */
export function mismatch(h: Host, c: { rank: number; from: string; payload: Uint8Array }): AinftpError {
  const me = fingerprint(h);
  h.sendControlTo(c.from, CTRL_HELLO, h.helloBase, 0, 0, new TextEncoder().encode(me));
  const theirs = new TextDecoder().decode(c.payload);
  const who = h.peers.includes(c.from)
    ? `rank ${h.peers.indexOf(c.from)} (${c.from})`
    : `a host at ${c.from}, which is not in our --peers,`;
  return new AinftpError("open communicator", `${who} runs a different job${bitsDiffer(me, theirs)}: ours ${me}, theirs ${theirs}`, {
    hint: "every member must get the same --peers (same order), --job and chunk size",
  });
}

/** HELLO to every peer until all have answered with the same fingerprint;
 * agrees the first round (above anything these hosts' programs saw). */
export async function handshake(h: Host): Promise<void> {
  const me = fingerprint(h);
  const bases = new Map<number, number>([[h.rank, h.helloBase]]);
  const deadline = h.clock.now() + h.o.openTimeoutMs;
  let nextSend = 0;
  // After spotting a different job we still greet everyone for a moment,
  // so members that start a little later learn it too instead of timing out.
  let failure: AinftpError | null = null;
  let failAt = Infinity;
  while (bases.size < h.size || failure) {
    const now = h.clock.now();
    if (failure && now > failAt) throw failure;
    if (now > deadline) {
      if (failure) throw failure;
      const missing = h.others.filter((r) => !bases.has(r));
      throw new RoundError("open communicator", `no answer from ${describeRanks(missing, h.peers)} within ${h.o.openTimeoutMs} ms`, missing,
        "start ainftp on every member with the same --peers and --job; check the addresses and that the interface is attached");
    }
    if (now >= nextSend) {
      for (const r of h.others) if (failure || !bases.has(r)) sendHello(h, r, true);
      nextSend = now + TUNING.GREET_MS;
    }
    const ready = h.net.wait(READY_SOCK, Math.max(1, Math.min(100, Math.ceil(nextSend - now))));
    if (typeof ready !== "number") await ready;
    const b = h.net.recvBatch(0);
    for (let i = 0; i < b.count; i++) {
      const c = parseControl(h, b.datagram(i), b.sourceAddr(i));
      if (!c) continue;
      if (c.kind !== CTRL_HELLO) {
        handleControl(h, c, null); // a faster peer's first exponents
        continue;
      }
      if (!c.member || new TextDecoder().decode(c.payload) !== me) {
        const err = mismatch(h, c);
        if (!failure) (failure = err), (failAt = h.clock.now() + 1000);
        continue;
      }
      if (!bases.has(c.rank)) bases.set(c.rank, c.round);
      if (c.flags & 1) sendHello(h, c.rank, false);
    }
    await h.clock.yield();
  }
  startJob(h, Math.max(...bases.values()) + 2);
}

/** Every member computes the same first round: past any round these
 * programs have seen, so old slot and result tags can never match. Writes
 * the job's config: members, their addresses, the wake-up batch, the rx path. */
function startJob(h: Host, first: number): void {
  h.nextRound = first;
  h.leaderNext = first % h.size;
  h.lateness = new Uint8Array(h.size);
  // only members' addresses may speak for their ranks
  h.maps.setMemberAddrs(h.peers.map((p) => ipv4ToBe32(p)));
  // with a key, only its holders: the program checks data frames' MACs
  h.maps.setJobKey(h.dataAuth?.key ?? null);
  const cfg = {
    ...h.cfg, jobId: h.job, roundBase: first, members: h.size, memberMask: h.othersMask, bankMask: [0n, 0n] as [bigint, bigint], batch: h.o.batch,
    flags: ((h.cfg.flags ?? 0) & ~(CFG_RESULTS_TO_XSK | CFG_SENTRY | CFG_AUTH_HDR | CFG_AUTH_FULL | CFG_INT8 | CFG_INT4)) | CFG_CHECK_SOURCE |
      cfgOfBits(h.bits) |
      (h.dataAuth ? (h.dataAuth.full ? CFG_AUTH_FULL : CFG_AUTH_HDR) : 0) |
      (h.xsk ? CFG_RESULTS_TO_XSK : 0) | (h.sentry ? CFG_SENTRY : 0) | (h.robust ? CFG_CONTRIBS_TO_RING : 0),
  };
  h.sentry?.openGates(h);
  h.setConfig(cfg);
}

/** ", --bits 8 here and 16 there" when the two fingerprints differ in width (16 is left out of one). */
function bitsDiffer(me: string, theirs: string): string {
  const bits = (f: string) => {
    try {
      return (JSON.parse(f) as { bits?: number }).bits ?? 16;
    } catch {
      return null;
    }
  };
  const a = bits(me), b = bits(theirs);
  return a !== null && b !== null && a !== b ? ` (--bits ${a} here, ${b} there)` : "";
}
