// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * collective.c — the per-round loops of the collective that touch every
 * element: the owner's finishing of completed slots (requantize, publish into
 * its own results-map entry, build the RESULT packets) and the gathering of a
 * round's results into the caller's f32 buffer. One call per batch of events
 * or per round through bun:ffi (native/collective.ts); never per element.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <stdint.h>
#include <string.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include "../bpf/include/ainftp_abi.h"
#include "quant.h"
#include "bits.h"

/* The lane width a data packet's version names (ainftp_abi.h). */
static inline uint32_t bits_of_version(uint32_t v)
{
	return v == AINFTP_VERSION_INT8 ? 8 : v == AINFTP_VERSION_INT4 ? 4 : 16;
}

/* The owner's rounding stream for chunk c of a round at 8 or 4 bits: named
 * by what every member knows (job, round, chunk), so a run replays. */
static inline uint32_t owner_key(uint32_t job, uint32_t round, uint32_t c)
{
	uint32_t x = (job ^ 0x0b175eedu) * 0x9e3779b9u ^ round;
	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	x *= 0x846ca68bu;
	x ^= x >> 16;
	x ^= c * 0x85ebca6bu;
	x ^= x >> 13;
	x *= 0xc2b2ae35u;
	return x ^ (x >> 16);
}

#define RESULT_STRIDE ((sizeof(struct ainftp_result) + 7) & ~7ul)
#define ACC_STRIDE ((sizeof(struct ainftp_acc) + 7) & ~7ul)
#define RESULT_BUSY 0xffffffffu /* results tag while a writer copies the data (bpf/ainftp.bpf.c) */

/*
 * For each completed slot chunks[i] (owned by this host): the true sums are
 * the XDP program's biased lanes of others[c] contributions (the slot's
 * count: the sentry may have dropped some, and with none the acc entry holds
 * an older round) plus this host's
 * own quantized chunk; requantize them into the results-map entry of the
 * chunk (tag published last) and into a RESULT packet at pkts + i*pkt_stride.
 * counts[c] and exps[c] are per chunk of the round; own_q holds this host's
 * int16 values of chunk c at own_q + (c / own_div) * own_stride (the owner of
 * c is c % own_div, so c / own_div numbers its own chunks 0, 1, 2, ...).
 * Returns packets written, or -1 if a result would not fit.
 */
int32_t ainftp_finish_batch(const uint8_t *acc_base, uint8_t *res_base, uint32_t bank_base,
			    const uint32_t *chunks, uint32_t n, const uint16_t *others, const int16_t *own_q,
			    uint32_t own_div, uint32_t own_stride, const uint16_t *counts, const int8_t *exps,
			    const struct ainftp_wire_hdr *tmpl, uint8_t *pkts, uint32_t pkt_stride)
{
	const uint32_t bits = bits_of_version(tmpl->version);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t c = chunks[i], idx = bank_base + c, count = counts[c];
		if (count == 0 || count > (bits == 16 ? AINFTP_MAX_ELEMS : 2 * AINFTP_MAX_ELEMS) ||
		    pkt_stride < sizeof(*tmpl) + ainftp_bits_payload(bits, count))
			return -1;
		const uint32_t *raw = (const uint32_t *)(acc_base + (size_t)idx * ACC_STRIDE);
		struct ainftp_result *res = (struct ainftp_result *)(res_base + (size_t)idx * RESULT_STRIDE);
		if (own_div == 0)
			return -1;
		uint32_t k_others = others[c];
		struct ainftp_wire_hdr *h = (struct ainftp_wire_hdr *)(pkts + (size_t)i * pkt_stride);
		/* Claim the entry as the XDP program does (tag RESULT_BUSY): before
		 * this host knew the plan its program may have admitted another
		 * rank's RESULT for this chunk and still be copying it; wait for it,
		 * then hold the entry so none lands over ours until our tag is out. */
		uint32_t old = __atomic_load_n(&res->tag, __ATOMIC_ACQUIRE);
		while (old == RESULT_BUSY ||
		       !__atomic_compare_exchange_n(&res->tag, &old, RESULT_BUSY, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			old = __atomic_load_n(&res->tag, __ATOMIC_ACQUIRE);
		int32_t k = bits == 16
				    ? ainftp_finish_chunk_to(k_others ? raw : NULL, count, k_others,
							     own_q + (size_t)(c / own_div) * own_stride, res->v, (int16_t *)(h + 1))
				    : ainftp_bits_finish(k_others ? (const uint16_t *)raw : NULL, count, k_others,
							 (const uint8_t *)(own_q + (size_t)(c / own_div) * own_stride), bits,
							 owner_key(tmpl->job_id, tmpl->round, c), (uint8_t *)res->v,
							 (uint8_t *)(h + 1));
		if (k < 0) {
			__atomic_store_n(&res->tag, old, __ATOMIC_RELEASE);
			return -1;
		}
		res->count = count;
		res->contributors = k_others + 1;
		res->exp = exps[c] + k;
		res->flags = 0;
		res->writes++;
		res->rank = tmpl->rank;
		__atomic_store_n(&res->tag, tmpl->round + 1, __ATOMIC_RELEASE);

		*h = *tmpl;
		h->type = AINFTP_PKT_RESULT;
		h->chunk = c;
		h->count = count;
		h->exp = res->exp;
		h->contributors = k_others + 1;
	}
	return (int32_t)n;
}

/*
 * Copies stored results (from the results map) into RESULT packets, for
 * resends after a loss. Chunk indices come from the network (RESULT_REQ):
 * each must be below nchunks, the chunks of a bank. Only an entry this host
 * wrote itself (rank == tmpl->rank, by ainftp_finish_batch) is sent: before
 * this host knew a round's plan its program may have stored another rank's
 * RESULT for a chunk this host owns, and resending that under our own rank
 * would make every receiver take it as the owner's. Returns packets written,
 * or -1 if an index is out of range or an entry does not hold our result of
 * round `round`.
 */
int32_t ainftp_result_packets(const uint8_t *res_base, uint32_t bank_base, uint32_t nchunks, const uint32_t *chunks,
			      uint32_t n, const struct ainftp_wire_hdr *tmpl, uint8_t *pkts,
			      uint32_t pkt_stride)
{
	const uint32_t bits = bits_of_version(tmpl->version);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t c = chunks[i];
		if (c >= nchunks)
			return -1;
		const struct ainftp_result *res =
			(const struct ainftp_result *)(res_base + (size_t)(bank_base + c) * RESULT_STRIDE);
		uint32_t bytes = ainftp_bits_payload(bits, res->count);
		if (__atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tmpl->round + 1 || res->rank != tmpl->rank ||
		    bytes > sizeof(res->v) || pkt_stride < sizeof(*tmpl) + bytes)
			return -1;
		struct ainftp_wire_hdr *h = (struct ainftp_wire_hdr *)(pkts + (size_t)i * pkt_stride);
		*h = *tmpl;
		h->type = AINFTP_PKT_RESULT;
		h->flags = AINFTP_F_RETRANSMIT;
		h->chunk = c;
		h->count = res->count;
		h->exp = res->exp;
		h->contributors = res->contributors;
		memcpy(h + 1, res->v, bytes);
	}
	return (int32_t)n;
}

/* Whether a results entry holds what the chunk's owner sends: its rank, and a
 * contributor count of 1..k. */
static inline int owned_by(const struct ainftp_result *res, uint32_t owner, uint32_t k)
{
	return res->rank == owner && res->contributors >= 1 && res->contributors <= k;
}

/*
 * Results the program stored before it knew the round's plan may come from a
 * rank that does not own their chunk (a Byzantine member), or claim more
 * contributors than the plan's k active members (a forgery under the owner's
 * rank, which the program refuses once it knows the plan: a member that
 * turns out to own the chunk cannot have sent it, nor could any honest one):
 * for each chunk of [0, nchunks) not owned by `self`, such an entry of round
 * tag-1 is emptied (tag 0; the XDP program then stores the owner's result,
 * which userspace asks for again). Returns how many; *too_many (when not
 * NULL) gets how many of them held a result under the owner's rank whose
 * contributor count the plan refuses (the rest are another rank's), so
 * userspace counts each under its reason, once: an entry emptied here is
 * empty, and one the program replaced with the owner's is kept. The first
 * `cap` chunks emptied are listed in emptied[] (when not NULL): the owner's
 * own result may have been refused while the forgery stood.
 */
uint32_t ainftp_results_drop_foreign(uint8_t *res_base, uint32_t bank_base, uint32_t nchunks, uint32_t tag,
				     const uint8_t *owners, uint32_t k, uint32_t self, uint32_t *too_many,
				     uint32_t *emptied, uint32_t cap)
{
	uint32_t dropped = 0, many = 0;
	if (too_many)
		*too_many = 0;
	if (k == 0 || k > AINFTP_MAX_WORKERS)
		return 0;
	for (uint32_t c = 0; c < nchunks; c++) {
		uint32_t owner = owners[c % k];
		if (owner == self)
			continue;
		struct ainftp_result *res = (struct ainftp_result *)(res_base + (size_t)(bank_base + c) * RESULT_STRIDE);
		uint32_t want = tag;
		if (__atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tag || owned_by(res, owner, k))
			continue;
		/* Claimed as the program claims an entry (RESULT_BUSY), then looked
		 * at again: the program may have replaced it with the owner's since
		 * (the same tag again), which stays, uncounted. Failing the claim,
		 * the program is writing it: leave it. */
		if (!__atomic_compare_exchange_n(&res->tag, &want, RESULT_BUSY, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
			continue;
		if (owned_by(res, owner, k)) {
			__atomic_store_n(&res->tag, tag, __ATOMIC_RELEASE);
			continue;
		}
		if (res->rank == owner)
			many++;
		if (emptied && dropped < cap)
			emptied[dropped] = c;
		dropped++;
		__atomic_store_n(&res->tag, 0, __ATOMIC_RELEASE);
	}
	if (too_many)
		*too_many = many;
	return dropped;
}

/*
 * Writes into missing[] the chunks in [0, nchunks) whose results-map entry
 * does not hold round tag-1 yet; returns how many (at most cap are listed).
 */
uint32_t ainftp_results_missing(const uint8_t *res_base, uint32_t bank_base, uint32_t nchunks,
				uint32_t tag, uint32_t *missing, uint32_t cap)
{
	uint32_t m = 0;
	for (uint32_t c = 0; c < nchunks; c++) {
		const struct ainftp_result *res =
			(const struct ainftp_result *)(res_base + (size_t)(bank_base + c) * RESULT_STRIDE);
		if (__atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) == tag)
			continue;
		if (m < cap)
			missing[m] = c;
		m++;
	}
	return m;
}

/*
 * Dequantizes the results of the listed chunks (chunks[0..n)) from the
 * results map into out, as ainftp_gather_results does for a whole round.
 * Returns the number of entries that did not hold round tag-1.
 */
/* One stored result into out at its width (16: int16 values). */
static inline int32_t dequant_result(const struct ainftp_result *res, uint32_t count, uint32_t bits, float *out)
{
	return bits == 16 ? ainftp_dequantize(res->v, count, res->exp, out)
			  : ainftp_bits_dequantize((const uint8_t *)res->v, count, res->exp, bits, out);
}

/* The 8- and 4-bit gather's scratch: one chunk, dequantized and taken
 * through the inverse transform in cache before it goes out with streaming
 * stores. */
static __thread float gather_scratch[2 * AINFTP_MAX_ELEMS] __attribute__((aligned(64)));

/* One 8- or 4-bit result of chunk c (its entry res, want values) into dst:
 * dequantized and, rht_seed if not 0, through the inverse transform. With
 * stream, both happen in gather_scratch and the chunk then goes to dst with
 * streaming stores, so dst's lines are never read (the caller fences), and
 * dst is left as it was when the entry changes while being read. Returns 0,
 * or -1 when the entry does not hold tag after the read. */
static int32_t gather_bits_chunk(const struct ainftp_result *res, uint32_t want, uint32_t bits, uint32_t tag, uint32_t c,
				 uint32_t rht_seed, float *dst, uint32_t stream)
{
	float *w = stream && want <= 2 * AINFTP_MAX_ELEMS ? gather_scratch : dst;
	if (dequant_result(res, want, bits, w) < 0 || __atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tag)
		return -1;
	if (rht_seed && want)
		ainftp_rht_chunk(w, want, c, rht_seed, 1);
	if (w != dst)
		ainftp_copy_stream(dst, w, want);
	return 0;
}

/* ainftp_gather_list at a job's width (16, 8 or 4). */
uint32_t ainftp_gather_list_bits(const uint8_t *res_base, uint32_t bank_base, const uint32_t *chunks, uint32_t n,
				 uint32_t chunk_elems, uint32_t tag, float *out, uint32_t n_out, uint32_t bits)
{
	uint32_t bad = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t c = chunks[i];
		const struct ainftp_result *res =
			(const struct ainftp_result *)(res_base + (size_t)(bank_base + c) * RESULT_STRIDE);
		uint64_t start = (uint64_t)c * chunk_elems;
		uint32_t want = start >= n_out ? 0 : (uint32_t)(n_out - start < chunk_elems ? n_out - start : chunk_elems);
		if (__atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tag || res->count != want ||
		    dequant_result(res, want, bits, out + start) < 0)
			bad++;
	}
	return bad;
}

/* ainftp_gather_results at a job's width (16, 8 or 4); rht_seed, if not 0:
 * each chunk then through the inverse RHT of that seed (ainftp_rht_chunk)
 * while it is in cache, instead of a second pass over out. done, if not
 * NULL: the chunks with done[c] set are skipped (the early gather took
 * them; the end of a round). stream: out written with streaming stores
 * (gather_bits_chunk), fenced before the return. Returns the number of
 * entries gathered that did not hold round tag-1. */
uint32_t ainftp_gather_rest_bits(const uint8_t *res_base, uint32_t bank_base, uint32_t nchunks, uint32_t chunk_elems,
				 uint32_t tag, float *out, uint32_t n_out, uint32_t bits, uint32_t rht_seed,
				 const uint8_t *done, uint32_t stream)
{
	uint32_t bad = 0;
	for (uint32_t c = 0; c < nchunks; c++) {
		if (done && done[c])
			continue;
		const struct ainftp_result *res =
			(const struct ainftp_result *)(res_base + (size_t)(bank_base + c) * RESULT_STRIDE);
		uint64_t start = (uint64_t)c * chunk_elems;
		uint32_t want = start >= n_out ? 0 : (uint32_t)(n_out - start < chunk_elems ? n_out - start : chunk_elems);
		if (__atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tag || res->count != want ||
		    gather_bits_chunk(res, want, bits, tag, c, rht_seed, out + start, stream) < 0)
			bad++;
	}
	if (stream)
		ainftp_stream_fence();
	return bad;
}

/* Every chunk of the round: ainftp_gather_rest_bits with none done. */
uint32_t ainftp_gather_results_bits(const uint8_t *res_base, uint32_t bank_base, uint32_t nchunks,
				    uint32_t chunk_elems, uint32_t tag, float *out, uint32_t n_out, uint32_t bits,
				    uint32_t rht_seed, uint32_t stream)
{
	return ainftp_gather_rest_bits(res_base, bank_base, nchunks, chunk_elems, tag, out, n_out, bits, rht_seed, NULL,
				       stream);
}

/*
 * The gather, early (8 and 4 bits): while a round still waits on others, the
 * listed chunks whose results-map entry already holds round tag-1 from the
 * chunk's owner (owners[c % k]) are dequantized into out and, rht_seed if not
 * 0, taken through the inverse RHT; done[c] = 1 for each. An entry that does
 * not (yet), or changed while being read, is left for ainftp_gather_rest_bits.
 * stream: as ainftp_gather_rest_bits. Returns how many chunks were gathered.
 */
uint32_t ainftp_gather_early_bits(const uint8_t *res_base, uint32_t bank_base, const uint32_t *chunks, uint32_t n,
				  uint32_t nchunks, uint32_t chunk_elems, uint32_t tag, float *out, uint32_t n_out,
				  uint32_t bits, uint32_t rht_seed, const uint8_t *owners, uint32_t k, uint8_t *done,
				  uint32_t stream)
{
	uint32_t got = 0;
	if (k == 0)
		return 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t c = chunks[i];
		if (c >= nchunks || done[c])
			continue;
		const struct ainftp_result *res =
			(const struct ainftp_result *)(res_base + (size_t)(bank_base + c) * RESULT_STRIDE);
		uint64_t start = (uint64_t)c * chunk_elems;
		uint32_t want = start >= n_out ? 0 : (uint32_t)(n_out - start < chunk_elems ? n_out - start : chunk_elems);
		if (want == 0 || __atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tag || res->rank != owners[c % k] ||
		    res->count != want || gather_bits_chunk(res, want, bits, tag, c, rht_seed, out + start, stream) < 0)
			continue;
		done[c] = 1;
		got++;
	}
	if (stream)
		ainftp_stream_fence();
	return got;
}

/* The inverse RHT (inverse 1) or the RHT of the listed chunks of x (n values,
 * chunk c at c*chunk_elems) whose done[c] is 0; sets done[c] = 1. A residual
 * goes back to the gradient's domain chunk by chunk, as soon as its chunk is
 * packed. Returns how many chunks it transformed. */
uint32_t ainftp_rht_list(float *x, uint32_t n, uint32_t chunk_elems, const uint32_t *chunks, uint32_t nlist,
			 uint32_t seed, uint32_t inverse, uint8_t *done)
{
	uint32_t t = 0;
	if (chunk_elems == 0)
		return 0;
	for (uint32_t i = 0; i < nlist; i++) {
		uint32_t c = chunks[i];
		uint64_t start = (uint64_t)c * chunk_elems;
		if (start >= n || done[c])
			continue;
		uint32_t count = (uint32_t)(n - start < chunk_elems ? n - start : chunk_elems);
		ainftp_rht_chunk(x + start, count, c, seed, inverse);
		done[c] = 1;
		t++;
	}
	return t;
}

uint32_t ainftp_gather_list(const uint8_t *res_base, uint32_t bank_base, const uint32_t *chunks, uint32_t n,
			    uint32_t chunk_elems, uint32_t tag, float *out, uint32_t n_out)
{
	uint32_t bad = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t c = chunks[i];
		const struct ainftp_result *res =
			(const struct ainftp_result *)(res_base + (size_t)(bank_base + c) * RESULT_STRIDE);
		uint64_t start = (uint64_t)c * chunk_elems;
		uint32_t want = start >= n_out ? 0 : (uint32_t)(n_out - start < chunk_elems ? n_out - start : chunk_elems);
		if (__atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tag || res->count != want ||
		    ainftp_dequantize(res->v, want, res->exp, out + start) < 0)
			bad++;
	}
	return bad;
}

/*
 * Dequantizes the results of chunks [0, nchunks) of a round into out (chunk c
 * at out + c*chunk_elems, n_out floats in all). Each entry's tag is checked
 * before and after the copy. Returns the number of entries that did not hold
 * round tag-1 (nothing is written for those). stream: out is written with
 * streaming stores (ainftp_dequantize_stream), for a round whose array is
 * larger than the caches, and fenced before the return.
 */
uint32_t ainftp_gather_results(const uint8_t *res_base, uint32_t bank_base, uint32_t nchunks,
			       uint32_t chunk_elems, uint32_t tag, float *out, uint32_t n_out, uint32_t stream)
{
	uint32_t bad = 0;
	int32_t (*deq)(const int16_t *, uint32_t, int32_t, float *) = stream ? ainftp_dequantize_stream : ainftp_dequantize;
	for (uint32_t c = 0; c < nchunks; c++) {
		const struct ainftp_result *res =
			(const struct ainftp_result *)(res_base + (size_t)(bank_base + c) * RESULT_STRIDE);
		uint64_t start = (uint64_t)c * chunk_elems;
		uint32_t want = start >= n_out ? 0 : (uint32_t)(n_out - start < chunk_elems ? n_out - start : chunk_elems);
		if (__atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tag || res->count != want ||
		    deq(res->v, want, res->exp, out + start) < 0 ||
		    __atomic_load_n(&res->tag, __ATOMIC_ACQUIRE) != tag)
			bad++;
	}
	if (stream)
		ainftp_stream_fence();
	return bad;
}

/*
 * Waits until one of three fds is readable (the event ring's epoll fd, the
 * control socket, the AF_XDP socket; -1 for none), at most timeout_ms.
 * Returns a bitmask (1, 2, 4), 0 on timeout, or -errno.
 */
int32_t ainftp_wait3(int fd_a, int fd_b, int fd_c, int timeout_ms)
{
	struct pollfd p[3] = { { .fd = fd_a, .events = POLLIN }, { .fd = fd_b, .events = POLLIN },
			       { .fd = fd_c, .events = POLLIN } };
	int r = poll(p, 3, timeout_ms);
	if (r < 0)
		return errno == EINTR ? 0 : -errno;
	return ((p[0].revents & POLLIN) ? 1 : 0) | ((p[1].revents & POLLIN) ? 2 : 0) | ((p[2].revents & POLLIN) ? 4 : 0);
}

/*
 * ainftp_wait3, but first looks without sleeping for up to spin_us,
 * yielding the CPU between looks (sched_yield: another runnable process
 * goes first). A round's waits are short and many (plan, results): sleeping
 * in poll put a wake-up, and on a busy host a scheduling delay, on each.
 * Open MPI's progress loop does the same (mpi_yield_when_idle). 1 MiB
 * rounds, 4 hosts on 2 cores, profile: 2.78 / 2.75 → 2.17 / 2.09 ms.
 */
int32_t ainftp_wait3_spin(int fd_a, int fd_b, int fd_c, int timeout_ms, int spin_us)
{
	long spun = 0;
	if (spin_us > 0 && timeout_ms > 0) {
		struct pollfd p[3] = { { .fd = fd_a, .events = POLLIN }, { .fd = fd_b, .events = POLLIN },
				       { .fd = fd_c, .events = POLLIN } };
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (;;) {
			int r = poll(p, 3, 0);
			if (r < 0)
				return errno == EINTR ? 0 : -errno;
			if (r > 0)
				return ((p[0].revents & POLLIN) ? 1 : 0) | ((p[1].revents & POLLIN) ? 2 : 0) |
				       ((p[2].revents & POLLIN) ? 4 : 0);
			sched_yield();
			clock_gettime(CLOCK_MONOTONIC, &t1);
			spun = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
			if (spun >= (long)timeout_ms * 1000)
				return 0;
			if (spun >= spin_us)
				break;
		}
	}
	/* the rest of the timeout asleep */
	return ainftp_wait3(fd_a, fd_b, fd_c, timeout_ms - (int)(spun / 1000));
}

/* Sets the flags field of n packets laid out every `stride` bytes. */
void ainftp_set_flags(uint8_t *pkts, uint32_t n, uint32_t stride, uint16_t flags)
{
	for (uint32_t i = 0; i < n; i++)
		((struct ainftp_wire_hdr *)(pkts + (size_t)i * stride))->flags = flags;
}

/* Element-wise max of `ranks` int8 exponent arrays of n entries laid out
 * one after another: the scale every rank agrees on. */
void ainftp_max_exps(const int8_t *all, uint32_t ranks, uint32_t n, int8_t *out)
{
	memcpy(out, all, n);
	for (uint32_t r = 1; r < ranks; r++)
		for (uint32_t c = 0; c < n; c++)
			if (all[(size_t)r * n + c] > out[c])
				out[c] = all[(size_t)r * n + c];
}

/* Like ainftp_max_exps, but a rank whose exponent exceeds the chunk's median
 * exponent (lower middle, over non-empty chunks; three at least) by more than
 * `above` is left out of the maximum and
 * counted: with the sentry on, a poisoner cannot raise everyone's scale (and
 * so zero their precision) by announcing a huge exponent; its own values then
 * saturate at the shared scale, and the gate judges them. Returns how many
 * (rank, chunk) exponents were left out. */
uint32_t ainftp_robust_max_exps(const int8_t *all, uint32_t ranks, uint32_t n, int8_t *out, uint32_t above)
{
	uint32_t left_out = 0;
	int8_t col[64];
	if (ranks == 0 || ranks > 64)
		return 0;
	for (uint32_t c = 0; c < n; c++) {
		/* the median of the non-empty chunks' exponents (an all-zero chunk
		 * has AINFTP_EXP_MIN): with fewer than three, no majority to trust */
		uint32_t k = 0;
		for (uint32_t r = 0; r < ranks; r++)
			if (all[(size_t)r * n + c] > AINFTP_EXP_MIN)
				col[k++] = all[(size_t)r * n + c];
		/* insertion sort: ranks <= 64 */
		for (uint32_t i = 1; i < k; i++)
			for (uint32_t j = i; j > 0 && col[j - 1] > col[j]; j--) {
				int8_t t = col[j];
				col[j] = col[j - 1];
				col[j - 1] = t;
			}
		int32_t limit = k < 3 ? INT32_MAX : (int32_t)col[(k - 1) / 2] + (int32_t)above;
		int8_t m = -128;
		for (uint32_t r = 0; r < ranks; r++) {
			int8_t e = all[(size_t)r * n + c];
			if (e > limit)
				left_out++;
			else if (e > m)
				m = e;
		}
		out[c] = m;
	}
	return left_out;
}

/* Robust finishing of one owned chunk (--aggregate trimmed-mean|median):
 * coordinate-wise over the owner's own f32 values and k contributions (q,
 * k rows of `count` int16, each at its exponent), out[j] = n * (the median,
 * or the mean of what is left after trimming `trim` values from each side),
 * n = k + 1. Sorting n <= 64 values per coordinate by insertion. Returns 0,
 * or -1 for bad arguments. mode: 1 trimmed mean, 2 median. */
int32_t ainftp_robust_chunk(uint32_t mode, uint32_t trim, const float *own, uint32_t count, const int16_t *q,
			    const int16_t *exps, uint32_t k, float *out)
{
	uint32_t n = k + 1;
	if (count > AINFTP_MAX_ELEMS || n > 64 || (mode == 1 && 2 * trim >= n) || (mode != 1 && mode != 2))
		return -1;
	float scale[64];
	for (uint32_t r = 0; r < k; r++)
		scale[r] = ldexpf(1.0f, exps[r]);
	double col[64];
	for (uint32_t j = 0; j < count; j++) {
		col[0] = own[j] == own[j] ? own[j] : INFINITY;
		for (uint32_t r = 0; r < k; r++)
			col[r + 1] = (float)q[(size_t)r * count + j] * scale[r];
		for (uint32_t i = 1; i < n; i++) {
			double v = col[i];
			uint32_t t = i;
			for (; t > 0 && col[t - 1] > v; t--)
				col[t] = col[t - 1];
			col[t] = v;
		}
		double v;
		if (mode == 2) {
			v = n & 1 ? col[n / 2] : (col[n / 2 - 1] + col[n / 2]) / 2;
		} else {
			double acc = 0;
			for (uint32_t i = trim; i < n - trim; i++)
				acc += col[i];
			v = acc / (n - 2 * trim);
		}
		out[j] = (float)v * (float)n;
	}
	return 0;
}

/* ---- synthetic gradients, for `ainftp swarm --synthetic` and tests ------ */

/* splitmix64's output function: a bijection of 64 bits that mixes well. */
static inline __attribute__((always_inline)) uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The stream of (seed, rank, round): value i is a function of (key, i) alone
 * (counter-based, as splitmix64 at position i), so every rank makes any
 * value of any rank's gradient directly, and the loops have no chain from
 * one value to the next (the verification's sum over the ranks is one pass). */
static inline uint64_t synth_key(uint32_t seed, uint32_t rank, uint32_t round)
{
	return mix64(((uint64_t)seed << 40) ^ ((uint64_t)rank << 20) ^ round ^ 0x5eedull);
}

#define SYNTH_K (1.7320508f / 32768.0f) /* sqrt(3) / 2^15: sigma 2 */

/* Value i of the stream key: the sum of four 16-bit uniforms of one hash,
 * centred, times SYNTH_K: sigma 2, bounded at +-6.93 (3.46 sigma). */
static inline __attribute__((always_inline)) float synth_value(uint64_t key, uint32_t i)
{
	uint64_t z = mix64(key + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull);
	int32_t a = (int32_t)(z & 0xffff) + (int32_t)((z >> 16) & 0xffff) + (int32_t)((z >> 32) & 0xffff) +
		    (int32_t)(z >> 48) - 2 * 65535;
	return (float)a * SYNTH_K;
}

/* The loops below in a vector build where the CPU has AVX-512 (64-bit
 * multiplies in vectors: 8 values at a time) and a plain one elsewhere; the
 * same values either way (integer hashing, one rounding per product). */
#if defined(__x86_64__)
#define SYNTH_VEC __attribute__((target("avx512f,avx512dq,avx512vl")))
#define SYNTH_X86 1
#else
#define SYNTH_VEC
#endif

#define SYNTH_BUILD(name, attr)                                                                                  \
	attr static void synth_##name(uint64_t key, float scale, float *out, uint32_t n)                      \
	{                                                                                                        \
		for (uint32_t i = 0; i < n; i++)                                                                 \
			out[i] = synth_value(key, i) * scale;                                                    \
	}                                                                                                        \
	/* num and den of the relative L2 error over values [0, n) (blocks of SYNTH_BLOCK) */                  \
	attr static void synth_err_##name(const uint64_t *key, uint32_t ranks, float scale, const float *result, \
					  uint32_t n, double *num, double *den)                                  \
	{                                                                                                        \
		double sum[SYNTH_BLOCK], a = 0, b = 0;                                                           \
		for (uint32_t base = 0; base < n; base += SYNTH_BLOCK) {                                         \
			uint32_t m = n - base < SYNTH_BLOCK ? n - base : SYNTH_BLOCK;                            \
			for (uint32_t j = 0; j < m; j++)                                                         \
				sum[j] = 0;                                                                      \
			for (uint32_t r = 0; r < ranks; r++)                                                     \
				for (uint32_t j = 0; j < m; j++)                                                 \
					sum[j] += (double)(synth_value(key[r], base + j) * scale);               \
			for (uint32_t j = 0; j < m; j++) {                                                       \
				double d = (double)result[base + j] - sum[j];                                    \
				a += d * d;                                                                      \
				b += sum[j] * sum[j];                                                            \
			}                                                                                        \
		}                                                                                                \
		*num = a, *den = b;                                                                              \
	}

#define SYNTH_BLOCK 512
SYNTH_BUILD(plain, )
#ifdef SYNTH_X86
SYNTH_BUILD(vec, SYNTH_VEC)
/* The quantizer's build decides (AINFTP_QUANT_ISA, setQuantIsa): AVX-512 there
 * means the CPU has it. */
static int synth_vec_ok(void)
{
	return ainftp_quant_isa() == AINFTP_ISA_AVX512;
}
#endif

/* Deterministic pseudo-Gaussian values from (seed, rank, round), times
 * `scale` (cheap, smooth, bounded). Every rank can regenerate every other
 * rank's gradient for verification. */
void ainftp_synth(uint32_t seed, uint32_t rank, uint32_t round, float scale, float *out, uint32_t n)
{
	uint64_t key = synth_key(seed, rank, round);
#ifdef SYNTH_X86
	if (synth_vec_ok())
		return synth_vec(key, scale, out, n);
#endif
	synth_plain(key, scale, out, n);
}

#define SYNTH_RANKS_MAX 64

/* Relative L2 error of `result` against the exact (f64) sum over ranks
 * 0..ranks-1 (at most 64) of ainftp_synth(seed, rank, round, scale), block
 * by block in cache: each value's reference is made where it is compared,
 * no rank's whole gradient first (a verifying rank runs between
 * back-to-back rounds, where the others wait on it). NaN when ranks is out
 * of range (no error bound holds it: the round does not verify). */
double ainftp_synth_rel_l2(uint32_t seed, uint32_t ranks, uint32_t round, float scale, const float *result, uint32_t n)
{
	if (ranks == 0 || ranks > SYNTH_RANKS_MAX)
		return __builtin_nan("");
	uint64_t key[SYNTH_RANKS_MAX];
	for (uint32_t r = 0; r < ranks; r++)
		key[r] = synth_key(seed, r, round);
	double num, den;
#ifdef SYNTH_X86
	if (synth_vec_ok())
		synth_err_vec(key, ranks, scale, result, n, &num, &den);
	else
#endif
		synth_err_plain(key, ranks, scale, result, n, &num, &den);
	return den > 0 ? __builtin_sqrt(num / den) : __builtin_sqrt(num);
}
