"""The power meter example (examples/power_meter): its experiment reads the simulated
device through a live master and artiq_ctlmgr, and through artiq_run alone."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from artiq_bus.client.sync import Client as BusClient
from artiq_bus.rpc import Client

from conftest import Process, free_port, run_cli
from helpers import killable_master
from helpers.controllers import ctlmgr
from helpers.runs import ScheduleWatch, cli_submit, read_results, results_file

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "power_meter"
EXPERIMENT = EXAMPLE / "repository" / "read_power.py"


def example_device_db(directory: Path, port: int) -> None:
    """The example's device database with ``port``, written to ``directory``."""
    text = (EXAMPLE / "device_db.py").read_text()
    assert '"port": 3280' in text and "Path(__file__).resolve().parent" in text
    text = text.replace('"port": 3280', f'"port": {port}')
    text = text.replace("Path(__file__).resolve().parent", repr(str(EXAMPLE)))
    (directory / "device_db.py").write_text(text)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[int]:
    """The example's controller started by hand (as ``artiq_run`` users do); its port."""
    port = free_port()
    process = Process([sys.executable, "-m", "power_meter.aqctl_power_meter", "-p", str(port)],
                      tmp_path, env={"PYTHONPATH": str(EXAMPLE)})
    try:
        with Client("::1", port, "power_meter", connect_timeout=15.0,
                    retry_refused=True) as client:
            assert client.ping()
        yield port
    finally:
        assert process.stop() == 0, process.output()


def test_experiment_reads_the_meter_through_master_and_ctlmgr(tmp_path: Path) -> None:
    port = free_port()
    example_device_db(tmp_path, port)
    with killable_master(tmp_path) as master, ctlmgr(master, tmp_path) as manager:
        manager.wait_for_line(r"controller power_meter: answering")
        with ScheduleWatch(master) as watch:
            rid = cli_submit(master, str(EXPERIMENT), "samples=5", "interval=0")
            watch.wait_gone(rid, timeout_s=30.0)
        master.wait_for_line(r"print:Reading Simulated power meter")
        with BusClient(master.address) as client:
            readings = client.call("datasets", "get", "power_meter.readings")
            mean = client.call("datasets", "get", "power_meter.mean")
            metadata = client.call("datasets", "get_metadata", "power_meter.readings")
    assert readings.shape == (5,) and np.all(np.abs(readings - 1e-3) < 5e-4)
    assert mean == pytest.approx(float(np.mean(readings)))
    assert metadata["unit"] == "mW"
    results = read_results(results_file(tmp_path, rid))
    assert np.array_equal(results["datasets"]["power_meter.readings"][0], readings)


def test_driver_methods_over_rpc(controller: int) -> None:
    with Client("::1", controller, "power_meter") as meter:
        assert meter.get_identity().startswith("Simulated power meter")
        assert meter.read_powers(1000).shape == (1000,)
        meter.set_wavelength(1064e-9)
        assert meter.get_wavelength() == 1064e-9
        with pytest.raises(ValueError, match="outside 400-1100 nm"):
            meter.set_wavelength(2e-6)


def test_experiment_runs_under_artiq_run(tmp_path: Path, controller: int) -> None:
    example_device_db(tmp_path, controller)
    result = run_cli("artiq_run", str(EXPERIMENT), "samples=3", "interval=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"power_meter\.mean: 0\.00\d+", result.stdout), result.stdout
