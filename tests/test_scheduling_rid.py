"""The RID counter (reference §3.1): plain-text cache file rewritten on every
allocation, recovery from results file names, first RID 0."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from artiq_bus.scheduling import RIDCounter
from artiq_bus.scheduling.rid import last_rid_in_results


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_first_rid_is_zero_and_file_is_plain_text(tmp_path: Path) -> None:
    counter = RIDCounter(tmp_path / "last_rid.pyon", tmp_path / "results")
    assert (tmp_path / "last_rid.pyon").read_text() == "-1\n"
    assert [counter.get() for _ in range(3)] == [0, 1, 2]
    assert (tmp_path / "last_rid.pyon").read_text() == "-1\n"  # get() touches no disk
    counter.store()
    assert (tmp_path / "last_rid.pyon").read_text() == "2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_rid.pyon"]  # no temp files


def test_counter_continues_after_restart(tmp_path: Path) -> None:
    counter = RIDCounter(tmp_path / "last_rid.pyon", tmp_path / "results")
    counter.get()
    counter.get()
    counter.store()
    again = RIDCounter(tmp_path / "last_rid.pyon", tmp_path / "results")
    assert again.get() == 2


def test_cache_file_wins_over_results(tmp_path: Path) -> None:
    (tmp_path / "last_rid.pyon").write_text("41\n")
    touch(tmp_path / "results" / "2024-01-02" / "03" / "000000007-Exp.h5")
    assert RIDCounter(tmp_path / "last_rid.pyon", tmp_path / "results").get() == 42


def test_recovery_from_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    touch(results / "2024-01-02" / "03" / "000000007-Exp.h5")
    touch(results / "2024-01-02" / "03-15" / "000000012-Other.h5")
    touch(results / "2024-01-03" / "00" / "000000009-Exp.h5")
    # not results files: wrong depth, names, digits or extension
    touch(results / "2024-01-02" / "000000099-Exp.h5")
    touch(results / "2024-01-02" / "03" / "00000050-Exp.h5")
    touch(results / "2024-01-02" / "03" / "000000060-Exp.txt")
    touch(results / "2024-01-02" / "3" / "000000070-Exp.h5")
    touch(results / "notadate" / "03" / "000000080-Exp.h5")
    touch(results / "2024-01-02" / "03" / "sub" / "000000090-Exp.h5")
    assert last_rid_in_results(results) == 12
    counter = RIDCounter(tmp_path / "last_rid.pyon", results)
    assert (tmp_path / "last_rid.pyon").read_text() == "12\n"
    assert counter.get() == 13


def test_unreadable_cache_falls_back_to_results(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "last_rid.pyon").write_text("garbage")
    touch(tmp_path / "results" / "2024-01-02" / "03" / "000000004-Exp.h5")
    assert RIDCounter(tmp_path / "last_rid.pyon", tmp_path / "results").get() == 5
    assert any(r.levelno == logging.WARNING and "holds no integer" in r.getMessage()
               for r in caplog.records)


def test_advance_past(tmp_path: Path) -> None:
    counter = RIDCounter(tmp_path / "last_rid.pyon", tmp_path / "results")
    counter.advance_past(9)
    assert (tmp_path / "last_rid.pyon").read_text() == "9\n"
    counter.advance_past(3)  # never backwards
    assert counter.get() == 10
