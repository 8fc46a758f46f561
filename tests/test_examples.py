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


def test_follow_datasets_example_follows_a_folder(master: Master, tmp_path: Path) -> None:
    with Client(master.address) as client:
        client.call("datasets", "set", "scan.x", [1], False, {"unit": "s"})
        client.call("datasets", "set", "other", 1)
        follower = Process([sys.executable, str(EXAMPLES / "follow_datasets.py"), "127.0.0.1",
                            str(master.control), "scan."], tmp_path)
        try:
            follower.wait_for_line(r"^scan\.x = \(False, \[1\], \{'unit': 's'\}\)$")
            client.call("datasets", "update", {"action": "append", "path": ["scan.x", 1],
                                               "x": 2})
            client.call("datasets", "set", "other", 2)
            client.call("datasets", "set", "scan.y", "text", True)
            follower.wait_for_line(r"^scan\.x = \(False, \[1, 2\], ")
            follower.wait_for_line(r"^scan\.y = \(True, 'text', \{\}\)$")
            client.call("datasets", "delete", "scan.x")
            follower.wait_for_line(r"^scan\.x deleted$")
            assert "other" not in follower.output()
        finally:
            follower.stop()
