// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * xsk.c — the AF_XDP receive path: a socket whose UMEM is caller memory (an
 * arena region), bound to one queue of the attached interface, into which
 * the XDP program redirects result packets (xsks map). Ring handling lives
 * here (libxdp's header-only ring helpers, with their barriers); libxdp
 * itself is opened lazily, so ainftp runs without it until AF_XDP is asked for.
 * Returns >= 0 or -errno, as the rest of the shim.
 */
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <linux/if_ether.h>
#include <linux/if_xdp.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf.h>
#include <xdp/xsk.h>
#include "../bpf/include/ainftp_abi.h"
#include "quant.h"

/* ---- libxdp, opened on first use ---------------------------------------- */

static struct {
	void *lib;
	typeof(&xsk_umem__create) umem_create;
	typeof(&xsk_socket__create) socket_create;
	typeof(&xsk_socket__delete) socket_delete;
	typeof(&xsk_umem__delete) umem_delete;
	typeof(&xsk_socket__fd) socket_fd;
} xdp;

/* 0, or -ENOENT when libxdp.so.1 is not installed. */
int ainftp_xsk_available(void)
{
	if (xdp.lib)
		return 0;
	void *h = dlopen("libxdp.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h)
		return -ENOENT;
	xdp.umem_create = dlsym(h, "xsk_umem__create");
	xdp.socket_create = dlsym(h, "xsk_socket__create");
	xdp.socket_delete = dlsym(h, "xsk_socket__delete");
	xdp.umem_delete = dlsym(h, "xsk_umem__delete");
	xdp.socket_fd = dlsym(h, "xsk_socket__fd");
	if (!xdp.umem_create || !xdp.socket_create || !xdp.socket_delete || !xdp.umem_delete || !xdp.socket_fd) {
		dlclose(h);
		return -ENOSYS;
	}
	xdp.lib = h;
	return 0;
}

/* ---- a socket ------------------------------------------------------------- */

struct xsk {
	struct xsk_umem *umem;
	struct xsk_socket *sock;
	struct xsk_ring_prod fq;
	struct xsk_ring_cons cq;
	struct xsk_ring_cons rx;
	struct xsk_ring_prod tx;
	uint8_t *area;
	uint64_t size;
	uint32_t frame;
	int owns_area;
	int zerocopy;
	uint64_t stats[5]; /* received, fill kicks, frames given back, foreign/old frames, results not from the chunk's owner */
};

#define RING 2048

static int fill(struct xsk *x, const uint64_t *addrs, uint32_t n)
{
	uint32_t idx;
	if (xsk_ring_prod__reserve(&x->fq, n, &idx) != n)
		return -ENOBUFS;
	for (uint32_t i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&x->fq, idx + i) = addrs[i];
	xsk_ring_prod__submit(&x->fq, n);
	x->stats[2] += n;
	/* need_wakeup: only when the kernel asked for it, a syscall */
	if (xsk_ring_prod__needs_wakeup(&x->fq)) {
		recvfrom(xdp.socket_fd(x->sock), NULL, 0, MSG_DONTWAIT, NULL, NULL);
		x->stats[1]++;
	}
	return 0;
}

/*
 * Opens an AF_XDP socket on ifname/queue with UMEM `area` (size bytes, frames
 * of frame_size; area NULL: memory of our own), tries zero-copy first when
 * asked and falls back to copy mode, puts every frame in the fill ring, and
 * inserts the socket into the program's xsks map (map_fd) at `queue`.
 * mode_out: 1 zero-copy, 0 copy.
 */
int ainftp_xsk_open(const char *ifname, uint32_t queue, void *area, uint64_t size, uint32_t frame_size,
		    int try_zerocopy, int map_fd, struct xsk **out, int *mode_out)
{
	int err = ainftp_xsk_available();
	if (err)
		return err;
	if (frame_size != 2048 && frame_size != 4096)
		return -EINVAL;
	uint64_t nframes = size / frame_size;
	if (nframes < RING)
		return -ENOSPC; /* the fill ring must be kept full */
	struct xsk *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->frame = frame_size;
	x->size = nframes * frame_size;
	if (!area) {
		area = mmap(NULL, x->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (area == MAP_FAILED) {
			free(x);
			return -errno;
		}
		x->owns_area = 1;
	}
	x->area = area;
	struct xsk_umem_config uc = { .fill_size = RING, .comp_size = RING, .frame_size = frame_size,
				      .frame_headroom = 0, .flags = 0 };
	err = xdp.umem_create(&x->umem, area, x->size, &x->fq, &x->cq, &uc);
	if (err)
		goto fail;
	struct xsk_socket_config sc = { .rx_size = RING, .tx_size = 64,
					.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD };
	err = -EOPNOTSUPP;
	if (try_zerocopy) {
		sc.bind_flags = XDP_USE_NEED_WAKEUP | XDP_ZEROCOPY;
		err = xdp.socket_create(&x->sock, ifname, queue, x->umem, &x->rx, &x->tx, &sc);
		x->zerocopy = err == 0;
	}
	if (err) {
		sc.bind_flags = XDP_USE_NEED_WAKEUP | XDP_COPY;
		err = xdp.socket_create(&x->sock, ifname, queue, x->umem, &x->rx, &x->tx, &sc);
	}
	if (err)
		goto fail;
	int fd = xdp.socket_fd(x->sock);
	if (bpf_map_update_elem(map_fd, &queue, &fd, 0) < 0) {
		err = -errno;
		goto fail;
	}
	/* every frame to the fill ring (the ring holds RING; the rest wait) */
	uint64_t addrs[RING];
	for (uint32_t i = 0; i < RING; i++)
		addrs[i] = (uint64_t)i * frame_size;
	if ((err = fill(x, addrs, RING)))
		goto fail;
	x->stats[2] = 0;
	*out = x;
	*mode_out = x->zerocopy;
	return 0;
fail:
	if (x->sock)
		xdp.socket_delete(x->sock);
	if (x->umem)
		xdp.umem_delete(x->umem);
	if (x->owns_area)
		munmap(x->area, x->size);
	free(x);
	return err < 0 ? err : -err;
}

int ainftp_xsk_fd(struct xsk *x)
{
	return xdp.socket_fd(x->sock);
}

/* out[0] received, [1] fill-ring kicks (syscalls), [2] frames given back, [3] frames dropped as old/foreign */
void ainftp_xsk_stats(struct xsk *x, uint64_t *out)
{
	memcpy(out, x->stats, sizeof(x->stats));
}

/* The kernel's count of frames the program redirected to this socket that
 * never reached its RX ring (XDP_STATISTICS): out[0] no fill-ring frame to
 * copy into (rx_dropped), [1] the RX ring full (rx_ring_full), [2] fill ring
 * found empty (rx_fill_ring_empty_descs). Returns 0 or -errno. */
int ainftp_xsk_kernel_stats(struct xsk *x, uint64_t *out)
{
	struct xdp_statistics st;
	socklen_t len = sizeof(st);
	memset(&st, 0, sizeof(st));
	if (getsockopt(xdp.socket_fd(x->sock), SOL_XDP, XDP_STATISTICS, &st, &len) < 0)
		return -errno;
	out[0] = st.rx_dropped;
	out[1] = st.rx_ring_full;
	out[2] = st.rx_fill_ring_empty_descs;
	return 0;
}

/*
 * Reads every result packet waiting in the RX ring: a RESULT of job `job`
 * and round `round` for a chunk < nchunks not yet done is dequantized from
 * the UMEM frame straight into out (chunk c at out + c*chunk_elems), marked
 * in done[] and listed in newly[] (up to cap); anything else (an old round,
 * a duplicate) is dropped. Every frame goes back to the fill ring. Returns
 * the number of new results.
 */
/* Dequantizes the waiting results of (job, round) into out. With a plan
 * (k > 0: chunk c is owned by owners[c % k]), a result is taken only from
 * its chunk's owner, as the program's round_plan check does on the map
 * path (issue 16): any other is dropped and counted (stats[4]). */
int32_t ainftp_xsk_results(struct xsk *x, uint32_t job, uint32_t round, uint32_t nchunks, uint32_t chunk_elems,
			   float *out, uint32_t n_out, uint8_t *done, uint32_t *newly, uint32_t cap,
			   const uint8_t *owners, uint32_t k)
{
	uint32_t fresh = 0;
	uint64_t addrs[64];
	for (;;) {
		uint32_t idx, n = xsk_ring_cons__peek(&x->rx, 64, &idx);
		if (!n)
			break;
		for (uint32_t i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&x->rx, idx + i);
			uint8_t *p = xsk_umem__get_data(x->area, d->addr);
			addrs[i] = xsk_umem__extract_addr(d->addr);
			x->stats[0]++;
			/* the program validated the frame; find the ainftp header */
			uint32_t off = sizeof(struct ethhdr);
			uint16_t proto = (uint16_t)(p[12] << 8 | p[13]);
			while ((proto == 0x8100 || proto == 0x88a8) && off + 4 <= d->len) {
				proto = (uint16_t)(p[off + 2] << 8 | p[off + 3]);
				off += 4;
			}
			if (proto == 0x0800 && off + sizeof(struct iphdr) <= d->len)
				off += ((const struct iphdr *)(p + off))->ihl * 4;
			else if (proto == 0x86dd)
				off += 40;
			else
				goto skip;
			off += sizeof(struct udphdr);
			if (off + sizeof(struct ainftp_wire_hdr) > d->len)
				goto skip;
			const struct ainftp_wire_hdr *h = (const void *)(p + off);
			uint64_t start = (uint64_t)h->chunk * chunk_elems;
			if (h->type != AINFTP_PKT_RESULT || h->job_id != job || h->round != round || h->chunk >= nchunks ||
			    done[h->chunk] || start >= n_out ||
			    off + sizeof(*h) + 2u * h->count > d->len)
				goto skip;
			if (k && (!owners || h->rank != owners[h->chunk % k])) {
				x->stats[4]++;
				continue;
			}
			uint32_t want = n_out - start < chunk_elems ? (uint32_t)(n_out - start) : chunk_elems;
			if (h->count != want || ainftp_dequantize((const int16_t *)(h + 1), want, h->exp, out + start) < 0)
				goto skip;
			done[h->chunk] = 1;
			if (fresh < cap)
				newly[fresh] = h->chunk;
			fresh++;
			continue;
		skip:
			x->stats[3]++;
		}
		xsk_ring_cons__release(&x->rx, n);
		int err = fill(x, addrs, n);
		if (err)
			return err;
	}
	return (int32_t)fresh;
}

void ainftp_xsk_close(struct xsk *x)
{
	if (!x)
		return;
	xdp.socket_delete(x->sock);
	xdp.umem_delete(x->umem);
	if (x->owns_area)
		munmap(x->area, x->size);
	free(x);
}
