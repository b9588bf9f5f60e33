"""PyTorch side: all-reduce of tensors, and a DDP communication hook.

    model = DistributedDataParallel(model)
    model.register_comm_hook(ainftp.torch.HookState(), ainftp.torch.comm_hook)

The hook returns at once with a torch.futures.Future; a worker thread copies
each bucket into the shared buffer, has the node all-reduce it (mean over
every trainer of the job), and copies the result back, so backward goes on
computing meanwhile. Buckets are reduced in the order DDP hands them over,
which is the same on every rank. Several ranks per host share its node (one
per GPU): the DDP world is the job's trainers, summed over the nodes. CUDA buckets are staged through host memory. Works with torch 1.13
(bucket.buffer()) and older releases (bucket.get_tensor()).

Error feedback: at 8 and 4 bits (the node's --bits) the hook keeps, per
bucket, what quantizing its last contribution lost (the residual the node
reports) and adds it to that bucket's next gradient, so the error does not
pile up over the steps (HookState(error_feedback=False) turns it off).
"""
import queue
import threading
import time

import torch

from . import session as _session


def _default_client():
    import ainftp
    return ainftp.client()


def allreduce_tensor(tensor, op="sum", client=None, residual=None):
    """All-reduces a float32 tensor in place (CPU, or CUDA through host memory).

    residual: a float32 tensor of as many elements, filled with what
    quantizing this host's contribution lost (before any mean; zeros where
    the node reports none), or None."""
    c = client or _default_client()
    if tensor.dtype != torch.float32:
        raise TypeError(f"ainftp all-reduces float32 tensors, not {tensor.dtype}")
    n = tensor.numel()
    if residual is not None and (residual.dtype != torch.float32 or residual.numel() != n):
        raise ValueError(f"the residual must be a float32 tensor of {n} elements, not {residual.dtype} of {residual.numel()}")
    with c._lock, torch.no_grad():
        shared = c.staging(n if residual is None else 2 * n)
        stage = shared.views.get("torch")
        if stage is None:
            stage = shared.views["torch"] = torch.frombuffer(shared.mm, dtype=torch.float32, count=shared.floats)
        flat = stage[:n]
        flat.copy_(tensor.reshape(-1))
        c.reduce_staged(n, op, residual_offset=None if residual is None else n)
        tensor.copy_(flat.view(tensor.shape))
        if residual is not None:
            residual.copy_(stage[n:2 * n].view(residual.shape))
        if tensor.is_cuda:
            torch.cuda.current_stream(tensor.device).synchronize()
    return tensor


class HookState:
    """State for comm_hook: the client (default: ainftp.client()); per
    bucket, how long its all-reduce took from the hook's call to the result
    (seconds, appended to `durations`); and `error`, the ainftp error that
    failed a bucket (DDP re-raises it from backward() wrapped in its own
    words: this is the original, with its status).

    error_feedback: add each bucket's quantization residual (what its last
    all-reduce lost on this host) to its next gradient. None (the default):
    on when the node runs at fewer than 16 bits, off at 16 (where the
    residual is ~0); True or False to choose. `residuals` maps a bucket's
    index to its residual (a bucket whose size changes, as when DDP rebuilds
    its buckets after the first step, starts again from zero)."""

    def __init__(self, client=None, op="mean", error_feedback=None):
        if error_feedback not in (None, True, False):
            raise ValueError(f"error_feedback={error_feedback!r}: give True, False or None (on below 16 bits)")
        self.client = client
        self.op = op
        self.error_feedback = error_feedback
        self.residuals = {}
        self.durations = []
        self.error = None
        self._queue = None
        self._checked = False
        self._world = None  # the DDP world size, compared with the node's census after the first bucket

    def _submit(self, job):
        if self._queue is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._work, name="ainftp-comm-hook", daemon=True).start()
        self._queue.put(job)

    def feedback_on(self, c):
        """Whether error feedback runs with client c (settles a None choice)."""
        if self.error_feedback is None:
            self.error_feedback = c.bits < 16
        return self.error_feedback

    def _reduce(self, c, tensor, index):
        if not self.feedback_on(c):
            return allreduce_tensor(tensor, op=self.op, client=c)
        with torch.no_grad():
            res = self.residuals.get(index)
            if res is not None and res.numel() == tensor.numel() and res.device == tensor.device:
                tensor.add_(res.view(tensor.shape))  # what the last round of this bucket lost
            else:
                res = torch.zeros(tensor.numel(), dtype=torch.float32, device=tensor.device)
            allreduce_tensor(tensor, op=self.op, client=c, residual=res)
            self.residuals[index] = res
        return tensor

    def _work(self):
        while True:
            tensor, index, fut, t0 = self._queue.get()
            try:
                c = self.client or _default_client()
                self._reduce(c, tensor, index)
                if self._world is not None and c.world is not None:
                    world, self._world = self._world, None
                    if world != c.world:
                        raise RuntimeError(_world_mismatch(world, c, c.world))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting trainer
                if self.error is None:
                    self.error = e
                fut.set_exception(e)
                continue
            self.durations.append(time.perf_counter() - t0)
            fut.set_result(tensor)

    def __getstate__(self):
        # DDP may pickle the hook state (e.g. for the static graph); the thread stays here
        return {"client": None, "op": self.op, "error_feedback": self.error_feedback, "residuals": {}, "durations": [], "error": None,
                "_queue": None, "_checked": False, "_world": None}


def _world_mismatch(ddp_world, c, job_world):
    return (f"the DDP world has {ddp_world} ranks but the ainftp job has {job_world} trainers "
            f"({c.size} nodes, {c.local_size} on this one): give ainftp.connect() local_size= (the trainers of this "
            "host, LOCAL_WORLD_SIZE) and world= (WORLD_SIZE), the same on every rank")


_shared_state = None


def comm_hook(state, bucket):
    """DDP communication hook: the bucket averaged over every trainer of the job.

    state: a HookState, an ainftp Client, or None (the default client)."""
    global _shared_state
    if isinstance(state, HookState):
        st = state
    else:
        if _shared_state is None or (isinstance(state, _session.Client) and _shared_state.client is not state):
            _shared_state = HookState(client=state if isinstance(state, _session.Client) else None)
        st = _shared_state
    tensor = bucket.buffer() if hasattr(bucket, "buffer") else bucket.get_tensor()
    if not st._checked:
        c = st.client or _default_client()
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            # the job's trainer count: the node's census once a round ran, else what the client said
            known = c.world if c.world is not None else c.declared_world
            if known is not None and known != world:
                raise RuntimeError(_world_mismatch(world, c, known))
            if world < max(c.size, c.local_size):
                raise RuntimeError(_world_mismatch(world, c, f"at least {max(c.size, c.local_size)}"))
            st._world = world if c.world is None else None  # checked against the census once it is known
        st._checked = True
    fut = torch.futures.Future(devices=[tensor.device]) if tensor.is_cuda else torch.futures.Future()
    # the bucket's index keys its residual (None from a bucket that has none: keyed by nothing, checked by size)
    index = bucket.index() if hasattr(bucket, "index") else bucket.get_index() if hasattr(bucket, "get_index") else None
    st._submit((tensor, index, fut, time.perf_counter()))
    return fut
