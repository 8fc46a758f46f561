"""A controller for tests, written as an NDSP author would (artiq_bus.rpc's sipyco API).

    python tests/helpers/dummy_controller.py -p PORT [--bind HOST] [--name NAME]
                                             [--ping-false] [--simple]

Target ``NAME`` (default ``dummy``) serves ``echo(x)``, ``add(a, b=1)``, ``fail()``
(raises ``ValueError``), ``sleep(seconds)``, ``pid()``, ``environ(key)``, ``die()``
(the process exits at once, code 3, mid-call), ``hello()`` (prints a line and logs a
warning, for output forwarding), ``trace()`` (its 16 MB buffer, as a camera returns its
frame) and ``fill(value)`` (writes the whole buffer in place).  ``--ping-false`` gives it a ``ping`` that returns
False.  Prints ``READY`` on stdout once it listens; with ``--simple`` it runs
``simple_server_loop`` instead (which has no such hook) and prints nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import os
import time
from typing import Any

import numpy as np

from artiq_bus.rpc import Server, common_args, simple_server_loop

logger = logging.getLogger("dummy")


class Dummy:
    """A device that does nothing useful."""

    def __init__(self) -> None:
        self._trace = np.zeros(2_000_000)

    def echo(self, x: Any) -> Any:
        """Return x unchanged."""
        return x

    def add(self, a: float, b: float = 1) -> float:
        return a + b

    def fail(self) -> None:
        raise ValueError("dummy failure")

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def pid(self) -> int:
        return os.getpid()

    def environ(self, key: str) -> str | None:
        return os.environ.get(key)

    def die(self) -> None:
        os._exit(3)

    def hello(self) -> None:
        print("hello from the dummy controller", flush=True)
        logger.warning("a warning\nover two lines")

    def trace(self) -> np.ndarray:
        return self._trace

    def fill(self, value: float) -> None:
        self._trace[:] = value

    def _secret(self) -> None:
        raise AssertionError("private methods must not be callable")


class FalsePing(Dummy):
    def ping(self) -> bool:
        return False


async def serve(targets: dict[str, Any], hosts: common_args.BindHosts, port: int) -> None:
    server = Server(targets, "test controller", builtin_terminate=True)
    await server.start(hosts, port, curve=hosts.curve, insecure=hosts.insecure)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.request_terminate)
    try:
        await server.wait_terminate()
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    common_args.simple_network_args(parser, 3999)
    common_args.verbosity_args(parser)
    parser.add_argument("--name", default="dummy")
    parser.add_argument("--ping-false", action="store_true")
    parser.add_argument("--simple", action="store_true")
    parser.add_argument("--listen-after", type=float, default=0.0,
                        help="seconds to wait before listening (a slow start)")
    args = parser.parse_args()
    common_args.init_logger_from_args(args)
    time.sleep(args.listen_after)
    targets = {args.name: FalsePing() if args.ping_false else Dummy()}
    hosts = common_args.bind_address_from_args(args)
    if args.simple:
        simple_server_loop(targets, hosts, args.port, description="test controller")
    else:
        asyncio.run(serve(targets, hosts, args.port))


if __name__ == "__main__":
    main()
