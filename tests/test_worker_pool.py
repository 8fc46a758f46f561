"""The worker pool's spares: a run's replacement worker is forked once its hand-over is
over (``run()`` starts, or the worker ends), never during it; a run that finds no
spare gets one at once.  Real master, zygote and worker processes, seen in /proc."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from conftest import Master
from helpers import bus_client
from helpers.runs import ScheduleWatch, descendants, submit, write_experiment

#: The master's default number of spare workers.
SPARES = 2
#: Processes below the master besides workers: the zygote and the results node.
RESIDENTS = 2

#: prepare() and run() each wait for a line on their own FIFO: the test holds the run
#: in each stage as long as it wants.
GATED = '''\
from artiq.experiment import *


class Gated(EnvExperiment):
    def build(self):
        self.setattr_argument("gates", StringValue(""))

    def _wait(self, name):
        with open(f"{self.gates}/{name}") as gate:
            gate.readline()

    def prepare(self):
        self._wait("prepare")

    def run(self):
        self._wait("run")
'''


def wait_processes(master: Master, count: int, timeout_s: float = 15.0) -> set[int]:
    """Until exactly ``count`` processes run below the master (the zygote and the
    results node included: :data:`RESIDENTS`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = descendants(master.popen.pid)
        if len(found) == count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} processes below the master, not {count}")
        time.sleep(0.01)


def open_gate(gates: Path, name: str, timeout_s: float = 15.0) -> None:
    """Let the run waiting at gate ``name`` go, once it waits there."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:  # without a reader (the experiment not there yet) this fails at once
            fd = os.open(gates / name, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no run waits at {gates / name}") from None
            time.sleep(0.01)
    with open(fd, "w") as gate:
        gate.write("go\n")


def make_gates(directory: Path) -> Path:
    """A directory with the two FIFOs of one run."""
    directory.mkdir()
    for name in ("prepare", "run"):
        os.mkfifo(directory / name)
    return directory


def test_replacement_starts_after_the_hand_over(master: Master, tmp_path: Path) -> None:
    gates = make_gates(tmp_path / "gates")
    file = write_experiment(tmp_path, "gated.py", GATED)
    spares = wait_processes(master, RESIDENTS + SPARES) - {master_zygote(master)}
    with ScheduleWatch(master) as watch:
        rid = submit(master, file, {"gates": str(gates)})
        watch.wait_status(rid, "preparing")
        # held in prepare(): its worker is a former spare, and nothing replaces it yet
        assert wait_processes(master, RESIDENTS + SPARES) - {master_zygote(master)} == spares
        open_gate(gates, "prepare")
        watch.wait_status(rid, "running")
        workers = wait_processes(master, RESIDENTS + 1 + SPARES) - {master_zygote(master)}
        assert spares < workers  # held in run(), beside its replacement
        open_gate(gates, "run")
        watch.wait_gone(rid)


def test_a_run_without_a_spare_gets_one_at_once(master: Master, tmp_path: Path) -> None:
    count = SPARES + 1  # one more run than spares, each in its own pipeline
    gates = [make_gates(tmp_path / f"gates{index}") for index in range(count)]
    file = write_experiment(tmp_path, "gated.py", GATED)
    wait_processes(master, RESIDENTS + SPARES)
    with ScheduleWatch(master) as watch:
        rids = []
        for index, run_gates in enumerate(gates):
            rids.append(submit(master, file, {"gates": str(run_gates)},
                               pipeline=f"p{index}"))
            watch.wait_status(rids[-1], "preparing")
        # every spare is held in prepare(): the last run must not wait for them
        for run_gates in reversed(gates):
            open_gate(run_gates, "prepare")
            open_gate(run_gates, "run")
        for rid in rids:
            watch.wait_gone(rid)


def master_zygote(master: Master) -> int:
    """The zygote: the master's only child."""
    children = Path(f"/proc/{master.popen.pid}/task/{master.popen.pid}/children")
    [zygote] = (int(pid) for pid in children.read_text().split())
    return zygote


def test_parallel_acquires_each_get_a_worker(master: Master) -> None:
    """Workers acquired all at once and held (as a repository scan holds its
    examiners, which never reach run()): each acquire gets a worker of its own."""
    count = SPARES + 3

    async def acquire_all() -> list[dict[str, Any]]:
        async with bus_client(master) as (_, client, _subscriber):
            workers = await asyncio.gather(*(
                client.call("workers", "acquire", timeout_s=30.0) for _ in range(count)))
            for worker in workers:
                client.send(worker["service"], "terminate")
            return list(workers)
    workers = asyncio.run(acquire_all())
    assert len({worker["pid"] for worker in workers}) == count
    wait_processes(master, RESIDENTS + SPARES)  # the held ones gone, the spares back
