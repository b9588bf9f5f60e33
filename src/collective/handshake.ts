// The handshake at open: HELLO to every peer until all have answered with
// the same job fingerprint; agree the first round; write the program's
// config for the job.
import {
  CFG_AUTH_FULL, CFG_AUTH_HDR, CFG_CHECK_SOURCE, CFG_CONTRIBS_TO_RING, CFG_INT4, CFG_INT8, CFG_RESULTS_TO_XSK, CFG_SENTRY, CTRL_HELLO,
  VERSION, cfgOfBits,
} from "../abi.ts";
import { AinftpError } from "../errors.ts";
import { ipv4ToBe32 } from "../transport.ts";
import { HDR, type Control } from "./control.ts";
import type { Host } from "./host.ts";
import { describeRanks, RoundError, TUNING } from "./options.ts";
import { READY_SOCK } from "./ports.ts";
import { handleControl, parseControl } from "./receiver.ts";

/** What every member of a job must agree on. */
export function fingerprint(h: Host): string {
  // bits only when not 16: a 16-bit member's fingerprint is what it was before issue 14
  return JSON.stringify({ v: VERSION, job: h.job, peers: h.peers, chunkElems: h.cfg.chunkElems, port: h.port, auth: h.dataAuth ? (h.dataAuth.full ? "full" : "header") : "off",
    ...(h.bits !== 16 ? { bits: h.bits } : {}),
    // speculation only where every member confirms its slots (speculate.ts)
    ...(h.o.speculate ? { speculate: true } : {}) });
}

/** HELLO flags: answer me; send me single frames (my program runs in generic
 * XDP mode: a GSO burst that a virtual link carries unsegmented reaches it
 * as one frame it cannot parse, and is dropped); this HELLO is padded with
 * zeros to the job's largest datagram (FULL); answer me with a FULL one
 * (NEED_FULL: yours have not reached me). */
export const HELLO_REPLY = 0x1;
export const HELLO_PLAIN = 0x2;
export const HELLO_FULL = 0x4;
export const HELLO_NEED_FULL = 0x8;

/** How long after every peer's HELLO we wait for the full-size ones, at
 * least; and how many small HELLOs a peer must have sent us meanwhile (it
 * is alive and greeting) before its missing large ones fail the open. */
const FULL_GRACE_MS = 1500;
const SMALL_EVIDENCE = 3;
/** The receive socket's slot: a datagram is never padded past it. */
const RECV_SLOT = 9216;

/** A FULL HELLO's datagram: the size of the job's data packets, so a path
 * that drops them (a link or switch port with a smaller MTU; the kernel
 * lets GSO batches through where it drops a lone datagram) is found at
 * open, not as a round that never completes. */
function fullBytes(h: Host): number {
  return Math.min(h.seg, RECV_SLOT);
}

function sendHello(h: Host, to: number, wantReply: boolean, o: { full?: boolean; needFull?: boolean } = {}): void {
  const flags = (wantReply ? HELLO_REPLY : 0) | (h.plainFrames ? HELLO_PLAIN : 0) | (o.full ? HELLO_FULL : 0) | (o.needFull ? HELLO_NEED_FULL : 0);
  const fp = new TextEncoder().encode(fingerprint(h));
  let payload = fp;
  if (o.full) {
    payload = new Uint8Array(Math.max(fp.length, fullBytes(h) - HDR - h.guard.tagBytes));
    payload.set(fp);
  }
  h.sendControl(to, CTRL_HELLO, h.helloBase, flags, 0, payload);
}

/** A HELLO's fingerprint (a FULL one's padding left out). */
function helloPrint(c: Control): string {
  let p = c.payload;
  if (c.flags & HELLO_FULL) {
    const end = p.indexOf(0);
    if (end >= 0) p = p.subarray(0, end);
  }
  return new TextDecoder().decode(p);
}

/** A member's HELLO: note whether it wants single frames. */
function greeted(h: Host, c: Control): void {
  if (c.flags & HELLO_PLAIN) h.net.sendPlainTo(h.peers[c.rank]);
}

/** A HELLO after our handshake: a host of another job greeting us is told
 * (it fails its open) and we carry on; a member asking for a reply gets one
 * (full-size: its check may still lack ours). */
export function answerHello(h: Host, c: Control): void {
  if (!c.member || helloPrint(c) !== fingerprint(h)) return void mismatch(h, c);
  greeted(h, c);
  if (c.flags & (HELLO_REPLY | HELLO_NEED_FULL)) sendHello(h, c.rank, false, { full: fullAnswer(h, c.rank) });
}

/** Whether our answer to rank's HELLO may be full-size: at most once per
 * greeting interval a member, so a forged request (no job key) cannot make
 * us send large frames faster; a small answer otherwise. */
function fullAnswer(h: Host, rank: number): boolean {
  const now = h.clock.now();
  if (now - h.fullAnsweredAt[rank] < TUNING.GREET_MS) return false;
  h.fullAnsweredAt[rank] = now;
  return true;
}

/** A HELLO whose job does not match ours: answer with ours (so the sender
 * learns it too) and describe the difference. */
export function mismatch(h: Host, c: { rank: number; from: string; flags: number; payload: Uint8Array }): AinftpError {
  const me = fingerprint(h);
  h.sendControlTo(c.from, CTRL_HELLO, h.helloBase, 0, 0, new TextEncoder().encode(me));
  const theirs = helloPrint(c as Control);
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
  let tick = 0;
  // After spotting a different job we still greet everyone for a moment,
  // so members that start a little later learn it too instead of timing out.
  let failure: AinftpError | null = null;
  let failAt = Infinity;
  // peers whose full-size HELLO reached us, and the small HELLOs each sent
  // us since every peer answered: a peer that keeps greeting us in small
  // frames while none of its large ones arrive is behind a path that drops
  // them (one busy after its own handshake sends nothing, and is waited for)
  const full = new Set<number>([h.rank]);
  const smallSince = new Uint32Array(h.size);
  let fullBy = Infinity;
  const mtuError = (lacking: number[], why: string) =>
    new RoundError("open communicator", `${describeRanks(lacking, h.peers)} ${why}, but none of ${lacking.length > 1 ? "their" : "its"} full-size packets (${fullBytes(h)}-byte datagrams, the size of this job's data packets) reached us: a link between us carries small packets and drops large ones`, lacking,
      `check the MTU of every hop between the members (ip link on each host and bridge, the switch ports): it must be at least ${fullBytes(h) + 28}; or attach with a smaller --chunk-elems`);
  while (bases.size < h.size || full.size < h.size || failure) {
    const now = h.clock.now();
    if (failure && now > failAt) throw failure;
    if (bases.size === h.size && fullBy === Infinity) fullBy = now + FULL_GRACE_MS;
    if (now > fullBy) {
      const lacking = h.others.filter((r) => !full.has(r) && smallSince[r] >= SMALL_EVIDENCE);
      if (lacking.length) throw mtuError(lacking, "answered and keeps greeting us");
    }
    if (now > deadline) {
      if (failure) throw failure;
      const lacking = h.others.filter((r) => !full.has(r));
      if (bases.size === h.size && lacking.length) throw mtuError(lacking, `answered within ${h.o.openTimeoutMs} ms`);
      const missing = h.others.filter((r) => !bases.has(r));
      throw new RoundError("open communicator", `no answer from ${describeRanks(missing, h.peers)} within ${h.o.openTimeoutMs} ms`, missing,
        "start ainftp on every member with the same --peers and --job; check the addresses and that the interface is attached");
    }
    if (now >= nextSend) {
      // a HELLO asking for a reply, in turn full-size and small asking for a
      // full-size answer (a path that drops large frames still carries the
      // small ones, so the handshake completes and the check below names
      // it); to a peer that answered but whose full-size HELLO has not
      // reached us, a small one asking for a full-size answer. A clean
      // start sends as many HELLOs as before, some of them larger.
      tick++;
      for (const r of h.others) {
        if (failure || !bases.has(r)) sendHello(h, r, true, tick % 2 ? { full: true } : { needFull: true });
        else if (!full.has(r)) sendHello(h, r, false, { needFull: true });
      }
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
      if (!c.member || helloPrint(c) !== me) {
        const err = mismatch(h, c);
        if (!failure) (failure = err), (failAt = h.clock.now() + 1000);
        continue;
      }
      if (!bases.has(c.rank)) bases.set(c.rank, c.round);
      if (c.flags & HELLO_FULL) full.add(c.rank);
      else if (bases.size === h.size) smallSince[c.rank]++;
      greeted(h, c);
      // answers are full-size (a clean start sends as many HELLOs as
      // before, some larger): the asker's check may still lack ours
      if (c.flags & (HELLO_REPLY | HELLO_NEED_FULL)) sendHello(h, c.rank, false, { full: fullAnswer(h, c.rank) });
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
