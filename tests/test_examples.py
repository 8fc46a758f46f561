"""The bundled third-party examples work against a live master."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from artiq_bus.client.sync import Client

from conftest import Master, Process

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _record(message: str) -> dict[str, object]:
    return {"level": 30, "source": "worker(7,example.py)", "time": time.time(),
            "name": "print", "message": message}


def test_follow_log_example_shows_backlog_then_live_records(master: Master,
                                                            tmp_path: Path) -> None:
    with Client(master.address) as client:
        client.send("log", "emit", [_record("before the follower started")])
        client.call("log", "backlog")  # the record is in the backlog once this returns
        follower = Process([sys.executable, str(EXAMPLES / "follow_log.py"), "127.0.0.1",
                            str(master.control)], tmp_path)
        try:
            follower.wait_for_line(r"30 worker\(7,example.py\) print: before the follower")
            client.send("log", "emit", [_record("while it follows")])
            follower.wait_for_line(r"print: while it follows")
        finally:
            follower.stop()
