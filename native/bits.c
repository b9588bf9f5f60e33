// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * bits.c — gradients at 8 and 4 bits (issue 14). The rules of quant.c hold
 * here too: scaling by exact powers of two, stochastic rounding from a
 * counter-based hash of (seed, chunk, element) so a run replays, the owner's
 * step in integers only, and every float step either exact or one IEEE
 * operation in a fixed order, so each build gives the same bits.
 *
 *  - ainftp_bits_chunk_exps: per chunk the smallest e with max|x| <= Q * 2^e
 *    (Q = 127 or 7);
 *  - ainftp_bits_pack: |q| = floor(|x| / 2^e + u), u uniform on 16 bits,
 *    E[q * 2^e] = x to under 2^-16 of a step (stochastic_one), packed as
 *    ainftp_abi.h says, with this rank's error x - q * 2^e
 *    (ainftp_bits_pack_ef: that error back through the inverse RHT);
 *  - ainftp_bits_finish: the owner's sums s (the program's 16-bit lanes and
 *    its own values), then the smallest k with max|s| <= Q * 2^k and
 *    q = floor(s / 2^k) + (h < s mod 2^k), h uniform on [0, 2^k): exactly
 *    unbiased, from a seed every member can name (round, job, chunk);
 *  - ainftp_rht: the randomized Hadamard transform, in power-of-two blocks
 *    of at most 2^AINFTP_RHT_LOG_MAX within each chunk (random signs, then
 *    the unnormalized Walsh-Hadamard butterflies, then 2^-floor(L/2); the
 *    inverse in the other order with 2^-ceil(L/2), so H D H D = I exactly in
 *    the scaling and to one rounding per butterfly in the values), plus
 *    ainftp_rht_from_exps (the forward transform and the exponents in one
 *    pass) and ainftp_rht_chunk (one chunk, for the gather). A generic
 *    build, and a register-blocked AVX2 one (also the avx512 build's).
 *
 * Builds: generic, AVX2 and AVX-512, chosen with the quantizer's build
 * (AINFTP_QUANT_ISA, ainftp_quant_isa); all give the same bits.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include "../bpf/include/ainftp_abi.h"
#include "bits.h"
#include "quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BITS_X86 1
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define GOLDEN 0x9e3779b9u
#define MAGIC_RNE 12582912.0f /* 1.5 * 2^23 */
#define MAGIC_BITS 0x4b400000
#define BITS_INF 0x7f800000
#define NARROW_MAX (2 * AINFTP_MAX_ELEMS) /* values of one packet at 8 or 4 bits */

static inline uint32_t mix32(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	x *= 0x846ca68bu;
	x ^= x >> 16;
	return x;
}

/* The stream of chunk `stream` under `seed`: as quant.c's stream_key. */
static inline uint32_t stream_key(uint32_t seed, uint32_t stream)
{
	return mix32(seed ^ mix32(stream + GOLDEN));
}

static float pow2f(int32_t e)
{
	uint32_t bits = e >= -126 ? (uint32_t)(e + 127) << 23 : 1u << (e + 149);
	float f;
	memcpy(&f, &bits, sizeof(f));
	return f;
}

static inline int32_t bits_of(float v)
{
	int32_t b;
	memcpy(&b, &v, sizeof(b));
	return b;
}

static inline float float_of(int32_t b)
{
	float v;
	memcpy(&v, &b, sizeof(v));
	return v;
}

static inline int32_t qmax_of(uint32_t bits)
{
	return bits == 8 ? AINFTP_QMAX8 : AINFTP_QMAX4;
}

uint32_t ainftp_bits_payload(uint32_t bits, uint32_t count)
{
	return ainftp_payload_bytes(bits == 8 ? AINFTP_VERSION_INT8 : bits == 4 ? AINFTP_VERSION_INT4 : AINFTP_VERSION,
				    count);
}

/* ---- exponents --------------------------------------------------------------- */

/* The exponent of a chunk whose largest finite magnitude has bits m, for
 * Q = 2^p - 1 = (2 - 2^(1-p)) * 2^(p-1): e = be - 127 - (p - 1), one more
 * when the mantissa exceeds (1 - 2^(1-p)) * 2^23 (quant.c's exp_of_max is
 * p = 15). */
static inline int8_t exp_of_max_p(int32_t m, int32_t p)
{
	int32_t e = (m >> 23) - 127 - (p - 1) + ((m & 0x7fffff) > 0x800000 - (1 << (24 - p)));
	e = e < AINFTP_EXP_MIN ? AINFTP_EXP_MIN : e;
	e = e > AINFTP_EXP_MAX ? AINFTP_EXP_MAX : e;
	return (int8_t)e;
}

/* ---- the kernels: written once, built for the baseline ISA, AVX2 and AVX-512 ---- */

/* Each body below is inlined into a generic, an AVX2 and an AVX-512 build
 * (AVX2 vectorizes the 32-bit multiplies of the hash, which SSE2 cannot;
 * AVX-512's 32 registers and mask compares halve the packing's time, its
 * spills gone); the same steps in the same order, each exact or one IEEE
 * operation, so all give the same bits (test/bits.test.ts). */
#define HOT static inline __attribute__((always_inline))

/* The largest finite |value| (as bits) and the non-finite count of n values. */
HOT void exps_scan(const float *x, uint32_t n, int32_t *m, uint32_t *bad)
{
	for (uint32_t j = 0; j < n; j++) {
		int32_t a = bits_of(x[j]) & 0x7fffffff;
		int32_t nf = a >= BITS_INF;
		*bad += (uint32_t)nf;
		a = nf ? 0 : a;
		*m = a > *m ? a : *m;
	}
}

/* exps[c] for every chunk (see ainftp_bits_chunk_exps). */
HOT uint32_t exps_body(const float *x, uint32_t n, uint32_t chunk_elems, int8_t *exps, int32_t p)
{
	uint32_t nonfinite = 0, total = n / chunk_elems + (n % chunk_elems != 0);
	for (uint32_t c = 0; c < total; c++) {
		uint32_t start = c * chunk_elems, end = n - start < chunk_elems ? n : start + chunk_elems;
		int32_t m = 0;
		uint32_t bad = 0;
		exps_scan(x + start, end - start, &m, &bad);
		nonfinite += bad;
		exps[c] = exp_of_max_p(m, p);
	}
	return nonfinite;
}

/* One value of stochastic_narrow: y = x * scale clamped to +-Q (clipped
 * values and NaN, stored as 0, counted in *bad), then its magnitude a
 * rounded up with probability frac(a) from 16 random bits h16:
 * m = floor((floor(a * 2^16) + h16) / 2^16), q = +-m. a * 2^16 is exact
 * (a power of two, a <= 127), its truncation to an integer F < 2^23 is
 * exact in every build, and the rest is integer arithmetic, so no floor or
 * fraction is taken in float. E[m] = F / 2^16: a itself, less a bias toward
 * zero under 2^-16 of a step (the fraction's bits beyond the 16th; it was
 * 2^-24 with 24 bits a value, and stays far below the rounding's own noise,
 * whose standard deviation is up to half a step). m <= ceil(a) <= Q, as
 * F + h16 < (a + 1) * 2^16 (and < 2^31). */
HOT int32_t stochastic_one(float y, int32_t bq, uint32_t h16, uint32_t *bad)
{
	int32_t b = bits_of(y);
	int32_t a = b & 0x7fffffff;
	*bad += a > bq;
	a = a > BITS_INF ? 0 : a;
	a = a > bq ? bq : a;
	int32_t m = ((int32_t)(float_of(a) * 65536.0f) + (int32_t)h16) >> 16;
	return b < 0 ? -m : m;
}

/* q[j] = x[j] * scale stochastically rounded (stochastic_one), within +-Q:
 * quant.c's stochastic_body at a narrower clamp. resid, if not NULL, gets
 * x[j] - q[j] * p in the same pass (p = 1 / scale).
 *
 * One hash gives two values 16 bits each (the hash was about a quarter of
 * this loop's time at one per value), in blocks of 32 values that
 * vectorize: lane i (0..15) of block b is mix32(key + (16b + i) * GOLDEN),
 * value 32b + i takes its low half and 32b + 16 + i its high half. The
 * tail (count not a multiple of 32) draws each value by the same rule, one
 * at a time, so every build gives the same bits. In the block: the values
 * go through t (int32) so gcc vectorizes the 16 lanes with whole vectors
 * (an int8 store in a 16-iteration loop makes it pick 16-byte vectors), and
 * the clipped count per lane, summed once at the end (not a horizontal sum
 * every block). */
HOT uint32_t stochastic_narrow(const float *restrict x, uint32_t n, float scale, int32_t bq, int8_t *restrict q, uint32_t key,
			       float *resid, float p)
{
	uint32_t bad = 0, j = 0, lanes[16] = { 0 };
	for (; j + 32 <= n; j += 32) {
		const uint32_t h0 = key + (j / 2) * GOLDEN;
		const float *xb = x + j; /* pointers, not x[j + i]: a 32-bit index could wrap, which stops the vectorizer */
		int8_t *qb = q + j;
		float *rb = resid ? resid + j : NULL;
		int32_t t[32];
		for (uint32_t i = 0; i < 16; i++) {
			uint32_t h = mix32(h0 + i * GOLDEN);
			int32_t lo = stochastic_one(xb[i] * scale, bq, h & 0xffff, &lanes[i]);
			int32_t hi = stochastic_one(xb[16 + i] * scale, bq, h >> 16, &lanes[i]);
			t[i] = lo;
			t[16 + i] = hi;
			if (rb) {
				rb[i] = xb[i] - (float)lo * p;
				rb[16 + i] = xb[16 + i] - (float)hi * p;
			}
		}
		for (uint32_t i = 0; i < 32; i++)
			qb[i] = (int8_t)t[i];
	}
	for (uint32_t i = 0; i < 16; i++)
		bad += lanes[i];
	for (; j < n; j++) {
		uint32_t h = mix32(key + ((j >> 5) * 16 + (j & 15)) * GOLDEN);
		int32_t qj = stochastic_one(x[j] * scale, bq, j & 16 ? h >> 16 : h & 0xffff, &bad);
		q[j] = (int8_t)qj;
		if (resid)
			resid[j] = x[j] - (float)qj * p;
	}
	return bad;
}

/* Round to nearest, ties to even (seed 0: tests and reference only). */
HOT uint32_t nearest_narrow(const float *restrict x, uint32_t n, float scale, int32_t bq, int8_t *restrict q, float *resid,
			    float p)
{
	uint32_t bad = 0;
	for (uint32_t j = 0; j < n; j++) {
		int32_t b = bits_of(x[j] * scale);
		int32_t a = b & 0x7fffffff;
		bad += a > bq;
		a = a > BITS_INF ? 0 : a;
		a = a > bq ? bq : a;
		int32_t qj = bits_of(float_of(a | (b & (int32_t)0x80000000)) + MAGIC_RNE) - MAGIC_BITS;
		q[j] = (int8_t)qj;
		if (resid)
			resid[j] = x[j] - (float)qj * p;
	}
	return bad;
}

/* Packs count values (q holds zeros up to a whole group of 16) as ainftp_abi.h says. */
HOT void pack_values(const int8_t *restrict q, uint32_t count, uint32_t bits, uint8_t *restrict p)
{
	if (bits == 8) {
		memcpy(p, q, count);
		return;
	}
	uint32_t groups = (count + 15) >> 4;
	for (uint32_t g = 0; g < groups; g++)
		for (uint32_t j = 0; j < 8; j++)
			p[8 * g + j] = (uint8_t)((q[16 * g + j] & 15) | (q[16 * g + 8 + j] << 4));
}

/* The values back, into q (room for count rounded up to 16). */
HOT void unpack_values(const uint8_t *restrict p, uint32_t count, uint32_t bits, int8_t *restrict q)
{
	if (bits == 8) {
		memcpy(q, p, count);
		return;
	}
	uint32_t groups = (count + 15) >> 4;
	for (uint32_t g = 0; g < groups; g++)
		for (uint32_t j = 0; j < 8; j++) {
			int8_t b = (int8_t)p[8 * g + j];
			q[16 * g + j] = (int8_t)(b << 4) >> 4;
			q[16 * g + 8 + j] = b >> 4;
		}
}

/* floor(s / 2^k) + (u < s mod 2^k), u uniform on [0, 2^k): exactly s / 2^k
 * on average. */
HOT int32_t owner_round(int32_t s, int32_t k, uint32_t u)
{
	int32_t r = s >> k; /* floor: arithmetic shift */
	int32_t rem = s - (r << k);
	return r + ((int32_t)u < rem);
}

HOT int32_t finish_body(const uint16_t *raw, uint32_t count, uint32_t contributors, const uint8_t *own, uint32_t bits,
			uint32_t key, uint8_t *out, uint8_t *also)
{
	int32_t s[NARROW_MAX] __attribute__((aligned(32)));
	int8_t q[NARROW_MAX] __attribute__((aligned(32)));
	const int32_t bias = (int32_t)((bits == 8 ? AINFTP_ACC_BIAS8 : AINFTP_ACC_BIAS4) * contributors);
	const uint32_t whole = (count + 7) & ~7u; /* the acc entry holds whole groups of eight */
	if (contributors)
		for (uint32_t g = 0; g < whole; g += 8)
			for (uint32_t k = 0; k < 8; k++)
				s[g + k] = (int32_t)raw[g + 4 * (k & 1) + (k >> 1)] - bias;
	else
		memset(s, 0, sizeof(s[0]) * whole);
	if (own) {
		unpack_values(own, count, bits, q);
		for (uint32_t j = 0; j < count; j++)
			s[j] += q[j];
	}
	int32_t m = 0;
	for (uint32_t j = 0; j < count; j++) {
		int32_t a = s[j] < 0 ? -s[j] : s[j];
		m = a > m ? a : m;
	}
	const int32_t qmax = qmax_of(bits);
	int32_t k = 0;
	while (m > (qmax << k))
		k++;
	/* u: k bits of a hash. The largest k: the lanes hold at most
	 * AINFTP_MAX_WORKERS = 64 contributions of a byte each (value + 128 at 8
	 * bits, value + 8 at 4: values in [-128, 127] or [-8, 7], one step past
	 * -Q at most), and the owner adds one more value, so |s| <= 65 * 128 =
	 * 8320 <= 127 * 2^7 at 8 bits and 65 * 8 = 520 <= 7 * 2^7 at 4: k <= 7
	 * (k <= 6 for 64 members within +-Q, 64 Q = Q * 2^6). So one hash gives
	 * four values a byte each, exactly unbiased still (a byte's low k bits
	 * are uniform on [0, 2^k) for k <= 8), in blocks of 64 values that
	 * vectorize: lane i (0..15) of block b is mix32(key + (16b + i) * GOLDEN),
	 * value 64b + 16t + i takes its byte t (t = 0..3); the tail by the same
	 * rule one value at a time, so every build gives the same bits. Lanes
	 * that are not such sums (an acc entry written some other way) can need
	 * up to k = 14 (4 bits, one contributor, a lane of 65535): then each
	 * value draws a hash of its own, mix32(key + j * GOLDEN), as before. */
	const uint32_t mask = (1u << k) - 1;
	uint32_t j = 0;
	if (k <= 8) {
		for (; j + 64 <= count; j += 64) {
			const uint32_t h0 = key + (j / 4) * GOLDEN;
			const int32_t *sb = s + j;
			int8_t *qb = q + j;
			int32_t t[64];
			for (uint32_t i = 0; i < 16; i++) {
				uint32_t h = mix32(h0 + i * GOLDEN);
				t[i] = owner_round(sb[i], k, h & mask);
				t[16 + i] = owner_round(sb[16 + i], k, (h >> 8) & mask);
				t[32 + i] = owner_round(sb[32 + i], k, (h >> 16) & mask);
				t[48 + i] = owner_round(sb[48 + i], k, (h >> 24) & mask);
			}
			for (uint32_t i = 0; i < 64; i++)
				qb[i] = (int8_t)t[i];
		}
		for (; j < count; j++) {
			uint32_t h = mix32(key + ((j >> 6) * 16 + (j & 15)) * GOLDEN);
			q[j] = (int8_t)owner_round(s[j], k, (h >> (8 * ((j >> 4) & 3))) & mask);
		}
	} else {
		for (uint32_t h = key; j < count; j++, h += GOLDEN)
			q[j] = (int8_t)owner_round(s[j], k, mix32(h) & mask);
	}
	memset(q + count, 0, ((count + 15) & ~15u) - count);
	pack_values(q, count, bits, out);
	if (also)
		memcpy(also, out, ainftp_bits_payload(bits, count));
	return k;
}

HOT void dequant_body(const uint8_t *p, uint32_t count, uint32_t bits, float p1, float p2, float *out)
{
	int8_t q[NARROW_MAX] __attribute__((aligned(32)));
	unpack_values(p, count, bits, q);
	if (p2 == 1.0f)
		for (uint32_t j = 0; j < count; j++)
			out[j] = (float)q[j] * p1;
	else
		for (uint32_t j = 0; j < count; j++)
			out[j] = ((float)q[j] * p1) * p2;
}

/* x[j] = +-x[j] * p, the sign flipped where bit j % 32 of the hash of
 * (key, j / 32) is set (one hash per 32 values); both steps exact for a
 * power of two p, so one pass does them in either order. n < 32 or a
 * multiple of 32 (power-of-two blocks). */
HOT void rht_signs_scale(const float *src, float *x, uint32_t n, uint32_t key, float p)
{
	const int32_t *a = (const int32_t *)src;
	int32_t *b = (int32_t *)x;
	for (uint32_t w = 0; w < (n + 31) / 32; w++) {
		uint32_t bits = mix32(key + w * GOLDEN);
		uint32_t m = n - 32 * w < 32 ? n - 32 * w : 32;
		for (uint32_t t = 0; t < m; t++)
			b[32 * w + t] = a[32 * w + t] ^ (int32_t)(((bits >> t) & 1u) << 31);
		for (uint32_t t = 0; t < m; t++)
			x[32 * w + t] = x[32 * w + t] * p;
	}
}

/* Butterfly passes h = from, 2 from, ... < n over a block of n = 2^L. */
HOT void fwht_passes(float *restrict x, uint32_t n, uint32_t from)
{
	for (uint32_t h = from; h < n; h <<= 1)
		for (uint32_t i = 0; i < n; i += 2 * h)
			for (uint32_t j = i; j < i + h; j++) {
				float a = x[j], b = x[j + h];
				x[j] = a + b;
				x[j + h] = a - b;
			}
}

/* One block of b = 2^L values at offset off of a chunk whose stream key is key. */
HOT void rht_block_params(uint32_t count, uint32_t off, uint32_t key, uint32_t inverse, uint32_t *b, uint32_t *k, float *p)
{
	uint32_t L = 31 - (uint32_t)__builtin_clz(count - off);
	L = L > AINFTP_RHT_LOG_MAX ? AINFTP_RHT_LOG_MAX : L;
	*b = 1u << L;
	*k = key + off * GOLDEN; /* words [off, off + b / 32): no two blocks share one */
	*p = pow2f(-(int32_t)(inverse ? (L + 1) / 2 : L / 2));
}

/* One block of b values, stage by stage: forward D then H (scaled), the
 * first pass reading src (x itself, or the caller's gradient); inverse H
 * then D (scaled), in place. The scalar build's every block, and the
 * vector builds' blocks too small for a vector. */
HOT void rht_block_scalar(const float *src, float *x, uint32_t b, uint32_t k, float p, int inverse)
{
	if (!inverse)
		rht_signs_scale(src, x, b, k, p);
	fwht_passes(x, b, 1);
	if (inverse)
		rht_signs_scale(x, x, b, k, p);
}

/* The RHT of one chunk of count values (forward from src into x; inverse in
 * place, src == x), block by block. */
HOT void rht_chunk_scalar(const float *src, float *x, uint32_t count, uint32_t key, uint32_t inverse)
{
	for (uint32_t off = 0, b, k; off < count; off += b) {
		float p;
		rht_block_params(count, off, key, inverse, &b, &k, &p);
		rht_block_scalar(src + off, x + off, b, k, p, inverse);
	}
}

/* The AVX2 build's chunk (below; the scalar one elsewhere): returns the
 * non-finite count and writes the largest finite |value| bits to *m when m
 * is not NULL (forward only). */
static uint32_t rht_chunk_vec(const float *src, float *x, uint32_t count, uint32_t key, uint32_t inverse, int32_t *m);
/* The AVX-512 build's (16 values a vector; the same bits). */
static uint32_t rht_chunk_vec512(const float *src, float *x, uint32_t count, uint32_t key, uint32_t inverse, int32_t *m);

/* vec: 0 scalar, 1 AVX2, 2 AVX-512. */
HOT uint32_t rht_chunk_any(int vec, const float *src, float *x, uint32_t count, uint32_t key, uint32_t inverse, int32_t *m)
{
	if (vec == 2)
		return rht_chunk_vec512(src, x, count, key, inverse, m);
	return rht_chunk_vec(src, x, count, key, inverse, m);
}

HOT void rht_body(const float *src, float *x, uint32_t n, uint32_t chunk_elems, uint32_t seed, uint32_t inverse, int vec)
{
	for (uint32_t start = 0, c = 0; start < n; start += chunk_elems, c++) {
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		if (vec)
			rht_chunk_any(vec, src + start, x + start, count, stream_key(seed, c), inverse, NULL);
		else
			rht_chunk_scalar(src + start, x + start, count, stream_key(seed, c), inverse);
	}
}

/* The residual of one chunk on its way back through the inverse RHT (pack_body, rseed). */
static __thread float resid_scratch[NARROW_MAX] __attribute__((aligned(64)));

/* Chunk c's packet (count values at xc) at dst under exponent e; resid_c
 * (if not NULL: chunk c's place in the residual) gets each packed value's
 * error: in the transformed domain when rseed is 0, else taken back
 * through the inverse RHT of seed rseed while the chunk is in cache (the
 * residual of the gradient itself, as ainftp_rht_chunk on resid would make
 * it, without a pass over resid of its own). Returns the values clipped. */
HOT uint32_t pack_chunk(const float *xc, uint32_t count, uint32_t c, int8_t e, struct ainftp_wire_hdr *h, uint8_t *dst,
			uint32_t seed, uint32_t bits, float *resid_c, uint32_t rseed, int vec)
{
	int8_t q[NARROW_MAX] __attribute__((aligned(32)));
	const int32_t bq = bits_of((float)qmax_of(bits));
	float scale = pow2f(-e), p = pow2f(e);
	float *r = resid_c ? (rseed ? resid_scratch : resid_c) : NULL;
	uint32_t sat;
	/* each a loop of its own: the residual's test is not made per value */
	if (seed && r)
		sat = stochastic_narrow(xc, count, scale, bq, q, stream_key(seed, c), r, p);
	else if (seed)
		sat = stochastic_narrow(xc, count, scale, bq, q, stream_key(seed, c), NULL, p);
	else
		sat = nearest_narrow(xc, count, scale, bq, q, r, p);
	if (r && rseed) {
		if (vec)
			rht_chunk_any(vec, r, r, count, stream_key(rseed, c), 1, NULL);
		else
			rht_chunk_scalar(r, r, count, stream_key(rseed, c), 1);
		ainftp_copy_stream(resid_c, r, count);
	}
	memset(q + count, 0, ((count + 15) & ~15u) - count);
	pack_values(q, count, bits, dst + sizeof(*h));
	h->chunk = c;
	h->count = (__u16)count;
	h->exp = e;
	h->flags = (__u16)((h->flags & ~AINFTP_F_SATURATED) | (sat ? AINFTP_F_SATURATED : 0));
	memcpy(dst, h, sizeof(*h));
	return sat;
}

/* The listed chunks' packets (pack_chunk), the i-th at out + i * stride. */
HOT uint32_t pack_body(const float *x, uint32_t n, uint32_t chunk_elems, const uint32_t *chunks, uint32_t nchunks,
		       const int8_t *exps, struct ainftp_wire_hdr *h, uint8_t *out, uint32_t stride, uint32_t seed,
		       uint32_t bits, float *resid, uint32_t rseed, int vec)
{
	uint32_t saturated = 0;
	for (uint32_t i = 0; i < nchunks; i++) {
		uint32_t c = chunks[i], start = c * chunk_elems;
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		saturated += pack_chunk(x + start, count, c, exps[c], h, out + (size_t)i * stride, seed, bits,
					resid ? resid + start : NULL, rseed, vec);
	}
	return saturated;
}

/* One chunk (count values, c its index) of src (+ add) transformed into
 * out under the seed's key for c, its largest finite magnitude (as bits)
 * into *m; returns its non-finite values (rht_exps_body,
 * rht_exps_pack_body). out may be src. */
HOT uint32_t rht_exps_chunk(const float *src, const float *add, float *out, uint32_t count, uint32_t c, uint32_t seed,
			    int32_t *m, int vec)
{
	const float *in = src;
	if (add) {
		for (uint32_t i = 0; i < count; i++)
			out[i] = src[i] + add[i];
		in = out;
	}
	if (vec)
		return rht_chunk_any(vec, in, out, count, stream_key(seed, c), 0, m);
	uint32_t bad = 0;
	rht_chunk_scalar(in, out, count, stream_key(seed, c), 0);
	exps_scan(out, count, m, &bad);
	return bad;
}

/* The prepacking pass's chunk when the round keeps no transformed array
 * (rht_exps_pack_body with x NULL). */
static __thread float prepack_scratch[NARROW_MAX] __attribute__((aligned(64)));

/* rht_exps_body and pack_body in one pass: each chunk transformed (with
 * error feedback: src + add) into x, or, where x is NULL (a round that
 * keeps no transformed array), into a scratch; its exponent into exps,
 * its scale max(pred, exponent) into scale (the exponent where pred is
 * NULL), and, unless offsets[c] is AINFTP_NO_OFFSET, its packet at out +
 * offsets[c] under that scale, while the chunk is in cache: x is not read
 * again for packing. The same bits as the two calls
 * (ainftp_bits_rht_exps_pack). */
HOT uint32_t rht_exps_pack_body(const float *src, const float *add, float *x, uint32_t n, uint32_t chunk_elems,
				uint32_t rht_seed, int32_t p, const int8_t *pred, int8_t *exps, int8_t *scale,
				const uint32_t *offsets, struct ainftp_wire_hdr *h, uint8_t *out, uint32_t seed,
				uint32_t bits, float *resid, uint32_t resid_seed, uint32_t *saturated, int vec)
{
	uint32_t nonfinite = 0, sat = 0;
	for (uint32_t start = 0, c = 0; start < n; start += chunk_elems, c++) {
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		float *w = x ? x + start : prepack_scratch;
		int32_t m = 0;
		nonfinite += rht_exps_chunk(src + start, add ? add + start : NULL, w, count, c, rht_seed, &m, vec);
		int8_t e = exp_of_max_p(m, p);
		exps[c] = e;
		if (pred && pred[c] > e && pred[c] <= AINFTP_EXP_MAX)
			e = pred[c];
		scale[c] = e;
		if (offsets[c] != AINFTP_NO_OFFSET)
			sat += pack_chunk(w, count, c, e, h, out + offsets[c], seed, bits, resid ? resid + start : NULL,
					  resid_seed, vec);
	}
	*saturated += sat;
	return nonfinite;
}

/* The forward RHT of src into x and exps[c] of the transformed values (as
 * exps_body would give, without reading x again); the non-finite count.
 * With error feedback (ainftp_rht_ef_exps): add, if not NULL, is added to
 * src first (x = RHT(src + add), the sum in float as a separate pass would
 * make it), and also, if not NULL, gets a copy of each transformed chunk
 * while it is in cache (add and also may be one buffer: a chunk of add is
 * read before that chunk of also is written). */
HOT uint32_t rht_exps_body(const float *src, const float *add, float *x, float *also, uint32_t n, uint32_t chunk_elems,
			   uint32_t seed, int8_t *exps, int32_t p, int vec)
{
	uint32_t nonfinite = 0;
	for (uint32_t start = 0, c = 0; start < n; start += chunk_elems, c++) {
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		int32_t m = 0;
		nonfinite += rht_exps_chunk(src + start, add ? add + start : NULL, x + start, count, c, seed, &m, vec);
		exps[c] = exp_of_max_p(m, p);
		if (also)
			memcpy(also + start, x + start, (size_t)count * sizeof(float));
	}
	return nonfinite;
}

struct bits_kernels {
	uint32_t (*exps)(const float *, uint32_t, uint32_t, int8_t *, int32_t);
	uint32_t (*pack)(const float *, uint32_t, uint32_t, const uint32_t *, uint32_t, const int8_t *,
			 struct ainftp_wire_hdr *, uint8_t *, uint32_t, uint32_t, uint32_t, float *, uint32_t);
	int32_t (*finish)(const uint16_t *, uint32_t, uint32_t, const uint8_t *, uint32_t, uint32_t, uint8_t *, uint8_t *);
	void (*dequant)(const uint8_t *, uint32_t, uint32_t, float, float, float *);
	void (*rht)(const float *, float *, uint32_t, uint32_t, uint32_t, uint32_t);
	uint32_t (*rht_exps)(const float *, const float *, float *, float *, uint32_t, uint32_t, uint32_t, int8_t *, int32_t);
	void (*rht_chunk)(float *, uint32_t, uint32_t, uint32_t);
	uint32_t (*rht_exps_pack)(const float *, const float *, float *, uint32_t, uint32_t, uint32_t, int32_t, const int8_t *,
				  int8_t *, int8_t *, const uint32_t *, struct ainftp_wire_hdr *, uint8_t *, uint32_t, uint32_t,
				  float *, uint32_t, uint32_t *);
};

#define BITS_BUILD(isa, attr, vec)                                                                               \
	attr static uint32_t exps_##isa(const float *x, uint32_t n, uint32_t ce, int8_t *exps, int32_t p)       \
	{                                                                                                        \
		return exps_body(x, n, ce, exps, p);                                                              \
	}                                                                                                        \
	attr static uint32_t pack_##isa(const float *x, uint32_t n, uint32_t ce, const uint32_t *chunks,        \
					uint32_t nchunks, const int8_t *exps, struct ainftp_wire_hdr *h,        \
					uint8_t *out, uint32_t stride, uint32_t seed, uint32_t bits, float *r,  \
					uint32_t rseed)                                                          \
	{                                                                                                        \
		return pack_body(x, n, ce, chunks, nchunks, exps, h, out, stride, seed, bits, r, rseed, vec);     \
	}                                                                                                        \
	attr static int32_t finish_##isa(const uint16_t *raw, uint32_t count, uint32_t k, const uint8_t *own,   \
					 uint32_t bits, uint32_t key, uint8_t *out, uint8_t *also)              \
	{                                                                                                        \
		return finish_body(raw, count, k, own, bits, key, out, also);                                     \
	}                                                                                                        \
	attr static void dequant_##isa(const uint8_t *p, uint32_t count, uint32_t bits, float p1, float p2,     \
				       float *out)                                                              \
	{                                                                                                        \
		dequant_body(p, count, bits, p1, p2, out);                                                        \
	}                                                                                                        \
	attr static void rht_##isa(const float *src, float *x, uint32_t n, uint32_t ce, uint32_t seed,          \
				   uint32_t inverse)                                                            \
	{                                                                                                        \
		rht_body(src, x, n, ce, seed, inverse, vec);                                                      \
	}                                                                                                        \
	attr static uint32_t rht_exps_##isa(const float *src, const float *add, float *x, float *also, uint32_t n,  \
					    uint32_t ce, uint32_t seed, int8_t *exps, int32_t p)                \
	{                                                                                                        \
		return rht_exps_body(src, add, x, also, n, ce, seed, exps, p, vec);                               \
	}                                                                                                        \
	attr static void rht_chunk_##isa(float *x, uint32_t count, uint32_t key, uint32_t inverse)              \
	{                                                                                                        \
		if (vec)                                                                                         \
			rht_chunk_any(vec, x, x, count, key, inverse, NULL);                                     \
		else                                                                                             \
			rht_chunk_scalar(x, x, count, key, inverse);                                             \
	}                                                                                                        \
	attr static uint32_t rht_exps_pack_##isa(const float *src, const float *add, float *x, uint32_t n,     \
						 uint32_t ce, uint32_t rseed, int32_t p, const int8_t *pred,    \
						 int8_t *exps, int8_t *scale, const uint32_t *offsets,          \
						 struct ainftp_wire_hdr *h, uint8_t *out, uint32_t seed,        \
						 uint32_t bits, float *resid, uint32_t resid_seed,              \
						 uint32_t *saturated)                                           \
	{                                                                                                        \
		return rht_exps_pack_body(src, add, x, n, ce, rseed, p, pred, exps, scale, offsets, h, out,     \
					  seed, bits, resid, resid_seed, saturated, vec);                       \
	}

BITS_BUILD(generic, , 0)
static const struct bits_kernels generic = { exps_generic, pack_generic, finish_generic, dequant_generic, rht_generic,
						 rht_exps_generic, rht_chunk_generic, rht_exps_pack_generic };

#ifdef BITS_X86
#define TARGET_AVX2 __attribute__((target("avx2")))
BITS_BUILD(avx2, TARGET_AVX2, 1)
static const struct bits_kernels avx2 = { exps_avx2, pack_avx2, finish_avx2, dequant_avx2, rht_avx2, rht_exps_avx2, rht_chunk_avx2,
					   rht_exps_pack_avx2 };
#ifdef __clang__
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#else /* gcc would use 256-bit vectors for these by default */
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")))
#endif
BITS_BUILD(avx512, TARGET_AVX512, 2)
static const struct bits_kernels avx512 = { exps_avx512, pack_avx512, finish_avx512, dequant_avx512, rht_avx512, rht_exps_avx512,
					     rht_chunk_avx512, rht_exps_pack_avx512 };

#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2")))
/* The register blocks below only stay in registers when unrolled whole. */
#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

/* The sign masks of values 8t .. 8t + 7 of a sign word broadcast in w
 * (bit i: value i), t = 0 .. 3. */
AVX2_INLINE __m256 sign8(__m256i w, uint32_t t)
{
	const __m256i shift = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
	__m256i v = _mm256_sllv_epi32(w, _mm256_sub_epi32(shift, _mm256_set1_epi32((int32_t)(8 * t))));
	return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(INT32_MIN)));
}

/* rht_signs_scale of 8 values: the sign flip, then the exact scale. */
AVX2_INLINE __m256 signs_scale8(__m256 v, __m256i w, uint32_t t, __m256 p)
{
	return _mm256_mul_ps(_mm256_xor_ps(v, sign8(w, t)), p);
}

/* Passes 1, 2, 4 inside one vector: the upper element of each pair negated,
 * plus the vector with each pair swapped: -b + a and a + b, which are a - b
 * and a + b exactly as the scalar passes compute them (IEEE addition
 * commutes, and x - y is x + -y; only a NaN's payload may differ, and a
 * non-finite gradient is refused). One shuffle per pass. */
AVX2_INLINE __m256 fwht8(__m256 v)
{
	const __m256 m1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN));
	const __m256 m2 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, INT32_MIN, INT32_MIN, 0, 0, INT32_MIN, INT32_MIN));
	const __m256 m4 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN));
	v = _mm256_add_ps(_mm256_xor_ps(v, m1), _mm256_permute_ps(v, 0xb1));
	v = _mm256_add_ps(_mm256_xor_ps(v, m2), _mm256_permute_ps(v, 0x4e));
	return _mm256_add_ps(_mm256_xor_ps(v, m4), _mm256_permute2f128_ps(v, v, 0x01));
}

/* Whole-vector passes over R vectors: distance d = 1, 2, ... R/2, as h = 8d. */
AVX2_INLINE void fwht_regs(__m256 *v, uint32_t R)
{
	UNROLL
	for (uint32_t d = 1; d < R; d <<= 1)
		UNROLL
		for (uint32_t r = 0; r < R; r++)
			if (!(r & d)) {
				__m256 a = v[r], b = v[r + d];
				v[r] = _mm256_add_ps(a, b);
				v[r + d] = _mm256_sub_ps(a, b);
			}
}

/* exps_scan of 8 values, per lane: max in m, non-finite count in bad. */
struct vexps {
	__m256i m, bad;
};

AVX2_INLINE void vexps_add(struct vexps *e, __m256 v)
{
	__m256i a = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fffffff));
	__m256i nf = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(BITS_INF - 1));
	e->bad = _mm256_sub_epi32(e->bad, nf);
	e->m = _mm256_max_epi32(e->m, _mm256_andnot_si256(nf, a));
}

/* The block is register-blocked: every pass of one stage reads only that
 * stage's inputs, so doing the passes group by group instead of stage by
 * stage gives every value the same additions in the same order (the same
 * bits as the stage-by-stage sweep). Low passes: groups of RHT_LO vectors
 * (8 * RHT_LO values), passes h = 1 .. 4 * RHT_LO in registers; high passes:
 * columns of 8 values at stride 8 * RHT_LO, h = 8 * RHT_LO .. b / 2. */
#ifndef RHT_LO
#define RHT_LO 16
#endif

/* One low group of 8R values: load (forward: signs and scale first), passes
 * 1 .. 4R, store (last: inverse signs and scale, then the exponent scan).
 * w: the group's sign words. */
AVX2_INLINE void rht_lo(const float *src, float *x, uint32_t R, const uint32_t *w, __m256 p, int fwd, int last,
			struct vexps *e)
{
	__m256 v[RHT_LO];
	__m256i wb[RHT_LO / 4 + 1];
	UNROLL
	for (uint32_t r = 0; r < R; r += 4)
		wb[r / 4] = _mm256_set1_epi32((int32_t)w[r / 4]);
	UNROLL
	for (uint32_t r = 0; r < R; r++) {
		v[r] = _mm256_loadu_ps(src + 8 * r);
		if (fwd)
			v[r] = signs_scale8(v[r], wb[r / 4], r & 3, p);
		v[r] = fwht8(v[r]);
	}
	fwht_regs(v, R);
	UNROLL
	for (uint32_t r = 0; r < R; r++) {
		if (last && !fwd)
			v[r] = signs_scale8(v[r], wb[r / 4], r & 3, p);
		if (last && e)
			vexps_add(e, v[r]);
		_mm256_storeu_ps(x + 8 * r, v[r]);
	}
}

/* The high passes of a block of R * 8 * RHT_LO values, in place. */
AVX2_INLINE void rht_hi(float *x, uint32_t R, const uint32_t *w, __m256 p, int fwd, struct vexps *e)
{
	const uint32_t S = 8 * RHT_LO;
	for (uint32_t col = 0; col < S; col += 8) {
		__m256 v[16];
		UNROLL
		for (uint32_t r = 0; r < R; r++)
			v[r] = _mm256_loadu_ps(x + col + S * r);
		fwht_regs(v, R);
		UNROLL
	for (uint32_t r = 0; r < R; r++) {
			uint32_t i = col + S * r; /* value i's sign: bit i % 32 of word i / 32 */
			if (!fwd)
				v[r] = signs_scale8(v[r], _mm256_set1_epi32((int32_t)w[i >> 5]), (i & 31) / 8, p);
			if (e)
				vexps_add(e, v[r]);
			_mm256_storeu_ps(x + col + S * r, v[r]);
		}
	}
}

/* One block of b >= 8 values (a power of two, at most 2^AINFTP_RHT_LOG_MAX). */
AVX2_INLINE void rht_block8(const float *src, float *x, uint32_t b, uint32_t k, float pf, int fwd, struct vexps *e)
{
	uint32_t w[(1u << AINFTP_RHT_LOG_MAX) / 32];
	for (uint32_t i = 0; i < (b + 31) / 32; i++)
		w[i] = mix32(k + i * GOLDEN);
	const __m256 p = _mm256_set1_ps(pf);
	const uint32_t S = 8 * RHT_LO;
	_Static_assert((RHT_LO == 8 || RHT_LO == 16) && AINFTP_RHT_LOG_MAX == 10, "the cases below");
	switch (b) { /* a block within one low group */
	case 8:
		rht_lo(src, x, 1, w, p, fwd, 1, e);
		return;
	case 16:
		rht_lo(src, x, 2, w, p, fwd, 1, e);
		return;
	case 32:
		rht_lo(src, x, 4, w, p, fwd, 1, e);
		return;
	case 64:
		rht_lo(src, x, 8, w, p, fwd, 1, e);
		return;
	}
	for (uint32_t g = 0; g < b; g += S)
		rht_lo(src + g, x + g, RHT_LO, w + g / 32, p, fwd, b == S, e);
	switch (b / S) {
	case 2:
		rht_hi(x, 2, w, p, fwd, e);
		break;
	case 4:
		rht_hi(x, 4, w, p, fwd, e);
		break;
	case 8:
		rht_hi(x, 8, w, p, fwd, e);
		break;
	case 16:
		rht_hi(x, 16, w, p, fwd, e);
		break;
	}
}

AVX2_INLINE uint32_t rht_blocks_avx2(const float *src, float *x, uint32_t count, uint32_t key, int fwd, int32_t *m)
{
	struct vexps e = { _mm256_setzero_si256(), _mm256_setzero_si256() };
	int32_t ms = 0;
	uint32_t bad = 0;
	for (uint32_t off = 0, b, k; off < count; off += b) {
		float p;
		rht_block_params(count, off, key, !fwd, &b, &k, &p);
		if (b >= 8) {
			rht_block8(src + off, x + off, b, k, p, fwd, m ? &e : NULL);
			continue;
		}
		rht_block_scalar(src + off, x + off, b, k, p, !fwd);
		if (m)
			exps_scan(x + off, b, &ms, &bad);
	}
	if (!m)
		return 0;
	int32_t lm[8], lb[8];
	_mm256_storeu_si256((__m256i *)lm, e.m);
	_mm256_storeu_si256((__m256i *)lb, e.bad);
	for (int t = 0; t < 8; t++) {
		ms = lm[t] > ms ? lm[t] : ms;
		bad += (uint32_t)lb[t];
	}
	*m = ms;
	return bad;
}

TARGET_AVX2 static uint32_t rht_chunk_vec(const float *src, float *x, uint32_t count, uint32_t key, uint32_t inverse,
					   int32_t *m)
{
	if (inverse)
		return rht_blocks_avx2(x, x, count, key, 0, NULL);
	if (m)
		return rht_blocks_avx2(src, x, count, key, 1, m);
	return rht_blocks_avx2(src, x, count, key, 1, NULL);
}

/* ---- the same transform, 16 values a vector (AVX-512) -------------------------------
 * Every butterfly is the one the scalar sweep computes (a + b and a - b of
 * the same operands; in-vector as -b + a, see fwht8), so the bits are the
 * same as the scalar and AVX2 builds'. Blocks below 16 values (a chunk's
 * odd tail) take the scalar sweep. Measured in bench/bits.ts ("rht forward", "rht inverse"). */
#define AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq")))
#define RHT_LO16 16

/* rht_signs_scale of 16 values: value i's sign is bit 16t + i of word w. */
AVX512_INLINE __m512 signs_scale16(__m512 v, uint32_t w, uint32_t t, __m512 p)
{
	__mmask16 k = (__mmask16)(w >> (16 * t));
	return _mm512_mul_ps(_mm512_mask_xor_ps(v, k, v, _mm512_set1_ps(-0.0f)), p);
}

/* Passes 1, 2, 4, 8 inside one vector (fwht8's, one more). */
AVX512_INLINE __m512 fwht16(__m512 v)
{
	const __m512 m1 = _mm512_castsi512_ps(_mm512_set4_epi32(INT32_MIN, 0, INT32_MIN, 0));
	const __m512 m2 = _mm512_castsi512_ps(_mm512_set4_epi32(INT32_MIN, INT32_MIN, 0, 0));
	const __m512 m4 = _mm512_castsi512_ps(_mm512_setr_epi32(0, 0, 0, 0, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, 0, 0, 0, 0,
								 INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN));
	const __m512 m8 = _mm512_castsi512_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN,
								 INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN));
	v = _mm512_add_ps(_mm512_xor_ps(v, m1), _mm512_permute_ps(v, 0xb1));
	v = _mm512_add_ps(_mm512_xor_ps(v, m2), _mm512_permute_ps(v, 0x4e));
	v = _mm512_add_ps(_mm512_xor_ps(v, m4), _mm512_shuffle_f32x4(v, v, 0xb1));
	return _mm512_add_ps(_mm512_xor_ps(v, m8), _mm512_shuffle_f32x4(v, v, 0x4e));
}

AVX512_INLINE void fwht_regs16(__m512 *v, uint32_t R)
{
	UNROLL
	for (uint32_t d = 1; d < R; d <<= 1)
		UNROLL
		for (uint32_t r = 0; r < R; r++)
			if (!(r & d)) {
				__m512 a = v[r], b = v[r + d];
				v[r] = _mm512_add_ps(a, b);
				v[r + d] = _mm512_sub_ps(a, b);
			}
}

struct vexps16 {
	__m512i m, bad;
};

AVX512_INLINE void vexps16_add(struct vexps16 *e, __m512 v)
{
	__m512i a = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff));
	__mmask16 nf = _mm512_cmpgt_epi32_mask(a, _mm512_set1_epi32(BITS_INF - 1));
	e->bad = _mm512_mask_add_epi32(e->bad, nf, e->bad, _mm512_set1_epi32(1));
	e->m = _mm512_mask_max_epi32(e->m, (__mmask16)~nf, e->m, a);
}

/* One low group of 16R values: rht_lo's, 16 at a time. */
AVX512_INLINE void rht_lo16(const float *src, float *x, uint32_t R, const uint32_t *w, __m512 p, int fwd, int last,
			    struct vexps16 *e)
{
	__m512 v[RHT_LO16];
	UNROLL
	for (uint32_t r = 0; r < R; r++) {
		v[r] = _mm512_loadu_ps(src + 16 * r);
		if (fwd)
			v[r] = signs_scale16(v[r], w[r / 2], r & 1, p);
		v[r] = fwht16(v[r]);
	}
	fwht_regs16(v, R);
	UNROLL
	for (uint32_t r = 0; r < R; r++) {
		if (last && !fwd)
			v[r] = signs_scale16(v[r], w[r / 2], r & 1, p);
		if (last && e)
			vexps16_add(e, v[r]);
		_mm512_storeu_ps(x + 16 * r, v[r]);
	}
}

/* The high passes of a block of R * 16 * RHT_LO16 values, in place. */
AVX512_INLINE void rht_hi16(float *x, uint32_t R, const uint32_t *w, __m512 p, int fwd, struct vexps16 *e)
{
	const uint32_t S = 16 * RHT_LO16;
	for (uint32_t col = 0; col < S; col += 16) {
		__m512 v[16];
		UNROLL
		for (uint32_t r = 0; r < R; r++)
			v[r] = _mm512_loadu_ps(x + col + S * r);
		fwht_regs16(v, R);
		UNROLL
		for (uint32_t r = 0; r < R; r++) {
			uint32_t i = col + S * r;
			if (!fwd)
				v[r] = signs_scale16(v[r], w[i >> 5], (i & 31) / 16, p);
			if (e)
				vexps16_add(e, v[r]);
			_mm512_storeu_ps(x + col + S * r, v[r]);
		}
	}
}

/* One block of 16 <= b <= 2^AINFTP_RHT_LOG_MAX values. */
AVX512_INLINE void rht_block16(const float *src, float *x, uint32_t b, uint32_t k, float pf, int fwd, struct vexps16 *e)
{
	uint32_t w[(1u << AINFTP_RHT_LOG_MAX) / 32];
	for (uint32_t i = 0; i < (b + 31) / 32; i++)
		w[i] = mix32(k + i * GOLDEN);
	const __m512 p = _mm512_set1_ps(pf);
	const uint32_t S = 16 * RHT_LO16;
	_Static_assert(RHT_LO16 == 16 && AINFTP_RHT_LOG_MAX == 10, "the cases below");
	switch (b) { /* a block within one low group */
	case 16:
		rht_lo16(src, x, 1, w, p, fwd, 1, e);
		return;
	case 32:
		rht_lo16(src, x, 2, w, p, fwd, 1, e);
		return;
	case 64:
		rht_lo16(src, x, 4, w, p, fwd, 1, e);
		return;
	case 128:
		rht_lo16(src, x, 8, w, p, fwd, 1, e);
		return;
	}
	for (uint32_t g = 0; g < b; g += S)
		rht_lo16(src + g, x + g, RHT_LO16, w + g / 32, p, fwd, b == S, e);
	switch (b / S) {
	case 2:
		rht_hi16(x, 2, w, p, fwd, e);
		break;
	case 4:
		rht_hi16(x, 4, w, p, fwd, e);
		break;
	}
}

AVX512_INLINE uint32_t rht_blocks_avx512(const float *src, float *x, uint32_t count, uint32_t key, int fwd, int32_t *m)
{
	struct vexps16 e = { _mm512_setzero_si512(), _mm512_setzero_si512() };
	int32_t ms = 0;
	uint32_t bad = 0;
	for (uint32_t off = 0, b, k; off < count; off += b) {
		float p;
		rht_block_params(count, off, key, !fwd, &b, &k, &p);
		if (b >= 16) {
			rht_block16(src + off, x + off, b, k, p, fwd, m ? &e : NULL);
			continue;
		}
		/* blocks of fewer than 16 (a chunk's odd tail): the scalar sweep */
		rht_block_scalar(src + off, x + off, b, k, p, !fwd);
		if (m)
			exps_scan(x + off, b, &ms, &bad);
	}
	if (!m)
		return 0;
	int32_t lm[16], lb[16];
	_mm512_storeu_si512(lm, e.m);
	_mm512_storeu_si512(lb, e.bad);
	for (int t = 0; t < 16; t++) {
		ms = lm[t] > ms ? lm[t] : ms;
		bad += (uint32_t)lb[t];
	}
	*m = ms;
	return bad;
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static uint32_t
rht_chunk_vec512(const float *src, float *x, uint32_t count, uint32_t key, uint32_t inverse, int32_t *m)
{
	if (inverse)
		return rht_blocks_avx512(x, x, count, key, 0, NULL);
	if (m)
		return rht_blocks_avx512(src, x, count, key, 1, m);
	return rht_blocks_avx512(src, x, count, key, 1, NULL);
}
#else /* never called: without x86 there is only the generic build (vec 0) */
static uint32_t rht_chunk_vec(const float *src, float *x, uint32_t count, uint32_t key, uint32_t inverse, int32_t *m)
{
	(void)m;
	rht_chunk_scalar(src, x, count, key, inverse);
	return 0;
}
static uint32_t rht_chunk_vec512(const float *src, float *x, uint32_t count, uint32_t key, uint32_t inverse, int32_t *m)
{
	return rht_chunk_vec(src, x, count, key, inverse, m);
}
#endif

/* The build the kernels here use: the quantizer's (AINFTP_QUANT_ISA=generic
 * forces the scalar one). */
int32_t ainftp_rht_isa(void)
{
#ifdef BITS_X86
	return ainftp_quant_isa();
#else
	return AINFTP_ISA_GENERIC;
#endif
}

static inline const struct bits_kernels *kern(void)
{
#ifdef BITS_X86
	int32_t isa = ainftp_rht_isa();
	if (isa == AINFTP_ISA_AVX512)
		return &avx512;
	if (isa == AINFTP_ISA_AVX2)
		return &avx2;
#endif
	return &generic;
}

/* ---- the API ---------------------------------------------------------------------- */

/* exps[c] for every chunk of x at `bits` (8 or 4): the smallest e with
 * max|x| <= Q * 2^e over the chunk's finite values; returns the non-finite
 * values (left out of the maximum), or AINFTP_QUANT_EINVAL. */
uint32_t ainftp_bits_chunk_exps(const float *x, uint32_t n, uint32_t chunk_elems, int8_t *exps, uint32_t bits)
{
	if (chunk_elems == 0 || (bits != 8 && bits != 4))
		return AINFTP_QUANT_EINVAL;
	return kern()->exps(x, n, chunk_elems, exps, bits == 8 ? 7 : 3);
}

/* As ainftp_pack_chunks, at 8 or 4 bits: header (version AINFTP_VERSION_INT8
 * or _INT4) and packed payload at out + i * stride for each listed chunk;
 * seed 0 rounds to nearest, else stochastically from the stream (seed,
 * chunk). resid, if not NULL, gets x - q * 2^e for every value packed (this
 * rank's own quantization error). Returns the values clipped (0 when exps is
 * a maximum over ranks), or AINFTP_QUANT_EINVAL. */
uint32_t ainftp_bits_pack(const float *x, uint32_t n, uint32_t chunk_elems, const uint32_t *chunks, uint32_t nchunks,
			  const int8_t *exps, const void *hdr_template, uint8_t *out, uint32_t stride, uint32_t seed,
			  uint32_t bits, float *resid)
{
	return ainftp_bits_pack_ef(x, n, chunk_elems, chunks, nchunks, exps, hdr_template, out, stride, seed, bits, resid, 0);
}

/* As ainftp_bits_pack, with each chunk's residual taken back through the
 * inverse RHT of seed rht_seed (0: not) before it is stored: the same
 * values as ainftp_bits_pack and then ainftp_rht_chunk(resid + start, count,
 * c, rht_seed, 1) for every chunk packed, with resid written once
 * (error feedback at 8 and 4 bits: the residual lives in the gradient's
 * domain, and each round transforms under its own seed). The residual is
 * written with streaming stores, fenced before the return: it is read
 * again only in the next round. */
uint32_t ainftp_bits_pack_ef(const float *x, uint32_t n, uint32_t chunk_elems, const uint32_t *chunks, uint32_t nchunks,
			     const int8_t *exps, const void *hdr_template, uint8_t *out, uint32_t stride, uint32_t seed,
			     uint32_t bits, float *resid, uint32_t rht_seed)
{
	if (chunk_elems == 0 || chunk_elems > NARROW_MAX || (bits != 8 && bits != 4))
		return AINFTP_QUANT_EINVAL;
	uint32_t total = n / chunk_elems + (n % chunk_elems != 0);
	uint32_t widest = n < chunk_elems ? n : chunk_elems;
	if ((uint64_t)stride < sizeof(struct ainftp_wire_hdr) + ainftp_bits_payload(bits, widest))
		return AINFTP_QUANT_EINVAL;
	for (uint32_t i = 0; i < nchunks; i++)
		if (chunks[i] >= total || exps[chunks[i]] < AINFTP_EXP_MIN || exps[chunks[i]] > AINFTP_EXP_MAX)
			return AINFTP_QUANT_EINVAL;
	struct ainftp_wire_hdr h;
	memcpy(&h, hdr_template, sizeof(h));
	h.version = bits == 8 ? AINFTP_VERSION_INT8 : AINFTP_VERSION_INT4;
	uint32_t sat = kern()->pack(x, n, chunk_elems, chunks, nchunks, exps, &h, out, stride, seed, bits, resid, rht_seed);
	if (resid && rht_seed)
		ainftp_stream_fence();
	return sat;
}

/* ---- the owner's step -------------------------------------------------------------- */

/* The owner's step at 8 or 4 bits. raw is the chunk's acc entry (16-bit
 * lanes, ainftp_abi.h) holding `contributors` contributions (NULL when
 * none); own, if not NULL, the owner's packed values at the same exp. With
 * s the true sums: the smallest k >= 0 with max|s| <= Q * 2^k, and the
 * values floor(s / 2^k) + (h_j < s mod 2^k), h_j k bits of the stream of
 * key (finish_body: a byte of a hash shared by four values), packed into
 * out (and `also`, if not NULL). Returns k (the result's exp is the slot's
 * exp + k), or -EINVAL. */
int32_t ainftp_bits_finish(const uint16_t *raw, uint32_t count, uint32_t contributors, const uint8_t *own,
			   uint32_t bits, uint32_t key, uint8_t *out, uint8_t *also)
{
	if (count == 0 || count > NARROW_MAX || contributors > AINFTP_MAX_WORKERS || (contributors && !raw) ||
	    (bits != 8 && bits != 4))
		return -EINVAL;
	return kern()->finish(raw, count, contributors, own, bits, key, out, also);
}

/* out = q * 2^exp for `count` packed values (exact where f32 holds them).
 * Returns 0, or -EINVAL for a bad width, count or exp. */
int32_t ainftp_bits_dequantize(const uint8_t *p, uint32_t count, int32_t exp, uint32_t bits, float *out)
{
	if ((bits != 8 && bits != 4) || count > NARROW_MAX || exp < AINFTP_DEQ_EXP_MIN || exp > AINFTP_DEQ_EXP_MAX)
		return -EINVAL;
	int32_t e1 = exp >= -126 && exp <= 127 ? exp : (exp - (exp & 1)) / 2;
	kern()->dequant(p, count, bits, pow2f(e1), e1 == exp ? 1.0f : pow2f(exp - e1), out);
	return 0;
}

/* ---- the randomized Hadamard transform ------------------------------------------------ */

/* The RHT of x in place (inverse: its inverse), chunk by chunk of
 * chunk_elems, each chunk in power-of-two blocks (the largest of at most
 * 2^AINFTP_RHT_LOG_MAX that fits what is left), signs from the stream
 * (seed, chunk). Every member that names the same seed transforms alike.
 * Returns 0, or -EINVAL for chunk_elems 0. */
int32_t ainftp_rht(float *x, uint32_t n, uint32_t chunk_elems, uint32_t seed, uint32_t inverse)
{
	if (chunk_elems == 0)
		return -EINVAL;
	kern()->rht(x, x, n, chunk_elems, seed, inverse);
	return 0;
}

/* The RHT of one chunk's count values in place (inverse: its inverse),
 * `chunk` being its index in the array: the same values as ainftp_rht gives
 * that chunk of the whole array (the gather takes each chunk back while it
 * is in cache). Returns 0, or -EINVAL for count 0. */
int32_t ainftp_rht_chunk(float *x, uint32_t count, uint32_t chunk, uint32_t seed, uint32_t inverse)
{
	if (count == 0)
		return -EINVAL;
	kern()->rht_chunk(x, count, stream_key(seed, chunk), inverse);
	return 0;
}

/* The forward transform of src into x (n values each, not overlapping): the
 * same values as copying src to x and transforming it in place, without
 * the copy. Returns 0, or -EINVAL. */
int32_t ainftp_rht_from(const float *src, float *x, uint32_t n, uint32_t chunk_elems, uint32_t seed)
{
	if (chunk_elems == 0)
		return -EINVAL;
	kern()->rht(src, x, n, chunk_elems, seed, 0);
	return 0;
}

/* ainftp_rht_from and then ainftp_bits_chunk_exps of x, in one pass: each
 * chunk's exponent at `bits` (8 or 4) is taken from the transformed values
 * while they are in registers, so x is not read again. The same values and
 * exponents as the two calls. Returns the non-finite values of x after the
 * transform (as ainftp_bits_chunk_exps), or AINFTP_QUANT_EINVAL. src == x
 * transforms in place. */
uint32_t ainftp_rht_from_exps(const float *src, float *x, uint32_t n, uint32_t chunk_elems, uint32_t seed, int8_t *exps,
			      uint32_t bits)
{
	if (chunk_elems == 0 || (bits != 8 && bits != 4))
		return AINFTP_QUANT_EINVAL;
	return kern()->rht_exps(src, NULL, x, NULL, n, chunk_elems, seed, exps, bits == 8 ? 7 : 3);
}

/* ainftp_rht_from_exps of src + add (error feedback: the gradient plus the
 * last call's residual, without a pass of its own), and a copy of x into
 * also (NULL: none; may be add itself: the residual starts as x, and
 * packing overwrites what it quantizes). */
uint32_t ainftp_rht_ef_exps(const float *src, const float *add, float *x, float *also, uint32_t n, uint32_t chunk_elems,
			    uint32_t seed, int8_t *exps, uint32_t bits)
{
	if (chunk_elems == 0 || (bits != 8 && bits != 4))
		return AINFTP_QUANT_EINVAL;
	return kern()->rht_exps(src, add, x, also, n, chunk_elems, seed, exps, bits == 8 ? 7 : 3);
}

/* Prepacking at 8 and 4 bits (src/collective/prepack.ts): ainftp_rht_ef_exps
 * of src (+ add, if not NULL) into x (NULL: the transform is not kept,
 * each chunk only packed from a scratch), and every chunk with an offset packed
 * in the same pass, while it is in cache, as ainftp_bits_pack_ef would pack
 * it from x under scale[c] = max(pred[c], exps[c]) (exps[c] where pred is
 * NULL or pred[c] is out of range): header from hdr_template, at out +
 * offsets[c] (AINFTP_NO_OFFSET: none); resid, if not NULL, gets the error
 * of every value packed, back through the inverse of resid_seed (0: not).
 * The same x, exponents and packets as those calls. Returns the non-finite
 * values of x (as ainftp_rht_ef_exps), adds the values clipped to
 * *saturated; AINFTP_QUANT_EINVAL for a bad width or chunk size, or a
 * packet that would not fit out. */
uint32_t ainftp_bits_rht_exps_pack(const float *src, const float *add, float *x, uint32_t n, uint32_t chunk_elems,
				   uint32_t rht_seed, uint32_t bits, const int8_t *pred, int8_t *exps, int8_t *scale,
				   const uint32_t *offsets, const void *hdr_template, uint8_t *out, uint32_t out_len,
				   uint32_t seed, float *resid, uint32_t resid_seed, uint32_t *saturated)
{
	if (chunk_elems == 0 || chunk_elems > NARROW_MAX || (bits != 8 && bits != 4))
		return AINFTP_QUANT_EINVAL;
	uint32_t total = n / chunk_elems + (n % chunk_elems != 0);
	for (uint32_t c = 0; c < total; c++) {
		uint32_t count = n - c * chunk_elems < chunk_elems ? n - c * chunk_elems : chunk_elems;
		if (offsets[c] != AINFTP_NO_OFFSET &&
		    (uint64_t)offsets[c] + sizeof(struct ainftp_wire_hdr) + ainftp_bits_payload(bits, count) > (uint64_t)out_len)
			return AINFTP_QUANT_EINVAL;
	}
	struct ainftp_wire_hdr h;
	memcpy(&h, hdr_template, sizeof(h));
	h.version = bits == 8 ? AINFTP_VERSION_INT8 : AINFTP_VERSION_INT4;
	uint32_t bad = kern()->rht_exps_pack(src, add, x, n, chunk_elems, rht_seed, bits == 8 ? 7 : 3, pred, exps, scale,
					     offsets, &h, out, seed, bits, resid, resid_seed, saturated);
	if (resid && resid_seed)
		ainftp_stream_fence();
	return bad;
}
