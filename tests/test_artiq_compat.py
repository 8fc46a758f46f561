"""``from artiq.experiment import *`` without ARTIQ (artiq_bus.worker.compat).

Every check runs in a fresh interpreter: the hook changes process-wide import state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

TUTORIAL_HELLO = '''\
from artiq.experiment import *

class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
    def build(self):
        pass  # no devices used

    def run(self):
        print("Hello World")
'''

TUTORIAL_ARGUMENT = '''\
from artiq.experiment import *

class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
    def build(self):
        self.setattr_argument("count", NumberValue(precision=0, step=1))

    def run(self):
        for i in range(self.count):
            print("Hello World", i)
'''

TUTORIAL_INTERACTIVE = '''\
from artiq.experiment import *

class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
    def build(self):
        pass

    def run(self):
        repeat = True
        while repeat:
            print("Hello World")
            with self.interactive(title="Repeat?") as interactive:
                interactive.setattr_argument("repeat", BooleanValue(True))
            repeat = interactive.repeat
'''

TUTORIAL_DATASET = '''\
import time
import numpy as np
from artiq.experiment import *

class MgmtTutorial(EnvExperiment):
    """Management tutorial"""
    def build(self):
        self.setattr_argument("count", NumberValue(precision=0, step=1))

    def run(self):
        self.set_dataset("parabola", np.full(self.count, np.nan), broadcast=True)
        for i in range(self.count):
            self.mutate_dataset("parabola", i, i*i)
'''

RUNNER = '''\
import json, sys
from artiq_bus.worker import (DatasetManager, DeviceDB, DeviceManager, LocalDatasetBackend,
                              ProcessArgumentManager, file_import, get_experiment,
                              install_artiq_compat)

assert install_artiq_compat()
answers = [{"repeat": True}, {"repeat": False}]
arguments = ProcessArgumentManager(json.loads(sys.argv[2]),
                                   interactive=lambda arglist, title: answers.pop(0))
backend = LocalDatasetBackend()
managers = (DeviceManager(DeviceDB.from_dict({})), DatasetManager(backend), arguments, {})
cls = get_experiment(file_import(sys.argv[1]))
exp = cls(managers)
arguments.check_unprocessed_arguments()
exp.prepare()
exp.run()
exp.analyze()
print("DATASETS", json.dumps({k: v[1].tolist() for k, v in backend.struct.items()}))
print("DOC", cls.__doc__)
'''


def run_python(code: str, *args: str, cwd: Path,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter; fails the test with its output if it fails."""
    result = subprocess.run([sys.executable, "-c", dedent(code), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(autouse=True)
def no_real_artiq(tmp_path: Path) -> None:
    probe = run_python("import importlib.util; print(importlib.util.find_spec('artiq'))",
                       cwd=tmp_path)
    if probe.stdout.strip() != "None":
        pytest.skip("a real artiq package is installed here")


def test_importing_artiq_bus_does_not_install_the_hook(tmp_path: Path) -> None:
    run_python("""
        import artiq_bus, artiq_bus.experiment, artiq_bus.language, artiq_bus.worker
        import artiq_bus.worker.compat
        try:
            import artiq
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("artiq became importable")
        """, cwd=tmp_path)


def test_star_import_gives_the_experiment_api(tmp_path: Path) -> None:
    result = run_python("""
        import json
        from artiq_bus.worker.compat import install_artiq_compat
        assert install_artiq_compat() and install_artiq_compat()  # idempotent
        from artiq.experiment import *
        import artiq, artiq.experiment, artiq_bus.experiment
        from artiq.language.units import MHz
        from artiq.language.core import kernel as core_kernel, TerminationRequested as TR
        from artiq.language.environment import HasEnvironment as HE, NumberValue as NV
        from artiq.language.scan import RangeScan as RS
        from artiq.language.types import TInt32 as T
        from artiq.language import units
        import artiq_bus.language as lang
        same = (EnvExperiment is lang.EnvExperiment and NumberValue is NV is lang.NumberValue
                and HE is HasEnvironment and RS is RangeScan and T is TInt32
                and core_kernel is kernel and TR is TerminationRequested)
        try:
            import artiq.coredevice.ttl
        except ModuleNotFoundError:
            missing = True
        else:
            missing = False
        print(json.dumps({
            "same": same, "us": us, "MHz": MHz, "units_ms": units.ms,
            "names": sorted(artiq.experiment.__all__) == sorted(artiq_bus.experiment.__all__),
            "missing": missing, "version": artiq.__version__,
            "has": [n in globals() for n in ("EnvExperiment", "NumberValue", "BooleanValue",
                    "Scannable", "CancelledArgsError", "rpc", "watchdog", "ms", "kHz")],
        }))
        """, cwd=tmp_path)
    report = json.loads(result.stdout)
    assert report["same"] and report["names"] and report["missing"]
    assert report["us"] == 1e-6 and report["MHz"] == 1e6 and report["units_ms"] == 1e-3
    assert all(report["has"]) and report["version"]


def run_tutorial(tmp_path: Path, text: str, arguments: dict[str, Any]) -> str:
    path = tmp_path / "repository" / "mgmt_tutorial.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return run_python(RUNNER, str(path), json.dumps(arguments), cwd=tmp_path).stdout


def test_tutorial_hello_world(tmp_path: Path) -> None:
    output = run_tutorial(tmp_path, TUTORIAL_HELLO, {})
    assert output.splitlines()[0] == "Hello World"
    assert "DOC Management tutorial" in output


def test_tutorial_argument(tmp_path: Path) -> None:
    output = run_tutorial(tmp_path, TUTORIAL_ARGUMENT, {"count": 3})
    assert output.splitlines()[:3] == ["Hello World 0", "Hello World 1", "Hello World 2"]


def test_tutorial_interactive(tmp_path: Path) -> None:
    output = run_tutorial(tmp_path, TUTORIAL_INTERACTIVE, {})
    assert output.splitlines()[:2] == ["Hello World", "Hello World"]
    assert "Hello World" not in output.splitlines()[2]


def test_tutorial_datasets(tmp_path: Path) -> None:
    output = run_tutorial(tmp_path, TUTORIAL_DATASET, {"count": 4})
    line = next(x for x in output.splitlines() if x.startswith("DATASETS "))
    assert json.loads(line.removeprefix("DATASETS ")) == {"parabola": [0, 1, 4, 9]}


def test_a_real_artiq_package_wins(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "artiq"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    result = run_python("""
        from artiq_bus.worker.compat import install_artiq_compat
        print(install_artiq_compat())
        import artiq
        print(artiq.REAL)
        """, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")})
    assert result.stdout.split() == ["False", "True"]


def test_uninstall_forgets_the_aliases(tmp_path: Path) -> None:
    run_python("""
        from artiq_bus.worker.compat import install_artiq_compat, uninstall_artiq_compat
        install_artiq_compat()
        import artiq.experiment
        uninstall_artiq_compat()
        try:
            import artiq.experiment
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("still importable")
        """, cwd=tmp_path)
