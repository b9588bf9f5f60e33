"""A trainer's connection to its ainftp node (standard library only).

The node all-reduces float32 data in a file both processes map (in /dev/shm,
or on hugetlbfs): the client copies the data in, asks over the Unix socket
for an all-reduce of that range, and copies the result back. The file's
name is removed as soon as the node has mapped it, so nothing is left
behind whatever happens to either process. Several trainers of one host
(one per GPU) share its node: each says how many they are (local_size), and
the node reduces a round once all of them have asked for it.
"""
import itertools
import mmap
import os
import socket as _socket
import sys
import threading
import time

from .protocol import (BIT_WIDTHS, PROTOCOL, VERSION, AinftpError, BadRequest, ConnectionLost, DeadlineExceeded,
                       NodeShuttingDown, encode, error_for, read_frame)

_MIN_BUFFER = 1 << 20
_names = itertools.count()


def default_socket(job):
    return f"/run/ainftp/{job}.sock"


def _env_int(*names):
    for n in names:
        v = os.environ.get(n, "").strip()
        if v.isdigit():
            return int(v)
    return None


def _torch_world():
    """The torch.distributed world size, if the trainer already started it (torch is not imported here)."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except Exception:  # noqa: BLE001 - a half-initialized torch: the environment says the rest
        return None
    return None


class _Shared:
    """A file in shm_dir mapped shared, and registered with the node as `buffer`."""

    def __init__(self, shm_dir, job, nbytes):
        page = max(4096, os.statvfs(shm_dir).f_bsize)  # hugetlbfs: the huge page size
        self.size = -(-nbytes // page) * page
        self.path = os.path.join(shm_dir, f"ainftp-{job}-{os.getpid()}-{next(_names)}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.size)
            self.mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)
        self.buffer = None
        self.floats = self.size // 4
        # views other modules keep of the mapping (a torch tensor): dropped before unmapping
        self.views = {}

    def unlink(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self):
        self.views.clear()
        self.unlink()
        try:
            self.mm.close()
        except BufferError:
            pass  # a view of it is still alive somewhere: unmapped when that goes


def _float_bytes(data, what):
    view = memoryview(data)
    if view.format != "f" or view.itemsize != 4:
        raise TypeError(f"ainftp all-reduces float32 data, not format {view.format!r} ({what})")
    if view.readonly:
        raise TypeError(f"the {what} must be writable (the result replaces it)")
    return view.cast("B")


def check_bits(bits):
    """bits as an int in BIT_WIDTHS, or a ValueError naming the choices."""
    if isinstance(bits, str) and bits.strip().isdigit():
        bits = int(bits)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BIT_WIDTHS:
        raise ValueError(f"bits={bits!r} is not one of {', '.join(map(str, BIT_WIDTHS))} (bits per gradient coordinate on the wire)")
    return bits


class Client:
    """One trainer's session with the node of this host.

    Thread-safe: requests are serialized (the node serves them in order)."""

    def __init__(self, sock, hello, job, shm_dir, reply_timeout, world=None, local_rank=None):
        self._sock = sock
        self.job = hello.get("job", job)
        self.rank = hello["rank"]  # the node's rank among the job's nodes
        self.size = hello["size"]  # nodes in the job
        self.peers = hello.get("peers", [])
        self.round_elems = hello.get("round_elems")
        self.local_size = hello.get("local_size", 1)  # trainers sharing this node
        self.local_rank = local_rank
        self.declared_world = world  # what this trainer said the job's trainer count is
        self.world = hello.get("world")  # the job's trainer count: the node's census, known after the first round
        self.bits = hello.get("bits", 16)  # bits per coordinate on the wire: the node's --bits
        self._shm_dir = shm_dir
        self._reply_timeout = reply_timeout
        self._lock = threading.RLock()
        self._seq = 0
        self._round = 0
        self._staging = None
        self._closed = False
        self._failed = None  # the error that ended the session

    def __repr__(self):
        return (f"<ainftp.Client job {self.job} node {self.rank} of {self.size}, {self.bits} bits, {self.local_size} trainer(s) on it"
                f"{' closed' if self._closed else ''}>")

    # ---- requests ------------------------------------------------------------------

    def _request(self, msg):
        if self._failed is not None:
            raise type(self._failed)(f"the session with the node ended: {self._failed.message}", status=self._failed.status)
        if self._closed:
            raise ConnectionLost("the client is closed")
        self._seq += 1
        msg = dict(msg, seq=self._seq)
        try:
            self._sock.settimeout(self._reply_timeout)
            self._sock.sendall(encode(msg))
            while True:
                reply = read_frame(self._sock)
                if reply.get("type") == "shutdown":
                    raise NodeShuttingDown(str(reply.get("message", "node shutting down")))
                if reply.get("seq") == self._seq or reply.get("type") == "error":
                    break
        except _socket.timeout:
            # the node's rounds fail by themselves long before this: it is stuck, or waits for a trainer of this host
            hint = (f"the node reduces a round once all {self.local_size} trainers of this host asked for it: is one of them stuck?"
                    if msg["type"] == "allreduce" and self.local_size > 1 else None)
            self._fail(DeadlineExceeded(f"no answer from the node within {self._reply_timeout} s to {msg['type']}", hint=hint))
        except (BrokenPipeError, ConnectionResetError) as e:
            self._fail(ConnectionLost(f"the node closed the connection ({e.__class__.__name__})"))
        except AinftpError as e:
            self._fail(e)
        if reply.get("status") != "ok":
            err = error_for(reply)
            if not isinstance(err, BadRequest):
                self._fail(err)
            raise err
        return reply

    def _fail(self, err):
        self._failed = err
        try:
            self._sock.close()
        except OSError:
            pass
        raise err

    def staging(self, floats):
        """The registered shared buffer, grown to hold at least `floats` floats."""
        with self._lock:
            if self._staging is not None and self._staging.floats >= floats:
                return self._staging
            old = self._staging
            nbytes = max(_MIN_BUFFER, 4 * floats)
            if old is not None:
                nbytes = max(nbytes, 2 * old.size)
            new = _Shared(self._shm_dir, self.job, nbytes)
            try:
                new.buffer = self._request({"type": "register", "path": new.path, "bytes": new.size})["buffer"]
            except BaseException:
                new.close()
                raise
            new.unlink()  # both sides have it mapped: the name is no longer needed
            self._staging = new
            if old is not None:
                try:
                    self._request({"type": "unregister", "buffer": old.buffer})
                finally:
                    old.close()
            return new

    def reduce_staged(self, floats, op="sum", offset=0, residual_offset=None):
        """All-reduces floats [offset, offset+floats) of the staging buffer in place.

        residual_offset: where the node writes this host's quantization
        residual (floats [residual_offset, residual_offset+floats): what the
        sent values lost, to add to the next step's gradient), or None."""
        if op not in ("sum", "mean"):
            raise ValueError(f'op must be "sum" or "mean", not {op!r}')
        with self._lock:
            end = offset + floats if residual_offset is None else max(offset, residual_offset) + floats
            buf = self.staging(end)
            msg = {"type": "allreduce", "buffer": buf.buffer, "offset": offset, "count": floats, "op": op, "round": self._round}
            if residual_offset is not None:
                msg["residual_offset"] = residual_offset
            reply = self._request(msg)
            self._round += 1
            if reply.get("world") is not None:
                self.world = reply["world"]
            return reply

    def allreduce(self, data, op="sum", residual=None):
        """Sums (op="sum") or averages (op="mean") `data` over every trainer of the job, in place.

        `data`: a torch float32 tensor (CPU, or CUDA: staged through host
        memory), or any writable buffer of float32 (array.array("f"),
        memoryview). `residual` (optional, the same kind and length): filled
        with what quantizing this host's contribution lost (before any mean),
        for error feedback; zeros where the node reports none. Returns `data`."""
        if type(data).__module__.split(".")[0] == "torch":
            from .torch import allreduce_tensor
            return allreduce_tensor(data, op=op, client=self, residual=residual)
        raw = _float_bytes(data, "data")
        n = len(raw) // 4
        res = None if residual is None else _float_bytes(residual, "residual")
        if res is not None and len(res) != len(raw):
            raise ValueError(f"the residual has {len(res) // 4} floats, the data {n}: give one of the same length")
        with self._lock:
            buf = self.staging(2 * n if res is not None else n)
            buf.mm[:len(raw)] = raw
            self.reduce_staged(n, op, residual_offset=None if res is None else n)
            raw[:] = buf.mm[:len(raw)]
            if res is not None:
                res[:] = buf.mm[len(raw):2 * len(raw)]
        return data

    # ---- leaving -------------------------------------------------------------------

    def close(self):
        """Says bye (the node keeps its job for the next trainers) and unmaps."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._failed is None:
                    self._request({"type": "bye"})
            except AinftpError:
                pass
            finally:
                self._closed = True
                try:
                    self._sock.close()
                except OSError:
                    pass
                if self._staging is not None:
                    self._staging.close()
                    self._staging = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(job=None, socket=None, timeout=60.0, name=None, shm_dir=None, reply_timeout=120.0,
            local_size=None, local_rank=None, world=None, bits=None):
    """Connects to this host's node, waiting up to `timeout` s for its socket.

    job: the node's --job (default $AINFTP_JOB or 0); socket: its --socket
    (default $AINFTP_SOCKET or /run/ainftp/<job>.sock); shm_dir: where the
    shared buffers go (default $AINFTP_SHM_DIR or /dev/shm; a hugetlbfs
    mount gives them 2 MB pages). The node opens the socket once every
    member of the job is up, so connecting also waits for the job.

    Several trainers per host: local_size, the trainers sharing this node
    (default $LOCAL_WORLD_SIZE, $SLURM_NTASKS_PER_NODE, or 1); local_rank,
    this one's place among them, the order their gradients are summed in
    (default $LOCAL_RANK or $SLURM_LOCALID); world, the trainers in the whole
    job, the divisor of a mean (default the torch.distributed world size if
    it is initialized, $WORLD_SIZE or $SLURM_NTASKS; None: not checked). The
    node checks world against its census of the job's first round.

    bits: the bits per gradient coordinate this trainer expects on the wire,
    16, 8 or 4 (default $AINFTP_BITS; None: whatever the node runs, in
    `.bits`). A node started with another --bits refuses the connection,
    naming both widths."""
    if bits is None and os.environ.get("AINFTP_BITS", "").strip():
        bits = os.environ["AINFTP_BITS"]
    if bits is not None:
        bits = check_bits(bits)
    if job is None:
        job = int(os.environ.get("AINFTP_JOB", "0"))
    if local_size is None:
        local_size = _env_int("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE") or 1
    if local_rank is None:
        local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID")
    if world is None:
        world = _torch_world() or _env_int("WORLD_SIZE", "SLURM_NTASKS")
    path = socket or os.environ.get("AINFTP_SOCKET") or default_socket(job)
    shm_dir = shm_dir or os.environ.get("AINFTP_SHM_DIR") or "/dev/shm"
    deadline = time.monotonic() + timeout
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() >= deadline:
                raise ConnectionLost(f"no ainftp node at {path} after {timeout} s ({e.strerror})",
                                     hint=f"start `ainftp swarm --serve --job {job} ...` on this host, or pass socket=") from None
            time.sleep(0.05)
        except PermissionError:
            sock.close()
            raise ConnectionLost(f"no permission to connect to {path}",
                                 hint="run the trainer as the node's user (the socket directory is 0700)") from None
    sock.settimeout(reply_timeout)
    try:
        greeting = {"type": "hello", "protocol": PROTOCOL, "version": VERSION, "pid": os.getpid(),
                    "name": name or f"pid {os.getpid()}", "local_size": local_size}
        if local_rank is not None:
            greeting["local_rank"] = local_rank
        if world is not None:
            greeting["world"] = world
        if bits is not None:
            greeting["bits"] = bits
        sock.sendall(encode(greeting))
        hello = read_frame(sock)
    except _socket.timeout:
        sock.close()
        raise DeadlineExceeded(f"no hello from the node at {path} within {reply_timeout} s") from None
    except BaseException:
        sock.close()
        raise
    if hello.get("status") != "ok":
        sock.close()
        raise error_for(hello)
    if bits is not None and hello.get("bits", 16) != bits:  # a node that did not check
        try:
            sock.sendall(encode({"type": "bye", "seq": 1}))  # a trainer that vanishes without bye ends the job
        except OSError:
            pass
        sock.close()
        raise BadRequest(f"this trainer asks for {bits}-bit gradients, but the node at {path} runs at {hello.get('bits', 16)} bits",
                         hint=f"start the swarm with --bits {bits} (on every node), or connect with bits={hello.get('bits', 16)}")
    return Client(sock, hello, job, shm_dir, reply_timeout, world=world, local_rank=local_rank)
