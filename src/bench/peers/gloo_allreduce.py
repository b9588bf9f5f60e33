#!/usr/bin/env python3
"""One rank of the Gloo all-reduce baseline (PyTorch torch.distributed, CPU).

    gloo_allreduce.py RANK WORLD MASTER_ADDR MASTER_PORT BYTES ROUNDS WARMUP IFNAME [back-to-back]

Every rank builds the same deterministic float32 input for every rank
(values k/64 with |k| <= 48, so every partial sum is exact in float32 and
the order Gloo sums in does not matter), all-reduces its own with SUM, and
checks the result against the sum computed locally. Each round: restore the
input (untimed), barrier, then time all_reduce alone with time.perf_counter.
With back-to-back the timed rounds have no barrier (as a trainer calls
all_reduce): a rank's time then includes waiting for ranks still verifying.
Prints one JSON line on stdout; progress and errors go to stderr.
"""
import datetime
import json
import os
import sys
import time


def mark_timed(rank):
    # The warm-up is over: a file named for this rank in $AINFTP_BENCH_TIMED,
    # so the bench's CPU window covers the timed rounds alone (src/bench/timed.ts).
    d = os.environ.get("AINFTP_BENCH_TIMED")
    if d:
        try:
            open(os.path.join(d, str(rank)), "w").close()
        except OSError:
            pass


def percentile(sorted_vals, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_vals:
        return None
    pos = (len(sorted_vals) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def main():
    if len(sys.argv) not in (9, 10) or (len(sys.argv) == 10 and sys.argv[9] != "back-to-back"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    back_to_back = len(sys.argv) == 10
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    addr, port = sys.argv[3], int(sys.argv[4])
    nbytes, rounds, warmup = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    ifname = sys.argv[8]
    if nbytes <= 0 or nbytes % 4 or rounds <= 0 or warmup < 0 or not 0 <= rank < world:
        print("bad arguments: bytes must be a positive multiple of 4, rounds > 0", file=sys.stderr)
        sys.exit(2)
    # Must be set before the process group is created: Gloo picks its device
    # (the address it listens on and announces) from this interface.
    os.environ["GLOO_SOCKET_IFNAME"] = ifname

    import torch
    import torch.distributed as dist

    # Up to world ranks share the machine's cores; Gloo's CPU sum does not use
    # the intra-op pool, and the input/verify code needs no more than one.
    torch.set_num_threads(1)
    n = nbytes // 4

    # value i depends on i mod 97 only: build one period and tile it (the
    # int64 arithmetic over all n values took 10 s per rank at 16 MiB on a
    # loaded 2-core machine; this is a copy)
    period = torch.arange(97, dtype=torch.int64)

    def tiled(p):
        return p.repeat((n + 96) // 97)[:n].contiguous()

    def pattern(r):
        return ((period * 7 + r * 13) % 97 - 48).to(torch.float32) / 64.0

    mine = tiled(pattern(rank))
    expected_period = torch.zeros(97, dtype=torch.float32)
    for r in range(world):
        expected_period += pattern(r)
    expected = tiled(expected_period)
    work = mine.clone()

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{addr}:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    round_ms = []
    # per timed round: this process's CPU inside its all-reduce (every
    # thread: Gloo moves data on threads of its own), as every system reports
    round_cpu_ms = []
    verified = True
    max_err = 0.0
    for k in range(warmup + rounds):
        if k == warmup:
            mark_timed(rank)
        work.copy_(mine)
        if k < warmup or not back_to_back:
            dist.barrier()
        t0 = time.perf_counter()
        c0 = time.process_time_ns()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        t1 = time.perf_counter()
        c1 = time.process_time_ns()
        # and a barrier after, as ainftp's swarm has: no rank verifies while
        # another still moves data (the bench's CPU window would charge it)
        if not back_to_back:
            dist.barrier()
        # Exact inputs give an exact sum: one comparison pass; only when it
        # differs, the error and the tolerance (for a reduction that is not
        # plain float32 addition)
        if not torch.equal(work, expected):
            err = float((work - expected).abs().max())
            max_err = max(max_err, err)
            if not torch.allclose(work, expected, rtol=1e-5, atol=1e-5):
                verified = False
        if k >= warmup:
            round_ms.append((t1 - t0) * 1000.0)
            round_cpu_ms.append((c1 - c0) / 1e6)
    dist.barrier()
    dist.destroy_process_group()

    s = sorted(round_ms)
    print(json.dumps({
        "system": "gloo",
        "rank": rank,
        "world": world,
        "bytes": nbytes,
        "rounds": rounds,
        "round_ms": [round(x, 4) for x in round_ms],
        "round_cpu_ms": [round(x, 4) for x in round_cpu_ms],
        "median_ms": percentile(s, 0.5),
        "p10": percentile(s, 0.10),
        "p90": percentile(s, 0.90),
        "p99": percentile(s, 0.99),
        "verified": verified,
        "max_abs_err": max_err,
        "torch_version": torch.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
