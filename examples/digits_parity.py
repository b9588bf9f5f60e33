#!/usr/bin/env python3
"""Training parity on real data: the same small MLP trained on scikit-learn's
digits (shipped by Debian's python3-sklearn, no download) with DDP, its
gradients averaged by float32 Gloo and by the ainftp hook at 16, 8 and 4 bits.

One process per rank runs every configuration in turn, from the same seed,
initial weights, data split and batch order, so the final test accuracies
differ only by how the gradients were averaged:

    # one node per host (or namespace), restarted with each --bits the runs need
    ainftp swarm --iface eth0 --peers ... --rank $R --job 7 --serve --bits 8 --socket /run/ainftp/7-8.sock &
    RANK=$R WORLD_SIZE=4 MASTER_ADDR=10.0.0.1 examples/digits_parity.py \\
        --runs gloo,ainftp:16,ainftp:8,ainftp:4,ainftp:4:no-ef --socket /run/ainftp/7-{bits}.sock

--runs: comma-separated; "gloo" is DDP's own all-reduce (float32, TCP);
"ainftp:B" the ainftp comm hook connected with bits=B (error feedback as
HookState defaults: on below 16 bits), "ainftp:B:ef" / "ainftp:B:no-ef" force
it on or off. An ainftp run connects to --socket with {bits} replaced, waiting
up to --connect-timeout s for it: a driver starts the nodes of each width
while the trainers run the previous configuration (test/parity.test.ts).

Prints one JSON line per run (rank, run, bits, error_feedback, test_accuracy,
test_correct of test_samples, train_loss, ms, weights_rel_distance: how far
the final weights are from the first run's); the test accuracy is the
rank's own model's, identical on every rank when the all-reduce is.
"""
import argparse
import datetime
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def env_int(*names, default=None):
    for n in names:
        if os.environ.get(n):
            return int(os.environ[n])
    return default


def parse_runs(text):
    runs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if parts == ["gloo"]:
            runs.append({"name": "gloo", "hook": "gloo", "bits": 32, "error_feedback": False})
            continue
        if parts[0] != "ainftp" or len(parts) not in (2, 3) or parts[1] not in ("16", "8", "4") or (len(parts) == 3 and parts[2] not in ("ef", "no-ef")):
            raise SystemExit(f"digits_parity: run {item!r} is not gloo, ainftp:BITS or ainftp:BITS:ef|no-ef (BITS 16, 8 or 4)")
        bits = int(parts[1])
        ef = None if len(parts) == 2 else parts[2] == "ef"
        runs.append({"name": item.strip(), "hook": "ainftp", "bits": bits, "error_feedback": ef})
    return runs


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="gloo,ainftp:16")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD, momentum 0.9, cosine decay to 0)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--test-fraction", type=float, default=1 / 3)
    p.add_argument("--bucket-kib", type=int, default=48, help="DDP bucket_cap_mb in KiB: small, so the model spans several buckets")
    p.add_argument("--rank", type=int, default=env_int("RANK", "SLURM_PROCID"))
    p.add_argument("--world-size", type=int, default=env_int("WORLD_SIZE", "SLURM_NTASKS"))
    p.add_argument("--master-addr", default=os.environ.get("MASTER_ADDR", "127.0.0.1"))
    p.add_argument("--master-port", type=int, default=env_int("MASTER_PORT", default=29500))
    p.add_argument("--ifname", default=os.environ.get("GLOO_SOCKET_IFNAME"))
    p.add_argument("--job", type=int, default=env_int("AINFTP_JOB", default=0))
    p.add_argument("--socket", default=os.environ.get("AINFTP_SOCKET"), help="the node's --socket; {bits} is replaced by the run's width")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.rank is None or a.world_size is None:
        p.error("no rank: set RANK and WORLD_SIZE, or pass --rank and --world-size")
    a.runs = parse_runs(a.runs)
    return a


def load_digits_split(seed, test_fraction):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("digits_parity: scikit-learn is missing: apt-get install -y python3-sklearn (its digits ship with it)") from None
    import torch
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(x) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def train_one(a, run, data, world, reference=None):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    xtr, ytr, xte, yte = data
    torch.manual_seed(a.seed)  # the same initial weights in every run (DDP also broadcasts rank 0's)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, a.hidden), torch.nn.ReLU(),
        torch.nn.Linear(a.hidden, a.hidden), torch.nn.ReLU(),
        torch.nn.Linear(a.hidden, 10),
    )
    dist._DEFAULT_FIRST_BUCKET_BYTES = a.bucket_kib * 1024  # DDP's own knob (see its source) for the first bucket, else 1 MiB: all of it
    ddp = DDP(model, bucket_cap_mb=a.bucket_kib / 1024)
    state = None
    client = None
    if run["hook"] == "ainftp":
        try:
            import ainftp
        except ImportError:
            sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
            import ainftp
        import ainftp.torch
        sock = a.socket.format(bits=run["bits"]) if a.socket else None
        client = ainftp.connect(job=a.job, socket=sock, timeout=a.connect_timeout, name=f"digits_parity rank {a.rank} {run['name']}",
                                local_size=1, local_rank=0, world=world, bits=run["bits"])
        state = ainftp.torch.HookState(client=client, error_feedback=run["error_feedback"])
        ddp.register_comm_hook(state, ainftp.torch.comm_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=a.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    order_gen = torch.Generator().manual_seed(a.seed * 7919)  # the global batch order: the same on every rank and in every run
    order, pos, per_step = None, 0, a.batch * world
    losses = []
    t0 = time.perf_counter()
    try:
        for _ in range(a.steps):
            if order is None or pos + per_step > len(order):
                order, pos = torch.randperm(len(xtr), generator=order_gen), 0
            idx = order[pos + a.rank * a.batch: pos + (a.rank + 1) * a.batch]  # this rank's share of the global batch
            pos += per_step
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(ddp(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    except Exception as e:  # an all-reduce failed: say why, and do not wait on the dead
        why = getattr(state, "error", None) or e
        print(f"digits_parity rank {a.rank}: run {run['name']} failed: {why}", file=sys.stderr, flush=True)
        os._exit(3)
    ms = (time.perf_counter() - t0) * 1000
    with torch.no_grad():
        correct = int((model(xte).argmax(1) == yte).sum())
        train_loss = torch.nn.functional.cross_entropy(model(xtr), ytr).item()
    out = {
        "rank": a.rank, "world": world, "run": run["name"], "hook": run["hook"], "bits": run["bits"],
        "error_feedback": bool(state.error_feedback) if state is not None else False,
        "steps": a.steps, "test_accuracy": correct / len(yte), "test_correct": correct, "test_samples": len(yte),
        "train_loss": train_loss, "last_batch_loss": sum(losses[-10:]) / len(losses[-10:]), "ms": round(ms, 1),
        "buckets": len(state.residuals) if state is not None and state.residuals else None,
    }
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    if reference is not None:  # how far the weights ended from the first run's (Gloo's): ||w - w_ref|| / ||w_ref||
        out["weights_rel_distance"] = ((flat - reference).norm() / reference.norm()).item()
    out["_weights"] = flat
    if client is not None:
        import ainftp
        out["node_bits"] = client.bits
        ainftp.close()
    dist.barrier()  # every rank done (and said bye) before the next configuration
    return out


def main():
    a = parse_args()
    if a.ifname:
        os.environ["GLOO_SOCKET_IFNAME"] = a.ifname
    import torch
    import torch.distributed as dist

    torch.set_num_threads(a.threads)
    data = load_digits_split(a.seed, a.test_fraction)
    dist.init_process_group("gloo", init_method=f"tcp://{a.master_addr}:{a.master_port}", rank=a.rank,
                            world_size=a.world_size, timeout=datetime.timedelta(seconds=180))
    world = dist.get_world_size()
    reference = None
    for run in a.runs:
        out = train_one(a, run, data, world, reference)
        if reference is None:
            reference = out["_weights"]
        del out["_weights"]
        print(json.dumps(out), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
