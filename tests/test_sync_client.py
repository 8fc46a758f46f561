"""The blocking client delivers a one-way message sent right before it closes."""

from __future__ import annotations

import time

from artiq_bus.client.sync import Client

from conftest import Master


def test_send_then_close_still_delivers(master: Master) -> None:
    record = {"level": 30, "source": "test", "time": time.time(), "name": "test",
              "message": "sent right before close"}
    with Client(master.address) as client:
        client.send("log", "emit", [record])
    with Client(master.address) as client:
        messages = [r["message"] for r in client.call("log", "backlog")["records"]]
    assert "sent right before close" in messages
