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
 *  - ainftp_bits_pack: q = floor(x / 2^e) + (u < frac), E[q * 2^e] = x,
 *    packed as ainftp_abi.h says, with this rank's error x - q * 2^e;
 *  - ainftp_bits_finish: the owner's sums s (the program's 16-bit lanes and
 *    its own values), then the smallest k with max|s| <= Q * 2^k and
 *    q = floor(s / 2^k) + (h < s mod 2^k), h uniform on [0, 2^k): exactly
 *    unbiased, from a seed every member can name (round, job, chunk);
 *  - ainftp_rht: the randomized Hadamard transform, in power-of-two blocks
 *    of at most 2^AINFTP_RHT_LOG_MAX within each chunk (random signs, then
 *    the unnormalized Walsh-Hadamard butterflies, then 2^-floor(L/2); the
 *    inverse in the other order with 2^-ceil(L/2), so H D H D = I exactly in
 *    the scaling and to one rounding per butterfly in the values). A generic
 *    build and an AVX2 one (its first three passes as in-register shuffles),
 *    chosen with the quantizer's build (AINFTP_QUANT_ISA, ainftp_quant_isa).
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

/* exps[c] for every chunk of x at `bits` (8 or 4); returns the non-finite
 * values (left out of the maximum), or AINFTP_QUANT_EINVAL. */
uint32_t ainftp_bits_chunk_exps(const float *x, uint32_t n, uint32_t chunk_elems, int8_t *exps, uint32_t bits)
{
	if (chunk_elems == 0 || (bits != 8 && bits != 4))
		return AINFTP_QUANT_EINVAL;
	const int32_t p = bits == 8 ? 7 : 3;
	uint32_t nonfinite = 0, total = n / chunk_elems + (n % chunk_elems != 0);
	for (uint32_t c = 0; c < total; c++) {
		uint32_t start = c * chunk_elems, end = n - start < chunk_elems ? n : start + chunk_elems;
		int32_t m = 0;
		uint32_t bad = 0;
		for (uint32_t j = start; j < end; j++) {
			int32_t a = bits_of(x[j]) & 0x7fffffff;
			int32_t nf = a >= BITS_INF;
			bad += (uint32_t)nf;
			a = nf ? 0 : a;
			m = a > m ? a : m;
		}
		nonfinite += bad;
		exps[c] = exp_of_max_p(m, p);
	}
	return nonfinite;
}

/* ---- packing --------------------------------------------------------------------- */

static void pack_values(const int8_t *q, uint32_t count, uint32_t bits, uint8_t *p)
{
	if (bits == 8) {
		memcpy(p, q, count);
		return;
	}
	uint32_t bytes = ainftp_bits_payload(4, count);
	memset(p, 0, bytes);
	for (uint32_t j = 0; j < count; j++) {
		uint32_t r = j & 15;
		p[(j >> 4) * 8 + (r & 7)] |= (uint8_t)((q[j] & 15) << (r < 8 ? 0 : 4));
	}
}

static void unpack_values(const uint8_t *p, uint32_t count, uint32_t bits, int8_t *q)
{
	if (bits == 8) {
		memcpy(q, p, count);
		return;
	}
	for (uint32_t j = 0; j < count; j++) {
		uint32_t r = j & 15;
		uint8_t b = p[(j >> 4) * 8 + (r & 7)];
		uint8_t nib = r < 8 ? b & 15 : b >> 4;
		q[j] = (int8_t)(uint8_t)(nib << 4) >> 4;
	}
}

/* q[j] = floor(v) + (u_j < v - floor(v)), v = x[j] * scale clamped to +-Q
 * (clipped values and NaN, stored as 0, counted); seed 0: to nearest, ties
 * to even. The steps of quant.c's stochastic_body at a narrower clamp. */
static uint32_t quantize_narrow(const float *restrict x, uint32_t n, float scale, int32_t qmax, int8_t *restrict q,
				uint32_t key, int stochastic)
{
	const int32_t bq = bits_of((float)qmax);
	uint32_t bad = 0, h = key;
	for (uint32_t j = 0; j < n; j++, h += GOLDEN) {
		int32_t b = bits_of(x[j] * scale);
		int32_t a = b & 0x7fffffff;
		bad += a > bq;
		a = a > BITS_INF ? 0 : a;
		a = a > bq ? bq : a;
		float v = float_of(a | (b & (int32_t)0x80000000));
		float t = v + MAGIC_RNE;
		int32_t nearest = bits_of(t) - MAGIC_BITS;
		if (!stochastic) {
			q[j] = (int8_t)nearest;
			continue;
		}
		int32_t down = t - MAGIC_RNE > v;
		float frac = v - ((t - MAGIC_RNE) - (float)down);
		float u = (float)(int32_t)(mix32(h) >> 8) * 0x1p-24f;
		q[j] = (int8_t)(nearest - down + (u < frac));
	}
	return bad;
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
	int8_t q[NARROW_MAX];
	uint32_t saturated = 0;
	for (uint32_t i = 0; i < nchunks; i++) {
		uint32_t c = chunks[i], start = c * chunk_elems;
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		uint8_t *dst = out + (size_t)i * stride;
		uint32_t sat = quantize_narrow(x + start, count, pow2f(-exps[c]), qmax_of(bits), q, stream_key(seed, c),
					       seed != 0);
		if (resid) {
			float p = pow2f(exps[c]);
			for (uint32_t j = 0; j < count; j++)
				resid[start + j] = x[start + j] - (float)q[j] * p;
		}
		pack_values(q, count, bits, dst + sizeof(h));
		h.chunk = c;
		h.count = (__u16)count;
		h.exp = exps[c];
		h.flags = (__u16)((h.flags & ~AINFTP_F_SATURATED) | (sat ? AINFTP_F_SATURATED : 0));
		memcpy(dst, &h, sizeof(h));
		saturated += sat;
	}
	return saturated;
}

/* ---- the owner's step -------------------------------------------------------------- */

/* The owner's step at 8 or 4 bits. raw is the chunk's acc entry (16-bit
 * lanes, ainftp_abi.h) holding `contributors` contributions (NULL when
 * none); own, if not NULL, the owner's packed values at the same exp. With
 * s the true sums: the smallest k >= 0 with max|s| <= Q * 2^k, and the
 * values floor(s / 2^k) + (h_j < s mod 2^k), h_j the low k bits of the
 * hash of (key, j), packed into out (and `also`, if not NULL). Returns k
 * (the result's exp is the slot's exp + k), or -EINVAL. */
int32_t ainftp_bits_finish(const uint16_t *raw, uint32_t count, uint32_t contributors, const uint8_t *own,
			   uint32_t bits, uint32_t key, uint8_t *out, uint8_t *also)
{
	if (count == 0 || count > NARROW_MAX || contributors > AINFTP_MAX_WORKERS || (contributors && !raw) ||
	    (bits != 8 && bits != 4))
		return -EINVAL;
	int32_t s[NARROW_MAX];
	int8_t q[NARROW_MAX];
	const int32_t bias = (int32_t)((bits == 8 ? AINFTP_ACC_BIAS8 : AINFTP_ACC_BIAS4) * contributors);
	for (uint32_t j = 0; j < count; j++) {
		uint32_t k = j & 7;
		s[j] = contributors ? (int32_t)raw[(j & ~7u) + 4 * (k & 1) + (k >> 1)] - bias : 0;
	}
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
	const int32_t mask = (1 << k) - 1;
	uint32_t h = key;
	for (uint32_t j = 0; j < count; j++, h += GOLDEN) {
		int32_t r = s[j] >> k; /* floor: arithmetic shift */
		int32_t rem = s[j] - (r << k);
		q[j] = (int8_t)(r + ((int32_t)(mix32(h) & (uint32_t)mask) < rem));
	}
	pack_values(q, count, bits, out);
	if (also)
		memcpy(also, out, ainftp_bits_payload(bits, count));
	return k;
}

/* out = q * 2^exp for `count` packed values (exact where f32 holds them).
 * Returns 0, or -EINVAL for a bad width, count or exp. */
int32_t ainftp_bits_dequantize(const uint8_t *p, uint32_t count, int32_t exp, uint32_t bits, float *out)
{
	if ((bits != 8 && bits != 4) || count > NARROW_MAX || exp < AINFTP_DEQ_EXP_MIN || exp > AINFTP_DEQ_EXP_MAX)
		return -EINVAL;
	int8_t q[NARROW_MAX];
	unpack_values(p, count, bits, q);
	int32_t e1 = exp >= -126 && exp <= 127 ? exp : (exp - (exp & 1)) / 2;
	float p1 = pow2f(e1), p2 = pow2f(exp - e1);
	if (e1 == exp)
		for (uint32_t j = 0; j < count; j++)
			out[j] = (float)q[j] * p1;
	else
		for (uint32_t j = 0; j < count; j++)
			out[j] = ((float)q[j] * p1) * p2;
	return 0;
}

/* ---- the randomized Hadamard transform ------------------------------------------------ */

#define RHT_BODY static inline __attribute__((always_inline))

/* Flips the sign of x[j] where bit 31 of the hash of (key, j) is set: exact. */
RHT_BODY void rht_signs(float *x, uint32_t n, uint32_t key)
{
	int32_t *b = (int32_t *)x;
	uint32_t h = key;
	for (uint32_t j = 0; j < n; j++, h += GOLDEN)
		b[j] ^= (int32_t)(mix32(h) & 0x80000000u);
}

RHT_BODY void rht_scale(float *x, uint32_t n, float p)
{
	for (uint32_t j = 0; j < n; j++)
		x[j] = x[j] * p;
}

/* Butterfly passes h = from, 2 from, ... < n over a block of n = 2^L. */
RHT_BODY void fwht_passes(float *restrict x, uint32_t n, uint32_t from)
{
	for (uint32_t h = from; h < n; h <<= 1)
		for (uint32_t i = 0; i < n; i += 2 * h)
			for (uint32_t j = i; j < i + h; j++) {
				float a = x[j], b = x[j + h];
				x[j] = a + b;
				x[j + h] = a - b;
			}
}

static void fwht_generic(float *x, uint32_t n)
{
	fwht_passes(x, n, 1);
}

#ifdef BITS_X86
__attribute__((target("avx2"))) static void fwht_avx2(float *x, uint32_t n)
{
	if (n < 8)
		return fwht_passes(x, n, 1);
	/* passes 1, 2, 4 inside each vector of 8: a + (b with the sign of the
	 * upper element of each pair flipped), i.e. a + b and a - b */
	const __m256 m1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN));
	const __m256 m2 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, INT32_MIN, INT32_MIN, 0, 0, INT32_MIN, INT32_MIN));
	const __m256 m4 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN));
	for (uint32_t i = 0; i < n; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i);
		v = _mm256_add_ps(_mm256_moveldup_ps(v), _mm256_xor_ps(_mm256_movehdup_ps(v), m1));
		v = _mm256_add_ps(_mm256_permute_ps(v, 0x44), _mm256_xor_ps(_mm256_permute_ps(v, 0xee), m2));
		v = _mm256_add_ps(_mm256_permute2f128_ps(v, v, 0x00), _mm256_xor_ps(_mm256_permute2f128_ps(v, v, 0x11), m4));
		_mm256_storeu_ps(x + i, v);
	}
	for (uint32_t h = 8; h < n; h <<= 1)
		for (uint32_t i = 0; i < n; i += 2 * h)
			for (uint32_t j = i; j < i + h; j += 8) {
				__m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
				_mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
				_mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
			}
}
#endif

/* The build the transform uses: AVX2 when the quantizer's build is AVX2 or
 * wider (AINFTP_QUANT_ISA=generic forces the scalar one). */
int32_t ainftp_rht_isa(void)
{
#ifdef BITS_X86
	return ainftp_quant_isa() >= AINFTP_ISA_AVX2 ? AINFTP_ISA_AVX2 : AINFTP_ISA_GENERIC;
#else
	return AINFTP_ISA_GENERIC;
#endif
}

/* The RHT of x in place (inverse: its inverse), chunk by chunk of
 * chunk_elems, each chunk in power-of-two blocks (the largest of at most
 * 2^AINFTP_RHT_LOG_MAX that fits what is left), signs from the stream
 * (seed, chunk). Every member that names the same seed transforms alike.
 * Returns 0, or -EINVAL for chunk_elems 0. */
int32_t ainftp_rht(float *x, uint32_t n, uint32_t chunk_elems, uint32_t seed, uint32_t inverse)
{
	if (chunk_elems == 0)
		return -EINVAL;
	void (*fwht)(float *, uint32_t) = fwht_generic;
#ifdef BITS_X86
	if (ainftp_rht_isa() == AINFTP_ISA_AVX2)
		fwht = fwht_avx2;
#endif
	for (uint32_t start = 0, c = 0; start < n; start += chunk_elems, c++) {
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		uint32_t key = stream_key(seed, c);
		for (uint32_t off = 0; off < count;) {
			uint32_t L = 31 - (uint32_t)__builtin_clz(count - off);
			L = L > AINFTP_RHT_LOG_MAX ? AINFTP_RHT_LOG_MAX : L;
			uint32_t b = 1u << L;
			float *blk = x + start + off;
			if (!inverse) {
				rht_signs(blk, b, key + off * GOLDEN);
				fwht(blk, b);
				rht_scale(blk, b, pow2f(-(int32_t)(L / 2)));
			} else {
				fwht(blk, b);
				rht_scale(blk, b, pow2f(-(int32_t)((L + 1) / 2)));
				rht_signs(blk, b, key + off * GOLDEN);
			}
			off += b;
		}
	}
	return 0;
}
