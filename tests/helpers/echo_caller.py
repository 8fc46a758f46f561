"""Call an echo node (tests/helpers/echo_node.py) from a process of its own, check every
reply, print ``OK TAG COUNT`` and exit 0 (or print what went wrong and exit 1).

    python tests/helpers/echo_caller.py --control ENDPOINT --tag TAG [--calls N]
                                        [--service echo]

A blocking client makes a tenth of the calls one after the other, then an asyncio
client makes ``--calls`` calls at once with varied delays; every reply must carry the
argument of its own call (which includes ``TAG`` and the call's number).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

import zmq

from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.sync import Client
from artiq_bus.net import BusAddress

DEADLINE_S = 30.0


async def call_concurrently(address: BusAddress, context: zmq.Context, args: argparse.Namespace,
                            rng: random.Random) -> list[str]:
    errors = []
    async with AsyncClient(address, context=context, timeout_s=DEADLINE_S) as client:
        arguments = [{"tag": args.tag, "i": i} for i in range(args.calls)]
        delays = [rng.uniform(0.0, 0.3) for _ in arguments]
        replies = await asyncio.gather(*(
            client.call(args.service, "sleep_echo", argument, delay)
            for argument, delay in zip(arguments, delays)))
        for argument, reply in zip(arguments, replies):
            if reply != argument:
                errors.append(f"async call {argument} answered {reply}")
        try:
            await client.call(args.service, "fail")
            errors.append("fail() did not raise")
        except KeyError:
            pass
    return errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--control", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--service", default="echo")
    args = parser.parse_args()
    address = BusAddress(args.control, "", "")
    rng = random.Random(args.tag)
    context = zmq.Context()
    try:
        errors = []
        with Client(address, context=context, timeout_s=DEADLINE_S) as client:
            for i in range(max(1, args.calls // 10)):
                argument = [args.tag, i, rng.random()]
                reply = client.call(args.service, "echo", argument)
                if reply != argument:
                    errors.append(f"blocking call {argument} answered {reply}")
        errors += asyncio.run(call_concurrently(address, context, args, rng))
    finally:
        context.destroy(linger=0)
    if errors:
        print("\n".join(["FAILED", *errors[:20]]), flush=True)
        sys.exit(1)
    print(f"OK {args.tag} {args.calls}", flush=True)


if __name__ == "__main__":
    main()
