#!/usr/bin/env python3
"""Train a small MLP on synthetic data with DistributedDataParallel, gradients
averaged by ainftp (a DDP communication hook) or by Gloo.

One node per host (or per network namespace), and beside it one process per
GPU (or just one); the trainers of a host share its node:

    ainftp swarm --iface eth0 --peers 10.0.0.1,10.0.0.2 --rank $R --job 7 --serve &
    torchrun --nnodes 2 --node-rank $R --nproc-per-node 2 --master-addr 10.0.0.1 \\
        examples/ddp_train.py --hook ainftp --job 7

Ranks come from the environment: torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE), srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
SLURM_NTASKS_PER_NODE; MASTER_ADDR defaults to the first host of the
allocation), or set by hand; --rank/--world-size/--local-rank/
--local-world-size/--master-addr override them. The local ones default to
one trainer per host.
The Gloo process group is created either way (DDP broadcasts the initial
weights through it); with --hook ainftp only the gradients bypass it.

--hook ainftp: ainftp.torch.comm_hook (the node all-reduces every bucket).
--hook none:   Gloo's all-reduce, in a hook equal to DDP's stock allreduce_hook
               so that it can be timed.
--hook builtin: no hook at all (DDP's own all-reduce; not timed).

Prints the loss of every step, then one JSON line: the final loss (on a fixed
evaluation set, the same on every rank), the mean step time and the mean
all-reduce time inside a step (from the hook's call to its future's result,
summed over the step's buckets), the first --warmup steps left out.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def env_int(*names, default=None):
    for n in names:
        if os.environ.get(n):
            return int(os.environ[n])
    return default


def slurm_master():
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True).stdout
        return out.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hook", choices=["ainftp", "none", "builtin"], default="ainftp")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the mean times")
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rank", type=int, default=env_int("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"))
    p.add_argument("--world-size", type=int, default=env_int("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
    p.add_argument("--local-rank", type=int, default=env_int("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", default=0),
                   help="this trainer's place among those of its host")
    p.add_argument("--local-world-size", type=int, default=env_int("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE", default=1),
                   help="trainers on this host (they share its ainftp node)")
    p.add_argument("--master-addr", default=os.environ.get("MASTER_ADDR"))
    p.add_argument("--master-port", type=int, default=env_int("MASTER_PORT", default=29500))
    p.add_argument("--ifname", default=os.environ.get("GLOO_SOCKET_IFNAME"), help="interface Gloo uses (GLOO_SOCKET_IFNAME)")
    p.add_argument("--job", type=int, default=env_int("AINFTP_JOB", default=0), help="the node's --job")
    p.add_argument("--socket", default=os.environ.get("AINFTP_SOCKET"), help="the node's --socket")
    p.add_argument("--bits", type=int, choices=[16, 8, 4], default=None,
                   help="the bits per gradient value the node must run at (its swarm --bits; default: whatever it runs)")
    p.add_argument("--error-feedback", choices=["auto", "on", "off"], default="auto",
                   help="the hook's error feedback (auto: on below 16 bits)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a = p.parse_args()
    if a.rank is None or a.world_size is None:
        p.error("no rank: set RANK and WORLD_SIZE (torchrun does), run under srun, or pass --rank and --world-size")
    if not 0 <= a.local_rank < a.local_world_size <= a.world_size:
        p.error(f"--local-rank {a.local_rank} of --local-world-size {a.local_world_size} in a world of {a.world_size} does not fit")
    if a.master_addr is None:
        a.master_addr = slurm_master() or ("127.0.0.1" if a.world_size == 1 else None)
        if a.master_addr is None:
            p.error("no MASTER_ADDR: set it (the address of rank 0) or pass --master-addr")
    return a


def main():
    a = parse_args()
    if a.ifname:
        os.environ["GLOO_SOCKET_IFNAME"] = a.ifname  # before the process group exists
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", init_method=f"tcp://{a.master_addr}:{a.master_port}", rank=a.rank,
                            world_size=a.world_size, timeout=datetime.timedelta(seconds=60))
    world = dist.get_world_size()

    # the task: y = tanh(x A) b + noise, the same for every rank; each rank draws its own samples
    task = torch.Generator().manual_seed(a.seed)
    A = torch.randn(a.features, 32, generator=task) / a.features ** 0.5
    b = torch.randn(32, 1, generator=task) / 32 ** 0.5

    def batch(gen, n):
        x = torch.randn(n, a.features, generator=gen)
        return x, torch.tanh(x @ A) @ b + 0.01 * torch.randn(n, 1, generator=gen)

    eval_x, eval_y = batch(torch.Generator().manual_seed(a.seed + 999_983), 2048)
    data = torch.Generator().manual_seed(a.seed * 1_000_003 + a.rank)

    torch.manual_seed(a.seed)  # the same initial weights everywhere (DDP also broadcasts them)
    model = torch.nn.Sequential(
        torch.nn.Linear(a.features, a.hidden), torch.nn.ReLU(),
        torch.nn.Linear(a.hidden, a.hidden), torch.nn.ReLU(),
        torch.nn.Linear(a.hidden, 1),
    )
    ddp = DDP(model)
    durations = []  # seconds per bucket, appended when its all-reduce is done
    state = None
    if a.hook == "ainftp":
        try:
            import ainftp
        except ImportError:
            sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
            import ainftp
        import ainftp.torch
        ainftp.connect(job=a.job, socket=a.socket, name=f"ddp_train rank {a.rank}", local_size=a.local_world_size,
                       local_rank=a.local_rank, world=world, bits=a.bits)
        state = ainftp.torch.HookState(error_feedback={"auto": None, "on": True, "off": False}[a.error_feedback])
        durations = state.durations
        ddp.register_comm_hook(state, ainftp.torch.comm_hook)
    elif a.hook == "none":
        def gloo_hook(state, bucket):
            t0 = time.perf_counter()
            tensor = (bucket.buffer() if hasattr(bucket, "buffer") else bucket.get_tensor()).div_(world)
            fut = dist.all_reduce(tensor, async_op=True).get_future()

            def done(f):
                durations.append(time.perf_counter() - t0)
                return f.value()[0]
            return fut.then(done)
        ddp.register_comm_hook(None, gloo_hook)

    opt = torch.optim.SGD(ddp.parameters(), lr=a.lr, momentum=0.9)
    loss_fn = torch.nn.MSELoss()
    step_ms, allreduce_ms = [], []
    nparams = sum(p.numel() for p in model.parameters())
    print(f"rank {a.rank}/{world}: hook {a.hook}, {nparams} parameters ({nparams * 4 / 2**20:.2f} MiB of gradient)", flush=True)
    try:
        for step in range(a.steps):
            x, y = batch(data, a.batch)
            del durations[:]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(x), y)
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            if step >= a.warmup:
                step_ms.append((t1 - t0) * 1000)
                if a.hook != "builtin":
                    allreduce_ms.append(sum(durations) * 1000)
            print(f"step {step} loss {loss.item():.6f} ({(t1 - t0) * 1000:.2f} ms)", flush=True)
    except Exception as e:  # an all-reduce failed: say why, and do not wait on the dead
        why = getattr(state, "error", None) or e  # DDP rewords the hook's error; the original says more
        print(f"ddp_train rank {a.rank}: step {step} failed: {why}", file=sys.stderr, flush=True)
        os._exit(3)
    with torch.no_grad():
        final = loss_fn(model(eval_x), eval_y).item()
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    print(json.dumps({
        "rank": a.rank, "world": world, "local_size": a.local_world_size, "hook": a.hook, "steps": a.steps, "parameters": nparams,
        "final_loss": final, "mean_step_ms": mean(step_ms), "mean_allreduce_ms": mean(allreduce_ms),
        "torch_version": torch.__version__,
    }), flush=True)
    if a.hook == "ainftp":
        ainftp.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
