"""``artiq_master``: the broker and the default nodes in one process.

Prints ``ARTIQ master is now ready.`` once every service answers; exits 0 on SIGINT,
SIGTERM, SIGHUP or ``master.terminate()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time

import zmq

from ..broker.broker import Broker, BrokerConfig
from ..client.aio import AsyncClient
from ..files import ScratchDirectory
from ..net import (
    BusAddress,
    CurveClient,
    CurveServer,
    is_loopback,
    resolve_bind_hosts,
    tcp_endpoint,
)
from ..net.addresses import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_NOTIFY_PORT,
    DEFAULT_PUBLISH_PORT,
)
from ..net.errors import NetError
from ..nodes.datasets import DatasetsNode
from ..nodes.devices import DevicesNode
from ..nodes.log import LogNode
from ..nodes.management import ManagementNode
from ..nodes.repository import RepositoryNode
from ..nodes.scheduler import SchedulerNode
from ..nodes.workers import WorkerPool
from ..protocol import BusError
from ..runtime.bus import BusConnection, BusNode
from ..runtime.logs import BusLogHandler
from .common import (
    ExitCode,
    add_verbosity,
    add_version,
    fail,
    init_console_logging,
    log_level,
    reporting_errors,
)

__all__ = ["main", "build_parser", "READY_LINE"]

logger = logging.getLogger(__name__)

READY_LINE = "ARTIQ master is now ready."
READY_TIMEOUT_S = 20.0
PROGRAM = "artiq_master"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="ARTIQ master")
    add_version(parser)
    network = parser.add_argument_group("network")
    network.add_argument("--bind", default=[], action="append", metavar="HOST",
                         help="also listen on this address (repeatable; '*' = all "
                              "interfaces); needs CurveZMQ keys or --insecure")
    network.add_argument("--no-localhost-bind", default=False, action="store_true",
                         help="do not listen on 127.0.0.1 and ::1")
    network.add_argument("--port-notify", default=DEFAULT_NOTIFY_PORT, type=int,
                         help="port of publications to subscribers (default: %(default)s)")
    network.add_argument("--port-control", default=DEFAULT_CONTROL_PORT, type=int,
                         help="port of requests (default: %(default)s)")
    network.add_argument("--port-publish", default=DEFAULT_PUBLISH_PORT, type=int,
                         help="port where standalone nodes publish (default: %(default)s)")
    security = parser.add_argument_group("security")
    security.add_argument("--curve-secret-key", metavar="FILE",
                          help="the master's secret key file (NAME.key_secret, made by "
                               "artiq_keygen): require CurveZMQ on every TCP connection")
    security.add_argument("--curve-allowed-keys", metavar="DIR",
                          help="directory of the public key files (*.key) of allowed clients")
    security.add_argument("--insecure", default=False, action="store_true",
                          help="allow binding a non-loopback address without CurveZMQ: "
                               "anyone who reaches it can run experiments")
    parser.add_argument("--name", default=None,
                        help="friendly name of this master, shown by dashboards")
    DevicesNode.add_arguments(parser)
    DatasetsNode.add_arguments(parser)
    SchedulerNode.add_arguments(parser)
    RepositoryNode.add_arguments(parser)
    WorkerPool.add_arguments(parser)
    LogNode.add_arguments(parser)
    add_verbosity(parser)
    return parser


def _curve(args: argparse.Namespace) -> CurveServer | None:
    if bool(args.curve_secret_key) != bool(args.curve_allowed_keys):
        raise NetError("CurveZMQ needs both --curve-secret-key and --curve-allowed-keys")
    if not args.curve_secret_key:
        return None
    return CurveServer.load(args.curve_secret_key, args.curve_allowed_keys)


def _local_endpoints(directory: str) -> BusAddress:
    """IPC endpoints for worker processes on this host (faster than TCP loopback)."""
    return BusAddress(*(f"ipc://{directory}/{kind}" for kind in ("control", "notify",
                                                                 "publish")))


def broker_config(args: argparse.Namespace, local: BusAddress) -> BrokerConfig:
    """Endpoints from the flags; refuses a non-loopback bind without keys or --insecure."""
    hosts = resolve_bind_hosts(args.bind, not args.no_localhost_bind)
    curve = _curve(args)
    exposed = [host for host in hosts if not is_loopback(host)]
    if exposed and curve is None and not args.insecure:
        raise NetError(f"refusing to listen on {', '.join(exposed)} without CurveZMQ: "
                       "give --curve-secret-key and --curve-allowed-keys (make keys with "
                       "artiq_keygen), or --insecure to accept anyone")

    def endpoints(port: int) -> list[str]:
        return [tcp_endpoint(host, port) for host in hosts]
    return BrokerConfig(control_endpoints=[*endpoints(args.port_control), local.control],
                        notify_endpoints=[*endpoints(args.port_notify), local.notify],
                        publish_endpoints=[*endpoints(args.port_publish), local.publish],
                        curve=curve)


async def _wait_ready(client: AsyncClient, services: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for service in services:
        while True:
            try:
                await client.call(service, "ping", timeout_s=1.0)
                break
            except BusError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)  # the service registers right after start


class Master:
    """Runs the broker and the nodes; stops them in reverse order."""

    def __init__(self, args: argparse.Namespace, config: BrokerConfig, local: BusAddress):
        self.args = args
        self.config = config
        self.terminate = asyncio.Event()
        # Built before anything starts: a broken device database stops us here.
        self.nodes: list[BusNode] = [
            LogNode.from_args(args), ManagementNode(args.name, self.terminate),
            DevicesNode.from_args(args), DatasetsNode.from_args(args),
            WorkerPool(local, args.worker_spares, log_level(args),
                       CurveClient.for_worker(config.curve) if config.curve else None,
                       args.worker_preload),
            RepositoryNode.from_args(args),  # before the scheduler: it pins revisions
            SchedulerNode.from_args(args)]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self.terminate.set)
        context = zmq.Context()
        root = logging.getLogger()
        console = root.handlers[0] if root.handlers else None
        try:
            async with contextlib.AsyncExitStack() as stack:
                broker = Broker(context, self.config)
                await broker.start()
                stack.push_async_callback(broker.stop)
                bus = BusConnection(context, broker.inproc, local=broker)
                await bus.start()
                stack.push_async_callback(bus.stop)
                for node in self.nodes:
                    await node.start(bus)
                    stack.push_async_callback(node.stop)
                self._log_to_bus(bus, root, console)
                stack.callback(self._log_to_console, root, console)
                if self.args.insecure and any(not is_loopback(h) for h in self.args.bind):
                    logger.warning("listening on %s WITHOUT authentication (--insecure): "
                                   "anyone who can reach it can control this master",
                                   ", ".join(self.args.bind))
                await _wait_ready(bus.client, [s for n in self.nodes for s in n.services])
                # One write: unbuffered (PYTHONUNBUFFERED), print() writes the newline
                # apart, and a log line on stderr could land in between.
                sys.stdout.write(READY_LINE + "\n")
                sys.stdout.flush()
                await self.terminate.wait()
                logger.info("master: stopping")
        finally:
            context.destroy(linger=0)

    @staticmethod
    def _log_to_bus(bus: BusConnection, root: logging.Logger,
                    console: logging.Handler | None) -> None:
        handler = BusLogHandler(bus.client, "master", level=root.level)
        root.addHandler(handler)
        if console is not None:
            root.removeHandler(console)

    @staticmethod
    def _log_to_console(root: logging.Logger, console: logging.Handler | None) -> None:
        for handler in [h for h in root.handlers if isinstance(h, BusLogHandler)]:
            root.removeHandler(handler)
        if console is not None:
            root.addHandler(console)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    init_console_logging(log_level(args), "master")
    with reporting_errors(PROGRAM):
        try:
            with ScratchDirectory("ipc") as directory:
                local = _local_endpoints(str(directory))
                config = broker_config(args, local)
                asyncio.run(Master(args, config, local).run())
        except zmq.ZMQError as exc:
            fail(PROGRAM, f"cannot listen: {exc}", ExitCode.CONFIG)


if __name__ == "__main__":
    main()
