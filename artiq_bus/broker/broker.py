"""The broker: routes requests to services by name and carries publications.

It knows services, methods, peers and deadlines; nothing about experiments.  Every
message on the ROUTER socket is handled by :meth:`Broker._handle`: anything malformed
is counted, logged once per peer and dropped (see docs/protocol.md, "Broker").
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ..net import (BusAddress, CurveServer, SocketReader, configure,
                   keepalive_instead_of_heartbeats, readable, send_frames)
from ..protocol import (VERSION, Command, DeadlineExceeded, Liveness, NoSuchMethod,
                        NoSuchService, Overloaded, ProtocolError, ServiceDied, Status,
                        check_name, decode_timeout, error_to_wire, pack, split_command,
                        unpack)
from ..protocol.frames import MAX_REQUEST_ID_BYTES
from .pubsub import PublicationProxy
from .registry import Registry, RequestKey, ServiceEntry

__all__ = ["Broker", "BrokerConfig", "BROKER_SERVICE"]

logger = logging.getLogger(__name__)

#: The broker answers requests to this service itself.
BROKER_SERVICE = "broker"
_BROKER_METHODS = frozenset({"ping", "info", "services"})
#: Subscribers only send subscriptions (topics) to the notify socket.  A longer one
#: disconnects them: ZeroMQ keeps subscriptions in tries it walks recursively, byte by
#: byte, and a topic of a few hundred kB overflows a thread's stack (a segfault).
MAX_SUBSCRIPTION_BYTES = 8192

# Frames the hot path sends, looked up once: an enum member's ``.value`` costs a
# descriptor call, several per message.
_REQ, _REP, _MSG = Command.REQUEST.value, Command.REPLY.value, Command.MESSAGE.value
_ACK, _HB, _BYE = Command.ACK.value, Command.HEARTBEAT.value, Command.BYE.value
_OK, _ERROR = Status.OK.value, Status.ERROR.value


@dataclasses.dataclass
class BrokerConfig:
    """Where the broker listens and how tightly it holds its peers."""

    control_endpoints: Sequence[str] = ()
    notify_endpoints: Sequence[str] = ()
    publish_endpoints: Sequence[str] = ()
    curve: CurveServer | None = None
    heartbeat_interval_s: float = 0.5
    #: Heartbeat intervals without a word before a service is declared dead.
    liveness: int = 4
    #: Messages queued per subscriber before ZeroMQ drops (the overload policy).
    notify_hwm: int = 10_000
    max_services: int = 10_000
    max_in_flight: int = 100_000


class _BadPeers:
    """Counts malformed messages and remembers (boundedly) whom it already logged."""

    def __init__(self, remember: int = 1024):
        self.count = 0
        self._logged: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._remember = remember

    def report(self, identity: bytes, reason: str) -> None:
        self.count += 1
        if identity in self._logged:
            return
        self._logged[identity] = None
        if len(self._logged) > self._remember:
            self._logged.popitem(last=False)
        logger.warning("broker: dropping malformed message from peer %s: %s "
                       "(further ones from it are dropped silently)", identity.hex(), reason)


class Broker:
    """ROUTER for requests, XSUB/XPUB for publications, a registry of services."""

    def __init__(self, context: zmq.Context, config: BrokerConfig):
        self.config = config
        self._context = context
        self.inproc = BusAddress(*(f"inproc://artiq_bus.{kind}.{uuid.uuid4().hex}"
                                   for kind in ("control", "notify", "publish")))
        self.registry = Registry(config.max_services, config.max_in_flight)
        self.bad_messages = _BadPeers()
        #: One-way messages to services or methods that do not exist (dropped).
        self.undeliverable = 0
        #: Services in this process, reached by a call instead of a socket.
        self._local: dict[bytes, Callable[[list[Any]], None]] = {}
        self.ports: dict[str, int] = {}
        self._router: zmq.Socket | None = None
        self._reader: SocketReader | None = None
        self._proxy: PublicationProxy | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        curve = self.config.curve
        if curve is not None:
            curve.start(self._context)
        router = configure(self._context.socket(zmq.ROUTER), rcvhwm=100_000, sndhwm=100_000)
        router.router_mandatory = True
        xsub = configure(self._context.socket(zmq.XSUB), rcvhwm=100_000)
        xpub = configure(self._context.socket(zmq.XPUB), sndhwm=self.config.notify_hwm)
        xpub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        keepalive_instead_of_heartbeats(xpub)
        for sock in (router, xsub, xpub):
            if curve is not None:
                curve.apply(sock)
        self.ports["control"] = self._bind(router, self.inproc.control,
                                           self.config.control_endpoints)
        self.ports["publish"] = self._bind(xsub, self.inproc.publish,
                                           self.config.publish_endpoints)
        self.ports["notify"] = self._bind(xpub, self.inproc.notify,
                                          self.config.notify_endpoints)
        self._router = router
        self._reader = SocketReader(router, on_message=self._route)
        self._proxy = PublicationProxy(self._context, xsub, xpub)
        self._proxy.start(self.inproc.publish)
        self._tasks = [asyncio.create_task(self._heartbeat(), name="broker-heartbeat")]
        logger.info("broker: listening, control %s, notify %s, publish %s",
                    ", ".join(self.config.control_endpoints) or "inproc only",
                    ", ".join(self.config.notify_endpoints) or "inproc only",
                    ", ".join(self.config.publish_endpoints) or "inproc only")

    @staticmethod
    def _bind(sock: zmq.Socket, inproc: str, endpoints: Sequence[str]) -> int:
        """Bind ``inproc`` and every endpoint; a ``:0`` port becomes one free port shared
        by all of them.  Returns the TCP port (0 without TCP)."""
        sock.bind(inproc)
        port = 0
        for endpoint in endpoints:
            if endpoint.endswith(":0"):
                endpoint = endpoint[:-1] + (str(port) if port else "*")
            sock.bind(endpoint)
            if endpoint.startswith("tcp://"):
                port = int(str(sock.get_string(zmq.LAST_ENDPOINT)).rsplit(":", 1)[1])
        return port

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._proxy is not None:
            await self._proxy.stop()
        if self._reader is not None:
            self._reader.close()
        if self._router is not None:
            self._router.close()
        if self.config.curve is not None:
            self.config.curve.stop()
        logger.info("broker: stopped (%d malformed messages dropped)", self.bad_messages.count)

    # -- services in this process ----------------------------------------------------

    def attach_local(self, deliver: Callable[[list[Any]], None]) -> bytes:
        """A peer identity for a service in this process (the master's nodes).  What the
        broker sends it is handed to ``deliver`` at once, and what it sends goes to
        :meth:`receive_local`: the same messages as over a socket, without the two socket
        hops and loop turns (they would double a request's round trip)."""
        identity = b"\x01" + secrets.token_bytes(8)  # ROUTER's own identities start with 0
        self._local[identity] = deliver
        return identity

    def detach_local(self, identity: bytes) -> None:
        self._local.pop(identity, None)

    def receive_local(self, identity: bytes, frames: Sequence[Any]) -> None:
        """A message from the local service ``identity``."""
        self._route([identity, *frames])
        if self._reader is not None:  # a send can swallow the signal of waiting input
            self._reader.after_send()

    # -- routing ----------------------------------------------------------------------

    def _route(self, frames: list[Any]) -> None:
        """Called for each message on the ROUTER socket (and from local services)."""
        try:
            self._handle(frames)
        except ProtocolError as exc:
            self.bad_messages.report(_small(frames[0]), str(exc))
        except Exception as exc:  # a peer must never stop the broker
            self.bad_messages.report(_small(frames[0]), f"{type(exc).__name__}: {exc}")

    def _handle(self, frames: list[Any]) -> None:
        identity = _small(frames[0])
        command, rest = split_command(frames[1:])
        if command is Command.REQUEST:
            self._on_request(identity, rest)
        elif command is Command.MESSAGE:
            self._on_message(identity, rest)
        elif command is Command.REPLY:
            self._on_reply(identity, rest)
        elif command is Command.REGISTER:
            self._on_register(identity, rest)
        elif command is Command.HEARTBEAT:
            self._on_heartbeat(identity)
        elif command is Command.BYE:
            self._on_bye(identity)
        else:
            raise ProtocolError(f"{command.name} is not sent to the broker")
        entry = self.registry.by_identity(identity)
        if entry is not None:
            entry.last_seen = time.monotonic()

    def _send(self, frames: Sequence[Any]) -> int:
        """Send to a peer; 0, or ``EHOSTUNREACH`` if it is gone, ``EAGAIN`` if its queue
        is full."""
        deliver = self._local.get(frames[0])
        if deliver is not None:
            deliver(list(frames[1:]))
            return 0
        try:
            send_frames(self._router, frames)  # type: ignore[arg-type]
            return 0
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return exc.errno
            raise

    def _reply_error(self, caller: bytes, request_id: bytes, exc: Exception) -> None:
        body, _ = pack(error_to_wire(exc, with_traceback=False))
        self._send([caller, VERSION, _REP, request_id, _ERROR, body])

    def _reply_ok(self, caller: bytes, request_id: bytes, result: Any) -> None:
        body, buffers = pack(result)
        self._send([caller, VERSION, _REP, request_id, _OK, body,
                    *buffers])

    def _on_request(self, caller: bytes, rest: Sequence[Any]) -> None:
        if len(rest) < 5:
            raise ProtocolError("REQ needs request_id service method timeout body")
        request_id, service, method = _small(rest[0]), _small(rest[1]), _small(rest[2])
        timeout = _small(rest[3])
        if not 0 < len(request_id) <= MAX_REQUEST_ID_BYTES:
            raise ProtocolError("request id must be 1 to 64 bytes")
        service_name = check_name(service, "service")
        method_name = check_name(method, "method")
        seconds = decode_timeout(timeout)
        if service_name == BROKER_SERVICE:
            self._serve_builtin(caller, request_id, method_name, rest[4])
            return
        entry = self.registry.by_name(service_name)
        if entry is None:
            self._reply_error(caller, request_id,
                              NoSuchService(f"no service {service_name!r} is registered"))
        elif method_name not in entry.methods:
            self._reply_error(caller, request_id, NoSuchMethod(
                f"service {service_name!r} has no method {method_name!r}"))
        elif self.registry.in_flight_full():
            self._reply_error(caller, request_id, Overloaded(
                f"broker has {self.config.max_in_flight} requests in flight"))
        else:
            self._forward_request(caller, request_id, entry, method_name, rest, seconds)

    def _forward_request(self, caller: bytes, request_id: bytes, entry: ServiceEntry,
                         method_name: str, rest: Sequence[Any], seconds: float) -> None:
        key = (caller, request_id)
        # In flight before it is sent: a local service may answer within the send.
        self.registry.add_request(key, entry, method_name, seconds, time.monotonic())
        error = self._send([entry.identity, VERSION, _REQ, caller,
                            request_id, *rest[2:]])
        if not error:
            return
        self.registry.complete_request(key, entry.identity)
        if error == zmq.EAGAIN:
            self._reply_error(caller, request_id, Overloaded(
                f"service {entry.name!r} has too many messages queued"))
        else:
            self._service_lost(entry, "its connection is gone")
            self._reply_error(caller, request_id, ServiceDied(f"service {entry.name!r} is gone"))

    def _on_message(self, caller: bytes, rest: Sequence[Any]) -> None:
        if len(rest) < 3:
            raise ProtocolError("MSG needs service method body")
        service_name = check_name(_small(rest[0]), "service")
        method_name = check_name(_small(rest[1]), "method")
        entry = self.registry.by_name(service_name)
        if entry is None or method_name not in entry.methods:
            # Well formed, only too late or misaddressed (a worker that just ended):
            # one-way messages promise no delivery, so count it and move on.
            self.undeliverable += 1
            logger.debug("broker: one-way message to unknown %s.%s dropped",
                         service_name, method_name)
            return
        if self._send([entry.identity, VERSION, _MSG, caller, *rest[1:]]):
            logger.warning("broker: one-way message to %r dropped (queue full or gone)",
                           service_name)

    def _on_reply(self, service: bytes, rest: Sequence[Any]) -> None:
        if len(rest) < 4:
            raise ProtocolError("REP needs caller request_id status body")
        caller, request_id = _small(rest[0]), _small(rest[1])
        if self.registry.complete_request((caller, request_id), service):
            self._send([caller, VERSION, _REP, *rest[1:]])
        # else: the caller's deadline passed, or the service was replaced: drop it.

    def _on_register(self, identity: bytes, rest: Sequence[Any]) -> None:
        if len(rest) != 2:
            raise ProtocolError("REG needs service body")
        name = check_name(_small(rest[0]), "service")
        declared = unpack(_small(rest[1]))
        methods = declared.get("methods") if isinstance(declared, dict) else None
        if (not isinstance(methods, list) or not methods
                or not all(isinstance(m, str) and m for m in methods)):
            raise ProtocolError("REG body must be {'methods': [names]}")
        try:
            liveness = Liveness(declared.get("liveness", Liveness.HEARTBEAT.value))
        except ValueError:
            raise ProtocolError("REG liveness must be one of "
                                f"{[rule.value for rule in Liveness]}") from None
        if name == BROKER_SERVICE:
            raise ProtocolError(f"service name {BROKER_SERVICE!r} is reserved")
        if self.registry.by_name(name) is None and self.registry.full():
            raise ProtocolError("too many services")
        replaced, owed = self.registry.register(name, identity, frozenset(methods),
                                                time.monotonic(), liveness)
        if replaced is not None:
            logger.warning("broker: service %r registered again by a new peer; "
                           "the old one is dropped", name)
            # BYE with the name: "taken over, do not register again" (not a plain BYE,
            # which would make the old peer take the service back).
            self._send([replaced.identity, VERSION, _BYE, name.encode()])
        self._fail(owed, ServiceDied(f"service {name!r} was replaced"))
        self._send([identity, VERSION, _ACK, name.encode()])
        logger.info("broker: service %r registered (%d methods)", name, len(methods))

    def _on_heartbeat(self, identity: bytes) -> None:
        if self.registry.by_identity(identity) is None:
            self._send([identity, VERSION, _BYE])  # register again

    def _on_bye(self, identity: bytes) -> None:
        entry = self.registry.by_identity(identity)
        if entry is not None:
            self._service_lost(entry, "it said goodbye")

    def _service_lost(self, entry: ServiceEntry, why: str) -> None:
        owed = self.registry.unregister(entry)
        self._fail(owed, ServiceDied(f"service {entry.name!r} died ({why})"))
        logger.info("broker: service %r unregistered: %s", entry.name, why)

    def _fail(self, requests: list[RequestKey], exc: Exception) -> None:
        for caller, request_id in requests:
            self._reply_error(caller, request_id, exc)

    # -- the broker's own service -----------------------------------------------------

    def _serve_builtin(self, caller: bytes, request_id: bytes, method: str, body: Any) -> None:
        if method not in _BROKER_METHODS:
            self._reply_error(caller, request_id,
                              NoSuchMethod(f"service 'broker' has no method {method!r}"))
        elif method == "ping":
            self._reply_ok(caller, request_id, True)
        elif method == "info":
            self._reply_ok(caller, request_id, {"protocol": VERSION.decode(), **self.ports})
        else:
            self._reply_ok(caller, request_id, {
                entry.name: sorted(entry.methods) for entry in self.registry.services()})

    # -- liveness ---------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.config.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)  # heartbeats are periodic by nature
            self._tick(time.monotonic())
            assert self._reader is not None
            self._reader.after_send()

    def _tick(self, now: float) -> None:
        # Messages waiting unread mean the broker is behind: a service's silence may be
        # ours, so nobody is declared dead until the backlog is read.
        assert self._router is not None  # ticks run between start() and stop()
        if not readable(self._router):
            for entry in self.registry.silent_services(now - self.config.liveness *
                                                       self.config.heartbeat_interval_s):
                if entry.identity not in self._local:  # local: live as long as we do
                    self._service_lost(entry, "no heartbeat")
        for entry in self.registry.services():
            if entry.identity in self._local:
                continue
            if self._send([entry.identity, VERSION, _HB]) == zmq.EHOSTUNREACH:
                self._service_lost(entry, "its connection is gone")
        for (caller, request_id), flight in self.registry.expired_requests(now):
            self._reply_error(caller, request_id, DeadlineExceeded(flight.deadline_error()))


def _small(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes
