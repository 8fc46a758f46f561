"""Blocking controller clients: :class:`Client` and :class:`BestEffortClient`.

``Client(host, port, target_name)`` makes first contact at construction (a controller
that is not there fails at once), then ``client.method(*args)`` calls the target.
One call at a time per client, as in sipyco; use one client per thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from ..net import CurveClient, readable, recv_frames, send_frames
from ..protocol import ProtocolError
from ..protocol.rpc import RpcCommand, parse_reply, request_frames
from .connection import (DEFAULT_CONNECT_TIMEOUT_S, AutoTarget, Link, check_info,
                         check_methods, choose_target, monitor_event, open_socket)
from .errors import NETWORK_ERRORS, ControllerTimeout, ControllerUnavailable

__all__ = ["Client", "BestEffortClient"]

logger = logging.getLogger(__name__)


class Client:
    """A blocking client of one target of a controller.

    ``timeout`` bounds each call (``None``: no bound, but a lost connection still fails
    the call within seconds); ``connect_timeout`` bounds the first contact.
    ``retry_refused``: wait (up to ``connect_timeout``) for a controller that is still
    starting instead of failing when the connection is refused.
    """

    def __init__(self, host: str, port: int, target_name: Any = AutoTarget,
                 timeout: float | None = None, *, curve: CurveClient | None = None,
                 connect_timeout: float | None = None, retry_refused: bool = False,
                 context: zmq.Context | None = None):
        self._timeout = timeout
        self._retry_refused = retry_refused
        self._ids = itertools.count(1)
        self._link = Link(host, port)
        self._target: str | None = None
        self._methods: dict[str, Any] = {}
        self._sock, self._monitor = open_socket(context or zmq.Context.instance(), host,
                                                port, curve)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        try:
            if connect_timeout is None:
                connect_timeout = DEFAULT_CONNECT_TIMEOUT_S if timeout is None else timeout
            info = self._request(RpcCommand.INFO, connect_timeout, first=True)
            self._targets, self._description = check_info(info)
            if target_name is not None:
                self.select_rpc_target(target_name)
        except BaseException:
            self.close_rpc()
            raise

    # -- sipyco's API -----------------------------------------------------------------

    def select_rpc_target(self, target_name: Any) -> None:
        """Use ``target_name`` (or the only target, for :class:`AutoTarget`)."""
        target = choose_target(self._targets, target_name, self._link.where)
        self._methods = check_methods(self._request(RpcCommand.METHODS, self._timeout,
                                                    target=target))
        self._target = target

    def get_selected_target(self) -> str | None:
        return self._target

    def get_rpc_id(self) -> tuple[list[str], str | None]:
        """The controller's target names and description."""
        return list(self._targets), self._description

    def get_rpc_method_list(self) -> dict[str, Any]:
        """``{"docstring", "methods": {name: {"signature", "docstring"}}}`` of the target."""
        return self._request(RpcCommand.METHODS, self._timeout, target=self._selected())

    def close_rpc(self) -> None:
        """Close the connection (idempotent)."""
        sock = self.__dict__.pop("_sock", None)
        monitor = self.__dict__.pop("_monitor", None)
        if sock is not None:
            sock.disable_monitor()
            sock.close()
        if monitor is not None:
            monitor.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_rpc()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        methods = self.__dict__.get("_methods", {})
        if name.startswith("_") or name not in methods:
            raise AttributeError(f"controller target {self.__dict__.get('_target')!r} has no "
                                 f"method {name!r}")

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._request(RpcCommand.CALL, self._timeout, target=self._selected(),
                                 method=name, args=args, kwargs=kwargs)
        call.__name__ = name
        call.__doc__ = methods[name].get("docstring") if isinstance(methods[name], dict) else None
        return call

    # -- requests ---------------------------------------------------------------------

    def _selected(self) -> str:
        if self._target is None:
            raise ValueError("no target selected (select_rpc_target)")
        return self._target

    def _request(self, command: RpcCommand, timeout: float | None, *, first: bool = False,
                 target: str = "", method: str = "", args: Any = (),
                 kwargs: dict[str, Any] | None = None) -> Any:
        if "_sock" not in self.__dict__:
            raise ControllerUnavailable(f"client of {self._link.where} is closed")
        self._drain_monitor(first)
        if not first:
            self._link.check_usable()
        request_id = next(self._ids).to_bytes(8, "big")
        try:
            send_frames(self._sock, request_frames(command, request_id, target, method,
                                                   args, kwargs))
        except zmq.Again:
            raise ControllerUnavailable(f"cannot send to {self._link.where}") from None
        return self._wait_reply(request_id, timeout, first)

    def _wait_reply(self, request_id: bytes, timeout: float | None, first: bool) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None
            if deadline is not None:
                wait_ms = max(0, round((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(wait_ms))
            lost = None
            if self._monitor in ready:
                try:
                    self._drain_monitor(first)
                except ControllerUnavailable as exc:
                    lost = exc  # the reply may have arrived just before the loss
            while readable(self._sock):
                reply = self._read_reply(request_id)
                if reply is not None:
                    ok, value = reply
                    if ok:
                        return value
                    raise value
            if lost is not None:
                raise lost
            if deadline is not None and time.monotonic() >= deadline:
                raise ControllerTimeout(f"no reply from the controller at "
                                        f"{self._link.where} within {timeout:g} s")

    def _read_reply(self, request_id: bytes) -> tuple[bool, Any] | None:
        frames = recv_frames(self._sock)
        try:
            reply_id, ok, value = parse_reply(frames)
        except ProtocolError as exc:
            logger.warning("controller client: bad reply from %s: %s", self._link.where, exc)
            return None
        return (ok, value) if reply_id == request_id else None  # a late reply: dropped

    def _drain_monitor(self, first: bool) -> None:
        """Apply waiting monitor events; a lost (or, at first contact, refused)
        connection fails the request."""
        reason = None
        while readable(self._monitor):
            event_reason = self._link.on_event(monitor_event(
                self._monitor.recv_multipart(zmq.NOBLOCK)))
            reason = reason or event_reason
        if reason is not None and not (first and self._retry_refused):
            raise ControllerUnavailable(reason)


class BestEffortClient:
    """A client whose network errors give ``None`` instead of raising.

    When the controller cannot be reached (at construction, within ``firstcon_timeout``,
    or later), calls return ``None`` at once and a background thread tries again every
    ``retry`` seconds.  Errors raised by the controller's methods are still raised.
    """

    def __init__(self, host: str, port: int, target_name: Any = AutoTarget,
                 firstcon_timeout: float = 1.0, retry: float = 5.0, *,
                 curve: CurveClient | None = None):
        self._address = (host, port, target_name, curve)
        self._retry = retry
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        try:
            self._client = self._connect(firstcon_timeout)
        except NETWORK_ERRORS as exc:
            logger.warning("controller at %s port %s: %s; retrying every %g s in the "
                           "background", host, port, exc, retry)
            self._start_retrying()

    def _connect(self, timeout: float) -> Client:
        host, port, target_name, curve = self._address
        return Client(host, port, target_name, curve=curve, connect_timeout=timeout)

    def _start_retrying(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._retry_loop, daemon=True,
                                            name="rpc-best-effort-retry")
            self._thread.start()

    def _retry_loop(self) -> None:
        while not self._stop.wait(self._retry):
            try:
                client = self._connect(self._retry)
            except NETWORK_ERRORS:
                continue
            except Exception as exc:  # a wrong target name: keep trying, say why
                logger.error("controller at %s port %s: %s", *self._address[:2], exc)
                continue
            with self._lock:
                if self._stop.is_set():
                    client.close_rpc()
                    return
                self._client = client
            logger.info("controller at %s port %s: connected again", *self._address[:2])
            return

    def _drop(self, client: Client, exc: Exception) -> None:
        with self._lock:
            if self._client is not client:
                return
            self._client = None
        client.close_rpc()
        logger.warning("controller at %s port %s: %s; calls return None until it is back",
                       *self._address[:2], exc)
        if not self._stop.is_set():
            self._start_retrying()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                client = self._client
            if client is None:
                return None
            method = getattr(client, name)
            try:
                return method(*args, **kwargs)
            except NETWORK_ERRORS as exc:
                self._drop(client, exc)
                return None
        call.__name__ = name
        return call

    def get_selected_target(self) -> str | None:
        with self._lock:
            return self._client.get_selected_target() if self._client else None

    def close_rpc(self) -> None:
        """Stop retrying and close the connection."""
        self._stop.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close_rpc()

    def __enter__(self) -> "BestEffortClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_rpc()
