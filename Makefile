# ainftp — one entry point: `make setup` installs what a fresh Debian machine
# lacks, `make` builds dist/ainftp, `make test` runs every suite, `make bench`
# runs the benchmarks (XDP program, send path, the collective against Gloo and
# Open MPI on 4 network namespaces; `bench-deps` installs those peers).
BUN_VERSION := 1.4.5
# python3-torch: the trainer tests run real DDP against a swarm (issue 7);
# python3-sklearn: its digits are the training-parity test's data (issue 14, no download)
APT_PACKAGES := clang clang-19 llvm libbpf-dev libbpf1 libxdp-dev libxdp1 bpftool libelf-dev iproute2 gcc make ethtool util-linux python3-torch python3-sklearn

CLANG ?= clang-19
CC ?= gcc
BPF_CFLAGS := -g -O2 -target bpf -mcpu=v4 -Wall -Werror -Ibpf/build -Ibpf/include -Ibpf
SHIM_CFLAGS := -O3 -g -Wall -Werror -fPIC -shared

BPF_OBJ := bpf/build/ainftp.bpf.o
SHIM := native/build/libainftp.so
FIXTURES := test/fixtures/build/pass.bpf.o test/fixtures/build/reject.bpf.o
BIN := dist/ainftp
SOURCES := $(shell find cli src native -name '*.ts') $(wildcard src/bench/peers/*) package.json

.PHONY: all setup deps bench-deps bun-install build test bench bench-all bench-ab clean

all: build

# ---- setup: apt packages, pinned Bun, node modules, bpffs ----------------
setup: deps bun-install

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@if [ "$$(bun --version 2>/dev/null)" != "$(BUN_VERSION)" ]; then \
		echo "installing bun $(BUN_VERSION)"; npm install -g --no-fund --no-audit bun@$(BUN_VERSION); \
	fi
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# The peers `make bench` measures against: Gloo (PyTorch) and Open MPI.
BENCH_PACKAGES := python3-torch python3-sklearn openmpi-bin libopenmpi-dev
bench-deps:
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

bun-install: package.json
	bun install --frozen-lockfile

# A fresh clone has no node_modules: `make` installs them (order-only, so a
# newer package.json alone does not rebuild; `make bun-install` refreshes).
node_modules:
	@command -v bun >/dev/null || { echo "make: bun is not installed: run 'make setup' (as root) first, or install Bun $(BUN_VERSION)" >&2; exit 1; }
	bun install --frozen-lockfile

# ---- build -----------------------------------------------------------------
build: $(BIN) $(FIXTURES)

# Generated from the running kernel's BTF, not committed: the program uses
# only stable UAPI structs (ethhdr, iphdr, udphdr, xdp_md) from it.
bpf/build/vmlinux.h:
	@mkdir -p $(@D)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BPF_OBJ): bpf/ainftp.bpf.c bpf/parse.h bpf/include/ainftp_abi.h bpf/build/vmlinux.h
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

SHIM_SRCS := $(wildcard native/*.c)

$(SHIM): $(SHIM_SRCS) $(wildcard native/*.h) bpf/include/ainftp_abi.h
	@mkdir -p $(@D)
	$(CC) $(SHIM_CFLAGS) -o $@ $(SHIM_SRCS) -lbpf -lm

test/fixtures/build/%.bpf.o: test/fixtures/%.bpf.c
	@mkdir -p $(@D)
	$(CLANG) -O2 -g -target bpf -Wall -I/usr/include/$(shell uname -m)-linux-gnu -c $< -o $@

$(BIN): $(BPF_OBJ) $(SHIM) $(SOURCES) | node_modules
	@mkdir -p $(@D)
	bun build --compile cli/index.ts --outfile $@

# ---- run ---------------------------------------------------------------------
# Every suite once, then each failed test once more by name, loudly
# (test/run-suite.sh: the kernel suites' timing flakes on a loaded 2-core
# machine, listed in docs/architecture.md); a test failing twice fails.
test: build
	bun x tsc --noEmit
	test/run-suite.sh

# The main job: the comparison table (ainftp against plain TCP, Gloo and
# Open MPI on 4 network namespaces), its JSON and chart in bench-report/.
bench: build bench-deps
	$(BIN) bench

# Before/after of the whole product: BASE (a commit, default HEAD~1) built
# in a temporary worktree, and this tree's build, each running its own `ainftp bench`, interleaved (bench/ab.ts). PAIRS=2 by default;
# BENCH_ARGS replaces the bench arguments (default: both regimes, 1 and 16 MiB).
BASE ?= HEAD~1
PAIRS ?= 2
bench-ab: build bench-deps
	@d=$$(mktemp -d /tmp/ainftp-base-XXXXXX); trap 'git worktree remove --force '$$d' >/dev/null 2>&1; rm -rf '$$d'' EXIT; \
	git worktree add -q --detach $$d $(BASE) && ln -s $(CURDIR)/node_modules $$d/node_modules && \
	$(MAKE) -s -C $$d build >/dev/null && \
	bun bench/ab.ts --a $$d/dist/ainftp --b $(BIN) --pairs $(PAIRS) $(if $(BENCH_ARGS),-- $(BENCH_ARGS))

# Every micro-benchmark on its own.
bench-all: bench
	bun bench/xdp.ts
	bun bench/send.ts
	bun bench/arena.ts
	bun bench/gpu-check.ts
	bun bench/aggregate.ts
	bun bench/collective.ts --peers 4 --size 1MiB,16MiB --rounds 30 --mtu 3504 --rx map,xsk

clean:
	rm -rf bpf/build native/build test/fixtures/build dist

# ---- SLURM (issues 17 and 19) -------------------------------------------------
# test/slurm-cluster.test.ts and test/slurm-bench.test.ts run a real slurmctld
# and one slurmd per network namespace (test/helpers/slurm-lab.ts; about 20 s
# and 75 s, part of `make test`; they skip, saying so, without these
# packages). `make test-slurm` runs them alone, the bench with Gloo and the
# mpirun launch too (four torch imports per step: 15 s to 2 min more here). `make bench-slurm-lab`
# runs examples/slurm/bench-job.sh on such a cluster (the README's figures).
SLURM_PACKAGES := slurm-wlm munge
.PHONY: slurm-deps test-slurm bench-slurm-lab
setup: slurm-deps
slurm-deps:
	@missing=""; for p in $(SLURM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

test-slurm: build slurm-deps
	bun test test/slurm-cluster.test.ts
	AINFTP_SLURM_BENCH_FULL=1 bun test test/slurm-bench.test.ts

bench-slurm-lab: build slurm-deps bench-deps
	bun test/helpers/slurm-lab.ts examples/slurm/bench-job.sh AINFTP_REPORT=$(CURDIR)/bench-report-slurm-lab
