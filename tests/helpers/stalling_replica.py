"""A replica in a process whose event loop stalls for a while on the first update it
receives, as a frozen GUI would (for tests).

    python tests/helpers/stalling_replica.py --control ENDPOINT --notify ENDPOINT
                                             [--struct data] [--service echo]
                                             [--hwm 2] [--stall SECONDS]

Prints ``SYNCED`` once the replica has its first snapshot.  On the first update it
blocks its loop until the owner has published everything (``wait_idle`` of an echo node,
tests/helpers/echo_node.py) and at least ``--stall`` seconds have passed, so its queues
overflow.  Then it waits until the replica equals the owner's struct and prints
``EQUAL resyncs=R applied=A reconnects=C`` and exits 0 (exit 1 if that takes more than
20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import zmq

from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.replica import Replica
from artiq_bus.client.subscriber import Subscriber
from artiq_bus.client.sync import Client
from artiq_bus.net import BusAddress

from compare import describe_difference, same

SETTLE_S = 20.0


async def run(args: argparse.Namespace, context: zmq.Context) -> int:
    address = BusAddress(args.control, args.notify, "")
    applied, reconnects = [0], [0]
    stalled = asyncio.Event()
    async with AsyncClient(address, context=context, timeout_s=10.0) as client:
        subscriber = Subscriber(args.notify, context=context, hwm=args.hwm)
        subscriber.on_reconnect.append(lambda: reconnects.__setitem__(0, reconnects[0] + 1))
        await subscriber.start()
        replica = Replica(client, subscriber, args.struct, service=args.service)
        try:
            with Client(address, context=context) as blocker:

                def on_update(update: dict[str, Any]) -> None:
                    if update["action"] == "init":
                        return
                    applied[0] += 1
                    if not stalled.is_set():
                        stalled.set()
                        start = time.monotonic()  # blocks the loop: on purpose
                        blocker.call(args.service, "wait_idle", timeout_s=30.0)
                        rest = args.stall - (time.monotonic() - start)
                        if rest > 0:
                            blocker.call(args.service, "sleep_echo", None, rest,
                                         timeout_s=rest + 10.0)
                replica.add_listener(on_update)
                await replica.start(timeout_s=10.0)
                print("SYNCED", flush=True)
                await asyncio.wait_for(stalled.wait(), 60.0)
                final = (await client.call(args.service, "snapshot", args.struct))["struct"]
                try:
                    await replica.wait_for(lambda value: same(value, final), SETTLE_S)
                except TimeoutError:
                    print("DIFFERENT\n" + describe_difference(replica.value, final),
                          flush=True)
                    return 1
                print(f"EQUAL resyncs={replica.resyncs} applied={applied[0]} "
                      f"reconnects={reconnects[0]}", flush=True)
                return 0
        finally:
            await replica.stop()
            await subscriber.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--control", required=True)
    parser.add_argument("--notify", required=True)
    parser.add_argument("--struct", default="data")
    parser.add_argument("--service", default="echo")
    parser.add_argument("--hwm", type=int, default=2)
    parser.add_argument("--stall", type=float, default=0.0)
    args = parser.parse_args()
    context = zmq.Context()
    try:
        code = asyncio.run(run(args, context))
    finally:
        context.destroy(linger=0)
    sys.exit(code)


if __name__ == "__main__":
    main()
