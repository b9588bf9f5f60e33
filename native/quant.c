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
 * Assumes the default FP environment (round to nearest, no FTZ/DAZ).
 *
 * Three builds of every kernel, one chosen at load time (the best the CPU
 * runs, or AINFTP_QUANT_ISA=generic|avx2|avx512, or ainftp_quant_set_isa):
 *  - generic: plain loops with branch-free selects that gcc -O3 vectorizes
 *    with the baseline ISA (SSE2);
 *  - avx2 and avx512: the same per-element steps, in the same order, with
 *    256- and 512-bit vectors (intrinsics where the compiler would not find
 *    them, the generic body compiled for the wider ISA elsewhere). Every step
 *    is either exact or one IEEE-rounded f32 operation, so each build gives
 *    the same bits; test/quant-simd.test.ts holds them to it on every path.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include "../bpf/include/ainftp_abi.h"
#include "quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QUANT_X86 1
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian; quant.c writes it with native stores"
#endif

/* The float steps must not fuse into multiply-adds (aarch64 would contract
 * them; no build here enables FMA): each is exact or rounds once only as a
 * separate operation. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* Bits of an f32 read as an integer without breaking strict aliasing. */
typedef int32_t __attribute__((may_alias)) f32_bits;

/* A kernel body: written once, inlined into each ISA's build of it. */
#define BODY static inline __attribute__((always_inline))

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

/* ---- kernel bodies: the definition every build follows --------------------- */

/* q[j] = round_half_even(x[j] * scale), clipped to +-AINFTP_QMAX. Returns the
 * values that did not fit: |v| >= 32767.5 (clipped), and NaN (stored as 0). */
BODY uint32_t nearest_body(const float *restrict x, uint32_t n, float scale, int16_t *restrict q)
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
BODY uint32_t stochastic_body(const float *restrict x, uint32_t n, float scale, int16_t *restrict q,
			      uint32_t key)
{
	uint32_t bad = 0;
	uint32_t h = key; /* key + j * GOLDEN, as an induction: no multiply per element */
	for (uint32_t j = 0; j < n; j++, h += GOLDEN) {
		int32_t b = bits_of(x[j] * scale);
		bad += (b & 0x7fffffff) > BITS_QMAX;
		float v = clamp_qmax(b);
		float t = v + MAGIC_RNE;
		int32_t down = t - MAGIC_RNE > v; /* nearest is above v: floor is one less */
		float frac = v - ((t - MAGIC_RNE) - (float)down);
		float u = (float)(int32_t)(mix32(h) >> 8) * 0x1p-24f;
		q[j] = (int16_t)(bits_of(t) - MAGIC_BITS - down + (u < frac));
	}
	return bad;
}

/* The exponent of a chunk whose largest finite magnitude has bits m:
 * m = 1.f * 2^(be-127) and 32767 * 2^(be-141) = (2 - 2^-14) * 2^(be-127), so
 * e = be - 141 unless the mantissa exceeds 0x7ffe00. Subnormals and 0 land
 * below AINFTP_EXP_MIN and are clamped up. */
static inline int8_t exp_of_max(int32_t m)
{
	int32_t e = (m >> 23) - 141 + ((m & 0x7fffff) > 0x7ffe00);
	e = e < AINFTP_EXP_MIN ? AINFTP_EXP_MIN : e;
	e = e > AINFTP_EXP_MAX ? AINFTP_EXP_MAX : e;
	return (int8_t)e;
}

/* Per chunk: exps[c] from the largest finite |x| (integer order of the
 * magnitude's bits); returns the count of NaN and +-Inf over all chunks. */
BODY uint32_t chunk_exps_body(const float *x, uint32_t n, uint32_t chunk_elems, int8_t *exps)
{
	const f32_bits *bits = (const f32_bits *)x;
	uint32_t nonfinite = 0;
	uint32_t total = n / chunk_elems + (n % chunk_elems != 0);
	for (uint32_t c = 0; c < total; c++) {
		uint32_t start = c * chunk_elems; /* < n: no overflow */
		uint32_t end = n - start < chunk_elems ? n : start + chunk_elems;
		int32_t m = 0;
		uint32_t bad = 0;
		for (uint32_t j = start; j < end; j++) {
			int32_t a = bits[j] & 0x7fffffff;
			int32_t nf = a >= BITS_INF;
			bad += (uint32_t)nf;
			a = nf ? 0 : a;
			m = a > m ? a : m;
		}
		nonfinite += bad;
		exps[c] = exp_of_max(m);
	}
	return nonfinite;
}

/* The smallest k with (m + 2^(k-1)) >> k <= AINFTP_QMAX: (m + half) >> k is
 * monotone in m, so the largest magnitude decides k for the whole chunk. */
static inline int32_t shift_for(uint32_t m)
{
	int32_t k = 0;
	while ((((uint64_t)m + (k ? 1ull << (k - 1) : 0)) >> k) > AINFTP_QMAX)
		k++;
	return k;
}

/* The owner's step after argument checks (see ainftp_finish_chunk_to), as
 * plain loops: the true sums, their largest magnitude, the rounding, and a
 * copy into `also` if not NULL. */
static int32_t finish_generic(const uint32_t *raw, uint32_t count, uint32_t contributors, const int16_t *own,
			      int16_t *out, int16_t *also)
{
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
	int32_t k = shift_for(m);
	uint32_t half = k ? 1u << (k - 1) : 0;
	for (uint32_t j = 0; j < count; j++) {
		uint32_t a = s[j] < 0 ? 0u - (uint32_t)s[j] : (uint32_t)s[j];
		int32_t r = (int32_t)((a + half) >> k);
		out[j] = (int16_t)(s[j] < 0 ? -r : r);
	}
	if (also)
		memcpy(also, out, sizeof(out[0]) * count);
	return k;
}

/* out[j] = (q[j] * p1) * p2: exact but for the last multiply (p2 = 1 when one
 * power suffices, and x * 1 is x). */
BODY void dequant_body(const int16_t *restrict q, uint32_t n, float p1, float p2, float *restrict out)
{
	if (p2 == 1.0f) {
		for (uint32_t j = 0; j < n; j++)
			out[j] = (float)q[j] * p1;
		return;
	}
	for (uint32_t j = 0; j < n; j++)
		out[j] = ((float)q[j] * p1) * p2;
}

/* ---- the builds -------------------------------------------------------------- */

struct quant_kernels {
	const char *name;
	uint32_t (*chunk_exps)(const float *x, uint32_t n, uint32_t chunk_elems, int8_t *exps);
	uint32_t (*nearest)(const float *x, uint32_t n, float scale, int16_t *q);
	uint32_t (*stochastic)(const float *x, uint32_t n, float scale, int16_t *q, uint32_t key);
	int32_t (*finish)(const uint32_t *raw, uint32_t count, uint32_t contributors, const int16_t *own,
			  int16_t *out, int16_t *also);
	void (*dequant)(const int16_t *q, uint32_t n, float p1, float p2, float *out);
	/* dequant with streaming stores, and a streaming copy (the generic
	 * build: the plain ones) */
	void (*dequant_stream)(const int16_t *q, uint32_t n, float p1, float p2, float *out);
	void (*copy_stream)(float *dst, const float *src, uint32_t n);
};

/* One build of every kernel: the bodies above, compiled with `attr`. */
#define QUANT_BUILD(isa, attr)                                                                        \
	attr static uint32_t chunk_exps_##isa(const float *x, uint32_t n, uint32_t ce, int8_t *exps)  \
	{                                                                                             \
		return chunk_exps_body(x, n, ce, exps);                                               \
	}                                                                                             \
	attr static uint32_t nearest_##isa(const float *x, uint32_t n, float scale, int16_t *q)       \
	{                                                                                             \
		return nearest_body(x, n, scale, q);                                                  \
	}                                                                                             \
	attr static uint32_t stochastic_##isa(const float *x, uint32_t n, float scale, int16_t *q,    \
					      uint32_t key)                                           \
	{                                                                                             \
		return stochastic_body(x, n, scale, q, key);                                          \
	}                                                                                             \
	attr static void dequant_##isa(const int16_t *q, uint32_t n, float p1, float p2, float *out)  \
	{                                                                                             \
		dequant_body(q, n, p1, p2, out);                                                      \
	}

QUANT_BUILD(generic, )

#ifdef QUANT_X86
#define TARGET_AVX2 __attribute__((target("avx2")))
#ifdef __clang__
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#else /* gcc would use 256-bit vectors for these by default */
#define TARGET_AVX512 \
	__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")))
#endif
QUANT_BUILD(avx2, TARGET_AVX2)
QUANT_BUILD(avx512, TARGET_AVX512)
#endif

#ifdef QUANT_X86
/* The owner's step with vectors: one pass un-biases the lanes, un-swaps the
 * middle two of every four (a shuffle within each 128-bit lane: acc groups
 * are 4 lanes), adds the owner's share, stores the sums and takes their
 * largest magnitude; a second pass rounds. The same integer steps as
 * finish_generic: |s| as unsigned (|INT32_MIN| = 2^31), logical shift,
 * negation, truncation to int16. */
#define SWAP_MIDDLE 0xd8 /* dwords (0, 2, 1, 3) of every four */
#define SUMS_CAP ((AINFTP_MAX_ELEMS + 15) & ~15) /* whole vectors of sums */

TARGET_AVX512 static int32_t finish_avx512(const uint32_t *raw, uint32_t count, uint32_t contributors,
					   const int16_t *own, int16_t *out, int16_t *also)
{
	int32_t s[SUMS_CAP] __attribute__((aligned(64)));
	const __m512i bias = _mm512_set1_epi32((int32_t)((uint32_t)AINFTP_ACC_BIAS * contributors));
	__m512i most = _mm512_setzero_si512();
	for (uint32_t j = 0; j < count; j += 16) {
		uint32_t left = count - j;
		__mmask16 live = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
		/* the acc entry holds whole groups of four: read those the live lanes touch */
		__mmask16 groups = left >= 16 ? 0xffff : (__mmask16)((1u << ((left + 3) & ~3u)) - 1);
		/* masked loads only for the tail: they cost more when unaligned */
		__m512i v = _mm512_setzero_si512();
		if (contributors) {
			v = left >= 16 ? _mm512_loadu_si512(raw + j) : _mm512_maskz_loadu_epi32(groups, raw + j);
			v = _mm512_sub_epi32(_mm512_shuffle_epi32(v, (_MM_PERM_ENUM)SWAP_MIDDLE), bias);
		}
		if (own) {
			__m256i o = left >= 16 ? _mm256_loadu_si256((const __m256i *)(own + j))
					       : _mm256_maskz_loadu_epi16(live, own + j);
			v = _mm512_add_epi32(v, _mm512_cvtepi16_epi32(o));
		}
		v = _mm512_maskz_mov_epi32(live, v);
		most = _mm512_max_epu32(most, _mm512_abs_epi32(v));
		_mm512_store_si512(s + j, v);
	}
	int32_t k = shift_for(_mm512_reduce_max_epu32(most));
	const __m512i half = _mm512_set1_epi32(k ? 1 << (k - 1) : 0);
	const __m128i shift = _mm_cvtsi32_si128(k);
	for (uint32_t j = 0; j < count; j += 16) {
		uint32_t left = count - j;
		__mmask16 live = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
		__m512i v = _mm512_load_si512(s + j);
		__m512i r = _mm512_srl_epi32(_mm512_add_epi32(_mm512_abs_epi32(v), half), shift);
		r = _mm512_mask_sub_epi32(r, _mm512_movepi32_mask(v), _mm512_setzero_si512(), r);
		__m256i r16 = _mm512_cvtepi32_epi16(r);
		if (left >= 16) {
			_mm256_storeu_si256((__m256i *)(out + j), r16);
			if (also)
				_mm256_storeu_si256((__m256i *)(also + j), r16);
		} else {
			_mm256_mask_storeu_epi16(out + j, live, r16);
			if (also)
				_mm256_mask_storeu_epi16(also + j, live, r16);
		}
	}
	return k;
}

TARGET_AVX2 static inline uint32_t hmax_epu32_avx2(__m256i v)
{
	__m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4e));
	m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xb1));
	return (uint32_t)_mm_cvtsi128_si32(m);
}

TARGET_AVX2 static int32_t finish_avx2(const uint32_t *raw, uint32_t count, uint32_t contributors,
				       const int16_t *own, int16_t *out, int16_t *also)
{
	int32_t s[SUMS_CAP] __attribute__((aligned(32)));
	uint32_t bias_u = (uint32_t)AINFTP_ACC_BIAS * contributors;
	const __m256i bias = _mm256_set1_epi32((int32_t)bias_u);
	__m256i most = _mm256_setzero_si256();
	uint32_t j = 0;
	for (; j + 8 <= count; j += 8) {
		__m256i v = _mm256_setzero_si256();
		if (contributors) {
			v = _mm256_loadu_si256((const __m256i *)(raw + j));
			v = _mm256_sub_epi32(_mm256_shuffle_epi32(v, SWAP_MIDDLE), bias);
		}
		if (own)
			v = _mm256_add_epi32(v, _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(own + j))));
		most = _mm256_max_epu32(most, _mm256_abs_epi32(v));
		_mm256_store_si256((__m256i *)(s + j), v);
	}
	uint32_t m = hmax_epu32_avx2(most);
	for (uint32_t t = j; t < count; t++) {
		uint32_t k = t & 3;
		uint32_t v = contributors ? raw[k == 1 || k == 2 ? t ^ 3 : t] - bias_u : 0;
		if (own)
			v += (uint32_t)(int32_t)own[t];
		s[t] = (int32_t)v;
		uint32_t a = s[t] < 0 ? 0u - v : v;
		m = a > m ? a : m;
	}
	int32_t k = shift_for(m);
	uint32_t half_u = k ? 1u << (k - 1) : 0;
	const __m256i half = _mm256_set1_epi32((int32_t)half_u);
	const __m128i shift = _mm_cvtsi32_si128(k);
	/* the low half of each dword, then the two 64-bit results side by side */
	const __m256i low16 = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
					       0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
	for (j = 0; j + 8 <= count; j += 8) {
		__m256i v = _mm256_load_si256((const __m256i *)(s + j));
		__m256i r = _mm256_srl_epi32(_mm256_add_epi32(_mm256_abs_epi32(v), half), shift);
		r = _mm256_sign_epi32(r, v); /* v == 0 gives r == 0 either way */
		r = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(r, low16), 0x08);
		_mm_storeu_si128((__m128i *)(out + j), _mm256_castsi256_si128(r));
		if (also)
			_mm_storeu_si128((__m128i *)(also + j), _mm256_castsi256_si128(r));
	}
	for (; j < count; j++) {
		uint32_t a = s[j] < 0 ? 0u - (uint32_t)s[j] : (uint32_t)s[j];
		int32_t r = (int32_t)((a + half_u) >> k);
		out[j] = (int16_t)(s[j] < 0 ? -r : r);
		if (also)
			also[j] = out[j];
	}
	return k;
}
#endif

/* The generic build's streaming copy: a plain one. */
static void copy_plain(float *dst, const float *src, uint32_t n)
{
	memcpy(dst, src, (size_t)n * sizeof(float));
}

#ifdef QUANT_X86
/* How many values of out to store plainly before out + head lines up with
 * `align` bytes (all n when out is not even float-aligned). */
static inline uint32_t stream_head(const float *out, uint32_t n, uintptr_t align)
{
	if ((uintptr_t)out & 3)
		return n; /* not even float-aligned: no vector store lines up */
	uint32_t head = (uint32_t)(((align - ((uintptr_t)out & (align - 1))) & (align - 1)) / sizeof(float));
	return head > n ? n : head;
}

/* dequant_body with streaming (non-temporal) stores: each line of out is
 * written without being read first. A round's gather writes a whole array
 * that has long left the caches (16 MiB a rank at 16 MiB; the four ranks'
 * buffers are far above this VM's share of L3), and a plain store reads
 * every line before writing it: 2.26 against 1.27 ms for 4M values with out
 * cold, 0.89 against 1.02 with it hot (4464-value chunks, session 15).
 * The same multiplies as dequant_body, so the same bits; the caller fences
 * (ainftp_stream_fence) before anyone reads out. Head and tail (out not
 * aligned to the vector, a count not a multiple of it) store plainly. */
TARGET_AVX512 static void dequant_stream_avx512(const int16_t *q, uint32_t n, float p1, float p2, float *out)
{
	uint32_t j = stream_head(out, n, 64);
	dequant_body(q, j, p1, p2, out);
	const __m512 v1 = _mm512_set1_ps(p1), v2 = _mm512_set1_ps(p2);
	for (; j + 16 <= n; j += 16) {
		__m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(q + j))));
		f = _mm512_mul_ps(f, v1);
		if (p2 != 1.0f)
			f = _mm512_mul_ps(f, v2);
		_mm512_stream_ps(out + j, f);
	}
	dequant_body(q + j, n - j, p1, p2, out + j);
}

TARGET_AVX2 static void dequant_stream_avx2(const int16_t *q, uint32_t n, float p1, float p2, float *out)
{
	uint32_t j = stream_head(out, n, 32);
	dequant_body(q, j, p1, p2, out);
	const __m256 v1 = _mm256_set1_ps(p1), v2 = _mm256_set1_ps(p2);
	for (; j + 8 <= n; j += 8) {
		__m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(q + j))));
		f = _mm256_mul_ps(f, v1);
		if (p2 != 1.0f)
			f = _mm256_mul_ps(f, v2);
		_mm256_stream_ps(out + j, f);
	}
	dequant_body(q + j, n - j, p1, p2, out + j);
}

/* dst[0..n) = src[0..n) with streaming stores where dst lines up with the
 * vector (plain stores for the head and tail). */
TARGET_AVX512 static void copy_stream_avx512(float *dst, const float *src, uint32_t n)
{
	uint32_t j = stream_head(dst, n, 64);
	memcpy(dst, src, (size_t)j * sizeof(float));
	for (; j + 16 <= n; j += 16)
		_mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
	memcpy(dst + j, src + j, (size_t)(n - j) * sizeof(float));
}

TARGET_AVX2 static void copy_stream_avx2(float *dst, const float *src, uint32_t n)
{
	uint32_t j = stream_head(dst, n, 32);
	memcpy(dst, src, (size_t)j * sizeof(float));
	for (; j + 8 <= n; j += 8)
		_mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
	memcpy(dst + j, src + j, (size_t)(n - j) * sizeof(float));
}
#endif

static const struct quant_kernels builds[] = {
	[AINFTP_ISA_GENERIC] = { "generic", chunk_exps_generic, nearest_generic, stochastic_generic,
				 finish_generic, dequant_generic, dequant_generic, copy_plain },
#ifdef QUANT_X86
	[AINFTP_ISA_AVX2] = { "avx2", chunk_exps_avx2, nearest_avx2, stochastic_avx2, finish_avx2,
			      dequant_avx2, dequant_stream_avx2, copy_stream_avx2 },
	[AINFTP_ISA_AVX512] = { "avx512", chunk_exps_avx512, nearest_avx512, stochastic_avx512,
				finish_avx512, dequant_avx512, dequant_stream_avx512, copy_stream_avx512 },
#endif
};

static const struct quant_kernels *active = &builds[AINFTP_ISA_GENERIC];

static inline const struct quant_kernels *kern(void)
{
	return __atomic_load_n(&active, __ATOMIC_RELAXED);
}

/* Bit i set: this CPU (and its OS, which must save the wider registers) runs
 * build i. */
uint32_t ainftp_quant_isa_mask(void)
{
	uint32_t mask = 1u << AINFTP_ISA_GENERIC;
#ifdef QUANT_X86
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2"))
		mask |= 1u << AINFTP_ISA_AVX2;
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
		mask |= 1u << AINFTP_ISA_AVX512;
#endif
	return mask;
}

static int32_t best_isa(void)
{
	uint32_t mask = ainftp_quant_isa_mask();
	return 31 - __builtin_clz(mask);
}

/* Selects the build the kernels use: AINFTP_ISA_*, or -1 for the best this
 * CPU runs. Returns the build now in use, -EINVAL for an unknown one,
 * -ENOTSUP for one this CPU cannot run (the build in use stays). */
int32_t ainftp_quant_set_isa(int32_t isa)
{
	if (isa == -1)
		isa = best_isa();
	if (isa < 0 || isa >= AINFTP_ISA__COUNT)
		return -EINVAL;
	if (!(ainftp_quant_isa_mask() & (1u << isa)))
		return -ENOTSUP;
	__atomic_store_n(&active, &builds[isa], __ATOMIC_RELAXED);
	return isa;
}

/* The build in use (AINFTP_ISA_*). */
int32_t ainftp_quant_isa(void)
{
	return (int32_t)(kern() - builds);
}

/* At load: the best build, or the one AINFTP_QUANT_ISA names if this CPU
 * runs it (any other name keeps the best; native/quant.ts refuses names
 * that are no build at all). */
__attribute__((constructor)) static void quant_pick_isa(void)
{
	int32_t isa = best_isa();
	const char *want = getenv("AINFTP_QUANT_ISA");
	for (int32_t i = 0; want && i < (int32_t)(sizeof(builds) / sizeof(builds[0])); i++)
		if (strcmp(want, builds[i].name) == 0 && (ainftp_quant_isa_mask() & (1u << i)))
			isa = i;
	__atomic_store_n(&active, &builds[isa], __ATOMIC_RELAXED);
}

/* ---- the API ------------------------------------------------------------------- */

static uint32_t quant_span(const float *x, uint32_t n, int32_t exp, int16_t *q, uint32_t seed, uint32_t stream)
{
	float scale = pow2f(-exp);
	if (seed == 0)
		return kern()->nearest(x, n, scale, q);
	return kern()->stochastic(x, n, scale, q, stream_key(seed, stream));
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
	return kern()->chunk_exps(x, n, chunk_elems, exps);
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

/* ainftp_chunk_exps and ainftp_pack_chunks in one pass over x: for each
 * chunk c, exps[c] as ainftp_chunk_exps gives it; then, while the chunk is
 * in cache, its packet as ainftp_pack_chunks writes it at out + offsets[c]
 * (none when offsets[c] is AINFTP_NO_OFFSET) at the scale
 * scale[c] = max(pred[c], exps[c]) (exps[c] alone when pred is NULL), which
 * is written too. The packet's bits are ainftp_pack_chunks' at that scale.
 * Returns the non-finite count (as ainftp_chunk_exps) and adds the values
 * clipped to *saturated; AINFTP_QUANT_EINVAL for chunk_elems 0 or above
 * 0xffff, an offset that does not leave room for the chunk's packet in
 * out_len bytes, or out not 2-byte aligned (nothing written). */
uint32_t ainftp_exps_pack(const float *x, uint32_t n, uint32_t chunk_elems, const int8_t *pred, int8_t *exps,
			  int8_t *scale, const uint32_t *offsets, const void *hdr_template, uint8_t *out,
			  uint32_t out_len, uint32_t seed, uint32_t *saturated)
{
	if (chunk_elems == 0 || chunk_elems > 0xffff || ((uintptr_t)out & 1))
		return AINFTP_QUANT_EINVAL;
	uint32_t total = n / chunk_elems + (n % chunk_elems != 0);
	for (uint32_t c = 0; c < total; c++) {
		uint32_t start = c * chunk_elems;
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		if (offsets[c] != AINFTP_NO_OFFSET &&
		    ((offsets[c] & 1) || (uint64_t)offsets[c] + sizeof(struct ainftp_wire_hdr) + 2ull * count > (uint64_t)out_len))
			return AINFTP_QUANT_EINVAL;
	}
	struct ainftp_wire_hdr h;
	memcpy(&h, hdr_template, sizeof(h));
	uint32_t bad = 0, sat = 0;
	for (uint32_t c = 0; c < total; c++) {
		uint32_t start = c * chunk_elems;
		uint32_t count = n - start < chunk_elems ? n - start : chunk_elems;
		bad += kern()->chunk_exps(x + start, count, count, exps + c);
		int8_t e = exps[c];
		if (pred && pred[c] > e && pred[c] <= AINFTP_EXP_MAX)
			e = pred[c];
		scale[c] = e;
		if (offsets[c] == AINFTP_NO_OFFSET)
			continue;
		uint8_t *dst = out + offsets[c];
		uint32_t s = quant_span(x + start, count, e, (int16_t *)(dst + sizeof(h)), seed, c);
		h.chunk = c;
		h.count = (__u16)count;
		h.exp = e;
		h.flags = (__u16)((h.flags & ~AINFTP_F_SATURATED) | (s ? AINFTP_F_SATURATED : 0));
		memcpy(dst, &h, sizeof(h));
		sat += s;
	}
	*saturated += sat;
	return bad;
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
	return ainftp_finish_chunk_to(raw, count, contributors, own, out, NULL);
}

/* ainftp_finish_chunk that also writes the values to `also` (if not NULL) in
 * the same pass: the results-map entry and the RESULT packet's payload at
 * once, instead of a copy of one into the other afterwards. */
int32_t ainftp_finish_chunk_to(const uint32_t *raw, uint32_t count, uint32_t contributors, const int16_t *own,
			       int16_t *out, int16_t *also)
{
	if (count == 0 || count > AINFTP_MAX_ELEMS || contributors > AINFTP_MAX_WORKERS ||
	    (contributors && !raw))
		return -EINVAL;
	return kern()->finish(raw, count, contributors, own, out, also);
}

/* out = q * 2^exp, exact (or the correctly rounded f32 where the value is
 * beyond f32: overflow to Inf, underflow to subnormal). For exp outside
 * [-126, 127] the power is split in two: q * 2^floor(exp/2) is still exact,
 * and the second multiply rounds once. Returns 0, or -EINVAL for an exp
 * outside [AINFTP_DEQ_EXP_MIN, AINFTP_DEQ_EXP_MAX]. */
static int32_t dequantize_with(void (*f)(const int16_t *, uint32_t, float, float, float *), const int16_t *q,
			       uint32_t n, int32_t exp, float *out)
{
	if (exp < AINFTP_DEQ_EXP_MIN || exp > AINFTP_DEQ_EXP_MAX)
		return -EINVAL;
	if (exp >= -126 && exp <= 127) {
		f(q, n, pow2f(exp), 1.0f, out);
		return 0;
	}
	int32_t e1 = (exp - (exp & 1)) / 2;
	f(q, n, pow2f(e1), pow2f(exp - e1), out);
	return 0;
}

int32_t ainftp_dequantize(const int16_t *q, uint32_t n, int32_t exp, float *out)
{
	return dequantize_with(kern()->dequant, q, n, exp, out);
}

/* ainftp_dequantize with streaming stores (the same values), for a gather
 * that writes more than the caches hold. Call ainftp_stream_fence after the
 * last one, before out is read. */
int32_t ainftp_dequantize_stream(const int16_t *q, uint32_t n, int32_t exp, float *out)
{
	return dequantize_with(kern()->dequant_stream, q, n, exp, out);
}

/* A chunk computed in a scratch buffer (the 8- and 4-bit gather's inverse
 * transform, in cache) out to a cold array with streaming stores (the
 * generic build: memcpy). Fence with ainftp_stream_fence. */
void ainftp_copy_stream(float *dst, const float *src, uint32_t n)
{
	kern()->copy_stream(dst, src, n);
}

/* Orders the streaming stores before every later store and load. */
void ainftp_stream_fence(void)
{
#ifdef QUANT_X86
	_mm_sfence();
#else
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}
