"""The command-line behaviour of the programs: ready line, clean exits, clear errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artiq_bus.client.sync import Client

from conftest import READY_LINE, Master, free_port, run_cli
from helpers.runs import ScheduleWatch, submit

PROGRAMS = ("artiq_master", "artiq_client", "artiq_node", "artiq_keygen")
#: artiq_client gives up on a silent master 3 s after it started, plus a margin: on a
#: loaded machine the start-up of processes started side by side varies by seconds.
#: (Its message states the 3 s exactly.)
CLIENT_GIVES_UP_S = 3.0 + 3.0


def assert_clean(output: str) -> None:
    assert "Traceback" not in output, output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_master_ready_line_and_exit_on_signal(tmp_path: Path, signum: int) -> None:
    master = Master(tmp_path)
    try:
        assert master.wait_for_line("ready") == READY_LINE
        with Client(master.address) as client:
            assert client.call("broker", "ping", timeout_s=5.0) is True
        master.signal(signum)
        assert master.wait() == 0, master.output()
    finally:
        master.stop()
    output = master.output()
    assert output.splitlines().count(READY_LINE) == 1, output
    assert_clean(output)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_to_the_master_s_process_group(tmp_path: Path, signum: int) -> None:
    """As a terminal's Ctrl-C or hang-up, or a service manager's stop, sends it: only
    the master acts on it (its zygote and the workers stop when it says), so it stops
    as cleanly as when signalled alone."""
    master = Master(tmp_path, new_session=True)
    try:
        master.wait_for_line("ready")
        file = tmp_path / "exp.py"
        file.write_text("from artiq.experiment import *\n\n\nclass E(EnvExperiment):\n"
                        "    def run(self):\n        pass\n")
        with ScheduleWatch(master) as watch:
            watch.wait_gone(submit(master, file))  # workers and the results node at work
        os.killpg(master.popen.pid, signum)
        assert master.wait() == 0, master.output()
    finally:
        master.stop()
    output = master.output()
    assert not re.search(r"ERROR|WARNING|Traceback", output), output


@pytest.mark.parametrize("server", ["127.0.0.1", "::1", "localhost"])
def test_master_exits_on_client_terminate(master: Master, server: str) -> None:
    result = run_cli("artiq_client", "-s", server, "--port", str(master.control), "terminate")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert master.wait() == 0, master.output()
    assert_clean(master.output())


def test_client_without_master(tmp_path: Path) -> None:
    """Nothing listens: each form of address gives up 3 s after the client started (its
    start-up measured by a ``--help`` run started alongside), naming what it tried."""
    port = free_port()
    servers = {"127.0.0.1": f"tcp://127.0.0.1:{port}", "::1": f"tcp://[::1]:{port}",
               "localhost": f"tcp://localhost:{port}"}
    argvs = {server: ["-s", server, "--port", str(port), "terminate"] for server in servers}
    start = time.monotonic()
    clients = {name: subprocess.Popen(
        [sys.executable, "-m", "artiq_bus.frontend.artiq_client", *argv], cwd=tmp_path,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in {**argvs, "help": ["--help"]}.items()}
    results = {}
    try:
        for name in ("help", *servers):  # the help run ends first
            results[name] = (*clients[name].communicate(timeout=CLIENT_GIVES_UP_S + 10),
                             time.monotonic() - start)
    finally:
        for client in clients.values():
            client.kill()
            client.wait()
    startup_s = results.pop("help")[2]
    for server, (stdout, stderr, elapsed) in results.items():
        assert clients[server].returncode != 0, (server, stderr)
        assert elapsed < startup_s + CLIENT_GIVES_UP_S, (server, elapsed, startup_s)
        assert servers[server] in stderr and stderr.startswith("artiq_client: "), stderr
        assert re.search(r"no ARTIQ master answered .* within 3 s$", stderr.strip()), stderr
        assert_clean(stderr)
        assert stdout == ""


def run_all(argvs: list[tuple[str, ...]], cwd: Path) -> list[tuple[int, str, str]]:
    """Run programs side by side (each as ``python -m``): exit codes and outputs."""
    processes = [subprocess.Popen(
        [sys.executable, "-m", f"artiq_bus.frontend.{name}", *rest], cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, *rest in argvs]
    try:
        outputs = [process.communicate(timeout=30.0) for process in processes]
        return [(process.returncode, *output) for process, output in zip(processes, outputs)]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_help(tmp_path: Path) -> None:
    argvs = [(program, "--help") for program in PROGRAMS] + [("artiq_node", "log", "--help")]
    for argv, (code, stdout, stderr) in zip(argvs, run_all(argvs, tmp_path)):
        assert code == 0 and stderr == "", (argv, code, stderr)
        assert stdout.startswith(f"usage: {argv[0]}"), (argv, stdout)
        if argv[1] == "log":
            assert "--broker" in stdout and "--log-file" in stdout, stdout


BAD_FLAGS = [
    ("artiq_master", "--no-such-flag"),
    ("artiq_master", "--port-control", "not-a-port"),
    ("artiq_client",),
    ("artiq_client", "no-such-action"),
    ("artiq_client", "--port", "x", "terminate"),
    ("artiq_client", "show", "nothing"),
    ("artiq_node",),
    ("artiq_node", "log", "--no-such-flag"),
    ("artiq_keygen",),
    ("artiq_keygen", "a", "b"),
]


def test_bad_flags(tmp_path: Path) -> None:
    for argv, (code, stdout, stderr) in zip(BAD_FLAGS, run_all(BAD_FLAGS, tmp_path)):
        assert code == 2, (argv, code, stderr)
        assert f"usage: {argv[0]}" in stderr and "error:" in stderr, (argv, stderr)
        assert_clean(stderr)
        assert stdout == ""
    assert list(tmp_path.iterdir()) == []  # and nothing was made (keys, log files)


@pytest.mark.parametrize("which, host", [("control", "127.0.0.1"), ("notify", "::1"),
                                         ("publish", "127.0.0.1")])
def test_port_in_use(tmp_path: Path, which: str, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"control": free_port(), "notify": free_port(), "publish": free_port()}
        ports[which] = port
        master = Master(tmp_path, ports=(ports["control"], ports["notify"], ports["publish"]))
        try:
            code = master.wait(timeout_s=20.0)
        finally:
            master.stop()
    output = master.output()
    assert code not in (0, None), output
    assert "artiq_master: " in output and "in use" in output and str(port) in output, output
    assert READY_LINE not in output
    assert_clean(output)
