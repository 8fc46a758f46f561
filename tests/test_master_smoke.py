"""The master starts, answers, and stops cleanly."""

from __future__ import annotations

from artiq_bus.client.sync import Client

from conftest import Master, run_cli


def test_master_answers_and_terminates(master: Master) -> None:
    with Client(master.address) as client:
        assert client.call("broker", "ping") is True
        assert client.call("master", "get_name") is None
    result = run_cli("artiq_client", "-s", "127.0.0.1", "--port", str(master.control),
                     "terminate")
    assert result.returncode == 0, result.stderr
    assert master.wait() == 0
