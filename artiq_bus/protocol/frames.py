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
from collections.abc import Iterable, Sequence
from typing import Any

from .codec import freeze_buffers, pack, unpack
from .errors import EncodeError, ProtocolError, error_from_wire, error_to_wire

__all__ = ["VERSION", "Command", "Liveness", "Status", "encode_timeout", "decode_timeout",
           "MAX_NAME_BYTES", "MAX_REQUEST_ID_BYTES", "check_name", "split_command",
           "frame_bytes", "frame_buffer", "request_envelope", "message_envelope",
           "register_envelope", "reply_envelope", "reply_result"]

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


# -- building and reading messages (every peer builds them the same way) ----------------

def frame_bytes(frame: Any) -> bytes:
    """A frame's content as ``bytes`` (a received ``zmq.Frame``, or ``bytes`` as they are)."""
    return frame if type(frame) is bytes else frame.bytes


def frame_buffer(frame: Any) -> Any:
    """A frame's content without a copy (``bytes`` stay as they are)."""
    return frame if type(frame) is bytes else frame.buffer


def request_envelope(request_id: bytes, service: str, method: str, timeout_s: float,
                     body: Any, buffers: Sequence[Any] = ()) -> list[Any]:
    """A caller's ``REQ``: ``body`` is the packed ``[args, kwargs]``, ``buffers`` its
    out-of-band frames."""
    return [VERSION, Command.REQUEST.value, request_id, service.encode(), method.encode(),
            encode_timeout(timeout_s), body, *buffers]


def message_envelope(service: str, method: str, body: Any,
                     buffers: Sequence[Any] = ()) -> list[Any]:
    """A caller's one-way ``MSG`` (``body`` as for :func:`request_envelope`)."""
    return [VERSION, Command.MESSAGE.value, service.encode(), method.encode(), body, *buffers]


def register_envelope(service: str, methods: Iterable[str], liveness: Liveness) -> list[Any]:
    """A service's ``REG``, declaring ``methods`` (sorted) and how it is judged alive."""
    body, _ = pack({"methods": sorted(methods), "liveness": liveness.value})
    return [VERSION, Command.REGISTER.value, service.encode(), body]


def reply_envelope(caller: bytes, request_id: bytes, result: Any = None,
                   error: BaseException | None = None) -> list[Any]:
    """A service's ``REP`` to the ``REQ`` of ``caller``: ``result``, or ``error`` as an
    error body.  A result the codec cannot carry becomes an :class:`EncodeError` reply.
    The result's arrays are made read-only: ZeroMQ sends them from their own memory,
    later, and they must not change meanwhile."""
    if error is None:
        try:
            body, buffers = pack(result)
        except EncodeError as exc:
            error = exc
        else:
            freeze_buffers(buffers)
            return [VERSION, Command.REPLY.value, caller, request_id, Status.OK.value, body,
                    *buffers]
    body, buffers = pack(error_to_wire(error))
    return [VERSION, Command.REPLY.value, caller, request_id, Status.ERROR.value, body,
            *buffers]


def reply_result(rest: Sequence[Any]) -> Any:
    """The value of a caller's ``REP`` from its frames after the command (``request_id
    status body *buffers``, at least 3); raises the error it carries, or
    :class:`ProtocolError` when it is malformed."""
    status = frame_bytes(rest[1])
    value = unpack(frame_buffer(rest[2]), rest[3:])
    if status == Status.OK.value:
        return value
    if status == Status.ERROR.value:
        raise error_from_wire(value)
    raise ProtocolError(f"bad reply status {status[:4]!r}")
