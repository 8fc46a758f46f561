"""Serving controller targets: :class:`Server` and :func:`simple_server_loop`.

The wire format is :mod:`artiq_bus.protocol.rpc`.  One ROUTER socket per server, read
in batches on the loop.  A target's plain (blocking) methods run on a worker thread
and coroutine methods on the loop; by default calls run one at a time across all
clients (``allow_parallel=False``, as sipyco: drivers are rarely safe to call
concurrently).  Because driver code never runs on the loop, the server keeps answering
``INFO``, ``METHODS``, the built-in ``ping`` and ``terminate`` while a call blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ..net import CurveServer, SocketReader, configure, is_loopback, send_frames, tcp_endpoint
from ..protocol import NoSuchMethod, Overloaded, ProtocolError
from ..protocol.rpc import (NoSuchTarget, RpcCommand, RpcRequest, decode_call_arguments,
                            parse_request, reply_frames)
from .errors import ServerConfigError
from .common_args import CONFIG_EXIT_CODE
from .targets import describe_target, public_methods

__all__ = ["Server", "simple_server_loop", "MAX_CALLS_IN_FLIGHT"]

logger = logging.getLogger(__name__)

#: Calls beyond this many waiting or running are refused with ``Overloaded``.
MAX_CALLS_IN_FLIGHT = 1000
#: How long a stopping server may take to deliver its last replies (``terminate``'s).
_CLOSE_LINGER_MS = 1000
#: Where a reply's out-of-band frames start (version, command, request id, status, body).
_REPLY_BUFFERS = 5
#: Peers whose first malformed message was logged (bounded: peers come and go).
_MAX_LOGGED_PEERS = 1000


class Server:
    """Serves ``targets`` (name → object) to controller RPC clients."""

    def __init__(self, targets: dict[str, Any], description: str | None = None,
                 builtin_terminate: bool = False, allow_parallel: bool = False):
        if not targets:
            raise ValueError("a controller needs at least one target")
        self.targets = dict(targets)
        self.description = description
        self.builtin_terminate = builtin_terminate
        self.bad_messages = 0
        self._methods = {name: public_methods(target) for name, target in targets.items()}
        self._lock: contextlib.AbstractAsyncContextManager[Any] = (
            contextlib.nullcontext() if allow_parallel else asyncio.Lock())
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=8 if allow_parallel else 1, thread_name_prefix="rpc-call")
        self._terminate = asyncio.Event()
        self._calls: set[asyncio.Task[None]] = set()
        self._logged_peers: set[bytes] = set()
        self._sock: zmq.Socket | None = None
        self._reader: SocketReader | None = None
        self._curve: CurveServer | None = None
        self.label = "+".join(sorted(self.targets))

    async def start(self, host: str | Sequence[str], port: int, *,
                    curve: CurveServer | None = None, insecure: bool = False,
                    context: zmq.Context | None = None) -> None:
        """Listen on ``host`` (one host or several) and ``port``.

        A host that is not a loopback address needs ``curve`` (CurveZMQ keys) or an
        explicit ``insecure``.
        """
        hosts = [host] if isinstance(host, str) else list(host)
        exposed = [h for h in hosts if not is_loopback(h)]
        if exposed and curve is None and not insecure:
            raise ServerConfigError(
                f"listening on {', '.join(exposed)} needs CurveZMQ keys "
                "(--curve-secret-key, --curve-allowed-keys) or --insecure")
        context = context or zmq.Context.instance()
        sock = configure(context.socket(zmq.ROUTER), sndhwm=10_000, rcvhwm=10_000)
        if curve is not None:
            curve.start(context)
            curve.apply(sock)
            self._curve = curve
        try:
            for h in hosts:
                sock.bind(tcp_endpoint(h, port))
        except zmq.ZMQError as exc:
            sock.close()
            self._stop_curve()
            raise ServerConfigError(f"cannot listen on {h} port {port}: {exc}") from None
        self._sock = sock
        self._reader = SocketReader(sock, on_message=self._on_message)
        if exposed and curve is None:
            logger.warning("controller %s: listening on %s WITHOUT authentication "
                           "(--insecure)", self.label, ", ".join(exposed))
        logger.info("controller %s: serving on port %d of %s", self.label, port,
                    ", ".join(hosts))

    async def stop(self) -> None:
        """Stop serving; calls still running on the worker thread are abandoned."""
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=_CLOSE_LINGER_MS)
            self._sock = None
        self._stop_curve()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _stop_curve(self) -> None:
        if self._curve is not None:
            self._curve.stop()
            self._curve = None

    def request_terminate(self) -> None:
        """Make :meth:`wait_terminate` return (signals, ``terminate``)."""
        self._terminate.set()

    async def wait_terminate(self) -> None:
        """Return when a client called the built-in ``terminate``."""
        await self._terminate.wait()

    # -- requests ---------------------------------------------------------------------

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        try:
            request = parse_request(frames[1:])
        except ProtocolError as exc:
            self._malformed(identity, exc)
            return
        try:
            self._handle(identity, request)
        except Exception as exc:  # NoSuchTarget, NoSuchMethod, a bad body, Overloaded
            self._reply(identity, request.request_id, error=exc)

    def _malformed(self, identity: bytes, exc: ProtocolError) -> None:
        self.bad_messages += 1
        if identity in self._logged_peers:
            return
        if len(self._logged_peers) >= _MAX_LOGGED_PEERS:
            self._logged_peers.clear()
        self._logged_peers.add(identity)
        logger.warning("controller %s: dropping malformed message from a client: %s",
                       self.label, exc)

    def _handle(self, identity: bytes, request: RpcRequest) -> None:
        if request.command is RpcCommand.INFO:
            self._reply(identity, request.request_id,
                        {"targets": sorted(self.targets), "description": self.description})
        elif request.command is RpcCommand.METHODS:
            target = self._target(request.target)
            self._reply(identity, request.request_id,
                        describe_target(target, self._builtins(request.target)))
        else:
            self._call(identity, request)

    def _target(self, name: str) -> Any:
        try:
            return self.targets[name]
        except KeyError:
            raise NoSuchTarget(f"controller {self.label} has no target {name!r} "
                               f"(it has {', '.join(sorted(self.targets))})") from None

    def _builtins(self, target: str) -> tuple[str, ...]:
        names = () if "ping" in self._methods[target] else ("ping",)
        return names + (("terminate",) if self.builtin_terminate else ())

    def _call(self, identity: bytes, request: RpcRequest) -> None:
        self._target(request.target)
        name = request.method
        if name == "terminate" and self.builtin_terminate:
            self._reply(identity, request.request_id, None)
            logger.info("controller %s: terminate requested", self.label)
            self._terminate.set()
            return
        methods = self._methods[request.target]
        if name == "ping" and "ping" not in methods:
            self._reply(identity, request.request_id, True)
            return
        method = methods.get(name)
        if method is None:
            raise NoSuchMethod(f"target {request.target!r} has no public method {name!r}")
        args, kwargs = decode_call_arguments(request)
        if len(self._calls) >= MAX_CALLS_IN_FLIGHT:
            raise Overloaded(f"controller {self.label}: {len(self._calls)} calls in flight")
        task = asyncio.create_task(self._run(identity, request.request_id, method, args,
                                             kwargs))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _run(self, identity: bytes, request_id: bytes, method: Callable[..., Any],
                   args: list[Any], kwargs: dict[str, Any]) -> None:
        try:
            async with self._lock:
                if inspect.iscoroutinefunction(method):
                    result = await method(*args, **kwargs)
                else:
                    result = await asyncio.get_running_loop().run_in_executor(
                        self._executor, functools.partial(method, *args, **kwargs))
                    if inspect.isawaitable(result):
                        result = await result
        except SystemExit as exc:  # a driver asking its controller to stop
            self._reply(identity, request_id, error=exc)
            self._terminate.set()
        except Exception as exc:
            logger.debug("controller %s: %s raised %s", self.label, method, exc)
            self._reply(identity, request_id, error=exc)
        else:
            self._reply(identity, request_id, result)

    def _reply(self, identity: bytes, request_id: bytes, value: Any = None,
               error: BaseException | None = None) -> None:
        if self._sock is None:
            return
        frames = reply_frames(request_id, value, error)
        # A large array travels in a frame of its own, which ZeroMQ would send from the
        # array's memory, later, from its I/O thread: a driver that goes on updating
        # the array it returned (a camera's frame buffer) would send a torn one.  The
        # value is the driver's, so it is copied, not made read-only under its feet.
        frames[_REPLY_BUFFERS:] = [bytes(frame) for frame in frames[_REPLY_BUFFERS:]]
        # ROUTER drops a reply whose client is gone or too slow: nothing to handle.
        send_frames(self._sock, [identity, *frames])
        assert self._reader is not None
        self._reader.after_send()


async def _serve(server: Server, hosts: str | Sequence[str], port: int,
                 curve: CurveServer | None, insecure: bool) -> None:
    context = zmq.Context()
    try:
        await server.start(hosts, port, curve=curve, insecure=insecure, context=context)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.request_terminate)
        try:
            await server.wait_terminate()
        finally:
            await server.stop()
    finally:
        context.term()


def simple_server_loop(targets: dict[str, Any], host: str | Sequence[str], port: int,
                       description: str | None = None, allow_parallel: bool = False, *,
                       curve: CurveServer | None = None, insecure: bool | None = None) -> None:
    """Serve ``targets`` on ``host`` (one or several) and ``port`` until SIGINT, SIGTERM
    or a client calls the built-in ``terminate``.

    ``host`` may come from :func:`~artiq_bus.rpc.common_args.bind_address_from_args`,
    which also carries the command line's CurveZMQ keys and ``--insecure``.
    """
    curve = curve if curve is not None else getattr(host, "curve", None)
    insecure = insecure if insecure is not None else bool(getattr(host, "insecure", False))
    server = Server(targets, description, builtin_terminate=True,
                    allow_parallel=allow_parallel)
    try:
        asyncio.run(_serve(server, host, port, curve, insecure))
    except ServerConfigError as exc:  # the program's whole life: one line, exit code 4
        print(f"{sys.argv[0]}: {exc}", file=sys.stderr)
        raise SystemExit(CONFIG_EXIT_CODE) from None
