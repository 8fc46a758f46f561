"""The rehearsals: a spare worker's build, and the zygote's builds and bus rounds.  They
must really happen (a silent failure would only cost speed, so a test says so) and
leave no trace: the zygote forks with no thread, socket or ZeroMQ context of its own."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Master, free_port
from helpers.runs import descendants

from artiq_bus.net import BusAddress
from artiq_bus.worker import warmup
from artiq_bus.worker.compat import install_artiq_compat
from artiq_bus.worker.warmup import rehearse_build

#: The master's spare workers (--worker-spares default).
SPARES = 2


def test_rehearsal_builds_and_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    install_artiq_compat()
    monkeypatch.chdir(tmp_path)
    modules = set(sys.modules)
    with caplog.at_level(logging.DEBUG, logger="artiq_bus.worker.warmup"):
        rehearse_build()
    assert not caplog.records, [record.getMessage() for record in caplog.records]
    assert os.listdir(tmp_path) == []
    assert not {name for name in set(sys.modules) - modules if "rehearsal" in name}


# -- the zygote's rehearsal -------------------------------------------------------------

def _bus_config(address: BusAddress) -> dict[str, Any]:
    return {"broker": {"control": address.control, "notify": address.notify,
                       "publish": address.publish}, "curve": None}


def _open_files() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def test_zygote_rehearsal_goes_through_the_bus_and_leaves_nothing(
        master: Master, caplog: pytest.LogCaptureFixture) -> None:
    threads, files = threading.active_count(), _open_files()
    with caplog.at_level(logging.DEBUG, logger="artiq_bus.worker.warmup"):
        assert warmup._rehearse_bus(_bus_config(master.address))
        warmup.warm_up(_bus_config(master.address), rounds=3)
    assert not caplog.records, [record.getMessage() for record in caplog.records]
    assert threading.active_count() == threads
    assert _open_files() == files  # no socket, no epoll, no pipe left behind


def test_zygote_rehearsal_without_a_broker_gives_up_quickly(
        caplog: pytest.LogCaptureFixture) -> None:
    address = BusAddress.from_host("127.0.0.1", free_port(), free_port(), free_port())
    threads, files = threading.active_count(), _open_files()
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="artiq_bus.worker.warmup"):
        warmup.warm_up(_bus_config(address), rounds=3)  # builds go on, bus rounds stop
    assert time.monotonic() - started < 2 * warmup._BUS_STEP_S + 2.0
    assert [record.getMessage() for record in caplog.records
            if "bus rehearsal failed" in record.getMessage()] != []
    assert threading.active_count() == threads
    assert _open_files() == files


def test_the_master_s_zygote_forks_with_one_thread_and_no_socket(master: Master) -> None:
    """Looked at once it has forked the results node and the spares: its imports and
    rehearsal (which opens sockets, and closes them) are over."""
    zygote = next(pid for pid in descendants(master.popen.pid)
                  if "artiq_bus.worker.zygote" in Path(f"/proc/{pid}/cmdline").read_text()
                  and _parent(pid) == master.popen.pid)
    deadline = time.monotonic() + 20.0
    while len([pid for pid in descendants(zygote) if _parent(pid) == zygote]) < 1 + SPARES:
        assert time.monotonic() < deadline, "the zygote forked no spares"
        time.sleep(0.01)
    assert os.listdir(f"/proc/{zygote}/task") == [str(zygote)]
    links = [os.readlink(f"/proc/{zygote}/fd/{fd}") for fd in os.listdir(f"/proc/{zygote}/fd")]
    assert not [link for link in links if link.startswith("socket:")], links


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
