"""Controller RPC: the point-to-point protocol between a controller and its clients.

A controller (a lab-device server, ``artiq_bus.rpc.simple_server_loop``) binds a
ROUTER socket on its own port; clients connect a DEALER to it directly, without the
broker (docs/protocol.md §11 says why).  Frames as a client's DEALER sends and
receives them (the server's ROUTER adds and strips the client identity in front)::

    client → controller   "ARPC1" "INFO"    request_id
                          "ARPC1" "METHODS" request_id target
                          "ARPC1" "CALL"    request_id target method body *buffers
    controller → client   "ARPC1" "REP"     request_id status body *buffers

``body`` of ``CALL`` is ``[args, kwargs]``; ``status`` and error bodies are the bus's
(:class:`~.frames.Status`, :mod:`.errors`).  Bodies use the bus codec (:mod:`.codec`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

from .codec import pack, unpack
from .errors import (BusError, EncodeError, ProtocolError, error_from_wire, error_to_wire,
                     register_error)
from .frames import MAX_REQUEST_ID_BYTES, Status, check_name

__all__ = ["RPC_VERSION", "RpcCommand", "RpcRequest", "NoSuchTarget", "request_frames",
           "parse_request", "decode_call_arguments", "reply_frames", "parse_reply"]

#: Frame 0 of every controller RPC message (not ``ABUS1``: another protocol).
RPC_VERSION = b"ARPC1"


class RpcCommand(bytes, enum.Enum):
    """Frame 1 of every controller RPC message."""

    INFO = b"INFO"
    METHODS = b"METHODS"
    CALL = b"CALL"
    REPLY = b"REP"


#: How many frames follow the request id, at least, for each request command.
_MIN_FIELDS = {RpcCommand.INFO: 0, RpcCommand.METHODS: 1, RpcCommand.CALL: 3}
_COMMANDS = {command.value: command for command in RpcCommand}


@register_error
class NoSuchTarget(BusError, LookupError):
    """The controller serves no target of that name."""


@dataclasses.dataclass
class RpcRequest:
    """A request as the controller receives it (after the client identity)."""

    command: RpcCommand
    request_id: bytes
    target: str = ""
    method: str = ""
    body: Any = b""
    buffers: Sequence[Any] = ()


def _bytes(frame: Any) -> bytes:
    """A frame's bytes, whether received as ``zmq.Frame`` or given as bytes."""
    return frame if isinstance(frame, bytes) else bytes(getattr(frame, "bytes", frame))


def request_frames(command: RpcCommand, request_id: bytes, target: str = "", method: str = "",
                   args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> list[Any]:
    """The frames of a request (``args``/``kwargs`` only for ``CALL``)."""
    frames: list[Any] = [RPC_VERSION, command.value, request_id]
    if command is RpcCommand.METHODS:
        frames.append(target.encode())
    elif command is RpcCommand.CALL:
        body, buffers = pack([list(args), kwargs or {}])
        frames += [target.encode(), method.encode(), body, *buffers]
    return frames


def _check_request_id(frame: Any) -> bytes:
    request_id = _bytes(frame)
    if not 0 < len(request_id) <= MAX_REQUEST_ID_BYTES:
        raise ProtocolError(f"request id must be 1 to {MAX_REQUEST_ID_BYTES} bytes")
    return request_id


def parse_request(frames: Sequence[Any]) -> RpcRequest:
    """A request from its frames (without the client identity); ProtocolError if bad."""
    if len(frames) < 3 or _bytes(frames[0]) != RPC_VERSION:
        raise ProtocolError("missing or wrong version frame")
    command = _COMMANDS.get(_bytes(frames[1]))
    if command is None or command is RpcCommand.REPLY:
        raise ProtocolError(f"unknown request command {_bytes(frames[1])[:16]!r}")
    request = RpcRequest(command, _check_request_id(frames[2]))
    fields = frames[3:]
    if len(fields) < _MIN_FIELDS[command] or (command is not RpcCommand.CALL
                                              and len(fields) != _MIN_FIELDS[command]):
        raise ProtocolError(f"{command.value.decode()} with {len(fields)} frames after "
                            "the request id")
    if fields:
        request.target = check_name(_bytes(fields[0]), "target") if _bytes(fields[0]) else ""
    if command is RpcCommand.CALL:
        request.method = check_name(_bytes(fields[1]), "method")
        request.body, request.buffers = fields[2], fields[3:]
    return request


def decode_call_arguments(request: RpcRequest) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` of a ``CALL``; ProtocolError if the body is not ``[args, kwargs]``."""
    body = request.body
    arguments = unpack(body.buffer if hasattr(body, "buffer") else body, request.buffers)
    if (not isinstance(arguments, list) or len(arguments) != 2
            or not isinstance(arguments[0], list) or not isinstance(arguments[1], dict)
            or not all(isinstance(k, str) for k in arguments[1])):
        raise ProtocolError("call body must be [args, kwargs]")
    return arguments[0], arguments[1]


def reply_frames(request_id: bytes, value: Any = None,
                 error: BaseException | None = None) -> list[Any]:
    """The frames of a reply: ``value``, or ``error`` as an error body.  A value the codec
    cannot carry becomes an :class:`EncodeError` reply."""
    if error is None:
        try:
            body, buffers = pack(value)
            return [RPC_VERSION, RpcCommand.REPLY.value, request_id, Status.OK.value, body,
                    *buffers]
        except EncodeError as exc:
            error = exc
    body, buffers = pack(error_to_wire(error))
    return [RPC_VERSION, RpcCommand.REPLY.value, request_id, Status.ERROR.value, body, *buffers]


def parse_reply(frames: Sequence[Any]) -> tuple[bytes, bool, Any]:
    """``(request_id, ok, value)`` of a reply; ``value`` is the exception when not ok."""
    if (len(frames) < 5 or _bytes(frames[0]) != RPC_VERSION
            or _bytes(frames[1]) != RpcCommand.REPLY.value):
        raise ProtocolError("not a controller RPC reply")
    status = _bytes(frames[3])
    if status not in (Status.OK.value, Status.ERROR.value):
        raise ProtocolError(f"bad status {status[:4]!r}")
    body = frames[4]
    value = unpack(body.buffer if hasattr(body, "buffer") else body, frames[5:])
    if status == Status.OK.value:
        return _bytes(frames[2]), True, value
    return _bytes(frames[2]), False, error_from_wire(value)

