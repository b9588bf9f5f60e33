/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * ainftp_abi.h — the Synapse: the one source of truth shared by the XDP
 * program (bpf/ainftp.bpf.c), the native shim (native/shim.c) and, through a
 * hand-written mirror checked by test/abi.test.ts, the TypeScript side
 * (src/abi.ts).
 *
 * Every multi-byte field, on the wire and in maps, is little-endian: the
 * int16 payload is summed by the XDP program without a byte swap, and the
 * header follows the payload's order so that one rule holds everywhere.
 *
 * The includer must provide the fixed-width __u8…__s64 types and
 * struct bpf_spin_lock (vmlinux.h in BPF, <linux/bpf.h> in userspace).
 */
#ifndef AINFTP_ABI_H
#define AINFTP_ABI_H

/* ---- limits -------------------------------------------------------------- */

/* Ranks are bits of a __u64 bitmap: 64 workers per job. */
#ifndef AINFTP_MAX_WORKERS
#define AINFTP_MAX_WORKERS 64
#endif

/* int16 elements per packet, at most. The program is frags-aware
 * (xdp.frags: a frame may span several buffers), so the frame is no longer
 * bound to one page (veth took 3520 bytes without it); this bounds the map
 * entries instead (acc, results: 6 bytes per element per slot). 4464 * 2 B +
 * 60 B of IPv4/UDP/ainftp headers = 8988 B: a 9000-byte MTU, jumbo frames'
 * usual size, with room for the MAC. The chunk itself follows the interface's
 * MTU (src/node/bringup.ts chunkElemsForMtu): AINFTP_ELEMS_MTU1500 elements
 * fit a 1500-byte MTU over IPv4, 1720 the 3504 of veth without frags. */
#ifndef AINFTP_MAX_ELEMS
#define AINFTP_MAX_ELEMS 4464
#endif
#define AINFTP_ELEMS_MTU1500 720
/* With the data plane's MAC (8 bytes after the payload) a frame still fits
 * the same MTU: 4 elements fewer. */
#define AINFTP_MAX_ELEMS_AUTH (AINFTP_MAX_ELEMS - 4)

/* Chunk indices are < AINFTP_MAX_CHUNKS; the maps are sized at attach time
 * to the job's chunk count, which may not exceed this. */
#ifndef AINFTP_MAX_CHUNKS
#define AINFTP_MAX_CHUNKS 65536
#endif

/* Two banks per slot: round r lives in bank r & 1, so a late duplicate of
 * round r-1 never lands in round r+1's accumulator (SwitchML's shadow copy). */
#define AINFTP_BANKS 2

/* Rounds are < AINFTP_MAX_ROUND: a slot's tag is round + 1, and the two top
 * values are "empty" (0 after the wrap) and "being written". */
#define AINFTP_MAX_ROUND 0xfffffffeu

#define AINFTP_DEFAULT_PORT 47000
#define AINFTP_DEFAULT_BATCH 32
/* Elements of a contribution the sentry's statistic samples (a random phase
 * of an even stride). Each costs about 3 ns in the program; 16 keep the
 * filter near 10% of summing a packet, and estimate a mean square within
 * about ±35% (±8 energy units), well inside an honest spread. */
#ifndef AINFTP_SENTRY_SAMPLES_LOG2
#define AINFTP_SENTRY_SAMPLES_LOG2 4
#endif
#define AINFTP_SENTRY_SAMPLES (1 << AINFTP_SENTRY_SAMPLES_LOG2)
/* The sentry's energy of an all-zero sample (log2 of 0). */
#define AINFTP_ENERGY_ZERO (-32768)

/* ---- the wire ------------------------------------------------------------ */

#define AINFTP_MAGIC 0x464e4941u /* "AINF" as little-endian bytes */
#define AINFTP_VERSION 1
/* The version byte also names a data packet's lane width (issue 14): CONTRIB
 * and RESULT packets of a job at --bits 8 carry AINFTP_VERSION_INT8, at
 * --bits 4 AINFTP_VERSION_INT4, at 16 AINFTP_VERSION; CONTROL and CLOSE
 * packets always carry AINFTP_VERSION (their format does not change). A
 * data packet whose width is not the job's (config flags below) is dropped
 * as AINFTP_CNT_BAD_WIDTH; an unknown version as AINFTP_CNT_MAL_VERSION.
 * Payloads, little-endian:
 *  - int16: count values, 2 bytes each;
 *  - int8: count values, 1 byte each (two's complement, |q| <= 127);
 *  - int4: groups of 16 values in 8 bytes, value 16g + j (j < 8) in the low
 *    nibble of byte 8g + j and value 16g + 8 + j in its high nibble (two's
 *    complement nibbles, |q| <= 7); the last group is padded with zeros, so
 *    the payload is 8 * ceil(count / 16) bytes.
 * At 8 and 4 bits a packet carries up to 2 * chunk_elems values: the acc
 * entry then holds 16-bit lanes (64 * 255 and 64 * 15 fit), two bytes per
 * value, the same bytes as int16's 32-bit lanes. */
#define AINFTP_VERSION_INT8 2
#define AINFTP_VERSION_INT4 3

enum ainftp_pkt_type {
	AINFTP_PKT_CONTRIB = 1, /* worker -> chunk owner: int16 values to sum */
	AINFTP_PKT_RESULT = 2,  /* owner -> every member: requantized sum */
	AINFTP_PKT_CONTROL = 3, /* control plane: passed to userspace */
	AINFTP_PKT_CLOSE = 4,   /* owner's userspace -> its own program: close slots (below) */
};

/* CLOSE packets let the owner's userspace end a round without a straggler:
 * it runs the attached program on one with BPF_PROG_TEST_RUN (same maps), so
 * its slots close under their spin locks, race-free with the contributions
 * still arriving. The payload is `count` __u16 chunk indices (`chunk` unused,
 * 0); each slot of `round` among them closes if it holds every rank it now
 * waits for (a shrunk bank_mask), or with AINFTP_F_FORCE whatever it holds
 * (a slot still on an older round is claimed closed and empty). Closing is
 * a completion: AINFTP_CNT_COMPLETED and an EV_SLOT_COMPLETE carrying the
 * contributors summed.
 * Only a frame whose ingress ifindex is 1 is honoured: BPF_PROG_TEST_RUN
 * without a ctx runs on the namespace's loopback device, while a network
 * peer's packet arrives on the attached interface and is dropped as
 * AINFTP_CNT_MAL_TYPE, so no peer can close slots. The one exception is a
 * program attached to lo itself (a single-host job): there a local process
 * that can send to the port could close the owner's slots. */

/* CONTROL packets: `contributors` holds the kind, `count` the payload bytes,
 * `chunk` the first chunk the payload covers (EXPS). */
enum ainftp_ctrl_kind {
	AINFTP_CTRL_HELLO = 1, /* membership check at open: payload = job fingerprint */
	AINFTP_CTRL_EXPS = 2,  /* a rank's per-chunk scale exponents (int8) for a round */
	AINFTP_CTRL_EXPS_REQ = 3, /* "I lack your EXPS for this round": payload as EXPS */
	AINFTP_CTRL_BYE = 4,   /* a rank is leaving: peers fail their round at once */
	AINFTP_CTRL_STATUS_REQ = 5, /* at a deadline: "whom do you wait for in this round?" */
	AINFTP_CTRL_STATUS = 6, /* the answer: payload = __u64 mask of ranks it lacks */
	AINFTP_CTRL_EXPS_MAX = 7, /* the round's leader to every member: its plan (active mask, next leader, lateness) and the shared (max) exponents */
	AINFTP_CTRL_MEMBER = 8, /* the swarm's membership protocol (heartbeats, suspicion, gossip): src/membership.ts */
	AINFTP_CTRL_RESULT_REQ = 9, /* a member that sat the round out lacks results: payload = __u32 chunks */
};

/* Header flags. */
#define AINFTP_F_RETRANSMIT 0x0001 /* sender resent this packet after a timeout */
#define AINFTP_F_SATURATED 0x0002  /* sender clipped values at this scale (counted) */
#define AINFTP_F_LAST 0x0004       /* last chunk of the round from this sender */
#define AINFTP_F_FORCE 0x0008      /* CLOSE: close the listed slots whatever they hold */
/* CONTRIB sent before its sender had the round's plan, quantized under a
 * predicted scale (the last plan's for an array of this length,
 * src/collective/speculate.ts). A slot that holds only such contributions
 * is speculative: it never completes by itself. The owner, once it has the
 * plan, confirms its slots (CLOSE with AINFTP_F_CONFIRM, below) at the
 * plan's scale. A contribution without the flag at another scale than a
 * speculative slot's empties it and takes its place; one with the flag at
 * another scale than the slot's, or from a rank outside the ranks a
 * confirmed slot waits for (the plan left it out), is refused
 * (AINFTP_CNT_SPEC_REFUSED), never summed. Such a contribution is taken up to round_base + 2 (its
 * sender finished round base + 1, so every member finished round base,
 * whose bank it takes). */
#define AINFTP_F_SPEC 0x0010
/* CLOSE: confirm the listed slots at the plan's scale `exp` instead of
 * closing them: a filling slot of the round that holds that scale and
 * nobody outside the ranks it waits for becomes an ordinary confirmed one
 * (and closes if full); any other filling one, or a complete speculative
 * one, is emptied (AINFTP_CNT_SPEC_REPLACED); a slot not yet on the round
 * is claimed empty at that scale, so that a speculative contribution at
 * another scale arriving later is refused. */
#define AINFTP_F_CONFIRM 0x0020

/* Follows the UDP header. A value is q * 2^exp; all workers use the same
 * exp for the same (round, chunk), so their int16 q can be summed. */
struct ainftp_wire_hdr {
	__u32 magic;        /* AINFTP_MAGIC */
	__u8 version;       /* AINFTP_VERSION */
	__u8 type;          /* enum ainftp_pkt_type */
	__u16 flags;        /* AINFTP_F_* */
	__u32 job_id;       /* must equal the attached job's id */
	__u32 round;        /* all-reduce round; must be in the open window */
	__u32 chunk;        /* chunk index, < config.chunks */
	__u16 rank;         /* sender's rank, < config.members */
	__u16 count;        /* int16 elements that follow, <= config.chunk_elems */
	__s16 exp;          /* shared power-of-two scale exponent */
	__u16 contributors; /* RESULT: how many workers the sum holds */
	__u32 reserved;     /* zero */
};

/* ---- maps ---------------------------------------------------------------- */

/* config map, one entry; userspace may update it while attached. */
struct ainftp_config {
	__u32 job_id;       /* packets of other jobs are dropped as foreign */
	__u32 round_base;   /* oldest open round; the window is [base, base+1] (+2: AINFTP_F_SPEC) */
	__u64 member_mask;  /* bit r set: rank r is expected in every slot */
	__u16 members;      /* ranks must be < members */
	__u16 chunk_elems;  /* elements per full chunk */
	__u32 chunks;       /* chunk indices must be < chunks */
	__u32 batch;        /* wake userspace once per this many events */
	__u32 owned_chunks; /* slot completions that end a round on this host */
	__u32 flags;        /* AINFTP_CFG_* */
	__u32 results_per_round; /* result events that end a round (0: chunks) */
	/* Ranks the slots of the round in bank b (round & 1) wait for, within
	 * member_mask; 0: every member. A slot closes when it holds them all,
	 * so the owner can drop a straggler from one round (it is still a
	 * member: its late contributions are counted AINFTP_CNT_LATE, and a
	 * retransmission asks for the stored result). */
	__u64 bank_mask[AINFTP_BANKS];
};

/* config flags */
#define AINFTP_CFG_CHECK_SOURCE 0x1 /* drop packets whose IPv4 source is not their rank's (member_addrs) */
#define AINFTP_CFG_RESULTS_TO_XSK 0x2 /* redirect result packets to the AF_XDP socket of their queue (xsks) */
#define AINFTP_CFG_SENTRY 0x4 /* drop contributions whose energy is outside their chunk's sentry_gate band */
#define AINFTP_CFG_CONTRIBS_TO_RING 0x8 /* copy accepted contributions to the contribs ring, do not sum them (robust aggregation) */
#define AINFTP_CFG_AUTH_HDR 0x10 /* CONTRIB/RESULT carry a MAC of their header under job_key (see below) */
#define AINFTP_CFG_AUTH_FULL 0x20 /* ... of their header and payload (wins over AUTH_HDR) */
#define AINFTP_CFG_INT8 0x40 /* the job's data packets are AINFTP_VERSION_INT8 */
#define AINFTP_CFG_INT4 0x80 /* the job's data packets are AINFTP_VERSION_INT4 (wins over INT8) */

/* Payload bytes of a data packet of `count` values at wire version `version`
 * (AINFTP_VERSION*; CLOSE packets are AINFTP_VERSION: two bytes each). */
static inline __u32 ainftp_payload_bytes(__u32 version, __u32 count)
{
	if (version == AINFTP_VERSION_INT8)
		return count;
	if (version == AINFTP_VERSION_INT4)
		return ((count + 15) >> 4) << 3;
	return 2 * count;
}

/* The data plane's MAC. Under AUTH_HDR or AUTH_FULL every CONTRIB and
 * RESULT carries AINFTP_MAC_BYTES after its payload (UDP length = 8 + 32 +
 * 2 * count + 8): SipHash-2-4 under the job's 128-bit key (job_key map) of
 * the 32-byte header (AUTH_HDR) or of the header and the payload
 * (AUTH_FULL), as native/mac.c computes it. A frame whose tag does not match
 * is dropped as AINFTP_CNT_BAD_MAC before it touches any slot or result.
 * The header names (job, round, chunk, rank, count, exp, contributors), so a
 * host without the key cannot make one the program accepts; under AUTH_HDR
 * an on-path host that saw a frame can still change its payload. CLOSE
 * frames (loopback only) carry none. */
#define AINFTP_MAC_BYTES 8

/* slot spec flags: every contribution held is speculative (AINFTP_F_SPEC);
 * the owner confirmed the slot at its plan's scale (AINFTP_F_CONFIRM): a
 * speculative contribution from a rank outside the ranks it waits for is
 * refused from then on. */
#define AINFTP_SLOT_SPEC 1
#define AINFTP_SLOT_CONFIRMED 2

enum ainftp_slot_state {
	AINFTP_SLOT_EMPTY = 0,
	AINFTP_SLOT_FILLING = 1,
	AINFTP_SLOT_COMPLETE = 2,
};

/* slots map (array, AINFTP_BANKS * chunks entries, index bank*chunks+chunk):
 * who has contributed to a slot. The lock guards this entry and the
 * accumulator of the same index; it lives here because a BPF_F_MMAPABLE
 * array may not hold a spin lock. */
struct ainftp_slot {
	struct bpf_spin_lock lock;
	__u32 tag;          /* round + 1 of the data held; 0 = never used */
	__u64 seen;         /* bitmap of ranks already summed */
	__u16 count;        /* elements, fixed by the first contribution */
	__u16 contributors; /* popcount(seen) */
	__s16 exp;          /* scale exponent, fixed by the first contribution */
	__u16 state;        /* enum ainftp_slot_state */
	__u32 completions;  /* times this slot completed (diagnostics) */
	__u32 spec;         /* AINFTP_SLOT_SPEC | AINFTP_SLOT_CONFIRMED */
	__u64 rejected;     /* ranks in `seen` whose contribution the sentry dropped (not summed) */
};

/* acc map (BPF_F_MMAPABLE array, same index as slots): the sums, summed two
 * int16 lanes per 64-bit add (at 8 and 4 bits: four 16-bit lanes per add,
 * value q stored as sum(q + 128) or sum(q + 8), and value 8g + k of every
 * eight at 16-bit lane 8g + 4 * (k & 1) + (k >> 1)). Each element is stored biased: v holds
 * sum(q + 32768) over the slot's contributors, and within every group of four
 * elements the middle two are swapped (v[4g..4g+3] = e0, e2, e1, e3). Read
 * through src/abi.ts decodeSums(). */
struct ainftp_acc {
	__u32 v[AINFTP_MAX_ELEMS];
};
#define AINFTP_ACC_BIAS 32768
#define AINFTP_ACC_BIAS8 128
#define AINFTP_ACC_BIAS4 8

/* results map (BPF_F_MMAPABLE array, same index): the all-gathered result of
 * a chunk, written by the XDP program straight from the result packet.
 * `tag` is written last; a reader checks it before and after the copy. */
struct ainftp_result {
	__u32 tag;          /* round + 1 of the data held; 0 = empty */
	__u16 count;
	__u16 contributors;
	__s16 exp;
	__u16 flags;
	__u16 writes;       /* result packets stored here (diagnostics; wraps) */
	__u16 rank;         /* the rank that sent the result stored (userspace checks it is the chunk's owner) */
	__s16 v[AINFTP_MAX_ELEMS];
};

/* bank_state map (array, AINFTP_BANKS entries): events of the round now in
 * each bank, for the batched wake-up. Userspace zeroes a bank when it moves
 * the window past it. */
struct ainftp_bank_state {
	__u32 slots_done;   /* slots completed in this bank's round */
	__u32 results_done; /* results stored in this bank's round */
};

/* round_plan map (array, AINFTP_BANKS entries): the plan of the round now
 * in each bank, written by userspace when it learns it (src/collective.ts
 * applyPlan). Chunk c of round r is owned by owner[c % owners]: a RESULT for
 * it from any other rank is dropped (AINFTP_CNT_NOT_OWNER), and one claiming
 * more contributors than `owners` (AINFTP_CNT_MAL_CONTRIBUTORS). A bank whose
 * tag is not round + 1 has no plan yet: its results are checked against the
 * members only (userspace checks the owner again before it uses them). */
struct ainftp_plan {
	__u32 tag;          /* round + 1 of the plan held; 0 = none */
	__u16 owners;       /* active members (K), 1..AINFTP_MAX_WORKERS */
	__u16 reserved;
	__u8 owner[AINFTP_MAX_WORKERS]; /* rank of the active member of each index, ascending */
};

/* job_key map (array, one entry): the 128-bit job key, as two little-endian
 * words of its 16 bytes; written by userspace with the config. */
struct ainftp_key {
	__u64 k0;
	__u64 k1;
};

/* ---- the sentry ------------------------------------------------------------ */
/* A contribution's energy is 16 * log2(mean q^2 * 4^exp) over the sampled
 * elements: the log of its mean square in real units, in 1/16 steps. In the
 * log domain a scaling attack is an offset and the honest spread is close to
 * Gaussian, so userspace's mean/σ gate makes sense there. */

/* sentry_gate map (BPF_F_MMAPABLE array, 2 * chunks entries): the band of
 * energies the filter accepts for a chunk, kept by userspace (src/sentry);
 * entry 2 * chunk for full chunks (count == chunk_elems), 2 * chunk + 1 for
 * short ones (the tail of an all-reduce, a barrier), whose energies differ. */
struct ainftp_gate {
	__s32 lo;           /* accept lo <= energy <= hi; lo >= hi (zeroed): no gate yet, accept all */
	__s32 hi;
};
/* sentry_obs map (BPF_F_MMAPABLE array, same index as slots): every
 * contributor's energy in the slot's round, for userspace's statistics. */
struct ainftp_obs {
	__u32 tag;          /* round + 1 of the energies held */
	__u32 reserved;
	__s16 energy[AINFTP_MAX_WORKERS];
};
/* sentry_workers map (per-CPU array, AINFTP_MAX_WORKERS entries): per rank. */
struct ainftp_sentry_worker {
	__u64 accepted;
	__u64 rejected;
};

/* contribs ring (BPF_MAP_TYPE_RINGBUF): with AINFTP_CFG_CONTRIBS_TO_RING,
 * every accepted contribution, for the owner's robust aggregation in
 * userspace (trimmed mean, median, centered clipping). Written before the
 * slot lock, so a slot's completion event never precedes its records;
 * retransmissions appear twice (userspace keeps one per rank). */
struct ainftp_contrib_rec {
	__u32 round;
	__u32 chunk;
	__u16 rank;
	__u16 count;
	__s16 exp;
	__u16 reserved;
	__s16 v[AINFTP_MAX_ELEMS];
};

/* ---- events (ring buffer) ------------------------------------------------ */

enum ainftp_event_type {
	AINFTP_EV_SLOT_COMPLETE = 1, /* all expected members summed into a slot, or a CLOSE closed it */
	AINFTP_EV_RESULT = 2,        /* a result chunk landed in the results map */
	AINFTP_EV_RESEND = 3,        /* a member retransmitted to a completed slot:
				      * send it the result again; `contributors`
				      * holds that member's rank */
};

struct ainftp_event {
	__u16 type;         /* enum ainftp_event_type */
	__u16 contributors;
	__u32 round;
	__u32 chunk;
	__u32 index;        /* map index: bank * chunks + chunk */
};

/* ---- counters (per-CPU array, one entry of AINFTP_CNT__MAX __u64) ------- */

enum ainftp_counter {
	AINFTP_CNT_RX = 0,          /* packets for our port that reached the parser */
	AINFTP_CNT_SUMMED,          /* contributions added into a slot */
	AINFTP_CNT_ELEMS_SUMMED,    /* int16 elements added */
	AINFTP_CNT_DUPLICATE,       /* contribution from a rank already in the slot */
	AINFTP_CNT_STALE_ROUND,     /* round below the window, or bank holds a newer round */
	AINFTP_CNT_FUTURE_ROUND,    /* round above the window */
	AINFTP_CNT_FOREIGN_JOB,     /* job id differs from the attached job */
	AINFTP_CNT_NOT_MEMBER,      /* rank valid but not in member_mask */
	AINFTP_CNT_COMPLETED,       /* slots that reached every expected member, or that a CLOSE closed */
	AINFTP_CNT_RESULTS,         /* result packets stored */
	AINFTP_CNT_RESULT_DUP,      /* result for a round already stored */
	AINFTP_CNT_WAKEUPS,         /* ring-buffer events submitted with a wake-up */
	AINFTP_CNT_EVENTS,          /* ring-buffer events submitted */
	AINFTP_CNT_RINGBUF_FULL,    /* events lost: ring buffer full */
	AINFTP_CNT_CONTROL,         /* control packets passed to the stack */
	AINFTP_CNT_PASSED,          /* packets not for ainftp, passed untouched */
	AINFTP_CNT_SATURATED,       /* packets flagged AINFTP_F_SATURATED by the sender */
	/* malformed, one counter per reason; all are dropped */
	AINFTP_CNT_MAL_TRUNC_ETH,   /* shorter than Ethernet/VLAN header */
	AINFTP_CNT_MAL_TRUNC_IP,    /* shorter than the IP header, or bad IHL / total length */
	AINFTP_CNT_MAL_TRUNC_UDP,   /* shorter than the UDP header, or bad UDP length */
	AINFTP_CNT_MAL_TRUNC_HDR,   /* shorter than the ainftp header */
	AINFTP_CNT_MAL_FRAGMENT,    /* IPv4 fragment addressed to our port */
	AINFTP_CNT_MAL_MAGIC,
	AINFTP_CNT_MAL_VERSION,
	AINFTP_CNT_MAL_TYPE,
	AINFTP_CNT_MAL_RANK,        /* rank >= members */
	AINFTP_CNT_MAL_CHUNK,       /* chunk >= chunks */
	AINFTP_CNT_MAL_COUNT,       /* count 0, > chunk_elems, or payload length != count*2 */
	AINFTP_CNT_MAL_SCALE,       /* exp differs from the slot's, or count differs */
	AINFTP_CNT_MAL_RESERVED,    /* reserved field not zero */
	AINFTP_CNT_MAL_ROUND,       /* round >= AINFTP_MAX_ROUND */
	AINFTP_CNT_RESEND_REQ,      /* retransmitted contribution to a completed slot */
	AINFTP_CNT_BAD_SOURCE,      /* rank's packet from another address (CHECK_SOURCE) */
	AINFTP_CNT_RESULTS_XSK,     /* result packets redirected to an AF_XDP socket */
	AINFTP_CNT_SENTRY_REJECTED, /* contributions the sentry dropped (energy outside the gate) */
	AINFTP_CNT_CONTRIBS_RING,   /* contributions copied to the contribs ring (robust aggregation) */
	AINFTP_CNT_LATE,            /* contributions to a slot that had closed without them (a deadline or the round's active set) */
	AINFTP_CNT_NOT_OWNER,       /* RESULT from a rank that does not own the chunk in the round's plan (round_plan), or one stored before the plan that the owner's replaced */
	AINFTP_CNT_MAL_CONTRIBUTORS, /* RESULT whose contributor count is 0, above the members, or above the round's active set (or one stored before the plan, under the owner's rank, that the owner's replaced) */
	AINFTP_CNT_BAD_MAC,         /* CONTRIB/RESULT whose MAC under the job key does not match (AUTH_HDR / AUTH_FULL) */
	AINFTP_CNT_BAD_WIDTH,       /* CONTRIB/RESULT of another lane width than the job's (version vs config flags) */
	/* A RESULT for an entry already holding one of its round, before the
	 * round's plan is known (the owner's own copy once it is: RESULT_DUP): */
	AINFTP_CNT_RESULT_EARLY_DUP, /* refused: the entry holds the same rank's (a copy; the plan sweeps the entry if that rank is not the owner) */
	AINFTP_CNT_RESULT_CONTESTED, /* refused: the entry holds another rank's (one of the two is forged; the one stored is kept unless the previous round's plan names this sender the owner) */
	AINFTP_CNT_RESULT_DISPLACED, /* stored over another rank's, as the previous round's plan names this sender the chunk's owner (the one replaced presumed forged; the plan sweeps the entry if the guess was wrong) */
	AINFTP_CNT_RESULT_WINDOW,   /* RESULTs among STALE_ROUND and FUTURE_ROUND (a breakdown: counted there too) */
	AINFTP_CNT_SPEC_REFUSED,    /* speculative contributions (AINFTP_F_SPEC) at another scale than their slot's: refused, not summed */
	AINFTP_CNT_SPEC_REPLACED,   /* speculative slots emptied by a contribution at the plan's scale (the prediction was wrong) */
	AINFTP_CNT__MAX,
};

struct ainftp_counters {
	__u64 c[AINFTP_CNT__MAX];
};

/* ---- layout checks ------------------------------------------------------- */

_Static_assert(sizeof(struct ainftp_wire_hdr) == 32, "wire header is 32 bytes");
_Static_assert(sizeof(struct ainftp_config) == 56, "config is 56 bytes");
_Static_assert(sizeof(struct ainftp_slot) == 40, "slot is 40 bytes");
_Static_assert(sizeof(struct ainftp_gate) == 8, "gate");
_Static_assert(sizeof(struct ainftp_obs) == 8 + 2 * AINFTP_MAX_WORKERS, "obs");
_Static_assert(sizeof(struct ainftp_sentry_worker) == 16, "sentry worker");
_Static_assert(sizeof(struct ainftp_contrib_rec) == 16 + 2 * AINFTP_MAX_ELEMS, "contrib record");
_Static_assert(sizeof(struct ainftp_acc) == 4 * AINFTP_MAX_ELEMS, "acc");
_Static_assert(sizeof(struct ainftp_result) == 16 + 2 * AINFTP_MAX_ELEMS, "result");
_Static_assert(sizeof(struct ainftp_bank_state) == 8, "bank state");
_Static_assert(sizeof(struct ainftp_plan) == 8 + AINFTP_MAX_WORKERS, "plan");
_Static_assert(sizeof(struct ainftp_key) == 16, "key");
_Static_assert(sizeof(struct ainftp_event) == 16, "event is 16 bytes");
_Static_assert(sizeof(struct ainftp_counters) == 8 * AINFTP_CNT__MAX, "counters");
_Static_assert(AINFTP_MAX_WORKERS <= 64, "ranks are bits of a __u64");
_Static_assert(AINFTP_MAX_ELEMS % 16 == 0, "sums are added four source words (16 int16 elements) at a time");
_Static_assert(AINFTP_MAX_ELEMS % 8 == 0, "int4 payloads of 2 * AINFTP_MAX_ELEMS values are whole 16-value groups");
_Static_assert(AINFTP_MAX_WORKERS * 255 < 65536, "an int8 or int4 biased 16-bit lane cannot overflow");
_Static_assert((unsigned long long)AINFTP_MAX_WORKERS * 65535 < (1ULL << 32), "a biased lane cannot overflow");

#endif /* AINFTP_ABI_H */
