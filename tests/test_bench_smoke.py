"""Every benchmark still runs to the end (with ``ARTIQ_BUS_BENCH_QUICK=1``: tiny sizes).
The figures of such a run mean nothing and are not checked: speed is measured by
running the benchmarks themselves (bench/README.md), never in tests.  This only keeps a
benchmark from breaking unnoticed when the code under it changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", sorted(path.name for path in BENCH.glob("bench_*.py")))
def test_benchmark_runs_to_the_end(script: str) -> None:
    result = subprocess.run([sys.executable, script], cwd=BENCH, capture_output=True,
                            text=True, timeout=240,
                            env={**os.environ, "ARTIQ_BUS_BENCH_QUICK": "1"})
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["error"] is None and report["figures"], tail
