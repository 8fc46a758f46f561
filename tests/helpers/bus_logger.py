"""Log records onto a master's bus, as a worker process does, then exit.

    python bus_logger.py CONTROL NOTIFY PUBLISH [--source S] [--name N] [--level L]
                         [--count N] [--prefix P]

Connects with :class:`~artiq_bus.runtime.bus.BusConnection`, logs ``--count`` records
``PREFIX0``, ``PREFIX1``, … through a :class:`~artiq_bus.runtime.logs.BusLogHandler`, and
prints ``done`` once ``log.ping`` has answered: the log service takes a process's
messages in order, so by then it has taken every record.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import zmq

from artiq_bus.net import BusAddress
from artiq_bus.runtime.bus import BusConnection
from artiq_bus.runtime.logs import LOG_SERVICE, BusLogHandler


async def run(args: argparse.Namespace) -> None:
    context = zmq.Context()
    try:
        bus = BusConnection(context, BusAddress.from_host(
            "127.0.0.1", args.control, args.notify, args.publish))
        await bus.start()
        try:
            handler = BusLogHandler(bus.client, args.source)
            log = logging.getLogger(args.name)
            log.propagate = False
            log.setLevel(logging.DEBUG)
            log.addHandler(handler)
            for i in range(args.count):
                log.log(logging.getLevelName(args.level), "%s%d", args.prefix, i)
            await asyncio.sleep(0)  # one loop turn: the handler sends its batch
            await bus.client.call(LOG_SERVICE, "ping", timeout_s=10.0)
            log.removeHandler(handler)
            assert handler.dropped == 0, handler.dropped
        finally:
            await bus.stop()
    finally:
        context.destroy(linger=0)
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    for port in ("control", "notify", "publish"):
        parser.add_argument(port, type=int)
    parser.add_argument("--source", default="worker(1,test.py)")
    parser.add_argument("--name", default="helper")
    parser.add_argument("--level", default="INFO")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--prefix", default="record-")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
