// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * arena.c — memory for the arena (src/arena.ts): anonymous mappings on 4 KB
 * or 2 MB pages, hugetlbfs files shared between processes, the NUMA node of
 * an address, and the two kernels of bench/arena.ts (pointer chase, first
 * touch). Convention (as shim.c): every int function returns >= 0 or -errno;
 * MAP_FAILED is compared here, never in JS (bun:ffi sees it as 2^64 - 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
/* get_mempolicy flags (linux/mempolicy.h; no libnuma) */
#define AINFTP_MPOL_F_NODE (1 << 0)
#define AINFTP_MPOL_F_ADDR (1 << 1)

#define SMALL_PAGE 4096
#define LINE 64

/* Faults every page of [p, p + len) in for writing. MADV_POPULATE_WRITE
 * (5.14+) does it in one call; older kernels get one write per page. */
static int populate_write(void *p, size_t len, size_t page)
{
	if (madvise(p, len, MADV_POPULATE_WRITE) == 0)
		return 0;
	if (errno != EINVAL)
		return -errno;
	volatile uint8_t *b = p;
	for (size_t off = 0; off < len; off += page)
		__atomic_fetch_add(&b[off], 0, __ATOMIC_RELAXED);
	return 0;
}

/* A private anonymous mapping of len bytes: huge = 1 on 2 MB hugetlb pages
 * (len a multiple of 2 MB; the kernel reserves every page at mmap, so a short
 * pool is ENOMEM here and never SIGBUS later), huge = 0 on 4 KB pages with
 * transparent huge pages turned off for it (so the page size is what the
 * caller asked for, and the bench compares what it says it compares).
 * populate = 1 faults every page in for writing before returning. */
int ainftp_mmap_anon(size_t len, int huge, int populate, void **out)
{
	*out = NULL;
	if (len == 0)
		return -EINVAL;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS;
	if (huge)
		flags |= MAP_HUGETLB | MAP_HUGE_2MB | (populate ? MAP_POPULATE : 0);
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	if (!huge) {
		/* before any fault: a THP fault would give this range 2 MB pages */
		madvise(p, len, MADV_NOHUGEPAGE);
		int err = populate ? populate_write(p, len, SMALL_PAGE) : 0;
		if (err) {
			munmap(p, len);
			return err;
		}
	}
	*out = p;
	return 0;
}

/* A shared mapping of the file at path (created 0600 if missing, and removed
 * again if the mapping then fails; grown to len if shorter; never shrunk,
 * since another process may map it). Meant for a
 * hugetlbfs file, where len must be a multiple of the huge page size; any
 * file that can be mmapped works. */
int ainftp_mmap_file(const char *path, size_t len, int populate, void **out)
{
	*out = NULL;
	if (len == 0)
		return -EINVAL;
	int created = 1;
	int fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0 && errno == EEXIST) {
		created = 0;
		fd = open(path, O_RDWR | O_CLOEXEC);
	}
	if (fd < 0)
		return -errno;
	struct stat st;
	int err = 0;
	if (fstat(fd, &st) < 0)
		err = -errno;
	else if ((uint64_t)st.st_size < len && ftruncate(fd, (off_t)len) < 0)
		err = -errno;
	void *p = MAP_FAILED;
	if (!err) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
		if (p == MAP_FAILED)
			err = -errno;
	}
	close(fd); /* the mapping keeps the file */
	if (err) {
		if (created) /* leave nothing behind that a retry would mistake for a shared file */
			unlink(path);
		return err;
	}
	*out = p;
	return 0;
}

int ainftp_munmap2(void *addr, size_t len)
{
	return munmap(addr, len) < 0 ? -errno : 0;
}

/* The NUMA node holding the page at addr, or -errno (-ENOSYS without NUMA
 * support). The page is first faulted in for writing, with an atomic add of
 * zero that leaves shared data intact, so the answer is where the data lives
 * and not the shared zero page. */
int ainftp_numa_node(void *addr)
{
	__atomic_fetch_add((volatile uint8_t *)addr, 0, __ATOMIC_RELAXED);
	int node = -1;
	if (syscall(SYS_get_mempolicy, &node, NULL, 0UL, addr, (unsigned long)(AINFTP_MPOL_F_NODE | AINFTP_MPOL_F_ADDR)) < 0)
		return -errno;
	return node;
}

/* ---- bench kernels ----------------------------------------------------------- */

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Links every cache line of buf into one random cycle (Sattolo's shuffle,
 * built in place: line i first holds the index of its successor, then its
 * address), starting at buf. The buffer is overwritten. Returns the number
 * of lines, or -EINVAL when buf cannot hold two. */
int64_t ainftp_chase_prepare(void *buf, size_t len, uint64_t seed)
{
	uint64_t n = len / LINE;
	if (!buf || n < 2)
		return -EINVAL;
	uint8_t *base = buf;
#define SLOT(i) (*(uint64_t *)(base + (i) * LINE))
	for (uint64_t i = 0; i < n; i++)
		SLOT(i) = i;
	uint64_t s = seed;
	for (uint64_t i = n - 1; i > 0; i--) {
		uint64_t j = (uint64_t)(((unsigned __int128)splitmix64(&s) * i) >> 64); /* j in [0, i) */
		uint64_t t = SLOT(i);
		SLOT(i) = SLOT(j);
		SLOT(j) = t;
	}
	for (uint64_t i = 0; i < n; i++)
		SLOT(i) = (uint64_t)(uintptr_t)(base + SLOT(i) * LINE);
#undef SLOT
	return (int64_t)n;
}

/* Follows `steps` links of a cycle made by ainftp_chase_prepare, from buf.
 * Every load depends on the previous one, so the time per step is the full
 * latency of a random access: the cache miss plus, when the TLB misses, the
 * page walk. Returns ns per access. */
double ainftp_chase_run(void *buf, uint64_t steps)
{
	void *volatile sink;
	void **p = buf;
	double t0 = now_ns();
	for (uint64_t k = 0; k < steps; k++)
		p = (void **)*p;
	double t1 = now_ns();
	sink = p;
	(void)sink;
	return steps ? (t1 - t0) / (double)steps : 0.0;
}

/* Random access latency over buf: prepare (not timed), then run. Returns ns
 * per access, or -1 when buf cannot hold two cache lines. */
double ainftp_chase(void *buf, size_t len, uint64_t steps, uint64_t seed)
{
	if (ainftp_chase_prepare(buf, len, seed) < 0)
		return -1.0;
	return ainftp_chase_run(buf, steps);
}

/* First-touch cost: ns to write one byte in every 4 KB of buf (on a mapping
 * that was not populated, the page faults and zeroing of its pages). */
double ainftp_touch(void *buf, size_t len)
{
	volatile uint8_t *b = buf;
	double t0 = now_ns();
	for (size_t off = 0; off < len; off += SMALL_PAGE)
		b[off] = 1;
	return now_ns() - t0;
}
