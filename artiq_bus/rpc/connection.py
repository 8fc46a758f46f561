"""What every controller client shares: the socket, its connection state, the target.

A client is a DEALER connected straight to the controller's port.  ZeroMQ connects in
the background and reconnects by itself, so a client follows the socket's monitor
events to know whether a controller is there: a refused connection fails the first
contact at once (as sipyco's ``ConnectionRefusedError`` did), and a connection lost
with calls in flight fails those calls at once instead of leaving them waiting.
"""

from __future__ import annotations

import enum
from typing import Any

import zmq

from ..net import CurveClient, configure, tcp_endpoint
from ..protocol import ProtocolError
from ..protocol.rpc import NoSuchTarget
from .errors import ControllerUnavailable

__all__ = ["AutoTarget", "DEFAULT_CONNECT_TIMEOUT_S", "LinkState", "Link", "open_socket",
           "monitor_event", "choose_target", "check_info", "check_methods"]

#: How long the first contact with a controller may take by default.
DEFAULT_CONNECT_TIMEOUT_S = 10.0

_MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED


class AutoTarget:
    """Use the controller's only target (an error if it has several)."""


class LinkState(enum.Enum):
    """Whether the client's socket is connected to a controller."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


class Link:
    """A client socket's connection state, from its monitor events."""

    def __init__(self, host: str, port: int):
        self.where = f"{host} port {port}"
        self.state = LinkState.CONNECTING

    def on_event(self, event: int) -> str | None:
        """Update the state; a reason when the event fails requests in flight."""
        if event == zmq.EVENT_CONNECTED:
            self.state = LinkState.UP
            return None
        was = self.state
        self.state = LinkState.DOWN
        if event == zmq.EVENT_DISCONNECTED:
            return f"connection to the controller at {self.where} lost"
        if was is LinkState.CONNECTING:  # EVENT_CONNECT_RETRIED before any connection
            return f"no controller at {self.where} (connection refused)"
        return None

    def check_usable(self) -> None:
        """Fail at once when the last event said the controller is gone."""
        if self.state is LinkState.DOWN:
            raise ControllerUnavailable(f"no connection to the controller at {self.where}")


def open_socket(context: zmq.Context, host: str, port: int,
                curve: CurveClient | None) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER connecting to the controller, and its monitor socket."""
    sock = configure(context.socket(zmq.DEALER), sndhwm=10_000, rcvhwm=10_000)
    if curve is not None:
        curve.apply(sock)
    monitor = sock.get_monitor_socket(_MONITORED)
    try:
        sock.connect(tcp_endpoint(host, port))
    except zmq.ZMQError as exc:
        sock.disable_monitor()
        monitor.close()
        sock.close()
        raise ControllerUnavailable(f"cannot connect to {host} port {port}: {exc}") from None
    return sock, monitor


def monitor_event(frames: list[Any]) -> int:
    """The event number of a monitor message."""
    first = frames[0]
    raw = first if isinstance(first, bytes) else first.bytes
    return int.from_bytes(raw[:2], "little")


def check_info(info: Any) -> tuple[list[str], str | None]:
    """``(targets, description)`` from an ``INFO`` reply."""
    if (not isinstance(info, dict) or not isinstance(info.get("targets"), list)
            or not all(isinstance(t, str) for t in info["targets"])):
        raise ProtocolError("INFO reply must be {\"targets\": [names], \"description\"}")
    description = info.get("description")
    return info["targets"], description if isinstance(description, str) else None


def check_methods(listing: Any) -> dict[str, Any]:
    """The ``methods`` map of a ``METHODS`` reply."""
    if not isinstance(listing, dict) or not isinstance(listing.get("methods"), dict):
        raise ProtocolError("METHODS reply must be {\"docstring\", \"methods\": {...}}")
    return listing["methods"]


def choose_target(targets: list[str], target_name: Any, where: str) -> str:
    """The target to use: ``target_name``, or the only one for :class:`AutoTarget`."""
    if target_name is AutoTarget or isinstance(target_name, AutoTarget):
        if len(targets) != 1:
            raise ValueError(f"the controller at {where} has several targets "
                             f"({', '.join(targets)}): give a target name")
        return targets[0]
    if target_name not in targets:
        raise NoSuchTarget(f"the controller at {where} has no target {target_name!r} "
                           f"(it has {', '.join(targets)})")
    return str(target_name)
