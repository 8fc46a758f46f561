"""An echo service, and optionally a replicated struct, on a master's bus (for tests).

    python tests/helpers/echo_node.py --control ENDPOINT --publish ENDPOINT
                                      [--name echo] [--struct data]
                                      [--struct-heartbeat SECONDS]

Serves, as service ``--name``: ``echo(x)``, ``sleep_echo(x, delay)`` (a coroutine),
``fail()`` (raises ``KeyError``) and ``pid()``.  ``not_exported`` and ``_secret`` are
methods of the same object that are *not* declared, so not callable from the bus.

With ``--struct NAME`` it also owns the replicated struct ``NAME`` and serves its
``snapshot`` and ``version`` (:func:`~artiq_bus.runtime.structs.struct_methods`) plus:

``apply_random(seed, n, per_turn=1, payload=4)``
    applies ``n`` seeded random updates (setitem / delitem / append on ``str`` keys in a
    few dotted folders; values are small lists, ints, numpy scalars and numpy arrays of
    up to ``payload`` floats), yielding to the loop every ``per_turn`` updates (so each
    turn publishes one message per key touched), and returns the final struct.
``wait_idle()``
    returns the struct's sequence number once no ``apply_random`` is running and every
    update has been handed to the publisher.

Prints ``READY`` once the broker acknowledged the registration; exits 0 on SIGTERM or
SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
from typing import Any

import numpy as np
import zmq

from artiq_bus.net import BusAddress
from artiq_bus.protocol import updates
from artiq_bus.runtime.service import ServiceHost
from artiq_bus.runtime.rpc import rpc, rpc_methods
from artiq_bus.runtime.structs import Publisher, StructOwner, struct_methods

#: Root keys of the random updates: plain keys and keys in (nested) dotted folders.
KEYS = ("x", "y", "scan.a", "scan.b", "scan.sub.c", "scan.sub.d", "other.e", "other.f")
READY_TIMEOUT_S = 15.0


class Echo:
    """The echo methods."""

    @rpc
    def echo(self, x: Any) -> Any:
        return x

    @rpc
    async def sleep_echo(self, x: Any, delay: float) -> Any:
        await asyncio.sleep(delay)  # the point of this method: answer later
        return x

    @rpc
    def fail(self) -> None:
        raise KeyError("no such thing")

    @rpc
    def pid(self) -> int:
        return os.getpid()

    def not_exported(self) -> str:
        return "must not be reachable"

    def _secret(self) -> str:
        return "must not be reachable"


def random_update(rng: random.Random, data: dict[str, Any], i: int,
                  payload: int) -> dict[str, Any]:
    """One random update of ``data`` (applied by the caller)."""
    key = rng.choice(KEYS)
    current = data.get(key)
    roll = rng.random()
    if current is not None and roll < 0.15:
        return updates.delitem([], key)
    if isinstance(current, list) and len(current) < 40 and roll < 0.6:
        return updates.append([key], rng.choice([i, [i, -i], "s%d" % i]))
    if isinstance(current, np.ndarray) and roll < 0.6:
        return updates.setitem([key], rng.randrange(len(current)), float(i))
    kind = rng.randrange(4)
    if kind == 0:
        value: Any = [i] * rng.randrange(4)
    elif kind == 1:
        value = i
    elif kind == 2:
        value = rng.choice([np.int32(i), np.float64(i / 2)])
    else:
        value = np.arange(rng.randrange(1, payload + 1), dtype=np.float64) * i
    return updates.setitem([], key, value)


class StructDriver:
    """Drives the owned struct with random updates."""

    def __init__(self, owner: StructOwner):
        self.owner = owner
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @rpc
    async def apply_random(self, seed: int, n: int, per_turn: int = 1,
                           payload: int = 4) -> dict[str, Any]:
        rng = random.Random(seed)
        self._running += 1
        self._idle.clear()
        try:
            for i in range(n):
                self.owner.update(random_update(rng, self.owner.data, i, payload))
                if (i + 1) % per_turn == 0:
                    await asyncio.sleep(0)  # one loop turn: the owner publishes
        finally:
            self.owner.flush()
            self._running -= 1
            if not self._running:
                self._idle.set()
        return self.owner.data

    @rpc
    async def wait_idle(self) -> int:
        await self._idle.wait()
        self.owner.flush()
        return self.owner.seq


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    context = zmq.Context()
    try:
        publisher = Publisher(context, args.publish)
        owner = None
        methods = rpc_methods(Echo())
        if args.struct:
            owner = StructOwner(args.struct, publisher,
                                heartbeat_interval_s=args.struct_heartbeat)
            methods.update(rpc_methods(StructDriver(owner)))
            methods.update(struct_methods(owner))
            await owner.start()
        host = ServiceHost(context, BusAddress(args.control, "", args.publish), args.name,
                           methods)
        await host.start()
        try:
            await asyncio.wait_for(host.registered.wait(), READY_TIMEOUT_S)
            print("READY", flush=True)
            await stop.wait()
        finally:
            await host.stop()
            if owner is not None:
                await owner.stop()
            publisher.close()
    finally:
        context.destroy(linger=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--control", required=True, help="the broker's control endpoint")
    parser.add_argument("--publish", required=True, help="the broker's publish endpoint")
    parser.add_argument("--name", default="echo", help="the service name")
    parser.add_argument("--struct", default=None, help="also own this replicated struct")
    parser.add_argument("--struct-heartbeat", default=0.25, type=float,
                        help="seconds between the struct owner's heartbeats")
    asyncio.run(run(parser.parse_args()))
    sys.exit(0)


if __name__ == "__main__":
    main()
