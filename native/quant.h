/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * quant.h — the quantizer kernels of native/quant.c: f32 gradients to int16
 * at a shared power-of-two scale per chunk, the chunk owner's requantization
 * of the XDP program's biased int32 sums, and the way back to f32. Each
 * function works on whole arrays and is called once per round (or once per
 * chunk) through bun:ffi (native/quant.ts), never once per element.
 */
#ifndef AINFTP_QUANT_H
#define AINFTP_QUANT_H

#include <stdint.h>

/* Scale exponents a sender may use: 2^-e and 2^e are both representable as
 * f32 for e in this range, so x * 2^-e is exact. An all-zero chunk gets
 * AINFTP_EXP_MIN. */
#define AINFTP_EXP_MIN (-126)
#define AINFTP_EXP_MAX 127

/* Exponents ainftp_dequantize accepts: a result's exp is a sender's exp plus
 * the owner's shift k (<= 17), and any e in this range splits into two
 * factors that keep q * 2^e exact until the final, correctly rounded step. */
#define AINFTP_DEQ_EXP_MIN (-252)
#define AINFTP_DEQ_EXP_MAX 224

/* The largest magnitude a quantized value takes: symmetric, so that -q never
 * overflows and a biased lane holds q + 32768 in [1, 65535]. */
#define AINFTP_QMAX 32767

/* ainftp_pack_chunks / ainftp_quantize return this for invalid arguments. */
#define AINFTP_QUANT_EINVAL 0xffffffffu

/* Builds of the kernels (native/quant.c): the same results, bit for bit, at
 * different speeds. The best one this CPU runs is chosen at load time unless
 * AINFTP_QUANT_ISA names another (generic, avx2, avx512). */
#define AINFTP_ISA_GENERIC 0 /* plain C, vectorized by the compiler for the baseline ISA */
#define AINFTP_ISA_AVX2 1
#define AINFTP_ISA_AVX512 2 /* avx512f, bw, vl and dq */
#define AINFTP_ISA__COUNT 3

uint32_t ainftp_quant_isa_mask(void);
int32_t ainftp_quant_set_isa(int32_t isa);
int32_t ainftp_quant_isa(void);

uint32_t ainftp_chunk_exps(const float *x, uint32_t n, uint32_t chunk_elems, int8_t *exps);
uint32_t ainftp_pack_chunks(const float *x, uint32_t n, uint32_t chunk_elems, const uint32_t *chunks,
			    uint32_t nchunks, const int8_t *exps, const void *hdr_template, uint8_t *out,
			    uint32_t stride, uint32_t seed);
/* ainftp_exps_pack's offset for a chunk it only takes the exponent of. */
#define AINFTP_NO_OFFSET 0xffffffffu
uint32_t ainftp_exps_pack(const float *x, uint32_t n, uint32_t chunk_elems, const int8_t *pred, int8_t *exps,
			  int8_t *scale, const uint32_t *offsets, const void *hdr_template, uint8_t *out,
			  uint32_t out_len, uint32_t seed, uint32_t *saturated);
uint32_t ainftp_quantize(const float *x, uint32_t n, int32_t exp, int16_t *q, uint32_t seed);
int32_t ainftp_finish_chunk(const uint32_t *raw, uint32_t count, uint32_t contributors, const int16_t *own,
			    int16_t *out);
int32_t ainftp_finish_chunk_to(const uint32_t *raw, uint32_t count, uint32_t contributors, const int16_t *own,
			       int16_t *out, int16_t *also);
int32_t ainftp_dequantize(const int16_t *q, uint32_t n, int32_t exp, float *out);
int32_t ainftp_dequantize_stream(const int16_t *q, uint32_t n, int32_t exp, float *out);
void ainftp_stream_fence(void);
void ainftp_copy_stream(float *dst, const float *src, uint32_t n);

#endif /* AINFTP_QUANT_H */
