"""Replicas in the test process of a struct owned by an echo node process: after long
random update sequences, after updates dropped by ZeroMQ (a gap, and a loss at the tail
that only the owner's heartbeat reveals), and after the owner is replaced.  Also a
replica in a process of its own that stalls past ZeroMQ's heartbeat timeout.

The owner's final struct (returned by ``apply_random``) is the reference; comparisons are
numpy-aware (:func:`helpers.same`).  The tests share one master; each starts its own
owner (an echo node with ``--struct data``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import zmq

from artiq_bus.client.aio import AsyncClient
from artiq_bus.client.replica import Replica
from artiq_bus.client.subscriber import Subscriber
from artiq_bus.client.sync import Client

from conftest import Master
from helpers import (bus_client, describe_difference, echo_node, same,
                     start_stalling_replica, view)
from helpers import module_master  # noqa: F401  (this module's `master` fixture)

STRUCT = "data"
#: The whole struct, a dotted folder, one key (inside a nested folder).
FILTERS = ("", "scan.", "scan.sub.c")
SETTLE_S = 15.0
#: A burst that overflows a stalled subscriber: the broker queues 10 000 messages for
#: it (and the kernel a few more), the rest are dropped.  Arrays of up to 1000 floats
#: make the messages big enough that socket buffers hold few of them.
BURST, BURST_PAYLOAD = 16_000, 1000


@contextlib.asynccontextmanager
async def replicas(client: AsyncClient, subscriber: Subscriber,
                   filters: tuple[Any, ...] = FILTERS) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for key_filter in filters:
            replica = Replica(client, subscriber, STRUCT, service="echo",
                              key_filter=key_filter)
            started.append(replica)
            await replica.start(timeout_s=10.0)
        yield started
    finally:
        for replica in started:
            await replica.stop()


@contextlib.asynccontextmanager
async def stalling_subscriber(master: Master, context: zmq.Context) -> AsyncIterator[Subscriber]:
    """A subscriber that keeps at most 2 messages: it drops whatever it cannot take."""
    subscriber = Subscriber(master.address.notify, context=context, hwm=2)
    await subscriber.start()
    try:
        yield subscriber
    finally:
        await subscriber.stop()


async def wait_equal(replicas: list[Replica], expected: dict[Any, Any],
                     timeout_s: float = SETTLE_S) -> None:
    for replica in replicas:
        wanted = view(expected, replica.key_filter)
        try:
            await replica.wait_for(lambda value, wanted=wanted: same(value, wanted), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"replica {replica.key_filter!r} differs from the owner after {timeout_s} s:\n"
                + describe_difference(replica.value, wanted)) from None


def count_updates(replica: Replica) -> list[int]:
    """A counter of the updates the replica applies one by one (not by snapshot)."""
    counter = [0]

    def listener(update: dict[str, Any]) -> None:
        if update["action"] != "init":
            counter[0] += 1
    replica.add_listener(listener)
    return counter


def count_reconnects(subscriber: Subscriber) -> list[int]:
    counter = [0]

    def on_reconnect() -> None:
        counter[0] += 1
    subscriber.on_reconnect.append(on_reconnect)
    return counter


def stall_on_first_update(replica: Replica, blocker: Client) -> Callable[[], bool]:
    """Make the replica's first update block the test's event loop until the owner has
    published its whole burst (``wait_idle`` answers then); returns "has it stalled"."""
    stalled = [False]

    def listener(update: dict[str, Any]) -> None:
        if update["action"] != "init" and not stalled[0]:
            stalled[0] = True
            blocker.call("echo", "wait_idle", timeout_s=30.0)  # blocks the loop: on purpose
    replica.add_listener(listener)
    return lambda: stalled[0]


async def drained(subscriber: Subscriber, timeout_s: float = 10.0) -> None:
    """Return once a subscription probe made now comes through: the subscriber has read
    everything queued for it before.  A probe answer dropped with an overflow is asked
    for again."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await subscriber.sync(timeout_s=0.5)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError(f"subscriber not drained within {timeout_s} s") from None


def test_replicas_follow_long_random_sequences(master: Master) -> None:
    rounds = [(11, 20_000, 1), (12, 20_000, 25), (13, 10_000, 500)]  # seed, n, per turn

    async def scenario() -> None:
        async with bus_client(master) as (_, client, subscriber), \
                replicas(client, subscriber) as mirrors:
            applied = count_updates(mirrors[0])
            for seed, n, per_turn in rounds:
                expected = await client.call("echo", "apply_random", seed, n, per_turn)
                assert expected, "the random updates left the struct empty"
                await wait_equal(mirrors, expected)
            total = sum(n for _, n, _ in rounds)
            if applied[0] == total:
                # Nothing was dropped (all replicas read the same socket), so no replica
                # had a reason to take a snapshot after its first one.
                assert [replica.resyncs for replica in mirrors] == [1] * len(mirrors)
            else:  # a loaded machine: the reader fell 20 000 messages behind
                assert applied[0] > 0  # still followed update by update, mostly
            snapshot = await client.call("echo", "snapshot", STRUCT)
            assert snapshot["seq"] == total
            assert same(snapshot["struct"], mirrors[0].value)

    with echo_node(master, "--struct", STRUCT):
        asyncio.run(asyncio.wait_for(scenario(), 90.0))


def test_gap_is_noticed_by_the_next_update(master: Master) -> None:
    """Updates dropped in the middle: the next one that arrives does not follow the
    replica's version.  (The owner's heartbeat is slowed down to a minute here, so only
    that can reveal the gap.)"""
    async def scenario() -> None:
        async with bus_client(master) as (context, client, subscriber), \
                stalling_subscriber(master, context) as stalling, \
                replicas(client, subscriber) as steady, \
                replicas(client, stalling) as dropping:
            with Client(master.address, context=context) as blocker:
                stalled = stall_on_first_update(dropping[0], blocker)
                applied = count_updates(dropping[0])
                reconnects = count_reconnects(stalling)
                resyncs = [replica.resyncs for replica in dropping]
                await client.call("echo", "apply_random", 21, BURST, 1, BURST_PAYLOAD)
                assert stalled()
                await drained(stalling)
                assert applied[0] < BURST  # messages were dropped
                if not reconnects[0]:  # (a stall past the heartbeat timeout reconnects)
                    assert dropping[0].resyncs == resyncs[0]  # and nothing noticed yet
                # Enough updates to touch every key, so every replica's level moves on.
                expected = await client.call("echo", "apply_random", 22, 200)
                await wait_equal(steady + dropping, expected)
                assert dropping[0].resyncs > resyncs[0]

    with echo_node(master, "--struct", STRUCT, "--struct-heartbeat", "60"):
        asyncio.run(asyncio.wait_for(scenario(), 60.0))


def test_loss_at_the_tail_is_repaired_by_the_owner_heartbeat(master: Master) -> None:
    """Updates dropped at the end of a burst, nothing published after: only the owner's
    heartbeat (its sequence number) shows the replicas that they are behind."""
    async def scenario() -> None:
        async with bus_client(master) as (context, client, subscriber), \
                stalling_subscriber(master, context) as stalling, \
                replicas(client, subscriber) as steady, \
                replicas(client, stalling) as dropping:
            with Client(master.address, context=context) as blocker:
                stalled = stall_on_first_update(dropping[0], blocker)
                applied = count_updates(dropping[0])
                resyncs = dropping[0].resyncs
                expected = await client.call("echo", "apply_random", 31, BURST, 1,
                                             BURST_PAYLOAD)
                assert stalled()
                await wait_equal(steady + dropping, expected)
                assert applied[0] < BURST  # messages were dropped
                assert dropping[0].resyncs > resyncs

    with echo_node(master, "--struct", STRUCT, "--struct-heartbeat", "0.25"):
        asyncio.run(asyncio.wait_for(scenario(), 60.0))


def test_subscriber_stalled_past_the_heartbeat_timeout_survives(master: Master) -> None:
    """A replica's process stalls for 5 s (longer than ZeroMQ's 3 s heartbeat timeout)
    while the owner publishes a burst.  Its stopped connection must not abort it
    (libzmq 4.3 does, zeromq/libzmq#3937, when a heartbeat timeout replaces a connection
    whose input is stopped); it notices the loss and ends equal to the owner."""
    with echo_node(master, "--struct", STRUCT, "--struct-heartbeat", "0.25"):
        process = start_stalling_replica(master, 5.0)
        try:
            process.wait_for_line(r"^SYNCED$", timeout_s=15.0)
            with Client(master.address) as client:
                client.call("echo", "apply_random", 61, BURST, 1, BURST_PAYLOAD,
                            timeout_s=60.0)
            line = process.wait_for_line(r"^(EQUAL|DIFFERENT)", timeout_s=60.0)
            assert process.wait() == 0, process.output()
        finally:
            process.stop()
    found = re.search(r"resyncs=(\d+) applied=(\d+)", line)
    assert found is not None, line
    resyncs, applied = int(found[1]), int(found[2])
    assert applied < BURST and resyncs >= 2, line


def test_new_owner_means_resync(master: Master) -> None:
    """The owner's process is killed and started again: a new epoch, a new struct."""
    async def scenario() -> None:
        with contextlib.ExitStack() as nodes:
            first = nodes.enter_context(echo_node(master, "--struct", STRUCT))
            async with bus_client(master) as (_, client, subscriber), \
                    replicas(client, subscriber) as mirrors:
                expected = await client.call("echo", "apply_random", 41, 3000, 3)
                await wait_equal(mirrors, expected)
                first_epoch = (await client.call("echo", "snapshot", STRUCT))["epoch"]
                resyncs = [replica.resyncs for replica in mirrors]
                first.kill()
                nodes.enter_context(echo_node(master, "--struct", STRUCT))
                expected = await client.call("echo", "apply_random", 42, 500, 2)
                for replica, before in zip(mirrors, resyncs):
                    await replica.wait_for(lambda _, r=replica, b=before: r.resyncs > b,
                                           SETTLE_S)
                await wait_equal(mirrors, expected)
                assert (await client.call("echo", "snapshot", STRUCT))["epoch"] != first_epoch

    asyncio.run(asyncio.wait_for(scenario(), 60.0))
