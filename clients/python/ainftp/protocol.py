"""The ainftp local protocol, version 3: framing, status codes, errors.

A frame is the body's length (4 bytes, unsigned, little-endian) followed by
the body, one JSON object in UTF-8 with a string "type". See README.md.
"""
import json
import struct

PROTOCOL = "ainftp-local"
VERSION = 3
# bits per gradient coordinate a job may run at (the node's `swarm --bits`)
BIT_WIDTHS = (16, 8, 4)
MAX_FRAME = 64 * 1024

_LEN = struct.Struct("<I")


class AinftpError(Exception):
    """A request failed; `status` is the node's status code (or a local one)."""

    status = "internal"

    def __init__(self, message, status=None, hint=None, missing=None):
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))
        if status is not None:
            self.status = status
        self.message = message
        self.hint = hint
        self.missing = list(missing or [])


class BadRequest(AinftpError):
    status = "bad_request"


class VersionMismatch(AinftpError):
    status = "version_mismatch"


class NodeBusy(AinftpError):
    status = "busy"


class RoundFailed(AinftpError):
    """The collective could not complete; the job must be restarted."""

    status = "round_failed"


class PeerMissing(RoundFailed):
    """A member of the job left or never answered; `missing` lists its ranks."""

    status = "peer_missing"


class DeadlineExceeded(RoundFailed):
    status = "deadline_exceeded"


class Quarantined(RoundFailed):
    """Reserved: this node was excluded from the job."""

    status = "quarantined"


class NodeShuttingDown(AinftpError):
    status = "shutting_down"


class ConnectionLost(AinftpError):
    """The node closed the connection (it stopped, or its job failed)."""

    status = "connection_lost"


_BY_STATUS = {c.status: c for c in (BadRequest, VersionMismatch, NodeBusy, RoundFailed, PeerMissing,
                                     DeadlineExceeded, Quarantined, NodeShuttingDown)}


def error_for(reply):
    """The exception a non-ok reply stands for."""
    status = reply.get("status", "internal")
    cls = _BY_STATUS.get(status, AinftpError)
    return cls(str(reply.get("message", status)), status=status, hint=reply.get("hint"), missing=reply.get("missing"))


def encode(msg):
    body = json.dumps(msg, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise BadRequest(f"a {msg.get('type')} message of {len(body)} bytes is over the {MAX_FRAME}-byte frame limit")
    return _LEN.pack(len(body)) + body


def _read_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionLost("the node closed the connection")
        out += chunk
    return bytes(out)


def read_frame(sock):
    """The next message from sock (a dict); raises ConnectionLost at EOF."""
    (n,) = _LEN.unpack(_read_exact(sock, 4))
    if n == 0 or n > MAX_FRAME:
        raise BadRequest(f"frame of {n} bytes from the node: not an ainftp node?")
    msg = json.loads(_read_exact(sock, n).decode("utf-8"))
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise BadRequest("the node sent a frame that is not a JSON object with a type")
    return msg
