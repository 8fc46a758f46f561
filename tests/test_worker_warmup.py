"""The spare worker's build rehearsal: it must really build (a silent failure would
only cost speed, so a test says so) and leave no trace."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from artiq_bus.worker.compat import install_artiq_compat
from artiq_bus.worker.warmup import rehearse_build


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
