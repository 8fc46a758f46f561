"""``artiq_node``: run one node in its own process, pointed at a master's broker.

This is how the system grows past one machine: ``artiq_node log --broker
tcp://master-host:3251`` runs a log node on another host.  The node registers its
services with the broker, re-registers when the broker restarts, and stops on SIGINT,
SIGTERM or SIGHUP.  (A service name served twice is taken over by the newest node.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import zmq

from ..client.sync import Client
from ..net import BusAddress
from ..nodes.log import LogNode
from ..protocol import DeadlineExceeded, Unavailable
from ..runtime.bus import BusConnection, BusNode
from ..runtime.logs import BusLogHandler
from .common import (
    add_client_security,
    add_verbosity,
    add_version,
    curve_client_from_args,
    init_console_logging,
    log_level,
    reporting_errors,
)

__all__ = ["main", "NODES"]

PROGRAM = "artiq_node"
logger = logging.getLogger(__name__)

#: Node name → (how to add its flags, how to build it from them).
NODES: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                       Callable[[argparse.Namespace], BusNode]]] = {
    "log": (LogNode.add_arguments, LogNode.from_args),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Run one node alone")
    add_version(parser)
    nodes = parser.add_subparsers(dest="node", metavar="NODE", required=True)
    for name, (add_arguments, _) in NODES.items():
        sub = nodes.add_parser(name, help=f"the {name} node")
        sub.add_argument("--broker", default="tcp://[::1]:3251",
                         help="the master's control endpoint (default: %(default)s)")
        add_client_security(sub)
        add_verbosity(sub)
        add_arguments(sub)
    return parser


def discover(address: BusAddress, args: argparse.Namespace) -> BusAddress:
    """The broker's publication ports, asked from the broker itself."""
    with Client(address, curve=curve_client_from_args(args)) as client:
        try:
            info = client.call("broker", "info", timeout_s=3.0)
        except DeadlineExceeded:
            raise Unavailable(f"no broker answered at {address.control} within 3 s") from None
    return address.with_ports(info["notify"], info["publish"])


async def run(node: BusNode, address: BusAddress, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    context = zmq.Context()
    try:
        async with contextlib.AsyncExitStack() as stack:
            bus = BusConnection(context, address, curve_client_from_args(args))
            await bus.start()
            stack.push_async_callback(bus.stop)
            await node.start(bus)
            stack.push_async_callback(node.stop)
            handler = BusLogHandler(bus.client, f"node({args.node})",
                                    level=log_level(args))
            logging.getLogger().addHandler(handler)
            stack.callback(logging.getLogger().removeHandler, handler)
            logger.info("node %s: running, broker %s", args.node, address.control)
            await stop.wait()
    finally:
        context.destroy(linger=0)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    init_console_logging(log_level(args), f"node({args.node})")
    _, build = NODES[args.node]
    with reporting_errors(PROGRAM):
        address = discover(BusAddress.from_url(args.broker), args)
        asyncio.run(run(build(args), address, args))


if __name__ == "__main__":
    main()
