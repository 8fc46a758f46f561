"""``artiq_ctlmgr``: the controller manager of one host.

Connects to the master (``-s``/``--port``, trying again every ``--retry-master`` s until
it answers), follows its device database and runs the controllers assigned to this
host (``--host-filter``; default: this host's address towards the master).  Prints
``ARTIQ controller manager is now running.`` once it follows the database; stops its
controllers and exits 0 on SIGINT, SIGTERM or SIGHUP.  Its own log records (source
``ctlmgr(HOSTNAME)``) and its controllers' output (``controller(NAME)``) go to the
master's log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import platform
import signal
import socket
import sys

import zmq

from ..client.aio import AsyncClient
from ..net import BusAddress, CurveClient
from ..nodes.ctlmgr import ControllerManager
from ..protocol import BusError
from ..runtime.bus import BusConnection
from ..runtime.logs import BusLogHandler
from .common import (add_client_security, add_server, add_verbosity, add_version,
                     address_from_args, curve_client_from_args, init_console_logging,
                     log_level, reporting_errors)

__all__ = ["main", "build_parser", "RUNNING_LINE"]

PROGRAM = "artiq_ctlmgr"
RUNNING_LINE = "ARTIQ controller manager is now running."
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="ARTIQ controller manager")
    add_version(parser)
    add_server(parser)
    add_client_security(parser)
    add_verbosity(parser)
    parser.add_argument("--retry-master", default=5.0, type=float, metavar="SECONDS",
                        help="how often to try the master while it does not answer "
                             "(default: %(default)s)")
    parser.add_argument("--host-filter", default=None, metavar="HOST",
                        help="run the controllers whose host resolves to this address "
                             "(default: this host's address towards the master)")
    parser.add_argument("--bind", default=None, metavar="ADDRESS",
                        help="what {bind} becomes in controller commands (default: the "
                             "host filter)")
    return parser


def local_address_towards(host: str, port: int) -> str:
    """The address this host uses to reach ``host`` (a UDP connect sends nothing)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)
        return str(probe.getsockname()[0])


class _Sources(logging.Filter):
    """Forwarded records (a controller's output) always pass; our own only from
    ``level`` up."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return hasattr(record, "source") or record.levelno >= self.level


async def _discover(address: BusAddress, curve: CurveClient | None, retry_s: float,
                    context: zmq.Context) -> BusAddress:
    """The master's full address, asked from its broker until it answers."""
    async with AsyncClient(address, context=context, curve=curve) as client:
        while True:
            try:
                info = await client.call("broker", "info", timeout_s=3.0)
                return address.with_ports(info["notify"], info["publish"])
            except BusError as exc:
                logger.warning("ctlmgr %s: master at %s not reachable (%s), retrying in "
                               "%g s", _node_name(), address.control, exc, retry_s)
            await asyncio.sleep(retry_s)  # the retry period asked for


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    node_name = _node_name()
    curve = curve_client_from_args(args)
    context = zmq.Context()
    try:
        async with contextlib.AsyncExitStack() as stack:
            discovery = asyncio.ensure_future(_discover(address_from_args(args), curve,
                                                        args.retry_master, context))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({discovery, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                discovery.cancel()
                await asyncio.gather(discovery, return_exceptions=True)
                return
            stopping.cancel()
            bus = BusConnection(context, discovery.result(), curve)
            await bus.start()
            stack.push_async_callback(bus.stop)
            _log_to_bus(bus, node_name, log_level(args), stack)
            host_filter = args.host_filter or await loop.run_in_executor(
                None, local_address_towards, args.server, args.port)
            node = ControllerManager(host_filter, args.bind or host_filter, node_name)
            await node.start(bus)
            stack.push_async_callback(node.stop)
            logger.info("ctlmgr %s: running controllers of host %s", node_name, host_filter)
            sys.stdout.write(RUNNING_LINE + "\n")
            sys.stdout.flush()
            await stop.wait()
            logger.info("ctlmgr %s: stopping", node_name)
    finally:
        context.destroy(linger=0)


def _log_to_bus(bus: BusConnection, node_name: str, level: int,
                stack: contextlib.AsyncExitStack) -> None:
    handler = BusLogHandler(bus.client, f"ctlmgr({node_name})")
    handler.addFilter(_Sources(level))
    root = logging.getLogger()
    root.addHandler(handler)
    stack.callback(root.removeHandler, handler)


def _node_name() -> str:
    return platform.node() or "localhost"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    init_console_logging(log_level(args), f"ctlmgr({_node_name()})")
    with reporting_errors(PROGRAM):
        try:
            asyncio.run(run(args))
        except OSError as exc:  # the master's host name does not resolve
            raise SystemExit(f"{PROGRAM}: {exc}") from None


if __name__ == "__main__":
    main()
