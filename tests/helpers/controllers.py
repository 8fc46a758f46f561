"""artiq_ctlmgr for tests: device database entries for ``dummy_controller.py``, a
manager process for a master's host, its status through the bus.

Every wait has a deadline; every process started here is stopped when its ``with``
block ends.
"""

from __future__ import annotations

import contextlib
import platform
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from artiq_bus.client.sync import Client as BusClient

from conftest import Master, Process, run_cli

from . import HELPERS

__all__ = ["DUMMY", "SERVICE", "RUNNING_LINE", "dummy_entry", "write_device_db", "Ctlmgr",
           "ctlmgr", "controllers", "scan_devices"]

DUMMY = HELPERS / "dummy_controller.py"
SERVICE = f"ctlmgr.{platform.node()}"
RUNNING_LINE = "ARTIQ controller manager is now running."


def dummy_entry(port: int, **options: Any) -> dict[str, Any]:
    """A controller entry for ``dummy_controller.py``, with short timers."""
    return {"type": "controller", "host": "::1", "port": port,
            "command": f"{{python}} {DUMMY} -p {{port}} --bind {{bind}} --name {{name}}",
            "ping_timer": 0.5, "ping_timeout": 5, "retry_timer": 0.2, "term_timeout": 2,
            **options}


def write_device_db(directory: Path, entries: dict[str, Any]) -> None:
    (directory / "device_db.py").write_text(f"device_db = {entries!r}\n")


class Ctlmgr(Process):
    """``artiq_ctlmgr -v`` for ``master``'s host."""

    def __init__(self, master: Master, cwd: Path, *extra: str):
        super().__init__([sys.executable, "-m", "artiq_bus.frontend.artiq_ctlmgr", "-s",
                          "::1", "--port", str(master.control), "-v", *extra], cwd)

    def wait_answering(self, name: str, timeout_s: float = 20.0) -> int:
        """The pid of the next start of controller ``name`` that answered a ping."""
        line = self.wait_for_line(rf"controller {name}: answering \(pid (\d+)\)", timeout_s)
        return int(re.search(r"pid (\d+)", line).group(1))  # type: ignore[union-attr]


@contextlib.contextmanager
def ctlmgr(master: Master, cwd: Path, *extra: str) -> Iterator[Ctlmgr]:
    process = Ctlmgr(master, cwd, *extra)
    try:
        process.wait_for_line(re.escape(RUNNING_LINE))
        yield process
    finally:
        code = process.stop()
    assert code == 0, process.output()
    assert "Traceback" not in process.output(), process.output()


def controllers(master: Master) -> dict[str, Any]:
    with BusClient(master.address) as client:
        return client.call(SERVICE, "controllers")


def scan_devices(master: Master, directory: Path, entries: dict[str, Any]) -> None:
    write_device_db(directory, entries)
    result = run_cli("artiq_client", "-s", "::1", "--port", str(master.control),
                     "scan-devices")
    assert result.returncode == 0, result.stderr
