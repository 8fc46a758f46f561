"""The blocking client: a one-way message sent right before it closes is delivered, and
neither a call nor a one-way message waits past its deadline when nothing can be
queued (no broker: its queue fills)."""

from __future__ import annotations

import time

import pytest

from artiq_bus.client.sync import Client
from artiq_bus.net import BusAddress
from artiq_bus.protocol import DeadlineExceeded

from conftest import Master, free_port


def test_send_then_close_still_delivers(master: Master) -> None:
    record = {"level": 30, "source": "test", "time": time.time(), "name": "test",
              "message": "sent right before close"}
    with Client(master.address) as client:
        client.send("log", "emit", [record])
    # Not read back with a call: another connection's call may overtake the message.
    master.wait_for_line(r"^WARNING:test:test:sent right before close$", 10.0)


def test_nothing_waits_past_its_deadline_for_room_to_send() -> None:
    address = BusAddress.from_host("127.0.0.1", free_port(), free_port(), free_port())
    with Client(address, timeout_s=0.2) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="could not be sent within 0.2 s"):
            for _ in range(100_000):  # the queue to the absent broker fills
                client.send("log", "emit", [])
        with pytest.raises(DeadlineExceeded, match="could not be sent"):
            client.call("broker", "ping", timeout_s=0.2)
        assert time.monotonic() - started < 5.0
