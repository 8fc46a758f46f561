"""Fixtures shared by the tests: free ports, real master processes, clean environment.

Every wait has a deadline; every process a test starts is stopped (SIGTERM, then
SIGKILL) when the test ends.
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from artiq_bus.net import BusAddress

READY_LINE = "ARTIQ master is now ready."


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port free on both loopback addresses right now, chosen below the
    ephemeral range: the source port of some outgoing connection (of this test run or
    another) can never take it between now and the master's bind."""
    low = min(_ephemeral_range()[0], 32768)
    while True:
        port = random.randrange(10000, low)
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock6, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock4:
                sock6.bind(("::1", port))
                sock4.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


# A shell that starts the suite in the background without job control ignores SIGINT,
# and children keep an ignored signal across exec: the tests of Ctrl-C would then see
# their program ignore it.  Programs started here get the default, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: How long output() waits, after the process exited, for the rest of its output.
_READ_REST_S = 5.0


class Process:
    """A child process whose combined output is read line by line on a thread."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None,
                 new_session: bool = False):
        self.argv = argv
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.popen = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
            start_new_session=new_session)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._rest_read = False

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout:
            for line in self.popen.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, pattern: str, timeout_s: float = 15.0) -> str:
        """The first new line matching ``pattern`` (a regex), within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; "
                                     f"output so far:\n" + "\n".join(self.lines[-50:]))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process exited ({self.popen.wait()}) before a line "
                                     f"matching {pattern!r}; output:\n" + "\n".join(self.lines[-50:]))
            self.lines.append(line)
            if regex.search(line):
                return line

    def output(self) -> str:
        """Everything printed so far (drains what the reader thread has queued); once
        the process has exited, everything it printed (its last lines may still be in
        the pipe when it is reaped)."""
        if not self._rest_read and self.popen.poll() is not None:
            self._reader.join(_READ_REST_S)  # bounded: a child may hold the pipe open
            self._rest_read = True
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)
                break
            self.lines.append(line)
        return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def wait(self, timeout_s: float = 15.0) -> int:
        """The exit code; if the process does not exit in time, an AssertionError that
        says what it printed (a bare TimeoutExpired would not)."""
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            command = " ".join(self.argv[1:])[:200]
            raise AssertionError(f"{command} did not exit within {timeout_s} s; output:\n"
                                 + self.output()[-3000:]) from None

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout_s)


class Master(Process):
    """``artiq_master`` on free ports in a directory of its own."""

    def __init__(self, cwd: Path, *extra: str, env: dict[str, str] | None = None,
                 ports: tuple[int, int, int] | None = None, new_session: bool = False):
        self.control, self.notify, self.publish = ports or (free_port(), free_port(),
                                                            free_port())
        if not (cwd / "device_db.py").exists():
            (cwd / "device_db.py").write_text("device_db = {}\n")
        super().__init__([sys.executable, "-m", "artiq_bus.frontend.artiq_master",
                          "--port-control", str(self.control),
                          "--port-notify", str(self.notify),
                          "--port-publish", str(self.publish), *extra], cwd, env,
                         new_session)
        self.address = BusAddress.from_host("127.0.0.1", self.control, self.notify,
                                            self.publish)

    def wait_ready(self, timeout_s: float = 20.0) -> "Master":
        self.wait_for_line(re.escape(READY_LINE), timeout_s)
        return self


def run_cli(*argv: str, cwd: Path | None = None, timeout_s: float = 30.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a console entry point (``python -m artiq_bus.frontend.NAME``) to completion."""
    name, *rest = argv
    return subprocess.run([sys.executable, "-m", f"artiq_bus.frontend.{name}", *rest],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key files or Qt settings leak in from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("ARTIQ_BUS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    """A ZeroMQ context of the test's own, destroyed after it."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    """A running master in ``tmp_path``; stopped (and its exit checked) afterwards."""
    process = Master(tmp_path).wait_ready()
    yield process
    assert process.stop() == 0, process.output()
