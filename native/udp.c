// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * udp.c — batched UDP for the collective: many equal-size datagrams to a
 * peer in as few syscalls as the kernel allows (UDP GSO: one sendmsg carries
 * up to 64 segments; several such messages go in one sendmmsg), many
 * datagrams to several peers in one sendmmsg, and recvmmsg into slots.
 * Convention (as shim.c): every function returns >= 0 or -errno. Sockets are
 * non-blocking; a full send buffer is waited for with poll, for a bounded time.
 * Addresses are IPv4 in network byte order (be32); ports are host order.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <linux/sock_diag.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif

/* Largest UDP payload in one IPv4 datagram: 65535 - 20 (IP) - 8 (UDP). It
 * also bounds a GSO message, which is built as one datagram first. */
#define UDP_MAX_PAYLOAD 65507
/* Segments per GSO message: 64 on every kernel with UDP_SEGMENT (newer ones allow 128). */
#define GSO_MAX_SEGS 64
/* Messages per sendmmsg/recvmmsg call (the kernel caps vlen at UIO_MAXIOV = 1024). */
#define BATCH 256
/* How long a send waits in total for a full socket buffer before giving up. */
#define SEND_RETRY_MS 1000

/* ---- syscall counters (process-wide, all sockets) ------------------------ */

enum {
	C_SEND_CALLS,	 /* sendto/sendmsg/sendmmsg calls, failed ones included */
	C_SEND_WAITS,	 /* polls/sleeps after EAGAIN/ENOBUFS (each one syscall) */
	C_RECV_CALLS,	 /* recvmmsg calls */
	C_RECV_POLLS,	 /* polls made by recv_batch before reading */
	C_SENT,		 /* datagrams handed to the kernel */
	C_RECEIVED,	 /* datagrams read */
	C_GSO_MESSAGES,	 /* messages that carried a UDP_SEGMENT cmsg */
	C_GSO_REFUSED,	 /* times the kernel refused GSO and we fell back */
	C_TRUNCATED,	 /* datagrams longer than their receive slot */
	C__MAX,
};

static uint64_t counters[C__MAX];
#define COUNT(i, n) __atomic_fetch_add(&counters[i], (uint64_t)(n), __ATOMIC_RELAXED)

/* Copies up to cap counters into out; returns how many exist. */
int ainftp_udp_counters(uint64_t *out, uint32_t cap)
{
	for (uint32_t i = 0; i < cap && i < C__MAX; i++)
		out[i] = __atomic_load_n(&counters[i], __ATOMIC_RELAXED);
	return C__MAX;
}

void ainftp_udp_counters_reset(void)
{
	for (int i = 0; i < C__MAX; i++)
		__atomic_store_n(&counters[i], 0, __ATOMIC_RELAXED);
}

/* ---- per-socket GSO memory ----------------------------------------------- */

/* Whether UDP_SEGMENT works on a socket, learned from the first try: the
 * kernel refuses it for a route whose device lacks checksum offload (EIO),
 * with SO_NO_CHECK (EINVAL), or on kernels older than 4.18 (ENOPROTOOPT or
 * EINVAL; older kernels also say EINVAL for a segment over the MTU). Sockets
 * past the table always try. */
enum { GSO_UNKNOWN, GSO_WORKS, GSO_OFF };
#define FD_TABLE 4096
static uint8_t gso_state[FD_TABLE];

static int gso_get(int fd)
{
	return fd >= 0 && fd < FD_TABLE ? __atomic_load_n(&gso_state[fd], __ATOMIC_RELAXED) : GSO_UNKNOWN;
}

static void gso_set(int fd, int state)
{
	if (fd >= 0 && fd < FD_TABLE)
		__atomic_store_n(&gso_state[fd], (uint8_t)state, __ATOMIC_RELAXED);
}

/* 0 unknown, 1 works, 2 off (refused by the kernel or disabled). */
int ainftp_udp_gso_state(int fd)
{
	return fd < 0 ? -EBADF : gso_get(fd);
}

/* Turns GSO off (on = 0: every datagram its own message, e.g. to measure
 * sendmmsg alone) or back to "try it" (on = 1). */
int ainftp_udp_set_gso(int fd, int on)
{
	if (fd < 0)
		return -EBADF;
	gso_set(fd, on ? GSO_UNKNOWN : GSO_OFF);
	return 0;
}

/* ---- sockets --------------------------------------------------------------- */

static int set_int(int fd, int level, int name, int v)
{
	return setsockopt(fd, level, name, &v, sizeof(v)) < 0 ? -errno : 0;
}

/* SO_*BUFFORCE passes net.core.[rw]mem_max but needs CAP_NET_ADMIN; without
 * it the plain option is capped at the sysctl (the kernel doubles both). */
static int set_buf(int fd, int force_name, int name, int bytes)
{
	if (bytes <= 0)
		return 0;
	if (set_int(fd, SOL_SOCKET, force_name, bytes) == 0)
		return 0;
	return set_int(fd, SOL_SOCKET, name, bytes);
}

/* Opens a non-blocking IPv4 UDP socket bound to bind_ip_be:port (port 0: an
 * ephemeral one; read it with ainftp_udp_local). rcvbuf/sndbuf <= 0 keep the
 * default size. Returns the fd. */
int ainftp_udp_open(uint32_t bind_ip_be, uint16_t port, int rcvbuf, int sndbuf)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* No SO_REUSEADDR: a UDP port has no TIME_WAIT to step over, and without
	 * it a second node on the same host and port fails with EADDRINUSE
	 * instead of silently sharing the port's packets. */
	int err = set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, rcvbuf);
	if (!err)
		err = set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, sndbuf);
	if (!err) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
		a.sin_addr.s_addr = bind_ip_be;
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
			err = -errno;
	}
	if (err) {
		close(fd);
		return err;
	}
	gso_set(fd, GSO_UNKNOWN);
	return fd;
}

/* out[0] bound address (be32), out[1] bound port. */
int ainftp_udp_local(int fd, uint32_t *out)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	if (getsockname(fd, (struct sockaddr *)&a, &len) < 0)
		return -errno;
	out[0] = a.sin_addr.s_addr;
	out[1] = ntohs(a.sin_port);
	return 0;
}

/* setsockopt with an int value (SO_BROADCAST, IP_TOS, SO_PRIORITY, …). */
int ainftp_udp_set_option(int fd, int level, int name, int value)
{
	return set_int(fd, level, name, value);
}

/* out[0] receive buffer limit, [1] send buffer limit, [2] bytes queued for
 * reading, [3] bytes queued for sending, [4] datagrams dropped because the
 * receive buffer was full, [5] GSO state. All from SO_MEMINFO (the limits
 * are the kernel's doubled values). Returns the count written (6). */
int ainftp_udp_stats(int fd, uint64_t *out)
{
	uint32_t mem[SK_MEMINFO_VARS];
	socklen_t len = sizeof(mem);
	memset(mem, 0, sizeof(mem));
	if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) < 0)
		return -errno;
	out[0] = mem[SK_MEMINFO_RCVBUF];
	out[1] = mem[SK_MEMINFO_SNDBUF];
	out[2] = mem[SK_MEMINFO_RMEM_ALLOC];
	out[3] = mem[SK_MEMINFO_WMEM_ALLOC];
	out[4] = mem[SK_MEMINFO_DROPS];
	out[5] = (uint64_t)gso_get(fd);
	return 6;
}

int ainftp_udp_close(int fd)
{
	if (fd < 0)
		return -EBADF;
	gso_set(fd, GSO_UNKNOWN);
	return close(fd) < 0 ? -errno : 0;
}

/* ---- sending ----------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* After EAGAIN/ENOBUFS: waits a little and returns 0 to retry, or -err once
 * SEND_RETRY_MS have passed since the first wait of this send (*deadline). */
static int wait_room(int fd, int err, int64_t *deadline)
{
	int64_t now = now_ms();
	if (!*deadline)
		*deadline = now + SEND_RETRY_MS;
	if (now >= *deadline)
		return -err;
	COUNT(C_SEND_WAITS, 1);
	if (err == ENOBUFS) {
		/* device queue or memory short: POLLOUT may already be set, so sleep */
		poll(NULL, 0, 1);
	} else {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int64_t left = *deadline - now;
		poll(&p, 1, left < 10 ? (int)left : 10);
	}
	return 0;
}

static int retryable(int err)
{
	return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == EINTR;
}

/* Sends msgs[0..n) and returns how many went, or -errno when none did. A
 * message that fails after others went ends the call; its error comes back
 * from the next one. */
static int send_msgs(int fd, struct mmsghdr *msgs, unsigned n)
{
	unsigned done = 0;
	int64_t deadline = 0;
	while (done < n) {
		int r;
		if (n - done == 1) {
			r = (int)sendmsg(fd, &msgs[done].msg_hdr, 0);
			r = r >= 0 ? 1 : r;
		} else {
			r = sendmmsg(fd, msgs + done, n - done, 0);
		}
		COUNT(C_SEND_CALLS, 1);
		if (r > 0) {
			done += (unsigned)r;
			continue;
		}
		int err = r == 0 ? EAGAIN : errno;
		if (err == EINTR || (retryable(err) && wait_room(fd, err, &deadline) == 0))
			continue;
		return done ? (int)done : -err;
	}
	return (int)done;
}

/* One message per datagram i in [first, first + n): datagram i starts at
 * buf + off(i) and is len(i) long, to dst(i). Shared by the fallback and
 * ainftp_udp_sendmmsg. */
struct plan {
	const uint8_t *buf;
	/* equal-size layout */
	uint32_t seg_size, nsegs, last_size;
	const struct sockaddr_in *one_dst;
	/* scattered layout (NULL for equal-size) */
	const uint32_t *dst_ips, *offsets, *lens;
	const uint16_t *dst_ports;
};

static int send_each_batched(int fd, const struct plan *p, uint32_t n)
{
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_in dst[BATCH];
	uint32_t sent = 0;
	while (sent < n) {
		unsigned k = n - sent < BATCH ? n - sent : BATCH;
		for (unsigned j = 0; j < k; j++) {
			uint32_t i = sent + j;
			memset(&msgs[j], 0, sizeof(msgs[j]));
			if (p->offsets) {
				iov[j].iov_base = (void *)(p->buf + p->offsets[i]);
				iov[j].iov_len = p->lens[i];
				dst[j] = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(p->dst_ports[i]) };
				dst[j].sin_addr.s_addr = p->dst_ips[i];
				msgs[j].msg_hdr.msg_name = &dst[j];
			} else {
				iov[j].iov_base = (void *)(p->buf + (size_t)i * p->seg_size);
				iov[j].iov_len = i + 1 == p->nsegs ? p->last_size : p->seg_size;
				msgs[j].msg_hdr.msg_name = (void *)p->one_dst;
			}
			msgs[j].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
			msgs[j].msg_hdr.msg_iov = &iov[j];
			msgs[j].msg_hdr.msg_iovlen = 1;
		}
		int r = send_msgs(fd, msgs, k);
		if (r < 0)
			return sent ? (int)sent : r;
		sent += (uint32_t)r;
		COUNT(C_SENT, r);
		if ((unsigned)r < k)
			break;
	}
	return (int)sent;
}

union gso_cmsg {
	char buf[CMSG_SPACE(sizeof(uint16_t))];
	struct cmsghdr align;
};

/* GSO: messages of up to `per` segments each, BATCH messages per sendmmsg.
 * Returns datagrams sent or -errno when none were. */
static int send_gso_batched(int fd, const struct plan *p, uint32_t per)
{
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	union gso_cmsg ctl[BATCH];
	uint32_t segs_in[BATCH];
	uint32_t seg = 0;
	while (seg < p->nsegs) {
		unsigned k = 0;
		for (uint32_t s = seg; s < p->nsegs && k < BATCH; k++) {
			uint32_t m = p->nsegs - s < per ? p->nsegs - s : per;
			int last = s + m == p->nsegs;
			memset(&msgs[k], 0, sizeof(msgs[k]));
			iov[k].iov_base = (void *)(p->buf + (size_t)s * p->seg_size);
			iov[k].iov_len = (size_t)(m - 1) * p->seg_size + (last ? p->last_size : p->seg_size);
			msgs[k].msg_hdr.msg_name = (void *)p->one_dst;
			msgs[k].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
			msgs[k].msg_hdr.msg_iov = &iov[k];
			msgs[k].msg_hdr.msg_iovlen = 1;
			if (m > 1) { /* a lone segment is a plain datagram: no MTU check, no cmsg */
				memset(&ctl[k], 0, sizeof(ctl[k]));
				msgs[k].msg_hdr.msg_control = ctl[k].buf;
				msgs[k].msg_hdr.msg_controllen = sizeof(ctl[k].buf);
				struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[k].msg_hdr);
				c->cmsg_level = IPPROTO_UDP;
				c->cmsg_type = UDP_SEGMENT;
				c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
				uint16_t gso = (uint16_t)p->seg_size;
				memcpy(CMSG_DATA(c), &gso, sizeof(gso));
			}
			segs_in[k] = m;
			s += m;
		}
		int r = send_msgs(fd, msgs, k);
		if (r < 0)
			return seg ? (int)seg : r;
		uint32_t went = 0;
		for (int j = 0; j < r; j++) {
			went += segs_in[j];
			if (segs_in[j] > 1)
				COUNT(C_GSO_MESSAGES, 1);
		}
		seg += went;
		COUNT(C_SENT, went);
		if ((unsigned)r < k)
			break;
	}
	return (int)seg;
}

/* EMSGSIZE (6.x: a segment over the route's MTU) is not among these: falling
 * back would send IP fragments, which the XDP program does not sum. */
static int gso_refusal(int err)
{
	return err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP;
}

static struct sockaddr_in ipv4(uint32_t ip_be, uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = ip_be;
	return a;
}

/* Checks a back-to-back datagram layout: 1 when it can be sent, 0 when
 * there is nothing to send, -errno when it is invalid. */
static int check_layout(int fd, const uint8_t *buf, uint32_t seg_size, uint32_t nsegs, uint32_t last_size)
{
	if (fd < 0)
		return -EBADF;
	if (nsegs == 0)
		return 0;
	if (!buf || seg_size == 0 || seg_size > UDP_MAX_PAYLOAD || last_size == 0 || last_size > seg_size)
		return -EINVAL;
	return 1;
}

/* Sends nsegs datagrams laid out back to back in buf (seg_size bytes each,
 * the last last_size bytes) to one destination: with `gso`, UDP GSO messages
 * of at most 64 segments and 65507 bytes, several per sendmmsg, and one
 * message per datagram when the kernel refuses GSO (remembered for the
 * socket); without, always one message per datagram. Returns datagrams
 * sent: fewer than nsegs only when the send buffer stayed full for
 * SEND_RETRY_MS or a later message failed (its error comes next call). */
static int send_to_one(int fd, uint32_t dst_ip_be, uint16_t dst_port, const uint8_t *buf,
		       uint32_t seg_size, uint32_t nsegs, uint32_t last_size, int gso)
{
	int bad = check_layout(fd, buf, seg_size, nsegs, last_size);
	if (bad <= 0)
		return bad;
	struct sockaddr_in dst = ipv4(dst_ip_be, dst_port);
	struct plan p = { .buf = buf, .seg_size = seg_size, .nsegs = nsegs, .last_size = last_size, .one_dst = &dst };
	uint32_t per = UDP_MAX_PAYLOAD / seg_size;
	if (per > GSO_MAX_SEGS)
		per = GSO_MAX_SEGS;
	if (gso && nsegs > 1 && per > 1 && gso_get(fd) != GSO_OFF) {
		int r = send_gso_batched(fd, &p, per);
		if (r > 0 || !gso_refusal(-r)) {
			if (r > 0)
				gso_set(fd, GSO_WORKS);
			return r;
		}
		gso_set(fd, GSO_OFF);
		COUNT(C_GSO_REFUSED, 1);
	}
	return send_each_batched(fd, &p, nsegs);
}

/* send_to_one by GSO where the kernel takes it. */
int ainftp_udp_send_gso(int fd, uint32_t dst_ip_be, uint16_t dst_port, const uint8_t *buf,
			uint32_t seg_size, uint32_t nsegs, uint32_t last_size)
{
	return send_to_one(fd, dst_ip_be, dst_port, buf, seg_size, nsegs, last_size, 1);
}

/* send_to_one, never GSO: for a receiver whose generic-mode XDP program
 * would see a GSO batch that a virtual link carried unsegmented as one
 * frame it cannot parse. */
int ainftp_udp_send_plain(int fd, uint32_t dst_ip_be, uint16_t dst_port, const uint8_t *buf,
			  uint32_t seg_size, uint32_t nsegs, uint32_t last_size)
{
	return send_to_one(fd, dst_ip_be, dst_port, buf, seg_size, nsegs, last_size, 0);
}

/* n datagrams, datagram i = buf[offsets[i] .. + lens[i]) to dst_ips_be[i]:
 * dst_ports[i], BATCH per sendmmsg. Returns datagrams sent. */
int ainftp_udp_sendmmsg(int fd, const uint32_t *dst_ips_be, const uint16_t *dst_ports, const uint8_t *buf,
			const uint32_t *offsets, const uint32_t *lens, uint32_t n)
{
	if (fd < 0)
		return -EBADF;
	if (n == 0)
		return 0;
	if (!dst_ips_be || !dst_ports || !buf || !offsets || !lens)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		if (lens[i] > UDP_MAX_PAYLOAD)
			return -EMSGSIZE;
	struct plan p = { .buf = buf, .dst_ips = dst_ips_be, .dst_ports = dst_ports, .offsets = offsets, .lens = lens };
	return send_each_batched(fd, &p, n);
}

/* The baseline: one sendto() per datagram (same layout as send_gso). */
int ainftp_udp_send_each(int fd, uint32_t dst_ip_be, uint16_t dst_port, const uint8_t *buf,
			 uint32_t seg_size, uint32_t nsegs, uint32_t last_size)
{
	int bad = check_layout(fd, buf, seg_size, nsegs, last_size);
	if (bad <= 0)
		return bad;
	struct sockaddr_in dst = ipv4(dst_ip_be, dst_port);
	int64_t deadline = 0;
	uint32_t i = 0;
	while (i < nsegs) {
		size_t len = i + 1 == nsegs ? last_size : seg_size;
		ssize_t r = sendto(fd, buf + (size_t)i * seg_size, len, 0, (struct sockaddr *)&dst, sizeof(dst));
		COUNT(C_SEND_CALLS, 1);
		if (r >= 0) {
			i++;
			COUNT(C_SENT, 1);
			continue;
		}
		int err = errno;
		if (err == EINTR || (retryable(err) && wait_room(fd, err, &deadline) == 0))
			continue;
		return i ? (int)i : -err;
	}
	return (int)i;
}

/* ---- receiving --------------------------------------------------------------- */

/* Waits up to timeout_ms (0: not at all, < 0: forever) for a datagram, then
 * reads up to max without blocking: datagram i into buf + i * slot_size,
 * its length into lens[i] (the full length: more than slot_size means it was
 * truncated), its source into src_ips_be[i] / src_ports[i]. Returns the
 * count, 0 on timeout. */
int ainftp_udp_recv_batch(int fd, uint8_t *buf, uint32_t slot_size, uint32_t max, int timeout_ms,
			  uint32_t *lens, uint32_t *src_ips_be, uint16_t *src_ports)
{
	if (fd < 0)
		return -EBADF;
	if (max == 0)
		return 0;
	if (!buf || !lens || !src_ips_be || !src_ports || slot_size == 0)
		return -EINVAL;
	if (timeout_ms != 0) {
		int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
		for (;;) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			int wait = timeout_ms < 0 ? -1 : (int)(deadline - now_ms());
			if (timeout_ms > 0 && wait < 0)
				wait = 0;
			int r = poll(&p, 1, wait);
			COUNT(C_RECV_POLLS, 1);
			if (r > 0)
				break;
			if (r == 0)
				return 0;
			if (errno != EINTR)
				return -errno;
		}
	}
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_in src[BATCH];
	uint32_t got = 0;
	while (got < max) {
		unsigned k = max - got < BATCH ? max - got : BATCH;
		for (unsigned j = 0; j < k; j++) {
			memset(&msgs[j], 0, sizeof(msgs[j]));
			iov[j].iov_base = buf + (size_t)(got + j) * slot_size;
			iov[j].iov_len = slot_size;
			msgs[j].msg_hdr.msg_iov = &iov[j];
			msgs[j].msg_hdr.msg_iovlen = 1;
			msgs[j].msg_hdr.msg_name = &src[j];
			msgs[j].msg_hdr.msg_namelen = sizeof(src[j]);
		}
		/* MSG_TRUNC: msg_len is the datagram's real length, so truncation shows */
		int r = recvmmsg(fd, msgs, k, MSG_DONTWAIT | MSG_TRUNC, NULL);
		COUNT(C_RECV_CALLS, 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (got)
				break;
			return -errno;
		}
		for (int j = 0; j < r; j++) {
			uint32_t i = got + (uint32_t)j;
			lens[i] = msgs[j].msg_len;
			src_ips_be[i] = src[j].sin_addr.s_addr;
			src_ports[i] = ntohs(src[j].sin_port);
			if (msgs[j].msg_len > slot_size)
				COUNT(C_TRUNCATED, 1);
		}
		got += (uint32_t)r;
		COUNT(C_RECEIVED, r);
		if ((unsigned)r < k)
			break;
	}
	return (int)got;
}
