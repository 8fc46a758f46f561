"""artiq_ctlmgr against a live master: it starts and pings the controllers of its host,
forwards their output, restarts them when they die or hang, stops them when their entry
goes, and leaves them alone when the master restarts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

from artiq_bus.rpc import Client

from conftest import Master, free_port, run_cli
from helpers import bus_client, call_until_ok, killable_master, ports_of
from helpers.controllers import (RUNNING_LINE, SERVICE, Ctlmgr, controllers, ctlmgr,
                                 dummy_entry, scan_devices, write_device_db)
from helpers.runs import alive, wait_dead, wait_for_output

def test_starts_pings_and_forwards_output(tmp_path: Path) -> None:
    port = free_port()
    write_device_db(tmp_path, {
        "dummy": dummy_entry(port, environment={"DUMMY_SETTING": "42"}),
        "no_command": {"type": "controller", "host": "::1", "port": free_port()},
        "elsewhere": {**dummy_entry(free_port()), "host": "192.0.2.7"},
        "local_device": {"type": "dummy"},
    })
    with killable_master(tmp_path) as master, ctlmgr(master, tmp_path) as manager:
        pid = manager.wait_answering("dummy")
        with Client("::1", port, "dummy") as client:
            assert client.pid() == pid
            assert client.environ("DUMMY_SETTING") == "42"
            assert client.environ("PYTHONUNBUFFERED") == "1"
            client.hello()
        status = controllers(master)
        assert list(status) == ["dummy"]  # no command, another host: not managed
        assert (status["dummy"]["pid"], status["dummy"]["starts"]) == (pid, 1)
        wait_for_output(master, r"INFO:controller\(dummy\):print:hello from the dummy")
        wait_for_output(master, r"WARNING:controller\(dummy\):dummy:a warning$")
        manager.wait_for_line(r"controller\(dummy\):dummy:a warning")
    assert "ERROR" not in manager.output()
    assert not alive(pid)  # the manager stopped its controller when it stopped


def test_killed_controller_is_restarted(tmp_path: Path) -> None:
    port = free_port()
    write_device_db(tmp_path, {"dummy": dummy_entry(port)})
    with killable_master(tmp_path) as master, ctlmgr(master, tmp_path) as manager:
        first = manager.wait_answering("dummy")
        os.kill(first, signal.SIGKILL)
        manager.wait_for_line(r"controller dummy: exited with code -9")
        second = manager.wait_answering("dummy")
        assert second != first
        with Client("::1", port, "dummy") as client:
            assert client.pid() == second
        assert controllers(master)["dummy"]["starts"] == 2


def test_controller_that_stops_answering_is_restarted(tmp_path: Path) -> None:
    port = free_port()
    write_device_db(tmp_path, {"dummy": dummy_entry(port, ping_timeout=0.5,
                                                    term_timeout=0.5)})
    with killable_master(tmp_path) as master, ctlmgr(master, tmp_path) as manager:
        first = manager.wait_answering("dummy")
        os.kill(first, signal.SIGSTOP)  # alive but silent
        manager.wait_for_line(r"controller dummy: ping failed")
        manager.wait_for_line(r"controller dummy: still running, sending SIGKILL")
        assert manager.wait_answering("dummy") != first
        wait_dead({first}, 5.0)


def test_controller_slower_to_listen_than_ping_timeout_is_given_time(tmp_path: Path) -> None:
    """A new process gets ``ping_timer`` more to start listening, as in ARTIQ (whose
    first ping comes after ``ping_timer``): a loaded machine may take longer than a
    short ``ping_timeout`` to start an interpreter."""
    port = free_port()
    entry = dummy_entry(port, ping_timer=2.0, ping_timeout=0.5)
    entry["command"] += " --listen-after 1.0"
    write_device_db(tmp_path, {"dummy": entry})
    with killable_master(tmp_path) as master, ctlmgr(master, tmp_path) as manager:
        pid = manager.wait_answering("dummy")
        assert controllers(master)["dummy"]["starts"] == 1
    assert "ping failed" not in manager.output()
    assert not alive(pid)


def test_removed_or_changed_entries_are_stopped(tmp_path: Path) -> None:
    port, other_port = free_port(), free_port()
    write_device_db(tmp_path, {"dummy": dummy_entry(port), "second": dummy_entry(other_port)})
    with killable_master(tmp_path) as master, ctlmgr(master, tmp_path) as manager:
        pids = {manager.wait_answering(r"\w+"), manager.wait_answering(r"\w+")}
        second_pid = controllers(master)["second"]["pid"]
        new_port = free_port()
        scan_devices(master, tmp_path, {"dummy": dummy_entry(new_port)})
        manager.wait_for_line(r"stopping controller second \(entry removed\)")
        wait_dead({second_pid}, 10.0)
        wait_for_output(manager, r"stopping controller dummy \(entry changed\)")
        new_pid = manager.wait_answering("dummy")
        assert new_pid not in pids
        wait_dead(pids, 10.0)
        with Client("::1", new_port, "dummy") as client:
            assert client.pid() == new_pid
        scan_devices(master, tmp_path, {})
        manager.wait_for_line(r"stopping controller dummy \(entry removed\)")
        wait_dead({new_pid}, 10.0)
        assert controllers(master) == {}


def test_master_restart_leaves_controllers_running(tmp_path: Path) -> None:
    port = free_port()
    write_device_db(tmp_path, {"dummy": dummy_entry(port)})
    with killable_master(tmp_path) as master:
        ports = ports_of(master)
        manager = Ctlmgr(master, tmp_path)
        try:
            manager.wait_for_line(re.escape(RUNNING_LINE))
            pid = manager.wait_answering("dummy")
            master.signal(signal.SIGKILL)
            master.wait()
            with killable_master(tmp_path, ports=ports) as second:
                status = _when_registered(second)
                assert (status["dummy"]["pid"], status["dummy"]["starts"]) == (pid, 1)
                with Client("::1", port, "dummy") as client:
                    assert client.pid() == pid
                scan_devices(second, tmp_path, {})  # it follows the new master
                manager.wait_for_line(r"stopping controller dummy \(entry removed\)")
                wait_dead({pid}, 10.0)
        finally:
            assert manager.stop() == 0, manager.output()
    assert "exited" not in manager.output()


def test_ctlmgr_waits_for_a_master_that_is_not_up(tmp_path: Path) -> None:
    ports = (free_port(), free_port(), free_port())
    write_device_db(tmp_path, {})
    placeholder = Master.__new__(Master)
    placeholder.control = ports[0]
    manager = Ctlmgr(placeholder, tmp_path, "--retry-master", "0.2")
    try:
        manager.wait_for_line(r"master at .* not reachable")
        with killable_master(tmp_path, ports=ports):
            manager.wait_for_line(re.escape(RUNNING_LINE))
    finally:
        assert manager.stop() == 0, manager.output()


def test_ctlmgr_help_and_bad_flags(tmp_path: Path) -> None:
    assert run_cli("artiq_ctlmgr", "--help", cwd=tmp_path).returncode == 0
    result = run_cli("artiq_ctlmgr", "--retry-master", "soon", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def _when_registered(master: Master, timeout_s: float = 15.0) -> dict[str, Any]:
    """The manager's status once it registered with a (new) master."""
    async def ask() -> dict[str, Any]:
        async with bus_client(master) as (_, client, _):
            return await call_until_ok(client, SERVICE, "controllers", timeout_s=timeout_s)
    return asyncio.run(ask())
