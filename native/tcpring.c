// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcpring.c — the plain-TCP baseline's hot loop: an f32 ring all-reduce
 * (reduce-scatter then all-gather, 2(N-1) steps) over two TCP connections per
 * rank, one to the next rank and one from the previous. Both directions run
 * at once on non-blocking sockets, and the steps are pipelined: a step's
 * segment is forwarded chunk by chunk as soon as the previous step has
 * received (and summed) those bytes, so the ring is never idle between steps.
 * Writes are as large as the data allowed to go; reads go straight into the
 * result (all-gather) or into a scratch segment summed as it arrives. When
 * nothing can move a rank sleeps in poll(), or spins with sched_yield() as
 * Open MPI does (ainftp_tcpring_set_spin).
 * Convention (as shim.c): every function returns >= 0 or -errno.
 * Addresses are IPv4 in network byte order (be32); ports are host order.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/socket.h>

/* ---- syscall counters (process-wide) -------------------------------------- */

enum {
	R_SEND_CALLS,	/* send() calls, EAGAIN ones included */
	R_RECV_CALLS,	/* recv() calls, EAGAIN ones included */
	R_POLLS,	/* poll() calls while neither direction could move */
	R_YIELDS,	/* sched_yield() calls instead, when spinning */
	R_BYTES_SENT,	/* payload bytes the kernel took */
	R_BYTES_RECV,	/* payload bytes read */
	R__MAX,
};

static uint64_t counters[R__MAX];
#define COUNT(i, n) __atomic_fetch_add(&counters[i], (uint64_t)(n), __ATOMIC_RELAXED)

/* Copies up to cap counters into out; returns how many exist. */
int ainftp_tcpring_counters(uint64_t *out, uint32_t cap)
{
	for (uint32_t i = 0; i < cap && i < R__MAX; i++)
		out[i] = counters[i];
	return R__MAX;
}

void ainftp_tcpring_counters_reset(void)
{
	memset(counters, 0, sizeof(counters));
}

/* How a rank waits when neither direction can move: 0 sleeps in poll() (what
 * a plain TCP program does), 1 spins with sched_yield() (Open MPI's progress
 * loop with mpi_yield_when_idle=1). Process-wide, like the counters. */
static int spin_mode;

void ainftp_tcpring_set_spin(int on)
{
	spin_mode = on ? 1 : 0;
}

/* ---- connections ------------------------------------------------------------ */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct sockaddr_in ipv4(uint32_t ip_be, uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = ip_be;
	return a;
}

static int set_int(int fd, int level, int name, int v)
{
	return setsockopt(fd, level, name, &v, sizeof(v)) < 0 ? -errno : 0;
}

/* A listening socket on ip:port (ip 0: every address), SO_REUSEADDR so a
 * rerun does not wait out TIME_WAIT. */
int ainftp_tcpring_listen(uint32_t bind_ip_be, uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_in a = ipv4(bind_ip_be, port);
	int err = set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
	if (!err && bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		err = -errno;
	if (!err && listen(fd, 16) < 0)
		err = -errno;
	if (err) {
		close(fd);
		return err;
	}
	return fd;
}

/* Connects to ip:port, trying again every retry_ms while nobody listens there
 * yet (the neighbour may start later) until timeout_ms has passed. Returns the
 * fd, or -errno of the last attempt (-ETIMEDOUT if none failed otherwise). */
int ainftp_tcpring_connect(uint32_t ip_be, uint16_t port, int timeout_ms, int retry_ms)
{
	struct sockaddr_in a = ipv4(ip_be, port);
	int64_t deadline = now_ms() + timeout_ms;
	int last = -ETIMEDOUT;
	for (;;) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
			return fd;
		last = -errno;
		close(fd);
		/* refused (no listener yet), unreachable (its address not up yet) */
		if (last != -ECONNREFUSED && last != -ENETUNREACH && last != -EHOSTUNREACH && last != -ETIMEDOUT &&
		    last != -EINTR)
			return last;
		int64_t left = deadline - now_ms();
		if (left <= 0)
			return last;
		struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)(retry_ms < left ? retry_ms : left) * 1000000L };
		nanosleep(&ts, NULL);
	}
}

/* Accepts one connection within timeout_ms; the peer's address goes to
 * *peer_ip_be. Returns the fd, or -ETIMEDOUT / -errno. */
int ainftp_tcpring_accept(int lfd, int timeout_ms, uint32_t *peer_ip_be)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	int r = poll(&p, 1, timeout_ms);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int fd = accept4(lfd, (struct sockaddr *)&a, &len, SOCK_CLOEXEC);
	if (fd < 0)
		return -errno;
	*peer_ip_be = a.sin_addr.s_addr;
	return fd;
}

/* TCP_NODELAY, non-blocking, and (when > 0) fixed buffer sizes; 0 leaves the
 * kernel's autotuning alone, which is what a plain TCP application gets. */
int ainftp_tcpring_setup(int fd, int nodelay, int sndbuf, int rcvbuf)
{
	int err = set_int(fd, IPPROTO_TCP, TCP_NODELAY, nodelay ? 1 : 0);
	if (!err && sndbuf > 0)
		err = set_int(fd, SOL_SOCKET, SO_SNDBUF, sndbuf);
	if (!err && rcvbuf > 0)
		err = set_int(fd, SOL_SOCKET, SO_RCVBUF, rcvbuf);
	int fl = fcntl(fd, F_GETFL);
	if (!err && (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
		err = -errno;
	return err;
}

int ainftp_tcpring_close(int fd)
{
	return close(fd) < 0 ? -errno : 0;
}

/* Waits until one of pf may move, or gives up after timeout_ms of idleness
 * (*idle_since: when this idle spell began, 0 while moving). Returns > 0 to
 * try again, 0 on timeout, or -errno. */
static int wait_ready(struct pollfd *pf, int np, int timeout_ms, int64_t *idle_since)
{
	if (!spin_mode) {
		COUNT(R_POLLS, 1);
		int r = poll(pf, (nfds_t)np, timeout_ms);
		return r < 0 ? (errno == EINTR ? 1 : -errno) : r;
	}
	int64_t now = now_ms();
	if (!*idle_since)
		*idle_since = now;
	else if (now - *idle_since >= timeout_ms)
		return 0;
	COUNT(R_YIELDS, 1);
	sched_yield();
	return 1; /* try the sockets again */
}

/* Sends (dir 1) or receives (dir 0) exactly len bytes on a non-blocking fd,
 * waiting at most timeout_ms for each move. Peer closed: -ECONNRESET. */
static int xfer_all(int fd, void *buf, uint32_t len, int dir, int timeout_ms)
{
	uint8_t *p = buf;
	uint32_t done = 0;
	int64_t idle_since = 0;
	while (done < len) {
		ssize_t r;
		if (dir) {
			r = send(fd, p + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
			COUNT(R_SEND_CALLS, 1);
		} else {
			r = recv(fd, p + done, len - done, MSG_DONTWAIT);
			COUNT(R_RECV_CALLS, 1);
			if (r == 0)
				return -ECONNRESET;
		}
		if (r > 0) {
			done += (uint32_t)r;
			COUNT(dir ? R_BYTES_SENT : R_BYTES_RECV, r);
			idle_since = 0;
			continue;
		}
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
		struct pollfd pf = { .fd = fd, .events = dir ? POLLOUT : POLLIN };
		int n = wait_ready(&pf, 1, timeout_ms, &idle_since);
		if (n < 0)
			return n;
		if (n == 0)
			return -ETIMEDOUT;
	}
	return 0;
}

int ainftp_tcpring_send_all(int fd, const void *buf, uint32_t len, int timeout_ms)
{
	return xfer_all(fd, (void *)buf, len, 1, timeout_ms);
}

int ainftp_tcpring_recv_all(int fd, void *buf, uint32_t len, int timeout_ms)
{
	return xfer_all(fd, buf, len, 0, timeout_ms);
}

/* Every rank waits until every rank has arrived: a token goes once round the
 * ring from rank 0 (arrival), then a release from rank 0 to rank N-1 (which
 * does not pass it on, so rank 0's stream holds no stray byte). */
int ainftp_tcpring_barrier(int next_fd, int prev_fd, uint32_t rank, uint32_t ranks, int timeout_ms)
{
	uint8_t tok = 0xb1, rel = 0xb2, got = 0;
	int err;
	if (ranks < 2)
		return 0;
	if (rank == 0) {
		if ((err = xfer_all(next_fd, &tok, 1, 1, timeout_ms)) || (err = xfer_all(prev_fd, &got, 1, 0, timeout_ms)))
			return err;
		if (got != tok)
			return -EPROTO;
		return xfer_all(next_fd, &rel, 1, 1, timeout_ms);
	}
	if ((err = xfer_all(prev_fd, &got, 1, 0, timeout_ms)))
		return err;
	if (got != tok)
		return -EPROTO;
	if ((err = xfer_all(next_fd, &tok, 1, 1, timeout_ms)) || (err = xfer_all(prev_fd, &got, 1, 0, timeout_ms)))
		return err;
	if (got != rel)
		return -EPROTO;
	return rank + 1 < ranks ? xfer_all(next_fd, &rel, 1, 1, timeout_ms) : 0;
}

/* ---- the ring all-reduce ------------------------------------------------------ */

/* Segment s of n floats split N ways: [seg_start(s), seg_start(s+1)). */
static inline size_t seg_start(uint32_t s, uint32_t n, uint32_t ranks)
{
	return (size_t)((uint64_t)s * n / ranks);
}

static void add_f32(float *restrict dst, const float *restrict src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] += src[i];
}

/* where[] after a failure: which side (0: sending to next, 1: receiving from
 * prev), and the send and receive steps reached. */
enum { W_SIDE, W_SEND_STEP, W_RECV_STEP, W__MAX };

/*
 * All-reduces buf[0..n) (sum) in place. Step t (0 <= t < 2(N-1)) sends segment
 * (rank - t) mod N and receives segment (rank - t - 1) mod N: summed into buf
 * during the reduce-scatter (t < N-1), stored during the all-gather. The
 * segment sent in step t+1 is the one received in step t, so it may go as far
 * as step t has been received; it goes when at least chunk_bytes of it (or the
 * rest of the segment) may. scratch holds ceil(n/N) floats. Gives up when
 * neither direction moves for timeout_ms.
 */
int ainftp_tcpring_allreduce(int next_fd, int prev_fd, uint32_t rank, uint32_t ranks, float *buf, uint32_t n,
			     float *scratch, uint32_t chunk_bytes, int timeout_ms, uint32_t *where)
{
	if (ranks < 2 || n == 0)
		return 0;
	if (rank >= ranks || chunk_bytes == 0)
		return -EINVAL;
	const uint32_t steps = 2 * (ranks - 1);
	uint32_t st = 0, rt = 0;	     /* send / receive step */
	int64_t idle_since = 0;
	size_t soff = 0, roff = 0, rdone = 0; /* bytes sent, received, summed (or stored) in those steps */
	int err = 0, side = 0;

#define SEND_SEG(t) ((rank + ranks - (t) % ranks) % ranks)
#define RECV_SEG(t) ((rank + 2 * ranks - 1 - (t) % ranks) % ranks)
#define SEG_BYTES(s) ((seg_start((s) + 1, n, ranks) - seg_start((s), n, ranks)) * sizeof(float))

	while (st < steps || rt < steps) {
		int moved = 0;
		/* receive: never past the end of this step, so no byte of the next is read early */
		if (rt < steps) {
			uint32_t seg = RECV_SEG(rt);
			size_t len = SEG_BYTES(seg);
			int reduce = rt < ranks - 1;
			uint8_t *dst = reduce ? (uint8_t *)scratch : (uint8_t *)(buf + seg_start(seg, n, ranks));
			if (roff < len) {
				ssize_t r = recv(prev_fd, dst + roff, len - roff, MSG_DONTWAIT);
				COUNT(R_RECV_CALLS, 1);
				if (r == 0) {
					err = -ECONNRESET;
					side = 1;
					break;
				}
				if (r < 0 && errno != EAGAIN && errno != EINTR) {
					err = -errno;
					side = 1;
					break;
				}
				if (r > 0) {
					COUNT(R_BYTES_RECV, r);
					roff += (size_t)r;
					moved = 1;
				}
			}
			if (reduce) {
				size_t upto = roff & ~(size_t)(sizeof(float) - 1);
				float *out = buf + seg_start(seg, n, ranks);
				add_f32(out + rdone / sizeof(float), scratch + rdone / sizeof(float),
					(upto - rdone) / sizeof(float));
				rdone = upto;
			} else {
				rdone = roff;
			}
			if (rdone == len) {
				rt++;
				roff = rdone = 0;
				moved = 1;
			}
		}
		/* send: step st may go as far as step st-1 has been received */
		if (st < steps) {
			uint32_t seg = SEND_SEG(st);
			size_t len = SEG_BYTES(seg);
			size_t limit = st == 0 || rt >= st ? len : rdone;
			size_t room = limit - soff, rest = len - soff;
			if (rest == 0) {
				st++;
				soff = 0;
				moved = 1;
			} else if (room >= chunk_bytes || room == rest) {
				const uint8_t *src = (const uint8_t *)(buf + seg_start(seg, n, ranks));
				ssize_t r = send(next_fd, src + soff, room, MSG_NOSIGNAL | MSG_DONTWAIT);
				COUNT(R_SEND_CALLS, 1);
				if (r < 0 && errno != EAGAIN && errno != EINTR) {
					err = -errno;
					side = 0;
					break;
				}
				if (r > 0) {
					COUNT(R_BYTES_SENT, r);
					soff += (size_t)r;
					moved = 1;
					if (soff == len) {
						st++;
						soff = 0;
					}
				}
			}
		}
		if (moved) {
			idle_since = 0;
			continue;
		}
		/* neither direction could move: sleep until one can */
		struct pollfd pf[2];
		int np = 0, want_send = 0;
		if (rt < steps)
			pf[np++] = (struct pollfd){ .fd = prev_fd, .events = POLLIN };
		if (st < steps) {
			uint32_t seg = SEND_SEG(st);
			size_t len = SEG_BYTES(seg);
			size_t limit = st == 0 || rt >= st ? len : rdone;
			if (limit - soff >= chunk_bytes || limit == len) {
				pf[np++] = (struct pollfd){ .fd = next_fd, .events = POLLOUT };
				want_send = 1;
			}
		}
		int r = wait_ready(pf, np, timeout_ms, &idle_since);
		if (r < 0) {
			err = r;
			break;
		}
		if (r == 0) {
			err = -ETIMEDOUT;
			side = rt < steps && !want_send ? 1 : 0;
			break;
		}
	}
#undef SEND_SEG
#undef RECV_SEG
#undef SEG_BYTES
	if (where) {
		where[W_SIDE] = (uint32_t)side;
		where[W_SEND_STEP] = st;
		where[W_RECV_STEP] = rt;
	}
	return err;
}
