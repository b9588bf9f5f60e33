// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * shim.c — the few libbpf/libc calls that bun:ffi cannot make safely on its
 * own: functions that report errors through errno (pointer returns), that
 * take LIBBPF_OPTS structs, or that call back into C (ring buffers).
 * Convention: every function returns >= 0 on success and -errno on failure.
 * Everything else is called directly from native/libbpf.ts and native/libc.ts.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <net/if.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include "../bpf/include/ainftp_abi.h"

/* ---- libbpf's messages, kept for error reports (verifier log tail) ------ */

static char log_buf[64 * 1024];
static size_t log_len;

static int capture_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	/* One message can hold the whole verifier log: size it first. */
	va_list aq;
	va_copy(aq, ap);
	int n = vsnprintf(NULL, 0, fmt, aq);
	va_end(aq);
	if (n <= 0)
		return 0;
	char *line = malloc((size_t)n + 1);
	if (!line)
		return 0;
	vsnprintf(line, (size_t)n + 1, fmt, ap);
	const char *src = line;
	if ((size_t)n >= sizeof(log_buf)) { /* keep the tail: the verdict is at the end */
		src = line + n - (sizeof(log_buf) - 1);
		n = sizeof(log_buf) - 1;
	}
	if (log_len + n >= sizeof(log_buf)) {
		size_t drop = log_len + n - sizeof(log_buf) + 1;
		if (drop > log_len)
			drop = log_len;
		memmove(log_buf, log_buf + drop, log_len - drop);
		log_len -= drop;
	}
	memcpy(log_buf + log_len, src, n);
	log_len += n;
	log_buf[log_len] = 0;
	free(line);
	return 0;
}

void ainftp_log_reset(void)
{
	libbpf_set_print(capture_print);
	log_len = 0;
	log_buf[0] = 0;
}

/* Copies libbpf's captured messages into out (NUL-terminated); returns length. */
int ainftp_log_read(char *out, int cap)
{
	if (cap <= 0)
		return 0;
	size_t n = log_len < (size_t)cap - 1 ? log_len : (size_t)cap - 1;
	memcpy(out, log_buf + log_len - n, n);
	out[n] = 0;
	return (int)n;
}

/* ---- objects ------------------------------------------------------------- */

/* Opens an ELF image held in memory (a compiled binary's embedded file lives
 * under /$bunfs, which libbpf cannot open by path). Writes the object pointer
 * to *out. */
int ainftp_obj_open(const void *buf, size_t len, const char *name, struct bpf_object **out)
{
	ainftp_log_reset();
	LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name);
	struct bpf_object *obj = bpf_object__open_mem(buf, len, &opts);
	if (!obj)
		return errno ? -errno : -EINVAL;
	*out = obj;
	return 0;
}

/* Sets a `const volatile` variable of .rodata by name before load. */
int ainftp_obj_set_rodata(struct bpf_object *obj, const char *var, const void *val, size_t len)
{
	struct btf *btf = bpf_object__btf(obj);
	struct bpf_map *map = NULL, *m;
	bpf_object__for_each_map(m, obj) {
		const char *n = bpf_map__name(m);
		size_t nl = strlen(n);
		if (nl >= 7 && strcmp(n + nl - 7, ".rodata") == 0)
			map = m;
	}
	if (!btf || !map)
		return -ENOENT;
	int sec_id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (sec_id < 0)
		return -ENOENT;
	const struct btf_type *sec = btf__type_by_id(btf, sec_id);
	const struct btf_var_secinfo *vs = btf_var_secinfos(sec);
	size_t size = 0;
	char *data = (char *)bpf_map__initial_value(map, &size);
	if (!data)
		return -ENOENT;
	for (int i = 0; i < btf_vlen(sec); i++, vs++) {
		const struct btf_type *t = btf__type_by_id(btf, vs->type);
		if (strcmp(btf__name_by_offset(btf, t->name_off), var) != 0)
			continue;
		if (vs->size != len || vs->offset + len > size)
			return -EINVAL;
		memcpy(data + vs->offset, val, len);
		return 0;
	}
	return -ENOENT;
}

int ainftp_obj_set_max_entries(struct bpf_object *obj, const char *map_name, uint32_t n)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, map_name);
	if (!map)
		return -ENOENT;
	return bpf_map__set_max_entries(map, n);
}

/*
 * The verifier gives up with EAGAIN when a signal is pending, and libbpf
 * tries a program only five times: under a sampling profiler (Bun's
 * --cpu-prof, py-spy, perf's signals) every try was interrupted and open
 * failed with "the verifier rejected the XDP program". Signals wait while
 * the object loads (a few ms) and arrive after.
 */
int ainftp_obj_load(struct bpf_object *obj)
{
	sigset_t all, old;
	ainftp_log_reset();
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int err = bpf_object__load(obj);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return err < 0 ? err : 0;
}

/* File descriptor of the object's first program. */
int ainftp_obj_prog_fd(struct bpf_object *obj)
{
	struct bpf_program *prog = bpf_object__next_program(obj, NULL);
	if (!prog)
		return -ENOENT;
	return bpf_program__fd(prog);
}

/* File descriptor of the object's .rodata map (holds listen_port; pinned so
 * `status` can show the port of an attached program). */
int ainftp_obj_rodata_fd(struct bpf_object *obj)
{
	struct bpf_map *m;
	bpf_object__for_each_map(m, obj) {
		const char *n = bpf_map__name(m);
		size_t nl = strlen(n);
		if (nl >= 7 && strcmp(n + nl - 7, ".rodata") == 0)
			return bpf_map__fd(m);
	}
	return -ENOENT;
}

/* ---- attach -------------------------------------------------------------- */

/* Attaches prog_fd to ifindex as an XDP bpf_link; flags are XDP_FLAGS_*
 * (XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE). A link detaches itself when its
 * last reference (fd or pin) goes, so a crash before pinning leaves nothing. */
int ainftp_xdp_link(int prog_fd, int ifindex, uint32_t flags)
{
	LIBBPF_OPTS(bpf_link_create_opts, opts, .flags = flags);
	int fd = bpf_link_create(prog_fd, ifindex, BPF_XDP, &opts);
	return fd < 0 ? -errno : fd;
}

/* out[0] attach mode (XDP_ATTACHED_*), out[1] prog id, out[2] driver-mode
 * prog id, out[3] generic-mode prog id, out[4] offload prog id. */
int ainftp_xdp_query(int ifindex, uint32_t *out)
{
	LIBBPF_OPTS(bpf_xdp_query_opts, opts);
	int err = bpf_xdp_query(ifindex, 0, &opts);
	if (err < 0)
		return err;
	out[0] = opts.attach_mode;
	out[1] = opts.prog_id;
	out[2] = opts.drv_prog_id;
	out[3] = opts.skb_prog_id;
	out[4] = opts.hw_prog_id;
	return 0;
}

/* Detaches whatever XDP program (legacy netlink attach) is on ifindex. */
int ainftp_xdp_detach(int ifindex, uint32_t flags)
{
	int err = bpf_xdp_detach(ifindex, flags, NULL);
	return err < 0 ? err : 0;
}

/* out[0] link id, out[1] prog id, out[2] ifindex (XDP links only). */
int ainftp_link_info(int fd, uint32_t *out)
{
	struct bpf_link_info info;
	uint32_t len = sizeof(info);
	memset(&info, 0, sizeof(info));
	int err = bpf_obj_get_info_by_fd(fd, &info, &len);
	if (err < 0)
		return -errno;
	out[0] = info.id;
	out[1] = info.prog_id;
	out[2] = info.type == BPF_LINK_TYPE_XDP ? info.xdp.ifindex : 0;
	return 0;
}

/* out[0] type, [1] key size, [2] value size, [3] max entries, [4] flags, [5] id */
int ainftp_map_info(int fd, uint32_t *out)
{
	struct bpf_map_info info;
	uint32_t len = sizeof(info);
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &len) < 0)
		return -errno;
	out[0] = info.type;
	out[1] = info.key_size;
	out[2] = info.value_size;
	out[3] = info.max_entries;
	out[4] = info.map_flags;
	out[5] = info.id;
	return 0;
}

/* out[0] prog id, out[1] run count (if stats enabled), out[2] type */
int ainftp_prog_info(int fd, uint32_t *out)
{
	struct bpf_prog_info info;
	uint32_t len = sizeof(info);
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &len) < 0)
		return -errno;
	out[0] = info.id;
	out[1] = (uint32_t)info.run_cnt;
	out[2] = info.type;
	return 0;
}

int ainftp_obj_pin(int fd, const char *path)
{
	return bpf_obj_pin(fd, path) < 0 ? -errno : 0;
}

int ainftp_obj_get(const char *path)
{
	int fd = bpf_obj_get(path);
	return fd < 0 ? -errno : fd;
}

/* ---- memory -------------------------------------------------------------- */

/* mmaps a BPF_F_MMAPABLE array; writes the address to *out. */
int ainftp_map_mmap(int fd, size_t len, int writable, void **out)
{
	int prot = PROT_READ | (writable ? PROT_WRITE : 0);
	void *p = mmap(NULL, len, prot, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

int ainftp_munmap(void *p, size_t len)
{
	return munmap(p, len) < 0 ? -errno : 0;
}

/* ---- test runs ----------------------------------------------------------- */

/* Runs prog_fd on one packet `repeat` times (BPF_PROG_TEST_RUN), as if it
 * arrived on `ifindex` (an xdp_md ctx with ingress_ifindex set, RX queue 0;
 * the device must exist in the caller's network namespace), or with 0 on the
 * namespace's loopback device, as the kernel does without a ctx.
 * res[0] XDP action, res[1] ns per run, res[2] output length. */
int ainftp_test_run_on(int prog_fd, const void *in, uint32_t in_len, void *out, uint32_t out_cap,
		       uint32_t repeat, uint32_t ifindex, uint32_t *res)
{
	struct xdp_md ctx = { .data = 0, .data_end = in_len, .ingress_ifindex = ifindex };
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = in, .data_size_in = in_len,
		    .data_out = out, .data_size_out = out_cap, .repeat = repeat,
		    .ctx_in = ifindex ? &ctx : NULL, .ctx_size_in = ifindex ? sizeof(ctx) : 0);
	int err = bpf_prog_test_run_opts(prog_fd, &opts);
	if (err < 0)
		return -errno;
	res[0] = opts.retval;
	res[1] = opts.duration;
	res[2] = opts.data_size_out;
	return 0;
}

int ainftp_test_run(int prog_fd, const void *in, uint32_t in_len, void *out, uint32_t out_cap,
		    uint32_t repeat, uint32_t *res)
{
	return ainftp_test_run_on(prog_fd, in, in_len, out, out_cap, repeat, 0, res);
}

/* ---- ring buffer --------------------------------------------------------- */

/* Events are copied into a caller-owned array during poll, so no JS
 * callback runs inside libbpf. */
struct ring {
	struct ring_buffer *rb;
	uint8_t *out;
	int cap;
	int n;
	size_t rec; /* bytes per record copied out: an event, or a contribution */
};

/* Stops consuming once `out` is full: libbpf advances the consumer past a
 * record before calling us, so the record is stored first and the negative
 * return only ends this poll; the rest stays in the ring for the next one. */
#define RING_FULL (-ENOBUFS)

static int ring_sample(void *ctx, void *data, size_t size)
{
	struct ring *r = ctx;
	if (size < r->rec || r->n >= r->cap)
		return 0;
	memcpy(r->out + (size_t)r->n++ * r->rec, data, r->rec);
	return r->n >= r->cap ? RING_FULL : 0;
}

static struct ring rings[64];

/* Returns a ring handle (index) >= 0; records of rec_size bytes are copied out. */
int ainftp_ring_open(int map_fd, uint32_t rec_size)
{
	if (rec_size == 0)
		return -EINVAL;
	for (int i = 0; i < 64; i++) {
		if (rings[i].rb)
			continue;
		rings[i].rec = rec_size;
		rings[i].rb = ring_buffer__new(map_fd, ring_sample, &rings[i], NULL);
		if (!rings[i].rb)
			return errno ? -errno : -EINVAL;
		return i;
	}
	return -EMFILE;
}

/* Waits up to timeout_ms (0: do not wait, -1: forever) and copies up to cap
 * events into out. Returns the number copied. */
int ainftp_ring_poll(int h, int timeout_ms, uint8_t *out, int cap)
{
	if (h < 0 || h >= 64 || !rings[h].rb)
		return -EBADF;
	struct ring *r = &rings[h];
	r->out = out;
	r->cap = cap;
	r->n = 0;
	int err = timeout_ms == 0 ? ring_buffer__consume(r->rb) : ring_buffer__poll(r->rb, timeout_ms);
	if (err < 0 && err != -EINTR && err != RING_FULL)
		return err;
	return r->n;
}

int ainftp_ring_epoll_fd(int h)
{
	if (h < 0 || h >= 64 || !rings[h].rb)
		return -EBADF;
	return ring_buffer__epoll_fd(rings[h].rb);
}

void ainftp_ring_close(int h)
{
	if (h < 0 || h >= 64 || !rings[h].rb)
		return;
	ring_buffer__free(rings[h].rb);
	memset(&rings[h], 0, sizeof(rings[h]));
}

/* ---- ABI description, for the mirror test -------------------------------- */

struct abi_out {
	char *buf;
	int cap;
	int len;
};

static void put(struct abi_out *o, const char *key, size_t a, long b)
{
	int room = o->cap - o->len;
	if (room <= 0)
		return;
	int n = b < 0 ? snprintf(o->buf + o->len, room, "%s\"%s\":%zu", o->len > 1 ? "," : "", key, a)
		      : snprintf(o->buf + o->len, room, "%s\"%s\":[%zu,%ld]", o->len > 1 ? "," : "", key, a, b);
	o->len += n < room ? n : room;
}

#define FIELD(o, s, f) put(o, #s "." #f, offsetof(struct s, f), (long)sizeof(((struct s *)0)->f))
#define SIZE(o, s) put(o, "sizeof." #s, sizeof(struct s), -1)
#define CONST(o, c) put(o, "const." #c, (size_t)(AINFTP_##c), -1)

/* Writes {"struct.field":[offset,size], "sizeof.struct":n, "const.X":v} as
 * JSON, so test/abi.test.ts can compare the TypeScript mirror with what the
 * C compiler laid out. Returns the length written. */
int ainftp_abi_describe(char *buf, int cap)
{
	struct abi_out o = { buf, cap, 0 };
	if (cap < 4)
		return 0;
	buf[o.len++] = '{';
	FIELD(&o, ainftp_wire_hdr, magic); FIELD(&o, ainftp_wire_hdr, version);
	FIELD(&o, ainftp_wire_hdr, type); FIELD(&o, ainftp_wire_hdr, flags);
	FIELD(&o, ainftp_wire_hdr, job_id); FIELD(&o, ainftp_wire_hdr, round);
	FIELD(&o, ainftp_wire_hdr, chunk); FIELD(&o, ainftp_wire_hdr, rank);
	FIELD(&o, ainftp_wire_hdr, count); FIELD(&o, ainftp_wire_hdr, exp);
	FIELD(&o, ainftp_wire_hdr, contributors); FIELD(&o, ainftp_wire_hdr, reserved);
	FIELD(&o, ainftp_config, job_id); FIELD(&o, ainftp_config, round_base);
	FIELD(&o, ainftp_config, member_mask); FIELD(&o, ainftp_config, members);
	FIELD(&o, ainftp_config, chunk_elems); FIELD(&o, ainftp_config, chunks);
	FIELD(&o, ainftp_config, batch); FIELD(&o, ainftp_config, owned_chunks);
	FIELD(&o, ainftp_config, flags); FIELD(&o, ainftp_config, results_per_round);
	FIELD(&o, ainftp_config, bank_mask);
	FIELD(&o, ainftp_slot, lock); FIELD(&o, ainftp_slot, tag); FIELD(&o, ainftp_slot, seen);
	FIELD(&o, ainftp_slot, count); FIELD(&o, ainftp_slot, contributors);
	FIELD(&o, ainftp_slot, exp); FIELD(&o, ainftp_slot, state);
	FIELD(&o, ainftp_slot, completions); FIELD(&o, ainftp_slot, spec);
	FIELD(&o, ainftp_slot, rejected);
	FIELD(&o, ainftp_gate, lo); FIELD(&o, ainftp_gate, hi);
	FIELD(&o, ainftp_obs, tag); FIELD(&o, ainftp_obs, reserved); FIELD(&o, ainftp_obs, energy);
	FIELD(&o, ainftp_sentry_worker, accepted); FIELD(&o, ainftp_sentry_worker, rejected);
	FIELD(&o, ainftp_contrib_rec, round); FIELD(&o, ainftp_contrib_rec, chunk); FIELD(&o, ainftp_contrib_rec, rank);
	FIELD(&o, ainftp_contrib_rec, count); FIELD(&o, ainftp_contrib_rec, exp); FIELD(&o, ainftp_contrib_rec, reserved);
	FIELD(&o, ainftp_contrib_rec, v);
	FIELD(&o, ainftp_acc, v);
	FIELD(&o, ainftp_result, tag); FIELD(&o, ainftp_result, count);
	FIELD(&o, ainftp_result, contributors); FIELD(&o, ainftp_result, exp);
	FIELD(&o, ainftp_result, flags); FIELD(&o, ainftp_result, writes); FIELD(&o, ainftp_result, rank); FIELD(&o, ainftp_result, v);
	FIELD(&o, ainftp_bank_state, slots_done); FIELD(&o, ainftp_bank_state, results_done);
	FIELD(&o, ainftp_plan, tag); FIELD(&o, ainftp_plan, owners); FIELD(&o, ainftp_plan, reserved); FIELD(&o, ainftp_plan, owner);
	FIELD(&o, ainftp_key, k0); FIELD(&o, ainftp_key, k1);
	FIELD(&o, ainftp_event, type); FIELD(&o, ainftp_event, contributors);
	FIELD(&o, ainftp_event, round); FIELD(&o, ainftp_event, chunk); FIELD(&o, ainftp_event, index);
	SIZE(&o, ainftp_wire_hdr); SIZE(&o, ainftp_config); SIZE(&o, ainftp_slot); SIZE(&o, ainftp_acc);
	SIZE(&o, ainftp_result); SIZE(&o, ainftp_bank_state); SIZE(&o, ainftp_event);
	SIZE(&o, ainftp_counters); SIZE(&o, ainftp_gate); SIZE(&o, ainftp_obs); SIZE(&o, ainftp_sentry_worker); SIZE(&o, ainftp_contrib_rec); SIZE(&o, ainftp_plan); SIZE(&o, ainftp_key);
	CONST(&o, MAX_WORKERS); CONST(&o, MAX_ELEMS); CONST(&o, MAX_ELEMS_AUTH); CONST(&o, ELEMS_MTU1500); CONST(&o, MAX_CHUNKS);
	CONST(&o, BANKS); CONST(&o, DEFAULT_PORT); CONST(&o, DEFAULT_BATCH); CONST(&o, MAGIC);
	CONST(&o, VERSION); CONST(&o, PKT_CONTRIB); CONST(&o, PKT_RESULT); CONST(&o, PKT_CONTROL);
	CONST(&o, PKT_CLOSE);
	CONST(&o, F_RETRANSMIT); CONST(&o, F_SATURATED); CONST(&o, F_LAST); CONST(&o, F_FORCE); CONST(&o, F_SPEC); CONST(&o, F_CONFIRM);
	CONST(&o, EV_SLOT_COMPLETE); CONST(&o, EV_RESULT); CONST(&o, EV_RESEND);
	CONST(&o, CTRL_HELLO); CONST(&o, CTRL_EXPS); CONST(&o, CTRL_EXPS_REQ); CONST(&o, CTRL_BYE);
	CONST(&o, CTRL_STATUS_REQ); CONST(&o, CTRL_STATUS); CONST(&o, CTRL_EXPS_MAX); CONST(&o, CTRL_MEMBER); CONST(&o, CTRL_RESULT_REQ);
	CONST(&o, SLOT_EMPTY); CONST(&o, SLOT_FILLING); CONST(&o, SLOT_COMPLETE);
	CONST(&o, CNT_RX); CONST(&o, CNT_SUMMED); CONST(&o, CNT_ELEMS_SUMMED); CONST(&o, CNT_DUPLICATE);
	CONST(&o, CNT_STALE_ROUND); CONST(&o, CNT_FUTURE_ROUND); CONST(&o, CNT_FOREIGN_JOB);
	CONST(&o, CNT_NOT_MEMBER); CONST(&o, CNT_COMPLETED); CONST(&o, CNT_RESULTS);
	CONST(&o, CNT_RESULT_DUP); CONST(&o, CNT_WAKEUPS); CONST(&o, CNT_EVENTS);
	CONST(&o, CNT_RINGBUF_FULL); CONST(&o, CNT_CONTROL); CONST(&o, CNT_PASSED);
	CONST(&o, CNT_SATURATED); CONST(&o, CNT_MAL_TRUNC_ETH); CONST(&o, CNT_MAL_TRUNC_IP);
	CONST(&o, CNT_MAL_TRUNC_UDP); CONST(&o, CNT_MAL_TRUNC_HDR); CONST(&o, CNT_MAL_FRAGMENT);
	CONST(&o, CNT_MAL_MAGIC); CONST(&o, CNT_MAL_VERSION); CONST(&o, CNT_MAL_TYPE);
	CONST(&o, CNT_MAL_RANK); CONST(&o, CNT_MAL_CHUNK); CONST(&o, CNT_MAL_COUNT);
	CONST(&o, CNT_MAL_SCALE); CONST(&o, CNT_MAL_RESERVED); CONST(&o, CNT_MAL_ROUND); CONST(&o, CNT_RESEND_REQ); CONST(&o, CNT_BAD_SOURCE); CONST(&o, CNT_RESULTS_XSK); CONST(&o, CNT_SENTRY_REJECTED); CONST(&o, CNT_CONTRIBS_RING); CONST(&o, CNT_LATE); CONST(&o, CNT_NOT_OWNER); CONST(&o, CNT_MAL_CONTRIBUTORS); CONST(&o, CNT_BAD_MAC); CONST(&o, CNT_BAD_WIDTH); CONST(&o, CNT_RESULT_EARLY_DUP); CONST(&o, CNT_RESULT_CONTESTED); CONST(&o, CNT_RESULT_DISPLACED); CONST(&o, CNT_RESULT_WINDOW); CONST(&o, CNT_SPEC_REFUSED); CONST(&o, CNT_SPEC_REPLACED); CONST(&o, CNT__MAX);
	CONST(&o, VERSION_INT8); CONST(&o, VERSION_INT4); CONST(&o, CFG_INT8); CONST(&o, CFG_INT4);
	CONST(&o, ACC_BIAS8); CONST(&o, ACC_BIAS4);
	CONST(&o, CFG_CHECK_SOURCE); CONST(&o, CFG_RESULTS_TO_XSK); CONST(&o, CFG_SENTRY); CONST(&o, CFG_CONTRIBS_TO_RING); CONST(&o, CFG_AUTH_HDR); CONST(&o, CFG_AUTH_FULL); CONST(&o, MAC_BYTES);
	CONST(&o, SENTRY_SAMPLES);
	CONST(&o, MAX_ROUND); CONST(&o, ACC_BIAS);
	if (o.len < o.cap - 1)
		buf[o.len++] = '}';
	buf[o.len < o.cap ? o.len : o.cap - 1] = 0;
	return o.len;
}
