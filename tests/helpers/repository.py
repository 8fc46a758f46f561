"""Helpers of the repository tests: replicas of ``explist``/``explist_status``, Git
commands run as a user types them, experiment sources.

Every wait has a deadline; a watch runs its own event loop in a thread and is closed
when its ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artiq_bus.client.replica import Replica
from artiq_bus.client.sync import Client

from conftest import Master
from helpers import bus_client

Struct = dict[Any, Any]


class StructWatch:
    """A replica of one struct of ``master``, whose changes a test can wait for."""

    def __init__(self, master: Master, struct: str, service: str = "repository",
                 timeout_s: float = 10.0):
        self._value: Struct = {}
        self._condition = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(master, struct, service, started,
                                                   timeout_s)),
            name=f"watch-{struct}", daemon=True)
        self._thread.start()
        started.result(timeout_s + 5.0)

    def __enter__(self) -> "StructWatch":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "the struct watch did not stop"

    async def _serve(self, master: Master, struct: str, service: str,
                     started: "concurrent.futures.Future[None]", timeout_s: float) -> None:
        try:
            async with bus_client(master) as (_, client, subscriber):
                replica = Replica(client, subscriber, struct, service=service)
                replica.add_listener(lambda _update: self._record(replica))
                await replica.start(timeout_s)
                self._record(replica)
                self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
                started.set_result(None)
                try:
                    await self._stop.wait()
                finally:
                    await replica.stop()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    def _record(self, replica: Replica) -> None:
        with self._condition:
            self._value = copy.deepcopy(replica.value)
            self._condition.notify_all()

    @property
    def value(self) -> Struct:
        with self._condition:
            return copy.deepcopy(self._value)

    def wait_for(self, predicate: Callable[[Struct], bool], timeout_s: float = 20.0,
                 what: str = "condition") -> Struct:
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self._value), timeout_s):
                raise AssertionError(f"no {what} within {timeout_s} s: {self._value!r}")
            return copy.deepcopy(self._value)


def repository_call(master: Master, method: str, *args: Any, timeout_s: float = 60.0) -> Any:
    with Client(master.address) as client:
        return client.call("repository", method, *args, timeout_s=timeout_s)


def scan(master: Master, revision: str | None = None) -> tuple[Struct, Struct]:
    """Scan and wait for it (so also for the scan the master started itself); then
    ``explist`` and ``explist_status``."""
    repository_call(master, "scan_repository", revision)
    explist = repository_call(master, "snapshot", "explist")["struct"]
    status = repository_call(master, "snapshot", "explist_status")["struct"]
    return explist, status


# -- Git as a user types it -------------------------------------------------------------

HAS_GIT = shutil.which("git") is not None


def git_env(home: Path) -> dict[str, str]:
    """A clean Git setup: a user name, branch ``master`` (the tutorial pushes it), and
    this checkout's ``artiq_client`` first on PATH (the hook calls it)."""
    config = home / ".gitconfig"
    if not config.exists():
        config.write_text("[user]\n\tname = Tutorial User\n\temail = user@example.com\n"
                          "[init]\n\tdefaultBranch = master\n")
    bin_dir = home / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        script = bin_dir / "artiq_client"
        script.write_text(f"#!/bin/sh\nexec {sys.executable} -m "
                          "artiq_bus.frontend.artiq_client \"$@\"\n")
        script.chmod(0o755)
    return {"HOME": str(home), "GIT_CONFIG_GLOBAL": str(config), "GIT_CONFIG_NOSYSTEM": "1",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def sh(command: str, cwd: Path, env: dict[str, str], timeout_s: float = 60.0) -> str:
    """Run a shell command line as typed; its output (it must succeed)."""
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=timeout_s,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{command!r} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def checkout_dirs(tmp: Path) -> list[Path]:
    """The master's checkouts of revisions (its TMPDIR is ``tmp``; not the lock that
    keeps their directory while the master lives)."""
    return sorted(path for base in tmp.glob("artiq_bus-checkouts-*") for path in base.iterdir()
                  if not path.name.startswith("."))


#: An experiment with one argument, as in the tutorial.
def experiment(class_name: str, doc: str | None = None, body: str = "pass",
               word: str = "Hello World") -> str:
    docstring = f'    """{doc}"""\n' if doc is not None else ""
    return (f"from artiq.experiment import *\n\n\nclass {class_name}(EnvExperiment):\n"
            f"{docstring}    def build(self):\n        {body}\n\n"
            f"    def run(self):\n        print({word!r})\n")


__all__ = ["StructWatch", "repository_call", "scan", "HAS_GIT", "git_env", "sh",
           "checkout_dirs", "experiment"]
