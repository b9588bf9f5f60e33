// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * ainftp.bpf.c — the Reflex: sums int16 gradient contributions into int32
 * slot accumulators inside the XDP hook, stores all-gathered results where
 * userspace has them mmapped, and wakes userspace once per batch of events.
 * Every packet it consumes is dropped; every other packet passes untouched.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "ainftp_abi.h"
#include "parse.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Open-coded numeric iterator (kernel 6.4+), for the MAC's loop over a payload. */
extern int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __weak __ksym;
extern int *bpf_iter_num_next(struct bpf_iter_num *it) __weak __ksym;
extern void bpf_iter_num_destroy(struct bpf_iter_num *it) __weak __ksym;

/* UDP destination port, host order; set by the loader before load. */
const volatile __u16 listen_port = AINFTP_DEFAULT_PORT;

/* Benchmark only (bench/xdp.ts): sum a repeated contribution again instead of
 * dropping it as a duplicate, so BPF_PROG_TEST_RUN's `repeat` measures the
 * summing path. Always 0 when attached; the verifier prunes the branch. */
const volatile __u8 bench_no_dedupe = 0;

/* The sentry's sampling phase is a keyed hash of (round, chunk, rank): set to
 * a random value by the loader, so a sender cannot know which elements are
 * looked at, and cheaper than a helper call per packet. */
const volatile __u64 sentry_key = 0x9e3779b97f4a7c15ULL;

/* Job configuration; userspace updates it while attached (window, members). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ainftp_config);
} job_config SEC(".maps");

/* IPv4 address (network order) of each rank, checked when the config has
 * AINFTP_CFG_CHECK_SOURCE; written by the communicator at open. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AINFTP_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} member_addrs SEC(".maps");

/* AF_XDP sockets by RX queue: result packets go there when the config has
 * AINFTP_CFG_RESULTS_TO_XSK. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* Per-slot membership bitmap and lock; index bank * chunks + chunk. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AINFTP_BANKS * 1024); /* resized by the loader */
	__type(key, __u32);
	__type(value, struct ainftp_slot);
} slots SEC(".maps");

/* int32 sums, mmapped by userspace; same index as slots. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, AINFTP_BANKS * 1024);
	__type(key, __u32);
	__type(value, struct ainftp_acc);
} acc SEC(".maps");

/* All-gathered results, mmapped by userspace; same index as slots. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, AINFTP_BANKS * 1024);
	__type(key, __u32);
	__type(value, struct ainftp_result);
} results SEC(".maps");

/* Events of the round in each bank, for the batched wake-up. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AINFTP_BANKS);
	__type(key, __u32);
	__type(value, struct ainftp_bank_state);
} bank_state SEC(".maps");

/* The plan of the round in each bank: who owns which chunk (results only
 * from the owner); written by userspace as it learns each round's plan. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AINFTP_BANKS);
	__type(key, __u32);
	__type(value, struct ainftp_plan);
} round_plan SEC(".maps");

/* The job key for the data plane's MAC (AUTH_HDR / AUTH_FULL); userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ainftp_key);
} job_key SEC(".maps");

/* Every outcome, per CPU: no atomics on the stats path. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ainftp_counters);
} counters SEC(".maps");

/* The sentry's band of accepted energies per chunk; written by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2 * 1024); /* resized by the loader to 2 * chunks */
	__type(key, __u32);
	__type(value, struct ainftp_gate);
} sentry_gate SEC(".maps");

/* Every contributor's energy per slot (same index as slots), for userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, AINFTP_BANKS * 1024);
	__type(key, __u32);
	__type(value, struct ainftp_obs);
} sentry_obs SEC(".maps");

/* Accepted and rejected contributions per rank, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AINFTP_MAX_WORKERS);
	__type(key, __u32);
	__type(value, struct ainftp_sentry_worker);
} sentry_workers SEC(".maps");

/* Accepted contributions for userspace's robust aggregation (CONTRIBS_TO_RING):
 * 8 MB, about 2400 records; the owner drains it at every wake-up. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} contribs SEC(".maps");

/* Per-CPU copy of a contribution's payload, taken before the slot lock
 * (helpers cannot run under it) and zero-padded to four words (pad_words). */
struct scratch {
	__s16 v[AINFTP_MAX_ELEMS + 16];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} payload_scratch SEC(".maps");

/* Slot-complete and result events for userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Hides a value from the optimizer so the range check that follows stays on
 * the register the verifier sees (clang otherwise folds it into a mask that
 * loses the lower bound a helper's size argument needs). */
#define opaque(x) asm volatile("" : "+r"(x))

#define RESULT_BUSY 0xffffffffu /* results tag while a writer copies the data */

/* ---- the data plane's MAC: SipHash-2-4 (ainftp_abi.h, native/mac.c) ---- */

#define SIP_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND(v0, v1, v2, v3)                                                     \
	do {                                                                          \
		v0 += v1; v1 = SIP_ROTL(v1, 13); v1 ^= v0; v0 = SIP_ROTL(v0, 32);     \
		v2 += v3; v3 = SIP_ROTL(v3, 16); v3 ^= v2;                            \
		v0 += v3; v3 = SIP_ROTL(v3, 21); v3 ^= v0;                            \
		v2 += v1; v1 = SIP_ROTL(v1, 17); v1 ^= v2; v2 = SIP_ROTL(v2, 32);     \
	} while (0)
#define SIP_WORD(v0, v1, v2, v3, m)             \
	do {                                    \
		__u64 m_ = (m);                 \
		v3 ^= m_;                       \
		SIP_ROUND(v0, v1, v2, v3);      \
		SIP_ROUND(v0, v1, v2, v3);      \
		v0 ^= m_;                       \
	} while (0)

/* SipHash-2-4 of header[0..32) || payload[0..payload_bytes) under the key
 * (the payload in the scratch, zero-padded to a word). */
static __always_inline __u64 mac_of(const __u64 *hdr, const __u64 *w, __u32 payload_bytes, __u64 k0, __u64 k1)
{
	__u32 words = payload_bytes >> 3;
	__u64 v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
	__u64 v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
	SIP_WORD(v0, v1, v2, v3, hdr[0]);
	SIP_WORD(v0, v1, v2, v3, hdr[1]);
	SIP_WORD(v0, v1, v2, v3, hdr[2]);
	SIP_WORD(v0, v1, v2, v3, hdr[3]);
	/* an open-coded iterator: the verifier checks the body until its state
	 * converges, not once per word (430 walks: 0.3 s to load) */
	struct bpf_iter_num it;
	int *g;
	bpf_iter_num_new(&it, 0, words);
	while ((g = bpf_iter_num_next(&it))) {
		__u32 at = *g;
		if (at >= AINFTP_MAX_ELEMS / 4)
			break;
		SIP_WORD(v0, v1, v2, v3, w[at]);
	}
	bpf_iter_num_destroy(&it);
	/* the last block: the bytes left (the scratch holds a whole word there)
	 * and the message length in the top byte */
	__u32 rem = payload_bytes & 7, at = words;
	__u64 last = 0;
	opaque(at);
	if (rem && at <= AINFTP_MAX_ELEMS / 4)
		last = w[at] & ((1ULL << (8 * rem)) - 1);
	last |= (__u64)((32 + payload_bytes) & 0xff) << 56;
	SIP_WORD(v0, v1, v2, v3, last);
	v2 ^= 0xff;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

#define AUTH_LOADED 0x100 /* ainftp_auth: the scratch already holds the payload */

/* 1 when a CONTRIB's or RESULT's tag (after its payload) is its MAC under
 * the job key, per `mode` (AINFTP_CFG_AUTH_HDR or _FULL, | AUTH_LOADED).
 * A global function, verified once on its own, so the paths with and
 * without auth meet again in the caller with the same state (inlined, the
 * sum loop was verified once per path: 600k instructions). The MAC is
 * checked before a frame's values touch a slot: a contribution summed
 * cannot be taken back, so it is not fused with the (locked) sum loop. */
__noinline int ainftp_auth(struct xdp_md *ctx, __u32 payload_off, __u32 payload_bytes, __u32 mode)
{
	__u32 zero = 0;
	struct ainftp_key *key = bpf_map_lookup_elem(&job_key, &zero);
	struct scratch *in = bpf_map_lookup_elem(&payload_scratch, &zero);
	if (!key || !in || payload_off < sizeof(struct ainftp_wire_hdr) || payload_bytes == 0 ||
	    payload_bytes > AINFTP_MAX_ELEMS * 2)
		return 0;
	__u64 hdr[4], tag;
	if (bpf_xdp_load_bytes(ctx, payload_off - sizeof(struct ainftp_wire_hdr), hdr, sizeof(hdr)) < 0 ||
	    bpf_xdp_load_bytes(ctx, payload_off + payload_bytes, &tag, sizeof(tag)) < 0)
		return 0;
	__u32 bytes = 0;
	if (mode & AINFTP_CFG_AUTH_FULL) {
		bytes = payload_bytes;
		if (!(mode & AUTH_LOADED)) {
			__u32 len = bytes;
			opaque(len);
			if (len < 1 || len > AINFTP_MAX_ELEMS * 2)
				return 0;
			/* zero the last word's tail the MAC reads, then the payload over it */
			__u32 last = (len - 1) >> 3;
			if (last < AINFTP_MAX_ELEMS / 4)
				((__u64 *)in->v)[last] = 0;
			if (bpf_xdp_load_bytes(ctx, payload_off, in->v, len) < 0)
				return 0;
		}
	}
	return mac_of(hdr, (const __u64 *)in->v, bytes, key->k0, key->k1) == tag;
}

/* The config's auth mode for ainftp_auth, 0 when off. */
static __always_inline __u32 auth_mode(const struct ainftp_config *cfg)
{
	return cfg->flags & (AINFTP_CFG_AUTH_HDR | AINFTP_CFG_AUTH_FULL);
}

static __always_inline void emit_event(struct ainftp_counters *cnt, const struct ainftp_config *cfg,
				       __u16 type, __u32 round, __u32 chunk, __u32 idx,
				       __u16 contributors)
{
	__u32 bank = round & 1;
	struct ainftp_bank_state *bs = bpf_map_lookup_elem(&bank_state, &bank);
	struct ainftp_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		cnt->c[AINFTP_CNT_RINGBUF_FULL]++;
		return;
	}
	ev->type = type;
	ev->contributors = contributors;
	ev->round = round;
	ev->chunk = chunk;
	ev->index = idx;

	/* Wake on every batch-th event of the round, on the event that ends it,
	 * and on every resend request (rare: only after a loss). */
	__u32 done = 1, end = cfg->results_per_round ? cfg->results_per_round : cfg->chunks;
	if (bs && type == AINFTP_EV_SLOT_COMPLETE) {
		done = __sync_fetch_and_add(&bs->slots_done, 1) + 1;
		end = cfg->owned_chunks;
	} else if (bs && type == AINFTP_EV_RESULT) {
		done = __sync_fetch_and_add(&bs->results_done, 1) + 1;
	}
	__u32 batch = cfg->batch;
	int wake = type == AINFTP_EV_RESEND || batch <= 1 || done % batch == 0 || done >= end;
	bpf_ringbuf_submit(ev, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	cnt->c[AINFTP_CNT_EVENTS]++;
	if (wake)
		cnt->c[AINFTP_CNT_WAKEUPS]++;
}

/* Two int16 lanes per 64-bit add: each element is biased by 2^15 (XOR of its
 * sign bit turns int16 into offset binary, one instruction per 4 elements),
 * so a 32-bit lane only ever grows and never borrows from its neighbour:
 * 64 workers * 65535 < 2^32. The sums of elements (e0, e2) share one word and
 * (e1, e3) the next; userspace subtracts 2^15 * contributors and swaps the
 * middle two back (src/abi.ts decodeSums).
 * At 8 bits the same loop adds four 16-bit lanes per word (bias 2^7 by the
 * XOR of each byte's sign bit: 64 * 255 < 2^16), elements (e0, e2, e4, e6)
 * in one word and (e1, e3, e5, e7) in the next; at 4 bits the nibbles are
 * first spread into biased bytes (expand4) and summed as at 8 bits. */
#define LANES 0x0000ffff0000ffffULL
#define BIAS4 0x8000800080008000ULL
#define LANES8 0x00ff00ff00ff00ffULL
#define BIAS8 0x8080808080808080ULL
#define NIBBLES 0x0f0f0f0f0f0f0f0fULL
#define BIAS_NIBBLES 0x8888888888888888ULL

/* One width's summing: the bias XORed into each word, the lane mask, and the
 * shift that brings the odd elements into the lanes. */
struct lanes {
	__u64 bias;
	__u64 mask;
	__u32 shift;
	__u32 per_word; /* log2 of the elements one source word holds */
};

/* Store (first contributor: an older round's sums are overwritten, no
 * clearing pass) or add the scratch copy into the slot's sums, four source
 * words per iteration, up to count rounded up to four words (pad_words
 * zeroed the scratch past the payload). Called with the slot lock held: no
 * helpers; the open-coded iterator's kfuncs are allowed under it, and the
 * verifier checks its body until its state converges, not once per word, so
 * the load time does not grow with AINFTP_MAX_ELEMS (a bounded loop over
 * 4094 words took more than the verifier's 1M instructions). Two loops that
 * differ only in `=` and `+=`, on purpose: the store-or-add choice is made
 * once per packet, not once per word in the hot loop. */
static __always_inline void sum_into(__u64 *dst, const struct scratch *in, __u32 count, int first,
				     const struct lanes *l)
{
	const __u64 *src = (const __u64 *)in->v;
	__u64 bias = l->bias, mask = l->mask;
	__u32 shift = l->shift & 31, per = l->per_word & 3;
	__u32 quads = (((count + (1u << per) - 1) >> per) + 3) >> 2;
	struct bpf_iter_num it;
	int *qp;
	bpf_iter_num_new(&it, 0, quads);
	if (first) {
		while ((qp = bpf_iter_num_next(&it))) {
			__u32 q = *qp;
			opaque(q);
			if (q >= AINFTP_MAX_ELEMS / 16)
				break;
			const __u64 *s = src + 4 * q;
			__u64 *d = dst + 8 * q; /* (a pointer: the verifier keeps its bound, not 2g + 1's) */
			__u64 x0 = s[0] ^ bias, x1 = s[1] ^ bias, x2 = s[2] ^ bias, x3 = s[3] ^ bias;
			d[0] = x0 & mask;
			d[1] = (x0 >> shift) & mask;
			d[2] = x1 & mask;
			d[3] = (x1 >> shift) & mask;
			d[4] = x2 & mask;
			d[5] = (x2 >> shift) & mask;
			d[6] = x3 & mask;
			d[7] = (x3 >> shift) & mask;
		}
	} else {
		while ((qp = bpf_iter_num_next(&it))) {
			__u32 q = *qp;
			opaque(q);
			if (q >= AINFTP_MAX_ELEMS / 16)
				break;
			const __u64 *s = src + 4 * q;
			__u64 *d = dst + 8 * q;
			__u64 x0 = s[0] ^ bias, x1 = s[1] ^ bias, x2 = s[2] ^ bias, x3 = s[3] ^ bias;
			d[0] += x0 & mask;
			d[1] += (x0 >> shift) & mask;
			d[2] += x1 & mask;
			d[3] += (x1 >> shift) & mask;
			d[4] += x2 & mask;
			d[5] += (x2 >> shift) & mask;
			d[6] += x3 & mask;
			d[7] += (x3 >> shift) & mask;
		}
	}
	bpf_iter_num_destroy(&it);
}

/* Zeroes the three scratch words after the `words` sum_into reads, so its
 * last four-word step adds zeros (stored biased, read back as 0). */
static __always_inline void pad_words(struct scratch *in, __u32 words)
{
	__u64 *w = (__u64 *)in->v;
	opaque(words);
	if (words <= AINFTP_MAX_ELEMS / 4) {
		w[words] = 0;
		w[words + 1] = 0;
		w[words + 2] = 0;
	}
}

/* int4: the payload's `words` words, loaded at the scratch's upper half
 * (byte AINFTP_MAX_ELEMS), spread into biased bytes from the start of the
 * scratch: word i's low nibbles (values 16i..16i+7) become word 2i, its high
 * nibbles word 2i + 1. Reads word MAX/8 + i before writing 2i, 2i + 1 <= MAX/8 + i. */
static __always_inline void expand4(struct scratch *in, __u32 words)
{
	__u64 *w = (__u64 *)in->v;
	for (__u32 i = 0; i < AINFTP_MAX_ELEMS / 8; i++) {
		if (i >= words)
			break;
		__u64 x = w[AINFTP_MAX_ELEMS / 8 + i] ^ BIAS_NIBBLES;
		w[2 * i] = x & NIBBLES;
		w[2 * i + 1] = (x >> 4) & NIBBLES;
	}
}

/* 16 * log2(x) for x > 0, the mantissa's four bits below the leading one
 * read as a linear fraction (error under 1.4 sixteenths). src/sentry/energy.ts
 * computes the same function. Inlined into the global ainftp_sentry_judge,
 * which the verifier checks once, on its own. */
static __always_inline __s32 ainftp_log2_q4(__u64 x)
{
	__u64 v = x;
	__s32 n = 0;
	if (v >> 32) { v >>= 32; n += 32; }
	if (v >> 16) { v >>= 16; n += 16; }
	if (v >> 8) { v >>= 8; n += 8; }
	if (v >> 4) { v >>= 4; n += 4; }
	if (v >> 2) { v >>= 2; n += 2; }
	if (v >> 1) { n += 1; }
	__u32 frac = n >= 4 ? (x >> (n - 4)) & 15 : (x << (4 - n)) & 15;
	return n * 16 + (__s32)frac;
}

/* A contribution's energy, 16 * log2(mean q^2 * 4^exp), over
 * AINFTP_SENTRY_SAMPLES elements at a random phase of an even stride: a
 * sender cannot know which of its elements are looked at. */
static __always_inline __s32 ainftp_sentry_energy(const struct scratch *in, __u32 count, __s32 exp, __u64 tag)
{
	if (!in || count == 0)
		return AINFTP_ENERGY_ZERO;
	__u64 s = 0;
	__s32 log_m;
	if (count >= AINFTP_SENTRY_SAMPLES) {
		/* no divisions: a power-of-two sample count, and the phase by
		 * multiply-shift (the per-packet cost is mostly fixed costs) */
		__u32 stride = count / AINFTP_SENTRY_SAMPLES;
		__u64 hsh = (tag ^ sentry_key) * 0x9e3779b97f4a7c15ULL;
		hsh ^= hsh >> 29;
		__u32 pos = (__u32)(((hsh & 0xffffffffULL) * stride) >> 32);
		/* the last sample is at pos + 15 * stride < count <= MAX_ELEMS */
		if (pos + (AINFTP_SENTRY_SAMPLES - 1) * stride >= AINFTP_MAX_ELEMS)
			return AINFTP_ENERGY_ZERO;
		__u64 s0 = 0, s1 = 0;
#pragma unroll
		for (__u32 i = 0; i < AINFTP_SENTRY_SAMPLES; i += 2) {
			__u32 a = pos + i * stride, b = a + stride;
			opaque(a);
			opaque(b);
			if (a >= AINFTP_MAX_ELEMS || b >= AINFTP_MAX_ELEMS)
				break;
			__s64 qa = in->v[a], qb = in->v[b];
			s0 += qa * qa;
			s1 += qb * qb;
		}
		s = s0 + s1;
		log_m = 16 * AINFTP_SENTRY_SAMPLES_LOG2;
	} else {
		for (__u32 i = 0; i < AINFTP_SENTRY_SAMPLES; i++) {
			if (i >= count)
				break;
			__s64 q = in->v[i];
			s += q * q;
		}
		log_m = ainftp_log2_q4(count);
	}
	if (s == 0)
		return AINFTP_ENERGY_ZERO;
	return ainftp_log2_q4(s) - log_m + 32 * exp;
}

/* The sentry's verdict on a contribution (1: drop it), and its energy
 * recorded for userspace. A global function, verified once on its own. */
__noinline int ainftp_sentry_judge(const struct scratch *in, __u64 packed, __u32 chunk, __u32 idx, __u32 round)
{
	/* five arguments at most: count, exp, rank and "short chunk" ride in one */
	__u32 count = packed & 0xffff, rank = (packed >> 32) & 0xffff;
	__s32 exp = (__s16)((packed >> 16) & 0xffff);
	__u32 gate_at = 2 * chunk + ((packed >> 48) & 1);
	__s32 energy = ainftp_sentry_energy(in, count, exp, ((__u64)round << 32) ^ ((__u64)chunk << 8) ^ rank);
	struct ainftp_gate *gate = bpf_map_lookup_elem(&sentry_gate, &gate_at);
	int reject = gate && gate->lo < gate->hi && (energy < gate->lo || energy > gate->hi);
	struct ainftp_obs *obs = bpf_map_lookup_elem(&sentry_obs, &idx);
	if (obs) {
		obs->tag = round + 1;
		obs->energy[rank & (AINFTP_MAX_WORKERS - 1)] = energy < -32768 ? -32768 : energy > 32767 ? 32767 : energy;
	}
	return reject;
}

/* Under the slot lock: whether the slot holds a round after `round` (tags
 * compare across the u32 wrap). */
static __always_inline int slot_newer(const struct ainftp_slot *slot, __u32 round)
{
	return slot->tag && (__s32)(slot->tag - (round + 1)) > 0;
}

/* The ranks a slot of `round` waits for: its bank's active set, within the
 * members (bank_mask 0: every member). */
static __always_inline __u64 slot_want(const struct ainftp_config *cfg, __u32 round)
{
	__u64 bank = cfg->bank_mask[round & 1];
	return cfg->member_mask & (bank ? bank : ~0ULL);
}

/* Under the slot lock: the slot holds round `round` afresh, empty, at
 * `count` values (0: the first contribution's) and scale `exp`. */
static __always_inline void slot_start(struct ainftp_slot *slot, __u32 round, __u16 count, __s16 exp, __u32 spec)
{
	slot->tag = round + 1;
	slot->seen = 0;
	slot->rejected = 0;
	slot->contributors = 0;
	slot->count = count;
	slot->exp = exp;
	slot->spec = spec;
	slot->state = AINFTP_SLOT_FILLING;
}

/* Under the slot lock: whether this rank's contribution may enter the slot
 * of `round` (AINFTP_CNT_SUMMED), or the counter that says why not. The first
 * contribution of a round claims the slot; a retransmission to a completed
 * slot asks the owner to resend its result (SwitchML's stored-result reply). */
static __always_inline int slot_admit(struct ainftp_slot *slot, const struct ainftp_config *cfg,
				      const struct ainftp_wire_hdr *h, __u32 round, __u32 count, __u64 bit, int *resend,
				      int *replaced)
{
	__u32 spec = (h->flags & AINFTP_F_SPEC) != 0;
	if (slot->tag != round + 1) {
		if (slot_newer(slot, round))
			return AINFTP_CNT_STALE_ROUND; /* the bank already holds a newer round */
		slot_start(slot, round, count, h->exp, spec);
		return AINFTP_CNT_SUMMED;
	}
	/* from a rank the owner's plan left out (the slot is confirmed: its
	 * bank_mask is the plan's): it sent before it knew */
	if (spec && (slot->spec & AINFTP_SLOT_CONFIRMED) && !(slot_want(cfg, round) & bit))
		return AINFTP_CNT_SPEC_REFUSED;
	if ((slot->spec & AINFTP_SLOT_SPEC) && !spec && (slot->count != count || slot->exp != h->exp)) {
		/* the plan's scale is not the one predicted: what the slot holds
		 * was quantized under the wrong one; this contribution starts it
		 * again (every member sends again at the plan's scale) */
		*replaced = slot->state == AINFTP_SLOT_COMPLETE ? 2 : 1; /* 2: a completion to take back */
		slot_start(slot, round, count, h->exp, 0);
		return AINFTP_CNT_SUMMED;
	}
	if ((slot->seen & bit) && !bench_no_dedupe) {
		*resend = slot->state == AINFTP_SLOT_COMPLETE && (h->flags & AINFTP_F_RETRANSMIT);
		return AINFTP_CNT_DUPLICATE;
	}
	if (slot->state == AINFTP_SLOT_COMPLETE) {
		/* closed without this rank (a deadline, or the round's active set
		 * left it out): a retransmitting member still gets the result */
		*resend = (h->flags & AINFTP_F_RETRANSMIT) != 0;
		return AINFTP_CNT_LATE;
	}
	if (slot->contributors == 0 && slot->count == 0)
		slot->count = count; /* claimed empty at the plan's scale (AINFTP_F_CONFIRM) */
	if (slot->count != count || slot->exp != h->exp)
		/* cannot sum integers of different scales */
		return spec ? AINFTP_CNT_SPEC_REFUSED : AINFTP_CNT_MAL_SCALE;
	if (!spec)
		slot->spec &= ~AINFTP_SLOT_SPEC;
	return AINFTP_CNT_SUMMED;
}

/* After the slot lock: a speculative slot emptied (slot_admit's *replaced);
 * a completion it had counted towards the bank's wake-up is taken back, so
 * the wake-up that ends the round comes with the slot's real completion. */
static __always_inline void spec_replaced(struct ainftp_counters *cnt, int replaced, __u32 round)
{
	if (!replaced)
		return;
	cnt->c[AINFTP_CNT_SPEC_REPLACED]++;
	if (replaced != 2)
		return;
	__u32 bank = round & 1;
	struct ainftp_bank_state *bs = bpf_map_lookup_elem(&bank_state, &bank);
	if (bs)
		__sync_fetch_and_add(&bs->slots_done, -1);
}


/* Under the slot lock. */
static __always_inline int slot_close(struct ainftp_slot *slot)
{
	slot->state = AINFTP_SLOT_COMPLETE;
	slot->completions++;
	return 1;
}

/* Under the slot lock: closes the slot once every rank it waits for is in. */
static __always_inline int slot_close_if_full(struct ainftp_slot *slot, const struct ainftp_config *cfg, __u32 round)
{
	if (slot->spec & AINFTP_SLOT_SPEC)
		return 0; /* speculative: only the owner's confirmation closes it */
	__u64 want = slot_want(cfg, round);
	if ((slot->seen & want) != want)
		return 0;
	return slot_close(slot);
}

/* After the slot lock: the counters and events of a contribution's outcome. */
static __always_inline int contrib_done(struct ainftp_counters *cnt, const struct ainftp_config *cfg,
					const struct ainftp_wire_hdr *h, __u32 idx, int outcome, int resend,
					int complete, __u16 contributors)
{
	__u32 round = h->round, rank = h->rank, count = h->count;
	if (outcome >= 0 && outcome < AINFTP_CNT__MAX)
		cnt->c[outcome]++;
	if ((outcome == AINFTP_CNT_SUMMED || outcome == AINFTP_CNT_SENTRY_REJECTED) && (cfg->flags & AINFTP_CFG_SENTRY)) {
		struct ainftp_sentry_worker *w = bpf_map_lookup_elem(&sentry_workers, &rank);
		if (w) {
			if (outcome == AINFTP_CNT_SENTRY_REJECTED)
				w->rejected++;
			else
				w->accepted++;
		}
	}
	if (resend) {
		cnt->c[AINFTP_CNT_RESEND_REQ]++;
		emit_event(cnt, cfg, AINFTP_EV_RESEND, round, h->chunk, idx, rank);
	}
	if (outcome == AINFTP_CNT_SUMMED) {
		if (!(cfg->flags & AINFTP_CFG_CONTRIBS_TO_RING) || h->version != AINFTP_VERSION) /* int8/int4: summed here */
			cnt->c[AINFTP_CNT_ELEMS_SUMMED] += count;
		if (h->flags & AINFTP_F_SATURATED)
			cnt->c[AINFTP_CNT_SATURATED]++;
	}
	if (complete) {
		cnt->c[AINFTP_CNT_COMPLETED]++;
		emit_event(cnt, cfg, AINFTP_EV_SLOT_COMPLETE, round, h->chunk, idx, contributors);
	}
	return XDP_DROP;
}

static __always_inline int on_contrib(struct ainftp_counters *cnt, const struct ainftp_config *cfg,
				      const struct ainftp_wire_hdr *h, struct xdp_md *ctx,
				      __u32 payload_off, __u32 idx, __u32 ver)
{
	__u32 round = h->round, count = h->count, rank = h->rank;
	__u64 bit = 1ULL << (rank & 63);
	if (!(cfg->member_mask & bit)) {
		cnt->c[AINFTP_CNT_NOT_MEMBER]++;
		return XDP_DROP;
	}
	struct ainftp_slot *slot = bpf_map_lookup_elem(&slots, &idx);
	struct ainftp_acc *sums = bpf_map_lookup_elem(&acc, &idx);
	if (!slot || !sums) {
		cnt->c[AINFTP_CNT_MAL_CHUNK]++;
		return XDP_DROP;
	}
	__u32 zero = 0;
	struct scratch *in = bpf_map_lookup_elem(&payload_scratch, &zero);
	if (!in)
		return XDP_DROP;
	__u32 pbytes = ainftp_payload_bytes(ver, count);
	__u32 len = pbytes;
	__u32 auth = auth_mode(cfg);
	struct lanes l = { .bias = BIAS4, .mask = LANES, .shift = 16, .per_word = 2 };
	if (ver == AINFTP_VERSION_INT4) {
		/* the MAC over the packet's payload first (it uses the scratch),
		 * then the nibbles into the upper half and spread into bytes */
		if (auth && !ainftp_auth(ctx, payload_off, pbytes, auth)) {
			cnt->c[AINFTP_CNT_BAD_MAC]++;
			return XDP_DROP;
		}
		opaque(len);
		if (len < 8 || len > AINFTP_MAX_ELEMS ||
		    bpf_xdp_load_bytes(ctx, payload_off, (__u8 *)in->v + AINFTP_MAX_ELEMS, len) < 0) {
			cnt->c[AINFTP_CNT_MAL_COUNT]++;
			return XDP_DROP;
		}
		expand4(in, len >> 3);
		pad_words(in, len >> 2); /* two expanded words per payload word */
		l.bias = 0;
		l.mask = LANES8;
		l.shift = 8;
		l.per_word = 3;
	} else {
		opaque(len);
		if (len < 1 || len > AINFTP_MAX_ELEMS * 2) {
			cnt->c[AINFTP_CNT_MAL_COUNT]++;
			return XDP_DROP;
		}
		/* Zero the last word, then the payload over it: the pad up to a
		 * whole word is zero. */
		__u32 last = (len - 1) >> 3;
		if (last < AINFTP_MAX_ELEMS / 4)
			((__u64 *)in->v)[last] = 0;
		if (bpf_xdp_load_bytes(ctx, payload_off, in->v, len) < 0) {
			cnt->c[AINFTP_CNT_MAL_COUNT]++;
			return XDP_DROP;
		}
		if (auth && !ainftp_auth(ctx, payload_off, pbytes, auth | AUTH_LOADED)) {
			cnt->c[AINFTP_CNT_BAD_MAC]++;
			return XDP_DROP;
		}
		pad_words(in, (len + 7) >> 3);
		if (ver == AINFTP_VERSION_INT8) {
			l.bias = BIAS8;
			l.mask = LANES8;
			l.shift = 8;
			l.per_word = 3;
		}
	}

	/* The sentry judges before the lock. The energy is recorded before the
	 * lock too: the slot cannot complete (and userspace read it) before
	 * this rank's `seen` bit is set under the lock, after this store. Only
	 * `reject` lives on, so the verifier still walks the sum loop once. */
	int reject = 0;
	if ((cfg->flags & AINFTP_CFG_SENTRY) && ver == AINFTP_VERSION) /* its energy reads int16 values */
		reject = ainftp_sentry_judge(in, count | (__u64)(__u16)h->exp << 16 | (__u64)rank << 32 |
					     (__u64)(count != cfg->chunk_elems) << 48, h->chunk, idx, round);

	if (reject) {
		/* seen but not summed: the slot completes without it. A path of its
		 * own, so that the sum loop's path has no branch on the verdict (one
		 * made the verifier walk the loop five times: 1.2 s to load). */
		int resend = 0, complete = 0, replaced = 0;
		__u16 contributors = 0;
		bpf_spin_lock(&slot->lock);
		int outcome = slot_admit(slot, cfg, h, round, count, bit, &resend, &replaced);
		if (outcome == AINFTP_CNT_SUMMED) {
			outcome = AINFTP_CNT_SENTRY_REJECTED;
			slot->seen |= bit;
			slot->rejected |= bit;
			contributors = slot->contributors;
			complete = slot_close_if_full(slot, cfg, round);
		}
		bpf_spin_unlock(&slot->lock);
		spec_replaced(cnt, replaced, round);
		return contrib_done(cnt, cfg, h, idx, outcome, resend, complete, contributors);
	}

	/* Robust aggregation: userspace gets a copy and sums nothing here. */
	int to_ring = (cfg->flags & AINFTP_CFG_CONTRIBS_TO_RING) && ver == AINFTP_VERSION; /* its records hold int16 values */
	if (to_ring) {
		struct ainftp_contrib_rec *rec = bpf_ringbuf_reserve(&contribs, sizeof(*rec), 0);
		if (!rec) {
			cnt->c[AINFTP_CNT_RINGBUF_FULL]++; /* the owner aggregates without it */
		} else {
			rec->round = round;
			rec->chunk = h->chunk;
			rec->rank = rank;
			rec->count = count;
			rec->exp = h->exp;
			rec->reserved = 0;
			if (bpf_xdp_load_bytes(ctx, payload_off, rec->v, len) < 0) {
				bpf_ringbuf_discard(rec, 0);
			} else {
				bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
				cnt->c[AINFTP_CNT_CONTRIBS_RING]++;
			}
		}
	}

	int resend = 0, complete = 0, replaced = 0;
	__u16 contributors = 0;
	bpf_spin_lock(&slot->lock);
	int outcome = slot_admit(slot, cfg, h, round, count, bit, &resend, &replaced);
	if (outcome == AINFTP_CNT_SUMMED) {
		slot->seen |= bit;
		if (!to_ring)
			sum_into((__u64 *)sums->v, in, count, slot->contributors == 0, &l);
		contributors = ++slot->contributors;
		complete = slot_close_if_full(slot, cfg, round);
	}
	bpf_spin_unlock(&slot->lock);
	spec_replaced(cnt, replaced, round);
	return contrib_done(cnt, cfg, h, idx, outcome, resend, complete, contributors);
}

/* Whether a RESULT may be stored (0), or the counter that says why not: its
 * contributor count must be 1..members, and, once the round's plan is known,
 * it must come from the chunk's owner and count no more than the active set
 * (a Byzantine member cannot overwrite another owner's chunks). */
static __always_inline int result_admit(const struct ainftp_config *cfg, const struct ainftp_wire_hdr *h, __u32 *from_owner)
{
	__u32 contributors = h->contributors, bank = h->round & 1;
	if (contributors == 0 || contributors > cfg->members)
		return AINFTP_CNT_MAL_CONTRIBUTORS;
	struct ainftp_plan *plan = bpf_map_lookup_elem(&round_plan, &bank);
	if (!plan || plan->tag != h->round + 1)
		return 0; /* plan not known yet: userspace checks the owner before use */
	__u32 k = plan->owners;
	if (k == 0 || k > AINFTP_MAX_WORKERS)
		return 0;
	__u32 at = h->chunk % k;
	opaque(at); /* the verifier does not bound a modulo's result */
	if (h->rank != plan->owner[at & (AINFTP_MAX_WORKERS - 1)])
		return AINFTP_CNT_NOT_OWNER;
	if (contributors > k)
		return AINFTP_CNT_MAL_CONTRIBUTORS;
	*from_owner = k; /* the active set, 1..64 */
	return 0;
}

/* Whether the previous round's plan would take a result of this chunk from
 * `rank` claiming `contributors` (its owner, within its active set), when
 * the bank of the round before holds that plan; else 0. Owners change only
 * when the active set does, so before a round's plan is known it tells the
 * owner's result from a forgery in the rounds where the set stays. */
static __always_inline int previous_plan_takes(const struct ainftp_wire_hdr *h, __u32 rank, __u32 contributors)
{
	__u32 bank = (h->round + 1) & 1;
	struct ainftp_plan *prev = bpf_map_lookup_elem(&round_plan, &bank);
	if (!prev || prev->tag != h->round) /* tag: (round - 1) + 1 */
		return 0;
	__u32 k = prev->owners;
	if (k == 0 || k > AINFTP_MAX_WORKERS)
		return 0;
	__u32 at = h->chunk % k;
	opaque(at);
	return rank == prev->owner[at & (AINFTP_MAX_WORKERS - 1)] && contributors <= k;
}

/* A RESULT for an entry that holds one of its round (a call: off the path
 * of a first store): the counter that says why it is refused, or 0 when it
 * replaces the entry (*replaced: the
 * counter the entry's result is dropped under). With the plan known, only
 * the owner's replaces what the plan refuses: another rank's, or one under
 * the owner's rank claiming more contributors than the active set (the
 * owner never sends one); the owner's own copy is RESULT_DUP. Before it, a
 * result the previous round's plan takes replaces one it refuses
 * (RESULT_DISPLACED); else a copy from the same rank is RESULT_EARLY_DUP,
 * and another rank's RESULT_CONTESTED. */
static __noinline int result_held(const struct ainftp_wire_hdr *h, const struct ainftp_result *res,
				  __u32 from_owner, int foreign, int *replaced)
{
	if (from_owner) {
		if (foreign)
			*replaced = AINFTP_CNT_NOT_OWNER;
		else if (res->contributors > from_owner)
			*replaced = AINFTP_CNT_MAL_CONTRIBUTORS;
		else
			return AINFTP_CNT_RESULT_DUP;
		return 0;
	}
	if (previous_plan_takes(h, h->rank, h->contributors) && !previous_plan_takes(h, res->rank, res->contributors)) {
		*replaced = AINFTP_CNT_RESULT_DISPLACED;
		return 0;
	}
	return foreign ? AINFTP_CNT_RESULT_CONTESTED : AINFTP_CNT_RESULT_EARLY_DUP;
}

static __always_inline int on_result(struct xdp_md *ctx, struct ainftp_counters *cnt,
				     const struct ainftp_config *cfg,
				     const struct ainftp_wire_hdr *h, __u32 payload_off, __u32 idx)
{
	__u32 round = h->round, count = h->count;
	__u32 from_owner = 0; /* the plan's active set when from the owner, else 0 */
	int why = result_admit(cfg, h, &from_owner);
	if (why) {
		if (why < AINFTP_CNT__MAX)
			cnt->c[why]++;
		return XDP_DROP;
	}
	__u32 pbytes = ainftp_payload_bytes(h->version, count);
	__u32 auth = auth_mode(cfg);
	if (auth && !ainftp_auth(ctx, payload_off, pbytes, auth)) {
		cnt->c[AINFTP_CNT_BAD_MAC]++;
		return XDP_DROP;
	}
	/* (a frame in several buffers cannot go to a socket bound without
	 * XDP_USE_SG: it is stored in the results map instead) */
	if ((cfg->flags & AINFTP_CFG_RESULTS_TO_XSK) &&
	    bpf_xdp_get_buff_len(ctx) == (__u32)(ctx->data_end - ctx->data)) {
		/* The collective reads results from an AF_XDP socket on this queue:
		 * the frame lands in its UMEM (the arena). No socket on this queue:
		 * fall back to the results map below. */
		if (bpf_redirect_map(&xsks, ctx->rx_queue_index, 0) == XDP_REDIRECT) {
			cnt->c[AINFTP_CNT_RESULTS_XSK]++;
			return XDP_REDIRECT;
		}
	}
	struct ainftp_result *res = bpf_map_lookup_elem(&results, &idx);
	if (!res) {
		cnt->c[AINFTP_CNT_MAL_CHUNK]++;
		return XDP_DROP;
	}
	__u32 old = res->tag;
	int foreign = res->rank != h->rank, replaced = 0;
	if (old == RESULT_BUSY) {
		cnt->c[AINFTP_CNT_RESULT_DUP]++;
		return XDP_DROP;
	}
	if (old == round + 1) {
		int why = result_held(h, res, from_owner, foreign, &replaced);
		if (why) {
			cnt->c[why]++;
			return XDP_DROP;
		}
	}
	if (old && (__s32)(old - (round + 1)) > 0) {
		cnt->c[AINFTP_CNT_STALE_ROUND]++;
		cnt->c[AINFTP_CNT_RESULT_WINDOW]++;
		return XDP_DROP;
	}
	/* Claim the entry so a concurrent duplicate on another CPU backs off. */
	if (__sync_val_compare_and_swap(&res->tag, old, RESULT_BUSY) != old) {
		cnt->c[AINFTP_CNT_RESULT_DUP]++;
		return XDP_DROP;
	}
	/* the entry held a result the plan refuses (or, before it, the previous
	 * plan): counted once, now that it is ours to replace */
	if (replaced)
		cnt->c[replaced]++;
	__u32 len = pbytes;
	opaque(len);
	if (len < 1 || len > sizeof(res->v) || bpf_xdp_load_bytes(ctx, payload_off, res->v, len) < 0) {
		res->tag = old;
		cnt->c[AINFTP_CNT_MAL_COUNT]++;
		return XDP_DROP;
	}
	res->count = count;
	res->contributors = h->contributors;
	res->exp = h->exp;
	res->flags = h->flags;
	res->writes++;
	res->rank = h->rank;
	/* Publish: an atomic exchange orders the data before the tag. */
	__sync_lock_test_and_set(&res->tag, round + 1);
	cnt->c[AINFTP_CNT_RESULTS]++;
	emit_event(cnt, cfg, AINFTP_EV_RESULT, round, h->chunk, idx, h->contributors);
	return XDP_DROP;
}

/* A CLOSE frame's arguments, for each bpf_loop iteration (on the caller's stack). */
struct close_args {
	struct ainftp_counters *cnt;
	const struct ainftp_config *cfg;
	const struct scratch *list; /* the chunk indices, as __u16 */
	__u32 round;
	__u32 force;
	__u32 confirm;
	__s32 exp;
};

/* One listed chunk of a CLOSE frame (see ainftp_abi.h). A bpf_loop callback,
 * so the verifier checks this body once however long the list is. */
static long close_one(__u64 i, void *arg)
{
	struct close_args *a = arg;
	const struct ainftp_config *cfg = a->cfg;
	if (i >= AINFTP_MAX_ELEMS)
		return 1;
	__u32 chunk = (__u16)a->list->v[i], round = a->round;
	if (chunk >= cfg->chunks)
		return 0; /* not a chunk of this job: nothing to close */
	__u32 idx = (round & 1) * cfg->chunks + chunk;
	struct ainftp_slot *slot = bpf_map_lookup_elem(&slots, &idx);
	if (!slot)
		return 0;
	int closed = 0, replaced = 0;
	__u16 contributors = 0;
	bpf_spin_lock(&slot->lock);
	if (a->confirm) {
		/* AINFTP_F_CONFIRM: the plan's scale is a->exp */
		int ours = slot->tag == round + 1;
		if (slot_newer(slot, round) || (ours && slot->state == AINFTP_SLOT_COMPLETE && !(slot->spec & AINFTP_SLOT_SPEC))) {
			/* a newer round's, or complete (the owner checks who is in it) */
		} else if (ours && slot->state == AINFTP_SLOT_FILLING && slot->exp == a->exp && !(slot->seen & ~slot_want(cfg, round))) {
			/* at the plan's scale with nobody outside the active set */
			slot->spec = AINFTP_SLOT_CONFIRMED;
			closed = slot_close_if_full(slot, cfg, round);
			contributors = slot->contributors;
		} else {
			/* another scale, or an outsider in it (or not on the round
			 * yet): claimed empty at the plan's scale */
			if (ours)
				replaced = slot->state == AINFTP_SLOT_COMPLETE ? 2 : 1;
			slot_start(slot, round, 0, a->exp, AINFTP_SLOT_CONFIRMED);
		}
	} else if (slot->tag == round + 1) {
		/* re-checked without F_FORCE: the owner may have shrunk bank_mask
		 * after the last contribution, leaving a slot that holds everyone
		 * it now waits for but that no packet will close */
		if (slot->state == AINFTP_SLOT_FILLING)
			closed = a->force ? slot_close(slot) : slot_close_if_full(slot, cfg, round);
		contributors = slot->contributors;
	} else if (a->force && !slot_newer(slot, round)) {
		/* nothing of this round arrived: claimed closed and empty, so a
		 * late contribution cannot open it (the owner finishes the chunk
		 * with its own values) */
		slot_start(slot, round, 0, 0, 0);
		closed = slot_close(slot);
	}
	bpf_spin_unlock(&slot->lock);
	spec_replaced(a->cnt, replaced, round);
	if (closed) {
		a->cnt->c[AINFTP_CNT_COMPLETED]++;
		emit_event(a->cnt, cfg, AINFTP_EV_SLOT_COMPLETE, round, chunk, idx, contributors);
	}
	return 0;
}

/* A CLOSE frame: its chunk list copied before any lock, then each chunk.
 * A global function, verified once on its own: inlined, the loop's body was
 * verified again for every state the parser reaches it in. */
__noinline int ainftp_close(struct xdp_md *ctx, __u32 payload_off, __u32 round, __u32 count, __u32 flags)
{
	__u32 zero = 0;
	struct ainftp_counters *cnt = bpf_map_lookup_elem(&counters, &zero);
	struct ainftp_config *cfg = bpf_map_lookup_elem(&job_config, &zero);
	struct scratch *list = bpf_map_lookup_elem(&payload_scratch, &zero);
	if (!cnt || !cfg || !list)
		return XDP_DROP;
	__u32 len = count * 2;
	opaque(len);
	if (len < 2 || len > AINFTP_MAX_ELEMS * 2 || bpf_xdp_load_bytes(ctx, payload_off, list->v, len) < 0) {
		cnt->c[AINFTP_CNT_MAL_COUNT]++;
		return XDP_DROP;
	}
	struct close_args a = { .cnt = cnt, .cfg = cfg, .list = list, .round = round, .force = (flags & AINFTP_F_FORCE) != 0,
				.confirm = (flags & AINFTP_F_CONFIRM) != 0, .exp = (__s16)(flags >> 16) };
	bpf_loop(count, close_one, &a, 0);
	return XDP_DROP;
}

/* A packet outside the round window: dropped under `reason`, and a RESULT
 * also under RESULT_WINDOW (off the summing path: a call, not inlined). */
static __noinline int window_drop(struct ainftp_counters *cnt, __u32 type, __u32 reason)
{
	if (type == AINFTP_PKT_RESULT)
		cnt->c[AINFTP_CNT_RESULT_WINDOW]++;
	if (reason < AINFTP_CNT__MAX)
		cnt->c[reason]++;
	return XDP_DROP;
}

#define DROP(reason)                          \
	do {                                  \
		cnt->c[reason]++;             \
		return XDP_DROP;              \
	} while (0)

/* Frags-aware (BPF_F_XDP_HAS_FRAGS): a frame may span several buffers, so
 * veth takes MTUs up to 64 KB in native mode and NICs 9000-byte jumbo frames.
 * The headers are parsed in the first buffer (data..data_end); lengths are
 * checked against the whole frame (bpf_xdp_get_buff_len), and the payload,
 * wherever it lies, is read with bpf_xdp_load_bytes as before. */
SEC("xdp.frags")
int ainftp_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct ainftp_counters *cnt = bpf_map_lookup_elem(&counters, &zero);
	if (!cnt)
		return XDP_PASS;
	/* bytes of the frame in every buffer; a single-buffer frame's data_end - data */
	__u32 frame_len = bpf_xdp_get_buff_len(ctx);

	struct cursor c = { .pos = data, .end = data_end };
	__u16 proto;
	if (parse_eth(&c, &proto) != PARSE_OK) {
		/* Too short to tell whether it is ours: the stack discards it. */
		cnt->c[AINFTP_CNT_MAL_TRUNC_ETH]++;
		return XDP_PASS;
	}

	struct udphdr *udp;
	__u32 l3_end; /* offset of the end of the IP packet by its own length field */
	__u32 saddr = 0; /* IPv4 source, for the member address check */
	if (proto == AINFTP_ETH_P_IP) {
		struct iphdr *ip = c.pos;
		if ((void *)(ip + 1) > data_end) {
			cnt->c[AINFTP_CNT_MAL_TRUNC_IP]++;
			return XDP_PASS;
		}
		if (ip->protocol != AINFTP_PROTO_UDP)
			goto pass;
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip)) {
			cnt->c[AINFTP_CNT_MAL_TRUNC_IP]++;
			return XDP_PASS;
		}
		__u16 frag = bpf_ntohs(ip->frag_off);
		if (frag & AINFTP_IP_OFFSET)
			goto pass; /* later fragment: no UDP header to judge by */
		udp = (void *)ip + ihl;
		if ((void *)(udp + 1) > data_end) {
			cnt->c[AINFTP_CNT_MAL_TRUNC_UDP]++;
			return XDP_PASS;
		}
		if (udp->dest != bpf_htons(listen_port))
			goto pass;
		cnt->c[AINFTP_CNT_RX]++;
		if (frag & AINFTP_IP_MF)
			DROP(AINFTP_CNT_MAL_FRAGMENT);
		saddr = ip->saddr;
		__u32 tot = bpf_ntohs(ip->tot_len);
		l3_end = (__u32)((void *)ip - data) + tot;
		if (tot < ihl + sizeof(*udp) || l3_end > frame_len)
			DROP(AINFTP_CNT_MAL_TRUNC_IP);
	} else if (proto == AINFTP_ETH_P_IPV6) {
		struct ipv6hdr *ip6 = c.pos;
		if ((void *)(ip6 + 1) > data_end) {
			cnt->c[AINFTP_CNT_MAL_TRUNC_IP]++;
			return XDP_PASS;
		}
		if (ip6->nexthdr != AINFTP_PROTO_UDP)
			goto pass; /* extension headers are not ours to walk */
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end) {
			cnt->c[AINFTP_CNT_MAL_TRUNC_UDP]++;
			return XDP_PASS;
		}
		if (udp->dest != bpf_htons(listen_port))
			goto pass;
		cnt->c[AINFTP_CNT_RX]++;
		l3_end = (__u32)((void *)udp - data) + bpf_ntohs(ip6->payload_len);
		if (l3_end > frame_len)
			DROP(AINFTP_CNT_MAL_TRUNC_IP);
	} else {
		goto pass;
	}

	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp) || (__u32)((void *)udp - data) + ulen > l3_end)
		DROP(AINFTP_CNT_MAL_TRUNC_UDP);
	/* the ainftp header must lie in the first buffer (every driver puts at
	 * least the first 256 bytes there); only its payload may be in frags */
	struct ainftp_wire_hdr *h = (void *)(udp + 1);
	if ((void *)(h + 1) > data_end || ulen < sizeof(*udp) + sizeof(*h))
		DROP(AINFTP_CNT_MAL_TRUNC_HDR);
	if (h->magic != AINFTP_MAGIC)
		DROP(AINFTP_CNT_MAL_MAGIC);
	/* data packets name their lane width in the version byte (ainftp_abi.h);
	 * control and CLOSE packets are always AINFTP_VERSION */
	if (h->version < AINFTP_VERSION || h->version > AINFTP_VERSION_INT4 ||
	    (h->version != AINFTP_VERSION && h->type != AINFTP_PKT_CONTRIB && h->type != AINFTP_PKT_RESULT))
		DROP(AINFTP_CNT_MAL_VERSION);
	if (h->type == AINFTP_PKT_CONTROL) {
		cnt->c[AINFTP_CNT_CONTROL]++;
		return XDP_PASS; /* the swarm's socket takes it */
	}
	/* CLOSE only from the owner's BPF_PROG_TEST_RUN, which runs on the
	 * loopback device (ifindex 1); never from a network peer. */
	if (h->type == AINFTP_PKT_CLOSE && ctx->ingress_ifindex != 1)
		DROP(AINFTP_CNT_MAL_TYPE);
	if (h->type != AINFTP_PKT_CONTRIB && h->type != AINFTP_PKT_RESULT && h->type != AINFTP_PKT_CLOSE)
		DROP(AINFTP_CNT_MAL_TYPE);
	if (h->reserved)
		DROP(AINFTP_CNT_MAL_RESERVED);

	struct ainftp_config *cfg = bpf_map_lookup_elem(&job_config, &zero);
	if (!cfg)
		return XDP_PASS;
	if (h->job_id != cfg->job_id)
		DROP(AINFTP_CNT_FOREIGN_JOB);
	if (h->rank >= cfg->members || h->rank >= AINFTP_MAX_WORKERS)
		DROP(AINFTP_CNT_MAL_RANK);
	if (cfg->flags & AINFTP_CFG_CHECK_SOURCE) {
		/* a rank's packets must come from that member's address */
		__u32 rank = h->rank;
		__u32 *addr = bpf_map_lookup_elem(&member_addrs, &rank);
		if (!addr || !saddr || *addr != saddr)
			DROP(AINFTP_CNT_BAD_SOURCE);
	}
	if (h->chunk >= cfg->chunks)
		DROP(AINFTP_CNT_MAL_CHUNK);
	__u32 ver = h->version;
	if (h->type != AINFTP_PKT_CLOSE) {
		__u32 want = (cfg->flags & AINFTP_CFG_INT4) ? AINFTP_VERSION_INT4
			     : (cfg->flags & AINFTP_CFG_INT8) ? AINFTP_VERSION_INT8 : AINFTP_VERSION;
		if (ver != want)
			DROP(AINFTP_CNT_BAD_WIDTH);
	}
	__u32 count = h->count;
	/* under --auth a CONTRIB or RESULT ends with its MAC (ainftp_abi.h) */
	__u32 tag_bytes = h->type != AINFTP_PKT_CLOSE && (cfg->flags & (AINFTP_CFG_AUTH_HDR | AINFTP_CFG_AUTH_FULL)) ? AINFTP_MAC_BYTES : 0;
	/* at 8 and 4 bits a packet holds twice the int16 values (ainftp_abi.h) */
	__u32 most = ver == AINFTP_VERSION ? cfg->chunk_elems : 2 * (__u32)cfg->chunk_elems;
	if (count == 0 || count > most || count > 2 * AINFTP_MAX_ELEMS ||
	    (ver == AINFTP_VERSION && count > AINFTP_MAX_ELEMS) ||
	    ulen != sizeof(*udp) + sizeof(*h) + ainftp_payload_bytes(ver, count) + tag_bytes)
		DROP(AINFTP_CNT_MAL_COUNT);
	/* tag = round + 1 must be neither 0 (empty) nor RESULT_BUSY. */
	if (h->round >= AINFTP_MAX_ROUND)
		DROP(AINFTP_CNT_MAL_ROUND);
	__s32 ahead = (__s32)(h->round - cfg->round_base);
	/* A speculative contribution may come a round earlier: its sender
	 * finished round base + 1, so every member (we too) finished round
	 * base, whose bank it takes (it cannot complete there before our plan
	 * confirms it). Anything else is in [base, base + 1]. */
	int spec_ahead = ahead == 2 && h->type == AINFTP_PKT_CONTRIB && (h->flags & AINFTP_F_SPEC);
	if (ahead < 0 || (ahead > 1 && !spec_ahead))
		return window_drop(cnt, h->type, ahead < 0 ? AINFTP_CNT_STALE_ROUND : AINFTP_CNT_FUTURE_ROUND);

	__u32 idx = (h->round & 1) * cfg->chunks + h->chunk;
	if (h->type == AINFTP_PKT_CONTRIB)
		return on_contrib(cnt, cfg, h, ctx, (__u32)((void *)(h + 1) - data), idx, ver);
	if (h->type == AINFTP_PKT_CLOSE)
		return ainftp_close(ctx, (__u32)((void *)(h + 1) - data), h->round, count, h->flags | (__u32)(__u16)h->exp << 16);
	return on_result(ctx, cnt, cfg, h, (__u32)((void *)(h + 1) - data), idx);

pass:
	cnt->c[AINFTP_CNT_PASSED]++;
	return XDP_PASS;
}
