"""Durability and overload of the datasets: kill -9 right after ``set-dataset -p`` is
acknowledged, many times, loses nothing; a stuck subscriber neither slows experiments
nor grows the master's memory, and catches up when it reads again (DESIGN §2, §4)."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

from artiq_bus.client.sync import Client

from conftest import Master, Process, run_cli
from helpers import HELPERS, killable_master
from helpers.runs import ScheduleWatch, client_args, submit, write_experiment

KILLS = 20

BURST = '''\
import time
import numpy as np
from artiq.experiment import *


class Burst(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(0, precision=0, step=1))
        self.setattr_argument("tag", StringValue("run"))

    def run(self):
        keys = [f"burst.k{i}" for i in range(200)]
        for key in keys:
            self.set_dataset(key, np.zeros(100), broadcast=True)
        start = time.perf_counter()
        for i in range(int(self.n)):
            self.mutate_dataset(keys[i % 200], i % 100, float(i))
        self.set_dataset("elapsed." + self.tag, time.perf_counter() - start, broadcast=True)
'''


def test_kill_9_right_after_an_acknowledged_persistent_set(tmp_path: Path) -> None:
    for round_ in range(KILLS):
        with killable_master(tmp_path) as master:
            result = run_cli("artiq_client", *client_args(master), "set-dataset", "-p",
                             f"kill.k{round_}", f"[{round_}, 'x']", "--unit", "s")
            assert result.returncode == 0, result.stderr
            master.signal(signal.SIGKILL)
            master.wait()
    with killable_master(tmp_path) as master, Client(master.address) as client:
        struct = client.call("datasets", "snapshot", "datasets", "kill.")["struct"]
    assert struct == {f"kill.k{i}": (True, [i, "x"], {"unit": "s"}) for i in range(KILLS)}


def _rss_mb(master: Master) -> float:
    status = Path(f"/proc/{master.popen.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def _burst(master: Master, path: Path, n: int, tag: str) -> float:
    """Run the burst; the seconds its mutation loop took."""
    with ScheduleWatch(master) as watch:
        rid = submit(master, path, {"n": n, "tag": tag})
        watch.wait_gone(rid, 60.0)
    with Client(master.address) as client:
        return float(client.call("datasets", "get", "elapsed." + tag))


def test_a_stuck_subscriber_slows_nothing_and_catches_up(tmp_path: Path,
                                                         master: Master) -> None:
    path = write_experiment(tmp_path, "burst.py", BURST)
    n = 100_000
    alone = _burst(master, path, n, "alone")
    follower = Process([sys.executable, str(HELPERS / "dataset_follower.py"), "--control",
                        master.address.control, "--notify", master.address.notify], HELPERS)
    try:
        follower.wait_for_line("^SYNCED$")
        follower.signal(signal.SIGSTOP)
        stuck = [_burst(master, path, n, f"stuck{i}") for i in range(6)]
        rss = [_rss_mb(master)]
        for i in range(4):
            stuck.append(_burst(master, path, n, f"more{i}"))
            rss.append(_rss_mb(master))
        follower.signal(signal.SIGCONT)
        follower.signal(signal.SIGUSR1)
        line = follower.wait_for_line(r"^(EQUAL|DIFFERENT)", 40.0)
        assert line.startswith("EQUAL"), follower.output()
        assert int(line.split("resyncs=")[1]) >= 2, "the stuck subscriber lost nothing?"
    finally:
        follower.signal(signal.SIGCONT)
        follower.stop()
    print(f"burst alone {alone:.3f} s, stuck {stuck}, rss {rss}")
    assert max(stuck) < 3 * alone + 0.5, (alone, stuck)
    assert max(rss) - min(rss) < 30, f"master RSS (MB) while stuck: {rss}"
