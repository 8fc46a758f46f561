"""The asyncio controller client: :class:`AsyncioClient` (sipyco's API).

``await client.connect_rpc(host, port, target_name)``, then ``await client.method()``.
Unlike sipyco's, many calls may be in flight on one client (replies are matched by
request id); the controller still runs them one at a time unless it allows parallel
calls.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from ..net import CurveClient, SocketReader, readable, recv_frames, send_frames
from ..protocol import ProtocolError
from ..protocol.rpc import RpcCommand, parse_reply, request_frames
from .connection import (DEFAULT_CONNECT_TIMEOUT_S, AutoTarget, Link, check_info,
                         check_methods, choose_target, monitor_event, open_socket)
from .errors import ControllerTimeout, ControllerUnavailable

__all__ = ["AsyncioClient"]

logger = logging.getLogger(__name__)


class AsyncioClient:
    """An asyncio client of one target of a controller."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._readers: list[SocketReader] = []
        self._link: Link | None = None
        self._first_contact = False
        self._retry_refused = False
        self._targets: list[str] = []
        self._description: str | None = None
        self._target: str | None = None
        self._methods: dict[str, Any] = {}
        self._timeout: float | None = None

    async def connect_rpc(self, host: str, port: int, target_name: Any = AutoTarget, *,
                          timeout: float | None = None, connect_timeout: float | None = None,
                          curve: CurveClient | None = None, retry_refused: bool = False,
                          context: zmq.Context | None = None) -> None:
        """Contact the controller and select ``target_name``.

        ``timeout`` bounds each call (``None``: no bound; a lost connection still fails
        it).  ``retry_refused``: wait (up to ``connect_timeout``) for a controller that
        is still starting instead of failing when the connection is refused.
        """
        self._timeout = timeout
        self._retry_refused = retry_refused
        self._link = Link(host, port)
        self._sock, self._monitor = open_socket(context or zmq.Context.instance(), host,
                                                port, curve)
        self._readers = [SocketReader(self._sock, on_message=self._on_reply),
                         SocketReader(self._monitor, on_message=self._on_event, copy=True)]
        if connect_timeout is None:
            connect_timeout = DEFAULT_CONNECT_TIMEOUT_S if timeout is None else timeout
        self._first_contact = True
        try:
            info = await self._request(RpcCommand.INFO, connect_timeout)
            self._targets, self._description = check_info(info)
            self._first_contact = False
            if target_name is not None:
                await self.select_rpc_target(target_name)
        except BaseException:
            self.close_rpc()
            raise

    async def select_rpc_target(self, target_name: Any) -> None:
        assert self._link is not None
        target = choose_target(self._targets, target_name, self._link.where)
        self._methods = check_methods(await self._request(RpcCommand.METHODS, self._timeout,
                                                          target=target))
        self._target = target

    def get_selected_target(self) -> str | None:
        return self._target

    def get_rpc_id(self) -> tuple[list[str], str | None]:
        return list(self._targets), self._description

    async def get_rpc_method_list(self) -> dict[str, Any]:
        return await self._request(RpcCommand.METHODS, self._timeout, target=self._selected())

    def close_rpc(self) -> None:
        """Close the connection; calls in flight fail (idempotent)."""
        for reader in self._readers:
            reader.close()
        self._readers = []
        if self._sock is not None:
            self._sock.disable_monitor()
            self._sock.close()
        if self._monitor is not None:
            self._monitor.close()
        self._sock = self._monitor = None
        self._fail_all(ControllerUnavailable("client closed"))

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        methods = self.__dict__.get("_methods", {})
        if name.startswith("_") or name not in methods:
            raise AttributeError(f"controller target {self.__dict__.get('_target')!r} has no "
                                 f"method {name!r}")

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._request(RpcCommand.CALL, self._timeout,
                                       target=self._selected(), method=name, args=args,
                                       kwargs=kwargs)
        call.__name__ = name
        return call

    # -- requests ---------------------------------------------------------------------

    def _selected(self) -> str:
        if self._target is None:
            raise ValueError("no target selected (select_rpc_target)")
        return self._target

    async def _request(self, command: RpcCommand, timeout: float | None, *,
                       target: str = "", method: str = "", args: Any = (),
                       kwargs: dict[str, Any] | None = None) -> Any:
        if self._sock is None or self._link is None:
            raise ControllerUnavailable("client not connected (connect_rpc)")
        if not self._first_contact:
            self._link.check_usable()
        request_id = next(self._ids).to_bytes(8, "big")
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            try:
                send_frames(self._sock, request_frames(command, request_id, target, method,
                                                       args, kwargs))
            except zmq.Again:
                raise ControllerUnavailable(f"cannot send to {self._link.where}") from None
            for reader in self._readers:
                reader.after_send()
            return await self._wait(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    async def _wait(self, future: asyncio.Future[Any], timeout: float | None) -> Any:
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await future
        except TimeoutError:
            if not scope.expired():
                raise  # the method's own TimeoutError, from the controller
            assert self._link is not None
            raise ControllerTimeout(f"no reply from the controller at {self._link.where} "
                                    f"within {timeout:g} s") from None

    def _on_reply(self, frames: list[zmq.Frame]) -> None:
        try:
            request_id, ok, value = parse_reply(frames)
        except ProtocolError as exc:
            where = self._link.where if self._link else "?"
            logger.warning("controller client: bad reply from %s: %s", where, exc)
            return
        future = self._pending.get(request_id)
        if future is None or future.done():
            return  # its caller gave up
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _on_event(self, frames: list[bytes]) -> None:
        assert self._link is not None
        reason = self._link.on_event(monitor_event(frames))
        if reason is None:
            return
        if self._first_contact and self._retry_refused:
            return  # the controller may still be starting: ZeroMQ keeps trying
        sock = self._sock
        while sock is not None and readable(sock):
            self._on_reply(recv_frames(sock))  # replies that came just before the loss
        self._fail_all(ControllerUnavailable(reason))

    def _fail_all(self, exc: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
