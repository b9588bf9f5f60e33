/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bits.h — the 8- and 4-bit lanes of issue 14 (native/bits.c): per-chunk
 * exponents for a narrower range, unbiased stochastic rounding into packed
 * int8 / int4 payloads (with this rank's quantization error), the owner's
 * stochastic requantization of the XDP program's 16-bit lane sums, the way
 * back to f32, and the randomized Hadamard transform (RHT) used at 4 bits.
 * The wire layouts are ainftp_abi.h's (AINFTP_VERSION_INT8 / _INT4).
 */
#ifndef AINFTP_BITS_H
#define AINFTP_BITS_H

#include <stdint.h>

/* Largest magnitude a value takes at 8 and 4 bits (symmetric: -q fits). */
#define AINFTP_QMAX8 127
#define AINFTP_QMAX4 7

/* Largest RHT block: 2^10 values (ten butterfly passes). Blocks never cross
 * a chunk, so a chunk's result holds only its own contributions. */
#define AINFTP_RHT_LOG_MAX 10

uint32_t ainftp_bits_chunk_exps(const float *x, uint32_t n, uint32_t chunk_elems, int8_t *exps, uint32_t bits);
uint32_t ainftp_bits_pack(const float *x, uint32_t n, uint32_t chunk_elems, const uint32_t *chunks, uint32_t nchunks,
			  const int8_t *exps, const void *hdr_template, uint8_t *out, uint32_t stride, uint32_t seed,
			  uint32_t bits, float *resid);
uint32_t ainftp_bits_pack_ef(const float *x, uint32_t n, uint32_t chunk_elems, const uint32_t *chunks, uint32_t nchunks,
			     const int8_t *exps, const void *hdr_template, uint8_t *out, uint32_t stride, uint32_t seed,
			     uint32_t bits, float *resid, uint32_t rht_seed);
int32_t ainftp_bits_finish(const uint16_t *raw, uint32_t count, uint32_t contributors, const uint8_t *own,
			   uint32_t bits, uint32_t key, uint8_t *out, uint8_t *also);
int32_t ainftp_bits_dequantize(const uint8_t *p, uint32_t count, int32_t exp, uint32_t bits, float *out);
uint32_t ainftp_bits_payload(uint32_t bits, uint32_t count);
int32_t ainftp_rht(float *x, uint32_t n, uint32_t chunk_elems, uint32_t seed, uint32_t inverse);
int32_t ainftp_rht_from(const float *src, float *x, uint32_t n, uint32_t chunk_elems, uint32_t seed);
int32_t ainftp_rht_chunk(float *x, uint32_t count, uint32_t chunk, uint32_t seed, uint32_t inverse);
uint32_t ainftp_rht_from_exps(const float *src, float *x, uint32_t n, uint32_t chunk_elems, uint32_t seed, int8_t *exps,
			      uint32_t bits);
uint32_t ainftp_rht_ef_exps(const float *src, const float *add, float *x, float *also, uint32_t n, uint32_t chunk_elems,
			    uint32_t seed, int8_t *exps, uint32_t bits);
uint32_t ainftp_bits_rht_exps_pack(const float *src, const float *add, float *x, uint32_t n, uint32_t chunk_elems,
				   uint32_t rht_seed, uint32_t bits, const int8_t *pred, int8_t *exps, int8_t *scale,
				   const uint32_t *offsets, const void *hdr_template, uint8_t *out, uint32_t out_len,
				   uint32_t seed, float *resid, uint32_t resid_seed, uint32_t *saturated);
int32_t ainftp_rht_isa(void);

#endif /* AINFTP_BITS_H */
