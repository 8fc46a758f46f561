"""Repository scans: a rescan where nothing changed, and a first scan, of 200 files.

A real ``artiq_master`` (its own process) scans a repository of ``FILES`` trivial
experiment files, each with one argument.  A scan is timed around the blocking
``repository.scan_repository`` call, which returns once the scan's result is
published.

* First scan: the master starts on an empty repository; the 200 files are then added
  (filesystem: written; Git: one commit pushed with pygit2) and one scan is timed.
  Every file is examined in worker processes, several at once.
* Rescan, nothing changed: ``RESCANS`` more scans of the same revision, median.  Every
  file is listed and hashed (filesystem) or its blob id read (Git); none is examined.

The raw figure beside them is the cost of one ``python -c "import artiq_bus.experiment"``
measured in the same run (an interpreter start and the experiment API's imports: what
ARTIQ pays per scan before it examines one file).  Targets: rescan ≤ 50 ms (DESIGN §9);
first scan ≤ 900 ms, ARTIQ's figure for 200 trivial files on this kind of machine.

Run: ``python bench/bench_repository.py``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pygit2

from _common import MasterProcess, Report, run, size

from artiq_bus.client.sync import Client

FILES = size(200, 10)
RESCANS = size(20, 2)
IMPORTS = size(5, 1)
TIMEOUT_S = 60.0

EXPERIMENT = '''\
from artiq.experiment import *


class Experiment{n}(EnvExperiment):
    """Experiment number {n}"""

    def build(self):
        self.setattr_argument("count", NumberValue({n}, precision=0, step=1))

    def run(self):
        print(self.count)
'''


class MasterUnderTest(MasterProcess):
    """The master with extra flags and a client to its repository service."""

    def __init__(self, directory: Path, *flags: str):
        super().__init__(directory, *flags, timeout_s=TIMEOUT_S)
        self.client = Client(self.address, timeout_s=TIMEOUT_S)

    def scan_s(self) -> float:
        start = time.perf_counter()
        self.client.call("repository", "scan_repository")
        return time.perf_counter() - start

    def explist_size(self) -> int:
        return len(self.client.call("repository", "snapshot", "explist")["struct"])

    def stop(self) -> None:
        self.client.close()
        super().stop()


def _sources() -> dict[str, str]:
    return {f"exp_{n:03}.py": EXPERIMENT.format(n=n) for n in range(FILES)}


def _commit(repo: pygit2.Repository, files: dict[str, str], message: str) -> None:
    index = pygit2.Index()
    for path, text in files.items():
        index.add(pygit2.IndexEntry(path, repo.create_blob(text.encode()),
                                    pygit2.GIT_FILEMODE_BLOB))
    signature = pygit2.Signature("Bench", "bench@example.com")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    repo.create_commit("HEAD", signature, signature, message, index.write_tree(repo),
                       parents)


def measure(master: MasterUnderTest, add_files: object) -> tuple[float, list[float]]:
    """The first scan after ``add_files()``, and the rescans after it (seconds)."""
    master.scan_s()  # the master's own start-up scan is over
    add_files()  # type: ignore[operator]
    first = master.scan_s()
    count = master.explist_size()
    if count != FILES:
        raise RuntimeError(f"the scan listed {count} experiments, not {FILES}")
    return first, [master.scan_s() for _ in range(RESCANS)]


def filesystem(directory: Path) -> tuple[float, list[float]]:
    (directory / "repository").mkdir()
    master = MasterUnderTest(directory)
    try:
        def add() -> None:
            for name, text in _sources().items():
                (directory / "repository" / name).write_text(text)
        return measure(master, add)
    finally:
        master.stop()


def git(directory: Path) -> tuple[float, list[float]]:
    repo = pygit2.init_repository(str(directory / "repository"), bare=True)
    _commit(repo, {"README": "empty\n"}, "empty")
    master = MasterUnderTest(directory, "-g")
    try:
        return measure(master, lambda: _commit(repo, _sources(), "200 experiments"))
    finally:
        master.stop()


def import_s() -> float:
    """Median seconds of ``python -c "import artiq_bus.experiment"``."""
    samples = []
    for _ in range(IMPORTS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import artiq_bus.experiment"], check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def body(report: Report) -> None:
    raw_ms = import_s() * 1e3
    report.info["files"] = FILES
    for name, scenario in (("filesystem", filesystem), ("git", git)):
        with tempfile.TemporaryDirectory(prefix=f"bench-repository-{name}-") as temp:
            first, rescans = scenario(Path(temp))
        report.add(f"rescan, nothing changed ({name}), median", "ms",
                   statistics.median(rescans) * 1e3, raw_ms, 50.0, False, absolute=True)
        report.add(f"first scan ({name})", "ms", first * 1e3, raw_ms, 900.0, False,
                   absolute=True)
        report.info[f"rescan_{name}_max_ms"] = round(max(rescans) * 1e3, 2)


if __name__ == "__main__":
    run("bench_repository", body, deadline_s=240.0)
