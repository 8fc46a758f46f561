"""The request/reply envelope: every message on the broker's ROUTER socket.

Frames as a peer's DEALER socket sends and receives them (the broker's ROUTER adds
and strips the peer identity in front).  ``VERSION`` is always frame 0; frame 1 is a
:class:`Command`.  ``body`` is a msgpack body (:mod:`.codec`) and ``*buffers`` its
out-of-band frames.

Caller → broker::

    REQ  request_id service method timeout_ms body *buffers
    MSG  service method body *buffers                      (one-way, no reply)

Broker → caller::

    REP  request_id status body *buffers

Service → broker::

    REG  service body={"methods": [...]}                   (register)
    REP  caller request_id status body *buffers
    HB                                                      (heartbeat)
    BYE                                                     (unregister)

Broker → service::

    ACK  service                                            (registered)
    REQ  caller request_id method timeout_ms body *buffers
    MSG  caller method body *buffers
    HB
    BYE                                                     (unknown peer: register again)
    BYE  service                                            (another peer took the service
                                                             over: do not register again)

``timeout_ms`` is 4 bytes, unsigned big-endian: how long the caller waits.
``status`` is one byte: ``0`` the body is the result, ``1`` the body is an error
``{"type", "message", "traceback"}`` (:mod:`.errors`).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Any

from .errors import ProtocolError

__all__ = ["VERSION", "Command", "Liveness", "Status", "encode_timeout", "decode_timeout",
           "MAX_NAME_BYTES", "MAX_REQUEST_ID_BYTES", "check_name", "split_command"]

#: Frame 0 of every message.  A peer that sends anything else is dropped.
VERSION = b"ABUS1"

#: Service and method names are short UTF-8 identifiers.
MAX_NAME_BYTES = 128
#: Callers choose request ids; the broker only copies them back.
MAX_REQUEST_ID_BYTES = 64

_TIMEOUT = struct.Struct(">I")


class Command(bytes, enum.Enum):
    """Frame 1 of every message on the ROUTER socket."""

    REQUEST = b"REQ"
    REPLY = b"REP"
    MESSAGE = b"MSG"
    REGISTER = b"REG"
    ACK = b"ACK"
    HEARTBEAT = b"HB"
    BYE = b"BYE"


class Liveness(str, enum.Enum):
    """How the broker tells that a service is gone (``"liveness"`` in its ``REG``)."""

    #: Silence for ``liveness`` heartbeat intervals, or its connection gone.
    HEARTBEAT = "heartbeat"
    #: Only its connection gone (ZeroMQ's own heartbeats keep a live process's
    #: connection up): for a service that may be silent for long, such as a worker
    #: whose experiment holds the GIL in a long computation.
    CONNECTION = "connection"


class Status(bytes, enum.Enum):
    """Frame ``status`` of a reply."""

    OK = b"\x00"
    ERROR = b"\x01"


def encode_timeout(seconds: float) -> bytes:
    """The ``timeout_ms`` frame for a deadline of ``seconds`` from now."""
    ms = int(min(max(seconds * 1000, 1), 0xFFFFFFFF))  # clamp first: inf is valid
    return _TIMEOUT.pack(ms)


def decode_timeout(frame: bytes) -> float:
    """Seconds from a ``timeout_ms`` frame."""
    if len(frame) != 4:
        raise ProtocolError("timeout frame must be 4 bytes")
    return _TIMEOUT.unpack(frame)[0] / 1000.0


def check_name(frame: Any, what: str) -> str:
    """A service or method name from its frame, validated."""
    raw = bytes(frame)
    if not raw or len(raw) > MAX_NAME_BYTES:
        raise ProtocolError(f"{what} name must be 1 to {MAX_NAME_BYTES} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} name is not UTF-8") from None


def split_command(frames: Sequence[Any]) -> tuple[Command, Sequence[Any]]:
    """Check the version frame and return the command and the frames after it."""
    if len(frames) < 2 or bytes(frames[0]) != VERSION:
        raise ProtocolError("missing or wrong version frame")
    command = _COMMANDS.get(bytes(frames[1]))  # a dict: Command(...) costs microseconds
    if command is None:
        raise ProtocolError(f"unknown command {bytes(frames[1])[:16]!r}")
    return command, frames[2:]


_COMMANDS = {command.value: command for command in Command}
