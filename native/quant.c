// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * quant.c — f32 gradients to int16 at a shared power-of-two scale per chunk,
 * the owner's requantization of the summed chunk, and int16 back to f32.
 * src/quantize.ts holds a plain TypeScript reference of every function here;
 * test/quantize.test.ts checks the two bit for bit.
 *
 * Rules that make results identical on every host:
 *  - scaling is by an exact power of two (built from exponent bits), so
 *    x * 2^-e is exact and rounding happens exactly once;
 *  - round to nearest is IEEE round-half-to-even, done with the 1.5 * 2^23
 *    magic number after clamping |v| to 32767 (far inside its 2^22 range);
 *  - stochastic rounding draws u from a counter-based hash of (seed, chunk,
 *    element), so it is reproducible and vectorizes;
 *  - the owner's step is integer arithmetic only.
 * The hot loops are plain loops over contiguous arrays with branch-free
 * selects, so gcc -O3 vectorizes them with the baseline ISA (no -march).
 * Assumes the default FP environment (round to nearest, no FTZ/DAZ).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include "../bpf/include/ainftp_abi.h"
#include "quant.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian; quant.c writes it with native stores"
#endif

/* The float steps must not fuse into multiply-adds (aarch64 would contract
 * them): each is exact or rounds once only as a separate operation. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* Bits of an f32 read as an integer without breaking strict aliasing. */
typedef int32_t __attribute__((may_alias)) f32_bits;

/* 2^e as f32, exact for e in [-149, 127] (subnormal below -126). */
static float pow2f(int32_t e)
{
	uint32_t bits = e >= -126 ? (uint32_t)(e + 127) << 23 : 1u << (e + 149);
	float f;
	memcpy(&f, &bits, sizeof(f));
	return f;
}

/* lowbias32 (C. Wellons): a bijective 32-bit mix with good avalanche. */
static inline uint32_t mix32(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	x *= 0x846ca68bu;
	x ^= x >> 16;
	return x;
}

#define GOLDEN 0x9e3779b9u

/* Key of one stream of uniforms: element j of chunk `stream` draws
 * u = (mix32(key + j * GOLDEN) >> 8) * 2^-24. */
static inline uint32_t stream_key(uint32_t seed, uint32_t stream)
{
	return mix32(seed ^ mix32(stream + GOLDEN));
}

#define MAGIC_RNE 12582912.0f  /* 1.5 * 2^23: v + M holds round_half_even(v) in its low bits */
#define MAGIC_BITS 0x4b400000 /* bits of MAGIC_RNE */
#define BITS_QMAX 0x46fffe00  /* bits of 32767.0f */
#define BITS_HALF 0x46ffff00  /* bits of 32767.5f: the first value that rounds to 32768 */
#define BITS_INF 0x7f800000

/* Clamping works on the magnitude's bits (integers order like the floats
 * they encode): one compare-and-select instead of two float ones, which is
 * what lets this run at memory speed without minps (SSE2 has no blend, and
 * gcc will not turn an IEEE clamp into minps/maxps). NaN (bits above Inf)
 * becomes 0; the caller has counted it. */
static inline float clamp_qmax(int32_t b)
{
	int32_t a = b & 0x7fffffff;
	a = a > BITS_INF ? 0 : a;
	a = a > BITS_QMAX ? BITS_QMAX : a;
	b = a | (b & (int32_t)0x80000000);
	float v;
	memcpy(&v, &b, sizeof(v));
	return v;
}

static inline int32_t bits_of(float v)
{
	int32_t b;
	memcpy(&b, &v, sizeof(b));
	return b;
}

/* q[j] = round_half_even(x[j] * scale), clipped to +-AINFTP_QMAX. Returns the
 * values that did not fit: |v| >= 32767.5 (clipped), and NaN (stored as 0). */
static uint32_t quant_nearest(const float *restrict x, uint32_t n, float scale, int16_t *restrict q)
{
	uint32_t bad = 0;
	for (uint32_t j = 0; j < n; j++) {
		int32_t b = bits_of(x[j] * scale);
		bad += (b & 0x7fffffff) >= BITS_HALF;
		/* |v| <= 32767 here, far inside the magic number's 2^22 range. */
		q[j] = (int16_t)(bits_of(clamp_qmax(b) + MAGIC_RNE) - MAGIC_BITS);
	}
	return bad;
}

/* q[j] = floor(v) + (u_j < v - floor(v)) with v = x[j] * scale: rounds up
 * with probability frac(v), so E[q] = v (to 2^-24). v beyond +-32767 is
 * clipped to +-32767 first and counted (whatever u would have done), as is
 * NaN (stored as 0). */
static uint32_t quant_stochastic(const float *restrict x, uint32_t n, float scale, int16_t *restrict q,
				 uint32_t key)
{
	uint32_t bad = 0;
	for (uint32_t j = 0; j < n; j++) {
		int32_t b = bits_of(x[j] * scale);
		bad += (b & 0x7fffffff) > BITS_QMAX;
		float v = clamp_qmax(b);
		float t = v + MAGIC_RNE;
		int32_t down = t - MAGIC_RNE > v; /* nearest is above v: floor is one less */
		float frac = v - ((t - MAGIC_RNE) - (float)down);
		float u = (float)(int32_t)(mix32(key + j * GOLDEN) >> 8) * 0x1p-24f;
		q[j] = (int16_t)(bits_of(t) - MAGIC_BITS - down + (u < frac));
	}
	return bad;
}

static uint32_t quant_span(const float *x, uint32_t n, int32_t exp, int16_t *q, uint32_t seed, uint32_t stream)
{
	float scale = pow2f(-exp);
	if (seed == 0)
		return quant_nearest(x, n, scale, q);
	return quant_stochastic(x, n, scale, q, stream_key(seed, stream));
}

/* For chunk c, exps[c] = the smallest e in [AINFTP_EXP_MIN, AINFTP_EXP_MAX]
 * with max|x| <= 32767 * 2^e over the chunk's finite values, so that every
 * value rounds (to nearest or stochastically) into +-32767. An all-zero chunk
 * gets AINFTP_EXP_MIN. NaN and +-Inf are left out of the maximum and counted:
 * returns the number of non-finite values (the round must then fail), or
 * AINFTP_QUANT_EINVAL when chunk_elems is 0. */
uint32_t ainftp_chunk_exps(const float *x, uint32_t n, uint32_t chunk_elems, int8_t *exps)
{
	if (chunk_elems == 0)
		return AINFTP_QUANT_EINVAL;
	const f32_bits *bits = (const f32_bits *)x;
	uint32_t nonfinite = 0;
	uint32_t total = n / chunk_elems + (n % chunk_elems != 0);
	for (uint32_t c = 0; c < total; c++) {
		uint32_t start = c * chunk_elems; /* < n: no overflow */
		uint32_t end = n - start < chunk_elems ? n : start + chunk_elems;
		int32_t m = 0;
		uint32_t bad = 0;
		/* |x| ordered as integers: the bits of a non-negative float grow with it. */
		for (uint32_t j = start; j < end; j++) {
			int32_t a = bits[j] & 0x7fffffff;
			int32_t nf = a >= 0x7f800000;
			bad += (uint32_t)nf;
			a = nf ? 0 : a;
			m = a > m ? a : m;
		}
		nonfinite += bad;
		/* m = 1.f * 2^(be-127) and 32767 * 2^(be-141) = (2 - 2^-14) * 2^(be-127):
		 * e = be - 141 unless the mantissa exceeds 0x7ffe00. Subnormals and 0
		 * land below AINFTP_EXP_MIN and are clamped up. */
		int32_t e = (m >> 23) - 141 + ((m & 0x7fffff) > 0x7ffe00);
		e = e < AINFTP_EXP_MIN ? AINFTP_EXP_MIN : e;
		e = e > AINFTP_EXP_MAX ? AINFTP_EXP_MAX : e;
		exps[c] = (int8_t)e;
	}
	return nonfinite;
}

/* For each i, writes at out + i*stride the 32-byte wire header copied from
 * hdr_template with chunk = chunks[i], count, exp = exps[chunk] and
 * AINFTP_F_SATURATED set when the chunk clipped (clear otherwise), followed by
 * the chunk's values as little-endian int16 q = round(x / 2^exp): to nearest,
 * ties to even, when seed == 0; stochastically from the stream (seed, chunk)
 * otherwise. Returns the number of values clipped to +-32767 (see
 * quant_nearest / quant_stochastic) plus NaNs, sent as 0: 0 when exps came
 * from ainftp_chunk_exps of this x or a maximum over ranks. Returns
 * AINFTP_QUANT_EINVAL, writing nothing, when a chunk index is out of range,
 * an exp is outside [AINFTP_EXP_MIN, AINFTP_EXP_MAX], a chunk does not fit in
 * stride, or out/stride are not 2-byte aligned. */
uint32_t ainftp_pack_chunks(const float *x, uint32_t n, uint32_t chunk_elems, const uint32_t *chunks,
			    uint32_t nchunks, const int8_t *exps, const void *hdr_template, uint8_t *out,
			    uint32_t stride, uint32_t seed)
{
	if (chunk_elems == 0 || chunk_elems > 0xffff || (stride & 1) || ((uintptr_t)out & 1))
		return AINFTP_QUANT_EINVAL;
	uint32_t total = n / chunk_elems + (n % chunk_elems != 0);
	uint32_t widest = n < chunk_elems ? n : chunk_elems;
	if ((uint64_t)stride < sizeof(struct ainftp_wire_hdr) + 2ull * widest)
		return AINFTP_QUANT_EINVAL;
	for (uint32_t i = 0; i < nchunks; i++) {
		if (chunks[i] >= total)
			return AINFTP_QUANT_EINVAL;
		int32_t e = exps[chunks[i]];
		if (e < AINFTP_EXP_MIN || e > AINFTP_EXP_MAX)
			return AINFTP_QUANT_EINVAL;
	}
	struct ainftp_wire_hdr h;
	memcpy(&h, hdr_template, sizeof(h));
	uint32_t saturated = 0;
	for (uint32_t i = 0; i < nchunks; i++) {
		uint32_t c = chunks[i];
		uint32_t start = c * chunk_elems;
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		uint8_t *dst = out + (size_t)i * stride;
		uint32_t sat = quant_span(x + start, count, exps[c], (int16_t *)(dst + sizeof(h)), seed, c);
		h.chunk = c;
		h.count = (__u16)count;
		h.exp = exps[c];
		h.flags = (__u16)((h.flags & ~AINFTP_F_SATURATED) | (sat ? AINFTP_F_SATURATED : 0));
		memcpy(dst, &h, sizeof(h));
		saturated += sat;
	}
	return saturated;
}

/* q = round(x / 2^exp) into a plain array, as ainftp_pack_chunks does for
 * one chunk: the stochastic stream is that of chunk 0. Returns the values
 * clipped (or NaN), or AINFTP_QUANT_EINVAL for an exp out of range. */
uint32_t ainftp_quantize(const float *x, uint32_t n, int32_t exp, int16_t *q, uint32_t seed)
{
	if (exp < AINFTP_EXP_MIN || exp > AINFTP_EXP_MAX)
		return AINFTP_QUANT_EINVAL;
	return quant_span(x, n, exp, q, seed, 0);
}

/* The chunk owner's step. raw is the chunk's acc entry (biased, middle two
 * of every four swapped; at least count rounded up to 4 lanes, as every acc
 * entry is) holding `contributors` contributions; raw may be NULL when
 * contributors is 0. own, if not NULL, is the owner's int16 contribution at
 * the same exp. With s the true sums, returns the smallest k >= 0 such that
 * every round(s / 2^k) fits +-32767 and writes those values to out, rounding
 * half away from zero: sign(s) * ((|s| + 2^(k-1)) >> k). The result's exp is
 * the slot's exp + k. Returns -EINVAL for count 0 or > AINFTP_MAX_ELEMS, or
 * more than AINFTP_MAX_WORKERS contributors. Integer math only. */
int32_t ainftp_finish_chunk(const uint32_t *raw, uint32_t count, uint32_t contributors, const int16_t *own,
			    int16_t *out)
{
	if (count == 0 || count > AINFTP_MAX_ELEMS || contributors > AINFTP_MAX_WORKERS ||
	    (contributors && !raw))
		return -EINVAL;
	int32_t s[AINFTP_MAX_ELEMS];
	if (contributors) {
		uint32_t bias = (uint32_t)AINFTP_ACC_BIAS * contributors;
		uint32_t g = 0;
		for (; g + 4 <= count; g += 4) {
			s[g] = (int32_t)(raw[g] - bias);
			s[g + 1] = (int32_t)(raw[g + 2] - bias);
			s[g + 2] = (int32_t)(raw[g + 1] - bias);
			s[g + 3] = (int32_t)(raw[g + 3] - bias);
		}
		for (uint32_t j = g; j < count; j++) {
			uint32_t k = j & 3;
			s[j] = (int32_t)(raw[k == 1 || k == 2 ? j ^ 3 : j] - bias);
		}
	} else {
		memset(s, 0, sizeof(s[0]) * count);
	}
	if (own)
		for (uint32_t j = 0; j < count; j++)
			s[j] = (int32_t)((uint32_t)s[j] + (uint32_t)(int32_t)own[j]); /* wraps only on garbage */
	uint32_t m = 0;
	for (uint32_t j = 0; j < count; j++) {
		uint32_t a = s[j] < 0 ? 0u - (uint32_t)s[j] : (uint32_t)s[j];
		m = a > m ? a : m;
	}
	/* (m + half) >> k is monotone in m: the largest magnitude decides k. */
	int32_t k = 0;
	while ((((uint64_t)m + (k ? 1ull << (k - 1) : 0)) >> k) > AINFTP_QMAX)
		k++;
	uint32_t half = k ? 1u << (k - 1) : 0;
	for (uint32_t j = 0; j < count; j++) {
		uint32_t a = s[j] < 0 ? 0u - (uint32_t)s[j] : (uint32_t)s[j];
		int32_t r = (int32_t)((a + half) >> k);
		out[j] = (int16_t)(s[j] < 0 ? -r : r);
	}
	return k;
}

/* out = q * 2^exp, exact (or the correctly rounded f32 where the value is
 * beyond f32: overflow to Inf, underflow to subnormal). For exp outside
 * [-126, 127] the power is split in two: q * 2^floor(exp/2) is still exact,
 * and the second multiply rounds once. Returns 0, or -EINVAL for an exp
 * outside [AINFTP_DEQ_EXP_MIN, AINFTP_DEQ_EXP_MAX]. */
int32_t ainftp_dequantize(const int16_t *q, uint32_t n, int32_t exp, float *out)
{
	if (exp < AINFTP_DEQ_EXP_MIN || exp > AINFTP_DEQ_EXP_MAX)
		return -EINVAL;
	if (exp >= -126 && exp <= 127) {
		float p = pow2f(exp);
		for (uint32_t j = 0; j < n; j++)
			out[j] = (float)q[j] * p;
		return 0;
	}
	int32_t e1 = (exp - (exp & 1)) / 2;
	float p1 = pow2f(e1), p2 = pow2f(exp - e1);
	for (uint32_t j = 0; j < n; j++)
		out[j] = ((float)q[j] * p1) * p2;
	return 0;
}
