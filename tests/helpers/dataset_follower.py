"""A replica of the master's ``datasets`` in its own process (for the overload tests).

    python tests/helpers/dataset_follower.py --control ENDPOINT --notify ENDPOINT

Prints ``SYNCED`` once it has its first snapshot.  A test may then freeze it
(SIGSTOP: a stuck subscriber whose queues overflow) and thaw it (SIGCONT).  On SIGUSR1
it takes the owner's struct as it is now and waits until the replica equals it, then
prints ``EQUAL resyncs=R`` (or ``DIFFERENT`` after 30 s) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import zmq

from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.replica import Replica
from artiq_bus.client.subscriber import Subscriber
from artiq_bus.net import BusAddress
from artiq_bus.protocol import Unavailable

from compare import describe_difference, same

SETTLE_S = 30.0


async def run(args: argparse.Namespace, context: zmq.Context) -> int:
    address = BusAddress(args.control, args.notify, "")
    check = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, check.set)
    async with AsyncClient(address, context=context, timeout_s=30.0) as client:
        subscriber = Subscriber(args.notify, context=context)
        await subscriber.start()
        replica = Replica(client, subscriber, "datasets")
        try:
            await replica.start(timeout_s=10.0)
            print("SYNCED", flush=True)
            await check.wait()
            final = await _snapshot(client)
            try:
                await replica.wait_for(lambda value: same(value, final), SETTLE_S)
            except TimeoutError:
                print("DIFFERENT\n" + describe_difference(replica.value, final), flush=True)
                return 1
            print(f"EQUAL resyncs={replica.resyncs}", flush=True)
            return 0
        finally:
            await replica.stop()
            await subscriber.stop()


async def _snapshot(client: AsyncClient) -> dict[str, object]:
    """The owner's struct; a connection dropped while we were frozen is awaited back."""
    for _ in range(10):
        try:
            return (await client.call("datasets", "snapshot", "datasets"))["struct"]
        except Unavailable:
            await asyncio.wait_for(client.connected.wait(), 10.0)
    raise TimeoutError("no snapshot")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--control", required=True)
    parser.add_argument("--notify", required=True)
    args = parser.parse_args()
    context = zmq.Context()
    try:
        raise SystemExit(asyncio.run(run(args, context)))
    finally:
        context.destroy(linger=0)


if __name__ == "__main__":
    main()
