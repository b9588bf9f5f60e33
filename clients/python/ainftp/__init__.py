"""ainftp for trainers: all-reduce through this host's ainftp node.

    import ainftp
    ainftp.connect(job=7)                 # the node: ainftp swarm ... --job 7 --serve (K trainers may share it)
    ainftp.connect(job=7, bits=8)         # ... and insist on its --bits (16, 8 or 4): another width is refused
    ainftp.allreduce(tensor, op="mean")   # CPU or CUDA float32 tensor, in place

    model.register_comm_hook(None, ainftp.torch.comm_hook)   # DDP (error feedback on below 16 bits: HookState)

Standard library only; `ainftp.torch` (the DDP hook) imports torch.
"""
import atexit as _atexit

from .session import Client, default_socket
from .session import connect as _connect
from .protocol import (PROTOCOL, VERSION, AinftpError, BadRequest, ConnectionLost, DeadlineExceeded, NodeBusy,
                       NodeShuttingDown, PeerMissing, Quarantined, RoundFailed, VersionMismatch)

__all__ = [
    "connect", "allreduce", "close", "client", "Client", "default_socket", "PROTOCOL", "VERSION",
    "AinftpError", "BadRequest", "ConnectionLost", "DeadlineExceeded", "NodeBusy", "NodeShuttingDown",
    "PeerMissing", "Quarantined", "RoundFailed", "VersionMismatch",
]

_default = None


def connect(job=None, socket=None, **kw):
    """Connects to this host's node and makes it the default client (see client.connect)."""
    global _default
    c = _connect(job=job, socket=socket, **kw)
    if _default is not None:
        _default.close()
    _default = c
    return c


def client():
    """The default client (from connect())."""
    if _default is None:
        raise ConnectionLost("not connected: call ainftp.connect(job=...) first")
    return _default


def allreduce(data, op="sum"):
    """All-reduces `data` in place over every trainer of the job through the default client."""
    return client().allreduce(data, op=op)


def close():
    """Closes the default client (also done at exit)."""
    global _default
    if _default is not None:
        _default.close()
        _default = None


_atexit.register(close)


def __getattr__(name):
    # `ainftp.torch` without importing torch until it is used
    if name == "torch":
        import importlib
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'ainftp' has no attribute {name!r}")
