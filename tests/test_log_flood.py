"""An experiment that prints in a tight loop, with a real master and real workers.

Its lines once came faster than the master's log service took them: the broker's loop
fell so far behind that no heartbeat left it for seconds, every worker (the idle spares
too) declared the broker lost and exited, and the run was reported as a dead worker.
Now the log service's replies pace the worker's output, the run completes, no worker
is lost and the master answers meanwhile.

Every wait is for a line of the master's output, an update of a replica of the
``schedule`` struct, or a call's reply, each with a deadline.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artiq_bus.client.sync import Client

from conftest import Master
from helpers.runs import (NORMAL_RUN, ScheduleWatch, read_results, results_file, submit,
                          write_experiment)

FLOOD_S = 4.0
#: How long the master may take to answer a call while the flood goes on.
ANSWER_S = 2.0

FLOOD = f'''\
import time

from artiq.experiment import *


class Flood(EnvExperiment):
    def run(self):
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < {FLOOD_S}:
            print("line", n)
            n += 1
        print("done", n)
'''


def workers(client: Client) -> set[str]:
    return {name for name in client.call("broker", "services", timeout_s=ANSWER_S)
            if name.startswith("worker.")}


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    """A running master that logs at INFO: the broker says when workers register."""
    process = Master(tmp_path, "-v").wait_ready()
    yield process
    assert process.stop() == 0, process.output()


def test_print_flood(master: Master, tmp_path: Path) -> None:
    file = write_experiment(tmp_path, "flood.py", FLOOD)
    with ScheduleWatch(master) as watch, Client(master.address) as client:
        master.wait_for_line(r"broker: service 'worker\.\w+' registered", 20.0)
        before = workers(client)
        rid = submit(master, file)
        watch.wait_status(rid, "running", 20.0)
        # The master answers while the flood goes on (each call has its deadline).
        longest = 0.0
        deadline = time.monotonic() + FLOOD_S + 20.0
        while (watch.value.get(rid, {}).get("status") == "running"
               and time.monotonic() < deadline):
            start = time.monotonic()
            client.call("scheduler", "get_status", timeout_s=ANSWER_S)
            longest = max(longest, time.monotonic() - start)
            time.sleep(0.1)  # paces the probe; it waits for nothing
        watch.wait_gone(rid, 30.0)
        done = master.wait_for_line(r"^INFO:worker\(\d+,flood\.py\):print:done \d+$", 30.0)
        after = workers(client)
    assert watch.statuses(rid) == NORMAL_RUN, watch.describe()
    assert read_results(results_file(tmp_path, rid))["outcome"] == "completed"
    assert int(done.rsplit(" ", 1)[1]) > 1000, done
    output = master.output()
    for lost in ("worker died", "broker lost", "no heartbeat"):
        assert lost not in output, re.findall(f".*{lost}.*", output)
    # Only the worker that ran the experiment has left; the idle spares are still here.
    assert len(before - after) <= 1, (before, after)
    assert longest < ANSWER_S, longest
    assert master.popen.poll() is None
