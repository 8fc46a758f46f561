"""A worker's publications (the ``ccb`` device): its publication socket is made at
its first publication, and that publication is not lost (the broker's subscription
reaches a fresh connection after the fact; the worker holds what it publishes until
then)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import msgpack
import zmq

from artiq_bus.client.subscriber import Subscriber
from artiq_bus.protocol import stream_topic

from conftest import Master
from helpers import bus_client
from helpers.runs import submit, write_experiment

WAIT_S = 10.0

CCB_ONCE = '''\
from artiq.experiment import *


class Once(EnvExperiment):
    def build(self):
        self.setattr_device("ccb")

    def run(self):
        self.ccb.issue("create_applet", "once", "plot_xy y")
'''


async def receive_one(subscriber: Subscriber, topic: bytes, publish: Callable[[], object]) -> bytes:
    """Subscribe to ``topic``, run ``publish()``, and return the first body."""
    bodies: list[bytes] = []
    arrived = asyncio.Event()

    def on_message(frames: list[zmq.Frame]) -> None:
        bodies.append(frames[2].bytes)
        arrived.set()
    subscriber.subscribe(topic, on_message)
    await subscriber.sync()
    publish()
    async with asyncio.timeout(WAIT_S):
        await arrived.wait()
    return bodies[0]


def test_a_workers_first_publication_arrives(master: Master, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bus_client(master) as (_, _, subscriber):
            file = write_experiment(tmp_path, "once.py", CCB_ONCE)
            body = await receive_one(subscriber, stream_topic("ccb"),
                                     lambda: submit(master, file))
            assert msgpack.unpackb(body, strict_map_key=False)[2][0]["args"] == \
                ["once", "plot_xy y"]
    asyncio.run(asyncio.wait_for(scenario(), 30.0))
