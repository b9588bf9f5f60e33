/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* parse.h — kernel-only header parsing for ainftp.bpf.c: a cursor and one
 * small helper per layer, each bounds-checked with the same idiom. */
#ifndef AINFTP_PARSE_H
#define AINFTP_PARSE_H

#define AINFTP_ETH_P_IP 0x0800
#define AINFTP_ETH_P_IPV6 0x86DD
#define AINFTP_ETH_P_8021Q 0x8100
#define AINFTP_ETH_P_8021AD 0x88A8
#define AINFTP_PROTO_UDP 17
#define AINFTP_IP_MF 0x2000
#define AINFTP_IP_OFFSET 0x1fff

struct cursor {
	void *pos;
	void *end;
};

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* Outcome of a parse step: ok, truncated (cannot tell whether the packet is
 * ours), or not ours (another protocol). */
enum parse_rc { PARSE_OK = 0, PARSE_TRUNC, PARSE_OTHER };

/* Ethernet plus at most two VLAN tags (802.1Q / 802.1ad). Returns the
 * ethertype in host order through *proto. */
static __always_inline int parse_eth(struct cursor *c, __u16 *proto)
{
	struct ethhdr *eth = c->pos;
	if ((void *)(eth + 1) > c->end)
		return PARSE_TRUNC;
	c->pos = eth + 1;
	__u16 p = bpf_ntohs(eth->h_proto);
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (p != AINFTP_ETH_P_8021Q && p != AINFTP_ETH_P_8021AD)
			break;
		struct vlan_tag *v = c->pos;
		if ((void *)(v + 1) > c->end)
			return PARSE_TRUNC;
		c->pos = v + 1;
		p = bpf_ntohs(v->proto);
	}
	*proto = p;
	return PARSE_OK;
}

#endif /* AINFTP_PARSE_H */
