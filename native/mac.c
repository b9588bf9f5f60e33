// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * mac.c — the job key's MAC for the control plane: SipHash-2-4 (Aumasson and
 * Bernstein, 2012), a PRF with a 128-bit key and a 64-bit tag, written from
 * the paper and checked against its reference vectors (test/mac.test.ts).
 *
 * A control packet under a key carries the tag of its header and payload in
 * 8 bytes after the payload (the header's `count` still says the payload's
 * length, so an unkeyed reader sees a trailing 8 bytes and drops it). A tag
 * is compared in constant time.
 */
#include <stdint.h>
#include <string.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include "../bpf/include/ainftp_abi.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static inline uint64_t load_le64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8); /* little-endian hosts only, as the whole wire format */
	return v;
}

#define SIPROUND                                                   \
	do {                                                       \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                 \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                 \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
	} while (0)

/* SipHash-2-4 of msg[0..len) under the 16-byte key. */
uint64_t ainftp_siphash24_u64(const uint8_t *key, const uint8_t *msg, uint32_t len)
{
	uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
	uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
	uint32_t full = len & ~7u;
	for (uint32_t i = 0; i < full; i += 8) {
		uint64_t m = load_le64(msg + i);
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	uint64_t b = (uint64_t)len << 56;
	for (uint32_t i = 0; i < (len & 7); i++)
		b |= (uint64_t)msg[full + i] << (8 * i);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* The same, written to out[0..8) little-endian (bun:ffi-friendly). */
void ainftp_siphash24(const uint8_t *key, const uint8_t *msg, uint32_t len, uint8_t *out)
{
	uint64_t t = ainftp_siphash24_u64(key, msg, len);
	memcpy(out, &t, 8);
}

/* Appends the tag of pkt[0..len) at pkt + len (the caller leaves 8 bytes). */
void ainftp_mac_seal(const uint8_t *key, uint8_t *pkt, uint32_t len)
{
	ainftp_siphash24(key, pkt, len, pkt + len);
}

/* 1 when pkt[len..len+8) is the tag of pkt[0..len), else 0; constant time. */
int32_t ainftp_mac_verify(const uint8_t *key, const uint8_t *pkt, uint32_t len)
{
	uint8_t want[8];
	ainftp_siphash24(key, pkt, len, want);
	uint8_t diff = 0;
	for (int i = 0; i < 8; i++)
		diff |= want[i] ^ pkt[len + i];
	return diff == 0;
}

/*
 * The data plane's MAC (ainftp_abi.h, checked by the XDP program): seals n
 * CONTRIB/RESULT packets laid out every `stride` bytes from pkts, each with
 * the tag of its header (full = 0) or header and payload (full = 1) written
 * right after its payload (32 + its payload's bytes at the width its
 * version names: ainftp_payload_bytes). Call it after the last change to
 * a packet (a retransmission flag included). Returns n, or -1 (nothing
 * sealed from that packet on) if a packet's tag would not fit its stride.
 */
int32_t ainftp_seal_packets(const uint8_t *key, uint8_t *pkts, uint32_t n, uint32_t stride, uint32_t full)
{
	for (uint32_t i = 0; i < n; i++) {
		uint8_t *p = pkts + (size_t)i * stride;
		uint16_t count;
		memcpy(&count, p + 22, 2); /* ainftp_wire_hdr.count */
		uint32_t payload = ainftp_payload_bytes(p[4], count); /* version: the lane width */
		if (32u + payload + 8u > stride)
			return -1;
		ainftp_siphash24(key, p, 32u + (full ? payload : 0u), p + 32 + payload);
	}
	return (int32_t)n;
}
